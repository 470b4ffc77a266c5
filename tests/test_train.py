"""harness.train: which parameters weight decay reaches, and the settings a run applies."""
import pytest
import torch
from torch import nn

from harness.nn.context import SeqContext
from harness.train import decayed_count, effective_train, param_groups


def decayed_names(model: nn.Module) -> set[str]:
    decayed = {id(p) for p in param_groups(model, 0.1)[0]["params"]}
    return {name for name, p in model.named_parameters() if id(p) in decayed}


class Gains(nn.Module):
    """What the default rule must keep off decay, beside one weight matrix."""

    def __init__(self, declare: bool = False):
        super().__init__()
        self.declare = declare
        self.proj = nn.Linear(32, 32)
        self.norm = nn.LayerNorm(32)
        self.mix = nn.Parameter(torch.eye(2))                 # a small mixing matrix
        self.head_gain = nn.Parameter(torch.ones(4, 1, 1))     # a per-head scale
        self.cls = nn.Parameter(torch.zeros(1, 1, 32))         # a token: a vector with size-1 axes
        self.view_scale = nn.Parameter(torch.ones(4, 5, 1, 8))  # only a declaration catches this

    def no_weight_decay(self) -> set[str]:
        return {"view_scale"} if self.declare else set()


def test_default_rule_decays_weight_matrices_only():
    assert decayed_names(Gains()) == {"proj.weight", "view_scale"}


def test_a_declared_parameter_is_not_decayed_wherever_its_module_sits():
    model = nn.Sequential(nn.Linear(32, 32), nn.Sequential(Gains(declare=True)))
    assert decayed_names(model) == {"0.weight", "1.0.proj.weight"}
    groups = param_groups(model, 0.1)
    assert decayed_count(groups) == 2 * 32 * 32
    assert decayed_count(param_groups(model, 0.0)) == 0   # no decay configured: nothing is decayed


def test_a_misspelt_declaration_is_an_error():
    class Typo(Gains):
        def no_weight_decay(self) -> set[str]:
            return {"view_scales"}

    with pytest.raises(ValueError, match="view_scales"):
        param_groups(Typo(), 0.1)


def test_mop_gains_scales_and_mixers_are_not_decayed():
    from harness_mop.crossview import CrossViewAttention
    from harness_mop.edgewise import EdgewiseAttention

    ctx = SeqContext(max_len=16)
    edgewise = decayed_names(EdgewiseAttention(32, heads=4, ctx=ctx, lens_bank=True))
    assert not edgewise & {"qk_scale", "v_scale", "log_beta", "lens.taps"}
    assert {"qkv.weight", "proj.weight"} <= edgewise
    assert decayed_names(CrossViewAttention(32, heads=4, ctx=ctx)) == {"qkv.weight", "proj.weight"}


def test_effective_train_logs_what_a_run_applies(monkeypatch):
    from harness import train as train_module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(train_module, "available_cores", lambda: 3)
    assert effective_train({"device": "auto", "amp": True, "threads": None}) == {
        "device": "auto", "amp": False, "threads": 3}
    assert effective_train({"device": "cpu", "amp": True, "threads": 1})["threads"] == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert effective_train({"device": "auto", "amp": True})["amp"] is True
