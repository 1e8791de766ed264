"""core/filters.py: which frames a listing shows. Plain unit tests, no capture."""

from __future__ import annotations

import pytest

from ocpp_replay.core.filters import FrameFilter
from ocpp_replay.core.frames import Direction

BOOT = {
    "action": "BootNotification",
    "direction": Direction.TO_CSMS,
    "timestamp": "2026-05-28T20:26:50.000000Z",
    "raw": '[2,"1","BootNotification",{"chargePointVendor":"Alfen BV"}]',
}
ANSWER = {
    "action": "BootNotification",
    "direction": Direction.TO_CP,
    "timestamp": "2026-05-28T20:26:50.250000Z",
    "raw": '[3,"1",{"status":"Accepted"}]',
}
BINARY = {**BOOT, "raw": None}


def test_an_empty_filter_takes_every_frame() -> None:
    rule = FrameFilter()
    assert rule.empty
    assert all(rule.matches(**f) for f in (BOOT, ANSWER, BINARY))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rule", "boot", "answer"),
    [
        (FrameFilter(actions=frozenset({"BootNotification"})), True, True),
        (FrameFilter(actions=frozenset({"Heartbeat", "Authorize"})), False, False),
        (FrameFilter(direction=Direction.TO_CP), False, True),
        (FrameFilter(since="2026-05-28T20:26:50.100000Z"), False, True),
        (FrameFilter(until="2026-05-28T20:26:50.000000Z"), True, False),  # both ends inclusive
        (FrameFilter(since="2026-05-28T20:26:50.000000Z", until="2026-05-28T20:26:50.250000Z"), True, True),
        (FrameFilter(grep="Alfen"), True, False),
        (FrameFilter(grep="alfen"), False, False),  # as grep: case counts
        (
            FrameFilter(actions=frozenset({"BootNotification"}), direction=Direction.TO_CSMS, grep="1"),
            True,
            False,
        ),
    ],
)
def test_each_criterion_and_their_conjunction(rule: FrameFilter, boot: bool, answer: bool) -> None:
    assert not rule.empty
    assert rule.matches(**BOOT) is boot  # type: ignore[arg-type]
    assert rule.matches(**ANSWER) is answer  # type: ignore[arg-type]


def test_grep_never_matches_a_binary_frame() -> None:
    assert not FrameFilter(grep="B").matches(**BINARY)  # type: ignore[arg-type]
    assert FrameFilter(actions=frozenset({"BootNotification"})).matches(**BINARY)  # type: ignore[arg-type]
