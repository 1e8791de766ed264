"""What a run produced: frozen result objects shared by replay, compare and the reports.

Pure. A :class:`RunResult` holds one :class:`SessionResult` per replayed session; each holds
its :class:`~ocpp_replay.diff.Difference` records, its per-action counts and the live frames
it exchanged (:class:`LiveFrame`, stored in ``run_frames``). Renderers in
:mod:`ocpp_replay.report` and the store writer read only these objects.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ocpp_replay.diff import Difference

__all__ = ["ActionStats", "LiveFrame", "RunResult", "SessionResult", "Timing", "percentile"]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank of sorted ``values``; 0.0 when empty."""
    if not values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(values)))
    return values[min(rank, len(values)) - 1]


@dataclass(frozen=True, slots=True)
class Timing:
    """Scheduling lateness of the frames sent (seconds after their deadline)."""

    frames: int = 0
    p50: float = 0.0
    p99: float = 0.0
    max: float = 0.0
    held: int = 0  # frames that had to wait for an answer or a backend call past their deadline

    @classmethod
    def of(cls, lateness: Iterable[float], held: int = 0) -> Timing:
        values = sorted(lateness)
        if not values:
            return cls(held=held)
        return cls(len(values), percentile(values, 50), percentile(values, 99), values[-1], held)

    def as_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "lateness_ms": {
                "p50": round(self.p50 * 1000, 3),
                "p99": round(self.p99 * 1000, 3),
                "max": round(self.max * 1000, 3),
            },
            "held_frames": self.held,
        }


@dataclass(frozen=True, slots=True)
class LiveFrame:
    """A frame exchanged with the live backend during a run."""

    seq: int
    recorded_seq: int | None
    timestamp: str  # wall clock, ISO 8601 UTC
    elapsed: float  # seconds after the session's connection was opened
    direction: str  # to_csms | to_cp
    message_type: int | None
    unique_id: str | None
    action: str | None
    raw: str
    lateness: float | None = None  # scheduled frames only


@dataclass(frozen=True, slots=True)
class ActionStats:
    messages: int = 0  # messages of this action compared (answers and backend calls)
    diffs: int = 0


@dataclass(frozen=True, slots=True)
class SessionResult:
    session_id: int
    charge_point_id: str
    subprotocol: str | None
    started_at: str | None
    ended_at: str | None
    differences: tuple[Difference, ...]
    compared: Mapping[str, int]  # action -> messages compared
    frames: tuple[LiveFrame, ...] = ()
    lateness: tuple[float, ...] = ()
    held: int = 0
    error: str | None = None  # a problem that ended the session early (also a difference)
    close_code: int | None = None

    @property
    def messages(self) -> int:
        return len(self.frames)

    @property
    def passed(self) -> bool:
        return not self.differences


@dataclass(frozen=True, slots=True)
class RunResult:
    target: str
    started_at: str
    ended_at: str
    sessions: tuple[SessionResult, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    kind: str = "replay"
    run_id: int | None = None

    @property
    def differences(self) -> tuple[Difference, ...]:
        return tuple(d for s in self.sessions for d in s.differences)

    @property
    def messages(self) -> int:
        return sum(s.messages for s in self.sessions)

    @property
    def timing(self) -> Timing:
        return Timing.of(
            (x for s in self.sessions for x in s.lateness), held=sum(s.held for s in self.sessions)
        )

    @property
    def exit_code(self) -> int:
        return 1 if any(s.differences for s in self.sessions) else 0

    def by_action(self) -> dict[str, ActionStats]:
        """Messages compared and differences per action (None action shown as '-')."""
        messages: Counter[str] = Counter()
        diffs: Counter[str] = Counter()
        for s in self.sessions:
            messages.update(s.compared)
            diffs.update(d.action or "-" for d in s.differences)
        return {a: ActionStats(messages[a], diffs[a]) for a in sorted(set(messages) | set(diffs))}

    def summary(self) -> dict[str, Any]:
        return {
            "sessions": len(self.sessions),
            "messages": self.messages,
            "diffs": len(self.differences),
            "timing": self.timing.as_dict(),
        }

    def with_run_id(self, run_id: int) -> RunResult:
        return RunResult(
            self.target, self.started_at, self.ended_at, self.sessions, self.options, self.kind, run_id
        )
