"""Replay a window of the capture (``--from/--to``): frames, not sessions (core/window.py).

A connection open when the window starts is dialled ``PRIME_LEAD`` seconds ahead of it, sends
its priming frames at once (each after the previous answer, as a charger does), then the
window's frames at their recorded offsets; a connection still open at the window's end is
closed there by the charger (1000). Differences on priming frames are set apart from the
window's unless they say the backend refused the state
(:func:`ocpp_replay.core.window.set_apart_priming`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

from ocpp_replay.core.correlate import ocpp_version, utc_seconds
from ocpp_replay.core.frames import MessageType
from ocpp_replay.core.records import FrameLike
from ocpp_replay.core.window import (
    Cut,
    Key,
    Window,
    cut_parts,
    cut_session,
    reads_answers,
    window_bounds,
)
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
        found = cut_stored(store, info, window, prime=prime)
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
    return _retimed(info, cut, {f.seq: f for f in frames}, window, start)


#: A little more than the window's bounds is read, and each frame then placed exactly as
#: :func:`~ocpp_replay.core.window.cut_session` places it (start + elapsed against the bound).
_SLACK = 1e-3


class _OnDisk:
    """:class:`~ocpp_replay.core.window.Earlier` as lookups in the capture: the frames before
    the window never all come into memory."""

    def __init__(self, store: Store, session_id: int, start: float, window: Window) -> None:
        self.store, self.session_id, self.start, self.window = store, session_id, start, window

    def _before(self, types: tuple[int, ...], keys: Collection[Key]) -> list[FrameRecord]:
        found = self.store.frames_with_ids(
            self.session_id, self.window.start - self.start + _SLACK, types, {uid for _, uid in keys}
        )
        return [f for f in found if self.start + f.elapsed < self.window.start]

    def first_answers(self, keys: Collection[Key]) -> dict[Key, FrameLike]:
        out: dict[Key, FrameLike] = {}
        for f in self._before((MessageType.CALL_RESULT, MessageType.CALL_ERROR), keys):
            key = (f.direction.reverse, f.unique_id or "")
            if key in keys and key not in out:
                out[key] = f
        return out

    def call_seqs(self, keys: Collection[Key]) -> dict[Key, list[int]]:
        out: dict[Key, list[int]] = {}
        for f in self._before((MessageType.CALL,), keys):
            key = (f.direction, f.unique_id or "")
            if key in keys:
                out.setdefault(key, []).append(f.seq)
        return out


def cut_stored(
    store: Store, info: SessionInfo, window: Window, *, prime: bool = True
) -> tuple[Loaded, frozenset[int]] | None:
    """:func:`cut_loaded` reading the capture as it goes: the frames inside the window, the few
    before it that the priming walk looks at (streamed), and lookups for the rest. Memory holds
    the window's frames, not the connection's: a connection open for weeks costs no more than
    one opened at the window's start."""
    start, end = _times(info)
    bounds = window_bounds(start, end, window)
    if bounds is None:
        return None
    opened_before, cut_at_end = bounds
    version = ocpp_version(info.subprotocol)
    lo = window.start - start
    hi = None if window.end is None else window.end - start + _SLACK
    inside = [
        f
        for f in store.frames(info.id, from_elapsed=lo - _SLACK, to_elapsed=hi)
        if start + f.elapsed >= window.start and (window.end is None or start + f.elapsed < window.end)
    ]
    before: Iterable[FrameLike] = ()
    if opened_before and prime:
        streamed = store.priming_frames(info.id, lo + _SLACK, answers=reads_answers(version))
        before = (f for f in streamed if start + f.elapsed < window.start)
    earlier = _OnDisk(store, info.id, start, window)
    cut = cut_parts(before, inside, earlier, version, opened_before, cut_at_end, prime=prime)
    by_seq = {f.seq: f for f in inside}
    by_seq.update((f.seq, f) for f in store.frames_by_seq(info.id, cut.prime))
    return _retimed(info, cut, by_seq, window, start)


def _retimed(
    info: SessionInfo, cut: Cut, by_seq: Mapping[int, FrameRecord], window: Window, start: float
) -> tuple[Loaded, frozenset[int]]:
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
