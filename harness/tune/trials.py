"""Running trials: sample the params, train the trial's suite, report the validation metric for
pruning, and tell the study how the trial ended.

A trial is COMPLETE with its validation metric, PRUNED when the median pruner stops it or its loss
diverges (TPE learns from pruned trials but ignores failed ones; ``harness.error`` says why), or
FAIL with the error. An interrupt is recorded FAIL, so no trial is left RUNNING, and re-raised.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from harness.suite import Suite, SuiteError
from harness.tune.mlflow_runs import TrialRun, VariantRuns
from harness.tune.space import Param, format_value
from harness.tune.study import (ERROR_ATTR, MLFLOW_RUN_ATTR, PARAM_GAP_ATTR, PARAMS_ACHIEVED_ATTR,
                                PRUNED_STEP_ATTR, WORKER_ATTR, claim_trial)
from harness.tune.trial_suite import trial_suite

TEST_PREFIX = "test/"  # test metrics stay out of tuning records


@dataclass
class TrialContext:
    """What every trial of one variant's study shares in this process."""

    suite: Suite
    variant: str
    data: dict[str, Any]              # the variant_data dict that sampled params are applied to
    space: dict[str, Param]
    metric: str
    steps: int
    task: Any
    runs: VariantRuns
    worker: int                       # 0 in the process that was started by hand
    echo: Callable[[str], None]


@dataclass
class Outcome:
    """How a trial ended, for the study, its MLflow run and its line."""

    state: TrialState = TrialState.FAIL
    note: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    value: float | None = None
    error: str | None = None
    pruned_step: int | None = None


class Pruned(optuna.TrialPruned):
    """A pruned trial and the step it stopped at."""

    def __init__(self, step: int, note: str) -> None:
        super().__init__(note)
        self.step = step


class _PruningHook:
    """Receives the training's metrics: logs them to the trial's run and reports the tuned metric
    to the pruner at every evaluation before the last step."""

    def __init__(self, trial: optuna.Trial, ctx: TrialContext, run: TrialRun) -> None:
        self.trial, self.ctx, self.run = trial, ctx, run
        self.step = 0

    def metrics_logged(self, run: Any, metrics: dict[str, float], step: int) -> None:
        self.run.metrics({k: v for k, v in metrics.items() if not k.startswith(TEST_PREFIX)}, step)
        self.step = step
        if self.ctx.metric not in metrics:
            return
        value = float(metrics[self.ctx.metric])
        if step < self.ctx.steps:
            self.trial.report(value, step)
            if self.trial.should_prune():
                raise Pruned(step, f"pruned at step {step} ({self.ctx.metric} = {value:.4g})")


def objective(trial: optuna.Trial, params: dict[str, Any], ctx: TrialContext, run: TrialRun,
              outcome: Outcome) -> float:
    """Train the trial's suite and return its validation metric; a diverged loss raises Pruned."""
    from harness.plan import plan_suite
    from harness.execute import execute_run
    from harness.train import DivergedError

    suite = trial_suite(ctx.data, ctx.variant, params)
    plan = plan_suite(suite, check_data=False)[ctx.variant]  # budget matching for this trial's config
    if plan.target is not None:
        trial.set_user_attr(PARAMS_ACHIEVED_ATTR, plan.achieved)
        trial.set_user_attr(PARAM_GAP_ATTR, plan.gap)
    hook = _PruningHook(trial, ctx, run)
    try:
        result = execute_run(suite.runs([ctx.variant])[0], plan, ctx.task, hook)
    except DivergedError as exc:
        outcome.error = f"diverged: {exc}"
        trial.set_user_attr(ERROR_ATTR, outcome.error)
        raise Pruned(hook.step, f"diverged at step {hook.step} (counted as pruned): {exc}") from None
    run.metrics({k: v for k, v in result.efficiency.items() if isinstance(v, (int, float))}, ctx.steps)
    if run.writer and run.run_id:  # what `harness reproduce <trial run id>` re-runs the trial from
        from harness.manifest import log_manifest
        from harness.tracking.schema import Role

        log_manifest(run.writer, run.run_id, suite, result.run, role=Role.TUNE_TRIAL)
    value = result.metrics.get(ctx.metric)
    if value is None:
        reported = ", ".join(sorted(k for k in result.metrics if k.startswith("val/")))
        raise RuntimeError(f"training reported no {ctx.metric}; it reports {reported or 'no val metric'}")
    if not math.isfinite(value):
        raise RuntimeError(f"{ctx.metric} is {value}")
    return float(value)


def _train(trial: optuna.Trial, ctx: TrialContext, run: TrialRun, outcome: Outcome) -> None:
    """Run the objective and tell the study; every exception but an interrupt ends the trial here."""
    study = trial.study
    try:
        outcome.params = {key: p.suggest(trial) for key, p in ctx.space.items()}
        run.params({**outcome.params, "trial": trial.number, "variant": ctx.variant,
                    "seed": ctx.suite.suite.seeds[0], "steps": ctx.steps})
        outcome.value = objective(trial, outcome.params, ctx, run, outcome)
        study.tell(trial, outcome.value)
        outcome.state, outcome.note = TrialState.COMPLETE, f"{ctx.metric} = {outcome.value:.4f}"
    except optuna.TrialPruned as exc:
        outcome.pruned_step = getattr(exc, "step", None)
        if outcome.pruned_step is not None:
            trial.set_user_attr(PRUNED_STEP_ATTR, outcome.pruned_step)
        study.tell(trial, state=TrialState.PRUNED)
        outcome.state, outcome.note = TrialState.PRUNED, str(exc) or "pruned"
    except Exception as exc:  # noqa: BLE001 - a failed trial is recorded and the study goes on
        from harness.execute import error_reason

        reason = "; ".join(exc.problems) if isinstance(exc, SuiteError) else error_reason(exc)
        if "HARNESS_DEBUG" in os.environ:
            import traceback

            traceback.print_exc()
        outcome.error = reason[:2000]
        trial.set_user_attr(ERROR_ATTR, outcome.error)
        study.tell(trial, state=TrialState.FAIL)
        outcome.state, outcome.note = TrialState.FAIL, f"failed: {reason}"


def run_trial(trial: optuna.Trial, ctx: TrialContext) -> TrialState:
    """Train one claimed trial, record it in the study and MLflow, and print its line."""
    start = time.perf_counter()
    prefix = f"[worker {ctx.worker}] " if ctx.worker else ""
    run = ctx.runs.start_trial(trial.number, ctx.worker)
    if run.run_id:
        trial.set_user_attr(MLFLOW_RUN_ATTR, run.run_id)
    trial.set_user_attr(WORKER_ATTR, ctx.worker)
    outcome = Outcome()
    try:
        _train(trial, ctx, run, outcome)
    except KeyboardInterrupt:
        trial.set_user_attr(ERROR_ATTR, "interrupted")
        trial.study.tell(trial, state=TrialState.FAIL)
        run.interrupted()
        ctx.echo(f"{prefix}{ctx.variant} #{trial.number}: interrupted (recorded as failed)")
        raise
    seconds = time.perf_counter() - start
    run.finish(outcome.state, value=outcome.value, step=ctx.steps, error=outcome.error,
               pruned_step=outcome.pruned_step)
    ctx.echo(trial_line(prefix, ctx.variant, trial.number, outcome, seconds))
    return outcome.state


def trial_line(prefix: str, variant: str, number: int, outcome: Outcome, seconds: float) -> str:
    """The line printed when a trial ends: its params, how it ended, how long it took."""
    shown = "  ".join(f"{k}={format_value(v)}" for k, v in outcome.params.items())
    took = f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    return f"{prefix}{variant} #{number}  {shown}  ->  {outcome.note}  ({took})"


def work(study: optuna.Study, storage: Any, ctx: TrialContext) -> int:
    """Claim and run queued trials until the queue is empty; returns how many this process ran."""
    done = 0
    while True:
        trial = claim_trial(study, storage)
        if trial is None:
            return done
        run_trial(trial, ctx)
        done += 1
