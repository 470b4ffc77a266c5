"""The core's reporter: after a suite, write CSV, Markdown and plots and print the summary table,
all from one ``harness.report.Report``."""
from __future__ import annotations

from typing import Any

from harness import hookimpl


@hookimpl
def suite_finished(suite: Any, results: list[Any], output_dir: str) -> None:
    from harness.registry import metric_higher_is_better
    from harness.report import build_report, print_summary, write_report

    if not results:
        return
    metric = suite.suite.metric
    report = build_report(results, metric, higher_is_better=metric_higher_is_better(metric),
                          reference=suite.reference, title=suite.name)
    paths = write_report(report, output_dir)
    print_summary(report.summary, report.metric, frame=report.frame)
    print(f"Results: {', '.join(str(p) for p in paths.values())}")
