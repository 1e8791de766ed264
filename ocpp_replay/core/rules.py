"""Diff rules: which parts of a message differ on every run and how to compare them.

Pure (apart from :func:`load_rules` reading the file it is given). A rule names an action,
a message (``request`` or ``response``) and paths with a mode:

- ``ignore``: the value is not compared at all (present or not);
- ``presence``: the value must be present on both sides with the same JSON type; its value
  is not compared (``currentTime``, expiry dates, ids the backend assigns).

Built-in rules cover what differs on every run for OCPP 1.6, 2.0.1 and 2.1; the sources of
correlated values (see :mod:`ocpp_replay.core.correlate`) are presence rules too. A TOML rules file
adds paths, turns built-in ones back into exact comparisons, and adds correlations::

    builtin = true                 # false: start without the built-in rules

    [[rule]]
    action = "BootNotification"    # or "*" for every action
    message = "response"           # request | response (default: response)
    ocpp = "1.6"                   # 1.6 | 2.0.1 | 2.1 (default: every version)
    ignore = ["interval"]
    presence = ["status"]
    compare = ["currentTime"]      # remove these built-in paths: compare exactly

    [[correlate]]
    name = "reservationId"
    ocpp = "1.6"
    from = { action = "ReserveNow", message = "request", path = "reservationId" }
    to = [{ action = "StartTransaction", path = "reservationId" }]
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ocpp_replay.core.correlate import (
    Correlation,
    Correlator,
    Location,
    Message,
    builtin_correlations,
)
from ocpp_replay.core.paths import Path, format_path, parse_path
from ocpp_replay.errors import ConfigError

__all__ = ["BUILTIN_RULES", "Mode", "PathRule", "RuleSet", "parse_rules"]

VERSIONS = ("1.6", "2.0.1", "2.1")


class Mode(StrEnum):
    IGNORE = "ignore"
    PRESENCE = "presence"


@dataclass(frozen=True, slots=True)
class PathRule:
    path: Path
    mode: Mode

    @property
    def text(self) -> str:
        return format_path(self.path)


_Key = tuple[str | None, str, Message]  # (version or None for both, action or "*", message)


def _builtin() -> dict[_Key, tuple[PathRule, ...]]:
    def p(*paths: str) -> tuple[PathRule, ...]:
        return tuple(PathRule(parse_path(x), Mode.PRESENCE) for x in paths)

    req, res = Message.REQUEST, Message.RESPONSE
    v16, v201 = "1.6", "2.0.1"
    rules: dict[_Key, tuple[PathRule, ...]] = {
        # OCPP 1.6
        (v16, "BootNotification", res): p("currentTime"),
        (v16, "Heartbeat", res): p("currentTime"),
        (v16, "Authorize", res): p("idTagInfo.expiryDate"),
        (v16, "StartTransaction", res): p("idTagInfo.expiryDate"),
        (v16, "StopTransaction", res): p("idTagInfo.expiryDate"),
        (v16, "ReserveNow", req): p("expiryDate"),
        (v16, "GetDiagnostics", req): p("startTime", "stopTime"),
        (v16, "UpdateFirmware", req): p("retrieveDate"),
        (v16, "SetChargingProfile", req): p(
            "csChargingProfiles.validFrom",
            "csChargingProfiles.validTo",
            "csChargingProfiles.chargingSchedule.startSchedule",
        ),
        (v16, "RemoteStartTransaction", req): p(
            "chargingProfile.validFrom",
            "chargingProfile.validTo",
            "chargingProfile.chargingSchedule.startSchedule",
        ),
        (v16, "SendLocalList", req): p("localAuthorizationList[*].idTagInfo.expiryDate"),
        # OCPP 2.0.1
        (v201, "BootNotification", res): p("currentTime"),
        (v201, "Heartbeat", res): p("currentTime"),
        (v201, "Authorize", res): p("idTokenInfo.cacheExpiryDateTime"),
        (v201, "TransactionEvent", res): p("idTokenInfo.cacheExpiryDateTime"),
        (v201, "ReserveNow", req): p("expiryDateTime"),
        (v201, "GetLog", req): p("log.oldestTimestamp", "log.latestTimestamp"),
        (v201, "UpdateFirmware", req): p("firmware.retrieveDateTime", "firmware.installDateTime"),
        (v201, "SetChargingProfile", req): p(
            "chargingProfile.validFrom",
            "chargingProfile.validTo",
            "chargingProfile.chargingSchedule[*].startSchedule",
        ),
        (v201, "RequestStartTransaction", req): p(
            "chargingProfile.validFrom",
            "chargingProfile.validTo",
            "chargingProfile.chargingSchedule[*].startSchedule",
        ),
        (v201, "SendLocalList", req): p("localAuthorizationList[*].idTokenInfo.cacheExpiryDateTime"),
        (v201, "SetDisplayMessage", req): p("message.startDateTime", "message.endDateTime"),
    }
    # OCPP 2.1 keeps the 2.0.1 messages and their time fields; its price schedules in charging
    # profiles are anchored at a time, and a settlement's receipt is the backend's.
    v21 = "2.1"
    rules.update(
        {(v21, action, message): paths for (v, action, message), paths in rules.items() if v == v201}
    )
    anchors = (
        "chargingProfile.chargingSchedule[*].absolutePriceSchedule.timeAnchor",
        "chargingProfile.chargingSchedule[*].priceLevelSchedule.timeAnchor",
    )
    rules[(v21, "SetChargingProfile", req)] += p(*anchors)
    rules[(v21, "RequestStartTransaction", req)] += p(*anchors)
    rules[(v21, "NotifySettlement", res)] = p("receiptId", "receiptUrl")
    return rules


BUILTIN_RULES: Mapping[_Key, tuple[PathRule, ...]] = _builtin()


@dataclass(frozen=True)
class RuleSet:
    """Path rules and correlations; ``for_message`` picks what applies to one message."""

    paths: Mapping[_Key, tuple[PathRule, ...]] = field(default_factory=lambda: dict(BUILTIN_RULES))
    builtin_correlations: bool = True
    extra_correlations: tuple[tuple[str | None, Correlation], ...] = ()

    @classmethod
    def default(cls) -> RuleSet:
        return cls()

    def correlations(self, version: str | None) -> tuple[Correlation, ...]:
        base = builtin_correlations(version) if self.builtin_correlations else ()
        extra = tuple(c for v, c in self.extra_correlations if v is None or version is None or v == version)
        names = {c.name for c in extra}
        return tuple(c for c in base if c.name not in names) + extra

    def correlator(self, version: str | None) -> Correlator:
        return Correlator(self.correlations(version))

    def for_message(
        self, version: str | None, action: str | None, message: Message, correlator: Correlator | None = None
    ) -> tuple[PathRule, ...]:
        """The rules for one message (version None: the rules of both versions)."""
        out: list[PathRule] = []
        versions: tuple[str | None, ...] = (None, version) if version else (None, *VERSIONS)
        for v in versions:
            for act in ("*", action or ""):
                out.extend(self.paths.get((v, act, message), ()))
        if correlator is not None:
            out.extend(PathRule(p, Mode.PRESENCE) for p in correlator.source_paths(action, message))
        return tuple(dict.fromkeys(out))


# ----------------------------------------------------------------------------- TOML


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{where}: expected a string or a list of strings")


def _version(value: Any, where: str) -> str | None:
    if value is None:
        return None
    text = str(value).removeprefix("ocpp")
    if text == "2.0":
        text = "2.0.1"
    if text not in VERSIONS:
        raise ConfigError(
            f"{where}: ocpp must be {', '.join(VERSIONS[:-1])} or {VERSIONS[-1]}, not {value!r}"
        )
    return text


def _location(value: Any, default_message: str, where: str) -> Location:
    if not isinstance(value, dict) or not isinstance(value.get("action"), str):
        raise ConfigError(f"{where}: expected a table with action, message and path")
    message = value.get("message", default_message)
    if message not in ("request", "response"):
        raise ConfigError(f"{where}: message must be request or response, not {message!r}")
    path = value.get("path")
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(f"{where}: path missing")
    unknown = set(value) - {"action", "message", "path"}
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    return Location(value["action"], Message(message), parse_path(path))


def parse_rules(text: str, *, source: str = "rules") -> RuleSet:
    """Build a RuleSet from the text of a TOML rules file. Raises ConfigError."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    unknown = set(doc) - {"builtin", "rule", "correlate", "rewrite"}  # rewrite: core/rewrite.py
    if unknown:
        raise ConfigError(f"{source}: unknown key {sorted(unknown)[0]!r}")
    builtin = doc.get("builtin", True)
    if not isinstance(builtin, bool):
        raise ConfigError(f"{source}: builtin must be true or false")
    paths: dict[_Key, list[PathRule]] = {k: list(v) for k, v in BUILTIN_RULES.items()} if builtin else {}
    rules = doc.get("rule", [])
    if not isinstance(rules, list):
        raise ConfigError(f"{source}: [[rule]] must be an array of tables")
    for i, rule in enumerate(rules, 1):
        where = f"{source}: rule {i}"
        if not isinstance(rule, dict):
            raise ConfigError(f"{where}: expected a table")
        bad = set(rule) - {"action", "message", "ocpp", "ignore", "presence", "compare"}
        if bad:
            raise ConfigError(f"{where}: unknown key {sorted(bad)[0]!r}")
        action = rule.get("action")
        if not isinstance(action, str) or not action:
            raise ConfigError(f"{where}: action missing")
        message = rule.get("message", "response")
        if message not in ("request", "response"):
            raise ConfigError(f"{where}: message must be request or response, not {message!r}")
        version = _version(rule.get("ocpp"), where)
        msg = Message(message)
        compare = {parse_path(p) for p in _strings(rule.get("compare"), where)}
        if compare:
            for key in list(paths):
                v, act, m = key
                if m is msg and act == action and (version is None or v in (None, version)):
                    paths[key] = [r for r in paths[key] if r.path not in compare]
        for mode in (Mode.IGNORE, Mode.PRESENCE):
            for text_path in _strings(rule.get(str(mode)), where):
                paths.setdefault((version, action, msg), []).append(PathRule(parse_path(text_path), mode))
    correlations: list[tuple[str | None, Correlation]] = []
    entries = doc.get("correlate", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{source}: [[correlate]] must be an array of tables")
    for i, entry in enumerate(entries, 1):
        where = f"{source}: correlate {i}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a table")
        bad = set(entry) - {"name", "ocpp", "from", "to"}
        if bad:
            raise ConfigError(f"{where}: unknown key {sorted(bad)[0]!r}")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: name missing")
        targets = entry.get("to", [])
        if isinstance(targets, dict):
            targets = [targets]
        if not isinstance(targets, list) or not targets:
            raise ConfigError(f"{where}: to must list at least one target")
        correlations.append(
            (
                _version(entry.get("ocpp"), where),
                Correlation(
                    name,
                    _location(entry.get("from"), "response", f"{where} from"),
                    tuple(_location(t, "request", f"{where} to") for t in targets),
                ),
            )
        )
    return RuleSet(
        paths={k: tuple(v) for k, v in paths.items() if v},
        builtin_correlations=builtin,
        extra_correlations=tuple(correlations),
    )
