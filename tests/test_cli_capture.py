"""The capture commands as a user runs them: real processes, real sockets, real files."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def _lines_until(stream: Any, done: Callable[[list[str]], bool], seconds: float = 20) -> list[str]:
    """Lines read from a child's pipe until ``done(lines)``; fails after ``seconds`` (a bound, not
    a wait: it returns as soon as the condition holds)."""
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in stream:
            lines.append(line)
            if done(lines):
                found.set()
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert found.wait(seconds), f"gave up after {seconds} s; read so far: {lines}"
    return lines


def test_tail_follows_new_frames_as_ndjson_with_filters(tmp_path: Path) -> None:
    from ocpp_replay.core.frames import Direction
    from ocpp_replay.store import CaptureWriter

    db = tmp_path / "t.db"
    writer = CaptureWriter(db)
    old = writer.open_session(time.time(), charge_point_id="OLD")
    writer.frame(old, 1, time.time(), 0.0, Direction.TO_CSMS, '[2,"0","Heartbeat",{}]')
    writer.close()
    argv = ["tail", "--db", str(db), "--json", "--action", "Heartbeat", "--interval", "0.05"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ocpp_replay.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # tail says on stderr when it follows: frames written from then on are new to it
        ready = _lines_until(proc.stderr, lambda lines: "following" in lines[-1])
        assert ready[-1].startswith("tail: following")
        writer = CaptureWriter(db, flush_interval=0.01)
        writer.start()
        sid = writer.open_session(time.time(), charge_point_id="LIVE")
        writer.frame(sid, 1, time.time(), 0.0, Direction.TO_CSMS, '[2,"1","BootNotification",{}]')
        writer.frame(sid, 2, time.time(), 0.1, Direction.TO_CSMS, '[2,"2","Heartbeat",{}]')
        writer.frame(sid, 3, time.time(), 0.2, Direction.TO_CP, '[3,"2",{"currentTime":"x\u2028y"}]')
        writer.close()
        lines = _lines_until(proc.stdout, lambda lines: len(lines) == 2)
    finally:
        # SIGTERM, not SIGINT: a test run started in the background (nohup, `&` in a script)
        # passes SIGINT on ignored, and Python then never raises KeyboardInterrupt
        proc.terminate()
        proc.communicate(timeout=30)
    # one JSON object per line, the filter applied (the answer carries its CALL's action),
    # nothing from before tail started
    frames = [json.loads(line) for line in lines]
    assert [(f["charge_point_id"], f["seq"], f["action"]) for f in frames] == [
        ("LIVE", 2, "Heartbeat"),
        ("LIVE", 3, "Heartbeat"),
    ]
    assert "\u2028" not in "".join(lines)  # a line separator in a payload cannot split a line


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


# -- listings: filters, formats, the default capture ---------------------------------------------

T0 = 1_780_000_000.0  # 2026-05-28T20:26:40Z: frames at known times


def listing_capture(db: Path) -> None:
    from ocpp_replay.core.frames import Direction
    from ocpp_replay.store import CaptureWriter

    writer = CaptureWriter(db)
    first = writer.open_session(T0, charge_point_id="CP-A", subprotocol="ocpp1.6")
    frames = [
        (Direction.TO_CSMS, '[2,"1","BootNotification",{"chargePointVendor":"Alfen BV"}]'),
        (Direction.TO_CP, '[3,"1",{"status":"Accepted","interval":300}]'),
        (Direction.TO_CSMS, '[2,"2","Authorize",{"idTag":"ACE0177305"}]'),
        (Direction.TO_CP, '[3,"2",{"idTagInfo":{"status":"Accepted"}}]'),
        (Direction.TO_CSMS, '[2,"3","Heartbeat",{}]'),
        (Direction.TO_CP, '[3,"3",{"currentTime":"2026-05-28T20:27:00Z"}]'),
    ]
    for seq, (direction, raw) in enumerate(frames, 1):
        writer.frame(first, seq, T0 + 10 * seq, 10.0 * seq, direction, raw)
    writer.close_session(first, T0 + 100, frames=len(frames))
    second = writer.open_session(T0 + 3600, charge_point_id="CP-B" + "x" * 150, subprotocol="ocpp1.6")
    writer.frame(second, 1, T0 + 3601, 1.0, Direction.TO_CSMS, '[2,"9","Heartbeat",{}]')
    writer.close_session(second, T0 + 3700, frames=1)
    writer.close()


def cli_json(*args: str, env: dict[str, str] | None = None) -> Any:
    result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == 0, (args, result.output)
    return json.loads(result.stdout)


def test_sessions_filters(tmp_path: Path) -> None:
    db = str(tmp_path / "l.db")
    listing_capture(tmp_path / "l.db")

    def ids(*args: str) -> list[int]:
        return [s["id"] for s in cli_json("sessions", "--db", db, "--json", *args)]

    assert ids() == [1, 2]
    assert ids("--action", "Authorize") == [1]
    assert ids("--action", "Heartbeat") == [1, 2]
    assert ids("--action", "Heartbeat", "--direction", "to_cp") == [1]  # the answer has its CALL's action
    assert ids("--grep", "ACE0177305") == [1]
    assert ids("--grep", "nothing like this") == []
    assert ids("--since", "2026-05-28T21:00:00Z") == [2]  # sessions started in the window
    assert ids("--until", "2026-05-28T21:00:00+00:00") == [1]


def test_show_filters_pretty_and_csv(tmp_path: Path) -> None:
    import csv
    import io

    db = str(tmp_path / "l.db")
    listing_capture(tmp_path / "l.db")

    def seqs(*args: str) -> list[int]:
        return [f["seq"] for f in cli_json("show", "1", "--db", db, "--json", *args)]

    assert seqs() == [1, 2, 3, 4, 5, 6]
    assert seqs("--action", "Authorize", "--action", "Heartbeat") == [3, 4, 5, 6]
    assert seqs("--direction", "to_csms") == [1, 3, 5]
    assert seqs("--since", "2026-05-28T20:27:00Z", "--until", "2026-05-28T20:27:20Z") == [2, 3, 4]
    assert seqs("--grep", '"Accepted"') == [2, 4]

    pretty = runner.invoke(app, ["show", "1", "--db", db, "--action", "Authorize", "--pretty"])
    assert pretty.exit_code == 0, pretty.output
    assert '      {\n        "idTag": "ACE0177305"\n      }\n' in pretty.stdout
    assert '      {\n        "idTagInfo": {\n          "status": "Accepted"\n' in pretty.stdout
    assert "(2 frames match)" in pretty.stdout

    table = runner.invoke(app, ["show", "1", "--db", db, "--csv"])
    rows = list(csv.DictReader(io.StringIO(table.stdout)))
    assert [r["action"] for r in rows] == ["BootNotification"] * 2 + ["Authorize"] * 2 + ["Heartbeat"] * 2
    assert rows[2]["raw"] == '[2,"2","Authorize",{"idTag":"ACE0177305"}]'
    assert rows[0]["direction"] == "to_csms" and rows[0]["timestamp"] == "2026-05-28T20:26:50.000000Z"

    listing = runner.invoke(app, ["sessions", "--db", db, "--csv"])
    rows = list(csv.DictReader(io.StringIO(listing.stdout)))
    assert [(r["id"], r["frames"], r["subprotocol"]) for r in rows] == [
        ("1", "6", "ocpp1.6"),
        ("2", "1", "ocpp1.6"),
    ]
    assert runner.invoke(app, ["runs", "--db", db, "--csv"]).stdout.startswith("id,kind,started_at,")


def test_tables_print_whole_values_outside_a_terminal_and_fold_on_one(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    listing_capture(db)
    long_id = "CP-B" + "x" * 150
    piped = subprocess.run(
        [sys.executable, "-m", "ocpp_replay.cli", "sessions", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "60"},
    )
    assert piped.returncode == 0, piped.stderr
    assert long_id in piped.stdout and "…" not in piped.stdout
    assert "2026-05-28T21:26:40.000000Z" in piped.stdout  # timestamps whole
    terminal = subprocess.run(
        [sys.executable, "-m", "ocpp_replay.cli", "sessions", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "100", "TTY_COMPATIBLE": "1", "NO_COLOR": "1"},
    )
    assert terminal.returncode == 0, terminal.stderr
    lines = re.sub(r"\x1b\[[0-9;]*m", "", terminal.stdout).splitlines()  # bold headers
    assert max(len(line) for line in lines) <= 100 and "…" not in terminal.stdout
    # the id is folded over several lines of its column, every character kept
    folded = "".join(line.split("│")[2].strip() for line in lines if line.count("│") > 3)
    assert long_id in folded


def test_default_capture_from_the_environment(tmp_path: Path) -> None:
    db = tmp_path / "site.db"
    listing_capture(db)
    env = {"OCPP_REPLAY_DB": str(db)}
    assert [s["id"] for s in cli_json("sessions", "--json", env=env)] == [1, 2]
    assert [f["seq"] for f in cli_json("show", "2", "--json", env=env)] == [1]
    explicit = runner.invoke(app, ["sessions", "--db", str(tmp_path / "other.db")], env=env)
    assert explicit.exit_code == 2 and "other.db" in explicit.stderr  # --db wins
    missing = subprocess.run(
        [sys.executable, "-m", "ocpp_replay.cli", "sessions"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "OCPP_REPLAY_DB"},
    )
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "set OCPP_REPLAY_DB" in missing.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["simulate", "--target", "ws://127.0.0.1:9/ocpp", "--version", "3.0"], "'1.6', '2.0.1', '2.1'"),
        (["simulate", "--target", "ws://127.0.0.1:9/ocpp", "--version", "1.6,2.2"], "'2.2' is not one of"),
        (["simulate", "--target", "ws://127.0.0.1:9/ocpp", "--scenario", "nap"], "'session', 'reconnect'"),
        (["csms", "--profile", "v3"], "'v1', 'v2'"),
        (["csms", "--log-level", "LOUD"], "'debug', 'info', 'warning', 'error'"),
        (["proxy", "--upstream", "ws://127.0.0.1:9/ocpp", "--event-loop", "trio"], "'uvloop', 'asyncio'"),
        (["sessions", "--direction", "up"], "'to_csms', 'to_cp'"),
        (["validate", "--version", "1.5"], "'1.6', '2.0.1', '2.1'"),
        (["sessions", "--no-such-option"], "No such option: --no-such-option"),
        (["show"], "Missing argument 'session_id'"),
        (["show", "1", "--json", "--csv", "--db", "{db}"], "--json and --csv: choose one"),
        (["sessions", "--since", "yesterday", "--db", "{db}"], "--since: not an ISO 8601 time"),
    ],
)
def test_bad_values_are_one_error_line_listing_the_choices(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    listing_capture(tmp_path / "l.db")
    argv = [a.format(db=tmp_path / "l.db") for a in args]
    proc = subprocess.run(
        [sys.executable, "-m", "ocpp_replay.cli", *argv], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2, proc
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert expected in proc.stderr and proc.stdout == ""


def test_help_lists_the_choices() -> None:
    import importlib

    from ocpp_replay.capture import proxy
    from ocpp_replay.cli.common import SCENARIO_METAVAR
    from ocpp_replay.simulate.scenario import SCENARIO_NAMES

    # written out in the CLI so that --help imports neither: they must agree
    app_module = importlib.import_module("ocpp_replay.cli.app")
    for name in ("DEFAULT_MAX_MESSAGE_SIZE", "DEFAULT_HANDSHAKE_TIMEOUT", "DEFAULT_MAX_HANDSHAKES"):
        assert getattr(app_module, name) == getattr(proxy, name), name
    assert "[" + "|".join((*SCENARIO_NAMES, "FILE.toml")) + "]" == SCENARIO_METAVAR
    wide = {"COLUMNS": "200"}
    simulate_help = runner.invoke(app, ["simulate", "--help"], env=wide).stdout
    assert "[1.6|2.0.1|2.1][,...]" in simulate_help and SCENARIO_METAVAR in simulate_help
    assert "v1|v2" in runner.invoke(app, ["csms", "--help"], env=wide).stdout
    assert "to_csms|to_cp" in runner.invoke(app, ["show", "--help"], env=wide).stdout


def test_pretty_shows_the_payload_of_each_message_type() -> None:
    from ocpp_replay.cli.common import pretty_payload

    assert pretty_payload('[2,"1","Heartbeat",{}]') == "{}"
    assert pretty_payload('[3,"1",{"a":[1]}]') == '{\n  "a": [\n    1\n  ]\n}'
    assert pretty_payload('[4,"1","NotImplemented","no such action",{"x":1}]') == (
        'NotImplemented: no such action\n{\n  "x": 1\n}'
    )
    assert pretty_payload('[4,"1","InternalError","busy"]') == "InternalError: busy"
    assert pretty_payload("not json {") == "not json {"
    assert pretty_payload('{"a":1}') == '{\n  "a": 1\n}'


def test_the_differences_table_folds_on_a_terminal_and_prints_whole_values_elsewhere() -> None:
    import io

    from rich.console import Console

    from ocpp_replay.core.diff import Difference, DiffKind
    from ocpp_replay.report.terminal import differences_table

    long_value = {"idTagInfo": {"status": "Accepted", "parentIdTag": "P" * 80}}
    d = Difference(1, "CP-" + "9" * 40, 3, "Authorize", DiffKind.CHANGED, "idTagInfo", long_value, None)
    whole = io.StringIO()
    Console(file=whole, width=1_000_000, highlight=False).print(differences_table([d], whole=True))
    assert json.dumps(long_value) in whole.getvalue() and "…" not in whole.getvalue()
    narrow = io.StringIO()
    Console(file=narrow, width=80, force_terminal=True, no_color=True).print(differences_table([d]))
    text = re.sub(r"\x1b\[[0-9;]*m", "", narrow.getvalue())
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text  # folded, not cut: every character of the charge point id is there
    assert "CP-" + "9" * 40 in "".join(
        line.split("│")[3].strip() for line in text.splitlines() if "│" in line
    )
