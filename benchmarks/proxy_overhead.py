"""What the capture proxy costs: the same load directly against a CSMS and through the proxy.

    python benchmarks/proxy_overhead.py [--chargers 1000] [--seconds 30] [--flood-clients 50]
                                        [--flood-seconds 15]

Processes on loopback: a fast CSMS (parses every CALL and answers at once, doing no other work,
so it is faster than any real backend), the proxy (the real ``ocpp-replay proxy`` command,
recording into a temporary capture), two baselines that record nothing (a bare aiohttp
websocket hop, and a TCP relay on uvloop that does not even parse frames: the ceiling for any
proxy written in Python here), and this load generator.

1. Steady load: N chargers, each sending one MeterValues CALL a second (start times spread over
   the first second), measuring the round trip of each CALL to its CALLRESULT. Run directly
   against the CSMS, then through the proxy, in the same run.
2. Flood: K chargers in a closed loop (next CALL as soon as the answer arrives), for throughput.
3. The capture must hold every frame that went through the proxy (2 per CALL), and the proxy's
   RSS is reported at the start and the end (it must stay flat however many frames pass).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from aiohttp import web
from loopback import free_port, wait_port  # benchmarks/loopback.py, beside this script

METER_VALUES = (
    '[2,"{uid}","MeterValues",{{"connectorId":1,"transactionId":9223372036854775807,'
    '"meterValue":[{{"timestamp":"2026-11-25T10:00:00Z","sampledValue":['
    '{{"value":"2145278","measurand":"Energy.Active.Import.Register","unit":"Wh"}},'
    '{{"value":"15.630","measurand":"Current.Import","phase":"L1","unit":"A"}},'
    '{{"value":"16.000","context":"CurrentMax","unit":"A"}}]}}]}}]'
)


# --------------------------------------------------------------------------- the CSMS


async def serve_csms(port: int) -> None:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("ocpp1.6",), max_msg_size=0)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                # The least any CSMS does: parse the CALL and serialise a CALLRESULT.
                call = json.loads(msg.data)
                await ws.send_str(json.dumps([3, call[1], {}], separators=(",", ":")))
        return ws

    await serve_forever(handler, port)


async def serve_forever(handler: Any, port: int) -> None:
    """Serve one websocket handler for every path on 127.0.0.1:PORT until killed."""
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    await asyncio.Event().wait()


async def serve_bare_hop(port: int, upstream: str) -> None:
    """A bare aiohttp forwarding hop, recording nothing: what any aiohttp proxy costs."""
    client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def pump(src: Any, dst: Any) -> None:
        async for msg in src:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await dst.send_str(msg.data)
        await dst.close()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        up = await client.ws_connect(
            f"{upstream}/{request.match_info['tail'].rsplit('/', 1)[-1]}", protocols=("ocpp1.6",)
        )
        ws = web.WebSocketResponse(protocols=("ocpp1.6",))
        await ws.prepare(request)
        await asyncio.gather(pump(ws, up), pump(up, ws))
        return ws

    await serve_forever(handler, port)


def serve_tcp_relay(port: int, upstream_port: int) -> None:
    """A TCP relay on uvloop that parses and records nothing: what forwarding alone costs here,
    the ceiling for any websocket proxy written in Python on this machine."""
    import uvloop

    class Side(asyncio.Protocol):
        def __init__(self) -> None:
            self.peer: Side | None = None
            self.transport: asyncio.Transport | None = None
            self.early = bytearray()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            if self.peer is not None and self.peer.transport is not None:
                self.peer.transport.write(data)
            else:
                self.early += data  # the handshake, before the upstream is connected

        def connection_lost(self, exc: Exception | None) -> None:
            if self.peer is not None and self.peer.transport is not None:
                self.peer.transport.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def accept() -> Side:
            charger = Side()

            async def dial() -> None:
                _, up = await loop.create_connection(Side, "127.0.0.1", upstream_port)
                up.peer, charger.peer = charger, up
                assert up.transport is not None
                up.transport.write(bytes(charger.early))

            task = loop.create_task(dial())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            return charger

        tasks: set[asyncio.Task[None]] = set()
        await loop.create_server(accept, "127.0.0.1", port, backlog=4096)
        await asyncio.Event().wait()

    uvloop.run(main())


# --------------------------------------------------------------------------- load


@dataclass
class Result:
    latencies_ms: list[float] = field(default_factory=list)
    calls: int = 0
    errors: int = 0
    seconds: float = 0.0

    def pct(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(p / 100 * len(data)))]


async def round_trip(ws: aiohttp.ClientWebSocketResponse, n: int, result: Result) -> bool:
    """Send MeterValues number N and wait for the answer; record its latency. False on a close."""
    t0 = time.perf_counter()
    await ws.send_str(METER_VALUES.format(uid=n))
    msg = await ws.receive()
    if msg.type is not aiohttp.WSMsgType.TEXT:
        result.errors += 1
        return False
    result.latencies_ms.append((time.perf_counter() - t0) * 1000)
    result.calls += 1
    return True


async def steady(url: str, chargers: int, seconds: float) -> Result:
    """Connect every charger first, then each sends one CALL a second on a fixed schedule."""
    result = Result()
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        sockets = await asyncio.gather(
            *(http.ws_connect(f"{url}/BENCH-{i:05d}", protocols=("ocpp1.6",)) for i in range(chargers))
        )
        begin = time.monotonic() + 0.5
        end = begin + seconds

        async def one(i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
            at = begin + i / chargers  # spread over each second
            n = 0
            while at < end:
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                if not await round_trip(ws, n, result):
                    return
                n += 1
                at += 1.0

        outcomes = await asyncio.gather(*(one(i, ws) for i, ws in enumerate(sockets)), return_exceptions=True)
        result.errors += sum(1 for o in outcomes if isinstance(o, BaseException))
        result.seconds = seconds
        await asyncio.gather(*(ws.close() for ws in sockets))
    return result


async def flood(url: str, clients: int, seconds: float) -> Result:
    result = Result()
    async with aiohttp.ClientSession() as http:

        async def one(i: int) -> None:
            async with http.ws_connect(f"{url}/FLOOD-{i:04d}", protocols=("ocpp1.6",)) as ws:
                n = 0
                while time.monotonic() < end:
                    if not await round_trip(ws, n, result):
                        return
                    n += 1

        start = time.monotonic()
        end = start + seconds
        outcomes = await asyncio.gather(*(one(i) for i in range(clients)), return_exceptions=True)
        result.errors += sum(1 for o in outcomes if isinstance(o, BaseException))
        result.seconds = time.monotonic() - start
    return result


# --------------------------------------------------------------------------- processes


def rss_mib(proc: psutil.Process) -> float:
    return float(proc.memory_info().rss) / 2**20


def line(name: str, r: Result) -> str:
    rate = r.calls / r.seconds if r.seconds else 0.0
    return (
        f"  {name:<14} calls={r.calls:>8}  errors={r.errors:<3} p50={r.pct(50):7.3f} ms  "
        f"p99={r.pct(99):7.3f} ms  max={max(r.latencies_ms, default=float('nan')):8.3f} ms  "
        f"rate={rate:9.0f}/s"
    )


def measure_mitm(
    args: argparse.Namespace, csms_port: int, tmp: Path, d: Result, fd: Result
) -> dict[str, Any]:
    """The same loads through ``ocpp-replay mitm`` (mitmdump in reverse mode with the addon),
    after the proxy has stopped; compared with this run's direct figures."""
    port = free_port()
    db = tmp / "mitm.db"
    mitm = subprocess.Popen(
        [sys.executable, "-m", "ocpp_replay.cli", "mitm", "--db", str(db), "--",
         "--mode", f"reverse:http://127.0.0.1:{csms_port}", "--listen-host", "127.0.0.1",
         "--listen-port", str(port), "--set", f"confdir={tmp / 'mitmconf'}",
         "--set", "termlog_verbosity=error"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_port(port, timeout=30)
        proc = psutil.Process(mitm.pid)
        rss_start = rss_mib(proc)
        url = f"ws://127.0.0.1:{port}/ocpp"
        print(f"\nmitmproxy mode (ocpp-replay mitm, reverse), RSS at start {rss_start:.1f} MiB")
        m = asyncio.run(steady(url, args.chargers, args.seconds))
        print(line("through mitm", m))
        print(
            f"  mitm adds      p50=+{m.pct(50) - d.pct(50):.3f} ms  p99=+{m.pct(99) - d.pct(99):.3f} ms"
            f"  (direct figures from the steady run above)"
        )
        fm = asyncio.run(flood(url, args.flood_clients, args.flood_seconds))
        print(line("through mitm", fm))
        mitm_ratio = (fm.calls / fm.seconds) / (fd.calls / fd.seconds)
        print(f"  throughput: mitm {mitm_ratio * 100:.0f} % of the direct flood above")
        rss_end = rss_mib(proc)
        mitm.send_signal(signal.SIGINT)
        mitm.wait(60)
        with sqlite3.connect(db) as conn:
            recorded = conn.execute("SELECT count(*) FROM frames").fetchone()[0]
        print(
            f"  capture: {recorded} frames recorded, {2 * (m.calls + fm.calls)} expected; "
            f"mitmdump RSS start {rss_start:.1f} MiB, end {rss_end:.1f} MiB"
        )
        return {
            "steady_mitm_p50_ms": m.pct(50),
            "steady_mitm_p99_ms": m.pct(99),
            "flood_mitm_ratio": mitm_ratio,
            "mitm_recorded": recorded,
            "mitm_expected": 2 * (m.calls + fm.calls),
        }
    finally:
        if mitm.poll() is None:
            mitm.kill()
            mitm.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chargers", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--flood-clients", type=int, default=50)
    ap.add_argument("--flood-seconds", type=float, default=15.0)
    ap.add_argument(
        "--long-flood",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="then flood through the proxy this long, sampling its RSS every 5 s (memory flat in frames?)",
    )
    ap.add_argument(
        "--mitm", action="store_true", help="also measure `ocpp-replay mitm` (needs the mitm extra)"
    )
    ap.add_argument("--serve-csms", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--serve-bare-hop", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--serve-tcp-relay", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_csms:
        asyncio.run(serve_csms(args.serve_csms))
        return 0
    if args.serve_bare_hop:
        asyncio.run(serve_bare_hop(int(args.serve_bare_hop[0]), args.serve_bare_hop[1]))
        return 0
    if args.serve_tcp_relay:
        serve_tcp_relay(*args.serve_tcp_relay)
        return 0

    csms_port, proxy_port, hop_port, relay_port = free_port(), free_port(), free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="ocpp-bench-"))
    db = tmp / "bench.db"
    csms = subprocess.Popen([sys.executable, __file__, "--serve-csms", str(csms_port)])
    proxy = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ocpp_replay.cli",
            "proxy",
            "--upstream",
            f"ws://127.0.0.1:{csms_port}/ocpp",
            "--host",
            "127.0.0.1",
            "--port",
            str(proxy_port),
            "--db",
            str(db),
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.DEVNULL,
    )
    hop = subprocess.Popen(
        [sys.executable, __file__, "--serve-bare-hop", str(hop_port), f"ws://127.0.0.1:{csms_port}/ocpp"]
    )
    relay = subprocess.Popen([sys.executable, __file__, "--serve-tcp-relay", str(relay_port), str(csms_port)])
    try:
        wait_port(csms_port)
        wait_port(proxy_port)
        wait_port(hop_port)
        wait_port(relay_port)
        hop_url = f"ws://127.0.0.1:{hop_port}/ocpp"
        relay_url = f"ws://127.0.0.1:{relay_port}/ocpp"
        pproc = psutil.Process(proxy.pid)
        direct_url = f"ws://127.0.0.1:{csms_port}/ocpp"
        proxy_url = f"ws://127.0.0.1:{proxy_port}/ocpp"
        rss_start = rss_mib(pproc)
        cpu_start = pproc.cpu_times()
        print(
            f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}"
        )
        print(f"proxy RSS at start: {rss_start:.1f} MiB")

        print(f"\nsteady: {args.chargers} chargers x 1 MeterValues/s for {args.seconds:.0f} s")
        d = asyncio.run(steady(direct_url, args.chargers, args.seconds))
        print(line("direct", d))
        b = asyncio.run(steady(hop_url, args.chargers, args.seconds))
        print(line("bare hop", b))
        p = asyncio.run(steady(proxy_url, args.chargers, args.seconds))
        print(line("through proxy", p))
        rss_mid = rss_mib(pproc)
        print(
            f"  proxy adds     p50=+{p.pct(50) - d.pct(50):.3f} ms  p99=+{p.pct(99) - d.pct(99):.3f} ms"
            f"  (p99 ratio {p.pct(99) / d.pct(99):.2f}x)"
        )

        print(f"\nflood: {args.flood_clients} chargers in a closed loop for {args.flood_seconds:.0f} s")
        fd = asyncio.run(flood(direct_url, args.flood_clients, args.flood_seconds))
        print(line("direct", fd))
        fb = asyncio.run(flood(hop_url, args.flood_clients, args.flood_seconds))
        print(line("bare hop", fb))
        fr = asyncio.run(flood(relay_url, args.flood_clients, args.flood_seconds))
        print(line("tcp relay", fr))
        fp = asyncio.run(flood(proxy_url, args.flood_clients, args.flood_seconds))
        print(line("through proxy", fp))
        ratio = (fp.calls / fp.seconds) / (fd.calls / fd.seconds)
        bare_ratio = (fb.calls / fb.seconds) / (fd.calls / fd.seconds)
        relay_ratio = (fr.calls / fr.seconds) / (fd.calls / fd.seconds)
        print(
            f"  throughput: proxy {ratio * 100:.0f} % of direct; a bare aiohttp hop that records "
            f"nothing {bare_ratio * 100:.0f} %; a TCP relay that parses nothing {relay_ratio * 100:.0f} %; "
            f"proxy/bare hop {ratio / bare_ratio * 100:.0f} %"
        )

        long_calls = 0
        if args.long_flood:
            samples: list[str] = []
            done = threading.Event()

            def sample() -> None:
                t0 = time.monotonic()
                while not done.wait(5.0):
                    samples.append(f"{time.monotonic() - t0:.0f}s {rss_mib(pproc):.1f}")

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            fl = asyncio.run(flood(proxy_url, args.flood_clients, args.long_flood))
            done.set()
            sampler.join()
            print(f"\nlong flood through the proxy, {args.long_flood:.0f} s:")
            print(line("through proxy", fl))
            print(f"  proxy RSS (MiB) every 5 s: {', '.join(samples)}")
            long_calls = fl.calls

        time.sleep(1.0)  # let the last batch reach the disk
        rss_end = rss_mib(pproc)
        cpu_end = pproc.cpu_times()
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(30)
        expected = 2 * (p.calls + fp.calls + long_calls)
        with sqlite3.connect(db) as conn:
            recorded = conn.execute("SELECT count(*) FROM frames").fetchone()[0]
            lost = conn.execute("SELECT coalesce(sum(frames_lost), 0) FROM sessions").fetchone()[0]
            ended = conn.execute("SELECT count(*) FROM sessions WHERE ended_at IS NULL").fetchone()[0]
        proxy_cpu = (cpu_end.user + cpu_end.system) - (cpu_start.user + cpu_start.system)
        print(
            f"\ncapture: {recorded} frames recorded, {expected} expected, {lost} marked lost, "
            f"{ended} sessions left open"
        )
        print(
            f"proxy CPU: {proxy_cpu:.1f} s for {expected} frames "
            f"({proxy_cpu / max(expected, 1) * 1e6:.1f} us per frame)"
        )
        print(f"proxy RSS: start {rss_start:.1f} MiB, after steady {rss_mid:.1f} MiB, end {rss_end:.1f} MiB")
        print(f"capture size: {db.stat().st_size / 2**20:.1f} MiB")
        summary = {
            "steady_direct_p50_ms": d.pct(50),
            "steady_direct_p99_ms": d.pct(99),
            "steady_proxy_p50_ms": p.pct(50),
            "steady_proxy_p99_ms": p.pct(99),
            "steady_bare_p99_ms": b.pct(99),
            "flood_ratio": ratio,
            "flood_bare_ratio": bare_ratio,
            "flood_tcp_relay_ratio": relay_ratio,
            "recorded": recorded,
            "expected": expected,
            "rss_start_mib": rss_start,
            "rss_end_mib": rss_end,
        }
        if args.mitm:
            summary.update(measure_mitm(args, csms_port, tmp, d, fd))
        print("\n" + json.dumps(summary))
        ok = recorded == expected and lost == 0 and not d.errors and not p.errors
        return 0 if ok else 1
    finally:
        for proc in (proxy, hop, relay, csms):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
