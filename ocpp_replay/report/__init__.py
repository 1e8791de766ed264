"""Renderers of a run: JSON report, JUnit XML, terminal tables. Pure apart from writing files."""

from __future__ import annotations

from ocpp_replay.report.json import report_dict, write_json
from ocpp_replay.report.junit import junit_xml, write_junit

__all__ = ["junit_xml", "report_dict", "write_json", "write_junit"]
