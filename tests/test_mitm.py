"""A real mitmdump (started through ``ocpp-replay mitm``) in reverse mode between independent peers.

The charge point and CSMS come from tests/peers.py (the ``ocpp`` package on ``websockets``);
mitmdump runs as a subprocess with the addon, on 127.0.0.1 with an ephemeral port.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection

from ocpp_replay.core.frames import Direction
from ocpp_replay.share.exchange import import_flows
from ocpp_replay.store import Store
from tests.peers import CsmsBehaviour, Recording, charger, run_csms, session16, session201
from tests.test_exchange import error_line, run

pytestmark = pytest.mark.timeout(40)

REPO = Path(__file__).resolve().parents[1]
LAUNCH = "import typer; from ocpp_replay.cli.share import register; app = typer.Typer(); register(app); app()"


@dataclass
class Mitm:
    proc: asyncio.subprocess.Process
    url: str
    lines: list[str] = field(default_factory=list)

    def log(self) -> str:
        return "".join(self.lines)


@contextlib.asynccontextmanager
async def mitmdump(
    tmp: Path, upstream: str, db: Path, *cli: str, mitm_args: tuple[str, ...] = ()
) -> AsyncIterator[Mitm]:
    """``ocpp-replay mitm --db DB [cli] -- --mode reverse:UPSTREAM ...``; SIGINT and wait on exit."""
    port = upstream.split(":")[2].split("/")[0]
    argv = [sys.executable, "-c", LAUNCH, "mitm", "--db", str(db), *cli, "--"]
    argv += ["--mode", f"reverse:http://127.0.0.1:{port}", "--listen-host", "127.0.0.1", "--listen-port", "0"]
    argv += ["--set", f"confdir={tmp / 'mitmconf'}", "--set", "termlog_verbosity=info", *mitm_args]
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    assert proc.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(20):
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                raise AssertionError("mitmdump exited:\n" + "".join(lines))
            lines.append(line)
            m = re.search(r"listening at 127\.0\.0\.1:(\d+)", line)
            if m:
                break
    mitm = Mitm(proc, f"ws://127.0.0.1:{m.group(1)}/ocpp", lines)

    async def drain() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            lines.append(raw.decode())

    reader = asyncio.create_task(drain())
    try:
        yield mitm
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await reader


def texts(frames: list[Any], direction: Direction) -> list[str | bytes]:
    return [f.raw if f.raw is not None else f.raw_bytes for f in frames if f.direction is direction]


async def test_sessions_pass_byte_identical_and_are_captured_with_metadata(tmp_path: Path) -> None:
    db = tmp_path / "mitm.db"
    flows = tmp_path / "flows.mitm"
    auth = {"Authorization": "Basic " + base64.b64encode(b"ALF%2F01:s3cr3t-pw").decode()}
    behaviour = CsmsBehaviour(remote_stop_after_meter_values=2, password="s3cr3t-pw")
    async with (
        run_csms(behaviour) as csms,
        mitmdump(tmp_path, csms.url, db, "--keep-messages", mitm_args=("-w", str(flows))) as mitm,
    ):
        async with charger(mitm.url, "ALF%2F01", headers=auth) as cp:
            result = await session16(cp)  # type: ignore[arg-type]
            assert cp.remote_stops == [result["tx"]]  # type: ignore[union-attr]
            cp16: Recording = cp.recording  # type: ignore[union-attr]
        auth = {"Authorization": "Basic " + base64.b64encode(b"CS-201:s3cr3t-pw").decode()}
        async with charger(mitm.url, "CS-201", version="2.0.1", headers=auth) as cp:
            await session201(cp)  # type: ignore[arg-type]
            cp201: Recording = cp.recording  # type: ignore[union-attr]
        await asyncio.sleep(0.3)
    log = mitm.log()
    assert "Traceback" not in log and "Addon error" not in log, log
    with Store.open(db) as store:
        s16, s201 = store.sessions()
        frames16, frames201 = list(store.frames(s16.id)), list(store.frames(s201.id))
        offered = store.db.execute("SELECT offered_subprotocols FROM sessions ORDER BY id").fetchall()
    # What each side sent is what the other received, and what the capture holds, byte for byte.
    for frames, cp_rec, csms_rec in (
        (frames16, cp16, csms.connections[0]),
        (frames201, cp201, csms.connections[1]),
    ):
        assert texts(frames, Direction.TO_CSMS) == cp_rec.sent == csms_rec.received
        assert texts(frames, Direction.TO_CP) == csms_rec.sent == cp_rec.received
        assert [f.seq for f in frames] == list(range(1, len(frames) + 1))
        elapsed = [f.elapsed for f in frames]
        assert elapsed == sorted(elapsed) and 0 < elapsed[0] < 5
    assert len(frames16) == 20 and len(frames201) == 8
    assert {f.action for f in frames16 if f.message_type == 3} >= {"BootNotification", "StartTransaction"}
    assert (s16.charge_point_id, s16.path, s16.subprotocol) == ("ALF/01", "/ocpp/ALF%2F01", "ocpp1.6")
    assert (s16.remote_addr, s16.auth_user, s16.query) == ("127.0.0.1", "ALF%2F01", None)
    port = csms.url.split(":")[2].split("/")[0]
    assert s16.upstream_url == f"ws://127.0.0.1:{port}/ocpp/ALF%2F01"
    assert (s16.close_code, s16.closed_by, s16.frames) == (1000, "cp", 20)
    assert s16.started_at < frames16[0].timestamp <= frames16[-1].timestamp <= (s16.ended_at or "")
    assert (s201.charge_point_id, s201.subprotocol, s201.auth_user) == ("CS-201", "ocpp2.0.1", "CS-201")
    assert offered == [("ocpp1.6",), ("ocpp2.0.1",)]
    assert b"s3cr3t-pw" not in db.read_bytes()
    assert re.search(r"close  ALF/01 session=1 code=1000 by=cp frames=20", log)

    # The flow file mitmdump wrote (-w, with --keep-messages) imports to the same sessions.
    imported = tmp_path / "imported.db"
    await asyncio.to_thread(import_flows, flows, imported)
    with Store.open(imported) as store:
        again = store.sessions()
        assert [s.as_dict() for s in again] == [s16.as_dict(), s201.as_dict()]
        for s, frames in ((again[0], frames16), (again[1], frames201)):
            got = list(store.frames(s.id))
            assert [(f.seq, f.timestamp, f.direction, f.raw, f.action) for f in got] == [
                (f.seq, f.timestamp, f.direction, f.raw, f.action) for f in frames
            ]
            # live elapsed is monotonic-clock based, imported is wall-clock based: within 10 ms
            assert all(abs(a.elapsed - b.elapsed) < 0.01 for a, b in zip(got, frames, strict=True))


async def test_memory_stays_bounded_on_a_long_connection(tmp_path: Path) -> None:
    n, size = 1500, 8000
    payload = "x" * size

    async def echo(ws: ServerConnection) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for msg in ws:
                await ws.send(str(msg).replace("[2,", "[3,", 1))

    async def traffic(url: str) -> int:
        async with connect(f"{url}/LONG-1", subprotocols=["ocpp1.6"], ping_interval=None) as ws:  # type: ignore[list-item]
            for i in range(n):
                await ws.send(f'[2,"{i}","DataTransfer",{{"vendorId":"x","data":"{payload}"}}]')
                await ws.recv()
        return n

    rss: dict[str, float] = {}
    for mode, args in (("trimmed", ()), ("kept", ("--keep-messages",))):
        db = tmp_path / f"{mode}.db"
        async with run_csms(handler=echo) as csms, mitmdump(tmp_path, csms.url, db, *args) as mitm:
            async with connect(f"{mitm.url}/WARM", subprotocols=["ocpp1.6"], ping_interval=None) as ws:  # type: ignore[list-item]
                await ws.send('[2,"w","Heartbeat",{}]')
                await ws.recv()
            before = psutil.Process(mitm.proc.pid).memory_info().rss
            await traffic(mitm.url)
            await asyncio.sleep(0.3)
            rss[mode] = (psutil.Process(mitm.proc.pid).memory_info().rss - before) / 2**20
        held = re.search(r"close  LONG-1 session=2 code=1000 by=cp frames=(\d+) held=(\d+)", mitm.log())
        assert held, mitm.log()[-2000:]
        frames, max_held = int(held.group(1)), int(held.group(2))
        assert frames == 2 * n
        with Store.open(db) as store:
            assert store.db.execute("SELECT count(*) FROM frames WHERE session_id = 2").fetchone()[0] == 2 * n
        if mode == "trimmed":
            assert max_held == 2  # the previous message and the current one, never more
        else:
            assert max_held == 2 * n  # what mitmproxy does without the addon's trimming
    print(f"mitmdump RSS growth over {2 * n} frames of {size} B: {rss}")
    # 24 MB of messages went through: kept they stay in memory, trimmed they do not
    assert rss["kept"] > 15
    assert rss["trimmed"] < rss["kept"] / 3


async def test_closes_drops_refusals_and_filtering(tmp_path: Path) -> None:
    db = tmp_path / "c.db"

    async def handler(ws: ServerConnection) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            path = ws.request.path if ws.request else ""
            msg = await ws.recv()
            if path.endswith("CLOSER"):
                await ws.close(4000, "bye from csms")
            elif path.endswith("REFUSE-ME"):
                return
            else:
                await ws.send(str(msg).replace("[2,", "[3,", 1))
                await ws.wait_closed()

    async with run_csms(handler=handler, subprotocols=("ocpp1.6", "chat")) as csms:
        csms.behaviour.refuse_status = None
        async with mitmdump(tmp_path, csms.url, db) as mitm:
            # the CSMS closes with a code and reason
            async with connect(f"{mitm.url}/CLOSER", subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
                await ws.send('[2,"1","Heartbeat",{}]')
                with pytest.raises(websockets.ConnectionClosed):
                    await ws.recv()
                assert (ws.close_code, ws.close_reason) == (4000, "bye from csms")
            # the charger vanishes without a close frame
            ws = await connect(f"{mitm.url}/DROPPER", subprotocols=["ocpp1.6"])  # type: ignore[list-item]
            await ws.send('[2,"1","Heartbeat",{}]')
            await ws.recv()
            ws.transport.abort()
            # not OCPP: another subprotocol, or none offered
            async with connect(f"{mitm.url}/CHAT", subprotocols=["chat"]) as ws:  # type: ignore[list-item]
                await ws.send("hello")
                await ws.recv()
            with pytest.raises(websockets.InvalidStatus):  # (this CSMS insists on a subprotocol)
                await connect(f"{mitm.url}/NOPROTO")
            # the upstream refuses the handshake
            csms.behaviour.refuse_status = 401
            with pytest.raises(websockets.InvalidStatus) as refused:
                await connect(f"{mitm.url}/REFUSED", subprotocols=["ocpp1.6"])  # type: ignore[list-item]
            assert refused.value.response.status_code == 401
            # a charger still connected when mitmdump stops
            csms.behaviour.refuse_status = None
            live = await connect(f"{mitm.url}/LIVE", subprotocols=["ocpp1.6"])  # type: ignore[list-item]
            await live.send('[2,"1","Heartbeat",{}]')
            await live.recv()
            await asyncio.sleep(0.2)
        with contextlib.suppress(websockets.ConnectionClosed):
            await live.close()
    with Store.open(db) as store:
        sessions = {s.charge_point_id: s for s in store.sessions()}
    assert set(sessions) == {"CLOSER", "DROPPER", "REFUSED", "LIVE"}
    closer, dropper, refused_s, live_s = (sessions[k] for k in ("CLOSER", "DROPPER", "REFUSED", "LIVE"))
    assert (closer.close_code, closer.close_reason, closer.closed_by, closer.frames) == (
        4000,
        "bye from csms",
        "csms",
        1,
    )
    assert (dropper.close_code, dropper.close_reason, dropper.closed_by, dropper.frames) == (
        1006,
        "connection lost",
        "cp",
        2,
    )
    assert (refused_s.upstream_status, refused_s.closed_by, refused_s.subprotocol) == (401, "upstream", None)
    assert refused_s.error is not None and refused_s.error.startswith("upstream refused the handshake: 401")
    assert (live_s.closed_by, live_s.close_reason, live_s.frames) == ("proxy", "mitmproxy shut down", 2)
    assert live_s.ended_at is not None


def test_mitm_command_without_mitmproxy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mitmproxy" else real(name, *a)
    )
    line = error_line(run("mitm", "--db", tmp_path / "c.db", "--", "--mode", "reverse:http://x"))
    assert "mitmproxy is not installed" in line and "ocpp-replay[mitm]" in line


def test_addon_log_lines_escape_control_characters(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The addon, driven directly with mitmproxy's test flows: its log lines are escaped."""
    from mitmproxy.test import tflow

    from ocpp_replay.capture.mitm import OcppCapture
    from ocpp_replay.store import CaptureWriter

    caplog.set_level("INFO", logger="ocpp_replay.capture.mitm")
    addon = OcppCapture()
    addon.writer = CaptureWriter(tmp_path / "c.db")
    flow = tflow.twebsocketflow()
    flow.request.path = "/ocpp/%1B%5B31mEVIL%07%E2%80%AE"
    flow.request.headers["Sec-WebSocket-Protocol"] = "ocpp1.6"
    assert flow.response is not None
    flow.response.headers["Sec-WebSocket-Protocol"] = "ocpp1.6"
    addon.websocket_start(flow)
    addon.websocket_end(flow)
    addon.done()
    mine = [r.getMessage() for r in caplog.records if "EVIL" in r.getMessage()]
    assert len(mine) == 2  # open and close
    for line in mine:
        assert line.isprintable() and "\\x1b[31mEVIL\\x07\\u202e" in line, repr(line)
