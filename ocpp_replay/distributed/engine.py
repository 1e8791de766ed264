"""The worker's engine process: ``python -m ocpp_replay.distributed.engine`` (asyncio, no gevent).

Reads one pickled :class:`~ocpp_replay.distributed.plan.Job` on stdin, replays its share with
:func:`ocpp_replay.replay.run_replay`, and writes JSON lines on stdout:

- ``{"x": [kind, action, rtt_ms, size, error]}`` per exchange, as each session finishes;
- ``{"result": "<base64 pickle of the RunResult>"}`` at the end;
- ``{"fleet": {...}}`` instead, in simulate mode (a :class:`FleetJob`): the fleet's counts;
- ``{"error": "one line"}`` (exit 2) when the target cannot be reached or the job is bad.

SIGTERM (the worker stopping) ends the replay like Ctrl-C ends a local one: the finished
sessions come back, the run marked ``interrupted``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import queue
import signal
import sys
import threading
from collections.abc import Callable
from typing import IO, Any, cast

from ocpp_replay.core.rules import parse_rules
from ocpp_replay.distributed.plan import FleetJob, Job, dumps, exchanges, loads
from ocpp_replay.errors import OcppReplayError
from ocpp_replay.replay import Progress, run_replay
from ocpp_replay.store import Store


def _line(out: IO[str], obj: dict[str, Any]) -> None:
    out.write(json.dumps(obj, separators=(",", ":")) + "\n")


class _Lines:
    """Lines for the worker, written by a thread: a worker slow to drain the pipe (a busy
    machine) blocks this thread, never the event loop that keeps the replay on time."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._write, name="engine-lines", daemon=True)
        self.thread.start()

    def put(self, text: str) -> None:
        self.queue.put(text)

    def _write(self) -> None:
        with contextlib.suppress(BrokenPipeError, ValueError):
            while (text := self.queue.get()) is not None:
                self.out.write(text)
                if self.queue.empty():
                    self.out.flush()
            self.out.flush()

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()


def _wait_eof(loop: asyncio.AbstractEventLoop, stop: Callable[[], object]) -> None:
    while sys.stdin.buffer.read(65536):
        pass
    loop.call_soon_threadsafe(stop)


def read_job(stream: IO[bytes]) -> Job | FleetJob:
    """The job: its length in bytes on one line, then the pickle."""
    header = stream.readline(32)
    try:
        size = int(header)
    except ValueError:
        raise OcppReplayError("the engine expects a job's length on its first line") from None
    job = loads(stream.read(size))
    if not isinstance(job, Job | FleetJob):
        raise OcppReplayError("the engine was sent something that is not a job")
    return job


async def replay(job: Job, out: IO[str]) -> int:
    options = dict(job.options)
    rules_text = options.pop("rules_text", None)
    rules = parse_rules(rules_text, source=options.pop("rules_source", "rules")) if rules_text else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # The worker keeps our stdin open; its end (the worker died) stops the replay.
    threading.Thread(target=_wait_eof, args=(loop, stop.set), daemon=True).start()

    lines = _Lines(out)

    def progress(p: Progress) -> None:
        if p.finished is None:
            return
        text = "".join(
            json.dumps({"x": [x.kind, x.action, round(x.rtt_ms, 3), x.size, x.error]}, separators=(",", ":"))
            + "\n"
            for x in exchanges(p.finished)
        )
        lines.put(text)

    try:
        result = await run_replay(
            cast(Store, None),  # not read: the sessions come with the job
            job.target,
            sessions=job.share.sessions,
            rules=rules,
            progress=progress,
            stop=stop,
            **options,
        )
    finally:
        await asyncio.to_thread(lines.close)
    _line(out, {"result": base64.b64encode(dumps(result)).decode("ascii")})
    out.flush()
    return 0


async def simulate(job: FleetJob, out: IO[str]) -> int:
    """Simulate mode: the job's virtual chargers, one line per CALL as it is answered."""
    from ocpp_replay.simulate.runner import run_fleet

    lines = _Lines(out)
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    threading.Thread(target=_wait_eof, args=(loop, task.cancel), daemon=True).start()

    def on_call(action: str, seconds: float, error: str | None) -> None:
        x = ["OCPP", action, round(seconds * 1000, 3), 0, None if error is None else f"CALLERROR {error}"]
        if error == "timeout":
            x[4] = "no answer"
        lines.put(json.dumps({"x": x}, separators=(",", ":")) + "\n")

    try:
        result = await run_fleet(
            job.target, chargers=job.chargers, id_prefix=job.id_prefix, on_call=on_call, **job.options
        )
    finally:
        await asyncio.to_thread(lines.close)
    summary = {
        "chargers": len(result.chargers),
        "transactions": sum(c.transactions for c in result.chargers),
        "calls": result.sent.total(),
        "problems": dict(result.problem_counts()),
        "broken": [str(p) for p in result.broken[:20]],
        "broken_count": len(result.broken),
    }
    _line(out, {"fleet": summary})
    out.flush()
    return 0


def main() -> int:
    out = sys.stdout
    try:
        job = read_job(sys.stdin.buffer)
        if isinstance(job, FleetJob):
            return asyncio.run(simulate(job, out))
        return asyncio.run(replay(job, out))
    except OcppReplayError as exc:
        _line(out, {"error": str(exc)})
        out.flush()
        return 2
    except (BrokenPipeError, asyncio.CancelledError):  # the worker is gone, or stopped us
        return 2


if __name__ == "__main__":
    sys.exit(main())
