"""`replay/compare --results FILE.db` (issue 23.6): the run goes into a results file, the capture
is only read and stays byte for byte as it was; runs, report and more runs read and append to
the results file as they do to a capture. The `ocpp` package's CSMS on loopback, real files."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

from ocpp_replay.store import Store
from tests.replay_peers import TAG, Behaviour, csms
from tests.test_replay import _copy, _invoke, capture16, capture201  # noqa: F401 (fixtures)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_runs_go_to_the_results_file_and_the_capture_is_left_as_it_was(
    capture16: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    db = _copy(capture16, tmp_path)
    before = _digest(db)
    results = tmp_path / "out" / "results.db"
    async with csms("1.6", Behaviour(tx_base=5000)) as (url, _seen):
        res = await _invoke(["replay", "--db", str(db), "--target", url, "--results", str(results)])
        assert res.exit_code == 0, res.output
    async with csms("1.6", Behaviour(tx_base=5000, blocked={TAG})) as (url, _seen):
        res = await _invoke(["replay", "--db", str(db), "--target", url, "--results", str(results),
                             "--report", str(tmp_path / "r2.json")])  # fmt: skip
    assert _digest(db) == before  # not a byte written to the capture
    with Store.open(db) as store:
        assert store.db.execute("SELECT count(*) FROM runs").fetchone()[0] == 0
    assert stat.S_IMODE(results.stat().st_mode) == 0o600
    with Store.open(results) as out:
        runs = out.db.execute("SELECT id, diffs, exit_code FROM runs ORDER BY id").fetchall()
        [session] = out.sessions()
        assert out.db.execute("SELECT count(*) FROM frames").fetchone()[0] == 0  # no copy of the traffic
    second = json.loads((tmp_path / "r2.json").read_text())
    assert runs[0][1:] == (0, 0) and runs[1][0] == 2  # the second run appended
    assert runs[1][1:] == (second["summary"]["diffs"], 1) and second["summary"]["diffs"] > 0
    assert session.charge_point_id == "CP-16"
    # runs and report read the results file as a capture
    listed = await _invoke(["runs", "--db", str(results), "--json"])
    assert listed.exit_code == 0 and [r["id"] for r in json.loads(listed.stdout)] == [1, 2]
    shown = await _invoke(["report", "2", "--db", str(results), "--json", str(tmp_path / "again.json")])
    assert shown.exit_code == 0, shown.output
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["summary"]["diffs"] == second["summary"]["diffs"]
    assert [s["charge_point_id"] for s in again["sessions"]] == ["CP-16"]


async def test_a_results_file_of_another_capture_or_the_capture_itself_is_refused(
    capture16: Path,  # noqa: F811
    capture201: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    db16 = _copy(capture16, tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    db201 = _copy(capture201, other)
    results = tmp_path / "results.db"
    async with csms("1.6", Behaviour()) as (url, _seen):
        res = await _invoke(["replay", "--db", str(db16), "--target", url, "--results", str(results)])
        assert res.exit_code == 0, res.output
    for db, target, message in (
        (db201, "ws://127.0.0.1:9/ocpp", "holds runs of the capture"),
        (db16, "ws://127.0.0.1:9/ocpp", None),
    ):
        args = ["replay", "--db", str(db), "--target", target, "--results"]
        if message is not None:
            res = await _invoke([*args, str(results)])
        else:
            res = await _invoke([*args, str(db16)])
            message = "is the capture itself"
        assert res.exit_code == 2 and message in res.stderr, res.output
        assert "Traceback" not in res.output
    res = await _invoke(
        ["replay", "--db", str(db16), "--target", "ws://127.0.0.1:9/ocpp", "--results", str(db201)]
    )
    assert res.exit_code == 2 and "is a capture, not a results file" in res.stderr
