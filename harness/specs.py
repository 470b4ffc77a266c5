"""Typed specs that plugins register, and the Run/RunResult records the runner passes to hooks."""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


def load_target(target: str | Callable[..., Any]) -> Callable[..., Any]:
    """Resolve a lazy ``"package.module:attr"`` target; callables pass through."""
    if not isinstance(target, str):
        return target
    module_name, sep, attr = target.partition(":")
    if not sep or not attr:
        raise ValueError(f"target {target!r} must look like 'package.module:attr'")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


# The model config keys the budget matcher can search (``[budget] knob``).
BUDGET_KNOBS = ("dim", "mlp_ratio", "depth")


@dataclass(frozen=True)
class _Loadable:
    """A lazily imported ``target`` (declared by each subclass, positionally), attributed to the
    plugin that registered it."""

    description: str = field(default="", kw_only=True)
    # Filled in by the registry from the plugin that registered the spec.
    plugin: str = field(default="", kw_only=True, compare=False)
    plugin_version: str = field(default="", kw_only=True, compare=False)

    def load(self) -> Callable[..., Any]:
        return load_target(self.target)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class _Spec(_Loadable):
    name: str
    target: str | Callable[..., Any]


@dataclass(frozen=True)
class MixerSpec(_Spec):
    """A sequence mixer: ``target(dim, *, heads, ctx, **options)`` -> nn.Module, (B,T,D)->(B,T,D).

    Capabilities are promises that ``harness.testing.check_mixer`` verifies:
    ``causal_ok`` (no output depends on a later token when ``ctx.causal``), ``padding_ok`` (real
    outputs ignore padded positions), ``needs_grid`` (wants ``ctx.grid``), ``fixed_len`` (only works
    at ``T == ctx.max_len``), ``kv_cache`` (implements ``forward_cached`` for ``lm.generate``),
    ``surrogate_gradients`` (a backward that is not its forward's derivative: exempt from gradcheck).
    """

    causal_ok: bool = field(default=True, kw_only=True)
    padding_ok: bool = field(default=True, kw_only=True)
    needs_grid: bool = field(default=False, kw_only=True)
    fixed_len: bool = field(default=False, kw_only=True)
    kv_cache: bool = field(default=False, kw_only=True)
    # Its backward is not the derivative of its forward (straight-through estimators, sampled
    # routing): check_mixer replaces gradcheck by the finite / non-zero / reach checks.
    surrogate_gradients: bool = field(default=False, kw_only=True)
    complexity: str = field(default="T^2", kw_only=True)
    defaults: Mapping[str, Any] = field(default_factory=dict, kw_only=True)
    # Optuna space over options: {"rank": {"low": 2, "high": 8}, "preset": {"choices": [...]}}
    search_space: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, kw_only=True)

    def capabilities(self) -> dict[str, Any]:
        return {
            "causal_ok": self.causal_ok,
            "padding_ok": self.padding_ok,
            "needs_grid": self.needs_grid,
            "fixed_len": self.fixed_len,
            "kv_cache": self.kv_cache,
            "surrogate_gradients": self.surrogate_gradients,
            "complexity": self.complexity,
        }


@dataclass(frozen=True)
class ModelSpec(_Spec):
    """A backbone: ``target(meta: TaskMeta, *, mixer, mixer_options, **config)`` -> nn.Module.

    ``inputs`` lists the task input kinds it accepts. ``config`` is the dataclass whose fields are
    the config keys (``[model]``, a variant's ``model`` table) with their types and defaults, or its
    lazy ``"module:Class"`` string; without one, unknown keys surface only when the model is built.
    ``knobs``: the config keys (among ``BUDGET_KNOBS``) the budget matcher may search; default: the
    ``BUDGET_KNOBS`` among the config's fields (all of them without a config). Checked when a suite
    is planned.
    """

    inputs: tuple[str, ...] = field(default=("tokens",), kw_only=True)
    knobs: tuple[str, ...] | None = field(default=None, kw_only=True)
    config: type | str | None = field(default=None, kw_only=True)

    def config_fields(self) -> dict[str, Any] | None:
        """The config's dataclass fields by name, or None when the model declares no config."""
        if self.config is None:
            return None
        return {f.name: f for f in dataclasses.fields(load_target(self.config))}  # type: ignore[arg-type]

    def budget_knobs(self) -> tuple[str, ...]:
        """The knobs the matcher may search; ValueError when a declared knob is no config key, since
        matching it would build the model with a key it rejects."""
        keys = self.config_fields()
        if self.knobs is None:
            return tuple(k for k in BUDGET_KNOBS if keys is None or k in keys)
        missing = [k for k in self.knobs if keys is not None and k not in keys]
        if missing:
            raise ValueError(f"model {self.name!r} declares budget knob(s) {', '.join(missing)} that its config "
                             f"lacks; a bug in plugin {self.plugin!r}")
        return self.knobs


@dataclass(frozen=True)
class TaskSpec(_Spec):
    """A task: ``target(**options)`` -> an object with ``meta`` (TaskMeta), ``splits()``,
    ``batches(split, batch_size, seed)``, ``loss(model, batch)`` and ``evaluate(model, batches,
    device, autocast)`` (see harness.tasks.base.ClassificationTask); optionally ``check_data()``."""

    metrics: tuple[str, ...] = field(default=(), kw_only=True)
    causal: bool = field(default=False, kw_only=True)
    needs_padding: bool = field(default=False, kw_only=True)
    # The unit the results table shows throughput in: "samples", "tokens" or "audio_seconds".
    throughput: str = field(default="samples", kw_only=True)


@dataclass(frozen=True)
class MetricSpec(_Spec):
    """A metric ``target(outputs, targets) -> float`` with its direction."""

    higher_is_better: bool = field(default=True, kw_only=True)


@dataclass(frozen=True)
class ComponentSpec(_Loadable):
    """A plugin-defined component of a plugin-defined kind, e.g. kind "maw.router"."""

    kind: str
    name: str
    target: str | Callable[..., Any]


@dataclass(frozen=True)
class TaskMeta:
    """What a backbone needs to know about a task's inputs and outputs."""

    input: str                              # "image" | "tokens" | "token_pairs" | "audio"
    num_classes: int = 0                    # classifier outputs; 0 for language modelling
    image_size: tuple[int, int] | None = None
    channels: int = 3
    vocab_size: int = 0
    max_len: int = 0                        # tokens per example (images: set by the patch grid)
    causal: bool = False
    features: int = 0                       # audio: feature values per frame (log-mel bins)
    max_frames: int = 0                     # audio: feature frames per example, padded


@dataclass
class Run:
    """One (variant, seed) of a suite, fully resolved."""

    suite: str
    variant: str
    seed: int
    task: str
    model: str
    mixer: str
    metric: str                                   # e.g. "test/accuracy"
    task_options: dict[str, Any] = field(default_factory=dict)
    model_config: dict[str, Any] = field(default_factory=dict)
    mixer_options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] | None = None          # {"params": 200000, "tolerance": 0.02, "knob": "dim", ...}
    profile: dict[str, Any] | None = None
    overrides: tuple[str, ...] = ()               # per-variant [model]/[train] keys, flagged in reports
    contract_skipped: bool = False                # run with --no-contract: its mixer was not probed for leaks
    config_hash: str = ""

    @property
    def key(self) -> str:
        return f"{self.variant}/seed{self.seed}"


@dataclass
class RunResult:
    """What a run produced. ``status``: finished | failed | skipped | killed."""

    run: Run
    status: str
    metrics: dict[str, float] = field(default_factory=dict)     # final: "test/accuracy", "val/loss", ...
    efficiency: dict[str, float] = field(default_factory=dict)  # params, target_params, param_gap, flops_per_token,
                                                                # samples_per_s, tokens_per_s, peak_mem_mb, train_time_s
    history: list[dict[str, float]] = field(default_factory=list)  # [{"step": 100, "val/accuracy": 0.8, ...}]
    error: str | None = None
    run_id: str | None = None                                   # tracker's id (MLflow child run)
    artifacts: dict[str, str] = field(default_factory=dict)     # name -> file (profiler trace, op table)
    tags: dict[str, str] = field(default_factory=dict)          # extra tracker tags (harness.compile_fallback)
