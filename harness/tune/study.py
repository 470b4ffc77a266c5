"""One Optuna study per (suite, variant): its sampler and pruner, the queue that is its trial
budget, and claiming the next queued trial.

- **Budget.** N trials per study, counted over all workers: the process that creates the study
  enqueues exactly N trials (study user attr ``harness.trials`` records N) and every worker claims
  queued trials until none is left, so K workers on one storage finish exactly N trials, none lost
  or duplicated. A COMPLETE, PRUNED or FAIL trial counts. Running the command again with a larger
  ``--trials`` tops the queue up; with the same N it resumes the trials left in the queue.
- **Sampler.** TPE, seeded per trial with ``[tune].seed + trial number`` (``TrialSeededTPE``): one
  worker reproduces the same trials for the same seed, and parallel workers never repeat each
  other's random start-up points.
- **Pruner.** MedianPruner(n_startup_trials=2, n_warmup_steps=steps // 4) on the validation metric
  reported at every ``train.eval_every`` step.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from harness.suite import Suite
from harness.tune.errors import TuneError
from harness.tune.space import Param

# Study user attrs: what a joining process checks before it adds trials to a study.
BUDGET_ATTR = "harness.trials"
SPACE_ATTR = "harness.space"
CONFIG_ATTR = "harness.config"
METRIC_ATTR = "harness.metric"
# Trial user attrs.
ERROR_ATTR = "harness.error"
PRUNED_STEP_ATTR = "harness.pruned_step"
WORKER_ATTR = "harness.worker"
MLFLOW_RUN_ATTR = "harness.mlflow_run_id"
PARAMS_ACHIEVED_ATTR = "harness.params_achieved"
PARAM_GAP_ATTR = "harness.param_gap"

JOIN_WAIT_S = 30.0          # a joining process waits this long for the creator to fill the queue
PRUNER_STARTUP_TRIALS = 2


def study_name(suite: Suite, variant: str) -> str:
    return f"{suite.name}.{variant}"


class TrialSeededTPE(optuna.samplers.BaseSampler):
    """TPE re-seeded for each trial with ``seed + trial.number``: reproducible with one worker, and
    parallel workers never draw the same random start-up points."""

    def __init__(self, seed: int, n_startup_trials: int) -> None:
        self._seed, self._n_startup = seed, n_startup_trials
        self._inner = self._make(seed)

    def _make(self, seed: int) -> optuna.samplers.TPESampler:
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self._n_startup)

    def before_trial(self, study: optuna.Study, trial: Any) -> None:
        self._inner = self._make(self._seed + trial.number)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: Any) -> dict[str, Any]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: Any, param_name: str, param_distribution: Any) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: Any, state: TrialState, values: Any) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def sampler_for(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    # Optuna's default of 10 random start-up trials would leave a small budget all random.
    return TrialSeededTPE(seed, n_startup_trials=max(2, min(10, trials // 3)))


def pruner_for(steps: int) -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=steps // 4)


def describe_pruner(steps: int) -> str:
    return f"median(startup={PRUNER_STARTUP_TRIALS}, warmup={steps // 4})"


def _enqueue(study: optuna.Study, n: int) -> None:
    for _ in range(n):
        study.enqueue_trial({})


def _config_diff(old: dict[str, str], new: dict[str, str]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    shown = [f"{k}: {old.get(k, '-')} -> {new.get(k, '-')}" for k in keys[:5]]
    return "; ".join(shown) + (f"; and {len(keys) - 5} more" if len(keys) > 5 else "")


def _create(name: str, storage: Any, direction: str, sampler: Any, pruner: Any, trials: int,
            attrs: dict[str, Any]) -> optuna.Study | None:
    """The new study with its queue filled, or None when it exists already."""
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction=direction, sampler=sampler,
                                    pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        return None
    _enqueue(study, trials)
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    study.set_user_attr(BUDGET_ATTR, trials)  # last: joiners wait for it
    return study


def _joined_attrs(study: optuna.Study, wait_s: float) -> dict[str, Any]:
    """The study's user attrs once its creator has recorded the budget (or ``wait_s`` has passed)."""
    deadline = time.monotonic() + wait_s
    attrs = study.user_attrs
    while BUDGET_ATTR not in attrs and time.monotonic() < deadline:
        time.sleep(0.5)  # its creator is still filling the queue
        attrs = study.user_attrs
    return attrs


def _check_comparable(name: str, attrs: dict[str, Any], space_json: str, metric: str, config: dict[str, str]) -> None:
    if attrs.get(SPACE_ATTR, space_json) != space_json or attrs.get(METRIC_ATTR, metric) != metric:
        raise TuneError(f"study {name!r} was created with another search space or metric "
                        f"({attrs.get(METRIC_ATTR)}: {attrs.get(SPACE_ATTR)}); use another --study name "
                        f"or the same [tune] section")
    if CONFIG_ATTR in attrs and attrs[CONFIG_ATTR] != config:
        raise TuneError(f"study {name!r} was created for another configuration of this variant "
                        f"({_config_diff(attrs[CONFIG_ATTR], config)}); its trials would not be comparable: use "
                        f"another --study name or the same suite and --set values")


def _top_up(study: optuna.Study, trials: int, attrs: dict[str, Any], echo: Callable[[str], None]) -> None:
    name = study.study_name
    budget = attrs.get(BUDGET_ATTR)
    if budget is None:  # a study harness did not create: count what is there
        budget = len(study.get_trials(deepcopy=False))
    if trials > budget:
        echo(f"study {name}: raising its budget from {budget} to {trials} trials")
        _enqueue(study, trials - budget)
        study.set_user_attr(BUDGET_ATTR, trials)
    elif trials < budget:
        echo(f"study {name}: its budget is {budget} trials (--trials {trials} does not lower it)")


def create_or_join(name: str, storage: Any, *, direction: str, trials: int, seed: int, steps: int,
                   space: dict[str, Param], metric: str, config: dict[str, str], join_only: bool = False,
                   echo: Callable[[str], None] = print) -> optuna.Study:
    """Create the study with N queued trials, or join an existing one (topping the queue up to N).
    ``join_only`` (a spawned worker) never creates a study nor changes its budget."""
    sampler, pruner = sampler_for(seed, trials), pruner_for(steps)
    space_json = json.dumps({k: p.as_dict() for k, p in sorted(space.items())}, sort_keys=True)
    if not join_only:
        created = _create(name, storage, direction, sampler, pruner, trials,
                          {SPACE_ATTR: space_json, CONFIG_ATTR: config, METRIC_ATTR: metric})
        if created is not None:
            return created
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        raise TuneError(f"study {name!r} does not exist in this storage") from None
    if study.direction.name.lower() != direction:
        raise TuneError(f"study {name!r} {study.direction.name.lower()}s but {metric} should be "
                        f"{direction}d; use another --study name")
    attrs = _joined_attrs(study, 0 if join_only else JOIN_WAIT_S)
    _check_comparable(name, attrs, space_json, metric, config)
    if not join_only:
        _top_up(study, trials, attrs, echo)
    return study


def claim_trial_id(study: optuna.Study, storage: Any) -> tuple[int, int] | None:
    """(trial id, trial number) of the next queued trial of ``study``, now RUNNING for this process,
    or None when the queue is empty: the queue is the budget, so unlike ``Study.ask()`` nothing new
    is created. Claiming is atomic across processes (RDB row lock / journal replay): a trial that
    another worker claimed or finished first is skipped."""
    study_id = storage.get_study_id_from_name(study.study_name)
    for queued in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, queued.number)
        try:
            if not storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        return trial_id, queued.number
    return None


def open_trial(study_name: str, storage: Any, trial_id: int, sampler: Any, pruner: Any) -> optuna.Trial:
    """A claimed trial to run, in this process or in a Ray worker that received its id."""
    # A Study caches its trials per thread; a fresh one lets the sampler see other workers' latest trials.
    fresh = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
    return optuna.trial.Trial(fresh, trial_id)


def claim_trial(study: optuna.Study, storage: Any) -> optuna.Trial | None:
    """The next queued trial of ``study`` (opened on ``storage``), claimed for this process (see
    ``claim_trial_id``), or None when the queue is empty."""
    claimed = claim_trial_id(study, storage)
    if claimed is None:
        return None
    return open_trial(study.study_name, storage, claimed[0], study.sampler, study.pruner)


def waiting_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def summarize(study: optuna.Study) -> dict[str, Any]:
    """Trial counts by state (lower-case names), and the best trial's number, value and params."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    out: dict[str, Any] = {"trials": counts, "best_trial": None, "best_value": None, "params": {}}
    try:
        best = study.best_trial
    except ValueError:
        return out
    out.update(best_trial=best.number, best_value=best.value, params=dict(best.params))
    return out
