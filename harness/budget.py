"""Parameter counting on the meta device, symmetric budget matching over one knob, FLOPs per token.

Matching is symmetric: ``|achieved - target| / target <= tolerance``. An infeasible budget raises
``BudgetError`` listing the nearest achievable counts, never a silent "closest".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from harness.specs import BUDGET_KNOBS


class BudgetError(ValueError):
    pass


@dataclass(frozen=True)
class ParamCount:
    total: int
    non_embedding: int


@dataclass(frozen=True)
class MatchResult:
    knob: str
    value: int | float
    target: int
    achieved: int
    count: str                 # "params" | "non_embedding_params"

    @property
    def gap(self) -> float:
        """Signed relative gap (achieved - target) / target."""
        return (self.achieved - self.target) / self.target


def count_params(model: nn.Module) -> ParamCount:
    """Unique trainable parameters (tied weights once); embeddings are nn.Embedding weights and
    parameters flagged ``_harness_embedding`` (learned positions)."""
    seen: set[int] = set()
    total = embedding = 0
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for p in model.parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        total += p.numel()
        if id(p) in embedding_ids or getattr(p, "_harness_embedding", False):
            embedding += p.numel()
    return ParamCount(total, total - embedding)


def count_on_meta(build: Callable[[], nn.Module]) -> ParamCount:
    """Count parameters of ``build()`` without allocating memory."""
    with torch.device("meta"):
        return count_params(build())


def knob_candidates(knob: str, config: dict[str, Any]) -> list[int | float]:
    """The values the matcher may try for a knob, in increasing model size."""
    heads = int(config.get("heads", 1))
    if knob == "dim":
        step = math.lcm(heads, int(config.get("dim_multiple", 1)))
        return list(range(step, 4096 + 1, step))
    if knob == "depth":
        return list(range(1, 65))
    if knob == "mlp_ratio":
        dim = int(config["dim"])
        return [h / dim for h in range(1, 16 * dim + 1)]  # every integer hidden width up to 16x
    raise BudgetError(f"unknown budget knob {knob!r}; choose one of {', '.join(BUDGET_KNOBS)}")


def match_budget(build: Callable[[dict[str, Any]], nn.Module], config: dict[str, Any], *, target: int,
                 tolerance: float, knob: str = "dim", count: str = "params",
                 candidates: Sequence[int | float] | None = None) -> MatchResult:
    """Choose ``config[knob]`` so that build(config) lands within ``tolerance`` of ``target``.

    Counts grow monotonically with each knob, so a binary search finds the first candidate at or
    above the target; the better of it and its predecessor is taken if it lies inside the band.
    """
    if target <= 0:
        raise BudgetError(f"budget target must be positive, got {target}")
    if count not in ("params", "non_embedding_params"):
        raise BudgetError(f"budget count must be 'params' or 'non_embedding_params', not {count!r}")
    values = list(candidates) if candidates is not None else knob_candidates(knob, config)
    cache: dict[int, int] = {}

    def params_at(i: int) -> int:
        if i not in cache:
            pc = count_on_meta(lambda: build({**config, knob: values[i]}))
            cache[i] = pc.total if count == "params" else pc.non_embedding
        return cache[i]

    lo, hi = 0, len(values) - 1
    if params_at(hi) < target:
        lo = hi
    else:
        while lo < hi:
            mid = (lo + hi) // 2
            if params_at(mid) < target:
                lo = mid + 1
            else:
                hi = mid
    near = sorted({i for i in (lo - 1, lo, lo + 1) if 0 <= i < len(values)}, key=lambda i: abs(params_at(i) - target))
    best = near[0]
    result = MatchResult(knob, values[best], target, params_at(best), count)
    if abs(result.gap) > tolerance:
        nearest = ", ".join(f"{params_at(i):,} ({knob}={_fmt(values[i])}, {(params_at(i) - target) / target:+.2%})"
                            for i in sorted(near, key=lambda i: params_at(i)))
        raise BudgetError(f"no {knob} puts the model within {tolerance:.1%} of {target:,} {count}; nearest "
                          f"achievable: {nearest}. Widen the tolerance, change the budget, or match a finer knob "
                          f"(mlp_ratio moves in steps of one hidden unit)")
    return result


def _fmt(v: int | float) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def flops_per_token(model: nn.Module, example: Any, tokens: int) -> float:
    """Forward FLOPs of ``model(*example)`` divided by the number of tokens it processed."""
    from harness.flops import flop_counter

    args = example if isinstance(example, tuple) else (example,)
    with torch.no_grad(), flop_counter() as counter:
        model(*args)
    return counter.get_total_flops() / tokens
