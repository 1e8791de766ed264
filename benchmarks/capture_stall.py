"""Memory of the capture writer while its database is stalled (issue 14.2).

    python benchmarks/capture_stall.py [--frames 400] [--size 1000000]

Each case runs in a child process of its own (RSS is per process): a CaptureWriter whose
database another connection holds locked (BEGIN IMMEDIATE, as a stalled or full disk would
stop it), FRAMES text frames of SIZE bytes handed to it as the proxy does, then the RSS. Cases:
no byte budget (what the writer did before: only its 200,000-frame limit) and the default
budget (128 MiB, `proxy --capture-buffer`). Prints RSS before and after, frame data held and
frames dropped, and the ratio of the growth.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sqlite3, sys, tempfile, time
from pathlib import Path
import psutil
from ocpp_replay.core.frames import Direction
from ocpp_replay.store import CaptureWriter
frames, size, budget = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
proc = psutil.Process()
with tempfile.TemporaryDirectory() as tmp:
    db = Path(tmp) / "c.db"
    writer = CaptureWriter(db, flush_interval=0.05, max_pending_bytes=budget)
    writer.start()
    sid = writer.open_session(time.time(), charge_point_id="CP")
    time.sleep(0.2)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the capture stalls
    before = proc.memory_info().rss
    head = '[2,"1","DataTransfer",{"vendorId":"Alfen BV","data":"'
    for seq in range(1, frames + 1):
        # a new string per frame, as the proxy hands each message over
        writer.frame(sid, seq, time.time(), 0.0, Direction.TO_CSMS, head + chr(97 + seq % 26) * size + '"}]')
    time.sleep(1.0)  # flushes fail meanwhile and hold the batch back
    after = proc.memory_info().rss
    held, lost = writer.pending_bytes, writer.stats.frames_lost
    blocker.execute("COMMIT")
    blocker.close()
    writer.close_session(sid, time.time(), frames=frames)
    writer.close()
    print(json.dumps({"before": before, "after": after, "held": held, "lost": lost}))
"""


def run(frames: int, size: int, budget: int) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(frames), str(size), str(budget)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--size", type=int, default=1_000_000)
    args = parser.parse_args()
    mib = 1024 * 1024
    cases = [("no byte budget (before)", 1 << 62), ("default budget 128 MiB", 128 * mib)]
    growth = {}
    print(f"{args.frames} frames of {args.size:,} bytes into a stalled capture")
    for name, budget in cases:
        r = run(args.frames, args.size, budget)
        growth[name] = r["after"] - r["before"]
        print(
            f"  {name:<26} RSS {r['before'] / mib:6.1f} -> {r['after'] / mib:6.1f} MiB "
            f"(+{growth[name] / mib:.1f}), frame data held {r['held'] / mib:.1f} MiB, "
            f"dropped and marked {r['lost']}"
        )
    a, b = (growth[name] for name, _ in cases)
    print(f"  growth ratio budget/no budget: {b / a:.2f}")


if __name__ == "__main__":
    main()
