"""Diffing under rules, the TOML rules file, and the report renderers (pure)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from rich.console import Console

from ocpp_replay.core.correlate import Message
from ocpp_replay.core.diff import (
    Change,
    Difference,
    DiffKind,
    compare_answers,
    compare_calls,
    compare_payloads,
)
from ocpp_replay.core.frames import Call, CallError, CallResult
from ocpp_replay.core.paths import parse_path
from ocpp_replay.core.results import LiveFrame, RunResult, SessionResult, Timing, percentile
from ocpp_replay.core.rules import BUILTIN_RULES, Mode, PathRule, RuleSet, parse_rules
from ocpp_replay.errors import ConfigError
from ocpp_replay.report import junit_xml, report_dict, write_json
from ocpp_replay.report.terminal import differences_table, summary_line, summary_table
from ocpp_replay.store.files import load_rules

RULES = RuleSet.default()


def rules16(action: str, message: Message = Message.RESPONSE) -> tuple[PathRule, ...]:
    return RULES.for_message("1.6", action, message, RULES.correlator("1.6"))


def test_equal_is_fast_and_empty() -> None:
    assert compare_payloads({"a": 1, "b": [1, 2]}, {"b": [1, 2], "a": 1}) == []


def test_kinds_and_paths() -> None:
    exp = {"idTagInfo": {"status": "Accepted", "parentIdTag": "P"}, "list": [1, 2], "n": 1}
    act = {"idTagInfo": {"status": "Blocked"}, "list": [1, 2, 3], "n": "1", "extra": True}
    changes = compare_payloads(exp, act)
    assert changes == sorted(
        [
            Change(DiffKind.CHANGED, "idTagInfo.status", "Accepted", "Blocked"),
            Change(DiffKind.REMOVED, "idTagInfo.parentIdTag", "P", None),
            Change(DiffKind.ADDED, "list[2]", None, 3),
            Change(DiffKind.TYPE_CHANGED, "n", 1, "1"),
            Change(DiffKind.ADDED, "extra", None, True),
        ],
        key=lambda c: c.path,
    )


def test_list_item_only_on_one_side_has_no_value_on_the_other() -> None:
    """An item removed from (or added to) a list: the other side's value is null, not the item
    that moved into its index."""
    assert compare_payloads({"a": [1, 2, 3]}, {"a": [1, 3]}) == [Change(DiffKind.REMOVED, "a[1]", 2, None)]
    assert compare_payloads({"a": [1, 3]}, {"a": [1, 2, 3]}) == [Change(DiffKind.ADDED, "a[1]", None, 2)]


def test_an_ignored_list_item_does_not_shift_the_others() -> None:
    """Ignoring meterValue[0] must not make meterValue[2] be reported as meterValue[1]."""
    ignore_first = (PathRule(parse_path("list[0]"), Mode.IGNORE),)
    assert compare_payloads({"list": ["x", "a", "b"]}, {"list": ["y", "a", "c"]}, ignore_first) == [
        Change(DiffKind.CHANGED, "list[2]", "b", "c")
    ]
    # present on one side only: still ignored
    assert compare_payloads({"list": ["x"]}, {"list": []}, ignore_first) == []
    assert (
        compare_payloads({"list": [1, 2]}, {"list": [3]}, (PathRule(parse_path("list[*]"), Mode.IGNORE),))
        == []
    )
    assert compare_payloads({"a": 1}, {"b": 2}, (PathRule(parse_path(""), Mode.IGNORE),)) == []
    ignore_ts = (PathRule(parse_path("mv[*].ts"), Mode.IGNORE),)
    assert compare_payloads({"mv": [{"ts": 1, "v": 1}]}, {"mv": [{"v": 2}]}, ignore_ts) == [
        Change(DiffKind.CHANGED, "mv[0].v", 1, 2)
    ]


def test_strict_types_in_fast_path() -> None:
    """1 == True == 1.0 in Python; not in JSON."""
    assert compare_payloads({"a": 1}, {"a": True})[0].kind is DiffKind.TYPE_CHANGED
    assert compare_payloads({"a": 1}, {"a": 1.0})[0].kind is DiffKind.TYPE_CHANGED


def test_builtin_noise_rules_16() -> None:
    exp = {"currentTime": "2026-01-01T00:00:00Z", "interval": 300, "status": "Accepted"}
    act = {"currentTime": "2027-05-05T10:00:00.123Z", "interval": 300, "status": "Accepted"}
    assert compare_payloads(exp, act, rules16("BootNotification")) == []
    # presence: a missing currentTime, or one of another type, is still a difference
    assert compare_payloads(exp, {"interval": 300, "status": "Accepted"}, rules16("BootNotification")) == [
        Change(DiffKind.REMOVED, "currentTime", "2026-01-01T00:00:00Z", None)
    ]
    assert compare_payloads(exp, dict(act, currentTime=5), rules16("BootNotification")) == [
        Change(DiffKind.TYPE_CHANGED, "currentTime", "2026-01-01T00:00:00Z", 5)
    ]
    # the interval is still compared
    assert compare_payloads(exp, dict(act, interval=60), rules16("BootNotification"))[0].path == "interval"
    # correlated ids: presence and type, not value
    start = rules16("StartTransaction")
    e = {"transactionId": 17, "idTagInfo": {"status": "Accepted", "expiryDate": "2026-01-01T00:00:00Z"}}
    a = {"transactionId": 5000, "idTagInfo": {"status": "Accepted", "expiryDate": "2030-01-01T00:00:00Z"}}
    assert compare_payloads(e, a, start) == []
    assert compare_payloads(e, dict(a, transactionId="5000"), start)[0].kind is DiffKind.TYPE_CHANGED


def test_builtin_noise_rules_201() -> None:
    r = RULES.for_message("2.0.1", "Authorize", Message.RESPONSE)
    e = {"idTokenInfo": {"status": "Accepted", "cacheExpiryDateTime": "2026-01-01T00:00:00Z"}}
    a = {"idTokenInfo": {"status": "Accepted", "cacheExpiryDateTime": "2026-02-01T00:00:00Z"}}
    assert compare_payloads(e, a, r) == []
    c = RULES.correlator("2.0.1")
    r = RULES.for_message("2.0.1", "RequestStartTransaction", Message.REQUEST, c)
    assert (
        compare_payloads({"remoteStartId": 5, "idToken": {}}, {"remoteStartId": 900, "idToken": {}}, r) == []
    )


def test_builtin_noise_rules_21() -> None:
    """2.1 has every 2.0.1 rule, its own time anchors, and its own correlated ids."""
    for action, message in BUILTIN_RULES_201_KEYS:
        v21 = RULES.for_message("2.1", action, message)
        assert set(RULES.for_message("2.0.1", action, message)) <= set(v21)
    boot = RULES.for_message("2.1", "BootNotification", Message.RESPONSE)
    e = {"currentTime": "2026-01-01T00:00:00Z", "interval": 300, "status": "Accepted"}
    assert compare_payloads(e, dict(e, currentTime="2027-01-01T00:00:00Z"), boot) == []
    assert compare_payloads(e, dict(e, interval=900), boot)[0].path == "interval"
    anchor = "chargingProfile.chargingSchedule[*].absolutePriceSchedule.timeAnchor"
    assert anchor in [r.text for r in RULES.for_message("2.1", "SetChargingProfile", Message.REQUEST)]
    assert anchor not in [r.text for r in RULES.for_message("2.0.1", "SetChargingProfile", Message.REQUEST)]
    c = RULES.correlator("2.1")
    r = RULES.for_message("2.1", "SetDefaultTariff", Message.REQUEST, c)
    tariff = {"evseId": 0, "tariff": {"tariffId": "T-1", "currency": "EUR"}}
    live = {"evseId": 0, "tariff": {"tariffId": "T-77", "currency": "EUR"}}
    assert compare_payloads(tariff, live, r) == []
    assert compare_payloads(tariff, dict(live, evseId=1), r)[0].path == "evseId"
    # A rules file can name 2.1.
    rs = parse_rules('[[rule]]\naction = "Heartbeat"\nocpp = "2.1"\nignore = ["currentTime"]\n')
    assert PathRule(parse_path("currentTime"), Mode.IGNORE) in rs.for_message(
        "2.1", "Heartbeat", Message.RESPONSE
    )
    assert rs.for_message("2.0.1", "Heartbeat", Message.RESPONSE)[0].mode is Mode.PRESENCE
    with pytest.raises(ConfigError, match=r"ocpp must be 1\.6, 2\.0\.1 or 2\.1"):
        parse_rules('[[rule]]\naction = "Heartbeat"\nocpp = "3.0"\n')


BUILTIN_RULES_201_KEYS = [(a, m) for (v, a, m) in BUILTIN_RULES if v == "2.0.1"]


def test_answers() -> None:
    ok = CallResult("1", {"status": "Accepted"})
    err = CallError("1", "InternalError", "boom", {})
    assert compare_answers(ok, CallResult("x", {"status": "Accepted"})) == []
    assert compare_answers(ok, None) == [Change(DiffKind.TIMEOUT, "", {"status": "Accepted"}, None)]
    (c,) = compare_answers(ok, err)
    assert c.kind is DiffKind.CALL_ERROR and c.actual["errorCode"] == "InternalError"
    assert compare_answers(err, CallError("2", "InternalError", "other text", {})) == []
    assert compare_answers(err, CallError("2", "NotImplemented", "", {}))[0].path == "errorCode"
    assert compare_answers(None, ok) == []
    assert compare_answers("garbage", "garbage") == []
    assert compare_answers("garbage", ok)[0].kind is DiffKind.CHANGED
    assert (
        compare_calls(Call("a", "Reset", {"type": "Soft"}), Call("b", "Reset", {"type": "Hard"}))[0].path
        == "type"
    )


def test_rules_file(tmp_path: Path) -> None:
    text = """
[[rule]]
action = "BootNotification"
ocpp = "1.6"
ignore = ["interval"]
compare = ["currentTime"]

[[rule]]
action = "*"
message = "request"
presence = ["customData.vendorId"]

[[correlate]]
name = "sessionRef"
from = { action = "DataTransfer", message = "response", path = "data" }
to = [{ action = "DataTransfer", path = "messageId" }]
"""
    rs = parse_rules(text)
    boot = rs.for_message("1.6", "BootNotification", Message.RESPONSE)
    assert PathRule(parse_path("interval"), Mode.IGNORE) in boot
    assert all(r.text != "currentTime" for r in boot)
    assert rs.for_message("2.0.1", "BootNotification", Message.RESPONSE)[0].text == "currentTime"
    assert rs.for_message("1.6", "Reset", Message.REQUEST) == (
        PathRule(parse_path("customData.vendorId"), Mode.PRESENCE),
    )
    names = [c.name for c in rs.correlations("1.6")]
    assert names[0] == "transactionId" and names[-1] == "sessionRef"
    f = tmp_path / "rules.toml"
    f.write_text("builtin = false\n")
    bare = load_rules(f)
    assert bare.for_message("1.6", "BootNotification", Message.RESPONSE) == ()
    assert bare.correlations("1.6") == ()
    assert load_rules(None).for_message("1.6", "Heartbeat", Message.RESPONSE)


@pytest.mark.parametrize(
    "text",
    [
        "not toml [",
        "colour = 1",
        "[[rule]]\nignore = ['a']",
        "[[rule]]\naction = 'X'\nmessage = 'reply'",
        "[[rule]]\naction = 'X'\nocpp = '1.5'",
        "[[rule]]\naction = 'X'\nignore = ['a..b']",
        "[[rule]]\naction = 'X'\nwhat = 1",
        "[[correlate]]\nname = 'n'\nfrom = { action = 'A', path = 'x' }",
        "[[correlate]]\nname = 'n'\nfrom = 'A:x'\nto = [{ action = 'B', path = 'y' }]",
        "builtin = 'yes'",
    ],
)
def test_bad_rules_files(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_rules(text)


def _result() -> RunResult:
    d = Difference(3, "CP-1", 6, "Authorize", DiffKind.CHANGED, "idTagInfo.status", "Accepted", "Blocked")
    frame = LiveFrame(1, 1, "2026-01-01T00:00:00.000000Z", 0.5, "to_csms", 2, "1", "Authorize", "[]", 0.001)
    s1 = SessionResult(3, "CP-1", "ocpp1.6", None, None, (d,), {"Authorize": 1}, (frame,), (0.001, 0.003))
    s2 = SessionResult(4, "CP-\x1b2", "ocpp1.6", None, None, (), {"Heartbeat": 2}, (), (0.002,))
    return RunResult("ws://t/ocpp", "2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z", (s1, s2), run_id=7)


def test_json_report_format(tmp_path: Path) -> None:
    doc = report_dict(_result())
    assert doc == {
        "summary": {
            "sessions": 2,
            "messages": 1,
            "diffs": 1,
            "timing": {
                "frames": 3,
                "lateness_ms": {"p50": 2.0, "p99": 3.0, "max": 3.0},
                "held_frames": 0,
                "held_ms": {"p50": 0.0, "max": 0.0, "total": 0.0},
            },
        },
        "sessions": [
            {
                "session_id": 3,
                "charge_point_id": "CP-1",
                "diffs": [
                    {
                        "seq": 6,
                        "action": "Authorize",
                        "kind": "changed",
                        "path": "idTagInfo.status",
                        "expected": "Accepted",
                        "actual": "Blocked",
                    }
                ],
            },
            {"session_id": 4, "charge_point_id": "CP-\x1b2", "diffs": []},
        ],
        "groups": [
            {
                "action": "Authorize",
                "kind": "changed",
                "path": "idTagInfo.status",
                "expected": "Accepted",
                "actual": "Blocked",
                "count": 1,
                "sessions": [3],
                "charge_points": ["CP-1"],
            }
        ],
    }
    write_json(_result(), tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == doc


def test_junit() -> None:
    root = ET.fromstring(junit_xml(_result()))
    assert root.get("tests") == "2" and root.get("failures") == "1"
    cases = root.findall(".//testcase")
    assert [c.find("failure") is not None for c in cases] == [True, False]
    failure = cases[0].find("failure")
    assert failure is not None and "idTagInfo.status" in (failure.text or "")
    assert "\x1b" not in junit_xml(_result())


def test_terminal_tables() -> None:
    r = _result()
    console = Console(record=True, width=200)
    console.print(summary_table(r))
    console.print(differences_table(r.differences))
    out = console.export_text()
    assert "Authorize" in out and "Heartbeat" in out and "Blocked" in out
    assert "run 7: 2 sessions, 1 messages, 1 difference;" in summary_line(r)
    assert r.by_action()["Authorize"].diffs == 1 and r.exit_code == 1


def test_percentile_and_timing() -> None:
    assert percentile([], 99) == 0.0
    values = [i / 1000 for i in range(1, 101)]
    assert (
        percentile(values, 50) == 0.05 and percentile(values, 99) == 0.099 and percentile(values, 100) == 0.1
    )
    assert Timing.of([]).frames == 0


def test_the_identical_fast_path_keeps_types_apart() -> None:
    """compare_payloads skips the full diff when the canonical texts are equal (orjson's): key
    order does not matter, a number's type and the values orjson writes alike (NaN and null,
    integers past 64 bits) do."""
    assert compare_payloads({"a": 1, "b": [1, {"c": "é"}]}, {"b": [1, {"c": "é"}], "a": 1}) == []
    for expected, actual in [
        (1, 1.0),
        (1, True),
        (0.0, -0.0),
        (float("nan"), None),
        (float("inf"), float("-inf")),
        (10**30, 10**30 + 1),
    ]:
        assert compare_payloads({"v": expected}, {"v": actual}), (expected, actual)
    assert compare_payloads({"v": 10**30}, {"v": 10**30}) == []
    assert compare_payloads({"v": float("nan")}, {"v": float("nan")}) == []
