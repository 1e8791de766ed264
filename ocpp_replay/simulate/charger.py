"""The state machine of one virtual Alfen charger, OCPP 1.6, 2.0.1 or 2.1. Pure: no sockets, no clock.

2.1 keeps the 2.0.1 messages the charger uses (the 2.1 schemas only add optional fields and enum
values to them), so a 2.1 charger speaks as a 2.0.1 one does, checked against the 2.1 schemas;
:meth:`Charger.speak` switches a 2.1 charger to 2.0.1 when the backend picks that subprotocol.

The I/O loop (runner.py) calls an event method (``plug``, ``start``, ``fire_due``...) with the
virtual time and gets back the :class:`Out` messages to send, in order. It reports each answer
with :meth:`Charger.on_answer`, which may yield follow-up messages, and hands backend CALLs to
:meth:`Charger.answer_call`, which checks them against the schema and returns the answer and a
:class:`Reaction`.

While offline, transaction messages (StartTransaction, MeterValues of a transaction,
StopTransaction, TransactionEvent) are queued with their original timestamps and delivered by
:meth:`Charger.restored`; status and heartbeats are not queued, the current status is sent
again on reconnect instead. In 1.6 the backend's transactionId is not known while offline, so
queued messages keep a reference to their local transaction and get the id when sent.
"""

from __future__ import annotations

import random
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from ocpp_replay.core import schemas
from ocpp_replay.simulate.alfen import Identity, Meter, config_16, variables_201

__all__ = ["Charger", "Connector", "LocalTx", "Out", "Reaction", "status_of", "timestamp"]

Payload = dict[str, Any]

# 1.6 status -> 2.0.1 connectorStatus
_CONNECTOR_STATUS: Final = {
    "Available": "Available",
    "Preparing": "Occupied",
    "Charging": "Occupied",
    "SuspendedEV": "Occupied",
    "SuspendedEVSE": "Occupied",
    "Finishing": "Occupied",
    "Reserved": "Reserved",
    "Unavailable": "Unavailable",
    "Faulted": "Faulted",
}
# 1.6 stop reason -> (2.0.1 stoppedReason, triggerReason)
_STOP_201: Final = {
    "Local": ("Local", "StopAuthorized"),
    "Remote": ("Remote", "RemoteStop"),
    "EVDisconnected": ("EVDisconnected", "EVCommunicationLost"),
    "DeAuthorized": ("DeAuthorized", "Deauthorized"),
    "SoftReset": ("ImmediateReset", "ResetCommand"),
    "HardReset": ("ImmediateReset", "ResetCommand"),
    "Reboot": ("Reboot", "ResetCommand"),
    "UnlockCommand": ("Other", "UnlockCommand"),
    "PowerLoss": ("PowerLoss", "AbnormalCondition"),
    "EmergencyStop": ("EmergencyStop", "AbnormalCondition"),
    "Other": ("Other", "AbnormalCondition"),
}
_QUEUEABLE: Final = frozenset({"StartTransaction", "StopTransaction", "TransactionEvent"})
_CHARGING_STATE: Final = {
    "Preparing": "EVConnected",
    "Charging": "Charging",
    "SuspendedEV": "SuspendedEV",
    "SuspendedEVSE": "SuspendedEVSE",
    "Finishing": "EVConnected",
}
_TRIGGERS_16: Final = frozenset(
    {"BootNotification", "DiagnosticsStatusNotification", "FirmwareStatusNotification"}
    | {"Heartbeat", "MeterValues", "StatusNotification"}
)
_TRIGGERS_201: Final = frozenset(
    {"BootNotification", "FirmwareStatusNotification", "Heartbeat", "LogStatusNotification"}
    | {"MeterValues", "StatusNotification", "TransactionEvent"}
)
VENDOR_ID: Final = "Alfen BV"


def timestamp(moment: datetime) -> str:
    """Charger timestamps: UTC, whole seconds, Z (as Alfen sends them)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_of(answer: Payload) -> str | None:
    """The status a backend answer carries: status, idTagInfo.status or idTokenInfo.status."""
    for key in ("idTagInfo", "idTokenInfo"):
        info = answer.get(key)
        if isinstance(info, dict) and isinstance(info.get("status"), str):
            return str(info["status"])
    status = answer.get("status")
    return status if isinstance(status, str) else None


@dataclass(slots=True)
class LocalTx:
    """A transaction as the charger knows it."""

    local_id: int
    connector: int
    id_tag: str | None
    started: datetime
    meter_start: int
    tx_id: str = ""  # 2.0.1: chosen by the charger
    backend_id: int | None = None  # 1.6: assigned by the backend
    seq_no: int = 0
    remote_start_id: int | None = None
    ended: bool = False
    next_sample: datetime | None = None


@dataclass(slots=True)
class Out:
    """A CALL the charger wants to send. ``tx`` resolves the 1.6 transactionId at send time."""

    action: str
    payload: Payload
    tx: LocalTx | None = None
    queueable: bool = False
    primary: bool = True
    connector: int = 0


@dataclass(slots=True)
class Reaction:
    """What a backend CALL makes the charger do after answering: messages, maybe a reboot."""

    outs: list[Out] = field(default_factory=list)
    reboot: str | None = None  # "Soft" / "Hard"


@dataclass(slots=True)
class Connector:
    id: int
    meter: Meter
    status: str = "Available"
    error_code: str = "NoError"
    vendor_error_code: str | None = None
    info: str | None = None
    plugged: bool = False
    operative: bool = True
    inoperative_pending: bool = False
    authorized: str | None = None
    auth_rejected: bool = False
    tx: LocalTx | None = None
    limit_a: float | None = None
    metered_at: datetime | None = None
    reported: tuple[str, str] | None = None


class Charger:
    """One virtual Alfen charger. All methods take the virtual time and return messages to send."""

    def __init__(self, ident: Identity, version: str, rng: random.Random, *, start: datetime) -> None:
        self.identity = ident
        self.version = version
        self.rng = rng
        self.online = False
        self.booted = False
        self.boot_reason = "PowerUp"
        self.heartbeat_interval = 300.0
        self.next_heartbeat: datetime | None = None
        self.next_clock: datetime | None = None
        self.queue: deque[Out] = deque()
        self._tx_counter = 0
        self.transactions: list[LocalTx] = []
        self.profiles: dict[int, float] = {}
        self.config: dict[str, tuple[str, bool]] = (
            config_16(ident) if version == "1.6" else variables_201(ident)
        )
        self.connectors: dict[int, Connector] = {
            c: Connector(c, Meter.new(rng)) for c in range(1, ident.connectors + 1)
        }
        self.status_0 = "Available"
        self.reported_0: str | None = None
        self.event_id = 0  # 2.0.1 NotifyEvent ids
        self.now = start

    def speak(self, version: str) -> None:
        """Speak VERSION on this connection: a 2.1 charger falls back to 2.0.1 when the backend
        picks it (same messages, same device model). Raises ValueError across 1.6 and 2.x."""
        if (version == "1.6") != (self.version == "1.6"):
            raise ValueError(f"a {self.version} charger cannot speak {version}")
        self.version = version

    # -- configuration ----------------------------------------------------------------------

    def _config_seconds(self, key_16: str, key_201: str) -> float:
        value, _ = self.config.get(key_16 if self.version == "1.6" else key_201, ("0", False))
        try:
            return float(value)
        except ValueError:
            return 0.0

    @property
    def sample_interval(self) -> float:
        return self._config_seconds("MeterValueSampleInterval", "SampledDataCtrlr.TxUpdatedInterval")

    @property
    def clock_interval(self) -> float:
        return self._config_seconds("ClockAlignedDataInterval", "AlignedDataCtrlr.Interval")

    # -- emitting ---------------------------------------------------------------------------

    def _emit(self, outs: Iterable[Out]) -> list[Out]:
        """Messages to send now; while offline, queue the transactional ones and drop the rest."""
        if self.online:
            return list(outs)
        for out in outs:
            self.offline_out(out)
        return []

    def offline_out(self, out: Out) -> None:
        """OUT could not be sent: queue it if a charger would, else forget it."""
        if out.queueable:
            self.queue.append(out)

    def requeue_front(self, outs: Iterable[Out]) -> None:
        """OUTS were in flight when the connection dropped: queue them first, in order."""
        for out in reversed([o for o in outs if o.queueable]):
            self.queue.appendleft(out)

    def finalize(self, out: Out) -> Payload | None:
        """The payload to send for OUT, or None when it cannot be sent any more."""
        if self.version == "1.6" and out.tx is not None and out.action in ("MeterValues", "StopTransaction"):
            if out.tx.backend_id is None:
                return None  # the backend never gave this transaction an id
            return {**out.payload, "transactionId": out.tx.backend_id}
        return out.payload

    # -- connection -------------------------------------------------------------------------

    def boot(self, now: datetime) -> list[Out]:
        self.now = now
        self.booted = False
        if self.version == "1.6":
            return [Out("BootNotification", self.identity.boot_16())]
        return [Out("BootNotification", self.identity.boot_201(self.boot_reason))]

    def connection_lost(self) -> None:
        self.online = False

    def connected(self) -> None:
        self.online = True

    def restored(self, now: datetime) -> list[Out]:
        """Back online without a reboot: deliver the queue, then the statuses that changed."""
        self.now = now
        self.online = True
        outs = list(self.queue)
        self.queue.clear()
        outs.extend(self._status_refresh(now, force=False))
        return outs

    def power_cycle(self, now: datetime, kind: str) -> list[Out]:
        """A reset: stop transactions as a charger does before rebooting (1.6 reasons)."""
        reason = "HardReset" if kind == "Hard" else "SoftReset"
        outs: list[Out] = []
        for connector in self.connectors.values():
            if connector.tx is not None:
                outs.extend(self.stop(connector.id, reason, now))
        return outs

    def rebooted(self) -> None:
        """After a reboot: not booted, nothing reported yet; connectors keep their cable state."""
        self.booted = False
        self.boot_reason = "RemoteReset"
        self.reported_0 = None
        for connector in self.connectors.values():
            connector.reported = None
            connector.authorized = None

    # -- answers ----------------------------------------------------------------------------

    def on_answer(self, out: Out, answer: Payload | None, now: datetime) -> list[Out]:
        """The backend answered OUT (None: CALLERROR or no answer). Returns follow-up messages."""
        self.now = now
        if answer is None:
            return []
        status = status_of(answer)
        if out.action == "BootNotification":
            return self._booted(answer, now)
        if out.action == "Authorize" and out.tx is None:
            connector = self.connectors.get(out.connector, self.connectors[1])
            tag = out.payload.get("idTag") or out.payload.get("idToken", {}).get("idToken")
            connector.authorized = tag if status == "Accepted" else None
            connector.auth_rejected = status != "Accepted"
            return []
        if out.action == "StartTransaction" and out.tx is not None:
            if isinstance(answer.get("transactionId"), int):
                out.tx.backend_id = answer["transactionId"]
            if status not in (None, "Accepted") and not out.tx.ended:
                return self.stop(out.tx.connector, "DeAuthorized", now)
            return []
        rejected = status not in (None, "Accepted")
        tx = out.tx
        if out.action == "TransactionEvent" and tx is not None and "idToken" in out.payload and rejected:
            return [] if tx.ended else self.stop(tx.connector, "DeAuthorized", now)
        return []

    def _booted(self, answer: Payload, now: datetime) -> list[Out]:
        interval = answer.get("interval")
        if isinstance(interval, int) and interval > 0:
            self.heartbeat_interval = float(interval)
            key = "HeartbeatInterval" if self.version == "1.6" else "OCPPCommCtrlr.HeartbeatInterval"
            self.config[key] = (str(interval), False)
        if answer.get("status") != "Accepted":
            return []
        self.booted = True
        self.next_heartbeat = now + timedelta(seconds=self.heartbeat_interval)
        return self._status_refresh(now, force=True)

    # -- timers -----------------------------------------------------------------------------

    def next_due(self) -> datetime | None:
        """When a timer (heartbeat, periodic or clock-aligned meter values) fires next."""
        if not self.booted:
            return None
        candidates = [self.next_heartbeat, self._next_clock_boundary()]
        candidates.extend(
            c.tx.next_sample for c in self.connectors.values() if c.tx is not None and c.tx.next_sample
        )
        due = [c for c in candidates if c is not None]
        return min(due) if due else None

    def _next_clock_boundary(self) -> datetime | None:
        interval = self.clock_interval
        if interval <= 0:
            return None
        if self.next_clock is None:
            epoch = self.now.timestamp()
            self.next_clock = datetime.fromtimestamp((epoch // interval + 1) * interval, UTC)
        return self.next_clock

    def fire_due(self, now: datetime) -> list[Out]:
        """Messages of every timer due at NOW."""
        self.now = now
        outs: list[Out] = []
        if self.next_clock is not None and self.next_clock <= now:
            outs.extend(self._meter_values(now, "Sample.Clock"))
            interval = self.clock_interval
            while interval > 0 and self.next_clock <= now:
                self.next_clock += timedelta(seconds=interval)
        for connector in self.connectors.values():
            tx = connector.tx
            if tx is not None and tx.next_sample is not None and tx.next_sample <= now:
                outs.extend(self._meter_values(now, "Sample.Periodic", only=connector.id))
                interval = max(self.sample_interval, 1.0)
                while tx.next_sample <= now:
                    tx.next_sample += timedelta(seconds=interval)
        if self.next_heartbeat is not None and self.next_heartbeat <= now:
            outs.extend(self.heartbeat(now))
            while self.next_heartbeat <= now:
                self.next_heartbeat += timedelta(seconds=max(self.heartbeat_interval, 1.0))
        return self._emit(outs)

    def heartbeat(self, now: datetime) -> list[Out]:
        self.now = now
        return self._emit([Out("Heartbeat", {})])

    # -- status -----------------------------------------------------------------------------

    def _status_out(self, connector_id: int, now: datetime) -> Out | None:
        if connector_id == 0:
            if self.version != "1.6":
                return None
            self.reported_0 = self.status_0
            return Out(
                "StatusNotification",
                {
                    "connectorId": 0,
                    "errorCode": "NoError",
                    "status": self.status_0,
                    "timestamp": timestamp(now),
                },
                primary=False,
            )
        c = self.connectors[connector_id]
        if self.version == "1.6":
            c.reported = (c.status, c.error_code)
            payload: Payload = {
                "connectorId": c.id,
                "errorCode": c.error_code,
                "status": c.status,
                "timestamp": timestamp(now),
            }
            if c.vendor_error_code is not None:
                payload["info"] = c.info or "Error"
                payload["vendorId"] = VENDOR_ID
                payload["vendorErrorCode"] = c.vendor_error_code
            return Out("StatusNotification", payload, primary=False)
        connector_status = _CONNECTOR_STATUS[c.status]
        c.reported = (connector_status, c.error_code)
        return Out(
            "StatusNotification",
            {
                "timestamp": timestamp(now),
                "connectorStatus": connector_status,
                "evseId": c.id,
                "connectorId": 1,
            },
            primary=False,
        )

    def _set_status(self, connector: Connector, status: str, now: datetime) -> list[Out]:
        connector.status = status
        if not self.online:
            return []
        shown = status if self.version == "1.6" else _CONNECTOR_STATUS[status]
        if connector.reported == (shown, connector.error_code):
            return []
        out = self._status_out(connector.id, now)
        return [out] if out else []

    def _status_refresh(self, now: datetime, *, force: bool) -> list[Out]:
        outs: list[Out] = []
        if self.version == "1.6" and (force or self.reported_0 != self.status_0):
            out = self._status_out(0, now)
            if out:
                outs.append(out)
        for c in self.connectors.values():
            shown = c.status if self.version == "1.6" else _CONNECTOR_STATUS[c.status]
            if force or c.reported != (shown, c.error_code):
                out = self._status_out(c.id, now)
                if out:
                    outs.append(out)
        return outs

    # -- the driver's events ----------------------------------------------------------------

    def _connector(self, connector_id: int) -> Connector | None:
        return self.connectors.get(connector_id)

    def plug(self, connector_id: int, now: datetime) -> list[Out]:
        self.now = now
        c = self._connector(connector_id)
        if c is None or c.plugged or c.status in ("Faulted", "Unavailable"):
            return []
        c.plugged = True
        c.authorized = None
        c.auth_rejected = False
        return self._emit(self._set_status(c, "Preparing", now))

    def authorize(self, connector_id: int, id_tag: str, now: datetime) -> list[Out]:
        self.now = now
        c = self._connector(connector_id)
        if c is None or c.tx is not None:
            return []
        if not self.online:
            c.authorized = id_tag  # local authorization (cache / LocalAuthorizeOffline)
            return []
        if self.version == "1.6":
            return [Out("Authorize", {"idTag": id_tag}, connector=connector_id)]
        token = {"idToken": id_tag, "type": "ISO14443"}
        return [Out("Authorize", {"idToken": token}, connector=connector_id)]

    def start(
        self, connector_id: int, id_tag: str | None, now: datetime, *, remote_start_id: int | None = None
    ) -> list[Out]:
        """Start charging on a connector: an authorized card, or a remote start."""
        self.now = now
        c = self._connector(connector_id)
        if c is None or c.tx is not None or not c.operative or c.status == "Faulted":
            return []
        tag = id_tag or c.authorized
        if tag is None:
            return []
        outs: list[Out] = []
        if not c.plugged:
            outs.extend(self.plug(connector_id, now))
        self._tx_counter += 1
        self._advance_meter(c, now)
        tx = LocalTx(
            self._tx_counter,
            c.id,
            tag,
            now,
            c.meter.register,
            tx_id=str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            remote_start_id=remote_start_id,
        )
        if self.sample_interval > 0:
            tx.next_sample = now + timedelta(seconds=self.sample_interval)
        c.tx = tx
        c.authorized = None
        self.transactions.append(tx)
        c.meter.drawing = True
        c.meter.limit_a = c.limit_a or 32.0
        if self.version == "1.6":
            start = Out(
                "StartTransaction",
                {
                    "connectorId": c.id,
                    "idTag": tag,
                    "meterStart": tx.meter_start,
                    "timestamp": timestamp(now),
                },
                tx=tx,
                queueable=True,
            )
            outs.append(start)
            outs.extend(self._set_status(c, "Charging", now))
        else:
            c.status = "Charging"
            trigger = "RemoteStart" if remote_start_id is not None else "Authorized"
            event = self._tx_event(c, "Started", trigger, now, context="Transaction.Begin", id_tag=tag)
            outs.extend(self._set_status(c, "Charging", now))
            outs.append(event)
        return self._emit(outs)

    def suspend(self, connector_id: int, now: datetime, *, suspended: bool = True) -> list[Out]:
        """The EV pauses (SuspendedEV) or resumes charging."""
        self.now = now
        c = self._connector(connector_id)
        if c is None or c.tx is None:
            return []
        self._advance_meter(c, now)
        c.meter.drawing = not suspended
        status = "SuspendedEV" if suspended else "Charging"
        if c.status == status:
            return []
        outs = self._set_status(c, status, now)
        if self.version != "1.6":
            outs.append(self._tx_event(c, "Updated", "ChargingStateChanged", now))
        return self._emit(outs)

    def stop(self, connector_id: int, reason: str, now: datetime) -> list[Out]:
        """End the transaction on a connector, with a 1.6 stop reason."""
        self.now = now
        c = self._connector(connector_id)
        if c is None or c.tx is None:
            return []
        tx = c.tx
        self._advance_meter(c, now)
        c.meter.drawing = False
        tx.ended = True
        c.tx = None
        outs: list[Out] = []
        if self.version == "1.6":
            payload: Payload = {
                "meterStop": c.meter.register,
                "timestamp": timestamp(now),
                "transactionId": 0,  # set from the backend's id when sent
                "reason": reason,
                "transactionData": [
                    self._meter_value(
                        c, tx.started, "Transaction.Begin", energy_only=True, register=tx.meter_start
                    ),
                    self._meter_value(c, now, "Transaction.End", energy_only=True),
                ],
            }
            if reason == "Local" and tx.id_tag:
                payload["idTag"] = tx.id_tag
            outs.extend(self._set_status(c, "Finishing" if c.plugged else "Available", now))
            outs.insert(0, Out("StopTransaction", payload, tx=tx, queueable=True))
        else:
            stopped, trigger = _STOP_201.get(reason, ("Other", "AbnormalCondition"))
            c.status = "Finishing" if c.plugged else "Available"
            event = self._tx_event(
                c, "Ended", trigger, now, context="Transaction.End", stopped_reason=stopped, tx=tx
            )
            if reason == "Local" and tx.id_tag:
                event.payload["idToken"] = {"idToken": tx.id_tag, "type": "ISO14443"}
            outs.append(event)
            outs.extend(self._set_status(c, c.status, now))
        if c.inoperative_pending:
            c.inoperative_pending = False
            c.operative = False
            if not c.plugged:
                outs.extend(self._set_status(c, "Unavailable", now))
        return self._emit(outs)

    def unplug(self, connector_id: int, now: datetime) -> list[Out]:
        self.now = now
        c = self._connector(connector_id)
        if c is None or not c.plugged:
            return []
        outs: list[Out] = []
        if c.tx is not None:
            outs.extend(self.stop(connector_id, "EVDisconnected", now))
        c.plugged = False
        c.authorized = None
        c.auth_rejected = False
        outs.extend(self._emit(self._set_status(c, "Available" if c.operative else "Unavailable", now)))
        return outs

    def fault(self, connector_id: int, vendor_error_code: str, info: str, now: datetime) -> list[Out]:
        self.now = now
        c = self._connector(connector_id)
        if c is None or c.status == "Faulted":
            return []
        outs = self.stop(connector_id, "Other", now) if c.tx is not None else []
        c.error_code, c.vendor_error_code, c.info = "OtherError", vendor_error_code, info
        outs.extend(self._emit(self._set_status(c, "Faulted", now)))
        outs.extend(self._emit(self._fault_event(c, now, cleared=False)))
        return outs

    def _fault_event(self, c: Connector, now: datetime, *, cleared: bool) -> list[Out]:
        """2.0.1 has no error codes in StatusNotification: the fault and its vendor code are a
        NotifyEvent on the connector's AvailabilityState (and another when it clears)."""
        if self.version == "1.6":
            return []
        self.event_id += 1
        event: Payload = {
            "eventId": self.event_id,
            "timestamp": timestamp(now),
            "trigger": "Delta",
            "actualValue": "Faulted" if not cleared else _CONNECTOR_STATUS[c.status],
            "cleared": cleared,
            "eventNotificationType": "HardWiredNotification",
            "component": {"name": "Connector", "evse": {"id": c.id, "connectorId": 1}},
            "variable": {"name": "AvailabilityState"},
        }
        if c.vendor_error_code is not None:
            event["techCode"] = c.vendor_error_code
            event["techInfo"] = (c.info or "Error")[:500]
        payload: Payload = {"generatedAt": timestamp(now), "seqNo": 0, "tbc": False, "eventData": [event]}
        return [Out("NotifyEvent", payload, primary=False)]

    def recover(self, connector_id: int, now: datetime) -> list[Out]:
        self.now = now
        c = self._connector(connector_id)
        if c is None or c.status != "Faulted":
            return []
        c.error_code, c.vendor_error_code, c.info = "NoError", None, None
        status = ("Preparing" if c.plugged else "Available") if c.operative else "Unavailable"
        outs = self._emit(self._set_status(c, status, now))
        outs.extend(self._emit(self._fault_event(c, now, cleared=True)))
        return outs

    def data_transfer(self, vendor_id: str, message_id: str | None, data: str | None) -> list[Out]:
        payload: Payload = {"vendorId": vendor_id}
        if message_id is not None:
            payload["messageId"] = message_id
        if data is not None:
            payload["data"] = data
        return self._emit([Out("DataTransfer", payload)])

    # -- meter values -----------------------------------------------------------------------

    def _advance_meter(self, c: Connector, now: datetime) -> None:
        if c.metered_at is not None:
            c.meter.advance((now - c.metered_at).total_seconds())
        c.metered_at = now

    def _meter_value(
        self,
        c: Connector,
        when: datetime,
        context: str,
        *,
        energy_only: bool = False,
        register: int | None = None,
    ) -> Payload:
        samples = c.meter.sample()
        if energy_only:
            samples = samples[:1]
        if register is not None:
            samples[0]["value"] = float(register)
        if self.version != "1.6":  # 2.0.1 and 2.1 have no Temperature measurand
            samples = [s for s in samples if s["measurand"] != "Temperature"]
        rendered = [self._sampled(s, context) for s in samples]
        return {"timestamp": timestamp(when), "sampledValue": rendered}

    def _sampled(self, sample: Payload, context: str) -> Payload:
        measurand = sample["measurand"]
        value = float(sample["value"])
        digits = {"Energy.Active.Import.Register": 0, "Power.Active.Import": 0, "Frequency": 2}.get(
            measurand, 1
        )
        location = sample.get("location", "Outlet")
        if self.version == "1.6":
            text = f"{value:.{digits}f}"
            out: Payload = {"value": text, "context": context, "format": "Raw", "measurand": measurand}
            if "phase" in sample:
                out["phase"] = sample["phase"]
            out["location"] = location
            if sample.get("unit"):
                out["unit"] = sample["unit"]
            return out
        unit = sample.get("unit") or "Hz"
        number: float | int = round(value, digits) if digits else round(value)
        out = {"value": number, "context": context, "measurand": measurand}
        if "phase" in sample:
            out["phase"] = sample["phase"]
        out["location"] = location
        out["unitOfMeasure"] = {"unit": unit}
        return out

    def _meter_values(self, now: datetime, context: str, *, only: int | None = None) -> list[Out]:
        outs: list[Out] = []
        for c in self.connectors.values():
            if only is not None and c.id != only:
                continue
            self._advance_meter(c, now)
            in_tx = c.tx is not None
            energy_only = context == "Sample.Clock"
            if self.version == "1.6":
                payload: Payload = {"connectorId": c.id}
                if c.tx is not None:
                    payload["transactionId"] = 0  # set from the backend's id when sent
                payload["meterValue"] = [self._meter_value(c, now, context, energy_only=energy_only)]
                outs.append(Out("MeterValues", payload, tx=c.tx, queueable=in_tx, primary=False))
            elif c.tx is not None:
                trigger = {"Sample.Clock": "MeterValueClock", "Trigger": "Trigger"}.get(
                    context, "MeterValuePeriodic"
                )
                outs.append(
                    self._tx_event(c, "Updated", trigger, now, context=context, energy_only=energy_only)
                )
            else:
                mv = [self._meter_value(c, now, context, energy_only=energy_only)]
                outs.append(Out("MeterValues", {"evseId": c.id, "meterValue": mv}, primary=False))
        return outs

    def _tx_event(
        self,
        c: Connector,
        event_type: str,
        trigger: str,
        now: datetime,
        *,
        context: str | None = None,
        id_tag: str | None = None,
        stopped_reason: str | None = None,
        energy_only: bool = False,
        tx: LocalTx | None = None,
    ) -> Out:
        tx = tx or c.tx
        assert tx is not None
        info: Payload = {"transactionId": tx.tx_id}
        state = _CHARGING_STATE.get(c.status)
        if event_type == "Ended":
            info["chargingState"] = "EVConnected" if c.plugged else "Idle"
            info["stoppedReason"] = stopped_reason or "Local"
        elif state:
            info["chargingState"] = state
        if tx.remote_start_id is not None and event_type == "Started":
            info["remoteStartId"] = tx.remote_start_id
        payload: Payload = {
            "eventType": event_type,
            "timestamp": timestamp(now),
            "triggerReason": trigger,
            "seqNo": tx.seq_no,
            "transactionInfo": info,
        }
        tx.seq_no += 1
        if not self.online:
            payload["offline"] = True
        payload["evse"] = {"id": c.id, "connectorId": 1}
        if id_tag is not None:
            payload["idToken"] = {"idToken": id_tag, "type": "ISO14443"}
        if context is not None:
            payload["meterValue"] = [self._meter_value(c, now, context, energy_only=energy_only)]
        return Out("TransactionEvent", payload, tx=tx, queueable=True, primary=event_type != "Updated")

    # -- backend CALLs ----------------------------------------------------------------------

    @property
    def _format_violation(self) -> str:
        return "FormationViolation" if self.version == "1.6" else "FormatViolation"

    def answer_call(
        self, action: str, payload: Payload, now: datetime
    ) -> tuple[Payload | tuple[str, str], Reaction, list[schemas.Violation]]:
        """Check a backend CALL against its schema, then answer it as :meth:`handle_call` does.

        Also returns the schema violations of the CALL (none for an unknown action, which is
        answered NotImplemented). A CALL with violations is answered with a format CALLERROR.
        """
        violations = schemas.validate(self.version, action, payload, response=False)
        if violations and violations[0].message == "unknown action":
            return ("NotImplemented", f"unknown action {action}"), Reaction(), []
        if violations:
            return (self._format_violation, str(violations[0])[:255]), Reaction(), violations
        reply, reaction = self.handle_call(action, payload, now)
        return reply, reaction, []

    def handle_call(
        self, action: str, payload: Payload, now: datetime
    ) -> tuple[Payload | tuple[str, str], Reaction]:
        """Answer a backend CALL. Returns (answer payload or (error code, description), reaction)."""
        self.now = now
        table = _HANDLERS_16 if self.version == "1.6" else _HANDLERS_201
        handler = table.get(action)
        if handler is None:
            return ("NotImplemented", f"{action} is not implemented by this charger"), Reaction()
        try:
            return handler(self, payload, now)
        except (KeyError, TypeError, ValueError, AttributeError):
            return (self._format_violation, f"cannot process {action}"), Reaction()

    def active_tx(self, *, backend_id: int | None = None, tx_id: str | None = None) -> LocalTx | None:
        for c in self.connectors.values():
            tx = c.tx
            if tx is None:
                continue
            if backend_id is not None and tx.backend_id == backend_id:
                return tx
            if tx_id is not None and tx.tx_id == tx_id:
                return tx
        return None

    def _triggered(self, message: str, connector_id: int | None, now: datetime) -> list[Out]:
        if message == "BootNotification":
            return self.boot(now) if self.online else []
        if message == "Heartbeat":
            return self.heartbeat(now)
        if message == "StatusNotification":
            ids = (
                [connector_id]
                if connector_id
                else ([0] if self.version == "1.6" else []) + list(self.connectors)
            )
            outs = [o for i in ids if (o := self._status_out(i, now)) is not None]
            return self._emit(outs)
        if message == "MeterValues":
            return self._emit(self._meter_values(now, "Trigger", only=connector_id))
        if message == "TransactionEvent":
            outs = [
                self._tx_event(c, "Updated", "Trigger", now)
                for c in self.connectors.values()
                if c.tx is not None and (connector_id is None or c.id == connector_id)
            ]
            return self._emit(outs)
        if message in (
            "DiagnosticsStatusNotification",
            "FirmwareStatusNotification",
            "LogStatusNotification",
        ):
            return self._emit([Out(message, {"status": "Idle"})])
        return []

    def _limit(self, connector_id: int, limit: float | None) -> None:
        targets = self.connectors.values() if connector_id == 0 else [self.connectors[connector_id]]
        for c in targets:
            c.limit_a = limit
            c.meter.limit_a = limit or 32.0

    def _availability(self, connector_id: int, operative: bool, now: datetime) -> tuple[str, list[Out]]:
        targets = list(self.connectors.values()) if connector_id == 0 else [self.connectors[connector_id]]
        outs: list[Out] = []
        scheduled = False
        for c in targets:
            if not operative and c.tx is not None:
                c.inoperative_pending = True
                scheduled = True
                continue
            c.inoperative_pending = False
            c.operative = operative
            if c.status != "Faulted":
                status = ("Preparing" if c.plugged else "Available") if operative else "Unavailable"
                outs.extend(self._set_status(c, status, now))
        if connector_id == 0 and self.version == "1.6":
            self.status_0 = "Available" if operative else "Unavailable"
            if self.online and self.reported_0 != self.status_0:
                out = self._status_out(0, now)
                if out:
                    outs.insert(0, out)
        return ("Scheduled" if scheduled else "Accepted"), self._emit(outs)


Handler = Callable[[Charger, Payload, datetime], tuple[Payload, Reaction]]


def _h_reset(ch: Charger, p: Payload, now: datetime) -> tuple[Payload, Reaction]:
    kind = str(p["type"])
    if ch.version != "1.6":  # Immediate, 2.1's ImmediateAndResume: now; OnIdle: when idle
        kind = "Soft" if kind == "OnIdle" else "Hard"
    return {"status": "Accepted"}, Reaction(reboot=kind)


def _can_remote_start(ch: Charger, connector_id: int, profile: object) -> bool:
    """Whether a remote start on CONNECTOR_ID is accepted; if so, apply the start's charging profile."""
    c = ch.connectors.get(connector_id)
    if c is None or c.tx is not None or not c.operative or c.status == "Faulted":
        return False
    limit = _profile_limit(profile)
    if limit is not None:
        ch._limit(connector_id, limit)
    return True


def _h_remote_start_16(ch: Charger, p: Payload, now: datetime) -> tuple[Payload, Reaction]:
    connector_id = int(p.get("connectorId", 1))
    if not _can_remote_start(ch, connector_id, p.get("chargingProfile")):
        return {"status": "Rejected"}, Reaction()
    return {"status": "Accepted"}, Reaction(ch.start(connector_id, str(p["idTag"]), now))


def _h_remote_stop_16(ch: Charger, p: Payload, now: datetime) -> tuple[Payload, Reaction]:
    tx = ch.active_tx(backend_id=int(p["transactionId"]))
    if tx is None:
        return {"status": "Rejected"}, Reaction()
    return {"status": "Accepted"}, Reaction(ch.stop(tx.connector, "Remote", now))


def _change_availability(
    ch: Charger, connector_id: int, p: Payload, key: str, now: datetime
) -> tuple[Payload, Reaction]:
    """ChangeAvailability of either version; P[KEY] is read only for a known connector (0: all)."""
    if connector_id != 0 and connector_id not in ch.connectors:
        return {"status": "Rejected"}, Reaction()
    status, outs = ch._availability(connector_id, p[key] == "Operative", now)
    return {"status": status}, Reaction(outs)


def _h_change_availability_16(ch: Charger, p: Payload, now: datetime) -> tuple[Payload, Reaction]:
    return _change_availability(ch, int(p["connectorId"]), p, "type", now)


def _h_unlock_16(ch: Charger, p: Payload, now: datetime) -> tuple[Payload, Reaction]:
    c = ch.connectors.get(int(p["connectorId"]))
    if c is None:
        return {"status": "NotSupported"}, Reaction()
    outs = ch.stop(c.id, "UnlockCommand", now) if c.tx is not None else []
    return {"status": "Unlocked"}, Reaction(outs)


def _h_change_configuration(ch: Charger, p: Payload, now: datetime) -> tuple[Payload, Reaction]:
    key, value = str(p["key"]), str(p["value"])
    current = ch.config.get(key)
    if current is None:
        return {"status": "NotSupported"}, Reaction()
    if current[1]:
        return {"status": "Rejected"}, Reaction()
    if key in ("HeartbeatInterval", "MeterValueSampleInterval", "ClockAlignedDataInterval"):
        try:
            seconds = int(value)
        except ValueError:
            return {"status": "Rejected"}, Reaction()
        if seconds < 0:
            return {"status": "Rejected"}, Reaction()
        if key == "HeartbeatInterval" and seconds > 0:
            ch.heartbeat_interval = float(seconds)
            ch.next_heartbeat = now + timedelta(seconds=seconds)
        if key == "ClockAlignedDataInterval":
            ch.next_clock = None
    ch.config[key] = (value, False)
    return {"status": "Accepted"}, Reaction()


def _h_get_configuration(ch: Charger, p: Payload, now: datetime) -> tuple[Payload, Reaction]:
    wanted = p.get("key") or list(ch.config)
    known = [k for k in wanted if k in ch.config]
    unknown = [k for k in wanted if k not in ch.config]
    answer: Payload = {
        "configurationKey": [{"key": k, "readonly": ch.config[k][1], "value": ch.config[k][0]} for k in known]
    }
    if unknown:
        answer["unknownKey"] = unknown
    return answer, Reaction()


def _h_trigger_16(ch: Charger, p: Payload, now: datetime) -> tuple[Payload, Reaction]:
    message = str(p["requestedMessage"])
    connector_id = p.get("connectorId")
    if connector_id is not None and connector_id != 0 and connector_id not in ch.connectors:
        return {"status": "Rejected"}, Reaction()
    if message not in _TRIGGERS_16:
        return {"status": "NotImplemented"}, Reaction()
    return {"status": "Accepted"}, Reaction(ch._triggered(message, connector_id or None, now))


def _profile_limit(profile: object) -> float | None:
    """The first period's limit in amps of a 1.6 or 2.0.1 charging profile (W converted at 230 V x 3)."""
    if not isinstance(profile, dict):
        return None
    schedule = profile.get("chargingSchedule")
    if isinstance(schedule, list):
        schedule = schedule[0] if schedule else None
    if not isinstance(schedule, dict):
        return None
    periods = schedule.get("chargingSchedulePeriod") or [{}]
    limit = float(periods[0].get("limit", 32.0))
    return limit / (230.0 * 3) if schedule.get("chargingRateUnit") == "W" else limit


def _set_profile(
    ch: Charger, connector_id: int, p: Payload, profile_key: str, id_key: str
) -> tuple[Payload, Reaction]:
    """SetChargingProfile of either version; the profile P[PROFILE_KEY] is read only for a known connector."""
    if connector_id != 0 and connector_id not in ch.connectors:
        return {"status": "Rejected"}, Reaction()
    profile = p[profile_key]
    limit = _profile_limit(profile)
    ch.profiles[int(profile[id_key])] = limit or 32.0
    ch._limit(connector_id, limit)
    return {"status": "Accepted"}, Reaction()


def _h_set_profile_16(ch: Charger, p: Payload, now: datetime) -> tuple[Payload, Reaction]:
    return _set_profile(ch, int(p["connectorId"]), p, "csChargingProfiles", "chargingProfileId")


def _h_clear_profile(ch: Charger, p: Payload, now: datetime) -> tuple[Payload, Reaction]:
    profile_id = p.get("id", p.get("chargingProfileId"))
    if profile_id is None:
        found = bool(ch.profiles)
        ch.profiles.clear()
    else:
        found = ch.profiles.pop(int(profile_id), None) is not None
    if found and not ch.profiles:
        ch._limit(0, None)
    return {"status": "Accepted" if found else "Unknown"}, Reaction()


def _h_data_transfer(ch: Charger, p: Payload, now: datetime) -> tuple[Payload, Reaction]:
    if p.get("vendorId") != VENDOR_ID:
        return {"status": "UnknownVendorId"}, Reaction()
    if p.get("messageId") in ("GetCableInfo", "Ping"):
        return {"status": "Accepted", "data": "ok"}, Reaction()
    return {"status": "UnknownMessageId"}, Reaction()


def _h_status(status: str) -> Handler:
    def handler(ch: Charger, p: Payload, now: datetime) -> tuple[Payload, Reaction]:
        return {"status": status}, Reaction()

    return handler


def _h_local_list_version(ch: Charger, p: Payload, now: datetime) -> tuple[Payload, Reaction]:
    key = "listVersion" if ch.version == "1.6" else "versionNumber"
    return {key: 0}, Reaction()


def _h_empty(ch: Charger, p: Payload, now: datetime) -> tuple[Payload, Reaction]:
    return {}, Reaction()


_HANDLERS_16: Final[dict[str, Handler]] = {
    "Reset": _h_reset,
    "RemoteStartTransaction": _h_remote_start_16,
    "RemoteStopTransaction": _h_remote_stop_16,
    "ChangeAvailability": _h_change_availability_16,
    "UnlockConnector": _h_unlock_16,
    "ChangeConfiguration": _h_change_configuration,
    "GetConfiguration": _h_get_configuration,
    "TriggerMessage": _h_trigger_16,
    "SetChargingProfile": _h_set_profile_16,
    "ClearChargingProfile": _h_clear_profile,
    "DataTransfer": _h_data_transfer,
    "ClearCache": _h_status("Accepted"),
    "GetLocalListVersion": _h_local_list_version,
    "SendLocalList": _h_status("Accepted"),
    "ReserveNow": _h_status("Rejected"),
    "CancelReservation": _h_status("Rejected"),
    "UpdateFirmware": _h_empty,
}


# -- 2.0.1 handlers ---------------------------------------------------------------------------


def _h_request_start(ch: Charger, p: Payload, now: datetime) -> tuple[Payload, Reaction]:
    connector_id = int(p.get("evseId", 1))
    if not _can_remote_start(ch, connector_id, p.get("chargingProfile")):
        return {"status": "Rejected"}, Reaction()
    c = ch.connectors[connector_id]
    outs = ch.start(connector_id, str(p["idToken"]["idToken"]), now, remote_start_id=int(p["remoteStartId"]))
    answer: Payload = {"status": "Accepted"}
    if c.tx is not None:
        answer["transactionId"] = c.tx.tx_id
    return answer, Reaction(outs)


def _h_request_stop(ch: Charger, p: Payload, now: datetime) -> tuple[Payload, Reaction]:
    tx = ch.active_tx(tx_id=str(p["transactionId"]))
    if tx is None:
        return {"status": "Rejected"}, Reaction()
    return {"status": "Accepted"}, Reaction(ch.stop(tx.connector, "Remote", now))


def _h_change_availability_201(ch: Charger, p: Payload, now: datetime) -> tuple[Payload, Reaction]:
    evse = p.get("evse")
    connector_id = int(evse["id"]) if isinstance(evse, dict) else 0
    return _change_availability(ch, connector_id, p, "operationalStatus", now)


def _h_unlock_201(ch: Charger, p: Payload, now: datetime) -> tuple[Payload, Reaction]:
    c = ch.connectors.get(int(p["evseId"]))
    if c is None or int(p["connectorId"]) != 1:
        return {"status": "UnknownConnector"}, Reaction()
    if c.tx is not None:
        return {"status": "OngoingAuthorizedTransaction"}, Reaction()
    return {"status": "Unlocked"}, Reaction()


def _variable_key(item: Payload) -> str:
    return f"{item['component']['name']}.{item['variable']['name']}"


def _h_get_variables(ch: Charger, p: Payload, now: datetime) -> tuple[Payload, Reaction]:
    results = []
    for item in p["getVariableData"]:
        key = _variable_key(item)
        result: Payload = {"component": item["component"], "variable": item["variable"]}
        if key in ch.config:
            result["attributeStatus"] = "Accepted"
            result["attributeValue"] = ch.config[key][0]
        else:
            known = any(k.startswith(f"{item['component']['name']}.") for k in ch.config)
            result["attributeStatus"] = "UnknownVariable" if known else "UnknownComponent"
        results.append(result)
    return {"getVariableResult": results}, Reaction()


def _h_set_variables(ch: Charger, p: Payload, now: datetime) -> tuple[Payload, Reaction]:
    results = []
    for item in p["setVariableData"]:
        key = _variable_key(item)
        result: Payload = {"component": item["component"], "variable": item["variable"]}
        current = ch.config.get(key)
        if current is None:
            result["attributeStatus"] = "UnknownVariable"
        elif current[1]:
            result["attributeStatus"] = "Rejected"
        else:
            ch.config[key] = (str(item["attributeValue"]), False)
            result["attributeStatus"] = "Accepted"
            if key == "OCPPCommCtrlr.HeartbeatInterval" and str(item["attributeValue"]).isdigit():
                ch.heartbeat_interval = float(item["attributeValue"]) or ch.heartbeat_interval
            if key == "AlignedDataCtrlr.Interval":
                ch.next_clock = None
        results.append(result)
    return {"setVariableResult": results}, Reaction()


def _h_get_base_report(ch: Charger, p: Payload, now: datetime) -> tuple[Payload, Reaction]:
    data = []
    for key, (value, readonly) in ch.config.items():
        component, _, variable = key.partition(".")
        attribute = {"value": value, "mutability": "ReadOnly" if readonly else "ReadWrite"}
        data.append(
            {
                "component": {"name": component},
                "variable": {"name": variable},
                "variableAttribute": [attribute],
            }
        )
    report = {
        "requestId": int(p["requestId"]),
        "generatedAt": timestamp(now),
        "seqNo": 0,
        "tbc": False,
        "reportData": data,
    }
    return {"status": "Accepted"}, Reaction(ch._emit([Out("NotifyReport", report)]))


def _h_trigger_201(ch: Charger, p: Payload, now: datetime) -> tuple[Payload, Reaction]:
    message = str(p["requestedMessage"])
    evse = p.get("evse")
    connector_id = int(evse["id"]) if isinstance(evse, dict) else None
    if connector_id is not None and connector_id not in ch.connectors:
        return {"status": "Rejected"}, Reaction()
    if message not in _TRIGGERS_201:
        return {"status": "NotImplemented"}, Reaction()
    return {"status": "Accepted"}, Reaction(ch._triggered(message, connector_id, now))


def _h_set_profile_201(ch: Charger, p: Payload, now: datetime) -> tuple[Payload, Reaction]:
    return _set_profile(ch, int(p["evseId"]), p, "chargingProfile", "id")


_HANDLERS_201: Final[dict[str, Handler]] = {
    "Reset": _h_reset,
    "RequestStartTransaction": _h_request_start,
    "RequestStopTransaction": _h_request_stop,
    "ChangeAvailability": _h_change_availability_201,
    "UnlockConnector": _h_unlock_201,
    "GetVariables": _h_get_variables,
    "SetVariables": _h_set_variables,
    "GetBaseReport": _h_get_base_report,
    "TriggerMessage": _h_trigger_201,
    "SetChargingProfile": _h_set_profile_201,
    "ClearChargingProfile": _h_clear_profile,
    "DataTransfer": _h_data_transfer,
    "ClearCache": _h_status("Accepted"),
    "GetLocalListVersion": _h_local_list_version,
    "SendLocalList": _h_status("Accepted"),
    "ReserveNow": _h_status("Rejected"),
    "CancelReservation": _h_status("Rejected"),
}
