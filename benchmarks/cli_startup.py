"""How long `ocpp-replay --help` and `ocpp-replay sessions` take, start to exit (issue 16: < 0.3 s).

    python benchmarks/cli_startup.py [--runs 20] [--tree PATH]

Runs each command RUNS times in a fresh interpreter (as a user does) and prints the median and
the fastest wall time. ``--tree`` runs the package from another source tree (e.g. an export of an
older commit) with this environment's libraries, to compare before and after in one sitting.
The capture for ``sessions`` is made here: 5 sessions of 40 frames.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def small_capture(path: Path) -> None:
    from ocpp_replay.core.frames import Direction
    from ocpp_replay.store import CaptureWriter

    writer = CaptureWriter(path)
    for i in range(5):
        sid = writer.open_session(time.time(), charge_point_id=f"CP{i}", subprotocol="ocpp1.6")
        for n in range(20):
            writer.frame(sid, 2 * n + 1, time.time(), n, Direction.TO_CSMS, f'[2,"{n}","Heartbeat",{{}}]')
            writer.frame(sid, 2 * n + 2, time.time(), n, Direction.TO_CP, f'[3,"{n}",{{"currentTime":"x"}}]')
        writer.close_session(sid, time.time(), frames=40)
    writer.close()


def timed(argv: list[str], env: dict[str, str], runs: int, cwd: str) -> list[float]:
    """Wall times; run in CWD (python -m puts the working directory first on the path)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(
            argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True
        )
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--tree", type=Path, help="run the package from this source tree")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.tree:
        env["PYTHONPATH"] = str(args.tree.resolve())
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "small.db"
        small_capture(db)
        cli = [sys.executable, "-m", "ocpp_replay.cli"]
        for name, argv in (("--help", [*cli, "--help"]), ("sessions", [*cli, "sessions", "--db", str(db)])):
            times = timed(argv, env, args.runs, tmp)
            print(
                f"ocpp-replay {name:<8} median {statistics.median(times) * 1000:6.0f} ms, "
                f"fastest {min(times) * 1000:6.0f} ms over {args.runs} runs"
            )
    baseline = timed([sys.executable, "-c", "pass"], env, args.runs, tempfile.gettempdir())
    print(f"python -c pass       median {statistics.median(baseline) * 1000:6.0f} ms (the interpreter alone)")


if __name__ == "__main__":
    main()
