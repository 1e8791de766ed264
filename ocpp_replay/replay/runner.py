"""Replay captured sessions against a target CSMS, playing the charger side (aiohttp).

The edge around the pure core: :mod:`ocpp_replay.core.schedule` says what to send when and what to
wait for, :mod:`ocpp_replay.core.correlate` rewrites assigned ids and timestamps,
:mod:`ocpp_replay.core.diff` compares answers under :mod:`ocpp_replay.core.rules`. This module only
connects, sleeps until deadlines, sends, receives, and collects a
:class:`~ocpp_replay.core.results.RunResult`; :func:`store_run` writes it to the capture database.

Entry points::

    sessions = await asyncio.to_thread(load_sessions, store, selection)   # or let run_replay do it
    result = await run_replay(store, "ws://csms:9000/ocpp", selection=Selection(), speed=1.0)
    result = await asyncio.to_thread(store_run, store, result)            # result.run_id is set
    result = await run_compare(store, "ws://a/ocpp", "ws://b/ocpp", noise_runs=1)
    result = load_run(store, run_id)                                      # any stored run, rebuilt

Errors (:mod:`ocpp_replay.errors`): ``UpstreamError`` when the target cannot be reached,
``ReplayError`` for an empty selection or bad options, ``CaptureError`` for an unreadable
capture. Everything the backend does differently is a :class:`~ocpp_replay.core.diff.Difference`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from aiohttp import WSMsgType
from yarl import URL

from ocpp_replay.capture.reach import probe
from ocpp_replay.core.compare import compare_result
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
from ocpp_replay.core.results import LiveFrame, RunResult, SessionResult
from ocpp_replay.core.rewrite import Rewriter, rewrite_plans
from ocpp_replay.core.rules import RuleSet
from ocpp_replay.core.schedule import BackendCall, SessionPlan, Step, plan_sessions
from ocpp_replay.errors import (
    ConfigError,
    InvalidFrame,
    OcppReplayError,
    ReplayError,
    UpstreamError,
)

# The store is opened by the caller; every call into it here runs in a thread.
from ocpp_replay.store import FrameRecord, SessionInfo, Store, utc_iso

__all__ = [
    "Progress",
    "Selection",
    "load_auth_file",
    "load_sessions",
    "run_compare",
    "run_replay",
]

log = logging.getLogger(__name__)

#: Close codes a peer may not send in a close frame; replaced by 1000.
_UNSENDABLE_CLOSE = {None, 1004, 1005, 1006, 1015}
_CLOSE_GOING_AWAY = 1001
MAX_MESSAGE_SIZE = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Selection:
    """Which sessions of the capture to replay (all of them by default)."""

    session_ids: tuple[int, ...] = ()
    charge_points: tuple[str, ...] = ()
    since: str | None = None  # ISO 8601 UTC, compared with sessions.started_at
    until: str | None = None


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot for a progress display (sent after each frame and each finished session)."""

    sessions_total: int
    sessions_done: int
    frames_sent: int
    diffs: int
    finished: SessionResult | None = None  # the session that just finished, if any


ProgressCallback = Callable[[Progress], None]


# ----------------------------------------------------------------------------- inputs


def load_auth_file(path: str | Path) -> dict[str, str]:
    """Passwords for Basic auth: lines ``CHARGE_POINT_ID:PASSWORD`` (``*`` for any); # comments."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read auth file {p}: {getattr(exc, 'strerror', None) or exc}") from exc
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user:
            raise ConfigError(f"auth file {p} line {n}: expected CHARGE_POINT_ID:PASSWORD")
        out[user] = password
    return out


def load_sessions(
    store: Store, selection: Selection = Selection()
) -> list[tuple[SessionInfo, list[FrameRecord]]]:
    """The selected sessions with their frames (blocking: call it in a thread)."""
    infos = store.sessions(
        ids=selection.session_ids,
        charge_points=selection.charge_points,
        since=selection.since,
        until=selection.until,
    )
    if selection.session_ids:
        found = {s.id for s in infos}
        missing = [i for i in selection.session_ids if i not in found]
        if missing:
            raise ReplayError(f"no session {missing[0]} in {store.path} (or outside --since/--until)")
    out = []
    for info in infos:
        if info.error and info.frames == 0:
            continue  # a handshake the upstream refused: nothing to replay
        out.append((info, list(store.frames(info.id))))
    if not out:
        raise ReplayError(f"no sessions to replay in capture {store.path} for this selection")
    return out


# ----------------------------------------------------------------------------- one session


@dataclass(slots=True)
class _Pending:
    step: Step
    timer: asyncio.TimerHandle | None


@dataclass(slots=True)
class _Counters:
    sessions_total: int
    sessions_done: int = 0
    frames_sent: int = 0
    diffs: int = 0


@dataclass(slots=True)
class _Context:
    http: aiohttp.ClientSession
    target: str
    rules: RuleSet
    keep_timestamps: bool
    auth: Mapping[str, str]
    answer_timeout: float
    grace: float
    connect_timeout: float
    progress: ProgressCallback | None
    counters: _Counters
    check_schema: bool = True
    correlators: dict[str, Correlator] = field(default_factory=dict)
    #: Until one charger has connected, a failing target is an error (exit 2); after that a
    #: charger the target fails is a difference of its session.
    connected_once: bool = False


class _SessionRun:
    """Plays one session: connect, send steps on schedule, answer backend calls, compare."""

    def __init__(self, plan: SessionPlan, ctx: _Context, anchor: float) -> None:
        self.plan = plan
        self.ctx = ctx
        self.loop = asyncio.get_running_loop()
        self.anchor = anchor
        self.correlator = ctx.correlators.setdefault(plan.charge_point_id, ctx.rules.correlator(plan.version))
        self.diffs: list[Difference] = []
        self.compared: Counter[str] = Counter()
        self.frames: list[LiveFrame] = []
        self.lateness: list[float] = []
        self.held = 0
        self.pending: dict[str, _Pending] = {}
        self.settled: dict[int, asyncio.Event] = {}
        for step in plan.steps:
            self.settled[step.seq] = asyncio.Event()
        for bc in plan.backend_calls:
            self.settled[bc.seq] = asyncio.Event()
        self.unconsumed: dict[str, deque[BackendCall]] = {}
        for bc in plan.backend_calls:
            self.unconsumed.setdefault(bc.call.action, deque()).append(bc)
        self._backend_seqs = {bc.seq for bc in plan.backend_calls}
        self.remaining_backend = len(plan.backend_calls)
        self.backend_done = asyncio.Event()
        if not self.remaining_backend:
            self.backend_done.set()
        self.idle = asyncio.Event()
        self.idle.set()
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.wall_anchor = 0.0
        self.started_at: str | None = None
        self.error: str | None = None
        self.live_seq = 0

    # -- bookkeeping ------------------------------------------------------------------

    def _diff(self, change: Change, seq: int | None, action: str | None) -> None:
        self.diffs.append(
            Difference.of(
                change,
                session_id=self.plan.session_id,
                charge_point_id=self.plan.charge_point_id,
                seq=seq,
                action=action,
            )
        )
        self.ctx.counters.diffs += 1

    def _record(
        self,
        direction: Direction,
        raw: str | bytes,
        recorded_seq: int | None,
        action: str | None,
        lateness: float | None = None,
        head: tuple[int | None, str | None] | None = None,
    ) -> None:
        """Keep a live frame; ``head`` is its (message type, unique id) when the caller knows it
        already, so that a frame parsed once is not parsed again."""
        now = self.loop.time()
        mtype, uid = head if head is not None else peek(raw)[:2]
        self.live_seq += 1
        text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
        self.frames.append(
            LiveFrame(
                seq=self.live_seq,
                recorded_seq=recorded_seq,
                timestamp=utc_iso(self.wall_anchor + (now - self.anchor)),
                elapsed=now - self.anchor,
                direction=str(direction),
                message_type=mtype,
                unique_id=uid,
                action=action,
                raw=text,
                lateness=lateness,
            )
        )

    def _settle(self, seq: int) -> None:
        ev = self.settled.get(seq)
        if ev is not None:
            ev.set()

    # -- connection -------------------------------------------------------------------

    def _url(self) -> URL:
        """``<target><suffix as dialled>``; a query of the target and the recorded one both kept.
        Sent byte for byte (not re-quoted) when the capture has the suffix: its query is raw too.
        Older captures hold the query decoded: quoted as before."""
        plan = self.plan
        url = session_url(self.ctx.target, plan.charge_point_id, plan.query, plan.path_suffix)
        return URL(url, encoded=plan.path_suffix is not None)

    def _headers(self) -> dict[str, str]:
        auth = self.ctx.auth
        password = auth.get(self.plan.charge_point_id, auth.get("*"))
        if password is None:
            return {}
        user = self.plan.auth_user or self.plan.charge_point_id
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        return {"Authorization": f"Basic {token}"}

    async def _connect(self) -> bool:
        plan = self.plan
        try:
            async with asyncio.timeout(self.ctx.connect_timeout):
                self.ws = await self.ctx.http.ws_connect(
                    self._url(),
                    protocols=(plan.subprotocol,) if plan.subprotocol else (),
                    headers=self._headers(),
                    autoping=True,
                    heartbeat=None,
                    max_msg_size=MAX_MESSAGE_SIZE,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                )
        except aiohttp.WSServerHandshakeError as exc:
            self.error = f"handshake refused: {exc.status} {exc.message}"
            self._diff(Change(DiffKind.CHANGED, "handshake.status", 101, exc.status), None, None)
            return False
        except TimeoutError as exc:
            reason = f"no websocket handshake within {self.ctx.connect_timeout:g} s"
            if not self.ctx.connected_once:
                raise UpstreamError(
                    f"target {self.ctx.target} accepted the connection for {plan.charge_point_id} but "
                    f"completed {reason}"
                ) from exc
            return self._connect_failed(reason)
        except (aiohttp.ClientError, OSError) as exc:
            reason = f"unreachable: {str(exc) or type(exc).__name__}"
            if not self.ctx.connected_once:
                raise UpstreamError(
                    f"target {self.ctx.target} unreachable for {plan.charge_point_id}: "
                    f"{str(exc) or type(exc).__name__}"
                ) from exc
            return self._connect_failed(reason)
        self.ctx.connected_once = True
        if (self.ws.protocol or None) != (plan.subprotocol or None):
            self._diff(
                Change(DiffKind.CHANGED, "handshake.subprotocol", plan.subprotocol, self.ws.protocol),
                None,
                None,
            )
        return True

    def _connect_failed(self, reason: str) -> bool:
        """The target worked for other chargers but not for this one: a difference of this
        session (the backend fell over, or refuses this charger), not the end of the run."""
        self.error = f"handshake failed: {reason}"
        self._diff(Change(DiffKind.CHANGED, "handshake.status", 101, reason), None, None)
        return False

    async def run(self) -> SessionResult:
        plan = self.plan
        self.wall_anchor = time.time() - (self.loop.time() - self.anchor)
        self.started_at = utc_iso(time.time())
        log.debug("session %d (%s): connecting", plan.session_id, plan.charge_point_id)
        connected = await self._connect()
        if connected:
            ws = self.ws
            assert ws is not None
            reader = asyncio.create_task(self._read(ws), name=f"replay-read-{plan.session_id}")
            try:
                await self._play(ws)
            finally:
                if not ws.closed:
                    with contextlib.suppress(Exception):
                        await ws.close(code=_CLOSE_GOING_AWAY)
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                for pending in self.pending.values():
                    if pending.timer is not None:
                        pending.timer.cancel()
        for queue in self.unconsumed.values() if connected else ():  # refused: the handshake says it
            for bc in queue:
                self._diff(Change(DiffKind.MISSING_CALL, "", bc.call.payload, None), bc.seq, bc.call.action)
        log.info(
            "session %d (%s): %d frames, %d differences",
            plan.session_id,
            plan.charge_point_id,
            len(self.frames),
            len(self.diffs),
        )
        result = SessionResult(
            session_id=plan.session_id,
            charge_point_id=plan.charge_point_id,
            subprotocol=plan.subprotocol,
            started_at=self.started_at,
            ended_at=utc_iso(time.time()),
            differences=tuple(sorted(self.diffs, key=Difference.sort_key)),
            compared=dict(self.compared),
            frames=tuple(self.frames),
            lateness=tuple(self.lateness),
            held=self.held,
            error=self.error,
            close_code=self.close_code,
        )
        counters = self.ctx.counters
        counters.sessions_done += 1
        if self.ctx.progress is not None:
            self.ctx.progress(
                Progress(
                    counters.sessions_total,
                    counters.sessions_done,
                    counters.frames_sent,
                    counters.diffs,
                    result,
                )
            )
        return result

    # -- sending ----------------------------------------------------------------------

    async def _wait_for(self, step: Step, deadline: float) -> bool:
        """Wait for what the step depends on; True when that made it late."""
        late = False
        for dep in step.waits_for:
            ev = self.settled.get(dep)
            if ev is None or ev.is_set():
                continue
            if dep in self._backend_seqs:
                # A backend call the recording had before this frame: wait for it, bounded.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.ctx.answer_timeout):
                        await ev.wait()
                ev.set()  # given up on or received: later frames do not wait for it again
            else:
                await ev.wait()  # a charger call: its answer timer settles it
            if self.loop.time() > deadline:
                late = True
        return late

    def _outgoing(self, step: Step) -> str | bytes:
        call = step.call
        if call is None:
            return step.raw
        payload = self.correlator.apply(call.action, Message.REQUEST, call.payload)
        if not self.ctx.keep_timestamps:
            payload = shift_timestamps(payload, self.wall_anchor - self.plan.recorded_start)
        if payload is call.payload:
            return step.raw  # unchanged: the exact recorded text
        return dump(Call(call.unique_id, call.action, payload))

    async def _play(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        plan = self.plan
        loop = self.loop
        counters = self.ctx.counters
        progress = self.ctx.progress
        for i, step in enumerate(plan.steps):
            deadline = self.anchor + step.at
            held = await self._wait_for(step, deadline) if step.waits_for else False
            if self.closed.is_set():
                self._early_close(plan.steps[i:])
                return
            delay = deadline - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            text = self._outgoing(step)
            if step.unique_id is not None and (step.blocking or step.answer is not None):
                self.idle.clear()
                timer = loop.call_later(self.ctx.answer_timeout, self._timed_out, step.unique_id)
                self.pending[step.unique_id] = _Pending(step, timer)
            elif not step.blocking:
                self._settle(step.seq)
            lateness = loop.time() - deadline
            try:
                if isinstance(text, str):
                    await ws.send_str(text)
                else:
                    await ws.send_bytes(text)
            except (ConnectionError, aiohttp.ClientError, RuntimeError):
                self._early_close(plan.steps[i:])
                return
            self.lateness.append(lateness)
            if held:
                self.held += 1
            head = (int(step.call.message_type), step.call.unique_id) if step.call is not None else None
            self._record(Direction.TO_CSMS, text, step.seq, step.action, lateness, head)
            counters.frames_sent += 1
            if log.isEnabledFor(logging.DEBUG):
                log.debug("session %d sent seq %d late %.2f ms", plan.session_id, step.seq, lateness * 1e3)
            if progress is not None:
                progress(
                    Progress(
                        counters.sessions_total, counters.sessions_done, counters.frames_sent, counters.diffs
                    )
                )
        # Outstanding answers (each bounded by its timer), then the recorded close time.
        await self._until_or_closed(self.idle.wait())
        end = self.anchor + plan.end
        if loop.time() < end and not self.closed.is_set():
            await self._until_or_closed(asyncio.sleep(end - loop.time()))
        # Backend calls the recording has and the live backend has not sent yet: a grace period.
        if not self.backend_done.is_set() and not self.closed.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.ctx.grace):
                    await self._until_or_closed(self.backend_done.wait())
        if self.closed.is_set():
            return
        if plan.closed_by == "csms":
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.ctx.grace):
                    await self.closed.wait()
            if self.closed.is_set():
                return
        code = plan.close_code if plan.close_code not in _UNSENDABLE_CLOSE else 1000
        if plan.closed_by == "csms":
            code = 1000
        assert code is not None
        with contextlib.suppress(Exception):
            await ws.close(code=code)
        self.close_code = code

    async def _until_or_closed(self, aw: Any) -> None:
        """Await ``aw`` but stop as soon as the backend closed the connection."""
        task = asyncio.ensure_future(aw)
        closed = asyncio.ensure_future(self.closed.wait())
        try:
            await asyncio.wait((task, closed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (task, closed):
                if not t.done():
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await t

    def _early_close(self, unsent: Sequence[Step]) -> None:
        if not unsent:
            return
        first = unsent[0]
        actual = f"closed by the CSMS with code {self.close_code}" if self.close_code else "connection lost"
        self.error = actual
        self._diff(Change(DiffKind.CHANGED, "connection", "open", actual), first.seq, first.action)

    # -- receiving --------------------------------------------------------------------

    def _timed_out(self, unique_id: str) -> None:
        pending = self.pending.pop(unique_id, None)
        if pending is None:
            return
        self._resolve(pending.step, None)

    def _resolve(self, step: Step, actual: CallResult | CallError | str | None) -> None:
        expected = step.answer
        action = step.action
        if isinstance(expected, CallResult) and isinstance(actual, CallResult):
            self.correlator.learn(action, Message.RESPONSE, expected.payload, actual.payload)
            payload = self.correlator.apply(action, Message.RESPONSE, expected.payload)
            if payload is not expected.payload:
                expected = CallResult(expected.unique_id, payload)
        rules = self.ctx.rules.for_message(self.plan.version, action, Message.RESPONSE, self.correlator)
        if expected is not None or actual is not None:
            self.compared[action or "-"] += 1
        seq = step.answer_seq if step.answer_seq is not None else step.seq
        for change in compare_answers(expected, actual, rules):
            self._diff(change, seq, action)
        if self.ctx.check_schema and isinstance(actual, CallResult):
            for change in schema_changes(self.plan.version, action, actual.payload, response=True):
                self._diff(change, seq, action)
        self._settle(step.seq)
        if not self.pending:
            self.idle.set()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            while True:
                msg = await ws.receive()
                if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                    await self._incoming(ws, msg.data)
                    continue
                if msg.type is WSMsgType.CLOSE:
                    self.close_code = ws.close_code or msg.data
                break
        except (ConnectionError, aiohttp.ClientError):
            pass
        finally:
            if self.close_code is None:
                self.close_code = ws.close_code
            self.closed.set()
            for uid in list(self.pending):
                pending = self.pending.pop(uid)
                if pending.timer is not None:
                    pending.timer.cancel()
                self._resolve(pending.step, None)
            self.idle.set()
            for ev in self.settled.values():
                ev.set()

    async def _incoming(self, ws: aiohttp.ClientWebSocketResponse, data: str | bytes) -> None:
        try:
            frame = parse(data)
        except InvalidFrame:
            mtype, uid, _, _ = peek(data)
            pending = self.pending.pop(uid, None) if uid is not None else None
            if pending is not None:
                if pending.timer is not None:
                    pending.timer.cancel()
                self._record(
                    Direction.TO_CP, data, pending.step.answer_seq, pending.step.action, head=(mtype, uid)
                )
                self._resolve(
                    pending.step, data if isinstance(data, str) else data.decode("utf-8", "replace")
                )
            else:
                self._record(Direction.TO_CP, data, None, None, head=(mtype, uid))
            return
        head = (int(frame.message_type), frame.unique_id)
        if isinstance(frame, Call):
            await self._backend_call(ws, data, frame)
            return
        pending = self.pending.pop(frame.unique_id, None)
        if pending is None:
            self._record(Direction.TO_CP, data, None, None, head=head)
            log.debug("session %d: answer to no pending call ignored", self.plan.session_id)
            return
        if pending.timer is not None:
            pending.timer.cancel()
        self._record(Direction.TO_CP, data, pending.step.answer_seq, pending.step.action, head=head)
        self._resolve(pending.step, frame)

    async def _backend_call(self, ws: aiohttp.ClientWebSocketResponse, data: str | bytes, call: Call) -> None:
        action = call.action
        head = (int(call.message_type), call.unique_id)
        queue = self.unconsumed.get(action)
        self.compared[action] += 1
        schema = (
            schema_changes(self.plan.version, action, call.payload, response=False)
            if self.ctx.check_schema
            else []
        )
        if not queue:
            self._record(Direction.TO_CP, data, None, action, head=head)
            self._diff(Change(DiffKind.UNEXPECTED_CALL, "", None, call.payload), None, action)
            for change in schema:
                self._diff(change, None, action)
            error = CallError(
                call.unique_id, "GenericError", "ocpp-replay: the recording has no such call to answer", {}
            )
            await self._send_reply(ws, error, None, action)
            return
        bc = queue.popleft()
        self._record(Direction.TO_CP, data, bc.seq, action, head=head)
        self.correlator.learn(action, Message.REQUEST, bc.call.payload, call.payload)
        expected = self.correlator.apply(action, Message.REQUEST, bc.call.payload)
        rules = self.ctx.rules.for_message(self.plan.version, action, Message.REQUEST, self.correlator)
        for change in compare_payloads(expected, call.payload, rules):
            self._diff(change, bc.seq, action)
        for change in schema:
            self._diff(change, bc.seq, action)
        reply: CallResult | CallError | str | None = None
        answer = bc.answer
        if isinstance(answer, CallResult):
            payload = self.correlator.apply(action, Message.RESPONSE, answer.payload)
            if not self.ctx.keep_timestamps:
                payload = shift_timestamps(payload, self.wall_anchor - self.plan.recorded_start)
            reply = CallResult(call.unique_id, payload)
        elif isinstance(answer, CallError):
            reply = CallError(
                call.unique_id, answer.error_code, answer.error_description, answer.error_details
            )
        elif isinstance(answer, str):
            reply = answer  # the charger's answer was not OCPP-J: send it as recorded
        if reply is not None:
            await self._send_reply(ws, reply, bc.answer_seq, action)
        self._settle(bc.seq)
        self.remaining_backend -= 1
        if self.remaining_backend == 0:
            self.backend_done.set()

    async def _send_reply(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        reply: CallResult | CallError | str,
        recorded_seq: int | None,
        action: str | None,
    ) -> None:
        """Send the answer to a backend call: a frame we built, or recorded text as it was."""
        if isinstance(reply, str):
            text, head = reply, None
        else:
            text, head = dump(reply), (int(reply.message_type), reply.unique_id)
        try:
            await ws.send_str(text)
        except (ConnectionError, aiohttp.ClientError, RuntimeError):
            return
        self._record(Direction.TO_CSMS, text, recorded_seq, action, head=head)
        self.ctx.counters.frames_sent += 1


# ----------------------------------------------------------------------------- the run


def session_url(
    target: str, charge_point_id: str, query: str | None = None, suffix: str | None = None
) -> str:
    """The URL a session connects to: the recorded path suffix (as the charger dialled it) or,
    for captures that lack one, the quoted charge point id, appended to the target's path.

    A query string of the target (``ws://csms/ocpp?tenant=3``) stays a query, followed by the
    recorded one exactly as recorded; it never swallows the charge point id.
    """
    parts = urlsplit(target)
    tail = suffix if suffix is not None else f"/{quote(charge_point_id, safe='')}"
    path = parts.path.rstrip("/") + tail
    queries = [q for q in (parts.query, query) if q]
    joined = "&".join(queries) if queries else query
    return f"{parts.scheme}://{parts.netloc}{path}" + (f"?{joined}" if joined is not None else "")


_gc_users = 0
_gc_saved: tuple[int, int, int] | None = None


@contextlib.contextmanager
def _no_full_gc() -> Any:
    """Keep full (generation 2) garbage collections off the schedule while replays run.

    With a thousand sessions the heap holds a few hundred thousand containers (the loaded
    capture, the connections) and one full collection stops the loop for ~100 ms. Objects that
    exist when the run starts are frozen (never scanned again) and full collections are
    postponed until the last concurrent run ends; young collections go on as usual, and
    refcounting frees almost all garbage anyway. Thresholds are restored afterwards.
    """
    global _gc_users, _gc_saved
    if _gc_users == 0:
        _gc_saved = gc.get_threshold()
        gc.collect()
        gc.freeze()
        gc.set_threshold(_gc_saved[0], _gc_saved[1], 1_000_000_000)
    _gc_users += 1
    try:
        yield
    finally:
        _gc_users -= 1
        if _gc_users == 0 and _gc_saved is not None:
            gc.set_threshold(*_gc_saved)
            gc.unfreeze()


async def _until_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event | None) -> bool:
    """Run ``work`` to its end (True), or cancel it once ``stop`` is set (False)."""
    task = asyncio.create_task(work)
    if stop is None:
        await task
        return True
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait((task, stopped), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        stopped.cancel()
    if task.done():
        task.result()  # its errors, if any
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if isinstance(exc, OcppReplayError):
            return exc
    return group.exceptions[0]


async def run_replay(
    store: Store,
    target: str,
    *,
    selection: Selection = Selection(),
    speed: float = 1.0,
    max_gap: float | None = None,
    rules: RuleSet | None = None,
    keep_timestamps: bool = False,
    auth: Mapping[str, str] | None = None,
    progress: ProgressCallback | None = None,
    answer_timeout: float = 10.0,
    grace: float = 5.0,
    connect_timeout: float = 10.0,
    start_delay: float = 0.05,
    quiet_gc: bool = True,
    sessions: Sequence[tuple[SessionInfo, Sequence[FrameRecord]]] | None = None,
    check_schema: bool = True,
    stop: asyncio.Event | None = None,
    rewrite: Rewriter | None = None,
) -> RunResult:
    """Replay the selected sessions of ``store`` against ``target`` and compare the answers.

    ``rewrite`` changes the charger's frames before they are sent (core/rewrite.py); the run's
    ``options["rewritten"]`` lists each changed frame, recorded text beside rewritten.

    When ``stop`` is set (the CLI sets it on Ctrl-C), the sessions in progress are closed and
    the run ends with the sessions finished so far, marked ``interrupted``.

    ``sessions`` may be given pre-loaded (then ``store`` and ``selection`` are not read).
    ``check_schema`` validates every answer and CALL of the backend against the official OCPP
    schema (a violation is a ``schema`` difference).
    ``quiet_gc`` postpones full garbage collections until the run ends (see ``_no_full_gc``).
    The run is not stored: pass the result to :func:`store_run`.
    """
    rules = rules or RuleSet.default()
    if not speed > 0:
        raise ReplayError(f"speed must be positive, not {speed}")
    if answer_timeout <= 0 or grace < 0:
        raise ReplayError("answer timeout must be positive and grace not negative")
    target = target.rstrip("/")
    if sessions is None:
        sessions = await asyncio.to_thread(load_sessions, store, selection)
    plans, rewritten = rewrite_plans(
        plan_sessions(sessions, speed=speed, max_gap=max_gap, rules=rules), rewrite
    )
    await probe(target, connect_timeout)
    by_cp: dict[str, list[SessionPlan]] = {}
    for plan in plans:
        by_cp.setdefault(plan.charge_point_id, []).append(plan)
    options: dict[str, Any] = {
        "speed": speed,
        "max_gap": max_gap,
        "keep_timestamps": keep_timestamps,
        "answer_timeout": answer_timeout,
        "grace": grace,
        "selection": {
            "session_ids": list(selection.session_ids),
            "charge_points": list(selection.charge_points),
            "since": selection.since,
            "until": selection.until,
        },
        "auth": sorted(auth) if auth else [],
        "check_schema": check_schema,
        **({"rewritten": rewritten} if rewritten else {}),
    }
    loop = asyncio.get_running_loop()
    started_at = utc_iso(time.time())
    log.info("replay of %d sessions (%d charge points) against %s", len(plans), len(by_cp), target)
    results: dict[int, SessionResult] = {}
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout),
        skip_auto_headers=("User-Agent",),
    ) as http:
        ctx = _Context(
            http=http,
            target=target,
            rules=rules,
            keep_timestamps=keep_timestamps,
            auth=dict(auth or {}),
            answer_timeout=answer_timeout,
            grace=grace,
            connect_timeout=connect_timeout,
            progress=progress,
            counters=_Counters(len(plans)),
            check_schema=check_schema,
        )
        gc_guard = _no_full_gc() if quiet_gc else contextlib.nullcontext()
        gc_guard.__enter__()  # before the clock starts: entering it runs one full collection
        run_start = loop.time() + start_delay

        async def charger(cp_plans: list[SessionPlan]) -> None:
            for plan in cp_plans:  # reconnects of one charger: in order, never overlapping
                anchor = max(run_start + plan.start, loop.time())
                delay = anchor - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                results[plan.session_id] = await _SessionRun(plan, ctx, anchor).run()

        async def every_charger() -> None:
            async with asyncio.TaskGroup() as tg:
                for cp, cp_plans in by_cp.items():
                    tg.create_task(charger(cp_plans), name=f"replay-{cp}")

        try:
            if not await _until_stopped(every_charger(), stop):
                options["interrupted"] = {"finished": len(results), "planned": len(plans)}
                log.info("replay interrupted: %d of %d sessions finished", len(results), len(plans))
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        finally:
            gc_guard.__exit__(None, None, None)
    ordered = tuple(results[p.session_id] for p in plans if p.session_id in results)
    return RunResult(
        target=target,
        started_at=started_at,
        ended_at=utc_iso(time.time()),
        sessions=ordered,
        options=options,
    )


# ----------------------------------------------------------------------------- compare

SideProgress = Callable[[str, Progress], None]


async def run_compare(
    store: Store,
    baseline: str,
    candidate: str,
    *,
    selection: Selection = Selection(),
    noise_runs: int = 1,
    rules: RuleSet | None = None,
    sequential: bool | None = None,
    progress: SideProgress | None = None,
    **options: Any,
) -> RunResult:
    """Replay the selected sessions against BASELINE and CANDIDATE and compare their answers.

    The two replays run concurrently, each with its own correlation state (two
    :func:`run_replay` calls), unless ``sequential`` (default: when both URLs are the same
    backend, whose connections per charge point would replace each other). Then ``noise_runs``
    more replays against the baseline, one after the other, to learn noise. ``options`` are
    passed to :func:`run_replay` (speed, max_gap, keep_timestamps, auth, answer_timeout, ...);
    ``progress`` gets ``(side, Progress)``, side being baseline, candidate or noise N.
    A ``stop`` event in ``options`` ends both replays (see :func:`run_replay`); the run then
    compares the sessions both sides finished, learns no noise and is marked ``interrupted``.
    The result (:func:`ocpp_replay.core.compare.compare_result`) is not stored: see :func:`store_run`.
    """
    rules = rules or RuleSet.default()
    if noise_runs < 0:
        raise ReplayError(f"noise runs must not be negative, not {noise_runs}")
    baseline, candidate = baseline.rstrip("/"), candidate.rstrip("/")
    if sequential is None:
        sequential = baseline == candidate
    sessions = await asyncio.to_thread(load_sessions, store, selection)

    def replay_on(url: str, side: str) -> Any:
        report: ProgressCallback | None = None
        if progress is not None:
            sink = progress

            def report(p: Progress) -> None:
                sink(side, p)

        return run_replay(
            store, url, selection=selection, rules=rules, sessions=sessions, progress=report, **options
        )

    log.info("compare of %d sessions: baseline %s, candidate %s", len(sessions), baseline, candidate)
    if sequential:
        base = await replay_on(baseline, "baseline")
        cand = await replay_on(candidate, "candidate")
    else:
        try:
            async with asyncio.TaskGroup() as tg:
                base_task = tg.create_task(replay_on(baseline, "baseline"), name="compare-baseline")
                cand_task = tg.create_task(replay_on(candidate, "candidate"), name="compare-candidate")
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        base, cand = base_task.result(), cand_task.result()
    stop: asyncio.Event | None = options.get("stop")
    again = []
    for i in range(noise_runs):
        if stop is not None and stop.is_set():
            break
        again.append(await replay_on(baseline, f"noise {i + 1}"))
    opts = {**base.options, "baseline": baseline, "candidate": candidate, "noise_runs": noise_runs}
    result = compare_result(base, cand, rules, again=again, options=opts)
    if stop is not None and stop.is_set():  # counted over both sides, not the baseline's alone
        stopped = {"finished": len(result.sessions), "planned": len(sessions)}
        result = replace(result, options={**result.options, "interrupted": stopped})
    return result


# ----------------------------------------------------------------------------- storing
