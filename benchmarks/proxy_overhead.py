"""What the capture proxy costs: the same load directly against a CSMS and through the proxy.

    python benchmarks/proxy_overhead.py [--chargers 1000] [--seconds 30] [--flood-clients 50]
                                        [--flood-seconds 8] [--rounds 3]

Processes on loopback: a fast CSMS (parses every CALL and answers at once, doing no other work,
so it is faster than any real backend), the proxy (the real ``ocpp-replay proxy`` command,
recording into a temporary capture), two baselines that record nothing (a bare aiohttp
websocket hop, and a TCP relay on uvloop that does not even parse frames: the ceiling for any
proxy written in Python here), and this load generator.

1. Steady load: N chargers, each sending one MeterValues CALL a second (start times spread over
   the first second), measuring the round trip of each CALL to its CALLRESULT. Run directly
   against the CSMS, then through the proxy, in the same run.
2. Flood: K chargers in a closed loop (next CALL as soon as the answer arrives), for throughput:
   R rounds, each flooding every path once in a rotated order, so that the machine's changes of
   speed (it is shared) fall on every path alike; each path's ratio to the direct path of the
   same round, and the median over the rounds. The proxy's CPU per frame during its floods is
   the figure that depends least on what else the machine does.
3. The same flood directly against the project's reference CSMS (``ocpp-replay csms``: session
   state, schema checks, a backend's bookkeeping) and through a second proxy in front of it.
4. The capture must hold every frame that went through the proxy (2 per CALL), and the proxy's
   RSS is reported at the start and the end (it must stay flat however many frames pass).

``--shadow`` measures the live shadow instead (docs/shadow.md):

    python benchmarks/proxy_overhead.py --shadow [--chargers 1000] [--seconds 20] [--rounds 3]
                                        [--deaf-seconds 60]

5. The steady load through a proxy without ``--shadow`` and through one with ``--shadow`` (to a
   second fast CSMS that answers everything), in the same run, in rounds rotated as the floods
   are: the production round trip with and without the shadow. ``--remote-shadow`` runs the
   shadow CSMS at SCHED_IDLE, a stand-in for a backend on another machine: the figure is then
   what ``--shadow`` costs on the proxy's machine (the relay's hand-off and our shadow process).
6. The steady load for ``--deaf-seconds`` through a proxy whose shadow accepts the handshake and
   then never reads: production's p99 per 10-s window and the proxy's RSS every 5 s.
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
from statistics import median
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


def serve_deaf_shadow(port: int) -> None:
    """A shadow that completes the websocket handshake and then never reads another byte."""
    import base64
    import hashlib

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        key = next(
            h.split(":", 1)[1].strip()
            for h in head.split("\r\n")
            if h.lower().startswith("sec-websocket-key:")
        )
        accept = base64.b64encode(
            hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
        )
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Protocol: ocpp1.6\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        writer.transport.pause_reading()  # type: ignore[attr-defined]
        held.append(writer)
        await asyncio.Event().wait()

    held: list[asyncio.StreamWriter] = []

    async def main() -> None:
        server = await asyncio.start_server(handler, "127.0.0.1", port, backlog=4096)
        async with server:
            await asyncio.Event().wait()

    asyncio.run(main())


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


def start_proxy(
    upstream_port: int,
    port: int,
    db: Path,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    extra: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """The real ``ocpp-replay proxy`` command, recording into ``db``."""
    return subprocess.Popen(
        [sys.executable, "-m", "ocpp_replay.cli", "proxy", "--upstream",
         f"ws://127.0.0.1:{upstream_port}/ocpp", "--host", "127.0.0.1", "--port", str(port),
         "--db", str(db), "--log-level", "WARNING", *extra],
        stdout=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
    )  # fmt: skip


def flood_rounds(
    paths: dict[str, str], args: argparse.Namespace, proxy: psutil.Process, through: str
) -> tuple[dict[str, list[Result]], float]:
    """Flood every path ``args.rounds`` times, in an order rotated each round, so that a change
    in the machine's speed (these machines are shared) falls on every path alike. Also returns
    the CPU the proxy process spent per frame while the flood went through it."""
    results: dict[str, list[Result]] = {name: [] for name in paths}
    names = list(paths)
    cpu, frames = 0.0, 0
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            before = proxy.cpu_times()
            result = asyncio.run(flood(paths[name], args.flood_clients, args.flood_seconds))
            after = proxy.cpu_times()
            results[name].append(result)
            if name == through:
                cpu += (after.user + after.system) - (before.user + before.system)
                frames += 2 * result.calls
    return results, cpu / max(frames, 1)


def report_floods(results: dict[str, list[Result]]) -> dict[str, Any]:
    """Each path's rates, and each path's ratio to the direct path of the same round."""
    direct = [r.calls / r.seconds for r in results["direct"]]
    summary: dict[str, Any] = {}
    for name, rounds in results.items():
        rates = [r.calls / r.seconds for r in rounds]
        p99 = median([r.pct(99) for r in rounds])
        shown = ", ".join(f"{x:.0f}" for x in rates)
        line_ = f"  {name:<14} rate median {median(rates):8.0f}/s  rounds {shown}"
        line_ += f"  p50 {median([r.pct(50) for r in rounds]):.2f} ms  p99 {p99:.2f} ms"
        line_ += f"  errors {sum(r.errors for r in rounds)}"
        print(line_)
        if name != "direct":
            ratios = [x / d for x, d in zip(rates, direct, strict=True)]
            summary[name] = {"median": median(ratios), "rounds": ratios}
            print(
                f"  {'':<14} {name} / direct, same round: median {median(ratios) * 100:.0f} %"
                f"  (rounds {', '.join(f'{x * 100:.0f}' for x in ratios)} %)"
            )
    return summary


async def steady_windows(url: str, chargers: int, seconds: float, window: float) -> list[Result]:
    """The steady load, its round trips split into windows of ``window`` seconds."""
    result = Result()
    stamps: list[float] = []
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        sockets = await asyncio.gather(
            *(http.ws_connect(f"{url}/DEAF-{i:05d}", protocols=("ocpp1.6",)) for i in range(chargers))
        )
        begin = time.monotonic() + 0.5
        end = begin + seconds

        async def one(i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
            at = begin + i / chargers
            n = 0
            while at < end:
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                if not await round_trip(ws, n, result):
                    return
                stamps.append(time.monotonic() - begin)
                n += 1
                at += 1.0

        await asyncio.gather(*(one(i, ws) for i, ws in enumerate(sockets)), return_exceptions=True)
        await asyncio.gather(*(ws.close() for ws in sockets))
    windows = [Result(seconds=window) for _ in range(max(1, int(seconds / window + 0.999)))]
    for t, ms in zip(stamps, result.latencies_ms, strict=True):
        w = windows[min(len(windows) - 1, int(t / window))]
        w.latencies_ms.append(ms)
        w.calls += 1
    windows[0].errors = result.errors
    return windows


def shadow_main(args: argparse.Namespace) -> int:
    """``--shadow``: the production round trip with and without a shadow, and with a deaf one."""
    prod_port, shadow_port, deaf_port = free_port(), free_port(), free_port()
    plain_port, mirrored_port, deaf_proxy_port = free_port(), free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="ocpp-bench-shadow-"))
    me = [sys.executable, __file__]
    # --remote-shadow: the shadow CSMS at SCHED_IDLE, a stand-in for a backend on another machine
    # (it takes a core only when the relay, the production CSMS, the load and our shadow process
    # leave one): what remains is the cost of --shadow on the proxy's machine.
    idle = ["--idle"] if args.remote_shadow else []
    procs = [
        subprocess.Popen([*me, "--serve-csms", str(prod_port)]),
        subprocess.Popen([*me, "--serve-csms", str(shadow_port), *idle]),
        subprocess.Popen([*me, "--serve-deaf-shadow", str(deaf_port)]),
    ]
    try:
        for port in (prod_port, shadow_port, deaf_port):
            wait_port(port)
        plain = start_proxy(prod_port, plain_port, tmp / "plain.db")
        mirrored = start_proxy(
            prod_port,
            mirrored_port,
            tmp / "shadow.db",
            extra=("--shadow", f"ws://127.0.0.1:{shadow_port}/ocpp"),
        )
        procs[:0] = [plain, mirrored]
        for port in (plain_port, mirrored_port):
            wait_port(port)
        print(
            f"machine: {os.cpu_count()} cores (shared), python {sys.version.split()[0]}, "
            f"aiohttp {aiohttp.__version__}"
        )
        print(
            f"\nsteady: {args.chargers} chargers x 1 MeterValues/s, {args.rounds} rounds of "
            f"{args.seconds:.0f} s on each proxy, order rotated each round"
        )
        paths = {
            "proxy": f"ws://127.0.0.1:{plain_port}/ocpp",
            "proxy --shadow": f"ws://127.0.0.1:{mirrored_port}/ocpp",
        }
        results: dict[str, list[Result]] = {name: [] for name in paths}
        names = list(paths)
        for r in range(args.rounds):
            for name in names[r % 2 :] + names[: r % 2]:
                res = asyncio.run(steady(paths[name], args.chargers, args.seconds))
                results[name].append(res)
                print(line(f"{name} r{r + 1}", res))
        added = [
            s.pct(99) - p.pct(99) for p, s in zip(results["proxy"], results["proxy --shadow"], strict=True)
        ]
        added50 = [
            s.pct(50) - p.pct(50) for p, s in zip(results["proxy"], results["proxy --shadow"], strict=True)
        ]
        print(
            f"  --shadow adds, same round: p50 {', '.join(f'{x:+.3f}' for x in added50)} ms; "
            f"p99 {', '.join(f'{x:+.3f}' for x in added)} ms (median p99 {median(added):+.3f} ms)"
        )
        time.sleep(1.5)  # the shadow run's last update
        with sqlite3.connect(tmp / "shadow.db") as conn:
            row = conn.execute("SELECT sessions, messages, diffs, summary FROM runs").fetchone()
        not_mirrored = json.loads(row[3]).get("not_mirrored")
        print(
            f"  shadow run: {row[0]} sessions, {row[1]} shadow-leg frames, {row[2]} differences, "
            f"{not_mirrored} frames not mirrored"
        )

        deaf = start_proxy(
            prod_port,
            deaf_proxy_port,
            tmp / "deaf.db",
            extra=("--shadow", f"ws://127.0.0.1:{deaf_port}/ocpp"),
        )
        procs.insert(0, deaf)
        wait_port(deaf_proxy_port)
        dproc = psutil.Process(deaf.pid)
        samples: list[str] = []
        done = threading.Event()

        def sample() -> None:
            t0 = time.monotonic()
            while not done.wait(5.0):
                child = sum(rss_mib(c) for c in dproc.children())
                samples.append(f"{time.monotonic() - t0:.0f}s {rss_mib(dproc):.1f}+{child:.1f}")

        print(f"\nshadow that never reads: {args.chargers} chargers x 1/s for {args.deaf_seconds:.0f} s")
        rss0 = rss_mib(dproc)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        windows = asyncio.run(
            steady_windows(
                paths["proxy"].replace(str(plain_port), str(deaf_proxy_port)),
                args.chargers,
                args.deaf_seconds,
                10.0,
            )
        )
        done.set()
        sampler.join()
        for i, w in enumerate(windows):
            print(line(f"{i * 10:>3}-{i * 10 + 10:<3} s", w))
        print(
            f"  proxy RSS (MiB, relay + its shadow process): start {rss0:.1f}; "
            f"every 5 s: {', '.join(samples)}"
        )
        deaf.send_signal(signal.SIGTERM)
        deaf.wait(60)
        with sqlite3.connect(tmp / "deaf.db") as conn:
            row = conn.execute("SELECT sessions, summary FROM runs").fetchone()
            frames = conn.execute("SELECT count(*) FROM frames").fetchone()[0]
        summary = json.loads(row[1])
        calls = sum(w.calls for w in windows)
        print(
            f"  capture: {frames} frames recorded, {2 * calls} expected; shadow run: "
            f"{summary.get('not_mirrored')} frames not mirrored, "
            f"{summary.get('incomplete_sessions')} of {row[0]} sessions marked incomplete"
        )
        out = {
            "shadow_p99_added_ms": added,
            "shadow_p50_added_ms": added50,
            "deaf_p99_ms_by_window": [w.pct(99) for w in windows],
            "deaf_rss_mib": samples,
        }
        print("\n" + json.dumps(out))
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chargers", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--flood-clients", type=int, default=50)
    ap.add_argument("--flood-seconds", type=float, default=8.0, help="each flood of each round")
    ap.add_argument("--rounds", type=int, default=3, help="flood rounds (every path once a round)")
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
    ap.add_argument(
        "--no-reference-csms",
        action="store_true",
        help="skip the flood against the project's reference CSMS (`ocpp-replay csms`)",
    )
    ap.add_argument("--shadow", action="store_true", help="measure the live shadow (5. and 6. above) only")
    ap.add_argument("--deaf-seconds", type=float, default=60.0, help="--shadow: the run with a deaf shadow")
    ap.add_argument("--serve-deaf-shadow", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--serve-csms", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--idle", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument(
        "--remote-shadow",
        action="store_true",
        help="--shadow: the shadow CSMS at SCHED_IDLE, standing in for a backend on another machine",
    )
    ap.add_argument("--serve-bare-hop", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--serve-tcp-relay", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_csms:
        if args.idle:
            from ocpp_replay.priority import lower_priority

            lower_priority()
        asyncio.run(serve_csms(args.serve_csms))
        return 0
    if args.serve_bare_hop:
        asyncio.run(serve_bare_hop(int(args.serve_bare_hop[0]), args.serve_bare_hop[1]))
        return 0
    if args.serve_tcp_relay:
        serve_tcp_relay(*args.serve_tcp_relay)
        return 0
    if args.serve_deaf_shadow:
        serve_deaf_shadow(args.serve_deaf_shadow)
        return 0
    if args.shadow:
        return shadow_main(args)

    csms_port, proxy_port, hop_port, relay_port = free_port(), free_port(), free_port(), free_port()
    ref_port, ref_proxy_port = free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="ocpp-bench-"))
    db, ref_db = tmp / "bench.db", tmp / "reference.db"
    csms = subprocess.Popen([sys.executable, __file__, "--serve-csms", str(csms_port)])
    proxy = start_proxy(csms_port, proxy_port, db)
    hop = subprocess.Popen(
        [sys.executable, __file__, "--serve-bare-hop", str(hop_port), f"ws://127.0.0.1:{csms_port}/ocpp"]
    )
    relay = subprocess.Popen([sys.executable, __file__, "--serve-tcp-relay", str(relay_port), str(csms_port)])
    procs = [proxy, hop, relay, csms]
    try:
        for port in (csms_port, proxy_port, hop_port, relay_port):
            wait_port(port)
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

        print(
            f"\nflood: {args.flood_clients} chargers in a closed loop, {args.rounds} rounds of "
            f"{args.flood_seconds:.0f} s on each path (the fast CSMS)"
        )
        paths = {
            "direct": direct_url,
            "bare hop": hop_url,
            "tcp relay": relay_url,
            "through proxy": proxy_url,
        }
        floods, cpu_per_frame = flood_rounds(paths, args, pproc, "through proxy")
        ratios = report_floods(floods)
        print(f"  proxy CPU while the flood went through it: {cpu_per_frame * 1e6:.1f} us per frame")
        proxied = floods["through proxy"]

        reference: dict[str, Any] = {}
        ref_frames = 0
        if not args.no_reference_csms:
            ref = subprocess.Popen(
                [sys.executable, "-m", "ocpp_replay.cli", "csms", "--port", str(ref_port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(ref)
            wait_port(ref_port)  # (the proxy checks its upstream as it starts)
            ref_proxy = start_proxy(ref_port, ref_proxy_port, ref_db)
            procs.insert(0, ref_proxy)
            wait_port(ref_proxy_port)
            print(
                f"\nflood against the reference CSMS (`ocpp-replay csms`: session state, schema checks), "
                f"{args.rounds} rounds of {args.flood_seconds:.0f} s"
            )
            ref_paths = {
                "direct": f"ws://127.0.0.1:{ref_port}/ocpp",
                "through proxy": f"ws://127.0.0.1:{ref_proxy_port}/ocpp",
            }
            ref_pproc = psutil.Process(ref_proxy.pid)
            ref_floods, ref_cpu = flood_rounds(ref_paths, args, ref_pproc, "through proxy")
            reference = report_floods(ref_floods)
            print(f"  proxy CPU while the flood went through it: {ref_cpu * 1e6:.1f} us per frame")
            ref_frames = 2 * sum(r.calls for r in ref_floods["through proxy"])
            ref_proxy.send_signal(signal.SIGTERM)
            ref_proxy.wait(30)

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
        expected = 2 * (p.calls + sum(r.calls for r in proxied) + long_calls)
        checks = []
        for path, want in ((db, expected), (ref_db, ref_frames)):
            if not path.exists():
                continue
            with sqlite3.connect(path) as conn:
                recorded = conn.execute("SELECT count(*) FROM frames").fetchone()[0]
                lost = conn.execute("SELECT coalesce(sum(frames_lost), 0) FROM sessions").fetchone()[0]
                ended = conn.execute("SELECT count(*) FROM sessions WHERE ended_at IS NULL").fetchone()[0]
            checks.append(recorded == want and lost == 0 and ended == 0)
            print(
                f"\ncapture {path.name}: {recorded} frames recorded, {want} expected, {lost} marked lost, "
                f"{ended} sessions left open"
            )
        proxy_cpu = (cpu_end.user + cpu_end.system) - (cpu_start.user + cpu_start.system)
        print(
            f"proxy CPU over the whole run: {proxy_cpu:.1f} s for {expected} frames "
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
            "flood_ratio_median": ratios["through proxy"]["median"],
            "flood_ratio_rounds": ratios["through proxy"]["rounds"],
            "flood_bare_ratio_median": ratios["bare hop"]["median"],
            "flood_tcp_relay_ratio_median": ratios["tcp relay"]["median"],
            "flood_proxy_cpu_us_per_frame": cpu_per_frame * 1e6,
            "reference_csms_flood_ratio_median": reference.get("through proxy", {}).get("median"),
            "expected": expected,
            "rss_start_mib": rss_start,
            "rss_end_mib": rss_end,
        }
        if args.mitm:
            # the direct round of median rate (this run's figure, neither its best nor its worst)
            fd = sorted(floods["direct"], key=lambda r: r.calls / r.seconds)[len(floods["direct"]) // 2]
            summary.update(measure_mitm(args, csms_port, tmp, d, fd))
        print("\n" + json.dumps(summary))
        ok = all(checks) and not d.errors and not p.errors
        return 0 if ok else 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
