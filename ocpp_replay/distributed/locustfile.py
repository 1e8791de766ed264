"""ocpp-replay on Locust: ``locust -f <this file> --master ...`` and ``--worker --master-host ...``.

The master opens the capture, splits its charge points over the connected workers
(:func:`~ocpp_replay.distributed.plan.split`) and sends each worker its sessions (no shared
filesystem). Each worker runs our asyncio replay engine in a child process
(:mod:`ocpp_replay.distributed.engine`; gevent and asyncio never share a thread) and turns the
engine's lines into ``environment.events.request`` (request type ``OCPP``, name the action; a
CALLERROR or a difference is a failure), so Locust's UI, CSV and HTML show every OCPP action.
At the end each worker sends its result back; the master merges them into one run stored in
the capture, as a local ``ocpp-replay replay`` would (``runs``, ``report``, JSON/JUnit/HTML).

A worker that goes missing (Locust's heartbeat) before its result arrives: the master stores
the finished sessions as an incomplete run and names the charge points that were not replayed.
Without ``--master``/``--worker`` Locust's local runner plays both parts in one process.
"""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import gevent
from locust import User, constant, events, task
from locust.env import Environment
from locust.runners import STATE_MISSING, LocalRunner, MasterRunner, WorkerRunner

from ocpp_replay.core.results import RunResult
from ocpp_replay.distributed.plan import (
    FleetJob,
    Job,
    MessageError,
    dumps,
    loads,
    merge_results,
    split,
    split_fleet,
)
from ocpp_replay.errors import OcppReplayError, ReplayError
from ocpp_replay.replay import Selection, load_sessions, store_run
from ocpp_replay.replay.amplify import load_amplified
from ocpp_replay.store import FrameRecord, SessionInfo, Store, utc_iso
from ocpp_replay.store.files import read_rules_text

log = logging.getLogger("ocpp_replay.distributed")

JOB = "ocpp_replay_job"
RESULT = "ocpp_replay_result"


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("ocpp-replay", "Replay a capture (see docs/distributed.md)")
    group.add_argument("--capture", default="capture.db", help="The capture to replay (read by the master).")
    group.add_argument("--target", default="", help="ws:// URL of the CSMS under test.")
    group.add_argument("--session", action="append", type=int, default=[], help="Replay this session.")
    group.add_argument("--charge-point", action="append", default=[], help="Replay this charger's sessions.")
    group.add_argument("--since", default=None, help="Sessions started at or after this ISO time (UTC).")
    group.add_argument("--until", default=None, help="Sessions started before this ISO time (UTC).")
    group.add_argument("--speed", type=float, default=1.0, help="Time scale: 2 replays twice as fast.")
    group.add_argument("--max-gap", type=float, default=None, help="Shorten idle gaps to this many seconds.")
    group.add_argument("--rules", default=None, help="TOML rules file (read by the master).")
    group.add_argument("--answer-timeout", type=float, default=10.0, help="Seconds to wait for an answer.")
    group.add_argument(
        "--amplify",
        type=int,
        default=0,
        metavar="N",
        help="Replay each session N times as N distinct chargers.",
    )
    group.add_argument(
        "--amplify-spread", type=float, default=0.0, metavar="SECONDS", help="Spread the copies' starts."
    )
    sim = parser.add_argument_group("ocpp-replay simulate", "A virtual fleet instead of a capture")
    sim.add_argument("--simulate", type=int, default=0, metavar="N", help="Run N virtual chargers instead.")
    sim.add_argument("--ocpp-version", default="1.6", help="1.6, 2.0.1, 2.1 or several, comma separated.")
    sim.add_argument("--scenario", default="session", help="A built-in scenario or a TOML file.")
    sim.add_argument("--time-scale", type=float, default=1.0, help="Real seconds per virtual second.")
    sim.add_argument("--cycles", type=int, default=1, help="Scenario cycles per charger.")
    sim.add_argument("--id-prefix", default="ALF-", help="Charger ids: PREFIX w<worker>-<n>.")


class OcppReplayUser(User):
    """Locust needs a user class; the replay is driven by the master's messages, not by users.
    Start one user per worker (``-u`` = number of workers): it only idles."""

    wait_time = constant(3600)

    @task
    def idle(self) -> None:
        """Nothing: the worker's engine process does the replaying."""


# ----------------------------------------------------------------------------- master


class _Master:
    def __init__(self, env: Environment) -> None:
        self.env = env
        self.pending: dict[str, tuple[str, ...]] = {}  # worker -> its charge points
        self.results: dict[str, RunResult] = {}
        self.errors: list[str] = []
        self.order: list[int] = []
        self.started_at = ""
        self.options: dict[str, Any] = {}
        self.done = False
        self.lost: dict[str, tuple[str, ...]] = {}  # worker gone missing -> its charge points
        self.fleet: dict[str, dict[str, Any]] | None = None  # simulate mode: worker -> summary

    def start(self) -> None:
        runner = self.env.runner
        opts = self.env.parsed_options
        assert runner is not None and opts is not None
        if self.pending or self.done:
            return  # one replay per master process
        if opts.simulate:
            self._start_fleet(opts)
            return
        try:
            job_options, loaded = self._load(opts)
        except OcppReplayError as exc:
            self._fail(str(exc))
            return
        workers = (
            ["local"]
            if isinstance(runner, LocalRunner)
            else list(runner.clients)
            if isinstance(runner, MasterRunner)
            else []
        )
        shares = split(loaded, len(workers))
        self.order = [info.id for info, _ in loaded]
        self.started_at = utc_iso(time.time())
        public = {k: v for k, v in job_options.items() if k not in ("rules_text", "rules_source")}
        self.options = {**public, "capture": opts.capture, "rules": opts.rules}
        for worker, share in zip(workers, shares, strict=True):
            self.pending[worker] = share.charge_points
            log.info(
                "worker %s replays %d charge points (%d sessions)",
                worker,
                len(share.charge_points),
                len(share.sessions),
            )
        for worker, share in zip(workers, shares, strict=True):
            job = Job(capture=str(opts.capture), target=opts.target, share=share, options=job_options)
            runner.send_message(JOB, dumps(job), client_id=None if worker == "local" else worker)
        if not isinstance(runner, LocalRunner):
            gevent.spawn(self._watch)

    def _start_fleet(self, opts: Any) -> None:
        runner = self.env.runner
        assert runner is not None
        if not opts.target:
            self._fail("--target is required (the ws:// URL of the CSMS under test)")
            return
        workers = list(runner.clients) if isinstance(runner, MasterRunner) else ["local"]
        if not workers:
            self._fail("no worker is connected to the master")
            return
        self.fleet = {}
        options = {
            "version": opts.ocpp_version,
            "scenario": opts.scenario,
            "time_scale": opts.time_scale,
            "cycles": opts.cycles,
            "answer_timeout": opts.answer_timeout,
        }
        for i, (worker, (count, prefix)) in enumerate(
            zip(workers, split_fleet(opts.simulate, len(workers), opts.id_prefix), strict=True)
        ):
            self.pending[worker] = (f"{prefix}* ({count} chargers)",)
            log.info("worker %s runs %d virtual chargers (%s...)", worker, count, prefix)
            job = FleetJob(opts.target, count, prefix, {**options, "seed": i})
            runner.send_message(JOB, dumps(job), client_id=None if worker == "local" else worker)
        if isinstance(runner, MasterRunner):
            gevent.spawn(self._watch)

    def _load(self, opts: Any) -> tuple[dict[str, Any], Sequence[Any]]:
        if not opts.target:
            raise ReplayError("--target is required (the ws:// URL of the CSMS under test)")
        if not opts.speed > 0:
            raise ReplayError(f"--speed must be positive, not {opts.speed}")
        options: dict[str, Any] = {
            "speed": opts.speed,
            "max_gap": opts.max_gap,
            "answer_timeout": opts.answer_timeout,
            "selection": Selection(
                session_ids=tuple(opts.session),
                charge_points=tuple(opts.charge_point),
                since=opts.since,
                until=opts.until,
            ),
        }
        if opts.rules:
            from ocpp_replay.core.rules import parse_rules

            text = read_rules_text(opts.rules)
            parse_rules(text, source=opts.rules)  # a bad rules file is the master's error, once
            options["rules_text"], options["rules_source"] = text, opts.rules
        if opts.amplify < 0 or (opts.amplify and not opts.amplify_spread >= 0):
            raise ReplayError("--amplify must be 1 or more and --amplify-spread not negative")
        store = Store.open(opts.capture)
        loaded: Sequence[tuple[SessionInfo, Sequence[FrameRecord]]]
        try:
            if opts.amplify:  # copies made once, here, and split over the workers like sessions
                loaded = load_amplified(store, options["selection"], opts.amplify, opts.amplify_spread)
            else:
                loaded = load_sessions(store, options["selection"])
        finally:
            store.db.conn.close()
        return options, loaded

    def on_result(self, environment: Environment, msg: Any, **_: Any) -> None:
        worker = str(msg.node_id)
        if worker not in self.pending or worker in self.results:
            return
        data = msg.data or {}
        if "error" in data:
            self._fail(f"worker {worker}: {data['error']}")
            return
        if self.fleet is not None and "fleet" in data:
            self.fleet[worker] = dict(data["fleet"])
            self._maybe_finish()
            return
        try:
            result = loads(data["result"])
            if not isinstance(result, RunResult):
                raise MessageError("a worker's result is not a run")
        except (KeyError, MessageError) as exc:
            self._fail(f"worker {worker}: {exc}")
            return
        self.results[worker] = result
        log.info("worker %s finished: %d sessions", worker, len(result.sessions))
        self._maybe_finish()

    def _watch(self) -> None:
        runner = self.env.runner
        assert isinstance(runner, MasterRunner)
        while not self.done:
            gevent.sleep(0.5)
            for worker in list(self.pending):
                if worker in self.results or worker in self.lost or worker in (self.fleet or {}):
                    continue
                node = runner.clients.get(worker)
                if node is None or node.state == STATE_MISSING:
                    log.error("worker %s went missing before its result", worker)
                    self.lost[worker] = self.pending[worker]
            self._maybe_finish()

    def _maybe_finish(self) -> None:
        finished = len(self.results) + len(self.lost) + len(self.fleet or {})
        if self.done or finished < len(self.pending):
            return
        self.done = True
        if self.fleet is not None:
            self._finish_fleet(self.fleet)
            return
        opts = self.env.parsed_options
        assert opts is not None
        parts = list(self.results.values())
        run = merge_results(
            parts,
            target=opts.target.rstrip("/"),
            started_at=self.started_at,
            ended_at=utc_iso(time.time()),
            order=self.order,
            options={**self.options, "selection": _selection_dict(self.options["selection"])},
            missing=self.lost,
        )
        store = Store.open(opts.capture)
        try:
            run = store_run(store, run)
        finally:
            store.db.conn.close()
        log.info(
            "ocpp-replay run %s stored in %s: %d sessions, %d messages, %d differences",
            run.run_id,
            opts.capture,
            len(run.sessions),
            run.messages,
            len(run.gating),
        )
        if self.lost:
            missing = sorted(cp for cps in self.lost.values() for cp in cps)
            log.error(
                "error: run %s is incomplete: charge points not replayed (worker %s lost): %s",
                run.run_id,
                ", ".join(sorted(self.lost)),
                ", ".join(missing),
            )
            self.env.process_exit_code = 2
        else:
            self.env.process_exit_code = 1 if run.gating else 0
        self._quit()

    def _finish_fleet(self, parts: dict[str, dict[str, Any]]) -> None:
        problems: dict[str, int] = {}
        for part in parts.values():
            for kind, n in part["problems"].items():
                problems[kind] = problems.get(kind, 0) + int(n)
        broken = [b for part in parts.values() for b in part["broken"]]
        log.info(
            "ocpp-replay fleet: %d chargers, %d transactions, %d calls, problems %s",
            sum(int(p["chargers"]) for p in parts.values()),
            sum(int(p["transactions"]) for p in parts.values()),
            sum(int(p["calls"]) for p in parts.values()),
            ", ".join(f"{k} {n}" for k, n in sorted(problems.items())) or "none",
        )
        for line in broken[:20]:
            log.info("  %s", line)
        if self.lost:
            missing = sorted(cp for cps in self.lost.values() for cp in cps)
            log.error("error: the fleet is incomplete: not run (worker lost): %s", ", ".join(missing))
            self.env.process_exit_code = 2
        else:
            self.env.process_exit_code = 1 if sum(int(p["broken_count"]) for p in parts.values()) else 0
        self._quit()

    def _fail(self, message: str) -> None:
        if self.done:
            return
        self.done = True
        log.error("error: %s", message)
        self.env.process_exit_code = 2
        self._quit()

    def _quit(self) -> None:
        runner = self.env.runner
        assert runner is not None
        # Off this greenlet: quitting kills the greenlets, the message handler's among them.
        gevent.spawn_later(0.1, runner.quit)


def _selection_dict(selection: Selection) -> dict[str, Any]:
    return {
        "session_ids": list(selection.session_ids),
        "charge_points": list(selection.charge_points),
        "since": selection.since,
        "until": selection.until,
    }


# ----------------------------------------------------------------------------- worker


class _Worker:
    def __init__(self, env: Environment) -> None:
        self.env = env
        self.engine: subprocess.Popen[bytes] | None = None

    def on_job(self, environment: Environment, msg: Any, **_: Any) -> None:
        gevent.spawn(self._run, bytes(msg.data))

    def _run(self, job: bytes) -> None:
        runner = self.env.runner
        assert runner is not None
        reply: dict[str, Any] | None = None
        # The engine reads the job, then watches its stdin: when this process dies the pipe
        # closes and the engine stops, so no replay outlives its worker.
        engine = subprocess.Popen(
            [sys.executable, "-m", "ocpp_replay.distributed.engine"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.engine = engine
        assert engine.stdin is not None and engine.stdout is not None
        engine.stdin.write(b"%d\n" % len(job) + job)
        engine.stdin.flush()
        fire = self.env.events.request.fire
        for raw in engine.stdout:
            line = json.loads(raw)
            if "x" in line:
                kind, action, rtt, size, error = line["x"]
                fire(
                    request_type=kind,
                    name=action,
                    response_time=rtt,
                    response_length=size,
                    exception=None if error is None else OcppFailure(error),
                    context={},
                )
            elif "result" in line:
                reply = {"result": base64.b64decode(line["result"])}
            elif "fleet" in line:
                reply = {"fleet": line["fleet"]}
            elif "error" in line:
                reply = {"error": str(line["error"])}
        code = engine.wait()
        if reply is None:
            reply = {"error": f"the replay engine exited with code {code} and no result"}
        runner.send_message(RESULT, reply)

    def stop(self, **_: Any) -> None:
        if self.engine is not None and self.engine.poll() is None:
            self.engine.terminate()


class OcppFailure(Exception):
    """A CALLERROR, a difference or a missing answer, as a Locust failure."""


@events.init.add_listener
def _init(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    if isinstance(runner, MasterRunner | LocalRunner):
        master = _Master(environment)
        runner.register_message(RESULT, master.on_result)
        environment.events.test_start.add_listener(lambda **_: master.start())
    if isinstance(runner, WorkerRunner | LocalRunner):
        worker = _Worker(environment)
        runner.register_message(JOB, worker.on_job)
        environment.events.quitting.add_listener(worker.stop)
