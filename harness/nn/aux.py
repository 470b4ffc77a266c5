"""Auxiliary losses and statistics, reported by modules during forward and collected by the trainer;
and per-example task losses, handed by the trainer to the modules that ask for them.

Losses and statistics
---------------------
A module calls ``report_loss(self, "ponder", cost)`` or ``report_stat(self, "gate_mean", g.mean())``
inside ``forward``; the trainer calls ``collect_aux(model)`` after each forward, adds the losses to
the objective and logs the statistics. Values stay tensors until logging, so forward never syncs.

Per-example losses (for routers trained from the task loss: ``maw.supervised``, ``maw.grpo``)
-------------------------------------------------------------------------------------------
A module whose training signal is the task loss itself, under choices it makes, asks for it:

1. In a training forward it calls ``request_example_losses(self, probes)``: "after this forward,
   evaluate the task's per-example loss under ``probes`` alternatives of mine".
2. After the training forward (and ``collect_aux``), before backward, the trainer pops the requests
   (``pop_example_loss_requests``) and, when there are any, runs ``K = max(probes)`` extra forwards
   of the same batch without autograd (``answer_example_loss_requests``). During probe ``k``
   ``probe_index()`` returns ``k`` (``None`` everywhere else): a module then plays its ``k``-th
   alternative (``maw.supervised``: depth ``k``; ``maw.grpo``: its ``k``-th sampled depth), or, when
   ``k`` is beyond its own count, what it played in the training forward. A probe must not sample
   anew: it replays. Whatever modules report or request during a probe is discarded.
3. The trainer hands each requesting module the detached losses ``(probes, B)`` (row ``k`` = probe
   ``k``, one column per example of the batch) by calling its method
   ``receive_example_losses(losses)``; there the module reports its own losses with
   ``report_loss`` (e.g. a policy-gradient or cross-entropy loss on its router), which join the
   objective of the same step.

The per-example loss comes from the task's optional method ``per_example_loss(model, batch) ->
Tensor (B,)`` (one value per row of the model's input batch; its mean should be the task's
``loss``). A task without it gets its batch ``loss`` repeated B times, with one warning: every
example then sees the same value, a batch-level signal (see ``harness.train.per_example_loss``).
Models, evaluation and check_mixer need none of this: outside ``harness.train`` requests are
simply never answered, and a probing module behaves as in its training forward.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Callable, Iterator

import torch
from torch import nn

_LOSSES = "_harness_aux_losses"
_STATS = "_harness_aux_stats"
_REQUEST = "_harness_example_loss_request"
_PROBE: ContextVar[int | None] = ContextVar("harness_probe_index", default=None)


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


# -- per-example losses ------------------------------------------------------------------------

def request_example_losses(module: nn.Module, probes: int) -> None:
    """From a training forward: ask for the per-example task loss under ``probes`` (>= 1) probe
    forwards, delivered to ``module.receive_example_losses(losses (probes, B))`` (see the module
    docstring). A later request of the same module replaces this one."""
    if not callable(getattr(module, "receive_example_losses", None)):
        raise TypeError(f"{type(module).__name__} requests per-example losses but has no "
                        f"receive_example_losses(losses) method")
    if int(probes) < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    module.__dict__[_REQUEST] = int(probes)


def probe_index() -> int | None:
    """Inside a probe forward, its index ``k`` (0-based); ``None`` in every other forward."""
    return _PROBE.get()


@contextlib.contextmanager
def probing(index: int) -> Iterator[None]:
    """Forwards inside this block are probe ``index``."""
    token = _PROBE.set(int(index))
    try:
        yield
    finally:
        _PROBE.reset(token)


def pop_example_loss_requests(model: nn.Module) -> list[tuple[nn.Module, int]]:
    """Every pending request ``(module, probes)``, removed from the modules."""
    requests = []
    for module in model.modules():
        probes = module.__dict__.pop(_REQUEST, None)
        if probes is not None:
            requests.append((module, probes))
    return requests


def answer_example_loss_requests(model: nn.Module, requests: list[tuple[nn.Module, int]],
                                 example_losses: Callable[[], torch.Tensor]
                                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Run ``max(probes)`` probe forwards without autograd, each ``example_losses()`` -> (B,) under
    ``probing(k)``; hand every requesting module its rows of the detached (K, B) losses; return
    what the modules reported while receiving them (``collect_aux``'s losses and statistics).
    The aux values reported during the probes themselves are discarded; so are new requests."""
    if not requests:
        return {}, {}
    rows = []
    with torch.no_grad():
        for k in range(max(probes for _, probes in requests)):
            with probing(k):
                rows.append(example_losses().detach().reshape(-1))
            collect_aux(model)
            pop_example_loss_requests(model)
    losses = torch.stack(rows)                                             # (K, B)
    for module, probes in requests:
        module.receive_example_losses(losses[:probes])
    return collect_aux(model)
