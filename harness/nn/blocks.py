"""Pre-LN transformer block: ``x + mixer(norm(x))``, ``x + mlp(norm(x))``; the mixer is found by name."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.nn.context import SeqContext


def build_mixer(name: str, dim: int, *, heads: int, ctx: SeqContext, **options: Any) -> nn.Module:
    """Look a mixer up in the registry, check its capabilities against ctx, and build it."""
    from harness.registry import mixer as mixer_spec

    spec = mixer_spec(name)
    if ctx.causal and not spec.causal_ok:
        raise ValueError(f"mixer {name!r} is not causal (causal_ok=False) but the model needs a causal mixer")
    if spec.needs_grid and ctx.grid is None:
        raise ValueError(f"mixer {name!r} needs an image grid (needs_grid=True); use it with an image model")
    cls = spec.load()
    params = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(params))
        if unknown:
            allowed = sorted(k for k in params if k not in ("dim", "heads", "ctx"))
            raise ValueError(f"mixer {name!r} has no option(s) {', '.join(unknown)}; "
                             f"its options are: {', '.join(allowed) or 'none'}")
    return cls(dim, heads=heads, ctx=ctx, **{**spec.defaults, **options})


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def mlp_hidden(dim: int, mlp_ratio: float) -> int:
    return max(1, int(dim * mlp_ratio + 1e-9))  # ratios like 383/128 must not round down


class Block(nn.Module):
    def __init__(self, dim: int, *, heads: int, mlp_ratio: float, ctx: SeqContext, mixer: str,
                 mixer_options: dict[str, Any] | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = build_mixer(mixer, dim, heads=heads, ctx=ctx, **(mixer_options or {}))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_hidden(dim, mlp_ratio))

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x), pad)
        return x + self.mlp(self.norm2(x))

    def forward_cached(self, x: torch.Tensor, cache: dict[str, torch.Tensor]) -> torch.Tensor:
        x = x + self.mixer.forward_cached(self.norm1(x), cache)
        return x + self.mlp(self.norm2(x))


@dataclass
class BackboneConfig:
    """The keys every core backbone shares; each backbone's config adds its own."""

    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0


def block_stack(cfg: BackboneConfig, ctx: SeqContext, mixer: str,
                mixer_options: dict[str, Any] | None = None) -> nn.ModuleList:
    """``cfg.depth`` blocks, each with its own mixer built from the registry."""
    return nn.ModuleList(
        Block(cfg.dim, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, ctx=ctx, mixer=mixer, mixer_options=mixer_options)
        for _ in range(cfg.depth)
    )


def init_backbone(model: nn.Module) -> None:
    """GPT-2/ViT style N(0, 0.02) init for the backbone's own layers. Mixers keep their own
    initialisation (gates, identity mixers and biases that ideas depend on)."""
    mixers = {id(p) for b in model.modules() if isinstance(b, Block) for p in b.mixer.parameters()}
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding, nn.Conv2d)) and id(m.weight) not in mixers:
            nn.init.trunc_normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
