"""The search space: which suite keys a variant is tuned over, and how each is sampled.

``[tune].space`` maps dotted keys to distributions: ``train.<key>``, ``model.<key>`` or
``options.<mixer option>``, each ``{low, high, log?, step?}`` (an int range when low, high and step
are ints) or ``{choices = [...]}``. The sampled values are applied to the tuned variant
(``variants.<v>.train.<key>`` ...), so budget matching still runs for every trial and a tuned model
stays parameter-matched. With no ``[tune].space`` the mixer's declared ``search_space`` (as
``options.*``) plus ``train.lr`` in [1e-4, 1e-2] (log) is used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from harness.suite import Suite, SuiteError, TrainSection

DEFAULT_SPACE: dict[str, dict[str, Any]] = {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}}
SECTIONS = ("train", "model", "options")
RANGE_FIELDS = {"low", "high", "log", "step"}


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


def format_value(value: Any) -> str:
    """A sampled value as the trial lines and the summary table show it."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _parse_choices(key: str, entry: dict[str, Any], path: str) -> tuple[Param | None, list[str]]:
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


def _range_problem(entry: dict[str, Any], path: str) -> str | None:
    unknown = sorted(set(entry) - RANGE_FIELDS)
    if unknown:
        return (f"{path}: unknown field(s) {', '.join(unknown)}; a range has low, high, log, step and a "
                f"list has choices")
    missing = [f for f in ("low", "high") if f not in entry]
    if missing:
        return f"{path}: a range needs {' and '.join(missing)} (or give choices = [...])"
    low, high, log, step = entry["low"], entry["high"], entry.get("log", False), entry.get("step")
    if not _number(low) or not _number(high):
        return f"{path}: low and high must be numbers, got low={low!r}, high={high!r}"
    if not isinstance(log, bool):
        return f"{path}.log: expected true or false, got {log!r}"
    if step is not None and (not _number(step) or step <= 0):
        return f"{path}.step: expected a positive number, got {step!r}"
    if low > high:
        return f"{path}: low ({low}) is above high ({high})"
    if log and low <= 0:
        return f"{path}: a log range needs low > 0, got {low}"
    return None


def _parse_range(key: str, entry: dict[str, Any], path: str) -> tuple[Param | None, list[str]]:
    problem = _range_problem(entry, path)
    if problem:
        return None, [problem]
    low, high, log, step = entry["low"], entry["high"], entry.get("log", False), entry.get("step")
    kind = "int" if all(isinstance(v, int) for v in (low, high) + ((step,) if step is not None else ())) else "float"
    if log and step is not None and not (kind == "int" and step == 1):
        return None, [f"{path}: log and step don't combine (Optuna samples a log range continuously)"]
    return Param(key, kind, low=low, high=high, log=log, step=step), []


def _parse_entry(key: str, entry: Any, path: str) -> tuple[Param | None, list[str]]:
    if not isinstance(entry, dict):
        return None, [f"{path}: expected a table {{low, high, log?, step?}} or {{choices = [...]}}, got {entry!r}"]
    if "choices" in entry:
        return _parse_choices(key, entry, path)
    return _parse_range(key, entry, path)


def _key_problem(key: str, path: str) -> str | None:
    section, _, name = key.partition(".")
    if section not in SECTIONS or not name or "." in name:
        return f"{path}: keys look like train.<key>, model.<key> or options.<mixer option>, e.g. train.lr"
    if section == "train" and name not in TrainSection.model_fields:
        from harness.registry import suggest

        return f"{path}: unknown train key {name!r}.{suggest(name, sorted(TrainSection.model_fields))}"
    return None


def parse_space(raw: dict[str, Any], where: str = "tune.space") -> dict[str, Param]:
    """Structure-check a space; raise SuiteError with one line per problem."""
    problems: list[str] = []
    space: dict[str, Param] = {}
    for key, entry in raw.items():
        path = f"{where}.{key}" if where == "tune.space" else f"tune.space.{key} ({where})"
        problem = _key_problem(key, path)
        if problem:
            problems.append(problem)
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
