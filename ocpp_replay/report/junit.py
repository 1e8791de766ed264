"""JUnit XML of a run (``--junit FILE.xml``): one testcase per session, a failure per session
with differences, one line per difference in the failure's text.

For a compare run the differences are the candidate's against the baseline (``expected`` is
the baseline's value); differences of either backend against the recording are not failures.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from ocpp_replay.core.results import RunResult, SessionResult
from ocpp_replay.core.text import escape_controls

__all__ = ["junit_xml"]


def _seconds(s: SessionResult) -> str:
    if not s.frames:
        return "0.000"
    return f"{max(f.elapsed for f in s.frames):.3f}"


def _line(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 200 else text[:197] + "..."


def _clean(text: str) -> str:
    """Text from traffic as the terminal shows it: XML 1.0 cannot carry most control characters,
    and bidi overrides would let a CI page show a spoofed, reversed name. Every character that is
    not printable becomes a Python escape (``\\x1b``, ``\\u202e``); line breaks between the lines of
    a failure's text stay."""
    return "\n".join(escape_controls(line) for line in text.split("\n"))


def junit_xml(result: RunResult, *, suite: str = "ocpp-replay") -> str:
    side = result.side
    failures = sum(1 for s in result.sessions if s.on(side))
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
        diffs = s.on(side)
        if diffs:
            n = len(diffs)
            kinds = sorted({str(d.kind) for d in diffs})
            failure = ET.SubElement(
                case,
                "failure",
                message=_clean(f"{n} difference{'s' if n != 1 else ''}: {', '.join(kinds)}"),
                type="difference",
            )
            failure.text = _clean(
                "\n".join(
                    f"seq {d.seq if d.seq is not None else '-'} {d.action or '-'} {d.kind} "
                    f"{d.path or '(message)'}: expected {_line(d.expected)}, actual {_line(d.actual)}"
                    for d in diffs
                )
            )
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
