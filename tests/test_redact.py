"""Redaction: the JSON span walker, pseudonyms, raw-text editing, the redact command, and replay."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocpp_replay.capture.proxy import ProxyServer
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
