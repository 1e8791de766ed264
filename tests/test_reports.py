"""The report files of a run made from hostile traffic: every output escapes what the terminal does.

A capture whose charge point id, action names and payloads carry bidi overrides (U+202E), C1
controls and separators is replayed through the real command against a real websocket backend
on 127.0.0.1 that answers with more of the same; the JUnit, JSON and HTML files must show every
invisible character as an escape, stay well-formed and still mean the same text.
"""

from __future__ import annotations

import asyncio
import json
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner
from websockets.asyncio.server import ServerConnection, serve

from ocpp_replay.cli.replay import register
from ocpp_replay.core.frames import Direction
from ocpp_replay.core.text import escape_json, toml_string
from ocpp_replay.store import CaptureWriter

pytestmark = pytest.mark.timeout(60)

RLO = "\u202e"
CP = f"CP-{RLO}exe.gnp"  # shows as "CP-png.exe" where bidi overrides are honoured
EVIL = f"ok{RLO}gnp.exe\u0085\u009b31m\u2028"
T0 = 1_764_000_000.0


def hostile_capture(path: Path) -> Path:
    writer = CaptureWriter(path)
    sid = writer.open_session(T0, charge_point_id=CP, path=f"/ocpp/{CP}", subprotocol="ocpp1.6")
    frames = [
        (Direction.TO_CSMS, json.dumps([2, "1", "DataTransfer", {"vendorId": f"V{RLO}X", "data": EVIL}])),
        (Direction.TO_CP, json.dumps([3, "1", {"status": "Accepted", "data": f"fine{RLO}"}])),
        (Direction.TO_CSMS, json.dumps([2, "2", f"Heart{RLO}beat", {}])),
        (Direction.TO_CP, json.dumps([3, "2", {"currentTime": "2026-01-01T00:00:00Z"}])),
    ]
    for seq, (direction, raw) in enumerate(frames, 1):
        writer.frame(sid, seq, T0 + seq * 0.01, seq * 0.01, direction, raw)
    writer.close_session(sid, T0 + 1, close_code=1000, closed_by="cp", frames=len(frames))
    writer.close()
    return path


@asynccontextmanager
async def hostile_backend() -> AsyncIterator[str]:
    """Answers every CALL with a payload full of bidi overrides and C1 controls."""

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            frame = json.loads(message)
            if frame[0] == 2:
                await ws.send(json.dumps([3, frame[1], {"status": f"Re{RLO}jected", "data": EVIL}]))

    async with serve(handler, "127.0.0.1", 0, subprotocols=["ocpp1.6"]) as server:  # type: ignore[list-item]
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ocpp"


def _cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def _invisible(text: str) -> set[str]:
    return {c for c in text if not c.isprintable() and c != "\n"}


async def test_hostile_traffic_through_junit_json_and_html(tmp_path: Path) -> None:
    db = hostile_capture(tmp_path / "hostile.db")
    junit, report, html = tmp_path / "j.xml", tmp_path / "r.json", tmp_path / "r.html"
    async with hostile_backend() as url:
        args = ["replay", "--db", str(db), "--target", url, "--timeout", "2", "--grace", "0.1"]
        args += ["--junit", str(junit), "--report", str(report), "--html", str(html)]
        res: Any = await asyncio.to_thread(CliRunner().invoke, _cli(), args, catch_exceptions=False)
    assert res.exit_code == 1, (res.stdout, res.stderr)

    # JUnit: well-formed, nothing invisible in the file, the names and failure text escaped.
    text = junit.read_text(encoding="utf-8")
    assert _invisible(text) == set()
    root = ET.fromstring(text)
    (case,) = root.iter("testcase")
    assert case.get("classname") == "ocpp-replay.CP-\\u202eexe.gnp"
    assert case.get("name") == "session 1 (CP-\\u202eexe.gnp)"
    failure = case.find("failure")
    assert failure is not None and failure.text is not None
    assert "Heart\\u202ebeat" in failure.text and "Re\\u202ejected" in failure.text
    assert "\\x85" in failure.text and "\\u2028" in failure.text
    assert len(failure.text.splitlines()) == len(json.loads(report.read_text())["sessions"][0]["diffs"])

    # JSON: nothing invisible in the file, but it decodes to exactly the traffic's text.
    raw = report.read_text(encoding="utf-8")
    assert _invisible(raw) == set() and "\\u202e" in raw
    doc = json.loads(raw)
    (session,) = doc["sessions"]
    assert session["charge_point_id"] == CP
    actual = {(d["action"], d["path"]): d["actual"] for d in session["diffs"]}
    assert actual[("DataTransfer", "data")] == EVIL
    assert "Re\\u202ejected" in str(actual[("DataTransfer", "status")])  # a schema violation, repr
    assert any(d["action"] == f"Heart{RLO}beat" for d in session["diffs"])

    # HTML: as before, nothing invisible.
    assert _invisible(html.read_text(encoding="utf-8")) == set()


# ----------------------------------------------------------------------------- the escaping helpers

_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@given(value=_values, indent=st.sampled_from([None, 2]))
def test_escape_json_is_printable_and_means_the_same(value: Any, indent: int | None) -> None:
    text = escape_json(json.dumps(value, ensure_ascii=False, indent=indent))
    assert _invisible(text) == set()
    assert json.loads(text) == value


@given(text=st.text(st.characters(exclude_categories=["Cs"])))
def test_toml_string_is_printable_and_means_the_same(text: str) -> None:
    written = toml_string(text)
    assert _invisible(written) == set()
    assert tomllib.loads(f"a = {written}\n")["a"] == text


def test_toml_string_of_a_lone_surrogate_is_a_replacement_character() -> None:
    assert tomllib.loads(f"a = {toml_string('x' + chr(0xD800))}\n")["a"] == "x\ufffd"


# ----------------------------------------------------------------------------- one overwrite rule


def _stored_run(db: Path) -> int:
    from ocpp_replay.core.diff import Difference, DiffKind
    from ocpp_replay.core.results import RunResult, SessionResult
    from ocpp_replay.replay import store_run
    from ocpp_replay.store import Store

    hostile_capture(db)
    d = Difference(1, CP, 2, "DataTransfer", DiffKind.CHANGED, "status", "Accepted", "Rejected")
    s = SessionResult(1, CP, "ocpp1.6", None, None, (d,), {"DataTransfer": 1})
    result = RunResult("ws://t/ocpp", "2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z", (s,))
    with Store.open(db) as store:
        run_id = store_run(store, result).run_id
    assert run_id is not None
    return run_id


def _run(*args: str | Path) -> Any:
    return CliRunner().invoke(_cli(), [str(a) for a in args], catch_exceptions=False)


def test_reports_refuse_to_overwrite_without_force(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    run_id = _stored_run(db)
    files = {"--report": tmp_path / "r.json", "--junit": tmp_path / "j.xml", "--html": tmp_path / "r.html"}
    for option, path in files.items():
        path.write_text("mine\n")
        res = _run("report", str(run_id), "--db", db, option, path)
        assert res.exit_code == 2 and res.stderr.startswith(f"error: {option}: {path} exists;"), res.stderr
        assert "--force" in res.stderr and path.read_text() == "mine\n"
        res = _run("report", str(run_id), "--db", db, option, path, "--force")
        assert res.exit_code == 0, res.stderr
        assert path.read_text() != "mine\n"
    # A replay refuses before it connects anywhere (nothing listens on port 9) or stores a run.
    for option in ("--report", "--junit", "--html"):
        path = files[option]
        res = _run("replay", "--db", db, "--target", "ws://127.0.0.1:9/ocpp", option, path)
        assert res.exit_code == 2 and f"{path} exists" in res.stderr, res.stderr
    res = _run(
        "compare", "--db", db, "--baseline", "ws://127.0.0.1:9/a", "--candidate", "ws://127.0.0.1:9/b",
        "--save-rules", files["--report"],
    )  # fmt: skip
    assert res.exit_code == 2 and "--save-rules" in res.stderr and "exists" in res.stderr
    from ocpp_replay.replay import list_runs
    from ocpp_replay.store import Store

    with Store.open(db) as store:
        assert [r["id"] for r in list_runs(store)] == [run_id]


# ----------------------------------------------------------------------------- identical differences grouped


def _fleet_result() -> Any:
    """Eight chargers whose BootNotification interval went 300 -> 900, one that also differs
    on its own, and the same interval as a string in another (a different group)."""
    from ocpp_replay.core.diff import Difference, DiffKind
    from ocpp_replay.core.results import RunResult, SessionResult

    sessions = []
    for sid in range(1, 9):
        cp = f"ALF-{sid:04d}"
        diffs = [Difference(sid, cp, 2, "BootNotification", DiffKind.CHANGED, "interval", 300, 900)]
        if sid == 3:
            diffs.append(
                Difference(
                    sid, cp, 8, "Authorize", DiffKind.CHANGED, "idTagInfo.status", "Accepted", "Blocked"
                )
            )
            diffs.append(
                Difference(
                    sid, cp, 12, "Authorize", DiffKind.CHANGED, "idTagInfo.status", "Accepted", "Blocked"
                )
            )
        sessions.append(SessionResult(sid, cp, "ocpp1.6", None, None, tuple(diffs), {"BootNotification": 1}))
    odd = Difference(9, "ALF-0009", 2, "BootNotification", DiffKind.CHANGED, "interval", 300, "900")
    sessions.append(SessionResult(9, "ALF-0009", "ocpp1.6", None, None, (odd,), {"BootNotification": 1}))
    return RunResult("ws://staging/ocpp", "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", tuple(sessions))


def test_identical_differences_are_one_group_in_every_report() -> None:
    from rich.console import Console

    from ocpp_replay.report import html_report, junit_xml, report_dict
    from ocpp_replay.report.groups import group_differences, session_ranges
    from ocpp_replay.report.terminal import differences_table

    result = _fleet_result()
    groups = group_differences(result.gating)
    assert [(g.action, g.count, g.sessions) for g in groups] == [
        ("BootNotification", 8, (1, 2, 3, 4, 5, 6, 7, 8)),
        ("Authorize", 2, (3,)),
        ("BootNotification", 1, (9,)),  # "900" is not 900
    ]
    assert session_ranges([1, 2, 3, 4, 7, 9, 10]) == "1-4, 7, 9-10"
    assert session_ranges(range(0, 60, 2), limit=3) == "0, 2, 4, … (30 in all)"

    # JSON: the flat list stays, "groups" beside it.
    doc = report_dict(result)
    assert sum(len(s["diffs"]) for s in doc["sessions"]) == 11
    assert doc["groups"][0] == {
        "action": "BootNotification",
        "kind": "changed",
        "path": "interval",
        "expected": 300,
        "actual": 900,
        "count": 8,
        "sessions": [1, 2, 3, 4, 5, 6, 7, 8],
        "charge_points": [f"ALF-{i:04d}" for i in range(1, 9)],
    }
    assert [g["count"] for g in doc["groups"]] == [8, 2, 1]

    # Terminal: one row per group.
    console = Console(record=True, width=250, file=__import__("io").StringIO())
    console.print(differences_table(result.gating))
    out = console.export_text()
    assert "Differences (11, identical ones grouped: 3 rows)" in out
    rows = [line for line in out.splitlines() if "BootNotification" in line]
    assert len(rows) == 2
    assert "│     8 │ 1-8 " in rows[0] and "8 charge points" in rows[0] and "900" in rows[0]
    assert '"900"' in rows[1] and "9 seq 2" in rows[1]

    # JUnit: the suite's system-out has the groups; a session's failure groups its own.
    root = ET.fromstring(junit_xml(result))
    system_out = root.find("testsuite/system-out")
    assert system_out is not None and system_out.text is not None
    lines = system_out.text.splitlines()
    assert lines[0] == "11 differences in 3 groups:"
    assert lines[1] == "8x sessions 1-8 BootNotification changed interval: expected 300, actual 900"
    case3 = next(c for c in root.iter("testcase") if c.get("name") == "session 3 (ALF-0003)")
    failure = case3.find("failure")
    assert failure is not None and failure.get("message") == "3 differences: changed"
    assert (failure.text or "").splitlines() == [
        'seq 2 BootNotification changed interval: expected 300, actual 900',
        '2x seq 8, 12 Authorize changed idTagInfo.status: expected "Accepted", actual "Blocked"',
    ]  # fmt: skip

    # HTML: the differences table has one row per group.
    page = html_report(result)
    table = page.split("<h2 id='differences'>")[1].split("</table>")[0]
    assert table.count("<tr>") == 1 + 3  # the header and three groups
    assert "<td class='n'>8</td><td>1-8</td>" in table
    assert "11 differences; identical ones" in page
