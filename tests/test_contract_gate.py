"""The contract gate: on a causal (or padded) task, `harness validate` and `harness run` probe every
mixer of the suite for leaks before training and refuse a leaky one; --no-contract skips it."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from harness import MixerSpec, TaskSpec, hookimpl, tracking
from harness.runner import run_suite
from harness.specs import TaskMeta
from harness.suite import SuiteError, parse_suite
from harness.tasks.base import TensorBatches
from harness.testing import temporary_plugin

LENGTH = 24


class NextToken:
    """A tiny causal token task (synthetic): predict the previous token at every position."""

    meta = TaskMeta(input="tokens", vocab_size=8, max_len=LENGTH, causal=True)

    def splits(self):
        g = torch.Generator().manual_seed(0)
        return {s: (torch.randint(0, 8, (32, LENGTH), generator=g),) for s in ("train", "val", "test")}

    def batches(self, split, batch_size, seed=0):
        return TensorBatches(self.splits()[split], batch_size, shuffle=split == "train", seed=seed)

    def loss(self, model, batch):
        (tokens,) = batch
        logits = model(tokens)[:, 1:]                                      # (B, T-1, V)
        return F.cross_entropy(logits.reshape(-1, 8), tokens[:, :-1].reshape(-1))

    @torch.no_grad()
    def evaluate(self, model, batches, device, autocast):
        losses = [self.loss(model, tuple(t.to(device) for t in b)).item() for b in batches]
        return {"loss": sum(losses) / len(losses), "accuracy": 0.0}


class PeekNext(nn.Module):
    """Claims causal_ok, but position t also reads x[t+1] (the bug the gate exists for)."""

    def __init__(self, dim, *, heads, ctx, **options):
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, pad=None):
        return self.proj(x + torch.roll(x, -1, dims=1))


class Plugin:
    @hookimpl
    def register_tasks(register):
        register(TaskSpec("gate.next_token", NextToken, causal=True, metrics=("loss", "accuracy")))

    @hookimpl
    def register_mixers(register):
        register(MixerSpec("gate.peek", PeekNext, causal_ok=True, padding_ok=True))


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracking.configure(enabled=False)
    with temporary_plugin(Plugin, name="gate"):
        yield
    tracking.configure()


def suite(*mixers):
    return parse_suite({
        "suite": {"name": "gate", "task": "gate.next_token", "model": "lm", "metric": "test/loss", "seeds": [0]},
        "model": {"dim": 16, "depth": 1, "heads": 2},
        "train": {"steps": 2, "batch_size": 8, "eval_every": 2, "log_every": 1},
        "variants": {m.replace(".", "_"): {"mixer": m} for m in mixers},
    })


def test_run_refuses_a_leaky_mixer_before_training(plugin, capsys):
    with pytest.raises(SuiteError) as err:
        run_suite(suite("softmax", "gate.peek"))
    (line,) = err.value.problems
    assert line.startswith("variants.gate_peek.mixer:") and "causal leak" in line and f"T={LENGTH}" in line
    assert "--no-contract" in line
    assert "softmax" not in line


def test_no_contract_runs_anyway_and_tags_the_runs(plugin, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracking.configure(enabled=True, tracking_uri=uri)
    results = run_suite(suite("gate.peek"), contract=False)
    assert [r.status for r in results] == ["finished"] and results[0].run.contract_skipped
    child = MlflowClient(uri).get_run(results[0].run_id)
    assert child.data.tags["harness.contract"] == "skipped"


def test_validate_reports_the_gate_and_honours_no_contract(plugin, tmp_path):
    from harness.validate import validate_suite

    with pytest.raises(SuiteError, match="causal leak"):
        validate_suite(suite("gate.peek"))
    assert set(validate_suite(suite("gate.peek"), contract=False)) == {"gate_peek"}
    assert set(validate_suite(suite("softmax", "mop.quartet"))) == {"softmax", "mop_quartet"}
