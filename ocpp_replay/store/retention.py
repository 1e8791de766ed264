"""Retention: a capture that runs for weeks is pruned of its oldest frames, in small steps.

A proxy at a site records for weeks (a fleet of 10,000 chargers at one frame every 30 s writes
~29 million frames a day). ``proxy --retain 14d`` and ``--max-size 50GB`` bound the capture in
place, one file, rather than rotating it into a set of files: every reading command (replay,
compare, export, the web UI, windows) keeps taking one capture, and a connection that spans
the cut stays one session whose earlier state is still at hand.

Pruning with a cut-off time C:

- a session that ended before C is removed whole (its frames, its capture events, its row);
- a session still open at C loses its frames before C except those that a window starting at C
  would prime the backend with (:func:`ocpp_replay.core.window.cut_session`): the charger's last
  BootNotification, its last StatusNotification of each connector/EVSE, the start of each
  transaction still open, each with its recorded answer. Its ``pruned_before`` column says from
  when on it is whole. Since the state at any later time follows from the state at C and the
  frames after C, every window inside the retained time still primes exactly as before pruning,
  and a whole-session replay of it replays from ``pruned_before`` (primed, as such a window).

``--retain`` sets C to now minus the age. ``--max-size`` counts the pages the data occupies
(SQLite reuses the pages of deleted rows, so the file stops growing once pruning keeps up; it
does not shrink: ``VACUUM`` offline does that); over the budget, C is the time before which
the share of the frames to free lies (the excess plus a tenth of the budget of headroom), each
session's frames taken as spread evenly over its time; the next pass goes on at once while the
data is still over.

The pruner runs in the capture writer's thread, between its flushes, on its connection: it
never contends with the writer for SQLite's lock. A step deletes at most ``CHUNK_ROWS`` frames
a transaction and stops starting chunks once its time budget is spent; the writer shortens its
next wait by the step's time, so flushes keep their interval.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ocpp_replay.core.correlate import ocpp_version, utc_seconds
from ocpp_replay.core.frames import Direction
from ocpp_replay.core.window import Window, cut_session
from ocpp_replay.errors import CaptureError, ConfigError
from ocpp_replay.store.reader import FrameRecord
from ocpp_replay.store.schema import open_database, transaction, utc_iso

__all__ = ["CHUNK_ROWS", "PruneResult", "PruneStats", "Pruner", "Retention", "parse_size", "prune_capture"]

log = logging.getLogger(__name__)

#: Frames deleted in one transaction.
CHUNK_ROWS: Final = 1_000
#: Seconds between the end of a pass and the next check of the budget.
DEFAULT_CHECK_INTERVAL: Final = 60.0
#: With --max-size, a pass frees this share of the budget beyond the excess (no pass per frame).
HEADROOM: Final = 0.1

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_size(text: str) -> int:
    """A size such as 50GB, 500MB, 2GiB or 1048576 (bytes). Raises ConfigError."""
    s = text.strip().lower().replace(" ", "")
    number = s.rstrip("abgikmt")
    unit = s[len(number) :]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or not value > 0:
        raise ConfigError(f"{text!r} is not a size: use e.g. 50GB, 500MB, 2GiB")
    return int(value * _UNITS[unit])


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True, slots=True)
class Retention:
    """What a capture keeps: frames younger than ``max_age`` seconds, data within ``max_bytes``."""

    max_age: float | None = None
    max_bytes: int | None = None
    check_interval: float = DEFAULT_CHECK_INTERVAL

    def __post_init__(self) -> None:
        if self.max_age is not None and not self.max_age > 0:
            raise ConfigError("--retain must be longer than 0")
        if self.max_bytes is not None and self.max_bytes < 1024 * 1024:
            raise ConfigError("--max-size must be at least 1 MiB")

    def describe(self) -> str:
        """In words, for the proxy's start-up lines."""
        parts = []
        if self.max_age is not None:
            parts.append(f"frames older than {_span(self.max_age)}")
        if self.max_bytes is not None:
            parts.append(f"the oldest frames while the data is over {self.max_bytes / 1e9:.3g} GB")
        return (
            f"pruning {' and '.join(parts)} (each open connection keeps its priming frames), "
            f"checked every {self.check_interval:g} s"
        )

    def __bool__(self) -> bool:
        return self.max_age is not None or self.max_bytes is not None


@dataclass(slots=True)
class PruneStats:
    passes: int = 0
    steps: int = 0
    frames_pruned: int = 0
    sessions_pruned: int = 0  # removed whole
    sessions_cut: int = 0  # pruned up to a cut-off, priming frames kept
    max_step_seconds: float = 0.0
    cutoff: str | None = None  # of the last pass
    data_bytes: int = 0  # pages in use, at the last check


@dataclass(slots=True)
class _Candidate:
    id: int
    start: float
    end: float | None
    subprotocol: str | None
    keep: frozenset[int] | None = None  # priming seqs, once computed
    boundary: int = 0  # the first seq at or after the cut-off, once computed


class Pruner:
    """Prunes a capture by a :class:`Retention`, a bounded step at a time, on the caller's
    connection (the writer's thread). ``step`` returns when its time budget is spent or the
    pass is done."""

    def __init__(
        self, conn: sqlite3.Connection, retention: Retention, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.conn = conn
        self.retention = retention
        self.clock = clock
        self.stats = PruneStats()
        self._queue: list[_Candidate] = []
        self._cutoff: float | None = None
        self._next_check = 0.0  # monotonic
        self._pass_deleted = 0
        age = retention.max_age
        self._regrain = (
            max(retention.check_interval, 0.01 * age) if age is not None else retention.check_interval
        )
        self._warned_small = False

    # -- budget -------------------------------------------------------------------------

    def data_bytes(self) -> int:
        """Bytes of the pages that hold data (the file less its free pages)."""
        page_size = self.conn.execute("PRAGMA page_size").fetchone()[0]
        pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        free = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * page_size)

    def _spans(self, now: float) -> list[tuple[float, float, float]]:
        """Each session's retained frames as (from, to, how many), counted from the capture's
        columns without reading its frames (an open or a pruned session: its highest seq,
        scaled to the retained share of its time)."""
        rows = self.conn.execute(
            "SELECT started_at, ended_at, pruned_before, coalesce(frames, "
            "(SELECT max(seq) FROM frames f WHERE f.session_id = s.id), 0) FROM sessions s"
        ).fetchall()
        out = []
        for started, ended, pruned, frames in rows:
            if not frames:
                continue
            try:
                start = utc_seconds(started)
                end = max(start, utc_seconds(ended) if ended else now)
                since = min(utc_seconds(pruned), end) if pruned else start
            except ValueError:
                continue
            share = (end - since) / (end - start) if end > start else 1.0
            out.append((since, end, frames * share))
        return out

    def _cut_for(self, frames: float, spans: list[tuple[float, float, float]]) -> float | None:
        """The earliest time before which about ``frames`` frames lie, each session's frames
        taken as spread evenly over its time (one sweep over the sessions' starts and ends)."""
        events: list[tuple[float, float, float]] = []  # (time, frames at once, change of rate)
        for since, end, n in spans:
            if end > since:
                rate = n / (end - since)
                events += [(since, 0.0, rate), (end, 0.0, -rate)]
            else:
                events.append((since, n, 0.0))
        events.sort()
        total = rate = 0.0
        last = events[0][0] if events else 0.0
        for t, jump, change in events:
            reached = total + rate * (t - last)
            if reached >= frames and rate > 0:
                return last + (frames - total) / rate
            total = reached + jump
            rate += change
            last = t
            if total >= frames:
                return t + 1e-6  # just after the frames that reach it
        return None

    def cutoff(self) -> float | None:
        """The cut-off of a pass started now, or None when the capture is within its budget."""
        now = self.clock()
        cut: float | None = None
        r = self.retention
        if r.max_age is not None:
            cut = now - r.max_age
        if r.max_bytes is not None:
            used = self.stats.data_bytes = self.data_bytes()
            if used > r.max_bytes:
                spans = self._spans(now)
                held = sum(n for _, _, n in spans)
                share = min(1.0, (used - r.max_bytes * (1 - HEADROOM)) / used)
                by_size = self._cut_for(share * held, spans) if held else None
                if by_size is not None:
                    cut = by_size if cut is None else max(cut, by_size)
                elif not self._warned_small:
                    self._warned_small = True
                    log.warning(
                        "capture: %d bytes of data, over --max-size %d, and no frames to prune",
                        used,
                        r.max_bytes,
                    )
        return cut

    # -- a pass ---------------------------------------------------------------------------

    def _begin(self, cut: float) -> None:
        # ISO times compare as strings: a cheap first filter, checked below as times
        rows = self.conn.execute(
            "SELECT id, started_at, ended_at, pruned_before, subprotocol FROM sessions "
            "WHERE coalesce(pruned_before, started_at) <= ? ORDER BY id",
            (utc_iso(cut + 1.0),),
        ).fetchall()
        queue = []
        for sid, started, ended, pruned, subprotocol in rows:
            try:
                start = utc_seconds(started)
                end = utc_seconds(ended) if ended else None
                whole_from = utc_seconds(pruned) if pruned else start
            except ValueError:
                continue  # a time this code cannot read: left alone
            # a connection cut before is cut again only once the cut-off has moved on by a
            # hundredth of the retention (or a check interval): not every open connection of a
            # fleet on every pass, for a few frames each
            if whole_from < cut - (self._regrain if pruned else 0.0):
                queue.append(_Candidate(sid, start, end, subprotocol))
        queue.reverse()  # popped from the end: oldest session first
        self._queue = queue
        self._cutoff = cut
        self._pass_deleted = 0
        self.stats.passes += 1
        self.stats.cutoff = utc_iso(cut)

    def step(self, budget: float) -> int:
        """Prune for at most ``budget`` seconds (one chunk at least, when there is work). Returns
        the frames deleted. Starts a pass when the last one is done and the check is due."""
        started = time.monotonic()
        if self._cutoff is None:
            if started < self._next_check:
                return 0
            cut = self.cutoff()
            if cut is None:
                self._next_check = started + self.retention.check_interval
                return 0
            self._begin(cut)
        deadline = started + budget
        deleted = 0
        while self._queue:
            deleted += self._prune_session(self._queue[-1], deadline)
            if time.monotonic() >= deadline:
                break
        if not self._queue:
            self._cutoff = None
            # over the size budget still: the next pass at once; else at the next check
            over = self.retention.max_bytes is not None and self.data_bytes() > self.retention.max_bytes
            again = over and self._pass_deleted + deleted > 0
            self._next_check = time.monotonic() + (0.0 if again else self.retention.check_interval)
        self._pass_deleted += deleted
        took = time.monotonic() - started
        self.stats.steps += 1
        self.stats.max_step_seconds = max(self.stats.max_step_seconds, took)
        self.stats.frames_pruned += deleted
        return deleted

    def defer(self) -> None:
        """Give up the pass under way (after a failure); the next check starts a new one."""
        self._queue = []
        self._cutoff = None
        self._next_check = time.monotonic() + self.retention.check_interval

    def run(self) -> PruneStats:
        """Prune until the capture is within its budget (offline: ``ocpp-replay prune``)."""
        self._next_check = 0.0
        while True:
            self.step(1.0)
            if self._cutoff is None and (self._next_check > time.monotonic() or self.cutoff() is None):
                return self.stats

    def _prune_session(self, s: _Candidate, deadline: float) -> int:
        """Prune one session, chunk by chunk, until the deadline; pop it when it is done.
        Returns the frames deleted."""
        cut = self._cutoff
        assert cut is not None
        conn = self.conn
        if s.end is not None and s.end < cut:
            deleted, done = self._delete_chunks(s.id, None, deadline)
            if done:
                with transaction(conn):
                    conn.execute("DELETE FROM capture_events WHERE session_id = ?", (s.id,))
                    conn.execute("DELETE FROM sessions WHERE id = ?", (s.id,))
                self.stats.sessions_pruned += 1
                self._queue.pop()
            return deleted
        if s.keep is None:
            s.keep = self._priming(s, cut)
        deleted, done = self._delete_chunks(s.id, (cut - s.start, s.keep), deadline, s.boundary)
        if done:
            with transaction(conn):
                conn.execute("UPDATE sessions SET pruned_before = ? WHERE id = ?", (utc_iso(cut), s.id))
            self.stats.sessions_cut += 1
            self._queue.pop()
        return deleted

    def _boundary(self, session_id: int, limit: float) -> int:
        """The first seq of a session's frames at or after ``limit`` (its elapsed time) by a binary
        search over the primary key: a long connection's retained frames are not scanned on
        every pass. Frames are in wire order, their elapsed time never decreasing."""
        row = self.conn.execute(
            "SELECT min(seq), max(seq) FROM frames WHERE session_id = ?", (session_id,)
        ).fetchone()
        if row[0] is None:
            return 0
        lo, hi = int(row[0]), int(row[1]) + 1
        while lo < hi:
            mid = (lo + hi) // 2
            found = self.conn.execute(_FIRST_FROM, (session_id, mid)).fetchone()
            if found is None or found[1] >= limit:
                hi = mid
            else:
                lo = int(found[0]) + 1
        return lo

    def _priming(self, s: _Candidate, cut: float) -> frozenset[int]:
        """The seqs before ``cut`` that a window starting there primes with (kept)."""
        s.boundary = self._boundary(s.id, cut - s.start)
        rows = self.conn.execute(
            "SELECT session_id, seq, timestamp, elapsed, direction, message_type, unique_id, action, "
            "raw, raw_bytes, parse_error FROM frames WHERE session_id = ? AND seq < ? AND elapsed < ? "
            "ORDER BY seq",
            (s.id, s.boundary, cut - s.start),
        ).fetchall()
        frames = [FrameRecord(r[0], r[1], r[2], r[3], Direction(r[4]), *r[5:]) for r in rows]
        found = cut_session(frames, s.start, s.end, ocpp_version(s.subprotocol), Window(cut))
        return frozenset(found.prime) if found is not None else frozenset()

    def _delete_chunks(
        self,
        session_id: int,
        before: tuple[float, frozenset[int]] | None,
        deadline: float,
        boundary: int = 0,
    ) -> tuple[int, bool]:
        """Delete a session's frames (all; or those at elapsed < limit, but the kept seqs),
        CHUNK_ROWS a transaction, until done or the deadline. Returns how many were deleted and
        whether it is done (what was deleted stays deleted; the next step goes on)."""
        limit, keep = before if before is not None else (None, frozenset[int]())
        total = 0
        after = -1
        while True:
            if limit is None:
                seqs = [r[0] for r in self.conn.execute(_ALL_SEQS, (session_id, after, CHUNK_ROWS))]
            else:
                params = (session_id, boundary, limit, after, CHUNK_ROWS)
                seqs = [r[0] for r in self.conn.execute(_SEQS_BEFORE, params)]
            gone = [(session_id, q) for q in seqs if q not in keep]
            if gone:
                with transaction(self.conn):
                    self.conn.executemany("DELETE FROM frames WHERE session_id = ? AND seq = ?", gone)
                total += len(gone)
            if len(seqs) < CHUNK_ROWS:
                return total, True
            after = seqs[-1]
            if time.monotonic() >= deadline:
                return total, False


_ALL_SEQS = "SELECT seq FROM frames WHERE session_id = ? AND seq > ? ORDER BY seq LIMIT ?"
_SEQS_BEFORE = (
    "SELECT seq FROM frames WHERE session_id = ? AND seq < ? AND elapsed < ? AND seq > ? ORDER BY seq LIMIT ?"
)
_FIRST_FROM = "SELECT seq, elapsed FROM frames WHERE session_id = ? AND seq >= ? ORDER BY seq LIMIT 1"


@dataclass(frozen=True, slots=True)
class PruneResult:
    stats: PruneStats
    data_before: int
    data_after: int
    file_after: int


def prune_capture(path: str | os.PathLike[str], retention: Retention, *, vacuum: bool = False) -> PruneResult:
    """Prune a capture that no proxy is writing (its writer lock is taken for the time) until it
    is within ``retention``; with ``vacuum``, shrink the file afterwards. Raises CaptureError."""
    from ocpp_replay.store.writer import WriterLock

    db = open_database(path)
    conn = db.conn
    try:
        with WriterLock(path):
            pruner = Pruner(conn, retention)
            before = pruner.data_bytes()
            try:
                stats = pruner.run()
                if vacuum:
                    conn.execute("VACUUM")
            except sqlite3.Error as exc:
                raise CaptureError(f"cannot prune {path}: {exc}") from exc
            after = pruner.data_bytes()
    finally:
        conn.close()
    return PruneResult(stats, before, after, os.path.getsize(path))
