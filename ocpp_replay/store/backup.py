"""Copying a capture that may be in use: SQLite's online backup API.

A capture in use is two files, the ``.db`` and its ``-wal`` (frames written since the last
checkpoint live only in the WAL): ``cp site.db`` copies a capture missing them. The backup API
reads a consistent snapshot through SQLite, WAL included, in steps of ``PAGES_PER_STEP`` pages,
so a proxy writing the capture meanwhile is held up for one step at most, never for the copy.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ocpp_replay.errors import CaptureError, ConfigError
from ocpp_replay.store.schema import _create_private, open_database

__all__ = ["PAGES_PER_STEP", "BackupResult", "backup_capture"]

#: Pages copied per step of the backup (4 MiB with SQLite's default 4 KiB pages).
PAGES_PER_STEP = 1024


@dataclass(frozen=True, slots=True)
class BackupResult:
    pages: int
    bytes: int
    sessions: int
    frames: int


def backup_capture(
    source: str | os.PathLike[str], out: str | os.PathLike[str], *, force: bool = False
) -> BackupResult:
    """Copy the capture ``source`` (in use or not) into the new file ``out`` (0600), WAL included.

    Refuses an existing ``out`` unless ``force``; removes a half-written ``out`` on failure.
    Raises CaptureNotFound / CaptureError for a bad source, ConfigError for a bad ``out``.
    """
    src_path, dst_path = Path(source), Path(out)
    src = open_database(src_path)  # a capture, or one clear error line
    try:
        if dst_path.exists() or dst_path.is_symlink():
            if dst_path.resolve() == src_path.resolve():
                raise ConfigError(f"--out {dst_path} is the capture itself")
            if not force:
                raise ConfigError(f"{dst_path} exists; choose another --out or pass --force")
            if dst_path.is_dir():
                raise ConfigError(f"{dst_path} is a directory")
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    Path(f"{dst_path}{suffix}").unlink()
        _create_private(dst_path)
        try:
            dst = sqlite3.connect(dst_path)
            try:
                src.conn.backup(dst, pages=PAGES_PER_STEP)
                pages = int(dst.execute("PRAGMA page_count").fetchone()[0])
                size = pages * int(dst.execute("PRAGMA page_size").fetchone()[0])
                sessions = int(dst.execute("SELECT count(*) FROM sessions").fetchone()[0])
                frames = int(dst.execute("SELECT count(*) FROM frames").fetchone()[0])
                dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
            finally:
                dst.close()
        except sqlite3.Error as exc:
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    Path(f"{dst_path}{suffix}").unlink()
            raise CaptureError(f"cannot back up {src_path} to {dst_path}: {exc}") from exc
    finally:
        src.conn.close()
    return BackupResult(pages=pages, bytes=size, sessions=sessions, frames=frames)
