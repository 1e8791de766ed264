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
        start, end = _times(info)
        if (end is not None and end < window.start) or (window.end is not None and start >= window.end):
            continue  # frames are read only for the sessions the window meets
        if info.pruned_before and info.pruned_before > utc_iso(window.start):
            raise ReplayError(
                f"session {info.id} ({info.charge_point_id}) was pruned by the capture's retention up to "
                f"{info.pruned_before}: a window over it must start then or later"
            )
        found = cut_loaded(info, list(store.frames(info.id)), window, prime=prime)
        if found is not None:
            out.append(found[0])
            priming[info.id] = found[1]
    if not out:
        raise ReplayError(f"no sessions in capture {store.path} meet the window")
    return out, priming


def _times(info: SessionInfo) -> tuple[float, float | None]:
    try:
        return utc_seconds(info.started_at), utc_seconds(info.ended_at) if info.ended_at else None
    except ValueError as exc:
        raise ReplayError(f"session {info.id}: unreadable time ({exc})") from exc


def cut_loaded(
    info: SessionInfo, frames: Sequence[FrameRecord], window: Window, *, prime: bool = True
) -> tuple[Loaded, frozenset[int]] | None:
    """One session cut by ``window`` and re-timed (its priming frames at once, ``PRIME_LEAD``
    ahead of the window), with its priming seqs; None when it lies outside the window."""
    start, end = _times(info)
    cut = cut_session(frames, start, end, ocpp_version(info.subprotocol), window, prime=prime)
    if cut is None:
        return None
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
    return (replace(info, **changes), kept), frozenset(cut.prime)  # type: ignore[arg-type]


def unpruned(info: SessionInfo, frames: list[FrameRecord]) -> tuple[SessionInfo, list[FrameRecord]]:
    """A session as a whole-session replay takes it: one that retention pruned up to
    ``pruned_before`` (store/retention.py) is replayed from there, primed with the frames kept
    before it, as the window starting there would be; any other as it is."""
    if not info.pruned_before:
        return info, frames
    try:
        window = Window(utc_seconds(info.pruned_before))
    except ValueError as exc:
        raise ReplayError(f"session {info.id}: unreadable pruned_before ({exc})") from exc
    found = cut_loaded(info, frames, window)
    if found is None:  # nothing at or after the cut: the frames kept, as recorded
        return info, frames
    (cut_info, kept), _ = found
    return cut_info, list(kept)


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
