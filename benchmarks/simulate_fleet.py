"""Many virtual Alfen chargers in one process against the reference CSMS.

    python benchmarks/simulate_fleet.py [--chargers 1000] [--version 1.6] [--scenario session]
                                        [--time-scale 0.01] [--csms-process]

By default the reference CSMS runs in a subprocess (``ocpp-replay csms``), so the figures are
the simulator's own: wall time, CALLs sent, problems, CPU time and peak RSS of this process.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import time

from loopback import free_port, wait_port  # benchmarks/loopback.py, beside this script


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chargers", type=int, default=1000)
    ap.add_argument("--version", default="1.6")
    ap.add_argument("--scenario", default="session")
    ap.add_argument("--time-scale", type=float, default=0.01)
    ap.add_argument("--ramp-up", type=float, default=None, help="virtual seconds over which chargers connect")
    args = ap.parse_args()

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
        result = asyncio.run(
            run_fleet(
                f"ws://127.0.0.1:{port}/ocpp",
                chargers=args.chargers,
                version=args.version,
                scenario=args.scenario,
                time_scale=args.time_scale,
                seed=1,
                ramp_up=args.ramp_up,
            )
        )
        wall = time.monotonic() - t0
        cpu = time.process_time() - cpu0
    finally:
        csms.terminate()
        csms.wait(10)
    calls = sum(result.sent.values())
    connected = sum(1 for c in result.chargers if c.connections)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    what = f"OCPP {args.version}, scenario {args.scenario}, time scale {args.time_scale}"
    print(f"{args.chargers} chargers, {what}")
    print(f"  wall {wall:.1f} s, {calls} CALLs sent ({calls / wall:.0f}/s), {connected} chargers connected")
    print(
        f"  simulator CPU {cpu:.1f} s ({cpu / max(calls, 1) * 1e6:.0f} us per CALL), peak RSS {rss:.0f} MiB"
    )
    print(f"  problems: {len(result.problems)} {dict(result.problem_counts())}")
    return 0 if not result.problems and connected == args.chargers else 1


if __name__ == "__main__":
    sys.exit(main())
