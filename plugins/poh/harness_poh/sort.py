"""Sort, synthetic: read ``length`` integers, then write them in ascending order (causal lm).

One example of ``length`` L over values [0, vocab_size), SEP = vocab_size::

    x_1 .. x_L SEP y_1 .. y_L          y = sorted(x), duplicates kept
    input  (2L tokens): x_1 .. x_L SEP y_1 .. y_{L-1}
    target (L tokens):  y_1 .. y_L     predicted at positions L .. 2L-1 (SEP predicts y_1)

Values are drawn uniformly with replacement. Metrics over the L answer positions, teacher forced
(one forward per batch): ``element_accuracy``, the fraction of answer positions whose arg-max is
right, and ``perfect_sort``, the fraction of examples with every position right, which equals the
exact-match rate of greedy decoding (if every step's arg-max given the true prefix is right,
greedy decoding never leaves the true prefix, and conversely). ``loss``: cross-entropy per answer
token (nats).

Splits: each split has its own generator, seeded ``3 * seed + offset`` (train 0, val 1, test 2):
disjoint streams for any data seed. The data seed is a task option, not the run seed, so every
variant and run seed sees the same data.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F

from harness.specs import TaskMeta
from harness.tasks.base import GeneratedSplits, TensorBatches


def generate_sort(n: int, length: int, vocab_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` examples: inputs (n, 2 length) and targets (n, length), the sorted values."""
    if length < 1 or vocab_size < 2:
        raise ValueError(f"need length >= 1 and vocab_size >= 2, got {length} and {vocab_size}")
    gen = torch.Generator().manual_seed(seed)
    values = torch.randint(0, vocab_size, (n, length), generator=gen)               # (n, L)
    targets = values.sort(dim=1).values                                             # (n, L)
    sep = torch.full((n, 1), vocab_size, dtype=torch.long)
    inputs = torch.cat([values, sep, targets[:, :-1]], dim=1)                        # (n, 2L)
    return inputs, targets


def _predictions(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Arg-max of logits (N, L, V), or predictions (N, L) as they are."""
    return outputs.argmax(-1) if outputs.dim() == targets.dim() + 1 else outputs


def element_accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of answer positions predicted right; outputs are logits (N, L, V) or tokens (N, L)."""
    return (_predictions(outputs, targets) == targets).float().mean().item()


def perfect_sort(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of examples whose every answer position is right (the greedy exact-match rate)."""
    return (_predictions(outputs, targets) == targets).all(dim=-1).float().mean().item()


class Sort(GeneratedSplits):
    """The sorting task for the causal ``lm`` backbone (or ``poh.refiner`` over it)."""

    metrics: tuple[str, ...] = ("element_accuracy", "perfect_sort", "loss")

    def __init__(self, length: int = 8, vocab_size: int = 16, n_train: int = 10_000, n_eval: int = 500,
                 seed: int = 0):
        generate_sort(1, length, vocab_size, seed)            # a bad configuration fails when planned
        self.length, self.vocab_size, self.seed = length, vocab_size, seed
        self.sizes = {"train": n_train, "val": n_eval, "test": n_eval}
        self.meta = TaskMeta("tokens", vocab_size=vocab_size + 1, max_len=2 * length, causal=True)
        self.tokens_per_sample = 2 * length

    def generate(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return generate_sort(n, self.length, self.vocab_size, seed)

    def answer_logits(self, model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return model(inputs)[:, self.length:]                                      # (B, L, V): SEP and y_1 .. y_{L-1}

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        inputs, targets = batch
        return F.cross_entropy(self.answer_logits(model, inputs).flatten(0, 1), targets.flatten())

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, batches: TensorBatches, device: torch.device,
                 autocast: Callable[[], object]) -> dict[str, float]:
        logits, targets = [], []
        for inputs, y in batches:
            with autocast():
                logits.append(self.answer_logits(model, inputs.to(device)).float().cpu())
            targets.append(y)
        out, target = torch.cat(logits), torch.cat(targets)                          # (N, L, V), (N, L)
        return {"element_accuracy": element_accuracy(out, target), "perfect_sort": perfect_sort(out, target),
                "loss": F.cross_entropy(out.flatten(0, 1), target.flatten()).item()}
