"""What ``harness report EXPERIMENT_OR_DIR`` reports on.

A suite's output folder is read here: its ``runs.jsonl`` (through ``harness.runlog``, the one
reader of that file, tolerant as resume is: lines that are not results are skipped, with a warning:
``read_results_dir``) and its ``suite.json`` (``read_suite_info``); an MLflow experiment is read by
``harness.report.mlflow_reader`` (every invocation merged, or one with ``--parent-run``).
``open_source`` reads either, with what the suite recorded: its name, metric, reference, direction
and planned seeds. ``choose_settings`` then settles the metric, reference and direction of the
report from the user's options and that record.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness.report.errors import ReportError
from harness.report.mlflow_reader import load_results_mlflow, recorded_flag
from harness.runlog import FINISHED_STATUSES, RunLog, merge_per_run
from harness.specs import RunResult
from harness.tracking.schema import Artifact

RESULTS_ROOT = Path("results")    # where `harness run` writes suites by default
MAX_HINTS = 20


def _runs_file(path: str | os.PathLike[str]) -> Path:
    """The ``runs.jsonl`` of a folder, or ``path`` itself when it names the file."""
    return RunLog(Path(path)).path


def read_results_dir(path: str | os.PathLike[str]) -> tuple[list[RunResult], str | None]:
    """(the results of ``runs.jsonl`` in ``path`` (or ``path`` itself when it is the file), merged
    per (variant, seed) by ``merge_per_run``; the warning line about skipped lines, or None).

    A line that is not a result (a last line cut short by a crash) is skipped, as resume skips it:
    the runs before and after it still count, and the warning names the file and the lines."""
    log = RunLog(Path(path))
    if not log.path.is_file():
        raise ReportError(f"no {Artifact.RUNS} in {Path(path)}")
    contents = log.read()
    return merge_per_run(contents.results), contents.warning()


def load_results_dir(path: str | os.PathLike[str],
                     on_warning: Callable[[str], None] | None = None) -> list[RunResult]:
    """The results of ``read_results_dir``; its warning goes to ``on_warning`` (default:
    ``warnings.warn``)."""
    results, warning = read_results_dir(path)
    if warning:
        (on_warning or warnings.warn)(warning)
    return results


def read_suite_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``suite.json`` next to ``runs.jsonl`` (name, metric, reference, higher_is_better), or {}."""
    file = _runs_file(path).parent / Artifact.SUITE
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return data if isinstance(data, dict) else {}


@dataclass
class ResultsSource:
    """Results and what their suite recorded (None where it recorded nothing)."""

    name: str                      # EXPERIMENT_OR_DIR as given
    results: list[RunResult]
    title: str                     # the suite's name
    default_out: Path              # where the report goes without --out
    metric: str | None             # the suite's metric (else the first run's)
    reference: str | None
    higher_is_better: bool | None  # the direction recorded for the suite's metric
    missing: int = 0               # MLflow, one invocation: planned runs its parent has no child run for
    parent_run_id: str | None = None
    planned_seeds: list[int] = field(default_factory=list)   # the suite's seeds, as recorded
    notes: list[str] = field(default_factory=list)           # lines to show before the table


@dataclass(frozen=True)
class ReportSettings:
    metric: str
    reference: str
    higher_is_better: bool


def _result_dirs(root: Path) -> list[str]:
    """The folders just below ``root`` that hold a runs.jsonl (the first few)."""
    if not root.is_dir():
        return []
    return sorted(str(p.parent) for p in root.glob(f"*/{Artifact.RUNS}"))[:MAX_HINTS]


def _first_metric(results: list[RunResult]) -> str | None:
    return next((r.run.metric for r in results if r.run.metric), None)


def _suite_seeds(suite: dict[str, Any]) -> list[int]:
    """The seeds suite.json's resolved config planned, or [] where it records none."""
    seeds = ((suite.get("config") or {}).get("suite") or {}).get("seeds") or []
    try:
        return sorted({int(s) for s in seeds})
    except (TypeError, ValueError):
        return []


def _from_dir(name: str, target: Path) -> ResultsSource:
    file = _runs_file(target)
    if not file.is_file():
        if not target.exists():
            raise ReportError(f"no such file: {target}")
        found = _result_dirs(target)
        hint = f"; result dirs inside: {', '.join(found)}" if found else ""
        raise ReportError(f"{target} has no {Artifact.RUNS}{hint}")
    results, warning = read_results_dir(target)
    suite = read_suite_info(target)
    return ResultsSource(
        name=name, results=results,
        title=str(suite.get("name") or (results[0].run.suite if results else file.parent.name)),
        default_out=file.parent, metric=suite.get("metric") or _first_metric(results),
        reference=suite.get("reference"), higher_is_better=recorded_flag(suite.get("higher_is_better")),
        planned_seeds=_suite_seeds(suite), notes=[warning] if warning else [],
    )


def parents_line(experiment: str, parents: list[dict[str, Any]]) -> str:
    """"read 2 MLflow parent runs of 'vision' (oldest first): 3f2a1b9c… 2024-05-01 12:00 FINISHED, …"."""
    def one(p: dict[str, Any]) -> str:
        start = time.strftime("%Y-%m-%d %H:%M", time.localtime((p.get("start_time") or 0) / 1000))
        return f"{p['run_id']} started {start} ({p.get('status') or '?'})"

    runs = "run" if len(parents) == 1 else "runs"
    return f"read {len(parents)} MLflow parent {runs} of {experiment!r} (oldest first): " + ", ".join(map(one, parents))


def _safe_name(name: str) -> str:
    return name.replace("/", "_").replace(os.sep, "_")


def _from_mlflow(experiment: str, tracking_uri: str | None, parent_run_id: str | None) -> ResultsSource:
    try:
        results, info = load_results_mlflow(experiment, tracking_uri, parent_run_id)
    except ReportError as exc:
        dirs = _result_dirs(RESULTS_ROOT)
        hint = f"; result dirs: {', '.join(dirs)}" if dirs else ""
        raise ReportError(f"{experiment!r} is not a results directory; {exc}{hint}") from None
    # one invocation is a part of the suite: its own folder, beside the suite's, never over it
    folder = _safe_name(experiment) + (f"-{parent_run_id[:8]}" if parent_run_id else "")
    return ResultsSource(
        name=experiment, results=results, title=experiment, default_out=RESULTS_ROOT / folder,
        metric=info.get("metric") or _first_metric(results), reference=info.get("reference"),
        higher_is_better=info.get("higher_is_better"), missing=info.get("missing", 0),
        parent_run_id=info.get("parent_run_id"), planned_seeds=list(info.get("planned_seeds") or []),
        notes=[parents_line(experiment, info.get("parents") or [])],
    )


def open_source(experiment_or_dir: str, tracking_uri: str | None = None,
                parent_run_id: str | None = None) -> ResultsSource:
    """A results directory (with runs.jsonl) or a runs.jsonl file, else an MLflow experiment name;
    raises ``ReportError`` saying what is there instead (result dirs nearby, MLflow experiments)."""
    target = Path(experiment_or_dir)
    if target.is_dir() or target.suffix == ".jsonl":
        return _from_dir(experiment_or_dir, target)
    return _from_mlflow(experiment_or_dir, tracking_uri, parent_run_id)


def metric_direction(metric: str, explicit: bool | None = None, *, suite_metric: str | None = None,
                     recorded: bool | None = None) -> bool:
    """True where higher is better: ``explicit`` if given, else the direction ``recorded`` with the
    results when ``metric`` is the suite's metric, else the metric registry's."""
    if explicit is not None:
        return explicit
    if recorded is not None and metric == suite_metric:
        return recorded
    from harness.registry import UnknownNameError, metric_higher_is_better

    try:
        return metric_higher_is_better(metric)
    except UnknownNameError:
        raise ReportError(f"metric {metric!r} is not registered and no direction is recorded for it; "
                          f"pass --higher-is-better or --lower-is-better") from None


def choose_settings(source: ResultsSource, metric: str | None = None, reference: str | None = None,
                    higher_is_better: bool | None = None) -> ReportSettings:
    """The user's metric, reference and direction where given, else the suite's (the reference
    falls back to the first variant); ``ReportError`` for choices the results cannot serve."""
    results = source.results
    if not results:
        raise ReportError(f"{source.name!r} has no runs to report")
    chosen_metric = metric or source.metric
    if not chosen_metric:
        raise ReportError("no metric recorded for these runs; pass --metric")
    finished = [r for r in results if r.status in FINISHED_STATUSES]
    if finished and not any(chosen_metric in r.metrics for r in finished):
        seen = sorted({k for r in results for k in r.metrics})
        raise ReportError(f"no finished run has metric {chosen_metric!r} (metrics: {', '.join(seen) or 'none'})")
    direction = metric_direction(chosen_metric, higher_is_better, suite_metric=source.metric,
                                 recorded=source.higher_is_better)
    variants = list(dict.fromkeys(r.run.variant for r in results))
    if reference and reference not in variants:
        raise ReportError(f"unknown reference variant {reference!r} (variants: {', '.join(variants)})")
    return ReportSettings(metric=chosen_metric, reference=reference or reported_reference(results, source.reference),
                          higher_is_better=direction)


def reported_reference(results: list[RunResult], suite_reference: str | None) -> str:
    """The suite's reference where it has runs, else the first variant run (``harness run -v X``
    into a fresh folder reports X against itself rather than failing)."""
    variants = list(dict.fromkeys(r.run.variant for r in results))
    return suite_reference if suite_reference in variants else variants[0]
