"""Writing a run's reports to files (owner-only: reports hold idTags). The renderers are pure.

Like every file the tool writes, a report refuses to replace an existing file unless ``force``.
"""

from __future__ import annotations

import os

from ocpp_replay.core.results import RunResult
from ocpp_replay.report.html import html_report
from ocpp_replay.report.json import json_report
from ocpp_replay.report.junit import junit_xml
from ocpp_replay.store.files import write_new_text


def write_json(result: RunResult, path: str | os.PathLike[str], *, force: bool = False) -> None:
    write_new_text(path, json_report(result), "report", force=force)


def write_junit(result: RunResult, path: str | os.PathLike[str], *, force: bool = False) -> None:
    write_new_text(path, junit_xml(result), "JUnit report", force=force)


def write_html(result: RunResult, path: str | os.PathLike[str], *, force: bool = False) -> None:
    write_new_text(path, html_report(result), "HTML report", force=force)
