"""The JSON report of a run (``--report FILE.json``).

Format::

    {"summary": {"sessions": N, "messages": N, "diffs": N,
                 "timing": {"frames": N, "lateness_ms": {"p50": ms, "p99": ms, "max": ms},
                            "held_frames": N}},
     "sessions": [{"session_id": ID, "charge_point_id": "...",
                   "diffs": [{"seq", "action", "kind", "path", "expected", "actual"}, ...]}, ...]}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ocpp_replay.errors import ConfigError
from ocpp_replay.results import RunResult

__all__ = ["report_dict", "write_json"]


def report_dict(result: RunResult) -> dict[str, Any]:
    return {
        "summary": result.summary(),
        "sessions": [
            {
                "session_id": s.session_id,
                "charge_point_id": s.charge_point_id,
                "diffs": [d.as_dict() for d in s.differences],
            }
            for s in result.sessions
        ],
    }


def write_json(result: RunResult, path: str | os.PathLike[str]) -> None:
    text = json.dumps(report_dict(result), indent=2, ensure_ascii=False, default=str) + "\n"
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write report {path}: {exc.strerror}") from exc
