"""Live shadow: the proxy mirrors each charger to a second backend and diffs it (docs/shadow.md).

The proxy hands each message it relays to a :class:`Shadow` the way it hands it to the capture
writer: :meth:`Mirror.put` appends ``(seq, direction, payload, mask, time)`` to the charger's
bounded deque and returns (no parsing, no unmasking, no I/O on the relay path). Past
``queue_limit`` messages or ``queue_bytes`` bytes a message is not mirrored: counted, and that
charger's comparison is marked incomplete. Production never waits for the shadow.

Off the relay path, each shadow URL's :class:`_Run` has one drainer, a loop callback scheduled
when messages are queued: it takes up to ``_BATCH`` messages of the chargers that have some,
feeds them to each charger's :class:`~ocpp_replay.core.shadow.ShadowJudge` and writes what the
judge says to send, then yields to the relay and runs again if more are queued. Each charger's
shadow connection (:class:`_Leg`) is a plain :class:`asyncio.Protocol` below any websocket
library, as the proxy's own sockets are: it dials ``<shadow><the charger's path suffix>`` with
the charger's subprotocol offer (the shadow's credentials from ``--shadow-auth-file``, never the
charger's), writes its frames with ``transport.write`` (never awaiting: a shadow that does not
read has at most ``queue_bytes`` waiting for it, past that its frames are not mirrored), hands
what the shadow sends to the judge as it arrives (pings answered), and dials again on its own
(0.5 s, doubling up to 30 s) while the charger is connected.

Each shadow URL has its run of kind ``shadow`` in the capture, written from a thread every
``flush_interval`` with :func:`~ocpp_replay.store.runs.update_live_run`, so ``runs``, ``report``
and ``tail --diffs`` see it while the proxy runs. The first difference of each (action, kind,
path) is logged, then only counts.

The ``proxy`` command runs all this in a child process (:class:`ShadowProcess`: the relay's
hand-off is an append, and every 10 ms one pipe write), so that the shadow's CPU is not the
relay's; :class:`Shadow` is the same work in the proxy's own process (the tests use it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ocpp_replay.capture.handshake import HandshakeError, basic_auth, header
from ocpp_replay.capture.reach import ws_address
from ocpp_replay.capture.wsclient import DROPPED, GOING_AWAY, BadUpgrade, Endpoint, WsClient, frame
from ocpp_replay.capture.wsframes import TEXT, unmask
from ocpp_replay.core.correlate import Correlator, ocpp_version
from ocpp_replay.core.diff import Difference
from ocpp_replay.core.results import LiveFrame, Timing
from ocpp_replay.core.rules import RuleSet
from ocpp_replay.core.shadow import ShadowJudge
from ocpp_replay.core.text import escape_controls
from ocpp_replay.errors import CaptureError, ConfigError, OcppReplayError
from ocpp_replay.store.reader import Store
from ocpp_replay.store.runs import open_live_run, update_live_run
from ocpp_replay.store.schema import utc_iso

log = logging.getLogger(__name__)

#: Messages (and bytes) of one charger waiting for its shadow leg; past either, not mirrored.
DEFAULT_QUEUE_LIMIT = 256
DEFAULT_QUEUE_BYTES = 1024 * 1024
#: Messages the drainer handles before it yields the event loop back to the relay.
_BATCH = 16
_MAX_BACKOFF = 30.0
_LOG_INTERVAL = 60.0
#: Seconds between rewrites of a live run's summary (its counts are updated at every flush).
_SUMMARY_INTERVAL = 5.0
#: How often the judges' deadlines (answers not given, calls not made) are checked.
_TICK = 0.25
_TICK_SLICE = 100
_MAX_MESSAGE = 16 * 1024 * 1024

#: (capture seq, to the CSMS?, payload, mask, monotonic time)
Item = tuple[int, bool, bytes, bytes, float]


@dataclass(frozen=True, slots=True)
class ShadowOptions:
    rules: RuleSet = field(default_factory=RuleSet.default)
    auth: Mapping[str, str] = field(default_factory=dict)  # charge point id (or *) -> password
    queue_limit: int = DEFAULT_QUEUE_LIMIT
    queue_bytes: int = DEFAULT_QUEUE_BYTES
    answer_timeout: float = 30.0
    connect_timeout: float = 10.0
    flush_interval: float = 0.2  # small batches: the writing thread holds the GIL briefly


class Shadow:
    """The proxy's shadow tap: one :class:`_Run` per shadow URL. ``start``/``stop`` with the proxy."""

    def __init__(self, urls: Sequence[str], production: str, options: ShadowOptions | None = None) -> None:
        if not urls:
            raise ConfigError("no shadow URL")
        for url in urls:
            ws_address(url, "shadow")  # a ConfigError for anything but a ws:// or wss:// URL
        opts = options or ShadowOptions()
        if opts.queue_limit < 1 or opts.queue_bytes < 1:
            raise ConfigError("the shadow queue must hold at least one message")
        self.options = opts
        self.production = production
        self.runs = [_Run(url.rstrip("/"), production, opts) for url in urls]

    async def start(self, db: str) -> None:
        for run in self.runs:
            await run.start(db)

    async def stop(self) -> None:
        await asyncio.gather(*(run.stop() for run in self.runs))

    def opened(
        self, session_id: int, cp_id: str, fields: Mapping[str, Any], wall: float, mono: float
    ) -> Mirror:
        """A charger's relay began: open its shadow legs."""
        return Mirror([run.open(session_id, cp_id, fields, wall, mono) for run in self.runs])


class Mirror:
    """What the relay calls for one charger: :meth:`put` (each message) and :meth:`closed`."""

    __slots__ = ("legs",)

    def __init__(self, legs: list[_Leg]) -> None:
        self.legs = legs

    def put(self, seq: int, to_csms: bool, payload: bytes, mask: bytes, text: bool, t_mono: float) -> None:
        for leg in self.legs:
            leg.put((seq, to_csms, payload, mask, t_mono))

    def closed(self) -> None:
        for leg in self.legs:
            leg.closed()


class _Run:
    """One shadow URL: its legs, its drainer, its run in the capture, its log of differences."""

    def __init__(self, url: str, production: str, options: ShadowOptions) -> None:
        self.url = url
        self.production = production
        self.options = options
        self.endpoint = Endpoint.of(url, "shadow")
        self.path = self.endpoint.path.rstrip("/")
        self.query = urlsplit(url).query
        self.run_id: int | None = None
        self.legs: dict[int, _Leg] = {}
        self.correlators: dict[str, Correlator] = {}
        self.metas: dict[int, dict[str, Any]] = {}
        self.dropped = 0
        self.messages = 0
        self.diffs = 0
        self.kinds: Counter[tuple[str, str, str]] = Counter()
        self.tasks: set[asyncio.Task[None]] = set()
        self._ready: dict[_Leg, None] = {}  # legs with queued messages, in order
        self._draining: asyncio.Handle | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._logged_kinds = 0
        self._logged_at = time.monotonic()
        self._summary_at = 0.0
        self._diffs: list[Difference] = []
        self._frames: list[tuple[int, LiveFrame]] = []
        self._store: Store | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._idle = asyncio.Event()  # set when stopping and the last leg has finished
        self._stopping = False
        self._store_failed = False

    # -- life ---------------------------------------------------------------------------------

    async def start(self, db: str) -> None:
        self._store = await asyncio.to_thread(Store.open, db)
        self.run_id = await asyncio.to_thread(
            open_live_run,
            self._store,
            kind="shadow",
            started_at=utc_iso(time.time()),
            target=self.url,
            baseline=self.production,
            options={
                "shadow": self.url,
                "production": self.production,
                "queue_limit": self.options.queue_limit,
                "answer_timeout": self.options.answer_timeout,
            },
        )
        loop = asyncio.get_running_loop()
        self._flusher = loop.create_task(self._flush_loop())
        self._ticker = loop.call_later(_TICK, self._tick)
        log.info(
            "shadow %s: run %d, mirroring every charger (production %s)",
            self.url,
            self.run_id,
            self.production,
        )

    async def stop(self) -> None:
        self._stopping = True
        for leg in list(self.legs.values()):
            leg.closed()
        if self.legs:  # each gets its grace to hear the shadow's last answers (the ticker ends it)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(self.options.answer_timeout, 2.0) + 1.0):
                    await self._idle.wait()
        for leg in list(self.legs.values()):
            leg.finish()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=2)
        if self._ticker is not None:
            self._ticker.cancel()
        if self._draining is not None:
            self._draining.cancel()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self._flush(final=True)
        if self._store is not None:
            await asyncio.to_thread(self._store.close)
        log.info(
            "shadow %s: run %d closed: %d sessions, %d messages, %d differences%s",
            self.url,
            self.run_id,
            len(self.metas),
            self.messages,
            self.diffs,
            f", {self.dropped} frames not mirrored" if self.dropped else "",
        )
        for (action, kind, path), n in sorted(self.kinds.items()):
            log.info("shadow %s:   %5d  %s %s %s", self.url, n, action, kind, path or "-")

    def open(self, session_id: int, cp_id: str, fields: Mapping[str, Any], wall: float, mono: float) -> _Leg:
        version = ocpp_version(fields.get("subprotocol"))
        correlator = self.correlators.get(cp_id)
        if correlator is None:
            correlator = self.correlators[cp_id] = self.options.rules.correlator(version)
        judge = ShadowJudge(
            session_id,
            cp_id,
            version,
            self.options.rules,
            correlator,
            wall,
            mono,
            answer_timeout=self.options.answer_timeout,
        )
        self.metas[session_id] = {
            "session_id": session_id,
            "charge_point_id": cp_id,
            "subprotocol": fields.get("subprotocol"),
            "started_at": utc_iso(wall),
            "ended_at": None,
            "compared": {},
            "held": 0,
            "error": None,
            "close_code": None,
        }
        leg = _Leg(self, judge, fields)
        self.legs[session_id] = leg
        if self._stopping:
            leg.closing = True
            leg.finish()
        else:
            leg.dial()
        return leg

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- the drainer ---------------------------------------------------------------------------

    def ready(self, leg: _Leg) -> None:
        """``leg`` has something to do: drain soon (once per loop turn, however many legs)."""
        self._ready[leg] = None
        if self._draining is None:
            self._draining = asyncio.get_running_loop().call_soon(self._drain)

    def _drain(self) -> None:
        self._draining = None
        budget = _BATCH
        while self._ready and budget > 0:
            leg = next(iter(self._ready))
            budget -= max(leg.step(budget), 1)
            if not leg.queue or leg.dialling:  # a leg being dialled is ready again once open
                self._ready.pop(leg, None)
        if self._ready:  # more to do: after the relay's callbacks of this turn
            self._draining = asyncio.get_running_loop().call_soon(self._drain)

    def _tick(self) -> None:
        """Deadlines: answers not given, calls not made; legs whose charger left and whose
        grace is over. In slices of legs, each its own loop callback: the relay comes first."""
        loop = asyncio.get_running_loop()
        self._ticker = loop.call_later(_TICK, self._tick)
        legs = list(self.legs.values())
        for start in range(0, len(legs), _TICK_SLICE):
            loop.call_soon(self._tick_legs, legs[start : start + _TICK_SLICE])

    def _tick_legs(self, legs: list[_Leg]) -> None:
        now = time.monotonic()
        for leg in legs:
            if leg.finished:
                continue
            judge = leg.judge
            deadline = judge.next_deadline()
            if deadline is not None and deadline <= now:
                judge.expire(now)
                leg.send_outbox()
                self.collect(judge)
            idle = not leg.queue and not leg.dialling and not judge.waiting
            if leg.closing and (idle or now >= leg.grace_until):
                leg.finish()

    # -- results ------------------------------------------------------------------------------

    def collect(self, judge: ShadowJudge) -> None:
        """Take what the judge found and the frames of its leg (to the store, and the log)."""
        if judge.frames:
            sid = judge.session_id
            self._frames.extend((sid, f) for f in judge.frames)
            self.messages += len(judge.frames)
            judge.frames.clear()
        if judge.differences:
            for d in judge.differences:
                key = (d.action or "-", str(d.kind), d.path)
                self.kinds[key] += 1
                if self.kinds[key] == 1:
                    log.warning(
                        "shadow %s: new difference: %s %s %s (production %s, shadow %s) charge point %s",
                        self.url,
                        escape_controls(key[0]),
                        key[1],
                        escape_controls(d.path or "-"),
                        escape_controls(repr(d.expected))[:200],
                        escape_controls(repr(d.actual))[:200],
                        escape_controls(d.charge_point_id),
                    )
            self.diffs += len(judge.differences)
            self._diffs.extend(judge.differences)
            judge.differences.clear()
        meta = self.metas.get(judge.session_id)
        if meta is not None:
            meta["compared"] = dict(judge.compared)
            meta["error"] = judge.error

    def _summary(self) -> dict[str, Any]:
        return {
            "sessions": len(self.metas),
            "messages": self.messages,
            "diffs": self.diffs,
            "timing": Timing().as_dict(),
            "kind": "shadow",
            "production": self.production,
            "shadow": self.url,
            "not_mirrored": self.dropped,
            "incomplete_sessions": sum(1 for m in self.metas.values() if m.get("error")),
            "noise": [],
            "session_results": [dict(m) for m in self.metas.values()],
        }

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.flush_interval)
            await self._flush()
            now = time.monotonic()
            if (
                len(self.kinds)
                and now - self._logged_at >= _LOG_INTERVAL
                and self.diffs != self._logged_kinds
            ):
                self._logged_at, self._logged_kinds = now, self.diffs
                log.info(
                    "shadow %s: %d differences of %d kinds so far, %d sessions, %d frames not mirrored",
                    self.url,
                    self.diffs,
                    len(self.kinds),
                    len(self.metas),
                    self.dropped,
                )

    async def _flush(self, *, final: bool = False) -> None:
        async with self._flush_lock:  # the final flush waits for one under way in its thread
            await self._flush_now(final)

    async def _flush_now(self, final: bool) -> None:
        store, run_id = self._store, self.run_id
        if store is None or run_id is None:
            return
        diffs, frames = self._diffs, self._frames
        self._diffs, self._frames = [], []
        now = time.monotonic()
        # The summary lists every session: rewritten every few seconds, not at every flush.
        summary = None
        if final or now - self._summary_at >= _SUMMARY_INTERVAL:
            summary, self._summary_at = self._summary(), now
        try:
            await asyncio.to_thread(
                update_live_run,
                store,
                run_id,
                counts=(len(self.metas), self.messages, self.diffs),
                differences=diffs,
                frames=frames,
                summary=summary,
                ended_at=utc_iso(time.time()) if final else None,
            )
        except CaptureError as exc:  # busy, disk full: kept for the next flush, never raised
            self._diffs, self._frames = diffs + self._diffs, frames + self._frames
            self._summary_at = 0.0
            if not self._store_failed:
                self._store_failed = True
                log.warning("shadow %s: cannot store the run yet (%s); retrying", self.url, exc)
        else:
            self._store_failed = False


class _Leg(WsClient):
    """One charger on one shadow: the queue the relay fills, and the shadow's socket."""

    strict_text = False  # the judge sees what the shadow sent, U+FFFD where it is not UTF-8

    def __init__(self, run: _Run, judge: ShadowJudge, fields: Mapping[str, Any]) -> None:
        super().__init__(_MAX_MESSAGE)
        self.owner = run
        self.judge = judge
        self.fields = fields
        self.queue: deque[Item] = deque()
        self.bytes = 0
        self.dropped = 0
        self.reported_dropped = 0
        self.closing = False
        self.finished = False
        self.grace_until = 0.0
        self._backoff = 0.5
        self._timer: asyncio.TimerHandle | None = None
        self._connecting = False  # a dial under way (what is queued waits for it)

    # -- the relay's side: cheap, never blocks, never raises ----------------------------------

    def put(self, item: Item) -> None:
        if self.finished:
            return
        size = len(item[2])
        opts = self.owner.options
        if len(self.queue) >= opts.queue_limit or self.bytes + size > opts.queue_bytes:
            self.dropped += 1
        else:
            self.queue.append(item)
            self.bytes += size
        self.owner.ready(self)

    def closed(self) -> None:
        """The charger's connection ended: what is queued is judged, then the shadow gets a
        moment to answer what it was sent (the ticker finishes the leg)."""
        if self.closing:
            return
        self.closing = True
        self.grace_until = time.monotonic() + min(self.owner.options.answer_timeout, 2.0)
        if self._timer is not None:  # waiting to dial again: no point now
            self._timer.cancel()
            self._timer = None
        if not self.open and not self._connecting:
            self.grace_until = 0.0
        self.owner.ready(self)

    # -- the drainer's side ---------------------------------------------------------------------

    def step(self, budget: int) -> int:
        """Judge up to ``budget`` queued messages and send what the judge says; returns how many."""
        judge, queue = self.judge, self.queue
        if not self.open:
            if self.dialling:  # they wait for the shadow's answer to the upgrade
                return 0
            n = len(queue)  # no shadow now: not mirrored (the connection's finding says why)
            self.owner.dropped += n
            queue.clear()
            self.bytes = 0
            self._note_dropped()
            return n
        n = min(len(queue), budget)
        for _ in range(n):
            seq, to_csms, payload, mask, t_mono = queue.popleft()
            self.bytes -= len(payload)
            raw = unmask(payload, mask).decode("utf-8", "replace")
            if to_csms:
                judge.from_charger(seq, raw, t_mono)
            else:
                judge.from_production(seq, raw, t_mono)
        self._note_dropped()
        self.send_outbox()
        self.owner.collect(judge)
        return n

    @property
    def dialling(self) -> bool:
        return self._connecting and not self.finished

    def send_outbox(self) -> None:
        judge = self.judge
        if not judge.outbox:
            return
        out, judge.outbox = judge.outbox, []
        transport = self.transport
        if transport is None or transport.is_closing() or not self.open:
            return
        limit = self.owner.options.queue_bytes
        for text in out:
            if transport.get_write_buffer_size() > limit:  # the shadow is not reading
                self.dropped += 1
                continue
            transport.write(frame(TEXT, text.encode("utf-8")))
        self._note_dropped()

    def _note_dropped(self) -> None:
        if self.dropped > self.reported_dropped:
            self.owner.dropped += self.dropped - self.reported_dropped
            self.reported_dropped = self.dropped
            self.judge.dropped(self.dropped)

    def finish(self) -> None:
        """Judge what is still open and end the leg."""
        if self.finished:
            return
        self.finished = True
        run, judge = self.owner, self.judge
        self.queue.clear()
        self.bytes = 0
        if self._timer is not None:
            self._timer.cancel()
        judge.close(time.monotonic())
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self.send_close(GOING_AWAY, "charge point connection ended")
            transport.close()
        meta = run.metas.get(judge.session_id)
        if meta is not None:
            meta["ended_at"] = utc_iso(time.time())
        run.collect(judge)
        run.legs.pop(judge.session_id, None)
        if run._stopping and not run.legs:
            run._idle.set()

    # -- dialling --------------------------------------------------------------------------------

    def dial(self) -> None:
        self._timer = None
        if not self.closing and not self.finished:
            self._connecting = True
            self.owner.spawn(self._dialled())

    async def _dialled(self) -> None:
        try:
            await self._dial()
        finally:
            self._connecting = False
            self.owner.ready(self)  # what queued meanwhile: mirrored, or not if the dial failed

    def _target(self) -> str:
        suffix = self.fields.get("path_suffix")
        if suffix is None:
            suffix = "/" + str(self.judge.charge_point_id)
        run = self.owner
        queries = [q for q in (run.query, self.fields.get("query")) if q]
        path = run.path + suffix
        return (path if path.startswith("/") else "/" + path) + (f"?{'&'.join(queries)}" if queries else "")

    def _headers(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        offered = self.fields.get("offered_subprotocols")
        if offered:
            out.append(("Sec-WebSocket-Protocol", str(offered)))
        auth = basic_auth(self.owner.options.auth, self.judge.charge_point_id, self.fields.get("auth_user"))
        return [*out, auth] if auth else out

    async def _dial(self) -> None:
        run, judge = self.owner, self.judge
        timeout = run.options.connect_timeout
        try:
            response = await self.connect(run.endpoint, self._target(), self._headers(), timeout)
        except TimeoutError:
            self._failed(f"no websocket handshake within {timeout:g} s")
            return
        except BadUpgrade as exc:
            self._failed(str(exc), 101)
            return
        except (OSError, ConnectionError, HandshakeError) as exc:
            self._failed(f"unreachable: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}")
            return
        if response.status != 101:
            self._failed(f"{response.status} {response.reason}", response.status)
            return
        if self.finished:
            self._drop()
            return
        self._backoff = 0.5
        judge.connected_with(
            self.fields.get("offered_subprotocols"),
            self.fields.get("subprotocol"),
            header(response.headers, "Sec-WebSocket-Protocol") or None,
        )
        run.collect(judge)
        run.ready(self)

    def _failed(self, reason: str, status: int | None = None) -> None:
        self._drop()
        self.judge.connect_failed(reason, status)
        self.owner.collect(self.judge)
        self._again()

    def _again(self) -> None:
        """Dial again later (the queue is not mirrored meanwhile)."""
        if self.closing or self.finished or self.owner._stopping:
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._backoff, self.dial)
        self._backoff = min(self._backoff * 2, _MAX_BACKOFF)
        self.owner.ready(self)

    def _drop(self) -> None:
        transport = self.transport
        self.transport = None
        self.open = False
        if transport is not None:
            transport.abort()

    # -- the connection's callbacks (WsClient) --------------------------------------------------

    def message(self, opcode: int, payload: bytes | str) -> None:
        text = payload if isinstance(payload, str) else payload.decode("utf-8", "replace")
        self.judge.from_shadow(text, time.monotonic())

    def messages_done(self) -> None:
        self.send_outbox()
        self.owner.collect(self.judge)

    def ended(self, code: int | None, reason: str) -> None:
        if self.refusal is not None:
            why = "the shadow sent a frame over the size limit"
        else:
            why = f"closed by the shadow ({code})" if code and code != DROPPED else "connection dropped"
        self._drop()
        if self.closing or self.finished:
            return
        self.judge.lost(why)
        self.owner.collect(self.judge)
        self._again()


# ----------------------------------------------------------------------------- in a child process


#: Bytes of batches the child has not read yet; past this, messages are not mirrored (counted).
_PIPE_LIMIT = 16 * 1024 * 1024
#: How long messages gather before they go to the child in one write (a write per loop turn
#: would cost the relay as many system calls as the relay's own).
_PIPE_INTERVAL = 0.01
_FIELDS = ("subprotocol", "offered_subprotocols", "path_suffix", "query", "auth_user")
#: ``--shadow-priority``: ``idle`` (default) puts the shadow process in SCHED_IDLE once it is
#: ready, so that it takes no core the relay wants; ``normal`` leaves it at the proxy's priority
#: (on a host kept busy by other work, an idle-class shadow falls behind: what it cannot take in
#: is counted as not mirrored, never production's loss).
PRIORITIES = ("idle", "normal")


class ShadowProcess:
    """``--shadow`` as the command runs it: the judging and the shadow's sockets in a child
    process (``python -m ocpp_replay.capture.shadow``), so that their CPU is not the relay's.

    The relay's hand-off stays an append (to a list); every 10 ms the list goes to the child's
    stdin as one marshal'd batch, one write. A child that falls behind by more than
    16 MiB gets its messages counted as not mirrored instead. The child ignores SIGINT (the
    proxy's to handle) and ends its runs when its stdin closes (:meth:`stop`).
    """

    def __init__(
        self,
        urls: Sequence[str],
        production: str,
        *,
        rules_file: str | None = None,
        auth_file: str | None = None,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        log_level: str = "INFO",
        priority: str = "idle",
    ) -> None:
        for url in urls:
            ws_address(url, "shadow")
        if queue_limit < 1:
            raise ConfigError("the shadow queue must hold at least one message")
        if priority not in PRIORITIES:
            raise ConfigError(f"--shadow-priority must be idle or normal, not {priority!r}")
        self.args: dict[str, Any] = {
            "urls": list(urls),
            "production": production,
            "rules": rules_file,
            "auth": auth_file,
            "queue_limit": queue_limit,
            "log_level": log_level,
            "priority": priority,
        }
        self._proc: asyncio.subprocess.Process | None = None
        self._batch: list[tuple[Any, ...]] = []
        self._flushing: asyncio.TimerHandle | None = None
        self.not_sent = 0

    async def start(self, db: str) -> None:
        import json
        import sys

        args = json.dumps({**self.args, "db": db})
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ocpp_replay.capture.shadow",
            args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self._proc.stdout is not None
        try:
            async with asyncio.timeout(30):
                line = await self._proc.stdout.readline()
        except TimeoutError:
            line = b""
        if line.strip() != b"ready":
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()
            raise CaptureError("the shadow could not start (its error is above)")

    async def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if self._flushing is not None:
            self._flushing.cancel()
        self._send()
        if self.args["priority"] == "idle":  # its last flush must not wait for an idle core
            from ocpp_replay.priority import restore_priority

            restore_priority(proc.pid)
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            async with asyncio.timeout(20):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self.not_sent:
            log.warning("shadow: %d messages not mirrored (the shadow process fell behind)", self.not_sent)

    def opened(
        self, session_id: int, cp_id: str, fields: Mapping[str, Any], wall: float, mono: float
    ) -> _PipeMirror:
        self._add(("o", session_id, cp_id, {k: fields.get(k) for k in _FIELDS}, wall, mono))
        return _PipeMirror(self, session_id)

    def _add(self, record: tuple[Any, ...]) -> None:
        self._batch.append(record)
        if self._flushing is None:  # one write per _PIPE_INTERVAL, whatever the traffic
            self._flushing = asyncio.get_running_loop().call_later(_PIPE_INTERVAL, self._send)

    def _send(self) -> None:
        import marshal

        self._flushing = None
        batch, self._batch = self._batch, []
        proc = self._proc
        if not batch or proc is None or proc.stdin is None or proc.stdin.is_closing():
            return
        transport = proc.stdin.transport
        if transport.get_write_buffer_size() > _PIPE_LIMIT:  # the child is not keeping up
            kept = [r for r in batch if r[0] != "p"]
            dropped: Counter[int] = Counter(r[1] for r in batch if r[0] == "p")
            self.not_sent += sum(dropped.values())
            batch = kept + [("d", sid, n) for sid, n in dropped.items()]
        data = marshal.dumps(batch)
        transport.write(len(data).to_bytes(4, "big") + data)


class _PipeMirror:
    __slots__ = ("owner", "session_id")

    def __init__(self, owner: ShadowProcess, session_id: int) -> None:
        self.owner = owner
        self.session_id = session_id

    def put(self, seq: int, to_csms: bool, payload: bytes, mask: bytes, text: bool, t_mono: float) -> None:
        self.owner._add(("p", self.session_id, seq, to_csms, payload, mask, t_mono))

    def closed(self) -> None:
        self.owner._add(("c", self.session_id))


async def _work(args: dict[str, Any]) -> None:
    """The child: read batches from stdin, feed the runs, end them at EOF."""
    import marshal
    import sys

    from ocpp_replay.replay import load_auth_file
    from ocpp_replay.store.files import load_rules

    rules = load_rules(args["rules"])
    auth = load_auth_file(args["auth"]) if args["auth"] else {}
    shadow = Shadow(
        args["urls"],
        args["production"],
        ShadowOptions(rules=rules, auth=auth, queue_limit=args["queue_limit"]),
    )
    await shadow.start(args["db"])
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_PIPE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    if args.get("priority", "idle") == "idle":  # behind the relay from now on (ocpp_replay/priority.py)
        from ocpp_replay.priority import lower_priority

        log.debug("shadow process: %s", lower_priority())
    mirrors: dict[int, Mirror] = {}
    try:
        while True:
            try:
                size = int.from_bytes(await reader.readexactly(4), "big")
                batch = marshal.loads(await reader.readexactly(size))
            except asyncio.IncompleteReadError:
                break  # the proxy is stopping
            for record in batch:
                kind, sid = record[0], record[1]
                if kind == "p":
                    mirror = mirrors.get(sid)
                    if mirror is not None:
                        mirror.put(record[2], record[3], record[4], record[5], True, record[6])
                elif kind == "o":
                    mirrors[sid] = shadow.opened(sid, record[2], record[3], record[4], record[5])
                elif kind == "c":
                    mirror = mirrors.pop(sid, None)
                    if mirror is not None:
                        mirror.closed()
                elif kind == "d":
                    for leg in mirrors[sid].legs if sid in mirrors else ():
                        leg.dropped += record[2]
    finally:
        await shadow.stop()


def _child_main() -> int:
    import json
    import signal
    import sys

    global log
    log = logging.getLogger("ocpp_replay.capture.shadow")  # not __main__: the name it logs under
    args = json.loads(sys.argv[1])
    logging.basicConfig(
        level=getattr(logging, str(args.get("log_level", "INFO")).upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    # The proxy stops it by closing its stdin (a proxy killed outright closes it too): a signal
    # sent to the whole group (Ctrl-C, systemd's stop) must not cut its last flush short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - not on this platform
            asyncio.run(_work(args))
        else:
            uvloop.run(_work(args))
    except OcppReplayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


#: What the proxy takes as its shadow tap, and what that gives it for each charger.
Tap = Shadow | ShadowProcess
TapMirror = Mirror | _PipeMirror

if __name__ == "__main__":
    raise SystemExit(_child_main())
