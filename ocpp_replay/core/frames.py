"""OCPP-J frames: parse and build the JSON text that travels over the websocket.

Pure: no I/O. The raw text is always the record; a parsed frame is derived from it.
Alfen chargers send values the schemas do not allow and integers as large as
9223372036854775807, so nothing here normalises or validates payload contents.
"""

from __future__ import annotations

import enum
import json
import sys
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import orjson

from ocpp_replay.errors import InvalidFrame

_NOT_JSON = object()

__all__ = [
    "Call",
    "CallError",
    "CallResult",
    "Direction",
    "Frame",
    "InvalidFrame",
    "MessageType",
    "dump",
    "parse",
]


class MessageType(enum.IntEnum):
    CALL = 2
    CALL_RESULT = 3
    CALL_ERROR = 4


class Direction(enum.StrEnum):
    """Which way a frame travelled."""

    TO_CSMS = "to_csms"
    TO_CP = "to_cp"

    @property
    def reverse(self) -> Direction:
        return _REVERSE[self]


_REVERSE = {Direction.TO_CSMS: Direction.TO_CP, Direction.TO_CP: Direction.TO_CSMS}


@dataclass(frozen=True, slots=True)
class Call:
    unique_id: str
    action: str
    payload: dict[str, Any]

    message_type = MessageType.CALL


@dataclass(frozen=True, slots=True)
class CallResult:
    unique_id: str
    payload: dict[str, Any]

    message_type = MessageType.CALL_RESULT


@dataclass(frozen=True, slots=True)
class CallError:
    unique_id: str
    error_code: str
    error_description: str
    error_details: dict[str, Any]

    message_type = MessageType.CALL_ERROR


Frame = Call | CallResult | CallError


def parse(raw: str | bytes) -> Frame:
    """Parse one OCPP-J frame. Raises InvalidFrame if it is not one.

    Raises nothing but InvalidFrame, whatever the input (a property test holds it to that).
    """
    if isinstance(raw, bytes | bytearray):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidFrame(repr(raw), "binary frame is not UTF-8") from exc
    data = _loads(raw)
    if type(data) is list and data and type(data[0]) is not int:
        # The patterns below compare with ==, which would take 2.0 for a CALL.
        raise InvalidFrame(raw, "not an OCPP-J CALL, CALLRESULT or CALLERROR")
    match data:
        case [2, str(uid), str(action), dict(payload)]:
            return Call(uid, action, payload)
        case [3, str(uid), dict(payload)]:
            return CallResult(uid, payload)
        case [4, str(uid), str(code), str(desc), dict(details)]:
            return CallError(uid, code, desc, details)
        case [4, str(uid), str(code), str(desc)]:
            # Some peers omit errorDetails; keep the frame usable.
            return CallError(uid, code, desc, {})
        case [2 | 3 | 4, *_]:
            raise InvalidFrame(raw, f"malformed OCPP-J message of type {data[0]}")
    raise InvalidFrame(raw, "not an OCPP-J CALL, CALLRESULT or CALLERROR")


_DECODE: Final = msgspec.json.Decoder()


def _short_of_digit_limit(raw: str) -> bool:
    """Whether RAW is too short to hold an integer over the json module's digit limit (which
    only that module refuses): msgspec may read it for the json module."""
    digits = sys.get_int_max_str_digits()  # 0: no limit
    return not digits or len(raw) <= digits


def _loads(raw: str) -> Any:
    """The JSON value of RAW as the json module reads it (the frame's last word), by msgspec
    where the two agree (2x faster; integers of any size kept exact): not where msgspec refuses
    what the json module takes (NaN, 1e400, lone surrogates, deep nesting), nor for a text long
    enough to hold an integer over the json module's digit limit."""
    if _short_of_digit_limit(raw):
        try:
            return _DECODE.decode(raw)
        except (msgspec.MsgspecError, ValueError, RecursionError):
            pass
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise InvalidFrame(raw, "not JSON") from exc


def dump(frame: Frame) -> str:
    """The compact JSON text of a frame, as OCPP-J peers send it."""
    body: list[Any]
    match frame:
        case Call(uid, action, payload):
            body = [2, uid, action, payload]
        case CallResult(uid, payload):
            body = [3, uid, payload]
        case CallError(uid, code, desc, details):
            body = [4, uid, code, desc, details]
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


class _Object(msgspec.Struct, frozen=True):
    """Any JSON object: validated while skipped, nothing of it built."""


class _CallHead(msgspec.Struct, array_like=True, tag=2, forbid_unknown_fields=True):
    unique_id: str
    action: str
    payload: _Object


class _ResultHead(msgspec.Struct, array_like=True, tag=3, forbid_unknown_fields=True):
    unique_id: str
    payload: _Object


class _ErrorHead(msgspec.Struct, array_like=True, tag=4, forbid_unknown_fields=True):
    unique_id: str
    error_code: str
    error_description: str
    error_details: _Object = _Object()


#: Reads a well-formed OCPP-J frame's header and checks the whole text is JSON, building no
#: payload (0.5 us for a 450-byte MeterValues, against 1.5 us for orjson's full parse).
_HEAD = msgspec.json.Decoder(_CallHead | _ResultHead | _ErrorHead)


def peek(raw: str | bytes) -> tuple[int | None, str | None, str | None, str | None]:
    """(message_type, unique_id, action, parse_error) of a raw frame, for the capture columns.

    Never raises: a frame that is not OCPP-J gets its reason as parse_error. Agrees with
    :func:`parse` on what is valid (a property test holds it to that) but builds no frame
    objects: the capture writer calls it for every frame.
    """
    # bytes go the long way: msgspec does not check UTF-8 it skips. So does a text long enough
    # to hold an integer over the json module's digit limit.
    if type(raw) is str and _short_of_digit_limit(raw):
        try:
            head = _HEAD.decode(raw)
        except (msgspec.MsgspecError, ValueError, RecursionError):
            # Not well-formed OCPP-J, JSON msgspec is stricter about, or a lone surrogate
            # (UnicodeEncodeError): the reason, or the json module's verdict, below.
            pass
        else:
            if type(head) is _CallHead:
                return 2, head.unique_id, head.action, None
            return (3 if type(head) is _ResultHead else 4), head.unique_id, None, None
    return _peek_slowly(raw)


def _peek_slowly(raw: str | bytes) -> tuple[int | None, str | None, str | None, str | None]:
    """:func:`peek` for what its fast path does not take: the reason a frame is not OCPP-J."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # orjson is stricter than the json module in corners (NaN, nesting depth):
        # the json module has the last word, as it has in parse().
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError, UnicodeDecodeError):
            data = _NOT_JSON
    if data is _NOT_JSON:
        if isinstance(raw, bytes | bytearray):
            try:
                bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                return None, None, None, "binary frame is not UTF-8"
        return None, None, None, "not JSON"
    if type(data) is not list or not data or data[0] not in (2, 3, 4) or type(data[0]) is not int:
        return None, None, None, "not an OCPP-J CALL, CALLRESULT or CALLERROR"
    mtype: int = data[0]
    n = len(data)
    uid = data[1] if n > 1 and type(data[1]) is str else None
    if uid is not None:
        if mtype == 2 and n == 4 and type(data[2]) is str and type(data[3]) is dict:
            return 2, uid, data[2], None
        if mtype == 3 and n == 3 and type(data[2]) is dict:
            return 3, uid, None, None
        if (
            mtype == 4
            and n in (4, 5)
            and type(data[2]) is str
            and type(data[3]) is str
            and (n == 4 or type(data[4]) is dict)
        ):
            return 4, uid, None, None
    return mtype, uid, None, f"malformed OCPP-J message of type {mtype}"
