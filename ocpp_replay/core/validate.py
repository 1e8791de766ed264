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
from dataclasses import dataclass, field
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
    message_kind: str  # request | response | send (2.1) | frame
    path: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


def side_of(direction: Direction) -> str:
    return "charger" if direction is Direction.TO_CSMS else "backend"


@dataclass(slots=True)
class Tally:
    """What a check covered: frames checked against a schema and frames that could not be."""

    frames: int = 0  # every frame looked at
    checked: int = 0  # CALLs and CALLRESULTs validated against their schema
    call_errors: int = 0  # CALLERRORs: no payload schema to check against


def check_frames(
    session_id: int,
    charge_point_id: str,
    version: str,
    frames: Iterable[FrameLike],
    tally: Tally | None = None,
) -> list[Finding]:
    """The findings of one session's frames, in frame order; TALLY, if given, counts them."""
    version = schemas.normalize_version(version)
    tally = tally if tally is not None else Tally()
    found: list[Finding] = []
    for f in frames:
        tally.frames += 1
        side = side_of(f.direction)
        if f.parse_error is not None and version == "2.1" and f.raw is not None:
            frame_21 = _frame_21(f.raw)
            if frame_21 is not None:
                action, payload = frame_21
                if action is None:  # a CALLRESULTERROR: no payload schema, as a CALLERROR
                    tally.call_errors += 1
                    continue
                tally.checked += 1
                for v in schemas.validate(version, action, payload, response=False):
                    found.append(
                        Finding(session_id, charge_point_id, f.seq, side, action, "send", v.path, v.message)
                    )
                continue
        if f.parse_error is not None or f.raw is None:
            reason = f.parse_error or "binary frame (OCPP-J uses text frames)"
            found.append(
                Finding(session_id, charge_point_id, f.seq, side, f.action or "?", "frame", "", reason)
            )
            continue
        if f.message_type == MessageType.CALL_ERROR:
            tally.call_errors += 1
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
        tally.checked += 1
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


def _frame_21(raw: str) -> tuple[str | None, dict[str, Any]] | None:
    """2.1's two new message types, which the capture records as not OCPP-J: a SEND
    ``[6, id, action, payload]`` gives (action, payload), a CALLRESULTERROR
    ``[5, id, code, description, details]`` gives (None, details). None for anything else."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if type(data) is not list or not data or type(data[0]) is not int:  # 6.0 is not a SEND
        return None
    match data:
        case [6, str(), str(action), dict(payload)]:
            return action, payload
        case [5, str(), str(), str(), dict(details)]:
            return None, details
    return None


@dataclass(frozen=True, slots=True)
class Skipped:
    """A session that was not checked, and why."""

    session_id: int
    charge_point_id: str
    subprotocol: str | None
    frames: int
    reason: str

    def __str__(self) -> str:
        return f"session {self.session_id}: {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(slots=True)
class Report:
    """The outcome of checking a capture: findings, and what was and was not checked."""

    findings: list[Finding] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    sessions: int = 0  # sessions checked
    unopened: int = 0  # sessions the upstream refused: no frames, nothing to check
    versions: Counter[str] = field(default_factory=Counter)  # sessions checked, by version
    tally: Tally = field(default_factory=Tally)

    @property
    def skipped_frames(self) -> int:
        return sum(s.frames for s in self.skipped)

    def exit_code(self, *, allow_skip: bool = False) -> int:
        """1: violations. 2: a session skipped (unless ALLOW_SKIP) or no frame checked at all.
        0: frames were checked and every one is valid."""
        if self.findings:
            return 1
        if self.skipped and not allow_skip:
            return 2
        return 0 if self.tally.checked else 2

    def summary(self) -> dict[str, Any]:
        return {
            "sessions_checked": self.sessions,
            "frames": self.tally.frames,
            "frames_checked": self.tally.checked,
            "call_errors": self.tally.call_errors,
            "versions": dict(sorted(self.versions.items())),
            "sessions_skipped": len(self.skipped),
            "frames_skipped": self.skipped_frames,
            "sessions_unopened": self.unopened,
            "violations": len(self.findings),
        }

    def summary_line(self) -> str:
        """One line: what was checked, what was skipped, the verdict."""
        t = self.tally
        versions = ", ".join(f"OCPP {v}: {n}" for v, n in sorted(self.versions.items()))
        line = (
            f"checked {t.checked} frame{'s' if t.checked != 1 else ''} of {self.sessions} "
            f"session{'s' if self.sessions != 1 else ''}"
            + (f" ({versions})" if versions else "")
            + (
                f", {t.call_errors} CALLERROR{'s' if t.call_errors != 1 else ''} without a schema"
                if t.call_errors
                else ""
            )
        )
        if self.skipped:
            n = len(self.skipped)
            line += (
                f"; skipped {n} session{'s' if n != 1 else ''} "
                f"({self.skipped_frames} frame{'s' if self.skipped_frames != 1 else ''} not checked)"
            )
        return line


def check_sessions(
    sessions: Iterable[tuple[SessionLike, Iterable[FrameLike]]], default_version: str | None = None
) -> Report:
    """Check whole sessions: findings, and how many sessions and frames were checked or skipped.

    A session's version comes from its subprotocol, else ``default_version``. A session whose
    version cannot be told is skipped, never silently: it is listed with its frame count.
    Sessions that never opened (the upstream refused them) have no frames and are counted apart.
    Raises ConfigError for an unknown ``default_version``.
    """
    if default_version is not None:
        default_version = schemas.normalize_version(default_version)
    report = Report()
    for info, frames in sessions:
        if info.error:
            report.unopened += 1
            continue
        try:
            version = version_of(info.subprotocol, default_version)
        except ConfigError as exc:
            count = sum(1 for _ in frames)
            report.skipped.append(Skipped(info.id, info.charge_point_id, info.subprotocol, count, str(exc)))
            continue
        report.sessions += 1
        report.versions[version] += 1
        report.findings.extend(check_frames(info.id, info.charge_point_id, version, frames, report.tally))
    return report


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
    shown = "no subprotocol" if not subprotocol else f"subprotocol {subprotocol!r}"
    raise ConfigError(
        f"cannot tell the OCPP version of a session with {shown}: "
        f"pass --version {', '.join(schemas.VERSIONS[:-1])} or {schemas.VERSIONS[-1]}"
    )
