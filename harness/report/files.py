"""``Report``: the frame and summary of a set of results, built once (``build_report``) for the
console, the files and the plots alike; and its files in a folder: results.csv (one row per run),
summary.csv (one row per variant), results.md and the two plots (names from
``harness.tracking.schema.Artifact``)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from harness.report.frame import results_frame, summarize
from harness.report.markdown import markdown_report
from harness.report.plots import plot_learning_curves, plot_metric_vs_params
from harness.specs import RunResult
from harness.tracking.schema import Artifact

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


@dataclass
class Report:
    """What every output of a report is made from, built once by ``build_report``."""

    results: list[RunResult]
    frame: "pd.DataFrame"          # results_frame(results)
    summary: "pd.DataFrame"        # summarize(frame, ...)
    metric: str
    higher_is_better: bool
    reference: str | None          # the reference variant the summary used (None without results)
    title: str


def build_report(
    results: Iterable[RunResult],
    metric: str,
    *,
    higher_is_better: bool = True,
    reference: str | None = None,
    title: str = "results",
) -> Report:
    """The frame and summary of ``results`` (reference: the first variant unless given)."""
    results = list(results)
    frame = results_frame(results)
    summary = summarize(frame, metric, higher_is_better, reference)
    return Report(results=results, frame=frame, summary=summary, metric=metric,
                  higher_is_better=bool(higher_is_better), reference=summary.attrs.get("reference"),
                  title=title)


def write_report(report: Report, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write the files of ``report`` into ``out_dir`` (created if need be).

    Returns {file name: path} for the files written; a plot with no data is skipped (and absent)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    path = out / Artifact.RESULTS_CSV
    report.frame.to_csv(path, index=False)
    written[path.name] = path
    path = out / Artifact.SUMMARY_CSV
    report.summary.to_csv(path, index=False)
    written[path.name] = path
    path = out / Artifact.RESULTS_MD
    path.write_text(markdown_report(report.summary, report.frame, report.metric, report.title), encoding="utf-8")
    written[path.name] = path
    plots: tuple[tuple[str, Callable[[Path], bool]], ...] = (
        (Artifact.LEARNING_CURVES, lambda p: plot_learning_curves(report.results, p, report.metric, report.title)),
        (Artifact.METRIC_VS_PARAMS, lambda p: plot_metric_vs_params(report.frame, p, report.metric, report.title)),
    )
    for name, plot in plots:
        path = out / name
        if plot(path):
            written[name] = path
        else:
            path.unlink(missing_ok=True)   # no data now: do not leave an earlier report's plot
    return written


def write_reports(
    results: list[RunResult],
    out_dir: str | os.PathLike[str],
    *,
    metric: str,
    higher_is_better: bool = True,
    reference: str | None = None,
    title: str = "results",
) -> dict[str, Path]:
    """Build the report of ``results`` and write its files (see ``write_report``)."""
    report = build_report(results, metric, higher_is_better=higher_is_better, reference=reference, title=title)
    return write_report(report, out_dir)
