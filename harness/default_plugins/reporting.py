"""The core's reporter: after a suite, write CSV, Markdown and plots and print the summary table,
all from one ``harness.report.Report``.

The report covers the suite's output folder, not only this invocation: every run in its
runs.jsonl, merged per (variant, seed) as ``harness report DIR`` merges them, so that running one
variant again (``-v softmax``) updates its row instead of shrinking the table to that row."""
from __future__ import annotations

from typing import Any

from harness import hookimpl


def _folder_results(results: list[Any], output_dir: str) -> tuple[list[Any], str | None]:
    """(every run of the folder's runs.jsonl, then this invocation's, merged; the warning line
    about runs.jsonl lines skipped, or None)."""
    from harness.runlog import RunLog, merge_per_run

    contents = RunLog(output_dir).read()
    return merge_per_run([*contents.results, *results]), contents.warning()


@hookimpl
def suite_finished(suite: Any, results: list[Any], output_dir: str) -> None:
    from harness.registry import metric_higher_is_better
    from harness.report import ReportError, build_report, print_summary, reported_reference, write_report

    if not results:
        return
    merged, warning = _folder_results(results, output_dir)
    if warning:
        print(warning)
    metric = suite.suite.metric
    reference = reported_reference(merged, suite.reference)
    if reference != suite.reference:
        print(f"note: the reference variant {suite.reference!r} has no runs in {output_dir}; differences are "
              f"against {reference!r}. Add `-v {suite.reference}` to compare with the reference.")
    report = build_report(merged, metric, higher_is_better=metric_higher_is_better(metric),
                          reference=reference, title=suite.name, planned_seeds=suite.suite.seeds)
    try:
        paths = write_report(report, output_dir)
    except ReportError as exc:
        paths = {}
        print(f"warning: {exc}")
    print_summary(report.summary, report.metric, frame=report.frame)
    if len(merged) > len(results):
        print(f"The table covers all {len(merged)} runs of {output_dir} (this invocation: {len(results)}).")
    if paths:
        print(f"Results: {', '.join(str(p) for p in paths.values())}")
