"""poh.refiner: a core backbone (vit, lm or encoder) whose block stack is applied R times.

The backbone is built by its own builder from the registry (embeddings, positions, head, forward
and initialisation are its own); its ``blocks`` list is then replaced by one ``Refiner`` module
holding the same blocks, which the backbone's forward calls exactly where it called the blocks:

    h_0 = x
    pass t = 0 .. R-1:  s = stack(h_t + x if inject_input and t > 0 else h_t)
                        h_{t+1} = h_t + alpha (s - h_t) if outer_residual and t > 0 else s
    output: h_R, or with ACT  sum_t w_t h_{t+1}  (per token, sum_t w_t = 1)

- R = 1 with no extras is the plain backbone, bit for bit (tested).
- ``outer_residual``: a learned scalar ``alpha`` (ReZero: init 0, so every pass after the first
  starts as the identity and the model starts as the R = 1 model; ``rezero = false``: init 1).
- ``grad = "all"``: backpropagation through every pass. ``"last"``: the passes before the last run
  without autograd (memory O(1) in R; HRM/TRM's one-step gradient); only the last pass is
  differentiated, and what comes before the stack reaches it through the input re-injection, so
  ``"last"`` with R > 1 requires ``inject_input`` (otherwise the embeddings get no gradient).
  Under ACT, ``"last"`` detaches the state entering each pass instead.
- ``act``: Graves-style halting per token. p_t = sigmoid(halt(h_{t+1})); a token halts at the first
  pass where its cumulative p reaches ``act_threshold`` and takes the remainder 1 - sum of its
  earlier p there; tokens still running after pass R - 1 take the remainder at the last state, so
  the weights sum to 1 exactly. A halted token's state is frozen (other tokens keep attending to
  it, as in the Universal Transformer). The ponder cost N + remainder (Graves), averaged over real
  tokens and times ``act_penalty``, is reported with ``harness.nn.report_loss``: the trainer adds
  it to the objective and logs it (``train/aux/<path>.ponder``). All R passes always run (halted
  tokens are computed and discarded): stopping early would need a host sync per pass.
- ``share_router``: one router for every layer of the stack (SEEDS 2.4's shared HeadRouter): layer
  0's router module is assigned to every poh.heads mixer, so it is counted and trained once.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from harness.nn import report_loss, report_stat
from harness.nn.masks import masked_mean
from harness.specs import TaskMeta

BACKBONE_KEYS = ("dim", "depth", "heads", "mlp_ratio", "patch", "pooling")
GRAD_MODES = ("all", "last")


@dataclass
class RefinerConfig:
    """The keys of poh.refiner: the core backbones' (passed on to ``backbone``; ``patch`` is the
    vit's, ``pooling`` the encoder's) and the refiner's own."""

    backbone: str = "lm"
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    patch: int = 4
    pooling: str = "cls"
    R: int = 1
    outer_residual: bool = False
    rezero: bool = True
    inject_input: bool = False
    grad: str = "all"
    act: bool = False
    act_threshold: float = 0.99
    act_penalty: float = 0.01
    share_router: bool = False

    def __post_init__(self) -> None:
        if self.R < 1:
            raise ValueError(f"R must be >= 1, got {self.R}")
        if self.grad not in GRAD_MODES:
            raise ValueError(f"grad must be one of {', '.join(GRAD_MODES)}, not {self.grad!r}")
        if self.grad == "last" and self.R > 1 and not self.inject_input:
            raise ValueError("grad = 'last' with R > 1 needs inject_input = true: the passes before the last run "
                             "without autograd, so only the re-injected input carries a gradient to the embeddings")
        if not 0.0 < self.act_threshold <= 1.0:
            raise ValueError(f"act_threshold must be in (0, 1], got {self.act_threshold}")
        if self.act_penalty < 0:
            raise ValueError(f"act_penalty must be >= 0, got {self.act_penalty}")


def act_step(p: torch.Tensor, cum: torch.Tensor, running: torch.Tensor, last: bool,
             threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One ACT step on halting probabilities ``p`` (B, T): (weight of this state, halts now).

    A running token halts when ``cum + p >= threshold`` or at the last step, and then takes the
    remainder ``1 - cum``; a running token that goes on takes ``p``; a halted token takes 0."""
    halts = running if last else running & (cum + p >= threshold)
    weight = torch.where(halts, 1.0 - cum, torch.where(running, p, torch.zeros_like(p)))
    return weight, halts


def halting_weights(probs: list[torch.Tensor], threshold: float) -> torch.Tensor:
    """The ACT weights (R, B, T) of a sequence of halting probabilities (each (B, T)); they sum to 1."""
    cum = torch.zeros_like(probs[0])
    running = torch.ones_like(probs[0], dtype=torch.bool)
    out = []
    for t, p in enumerate(probs):
        weight, halts = act_step(p, cum, running, t == len(probs) - 1, threshold)
        out.append(weight)
        cum, running = cum + weight, running & ~halts
    return torch.stack(out)


class Refiner(nn.Module):
    """The backbone's block stack applied R times (see the module docstring). Called by the
    backbone in place of its blocks: ``forward(x (B, T, D), pad (B, T) | None) -> (B, T, D)``."""

    # A backbone asks its blocks for ``mixer.forward_cached`` (KV-cache generation); a refined
    # stack has no single mixer, so generation falls back to re-running the prefix.
    mixer = None

    def __init__(self, stack: nn.ModuleList, dim: int, cfg: RefinerConfig):
        super().__init__()
        self.stack = stack
        self.R, self.grad, self.inject_input = cfg.R, cfg.grad, cfg.inject_input
        self.outer_residual = cfg.outer_residual
        self.act, self.act_threshold, self.act_penalty = cfg.act, cfg.act_threshold, cfg.act_penalty
        self.keep_act_weights = False          # tests: keep the last forward's ACT weights (R, B, T)
        self.act_weights: torch.Tensor | None = None
        if cfg.outer_residual:
            self.alpha = nn.Parameter(torch.tensor(0.0 if cfg.rezero else 1.0))
        if cfg.act:
            self.halt = nn.Linear(dim, 1)
            nn.init.trunc_normal_(self.halt.weight, std=0.02)
            nn.init.zeros_(self.halt.bias)
        if cfg.share_router:
            self._share_router()

    def _share_router(self) -> None:
        mixers = [b.mixer for b in self.stack if isinstance(getattr(b, "mixer", None), nn.Module)
                  and isinstance(getattr(b.mixer, "router", None), nn.Module)]
        if len(mixers) != len(self.stack):
            raise ValueError("share_router needs a routed mixer (poh.heads, poh.heads_topk) in every block")
        for m in mixers[1:]:
            m.router = mixers[0].router

    def _pass(self, t: int, h: torch.Tensor, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        s = h + x if self.inject_input and t > 0 else h
        for block in self.stack:
            s = block(s, pad)
        if self.outer_residual and t > 0:
            s = h + self.alpha * (s - h)
        return s

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        if self.outer_residual and self.training:
            report_stat(self, "alpha", self.alpha)
        if self.act:
            return self._forward_act(x, pad)
        h = x
        if self.grad == "last":
            with torch.no_grad():
                for t in range(self.R - 1):
                    h = self._pass(t, h, x, pad)
            return self._pass(self.R - 1, h, x, pad)
        for t in range(self.R):
            h = self._pass(t, h, x, pad)
        return h

    def _forward_act(self, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        B, T, _ = x.shape
        h, out = x, torch.zeros_like(x)
        cum = x.new_zeros(B, T)
        running = torch.ones(B, T, dtype=torch.bool, device=x.device)
        steps, remainder = x.new_zeros(B, T), x.new_zeros(B, T)
        weights = []
        for t in range(self.R):
            new = self._pass(t, h.detach() if self.grad == "last" and t > 0 else h, x, pad)
            p = torch.sigmoid(self.halt(new)).squeeze(-1)                       # (B, T)
            weight, halts = act_step(p, cum, running, t == self.R - 1, self.act_threshold)
            out = out + weight.unsqueeze(-1) * new
            remainder = torch.where(halts, weight, remainder)
            steps = steps + running.to(x.dtype)
            cum = cum + weight
            h = torch.where(running.unsqueeze(-1), new, h)                      # halted tokens stay frozen
            running = running & ~halts
            if self.keep_act_weights:
                weights.append(weight.detach())
        ponder = masked_mean(steps + remainder, pad)                            # (B,): Graves' N + R
        report_loss(self, "ponder", self.act_penalty * ponder.mean())
        report_stat(self, "act_passes", masked_mean(steps, pad).mean())
        if self.keep_act_weights:
            self.act_weights = torch.stack(weights)
        return out


def split_config(config: dict[str, Any]) -> tuple[RefinerConfig, dict[str, Any]]:
    """(the refiner's config, the keys to pass to the backbone: only those given)."""
    known = {f.name for f in fields(RefinerConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise TypeError(f"poh.refiner has no key(s) {', '.join(unknown)}; its keys: {', '.join(sorted(known))}")
    return RefinerConfig(**config), {k: v for k, v in config.items() if k in BACKBONE_KEYS}


def build_refiner(meta: TaskMeta, *, mixer: str = "poh.heads", mixer_options: dict[str, Any] | None = None,
                  **config: Any) -> nn.Module:
    """The backbone ``config["backbone"]`` (default lm) with its blocks wrapped in a ``Refiner``."""
    from harness.registry import model as model_spec

    cfg, backbone_config = split_config(config)
    if cfg.backbone == "poh.refiner":
        raise ValueError("poh.refiner cannot refine itself; pick a core backbone (vit, lm, encoder)")
    spec = model_spec(cfg.backbone)
    allowed = spec.config_fields()
    if allowed is not None:
        foreign = sorted(set(backbone_config) - set(allowed))
        if foreign:
            raise ValueError(f"backbone {cfg.backbone!r} has no key(s) {', '.join(foreign)}; "
                             f"its keys: {', '.join(sorted(allowed))}")
    model = spec.load()(meta, mixer=mixer, mixer_options=mixer_options, **backbone_config)
    if not isinstance(getattr(model, "blocks", None), nn.ModuleList):
        raise ValueError(f"backbone {cfg.backbone!r} has no `blocks` ModuleList to refine; use vit, lm or encoder")
    default_dim = allowed["dim"].default if allowed and "dim" in allowed else RefinerConfig.dim
    dim = int(backbone_config.get("dim", default_dim))
    model.blocks = nn.ModuleList([Refiner(model.blocks, dim, cfg)])
    return model
