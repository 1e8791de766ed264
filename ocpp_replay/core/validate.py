"""Check captured frames against the official OCPP JSON schemas.

Pure apart from what the caller passes in: takes the frames of a session (any iterable of
objects with seq/direction/message_type/action/raw), returns findings. A CALL is checked against
its action's request schema, a CALLRESULT against the response schema of the CALL it answers
(the capture resolves that action when it records the frame). CALLERRORs have no payload schema;
frames that are not OCPP-J are findings of their own.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ocpp_replay.core import schemas
from ocpp_replay.core.frames import Direction, MessageType
from ocpp_replay.core.records import FrameLike, SessionLike
from ocpp_replay.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Finding:
    """One schema violation (or unreadable frame) in a capture."""

    session_id: int
    charge_point_id: str
    seq: int
    side: str  # charger | backend: who sent the frame
    action: str
    message_kind: str  # request | response | frame
    path: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


def side_of(direction: Direction) -> str:
    return "charger" if direction is Direction.TO_CSMS else "backend"


def check_frames(
    session_id: int, charge_point_id: str, version: str, frames: Iterable[FrameLike]
) -> list[Finding]:
    """The findings of one session's frames, in frame order."""
    version = schemas.normalize_version(version)
    found: list[Finding] = []
    for f in frames:
        side = side_of(f.direction)
        if f.parse_error is not None or f.raw is None:
            reason = f.parse_error or "binary frame (OCPP-J uses text frames)"
            found.append(
                Finding(session_id, charge_point_id, f.seq, side, f.action or "?", "frame", "", reason)
            )
            continue
        if f.message_type == MessageType.CALL_ERROR:
            continue
        response = f.message_type == MessageType.CALL_RESULT
        if f.action is None:
            found.append(
                Finding(
                    session_id,
                    charge_point_id,
                    f.seq,
                    side,
                    "?",
                    "response",
                    "",
                    "answers no CALL seen on this connection",
                )
            )
            continue
        data = json.loads(f.raw)  # not orjson: it turns integers beyond 64 bits into floats
        payload = data[2] if response else data[3]
        for v in schemas.validate(version, f.action, payload, response=response):
            found.append(
                Finding(
                    session_id,
                    charge_point_id,
                    f.seq,
                    side,
                    f.action,
                    "response" if response else "request",
                    v.path,
                    v.message,
                )
            )
    return found


def check_sessions(
    sessions: Iterable[tuple[SessionLike, Iterable[FrameLike]]], default_version: str | None = None
) -> tuple[list[Finding], list[str]]:
    """Findings over whole sessions, and the sessions skipped because their version is unknown.

    A session's version comes from its subprotocol, else ``default_version``. Sessions that
    never opened (the upstream refused them) have no frames and are passed over.
    """
    findings: list[Finding] = []
    skipped: list[str] = []
    for info, frames in sessions:
        if info.error:
            continue
        try:
            version = version_of(info.subprotocol, default_version)
        except ConfigError as exc:
            skipped.append(f"session {info.id}: {exc}")
            continue
        findings.extend(check_frames(info.id, info.charge_point_id, version, frames))
    return findings, skipped


def summarize(findings: Iterable[Finding]) -> list[tuple[str, str, str, str, int]]:
    """(side, action, message kind, path, count) rows, most frequent first."""
    counts = Counter((f.side, f.action, f.message_kind, f.path) for f in findings)
    return [(*key, n) for key, n in counts.most_common()]


def version_of(subprotocol: str | None, default: str | None) -> str:
    """The OCPP version of a session from its subprotocol, else the default given by the user."""
    for candidate in (subprotocol, default):
        if candidate:
            try:
                return schemas.normalize_version(candidate)
            except ConfigError:
                continue
    raise ConfigError(
        f"cannot tell the OCPP version of subprotocol {subprotocol!r}: pass --version 1.6 or 2.0.1"
    )
