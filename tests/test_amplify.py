"""replay --amplify: N copies of each session as N distinct chargers, against the `ocpp` package's CSMS.

Real peers on loopback: a capture made through the proxy, the replay's copies checked in what the
independent CSMS saw (charge point ids, idTags, transaction ids per copy). The pure copy logic
(replay/amplify.py) gets plain unit tests.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from ocpp_replay.capture.proxy import ProxyServer
from ocpp_replay.cli.replay import register
from ocpp_replay.core.rules import RuleSet
from ocpp_replay.core.schedule import plan_session, plan_sessions
from ocpp_replay.errors import ReplayError
from ocpp_replay.replay import load_sessions, run_replay, store_run
from ocpp_replay.replay.amplify import amplify_sessions, copies_of, copy_charge_point, original_session
from ocpp_replay.replay.runner import Selection, due_sessions
from ocpp_replay.store import Store
from tests.replay_peers import TAG, Behaviour, csms, run_charger16

pytestmark = pytest.mark.timeout(60)


async def _capture(db: Path) -> None:
    async with (
        csms("1.6", Behaviour(tx_base=17)) as (url, _seen),
        ProxyServer(url, db) as proxy,
    ):
        await run_charger16(proxy.url, "CP-16")


@pytest.fixture(scope="module")
def capture16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("amp16") / "capture.db"
    asyncio.run(asyncio.wait_for(_capture(db), 20))
    return db


def _copy(src: Path, tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    dst = tmp_path / "capture.db"
    with Store.open(src) as s:
        s.db.execute(f"VACUUM INTO '{dst}'")
    return dst


def _cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


async def _invoke(args: list[str]) -> Any:
    return await asyncio.to_thread(CliRunner().invoke, _cli(), args, catch_exceptions=False)


# ----------------------------------------------------------------------------- pure copies


def test_copies_have_distinct_stable_identities_linked_within_a_copy(capture16: Path) -> None:
    with Store.open(capture16) as store:
        sessions = load_sessions(store)
    first, stride = amplify_sessions(sessions, 3)
    again, _ = amplify_sessions(sessions, 3)
    assert [i.charge_point_id for i, _ in first] == ["CP-16-x1", "CP-16-x2", "CP-16-x3"]
    assert [[f.raw for f in fr] for _, fr in first] == [[f.raw for f in fr] for _, fr in again]  # stable
    (orig_info, _orig_frames) = sessions[0]
    assert [original_session(i.id, stride) for i, _ in first] == [(orig_info.id, k) for k in (1, 2, 3)]
    tags_per_copy = []
    for _info, frames in first:
        tags = {
            f.raw.split('"idTag":"', 1)[1].split('"', 1)[0] for f in frames if f.raw and '"idTag"' in f.raw
        }
        assert len(tags) == 1, tags  # Authorize and StartTransaction keep one (pseudonymous) tag
        tags_per_copy.append(tags.pop())
    assert len(set(tags_per_copy)) == 3 and TAG not in tags_per_copy


def test_spread_moves_each_copys_start(capture16: Path) -> None:
    with Store.open(capture16) as store:
        sessions = load_sessions(store)
    copies, _ = amplify_sessions(sessions, 4, spread=8.0)
    starts = [i.started_at for i, _ in copies]
    assert starts == sorted(starts) and len(set(starts)) == 4


def test_bad_amplification_is_a_replay_error(capture16: Path) -> None:
    with Store.open(capture16) as store:
        sessions = load_sessions(store)
    with pytest.raises(ReplayError, match="at least 1"):
        amplify_sessions(sessions, 0)
    with pytest.raises(ReplayError, match="already in the capture"):
        amplify_sessions(sessions, 2, known_charge_points={copy_charge_point("CP-16", 2)})


# ----------------------------------------------------------------------------- against a real CSMS


async def test_amplify3_three_chargers_distinct_tags_correlated_transactions(
    capture16: Path, tmp_path: Path
) -> None:
    db = _copy(capture16, tmp_path)
    with Store.open(db) as store:
        copies, _ = amplify_sessions(await asyncio.to_thread(load_sessions, store), 3)
        async with csms("1.6", Behaviour(tx_base=5000)) as (url, seen):
            result = await run_replay(store, url, sessions=copies, answer_timeout=2.0, grace=0.5)
        result = await asyncio.to_thread(store_run, store, result)
    assert list(result.differences) == []
    assert result.exit_code == 0
    cps = {p.rsplit("/", 1)[-1] for p in seen.paths}
    assert cps == {"CP-16-x1", "CP-16-x2", "CP-16-x3"}
    tags = {cp: {t for c, _a, t in seen.id_tags if c == cp} for cp in cps}
    assert all(len(t) == 1 for t in tags.values()), tags
    assert len(set().union(*tags.values())) == 3 and TAG not in set().union(*tags.values())
    for cp in cps:  # each copy's MeterValues and StopTransaction carry the id its own start got
        started = [tx for c, a, tx in seen.tx_by_cp if c == cp and a == "StartTransaction"]
        used = {tx for c, a, tx in seen.tx_by_cp if c == cp and a != "StartTransaction"}
        assert len(started) == 1 and used == {started[0]}
    assert len({tx for _c, a, tx in seen.tx_by_cp if a == "StartTransaction"}) == 3


async def test_amplify_cli_replays_copies_and_stores_one_run(capture16: Path, tmp_path: Path) -> None:
    db = _copy(capture16, tmp_path)
    async with csms("1.6", Behaviour(tx_base=5000)) as (url, seen):
        out = await _invoke(
            [
                "replay",
                "--db",
                str(db),
                "--target",
                url,
                "--amplify",
                "2",
                "--amplify-spread",
                "0.2",
                "--timeout",
                "2",
                "--grace",
                "0.5",
            ]
        )
    assert out.exit_code == 0, out.output
    assert {p.rsplit("/", 1)[-1] for p in seen.paths} == {"CP-16-x1", "CP-16-x2"}
    with Store.open(db) as store:
        assert store.db.execute("SELECT sessions, diffs FROM runs").fetchall() == [(2, 0)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--amplify", "-1"], "error: --amplify must be at least 1, not -1"),
        (["--amplify", "0"], "error: --amplify must be at least 1, not 0"),
        (["--amplify", "2", "--amplify-spread", "-3"], "error: --amplify-spread must not be negative"),
    ],
)
async def test_bad_amplify_options_one_error_line_exit_2(
    capture16: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    db = _copy(capture16, tmp_path)
    out = await _invoke(["replay", "--db", str(db), "--target", "ws://127.0.0.1:9/ocpp", *args])
    assert out.exit_code == 2
    assert out.stderr.startswith(message) and len(out.stderr.strip().splitlines()) == 1, out.stderr


async def test_amplify_colliding_with_a_real_charger_is_one_error_line(
    capture16: Path, tmp_path: Path
) -> None:
    db = _copy(capture16, tmp_path)
    with Store.open(db) as store:  # a second recorded charger whose id is copy 2 of the first
        store.db.execute(
            "INSERT INTO sessions (charge_point_id, started_at) VALUES ('CP-16-x2', '2026-01-01T00:00:00Z')"
        )
        store.db.commit()
    async with csms("1.6") as (url, seen):
        out = await _invoke(["replay", "--db", str(db), "--target", url, "--amplify", "3", "--session", "1"])
    assert out.exit_code == 2
    assert out.stderr.startswith("error: --amplify 3: copy 2 of charger 'CP-16' would be 'CP-16-x2'")
    assert len(out.stderr.strip().splitlines()) == 1 and seen.paths == []


def test_copy_session_ids_stay_apart_from_every_recorded_id(capture16: Path) -> None:
    with Store.open(capture16) as store:
        sessions = load_sessions(store)
    copies, stride = amplify_sessions(sessions, 2, highest_session_id=15)
    assert stride == 100
    assert [i.id for i, _ in copies] == [100 + sessions[0][0].id, 200 + sessions[0][0].id]
    assert all(f.session_id == i.id for i, fr in copies for f in fr)


def test_streamed_copies_are_the_copies_made_in_memory(capture16: Path) -> None:
    """replay --amplify streams: each copy is made as its session is loaded (in whichever worker
    replays it). The plans, their starts and the timeline are those of copies made in memory."""
    rules = RuleSet.default()
    with Store.open(capture16) as store:
        dues, timeline = due_sessions(store, Selection(), 2.0, None, copies_of(store, Selection(), 3, 1.5))
        streamed = {d.session_id: (d.start, plan_session(*d.load(store), timeline, rules)) for d in dues}
        loaded = load_sessions(store)
        recorded = store.sessions()
    copies, _ = amplify_sessions(
        loaded,
        3,
        spread=1.5,
        known_charge_points={i.charge_point_id for i in recorded},
        highest_session_id=max(i.id for i in recorded),
    )
    in_memory = {p.session_id: p for p in plan_sessions(copies, speed=2.0, rules=rules)}
    assert len(streamed) == len(in_memory) == 3 * len(loaded)
    assert [d.session_id for d in dues] == sorted(in_memory, key=lambda sid: (in_memory[sid].start, sid))
    for sid, (start, plan) in streamed.items():
        assert plan == in_memory[sid]
        assert start == plan.start
    assert len({p.charge_point_id for _, p in streamed.values()}) == 3


async def test_amplify_with_workers_gives_the_run_of_one_process(capture16: Path, tmp_path: Path) -> None:
    """--amplify 3 over two worker processes: the same copies, the same (empty) differences and
    the same charge points at the backend as in one process."""
    runs = []
    for workers in ("1", "2"):
        db = _copy(capture16, tmp_path / workers)
        async with csms("1.6", Behaviour(tx_base=7000)) as (url, seen):
            out = await _invoke(
                [
                    *("replay", "--db", str(db), "--target", url, "--amplify", "3", "--workers", workers),
                    *("--timeout", "2", "--grace", "0.5"),
                ]
            )
        assert out.exit_code == 0, out.output
        with Store.open(db) as store:
            rows = store.db.execute("SELECT sessions, diffs FROM runs").fetchall()
        runs.append((rows, sorted({p.rsplit("/", 1)[-1] for p in seen.paths})))
    assert runs[0] == runs[1] == ([(3, 0)], ["CP-16-x1", "CP-16-x2", "CP-16-x3"])
