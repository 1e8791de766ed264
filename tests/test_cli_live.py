"""What long-running commands show while they run: simulate's live display, csms's log."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import urllib.request
from typing import Any

import pytest
from rich.console import Console

from ocpp_replay.cli.live import FleetDisplay
from ocpp_replay.csms import ReferenceCsms
from ocpp_replay.simulate import FleetProgress, run_fleet

pytestmark = pytest.mark.timeout(60)


async def test_the_fleet_reports_its_progress_while_it_runs() -> None:
    seen: list[FleetProgress] = []
    async with ReferenceCsms() as csms:
        result = await run_fleet(csms.url, chargers=3, time_scale=0.002, progress=seen.append)
    assert seen, "no progress reported"
    last = seen[-1]
    assert last.chargers == 3 and last.online == 0  # reported once more when every charger is done
    assert last.transactions == sum(c.transactions for c in result.chargers) > 0
    assert last.calls == sum(result.sent.values()) and last.backend_commands == sum(result.received.values())
    assert last.problems == len(result.problems)
    # counts only grow
    for earlier, later in itertools.pairwise(seen):
        assert later.calls >= earlier.calls and later.transactions >= earlier.transactions


def test_the_fleet_display_draws_one_line_on_a_terminal_and_nothing_elsewhere() -> None:
    progress = FleetProgress(chargers=10, online=7, transactions=4, calls=120, backend_commands=9, problems=2)
    terminal = Console(record=True, force_terminal=True, width=200)
    with FleetDisplay(terminal, 10, live=True) as display:
        display.update(progress)
    text = terminal.export_text()
    assert "7/10 chargers connected, 4 transactions, 120 CALLs sent, 9 backend commands, 2 problems" in text
    quiet = Console(record=True, force_terminal=False, width=200)
    with FleetDisplay(quiet, 10, live=False) as display:
        display.update(progress)
    assert quiet.export_text() == ""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_line(lines: list[str], stream: Any, needle: str, seconds: float = 20) -> str:
    found = threading.Event()
    hit: list[str] = []

    def read() -> None:
        for line in stream:
            lines.append(line)
            if needle in line:
                hit.append(line)
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    assert found.wait(seconds), f"no line with {needle!r} in {seconds} s: {lines}"
    return hit[0]


@pytest.mark.parametrize("level", ["INFO", "warning"])
def test_csms_logs_connections_and_commands_at_its_log_level(level: str) -> None:
    from websockets.sync.client import connect

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ocpp_replay.cli", "csms", "--port", str(port), "--log-level", level],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        _wait_for_line(lines, proc.stderr, "Ctrl-C to stop")
        with connect(f"ws://127.0.0.1:{port}/ocpp/LOG-1", subprotocols=["ocpp1.6"], open_timeout=10) as ws:  # type: ignore[list-item]
            boot = {"chargePointVendor": "Alfen BV", "chargePointModel": "NG910"}
            ws.send(json.dumps([2, "1", "BootNotification", boot]))
            assert json.loads(ws.recv(timeout=10))[2]["status"] == "Accepted"
            get_config = json.loads(ws.recv(timeout=10))  # asked on every boot
            ws.send(json.dumps([3, get_config[1], {"configurationKey": []}]))

            def answer_reset() -> None:
                reset = json.loads(ws.recv(timeout=10))
                ws.send(json.dumps([3, reset[1], {"status": "Accepted"}]))

            charger = threading.Thread(target=answer_reset)
            charger.start()
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/chargers/LOG-1/reset", data=b'{"type": "Soft"}', method="POST"
            )
            with urllib.request.urlopen(request, timeout=10) as resp:
                assert json.loads(resp.read()) == {"answer": {"status": "Accepted"}}
            charger.join(10)
        if level == "INFO":
            _wait_for_line(lines, proc.stderr, "LOG-1 disconnected")
    finally:
        proc.terminate()
        _out, rest = proc.communicate(timeout=20)
    log = "".join(lines) + rest
    assert proc.returncode == 0, log
    if level == "INFO":
        for needle in (
            "LOG-1 connected (OCPP 1.6)",
            "LOG-1 <- GetConfiguration (boot)",
            "LOG-1 -> GetConfiguration answer: ok",
            "LOG-1 <- Reset (api)",
            "LOG-1 -> Reset answer: Accepted",
            "LOG-1 disconnected",
        ):
            assert needle in log, (needle, log)
    else:
        assert "LOG-1" not in log and "INFO" not in log
