"""JUnit XML of a run (``--junit FILE.xml``): one testcase per session, a failure per session
with differences, one line per difference in the failure's text (identical ones in a session on
one line, ``3x seq 4, 8, 12 ...``), and the run's differences grouped in the suite's
``system-out`` (``8x sessions 1-8 BootNotification changed interval: ...``).

For a compare run the differences are the candidate's against the baseline (``expected`` is
the baseline's value); differences of either backend against the recording are not failures.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from ocpp_replay.core.results import RunResult, SessionResult
from ocpp_replay.core.text import escape_controls
from ocpp_replay.report.groups import DiffGroup, group_differences, session_ranges

__all__ = ["junit_xml"]


def _seconds(s: SessionResult) -> str:
    """The session's duration, from its start to its end (its last frame's time if either is
    unknown)."""
    duration = s.duration
    if duration is None:
        duration = max((f.elapsed for f in s.frames), default=0.0)
    return f"{duration:.3f}"


def _line(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 200 else text[:197] + "..."


def _clean(text: str) -> str:
    """Text from traffic as the terminal shows it: XML 1.0 cannot carry most control characters,
    and bidi overrides would let a CI page show a spoofed, reversed name. Every character that is
    not printable becomes a Python escape (``\\x1b``, ``\\u202e``); line breaks between the lines of
    a failure's text stay."""
    return "\n".join(escape_controls(line) for line in text.split("\n"))


def _group_line(g: DiffGroup, *, in_session: bool) -> str:
    """One line for identical differences: ``3x seq 4, 8, 12 MeterValues changed ...`` in a
    session's failure, ``8x sessions 1-8 BootNotification changed ...`` for the run."""
    if in_session:
        seqs = [str(d.seq) if d.seq is not None else "-" for d in g.differences]
        shown = ", ".join(seqs[:10]) + (f", … ({len(seqs)} in all)" if len(seqs) > 10 else "")
        where = f"seq {shown}"
    else:
        where = f"session{'s' if len(g.sessions) != 1 else ''} {session_ranges(g.sessions)}"
    count = f"{g.count}x " if g.count > 1 else ""
    return (
        f"{count}{where} {g.action or '-'} {g.kind} {g.path or '(message)'}: "
        f"expected {_line(g.expected)}, actual {_line(g.actual)}"
    )


def junit_xml(result: RunResult, *, suite: str = "ocpp-replay") -> str:
    failures = sum(1 for s in result.sessions if result.deciding(s))
    root = ET.Element(
        "testsuites", name=suite, tests=str(len(result.sessions)), failures=str(failures), errors="0"
    )
    ts = ET.SubElement(
        root,
        "testsuite",
        name=_clean(
            f"{suite} compare {result.baseline} -> {result.candidate}"
            if result.kind == "compare"
            else f"{suite} {result.kind} {result.target}"
        ),
        tests=str(len(result.sessions)),
        failures=str(failures),
        errors="0",
        skipped="0",
        timestamp=_clean(result.started_at),
    )
    for s in result.sessions:
        case = ET.SubElement(
            ts,
            "testcase",
            classname=_clean(f"ocpp-replay.{s.charge_point_id}"),
            name=_clean(f"session {s.session_id} ({s.charge_point_id})"),
            time=_seconds(s),
        )
        diffs = result.deciding(s)
        if diffs:
            n = len(diffs)
            kinds = sorted({str(d.kind) for d in diffs})
            failure = ET.SubElement(
                case,
                "failure",
                message=_clean(f"{n} difference{'s' if n != 1 else ''}: {', '.join(kinds)}"),
                type="difference",
            )
            lines = [_group_line(g, in_session=True) for g in group_differences(diffs, largest_first=False)]
            failure.text = _clean("\n".join(lines))
    groups = group_differences(result.gating)
    if groups:
        # The whole run's differences, identical ones once with their count and sessions.
        out = ET.SubElement(ts, "system-out")
        out.text = _clean(
            "\n".join(
                [f"{len(result.gating)} differences in {len(groups)} groups:"]
                + [_group_line(g, in_session=False) for g in groups]
            )
        )
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
