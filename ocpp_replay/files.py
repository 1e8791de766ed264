"""Files ocpp-replay writes that may hold personal data (idTags in reports)."""

from __future__ import annotations

import os
from pathlib import Path


def write_private_text(path: str | os.PathLike[str], text: str) -> None:
    """Write TEXT to PATH, readable and writable by its owner only (mode 0600).

    Raises OSError as ``Path.write_text`` would.
    """
    p = Path(path)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT: set it
        with open(fd, "w", encoding="utf-8", newline="", closefd=False) as f:
            f.write(text)
    finally:
        os.close(fd)
