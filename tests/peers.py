"""Independent OCPP peers for tests, built on the mobilityhouse `ocpp` package and the
`websockets` library (not on aiohttp, which the proxy uses), so the proxy is checked
against code that shares nothing with it.

Every peer records the exact text it sent and received, so tests can assert that both
sides of the proxy saw byte-identical frames.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v16 import datatypes as dt16
from ocpp.v16 import enums as enums16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from ocpp.v201 import datatypes as dt201
from ocpp.v201 import enums as enums201
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Recording:
    """A websockets connection that keeps every text it sends and receives."""

    def __init__(self, ws: ServerConnection | ClientConnection) -> None:
        self.ws = ws
        self.sent: list[str | bytes] = []
        self.received: list[str | bytes] = []

    async def recv(self) -> str | bytes:
        data = await self.ws.recv()
        self.received.append(data)
        return data

    async def send(self, data: str | bytes) -> None:
        self.sent.append(data)
        await self.ws.send(data)


@dataclass
class CsmsBehaviour:
    """What the test CSMS does; tests change it to provoke differences."""

    tx_base: int = 1000
    blocked: set[str] = field(default_factory=set)
    remote_stop_after_meter_values: int | None = None
    password: str | None = None  # require Basic auth with this password
    refuse_status: int | None = None


class Csms16(ChargePoint16):
    def __init__(self, cp_id: str, conn: Recording, behaviour: CsmsBehaviour) -> None:
        super().__init__(cp_id, conn, response_timeout=5)
        self.behaviour = behaviour
        self.tx_ids = itertools.count(behaviour.tx_base)
        self.meter_values: list[dict[str, Any]] = []
        self.tasks: list[asyncio.Task[Any]] = []
        self.remote_stop_results: list[Any] = []

    @on(enums16.Action.boot_notification)
    async def on_boot(self, **_: Any) -> result16.BootNotification:
        return result16.BootNotification(
            current_time=now(), interval=300, status=enums16.RegistrationStatus.accepted
        )

    @on(enums16.Action.status_notification)
    async def on_status(self, **_: Any) -> result16.StatusNotification:
        return result16.StatusNotification()

    @on(enums16.Action.heartbeat)
    async def on_heartbeat(self, **_: Any) -> result16.Heartbeat:
        return result16.Heartbeat(current_time=now())

    def _tag_info(self, id_tag: str) -> dt16.IdTagInfo:
        status = (
            enums16.AuthorizationStatus.blocked
            if id_tag in self.behaviour.blocked
            else enums16.AuthorizationStatus.accepted
        )
        return dt16.IdTagInfo(status=status)

    @on(enums16.Action.authorize)
    async def on_authorize(self, id_tag: str, **_: Any) -> result16.Authorize:
        return result16.Authorize(id_tag_info=self._tag_info(id_tag))

    @on(enums16.Action.start_transaction)
    async def on_start(self, id_tag: str, **_: Any) -> result16.StartTransaction:
        return result16.StartTransaction(transaction_id=next(self.tx_ids), id_tag_info=self._tag_info(id_tag))

    @on(enums16.Action.meter_values)
    async def on_meter_values(self, **kwargs: Any) -> result16.MeterValues:
        self.meter_values.append(kwargs)
        n = self.behaviour.remote_stop_after_meter_values
        if n is not None and len(self.meter_values) == n and kwargs.get("transaction_id"):
            self.tasks.append(asyncio.create_task(self._remote_stop(kwargs["transaction_id"])))
        return result16.MeterValues()

    async def _remote_stop(self, transaction_id: int) -> None:
        await asyncio.sleep(0.01)
        result = await self.call(call16.RemoteStopTransaction(transaction_id=transaction_id))
        self.remote_stop_results.append(result)

    @on(enums16.Action.stop_transaction)
    async def on_stop(self, **_: Any) -> result16.StopTransaction:
        return result16.StopTransaction()


class Csms201(ChargePoint201):
    def __init__(self, cp_id: str, conn: Recording, behaviour: CsmsBehaviour) -> None:
        super().__init__(cp_id, conn, response_timeout=5)
        self.behaviour = behaviour
        self.tasks: list[asyncio.Task[Any]] = []

    @on(enums201.Action.boot_notification)
    async def on_boot(self, **_: Any) -> result201.BootNotification:
        return result201.BootNotification(
            current_time=now(), interval=300, status=enums201.RegistrationStatusEnumType.accepted
        )

    @on(enums201.Action.status_notification)
    async def on_status(self, **_: Any) -> result201.StatusNotification:
        return result201.StatusNotification()

    @on(enums201.Action.heartbeat)
    async def on_heartbeat(self, **_: Any) -> result201.Heartbeat:
        return result201.Heartbeat(current_time=now())

    @on(enums201.Action.authorize)
    async def on_authorize(self, id_token: dict[str, Any], **_: Any) -> result201.Authorize:
        status = (
            enums201.AuthorizationStatusEnumType.blocked
            if id_token["id_token"] in self.behaviour.blocked
            else enums201.AuthorizationStatusEnumType.accepted
        )
        return result201.Authorize(id_token_info=dt201.IdTokenInfoType(status=status))

    @on(enums201.Action.transaction_event)
    async def on_transaction_event(self, **_: Any) -> result201.TransactionEvent:
        return result201.TransactionEvent()


@dataclass
class TestCsms:
    server: Server
    url: str
    behaviour: CsmsBehaviour
    stations: dict[str, Csms16 | Csms201] = field(default_factory=dict)
    connections: list[Recording] = field(default_factory=list)
    handshakes: list[Any] = field(default_factory=list)


@contextlib.asynccontextmanager
async def run_csms(
    behaviour: CsmsBehaviour | None = None,
    *,
    subprotocols: tuple[str, ...] = ("ocpp1.6", "ocpp2.0.1"),
    ssl: Any = None,
    handler: Callable[[ServerConnection], Any] | None = None,
) -> AsyncIterator[TestCsms]:
    """An ocpp-package CSMS on 127.0.0.1 with an ephemeral port."""
    behaviour = behaviour or CsmsBehaviour()
    holder: dict[str, TestCsms] = {}

    def process_request(conn: ServerConnection, request: Any) -> Any:
        holder["csms"].handshakes.append(request)
        if behaviour.refuse_status is not None:
            return conn.respond(http.HTTPStatus(behaviour.refuse_status), "refused\n")
        if behaviour.password is not None:
            expected = (
                "Basic "
                + base64.b64encode(
                    f"{request.path.rsplit('/', 1)[-1]}:{behaviour.password}".encode()
                ).decode()
            )
            if request.headers.get("Authorization") != expected:
                response = conn.respond(http.HTTPStatus.UNAUTHORIZED, "bad credentials\n")
                response.headers["WWW-Authenticate"] = 'Basic realm="ocpp"'
                return response
        return None

    async def default_handler(ws: ServerConnection) -> None:
        rec = Recording(ws)
        holder["csms"].connections.append(rec)
        cp_id = ws.request.path.rstrip("/").rsplit("/", 1)[-1] if ws.request else "?"
        station: Csms16 | Csms201
        if ws.subprotocol == "ocpp2.0.1":
            station = Csms201(cp_id, rec, behaviour)
        else:
            station = Csms16(cp_id, rec, behaviour)
        holder["csms"].stations[cp_id] = station
        with contextlib.suppress(websockets.ConnectionClosed):
            await station.start()

    async with serve(
        handler or default_handler,
        "127.0.0.1",
        0,
        subprotocols=list(subprotocols) if subprotocols else None,  # type: ignore[arg-type]
        process_request=process_request,
        ssl=ssl,
        ping_interval=None,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        scheme = "wss" if ssl else "ws"
        csms = TestCsms(server, f"{scheme}://127.0.0.1:{port}/ocpp", behaviour)
        holder["csms"] = csms
        yield csms


class Charger16(ChargePoint16):
    def __init__(self, cp_id: str, conn: Recording) -> None:
        super().__init__(cp_id, conn, response_timeout=5)
        self.remote_stops: list[int] = []
        self.stopped = asyncio.Event()

    @on(enums16.Action.remote_stop_transaction)
    async def on_remote_stop(self, transaction_id: int) -> result16.RemoteStopTransaction:
        self.remote_stops.append(transaction_id)
        self.stopped.set()
        return result16.RemoteStopTransaction(status=enums16.RemoteStartStopStatus.accepted)


class Charger201(ChargePoint201):
    pass


@contextlib.asynccontextmanager
async def charger(
    url: str,
    cp_id: str,
    *,
    version: str = "1.6",
    subprotocols: list[str] | None = None,
    headers: dict[str, str] | None = None,
    ssl: Any = None,
) -> AsyncIterator[Charger16 | Charger201]:
    """An ocpp-package charge point connected to ``url/cp_id``, its receive loop running."""
    protos = subprotocols or (["ocpp1.6"] if version == "1.6" else ["ocpp2.0.1"])
    async with connect(
        f"{url}/{cp_id}",
        subprotocols=protos,  # type: ignore[arg-type]
        additional_headers=headers,
        ssl=ssl,
        ping_interval=None,
        open_timeout=5,
    ) as ws:
        rec = Recording(ws)
        cp: Charger16 | Charger201 = Charger16(cp_id, rec) if version == "1.6" else Charger201(cp_id, rec)
        cp.recording = rec  # type: ignore[union-attr]
        task = asyncio.create_task(cp.start())
        try:
            yield cp
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await task


async def session16(cp: Charger16, *, id_tag: str = "ACE0177305", meter_values: int = 3) -> dict[str, Any]:
    """Boot, statuses, authorize, start, meter values (until a remote stop), stop."""
    boot = await cp.call(
        call16.BootNotification(
            charge_point_vendor="Alfen BV",
            charge_point_model="NG910-60023",
            charge_point_serial_number="ace0100201",
            firmware_version="6.5.0-4217",
        )
    )
    for connector in (0, 1):
        await cp.call(
            call16.StatusNotification(
                connector_id=connector,
                error_code=enums16.ChargePointErrorCode.no_error,
                status=enums16.ChargePointStatus.available,
                timestamp=now(),
            )
        )
    auth = await cp.call(call16.Authorize(id_tag=id_tag))
    start = await cp.call(
        call16.StartTransaction(connector_id=1, id_tag=id_tag, meter_start=2145278, timestamp=now())
    )
    tx = start.transaction_id
    for i in range(meter_values):
        await cp.call(
            call16.MeterValues(
                connector_id=1,
                transaction_id=tx,
                meter_value=[
                    {
                        "timestamp": now(),
                        "sampledValue": [
                            {
                                "value": str(2145278 + 100 * i),
                                "measurand": "Energy.Active.Import.Register",
                                "unit": "Wh",
                            },
                        ],
                    }
                ],
            )
        )
    if cp.remote_stops or meter_values:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await cp.stopped.wait()
    stop = await cp.call(
        call16.StopTransaction(meter_stop=2145278 + 1000, timestamp=now(), transaction_id=tx, reason="Remote")
    )
    return {"boot": boot, "auth": auth, "start": start, "stop": stop, "tx": tx}


async def session201(cp: Charger201) -> None:
    await cp.call(
        call201.BootNotification(
            charging_station={"model": "NG910-60023", "vendor_name": "Alfen BV"},
            reason=enums201.BootReasonEnumType.power_up,
        )
    )
    await cp.call(
        call201.StatusNotification(
            timestamp=now(),
            connector_status=enums201.ConnectorStatusEnumType.available,
            evse_id=1,
            connector_id=1,
        )
    )
    await cp.call(call201.Authorize(id_token={"id_token": "ACE0177305", "type": "ISO14443"}))
    await cp.call(call201.Heartbeat())
