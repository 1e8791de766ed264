"""The JSON report of a run (``--report FILE.json``, ``report RUN_ID --json FILE``).

Format of a replay::

    {"summary": {"sessions": N, "messages": N, "diffs": N,
                 "timing": {"frames": N, "lateness_ms": {"p50": ms, "p99": ms, "max": ms},
                            "held_frames": N}},
     "sessions": [{"session_id": ID, "charge_point_id": "...",
                   "diffs": [{"seq", "action", "kind", "path", "expected", "actual"}, ...]}, ...],
     "groups": [{"action", "kind", "path", "expected", "actual", "count",
                 "sessions": [ID, ...], "charge_points": ["...", ...]}, ...]}

``groups`` holds the same differences as the sessions' ``diffs`` (the deciding ones), identical
ones (same action, kind, path, expected and actual) together, the largest group first.

A compare run adds ``"run": {"id", "kind": "compare", "target", "baseline", "candidate",
"started_at", "ended_at"}``; its ``summary`` also has ``kind``,
``baseline``, ``candidate``, ``vs_recording`` (``{"baseline": N, "candidate": N}``) and
``noise_fields``; ``diffs`` are the candidate's differences from the baseline (``expected`` is
the baseline's value); each session has ``vs_recording`` (``{"baseline": [...], "candidate":
[...]}``, each side against the recording); and ``noise`` lists the learned fields::

    {"ocpp", "action", "message", "path", "baseline_diffs", "baseline_compared",
     "candidate_diffs", "candidate_compared", "reported"}
"""

from __future__ import annotations

import json
from typing import Any

from ocpp_replay.core.results import RunResult
from ocpp_replay.core.text import escape_json
from ocpp_replay.report.groups import group_differences

__all__ = ["json_report", "report_dict"]


def report_dict(result: RunResult) -> dict[str, Any]:
    compare = result.kind == "compare"
    sessions = []
    for s in result.sessions:
        entry: dict[str, Any] = {
            "session_id": s.session_id,
            "charge_point_id": s.charge_point_id,
            "diffs": [d.as_dict() for d in result.deciding(s)],
        }
        information = result.informing(s)
        if information:  # optional calls that did not come, calls after the recorded end
            entry["information"] = [d.as_dict() for d in information]
        if compare:
            entry["vs_recording"] = {
                side: [d.as_dict() for d in s.on(side)] for side in ("baseline", "candidate")
            }
        sessions.append(entry)
    groups = [g.as_dict() for g in group_differences(result.gating)]
    out: dict[str, Any] = {"summary": result.summary(), "sessions": sessions, "groups": groups}
    if compare:
        out = {
            "run": {
                "id": result.run_id,
                "kind": result.kind,
                "target": result.target,
                "baseline": result.baseline,
                "candidate": result.candidate,
                "started_at": result.started_at,
                "ended_at": result.ended_at,
            },
            **out,
            "noise": [n.as_dict() for n in result.noise],
        }
    rewritten = result.options.get("rewritten")
    if rewritten:  # frames [[rewrite]] or a hook changed: recorded text beside the text sent
        out["rewritten"] = rewritten
    return out


def json_report(result: RunResult) -> str:
    """The JSON report as text (UTF-8, indented, one trailing newline). Letters stay readable;
    bidi overrides, C1 controls and other invisible characters are ``\\u`` escapes."""
    return escape_json(json.dumps(report_dict(result), indent=2, ensure_ascii=False, default=str)) + "\n"
