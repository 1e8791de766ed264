"""The capture writer: the proxy's frames into SQLite from a thread of its own, in batches.

The proxy hands frames to :class:`CaptureWriter` from the event loop. That costs one
``deque.append`` of a tuple: parsing, pairing and SQLite all happen in the writer's thread,
which drains the queue every ``flush_interval`` seconds and commits one transaction a batch.
Nothing the writer does can stop or slow the traffic: when SQLite fails or stalls, frames are
retried and, past ``max_pending`` frames or ``max_pending_bytes`` of frame data held in memory,
dropped, counted, logged and marked in the capture. What waits for a retry is written back in
transactions of at most ``RETRY_CHUNK_ROWS`` frames and ``RETRY_CHUNK_BYTES``, oldest first, so
that a disk with a little space again takes what fits instead of failing one huge transaction.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ocpp_replay.capture.wsframes import unmask
from ocpp_replay.core.frames import Direction, peek
from ocpp_replay.core.pairing import MAX_PENDING, Pairer
from ocpp_replay.errors import CaptureError
from ocpp_replay.store.retention import Pruner, Retention
from ocpp_replay.store.schema import open_database, utc_iso

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, one writer is on the user
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: Queue item kinds. _TEXT is a text frame that arrived as its raw UTF-8 bytes (the proxy does
#: not decode what it only forwards); the writer thread decodes it.
_OPEN, _FRAME, _CLOSE, _EVENT, _TEXT = 0, 1, 2, 3, 4

_INSERT_EVENT = "INSERT INTO capture_events (session_id, timestamp, kind, detail) VALUES (?,?,?,?)"
_INSERT_FRAME = (
    "INSERT INTO frames (session_id, seq, timestamp, elapsed, direction, message_type, "
    "unique_id, action, raw, raw_bytes, parse_error) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)


_Op = tuple[str, Sequence[Sequence[Any]]]

#: Frame data the writer holds in memory (queued, or waiting for a retry) before it drops.
DEFAULT_MAX_PENDING_BYTES: Final = 128 * 1024 * 1024
#: Distinct (direction, action) pairs counted in CaptureWriter.traffic before "(other)".
TRAFFIC_KEYS: Final = 400
#: A transaction of retried frames holds at most this many frames and bytes.
RETRY_CHUNK_ROWS: Final = 2_000
RETRY_CHUNK_BYTES: Final = 4 * 1024 * 1024


def _row_bytes(row: Sequence[Any]) -> int:
    """The size of a frame row's data: its text (characters) or its binary content."""
    data = row[8] if row[8] is not None else row[9]
    return len(data) if data is not None else 0


def _chunks(ops: list[_Op]) -> list[list[_Op]]:
    """Cut operations, in order, into transactions of at most RETRY_CHUNK_ROWS frames and
    RETRY_CHUNK_BYTES of frame data (a larger single frame is a transaction of its own)."""
    chunks: list[list[_Op]] = [[]]
    rows = size = 0
    for sql, params in ops:
        if sql is not _INSERT_FRAME:
            chunks[-1].append((sql, params))
            continue
        part: list[Sequence[Any]] = []
        for row in params:
            n = _row_bytes(row)
            if (rows >= RETRY_CHUNK_ROWS or size + n > RETRY_CHUNK_BYTES) and (rows or chunks[-1]):
                if part:
                    chunks[-1].append((sql, part))
                    part = []
                chunks.append([])
                rows = size = 0
            part.append(row)
            rows += 1
            size += n
        if part:
            chunks[-1].append((sql, part))
    return [c for c in chunks if c]


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
    flush_seconds: float = 0.0  # all successful flushes together (with batches: their mean)
    max_flush_gap: float = 0.0  # the longest time between the starts of two flushes


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
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        pairing_budget: int = MAX_PENDING,
        retention: Retention | None = None,
    ) -> None:
        self.path = Path(path)
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
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
        # Frame data held, as two counters each only one thread adds to (no lock on the
        # event loop's path): queued by the loop, taken off the queue by the writer; plus
        # what the writer holds for a retry.
        self._bytes_queued = 0
        self._bytes_taken = 0
        self._retry_bytes = 0
        self._pairer = Pairer(pairing_budget)
        #: (direction, action) -> [frames, bytes] of the frames taken off the queue; counted in
        #: the writer's thread, read by the proxy's metrics. An action no OCPP message has
        #: does not get a key of its own past TRAFFIC_KEYS (a charger cannot grow it without end).
        self.traffic: dict[tuple[str, str], list[int]] = {}
        self._lost_lock = threading.Lock()
        self._lost: dict[int, list[int]] = {}  # session -> [count, first seq, last seq]
        #: Prunes by the retention between flushes, on this connection (store/retention.py).
        self.pruner = Pruner(self._conn, retention) if retention else None
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
        size = len(data)
        if (
            len(self._queue) >= self.max_pending
            or self._bytes_queued - self._bytes_taken + self._retry_bytes + size > self.max_pending_bytes
        ):
            self._note_lost(session_id, seq, seq, 1)
            return
        self._bytes_queued += size
        self._queue.append((_TEXT if text else _FRAME, session_id, seq, wall, elapsed, direction, data, mask))

    def close_session(self, session_id: int, ended_wall: float, **fields: Any) -> None:
        fields["ended_at"] = utc_iso(ended_wall)
        self._queue.append((_CLOSE, session_id, fields))

    def event(self, session_id: int | None, kind: str, detail: str) -> None:
        self._queue.append((_EVENT, session_id, time.time(), kind, detail))

    @property
    def pending(self) -> int:
        """Items not yet in the capture: queued, or rows waiting for a retry."""
        return len(self._queue) + sum(len(params) for _, params in self._retry)

    @property
    def pending_bytes(self) -> int:
        """Frame data held in memory: queued, or waiting for a retry."""
        return self._bytes_queued - self._bytes_taken + self._retry_bytes

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
        pruner = self.pruner
        wait = self.flush_interval
        last = time.monotonic()
        while not self._stop.wait(wait):
            now = time.monotonic()
            self.stats.max_flush_gap = max(self.stats.max_flush_gap, now - last)
            last = now
            self._flush()
            if pruner is None:
                continue
            # At most half an interval, taken out of the next wait: flushes keep their pace.
            started = time.monotonic()
            try:
                pruner.step(self.flush_interval / 2)
            except sqlite3.Error as exc:  # pruning is housekeeping: the capture goes on
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                log.warning("capture retention: pruning failed (%s); retried at the next check", exc)
                pruner.defer()
            wait = max(0.0, self.flush_interval - (time.monotonic() - started))
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
        retrying = bool(self._retry)
        new, taken = self._prepare(items)
        ops = self._retry + new
        self._retry = []
        # In flight until written or held back: counted before it leaves the queue's count.
        self._retry_bytes += taken
        self._bytes_taken += taken
        with self._lost_lock:
            lost, self._lost = self._lost, {}
        if not ops and not lost:
            return
        started = time.monotonic()
        # One transaction a batch as a rule; after a failure, what was held back goes in
        # bounded chunks, so that whatever space came free takes what fits.
        chunks = _chunks(ops) if retrying else [ops]
        for i, chunk in enumerate(chunks):
            try:
                self._write(chunk, lost)
            except sqlite3.Error as exc:
                self.stats.failures += 1
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                rest = [op for c in chunks[i:] for op in c]
                self._retry_bytes = 0  # what is still held is counted again below
                if _is_transient(exc):
                    self._hold_back(rest, lost, exc)
                else:
                    self._write_apart(rest, lost, exc)
                return
            lost = {}
        self._retry_bytes = 0
        self.stats.batches += 1
        took = time.monotonic() - started
        self.stats.flush_seconds += took
        self.stats.max_flush_seconds = max(self.stats.max_flush_seconds, took)

    def _prepare(self, items: list[tuple[Any, ...]]) -> tuple[list[_Op], int]:
        """Turn queued items into SQL operations; frames are parsed and paired here, once.
        Returns them and the frame data they carry (as the queue counted it)."""
        pairer = self._pairer
        ops: list[_Op] = []
        rows: list[tuple[Any, ...]] = []
        see = pairer.see
        append = rows.append
        sleep = time.sleep
        plain = _PLAIN_DIRECTION
        traffic = self.traffic
        n = taken = 0
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
                size = len(data)  # as on the wire (before unmasking and decoding)
                taken += size
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
                key = (plain[direction], action or "")
                counts = traffic.get(key)
                if counts is None:
                    if len(traffic) >= TRAFFIC_KEYS:
                        key = (plain[direction], "(other)")
                    counts = traffic.setdefault(key, [0, 0])
                counts[0] += 1
                counts[1] += size
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
        if pairer.overflowed:  # explicit in the capture, not a silent NULL action
            now = utc_iso(time.time())
            for session_id in pairer.overflowed:
                ops.append((_INSERT_EVENT, [(session_id, now, "pairing_overflow", (
                    f"more than {pairer.budget} unanswered calls: the oldest are forgotten and the "
                    "results answering them are recorded with no action"))]))  # fmt: skip
            pairer.overflowed.clear()
        return ops, taken

    def _hold_back(self, ops: list[_Op], lost: dict[int, list[int]], exc: sqlite3.Error) -> None:
        """Keep a failed batch for the next flush; past max_pending, drop its frames and count them."""
        with self._lost_lock:
            for session_id, (count, first, last) in lost.items():
                _merge_lost(self._lost, session_id, count, first, last)
        # Oldest first: frames are kept while both budgets allow, the rest are dropped.
        frames = len(self._queue) + sum(len(p) for sql, p in self._retry if sql is _INSERT_FRAME)
        size = self._bytes_queued - self._bytes_taken + self._retry_bytes
        held = dropped = 0
        for sql, params in ops:
            if sql is not _INSERT_FRAME:
                self._retry.append((sql, params))
                continue
            keep = []
            for row in params:
                n = _row_bytes(row)
                if frames + 1 <= self.max_pending and size + n <= self.max_pending_bytes:
                    keep.append(row)
                    frames += 1
                    size += n
                    self._retry_bytes += n
                    held += 1
                else:
                    self._note_lost(row[0], row[1], row[1], 1)
                    dropped += 1
            if keep:
                self._retry.append((sql, keep))
        if dropped:
            log.error(
                "capture write failed (%s); %d frames held for retry, %d dropped, counted and marked",
                exc,
                held,
                dropped,
            )
        else:
            log.warning("capture write failed (%s); %d frames held for retry", exc, held)

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
