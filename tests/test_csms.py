"""The reference CSMS: its pure core, then the aiohttp server with a raw websocket client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from ocpp.routing import on
from ocpp.v21 import ChargePoint as ChargePoint21
from ocpp.v21 import call as call21
from ocpp.v21 import call_result as result21
from ocpp.v21.enums import Action as Action21
from websockets.asyncio.client import connect as ws_connect

from ocpp_replay.core import schemas
from ocpp_replay.core.frames import Call, CallError, CallResult, parse
from ocpp_replay.csms import (
    COMMANDS,
    DEFAULT_ID_TAGS,
    V2_BLOCKED_ID_TAG,
    Backend,
    CommandFailed,
    CsmsConfig,
    ReferenceCsms,
    serve_forever,
)
from ocpp_replay.errors import ConfigError
from tests.peers import Recording

pytestmark = pytest.mark.timeout(30)

NOW = datetime(2024, 6, 3, 8, 0, tzinfo=UTC)
BOOT_16 = {"chargePointVendor": "Alfen BV", "chargePointModel": "NG910-60023"}
BOOT_201 = {"reason": "PowerUp", "chargingStation": {"vendorName": "Alfen BV", "model": "NG910-60023"}}


def session(version: str = "1.6", cp: str = "ALF-0001", **config: Any) -> Any:
    config.setdefault("tx_id_base", 100)
    return Backend(CsmsConfig(**config)).open_session(cp, version)


def call(s: Any, action: str, payload: dict[str, Any]) -> Any:
    handled = s.handle_call(Call("1", action, payload), NOW)
    if isinstance(handled.reply, CallResult):
        assert schemas.validate(s.version, action, handled.reply.payload, response=True) == []
    for command in handled.commands:
        assert schemas.validate(s.version, command.action, command.payload, response=False) == []
    return handled


def test_boot_is_accepted_and_asks_for_the_configuration() -> None:
    handled = call(session(), "BootNotification", BOOT_16)
    assert handled.reply.payload["status"] == "Accepted" and handled.reply.payload["interval"] == 300
    assert [c.action for c in handled.commands] == ["GetConfiguration"]
    handled = call(session("2.0.1"), "BootNotification", BOOT_201)
    assert [c.action for c in handled.commands] == ["GetVariables"]
    quiet = call(session(get_configuration_on_boot=False, heartbeat_interval=42), "BootNotification", BOOT_16)
    assert quiet.commands == () and quiet.reply.payload["interval"] == 42


@pytest.mark.parametrize("version", ["1.6", "2.0.1", "2.1"])
def test_profiles_differ_in_heartbeat_and_one_card(version: str) -> None:
    boot = BOOT_16 if version == "1.6" else BOOT_201
    v1, v2 = session(version, profile="v1"), session(version, profile="v2")
    assert call(v1, "BootNotification", boot).reply.payload["interval"] == 300
    assert call(v2, "BootNotification", boot).reply.payload["interval"] == 900

    def authorize(s: Any, tag: str) -> str:
        if version == "1.6":
            return str(call(s, "Authorize", {"idTag": tag}).reply.payload["idTagInfo"]["status"])
        token = {"idToken": tag, "type": "ISO14443"}
        return str(call(s, "Authorize", {"idToken": token}).reply.payload["idTokenInfo"]["status"])

    for tag in DEFAULT_ID_TAGS:
        assert authorize(v1, tag) == "Accepted"
        assert authorize(v2, tag) == ("Blocked" if tag == V2_BLOCKED_ID_TAG else "Accepted")
    assert authorize(v1, "UNKNOWN") == "Invalid"
    assert authorize(session(version, blocked_id_tags=frozenset({"ACE0177305"})), "ACE0177305") == "Blocked"


def test_v2_blocks_the_card_at_start_transaction_too() -> None:
    start = {
        "connectorId": 1,
        "idTag": V2_BLOCKED_ID_TAG,
        "meterStart": 0,
        "timestamp": "2024-06-03T08:00:00Z",
    }
    assert (
        call(session(profile="v1"), "StartTransaction", start).reply.payload["idTagInfo"]["status"]
        == "Accepted"
    )
    assert (
        call(session(profile="v2"), "StartTransaction", start).reply.payload["idTagInfo"]["status"]
        == "Blocked"
    )
    event = {
        "eventType": "Started",
        "timestamp": "2024-06-03T08:00:00Z",
        "triggerReason": "Authorized",
        "seqNo": 0,
        "transactionInfo": {"transactionId": "abc"},
        "idToken": {"idToken": V2_BLOCKED_ID_TAG, "type": "ISO14443"},
    }
    reply = call(session("2.0.1", profile="v2"), "TransactionEvent", event).reply
    assert reply.payload == {"idTokenInfo": {"status": "Blocked"}}


def meter_values(tx: int) -> dict[str, Any]:
    sample = {"value": "1000", "measurand": "Energy.Active.Import.Register", "unit": "Wh"}
    return {
        "connectorId": 1,
        "transactionId": tx,
        "meterValue": [{"timestamp": "2024-06-03T08:01:00Z", "sampledValue": [sample]}],
    }


def test_transaction_ids_and_remote_stop_after_n_meter_values() -> None:
    s = session(remote_stop_after={"ALF-*": 3})
    start = {"connectorId": 1, "idTag": "ACE0177305", "meterStart": 0, "timestamp": "2024-06-03T08:00:00Z"}
    tx = call(s, "StartTransaction", start).reply.payload["transactionId"]
    assert tx == 100
    assert call(s, "StartTransaction", start).reply.payload["transactionId"] == 101
    commands = [call(s, "MeterValues", meter_values(tx)).commands for _ in range(5)]
    assert [len(c) for c in commands] == [0, 0, 1, 0, 0]  # exactly once, after the 3rd
    assert commands[2][0].action == "RemoteStopTransaction" and commands[2][0].payload == {
        "transactionId": 100
    }
    assert len(s.record.meter_values) == 5
    other = session(cp="XYZ-1", remote_stop_after={"ALF-*": 3})
    tx = call(other, "StartTransaction", start).reply.payload["transactionId"]
    assert all(call(other, "MeterValues", meter_values(tx)).commands == () for _ in range(4))
    stop = {"meterStop": 5000, "timestamp": "2024-06-03T09:00:00Z", "transactionId": 100, "reason": "Remote"}
    assert call(s, "StopTransaction", stop).reply.payload == {}
    assert not s.backend.transactions[100].active


def test_two_instances_assign_different_transaction_ids() -> None:
    a, b = Backend(CsmsConfig()), Backend(CsmsConfig())
    assert a.next_transaction_id() != b.next_transaction_id()


def test_201_transaction_event_triggers_request_stop() -> None:
    s = session("2.0.1", remote_stop_after={"*": 2})
    base = {"timestamp": "2024-06-03T08:00:00Z", "transactionInfo": {"transactionId": "t-1"}}
    call(s, "TransactionEvent", {**base, "eventType": "Started", "triggerReason": "Authorized", "seqNo": 0})
    sample = {"timestamp": "2024-06-03T08:01:00Z", "sampledValue": [{"value": 1.0}]}
    updated = {**base, "eventType": "Updated", "triggerReason": "MeterValuePeriodic", "meterValue": [sample]}
    first = call(s, "TransactionEvent", {**updated, "seqNo": 1})
    second = call(s, "TransactionEvent", {**updated, "seqNo": 2})
    assert first.commands == ()
    assert [(c.action, c.payload) for c in second.commands] == [
        ("RequestStopTransaction", {"transactionId": "t-1"})
    ]


def test_errors_for_unknown_unsupported_and_malformed() -> None:
    s = session()
    assert s.handle_call(Call("7", "MakeCoffee", {}), NOW).reply.error_code == "NotImplemented"
    assert s.handle_call(Call("8", "SignCertificate", {"csr": "x"}), NOW).reply.error_code == "NotSupported"
    assert s.handle_invalid('[2,"9","Heartbeat"]') == CallError(
        "9", "FormationViolation", "malformed CALL", {}
    )
    assert session("2.0.1").handle_invalid('[2,"9"]').error_code == "FormatViolation"  # type: ignore[union-attr]
    assert s.handle_invalid('[7,"9",{}]').error_code == "ProtocolError"  # type: ignore[union-attr]
    assert s.handle_invalid("not json") is None
    assert s.handle_invalid('[3,"9",5]') is None  # never answer an answer
    v21 = session("2.1")
    assert v21.handle_invalid('[2,"9"]').error_code == "FormatViolation"  # type: ignore[union-attr]
    assert v21.handle_invalid('[7,"9",{}]').error_code == "MessageTypeNotSupported"  # type: ignore[union-attr]
    assert v21.handle_invalid('[5,"9","InternalError","",{}]') is None  # 2.1 CALLRESULTERROR
    assert v21.handle_invalid('[6,"9","NotifyPeriodicEventStream",{}]') is None  # 2.1 SEND
    # A 2.1 action the CSMS does not handle is NotSupported in 2.1, unknown (NotImplemented) in 2.0.1.
    assert v21.handle_call(Call("d", "BatterySwap", {}), NOW).reply.error_code == "NotSupported"
    assert (
        session("2.0.1").handle_call(Call("e", "BatterySwap", {}), NOW).reply.error_code == "NotImplemented"
    )
    # lenient by default: Alfen's CurrentMax context is accepted; strict mode rejects it
    alfen = meter_values(1)
    alfen["meterValue"][0]["sampledValue"][0]["context"] = "CurrentMax"
    assert isinstance(s.handle_call(Call("a", "MeterValues", alfen), NOW).reply, CallResult)
    strict = session(strict=True).handle_call(Call("b", "MeterValues", alfen), NOW).reply
    assert strict.error_code == "PropertyConstraintViolation"
    missing = session(strict=True).handle_call(Call("c", "StatusNotification", {"connectorId": 1}), NOW).reply
    assert missing.error_code == "OccurenceConstraintViolation"  # the 1.6 spelling


@pytest.mark.parametrize("version", ["1.6", "2.0.1", "2.1"])
@pytest.mark.parametrize("name", sorted(set(COMMANDS) - {"call"}))
def test_every_command_builds_a_valid_call(version: str, name: str) -> None:
    s = session(version)
    params: dict[str, Any] = (
        {"transactionId": 5 if version == "1.6" else "t-5"} if name == "remote-stop" else {}
    )
    command = s.command(name, params)
    assert schemas.validate(version, command.action, command.payload, response=False) == []


def test_command_errors() -> None:
    s = session()
    with pytest.raises(ConfigError, match="no active transaction"):
        s.command("remote-stop", {})
    with pytest.raises(ConfigError, match="unknown command"):
        s.command("explode", {})
    with pytest.raises(ConfigError, match="would be invalid"):
        s.command("call", {"action": "Reset", "payload": {"type": "Sideways"}})
    with pytest.raises(ConfigError, match="unknown CSMS profile"):
        CsmsConfig(profile="v3")


def test_exercise_tour_once_per_charger() -> None:
    backend = Backend(CsmsConfig(exercise="ALF-*"))
    first = call(backend.open_session("ALF-1", "1.6"), "BootNotification", BOOT_16).commands
    again = call(backend.open_session("ALF-1", "1.6"), "BootNotification", BOOT_16).commands
    assert [c.action for c in first][-1] == "Reset" and len(first) == 10
    assert [c.action for c in again] == ["GetConfiguration"]


# -- the server -------------------------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def api(csms: ReferenceCsms, path: str) -> str:
    return csms.url.replace("ws://", "http://").removesuffix("/ocpp") + path


async def recv(ws: aiohttp.ClientWebSocketResponse) -> list[Any]:
    async with asyncio.timeout(5):
        data: list[Any] = json.loads(await ws.receive_str())
        return data


async def test_subprotocol_choice(http: aiohttp.ClientSession) -> None:
    async with ReferenceCsms() as csms:
        async with http.ws_connect(csms.url + "/A", protocols=("ocpp2.0.1", "ocpp1.6")) as ws:
            assert ws.protocol == "ocpp2.0.1"
        async with http.ws_connect(csms.url + "/B", protocols=("ocpp1.6", "ocpp2.0.1")) as ws:
            assert ws.protocol == "ocpp1.6"
        async with http.ws_connect(csms.url + "/E", protocols=("ocpp2.1", "ocpp2.0.1")) as ws:
            assert ws.protocol == "ocpp2.1"
            await ws.send_str(json.dumps([2, "1", "BootNotification", BOOT_201]))
            assert (await recv(ws))[2]["status"] == "Accepted"
            assert csms.backend.chargers["E"].version == "2.1"
        async with http.ws_connect(csms.url + "/C", protocols=("ocpp2.0",)) as ws:
            assert ws.protocol == "ocpp2.0"
            await ws.send_str(json.dumps([2, "1", "BootNotification", BOOT_201]))
            assert (await recv(ws))[2]["status"] == "Accepted"
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(csms.url + "/D", protocols=("ocpp1.5",))
        assert info.value.status == 400


async def test_basic_auth(http: aiohttp.ClientSession) -> None:
    async with ReferenceCsms(password="pw") as csms:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(csms.url + "/CP1", protocols=("ocpp1.6",))
        assert info.value.status == 401
        good = {"Authorization": "Basic " + base64.b64encode(b"CP1:pw").decode()}
        async with http.ws_connect(csms.url + "/CP1", protocols=("ocpp1.6",), headers=good) as ws:
            assert ws.protocol == "ocpp1.6"
        wrong_user = {"Authorization": "Basic " + base64.b64encode(b"CP2:pw").decode()}
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(csms.url + "/CP1", protocols=("ocpp1.6",), headers=wrong_user)


async def test_frames_commands_and_control_api(http: aiohttp.ClientSession) -> None:
    async with (
        ReferenceCsms(tx_id_base=7) as csms,
        http.ws_connect(csms.url + "/site/CP1", protocols=("ocpp1.6",)) as ws,
    ):
        await ws.send_str(json.dumps([2, "1", "BootNotification", BOOT_16]))
        assert (await recv(ws))[:2] == [3, "1"]
        get_config = await recv(ws)
        assert get_config[0] == 2 and get_config[2] == "GetConfiguration"
        await ws.send_str(
            json.dumps(
                [3, get_config[1], {"configurationKey": [{"key": "K", "readonly": True, "value": "v"}]}]
            )
        )
        await ws.send_str('[2,"2","Heartbeat"]')
        assert await recv(ws) == [4, "2", "FormationViolation", "malformed CALL", {}]
        await ws.send_str('[2,"3","Teleport",{}]')
        assert (await recv(ws))[2] == "NotImplemented"
        start = {
            "connectorId": 1,
            "idTag": "ACE0177305",
            "meterStart": 0,
            "timestamp": "2024-06-03T08:00:00Z",
        }
        await ws.send_str(json.dumps([2, "4", "StartTransaction", start]))
        assert (await recv(ws))[2]["transactionId"] == 7

        async def charger_answers() -> list[Any]:
            reset = await recv(ws)
            await ws.send_str(json.dumps([3, reset[1], {"status": "Accepted"}]))
            return reset

        answering = asyncio.create_task(charger_answers())
        async with http.post(api(csms, "/api/chargers/CP1/reset"), json={"type": "Hard"}) as resp:
            assert resp.status == 200
            assert await resp.json() == {"answer": {"status": "Accepted"}}
        reset = await answering
        assert reset[2:] == ["Reset", {"type": "Hard"}]

        async def charger_errors() -> None:
            stop = await recv(ws)
            assert stop[2:] == ["RemoteStopTransaction", {"transactionId": 7}]
            await ws.send_str(json.dumps([4, stop[1], "InternalError", "busy", {}]))

        erroring = asyncio.create_task(charger_errors())
        async with http.post(api(csms, "/api/chargers/CP1/remote-stop")) as resp:
            assert (await resp.json())["error"] == "InternalError"
        await erroring
        async with http.post(api(csms, "/api/chargers/CP1/explode")) as resp:
            assert resp.status == 400
        async with http.post(api(csms, "/api/chargers/NOPE/reset")) as resp:
            assert resp.status == 404
        async with http.get(api(csms, "/api/chargers")) as resp:
            (charger,) = await resp.json()
        assert charger["id"] == "CP1" and charger["connected"] and charger["configuration"] == {"K": "v"}
        async with http.get(api(csms, "/api/chargers/CP1")) as resp:
            assert (await resp.json())["transactions"][0]["id"] == 7


async def test_unanswered_command_times_out_and_next_one_goes_out(http: aiohttp.ClientSession) -> None:
    async with (
        ReferenceCsms(call_timeout=0.2, get_configuration_on_boot=False) as csms,
        http.ws_connect(csms.url + "/CP1", protocols=("ocpp1.6",)) as ws,
    ):
        await ws.send_str(json.dumps([2, "1", "BootNotification", BOOT_16]))
        await recv(ws)
        with pytest.raises(CommandFailed, match="no answer"):
            await csms.send_command("CP1", "trigger", {"requestedMessage": "Heartbeat"})
        first = await recv(ws)
        later = asyncio.create_task(csms.send_command("CP1", "unlock", {"connectorId": 1}, answer_within=5))
        second = await recv(ws)
        await ws.send_str(json.dumps([3, second[1], {"status": "Unlocked"}]))
        assert (await later).payload == {"status": "Unlocked"}  # type: ignore[union-attr]
        assert first[2] == "TriggerMessage" and second[2] == "UnlockConnector"


async def test_an_answer_followed_at_once_by_a_close_reaches_the_api(http: aiohttp.ClientSession) -> None:
    """A charger that answers a command and closes in the same breath: the caller gets the answer
    (it used to get a 504 after twice call_timeout, the writer cancelled before delivering it)."""
    async with ReferenceCsms(get_configuration_on_boot=False) as csms:
        ws = await http.ws_connect(csms.url + "/CP1", protocols=("ocpp1.6",))
        await ws.send_str(json.dumps([2, "1", "BootNotification", BOOT_16]))
        await recv(ws)

        async def answer_and_close() -> None:
            reset = await recv(ws)
            await ws.send_str(json.dumps([3, reset[1], {"status": "Accepted"}]))
            await ws.close()

        charger = asyncio.create_task(answer_and_close())
        async with asyncio.timeout(10):  # call_timeout is 30 s: an answer, not a timeout
            async with http.post(api(csms, "/api/chargers/CP1/reset"), json={"type": "Hard"}) as resp:
                assert resp.status == 200
                assert await resp.json() == {"answer": {"status": "Accepted"}}
        await charger
        assert csms.backend.chargers["CP1"].answers["Reset:Accepted"] == 1


async def test_a_close_without_an_answer_fails_the_command_at_once(http: aiohttp.ClientSession) -> None:
    async with ReferenceCsms(get_configuration_on_boot=False) as csms:
        ws = await http.ws_connect(csms.url + "/CP1", protocols=("ocpp1.6",))

        async def close_on_command() -> None:
            await recv(ws)
            await ws.close()

        charger = asyncio.create_task(close_on_command())
        async with asyncio.timeout(10):
            async with http.post(api(csms, "/api/chargers/CP1/reset"), json={"type": "Soft"}) as resp:
                assert resp.status == 504
                assert "CP1 disconnected before answering Reset" in await resp.text()
        await charger


async def test_a_command_waits_call_timeout_for_each_command_ahead(http: aiohttp.ClientSession) -> None:
    async with (
        ReferenceCsms(call_timeout=0.3, get_configuration_on_boot=False) as csms,
        http.ws_connect(csms.url + "/CP1", protocols=("ocpp1.6",)) as ws,
    ):
        with pytest.raises(CommandFailed, match=r"no answer to Reset from CP1 in 0 s"):
            await csms.send_command("CP1", "reset", {"type": "Soft"})
        assert (await recv(ws))[2] == "Reset"
        first = asyncio.create_task(csms.send_command("CP1", "unlock", {"connectorId": 1}))
        second = asyncio.create_task(csms.send_command("CP1", "unlock", {"connectorId": 2}))
        assert (await recv(ws))[3] == {"connectorId": 1}  # unanswered: the second waits its turn
        second_call = await recv(ws)
        await ws.send_str(json.dumps([3, second_call[1], {"status": "Unlocked"}]))
        with pytest.raises(CommandFailed, match="no answer"):
            await first
        assert (await second).payload == {"status": "Unlocked"}  # type: ignore[union-attr]


async def test_a_new_connection_replaces_the_old_one(http: aiohttp.ClientSession) -> None:
    async with ReferenceCsms() as csms:
        old = await http.ws_connect(csms.url + "/CP1", protocols=("ocpp1.6",))
        async with http.ws_connect(csms.url + "/CP1", protocols=("ocpp1.6",)) as new:
            async with asyncio.timeout(5):
                msg = await old.receive()
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert csms.connected == ["CP1"] and not new.closed
        await old.close()


async def test_stop_closes_connections(http: aiohttp.ClientSession) -> None:
    csms = ReferenceCsms()
    await csms.start()
    ws = await http.ws_connect(csms.url + "/CP1", protocols=("ocpp1.6",))
    await csms.stop()
    async with asyncio.timeout(5):
        msg = await ws.receive()
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    await ws.close()


async def test_serve_forever_until_cancelled(http: aiohttp.ClientSession) -> None:
    urls: list[str] = []
    ready = asyncio.Event()

    def announce(url: str) -> None:
        urls.append(url)
        ready.set()

    task = asyncio.create_task(serve_forever("127.0.0.1", 0, "v2", ready=announce))
    async with asyncio.timeout(5):
        await ready.wait()
    async with http.ws_connect(urls[0] + "/CP1", protocols=("ocpp1.6",)) as ws:
        await ws.send_str(json.dumps([2, "1", "BootNotification", BOOT_16]))
        assert (await recv(ws))[2]["interval"] == 900
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_port_in_use_is_a_config_error() -> None:
    async with ReferenceCsms() as csms:
        port = int(csms.url.rsplit(":", 1)[1].split("/")[0])
        with pytest.raises(ConfigError, match="cannot listen"):
            await ReferenceCsms().start("127.0.0.1", port)


# -- OCPP 2.1: the ocpp package's 2.1 charge point as an independent peer ----------------------


class Station21(ChargePoint21):  # type: ignore[misc]
    """A 2.1 charging station on the ocpp package: it checks every CALL the CSMS sends against its
    own copy of the 2.1 schemas (a CALLERROR back if one is invalid) and answers the rest."""

    def __init__(self, cp_id: str, connection: Recording) -> None:
        super().__init__(cp_id, connection, response_timeout=5)
        self.commands: list[str] = []

    @on(Action21.get_variables)
    def on_get_variables(self, get_variable_data: list[dict[str, Any]]) -> result21.GetVariables:
        self.commands.append("GetVariables")
        results = [
            {"attribute_status": "Accepted", "attribute_value": "300", **item} for item in get_variable_data
        ]
        return result21.GetVariables(get_variable_result=results)

    @on(Action21.set_variables)
    def on_set_variables(self, set_variable_data: list[dict[str, Any]]) -> result21.SetVariables:
        self.commands.append("SetVariables")
        results = [
            {"attribute_status": "Accepted", "component": i["component"], "variable": i["variable"]}
            for i in set_variable_data
        ]
        return result21.SetVariables(set_variable_result=results)

    @on(Action21.request_start_transaction)
    def on_request_start(self, **_: Any) -> result21.RequestStartTransaction:
        self.commands.append("RequestStartTransaction")
        return result21.RequestStartTransaction(status="Accepted")

    @on(Action21.request_stop_transaction)
    def on_request_stop(self, transaction_id: str) -> result21.RequestStopTransaction:
        self.commands.append(f"RequestStopTransaction:{transaction_id}")
        return result21.RequestStopTransaction(status="Accepted")

    @on(Action21.reset)
    def on_reset(self, type: str, **_: Any) -> result21.Reset:
        self.commands.append(f"Reset:{type}")
        return result21.Reset(status="Accepted")

    @on(Action21.trigger_message)
    def on_trigger(self, **_: Any) -> result21.TriggerMessage:
        self.commands.append("TriggerMessage")
        return result21.TriggerMessage(status="Accepted")

    @on(Action21.change_availability)
    def on_change_availability(self, **_: Any) -> result21.ChangeAvailability:
        self.commands.append("ChangeAvailability")
        return result21.ChangeAvailability(status="Accepted")

    @on(Action21.unlock_connector)
    def on_unlock(self, **_: Any) -> result21.UnlockConnector:
        self.commands.append("UnlockConnector")
        return result21.UnlockConnector(status="Unlocked")

    @on(Action21.set_charging_profile)
    def on_set_profile(self, **_: Any) -> result21.SetChargingProfile:
        self.commands.append("SetChargingProfile")
        return result21.SetChargingProfile(status="Accepted")

    @on(Action21.clear_charging_profile)
    def on_clear_profile(self, **_: Any) -> result21.ClearChargingProfile:
        self.commands.append("ClearChargingProfile")
        return result21.ClearChargingProfile(status="Accepted")

    @on(Action21.data_transfer)
    def on_data_transfer(self, **_: Any) -> result21.DataTransfer:
        self.commands.append("DataTransfer")
        return result21.DataTransfer(status="Accepted")


#: Control-API command -> (body, the CALL the station must have seen).
API_21: list[tuple[str, dict[str, Any], str]] = [
    ("get-configuration", {}, "GetVariables"),
    ("change-configuration", {"key": "MeterValueSampleInterval", "value": "30"}, "SetVariables"),
    ("remote-start", {"idTag": "04A1B2C3D4E5F6"}, "RequestStartTransaction"),
    ("remote-stop", {}, "RequestStopTransaction:tx-21"),
    ("trigger", {"requestedMessage": "StatusNotification", "connectorId": 1}, "TriggerMessage"),
    ("change-availability", {"connectorId": 1, "type": "Inoperative"}, "ChangeAvailability"),
    ("unlock", {"connectorId": 1}, "UnlockConnector"),
    ("set-charging-profile", {"limit": 10}, "SetChargingProfile"),
    ("clear-charging-profile", {}, "ClearChargingProfile"),
    ("data-transfer", {"messageId": "GetCableInfo"}, "DataTransfer"),
    ("reset", {}, "Reset:Immediate"),
    # A raw CALL with a reset type only 2.1 has: the CSMS checks it against the 2.1 schema.
    ("call", {"action": "Reset", "payload": {"type": "ImmediateAndResume"}}, "Reset:ImmediateAndResume"),
]


def frames_valid(version: str, sent: list[Any], received: list[Any]) -> int:
    """Every frame the station sent and received, against our VERSION schemas. Returns the count."""
    actions: dict[tuple[str, str], str] = {}
    checked = 0
    # The station's own order is lost between the two lists; CALLs first, then the answers.
    frames = [("out", parse(t)) for t in sent] + [("in", parse(t)) for t in received]
    for side, frame in sorted(frames, key=lambda f: not isinstance(f[1], Call)):
        assert not isinstance(frame, CallError), frame
        if isinstance(frame, Call):
            actions[(side, frame.unique_id)] = frame.action
            found = schemas.validate(version, frame.action, frame.payload, response=False)
        else:
            action = actions[("in" if side == "out" else "out", frame.unique_id)]
            found = schemas.validate(version, action, frame.payload, response=True)
        assert found == [], (side, frame, found)
        checked += 1
    return checked


@pytest.mark.parametrize("profile", ["v1", "v2"])
async def test_v21_station_of_the_ocpp_package_against_both_profiles(
    http: aiohttp.ClientSession, profile: str
) -> None:
    """The ocpp package's 2.1 charge point: offered ocpp2.1 and ocpp2.0.1 it gets 2.1; boot,
    authorization and transactions follow the profile; every control-API command reaches it as
    a valid 2.1 CALL and its answer comes back through the API."""
    async with ReferenceCsms(profile) as csms:
        async with ws_connect(
            csms.url + "/CP21", subprotocols=["ocpp2.1", "ocpp2.0.1"], open_timeout=5, ping_interval=None
        ) as ws:
            assert ws.subprotocol == "ocpp2.1"
            recording = Recording(ws)
            station = Station21("CP21", recording)
            task = asyncio.create_task(station.start())
            try:
                boot = await station.call(
                    call21.BootNotification(
                        charging_station={"model": "NG910-60023", "vendor_name": "Alfen BV"}, reason="PowerUp"
                    )
                )
                assert boot.status == "Accepted" and boot.interval == (300 if profile == "v1" else 900)
                for tag in DEFAULT_ID_TAGS:
                    auth = await station.call(
                        call21.Authorize(id_token={"id_token": tag, "type": "ISO14443"})
                    )
                    blocked = profile == "v2" and tag == V2_BLOCKED_ID_TAG
                    assert auth.id_token_info["status"] == ("Blocked" if blocked else "Accepted")
                started = await station.call(
                    call21.TransactionEvent(
                        event_type="Started",
                        timestamp="2025-02-01T08:00:00Z",
                        trigger_reason="Authorized",
                        seq_no=0,
                        transaction_info={"transaction_id": "tx-21", "charging_state": "Charging"},
                        evse={"id": 1, "connector_id": 1},
                        id_token={"id_token": DEFAULT_ID_TAGS[0], "type": "ISO14443"},
                    )
                )
                assert started.id_token_info["status"] == "Accepted"
                async with asyncio.timeout(5):
                    while "GetVariables" not in station.commands:  # asked on boot
                        await asyncio.sleep(0.01)
                for name, body, seen in API_21:
                    async with http.post(api(csms, f"/api/chargers/CP21/{name}"), json=body) as resp:
                        assert resp.status == 200, (name, await resp.text())
                        assert "answer" in await resp.json(), name
                    assert station.commands[-1] == seen
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        record = csms.backend.chargers["CP21"]
        assert record.version == "2.1" and record.configuration
        assert csms.backend.transactions["tx-21"].id_tag == DEFAULT_ID_TAGS[0]
    assert frames_valid("2.1", recording.sent, recording.received) >= 2 * (len(API_21) + 7)


async def test_csms_command_stops_cleanly_on_sigterm() -> None:
    """`docker stop` sends SIGTERM; as a container's process 1 the CSMS would ignore it unless handled."""
    import signal
    import socket
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ocpp_replay.cli", "csms", "--port", str(port),
        stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(30):
            while b"listening on" not in await proc.stderr.readline():
                pass
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
