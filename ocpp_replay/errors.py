"""The exceptions ocpp-replay raises.

Traffic problems (CALLERRORs, differences, frames that are not OCPP-J) are data, not
exceptions. Exceptions are for things a user must fix::

    OcppReplayError                 base; the CLI prints its message on one line, exit 2
    ├── InvalidFrame                a text frame is not an OCPP-J CALL/CALLRESULT/CALLERROR
    ├── CaptureError                the capture database cannot be opened, read or written
    │   ├── CaptureNotFound         no file at that path
    │   └── UnknownSession          no session with that id
    ├── UpstreamError               the CSMS / target cannot be reached at start-up
    ├── ConfigError                 bad option, rules file, scenario file or auth file
    └── ReplayError                 a replay cannot start or continue
"""

from __future__ import annotations


class OcppReplayError(Exception):
    """Base class of every error ocpp-replay raises on purpose."""


class InvalidFrame(OcppReplayError):
    """A websocket text frame that is not an OCPP-J message."""

    def __init__(self, raw: str, reason: str) -> None:
        super().__init__(reason)
        self.raw = raw
        self.reason = reason


class CaptureError(OcppReplayError):
    """The capture database cannot be opened, read or written."""


class CaptureNotFound(CaptureError):
    """There is no capture database at the given path."""


class UnknownSession(CaptureError):
    """The capture has no session with the given id."""


class UpstreamError(OcppReplayError):
    """The upstream CSMS (or replay target) cannot be reached."""


class ConfigError(OcppReplayError):
    """An option, rules file, scenario file or auth file is invalid."""


class ReplayError(OcppReplayError):
    """A replay cannot start or continue."""
