"""Scenarios: what a virtual charger does, as steps. Built-in ones and TOML files. Pure.

A scenario has ``setup`` steps (once, after the first boot), ``cycle`` steps (repeated
``cycles`` times) and ``teardown`` steps. A step is a ``do`` verb with parameters and optional
expectations about the backend's answer to the message the step sends. See docs/simulate.md.
"""

from __future__ import annotations

import random
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ocpp_replay.errors import ConfigError

__all__ = ["BUILTIN", "VERBS", "Scenario", "Step", "builtin", "load", "load_file", "resolve"]

#: verb -> parameters it accepts (besides the common ones).
VERBS: Final[Mapping[str, frozenset[str]]] = {
    "wait": frozenset({"seconds", "minutes"}),
    "plug": frozenset({"connector"}),
    "authorize": frozenset({"connector", "id_tag"}),
    "start": frozenset({"connector", "id_tag"}),
    "charge": frozenset({"connector", "seconds", "minutes", "car_max_a"}),
    "suspend": frozenset({"connector", "seconds", "minutes"}),
    "stop": frozenset({"connector", "reason"}),
    "unplug": frozenset({"connector"}),
    "fault": frozenset({"connector", "vendor_error_code", "info", "seconds", "minutes"}),
    "heartbeat": frozenset(),
    "data-transfer": frozenset({"vendor_id", "message_id", "data"}),
    "send": frozenset({"action", "payload"}),
    "offline": frozenset(),
    "online": frozenset(),
    "reboot": frozenset(),
    "await-call": frozenset({"action", "seconds", "minutes"}),
}
_COMMON: Final = frozenset({"do", "version", "expect", "expect_status", "expect_error"})
_STOP_REASONS: Final = frozenset(
    {
        "EmergencyStop",
        "EVDisconnected",
        "HardReset",
        "Local",
        "Other",
        "PowerLoss",
        "Reboot",
        "Remote",
        "SoftReset",
    }
    | {"UnlockCommand", "DeAuthorized"}
)

Duration = float | tuple[float, float]


@dataclass(frozen=True, slots=True)
class Step:
    """One thing a charger does. ``where`` says where it came from, for messages."""

    do: str
    params: Mapping[str, Any] = field(default_factory=dict)
    expect: Mapping[str, Any] = field(default_factory=dict)
    expect_status: str | None = None
    expect_error: str | None = None
    version: str | None = None
    where: str = ""

    @property
    def has_expectation(self) -> bool:
        return bool(self.expect) or self.expect_status is not None or self.expect_error is not None

    def duration(self, rng: random.Random, default: float = 0.0) -> float:
        """Seconds this step lasts; ``[lo, hi]`` ranges are drawn from RNG."""
        for key, factor in (("seconds", 1.0), ("minutes", 60.0)):
            value = self.params.get(key)
            if value is None:
                continue
            if isinstance(value, list | tuple):
                lo, hi = float(value[0]), float(value[1])
                return rng.uniform(lo, hi) * factor
            return float(value) * factor
        return default


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str = ""
    setup: tuple[Step, ...] = ()
    cycle: tuple[Step, ...] = ()
    teardown: tuple[Step, ...] = ()
    connectors: int | None = None


def _step(do: str, **params: Any) -> Step:
    return Step(do, params, where=f"built-in {do}")


_SESSION: Final = (
    _step("wait", minutes=(1, 8)),
    _step("plug"),
    _step("wait", seconds=(5, 20)),
    _step("authorize"),
    _step("start"),
    _step("charge", minutes=(15, 30)),
    _step("suspend", minutes=(2, 6)),
    _step("stop", reason="Local"),
    _step("wait", seconds=(10, 60)),
    _step("unplug"),
    _step("wait", minutes=(1, 4)),
)

_RECONNECT: Final = (
    _step("wait", minutes=(1, 4)),
    _step("plug"),
    _step("authorize"),
    _step("start"),
    _step("charge", minutes=(4, 8)),
    _step("offline"),
    _step("charge", minutes=(5, 10)),
    _step("stop", reason="Local"),
    _step("unplug"),
    _step("wait", minutes=(1, 3)),
    _step("plug"),
    _step("start"),
    _step("charge", minutes=(3, 6)),
    _step("online"),
    _step("charge", minutes=(2, 4)),
    _step("stop", reason="Local"),
    _step("unplug"),
    _step("wait", minutes=(1, 3)),
)

_COMMANDS: Final = (
    _step("wait", minutes=(3, 6)),
    _step("plug"),
    _step("authorize"),
    _step("start"),
    _step("charge", minutes=60),
    _step("unplug"),
    _step("wait", minutes=(3, 6)),
)

_FAULTY: Final = (
    _step("wait", minutes=(1, 5)),
    _step(
        "fault", vendor_error_code="210", info="Modbus TCP/IP lost, in safe mode max 14.0A", minutes=(2, 5)
    ),
    _step("data-transfer", vendor_id="Alfen BV", message_id="SafeModeReport"),
    *_SESSION,
)

BUILTIN: Final[Mapping[str, Scenario]] = {
    "session": Scenario(
        "session",
        "plug in, authorize, charge with periodic meter values, EV suspends, stop, unplug",
        cycle=_SESSION,
    ),
    "reconnect": Scenario(
        "reconnect",
        "a session that loses the connection mid-charge, a second session started offline; "
        "queued messages are delivered on reconnect with their original timestamps",
        cycle=_RECONNECT,
    ),
    "commands": Scenario(
        "commands",
        "idle periods and a long session that the backend may stop remotely; "
        "answers every backend command the way an Alfen does",
        cycle=_COMMANDS,
    ),
    "faulty": Scenario(
        "faulty",
        "a Faulted connector with an Alfen vendor error code, then a normal session",
        cycle=_FAULTY,
    ),
}
#: fleet-day gives charger i the scenario FLEET_DAY_MIX[i % len(FLEET_DAY_MIX)].
FLEET_DAY_MIX: Final = ("session", "reconnect", "session", "commands", "faulty")
SCENARIO_NAMES: Final = (*BUILTIN, "fleet-day")


def builtin(name: str, index: int = 0) -> Scenario:
    """A built-in scenario by name; fleet-day resolves per charger index."""
    if name == "fleet-day":
        return BUILTIN[FLEET_DAY_MIX[index % len(FLEET_DAY_MIX)]]
    try:
        return BUILTIN[name]
    except KeyError:
        raise ConfigError(f"unknown scenario {name!r} (built-in: {', '.join(SCENARIO_NAMES)})") from None


def resolve(name_or_path: str) -> Scenario | None:
    """A scenario file's Scenario, or None when NAME_OR_PATH names a built-in (or fleet-day)."""
    if name_or_path in SCENARIO_NAMES:
        return None
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return load_file(path)
    raise ConfigError(
        f"unknown scenario {name_or_path!r} (built-in: {', '.join(SCENARIO_NAMES)}, or a .toml file)"
    )


def load_file(path: Path) -> Scenario:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read scenario {path}: {exc.strerror or exc}") from exc
    return load(text, source=str(path), default_name=path.stem)


def load(text: str, *, source: str = "<scenario>", default_name: str = "scenario") -> Scenario:
    """Parse a TOML scenario. Raises ConfigError with the step at fault."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    unknown = set(data) - {"name", "description", "connectors", "setup", "cycle", "steps", "teardown"}
    if unknown:
        raise ConfigError(f"{source}: unknown top-level keys {sorted(unknown)}")
    if "steps" in data and "cycle" in data:
        raise ConfigError(f"{source}: use either [[steps]] or [[cycle]], not both")
    connectors = data.get("connectors")
    if connectors is not None and (not isinstance(connectors, int) or not 1 <= connectors <= 2):
        raise ConfigError(f"{source}: connectors must be 1 or 2")
    scenario = Scenario(
        name=str(data.get("name", default_name)),
        description=str(data.get("description", "")),
        setup=_steps(data.get("setup", []), source, "setup"),
        cycle=_steps(
            data.get("cycle", data.get("steps", [])), source, "cycle" if "cycle" in data else "steps"
        ),
        teardown=_steps(data.get("teardown", []), source, "teardown"),
        connectors=connectors,
    )
    if not (scenario.setup or scenario.cycle or scenario.teardown):
        raise ConfigError(f"{source}: the scenario has no steps")
    return scenario


def _steps(raw: object, source: str, section: str) -> tuple[Step, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: {section} must be an array of tables ([[{section}]])")
    return tuple(_parse_step(item, f"{source}: {section} step {i + 1}") for i, item in enumerate(raw))


def _parse_step(item: object, where: str) -> Step:
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: must be a table")
    do = item.get("do")
    if not isinstance(do, str) or do not in VERBS:
        raise ConfigError(f"{where}: 'do' must be one of {', '.join(VERBS)}")
    extra = set(item) - _COMMON - VERBS[do]
    if extra:
        raise ConfigError(f"{where}: {do} does not take {', '.join(sorted(extra))}")
    params = {k: v for k, v in item.items() if k in VERBS[do]}
    for key in ("seconds", "minutes"):
        value = params.get(key)
        ok = value is None or isinstance(value, int | float) or _is_range(value)
        if not ok or (isinstance(value, int | float) and value < 0):
            raise ConfigError(f"{where}: {key} must be a non-negative number or [low, high]")
    if do == "send" and (
        not isinstance(params.get("action"), str) or not isinstance(params.get("payload", {}), dict)
    ):
        raise ConfigError(f'{where}: send needs action = "..." and payload = {{...}}')
    if do == "await-call" and not isinstance(params.get("action"), str):
        raise ConfigError(f'{where}: await-call needs action = "..."')
    if do == "stop" and params.get("reason", "Local") not in _STOP_REASONS:
        raise ConfigError(f"{where}: unknown stop reason {params['reason']!r}")
    connector = params.get("connector", 1)
    if not isinstance(connector, int) or not 1 <= connector <= 2:
        raise ConfigError(f"{where}: connector must be 1 or 2")
    expect = item.get("expect", {})
    if not isinstance(expect, dict):
        raise ConfigError(f"{where}: expect must be a table of path = value")
    version = item.get("version")
    if version is not None and version not in ("1.6", "2.0.1", "2.1"):
        raise ConfigError(f'{where}: version must be "1.6", "2.0.1" or "2.1"')
    return Step(
        do,
        params,
        expect,
        _opt_str(item, "expect_status", where),
        _opt_str(item, "expect_error", where),
        version,
        where,
    )


def _is_range(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int | float) and v >= 0 for v in value)
        and value[0] <= value[1]
    )


def _opt_str(item: Mapping[str, Any], key: str, where: str) -> str | None:
    value = item.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string")
    return value
