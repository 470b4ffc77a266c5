"""Depth routers (component kind ``maw.router``): which of the D depth-wise attention maps each
example (optionally each head) uses.

The contract a router implements (a third-party router registers the same way)::

    Router(dim, *, heads, depths, per_head=False, **options) -> nn.Module
    forward(state (B, S, dim), real (B, S) bool | None) -> (weights (B, S, R, D), choice (B, S, R) | None)

``state`` is the routing input the mixer computes: the mean of the block input over the real tokens
(S = 1, one route per example) or, in a causal context, the mean over the real tokens up to each
position (S = T, one route per position: position t never sees a later token). ``real`` marks the
states of real positions (None: all real). ``R`` is ``heads`` with ``per_head`` else 1. ``weights``
sum to 1 over the D depths; ``choice`` is the chosen depth when the forward value of ``weights``
is one-hot (None for soft weights). A router whose weights never carry a gradient sets the class
attribute ``straight_through = False``: with S = 1 the mixer then computes only the chosen depth's
map (it computes all D for the others, whose gradient needs every depth's output).

Routers here:

- ``maw.soft``: Gumbel-softmax, straight-through: forward one-hot at argmax(logits + g) (g ~ Gumbel
  in training, none in eval), backward the gradient of softmax((logits + g) / temperature).
- ``maw.supervised``: a classifier; forward one-hot at its argmax (straight-through softmax
  gradient); trained with cross-entropy towards the depth whose probe gave the lowest per-example
  task loss (D probes, no gradient; harness.nn.aux's per-example-loss mechanism).
- ``maw.grpo``: a policy over depths; in training it samples G depths per route, plays the first,
  and the trainer's G probes (no gradient) replay each of the G samples; reward = -(per-example
  loss), advantage = reward normalised within the group of G; loss = -mean(A log pi(a)) + kl_coef
  KL(pi || pi_ref) (exact, over the D depths) - entropy_coef H(pi); pi_ref is a snapshot of the
  policy refreshed every ``ref_every`` updates. Eval: argmax. No straight-through: the policy learns
  from its rewards only.

Statistics (``harness.nn.report_stat``, training forwards): ``depth_entropy`` (mean entropy of the
router's distribution over depths, nats), ``depth_usage_<d>`` (share of routes that chose depth d),
and per router: ``oracle_agreement``, ``depth_loss_spread`` (supervised), ``reward``, ``kl_ref``
(grpo).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.nn.aux import probe_index, report_loss, report_stat, request_example_losses


def masked_mean(value: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``value`` (B, S, ...) over every entry whose (b, s) is real."""
    if real is None:
        return value.mean()
    w = real.to(value.dtype).reshape(*real.shape, *([1] * (value.dim() - 2))).expand_as(value)
    return (value * w).sum() / w.sum().clamp_min(1.0)


def gumbel_like(t: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) noise: -log(E), E ~ Exp(1)."""
    return -torch.empty_like(t).exponential_().log()


def one_hot(choice: torch.Tensor, depths: int, dtype: torch.dtype) -> torch.Tensor:
    return F.one_hot(choice, depths).to(dtype)


class DepthRouter(nn.Module):
    """Shared parts: the logits MLP ``state -> (R, D)``, the depth statistics, and the replay of the
    training forward's route in probe forwards that are not this router's own."""

    probes = 0               # probe forwards this router asks for per training step
    straight_through = True  # its weights carry a gradient: the mixer computes every depth's output

    def __init__(self, dim: int, *, heads: int, depths: int, per_head: bool = False, hidden: int | None = None):
        super().__init__()
        if depths < 2:
            raise ValueError(f"depths must be >= 2, got {depths}")
        self.depths, self.groups = depths, heads if per_head else 1
        hidden = hidden or max(8, dim // 4)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, self.groups * depths))
        self._last: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def logits(self, state: torch.Tensor) -> torch.Tensor:
        """(B, S, dim) -> (B, S, R, D)."""
        return self.net(state).unflatten(-1, (self.groups, self.depths))

    def replay(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The route of the last training forward, for a probe that is not this router's own."""
        if self._last is not None and self._last[0].shape[:2] == state.shape[:2]:
            return self._last
        return None

    def remember(self, weights: torch.Tensor, choice: torch.Tensor | None) -> None:
        self._last = (weights.detach(), choice)

    def forced(self, state: torch.Tensor, choice: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A given choice (B, S, R) as one-hot weights without gradient."""
        return one_hot(choice, self.depths, state.dtype), choice

    def report_depth_stats(self, logits: torch.Tensor, choice: torch.Tensor, real: torch.Tensor | None) -> None:
        with torch.no_grad():
            logp = F.log_softmax(logits.float(), -1)
            report_stat(self, "depth_entropy", masked_mean(-(logp.exp() * logp).sum(-1), real))
            usage = one_hot(choice, self.depths, torch.float32)                          # (B, S, R, D)
            for d in range(self.depths):
                report_stat(self, f"depth_usage_{d}", masked_mean(usage[..., d], real))


class SoftRouter(DepthRouter):
    """``maw.soft``: straight-through Gumbel-softmax (options: ``temperature`` 1.0; ``hard`` True; with
    ``hard=False`` the weights are the relaxed softmax itself, exact gradients, no single choice)."""

    def __init__(self, dim: int, *, heads: int, depths: int, per_head: bool = False, hidden: int | None = None,
                 temperature: float = 1.0, hard: bool = True):
        super().__init__(dim, heads=heads, depths=depths, per_head=per_head, hidden=hidden)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.hard = float(temperature), bool(hard)

    def forward(self, state: torch.Tensor, real: torch.Tensor | None = None):
        if probe_index() is not None and (last := self.replay(state)) is not None:
            return last
        logits = self.logits(state)                                                     # (B, S, R, D)
        noisy = logits + gumbel_like(logits) if self.training else logits
        soft = F.softmax(noisy / self.temperature, -1)
        choice = noisy.argmax(-1)                                                        # (B, S, R)
        if self.hard:
            # soft - soft.detach() is exactly 0 in the forward: the value is one-hot, bit for bit.
            weights = one_hot(choice, self.depths, soft.dtype) + (soft - soft.detach())
        else:
            weights, choice = soft, None
        if self.training and probe_index() is None:
            self.remember(weights, choice)
            self.report_depth_stats(logits, noisy.argmax(-1), real)
        return weights, choice


class SupervisedRouter(DepthRouter):
    """``maw.supervised``: a depth classifier. Forward: one-hot at its argmax, with the softmax's
    gradient (straight-through). Objective: ``ce_weight`` x cross-entropy towards the depth with the
    lowest per-example task loss among D probes (probe k forces depth k in this router). Options:
    ``ce_weight`` (1.0)."""

    def __init__(self, dim: int, *, heads: int, depths: int, per_head: bool = False, hidden: int | None = None,
                 ce_weight: float = 1.0):
        super().__init__(dim, heads=heads, depths=depths, per_head=per_head, hidden=hidden)
        self.ce_weight = float(ce_weight)
        self.probes = depths
        self._saved: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def forward(self, state: torch.Tensor, real: torch.Tensor | None = None):
        k = probe_index()
        if k is not None and self._saved is not None and self._saved[0].shape[:2] == state.shape[:2]:
            if k < self.depths:
                return self.forced(state, torch.full(state.shape[:2] + (self.groups,), k, dtype=torch.long,
                                                     device=state.device))
            if (last := self.replay(state)) is not None:
                return last
        logits = self.logits(state)
        soft = F.softmax(logits, -1)
        choice = logits.argmax(-1)
        weights = one_hot(choice, self.depths, soft.dtype) + (soft - soft.detach())
        if self.training and k is None and torch.is_grad_enabled():
            self._saved = (state.detach(), real)
            self.remember(weights, choice)
            request_example_losses(self, self.depths)
            self.report_depth_stats(logits, choice, real)
        return weights, choice

    def receive_example_losses(self, losses: torch.Tensor) -> None:
        """losses (D, B): row d = the task loss of each example with this router forced to depth d."""
        state, real = self._saved
        target = losses.argmin(0)                                                        # (B,)
        logits = self.logits(state)                                                      # (B, S, R, D)
        target_all = target[:, None, None].expand(logits.shape[:-1])
        ce = F.cross_entropy(logits.flatten(0, 2).float(), target_all.flatten(), reduction="none")
        report_loss(self, "router_ce", self.ce_weight * masked_mean(ce.view(logits.shape[:-1]), real))
        with torch.no_grad():
            report_stat(self, "oracle_agreement", masked_mean((logits.argmax(-1) == target_all).float(), real))
            report_stat(self, "depth_loss_spread", (losses.amax(0) - losses.amin(0)).float().mean())


class GRPORouter(DepthRouter):
    """``maw.grpo``: a policy over depths trained with group-relative advantages (see the module
    docstring). Options: ``group`` G (4), ``temperature`` (1.0), ``kl_coef`` (0.04),
    ``entropy_coef`` (0.01), ``ref_every`` (100 updates; 0 = the initial policy forever)."""

    straight_through = False

    def __init__(self, dim: int, *, heads: int, depths: int, per_head: bool = False, hidden: int | None = None,
                 group: int = 4, temperature: float = 1.0, kl_coef: float = 0.04, entropy_coef: float = 0.01,
                 ref_every: int = 100):
        super().__init__(dim, heads=heads, depths=depths, per_head=per_head, hidden=hidden)
        if group < 2:
            raise ValueError(f"group must be >= 2 (advantages are relative within the group), got {group}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.group, self.temperature = int(group), float(temperature)
        self.kl_coef, self.entropy_coef, self.ref_every = float(kl_coef), float(entropy_coef), int(ref_every)
        self.probes = self.group
        self.updates = 0
        # The reference policy: a snapshot of ``net``'s parameters, kept as buffers (they move and
        # cast with the module and are saved with it, but are no parameters).
        self._ref_names = {name: "ref_" + name.replace(".", "_") for name, _ in self.net.named_parameters()}
        for name, p in self.net.named_parameters():
            self.register_buffer(self._ref_names[name], p.detach().clone())
        self._saved: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] | None = None

    def policy_logits(self, state: torch.Tensor) -> torch.Tensor:
        # The policy reads a detached state: its objective trains the router, never the trunk.
        return self.logits(state.detach()) / self.temperature

    def forward(self, state: torch.Tensor, real: torch.Tensor | None = None):
        k = probe_index()
        if k is not None and self._saved is not None and self._saved[0].shape[:2] == state.shape[:2]:
            if k < self.group:
                return self.forced(state, self._saved[2][k])
            if (last := self.replay(state)) is not None:
                return last
        logits = self.policy_logits(state)                                               # (B, S, R, D)
        logp = F.log_softmax(logits, -1)
        if torch.is_grad_enabled() and self.entropy_coef:
            entropy = -(logp.exp() * logp).sum(-1)
            report_loss(self, "entropy_bonus", -self.entropy_coef * masked_mean(entropy, real))
        if self.training and k is None:
            with torch.no_grad():
                noise = gumbel_like(logits.unsqueeze(0).expand(self.group, *logits.shape))
                actions = (logits.unsqueeze(0) + noise).argmax(-1)                       # (G, B, S, R)
            choice = actions[0]
            weights = one_hot(choice, self.depths, state.dtype)
            if torch.is_grad_enabled():
                self._saved = (state.detach(), real, actions)
                self.remember(weights, choice)
                request_example_losses(self, self.group)
                self.report_depth_stats(logits, choice, real)
            return weights, choice
        choice = logits.argmax(-1)
        return one_hot(choice, self.depths, state.dtype), choice

    @torch.no_grad()
    def reference_logp(self, state: torch.Tensor) -> torch.Tensor:
        params = {name: getattr(self, buf) for name, buf in self._ref_names.items()}
        logits = torch.func.functional_call(self.net, params, (state,)).unflatten(-1, (self.groups, self.depths))
        return F.log_softmax(logits / self.temperature, -1)

    @torch.no_grad()
    def refresh_reference(self) -> None:
        for name, p in self.net.named_parameters():
            getattr(self, self._ref_names[name]).copy_(p)

    def receive_example_losses(self, losses: torch.Tensor) -> None:
        """losses (G, B): row g = each example's task loss when this router replays its g-th sample."""
        state, real, actions = self._saved
        reward = -losses.float()                                                         # (G, B)
        advantage = (reward - reward.mean(0)) / (reward.std(0, unbiased=False) + 1e-6)
        logp = F.log_softmax(self.policy_logits(state).float(), -1)                      # (B, S, R, D)
        taken = logp.unsqueeze(0).expand(self.group, *logp.shape).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        if real is None:
            taken = taken.mean((2, 3))                                                   # (G, B)
        else:
            w = real.to(taken.dtype)[None, :, :, None]
            taken = (taken * w).sum((2, 3)) / (w.sum((2, 3)) * taken.shape[-1]).clamp_min(1.0)
        report_loss(self, "policy", -(advantage * taken).mean())
        kl = masked_mean((logp.exp() * (logp - self.reference_logp(state))).sum(-1), real)
        if self.kl_coef:
            report_loss(self, "kl", self.kl_coef * kl)
        report_stat(self, "reward", reward.mean())
        report_stat(self, "kl_ref", kl)
        self.updates += 1
        if self.ref_every and self.updates % self.ref_every == 0:
            self.refresh_reference()
