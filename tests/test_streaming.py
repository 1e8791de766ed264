"""Replaying a capture larger than memory should hold (issue 12): windows read from disk as they
go, and a whole-capture replay loads sessions ahead of their start, not all at once.

The captures are real SQLite files written by the capture writer; the replays run against the
test CSMS of tests/replay_peers.py (the `ocpp` package) on loopback.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ocpp_replay.cli import app
from ocpp_replay.core.frames import Direction
from ocpp_replay.core.window import Window
from ocpp_replay.replay import Selection, load_run, load_sessions, run_replay, store_run
from ocpp_replay.replay.runner import ResultSpool
from ocpp_replay.replay.window import cut_loaded, cut_stored, load_window
from ocpp_replay.store import CaptureWriter, Store, utc_iso
from ocpp_replay.store.runs import list_runs
from tests.test_ramp import slow_csms

pytestmark = pytest.mark.timeout(120)


def _write(
    w: CaptureWriter, sid: int, seq: int, start: float, elapsed: float, direction: Direction, body: Any
) -> None:
    w.frame(sid, seq, start + elapsed, elapsed, direction, json.dumps(body))


def _messy_capture(db: Path, seed: int) -> float:
    """Sessions of 1.6 and 2.0.1 with pipelined calls, answers late across any boundary, stray
    answers, CALLERRORs and backend calls. Returns the capture's start (epoch seconds)."""
    rng = random.Random(seed)
    w = CaptureWriter(db, flush_interval=0.2)
    t0 = time.time() - 86_400
    for n in range(12):
        version = "ocpp1.6" if n % 2 == 0 else "ocpp2.0.1"
        start = t0 + rng.uniform(0, 50)
        sid = w.open_session(start, charge_point_id=f"CP-{n}", subprotocol=version)
        seq = 0
        pending: list[tuple[float, Direction, Any]] = []  # answers not yet written
        at = 0.0
        tx = 0
        for k in range(rng.randint(20, 80)):
            at += rng.uniform(0.1, 5.0)
            uid = f"u{k % 17}"  # unique ids recur: lookups must pick the right one
            roll = rng.random()
            if version == "ocpp1.6":
                if roll < 0.1:
                    call = [
                        2,
                        uid,
                        "BootNotification",
                        {"chargePointVendor": "Alfen BV", "chargePointModel": "NG9"},
                    ]
                    answer: Any = [
                        3,
                        uid,
                        {"status": "Accepted", "currentTime": utc_iso(start), "interval": 60},
                    ]
                elif roll < 0.35:
                    call = [
                        2,
                        uid,
                        "StatusNotification",
                        {"connectorId": rng.randint(0, 2), "status": "Available", "errorCode": "NoError"},
                    ]
                    answer = [3, uid, {}]
                elif roll < 0.5:
                    tx += 1
                    call = [
                        2,
                        uid,
                        "StartTransaction",
                        {"connectorId": 1, "idTag": "A", "meterStart": 0, "timestamp": utc_iso(start + at)},
                    ]
                    answer = [3, uid, {"transactionId": 100 * n + tx, "idTagInfo": {"status": "Accepted"}}]
                elif roll < 0.6:
                    call = [
                        2,
                        uid,
                        "StopTransaction",
                        {"transactionId": 100 * n + tx, "meterStop": 5, "timestamp": utc_iso(start + at)},
                    ]
                    answer = [4, uid, "InternalError", "", {}] if rng.random() < 0.3 else [3, uid, {}]
                else:
                    call = [2, uid, "MeterValues", {"connectorId": 1, "meterValue": []}]
                    answer = [3, uid, {}]
            else:
                event = rng.choice(["Started", "Updated", "Ended"])
                if roll < 0.3:
                    call = [
                        2,
                        uid,
                        "StatusNotification",
                        {
                            "timestamp": utc_iso(start + at),
                            "connectorStatus": "Available",
                            "evseId": 1,
                            "connectorId": rng.randint(1, 2),
                        },
                    ]
                else:
                    call = [
                        2,
                        uid,
                        "TransactionEvent",
                        {
                            "eventType": event,
                            "timestamp": utc_iso(start + at),
                            "triggerReason": "Authorized",
                            "seqNo": k,
                            "transactionInfo": {"transactionId": f"T{rng.randint(1, 3)}"},
                        },
                    ]
                answer = [3, uid, {}]
            pending.append((at + rng.choice([0.01, 0.01, 3.0, 12.0]), Direction.TO_CP, answer))
            frames = [(at, Direction.TO_CSMS, call)]
            if rng.random() < 0.05:
                frames.append((at + 0.2, Direction.TO_CP, [3, "stray", {}]))  # answers nothing
            if rng.random() < 0.05:
                frames.append((at + 0.3, Direction.TO_CP, [2, f"b{k}", "Reset", {"type": "Soft"}]))
                pending.append((at + 0.4, Direction.TO_CSMS, [3, f"b{k}", {"status": "Accepted"}]))
            ready = sorted([p for p in pending if p[0] <= at] + frames, key=lambda x: x[0])
            pending = [p for p in pending if p[0] > at]
            for when, direction, body in ready:
                seq += 1
                _write(w, sid, seq, start, when, direction, body)
        for when, direction, body in sorted(pending, key=lambda x: x[0]):
            seq += 1
            _write(w, sid, seq, start, when, direction, body)
        if n % 3:
            w.close_session(sid, start + at + 20, close_code=1000, closed_by="cp")
    w.start()
    w.close(timeout=60)
    return t0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_window_read_from_disk_is_the_window_cut_in_memory(tmp_path: Path, seed: int) -> None:
    db = tmp_path / "messy.db"
    t0 = _messy_capture(db, seed)
    rng = random.Random(seed)
    checked = 0
    with Store.open(db, read_only=True) as store:
        infos = store.sessions()
        for _ in range(15):
            start = t0 + rng.uniform(0, 250)
            window = Window(start, rng.choice([None, start + rng.uniform(5, 120)]))
            for prime in (True, False):
                for info in infos:
                    in_memory = cut_loaded(info, list(store.frames(info.id)), window, prime=prime)
                    on_disk = cut_stored(store, info, window, prime=prime)
                    assert on_disk == in_memory, (seed, info.id, window, prime)
                    checked += on_disk is not None and bool(on_disk[1])
    assert checked > 20  # windows that primed something were among them


def test_a_window_of_a_long_connection_holds_the_window_not_the_connection(tmp_path: Path) -> None:
    """One connection of 40,000 frames (a month of MeterValues at a minute): a window of an
    hour in its middle reads a few hundred frames into memory, whatever came before."""
    db = tmp_path / "long.db"
    w = CaptureWriter(db, flush_interval=0.2)
    start = time.time() - 40 * 86_400
    sid = w.open_session(start, charge_point_id="CP-LONG", subprotocol="ocpp1.6")
    boot = [2, "b", "BootNotification", {"chargePointVendor": "Alfen BV", "chargePointModel": "NG9"}]
    _write(w, sid, 1, start, 0.0, Direction.TO_CSMS, boot)
    _write(
        w,
        sid,
        2,
        start,
        0.01,
        Direction.TO_CP,
        [3, "b", {"status": "Accepted", "currentTime": "x", "interval": 60}],
    )
    seq = 2
    for k in range(20_000):
        at = 60.0 * (k + 1)
        mv = {
            "connectorId": 1,
            "meterValue": [
                {
                    "timestamp": utc_iso(start + at),
                    "sampledValue": [{"value": str(k), "measurand": "Energy.Active.Import.Register"}] * 4,
                }
            ],
        }
        _write(w, sid, seq + 1, start, at, Direction.TO_CSMS, [2, f"m{k}", "MeterValues", mv])
        _write(w, sid, seq + 2, start, at + 0.01, Direction.TO_CP, [3, f"m{k}", {}])
        seq += 2
    w.start()
    w.close(timeout=60)
    window = Window(start + 10 * 86_400 - 30, start + 10 * 86_400 + 3570)  # no frame on a bound
    with Store.open(db, read_only=True) as store:
        everything = sum(len(f.raw or "") for f in store.frames(sid))
        tracemalloc.start()
        loaded, priming = load_window(store, Selection(), window)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    [(_, frames)] = loaded
    assert len(frames) == 2 + 120  # the boot primed, then an hour of calls and answers
    assert priming[sid] == frozenset({1, 2})
    # Loading the connection whole would hold more than its raw text (10 MB here) at once.
    assert everything > 8_000_000
    assert peak < everything / 10, (peak, everything)


def fast_csms() -> Any:
    """A CSMS that answers every CALL with an empty result at once (tests/test_ramp.py's)."""
    return slow_csms(handshake=0.0)


def _reconnecting_capture(db: Path, sessions: int, apart: float) -> None:
    """Five chargers, each reconnecting: ``sessions`` short connections ``apart`` seconds apart,
    each with three StatusNotifications answered."""
    w = CaptureWriter(db, flush_interval=0.2)
    t0 = time.time() - 3600
    for n in range(sessions):
        start = t0 + n * apart
        sid = w.open_session(start, charge_point_id=f"CP-{n % 5}", subprotocol="ocpp1.6")
        for k in range(3):
            status = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}
            _write(
                w,
                sid,
                2 * k + 1,
                start,
                0.05 + 0.1 * k,
                Direction.TO_CSMS,
                [2, f"{n}-{k}", "StatusNotification", status],
            )
            _write(w, sid, 2 * k + 2, start, 0.06 + 0.1 * k, Direction.TO_CP, [3, f"{n}-{k}", {}])
        w.close_session(sid, start + 0.4, close_code=1000, closed_by="cp")
    w.start()
    w.close(timeout=60)


async def test_a_capture_replays_streamed_holding_the_sessions_due_soon_not_all(tmp_path: Path) -> None:
    """40 connections over 20 recorded seconds, at --speed 4, loading 1 s ahead: never more
    than a few sessions in memory at once, and the same run as with every session loaded."""
    db = tmp_path / "long.db"
    _reconnecting_capture(db, 40, 0.5)
    kw: dict[str, Any] = {"speed": 4.0, "answer_timeout": 2.0, "grace": 0.1, "connect_ahead": 0.2}
    with Store.open(db) as store:
        async with fast_csms() as (url, seen):
            streamed = await run_replay(store, url, load_ahead=1.0, **kw)
            loaded = await asyncio.to_thread(load_sessions, store)
            whole = await run_replay(store, url, sessions=loaded, **kw)
    assert len(seen["charge_points"]) == 80  # every session connected, twice
    info = streamed.options["streamed"]
    assert info["loaded"] == 40
    # 1 s ahead at speed 4 is 4 recorded seconds: about 8 sessions due, a few running
    assert info["most_held"] <= 15, info
    assert streamed.messages == whole.messages == 40 * 3 * 2
    assert streamed.differences == whole.differences == ()
    assert [s.session_id for s in streamed.sessions] == [s.session_id for s in whole.sessions]
    assert "streamed" not in whole.options


async def test_a_replay_writes_each_session_s_frames_to_its_run_as_it_finishes(tmp_path: Path) -> None:
    """The run is in the capture from the start; finished sessions' frames are there while
    later ones still run, and are not held in memory; the completed run reads back whole."""
    db = tmp_path / "long.db"
    _reconnecting_capture(db, 40, 0.5)
    seen_stored: list[int] = []
    with Store.open(db) as store, Store.open(db, read_only=True) as reader:

        def progress(p: Any) -> None:
            if p.finished is not None:
                row = reader.db.execute("SELECT count(*) FROM run_frames").fetchone()
                seen_stored.append(row[0])

        async with fast_csms() as (url, _):
            spool = ResultSpool(store)
            result = await run_replay(
                store, url, speed=4.0, answer_timeout=2.0, grace=0.1, spool=spool, progress=progress
            )
        stored = store_run(store, result)
        again = load_run(store, stored.run_id or 0)
        runs = store.db.execute(
            "SELECT count(*), max(ended_at IS NOT NULL), max(messages) FROM runs"
        ).fetchone()
    assert stored.run_id == spool.run_id
    assert runs == (1, 1, 240)  # one run, completed, its messages counted
    assert all(s.frames == () and s.frames_stored == 6 for s in result.sessions)
    assert result.messages == 240 and result.differences == ()
    assert [len(s.frames) for s in again.sessions] == [6] * 40
    assert again.messages == 240
    assert 0 < max(seen_stored) < 240  # written while the replay went on, not at its end


async def test_a_replay_that_fails_after_it_started_leaves_no_run(tmp_path: Path) -> None:
    """A target that accepts TCP and never completes a handshake (the run fails after 10 s, the
    connect timeout): exit 2, and the run opened when the replay started is gone."""
    db = tmp_path / "long.db"
    _reconnecting_capture(db, 2, 0.5)

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # the probe passes; handshakes never end
        writer.close()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        out = await asyncio.to_thread(
            CliRunner().invoke,
            app,
            ["replay", "--db", str(db), "--target", f"ws://127.0.0.1:{port}/ocpp"],
        )
    finally:
        server.close()
    assert out.exit_code == 2, out.output
    assert "error:" in out.output
    with Store.open(db, read_only=True) as store:
        assert store.db.execute("SELECT count(*) FROM runs").fetchone() == (0,)


async def test_workers_stream_their_shards_and_write_into_one_run(tmp_path: Path) -> None:
    """`--workers 2` on a capture (not amplified, so streamed): each worker reads its own
    chargers' sessions and writes their frames into the run the parent opened; the run is the
    one `--workers 1` stores, frame for frame."""
    db = tmp_path / "long.db"
    _reconnecting_capture(db, 20, 0.5)
    args = ["replay", "--db", str(db), "--speed", "4", "--timeout", "2", "--grace", "0.1"]
    async with fast_csms() as (url, seen):
        for workers in ("1", "2"):
            out = await asyncio.to_thread(
                CliRunner().invoke, app, [*args, "--target", url, "--workers", workers]
            )
            assert out.exit_code == 0, out.output
    assert len(seen["charge_points"]) == 40
    with Store.open(db, read_only=True) as store:
        runs = store.db.execute(
            "SELECT id, sessions, messages, diffs, ended_at IS NOT NULL, options FROM runs"
        ).fetchall()
        frames = [
            store.db.execute(
                "SELECT session_id, side, seq, direction, action FROM run_frames WHERE run_id = ? "
                "ORDER BY session_id, seq",
                [run_id],
            ).fetchall()
            for run_id, *_ in runs
        ]
    (one, two) = runs
    assert one[1:5] == two[1:5] == (20, 120, 0, 1)
    assert json.loads(two[5])["workers"] == 2 and json.loads(two[5])["streamed"]["loaded"] == 20
    assert len(frames[0]) == 120 and frames[0] == frames[1]


async def test_a_replay_raises_its_open_file_limit_for_its_chargers(tmp_path: Path) -> None:
    """A charger's connection is a file: 40 chargers connected at once under a soft limit of 40
    open files (the usual soft limit is 1,024, the hard one far higher) replay with 0
    differences, the replay raising its soft limit to the hard one as the proxy does."""
    import resource
    import subprocess
    import sys

    db = tmp_path / "forty.db"
    w = CaptureWriter(db, flush_interval=0.2)
    t0 = time.time() - 3600
    for n in range(40):
        sid = w.open_session(t0 + n * 0.01, charge_point_id=f"CP-{n}", subprotocol="ocpp1.6")
        for k in range(3):
            status = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}
            call = [2, f"{n}-{k}", "StatusNotification", status]
            _write(w, sid, 2 * k + 1, t0 + n * 0.01, 0.2 + 0.3 * k, Direction.TO_CSMS, call)
            _write(w, sid, 2 * k + 2, t0 + n * 0.01, 0.21 + 0.3 * k, Direction.TO_CP, [3, f"{n}-{k}", {}])
        w.close_session(sid, t0 + n * 0.01 + 1.2, close_code=1000, closed_by="cp")
    w.start()
    w.close(timeout=60)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard == resource.RLIM_INFINITY or hard > 200, "this test needs a hard limit above 200 open files"

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, hard))

    async with fast_csms() as (url, seen):
        argv = ["replay", "--db", str(db), "--target", url, "--timeout", "2", "--grace", "0.1"]
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "ocpp_replay.cli", *argv],
            capture_output=True,
            text=True,
            timeout=90,
            preexec_fn=low_soft_limit,  # a limit, set in the child only
        )
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(seen["charge_points"]) == 40
    with Store.open(db) as store:
        run = load_run(store, list_runs(store)[-1]["id"])
    assert run.differences == () and len(run.sessions) == 40 and run.messages == 40 * 3 * 2
