"""The reference CSMS: a small but real OCPP 1.6 / 2.0.1 / 2.1 backend (see docs/csms.md).

``core`` holds the OCPP logic without sockets; ``server`` puts it on aiohttp.
"""

from __future__ import annotations

from ocpp_replay.csms.config import DEFAULT_ID_TAGS, PROFILES, V2_BLOCKED_ID_TAG, CsmsConfig, Profile
from ocpp_replay.csms.core import COMMANDS, Backend, ChargerSession, Command, Handled
from ocpp_replay.csms.server import SUBPROTOCOLS, CommandFailed, ReferenceCsms, run_csms, serve_forever

__all__ = [
    "COMMANDS",
    "DEFAULT_ID_TAGS",
    "PROFILES",
    "SUBPROTOCOLS",
    "V2_BLOCKED_ID_TAG",
    "Backend",
    "ChargerSession",
    "Command",
    "CommandFailed",
    "CsmsConfig",
    "Handled",
    "Profile",
    "ReferenceCsms",
    "run_csms",
    "serve_forever",
]
