"""Identical differences grouped: one row per (action, kind, path, expected, actual). Pure.

A backend that answers every BootNotification with ``interval`` 900 instead of 300 differs the
same way in every session; the reports show that as one row with a count and the sessions
affected, not as one row per session. Values are compared as JSON (``"300"`` and ``300`` are
two groups), so that a group never hides a difference.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ocpp_replay.core.diff import Difference, DiffKind

__all__ = ["DiffGroup", "group_differences", "session_ranges"]


@dataclass(frozen=True, slots=True)
class DiffGroup:
    """Differences alike in action, kind, path, expected and actual value."""

    action: str | None
    kind: DiffKind
    path: str
    expected: Any
    actual: Any
    differences: tuple[Difference, ...]

    @property
    def count(self) -> int:
        return len(self.differences)

    @property
    def sessions(self) -> tuple[int, ...]:
        """The sessions affected, in order, each once."""
        return tuple(sorted({d.session_id for d in self.differences}))

    @property
    def charge_points(self) -> tuple[str, ...]:
        """The charge points affected, in order of first appearance, each once."""
        return tuple(dict.fromkeys(d.charge_point_id for d in self.differences))

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "kind": str(self.kind),
            "path": self.path,
            "expected": self.expected,
            "actual": self.actual,
            "count": self.count,
            "sessions": list(self.sessions),
            "charge_points": list(self.charge_points),
        }


def _key(d: Difference) -> tuple[str | None, str, str, str, str]:
    def canon(value: Any) -> str:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)

    return (d.action, str(d.kind), d.path, canon(d.expected), canon(d.actual))


def group_differences(diffs: Iterable[Difference], *, largest_first: bool = True) -> list[DiffGroup]:
    """Groups of identical differences, the largest first (ties: in order of first appearance),
    or, without ``largest_first``, all in order of first appearance."""
    members: dict[tuple[str | None, str, str, str, str], list[Difference]] = {}
    for d in diffs:
        members.setdefault(_key(d), []).append(d)
    groups = [
        DiffGroup(ds[0].action, ds[0].kind, ds[0].path, ds[0].expected, ds[0].actual, tuple(ds))
        for ds in members.values()
    ]
    if not largest_first:
        return groups
    order = {id(g): i for i, g in enumerate(groups)}
    return sorted(groups, key=lambda g: (-g.count, order[id(g)]))


def session_ranges(ids: Iterable[int], limit: int = 12) -> str:
    """``1-4, 7, 9`` for sessions 1, 2, 3, 4, 7, 9; cut after ``limit`` ranges (``…, 40 in all``)."""
    values = sorted(set(ids))
    ranges: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        ranges.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    if len(ranges) > limit:
        return ", ".join(ranges[:limit]) + f", … ({len(values)} in all)"
    return ", ".join(ranges)
