"""Suites: TOML -> typed, strict Suite (unknown keys fail) -> list of Runs.

``extends = "base.toml"`` merges a base file (tables merge key by key, the extending file wins);
``--set dotted.key=value`` overrides any key, the value parsed as TOML (strings may go unquoted).
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.specs import BUDGET_KNOBS, Run


class SuiteError(ValueError):
    """A suite problem; ``problems`` holds one line per problem, each starting with its TOML path.
    ``partial``: for schema problems, the suite without the rejected keys, so that ``harness
    validate`` can go on to check names and budgets in the same pass (None when nothing is left)."""

    def __init__(self, problems: list[str], partial: "Suite | None" = None):
        self.problems = problems
        self.partial = partial
        super().__init__("\n".join(problems))


KEYS_HINT = "see `harness validate --keys`"

# Synonyms that spelling alone cannot lead back to (other libraries' names for the same key).
KEY_ALIASES = {
    "learning_rate": "lr", "num_steps": "steps", "n_steps": "steps", "max_steps": "steps", "iterations": "steps",
    "batch": "batch_size", "bs": "batch_size", "wd": "weight_decay", "clip": "grad_clip",
    "max_grad_norm": "grad_clip", "warmup_ratio": "warmup", "n_trials": "trials", "num_trials": "trials",
    "seed": "seeds", "layers": "depth", "num_layers": "depth", "n_layers": "depth", "num_heads": "heads",
    "n_heads": "heads", "d_model": "dim", "hidden_size": "dim", "embed_dim": "dim", "width": "dim",
    "patch_size": "patch", "mixer_options": "options", "model_config": "model",
}


def closest_key(key: str, choices: list[str]) -> str | None:
    """The key meant: a known synonym, else the closest spelling, else a misspelt synonym's key."""
    candidates = [KEY_ALIASES.get(key.lower())]
    candidates += difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
    candidates += [KEY_ALIASES[k] for k in difflib.get_close_matches(key.lower(), list(KEY_ALIASES), n=1, cutoff=0.8)]
    return next((c for c in candidates if c in choices), None)


def unknown_key(path: str, choices: Iterable[str], owner: str = "") -> str:
    """``train.learning_rate: unknown key; did you mean lr? (see ...)``; with no close key, the keys
    ``owner`` (e.g. "model 'vit'") takes."""
    key, choices = path.rpartition(".")[2], sorted(choices)
    close = closest_key(key, choices)
    if close:
        hint = f"did you mean {close}?"
    else:
        hint = f"{owner + ' ' if owner else ''}keys: {', '.join(choices) or 'none'}"
    return f"{path}: unknown key; {hint} ({KEYS_HINT})"


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
    threads: int | None = Field(default=None, gt=0)   # torch intra-op threads; None = harness.devices.available_cores()
    compile: bool = False              # torch.compile the model; compile time is logged apart (compile_seconds)


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


class ResourcesSection(_Strict):
    """What one run or tuning trial asks of a Ray cluster (``--executor ray``, ``--jobs``); the local
    executor ignores it. Not hashed: where a run trains is not what it trains."""

    num_cpus: float | None = Field(default=None, gt=0)   # None: 1 per run, or the cores / --jobs
    num_gpus: float = Field(default=0, ge=0)             # 0.5: two runs share one GPU

    @field_validator("num_cpus", "num_gpus")
    @classmethod
    def _whole_above_one(cls, value: float | None) -> float | None:
        # Ray refuses a fraction above one (a run may share one device, never span parts of two).
        if value is not None and value > 1 and value != int(value):
            raise ValueError("above 1 it must be a whole number (fractions below 1 share a device: 0.5, 0.25)")
        return value


# The typed tables, by the TOML path they sit at ("variants.<name>": each variant's table).
SECTIONS: dict[str, type[BaseModel]] = {
    "suite": SuiteSection, "budget": BudgetSection, "train": TrainSection, "variants.<name>": VariantSection,
    "tune": TuneSection, "profile": ProfileSection, "resources": ResourcesSection,
}


def section_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys the typed table at ``loc`` allows (``()``: the top level); [] for free-form tables."""
    if not loc:
        return list(Suite.model_fields)
    name = "variants.<name>" if loc[0] == "variants" and len(loc) == 2 else ".".join(map(str, loc))
    section = SECTIONS.get(name)
    return list(section.model_fields) if section else []


class Suite(_Strict):
    suite: SuiteSection
    task: dict[str, Any] = Field(default_factory=dict)        # task options, e.g. data_root, download
    budget: BudgetSection | None = None
    model: dict[str, Any] = Field(default_factory=dict)
    train: TrainSection = Field(default_factory=TrainSection)
    variants: dict[str, VariantSection]
    tune: TuneSection = Field(default_factory=TuneSection)
    profile: ProfileSection = Field(default_factory=ProfileSection)
    resources: ResourcesSection = Field(default_factory=ResourcesSection)

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
        """One Run per (variant, seed). Its config hash, which resume matches, covers the resolved
        configuration, the mixer's options with its registered defaults under them, and
        ``name==version`` of harness and every loaded plugin: a release with a fix or a changed
        default re-runs. The git commit is recorded (MLflow tag ``harness.git_commit``), not hashed:
        a commit that touches nothing a run uses must not re-run a suite."""
        from harness.plugins import plugin_infos
        from harness.registry import get_registries

        versions = sorted(f"{i.name}=={i.version}" for i in plugin_infos() if not i.error)
        mixers = get_registries().mixers
        out = []
        for variant in variants or list(self.variants):
            cfg = self.resolved(variant)
            v = self.variants[variant]
            defaults = mixers.get(v.mixer).defaults if v.mixer in mixers else {}
            hashed = {**cfg, "mixer_options": {**defaults, **v.options}, "versions": versions}
            overrides = tuple([f"model.{k}" for k in v.model] + [f"train.{k}" for k in v.train])
            for seed in self.suite.seeds:
                out.append(Run(
                    suite=self.name, variant=variant, seed=seed, task=cfg["task"], model=cfg["model"],
                    mixer=cfg["mixer"], metric=cfg["metric"], task_options=cfg["task_options"],
                    model_config=cfg["model_config"], mixer_options=cfg["mixer_options"], train=cfg["train"],
                    budget=cfg["budget"], profile=self.profile.model_dump() if self.profile.enabled else None,
                    overrides=overrides, config_hash=config_hash({**hashed, "seed": seed}),
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
    # Problems are printed after the suite's own path, so only a base file names itself.
    where = f"extends: {path}: " if _seen else ""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SuiteError([f"{where}no such suite file"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError([f"{where}not valid TOML: {exc}"]) from None
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


def _loc(err: Any) -> tuple[Any, ...]:
    return tuple(p for p in err["loc"] if p not in ("function-after[_one_target()]",))


def _problem(err: Any) -> str:
    loc = _loc(err)
    path = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        return unknown_key(path, section_keys(loc[:-1]))
    if err["type"] == "missing":
        return f"{path}: required key is missing"
    got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
    return f"{path}: {err['msg']}{got}"


def _drop(data: dict[str, Any], loc: tuple[Any, ...]) -> None:
    node: Any = data
    for part in loc[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(loc[-1], None)


def _salvage(data: dict[str, Any], errors: list[Any]) -> Suite | None:
    """The suite without what pydantic rejected (defaults apply instead): a bad value goes, a bad
    list item takes its list, a missing required key its table. None when the suite itself goes."""
    data = copy.deepcopy(data)
    for _ in range(3):  # dropping a table can leave a required one missing: the next round drops that
        for err in errors:
            loc = _loc(err)
            loc = loc[:next((i for i, p in enumerate(loc) if isinstance(p, int)), len(loc))]
            loc = loc[:-1] if err["type"] == "missing" else loc
            if not loc:
                return None
            _drop(data, loc)
        try:
            return Suite.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors()
    return None


def parse_suite(data: dict[str, Any]) -> Suite:
    """The typed suite; SuiteError lists every schema problem (with ``partial``, see SuiteError)."""
    try:
        return Suite.model_validate(data)
    except ValidationError as exc:
        raise SuiteError([_problem(e) for e in exc.errors()], partial=_salvage(data, exc.errors())) from None


def load_suite(path: str | Path, overrides: list[str] | None = None, *,
               values: dict[str, Any] | None = None) -> Suite:
    """Read, merge and type-check a suite (names and budgets: see harness.plan). ``values`` (dotted
    keys, typed values, e.g. tuned params) apply first, then the ``--set`` strings in ``overrides``."""
    data = apply_values(read_toml(Path(path)), values or {})
    return parse_suite(apply_overrides(data, overrides or []))
