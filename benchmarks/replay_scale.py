"""Replay at scale: many concurrent charger sessions against a fast local CSMS.

    python benchmarks/replay_scale.py [--sessions 1000] [--interval 3] [--duration 30] [--ramp 3]
    python benchmarks/replay_scale.py --sessions 20000 --amplify 20 --workers 2   # 1,000 recorded x 20 copies

Builds a synthetic capture with CaptureWriter (each session: BootNotification,
StartTransaction, then MeterValues every ``--interval`` seconds with a timestamp and the
recorded transactionId, so correlation and timestamp shifting run on every frame), starts an
aiohttp CSMS in a subprocess (its own core; it answers every CALL at once and assigns its own
transaction ids), replays the capture with ``run_replay`` on the default asyncio loop and
prints the scheduling lateness p50/p99/max, the CPU time of the replaying process per frame
sent, and the number of differences (expected: 0). Exits 1 when p99 lateness is 10 ms or more
(with ``--amplify``: when a copy differs or has another copy's identity in the backend's log).
Past 15,000 sessions the CSMS runs as several processes on one port (``--csms-processes``): a
process here may hold at most 20,000 files, and so may each replay worker.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import itertools
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ocpp_replay.core.frames import Direction
from ocpp_replay.replay import load_run, load_sessions, run_replay, store_run
from ocpp_replay.replay.runner import ResultSpool
from ocpp_replay.store import CaptureWriter, Store, utc_iso

# ----------------------------------------------------------------------------- the backend


def serve(port_file: str, log_file: str | None = None, port: int = 0, index: int = 0) -> None:
    """A fast CSMS: answers every CALL with a CALLRESULT (own transaction ids).

    With ``log_file``: one line ``<charge point> <action> <idTag or transactionId>`` for every
    StartTransaction (with the id it assigned) and MeterValues, to check amplified identities.
    With ``port``: one more process on the port of the first (SO_REUSEPORT: the kernel spreads the
    connections over them), for more connections than one process may hold files; ``index``
    keeps the transaction ids of each process apart."""
    from aiohttp import WSMsgType, web

    tx = itertools.count(900_000 + index * 100_000_000)
    log = open(log_file, "w", encoding="utf-8") if log_file else None  # noqa: SIM115 (lives as long as the process)

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("ocpp1.6",), autoping=True)
        await ws.prepare(request)
        cp = request.path.rsplit("/", 1)[-1]
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if data[0] != 2:
                continue
            action = data[2]
            if log is not None and action == "MeterValues":
                log.write(f"{cp} MeterValues {data[3].get('transactionId')}\n")
            if action == "BootNotification":
                payload: dict[str, object] = {
                    "currentTime": utc_iso(time.time()),
                    "interval": 300,
                    "status": "Accepted",
                }
            elif action == "StartTransaction":
                payload = {"transactionId": next(tx), "idTagInfo": {"status": "Accepted"}}
                if log is not None:
                    log.write(f"{cp} StartTransaction {data[3].get('idTag')} {payload['transactionId']}\n")
                    log.flush()
            else:
                payload = {}
            await ws.send_str(json.dumps([3, data[1], payload]))
        return ws

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096, reuse_port=True)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        Path(port_file).write_text(str(bound))
        if os.environ.get("REPLAY_SCALE_CSMS_GC") != "on":
            # The backend is a fixture: with 10,000 connections its own collections stopped it
            # for 100 ms at a time, and the answers it then sent in a burst made the replayer's
            # loop late. Its garbage is freed by refcounting; its cycles wait for the exit.
            gc.collect()
            gc.disable()
        await asyncio.Event().wait()

    asyncio.run(main())


# ----------------------------------------------------------------------------- the capture


def make_capture(db: Path, sessions: int, interval: float, duration: float, ramp: float) -> int:
    rng = random.Random(42)
    w = CaptureWriter(db, flush_interval=0.2)
    t0 = time.time() - 3600
    frames = 0
    for n in range(sessions):
        start = t0 + rng.uniform(0, ramp)
        sid = w.open_session(start, charge_point_id=f"CP-{n:05d}", subprotocol="ocpp1.6")
        seq = 0

        def put(
            elapsed: float, direction: Direction, body: list[object], sid: int = sid, start: float = start
        ) -> None:
            nonlocal seq, frames
            seq += 1
            frames += 1
            w.frame(sid, seq, start + elapsed, elapsed, direction, json.dumps(body, separators=(",", ":")))

        at = 0.005
        put(
            at,
            Direction.TO_CSMS,
            [2, "1", "BootNotification", {"chargePointModel": "M", "chargePointVendor": "V"}],
        )
        put(
            at + 0.001,
            Direction.TO_CP,
            [3, "1", {"currentTime": utc_iso(start), "interval": 300, "status": "Accepted"}],
        )
        at = 0.5 + rng.uniform(0, 0.5)
        put(
            at,
            Direction.TO_CSMS,
            [
                2,
                "2",
                "StartTransaction",
                {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": utc_iso(start + at)},
            ],
        )
        put(
            at + 0.001,
            Direction.TO_CP,
            [3, "2", {"transactionId": n + 1, "idTagInfo": {"status": "Accepted"}}],
        )
        uid = 3
        at += interval * rng.uniform(0.5, 1.0)
        while at < duration:
            mv = [
                {"timestamp": utc_iso(start + at), "sampledValue": [{"value": str(uid * 10), "unit": "Wh"}]}
            ]
            put(
                at,
                Direction.TO_CSMS,
                [2, str(uid), "MeterValues", {"connectorId": 1, "transactionId": n + 1, "meterValue": mv}],
            )
            put(at + 0.001, Direction.TO_CP, [3, str(uid), {}])
            uid += 1
            at += interval * rng.uniform(0.9, 1.1)
        w.close_session(sid, start + at, close_code=1000, closed_by="cp")
    w.start()
    w.close(timeout=120)
    return frames


# ----------------------------------------------------------------------------- the floor


async def bare_run(db: Path, target: str, connect_ahead: float, max_connecting: int, minimal: bool) -> None:
    """The floor under any replay on this machine: the same chargers send the same recorded
    texts at the same times, each waiting for its answer, and nothing else: no plan,
    correlation, timestamp shifting, pairing, diff, validation or recording. Over the replay's own
    websocket client (capture/wsclient.WsClient), or with ``minimal`` over the least a client can
    be: a fixed upgrade request, the 101 not checked, one mask per connection, frames not
    checked; a lower bound, not a correct client. Prints lateness and the CPU per frame sent."""
    from ocpp_replay.capture.handshake import new_key
    from ocpp_replay.capture.wsclient import Endpoint, WsClient
    from ocpp_replay.capture.wsframes import TEXT, unmask
    from ocpp_replay.core.correlate import utc_seconds

    class Bare(WsClient):
        __slots__ = ("answered",)

        def __init__(self) -> None:
            super().__init__(1 << 20)
            self.answered: asyncio.Future[None] | None = None

        def message(self, opcode: int, payload: bytes | str) -> None:
            if self.answered is not None and not self.answered.done():
                self.answered.set_result(None)

    class Minimal(asyncio.Protocol):
        def __init__(self, request: bytes) -> None:
            self.request, self.buf, self.open = request, b"", False
            self.mask = os.urandom(4)
            self.answered = asyncio.get_running_loop().create_future()
            self.transport: Any = None

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            transport.write(self.request)

        def data_received(self, data: bytes) -> None:
            buf = self.buf + data
            if not self.open:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    self.buf = buf
                    return
                self.open, buf = True, buf[end + 4 :]
                self.answered.set_result(None)
            while len(buf) >= 2:
                n, pos = buf[1] & 0x7F, 2
                if n == 126:
                    n, pos = int.from_bytes(buf[2:4], "big"), 4
                if len(buf) < pos + n:
                    break
                buf = buf[pos + n :]
                if not self.answered.done():
                    self.answered.set_result(None)
            self.buf = buf

        def send(self, text: bytes) -> None:
            n = len(text)
            head = bytes((0x81, 0x80 | n)) if n < 126 else bytes((0x81, 0xFE)) + n.to_bytes(2, "big")
            self.answered = asyncio.get_running_loop().create_future()
            self.transport.write(head + self.mask + unmask(text, self.mask))

    store = Store.open(db)
    sessions = load_sessions(store)
    store.close()
    plans = [
        (
            info.charge_point_id,
            utc_seconds(info.started_at),
            [(f.elapsed, f.raw.encode()) for f in frames if f.direction == Direction.TO_CSMS and f.raw],
            utc_seconds(info.ended_at or info.started_at),
        )
        for info, frames in sessions
    ]
    del sessions
    gc.collect()
    first = min(p[1] for p in plans)
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 1.0
    endpoint = Endpoint.of(target)
    gate = asyncio.Semaphore(max_connecting)
    lateness: list[float] = []
    headers = [("Sec-WebSocket-Protocol", "ocpp1.6")]

    async def one(cp: str, start: float, texts: list[tuple[float, bytes]], end: float) -> None:
        at = t0 + start - first
        await asyncio.sleep(max(0.0, at - connect_ahead - loop.time()))
        path = f"{endpoint.path}/{cp}"
        if minimal:
            request = (
                f"GET {path} HTTP/1.1\r\nHost: {endpoint.host_header}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {new_key()}\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Protocol: ocpp1.6\r\n\r\n"
            ).encode()
            async with gate:
                _, bare = await loop.create_connection(lambda: Minimal(request), endpoint.host, endpoint.port)
                await bare.answered
        else:
            client = Bare()
            async with gate:
                await client.connect(endpoint, path, headers, 30.0)
        for elapsed, text in texts:
            due = at + elapsed
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            lateness.append(loop.time() - due)
            if minimal:
                bare.send(text)
                await bare.answered
            else:
                client.answered = loop.create_future()
                client.send(TEXT, text)
                await client.answered
        if (wait := at + end - start - loop.time()) > 0:
            await asyncio.sleep(wait)
        if minimal:
            bare.transport.close()  # no closing handshake: cheaper than any correct client
        else:
            await client.close(1000)

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = time.monotonic()
    await asyncio.gather(*(one(*p) for p in plans))
    wall = time.monotonic() - wall0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    user, kernel = cpu1.ru_utime - cpu0.ru_utime, cpu1.ru_stime - cpu0.ru_stime
    sent = len(lateness)
    lateness.sort()
    what = "minimal clients (a lower bound" if minimal else "bare WsClients (the replay's client"
    print(f"{what}: the same frames at the same times, nothing else): {sent} frames")
    print(
        f"  wall {wall:.1f}s, lateness p50 {lateness[sent // 2] * 1e3:.3f} ms, "
        f"p99 {lateness[min(sent - 1, int(sent * 0.99))] * 1e3:.3f} ms"
    )
    print(
        f"  CPU {user + kernel:.2f}s = {(user + kernel) / sent * 1e6:.0f} us per frame sent "
        f"(in the kernel {kernel / sent * 1e6:.0f} us)"
    )


# ----------------------------------------------------------------------------- the run


async def bench(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="replay-scale-"))
    db = tmp / "capture.db"
    started = time.monotonic()
    recorded = args.sessions // args.amplify if args.amplify else args.sessions
    frames = make_capture(db, recorded, args.interval, args.duration, args.ramp)
    print(f"capture: {recorded} sessions, {frames} frames in {time.monotonic() - started:.1f}s")
    logged = bool(args.amplify or args.window)
    backends = args.csms_processes or -(-args.sessions // 15_000)  # at most 15,000 connections each
    procs: list[asyncio.subprocess.Process] = []
    port = 0
    try:
        for i in range(backends):
            port_file = tmp / f"port.{i}"
            extra = ["--backend-log", str(tmp / f"backend.log.{i}")] if logged else []
            if port:
                extra += ["--serve-port", str(port), "--serve-index", str(i)]
            serve_cmd = [sys.executable, __file__, "--serve", str(port_file), *extra]
            procs.append(await asyncio.create_subprocess_exec(*serve_cmd))
            for _ in range(200):
                if port_file.exists() and port_file.read_text():
                    break
                await asyncio.sleep(0.05)
            port = int(port_file.read_text())
        if backends > 1:
            print(f"backend: {backends} CSMS processes on port {port} (SO_REUSEPORT)")
        target = f"ws://127.0.0.1:{port}/ocpp"
        store = Store.open(db)
        priming: dict[int, frozenset[int]] = {}
        if args.window:
            from ocpp_replay.core.correlate import utc_seconds
            from ocpp_replay.core.window import Window
            from ocpp_replay.replay import Selection
            from ocpp_replay.replay.window import load_window

            first = min(utc_seconds(s.started_at) for s in store.sessions())
            window = Window(first + args.window[0], first + args.window[0] + args.window[1])
            t_load = time.monotonic()
            sessions, priming = await asyncio.to_thread(load_window, store, Selection(), window)
            print(
                f"window: {len(sessions)} connections, {sum(1 for p in priming.values() if p)} open at its "
                f"start primed with {sum(len(p) for p in priming.values())} frames "
                f"(cut in {time.monotonic() - t_load:.1f}s)"
            )
        elif args.stream:
            sessions = None  # as the CLI replays a capture: streamed, results written as sessions end
        else:
            sessions = await asyncio.to_thread(load_sessions, store)
        due = None
        if args.amplify and args.stream:  # as the CLI amplifies: each copy made as it is loaded
            from ocpp_replay.replay import Selection
            from ocpp_replay.replay.amplify import copies_of
            from ocpp_replay.replay.runner import due_sessions

            copies = copies_of(store, Selection(), args.amplify, args.ramp)
            due = await asyncio.to_thread(due_sessions, store, Selection(), 1.0, None, copies)
            print(f"amplified, streamed: {len(due[0])} sessions ({args.amplify} copies, over {args.ramp}s)")
        elif args.amplify:
            from ocpp_replay.replay.amplify import amplify_sessions

            sessions, _ = amplify_sessions(sessions, args.amplify, spread=args.ramp)
            print(f"amplified: {len(sessions)} sessions ({args.amplify} copies, spread over {args.ramp}s)")
        if args.gc_freeze:
            gc.collect()
            gc.freeze()
        pauses: list[tuple[int, float]] = []
        gc_started = [0.0]

        walls: list[float] = []  # when each pause began (wall clock), to place it in the run

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                gc_started[0] = time.perf_counter()
            else:
                pauses.append((info["generation"], time.perf_counter() - gc_started[0]))
                walls.append(time.time())

        gc.callbacks.append(on_gc)
        rss_samples: list[float] = []  # MiB, every 0.25 s of the run

        async def sample_rss() -> None:
            page = resource.getpagesize() / 2**20
            while True:
                with open("/proc/self/statm", encoding="ascii") as f:  # noqa: ASYNC230 (procfs: no disk)
                    rss_samples.append(int(f.read().split()[1]) * page)
                await asyncio.sleep(0.25)

        sampler = asyncio.create_task(sample_rss())
        cpu0 = time.process_time()
        self0 = resource.getrusage(resource.RUSAGE_SELF)
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall0 = time.monotonic()
        replayer: Any = run_replay
        if args.workers > 1:
            from ocpp_replay.replay.workers import run_replay_workers

            replayer = functools.partial(run_replay_workers, workers=args.workers)
        spool = ResultSpool(store) if args.stream else None
        result = await replayer(
            store,
            target,
            sessions=sessions,
            spool=spool,
            due=due,
            answer_timeout=10.0,
            grace=1.0,
            start_delay=1.0,
            quiet_gc=not args.no_quiet_gc,
            connect_ahead=args.connect_ahead,
            max_connecting=args.max_connecting,
            load_ahead=args.load_ahead,
        )
        wall = time.monotonic() - wall0
        sampler.cancel()
        gc.callbacks.remove(on_gc)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers, joined (not the CSMS)
        cpu_parent = time.process_time() - cpu0
        cpu = cpu_parent + (kids.ru_utime - kids0.ru_utime) + (kids.ru_stime - kids0.ru_stime)
        self1 = resource.getrusage(resource.RUSAGE_SELF)  # user and system apart: the kernel's share
        cpu_sys = self1.ru_stime - self0.ru_stime + kids.ru_stime - kids0.ru_stime
        t0 = time.monotonic()
        stored = await asyncio.to_thread(store_run, store, result)
        store_s = time.monotonic() - t0
        if args.stream:  # the frames went to the run as sessions ended: read back for the figures
            result = await asyncio.to_thread(load_run, store, stored.run_id)
            got = result.options.get("streamed", {})
            print(f"  streamed: {got.get('loaded')} sessions loaded, at most {got.get('most_held')} held")
        store.close()
        # after the replay, so that its figures are those of a run without --bare (the CSMS
        # processes keep what 20,000 more connections left them, and their collector is off)
        for minimal in (True, False) if args.bare else ():
            await bare_run(db, target, args.connect_ahead, args.max_connecting, minimal)
    finally:
        for proc in procs:
            proc.terminate()
            await proc.wait()
    t = result.timing
    sent = sum(1 for s in result.sessions for f in s.frames if f.direction == "to_csms")
    peak = max(len(s.frames) for s in result.sessions)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.workers > 1:
        rss_kid = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"  workers: {args.workers}; largest worker's peak RSS {rss_kid:.0f} MiB (CPU: all of them)")
    print(
        f"replay: {len(result.sessions)} concurrent sessions, {sent} frames sent, {result.messages} exchanged"
    )
    print(f"  wall {wall:.1f}s, differences {len(result.differences)}, max frames/session {peak}")
    print(
        f"  lateness p50 {t.p50 * 1e3:.3f} ms, p99 {t.p99 * 1e3:.3f} ms, max {t.max * 1e3:.3f} ms "
        f"({t.frames} scheduled frames, {t.held} held by a causal wait)"
    )
    lateness = [f.lateness for s in result.sessions for f in s.frames if f.lateness is not None]
    earliest = min(lateness, default=0.0)
    verdict = "never early" if earliest >= 0 else "EARLY"
    print(f"  earliest frame: {earliest * 1e3:+.3f} ms against its time ({verdict})")
    shakes = result.options.get("handshakes") or {}
    if shakes.get("sessions"):
        print(
            f"  handshakes (apart from lateness; connect ahead {args.connect_ahead:g} s, at most "
            f"{args.max_connecting} at once): p50 {shakes['p50_ms']:.1f} ms, p99 {shakes['p99_ms']:.1f} ms, "
            f"max {shakes['max_ms']:.1f} ms; {shakes['connected_after_start']} connected after their "
            f"start (max {shakes['after_start_max_ms']:.0f} ms)"
        )
    print(
        f"  CPU {cpu:.2f}s = {cpu / max(sent, 1) * 1e6:.0f} us per frame sent "
        f"({cpu / wall * 100:.0f}% of a core; in the kernel {cpu_sys / max(sent, 1) * 1e6:.0f} us)"
        + (f"; the parent {cpu_parent:.2f}s, the workers {cpu - cpu_parent:.2f}s" if args.workers > 1 else "")
    )
    print(f"  run {stored.run_id} stored in {store_s:.1f}s; peak RSS {rss:.0f} MiB")
    if rss_samples:
        at = [rss_samples[min(len(rss_samples) - 1, int(len(rss_samples) * q))] for q in (0.1, 0.5, 0.9)]
        print(f"  RSS at 10 % / 50 % / 90 % of the run: {at[0]:.0f} / {at[1]:.0f} / {at[2]:.0f} MiB")
    by_action: dict[str, list[float]] = {}
    for s in result.sessions:
        primed = priming.get(s.session_id, frozenset())
        for f in s.frames:
            if f.lateness is not None:
                prefix = "priming " if f.recorded_seq in primed else ""
                by_action.setdefault(prefix + (f.action or "?"), []).append(f.lateness)
    for action, values in sorted(by_action.items()):
        values.sort()
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
        print(
            f"  {action}: {len(values)} frames, lateness p50 {values[len(values) // 2] * 1e3:.3f} ms, "
            f"p99 {p99 * 1e3:.3f} ms, max {values[-1] * 1e3:.3f} ms"
        )
    worst = max(pauses, key=lambda p: p[1], default=(0, 0.0))
    print(
        f"  gc: {len(pauses)} collections in run_replay (setup included), "
        f"{sum(1 for g, _ in pauses if g == 2)} full; longest {worst[1] * 1e3:.1f} ms (generation {worst[0]})"
    )
    from ocpp_replay.core.correlate import utc_seconds

    sent_at = [
        utc_seconds(f.timestamp) for s in result.sessions for f in s.frames if f.direction == "to_csms"
    ]
    if sent_at:  # this process's collections while frames were being sent (with --workers: the parent's)
        first, last = min(sent_at), max(sent_at)
        during = [p for p, w in zip(pauses, walls, strict=True) if first <= w <= last]
        longest = max((d for g, d in during if g == 2), default=0.0)
        print(
            f"  gc while frames were sent: {len(during)} collections, "
            f"{sum(1 for g, _ in during if g == 2)} full (longest full {longest * 1e3:.1f} ms), "
            f"longest of any {max((d for _, d in during), default=0.0) * 1e3:.1f} ms"
        )
    by_slice: dict[int, list[float]] = {}  # lateness by 5 s of the run (the ramp apart from the rest)
    sent_late = [
        (utc_seconds(f.timestamp), f.lateness)
        for s in result.sessions
        for f in s.frames
        if f.lateness is not None
    ]
    if sent_late:
        t_first = min(t for t, _ in sent_late)
        for at, late in sent_late:
            by_slice.setdefault(int((at - t_first) // 5), []).append(late)
        p99s = [sorted(v)[min(len(v) - 1, int(len(v) * 0.99))] for _, v in sorted(by_slice.items())]
        print("  lateness p99 by 5 s of the run: " + ", ".join(f"{p * 1e3:.1f}" for p in p99s) + " ms")
    for d in result.differences[:5]:
        print("  diff:", d)
    identities = (
        check_backend_log(sorted(tmp.glob("backend.log.*")), len(result.sessions), args.amplify or 1)
        if args.amplify or args.window
        else True
    )
    if args.amplify:
        # the amplification floor: no differences, every copy's identity as the backend saw it
        # (lateness is printed: a ramp of thousands of copies a second is bound by the CPU)
        ok = not result.differences and identities
        print("PASS" if ok else "FAIL", "(floor: no differences, per-copy identities in the backend's log)")
    else:
        ok = t.p99 < 0.010 and not result.differences and identities
        print("PASS" if ok else "FAIL", "(floor: p99 lateness < 10 ms, no differences)")
    if args.keep:
        print("capture kept in", db)
    else:
        await asyncio.to_thread(shutil.rmtree, tmp)
    return 0 if ok else 1


def check_backend_log(paths: list[Path], sessions: int, copies: int) -> bool:
    """The amplified identities as the backend saw them: one charge point per session, one idTag per
    copy (every recorded session has the tag "T"), each charger's MeterValues with its own id."""
    started: dict[str, tuple[str, str]] = {}
    wrong = 0
    lines = [line for path in paths for line in path.read_text(encoding="utf-8").splitlines()]
    for line in lines:
        parts = line.split()
        if parts[1] == "StartTransaction":
            started[parts[0]] = (parts[2], parts[3])
        elif started.get(parts[0], ("", ""))[1] != parts[2]:
            wrong += 1
    tags = {tag for tag, _ in started.values()}
    txs = {t for _, t in started.values()}
    ok = len(started) == sessions and len(tags) == copies and len(txs) == sessions and wrong == 0
    print(
        f"  backend log: {len(started)} charge points started a transaction, {len(tags)} distinct idTags, "
        f"{len(txs)} transaction ids, {wrong} MeterValues with another charger's id: "
        f"{'ok' if ok else 'WRONG'}"
    )
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between MeterValues")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds each session lasts")
    parser.add_argument("--ramp", type=float, default=3.0, help="session starts spread over this")
    parser.add_argument("--workers", type=int, default=1, help="replay over this many processes")
    parser.add_argument("--connect-ahead", type=float, default=1.0, help="dial this long before a start")
    parser.add_argument("--max-connecting", type=int, default=100, help="handshakes in flight at once")
    parser.add_argument(
        "--load-ahead",
        type=float,
        default=10.0,
        help="with --stream: load each session this long ahead",
    )
    parser.add_argument(
        "--bare",
        action="store_true",
        help="then the floor: minimal, then bare WsClient clients send the same frames at the same times, "
        "nothing else",
    )
    parser.add_argument("--gc-freeze", action="store_true", help="gc.freeze() the loaded capture")
    parser.add_argument("--no-quiet-gc", action="store_true", help="let full GC run during the replay")
    parser.add_argument("--keep", action="store_true", help="keep the temporary capture")
    parser.add_argument(
        "--stream",
        action="store_true",
        help="replay as the CLI does: the capture streamed, each session's frames stored as it ends",
    )
    parser.add_argument("--amplify", type=int, default=0, help="replay sessions/N recorded sessions N times")
    parser.add_argument(
        "--window",
        nargs=2,
        type=float,
        metavar=("AT", "LENGTH"),
        help="replay the window from AT s after the first session's start, LENGTH s long (replay --from): "
        "every connection open then is primed",
    )
    parser.add_argument("--serve", metavar="PORT_FILE", help=argparse.SUPPRESS)
    parser.add_argument("--backend-log", help=argparse.SUPPRESS)
    parser.add_argument("--serve-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--serve-index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--csms-processes",
        type=int,
        default=0,
        help="CSMS processes sharing the port (default: one per 15,000 sessions; a process here holds "
        "at most 20,000 files)",
    )
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.backend_log, args.serve_port, args.serve_index)
        return
    try:  # 20,000 chargers are 20,000 files here and in the CSMS (which inherits the limit)
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))  # raising the hard limit: root only
    except (ValueError, OSError):
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    raise SystemExit(asyncio.run(bench(args)))


if __name__ == "__main__":
    main()
