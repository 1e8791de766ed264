"""Replay on Locust's distributed runner: a real master and two real workers (``locust``
processes, real sockets on 127.0.0.1) replay a capture against the `ocpp` package's CSMS.

Plus the pure parts: the split of charge points over workers, the merge, the exchanges Locust
counts, and the message loader that refuses classes that are not ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from ocpp_replay.capture.proxy import ProxyServer
from ocpp_replay.cli.distributed import locustfile_path
from ocpp_replay.core.diff import DiffKind
from ocpp_replay.core.frames import Direction
from ocpp_replay.core.results import LiveFrame, RunResult, SessionResult
from ocpp_replay.csms import ReferenceCsms
from ocpp_replay.distributed.plan import MessageError, exchanges, loads, merge_results, split, split_fleet
from ocpp_replay.replay import load_run, load_sessions, run_replay, store_run
from ocpp_replay.store import CaptureWriter, Store
from tests.replay_peers import TAG, Behaviour, csms, run_charger16

pytestmark = pytest.mark.timeout(60)

# The path, not an import: importing locust monkey-patches this process for gevent.
LOCUSTFILE = locustfile_path()
CHARGERS = ("CP-A", "CP-B", "CP-C", "CP-D", "CP-E")


# ----------------------------------------------------------------------------- pure parts


def _sessions(spec: list[tuple[int, str, int]]) -> list[Any]:
    """(session id, charge point, frames) -> loaded sessions as load_sessions returns them."""
    from ocpp_replay.store import FrameRecord, SessionInfo

    out = []
    for sid, cp, n in spec:
        blank = dict.fromkeys(SessionInfo.__slots__)
        info = SessionInfo(**{**blank, "id": sid, "charge_point_id": cp, "frames": n})
        frames = [
            FrameRecord(**{**dict.fromkeys(FrameRecord.__slots__), "session_id": sid, "seq": i, "raw": "[]"})
            for i in range(n)
        ]
        out.append((info, frames))
    return out


def test_split_keeps_a_chargers_sessions_together_in_order_and_balances_frames() -> None:
    loaded = _sessions([(1, "A", 10), (2, "B", 4), (3, "A", 10), (4, "C", 5), (5, "D", 3), (6, "B", 1)])
    shares = split(loaded, 2)
    seen = [info.id for share in shares for info, _ in share.sessions]
    assert sorted(seen) == [1, 2, 3, 4, 5, 6]  # every session exactly once
    for share in shares:
        ids = [info.id for info, _ in share.sessions]
        assert ids == sorted(ids)  # recorded order kept
        assert {info.charge_point_id for info, _ in share.sessions} == set(share.charge_points)
    owners = {cp: i for i, share in enumerate(shares) for cp in share.charge_points}
    assert len(owners) == 4  # no charger in two shares
    assert sorted(s.frames for s in shares) == [13, 20]  # A (20) alone; B, C, D beside it
    assert [len(s.sessions) for s in split(loaded[:1], 3)] == [1, 0, 0]


def _result(*sessions: tuple[int, str]) -> RunResult:
    return RunResult(
        target="ws://x",
        started_at="t0",
        ended_at="t1",
        sessions=tuple(SessionResult(sid, cp, "ocpp1.6", "t0", "t1", (), {}) for sid, cp in sessions),
    )


def test_merge_orders_sessions_and_marks_a_lost_worker_incomplete() -> None:
    merged = merge_results(
        [_result((3, "C"), (1, "A"))],
        target="ws://x",
        started_at="t0",
        ended_at="t1",
        order=[1, 2, 3],
        options={"speed": 2.0},
        missing={"w2": ("B",)},
    )
    assert [s.session_id for s in merged.sessions] == [1, 3]
    assert merged.options["incomplete"] == {"missing_charge_points": ["B"], "lost_workers": ["w2"]}
    assert merged.interrupted == {"finished": 2, "planned": 3}
    complete = merge_results(
        [_result((1, "A")), _result((2, "B"))], target="ws://x", started_at="t0", ended_at="t1",
        order=[1, 2], options={},
    )  # fmt: skip
    assert "incomplete" not in complete.options and complete.interrupted is None
    with pytest.raises(MessageError, match="session 1 came back from two workers"):
        merge_results([_result((1, "A")), _result((1, "A"))], target="", started_at="", ended_at="",
                      order=[1], options={})  # fmt: skip


def _frame(
    seq: int, direction: str, mt: int, uid: str, action: str | None, elapsed: float, raw: str
) -> LiveFrame:
    return LiveFrame(seq, seq, "t", elapsed, direction, mt, uid, action, raw)


def test_exchanges_pair_calls_and_mark_callerrors_differences_and_silence_as_failures() -> None:
    from ocpp_replay.core.diff import Difference

    frames = (
        _frame(1, "to_csms", 2, "1", "BootNotification", 0.0, "[2]"),
        _frame(2, "to_cp", 3, "1", None, 0.025, "[3]"),
        _frame(3, "to_csms", 2, "2", "Authorize", 0.1, "[2]"),
        _frame(4, "to_cp", 3, "2", None, 0.11, "[3]"),
        _frame(5, "to_cp", 2, "9", "Reset", 0.2, "[2]"),
        _frame(6, "to_csms", 4, "9", None, 0.21, '[4,"9","NotSupported","",{}]'),
        _frame(7, "to_csms", 2, "3", "Heartbeat", 0.3, "[2]"),
    )
    diff = Difference(1, "CP", 4, "Authorize", DiffKind.CHANGED, "idTagInfo.status", "Accepted", "Blocked")
    s = SessionResult(1, "CP", "ocpp1.6", "t0", "t1", (diff,), {}, frames=frames)
    got = [(x.kind, x.action, round(x.rtt_ms), x.error) for x in exchanges(s)]
    assert got == [
        ("OCPP", "BootNotification", 25, None),
        ("OCPP", "Authorize", 10, f"{DiffKind.CHANGED} idTagInfo.status"),
        ("OCPP CSMS", "Reset", 10, "CALLERROR NotSupported"),
        ("OCPP", "Heartbeat", 0, "no answer"),
    ]


def test_messages_load_only_our_classes() -> None:
    assert loads(pickle.dumps(_result((1, "A")))).sessions[0].charge_point_id == "A"
    with pytest.raises(MessageError, match=r"posix\.system|os\.system"):
        loads(pickle.dumps(os.system))
    with pytest.raises(MessageError, match="does not load"):
        loads(b"not a pickle")


# ----------------------------------------------------------------------------- real locust


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _locust(*args: str, cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "locust", "-f", LOCUSTFILE, *args,
        cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def _cluster(
    tmp_path: Path, db: Path, target: str, *extra: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, list[asyncio.subprocess.Process]]]:
    port = _free_port()
    master = await _locust(
        "--master", "--headless", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
        "--expect-workers", "2", "-u", "2", "-r", "2", "--csv", str(tmp_path / "stats"),
        "--capture", str(db), "--target", target, "--answer-timeout", "2", *extra,
        cwd=tmp_path,
    )  # fmt: skip
    workers = [
        await _locust("--worker", "--master-host", "127.0.0.1", "--master-port", str(port), cwd=tmp_path)
        for _ in range(2)
    ]
    try:
        yield master, workers
    finally:
        for p in (master, *workers):
            if p.returncode is None:
                p.kill()
                await p.wait()


async def _capture_fleet(db: Path) -> None:
    async with csms("1.6", Behaviour(tx_base=17)) as (url, _seen), ProxyServer(url, db) as proxy:
        async with asyncio.TaskGroup() as tg:
            for cp in CHARGERS:
                tg.create_task(run_charger16(proxy.url, cp))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("fleet") / "capture.db"
    asyncio.run(asyncio.wait_for(_capture_fleet(db), 30))
    return db


def _copy(src: Path, dst: Path) -> Path:
    with Store.open(src) as s:
        s.db.execute(f"VACUUM INTO '{dst}'")
    return dst


def _shape(run: RunResult) -> list[tuple[int, str, list[tuple[Any, ...]]]]:
    return [
        (
            s.session_id,
            s.charge_point_id,
            sorted((d.seq, d.action, str(d.kind), d.path) for d in s.differences),
        )
        for s in run.sessions
    ]


async def test_master_and_two_workers_store_the_run_a_local_replay_stores(
    fleet: Path, tmp_path: Path
) -> None:
    """The backend blocks the recorded tag: every session has the same Authorize difference in
    the distributed run as in a local replay; every session replayed exactly once."""
    behaviour = Behaviour(tx_base=900, blocked={TAG})
    local_db = _copy(fleet, tmp_path / "local.db")
    async with csms("1.6", behaviour) as (url, _seen):
        with Store.open(local_db) as store:
            local = await run_replay(store, url, answer_timeout=2.0, speed=4.0)
    dist_db = _copy(fleet, tmp_path / "dist.db")
    async with csms("1.6", behaviour) as (url, seen):
        async with _cluster(tmp_path, dist_db, url, "--speed", "4") as (master, workers):
            async with asyncio.timeout(45):
                _out, err = await master.communicate()
                for w in workers:
                    await w.wait()
    log = err.decode()
    assert master.returncode == 1, log  # differences: exit 1, as a local replay's
    assert "Traceback" not in log
    with Store.open(dist_db) as store:
        [run_id] = [r["id"] for r in store.db.query("SELECT id FROM runs")]
        dist = load_run(store, run_id)
        planned = [info.id for info, _ in load_sessions(store)]
    assert [s.session_id for s in dist.sessions] == planned  # each once, in the capture's order
    assert sorted(p.rsplit("/", 1)[-1] for p in seen.paths) == sorted(CHARGERS)
    assert _shape(dist) == _shape(local)
    assert any(d.action == "Authorize" for d in dist.differences)
    assert dist.options["distributed"] == {"workers": 2}
    # Locust's own statistics: every action a request of type OCPP, Authorize failing.
    lines = (tmp_path / "stats_stats.csv").read_text(encoding="utf-8").splitlines()[1:]
    rows = {(r[0], r[1]): r for r in (line.split(",") for line in lines)}
    assert rows[("OCPP", "Authorize")][3] == str(len(CHARGERS))  # failures: one per charger
    assert rows[("OCPP", "BootNotification")][2] == str(len(CHARGERS))
    assert rows[("OCPP", "BootNotification")][3] == "0"
    assert ("OCPP CSMS", "RemoteStopTransaction") in rows


async def test_amplify_over_two_workers_replays_distinct_copies_with_no_differences(
    fleet: Path, tmp_path: Path
) -> None:
    """--amplify 3 on the master: the copies are made once and split over the workers; the
    backend sees three distinct chargers per recorded one, each with its own idTag and its own
    transaction ids, and the stored run has every copy once and no difference."""
    db = _copy(fleet, tmp_path / "amp.db")
    async with csms("1.6", Behaviour(tx_base=900)) as (url, seen):
        extra = ("--speed", "4", "--amplify", "3", "--amplify-spread", "0.5")
        async with _cluster(tmp_path, db, url, *extra) as (master, workers):
            async with asyncio.timeout(60):
                _out, err = await master.communicate()
                for w in workers:
                    await w.wait()
    log = err.decode()
    assert master.returncode == 0, log
    chargers = {p.rsplit("/", 1)[-1] for p in seen.paths}
    assert chargers == {f"{cp}-x{k}" for cp in CHARGERS for k in (1, 2, 3)}
    tags = {tag for cp, action, tag in seen.id_tags if action == "StartTransaction"}
    assert len(tags) == 3 and TAG not in tags  # one pseudonym per copy, the same in every charger
    with Store.open(db) as store:
        [run_id] = [r["id"] for r in store.db.query("SELECT id FROM runs")]
        run = load_run(store, run_id)
    assert sorted(s.charge_point_id for s in run.sessions) == sorted(chargers)
    assert run.differences == () and run.options["distributed"] == {"workers": 2}


def _slow_capture(db: Path, chargers: int, last: float) -> None:
    """Each charger: a Heartbeat at 0.1 s and one at ``last`` seconds."""
    w = CaptureWriter(db)
    t0 = time.time() - 3600
    for i in range(chargers):
        cp = f"SLOW-{i}"
        sid = w.open_session(t0 + i * 0.01, charge_point_id=cp, subprotocol="ocpp1.6", path=f"/ocpp/{cp}")
        frames = [
            (0.1, Direction.TO_CSMS, '[2,"1","Heartbeat",{}]'),
            (0.15, Direction.TO_CP, '[3,"1",{"currentTime":"2026-01-01T00:00:00Z"}]'),
            (last, Direction.TO_CSMS, '[2,"2","Heartbeat",{}]'),
            (last + 0.05, Direction.TO_CP, '[3,"2",{"currentTime":"2026-01-01T00:00:00Z"}]'),
        ]
        for seq, (at, direction, raw) in enumerate(frames, 1):
            w.frame(sid, seq, t0 + at, at, direction, raw)
        w.close_session(sid, t0 + last + 0.1, closed_by="cp", close_code=1000)
    w.close()


@contextlib.asynccontextmanager
async def _answering() -> AsyncIterator[str]:
    async def answer(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(json.dumps([3, json.loads(message)[1], {"currentTime": "2026-01-01T00:00:00Z"}]))

    async with serve(answer, "127.0.0.1", 0, subprotocols=["ocpp1.6"]) as server:  # type: ignore[list-item]
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ocpp"


async def test_a_worker_killed_mid_run_leaves_an_incomplete_run_naming_the_missing_chargers(
    tmp_path: Path,
) -> None:
    db = tmp_path / "slow.db"
    _slow_capture(db, 4, last=30.0)  # 3 s of replay at --speed 10
    async with _answering() as url, _cluster(tmp_path, db, url, "--speed", "10") as (master, workers):
        assert master.stderr is not None
        async with asyncio.timeout(45):
            shared = 0
            while shared < 2:  # the master has sent both workers their shares
                line = (await master.stderr.readline()).decode()
                assert line, "the master ended early"
                shared += " replays " in line
            workers[0].send_signal(signal.SIGKILL)
            _out, err = await master.communicate()
    log = err.decode()
    assert master.returncode == 2, log
    [line] = [x for x in log.splitlines() if "is incomplete" in x]
    named = sorted(line.rsplit(": ", 1)[1].split(", "))
    with Store.open(db) as store:
        [run_id] = [r["id"] for r in store.db.query("SELECT id FROM runs")]
        run = load_run(store, run_id)
    replayed = sorted(s.charge_point_id for s in run.sessions)
    assert named and replayed  # each worker had a share: one lost, one finished
    assert sorted(named + replayed) == [f"SLOW-{i}" for i in range(4)]
    assert run.options["incomplete"]["missing_charge_points"] == named
    assert run.interrupted == {"finished": len(replayed), "planned": 4}
    assert [d for s in run.sessions for d in s.differences] == []


async def test_an_unreachable_target_is_a_clear_error_at_the_master(tmp_path: Path) -> None:
    db = tmp_path / "slow.db"
    _slow_capture(db, 2, last=1.0)
    url = f"ws://127.0.0.1:{_free_port()}/ocpp"
    async with _cluster(tmp_path, db, url) as (master, _workers):
        async with asyncio.timeout(45):
            _out, err = await master.communicate()
    assert master.returncode == 2
    [line] = [x for x in err.decode().splitlines() if "error: worker" in x]
    assert f"target 127.0.0.1:{url.split(':')[2].split('/')[0]} unreachable: connection refused" in line


async def test_a_capture_the_master_cannot_open_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    async with _cluster(tmp_path, tmp_path / "junk.db", "ws://127.0.0.1:1/ocpp") as (master, _workers):
        async with asyncio.timeout(45):
            _out, err = await master.communicate()
    assert master.returncode == 2
    [line] = [x for x in err.decode().splitlines() if "ocpp_replay.distributed: error: " in x]
    assert "junk.db" in line, line


def test_stored_run_loads_like_a_local_one(tmp_path: Path) -> None:
    """store_run of a merged run: load_run gives it back with its incomplete marks."""
    db = tmp_path / "s.db"
    _slow_capture(db, 1, last=1.0)
    merged = merge_results(
        [_result((1, "SLOW-0"))],
        target="ws://x",
        started_at="2026-01-01T00:00:00Z",
        ended_at="2026-01-01T00:00:01Z",
        order=[1, 2],
        options={},
        missing={"w": ("Z",)},
    )
    with Store.open(db) as store:
        stored = store_run(store, merged)
        again = load_run(store, stored.run_id or 0)
    assert again.options["incomplete"]["missing_charge_points"] == ["Z"]
    assert again.interrupted == {"finished": 1, "planned": 2}


# ----------------------------------------------------------------------------- simulate mode


def test_split_fleet_is_even_and_every_worker_has_its_own_prefix() -> None:
    assert split_fleet(7, 3, "ALF-") == [(3, "ALF-w1-"), (2, "ALF-w2-"), (2, "ALF-w3-")]
    assert sum(n for n, _ in split_fleet(10_000, 7, "X")) == 10_000


async def test_simulate_mode_runs_a_virtual_fleet_over_two_workers(tmp_path: Path) -> None:
    """--simulate 6: each worker runs its half of the fleet against the reference CSMS; every
    charger once, under its worker's prefix; Locust counts every CALL as it is answered."""
    async with ReferenceCsms() as backend:
        url = backend.url
        async with _cluster(
            tmp_path, tmp_path / "unused.db", url,
            "--simulate", "6", "--ocpp-version", "1.6,2.0.1", "--time-scale", "0.002",
        ) as (master, _workers):  # fmt: skip
            async with asyncio.timeout(45):
                _out, err = await master.communicate()
        ids = sorted(c.id for c in backend.backend.chargers.values())
    log = err.decode()
    assert master.returncode == 0, log
    assert "ocpp-replay fleet: 6 chargers" in log
    assert ids == ["ALF-w1-0001", "ALF-w1-0002", "ALF-w1-0003", "ALF-w2-0001", "ALF-w2-0002", "ALF-w2-0003"]
    lines = (tmp_path / "stats_stats.csv").read_text(encoding="utf-8").splitlines()[1:]
    rows = {(r[0], r[1]): r for r in (line.split(",") for line in lines)}
    assert rows[("OCPP", "BootNotification")][2] == "6"
    assert rows[("", "Aggregated")][3] == "0"  # no CALLERROR, no call unanswered


async def test_the_wrapper_runs_locust_with_the_packaged_locustfile(tmp_path: Path) -> None:
    """ocpp-replay locust ... execs locust (here its local runner, no --master): a missing
    --target is one error line at the master and exit 2, before anything is replayed."""
    db = tmp_path / "slow.db"
    _slow_capture(db, 1, last=1.0)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ocpp_replay.cli", "locust", "--headless", "-u", "1", "-r", "1",
        "--capture", str(db),
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(45):
        _out, err = await proc.communicate()
    assert proc.returncode == 2
    [line] = [x for x in err.decode().splitlines() if "ocpp_replay.distributed: error: " in x]
    assert line.endswith("error: --target is required (the ws:// URL of the CSMS under test)")
    with Store.open(db) as store:
        assert list(store.db.query("SELECT id FROM runs")) == []
