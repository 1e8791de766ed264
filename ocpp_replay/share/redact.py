"""Redaction: replace personal and identifying values in a capture with deterministic pseudonyms.

The core (:class:`Redactor`) is pure: text in, text out. :func:`redact_capture` is the I/O
wrapper that reads one capture and writes a new one.

What is replaced (the default fields; ``--fields`` changes them):

* id tags: 1.6 ``idTag`` and ``parentIdTag`` wherever they occur (Authorize, StartTransaction,
  StopTransaction, SendLocalList, RemoteStartTransaction, ...); 2.0.1 ``idToken`` (the string
  inside ``idToken`` and ``groupIdToken`` objects) and ``additionalIdToken`` → ``tag-<hex>``
* serial numbers: ``chargePointSerialNumber``, ``chargeBoxSerialNumber``,
  ``meterSerialNumber``, ``serialNumber`` → ``sn-<hex>``
* SIM identities: ``iccid`` → ``iccid-<hex>``, ``imsi`` → ``imsi-<hex>``
* the charger's IP address (``sessions.remote_addr``) → ``ip-<hex>``, unless kept
  (``keep_addresses``): a home charger's address is its owner's
* optionally charge point ids → ``cp-<hex>``: in ``sessions.charge_point_id``, in the path
  and upstream URL segments, as the Basic auth user, and wherever a payload string equals one.

A pseudonym is ``<prefix>-`` and the first 12 hex digits of HMAC-SHA256(key, value): the same
value gets the same pseudonym everywhere in a capture and in every capture redacted with the
same key, so replays still correlate and sessions still join. 48 bits keep accidental
collisions out of reach for any site (a collision is detected and raised). Every pseudonym fits
the schema lengths of the fields it replaces (idTag: 20 characters).

Raw text is edited, not re-serialised: the walker below finds the exact span of each JSON string
and only the spans that change are rewritten. Everything else in the frame — numbers such as
transactionId 9223372036854775807, whitespace, key order, escapes — stays byte for byte, and a
frame with nothing to redact is returned as the very same string. A value found by the rules is
also replaced where it occurs inside other strings (a DataTransfer ``data`` that embeds JSON)
and inside frames that are not JSON, as long as it is at least :data:`MIN_SWEEP` characters.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from json.decoder import scanstring  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from ocpp_replay.errors import CaptureError, ConfigError
from ocpp_replay.share.detect import KINDS, find
from ocpp_replay.share.exchange import CaptureSink, Record, check_capture_tables, create_output, iter_capture
from ocpp_replay.store import Store

__all__ = [
    "DEFAULT_FIELDS",
    "MIN_SWEEP",
    "Leaf",
    "Pseudonyms",
    "RedactResult",
    "Redactor",
    "parse_detect",
    "parse_fields",
    "redact_capture",
    "string_leaves",
]

#: JSON key → pseudonym prefix.
DEFAULT_FIELDS: Mapping[str, str] = {
    "idTag": "tag",
    "parentIdTag": "tag",
    "idToken": "tag",
    "additionalIdToken": "tag",
    "chargePointSerialNumber": "sn",
    "chargeBoxSerialNumber": "sn",
    "meterSerialNumber": "sn",
    "serialNumber": "sn",
    "iccid": "iccid",
    "imsi": "imsi",
}
CHARGE_POINT_PREFIX = "cp"
USER_PREFIX = "user"
ADDRESS_PREFIX = "ip"
#: Pseudonym prefixes of the values found by pattern in free text (:mod:`ocpp_replay.share.detect`).
DETECTED_PREFIX: Mapping[str, str] = {
    "email": "email",
    "iban": "iban",
    "vin": "vin",
    "mac": "mac",
    "rfid_uid": "uid",
    "phone": "phone",
}
#: Found values shorter than this are replaced only where a whole string equals them.
MIN_SWEEP = 6
HEX_DIGITS = 12


# ----------------------------------------------------------------------------- the JSON walker


@dataclass(frozen=True, slots=True)
class Leaf:
    """A JSON string value: its span in the text (quotes included) and where it sits."""

    start: int
    end: int
    value: str
    key: str | None  # the object key it is the value of (array items inherit their array's key)
    depth: int  # 1 for the items of the top-level array (the OCPP-J envelope)
    index: int | None  # position in its array, if in one
    path: tuple[str | int, ...] = ()  # keys and array positions from the top


_WS = frozenset(" \t\n\r")
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_LITERALS = ("true", "false", "null", "NaN", "Infinity", "-Infinity")


class _Walker:
    __slots__ = ("leaves", "n", "s")

    def __init__(self, text: str) -> None:
        self.s = text
        self.n = len(text)
        self.leaves: list[Leaf] = []

    def ws(self, i: int) -> int:
        s, n = self.s, self.n
        while i < n and s[i] in _WS:
            i += 1
        return i

    def char(self, i: int) -> str:
        if i >= self.n:
            raise ValueError("unexpected end of JSON")
        return self.s[i]

    def value(
        self, i: int, key: str | None, depth: int, index: int | None, path: tuple[str | int, ...] = ()
    ) -> int:
        i = self.ws(i)
        c = self.char(i)
        if c == '"':
            text, end = scanstring(self.s, i + 1, True)
            self.leaves.append(Leaf(i, end, text, key, depth, index, path))
            return int(end)
        if c == "{":
            i = self.ws(i + 1)
            if self.char(i) == "}":
                return i + 1
            while True:
                if self.char(i) != '"':
                    raise ValueError(f"expected a key at {i}")
                k, i = scanstring(self.s, i + 1, True)
                i = self.ws(i)
                if self.char(i) != ":":
                    raise ValueError(f"expected ':' at {i}")
                i = self.ws(self.value(i + 1, k, depth + 1, None, (*path, k)))
                c = self.char(i)
                if c == "}":
                    return i + 1
                if c != ",":
                    raise ValueError(f"expected ',' or '}}' at {i}")
                i = self.ws(i + 1)
        if c == "[":
            i = self.ws(i + 1)
            if self.char(i) == "]":
                return i + 1
            item = 0
            while True:
                i = self.ws(self.value(i, key, depth + 1, item, (*path, item)))
                item += 1
                c = self.char(i)
                if c == "]":
                    return i + 1
                if c != ",":
                    raise ValueError(f"expected ',' or ']' at {i}")
                i += 1
        m = _NUMBER.match(self.s, i)
        if m:
            return m.end()
        for literal in _LITERALS:
            if self.s.startswith(literal, i):
                return i + len(literal)
        raise ValueError(f"unexpected {c!r} at {i}")


def string_leaves(text: str) -> list[Leaf]:
    """Every string value of a JSON text with its exact span. Raises ValueError if not JSON.

    Accepts what ``json.loads`` accepts (a property test holds it to that); keys are not leaves.
    """
    walker = _Walker(text)
    try:
        end = walker.ws(walker.value(0, None, 0, None))
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc
    if end != walker.n:
        raise ValueError(f"extra data at {end}")
    return walker.leaves


# ----------------------------------------------------------------------------- pseudonyms


class Pseudonyms:
    """``prefix-<12 hex>`` from a keyed HMAC-SHA256 of the value; the same value, the same hex."""

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ConfigError("the redaction key must not be empty")
        self._key = key
        self._cache: dict[tuple[str, str], str] = {}
        self._seen: dict[str, str] = {}

    def __call__(self, prefix: str, value: str) -> str:
        cached = self._cache.get((prefix, value))
        if cached is not None:
            return cached
        digest = hmac.new(self._key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:HEX_DIGITS]
        owner = self._seen.setdefault(digest, value)
        if owner != value:  # 1 in 2**48 per pair: never silently merge two identities
            raise ConfigError(f"pseudonym collision between two values ({digest}); use another key")
        pseudonym = f"{prefix}-{digest}"
        self._cache[(prefix, value)] = pseudonym
        return pseudonym


def parse_detect(spec: Iterable[str]) -> tuple[str, ...]:
    """``--detect`` values: kinds, comma-separated or repeated; ``all`` (the default) or ``none``."""
    kinds: list[str] = []
    for part in (p.strip() for item in spec for p in item.split(",")):
        if not part:
            continue
        if part == "all":
            kinds.extend(KINDS)
        elif part == "none":
            continue
        elif part in KINDS:
            kinds.append(part)
        else:
            raise ConfigError(f"unknown --detect kind {part!r}: use {', '.join(KINDS)}, all or none")
    return tuple(k for k in KINDS if k in kinds)


def parse_fields(spec: Iterable[str]) -> dict[str, str]:
    """``--fields`` values: ``key`` or ``key=prefix``, comma-separated; ``default`` adds the defaults."""
    fields: dict[str, str] = {}
    for part in (p.strip() for item in spec for p in item.split(",")):
        if not part:
            continue
        if part == "default":
            fields.update(DEFAULT_FIELDS)
            continue
        key, _, prefix = part.partition("=")
        key, prefix = key.strip(), (prefix.strip() or DEFAULT_FIELDS.get(key.strip(), "x"))
        if not key or not re.fullmatch(r"[A-Za-z0-9_.]+", prefix):
            raise ConfigError(f"bad --fields entry {part!r}: use KEY or KEY=PREFIX")
        fields[key] = prefix
    if not fields:
        raise ConfigError("--fields names no field")
    return fields


# ----------------------------------------------------------------------------- the pure core


def _encode(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


class Redactor:
    """Replaces configured fields (and, optionally, charge point ids) with pseudonyms.

    Two passes over a capture: :meth:`learn` every frame first, so that values found anywhere
    are also swept out of free text everywhere, then :meth:`text` / :meth:`session` / ...
    """

    def __init__(
        self,
        key: bytes,
        fields: Mapping[str, str] = DEFAULT_FIELDS,
        *,
        charge_point_ids: bool = False,
        keep_addresses: bool = False,
        detect: Iterable[str] = KINDS,
    ) -> None:
        self.pseudonym = Pseudonyms(key)
        self.fields = dict(fields)
        self.charge_point_ids = charge_point_ids
        self.keep_addresses = keep_addresses
        wanted = set(detect)
        self.detect = tuple(k for k in KINDS if k in wanted)
        self.known: dict[str, str] = {}  # value → pseudonym, everything the rules found
        self._sweep: re.Pattern[str] | None = None
        # What was found where, for the report: counts and sessions, never the values.
        self._occurrences: Counter[tuple[str, str]] = Counter()
        self._sessions: dict[tuple[str, str], set[int]] = {}
        self._distinct: dict[str, set[str]] = {}

    # -- pass 1 ----------------------------------------------------------------------

    def learn_charge_point(self, cp_id: str) -> None:
        if self.charge_point_ids and cp_id:
            self._know(cp_id, self.pseudonym(CHARGE_POINT_PREFIX, cp_id))

    def _found(self, kind: str, value: str, place: str, session_id: int | None) -> None:
        self._occurrences[(kind, place)] += 1
        if session_id is not None:
            self._sessions.setdefault((kind, place), set()).add(session_id)
        self._distinct.setdefault(kind, set()).add(value)

    def learn_session(self, row: Mapping[str, Any]) -> None:
        """Pass 1 for a sessions row: its charge point id, and free text in its error and close
        reason; counts the addresses and ids that :meth:`session` will replace."""
        sid = row.get("id")
        sid = sid if isinstance(sid, int) else None
        cp = _str(row.get("charge_point_id"))
        if cp:
            self.learn_charge_point(cp)
            if self.charge_point_ids:
                self._found("charge_point_id", cp, "sessions.charge_point_id", sid)
        address = _str(row.get("remote_addr"))
        if address and not self.keep_addresses:
            self._found("ip_address", address, "sessions.remote_addr", sid)
        for column in ("error", "close_reason"):
            text = _str(row.get(column))
            if text:
                self.learn_text(text, f"sessions.{column}", sid)

    def learn_text(self, text: str, place: str, session_id: int | None = None) -> None:
        """Pass 1 for free text that is not a frame (a close reason, an event's detail)."""
        for kind, value in find(text, self.detect):
            self._detected(kind, value, place, session_id)

    def _detected(self, kind: str, value: str, place: str, session_id: int | None) -> None:
        self._found(kind, value, place, session_id)
        if value not in self.known:  # a field rule's or a charge point's pseudonym comes first
            self._know(value, self.pseudonym(DETECTED_PREFIX[kind], value), rule=False)

    def learn(
        self,
        raw: str | bytes | None,
        *,
        action: str | None = None,
        message_type: int | None = None,
        session_id: int | None = None,
    ) -> None:
        """Pass 1 for a frame: values under the field rules' keys, and what the detectors find in
        every other string (the envelope excepted). ``action`` and ``message_type`` say where,
        for the report."""
        text = _as_text(raw)
        if text is None:
            return
        message = _MESSAGE.get(message_type, "frame") if message_type is not None else "frame"
        where = f"{action or '?'} {message}"
        try:
            leaves = string_leaves(text)
        except ValueError:
            self.learn_text(text, f"{where} (not JSON)", session_id)
            return
        for leaf in leaves:
            if _envelope(leaf):
                continue
            prefix = self.fields.get(leaf.key) if leaf.key is not None else None
            if prefix is not None and leaf.value:
                self._know(leaf.value, self.pseudonym(prefix, leaf.value))
                self._found(str(leaf.key), leaf.value, f"{where}: {_path(leaf, message_type)}", session_id)
                continue
            if self.detect and leaf.value:
                for kind, value in find(leaf.value, self.detect):
                    self._detected(kind, value, f"{where}: {_path(leaf, message_type)}", session_id)

    def report(self) -> dict[str, Any]:
        """What was found and where: kinds with their distinct values and occurrences, and each
        place (a frame's action, message and payload path; a sessions column; event details)
        with its occurrences and sessions. Never a value."""
        kinds: dict[str, dict[str, int]] = {}
        for (kind, _), n in self._occurrences.items():
            entry = kinds.setdefault(kind, {"values": len(self._distinct.get(kind, ())), "occurrences": 0})
            entry["occurrences"] += n
        places = [
            {
                "kind": kind,
                "where": place,
                "occurrences": n,
                "sessions": len(self._sessions.get((kind, place), ())),
            }
            for (kind, place), n in sorted(
                self._occurrences.items(), key=lambda kv: (kv[0][0], -kv[1], kv[0][1])
            )
        ]
        return {"kinds": dict(sorted(kinds.items())), "places": places}

    def _know(self, value: str, pseudonym: str, *, rule: bool = True) -> None:
        # A charge point id keeps its cp- name even where a rule also matched it; a field rule's
        # name beats a detector's (an RFID UID that is also an idTag is a tag-).
        if self.known.get(value, "").startswith(CHARGE_POINT_PREFIX + "-"):
            return
        if not rule and value in self.known:
            return
        self.known[value] = pseudonym
        self._sweep = None

    # -- pass 2 ----------------------------------------------------------------------

    def _sweeper(self) -> re.Pattern[str] | None:
        if self._sweep is None:
            long = sorted((v for v in self.known if len(v) >= MIN_SWEEP), key=len, reverse=True)
            self._sweep = re.compile("|".join(map(re.escape, long))) if long else re.compile(r"(?!x)x")
        return self._sweep

    def sweep(self, text: str) -> str:
        """``text`` with every known value (of at least MIN_SWEEP characters) replaced."""
        if not self.known:
            return text
        pattern = self._sweeper()
        assert pattern is not None
        return pattern.sub(lambda m: self.known[m.group(0)], text)

    def _replacement(self, leaf: Leaf) -> str | None:
        if _envelope(leaf):
            return None  # the envelope: message type, unique id, action / error code
        prefix = self.fields.get(leaf.key) if leaf.key is not None else None
        if prefix is not None and leaf.value:
            known = self.known.get(leaf.value)
            return known if known is not None else self.pseudonym(prefix, leaf.value)
        known = self.known.get(leaf.value)
        if known is not None:
            return known
        swept = self.sweep(leaf.value)
        return swept if swept != leaf.value else None

    def text(self, raw: str) -> str:
        """A frame's text with its redactable strings replaced; the same object if none are."""
        try:
            leaves = string_leaves(raw)
        except ValueError:
            return self.sweep(raw)
        parts: list[str] = []
        last = 0
        for leaf in leaves:
            new = self._replacement(leaf)
            if new is None or new == leaf.value:
                continue
            parts.append(raw[last : leaf.start])
            parts.append(_encode(new))
            last = leaf.end
        if not parts:
            return raw
        parts.append(raw[last:])
        return "".join(parts)

    def frame(self, row: dict[str, Any]) -> dict[str, Any]:
        """A frames row with ``raw`` (or UTF-8 ``raw_bytes``) redacted; the same dict if unchanged."""
        raw = row.get("raw")
        if isinstance(raw, str):
            new = self.text(raw)
            return row if new is raw else dict(row, raw=new)
        data = row.get("raw_bytes")
        if isinstance(data, bytes | bytearray):
            try:
                text = bytes(data).decode("utf-8")
            except UnicodeDecodeError:
                return row  # not text: nothing a rule can find
            new = self.text(text)
            return row if new is text else dict(row, raw_bytes=new.encode("utf-8"))
        return row

    def _segment(self, segment: str) -> str:
        known = self.known.get(unquote(segment))
        if known is not None and known.startswith(CHARGE_POINT_PREFIX + "-"):
            return quote(known, safe="")
        return segment

    def _path(self, path: str) -> str:
        return "/".join(self._segment(s) for s in path.split("/"))

    def session(self, row: dict[str, Any]) -> dict[str, Any]:
        """A sessions row with the charger's address and, if asked for, charge point ids (and
        what holds them) replaced; the very same row when there is nothing to replace."""
        original = row
        row = dict(row)
        for column in ("error", "close_reason"):
            text = _str(row.get(column))
            if text:
                swept = self.sweep(text)
                if swept != text:
                    row[column] = swept
        address = _str(row.get("remote_addr")) if not self.keep_addresses else None
        if address:
            row["remote_addr"] = self.pseudonym(ADDRESS_PREFIX, address)
        if not self.charge_point_ids:
            return original if row == original else row
        cp = _str(row.get("charge_point_id"))
        if cp:
            row["charge_point_id"] = self.pseudonym(CHARGE_POINT_PREFIX, cp)
        path = _str(row.get("path"))
        if path:
            row["path"] = self._path(path)
        query = _str(row.get("query"))
        if query:
            row["query"] = self.sweep(query)
        url = _str(row.get("upstream_url"))
        if url:
            parts = urlsplit(url)
            row["upstream_url"] = urlunsplit(
                parts._replace(path=self._path(parts.path), query=self.sweep(parts.query))
            )
        user = _str(row.get("auth_user"))
        if user:
            known = self.known.get(user)
            row["auth_user"] = known if known is not None else self.pseudonym(USER_PREFIX, user)
        return row

    def event(self, row: dict[str, Any]) -> dict[str, Any]:
        detail = row.get("detail")
        return dict(row, detail=self.sweep(detail)) if isinstance(detail, str) else row

    def record(self, kind: str, row: dict[str, Any]) -> dict[str, Any]:
        if kind == "frame":
            return self.frame(row)
        if kind == "session":
            return self.session(row)
        return self.event(row)


_MESSAGE: Mapping[int, str] = {2: "request", 3: "response", 4: "error"}


def _envelope(leaf: Leaf) -> bool:
    """The OCPP-J envelope's strings: message type, unique id, action or error code."""
    return leaf.depth == 1 and leaf.index is not None and leaf.index < 3


_ERROR_PARTS: Mapping[int, str] = {3: "errorDescription", 4: "errorDetails"}


def _path(leaf: Leaf, message_type: int | None = None) -> str:
    """Where a string sits in the payload, array positions as ``[]``:
    ``meterValue[].sampledValue[].value``; a CALLERROR's ``errorDescription``, ``errorDetails``."""
    parts = leaf.path[1:] if leaf.path and isinstance(leaf.path[0], int) else leaf.path
    if message_type == 4 and leaf.path and isinstance(leaf.path[0], int) and leaf.path[0] in _ERROR_PARTS:
        parts = (_ERROR_PARTS[leaf.path[0]], *parts)
    out = ""
    for part in parts:
        out += "[]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(payload)"


def _as_text(raw: object) -> str | None:
    if isinstance(raw, bytes | bytearray):
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return raw if isinstance(raw, str) else None


def _str(value: object) -> str | None:
    """A sessions column as text, whatever SQLite holds in it (a capture from elsewhere may hold
    a number or a blob where text belongs: it is redacted as its text all the same)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


# ----------------------------------------------------------------------------- the I/O wrapper


@dataclass(frozen=True, slots=True)
class RedactResult:
    sessions: int
    frames: int
    frames_changed: int
    values: int  # distinct values replaced
    random_key: bool
    found: Mapping[str, Any] = field(default_factory=dict)  # Redactor.report(): kinds and places


def random_key() -> bytes:
    return secrets.token_bytes(32)


def redact_capture(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    key: bytes | None = None,
    fields: Mapping[str, str] = DEFAULT_FIELDS,
    charge_point_ids: bool = False,
    keep_addresses: bool = False,
    detect: Iterable[str] = KINDS,
    force: bool = False,
) -> RedactResult:
    """Write a redacted copy of the capture ``src`` to the new file ``out`` (mode 0600).

    Session ids, frame order, timestamps and every other column are kept. Runs (replay and
    compare results, which hold live frames) are not copied. Without ``key`` a random one is
    used: the pseudonyms then differ from run to run.
    """
    if Path(out).resolve() == Path(src).resolve():
        raise ConfigError("--out must be a new file, not the capture itself")
    redactor = Redactor(
        key or random_key(),
        fields,
        charge_point_ids=charge_point_ids,
        keep_addresses=keep_addresses,
        detect=detect,
    )
    with Store.open(src) as store:
        check_capture_tables(store)
        try:
            cursor = store.db.execute("SELECT * FROM sessions")
            names = [d[0] for d in cursor.description]
            for values in cursor:
                redactor.learn_session(dict(zip(names, values, strict=True)))
            for session_id, raw, raw_bytes, action, message_type in store.db.execute(
                "SELECT session_id, raw, raw_bytes, action, message_type FROM frames"
            ):
                redactor.learn(
                    raw if raw is not None else raw_bytes,
                    action=action,
                    message_type=message_type,
                    session_id=session_id,
                )
            for session_id, detail in store.db.execute("SELECT session_id, detail FROM capture_events"):
                if isinstance(detail, str):
                    redactor.learn_text(detail, "capture_events.detail", session_id)
        except sqlite3.DatabaseError as exc:
            raise CaptureError(f"cannot read {store.path}: {exc}") from exc
        changed = 0

        def redacted(records: Iterator[Record]) -> Iterator[Record]:
            nonlocal changed
            for kind, row in records:
                new = redactor.record(kind, row)
                if kind == "frame" and new is not row:
                    changed += 1
                yield kind, new

        db = create_output(out, force=force)
        try:
            with CaptureSink(db, lambda old: old) as sink:
                for kind, row in redacted(iter_capture(store)):
                    sink.write(kind, row)
        except BaseException:
            db.conn.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{out}{suffix}").unlink(missing_ok=True)
            raise
        db.conn.close()
    return RedactResult(
        sessions=sink.result.sessions,
        frames=sink.result.frames,
        frames_changed=changed,
        values=len(redactor.known),
        random_key=key is None,
        found=redactor.report(),
    )
