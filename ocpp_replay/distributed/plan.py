"""The distributed replay's plan: split charge points over workers, messages, merge (pure).

A worker gets whole charge points: every session of a charger, in the recorded order, so that
reconnects never overlap and ids the backend assigns stay in one correlator. Charge points are
dealt out largest first to the least loaded worker (by frames), which keeps the shares even.

Jobs (master to worker) and results (worker to master) travel as pickles of our own frozen
dataclasses; :func:`loads` refuses any class outside ``ocpp_replay`` and a few builtins, so a
message cannot make the receiver run code. The master and its workers are still one
deployment on one trusted network, as Locust's own protocol (unauthenticated) requires.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ocpp_replay.core.diff import INFORMATIONAL
from ocpp_replay.core.results import LiveFrame, RunResult, SessionResult
from ocpp_replay.errors import OcppReplayError
from ocpp_replay.store import FrameRecord, SessionInfo

__all__ = [
    "Exchange",
    "FleetJob",
    "Job",
    "Share",
    "dumps",
    "exchanges",
    "loads",
    "merge_results",
    "split",
    "split_fleet",
]

Loaded = Sequence[tuple[SessionInfo, Sequence[FrameRecord]]]


class MessageError(OcppReplayError):
    """A distributed message that is not one of ours."""


@dataclass(frozen=True, slots=True)
class Share:
    """The charge points one worker replays, with their sessions in recorded order."""

    charge_points: tuple[str, ...]
    sessions: tuple[tuple[SessionInfo, tuple[FrameRecord, ...]], ...]

    @property
    def frames(self) -> int:
        return sum(len(frames) for _, frames in self.sessions)


@dataclass(frozen=True, slots=True)
class Job:
    """What the master sends a worker: its share and the replay's options (run_replay keywords)."""

    capture: str  # the master's capture path, for messages only
    target: str
    share: Share
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FleetJob:
    """Simulate mode: ``chargers`` virtual chargers named ``id_prefix`` + number, and the
    keywords of :func:`ocpp_replay.simulate.runner.run_fleet` (version, scenario, time_scale...)."""

    target: str
    chargers: int
    id_prefix: str
    options: Mapping[str, Any] = field(default_factory=dict)


def split_fleet(chargers: int, workers: int, id_prefix: str) -> list[tuple[int, str]]:
    """(chargers, id prefix) per worker: as even as can be, each worker its own prefix
    (``ALF-w1-0001``...) so that no two workers build a charger of the same id."""
    if workers < 1:
        raise ValueError("at least one worker")
    base, extra = divmod(chargers, workers)
    return [(base + (i < extra), f"{id_prefix}w{i + 1}-") for i in range(workers)]


def split(sessions: Loaded, workers: int) -> list[Share]:
    """Deal the charge points of ``sessions`` out to ``workers`` shares, a charger never split.

    Largest charger first to the share with the fewest frames; ties to the lower index. Within a
    share, sessions keep the order they were given in (the recorded order).
    """
    if workers < 1:
        raise ValueError("at least one worker")
    by_cp: dict[str, list[tuple[SessionInfo, tuple[FrameRecord, ...]]]] = {}
    for info, frames in sessions:
        by_cp.setdefault(info.charge_point_id, []).append((info, tuple(frames)))
    weight = {cp: sum(len(f) for _, f in items) for cp, items in by_cp.items()}
    load = [0] * workers
    owner: dict[str, int] = {}
    for cp in sorted(by_cp, key=lambda c: (-weight[c], c)):
        i = min(range(workers), key=lambda w: (load[w], w))
        owner[cp] = i
        load[i] += weight[cp] or 1
    shares = []
    for i in range(workers):
        cps = tuple(cp for cp in by_cp if owner[cp] == i)
        mine = tuple(
            item
            for item in ((info, tuple(frames)) for info, frames in sessions)
            if owner[item[0].charge_point_id] == i
        )
        shares.append(Share(cps, mine))
    return shares


def merge_results(
    parts: Sequence[RunResult],
    *,
    target: str,
    started_at: str,
    ended_at: str,
    order: Sequence[int],
    options: Mapping[str, Any],
    missing: Mapping[str, Sequence[str]] | None = None,
) -> RunResult:
    """One run of the workers' results, sessions in ``order`` (the capture's session ids).

    ``missing`` maps a lost worker to the charge points it did not finish: the run is then
    ``incomplete`` (stored with the sessions that did finish, the missing chargers named) and
    ``interrupted`` (finished of planned sessions, as a run stopped by the user).
    """
    by_id: dict[int, SessionResult] = {}
    for part in parts:
        for s in part.sessions:
            if s.session_id in by_id:
                raise MessageError(f"session {s.session_id} came back from two workers")
            by_id[s.session_id] = s
    sessions = tuple(by_id[i] for i in order if i in by_id)
    opts: dict[str, Any] = dict(options)
    rewritten = [r for part in parts for r in part.options.get("rewritten", ())]
    if rewritten:
        opts["rewritten"] = rewritten
    opts["distributed"] = {"workers": len(parts) + len(missing or {})}
    lost = sorted({cp for cps in (missing or {}).values() for cp in cps})
    if lost:
        opts["incomplete"] = {"missing_charge_points": lost, "lost_workers": sorted(missing or {})}
        opts["interrupted"] = {"finished": len(sessions), "planned": len(order)}
    return RunResult(target=target, started_at=started_at, ended_at=ended_at, sessions=sessions, options=opts)


# ----------------------------------------------------------------------------- the lines


@dataclass(frozen=True, slots=True)
class Exchange:
    """One OCPP exchange for Locust's statistics: a CALL and its answer, as one request.

    ``kind`` is ``OCPP`` for the charger's calls (the round trip is the backend's answer time)
    and ``OCPP CSMS`` for the backend's calls (the round trip is the replayed charger's answer).
    ``error`` is the CALLERROR code, or the first difference about this exchange, or a call
    that got no answer; None for a clean exchange.
    """

    kind: str
    action: str
    rtt_ms: float
    size: int
    error: str | None


def exchanges(session: SessionResult) -> list[Exchange]:
    """The exchanges of a finished session, in the order their CALLs went out."""
    by_seq: dict[int, str] = {}
    by_action: dict[str, str] = {}  # differences about no recorded frame: the action's first
    for d in session.differences:
        if d.kind in INFORMATIONAL or d.side != "target":
            continue
        text = f"{d.kind} {d.path}".strip()
        if d.seq is not None:
            by_seq.setdefault(d.seq, text)
        elif d.action is not None:
            by_action.setdefault(d.action, text)
    open_calls: dict[tuple[str, str], LiveFrame] = {}
    out: list[Exchange] = []
    for f in session.frames:
        if f.message_type == 2 and f.unique_id is not None:
            open_calls[(f.direction, f.unique_id)] = f
        elif f.message_type in (3, 4) and f.unique_id is not None:
            call_dir = "to_cp" if f.direction == "to_csms" else "to_csms"
            call = open_calls.pop((call_dir, f.unique_id), None)
            if call is None:
                continue
            action = call.action or "-"
            error: str | None
            if f.message_type == 4:
                error = f"CALLERROR {_error_code(f.raw)}"
            else:
                seqs = (call.recorded_seq, f.recorded_seq)
                error = next((by_seq[q] for q in seqs if q is not None and q in by_seq), None)
                if error is None:
                    error = by_action.pop(action, None)
            rtt = max(0.0, (f.elapsed - call.elapsed) * 1000)
            out.append(Exchange(_kind(call_dir), action, rtt, len(call.raw) + len(f.raw), error))
    for (direction, _), call in open_calls.items():
        out.append(Exchange(_kind(direction), call.action or "-", 0.0, len(call.raw), "no answer"))
    return out


def _kind(call_direction: str) -> str:
    return "OCPP" if call_direction == "to_csms" else "OCPP CSMS"


def _error_code(raw: str) -> str:
    try:
        value = json.loads(raw)
        return str(value[2])
    except (ValueError, IndexError, TypeError):
        return "?"


# ----------------------------------------------------------------------------- pickles

_BUILTINS = frozenset({"frozenset", "set", "tuple", "list", "dict", "int", "float", "str", "bytes", "bool"})


class _OursOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "ocpp_replay" or module.startswith("ocpp_replay."):
            return super().find_class(module, name)
        if module == "builtins" and name in _BUILTINS:
            return super().find_class(module, name)
        if module == "copyreg" and name == "_reconstructor":
            return super().find_class(module, name)
        raise MessageError(f"a distributed message holds {module}.{name}, which is not one of ours")


def dumps(obj: Job | FleetJob | RunResult) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def loads(data: bytes) -> Any:
    """A :class:`Job` or :class:`RunResult` from :func:`dumps`; MessageError for anything else."""
    try:
        return _OursOnly(io.BytesIO(data)).load()
    except MessageError:
        raise
    except Exception as exc:
        raise MessageError(f"a distributed message that does not load: {exc}") from exc
