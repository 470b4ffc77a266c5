"""What tuning records in MLflow: experiment ``<suite>-tune``; per invocation and variant one
tune-parent run (the study, storage, space, sampler and pruner as params; trial counts and the best
value as metrics at the end), each trial a child run with the sampled params, the per-step
validation metrics, the final objective and its Optuna state as a tag.

Every name comes from ``harness.tracking.schema``. Without a writer (``--no-track``) nothing is
recorded and every method here does nothing.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from harness.tracking import RunWriter, provenance
from harness.tracking.schema import OBJECTIVE, Role, Tag, best_metric, trial_count_metric, tune_experiment


@dataclass
class TrialRun:
    """One trial's child run; ``run_id`` is None when nothing is recorded."""

    writer: RunWriter | None
    run_id: str | None = None

    def params(self, params: dict[str, Any]) -> None:
        if self.writer and self.run_id:
            self.writer.params(self.run_id, params)

    def metrics(self, metrics: dict[str, Any], step: int) -> None:
        if self.writer and self.run_id:
            self.writer.metrics(self.run_id, metrics, step)

    def finish(self, state: TrialState, *, value: float | None, step: int, error: str | None = None,
               pruned_step: int | None = None) -> None:
        """The trial's Optuna state (and why it failed or where it was pruned), and its objective."""
        if not (self.writer and self.run_id):
            return
        tags = {Tag.TRIAL_STATE: state.name}
        if error is not None:
            tags[Tag.ERROR] = error
        if pruned_step is not None:
            tags[Tag.PRUNED_STEP] = str(pruned_step)
        self.writer.tags(self.run_id, tags)
        if state == TrialState.COMPLETE and value is not None:
            self.writer.metrics(self.run_id, {OBJECTIVE: value}, step)
        self.writer.end(self.run_id, "FAILED" if state == TrialState.FAIL else "FINISHED")

    def interrupted(self) -> None:
        if self.writer and self.run_id:
            self.writer.tags(self.run_id, {Tag.TRIAL_STATE: TrialState.FAIL.name, Tag.ERROR: "interrupted"})
            self.writer.end(self.run_id, "KILLED")


@dataclass
class VariantRuns:
    """A variant's runs in one invocation: where its trials' child runs go. A spawned worker nests
    its trials under the parent run of the process that spawned it."""

    writer: RunWriter | None
    suite: str
    variant: str
    study: str
    experiment_id: str | None = None
    parent_id: str | None = None

    def start_trial(self, number: int, worker: int) -> TrialRun:
        if not (self.writer and self.experiment_id):
            return TrialRun(None)
        run_id = self.writer.start(self.experiment_id, f"{self.variant}-trial-{number:03d}", {
            Tag.ROLE: Role.TUNE_TRIAL, Tag.SUITE: self.suite, Tag.VARIANT: self.variant, Tag.STUDY: self.study,
            Tag.TRIAL: str(number), Tag.WORKER: str(worker),
        }, parent=self.parent_id)
        return TrialRun(self.writer, run_id)

    def join(self, parent_run_id: str) -> None:
        """Record into the parent run that the spawning process opened."""
        if self.writer:
            self.experiment_id, self.parent_id = self.writer.experiment_of(parent_run_id), parent_run_id

    def open_parent(self, *, storage: str, metric: str, direction: str, params: dict[str, Any]) -> None:
        """Start this invocation's tune-parent run for the variant, with ``params`` logged."""
        if not self.writer:
            return
        self.experiment_id = self.writer.experiment(tune_experiment(self.suite))
        run_name = f"{self.variant}-tune-{time.strftime('%Y%m%d-%H%M%S')}"
        self.parent_id = self.writer.start(self.experiment_id, run_name, {
            Tag.ROLE: Role.TUNE_PARENT, Tag.SUITE: self.suite, Tag.VARIANT: self.variant, Tag.STUDY: self.study,
            Tag.STORAGE: storage, Tag.METRIC: metric, Tag.DIRECTION: direction, **provenance(),
        })
        self.writer.params(self.parent_id, params)

    def close_parent(self, summary: dict[str, Any], metric: str, status: str) -> None:
        """Trial counts and the best trial (a ``summarize`` dict) on the parent run, then end it."""
        if not (self.writer and self.parent_id):
            return
        self.writer.metrics(self.parent_id, {trial_count_metric(k): v for k, v in summary["trials"].items()})
        if summary["best_value"] is not None:
            self.writer.metrics(self.parent_id, {best_metric(metric): summary["best_value"]})
            self.writer.tags(self.parent_id, {Tag.BEST_TRIAL: str(summary["best_trial"]),
                                              Tag.BEST_PARAMS: json.dumps(summary["params"])})
        self.writer.end(self.parent_id, status)

    def attach(self, path: Path) -> None:
        if self.writer and self.parent_id:
            self.writer.artifact(self.parent_id, path)
