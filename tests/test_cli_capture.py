"""The capture commands as a user runs them: real processes, real sockets, real files."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import websockets
from typer.testing import CliRunner
from websockets.asyncio.client import connect

from ocpp_replay.cli import app
from tests.peers import charger, run_csms, session16

pytestmark = pytest.mark.timeout(60)
runner = CliRunner()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_proxy(upstream: str, db: Path, port: int, *options: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ocpp_replay.cli",
            "proxy",
            "--upstream",
            upstream,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--db",
            str(db),
            *options,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"proxy exited: {proc.communicate()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("proxy did not listen")


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
async def test_proxy_command_records_and_stops_cleanly_on_sigterm(tmp_path: Path, event_loop: str) -> None:
    db = tmp_path / "site.db"
    port = free_port()
    async with run_csms() as csms:
        proc = await asyncio.to_thread(start_proxy, csms.url, db, port, "--event-loop", event_loop)
        try:
            url = f"ws://127.0.0.1:{port}/ocpp"
            async with charger(url, "ALF-CLI") as cp:
                await session16(cp, meter_values=1)  # type: ignore[arg-type]
            # A charger still connected when the proxy is told to stop gets a clean close.
            ws = await connect(f"{url}/ALF-STAY", subprotocols=["ocpp1.6"])  # type: ignore[list-item]
            await ws.send('[2,"1","Heartbeat",{}]')
            await asyncio.wait_for(ws.recv(), 5)
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            _out, err = await asyncio.to_thread(proc.communicate, timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    assert "open   ALF-CLI" in err and "close  ALF-CLI" in err  # one log line per open/close
    result = runner.invoke(app, ["sessions", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    sessions = json.loads(result.output)
    assert [s["charge_point_id"] for s in sessions] == ["ALF-CLI", "ALF-STAY"]
    for s in sessions:
        assert {"id", "charge_point_id", "subprotocol", "started_at", "ended_at", "frames"} <= set(s)
        assert s["ended_at"] is not None and s["subprotocol"] == "ocpp1.6"
    assert sessions[1]["frames"] == 2 and sessions[1]["closed_by"] == "proxy"
    shown = runner.invoke(app, ["show", str(sessions[0]["id"]), "--db", str(db), "--json"])
    assert shown.exit_code == 0
    frames = json.loads(shown.output)
    assert len(frames) == sessions[0]["frames"]
    assert {"seq", "timestamp", "direction", "message_type", "unique_id", "action", "raw"} <= set(frames[0])
    assert frames[0]["action"] == "BootNotification" and frames[1]["action"] == "BootNotification"
    assert [f["direction"] for f in frames[:2]] == ["to_csms", "to_cp"]
    # filtered listing and the human views
    only = json.loads(
        runner.invoke(app, ["sessions", "--db", str(db), "--json", "--charge-point", "ALF-STAY"]).output
    )
    assert [s["charge_point_id"] for s in only] == ["ALF-STAY"]
    table = runner.invoke(app, ["sessions", "--db", str(db)])
    assert "ALF-CLI" in table.output and table.exit_code == 0
    timeline = runner.invoke(app, ["show", str(sessions[0]["id"]), "--db", str(db)])
    assert "BootNotification" in timeline.output and "CP → CSMS" in timeline.output


def test_healthz_answers_while_running(tmp_path: Path) -> None:
    import urllib.request

    port = free_port()
    upstream_port = free_port()
    with socket.socket() as srv:  # something accepting TCP, enough for the start-up check
        srv.bind(("127.0.0.1", upstream_port))
        srv.listen()
        proc = start_proxy(f"ws://127.0.0.1:{upstream_port}/ocpp", tmp_path / "h.db", port)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
                assert resp.status == 200
                assert json.loads(resp.read())["status"] == "ok"
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=20)
    assert proc.returncode == 0


@pytest.mark.parametrize(
    "args",
    [
        ["sessions", "--db", "{tmp}/missing.db"],
        ["show", "1", "--db", "{tmp}/missing.db"],
        ["sessions", "--db", "{tmp}/garbage.db"],
        ["show", "42", "--db", "{tmp}/empty.db"],
        ["tail", "--db", "{tmp}/garbage.db"],
        ["proxy", "--upstream", "http://not-ws", "--db", "{tmp}/x.db"],
        # (an upstream that is down is no reason not to start: tests/test_proxy.py)
        [
            "proxy",
            "--upstream",
            "ws://127.0.0.1:{listening}/ocpp",
            "--handshake-timeout",
            "0",
            "--db",
            "{tmp}/x.db",
        ],
        [
            "proxy",
            "--upstream",
            "ws://127.0.0.1:{listening}/ocpp",
            "--max-handshakes",
            "0",
            "--db",
            "{tmp}/x.db",
        ],
        [
            "proxy",
            "--upstream",
            "ws://127.0.0.1:{listening}/ocpp",
            "--connect-timeout",
            "-1",
            "--db",
            "{tmp}/x.db",
        ],
        [
            "proxy",
            "--upstream",
            "ws://127.0.0.1:{listening}/ocpp",
            "--id-from",
            "middle",
            "--db",
            "{tmp}/x.db",
        ],
        [
            "proxy",
            "--upstream",
            "ws://127.0.0.1:{listening}/ocpp",
            "--path-prefix",
            "ocpp",
            "--db",
            "{tmp}/x.db",
        ],
        [
            "proxy",
            "--upstream",
            "ws://127.0.0.1:{listening}/ocpp",
            "--max-connections-per-address",
            "-1",
            "--db",
            "{tmp}/x.db",
        ],
        [
            "proxy",
            "--upstream",
            "ws://127.0.0.1:{closed}/ocpp",
            "--tls-cert",
            "{tmp}/nope.pem",
            "--db",
            "{tmp}/x.db",
        ],
        ["proxy", "--upstream", "ws://127.0.0.1:{listening}/ocpp", "--port", "70000", "--db", "{tmp}/x.db"],
        [
            "proxy",
            "--upstream",
            "ws://127.0.0.1:{listening}/ocpp",
            "--max-message-size",
            "-5",
            "--db",
            "{tmp}/x.db",
        ],
        [
            "proxy",
            "--upstream",
            "ws://127.0.0.1:{listening}/ocpp",
            "--flush-interval",
            "0",
            "--db",
            "{tmp}/x.db",
        ],
        [
            "proxy",
            "--upstream",
            "ws://127.0.0.1:{listening}/ocpp",
            "--event-loop",
            "trio",
            "--db",
            "{tmp}/x.db",
        ],
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "garbage.db").write_bytes(b"\x00garbage" * 512)
    from ocpp_replay.store import Store

    Store.open(tmp_path / "empty.db", create=True).close()
    closed = free_port()
    with socket.socket() as listening:  # an upstream that accepts TCP: the options are at fault
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        argv = [a.format(tmp=tmp_path, closed=closed, listening=listening.getsockname()[1]) for a in args]
        proc = subprocess.run(
            [sys.executable, "-m", "ocpp_replay.cli", *argv], capture_output=True, text=True, timeout=30
        )
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy, socket.socket() as upstream:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        upstream.bind(("127.0.0.1", 0))
        upstream.listen()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "ocpp_replay.cli",
                "proxy",
                "--upstream",
                f"ws://127.0.0.1:{upstream.getsockname()[1]}/ocpp",
                "--host",
                "127.0.0.1",
                "--port",
                str(busy.getsockname()[1]),
                "--db",
                str(tmp_path / "x.db"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: cannot listen on 127.0.0.1")
    assert "Traceback" not in proc.stderr


def test_tail_follows_new_frames(tmp_path: Path) -> None:
    from ocpp_replay.core.frames import Direction
    from ocpp_replay.store import CaptureWriter

    db = tmp_path / "t.db"
    CaptureWriter(db).close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ocpp_replay.cli", "tail", "--db", str(db), "--json", "--interval", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1.0)  # tail starts after what is already there
        writer = CaptureWriter(db, flush_interval=0.01)
        writer.start()
        sid = writer.open_session(time.time(), charge_point_id="LIVE")
        writer.frame(sid, 1, time.time(), 0.0, Direction.TO_CSMS, '[2,"1","Heartbeat",{}]')
        writer.close()
        deadline = time.monotonic() + 10
        buf = b""
        os.set_blocking(proc.stdout.fileno(), False)  # type: ignore[union-attr]
        while b'"Heartbeat"' not in buf and time.monotonic() < deadline:
            buf += proc.stdout.read() or b""  # type: ignore[union-attr]
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
    assert b'"action": "Heartbeat"' in buf


def test_hostile_charge_point_ids_are_shown_escaped_never_as_markup(tmp_path: Path) -> None:
    from ocpp_replay.core.frames import Direction
    from ocpp_replay.store import CaptureWriter

    db = tmp_path / "h.db"
    writer = CaptureWriter(db)
    hostile = ["[/x]", "[bold red]CP", "\x1b[31mRED\x1b[0m", "A\u202eB", "C\x9bD"]
    for cp in hostile:
        sid = writer.open_session(time.time(), charge_point_id=cp, subprotocol="ocpp1.6")
        writer.frame(
            sid, 1, time.time(), 0.0, Direction.TO_CSMS, f'[2,"1","Authorize",{{"idTag":"{cp[:2]}\\u001b"}}]'
        )
        writer.close_session(sid, time.time(), frames=1)
    writer.close()
    for args in (["sessions"], ["show", "1"], ["show", "3"], ["validate"], ["sessions", "--json"]):
        result = runner.invoke(app, [*args, "--db", str(db)])
        assert result.exit_code in (0, 1), (args, result.output, result.exception)
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        for raw in ("\x1b", "\u202e", "\x9b"):
            assert raw not in result.output, (args, raw)
    table = runner.invoke(app, ["sessions", "--db", str(db)], env={"COLUMNS": "250"}).output
    assert "[/x]" in table and "[bold red]CP" in table and "\\x1b[31mRED" in table
