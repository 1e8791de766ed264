"""Schema validation of captures: a planted violation is found, a clean capture passes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ocpp_replay.cli import app
from ocpp_replay.core.frames import Direction
from ocpp_replay.store import CaptureWriter

ALFEN = (
    Path(__file__).resolve().parent / "data" / "alfen-frames.jsonl"
)  # real Alfen frames, from public issue threads
runner = CliRunner()

CLEAN = [
    (
        Direction.TO_CSMS,
        '[2,"1","BootNotification",{"chargePointVendor":"Alfen BV","chargePointModel":"NG910-60023"}]',
    ),
    (Direction.TO_CP, '[3,"1",{"currentTime":"2026-11-25T10:00:00Z","interval":300,"status":"Accepted"}]'),
    (Direction.TO_CSMS, '[2,"2","Heartbeat",{}]'),
    (Direction.TO_CP, '[3,"2",{"currentTime":"2026-11-25T10:00:01Z"}]'),
]


def make_capture(
    path: Path, frames: list[tuple[Direction, str]], subprotocol: str | None = "ocpp1.6"
) -> None:
    writer = CaptureWriter(path)
    sid = writer.open_session(time.time(), charge_point_id="ALF-1", subprotocol=subprotocol)
    for seq, (direction, raw) in enumerate(frames, 1):
        writer.frame(sid, seq, time.time(), 0.1 * seq, direction, raw)
    writer.close_session(sid, time.time(), frames=len(frames))
    writer.close()


def test_clean_capture_passes(tmp_path: Path) -> None:
    make_capture(tmp_path / "c.db", CLEAN)
    result = runner.invoke(app, ["validate", "--db", str(tmp_path / "c.db"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["violations"] == []


def test_alfen_current_max_is_found_by_side_action_and_path(tmp_path: Path) -> None:
    lines = [json.loads(line) for line in ALFEN.read_text().splitlines() if line.strip()]
    meter = next(line["raw"] for line in lines if "CurrentMax" in line["raw"])
    make_capture(
        tmp_path / "c.db",
        [*CLEAN, (Direction.TO_CSMS, meter), (Direction.TO_CP, '[3,"4",{"unexpected":1}]')],
    )
    result = runner.invoke(app, ["validate", "--db", str(tmp_path / "c.db"), "--json"])
    assert result.exit_code == 1
    found = json.loads(result.output)["violations"]
    assert {(f["side"], f["action"], f["message_kind"], f["path"]) for f in found} == {
        ("charger", "MeterValues", "request", "meterValue[0].sampledValue[1].context"),
        ("backend", "MeterValues", "response", ""),  # additionalProperties: false
    }
    table = runner.invoke(app, ["validate", "--db", str(tmp_path / "c.db")])
    assert "meterValue[0].sampledValue[1].context" in table.output


def test_unknown_version_is_skipped_unless_given(tmp_path: Path) -> None:
    make_capture(tmp_path / "c.db", CLEAN, subprotocol=None)
    result = runner.invoke(app, ["validate", "--db", str(tmp_path / "c.db"), "--json"])
    assert json.loads(result.output)["skipped"]
    result = runner.invoke(app, ["validate", "--db", str(tmp_path / "c.db"), "--json", "--version", "1.6"])
    assert result.exit_code == 0 and not json.loads(result.output)["skipped"]


@pytest.mark.parametrize("db", ["missing.db", "garbage.db"])
def test_bad_capture_is_exit_2(tmp_path: Path, db: str) -> None:
    (tmp_path / "garbage.db").write_bytes(b"x" * 4096)
    result = runner.invoke(app, ["validate", "--db", str(tmp_path / db)])
    assert result.exit_code == 2
