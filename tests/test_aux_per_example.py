"""harness.nn.aux's per-example-loss mechanism and how harness.train answers it: modules that ask get
the detached per-example task loss of K no-grad probe forwards, after the forward and before
backward, and the losses they report on delivery join the same step's objective."""
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from harness.nn.aux import (answer_example_loss_requests, collect_aux, pop_example_loss_requests, probe_index,
                            probing, report_loss, report_stat, request_example_losses)
from harness.specs import TaskMeta
from harness.suite import TrainSection
from harness.tasks.base import ClassificationTask
from harness.train import train

torch.set_num_threads(1)


class Chooser(nn.Module):
    """Asks for ``probes`` probes in training forwards; in probe k scales its input by (k + 2)."""

    def __init__(self, probes: int = 3):
        super().__init__()
        self.probes = probes
        self.gain = nn.Parameter(torch.ones(()))
        self.received: list[torch.Tensor] = []
        self.probes_seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = probe_index()
        if k is not None:
            self.probes_seen.append(k)
            report_stat(self, "in_probe", torch.ones(()))        # discarded: reported during a probe
            request_example_losses(self, 99)                      # discarded too
            return x * (k + 2)
        if self.training and torch.is_grad_enabled():
            request_example_losses(self, self.probes)
        return x * self.gain

    def receive_example_losses(self, losses: torch.Tensor) -> None:
        self.received.append(losses)
        report_loss(self, "chooser", self.gain * losses.mean())
        report_stat(self, "chooser_stat", losses.mean())


class Toy(nn.Module):
    def __init__(self, probes: int = 3):
        super().__init__()
        self.chooser = Chooser(probes)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.chooser(x))


class ToyTask(ClassificationTask):
    meta = TaskMeta(input="tokens", num_classes=2)

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(48, 4, generator=g)
        y = (x[:, 0] > 0).long()
        self.data = {"train": (x[:32], y[:32]), "val": (x[32:40], y[32:40]), "test": (x[40:], y[40:])}
        self.calls: list[tuple[int | None, bool]] = []

    def splits(self):
        return self.data

    def loss(self, model, batch):                 # the training forward; not a probe, so not recorded
        x, y = batch
        return F.cross_entropy(model(x), y)

    def per_example_loss(self, model, batch):
        self.calls.append((probe_index(), torch.is_grad_enabled()))
        x, y = batch
        return F.cross_entropy(model(x), y, reduction="none")


class NoPerExampleTask(ToyTask):
    per_example_loss = None   # a task without the optional method


CFG = TrainSection(steps=2, batch_size=8, log_every=1, eval_every=10, threads=1, device="cpu", warmup=0.0)


def test_requesting_modules_get_probe_losses_before_backward():
    torch.manual_seed(0)
    model, task = Toy(probes=3), ToyTask()
    outcome = train(model, task, CFG, seed=0)
    chooser = model.chooser
    assert len(chooser.received) == 2                                 # one delivery per step
    assert all(r.shape == (3, 8) and not r.requires_grad for r in chooser.received)
    # three no-grad probes per step, in order, each under probing(k)
    assert task.calls == [(0, False), (1, False), (2, False)] * 2
    assert chooser.probes_seen == [0, 1, 2] * 2
    # the reported loss joined the objective and was logged; probe-time reports were dropped
    logged = [h for h in outcome.history if "train/loss" in h]
    assert all("train/aux/chooser.chooser" in h and "train/stat/chooser_stat" in h for h in logged)
    assert not any("in_probe" in key for h in outcome.history for key in h)


def test_probe_losses_are_the_tasks_per_example_losses_under_each_probe():
    torch.manual_seed(0)
    model, task = Toy(probes=2), ToyTask()
    x, y = task.data["train"][0][:8], task.data["train"][1][:8]
    model.train()
    model(x)
    requests = pop_example_loss_requests(model)
    assert requests == [(model.chooser, 2)]
    answer_example_loss_requests(model, requests, lambda: task.per_example_loss(model, (x, y)))
    expected = torch.stack([F.cross_entropy(model.head(x * (k + 2)), y, reduction="none") for k in range(2)])
    torch.testing.assert_close(model.chooser.received[0], expected.detach())


def test_each_module_gets_its_own_rows_of_the_longest_probe_run():
    a, b = Chooser(2), Chooser(4)
    model = nn.Sequential(a, b).train()
    model(torch.ones(3, 1))
    requests = pop_example_loss_requests(model)
    losses, _ = answer_example_loss_requests(model, requests, lambda: torch.full((3,), float(probe_index())))
    assert a.received[0].tolist() == [[0.0] * 3, [1.0] * 3]
    assert b.received[0][:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert set(losses) == {"0.chooser", "1.chooser"} and losses["0.chooser"].requires_grad
    assert pop_example_loss_requests(model) == []                  # probes' own requests were dropped
    assert probe_index() is None


def test_a_model_without_requests_runs_no_probes():
    torch.manual_seed(0)
    task = ToyTask()
    model = nn.Linear(4, 2)
    train(model, task, CFG, seed=0)
    assert task.calls == []


def test_a_task_without_per_example_loss_gives_its_batch_loss_to_every_example():
    torch.manual_seed(0)
    model, task = Toy(probes=2), NoPerExampleTask()
    import harness.train as train_module

    train_module._warned_no_per_example.discard("NoPerExampleTask")
    with pytest.warns(UserWarning, match="no per_example_loss"):
        train(model, task, CFG, seed=0)
    for r in model.chooser.received:
        assert r.shape == (2, 8) and torch.all(r == r[:, :1])        # one value per probe, repeated
        assert r[0, 0] != r[1, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")                               # warned once per task class
        train(Toy(probes=2), NoPerExampleTask(), CFG, seed=0)


def test_probing_context_and_requests_outside_the_trainer():
    assert probe_index() is None
    with probing(3):
        assert probe_index() == 3
    assert probe_index() is None
    with pytest.raises(TypeError, match="receive_example_losses"):
        request_example_losses(nn.Linear(1, 1), 2)
    with pytest.raises(ValueError, match="probes"):
        request_example_losses(Chooser(), 0)
    # a plain forward leaves a request that collect_aux does not touch and nobody has to answer
    model = Toy().train()
    model(torch.ones(2, 4))
    collect_aux(model)
    assert len(pop_example_loss_requests(model)) == 1
