from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import fastjsonschema
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


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


_ODD = [None, 1.0, 2.5, "x", [], {}, True, 7, -3, "2024-01-01T00:00:00Z", 10**20]
_DATE_TIMES = ["2024-01-01T00:00:00Z", "2024-01-01T00:00:00.123+01:00", "2024-13-01T00:00:00Z", "yesterday"]


def _payload(schema: dict[str, Any], root: dict[str, Any], rng: random.Random, depth: int = 0) -> Any:
    """A payload for SCHEMA that is often valid and often wrong in one of the ways chargers are
    (wrong types, 1.0 for an integer, unknown enum values, too long, bad dates, keys missing)."""
    schema = _resolve(schema, root)
    if rng.random() < 0.03:
        return rng.choice(_ODD)
    if "enum" in schema:
        return rng.choice(schema["enum"]) if rng.random() > 0.05 else "Nope"
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = rng.choice(kind)
    if kind == "object" or "properties" in schema:
        required = set(schema.get("required", ()))
        out = {
            k: _payload(v, root, rng, depth + 1)
            for k, v in schema.get("properties", {}).items()
            if depth < 6 and ((k in required and rng.random() > 0.03) or rng.random() < 0.5)
        }
        if rng.random() < 0.03:
            out["extra"] = 1
        return out
    if kind == "array":
        n = rng.choice([0, 1, 2]) if rng.random() > 0.05 else schema.get("maxItems", 2) + 1
        return [_payload(schema.get("items", {}), root, rng, depth + 1) for _ in range(n if depth < 6 else 0)]
    if kind == "string":
        if schema.get("format") == "date-time":
            return rng.choice(_DATE_TIMES)
        longest = schema.get("maxLength", 20)
        return "a" * rng.choice([0, 1, min(longest, 5), longest, longest + 1])
    if kind == "integer":
        return rng.choice([0, 1, -1, 1.0, 2.5, 10**12, True, schema.get("minimum", 1) - 1])
    if kind == "number":
        return rng.choice([0, 1.5, -2, 1e300, True, "1"])
    if kind == "boolean":
        return rng.choice([True, False, 0, 1])
    return rng.choice(_ODD)


def test_the_compiled_check_and_jsonschema_agree_on_random_payloads_of_every_schema() -> None:
    """validate() trusts fastjsonschema's compiled schema for "valid" and asks jsonschema only
    about what it rejects: the two must agree, or a violation would go unreported (or a valid
    payload be reported with no violation listed)."""
    rng = random.Random(12)
    checked = valid = 0
    for version in schemas.VERSIONS:
        for response in (False, True):
            for action in sorted(schemas.actions(version, response=response)):
                schema = schemas._schema(version, action, response)
                full = schemas._validator(version, action, response)
                fast = schemas._compiled(version, action, response)
                assert schema is not None and full is not None and fast is not None
                for _ in range(8):
                    payload = _payload(schema, schema, rng)
                    try:
                        fast(copy.deepcopy(payload))  # deep copy: it must not change the payload
                        fast_valid = True
                    except fastjsonschema.JsonSchemaException:
                        fast_valid = False
                    errors = [e.message for e in full.iter_errors(payload)]
                    assert fast_valid == (not errors), (version, action, response, payload, errors)
                    assert (validate(version, action, payload, response=response) == []) == fast_valid
                    checked += 1
                    valid += fast_valid
    assert checked > 3000 and 0.2 * checked < valid < 0.8 * checked  # both kinds, many of each


def test_formats_as_jsonschema_checks_them_here() -> None:
    """date-time is checked, uri is not (jsonschema's checker here knows date-time only)."""
    ok = {"location": "not a uri", "retrieveDate": "2024-01-01T00:00:00Z"}
    assert validate("1.6", "UpdateFirmware", ok, response=False) == []
    bad = dict(ok, retrieveDate="2024-01-01 soon")
    assert [v.path for v in validate("1.6", "UpdateFirmware", bad, response=False)] == ["retrieveDate"]


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
    """What keeps a check per frame cheap: the schema is compiled on first use and reused; a
    valid payload never reaches jsonschema. (The cost per frame is a figure for
    benchmarks/schema_validation.py, not a timed test.)"""
    from ocpp_replay.core.schemas import _compiled, _validator

    payload = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}
    validate("1.6", "StatusNotification", payload, response=False)
    before, full = _compiled.cache_info(), _validator.cache_info()
    for n in range(2, 202):  # payloads not seen before: each validated, none recompiled
        assert validate("1.6", "StatusNotification", {**payload, "connectorId": n}, response=False) == []
    after = _compiled.cache_info()
    assert after.misses == before.misses and after.hits >= before.hits + 200
    assert _validator.cache_info() == full  # jsonschema not asked
    bad = {**payload, "status": "Sleeping"}
    assert [v.path for v in validate("1.6", "StatusNotification", bad, response=False)] == ["status"]
    assert _validator.cache_info().hits + _validator.cache_info().misses > full.hits + full.misses


def test_a_schema_file_is_read_once_for_the_compiled_check_and_jsonschema() -> None:
    """The first valid payload of an action compiles its schema, the first invalid one builds
    jsonschema's validator: from the one reading of the schema's file, left as it was read."""
    from ocpp_replay.core.schemas import _compiled, _schema, _validator

    version, action = "2.0.1", "NotifyCustomerInformation"
    for cache in (_compiled, _validator, _schema):  # as in a fresh process
        cache.cache_clear()
    before = _schema.cache_info()
    ok = {"data": "x", "seqNo": 0, "generatedAt": "2026-12-04T10:00:00Z", "requestId": 1}
    assert validate(version, action, ok, response=False) == []
    assert [v.path for v in validate(version, action, {**ok, "seqNo": "0"}, response=False)] == ["seqNo"]
    after = _schema.cache_info()
    assert after.misses == before.misses + 1 and after.hits >= before.hits + 1
    from importlib import resources

    path = resources.files("ocpp") / "v201" / "schemas" / "NotifyCustomerInformationRequest.json"
    assert _schema(version, action, False) == json.loads(path.read_text(encoding="utf-8"))  # unchanged


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
