"""The sort task: generator correctness, disjoint seeded splits, and metric values on hand-computed
cases (and through evaluate, with an oracle and a wrong model)."""
import contextlib

import pytest
import torch

from harness.tasks.base import SPLIT_OFFSETS
from harness_poh.sort import Sort, element_accuracy, generate_sort, perfect_sort


def test_generator_layout():
    inputs, targets = generate_sort(50, 6, 10, seed=3)
    assert inputs.shape == (50, 12) and targets.shape == (50, 6)
    values = inputs[:, :6]
    assert ((values >= 0) & (values < 10)).all()
    assert torch.equal(targets, values.sort(1).values)                 # sorted, duplicates kept
    assert (targets[:, 1:] >= targets[:, :-1]).all()
    assert (inputs[:, 6] == 10).all()                                   # SEP = vocab_size
    assert torch.equal(inputs[:, 7:], targets[:, :-1])                  # teacher forcing: y_1 .. y_{L-1}
    again, _ = generate_sort(50, 6, 10, seed=3)
    assert torch.equal(inputs, again)                                   # seeded


def test_splits_come_from_disjoint_seeds():
    task = Sort(length=5, vocab_size=7, n_train=40, n_eval=20, seed=2)
    seeds = {3 * 2 + off for off in SPLIT_OFFSETS.values()}
    assert len(seeds) == 3 and not seeds & {3 * s + o for s in (0, 1, 3) for o in SPLIT_OFFSETS.values()}
    splits = task.splits()
    assert [len(splits[s][0]) for s in ("train", "val", "test")] == [40, 20, 20]
    assert not torch.equal(splits["val"][0], splits["test"][0])
    assert task.meta.vocab_size == 8 and task.meta.max_len == 10 and task.meta.causal


def test_metrics_hand_computed():
    targets = torch.tensor([[1, 2, 3], [4, 5, 6]])
    preds = torch.tensor([[1, 2, 3], [4, 0, 6]])
    assert element_accuracy(preds, targets) == pytest.approx(5 / 6)
    assert perfect_sort(preds, targets) == pytest.approx(0.5)
    logits = torch.nn.functional.one_hot(preds, 8).float()             # (N, L, V): the arg-max is preds
    assert element_accuracy(logits, targets) == pytest.approx(5 / 6)
    assert perfect_sort(logits, targets) == pytest.approx(0.5)
    assert perfect_sort(torch.tensor([[1, 2, 0], [0, 5, 6]]), targets) == 0.0


class Oracle(torch.nn.Module):
    """Predicts the next token of the sorted output from the inputs: the sorted values are known
    from x, so logits put all mass on them (wrong at chosen positions of example ``wrong``)."""

    def __init__(self, length, vocab, wrong=None):
        super().__init__()
        self.length, self.vocab, self.wrong = length, vocab, wrong

    def forward(self, tokens):
        L = self.length
        target = tokens[:, :L].sort(1).values                            # (B, L)
        out = torch.zeros(tokens.shape[0], tokens.shape[1], self.vocab + 1)
        out[:, L:] = torch.nn.functional.one_hot(target, self.vocab + 1).float()
        if self.wrong is not None:
            out[self.wrong, L + 1] = torch.nn.functional.one_hot(torch.tensor(self.vocab), self.vocab + 1).float()
        return out


def test_evaluate_and_loss_with_an_oracle():
    task = Sort(length=4, vocab_size=6, n_train=8, n_eval=10)
    got = task.evaluate(Oracle(4, 6), task.batches("test", 4), torch.device("cpu"), contextlib.nullcontext)
    assert got["element_accuracy"] == 1.0 and got["perfect_sort"] == 1.0
    half = task.evaluate(Oracle(4, 6, wrong=slice(0, 10, 2)), task.batches("test", 10), torch.device("cpu"),
                         contextlib.nullcontext)
    # every second example has one wrong position out of 4: 5 * 1 errors in 40 positions
    assert half["element_accuracy"] == pytest.approx(35 / 40) and half["perfect_sort"] == pytest.approx(0.5)
    batch = next(iter(task.batches("train", 4)))
    assert task.loss(Oracle(4, 6), batch).item() == pytest.approx(
        torch.nn.functional.cross_entropy(torch.eye(7)[batch[1].flatten()], batch[1].flatten()).item())


def test_bad_configuration_fails_when_built():
    with pytest.raises(ValueError, match="vocab_size"):
        Sort(length=4, vocab_size=1)
