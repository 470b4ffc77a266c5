"""Suites: TOML -> typed, strict Suite (unknown keys fail) -> list of Runs.

``extends = "base.toml"`` merges a base file (tables merge key by key, the extending file wins);
``--set dotted.key=value`` overrides any key, the value parsed as TOML (strings may go unquoted).
"""
from __future__ import annotations

import copy
import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.specs import BUDGET_KNOBS, Run


class SuiteError(ValueError):
    """A suite problem; ``problems`` holds one line per problem, each starting with its TOML path."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SuiteSection(_Strict):
    name: str
    task: str
    model: str
    metric: str = "test/accuracy"
    seeds: list[int] = Field(default_factory=lambda: [0])
    reference: str | None = None
    output_dir: str | None = None          # default: results/<name>


class BudgetSection(_Strict):
    params: int | None = Field(default=None, gt=0)
    non_embedding_params: int | None = Field(default=None, gt=0)
    tolerance: float = Field(default=0.02, ge=0, lt=1)
    knob: Literal[BUDGET_KNOBS] = "dim"  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _one_target(self) -> "BudgetSection":
        if (self.params is None) == (self.non_embedding_params is None):
            raise ValueError("set exactly one of params or non_embedding_params")
        return self

    @property
    def count(self) -> str:
        return "params" if self.params is not None else "non_embedding_params"

    @property
    def target(self) -> int:
        return int(self.params if self.params is not None else self.non_embedding_params)  # type: ignore[arg-type]


class TrainSection(_Strict):
    """The training configuration: the suite's ``[train]`` table and what ``harness.train`` runs."""

    steps: int = Field(default=1000, gt=0)
    batch_size: int = Field(default=128, gt=0)
    lr: float = Field(default=3e-3, gt=0)
    warmup: float = Field(default=0.1, ge=0, le=1)
    weight_decay: float = Field(default=0.05, ge=0)
    grad_clip: float = Field(default=1.0, ge=0)
    eval_every: int = Field(default=250, gt=0)
    log_every: int = Field(default=50, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True                   # bf16 autocast on CUDA


class VariantSection(_Strict):
    mixer: str
    options: dict[str, Any] = Field(default_factory=dict)
    model: dict[str, Any] = Field(default_factory=dict)       # per-variant overrides, flagged in reports
    train: dict[str, Any] = Field(default_factory=dict)
    model_name: str | None = None                             # a variant may use another model (mop.vit)
    description: str = ""


class TuneSection(_Strict):
    trials: int = Field(default=20, gt=0)
    space: dict[str, dict[str, Any]] = Field(default_factory=dict)
    seed: int = 0
    metric: str | None = None          # default: the suite metric on the validation split
    steps: int | None = None           # training steps per trial (default: train.steps)


class ProfileSection(_Strict):
    enabled: bool = False
    steps: int = Field(default=5, gt=0)
    wait: int = Field(default=1, ge=0)
    warmup: int = Field(default=1, ge=0)


class Suite(_Strict):
    suite: SuiteSection
    task: dict[str, Any] = Field(default_factory=dict)        # task options, e.g. data_root, download
    budget: BudgetSection | None = None
    model: dict[str, Any] = Field(default_factory=dict)
    train: TrainSection = Field(default_factory=TrainSection)
    variants: dict[str, VariantSection]
    tune: TuneSection = Field(default_factory=TuneSection)
    profile: ProfileSection = Field(default_factory=ProfileSection)

    @property
    def name(self) -> str:
        return self.suite.name

    @property
    def reference(self) -> str:
        return self.suite.reference or next(iter(self.variants))

    @property
    def output_dir(self) -> Path:
        return Path(self.suite.output_dir or Path("results") / self.suite.name)

    def model_name(self, variant: str) -> str:
        return self.variants[variant].model_name or self.suite.model

    def resolved(self, variant: str) -> dict[str, Any]:
        """The complete configuration of one variant: what a run's config hash covers."""
        v = self.variants[variant]
        return {
            "task": self.suite.task, "task_options": self.task, "model": self.model_name(variant),
            "model_config": {**self.model, **v.model}, "mixer": v.mixer, "mixer_options": v.options,
            "train": {**self.train.model_dump(), **v.train}, "metric": self.suite.metric,
            "budget": self.budget.model_dump() if self.budget else None,
        }

    def runs(self, variants: list[str] | None = None) -> list[Run]:
        out = []
        for variant in variants or list(self.variants):
            cfg = self.resolved(variant)
            v = self.variants[variant]
            overrides = tuple([f"model.{k}" for k in v.model] + [f"train.{k}" for k in v.train])
            for seed in self.suite.seeds:
                out.append(Run(
                    suite=self.name, variant=variant, seed=seed, task=cfg["task"], model=cfg["model"],
                    mixer=cfg["mixer"], metric=cfg["metric"], task_options=cfg["task_options"],
                    model_config=cfg["model_config"], mixer_options=cfg["mixer_options"], train=cfg["train"],
                    budget=cfg["budget"], profile=self.profile.model_dump() if self.profile.enabled else None,
                    overrides=overrides, config_hash=config_hash({**cfg, "seed": seed}),
                ))
        return out


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_toml(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in _seen:
        raise SuiteError([f"extends: {path.name} extends itself (cycle {' -> '.join(p.name for p in _seen)})"])
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SuiteError([f"{path}: no such suite file"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError([f"{path.name}: not valid TOML: {exc}"]) from None
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise SuiteError([f"extends: must be a file name string, got {base!r}"])
    return _merge(read_toml(path.parent / base, (*_seen, path)), data)


def parse_literal(text: str) -> Any:
    """A TOML (or JSON) literal: 5, 0.1, true, "x", [1, 2]; anything else is the bare string, so
    ``mixer=softmax`` needs no quotes. Never evaluated as code."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise SuiteError([f"--set {item!r}: expected dotted.key=value, e.g. train.steps=100"])
    return key.strip().split("."), parse_literal(raw)


def apply_values(data: dict[str, Any], values: dict[str, Any], *, source: str | None = None) -> dict[str, Any]:
    """A copy of ``data`` with each ``{"dotted.key": value}`` set, creating tables on the way;
    ``source`` names where the values came from in an error (default: the key)."""
    data = copy.deepcopy(data)
    for key, value in values.items():
        path = key.split(".")
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SuiteError([f"{source or key}: {part} is not a table"])
        node[path[-1]] = copy.deepcopy(value)
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        data = apply_values(data, {".".join(path): value}, source=f"--set {item!r}")
    return data


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def parse_suite(data: dict[str, Any]) -> Suite:
    try:
        return Suite.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = _loc(tuple(p for p in err["loc"] if p not in ("function-after[_one_target()]",)))
            if err["type"] == "extra_forbidden":
                problems.append(f"{loc}: unknown key (check the spelling; see `harness validate --help`)")
            elif err["type"] == "missing":
                problems.append(f"{loc}: required key is missing")
            else:
                problems.append(f"{loc}: {err['msg']}" + (f" (got {err['input']!r})" if "input" in err and
                                                             not isinstance(err["input"], dict) else ""))
        raise SuiteError(problems) from None


def load_suite(path: str | Path, overrides: list[str] | None = None, *,
               values: dict[str, Any] | None = None) -> Suite:
    """Read, merge and type-check a suite (names and budgets: see harness.plan). ``values`` (dotted
    keys, typed values, e.g. tuned params) apply first, then the ``--set`` strings in ``overrides``."""
    data = apply_values(read_toml(Path(path)), values or {})
    return parse_suite(apply_overrides(data, overrides or []))
