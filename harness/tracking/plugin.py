"""MLflow tracking, a default plugin: one parent run per suite invocation, one nested child run per
(variant, seed). Names come from ``harness.tracking.schema``; writes go through ``RunWriter``."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from harness import hookimpl
from harness.tracking.client import RunWriter, enabled, provenance
from harness.tracking.schema import (MLFLOW_STATUS, PARENT_ARTIFACTS, Artifact, Param, Role, Tag, flatten,
                                     run_count_metric)


class _Active:
    writer: RunWriter | None = None
    experiment_id: str | None = None
    parent_id: str | None = None
    child_id: str | None = None


@hookimpl
def suite_started(suite: Any, runs: list[Any], output_dir: str) -> None:
    if not enabled():
        return
    from harness.registry import metric_higher_is_better

    writer = _Active.writer = RunWriter()
    _Active.experiment_id = writer.experiment(suite.name)
    _Active.parent_id = writer.start(_Active.experiment_id, f"{suite.name}-{time.strftime('%Y%m%d-%H%M%S')}", {
        Tag.ROLE: Role.PARENT, Tag.METRIC: suite.suite.metric, Tag.REFERENCE: suite.reference,
        Tag.HIGHER_IS_BETTER: str(metric_higher_is_better(suite.suite.metric)).lower(), **provenance(),
    })
    writer.params(_Active.parent_id, {
        **flatten("", {"suite": suite.suite.model_dump(), "budget": suite.budget.model_dump() if suite.budget else {}}),
        Param.PLANNED_RUNS: len(runs),
    })


@hookimpl
def run_started(run: Any) -> str | None:
    if _Active.writer is None or _Active.parent_id is None:
        return None
    _start_child(run)
    _Active.writer.watch_system(_Active.child_id)  # type: ignore[arg-type]
    return _Active.child_id


def _start_child(run: Any, **extra_tags: str) -> None:
    writer = _Active.writer
    assert writer is not None and _Active.experiment_id is not None
    _Active.child_id = writer.start(_Active.experiment_id, run.key, {
        **extra_tags,
        Tag.ROLE: Role.RUN, Tag.SUITE: run.suite, Tag.VARIANT: run.variant, Tag.SEED: str(run.seed),
        Tag.MIXER: run.mixer, Tag.MODEL: run.model, Tag.CONFIG_HASH: run.config_hash,
        Tag.OVERRIDES: ",".join(run.overrides), **provenance(),
    }, parent=_Active.parent_id)
    writer.params(_Active.child_id, flatten("", {
        "variant": run.variant, "mixer": run.mixer, "seed": run.seed, "model_name": run.model, "task": run.task,
        "model": run.model_config, "options": run.mixer_options, "train": run.train, "budget": run.budget or {},
        "task_options": run.task_options}))


@hookimpl
def metrics_logged(run: Any, metrics: dict[str, float], step: int) -> None:
    if _Active.writer is not None and _Active.child_id is not None:
        _Active.writer.metrics(_Active.child_id, metrics, step)


@hookimpl
def run_finished(run: Any, result: Any) -> None:
    writer = _Active.writer
    if writer is None or _Active.parent_id is None:
        return
    if result.status == "skipped":
        # A re-used result still gets a child, so this invocation's parent holds the whole suite.
        _start_child(run, **{Tag.REUSED_RUN_ID: result.run_id or ""})
    child = _Active.child_id
    if child is None:
        return
    writer.metrics(child, {**result.metrics, **result.efficiency})
    if result.efficiency.get("target_params"):
        # The budget also as params, so the MLflow table shows them beside the config.
        writer.params(child, {Param.TARGET: int(result.efficiency["target_params"]),
                              Param.ACHIEVED: int(result.efficiency["params"]),
                              Param.GAP: f"{result.efficiency['param_gap']:+.4%}"})
    for path in result.artifacts.values():
        writer.artifact(child, path, Artifact.PROFILE_DIR)
    writer.tags(child, {Tag.STATUS: result.status, **({Tag.ERROR: result.error} if result.error else {})})
    status = MLFLOW_STATUS[result.status]
    if result.status == "skipped":
        writer.end(child, status)
    else:
        writer.end_watch(status)
    _Active.child_id = None


@hookimpl(trylast=True)  # after the reporter has written the files logged here
def suite_finished(suite: Any, results: list[Any], output_dir: str) -> None:
    writer, parent = _Active.writer, _Active.parent_id
    if writer is None or parent is None:
        return
    out = Path(output_dir)
    for name in PARENT_ARTIFACTS:
        if (out / name).exists():
            writer.artifact(parent, out / name)
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    writer.metrics(parent, {run_count_metric(k): v for k, v in counts.items()})
    writer.end_watch("KILLED")  # a child left open by an interrupt
    writer.end(parent, "KILLED" if counts.get("killed") else "FINISHED")
    _Active.writer = _Active.parent_id = _Active.child_id = None
