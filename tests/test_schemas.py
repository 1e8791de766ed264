from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocpp_replay.core import schemas
from ocpp_replay.core.frames import Call, parse
from ocpp_replay.core.schemas import Violation, normalize_version, validate
from ocpp_replay.errors import ConfigError

ALFEN = (
    Path(__file__).resolve().parent / "data" / "alfen-frames.jsonl"
)  # real Alfen frames, from public issue threads


def alfen_calls() -> list[Call]:
    out = []
    for line in ALFEN.read_text().splitlines():
        frame = parse(json.loads(line)["raw"])
        if isinstance(frame, Call):
            out.append(frame)
    return out


@pytest.mark.skipif(not ALFEN.exists(), reason="shared Alfen frames not present")
def test_alfen_current_max_context_fails_with_its_path() -> None:
    (meter,) = [c for c in alfen_calls() if c.action == "MeterValues"]
    found = validate("1.6", "MeterValues", meter.payload, response=False)
    assert [v.path for v in found] == ["meterValue[0].sampledValue[1].context"]
    assert found[0].keyword == "enum"
    assert "CurrentMax" in found[0].message


@pytest.mark.skipif(not ALFEN.exists(), reason="shared Alfen frames not present")
def test_other_alfen_frames_pass() -> None:
    for call in alfen_calls():
        if call.action != "MeterValues":
            assert validate("ocpp1.6", call.action, call.payload, response=False) == [], call


def test_clean_meter_values_pass() -> None:
    payload = {
        "connectorId": 1,
        "transactionId": 17,
        "meterValue": [
            {
                "timestamp": "2024-05-01T10:00:00Z",
                "sampledValue": [
                    {"value": "1234.5", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
                    {"value": "15.9", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
                ],
            }
        ],
    }
    assert validate("1.6", "MeterValues", payload, response=False) == []


def test_response_schemas() -> None:
    ok = {"currentTime": "2024-05-01T10:00:00.123+00:00", "interval": 300, "status": "Accepted"}
    assert validate("1.6", "BootNotification", ok, response=True) == []
    bad = {"currentTime": "yesterday", "interval": "300", "status": "Maybe"}
    paths = {v.path for v in validate("1.6", "BootNotification", bad, response=True)}
    assert paths == {"currentTime", "interval", "status"}
    assert validate("2.0.1", "Heartbeat", {"currentTime": "2024-05-01T10:00:00Z"}, response=True) == []


def test_201_request_and_missing_property() -> None:
    payload: dict[str, Any] = {"reason": "PowerUp", "chargingStation": {"vendorName": "Alfen BV"}}
    found = validate("ocpp2.0.1", "BootNotification", payload, response=False)
    assert found == [Violation("chargingStation", "'model' is a required property", "required")]
    payload["chargingStation"]["model"] = "NG910-60023"
    assert validate("ocpp2.0", "BootNotification", payload, response=False) == []


def test_a_payload_validated_again_gives_the_same_answer_from_memory() -> None:
    bad = {"interval": "300", "status": "Maybe", "currentTime": "yesterday"}
    first = validate("1.6", "BootNotification", bad, response=True)
    first.append(Violation("mine", "the caller's own list"))  # a caller may change its list
    reordered = {"status": "Maybe", "currentTime": "yesterday", "interval": "300"}
    again = validate("1.6", "BootNotification", reordered, response=True)
    assert {v.path for v in again} == {"currentTime", "interval", "status"}
    key = ("1.6", "BootNotification", True, json.dumps(bad, sort_keys=True, separators=(",", ":")))
    assert key in schemas._checked  # the second answer came from memory
    # the same text for another action, direction or version is validated on its own
    assert validate("1.6", "BootNotification", bad, response=False) != again
    assert validate("1.6", "Heartbeat", {}, response=True) != validate("1.6", "Heartbeat", {}, response=False)


def test_unknown_action_and_version() -> None:
    assert validate("1.6", "TransactionEvent", {}, response=False) == [Violation("", "unknown action")]
    assert validate("2.0.1", "StartTransaction", {}, response=True) == [Violation("", "unknown action")]
    with pytest.raises(ConfigError):
        validate("1.5", "Heartbeat", {}, response=False)
    assert normalize_version("OCPP1.6") == "1.6"


def test_action_lists() -> None:
    assert "StartTransaction" in schemas.actions("1.6")
    assert "TransactionEvent" in schemas.actions("2.0.1")
    assert "TransactionEvent" in schemas.actions("2.0.1", response=True)
    assert not any(a.endswith(("Request", "Response")) for a in schemas.actions("2.0.1"))


def test_21_uses_the_21_schemas() -> None:
    """2.1 is checked against ocpp/v21: its own actions, its own enums, its own aliases."""
    boot = {"reason": "PowerUp", "chargingStation": {"model": "NG910-60023", "vendorName": "Alfen BV"}}
    for name in ("2.1", "ocpp2.1", "OCPP2.1", "21"):
        assert normalize_version(name) == "2.1"
        assert validate(name, "BootNotification", boot, response=False) == []
    found = validate("2.1", "BootNotification", {"bogus": 1}, response=False)
    assert {(v.path, v.keyword) for v in found} == {("", "additionalProperties"), ("", "required")}
    # Actions only 2.1 has, including the SEND without a Request suffix or a response.
    assert {"SetDefaultTariff", "NotifyPeriodicEventStream", "BatterySwap"} <= schemas.actions("2.1")
    assert "NotifyPeriodicEventStream" not in schemas.actions("2.1", response=True)
    assert not ({"SetDefaultTariff", "BatterySwap"} & schemas.actions("2.0.1"))
    assert validate("2.0.1", "SetDefaultTariff", {}, response=False) == [Violation("", "unknown action")]
    # An enum value 2.1 added is valid in 2.1 and not in 2.0.1.
    reset = {"type": "ImmediateAndResume"}
    assert validate("2.1", "Reset", reset, response=False) == []
    assert [v.keyword for v in validate("2.0.1", "Reset", reset, response=False)] == ["enum"]
    stream = {"id": 1, "pending": 0, "basetime": "2025-01-01T00:00:00Z", "data": [{"t": 0.5, "v": "1"}]}
    assert validate("2.1", "NotifyPeriodicEventStream", stream, response=False) == []
    with pytest.raises(ConfigError, match=r"expected 1\.6, 2\.0\.1, 2\.1"):
        normalize_version("3.0")


def test_each_schema_is_compiled_once_for_every_frame() -> None:
    """What keeps a check per frame cheap: the validator is compiled on first use and reused.
    (The cost per frame is a figure for benchmarks/schema_validation.py, not a timed test.)"""
    from ocpp_replay.core.schemas import _validator

    payload = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}
    validate("1.6", "StatusNotification", payload, response=False)
    before = _validator.cache_info()
    for n in range(2, 202):  # payloads not seen before: each validated, none recompiled
        assert validate("1.6", "StatusNotification", {**payload, "connectorId": n}, response=False) == []
    after = _validator.cache_info()
    assert after.misses == before.misses and after.hits >= before.hits + 200


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["1.6", "2.0.1", "2.1"]),
    st.sampled_from(
        ["MeterValues", "BootNotification", "TransactionEvent", "NotifyPeriodicEventStream", "Nope"]
    ),
    st.dictionaries(
        st.text(max_size=8),
        st.recursive(st.none() | st.integers() | st.text(max_size=5), st.lists, max_leaves=4),
        max_size=4,
    ),
    st.booleans(),
)
def test_validate_never_raises(version: str, action: str, payload: dict[str, Any], response: bool) -> None:
    for violation in validate(version, action, payload, response=response):
        assert isinstance(violation.path, str) and violation.message
