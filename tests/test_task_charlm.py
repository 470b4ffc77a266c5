"""The charlm task: vocabulary, contiguous splits, windows, bpc/perplexity, sampling, errors, a run."""
import contextlib
import math
import random
import urllib.error
from pathlib import Path

import pytest
import torch

from harness import tracking
from harness.registry import get_registries
from harness.runner import run_suite
from harness.suite import load_suite
from harness.tasks.base import TaskDataError
from harness.tasks.text import CharLM, eval_windows, lm_metrics, sample_continuation

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared/data/text/tinyshakespeare.txt"
N_CHARS = 2000
SEQ_LEN = 8


@pytest.fixture
def corpus(tmp_path):
    """2,000 random lowercase letters and spaces: any 9-character window is (almost surely) unique,
    so "this window is a substring of the train text" pins where it came from."""
    rng = random.Random(0)
    text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(N_CHARS))
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path, text


def task_for(path, **options):
    return CharLM(str(path), seq_len=SEQ_LEN, **options)


class UniformLM(torch.nn.Module):
    """Logits of zeros: every character has probability 1/V, so the loss is ln V exactly."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, tokens):
        return torch.zeros(*tokens.shape, self.vocab_size)                  # (B, T, V)


def test_registered_as_causal_lm_task():
    spec = get_registries().tasks.get("charlm")
    assert spec.causal and spec.metrics == ("loss", "bpc", "perplexity")


def test_vocabulary_is_sorted_distinct_characters_and_ids_round_trip(corpus):
    path, text = corpus
    task = task_for(path)
    assert task.vocab == "".join(sorted(set(text)))
    assert task.meta.vocab_size == 27 and task.meta.max_len == SEQ_LEN and task.meta.causal
    assert task.meta.input == "tokens" and task.tokens_per_sample == SEQ_LEN
    ids = task.split_ids()
    assert task.decode(torch.cat([ids["train"], ids["val"], ids["test"]])) == text


def test_splits_are_contiguous_90_5_5(corpus):
    path, _ = corpus
    ids = task_for(path).split_ids()
    assert {k: len(v) for k, v in ids.items()} == {"train": 1800, "val": 100, "test": 100}


def test_training_windows_stay_inside_the_train_split_and_are_seeded(corpus):
    path, text = corpus
    task = task_for(path)
    train_text = text[:1800]
    batches = iter(task.batches("train", 16, seed=3))
    for _ in range(20):
        x, y = next(batches)
        assert x.shape == y.shape == (16, SEQ_LEN)
        assert torch.equal(x[:, 1:], y[:, :-1])                             # targets are inputs shifted by one
        for row_x, row_y in zip(x, y):
            assert task.decode(torch.cat([row_x, row_y[-1:]])) in train_text
    again, other = iter(task.batches("train", 16, seed=3)), iter(task.batches("train", 16, seed=4))
    first = next(iter(task.batches("train", 16, seed=3)))[0]
    assert torch.equal(next(again)[0], first) and not torch.equal(next(other)[0], first)


def test_eval_windows_are_non_overlapping_and_cover_the_split(corpus):
    path, _ = corpus
    task = task_for(path)
    val = task.split_ids()["val"]                                           # 100 characters -> 99 targets
    batches = list(task.batches("val", 5))
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert x.shape == (99 // SEQ_LEN, SEQ_LEN)
    assert torch.equal(x.reshape(-1), val[:96]) and torch.equal(y.reshape(-1), val[1:97])


def test_eval_windows_cap_keeps_evenly_spread_full_windows():
    ids = torch.arange(100)
    x, y = eval_windows(ids, 8, cap=4)                                      # 12 windows -> 4
    assert x[:, 0].tolist() == [0, 32, 56, 88] and torch.equal(y, x + 1)


def test_uniform_logits_give_ln_v_and_bpc_perplexity_follow(corpus):
    path, _ = corpus
    task = task_for(path)
    out = task.evaluate(UniformLM(27), task.batches("test", 4), torch.device("cpu"),
                        contextlib.nullcontext)
    assert out["loss"] == pytest.approx(math.log(27))
    assert out["bpc"] == pytest.approx(math.log2(27)) and out["perplexity"] == pytest.approx(27)
    # a hand-computed sum: 3 characters, 0.5 + 1.0 + 1.5 nats -> loss 1.0
    assert lm_metrics(3.0, 3) == pytest.approx({"loss": 1.0, "bpc": 1 / math.log(2), "perplexity": math.e})


def test_sampling_runs_past_the_context_and_is_seeded(corpus):
    from harness.nn.lm import build_lm

    path, _ = corpus
    task = task_for(path)
    torch.manual_seed(0)
    model = build_lm(task.meta, mixer="softmax", dim=16, depth=1, heads=2)  # KV cache: generate stops at max_len
    prompt = task.split_ids()["val"][:4]
    a = sample_continuation(model, prompt, 30, 0.8, seed=1)
    assert a.shape == (30,) and torch.equal(a, sample_continuation(model, prompt, 30, 0.8, seed=1))


def test_missing_corpus_names_the_fix(tmp_path):
    task = CharLM(str(tmp_path / "absent.txt"))
    with pytest.raises(TaskDataError) as err:
        task.check_data()
    message = str(err.value)
    assert "\n" not in message and "absent.txt" in message
    assert "task.corpus" in message and "task.download = true" in message


def test_unreadable_and_too_short_corpora(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa not utf-8")
    with pytest.raises(TaskDataError, match="not a readable UTF-8"):
        CharLM(str(tmp_path / "bad.txt")).check_data()
    (tmp_path / "short.txt").write_text("to be or not to be")
    with pytest.raises(TaskDataError, match="smaller task.seq_len"):
        CharLM(str(tmp_path / "short.txt"), seq_len=8).check_data()


def test_download_failure_is_one_line_and_leaves_no_file(tmp_path, monkeypatch):
    def offline(url, filename):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlretrieve", offline)
    target = tmp_path / "data" / "tinyshakespeare.txt"
    with pytest.raises(TaskDataError, match="download it by hand") as err:
        CharLM(str(target), download=True).check_data()
    assert "\n" not in str(err.value) and not list(target.parent.iterdir())


def test_relative_corpus_resolves_against_the_current_directory(corpus, monkeypatch):
    path, _ = corpus
    monkeypatch.chdir(path.parent)
    assert CharLM("corpus.txt").path == path


SUITE = """
[suite]
name = "charlm_tiny"
task = "charlm"
model = "lm"
metric = "test/bpc"
seeds = [0]
output_dir = "{out}"
[task]
corpus = "{corpus}"
seq_len = 8
eval_windows = 4
sample_chars = 20
[model]
dim = 16
depth = 1
heads = 2
[train]
steps = 6
batch_size = 8
eval_every = 3
log_every = 3
[variants.softmax]
mixer = "softmax"
"""


def test_short_run_reports_bpc_tokens_per_s_and_writes_a_sample(corpus, tmp_path):
    path, _ = corpus
    suite_file = tmp_path / "tiny.toml"
    suite_file.write_text(SUITE.format(out=tmp_path / "out", corpus=path))
    tracking.configure(enabled=False)
    [result] = run_suite(load_suite(suite_file), contract=False)  # softmax is checked in its own tests
    assert result.status == "finished", result.error
    m, e = result.metrics, result.efficiency
    assert m["test/bpc"] == pytest.approx(m["test/loss"] / math.log(2))
    assert m["test/perplexity"] == pytest.approx(math.exp(m["test/loss"]))
    assert e["tokens_per_s"] == pytest.approx(e["samples_per_s"] * SEQ_LEN) and e["flops_per_token"] > 0
    sample = open(result.artifacts["samples/sample.txt"], encoding="utf-8").read()
    assert "continuation, 20 characters" in sample


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason=f"tinyshakespeare not found at {SHAKESPEARE}")
def test_tinyshakespeare_vocabulary_and_splits():
    task = CharLM(str(SHAKESPEARE), seq_len=64)
    task.check_data()
    assert task.meta.vocab_size == 65
    assert {k: len(v) for k, v in task.split_ids().items()} == {"train": 1003854, "val": 55769, "test": 55771}


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason=f"tinyshakespeare not found at {SHAKESPEARE}")
def test_lm_suite_plans_from_the_repository_root(monkeypatch):
    from harness.plan import plan_suite

    monkeypatch.chdir(ROOT)  # the suite's corpus path is relative to where harness runs
    suite = load_suite("suites/lm.toml")
    mixers = get_registries().mixers
    assert all(mixers.get(v.mixer).causal_ok for v in suite.variants.values())
    plans = plan_suite(suite)
    assert set(plans) == set(suite.variants) and all(abs(p.gap) <= 0.02 for p in plans.values())
