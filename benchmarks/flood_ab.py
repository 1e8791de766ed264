"""A/B: the same flood through proxies built from different source trees, side by side.

    python benchmarks/flood_ab.py TREE[,TREE...] [--rounds 4] [--seconds 6] [--clients 50]

Each TREE is a directory holding an ``ocpp_replay`` package (a checkout, or ``git archive HEAD
ocpp_replay | tar -x -C DIR``); its proxy runs as ``ocpp-replay proxy`` with that tree first on
``PYTHONPATH``. The pseudo-tree ``tcprelay`` is the TCP relay baseline of proxy_overhead.py.
Every proxy fronts the same fast CSMS; each round floods the CSMS directly, then each proxy,
so a change in the machine's speed falls on every variant of that round alike.

Per variant and round: round trips a second, the ratio to that round's direct flood, CPU per
frame of the proxy process and its children (a writer in a child process counts too), p99,
and how long after the flood the capture took to hold every frame (a writer that falls behind
shows here). Used for the comparisons in docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from loopback import free_port, wait_port  # benchmarks/loopback.py, beside this script
from proxy_overhead import flood, start_proxy

HERE = Path(__file__).resolve().parent
OVERHEAD = str(HERE / "proxy_overhead.py")


def start(tree: str, csms_port: int, db: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    if tree == "tcprelay":
        proc = subprocess.Popen([sys.executable, OVERHEAD, "--serve-tcp-relay", str(port), str(csms_port)])
    else:
        env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve()))
        # (run from elsewhere than this checkout: the tree given is the one imported)
        proc = start_proxy(csms_port, port, db, env=env, cwd=tempfile.gettempdir())
    wait_port(port)
    return proc, port


def cpu_seconds(proc: psutil.Process) -> float:
    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        times = p.cpu_times()
        total += times.user + times.system
    return total


def frames_in(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM frames").fetchone()[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trees", help="comma-separated source trees (or tcprelay)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--clients", type=int, default=50)
    args = ap.parse_args()
    trees = args.trees.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="ocpp-ab-"))
    csms_port = free_port()
    csms = subprocess.Popen([sys.executable, OVERHEAD, "--serve-csms", str(csms_port)])
    procs: list[tuple[subprocess.Popen[bytes], int]] = []
    try:
        wait_port(csms_port)
        dbs = [tmp / f"p{i}.db" for i in range(len(trees))]
        procs = [start(tree, csms_port, db) for tree, db in zip(trees, dbs, strict=True)]
        direct: list[float] = []
        rows: dict[int, list[str]] = {i: [] for i in range(len(trees))}
        sent = [0] * len(trees)
        for _ in range(args.rounds):
            d = asyncio.run(flood(f"ws://127.0.0.1:{csms_port}/ocpp", args.clients, args.seconds))
            direct.append(d.calls / d.seconds)
            for i, (proc, port) in enumerate(procs):
                ps = psutil.Process(proc.pid)
                before = cpu_seconds(ps)
                f = asyncio.run(flood(f"ws://127.0.0.1:{port}/ocpp", args.clients, args.seconds))
                per_frame = (cpu_seconds(ps) - before) / max(2 * f.calls, 1) * 1e6
                catch_up = "-"
                if trees[i] != "tcprelay":
                    sent[i] += 2 * f.calls
                    ended = time.monotonic()
                    while frames_in(dbs[i]) < sent[i] and time.monotonic() - ended < 60:
                        time.sleep(0.05)
                    catch_up = f"{time.monotonic() - ended:.2f} s"
                rate = f.calls / f.seconds
                rows[i].append(
                    f"{rate:6.0f}/s {100 * rate / direct[-1]:3.0f} % {per_frame:5.1f} us/frame "
                    f"p99 {f.pct(99):5.1f} ms catch-up {catch_up}"
                )
        print("direct: " + ", ".join(f"{x:.0f}/s" for x in direct))
        for i, tree in enumerate(trees):
            print(f"{tree}:")
            for row in rows[i]:
                print(f"  {row}")
        for i, (proc, _) in enumerate(procs):
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            if trees[i] != "tcprelay":
                print(f"{trees[i]}: {frames_in(dbs[i])} frames recorded, {sent[i]} sent")
        return 0
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
        csms.kill()


if __name__ == "__main__":
    sys.exit(main())
