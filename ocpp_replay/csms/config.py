"""Configuration and profiles of the reference CSMS. Pure."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from ocpp_replay.errors import ConfigError

__all__ = [
    "DEFAULT_ID_TAGS",
    "PROFILES",
    "V2_BLOCKED_ID_TAG",
    "CsmsConfig",
    "Profile",
]

#: The RFID cards the reference CSMS knows by default; the virtual chargers tap these.
DEFAULT_ID_TAGS: Final = ("ACE0177305", "04A1B2C3D4E5F6", "04E5F6A7B8C9D0", "04F1E2D3C4B5A6")
#: The card the v2 profile blocks although v1 accepts it.
V2_BLOCKED_ID_TAG: Final = "04E5F6A7B8C9D0"


@dataclass(frozen=True, slots=True)
class Profile:
    """A backend release: what differs between v1 and v2 of the reference CSMS."""

    name: str
    heartbeat_interval: int
    blocked_id_tags: frozenset[str]
    description: str


PROFILES: Final[Mapping[str, Profile]] = {
    "v1": Profile("v1", 300, frozenset(), "heartbeat 300 s, every known card accepted"),
    "v2": Profile(
        "v2",
        900,
        frozenset({V2_BLOCKED_ID_TAG}),
        f"heartbeat 900 s, card {V2_BLOCKED_ID_TAG} blocked",
    ),
}


@dataclass(frozen=True, slots=True)
class CsmsConfig:
    """What the reference CSMS does. Every field has a default that works out of the box.

    ``remote_stop_after`` maps charger-id patterns (fnmatch, e.g. ``"ALF-*"``) to N: the CSMS
    stops a transaction of a matching charger right after its Nth meter-value report.
    ``exercise`` is a charger-id pattern: matching chargers get a tour of backend commands once,
    after their first accepted boot (configuration, trigger, charging profiles, availability,
    unlock, data transfer, and last a reset).
    """

    profile: str = "v1"
    heartbeat_interval: int | None = None
    id_tags: frozenset[str] = frozenset(DEFAULT_ID_TAGS)
    blocked_id_tags: frozenset[str] = frozenset()
    tx_id_base: int | None = None
    get_configuration_on_boot: bool = True
    remote_stop_after: Mapping[str, int] = field(default_factory=dict)
    exercise: str | None = None
    strict: bool = False
    password: str | None = None
    call_timeout: float = 30.0
    max_meter_values: int = 10_000

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ConfigError(
                f"unknown CSMS profile {self.profile!r} (expected one of {', '.join(PROFILES)})"
            )
        for pattern, n in self.remote_stop_after.items():
            if n < 1:
                raise ConfigError(f"remote_stop_after[{pattern!r}] must be at least 1, not {n}")

    @property
    def profile_info(self) -> Profile:
        return PROFILES[self.profile]

    @property
    def interval(self) -> int:
        """The heartbeat interval the CSMS hands out in BootNotification."""
        if self.heartbeat_interval is not None:
            return self.heartbeat_interval
        return self.profile_info.heartbeat_interval

    def id_tag_status(self, id_tag: str) -> str:
        """'Accepted', 'Blocked' or 'Invalid' for a card."""
        if id_tag in self.blocked_id_tags or id_tag in self.profile_info.blocked_id_tags:
            return "Blocked"
        return "Accepted" if id_tag in self.id_tags else "Invalid"

    def remote_stop_threshold(self, charger_id: str) -> int | None:
        for pattern, n in self.remote_stop_after.items():
            if fnmatch.fnmatchcase(charger_id, pattern):
                return n
        return None

    def exercises(self, charger_id: str) -> bool:
        return self.exercise is not None and fnmatch.fnmatchcase(charger_id, self.exercise)
