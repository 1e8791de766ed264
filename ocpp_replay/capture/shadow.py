"""Live shadow: the proxy mirrors each charger to a second backend and diffs it (docs/shadow.md).

The proxy hands each message it relays to a :class:`Shadow` the way it hands it to the capture
writer: :meth:`Mirror.put` appends ``(seq, direction, payload, mask, text, time)`` to the
charger's bounded deque and returns (no parsing, no unmasking, no await on the relay path).
Past ``queue_limit`` messages or ``queue_bytes`` bytes the message is not mirrored: counted,
and that charger's comparison is marked incomplete. Production never waits for the shadow.

Off the relay path, one task per charger and shadow (:class:`_Leg`) dials
``<shadow><the charger's path suffix>`` with the charger's subprotocol offer (aiohttp; the
shadow's credentials from ``--shadow-auth-file``, never the charger's), feeds the frames to a
:class:`~ocpp_replay.core.shadow.ShadowJudge` and sends what it says to send. It reconnects on
its own (backoff up to 30 s) while the charger is connected. Each shadow URL has its run of kind
``shadow`` in the capture (:class:`_Run`), written from a thread every ``flush_interval`` with
:func:`~ocpp_replay.store.runs.update_live_run`, so ``runs``, ``report`` and ``tail --diffs``
see it while the proxy runs. The first difference of each (action, kind, path) is logged, then
only counts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from ocpp_replay.capture.wsframes import unmask
from ocpp_replay.core.correlate import Correlator, ocpp_version
from ocpp_replay.core.diff import Difference
from ocpp_replay.core.results import LiveFrame, Timing
from ocpp_replay.core.rules import RuleSet
from ocpp_replay.core.shadow import ShadowJudge
from ocpp_replay.core.text import escape_controls
from ocpp_replay.errors import CaptureError, ConfigError
from ocpp_replay.store.reader import Store
from ocpp_replay.store.runs import open_live_run, update_live_run
from ocpp_replay.store.schema import utc_iso

log = logging.getLogger(__name__)

#: Messages (and bytes) of one charger waiting for its shadow leg; past either, not mirrored.
DEFAULT_QUEUE_LIMIT = 256
DEFAULT_QUEUE_BYTES = 1024 * 1024
#: Messages handled per turn before the leg yields the event loop back to the relay.
_BATCH = 32
_MAX_BACKOFF = 30.0
_LOG_INTERVAL = 60.0
_MAX_MESSAGE = 16 * 1024 * 1024

#: (capture seq, to the CSMS?, payload, mask, text?, monotonic time)
Item = tuple[int, bool, bytes, bytes, bool, float]


@dataclass(frozen=True, slots=True)
class ShadowOptions:
    rules: RuleSet = field(default_factory=RuleSet.default)
    auth: Mapping[str, str] = field(default_factory=dict)  # charge point id (or *) -> password
    queue_limit: int = DEFAULT_QUEUE_LIMIT
    queue_bytes: int = DEFAULT_QUEUE_BYTES
    answer_timeout: float = 30.0
    connect_timeout: float = 10.0
    flush_interval: float = 0.5


class Shadow:
    """The proxy's shadow tap: one :class:`_Run` per shadow URL. ``start``/``stop`` with the proxy."""

    def __init__(self, urls: Sequence[str], production: str, options: ShadowOptions | None = None) -> None:
        if not urls:
            raise ConfigError("no shadow URL")
        for url in urls:
            if not url.startswith(("ws://", "wss://")):
                raise ConfigError(f"shadow must be a ws:// or wss:// URL, not {url!r}")
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
            leg.put((seq, to_csms, payload, mask, text, t_mono))

    def closed(self) -> None:
        for leg in self.legs:
            leg.closed()


class _Run:
    """One shadow URL: its legs, its run in the capture, its log of differences."""

    def __init__(self, url: str, production: str, options: ShadowOptions) -> None:
        self.url = url
        self.production = production
        self.options = options
        self.run_id: int | None = None
        self.legs: dict[int, _Leg] = {}
        self.correlators: dict[str, Correlator] = {}
        self.metas: dict[int, dict[str, Any]] = {}
        self.http: aiohttp.ClientSession | None = None
        self.dropped = 0
        self.messages = 0
        self.diffs = 0
        self.kinds: Counter[tuple[str, str, str]] = Counter()
        self._logged_kinds = 0
        self._logged_at = time.monotonic()
        self._diffs: list[Difference] = []
        self._frames: list[tuple[int, LiveFrame]] = []
        self._store: Store | None = None
        self._flusher: asyncio.Task[None] | None = None
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
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())
        log.info(
            "shadow %s: run %d, mirroring every charger (production %s)",
            self.url,
            self.run_id,
            self.production,
        )

    async def stop(self) -> None:
        self._stopping = True
        legs = list(self.legs.values())
        for leg in legs:
            leg.closed()
        tasks = [leg.task for leg in legs if leg.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2)
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self.http is not None:
            await self.http.close()
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
        if self._stopping or self.http is None:
            leg.closing = True
        else:
            leg.task = asyncio.get_running_loop().create_task(leg.main(), name=f"shadow-{session_id}")
        return leg

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
            "session_results": list(self.metas.values()),
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
        store, run_id = self._store, self.run_id
        if store is None or run_id is None:
            return
        diffs, frames = self._diffs, self._frames
        self._diffs, self._frames = [], []
        summary = self._summary()
        try:
            await asyncio.to_thread(
                update_live_run,
                store,
                run_id,
                summary=summary,
                differences=diffs,
                frames=frames,
                ended_at=utc_iso(time.time()) if final else None,
            )
        except CaptureError as exc:  # busy, disk full: kept for the next flush, never raised
            self._diffs, self._frames = diffs + self._diffs, frames + self._frames
            if not self._store_failed:
                self._store_failed = True
                log.warning("shadow %s: cannot store the run yet (%s); retrying", self.url, exc)
        else:
            self._store_failed = False
        # Finished sessions are in the summary for good; drop their legs.
        for sid, leg in list(self.legs.items()):
            if leg.finished:
                del self.legs[sid]


class _Leg:
    """One charger on one shadow: the queue the relay fills, the task that empties it."""

    __slots__ = (
        "bytes",
        "closing",
        "dropped",
        "fields",
        "finished",
        "judge",
        "owner",
        "queue",
        "reported_dropped",
        "task",
        "wake",
        "ws",
    )

    def __init__(self, run: _Run, judge: ShadowJudge, fields: Mapping[str, Any]) -> None:
        self.owner = run
        self.judge = judge
        self.fields = fields
        self.queue: deque[Item] = deque()
        self.bytes = 0
        self.dropped = 0
        self.reported_dropped = 0
        self.wake: asyncio.Future[None] | None = None
        self.closing = False
        self.finished = False
        self.task: asyncio.Task[None] | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    # -- the relay's side: cheap, never blocks, never raises ----------------------------------

    def put(self, item: Item) -> None:
        if self.closing:
            return
        size = len(item[2])
        opts = self.owner.options
        if len(self.queue) >= opts.queue_limit or self.bytes + size > opts.queue_bytes:
            self.dropped += 1
        else:
            self.queue.append(item)
            self.bytes += size
        self._kick()

    def closed(self) -> None:
        self.closing = True
        self._kick()

    def _kick(self) -> None:
        wake = self.wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    # -- the shadow's side ---------------------------------------------------------------------

    def _url(self) -> URL:
        suffix = self.fields.get("path_suffix")
        if suffix is None:
            suffix = "/" + str(self.judge.charge_point_id)
        query = self.fields.get("query")
        raw = self.owner.url + suffix + (f"?{query}" if query is not None else "")
        try:
            return URL(raw, encoded=True)
        except ValueError:
            return URL(self.owner.url + "/" + str(self.judge.charge_point_id))

    def _headers(self) -> dict[str, str]:
        auth = self.owner.options.auth
        cp = self.judge.charge_point_id
        password = auth.get(cp, auth.get("*"))
        if password is None:
            return {}
        user = self.fields.get("auth_user") or cp
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")}

    async def main(self) -> None:
        run, judge = self.owner, self.judge
        backoff = 0.5
        try:
            while not self.closing:
                if await self._connect():
                    backoff = 0.5
                    await self._serve()
                if self.closing:
                    break
                await self._wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
            self._discard()  # queued while no shadow was connected
            judge.close(time.monotonic())
        except Exception:  # a bug here must cost one charger's shadow, never the proxy
            log.exception("shadow %s: charger %s failed", run.url, escape_controls(judge.charge_point_id))
            judge.incomplete("internal error in the shadow leg")
        finally:
            self.queue.clear()
            if self.ws is not None and not self.ws.closed:
                with contextlib.suppress(Exception):
                    await self.ws.close(code=1001, message=b"charge point connection ended")
            meta = run.metas.get(judge.session_id)
            if meta is not None:
                meta["ended_at"] = utc_iso(time.time())
            run.collect(judge)
            self.finished = True

    async def _serve(self) -> None:
        """Mirror the queue to the connected shadow and read it, until either side ends; when
        the charger has gone, give the shadow a moment to answer what it was sent."""
        ws = self.ws
        assert ws is not None
        judge = self.judge
        reader = asyncio.get_running_loop().create_task(self._read(ws))
        try:
            while not ws.closed and not self.closing:
                await self._sleep(0.2 if judge.waiting else 1.0)
                await self._step(ws)
            if self.closing and not ws.closed:
                deadline = time.monotonic() + min(self.owner.options.answer_timeout, 2.0)
                while not ws.closed and (self.queue or judge.outbox or judge.waiting):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    await self._step(ws)
                    await self._sleep(min(0.2, left))
                await self._step(ws)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if not self.closing:
            code = ws.close_code
            judge.lost(f"closed by the shadow ({code})" if code and code != 1006 else "connection dropped")
            self.owner.collect(judge)

    async def _sleep(self, seconds: float) -> None:
        """Until something is queued or answered, the charger leaves, or ``seconds`` pass."""
        if self.queue or self.judge.outbox or self.closing:
            return
        self.wake = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.wake
        self.wake = None

    async def _step(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Feed the judge a batch of the queue, send what it says, hand its findings on."""
        judge, queue = self.judge, self.queue
        for _ in range(min(len(queue), _BATCH)):
            seq, to_csms, payload, mask, _text, t_mono = queue.popleft()
            self.bytes -= len(payload)
            raw = unmask(payload, mask).decode("utf-8", "replace")
            if to_csms:
                judge.from_charger(seq, raw, t_mono)
            else:
                judge.from_production(seq, raw, t_mono)
        self._note_dropped()
        judge.expire(time.monotonic())
        out, judge.outbox = judge.outbox, []
        for text in out:
            try:
                await ws.send_str(text)
            except (ConnectionError, aiohttp.ClientError, RuntimeError):
                break
        self.owner.collect(judge)
        await asyncio.sleep(0)  # the relay comes first

    async def _wait(self, seconds: float) -> None:
        """Wait ``seconds`` or until the charger's connection ends; what queued meanwhile is
        not mirrored (the shadow is not there to take it)."""
        deadline = time.monotonic() + seconds
        while not self.closing and time.monotonic() < deadline:
            self.wake = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(deadline - time.monotonic()):
                    await self.wake
            self.wake = None
            self._discard()

    def _discard(self) -> None:
        """No shadow is connected: what queued is not mirrored (the connection's own finding
        says why), and counted."""
        self._note_dropped()
        if self.queue:
            self.owner.dropped += len(self.queue)
            self.queue.clear()
            self.bytes = 0

    def _note_dropped(self) -> None:
        if self.dropped > self.reported_dropped:
            self.owner.dropped += self.dropped - self.reported_dropped
            self.reported_dropped = self.dropped
            self.judge.dropped(self.dropped)

    async def _connect(self) -> bool:
        run, judge = self.owner, self.judge
        assert run.http is not None
        offered = self.fields.get("offered_subprotocols")
        protocols = tuple(p for p in (offered or "").split(",") if p)
        try:
            async with asyncio.timeout(run.options.connect_timeout):
                self.ws = await run.http.ws_connect(
                    self._url(),
                    protocols=protocols,
                    headers=self._headers(),
                    autoping=True,
                    heartbeat=None,
                    max_msg_size=_MAX_MESSAGE,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
                )
        except aiohttp.WSServerHandshakeError as exc:
            judge.connect_failed(f"{exc.status} {exc.message}", exc.status)
        except TimeoutError:
            judge.connect_failed(f"no websocket handshake within {run.options.connect_timeout:g} s")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            judge.connect_failed(f"unreachable: {str(exc) or type(exc).__name__}")
        else:
            judge.connected_with(offered, self.fields.get("subprotocol"), self.ws.protocol)
            run.collect(judge)
            return True
        run.collect(judge)
        return False

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        judge = self.judge
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    judge.from_shadow(msg.data, time.monotonic())
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    judge.from_shadow(msg.data.decode("utf-8", "replace"), time.monotonic())
                self._kick()  # the pump sends what the judge answered
        self._kick()
