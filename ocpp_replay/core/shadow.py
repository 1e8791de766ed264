"""Live shadow judgement: a charger's traffic with production, mirrored to a shadow backend. Pure.

One :class:`ShadowJudge` follows one charger connection on one shadow backend. The I/O layer
(:mod:`ocpp_replay.capture.shadow`) feeds it three streams of text frames, with the clock:

- :meth:`~ShadowJudge.from_charger`: a frame the charger sent production (its CALLs are
  mirrored to the shadow; its answers to production's CALLs are kept to answer the shadow's);
- :meth:`~ShadowJudge.from_production`: a frame production sent the charger (its answers are
  the expected answers; its CALLs are what the shadow should call too);
- :meth:`~ShadowJudge.from_shadow`: a frame the shadow sent (answers to compare, CALLs to
  answer on the shadow leg and to compare with production's).

and :meth:`~ShadowJudge.expire` as time passes. What the shadow leg must send comes out in
``outbox`` (text frames, in order); findings in ``differences`` and the shadow leg's frames in
``frames``: the I/O layer drains all three. Nothing here reaches the charger.

The comparison is the replay's: :func:`~ocpp_replay.core.diff.compare_answers` and
:func:`~ocpp_replay.core.diff.compare_calls` under the same :class:`~ocpp_replay.core.rules.RuleSet`
(presence and ignore rules, the backend-assigned ids compared for presence and type), schema
checks on what the shadow sends, and a :class:`~ocpp_replay.core.correlate.Correlator` that learns
production's value -> the shadow's value (a transactionId from the two StartTransaction answers,
a reservationId from the two ReserveNow calls) and puts the shadow's values into the charger's
later frames on the shadow leg. A charger CALL that follows a CALL whose answer assigns such a
value waits (on the shadow leg only) until the shadow has answered that CALL, so that its ids
can be translated: the charger itself waited for production's answer before using the value.

Findings:

- the shadow's answer differs from production's (kinds of the replay diff), or never came
  (``timeout``, after ``answer_timeout``);
- the shadow called something production did not call within ``answer_timeout``
  (``unexpected_call``), or did not make a call production made (``missing_call``); calls made
  by both are compared by payload;
- the handshake (``handshake.status``, ``handshake.subprotocol``) and the connection
  (``connection``: the shadow dropped it, or frames were dropped because it fell behind).

A CALL of the shadow is answered on the shadow leg from the charger's answer to the same
production CALL (waiting for it if the charger has not answered yet), else from the charger's
last answer to a CALL of that action on this connection, else with a CALLERROR NotSupported.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ocpp_replay.core.correlate import Correlator, Message
from ocpp_replay.core.diff import (
    Change,
    Difference,
    DiffKind,
    compare_answers,
    compare_calls,
    schema_changes,
)
from ocpp_replay.core.frames import Call, CallError, CallResult, InvalidFrame, dump, parse, peek
from ocpp_replay.core.results import LiveFrame
from ocpp_replay.core.rules import RuleSet

__all__ = ["SHADOW_SIDE", "ShadowJudge"]

#: The side of a shadow run's frames and differences (as a replay's: the reports read it so).
SHADOW_SIDE = "target"
#: Charger frames held back on the shadow leg at most (waiting for an id to translate).
MAX_HELD = 256

Answer = CallResult | CallError | str


_second: list[Any] = [None, ""]


def _iso(wall: float) -> str:
    """ISO 8601 UTC with microseconds; the date part formatted once a second (it is the costly part)."""
    second = int(wall)
    micros = min(999_999, round((wall - second) * 1_000_000))
    if _second[0] != second:
        _second[1] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second[0] = second
    return f"{_second[1]}.{micros:06d}Z"


@dataclass(slots=True)
class _Exchange:
    """A charger CALL: production's answer and the shadow's, as they come."""

    uid: str  # the charger CALL's (the payload is not kept: only what the answers need)
    action: str
    seq: int  # the charger's frame in the capture
    at: float  # when it was mirrored to the shadow
    prod: Answer | None = None
    prod_seq: int | None = None
    shadow: Answer | None = None


@dataclass(slots=True)
class _ProdCall:
    """A CALL production made to the charger, and the charger's answer once it came."""

    call: Call
    seq: int
    at: float
    answer: Answer | None = None
    answer_seq: int | None = None


@dataclass(slots=True)
class _ShadowCall:
    call: Call
    at: float
    prod: _ProdCall | None = None  # production's call of the same action, once paired
    answered: bool = False  # an answer went back to the shadow


@dataclass(slots=True)
class ShadowJudge:
    """Judges one charger connection's shadow leg. See the module docstring."""

    session_id: int
    charge_point_id: str
    version: str | None
    rules: RuleSet
    correlator: Correlator
    wall0: float  # wall clock at mono0: frames get their timestamps from the clock passed in
    mono0: float
    answer_timeout: float = 30.0
    pair_window: float = 1.0  # a shadow CALL waits this long for production's CALL of its action
    check_schema: bool = True
    outbox: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    frames: list[LiveFrame] = field(default_factory=list)
    compared: Counter[str] = field(default_factory=Counter)
    connected: bool = False
    error: str | None = None  # why the comparison is incomplete (also a difference)
    _seq: int = 0
    _pending: dict[str, _Exchange] = field(default_factory=dict)  # by the charger CALL's uid
    _assigning: set[str] = field(default_factory=set)  # pending uids whose answer assigns an id
    _held: deque[tuple[int, str, Call | None]] = field(default_factory=deque)
    _prod_calls: dict[str, _ProdCall] = field(default_factory=dict)  # by production's uid
    _unmatched_prod: dict[str, deque[_ProdCall]] = field(default_factory=dict)  # by action
    _unmatched_shadow: dict[str, deque[_ShadowCall]] = field(default_factory=dict)  # by action
    _deferred: list[_ShadowCall] = field(default_factory=list)  # waiting for the charger's answer
    _last_answer: dict[str, tuple[Answer, int | None]] = field(default_factory=dict)  # by action
    _findings: set[str] = field(default_factory=set)  # connection findings already recorded

    # -- the shadow connection ----------------------------------------------------------------

    def connected_with(self, offered: str | None, production: str | None, shadow: str | None) -> None:
        """The shadow leg is open; it chose ``shadow`` where production chose ``production``."""
        self.connected = True
        if (shadow or None) != (production or None) and "subprotocol" not in self._findings:
            self._findings.add("subprotocol")
            self._diff(Change(DiffKind.CHANGED, "handshake.subprotocol", production, shadow), None, None)

    def connect_failed(self, reason: str, status: int | None = None) -> None:
        """The shadow could not be reached or refused the handshake (recorded once a session)."""
        self.connected = False
        self.incomplete(f"shadow handshake failed: {reason}")
        if "handshake" not in self._findings:
            self._findings.add("handshake")
            self._diff(Change(DiffKind.CHANGED, "handshake.status", 101, status or reason), None, None)

    def lost(self, reason: str) -> None:
        """The shadow leg dropped: what was in flight on it is forgotten, not reported."""
        self.connected = False
        self.incomplete(f"shadow connection lost: {reason}")
        if "lost" not in self._findings:
            self._findings.add("lost")
            self._diff(Change(DiffKind.CHANGED, "connection", "open", f"lost: {reason}"), None, None)
        self._forget()

    def dropped(self, frames: int) -> None:
        """The I/O layer dropped ``frames`` of this charger's frames (the shadow fell behind)."""
        self.incomplete(f"{frames} frames not mirrored: the shadow fell behind")
        if "dropped" not in self._findings:
            self._findings.add("dropped")
            self._diff(
                Change(DiffKind.CHANGED, "connection", "mirrored", "frames dropped: the shadow fell behind"),
                None,
                None,
            )

    def incomplete(self, reason: str) -> None:
        if self.error is None:
            self.error = reason

    def _forget(self) -> None:
        self._pending.clear()
        self._assigning.clear()
        self._held.clear()
        self._prod_calls.clear()
        self._unmatched_prod.clear()
        self._unmatched_shadow.clear()
        self._deferred.clear()

    @property
    def waiting(self) -> bool:
        """Something sent to the shadow still waits for its answer (or to be sent)."""
        return bool(self._held or self._deferred) or any(ex.shadow is None for ex in self._pending.values())

    def next_deadline(self) -> float | None:
        """When :meth:`expire` next has something to do (None: nothing is waiting)."""
        t = self.answer_timeout
        times = [sc.at + (self.pair_window if sc.prod is None else t) for sc in self._deferred]
        for first in (next(iter(self._pending.values()), None), next(iter(self._prod_calls.values()), None)):
            if first is not None:
                times.append(first.at + t)
        times += [q[0].at + t for q in self._unmatched_prod.values() if q]
        times += [q[0].at + t for q in self._unmatched_shadow.values() if q]
        return min(times) if times else None

    # -- events -------------------------------------------------------------------------------

    def from_charger(self, seq: int, raw: str, now: float) -> None:
        """A frame the charger sent production (``seq``: its number in the capture)."""
        try:
            frame = parse(raw)
        except InvalidFrame:
            self._mirror(seq, raw, None, now)  # what production got, the shadow gets
            return
        if isinstance(frame, Call):
            self._mirror(seq, raw, frame, now)
            return
        prod = self._prod_calls.pop(frame.unique_id, None)  # the charger answers production
        if prod is None:
            return
        prod.answer, prod.answer_seq = frame, seq
        self._last_answer[prod.call.action] = (frame, seq)
        for sc in [d for d in self._deferred if d.prod is prod]:
            self._deferred.remove(sc)
            self._answer_shadow(sc, frame, seq, now)

    def from_production(self, seq: int, raw: str, now: float) -> None:
        """A frame production sent the charger."""
        try:
            frame = parse(raw)
        except InvalidFrame:
            return  # not OCPP-J: nothing to pair it with
        if isinstance(frame, Call):
            pc = _ProdCall(frame, seq, now)
            self._prod_calls[frame.unique_id] = pc
            waiting = self._unmatched_shadow.get(frame.action)
            if waiting:
                self._pair_calls(waiting.popleft(), pc, now)
            else:
                self._unmatched_prod.setdefault(frame.action, deque()).append(pc)
            return
        ex = self._pending.get(frame.unique_id)
        if ex is None or ex.prod is not None:
            return
        ex.prod, ex.prod_seq = frame, seq
        self._settle(ex, now)

    def from_shadow(self, raw: str, now: float) -> None:
        """A frame the shadow sent on its leg."""
        try:
            frame: CallResult | CallError | Call | str = parse(raw)
        except InvalidFrame:
            frame = raw
        if isinstance(frame, Call):
            self._record("to_cp", raw, None, frame.action, now, 2, frame.unique_id)
            self._shadow_call(frame, now)
            return
        uid = frame.unique_id if not isinstance(frame, str) else _peek_uid(raw)
        ex = self._pending.get(uid) if uid is not None else None
        if ex is None:
            self._record("to_cp", raw, None, None, now, _peek_type(frame), uid)
            return
        ex.shadow = frame
        self._record("to_cp", raw, None, ex.action, now, _peek_type(frame), uid)
        if ex.prod is None and uid in self._assigning:
            self._assigning.discard(uid)  # production's answer is still to come: learned then
        self._settle(ex, now)

    def expire(self, now: float) -> None:
        """Findings whose time has come: answers not given, calls not made (call it now and then)."""
        limit = now - self.answer_timeout
        for ex in list(self._pending.values()):
            if ex.prod is not None and ex.shadow is None and ex.at <= limit:
                self._settle(ex, now, timed_out=True)
            elif ex.prod is None and ex.at <= limit:
                del self._pending[ex.uid]  # production never answered: nothing to judge
                self._assigning.discard(ex.uid)
                self._release(now)
        for action, queue in list(self._unmatched_prod.items()):
            while queue and queue[0].at <= limit:
                pc = queue.popleft()
                self._diff(Change(DiffKind.MISSING_CALL, "", pc.call.payload, None), pc.seq, action)
            if not queue:
                del self._unmatched_prod[action]
        for action, squeue in list(self._unmatched_shadow.items()):
            while squeue and squeue[0].at <= limit:
                sc = squeue.popleft()
                self._diff(Change(DiffKind.UNEXPECTED_CALL, "", None, sc.call.payload), None, action)
            if not squeue:
                del self._unmatched_shadow[action]
        for sc in list(self._deferred):
            if sc.prod is None and sc.at <= now - self.pair_window:
                self._deferred.remove(sc)
                self._answer_unpaired(sc, now)
            elif sc.at <= limit:
                self._deferred.remove(sc)
                self._reply(sc, _not_supported(sc.call, "the charger's answer never came"), None, now)
        for uid, pc in list(self._prod_calls.items()):
            if pc.at <= limit:
                del self._prod_calls[uid]  # the charger never answered production

    def close(self, now: float) -> None:
        """The charger's connection ended: what is still open is judged now."""
        self.expire(now + self.answer_timeout + 1)

    # -- internals ----------------------------------------------------------------------------

    def _mirror(self, seq: int, raw: str, call: Call | None, now: float) -> None:
        if self._held or self._blocking():
            if len(self._held) >= MAX_HELD:
                self.dropped(1)
                return
            self._held.append((seq, raw, call))
            return
        self._send_charger(seq, raw, call, now)

    def _blocking(self) -> bool:
        """A charger CALL whose answer assigns an id is waiting for the shadow's answer."""
        return bool(self._assigning)

    def _release(self, now: float) -> None:
        while self._held and not self._blocking():
            seq, raw, call = self._held.popleft()
            self._send_charger(seq, raw, call, now)

    def _send_charger(self, seq: int, raw: str, call: Call | None, now: float) -> None:
        text = raw
        if call is not None:
            payload = self.correlator.apply(call.action, Message.REQUEST, call.payload)
            if payload is not call.payload:
                text = dump(Call(call.unique_id, call.action, payload))
            self._pending[call.unique_id] = _Exchange(call.unique_id, call.action, seq, now)
            if self.correlator.source_paths(call.action, Message.RESPONSE):
                self._assigning.add(call.unique_id)
        self.outbox.append(text)
        self._record(
            "to_csms",
            text,
            seq,
            call.action if call else None,
            now,
            2 if call else None,
            call.unique_id if call else None,
        )

    def _settle(self, ex: _Exchange, now: float, *, timed_out: bool = False) -> None:
        if ex.prod is None or (ex.shadow is None and not timed_out):
            return
        del self._pending[ex.uid]
        self._assigning.discard(ex.uid)
        action = ex.action
        expected: Answer = ex.prod
        actual = ex.shadow
        if isinstance(expected, CallResult) and isinstance(actual, CallResult):
            self.correlator.learn(action, Message.RESPONSE, expected.payload, actual.payload)
            payload = self.correlator.apply(action, Message.RESPONSE, expected.payload)
            if payload is not expected.payload:
                expected = CallResult(expected.unique_id, payload)
        rules = self.rules.for_message(self.version, action, Message.RESPONSE, self.correlator)
        self.compared[action] += 1
        for change in compare_answers(expected, actual, rules):
            self._diff(change, ex.prod_seq, action)
        if self.check_schema and isinstance(actual, CallResult):
            for change in schema_changes(self.version, action, actual.payload, response=True):
                self._diff(change, ex.prod_seq, action)
        self._release(now)

    def _shadow_call(self, call: Call, now: float) -> None:
        action = call.action
        self.compared[action] += 1
        if self.check_schema:
            for change in schema_changes(self.version, action, call.payload, response=False):
                self._diff(change, None, action)
        sc = _ShadowCall(call, now)
        waiting = self._unmatched_prod.get(action)
        if waiting:
            self._pair_calls(sc, waiting.popleft(), now)
            return
        self._unmatched_shadow.setdefault(action, deque()).append(sc)
        self._deferred.append(sc)  # production may make the same call in a moment

    def _answer_unpaired(self, sc: _ShadowCall, now: float) -> None:
        last = self._last_answer.get(sc.call.action)
        if last is not None:
            self._answer_shadow(sc, last[0], last[1], now)
        else:
            self._reply(
                sc, _not_supported(sc.call, "the charger was not asked this on this connection"), None, now
            )

    def _pair_calls(self, sc: _ShadowCall, pc: _ProdCall, now: float) -> None:
        action = sc.call.action
        sc.prod = pc
        self.correlator.learn(action, Message.REQUEST, pc.call.payload, sc.call.payload)
        expected = self.correlator.apply(action, Message.REQUEST, pc.call.payload)
        rules = self.rules.for_message(self.version, action, Message.REQUEST, self.correlator)
        for change in compare_calls(Call(pc.call.unique_id, action, expected), sc.call, rules):
            self._diff(change, pc.seq, action)
        if sc.answered:
            return
        if pc.answer is not None:
            if sc in self._deferred:
                self._deferred.remove(sc)
            self._answer_shadow(sc, pc.answer, pc.answer_seq, now)
        elif sc not in self._deferred:
            self._deferred.append(sc)

    def _answer_shadow(self, sc: _ShadowCall, answer: Answer, answer_seq: int | None, now: float) -> None:
        call = sc.call
        reply: Answer
        if isinstance(answer, CallResult):
            payload = self.correlator.apply(call.action, Message.RESPONSE, answer.payload)
            reply = CallResult(call.unique_id, payload)
        elif isinstance(answer, CallError):
            reply = CallError(
                call.unique_id, answer.error_code, answer.error_description, answer.error_details
            )
        else:
            reply = answer  # the charger's answer was not OCPP-J: passed on as it was
        self._reply(sc, reply, answer_seq, now)

    def _reply(self, sc: _ShadowCall, reply: Answer, answer_seq: int | None, now: float) -> None:
        sc.answered = True
        text = reply if isinstance(reply, str) else dump(reply)
        self.outbox.append(text)
        mtype = None if isinstance(reply, str) else int(reply.message_type)
        self._record("to_csms", text, answer_seq, sc.call.action, now, mtype, sc.call.unique_id)

    def _diff(self, change: Change, seq: int | None, action: str | None) -> None:
        self.differences.append(
            Difference.of(
                change,
                session_id=self.session_id,
                charge_point_id=self.charge_point_id,
                seq=seq,
                action=action,
                side=SHADOW_SIDE,
            )
        )

    def _record(
        self,
        direction: str,
        raw: str,
        recorded_seq: int | None,
        action: str | None,
        now: float,
        mtype: int | None,
        uid: str | None,
    ) -> None:
        self._seq += 1
        elapsed = now - self.mono0
        self.frames.append(
            LiveFrame(
                seq=self._seq,
                recorded_seq=recorded_seq,
                timestamp=_iso(self.wall0 + elapsed),
                elapsed=elapsed,
                direction=direction,
                message_type=mtype,
                unique_id=uid,
                action=action,
                raw=raw,
                side=SHADOW_SIDE,
            )
        )


def _not_supported(call: Call, why: str) -> CallError:
    return CallError(call.unique_id, "NotSupported", f"ocpp-replay shadow: {why}", {})


def _peek_type(frame: Any) -> int | None:
    return None if isinstance(frame, str) else int(frame.message_type)


def _peek_uid(raw: str) -> str | None:
    return peek(raw)[1]
