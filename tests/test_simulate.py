"""Virtual chargers: the pure state machine and scenarios, then fleets over real sockets against
the reference CSMS and against an independent CSMS built on the mobilityhouse ``ocpp`` package."""

from __future__ import annotations

import asyncio
import http
import io
import json
import random
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v16.enums import Action as Action16
from ocpp.v21 import ChargePoint as ChargePoint21
from ocpp.v21 import call as call21
from ocpp.v21 import call_result as result21
from ocpp.v21.enums import Action as Action21
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from ocpp.v201.enums import Action as Action201
from rich.console import Console
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from ocpp_replay.core import schemas
from ocpp_replay.core.frames import Call, CallError, Direction, parse
from ocpp_replay.csms import V2_BLOCKED_ID_TAG, ReferenceCsms
from ocpp_replay.errors import ConfigError, UpstreamError
from ocpp_replay.simulate import FleetResult, print_summary, run_fleet, run_simulate
from ocpp_replay.simulate import scenario as scenarios
from ocpp_replay.simulate.alfen import identity
from ocpp_replay.simulate.charger import Charger, Out

pytestmark = pytest.mark.timeout(60)

START = datetime(2024, 6, 3, 8, 0, tzinfo=UTC)
FAST = 0.0003  # real seconds per virtual second: an hour in about a second
VERSIONS = ("1.6", "2.0.1", "2.1")


# -- pure: the state machine ------------------------------------------------------------------


def make(version: str, connectors: int = 1) -> Charger:
    rng = random.Random(1)
    return Charger(identity("ALF-0001", rng, connectors=connectors), version, rng, start=START)


def assert_valid(version: str, outs: list[Out], charger: Charger) -> None:
    for out in outs:
        payload = charger.finalize(out)
        if payload is None:
            payload = {**out.payload, "transactionId": 1}
        assert schemas.validate(version, out.action, payload, response=False) == [], (out.action, payload)


def answer_all(charger: Charger, outs: list[Out], now: datetime, answers: dict[str, Any]) -> list[Out]:
    """Feed canned answers to OUTS and their follow-ups; returns everything that was sent."""
    sent: list[Out] = []
    work = list(outs)
    while work:
        out = work.pop(0)
        sent.append(out)
        work[:0] = charger.on_answer(out, answers.get(out.action, {}), now)
    return sent


@pytest.mark.parametrize("version", VERSIONS)
def test_session_messages_are_valid_and_in_order(version: str) -> None:
    ch = make(version)
    ch.connected()
    t = START
    ok16 = {"idTagInfo": {"status": "Accepted"}}
    answers = {
        "BootNotification": {"status": "Accepted", "interval": 120, "currentTime": "2024-06-03T08:00:00Z"},
        "Authorize": ok16 if version == "1.6" else {"idTokenInfo": {"status": "Accepted"}},
        "StartTransaction": {**ok16, "transactionId": 42},
    }
    sent = answer_all(ch, ch.boot(t), t, answers)
    assert next(o.action for o in sent) == "BootNotification"
    assert ch.heartbeat_interval == 120 and ch.booted
    statuses = [o.payload for o in sent if o.action == "StatusNotification"]
    assert len(statuses) == (2 if version == "1.6" else 1)  # 1.6 reports connector 0 too
    t += timedelta(minutes=1)
    sent += answer_all(ch, ch.plug(1, t), t, answers)
    sent += answer_all(ch, ch.authorize(1, "ACE0177305", t), t, answers)
    sent += answer_all(ch, ch.start(1, None, t), t, answers)
    assert ch.connectors[1].tx is not None
    for _ in range(5):
        due = ch.next_due()
        assert due is not None
        t = due
        sent += answer_all(ch, ch.fire_due(t), t, answers)
    sent += answer_all(ch, ch.suspend(1, t), t, answers)
    sent += answer_all(ch, ch.stop(1, "Local", t), t, answers)
    sent += answer_all(ch, ch.unplug(1, t), t, answers)
    assert_valid(version, sent, ch)
    actions = [o.action for o in sent]
    if version == "1.6":
        shown = [
            o.payload["status"] for o in sent if o.action == "StatusNotification" and o.payload["connectorId"]
        ]
        assert shown == ["Available", "Preparing", "Charging", "SuspendedEV", "Finishing", "Available"]
        assert actions.count("MeterValues") >= 4
        stop = next(o for o in sent if o.action == "StopTransaction")
        assert ch.finalize(stop)["transactionId"] == 42  # type: ignore[index]
        assert (
            stop.payload["meterStop"]
            > next(o for o in sent if o.action == "StartTransaction").payload["meterStart"]
        )
    else:
        events = [o.payload for o in sent if o.action == "TransactionEvent"]
        assert next(e["eventType"] for e in events) == "Started" and events[-1]["eventType"] == "Ended"
        assert [e["seqNo"] for e in events] == list(range(len(events)))
        assert len({e["transactionInfo"]["transactionId"] for e in events}) == 1


def test_meter_values_carry_alfen_measurands() -> None:
    ch = make("1.6")
    ch.connected()
    ch.booted = True
    ch.start(1, "ACE0177305", START)
    outs = ch.fire_due(START + timedelta(seconds=60))
    meter = next(o for o in outs if o.action == "MeterValues")
    sampled = meter.payload["meterValue"][0]["sampledValue"]
    seen = {(s["measurand"], s.get("phase")) for s in sampled}
    assert {("Current.Import", "L1"), ("Current.Import", "L3"), ("Voltage", "L2-N")} <= seen
    assert {m for m, _ in seen} >= {
        "Energy.Active.Import.Register",
        "Power.Active.Import",
        "Frequency",
        "Temperature",
    }
    assert all(s["context"] == "Sample.Periodic" for s in sampled)


def test_clock_aligned_values_on_the_quarter_hour() -> None:
    ch = make("1.6")
    ch.connected()
    ch.booted = True
    ch.now = START + timedelta(minutes=7)
    assert ch.next_due() == START + timedelta(minutes=15)
    outs = ch.fire_due(START + timedelta(minutes=15))
    (clock,) = [o for o in outs if o.action == "MeterValues"]
    assert clock.payload["meterValue"][0]["timestamp"] == "2024-06-03T08:15:00Z"
    assert clock.payload["meterValue"][0]["sampledValue"][0]["context"] == "Sample.Clock"


@pytest.mark.parametrize("version", VERSIONS)
def test_offline_queue_keeps_old_timestamps(version: str) -> None:
    ch = make(version)
    ch.connected()
    ch.booted = True
    ch.connection_lost()
    t = START
    assert ch.plug(1, t) == []
    assert ch.authorize(1, "ACE0177305", t) == []  # local authorization
    assert ch.start(1, None, t) == []
    ch.fire_due(t + timedelta(seconds=60))
    ch.stop(1, "Local", t + timedelta(seconds=90))
    assert ch.heartbeat(t) == []  # not queued
    later = t + timedelta(hours=1)
    outs = ch.restored(later)
    queued = [o for o in outs if o.queueable]
    stamps = [o.payload.get("timestamp") or o.payload["meterValue"][0]["timestamp"] for o in queued]
    assert stamps == ["2024-06-03T08:00:00Z", "2024-06-03T08:01:00Z", "2024-06-03T08:01:30Z"]
    if version == "1.6":
        assert [o.action for o in queued] == ["StartTransaction", "MeterValues", "StopTransaction"]
        assert ch.finalize(queued[1]) is None  # no backend id yet
        ch.on_answer(queued[0], {"idTagInfo": {"status": "Accepted"}, "transactionId": 7}, later)
        assert ch.finalize(queued[1])["transactionId"] == 7  # type: ignore[index]
    else:
        assert all(o.payload["offline"] is True for o in queued)


@pytest.mark.parametrize("version", VERSIONS)
def test_blocked_card_at_start_ends_the_transaction(version: str) -> None:
    ch = make(version)
    ch.connected()
    ch.booted = True
    outs = ch.start(1, V2_BLOCKED_ID_TAG, START)
    start = next(o for o in outs if o.action in ("StartTransaction", "TransactionEvent"))
    blocked: dict[str, Any] = {"idTagInfo" if version == "1.6" else "idTokenInfo": {"status": "Blocked"}}
    if version == "1.6":
        blocked["transactionId"] = 5
    follow = ch.on_answer(start, blocked, START)
    assert ch.connectors[1].tx is None
    end = follow[0]
    if version == "1.6":
        assert end.action == "StopTransaction" and end.payload["reason"] == "DeAuthorized"
    else:
        assert end.payload["transactionInfo"]["stoppedReason"] == "DeAuthorized"


BACKEND_CALLS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "1.6": [
        ("GetConfiguration", {"key": ["HeartbeatInterval", "NoSuchKey"]}),
        ("ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "30"}),
        ("ChangeConfiguration", {"key": "NumberOfConnectors", "value": "3"}),
        ("TriggerMessage", {"requestedMessage": "StatusNotification", "connectorId": 1}),
        ("TriggerMessage", {"requestedMessage": "MeterValues"}),
        (
            "SetChargingProfile",
            {
                "connectorId": 1,
                "csChargingProfiles": {
                    "chargingProfileId": 3,
                    "stackLevel": 0,
                    "chargingProfilePurpose": "TxDefaultProfile",
                    "chargingProfileKind": "Relative",
                    "chargingSchedule": {
                        "chargingRateUnit": "A",
                        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10}],
                    },
                },
            },
        ),
        ("ClearChargingProfile", {"id": 3}),
        ("DataTransfer", {"vendorId": "Alfen BV", "messageId": "Ping"}),
        ("DataTransfer", {"vendorId": "Other"}),
        ("RemoteStartTransaction", {"connectorId": 1, "idTag": "ACE0177305"}),
        ("ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}),
        ("RemoteStopTransaction", {"transactionId": 9}),
        ("UnlockConnector", {"connectorId": 1}),
        ("ClearCache", {}),
        ("GetLocalListVersion", {}),
        ("Reset", {"type": "Soft"}),
    ],
    "2.0.1": [
        (
            "GetVariables",
            {
                "getVariableData": [
                    {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}},
                    {"component": {"name": "Nope"}, "variable": {"name": "X"}},
                ]
            },
        ),
        (
            "SetVariables",
            {
                "setVariableData": [
                    {
                        "attributeValue": "30",
                        "component": {"name": "SampledDataCtrlr"},
                        "variable": {"name": "TxUpdatedInterval"},
                    }
                ]
            },
        ),
        ("GetBaseReport", {"requestId": 1, "reportBase": "ConfigurationInventory"}),
        ("TriggerMessage", {"requestedMessage": "StatusNotification", "evse": {"id": 1, "connectorId": 1}}),
        (
            "SetChargingProfile",
            {
                "evseId": 1,
                "chargingProfile": {
                    "id": 3,
                    "stackLevel": 0,
                    "chargingProfilePurpose": "TxDefaultProfile",
                    "chargingProfileKind": "Relative",
                    "chargingSchedule": [
                        {
                            "id": 1,
                            "chargingRateUnit": "A",
                            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10}],
                        }
                    ],
                },
            },
        ),
        ("ClearChargingProfile", {"chargingProfileId": 3}),
        ("DataTransfer", {"vendorId": "Alfen BV", "messageId": "Ping"}),
        (
            "RequestStartTransaction",
            {"idToken": {"idToken": "ACE0177305", "type": "ISO14443"}, "remoteStartId": 4, "evseId": 1},
        ),
        ("ChangeAvailability", {"operationalStatus": "Inoperative", "evse": {"id": 1}}),
        ("UnlockConnector", {"evseId": 1, "connectorId": 1}),
        ("Reset", {"type": "Immediate"}),
    ],
}
#: 2.1 keeps 2.0.1's commands, and adds a reset type.
BACKEND_CALLS["2.1"] = [*BACKEND_CALLS["2.0.1"][:-1], ("Reset", {"type": "ImmediateAndResume"})]


@pytest.mark.parametrize("version", VERSIONS)
def test_backend_calls_answered_validly_and_change_state(version: str) -> None:
    ch = make(version)
    ch.connected()
    ch.booted = True
    answers: dict[str, Any] = {}
    for action, payload in BACKEND_CALLS[version]:
        assert schemas.validate(version, action, payload, response=False) == [], action
        answer, reaction = ch.handle_call(action, payload, START)
        assert isinstance(answer, dict), (action, answer)
        assert schemas.validate(version, action, answer, response=True) == [], (action, answer)
        assert_valid(version, reaction.outs, ch)
        answers[action] = answer
        if action in ("RemoteStartTransaction", "RequestStartTransaction"):
            assert ch.connectors[1].tx is not None
            ch.connectors[1].tx.backend_id = 9  # as if the backend had answered
    assert answers["ChangeAvailability"]["status"] == "Scheduled"  # a transaction is running
    assert answers["Reset"]["status"] == "Accepted"
    if version == "1.6":
        assert answers["GetConfiguration"]["unknownKey"] == ["NoSuchKey"]
        assert ch.config["MeterValueSampleInterval"][0] == "30"
        assert answers["ChangeConfiguration"]["status"] == "Rejected"  # the read-only one, last
        assert answers["RemoteStopTransaction"]["status"] == "Accepted"
        assert ch.connectors[1].tx is None and not ch.connectors[1].operative  # scheduled, now applied
    else:
        assert answers["GetVariables"]["getVariableResult"][1]["attributeStatus"] == "UnknownComponent"
        assert answers["UnlockConnector"]["status"] == "OngoingAuthorizedTransaction"
    unknown, _ = ch.handle_call("MakeCoffee", {}, START)
    assert unknown == ("NotImplemented", "MakeCoffee is not implemented by this charger")


# -- pure: scenarios --------------------------------------------------------------------------

EXAMPLE = """
name = "blocked-card"
description = "a card the v2 backend blocks"

[[setup]]
do = "wait"
seconds = 5

[[cycle]]
do = "plug"

[[cycle]]
do = "authorize"
id_tag = "04E5F6A7B8C9D0"
expect_status = "Accepted"

[[cycle]]
do = "start"

[[cycle]]
do = "charge"
minutes = [2, 3]

[[cycle]]
do = "send"
version = "1.6"
action = "DataTransfer"
payload = { vendorId = "Alfen BV", messageId = "Hello" }
expect = { status = "Accepted" }

[[cycle]]
do = "unplug"
"""


def test_toml_scenario_loads() -> None:
    s = scenarios.load(EXAMPLE)
    assert s.name == "blocked-card" and len(s.setup) == 1 and len(s.cycle) == 6
    assert s.cycle[1].expect_status == "Accepted"
    assert s.cycle[4].version == "1.6" and s.cycle[4].expect == {"status": "Accepted"}
    assert 120 <= s.cycle[3].duration(random.Random(0)) <= 180


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[cycle]]\ndo = 'dance'", "'do' must be one of"),
        ("[[cycle]]\ndo = 'wait'\nhours = 1", "wait does not take hours"),
        ("[[cycle]]\ndo = 'wait'\nseconds = -1", "non-negative"),
        ("[[cycle]]\ndo = 'send'", "send needs action"),
        ("[[cycle]]\ndo = 'stop'\nreason = 'Bored'", "unknown stop reason"),
        ("colour = 'red'", "unknown top-level keys"),
        ("", "no steps"),
        ("[[cycle]\n", "not valid TOML"),
    ],
)
def test_bad_toml_scenarios_say_why(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        scenarios.load(text)


def test_scenario_names() -> None:
    assert scenarios.resolve("fleet-day") is None
    assert {scenarios.builtin("fleet-day", i).name for i in range(5)} == {
        "session",
        "reconnect",
        "commands",
        "faulty",
    }
    with pytest.raises(ConfigError, match="unknown scenario"):
        scenarios.resolve("nope")


# -- over sockets: the reference CSMS ---------------------------------------------------------


def scenario_file(tmp_path: Path, text: str, name: str = "scenario.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def no_problems(result: FleetResult) -> None:
    assert result.problems == [], "\n".join(map(str, result.problems[:10]))


async def fleet(url: str, **options: Any) -> FleetResult:
    options.setdefault("time_scale", FAST)
    options.setdefault("start_time", START)
    async with asyncio.timeout(45):
        return await run_fleet(url, **options)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("scenario", [*scenarios.BUILTIN, "fleet-day"])
async def test_builtin_scenarios_against_reference_csms(version: str, scenario: str) -> None:
    async with ReferenceCsms(remote_stop_after={"*3": 3}, exercise="*4") as csms:
        result = await fleet(csms.url, chargers=5, version=version, scenario=scenario)
    no_problems(result)  # includes: every frame received and sent validates against the schemas
    assert all(c.boots >= 1 for c in result.chargers)
    assert sum(c.transactions for c in result.chargers) >= 5
    stops = result.received["RemoteStopTransaction" if version == "1.6" else "RequestStopTransaction"]
    assert stops >= 1  # ALF-0003 is stopped after its 3rd meter-value report
    assert result.received["Reset"] == 1  # ALF-0004's exercise tour ends with a reset
    assert result.chargers[3].boots == 2
    if scenario in ("reconnect", "fleet-day"):
        assert sum(c.delivered_offline for c in result.chargers) > 0
    if scenario == "faulty":  # 1.6 says it in StatusNotification, 2.0.1 and 2.1 in NotifyEvent
        if version != "1.6":  # each fault and its clearing, schema-checked like every frame
            assert result.sent["NotifyEvent"] == 2 * 5
        else:
            assert result.sent["NotifyEvent"] == 0
    backend = csms.backend
    assert sum(len(r.meter_values) for r in backend.chargers.values()) > 0
    assert {
        r.boot["chargePointVendor" if version == "1.6" else "chargingStation"] and r.version
        for r in backend.chargers.values()
    } == {version}


async def test_a_mixed_fleet_spreads_chargers_over_versions() -> None:
    async with ReferenceCsms() as csms:
        result = await fleet(csms.url, chargers=6, version="1.6,2.0.1,2.1", scenario="session")
        versions = {r.id: r.version for r in csms.backend.chargers.values()}
    no_problems(result)
    assert result.version == "1.6,2.0.1,2.1"
    assert [c.version for c in result.chargers] == ["1.6", "2.0.1", "2.1"] * 2
    assert versions == {c.charger_id: c.version for c in result.chargers}  # the CSMS saw each speak its own
    assert result.fallbacks == {}
    out = io.StringIO()
    print_summary(result, Console(file=out, width=200))
    assert "chargers: 2 on 1.6, 2 on 2.0.1, 2 on 2.1" in out.getvalue()
    with pytest.raises(ConfigError, match=r"unknown OCPP version '3\.0'"):
        await fleet(csms.url, version="2.1,3.0")


async def test_reconnect_delivers_backlog_to_the_backend() -> None:
    async with ReferenceCsms() as csms:
        result = await fleet(csms.url, chargers=1, scenario="reconnect")
        no_problems(result)
        txs = list(csms.backend.transactions.values())
    assert len(txs) == 2 and all(not t.active for t in txs)
    # the second session started offline: the backend learns its start time only afterwards
    assert txs[1].started is not None and txs[1].started < txs[1].stopped  # type: ignore[operator]
    assert result.chargers[0].connections == 2


async def test_v2_profile_blocks_a_card_v1_accepts() -> None:
    results = {}
    for profile in ("v1", "v2"):
        async with ReferenceCsms(profile) as csms:
            results[profile] = await fleet(csms.url, chargers=4, scenario="session", version="1.6")
    no_problems(results["v1"])
    blocked = [p for p in results["v2"].problems if p.kind == "rejected"]
    assert {(p.charger_id, p.action, p.detail) for p in blocked} == {("ALF-0003", "Authorize", "Blocked")}
    assert results["v2"].chargers[2].transactions == 0  # the charger did not start after Blocked


async def test_toml_expectations_pass_and_fail(tmp_path: Path) -> None:
    path = scenario_file(tmp_path, EXAMPLE)
    async with ReferenceCsms("v1") as csms:
        ok = await fleet(csms.url, scenario=path)
    no_problems(ok)
    async with ReferenceCsms("v2") as csms:
        bad = await fleet(csms.url, scenario=path, version="2.0.1")
    assert [p.kind for p in bad.failed_expectations] == ["expectation"]
    assert "expected status Accepted, got Blocked" in bad.failed_expectations[0].detail


async def test_await_call_and_basic_auth(tmp_path: Path) -> None:
    text = """
[[cycle]]
do = "plug"
[[cycle]]
do = "authorize"
[[cycle]]
do = "start"
[[cycle]]
do = "await-call"
action = "RemoteStopTransaction"
minutes = 30
[[cycle]]
do = "unplug"
"""
    async with ReferenceCsms(remote_stop_after={"*": 2}, password="s3cret") as csms:
        path = scenario_file(tmp_path, text)
        ok = await fleet(csms.url, scenario=path, password="s3cret")
        no_problems(ok)
        with pytest.raises(UpstreamError, match="cannot connect"):
            await fleet(csms.url, scenario=path, password="wrong", ramp_up=0)


async def test_control_api_commands_reach_a_virtual_charger(tmp_path: Path) -> None:
    async with ReferenceCsms() as csms:
        idle = scenario_file(tmp_path, "[[cycle]]\ndo = 'wait'\nminutes = 60\n")
        task = asyncio.create_task(fleet(csms.url, scenario=idle))
        try:
            async with asyncio.timeout(10):
                while "ALF-0001" not in csms.connected or not csms.backend.chargers["ALF-0001"].boots:
                    await asyncio.sleep(0.01)
            answer = await csms.send_command("ALF-0001", "get-configuration", {"key": ["NumberOfConnectors"]})
            assert answer.payload["configurationKey"][0]["key"] == "NumberOfConnectors"  # type: ignore[union-attr]
            answer = await csms.send_command("ALF-0001", "trigger", {"requestedMessage": "Heartbeat"})
            assert answer.payload == {"status": "Accepted"}  # type: ignore[union-attr]
        finally:
            result = await task
    no_problems(result)
    assert result.received["TriggerMessage"] == 1 and result.sent["Heartbeat"] >= 1


async def test_same_seed_same_traffic() -> None:
    shapes = []
    for _ in range(2):
        async with ReferenceCsms(tx_id_base=1) as csms:
            result = await fleet(csms.url, chargers=3, scenario="session", seed=7)
            shapes.append(
                (
                    [(c.identity, dict(c.sent)) for c in result.chargers],
                    [len(r.meter_values) for r in csms.backend.chargers.values()],
                )
            )
    assert shapes[0] == shapes[1]


async def test_unreachable_target_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError):
        await fleet("ws://127.0.0.1:9/ocpp", ramp_up=0, connect_timeout=1)


async def test_unreachable_target_fails_fast_in_real_time() -> None:
    """At --time-scale 1 the chargers' retries took 150 s before the error; the error comes first."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    started = time.monotonic()
    with pytest.raises(UpstreamError, match=f"127.0.0.1:{port} unreachable"):
        await fleet(f"ws://127.0.0.1:{port}/ocpp", chargers=3, time_scale=1.0)
    assert time.monotonic() - started < 5
    with pytest.raises(ConfigError):
        await fleet("http://127.0.0.1:9/ocpp")


async def test_a_large_fleet_in_one_process(tmp_path: Path) -> None:
    text = """
[[cycle]]
do = "plug"
[[cycle]]
do = "authorize"
[[cycle]]
do = "start"
[[cycle]]
do = "charge"
minutes = 3
[[cycle]]
do = "stop"
[[cycle]]
do = "unplug"
"""
    path = scenario_file(tmp_path, text)
    async with ReferenceCsms() as csms:
        result = await fleet(csms.url, chargers=300, scenario=path, time_scale=0.002, ramp_up=60)
    no_problems(result)
    assert result.sent["StartTransaction"] == 300 and result.sent["MeterValues"] >= 900


def test_run_simulate_prints_and_returns_the_exit_code(tmp_path: Path) -> None:
    path = scenario_file(tmp_path, EXAMPLE)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    csms = ReferenceCsms("v2")
    try:
        url = asyncio.run_coroutine_threadsafe(csms.start(), loop).result(10)
        out = io.StringIO()
        code = run_simulate(url, scenario=str(path), time_scale=FAST, console=Console(file=out, width=200))
        assert code == 1
        assert "expected status Accepted, got Blocked" in out.getvalue()
        code = run_simulate(url, scenario="session", time_scale=FAST, console=Console(file=out, width=200))
        assert code == 0
    finally:
        asyncio.run_coroutine_threadsafe(csms.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# -- over sockets: an independent CSMS on the mobilityhouse ocpp package -----------------------


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Csms16(ChargePoint16):  # type: ignore[misc]
    def __init__(self, cp_id: str, connection: ServerConnection, stop_after: int) -> None:
        super().__init__(cp_id, connection)
        self.stop_after = stop_after
        self.reports: dict[int, int] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.next_tx = 500

    @on(Action16.boot_notification)
    def on_boot(self, **_: Any) -> result16.BootNotification:
        return result16.BootNotification(current_time=_now(), interval=120, status="Accepted")

    @on(Action16.heartbeat)
    def on_heartbeat(self) -> result16.Heartbeat:
        return result16.Heartbeat(current_time=_now())

    @on(Action16.status_notification)
    def on_status(self, **_: Any) -> result16.StatusNotification:
        return result16.StatusNotification()

    @on(Action16.authorize)
    def on_authorize(self, id_tag: str) -> result16.Authorize:
        return result16.Authorize(id_tag_info={"status": "Accepted"})

    @on(Action16.start_transaction)
    def on_start(self, **_: Any) -> result16.StartTransaction:
        self.next_tx += 1
        return result16.StartTransaction(transaction_id=self.next_tx, id_tag_info={"status": "Accepted"})

    @on(Action16.stop_transaction)
    def on_stop(self, **_: Any) -> result16.StopTransaction:
        return result16.StopTransaction()

    @on(Action16.data_transfer)
    def on_data_transfer(self, **_: Any) -> result16.DataTransfer:
        return result16.DataTransfer(status="Accepted")

    @on(Action16.meter_values)
    def on_meter_values(
        self, connector_id: int, meter_value: list[Any], transaction_id: int | None = None
    ) -> result16.MeterValues:
        if transaction_id is not None:
            self.reports[transaction_id] = self.reports.get(transaction_id, 0) + 1
            if self.reports[transaction_id] == self.stop_after:
                task = asyncio.create_task(
                    self.call(call16.RemoteStopTransaction(transaction_id=transaction_id))
                )
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        return result16.MeterValues()


class Csms201(ChargePoint201):  # type: ignore[misc]
    def __init__(self, cp_id: str, connection: ServerConnection, stop_after: int) -> None:
        super().__init__(cp_id, connection)
        self.stop_after = stop_after
        self.reports: dict[str, int] = {}
        self.tasks: set[asyncio.Task[Any]] = set()

    @on(Action201.boot_notification)
    def on_boot(self, **_: Any) -> result201.BootNotification:
        return result201.BootNotification(current_time=_now(), interval=120, status="Accepted")

    @on(Action201.heartbeat)
    def on_heartbeat(self) -> result201.Heartbeat:
        return result201.Heartbeat(current_time=_now())

    @on(Action201.status_notification)
    def on_status(self, **_: Any) -> result201.StatusNotification:
        return result201.StatusNotification()

    @on(Action201.authorize)
    def on_authorize(self, id_token: dict[str, Any], **_: Any) -> result201.Authorize:
        return result201.Authorize(id_token_info={"status": "Accepted"})

    @on(Action201.meter_values)
    def on_meter_values(self, **_: Any) -> result201.MeterValues:
        return result201.MeterValues()

    @on(Action201.data_transfer)
    def on_data_transfer(self, **_: Any) -> result201.DataTransfer:
        return result201.DataTransfer(status="Accepted")

    @on(Action201.transaction_event)
    def on_transaction_event(
        self,
        event_type: str,
        transaction_info: dict[str, Any],
        id_token: dict[str, Any] | None = None,
        **kw: Any,
    ) -> result201.TransactionEvent:
        tx_id = transaction_info["transaction_id"]
        if event_type == "Updated" and kw.get("meter_value"):
            self.reports[tx_id] = self.reports.get(tx_id, 0) + 1
            if self.reports[tx_id] == self.stop_after:
                task = asyncio.create_task(self.call(call201.RequestStopTransaction(transaction_id=tx_id)))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        if id_token is not None:
            return result201.TransactionEvent(id_token_info={"status": "Accepted"})
        return result201.TransactionEvent()


@asynccontextmanager
async def ocpp_package_csms(version: str, stop_after: int = 2) -> AsyncIterator[str]:
    cls = Csms16 if version == "1.6" else Csms201

    async def handler(connection: ServerConnection) -> None:
        assert connection.request is not None
        cp = cls(connection.request.path.rsplit("/", 1)[-1], connection, stop_after)
        with suppress(ConnectionClosed):
            await cp.start()

    protocol = "ocpp1.6" if version == "1.6" else "ocpp2.0.1"
    async with serve(handler, "127.0.0.1", 0, subprotocols=[protocol]) as server:  # type: ignore[list-item]
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/steve/websocket"


@pytest.fixture(autouse=True)
def _quiet_ocpp_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level("WARNING", logger="ocpp")
    yield


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("scenario", ["session", "reconnect", "commands"])
async def test_against_an_ocpp_package_csms(version: str, scenario: str) -> None:
    async with ocpp_package_csms(version) as url:
        result = await fleet(url, chargers=3, version=version, scenario=scenario)
    no_problems(result)
    assert result.received["RemoteStopTransaction" if version == "1.6" else "RequestStopTransaction"] >= 3
    assert sum(c.transactions for c in result.chargers) >= 3


def test_a_backend_that_goes_away_for_good_fails_the_run() -> None:
    """The charger connects, then the backend drops it and refuses it from then on: exit 1."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    state: dict[str, Any] = {"connections": 0}

    def refuse_after_first(conn: ServerConnection, request: Any) -> Any:
        state["connections"] += 1
        if state["connections"] > 1:
            return conn.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "gone\n")
        return None

    async def vanishing(ws: ServerConnection) -> None:
        message = json.loads(await ws.recv())
        await ws.send(
            json.dumps([3, message[1], {"currentTime": _now(), "interval": 60, "status": "Accepted"}])
        )
        ws.transport.abort()

    async def start() -> str:
        state["server"] = await serve(
            vanishing,
            "127.0.0.1",
            0,
            subprotocols=["ocpp1.6"],  # type: ignore[list-item]
            process_request=refuse_after_first,
        )
        return f"ws://127.0.0.1:{state['server'].sockets[0].getsockname()[1]}/ocpp"

    async def stop() -> None:
        state["server"].close()
        await state["server"].wait_closed()

    try:
        url = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
        out = io.StringIO()
        code = run_simulate(url, scenario="session", time_scale=FAST, console=Console(file=out, width=200))
        assert code == 1, out.getvalue()
        assert "1 problem: connection 1" in out.getvalue()
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# -- OCPP 2.1: an independent 2.1 CSMS on the mobilityhouse ocpp package ----------------------


class _Recorded:
    """A websockets connection that logs every text both ways: (direction, text)."""

    def __init__(self, ws: ServerConnection, log: list[tuple[Direction, str]]) -> None:
        self.ws = ws
        self.log = log

    async def recv(self) -> str | bytes:
        data = await self.ws.recv()
        self.log.append((Direction.TO_CSMS, str(data)))
        return data

    async def send(self, data: str) -> None:
        self.log.append((Direction.TO_CP, data))
        await self.ws.send(data)


#: The commands the 2.1 peer sends one charger once, after its first boot, and the status it
#: expects in the answer. Reset ImmediateAndResume exists only in 2.1.
TOUR_21: list[tuple[Any, str | set[str] | None]] = [
    (
        call21.GetVariables(
            get_variable_data=[
                {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}
            ]
        ),
        None,
    ),
    (
        call21.SetVariables(
            set_variable_data=[
                {
                    "attribute_value": "60",
                    "component": {"name": "SampledDataCtrlr"},
                    "variable": {"name": "TxUpdatedInterval"},
                }
            ]
        ),
        None,
    ),
    (
        call21.TriggerMessage(requested_message="StatusNotification", evse={"id": 1, "connector_id": 1}),
        "Accepted",
    ),
    (
        call21.SetChargingProfile(
            evse_id=1,
            charging_profile={
                "id": 7,
                "stack_level": 0,
                "charging_profile_purpose": "TxDefaultProfile",
                "charging_profile_kind": "Relative",
                "charging_schedule": [
                    {
                        "id": 1,
                        "charging_rate_unit": "A",
                        "charging_schedule_period": [{"start_period": 0, "limit": 16}],
                    }
                ],
            },
        ),
        "Accepted",
    ),
    (call21.ClearChargingProfile(charging_profile_id=7), "Accepted"),
    # Accepted, or Scheduled when the charger's scenario has a transaction running on EVSE 1 by
    # then: which one depends on how fast the machine runs the tour against the virtual clock.
    (call21.ChangeAvailability(operational_status="Inoperative", evse={"id": 1}), {"Accepted", "Scheduled"}),
    (call21.ChangeAvailability(operational_status="Operative", evse={"id": 1}), {"Accepted", "Scheduled"}),
    (call21.UnlockConnector(evse_id=1, connector_id=1), None),
    (call21.DataTransfer(vendor_id="Alfen BV", message_id="GetCableInfo"), "Accepted"),
    (call21.Reset(type="ImmediateAndResume"), "Accepted"),
]


class Csms21(ChargePoint21):  # type: ignore[misc]
    """A 2.1 CSMS on the ocpp package: it validates every CALL and answer against its own copy
    of the 2.1 schemas, stops each transaction after STOP_AFTER meter reports, and tours one
    charger through backend commands."""

    def __init__(self, cp_id: str, connection: _Recorded, state: dict[str, Any]) -> None:
        super().__init__(cp_id, connection, response_timeout=5)  # loopback: milliseconds
        self.state = state
        self.reports: dict[str, int] = {}
        self.tasks: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        self.state["tasks"].append(task)
        task.add_done_callback(self.tasks.discard)

    @on(Action21.boot_notification)
    def on_boot(self, **_: Any) -> result21.BootNotification:
        return result21.BootNotification(current_time=_now(), interval=120, status="Accepted")

    @after(Action21.boot_notification)
    def after_boot(self, **_: Any) -> None:
        if self.id == self.state["tour"] and self.id not in self.state["toured"]:
            self.state["toured"].add(self.id)
            self._spawn(self._tour())

    async def _tour(self) -> None:
        """The tour from where it stopped. A connection the charger's scenario drops mid-tour
        (the slower the machine, the sooner in the tour) ends this part of it; the charger's
        next connection resumes it (see the handler), so the whole tour is always answered."""
        state = self.state
        state["touring"], state["tour_cut"] = True, False
        try:
            while state["tour_at"] < len(TOUR_21):
                request, expected = TOUR_21[state["tour_at"]]
                try:
                    answer = await self.call(request)
                except (ConnectionClosed, TimeoutError):
                    if self._connection.ws.close_code is None:
                        raise  # no answer on an open connection: a lost answer, not a cut
                    state["tour_cut"] = True
                    return  # resumed on the next connection
                state["tour_at"] += 1
                state["answers"].append((type(request).__name__, answer))
                if expected is not None:
                    allowed = {expected} if isinstance(expected, str) else expected
                    assert answer.status in allowed, (request, answer)
        finally:
            state["touring"] = False

    @on(Action21.heartbeat)
    def on_heartbeat(self) -> result21.Heartbeat:
        return result21.Heartbeat(current_time=_now())

    @on(Action21.status_notification)
    def on_status(self, **_: Any) -> result21.StatusNotification:
        return result21.StatusNotification()

    @on(Action21.notify_event)
    def on_notify_event(self, **_: Any) -> result21.NotifyEvent:
        return result21.NotifyEvent()

    @on(Action21.authorize)
    def on_authorize(self, id_token: dict[str, Any], **_: Any) -> result21.Authorize:
        return result21.Authorize(id_token_info={"status": "Accepted"})

    @on(Action21.meter_values)
    def on_meter_values(self, **_: Any) -> result21.MeterValues:
        return result21.MeterValues()

    @on(Action21.data_transfer)
    def on_data_transfer(self, **_: Any) -> result21.DataTransfer:
        return result21.DataTransfer(status="Accepted")

    @on(Action21.transaction_event)
    def on_transaction_event(
        self,
        event_type: str,
        transaction_info: dict[str, Any],
        id_token: dict[str, Any] | None = None,
        **kw: Any,
    ) -> result21.TransactionEvent:
        tx_id = transaction_info["transaction_id"]
        if event_type == "Updated" and kw.get("meter_value"):
            self.reports[tx_id] = self.reports.get(tx_id, 0) + 1
            if self.reports[tx_id] == self.state["stop_after"]:
                self._spawn(self.call(call21.RequestStopTransaction(transaction_id=tx_id)))
        if id_token is not None:
            return result21.TransactionEvent(id_token_info={"status": "Accepted"})
        return result21.TransactionEvent()


@asynccontextmanager
async def ocpp_package_csms_21(
    *, stop_after: int = 2, tour: str = "ALF-0002", subprotocols: tuple[str, ...] = ("ocpp2.1",)
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """The ocpp package's 2.1 CSMS (or its 2.0.1 one, if only ocpp2.0.1 is served) on 127.0.0.1:0.

    ``state`` gets the log of every connection, the subprotocols each charger offered, the tour's
    answers and every task the peer started (the test checks none failed).
    """
    state: dict[str, Any] = {
        "stop_after": stop_after,
        "tour": tour,
        "toured": set(),
        "tour_at": 0,  # the next command of the tour
        "touring": False,
        "tour_cut": False,  # the last part of the tour ended with its connection
        "answers": [],
        "tasks": [],
        "connections": [],
        "offered": [],
    }

    async def handler(connection: ServerConnection) -> None:
        assert connection.request is not None
        state["offered"].append(connection.request.headers.get("Sec-WebSocket-Protocol"))
        log: list[tuple[Direction, str]] = []
        state["connections"].append((connection.subprotocol, log))
        cp_id = connection.request.path.rsplit("/", 1)[-1]
        recorded = _Recorded(connection, log)
        cp: Any = (
            Csms21(cp_id, recorded, state)
            if connection.subprotocol == "ocpp2.1"
            else Csms201(cp_id, recorded, stop_after)  # type: ignore[arg-type]
        )
        resume = (
            isinstance(cp, Csms21)
            and cp_id in state["toured"]
            and not state["touring"]
            and state["tour_at"] < len(TOUR_21)
        )
        if resume:
            cp._spawn(cp._tour())
        with suppress(ConnectionClosed):
            await cp.start()

    async with serve(handler, "127.0.0.1", 0, subprotocols=list(subprotocols)) as server:  # type: ignore[arg-type]
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ocpp21", state


def validate_both_ways(connections: list[tuple[str | None, list[tuple[Direction, str]]]]) -> int:
    """Check every frame of every connection against our copy of its version's schemas; each
    CALLRESULT against the response schema of the CALL it answers. Returns the frames checked."""
    checked = 0
    for subprotocol, log in connections:
        version = schemas.normalize_version(subprotocol or "")
        actions: dict[tuple[Direction, str], str] = {}
        for direction, text in log:
            frame = parse(text)
            assert not isinstance(frame, CallError), (subprotocol, text)
            if isinstance(frame, Call):
                actions[(direction, frame.unique_id)] = frame.action
                violations = schemas.validate(version, frame.action, frame.payload, response=False)
            else:
                action = actions.pop((direction.reverse, frame.unique_id))
                violations = schemas.validate(version, action, frame.payload, response=True)
            assert violations == [], (subprotocol, text, violations)
            checked += 1
    return checked


@pytest.mark.parametrize("scenario", [*scenarios.BUILTIN, "fleet-day"])
async def test_v21_against_the_ocpp_package_21_csms(scenario: str) -> None:
    """Every scenario, 2.1 chargers against an independent 2.1 CSMS: no problem, and every frame
    both ways validates against the 2.1 schemas (ours, and the ocpp package's on its side)."""
    async with ocpp_package_csms_21() as (url, state):
        result = await fleet(url, chargers=5, version="2.1", scenario=scenario)
        async with asyncio.timeout(5):
            await asyncio.gather(*state["tasks"])  # re-raises what failed in the peer
    no_problems(result)
    assert {c.version for c in result.chargers} == {"2.1"} and result.fallbacks == {}
    assert {tuple(p.replace(" ", "").split(",")) for p in state["offered"]} == {("ocpp2.1", "ocpp2.0.1")}
    assert {proto for proto, _ in state["connections"]} == {"ocpp2.1"}
    assert validate_both_ways(state["connections"]) > 100
    # every charger charges; the toured one may not: its EVSE is Inoperative for a moment of
    # the tour and the tour resets it, both in real time against the scenario's virtual clock
    untoured = [c for c in result.chargers if c.identity.charge_point_id != state["tour"]]
    assert len(untoured) == 4 and all(c.transactions >= 1 for c in untoured), [
        (c.identity.charge_point_id, c.transactions) for c in result.chargers
    ]
    assert result.received["RequestStopTransaction"] >= 1
    # ALF-0002's tour, Reset ImmediateAndResume (2.1 only) last: answered in order, none lost or
    # repeated across reconnects; then a reboot. The tour runs in real time, the scenario in
    # virtual time: on a slow (loaded) machine the charger may finish its scenario and leave
    # before the tour ends. Then the tour stopped only because that connection closed.
    answered = [name for name, _ in state["answers"]]
    tour = [type(r).__name__ for r, _ in TOUR_21]
    assert answered and answered == tour[: len(answered)]
    if answered == tour:
        assert result.chargers[1].boots == 2 and result.received["Reset"] == 1
    else:
        assert state["tour_cut"] and not state["touring"], answered
    if scenario == "faulty":
        assert result.sent["NotifyEvent"] == 2 * 5
    if scenario in ("reconnect", "fleet-day"):
        assert sum(c.delivered_offline for c in result.chargers) > 0


async def test_v21_charger_falls_back_to_201_when_the_backend_picks_it() -> None:
    """A backend that serves only ocpp2.0.1 (the ocpp package's 2.0.1 CSMS): the 2.1 charger
    offered both, speaks 2.0.1 on every connection, and every frame validates as 2.0.1."""
    async with ocpp_package_csms_21(subprotocols=("ocpp2.0.1",)) as (url, state):
        result = await fleet(url, chargers=3, version="2.1", scenario="reconnect")
    no_problems(result)
    assert {tuple(p.replace(" ", "").split(",")) for p in state["offered"]} == {("ocpp2.1", "ocpp2.0.1")}
    assert {proto for proto, _ in state["connections"]} == {"ocpp2.0.1"}
    assert validate_both_ways(state["connections"]) > 50
    connections = sum(c.connections for c in result.chargers)
    assert result.fallbacks == {"2.1 -> 2.0.1": connections} and connections >= 6
    assert all(c.spoken == {"2.0.1": c.connections} for c in result.chargers)
    out = io.StringIO()
    print_summary(result, Console(file=out, width=200))
    assert f"the backend picked an older version: 2.1 -> 2.0.1 ({connections} connections)" in out.getvalue()


async def test_simulate_metrics_port_serves_the_fleet_while_it_runs() -> None:
    """Issue 22.3: `simulate --metrics-port`: scraped (Prometheus' parser) while the fleet runs,
    the chargers connected and the CALLs they sent are there."""
    import signal
    import subprocess
    import sys

    from tests.test_cli_capture import free_port
    from tests.test_replay import _metrics

    port = free_port()
    async with ReferenceCsms() as csms:
        proc = await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, "-m", "ocpp_replay.cli", "simulate", "--target", csms.url, "--chargers", "3",
             "--time-scale", "0.01", "--metrics-port", str(port), "--no-progress"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        seen: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        try:
            async with asyncio.timeout(20):
                while seen.get(("ocpp_simulate_calls_total", ()), 0) < 3:
                    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                    with suppress(OSError):
                        seen = await asyncio.to_thread(_metrics, port)
                    await asyncio.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.communicate, timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.communicate)
    assert seen[("ocpp_simulate_chargers", ())] == 3
    assert seen[("ocpp_simulate_chargers_connected", ())] >= 1
    assert seen[("ocpp_simulate_problems_total", ())] == 0
    assert len(csms.backend.chargers) >= 1
