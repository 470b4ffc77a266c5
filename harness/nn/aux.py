"""Auxiliary losses and statistics, reported by modules during forward and collected by the trainer.

A module calls ``report_loss(self, "ponder", cost)`` or ``report_stat(self, "gate_mean", g.mean())``
inside ``forward``; the trainer calls ``collect_aux(model)`` after each forward, adds the losses to
the objective and logs the statistics. Values stay tensors until logging, so forward never syncs.
"""
from __future__ import annotations

import torch
from torch import nn

_LOSSES = "_harness_aux_losses"
_STATS = "_harness_aux_stats"


def report_loss(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Add a differentiable scalar to the training objective (replaces an earlier value of name)."""
    module.__dict__.setdefault(_LOSSES, {})[name] = value


def report_stat(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Log a scalar statistic; it is detached here and converted to float only at logging time."""
    module.__dict__.setdefault(_STATS, {})[name] = value.detach()


def collect_aux(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Pop every reported loss and statistic, keyed ``"<module path>.<name>"``."""
    losses: dict[str, torch.Tensor] = {}
    stats: dict[str, torch.Tensor] = {}
    for path, module in model.named_modules():
        prefix = f"{path}." if path else ""
        for name, value in module.__dict__.pop(_LOSSES, {}).items():
            losses[prefix + name] = value
        for name, value in module.__dict__.pop(_STATS, {}).items():
            stats[prefix + name] = value
    return losses, stats


def mean_stats_by_name(stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Average per-layer statistics that share a name: {"blocks.0.mixer.gate": g0, ...} -> {"gate": mean}."""
    groups: dict[str, list[torch.Tensor]] = {}
    for key, value in stats.items():
        groups.setdefault(key.rsplit(".", 1)[-1], []).append(value.float().mean())
    return {name: torch.stack(values).mean() for name, values in groups.items()}
