"""Writing a run's reports to files (owner-only: reports hold idTags). The renderers are pure."""

from __future__ import annotations

import os

from ocpp_replay.core.results import RunResult
from ocpp_replay.errors import ConfigError
from ocpp_replay.report.html import html_report
from ocpp_replay.report.json import json_report
from ocpp_replay.report.junit import junit_xml
from ocpp_replay.store.files import write_private_text


def _write(path: str | os.PathLike[str], text: str, what: str) -> None:
    try:
        write_private_text(path, text)
    except OSError as exc:
        raise ConfigError(f"cannot write {what} {path}: {exc.strerror}") from exc


def write_json(result: RunResult, path: str | os.PathLike[str]) -> None:
    _write(path, json_report(result), "report")


def write_junit(result: RunResult, path: str | os.PathLike[str]) -> None:
    _write(path, junit_xml(result), "JUnit report")


def write_html(result: RunResult, path: str | os.PathLike[str]) -> None:
    _write(path, html_report(result), "HTML report")
