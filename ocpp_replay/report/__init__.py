"""Renderers of a run: JSON report, JUnit XML, HTML page, terminal tables. Pure apart from writing files."""

from __future__ import annotations

from ocpp_replay.report.html import html_report, write_html
from ocpp_replay.report.json import report_dict, write_json
from ocpp_replay.report.junit import junit_xml, write_junit

__all__ = ["html_report", "junit_xml", "report_dict", "write_html", "write_json", "write_junit"]
