"""Schema validation of captures: a planted violation is found, a clean capture passes."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ocpp_replay.cli import app
from ocpp_replay.core.frames import Direction
from ocpp_replay.core.validate import check_sessions
from ocpp_replay.errors import ConfigError
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


def test_clean_capture_reports_what_it_checked(tmp_path: Path) -> None:
    make_capture(tmp_path / "c.db", CLEAN)
    result = runner.invoke(app, ["validate", "--db", str(tmp_path / "c.db")])
    assert result.exit_code == 0, result.output
    assert "checked 4 frames of 1 session (OCPP 1.6: 1)" in result.output
    assert "no schema violations" in result.output
    summary = json.loads(runner.invoke(app, ["validate", "--db", str(tmp_path / "c.db"), "--json"]).stdout)
    assert summary["summary"] | {"versions": None} == {
        "sessions_checked": 1,
        "frames": 4,
        "frames_checked": 4,
        "call_errors": 0,
        "versions": None,
        "sessions_skipped": 0,
        "frames_skipped": 0,
        "sessions_unopened": 0,
        "violations": 0,
    }


@pytest.mark.parametrize("subprotocol", [None, "ocpp9.9"])
def test_a_session_of_unknown_version_is_exit_2_unless_given_or_allowed(
    tmp_path: Path, subprotocol: str | None
) -> None:
    make_capture(tmp_path / "c.db", CLEAN, subprotocol=subprotocol)
    db = str(tmp_path / "c.db")
    result = runner.invoke(app, ["validate", "--db", db])
    assert result.exit_code == 2
    assert "no schema violations" not in result.stdout
    assert "skipped session 1" in result.stdout and "(4 frames)" in result.stdout
    assert "checked 0 frames of 0 sessions; skipped 1 session (4 frames not checked)" in result.stdout
    assert result.stderr.startswith("error: 1 session not checked") and result.stderr.count("\n") == 1
    result = runner.invoke(app, ["validate", "--db", db, "--json"])
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert data["skipped"][0]["session_id"] == 1 and data["skipped"][0]["frames"] == 4
    assert data["summary"]["sessions_skipped"] == 1 and data["summary"]["frames_checked"] == 0
    # --allow-skip accepts skipped sessions, but a run that checked nothing is still not a pass.
    assert runner.invoke(app, ["validate", "--db", db, "--allow-skip"]).exit_code == 2
    result = runner.invoke(app, ["validate", "--db", db, "--json", "--version", "1.6"])
    assert result.exit_code == 0 and not json.loads(result.stdout)["skipped"]


def test_allow_skip_passes_when_the_rest_was_checked(tmp_path: Path) -> None:
    writer = CaptureWriter(tmp_path / "c.db")
    for subprotocol in ("ocpp1.6", None):
        sid = writer.open_session(time.time(), charge_point_id="ALF-1", subprotocol=subprotocol)
        for seq, (direction, raw) in enumerate(CLEAN, 1):
            writer.frame(sid, seq, time.time(), 0.1 * seq, direction, raw)
        writer.close_session(sid, time.time(), frames=len(CLEAN))
    writer.close()
    db = str(tmp_path / "c.db")
    assert runner.invoke(app, ["validate", "--db", db]).exit_code == 2
    result = runner.invoke(app, ["validate", "--db", db, "--allow-skip"])
    assert result.exit_code == 0, result.output
    assert "skipped 1 session (4 frames not checked)" in result.stdout
    assert "no schema violations in the frames checked" in result.stdout


@pytest.mark.parametrize("version", ["3.0", "2.2", "x"])
def test_unknown_version_option_is_exit_2(tmp_path: Path, version: str) -> None:
    make_capture(tmp_path / "c.db", CLEAN)
    result = runner.invoke(app, ["validate", "--db", str(tmp_path / "c.db"), "--version", version])
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: Invalid value for '--version': {version!r} is not one of '1.6', '2.0.1', '2.1' "
        "(see ocpp-replay validate --help)\n"
    )


def test_an_empty_selection_checks_nothing_and_is_exit_2(tmp_path: Path) -> None:
    make_capture(tmp_path / "c.db", CLEAN)
    result = runner.invoke(app, ["validate", "--db", str(tmp_path / "c.db"), "--charge-point", "nobody"])
    assert result.exit_code == 2
    assert result.stderr == "error: no frame was checked against a schema: no session to check\n"


BOOT_21 = (
    '[2,"1","BootNotification",{"reason":"PowerUp",'
    '"chargingStation":{"model":"NG910-60023","vendorName":"Alfen BV"}}]'
)
CLEAN_21 = [
    (Direction.TO_CSMS, BOOT_21),
    (Direction.TO_CP, '[3,"1",{"currentTime":"2026-11-25T10:00:00Z","interval":300,"status":"Accepted"}]'),
    (Direction.TO_CP, '[2,"c1","Reset",{"type":"ImmediateAndResume"}]'),  # 2.1 only
    (Direction.TO_CSMS, '[3,"c1",{"status":"Accepted"}]'),
    (Direction.TO_CSMS, '[2,"2","Heartbeat",{}]'),
    (Direction.TO_CP, '[4,"2","InternalError","busy",{}]'),
]


def test_21_capture_clean_is_exit_0_with_frames_checked(tmp_path: Path) -> None:
    make_capture(tmp_path / "c.db", CLEAN_21, subprotocol="ocpp2.1")
    result = runner.invoke(app, ["validate", "--db", str(tmp_path / "c.db")])
    assert result.exit_code == 0, result.output
    assert "checked 5 frames of 1 session (OCPP 2.1: 1), 1 CALLERROR without a schema" in result.stdout
    # The same frames as 2.0.1: the 2.1-only reset type is a violation there.
    make_capture(tmp_path / "d.db", CLEAN_21, subprotocol="ocpp2.0.1")
    result = runner.invoke(app, ["validate", "--db", str(tmp_path / "d.db"), "--json"])
    assert result.exit_code == 1
    assert [(v["action"], v["path"]) for v in json.loads(result.stdout)["violations"]] == [("Reset", "type")]


def test_21_capture_with_a_bogus_boot_is_exit_1_and_names_it(tmp_path: Path) -> None:
    """The issue's case: a 2.1 BootNotification of {"bogus":1} is a violation, not a skip."""
    frames = [(Direction.TO_CSMS, '[2,"1","BootNotification",{"bogus":1}]'), *CLEAN_21[1:]]
    make_capture(tmp_path / "c.db", frames, subprotocol="ocpp2.1")
    result = runner.invoke(app, ["validate", "--db", str(tmp_path / "c.db")])
    assert result.exit_code == 1, result.output
    assert "skipped" not in result.stdout
    assert "session 1 ALF-1 #1 charger BootNotification (payload): 'reason' is a required property" in (
        result.stdout
    )
    found = json.loads(runner.invoke(app, ["validate", "--db", str(tmp_path / "c.db"), "--json"]).stdout)
    assert {(v["seq"], v["side"], v["action"], v["message_kind"]) for v in found["violations"]} == {
        (1, "charger", "BootNotification", "request")
    }
    assert found["summary"]["frames_checked"] == 5 and found["summary"]["versions"] == {"2.1": 1}


@pytest.mark.parametrize("db", ["missing.db", "garbage.db"])
def test_bad_capture_is_exit_2(tmp_path: Path, db: str) -> None:
    (tmp_path / "garbage.db").write_bytes(b"x" * 4096)
    result = runner.invoke(app, ["validate", "--db", str(tmp_path / db)])
    assert result.exit_code == 2


STREAM = '{"id":1,"pending":0,"basetime":"2025-01-01T00:00:00Z","data":[{"t":0.5,"v":"1"}]}'


def test_21_send_and_callresulterror_are_checked_not_flagged(tmp_path: Path) -> None:
    """2.1's SEND (6) is checked against its action's schema, its CALLRESULTERROR (5) counted
    like a CALLERROR; in a 2.0.1 session neither is OCPP-J."""
    frames = [
        *CLEAN_21[:2],
        (Direction.TO_CSMS, f'[6,"s1","NotifyPeriodicEventStream",{STREAM}]'),
        (Direction.TO_CSMS, '[6,"s2","NotifyPeriodicEventStream",{"id":"one"}]'),
        (Direction.TO_CP, '[2,"c1","Reset",{"type":"Immediate"}]'),
        (Direction.TO_CSMS, '[5,"c1","InternalError","reset failed",{}]'),
        (Direction.TO_CSMS, '[6.0,"s3","NotifyPeriodicEventStream",{}]'),
    ]
    make_capture(tmp_path / "c.db", frames, subprotocol="ocpp2.1")
    result = runner.invoke(app, ["validate", "--db", str(tmp_path / "c.db"), "--json"])
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    found = {(v["seq"], v["action"], v["message_kind"], v["path"]) for v in data["violations"]}
    assert found == {
        (4, "NotifyPeriodicEventStream", "send", ""),  # pending, basetime, data required
        (4, "NotifyPeriodicEventStream", "send", "id"),  # not an integer
        (7, "?", "frame", ""),  # a float message type is no SEND
    }
    assert data["summary"]["frames_checked"] == 5 and data["summary"]["call_errors"] == 1
    make_capture(tmp_path / "d.db", frames[:3], subprotocol="ocpp2.0.1")
    result = runner.invoke(app, ["validate", "--db", str(tmp_path / "d.db"), "--json"])
    assert [v["message_kind"] for v in json.loads(result.stdout)["violations"]] == ["frame"]


@dataclass(frozen=True)
class S:
    """A session as the core reads it (SessionLike), without a store."""

    id: int
    subprotocol: str | None
    error: str | None = None
    charge_point_id: str = "CP"
    query: str | None = None
    auth_user: str | None = None
    started_at: str = ""
    ended_at: str | None = None
    close_code: int | None = None
    closed_by: str | None = None


@dataclass(frozen=True)
class F:
    """A frame as the core reads it (FrameLike)."""

    seq: int
    direction: Direction
    raw: str
    message_type: int | None
    action: str | None
    parse_error: str | None = None
    elapsed: float = 0.0
    unique_id: str | None = None
    raw_bytes: bytes | None = None


def frames_of(rows: list[tuple[Direction, str]]) -> list[F]:
    actions: dict[str, str] = {}
    out = []
    for seq, (direction, raw) in enumerate(rows, 1):
        data = json.loads(raw)
        if data[0] == 2:
            actions[data[1]] = data[2]
        out.append(F(seq, direction, raw, data[0], data[2] if data[0] == 2 else actions.get(data[1])))
    return out


def test_report_counts_and_exit_codes_pure() -> None:
    clean = frames_of(CLEAN)
    report = check_sessions(
        [
            (S(1, "ocpp1.6"), clean),
            (S(2, None, error="upstream refused: 503"), []),  # never opened: nothing to check
            (S(3, "ocpp2.1"), frames_of(CLEAN_21)),
        ]
    )
    assert (report.sessions, report.unopened, report.skipped) == (2, 1, [])
    assert (report.tally.frames, report.tally.checked, report.tally.call_errors) == (10, 9, 1)
    assert dict(report.versions) == {"1.6": 1, "2.1": 1}
    assert report.exit_code() == 0
    skipping = check_sessions([(S(1, "ocpp1.6"), clean), (S(2, "mqtt"), clean)])
    assert [(s.session_id, s.frames) for s in skipping.skipped] == [(2, 4)]
    assert skipping.exit_code() == 2 and skipping.exit_code(allow_skip=True) == 0
    assert check_sessions([(S(2, None, error="refused"), [])]).exit_code(allow_skip=True) == 2
    bad = frames_of([(Direction.TO_CSMS, '[2,"1","Heartbeat",{"x":1}]'), (Direction.TO_CP, '[3,"1",{}]')])
    found = check_sessions([(S(1, "ocpp2.1"), bad), (S(2, None), clean)])
    assert found.exit_code() == 1  # a violation outranks a skipped session
    assert [(f.seq, f.message_kind) for f in found.findings] == [(1, "request"), (2, "response")]
    with pytest.raises(ConfigError, match="unknown OCPP version"):
        check_sessions([(S(1, None), clean)], default_version="3.0")
