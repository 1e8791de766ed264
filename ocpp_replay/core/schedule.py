"""The replay timeline: when each charger frame goes out and what it waits for.

Pure: it turns recorded sessions and frames into :class:`SessionPlan` objects; the runner in
:mod:`ocpp_replay.replay.runner` only follows them.

Time. Every recorded instant (session starts and ends, frames) sits on one recorded clock
(session start wall time + the frame's monotonic offset). :class:`Timeline` maps it to replay
seconds: gaps between consecutive instants are divided by ``speed`` and then capped at
``max_gap`` seconds. Because the map is one function for the whole capture, sessions of
different chargers keep their relative start times and a capped gap is a time when nothing at
all happened (across all selected sessions).

Causality. A charger frame is never sent before what the charger had seen when it sent it in
the recording: (a) the answer to its previous CALL, if that answer was recorded before this
frame (a charger that pipelined its calls did not wait, and neither does the replay),
(b) every backend CALL recorded before it on its connection, and (c) the frame that assigned
a correlated value it carries. These are ``waits_for``: recorded seqs of CALLs whose live
counterpart must be settled (answered, received, or given up on after a bounded wait).
``previous_call`` names the charger CALL before it whatever the recording shows: a replay
that plays the charger well-behaved (one CALL outstanding at a time) waits for it too.

Misbehaviour is planned as recorded: a charger answer to a backend call the capture does not
have is a step (``orphan``), and a frame that is not OCPP-J but still carries a unique id
(``[2.0, "17", ...]``) has that id, so that the backend's answer to it can be compared.

Answers of the charger to the backend's CALLs are not scheduled: they go out when the live
backend's CALL arrives (:class:`BackendCall`).
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ocpp_replay.core.correlate import Message, ocpp_version, utc_seconds
from ocpp_replay.core.frames import Call, CallError, CallResult, Direction, MessageType, parse
from ocpp_replay.core.records import FrameLike, SessionLike
from ocpp_replay.core.rules import RuleSet
from ocpp_replay.errors import InvalidFrame, ReplayError

__all__ = [
    "Answer",
    "BackendCall",
    "SessionPlan",
    "Step",
    "Timeline",
    "loose_unique_id",
    "plan_session",
    "plan_sessions",
    "session_instants",
    "session_start",
]


Answer = CallResult | CallError | str  # str: recorded raw text that is not OCPP-J


@dataclass(frozen=True, slots=True)
class Step:
    """One charger frame to send at ``at`` seconds after the session's start."""

    seq: int
    at: float
    raw: str | bytes
    call: Call | None  # None: the recorded frame is not an OCPP-J CALL; send raw as recorded
    unique_id: str | None
    action: str | None
    answer_seq: int | None  # the recorded answer, if the capture has one
    answer: Answer | None
    waits_for: tuple[int, ...]
    blocking: bool  # an OCPP-J CALL: it has an answer to wait for
    previous_call: int | None = None  # the charger CALL before it (well-behaved replays wait for it)
    orphan: bool = False  # a charger answer to a backend call the capture does not have


@dataclass(frozen=True, slots=True)
class BackendCall:
    """A CALL the backend sent in the recording, and the charger's recorded answer."""

    seq: int
    at: float
    call: Call
    answer_seq: int | None
    answer: Answer | None


@dataclass(frozen=True, slots=True)
class SessionPlan:
    session_id: int
    charge_point_id: str
    subprotocol: str | None
    version: str | None
    query: str | None
    auth_user: str | None
    recorded_start: float  # epoch seconds
    start: float  # replay seconds after the run's start
    end: float  # replay seconds after the session's start: the recorded close
    close_code: int | None
    closed_by: str | None
    steps: tuple[Step, ...]
    backend_calls: tuple[BackendCall, ...]
    other_frames: int  # recorded frames neither sent nor expected (answers of unknown calls, ...)
    path_suffix: str | None = None  # the path after the CSMS's, as the charger dialled it
    close_reason: str | None = None
    #: unique ids of recorded backend answers to nothing the charger sent: the same again live
    #: is not a finding
    stray_answer_ids: tuple[str, ...] = ()


class Timeline:
    """Maps recorded epoch seconds to replay seconds: speed, then gaps capped at max_gap.

    Built from each session's recorded instants (:meth:`of_sessions`), one session at a time:
    a gap longer than ``max_gap`` (of replay time) is one in which no session has an instant,
    and those are the holes between the sessions' busy stretches. It keeps only the ends of
    those stretches, so a capture of millions of frames needs no list of them all.
    """

    __slots__ = ("_at", "_mapped")

    def __init__(
        self, instants: Iterable[float], *, speed: float = 1.0, max_gap: float | None = None
    ) -> None:
        self._at, self._mapped = self._points([instants], speed, max_gap)

    @classmethod
    def of_sessions(
        cls, sessions: Iterable[Iterable[float]], *, speed: float = 1.0, max_gap: float | None = None
    ) -> Timeline:
        """The timeline of several sessions' instants, each an iterable of its own (read once)."""
        timeline = cls.__new__(cls)
        timeline._at, timeline._mapped = cls._points(sessions, speed, max_gap)
        return timeline

    @staticmethod
    def _points(
        sessions: Iterable[Iterable[float]], speed: float, max_gap: float | None
    ) -> tuple[list[float], list[float]]:
        if not speed > 0:
            raise ReplayError(f"speed must be positive, not {speed}")
        if max_gap is not None and not max_gap >= 0:
            raise ReplayError(f"max gap must not be negative, not {max_gap}")
        longest = math.inf if max_gap is None else max_gap * speed  # in recorded seconds
        stretches: list[tuple[float, float]] = []  # where some session has instants closer than that
        for instants in sessions:
            points = sorted(instants)
            if not points:
                continue
            lo = prev = points[0]
            for t in points[1:]:
                if t - prev > longest:
                    stretches.append((lo, prev))
                    lo = t
                prev = t
            stretches.append((lo, prev))
        stretches.sort()
        at: list[float] = []
        mapped: list[float] = []
        total = 0.0
        for lo, hi in stretches:
            if at and lo <= at[-1]:  # overlaps the stretch before: extend it
                if hi > at[-1]:
                    total += (hi - at[-1]) / speed
                    at[-1], mapped[-1] = hi, total
                continue
            if at:  # a gap with no instant: capped
                gap = (lo - at[-1]) / speed
                total += gap if max_gap is None or gap <= max_gap else max_gap
            at.append(lo)
            mapped.append(total)
            if hi > lo:
                total += (hi - lo) / speed
                at.append(hi)
                mapped.append(total)
        return at, mapped

    def __call__(self, t: float) -> float:
        """Replay seconds of a recorded instant (between known instants: interpolated)."""
        at = self._at
        if not at:
            return 0.0
        i = bisect.bisect_left(at, t)
        if i < len(at) and at[i] == t:
            return self._mapped[i]
        if i == 0:
            return 0.0
        if i == len(at):
            return self._mapped[-1]
        lo, hi = at[i - 1], at[i]
        return self._mapped[i - 1] + (self._mapped[i] - self._mapped[i - 1]) * (t - lo) / (hi - lo)


def _parse_answer(frame: FrameLike) -> Answer:
    raw: str | bytes = frame.raw if frame.raw is not None else (frame.raw_bytes or b"")
    try:
        parsed = parse(raw)
    except InvalidFrame:
        return raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
    if isinstance(parsed, Call):
        return json.dumps([2, parsed.unique_id, parsed.action, parsed.payload])
    return parsed


def loose_unique_id(raw: str | bytes) -> str | None:
    """The unique id of a frame that is not OCPP-J but still reads as ``[type, "id", ...]``
    (``[2.0, "17", "Heartbeat", {}]``); None when it does not."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if type(data) is list and len(data) >= 2 and type(data[1]) is str:
        return data[1]
    return None


def _payload(frame: Call | CallResult | CallError | str | None) -> Any:
    if isinstance(frame, Call | CallResult):
        return frame.payload
    return None


def plan_sessions(
    sessions: Sequence[tuple[SessionLike, Sequence[FrameLike]]],
    *,
    speed: float = 1.0,
    max_gap: float | None = None,
    rules: RuleSet | None = None,
) -> tuple[SessionPlan, ...]:
    """Plans for the given sessions (with their frames in wire order), in start order."""
    rules = rules or RuleSet.default()
    starts = {info.id: session_start(info) for info, _ in sessions}
    timeline = Timeline.of_sessions(
        (session_instants(info, starts[info.id], (f.elapsed for f in frames)) for info, frames in sessions),
        speed=speed,
        max_gap=max_gap,
    )
    plans = [_plan_one(info, frames, starts[info.id], timeline, rules) for info, frames in sessions]
    plans.sort(key=lambda p: (p.start, p.session_id))
    return tuple(plans)


def session_start(info: SessionLike) -> float:
    """The recorded start of a session, epoch seconds. Raises ReplayError."""
    try:
        return utc_seconds(info.started_at)
    except ValueError as exc:
        raise ReplayError(f"session {info.id}: unreadable start time {info.started_at!r}") from exc


def session_instants(info: SessionLike, start: float, elapsed: Iterable[float]) -> Iterator[float]:
    """The recorded instants of a session for its :class:`Timeline`: its start, each frame's,
    its end."""
    yield start
    for e in elapsed:
        yield start + e
    if info.ended_at:
        with contextlib.suppress(ValueError):
            yield max(start, utc_seconds(info.ended_at))


def plan_session(
    info: SessionLike, frames: Sequence[FrameLike], timeline: Timeline, rules: RuleSet
) -> SessionPlan:
    """The plan of one session on a run's timeline (sessions planned one at a time, as a
    streamed replay loads them)."""
    return _plan_one(info, frames, session_start(info), timeline, rules)


def _plan_one(
    info: SessionLike,
    frames: Sequence[FrameLike],
    start: float,
    timeline: Timeline,
    rules: RuleSet,
) -> SessionPlan:
    version = ocpp_version(info.subprotocol)
    correlator = rules.correlator(version)
    t0 = timeline(start)
    # Recorded answers by (direction of the call, unique id), in order: first answer after the call.
    answers: dict[tuple[Direction, str], list[FrameLike]] = {}
    for f in frames:
        if f.message_type in (MessageType.CALL_RESULT, MessageType.CALL_ERROR) and f.unique_id is not None:
            answers.setdefault((f.direction.reverse, f.unique_id), []).append(f)

    def answer_to(call: FrameLike, uid: str | None = None) -> FrameLike | None:
        uid = uid if uid is not None else call.unique_id
        if uid is None:
            return None
        for a in answers.get((call.direction, uid), ()):
            if a.seq > call.seq and a.seq not in used_answers:
                return a
        return None

    answer_seq_of: dict[int, int] = {}  # charger CALL seq -> seq of its recorded answer

    steps: list[Step] = []
    backend: list[BackendCall] = []
    used_answers: set[int] = set()
    defined_at: dict[tuple[str, Any], int] = {}  # (correlation, recorded value) -> call seq
    last_call: int | None = None
    backend_since: list[int] = []
    strays: list[str] = []
    other = 0
    for f in frames:
        raw: str | bytes = f.raw if f.raw is not None else (f.raw_bytes or b"")
        at = timeline(start + f.elapsed) - t0
        if f.direction is Direction.TO_CP:
            if f.message_type == MessageType.CALL and f.action:
                try:
                    parsed = parse(raw)
                except InvalidFrame:
                    other += 1
                    continue
                if not isinstance(parsed, Call):
                    other += 1
                    continue
                ans = answer_to(f)
                if ans is not None:
                    used_answers.add(ans.seq)
                backend.append(
                    BackendCall(
                        f.seq, at, parsed, ans.seq if ans else None, _parse_answer(ans) if ans else None
                    )
                )
                for name, value in correlator.defines(parsed.action, Message.REQUEST, parsed.payload):
                    defined_at[(name, _hashable(value))] = f.seq
                backend_since.append(f.seq)
            elif f.seq not in used_answers:
                other += 1  # answers are matched through their calls; anything else is not sent
                if f.message_type in (MessageType.CALL_RESULT, MessageType.CALL_ERROR) and f.unique_id:
                    strays.append(f.unique_id)
            continue
        # to_csms
        if f.seq in used_answers:
            continue  # the charger's answer to a backend call: sent when that call arrives live
        waits: list[int] = []
        if last_call is not None and answer_seq_of.get(last_call, f.seq) < f.seq:
            waits.append(last_call)  # the charger had its previous call's answer
        waits.extend(backend_since)
        backend_since = []
        if f.message_type in (MessageType.CALL_RESULT, MessageType.CALL_ERROR):
            # An answer to a call the capture does not have: sent as recorded when replaying
            # faithfully. The backend's recorded reply to it, if any, is a CALLERROR with its id.
            reply = answer_to(f)
            if reply is not None and reply.message_type != MessageType.CALL_ERROR:
                reply = None
            if reply is not None:
                used_answers.add(reply.seq)
            steps.append(
                Step(
                    seq=f.seq,
                    at=at,
                    raw=raw,
                    call=None,
                    unique_id=f.unique_id,
                    action=f.action,
                    answer_seq=reply.seq if reply else None,
                    answer=_parse_answer(reply) if reply else None,
                    waits_for=tuple(dict.fromkeys(waits)),
                    blocking=False,
                    previous_call=last_call,
                    orphan=True,
                )
            )
            continue
        call: Call | None = None
        if f.message_type == MessageType.CALL:
            try:
                parsed = parse(raw)
                call = parsed if isinstance(parsed, Call) else None
            except InvalidFrame:
                call = None
        uid = f.unique_id if f.unique_id is not None else loose_unique_id(raw)
        ans = answer_to(f, uid)
        if ans is not None:
            used_answers.add(ans.seq)
            answer_seq_of[f.seq] = ans.seq
        answer = _parse_answer(ans) if ans is not None else None
        if call is not None:
            for name, value in correlator.uses(call.action, Message.REQUEST, call.payload):
                src = defined_at.get((name, _hashable(value)))
                if src is not None:
                    waits.append(src)
            # what this call's answer assigns, later frames wait for
            for name, value in correlator.defines(call.action, Message.RESPONSE, _payload(answer)):
                defined_at[(name, _hashable(value))] = f.seq
        steps.append(
            Step(
                seq=f.seq,
                at=at,
                raw=raw,
                call=call,
                unique_id=uid,
                action=call.action if call else f.action,
                answer_seq=ans.seq if ans else None,
                answer=answer,
                waits_for=tuple(dict.fromkeys(waits)),
                blocking=call is not None,
                previous_call=last_call,
            )
        )
        if call is not None:
            last_call = f.seq
    last = timeline(start + frames[-1].elapsed) - t0 if frames else 0.0
    end = last
    if info.ended_at:
        with contextlib.suppress(ValueError):
            end = max(last, timeline(max(start, utc_seconds(info.ended_at))) - t0)
    return SessionPlan(
        session_id=info.id,
        charge_point_id=info.charge_point_id,
        subprotocol=info.subprotocol,
        version=version,
        query=info.query,
        auth_user=info.auth_user,
        recorded_start=start,
        start=t0,
        end=end,
        close_code=info.close_code,
        closed_by=info.closed_by,
        steps=tuple(steps),
        backend_calls=tuple(backend),
        other_frames=other,
        path_suffix=info.path_suffix,
        close_reason=getattr(info, "close_reason", None),
        stray_answer_ids=tuple(strays),
    )


def _hashable(value: Any) -> Any:
    return (type(value).__name__, value)
