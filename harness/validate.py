"""Semantic checks of a typed suite, done before any training: names, capabilities, options,
data and budgets. Every problem is one line that starts with its TOML path."""
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


def check_suite(suite: Suite, *, check_data: bool = True, match: bool = True) -> dict[str, Plan]:
    """Raise SuiteError listing every problem; return each variant's Plan when there is none."""
    regs = get_registries()
    problems: list[str] = []
    s = suite.suite

    def name_problem(path: str, fn: Any) -> Any:
        try:
            return fn()
        except UnknownNameError as exc:
            problems.append(f"{path}: {exc}")
            return None

    task_spec = name_problem("suite.task", lambda: regs.tasks.get(s.task))
    split, _, metric_name = s.metric.partition("/")
    if split not in SPLITS or not metric_name:
        problems.append(f"suite.metric: {s.metric!r} must be '<split>/<metric>' with split one of {', '.join(SPLITS)}")
    else:
        name_problem("suite.metric", lambda: regs.metrics.get(metric_name))
        if task_spec and task_spec.metrics and metric_name in regs.metrics and metric_name not in task_spec.metrics:
            problems.append(f"suite.metric: task {s.task!r} reports {', '.join(task_spec.metrics)}, not {metric_name!r}")
    if s.reference is not None and s.reference not in suite.variants:
        problems.append(f"suite.reference: {s.reference!r} is not a variant; variants: {', '.join(suite.variants)}")
    if not s.seeds:
        problems.append("suite.seeds: list at least one seed")

    task = None
    if task_spec:
        unknown, allowed = _accepts(task_spec.load(), set(suite.task))
        if unknown:
            problems.append(f"task: unknown option(s) {', '.join(unknown)} for task {s.task!r}; "
                            f"options: {', '.join(allowed) or 'none'}")
        else:
            try:
                task = build_task(suite)
                if check_data and hasattr(task, "check_data"):
                    task.check_data()
            except Exception as exc:
                problems.append(f"task: {exc}")

    train_keys = set(TrainSection.model_fields)
    plans: dict[str, Plan] = {}
    for name, v in suite.variants.items():
        path = f"variants.{name}"
        for key in sorted(set(v.train) - train_keys):
            problems.append(f"{path}.train.{key}: unknown key; train keys: {', '.join(sorted(train_keys))}")
        try:
            TrainSection.model_validate({**suite.train.model_dump(), **{k: x for k, x in v.train.items() if k in train_keys}})
        except ValidationError as exc:
            problems += [f"{path}.train.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        model_spec = name_problem(f"{path}.model_name" if v.model_name else "suite.model",
                                  lambda: regs.models.get(suite.model_name(name)))
        mixer_spec = name_problem(f"{path}.mixer", lambda: regs.mixers.get(v.mixer))
        if task is None or model_spec is None or mixer_spec is None:
            continue
        meta = task.meta
        if meta.input not in model_spec.inputs:
            problems.append(f"{path}: model {model_spec.name!r} takes {', '.join(model_spec.inputs)} inputs but task "
                            f"{s.task!r} gives {meta.input}")
            continue
        causal = meta.causal or (task_spec is not None and task_spec.causal)
        if causal and not mixer_spec.causal_ok:
            problems.append(f"{path}.mixer: {v.mixer!r} is not causal (causal_ok=False) but task {s.task!r} is "
                            f"causal; pick a causal mixer")
            continue
        if task_spec is not None and task_spec.needs_padding and not mixer_spec.padding_ok:
            problems.append(f"{path}.mixer: {v.mixer!r} does not support padding but task {s.task!r} pads")
            continue
        if mixer_spec.needs_grid and meta.input != "image":
            problems.append(f"{path}.mixer: {v.mixer!r} needs an image grid but task {s.task!r} has {meta.input} inputs")
            continue
        plan = _plan(suite, name, model_spec, meta, path, problems, match)
        if plan is not None:
            plans[name] = plan
    if problems:
        raise SuiteError(problems)
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


__all__ = ["check_suite", "Plan", "SuiteError", "build_task"]
