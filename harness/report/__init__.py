"""Reports over a suite's results: statistics per variant, tables, CSV/Markdown and plots.

Inputs are ``RunResult`` records, read from a suite's output folder (``runs.jsonl``) or rebuilt
from MLflow (one parent run per invocation, one child run per (variant, seed); every invocation
merged). Modules:

- ``stats``: the statistics on plain numbers (mean and std, Student-t 95% CI half-width, paired
  t-test on shared seeds, Holm-Bonferroni adjustment);
- ``frame``: results -> one row per run (``results_frame``) and one row per variant (``summarize``);
- ``cells``: the summary's header and cell strings and the notes under it, shared by console and
  Markdown;
- ``console``: the summary on a terminal, fitted to its width (``print_summary``);
- ``markdown``: results.md;
- ``plots``: learning curves and the metric vs cost (FLOPs per token, throughput);
- ``files``: ``Report`` (frame and summary built once, ``build_report``) and its files in a folder
  (``write_report``, which never overwrites a folder holding runs the report lacks;
  ``write_reports`` from results);
- ``mlflow_reader``: an MLflow experiment as a results source (every invocation, merged);
- ``sources``: what ``harness report EXPERIMENT_OR_DIR`` reads (a results folder, read there, or an
  experiment) and the metric, reference and direction it reports with;
- ``errors``: ``ReportError``.

Heavy libraries (pandas, scipy, matplotlib, mlflow, rich) are imported inside the functions so that
``import harness.report`` stays cheap.
"""
from __future__ import annotations

from harness.report.console import default_console, print_summary
from harness.report.errors import ReportError
from harness.report.files import Report, build_report, write_report, write_reports
from harness.report.frame import SUMMARY_COLUMNS, results_frame, summarize
from harness.report.mlflow_reader import EFFICIENCY_KEYS, load_results_mlflow
from harness.report.sources import load_results_dir, read_suite_info, reported_reference
from harness.runlog import FAILED_STATUSES, FINISHED_STATUSES

__all__ = [
    "ReportError",
    "Report",
    "build_report",
    "results_frame",
    "summarize",
    "print_summary",
    "default_console",
    "write_report",
    "write_reports",
    "load_results_dir",
    "load_results_mlflow",
    "read_suite_info",
    "reported_reference",
    "FINISHED_STATUSES",
    "FAILED_STATUSES",
    "EFFICIENCY_KEYS",
    "SUMMARY_COLUMNS",
]
