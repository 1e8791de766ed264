"""Retention (issue 22.2): `proxy --retain/--max-size` prunes the oldest frames in small steps
while chargers talk, keeps each open connection's priming frames, and every window inside the
retained time still replays.

Real captures (made by the proxy, or by its capture writer with times in the past), real SQLite,
the `ocpp` package's CSMS of tests/replay_peers.py and the chargers of tests/peers.py on loopback.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ocpp_replay.capture.proxy import ProxyServer
from ocpp_replay.core.correlate import ocpp_version, utc_seconds
from ocpp_replay.core.frames import Direction
from ocpp_replay.core.window import Window, cut_session
from ocpp_replay.errors import ConfigError
from ocpp_replay.store import Store
from ocpp_replay.store.retention import Pruner, Retention, parse_size
from ocpp_replay.store.schema import utc_iso
from ocpp_replay.store.writer import CaptureWriter
from tests.peers import charger, run_csms, session16
from tests.replay_peers import Behaviour, csms
from tests.test_proxy import http_get, settle
from tests.test_replay import _copy, _invoke, capture16  # noqa: F401 (fixture)
from tests.test_window import _first

pytestmark = pytest.mark.timeout(90)

DAY = 86400.0


def _old_sessions(db: Path, *, sessions: int, frames: int, at: float, name: str = "OLD") -> None:
    """Closed 1.6 sessions recorded through the capture writer with times from ``at`` on:
    each a boot, then MeterValues calls and their answers."""
    writer = CaptureWriter(db, max_pending=sessions * frames * 3)
    payload = json.dumps({"connectorId": 1, "meterValue": [{"timestamp": "t", "sampledValue": [
        {"value": "1234.5", "measurand": "Energy.Active.Import.Register"}]}]})  # fmt: skip
    for n in range(sessions):
        start = at + n * 60
        sid = writer.open_session(start, charge_point_id=f"{name}-{n}", subprotocol="ocpp1.6")
        for seq in range(frames):
            uid = f"{n}-{seq // 2}"
            text = f'[2,"{uid}","MeterValues",{payload}]' if seq % 2 == 0 else f'[3,"{uid}",{{}}]'
            direction = Direction.TO_CSMS if seq % 2 == 0 else Direction.TO_CP
            writer.frame(sid, seq + 1, start + seq * 0.01, seq * 0.01, direction, text)
        writer.close_session(sid, start + frames * 0.01 + 1, closed_by="cp", close_code=1000, frames=frames)
    writer.close()


def _seqs(db: Path, session_id: int) -> list[int]:
    with Store.open(db) as store:
        return [f.seq for f in store.frames(session_id)]


def test_sizes_and_retention_options_are_checked() -> None:
    assert parse_size("50GB") == 50 * 1000**3
    assert parse_size("500MiB") == 500 * 1024**2
    assert parse_size("1.5g") == 1_500_000_000
    assert parse_size("2097152") == 2097152
    for bad in ("", "GB", "-1GB", "10XB", "0"):
        with pytest.raises(ConfigError):
            parse_size(bad)
    with pytest.raises(ConfigError, match="at least 1 MiB"):
        Retention(max_bytes=1000)
    assert not Retention() and Retention(max_age=DAY)
    assert "older than 14d" in Retention(max_age=14 * DAY).describe()

    from ocpp_replay.cli import app

    for args, message in (
        (["--retain", "forever"], "--retain: not a duration"),
        (["--retain", "0s"], "--retain must be more than 0"),
        (["--max-size", "lots"], "is not a size"),
    ):
        res = CliRunner().invoke(app, ["proxy", "--upstream", "ws://127.0.0.1:9/ocpp", "--port", "0", *args])
        assert res.exit_code == 2, res.output
        assert message in res.stderr and "Traceback" not in res.stderr


async def test_a_cut_connection_keeps_its_priming_frames_and_its_windows_still_replay(
    capture16: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Pruned up to the first MeterValues of an open transaction: the frames kept before the
    cut are exactly what a window starting there primes with; a window from the cut and a
    whole-session replay both give 0 differences against a backend that only knows
    transactions it started; an older closed session is removed whole."""
    db = _copy(capture16, tmp_path)
    start = _first(db, "MeterValues")
    _old_sessions(db, sessions=3, frames=40, at=1_000_000.0)  # 1970: long before
    cut = utc_seconds(start)
    with Store.open(db) as store:
        [info] = [s for s in store.sessions() if s.charge_point_id == "CP-16"]
        frames = list(store.frames(info.id))
    before = cut_session(frames, utc_seconds(info.started_at), utc_seconds(info.ended_at or ""),
                         ocpp_version(info.subprotocol), Window(cut))  # fmt: skip
    assert before is not None and len(before.prime) == 6  # boot, status, StartTransaction, answers
    late = [f.seq for f in frames if utc_seconds(info.started_at) + f.elapsed >= cut]

    conn = sqlite3.connect(db, isolation_level=None)
    pruner = Pruner(conn, Retention(max_age=DAY), clock=lambda: cut + DAY)
    stats = pruner.run()
    conn.close()
    assert stats.sessions_pruned == 3 and stats.sessions_cut == 1
    assert stats.cutoff == utc_iso(cut)
    assert _seqs(db, info.id) == sorted([*before.prime, *late])
    assert stats.frames_pruned == 3 * 40 + len(frames) - len(before.prime) - len(late)
    with Store.open(db) as store:
        [pruned] = store.sessions()
        assert pruned.pruned_before == utc_iso(cut)
        assert store.events() == [e for e in store.events() if e["session_id"] == info.id]

    behaviour = Behaviour(tx_base=5000, known_transactions_only=True)
    async with csms("1.6", behaviour) as (url, seen):
        res = await _invoke(["replay", "--db", str(db), "--target", url, "--from", start, "--report",
                             str(tmp_path / "w.json")])  # fmt: skip
        assert res.exit_code == 0, res.output
        assert "1 open connections primed with 6 frames" in res.stderr, res.stderr
        assert json.loads((tmp_path / "w.json").read_text())["summary"]["diffs"] == 0
    async with csms("1.6", Behaviour(tx_base=5000, known_transactions_only=True)) as (url, seen):
        report = tmp_path / "s.json"
        res = await _invoke(["replay", "--db", str(db), "--target", url, "--report", str(report)])
        assert res.exit_code == 0, res.output
        assert json.loads(report.read_text())["summary"]["diffs"] == 0
        # the whole session replays from the cut: primed, then the transaction's later frames
        # carry the backend's new transaction id, which it accepts
        assert seen.tx_by_cp[0][1:] == ("StartTransaction", 5000)
        assert {t for _, a, t in seen.tx_by_cp if a in ("MeterValues", "StopTransaction")} == {5000}

    # a window that starts before what the capture kept whole is refused, in one line
    res = await _invoke(["replay", "--db", str(db), "--target", "ws://127.0.0.1:9/ocpp", "--from",
                         utc_iso(cut - 3600)])  # fmt: skip
    assert res.exit_code == 2 and "pruned" in res.stderr and "Traceback" not in res.stderr

    # pruning again at the same cut-off changes nothing: the priming frames stay
    conn = sqlite3.connect(db, isolation_level=None)
    again = Pruner(conn, Retention(max_age=DAY), clock=lambda: cut + DAY).run()
    conn.close()
    assert again.frames_pruned == 0 and _seqs(db, info.id) == sorted([*before.prime, *late])


async def test_the_proxy_prunes_a_capture_over_its_size_while_a_charger_talks(tmp_path: Path) -> None:
    """--max-size: a capture over its budget is pruned in small steps between the writer's
    flushes while a charger talks through the proxy: flushes keep their pace, nothing the
    charger sent is lost, the newest old sessions are kept (the oldest go, although all are
    years old), /healthz and /metrics say what was pruned."""
    db = tmp_path / "c.db"
    # 240,000 frames: about 0.4 s of deleting on this machine, more than a step may take
    _old_sessions(db, sessions=12, frames=20_000, at=1_700_000_000.0)  # November 2023
    with Store.open(db) as store:
        full = store.db.execute("PRAGMA page_count").fetchone()[0] * 4096
    budget = full // 2
    interval = 0.3
    retention = Retention(max_bytes=budget, check_interval=0.2)
    async with (
        run_csms() as upstream,
        ProxyServer(upstream.url, db, flush_interval=interval, retention=retention) as proxy,
    ):
        assert any(line.startswith("retention: pruning the oldest frames") for line in proxy.describe())
        async with charger(proxy.url, "LIVE-1", version="1.6") as cp:
            await session16(cp, meter_values=3)  # type: ignore[arg-type]
            assert proxy.writer is not None and proxy.writer.pruner is not None
            pruner = proxy.writer.pruner
            async with asyncio.timeout(30):
                while pruner.stats.passes == 0 or pruner._cutoff is not None or pruner.data_bytes() > budget:
                    await asyncio.sleep(0.05)
        await settle(proxy)
        health = json.loads((await http_get(proxy.port, "/healthz"))[1])
        metrics = (await http_get(proxy.port, "/metrics"))[1].decode()
        relayed = proxy.stats.frames
    assert health["retention"]["frames_pruned"] == pruner.stats.frames_pruned > 0
    assert f"ocpp_capture_frames_pruned_total {float(pruner.stats.frames_pruned)}" in metrics
    # steps of at most half a flush interval (and a chunk), flushes at their interval
    assert pruner.stats.frames_pruned > 100_000 and pruner.stats.steps >= 2
    assert proxy.writer.stats.max_flush_gap < 2 * interval, proxy.writer.stats
    assert proxy.writer.stats.frames_lost == 0
    with Store.open(db) as store:
        sessions = store.sessions()
        live = [s for s in sessions if s.charge_point_id == "LIVE-1"]
        old = [s.charge_point_id for s in sessions if s.charge_point_id.startswith("OLD-")]
    assert len(live) == 1 and live[0].frames == relayed  # every frame the proxy relayed
    assert 0 < len(old) < 12 and old == [f"OLD-{n}" for n in range(12 - len(old), 12)]  # oldest gone


def test_the_size_cut_follows_the_frames_not_the_calendar(tmp_path: Path) -> None:
    """Sessions years apart: the cut-off frees about the share of frames over the budget, not
    the share of the time since the oldest frame."""
    db = tmp_path / "c.db"
    _old_sessions(db, sessions=4, frames=2_000, at=1_000_000_000.0, name="Y2001")
    _old_sessions(db, sessions=4, frames=2_000, at=1_700_000_000.0, name="Y2023")
    conn = sqlite3.connect(db, isolation_level=None)
    probe = Pruner(conn, Retention(max_bytes=1024 * 1024))
    used = probe.data_bytes()
    stats = Pruner(conn, Retention(max_bytes=int(used * 0.7))).run()
    conn.close()
    with Store.open(db) as store:
        left = [s.charge_point_id for s in store.sessions()]
    # 30 % over (plus headroom): the oldest two or three sessions go, in order; cutting by the
    # calendar (a third of the 25 years since the oldest frame) would have taken all of 2001
    assert left in (["Y2001-2", "Y2001-3", *(f"Y2023-{n}" for n in range(4))],
                    ["Y2001-3", *(f"Y2023-{n}" for n in range(4))]), left  # fmt: skip
    assert stats.passes >= 1


def test_prune_command_on_a_capture_no_proxy_writes(tmp_path: Path) -> None:
    """`ocpp-replay prune --retain`: the same pruning offline; --vacuum shrinks the file; a
    capture a proxy is writing is refused, as is a prune with nothing to go by."""
    from ocpp_replay.cli import app
    from ocpp_replay.store.writer import WriterLock

    db = tmp_path / "c.db"
    _old_sessions(db, sessions=3, frames=2_000, at=1_000_000_000.0, name="OLD")
    _old_sessions(db, sessions=2, frames=10, at=4_000_000_000.0, name="FUTURE")  # 2096: kept
    size = db.stat().st_size
    runner = CliRunner()
    res = runner.invoke(app, ["prune", "--db", str(db)])
    assert res.exit_code == 2 and "needs --retain" in res.stderr
    with WriterLock(db):
        res = runner.invoke(app, ["prune", "--db", str(db), "--retain", "30d"])
        assert res.exit_code == 2 and "being written by another process" in res.stderr, res.output
    res = runner.invoke(app, ["prune", "--db", str(db), "--retain", "30d", "--vacuum"])
    assert res.exit_code == 0, res.output
    assert "6000 frames, 3 sessions removed whole" in res.stdout
    with Store.open(db) as store:
        assert [s.charge_point_id for s in store.sessions()] == ["FUTURE-0", "FUTURE-1"]
    assert db.stat().st_size < size / 5
    res = runner.invoke(app, ["prune", "--db", str(tmp_path / "none.db"), "--retain", "1d"])
    assert res.exit_code == 2 and "no capture at" in res.stderr and "Traceback" not in res.output


def test_the_cut_finds_its_place_by_the_key_and_keeps_frames_out_of_order(tmp_path: Path) -> None:
    """The first frame at or after the cut-off is found by a search over seq; a frame whose time
    is out of order (an imported capture) after that point is never deleted."""
    db = tmp_path / "c.db"
    writer = CaptureWriter(db)
    t0 = 1_000_000.0
    sid = writer.open_session(t0, charge_point_id="LONG", subprotocol="ocpp1.6")
    times = [float(n) for n in range(0, 1000)]
    times[700] = 10.0  # out of order, after the cut's place
    for seq, at in enumerate(times, 1):
        writer.frame(sid, seq, t0 + at, at, Direction.TO_CSMS, f'[2,"{seq}","Heartbeat",{{}}]')
    writer.close()
    conn = sqlite3.connect(db, isolation_level=None)
    pruner = Pruner(conn, Retention(max_age=DAY))
    assert pruner._boundary(sid, 500.0) == 501  # seq 501 is at 500 s
    assert pruner._boundary(sid, -1.0) == 1 and pruner._boundary(sid, 5000.0) == 1001
    Pruner(conn, Retention(max_age=DAY), clock=lambda: t0 + 500 + DAY).run()
    conn.close()
    left = _seqs(db, sid)
    assert left[0] == 501 and 701 in left and len(left) == 500  # Heartbeats prime nothing
