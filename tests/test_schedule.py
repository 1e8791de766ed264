"""The replay timeline (pure): offsets, speed, gap caps, causal waits, sessions in order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from ocpp_replay.core.frames import Call, CallError, CallResult, Direction
from ocpp_replay.core.schedule import Timeline, plan_sessions
from ocpp_replay.errors import ReplayError

T0 = "2026-11-25T10:00:00.000000Z"


@dataclass(frozen=True)
class S:
    id: int
    charge_point_id: str = "CP-1"
    subprotocol: str | None = "ocpp1.6"
    query: str | None = None
    path_suffix: str | None = None
    auth_user: str | None = None
    started_at: str = T0
    ended_at: str | None = None
    close_code: int | None = 1000
    closed_by: str | None = "cp"


@dataclass(frozen=True)
class F:
    seq: int
    elapsed: float
    direction: Direction
    message_type: int | None
    unique_id: str | None
    action: str | None
    raw: str | None
    raw_bytes: bytes | None = None


def frames(*spec: tuple[float, str, str]) -> list[F]:
    """(elapsed, direction, raw) → frames with parsed columns, actions resolved like the store."""
    import json

    out: list[F] = []
    actions: dict[tuple[str, str], str] = {}
    for seq, (elapsed, d, raw) in enumerate(spec, 1):
        direction = Direction(d)
        try:
            data = json.loads(raw)
            mtype, uid = data[0], data[1]
        except (ValueError, IndexError, KeyError):
            mtype = uid = None
        action = None
        if mtype == 2 and len(data) > 2:
            action = data[2]
            actions[(d, uid)] = action
        elif mtype in (3, 4):
            action = actions.get((direction.reverse.value, uid))
        out.append(F(seq, elapsed, direction, mtype, uid, action, raw))
    return out


SESSION16 = frames(
    (0.0, "to_csms", '[2,"1","BootNotification",{"chargePointModel":"M","chargePointVendor":"V"}]'),
    (0.01, "to_cp", '[3,"1",{"currentTime":"2026-11-25T10:00:00Z","interval":300,"status":"Accepted"}]'),
    (
        1.0,
        "to_csms",
        '[2,"2","StartTransaction",{"connectorId":1,"idTag":"T","meterStart":0,"timestamp":"2026-11-25T10:00:01Z"}]',
    ),
    (1.01, "to_cp", '[3,"2",{"transactionId":17,"idTagInfo":{"status":"Accepted"}}]'),
    (3.0, "to_csms", '[2,"3","MeterValues",{"connectorId":1,"transactionId":17,"meterValue":[]}]'),
    (3.01, "to_cp", '[3,"3",{}]'),
    (3.5, "to_cp", '[2,"b1","RemoteStopTransaction",{"transactionId":17}]'),
    (3.51, "to_csms", '[3,"b1",{"status":"Accepted"}]'),
    (
        4.0,
        "to_csms",
        '[2,"4","StopTransaction",{"meterStop":5,"timestamp":"2026-11-25T10:00:04Z","transactionId":17}]',
    ),
    (4.01, "to_cp", '[4,"4","InternalError","boom",{}]'),
)


def test_steps_offsets_answers_and_backend_calls() -> None:
    (plan,) = plan_sessions([(S(1), SESSION16)])
    assert [s.seq for s in plan.steps] == [1, 3, 5, 9]
    assert [s.at for s in plan.steps] == pytest.approx([0.0, 1.0, 3.0, 4.0])
    assert [s.action for s in plan.steps] == [
        "BootNotification",
        "StartTransaction",
        "MeterValues",
        "StopTransaction",
    ]
    assert isinstance(plan.steps[1].answer, CallResult) and plan.steps[1].answer_seq == 4
    assert isinstance(plan.steps[3].answer, CallError)
    (bc,) = plan.backend_calls
    assert bc.seq == 7 and isinstance(bc.call, Call) and bc.call.action == "RemoteStopTransaction"
    assert bc.answer_seq == 8 and isinstance(bc.answer, CallResult)
    assert plan.version == "1.6" and plan.other_frames == 0


def test_causal_waits() -> None:
    (plan,) = plan_sessions([(S(1), SESSION16)])
    waits = {s.seq: s.waits_for for s in plan.steps}
    assert waits[1] == ()
    assert waits[3] == (1,)  # the previous call's answer
    assert waits[5] == (3,)  # previous call; also the StartTransaction that defined transactionId 17
    assert waits[9] == (5, 7, 3)  # previous call, the recorded RemoteStop, the transactionId source


def test_speed_and_max_gap() -> None:
    (plan,) = plan_sessions([(S(1), SESSION16)], speed=2.0)
    assert [s.at for s in plan.steps] == pytest.approx([0.0, 0.5, 1.5, 2.0])
    (plan,) = plan_sessions([(S(1), SESSION16)], max_gap=0.2)
    # gaps: 0.01, 0.99->0.2, 0.01, 1.99->0.2, 0.01, 0.49->0.2, 0.01, 0.49->0.2
    assert [s.at for s in plan.steps] == pytest.approx([0.0, 0.21, 0.42, 0.84])
    (plan,) = plan_sessions([(S(1), SESSION16)], speed=4.0, max_gap=0.2)
    assert plan.steps[2].at == pytest.approx(0.01 / 4 + 0.2 + 0.01 / 4 + 0.2)


def test_sessions_keep_relative_start_times_and_order() -> None:
    later = S(2, "CP-2", started_at="2026-11-25T10:00:02.500000Z")
    first = S(1, "CP-1")
    plans = plan_sessions([(later, SESSION16[:2]), (first, SESSION16[:2])], speed=2.0)
    assert [p.session_id for p in plans] == [1, 2]
    assert plans[1].start - plans[0].start == pytest.approx(1.25)


def test_max_gap_is_global_across_sessions() -> None:
    """A gap is capped only when nothing at all happened: concurrent sessions stay aligned."""
    a = S(1, "A")
    b = S(2, "B", started_at="2026-11-25T10:00:10.000000Z")
    plans = plan_sessions([(a, SESSION16), (b, SESSION16[:2])], max_gap=1.0)
    # A's frames end at 4.01; B starts at 10: the 5.99 s idle gap becomes 1 s.
    mapped_a_end = plans[0].steps[-1].at
    assert plans[1].start - (plans[0].start + mapped_a_end) == pytest.approx(0.01 + 1.0)


def test_invalid_frames_are_steps_sent_raw_and_not_blocking() -> None:
    fs = frames(
        (0.0, "to_csms", "not json"),
        (0.1, "to_csms", '[2,"x","Heartbeat"]'),
        (0.15, "to_cp", '[4,"x","FormationViolation","",{}]'),
        (0.2, "to_csms", '[2,"1","Heartbeat",{}]'),
        (0.3, "to_cp", '[3,"zzz",{}]'),
    )
    (plan,) = plan_sessions([(S(1), fs)])
    assert [(s.raw, s.call is None, s.blocking) for s in plan.steps] == [
        ("not json", True, False),
        ('[2,"x","Heartbeat"]', True, False),
        ('[2,"1","Heartbeat",{}]', False, True),
    ]
    assert isinstance(plan.steps[1].answer, CallError)  # the recorded answer is still compared
    assert plan.steps[2].waits_for == ()  # invalid frames do not hold the next CALL
    assert plan.other_frames == 1  # the answer to nothing


def test_session_end_from_recorded_close() -> None:
    s = S(1, ended_at="2026-11-25T10:00:30.000000Z")
    (plan,) = plan_sessions([(s, SESSION16)], max_gap=2.0)
    assert plan.end == pytest.approx(plan.steps[-1].at + 0.01 + 2.0)


def test_timeline_rejects_bad_speed() -> None:
    with pytest.raises(ReplayError):
        Timeline([0.0, 1.0], speed=0)
    with pytest.raises(ReplayError):
        Timeline([0.0], max_gap=-1)
    t = Timeline([10.0, 12.0, 20.0], speed=2.0, max_gap=1.0)
    assert [t(10.0), t(11.0), t(12.0), t(20.0), t(5.0), t(30.0)] == pytest.approx([0, 0.5, 1.0, 2.0, 0, 2.0])


def _reference_timeline(
    instants: list[float], speed: float, max_gap: float | None
) -> Callable[[float], float]:
    """The timeline as it was first written: every instant kept, gaps summed one by one."""
    import bisect

    at = sorted(set(instants))
    mapped, total = [], 0.0
    for i, t in enumerate(at):
        if i:
            gap = (t - at[i - 1]) / speed
            total += min(gap, max_gap) if max_gap is not None else gap
        mapped.append(total)

    def f(t: float) -> float:
        i = bisect.bisect_left(at, t)
        if i < len(at) and at[i] == t:
            return mapped[i]
        if i == 0:
            return 0.0
        if i == len(at):
            return mapped[-1]
        lo, hi = at[i - 1], at[i]
        return mapped[i - 1] + (mapped[i] - mapped[i - 1]) * (t - lo) / (hi - lo)

    return f


@pytest.mark.parametrize("seed", range(20))
def test_a_timeline_of_sessions_keeps_only_its_gaps_and_maps_as_every_instant_did(seed: int) -> None:
    """Sessions that overlap, nest, leave quiet hours and repeat instants: the timeline built
    one session at a time maps every instant (and between them) as one built from them all."""
    import random

    rng = random.Random(seed)
    sessions = []
    for _ in range(rng.randint(1, 8)):
        t = rng.uniform(0, 1000)
        points = []
        for _ in range(rng.randint(1, 30)):
            t += rng.choice([0.0, rng.uniform(0, 3), rng.uniform(0, 400)])
            points.append(t)
        rng.shuffle(points)  # out-of-order frames exist
        sessions.append(points)
    every = [t for s in sessions for t in s]
    speed = rng.choice([0.5, 1.0, 3.0])
    for max_gap in (None, 0.0, 1.0, 50.0):
        expected = _reference_timeline(every, speed, max_gap)
        got = Timeline.of_sessions((iter(s) for s in sessions), speed=speed, max_gap=max_gap)
        probes = every + [rng.uniform(-10, 3000) for _ in range(50)]
        assert [got(t) for t in probes] == pytest.approx([expected(t) for t in probes], abs=1e-6)
