"""The ListOps task: the exact evaluator, the generator's labels, padding, seeds and a few runner steps."""
import contextlib
import os

import pytest
import torch

from harness import tracking
from harness.runner import run_suite
from harness.suite import load_suite
from harness.tasks.listops import (VOCAB, ListOps, evaluate_expression, generate_listops, trimmed, tree_tokens,
                                   tree_value)

ROOT = os.getcwd()
TINY = ["task.min_len=8", "task.max_len=24", "task.max_depth=3", "task.n_train=64", "task.n_eval=16",
        "train.steps=4", "train.batch_size=8", "train.eval_every=2", "train.log_every=2", "suite.seeds=[0]",
        "budget.params=3000", "model.dim=16", "model.depth=1"]

HAND = [("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
        ("[MIN 3 [MAX 8 1 ] 5 ]", 3),
        ("[SM 7 8 9 ]", 4),                          # 24 mod 10
        ("[MED 1 9 3 ]", 3),
        ("[MED 1 2 6 9 ]", 4),                       # even count: floor((2 + 6) / 2)
        ("[MED 1 2 ]", 1),                           # floor(1.5)
        ("[SM [MAX 8 4 [MED 9 3 8 2 ] 1 4 ] 1 [MIN 1 5 3 [MIN 7 8 4 0 8 ] ] 6 0 ]", 5),   # 8 + 1 + 0 + 6 + 0 = 15
        ("7", 7)]


@pytest.mark.parametrize("text, value", HAND)
def test_evaluator_on_hand_written_expressions(text, value):
    assert evaluate_expression(text.split()) == value


def test_evaluator_rejects_unbalanced():
    with pytest.raises(ValueError, match="unbalanced"):
        evaluate_expression("[MAX 1 2".split())


def test_generator_labels_match_the_evaluator():
    examples = generate_listops(300, 5, 60, max_depth=4, max_args=5, seed=0)
    assert all(evaluate_expression(tokens) == value for tokens, value in examples)
    assert all(5 <= len(tokens) <= 60 for tokens, _ in examples)
    assert len({value for _, value in examples}) == 10
    tree = ("[SM", [7, ("[MAX", [2, 9]), 5])
    assert tree_tokens(tree) == "[SM 7 [MAX 2 9 ] 5 ]".split() and tree_value(tree) == 1


def test_padding_mask_and_trimming():
    task = ListOps(min_len=5, max_len=20, max_depth=3, n_train=32, n_eval=8)
    tokens, pad, labels = task.splits()["train"]
    assert tokens.shape == pad.shape == (32, 20) and pad.dtype == torch.bool
    for row, mask, label in zip(tokens, pad, labels):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()             # right padding, True = real
        assert (row[n:] == 0).all() and (row[:n] != 0).all()
        assert evaluate_expression([VOCAB[i] for i in row[:n]]) == label
    short, short_pad = trimmed(tokens[:4], pad[:4])
    assert short.shape[1] == int(pad[:4].sum(1).max()) and short_pad[:, -1].any()
    assert [t.shape for t in task.example_inputs(2)] == [(2, 20), (2, 20)]


def test_deterministic_per_seed_and_splits_disjoint():
    a, b = ListOps(min_len=16, max_len=40, n_train=200, n_eval=100), ListOps(min_len=16, max_len=40, n_train=200,
                                                                              n_eval=100)
    assert all(torch.equal(a.splits()[s][0], b.splits()[s][0]) for s in ("train", "val", "test"))
    rows = {s: {tuple(r) for r in a.splits()[s][0].tolist()} for s in ("train", "val", "test")}
    assert not rows["train"] & rows["val"] and not rows["train"] & rows["test"] and not rows["val"] & rows["test"]


def test_loss_and_evaluate_call_the_model_with_pad():
    task = ListOps(min_len=5, max_len=20, max_depth=3, n_train=16, n_eval=8)
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, tokens, pad=None):
            seen.append(pad)
            assert pad is not None and pad.shape == tokens.shape
            return torch.zeros(tokens.shape[0], 10, requires_grad=True)

    task.loss(Probe(), next(iter(task.batches("train", 4))))
    out = task.evaluate(Probe(), task.batches("val", 4), torch.device("cpu"), contextlib.nullcontext)
    assert set(out) == {"accuracy", "loss"} and len(seen) == 3


def test_a_few_runner_steps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracking.configure(enabled=False)
    results = run_suite(load_suite(f"{ROOT}/suites/listops.toml", TINY), variants=["softmax"])
    assert [r.status for r in results] == ["finished"]
    assert 0.0 <= results[0].metrics["test/accuracy"] <= 1.0
