"""Reports: the record of a run (``Report``), the instrument that collects it, and its renderings."""

from __future__ import annotations

from graphopt.report.collector import ReportCollector
from graphopt.report.model import SCHEMA, PassRecord, Report
from graphopt.report.render import render_table, to_json

__all__ = ["SCHEMA", "PassRecord", "Report", "ReportCollector", "render_table", "to_json"]
