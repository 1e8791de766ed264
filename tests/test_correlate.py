"""Correlation of backend-assigned values, timestamp shifting and paths (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocpp_replay.core.correlate import (
    BUILTIN_16,
    BUILTIN_21,
    BUILTIN_201,
    Correlator,
    Message,
    builtin_correlations,
    ocpp_version,
    shift_timestamps,
)
from ocpp_replay.core.paths import ANY, DELETE, find, format_path, parse_path, rewrite
from ocpp_replay.errors import ConfigError


def test_v16_transaction_id_learned_and_applied() -> None:
    c = Correlator(builtin_correlations("1.6"))
    learned = c.learn("StartTransaction", Message.RESPONSE, {"transactionId": 17}, {"transactionId": 5000})
    assert learned == [("transactionId", 17, 5000)]
    mv = {"connectorId": 1, "transactionId": 17, "meterValue": []}
    out = c.apply("MeterValues", Message.REQUEST, mv)
    assert out == {"connectorId": 1, "transactionId": 5000, "meterValue": []}
    assert mv["transactionId"] == 17  # input untouched
    assert c.apply("RemoteStopTransaction", Message.REQUEST, {"transactionId": 17}) == {"transactionId": 5000}
    sp = {"connectorId": 1, "csChargingProfiles": {"transactionId": 17, "chargingProfileId": 3}}
    assert c.apply("SetChargingProfile", Message.REQUEST, sp)["csChargingProfiles"]["transactionId"] == 5000
    # other values and other actions are untouched, and unchanged payloads are the same object
    other = {"transactionId": 18}
    assert c.apply("StopTransaction", Message.REQUEST, other) is other
    hb: dict[str, object] = {}
    assert c.apply("Heartbeat", Message.REQUEST, hb) is hb


def test_ids_keep_their_type() -> None:
    c = Correlator(builtin_correlations("1.6"))
    c.learn("StartTransaction", Message.RESPONSE, {"transactionId": 1}, {"transactionId": 2})
    assert c.apply("StopTransaction", Message.REQUEST, {"transactionId": "1"}) == {"transactionId": "1"}
    assert c.apply("StopTransaction", Message.REQUEST, {"transactionId": True}) == {"transactionId": True}


def test_v201_remote_start_id_from_backend_call() -> None:
    c = Correlator(builtin_correlations("2.0.1"))
    c.learn("RequestStartTransaction", Message.REQUEST, {"remoteStartId": 5}, {"remoteStartId": 900})
    ev = {"eventType": "Started", "transactionInfo": {"transactionId": "TX-1", "remoteStartId": 5}}
    out = c.apply("TransactionEvent", Message.REQUEST, ev)
    assert out["transactionInfo"] == {"transactionId": "TX-1", "remoteStartId": 900}
    assert c.uses("TransactionEvent", Message.REQUEST, ev) == [("remoteStartId", 5)]
    assert c.defines("RequestStartTransaction", Message.REQUEST, {"remoteStartId": 5}) == [
        ("remoteStartId", 5)
    ]
    assert [format_path(p) for p in c.source_paths("RequestStartTransaction", Message.REQUEST)] == [
        "remoteStartId"
    ]


def test_versions() -> None:
    assert ocpp_version("ocpp1.6") == "1.6"
    assert ocpp_version("ocpp2.0.1") == "2.0.1"
    assert ocpp_version("ocpp2.0") == "2.0.1"
    assert ocpp_version("ocpp2.1") == "2.1"
    assert ocpp_version("OCPP2.1") == "2.1"
    assert ocpp_version("ocpp2.2") is None
    assert ocpp_version(None) is None
    assert builtin_correlations("2.1")[: len(BUILTIN_201)] == BUILTIN_201
    assert builtin_correlations(None) == BUILTIN_16 + BUILTIN_21


def test_v21_tariff_and_der_ids_from_the_backend() -> None:
    c = Correlator(builtin_correlations("2.1"))
    learned = c.learn(
        "SetDefaultTariff",
        Message.REQUEST,
        {"evseId": 0, "tariff": {"tariffId": "T-1"}},
        {"evseId": 0, "tariff": {"tariffId": "T-9"}},
    )
    assert learned == [("defaultTariffId", "T-1", "T-9")]
    ev = {"eventType": "Started", "transactionInfo": {"transactionId": "TX-1", "tariffId": "T-1"}}
    assert c.apply("TransactionEvent", Message.REQUEST, ev)["transactionInfo"]["tariffId"] == "T-9"
    answer = {"status": "Accepted", "tariffAssignments": [{"tariffId": "T-1", "tariffKind": "DefaultTariff"}]}
    assert c.apply("GetTariffs", Message.RESPONSE, answer)["tariffAssignments"][0]["tariffId"] == "T-9"
    assert c.apply("ClearTariffs", Message.REQUEST, {"tariffIds": ["T-1", "T-2"]}) == {
        "tariffIds": ["T-9", "T-2"]
    }
    # A tariff handed out in an Authorize answer is correlated too.
    c.learn("Authorize", Message.RESPONSE, {"tariff": {"tariffId": "A"}}, {"tariff": {"tariffId": "B"}})
    assert c.apply("TransactionEvent", Message.REQUEST, {"transactionInfo": {"tariffId": "A"}}) == {
        "transactionInfo": {"tariffId": "B"}
    }
    c.learn("SetDERControl", Message.REQUEST, {"controlId": "D1"}, {"controlId": "D2"})
    assert c.apply("NotifyDERStartStop", Message.REQUEST, {"controlId": "D1", "started": True}) == {
        "controlId": "D2",
        "started": True,
    }
    c.learn("RequestBatterySwap", Message.REQUEST, {"requestId": 4}, {"requestId": 40})
    assert c.apply("BatterySwap", Message.REQUEST, {"requestId": 4}) == {"requestId": 40}
    # 2.0.1's correlations hold in 2.1, and 2.1's are not 2.0.1's.
    c.learn("RequestStartTransaction", Message.REQUEST, {"remoteStartId": 5}, {"remoteStartId": 900})
    assert c.apply("TransactionEvent", Message.REQUEST, {"transactionInfo": {"remoteStartId": 5}}) == {
        "transactionInfo": {"remoteStartId": 900}
    }
    assert not Correlator(builtin_correlations("2.0.1")).source_paths("SetDefaultTariff", Message.REQUEST)


def test_shift_timestamps_keeps_form() -> None:
    p = {
        "timestamp": "2026-01-01T00:00:00Z",
        "meterValue": [{"timestamp": "2026-01-01T00:00:05.123Z", "sampledValue": [{"value": "2026"}]}],
        "offset": "2026-01-01T01:00:00+01:00",
        "micro": "2026-01-01T00:00:00.123456789Z",
        "text": "not 2026-01-01T00:00:00Z",
        "n": 3,
    }
    out = shift_timestamps(p, 3600.5)
    assert out["timestamp"] == "2026-01-01T01:00:00Z"  # no fraction in, none out
    assert out["meterValue"][0]["timestamp"] == "2026-01-01T01:00:05.623Z"
    assert out["offset"] == "2026-01-01T02:00:00+01:00"
    assert out["micro"] == "2026-01-01T01:00:00.623456789Z"  # past the microsecond: kept as it was
    assert out["text"] == p["text"] and out["meterValue"][0]["sampledValue"] == [{"value": "2026"}]
    assert shift_timestamps(p, 0) is p
    assert shift_timestamps({"a": "2026-13-45T99:00:00Z"}, 10) == {"a": "2026-13-45T99:00:00Z"}
    assert shift_timestamps({"a": "0999-12-31T23:59:59Z"}, 1) == {"a": "1000-01-01T00:00:00Z"}
    assert shift_timestamps({"a": "0999-06-01T00:00:00Z"}, 1) == {"a": "0999-06-01T00:00:01Z"}  # four digits


@given(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1)), st.integers(-(10**8), 10**8)
)
def test_shift_roundtrip(dt: datetime, ms: int) -> None:
    text = dt.replace(tzinfo=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    seconds = ms / 1000
    there = shift_timestamps({"t": text}, seconds)["t"]
    assert datetime.fromisoformat(there) == datetime.fromisoformat(text) + timedelta(seconds=seconds)
    assert shift_timestamps({"t": there}, -seconds)["t"] == text


def test_paths() -> None:
    assert parse_path("$.a.b[*].c") == ("a", "b", ANY, "c")
    assert parse_path("meterValue[0].timestamp") == ("meterValue", 0, "timestamp")
    assert parse_path("") == () and parse_path("$") == ()
    assert format_path(("a", 0, "b", ANY)) == "a[0].b[*]"
    doc = {"a": [{"x": 1}, {"x": 2}], "b": {"x": 3}}
    assert find(doc, parse_path("a[*].x")) == [(("a", 0, "x"), 1), (("a", 1, "x"), 2)]
    assert find(doc, parse_path("*.x")) == [(("b", "x"), 3)]
    out = rewrite(doc, parse_path("a[*].x"), lambda v: v * 10)
    assert out == {"a": [{"x": 10}, {"x": 20}], "b": {"x": 3}} and doc["a"][0]["x"] == 1
    assert rewrite(doc, parse_path("a[0]"), lambda v: DELETE) == {"a": [{"x": 2}], "b": {"x": 3}}
    assert rewrite(doc, parse_path("zz.y"), lambda v: 0) is doc
    for bad in ("a..b", "a[x]", "a]", "[", "a.[0"):
        with pytest.raises(ConfigError):
            parse_path(bad)


@given(st.text(max_size=30))
def test_parse_path_raises_only_config_error(text: str) -> None:
    try:
        path = parse_path(text)
    except ConfigError:
        return
    assert parse_path(format_path(path)) == path


def test_correlations_sharing_a_target_do_not_chain() -> None:
    """NotifyReport's requestId is GetBaseReport's or GetReport's: a value is replaced once,
    even when one correlation's live value is another's recorded value."""
    c = Correlator(BUILTIN_201)
    c.learn("GetBaseReport", Message.REQUEST, {"requestId": 5}, {"requestId": 9})
    c.learn("GetReport", Message.REQUEST, {"requestId": 9}, {"requestId": 12})
    assert c.apply("NotifyReport", Message.REQUEST, {"requestId": 5, "seqNo": 0}) == {
        "requestId": 9,
        "seqNo": 0,
    }
    assert c.apply("NotifyReport", Message.REQUEST, {"requestId": 9, "seqNo": 0}) == {
        "requestId": 12,
        "seqNo": 0,
    }
    unchanged = {"requestId": 7}
    assert c.apply("NotifyReport", Message.REQUEST, unchanged) is unchanged


def test_ids_in_nested_arrays_are_replaced_and_equal_numbers_elsewhere_are_not() -> None:
    from ocpp_replay.core.correlate import Correlation, Location

    corr = Correlation(
        "ref",
        Location.of("DataTransfer", "response", "data[*].ref"),
        (Location.of("MeterValues", "request", "meterValue[*].sampledValue[*].context"),),
    )
    c = Correlator((*BUILTIN_16, corr))
    c.learn("StartTransaction", Message.RESPONSE, {"transactionId": 1}, {"transactionId": 17})
    c.learn(
        "DataTransfer",
        Message.RESPONSE,
        {"data": [{"ref": "a"}, {"ref": "1"}]},
        {"data": [{"ref": "A"}, {"ref": "X"}]},
    )
    recorded = {
        "connectorId": 1,
        "transactionId": 1,
        "meterValue": [
            {
                "timestamp": "t",
                "sampledValue": [{"value": "1", "context": "1"}, {"value": "a", "context": "a"}],
            },
            {"timestamp": "t", "sampledValue": [{"value": "1", "context": "Sample.Periodic"}]},
        ],
    }
    assert c.apply("MeterValues", Message.REQUEST, recorded) == {
        "connectorId": 1,  # equals the recorded transaction id, but is not one
        "transactionId": 17,
        "meterValue": [
            {
                "timestamp": "t",
                "sampledValue": [{"value": "1", "context": "X"}, {"value": "a", "context": "A"}],
            },
            {"timestamp": "t", "sampledValue": [{"value": "1", "context": "Sample.Periodic"}]},
        ],
    }
