"""Trials as Ray tasks (``harness tune --executor ray``).

The driver claims each queued trial of the study (``study.claim_trial_id``: atomic in the shared
storage, so any number of drivers and workers on one study run exactly its budget, none twice)
and hands its id to a Ray task asking the suite's ``[resources]``. The worker opens the trial in
the same storage, trains it (``trials._train``: sampling, pruning on the validation metric,
``study.tell``) and sends back what MLflow should show; the driver alone writes MLflow (the
trial's child run opens when the trial is handed out and gets the params and per-step metrics
when it ends). The storage must be reachable from every worker: PostgreSQL (or any server
database), not a local sqlite file or journal.

A worker lost twice (Ray retries a lost task once) and a trial in flight at Ctrl-C are recorded
FAIL in the study, with the reason in ``harness.error``, so none is left RUNNING.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from harness.redact import redact
from harness.suite import Suite
from harness.tune.space import Param
from harness.tune.study import ERROR_ATTR, MLFLOW_RUN_ATTR, WORKER_ATTR, claim_trial_id, open_trial, pruner_for, sampler_for
from harness.tune.trials import Outcome, TrialContext, _train, trial_line

LOST_WORKER_RETRIES = 1
WAIT_S = 0.5


@dataclass
class TrialJob:
    """What a worker needs to run any trial of one study. ``url`` is the storage URL with its
    password (the worker connects with it); it is never printed or recorded."""

    url: str
    study: str
    suite: Suite
    variant: str
    data: dict[str, Any]
    space: dict[str, Param]
    metric: str
    steps: int
    seed: int
    trials: int
    threads: int          # torch threads when the suite sets no train.threads


@dataclass
class TrialReturn:
    """A trial as a worker sends it back."""

    outcome: Outcome
    params: list[dict[str, Any]] = field(default_factory=list)               # the run's params calls
    logged: list[tuple[dict[str, Any], int]] = field(default_factory=list)   # (metrics, step)
    seconds: float = 0.0


class _Recorder:
    """Stands in for the trial's MLflow run in the worker: keeps what the driver will write."""

    writer = None          # nothing is written from a worker (the driver logs the trial's manifest)
    run_id = None

    def __init__(self) -> None:
        self.params_calls: list[dict[str, Any]] = []
        self.logged: list[tuple[dict[str, Any], int]] = []

    def params(self, params: dict[str, Any]) -> None:
        self.params_calls.append(dict(params))

    def metrics(self, metrics: dict[str, Any], step: int) -> None:
        self.logged.append((dict(metrics), int(step)))


_STORAGES: dict[str, Any] = {}   # per worker process: one connection pool per storage
_TASKS: dict[str, Any] = {}      # per worker process: the task's data loaded once


def _with_threads(data: dict[str, Any], variant: str, threads: int) -> dict[str, Any]:
    train = data["variants"][variant].setdefault("train", {})
    if train.get("threads") or data.get("train", {}).get("threads"):
        return data
    data = copy.deepcopy(data)
    data["variants"][variant]["train"]["threads"] = threads
    return data


def run_trial_remote(job: TrialJob, trial_id: int, worker: int) -> TrialReturn:
    """In a Ray worker: train claimed trial ``trial_id`` of ``job.study`` and tell the study."""
    import json

    from harness import tracking
    from harness.plan import build_task
    from harness.tune.storage import open_storage

    tracking.configure(enabled=False)   # the driver alone writes MLflow
    if job.url not in _STORAGES:
        _STORAGES[job.url] = open_storage(job.url)
    storage = _STORAGES[job.url]
    key = json.dumps([job.suite.suite.task, job.suite.task], sort_keys=True, default=str)
    if key not in _TASKS:
        _TASKS[key] = build_task(job.suite)
    trial = open_trial(job.study, storage, trial_id, sampler_for(job.seed, job.trials), pruner_for(job.steps))
    ctx = TrialContext(job.suite, job.variant, _with_threads(job.data, job.variant, job.threads), job.space,
                       job.metric, job.steps, _TASKS[key], None, worker, lambda line: None)  # type: ignore[arg-type]
    recorder, outcome = _Recorder(), Outcome()
    start = time.perf_counter()
    _train(trial, ctx, recorder, outcome)  # type: ignore[arg-type]
    return TrialReturn(outcome, recorder.params_calls, recorder.logged, time.perf_counter() - start)


@dataclass
class _InFlight:
    trial_id: int
    number: int
    run: Any              # the trial's MLflow run (mlflow_runs.TrialRun)
    worker: int
    started: float


def _fail(storage: Any, trial_id: int, reason: str) -> None:
    """Record a trial FAIL with its reason, unless its worker finished it first."""
    try:
        storage.set_trial_user_attr(trial_id, ERROR_ATTR, reason)
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass


def _returned(ray: Any, ref: Any, storage: Any, slot: _InFlight) -> TrialReturn:
    """The worker's TrialReturn, or the trial recorded FAIL with why the task did not return."""
    from harness.execute import error_reason

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        reason = f"on the worker: {error_reason(getattr(exc, 'cause', None) or exc)}"
    except ray.exceptions.RayError as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        reason = f"worker lost, and lost again on its retry: {type(exc).__name__}" + (f": {first}" if first else "")
    reason = redact(reason)
    _fail(storage, slot.trial_id, reason)
    params = dict(storage.get_trial(slot.trial_id).params)
    outcome = Outcome(state=TrialState.FAIL, note=f"failed: {reason}", params=params, error=reason)
    return TrialReturn(outcome, seconds=time.perf_counter() - slot.started)


def _log_manifest(ctx: TrialContext, slot: _InFlight, job: TrialJob, params: dict[str, Any]) -> None:
    """What ``harness reproduce <trial run id>`` re-runs, logged by the driver as a local trial logs
    it: the trial's suite (the sampled params applied) and its run, threads included."""
    if not (slot.run.writer and slot.run.run_id):
        return
    from harness.manifest import log_manifest
    from harness.tracking.schema import Role
    from harness.tune.trial_suite import trial_suite

    suite = trial_suite(_with_threads(job.data, job.variant, job.threads), job.variant, params)
    log_manifest(slot.run.writer, slot.run.run_id, suite, suite.runs([job.variant])[0], role=Role.TUNE_TRIAL)


def _record(ctx: TrialContext, slot: _InFlight, back: TrialReturn, job: TrialJob) -> None:
    """The trial's MLflow run gets what the worker logged, its state, and the trial's line is printed."""
    for params in back.params or ([{**back.outcome.params, "trial": slot.number, "variant": ctx.variant,
                                    "seed": ctx.suite.suite.seeds[0], "steps": ctx.steps}]):
        slot.run.params(params)
    for metrics, step in back.logged:
        slot.run.metrics(metrics, step)
    o = back.outcome
    if o.state == TrialState.COMPLETE:
        try:
            _log_manifest(ctx, slot, job, o.params)
        except Exception as exc:  # noqa: BLE001 - the trial is recorded either way; say what is missing
            ctx.echo(f"warning: trial #{slot.number}: no manifest logged: {type(exc).__name__}: {redact(str(exc))[:200]}")
    slot.run.finish(o.state, value=o.value, step=ctx.steps, error=o.error, pruned_step=o.pruned_step)
    ctx.echo(trial_line(f"[ray {slot.worker}] ", ctx.variant, slot.number, o, back.seconds))


def work_on_ray(study: optuna.Study, storage: Any, ctx: TrialContext, job: TrialJob, cluster: Any,
                resources: Any, at_once: int, echo: Callable[[str], None]) -> int:
    """Hand the study's queued trials to Ray, ``at_once`` at a time, until none is left; returns
    how many this driver ran."""
    ray = cluster.ray
    task = ray.remote(run_trial_remote).options(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus,
                                                max_retries=LOST_WORKER_RETRIES, retry_exceptions=False)
    in_flight: dict[Any, _InFlight] = {}
    free = list(range(1, at_once + 1))     # worker slots, recorded as the trial's worker
    exhausted, done = False, 0
    try:
        while True:
            while not exhausted and free:
                claimed = claim_trial_id(study, storage)
                if claimed is None:
                    exhausted = True
                    break
                (trial_id, number), worker = claimed, free.pop(0)
                slot = _InFlight(trial_id, number, ctx.runs.start_trial(number, worker), worker, time.perf_counter())
                if slot.run.run_id:
                    storage.set_trial_user_attr(trial_id, MLFLOW_RUN_ATTR, slot.run.run_id)
                storage.set_trial_user_attr(trial_id, WORKER_ATTR, slot.worker)
                in_flight[task.remote(job, trial_id, slot.worker)] = slot
            if not in_flight:
                return done
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=WAIT_S)
            for ref in ready:
                slot = in_flight.pop(ref)
                free.append(slot.worker)
                _record(ctx, slot, _returned(ray, ref, storage, slot), job)
                done += 1
    except BaseException:
        for ref, slot in in_flight.items():
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - finished meanwhile, or the cluster is gone
                pass
            _fail(storage, slot.trial_id, "interrupted")
            slot.run.interrupted()
            echo(f"[ray {slot.worker}] {ctx.variant} #{slot.number}: interrupted (recorded as failed)")
        raise
