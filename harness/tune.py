"""Optuna tuning: one study per (suite, variant), the same trial budget for every variant.

``harness tune SUITE [-v VARIANT ...] [--trials N] [--storage URL] [--study NAME] [--workers K]``

- **Search space.** ``[tune].space`` maps dotted suite keys to distributions: ``train.<key>``,
  ``model.<key>`` or ``options.<mixer option>``, each ``{low, high, log?, step?}`` (an int range when
  low, high and step are ints) or ``{choices = [...]}``. The values are applied to the tuned variant
  (``variants.<v>.train.<key>`` ...), so budget matching still runs for every trial and a tuned model
  stays parameter-matched. With no ``[tune].space`` the mixer's declared ``search_space`` (as
  ``options.*``) plus ``train.lr`` in [1e-4, 1e-2] (log) is used.
- **Objective.** The validation metric (``[tune].metric``, default ``val/<suite metric>``), never the
  test metric: tuning on test is leakage, and test metrics are not even logged for trials. Each trial
  trains ``[tune].steps`` (default ``train.steps``) on the first suite seed.
- **Budget.** N trials per study, counted over all workers: the process that creates the study
  enqueues exactly N trials (study user attr ``harness.trials`` records N) and every worker pops
  queued trials until none is left, so K workers on one storage finish exactly N trials, none lost
  or duplicated. A COMPLETE, PRUNED or FAIL trial counts. Running the command again with a larger
  ``--trials`` tops the queue up; with the same N it resumes the trials left in the queue.
- **Sampler.** TPE, seeded per trial with ``[tune].seed + trial number`` (``_TrialSeededTPE``): one
  worker reproduces the same trials for the same seed, and parallel workers never repeat each
  other's random start-up points. ``constant_liar`` keeps parallel workers apart.
- **Pruner.** MedianPruner(n_startup_trials=2, n_warmup_steps=steps // 4) on the validation metric
  reported at every ``train.eval_every`` step. A run whose loss diverges is recorded PRUNED (TPE
  learns from pruned trials, but ignores failed ones) with ``harness.error`` saying why.
- **Storage.** ``sqlite:///mlruns/optuna.db`` by default; any SQLAlchemy URL (``postgresql://...``),
  or a path ending in ``.log`` / ``.journal`` for an Optuna journal file (NFS-friendly). Several
  processes or machines share a study by pointing at the same storage.
- **MLflow.** Experiment ``<suite>-tune``; per invocation and variant one parent run (tag
  ``harness.role=tune-parent``), each trial a child run with the sampled params, the per-step
  metrics, the final value and tag ``harness.trial_state``.
- ``harness run SUITE --best`` re-runs every variant with its best trial's params over all seeds
  (``best_overrides``).
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from pydantic import ValidationError

from harness.suite import Suite, SuiteError, TrainSection, parse_suite

DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"
DEFAULT_SPACE: dict[str, dict[str, Any]] = {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}}
JOURNAL_SUFFIXES = (".log", ".journal")
SECTIONS = ("train", "model", "options")
BUDGET_ATTR = "harness.trials"
SPACE_ATTR = "harness.space"
CONFIG_ATTR = "harness.config"
METRIC_ATTR = "harness.metric"
JOIN_WAIT_S = 30.0          # a joining process waits this long for the creator to fill the queue
PRUNER_STARTUP_TRIALS = 2


class TuneError(Exception):
    """A tuning problem that is not a suite key: storage, study, workers. One line per problem."""


# --------------------------------------------------------------------------- search space


@dataclass(frozen=True)
class Param:
    """One tuned key: a float or int range, or a list of choices."""

    key: str
    kind: str                               # "float" | "int" | "categorical"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    @property
    def section(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split(".", 1)[1]

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        low, high = self.low, self.high
        assert low is not None and high is not None
        if self.kind == "int":
            return trial.suggest_int(self.key, int(low), int(high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(low), float(high), step=self.step, log=self.log)

    def probes(self) -> list[Any]:
        """The values a pre-flight check tries: both ends of a range, or every choice."""
        if self.kind == "categorical":
            return list(self.choices)
        return [self.low, self.high] if self.low != self.high else [self.low]

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"{self.key} in {list(self.choices)}"
        extra = (" log" if self.log else "") + (f" step {self.step}" if self.step is not None else "")
        return f"{self.key} in [{self.low}, {self.high}]{extra}"

    def as_dict(self) -> dict[str, Any]:
        if self.kind == "categorical":
            return {"choices": list(self.choices)}
        out: dict[str, Any] = {"low": self.low, "high": self.high, "log": self.log}
        if self.step is not None:
            out["step"] = self.step
        return out


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _parse_entry(key: str, entry: Any, path: str) -> tuple[Param | None, list[str]]:
    if not isinstance(entry, dict):
        return None, [f"{path}: expected a table {{low, high, log?, step?}} or {{choices = [...]}}, got {entry!r}"]
    if "choices" in entry:
        extra = sorted(set(entry) - {"choices"})
        choices = entry["choices"]
        if extra:
            return None, [f"{path}: 'choices' goes alone; drop {', '.join(extra)}"]
        if not isinstance(choices, (list, tuple)) or not choices:
            return None, [f"{path}.choices: expected a non-empty list, got {choices!r}"]
        bad = [c for c in choices if not isinstance(c, (str, int, float, bool))]
        if bad:
            return None, [f"{path}.choices: only strings, numbers and booleans can be choices, got {bad[0]!r}"]
        return Param(key, "categorical", choices=tuple(choices)), []
    unknown = sorted(set(entry) - {"low", "high", "log", "step"})
    if unknown:
        return None, [f"{path}: unknown field(s) {', '.join(unknown)}; a range has low, high, log, step and a "
                      f"list has choices"]
    missing = [f for f in ("low", "high") if f not in entry]
    if missing:
        return None, [f"{path}: a range needs {' and '.join(missing)} (or give choices = [...])"]
    low, high, log, step = entry["low"], entry["high"], entry.get("log", False), entry.get("step")
    if not _number(low) or not _number(high):
        return None, [f"{path}: low and high must be numbers, got low={low!r}, high={high!r}"]
    if not isinstance(log, bool):
        return None, [f"{path}.log: expected true or false, got {log!r}"]
    if step is not None and (not _number(step) or step <= 0):
        return None, [f"{path}.step: expected a positive number, got {step!r}"]
    if low > high:
        return None, [f"{path}: low ({low}) is above high ({high})"]
    if log and low <= 0:
        return None, [f"{path}: a log range needs low > 0, got {low}"]
    kind = "int" if all(isinstance(v, int) for v in (low, high) + ((step,) if step is not None else ())) else "float"
    if log and step is not None and not (kind == "int" and step == 1):
        return None, [f"{path}: log and step don't combine (Optuna samples a log range continuously)"]
    return Param(key, kind, low=low, high=high, log=log, step=step), []


def parse_space(raw: dict[str, Any], where: str = "tune.space") -> dict[str, Param]:
    """Structure-check a space; raise SuiteError with one line per problem."""
    problems: list[str] = []
    space: dict[str, Param] = {}
    train_keys = sorted(TrainSection.model_fields)
    for key, entry in raw.items():
        path = f"{where}.{key}" if where == "tune.space" else f"tune.space.{key} ({where})"
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name or "." in name:
            problems.append(f"{path}: keys look like train.<key>, model.<key> or options.<mixer option>, "
                            f"e.g. train.lr")
            continue
        if section == "train" and name not in TrainSection.model_fields:
            from harness.registry import suggest

            problems.append(f"{path}: unknown train key {name!r}.{suggest(name, train_keys)}")
            continue
        param, errs = _parse_entry(key, entry, path)
        problems += errs
        if param is not None:
            space[key] = param
    if problems:
        raise SuiteError(problems)
    return space


def space_for(suite: Suite, variant: str) -> tuple[dict[str, Param], str]:
    """The space a variant is tuned over, and where it came from."""
    if suite.tune.space:
        return parse_space(suite.tune.space), "[tune].space"
    from harness.registry import mixer

    mixer_name = suite.variants[variant].mixer
    declared = {f"options.{k}": dict(v) for k, v in mixer(mixer_name).search_space.items()}
    space = parse_space(declared, f"declared by mixer {mixer_name!r}") if declared else {}
    space.update(parse_space(DEFAULT_SPACE))
    return space, (f"mixer {mixer_name!r} search_space + default train.lr" if declared else "default train.lr")


# --------------------------------------------------------------------------- suites per trial


def tuned_metric(suite: Suite) -> tuple[str, str]:
    """(validation metric name, "maximize" | "minimize"), from [tune].metric or the suite metric."""
    from harness.registry import UnknownNameError, get_registries

    name = suite.tune.metric or f"val/{suite.suite.metric.partition('/')[2]}"
    split, _, metric = name.partition("/")
    where = "tune.metric" if suite.tune.metric else "suite.metric"
    if split == "test":
        raise SuiteError([f"{where}: tune on the validation split (val/{metric}), never on test: picking "
                          f"hyper-parameters on the test set leaks it into the result"])
    if split != "val" or not metric:
        raise SuiteError([f"{where}: {name!r} must be 'val/<metric>', e.g. val/accuracy"])
    regs = get_registries()
    try:
        spec = regs.metrics.get(metric)
    except UnknownNameError as exc:
        raise SuiteError([f"{where}: {exc}"]) from None
    task = suite.suite.task
    if task in regs.tasks and regs.tasks.get(task).metrics and metric not in regs.tasks.get(task).metrics:
        raise SuiteError([f"{where}: task {task!r} reports {', '.join(regs.tasks.get(task).metrics)}, not {metric!r}"])
    return name, "maximize" if spec.higher_is_better else "minimize"


def variant_data(suite: Suite, variant: str) -> dict[str, Any]:
    """The suite as a dict reduced to one variant and the first seed, with [tune].steps applied."""
    data = suite.model_dump()
    data["variants"] = {variant: data["variants"][variant]}
    data["suite"]["reference"] = variant
    data["suite"]["seeds"] = data["suite"]["seeds"][:1]
    data["profile"]["enabled"] = False
    if suite.tune.steps is not None:
        data["variants"][variant]["train"]["steps"] = suite.tune.steps
    return data


def trial_suite(data: dict[str, Any], variant: str, params: dict[str, Any]) -> Suite:
    """Apply sampled params (dotted keys) to the variant of a ``variant_data`` dict."""
    import copy

    data = copy.deepcopy(data)
    v = data["variants"][variant]
    for key, value in params.items():
        section, _, name = key.partition(".")
        v[section][name] = value
    return parse_suite(data)


def check_space(suite: Suite, variant: str, space: dict[str, Param]) -> dict[str, Any]:
    """Pre-flight before any trial trains: the variant itself must be valid, and every tuned key must
    accept some value of its range (both ends or every choice are tried, with budget matching), so a
    misspelt option fails now in one line instead of failing every trial. Returns variant_data."""
    from harness.validate import check_suite

    data = variant_data(suite, variant)
    if suite.tune.steps is not None and "train.steps" in space:
        raise SuiteError(["tune.space.train.steps: conflicts with tune.steps; drop one of them"])
    if suite.budget is not None and f"model.{suite.budget.knob}" in space:
        raise SuiteError([f"tune.space.model.{suite.budget.knob}: the budget matcher sets {suite.budget.knob}; "
                          f"tune another key or change [budget] knob"])
    check_suite(trial_suite(data, variant, {}))
    problems = []
    train = data["train"]
    for key, param in space.items():
        if param.section == "train":  # typed and range-checked: every value of the range must pass
            for value in param.probes():
                try:
                    TrainSection.model_validate({**train, param.name: value})
                except ValidationError as exc:
                    problems.append(f"tune.space.{key}: {value!r} is not allowed: {exc.errors()[0]['msg']}")
                    break
            continue
        errors = []
        for value in param.probes():
            try:
                check_suite(trial_suite(data, variant, {key: value}), check_data=False)
            except SuiteError as exc:
                errors.append((value, exc.problems[0]))
        if errors and len(errors) == len(param.probes()):
            value, problem = errors[0]
            problems.append(f"tune.space.{key}: no tried value works for variant {variant!r} "
                            f"(tried {', '.join(repr(e[0]) for e in errors)}): {problem}")
    if problems:
        raise SuiteError(problems)
    return data


# --------------------------------------------------------------------------- storage and studies


def study_name(suite: Suite, variant: str) -> str:
    return f"{suite.name}.{variant}"


def display_url(url: str) -> str:
    """A storage URL with its password hidden, for printing and logging."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def is_journal(url: str) -> bool:
    return "://" not in url and url.endswith(JOURNAL_SUFFIXES)


def open_storage(url: str | None = None, *, must_exist: bool = False) -> Any:
    """An Optuna storage for a URL: RDB (sqlite, postgresql, ...) or a journal file."""
    url = url or DEFAULT_STORAGE
    if is_journal(url):
        if must_exist and not Path(url).exists():
            raise TuneError(f"storage {url}: no such journal file")
        try:
            from optuna.storages.journal import JournalFileBackend, JournalStorage
        except ImportError:  # optuna < 4.0
            from optuna.storages import JournalFileStorage as JournalFileBackend  # type: ignore[no-redef]
            from optuna.storages import JournalStorage  # type: ignore[no-redef]
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(url))
    if "://" not in url:
        raise TuneError(f"--storage {url}: use a database URL (sqlite:///mlruns/optuna.db, "
                        f"postgresql://user@host/db) or a journal file path ending in .log or .journal")
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if must_exist and not Path(path).exists():
            raise TuneError(f"storage {url}: no such database")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}  # several workers write to one file
    last: Exception | None = None
    for attempt in range(5):  # processes that start together race to create the schema
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except Exception as exc:  # noqa: BLE001 - re-raised below with the URL
            last = exc
            time.sleep(0.5 * (attempt + 1))
    raise TuneError(f"--storage {display_url(url)}: cannot open: {type(last).__name__}: {last}")


class _TrialSeededTPE(optuna.samplers.BaseSampler):
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
    return _TrialSeededTPE(seed, n_startup_trials=max(2, min(10, trials // 3)))


def pruner_for(steps: int) -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=steps // 4)


def _enqueue(study: optuna.Study, n: int) -> None:
    for _ in range(n):
        study.enqueue_trial({})


def trial_config(data: dict[str, Any]) -> dict[str, str]:
    """What every trial of a study must share (a ``variant_data`` dict, flattened): trials trained
    for another number of steps, batch size or budget are not comparable."""
    from harness.tracking import flatten

    flat = flatten("", {k: v for k, v in data.items() if k not in ("tune", "profile")})
    # Where things live and which device trains may differ between the machines sharing a study.
    local = re.compile(r"^suite\.output_dir$|^task\..*(root|dir|path|cache|download|workers)|(^|\.)train\.device$")
    return {k: v for k, v in flat.items() if not local.search(k)}


def _config_diff(old: dict[str, str], new: dict[str, str]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    shown = [f"{k}: {old.get(k, '-')} -> {new.get(k, '-')}" for k in keys[:5]]
    return "; ".join(shown) + (f"; and {len(keys) - 5} more" if len(keys) > 5 else "")


def create_or_join(name: str, storage: Any, *, direction: str, trials: int, seed: int, steps: int,
                   space: dict[str, Param], metric: str, config: dict[str, str], join_only: bool = False,
                   echo: Callable[[str], None] = print) -> optuna.Study:
    """Create the study with N queued trials, or join an existing one (topping the queue up to N)."""
    sampler, pruner = sampler_for(seed, trials), pruner_for(steps)
    space_json = json.dumps({k: p.as_dict() for k, p in sorted(space.items())}, sort_keys=True)
    if not join_only:
        try:
            study = optuna.create_study(storage=storage, study_name=name, direction=direction, sampler=sampler,
                                        pruner=pruner)
        except optuna.exceptions.DuplicatedStudyError:
            pass
        else:
            _enqueue(study, trials)
            study.set_user_attr(SPACE_ATTR, space_json)
            study.set_user_attr(CONFIG_ATTR, config)
            study.set_user_attr(METRIC_ATTR, metric)
            study.set_user_attr(BUDGET_ATTR, trials)  # last: joiners wait for it
            return study
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        raise TuneError(f"study {name!r} does not exist in this storage") from None
    if study.direction.name.lower() != direction:
        raise TuneError(f"study {name!r} {study.direction.name.lower()}s but {metric} should be "
                        f"{direction}d; use another --study name")
    deadline = time.monotonic() + (0 if join_only else JOIN_WAIT_S)
    attrs = study.user_attrs
    while BUDGET_ATTR not in attrs and time.monotonic() < deadline:
        time.sleep(0.5)  # its creator is still filling the queue
        attrs = study.user_attrs
    if attrs.get(SPACE_ATTR, space_json) != space_json or attrs.get(METRIC_ATTR, metric) != metric:
        raise TuneError(f"study {name!r} was created with another search space or metric "
                        f"({attrs.get(METRIC_ATTR)}: {attrs.get(SPACE_ATTR)}); use another --study name "
                        f"or the same [tune] section")
    if CONFIG_ATTR in attrs and attrs[CONFIG_ATTR] != config:
        raise TuneError(f"study {name!r} was created for another configuration of this variant "
                        f"({_config_diff(attrs[CONFIG_ATTR], config)}); its trials would not be comparable: use "
                        f"another --study name or the same suite and --set values")
    if join_only:
        return study
    budget = attrs.get(BUDGET_ATTR)
    if budget is None:  # a study harness did not create: count what is there
        budget = len(study.get_trials(deepcopy=False))
    if trials > budget:
        echo(f"study {name}: raising its budget from {budget} to {trials} trials")
        _enqueue(study, trials - budget)
        study.set_user_attr(BUDGET_ATTR, trials)
    elif trials < budget:
        echo(f"study {name}: its budget is {budget} trials (--trials {trials} does not lower it)")
    return study


def _pop_trial(study: optuna.Study) -> optuna.Trial | None:
    """``Study.ask()`` without its fallback of creating a new trial: the queue is the budget, so an
    empty queue means done. Popping is atomic across processes (RDB row lock / journal replay)."""
    local = getattr(study, "_thread_local", None)
    if local is not None:
        local.cached_all_trials = None  # as ask() does: samplers see other workers' latest trials
    trial_id = study._pop_waiting_trial_id()
    return None if trial_id is None else optuna.Trial(study, trial_id)


# --------------------------------------------------------------------------- MLflow


class _Tracker:
    """Parent and child runs through MlflowClient (no global active run, safe in every worker)."""

    def __init__(self) -> None:
        from harness import tracking

        mlflow = tracking.connect()  # sets the URI, creates mlruns/ for the default sqlite store
        self.uri = tracking.tracking_uri()
        self.client = mlflow.MlflowClient(tracking_uri=self.uri)

    def experiment(self, name: str) -> str:
        from harness import tracking

        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        artifacts = None
        if self.uri == tracking.DEFAULT_URI:
            artifacts = Path("mlruns/artifacts").resolve().as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=artifacts)
        except Exception:  # another worker created it first
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def start(self, experiment_id: str, run_name: str, tags: dict[str, str], parent: str | None = None) -> str:
        if parent:
            tags = {**tags, "mlflow.parentRunId": parent}
        return self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id

    def params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param as MlParam

        self.client.log_batch(run_id, params=[MlParam(k, str(v)[:6000]) for k, v in params.items()])

    def metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        from harness.tracking import metric_key

        ts = int(time.time() * 1000)
        batch = [Metric(metric_key(k), float(v), ts, step) for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v))]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def end(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)

    def experiment_of(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.experiment_id


# --------------------------------------------------------------------------- trials


class _Pruned(optuna.TrialPruned):
    def __init__(self, step: int, note: str) -> None:
        super().__init__(note)
        self.step = step


@dataclass
class _Context:
    suite: Suite
    variant: str
    data: dict[str, Any]
    space: dict[str, Param]
    metric: str
    steps: int
    study_name: str
    task: Any
    tracker: _Tracker | None
    experiment_id: str | None
    parent_id: str | None
    worker: int
    echo: Callable[[str], None]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _objective(trial: optuna.Trial, params: dict[str, Any], ctx: _Context, run_id: str | None,
               info: dict[str, Any]) -> float:
    from harness.runner import execute_run
    from harness.validate import check_suite

    suite = trial_suite(ctx.data, ctx.variant, params)
    plans = check_suite(suite, check_data=False)  # budget matching for this trial's config
    plan = plans[ctx.variant]
    if plan.target is not None:
        trial.set_user_attr("harness.params_achieved", plan.achieved)
        trial.set_user_attr("harness.param_gap", plan.gap)
    run = suite.runs([ctx.variant])[0]
    state: dict[str, Any] = {"value": None, "step": 0}

    class Hook:
        def metrics_logged(self, run: Any, metrics: dict[str, float], step: int) -> None:
            if ctx.tracker and run_id:  # test metrics stay out of tuning records
                ctx.tracker.metrics(run_id, {k: v for k, v in metrics.items() if not k.startswith("test/")}, step)
            state["step"] = step
            if ctx.metric not in metrics:
                return
            value = float(metrics[ctx.metric])
            state["value"] = value
            if step < ctx.steps:
                trial.report(value, step)
                if trial.should_prune():
                    raise _Pruned(step, f"pruned at step {step} ({ctx.metric} = {value:.4g})")

    from harness.train import DivergedError

    try:
        result = execute_run(run, plan, ctx.task, Hook())
    except DivergedError as exc:
        info["error"] = f"diverged: {exc}"
        trial.set_user_attr("harness.error", info["error"])
        raise _Pruned(state["step"], f"diverged at step {state['step']} (counted as pruned): {exc}") from None
    if ctx.tracker and run_id:
        eff = {k: v for k, v in result.efficiency.items() if isinstance(v, (int, float))}
        ctx.tracker.metrics(run_id, eff, ctx.steps)
    value = result.metrics.get(ctx.metric)
    if value is None:
        reported = ", ".join(sorted(k for k in result.metrics if k.startswith("val/")))
        raise RuntimeError(f"training reported no {ctx.metric}; it reports {reported or 'no val metric'}")
    if not math.isfinite(value):
        raise RuntimeError(f"{ctx.metric} is {value}")
    return float(value)


def _run_trial(study: optuna.Study, trial: optuna.Trial, ctx: _Context) -> TrialState:
    from harness.runner import _error_reason

    start = time.perf_counter()
    run_id = None
    prefix = f"[worker {ctx.worker}] " if ctx.worker else ""
    if ctx.tracker and ctx.experiment_id:
        run_id = ctx.tracker.start(ctx.experiment_id, f"{ctx.variant}-trial-{trial.number:03d}", {
            "harness.role": "tune-trial", "harness.suite": ctx.suite.name, "harness.variant": ctx.variant,
            "harness.study": ctx.study_name, "harness.trial": str(trial.number), "harness.worker": str(ctx.worker),
        }, parent=ctx.parent_id)
        trial.set_user_attr("harness.mlflow_run_id", run_id)
    trial.set_user_attr("harness.worker", ctx.worker)
    params: dict[str, Any] = {}
    info: dict[str, Any] = {}
    value: float | None = None
    note = ""
    try:
        params = {key: p.suggest(trial) for key, p in ctx.space.items()}
        if ctx.tracker and run_id:
            ctx.tracker.params(run_id, {**params, "trial": trial.number, "variant": ctx.variant,
                                        "seed": ctx.suite.suite.seeds[0], "steps": ctx.steps})
        value = _objective(trial, params, ctx, run_id, info)
        study.tell(trial, value)
        state, note = TrialState.COMPLETE, f"{ctx.metric} = {value:.4f}"
    except optuna.TrialPruned as exc:
        step = getattr(exc, "step", None)
        if step is not None:
            info["pruned_step"] = step
            trial.set_user_attr("harness.pruned_step", step)
        study.tell(trial, state=TrialState.PRUNED)
        state, note = TrialState.PRUNED, str(exc) or "pruned"
    except KeyboardInterrupt:
        trial.set_user_attr("harness.error", "interrupted")
        study.tell(trial, state=TrialState.FAIL)
        if ctx.tracker and run_id:
            ctx.tracker.tags(run_id, {"harness.trial_state": "FAIL", "harness.error": "interrupted"})
            ctx.tracker.end(run_id, "KILLED")
        ctx.echo(f"{prefix}{ctx.variant} #{trial.number}: interrupted (recorded as failed)")
        raise
    except Exception as exc:  # noqa: BLE001 - a failed trial is recorded and the study goes on
        reason = "; ".join(exc.problems) if isinstance(exc, SuiteError) else _error_reason(exc)
        if "HARNESS_DEBUG" in os.environ:
            import traceback

            traceback.print_exc()
        info["error"] = reason[:2000]
        trial.set_user_attr("harness.error", info["error"])
        study.tell(trial, state=TrialState.FAIL)
        state, note = TrialState.FAIL, f"failed: {reason}"
    seconds = time.perf_counter() - start
    if ctx.tracker and run_id:
        tags = {"harness.trial_state": state.name}
        if "error" in info:
            tags["harness.error"] = info["error"]
        if "pruned_step" in info:
            tags["harness.pruned_step"] = str(info["pruned_step"])
        ctx.tracker.tags(run_id, tags)
        if state == TrialState.COMPLETE and value is not None:
            ctx.tracker.metrics(run_id, {"objective": value}, ctx.steps)
        ctx.tracker.end(run_id, "FAILED" if state == TrialState.FAIL else "FINISHED")
    shown = "  ".join(f"{k}={_fmt(v)}" for k, v in params.items())
    took = f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    ctx.echo(f"{prefix}{ctx.variant} #{trial.number}  {shown}  ->  {note}  ({took})")
    return state


def _work(study: optuna.Study, ctx: _Context) -> int:
    done = 0
    while True:
        trial = _pop_trial(study)
        if trial is None:
            return done
        _run_trial(study, trial, ctx)
        done += 1


# --------------------------------------------------------------------------- the command


def _interrupt_once(signum: int, frame: Any) -> None:
    """Workers turn the first SIGINT/SIGTERM into KeyboardInterrupt (the running trial is recorded
    failed, not left RUNNING) and ignore repeats while they clean up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _spawn(index: int, *, suite_path: str, variant: str, trials: int, storage: str, name: str,
           overrides: list[str], track: bool, tracking_uri: str | None, parent_id: str | None,
           threads: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-c", "from harness.cli import main; main()", "tune", suite_path, "-v", variant,
           "--trials", str(trials), "--storage", storage, "--study", name, "--worker-index", str(index)]
    for item in overrides:
        cmd += ["--set", item]
    if not track:
        cmd.append("--no-track")
    elif tracking_uri:
        cmd += ["--tracking-uri", tracking_uri]
    if parent_id:
        cmd += ["--parent-run-id", parent_id]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return subprocess.Popen(cmd, env=env)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def summarize(study: optuna.Study) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    out: dict[str, Any] = {"trials": counts, "best_trial": None, "best_value": None, "params": {}}
    try:
        best = study.best_trial
    except ValueError:
        return out
    out.update(best_trial=best.number, best_value=best.value, params=dict(best.params))
    return out


def _write_best(suite: Suite, variant: str, entry: dict[str, Any]) -> Path:
    path = suite.output_dir / "best_params.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"suite": suite.name, "variants": {}}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            pass
    data.setdefault("variants", {})[variant] = entry
    data["suite"] = suite.name
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def tune(suite: Suite, *, suite_path: str, overrides: list[str], variants: list[str] | None = None,
         trials: int | None = None, storage: str | None = None, study: str | None = None, workers: int = 1,
         track: bool = True, tracking_uri: str | None = None, worker_index: int | None = None,
         parent_run_id: str | None = None, echo: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Tune each variant in turn; returns a summary per variant. ``worker_index`` marks a process
    started by ``--workers`` (it joins the study, never creates or tops it up, and starts no workers)."""
    from harness import tracking
    from harness.validate import build_task

    tracking.configure(enabled=track, tracking_uri=tracking_uri)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if variants:
        unknown = [v for v in variants if v not in suite.variants]
        if unknown:
            from harness.registry import suggest

            raise SuiteError([f"-v {u}: no such variant.{suggest(u, list(suite.variants))}" for u in unknown])
    chosen = list(variants or suite.variants)
    if study and len(chosen) > 1:
        raise TuneError(f"--study {study} names one study; pick one variant with -v (studies default to "
                        f"{suite.name}.<variant>)")
    if workers < 1:
        raise TuneError("--workers must be at least 1")
    n_trials = trials or suite.tune.trials
    url = storage or DEFAULT_STORAGE
    metric, direction = tuned_metric(suite)
    # Validate every chosen variant before the first trial trains.
    prepared = {}
    for variant in chosen:
        space, source = space_for(suite, variant)
        prepared[variant] = (space, source, check_space(suite, variant, space))
    storage_obj = open_storage(url)
    tracker = _Tracker() if track else None
    task = build_task(suite)
    joined = worker_index is not None
    if joined:
        signal.signal(signal.SIGINT, _interrupt_once)
        signal.signal(signal.SIGTERM, _interrupt_once)
    elif workers > 1:
        try:
            import torch

            torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
        except Exception:  # noqa: BLE001 - a thread count is a nicety
            pass
    results: dict[str, dict[str, Any]] = {}
    for variant in chosen:
        space, source, data = prepared[variant]
        steps = int(data["variants"][variant]["train"].get("steps", suite.train.steps))
        name = study or study_name(suite, variant)
        st = create_or_join(name, storage_obj, direction=direction, trials=n_trials, seed=suite.tune.seed,
                            steps=steps, space=space, metric=metric, config=trial_config(data),
                            join_only=joined, echo=echo)
        waiting = len(st.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        if not joined:
            echo(f"tuning {variant}: study {name} in {display_url(url)}, {n_trials} trials ({waiting} to run), "
                 f"{workers} worker(s), {steps} steps each; {direction} {metric}; space from {source}: "
                 + ", ".join(p.describe() for p in space.values()))
        experiment_id = parent_id = None
        if tracker and waiting:
            if joined and parent_run_id:
                parent_id, experiment_id = parent_run_id, tracker.experiment_of(parent_run_id)
            else:
                experiment_id = tracker.experiment(f"{suite.name}-tune")
                parent_id = tracker.start(experiment_id, f"{variant}-tune-{time.strftime('%Y%m%d-%H%M%S')}", {
                    "harness.role": "tune-parent", "harness.suite": suite.name, "harness.variant": variant,
                    "harness.study": name, "harness.storage": display_url(url), "harness.metric": metric,
                    "harness.direction": direction, "harness.git_commit": tracking.git_commit(),
                    "harness.device": tracking.device_label(), "harness.versions": tracking.versions(),
                })
                tracker.params(parent_id, {"study": name, "storage": display_url(url), "trials": n_trials,
                                           "workers": workers, "metric": metric, "direction": direction,
                                           "seed": suite.tune.seed, "steps": steps, "space_source": source,
                                           "space": json.dumps({k: p.as_dict() for k, p in space.items()}),
                                           "sampler": "TPE (seeded per trial)", "pruner":
                                           f"median(startup={PRUNER_STARTUP_TRIALS}, warmup={steps // 4})"})
        ctx = _Context(suite, variant, data, space, metric, steps, name, task, tracker, experiment_id, parent_id,
                       worker_index or 0, echo)
        if not waiting and not joined:
            echo(f"study {name}: no queued trials left; raise --trials above the study's budget to add some")
        procs: list[subprocess.Popen[bytes]] = []
        status = "FINISHED"
        try:
            if not joined and workers > 1 and waiting:
                threads = max(1, (os.cpu_count() or 1) // workers)
                procs = [_spawn(i, suite_path=suite_path, variant=variant, trials=n_trials, storage=url, name=name,
                                overrides=overrides, track=track, tracking_uri=tracker.uri if tracker else None,
                                parent_id=parent_id, threads=threads) for i in range(1, workers)]
            _work(st, ctx)
            for i, p in enumerate(procs, 1):
                if p.wait() != 0:
                    echo(f"worker {i} exited with status {p.returncode}; see its lines above")
            if not joined:
                summary = summarize(st)
                summary.update(study=name, storage=display_url(url), metric=metric, direction=direction,
                               overrides=param_overrides(variant, summary["params"]))
                results[variant] = summary
                path = _write_best(suite, variant, summary)
                left = summary["trials"].get("running", 0) + summary["trials"].get("waiting", 0)
                if left:
                    echo(f"study {name}: {left} trial(s) still running or queued (another worker, or one that died)")
                if tracker and parent_id:
                    tracker.client.log_artifact(parent_id, str(path))
        except BaseException:
            status = "KILLED"
            _stop(procs)
            raise
        finally:
            if tracker and parent_id and not joined:
                final = summarize(st)
                tracker.metrics(parent_id, {f"trials_{k}": v for k, v in final["trials"].items()})
                if final["best_value"] is not None:
                    tracker.metrics(parent_id, {f"best_{metric}": final["best_value"]})
                    tracker.tags(parent_id, {"harness.best_trial": str(final["best_trial"]),
                                             "harness.best_params": json.dumps(final["params"])})
                tracker.end(parent_id, status)
    if not joined:
        _print_table(suite, results, metric, echo)
        if results:
            echo(f"Best params: {suite.output_dir / 'best_params.json'}. Re-run them over all seeds: "
                 f"harness run {suite_path} --best" + (f" --storage {storage}" if storage else ""))
    return results


def _print_table(suite: Suite, results: dict[str, dict[str, Any]], metric: str, echo: Callable[[str], None]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{suite.name}: best trial per variant")
    for col in ("variant", "study", "complete", "pruned", "failed", "best trial", f"best {metric}", "params"):
        table.add_column(col, no_wrap=col in ("variant", "study"))
    for variant, s in results.items():
        t = s["trials"]
        table.add_row(variant, s["study"], str(t.get("complete", 0)), str(t.get("pruned", 0)), str(t.get("fail", 0)),
                      "-" if s["best_trial"] is None else str(s["best_trial"]),
                      "-" if s["best_value"] is None else f"{s['best_value']:.4f}",
                      ", ".join(f"{k}={_fmt(v)}" for k, v in s["params"].items()) or "-")
    console = Console(width=max(Console().width, 120))
    with console.capture() as cap:
        console.print(table)
    echo(cap.get().rstrip("\n"))


# --------------------------------------------------------------------------- harness run --best


def _toml(value: Any) -> str:
    """A value as the TOML text that ``--set key=<text>`` parses back to the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else
                                                         ("inf" if value > 0 else "-inf"))
    return json.dumps(value)


def param_overrides(variant: str, params: dict[str, Any]) -> list[str]:
    """Sampled params as --set strings on the variant: train.lr -> variants.<v>.train.lr=..."""
    return [f"variants.{variant}.{key}={_toml(value)}" for key, value in params.items()]


def best_overrides(suite: Suite, storage: str | None = None, variants: list[str] | None = None, *,
                   suite_path: str = "SUITE") -> list[str]:
    """--set strings that give each variant its best trial's params, from studies ``<suite>.<variant>``.
    Raises TuneError naming every variant without a usable study and the command that makes one."""
    url = storage or DEFAULT_STORAGE
    shown = display_url(url)
    store_flag = f" --storage {url}" if storage else ""
    try:
        store = open_storage(url, must_exist=True)
    except TuneError as exc:
        raise TuneError(f"{exc} (no tuning results; run `harness tune {suite_path}{store_flag}` first)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out: list[str] = []
    problems: list[str] = []
    for variant in variants or list(suite.variants):
        name = study_name(suite, variant)
        try:
            study = optuna.load_study(study_name=name, storage=store)
        except KeyError:
            problems.append(f"--best: no study {name!r} in {shown} for variant {variant!r}; tune it first: "
                            f"harness tune {suite_path} -v {variant}{store_flag}")
            continue
        try:
            best = study.best_trial
        except ValueError:
            problems.append(f"--best: study {name!r} has no completed trial yet; run "
                            f"harness tune {suite_path} -v {variant}{store_flag}")
            continue
        out += param_overrides(variant, best.params)
    if problems:
        raise TuneError("\n".join(problems))
    return out


__all__ = ["tune", "best_overrides", "param_overrides", "parse_space", "space_for", "open_storage", "TuneError",
           "DEFAULT_STORAGE"]
