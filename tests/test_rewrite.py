"""core/rewrite.py: [[rewrite]] entries and the hook, on payloads and replay plans. Pure."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ocpp_replay.core.correlate import Message
from ocpp_replay.core.frames import Call, CallResult
from ocpp_replay.core.rewrite import Rewriter, parse_rewrites, rewrite_plans
from ocpp_replay.core.rules import parse_rules
from ocpp_replay.core.schedule import plan_sessions
from ocpp_replay.errors import ConfigError
from tests.test_schedule import S, frames

RULES = """
[[rewrite]]
action = "Authorize"
path = "idTag"
values = { ACE0177305 = "STAGING-01" }

[[rewrite]]
path = "idTag"
pattern = "^ACE(\\\\d+)$"
replace = "STG-\\\\1"

[[rewrite]]
action = "StatusNotification"
path = "connectorId"
values = { "1" = 2 }

[[rewrite]]
action = "GetConfiguration"
message = "response"
path = "configurationKey[*].value"
values = { "prod.example" = "staging.example" }
"""


def rewriter(**kw: Any) -> Rewriter:
    return Rewriter(parse_rewrites(RULES), **kw)


def test_exact_values_then_patterns_by_action_and_message() -> None:
    r = rewriter()
    assert r.payload("Authorize", Message.REQUEST, {"idTag": "ACE0177305"}) == {"idTag": "STAGING-01"}
    # not in the table: the pattern rule for every action maps it
    assert r.payload("Authorize", Message.REQUEST, {"idTag": "ACE0000001"}) == {"idTag": "STG-0000001"}
    assert r.payload("StartTransaction", Message.REQUEST, {"idTag": "ACE42"}) == {"idTag": "STG-42"}
    # a pattern matches the whole value, not a part of it
    assert r.payload("Authorize", Message.REQUEST, {"idTag": "xACE42"}) == {"idTag": "xACE42"}
    # numbers match by their JSON text; the new value keeps the type the file gives
    assert r.payload("StatusNotification", Message.REQUEST, {"connectorId": 1}) == {"connectorId": 2}
    got = r.payload(
        "GetConfiguration",
        Message.RESPONSE,
        {"configurationKey": [{"key": "Url", "value": "prod.example"}, {"key": "X", "value": "y"}]},
    )
    assert got == {
        "configurationKey": [{"key": "Url", "value": "staging.example"}, {"key": "X", "value": "y"}]
    }
    # the message filter: a request of that action is left alone
    request = {"configurationKey": [{"value": "prod.example"}]}
    assert r.payload("GetConfiguration", Message.REQUEST, request) is request


def test_an_unchanged_payload_is_the_same_object() -> None:
    payload = {"idTag": "OTHER", "nested": {"idTag": "ACE1"}}
    assert rewriter().payload("Authorize", Message.REQUEST, payload) is payload


def test_the_hook_runs_after_the_rules_and_none_keeps_the_payload() -> None:
    seen: list[tuple[str, str, dict[str, Any]]] = []

    def hook(action: str, message: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        seen.append((action, message, payload))
        if action == "Heartbeat":
            return None
        return {**payload, "hooked": True}

    r = rewriter(hook=hook, hook_name="m:hook")
    assert r.payload("Authorize", Message.REQUEST, {"idTag": "ACE0177305"}) == {
        "idTag": "STAGING-01",
        "hooked": True,
    }
    heartbeat: dict[str, Any] = {}
    assert r.payload("Heartbeat", Message.REQUEST, heartbeat) is heartbeat
    assert seen[0] == ("Authorize", "request", {"idTag": "STAGING-01"})


@pytest.mark.parametrize(
    ("hook", "error"),
    [
        (lambda a, m, p: 1 / 0, "rewrite hook m:f failed on Authorize request: ZeroDivisionError"),
        (lambda a, m, p: ["not", "a", "dict"], "returned list for Authorize request"),
    ],
)
def test_a_failing_hook_is_a_config_error(hook: Any, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        Rewriter((), hook, "m:f").payload("Authorize", Message.REQUEST, {"idTag": "x"})


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[[rewrite]]\npath = 'a'", "give values \\(exact\\) or pattern and replace"),
        ("[[rewrite]]\nvalues = {a = 'b'}", "path missing"),
        ("[[rewrite]]\npath = 'a'\nvalues = {a = 'b'}\nwhat = 1", "unknown key 'what'"),
        ("[[rewrite]]\npath = 'a'\npattern = '('\nreplace = 'x'", "bad pattern or replace"),
        ("[[rewrite]]\npath = 'a'\npattern = 'a'\nreplace = '\\2'", "bad pattern or replace"),
        ("[[rewrite]]\npath = 'a'\npattern = 'a'", "pattern and replace go together"),
        (
            "[[rewrite]]\npath = 'a'\nvalues = {a = 'b'}\nmessage = 'both'",
            "message must be request or response",
        ),
        ("[[rewrite]]\npath = '$'\nvalues = {a = 'b'}", "path must name a value inside the payload"),
        ("rewrite = 3", "must be an array of tables"),
    ],
)
def test_bad_entries_are_config_errors(text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_rewrites(text, source="r.toml")


def test_the_diff_rules_accept_a_file_with_rewrites() -> None:
    parse_rules(RULES)  # the same file holds [[rule]], [[correlate]] and [[rewrite]]


SESSION = frames(
    (0.0, "to_csms", '[2,"1","Authorize",{"idTag":"ACE0177305"}]'),
    (0.01, "to_cp", '[3,"1",{"idTagInfo":{"status":"Accepted"}}]'),
    (1.0, "to_cp", '[2,"b1","GetConfiguration",{}]'),
    (
        1.01,
        "to_csms",
        '[3,"b1",{"configurationKey":[{"key":"Url","readonly":false,"value":"prod.example"}]}]',
    ),
    (2.0, "to_csms", '[2,"2","Heartbeat",{}]'),
    (2.01, "to_cp", '[3,"2",{"currentTime":"2026-11-25T10:00:02Z"}]'),
)


def test_plans_send_rewritten_frames_and_list_them_beside_the_recorded_ones() -> None:
    (plan,) = plan_sessions([(S(7), SESSION)])
    (new,), changed = rewrite_plans([plan], rewriter())
    authorize, heartbeat = new.steps
    assert authorize.call == Call("1", "Authorize", {"idTag": "STAGING-01"})
    assert json.loads(authorize.raw) == [2, "1", "Authorize", {"idTag": "STAGING-01"}]
    assert heartbeat is plan.steps[1]  # untouched: sent as recorded, byte for byte
    (bc,) = new.backend_calls
    assert isinstance(bc.answer, CallResult)
    assert bc.answer.payload["configurationKey"][0]["value"] == "staging.example"
    assert bc.call == plan.backend_calls[0].call  # what the backend sends is not ours to change
    assert [(c["session_id"], c["seq"], c["action"], c["message"]) for c in changed] == [
        (7, 1, "Authorize", "request"),
        (7, 4, "GetConfiguration", "response"),
    ]
    assert changed[0]["recorded"] == '[2,"1","Authorize",{"idTag":"ACE0177305"}]'
    assert changed[0]["rewritten"] == '[2,"1","Authorize",{"idTag":"STAGING-01"}]'
    assert rewrite_plans([plan], None) == ([plan], [])
    assert rewrite_plans([plan], Rewriter()) == ([plan], [])


# -- on real peers: the CLI replays rewritten frames to the reference CSMS -------------------------

HOOK = """
def staging(action, message, payload):
    if action == "BootNotification":
        return {**payload, "chargePointModel": "STAGING-MODEL"}
    return None
"""


def _capture(path: Any) -> None:
    import time

    from ocpp_replay.core.frames import Direction
    from ocpp_replay.store import CaptureWriter

    writer = CaptureWriter(path)
    sid = writer.open_session(time.time(), charge_point_id="PROD-1", subprotocol="ocpp1.6")
    boot = {"chargePointVendor": "Alfen BV", "chargePointModel": "NG910"}
    start = {"connectorId": 1, "idTag": "ACE0177305", "meterStart": 0, "timestamp": "2026-11-25T10:00:01Z"}
    recorded = [
        (Direction.TO_CSMS, [2, "1", "BootNotification", boot]),
        (
            Direction.TO_CP,
            [3, "1", {"currentTime": "2026-11-25T10:00:00Z", "interval": 300, "status": "Accepted"}],
        ),
        (Direction.TO_CSMS, [2, "2", "Authorize", {"idTag": "ACE0177305"}]),
        (Direction.TO_CP, [3, "2", {"idTagInfo": {"status": "Accepted"}}]),
        (Direction.TO_CSMS, [2, "3", "StartTransaction", start]),
        (Direction.TO_CP, [3, "3", {"idTagInfo": {"status": "Accepted"}, "transactionId": 5}]),
    ]
    for seq, (direction, frame) in enumerate(recorded, 1):
        writer.frame(sid, seq, time.time(), seq * 0.01, direction, json.dumps(frame, separators=(",", ":")))
    writer.close_session(sid, time.time(), frames=len(recorded))
    writer.close()


async def test_replay_sends_rewritten_frames_and_reports_them(tmp_path: Any, monkeypatch: Any) -> None:
    import asyncio

    import typer
    from typer.testing import CliRunner

    from ocpp_replay.cli.replay import register
    from ocpp_replay.csms import ReferenceCsms

    db = tmp_path / "prod.db"
    _capture(db)
    rules = tmp_path / "staging.toml"
    rules.write_text('[[rewrite]]\npath = "idTag"\nvalues = { ACE0177305 = "STAGING-01" }\n')
    (tmp_path / "stagehook.py").write_text(HOOK)
    monkeypatch.chdir(tmp_path)  # the hook module sits beside the capture
    app = typer.Typer()
    register(app)
    args = ["replay", "--db", str(db), "--rules", str(rules), "--rewrite", "stagehook:staging"]
    args += [
        "--max-gap",
        "0.05",
        "--timeout",
        "2",
        "--grace",
        "0.3",
        "--report",
        "r.json",
        "--html",
        "r.html",
    ]
    async with ReferenceCsms(get_configuration_on_boot=False) as csms:
        res = await asyncio.to_thread(CliRunner().invoke, app, [*args, "--target", csms.url])
        record = csms.backend.chargers["PROD-1"]
        (tx,) = csms.backend.transactions.values()
    assert res.exit_code in (0, 1), res.output
    # the backend saw the rewritten values, never the recorded ones
    assert tx.id_tag == "STAGING-01"
    assert record.boot is not None and record.boot["chargePointModel"] == "STAGING-MODEL"
    assert "3 charger frames rewritten before sending" in res.stdout
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [(r["seq"], r["action"]) for r in doc["rewritten"]] == [
        (1, "BootNotification"),
        (3, "Authorize"),
        (5, "StartTransaction"),
    ]
    assert (
        '"ACE0177305"' in doc["rewritten"][1]["recorded"]
        and '"STAGING-01"' in doc["rewritten"][1]["rewritten"]
    )
    page = (tmp_path / "r.html").read_text()
    assert "Rewritten frames" in page and "STAGING-MODEL" in page and "NG910" in page


async def test_a_hook_that_cannot_be_loaded_is_one_error_line(tmp_path: Any) -> None:
    import asyncio

    import typer
    from typer.testing import CliRunner

    from ocpp_replay.cli.replay import register

    db = tmp_path / "prod.db"
    _capture(db)
    app = typer.Typer()
    register(app)
    for spec, error in (
        ("no_such_module_here:f", "--rewrite: cannot import no_such_module_here"),
        ("json:no_such_function", "--rewrite: json has no function no_such_function"),
        ("nocolon", "--rewrite: expected MODULE:FUNCTION"),
    ):
        args = ["replay", "--db", str(db), "--target", "ws://127.0.0.1:9/ocpp", "--rewrite", spec]
        res = await asyncio.to_thread(CliRunner().invoke, app, args)
        assert res.exit_code == 2 and res.stderr.startswith(f"error: {error}"), res.stderr
