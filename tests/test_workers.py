"""`replay --workers N` (issue 12): charge points sharded over worker processes give one run with
the same differences as one process. Real worker processes, the `ocpp` package's CSMS of
tests/replay_peers.py on loopback, real captures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ocpp_replay.core.schedule import plan_sessions
from ocpp_replay.replay import load_sessions
from ocpp_replay.replay.amplify import amplify_sessions
from ocpp_replay.replay.workers import AUTO_MIN_CHARGE_POINTS, auto_workers, shard_plans
from ocpp_replay.store import Store
from tests.replay_peers import Behaviour, csms
from tests.test_amplify import _copy, _invoke, capture16  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(90)


def test_shards_keep_each_charger_whole_and_in_order(capture16: Path) -> None:  # noqa: F811
    with Store.open(capture16) as store:
        recorded = load_sessions(store)
    copies, _ = amplify_sessions(recorded, 7, spread=3.0)
    # a second session for copy 1: its sessions must stay in one shard, in order
    extra = [(type(info)(**{**info.as_dict(), "id": 900 + info.id}), frames) for info, frames in copies[:1]]
    plans = plan_sessions([*copies, *extra])
    shards = shard_plans(plans, 3)
    assert len(shards) == 3 and sorted(p.session_id for s in shards for p in s) == sorted(
        p.session_id for p in plans
    )
    where = {p.charge_point_id: i for i, s in enumerate(shards) for p in s}
    assert all(where[p.charge_point_id] == i for i, s in enumerate(shards) for p in s)  # whole
    assert all([p.start for p in s] == sorted(p.start for p in s) for s in shards)  # in order
    assert sorted(len({p.charge_point_id for p in s}) for s in shards) == [2, 2, 3]  # balanced
    assert shard_plans(plans, 20) and len(shard_plans(plans, 20)) == 7  # no empty shard
    assert auto_workers(AUTO_MIN_CHARGE_POINTS - 1) == 1 and auto_workers(AUTO_MIN_CHARGE_POINTS) >= 1


def _diffs(db: Path) -> list[list[Any]]:
    with Store.open(db) as store:
        runs = store.db.execute("SELECT id, sessions, diffs, options FROM runs ORDER BY id").fetchall()
        out = []
        for run_id, sessions, diffs, options in runs:
            rows = store.db.execute(
                "SELECT session_id, charge_point_id, seq, action, kind, path, expected, actual "
                "FROM run_diffs WHERE run_id = ? ORDER BY session_id, seq, kind, path",
                [run_id],
            ).fetchall()
            out.append([sessions, diffs, json.loads(options).get("workers"), rows])
    return out


async def test_two_workers_give_the_same_run_as_one(capture16: Path, tmp_path: Path) -> None:  # noqa: F811
    """Four chargers (amplified copies) against a backend that now makes a call the recording
    lacks: the same differences, sessions and exit status from one process and from two."""
    db = _copy(capture16, tmp_path)
    args = ["replay", "--db", str(db), "--amplify", "4", "--amplify-spread", "0.3", "--timeout", "2",
            "--grace", "0.5"]  # fmt: skip
    for workers in ("1", "2"):
        async with csms("1.6", Behaviour(tx_base=5000, extra_call="GetConfiguration")) as (url, seen):
            out = await _invoke([*args, "--target", url, "--workers", workers])
            assert out.exit_code == 1, out.output
            assert len({p.rsplit("/", 1)[-1] for p in seen.paths}) == 4
    one, two = _diffs(db)
    assert one[2] is None and two[2] == 2  # run in one process, then in two
    assert one[0] == two[0] == 4 and one[1] == two[1] > 0
    assert one[3] == two[3]


@pytest.mark.parametrize("value", ["0", "-2", "many"])
async def test_bad_workers_is_one_error_line(capture16: Path, tmp_path: Path, value: str) -> None:  # noqa: F811
    db = _copy(capture16, tmp_path)
    out = await _invoke(["replay", "--db", str(db), "--target", "ws://127.0.0.1:9/ocpp", "--workers", value])
    assert out.exit_code == 2
    assert "--workers must be a number of 1 or more, or auto" in out.stderr and "Traceback" not in out.output
