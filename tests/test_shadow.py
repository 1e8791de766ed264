"""Live shadow (issue 17): the judge on its own, then the proxy with ocpp-package backends on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ocpp.v16 import call as call16
from websockets.asyncio.server import ServerConnection, serve

from ocpp_replay.capture.proxy import ProxyServer
from ocpp_replay.capture.shadow import Shadow, ShadowOptions
from ocpp_replay.core.diff import DiffKind
from ocpp_replay.core.rules import RuleSet, parse_rules
from ocpp_replay.core.shadow import ShadowJudge
from ocpp_replay.report import html_report
from ocpp_replay.report.html import coverage
from ocpp_replay.store import Store, list_runs, load_run
from tests.peers import CsmsBehaviour, Recording, charger, run_csms, session16

pytestmark = pytest.mark.timeout(60)

TAG = "ACE0177305"


# ----------------------------------------------------------------------------- the judge, pure


def judge(rules: RuleSet | None = None, timeout: float = 5.0) -> ShadowJudge:
    rules = rules or RuleSet.default()
    j = ShadowJudge(
        7, "CP1", "1.6", rules, rules.correlator("1.6"), 1_700_000_000.0, 0.0, answer_timeout=timeout
    )
    j.connected_with("ocpp1.6", "ocpp1.6", "ocpp1.6")
    return j


START = (
    '[2,"a","StartTransaction",{"connectorId":1,"idTag":"X","meterStart":0,'
    '"timestamp":"2026-01-01T00:00:00Z"}]'
)


def test_answers_are_compared_and_the_shadows_transaction_id_is_used_on_its_leg() -> None:
    j = judge()
    j.from_charger(1, START, 0.1)
    j.from_production(2, '[3,"a",{"transactionId":1000,"idTagInfo":{"status":"Accepted"}}]', 0.2)
    j.from_charger(3, '[2,"b","MeterValues",{"connectorId":1,"transactionId":1000,"meterValue":[]}]', 0.3)
    assert j.outbox == [START]  # MeterValues waits: the shadow's transactionId is not known yet
    j.from_shadow('[3,"a",{"transactionId":5000,"idTagInfo":{"status":"Blocked"}}]', 0.4)
    assert j.outbox[1] == '[2,"b","MeterValues",{"connectorId":1,"transactionId":5000,"meterValue":[]}]'
    j.from_production(4, '[3,"b",{}]', 0.5)
    j.from_shadow('[3,"b",{}]', 0.6)
    j.close(1.0)
    [d] = j.differences
    assert (d.seq, d.action, d.kind, d.path, d.expected, d.actual) == (
        2,
        "StartTransaction",
        DiffKind.CHANGED,
        "idTagInfo.status",
        "Accepted",
        "Blocked",
    )
    assert dict(j.compared) == {"StartTransaction": 1, "MeterValues": 1}
    assert [f.direction for f in j.frames] == ["to_csms", "to_cp", "to_csms", "to_cp"]
    assert [f.recorded_seq for f in j.frames] == [1, None, 3, None]


def test_a_shadow_that_does_not_answer_times_out_only_where_production_answered() -> None:
    j = judge(timeout=5)
    j.from_charger(1, '[2,"h","Heartbeat",{}]', 0.0)
    j.from_charger(3, '[2,"i","Heartbeat",{}]', 0.5)
    j.from_production(2, '[3,"h",{"currentTime":"2026-01-01T00:00:00Z"}]', 0.1)
    j.expire(4.0)
    assert j.differences == []
    j.expire(5.5)
    [d] = j.differences
    assert (d.kind, d.seq, d.action) == (DiffKind.TIMEOUT, 2, "Heartbeat")
    assert not j.waiting


def test_shadow_calls_are_answered_from_the_charger_and_never_reach_it() -> None:
    j = judge()
    # Production asks the charger; the shadow asks the same (with its own transaction id).
    j.from_charger(1, START, 0.0)
    j.from_production(2, '[3,"a",{"transactionId":1000,"idTagInfo":{"status":"Accepted"}}]', 0.1)
    j.from_shadow('[3,"a",{"transactionId":5000,"idTagInfo":{"status":"Accepted"}}]', 0.1)
    j.outbox.clear()
    j.from_shadow('[2,"s1","RemoteStopTransaction",{"transactionId":5000}]', 0.2)
    j.expire(0.5)
    assert j.outbox == []  # production may make the same call in a moment
    j.expire(1.3)
    assert j.outbox[-1].startswith('[4,"s1","NotSupported"')  # the charger was never asked this
    j.outbox.clear()
    j.from_production(3, '[2,"p1","RemoteStopTransaction",{"transactionId":1000}]', 0.3)
    assert j.outbox == []  # production's call is paired with the shadow's: same id once correlated
    j.from_shadow('[2,"s2","RemoteStopTransaction",{"transactionId":5000}]', 0.4)
    j.from_production(5, '[2,"p2","RemoteStopTransaction",{"transactionId":1000}]', 0.5)
    j.expire(1.5)
    assert j.outbox == []  # paired: waits for the charger's answer to production's call
    j.from_charger(6, '[3,"p2",{"status":"Rejected"}]', 0.6)
    assert j.outbox == ['[3,"s2",{"status":"Rejected"}]']
    j.from_production(7, '[2,"p3","Reset",{"type":"Hard"}]', 0.7)
    j.close(1.0)
    kinds = sorted((str(d.kind), d.action, d.seq) for d in j.differences)
    # p1 came after the shadow's s1 was answered: paired and equal. Reset never came from the shadow.
    assert kinds == [("missing_call", "Reset", 7)]


def test_a_call_only_the_shadow_makes_is_unexpected_and_rules_silence_paths() -> None:
    rules = parse_rules('[[rule]]\naction = "Authorize"\nignore = ["idTagInfo.status"]\n')
    j = judge(rules)
    j.from_charger(1, '[2,"u","Authorize",{"idTag":"X"}]', 0.0)
    j.from_production(2, '[3,"u",{"idTagInfo":{"status":"Accepted"}}]', 0.1)
    j.from_shadow('[3,"u",{"idTagInfo":{"status":"Blocked"}}]', 0.2)
    j.from_shadow('[2,"g","GetConfiguration",{}]', 0.3)
    j.close(1.0)
    assert j.outbox[-1] == (
        '[4,"g","NotSupported","ocpp-replay shadow: the charger was not asked this on this connection",{}]'
    )
    [d] = j.differences
    assert (d.kind, d.action, d.seq) == (DiffKind.UNEXPECTED_CALL, "GetConfiguration", None)


def test_connection_findings_are_recorded_once_and_mark_the_session_incomplete() -> None:
    j = judge()
    j.connect_failed("403 Forbidden", 403)
    j.connect_failed("403 Forbidden", 403)
    j.lost("connection dropped")
    j.dropped(3)
    j.dropped(5)
    assert [(d.path, d.actual) for d in j.differences] == [
        ("handshake.status", 403),
        ("connection", "lost: connection dropped"),
        ("connection", "frames dropped: the shadow fell behind"),
    ]
    assert j.error == "shadow handshake failed: 403 Forbidden"


def test_a_different_subprotocol_is_a_handshake_difference() -> None:
    rules = RuleSet.default()
    j = ShadowJudge(1, "CP", "1.6", rules, rules.correlator("1.6"), 0.0, 0.0)
    j.connected_with("ocpp2.0.1,ocpp1.6", "ocpp1.6", "ocpp2.0.1")
    [d] = j.differences
    assert (d.path, d.expected, d.actual) == ("handshake.subprotocol", "ocpp1.6", "ocpp2.0.1")


# ----------------------------------------------------------------------------- on loopback


async def settle(proxy: ProxyServer) -> None:
    async with asyncio.timeout(10):
        while proxy.stats.active:
            await asyncio.sleep(0.01)
        while proxy.writer is not None and proxy.writer.pending:
            await asyncio.sleep(0.01)


_TIME = re.compile(r'"currentTime": ?"[^"]*"')


def shape(frames: list[Any]) -> list[str]:
    """Frames without what changes from run to run (times, message ids)."""
    out = []
    for raw in frames:
        data = json.loads(raw)
        data[1] = "-"
        out.append(_TIME.sub('"currentTime":"-"', json.dumps(data)))
    return out


async def one_charger(url: str, cp_id: str = "ALF-0001", **kw: Any) -> tuple[Recording, dict[str, Any]]:
    async with charger(url, cp_id) as cp:
        result = await session16(cp, id_tag=TAG, **kw)  # type: ignore[arg-type]
        rec: Recording = cp.recording  # type: ignore[union-attr]
    return rec, result


def fast(**kw: Any) -> ShadowOptions:
    return ShadowOptions(flush_interval=0.05, answer_timeout=3.0, connect_timeout=2.0, **kw)


async def test_the_charger_sees_production_only_and_the_run_holds_exactly_the_differences(
    tmp_path: Path,
) -> None:
    prod_behaviour = CsmsBehaviour(remote_stop_after_meter_values=2)
    shadow_behaviour = CsmsBehaviour(remote_stop_after_meter_values=2, tx_base=5000, blocked={TAG})
    # The same session without --shadow, for the charger's frames to be compared with.
    async with run_csms(CsmsBehaviour(remote_stop_after_meter_values=2)) as plain:
        async with ProxyServer(plain.url, tmp_path / "plain.db") as proxy:
            plain_rec, _ = await one_charger(proxy.url)
            await settle(proxy)

    db = tmp_path / "capture.db"
    async with run_csms(prod_behaviour) as prod, run_csms(shadow_behaviour) as staging:
        shadow = Shadow([staging.url], prod.url, fast())
        async with ProxyServer(prod.url, db, shadow=shadow) as proxy:
            rec, result = await one_charger(proxy.url)
            await settle(proxy)
    # The charger saw exactly production's frames, byte for byte, and the same as without --shadow.
    assert rec.received == prod.connections[0].sent
    assert prod.connections[0].received == rec.sent
    # The same frames as without --shadow (times and ids aside; the CSMS's remote stop may come
    # before or after the last MeterValues answer in either run).
    assert sorted(shape(rec.received)) == sorted(shape(plain_rec.received))
    assert result["tx"] == 1000
    # The shadow got the charger's frames with its own transaction id in them.
    station = staging.stations["ALF-0001"]
    assert [m["transaction_id"] for m in station.meter_values] == [5000, 5000, 5000]  # type: ignore[union-attr]
    stop = json.loads(staging.connections[0].received[-1])
    assert stop[2] == "StopTransaction" and stop[3]["transactionId"] == 5000
    # The shadow's RemoteStopTransaction (tx 5000) was answered on its leg with the charger's answer.
    assert [r.status for r in station.remote_stop_results] == ["Accepted"]  # type: ignore[union-attr]

    store = Store.open(db)
    [run] = list_runs(store)
    assert (run["kind"], run["target"], run["baseline"]) == ("shadow", staging.url, prod.url)
    assert run["ended_at"] is not None
    loaded = load_run(store, run["id"])
    found = sorted((d.action, str(d.kind), d.path, d.expected, d.actual) for d in loaded.differences)
    assert found == [
        ("Authorize", "changed", "idTagInfo.status", "Accepted", "Blocked"),
        ("StartTransaction", "changed", "idTagInfo.status", "Accepted", "Blocked"),
    ]
    [session] = loaded.sessions
    [captured] = store.sessions()
    assert session.session_id == captured.id and session.error is None
    assert session.compared["MeterValues"] == 3 and session.compared["RemoteStopTransaction"] == 1
    # Each difference names production's answer in the capture.
    frames = {f.seq: f for f in store.frames(captured.id)}
    for d in loaded.differences:
        assert d.seq is not None and frames[d.seq].action == d.action and frames[d.seq].message_type == 3
    # The reports and the coverage matrix read the run.
    cov = coverage(loaded)
    assert cov[("charger → CSMS", "Authorize", "1.6")] == (1, 1)
    assert cov[("CSMS → charger", "RemoteStopTransaction", "1.6")] == (1, 0)
    page = html_report(loaded)
    assert "idTagInfo.status" in page and "from production" in page and prod.url in page
    store.close()


@contextlib.asynccontextmanager
async def raw_server(handler: Any) -> AsyncIterator[str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}/ocpp"
    finally:
        server.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await server.wait_closed()


async def check_production_intact(tmp_path: Path, shadow_url: str, **opts: Any) -> tuple[Any, Recording]:
    """One charger through the proxy with this shadow: production's traffic and the capture are
    whole; returns the shadow run."""
    db = tmp_path / "capture.db"
    async with run_csms(CsmsBehaviour(remote_stop_after_meter_values=2)) as prod:
        async with ProxyServer(prod.url, db, shadow=Shadow([shadow_url], prod.url, fast(**opts))) as proxy:
            rec, result = await one_charger(proxy.url)
            await settle(proxy)
    assert rec.received == prod.connections[0].sent
    assert prod.connections[0].received == rec.sent
    assert result["stop"] is not None
    with Store.open(db) as store:
        [session] = store.sessions()
        raws = [f.raw for f in store.frames(session.id)]
        assert len(raws) == len(rec.sent) + len(rec.received)
        assert set(raws) == set(rec.sent) | set(rec.received)
        [run] = list_runs(store)
        return load_run(store, run["id"]), rec


async def test_a_shadow_that_is_down_leaves_production_and_the_capture_intact(tmp_path: Path) -> None:
    async with raw_server(lambda r, w: w.close()) as url:
        pass  # the port is closed again: nothing listens there
    run, _ = await check_production_intact(tmp_path, url)
    [session] = run.sessions
    assert session.error is not None and session.error.startswith("shadow handshake failed: unreachable")
    assert [(d.path, d.expected) for d in session.differences] == [("handshake.status", 101)]


async def test_a_shadow_that_refuses_the_handshake_leaves_production_intact(tmp_path: Path) -> None:
    async with run_csms(CsmsBehaviour(refuse_status=403)) as staging:
        run, _ = await check_production_intact(tmp_path, staging.url)
    [d] = run.differences
    assert (d.path, d.expected, d.actual) == ("handshake.status", 101, 403)


async def test_a_shadow_that_drops_mid_session_is_recorded_and_reconnected(tmp_path: Path) -> None:
    connections: list[str] = []

    async def dropper(ws: ServerConnection) -> None:
        connections.append(ws.request.path if ws.request else "")
        if len(connections) == 1:
            await ws.recv()  # the BootNotification, then the connection drops
            ws.transport.abort()
            return
        with contextlib.suppress(Exception):
            async for _ in ws:
                pass

    db = tmp_path / "capture.db"
    async with (
        serve(dropper, "127.0.0.1", 0, subprotocols=["ocpp1.6"], ping_interval=None) as server,  # type: ignore[list-item]
        run_csms() as prod,
    ):
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ocpp"
        async with ProxyServer(prod.url, db, shadow=Shadow([url], prod.url, fast())) as proxy:
            async with charger(proxy.url, "ALF-0001") as cp:
                await cp.call(call16.Heartbeat())  # type: ignore[union-attr]
                async with asyncio.timeout(10):
                    while len(connections) < 2:  # it reconnects on its own
                        await asyncio.sleep(0.01)
                await cp.call(call16.Heartbeat())  # type: ignore[union-attr]
                rec: Recording = cp.recording  # type: ignore[union-attr]
            await settle(proxy)
    assert rec.received == prod.connections[0].sent and len(rec.received) == 2
    assert connections == ["/ocpp/ALF-0001", "/ocpp/ALF-0001"]
    with Store.open(db) as store:
        [session] = store.sessions()
        assert len(list(store.frames(session.id))) == 4
        run = load_run(store, list_runs(store)[0]["id"])
    [session] = run.sessions
    assert session.error == "shadow connection lost: connection dropped"
    assert ("connection", "lost: connection dropped") in [(d.path, d.actual) for d in session.differences]


async def test_a_shadow_that_stops_reading_costs_production_nothing(tmp_path: Path) -> None:
    """The shadow accepts, then never reads: its socket fills, the charger's queue overflows,
    the overflow is counted and the comparison marked incomplete; production never waits."""
    from tests.test_proxy import read_upgrade

    stuck: list[asyncio.StreamWriter] = []

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_upgrade(reader)
        writer.write(head + b"Sec-WebSocket-Protocol: ocpp1.6\r\n\r\n")
        stuck.append(writer)  # and never reads again
        await asyncio.sleep(60)

    db = tmp_path / "capture.db"
    big = "x" * 200_000
    async with raw_server(deaf) as url, run_csms() as prod:
        shadow = Shadow([url], prod.url, fast(queue_limit=8))
        async with ProxyServer(prod.url, db, shadow=shadow) as proxy:
            async with charger(proxy.url, "ALF-0001") as cp:
                for _ in range(60):  # 12 MB: more than the loopback socket buffers hold
                    await cp.call(call16.DataTransfer(vendor_id="x", data=big))  # type: ignore[union-attr]
                rec: Recording = cp.recording  # type: ignore[union-attr]
            await settle(proxy)
            for w in stuck:
                w.transport.abort()
    assert rec.received == prod.connections[0].sent and len(rec.received) == 60
    with Store.open(db) as store:
        [session] = store.sessions()
        assert len(list(store.frames(session.id))) == 120
        [row] = list_runs(store)
        run = load_run(store, row["id"])
        summary = json.loads(store.db.execute("SELECT summary FROM runs").fetchone()[0])
    assert summary["not_mirrored"] > 0
    [s] = run.sessions
    assert s.error is not None and "not mirrored" in s.error


async def test_two_shadows_are_two_runs(tmp_path: Path) -> None:
    db = tmp_path / "capture.db"
    async with (
        run_csms() as prod,
        run_csms(CsmsBehaviour(blocked={TAG})) as one,
        run_csms(CsmsBehaviour()) as two,
    ):
        shadow = Shadow([one.url, two.url], prod.url, fast())
        async with ProxyServer(prod.url, db, shadow=shadow) as proxy:
            await one_charger(proxy.url, meter_values=0)
            await settle(proxy)
    with Store.open(db) as store:
        runs = list_runs(store)
        assert [r["target"] for r in runs] == [one.url, two.url]
        assert [r["diffs"] for r in runs] == [2, 0]


# ----------------------------------------------------------------------------- the command


async def test_proxy_shadow_command_tail_runs_and_reports(tmp_path: Path) -> None:
    """``proxy --shadow`` as a process: ``tail --diffs`` shows the difference as it happens,
    SIGINT closes the run, ``runs`` and ``report`` read it."""
    import signal
    import subprocess
    import sys

    from typer.testing import CliRunner

    from ocpp_replay.cli import app
    from tests.test_cli_capture import _lines_until, free_port, start_proxy

    db = tmp_path / "site.db"
    port = free_port()
    runner = CliRunner()
    async with run_csms() as prod, run_csms(CsmsBehaviour(blocked={TAG})) as staging:
        proxy = await asyncio.to_thread(
            start_proxy, prod.url, db, port, "--shadow", staging.url, "--flush-interval", "0.05"
        )
        argv = ["tail", "--diffs", "--json", "--db", str(db), "--interval", "0.05"]
        tail = await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, "-m", "ocpp_replay.cli", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            await asyncio.to_thread(_lines_until, tail.stderr, lambda lines: "following" in lines[-1])
            async with charger(f"ws://127.0.0.1:{port}/ocpp", "ALF-CLI") as cp:
                await cp.call(call16.Authorize(id_tag=TAG))  # type: ignore[union-attr]
                lines = await asyncio.to_thread(_lines_until, tail.stdout, lambda lines: len(lines) == 1)
            proxy.send_signal(signal.SIGINT)
            _out, err = await asyncio.to_thread(proxy.communicate, timeout=20)
        finally:
            # tail with SIGTERM: a suite started in the background (nohup, `&` in a script) passes
            # SIGINT on ignored, and tail (unlike the proxy) installs no handler of its own for it
            for proc, sig in ((proxy, signal.SIGINT), (tail, signal.SIGTERM)):
                if proc.poll() is None:
                    proc.send_signal(sig)
                    try:
                        await asyncio.to_thread(proc.communicate, timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        await asyncio.to_thread(proc.communicate)
    assert proxy.returncode == 0, err
    live = json.loads(lines[0])
    assert (live["charge_point_id"], live["action"], live["path"], live["expected"], live["actual"]) == (
        "ALF-CLI",
        "Authorize",
        "idTagInfo.status",
        "Accepted",
        "Blocked",
    )
    assert err.count("new difference: Authorize changed idTagInfo.status") == 1
    assert "run 1 closed: 1 sessions, 2 messages, 1 differences" in err, err
    runs = json.loads(runner.invoke(app, ["runs", "--db", str(db), "--json"]).output)
    assert [(r["kind"], r["target"], r["diffs"], r["exit_code"]) for r in runs] == [
        ("shadow", staging.url, 1, 1)
    ]
    assert runs[0]["ended_at"] is not None
    report = runner.invoke(app, ["report", "1", "--db", str(db), "--html", str(tmp_path / "r.html")])
    assert report.exit_code == 0, report.output
    assert (
        "idTagInfo.status" in report.output and "run 1: 1 sessions, 2 messages, 1 difference" in report.output
    )
    page = (tmp_path / "r.html").read_text()
    assert "idTagInfo.status" in page and "Coverage" in page


def test_shadow_options_without_shadow_are_one_error_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ocpp_replay.cli import app

    rules = tmp_path / "r.toml"
    rules.write_text("")
    result = CliRunner().invoke(
        app, ["proxy", "--upstream", "ws://127.0.0.1:1/x", "--shadow-rules", str(rules)]
    )
    assert result.exit_code == 2
    assert result.output.strip() == "error: --shadow-rules and --shadow-auth-file need --shadow"
    bad = CliRunner().invoke(app, ["proxy", "--upstream", "ws://127.0.0.1:1/x", "--shadow", "http://x/"])
    assert bad.exit_code == 2 and bad.output.startswith("error: shadow must be a ws:// or wss:// URL")
    odd = CliRunner().invoke(
        app, ["proxy", "--upstream", "ws://127.0.0.1:1/x", "--shadow", "ws://x/", "--shadow-priority", "fast"]
    )
    assert odd.exit_code == 2
    assert odd.output.strip() == "error: --shadow-priority must be idle or normal, not 'fast'"


async def test_the_shadow_process_with_two_shadows_one_down(tmp_path: Path) -> None:
    """As the command runs it (a child process): one shadow blocks the card, the other is down;
    production and the capture are whole, each shadow has its run."""
    from ocpp_replay.capture.shadow import ShadowProcess

    async with raw_server(lambda r, w: w.close()) as down:
        pass  # nothing listens there any more
    db = tmp_path / "capture.db"
    async with run_csms() as prod, run_csms(CsmsBehaviour(blocked={TAG})) as staging:
        shadow = ShadowProcess([staging.url, down], prod.url, log_level="WARNING")
        async with ProxyServer(prod.url, db, shadow=shadow) as proxy:
            async with charger(proxy.url, "ALF-0001") as cp:
                await cp.call(call16.Authorize(id_tag=TAG))  # type: ignore[union-attr]
                rec: Recording = cp.recording  # type: ignore[union-attr]
            await settle(proxy)
            # ready, the shadow process went behind the relay (ocpp_replay/priority.py)
            assert shadow._proc is not None
            for _ in range(100):
                if os.sched_getscheduler(shadow._proc.pid) == os.SCHED_IDLE:
                    break
                await asyncio.sleep(0.05)
            assert os.sched_getscheduler(shadow._proc.pid) == os.SCHED_IDLE
    assert rec.received == prod.connections[0].sent and len(rec.received) == 1
    with Store.open(db) as store:
        [session] = store.sessions()
        assert len(list(store.frames(session.id))) == 2
        runs = list_runs(store)
        assert [(r["target"], r["diffs"]) for r in runs] == [(staging.url, 1), (down, 1)]
        assert all(r["ended_at"] is not None for r in runs)
        [d] = load_run(store, runs[0]["id"]).differences
        assert (d.action, d.path, d.expected, d.actual) == (
            "Authorize",
            "idTagInfo.status",
            "Accepted",
            "Blocked",
        )
        [d] = load_run(store, runs[1]["id"]).differences
        assert (d.path, d.expected) == ("handshake.status", 101)
