"""Files other than captures: rules files read, and files written that may hold personal data
(idTags in reports and exports), created readable by their owner only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from ocpp_replay.core.rewrite import RewriteRule, parse_rewrites
from ocpp_replay.core.rules import RuleSet, parse_rules
from ocpp_replay.errors import ConfigError

#: The longest rules file read (characters); a hand-written or learned one is a few kilobytes.
MAX_RULES_FILE = 4 * 2**20


def open_private_text(path: str | os.PathLike[str], *, exclusive: bool = False) -> IO[str]:
    """Open PATH for writing text, truncated, readable and writable by its owner only (0600).

    With ``exclusive`` an existing PATH (a symlink included) is not touched: FileExistsError.
    Raises OSError as ``open`` would.
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(Path(path), flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT: set it
        return open(fd, "w", encoding="utf-8", newline="\n")
    except BaseException:
        os.close(fd)
        raise


def write_private_text(path: str | os.PathLike[str], text: str, *, exclusive: bool = False) -> None:
    """Write TEXT to PATH with :func:`open_private_text`."""
    with open_private_text(path, exclusive=exclusive) as f:
        f.write(text)


def write_new_text(path: str | os.PathLike[str], text: str, what: str, *, force: bool = False) -> None:
    """Write a file the tool produces (a report, a rules file), owner-only, by the one rule for
    every file it writes: an existing file is refused unless ``force``. Raises ConfigError."""
    try:
        write_private_text(path, text, exclusive=not force)
    except FileExistsError:
        raise ConfigError(f"{path} exists; choose another file or pass --force") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {what} {path}: {exc.strerror}") from exc


def read_rules_text(path: str | os.PathLike[str]) -> str:
    """The text of a rules file (at most MAX_RULES_FILE characters). Raises ConfigError."""
    p = Path(path)
    try:
        with open(p, encoding="utf-8") as fh:
            text = fh.read(MAX_RULES_FILE + 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read rules file {p}: {getattr(exc, 'strerror', None) or exc}") from exc
    if len(text) > MAX_RULES_FILE:
        raise ConfigError(f"rules file {p} is longer than {MAX_RULES_FILE} characters")
    return text


def load_rules(path: str | os.PathLike[str] | None) -> RuleSet:
    """The rules of a TOML file (built-in rules alone when path is None). Raises ConfigError."""
    if path is None:
        return RuleSet.default()
    text = read_rules_text(path)
    try:
        return parse_rules(text, source=str(path))
    except RecursionError as exc:  # tomllib recurses into nested arrays and inline tables
        raise ConfigError(f"rules file {path}: nested too deeply") from exc


def load_rewrites(path: str | os.PathLike[str] | None) -> tuple[RewriteRule, ...]:
    """The ``[[rewrite]]`` entries of a rules file (none when path is None). Raises ConfigError."""
    if path is None:
        return ()
    try:
        return parse_rewrites(read_rules_text(path), source=str(path))
    except RecursionError as exc:
        raise ConfigError(f"rules file {path}: nested too deeply") from exc
