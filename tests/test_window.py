"""Windows that cut connections (issue 22.1): `replay --from/--to`, priming, `--no-prime`.

The core's choice of frames is tested without sockets; the replays run against the test CSMS
of tests/replay_peers.py (the `ocpp` package) on loopback, from captures made by the proxy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ocpp_replay.core.correlate import utc_seconds
from ocpp_replay.core.frames import Direction, MessageType
from ocpp_replay.core.window import Window, cut_session
from ocpp_replay.store import Store
from tests.replay_peers import Behaviour, csms
from tests.test_replay import _copy, _invoke, capture16, capture201  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(60)


@dataclass(frozen=True)
class F:
    seq: int
    elapsed: float
    direction: Direction
    message_type: int
    unique_id: str
    action: str | None
    raw: str
    raw_bytes: bytes | None = None
    parse_error: str | None = None


def _frames(calls: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> list[F]:
    """Charger calls, each answered, one a second: (action, payload, answer)."""
    out: list[F] = []
    for n, (action, payload, answer) in enumerate(calls):
        uid = str(n)
        out.append(F(len(out) + 1, float(n), Direction.TO_CSMS, MessageType.CALL, uid, action,
                     json.dumps([2, uid, action, payload])))  # fmt: skip
        out.append(F(len(out) + 1, n + 0.1, Direction.TO_CP, MessageType.CALL_RESULT, uid, action,
                     json.dumps([3, uid, answer])))  # fmt: skip
    return out


BOOT16 = {"chargePointVendor": "Alfen BV", "chargePointModel": "NG910"}
SESSION16 = [
    ("BootNotification", BOOT16, {"status": "Accepted"}),
    ("StatusNotification", {"connectorId": 0, "status": "Available", "errorCode": "NoError"}, {}),
    ("StatusNotification", {"connectorId": 1, "status": "Available", "errorCode": "NoError"}, {}),
    ("StartTransaction", {"connectorId": 1, "idTag": "A", "meterStart": 0, "timestamp": "t"},
     {"transactionId": 41, "idTagInfo": {"status": "Accepted"}}),
    ("StatusNotification", {"connectorId": 1, "status": "Charging", "errorCode": "NoError"}, {}),
    ("MeterValues", {"connectorId": 1, "transactionId": 41, "meterValue": []}, {}),  # t=5
    ("StopTransaction", {"transactionId": 41, "meterStop": 9, "timestamp": "t"}, {}),  # t=6
    ("StartTransaction", {"connectorId": 1, "idTag": "B", "meterStart": 9, "timestamp": "t"},
     {"transactionId": 42, "idTagInfo": {"status": "Accepted"}}),  # t=7
    ("MeterValues", {"connectorId": 1, "transactionId": 42, "meterValue": []}, {}),  # t=8
    ("Heartbeat", {}, {"currentTime": "t"}),  # t=9
]  # fmt: skip


def test_a_window_primes_boot_latest_statuses_and_open_transactions_only() -> None:
    frames = _frames(SESSION16)
    cut = cut_session(frames, 1000.0, None, "1.6", Window(1008.0, 1009.0))
    assert cut is not None and cut.opened_before and cut.cut_at_end
    primed = [frames[s - 1] for s in cut.prime]
    assert [(f.action, f.message_type, json.loads(f.raw)[-1]) for f in primed if f.message_type == 2] == [
        ("BootNotification", 2, BOOT16),
        ("StatusNotification", 2, {"connectorId": 0, "status": "Available", "errorCode": "NoError"}),
        ("StatusNotification", 2, {"connectorId": 1, "status": "Charging", "errorCode": "NoError"}),
        # transaction 41 was stopped before the window: not primed; 42 is open
        ("StartTransaction", 2, {"connectorId": 1, "idTag": "B", "meterStart": 9, "timestamp": "t"}),
    ]
    assert len(cut.prime) == 2 * 4  # each call with its recorded answer
    assert [frames[s - 1].action for s in cut.frames] == ["MeterValues", "MeterValues"]  # t=8, 8.1
    assert cut_session(frames, 1000.0, None, "1.6", Window(1008.0), prime=False) == type(cut)(
        (), (*cut.frames, 19, 20), True, False
    )


def test_a_window_leaves_out_what_it_does_not_meet() -> None:
    frames = _frames(SESSION16)
    assert cut_session(frames, 1000.0, 1009.5, "1.6", Window(1010.0)) is None  # ended before
    assert cut_session(frames, 1000.0, None, "1.6", Window(900.0, 1000.0)) is None  # starts at its end
    inside = cut_session(frames, 1000.0, 1009.5, "1.6", Window(999.0, 1100.0))
    assert inside is not None and not inside.opened_before and not inside.cut_at_end
    assert inside.prime == () and inside.frames == tuple(f.seq for f in frames)


def test_answers_to_calls_before_the_window_are_left_out() -> None:
    stop = "RemoteStopTransaction"
    frames = [
        F(1, 0.0, Direction.TO_CP, MessageType.CALL, "r1", stop, f'[2,"r1","{stop}",{{"transactionId":1}}]'),
        F(2, 2.0, Direction.TO_CSMS, MessageType.CALL_RESULT, "r1", stop, '[3,"r1",{"status":"Accepted"}]'),
        F(3, 3.0, Direction.TO_CSMS, MessageType.CALL, "h", "Heartbeat", '[2,"h","Heartbeat",{}]'),
        F(4, 3.1, Direction.TO_CP, MessageType.CALL_RESULT, "h", "Heartbeat", '[3,"h",{"currentTime":"t"}]'),
    ]  # fmt: skip
    cut = cut_session(frames, 0.0, None, "1.6", Window(1.0))
    assert cut is not None and cut.frames == (3, 4)


def test_a_201_window_primes_the_started_transaction_event() -> None:
    def tx(event: str, txid: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
        return ("TransactionEvent", {"eventType": event, "transactionInfo": {"transactionId": txid}}, {})

    frames = _frames([
        ("BootNotification", {"reason": "PowerUp"}, {"status": "Accepted"}),
        ("StatusNotification", {"evseId": 1, "connectorId": 1, "connectorStatus": "Occupied"}, {}),
        tx("Started", "T1"), tx("Ended", "T1"), tx("Started", "T2"), tx("Updated", "T2"),
    ])  # fmt: skip
    cut = cut_session(frames, 0.0, None, "2.0.1", Window(5.0))
    assert cut is not None
    calls = [json.loads(frames[s - 1].raw)[3] for s in cut.prime if frames[s - 1].message_type == 2]
    assert [c.get("eventType", c.get("reason", c.get("connectorStatus"))) for c in calls] == [
        "PowerUp",
        "Occupied",
        "Started",
    ]
    assert calls[-1]["transactionInfo"]["transactionId"] == "T2"


async def _app(args: list[str]) -> Any:
    """The whole command line (export and import too), in a thread."""
    import asyncio

    from typer.testing import CliRunner

    from ocpp_replay.cli import app

    return await asyncio.to_thread(CliRunner().invoke, app, args, catch_exceptions=False)


def _first(db: Path, action: str) -> str:
    """The capture time of the first CALL of ACTION, as --from takes it."""
    with Store.open(db) as store:
        [info] = store.sessions()
        [f] = [f for f in store.frames(info.id) if f.action == action and f.message_type == 2][:1]
        t = utc_seconds(info.started_at) + f.elapsed - 1e-5  # printed to the microsecond: not after it
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


async def test_a_window_in_the_middle_of_a_16_transaction_replays_with_no_differences(
    capture16: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Priming made the backend know the transaction: the window's MeterValues and
    StopTransaction carry its new transaction id, and it accepts the stop. Without priming, the
    same backend refuses the stop of a transaction it never started."""
    db = _copy(capture16, tmp_path)
    start = _first(db, "MeterValues")
    behaviour = Behaviour(tx_base=5000, known_transactions_only=True)
    async with csms("1.6", behaviour) as (url, seen):
        res = await _invoke(["replay", "--db", str(db), "--target", url, "--from", start, "--report",
                             str(tmp_path / "r.json")])  # fmt: skip
        assert res.exit_code == 0, res.output
        # boot, the connector's status, the open transaction's start: each with its answer
        assert "1 open connections primed with 6 frames" in res.stderr, res.stderr
        assert seen.tx_by_cp[0][1:] == ("StartTransaction", 5000)  # primed
        assert {t for _, a, t in seen.tx_by_cp if a in ("MeterValues", "StopTransaction")} == {5000}
        report = json.loads((tmp_path / "r.json").read_text())
        assert report["summary"]["diffs"] == 0
        assert [s["charge_point_id"] for s in report["sessions"]] == ["CP-16"]

    async with csms("1.6", Behaviour(tx_base=5000, known_transactions_only=True)) as (url, seen):
        res = await _invoke(["replay", "--db", str(db), "--target", url, "--from", start, "--no-prime"])
        assert res.exit_code == 1, res.output
        assert "not primed (--no-prime)" in res.stderr
        assert "StartTransaction" not in [a for _, a, _ in seen.tx_by_cp]
        assert "idTagInfo.status" in res.stdout and "Invalid" in res.stdout
    with Store.open(db) as store:
        runs = store.db.execute("SELECT diffs, exit_code FROM runs ORDER BY id").fetchall()
    assert runs == [(0, 0), (2, 1)]  # idTagInfo.status Invalid, its expiryDate gone


async def test_a_201_window_replays_with_no_differences(capture201: Path, tmp_path: Path) -> None:  # noqa: F811
    db = _copy(capture201, tmp_path)
    with Store.open(db) as store:
        [info] = store.sessions()
        updated = [
            f
            for f in store.frames(info.id)
            if f.action == "TransactionEvent" and '"Updated"' in (f.raw or "")
        ]
        t = utc_seconds(info.started_at) + updated[0].elapsed - 1e-5
    start = datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    async with csms("2.0.1", Behaviour(remote_start=False)) as (url, seen):
        res = await _invoke(["replay", "--db", str(db), "--target", url, "--from", start])
    assert res.exit_code == 0, res.output
    assert "1 open connections primed with" in res.stderr
    started = [t for t in seen.transaction_ids if t is not None]
    assert started and len(set(started)) == 1  # the primed Started and the window's events: one transaction


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--from", "2026-03-02T08:00", "--to", "2026-03-02T07:00"],
            "--to (2026-03-02T07:00) must be after --from",
        ),
        (["--from", "yesterday"], "--from: not an ISO 8601 time"),
        (["--duration", "1h"], "--duration needs --from"),
        (["--to", "2026-03-02T07:00"], "--to needs --from"),
        (["--from", "2026-03-02T08:00", "--duration", "an hour"], "--duration: not a duration"),
        (["--from", "2026-03-02T08:00", "--duration", "1h", "--to", "2026-03-02T09:00"], "not both"),
        (["--no-prime"], "--no-prime needs --from"),
        (
            ["--from", "2026-03-02T08:00", "--since", "2026-03-02T07:00"],
            "--since/--until select whole sessions",
        ),
        (["--from", "2099-01-01T00:00"], "meet the window"),
    ],
)
async def test_bad_windows_are_one_error_line(
    capture16: Path,  # noqa: F811
    tmp_path: Path,
    args: list[str],
    message: str,
) -> None:
    db = _copy(capture16, tmp_path)
    res = await _invoke(["replay", "--db", str(db), "--target", "ws://127.0.0.1:9/ocpp", *args])
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("error: ") and message in res.stderr and res.stderr.count("\n") == 1


async def test_compare_takes_a_window_too(capture16: Path, tmp_path: Path) -> None:  # noqa: F811
    """Both backends primed alike: each assigns its own transaction id, the window's frames carry
    each side's, and the two agree."""
    db = _copy(capture16, tmp_path)
    start = _first(db, "MeterValues")
    async with (
        csms("1.6", Behaviour(tx_base=5000, known_transactions_only=True)) as (a, seen_a),
        csms("1.6", Behaviour(tx_base=7000, known_transactions_only=True)) as (b, seen_b),
    ):
        res = await _invoke(["compare", "--db", str(db), "--baseline", a, "--candidate", b, "--from", start,
                             "--noise-runs", "0"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "1 open connections primed with 6 frames" in res.stderr
    assert {t for _, act, t in seen_a.tx_by_cp if act == "StopTransaction"} == {5000}
    assert {t for _, act, t in seen_b.tx_by_cp if act == "StopTransaction"} == {7000}


async def test_an_exported_window_imports_and_replays_as_the_window_does(
    capture16: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """`export --from`: the window as a capture of its own (for a ticket), primed frames first:
    imported into an empty capture, it replays with no differences against a backend that
    checks its state."""
    db = _copy(capture16, tmp_path)
    start = _first(db, "MeterValues")
    out, fresh = tmp_path / "window.jsonl", tmp_path / "fresh.db"
    res = await _app(["export", "--db", str(db), "--out", str(out), "--from", start])
    assert res.exit_code == 0, res.output
    kinds = [
        json.loads(line).get("kind", json.loads(line).get("type"))
        for line in out.read_text().splitlines()[1:]
    ]
    assert res.exit_code == 0 and kinds.count("session") == 1
    res = await _app(["import", str(out), "--db", str(fresh)])
    assert res.exit_code == 0, res.output
    with Store.open(fresh) as store:
        [info] = store.sessions()
        frames = list(store.frames(info.id))
    assert [f.action for f in frames if f.message_type == MessageType.CALL][:3] == [
        "BootNotification",
        "StartTransaction",
        "StatusNotification",  # Charging: after the start, in the order recorded
    ]
    async with csms("1.6", Behaviour(tx_base=5000, known_transactions_only=True)) as (url, seen):
        res = await _invoke(["replay", "--db", str(fresh), "--target", url])
    assert res.exit_code == 0, res.output
    assert {t for _, a, t in seen.tx_by_cp if a == "StopTransaction"} == {5000}
