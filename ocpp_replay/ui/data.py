"""What the UI shows, read from a capture opened read-only. Blocking: the server calls it in threads.

Every method returns plain JSON-ready data. Text from traffic is returned as it is stored; the
page escapes it when it shows it (static/app.js ``show``). Values that are JSON (payload values
of differences) travel as JSON *text*, so that a browser's number type never rounds an id such
as 9223372036854775807.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import sqlite_utils

from ocpp_replay.core.correlate import Message, ocpp_version
from ocpp_replay.core.diff import Difference, DiffKind
from ocpp_replay.core.frames import Direction, MessageType
from ocpp_replay.core.paths import format_path
from ocpp_replay.core.results import RunResult
from ocpp_replay.core.rules import Mode, RuleSet
from ocpp_replay.core.text import pretty_json
from ocpp_replay.core.validate import check_frames
from ocpp_replay.errors import CaptureError, CaptureNotFound, ConfigError, ReplayError, UnknownSession
from ocpp_replay.report.html import BACKEND_COMMANDS, CHARGER_TO_CSMS, CSMS_TO_CHARGER, coverage
from ocpp_replay.store.reader import _SESSION_COLUMNS, FrameRecord, SessionInfo, Store
from ocpp_replay.store.runs import list_runs, load_run
from ocpp_replay.store.schema import migrations
from ocpp_replay.ui.query import compile_filter

MAX_PAGE = 2000  # frames per request
MAX_SESSIONS = 500  # sessions per request
MAX_EXAMPLES = 50  # differences listed per group
CHECK_BUDGET = 5000  # frames checked against the schemas per sessions page (the rest: next time)
#: Kinds a path rule can silence (the others are about whole messages or the schema).
RULE_KINDS = frozenset({DiffKind.CHANGED, DiffKind.ADDED, DiffKind.REMOVED, DiffKind.TYPE_CHANGED})

_FRAME_COLUMNS = (
    "session_id, seq, timestamp, elapsed, direction, message_type, unique_id, action, raw, raw_bytes, "
    "parse_error"
)


def _record(row: Sequence[Any]) -> FrameRecord:
    return FrameRecord(row[0], row[1], row[2], row[3], Direction(row[4]), *row[5:])


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _error_code(raw: str | None) -> str | None:
    try:
        data = json.loads(raw or "")
    except ValueError:
        return None
    return str(data[2]) if isinstance(data, list) and len(data) > 2 else None


class CaptureView:
    """A capture, read-only, for the UI. Thread-safe: each thread gets its own connection."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._tallies: dict[int, dict[str, int]] = {}  # session -> frames and violations so far
        self._runs: dict[int, tuple[RunResult, dict[str, Any]]] = {}
        self._check()

    # ------------------------------------------------------------------ connection

    def _connect(self) -> sqlite3.Connection:
        if not self.path.exists():
            raise CaptureNotFound(f"no capture at {self.path}")
        if self.path.is_dir():
            raise CaptureError(f"{self.path} is a directory, not a capture database")
        uri = self.path.resolve().as_uri() + "?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=2.0, check_same_thread=False)
            conn.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            raise CaptureError(f"cannot open {self.path} read-only: {exc}") from exc
        return conn

    def conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def store(self) -> Store:
        store: Store | None = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = Store(sqlite_utils.Database(self.conn()), self.path)
        return store

    def _check(self) -> None:
        try:
            db = self.store().db
            names = set(db.table_names())
            if not {"sessions", "frames", "_sqlite_migrations"} <= names:
                raise CaptureError(f"{self.path} is not an ocpp-replay capture")
            if migrations.pending(db):
                raise CaptureError(
                    f"{self.path} was written by an older ocpp-replay: run `ocpp-replay sessions --db "
                    f"{self.path}` once to bring it up to date (the UI only reads)"
                )
        except sqlite3.Error as exc:
            raise CaptureError(f"{self.path} is not a readable capture database: {exc}") from exc

    def data_version(self) -> int:
        """Changes whenever another connection (the proxy's writer) commits."""
        row = self.conn().execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            self._local.store = None

    # ------------------------------------------------------------------ sessions

    def _tally(self, s: SessionInfo, budget: list[int]) -> tuple[int, int | None]:
        """A session's frames and schema violations, counted once each: a live session's new
        frames only, on each call. Checking frames against the schemas is the costly part, so a
        call checks at most ``budget[0]`` frames in all (it is decremented); a session not
        checked to its end yet has None for violations (the next call goes on)."""
        conn = self.conn()
        with self._lock:
            seen = self._tallies.get(s.id)
        t = dict(seen) if seen else {"seq": -1, "frames": 0, "checked": -1, "violations": 0}
        n, top = conn.execute(
            "SELECT count(*), max(seq) FROM frames WHERE session_id = ? AND seq > ?", [s.id, t["seq"]]
        ).fetchone()
        if n:
            t["frames"] += n
            t["seq"] = top
        version = ocpp_version(s.subprotocol)
        done = version is None or t["checked"] >= t["seq"]
        if not done and version is not None and budget[0] > 0:
            rows = conn.execute(
                f"SELECT {_FRAME_COLUMNS} FROM frames WHERE session_id = ? AND seq > ? AND seq <= ? "
                "ORDER BY seq LIMIT ?",
                [s.id, t["checked"], t["seq"], budget[0]],
            ).fetchall()
            budget[0] -= len(rows)
            if rows:
                found = check_frames(s.id, s.charge_point_id, version, [_record(r) for r in rows])
                t["violations"] += len(found)
                t["checked"] = rows[-1][1]
            done = t["checked"] >= t["seq"]
        with self._lock:
            self._tallies[s.id] = t
        return t["frames"], (t["violations"] if done else None)

    def _infos(self, ids: Sequence[int]) -> list[SessionInfo]:
        """Sessions by id, without counting their frames (see _tally)."""
        marks = ",".join("?" * len(ids))
        rows = (
            self.conn()
            .execute(
                f"SELECT {_SESSION_COLUMNS}, 0, coalesce(frames_lost, 0) FROM sessions WHERE id IN ({marks})",
                ids,
            )
            .fetchall()
        )
        return [SessionInfo(*row) for row in rows]

    def _counted(self, s: SessionInfo, budget: list[int]) -> dict[str, Any]:
        frames, violations = self._tally(s, budget)
        d = self._session_dict(replace(s, frames=frames))
        d["violations"] = violations
        return d

    def _session_dict(self, s: SessionInfo) -> dict[str, Any]:
        d = s.as_dict()
        d["ocpp"] = ocpp_version(s.subprotocol)
        d["live"] = s.ended_at is None
        return d

    def sessions(
        self,
        *,
        charge_point: str = "",
        since: str = "",
        until: str = "",
        action: str = "",
        expression: str = "",
        limit: int = 200,
        offset: int = 0,
    ) -> dict[str, Any]:
        """Sessions (newest first) that match every filter given; with the total that match."""
        conds: list[str] = []
        params: list[Any] = []
        if charge_point:
            conds.append("instr(lower(s.charge_point_id), lower(?)) > 0")
            params.append(charge_point)
        if until:
            conds.append("s.started_at <= ?")
            params.append(until)
        if since:
            conds.append("(s.ended_at IS NULL OR s.ended_at >= ?)")
            params.append(since)
        if action:
            conds.append("EXISTS (SELECT 1 FROM frames f WHERE f.session_id = s.id AND f.action = ?)")
            params.append(action)
        compiled = compile_filter(expression)
        if compiled is not None:
            conds.append(f"EXISTS (SELECT 1 FROM frames f WHERE f.session_id = s.id AND {compiled[0]})")
            params.extend(compiled[1])
        clause = (" WHERE " + " AND ".join(conds)) if conds else ""
        limit = max(1, min(limit, MAX_SESSIONS))
        conn = self.conn()
        try:
            total = conn.execute(f"SELECT count(*) FROM sessions s{clause}", params).fetchone()[0]
            ids = [
                r[0]
                for r in conn.execute(
                    f"SELECT s.id FROM sessions s{clause} "
                    "ORDER BY s.started_at DESC, s.id DESC LIMIT ? OFFSET ?",
                    [*params, limit, max(0, offset)],
                )
            ]
        except sqlite3.OperationalError as exc:
            raise ConfigError(f"filter: {exc}") from exc
        infos = {s.id: s for s in self._infos(ids)} if ids else {}
        budget = [CHECK_BUDGET]
        rows = [self._counted(infos[i], budget) for i in ids if i in infos]
        return {"total": total, "sessions": rows, "offset": offset, "limit": limit}

    def suggestions(self) -> dict[str, list[str]]:
        """Charge point ids and actions seen, for the filter inputs."""
        conn = self.conn()
        cps = [r[0] for r in conn.execute("SELECT DISTINCT charge_point_id FROM sessions LIMIT 5000")]
        actions = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT action FROM frames WHERE message_type = 2 AND action IS NOT NULL LIMIT 500"
            )
        ]
        return {"charge_points": sorted(cps), "actions": sorted(actions)}

    # ------------------------------------------------------------------ frames

    def frames(
        self,
        session_id: int,
        *,
        after: int = -1,
        limit: int = 500,
        tail: int = 0,
        expression: str = "",
    ) -> dict[str, Any]:
        """A page of a session's frames for the sequence diagram.

        ``after``: frames with a higher seq; ``tail``: the last N frames instead. Each frame has
        its gap to the previous one, its pair (the CALL a result answers, the answer of a CALL)
        with the round trip, its schema violations, and ``match`` when an expression is given.
        """
        info = self.store().session(session_id)
        conn = self.conn()
        limit = max(1, min(limit, MAX_PAGE))
        if tail:
            rows = conn.execute(
                f"SELECT {_FRAME_COLUMNS} FROM frames WHERE session_id = ? ORDER BY seq DESC LIMIT ?",
                [session_id, min(tail, MAX_PAGE)],
            ).fetchall()[::-1]
        else:
            rows = conn.execute(
                f"SELECT {_FRAME_COLUMNS} FROM frames WHERE session_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                [session_id, after, limit + 1],
            ).fetchall()
        more = not tail and len(rows) > limit
        rows = rows[:limit]
        records = [_record(r) for r in rows]
        first_seq = records[0].seq if records else after
        prev = conn.execute(
            "SELECT elapsed FROM frames WHERE session_id = ? AND seq < ? ORDER BY seq DESC LIMIT 1",
            [session_id, first_seq],
        ).fetchone()
        matches: set[int] = set()
        compiled = compile_filter(expression)
        if compiled is not None and records:
            try:
                matches = {
                    r[0]
                    for r in conn.execute(
                        f"SELECT f.seq FROM frames f WHERE f.session_id = ? AND f.seq BETWEEN ? AND ? "
                        f"AND {compiled[0]}",
                        [session_id, records[0].seq, records[-1].seq, *compiled[1]],
                    )
                }
            except sqlite3.OperationalError as exc:
                raise ConfigError(f"filter: {exc}") from exc
        violations: dict[int, list[dict[str, str]]] = defaultdict(list)
        version = ocpp_version(info.subprotocol)
        if version is not None:
            for v in check_frames(session_id, info.charge_point_id, version, records):
                violations[v.seq].append({"path": v.path, "message": v.message, "kind": v.message_kind})
        out: list[dict[str, Any]] = []
        calls: dict[tuple[str, str], dict[str, Any]] = {}
        last = prev[0] if prev else None
        for f in records:
            d: dict[str, Any] = {
                "seq": f.seq,
                "timestamp": f.timestamp,
                "elapsed": f.elapsed,
                "gap": None if last is None else f.elapsed - last,
                "direction": str(f.direction),
                "type": f.message_type,
                "unique_id": f.unique_id,
                "action": f.action,
                "size": len(f.raw.encode()) if f.raw is not None else len(f.raw_bytes or b""),
                "binary": f.raw is None,
                "parse_error": f.parse_error,
                "violations": violations.get(f.seq, []),
                "pair": None,
                "rtt": None,
            }
            if expression:
                d["match"] = f.seq in matches
            last = f.elapsed
            if f.message_type == MessageType.CALL_ERROR:
                d["error_code"] = _error_code(f.raw)
            if f.message_type == MessageType.CALL and f.unique_id is not None:
                calls[(str(f.direction), f.unique_id)] = d
            elif f.message_type in (MessageType.CALL_RESULT, MessageType.CALL_ERROR) and f.unique_id:
                call_dir = str(f.direction.reverse)
                call = calls.pop((call_dir, f.unique_id), None)
                if call is not None:
                    call_seq, call_elapsed = call["seq"], call["elapsed"]
                else:
                    found = conn.execute(
                        "SELECT seq, elapsed FROM frames WHERE session_id = ? AND seq < ? "
                        "AND message_type = 2 AND direction = ? AND unique_id = ? ORDER BY seq DESC LIMIT 1",
                        [session_id, f.seq, call_dir, f.unique_id],
                    ).fetchone()
                    call_seq, call_elapsed = found if found else (None, None)
                if call_seq is not None:
                    rtt = (f.elapsed - call_elapsed) * 1000
                    d["pair"], d["rtt"] = call_seq, rtt
                    if call is not None:
                        call["pair"], call["rtt"] = f.seq, rtt
            out.append(d)
        # CALLs whose answer comes after this page: look it up, so that they show their round trip
        for (call_dir, uid), call in calls.items():
            answer = conn.execute(
                "SELECT seq, elapsed FROM frames WHERE session_id = ? AND seq > ? AND message_type IN (3,4) "
                "AND direction != ? AND unique_id = ? ORDER BY seq LIMIT 1",
                [session_id, call["seq"], call_dir, uid],
            ).fetchone()
            if answer is not None:
                call["pair"], call["rtt"] = answer[0], (answer[1] - call["elapsed"]) * 1000
        return {"session": self._session_dict(info), "frames": out, "more": more}

    def frame(self, session_id: int, seq: int) -> dict[str, Any]:
        """One frame's exact text, laid out, and its metadata."""
        row = (
            self.conn()
            .execute(
                f"SELECT {_FRAME_COLUMNS} FROM frames WHERE session_id = ? AND seq = ?", [session_id, seq]
            )
            .fetchone()
        )
        if row is None:
            raise UnknownSession(f"no frame {seq} in session {session_id}")
        f = _record(row)
        info = self.store().session(session_id)
        page = self.frames(session_id, after=seq - 1, limit=1)
        meta = page["frames"][0] if page["frames"] else {}
        return {
            **meta,
            "charge_point_id": info.charge_point_id,
            "session_id": session_id,
            "raw": f.raw,
            "raw_hex": f.raw_bytes.hex() if f.raw_bytes is not None else None,
            "pretty": pretty_json(f.raw) if f.raw is not None else None,
        }

    # ------------------------------------------------------------------ runs

    def runs(self) -> list[dict[str, Any]]:
        return list_runs(self.store())[::-1]

    def _run(self, run_id: int) -> tuple[RunResult, dict[str, Any]]:
        with self._lock:
            cached = self._runs.get(run_id)
        if cached is not None:
            return cached
        try:
            result = load_run(self.store(), run_id)
        except ReplayError as exc:
            raise UnknownSession(str(exc)) from exc
        recorded = self._recorded_kinds(result)
        detail = {
            "run": self._run_summary(result),
            "groups": self._groups(result, recorded),
            "coverage": self._coverage(result),
        }
        with self._lock:
            self._runs[run_id] = (result, detail)
        return result, detail

    def _recorded_kinds(self, result: RunResult) -> dict[tuple[int, int], int | None]:
        """(session, seq) -> message type of the recorded frame each difference is about."""
        keys = {(d.session_id, d.seq) for d in result.differences if d.seq is not None}
        out: dict[tuple[int, int], int | None] = {}
        conn = self.conn()
        for sid, seq in keys:
            row = conn.execute(
                "SELECT message_type FROM frames WHERE session_id = ? AND seq = ?", [sid, seq]
            ).fetchone()
            out[(sid, seq)] = row[0] if row else None
        return out

    def _run_summary(self, result: RunResult) -> dict[str, Any]:
        return {
            "id": result.run_id,
            "kind": result.kind,
            "target": result.target,
            "baseline": result.baseline,
            "started_at": result.started_at,
            "ended_at": result.ended_at,
            "sessions": len(result.sessions),
            "messages": result.messages,
            "differences": len(result.gating),
            "side": result.side,
            "sides": ["baseline", "candidate"] if result.kind == "compare" else ["recording", "target"],
            "options": dict(result.options),
        }

    def _groups(self, result: RunResult, recorded: dict[tuple[int, int], int | None]) -> list[dict[str, Any]]:
        """The deciding differences grouped by (action, path, kind), largest group first."""
        compared: dict[str, int] = defaultdict(int)
        versions: dict[int, str | None] = {}
        for s in result.sessions:
            versions[s.session_id] = ocpp_version(s.subprotocol)
            for action, n in s.compared.items():
                compared[action] += n
        groups: dict[tuple[str, str, str], list[Difference]] = defaultdict(list)
        for d in result.gating:
            groups[(d.action or "", d.path, str(d.kind))].append(d)
        out: list[dict[str, Any]] = []
        for (action, path, kind), diffs in groups.items():
            messages = {(d.session_id, d.seq) for d in diffs}
            kinds = {recorded.get((d.session_id, d.seq)) for d in diffs if d.seq is not None}
            message = "request" if kinds == {MessageType.CALL} else "response"
            vs = sorted({v for d in diffs if (v := versions.get(d.session_id))})
            ruleable = DiffKind(kind) in RULE_KINDS and bool(path) and bool(action) and len(kinds) <= 1
            out.append(
                {
                    "key": f"{action}\x00{path}\x00{kind}",
                    "action": action,
                    "path": path,
                    "kind": kind,
                    "message": message,
                    "versions": vs,
                    "count": len(diffs),
                    "messages": len(messages),
                    "compared": compared.get(action, 0),
                    "sessions": sorted({d.session_id for d in diffs}),
                    "charge_points": sorted({d.charge_point_id for d in diffs}),
                    "ruleable": ruleable,
                    "examples": [
                        {
                            "session_id": d.session_id,
                            "charge_point_id": d.charge_point_id,
                            "seq": d.seq,
                            "expected": _json_text(d.expected),
                            "actual": _json_text(d.actual),
                        }
                        for d in diffs[:MAX_EXAMPLES]
                    ],
                }
            )
        out.sort(key=lambda g: (-int(g["count"]), str(g["action"]), str(g["path"])))
        return out

    def _coverage(self, result: RunResult) -> dict[str, Any]:
        cov = coverage(result)
        versions = sorted({ocpp_version(s.subprotocol) or "?" for s in result.sessions}) or ["?"]
        rows: dict[str, set[str]] = defaultdict(set)
        for direction, action, _v in cov:
            rows[direction].add(action)
        for v in versions:
            rows[CSMS_TO_CHARGER].update(BACKEND_COMMANDS.get(v, ()))
        out = []
        for direction in (CHARGER_TO_CSMS, CSMS_TO_CHARGER):
            for action in sorted(rows.get(direction, ()), key=lambda a: (a.startswith("("), a)):
                cells = []
                for v in versions:
                    n, d = cov.get((direction, action, v), (0, 0))
                    known = action in BACKEND_COMMANDS.get(v, ()) or bool(n or d)
                    cells.append({"version": v, "exchanges": n, "differences": d, "known": known})
                out.append({"direction": direction, "action": action, "cells": cells})
        return {"versions": versions, "rows": out}

    def run(self, run_id: int, rules: RuleSet | None = None) -> dict[str, Any]:
        """A run's summary, its differences grouped, its coverage; groups a rules file silences
        are marked ``in_rules``."""
        _result, detail = self._run(run_id)
        groups = []
        for g in detail["groups"]:
            in_rules = False
            if rules is not None and g["ruleable"]:
                in_rules = all(
                    _silenced(rules, v, g["action"], g["message"], g["path"])
                    for v in (g["versions"] or [None])
                )
            groups.append({**g, "in_rules": in_rules})
        return {**detail, "groups": groups}

    def group(self, run_id: int, key: str) -> dict[str, Any]:
        _result, detail = self._run(run_id)
        for g in detail["groups"]:
            if g["key"] == key:
                return {**g, "run": detail["run"]}
        raise UnknownSession(f"run {run_id} has no such difference group")

    def differences_at(self, run_id: int, session_id: int, seq: int | None) -> list[dict[str, Any]]:
        result, _ = self._run(run_id)
        return [
            {
                "action": d.action,
                "path": d.path,
                "kind": str(d.kind),
                "expected": _json_text(d.expected),
                "actual": _json_text(d.actual),
                "side": d.side,
            }
            for d in result.gating
            if d.session_id == session_id and d.seq == seq
        ]

    def run_frames(self, run_id: int, side: str, session_id: int) -> dict[str, Any]:
        """The frames one backend exchanged in one session of a run, for the diagram."""
        result, _ = self._run(run_id)
        for s in result.sessions:
            if s.session_id == session_id:
                break
        else:
            raise UnknownSession(f"run {run_id} has no session {session_id}")
        frames = s.frames_of(side)[:MAX_PAGE]
        out: list[dict[str, Any]] = []
        calls: dict[tuple[str, str], dict[str, Any]] = {}
        last: float | None = None
        for f in frames:
            d: dict[str, Any] = {
                "seq": f.seq,
                "recorded_seq": f.recorded_seq,
                "timestamp": f.timestamp,
                "elapsed": f.elapsed,
                "gap": None if last is None else f.elapsed - last,
                "direction": f.direction,
                "type": f.message_type,
                "unique_id": f.unique_id,
                "action": f.action,
                "size": len(f.raw.encode()),
                "binary": False,
                "parse_error": None,
                "violations": [],
                "pair": None,
                "rtt": None,
            }
            last = f.elapsed
            if f.message_type == MessageType.CALL_ERROR:
                d["error_code"] = _error_code(f.raw)
            if f.message_type == MessageType.CALL and f.unique_id is not None:
                calls[(f.direction, f.unique_id)] = d
            elif f.message_type in (MessageType.CALL_RESULT, MessageType.CALL_ERROR) and f.unique_id:
                back = "to_cp" if f.direction == "to_csms" else "to_csms"
                call = calls.pop((back, f.unique_id), None)
                if call is not None:
                    rtt = (f.elapsed - call["elapsed"]) * 1000
                    d["pair"], d["rtt"] = call["seq"], rtt
                    call["pair"], call["rtt"] = f.seq, rtt
            out.append(d)
        return {
            "session": {
                "id": s.session_id,
                "charge_point_id": s.charge_point_id,
                "subprotocol": s.subprotocol,
            },
            "frames": out,
            "more": len(s.frames_of(side)) > MAX_PAGE,
        }

    def run_frame(self, run_id: int, side: str, session_id: int, seq: int) -> dict[str, Any]:
        result, _ = self._run(run_id)
        for s in result.sessions:
            if s.session_id == session_id:
                for f in s.frames_of(side):
                    if f.seq == seq:
                        meta: dict[str, Any] = next(
                            (
                                x
                                for x in self.run_frames(run_id, side, session_id)["frames"]
                                if x["seq"] == seq
                            ),
                            {},
                        )
                        return {
                            **meta,
                            "session_id": session_id,
                            "charge_point_id": s.charge_point_id,
                            "side": side,
                            "raw": f.raw,
                            "raw_hex": None,
                            "pretty": pretty_json(f.raw),
                        }
        raise UnknownSession(f"run {run_id} has no frame {seq} of {side} in session {session_id}")


def _silenced(rules: RuleSet, version: str | None, action: str, message: str, path: str) -> bool:
    """Whether RULES ignore PATH of this message (so a re-run would not report it)."""
    for rule in rules.for_message(version, action, Message(message)):
        text = format_path(rule.path)
        if rule.mode is Mode.IGNORE and (path == text or path.startswith((text + ".", text + "["))):
            return True
    return False
