"""The capture database: schema and migrations, a batched off-loop writer, and reads.

A capture is one SQLite file (WAL mode). Its format is public and documented in
docs/capture-format.md; change it only through a new migration below.

The proxy hands frames to :class:`CaptureWriter` from the event loop. That costs one
``deque.append`` of a tuple: parsing, pairing and SQLite all happen in the writer's thread,
which drains the queue every ``flush_interval`` seconds and commits one transaction a batch.
Nothing the writer does can stop or slow the traffic: when SQLite fails or stalls, frames are
retried and, past ``max_pending``, dropped, counted, logged and marked in the capture.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils
from sqlite_utils.migrations import Migrations

from ocpp_replay.errors import CaptureError, CaptureNotFound, UnknownSession
from ocpp_replay.frames import Direction, peek
from ocpp_replay.pairing import Pairer
from ocpp_replay.wsframes import unmask

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, one writer is on the user
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

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


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=1.0, check_same_thread=False, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise CaptureError(f"{path} is not a capture database: {exc}") from exc
    return conn


def open_database(path: str | os.PathLike[str], *, create: bool = False) -> sqlite_utils.Database:
    """Open (and, with create, make) a capture database, migrating it to the current schema.

    Raises CaptureNotFound, or CaptureError for a file that is not SQLite or not a capture.
    """
    p = Path(path)
    if not p.exists():
        if not create:
            raise CaptureNotFound(f"no capture at {p}")
        _create_private(p)
    elif p.is_dir():
        raise CaptureError(f"{p} is a directory, not a capture database")
    conn = _connect(p)
    db = sqlite_utils.Database(conn)
    try:
        names = set(db.table_names())
        ours = "_sqlite_migrations" in names and any(m.name == "m001_capture" for m in migrations.applied(db))
        if names - {"_sqlite_migrations"} and not ours:
            raise CaptureError(f"{p} is an SQLite file but not an ocpp-replay capture")
        migrations.apply(db)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise CaptureError(f"{p} is not a readable capture database: {exc}") from exc
    except CaptureError:
        conn.close()
        raise
    return db


# ----------------------------------------------------------------------------- reads


@dataclass(frozen=True, slots=True)
class SessionInfo:
    id: int
    charge_point_id: str
    subprotocol: str | None
    path: str | None
    query: str | None
    remote_addr: str | None
    auth_user: str | None
    upstream_url: str | None
    upstream_status: int | None
    started_at: str
    ended_at: str | None
    close_code: int | None
    close_reason: str | None
    closed_by: str | None
    error: str | None
    frames: int
    frames_lost: int

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class FrameRecord:
    session_id: int
    seq: int
    timestamp: str
    elapsed: float
    direction: Direction
    message_type: int | None
    unique_id: str | None
    action: str | None
    raw: str | None
    raw_bytes: bytes | None
    parse_error: str | None

    @property
    def is_binary(self) -> bool:
        return self.raw_bytes is not None

    def as_dict(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in self.__slots__}
        d["direction"] = str(self.direction)
        if self.raw_bytes is not None:
            d["raw_bytes"] = self.raw_bytes.hex()
        return d


_SESSION_COLUMNS = (
    "id, charge_point_id, subprotocol, path, query, remote_addr, auth_user, upstream_url, "
    "upstream_status, started_at, ended_at, close_code, close_reason, closed_by, error"
)


def session_filter(
    ids: Sequence[int] = (),
    charge_points: Sequence[str] = (),
    since: str | None = None,
    until: str | None = None,
) -> tuple[str, list[Any]]:
    """A WHERE clause (with a leading space, or "") over the sessions table, and its parameters.

    Unqualified column names, so it serves ``FROM sessions`` and ``FROM sessions s`` alike.
    """
    where: list[str] = []
    params: list[Any] = []
    if ids:
        where.append(f"id IN ({','.join('?' * len(ids))})")
        params.extend(ids)
    if charge_points:
        where.append(f"charge_point_id IN ({','.join('?' * len(charge_points))})")
        params.extend(charge_points)
    if since:
        where.append("started_at >= ?")
        params.append(since)
    if until:
        where.append("started_at <= ?")
        params.append(until)
    return (" WHERE " + " AND ".join(where) if where else ""), params


class Store:
    """Read access to a capture (and the database handle for later writers such as runs)."""

    def __init__(self, db: sqlite_utils.Database, path: Path) -> None:
        self.db = db
        self.path = path

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, create: bool = False) -> Store:
        return cls(open_database(path, create=create), Path(path))

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sessions(
        self,
        *,
        ids: Sequence[int] = (),
        charge_points: Sequence[str] = (),
        since: str | None = None,
        until: str | None = None,
    ) -> list[SessionInfo]:
        """Sessions in start order, filtered by id, charge point and start time (ISO strings)."""
        where, params = session_filter(ids, charge_points, since, until)
        sql = (
            f"SELECT {', '.join('s.' + c.strip() for c in _SESSION_COLUMNS.split(','))}, "
            "(SELECT count(*) FROM frames f WHERE f.session_id = s.id) AS n, "
            f"coalesce(s.frames_lost, 0) FROM sessions s{where} ORDER BY s.started_at, s.id"
        )
        try:
            rows = self.db.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise CaptureError(f"cannot read sessions from {self.path}: {exc}") from exc
        return [SessionInfo(*row) for row in rows]

    def session(self, session_id: int) -> SessionInfo:
        found = self.sessions(ids=[session_id])
        if not found:
            raise UnknownSession(f"no session {session_id} in {self.path}")
        return found[0]

    def frames(self, session_id: int) -> Iterator[FrameRecord]:
        """The frames of one session in wire order."""
        sql = (
            "SELECT session_id, seq, timestamp, elapsed, direction, message_type, unique_id, "
            "action, raw, raw_bytes, parse_error FROM frames WHERE session_id = ? ORDER BY seq"
        )
        try:
            cursor = self.db.execute(sql, [session_id])
        except sqlite3.DatabaseError as exc:
            raise CaptureError(f"cannot read frames from {self.path}: {exc}") from exc
        for row in cursor:
            yield FrameRecord(row[0], row[1], row[2], row[3], Direction(row[4]), *row[5:])

    def frames_since(self, rowid: int, limit: int = 1000) -> list[tuple[int, FrameRecord]]:
        """Frames of every session with a rowid above ``rowid`` (for following a live capture)."""
        sql = (
            "SELECT rowid, session_id, seq, timestamp, elapsed, direction, message_type, "
            "unique_id, action, raw, raw_bytes, parse_error FROM frames WHERE rowid > ? "
            "ORDER BY rowid LIMIT ?"
        )
        rows = self.db.execute(sql, [rowid, limit]).fetchall()
        return [(r[0], FrameRecord(r[1], r[2], r[3], r[4], Direction(r[5]), *r[6:])) for r in rows]

    def charge_point_of(self, session_id: int) -> str:
        return self.session(session_id).charge_point_id

    def events(self, session_id: int | None = None) -> list[dict[str, Any]]:
        table = self.db["capture_events"]
        if session_id is None:
            return list(table.rows_where(order_by="id"))
        return list(table.rows_where("session_id = ?", [session_id], order_by="id"))


# ----------------------------------------------------------------------------- writing

#: Queue item kinds. _TEXT is a text frame that arrived as its raw UTF-8 bytes (the proxy does
#: not decode what it only forwards); the writer thread decodes it.
_OPEN, _FRAME, _CLOSE, _EVENT, _TEXT = 0, 1, 2, 3, 4

_INSERT_EVENT = "INSERT INTO capture_events (session_id, timestamp, kind, detail) VALUES (?,?,?,?)"
_INSERT_FRAME = (
    "INSERT INTO frames (session_id, seq, timestamp, elapsed, direction, message_type, "
    "unique_id, action, raw, raw_bytes, parse_error) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)


_Op = tuple[str, Sequence[Sequence[Any]]]

#: A direction as a plain str: sqlite3 binds a str subclass (the StrEnum) through its slower
#: adaptation path.
_PLAIN_DIRECTION = {d: d.value for d in Direction}


def _merge_lost(lost: dict[int, list[int]], session_id: int, count: int, first: int, last: int) -> None:
    entry = lost.get(session_id)
    if entry is None:
        lost[session_id] = [count, first, last]
    else:
        entry[0] += count
        entry[1] = min(entry[1], first)
        entry[2] = max(entry[2], last)


def _is_transient(exc: sqlite3.Error) -> bool:
    """A failure that waiting may cure: the file is locked or busy, or the disk is full."""
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and any(
        word in text for word in ("locked", "busy", "disk is full", "disk i/o")
    )


@dataclass(slots=True)
class WriterStats:
    frames_written: int = 0
    frames_lost: int = 0
    batches: int = 0
    failures: int = 0
    max_flush_seconds: float = 0.0


class WriterLock:
    """The one-writer lock of a capture: an exclusive ``flock`` on the sidecar file ``<db>-lock``.

    Whoever adds sessions to a capture holds it (the proxy and the mitmproxy addon for as long
    as they run, ``import`` while it imports): a writer hands out session ids from memory, so two
    writers on one capture would give two connections the same id. The lock is on a sidecar
    file, never on the database: closing a descriptor of the database would drop SQLite's own
    locks. The kernel releases it when the process dies, kill -9 included; the file stays
    (mode 0600) and holds the pid of the last writer. Readers never take it.
    """

    def __init__(self, db: str | os.PathLike[str]) -> None:
        self.db = Path(db)
        self.path = Path(f"{self.db}-lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock. Raises CaptureError if another writer holds it."""
        if fcntl is None or self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise CaptureError(f"cannot create the lock file {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise CaptureError(
                f"{self.db} is being written by another process{who}; give each proxy its own "
                "capture and combine them with `ocpp-replay merge`"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class CaptureWriter:
    """Records sessions and frames from an event loop without ever blocking it.

    ``open_session``, ``frame`` and ``close_session`` may be called from one thread (the
    event loop's); a background thread writes batches every ``flush_interval`` seconds.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        flush_interval: float = 0.05,
        max_pending: int = 200_000,
    ) -> None:
        self.path = Path(path)
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.stats = WriterStats()
        db = open_database(self.path, create=True)
        self._conn: sqlite3.Connection = db.conn
        # Held until close: session ids below come from memory, and sessions still open in
        # the capture can only be left over from a writer that died.
        self._lock = WriterLock(self.path)
        try:
            self._lock.acquire()
            row = self._conn.execute("SELECT max(id) FROM sessions").fetchone()
            self._next_session_id = (row[0] or 0) + 1
            self._mark_interrupted_sessions()
        except BaseException:
            self._lock.release()
            self._conn.close()
            raise
        self._queue: deque[tuple[Any, ...]] = deque()
        self._retry: list[_Op] = []
        self._pairer = Pairer()
        self._lost_lock = threading.Lock()
        self._lost: dict[int, list[int]] = {}  # session -> [count, first seq, last seq]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._started = False

    # -- called from the event loop -------------------------------------------------

    def start(self) -> None:
        self._started = True
        self._thread.start()

    def open_session(self, started_wall: float, **fields: Any) -> int:
        session_id = self._next_session_id
        self._next_session_id += 1
        fields["started_at"] = utc_iso(started_wall)
        self._queue.append((_OPEN, session_id, fields))
        return session_id

    def frame(
        self,
        session_id: int,
        seq: int,
        wall: float,
        elapsed: float,
        direction: Direction,
        data: str | bytes,
        text: bool = False,
        mask: bytes = b"",
    ) -> None:
        """Queue one frame. ``data`` is str for a text frame, bytes for a binary one, or the
        undecoded bytes of a text frame with ``text=True``; bytes still masked as they were on
        the wire come with their ``mask`` (the writer thread unmasks them)."""
        if len(self._queue) >= self.max_pending:
            self._note_lost(session_id, seq, seq, 1)
            return
        self._queue.append((_TEXT if text else _FRAME, session_id, seq, wall, elapsed, direction, data, mask))

    def close_session(self, session_id: int, ended_wall: float, **fields: Any) -> None:
        fields["ended_at"] = utc_iso(ended_wall)
        self._queue.append((_CLOSE, session_id, fields))

    def event(self, session_id: int | None, kind: str, detail: str) -> None:
        self._queue.append((_EVENT, session_id, time.time(), kind, detail))

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._retry)

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is queued and stop the writer thread."""
        self._stop.set()
        if self._started:
            self._thread.join(timeout)
        else:
            self._final_flush()
        if self._thread.is_alive():
            log.error("capture writer did not finish within %.0fs; %d items unwritten", timeout, self.pending)
        else:
            self._conn.close()
            self._lock.release()

    # -- the writer thread ----------------------------------------------------------

    def _note_lost(self, session_id: int, first: int, last: int, count: int) -> None:
        with self._lost_lock:
            _merge_lost(self._lost, session_id, count, first, last)
            self.stats.frames_lost += count

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval):
            self._flush()
        self._final_flush()

    def _final_flush(self) -> None:
        # Last flushes: what is queued, then what a failing database held back and the
        # losses noted meanwhile (a few tries, not forever: the proxy is stopping).
        for _ in range(3):
            self._flush()
            if not self._retry and not self._lost and not self._queue:
                break

    def _flush(self) -> None:
        queue = self._queue
        items = [queue.popleft() for _ in range(len(queue))]
        ops = self._retry + self._prepare(items)
        self._retry = []
        with self._lost_lock:
            lost, self._lost = self._lost, {}
        if not ops and not lost:
            return
        started = time.monotonic()
        try:
            self._write(ops, lost)
        except sqlite3.Error as exc:
            self.stats.failures += 1
            if self._conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
            if _is_transient(exc):
                self._hold_back(ops, lost, exc)
            else:
                self._write_apart(ops, lost, exc)
            return
        self.stats.batches += 1
        self.stats.max_flush_seconds = max(self.stats.max_flush_seconds, time.monotonic() - started)

    def _prepare(self, items: list[tuple[Any, ...]]) -> list[_Op]:
        """Turn queued items into SQL operations; frames are parsed and paired here, once."""
        pairer = self._pairer
        ops: list[_Op] = []
        rows: list[tuple[Any, ...]] = []
        see = pairer.see
        append = rows.append
        sleep = time.sleep
        plain = _PLAIN_DIRECTION
        n = 0
        for item in items:
            n += 1
            if n == 64:
                # Let the event loop's thread take the GIL: a large batch must not hold it
                # for milliseconds while charger traffic waits.
                sleep(0)
                n = 0
            kind = item[0]
            if kind in (_FRAME, _TEXT):
                _, session_id, seq, wall, elapsed, direction, data, mask = item
                if mask:
                    data = unmask(data, mask)
                mtype: int | None
                uid: str | None
                action: str | None
                error: str | None
                not_utf8 = False
                if kind == _TEXT:  # the undecoded bytes of a text frame
                    try:  # (try, not contextlib.suppress: no object per frame on this path)
                        data = data.decode("utf-8")
                    except UnicodeDecodeError:
                        not_utf8 = True  # forwarded as received: kept byte for byte, flagged
                if not_utf8:
                    mtype, uid, action, error = None, None, None, "text frame is not UTF-8"
                else:
                    mtype, uid, action, error = peek(data)
                    if mtype is not None:
                        action = see(session_id, direction, mtype, uid, action)
                text, blob = (data, None) if type(data) is str else (None, bytes(data))
                append((session_id, seq, utc_iso(wall), elapsed, plain[direction], mtype, uid, action,
                        text, blob, error))  # fmt: skip
                continue
            if rows:
                ops.append((_INSERT_FRAME, rows))
                rows = []
                append = rows.append
            if kind == _OPEN:
                fields = dict(item[2], id=item[1])
                sql = (
                    f"INSERT OR REPLACE INTO sessions ({', '.join(fields)}) "
                    f"VALUES ({','.join('?' * len(fields))})"
                )
                ops.append((sql, [list(fields.values())]))
            elif kind == _CLOSE:
                pairer.forget(item[1])
                fields = item[2]
                sets = ", ".join(f"{c} = ?" for c in fields)
                ops.append((f"UPDATE sessions SET {sets} WHERE id = ?", [[*fields.values(), item[1]]]))
            elif kind == _EVENT:
                ops.append((_INSERT_EVENT, [(item[1], utc_iso(item[2]), item[3], item[4])]))
        if rows:
            ops.append((_INSERT_FRAME, rows))
        return ops

    def _hold_back(self, ops: list[_Op], lost: dict[int, list[int]], exc: sqlite3.Error) -> None:
        """Keep a failed batch for the next flush; past max_pending, drop its frames and count them."""
        with self._lost_lock:
            for session_id, (count, first, last) in lost.items():
                _merge_lost(self._lost, session_id, count, first, last)
        frames = sum(len(params) for sql, params in ops if sql is _INSERT_FRAME)
        if frames + len(self._queue) <= self.max_pending:
            self._retry.extend(ops)
            log.warning("capture write failed (%s); %d frames held for retry", exc, frames)
            return
        self._retry.extend(op for op in ops if op[0] is not _INSERT_FRAME)
        for sql, params in ops:
            if sql is _INSERT_FRAME:
                for row in params:
                    self._note_lost(row[0], row[1], row[1], 1)
        log.error("capture write failed (%s); %d frames dropped, counted and marked", exc, frames)

    def _write_apart(self, ops: list[_Op], lost: dict[int, list[int]], exc: sqlite3.Error) -> None:
        """A batch failed for a reason retrying will not cure (a constraint, a damaged or
        altered schema): write it one operation, then one row, at a time, so that one bad
        row cannot hold back everything queued behind it. What still fails is dropped,
        counted and logged."""
        log.error("capture write failed (%s); writing the batch row by row", exc)
        for sql, params in ops:
            for row in params:
                try:
                    self._write([(sql, [row])], {})
                except sqlite3.Error as row_exc:
                    if self._conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            self._conn.execute("ROLLBACK")
                    if _is_transient(row_exc):
                        self._hold_back([(sql, [row])], {}, row_exc)
                    elif sql is _INSERT_FRAME:
                        self._note_lost(row[0], row[1], row[1], 1)
                    else:
                        log.error("capture: dropped %s (%s)", sql.split("(")[0].strip(), row_exc)
        try:
            self._write([], lost)
        except sqlite3.Error as lost_exc:
            self._hold_back([], lost, lost_exc)

    def _write(self, ops: list[_Op], lost: dict[int, list[int]]) -> None:
        conn = self._conn
        conn.execute("BEGIN")
        for sql, params in ops:
            conn.executemany(sql, params)
        for session_id, (count, first, last) in lost.items():
            detail = f"{count} frames not recorded between seq {first} and {last}"
            conn.execute(_INSERT_EVENT, (session_id, utc_iso(time.time()), "frames_lost", detail))
            conn.execute(
                "UPDATE sessions SET frames_lost = coalesce(frames_lost, 0) + ? WHERE id = ?",
                (count, session_id),
            )
        conn.execute("COMMIT")
        self.stats.frames_written += sum(len(p) for sql, p in ops if sql is _INSERT_FRAME)
        for session_id, (count, _, _) in lost.items():
            log.error(
                "session %s: %d frames could not be recorded (marked in the capture)", session_id, count
            )

    def _mark_interrupted_sessions(self) -> None:
        """Sessions left open by a proxy that died: end them at their last frame."""
        try:
            self._conn.execute(
                "UPDATE sessions SET ended_at = coalesce((SELECT max(timestamp) FROM frames "
                "WHERE frames.session_id = sessions.id), started_at), closed_by = 'unknown', "
                "close_reason = 'capture interrupted', frames = coalesce(frames, (SELECT count(*) "
                "FROM frames WHERE frames.session_id = sessions.id)) WHERE ended_at IS NULL"
            )
        except sqlite3.Error as exc:
            raise CaptureError(f"cannot write to {self.path}: {exc}") from exc
