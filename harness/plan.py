"""Planning a suite: from a typed Suite to one budget-matched Plan per variant, before any training.

Planning checks what it needs to plan (names, capabilities, options, data, budgets) and reports
every problem in one ``SuiteError``, one line each, starting with its TOML path. ``harness
validate`` is planning without training; the runner and tuning plan the same way.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from harness.registry import UnknownNameError, get_registries
from harness.suite import Suite, SuiteError, TrainSection

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


def _accepts(fn: Any, keys: set[str], skip: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return [], []
    allowed = [k for k in params if k not in skip]
    return sorted(keys - set(params)), allowed


def build_task(suite: Suite) -> Any:
    return get_registries().tasks.get(suite.suite.task).load()(**suite.task)


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
    unknown, allowed = _accepts(task_spec.load(), set(suite.task))
    if unknown:
        problems.append(f"task: unknown option(s) {', '.join(unknown)} for task {suite.suite.task!r}; "
                        f"options: {', '.join(allowed) or 'none'}")
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
    for key in sorted(set(v.train) - train_keys):
        problems.append(f"{path}.train.{key}: unknown key; train keys: {', '.join(sorted(train_keys))}")
    try:
        TrainSection.model_validate({**suite.train.model_dump(), **{k: x for k, x in v.train.items() if k in train_keys}})
    except ValidationError as exc:
        problems += [f"{path}.train.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]


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
    if suite.budget is not None and suite.budget.knob not in model_spec.knobs:
        return (f"budget.knob: model {model_spec.name!r} cannot be matched by {suite.budget.knob!r}; its knobs: "
                f"{', '.join(model_spec.knobs) or 'none'}")
    return None


def plan_suite(suite: Suite, *, check_data: bool = True, match: bool = True) -> dict[str, Plan]:
    """Each variant's Plan (budget matched when ``match``); SuiteError lists every problem."""
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
        if task is None or model_spec is None or mixer_spec is None:
            continue
        problem = _capability_problem(suite, name, task, task_spec, model_spec, mixer_spec)
        if problem:
            problems.append(problem)
            continue
        plan = _plan(suite, name, model_spec, task.meta, path, problems, match)
        if plan is not None:
            plans[name] = plan
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
