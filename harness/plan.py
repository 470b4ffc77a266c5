"""Planning a suite: from a typed Suite to one budget-matched Plan per variant, before any training.

Planning checks what it needs to plan (names, capabilities, options, data, budgets) and reports
every problem in one ``SuiteError``, one line each, starting with its TOML path. ``harness
validate`` is planning without training; the runner and tuning plan the same way.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Iterable

from pydantic import ValidationError

from harness.registry import UnknownNameError, get_registries
from harness.suite import Suite, SuiteError, TrainSection, unknown_key

SPLITS = ("train", "val", "test")


@dataclass
class Plan:
    """A variant ready to build: its model config after budget matching."""

    variant: str
    model_config: dict[str, Any]
    target: int | None = None
    achieved: int | None = None
    count: str | None = None
    knob: str | None = None

    @property
    def gap(self) -> float | None:
        if self.target is None or self.achieved is None:
            return None
        return (self.achieved - self.target) / self.target


# What a mixer's constructor takes besides its options (see MixerSpec).
MIXER_ARGS = ("dim", "heads", "ctx")


def keyword_options(fn: Any, skip: Iterable[str] = ()) -> dict[str, inspect.Parameter] | None:
    """The named parameters ``fn`` takes, less ``skip``; None when it takes any (``**kwargs``)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return {k: p for k, p in params.items() if k not in skip and p.kind is not p.VAR_POSITIONAL}


def _known_keys(problems: list[str], path: str, given: Iterable[str], allowed: Iterable[str] | None,
                owner: str) -> bool:
    """Record each key in ``given`` that ``allowed`` lacks (None allows any); True when none is unknown."""
    if allowed is None:
        return True
    allowed = list(allowed)
    unknown = [k for k in given if k not in allowed]
    problems += [unknown_key(f"{path}.{k}", allowed, owner) for k in unknown]
    return not unknown


def build_task(suite: Suite) -> Any:
    from harness.data_files import register_task

    task = get_registries().tasks.get(suite.suite.task).load()(**suite.task)
    register_task(task, suite.suite.task, suite.task)  # the files it reads go into its runs' manifests
    return task


def _name(problems: list[str], path: str, fn: Any) -> Any:
    """``fn()``, or None with the unknown name recorded as a problem."""
    try:
        return fn()
    except UnknownNameError as exc:
        problems.append(f"{path}: {exc}")
        return None


def _check_header(suite: Suite, problems: list[str]) -> Any:
    """[suite]: task, metric, reference, seeds. Returns the task spec (None if unknown)."""
    regs = get_registries()
    s = suite.suite
    task_spec = _name(problems, "suite.task", lambda: regs.tasks.get(s.task))
    split, _, metric_name = s.metric.partition("/")
    if split not in SPLITS or not metric_name:
        problems.append(f"suite.metric: {s.metric!r} must be '<split>/<metric>' with split one of {', '.join(SPLITS)}")
    else:
        _name(problems, "suite.metric", lambda: regs.metrics.get(metric_name))
        if task_spec and task_spec.metrics and metric_name in regs.metrics and metric_name not in task_spec.metrics:
            problems.append(f"suite.metric: task {s.task!r} reports {', '.join(task_spec.metrics)}, not {metric_name!r}")
    if s.reference is not None and s.reference not in suite.variants:
        problems.append(f"suite.reference: {s.reference!r} is not a variant; variants: {', '.join(suite.variants)}")
    if not s.seeds:
        problems.append("suite.seeds: list at least one seed")
    return task_spec


def _check_task(suite: Suite, task_spec: Any, check_data: bool, problems: list[str]) -> Any:
    """Build the task from [task]; returns it, or None with the problem recorded."""
    if not _known_keys(problems, "task", suite.task, keyword_options(task_spec.load()),
                       f"task {suite.suite.task!r}"):
        return None
    try:
        task = build_task(suite)
        if check_data and hasattr(task, "check_data"):
            task.check_data()
        return task
    except Exception as exc:
        problems.append(f"task: {exc}")
        return None


def _check_train(suite: Suite, name: str, problems: list[str]) -> None:
    path, v = f"variants.{name}", suite.variants[name]
    train_keys = set(TrainSection.model_fields)
    _known_keys(problems, f"{path}.train", v.train, train_keys, "[train]")
    try:
        TrainSection.model_validate({**suite.train.model_dump(), **{k: x for k, x in v.train.items() if k in train_keys}})
    except ValidationError as exc:
        problems += [f"{path}.train.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]


def _load_failure(path: str, what: str, spec: Any, exc: Exception) -> str:
    return (f"{path}: loading {what} of {spec.name!r} failed: {type(exc).__name__}: {exc}; report it to "
            f"plugin {spec.plugin!r}")


def _check_model_keys(suite: Suite, name: str, model_spec: Any, problems: list[str]) -> bool:
    """[model] and the variant's model keys against the model's declared config; True when all are known.
    A [model] problem reads the same for every variant, so it is said once."""
    try:
        fields = model_spec.config_fields()
    except Exception as exc:  # a plugin's broken config target
        problems.append(_load_failure(f"variants.{name}", "the config", model_spec, exc))
        return False
    owner = f"model {model_spec.name!r}"
    shared = _known_keys(problems, "model", suite.model, fields, owner)
    return _known_keys(problems, f"variants.{name}.model", suite.variants[name].model, fields, owner) and shared


def _check_options(name: str, options: dict[str, Any], mixer_spec: Any, problems: list[str]) -> bool:
    """A variant's mixer options against the mixer's constructor; True when all are known."""
    try:
        allowed = keyword_options(mixer_spec.load(), MIXER_ARGS)
    except Exception as exc:
        problems.append(_load_failure(f"variants.{name}.mixer", "the mixer", mixer_spec, exc))
        return False
    return _known_keys(problems, f"variants.{name}.options", options, allowed, f"mixer {mixer_spec.name!r}")


def _knob_problem(suite: Suite, model_spec: Any) -> str | None:
    if suite.budget is None:
        return None
    try:
        knobs = model_spec.budget_knobs()
    except ValueError as exc:
        return f"budget.knob: {exc}"
    except Exception:  # a config that fails to load: _check_model_keys reports it
        return None
    if suite.budget.knob not in knobs:
        return (f"budget.knob: model {model_spec.name!r} cannot be matched by {suite.budget.knob!r}; its knobs: "
                f"{', '.join(knobs) or 'none'}")
    return None


def _capability_problem(suite: Suite, name: str, task: Any, task_spec: Any, model_spec: Any, mixer_spec: Any) -> str | None:
    """Why this variant's model or mixer cannot run the task, or None."""
    path, v, meta, task_name = f"variants.{name}", suite.variants[name], task.meta, suite.suite.task
    if meta.input not in model_spec.inputs:
        return (f"{path}: model {model_spec.name!r} takes {', '.join(model_spec.inputs)} inputs but task "
                f"{task_name!r} gives {meta.input}")
    if (meta.causal or task_spec.causal) and not mixer_spec.causal_ok:
        return (f"{path}.mixer: {v.mixer!r} is not causal (causal_ok=False) but task {task_name!r} is causal; "
                f"pick a causal mixer")
    if task_spec.needs_padding and not mixer_spec.padding_ok:
        return f"{path}.mixer: {v.mixer!r} does not support padding but task {task_name!r} pads"
    if mixer_spec.needs_grid and meta.input != "image":
        return f"{path}.mixer: {v.mixer!r} needs an image grid but task {task_name!r} has {meta.input} inputs"
    return _knob_problem(suite, model_spec)


def plan_suite(suite: Suite, *, check_data: bool = True, match: bool = True, contract: bool = False) -> dict[str, Plan]:
    """Each variant's Plan (budget matched when ``match``); SuiteError lists every problem. With
    ``contract``, every mixer is also probed for leaks on this task (harness.contract_gate)."""
    regs = get_registries()
    problems: list[str] = []
    task_spec = _check_header(suite, problems)
    task = _check_task(suite, task_spec, check_data, problems) if task_spec else None
    plans: dict[str, Plan] = {}
    for name, v in suite.variants.items():
        _check_train(suite, name, problems)
        path = f"variants.{name}"
        model_spec = _name(problems, f"{path}.model_name" if v.model_name else "suite.model",
                           lambda: regs.models.get(suite.model_name(name)))
        mixer_spec = _name(problems, f"{path}.mixer", lambda: regs.mixers.get(v.mixer))
        keys_ok = model_spec is not None and _check_model_keys(suite, name, model_spec, problems)
        options_ok = mixer_spec is not None and _check_options(name, v.options, mixer_spec, problems)
        if task is None or model_spec is None or mixer_spec is None:
            continue
        problem = _capability_problem(suite, name, task, task_spec, model_spec, mixer_spec)
        if problem or not (keys_ok and options_ok):  # building would only repeat a key problem
            problems += [problem] if problem else []
            continue
        plan = _plan(suite, name, model_spec, task.meta, path, problems, match)
        if plan is not None:
            plans[name] = plan
    if contract and not problems and task is not None:
        from harness.contract_gate import gate_problems

        problems += gate_problems(suite, task, task_spec, plans)
    if problems:
        raise SuiteError(list(dict.fromkeys(problems)))  # a suite-wide problem is said once
    return plans


def _plan(suite: Suite, name: str, model_spec: Any, meta: Any, path: str, problems: list[str],
          match: bool) -> Plan | None:
    import torch

    from harness.budget import BudgetError, match_budget

    v = suite.variants[name]
    config = {**suite.model, **v.model}
    build = model_spec.load()

    def make(cfg: dict[str, Any]) -> Any:
        return build(meta, mixer=v.mixer, mixer_options=v.options, **cfg)

    try:
        with torch.device("meta"):
            make(config)
    except TypeError as exc:
        problems.append(f"{path}: model {model_spec.name!r} rejects the config: {exc}")
        return None
    except (ValueError, UnknownNameError) as exc:
        where = f"{path}.options" if "option" in str(exc) else f"{path}"
        problems.append(f"{where}: {exc}")
        return None
    except Exception as exc:  # a plugin's own bug: name it, don't dump a traceback
        problems.append(f"{path}: building {model_spec.name!r} with mixer {v.mixer!r} on the meta device failed: "
                        f"{type(exc).__name__}: {exc}; report it to the plugin that provides the mixer or model")
        return None
    budget = suite.budget
    if budget is None or not match:
        return Plan(name, config)
    if budget.knob in v.model:
        problems.append(f"{path}.model.{budget.knob}: the budget matcher sets {budget.knob}; don't override it")
        return None
    try:
        result = match_budget(make, config, target=budget.target, tolerance=budget.tolerance, knob=budget.knob,
                              count=budget.count)
    except BudgetError as exc:
        problems.append(f"budget ({path}): {exc}")
        return None
    return Plan(name, {**config, budget.knob: result.value}, result.target, result.achieved, result.count, result.knob)


__all__ = ["plan_suite", "Plan", "SuiteError", "build_task"]
