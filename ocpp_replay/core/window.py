"""Time windows that cut connections: which frames of a session a window replays, and which
earlier frames prime the backend first.

A charger stays connected for days; an incident happens at 14:32. A window selects frames, not
sessions: a connection already open when the window starts is replayed from there, after the
state the backend needs has been re-established, in the order it was recorded:

- the charger's last BootNotification before the window,
- its last StatusNotification of each connector (1.6: ``connectorId``; 2.x: EVSE and connector),
- each transaction still open at the window's start: its StartTransaction (1.6; the backend's
  new transaction id is correlated into the window's frames as replay always does) or its
  TransactionEvent ``Started`` (2.x),

each with its recorded answer, so that the replay compares and correlates them as any other
frame. Answers inside the window to calls made before it are left out (nothing sent them).

Pure: frames in, sequence numbers out; the replay builds the windowed sessions from them.
Differences on priming frames are set apart from the window's unless they say the backend
refused the state (:func:`set_apart_priming`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from ocpp_replay.core.diff import Difference, DiffKind
from ocpp_replay.core.frames import Call, CallResult, Direction, InvalidFrame, MessageType, parse
from ocpp_replay.core.paths import get
from ocpp_replay.core.records import FrameLike
from ocpp_replay.core.results import RunResult

__all__ = [
    "Cut",
    "Earlier",
    "Window",
    "cut_parts",
    "cut_session",
    "priming_calls",
    "reads_answers",
    "set_apart_priming",
    "window_bounds",
]


@dataclass(frozen=True, slots=True)
class Window:
    """From ``start`` (included) to ``end`` (excluded, None: the end of the capture), in epoch seconds."""

    start: float
    end: float | None = None

    def __post_init__(self) -> None:
        if self.end is not None and not self.end > self.start:
            raise ValueError("a window must end after it starts")


@dataclass(frozen=True, slots=True)
class Cut:
    """What a window replays of one session."""

    prime: tuple[int, ...]  # seqs sent first, at once and in order: calls and their recorded answers
    frames: tuple[int, ...]  # seqs inside the window, in order
    opened_before: bool  # the connection was open when the window started
    cut_at_end: bool  # the connection was still open when the window ended


def _call(f: FrameLike) -> Call | None:
    if f.message_type != MessageType.CALL or f.raw is None:
        return None
    try:
        frame = parse(f.raw)
    except InvalidFrame:
        return None
    return frame if isinstance(frame, Call) else None


Key = tuple[Direction, str]  # (direction of a call, its unique id)


class Earlier(Protocol):
    """What a cut asks of the frames before the window besides the walk that picks the priming
    calls: a list in memory (:func:`cut_session`), or the capture queried on disk for a
    connection open for weeks (replay/window.py), so that memory never holds all of them."""

    def first_answers(self, keys: Collection[Key]) -> dict[Key, FrameLike]:
        """The first answer (CALLRESULT or CALLERROR) before the window to each call key."""
        ...

    def call_seqs(self, keys: Collection[Key]) -> dict[Key, list[int]]:
        """The seqs of the calls before the window with each key."""
        ...


class _Listed:
    """:class:`Earlier` over frames in memory."""

    def __init__(self, before: Sequence[FrameLike]) -> None:
        self.before = before

    def first_answers(self, keys: Collection[Key]) -> dict[Key, FrameLike]:
        out: dict[Key, FrameLike] = {}
        for f in self.before:
            if f.message_type in _ANSWERS and f.unique_id is not None:
                key = (f.direction.reverse, f.unique_id)
                if key in keys and key not in out:
                    out[key] = f
        return out

    def call_seqs(self, keys: Collection[Key]) -> dict[Key, list[int]]:
        out: dict[Key, list[int]] = {}
        for f in self.before:
            if f.message_type == MessageType.CALL and f.unique_id is not None:
                key = (f.direction, f.unique_id)
                if key in keys:
                    out.setdefault(key, []).append(f.seq)
        return out


_ANSWERS = (MessageType.CALL_RESULT, MessageType.CALL_ERROR)
#: The charger's calls the priming walk looks at (:func:`priming_calls`); in 1.6 it also reads
#: the backend's CALLRESULTs (the transaction ids StartTransaction got).
PRIMING_ACTIONS = frozenset(
    {"BootNotification", "StatusNotification", "StartTransaction", "StopTransaction", "TransactionEvent"}
)


def cut_session(
    frames: Sequence[FrameLike],
    session_start: float,
    session_end: float | None,
    version: str | None,
    window: Window,
    *,
    prime: bool = True,
) -> Cut | None:
    """What ``window`` replays of a session that started at ``session_start`` (epoch seconds)
    and ended at ``session_end`` (None: still open when the capture ended), its frames in wire
    order; None when the session lies outside the window. With ``prime=False`` nothing is primed."""
    bounds = window_bounds(session_start, session_end, window)
    if bounds is None:
        return None
    before: list[FrameLike] = []
    inside: list[FrameLike] = []
    for f in frames:
        t = session_start + f.elapsed
        if t < window.start:
            before.append(f)
        elif window.end is None or t < window.end:
            inside.append(f)
    opened_before, cut_at_end = bounds
    return cut_parts(before, inside, _Listed(before), version, opened_before, cut_at_end, prime=prime)


def window_bounds(
    session_start: float, session_end: float | None, window: Window
) -> tuple[bool, bool] | None:
    """Whether the connection was open when ``window`` started and still open when it ended;
    None when the window does not meet it."""
    if session_end is not None and session_end < window.start:
        return None
    if window.end is not None and session_start >= window.end:
        return None
    return session_start < window.start, window.end is not None and (
        session_end is None or session_end >= window.end
    )


def cut_parts(
    before: Iterable[FrameLike],
    inside: Sequence[FrameLike],
    earlier: Earlier,
    version: str | None,
    opened_before: bool,
    cut_at_end: bool,
    *,
    prime: bool = True,
) -> Cut:
    """The cut of a session from its frames before the window (walked once, in wire order: a
    stream will do; frames that cannot prime may be left out of it), those inside it, and
    ``earlier`` for the few lookups among the frames before."""
    primed = priming_calls(before, version) if opened_before and prime else []
    # the recorded answer to each priming call: the first answer with its id, if after the call
    answers = earlier.first_answers({(c.direction, c.unique_id) for c in primed if c.unique_id is not None})
    prime_seqs: list[int] = []
    for call in primed:
        prime_seqs.append(call.seq)
        answer = answers.get((call.direction, call.unique_id)) if call.unique_id is not None else None
        if answer is not None and answer.seq > call.seq:
            prime_seqs.append(answer.seq)
    prime_seqs.sort()
    primed_set = frozenset(prime_seqs)

    # Answers inside the window to calls made before it (and not primed) have no call to answer.
    def answered_keys() -> Iterator[tuple[FrameLike, Key | None]]:
        """Each inside frame, with the key of the call it answers when no call inside the
        window before it has that key (None otherwise)."""
        window_calls: set[tuple[Direction, str | None]] = set()
        for f in inside:
            key: Key | None = None
            if f.message_type == MessageType.CALL:
                window_calls.add((f.direction, f.unique_id))
            elif f.message_type in _ANSWERS and f.unique_id is not None:
                k = (f.direction.reverse, f.unique_id)
                if k not in window_calls:
                    key = k
            yield f, key

    wanted = {key for _, key in answered_keys() if key is not None}
    earlier_calls = (
        {k for k, seqs in earlier.call_seqs(wanted).items() if any(s not in primed_set for s in seqs)}
        if wanted
        else set()
    )
    kept = [f.seq for f, key in answered_keys() if key is None or key not in earlier_calls]
    return Cut(tuple(prime_seqs), tuple(kept), opened_before, cut_at_end)


def reads_answers(version: str | None) -> bool:
    """Whether :func:`priming_calls` reads the backend's CALLRESULTs too (1.6: the transaction
    ids StartTransaction got; 2.x carries them in the charger's own TransactionEvents)."""
    return version == "1.6"


def priming_calls(before: Iterable[FrameLike], version: str | None) -> list[FrameLike]:
    """The charger's calls that re-establish the backend's state at the window's start."""
    v16 = version == "1.6"  # (reads_answers says the same for the 1.6 CALLRESULTs read below)
    boot: FrameLike | None = None
    statuses: dict[Any, FrameLike] = {}
    open_tx: dict[Any, FrameLike] = {}  # transaction id -> the frame that started it
    start_calls: dict[str | None, FrameLike] = {}  # 1.6: StartTransaction by unique id, until answered
    for f in before:
        if f.direction is Direction.TO_CP and f.message_type == MessageType.CALL_RESULT and v16:
            start = start_calls.pop(f.unique_id, None)
            if start is not None and f.raw is not None:
                try:
                    answer = parse(f.raw)
                except InvalidFrame:
                    continue
                tx = get(answer.payload, ("transactionId",)) if isinstance(answer, CallResult) else None
                if tx is not None:
                    open_tx[tx] = start
            continue
        if f.direction is not Direction.TO_CSMS or f.action is None:
            continue
        if f.action not in PRIMING_ACTIONS:
            continue
        call = _call(f)
        if call is None:
            continue
        payload = call.payload
        if call.action == "BootNotification":
            boot = f
        elif call.action == "StatusNotification":
            key = (
                get(payload, ("connectorId",))
                if v16
                else (get(payload, ("evseId",)), get(payload, ("connectorId",)))
            )
            statuses[key] = f
        elif v16 and call.action == "StartTransaction":
            start_calls[call.unique_id] = f
        elif v16 and call.action == "StopTransaction":
            open_tx.pop(get(payload, ("transactionId",)), None)
        elif not v16 and call.action == "TransactionEvent":
            tx = get(
                payload,
                (
                    "transactionInfo",
                    "transactionId",
                ),
            )
            event = get(payload, ("eventType",))
            if event == "Started":
                open_tx[tx] = f
            elif event == "Ended":
                open_tx.pop(tx, None)
    chosen = [f for f in (boot, *statuses.values(), *open_tx.values()) if f is not None]
    return sorted(chosen, key=lambda f: f.seq)


#: Differences on priming frames that count: the backend did not take the state.
_FAILING = frozenset({DiffKind.CALL_ERROR, DiffKind.TIMEOUT, DiffKind.SCHEMA, DiffKind.UNEXPECTED_ANSWER})


def _counts(d: Difference) -> bool:
    """A difference on a priming frame that still counts: the backend refused the state."""
    if d.kind in _FAILING:
        return True
    return d.kind is DiffKind.CHANGED and d.path.rsplit(".", 1)[-1] == "status"


def set_apart_priming(result: RunResult, priming: Mapping[int, frozenset[int]]) -> tuple[RunResult, int]:
    """The run without the differences on priming frames that do not count, and how many were set apart."""
    apart = 0
    sessions = []
    for s in result.sessions:
        primed = priming.get(s.session_id, frozenset())
        kept = tuple(d for d in s.differences if d.seq not in primed or _counts(d))
        apart += len(s.differences) - len(kept)
        sessions.append(replace(s, differences=kept) if len(kept) != len(s.differences) else s)
    return replace(result, sessions=tuple(sessions)), apart
