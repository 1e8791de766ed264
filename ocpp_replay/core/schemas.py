"""Validate OCPP payloads against the official JSON schemas the `ocpp` package ships.

Pure: the only I/O is reading the schema files of the installed ``ocpp`` package, once per
(version, action, direction), after which the compiled validator is cached. Called for every
frame of a replay or simulation: a payload is first run through the schema compiled to Python
by fastjsonschema (3-7 us for a valid one, against 22-102 us for jsonschema's ``iter_errors``);
only a payload it rejects goes to jsonschema, which lists every violation with its path. The
two agree on validity (tests/test_schemas.py feeds both random payloads of every schema).

Versions: 1.6 (``ocpp/v16``), 2.0.1 (``ocpp/v201``) and 2.1 (``ocpp/v21``, the schemas OCA
published with OCPP 2.1 in January 2025). File names differ per version: 1.6 has
``Authorize.json`` / ``AuthorizeResponse.json``, 2.0.1 and 2.1 have ``AuthorizeRequest.json`` /
``AuthorizeResponse.json`` (2.1's ``NotifyPeriodicEventStream.json``, a SEND with no answer, has
no suffix). 1.6 schemas are draft-04 (the security-extension ones declare nothing and are
treated as draft-04), 2.0.1 and 2.1 schemas are draft-06. ``format: date-time`` is checked
(RFC 3339), other formats are not.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import fastjsonschema
import jsonschema
import jsonschema.protocols
import jsonschema.validators

from ocpp_replay.errors import ConfigError

__all__ = ["VERSIONS", "Violation", "actions", "normalize_version", "validate"]

VERSIONS: Final = ("1.6", "2.0.1", "2.1")

_ALIASES: Final[dict[str, str]] = {
    "1.6": "1.6",
    "16": "1.6",
    "ocpp1.6": "1.6",
    "ocpp1.6j": "1.6",
    "2.0.1": "2.0.1",
    "201": "2.0.1",
    "2.0": "2.0.1",
    "ocpp2.0.1": "2.0.1",
    "ocpp2.0": "2.0.1",
    "2.1": "2.1",
    "21": "2.1",
    "ocpp2.1": "2.1",
}
_PACKAGE_DIR: Final = {"1.6": "v16", "2.0.1": "v201", "2.1": "v21"}

# RFC 3339 date-time, as OCPP uses it (fraction and offset optional in practice: many
# chargers omit the offset; the 1.6 spec text requires UTC but the schema only says date-time).
_DATE_TIME: Final = re.compile(
    r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[Tt ]([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)"
    r"(\.\d+)?([Zz]|[+-]([01]\d|2[0-3]):?[0-5]\d)?$"
)


def _is_date_time(value: object) -> bool:
    return not isinstance(value, str) or _DATE_TIME.match(value) is not None


_FORMAT_CHECKER: Final = jsonschema.FormatChecker(formats=())
_FORMAT_CHECKER.checks("date-time")(_is_date_time)


@dataclass(frozen=True, slots=True)
class Violation:
    """One way a payload breaks its schema.

    ``path`` is JSON-path-ish (``meterValue[0].sampledValue[1].context``), "" for the payload
    itself. ``keyword`` is the schema keyword that failed (``enum``, ``required``, ``type``...),
    "" when the action itself is unknown.
    """

    path: str
    message: str
    keyword: str = ""

    def __str__(self) -> str:
        return f"{self.path or '(payload)'}: {self.message}"


def normalize_version(version: str) -> str:
    """'1.6', '2.0.1' or '2.1' for a version or subprotocol name. Raises ConfigError otherwise."""
    try:
        return _ALIASES[version.strip().lower()]
    except KeyError:
        raise ConfigError(f"unknown OCPP version {version!r} (expected {', '.join(VERSIONS)})") from None


@functools.cache
def _files(version: str, response: bool) -> dict[str, str]:
    """Action -> schema file name, for the requests (or responses) of a version."""
    folder = resources.files("ocpp") / _PACKAGE_DIR[version] / "schemas"
    found: dict[str, str] = {}
    for entry in folder.iterdir():
        name = entry.name
        if not name.endswith(".json"):
            continue
        stem = name.removesuffix(".json")
        if stem.endswith("Response"):
            if response:
                found[stem.removesuffix("Response")] = name
        elif not response:
            found[stem if version == "1.6" else stem.removesuffix("Request")] = name
    return found


@functools.cache
def actions(version: str, *, response: bool = False) -> frozenset[str]:
    """Every action the schemas of a version know, e.g. {'Authorize', 'BootNotification', ...}."""
    return frozenset(_files(normalize_version(version), response))


@functools.cache  # read once, for the compiled check and for jsonschema (which neither changes)
def _schema(version: str, action: str, response: bool) -> dict[str, Any] | None:
    name = _files(version, response).get(action)
    if name is None:
        return None
    path = resources.files("ocpp") / _PACKAGE_DIR[version] / "schemas" / name
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


@functools.cache
def _validator(version: str, action: str, response: bool) -> jsonschema.protocols.Validator | None:
    schema = _schema(version, action, response)
    if schema is None:
        return None
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft4Validator)
    return cls(schema, format_checker=_FORMAT_CHECKER)


_DRAFT4: Final = "http://json-schema.org/draft-04/schema#"


@functools.cache
def _compiled(version: str, action: str, response: bool) -> Callable[[Any], Any] | None:
    """The schema as a Python function that raises on the first violation (fastjsonschema),
    with the formats checked as jsonschema checks them here: date-time, nothing else."""
    schema = _schema(version, action, response)
    if schema is None:
        return None
    schema = {"$schema": _DRAFT4, **schema}  # as validator_for's default (the file's own wins)
    check: Callable[[Any], Any] = fastjsonschema.compile(
        schema, formats={"date-time": _is_date_time, "uri": _anything}, use_default=False
    )
    return check


def _anything(value: object) -> bool:
    return True


def _render(path: Iterable[str | int]) -> str:
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        else:
            out.append(f".{part}" if out else part)
    return "".join(out)


def validate(version: str, action: str, payload: dict[str, Any], *, response: bool) -> list[Violation]:
    """The violations of PAYLOAD against the request (or response) schema of ACTION.

    An empty list means the payload is valid. An action the version does not define gives one
    violation, "unknown action". Raises ConfigError only for an unknown version.
    """
    version = _ALIASES.get(version) or normalize_version(version)
    check = _compiled(version, action, response)
    if check is None:
        return [Violation("", "unknown action")]
    try:
        check(payload)
    except fastjsonschema.JsonSchemaException:
        pass  # invalid: jsonschema lists every violation, with its path
    else:
        return []
    validator = _validator(version, action, response)
    assert validator is not None  # the same file as the compiled check's
    errors = validator.iter_errors(payload)
    found = [Violation(_render(err.absolute_path), err.message, str(err.validator)) for err in errors]
    found.sort(key=lambda v: v.path)
    return found
