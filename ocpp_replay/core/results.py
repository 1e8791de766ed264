"""What a run produced: frozen result objects shared by replay, compare and the reports.

Pure. A :class:`RunResult` holds one :class:`SessionResult` per replayed session; each holds
its :class:`~ocpp_replay.core.diff.Difference` records, its per-action counts and the live frames
it exchanged (:class:`LiveFrame`, stored in ``run_frames``). Renderers in
:mod:`ocpp_replay.report` and the store writer read only these objects.

A compare run (``kind == "compare"``) is one RunResult too: each session holds the baseline's
and the candidate's frames (``LiveFrame.side``) and differences of three sides: ``compare``
(the candidate's answers against the baseline's: these decide the exit status), ``baseline``
and ``candidate`` (each against the recording). ``noise`` lists the fields learned as noise.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ocpp_replay.core.correlate import utc_seconds
from ocpp_replay.core.diff import INFORMATIONAL, Difference, DiffKind

__all__ = [
    "COMPARE_SIDE",
    "NOISE_FACTOR",
    "ActionStats",
    "LiveFrame",
    "NoiseField",
    "RunResult",
    "SessionResult",
    "Timing",
    "percentile",
]

#: The side of a compare run's candidate-against-baseline differences.
COMPARE_SIDE = "compare"
#: A noisy field is still reported when it differs between baseline and candidate more than
#: this many times as often (as a rate) as between baseline runs (see docs/compare.md).
NOISE_FACTOR = 2.0


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank of sorted ``values``; 0.0 when empty."""
    if not values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(values)))
    return values[min(rank, len(values)) - 1]


@dataclass(frozen=True, slots=True)
class Timing:
    """Scheduling lateness of the frames sent, and the time frames were held for causality.

    Lateness is the scheduler's own delay: send time minus the time the frame was free to go
    (its deadline, or later when it was held). Held time is how long past its deadline a frame
    waited for an answer, a backend call or the frame before it (``held`` frames had to).
    """

    frames: int = 0
    p50: float = 0.0
    p99: float = 0.0
    max: float = 0.0
    held: int = 0  # frames that had to wait for an answer or a backend call past their deadline
    held_p50: float = 0.0  # over the held frames only
    held_max: float = 0.0
    held_total: float = 0.0

    @classmethod
    def of(cls, lateness: Iterable[float], held: int = 0, held_seconds: Iterable[float] = ()) -> Timing:
        values = sorted(lateness)
        holds = sorted(h for h in held_seconds if h > 0)
        hold = (percentile(holds, 50), holds[-1], sum(holds)) if holds else (0.0, 0.0, 0.0)
        if not values:
            return cls(0, 0.0, 0.0, 0.0, held, *hold)
        return cls(len(values), percentile(values, 50), percentile(values, 99), values[-1], held, *hold)

    def as_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "lateness_ms": {
                "p50": round(self.p50 * 1000, 3),
                "p99": round(self.p99 * 1000, 3),
                "max": round(self.max * 1000, 3),
            },
            "held_frames": self.held,
            "held_ms": {
                "p50": round(self.held_p50 * 1000, 3),
                "max": round(self.held_max * 1000, 3),
                "total": round(self.held_total * 1000, 3),
            },
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
    lateness: float | None = None  # scheduled frames only: send time minus the time it was free to go
    side: str = "target"  # target (replay) | baseline | candidate (compare)
    held: float | None = None  # scheduled frames only: seconds held past the deadline (0: not held)


@dataclass(frozen=True, slots=True)
class ActionStats:
    messages: int = 0  # messages of this action compared (answers and backend calls)
    diffs: int = 0


@dataclass(frozen=True, slots=True)
class NoiseField:
    """A field that differed between runs against the baseline: noise, for one message kind.

    ``baseline_diffs`` of ``baseline_compared`` messages of this action differed at this path
    between baseline runs; ``candidate_diffs`` of ``candidate_compared`` between baseline and
    candidate. ``reported``: it differs so much more often against the candidate (more than
    :data:`NOISE_FACTOR` times the baseline rate) that it is reported all the same.
    """

    version: str | None
    action: str
    message: str  # request (a backend CALL) | response (an answer of the backend)
    path: str
    baseline_diffs: int
    baseline_compared: int
    candidate_diffs: int = 0
    candidate_compared: int = 0

    @property
    def baseline_rate(self) -> float:
        return self.baseline_diffs / self.baseline_compared if self.baseline_compared else 0.0

    @property
    def candidate_rate(self) -> float:
        return self.candidate_diffs / self.candidate_compared if self.candidate_compared else 0.0

    @property
    def reported(self) -> bool:
        return self.candidate_diffs > 0 and self.candidate_rate > NOISE_FACTOR * self.baseline_rate

    def as_dict(self) -> dict[str, Any]:
        return {
            "ocpp": self.version,
            "action": self.action,
            "message": self.message,
            "path": self.path,
            "baseline_diffs": self.baseline_diffs,
            "baseline_compared": self.baseline_compared,
            "candidate_diffs": self.candidate_diffs,
            "candidate_compared": self.candidate_compared,
            "reported": self.reported,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NoiseField:
        return cls(
            d.get("ocpp"),
            str(d["action"]),
            str(d["message"]),
            str(d["path"]),
            int(d["baseline_diffs"]),
            int(d["baseline_compared"]),
            int(d.get("candidate_diffs", 0)),
            int(d.get("candidate_compared", 0)),
        )


def handshake_summary(sessions: Iterable[SessionResult]) -> dict[str, Any]:
    """Handshake times of a run, apart from lateness: p50/p99/max in ms over the sessions that
    dialled, and how many connected only after their recorded start (their first frames could
    not be on time)."""
    times = sorted(s.handshake for s in sessions if s.handshake is not None)
    late = sorted(s.connected_at for s in sessions if s.connected_at is not None and s.connected_at > 0)
    if not times:
        return {"sessions": 0}
    return {
        "sessions": len(times),
        "p50_ms": round(percentile(times, 50) * 1000, 3),
        "p99_ms": round(percentile(times, 99) * 1000, 3),
        "max_ms": round(times[-1] * 1000, 3),
        "connected_after_start": len(late),
        "after_start_max_ms": round(late[-1] * 1000, 3) if late else 0.0,
    }


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
    held_seconds: tuple[float, ...] = ()  # how long each held frame was held
    handshake: float | None = None  # seconds from dialling to the 101 (or the failure)
    connected_at: float | None = None  # seconds after the session's recorded start (negative: ahead)
    #: frames already written to the stored run as the session finished, and not held here
    #: (replay/runner.ResultSpool); ``frames`` holds the rest
    frames_stored: int = 0

    @property
    def duration(self) -> float | None:
        """Seconds from the session's start to its end (None when either is unknown)."""
        if not self.started_at or not self.ended_at:
            return None
        try:
            return max(0.0, utc_seconds(self.ended_at) - utc_seconds(self.started_at))
        except ValueError:
            return None

    @property
    def messages(self) -> int:
        return len(self.frames) + self.frames_stored

    def on(self, side: str) -> tuple[Difference, ...]:
        """The differences of one side (target, compare, baseline, candidate)."""
        return tuple(d for d in self.differences if d.side == side)

    def frames_of(self, side: str) -> tuple[LiveFrame, ...]:
        return tuple(f for f in self.frames if f.side == side)


@dataclass(frozen=True, slots=True)
class RunResult:
    target: str
    started_at: str
    ended_at: str
    sessions: tuple[SessionResult, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    kind: str = "replay"
    run_id: int | None = None
    baseline: str | None = None  # compare runs: the baseline's URL (target is the candidate's)
    noise: tuple[NoiseField, ...] = ()

    @property
    def candidate(self) -> str | None:
        return self.target if self.kind == "compare" else None

    @property
    def side(self) -> str:
        """The side whose differences decide the result: ``compare`` or ``target``."""
        return COMPARE_SIDE if self.kind == "compare" else "target"

    @property
    def differences(self) -> tuple[Difference, ...]:
        """Every difference of every side."""
        return tuple(d for s in self.sessions for d in s.differences)

    def decides(self, d: Difference) -> bool:
        """Whether a difference of the deciding side counts in the exit status: information
        (an optional call that did not come; a call after the recorded end, unless the run was
        made with ``strict_end``) does not."""
        if d.kind not in INFORMATIONAL:
            return True
        return d.kind is DiffKind.CALL_AFTER_END and bool(self.options.get("strict_end"))

    def deciding(self, s: SessionResult) -> tuple[Difference, ...]:
        """The differences of one session that count in the exit status."""
        return tuple(d for d in s.on(self.side) if self.decides(d))

    def informing(self, s: SessionResult) -> tuple[Difference, ...]:
        """The findings of one session that are information only (see :meth:`decides`)."""
        return tuple(d for d in s.on(self.side) if not self.decides(d))

    @property
    def gating(self) -> tuple[Difference, ...]:
        """The differences that decide the exit status (the candidate's, when comparing)."""
        side = self.side
        return tuple(d for s in self.sessions for d in s.differences if d.side == side and self.decides(d))

    @property
    def information(self) -> tuple[Difference, ...]:
        """Findings of the deciding side that do not decide the exit status (see :meth:`decides`)."""
        side = self.side
        return tuple(
            d for s in self.sessions for d in s.differences if d.side == side and not self.decides(d)
        )

    @property
    def messages(self) -> int:
        return sum(s.messages for s in self.sessions)

    @property
    def timing(self) -> Timing:
        return Timing.of(
            (x for s in self.sessions for x in s.lateness),
            held=sum(s.held for s in self.sessions),
            held_seconds=(h for s in self.sessions for h in s.held_seconds),
        )

    @property
    def interrupted(self) -> Mapping[str, int] | None:
        """``{"finished": k, "planned": m}`` for a run stopped by the user (Ctrl-C), else None."""
        value = self.options.get("interrupted")
        return value if isinstance(value, Mapping) else None

    @property
    def exit_code(self) -> int:
        """0 no (deciding) difference, 1 differences, 130 stopped by the user (as after SIGINT)."""
        if self.interrupted:
            return 130
        return 1 if self.gating else 0

    def by_action(self) -> dict[str, ActionStats]:
        """Messages compared and (deciding) differences per action (None action shown as '-')."""
        messages: Counter[str] = Counter()
        diffs: Counter[str] = Counter()
        for s in self.sessions:
            messages.update(s.compared)
        diffs.update(d.action or "-" for d in self.gating)
        return {a: ActionStats(messages[a], diffs[a]) for a in sorted(set(messages) | set(diffs))}

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sessions": len(self.sessions),
            "messages": self.messages,
            "diffs": len(self.gating),
            "timing": self.timing.as_dict(),
        }
        information = self.information
        if information:
            out["information"] = dict(Counter(str(d.kind) for d in information))
        if self.interrupted:
            out["interrupted"] = dict(self.interrupted)
        if self.kind == "compare":
            out["kind"] = "compare"
            out["baseline"] = self.baseline
            out["candidate"] = self.candidate
            out["vs_recording"] = {
                side: sum(1 for d in self.differences if d.side == side) for side in ("baseline", "candidate")
            }
            out["noise_fields"] = len(self.noise)
        return out

    def with_run_id(self, run_id: int) -> RunResult:
        return replace(self, run_id=run_id)
