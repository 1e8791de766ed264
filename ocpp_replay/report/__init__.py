"""Renderers of a run: JSON report, JUnit XML, HTML page, terminal tables.

The renderers (html, json, junit, terminal) are pure: a RunResult in, text or rich renderables
out. ``files`` writes them to owner-only files.
"""

from __future__ import annotations

from ocpp_replay.report.files import write_html, write_json, write_junit
from ocpp_replay.report.html import html_report
from ocpp_replay.report.json import json_report, report_dict
from ocpp_replay.report.junit import junit_xml

__all__ = [
    "html_report",
    "json_report",
    "junit_xml",
    "report_dict",
    "write_html",
    "write_json",
    "write_junit",
]
