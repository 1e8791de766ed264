"""No dead code in the package: vulture finds nothing that is not in tests/deadcode_whitelist.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def vulture(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vulture", *map(str, paths), "--min-confidence", "60"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip


def test_no_dead_code() -> None:
    done = vulture(ROOT / "ocpp_replay", ROOT / "tests" / "deadcode_whitelist.py")
    assert done.returncode == 0, (
        "vulture found dead code (remove it, or whitelist a framework use):\n" + done.stdout
    )


def test_the_check_finds_dead_code(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(
        "def used():\n    return 1\n\ndef never_called():\n    return 2\n\nused()\n"
    )
    done = vulture(tmp_path)
    assert done.returncode != 0 and "never_called" in done.stdout and "'used'" not in done.stdout
