"""The MQAR task: the generator's layout and labels, seeds and splits, and a few runner steps."""
import contextlib
import os

import pytest
import torch

from harness import tracking
from harness.runner import run_suite
from harness.suite import load_suite
from harness.tasks.base import split_seed
from harness.tasks.mqar import FILL, IGNORE, MQAR, generate_mqar

ROOT = os.getcwd()
TINY = ["task.seq_len=16", "task.vocab_size=16", "task.num_kv_pairs=3", "task.n_train=64", "task.n_eval=16",
        "train.steps=4", "train.batch_size=8", "train.eval_every=2", "train.log_every=2", "suite.seeds=[0]",
        "budget.params=3000", "model.dim=16", "model.depth=1"]


def test_tiny_example_layout_and_labels():
    tokens, labels = generate_mqar(1, seq_len=12, vocab_size=10, num_kv_pairs=2, seed=3)
    t, y = tokens[0].tolist(), labels[0].tolist()
    keys, values = t[0:4:2], t[1:4:2]
    bound = dict(zip(keys, values))
    assert len(set(keys)) == 2 and all(1 <= k < 5 for k in keys) and all(5 <= v < 10 for v in values)
    answers = [p for p, label in enumerate(y) if label != IGNORE]
    assert len(answers) == 2 and all(p >= 4 and p % 2 == 0 for p in answers)
    for p in answers:                      # the label at a query is the value bound to its key, which follows it
        assert y[p] == bound[t[p]] and t[p + 1] == y[p]
    queried = set(answers) | {p + 1 for p in answers}
    assert all(t[p] == FILL for p in range(4, 12) if p not in queried)
    assert sorted(t[p] for p in answers) == sorted(keys)   # every key queried once


def test_deterministic_per_seed_and_splits_disjoint():
    a, b = MQAR(seq_len=32, num_kv_pairs=4, n_train=200, n_eval=100), MQAR(seq_len=32, num_kv_pairs=4, n_train=200,
                                                                          n_eval=100)
    assert all(torch.equal(a.splits()[s][0], b.splits()[s][0]) for s in ("train", "val", "test"))
    rows = {split: {tuple(r) for r in a.splits()[split][0].tolist()} for split in ("train", "val", "test")}
    assert not rows["train"] & rows["val"] and not rows["train"] & rows["test"] and not rows["val"] & rows["test"]
    seeds = {split_seed(s, split) for s in range(5) for split in ("train", "val", "test")}
    assert len(seeds) == 15                # no stream is shared across splits or data seeds
    other = MQAR(seq_len=32, num_kv_pairs=4, n_train=200, n_eval=100, seed=1)
    assert not torch.equal(other.splits()["train"][0], a.splits()["train"][0])


def test_bad_configuration_fails_early():
    with pytest.raises(ValueError, match="seq_len >= 32"):
        MQAR(seq_len=16, num_kv_pairs=8)
    with pytest.raises(ValueError, match="vocab_size"):
        MQAR(seq_len=64, vocab_size=8, num_kv_pairs=8)


def test_loss_and_accuracy_only_on_answer_positions():
    task = MQAR(seq_len=16, vocab_size=16, num_kv_pairs=3, n_train=8, n_eval=8)
    tokens, labels = task.splits()["val"]

    class Oracle(torch.nn.Module):         # predicts the right value at answers, garbage elsewhere
        def forward(self, x):
            logits = torch.zeros(*x.shape, 16)
            logits[..., 0] = 1.0
            answer = labels != IGNORE
            logits[answer] = torch.nn.functional.one_hot(labels[answer], 16).float() * 50
            return logits

    out = task.evaluate(Oracle(), task.batches("val", 8), torch.device("cpu"), contextlib.nullcontext)
    assert out["accuracy"] == 1.0 and out["loss"] < 1e-6
    assert task.loss(Oracle(), (tokens, labels)).item() < 1e-6


def test_per_example_loss_is_each_sequences_mean_over_its_answers():
    task = MQAR(seq_len=16, vocab_size=16, num_kv_pairs=3, n_train=8, n_eval=8)
    tokens, labels = task.splits()["val"]
    torch.manual_seed(0)
    logits = torch.randn(*tokens.shape, 16)

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return logits

    per_seq = task.per_example_loss(Fixed(), (tokens, labels))                                  # (8,)
    for b in range(len(tokens)):
        answer = labels[b] != IGNORE
        by_hand = torch.nn.functional.cross_entropy(logits[b][answer], labels[b][answer])
        assert per_seq[b].item() == pytest.approx(by_hand.item(), abs=1e-5)
    assert task.loss(Fixed(), (tokens, labels)).item() == pytest.approx(per_seq.mean().item(), abs=1e-5)


def test_a_few_runner_steps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracking.configure(enabled=False)
    suite = load_suite(f"{ROOT}/suites/mqar.toml", TINY)
    results = run_suite(suite, variants=["softmax", "linear"])
    assert [r.status for r in results] == ["finished", "finished"]
    assert all(0.0 <= r.metrics["test/accuracy"] <= 1.0 for r in results)
