"""Replay a window of the capture (``--from/--to``): frames, not sessions (core/window.py).

A connection open when the window starts is dialled ``PRIME_LEAD`` seconds ahead of it, sends
its priming frames at once (each after the previous answer, as a charger does), then the
window's frames at their recorded offsets; a connection still open at the window's end is
closed there by the charger (1000). Differences on priming frames are set apart from the
window's unless they say the backend refused the state
(:func:`ocpp_replay.core.window.set_apart_priming`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any, Literal

from ocpp_replay.core.correlate import ocpp_version, utc_seconds
from ocpp_replay.core.window import Window, cut_session
from ocpp_replay.errors import ReplayError
from ocpp_replay.replay.runner import Selection
from ocpp_replay.store.reader import FrameRecord, SessionInfo, Store
from ocpp_replay.store.schema import utc_iso

Loaded = tuple[SessionInfo, Sequence[FrameRecord]]

#: Seconds between dialling an already open connection and the window's start: time to prime.
PRIME_LEAD = 2.0


def load_window(
    store: Store, selection: Selection, window: Window, *, prime: bool = True
) -> tuple[list[Loaded], dict[int, frozenset[int]]]:
    """The selected sessions cut by ``window``, and the priming frames' seqs of each.
    Raises ReplayError when no session overlaps the window. Blocking."""
    out: list[Loaded] = []
    priming: dict[int, frozenset[int]] = {}
    for info in store.sessions(ids=selection.session_ids, charge_points=selection.charge_points):
        if info.error and info.frames == 0:
            continue  # a handshake the upstream refused: nothing to replay
        try:
            start = utc_seconds(info.started_at)
            end = utc_seconds(info.ended_at) if info.ended_at else None
        except ValueError as exc:
            raise ReplayError(f"session {info.id}: unreadable time ({exc})") from exc
        if (end is not None and end < window.start) or (window.end is not None and start >= window.end):
            continue  # frames are read only for the sessions the window meets
        frames = list(store.frames(info.id))
        cut = cut_session(frames, start, end, ocpp_version(info.subprotocol), window, prime=prime)
        if cut is None:
            continue
        by_seq = {f.seq: f for f in frames}
        changes: dict[str, object] = {}
        if cut.opened_before:
            new_start = window.start - (PRIME_LEAD if cut.prime else 0.0)
            changes["started_at"] = utc_iso(new_start)
            kept = [replace(by_seq[s], elapsed=0.0) for s in cut.prime] + [
                replace(by_seq[s], elapsed=start + by_seq[s].elapsed - new_start) for s in cut.frames
            ]
        else:
            kept = [by_seq[s] for s in cut.frames]
        if cut.cut_at_end:
            assert window.end is not None
            changes.update(
                ended_at=utc_iso(window.end),
                close_code=1000,
                close_reason="end of the window",
                closed_by="cp",
                error=None,
            )
        out.append((replace(info, **changes), kept))  # type: ignore[arg-type]
        priming[info.id] = frozenset(cut.prime)
    if not out:
        raise ReplayError(f"no sessions in capture {store.path} meet the window")
    return out, priming


def window_records(
    store: Store, selection: Selection, window: Window, *, prime: bool = True
) -> Iterator[tuple[Literal["session", "frame", "event"], dict[str, Any]]]:
    """The capture's records (as ``export`` writes them) of a window: each session cut and
    re-timed as :func:`load_window` cuts it, its priming frames first. Capture events are left
    out. Imported again, the file replays as the window does."""
    loaded, _ = load_window(store, selection, window, prime=prime)
    for info, frames in loaded:
        row = info.as_dict()
        row["frames"] = len(frames)
        yield "session", row
        for f in frames:
            frame = {name: getattr(f, name) for name in f.__slots__}
            frame["direction"] = str(f.direction)
            yield "frame", frame
