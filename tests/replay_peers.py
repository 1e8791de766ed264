"""Independent OCPP peers for the replay tests, built on the `ocpp` package and `websockets`.

A CSMS (1.6 and 2.0.1) whose assigned values come from configurable bases, that sends a remote
stop after N meter values, and whose answers tests can change; and scripted chargers that run
the session of issue 3 (boot, statuses, authorize, start, meter values, remote stop, stop).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v16 import enums as enums16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from ocpp.v201 import enums as enums201
from websockets.asyncio.server import ServerConnection, serve

TAG = "ACE0177305"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Behaviour:
    """What the test CSMS does; tests change it to provoke differences."""

    tx_base: int = 1000
    remote_start_base: int = 500
    blocked: set[str] = field(default_factory=set)  # tags Authorize answers Blocked (only Authorize)
    remote_stop_after: int | None = 3  # meter values (1.6) / Updated events (2.0.1)
    remote_start: bool = True  # 2.0.1: RequestStartTransaction after the first status
    extra_call: str | None = None  # 1.6: an action to send that the recording does not have
    no_answer: set[str] = field(default_factory=set)  # actions the CSMS never answers
    password: str | None = None  # require Basic auth with this password
    known_transactions_only: bool = False  # 1.6: StopTransaction of a transaction it never started: Invalid


@dataclass
class Seen:
    """What the CSMS saw, for assertions."""

    transaction_ids: list[Any] = field(default_factory=list)  # in MeterValues/StopTransaction
    remote_stop_answers: list[Any] = field(default_factory=list)
    remote_start_ids_sent: list[int] = field(default_factory=list)
    remote_start_ids_seen: list[Any] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    extra_answers: list[Any] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # request paths (and queries) of the connections
    id_tags: list[tuple[str, str, str]] = field(default_factory=list)  # 1.6: (charge point, action, idTag)
    tx_by_cp: list[tuple[str, str, Any]] = field(default_factory=list)  # 1.6: (charge point, action, tx id)


class _Filter:
    """The CSMS's connection, dropping CALLs it is told never to answer."""

    def __init__(self, ws: ServerConnection, no_answer: set[str], seen: Seen) -> None:
        self.ws = ws
        self.no_answer = no_answer
        self.seen = seen

    async def recv(self) -> str | bytes:
        while True:
            data = await self.ws.recv()
            if isinstance(data, str) and data.startswith("[2,"):
                import json

                msg = json.loads(data)
                self.seen.actions.append(msg[2])
                if msg[2] in self.no_answer:
                    continue
            return data

    async def send(self, data: str) -> None:
        await self.ws.send(data)


class Csms16(ChargePoint16):
    def __init__(self, cp_id: str, conn: Any, b: Behaviour, seen: Seen, tx: itertools.count[int]) -> None:
        super().__init__(cp_id, conn, response_timeout=5)
        self.b, self.seen, self.tx = b, seen, tx
        self.tasks: list[asyncio.Task[Any]] = []
        self.meter_values = 0

    def _info(self, id_tag: str, authorize: bool = False) -> dict[str, Any]:
        status = "Blocked" if authorize and id_tag in self.b.blocked else "Accepted"
        return {"status": status, "expiryDate": now()}

    @on(enums16.Action.boot_notification)
    async def on_boot(self, **_: Any) -> result16.BootNotification:
        if self.b.extra_call:
            self.tasks.append(asyncio.create_task(self._extra()))
        return result16.BootNotification(current_time=now(), interval=300, status="Accepted")

    async def _extra(self) -> None:
        await asyncio.sleep(0.05)
        with contextlib.suppress(Exception):
            self.seen.extra_answers.append(
                await self.call(call16.GetConfiguration(key=["HeartbeatInterval"]))
            )

    @on(enums16.Action.status_notification)
    async def on_status(self, **_: Any) -> result16.StatusNotification:
        return result16.StatusNotification()

    @on(enums16.Action.heartbeat)
    async def on_heartbeat(self, **_: Any) -> result16.Heartbeat:
        return result16.Heartbeat(current_time=now())

    @on(enums16.Action.authorize)
    async def on_authorize(self, id_tag: str, **_: Any) -> result16.Authorize:
        self.seen.id_tags.append((self.id, "Authorize", id_tag))
        return result16.Authorize(id_tag_info=self._info(id_tag, authorize=True))  # type: ignore[arg-type]

    @on(enums16.Action.start_transaction)
    async def on_start(self, id_tag: str, **_: Any) -> result16.StartTransaction:
        self.seen.id_tags.append((self.id, "StartTransaction", id_tag))
        tx = next(self.tx)
        self.seen.tx_by_cp.append((self.id, "StartTransaction", tx))
        return result16.StartTransaction(transaction_id=tx, id_tag_info=self._info(id_tag))  # type: ignore[arg-type]

    @on(enums16.Action.meter_values)
    async def on_meter_values(self, transaction_id: Any = None, **_: Any) -> result16.MeterValues:
        self.seen.transaction_ids.append(transaction_id)
        self.seen.tx_by_cp.append((self.id, "MeterValues", transaction_id))
        self.meter_values += 1
        if self.b.remote_stop_after is not None and self.meter_values == self.b.remote_stop_after:
            self.tasks.append(asyncio.create_task(self._remote_stop(transaction_id)))
        return result16.MeterValues()

    async def _remote_stop(self, transaction_id: int) -> None:
        await asyncio.sleep(0.01)
        with contextlib.suppress(Exception):
            answer = await self.call(call16.RemoteStopTransaction(transaction_id=transaction_id))
            self.seen.remote_stop_answers.append(answer)

    @on(enums16.Action.stop_transaction)
    async def on_stop(
        self, transaction_id: Any = None, id_tag: str = TAG, **_: Any
    ) -> result16.StopTransaction:
        self.seen.transaction_ids.append(transaction_id)
        known = {t for _, action, t in self.seen.tx_by_cp if action == "StartTransaction"}
        self.seen.tx_by_cp.append((self.id, "StopTransaction", transaction_id))
        if self.b.known_transactions_only and transaction_id not in known:
            return result16.StopTransaction(id_tag_info={"status": "Invalid"})  # type: ignore[arg-type]
        return result16.StopTransaction(id_tag_info=self._info(id_tag))  # type: ignore[arg-type]


class Csms201(ChargePoint201):
    def __init__(self, cp_id: str, conn: Any, b: Behaviour, seen: Seen, rs: itertools.count[int]) -> None:
        super().__init__(cp_id, conn, response_timeout=5)
        self.b, self.seen, self.rs = b, seen, rs
        self.tasks: list[asyncio.Task[Any]] = []
        self.updates = 0
        self.statuses = 0

    def _info(self, token: str, authorize: bool = False) -> dict[str, Any]:
        status = "Blocked" if authorize and token in self.b.blocked else "Accepted"
        return {"status": status, "cacheExpiryDateTime": now()}

    @on(enums201.Action.boot_notification)
    async def on_boot(self, **_: Any) -> result201.BootNotification:
        return result201.BootNotification(current_time=now(), interval=300, status="Accepted")

    @on(enums201.Action.status_notification)
    async def on_status(self, **_: Any) -> result201.StatusNotification:
        self.statuses += 1
        if self.statuses == 1 and self.b.remote_start:
            self.tasks.append(asyncio.create_task(self._remote_start()))
        return result201.StatusNotification()

    async def _remote_start(self) -> None:
        await asyncio.sleep(0.01)
        rid = next(self.rs)
        self.seen.remote_start_ids_sent.append(rid)
        with contextlib.suppress(Exception):
            await self.call(
                call201.RequestStartTransaction(
                    id_token={"idToken": TAG, "type": "ISO14443"}, remote_start_id=rid
                )  # type: ignore[arg-type]
            )

    @on(enums201.Action.heartbeat)
    async def on_heartbeat(self, **_: Any) -> result201.Heartbeat:
        return result201.Heartbeat(current_time=now())

    @on(enums201.Action.authorize)
    async def on_authorize(self, id_token: dict[str, Any], **_: Any) -> result201.Authorize:
        return result201.Authorize(id_token_info=self._info(id_token["id_token"], authorize=True))  # type: ignore[arg-type]

    @on(enums201.Action.transaction_event)
    async def on_transaction_event(
        self, event_type: str, transaction_info: dict[str, Any], **_: Any
    ) -> result201.TransactionEvent:
        self.seen.transaction_ids.append(transaction_info.get("transaction_id"))
        if event_type == "Started":
            self.seen.remote_start_ids_seen.append(transaction_info.get("remote_start_id"))
        if event_type == "Updated":
            self.updates += 1
            if self.b.remote_stop_after is not None and self.updates == self.b.remote_stop_after:
                self.tasks.append(asyncio.create_task(self._remote_stop(transaction_info["transaction_id"])))
        return result201.TransactionEvent(id_token_info=self._info(TAG))  # type: ignore[arg-type]

    async def _remote_stop(self, transaction_id: str) -> None:
        await asyncio.sleep(0.01)
        with contextlib.suppress(Exception):
            answer = await self.call(call201.RequestStopTransaction(transaction_id=transaction_id))
            self.seen.remote_stop_answers.append(answer)


@contextlib.asynccontextmanager
async def csms(version: str, behaviour: Behaviour | None = None) -> AsyncIterator[tuple[str, Seen]]:
    """A CSMS on 127.0.0.1:0; yields (ws URL without the charge point id, what it saw)."""
    b = behaviour or Behaviour()
    seen = Seen()
    tx = itertools.count(b.tx_base)
    rs = itertools.count(b.remote_start_base)
    peers: list[Any] = []

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        seen.paths.append(ws.request.path)
        cp_id = ws.request.path.split("?", 1)[0].rsplit("/", 1)[-1]
        conn = _Filter(ws, b.no_answer, seen)
        peer: Any = (
            Csms16(cp_id, conn, b, seen, tx) if version == "1.6" else Csms201(cp_id, conn, b, seen, rs)
        )
        peers.append(peer)
        try:
            await peer.start()
        except websockets.ConnectionClosed:
            pass
        finally:
            for t in peer.tasks:
                t.cancel()
            await asyncio.gather(*peer.tasks, return_exceptions=True)

    def process_request(conn: ServerConnection, request: Any) -> Any:
        if b.password is None:
            return None
        cp_id = request.path.rsplit("/", 1)[-1]
        expected = "Basic " + base64.b64encode(f"{cp_id}:{b.password}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return conn.respond(http.HTTPStatus.UNAUTHORIZED, "unauthorized\n")
        return None

    proto = "ocpp1.6" if version == "1.6" else "ocpp2.0.1"
    async with serve(
        handler,
        "127.0.0.1",
        0,
        subprotocols=[proto],  # type: ignore[list-item]
        process_request=process_request,
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ocpp", seen


# ----------------------------------------------------------------------------- chargers


class Charger16(ChargePoint16):
    def __init__(self, cp_id: str, conn: Any) -> None:
        super().__init__(cp_id, conn, response_timeout=5)
        self.stop_requested = asyncio.Event()

    @on(enums16.Action.remote_stop_transaction)
    async def on_remote_stop(self, transaction_id: int) -> result16.RemoteStopTransaction:
        self.stop_requested.set()
        return result16.RemoteStopTransaction(status="Accepted")

    @on(enums16.Action.get_configuration)
    async def on_get_configuration(self, **_: Any) -> result16.GetConfiguration:
        return result16.GetConfiguration(
            configuration_key=[{"key": "HeartbeatInterval", "readonly": False, "value": "300"}]
        )


class Charger201(ChargePoint201):
    def __init__(self, cp_id: str, conn: Any) -> None:
        super().__init__(cp_id, conn, response_timeout=5)
        self.start_requested = asyncio.Event()
        self.stop_requested = asyncio.Event()
        self.remote_start_id: int | None = None

    @on(enums201.Action.request_start_transaction)
    async def on_request_start(self, remote_start_id: int, **_: Any) -> result201.RequestStartTransaction:
        self.remote_start_id = remote_start_id
        self.start_requested.set()
        return result201.RequestStartTransaction(status="Accepted")

    @on(enums201.Action.request_stop_transaction)
    async def on_request_stop(self, transaction_id: str) -> result201.RequestStopTransaction:
        self.stop_requested.set()
        return result201.RequestStopTransaction(status="Accepted")


#: Gaps between the charger's frames (seconds): varied, so timing tests mean something.
GAPS = (0.12, 0.2, 0.1, 0.25, 0.15, 0.3, 0.1, 0.2, 0.12, 0.18)


async def run_charger16(url: str, cp_id: str, *, meter_values: int = 3) -> None:
    async with websockets.connect(f"{url}/{cp_id}", subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
        cp = Charger16(cp_id, ws)
        task = asyncio.create_task(cp.start())
        gaps = itertools.cycle(GAPS)
        try:
            await cp.call(call16.BootNotification(charge_point_model="Eve", charge_point_vendor="Alfen"))
            await asyncio.sleep(next(gaps))
            await cp.call(call16.StatusNotification(1, "NoError", "Available", timestamp=now()))  # type: ignore[arg-type]
            await asyncio.sleep(next(gaps))
            await cp.call(call16.Authorize(id_tag=TAG))
            await asyncio.sleep(next(gaps))
            started = await cp.call(call16.StartTransaction(1, TAG, 0, now()))
            tx = started.transaction_id
            await asyncio.sleep(next(gaps))
            await cp.call(call16.StatusNotification(1, "NoError", "Charging", timestamp=now()))  # type: ignore[arg-type]
            for i in range(meter_values):
                await asyncio.sleep(next(gaps))
                mv = [{"timestamp": now(), "sampledValue": [{"value": str(100 * (i + 1)), "unit": "Wh"}]}]
                await cp.call(call16.MeterValues(1, mv, transaction_id=tx))
            await asyncio.wait_for(cp.stop_requested.wait(), 5)
            await asyncio.sleep(0.05)
            await cp.call(call16.StopTransaction(100 * meter_values, now(), tx, reason="Remote"))  # type: ignore[arg-type]
            await asyncio.sleep(next(gaps))
            await cp.call(call16.StatusNotification(1, "NoError", "Available", timestamp=now()))  # type: ignore[arg-type]
            await asyncio.sleep(0.1)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await task


async def run_charger201(url: str, cp_id: str, *, updates: int = 3) -> None:
    async with websockets.connect(f"{url}/{cp_id}", subprotocols=["ocpp2.0.1"]) as ws:  # type: ignore[list-item]
        cp = Charger201(cp_id, ws)
        task = asyncio.create_task(cp.start())
        gaps = itertools.cycle(GAPS)
        tx = {"transactionId": "TX-4711"}
        try:
            await cp.call(
                call201.BootNotification(
                    charging_station={"model": "Eve", "vendor_name": "Alfen"},  # type: ignore[arg-type]
                    reason="PowerUp",  # type: ignore[arg-type]
                )
            )
            await asyncio.sleep(next(gaps))
            await cp.call(call201.StatusNotification(now(), "Available", 1, 1))  # type: ignore[arg-type]
            await asyncio.wait_for(cp.start_requested.wait(), 5)
            await asyncio.sleep(0.05)
            await cp.call(call201.Authorize(id_token={"id_token": TAG, "type": "ISO14443"}))  # type: ignore[arg-type]
            await asyncio.sleep(next(gaps))
            info = {"transaction_id": tx["transactionId"], "remote_start_id": cp.remote_start_id}
            await cp.call(
                call201.TransactionEvent(
                    "Started",  # type: ignore[arg-type]
                    now(),
                    "RemoteStart",  # type: ignore[arg-type]
                    0,
                    info,  # type: ignore[arg-type]
                    id_token={"id_token": TAG, "type": "ISO14443"},  # type: ignore[arg-type]
                    evse={"id": 1, "connector_id": 1},  # type: ignore[arg-type]
                )
            )
            for i in range(updates):
                await asyncio.sleep(next(gaps))
                mv = [{"timestamp": now(), "sampled_value": [{"value": 100.0 * (i + 1)}]}]
                await cp.call(
                    call201.TransactionEvent(
                        "Updated",  # type: ignore[arg-type]
                        now(),
                        "MeterValuePeriodic",  # type: ignore[arg-type]
                        i + 1,
                        {"transaction_id": tx["transactionId"]},  # type: ignore[arg-type]
                        meter_value=mv,  # type: ignore[arg-type]
                    )
                )
            await asyncio.wait_for(cp.stop_requested.wait(), 5)
            await asyncio.sleep(0.05)
            await cp.call(
                call201.TransactionEvent(
                    "Ended",  # type: ignore[arg-type]
                    now(),
                    "RemoteStop",  # type: ignore[arg-type]
                    updates + 1,
                    {"transaction_id": tx["transactionId"], "stopped_reason": "Remote"},  # type: ignore[arg-type]
                )
            )
            await asyncio.sleep(next(gaps))
            await cp.call(call201.StatusNotification(now(), "Available", 1, 1))  # type: ignore[arg-type]
            await asyncio.sleep(0.1)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await task
