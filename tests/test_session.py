"""The replay judgement (core/session.py) driven by hand with a fake clock: no sockets, exact times.

Each test builds a recorded session from frames (elapsed, direction, raw), plans it, and plays
the backend's side by calling the session's events with the times it chooses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocpp_replay.core.diff import DiffKind
from ocpp_replay.core.frames import Direction
from ocpp_replay.core.results import RunResult
from ocpp_replay.core.rules import parse_rules
from ocpp_replay.core.schedule import SessionPlan, plan_sessions
from ocpp_replay.core.session import (
    OPERATOR_CALLS,
    Action,
    Close,
    Finding,
    ReplaySession,
    Send,
    SessionOptions,
)
from tests.test_schedule import T0, frames


@dataclass(frozen=True)
class S:
    id: int = 1
    charge_point_id: str = "CP-1"
    subprotocol: str | None = "ocpp1.6"
    query: str | None = None
    path_suffix: str | None = None
    auth_user: str | None = None
    started_at: str = T0
    ended_at: str | None = None
    close_code: int | None = 1000
    close_reason: str | None = None
    closed_by: str | None = "cp"
    error: str | None = None


BOOT = '[2,"1","BootNotification",{"chargePointModel":"M","chargePointVendor":"V"}]'
BOOT_OK = '[3,"1",{"currentTime":"2026-11-25T10:00:00Z","interval":300,"status":"Accepted"}]'
BOOT_LIVE = '[3,"1",{"currentTime":"2026-12-03T09:00:00Z","interval":300,"status":"Accepted"}]'


def hb(uid: str) -> str:
    return f'[2,"{uid}","Heartbeat",{{}}]'


def hb_ok(uid: str) -> str:
    return f'[3,"{uid}",{{"currentTime":"2026-11-25T10:00:00Z"}}]'


def hb_live(uid: str) -> str:
    return f'[3,"{uid}",{{"currentTime":"2026-12-03T09:00:00Z"}}]'


def plan(*spec: tuple[float, str, str], session: S | None = None, **kw: Any) -> SessionPlan:
    (p,) = plan_sessions([(session or S(), frames(*spec))], **kw)
    return p


def start(p: SessionPlan, **options: Any) -> ReplaySession:
    options.setdefault("answer_timeout", 2.0)
    options.setdefault("grace", 1.0)
    rules = options.pop("rules", None)
    s = ReplaySession(p, rules=rules, options=SessionOptions(**options), timestamp=lambda t: f"t={t:g}")
    s.connected(0.0, p.subprotocol)
    return s


def sent(actions: list[Action]) -> list[str | bytes]:
    return [a.data for a in actions if isinstance(a, Send)]


def kinds(s: ReplaySession) -> list[tuple[DiffKind, str, str | None, int | None]]:
    return [(d.kind, d.path, d.action, d.seq) for d in s.differences]


def finish(s: ReplaySession, now: float) -> list[Close]:
    """Advance to ``now``, expect the session's own close, and report the connection over."""
    s.advance(now)
    actions = s.actions()
    closes = [a for a in actions if isinstance(a, Close)]
    assert len(closes) == 1, actions
    assert not sent(actions)
    close = closes[0]
    s.closed(now, close.code, close.reason)
    assert s.done
    return closes


# ----------------------------------------------------------------------------- plain play


def test_a_clean_session_sends_on_time_and_closes_as_recorded() -> None:
    p = plan(
        (0.0, "to_csms", BOOT),
        (0.01, "to_cp", BOOT_OK),
        (1.0, "to_csms", hb("2")),
        (1.01, "to_cp", hb_ok("2")),
        session=S(ended_at="2026-11-25T10:00:02.000000Z", close_code=4000, close_reason="bye"),
    )
    s = start(p)
    assert sent(s.actions()) == [BOOT]
    assert s.wakeup == 2.0  # the answer's timeout
    s.receive(0.02, BOOT_LIVE)
    assert s.actions() == [] and s.wakeup == 1.0
    s.advance(1.0)
    assert sent(s.actions()) == [hb("2")]
    s.receive(1.03, hb_live("2"))
    assert s.wakeup == 2.0  # the recorded end
    actions = finish(s, 2.0)
    assert actions == [Close(4000, "bye")]
    assert s.differences == []
    assert s.close_code == 4000
    assert s.lateness == [0.0, 0.0] and s.held_seconds == []
    assert [(f.direction, f.elapsed, f.recorded_seq, f.timestamp) for f in s.frames] == [
        ("to_csms", 0.0, 1, "t=0"),
        ("to_cp", 0.02, 2, "t=0.02"),
        ("to_csms", 1.0, 3, "t=1"),
        ("to_cp", 1.03, 4, "t=1.03"),
    ]
    result = s.result(started_at="a", ended_at="b")
    assert result.compared == {"BootNotification": 1, "Heartbeat": 1}


def test_lateness_is_measured_from_the_deadline_exactly() -> None:
    p = plan((0.0, "to_csms", hb("1")), (0.01, "to_cp", hb_ok("1")), (1.0, "to_csms", "not json"))
    s = start(p)
    s.actions()
    s.receive(0.01, hb_live("1"))
    s.advance(1.25)  # the runner woke up 250 ms after the deadline
    assert sent(s.actions()) == ["not json"]
    assert s.lateness == [0.0, 0.25]
    assert s.held_seconds == []
    assert [f.held for f in s.frames if f.direction == "to_csms"] == [0.0, 0.0]


def test_held_and_late_are_kept_apart() -> None:
    """Held: waiting past the deadline for an answer. Late: the scheduler's own delay after."""
    p = plan(
        (0.0, "to_csms", hb("1")),
        (0.01, "to_cp", hb_ok("1")),
        (1.0, "to_csms", hb("2")),
        (1.01, "to_cp", hb_ok("2")),
        (3.0, "to_csms", hb("3")),
        (3.01, "to_cp", hb_ok("3")),
    )
    s = start(p, answer_timeout=5.0)
    s.actions()
    s.receive(1.5, hb_live("1"))  # half a second after the next frame's deadline
    assert sent(s.actions()) == [hb("2")]
    s.receive(1.6, hb_live("2"))
    s.advance(3.2)
    assert sent(s.actions()) == [hb("3")]
    assert s.lateness == pytest.approx([0.0, 0.0, 0.2])
    assert s.held_seconds == pytest.approx([0.5])
    held = [f.held for f in s.frames if f.direction == "to_csms"]
    assert held == pytest.approx([0.0, 0.5, 0.0])


def test_unanswered_call_times_out_and_the_next_frame_is_held_until_then() -> None:
    p = plan(
        (0.0, "to_csms", hb("1")),
        (0.01, "to_cp", hb_ok("1")),
        (1.0, "to_csms", hb("2")),
        (1.01, "to_cp", hb_ok("2")),
    )
    s = start(p, answer_timeout=2.0)
    s.actions()
    s.advance(1.0)
    assert sent(s.actions()) == []  # held: the first call is unanswered
    assert s.wakeup == 2.0
    s.advance(2.3)  # the timer fired at 2.0; the runner came at 2.3
    assert sent(s.actions()) == [hb("2")]
    assert kinds(s) == [(DiffKind.TIMEOUT, "", "Heartbeat", 2)]
    assert s.held_seconds == pytest.approx([1.0])  # deadline 1.0, free at 2.0
    assert s.lateness == pytest.approx([0.0, 0.3])
    # The answer that comes after its timeout is kept with its recorded frame, no second finding.
    s.receive(2.5, hb_live("1"))
    assert kinds(s) == [(DiffKind.TIMEOUT, "", "Heartbeat", 2)]
    assert s.frames[-1].recorded_seq == 2


def test_changed_answer_is_compared_under_the_rules() -> None:
    p = plan((0.0, "to_csms", hb("1")), (0.01, "to_cp", hb_ok("1")))
    s = start(p)
    s.receive(0.1, '[3,"1",{"currentTime":5}]')
    assert kinds(s) == [
        (DiffKind.TYPE_CHANGED, "currentTime", "Heartbeat", 2),
        (DiffKind.SCHEMA, "currentTime", "Heartbeat", 2),  # and the official schema says so
    ]
    assert any(isinstance(a, Finding) for a in s.actions())


# ----------------------------------------------------------------------------- misbehaviour


PIPELINED = (
    (0.0, "to_csms", hb("1")),
    (0.1, "to_csms", hb("2")),
    (0.2, "to_cp", hb_ok("1")),
    (0.3, "to_cp", hb_ok("2")),
)


def test_pipelined_calls_are_sent_pipelined_when_faithful() -> None:
    s = start(plan(*PIPELINED))
    assert sent(s.actions()) == [hb("1")]
    s.advance(0.1)
    assert sent(s.actions()) == [hb("2")]  # no answer yet, as in the recording
    s.receive(0.3, hb_live("2"))  # answers in another order: paired by id
    s.receive(0.35, hb_live("1"))
    assert s.differences == []
    assert s.held_seconds == []


def test_pipelined_calls_wait_for_each_answer_when_well_behaved() -> None:
    s = start(plan(*PIPELINED), faithful=False)
    assert sent(s.actions()) == [hb("1")]
    s.advance(0.1)
    assert sent(s.actions()) == []
    s.receive(0.4, hb_live("1"))
    assert sent(s.actions()) == [hb("2")]
    assert s.held_seconds == pytest.approx([0.3])


def test_many_outstanding_calls_pair_exactly() -> None:
    spec = [(i * 0.001, "to_csms", hb(str(i))) for i in range(3000)]
    spec += [(5 + i * 0.001, "to_cp", hb_ok(str(i))) for i in range(3000)]
    s = start(plan(*spec), answer_timeout=10.0)
    s.advance(3.0)
    assert len(sent(s.actions())) == 3000
    for i in reversed(range(3000)):
        s.receive(5.0, hb_live(str(i)))
    assert s.differences == []
    assert s.result(started_at=None, ended_at=None).compared == {"Heartbeat": 3000}


def test_orphan_answer_is_sent_when_faithful_and_left_out_when_well_behaved() -> None:
    spec = (
        (0.0, "to_csms", '[3,"ghost",{"status":"Accepted"}]'),
        (0.01, "to_cp", '[4,"ghost","ProtocolError","no such call",{}]'),
        (0.5, "to_csms", hb("1")),
        (0.51, "to_cp", hb_ok("1")),
    )
    s = start(plan(*spec))
    assert sent(s.actions()) == ['[3,"ghost",{"status":"Accepted"}]']
    s.receive(0.02, '[4,"ghost","GenericError","?",{}]')  # compared with the recorded reply
    assert kinds(s) == [(DiffKind.CALL_ERROR, "errorCode", None, 2)]
    well = start(plan(*spec), faithful=False)
    assert sent(well.actions()) == []
    well.advance(0.5)
    assert sent(well.actions()) == [hb("1")]


def test_a_call_with_a_float_type_is_sent_as_recorded_and_its_answer_compared() -> None:
    spec = (
        (0.0, "to_csms", '[2.0,"7","Heartbeat",{}]'),
        (0.01, "to_cp", '[4,"7","FormationViolation","type is not an integer",{}]'),
    )
    s = start(plan(*spec))
    assert sent(s.actions()) == ['[2.0,"7","Heartbeat",{}]']
    s.receive(0.05, hb_live("7"))  # the new backend takes it as a Heartbeat
    assert [(d.kind, d.seq) for d in s.differences] == [(DiffKind.CALL_ERROR, 2)]
    same = start(plan(*spec))
    same.receive(0.05, '[4,"7","FormationViolation","",{}]')
    assert same.differences == []


def test_answer_to_an_unknown_id_is_a_finding_unless_recorded() -> None:
    p = plan((0.0, "to_csms", hb("1")), (0.01, "to_cp", hb_ok("1")), (0.02, "to_cp", '[3,"zz",{}]'))
    s = start(p)
    s.receive(0.01, hb_live("1"))
    s.receive(0.02, '[3,"zz",{}]')  # the recording has the backend do this too
    assert s.differences == []
    s.receive(0.03, '[3,"nobody",{"a":1}]')
    assert kinds(s) == [(DiffKind.UNEXPECTED_ANSWER, "", None, None)]
    assert s.differences[0].actual == {"a": 1}


# ----------------------------------------------------------------------------- backend calls

REMOTE_STOP = '[2,"b1","RemoteStopTransaction",{"transactionId":17}]'
STOP_ACCEPTED = '[3,"b1",{"status":"Accepted"}]'


def with_backend_call(**session: Any) -> SessionPlan:
    return plan(
        (0.0, "to_csms", BOOT),
        (0.01, "to_cp", BOOT_OK),
        (1.0, "to_cp", REMOTE_STOP),
        (1.01, "to_csms", STOP_ACCEPTED),
        (2.0, "to_csms", hb("2")),
        (2.01, "to_cp", hb_ok("2")),
        (6.0, "to_csms", hb("3")),
        (6.01, "to_cp", hb_ok("3")),
        session=S(ended_at="2026-11-25T10:00:07.000000Z", **session),
    )


def test_backend_call_is_answered_as_recorded_with_the_live_id() -> None:
    s = start(with_backend_call())
    s.receive(0.01, BOOT_LIVE)
    s.actions()
    s.receive(1.2, '[2,"live-9","RemoteStopTransaction",{"transactionId":17}]')
    assert sent(s.actions()) == ['[3,"live-9",{"status":"Accepted"}]']
    s.advance(2.0)
    assert sent(s.actions()) == [hb("2")]
    assert s.held_seconds == []


def test_missing_backend_call_holds_once_then_the_session_is_back_on_schedule() -> None:
    s = start(with_backend_call(), answer_timeout=2.0)
    s.actions()
    s.receive(0.01, BOOT_LIVE)
    s.advance(2.0)
    assert sent(s.actions()) == []  # the recorded RemoteStop came before this heartbeat
    assert s.wakeup == 3.0  # its recorded time (1.0) plus the timeout
    s.advance(3.0)
    assert sent(s.actions()) == [hb("2")]
    s.receive(3.01, hb_live("2"))
    s.advance(6.0)
    assert sent(s.actions()) == [hb("3")]  # on its recorded schedule again
    s.receive(6.01, hb_live("3"))
    assert s.held_seconds == pytest.approx([1.0])
    assert s.lateness == pytest.approx([0.0, 0.0, 0.0])
    s.advance(7.0)  # the recorded end: grace for the missing call
    assert s.wakeup == 8.0
    finish(s, 8.0)
    assert kinds(s) == [(DiffKind.MISSING_CALL, "", "RemoteStopTransaction", 3)]


def test_optional_backend_call_never_holds_and_is_information() -> None:
    s = start(with_backend_call(), optional_calls=frozenset({"RemoteStopTransaction"}))
    s.actions()
    s.receive(0.01, BOOT_LIVE)
    s.advance(2.0)
    assert sent(s.actions()) == [hb("2")]
    s.receive(2.01, hb_live("2"))
    s.advance(6.0)
    s.receive(6.01, hb_live("3"))
    s.advance(7.0)  # no grace for an optional call
    assert [a for a in s.actions() if isinstance(a, Close)] == [Close(1000, "")]
    s.closed(7.0, 1000)
    assert kinds(s) == [(DiffKind.OPTIONAL_CALL_MISSING, "", "RemoteStopTransaction", 3)]
    result = RunResult("ws://x", "a", "b", (s.result(started_at=None, ended_at=None),))
    assert result.gating == () and result.exit_code == 0
    assert result.summary()["information"] == {"optional_call_missing": 1}
    assert "RemoteStopTransaction" in OPERATOR_CALLS and "BootNotification" not in OPERATOR_CALLS


def test_unexpected_call_is_refused_and_after_the_end_is_its_own_class() -> None:
    s = start(with_backend_call())
    s.receive(0.01, BOOT_LIVE)
    s.actions()
    s.receive(0.5, '[2,"x1","GetConfiguration",{}]')
    reply = json.loads(sent(s.actions())[0])
    assert reply[:3] == [4, "x1", "GenericError"]
    s.receive(1.1, '[2,"b","RemoteStopTransaction",{"transactionId":17}]')
    s.advance(2.0)
    s.receive(2.01, hb_live("2"))
    s.advance(6.0)
    s.receive(6.01, hb_live("3"))
    s.advance(7.0)
    closes = [a for a in s.actions() if isinstance(a, Close)]
    s.receive(7.02, '[2,"x2","RemoteStopTransaction",{"transactionId":17}]')  # lost the race
    assert sent(s.actions()) == []  # nothing goes out after the close
    s.closed(7.03, closes[0].code)
    assert kinds(s) == [
        (DiffKind.UNEXPECTED_CALL, "", "GetConfiguration", None),
        (DiffKind.CALL_AFTER_END, "", "RemoteStopTransaction", None),
    ]
    r = s.result(started_at=None, ended_at=None)
    assert len(RunResult("ws://x", "a", "b", (r,)).gating) == 1
    assert len(RunResult("ws://x", "a", "b", (r,), options={"strict_end": True}).gating) == 2


# ----------------------------------------------------------------------------- closes


def test_backend_close_while_calls_are_pending() -> None:
    p = plan(
        (0.0, "to_csms", hb("1")),
        (0.01, "to_cp", hb_ok("1")),
        (1.0, "to_csms", hb("2")),
        (1.01, "to_cp", hb_ok("2")),
    )
    s = start(p)
    s.actions()
    s.closed(0.5, 4003, "go away")
    assert s.done and s.error == "closed by the CSMS with code 4003"
    assert kinds(s) == [
        (DiffKind.CHANGED, "connection", "Heartbeat", 3),
        (DiffKind.TIMEOUT, "", "Heartbeat", 2),
        (DiffKind.CHANGED, "close.by", None, None),
        (DiffKind.CHANGED, "close.code", None, None),
        (DiffKind.CHANGED, "close.reason", None, None),
    ]
    assert s.close_code == 4003
    s.advance(5.0)
    s.receive(5.0, hb_live("1"))
    assert s.actions() and s.done  # only the findings above; nothing happens after the end


CSMS_CLOSE = S(closed_by="csms", close_code=4003, close_reason="unknown charger")


def test_recorded_csms_close_compared() -> None:
    p = plan((0.0, "to_csms", BOOT), (0.01, "to_cp", BOOT_OK), session=CSMS_CLOSE)
    same = start(p)
    same.receive(0.01, BOOT_LIVE)
    same.closed(0.02, 4003, "unknown charger")
    assert same.differences == []
    other = start(p)
    other.receive(0.01, BOOT_LIVE)
    other.closed(0.02, 4999, "unknown charger")
    assert [(d.path, d.expected, d.actual) for d in other.differences] == [("close.code", 4003, 4999)]


def test_backend_that_no_longer_closes_is_a_difference() -> None:
    p = plan((0.0, "to_csms", BOOT), (0.01, "to_cp", BOOT_OK), session=CSMS_CLOSE)
    s = start(p, grace=1.5)
    s.actions()
    s.receive(0.01, BOOT_LIVE)
    assert s.wakeup == pytest.approx(1.51)  # the recorded close (at 0.01) plus grace
    actions = finish(s, 1.51)
    assert actions == [Close(1000, "")]
    assert [(d.path, d.expected, d.actual) for d in s.differences] == [
        ("close.by", "csms", "cp"),
        ("close.code", 4003, 1000),
        ("close.reason", "unknown charger", ""),
    ]


def test_close_rules_ignore_parts_or_all_of_it() -> None:
    p = plan((0.0, "to_csms", BOOT), (0.01, "to_cp", BOOT_OK), session=CSMS_CLOSE)
    rules = parse_rules('[[rule]]\naction = "close"\nignore = ["code", "reason"]\n')
    s = start(p, rules=rules)
    s.receive(0.01, BOOT_LIVE)
    s.closed(0.02, 4999, "other")
    assert s.differences == []
    everything = parse_rules('[[rule]]\naction = "close"\nignore = ["$"]\n')
    s = start(p, rules=everything)
    s.actions()
    s.receive(0.01, BOOT_LIVE)
    finish(s, 5.0)
    assert s.differences == []


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        (None, None, Close(None)),  # a close frame without a status code
        (1005, None, Close(None)),
        (1006, "connection lost", Close(None, abort=True)),  # the charger vanished
        (1004, None, Close(1000)),  # reserved: cannot be sent
        (4100, "rebooting", Close(4100, "rebooting")),
    ],
)
def test_charger_close_as_recorded(code: int | None, reason: str | None, expected: Close) -> None:
    p = plan(
        (0.0, "to_csms", BOOT), (0.01, "to_cp", BOOT_OK), session=S(close_code=code, close_reason=reason)
    )
    s = start(p)
    s.actions()
    s.receive(0.01, BOOT_LIVE)
    assert finish(s, 0.01) == [expected]
    assert s.differences == []


def test_unknown_close_is_not_compared() -> None:
    p = plan((0.0, "to_csms", BOOT), (0.01, "to_cp", BOOT_OK), session=S(closed_by="unknown"))
    s = start(p)
    s.actions()
    s.receive(0.01, BOOT_LIVE)
    assert finish(s, 0.01) == [Close(1000)]
    assert s.differences == []


# ----------------------------------------------------------------------------- handshake


def test_refused_with_basic_auth_names_the_user_and_the_auth_file() -> None:
    p = plan((0.0, "to_csms", BOOT), session=S(auth_user="CP-1"))
    s = ReplaySession(p)
    s.refused(401, "Unauthorized", auth_sent=False)
    assert s.done
    assert kinds(s) == [(DiffKind.CHANGED, "handshake.status", None, None)]
    assert s.error is not None
    assert "Basic auth as user 'CP-1'" in s.error and "--auth-file" in s.error
    with_password = ReplaySession(p)
    with_password.refused(401, "Unauthorized", auth_sent=True)
    assert with_password.error == "handshake refused: 401 Unauthorized"


def test_other_subprotocol_is_a_difference() -> None:
    p = plan((0.0, "to_csms", BOOT))
    s = ReplaySession(p)
    s.connected(0.0, "ocpp2.0.1")
    assert [(d.path, d.expected, d.actual) for d in s.differences] == [
        ("handshake.subprotocol", "ocpp1.6", "ocpp2.0.1")
    ]


def test_correlated_value_is_substituted_and_timestamps_shifted() -> None:
    p = plan(
        (
            0.0,
            "to_csms",
            '[2,"1","StartTransaction",{"connectorId":1,"idTag":"T","meterStart":0,'
            '"timestamp":"2026-11-25T10:00:00Z"}]',
        ),
        (0.01, "to_cp", '[3,"1",{"transactionId":17,"idTagInfo":{"status":"Accepted"}}]'),
        (
            1.0,
            "to_csms",
            '[2,"2","StopTransaction",{"meterStop":5,"timestamp":"2026-11-25T10:00:01Z","transactionId":17}]',
        ),
    )
    s = ReplaySession(p, options=SessionOptions(), shift=3600.0)
    s.connected(0.0, "ocpp1.6")
    first = json.loads(sent(s.actions())[0])
    assert first[3]["timestamp"] == "2026-11-25T11:00:00Z"
    s.receive(0.5, '[3,"1",{"transactionId":900,"idTagInfo":{"status":"Accepted"}}]')
    s.advance(1.0)
    stop = json.loads(sent(s.actions())[0])
    assert stop[3]["transactionId"] == 900
    assert s.differences == []


def test_options_are_frozen_and_replaceable() -> None:
    o = SessionOptions()
    assert o.faithful and not o.optional_calls
    assert replace(o, faithful=False).faithful is False
    assert Direction.TO_CP.reverse is Direction.TO_CSMS


def test_backend_close_during_the_grace_for_a_missing_call() -> None:
    s = start(with_backend_call(), answer_timeout=0.5, grace=5.0)
    s.actions()
    s.receive(0.01, BOOT_LIVE)
    s.advance(2.0)
    s.receive(2.01, hb_live("2"))
    s.advance(6.0)
    s.receive(6.01, hb_live("3"))
    s.advance(7.0)
    assert s.wakeup == 12.0  # grace for the RemoteStop
    s.closed(8.0, 1000, "")
    assert s.done
    assert kinds(s) == [
        (DiffKind.MISSING_CALL, "", "RemoteStopTransaction", 3),
        (DiffKind.CHANGED, "close.by", None, None),
    ]
    assert s.error is None  # every frame went out: not a connection difference


def test_well_behaved_replay_gives_up_on_a_missing_call_the_same_way() -> None:
    s = start(with_backend_call(), answer_timeout=2.0, faithful=False)
    s.actions()
    s.receive(0.01, BOOT_LIVE)
    s.advance(2.0)
    assert sent(s.actions()) == []
    s.advance(3.0)
    assert sent(s.actions()) == [hb("2")]
    assert s.held_seconds == pytest.approx([1.0])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=20, allow_nan=False),
            st.one_of(
                st.text(max_size=40),
                st.binary(max_size=40),
                st.sampled_from(
                    [
                        hb_live("1"),
                        hb_live("2"),
                        '[4,"1","NotImplemented","",{}]',
                        '[2,"x","Reset",{"type":"Hard"}]',
                        '[2,"b","RemoteStopTransaction",{"transactionId":17}]',
                        "[3]",
                        '[2.0,"1"]',
                    ]
                ),
            ),
        ),
        max_size=12,
    )
)
def test_any_backend_traffic_at_any_time_is_judged_without_raising(
    events: list[tuple[float, str | bytes]],
) -> None:
    """Whatever the backend sends, whenever: findings, never an exception; time only moves on."""
    s = start(with_backend_call(), answer_timeout=1.0, grace=0.5)
    now = 0.0
    for at, data in sorted(events, key=lambda e: e[0]):
        now = max(now, at)
        s.advance(now)
        s.receive(now, data)
        s.actions()
    while not s.done:
        wakeup = s.wakeup
        if wakeup is None:  # the session's close went out: the connection ends
            closes = [a for a in s.actions() if isinstance(a, Close)]
            s.closed(now, closes[0].code if closes else 1000)
            break
        now = max(now, wakeup)
        s.advance(now)
    assert s.done
    held = [f.held for f in s.frames if f.held is not None]
    late = [f.lateness for f in s.frames if f.lateness is not None]
    assert all(h >= 0 for h in held) and all(x >= 0 for x in late)
