"""The core's reporter: after a suite, print the summary table and write CSV, Markdown and plots."""
from __future__ import annotations

from typing import Any

from harness import hookimpl


@hookimpl
def suite_finished(suite: Any, results: list[Any], output_dir: str) -> None:
    from harness import report
    from harness.registry import metric_higher_is_better

    if not results:
        return
    metric, higher = suite.suite.metric, metric_higher_is_better(suite.suite.metric)
    paths = report.write_reports(results, output_dir, metric=metric, higher_is_better=higher,
                                 reference=suite.reference, title=suite.name)
    summary = report.summarize(report.results_frame(results), metric, higher, suite.reference)
    report.print_summary(summary, metric)
    print(f"Results: {', '.join(str(p) for p in paths.values())}")
