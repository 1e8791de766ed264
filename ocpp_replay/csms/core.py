"""The OCPP logic of the reference CSMS, without sockets.

A :class:`Backend` holds what the CSMS knows (chargers, transactions, meter values); each
websocket connection gets a :class:`ChargerSession` that turns a frame from the charger into an
answer plus the backend commands that message triggers. Commands are triggered by message
events, never by the wall clock, so the same charger traffic makes the CSMS send the same
commands in the same order: replaying a capture reproduces them.

    charger CALL  ──> ChargerSession.handle_call ──> Handled(reply, commands)
    charger answer ─> ChargerSession.handle_answer(command, answer)
    unparseable   ──> ChargerSession.handle_invalid ──> CallError | None
"""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from ocpp_replay.core import schemas
from ocpp_replay.core.frames import Call, CallError, CallResult
from ocpp_replay.csms.config import DEFAULT_ID_TAGS, CsmsConfig
from ocpp_replay.errors import ConfigError

__all__ = [
    "COMMANDS",
    "EXERCISE",
    "Backend",
    "ChargerRecord",
    "ChargerSession",
    "Command",
    "Handled",
    "Transaction",
    "iso",
]

Payload = dict[str, Any]
TxId = int | str


def iso(moment: datetime) -> str:
    """RFC 3339 UTC with milliseconds and a Z, as backends commonly send it."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Command:
    """A CALL the CSMS wants to send to a charger, and why (``boot``, ``remote-stop``, ``api``...)."""

    action: str
    payload: Payload
    reason: str


@dataclass(frozen=True, slots=True)
class Handled:
    """The answer to one charger CALL and the commands it triggers, to send after the answer."""

    reply: CallResult | CallError
    commands: tuple[Command, ...] = ()


@dataclass(slots=True)
class Transaction:
    id: TxId
    charger_id: str
    connector_id: int
    id_tag: str | None
    auth_status: str
    started: str | None
    meter_start: int | None = None
    stopped: str | None = None
    meter_stop: int | None = None
    stop_reason: str | None = None
    meter_reports: int = 0
    remote_stop_sent: bool = False

    @property
    def active(self) -> bool:
        return self.stopped is None


@dataclass(slots=True)
class ChargerRecord:
    """What the CSMS remembers about one charge point, across its connections."""

    id: str
    version: str
    connected: bool = False
    connections: int = 0
    boots: int = 0
    boot: Payload | None = None
    statuses: dict[int, str] = field(default_factory=dict)
    configuration: dict[str, str | None] = field(default_factory=dict)
    meter_values: deque[Payload] = field(default_factory=deque)
    received: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)
    exercised: bool = False

    def summary(self) -> Payload:
        return {
            "id": self.id,
            "version": self.version,
            "connected": self.connected,
            "boots": self.boots,
            "vendor": (self.boot or {}).get("chargePointVendor")
            or (self.boot or {}).get("chargingStation", {}).get("vendorName"),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "received": dict(sorted(self.received.items())),
            "meter_values": len(self.meter_values),
            "configuration": self.configuration,
        }


class Backend:
    """Everything the reference CSMS knows. One per CSMS instance; not thread-safe (one loop)."""

    def __init__(self, config: CsmsConfig, *, rng: random.Random | None = None) -> None:
        self.config = config
        base = config.tx_id_base
        if base is None:
            # Two instances assign different ids, as two backend deployments do.
            base = (rng or random.Random()).randrange(100_000, 2_000_000_000 // 2)
        self._tx_ids = itertools.count(base)
        self.chargers: dict[str, ChargerRecord] = {}
        self.transactions: dict[TxId, Transaction] = {}
        self.remote_start_ids = itertools.count(1)

    def open_session(self, charger_id: str, version: str) -> ChargerSession:
        version = schemas.normalize_version(version)
        record = self.chargers.get(charger_id)
        if record is None:
            record = self.chargers[charger_id] = ChargerRecord(charger_id, version)
        record.version = version
        record.connected = True
        record.connections += 1
        record.meter_values = deque(record.meter_values, maxlen=self.config.max_meter_values)
        return ChargerSession(self, record)

    def next_transaction_id(self) -> int:
        return next(self._tx_ids)

    def active_transactions(self, charger_id: str) -> list[Transaction]:
        return [t for t in self.transactions.values() if t.charger_id == charger_id and t.active]


# Error codes that were renamed between the versions.
_FORMAT = {"1.6": "FormationViolation", "2.0.1": "FormatViolation", "2.1": "FormatViolation"}
_OCCURRENCE = {
    "1.6": "OccurenceConstraintViolation",
    "2.0.1": "OccurrenceConstraintViolation",
    "2.1": "OccurrenceConstraintViolation",
}


def _error_code(version: str, keyword: str) -> str:
    if keyword == "required":
        return _OCCURRENCE[version]
    if keyword == "type":
        return "TypeConstraintViolation"
    if keyword in ("additionalProperties", "minItems", "maxItems", ""):
        return _FORMAT[version]
    return "PropertyConstraintViolation"


Handler = Callable[["ChargerSession", Payload, datetime], tuple[Payload, list[Command]]]


class ChargerSession:
    """One websocket connection of one charger, as the CSMS sees it. Pure."""

    def __init__(self, backend: Backend, record: ChargerRecord) -> None:
        self.backend = backend
        self.record = record
        self.version = record.version
        self.handlers: Mapping[str, Handler] = _HANDLERS[self.version]

    @property
    def config(self) -> CsmsConfig:
        return self.backend.config

    # -- frames from the charger ------------------------------------------------------------

    def handle_call(self, call: Call, now: datetime) -> Handled:
        self.record.received[call.action] += 1
        handler = self.handlers.get(call.action)
        if handler is None:
            if call.action in schemas.actions(self.version):
                return Handled(
                    CallError(call.unique_id, "NotSupported", f"{call.action} is not supported", {})
                )
            return Handled(CallError(call.unique_id, "NotImplemented", f"unknown action {call.action}", {}))
        if self.config.strict:  # a lenient backend does not look at the schema at all
            violations = schemas.validate(self.version, call.action, call.payload, response=False)
            if violations:
                first = violations[0]
                code = _error_code(self.version, first.keyword)
                return Handled(CallError(call.unique_id, code, str(first)[:255], {}))
        try:
            payload, commands = handler(self, call.payload, now)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # A lenient backend still cannot act on a payload missing what it needs.
            code = _FORMAT[self.version]
            return Handled(
                CallError(call.unique_id, code, f"cannot process {call.action}: {exc!r}"[:255], {})
            )
        return Handled(CallResult(call.unique_id, payload), tuple(commands))

    def handle_invalid(self, raw: str | bytes) -> CallError | None:
        """The CALLERROR for a frame that is not OCPP-J, if it has a readable unique id."""
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            return None
        if not (isinstance(data, list) and len(data) >= 2 and isinstance(data[1], str)):
            return None
        if data[0] == 2:
            return CallError(data[1], _FORMAT[self.version], "malformed CALL", {})
        if data[0] in (3, 4) or (self.version == "2.1" and data[0] in (5, 6)):
            return None  # never answer an answer, nor 2.1's CALLRESULTERROR (5) and SEND (6)
        code = "ProtocolError" if self.version == "1.6" else "MessageTypeNotSupported"
        return CallError(data[1], code, "unknown message type", {})

    def handle_answer(self, command: Command, answer: CallResult | CallError) -> None:
        """Record what the charger answered to one of our commands."""
        if isinstance(answer, CallError):
            self.record.answers[f"{command.action}:{answer.error_code}"] += 1
            return
        self.record.answers[f"{command.action}:{answer.payload.get('status', 'ok')}"] += 1
        if command.action == "GetConfiguration":
            for item in answer.payload.get("configurationKey", []):
                if isinstance(item, dict) and isinstance(item.get("key"), str):
                    self.record.configuration[item["key"]] = item.get("value")
        elif command.action == "GetVariables":
            for item in answer.payload.get("getVariableResult", []):
                try:
                    key = f"{item['component']['name']}.{item['variable']['name']}"
                except (KeyError, TypeError):
                    continue
                self.record.configuration[key] = item.get("attributeValue")

    def disconnected(self) -> None:
        self.record.connected = False

    # -- commands ---------------------------------------------------------------------------

    def boot_commands(self) -> list[Command]:
        commands: list[Command] = []
        if self.config.get_configuration_on_boot:
            commands.append(self.command("get-configuration", {}, reason="boot"))
        if self.config.exercises(self.record.id) and not self.record.exercised:
            self.record.exercised = True
            commands.extend(self.command(name, params, reason="exercise") for name, params in EXERCISE)
        return commands

    def command(self, name: str, params: Mapping[str, Any], *, reason: str = "api") -> Command:
        """Build a backend command by name (see COMMANDS) for this charger's OCPP version.

        Raises ConfigError for an unknown name or parameters that make an invalid CALL.
        """
        builder = COMMANDS.get(name)
        if builder is None:
            raise ConfigError(f"unknown command {name!r} (expected one of {', '.join(COMMANDS)})")
        action, payload = builder(self, dict(params))
        violations = schemas.validate(self.version, action, payload, response=False)
        if violations:
            raise ConfigError(f"{action} would be invalid: {violations[0]}")
        return Command(action, payload, reason)

    def _active_tx(self, params: Mapping[str, Any]) -> TxId:
        if "transactionId" in params:
            tx: TxId = params["transactionId"]
            return tx
        active = self.backend.active_transactions(self.record.id)
        if not active:
            raise ConfigError(f"{self.record.id} has no active transaction")
        return active[-1].id

    def _auth(self, id_tag: str) -> str:
        return self.config.id_tag_status(id_tag)

    def _meter_report(self, tx: Transaction | None) -> list[Command]:
        if tx is None or not tx.active:
            return []
        tx.meter_reports += 1
        threshold = self.config.remote_stop_threshold(self.record.id)
        if threshold is None or tx.meter_reports != threshold or tx.remote_stop_sent:
            return []
        tx.remote_stop_sent = True
        return [
            self.command("remote-stop", {"transactionId": tx.id}, reason=f"after {threshold} meter reports")
        ]


# -- OCPP 1.6 handlers ------------------------------------------------------------------------


def _boot(session: ChargerSession, payload: Payload, now: datetime) -> tuple[Payload, list[Command]]:
    record = session.record
    record.boots += 1
    record.boot = payload
    answer = {"currentTime": iso(now), "interval": session.config.interval, "status": "Accepted"}
    return answer, session.boot_commands()


def _heartbeat(session: ChargerSession, payload: Payload, now: datetime) -> tuple[Payload, list[Command]]:
    return {"currentTime": iso(now)}, []


def _empty(session: ChargerSession, payload: Payload, now: datetime) -> tuple[Payload, list[Command]]:
    return {}, []


def _accepted(session: ChargerSession, payload: Payload, now: datetime) -> tuple[Payload, list[Command]]:
    return {"status": "Accepted"}, []


def _status_16(session: ChargerSession, payload: Payload, now: datetime) -> tuple[Payload, list[Command]]:
    session.record.statuses[int(payload["connectorId"])] = str(payload["status"])
    return {}, []


def _authorize_16(session: ChargerSession, payload: Payload, now: datetime) -> tuple[Payload, list[Command]]:
    return {"idTagInfo": {"status": session._auth(str(payload["idTag"]))}}, []


def _start_16(session: ChargerSession, payload: Payload, now: datetime) -> tuple[Payload, list[Command]]:
    status = session._auth(str(payload["idTag"]))
    tx_id = session.backend.next_transaction_id()
    session.backend.transactions[tx_id] = Transaction(
        tx_id,
        session.record.id,
        int(payload["connectorId"]),
        str(payload["idTag"]),
        status,
        payload.get("timestamp"),
        meter_start=payload.get("meterStart"),
        stopped=None if status == "Accepted" else payload.get("timestamp", iso(now)),
    )
    return {"idTagInfo": {"status": status}, "transactionId": tx_id}, []


def _stop_16(session: ChargerSession, payload: Payload, now: datetime) -> tuple[Payload, list[Command]]:
    tx = session.backend.transactions.get(payload["transactionId"])
    if tx is not None:
        tx.stopped = str(payload.get("timestamp", iso(now)))
        tx.meter_stop = payload.get("meterStop")
        tx.stop_reason = payload.get("reason", "Local")
    for meter_value in payload.get("transactionData", []):
        _store(session, payload.get("transactionId"), tx.connector_id if tx else 0, meter_value)
    answer: Payload = {}
    if "idTag" in payload:
        answer["idTagInfo"] = {"status": session._auth(str(payload["idTag"]))}
    return answer, []


def _store(session: ChargerSession, tx_id: object, connector: int, meter_value: Payload) -> None:
    session.record.meter_values.append(
        {"connector": connector, "transactionId": tx_id, "meterValue": meter_value}
    )


def _meter_values_16(
    session: ChargerSession, payload: Payload, now: datetime
) -> tuple[Payload, list[Command]]:
    tx_id = payload.get("transactionId")
    for meter_value in payload["meterValue"]:
        _store(session, tx_id, int(payload["connectorId"]), meter_value)
    tx = session.backend.transactions.get(tx_id) if isinstance(tx_id, int) else None
    if tx is not None and tx.charger_id != session.record.id:
        tx = None
    return {}, session._meter_report(tx)


def _data_transfer(session: ChargerSession, payload: Payload, now: datetime) -> tuple[Payload, list[Command]]:
    known = payload.get("vendorId") in ("Alfen BV", "com.alfen")
    return {"status": "Accepted" if known else "UnknownVendorId"}, []


_HANDLERS_16: Final[Mapping[str, Handler]] = {
    "Authorize": _authorize_16,
    "BootNotification": _boot,
    "DataTransfer": _data_transfer,
    "DiagnosticsStatusNotification": _empty,
    "FirmwareStatusNotification": _empty,
    "Heartbeat": _heartbeat,
    "LogStatusNotification": _empty,
    "MeterValues": _meter_values_16,
    "SecurityEventNotification": _empty,
    "SignedFirmwareStatusNotification": _empty,
    "StartTransaction": _start_16,
    "StatusNotification": _status_16,
    "StopTransaction": _stop_16,
}


# -- OCPP 2.0.1 handlers ----------------------------------------------------------------------


def _status_201(session: ChargerSession, payload: Payload, now: datetime) -> tuple[Payload, list[Command]]:
    session.record.statuses[int(payload["evseId"])] = str(payload["connectorStatus"])
    return {}, []


def _authorize_201(session: ChargerSession, payload: Payload, now: datetime) -> tuple[Payload, list[Command]]:
    token = payload["idToken"]
    return {"idTokenInfo": {"status": _token_status(session, token)}}, []


def _token_status(session: ChargerSession, token: Mapping[str, Any]) -> str:
    if token.get("type") == "NoAuthorization":
        return "Accepted"
    return session._auth(str(token["idToken"]))


def _transaction_event(
    session: ChargerSession, payload: Payload, now: datetime
) -> tuple[Payload, list[Command]]:
    info = payload["transactionInfo"]
    tx_id = str(info["transactionId"])
    token = payload.get("idToken")
    answer: Payload = {}
    status = "Accepted"
    if isinstance(token, dict):
        status = _token_status(session, token)
        answer["idTokenInfo"] = {"status": status}
    transactions = session.backend.transactions
    tx = transactions.get(tx_id)
    evse = payload.get("evse", {})
    if tx is None or tx.charger_id != session.record.id:
        tx = transactions[tx_id] = Transaction(
            tx_id,
            session.record.id,
            int(evse.get("id", 0)),
            token.get("idToken") if isinstance(token, dict) else None,
            status,
            payload.get("timestamp"),
        )
    elif isinstance(token, dict):
        tx.id_tag = str(token["idToken"])
        tx.auth_status = status
    for meter_value in payload.get("meterValue", []):
        _store(session, tx_id, tx.connector_id, meter_value)
    commands: list[Command] = []
    if payload["eventType"] == "Ended":
        tx.stopped = str(payload.get("timestamp", iso(now)))
        tx.stop_reason = info.get("stoppedReason", "Local")
    elif payload["eventType"] == "Updated" and payload.get("meterValue"):
        commands = session._meter_report(tx)
    return answer, commands


def _meter_values_201(
    session: ChargerSession, payload: Payload, now: datetime
) -> tuple[Payload, list[Command]]:
    for meter_value in payload["meterValue"]:
        _store(session, None, int(payload["evseId"]), meter_value)
    return {}, []


_HANDLERS_201: Final[Mapping[str, Handler]] = {
    "Authorize": _authorize_201,
    "BootNotification": _boot,
    "ClearedChargingLimit": _empty,
    "DataTransfer": _data_transfer,
    "FirmwareStatusNotification": _empty,
    "Heartbeat": _heartbeat,
    "LogStatusNotification": _empty,
    "MeterValues": _meter_values_201,
    "NotifyChargingLimit": _empty,
    "NotifyCustomerInformation": _empty,
    "NotifyEvent": _empty,
    "NotifyMonitoringReport": _empty,
    "NotifyReport": _empty,
    "ReportChargingProfiles": _empty,
    "SecurityEventNotification": _empty,
    "StatusNotification": _status_201,
    "TransactionEvent": _transaction_event,
}


#: OCPP 2.1 keeps the 2.0.1 messages; the notifications it adds are taken and acknowledged.
_HANDLERS_21: Final[Mapping[str, Handler]] = {
    **_HANDLERS_201,
    "NotifyAllowedEnergyTransfer": _accepted,
    "NotifyDERAlarm": _empty,
    "NotifyDERStartStop": _empty,
    "NotifyPriorityCharging": _empty,
    "ReportDERControl": _empty,
}
_HANDLERS: Final[Mapping[str, Mapping[str, Handler]]] = {
    "1.6": _HANDLERS_16,
    "2.0.1": _HANDLERS_201,
    "2.1": _HANDLERS_21,
}


# -- commands by name -------------------------------------------------------------------------

Builder = Callable[[ChargerSession, dict[str, Any]], tuple[str, Payload]]


def _reset(s: ChargerSession, p: dict[str, Any]) -> tuple[str, Payload]:
    return "Reset", {"type": p.get("type", "Soft" if s.version == "1.6" else "Immediate")}


def _remote_stop(s: ChargerSession, p: dict[str, Any]) -> tuple[str, Payload]:
    tx = s._active_tx(p)
    if s.version == "1.6":
        return "RemoteStopTransaction", {"transactionId": tx}
    return "RequestStopTransaction", {"transactionId": str(tx)}


def _remote_start(s: ChargerSession, p: dict[str, Any]) -> tuple[str, Payload]:
    id_tag = str(p.get("idTag", DEFAULT_ID_TAGS[0]))
    connector = int(p.get("connectorId", 1))
    if s.version == "1.6":
        return "RemoteStartTransaction", {"connectorId": connector, "idTag": id_tag}
    return "RequestStartTransaction", {
        "idToken": {"idToken": id_tag, "type": p.get("type", "ISO14443")},
        "remoteStartId": int(p.get("remoteStartId", next(s.backend.remote_start_ids))),
        "evseId": connector,
    }


def _get_configuration(s: ChargerSession, p: dict[str, Any]) -> tuple[str, Payload]:
    keys = p.get("key")
    if s.version == "1.6":
        return "GetConfiguration", ({"key": list(keys)} if keys else {})
    wanted = keys or [
        "OCPPCommCtrlr.HeartbeatInterval",
        "SampledDataCtrlr.TxUpdatedInterval",
        "AlignedDataCtrlr.Interval",
    ]
    data = []
    for key in wanted:
        component, _, variable = str(key).rpartition(".")
        data.append({"component": {"name": component or "OCPPCommCtrlr"}, "variable": {"name": variable}})
    return "GetVariables", {"getVariableData": data}


def _trigger(s: ChargerSession, p: dict[str, Any]) -> tuple[str, Payload]:
    payload: Payload = {"requestedMessage": p.get("requestedMessage", "StatusNotification")}
    if "connectorId" in p:
        if s.version == "1.6":
            payload["connectorId"] = int(p["connectorId"])
        else:
            payload["evse"] = {"id": int(p["connectorId"]), "connectorId": 1}
    return "TriggerMessage", payload


def _change_availability(s: ChargerSession, p: dict[str, Any]) -> tuple[str, Payload]:
    kind = p.get("type", "Inoperative")
    connector = int(p.get("connectorId", 0))
    if s.version == "1.6":
        return "ChangeAvailability", {"connectorId": connector, "type": kind}
    payload: Payload = {"operationalStatus": kind}
    if connector:
        payload["evse"] = {"id": connector}
    return "ChangeAvailability", payload


def _unlock(s: ChargerSession, p: dict[str, Any]) -> tuple[str, Payload]:
    connector = int(p.get("connectorId", 1))
    if s.version == "1.6":
        return "UnlockConnector", {"connectorId": connector}
    return "UnlockConnector", {"evseId": connector, "connectorId": 1}


def _change_configuration(s: ChargerSession, p: dict[str, Any]) -> tuple[str, Payload]:
    key, value = str(p.get("key", "MeterValueSampleInterval")), str(p.get("value", "60"))
    if s.version == "1.6":
        return "ChangeConfiguration", {"key": key, "value": value}
    if key == "MeterValueSampleInterval":
        key = "SampledDataCtrlr.TxUpdatedInterval"
    component, _, variable = key.rpartition(".")
    item = {"attributeValue": value, "component": {"name": component}, "variable": {"name": variable}}
    return "SetVariables", {"setVariableData": [item]}


def _set_charging_profile(s: ChargerSession, p: dict[str, Any]) -> tuple[str, Payload]:
    limit = float(p.get("limit", 16.0))
    connector = int(p.get("connectorId", 1))
    period = [{"startPeriod": 0, "limit": limit}]
    if s.version == "1.6":
        profile_16 = {
            "chargingProfileId": int(p.get("id", 1)),
            "stackLevel": 0,
            "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Relative",
            "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": period},
        }
        return "SetChargingProfile", {"connectorId": connector, "csChargingProfiles": profile_16}
    profile_201 = {
        "id": int(p.get("id", 1)),
        "stackLevel": 0,
        "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Relative",
        "chargingSchedule": [{"id": 1, "chargingRateUnit": "A", "chargingSchedulePeriod": period}],
    }
    return "SetChargingProfile", {"evseId": connector, "chargingProfile": profile_201}


def _clear_charging_profile(s: ChargerSession, p: dict[str, Any]) -> tuple[str, Payload]:
    if s.version == "1.6":
        return "ClearChargingProfile", {"id": int(p.get("id", 1))}
    return "ClearChargingProfile", {"chargingProfileId": int(p.get("id", 1))}


def _data_transfer_cmd(s: ChargerSession, p: dict[str, Any]) -> tuple[str, Payload]:
    payload: Payload = {
        "vendorId": str(p.get("vendorId", "Alfen BV")),
        "messageId": p.get("messageId", "Ping"),
    }
    if "data" in p:
        payload["data"] = p["data"]
    return "DataTransfer", payload


def _raw_call(s: ChargerSession, p: dict[str, Any]) -> tuple[str, Payload]:
    action, payload = p.get("action"), p.get("payload", {})
    if not isinstance(action, str) or not isinstance(payload, dict):
        raise ConfigError("call needs an action (string) and a payload (object)")
    return action, payload


#: Backend commands by name, for the control API and for event triggers.
COMMANDS: Final[Mapping[str, Builder]] = {
    "reset": _reset,
    "remote-stop": _remote_stop,
    "remote-start": _remote_start,
    "get-configuration": _get_configuration,
    "change-configuration": _change_configuration,
    "trigger": _trigger,
    "change-availability": _change_availability,
    "unlock": _unlock,
    "set-charging-profile": _set_charging_profile,
    "clear-charging-profile": _clear_charging_profile,
    "data-transfer": _data_transfer_cmd,
    "call": _raw_call,
}


#: The fixed tour of commands an ``exercise`` charger gets once, after boot; reset comes last.
EXERCISE: Final[tuple[tuple[str, Mapping[str, Any]], ...]] = (
    ("change-configuration", {"key": "MeterValueSampleInterval", "value": "60"}),
    ("trigger", {"requestedMessage": "StatusNotification", "connectorId": 1}),
    ("set-charging-profile", {"limit": 16.0}),
    ("clear-charging-profile", {}),
    ("data-transfer", {"messageId": "GetCableInfo"}),
    ("change-availability", {"connectorId": 1, "type": "Inoperative"}),
    ("change-availability", {"connectorId": 1, "type": "Operative"}),
    ("unlock", {"connectorId": 1}),
    ("reset", {}),
)
