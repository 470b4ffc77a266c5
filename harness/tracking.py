"""MLflow tracking, a default plugin: one parent run per suite invocation, one nested child run per
(variant, seed). The tracking URI comes from ``--tracking-uri``, then ``MLFLOW_TRACKING_URI``, then
``sqlite:///mlruns/mlflow.db`` with artifacts under ``mlruns/``."""
from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from harness import hookimpl

DEFAULT_URI = "sqlite:///mlruns/mlflow.db"
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./: ]")


class _State:
    enabled = True
    uri: str | None = None
    parent_id: str | None = None
    child_id: str | None = None


def configure(*, enabled: bool = True, tracking_uri: str | None = None) -> None:
    """Called by the CLI before a suite runs (``--no-track``, ``--tracking-uri``)."""
    _State.enabled, _State.uri = enabled, tracking_uri


def tracking_uri(explicit: str | None = None) -> str:
    """``explicit``, else ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else the local sqlite store."""
    return explicit or _State.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def metric_key(name: str) -> str:
    """MLflow allows no '@' and a few other characters: ndcg@10 -> ndcg_at_10."""
    return _UNSAFE.sub("_", name.replace("@", "_at_"))


def flatten(prefix: str, value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: str(value)[:6000]}


def connect(explicit_uri: str | None = None) -> Any:
    """The mlflow module pointed at the resolved tracking URI (creating mlruns/ for the local store)."""
    import logging

    import mlflow

    for name in ("mlflow", "alembic"):  # database set-up and system-metrics chatter would bury the progress bars
        logging.getLogger(name).setLevel(logging.WARNING)
    # Our runs are often shorter than MLflow's default 10 s sampling interval.
    mlflow.set_system_metrics_sampling_interval(2)
    mlflow.set_system_metrics_samples_before_logging(1)

    uri = tracking_uri(explicit_uri)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return mlflow


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def device_label() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({torch.get_num_threads()} threads)"


def versions() -> str:
    from harness.plugins import plugin_infos

    import torch

    parts = [f"torch=={torch.__version__}"]
    parts += [f"{i.name}=={i.version}" for i in plugin_infos() if not i.default and not i.error]
    return ",".join(parts)


@hookimpl
def suite_started(suite: Any, runs: list[Any], output_dir: str) -> None:
    if not _State.enabled:
        return
    from harness.registry import metric_higher_is_better

    mlflow = connect()
    artifacts = None
    if tracking_uri() == DEFAULT_URI:  # keep artifacts beside the database, not in ./mlartifacts
        artifacts = Path("mlruns/artifacts").resolve().as_uri()
    if mlflow.get_experiment_by_name(suite.name) is None:
        mlflow.create_experiment(suite.name, artifact_location=artifacts)
    mlflow.set_experiment(suite.name)
    parent = mlflow.start_run(run_name=f"{suite.name}-{time.strftime('%Y%m%d-%H%M%S')}", tags={
        "harness.role": "parent", "harness.metric": suite.suite.metric, "harness.reference": suite.reference,
        "harness.higher_is_better": str(metric_higher_is_better(suite.suite.metric)).lower(), "harness.git_commit": git_commit(),
        "harness.versions": versions(), "harness.device": device_label(),
    })
    _State.parent_id = parent.info.run_id
    mlflow.log_params({k: v for k, v in flatten("", {"suite": suite.suite.model_dump(), "budget":
                       suite.budget.model_dump() if suite.budget else {}}).items()})
    mlflow.log_param("runs", len(runs))


@hookimpl
def run_started(run: Any) -> None:
    if not _State.enabled or _State.parent_id is None:
        return
    _start_child(run, system_metrics=True)


def _start_child(run: Any, system_metrics: bool, **extra_tags: str) -> None:
    mlflow = connect()
    child = mlflow.start_run(run_name=run.key, nested=True, log_system_metrics=system_metrics, tags={
        **extra_tags,
        "harness.role": "run", "harness.suite": run.suite, "harness.variant": run.variant,
        "harness.seed": str(run.seed), "harness.mixer": run.mixer, "harness.model": run.model,
        "harness.config_hash": run.config_hash, "harness.overrides": ",".join(run.overrides),
        "harness.git_commit": git_commit(), "harness.versions": versions(), "harness.device": device_label(),
    })
    _State.child_id = child.info.run_id
    params = flatten("", {"variant": run.variant, "mixer": run.mixer, "seed": run.seed, "model_name": run.model,
                          "task": run.task, "model": run.model_config, "options": run.mixer_options,
                          "train": run.train, "budget": run.budget or {}, "task_options": run.task_options})
    mlflow.log_params(params)


@hookimpl
def metrics_logged(run: Any, metrics: dict[str, float], step: int) -> None:
    if not _State.enabled or _State.child_id is None:
        return
    connect().log_metrics({metric_key(k): float(v) for k, v in metrics.items()}, step=step)


@hookimpl
def run_finished(run: Any, result: Any) -> None:
    if not _State.enabled or _State.parent_id is None:
        return
    if result.status == "skipped":
        # A re-used result still gets a child, so this invocation's parent holds the whole suite.
        _start_child(run, system_metrics=False, **{"harness.reused_run_id": result.run_id or ""})
    if _State.child_id is None:
        return
    mlflow = connect()
    final = {**result.metrics, **{k: v for k, v in result.efficiency.items() if v is not None}}
    if final:
        mlflow.log_metrics({metric_key(k): float(v) for k, v in final.items()})
    if result.efficiency.get("target_params"):
        # The budget also as params, so the MLflow table shows them beside the config.
        mlflow.log_params({"params.target": int(result.efficiency["target_params"]),
                           "params.achieved": int(result.efficiency["params"]),
                           "params.gap": f"{result.efficiency['param_gap']:+.4%}"})
    for path in result.artifacts.values():
        mlflow.log_artifact(path, artifact_path="profile")
    mlflow.set_tag("harness.status", result.status)
    if result.error:
        mlflow.set_tag("harness.error", result.error[:5000])
    if result.status != "skipped":
        result.run_id = _State.child_id
    status = {"finished": "FINISHED", "skipped": "FINISHED", "failed": "FAILED", "killed": "KILLED"}[result.status]
    mlflow.end_run(status=status)
    _State.child_id = None


@hookimpl(trylast=True)  # after the reporter has written the files logged here
def suite_finished(suite: Any, results: list[Any], output_dir: str) -> None:
    if not _State.enabled or _State.parent_id is None:
        return
    mlflow = connect()
    out = Path(output_dir)
    for name in ("suite.json", "results.csv", "summary.csv", "results.md", "learning_curves.png",
                 "metric_vs_params.png"):
        if (out / name).exists():
            mlflow.log_artifact(str(out / name))
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    mlflow.log_metrics({f"runs_{k}": v for k, v in counts.items()})
    status = "KILLED" if counts.get("killed") else "FINISHED"
    while mlflow.active_run() is not None:
        mlflow.end_run(status=status)
    _State.parent_id = None
