"""MLflow tracking, a default plugin: one parent run per suite invocation, one nested child run per
(variant, seed). Names come from ``harness.tracking.schema``; writes go through ``RunWriter``."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from harness import hookimpl
from harness.tracking.client import RunWriter, enabled, invocation_tags, provenance
from harness.tracking.schema import (MLFLOW_STATUS, PARENT_ARTIFACTS, Artifact, Param, Role, Tag, flatten,
                                     run_count_metric)


class _Active:
    writer: RunWriter | None = None
    experiment_id: str | None = None
    parent_id: str | None = None
    child_id: str | None = None
    planned_runs = 0
    suite: Any = None                 # what each child's manifest reduces to its (variant, seed)


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
        **invocation_tags(),
    })
    writer.params(_Active.parent_id, {
        **flatten("", {"suite": suite.suite.model_dump(), "budget": suite.budget.model_dump() if suite.budget else {}},
                  skip_none=True),
        Param.PLANNED_RUNS: len(runs),
    })
    _Active.planned_runs = len(runs)
    _Active.suite = suite


@hookimpl
def run_started(run: Any) -> str | None:
    if _Active.writer is None or _Active.parent_id is None:
        return None
    _start_child(run)
    _Active.writer.watch_system(_Active.child_id)  # type: ignore[arg-type]
    return _Active.child_id


def _start_child(run: Any, **extra_tags: str) -> None:
    from harness.train import effective_train

    writer = _Active.writer
    assert writer is not None and _Active.experiment_id is not None
    train = effective_train(run.train)  # amp False on CPU, threads as a count: what the run applies
    _Active.child_id = writer.start(_Active.experiment_id, run.key, {
        **extra_tags,
        Tag.ROLE: Role.RUN, Tag.SUITE: run.suite, Tag.VARIANT: run.variant, Tag.SEED: str(run.seed),
        Tag.MIXER: run.mixer, Tag.MODEL: run.model, Tag.CONFIG_HASH: run.config_hash,
        Tag.OVERRIDES: ",".join(run.overrides), **provenance(threads=train["threads"]),
        **({Tag.CONTRACT: "skipped"} if run.contract_skipped else {}), **invocation_tags(),
    }, parent=_Active.parent_id)
    writer.params(_Active.child_id, flatten("", {
        "variant": run.variant, "mixer": run.mixer, "seed": run.seed, "model_name": run.model, "task": run.task,
        "model": run.model_config, "options": run.mixer_options, "train": train, "budget": run.budget or {},
        "task_options": run.task_options}, skip_none=True))


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
    # At the last training step, not step 0, so no chart gets a point after the last one. A run
    # trained here logged its final metrics at that step already (metrics_logged).
    final = result.efficiency if result.status == "finished" else {**result.metrics, **result.efficiency}
    writer.metrics(child, final, step=run.train["steps"])
    _log_budget(writer, child, result.efficiency)
    for name, path in result.artifacts.items():  # "profile/trace.json" -> artifact folder "profile"
        writer.artifact(child, path, name.rpartition("/")[0] or Artifact.PROFILE_DIR)
    if result.status != "skipped":  # a re-used result's manifest is on the run that produced it
        _log_manifest(writer, child, run)
    tags = {Tag.STATUS: result.status, **({Tag.ERROR: result.error} if result.error else {})}
    if "contended" in result.efficiency:
        tags[Tag.CONTENDED] = str(bool(result.efficiency["contended"])).lower()
    tags.update(getattr(result, "tags", None) or {})   # e.g. harness.compile_fallback
    writer.tags(child, tags)
    status = MLFLOW_STATUS[result.status]
    if result.status == "skipped":
        writer.end(child, status)
    else:
        writer.end_watch(status)
    _Active.child_id = None


def _log_manifest(writer: RunWriter, child: str, run: Any) -> None:
    """manifest.json and its params (harness.manifest); a failure to record it must not lose the run."""
    from harness.manifest import log_manifest
    from harness.tracking.schema import Role

    try:
        log_manifest(writer, child, _Active.suite, run, role=Role.RUN)
    except Exception as exc:  # noqa: BLE001
        writer.tags(child, {Tag.MANIFEST: f"not recorded: {type(exc).__name__}: {exc}"})


def _log_budget(writer: RunWriter, child: str, efficiency: dict[str, float]) -> None:
    """The budget also as params, so the MLflow table shows them beside the config."""
    if efficiency.get("target_params"):
        writer.params(child, {Param.TARGET: int(efficiency["target_params"]),
                              Param.ACHIEVED: int(efficiency["params"]),
                              Param.GAP: f"{efficiency['param_gap']:+.4%}",
                              Param.KNOB_VALUE: efficiency.get("knob_value")})


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
    if _Active.child_id is not None:
        writer.end(_Active.child_id, "KILLED")
    stopped = counts.get("killed") or len(results) < _Active.planned_runs   # interrupted between runs too
    writer.end(parent, "KILLED" if stopped else "FINISHED")
    _Active.writer = _Active.parent_id = _Active.child_id = _Active.suite = None
