"""Runs in the capture: store a replay's or comparison's result, read it back, list runs.

A run is one replay or comparison (or a live shadow); its sessions, differences and the frames
it exchanged go into the ``runs``, ``run_sessions``, ``differences`` and ``run_frames`` tables
of the capture (docs/capture-format.md). Blocking: call from a thread when on an event loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ocpp_replay.core.diff import Difference, DiffKind
from ocpp_replay.core.results import LiveFrame, NoiseField, RunResult, SessionResult
from ocpp_replay.errors import CaptureError, ReplayError
from ocpp_replay.store.reader import Store
from ocpp_replay.store.schema import transaction


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _insert_diffs(conn: sqlite3.Connection, run_id: int, differences: Iterable[Difference]) -> None:
    conn.executemany(
        "INSERT INTO run_diffs (run_id, session_id, charge_point_id, seq, action, kind, path, expected, "
        "actual, side) VALUES (?,?,?,?,?,?,?,?,?,?)",
        [
            (
                run_id,
                d.session_id,
                d.charge_point_id,
                d.seq,
                d.action,
                str(d.kind),
                d.path,
                _json(d.expected),
                _json(d.actual),
                d.side,
            )
            for d in differences
        ],
    )


_FRAME_COLUMNS = (
    "run_id, side, session_id, seq, recorded_seq, timestamp, elapsed, direction, message_type, unique_id, "
    "action, raw, lateness, held"
)


def _frame_rows(run_id: int, frames: Iterable[tuple[int, LiveFrame]]) -> list[tuple[Any, ...]]:
    """Rows of run_frames (:data:`_FRAME_COLUMNS`) for (session id, frame) pairs."""
    return [
        (
            run_id,
            f.side,
            sid,
            f.seq,
            f.recorded_seq,
            f.timestamp,
            f.elapsed,
            f.direction,
            f.message_type,
            f.unique_id,
            f.action,
            f.raw,
            f.lateness,
            f.held,
        )
        for sid, f in frames
    ]


def _pairs(sessions: Iterable[SessionResult]) -> Iterator[tuple[int, LiveFrame]]:
    return ((s.session_id, f) for s in sessions for f in s.frames)


def store_session_frames(store: Store, run_id: int, sessions: Iterable[SessionResult]) -> None:
    """Write the frames finished sessions exchanged into run ``run_id`` while it goes on, in one
    transaction (blocking); :func:`store_run` with that run's id completes it. Raises CaptureError."""
    conn = store.db.conn
    try:
        with transaction(conn):
            conn.executemany(
                f"INSERT INTO run_frames ({_FRAME_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                _frame_rows(run_id, _pairs(sessions)),
            )
    except sqlite3.Error as exc:
        raise CaptureError(f"cannot store the run's frames in {store.path}: {exc}") from exc


def store_run(store: Store, result: RunResult, *, frames: bool = True) -> RunResult:
    """Write a run, its differences and (with ``frames``) its live frames; returns it with run_id.

    A result that has a ``run_id`` already completes that run (opened with
    :func:`open_live_run`, its finished sessions' frames written by :func:`store_session_frames`
    as they finished): its row is updated, and the frames sessions still hold are added.
    Blocking: call it in a thread from async code.
    """
    conn = store.db.conn
    # What load_run needs besides the rows of run_diffs and run_frames: per-session metadata.
    summary = {
        **result.summary(),
        "noise": [n.as_dict() for n in result.noise],
        "session_results": [
            {
                "session_id": s.session_id,
                "charge_point_id": s.charge_point_id,
                "subprotocol": s.subprotocol,
                "started_at": s.started_at,
                "ended_at": s.ended_at,
                "compared": dict(s.compared),
                "held": s.held,
                "error": s.error,
                "close_code": s.close_code,
            }
            for s in result.sessions
        ],
    }
    values = (
        result.kind,
        result.started_at,
        result.ended_at,
        result.target,
        result.baseline,
        result.candidate,
        _json(result.options),
        len(result.sessions),
        result.messages,
        len(result.gating),
        result.exit_code,
        _json(summary),
    )
    try:
        conn.execute("BEGIN")
        if result.run_id is None:
            cur = conn.execute(
                "INSERT INTO runs (kind, started_at, ended_at, target, baseline, candidate, options, "
                "sessions, messages, diffs, exit_code, summary) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                values,
            )
            run_id = cur.lastrowid
        else:
            run_id = result.run_id
            conn.execute(
                "UPDATE runs SET kind = ?, started_at = ?, ended_at = ?, target = ?, baseline = ?, "
                "candidate = ?, options = ?, sessions = ?, messages = ?, diffs = ?, exit_code = ?, "
                "summary = ? WHERE id = ?",
                (*values, run_id),
            )
        assert run_id is not None
        _insert_diffs(conn, run_id, result.differences)
        if frames:
            conn.executemany(
                f"INSERT INTO run_frames ({_FRAME_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                _frame_rows(run_id, _pairs(result.sessions)),
            )
        conn.execute("COMMIT")
    except Exception as exc:
        if conn.in_transaction:
            with contextlib.suppress(Exception):
                conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise CaptureError(f"cannot store the run in {store.path}: {exc}") from exc
        raise
    return result.with_run_id(run_id)


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def load_run(store: Store, run_id: int) -> RunResult:
    """Rebuild a stored run (replay or compare) from runs, run_diffs and run_frames (blocking).

    Raises ReplayError when the capture has no such run.
    """
    db = store.db
    try:
        row = db.execute(
            "SELECT kind, started_at, ended_at, target, baseline, options, summary FROM runs WHERE id = ?",
            [run_id],
        ).fetchone()
        if row is None:
            raise ReplayError(f"no run {run_id} in {store.path} (ocpp-replay runs lists them)")
        diff_rows = db.execute(
            "SELECT session_id, charge_point_id, seq, action, kind, path, expected, actual, side "
            "FROM run_diffs WHERE run_id = ? ORDER BY id",
            [run_id],
        ).fetchall()
        frame_rows = db.execute(
            "SELECT session_id, side, seq, recorded_seq, timestamp, elapsed, direction, message_type, "
            "unique_id, action, raw, lateness, held FROM run_frames WHERE run_id = ? "
            "ORDER BY session_id, side = 'candidate', side, seq",
            [run_id],
        ).fetchall()
    except sqlite3.Error as exc:
        raise CaptureError(f"cannot read run {run_id} from {store.path}: {exc}") from exc
    kind, started_at, ended_at, target, baseline, options_text, summary_text = row
    summary = _loads(summary_text)
    summary = summary if isinstance(summary, dict) else {}
    options = _loads(options_text)
    diffs: dict[int, list[Difference]] = {}
    for sid, cp, seq, action, dkind, path, expected, actual, side in diff_rows:
        try:
            k = DiffKind(dkind)
        except ValueError:
            k = DiffKind.CHANGED
        diffs.setdefault(sid, []).append(
            Difference(sid, cp or "", seq, action, k, path or "", _loads(expected), _loads(actual), side)
        )
    frames: dict[int, list[LiveFrame]] = {}
    for sid, side, *rest in frame_rows:
        seq, rec, ts, elapsed, direction, mtype, uid, action, raw, lateness, held = rest
        frames.setdefault(sid, []).append(
            LiveFrame(
                seq,
                rec,
                ts or "",
                elapsed or 0.0,
                direction,
                mtype,
                uid,
                action,
                raw or "",
                lateness,
                side,
                held,
            )
        )
    metas = {m["session_id"]: m for m in summary.get("session_results", []) if isinstance(m, dict)}
    ids = list(metas) or sorted(set(diffs) | set(frames))
    missing = [i for i in ids if i not in metas]
    infos = {i.id: i for i in store.sessions(ids=missing)} if missing else {}
    sessions = []
    for sid in ids:
        meta = metas.get(sid, {})
        info = infos.get(sid)
        fs = frames.get(sid, [])
        compared = meta.get("compared")
        if not isinstance(compared, dict):  # an older run: count the backend's messages
            compared = dict(Counter(f.action or "-" for f in fs if f.direction == "to_cp" and f.recorded_seq))
        sessions.append(
            SessionResult(
                session_id=sid,
                charge_point_id=meta.get("charge_point_id")
                or (info.charge_point_id if info else None)
                or next((d.charge_point_id for d in diffs.get(sid, [])), ""),
                subprotocol=meta.get("subprotocol", info.subprotocol if info else None),
                started_at=meta.get("started_at"),
                ended_at=meta.get("ended_at"),
                differences=tuple(diffs.get(sid, [])),
                compared=compared,
                frames=tuple(fs),
                lateness=tuple(f.lateness for f in fs if f.lateness is not None),
                held_seconds=tuple(f.held for f in fs if f.held),
                held=int(meta.get("held") or 0),
                error=meta.get("error"),
                close_code=meta.get("close_code"),
            )
        )
    noise = tuple(NoiseField.from_dict(n) for n in summary.get("noise", []) if isinstance(n, dict))
    return RunResult(
        target=target or "",
        started_at=started_at or "",
        ended_at=ended_at or "",
        sessions=tuple(sessions),
        options=options if isinstance(options, dict) else {},
        kind=kind or "replay",
        run_id=run_id,
        baseline=baseline,
        noise=noise,
    )


def list_runs(store: Store) -> list[dict[str, Any]]:
    """The stored runs, oldest first (blocking)."""
    rows = store.db.execute(
        "SELECT id, kind, started_at, ended_at, target, baseline, candidate, sessions, messages, diffs, "
        "exit_code, summary FROM runs ORDER BY id"
    ).fetchall()
    out = []
    for r in rows:
        summary = json.loads(r[11]) if r[11] else None
        out.append(
            {
                "id": r[0],
                "kind": r[1],
                "started_at": r[2],
                "ended_at": r[3],
                "target": r[4],
                "baseline": r[5],
                "candidate": r[6],
                "sessions": r[7],
                "messages": r[8],
                "diffs": r[9],
                "exit_code": r[10],
                "timing": summary.get("timing") if isinstance(summary, dict) else None,
            }
        )
    return out


# ----------------------------------------------------------------------------- live runs


def open_live_run(
    store: Store, *, kind: str, started_at: str, target: str, baseline: str | None, options: dict[str, Any]
) -> int:
    """Insert a run that is still going (a live shadow): no end yet; returns its id (blocking).

    :func:`update_live_run` adds to it while it runs; :func:`load_run` reads it at any time.
    """
    try:
        with store.db.conn:
            cur = store.db.conn.execute(
                "INSERT INTO runs (kind, started_at, target, baseline, options, sessions, messages, diffs, "
                "exit_code, summary) VALUES (?,?,?,?,?,0,0,0,0,?)",
                (kind, started_at, target, baseline, _json(options), _json({"session_results": []})),
            )
    except sqlite3.Error as exc:
        raise CaptureError(f"cannot store the run in {store.path}: {exc}") from exc
    assert cur.lastrowid is not None
    return cur.lastrowid


def update_live_run(
    store: Store,
    run_id: int,
    *,
    counts: tuple[int, int, int],
    differences: list[Difference],
    frames: list[tuple[int, LiveFrame]],
    summary: dict[str, Any] | None = None,
    ended_at: str | None = None,
) -> None:
    """Append differences and (session id, frame) pairs to a live run, set its counts
    (sessions, messages, diffs) and, when given, its summary (as :func:`store_run` writes it,
    session_results included). One transaction; blocking. Raises CaptureError."""
    conn = store.db.conn
    try:
        conn.execute("BEGIN IMMEDIATE")
        _insert_diffs(conn, run_id, differences)
        conn.executemany(
            f"INSERT OR REPLACE INTO run_frames ({_FRAME_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            _frame_rows(run_id, frames),
        )
        sessions, messages, diffs = counts
        conn.execute(
            "UPDATE runs SET ended_at = coalesce(?, ended_at), sessions = ?, messages = ?, diffs = ?, "
            "exit_code = ?, summary = coalesce(?, summary) WHERE id = ?",
            (
                ended_at,
                sessions,
                messages,
                diffs,
                1 if diffs else 0,
                _json(summary) if summary is not None else None,
                run_id,
            ),
        )
        conn.execute("COMMIT")
    except Exception as exc:
        if conn.in_transaction:
            with contextlib.suppress(Exception):
                conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise CaptureError(f"cannot update run {run_id} in {store.path}: {exc}") from exc
        raise


def diffs_since(store: Store, after: int) -> list[tuple[int, int, Difference]]:
    """(row id, run id, difference) of the differences stored after row ``after``, in order
    (``tail --diffs`` follows a live shadow with it). Blocking."""
    rows = store.db.execute(
        "SELECT id, run_id, session_id, charge_point_id, seq, action, kind, path, expected, actual, side "
        "FROM run_diffs WHERE id > ? ORDER BY id LIMIT 1000",
        [after],
    ).fetchall()
    out = []
    for rowid, run_id, sid, cp, seq, action, kind, path, expected, actual, side in rows:
        try:
            k = DiffKind(kind)
        except ValueError:
            k = DiffKind.CHANGED
        out.append(
            (
                rowid,
                run_id,
                Difference(sid, cp or "", seq, action, k, path or "", _loads(expected), _loads(actual), side),
            )
        )
    return out


def _delete(store: Store, ids: list[int]) -> None:
    conn = store.db.conn
    try:
        with contextlib.closing(conn.cursor()) as cur:
            cur.execute("BEGIN IMMEDIATE")
            try:
                for table, column in (("run_frames", "run_id"), ("run_diffs", "run_id"), ("runs", "id")):
                    cur.executemany(f"DELETE FROM {table} WHERE {column} = ?", [(i,) for i in ids])
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
    except sqlite3.Error as exc:
        raise CaptureError(f"cannot delete runs from {store.path}: {exc}") from exc


def delete_run(store: Store, run_id: int) -> None:
    """Remove run ``run_id`` with its differences and frames, in one transaction (blocking).

    Raises ReplayError when the capture has no such run.
    """
    if store.db.execute("SELECT 1 FROM runs WHERE id = ?", [run_id]).fetchone() is None:
        raise ReplayError(f"no run {run_id} in {store.path} (ocpp-replay runs lists them)")
    _delete(store, [run_id])


def prune_runs(store: Store, keep: int) -> list[int]:
    """Remove every run but the ``keep`` newest (by id), in one transaction; return the removed ids."""
    if keep < 0:
        raise ReplayError(f"--keep must be 0 or more, not {keep}")
    ids = [
        int(r[0]) for r in store.db.execute("SELECT id FROM runs ORDER BY id DESC LIMIT -1 OFFSET ?", [keep])
    ]
    if ids:
        _delete(store, ids)
    return sorted(ids)


# ----------------------------------------------------------------------------- results files

#: The table a results file names its capture in (a results file is a capture database with runs
#: and the rows of the sessions they replayed, no frames).
_ORIGIN = "results_origin"


def _identity(capture: Store) -> str:
    """What tells one capture from another without reading its frames: its first session."""
    row = capture.db.execute(
        "SELECT id, charge_point_id, started_at FROM sessions ORDER BY id LIMIT 1"
    ).fetchone()
    return json.dumps(list(row) if row else None)


def open_results(path: str | os.PathLike[str], capture: Store) -> Store:
    """Open (or create, owner-readable only) the results file ``path`` for runs of ``capture``.

    A results file holds runs (their differences and frames) and the rows of the sessions they
    replayed, so that ``runs``, ``report`` and the web UI read it as they read a capture, while
    the capture itself is left as it was. Raises CaptureError for a results file made from
    another capture, or a file that is not one."""
    p = Path(path)
    if p.resolve() == Path(capture.path).resolve():
        raise CaptureError(f"--results {p} is the capture itself; give another file")
    out = Store.open(p, create=True)
    try:
        db = out.db
        identity = _identity(capture)
        if _ORIGIN not in db.table_names():
            if db.execute("SELECT count(*) FROM frames").fetchone()[0]:
                raise CaptureError(f"{p} is a capture, not a results file; give a new file for --results")
            db.execute(f"CREATE TABLE {_ORIGIN} (capture TEXT NOT NULL, identity TEXT NOT NULL)")
            db.execute(f"INSERT INTO {_ORIGIN} VALUES (?, ?)", [str(Path(capture.path).resolve()), identity])
        else:
            origin, known = db.execute(f"SELECT capture, identity FROM {_ORIGIN}").fetchone()
            if known != identity:
                raise CaptureError(
                    f"{p} holds runs of the capture {origin}, not of {capture.path}; "
                    "give another --results file"
                )
    except sqlite3.DatabaseError as exc:
        out.close()
        raise CaptureError(f"cannot use {p} as a results file: {exc}") from exc
    except CaptureError:
        out.close()
        raise
    return out


def copy_sessions(capture: Store, out: Store, ids: Iterable[int]) -> None:
    """The rows (not the frames) of sessions of ``capture`` into the results file ``out``."""
    wanted = sorted(set(ids))
    columns = [c.name for c in capture.db["sessions"].columns]
    have = {c.name for c in out.db["sessions"].columns}
    shared = [c for c in columns if c in have]
    conn = out.db.conn
    try:
        with transaction(conn):
            for start in range(0, len(wanted), 500):
                part = wanted[start : start + 500]
                rows = capture.db.execute(
                    f"SELECT {', '.join(shared)} FROM sessions WHERE id IN ({','.join('?' * len(part))})",
                    part,
                ).fetchall()
                marks = ",".join("?" * len(shared))
                conn.executemany(
                    f"INSERT OR IGNORE INTO sessions ({', '.join(shared)}) VALUES ({marks})", rows
                )
    except sqlite3.Error as exc:
        raise CaptureError(f"cannot write to {out.path}: {exc}") from exc
