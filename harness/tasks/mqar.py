"""Multi-query associative recall (MQAR), synthetic, after Zoology (Arora et al., 2023;
github.com/HazyResearch/zoology).

A sequence lists ``num_kv_pairs`` key-value pairs, then a query region where every key appears
once more, followed by its value (teacher forcing, as Zoology does). At each query key the model
must predict the value bound to that key earlier in the sequence; only those positions carry a
label (IGNORE elsewhere), so the loss and the accuracy are over answer positions only.

Layout of one sequence of ``seq_len`` tokens (num_kv_pairs = 2, seq_len = 12)::

    k1 v1 k2 v2 | 0 0 k2 v2 0 0 k1 v1      labels: IGNORE except v2 at k2's query, v1 at k1's

Keys are drawn without replacement from [1, vocab_size / 2), values with replacement from
[vocab_size / 2, vocab_size); 0 fills the query region. Queries go in random (key, value) slots of
the query region, uniformly (Zoology draws the gaps from a power law; uniform is the simpler and
harder-to-shortcut choice).

Splits: each split has its own generator stream, seeded ``3 * seed + offset`` (train 0, val 1,
test 2), so the splits never share a stream, for any data seed. The data seed is a task option,
not the run seed, so every variant and run seed sees the same data.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F

from harness.specs import TaskMeta
from harness.tasks.base import GeneratedSplits, TensorBatches

IGNORE = -100                       # cross_entropy's ignore_index: positions without an answer
FILL = 0                            # the token between queries
def _rows_choice(n: int, high: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """k distinct integers from [0, high) per row, in random order: (n, k)."""
    return torch.rand(n, high, generator=gen).argsort(1)[:, :k]


def generate_mqar(n: int, seq_len: int, vocab_size: int, num_kv_pairs: int, seed: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` sequences: tokens (n, seq_len) and labels (n, seq_len), IGNORE off answer positions."""
    n_keys, n_slots = vocab_size // 2 - 1, (seq_len - 2 * num_kv_pairs) // 2
    if num_kv_pairs > n_keys:
        raise ValueError(f"num_kv_pairs={num_kv_pairs} needs vocab_size >= {2 * num_kv_pairs + 2}")
    if num_kv_pairs > n_slots:
        raise ValueError(f"num_kv_pairs={num_kv_pairs} needs seq_len >= {4 * num_kv_pairs}")
    gen = torch.Generator().manual_seed(seed)
    keys = _rows_choice(n, n_keys, num_kv_pairs, gen) + 1                               # (n, P)
    values = torch.randint(vocab_size // 2, vocab_size, (n, num_kv_pairs), generator=gen)  # (n, P)
    tokens = torch.full((n, seq_len), FILL, dtype=torch.long)
    labels = torch.full((n, seq_len), IGNORE, dtype=torch.long)
    tokens[:, 0:2 * num_kv_pairs:2], tokens[:, 1:2 * num_kv_pairs:2] = keys, values
    order = _rows_choice(n, num_kv_pairs, num_kv_pairs, gen)                           # (n, P): which pair
    slots = _rows_choice(n, n_slots, num_kv_pairs, gen)                                # (n, P): where
    query_pos = 2 * num_kv_pairs + 2 * slots                                           # (n, P)
    rows = torch.arange(n)[:, None]
    q_keys, q_values = keys.gather(1, order), values.gather(1, order)                  # (n, P)
    tokens[rows, query_pos], tokens[rows, query_pos + 1] = q_keys, q_values
    labels[rows, query_pos] = q_values
    return tokens, labels


class MQAR(GeneratedSplits):
    """The MQAR task for the causal ``lm`` backbone; metrics: accuracy and loss on answer positions."""

    metrics: tuple[str, ...] = ("accuracy", "loss")

    def __init__(self, seq_len: int = 64, vocab_size: int = 64, num_kv_pairs: int = 8, n_train: int = 20_000,
                 n_eval: int = 1_000, seed: int = 0):
        self.seq_len, self.vocab_size, self.num_kv_pairs = seq_len, vocab_size, num_kv_pairs
        self.sizes = {"train": n_train, "val": n_eval, "test": n_eval}
        self.seed = seed
        self.meta = TaskMeta("tokens", vocab_size=vocab_size, max_len=seq_len, causal=True)
        self.tokens_per_sample = seq_len
        generate_mqar(1, seq_len, vocab_size, num_kv_pairs, seed)   # a bad configuration fails when planned

    def generate(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return generate_mqar(n, self.seq_len, self.vocab_size, self.num_kv_pairs, seed)

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        # every sequence has num_kv_pairs answers, so the mean over sequences is the mean over answers
        return self.per_example_loss(model, batch).mean()

    def per_example_loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """(B,): each sequence's mean loss over its answer positions."""
        tokens, labels = batch
        logits = model(tokens)                                          # (B, T, V)
        token_loss = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")  # (B, T)
        answers = (labels != IGNORE).sum(1)                             # (B,)
        return token_loss.sum(1) / answers

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, batches: TensorBatches, device: torch.device,
                 autocast: Callable[[], object]) -> dict[str, float]:
        correct, loss_sum, count = 0, 0.0, 0
        for tokens, labels in batches:
            with autocast():
                logits = model(tokens.to(device)).float().cpu()        # (B, T, V)
            answer = labels != IGNORE                                   # (B, T)
            logits, target = logits[answer], labels[answer]             # (N, V), (N,)
            correct += int((logits.argmax(-1) == target).sum())
            loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
            count += len(target)
        return {"accuracy": correct / max(count, 1), "loss": loss_sum / max(count, 1)}
