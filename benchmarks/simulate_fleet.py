"""Many virtual Alfen chargers in one process against the reference CSMS.

    python benchmarks/simulate_fleet.py [--chargers 1000] [--version 1.6] [--scenario session]
                                        [--time-scale 0.01] [--csms-process]
    python benchmarks/simulate_fleet.py --chargers 10000 --time-scale 1 --duration 300

``--duration`` stops the fleet after that many real seconds and reports from its live counts
(chargers online, CALLs, problems), with the simulator's CPU share over the second half of the
run (the ramp of connections left out) besides its total.

By default the reference CSMS runs in a subprocess (``ocpp-replay csms``), so the figures are
the simulator's own: wall time, CALLs sent, problems, CPU time and peak RSS of this process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import subprocess
import sys
import time
from collections.abc import Coroutine
from typing import Any

from loopback import free_port, wait_port  # benchmarks/loopback.py, beside this script


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chargers", type=int, default=1000)
    ap.add_argument("--version", default="1.6")
    ap.add_argument("--scenario", default="session")
    ap.add_argument("--time-scale", type=float, default=0.01)
    ap.add_argument("--ramp-up", type=float, default=None, help="virtual seconds over which chargers connect")
    ap.add_argument("--duration", type=float, default=None, help="stop after this many real seconds")
    args = ap.parse_args()
    seen: list[Any] = []  # FleetProgress, four times a second
    marks: list[tuple[float, float]] = []

    from ocpp_replay.simulate import run_fleet

    port = free_port()
    csms = subprocess.Popen(
        [sys.executable, "-m", "ocpp_replay.cli", "csms", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        cpu0 = time.process_time()
        t0 = time.monotonic()
        fleet = run_fleet(
            f"ws://127.0.0.1:{port}/ocpp",
            chargers=args.chargers,
            version=args.version,
            scenario=args.scenario,
            time_scale=args.time_scale,
            seed=1,
            ramp_up=args.ramp_up,
            progress=seen.append,
        )
        result = None
        if args.duration is None:
            result = asyncio.run(fleet)
        else:
            asyncio.run(_for(fleet, args.duration, marks))
        wall = time.monotonic() - t0
        cpu = time.process_time() - cpu0
    finally:
        csms.terminate()
        csms.wait(10)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if result is not None:
        calls = sum(result.sent.values())
        connected = sum(1 for c in result.chargers if c.connections)
        problems = len(result.problems)
        detail = str(dict(result.problem_counts()))
    else:
        last = seen[-1]
        calls, connected, problems, detail = last.calls, last.online, last.problems, "(live counts)"
    what = f"OCPP {args.version}, scenario {args.scenario}, time scale {args.time_scale}"
    print(f"{args.chargers} chargers, {what}")
    print(f"  wall {wall:.1f} s, {calls} CALLs sent ({calls / wall:.0f}/s), {connected} chargers connected")
    print(
        f"  simulator CPU {cpu:.1f} s ({cpu / max(calls, 1) * 1e6:.0f} us per CALL), peak RSS {rss:.0f} MiB"
    )
    if len(marks) == 2:
        (w0, c0), (w1, c1) = marks
        print(f"  steady (the second half): CPU {(c1 - c0) / (w1 - w0) * 100:.0f} % of a core")
    if args.duration is not None:
        print(f"  online at the end: {connected} of {args.chargers}")
    print(f"  problems: {problems} {detail}")
    return 0 if not problems and connected == args.chargers else 1


async def _for(fleet: Coroutine[Any, Any, Any], seconds: float, marks: list[tuple[float, float]]) -> None:
    """Run the fleet for ``seconds``, noting (wall, CPU) half way and at the end, then stop it."""
    task = asyncio.create_task(fleet)
    await asyncio.sleep(seconds * 0.5)
    marks.append((time.monotonic(), time.process_time()))
    await asyncio.sleep(seconds * 0.5)
    marks.append((time.monotonic(), time.process_time()))
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


if __name__ == "__main__":
    sys.exit(main())
