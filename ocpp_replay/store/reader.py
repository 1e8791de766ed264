"""Reading a capture: sessions, frames, capture events."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from ocpp_replay.core.frames import Direction
from ocpp_replay.errors import CaptureError, UnknownSession
from ocpp_replay.store.schema import open_database


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
    offered_subprotocols: str | None
    path_suffix: str | None
    handshake_note: str | None
    pruned_before: str | None
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

    def as_dict(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in self.__slots__}
        d["direction"] = str(self.direction)
        if self.raw_bytes is not None:
            d["raw_bytes"] = self.raw_bytes.hex()
        return d


_SESSION_COLUMNS = (
    "id, charge_point_id, subprotocol, path, query, remote_addr, auth_user, upstream_url, "
    "upstream_status, started_at, ended_at, close_code, close_reason, closed_by, error, "
    "offered_subprotocols, path_suffix, handshake_note, pruned_before"
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


#: Values bound in one ``IN (...)`` (SQLite allows 32,766 parameters; this stays far below).
_CHUNK = 500


class Store:
    """Read access to a capture (and the database handle for later writers such as runs)."""

    def __init__(self, db: sqlite_utils.Database, path: Path) -> None:
        self.db = db
        self.path = path

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, create: bool = False, read_only: bool = False) -> Store:
        """Open a capture; ``read_only``: a command that only reads (a newer schema: a warning)."""
        return cls(open_database(path, create=create, read_only=read_only), Path(path))

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

    def frames(
        self, session_id: int, *, from_elapsed: float | None = None, to_elapsed: float | None = None
    ) -> Iterator[FrameRecord]:
        """The frames of one session in wire order (streamed from disk), with ``from_elapsed``
        and ``to_elapsed`` only those from and before those seconds after its start."""
        where, params = ["session_id = ?"], list[float]([session_id])
        if from_elapsed is not None:
            where.append("elapsed >= ?")
            params.append(from_elapsed)
        if to_elapsed is not None:
            where.append("elapsed < ?")
            params.append(to_elapsed)
        return self._frames(" AND ".join(where), params)

    def frames_by_seq(self, session_id: int, seqs: Iterable[int]) -> list[FrameRecord]:
        """The frames of one session with these seqs, in wire order."""
        out: list[FrameRecord] = []
        wanted = sorted(set(seqs))
        for i in range(0, len(wanted), _CHUNK):
            chunk = wanted[i : i + _CHUNK]
            out.extend(
                self._frames(
                    f"session_id = ? AND seq IN ({','.join('?' * len(chunk))})", [session_id, *chunk]
                )
            )
        return out

    def frames_with_ids(
        self, session_id: int, to_elapsed: float, message_types: Sequence[int], unique_ids: Iterable[str]
    ) -> list[FrameRecord]:
        """The frames of one session before ``to_elapsed`` of these message types with these
        unique ids, in wire order (a lookup on disk: a connection open for weeks stays there)."""
        out: list[FrameRecord] = []
        ids = sorted(set(unique_ids))
        types = ",".join(str(int(t)) for t in message_types)
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            out.extend(
                self._frames(
                    f"session_id = ? AND elapsed < ? AND message_type IN ({types}) "
                    f"AND unique_id IN ({','.join('?' * len(chunk))})",
                    [session_id, to_elapsed, *chunk],
                )
            )
        out.sort(key=lambda f: f.seq)
        return out

    def priming_frames(self, session_id: int, to_elapsed: float, *, answers: bool) -> Iterator[FrameRecord]:
        """The frames of one session before ``to_elapsed`` that the priming walk of a window
        reads (:func:`ocpp_replay.core.window.priming_calls`), streamed in wire order: the
        charger's calls of ``actions``, and with ``answers`` the backend's CALLRESULTs (1.6)."""
        from ocpp_replay.core.window import PRIMING_ACTIONS

        actions = sorted(PRIMING_ACTIONS)
        calls = f"direction = 'to_csms' AND message_type = 2 AND action IN ({','.join('?' * len(actions))})"
        if answers:
            calls = f"({calls}) OR (direction = 'to_cp' AND message_type = 3)"
        where = f"session_id = ? AND elapsed < ? AND ({calls})"
        return self._frames(where, [session_id, to_elapsed, *actions])

    def _frames(self, where: str, params: Sequence[Any]) -> Iterator[FrameRecord]:
        sql = (
            "SELECT session_id, seq, timestamp, elapsed, direction, message_type, unique_id, "
            f"action, raw, raw_bytes, parse_error FROM frames WHERE {where} ORDER BY seq"
        )
        try:
            cursor = self.db.execute(sql, params)
        except sqlite3.DatabaseError as exc:
            raise CaptureError(f"cannot read frames from {self.path}: {exc}") from exc
        return (FrameRecord(row[0], row[1], row[2], row[3], Direction(row[4]), *row[5:]) for row in cursor)

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
