"""What a task is: data splits as tensors, a loss, and an evaluation over a split."""
from __future__ import annotations

from functools import cached_property
from typing import Callable, Iterator

import torch
from torch.nn import functional as F

from harness.specs import TaskMeta


class TaskDataError(RuntimeError):
    """The task's data is missing or unreadable; the message says how to fix it."""


class TensorBatches:
    """Shuffled mini-batches from in-memory tensors, endlessly (train) or once in order (eval).

    In-memory batching keeps the training loop's own overhead negligible next to the model step.
    """

    def __init__(self, tensors: tuple[torch.Tensor, ...], batch_size: int, *, shuffle: bool, seed: int = 0,
                 transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None):
        self.tensors, self.batch_size, self.shuffle, self.transform = tensors, batch_size, shuffle, transform
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.tensors[0]) // self.batch_size)

    def _apply(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        if self.transform is None:
            return batch
        return (self.transform(batch[0], self.generator), *batch[1:])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        n = len(self.tensors[0])
        while True:
            order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
            for start in range(0, n, self.batch_size):
                idx = order[start:start + self.batch_size]
                if self.shuffle and len(idx) < self.batch_size:  # keep every step the same size
                    break
                yield self._apply(tuple(t[idx] for t in self.tensors))
            if not self.shuffle:
                return


class ClassificationTask:
    """Images or token sequences with one label each; metrics: accuracy and loss."""

    meta: TaskMeta
    metrics: tuple[str, ...] = ("accuracy", "loss")

    def splits(self) -> dict[str, tuple[torch.Tensor, ...]]:
        raise NotImplementedError

    def train_transform(self) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None:
        return None

    def batches(self, split: str, batch_size: int, seed: int = 0) -> TensorBatches:
        data = self.splits()[split]
        train = split == "train"
        return TensorBatches(data, batch_size, shuffle=train, seed=seed,
                             transform=self.train_transform() if train else None)

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.per_example_loss(model, batch).mean()

    def per_example_loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        inputs, labels = batch
        return F.cross_entropy(model(inputs), labels, reduction="none")                  # (B,)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, batches: TensorBatches, device: torch.device,
                 autocast: Callable[[], object]) -> dict[str, float]:
        from harness.registry import metric

        logits, labels = [], []
        for inputs, y in batches:
            with autocast():
                logits.append(model(inputs.to(device)).float().cpu())
            labels.append(y)
        out, target = torch.cat(logits), torch.cat(labels)
        return {name: float(metric(name).load()(out, target)) for name in self.metrics}


SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2}


def split_seed(seed: int, split: str) -> int:
    """The generator seed of one split of a synthetic task: disjoint across splits and data seeds."""
    return 3 * seed + SPLIT_OFFSETS[split]


class GeneratedSplits:
    """Train/val/test of a seeded synthetic task, generated once from ``split_seed`` streams.

    A subclass sets ``sizes`` (split -> examples) and ``seed`` (the data seed, not the run seed: every
    variant and run sees the same data) and implements ``generate(n, seed)`` -> tensors, inputs
    first. Shuffled batches for train, in order otherwise."""

    sizes: dict[str, int]
    seed: int

    def generate(self, n: int, seed: int) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    @cached_property
    def _splits(self) -> dict[str, tuple[torch.Tensor, ...]]:
        return {split: self.generate(n, split_seed(self.seed, split)) for split, n in self.sizes.items()}

    def splits(self) -> dict[str, tuple[torch.Tensor, ...]]:
        return self._splits

    def example_inputs(self, n: int) -> tuple[torch.Tensor, ...]:
        return (self.splits()["val"][0][:n],)

    def batches(self, split: str, batch_size: int, seed: int = 0) -> TensorBatches:
        return TensorBatches(self.splits()[split], batch_size, shuffle=split == "train", seed=seed)
