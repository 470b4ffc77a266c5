"""``Report``: the frame and summary of a set of results, built once (``build_report``) for the
console, the files and the plots alike; and its files in a folder: results.csv (one row per run),
summary.csv (one row per variant), results.md and the two plots (names from
``harness.tracking.schema.Artifact``).

A report never replaces a more complete one: ``write_report`` refuses a folder whose results.csv
or runs.jsonl holds runs (variant, seed) that the report lacks, or that finished there and not in
the report (``missing_runs``), so reporting one invocation cannot shrink a suite's table.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from harness.report.errors import ReportError
from harness.report.frame import results_frame, summarize
from harness.report.markdown import markdown_report
from harness.report.plots import plot_learning_curves, plot_metric_vs_cost
from harness.runlog import FINISHED_STATUSES, RunLog
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
    planned_seeds: Iterable[int] | None = None,
) -> Report:
    """The frame and summary of ``results`` (reference: the first variant unless given; planned
    seeds: ``planned_seeds`` and every seed of the results)."""
    results = list(results)
    frame = results_frame(results)
    summary = summarize(frame, metric, higher_is_better, reference, planned_seeds)
    return Report(results=results, frame=frame, summary=summary, metric=metric,
                  higher_is_better=bool(higher_is_better), reference=summary.attrs.get("reference"),
                  title=title)


def _runs_held(out: Path) -> dict[tuple[str, int], bool]:
    """(variant, seed) -> finished, for every run the results.csv and runs.jsonl in ``out`` hold."""
    import pandas as pd

    held: dict[tuple[str, int], bool] = {}
    for r in RunLog(out).read().results:
        key = (r.run.variant, int(r.run.seed))
        held[key] = held.get(key, False) or r.status in FINISHED_STATUSES
    csv = out / Artifact.RESULTS_CSV
    if csv.is_file():
        try:
            rows = pd.read_csv(csv, usecols=["variant", "seed", "status"]).dropna(subset=["variant", "seed"])
        except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
            rows = pd.DataFrame(columns=["variant", "seed", "status"])   # not a report's table: nothing to keep
        for variant, seed, status in rows.itertuples(index=False):
            key = (str(variant), int(seed))
            held[key] = held.get(key, False) or status in FINISHED_STATUSES
    return held


def missing_runs(report: Report, out_dir: str | os.PathLike[str]) -> list[str]:
    """"variant/seedN" of each run that ``out_dir`` holds (results.csv, runs.jsonl) and ``report``
    lacks, or holds finished where the report's did not finish."""
    mine = {(r.run.variant, int(r.run.seed)): r.status in FINISHED_STATUSES for r in report.results}
    return [f"{variant}/seed{seed}" for (variant, seed), finished in _runs_held(Path(out_dir)).items()
            if (variant, seed) not in mine or (finished and not mine[variant, seed])]


def write_report(report: Report, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write the files of ``report`` into ``out_dir`` (created if need be).

    Returns {file name: path} for the files written; a plot with no data is skipped (and absent).
    Raises ``ReportError`` (nothing written) where ``out_dir`` holds runs the report lacks."""
    out = Path(out_dir)
    lacking = missing_runs(report, out)
    if lacking:
        shown = ", ".join(lacking[:4]) + (f" and {len(lacking) - 4} more" if len(lacking) > 4 else "")
        raise ReportError(f"not overwriting {out}: it holds runs this report lacks ({shown}); "
                          f"pass --out DIR to write this report elsewhere")
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
        (Artifact.METRIC_VS_COST, lambda p: plot_metric_vs_cost(report.frame, p, report.metric, report.title)),
    )
    for name, plot in plots:
        path = out / name
        if plot(path):
            written[name] = path
        else:
            path.unlink(missing_ok=True)   # no data now: do not leave an earlier report's plot
    (out / Artifact.METRIC_VS_PARAMS).unlink(missing_ok=True)   # an older report's plot, replaced by the cost plot
    return written


def write_reports(
    results: list[RunResult],
    out_dir: str | os.PathLike[str],
    *,
    metric: str,
    higher_is_better: bool = True,
    reference: str | None = None,
    title: str = "results",
    planned_seeds: Iterable[int] | None = None,
) -> dict[str, Path]:
    """Build the report of ``results`` and write its files (see ``write_report``)."""
    report = build_report(results, metric, higher_is_better=higher_is_better, reference=reference, title=title,
                          planned_seeds=planned_seeds)
    return write_report(report, out_dir)
