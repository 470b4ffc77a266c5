"""The suite a trial trains: one variant, the first seed, ``[tune].steps``, and the sampled params.

The objective is the validation metric (``[tune].metric``, default ``val/<suite metric>``), never
the test metric: tuning on test is leakage, and test metrics are not even logged for trials. Each
trial trains ``[tune].steps`` (default ``train.steps``) on the first suite seed.
"""
from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from harness.suite import Suite, SuiteError, TrainSection, apply_values, parse_suite
from harness.tune.space import Param

# Where things live and which device trains may differ between the machines sharing a study; so
# may [resources] (what a trial asks of a Ray cluster: where it trains, not what).
_LOCAL_KEYS = re.compile(r"^suite\.output_dir$|^task\..*(root|dir|path|cache|download|workers)|(^|\.)train\.(device|threads)$"
                         r"|^resources\.")


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


def variant_values(variant: str, params: dict[str, Any]) -> dict[str, Any]:
    """Sampled params as suite values on the variant: train.lr -> variants.<v>.train.lr."""
    return {f"variants.{variant}.{key}": value for key, value in params.items()}


def trial_suite(data: dict[str, Any], variant: str, params: dict[str, Any]) -> Suite:
    """Apply sampled params (dotted keys) to the variant of a ``variant_data`` dict."""
    return parse_suite(apply_values(data, variant_values(variant, params)))


def trial_steps(suite: Suite, data: dict[str, Any], variant: str) -> int:
    """How many steps each trial of a ``variant_data`` dict trains."""
    return int(data["variants"][variant]["train"].get("steps", suite.train.steps))


def _space_conflict(suite: Suite, space: dict[str, Param]) -> str | None:
    if suite.tune.steps is not None and "train.steps" in space:
        return "tune.space.train.steps: conflicts with tune.steps; drop one of them"
    if suite.budget is not None and f"model.{suite.budget.knob}" in space:
        return (f"tune.space.model.{suite.budget.knob}: the budget matcher sets {suite.budget.knob}; "
                f"tune another key or change [budget] knob")
    return None


def _train_problem(train: dict[str, Any], param: Param) -> str | None:
    """Train keys are typed and range-checked: every probed value of the range must pass."""
    for value in param.probes():
        try:
            TrainSection.model_validate({**train, param.name: value})
        except ValidationError as exc:
            return f"tune.space.{param.key}: {value!r} is not allowed: {exc.errors()[0]['msg']}"
    return None


def _variant_problem(data: dict[str, Any], variant: str, param: Param) -> str | None:
    """A model or mixer key must accept at least one probed value (with budget matching)."""
    from harness.plan import plan_suite

    errors = []
    for value in param.probes():
        try:
            plan_suite(trial_suite(data, variant, {param.key: value}), check_data=False)
        except SuiteError as exc:
            errors.append((value, exc.problems[0]))
    if not errors or len(errors) < len(param.probes()):
        return None
    return (f"tune.space.{param.key}: no tried value works for variant {variant!r} "
            f"(tried {', '.join(repr(e[0]) for e in errors)}): {errors[0][1]}")


def check_space(suite: Suite, variant: str, space: dict[str, Param]) -> dict[str, Any]:
    """Pre-flight before any trial trains: the variant itself must be valid, and every tuned key must
    accept some value of its range (both ends or every choice are tried, with budget matching), so a
    misspelt option fails now in one line instead of failing every trial. Returns variant_data."""
    from harness.plan import plan_suite

    data = variant_data(suite, variant)
    conflict = _space_conflict(suite, space)
    if conflict:
        raise SuiteError([conflict])
    plan_suite(trial_suite(data, variant, {}))
    problems = []
    for param in space.values():
        if param.section == "train":
            problem = _train_problem(data["train"], param)
        else:
            problem = _variant_problem(data, variant, param)
        if problem:
            problems.append(problem)
    if problems:
        raise SuiteError(problems)
    return data


def trial_config(data: dict[str, Any]) -> dict[str, str]:
    """What every trial of a study must share (a ``variant_data`` dict, flattened): trials trained
    for another number of steps, batch size or budget are not comparable."""
    from harness.tracking import flatten

    flat = flatten("", {k: v for k, v in data.items() if k not in ("tune", "profile")})
    return {k: v for k, v in flat.items() if not _LOCAL_KEYS.search(k)}
