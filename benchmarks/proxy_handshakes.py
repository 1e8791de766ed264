"""What the proxy's handshake costs, and what a flood of half-finished handshakes does to it.

    python benchmarks/proxy_handshakes.py [--handshakes 500] [--concurrency 20] [--flood 2000]
                                          [--max-handshakes 200] [--handshake-timeout 3]
    cd /tmp && PYTHONPATH=OLD_TREE python BENCHMARKS/proxy_handshakes.py --no-flood   # an older build

Processes on loopback: the fast CSMS of proxy_overhead.py (aiohttp), the real ``ocpp-replay
proxy`` command, and this load generator (raw sockets: an upgrade request, read the 101, close).

1. Handshakes: N upgrades (K at a time) directly against the CSMS, then through the proxy, in
   the same run: the time from connect to the 101's last byte, p50 and p99.
2. Flood: F sockets that send half a request line and then nothing (a slowloris), against
   ``--max-handshakes`` and ``--handshake-timeout``; while they are open, N real handshakes
   through the proxy: how many get in, how long they take, how long until the proxy has closed
   every slow socket, and the proxy's RSS before and during the flood.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from loopback import free_port, wait_port  # benchmarks/loopback.py, beside this script


def request(path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ocpp1.6\r\n\r\n"
    ).encode()


async def one_handshake(port: int, path: str) -> float | None:
    """Seconds from connect to the whole 101, or None if refused or dropped."""
    t0 = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request(path))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    except (OSError, asyncio.IncompleteReadError, TimeoutError):
        return None
    took = time.perf_counter() - t0
    writer.close()
    return took if head.startswith(b"HTTP/1.1 101") else None


async def handshakes(port: int, n: int, concurrency: int, prefix: str) -> list[float | None]:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> float | None:
        async with gate:
            return await one_handshake(port, f"/ocpp/{prefix}{i}")

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def report(name: str, times: list[float | None]) -> None:
    ok = [t * 1000 for t in times if t is not None]
    print(
        f"  {name:<22} ok {len(ok):>5}/{len(times):<5} p50 {pct(ok, 0.5):7.2f} ms  "
        f"p99 {pct(ok, 0.99):7.2f} ms  max {max(ok, default=float('nan')):7.2f} ms"
    )


#: The flood's writers: a StreamWriter that is garbage closes its socket.
_held: list[asyncio.StreamWriter] = []


async def flood(port: int, count: int) -> list[asyncio.StreamReader]:
    readers = []
    writers = _held
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ocpp/SLOW HT")
        readers.append(reader)
        writers.append(writer)
    return readers


async def main_async(
    args: argparse.Namespace, csms_port: int, proxy_port: int, proxy: psutil.Process
) -> None:
    print(f"\nhandshakes: {args.handshakes}, {args.concurrency} at a time")
    report("direct", await handshakes(csms_port, args.handshakes, args.concurrency, "D"))
    report("through proxy", await handshakes(proxy_port, args.handshakes, args.concurrency, "P"))
    if args.no_flood:
        return

    rss_before = proxy.memory_info().rss / 2**20
    under = max(1, args.max_handshakes - 10)
    print(f"\nslow sockets under the cap: {under} half-sent requests, nothing else")
    t0 = time.perf_counter()
    readers = await flood(proxy_port, under)
    await asyncio.wait_for(asyncio.gather(*(closed(r) for r in readers)), args.handshake_timeout + 30)
    print(f"  all {under} closed by the proxy {time.perf_counter() - t0:.2f} s after the first was opened")

    print(
        f"\nflood: {args.flood} half-sent requests (cap {args.max_handshakes} unfinished, "
        f"deadline {args.handshake_timeout:g} s), then {args.handshakes} real handshakes through the proxy"
    )
    t0 = time.perf_counter()
    readers = await flood(proxy_port, args.flood)
    opened = time.perf_counter() - t0
    rss_flood = proxy.memory_info().rss / 2**20
    report("during the flood", await handshakes(proxy_port, args.handshakes, args.concurrency, "F"))
    await asyncio.wait_for(asyncio.gather(*(closed(r) for r in readers)), args.handshake_timeout + 30)
    print(f"  {args.flood} flood sockets opened in {opened:.2f} s, all closed by the proxy")
    print(f"  {time.perf_counter() - t0:.2f} s after the first; proxy RSS {rss_before:.1f} MiB before,")
    print(f"  {rss_flood:.1f} MiB with the flood open")


async def closed(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(OSError):
        await reader.read()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--handshakes", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--flood", type=int, default=2000)
    ap.add_argument("--max-handshakes", type=int, default=200)
    ap.add_argument("--handshake-timeout", type=float, default=3.0)
    ap.add_argument(
        "--no-flood",
        action="store_true",
        help="only part 1, with none of the handshake options (to time an older build: PYTHONPATH=TREE)",
    )
    args = ap.parse_args()
    here = Path(__file__).resolve().parent
    csms_port, proxy_port = free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="ocpp-bench-"))
    csms = subprocess.Popen([sys.executable, str(here / "proxy_overhead.py"), "--serve-csms", str(csms_port)])
    proxy = subprocess.Popen(
        [sys.executable, "-m", "ocpp_replay.cli", "proxy", "--upstream",
         f"ws://127.0.0.1:{csms_port}/ocpp", "--host", "127.0.0.1", "--port", str(proxy_port),
         "--db", str(tmp / "bench.db"), "--log-level", "ERROR",
         *([] if args.no_flood else ["--max-handshakes", str(args.max_handshakes),
                                     "--handshake-timeout", str(args.handshake_timeout)])],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_port(csms_port)
        wait_port(proxy_port)
        print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
        asyncio.run(main_async(args, csms_port, proxy_port, psutil.Process(proxy.pid)))
    finally:
        for p in (proxy, csms):
            p.terminate()
            p.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
