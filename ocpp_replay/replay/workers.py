"""``replay --workers N``: the charge points of a replay sharded over worker processes.

One process runs one event loop on one core; a fleet's replay (thousands of handshakes, tens of
thousands of frames a minute) wants every core. The parent plans every session once (one
timeline, so ``--max-gap`` and the start order are the same as in one process), shards the plans
by charge point (a charger's sessions stay in one worker, in order, and so does its correlation
of assigned ids), balanced by the frames each sends, and starts N processes (``spawn``: no
fork of a running event loop). Each worker replays its shard with :func:`run_replay`; when all
are ready, the parent gives them one wall-clock time 0, so the shards keep the recorded timing
between them. Progress comes back through a queue (throttled; a finished session with its
result), and the parent merges the workers' results into one run, in the order one process
would have produced: one stored run, one report, the same differences as ``--workers 1``.

Ctrl-C: the workers ignore SIGINT; the parent's stop reaches them through an event, and they end
their sessions in progress as one process does (the run is marked ``interrupted``).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from multiprocessing.context import SpawnProcess
from multiprocessing.sharedctypes import Synchronized
from typing import Any, Final, TypeVar

from ocpp_replay.core.results import RunResult, SessionResult, handshake_summary
from ocpp_replay.core.rewrite import Rewriter, rewrite_plans
from ocpp_replay.core.rules import RuleSet
from ocpp_replay.core.schedule import SessionPlan, Timeline, plan_sessions
from ocpp_replay.errors import OcppReplayError, ReplayError
from ocpp_replay.replay.runner import (
    DEFAULT_CONNECT_AHEAD,
    Due,
    Progress,
    ProgressCallback,
    ResultSpool,
    Selection,
    due_sessions,
    load_sessions,
    run_replay,
)
from ocpp_replay.store import FrameRecord, SessionInfo, Store

__all__ = ["AUTO_MIN_CHARGE_POINTS", "auto_workers", "run_replay_workers", "shard_plans"]

log = logging.getLogger(__name__)

_E = TypeVar("_E", SessionPlan, Due)

#: With ``--workers auto``: fewer charge points than this replay in one process (starting
#: processes costs about half a second each, and one loop has room for them).
AUTO_MIN_CHARGE_POINTS: Final = 500
#: Seconds the workers have to start, plan and probe the target before time 0 is given.
_READY_TIMEOUT: Final = 120.0
#: Seconds between progress messages of a worker (a finished session is sent at once).
_PROGRESS_EVERY: Final = 0.25


def auto_workers(charge_points: int) -> int:
    """The workers of ``--workers auto``: one per core for a fleet, one below AUTO_MIN_CHARGE_POINTS."""
    if charge_points < AUTO_MIN_CHARGE_POINTS:
        return 1
    return max(1, min(os.cpu_count() or 1, charge_points))


def shard_plans(plans: Sequence[SessionPlan], workers: int) -> list[list[SessionPlan]]:
    """Plans by charge point over ``workers`` shards: each charger whole and in order, the
    heaviest chargers (frames to send) first to the lightest shard."""
    return _shard(plans, workers, lambda p: len(p.steps))


def shard_dues(dues: Sequence[Due], workers: int) -> list[list[Due]]:
    """:func:`shard_plans` for sessions not planned yet (a streamed replay): weighed by their
    recorded frames."""
    return _shard(dues, workers, lambda d: d.info.frames)


def _shard(entries: Sequence[_E], workers: int, weight: Callable[[_E], int]) -> list[list[_E]]:
    by_cp: dict[str, list[_E]] = {}
    for entry in entries:
        by_cp.setdefault(entry.charge_point_id, []).append(entry)
    weights = sorted(
        ((sum(weight(e) for e in cp_entries) + 1, cp) for cp, cp_entries in by_cp.items()),
        key=lambda w: (-w[0], w[1]),
    )
    load = [0] * workers
    shards: list[list[_E]] = [[] for _ in range(workers)]
    for w, cp in weights:
        i = min(range(workers), key=load.__getitem__)
        load[i] += w
        shards[i].extend(by_cp[cp])
    return [sorted(s, key=lambda e: (e.start, e.session_id)) for s in shards if s]


# ----------------------------------------------------------------------------- the worker


@dataclass(frozen=True, slots=True)
class _Streamed:
    """A worker's shard of a streamed replay: it reads its sessions from the capture itself and
    writes each finished session's frames into the run the parent opened."""

    capture: str
    dues: list[Due]
    timeline: Timeline
    results: str | None  # the database of the run (the capture, or a results file)
    run_id: int | None


def _work(
    index: int,
    shard: list[SessionPlan] | _Streamed,
    target: str,
    options: dict[str, Any],
    out: multiprocessing.Queue[Any],
    zero: Synchronized[float],
    halt: Synchronized[int],
    report: bool,
) -> None:
    """A worker process: replay ``shard``, send progress and the result through ``out``.
    ``zero`` is 0 until the parent gives time 0; ``halt`` becomes 1 to stop. (Shared values
    polled, not multiprocessing events: an event waited on with a timeout can leave its
    condition's count behind, and a later set() then blocks.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    logging.basicConfig(level=logging.WARNING)

    def start_at() -> float:
        out.put(("ready", index))
        while not zero.value and not halt.value:
            time.sleep(0.005)
        return float(zero.value) or time.time()

    last = [0.0]

    def progress(p: Progress) -> None:
        now = time.monotonic()
        if p.finished is not None or now - last[0] >= _PROGRESS_EVERY:
            last[0] = now
            out.put(("progress", index, p.sessions_done, p.frames_sent, p.diffs, p.finished))

    async def main(stores: list[Store]) -> RunResult:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()

        def watch() -> None:
            while not halt.value:
                time.sleep(0.1)
            loop.call_soon_threadsafe(stopping.set)

        threading.Thread(target=watch, daemon=True, name="replay-worker-stop").start()
        common: dict[str, Any] = {
            "start_at": start_at,
            "progress": progress if report else None,  # no callback per frame when nobody watches
            "stop": stopping,
            **options,
        }
        if isinstance(shard, list):  # planned by the parent: the capture is not read here
            return await run_replay(None, target, plans=shard, **common)
        writes_capture = shard.results == shard.capture  # the run goes into the capture itself
        capture = Store.open(shard.capture, read_only=not writes_capture)
        stores.append(capture)
        spool = None
        if shard.results is not None and shard.run_id is not None:
            results = capture if writes_capture else Store.open(shard.results)
            stores.append(results)
            spool = ResultSpool(results)
            await spool.attach(shard.run_id)
        return await run_replay(capture, target, due=(shard.dues, shard.timeline), spool=spool, **common)

    stores: list[Store] = []
    try:
        result = asyncio.run(main(stores))
    except OcppReplayError as exc:
        out.put(("error", index, type(exc).__name__, str(exc)))
        return
    except BaseException as exc:
        out.put(("error", index, "ReplayError", f"worker {index} failed: {type(exc).__name__}: {exc}"))
        return
    finally:
        for store in {id(s): s for s in stores}.values():
            store.close()
    out.put(("result", index, result))


# ----------------------------------------------------------------------------- the parent


async def run_replay_workers(
    store: Store,
    target: str,
    *,
    workers: int,
    selection: Selection = Selection(),
    sessions: Sequence[tuple[SessionInfo, Sequence[FrameRecord]]] | None = None,
    speed: float = 1.0,
    max_gap: float | None = None,
    rules: RuleSet | None = None,
    rewrite: Rewriter | None = None,
    progress: ProgressCallback | None = None,
    stop: asyncio.Event | None = None,
    connect_ahead: float = DEFAULT_CONNECT_AHEAD,
    start_delay: float = 0.05,
    spool: ResultSpool | None = None,
    due: tuple[Sequence[Due], Timeline] | None = None,
    **options: Any,
) -> RunResult:
    """:func:`run_replay` over ``workers`` processes (see the module's text). ``options`` are
    run_replay's other keyword arguments (answer_timeout, grace, auth, ...); they must pickle.

    Without ``sessions`` (and without ``rewrite``) the replay is streamed: the parent reads
    only the sessions' rows and their timeline (or takes them as ``due``, e.g. an amplified
    replay's copies), and each worker loads its own sessions ahead of their starts; with
    ``spool`` the parent opens the run and each worker writes its finished sessions' frames into
    it (as :func:`run_replay` does in one process)."""
    if workers < 1:
        raise ReplayError(f"workers must be 1 or more, not {workers}")
    rules = rules or RuleSet.default()
    rewritten: list[dict[str, Any]] = []
    shards: Sequence[list[SessionPlan] | _Streamed]
    order: list[int]  # session ids in the order one process gives them
    if sessions is None and (rewrite is None or rewrite.empty):  # streamed: each worker reads its own
        if due is None:
            due = await asyncio.to_thread(due_sessions, store, selection, speed, max_gap)
        dues, timeline = due
        if spool is not None and spool.run_id is None:
            from ocpp_replay.store import utc_iso

            await spool.open(target.rstrip("/"), utc_iso(time.time()))
        shards = [
            _Streamed(
                str(store.path),
                shard,
                timeline,
                str(spool.store.path) if spool is not None else None,
                spool.run_id if spool is not None else None,
            )
            for shard in shard_dues(list(dues), workers)
        ]
        order = [d.session_id for d in dues]
    else:
        if sessions is None:
            sessions = await asyncio.to_thread(load_sessions, store, selection)
        plans, rewritten = rewrite_plans(
            plan_sessions(sessions, speed=speed, max_gap=max_gap, rules=rules), rewrite
        )
        shards = shard_plans(plans, workers)
        order = [p.session_id for p in plans]
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[Any] = ctx.Queue()
    zero: Synchronized[float] = ctx.Value("d", 0.0)
    halt: Synchronized[int] = ctx.Value("b", 0)
    kw = dict(options, rules=rules, connect_ahead=connect_ahead)
    procs: list[SpawnProcess] = [
        ctx.Process(
            target=_work,
            args=(i, shard, target, kw, out, zero, halt, progress is not None),
            name=f"ocpp-replay-worker-{i}",
            daemon=True,
        )
        for i, shard in enumerate(shards)
    ]
    log.info("replay of %d sessions over %d workers", len(order), len(procs))
    for p in procs:
        p.start()
    try:
        results = await _collect(procs, out, zero, halt, len(order), connect_ahead + start_delay,
                                 progress, stop)  # fmt: skip
    finally:
        halt.value = 1
        for p in procs:
            await asyncio.to_thread(p.join, 10)
            if p.is_alive():
                p.kill()
        if spool is not None:
            await spool.close()
    merged = _merge(
        results, order, rewritten, speed=speed, max_gap=max_gap, selection=selection, workers=len(procs)
    )
    return replace(merged, run_id=spool.run_id) if spool is not None else merged


async def _collect(
    procs: list[SpawnProcess],
    out: multiprocessing.Queue[Any],
    zero: Synchronized[float],
    halt: Synchronized[int],
    total: int,
    lead: float,
    progress: ProgressCallback | None,
    stop: asyncio.Event | None,
) -> list[RunResult]:
    """Wait for every worker's result; give time 0 when all are ready; pass progress on."""
    results: dict[int, RunResult] = {}
    ready: set[int] = set()
    counts: dict[int, tuple[int, int, int]] = {}
    started = time.monotonic()
    while len(results) < len(procs):
        if stop is not None and stop.is_set():
            halt.value = 1
        try:
            msg = await asyncio.to_thread(out.get, True, 0.2)
        except queue.Empty:
            msg = None
        if msg is None:
            for i, p in enumerate(procs):
                if i not in results and p.exitcode is not None and p.exitcode != 0:
                    raise ReplayError(f"replay worker {i} exited with code {p.exitcode}")
            if len(ready) < len(procs) and time.monotonic() - started > _READY_TIMEOUT:
                raise ReplayError(f"replay workers not ready within {_READY_TIMEOUT:g} s")
            continue
        kind, index = msg[0], msg[1]
        if kind == "ready":
            ready.add(index)
            if len(ready) == len(procs):
                zero.value = time.time() + lead
        elif kind == "progress":
            counts[index] = msg[2:5]
            if progress is not None:
                done, sent, diffs = (sum(c[k] for c in counts.values()) for k in range(3))
                progress(Progress(total, done, sent, diffs, msg[5]))
        elif kind == "result":
            results[index] = msg[2]
        elif kind == "error":
            raise _error(msg[2], msg[3])
    return [results[i] for i in sorted(results)]


def _error(kind: str, message: str) -> OcppReplayError:
    import ocpp_replay.errors as errors

    cls = getattr(errors, kind, ReplayError)
    return (
        cls(message) if isinstance(cls, type) and issubclass(cls, OcppReplayError) else ReplayError(message)
    )


def _merge(
    results: list[RunResult],
    planned: Sequence[int],
    rewritten: list[dict[str, Any]],
    *,
    speed: float,
    max_gap: float | None,
    selection: Selection,
    workers: int,
) -> RunResult:
    """One run from the workers' runs, its sessions in the order one process gives them."""
    order = {sid: i for i, sid in enumerate(planned)}
    sessions: tuple[SessionResult, ...] = tuple(
        sorted((s for r in results for s in r.sessions), key=lambda s: order[s.session_id])
    )
    options: dict[str, Any] = dict(results[0].options)
    options.update(
        speed=speed,
        max_gap=max_gap,
        selection={
            "session_ids": list(selection.session_ids),
            "charge_points": list(selection.charge_points),
            "since": selection.since,
            "until": selection.until,
        },
        workers=workers,
        handshakes=handshake_summary(sessions),
    )
    streamed = [r.options["streamed"] for r in results if isinstance(r.options.get("streamed"), Mapping)]
    if streamed:  # most_held: the workers' peaks added (at most that many at once)
        options["streamed"] = {k: sum(x[k] for x in streamed) for k in ("loaded", "most_held")}
    options.pop("rewritten", None)
    if rewritten:
        options["rewritten"] = rewritten
    stopped = [r.options["interrupted"] for r in results if isinstance(r.options.get("interrupted"), Mapping)]
    options.pop("interrupted", None)
    if stopped:
        options["interrupted"] = {"finished": len(sessions), "planned": len(planned)}
    return replace(
        results[0],
        started_at=min(r.started_at for r in results),
        ended_at=max(r.ended_at for r in results),
        sessions=sessions,
        options=options,
    )
