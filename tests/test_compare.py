"""compare, noise learning, schema differences in replays, the report command and the HTML page.

Pure tests build RunResults by hand. End-to-end tests capture a virtual Alfen charger's session
through the proxy against the reference CSMS on 127.0.0.1:0, then compare real backends: the
v1 and v2 profiles (which differ in known ways), and a backend with itself whose answers carry
a random value. The HTML report is rendered by a real headless Chromium.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from ocpp_replay.capture.proxy import ProxyServer
from ocpp_replay.cli.replay import register
from ocpp_replay.core.compare import compare_result, compare_sessions, learn_noise, noise_rules_toml
from ocpp_replay.core.diff import Difference, DiffKind, schema_changes
from ocpp_replay.core.results import NoiseField, RunResult, SessionResult
from ocpp_replay.core.rules import RuleSet, parse_rules
from ocpp_replay.csms import V2_BLOCKED_ID_TAG, ChargerSession, ReferenceCsms
from ocpp_replay.replay import load_run, run_replay, store_run
from ocpp_replay.report import html_report, junit_xml, report_dict
from ocpp_replay.simulate import run_fleet
from ocpp_replay.store import Store
from ocpp_replay.store.files import load_rules
from tests.ui_peers import chromium_or_skip

pytestmark = pytest.mark.timeout(60)

RULES = RuleSet.default()


# ----------------------------------------------------------------------------- pure: building runs


def _frame(seq: int, rec: int | None, direction: str, raw: str, action: str, side: str = "target") -> Any:
    from ocpp_replay.core.results import LiveFrame

    mtype = json.loads(raw)[0]
    uid = json.loads(raw)[1]
    return LiveFrame(
        seq, rec, "2026-01-01T00:00:00.000000Z", seq / 10, direction, mtype, uid, action, raw, None, side
    )


def _session(
    frames: list[Any], diffs: tuple[Difference, ...] = (), sid: int = 1, proto: str = "ocpp1.6"
) -> SessionResult:
    return SessionResult(sid, "CP-1", proto, None, None, diffs, {}, tuple(frames))


def _run(*sessions: SessionResult, target: str = "ws://x/ocpp") -> RunResult:
    return RunResult(target, "2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z", tuple(sessions))


def _answers(tx: int, status: str = "Accepted", interval: int = 300, extra: str | None = None) -> list[Any]:
    """A small 1.6 session as the live backend answered it."""
    boot: dict[str, Any] = {
        "currentTime": f"2026-01-01T00:00:0{tx % 10}Z",
        "interval": interval,
        "status": "Accepted",
    }
    if extra is not None:
        boot["nonce"] = extra
    return [
        _frame(1, 1, "to_csms", '[2,"1","BootNotification",{}]', "BootNotification"),
        _frame(2, 2, "to_cp", json.dumps([3, "1", boot]), "BootNotification"),
        _frame(3, 3, "to_csms", '[2,"2","StartTransaction",{}]', "StartTransaction"),
        _frame(
            4,
            4,
            "to_cp",
            json.dumps([3, "2", {"idTagInfo": {"status": status}, "transactionId": tx}]),
            "StartTransaction",
        ),
        _frame(
            5,
            5,
            "to_cp",
            json.dumps([2, f"u{tx}", "RemoteStopTransaction", {"transactionId": tx}]),
            "RemoteStopTransaction",
        ),
        _frame(6, 5, "to_csms", json.dumps([3, f"u{tx}", {"status": "Accepted"}]), "RemoteStopTransaction"),
    ]


def test_pairing_correlates_assigned_ids_and_finds_changes() -> None:
    base = _session(_answers(100))
    same = _session(_answers(555))  # another backend assigns other ids: no difference
    p = compare_sessions(base, same, RULES)
    assert p.findings == ()
    assert p.compared == {
        ("BootNotification", "response"): 1,
        ("StartTransaction", "response"): 1,
        ("RemoteStopTransaction", "request"): 1,
    }
    changed = _session(_answers(555, status="Blocked", interval=900))
    found = [
        (f.seq, f.action, str(f.message), f.change.kind, f.change.path)
        for f in compare_sessions(base, changed, RULES).findings
    ]
    assert found == [
        (2, "BootNotification", "response", DiffKind.CHANGED, "interval"),
        (4, "StartTransaction", "response", DiffKind.CHANGED, "idTagInfo.status"),
    ]


def test_pairing_of_missing_and_extra_messages() -> None:
    base = _session(_answers(100))
    frames = _answers(555)
    # the candidate never answered StartTransaction and never sent the remote stop, but sent a Reset
    cand = [
        frames[0],
        frames[1],
        frames[2],
        _frame(7, None, "to_cp", '[2,"r","Reset",{"type":"Soft"}]', "Reset"),
    ]
    found = {(f.seq, f.action, f.change.kind) for f in compare_sessions(base, _session(cand), RULES).findings}
    assert found == {
        (4, "StartTransaction", DiffKind.TIMEOUT),
        (5, "RemoteStopTransaction", DiffKind.MISSING_CALL),
        (None, "Reset", DiffKind.UNEXPECTED_CALL),
    }


def test_handshake_and_schema_differences_come_from_each_side() -> None:
    refused = Difference(1, "CP-1", None, None, DiffKind.CHANGED, "handshake.status", 101, 401)
    bad = Difference(
        1, "CP-1", 4, "StartTransaction", DiffKind.SCHEMA, "idTagInfo.status", None, "'X' is not one of"
    )
    base = _session(_answers(1), (bad,))
    cand = _session(_answers(2), (refused, bad))
    found = [
        (f.change.kind, f.change.path, f.change.expected, f.change.actual)
        for f in compare_sessions(base, cand, RULES).findings
    ]
    assert found == [
        (DiffKind.CHANGED, "handshake.status", 101, 401)
    ]  # the shared schema violation is not new
    new_bad = Difference(
        1, "CP-1", 2, "BootNotification", DiffKind.SCHEMA, "interval", None, "'x' is not of type 'integer'"
    )
    found = compare_sessions(base, _session(_answers(2), (new_bad,)), RULES).findings
    assert [(f.seq, f.change.kind, str(f.message)) for f in found] == [(2, DiffKind.SCHEMA, "response")]


def test_noise_is_learned_counted_and_not_reported() -> None:
    base = _run(_session(_answers(1, extra="a")))
    again = [_run(_session(_answers(2, extra="b")))]
    noise = learn_noise(base, again, RULES)
    assert [
        (n.version, n.action, n.message, n.path, n.baseline_diffs, n.baseline_compared) for n in noise
    ] == [("1.6", "BootNotification", "response", "nonce", 1, 1)]
    cand = _run(_session(_answers(3, extra="c", status="Blocked")), target="ws://cand/ocpp")
    result = compare_result(base, cand, RULES, again=again)
    assert (
        result.kind == "compare" and result.baseline == "ws://x/ocpp" and result.candidate == "ws://cand/ocpp"
    )
    assert [(d.side, d.action, d.path) for d in result.gating] == [
        ("compare", "StartTransaction", "idTagInfo.status")
    ]
    assert result.exit_code == 1
    (n,) = result.noise
    assert (n.candidate_diffs, n.candidate_compared, n.reported) == (1, 1, False)
    # both sides' frames are kept, labelled
    assert {f.side for f in result.sessions[0].frames} == {"baseline", "candidate"}
    doc = report_dict(result)
    assert doc["summary"]["diffs"] == 1 and doc["noise"][0]["path"] == "nonce"
    assert doc["sessions"][0]["vs_recording"] == {"baseline": [], "candidate": []}
    assert "compare" in ET.fromstring(junit_xml(result).split("\n", 1)[1]).find("testsuite").get("name")  # type: ignore[union-attr]


def test_threshold_reports_a_field_that_differs_much_more_against_the_candidate() -> None:
    quiet = NoiseField("1.6", "Heartbeat", "response", "x", baseline_diffs=1, baseline_compared=4)
    assert not quiet.reported
    assert NoiseField("1.6", "A", "response", "x", 1, 4, candidate_diffs=3, candidate_compared=4).reported
    assert not NoiseField("1.6", "A", "response", "x", 1, 4, candidate_diffs=2, candidate_compared=4).reported
    assert not NoiseField("1.6", "A", "response", "x", 2, 4, candidate_diffs=4, candidate_compared=4).reported
    # a field noisy in 1 of 4 baseline messages but different in all 4 candidate ones: reported
    base = _run(
        _session(_answers(1, extra="a"), sid=1),
        _session(_answers(1), sid=2),
        _session(_answers(1), sid=3),
        _session(_answers(1), sid=4),
    )
    again = [
        _run(
            _session(_answers(2, extra="b"), sid=1),
            _session(_answers(2), sid=2),
            _session(_answers(2), sid=3),
            _session(_answers(2), sid=4),
        )
    ]
    cand = _run(*(_session(_answers(3, extra="z"), sid=i) for i in range(1, 5)))
    result = compare_result(base, cand, RULES, again=again)
    (n,) = result.noise
    assert (n.baseline_diffs, n.baseline_compared, n.candidate_diffs, n.candidate_compared) == (1, 4, 4, 4)
    assert n.reported and len(result.gating) == 4


def test_noise_rules_round_trip_and_refuse_what_cannot_be_a_rule() -> None:
    noise = [
        NoiseField("1.6", "DataTransfer", "response", "data", 2, 2),
        NoiseField("2.0.1", "GetVariables", "request", "getVariableData[0].variable.name", 1, 1),
        NoiseField("1.6", "Heartbeat", "response", "", 1, 1),  # a timeout: no path rule silences it
        NoiseField("1.6", 'Weird\x7f\n"]', "response", 'a"b\\c', 1, 1),
        NoiseField("1.6", "Authorize", "response", "idTagInfo.status", 1, 4, 4, 4),  # still reported
    ]
    text = noise_rules_toml(noise, runs=2)
    rules = parse_rules(text)
    from ocpp_replay.core.correlate import Message

    assert "data" in [r.text for r in rules.for_message("1.6", "DataTransfer", Message.RESPONSE)]
    assert "getVariableData[0].variable.name" in [
        r.text for r in rules.for_message("2.0.1", "GetVariables", Message.REQUEST)
    ]
    assert "idTagInfo.status" not in [r.text for r in rules.for_message("1.6", "Authorize", Message.RESPONSE)]
    assert "still reported" in text and "no path rule" in text


def test_schema_changes() -> None:
    assert schema_changes("1.6", "Authorize", {"idTagInfo": {"status": "Accepted"}}, response=True) == []
    (c,) = schema_changes("1.6", "Authorize", {"idTagInfo": {"status": "Maybe"}}, response=True)
    assert (c.kind, c.path, c.expected) == (DiffKind.SCHEMA, "idTagInfo.status", None)
    assert "Maybe" in c.actual
    assert schema_changes("1.6", "VendorThing", {"x": 1}, response=True) == []  # cannot be judged
    assert [x.actual for x in schema_changes("1.6", "VendorThing", {}, response=False)] == ["unknown action"]
    assert schema_changes(None, "Authorize", {}, response=True) == []


def test_html_escapes_traffic_and_is_self_contained() -> None:
    evil = "<script>alert(1)</script>"
    d = Difference(1, evil, 2, evil, DiffKind.CHANGED, f"a.{evil}", evil, {"x": evil})
    frame = _frame(1, 2, "to_cp", json.dumps([3, "1", {"x": evil}]), evil)
    s = SessionResult(1, evil, "ocpp1.6", None, None, (d,), {evil: 1}, (frame,))
    page = html_report(_run(s, target=f"ws://{evil}"))
    assert "<script" not in page.lower().replace("&lt;script", "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "http://" not in page and "https://" not in page and "<link" not in page and " src=" not in page


def test_html_shows_control_characters_and_bidi_overrides_escaped() -> None:
    """An RLO in a charge point id would reverse the rest of its line on the page; ESC and BEL
    are invisible. Each is shown as an escape, as in the terminal."""
    evil = "CP\u202eevil\x1b[31m\x07\x9b"
    d = Difference(1, evil, 2, evil, DiffKind.CHANGED, "a", evil, "x")
    frame = _frame(1, 2, "to_cp", json.dumps([3, "1", {"x": 1}], ensure_ascii=False), evil)
    frame = replace(frame, raw=f'[3,"1",{{"x":"{evil}"}}]')
    s = SessionResult(1, evil, "ocpp1.6", None, None, (d,), {evil: 1}, (frame,))
    page = html_report(_run(s))
    assert not any(c in page for c in ("\u202e", "\x1b", "\x07", "\x9b"))
    assert "CP\\u202eevil\\x1b[31m\\x07\\x9b" in page


# ----------------------------------------------------------------------------- end to end

SCENARIO = f"""
name = "blocked-card"
[[cycle]]
do = "plug"
[[cycle]]
do = "authorize"
id_tag = "{V2_BLOCKED_ID_TAG}"
[[cycle]]
do = "start"
[[cycle]]
do = "charge"
minutes = 2
[[cycle]]
do = "data-transfer"
vendor_id = "Alfen BV"
message_id = "Report"
[[cycle]]
do = "stop"
[[cycle]]
do = "unplug"
"""


async def _capture(db: Path, scenario: Path) -> None:
    async with ReferenceCsms("v1") as csms, ProxyServer(csms.url, db) as proxy:
        result = await run_fleet(proxy.url, chargers=1, scenario=str(scenario), time_scale=0.002, seed=1)
    assert not result.problems, result.problems


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("capcmp")
    scenario = d / "blocked.toml"
    scenario.write_text(SCENARIO)
    db = d / "capture.db"
    asyncio.run(asyncio.wait_for(_capture(db, scenario), 20))
    return db


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "capture.db"
    with Store.open(src) as s:
        s.db.execute(f"VACUUM INTO '{dst}'")
    return dst


async def _invoke(args: list[str]) -> Any:
    app = typer.Typer()
    register(app)
    return await asyncio.to_thread(CliRunner().invoke, app, args, catch_exceptions=False)


FAST = ["--max-gap", "0.05", "--timeout", "2", "--grace", "0.3"]


class NoisyCsms(ReferenceCsms):
    """The reference CSMS, whose DataTransfer answers carry a random value in ``data``."""

    def __init__(self) -> None:
        super().__init__("v1")
        opened = self.backend.open_session

        def open_session(charger_id: str, version: str) -> ChargerSession:
            session = opened(charger_id, version)
            inner = session.handlers["DataTransfer"]

            def data_transfer(s: ChargerSession, payload: dict[str, Any], now: datetime) -> Any:
                answer, commands = inner(s, payload, now)
                return {**answer, "data": uuid.uuid4().hex}, commands

            session.handlers = {**session.handlers, "DataTransfer": data_transfer}
            return session

        self.backend.open_session = open_session  # type: ignore[method-assign]


class BadCsms(ReferenceCsms):
    """The reference CSMS, answering StatusNotification with a key its schema does not allow."""

    def __init__(self) -> None:
        super().__init__("v1")
        opened = self.backend.open_session

        def open_session(charger_id: str, version: str) -> ChargerSession:
            session = opened(charger_id, version)
            session.handlers = {
                **session.handlers,
                "StatusNotification": lambda s, p, now: ({"ok": True}, []),
            }
            return session

        self.backend.open_session = open_session  # type: ignore[method-assign]


def _render(page: Path, tmp_path: Path, *extra: str) -> str:
    chromium = chromium_or_skip()
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *extra,
        page.resolve().as_uri(),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=45, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


EXPECTED_V1_V2 = [
    ("BootNotification", "changed", "interval", 300, 900),
    ("Authorize", "changed", "idTagInfo.status", "Accepted", "Blocked"),
    ("StartTransaction", "changed", "idTagInfo.status", "Accepted", "Blocked"),
    ("StopTransaction", "changed", "idTagInfo.status", "Accepted", "Blocked"),
]


async def test_compare_v1_v2_finds_exactly_the_profile_differences(capture: Path, tmp_path: Path) -> None:
    db = _copy(capture, tmp_path)
    out = {n: tmp_path / n for n in ("r.json", "r.xml", "r.html")}
    async with ReferenceCsms("v1") as v1, ReferenceCsms("v2") as v2:
        res = await _invoke(
            [
                *["compare", "--db", str(db), "--baseline", v1.url, "--candidate", v2.url, *FAST],
                *["--report", str(out["r.json"]), "--junit", str(out["r.xml"]), "--html", str(out["r.html"])],
            ]
        )
    assert res.exit_code == 1, res.output
    doc = json.loads(out["r.json"].read_text())
    (sess,) = doc["sessions"]
    got = [(d["action"], d["kind"], d["path"], d["expected"], d["actual"]) for d in sess["diffs"]]
    assert got == EXPECTED_V1_V2
    assert doc["summary"]["vs_recording"] == {"baseline": 0, "candidate": 4}
    assert doc["noise"] == []  # the reference CSMS answers the same way twice
    assert "4 differences of the candidate from the baseline" in " ".join(res.stdout.split())
    assert len(ET.parse(out["r.xml"]).getroot().findall(".//failure")) == 1
    # stored: the run, the differences of each side, the frames of each side
    with Store.open(db) as store:
        (run_id, kind, base, cand, diffs, code) = store.db.execute(
            "SELECT id, kind, baseline, candidate, diffs, exit_code FROM runs"
        ).fetchone()
        assert (kind, base, cand, diffs, code) == ("compare", v1.url, v2.url, 4, 1)
        sides = dict(store.db.execute("SELECT side, count(*) FROM run_diffs GROUP BY side").fetchall())
        assert sides == {"compare": 4, "candidate": 4}
        frames = dict(store.db.execute("SELECT side, count(*) FROM run_frames GROUP BY side").fetchall())
        assert set(frames) == {"baseline", "candidate"} and frames["baseline"] == frames["candidate"] > 20
        rebuilt = load_run(store, run_id)
    assert report_dict(rebuilt) == {**doc, "run": {**doc["run"], "id": run_id}}
    # the report command renders the stored run the same way
    res = await _invoke(["report", str(run_id), "--db", str(db), "--json", "-"])
    assert res.exit_code == 0 and json.loads(res.stdout)["sessions"] == doc["sessions"]
    html2 = tmp_path / "again.html"
    res = await _invoke(["report", str(run_id), "--db", str(db), "--html", str(html2)])
    assert res.exit_code == 0 and "Candidate against baseline, by action" in res.stdout
    assert html2.read_text() == out["r.html"].read_text()


async def test_the_html_report_renders_in_headless_chromium(capture: Path, tmp_path: Path) -> None:
    """The page of a v1/v2 compare in a real browser: it shows the planted difference. Skips, with
    the reason, where Chromium is not installed; .ci/run installs it and forbids the skip."""
    chromium_or_skip()  # before the compare, not after
    db = _copy(capture, tmp_path)
    html2 = tmp_path / "r.html"
    async with ReferenceCsms("v1") as v1, ReferenceCsms("v2") as v2:
        res = await _invoke(
            [
                "compare",
                "--db",
                str(db),
                "--baseline",
                v1.url,
                "--candidate",
                v2.url,
                *FAST,
                "--html",
                str(html2),
            ]
        )
    assert res.exit_code == 1, res.output
    dom = await asyncio.to_thread(_render, html2, tmp_path, "--dump-dom")
    assert "FAIL · 4 differences from the baseline" in dom
    assert '<td class="act"><pre>"Blocked"</pre></td>' in dom
    assert "idTagInfo.status" in dom and "GetConfiguration" in dom and "RemoteStopTransaction" in dom
    shot = tmp_path / "report.png"
    await asyncio.to_thread(_render, html2, tmp_path, f"--screenshot={shot}", "--window-size=1280,1800")
    assert shot.stat().st_size > 10_000


async def test_same_backend_with_a_random_field_is_noise(capture: Path, tmp_path: Path) -> None:
    db = _copy(capture, tmp_path)
    rules_file = tmp_path / "noise.toml"
    async with NoisyCsms() as csms:
        common = ["compare", "--db", str(db), "--baseline", csms.url, "--candidate", csms.url, *FAST]
        blind = await _invoke([*common, "--noise-runs", "0", "--report", "-"])
        learned = await _invoke([*common, "--save-rules", str(rules_file), "--report", "-"])
        again = await _invoke([*common, "--noise-runs", "0", "--rules", str(rules_file), "--report", "-"])
    # Without noise learning the random field is a difference ...
    assert blind.exit_code == 1, blind.output
    blind_doc = json.loads(blind.stdout)
    assert [(d["action"], d["path"]) for d in blind_doc["sessions"][0]["diffs"]] == [("DataTransfer", "data")]
    # ... with it, 0 differences and the field listed as noise.
    assert learned.exit_code == 0, learned.output
    doc = json.loads(learned.stdout)
    assert doc["summary"]["diffs"] == 0
    assert doc["noise"] == [
        {
            "ocpp": "1.6",
            "action": "DataTransfer",
            "message": "response",
            "path": "data",
            "baseline_diffs": 1,
            "baseline_compared": 1,
            "candidate_diffs": 1,
            "candidate_compared": 1,
            "reported": False,
        }
    ]
    # each side still differs from the recording (v1 answered without data)
    assert doc["summary"]["vs_recording"] == {"baseline": 1, "candidate": 1}
    # The saved rules load back and silence the field everywhere.
    from ocpp_replay.core.correlate import Message

    loaded = load_rules(rules_file)
    assert "data" in [r.text for r in loaded.for_message("1.6", "DataTransfer", Message.RESPONSE)]
    assert again.exit_code == 0, again.output
    again_doc = json.loads(again.stdout)
    assert again_doc["summary"]["diffs"] == 0 and again_doc["summary"]["vs_recording"] == {
        "baseline": 0,
        "candidate": 0,
    }
    with Store.open(db) as store:
        assert [r[0] for r in store.db.execute("SELECT exit_code FROM runs ORDER BY id")] == [1, 0, 0]


async def test_replay_reports_schema_violations_of_the_backend(capture: Path, tmp_path: Path) -> None:
    db = _copy(capture, tmp_path)
    async with ReferenceCsms("v1") as good:
        with Store.open(db) as store:
            clean = await run_replay(store, good.url, max_gap=0.05, answer_timeout=2, grace=0.3)
    assert clean.differences == ()
    async with BadCsms() as bad:
        with Store.open(db) as store:
            result = await run_replay(store, bad.url, max_gap=0.05, answer_timeout=2, grace=0.3)
            result = store_run(store, result)
    kinds = {(d.kind, d.action, d.path) for d in result.differences}
    assert kinds == {
        (DiffKind.ADDED, "StatusNotification", "ok"),
        (DiffKind.SCHEMA, "StatusNotification", ""),
    }
    schema = [d for d in result.differences if d.kind is DiffKind.SCHEMA]
    assert len(schema) == 6 and all("'ok' was unexpected" in d.actual for d in schema)
    assert all(d.seq is not None for d in schema)
    res = await _invoke(["report", str(result.run_id), "--db", str(db), "--json", "-"])
    assert res.exit_code == 0
    kinds_stored = {d["kind"] for s in json.loads(res.stdout)["sessions"] for d in s["diffs"]}
    assert kinds_stored == {"added", "schema"}


async def test_report_of_unknown_run_and_bad_compare_options(capture: Path, tmp_path: Path) -> None:
    db = _copy(capture, tmp_path)
    res = await _invoke(["report", "42", "--db", str(db)])
    assert res.exit_code == 2 and res.stderr.startswith("error: no run 42")
    res = await _invoke(
        [
            "compare",
            "--db",
            str(db),
            "--baseline",
            "ws://127.0.0.1:9",
            "--candidate",
            "ws://x",
            "--noise-runs",
            "-1",
        ]
    )
    assert res.exit_code == 2 and "--noise-runs" in res.stderr
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    async with ReferenceCsms("v1") as v1:
        res = await _invoke(
            [
                "compare",
                "--db",
                str(db),
                "--baseline",
                v1.url,
                "--candidate",
                f"ws://127.0.0.1:{port}/ocpp",
                *FAST,
            ]
        )
    assert res.exit_code == 2 and "unreachable" in res.stderr and "Traceback" not in res.stderr


# ----------------------------------------------------------------------------- end to end, OCPP 2.0.1


async def _capture201(db: Path) -> None:
    async with ReferenceCsms("v1") as csms, ProxyServer(csms.url, db) as proxy:
        # The virtual chargers tap DEFAULT_ID_TAGS in turn: the third charger taps the card
        # that the v2 profile blocks.
        result = await run_fleet(
            proxy.url, chargers=3, version="2.0.1", scenario="session", time_scale=0.002, seed=1
        )
    assert not result.problems, result.problems


@pytest.fixture(scope="module")
def capture201(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("capcmp201") / "capture.db"
    asyncio.run(asyncio.wait_for(_capture201(db), 30))
    return db


async def test_compare_v1_v2_on_ocpp201_finds_exactly_the_profile_differences(
    capture201: Path, tmp_path: Path
) -> None:
    db = _copy(capture201, tmp_path)
    with Store.open(db) as store:
        sessions = {s.charge_point_id: s for s in store.sessions()}
        assert set(sessions) == {"ALF-0001", "ALF-0002", "ALF-0003"}
        assert {s.subprotocol for s in sessions.values()} == {"ocpp2.0.1"}
        blocked_sid = sessions["ALF-0003"].id
        tapped = {
            sid: any(V2_BLOCKED_ID_TAG in (f.raw or "") for f in store.frames(sid))
            for sid in (s.id for s in sessions.values())
        }
    assert tapped == {s.id: s.id == blocked_sid for s in sessions.values()}  # the blocked card was used
    report = tmp_path / "r.json"
    async with ReferenceCsms("v1") as v1, ReferenceCsms("v2") as v2:
        res = await _invoke(
            [
                *["compare", "--db", str(db), "--baseline", v1.url, "--candidate", v2.url, *FAST],
                *["--report", str(report)],
            ]
        )
        same = await _invoke(
            ["compare", "--db", str(db), "--baseline", v1.url, "--candidate", v1.url, *FAST, "--report", "-"]
        )
    assert res.exit_code == 1, res.output
    doc = json.loads(report.read_text())
    got = {
        s["charge_point_id"]: [
            (d["action"], d["kind"], d["path"], d["expected"], d["actual"]) for d in s["diffs"]
        ]
        for s in doc["sessions"]
    }
    interval = ("BootNotification", "changed", "interval", 300, 900)
    blocked = ("changed", "idTokenInfo.status", "Accepted", "Blocked")
    # The blocked card: Authorize, and the TransactionEvents that carry the idToken (Started, Ended).
    assert got == {
        "ALF-0001": [interval],
        "ALF-0002": [interval],
        "ALF-0003": [
            interval,
            ("Authorize", *blocked),
            ("TransactionEvent", *blocked),
            ("TransactionEvent", *blocked),
        ],
    }
    blocked_events = next(d for d in doc["sessions"] if d["charge_point_id"] == "ALF-0003")["diffs"][2:]
    assert blocked_events[0]["seq"] < blocked_events[1]["seq"]
    # 2.0.1 transaction ids are the charger's: both backends agree with the recording except v2's changes
    assert doc["summary"]["vs_recording"] == {"baseline": 0, "candidate": 6}
    assert doc["summary"]["diffs"] == 6 and doc["noise"] == []
    # the same backend on both sides: nothing differs
    assert same.exit_code == 0, same.output
    same_doc = json.loads(same.stdout)
    assert same_doc["summary"]["diffs"] == 0
    assert same_doc["summary"]["vs_recording"] == {"baseline": 0, "candidate": 0}
    assert same_doc["noise"] == []
