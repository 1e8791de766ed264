"""Redaction: the JSON span walker, pseudonyms, raw-text editing, the redact command, and replay."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocpp_replay.capture.proxy import ProxyServer
from ocpp_replay.core.frames import Direction
from ocpp_replay.core.rules import parse_rules
from ocpp_replay.errors import ConfigError
from ocpp_replay.replay import run_replay
from ocpp_replay.share.redact import DEFAULT_FIELDS, Redactor, parse_fields, redact_capture, string_leaves
from ocpp_replay.store import Store
from tests.replay_peers import TAG, Behaviour, csms, run_charger16, run_charger201
from tests.test_exchange import TRICKY, alfen_frames, dump, error_line, make_capture, run, standard_capture

KEY = b"site-secret"
BOOT = (
    '[2,"210","BootNotification",{"chargePointVendor":"Alfen BV","chargePointModel":"NG910-60023",'
    '"chargePointSerialNumber":"ace0100201","chargeBoxSerialNumber":"CKcharger",'
    '"firmwareVersion":"4.15.7-4054","iccid":"8931080019073478912","imsi":"204080123456789",'
    '"meterSerialNumber":"MSN-77"}]'
)
START = (
    '[2, "7" , "StartTransaction" , {"connectorId":1,"idTag":"ACE0177305","meterStart":2145278, "x":1.50}]'
)
METER = '[2,"4","MeterValues",{"connectorId":1,"transactionId":9223372036854775807,"idTag":"ACE0177305"}]'
AUTH201 = (
    '[2,"a1","Authorize",{"idToken":{"idToken":"04E91C5A","type":"ISO14443",'
    '"additionalInfo":[{"additionalIdToken":"EMP-42","type":"contract"}]},'
    '"groupIdToken":{"idToken":"GRP-1","type":"Central"}}]'
)
BOOT201 = (
    '[2,"b1","BootNotification",{"reason":"PowerUp","chargingStation":{"model":"m","vendorName":"v",'
    '"serialNumber":"SN-201","modem":{"iccid":"89310800190734789","imsi":"204080123456780"}}}]'
)


# ----------------------------------------------------------------------------- the walker

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    if isinstance(value, dict):
        return [s for item in value.values() for s in strings_in(item)]
    return []


@settings(max_examples=300, deadline=None)
@given(
    json_values, st.sampled_from([None, 0, 2]), st.booleans(), st.sampled_from([(",", ":"), (" , ", " : ")])
)
def test_walker_finds_every_string_with_its_exact_span(
    value: Any, indent: int | None, ascii_only: bool, separators: tuple[str, str]
) -> None:
    text = json.dumps(value, indent=indent, ensure_ascii=ascii_only, separators=separators)
    leaves = string_leaves(text)
    assert [leaf.value for leaf in leaves] == strings_in(json.loads(text))
    for leaf in leaves:
        assert json.loads(text[leaf.start : leaf.end]) == leaf.value


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet='[]{}",:0123456789.eE+-tfrunlasNIy \\\n"abc', max_size=30))
def test_walker_accepts_exactly_what_json_accepts(text: str) -> None:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        with pytest.raises(ValueError):
            string_leaves(text)
    else:
        string_leaves(text)


# ----------------------------------------------------------------------------- the pure core


def spans_changed(before: str, after: str) -> list[tuple[str, str]]:
    """(old, new) of the strings that differ: everything else must be byte-identical."""
    old, new = string_leaves(before), string_leaves(after)
    assert len(old) == len(new)
    changed = [(a, b) for a, b in zip(old, new, strict=True) if a.value != b.value]
    # Rebuild `after` from `before` with just those spans replaced: it must match exactly.
    rebuilt, last = [], 0
    for a, b in changed:
        rebuilt += [before[last : a.start], after[b.start : b.end]]
        last = a.end
    assert "".join([*rebuilt, before[last:]]) == after
    return [(a.value, b.value) for a, b in changed]


def test_fields_are_replaced_in_the_raw_text_and_nothing_else_changes() -> None:
    r = Redactor(KEY)
    new = r.text(BOOT)
    changed = dict(spans_changed(BOOT, new))
    assert set(changed) == {"ace0100201", "CKcharger", "8931080019073478912", "204080123456789", "MSN-77"}
    assert changed["ace0100201"].startswith("sn-") and len(changed["ace0100201"]) == 15
    assert changed["8931080019073478912"].startswith("iccid-")
    assert changed["204080123456789"].startswith("imsi-")
    payload = json.loads(new)[3]
    assert payload["chargePointVendor"] == "Alfen BV" and payload["firmwareVersion"] == "4.15.7-4054"
    assert all(len(v) <= 20 for v in changed.values())  # CiString20/25 limits still hold

    start = r.text(START)
    assert spans_changed(START, start) == [("ACE0177305", r.pseudonym("tag", "ACE0177305"))]
    assert '"meterStart":2145278, "x":1.50}' in start and start.startswith('[2, "7" , "StartTransaction" ,')
    meter = r.text(METER)
    assert "9223372036854775807" in meter  # never through a float
    assert json.loads(meter)[3]["transactionId"] == 9223372036854775807


def test_201_id_tokens_serials_and_modem() -> None:
    r = Redactor(KEY)
    changed = dict(spans_changed(AUTH201, r.text(AUTH201)))
    assert set(changed) == {"04E91C5A", "EMP-42", "GRP-1"}
    assert all(v.startswith("tag-") for v in changed.values())
    assert json.loads(r.text(AUTH201))[3]["idToken"]["type"] == "ISO14443"
    changed = dict(spans_changed(BOOT201, r.text(BOOT201)))
    assert set(changed) == {"SN-201", "89310800190734789", "204080123456780"}


def test_frames_without_anything_to_redact_are_the_same_object() -> None:
    r = Redactor(KEY)
    for _, raw in [*alfen_frames()[1:], (None, '[3,"1",{}]'), (None, "not json")]:
        if "Serial" not in raw and "idTag" not in raw:
            assert r.text(raw) is raw
    row = {"raw": None, "raw_bytes": b"\xff\xfe"}
    assert r.frame(row) is row


def test_pseudonyms_are_deterministic_per_key() -> None:
    a, b, other = Redactor(KEY), Redactor(KEY), Redactor(b"another key")
    assert a.text(START) == b.text(START) != other.text(START)
    # the same value gets the same pseudonym in every message that carries it
    tag = a.pseudonym("tag", "ACE0177305")
    assert tag in a.text(START) and tag in a.text(METER)
    assert json.loads(a.text(START))[3]["idTag"] == json.loads(a.text(METER))[3]["idTag"]


def test_known_values_are_swept_from_free_text_but_not_from_the_envelope() -> None:
    r = Redactor(KEY)
    r.learn(START)
    tag = r.pseudonym("tag", "ACE0177305")
    data = json.dumps({"idTag": "ACE0177305", "n": 1})
    transfer = json.dumps([2, "ACE0177305", "DataTransfer", {"vendorId": "Alfen BV", "data": data}])
    out = json.loads(r.text(transfer))
    assert out[1] == "ACE0177305"  # the unique id is the envelope: untouched
    assert json.loads(out[3]["data"]) == {"idTag": tag, "n": 1}
    assert r.text("garbage ACE0177305 garbage") == f"garbage {tag} garbage"
    binary = r.frame({"raw": None, "raw_bytes": START.encode()})
    assert tag.encode() in binary["raw_bytes"]


def test_fields_option() -> None:
    assert parse_fields(["default,vendorErrorCode=err"]) == {**DEFAULT_FIELDS, "vendorErrorCode": "err"}
    assert parse_fields(["idTag", "iccid"]) == {"idTag": "tag", "iccid": "iccid"}
    with pytest.raises(ConfigError):
        parse_fields(["a=b c"])
    only_tags = Redactor(KEY, parse_fields(["idTag"]))
    assert only_tags.text(BOOT) is BOOT


def test_charge_point_ids_in_sessions() -> None:
    r = Redactor(KEY, charge_point_ids=True)
    r.learn_charge_point("ALF/0001")
    cp = r.pseudonym("cp", "ALF/0001")
    row = r.session(
        {
            "charge_point_id": "ALF/0001",
            "path": "/ocpp/ALF%2F0001",
            "upstream_url": "ws://csms:8180/ocpp/ALF%2F0001?a=1",
            "auth_user": "ALF/0001",
            "remote_addr": "10.0.0.7",
        }
    )
    assert row == {
        "charge_point_id": cp,
        "path": f"/ocpp/{cp}",
        "upstream_url": f"ws://csms:8180/ocpp/{cp}?a=1",
        "auth_user": cp,
        "remote_addr": r.pseudonym("ip", "10.0.0.7"),
    }
    assert row["remote_addr"].startswith("ip-")
    assert r.session({"charge_point_id": "X", "auth_user": "installer"})["auth_user"].startswith("user-")
    # without --charge-point-ids only the address is replaced; with --keep-addresses, nothing
    plain = {"charge_point_id": "ALF/0001", "remote_addr": "10.0.0.7"}
    assert Redactor(KEY).session(plain) == {"charge_point_id": "ALF/0001", "remote_addr": row["remote_addr"]}
    assert Redactor(KEY, keep_addresses=True).session(plain) is plain


# ----------------------------------------------------------------------------- the command


def test_redact_command(tmp_path: Path) -> None:
    src = standard_capture(tmp_path / "src.db")
    with Store.open(src) as store:
        store.db.execute("INSERT INTO runs (kind, target) VALUES ('replay', 'ws://x')")
    out = tmp_path / "red.db"
    result = run("redact", "--db", src, "--out", out, "--key", "k1", "--charge-point-ids")
    assert result.exit_code == 0, result.stderr
    assert "runs not copied" in result.stdout and "random key" not in result.stderr
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    before, after = dump(src), dump(out)
    assert len(after["frames"]) == len(before["frames"])
    changed = [(a, b) for a, b in zip(before["frames"], after["frames"], strict=True) if a != b]
    assert [a[2] for a, _ in changed] == [1, 5]  # BootNotification (serials), StartTransaction (idTag)
    for a, b in zip(before["frames"], after["frames"], strict=True):
        # every column but raw is kept: order, timestamps, elapsed, derived columns, storage classes
        assert a[:16] == b[:16] and a[18:] == b[18:]
    with Store.open(out) as store:
        (s1,) = store.sessions(ids=[1])
        assert s1.charge_point_id.startswith("cp-") and s1.auth_user == s1.charge_point_id
        assert s1.path == f"/ocpp/{s1.charge_point_id}"
        assert s1.remote_addr is not None and s1.remote_addr.startswith("ip-")
        assert store.db.execute("SELECT count(*) FROM runs").fetchone()[0] == 0
    raw = out.read_bytes()
    for secret in (b"ALF/0001", b"ALF%2F0001", b"ace0100201", b"CKcharger", b"10.0.0.7"):
        assert secret not in raw
    # same key, same output; another key, other pseudonyms; no key, a note
    again = tmp_path / "again.db"
    assert run("redact", "--db", src, "--out", again, "--key", "k1", "--charge-point-ids").exit_code == 0
    assert dump(again) == after
    other = tmp_path / "other.db"
    result = run("redact", "--db", src, "--out", other)
    note = " ".join(result.stderr.split())
    assert "random key" in note and "cannot be reproduced" in note
    assert dump(other)["frames"] != after["frames"]
    assert "exists" in error_line(run("redact", "--db", src, "--out", out))
    assert "new file" in error_line(run("redact", "--db", src, "--out", src, "--force"))


def test_tricky_frames_survive_redaction(tmp_path: Path) -> None:
    src = make_capture(tmp_path / "t.db", [{"frames": TRICKY}])
    out = tmp_path / "t-red.db"
    result = redact_capture(src, out, key=KEY)
    assert result.frames_changed == 0
    assert dump(out) == dump(src)


# ----------------------------------------------------------------------------- replay


async def _capture(db: Path, version: str) -> None:
    async with (
        csms(version, Behaviour(tx_base=17, remote_start_base=5)) as (url, _),
        ProxyServer(url, db) as proxy,
    ):
        if version == "1.6":
            await run_charger16(proxy.url, "CP-16")
        else:
            await run_charger201(proxy.url, "CS-201")


#: A backend that starts transactions itself (2.0.1 RequestStartTransaction) sends the tags it
#: knows, which are the real ones: compare their presence, not their value (docs say so).
BACKEND_TAGS = parse_rules(
    """
[[rule]]
action = "RequestStartTransaction"
message = "request"
presence = ["idToken.idToken"]
"""
)


async def _replay(db: Path, version: str) -> tuple[Any, Any]:
    async with csms(version, Behaviour(tx_base=5000, remote_start_base=900)) as (url, seen):
        with Store.open(db) as store:
            rules = BACKEND_TAGS if version == "2.0.1" else None
            result = await run_replay(store, url, answer_timeout=2.0, grace=0.5, rules=rules)
    return result, seen


@pytest.mark.timeout(40)
@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_redacted_capture_replays_with_the_same_results(tmp_path: Path, version: str) -> None:
    original = tmp_path / "orig.db"
    async with asyncio.timeout(20):
        await _capture(original, version)
    redacted = tmp_path / "red.db"
    await asyncio.to_thread(redact_capture, original, redacted, key=KEY, charge_point_ids=True)
    with Store.open(redacted) as store:
        (session,) = store.sessions()
        assert session.charge_point_id.startswith("cp-")
        assert not any(TAG in (f.raw or "") for f in store.frames(session.id))
    async with asyncio.timeout(30):
        before, seen_before = await _replay(original, version)
        after, seen_after = await _replay(redacted, version)
    summary = [
        (s.messages, dict(s.compared), [d.kind for d in s.differences])
        for s in (*before.sessions, *after.sessions)
    ]
    assert summary[0] == summary[1], summary
    assert before.exit_code == after.exit_code
    assert seen_before.actions == seen_after.actions
    assert seen_before.transaction_ids == seen_after.transaction_ids
    conn = sqlite3.connect(redacted)
    assert conn.execute("SELECT count(*) FROM frames WHERE raw LIKE ?", [f"%{TAG}%"]).fetchone()[0] == 0
    conn.close()


# ----------------------------------------------------------------------------- personal data in free text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail jan.jansen@example.nl now", [("email", "jan.jansen@example.nl")]),
        ("VIN WVWZZZ1JZXW000001.", [("vin", "WVWZZZ1JZXW000001")]),  # European: no check digit
        ("1M8GDM9AXKP042788", [("vin", "1M8GDM9AXKP042788")]),  # North American, check digit X
        ("1M8GDM9A1KP042788", []),  # North American with a wrong check digit
        ("ABCDEFGHJKLMNPRST", []),  # ISO 3779 ends with four digits
        ("call +31 20 123 4567", [("phone", "+31 20 123 4567")]),
        ("or 0049 (30) 1234-567", [("phone", "0049 (30) 1234-567")]),
        ("IBAN DE89 3704 0044 0532 0130 00 ok", [("iban", "DE89 3704 0044 0532 0130 00")]),
        ("NL91ABNA0417164300", [("iban", "NL91ABNA0417164300")]),
        ("NL91ABNA0417164301", []),  # checksum wrong
        ("NL91ABNA0417164300 0 left", [("iban", "NL91ABNA0417164300")]),  # the pattern ran on: trimmed
        ("+31 20 123 4567 8901 2345", [("phone", "+31 20 123 4567 8901")]),  # at most 15 digits
        ("mac 00:1A:2B:3C:4D:5E", [("mac", "00:1A:2B:3C:4D:5E")]),
        ("mac 001a.2b3c.4d5e", [("mac", "001a.2b3c.4d5e")]),
        ("uid 04A2B3C4D5E680", [("rfid_uid", "04A2B3C4D5E680")]),
        ("uid 04:A2:B3:C4", [("rfid_uid", "04:A2:B3:C4")]),
        ("card=04E91C5A;", [("rfid_uid", "04E91C5A")]),
        # OCPP's own values stay: timestamps, UUIDs, meter readings, versions, counters, hex words
        ("2026-01-01T00:00:00.000+01:00", []),
        ("550e8400-e29b-41d4-a716-446655440000", []),
        ("12345678", []),
        ("2145278.50", []),
        ("4.15.7-4054", []),
        ("0012345678", []),
        ("DEADBEEF", []),
        ("ACE0177305-x", []),
    ],
)
def test_detectors(text: str, expected: list[tuple[str, str]]) -> None:
    from ocpp_replay.share.detect import find

    assert list(find(text)) == expected


def test_vin_check_digit_and_iban_checksum() -> None:
    from ocpp_replay.share.detect import iban_valid, vin_check_digit

    assert vin_check_digit("1M8GDM9AXKP042788") == "X"
    assert vin_check_digit("11111111111111111") == "1"
    assert iban_valid("GB82 WEST 1234 5698 7654 32") and not iban_valid("GB82 WEST 1234 5698 7654 33")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("0123456789ABCDEFabcdef:-. +@()/xyzWVNLGB"), max_size=60) | st.text())
def test_detectors_return_pieces_of_the_text(text: str) -> None:
    from ocpp_replay.share.detect import KINDS, find

    for kind, value in find(text):
        assert kind in KINDS and value and value in text


EMAIL = "jan.jansen@example.nl"
VIN = "WVWZZZ1JZXW000001"
PHONE = "+31 20 123 4567"
IBAN = "NL91ABNA0417164300"
MAC = "00:1A:2B:3C:4D:5E"
UID = "04A2B3C4D5E680"
PLANTED = (EMAIL, VIN, PHONE, IBAN, MAC, UID)


def planted_capture(path: Path) -> Path:
    """The planted values in several places: DataTransfer data as free text and as embedded
    JSON, a status's vendor info, a 2.0.1-style nested array, a CALLERROR's description, a
    frame that is not JSON, a close reason and a capture event; the UID is also an idTag."""
    frames: list[tuple[Any, str | bytes]] = [
        (Direction.TO_CSMS, json.dumps([2, "1", "DataTransfer", {
            "vendorId": "com.alfen", "messageId": "contact",
            "data": f"driver {EMAIL} phone {PHONE}, car {VIN}"}])),
        (Direction.TO_CP, json.dumps([3, "1", {"status": "Accepted", "data": json.dumps({"iban": IBAN})}])),
        (Direction.TO_CSMS, json.dumps([2, "2", "StatusNotification", {
            "connectorId": 1, "status": "Faulted", "errorCode": "OtherError",
            "info": f"modem {MAC}", "vendorErrorCode": "E42", "timestamp": "2026-01-01T00:00:00Z"}])),
        (Direction.TO_CSMS, json.dumps([2, "3", "Authorize", {"idTag": UID}])),
        (Direction.TO_CP, json.dumps([3, "3", {"idTagInfo": {"status": "Accepted"}}])),
        (Direction.TO_CSMS, json.dumps([2, "4", "NotifyReport", {"reportData": [
            {"variable": {"name": "Contact"}, "variableAttribute": [{"value": EMAIL}]},
            {"variable": {"name": "Vehicle"}, "variableAttribute": [{"value": VIN}]}]}])),
        (Direction.TO_CSMS, json.dumps([2, "5", "DataTransfer", {"vendorId": "x", "data": f"card {UID}"}])),
        (Direction.TO_CP, json.dumps([4, "5", "InternalError", f"no account for {EMAIL}", {}])),
        (Direction.TO_CSMS, f"garbage {PHONE} {MAC}"),
        (Direction.TO_CSMS, json.dumps([2, "6", "MeterValues", {"connectorId": 1, "meterValue": [
            {"timestamp": "2026-01-01T00:00:00Z", "sampledValue": [{"value": "2145278"}]}]}])),
    ]  # fmt: skip
    return make_capture(
        path,
        [
            {
                "fields": {"charge_point_id": "ALF-0001", "remote_addr": "10.0.0.7"},
                "frames": frames,
                "event": f"lost frames mentioning {IBAN}",
                "close": {"close_code": 4000, "close_reason": f"bye {EMAIL}", "closed_by": "cp"},
            }
        ],
    )


def test_redact_finds_planted_personal_data_everywhere(tmp_path: Path) -> None:
    src = planted_capture(tmp_path / "planted.db")
    out, report = tmp_path / "red.db", tmp_path / "found.json"
    result = run("redact", "--db", src, "--out", out, "--key", "k1", "--report", report)
    assert result.exit_code == 0, result.stderr
    summary = " ".join(result.stdout.split())
    assert "found: email: 1 value, 4 times;" in summary and "rfid_uid: 1 value, 1 time" in summary

    # Nothing planted is left, in any table, as text or inside a blob; frames still parse.
    conn = sqlite3.connect(out)
    text = "\n".join(
        str(value)
        for table in ("sessions", "frames", "capture_events")
        for row in conn.execute(f"SELECT * FROM {table}")
        for value in row
    )
    frames = [r[0] for r in conn.execute("SELECT raw FROM frames ORDER BY seq")]
    close_reason, detail = conn.execute(
        "SELECT close_reason, (SELECT detail FROM capture_events) FROM sessions"
    ).fetchone()
    conn.close()
    for value in PLANTED:
        assert value not in text, value
        assert value.encode() not in out.read_bytes()
    # The same value has the same pseudonym everywhere: in free text, in a whole string, in a
    # CALLERROR, in the close reason; the UID, also an idTag, is a tag- everywhere.
    email = Redactor(KEY).pseudonym  # (a different key: only the shape is compared here)
    assert email("email", EMAIL).startswith("email-")
    pseudonyms = {p for p in re.findall(r"\b(?:email|vin|phone|iban|mac|uid|tag)-[0-9a-f]{12}", text)}
    by_prefix: dict[str, set[str]] = {}
    for p in pseudonyms:
        by_prefix.setdefault(p.split("-")[0], set()).add(p)
    assert {k: len(v) for k, v in by_prefix.items()} == {
        "email": 1, "vin": 1, "phone": 1, "iban": 1, "mac": 1, "tag": 1,
    }  # fmt: skip
    (email_p,) = by_prefix["email"]
    (tag_p,) = by_prefix["tag"]
    assert close_reason == f"bye {email_p}"
    assert json.loads(frames[0])[3]["data"].startswith(f"driver {email_p} phone ")
    assert json.loads(frames[5])[3]["reportData"][0]["variableAttribute"][0]["value"] == email_p
    assert json.loads(frames[7])[3] == f"no account for {email_p}"
    assert json.loads(frames[3])[3]["idTag"] == tag_p and json.loads(frames[6])[3]["data"] == f"card {tag_p}"
    assert json.loads(json.loads(frames[1])[2]["data"])["iban"].startswith("iban-")
    assert detail.startswith("lost frames mentioning iban-")
    # OCPP's own values are untouched.
    assert json.loads(frames[9])[3]["meterValue"][0]["sampledValue"][0]["value"] == "2145278"
    assert json.loads(frames[2])[3]["timestamp"] == "2026-01-01T00:00:00Z"

    # The report says what and where, never a value.
    doc = json.loads(report.read_text())
    raw_report = report.read_text()
    for value in PLANTED:
        assert value not in raw_report
    assert doc["kinds"]["email"] == {"values": 1, "occurrences": 4}
    assert doc["kinds"]["vin"] == {"values": 1, "occurrences": 2}
    assert doc["kinds"]["idTag"] == {"values": 1, "occurrences": 1}
    places = {(p["kind"], p["where"]): p["occurrences"] for p in doc["places"]}
    assert places[("email", "DataTransfer request: data")] == 1
    assert places[("email", "NotifyReport request: reportData[].variableAttribute[].value")] == 1
    assert places[("email", "DataTransfer error: errorDescription")] == 1
    assert places[("email", "sessions.close_reason")] == 1
    assert places[("iban", "DataTransfer response: data")] == 1
    assert places[("iban", "capture_events.detail")] == 1
    assert places[("mac", "StatusNotification request: info")] == 1
    assert places[("phone", "? frame (not JSON)")] == 1 and places[("mac", "? frame (not JSON)")] == 1
    assert places[("ip_address", "sessions.remote_addr")] == 1
    assert all(p["sessions"] == 1 for p in doc["places"])


def test_detect_option(tmp_path: Path) -> None:
    src = planted_capture(tmp_path / "planted.db")
    none = tmp_path / "none.db"
    result = run("redact", "--db", src, "--out", none, "--key", "k1", "--detect", "none", "--report", "-")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)  # the report on stdout, the summary on stderr
    assert set(doc["kinds"]) == {"idTag", "ip_address"}
    kept = none.read_bytes()
    assert EMAIL.encode() in kept and VIN.encode() in kept and UID.encode() not in kept  # an idTag
    only = tmp_path / "only.db"
    assert run("redact", "--db", src, "--out", only, "--key", "k1", "--detect", "vin,mac").exit_code == 0
    data = only.read_bytes()
    assert VIN.encode() not in data and MAC.encode() not in data and EMAIL.encode() in data
    assert "unknown --detect kind 'ssn'" in error_line(
        run("redact", "--db", src, "--out", tmp_path / "x.db", "--detect", "ssn")
    )
    (tmp_path / "r.json").write_text("{}")
    line = error_line(run("redact", "--db", src, "--out", tmp_path / "y.db", "--report", tmp_path / "r.json"))
    assert "r.json exists" in line and not (tmp_path / "y.db").exists()


_filler = st.text(
    alphabet=st.sampled_from(list("abc XYZ.,:;-_/()\"'\\\n\u00e9\u202e0123456789")), max_size=12
)


@settings(max_examples=200, deadline=None)
@given(
    pieces=st.lists(st.tuples(_filler, st.sampled_from(PLANTED), _filler), min_size=1, max_size=4),
    numbers=st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=3),
)
def test_planted_values_never_survive_and_frames_stay_json(
    pieces: list[tuple[str, str, str]], numbers: list[int]
) -> None:
    """Whatever text surrounds a planted value (quotes, escapes, bidi overrides, other digits),
    in whichever string of the payload, it is gone after redaction, and the frame is still the
    same JSON apart from the strings that held it."""
    payload = {
        "vendorId": "com.alfen",
        "data": " ".join(a + " " + v + " " + b for a, v, b in pieces),
        "nested": [{"value": pieces[0][1]}, {"n": numbers}],
    }
    raw = json.dumps([2, "42", "DataTransfer", payload], ensure_ascii=False)
    redactor = Redactor(KEY)
    redactor.learn(raw, action="DataTransfer", message_type=2)
    out = redactor.text(raw)
    for _, value, _ in pieces:
        assert value not in out
    before, after = json.loads(raw), json.loads(out)
    assert after[:3] == before[:3] and after[3]["vendorId"] == "com.alfen"
    assert after[3]["nested"][1] == {"n": numbers}  # numbers are not touched
