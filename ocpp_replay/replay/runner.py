"""Replay captured sessions against a target CSMS, playing the charger side.

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
import contextlib
import gc
import logging
import sqlite3
import time
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from yarl import URL

from ocpp_replay.capture.handshake import HandshakeError, basic_auth
from ocpp_replay.capture.reach import probe, raise_open_file_limit
from ocpp_replay.capture.wsclient import DROPPED, GOING_AWAY, Endpoint, WsClient
from ocpp_replay.capture.wsframes import BINARY, TEXT
from ocpp_replay.core.compare import compare_result
from ocpp_replay.core.correlate import Correlator
from ocpp_replay.core.results import RunResult, SessionResult, handshake_summary
from ocpp_replay.core.rewrite import Rewriter, rewrite_plans
from ocpp_replay.core.rules import RuleSet
from ocpp_replay.core.schedule import (
    SessionPlan,
    Timeline,
    plan_session,
    plan_sessions,
    session_instants,
    session_start,
)
from ocpp_replay.core.session import (
    OPERATOR_CALLS,
    Action,
    Close,
    Finding,
    ReplaySession,
    Send,
    SessionOptions,
)
from ocpp_replay.errors import (
    CaptureError,
    ConfigError,
    OcppReplayError,
    ReplayError,
    UpstreamError,
)
from ocpp_replay.replay.amplify import Copies

# The store is opened by the caller; every call into it here runs in a thread.
from ocpp_replay.store import FrameRecord, SessionInfo, Store, utc_iso

__all__ = [
    "Progress",
    "Selection",
    "load_auth_file",
    "load_sessions",
    "run_compare",
    "run_replay",
    "selected_sessions",
]

log = logging.getLogger(__name__)

#: Seconds a session dials before its recorded start (``run_replay(connect_ahead=...)``).
DEFAULT_CONNECT_AHEAD = 1.0
#: Handshakes in flight at once.
DEFAULT_MAX_CONNECTING = 100
_CLOSE_WAIT = 5.0  # seconds for the backend to answer a close frame
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


def selected_sessions(store: Store, selection: Selection = Selection()) -> list[SessionInfo]:
    """The selected sessions that have something to replay, without their frames (blocking).
    Raises ReplayError for a selected id the capture lacks, or when none is left."""
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
    # a handshake the upstream refused has nothing to replay
    out = [info for info in infos if not (info.error and info.frames == 0)]
    if not out:
        raise ReplayError(f"no sessions to replay in capture {store.path} for this selection")
    return out


def load_session(store: Store, info: SessionInfo) -> tuple[SessionInfo, list[FrameRecord]]:
    """One session with its frames, as a replay takes it (blocking): one that the capture's
    retention cut is replayed from the cut, primed (replay/window.py)."""
    frames = list(store.frames(info.id))
    if info.pruned_before:
        from ocpp_replay.replay.window import unpruned

        return unpruned(info, frames)
    return info, frames


def load_sessions(
    store: Store, selection: Selection = Selection()
) -> list[tuple[SessionInfo, list[FrameRecord]]]:
    """The selected sessions with their frames, all in memory (blocking: call it in a thread).
    A replay of the capture itself streams instead (:func:`run_replay` without ``sessions``)."""
    return [load_session(store, info) for info in selected_sessions(store, selection)]


#: Replay seconds ahead of its start that a streamed session is loaded and planned.
LOAD_AHEAD = 10.0
#: Sessions loaded in one go by a streamed replay's loader (between two, the loop runs).
_LOAD_BATCH = 100


@dataclass(frozen=True, slots=True)
class Due:
    """A session of a streamed replay: planned when its start comes near (:class:`_Loader`)."""

    info: SessionInfo
    start: float  # replay seconds after the run's start
    #: An amplified copy (``replay --amplify``): the recorded session it copies, and how.
    source: SessionInfo | None = None
    copy: int = 0
    copies: Copies | None = None

    def load(self, store: Store) -> tuple[SessionInfo, list[FrameRecord]]:
        """The session with its frames (blocking); a copy made from its recorded session."""
        if self.source is None or self.copies is None:
            return load_session(store, self.info)
        _, frames = load_session(store, self.source)
        return self.info, self.copies.frames(frames, self.copy, self.info.id)

    @property
    def session_id(self) -> int:
        return self.info.id

    @property
    def charge_point_id(self) -> str:
        return self.info.charge_point_id


class _Loader:
    """Loads and plans the sessions of a streamed replay ahead of their starts, in start order,
    so that memory holds the sessions about to run and running, not the capture: a week of a
    site's traffic replays in the memory of its busiest hour."""

    def __init__(
        self,
        store: Store,
        dues: Sequence[Due],
        timeline: Timeline,
        rules: RuleSet,
        rewrite: Rewriter | None,
        ahead: float,
    ) -> None:
        self.store = store
        self.timeline = timeline
        self.rules = rules
        self.rewrite = rewrite
        self.ahead = ahead
        self.queue = list(dues)  # in start order
        self.next = 0
        self.plans: dict[int, asyncio.Future[SessionPlan]] = {}
        self.rewritten: list[dict[str, Any]] = []
        self.loaded = 0  # sessions loaded so far
        self.held = 0  # sessions loaded and not finished
        self.most_held = 0

    def _load(self, dues: Sequence[Due]) -> list[SessionPlan]:
        plans = []
        for d in dues:
            plans.append(plan_session(*d.load(self.store), self.timeline, self.rules))
            # Hand the GIL to the event loop if it waits: it would wait up to the switch interval
            # (5 ms) while this thread plans the next sessions, and every frame due meanwhile
            # would go out that late. A session takes 0.2-0.5 ms to load and plan.
            time.sleep(0)
        plans, rewritten = rewrite_plans(plans, self.rewrite)
        self.rewritten.extend(rewritten)
        return plans

    def _batch(self, until: float) -> list[Due]:
        batch: list[Due] = []
        while self.next < len(self.queue) and len(batch) < _LOAD_BATCH:
            due = self.queue[self.next]
            if batch and due.start > until:
                break
            batch.append(due)
            self.next += 1
        return batch

    def _deliver(self, dues: Sequence[Due], plans: Sequence[SessionPlan]) -> None:
        loop = asyncio.get_running_loop()
        for due, plan in zip(dues, plans, strict=True):
            self.plans.setdefault(due.session_id, loop.create_future()).set_result(plan)
        self.loaded += len(dues)
        self.held += len(dues)
        self.most_held = max(self.most_held, self.held)

    async def preload(self) -> None:
        """The sessions due within ``ahead`` of time 0, before the clock starts."""
        while self.next < len(self.queue) and self.queue[self.next].start <= self.ahead:
            batch = self._batch(self.ahead)
            self._deliver(batch, await asyncio.to_thread(self._load, batch))

    async def run(self, now: Callable[[], float]) -> None:
        """The rest, each batch when its first session is due within ``ahead``."""
        while self.next < len(self.queue):
            wait = self.queue[self.next].start - self.ahead - now()
            if wait > 0:
                await asyncio.sleep(wait)
            batch = self._batch(now() + self.ahead)
            try:
                plans = await asyncio.to_thread(self._load, batch)
            except BaseException as exc:
                for due in batch:  # the chargers waiting for them end with the error
                    self.plans.setdefault(due.session_id, asyncio.get_running_loop().create_future())
                    self.plans[due.session_id].set_exception(exc)
                raise
            self._deliver(batch, plans)

    async def plan(self, session_id: int) -> SessionPlan:
        future = self.plans.setdefault(session_id, asyncio.get_running_loop().create_future())
        try:
            return await future
        finally:
            del self.plans[session_id]


def due_sessions(
    store: Store,
    selection: Selection,
    speed: float,
    max_gap: float | None,
    copies: Copies | None = None,
) -> tuple[list[Due], Timeline]:
    """The selected sessions of a streamed replay, in start order, with their replay starts, and
    their timeline, the one :func:`~ocpp_replay.core.schedule.plan_sessions` would build, read
    without holding the frames (blocking): without ``max_gap`` each session's first and last
    instants are enough; with it, each session's frame times are read, one session at a time.
    With ``copies``: the copies of each session instead of it (``replay --amplify``)."""
    infos = selected_sessions(store, selection)
    dues: list[tuple[SessionInfo, float, SessionInfo | None, int]] = []  # info, recorded start, source, copy

    def instants(info: SessionInfo) -> Iterable[Iterable[float]]:
        shown = info
        if info.pruned_before:  # replayed from its cut: its instants are the cut session's
            shown, frames = load_session(store, info)
            elapsed = [f.elapsed for f in frames]
        elif max_gap is None:
            row = store.db.execute(
                "SELECT min(elapsed), max(elapsed) FROM frames WHERE session_id = ?", [info.id]
            ).fetchone()
            elapsed = [e for e in row if e is not None]
        else:
            rows = store.db.execute("SELECT elapsed FROM frames WHERE session_id = ?", [info.id])
            elapsed = [r[0] for r in rows]
        start = session_start(shown)
        if copies is None:
            dues.append((info, start, None, 0))
            return [session_instants(shown, start, elapsed)]
        out = []
        for k in range(1, copies.copies + 1):
            copy = copies.info(shown, k)
            dues.append((copy, start + copies.offset(k), info, k))
            out.append(session_instants(copy, start + copies.offset(k), elapsed))
        return out

    try:
        timeline = Timeline.of_sessions(
            (each for info in infos for each in instants(info)), speed=speed, max_gap=max_gap
        )
    except sqlite3.DatabaseError as exc:
        raise CaptureError(f"cannot read frames from {store.path}: {exc}") from exc
    ordered = sorted(
        (Due(info, timeline(at), source, k, copies if source else None) for info, at, source, k in dues),
        key=lambda d: (d.start, d.session_id),
    )
    return ordered, timeline


class ResultSpool:
    """A replay's results written to its run as each session finishes, so that memory does not
    hold every frame a long replay exchanged: the run is opened in the store when the replay
    starts (:meth:`open`; ``ocpp-replay runs`` shows it going), each finished session's frames
    go to it in the background, one transaction per batch, and the session's result is kept
    without them (``frames_stored``). :func:`~ocpp_replay.store.runs.store_run` of the final
    result (it carries the run's id) completes the run; :meth:`discard` removes a run that
    failed. Writes happen in one thread at a time, in order."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.run_id: int | None = None
        self._queue: list[SessionResult] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def open(self, target: str, started_at: str) -> int:
        from ocpp_replay.store.runs import open_live_run

        run_id = await asyncio.to_thread(
            open_live_run,
            self.store,
            kind="replay",
            started_at=started_at,
            target=target,
            baseline=None,
            options={},
        )
        await self.attach(run_id)
        return run_id

    async def attach(self, run_id: int) -> None:
        """Write into run ``run_id``, opened by another process (a worker of ``--workers``)."""
        self.run_id = run_id
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._drain(), name="replay-results")

    def put(self, result: SessionResult) -> SessionResult:
        """Queue a finished session's frames for the run; returns its result without them."""
        if self._wake is None or not result.frames:
            return result
        self._queue.append(result)
        self._wake.set()
        return replace(result, frames=(), frames_stored=result.frames_stored + len(result.frames))

    async def _drain(self) -> None:
        from ocpp_replay.store.runs import store_session_frames

        assert self._wake is not None and self.run_id is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue, []
                await asyncio.to_thread(store_session_frames, self.store, self.run_id, batch)
            if self._closing:
                return

    async def close(self) -> None:
        """Write what is queued and stop; an error of the writes is raised here."""
        task = self._task
        if task is None or self._wake is None:
            return
        self._closing = True
        self._wake.set()
        self._task = None
        await task  # never cancelled: a write in a thread cannot be

    def discard(self) -> None:
        """Remove the run (blocking): the replay failed and stores nothing."""
        from ocpp_replay.store.runs import delete_run

        if self.run_id is not None:
            with contextlib.suppress(OcppReplayError):
                delete_run(self.store, self.run_id)
            self.run_id = None


# ----------------------------------------------------------------------------- one session


@dataclass(slots=True)
class _Counters:
    sessions_total: int
    sessions_done: int = 0
    frames_sent: int = 0
    diffs: int = 0


@dataclass(slots=True)
class _Context:
    endpoint: Endpoint
    target: str
    rules: RuleSet
    auth: Mapping[str, str]
    connect_timeout: float
    progress: ProgressCallback | None
    counters: _Counters
    options: SessionOptions = field(default_factory=SessionOptions)
    correlators: dict[str, Correlator] = field(default_factory=dict)
    #: Until one charger has connected, a failing target is an error (exit 2); after that a
    #: charger the target fails is a difference of its session.
    connected_once: bool = False
    #: Handshakes in flight at once (``max_connecting``); the others wait their turn in order.
    dialling: asyncio.Semaphore | None = None


class _SessionRun(WsClient):
    """Drives one :class:`~ocpp_replay.core.session.ReplaySession` over a websocket: connects,
    feeds it the backend's frames and the loop's time, performs the actions it hands out.

    The connection is this object (a :class:`~ocpp_replay.capture.wsclient.WsClient`): the
    backend's messages reach the session in the loop turn that read them, with no reader task;
    a timer at the session's next wakeup steps it (sends what is due), and so does a message
    that gives it something to do sooner. :meth:`run` awaits the end."""

    __slots__ = (
        "_over",
        "_stepping",
        "_timer",
        "anchor",
        "ctx",
        "handshake",
        "loop",
        "plan",
        "session",
        "sleeping_until",
    )  # fmt: skip

    def __init__(self, plan: SessionPlan, ctx: _Context, anchor: float) -> None:
        super().__init__(MAX_MESSAGE_SIZE)
        self.plan = plan
        self.ctx = ctx
        self.loop = asyncio.get_running_loop()
        self.anchor = anchor
        self.session: ReplaySession | None = None
        self._over: asyncio.Future[None] | None = None  # set when the session is done
        self._timer: asyncio.TimerHandle | None = None  # at the session's next wakeup
        self._stepping = False  # in _step (what happens meanwhile, it sees when it goes on)
        self.sleeping_until: float | None = None  # that wakeup
        self.handshake: float | None = None  # seconds from dialling to the 101 (or the failure)

    def _now(self) -> float:
        return self.loop.time() - self.anchor

    # -- connection -------------------------------------------------------------------

    def _target(self) -> str:
        """The request target: ``<target's path><suffix as dialled>``; a query of the target and
        the recorded one both kept. Sent byte for byte (not re-quoted) when the capture has the
        suffix: its query is raw too. Older captures hold the query decoded: quoted as before."""
        plan = self.plan
        url = session_url(self.ctx.target, plan.charge_point_id, plan.query, plan.path_suffix)
        return URL(url, encoded=plan.path_suffix is not None).raw_path_qs

    def _headers(self) -> list[tuple[str, str]]:
        plan = self.plan
        out = [("Sec-WebSocket-Protocol", plan.subprotocol)] if plan.subprotocol else []
        auth = basic_auth(self.ctx.auth, plan.charge_point_id, plan.auth_user)
        return [*out, auth] if auth else out

    async def _connect(self, session: ReplaySession) -> bool:
        async with self.ctx.dialling or contextlib.nullcontext():
            started = self.loop.time()
            try:
                return await self._dial(session)
            finally:
                self.handshake = self.loop.time() - started

    async def _dial(self, session: ReplaySession) -> bool:
        plan, ctx = self.plan, self.ctx
        headers = self._headers()
        try:
            response = await self.connect(ctx.endpoint, self._target(), headers, ctx.connect_timeout)
        except TimeoutError as exc:
            reason = f"no websocket handshake within {ctx.connect_timeout:g} s"
            if not ctx.connected_once:
                raise UpstreamError(
                    f"target {ctx.target} accepted the connection for {plan.charge_point_id} but "
                    f"completed {reason}"
                ) from exc
            # The target worked for other chargers but not for this one: a difference of this
            # session (the backend fell over, or refuses this charger), not the end of the run.
            session.failed(reason)
            return False
        except (OSError, HandshakeError) as exc:
            what = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            what = what or type(exc).__name__
            if not ctx.connected_once:
                raise UpstreamError(
                    f"target {ctx.target} unreachable for {plan.charge_point_id}: {what}"
                ) from exc
            session.failed(f"unreachable: {what}")
            return False
        if response.status != 101:
            session.refused(
                response.status, response.reason, auth_sent=any(n == "Authorization" for n, _ in headers)
            )
            return False
        ctx.connected_once = True
        return True

    async def run(self) -> SessionResult:
        plan, ctx = self.plan, self.ctx
        wall_anchor = time.time() - self._now()
        started_at = utc_iso(time.time())
        session = ReplaySession(
            plan,
            rules=ctx.rules,
            correlator=ctx.correlators.setdefault(plan.charge_point_id, ctx.rules.correlator(plan.version)),
            options=ctx.options,
            timestamp=lambda t: utc_iso(wall_anchor + t),
            shift=wall_anchor - plan.recorded_start,
        )
        log.debug("session %d (%s): connecting", plan.session_id, plan.charge_point_id)
        connected = await self._connect(session)
        connected_at = self._now()  # negative: connected ahead of the session's recorded start
        if connected:
            try:
                self.session = session
                session.connected(connected_at, self.protocol)
                await self._drive(session)
            finally:
                if self._timer is not None:  # cancelled (the run stops): no more steps
                    self._timer.cancel()
                    self._timer = None
                if self._over is not None and not self._over.done():
                    self._over.cancel()
                if not self.done:
                    with contextlib.suppress(Exception):
                        await self.close(GOING_AWAY, wait=_CLOSE_WAIT)
                    if not self.done:  # the backend never answered the close: the connection is over
                        self.abort()
                        self._end(DROPPED, "")
        self._count(session.actions())
        result = replace(
            session.result(started_at=started_at, ended_at=utc_iso(time.time())),
            handshake=self.handshake,
            connected_at=connected_at if connected else None,
        )
        log.info(
            "session %d (%s): %d frames, %d differences",
            plan.session_id,
            plan.charge_point_id,
            len(result.frames),
            len(result.differences),
        )
        counters = ctx.counters
        counters.sessions_done += 1
        if ctx.progress is not None:
            ctx.progress(
                Progress(
                    counters.sessions_total,
                    counters.sessions_done,
                    counters.frames_sent,
                    counters.diffs,
                    result,
                )
            )
        return result

    # -- the loop ---------------------------------------------------------------------

    async def _drive(self, session: ReplaySession) -> None:
        """Perform the session's actions and advance it at its wakeup times until it is done.

        No task sleeps per session: a timer at the session's next wakeup, or a message that
        gives it something to do sooner, runs :meth:`_step` in the loop's turn."""
        self._over = self.loop.create_future()
        self._step()
        await self._over

    def _step(self) -> None:
        """Do what is due now, then set the timer for the session's next wakeup."""
        session = self.session
        assert session is not None
        self._timer = None
        self._stepping = True
        try:
            while True:
                self._perform(session)
                if session.done:
                    if self._over is not None and not self._over.done():
                        self._over.set_result(None)
                    return
                if session.has_actions:  # a send just failed: the session has more to say
                    continue
                wakeup = session.wakeup
                if wakeup is not None and wakeup <= self._now():
                    session.advance(self._now())
                    continue
                break
        finally:
            self._stepping = False
        self.sleeping_until = wakeup
        if wakeup is not None:
            self._timer = self.loop.call_at(self.anchor + wakeup, self._woken)

    def _woken(self) -> None:
        self._timer = None
        session = self.session
        assert session is not None
        wakeup = self.sleeping_until
        if wakeup is not None and self._now() >= wakeup:
            session.advance(self._now())
        self._step()

    def _wake(self) -> None:
        """Something to do sooner than the timer says: now (a step under way sees it itself)."""
        if self._over is None or self._over.done() or self._stepping:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._step()

    def _perform(self, session: ReplaySession) -> None:
        """Perform the actions in order."""
        for action in session.actions():
            if isinstance(action, Send):
                self._send(session, action)
            elif isinstance(action, Close):
                self._close(action)
            else:
                self.ctx.counters.diffs += 1
                if log.isEnabledFor(logging.DEBUG):
                    d = action.difference
                    log.debug("session %d: %s %s %s", d.session_id, d.kind, d.action or "-", d.path)

    def _count(self, actions: Sequence[Action]) -> None:
        self.ctx.counters.diffs += sum(1 for a in actions if isinstance(a, Finding))

    def _send(self, session: ReplaySession, send: Send) -> None:
        data = send.data
        sent = self.send(TEXT, data.encode()) if isinstance(data, str) else self.send(BINARY, data)
        if not sent:
            if not self.done:  # the close handshake is under way: the frame cannot go out
                session.closed(self._now(), DROPPED, "")
            return
        counters = self.ctx.counters
        counters.frames_sent += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("session %d sent seq %s at %.3f s", self.plan.session_id, send.seq, self._now())
        if self.ctx.progress is not None:
            self.ctx.progress(
                Progress(
                    counters.sessions_total, counters.sessions_done, counters.frames_sent, counters.diffs
                )
            )

    def _close(self, close: Close) -> None:
        """Close as the session says; the end of the connection is reported to it (ended), or
        after _CLOSE_WAIT without the backend's answer the connection is dropped."""
        if close.abort:
            # The charger vanished in the recording: end the TCP connection, no close frame.
            self.shutdown()
            return
        # close.code None: a close frame without a status code (the peer sees 1005), as recorded
        if self.send_close(close.code, close.reason if close.code is not None else ""):
            self.loop.call_later(_CLOSE_WAIT, self.abort)

    # -- the connection's callbacks (WsClient) --------------------------------------------------

    def message(self, opcode: int, payload: bytes | str) -> None:
        session = self.session
        if session is None:
            return
        session.receive(self._now(), payload)
        # Step now only when there is something to do sooner than the timer says: most answers
        # just settle a call.
        wakeup, sleeping = session.wakeup, self.sleeping_until
        if session.has_actions or (wakeup is not None and (sleeping is None or wakeup < sleeping)):
            self._wake()

    def ended(self, code: int | None, reason: str) -> None:
        if self.refusal is not None:  # this side ended it: a message refused, a backend not reading
            log.warning("session %d (%s): %s", self.plan.session_id, self.plan.charge_point_id, self.refusal)
        if self.session is not None:
            self.session.closed(self._now(), code, reason)
            self._wake()


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
_gc_ticker: asyncio.TimerHandle | None = None
#: Seconds between the young collections a replay runs itself (see ``_no_full_gc``).
YOUNG_GC_INTERVAL = 0.02


@contextlib.contextmanager
def _no_full_gc() -> Any:
    """Keep full (generation 2) garbage collections off the schedule while replays run, and
    young ones short.

    With a thousand sessions the heap holds a few hundred thousand containers (the loaded
    capture, the connections) and one full collection stops the loop for ~100 ms. Objects that
    exist when the run starts are frozen (never scanned again) and full collections are
    postponed until the last concurrent run ends. Thresholds are restored afterwards.

    Young collections are run every ``YOUNG_GC_INTERVAL`` seconds from the event loop (every
    tenth one of generation 1) on top of CPython's own: its trigger counts allocations minus
    deallocations of any generation, so while sessions end and free their old objects, tens of
    thousands of young objects pile up unexamined and the collection that finally comes stops
    the loop for 30-50 ms (measured at 10,000 sessions); examined every 20 ms they take well
    under a millisecond. Refcounting frees almost all garbage anyway. Needs a running loop.
    """
    global _gc_users, _gc_saved, _gc_ticker
    if _gc_users == 0:
        _gc_saved = gc.get_threshold()
        gc.collect()
        gc.freeze()
        gc.set_threshold(_gc_saved[0], _gc_saved[1], 1_000_000_000)
        _gc_ticker = asyncio.get_running_loop().call_later(YOUNG_GC_INTERVAL, _young_gc, 1)
    _gc_users += 1
    try:
        yield
    finally:
        _gc_users -= 1
        if _gc_users == 0 and _gc_saved is not None:
            if _gc_ticker is not None:
                _gc_ticker.cancel()
                _gc_ticker = None
            gc.set_threshold(*_gc_saved)
            gc.unfreeze()


def _young_gc(n: int) -> None:
    global _gc_ticker
    gc.collect(1 if n % 10 == 0 else 0)
    _gc_ticker = asyncio.get_running_loop().call_later(YOUNG_GC_INTERVAL, _young_gc, n + 1)


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
    store: Store | None,
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
    faithful: bool = True,
    optional_calls: Collection[str] = (),
    operator_calls_optional: bool = False,
    strict_end: bool = False,
    connect_ahead: float = DEFAULT_CONNECT_AHEAD,
    max_connecting: int = DEFAULT_MAX_CONNECTING,
    plans: Sequence[SessionPlan] | None = None,
    start_at: Callable[[], float] | None = None,
    load_ahead: float = LOAD_AHEAD,
    spool: ResultSpool | None = None,
    due: tuple[Sequence[Due], Timeline] | None = None,
) -> RunResult:
    """Replay the selected sessions of ``store`` against ``target`` and compare the answers.

    Each session dials ``connect_ahead`` seconds before its recorded start, at most
    ``max_connecting`` handshakes at a time (in the order of their starts), so that a ramp of
    thousands of handshakes (or a reconnect storm in the capture) does not make the frames of
    chargers already connected late, nor a session's first frame wait for its own handshake.
    Its frames keep their recorded times from its start. Handshake times are reported apart
    from lateness (``options["handshakes"]``).

    ``plans`` replays sessions planned already (a worker's shard, replay/workers.py: then
    ``store``, ``sessions``, ``speed``, ``max_gap`` and ``rewrite`` are not used), and
    ``start_at`` (blocking, called in a thread once the run is ready) gives the wall-clock time
    of the plans' time 0, which several processes share.

    ``rewrite`` changes the charger's frames before they are sent (core/rewrite.py); the run's
    ``options["rewritten"]`` lists each changed frame, recorded text beside rewritten.

    When ``stop`` is set (the CLI sets it on Ctrl-C), the sessions in progress are closed and
    the run ends with the sessions finished so far, marked ``interrupted``.

    Without ``sessions`` or ``plans`` the capture is streamed: each session is loaded and
    planned ``load_ahead`` replay seconds (at least twice ``connect_ahead``) before its start, in
    batches, so memory holds the sessions due soon and running, not the capture
    (``options["streamed"]``: sessions loaded, the most held at once).
    With ``spool``, each finished session's frames are written to a run opened when the replay
    starts (or the spool's, when it has one already) and are not kept (:class:`ResultSpool`);
    the result carries that run's id. ``due`` streams these sessions of the capture on this
    timeline (:func:`due_sessions`; a worker's shard) instead of the selection's.
    ``sessions`` may be given pre-loaded (then ``store`` and ``selection`` are not read).
    ``check_schema`` validates every answer and CALL of the backend against the official OCPP
    schema (a violation is a ``schema`` difference).
    ``quiet_gc`` postpones full garbage collections until the run ends (see ``_no_full_gc``).
    ``faithful`` (default) sends the charger's misbehaviour as recorded (pipelined calls,
    answers to calls the capture lacks); False plays a well-behaved charger.
    ``optional_calls`` (actions) and ``operator_calls_optional`` (the built-in
    :data:`~ocpp_replay.core.session.OPERATOR_CALLS`) mark recorded backend calls optional: never
    waited for, and reported as information when they do not come. ``strict_end`` makes calls
    after the recorded end of a session count in the exit status.
    The run is not stored: pass the result to :func:`store_run`.
    """
    rules = rules or RuleSet.default()
    if not speed > 0:
        raise ReplayError(f"speed must be positive, not {speed}")
    if answer_timeout <= 0 or grace < 0:
        raise ReplayError("answer timeout must be positive and grace not negative")
    if connect_ahead < 0 or max_connecting < 1:
        raise ReplayError("connect ahead must not be negative and max connecting must be 1 or more")
    target = target.rstrip("/")
    rewritten: list[dict[str, Any]] = []
    loader: _Loader | None = None
    entries: Sequence[SessionPlan | Due]
    if plans is None and sessions is None:  # the capture, streamed
        if store is None:
            raise ReplayError("run_replay needs a capture, sessions or plans")
        dues = (
            due
            if due is not None
            else await asyncio.to_thread(due_sessions, store, selection, speed, max_gap)
        )
        loader = _Loader(store, dues[0], dues[1], rules, rewrite, max(load_ahead, 2 * connect_ahead))
        entries = dues[0]
    elif plans is None:
        assert sessions is not None
        plans, rewritten = rewrite_plans(
            plan_sessions(sessions, speed=speed, max_gap=max_gap, rules=rules), rewrite
        )
        entries = plans
    else:
        entries = plans
    optional = frozenset(optional_calls) | (OPERATOR_CALLS if operator_calls_optional else frozenset())
    session_options = SessionOptions(
        answer_timeout=answer_timeout,
        grace=grace,
        keep_timestamps=keep_timestamps,
        check_schema=check_schema,
        faithful=faithful,
        optional_calls=optional,
    )
    await probe(target, connect_timeout)
    by_cp: dict[str, list[SessionPlan | Due]] = {}
    for entry in entries:
        by_cp.setdefault(entry.charge_point_id, []).append(entry)
    files = raise_open_file_limit()  # a charger's connection is a file
    if files and len(by_cp) > files - 64:
        log.warning(
            "%d chargers and a limit of %d open files: those connected at once past the limit fail "
            "(raise it with ulimit -n, or spread the chargers with --workers)",
            len(by_cp),
            files,
        )
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
        "faithful": faithful,
        "optional_calls": sorted(optional_calls),
        "operator_calls_optional": operator_calls_optional,
        "strict_end": strict_end,
        "connect_ahead": connect_ahead,
        "max_connecting": max_connecting,
    }
    loop = asyncio.get_running_loop()
    started_at = utc_iso(time.time())
    log.info("replay of %d sessions (%d charge points) against %s", len(entries), len(by_cp), target)
    results: dict[int, SessionResult] = {}
    ctx = _Context(
        endpoint=Endpoint.of(target),
        target=target,
        rules=rules,
        auth=dict(auth or {}),
        connect_timeout=connect_timeout,
        progress=progress,
        counters=_Counters(len(entries)),
        options=session_options,
        dialling=asyncio.Semaphore(max_connecting),
    )
    if loader is not None:
        await loader.preload()
    if spool is not None and spool.run_id is None:
        await spool.open(target, started_at)
    gc_guard = _no_full_gc() if quiet_gc else contextlib.nullcontext()
    gc_guard.__enter__()  # before the clock starts: entering it runs one full collection
    if start_at is not None:  # time 0 shared with other processes, as a wall-clock time
        zero = await asyncio.to_thread(start_at)
        run_start = loop.time() + (zero - time.time())
    else:  # the first sessions too are dialled ahead of their start
        run_start = loop.time() + start_delay + connect_ahead

    async def charger(cp_entries: list[SessionPlan | Due]) -> None:
        for entry in cp_entries:  # reconnects of one charger: in order, never overlapping
            anchor = max(run_start + entry.start, loop.time())
            delay = anchor - connect_ahead - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            plan = entry if isinstance(entry, SessionPlan) else await loader.plan(entry.session_id)  # type: ignore[union-attr]
            result = await _SessionRun(plan, ctx, anchor).run()
            results[plan.session_id] = spool.put(result) if spool is not None else result
            if loader is not None:
                loader.held -= 1

    async def every_charger() -> None:
        async with asyncio.TaskGroup() as tg:
            if loader is not None:
                tg.create_task(loader.run(lambda: loop.time() - run_start), name="replay-loader")
            for cp, cp_entries in by_cp.items():
                tg.create_task(charger(cp_entries), name=f"replay-{cp}")

    try:
        if not await _until_stopped(every_charger(), stop):
            options["interrupted"] = {"finished": len(results), "planned": len(entries)}
            log.info("replay interrupted: %d of %d sessions finished", len(results), len(entries))
    except BaseExceptionGroup as group:
        raise _first_error(group) from None
    finally:
        gc_guard.__exit__(None, None, None)
        if spool is not None:
            await spool.close()
    ordered = tuple(results[e.session_id] for e in entries if e.session_id in results)
    options["handshakes"] = handshake_summary(ordered)
    if loader is not None:
        rewritten = loader.rewritten
        options["streamed"] = {"loaded": loader.loaded, "most_held": loader.most_held, "ahead": loader.ahead}
    if rewritten:
        options["rewritten"] = rewritten
    return RunResult(
        target=target,
        started_at=started_at,
        ended_at=utc_iso(time.time()),
        sessions=ordered,
        options=options,
        run_id=spool.run_id if spool is not None else None,
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
    sessions: Sequence[tuple[SessionInfo, Sequence[FrameRecord]]] | None = None,
    **options: Any,
) -> RunResult:
    """Replay the selected sessions against BASELINE and CANDIDATE and compare their answers.

    The two replays run concurrently, each with its own correlation state (two
    :func:`run_replay` calls), unless ``sequential`` (default: when both URLs are the same
    backend, whose connections per charge point would replace each other). Then ``noise_runs``
    more replays against the baseline, one after the other, to learn noise. ``options`` are
    passed to :func:`run_replay` (speed, max_gap, keep_timestamps, auth, answer_timeout, ...);
    ``progress`` gets ``(side, Progress)``, side being baseline, candidate or noise N.
    ``sessions``, when given, are replayed instead of the selection's (a window, for example).
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
    if sessions is None:
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
