"""The capture database: its schema, migrations, and opening a file as a capture.

A capture is one SQLite file (WAL mode). Its format is public and documented in
docs/capture-format.md; change it only through a new migration below.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils
from sqlite_utils.migrations import Migrations

from ocpp_replay.errors import CaptureError, CaptureNotFound

MIGRATION_SET = "ocpp_replay"
migrations = Migrations(MIGRATION_SET)


@migrations()
def m001_capture(db: sqlite_utils.Database) -> None:
    db["sessions"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "charge_point_id": str,
            "path": str,
            "query": str,
            "subprotocol": str,
            "offered_subprotocols": str,
            "remote_addr": str,
            "auth_user": str,
            "upstream_url": str,
            "upstream_status": int,
            "started_at": str,
            "ended_at": str,
            "close_code": int,
            "close_reason": str,
            "closed_by": str,
            "error": str,
            "frames": int,
            "frames_lost": int,
        },
        pk="id",
        not_null={"charge_point_id", "started_at"},
        defaults={"frames_lost": 0},
    )
    db["frames"].create(  # type: ignore[union-attr]
        {
            "session_id": int,
            "seq": int,
            "timestamp": str,
            "elapsed": float,
            "direction": str,
            "message_type": int,
            "unique_id": str,
            "action": str,
            "raw": str,
            "raw_bytes": bytes,
            "parse_error": str,
        },
        pk=("session_id", "seq"),
        foreign_keys=[("session_id", "sessions", "id")],
        not_null={"timestamp", "elapsed", "direction"},
    )
    db["sessions"].create_index(["charge_point_id", "started_at"])  # type: ignore[union-attr]
    db["capture_events"].create(  # type: ignore[union-attr]
        {"id": int, "session_id": int, "timestamp": str, "kind": str, "detail": str},
        pk="id",
    )


@migrations()
def m002_runs(db: sqlite_utils.Database) -> None:
    """Replay and compare runs, their differences and the live frames they exchanged."""
    db["runs"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "kind": str,  # replay | compare
            "started_at": str,
            "ended_at": str,
            "target": str,
            "baseline": str,
            "candidate": str,
            "options": str,  # JSON
            "sessions": int,
            "messages": int,
            "diffs": int,
            "exit_code": int,
            "summary": str,  # JSON: the report's summary object
        },
        pk="id",
    )
    db["run_diffs"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "run_id": int,
            "session_id": int,
            "charge_point_id": str,
            "seq": int,
            "action": str,
            "kind": str,
            "path": str,
            "expected": str,  # JSON
            "actual": str,  # JSON
            "side": str,  # which backend answered: target | baseline | candidate
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["run_diffs"].create_index(["run_id", "session_id"])  # type: ignore[union-attr]
    db["run_frames"].create(  # type: ignore[union-attr]
        {
            "run_id": int,
            "side": str,
            "session_id": int,
            "seq": int,
            "recorded_seq": int,
            "timestamp": str,
            "elapsed": float,
            "direction": str,
            "message_type": int,
            "unique_id": str,
            "action": str,
            "raw": str,
            "lateness": float,
        },
        pk=("run_id", "side", "session_id", "seq"),
        foreign_keys=[("run_id", "runs", "id")],
    )


@migrations()
def m003_wire(db: sqlite_utils.Database) -> None:
    """The handshake as dialled: the path suffix forwarded upstream (``path`` and ``query`` hold
    the raw request-target from now on), and what was off-spec in a CSMS's 101 passed on."""
    sessions = db["sessions"]
    sessions.add_column("path_suffix", str)  # type: ignore[union-attr]
    sessions.add_column("handshake_note", str)  # type: ignore[union-attr]


@migrations()
def m004_replay_held(db: sqlite_utils.Database) -> None:
    """Replay frames say how long each scheduled frame was held for causality (seconds past its
    deadline; 0 when not held), apart from its lateness (the scheduler's own delay)."""
    db["run_frames"].add_column("held", float)  # type: ignore[union-attr]


@migrations()
def m005_retention(db: sqlite_utils.Database) -> None:
    """Retention (store/retention.py): a session pruned up to a time keeps only its priming
    frames before it; ``pruned_before`` says from when on it is whole (NULL: never pruned)."""
    db["sessions"].add_column("pruned_before", str)  # type: ignore[union-attr]


_second_cache: list[Any] = [None, ""]


def utc_iso(wall: float) -> str:
    """A wall-clock time as ISO 8601 UTC with microseconds, e.g. 2026-11-25T17:07:07.123456Z."""
    second = int(wall)
    micros = round((wall - second) * 1_000_000)
    if micros == 1_000_000:
        second, micros = second + 1, 0
    cache = _second_cache
    if cache[0] != second:  # formatting the date is the costly part: once a second
        cache[1] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        cache[0] = second
    return f"{cache[1]}.{micros:06d}Z"


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN ... COMMIT on a connection in autocommit mode (``isolation_level=None``, as every
    capture connection here); ROLLBACK when the block raises."""
    conn.execute("BEGIN")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _create_private(path: Path) -> None:
    """Create an empty file readable and writable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise CaptureError(f"cannot create capture {path}: {exc.strerror}") from exc
    os.close(fd)


def _connect(path: Path, read_only: bool = False) -> sqlite3.Connection:
    """A connection; a writer's switches the file to WAL (a reader leaves its journal mode be:
    setting it writes the file's header)."""
    conn = sqlite3.connect(path, timeout=1.0, check_same_thread=False, isolation_level=None)
    try:
        if not read_only:
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise CaptureError(f"{path} is not a capture database: {exc}") from exc
    return conn


_warned_newer: set[str] = set()


def _newer_schema(db: sqlite_utils.Database, p: Path, read_only: bool) -> bool:
    """Whether the capture was migrated by a newer ocpp-replay (a migration this code lacks).

    Writing or exporting it could lose what the newer schema holds: CaptureError naming the
    version. Reading goes on (the columns read are named), with one warning on stderr per file.
    """
    known = {m.name for m in migrations._migrations}
    unknown = [m.name for m in migrations.applied(db) if m.name not in known]
    if not unknown:
        return False
    latest = max(known)
    if not read_only:
        raise CaptureError(
            f"{p} has schema version {unknown[-1]}, newer than this ocpp-replay's {latest}: "
            "upgrade ocpp-replay to write or export it"
        )
    if str(p.resolve()) not in _warned_newer:
        _warned_newer.add(str(p.resolve()))
        sys.stderr.write(
            f"warning: {p} has schema version {unknown[-1]}, newer than this ocpp-replay's {latest}: "
            "reading what this version knows\n"
        )
    return True


def open_database(
    path: str | os.PathLike[str], *, create: bool = False, read_only: bool = False
) -> sqlite_utils.Database:
    """Open (and, with create, make) a capture database, migrating it to the current schema.

    Raises CaptureNotFound, or CaptureError for a file that is not SQLite or not a capture, or
    (unless ``read_only``) one whose schema is newer than this code's.
    """
    p = Path(path)
    if not p.exists():
        if not create:
            raise CaptureNotFound(f"no capture at {p}")
        _create_private(p)
    elif p.is_dir():
        raise CaptureError(f"{p} is a directory, not a capture database")
    conn = _connect(p, read_only)
    db = sqlite_utils.Database(conn)
    try:
        names = set(db.table_names())
        ours = "_sqlite_migrations" in names and any(m.name == "m001_capture" for m in migrations.applied(db))
        if names - {"_sqlite_migrations"} and not ours:
            raise CaptureError(f"{p} is an SQLite file but not an ocpp-replay capture")
        if not _newer_schema(db, p, read_only):
            migrations.apply(db)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise CaptureError(f"{p} is not a readable capture database: {exc}") from exc
    except CaptureError:
        conn.close()
        raise
    return db
