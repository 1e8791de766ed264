"""OCPP 2.1 end to end with independent peers: the `ocpp` package's 2.1 charge point and CSMS
(on `websockets`), through the capture proxy, then validate and replay of that capture.

The CSMS assigns a remoteStartId (RequestStartTransaction) and a tariff id (SetDefaultTariff,
2.1 only) that the charger quotes back in its TransactionEvents; a replay against a fresh CSMS
that assigns other values must correlate both, and find no difference. Last, `compare` of a
2.1 capture between the reference CSMS's two profiles finds exactly what differs between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import websockets
from ocpp.routing import on
from ocpp.v21 import ChargePoint as ChargePoint21
from ocpp.v21 import call as call21
from ocpp.v21 import call_result as result21
from ocpp.v21.enums import Action as Action21
from typer.testing import CliRunner
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from ocpp_replay.capture.proxy import ProxyServer
from ocpp_replay.cli import app
from ocpp_replay.csms import ReferenceCsms
from ocpp_replay.replay import run_replay, store_run
from ocpp_replay.report.html import CHARGER_TO_CSMS, CSMS_TO_CHARGER, coverage, html_report
from ocpp_replay.simulate import run_fleet
from ocpp_replay.store import Store
from tests.peers import Recording

pytestmark = pytest.mark.timeout(30)

TAG = "ACE0177305"
UPDATES = 3  # meter-value updates before the CSMS stops the transaction


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Seen:
    """What the 2.1 CSMS assigned and what it got back."""

    remote_start_ids_sent: list[int] = field(default_factory=list)
    tariff_ids_sent: list[str] = field(default_factory=list)
    remote_start_ids_seen: list[Any] = field(default_factory=list)
    tariff_ids_seen: list[Any] = field(default_factory=list)
    stop_answers: list[Any] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)


class Csms21(ChargePoint21):  # type: ignore[misc]
    """The ocpp package's 2.1 CSMS: after the first status it sets a default tariff and starts a
    transaction remotely, each with an id of its own; it stops the transaction after UPDATES."""

    def __init__(self, cp_id: str, conn: Any, seen: Seen, ids: itertools.count[int]) -> None:
        super().__init__(cp_id, conn, response_timeout=5)
        self.seen, self.ids = seen, ids
        self.tasks: list[asyncio.Task[None]] = []
        self.statuses = 0
        self.updates = 0

    def _spawn(self, coro: Any) -> None:
        self.tasks.append(asyncio.create_task(coro))

    @on(Action21.boot_notification)
    async def on_boot(self, **_: Any) -> result21.BootNotification:
        return result21.BootNotification(current_time=now(), interval=300, status="Accepted")

    @on(Action21.status_notification)
    async def on_status(self, **_: Any) -> result21.StatusNotification:
        self.statuses += 1
        if self.statuses == 1:
            self._spawn(self._tariff_and_start())
        return result21.StatusNotification()

    async def _tariff_and_start(self) -> None:
        await asyncio.sleep(0.01)
        n = next(self.ids)
        tariff_id = f"T-{n}"
        self.seen.tariff_ids_sent.append(tariff_id)
        self.seen.remote_start_ids_sent.append(n)
        try:
            await self.call(
                call21.SetDefaultTariff(evse_id=0, tariff={"tariff_id": tariff_id, "currency": "EUR"})
            )
            await self.call(
                call21.RequestStartTransaction(
                    id_token={"id_token": TAG, "type": "ISO14443"}, remote_start_id=n, evse_id=1
                )
            )
        except Exception as exc:  # surfaced by the test
            self.seen.errors.append(exc)

    @on(Action21.heartbeat)
    async def on_heartbeat(self, **_: Any) -> result21.Heartbeat:
        return result21.Heartbeat(current_time=now())

    @on(Action21.transaction_event)
    async def on_transaction_event(
        self, event_type: str, transaction_info: dict[str, Any], **_: Any
    ) -> result21.TransactionEvent:
        if event_type == "Started":
            self.seen.remote_start_ids_seen.append(transaction_info.get("remote_start_id"))
        self.seen.tariff_ids_seen.append(transaction_info.get("tariff_id"))
        if event_type == "Updated":
            self.updates += 1
            if self.updates == UPDATES:
                self._spawn(self._stop(transaction_info["transaction_id"]))
        return result21.TransactionEvent(id_token_info={"status": "Accepted"})

    async def _stop(self, tx_id: str) -> None:
        await asyncio.sleep(0.01)
        try:
            self.seen.stop_answers.append(
                await self.call(call21.RequestStopTransaction(transaction_id=tx_id))
            )
        except Exception as exc:
            self.seen.errors.append(exc)


@contextlib.asynccontextmanager
async def csms21(first_id: int) -> AsyncIterator[tuple[str, Seen]]:
    seen = Seen()
    ids = itertools.count(first_id)

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None and ws.subprotocol == "ocpp2.1"
        cp = Csms21(ws.request.path.rsplit("/", 1)[-1], ws, seen, ids)
        with contextlib.suppress(websockets.ConnectionClosed):
            await cp.start()

    async with serve(handler, "127.0.0.1", 0, subprotocols=["ocpp2.1"], ping_interval=None) as server:  # type: ignore[list-item]
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ocpp", seen


class Station21(ChargePoint21):  # type: ignore[misc]
    """The ocpp package's 2.1 charge point, scripted: it remembers the tariff and remote start."""

    def __init__(self, cp_id: str, conn: Any) -> None:
        super().__init__(cp_id, conn, response_timeout=5)
        self.tariff: str | None = None
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()
        self.remote_start_id: int | None = None

    @on(Action21.set_default_tariff)
    async def on_tariff(self, evse_id: int, tariff: dict[str, Any], **_: Any) -> result21.SetDefaultTariff:
        self.tariff = tariff["tariff_id"]
        return result21.SetDefaultTariff(status="Accepted")

    @on(Action21.request_start_transaction)
    async def on_start(self, remote_start_id: int, **_: Any) -> result21.RequestStartTransaction:
        self.remote_start_id = remote_start_id
        self.started.set()
        return result21.RequestStartTransaction(status="Accepted", transaction_id="TX-2101")

    @on(Action21.request_stop_transaction)
    async def on_stop(self, transaction_id: str) -> result21.RequestStopTransaction:
        self.stopped.set()
        return result21.RequestStopTransaction(status="Accepted")


async def run_station(url: str, cp_id: str, *, raw: str | None = None) -> Recording:
    """Boot, status, wait for the remote start, a transaction quoting the tariff, a remote stop.
    RAW, if given, is sent as it is after the boot (an invalid CALL gets a CALLERROR; a SEND,
    which this version of the ocpp package does not know, is logged and dropped)."""
    async with connect(f"{url}/{cp_id}", subprotocols=["ocpp2.1"], open_timeout=5, ping_interval=None) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "ocpp2.1"
        rec = Recording(ws)
        cp = Station21(cp_id, rec)
        task = asyncio.create_task(cp.start())
        try:
            await cp.call(
                call21.BootNotification(
                    charging_station={"model": "NG910-60023", "vendor_name": "Alfen BV"}, reason="PowerUp"
                )
            )
            if raw is not None:
                await rec.send(raw)
            await cp.call(
                call21.StatusNotification(
                    timestamp=now(), connector_status="Available", evse_id=1, connector_id=1
                )
            )
            async with asyncio.timeout(5):
                await cp.started.wait()
            info = {
                "transaction_id": "TX-2101",
                "remote_start_id": cp.remote_start_id,
                "tariff_id": cp.tariff,
            }
            base = {"evse": {"id": 1, "connector_id": 1}, "transaction_info": info}
            await cp.call(
                call21.TransactionEvent(
                    event_type="Started",
                    timestamp=now(),
                    trigger_reason="RemoteStart",
                    seq_no=0,
                    id_token={"id_token": TAG, "type": "ISO14443"},
                    **base,
                )
            )
            for i in range(UPDATES):
                sample = {
                    "timestamp": now(),
                    "sampled_value": [{"value": 1000.0 + i, "unit_of_measure": {"unit": "Wh"}}],
                }
                await cp.call(
                    call21.TransactionEvent(
                        event_type="Updated",
                        timestamp=now(),
                        trigger_reason="MeterValuePeriodic",
                        seq_no=i + 1,
                        meter_value=[sample],
                        **base,
                    )
                )
            async with asyncio.timeout(5):
                await cp.stopped.wait()
            ended = {**info, "stopped_reason": "Remote"}
            await cp.call(
                call21.TransactionEvent(
                    event_type="Ended",
                    timestamp=now(),
                    trigger_reason="RemoteStop",
                    seq_no=UPDATES + 1,
                    evse={"id": 1, "connector_id": 1},
                    transaction_info=ended,
                )
            )
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await task
    return rec


async def capture(db: Path, *, raw: str | None = None) -> tuple[Recording, Seen]:
    async with csms21(first_id=5) as (url, seen), ProxyServer(url, db) as proxy:
        rec = await run_station(proxy.url, "ALF-21-0001", raw=raw)
    assert seen.errors == []
    return rec, seen


def validate(db: Path, *args: str) -> Any:
    return CliRunner().invoke(app, ["validate", "--db", str(db), *args])


#: A 2.1 SEND (message type 6): no answer expected.
SEND = (
    '[6,"s-1","NotifyPeriodicEventStream",'
    '{"id":1,"pending":0,"basetime":"2025-02-01T08:00:00Z","data":[{"t":0.5,"v":"11.2"}]}]'
)


async def test_21_through_the_proxy_then_validate_and_replay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("CRITICAL", logger="ocpp")  # the peer logs the SEND it does not know
    db = tmp_path / "c21.db"
    rec, seen = await capture(db, raw=SEND)
    assert seen.remote_start_ids_seen == [5] and set(seen.tariff_ids_seen) == {"T-5"}
    with Store.open(db) as store:
        (session,) = store.sessions()
        frames = list(store.frames(session.id))
    assert session.subprotocol == "ocpp2.1"
    # The proxy is transparent: the station's frames, byte for byte, in its order.
    assert [f.raw for f in frames if f.direction == "to_csms"] == rec.sent
    assert [f.raw for f in frames if f.direction == "to_cp"] == rec.received
    assert frames[2].raw == SEND

    result = await asyncio.to_thread(validate, db)
    assert result.exit_code == 0, result.output
    assert f"checked {len(frames)} frames of 1 session (OCPP 2.1: 1)" in result.stdout
    summary = json.loads((await asyncio.to_thread(validate, db, "--json")).stdout)["summary"]
    assert summary["frames_checked"] == len(frames) and summary["versions"] == {"2.1": 1}

    # Replay against a fresh 2.1 CSMS that assigns other ids: both are correlated.
    async with csms21(first_id=900) as (url, live):
        with Store.open(db) as store:
            run = await run_replay(store, url, answer_timeout=2.0, grace=0.5)
            run = await asyncio.to_thread(store_run, store, run)
    assert live.errors == []
    assert list(run.differences) == [], run.differences
    assert run.exit_code == 0
    assert live.remote_start_ids_sent == [900] and live.remote_start_ids_seen == [900]  # not 5
    assert live.tariff_ids_sent == ["T-900"] and set(live.tariff_ids_seen) == {"T-900"}  # not T-5
    assert [a.status for a in live.stop_answers] == ["Accepted"]
    sent = [f.raw for f in run.sessions[0].frames_of("target") if f.direction == "to_csms"]
    assert SEND in sent  # replayed byte for byte: frames that are not 1.6/2.0.1 OCPP-J are not rewritten
    compared = run.sessions[0].compared
    assert compared["SetDefaultTariff"] == 1 and compared["RequestStartTransaction"] == 1
    # The report's coverage matrix has a 2.1 column, with 2.1's own commands.
    cov = coverage(run)
    assert cov[(CSMS_TO_CHARGER, "SetDefaultTariff", "2.1")] == (1, 0)
    assert cov[(CHARGER_TO_CSMS, "TransactionEvent", "2.1")] == (UPDATES + 2, 0)
    assert {v for _, _, v in cov} == {"2.1"}
    page = html_report(run)
    assert '<th class="n">OCPP 2.1</th>' in page and "ChangeTransactionTariff" in page


async def test_21_capture_with_an_invalid_frame_is_exit_1_and_names_it(tmp_path: Path) -> None:
    db = tmp_path / "bad21.db"
    await capture(db, raw='[2,"bad-1","Heartbeat",{"bogus":1}]')
    result = await asyncio.to_thread(validate, db, "--json")
    assert result.exit_code == 1, result.output
    found = json.loads(result.stdout)
    assert [
        (v["seq"], v["side"], v["action"], v["message_kind"], v["path"]) for v in found["violations"]
    ] == [(3, "charger", "Heartbeat", "request", "")]
    assert "'bogus' was unexpected" in found["violations"][0]["message"]
    table = await asyncio.to_thread(validate, db)
    assert table.exit_code == 1
    assert "session 1 ALF-21-0001 #3 charger Heartbeat (payload): Additional properties" in table.stdout


async def test_21_capture_of_unknown_version_is_exit_2(tmp_path: Path) -> None:
    """The same capture with its subprotocol unknown to validate: nothing checked, exit 2."""
    db = tmp_path / "c21.db"
    await capture(db)
    with Store.open(db) as store:
        store.db.execute("UPDATE sessions SET subprotocol = 'ocpp2.2'")
    result = await asyncio.to_thread(validate, db)
    assert result.exit_code == 2
    assert "subprotocol 'ocpp2.2'" in result.stdout and "no schema violations" not in result.stdout
    assert result.stderr.startswith("error: 1 session not checked")
    assert (await asyncio.to_thread(validate, db, "--version", "2.1")).exit_code == 0


async def test_compare_v1_v2_on_21_finds_exactly_the_profile_differences(tmp_path: Path) -> None:
    """Virtual 2.1 chargers captured against the reference CSMS, then compared v1 against v2:
    the heartbeat interval and the card v2 blocks, nothing else; the HTML has the 2.1 column."""
    db = tmp_path / "cmp21.db"
    async with ReferenceCsms("v1") as csms, ProxyServer(csms.url, db) as proxy:
        fleet = await run_fleet(
            proxy.url, chargers=3, version="2.1", scenario="session", time_scale=0.002, seed=1
        )
    assert not fleet.problems, fleet.problems
    report, page = tmp_path / "r.json", tmp_path / "r.html"
    fast = ["--max-gap", "0.05", "--timeout", "2", "--grace", "0.3"]
    async with ReferenceCsms("v1") as v1, ReferenceCsms("v2") as v2:
        args = ["compare", "--db", str(db), "--baseline", v1.url, "--candidate", v2.url, *fast]
        res = await asyncio.to_thread(
            CliRunner().invoke, app, [*args, "--report", str(report), "--html", str(page)]
        )
    assert res.exit_code == 1, res.output
    doc = json.loads(report.read_text())
    got = {
        s["charge_point_id"]: [(d["action"], d["path"], d["actual"]) for d in s["diffs"]]
        for s in doc["sessions"]
    }
    interval = ("BootNotification", "interval", 900)
    blocked = ("idTokenInfo.status", "Blocked")
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
    assert doc["summary"]["vs_recording"] == {"baseline": 0, "candidate": 6}
    assert '<th class="n">OCPP 2.1</th>' in page.read_text()
