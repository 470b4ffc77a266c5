"""MLflow as a results source: the child runs (one per (variant, seed)) of a suite's invocations
rebuilt into ``RunResult`` records, with what the parent runs recorded about the suite.

By default every invocation counts (every harness parent run of the experiment, whatever its
status: a killed process leaves its parent RUNNING), merged by ``harness.runlog.merge_per_run``:
per (variant, seed) the latest finished result, else the latest of any status. A child that re-used
an earlier result ("skipped") stands for the child that produced it, which is read instead where it
is among the runs read (it has the learning curves). Every tag, param and status name comes from
``harness.tracking.schema``.
"""
from __future__ import annotations

import json
from typing import Any

from harness.report.errors import ReportError
from harness.runlog import merge_per_run
from harness.specs import Run, RunResult
from harness.tracking.client import sqlite_path
from harness.tracking.client import tracking_uri as resolve_tracking_uri
from harness.tracking.schema import HARNESS_STATUS, SYSTEM_METRIC_PREFIX, Param, Role, Tag, metric_key

# Efficiency figures a child run logs as metrics; results are namespaced by split ("test/accuracy").
EFFICIENCY_KEYS = (
    "params", "target_params", "param_gap", "flops_per_token", "samples_per_s", "tokens_per_s",
    "peak_mem_mb", "train_time_s", "knob_value", "contended", "decayed_params", "threads",
)


def recorded_flag(value: Any) -> bool | None:
    """A recorded flag (a tag's "true", suite.json's true, ...) as a bool; None where none was recorded."""
    if value is None:
        return None
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _client(explicit_uri: str | None) -> tuple[Any, str]:
    uri = resolve_tracking_uri(explicit_uri)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        # MLflow would silently create an empty store; say there is none instead.
        raise ReportError(f"no MLflow store at {uri} (file {db} does not exist)")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri), uri


def _search_all(client: Any, experiment_id: str, filter_string: str, order_by: list[str] | None = None) -> list[Any]:
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000,
                                  order_by=order_by, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _history(client: Any, run_id: str, metrics: dict[str, float]) -> list[dict[str, Any]]:
    """The curves of a child run as [{step, key: value, ...}]; sets each metric to its final value."""
    by_step: dict[int, dict[str, float]] = {}
    for key in metrics:
        points = client.get_metric_history(run_id, key)
        if len(points) < 2 and all(p.step == 0 for p in points):
            continue   # logged once: a final value only
        points = sorted(points, key=lambda p: (p.timestamp, p.step))
        # A final value shares its name with the history ("val/accuracy"): it is the one logged
        # last, whatever its step. History points go forward in steps; a point logged after a
        # later step (a final value logged at step 0) is not part of the curve.
        metrics[key] = float(points[-1].value)
        top = -1
        for p in points:
            if p.step >= top:
                by_step.setdefault(int(p.step), {})[key] = float(p.value)
                top = p.step
    return [{"step": step, **values} for step, values in sorted(by_step.items())]


def _budget(params: dict[str, str]) -> dict[str, str] | None:
    """The child's budget from its "budget.*" params (strings; "knob" names the matched key)."""
    budget = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("budget.")}
    return budget or None


def _child_run(child: Any, metric: str, suite: str) -> Run:
    tags, params = child.data.tags, child.data.params
    overrides = tuple(k.strip() for k in (tags.get(Tag.OVERRIDES) or "").split(",") if k.strip())
    try:
        seed = int(tags.get(Tag.SEED, params.get("seed", 0)))
    except ValueError:
        seed = 0
    return Run(
        suite=tags.get(Tag.SUITE, suite),
        variant=tags.get(Tag.VARIANT) or child.info.run_name or child.info.run_id,
        seed=seed,
        task=tags.get(Tag.TASK, params.get("task", "")),
        model=tags.get(Tag.MODEL, params.get("model", "")),
        mixer=tags.get(Tag.MIXER, params.get("mixer", "")),
        metric=metric,
        overrides=overrides,
        budget=_budget(params),
    )


def _child_result(client: Any, child: Any, metric: str, suite: str) -> RunResult:
    tags = child.data.tags
    # MLflow's own system metrics (log_system_metrics) are monitoring, not results
    latest = {k: v for k, v in child.data.metrics.items() if not k.startswith(SYSTEM_METRIC_PREFIX)}
    # results are namespaced ("test/accuracy", "val/loss"); efficiency figures are not ("params")
    efficiency = {k: float(v) for k, v in latest.items() if k in EFFICIENCY_KEYS or "/" not in k}
    metrics = {k: float(v) for k, v in latest.items() if k not in efficiency}
    history = _history(client, child.info.run_id, metrics)
    status = tags.get(Tag.STATUS) or HARNESS_STATUS.get(child.info.status, "running")
    return RunResult(run=_child_run(child, metric, suite), status=status, metrics=metrics,
                     efficiency=efficiency, history=history, error=tags.get(Tag.ERROR) or None,
                     run_id=child.info.run_id)


def _parent_runs(client: Any, uri: str, experiment: str, parent_run_id: str | None) -> tuple[Any, list[Any]]:
    """(experiment, parent runs, oldest first): the given one, else every harness parent run."""
    from harness.redact import redact  # a URI's password never reaches the console
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ReportError(f"no MLflow experiment {experiment!r} at {redact(uri)} "
                          f"(experiments: {', '.join(names) or 'none'})")
    if parent_run_id:
        parent = client.get_run(parent_run_id)
        if parent.info.experiment_id != exp.experiment_id:
            raise ReportError(f"run {parent_run_id} is not in experiment {experiment!r}")
        return exp, [parent]
    parents = _search_all(client, exp.experiment_id, f"tags.`{Tag.ROLE}` = '{Role.PARENT}'",
                          order_by=["attributes.start_time ASC"])
    if not parents:
        raise ReportError(f"experiment {experiment!r} at {redact(uri)} has no harness parent run "
                          f"(tag {Tag.ROLE}={Role.PARENT})")
    return exp, parents


def _children(client: Any, experiment_id: str, parents: list[Any]) -> list[Any]:
    """The (variant, seed) child runs of ``parents``, oldest first; a re-used result's child left
    out where the child that produced it is among them."""
    children = [c for parent in parents
                for c in _search_all(client, experiment_id, f"tags.`{Tag.PARENT_RUN}` = '{parent.info.run_id}'")]
    children = [c for c in children if c.data.tags.get(Tag.ROLE, Role.RUN) == Role.RUN]
    ids = {c.info.run_id for c in children}
    children = [c for c in children if c.data.tags.get(Tag.REUSED_RUN_ID) not in ids]
    return sorted(children, key=lambda c: c.info.start_time or 0)


def _planned_seeds(parents: list[Any]) -> list[int]:
    """The seeds the parents planned (their "suite.seeds" param), all together."""
    seeds: set[int] = set()
    for parent in parents:
        try:
            seeds.update(int(s) for s in json.loads(parent.data.params.get("suite.seeds", "[]")))
        except (ValueError, TypeError):
            continue   # not a list of seeds: the results' own seeds still count
    return sorted(seeds)


def _recorded_metric(metric: str | None, children: list[Any]) -> str | None:
    """The parent's metric under the name the children logged it."""
    if metric and not any(metric in c.data.metrics for c in children):
        # the tracker logs metric names made MLflow-safe: test/ndcg@10 -> test/ndcg_at_10
        safe = metric_key(metric)
        if any(safe in c.data.metrics for c in children):
            return safe
    return metric


def _missing(parent: Any, results: list[RunResult]) -> int:
    """Planned runs one invocation has no child run for (e.g. re-used results the tracker did not log)."""
    try:
        return max(0, int(parent.data.params.get(Param.PLANNED_RUNS, "")) - len(results))
    except ValueError:
        return 0


def load_results_mlflow(
    experiment: str,
    tracking_uri: str | None = None,
    parent_run_id: str | None = None,
) -> tuple[list[RunResult], dict[str, Any]]:
    """Rebuild the results of every invocation of ``experiment`` merged (see the module), or of
    one invocation with ``parent_run_id``.

    Returns (results in first-run order, info) with info keys experiment, suite, tracking_uri,
    parents ([{run_id, start_time (ms), status}] of the parent runs read, oldest first),
    parent_run_id (the one given, else None), metric, reference, higher_is_better (the latest
    parent's; None where it lacks the tag), planned_seeds, and missing (with ``parent_run_id``:
    planned runs it has no child run for; else 0)."""
    client, uri = _client(tracking_uri)
    exp, parents = _parent_runs(client, uri, experiment, parent_run_id)
    children = _children(client, exp.experiment_id, parents)
    ptags = parents[-1].data.tags
    metric = _recorded_metric(ptags.get(Tag.METRIC), children)
    results = merge_per_run(_child_result(client, c, metric or "", experiment) for c in children)
    info = {
        "experiment": experiment,
        "suite": experiment,
        "tracking_uri": uri,
        "parents": [{"run_id": p.info.run_id, "start_time": p.info.start_time, "status": p.info.status}
                    for p in parents],
        "parent_run_id": parent_run_id,
        "metric": metric,
        "reference": ptags.get(Tag.REFERENCE),
        "higher_is_better": recorded_flag(ptags.get(Tag.HIGHER_IS_BETTER)),
        "planned_seeds": _planned_seeds(parents),
        "missing": _missing(parents[0], results) if parent_run_id else 0,
    }
    return results, info
