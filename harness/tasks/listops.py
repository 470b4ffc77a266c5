"""ListOps, synthetic, after Long Range Arena (Tay et al., 2021; Nangia & Bowman, 2018): nested
MIN, MAX, MED (median) and SM (sum mod 10) over the digits 0-9; the label (10 classes) is the
expression's value, e.g. ``[MAX 2 9 [MIN 4 7 ] 0 ]`` -> 9.

The generator is LRA's (google-research/long-range-arena, lra_benchmarks/data/listops.py): below
``max_depth`` a node is a digit with probability 0.75, else an operator over 2..``max_args``
sub-trees; the root is always an operator; expressions outside [``min_len``, ``max_len``] tokens are
redrawn. MED of an even count is the floor of the mean of the two middle values (LRA's
``int(np.median(...))`` on non-negative values).

Sequences are right-padded to ``max_len`` with a ``pad`` mask (bool, True = real token), and each
batch is cut to its longest sequence before the model sees it. Splits: generator seed ``3 * seed
+ offset`` (train 0, val 1, test 2), disjoint streams for any data seed; the data seed is a task
option, not the run seed.
"""
from __future__ import annotations

import random
from typing import Callable, Union

import torch
from torch.nn import functional as F

from harness.specs import TaskMeta
from harness.tasks.base import GeneratedSplits, TensorBatches

OPERATORS = {"[MIN": min, "[MAX": max,
             "[MED": lambda xs: (sorted(xs)[(len(xs) - 1) // 2] + sorted(xs)[len(xs) // 2]) // 2,
             "[SM": lambda xs: sum(xs) % 10}
END = "]"
# 0 is padding; the digits, the operators and END follow.
VOCAB = ["<pad>", *map(str, range(10)), *OPERATORS, END]
TOKEN_ID = {tok: i for i, tok in enumerate(VOCAB)}
LEAF_P = 0.75                        # LRA's 1 - VALUE_P: a node below max depth is a digit this often

Tree = Union[int, tuple]             # a digit, or (operator, [sub-trees])


def evaluate_expression(tokens: list[str]) -> int:
    """The exact value of an expression given as tokens (``["[MAX", "2", "9", "]"]``), by a stack;
    independent of how the generator computes its labels, so each checks the other."""
    stack: list[list] = []            # one [operator, *argument values] per open bracket
    for tok in tokens:
        if tok in OPERATORS:
            stack.append([tok])
        elif tok == END:
            op, *args = stack.pop()
            value = OPERATORS[op](args)
            if not stack:
                return value
            stack[-1].append(value)
        elif stack:
            stack[-1].append(int(tok))
        else:
            return int(tok)           # a bare digit is its own value
    raise ValueError(f"unbalanced expression: {' '.join(tokens)}")


def _tree(rng: random.Random, depth: int, max_depth: int, max_args: int) -> Tree:
    if depth > 1 and (depth >= max_depth or rng.random() < LEAF_P):
        return rng.randrange(10)
    children = [_tree(rng, depth + 1, max_depth, max_args) for _ in range(rng.randint(2, max_args))]
    return (rng.choice(list(OPERATORS)), children)


def tree_tokens(tree: Tree) -> list[str]:
    if isinstance(tree, int):
        return [str(tree)]
    op, children = tree
    return [op, *(tok for child in children for tok in tree_tokens(child)), END]


def tree_value(tree: Tree) -> int:
    if isinstance(tree, int):
        return tree
    op, children = tree
    return OPERATORS[op]([tree_value(child) for child in children])


def generate_listops(n: int, min_len: int, max_len: int, max_depth: int, max_args: int, seed: int,
                     max_tries: int = 1000) -> list[tuple[list[str], int]]:
    """``n`` (tokens, value) pairs with min_len <= len(tokens) <= max_len."""
    rng, out = random.Random(seed), []
    for _ in range(n * max_tries):
        tree = _tree(rng, 1, max_depth, max_args)
        tokens = tree_tokens(tree)
        if min_len <= len(tokens) <= max_len:
            out.append((tokens, tree_value(tree)))
            if len(out) == n:
                return out
    raise ValueError(f"could not draw {n} expressions of {min_len}-{max_len} tokens with max_depth={max_depth}, "
                     f"max_args={max_args}; widen the length range or raise max_depth/max_args")


def encode(examples: list[tuple[list[str], int]], max_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded token ids (N, max_len), pad mask (N, max_len, True = real) and labels (N,)."""
    tokens = torch.zeros(len(examples), max_len, dtype=torch.long)
    for i, (toks, _) in enumerate(examples):
        tokens[i, :len(toks)] = torch.tensor([TOKEN_ID[t] for t in toks])
    lengths = torch.tensor([len(toks) for toks, _ in examples])
    pad = torch.arange(max_len)[None, :] < lengths[:, None]                  # (N, max_len)
    return tokens, pad, torch.tensor([value for _, value in examples])


def trimmed(tokens: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch cut to its longest real sequence: the columns after it are padding in every row."""
    longest = int(pad.sum(1).max())
    return tokens[:, :longest], pad[:, :longest]


class ListOps(GeneratedSplits):
    """ListOps for the ``encoder`` backbone; batches are (tokens, pad, labels); metrics: accuracy, loss."""

    metrics: tuple[str, ...] = ("accuracy", "loss")

    def __init__(self, min_len: int = 16, max_len: int = 128, max_depth: int = 4, max_args: int = 5,
                 n_train: int = 20_000, n_eval: int = 1_000, seed: int = 0):
        if not 1 <= min_len <= max_len:
            raise ValueError(f"need 1 <= min_len <= max_len, got {min_len} and {max_len}")
        self.lengths, self.max_depth, self.max_args = (min_len, max_len), max_depth, max_args
        self.sizes = {"train": n_train, "val": n_eval, "test": n_eval}
        self.seed = seed
        self.meta = TaskMeta("tokens", num_classes=10, vocab_size=len(VOCAB), max_len=max_len)
        self.tokens_per_sample = max_len

    def generate(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return encode(generate_listops(n, *self.lengths, self.max_depth, self.max_args, seed), self.lengths[1])

    def example_inputs(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, pad, _ = self.splits()["val"]
        return tokens[:n], pad[:n]

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.per_example_loss(model, batch).mean()

    def per_example_loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        tokens, pad, labels = batch
        return F.cross_entropy(model(*trimmed(tokens, pad)), labels, reduction="none")      # (B,)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, batches: TensorBatches, device: torch.device,
                 autocast: Callable[[], object]) -> dict[str, float]:
        from harness.registry import metric

        logits, labels = [], []
        for tokens, pad, y in batches:
            with autocast():
                logits.append(model(*trimmed(tokens.to(device), pad.to(device))).float().cpu())   # (B, 10)
            labels.append(y)
        out, target = torch.cat(logits), torch.cat(labels)
        return {name: float(metric(name).load()(out, target)) for name in self.metrics}
