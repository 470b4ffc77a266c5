"""The MLflow schema of harness: every tag, param, metric, artifact and experiment name that the
writers (the tracking plugin, tuning, bench) and the reader (``harness report``) share.

A name that is written in one place and read in another lives here and nowhere else.
"""
from __future__ import annotations

import re
from typing import Any

DEFAULT_URI = "sqlite:///mlruns/mlflow.db"
DEFAULT_ARTIFACT_DIR = "mlruns/artifacts"     # beside the default database, not ./mlartifacts


class Tag:
    """Tag names. ``harness.role`` says what a run is (see ``Role``)."""

    PARENT_RUN = "mlflow.parentRunId"          # MLflow's own nesting tag
    ROLE = "harness.role"
    SUITE = "harness.suite"
    VARIANT = "harness.variant"
    SEED = "harness.seed"
    TASK = "harness.task"
    MODEL = "harness.model"
    MIXER = "harness.mixer"
    CONFIG_HASH = "harness.config_hash"
    OVERRIDES = "harness.overrides"            # comma-separated per-variant override keys
    STATUS = "harness.status"                  # finished | failed | skipped | killed
    ERROR = "harness.error"
    CONTRACT = "harness.contract"              # "skipped" when run with --no-contract
    REUSED_RUN_ID = "harness.reused_run_id"    # a skipped run: the child that produced its result
    METRIC = "harness.metric"
    REFERENCE = "harness.reference"
    HIGHER_IS_BETTER = "harness.higher_is_better"
    GIT_COMMIT = "harness.git_commit"
    VERSIONS = "harness.versions"
    DEVICE = "harness.device"
    CONTENDED = "harness.contended"            # "true": other processes competed for the run's cores
    COMPILE_FALLBACK = "harness.compile_fallback"   # train.compile: why the model ran eager instead
    # tuning
    STUDY = "harness.study"
    STORAGE = "harness.storage"
    DIRECTION = "harness.direction"
    TRIAL = "harness.trial"
    WORKER = "harness.worker"
    TRIAL_STATE = "harness.trial_state"
    PRUNED_STEP = "harness.pruned_step"
    BEST_TRIAL = "harness.best_trial"
    BEST_PARAMS = "harness.best_params"
    # run manifest and reproduction (harness.manifest)
    MANIFEST = "harness.manifest"              # the artifact holding the run's manifest
    GIT_DIRTY = "harness.git_dirty"            # "true": the project checkout had uncommitted changes
    REPRODUCES = "reproduces"                  # a `harness reproduce` run: the run id it re-ran
    REPRODUCTION = "harness.reproduction"      # identical | within_tolerance | differs | failed
    DRIFT = "harness.drift"                    # re-run with --allow-drift: the entries that differed


class Role:
    """Values of ``Tag.ROLE``."""

    PARENT = "parent"            # one per `harness run` invocation
    RUN = "run"                  # one per (variant, seed), nested under the parent
    TUNE_PARENT = "tune-parent"  # one per `harness tune` invocation and variant
    TUNE_TRIAL = "tune-trial"    # one per Optuna trial, nested under the tune parent


class Param:
    """Param names that are not a flattened config key."""

    PLANNED_RUNS = "runs"                # parent: runs planned by the invocation
    TARGET = "params.target"             # child: the budget, beside the config
    ACHIEVED = "params.achieved"
    GAP = "params.gap"
    KNOB_VALUE = "budget.knob_value"     # child: the budget knob's matched value (budget.knob names it)


MANIFEST_PARAM_PREFIX = "manifest."      # child and trial runs: the manifest's scalars (manifest.torch, ...)


class Artifact:
    """Files a suite's output folder holds; all but RUNS are logged to the parent run."""

    RUNS = "runs.jsonl"
    SUITE = "suite.json"
    RESULTS_CSV = "results.csv"
    SUMMARY_CSV = "summary.csv"
    RESULTS_MD = "results.md"
    LEARNING_CURVES = "learning_curves.png"
    METRIC_VS_PARAMS = "metric_vs_params.png"   # no longer written: a report removes it from its folder
    METRIC_VS_COST = "metric_vs_cost.png"       # the metric vs FLOPs per token and vs throughput
    PROFILE_DIR = "profile"              # child: torch.profiler trace and operator table
    MANIFEST = "manifest.json"           # child and trial runs: what `harness reproduce` re-runs
    SAMPLES_DIR = "samples"              # child: what a task shows of a trained model (e.g. generated text)
    BENCH_CSV = "bench.csv"
    BENCH_PLOT = "bench.png"


PARENT_ARTIFACTS = (Artifact.SUITE, Artifact.RESULTS_CSV, Artifact.SUMMARY_CSV, Artifact.RESULTS_MD,
                    Artifact.LEARNING_CURVES, Artifact.METRIC_VS_COST)

BENCH_EXPERIMENT = "bench"

# harness run status -> MLflow run status, and MLflow's back for runs without a harness.status tag
MLFLOW_STATUS = {"finished": "FINISHED", "skipped": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
HARNESS_STATUS = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "killed", "RUNNING": "running",
                  "SCHEDULED": "running"}

# Metrics: results are namespaced by split ("test/accuracy", "val/loss"); efficiency figures are
# not ("params", "samples_per_s"); MLflow's own system metrics start with "system/".
SYSTEM_METRIC_PREFIX = "system/"
OBJECTIVE = "objective"                  # a tuning trial's final value


def run_count_metric(status: str) -> str:
    """Parent metric counting runs by status: runs_finished, runs_failed, ..."""
    return f"runs_{status}"


def trial_count_metric(state: str) -> str:
    """Tune parent metric counting trials by Optuna state: trials_complete, trials_pruned, ..."""
    return f"trials_{state}"


def best_metric(metric: str) -> str:
    return f"best_{metric}"


def tune_experiment(suite_name: str) -> str:
    return f"{suite_name}-tune"


def bench_metric(mixer: str, column: str) -> str:
    return f"{mixer}.{column}"


_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./: ]")
MAX_PARAM_CHARS = 6000
MAX_TAG_CHARS = 5000


def metric_key(name: str) -> str:
    """MLflow allows no '@' and a few other characters: ndcg@10 -> ndcg_at_10."""
    return _UNSAFE.sub("_", name.replace("@", "_at_"))


def flatten(prefix: str, value: Any, *, skip_none: bool = False) -> dict[str, str]:
    """Nested config -> dotted param names with string values, cut to MLflow's length limit;
    ``skip_none`` leaves unset keys out (MLflow params) instead of writing "None"."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v, skip_none=skip_none))
        return out
    return {} if value is None and skip_none else {prefix: str(value)[:MAX_PARAM_CHARS]}
