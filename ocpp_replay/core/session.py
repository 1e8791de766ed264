"""The judgement of one replayed session, as a sans-I/O state machine.

Pure, in the manner of python-websockets' ``Protocol``: a :class:`ReplaySession` takes events
in and hands actions out; it never touches a socket or a clock. Time is passed in with every
event, as seconds after the session's anchor (its scheduled start), so that a test drives it
with a fake clock and the socket runner (:mod:`ocpp_replay.replay.runner`) with the loop's.

Events in::

    session.connected(now, subprotocol)      # the handshake completed
    session.refused(status, message, auth_sent=...)   # or it was refused (no connection)
    session.failed(reason)                   # or it never completed
    session.receive(now, data)               # a frame of the backend
    session.advance(now)                     # time passed (at least up to session.wakeup)
    session.closed(now, code, reason)        # the connection ended, whoever ended it

Actions out, drained with ``session.actions()``: :class:`Send` (send this frame now),
:class:`Close` (close the connection like this), :class:`Finding` (a difference was recorded);
and ``session.wakeup``: the time at which ``advance`` must be called next if nothing else
happens (None: only an event can move the session on). ``session.done`` once the session has
ended; ``session.result(...)`` then builds its :class:`~ocpp_replay.core.results.SessionResult`.

The rules (docs/replay.md, "How the charger is played"):

- A charger frame goes out at its deadline (``Step.at``), in recorded order, once what it
  waits for has settled (``Step.waits_for``; in a well-behaved replay also the previous CALL).
  A backend call waited for is given up ``answer_timeout`` after its recorded time; from then
  on the session is back on its recorded schedule. An optional backend call is never waited for.
- Each frame's delay is split: *held* is how long past its deadline it waited for causality
  (or for the frame before it), *lateness* is the rest (the scheduler's own delay).
- An answer pairs with the sent frame of the same unique id (pipelined calls too); none within
  ``answer_timeout`` is a ``timeout``; one for an id nobody sent is ``unexpected_answer``
  (unless the recording had the backend do the same).
- A backend CALL pairs with the first recorded one of its action not yet seen, is compared, and
  is answered as the charger answered it; a call the recording lacks is ``unexpected_call``, or
  ``call_after_end`` (information) when it comes after the recorded end of the session. A
  recorded call that never came is ``missing_call`` (``optional_call_missing`` if optional).
- After the last frame: outstanding answers, the recorded end, then up to ``grace`` for missing
  calls and a close the CSMS made in the recording; then the charger closes as recorded
  (with the recorded code and reason, without a status code, or by dropping the connection).
- The close is compared like an answer, as the message ``{"by", "code", "reason"}`` of the
  pseudo-action ``close`` (rules apply; differences at ``close.<path>``). A backend that
  closes while frames remain is also a difference at ``connection``.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from ocpp_replay.core.correlate import Correlator, Message, shift_timestamps
from ocpp_replay.core.diff import (
    Change,
    Difference,
    DiffKind,
    compare_answers,
    compare_payloads,
    schema_changes,
)
from ocpp_replay.core.frames import Call, CallError, CallResult, Direction, dump, parse, peek
from ocpp_replay.core.results import LiveFrame, SessionResult
from ocpp_replay.core.rules import RuleSet
from ocpp_replay.core.schedule import BackendCall, SessionPlan, Step, loose_unique_id
from ocpp_replay.errors import InvalidFrame

__all__ = [
    "CLOSE_ACTION",
    "OPERATOR_CALLS",
    "Action",
    "Close",
    "Finding",
    "ReplaySession",
    "Send",
    "SessionOptions",
]

#: The pseudo-action a rules file names to compare (or ignore) the close: ``action = "close"``.
CLOSE_ACTION: Final = "close"

#: Backend calls an operator typically sends by hand (from the CSMS's UI or API) rather than the
#: CSMS in reaction to the charger: ``--optional-operator-calls`` makes these optional.
OPERATOR_CALLS: Final = frozenset(
    {
        # 1.6
        "CancelReservation",
        "ChangeAvailability",
        "ChangeConfiguration",
        "ClearCache",
        "ClearChargingProfile",
        "GetCompositeSchedule",
        "GetConfiguration",
        "GetDiagnostics",
        "GetLocalListVersion",
        "RemoteStartTransaction",
        "RemoteStopTransaction",
        "ReserveNow",
        "Reset",
        "SendLocalList",
        "SetChargingProfile",
        "TriggerMessage",
        "UnlockConnector",
        "UpdateFirmware",
        # 2.0.1 and 2.1 (those not named above)
        "ClearDisplayMessage",
        "ClearVariableMonitoring",
        "CustomerInformation",
        "GetBaseReport",
        "GetChargingProfiles",
        "GetDisplayMessages",
        "GetLog",
        "GetMonitoringReport",
        "GetReport",
        "GetTransactionStatus",
        "GetVariables",
        "RequestStartTransaction",
        "RequestStopTransaction",
        "SetDisplayMessage",
        "SetMonitoringBase",
        "SetMonitoringLevel",
        "SetNetworkProfile",
        "SetVariableMonitoring",
        "SetVariables",
    }
)

#: Close codes a peer may not send in a close frame: 1005 and 1006 (and 1015) say there was no
#: close frame with a code; 1004 is reserved and goes out as 1000.
_NO_CODE: Final = frozenset({1005})
_DROPPED: Final = frozenset({1006, 1015})
_RESERVED: Final = frozenset({1004})
_CHARGER_SIDE: Final = frozenset({"cp", "proxy"})  # the CSMS saw a proxy's close as the charger's


@dataclass(frozen=True, slots=True)
class Send:
    """Send this frame now (text as a text frame, bytes as a binary frame)."""

    data: str | bytes
    seq: int | None  # the recorded frame it plays (None: an answer to a call the recording lacks)


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection: with ``code`` and ``reason``; without a status code when ``code`` is
    None; or, with ``abort``, by dropping it without a close frame (the charger vanished)."""

    code: int | None
    reason: str = ""
    abort: bool = False


@dataclass(frozen=True, slots=True)
class Finding:
    """A difference was recorded (for progress displays; the result holds them all)."""

    difference: Difference


Action = Send | Close | Finding


@dataclass(frozen=True, slots=True)
class SessionOptions:
    answer_timeout: float = 10.0  # seconds for each answer, and past a backend call's recorded time
    grace: float = 5.0  # seconds after the recorded end for missing calls and a CSMS's close
    keep_timestamps: bool = False
    check_schema: bool = True
    #: Send what the charger sent, as it sent it: pipelined calls pipelined, answers to calls the
    #: capture lacks sent. False: one CALL outstanding at a time, such answers left out.
    faithful: bool = True
    optional_calls: frozenset[str] = frozenset()  # backend call actions never waited for


class _Phase(Enum):
    CONNECTING = 0
    PLAYING = 1  # sending the steps
    DRAINING = 2  # every step sent: outstanding answers, then the recorded end
    ENDING = 3  # grace: missing backend calls, the CSMS's own close
    CLOSING = 4  # Close emitted, waiting for the connection to end
    DONE = 5


@dataclass(slots=True)
class _Pending:
    step: Step
    expires: float
    token: int


def _no_text(_elapsed: float) -> str:
    return ""


def _text(data: str | bytes) -> str:
    return data if isinstance(data, str) else data.decode("utf-8", "replace")


class ReplaySession:
    """One session of a replay: the plan, the backend's frames and the time in; sends out."""

    def __init__(
        self,
        plan: SessionPlan,
        *,
        rules: RuleSet | None = None,
        correlator: Correlator | None = None,
        options: SessionOptions = SessionOptions(),
        timestamp: Callable[[float], str] = _no_text,
        shift: float = 0.0,
    ) -> None:
        """``correlator``: the charge point's (shared by its sessions); ``timestamp`` turns a
        session time into the wall-clock text of a live frame; ``shift``: seconds to move
        payload timestamps by (live start minus recorded start; ignored with keep_timestamps)."""
        self.plan = plan
        self.rules = rules or RuleSet.default()
        self.correlator = correlator if correlator is not None else self.rules.correlator(plan.version)
        self.options = options
        self._timestamp = timestamp
        self._shift = 0.0 if options.keep_timestamps else shift
        self.differences: list[Difference] = []
        self.compared: Counter[str] = Counter()
        self.frames: list[LiveFrame] = []
        self.lateness: list[float] = []
        self.held_seconds: list[float] = []
        self.error: str | None = None
        self.close_code: int | None = None
        self._out: list[Action] = []
        self._phase = _Phase.CONNECTING
        self._i = 0  # the next step
        self._release = 0.0  # when the last step sent was free to go
        self._due: float | None = None  # the step or phase deadline advance() must come for
        self._grace_until = 0.0
        self._settled_at: dict[int, float] = {}
        self._waitable = {s.seq for s in plan.steps} | {b.seq for b in plan.backend_calls}
        self._backend: dict[int, BackendCall] = {b.seq: b for b in plan.backend_calls}
        self._unconsumed: dict[str, deque[BackendCall]] = {}
        for bc in plan.backend_calls:
            self._unconsumed.setdefault(bc.call.action, deque()).append(bc)
        self._required_left = sum(1 for b in plan.backend_calls if not self._optional(b))
        self._pending: dict[str, deque[_Pending]] = {}
        self._pending_count = 0
        self._timers: list[tuple[float, int, str]] = []
        self._tokens = 0
        self._timed_out: dict[str, Step] = {}
        # answers to backend calls the capture lacks (rare): most sessions have none
        self._strays: Counter[str] | None = Counter(plan.stray_answer_ids) if plan.stray_answer_ids else None
        self._live_seq = 0
        self._close_sent: Close | None = None

    # -- outputs ------------------------------------------------------------------------

    def actions(self) -> list[Action]:
        """The actions since the last call, in order (the runner performs them at once)."""
        out, self._out = self._out, []
        return out

    @property
    def has_actions(self) -> bool:
        """Whether ``actions()`` has something to hand out."""
        return bool(self._out)

    @property
    def wakeup(self) -> float | None:
        """When ``advance`` must be called next if no event comes first (None: never)."""
        if self._phase in (_Phase.CONNECTING, _Phase.CLOSING, _Phase.DONE):
            return None
        times = [t for t in (self._due, self._timers[0][0] if self._timers else None) if t is not None]
        return min(times) if times else None

    @property
    def done(self) -> bool:
        return self._phase is _Phase.DONE

    def result(self, *, started_at: str | None, ended_at: str | None) -> SessionResult:
        plan = self.plan
        return SessionResult(
            session_id=plan.session_id,
            charge_point_id=plan.charge_point_id,
            subprotocol=plan.subprotocol,
            started_at=started_at,
            ended_at=ended_at,
            differences=tuple(sorted(self.differences, key=Difference.sort_key)),
            compared=dict(self.compared),
            frames=tuple(self.frames),
            lateness=tuple(self.lateness),
            held=len(self.held_seconds),
            error=self.error,
            close_code=self.close_code,
            held_seconds=tuple(self.held_seconds),
        )

    # -- events: the connection ---------------------------------------------------------

    def connected(self, now: float, subprotocol: str | None) -> None:
        """The websocket handshake completed with ``subprotocol``."""
        plan = self.plan
        if (subprotocol or None) != (plan.subprotocol or None):
            self._diff(Change(DiffKind.CHANGED, "handshake.subprotocol", plan.subprotocol, subprotocol))
        self._phase = _Phase.PLAYING
        self._pump(now)

    def refused(self, status: int, message: str = "", *, auth_sent: bool = False) -> None:
        """The backend refused the handshake with an HTTP ``status``: the session ends."""
        self.error = f"handshake refused: {status} {message}".rstrip()
        user = self.plan.auth_user
        if status == 401 and user is not None and not auth_sent:
            self.error += (
                f"; the recording used Basic auth as user {user!r}: "
                "--auth-file supplies the password (a capture never holds it)"
            )
        self._diff(Change(DiffKind.CHANGED, "handshake.status", 101, status))
        self._phase = _Phase.DONE

    def failed(self, reason: str) -> None:
        """No connection (unreachable, no handshake in time): a difference of this session."""
        self.error = f"handshake failed: {reason}"
        self._diff(Change(DiffKind.CHANGED, "handshake.status", 101, reason))
        self._phase = _Phase.DONE

    def closed(self, now: float, code: int | None, reason: str = "") -> None:
        """The connection ended: after our :class:`Close`, or the backend closed it (``code``
        None: without a status code) or it was lost (1006)."""
        if self._phase in (_Phase.DONE, _Phase.CONNECTING):
            return
        self._expire(now)
        ours = self._close_sent
        unsent = [s for s in self.plan.steps[self._i :] if self._plays(s)] if ours is None else []
        if unsent:
            first = unsent[0]
            lost = code in _DROPPED
            if lost:
                actual = "connection lost"
            elif code is None:
                actual = "closed by the CSMS without a status code"
            else:
                actual = f"closed by the CSMS with code {code}"
            self.error = actual
            self._diff(Change(DiffKind.CHANGED, "connection", "open", actual), first.seq, first.action)
        for uid in list(self._pending):
            while (pending := self._take(uid)) is not None:
                self._resolve(pending, None, now)
        if ours is not None:
            code = 1006 if ours.abort else ours.code
            reason = ours.reason
        self.close_code = code
        self._finish(by="cp" if ours is not None else "csms", code=code, reason=reason)

    # -- events: time and frames --------------------------------------------------------

    def advance(self, now: float) -> None:
        """Time is now ``now``: answers time out, backend calls are given up, frames go out."""
        if self._phase in (_Phase.CONNECTING, _Phase.DONE):
            return
        self._expire(now)
        self._pump(now)

    def receive(self, now: float, data: str | bytes) -> None:
        """A frame of the backend arrived at ``now``."""
        if self._phase in (_Phase.CONNECTING, _Phase.DONE):
            return
        self._expire(now)
        try:
            frame = parse(data)
        except InvalidFrame:
            mtype, uid, _, _ = peek(data)
            if uid is None:
                uid = loose_unique_id(data)
            pending = self._take(uid)
            if pending is not None:
                step = pending.step
                self._record(now, Direction.TO_CP, data, step.answer_seq, step.action, head=(mtype, uid))
                self._resolve(pending, _text(data), now)
            else:
                self._record(now, Direction.TO_CP, data, None, None, head=(mtype, uid))
            self._pump(now)
            return
        head = (int(frame.message_type), frame.unique_id)
        if isinstance(frame, Call):
            self._backend_call(now, data, frame)
        else:
            pending = self._take(frame.unique_id)
            if pending is not None:
                step = pending.step
                self._record(now, Direction.TO_CP, data, step.answer_seq, step.action, head=head)
                self._resolve(pending, frame, now)
            elif frame.unique_id in self._timed_out:
                step = self._timed_out.pop(frame.unique_id)  # after its timeout: reported as one
                self._record(now, Direction.TO_CP, data, step.answer_seq, step.action, head=head)
            elif self._strays and self._strays[frame.unique_id] > 0:
                self._strays[frame.unique_id] -= 1  # the recording has the backend do this too
                self._record(now, Direction.TO_CP, data, None, None, head=head)
            else:
                self._record(now, Direction.TO_CP, data, None, None, head=head)
                described = frame.payload if isinstance(frame, CallResult) else _error_dict(frame)
                self._diff(Change(DiffKind.UNEXPECTED_ANSWER, "", None, described), None, None)
        self._pump(now)

    # -- sending ------------------------------------------------------------------------

    def _optional(self, bc: BackendCall) -> bool:
        return bc.call.action in self.options.optional_calls

    def _plays(self, step: Step) -> bool:
        return self.options.faithful or not step.orphan

    def _ready_at(self, step: Step, now: float) -> float | None:
        """When what ``step`` waits for settled (None: not yet); gives up on backend calls."""
        ready = 0.0
        deps: Iterable[int] = step.waits_for
        if not self.options.faithful and step.previous_call is not None:
            deps = (*step.waits_for, step.previous_call)
        for dep in deps:
            at = self._settled_at.get(dep)
            if at is None:
                if dep not in self._waitable:
                    continue
                bc = self._backend.get(dep)
                if bc is None:
                    return None  # a charger frame still waiting for its answer (its timer ends it)
                if self._optional(bc):
                    continue
                give_up = bc.at + self.options.answer_timeout
                if now < give_up:
                    self._due = give_up if self._due is None else min(self._due, give_up)
                    return None
                at = self._settled_at[dep] = give_up
            ready = max(ready, at)
        return ready

    def _pump(self, now: float) -> None:
        """Do everything that is due at ``now``; leave ``_due`` at the next thing to wait for."""
        self._due = None
        plan = self.plan
        if self._phase is _Phase.PLAYING:
            steps = plan.steps
            while self._i < len(steps):
                step = steps[self._i]
                if not self._plays(step):
                    self._i += 1
                    continue
                ready = self._ready_at(step, now)
                if ready is None:
                    return
                if now < step.at:
                    self._due = step.at
                    return
                release = max(step.at, ready, self._release)
                self._send_step(step, now, release)
                self._release = release
                self._i += 1
            self._phase = _Phase.DRAINING
        if self._phase is _Phase.DRAINING:
            if self._pending_count:
                return  # each bounded by its timer
            if now < plan.end:
                self._due = plan.end
                return
            self._phase = _Phase.ENDING
            self._grace_until = now + self.options.grace
        if self._phase is _Phase.ENDING:
            waiting = self._required_left > 0 or plan.closed_by == "csms"
            if waiting and now < self._grace_until:
                self._due = self._grace_until
                return
            self._close()

    def _outgoing(self, step: Step) -> str | bytes:
        call = step.call
        if call is None:
            return step.raw
        payload = self.correlator.apply(call.action, Message.REQUEST, call.payload)
        payload = shift_timestamps(payload, self._shift)
        if payload is call.payload:
            return step.raw  # unchanged: the exact recorded text
        return dump(Call(call.unique_id, call.action, payload))

    def _send_step(self, step: Step, now: float, release: float) -> None:
        data = self._outgoing(step)
        if step.unique_id is not None and (step.blocking or step.answer is not None):
            self._tokens += 1
            pending = _Pending(step, now + self.options.answer_timeout, self._tokens)
            self._pending.setdefault(step.unique_id, deque()).append(pending)
            self._pending_count += 1
            heapq.heappush(self._timers, (pending.expires, pending.token, step.unique_id))
        else:
            self._settled_at[step.seq] = now
        lateness = now - release
        held = release - step.at
        self.lateness.append(lateness)
        if held > 0:
            self.held_seconds.append(held)
        head = (int(step.call.message_type), step.call.unique_id) if step.call is not None else None
        self._record(now, Direction.TO_CSMS, data, step.seq, step.action, lateness, head, held)
        self._out.append(Send(data, step.seq))

    def _close(self) -> None:
        """Close as the recording did: the charger's own close as it was; else 1000."""
        plan = self.plan
        code = plan.close_code
        if plan.closed_by in _CHARGER_SIDE:
            if code in _DROPPED:
                close = Close(None, abort=True)
            elif code is None or code in _NO_CODE:
                close = Close(None)
            else:
                close = Close(1000 if code in _RESERVED else code, plan.close_reason or "")
        else:
            close = Close(1000)
        self._close_sent = close
        self._phase = _Phase.CLOSING
        self._out.append(close)

    # -- receiving ----------------------------------------------------------------------

    def _take(self, uid: str | None) -> _Pending | None:
        if uid is None:
            return None
        queue = self._pending.get(uid)
        if not queue:
            return None
        pending = queue.popleft()
        if not queue:
            del self._pending[uid]
        self._pending_count -= 1
        return pending

    def _expire(self, now: float) -> None:
        """Answers not in by ``now`` time out, each at its own expiry time."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            expires, token, uid = heapq.heappop(timers)
            queue = self._pending.get(uid)
            if not queue or queue[0].token != token:
                continue  # answered already
            pending = self._take(uid)
            assert pending is not None
            self._timed_out[uid] = pending.step
            self._resolve(pending, None, expires)

    def _resolve(self, pending: _Pending, actual: CallResult | CallError | str | None, now: float) -> None:
        step = pending.step
        expected = step.answer
        action = step.action
        if isinstance(expected, CallResult) and isinstance(actual, CallResult):
            self.correlator.learn(action, Message.RESPONSE, expected.payload, actual.payload)
            payload = self.correlator.apply(action, Message.RESPONSE, expected.payload)
            if payload is not expected.payload:
                expected = CallResult(expected.unique_id, payload)
        rules = self.rules.for_message(self.plan.version, action, Message.RESPONSE, self.correlator)
        if expected is not None or actual is not None:
            self.compared[action or "-"] += 1
        seq = step.answer_seq if step.answer_seq is not None else step.seq
        for change in compare_answers(expected, actual, rules):
            self._diff(change, seq, action)
        if self.options.check_schema and isinstance(actual, CallResult):
            for change in schema_changes(self.plan.version, action, actual.payload, response=True):
                self._diff(change, seq, action)
        self._settled_at[step.seq] = now

    def _backend_call(self, now: float, data: str | bytes, call: Call) -> None:
        action = call.action
        head = (int(call.message_type), call.unique_id)
        self.compared[action] += 1
        schema = (
            schema_changes(self.plan.version, action, call.payload, response=False)
            if self.options.check_schema
            else []
        )
        queue = self._unconsumed.get(action)
        if not queue:
            self._record(now, Direction.TO_CP, data, None, action, head=head)
            kind = DiffKind.CALL_AFTER_END if now > self.plan.end else DiffKind.UNEXPECTED_CALL
            self._diff(Change(kind, "", None, call.payload), None, action)
            for change in schema:
                self._diff(change, None, action)
            error = CallError(
                call.unique_id, "GenericError", "ocpp-replay: the recording has no such call to answer", {}
            )
            self._reply(now, error, None, action)
            return
        bc = queue.popleft()
        if not self._optional(bc):
            self._required_left -= 1
        self._record(now, Direction.TO_CP, data, bc.seq, action, head=head)
        self.correlator.learn(action, Message.REQUEST, bc.call.payload, call.payload)
        expected = self.correlator.apply(action, Message.REQUEST, bc.call.payload)
        rules = self.rules.for_message(self.plan.version, action, Message.REQUEST, self.correlator)
        for change in compare_payloads(expected, call.payload, rules):
            self._diff(change, bc.seq, action)
        for change in schema:
            self._diff(change, bc.seq, action)
        answer = bc.answer
        reply: CallResult | CallError | str | None = None
        if isinstance(answer, CallResult):
            payload = self.correlator.apply(action, Message.RESPONSE, answer.payload)
            reply = CallResult(call.unique_id, shift_timestamps(payload, self._shift))
        elif isinstance(answer, CallError):
            reply = CallError(
                call.unique_id, answer.error_code, answer.error_description, answer.error_details
            )
        elif isinstance(answer, str):
            reply = answer  # the charger's answer was not OCPP-J: sent as recorded
        if reply is not None:
            self._reply(now, reply, bc.answer_seq, action)
        self._settled_at.setdefault(bc.seq, now)

    def _reply(
        self, now: float, reply: CallResult | CallError | str, seq: int | None, action: str | None
    ) -> None:
        """Answer a backend call: a frame built here, or recorded text as it was."""
        if self._close_sent is not None:
            return  # nothing goes out after the close frame
        if isinstance(reply, str):
            text, head = reply, None
        else:
            text, head = dump(reply), (int(reply.message_type), reply.unique_id)
        self._record(now, Direction.TO_CSMS, text, seq, action, head=head)
        self._out.append(Send(text, seq))

    # -- the end ------------------------------------------------------------------------

    def _finish(self, *, by: str, code: int | None, reason: str) -> None:
        for queue in self._unconsumed.values():
            for bc in queue:
                kind = DiffKind.OPTIONAL_CALL_MISSING if self._optional(bc) else DiffKind.MISSING_CALL
                self._diff(Change(kind, "", bc.call.payload, None), bc.seq, bc.call.action)
        self._unconsumed.clear()
        plan = self.plan
        if plan.closed_by in _CHARGER_SIDE or plan.closed_by == "csms":
            expected = {
                "by": "csms" if plan.closed_by == "csms" else "cp",
                "code": plan.close_code,
                "reason": plan.close_reason or "",
            }
            if by == "cp" and expected["by"] == "cp":
                actual = expected  # closed as recorded (a reserved code went out as 1000)
            else:
                actual = {"by": by, "code": code, "reason": reason or ""}
            rules = self.rules.for_message(plan.version, CLOSE_ACTION, Message.RESPONSE)
            for change in compare_payloads(expected, actual, rules):
                path = f"close.{change.path}" if change.path else "close"
                self._diff(Change(change.kind, path, change.expected, change.actual))
        self._phase = _Phase.DONE
        self._due = None
        self._timers.clear()

    # -- bookkeeping --------------------------------------------------------------------

    def _diff(self, change: Change, seq: int | None = None, action: str | None = None) -> None:
        d = Difference.of(
            change,
            session_id=self.plan.session_id,
            charge_point_id=self.plan.charge_point_id,
            seq=seq,
            action=action,
        )
        self.differences.append(d)
        self._out.append(Finding(d))

    def _record(
        self,
        now: float,
        direction: Direction,
        raw: str | bytes,
        recorded_seq: int | None,
        action: str | None,
        lateness: float | None = None,
        head: tuple[int | None, str | None] | None = None,
        held: float | None = None,
    ) -> None:
        """Keep a live frame; ``head`` is its (message type, unique id) when known already."""
        mtype, uid = head if head is not None else peek(raw)[:2]
        self._live_seq += 1
        self.frames.append(
            LiveFrame(
                seq=self._live_seq,
                recorded_seq=recorded_seq,
                timestamp=self._timestamp(now),
                elapsed=now,
                direction=str(direction),
                message_type=mtype,
                unique_id=uid,
                action=action,
                raw=_text(raw),
                lateness=lateness,
                held=held,
            )
        )


def _error_dict(frame: CallError) -> dict[str, Any]:
    return {
        "errorCode": frame.error_code,
        "errorDescription": frame.error_description,
        "errorDetails": frame.error_details,
    }
