"""How many chargers one proxy process holds, and a reconnect storm (docs/operations.md).

    python benchmarks/proxy_connections.py [--chargers 9000] [--workers 4] [--ramp 30]
                                           [--hold 60] [--heartbeat 30] [--storm 10]

Processes on loopback: a fast CSMS (answers every CALL at once), the real ``ocpp-replay proxy``
recording into a temporary capture, and WORKERS load generators, each holding its share of the
chargers (every worker dials from an address of its own in 127.0.0.0/8, so that the ephemeral
port range is not the limit). Each charger:

1. connects during the ramp (start times spread evenly over RAMP seconds) and sends a
   BootNotification; the handshake time (TCP connect to 101) and the Boot's round trip are kept;
2. stays connected for HOLD seconds, sending a Heartbeat every HEARTBEAT seconds (mostly idle,
   like a real fleet, with the interval shortened so that the run is not hours long);
3. then the reconnect storm: every charger closes and reconnects within STORM seconds (as after a
   CSMS restart: start times spread evenly) and sends its BootNotification again;
4. holds a little longer and closes.

Reported: handshake p50/p99/max in the ramp and in the storm, chargers refused or failed, the
proxy's RSS before the ramp, with every charger connected, and after the storm (memory per open
connection = the difference over the number of chargers), its CPU, and whether the capture holds
every frame that went through (2 per CALL) and one session per connection.

The proxy's open-file limit bounds the chargers: each charger needs two sockets in the proxy
(its own and the upstream one). Where the hard limit cannot be raised (this machine: 20,000 per
process, and root may not raise it), the chargers the proxy can hold are about half of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import quantiles
from typing import Any

import aiohttp
import psutil
from loopback import free_port, wait_port  # benchmarks/loopback.py, beside this script
from proxy_overhead import start_proxy

HERE = Path(__file__).resolve().parent
BOOT = '[2,"{uid}","BootNotification",{{"chargePointVendor":"Alfen BV","chargePointModel":"NG910-60023"}}]'
HEARTBEAT = '[2,"{uid}","Heartbeat",{{}}]'


def pct(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return quantiles(values, n=100, method="inclusive")[q - 1]


# --------------------------------------------------------------------------- a load worker


class Charger:
    def __init__(self, name: str) -> None:
        self.name = name
        self.seq = 0
        self.calls = 0

    async def call(self, ws: aiohttp.ClientWebSocketResponse, template: str) -> float:
        self.seq += 1
        uid = f"{self.name}-{self.seq}"
        t0 = time.perf_counter()
        await ws.send_str(template.format(uid=uid))
        msg = await ws.receive(timeout=30)
        if msg.type is not aiohttp.WSMsgType.TEXT or uid not in msg.data:
            raise ConnectionError(f"no answer to {uid}: {msg.type}")
        self.calls += 1
        return time.perf_counter() - t0


async def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One load generator: its share of chargers through the three phases, on a shared clock."""
    t0 = args.t0
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, local_addr=(args.local_addr, 0), force_close=True)
    )
    out: dict[str, Any] = {"ramp_hs": [], "storm_hs": [], "boot_rtt": [], "failed": [], "calls": 0}
    n, first, total = args.count, args.first, args.total

    async def connect(ch: Charger, phase: str) -> aiohttp.ClientWebSocketResponse | None:
        start = time.perf_counter()
        try:
            ws = await session.ws_connect(f"{args.url}/{ch.name}", protocols=("ocpp1.6",), autoping=True)
            out[f"{phase}_hs"].append(time.perf_counter() - start)
            out["boot_rtt"].append(await ch.call(ws, BOOT))
            return ws
        except Exception as exc:  # counted and reported, never hidden
            out["failed"].append(f"{phase} {ch.name}: {type(exc).__name__}: {exc}"[:200])
            return None

    async def one(i: int) -> None:
        ch = Charger(f"CP{first + i:05d}")
        index = first + i
        await asyncio.sleep(max(0.0, t0 + args.ramp * index / total - time.time()))
        ws = await connect(ch, "ramp")
        storm_at = t0 + args.ramp + args.hold + args.storm * index / total
        while ws is not None and time.time() + args.heartbeat < storm_at:
            await asyncio.sleep(args.heartbeat)
            try:
                await ch.call(ws, HEARTBEAT)
            except Exception as exc:
                out["failed"].append(f"heartbeat {ch.name}: {type(exc).__name__}"[:200])
                break
        await asyncio.sleep(max(0.0, storm_at - time.time()))
        if ws is not None:
            await ws.close()
        ws = await connect(ch, "storm")
        await asyncio.sleep(max(0.0, t0 + args.ramp + args.hold + args.storm + args.after - time.time()))
        if ws is not None:
            await ws.close()
        out["calls"] += ch.calls

    await asyncio.gather(*(one(i) for i in range(n)))
    await session.close()
    return out


# --------------------------------------------------------------------------- the run


def serve_csms(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(HERE / "proxy_overhead.py"), "--serve-csms", str(port)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chargers", type=int, default=9000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--ramp", type=float, default=30.0, help="seconds over which chargers connect")
    ap.add_argument("--hold", type=float, default=60.0, help="seconds every charger stays connected")
    ap.add_argument("--heartbeat", type=float, default=30.0, help="seconds between heartbeats")
    ap.add_argument("--storm", type=float, default=10.0, help="every charger reconnects within this")
    ap.add_argument("--after", type=float, default=10.0, help="seconds connected after the storm")
    ap.add_argument(
        "--direct", action="store_true", help="the same load straight at the CSMS (baseline: no proxy)"
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--total", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--local-addr", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(asyncio.run(worker(args))))
        return 0

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(f"open-file limit here: soft {soft}, hard {hard}; the proxy needs 2 per charger")
    csms_port, proxy_port = free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="ocpp-conn-"))
    db = tmp / "conn.db"
    csms = serve_csms(csms_port)
    wait_port(csms_port)
    proxy = start_proxy(csms_port, proxy_port, db)
    procs: list[subprocess.Popen[bytes]] = [proxy, csms]
    target = csms_port if args.direct else proxy_port
    try:
        wait_port(proxy_port)
        pproc = psutil.Process(csms.pid if args.direct else proxy.pid)
        time.sleep(1.0)
        rss0 = pproc.memory_info().rss / 2**20
        cpu0 = sum(pproc.cpu_times()[:2])
        t0 = time.time() + 3.0
        share = -(-args.chargers // args.workers)
        workers = []
        for w in range(args.workers):
            first, count = w * share, min(share, args.chargers - w * share)
            cmd = [sys.executable, __file__, "--worker", "--url", f"ws://127.0.0.1:{target}/ocpp",
                   "--t0", str(t0), "--first", str(first), "--count", str(count), "--total",
                   str(args.chargers), "--local-addr", f"127.0.0.{10 + w}", "--ramp", str(args.ramp),
                   "--hold", str(args.hold), "--heartbeat", str(args.heartbeat), "--storm",
                   str(args.storm), "--after", str(args.after)]  # fmt: skip
            workers.append(subprocess.Popen(cmd, stdout=subprocess.PIPE))
        samples: dict[str, float] = {}
        marks = {
            "all connected": t0 + args.ramp + args.hold * 0.5,
            "after the storm": t0 + args.ramp + args.hold + args.storm + args.after * 0.5,
        }
        for name, at in marks.items():
            time.sleep(max(0.0, at - time.time()))
            samples[name] = pproc.memory_info().rss / 2**20
            samples[name + " fds"] = pproc.num_fds()
        limit = args.ramp + args.hold + args.storm + 600
        results = [json.loads(w.communicate(timeout=limit)[0]) for w in workers]
        cpu = sum(pproc.cpu_times()[:2]) - cpu0
        wall = time.time() - t0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)

    ramp = [x for r in results for x in r["ramp_hs"]]
    storm = [x for r in results for x in r["storm_hs"]]
    boot = [x for r in results for x in r["boot_rtt"]]
    failed = [x for r in results for x in r["failed"]]
    calls = sum(r["calls"] for r in results)
    with sqlite3.connect(db) as conn:
        frames = conn.execute("SELECT count(*) FROM frames").fetchone()[0]
        sessions = conn.execute("SELECT count(*) FROM sessions").fetchone()[0]
        lost = conn.execute("SELECT coalesce(sum(frames_lost), 0) FROM sessions").fetchone()[0]
    ms = 1000.0
    print(f"chargers {args.chargers} over {args.workers} workers; ramp {args.ramp:.0f} s, "
          f"hold {args.hold:.0f} s, heartbeat every {args.heartbeat:.0f} s, "
          f"storm within {args.storm:.0f} s")  # fmt: skip
    print(f"handshakes in the ramp: {len(ramp)} ok, p50 {pct(ramp, 50) * ms:.2f} ms, "
          f"p99 {pct(ramp, 99) * ms:.2f} ms, max {max(ramp, default=0) * ms:.2f} ms")  # fmt: skip
    print(f"handshakes in the storm: {len(storm)} ok, p50 {pct(storm, 50) * ms:.2f} ms, "
          f"p99 {pct(storm, 99) * ms:.2f} ms, max {max(storm, default=0) * ms:.2f} ms")  # fmt: skip
    print(f"BootNotification round trip: p50 {pct(boot, 50) * ms:.2f} ms, p99 {pct(boot, 99) * ms:.2f} ms")
    print(f"failed or refused: {len(failed)}")
    for f in failed[:10]:
        print("  ", f)
    connected = samples["all connected"]
    who = "CSMS" if args.direct else "proxy"
    print(f"{who} RSS: {rss0:.1f} MiB idle, {connected:.1f} MiB with every charger connected "
          f"({samples['all connected fds']:.0f} fds), "
          f"{samples['after the storm']:.1f} MiB after the storm")  # fmt: skip
    print(f"memory per open connection: {(connected - rss0) * 1024 / args.chargers:.1f} KiB")
    print(f"{who} CPU {cpu:.1f} s over {wall:.0f} s ({100 * cpu / wall:.1f} % of a core), "
          f"{calls} CALLs answered")  # fmt: skip
    print(f"capture: {frames} frames (expected {2 * calls}), {sessions} sessions "
          f"(expected {len(ramp) + len(storm)}), {lost} marked lost")  # fmt: skip
    if args.direct:
        print("(direct: the RSS and CPU above are the CSMS's; the capture is empty)")
        ok = not failed
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    ok = not failed and frames == 2 * calls and sessions == len(ramp) + len(storm) and lost == 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
