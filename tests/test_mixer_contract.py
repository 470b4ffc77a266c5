"""check_mixer over every registered mixer (installed plugins included), and a bank of deliberately
broken mixers: each must be caught, with the property it breaks named in the message."""
import re

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from harness import MixerSpec, hookimpl
from harness.nn.softmax import SoftmaxAttention
from harness.registry import get_registries
from harness.testing import PROPERTIES, check_mixer, contract_report, temporary_plugin


@pytest.mark.parametrize("name", get_registries().mixers.names())
def test_registered_mixer_honours_contract(name):
    check_mixer(name)

class _Base(nn.Module):
    def __init__(self, dim, *, heads, ctx, **options):
        super().__init__()
        self.causal = ctx.causal
        self.proj = nn.Linear(dim, dim)


def _attend(q, k, v, pad, causal, fill=float("-inf")):
    """Single-head softmax attention with an additive ``fill`` mask; (B, T, D) -> (B, T, D)."""
    scores = q @ k.transpose(1, 2) / q.shape[-1] ** 0.5                      # (B, T, T)
    t = q.shape[1]
    allowed = torch.ones(t, t, dtype=torch.bool)
    if causal:
        allowed = allowed.tril()
    allowed = allowed.expand(q.shape[0], t, t)
    if pad is not None:
        allowed = allowed & pad[:, None, :]
    eye = torch.eye(t, dtype=torch.bool).expand_as(allowed)
    allowed = allowed | eye                      # a padded query attends to itself: never an empty row
    return F.softmax(scores.masked_fill(~allowed, fill), -1) @ v


class _Attention(_Base):
    """Correct single-head attention; the broken mixers below change one thing each."""

    def __init__(self, dim, *, heads, ctx, **options):
        super().__init__(dim, heads=heads, ctx=ctx)
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x, pad=None):
        q, k, v = self.qkv(x).chunk(3, -1)
        return self.proj(_attend(q, k, v, pad, self.causal))


class FutureLeak(_Base):
    """Claims causal_ok, but every token sees the mean of all real tokens (as Quartet's std did)."""

    def forward(self, x, pad=None):
        from harness.nn import masked_mean
        return self.proj(x + masked_mean(x, pad)[:, None])


class ChunkedLeak(_Attention):
    """Exact up to 16 tokens; longer sequences take a 'fast path' that forgets the causal mask."""

    def forward(self, x, pad=None):
        q, k, v = self.qkv(x).chunk(3, -1)
        return self.proj(_attend(q, k, v, pad, self.causal and x.shape[1] <= 16))


class SparseLeak(_Attention):
    """Leaks x[t+1] into y[t] only where t % 3 == 1: invisible at a few fixed cut points."""

    def forward(self, x, pad=None):
        y = super().forward(x, pad)
        t = x.shape[1]
        leak = torch.zeros_like(y)
        idx = torch.arange(1, t - 1, 3)
        leak[:, idx] = x[:, idx + 1]
        return y + leak


class NearMask(_Attention):
    """Masks with an additive -30 instead of -inf: the future gets a weight of about exp(-30)."""

    def forward(self, x, pad=None):
        q, k, v = self.qkv(x).chunk(3, -1)
        scores = q @ k.transpose(1, 2) / q.shape[-1] ** 0.5
        t = x.shape[1]
        if self.causal:
            scores = scores - 30.0 * torch.ones(t, t, dtype=x.dtype).triu(1)
        if pad is not None:
            scores = scores.masked_fill(~pad[:, None, :], float("-inf"))
        return self.proj(F.softmax(scores, -1) @ v)


class PaddingLeak(_Base):
    """Causal prefix mean that ignores the padding mask."""

    def forward(self, x, pad=None):
        t = x.shape[1]
        m = torch.ones(t, t, dtype=x.dtype).tril() if self.causal else torch.ones(t, t, dtype=x.dtype)
        return self.proj((m / m.sum(-1, keepdim=True)) @ x)


class PadCount(_Base):
    """Masks padded tokens but divides by T, so real outputs depend on how many pads there are."""

    def forward(self, x, pad=None):
        t = x.shape[1]
        m = torch.ones(t, t, dtype=x.dtype)
        if self.causal:
            m = m.tril()
        if pad is not None:
            m = m * pad[:, None, :].to(x.dtype)
        return self.proj(x + (m / t) @ x)


class BatchMixing(_Attention):
    """Normalises keys by statistics over the whole batch, so samples influence each other."""

    def forward(self, x, pad=None):
        q, k, v = self.qkv(x).chunk(3, -1)
        k = k / k.std()
        return self.proj(_attend(q, k, v, pad, self.causal))


class _WrongBackward(torch.autograd.Function):
    """A 'fused' scaling whose backward forgets the factor 2."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        return grad


class WrongBackward(_Attention):
    def forward(self, x, pad=None):
        q, k, v = self.qkv(x).chunk(3, -1)
        return self.proj(_attend(_WrongBackward.apply(q), k, v, pad, self.causal))


class DetachedScores(_Attention):
    """Scores computed from x.detach(): q and k never learn through the attention map."""

    def forward(self, x, pad=None):
        q, k, _ = self.qkv(x.detach()).chunk(3, -1)
        _, _, v = self.qkv(x).chunk(3, -1)
        return self.proj(_attend(q, k, v, pad, self.causal))


class Identity(_Base):
    """A 'mixer' that mixes nothing, like the tensor-mixology TokenMixer."""

    def forward(self, x, pad=None):
        return self.proj(x)


class DeadRouter(_Base):
    """A router whose output is used through argmax only, so it never gets a gradient."""

    def __init__(self, dim, *, heads, ctx, **options):
        super().__init__(dim, heads=heads, ctx=ctx)
        self.router = nn.Linear(dim, 2)

    def forward(self, x, pad=None):
        choice = self.router(x).argmax(-1, keepdim=True).to(x.dtype)      # (B, T, 1), no gradient path
        t = x.shape[1]
        m = torch.ones(t, t, dtype=x.dtype).tril()
        if pad is not None:
            m = m * pad[:, None, :].to(x.dtype) + torch.eye(t, dtype=x.dtype) * (~pad)[:, None, :].to(x.dtype)
        return self.proj((m / m.sum(-1, keepdim=True)) @ x) * (1 + 0 * choice)


class ForgetfulCache(SoftmaxAttention):
    """Claims a KV cache but attends only within each decoded chunk."""

    def forward_cached(self, x, cache):
        return super().forward_cached(x, {})


# name -> (class, the property check_mixer must name)
BANK = {
    "broken.future": (FutureLeak, "causal leak"),
    "broken.chunked": (ChunkedLeak, "causal leak"),
    "broken.sparse_leak": (SparseLeak, "causal leak"),
    "broken.near_mask": (NearMask, "causal leak"),
    "broken.padding": (PaddingLeak, "padding leak"),
    "broken.pad_count": (PadCount, "padding truncation"),
    "broken.batch": (BatchMixing, "batch independence"),
    "broken.wrong_backward": (WrongBackward, "gradient check"),
    "broken.detached": (DetachedScores, "gradient check"),
    "broken.identity": (Identity, "token mixing"),
    "broken.dead_router": (DeadRouter, "parameter gradients"),
}


class BrokenMixers:
    @hookimpl
    def register_mixers(register):
        for name, (cls, _) in BANK.items():
            register(MixerSpec(name, cls, causal_ok=True, padding_ok=True))
        register(MixerSpec("broken.kv_cache", ForgetfulCache, kv_cache=True))


@pytest.fixture(scope="module")
def broken():
    with temporary_plugin(BrokenMixers, name="broken"):
        yield


@pytest.mark.parametrize("name, prop", [*[(n, p) for n, (_, p) in BANK.items()], ("broken.kv_cache", "kv cache")])
def test_broken_mixer_is_caught(broken, name, prop):
    with pytest.raises(AssertionError, match=prop) as err:
        check_mixer(name)
    # names the measured deviation, or the parameter that got no gradient, or gradcheck's finding
    assert re.search(r"\d\.\d{3}e[+-]\d\d", str(err.value)) or "'router." in str(err.value) \
        or "finite differences" in str(err.value)


def test_the_reference_attention_of_the_bank_passes(broken):
    """The bank's mixers each break one thing of a correct mixer: that mixer must pass."""
    class Correct:
        @hookimpl
        def register_mixers(register):
            register(MixerSpec("bank.correct", _Attention, causal_ok=True, padding_ok=True))

    with temporary_plugin(Correct, name="correct"):
        figures = check_mixer("bank.correct")
    assert figures["causal_leak"] == 0.0 and figures["padding_leak"] == 0.0 and figures["truncation"] < 1e-12


def test_failure_message_reports_deviation(broken):
    with pytest.raises(AssertionError) as err:
        check_mixer("broken.future")
    msg = str(err.value)
    assert msg.startswith("causal leak:") and "changed outputs" in msg


def test_leaks_past_sixteen_tokens_are_reported_at_their_length(broken):
    with pytest.raises(AssertionError, match=r"causal leak: T=40"):
        check_mixer("broken.chunked")


def test_near_mask_is_caught_but_an_exact_mask_measures_zero(broken):
    report = contract_report("broken.near_mask", checks=("causal",))
    (causal,) = report.results
    assert not causal.passed and 1e-12 < causal.measured < 1e-3
    assert contract_report("softmax", checks=("causal",)).figures["causal_leak"] == 0.0


def test_surrogate_gradients_skip_gradcheck_but_keep_the_other_gradient_checks(broken):
    class Declared:
        @hookimpl
        def register_mixers(register):
            register(MixerSpec("bank.surrogate", WrongBackward, causal_ok=True, padding_ok=True,
                               surrogate_gradients=True))

    with temporary_plugin(Declared, name="declared"):
        names = [r.name for r in contract_report("bank.surrogate").results]
    assert "gradcheck" not in names and {"gradients", "reach"} <= set(names)


def test_capability_flags_decide_which_checks_apply(broken):
    class NotCausal:
        @hookimpl
        def register_mixers(register):
            register(MixerSpec("broken.future_noncausal", FutureLeak, causal_ok=False, padding_ok=False))

    with temporary_plugin(NotCausal, name="noncausal"):
        figures = check_mixer("broken.future_noncausal")
    assert "causal_leak" not in figures and "padding_leak" not in figures and "truncation" not in figures


def test_report_lists_every_property_with_threshold():
    report = contract_report("softmax")
    assert [r.name for r in report.results] == list(PROPERTIES)
    assert all(r.passed and r.threshold for r in report.results)


def test_softmax_figures_are_exact():
    figures = check_mixer("softmax")
    assert figures["causal_leak"] == 0.0 and figures["padding_leak"] == 0.0 and figures["batch_leak"] == 0.0
    assert figures["mixing"] > 1e-3 and figures["min_grad"] > 0 and figures["reach"] > 0


def test_check_command_prints_every_property_and_fails_on_a_broken_mixer(broken):
    from click.testing import CliRunner

    from harness.cli.check import check_command

    ok = CliRunner().invoke(check_command, ["softmax"], terminal_width=200)
    assert ok.exit_code == 0 and f"all {len(PROPERTIES)} properties pass" in ok.output
    assert all(prop in ok.output for prop in PROPERTIES)
    bad = CliRunner().invoke(check_command, ["broken.near_mask"], terminal_width=200)
    assert bad.exit_code == 1 and "FAIL" in bad.output and "causal leak" in bad.output
    opts = CliRunner().invoke(check_command, ["mop.edgewise", "--option", "views=2", "--option", "gate_mode=dense"],
                              terminal_width=200)
    assert opts.exit_code == 0, opts.output
    unknown = CliRunner().invoke(check_command, ["sofmax"])
    assert unknown.exit_code == 1 and "Did you mean: softmax" in unknown.output
