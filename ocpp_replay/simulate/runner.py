"""Run virtual chargers against a CSMS: the thin I/O loop around charger.Charger.

One aiohttp ClientSession for the whole fleet; per charger a driver task (the scenario, timers,
its own CALLs one at a time) and a reader task (answers, backend CALLs). Waits run on a virtual
clock: ``time_scale`` real seconds pass per virtual second, so a one-hour session takes 3.6 s at
``time_scale=0.001`` while timestamps and intervals stay realistic.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import quote

import aiohttp

from ocpp_replay.capture.reach import probe, ws_address
from ocpp_replay.core import schemas
from ocpp_replay.core.frames import Call, CallError, CallResult, dump, parse
from ocpp_replay.csms.config import DEFAULT_ID_TAGS
from ocpp_replay.errors import ConfigError, InvalidFrame, UpstreamError
from ocpp_replay.simulate import scenario as scenarios
from ocpp_replay.simulate.alfen import Identity, identity
from ocpp_replay.simulate.charger import Charger, Out, Reaction, status_of
from ocpp_replay.simulate.scenario import Scenario, Step

__all__ = ["OFFERS", "ChargerResult", "FleetResult", "Problem", "run_fleet"]

log = logging.getLogger(__name__)

#: The subprotocols a charger of a version offers, in its order of preference: a 2.1 charger
#: also offers 2.0.1 and speaks it when the backend picks it, as a dual-stack charger does.
OFFERS: Final = {"1.6": ("ocpp1.6",), "2.0.1": ("ocpp2.0.1",), "2.1": ("ocpp2.1", "ocpp2.0.1")}
_OK_STATUSES: Final = frozenset({"Accepted", "Pending"})
_REBOOT_SECONDS: Final = 30.0


@dataclass(frozen=True, slots=True)
class Problem:
    """Something a charger saw that a user should look at.

    kind: ``callerror`` (the backend answered with a CALLERROR), ``rejected`` (an answer with a
    Rejected/Invalid/Blocked... status), ``schema`` (a backend frame breaks the OCPP schema),
    ``sent-schema`` (one of our own frames does: a simulator bug), ``expectation`` (a scenario
    expectation failed), ``connection``, ``timeout``, ``crash``.
    """

    charger_id: str
    kind: str
    action: str
    detail: str

    def __str__(self) -> str:
        return f"{self.charger_id} {self.kind} {self.action}: {self.detail}"


@dataclass(slots=True)
class ChargerResult:
    """What one charger did. ``version`` is the one it was built for; ``spoken`` the versions it
    spoke, by the subprotocol the backend picked on each connection (2.0.1 for a 2.1 charger on
    a backend without 2.1)."""

    charger_id: str
    version: str
    scenario: str
    identity: Identity
    spoken: Counter[str] = field(default_factory=Counter)
    sent: Counter[str] = field(default_factory=Counter)
    received: Counter[str] = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    connections: int = 0
    boots: int = 0
    transactions: int = 0
    delivered_offline: int = 0
    undelivered: int = 0


async def _report_progress(
    runners: list[_Runner],
    tasks: list[asyncio.Task[ChargerResult]],
    progress: Callable[[FleetProgress], None],
) -> None:
    while not all(t.done() for t in tasks):
        progress(FleetProgress.of(runners))
        await asyncio.sleep(0.25)
    progress(FleetProgress.of(runners))


#: Problem kinds that fail a run (``simulate`` exits 1); the others are the backend's answers.
_RUN_FAILURES = frozenset({"expectation", "connection", "timeout", "crash", "sent-schema"})


@dataclass(slots=True)
class FleetResult:
    """The whole fleet's run. ``version`` is what was asked for: one version or several, comma
    separated (a mixed fleet: charger i gets the i-th modulo their number)."""

    target: str
    version: str
    scenario: str
    cycles: int
    seconds: float
    chargers: list[ChargerResult]

    @property
    def problems(self) -> list[Problem]:
        return [p for c in self.chargers for p in c.problems]

    @property
    def failed_expectations(self) -> list[Problem]:
        return [p for p in self.problems if p.kind == "expectation"]

    @property
    def broken(self) -> list[Problem]:
        """Problems that kept chargers from playing their scenario: an expectation that failed,
        a connection lost for good, an answer that never came, a crash."""
        return [p for p in self.problems if p.kind in _RUN_FAILURES]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def sent(self) -> Counter[str]:
        return sum((c.sent for c in self.chargers), Counter())

    @property
    def received(self) -> Counter[str]:
        return sum((c.received for c in self.chargers), Counter())

    def problem_counts(self) -> Counter[str]:
        return Counter(p.kind for p in self.problems)

    @property
    def versions(self) -> Counter[str]:
        """Chargers per version they were built for."""
        return Counter(c.version for c in self.chargers)

    @property
    def fallbacks(self) -> Counter[str]:
        """Connections on which a charger spoke an older version than its own, by 'own -> spoken'."""
        out: Counter[str] = Counter()
        for c in self.chargers:
            for spoken, n in c.spoken.items():
                if spoken != c.version:
                    out[f"{c.version} -> {spoken}"] += n
        return out


@dataclass(frozen=True, slots=True)
class FleetProgress:
    """The fleet as it runs, for a live display: chargers online now, and counts so far."""

    chargers: int
    online: int
    transactions: int
    calls: int
    backend_commands: int
    problems: int

    @classmethod
    def of(cls, runners: list[_Runner]) -> FleetProgress:
        results = [r.result for r in runners]
        return cls(
            chargers=len(runners),
            online=sum(r.online for r in runners),
            transactions=sum(c.transactions for c in results),
            calls=sum(c.sent.total() for c in results),
            backend_commands=sum(c.received.total() for c in results),
            problems=sum(len(c.problems) for c in results),
        )


class _Clock:
    """Virtual time: ORIGIN at start, advancing 1/time_scale times faster than the loop clock."""

    def __init__(self, origin: datetime, time_scale: float) -> None:
        self.origin = origin
        self.scale = time_scale
        self.start = asyncio.get_running_loop().time()

    def real_at(self, moment: datetime) -> float:
        return self.start + (moment - self.origin).total_seconds() * self.scale

    def virtual_now(self) -> datetime | None:
        if self.scale <= 0:
            return None
        elapsed = (asyncio.get_running_loop().time() - self.start) / self.scale
        return self.origin + timedelta(seconds=elapsed)


@dataclass(frozen=True, slots=True)
class _Fleet:
    target: str
    session: aiohttp.ClientSession
    clock: _Clock
    password: str | None
    answer_timeout: float
    connect_timeout: float
    cycles: int
    on_call: CallHook | None = None


#: Called after each CALL of a charger: (action, seconds to the answer, CALLERROR code or
#: "timeout", or None for a CALLRESULT). The distributed runner feeds Locust's statistics with it.
CallHook = Callable[[str, float, str | None], None]


class _Abort(Exception):
    """The charger cannot go on (no connection)."""


def _get_path(payload: Any, path: str) -> Any:
    current = payload
    for part in path.replace("[", ".[").split("."):
        if not part:
            continue
        if part.startswith("["):
            index = int(part[1:-1])
            if not isinstance(current, list) or index >= len(current):
                return _MISSING
            current = current[index]
        else:
            if not isinstance(current, dict) or part not in current:
                return _MISSING
            current = current[part]
    return current


_MISSING: Final = object()


def _describe(violations: list[schemas.Violation]) -> str:
    text = "; ".join(str(v) if len(str(v)) < 160 else str(v)[:157] + "..." for v in violations[:3])
    return text + (f" (+{len(violations) - 3} more)" if len(violations) > 3 else "")


class _Runner:
    def __init__(
        self, fleet: _Fleet, index: int, charger_id: str, scenario: Scenario, seed: int, version: str
    ) -> None:
        self.fleet = fleet
        self.version = version
        self.index = index
        self.charger_id = charger_id
        self.scenario = scenario
        self.rng = random.Random(f"{seed}:{index}")
        ident = identity(charger_id, self.rng, connectors=scenario.connectors)
        self.now = fleet.clock.origin
        self.machine = Charger(ident, version, self.rng, start=self.now)
        self.result = ChargerResult(charger_id, version, scenario.name, ident)
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.reader: asyncio.Task[None] | None = None
        self.pending: dict[str, asyncio.Future[CallResult | CallError]] = {}
        self.events: asyncio.Queue[Reaction] = asyncio.Queue()
        self.wakeup = asyncio.Event()
        self.calls_seen: list[str] = []
        self.call_cursor = 0
        self.forced_offline = False
        self.expected_status: str | None = None
        self.horizon: datetime | None = None
        self.msg_ids = itertools.count(1)

    # -- bookkeeping ------------------------------------------------------------------------

    def problem(self, kind: str, action: str, detail: str) -> None:
        self.result.problems.append(Problem(self.charger_id, kind, action, detail))

    @property
    def online(self) -> bool:
        return self.ws is not None and not self.ws.closed

    def event_time(self) -> datetime:
        """The virtual time of something that happened now (a backend CALL)."""
        current = self.fleet.clock.virtual_now()
        if current is None or current <= self.now:
            return self.now
        if self.horizon is not None and current > self.horizon:
            return max(self.now, self.horizon)
        return current

    # -- connection -------------------------------------------------------------------------

    async def connect(self, *, attempts: int = 5) -> None:
        url = f"{self.fleet.target.rstrip('/')}/{quote(self.charger_id, safe='')}"
        headers = {}
        if self.fleet.password is not None:
            headers["Authorization"] = aiohttp.encode_basic_auth(self.charger_id, self.fleet.password)
        offered = OFFERS[self.version]
        last: BaseException | None = None
        for attempt in range(attempts):
            try:
                async with asyncio.timeout(self.fleet.connect_timeout):
                    ws = await self.fleet.session.ws_connect(
                        url,
                        protocols=offered,
                        headers=headers,
                        autoping=True,
                        heartbeat=None,
                        max_msg_size=0,
                    )
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                last = exc
                await self.sleep_virtual(10.0 * (attempt + 1))
                continue
            if ws.protocol in offered:
                self.machine.speak(schemas.normalize_version(ws.protocol))
            else:
                shown = " or ".join(offered)
                self.problem(
                    "connection", "connect", f"backend chose subprotocol {ws.protocol!r}, not {shown}"
                )
            self.result.spoken[self.machine.version] += 1
            self.ws = ws
            self.msg_ids = itertools.count(1)  # Alfen restarts its message ids on every connection
            self.result.connections += 1
            self.machine.connected()
            self.reader = asyncio.create_task(self.read(ws), name=f"sim-reader-{self.charger_id}")
            return
        detail = f"cannot connect to {url}: {type(last).__name__}: {last}"
        self.problem("connection", "connect", detail)
        raise _Abort(detail)

    async def disconnect(self) -> None:
        ws, self.ws = self.ws, None
        self.machine.connection_lost()
        if ws is not None:
            await ws.close()
        if self.reader is not None:
            await self.reader
            self.reader = None

    async def ensure_online(self) -> None:
        if self.online or self.forced_offline:
            return
        if self.ws is not None or self.reader is not None:
            await self.disconnect()
        await self.sleep_virtual(self.rng.uniform(5.0, 30.0))
        await self.connect()
        await self.deliver(self.machine.restored(self.now))

    async def deliver(self, outs: list[Out]) -> None:
        queued = sum(1 for o in outs if o.queueable)
        await self.send_all(outs)
        self.result.delivered_offline += queued

    async def read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    await self.receive(ws, msg.data)
        finally:
            self.machine.connection_lost()
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(ConnectionResetError("connection closed"))
            self.pending.clear()
            self.wakeup.set()

    async def receive(self, ws: aiohttp.ClientWebSocketResponse, data: str | bytes) -> None:
        try:
            frame = parse(data)
        except InvalidFrame as exc:
            self.problem("schema", "-", f"frame is not OCPP-J: {exc.reason}")
            return
        if isinstance(frame, CallResult | CallError):
            future = self.pending.pop(frame.unique_id, None)
            if future is None:
                self.problem("schema", "-", f"answer to unknown message id {frame.unique_id!r}")
            elif not future.done():
                future.set_result(frame)
            return
        self.result.received[frame.action] += 1
        self.calls_seen.append(frame.action)
        self.wakeup.set()
        reply, reaction, violations = self.machine.answer_call(frame.action, frame.payload, self.event_time())
        if violations:
            self.problem("schema", frame.action, _describe(violations))
        answer: CallResult | CallError
        if isinstance(reply, tuple):
            answer = CallError(frame.unique_id, reply[0], reply[1], {})
        else:
            answer = CallResult(frame.unique_id, reply)
            self._check_sent(frame.action, reply, response=True)
        try:
            await ws.send_str(dump(answer))
        except ConnectionError:
            return
        if reaction.outs or reaction.reboot:
            self.events.put_nowait(reaction)
            self.wakeup.set()

    # -- sending ----------------------------------------------------------------------------

    def _check_sent(self, action: str, payload: dict[str, Any], *, response: bool) -> None:
        violations = schemas.validate(self.machine.version, action, payload, response=response)
        if violations:
            self.problem("sent-schema", action, _describe(violations))

    def _check_answer(self, out: Out, answer: CallResult | CallError) -> None:
        if isinstance(answer, CallError):
            self.problem("callerror", out.action, f"{answer.error_code}: {answer.error_description}")
            return
        violations = schemas.validate(self.machine.version, out.action, answer.payload, response=True)
        if violations:
            self.problem("schema", out.action, _describe(violations))
        status = status_of(answer.payload)
        if status is not None and status not in _OK_STATUSES and status != self.expected_status:
            self.problem("rejected", out.action, status)

    async def send_all(self, outs: list[Out]) -> tuple[Out, CallResult | CallError] | None:
        """Send OUTS and their follow-ups in order, one CALL at a time. Returns the first primary answer."""
        work = deque(outs)
        first: tuple[Out, CallResult | CallError] | None = None
        loop = asyncio.get_running_loop()
        while work:
            out = work.popleft()
            ws = self.ws
            if ws is None or ws.closed:
                self.machine.offline_out(out)
                continue
            payload = self.machine.finalize(out)
            if payload is None:
                continue
            uid = str(next(self.msg_ids))
            self._check_sent(out.action, payload, response=False)
            future: asyncio.Future[CallResult | CallError] = loop.create_future()
            self.pending[uid] = future
            sent_at = loop.time()
            try:
                await ws.send_str(dump(Call(uid, out.action, payload)))
                async with asyncio.timeout(self.fleet.answer_timeout):
                    answer = await future
            except TimeoutError:
                self.pending.pop(uid, None)
                self.problem("timeout", out.action, f"no answer in {self.fleet.answer_timeout:.0f} s")
                if self.fleet.on_call is not None:
                    self.fleet.on_call(out.action, loop.time() - sent_at, "timeout")
                continue
            except ConnectionError:
                self.pending.pop(uid, None)
                self.machine.connection_lost()
                self.machine.requeue_front([out, *work])
                return first
            self.result.sent[out.action] += 1
            if self.fleet.on_call is not None:
                code = answer.error_code if isinstance(answer, CallError) else None
                self.fleet.on_call(out.action, loop.time() - sent_at, code)
            if out.action == "BootNotification":
                self.result.boots += 1
            self._check_answer(out, answer)
            if first is None and out.primary:
                first = (out, answer)
            reply = answer.payload if isinstance(answer, CallResult) else None
            follow = self.machine.on_answer(out, reply, self.now)
            work.extendleft(reversed(follow))
        return first

    # -- time -------------------------------------------------------------------------------

    async def sleep_virtual(self, seconds: float) -> None:
        """Let virtual time pass without handling anything (offline, rebooting)."""
        self.now += timedelta(seconds=seconds)
        delay = self.fleet.clock.real_at(self.now) - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def pump(self) -> None:
        while not self.events.empty():
            reaction = self.events.get_nowait()
            self.now = self.event_time()
            if reaction.outs:
                await self.send_all(reaction.outs)
            if reaction.reboot:
                await self.reboot(reaction.reboot)

    async def wait(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        """Let SECONDS of virtual time pass, firing timers and handling backend commands."""
        end = self.now + timedelta(seconds=seconds)
        loop = asyncio.get_running_loop()
        while True:
            await self.ensure_online()
            await self.pump()
            if until is not None and until():
                return
            due = self.machine.next_due()
            target = min(end, due) if due is not None else end
            self.horizon = target
            delay = self.fleet.clock.real_at(target) - loop.time()
            woken = False
            if delay > 0 and self.events.empty():
                self.wakeup.clear()
                try:
                    async with asyncio.timeout(delay):
                        await self.wakeup.wait()
                    woken = True
                except TimeoutError:
                    pass
            if woken or not self.events.empty():
                self.now = self.event_time()
                continue
            self.now = max(self.now, target)
            if due is not None and due <= target:
                await self.send_all(self.machine.fire_due(self.now))
            if target >= end:
                self.horizon = None
                await self.pump()
                return

    # -- lifecycle --------------------------------------------------------------------------

    async def boot(self) -> None:
        for _ in range(5):
            await self.send_all(self.machine.boot(self.now))
            if self.machine.booted:
                return
            if not self.online:
                await self.ensure_online()
                continue
            await self.wait(max(self.machine.heartbeat_interval, 10.0))
        self.problem("expectation", "BootNotification", "not accepted after 5 attempts")

    async def reboot(self, kind: str) -> None:
        await self.send_all(self.machine.power_cycle(self.now, kind))
        await self.disconnect()
        self.machine.rebooted()
        await self.sleep_virtual(_REBOOT_SECONDS)
        if not self.forced_offline:
            await self.connect()
            await self.boot()
            await self.deliver(self.machine.restored(self.now))

    async def run(self, start_delay: float) -> ChargerResult:
        try:
            await self.sleep_virtual(start_delay)
            await self.connect()
            await self.boot()
            steps: list[tuple[Step, int]] = [(s, 0) for s in self.scenario.setup]
            for cycle in range(self.fleet.cycles):
                steps.extend((s, cycle) for s in self.scenario.cycle)
            steps.extend((s, self.fleet.cycles) for s in self.scenario.teardown)
            for step, cycle in steps:
                if step.version is None or step.version == self.version:
                    await self.step(step, cycle)
            await self.pump()
        except _Abort:
            pass
        except Exception as exc:  # a bug in the simulator must not take the fleet down
            log.exception("virtual charger %s crashed", self.charger_id)
            self.problem("crash", "-", f"{type(exc).__name__}: {exc}")
        finally:
            self.result.transactions = len(self.machine.transactions)
            self.result.undelivered = len(self.machine.queue)
            await self.disconnect()
        return self.result

    # -- steps ------------------------------------------------------------------------------

    def card(self, cycle: int) -> str:
        return DEFAULT_ID_TAGS[(self.index + cycle) % len(DEFAULT_ID_TAGS)]

    async def step(self, step: Step, cycle: int) -> None:
        await self.ensure_online()
        await self.pump()
        self.expected_status = step.expect_status
        try:
            first = await self._do(step, cycle)
        finally:
            self.expected_status = None
        if step.has_expectation:
            self.check_expectation(step, first)

    async def _do(self, step: Step, cycle: int) -> tuple[Out, CallResult | CallError] | None:
        m, p, now = self.machine, step.params, self.now
        connector = int(p.get("connector", 1))
        c = m.connectors.get(connector)
        match step.do:
            case "wait":
                await self.wait(step.duration(self.rng))
            case "plug":
                return await self.send_all(m.plug(connector, now))
            case "authorize":
                return await self.send_all(
                    m.authorize(connector, str(p.get("id_tag", self.card(cycle))), now)
                )
            case "start":
                tag = p.get("id_tag")
                if tag is None and c is not None:
                    tag = c.authorized or (None if c.auth_rejected else self.card(cycle))
                return await self.send_all(m.start(connector, tag, now))
            case "charge":
                if c is not None and c.tx is not None:
                    if "car_max_a" in p:
                        c.meter.car_max_a = float(p["car_max_a"])
                    await self.send_all(m.suspend(connector, now, suspended=False))
                    await self.wait(step.duration(self.rng, 1800.0), until=lambda: c.tx is None)
            case "suspend":
                if c is not None and c.tx is not None:
                    await self.send_all(m.suspend(connector, now))
                    await self.wait(step.duration(self.rng), until=lambda: c.tx is None)
            case "stop":
                return await self.send_all(m.stop(connector, str(p.get("reason", "Local")), now))
            case "unplug":
                return await self.send_all(m.unplug(connector, now))
            case "fault":
                code, info = str(p.get("vendor_error_code", "210")), str(p.get("info", "Error"))
                await self.send_all(m.fault(connector, code, info, now))
                await self.wait(step.duration(self.rng, 120.0))
                await self.send_all(m.recover(connector, self.now))
            case "heartbeat":
                return await self.send_all(m.heartbeat(now))
            case "data-transfer":
                message_id, data = p.get("message_id"), p.get("data")
                outs = m.data_transfer(
                    str(p.get("vendor_id", "Alfen BV")),
                    None if message_id is None else str(message_id),
                    None if data is None else str(data),
                )
                return await self.send_all(outs)
            case "send":
                return await self.send_all([Out(str(p["action"]), dict(p.get("payload", {})))])
            case "offline":
                self.forced_offline = True
                await self.disconnect()
            case "online":
                self.forced_offline = False
                if not self.online:
                    await self.connect()
                    await self.deliver(self.machine.restored(self.now))
            case "reboot":
                await self.reboot("Hard")
            case "await-call":
                await self.await_call(step, str(p["action"]))
        return None

    async def await_call(self, step: Step, action: str) -> None:
        def seen() -> bool:
            return action in self.calls_seen[self.call_cursor :]

        await self.wait(step.duration(self.rng, 600.0), until=seen)
        if seen():
            self.call_cursor += self.calls_seen[self.call_cursor :].index(action) + 1
        else:
            self.problem("expectation", action, f"{step.where}: the backend did not send {action}")

    def check_expectation(self, step: Step, first: tuple[Out, CallResult | CallError] | None) -> None:
        if step.do == "await-call":
            return
        if first is None:
            self.problem("expectation", step.do, f"{step.where}: the step sent no message to check")
            return
        out, answer = first
        fail: list[str] = []
        if isinstance(answer, CallError):
            if step.expect_error is None:
                fail.append(f"got CALLERROR {answer.error_code}")
            elif answer.error_code != step.expect_error:
                fail.append(f"expected CALLERROR {step.expect_error}, got {answer.error_code}")
        else:
            if step.expect_error is not None:
                fail.append(f"expected CALLERROR {step.expect_error}, got a CALLRESULT")
            status = status_of(answer.payload)
            if step.expect_status is not None and status != step.expect_status:
                fail.append(f"expected status {step.expect_status}, got {status}")
            for path, want in step.expect.items():
                got = _get_path(answer.payload, path)
                if got != want:
                    shown = "nothing" if got is _MISSING else repr(got)
                    fail.append(f"expected {path} = {want!r}, got {shown}")
        if fail:
            self.problem("expectation", out.action, f"{step.where}: {'; '.join(fail)}")


async def run_fleet(
    target: str,
    *,
    chargers: int = 1,
    id_prefix: str = "ALF-",
    version: str = "1.6",
    scenario: str = "session",
    cycles: int = 1,
    seed: int = 0,
    time_scale: float = 1.0,
    password: str | None = None,
    start_time: datetime | None = None,
    ramp_up: float | None = None,
    answer_timeout: float = 30.0,
    connect_timeout: float = 10.0,
    progress: Callable[[FleetProgress], None] | None = None,
    on_call: CallHook | None = None,
) -> FleetResult:
    """Run CHARGERS virtual Alfen chargers against TARGET (ws://host:port/path) concurrently.

    ``version`` is 1.6, 2.0.1 or 2.1, or several comma separated ("1.6,2.0.1,2.1"): charger i
    gets the i-th version modulo their number.

    ``scenario`` is a built-in name (session, reconnect, commands, faulty, fleet-day) or a TOML
    file. ``time_scale`` is real seconds per virtual second (1.0: real time; 0.001: an hour in
    3.6 s). ``start_time`` is the virtual clock's origin (default now); ``ramp_up`` the virtual
    seconds over which chargers connect (default 0.25 s per charger, at most 120 s).
    ``progress`` gets a :class:`FleetProgress` four times a second while the fleet runs;
    ``on_call`` (:data:`CallHook`) each CALL's action, round trip and error as it is answered.
    Raises ConfigError for bad options and UpstreamError if no charger could connect.
    """
    versions = [schemas.normalize_version(v) for v in version.split(",") if v.strip()]
    if not versions:
        raise ConfigError("version must name at least one OCPP version (1.6, 2.0.1, 2.1)")
    if chargers < 1:
        raise ConfigError("chargers must be at least 1")
    if cycles < 0:
        raise ConfigError("cycles must not be negative")
    if time_scale < 0:
        raise ConfigError("time_scale must not be negative")
    ws_address(target)  # a ConfigError for anything but a ws:// or wss:// URL
    custom = scenarios.resolve(scenario)
    # One TCP connection first: without it, chargers retry as real ones do (10, 20, ... virtual
    # seconds), minutes of silence in real time before the error. No websocket, so the CSMS
    # (or a capturing proxy) sees no charger.
    await probe(target, connect_timeout)
    origin = (start_time or datetime.now(UTC)).astimezone(UTC)
    spread = ramp_up if ramp_up is not None else min(0.25 * chargers, 120.0)
    width = max(4, len(str(chargers)))
    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        fleet = _Fleet(
            target,
            session,
            _Clock(origin, time_scale),
            password,
            answer_timeout,
            connect_timeout,
            cycles,
            on_call,
        )
        runners = []
        for i in range(chargers):
            chosen = custom if custom is not None else scenarios.builtin(scenario, i)
            charger_id = f"{id_prefix}{i + 1:0{width}d}"
            runners.append(_Runner(fleet, i, charger_id, chosen, seed, versions[i % len(versions)]))
        delays = [random.Random(f"{seed}:ramp:{i}").uniform(0.0, spread) for i in range(chargers)]
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(r.run(d), name=f"sim-{r.charger_id}")
                for r, d in zip(runners, delays, strict=True)
            ]
            if progress is not None:
                group.create_task(_report_progress(runners, tasks, progress), name="sim-progress")
    results = [t.result() for t in tasks]
    if all(r.connections == 0 for r in results):
        first = next(
            (p.detail for r in results for p in r.problems if p.kind == "connection"), "no connection"
        )
        raise UpstreamError(first)
    name = scenario if custom is None else custom.name
    shown = ",".join(versions)
    return FleetResult(target, shown, name, cycles, time.monotonic() - started, results)
