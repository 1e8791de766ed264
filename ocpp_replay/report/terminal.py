"""Terminal rendering of a run: a summary table by action and the differences, identical ones
grouped (rich).

Pure: builds rich renderables; the CLI prints them. Text from charger traffic is escaped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from rich.table import Table
from rich.text import Text

from ocpp_replay.core.diff import Difference
from ocpp_replay.core.results import RunResult
from ocpp_replay.core.text import escape_controls
from ocpp_replay.report.groups import group_differences, session_ranges

__all__ = ["differences_table", "noise_table", "summary_line", "summary_table"]


def _safe(text: object) -> str:
    """C0, DEL and C1 controls, separators and bidi overrides as Python escapes."""
    return escape_controls(str(text))


def _short(value: object, limit: int | None = 60) -> str:
    """A value as JSON, cut at LIMIT characters (None: whole)."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return _safe(text if limit is None or len(text) <= limit else text[: limit - 3] + "...")


def summary_table(result: RunResult) -> Table:
    title = "Candidate against baseline, by action" if result.kind == "compare" else "Replay by action"
    table = Table(title=title, title_justify="left")
    table.add_column("action", overflow="fold")
    table.add_column("compared", justify="right")
    table.add_column("diffs", justify="right")
    for action, stats in result.by_action().items():
        table.add_row(
            Text(_safe(action)),
            str(stats.messages),
            Text(str(stats.diffs), style="red" if stats.diffs else ""),
        )
    return table


def differences_table(
    diffs: list[Difference] | tuple[Difference, ...], limit: int = 50, *, whole: bool = False
) -> Table:
    """The differences, identical ones (same action, kind, path, expected and actual) on one row
    with how many there are and the sessions they are in; the largest groups first.

    Long values fold inside their column, never cut by the table; expected and actual values
    longer than 60 characters are shortened unless ``whole`` (the CLI's choice outside a
    terminal, where nothing is cut)."""
    value_limit = None if whole else 60
    groups = group_differences(diffs)
    title = "Differences"
    if len(groups) != len(diffs):
        title += f" ({len(diffs)}, identical ones grouped: {len(groups)} rows)"
    table = Table(title=title, title_justify="left")
    for name in ("count", "sessions", "charge point", "action", "kind", "path", "expected", "actual"):
        table.add_column(name, justify="right" if name == "count" else "left", overflow="fold")
    for g in groups[:limit]:
        first = g.differences[0]
        where = session_ranges(g.sessions)
        if g.count == 1 and first.seq is not None:
            where += f" seq {first.seq}"
        cps = g.charge_points
        table.add_row(
            str(g.count),
            where,
            Text(_safe(cps[0] if len(cps) == 1 else f"{len(cps)} charge points")),
            Text(_safe(g.action or "-")),
            str(g.kind),
            Text(_safe(g.path or "(message)")),
            Text(_short(g.expected, value_limit)),
            Text(_short(g.actual, value_limit)),
        )
    if len(groups) > limit:
        table.caption = f"{len(groups) - limit} more rows in the report"
    return table


def noise_table(result: RunResult) -> Table:
    """The fields learned as noise in a compare run, with how often each differed."""
    table = Table(title="Learned noise", title_justify="left")
    for name in ("ocpp", "action", "message", "path", "between baseline runs", "against candidate", ""):
        table.add_column(name, overflow="fold")
    for n in result.noise:
        table.add_row(
            n.version or "-",
            Text(_safe(n.action)),
            n.message,
            Text(_safe(n.path or "(message)")),
            f"{n.baseline_diffs}/{n.baseline_compared}",
            f"{n.candidate_diffs}/{n.candidate_compared}",
            Text("reported", style="red") if n.reported else Text("ignored", style="dim"),
        )
    return table


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def summary_line(result: RunResult) -> str:
    t = result.timing
    diffs = len(result.gating)
    run = f"run {result.run_id}: " if result.run_id is not None else ""
    if result.interrupted:
        stopped = result.interrupted
        run += f"interrupted after {stopped['finished']} of {_plural(stopped['planned'], 'session')}: "
    timing = (
        f"lateness p50 {t.p50 * 1000:.2f} ms, p99 {t.p99 * 1000:.2f} ms, "
        f"max {t.max * 1000:.2f} ms over {t.frames} frames"
    )
    if t.held:  # waiting for causality is not lateness: said apart
        timing += f"; {t.held} held for causality (max {t.held_max * 1000:.2f} ms)"
    shakes = result.options.get("handshakes")
    if isinstance(shakes, Mapping) and shakes.get("sessions"):  # nor is the connection ramp
        timing += f"; handshakes p50 {shakes['p50_ms']:.2f} ms, p99 {shakes['p99_ms']:.2f} ms"
        if shakes.get("connected_after_start"):
            timing += (
                f", {shakes['connected_after_start']} connected after their start "
                f"(max {shakes['after_start_max_ms']:.0f} ms)"
            )
    if result.kind == "compare":
        base = sum(1 for d in result.differences if d.side == "baseline")
        cand = sum(1 for d in result.differences if d.side == "candidate")
        ignored = sum(1 for n in result.noise if not n.reported)
        return (
            f"{run}{_plural(len(result.sessions), 'session')}, {result.messages} messages: "
            f"{_plural(diffs, 'difference')} of the candidate from the baseline; against the recording "
            f"baseline {base}, candidate {cand}; {_plural(ignored, 'noise field')} ignored; {timing}"
        )
    return (
        f"{run}{len(result.sessions)} sessions, {result.messages} messages, {_plural(diffs, 'difference')}; "
        f"{timing}"
    )
