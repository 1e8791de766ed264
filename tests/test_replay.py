"""End to end: capture a session through the proxy between `ocpp` peers, replay it against
fresh backends on 127.0.0.1:0, and check differences, correlation, timing and errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from ocpp_replay.capture.proxy import ProxyServer
from ocpp_replay.cli.replay import register
from ocpp_replay.core.diff import DiffKind
from ocpp_replay.core.frames import Direction
from ocpp_replay.core.results import RunResult
from ocpp_replay.core.schedule import plan_sessions
from ocpp_replay.replay import Selection, load_run, load_sessions, run_replay, store_run
from ocpp_replay.store import CaptureWriter, Store
from tests.replay_peers import Behaviour, csms, run_charger16, run_charger201
from tests.web_peers import serving

pytestmark = pytest.mark.timeout(30)


async def _capture(db: Path, version: str) -> None:
    async with (
        csms(version, Behaviour(tx_base=17, remote_start_base=5)) as (url, _seen),
        ProxyServer(url, db) as proxy,
    ):
        if version == "1.6":
            await run_charger16(proxy.url, "CP-16")
        else:
            await run_charger201(proxy.url, "CS-201")


@pytest.fixture(scope="module")
def capture16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("cap16") / "capture.db"
    asyncio.run(asyncio.wait_for(_capture(db, "1.6"), 20))
    return db


@pytest.fixture(scope="module")
def capture201(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("cap201") / "capture.db"
    asyncio.run(asyncio.wait_for(_capture(db, "2.0.1"), 20))
    return db


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "capture.db"
    with Store.open(src) as s:  # a consistent copy of a WAL database
        s.db.execute(f"VACUUM INTO '{dst}'")
    return dst


async def _replay(db: Path, url: str, **kw: Any) -> RunResult:
    kw.setdefault("answer_timeout", 2.0)
    kw.setdefault("grace", 0.5)
    with Store.open(db) as store:
        result = await run_replay(store, url, **kw)
        return await asyncio.to_thread(store_run, store, result)


def _cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def _error_line(stderr: str) -> str:
    """The error message (rich wraps long lines at the runner's 80 columns: join them)."""
    assert "Traceback" not in stderr
    assert stderr.startswith("error: "), stderr
    return " ".join(line.strip() for line in stderr.strip().splitlines())


async def _invoke(args: list[str]) -> Any:
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, _cli(), args, catch_exceptions=False)


# ----------------------------------------------------------------------------- correlation


async def test_replay16_against_fresh_backend_correlates_transaction_id(
    capture16: Path, tmp_path: Path
) -> None:
    db = _copy(capture16, tmp_path)
    async with csms("1.6", Behaviour(tx_base=5000)) as (url, seen):
        result = await _replay(db, url)
    assert [d for d in result.differences] == []
    assert result.exit_code == 0
    # The backend saw its own transaction id in MeterValues and StopTransaction, never 17.
    assert seen.transaction_ids == [5000, 5000, 5000, 5000]
    assert [a.status for a in seen.remote_stop_answers] == ["Accepted"]
    (session,) = result.sessions
    assert session.compared["RemoteStopTransaction"] == 1
    assert session.compared["StartTransaction"] == 1
    # stored: the run, and every live frame
    with Store.open(db) as store:
        runs = store.db.execute("SELECT id, diffs, exit_code, sessions FROM runs").fetchall()
        assert runs == [(result.run_id, 0, 0, 1)]
        n = store.db.execute("SELECT count(*) FROM run_frames WHERE run_id = ?", [result.run_id]).fetchone()[
            0
        ]
        assert n == session.messages == 22


async def test_replay201_correlates_remote_start_id(capture201: Path, tmp_path: Path) -> None:
    db = _copy(capture201, tmp_path)
    async with csms("2.0.1", Behaviour(remote_start_base=900)) as (url, seen):
        result = await _replay(db, url)
    assert list(result.differences) == []
    assert seen.remote_start_ids_sent == [900]
    assert seen.remote_start_ids_seen == [900]  # not the recorded 5
    assert set(seen.transaction_ids) == {"TX-4711"}  # charger-generated: sent as recorded
    assert len(seen.remote_stop_answers) == 1
    assert result.sessions[0].compared["RequestStartTransaction"] == 1


async def test_changed_answer_is_exactly_one_difference_cli(capture16: Path, tmp_path: Path) -> None:
    db = _copy(capture16, tmp_path)
    report, junit = tmp_path / "r.json", tmp_path / "j.xml"
    async with csms("1.6", Behaviour(tx_base=9000, blocked={"ACE0177305"})) as (url, _seen):
        res = await _invoke(
            ["replay", "--db", str(db), "--target", url, "--report", str(report), "--junit", str(junit)]
        )
    assert res.exit_code == 1, res.output
    doc = json.loads(report.read_text())
    assert doc["summary"]["sessions"] == 1
    assert doc["summary"]["diffs"] == 1
    assert set(doc["summary"]["timing"]) >= {"frames", "lateness_ms"}
    (sess,) = doc["sessions"]
    assert sess["charge_point_id"] == "CP-16"
    assert sess["diffs"] == [
        {
            "seq": 6,
            "action": "Authorize",
            "kind": "changed",
            "path": "idTagInfo.status",
            "expected": "Accepted",
            "actual": "Blocked",
        }
    ]
    suite = ET.parse(junit).getroot()
    cases = suite.findall(".//testcase")
    assert len(cases) == 1 and cases[0].find("failure") is not None
    assert "Authorize" in res.stdout
    assert "[1/1] session 1 (CP-16): 22 messages, 1 difference" in res.stderr  # quiet progress lines


async def test_basic_auth_from_auth_file(capture16: Path, tmp_path: Path) -> None:
    db = _copy(capture16, tmp_path)
    async with csms("1.6", Behaviour(password="s3cret")) as (url, seen):
        refused = await _replay(db, url)
        assert [(d.kind, d.path, d.expected, d.actual) for d in refused.differences] == [
            (DiffKind.CHANGED, "handshake.status", 101, 401)
        ]
        auth = tmp_path / "auth"
        auth.write_text("# passwords\nCP-16:s3cret\n")
        res = await _invoke(["replay", "--db", str(db), "--target", url, "--auth-file", str(auth)])
    assert res.exit_code == 0, res.output
    assert "s3cret" not in res.output
    assert seen.transaction_ids == [1000] * 4
    with Store.open(db) as store:
        assert all("s3cret" not in (r[0] or "") for r in store.db.execute("SELECT options FROM runs"))


async def test_frames_go_out_in_order_never_early_and_every_delay_is_held_or_late(
    capture16: Path, tmp_path: Path
) -> None:
    """Relations, not figures (the exact timing logic is tested with a fake clock in
    test_session.py): frames go out in recorded order, never before their deadline, and each
    one's delay past it is exactly its time held for causality plus its lateness."""
    db = _copy(capture16, tmp_path)
    with Store.open(db) as store:
        sessions = load_sessions(store, Selection())
    for speed in (1.0, 4.0):
        (plan,) = plan_sessions(sessions, speed=speed)
        deadline = {s.seq: s.at for s in plan.steps}
        async with csms("1.6", Behaviour(tx_base=100)) as (url, _):
            result = await _replay(db, url, speed=speed)
        assert not result.differences
        live = [f for f in result.sessions[0].frames if f.lateness is not None]
        assert [f.recorded_seq for f in live] == [s.seq for s in plan.steps]
        assert len(live) == 10
        for f in live:
            assert f.recorded_seq is not None and f.held is not None
            at = deadline[f.recorded_seq]
            assert f.lateness >= 0 and f.held >= 0
            assert f.elapsed >= at
            assert f.elapsed == pytest.approx(at + f.held + f.lateness, abs=1e-9)
        assert [f.elapsed for f in live] == sorted(f.elapsed for f in live)
        # what a run reports is what its frames say
        assert result.timing.frames == 10
        assert result.timing.held == sum(1 for f in live if f.held)
        assert result.timing.max == max(f.lateness for f in live)


async def test_max_gap_shortens_idle_time(capture16: Path, tmp_path: Path) -> None:
    db = _copy(capture16, tmp_path)
    with Store.open(db) as store:
        sessions = load_sessions(store, Selection())
    ((_, frames),) = sessions
    (plan,) = plan_sessions(sessions, max_gap=0.02)
    recorded = frames[-1].elapsed
    assert plan.steps[-1].at <= 0.02 * len(frames) < recorded  # every gap is now at most 20 ms
    async with csms("1.6") as (url, _):
        result = await _replay(db, url, max_gap=0.02)
    assert not result.differences
    live = [f for f in result.sessions[0].frames if f.lateness is not None]
    assert len(live) == len(plan.steps)
    for f, step in zip(live, plan.steps, strict=True):
        assert f.elapsed >= step.at and f.elapsed == pytest.approx(
            step.at + (f.held or 0) + (f.lateness or 0)
        )


# ----------------------------------------------------------------------------- backend calls


async def test_missing_backend_call(capture16: Path, tmp_path: Path) -> None:
    db = _copy(capture16, tmp_path)
    async with csms("1.6", Behaviour(remote_stop_after=None)) as (url, _):
        result = await _replay(db, url, answer_timeout=0.4, grace=0.2)
    kinds = [(d.kind, d.action) for d in result.differences]
    assert kinds == [(DiffKind.MISSING_CALL, "RemoteStopTransaction")]
    (d,) = result.differences
    assert d.seq == 17 and d.expected == {"transactionId": 17}


async def test_unexpected_backend_call_gets_call_error(capture16: Path, tmp_path: Path) -> None:
    db = _copy(capture16, tmp_path)
    async with csms("1.6", Behaviour(extra_call="GetConfiguration")) as (url, seen):
        result = await _replay(db, url)
    assert [(d.kind, d.action, d.seq) for d in result.differences] == [
        (DiffKind.UNEXPECTED_CALL, "GetConfiguration", None)
    ]
    assert seen.extra_answers == [None]  # the ocpp package returns None for a CALLERROR
    replies = [
        f.raw for f in result.sessions[0].frames if f.direction == "to_csms" and f.raw.startswith("[4,")
    ]
    assert len(replies) == 1 and "GenericError" in replies[0]


async def test_unanswered_call_is_a_timeout(capture16: Path, tmp_path: Path) -> None:
    db = _copy(capture16, tmp_path)
    async with csms("1.6", Behaviour(no_answer={"Authorize"})) as (url, seen):
        result = await _replay(db, url, answer_timeout=0.3)
    assert [(d.kind, d.action, d.seq) for d in result.differences] == [(DiffKind.TIMEOUT, "Authorize", 6)]
    assert seen.transaction_ids[-1] is not None  # the session went on after the timeout
    assert result.timing.held >= 1  # StartTransaction waited for the Authorize timeout


# ----------------------------------------------------------------------------- errors


async def test_unreachable_target_is_one_line_exit_2(capture16: Path, tmp_path: Path) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    res = await _invoke(["replay", "--db", str(capture16), "--target", f"ws://127.0.0.1:{port}/ocpp"])
    assert res.exit_code == 2
    assert res.stdout == ""
    assert "unreachable: connection refused" in _error_line(res.stderr)


@pytest.mark.parametrize(
    "content",
    [b"\x00garbage\xff" * 100, b"SQLite format 3\x00" + b"\x01" * 200, b""],
    ids=["random", "bad-sqlite", "empty"],
)
async def test_garbage_capture_is_one_line_exit_2(tmp_path: Path, content: bytes) -> None:
    db = tmp_path / "garbage.db"
    db.write_bytes(content)
    res = await _invoke(["replay", "--db", str(db), "--target", "ws://127.0.0.1:9/ocpp"])
    assert res.exit_code == 2
    assert "capture" in _error_line(res.stderr)


async def test_missing_capture_and_bad_options(tmp_path: Path, capture16: Path) -> None:
    res = await _invoke(["replay", "--db", str(tmp_path / "nope.db"), "--target", "ws://127.0.0.1:9"])
    assert res.exit_code == 2 and "no capture" in res.stderr
    res = await _invoke(["replay", "--db", str(capture16), "--target", "ws://x", "--speed", "0"])
    assert res.exit_code == 2 and "--speed" in res.stderr
    bad = tmp_path / "rules.toml"
    bad.write_text("[[rule]]\naction = 3\n")
    res = await _invoke(["replay", "--db", str(capture16), "--target", "ws://x", "--rules", str(bad)])
    assert res.exit_code == 2 and "action" in res.stderr
    res = await _invoke(["replay", "--db", str(capture16), "--target", "ws://127.0.0.1:9", "--session", "99"])
    assert res.exit_code == 2 and "no session 99" in _error_line(res.stderr)


async def test_invalid_frames_are_replayed_as_recorded(tmp_path: Path) -> None:
    """Frames that were not OCPP-J in the capture go out byte for byte; the session goes on."""
    db = tmp_path / "capture.db"
    w = CaptureWriter(db)
    t0 = time.time()
    sid = w.open_session(t0, charge_point_id="CP-X", subprotocol="ocpp1.6")
    frames = [
        ("to_csms", 0.01, '[2,"1","Heartbeat",{}]'),
        ("to_cp", 0.012, '[3,"1",{"currentTime":"2026-01-01T00:00:00Z"}]'),
        ("to_csms", 0.05, "this is not json"),
        ("to_csms", 0.08, '[2,"2","Heartbeat"]'),
        ("to_csms", 0.1, '[2,"3","Heartbeat",{}]'),
        ("to_cp", 0.101, '[3,"3",{"currentTime":"2026-01-01T00:00:01Z"}]'),
    ]
    from ocpp_replay.core.frames import Direction

    for seq, (direction, elapsed, raw) in enumerate(frames, 1):
        w.frame(sid, seq, t0 + elapsed, elapsed, Direction(direction), raw)
    w.close_session(sid, t0 + 0.15, close_code=1000, closed_by="cp")
    w.close()
    received: list[str] = []
    async with csms("1.6") as (url, seen):
        result = await _replay(db, url, answer_timeout=0.3)
    sent = [f.raw for f in result.sessions[0].frames if f.direction == "to_csms"]
    assert "this is not json" in sent and '[2,"2","Heartbeat"]' in sent
    assert seen.actions.count("Heartbeat") == 3
    assert not result.differences, result.differences
    del received


async def test_runs_command_lists_stored_runs(capture16: Path, tmp_path: Path) -> None:
    db = _copy(capture16, tmp_path)
    async with csms("1.6") as (url, _):
        await _replay(db, url, speed=4.0)
    res = await _invoke(["runs", "--db", str(db), "--json"])
    assert res.exit_code == 0, res.output
    (run,) = json.loads(res.stdout)
    assert run["kind"] == "replay" and run["diffs"] == 0 and run["sessions"] == 1 and run["exit_code"] == 0
    res = await _invoke(["runs", "--db", str(db)])
    assert res.exit_code == 0 and "replay" in res.stdout


async def test_timestamps_shift_with_the_session_unless_kept(capture16: Path, tmp_path: Path) -> None:
    db = _copy(capture16, tmp_path)
    with Store.open(db) as store:
        ((info, frames),) = load_sessions(store, Selection())
    recorded = {f.seq: f.raw for f in frames}
    for keep in (False, True):
        async with csms("1.6") as (url, _):
            result = await _replay(db, url, keep_timestamps=keep, speed=4.0)
        sent = {f.recorded_seq: f.raw for f in result.sessions[0].frames if f.direction == "to_csms"}
        status = json.loads(sent[3])[3]["timestamp"]  # StatusNotification, seq 3
        if keep:
            assert sent[3] == recorded[3] and sent[1] == recorded[1]
        else:
            assert sent[1] == recorded[1]  # BootNotification has no timestamp: the exact text
            delta = datetime.fromisoformat(status) - datetime.fromisoformat(
                json.loads(recorded[3])[3]["timestamp"]
            )
            # The live session's clock: each frame's wall time minus its elapsed time.
            first = result.sessions[0].frames[0]
            live_start = datetime.fromisoformat(first.timestamp) - timedelta(seconds=first.elapsed)
            rec_start = datetime.fromisoformat(info.started_at)
            # exact but for the payload's millisecond digits and the microseconds of the times
            assert abs((delta - (live_start - rec_start)).total_seconds()) <= 0.0011


@pytest.mark.parametrize(
    "target", ["ws://127.0.0.1:99999/ocpp", "ws://[::1/ocpp", "ws://127.0.0.1:-1/ocpp", "http://127.0.0.1/x"]
)
async def test_malformed_target_is_one_line_exit_2(capture16: Path, target: str) -> None:
    res = await _invoke(["replay", "--db", str(capture16), "--target", target])
    assert res.exit_code == 2
    assert "target" in _error_line(res.stderr)


async def test_target_that_never_completes_the_handshake(capture16: Path, tmp_path: Path) -> None:
    """A target that accepts TCP and never answers the upgrade: one clear error, not an empty reason."""
    from ocpp_replay.errors import UpstreamError

    held: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with Store.open(capture16) as store, pytest.raises(UpstreamError) as info:
            await run_replay(store, f"ws://127.0.0.1:{port}/ocpp", connect_timeout=0.3)
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()
    message = str(info.value)
    assert message.endswith("completed no websocket handshake within 0.3 s"), message
    assert "CP-16" in message


async def test_target_with_a_query_string_keeps_the_charge_point_id_in_the_path(
    capture16: Path, tmp_path: Path
) -> None:
    db = _copy(capture16, tmp_path)
    async with csms("1.6", Behaviour(tx_base=900)) as (url, seen):
        result = await _replay(db, url + "/?tenant=3")
    assert seen.paths == ["/ocpp/CP-16?tenant=3"]
    assert result.differences == ()


def test_session_url() -> None:
    from ocpp_replay.replay.runner import session_url

    assert session_url("ws://h:9/ocpp", "CP 1/2") == "ws://h:9/ocpp/CP%201%2F2"
    assert session_url("ws://h:9/ocpp/", "CP", "a=b") == "ws://h:9/ocpp/CP?a=b"
    assert session_url("wss://[::1]:9/o?t=3", "CP", "a=b") == "wss://[::1]:9/o/CP?t=3&a=b"
    assert session_url("ws://h", "CP") == "ws://h/CP"


@pytest.mark.parametrize(
    ("since", "until", "error"),
    [
        ("9999-12-31T23:59:59-01:00", None, "--since: out of range"),
        (None, "0001-01-01T00:00:00+01:00", "--until: out of range"),
        ("yesterday", None, "--since: not an ISO 8601 time"),
        (None, "2026-01-01T25:00", "--until: not an ISO 8601 time"),
    ],
)
async def test_since_and_until_out_of_range_are_one_line(
    capture16: Path, since: str | None, until: str | None, error: str
) -> None:
    window = [*(["--since", since] if since else []), *(["--until", until] if until else [])]
    res = await _invoke(["replay", "--db", str(capture16), "--target", "ws://127.0.0.1:9/ocpp", *window])
    assert res.exit_code == 2
    assert error in _error_line(res.stderr)


def test_since_and_until_are_written_as_the_capture_writes_times() -> None:
    from ocpp_replay.cli.replay import _iso_option

    assert _iso_option("2026-11-25T18:20:00.000001+01:00", "--since") == "2026-11-25T17:20:00.000001Z"
    assert _iso_option("0001-01-01", "--since") == "0001-01-01T00:00:00.000000Z"
    assert _iso_option("9999-12-31T23:59:59.999999Z", "--until") == "9999-12-31T23:59:59.999999Z"
    assert _iso_option(" 2026-11-25 ", "--since") == "2026-11-25T00:00:00.000000Z"


EVIL_CP = "EVIL<script>\x1b[31mRED\x07\u202eTXT\x9b2J[/x]"
RAW_CONTROLS = ("\x1b", "\x07", "\u202e", "\x9b")


def _evil_capture(db: Path) -> None:
    from ocpp_replay.core.frames import Direction

    w = CaptureWriter(db)
    t0 = time.time()
    sid = w.open_session(t0, charge_point_id=EVIL_CP, subprotocol="ocpp1.6")
    frames = [
        ("to_csms", 0.01, '[2,"1","Heartbeat",{}]'),
        ("to_cp", 0.012, '[3,"1",{"currentTime":"2026-01-01T00:00:00Z","x":"\\u001b[2J\\u202e"}]'),
    ]
    for seq, (direction, elapsed, raw) in enumerate(frames, 1):
        w.frame(sid, seq, t0 + elapsed, elapsed, Direction(direction), raw)
    w.close_session(sid, t0 + 0.05, close_code=1000, closed_by="cp")
    w.close()


async def test_traffic_text_reaches_the_terminal_escaped(tmp_path: Path) -> None:
    """Progress lines, tables and the runs list escape a charger's control characters and
    bidi overrides, and never read stored text as rich markup."""
    db = tmp_path / "capture.db"
    _evil_capture(db)
    async with csms("1.6") as (url, _seen):
        target = f"{url}/oc[/x]pp"  # a stored URL that looks like rich markup
        res = await _invoke(["replay", "--db", str(db), "--target", target, "--timeout", "1", "--grace", "0"])
        assert res.exit_code == 1, res.output  # the recorded answer had an "x" the live one has not
        runs = await _invoke(["runs", "--db", str(db)])
    for out in (res.stdout, res.stderr, runs.stdout):
        assert not any(c in out for c in RAW_CONTROLS), out
    assert "session 1 (EVIL<script>\\x1b[31mRED\\x07\\u202eTXT\\x9b2J[/x])" in res.stderr
    assert runs.exit_code == 0, runs.output  # the table was a rich MarkupError
    assert "│ replay" in runs.stdout


def test_terminal_tables_escape_c1_and_bidi() -> None:
    from rich.console import Console

    from ocpp_replay.core.diff import Difference
    from ocpp_replay.core.results import SessionResult
    from ocpp_replay.report.terminal import differences_table, summary_table

    d = Difference(1, EVIL_CP, 2, EVIL_CP, DiffKind.CHANGED, EVIL_CP, EVIL_CP, "\u202e")
    s = SessionResult(1, EVIL_CP, "ocpp1.6", None, None, (d,), {EVIL_CP: 1})
    result = RunResult("ws://x", "", "", (s,))
    import io

    console = Console(record=True, width=400, file=io.StringIO())
    console.print(summary_table(result))
    console.print(differences_table(result.differences))
    out = console.export_text()
    assert not any(c in out for c in RAW_CONTROLS), out
    assert "\\u202e" in out and "\\x9b" in out


@pytest.mark.parametrize("option", ["--report", "--junit", "--html"])
async def test_unwritable_report_is_refused_before_the_replay(
    capture16: Path, tmp_path: Path, option: str
) -> None:
    db = _copy(capture16, tmp_path)
    async with csms("1.6") as (url, seen):
        missing_dir = await _invoke(
            ["replay", "--db", str(db), "--target", url, option, str(tmp_path / "no" / "r")]
        )
        a_directory = await _invoke(["replay", "--db", str(db), "--target", url, option, str(tmp_path)])
    assert missing_dir.exit_code == 2 and a_directory.exit_code == 2
    assert f"{option}: cannot write" in _error_line(missing_dir.stderr)
    assert f"{option}: {tmp_path} is a directory" in _error_line(a_directory.stderr)
    assert seen.actions == []  # nothing was replayed
    with Store.open(db) as store:
        assert store.db.execute("SELECT count(*) FROM runs").fetchone() == (0,)


async def test_report_that_fails_after_the_replay_keeps_the_result(
    capture16: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up while the replay runs: the result is printed, the run is stored, and
    the error says how to get the report again."""
    from ocpp_replay import report
    from ocpp_replay.errors import ConfigError

    def full(_result: object, path: object, **_: object) -> None:
        raise ConfigError(f"cannot write HTML report {path}: No space left on device")

    monkeypatch.setattr(report, "write_html", full)  # the CLI imports it when it writes
    db = _copy(capture16, tmp_path)
    async with csms("1.6", Behaviour(tx_base=900)) as (url, _seen):
        res = await _invoke(
            [
                "replay",
                "--db",
                str(db),
                "--target",
                url,
                "--max-gap",
                "0.05",
                "--html",
                str(tmp_path / "r.html"),
            ]
        )
    assert res.exit_code == 2
    assert "run 1: 1 sessions" in " ".join(res.stdout.split())
    line = _error_line(res.stderr[res.stderr.index("error: ") :])  # after the progress lines
    assert "No space left on device; the run is stored as run 1" in line
    with Store.open(db) as store:
        assert store.db.execute("SELECT id FROM runs").fetchall() == [(1,)]


@pytest.mark.parametrize(
    ("option", "value"), [("--max-gap", "nan"), ("--grace", "nan"), ("--timeout", "nan"), ("--speed", "nan")]
)
async def test_nan_options_are_refused(capture16: Path, option: str, value: str) -> None:
    res = await _invoke(
        ["replay", "--db", str(capture16), "--target", "ws://127.0.0.1:9/ocpp", option, value]
    )
    assert res.exit_code == 2
    assert _error_line(res.stderr).startswith(f"error: {option} must")


async def test_a_charger_the_target_fails_mid_run_is_a_difference_not_the_end(tmp_path: Path) -> None:
    """The target served one charger, then never answers another's handshake: the run goes on,
    the second session has a handshake difference, exit status 1 (not an error)."""
    import time as _time

    from aiohttp import web

    from ocpp_replay.core.frames import Direction
    from ocpp_replay.store import CaptureWriter

    db = tmp_path / "two.db"
    writer = CaptureWriter(db)
    t0 = _time.time()
    for i, cp in enumerate(("GOOD", "HANG")):
        sid = writer.open_session(t0 + 0.3 * i, charge_point_id=cp, subprotocol="ocpp1.6")
        writer.frame(sid, 1, t0 + 0.3 * i, 0.01, Direction.TO_CSMS, '[2,"1","Heartbeat",{}]')
        writer.frame(
            sid, 2, t0 + 0.3 * i, 0.02, Direction.TO_CP, '[3,"1",{"currentTime":"2026-11-25T10:00:00Z"}]'
        )
        writer.close_session(sid, t0 + 0.3 * i + 0.1, close_code=1000, closed_by="cp", frames=2)
    writer.close()

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/HANG"):
            await asyncio.sleep(30)  # never answers the upgrade
        ws = web.WebSocketResponse(protocols=("ocpp1.6",))
        await ws.prepare(request)
        async for msg in ws:
            uid = json.loads(msg.data)[1]
            await ws.send_str(json.dumps([3, uid, {"currentTime": "2026-11-25T18:00:00Z"}]))
        return ws

    async with serving(handler, shutdown_timeout=0.1) as port:
        result = await _replay(db, f"ws://127.0.0.1:{port}/ocpp", connect_timeout=0.5)
    by_cp = {s.charge_point_id: s for s in result.sessions}
    assert by_cp["GOOD"].differences == ()
    [diff] = by_cp["HANG"].differences
    assert diff.path == "handshake.status" and "no websocket handshake within 0.5 s" in str(diff.actual)
    assert result.exit_code == 1


# ----------------------------------------------------------------------------- Ctrl-C


def _fast_and_slow_capture(db: Path) -> None:
    """Two chargers: FAST is done in 0.2 s, SLOW has a minute of silence before its last CALL."""
    w = CaptureWriter(db)
    t0 = time.time() - 3600
    for cp, last in (("FAST", 0.2), ("SLOW", 60.0)):
        sid = w.open_session(t0, charge_point_id=cp, subprotocol="ocpp1.6", path=f"/ocpp/{cp}")
        frames = [
            (0.1, Direction.TO_CSMS, '[2,"1","Heartbeat",{}]'),
            (0.15, Direction.TO_CP, '[3,"1",{}]'),
            (last, Direction.TO_CSMS, '[2,"2","Heartbeat",{}]'),
            (last + 0.05, Direction.TO_CP, '[3,"2",{}]'),
        ]
        for seq, (at, direction, raw) in enumerate(frames, 1):
            w.frame(sid, seq, t0 + at, at, direction, raw)
        w.close_session(sid, t0 + last + 0.1, closed_by="cp", close_code=1000)
    w.close()


async def test_ctrl_c_stores_the_sessions_finished_so_far(tmp_path: Path) -> None:
    """The first Ctrl-C ends the replay: finished sessions are stored and reported, exit 130."""

    async def answer(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(json.dumps([3, json.loads(message)[1], {}]))

    db = tmp_path / "c.db"
    _fast_and_slow_capture(db)
    async with serve(answer, "127.0.0.1", 0, subprotocols=["ocpp1.6"]) as server:  # type: ignore[list-item]
        port = server.sockets[0].getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ocpp_replay.cli", "replay", "--target", f"ws://127.0.0.1:{port}/ocpp",
            "--db", str(db), "--report", str(tmp_path / "r.json"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stderr is not None
        async with asyncio.timeout(20):
            line = await proc.stderr.readline()  # FAST has finished
            assert b"session 1 (FAST)" in line, line
            proc.send_signal(signal.SIGINT)
            stdout, stderr = await proc.communicate()
    assert proc.returncode == 130, stderr
    assert b"interrupted: closing the sessions in progress" in stderr
    assert b"interrupted after 1 of 2 sessions" in stdout
    with Store.open(db) as store:
        [run] = store.db.execute("SELECT id, sessions, exit_code FROM runs").fetchall()
    assert run[1:] == (1, 130)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["summary"]["interrupted"] == {"finished": 1, "planned": 2}
    assert [s["charge_point_id"] for s in report["sessions"]] == ["FAST"]


async def test_ctrl_c_stops_a_compare_and_stores_the_sessions_both_sides_finished(tmp_path: Path) -> None:
    async def answer(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(json.dumps([3, json.loads(message)[1], {}]))

    db = tmp_path / "c.db"
    _fast_and_slow_capture(db)
    async with (
        serve(answer, "127.0.0.1", 0, subprotocols=["ocpp1.6"]) as a,  # type: ignore[list-item]
        serve(answer, "127.0.0.1", 0, subprotocols=["ocpp1.6"]) as b,  # type: ignore[list-item]
    ):
        urls = [f"ws://127.0.0.1:{s.sockets[0].getsockname()[1]}/ocpp" for s in (a, b)]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ocpp_replay.cli", "compare", "--baseline", urls[0], "--candidate", urls[1],
            "--db", str(db), "--noise-runs", "2",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stderr is not None
        async with asyncio.timeout(20):
            seen = 0
            while seen < 2:  # FAST has finished against both backends
                line = await proc.stderr.readline()
                assert line, "compare ended early"
                seen += b"(FAST)" in line
            proc.send_signal(signal.SIGINT)
            stdout, stderr = await proc.communicate()
    assert proc.returncode == 130, stderr
    assert b"interrupted after 1 of 2 sessions" in stdout
    with Store.open(db) as store:
        [run] = store.db.execute("SELECT kind, sessions, exit_code FROM runs").fetchall()
    assert run == ("compare", 1, 130)


# ----------------------------------------------------------------------------- replay semantics
# Captures written frame by frame, and raw websocket backends (the `websockets` library on
# 127.0.0.1:0) that misbehave, close or answer exactly as each test needs.


def _write(
    db: Path,
    frames: list[tuple[str, float, str]],
    *,
    end: float | None = None,
    **session: Any,
) -> None:
    """A capture of one session of CP-R (OCPP 1.6): frames as (direction, elapsed, raw)."""
    from ocpp_replay.core.frames import Direction

    w = CaptureWriter(db)
    t0 = time.time() - 60
    session.setdefault("charge_point_id", "CP-R")
    session.setdefault("subprotocol", "ocpp1.6")
    sid = w.open_session(t0, **session)
    for seq, (direction, elapsed, raw) in enumerate(frames, 1):
        w.frame(sid, seq, t0 + elapsed, elapsed, Direction(direction), raw)
    close = {k: session[k] for k in ("close_code", "close_reason", "closed_by") if k in session}
    close.setdefault("closed_by", "cp")
    close.setdefault("close_code", 1000)
    last = frames[-1][1] if frames else 0.0
    w.close_session(sid, t0 + (end if end is not None else last + 0.05), **close)
    w.close()


@dataclass
class Backend:
    """What a raw backend saw: frames in, frames out in order, and how the charger closed."""

    log: list[tuple[str, str]] = field(default_factory=list)  # ("in" | "out", text)
    close_code: int | None = None
    close_reason: str | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def received(self) -> list[str]:
        return [t for d, t in self.log if d == "in"]


Script = Callable[[ServerConnection, Backend], Awaitable[None]]


@contextlib.asynccontextmanager
async def _backend(script: Script) -> AsyncIterator[tuple[str, Backend]]:
    """A websocket backend on 127.0.0.1:0 that runs ``script`` for each connection."""
    seen = Backend()

    async def handler(ws: ServerConnection) -> None:
        try:
            await script(ws, seen)
            await ws.wait_closed()
        except ConnectionClosed:
            pass
        finally:
            seen.close_code = ws.close_code
            seen.close_reason = ws.close_reason
            seen.closed.set()

    async with serve(handler, "127.0.0.1", 0, subprotocols=[Subprotocol("ocpp1.6")]) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ocpp", seen


def _answer(frame: str, payload: str = "{}") -> str:
    return f'[3,"{json.loads(frame)[1]}",{payload}]'


_HB_PAYLOAD = '{"currentTime":"2026-01-01T00:00:00Z"}'


async def _answer_all(ws: ServerConnection, seen: Backend, delay: float = 0.0) -> None:
    """Answer every CALL with a CALLRESULT (after ``delay``), logging what passes."""
    async for data in ws:
        text = data if isinstance(data, str) else data.decode()
        seen.log.append(("in", text))
        msg = json.loads(text)
        if msg[0] == 2:  # 2.0 too: this backend is lenient
            if delay:
                await asyncio.sleep(delay)
            out = _answer(text, _HB_PAYLOAD if msg[2] == "Heartbeat" else "{}")
            seen.log.append(("out", out))
            await ws.send(out)


HB1, HB2 = '[2,"1","Heartbeat",{}]', '[2,"2","Heartbeat",{}]'
HB_OK1 = '[3,"1",{"currentTime":"2026-01-01T00:00:00Z"}]'
HB_OK2 = '[3,"2",{"currentTime":"2026-01-01T00:00:00Z"}]'


async def test_recorded_csms_close_is_compared_and_rules_can_ignore_it(tmp_path: Path) -> None:
    db = tmp_path / "capture.db"
    frames = [
        ("to_csms", 0.0, '[2,"1","DataTransfer",{"vendorId":"x"}]'),
        ("to_cp", 0.01, '[3,"1",{"status":"Accepted"}]'),
    ]
    _write(db, frames, closed_by="csms", close_code=4003, close_reason="unknown charger")

    def closes_with(code: int | None) -> Script:
        async def script(ws: ServerConnection, seen: Backend) -> None:
            data = await ws.recv()
            await ws.send(_answer(str(data), '{"status":"Accepted"}'))
            if code is not None:
                await ws.close(code, "unknown charger")

        return script

    async with _backend(closes_with(4003)) as (url, _):
        same = await _replay(db, url, grace=0.3)
    assert same.differences == () and same.exit_code == 0
    async with _backend(closes_with(4999)) as (url, _):
        other = await _replay(db, url, grace=0.3)
    assert [(d.path, d.expected, d.actual) for d in other.differences] == [("close.code", 4003, 4999)]
    assert other.exit_code == 1
    async with _backend(closes_with(None)) as (url, seen):
        never = await _replay(db, url, grace=0.3)
    assert [(d.path, d.expected, d.actual) for d in never.differences] == [
        ("close.by", "csms", "cp"),
        ("close.code", 4003, 1000),
        ("close.reason", "unknown charger", ""),
    ]
    assert seen.close_code == 1000  # the charger closed in the end
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\naction = "close"\nignore = ["code"]\n')
    async with _backend(closes_with(4999)) as (url, _):
        res = await _invoke(
            ["replay", "--db", str(db), "--target", url, "--grace", "0.3", "--rules", str(rules)]
        )
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize(
    ("code", "reason", "seen_code", "seen_reason"),
    [(None, None, 1005, ""), (4100, "rebooting", 4100, "rebooting"), (1006, "connection lost", 1006, "")],
)
async def test_the_charger_closes_as_recorded(
    tmp_path: Path, code: int | None, reason: str | None, seen_code: int, seen_reason: str
) -> None:
    """Without a status code (the backend sees 1005), with the recorded code and reason, or by
    dropping the connection (1006, no close frame) when the charger vanished."""
    db = tmp_path / "capture.db"
    _write(db, [("to_csms", 0.0, HB1), ("to_cp", 0.01, HB_OK1)], close_code=code, close_reason=reason)
    async with _backend(_answer_all) as (url, seen):
        result = await _replay(db, url)
        await asyncio.wait_for(seen.closed.wait(), 5)
    assert (seen.close_code, seen.close_reason) == (seen_code, seen_reason)
    assert result.differences == ()
    assert result.sessions[0].close_code == code


PIPELINED_CAPTURE = [
    ("to_csms", 0.0, HB1),
    ("to_csms", 0.1, HB2),
    ("to_cp", 0.3, HB_OK1),
    ("to_cp", 0.4, HB_OK2),
    ("to_csms", 0.5, '[3,"ghost",{"status":"Accepted"}]'),
    ("to_csms", 0.6, '[2.0,"7","Heartbeat",{}]'),
    ("to_cp", 0.61, '[4,"7","FormationViolation","message type is not an integer",{}]'),
]


async def _strict(ws: ServerConnection, seen: Backend) -> None:
    """Answers calls 0.3 s after they arrive; a type that is not an integer: FormationViolation."""
    tasks: list[asyncio.Task[None]] = []

    async def later(out: str) -> None:
        await asyncio.sleep(0.3)
        seen.log.append(("out", out))
        await ws.send(out)

    try:
        async for data in ws:
            text = str(data)
            seen.log.append(("in", text))
            msg = json.loads(text)
            if type(msg[0]) is not int:
                out = f'[4,"{msg[1]}","FormationViolation","not an integer",{{}}]'
                seen.log.append(("out", out))
                await ws.send(out)
            elif msg[0] == 2:
                tasks.append(
                    asyncio.create_task(later(_answer(text, '{"currentTime":"2026-01-01T00:00:00Z"}')))
                )
    finally:
        for t in tasks:
            t.cancel()


async def test_faithful_replay_sends_misbehaviour_as_recorded(tmp_path: Path) -> None:
    db = tmp_path / "capture.db"
    _write(db, PIPELINED_CAPTURE)
    async with _backend(_strict) as (url, seen):
        result = await _replay(db, url)
    order = [(d, json.loads(t)[1]) for d, t in seen.log]
    # the second call went out before the first answer, as the charger pipelined them
    assert order[:4] == [("in", "1"), ("in", "2"), ("out", "1"), ("out", "2")]
    assert seen.received()[2:] == ['[3,"ghost",{"status":"Accepted"}]', '[2.0,"7","Heartbeat",{}]']
    assert result.differences == ()
    assert result.options["faithful"] is True


async def test_well_behaved_replay_waits_for_each_answer_and_leaves_orphans_out(tmp_path: Path) -> None:
    db = tmp_path / "capture.db"
    _write(db, PIPELINED_CAPTURE)
    async with _backend(_strict) as (url, seen):
        res = await _invoke(["replay", "--db", str(db), "--target", url, "--well-behaved", "--report", "-"])
    assert res.exit_code == 0, res.output
    order = [(d, json.loads(t)[1]) for d, t in seen.log]
    assert order[:4] == [("in", "1"), ("out", "1"), ("in", "2"), ("out", "2")]
    assert '[3,"ghost",{"status":"Accepted"}]' not in seen.received()
    assert json.loads(res.stdout)["summary"]["timing"]["held_frames"] >= 1


async def test_answer_to_a_float_typed_call_is_compared(tmp_path: Path) -> None:
    """The backend under test now takes [2.0, ...] as a Heartbeat (the recorded one refused it)."""
    db = tmp_path / "capture.db"
    _write(db, PIPELINED_CAPTURE)
    async with _backend(_answer_all) as (url, _):  # answers every frame whose type == 2
        result = await _replay(db, url)
    assert [(d.kind, d.seq) for d in result.differences] == [(DiffKind.CALL_ERROR, 7)]


MISSING_EARLY = [
    ("to_csms", 0.0, HB1),
    ("to_cp", 0.01, HB_OK1),
    ("to_cp", 0.2, '[2,"op1","ChangeConfiguration",{"key":"HeartbeatInterval","value":"60"}]'),
    ("to_csms", 0.21, '[3,"op1",{"status":"Accepted"}]'),
    ("to_csms", 0.3, HB2),
    ("to_cp", 0.31, HB_OK2),
    ("to_csms", 2.0, '[2,"3","Heartbeat",{}]'),
    ("to_cp", 2.01, '[3,"3",{"currentTime":"2026-01-01T00:00:00Z"}]'),
]


async def test_a_missing_early_backend_call_holds_once_and_the_session_goes_back_on_schedule(
    tmp_path: Path,
) -> None:
    db = tmp_path / "capture.db"
    _write(db, MISSING_EARLY)
    async with _backend(_answer_all) as (url, _):
        result = await _replay(db, url, answer_timeout=0.5, grace=0.2)
    assert [(d.kind, d.action, d.seq) for d in result.differences] == [
        (DiffKind.MISSING_CALL, "ChangeConfiguration", 3)
    ]
    (s,) = result.sessions
    sent = {f.recorded_seq: f for f in s.frames if f.lateness is not None}
    assert sent[5].held is not None and sent[5].held > 0  # waited for the call: 0.2 + 0.5 s
    assert sent[5].elapsed >= 0.7
    assert sent[7].held == 0  # back on its recorded schedule
    assert result.timing.held == 1
    # stored: the held flag of each frame, apart from its lateness
    with Store.open(db) as store:
        rows = store.db.execute(
            "SELECT recorded_seq, held FROM run_frames WHERE run_id = ? AND lateness IS NOT NULL "
            "ORDER BY seq",
            [result.run_id],
        ).fetchall()
        assert [(seq, held > 0) for seq, held in rows] == [(1, False), (5, True), (7, False)]
        stored = load_run(store, result.run_id or 0)
    assert stored.timing == result.timing
    # JUnit time is the session's duration, not its last frame's time
    from ocpp_replay.report.junit import junit_xml

    case = ET.fromstring(junit_xml(stored)).find(".//testcase")
    assert case is not None and s.duration is not None
    assert case.get("time") == f"{s.duration:.3f}"
    assert s.duration > max(f.elapsed for f in s.frames)


async def test_optional_backend_calls_never_hold_and_are_information(tmp_path: Path) -> None:
    db = tmp_path / "capture.db"
    _write(db, MISSING_EARLY)
    for option in (["--optional-call", "ChangeConfiguration"], ["--optional-operator-calls"]):
        async with _backend(_answer_all) as (url, _):
            res = await _invoke(
                [
                    "replay",
                    "--db",
                    str(db),
                    "--target",
                    url,
                    "--timeout",
                    "0.5",
                    "--grace",
                    "0.2",
                    "--report",
                    "-",
                    *option,
                ]
            )
        assert res.exit_code == 0, res.output
        doc = json.loads(res.stdout)
        assert doc["summary"]["diffs"] == 0
        assert doc["summary"]["information"] == {"optional_call_missing": 1}
        assert doc["summary"]["timing"]["held_frames"] == 0
        (sess,) = doc["sessions"]
        assert [(i["kind"], i["action"]) for i in sess["information"]] == [
            ("optional_call_missing", "ChangeConfiguration")
        ]


async def test_a_call_after_the_recorded_end_is_information_unless_strict(tmp_path: Path) -> None:
    db = tmp_path / "capture.db"
    _write(db, [("to_csms", 0.0, HB1), ("to_cp", 0.01, HB_OK1)], end=0.02, closed_by="csms", close_code=1000)

    async def late_stop(ws: ServerConnection, seen: Backend) -> None:
        data = await ws.recv()
        await ws.send(_answer(str(data), '{"currentTime":"2026-01-01T00:00:00Z"}'))
        await asyncio.sleep(0.2)  # after the recorded end: the timed stop lost the race there
        await ws.send('[2,"s1","RemoteStopTransaction",{"transactionId":1}]')
        await asyncio.sleep(0.1)
        await ws.close(1000)

    for strict, exit_code in ((False, 0), (True, 1)):
        async with _backend(late_stop) as (url, _):
            args = ["replay", "--db", str(db), "--target", url, "--grace", "2", "--report", "-"]
            res = await _invoke(args + (["--strict-end"] if strict else []))
        assert res.exit_code == exit_code, res.output
        doc = json.loads(res.stdout)
        found = doc["sessions"][0]["diffs" if strict else "information"]
        assert [(d["kind"], d["action"]) for d in found] == [("call_after_end", "RemoteStopTransaction")]


async def test_refused_basic_auth_names_the_recorded_user_and_the_auth_file(tmp_path: Path) -> None:
    db = tmp_path / "capture.db"
    _write(db, [("to_csms", 0.0, HB1), ("to_cp", 0.01, HB_OK1)], charge_point_id="CP-16", auth_user="CP-16")
    async with csms("1.6", Behaviour(password="s3cret")) as (url, _):
        res = await _invoke(["replay", "--db", str(db), "--target", url])
    assert res.exit_code == 1
    out = " ".join(res.stdout.split())
    assert "the recording used Basic auth as user 'CP-16'" in out
    assert "--auth-file supplies the password" in out


async def test_a_last_frame_due_with_the_close_still_goes_out_before_it(tmp_path: Path) -> None:
    """The session hands out the last frame and the close at the same moment: both, in order."""
    db = tmp_path / "capture.db"
    _write(db, [("to_csms", 0.0, "goodbye")], end=0.0, close_code=4100)  # nothing to wait for

    async def log_all(ws: ServerConnection, seen: Backend) -> None:
        async for data in ws:
            seen.log.append(("in", str(data)))

    async with _backend(log_all) as (url, seen):
        await _replay(db, url)
        await asyncio.wait_for(seen.closed.wait(), 5)
    assert seen.received() == ["goodbye"]
    assert seen.close_code == 4100


def _metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics on 127.0.0.1:PORT, parsed (tests/test_proxy.py's _scrape)."""
    import urllib.request

    from tests.test_proxy import _scrape

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return _scrape(resp.read())


async def test_metrics_of_a_replay_follow_its_progress(capture16: Path, tmp_path: Path) -> None:
    """Issue 22.3: what `replay --metrics-port` serves, scraped with Prometheus' own parser."""
    from ocpp_replay.cli.metrics import ReplayCollector, serve_metrics
    from tests.test_cli_capture import free_port

    db = _copy(capture16, tmp_path)
    collector = ReplayCollector()
    port = free_port()
    stop = serve_metrics(port, "127.0.0.1", collector)
    try:
        before = await asyncio.to_thread(_metrics, port)
        async with csms("1.6", Behaviour(tx_base=9000, blocked={"ACE0177305"})) as (url, _seen):
            result = await _replay(db, url, progress=collector.update)
        after = await asyncio.to_thread(_metrics, port)
    finally:
        stop()
    assert before[("ocpp_replay_frames_sent_total", ())] == 0
    assert after[("ocpp_replay_sessions", ())] == after[("ocpp_replay_sessions_done_total", ())] == 1
    assert after[("ocpp_replay_differences_total", ())] == len(result.differences) == 1
    [session] = result.sessions
    assert after[("ocpp_replay_frames_sent_total", ())] >= len(session.lateness) > 0
    assert after[("ocpp_replay_lateness_seconds_count", ())] == len(session.lateness)
    assert after[("ocpp_replay_lateness_seconds_sum", ())] == pytest.approx(sum(session.lateness))
    assert after[("ocpp_replay_lateness_seconds_bucket", (("le", "+Inf"),))] == len(session.lateness)
    assert after[("process_resident_memory_bytes", ())] > 0
    with pytest.raises(OSError):  # stopped with the run
        await asyncio.to_thread(_metrics, port)


async def test_metrics_port_on_the_command_line(capture16: Path, tmp_path: Path) -> None:
    """A port in use is one error line and exit 2, before anything is replayed; a free one
    serves while the run goes as it would without it."""
    import socket

    from tests.test_cli_capture import free_port

    db = _copy(capture16, tmp_path)
    async with csms("1.6") as (url, _seen):
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            taken = busy.getsockname()[1]
            res = await _invoke(["replay", "--db", str(db), "--target", url, "--metrics-port", str(taken)])
        assert res.exit_code == 2 and res.stderr.startswith("error: --metrics-port"), res.stderr
        assert res.stderr.count("\n") == 1
        with Store.open(db) as store:
            assert store.db.execute("SELECT count(*) FROM runs").fetchone() == (0,)
        res = await _invoke(["replay", "--db", str(db), "--target", url, "--metrics-port", str(free_port())])
    assert res.exit_code == 0, res.output


async def test_the_gc_guard_runs_young_collections_itself_and_restores_the_thresholds() -> None:
    """CPython's own trigger counts deallocations of old objects against new ones, so during a
    replay young objects pile up unexamined; the guard collects the young generations from the
    loop every YOUNG_GC_INTERVAL, never the old one, and puts everything back afterwards."""
    import gc

    from ocpp_replay.replay.runner import YOUNG_GC_INTERVAL, _no_full_gc

    before = gc.get_threshold()
    seen: list[int] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            seen.append(info["generation"])

    gc.callbacks.append(note)
    gc.disable()  # CPython's own trigger is off: every collection seen below is the guard's
    try:
        with _no_full_gc():
            assert gc.get_threshold()[2] == 1_000_000_000
            seen.clear()  # entering collected everything once
            await asyncio.sleep(YOUNG_GC_INTERVAL * 25)
            during = list(seen)
        await asyncio.sleep(YOUNG_GC_INTERVAL * 5)
    finally:
        gc.enable()
        gc.callbacks.remove(note)
    assert during.count(0) >= 10 and 1 in during and 2 not in during
    assert len(seen) == len(during)  # the ticker stopped with the guard
    assert gc.get_threshold() == before
