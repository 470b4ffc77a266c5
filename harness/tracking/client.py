"""The one connection to MLflow: where it is, and a writer that every harness writer uses.

The tracking URI comes from ``--tracking-uri``, then ``MLFLOW_TRACKING_URI``, then
``sqlite:///mlruns/mlflow.db`` with artifacts under ``mlruns/artifacts``. ``RunWriter`` speaks to
MLflow through ``MlflowClient`` with explicit run ids (no global active run), so it is safe in tuning
workers and in the runner alike; only system metrics need MLflow's fluent API, and only the runner's
child runs ask for them.
"""
from __future__ import annotations

import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from harness.tracking.schema import (DEFAULT_ARTIFACT_DIR, DEFAULT_URI, MAX_PARAM_CHARS, MAX_TAG_CHARS, Tag,
                                     metric_key)


class _Settings:
    enabled = True
    uri: str | None = None
    tags: dict[str, str] = {}


def configure(*, enabled: bool = True, tracking_uri: str | None = None, tags: dict[str, str] | None = None) -> None:
    """Called by the CLI before a suite runs (``--no-track``, ``--tracking-uri``); ``tags`` go on
    every run the invocation opens (``harness reproduce``: ``reproduces=<run id>``)."""
    _Settings.enabled, _Settings.uri, _Settings.tags = enabled, tracking_uri, dict(tags or {})


def enabled() -> bool:
    return _Settings.enabled


def invocation_tags() -> dict[str, str]:
    return dict(_Settings.tags)


def tracking_uri(explicit: str | None = None) -> str:
    """``explicit``, else ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else the local sqlite store."""
    return explicit or _Settings.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for other stores and in-memory ones."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):]
    return None if path in ("", ":memory:") else Path(path)


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
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return mlflow


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def versions() -> str:
    """torch and every loaded third-party plugin, as ``name==version`` pairs."""
    import torch

    from harness.plugins import plugin_infos

    parts = [f"torch=={torch.__version__}"]
    parts += [f"{i.name}=={i.version}" for i in plugin_infos() if not i.default and not i.error]
    return ",".join(parts)


def provenance(threads: int | None = None) -> dict[str, str]:
    """The tags every harness run carries: commit, versions, device (with the torch ``threads``
    a run is about to use, when given)."""
    from harness.devices import device_label

    return {Tag.GIT_COMMIT: git_commit(), Tag.VERSIONS: versions(), Tag.DEVICE: device_label(threads=threads)}


class RunWriter:
    """Experiments and runs by id through ``MlflowClient``."""

    def __init__(self, explicit_uri: str | None = None) -> None:
        mlflow = connect(explicit_uri)
        self.uri = tracking_uri(explicit_uri)
        self.client = mlflow.MlflowClient(tracking_uri=self.uri)

    def experiment(self, name: str) -> str:
        """The id of experiment ``name``, created (with artifacts beside the default store) if new."""
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        artifacts = Path(DEFAULT_ARTIFACT_DIR).resolve().as_uri() if self.uri == DEFAULT_URI else None
        try:
            return self.client.create_experiment(name, artifact_location=artifacts)
        except Exception:  # another process created it first
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def experiment_of(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.experiment_id

    def start(self, experiment_id: str, run_name: str, tags: dict[str, str], parent: str | None = None) -> str:
        if parent:
            tags = {**tags, Tag.PARENT_RUN: parent}
        return self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id

    def params(self, run_id: str, params: dict[str, Any]) -> None:
        """Every param but the unset ones: None would be logged as the string "None"."""
        from mlflow.entities import Param

        batch = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in params.items() if v is not None]
        if batch:
            self.client.log_batch(run_id, params=batch)

    def metrics(self, run_id: str, metrics: dict[str, Any], step: int = 0) -> None:
        """Finite values only, under MLflow-safe names."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(metric_key(k), float(v), ts, step) for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v))]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:MAX_TAG_CHARS]) for k, v in tags.items()])

    def artifact(self, run_id: str, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path=folder)

    def end(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)

    def watch_system(self, run_id: str) -> None:
        """Sample CPU/GPU/memory into the run until ``end_watch`` (MLflow's fluent API owns the sampler)."""
        connect(self.uri).start_run(run_id=run_id, log_system_metrics=True)

    def end_watch(self, status: str) -> None:
        import mlflow

        while mlflow.active_run() is not None:
            mlflow.end_run(status=status)
