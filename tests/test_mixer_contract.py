"""check_mixer over every registered mixer (installed plugins included), and proof that each check
catches the bug it exists for."""
import re

import pytest
import torch
from torch import nn

from harness import MixerSpec, hookimpl
from harness.nn.softmax import SoftmaxAttention
from harness.registry import get_registries
from harness.testing import check_mixer, temporary_plugin


@pytest.mark.parametrize("name", get_registries().mixers.names())
def test_registered_mixer_honours_contract(name):
    check_mixer(name)


class _Base(nn.Module):
    def __init__(self, dim, *, heads, ctx, **options):
        super().__init__()
        self.causal = ctx.causal
        self.proj = nn.Linear(dim, dim)


class FutureLeak(_Base):
    """Claims causal_ok, but every token sees the mean of all real tokens (as Quartet's std did)."""

    def forward(self, x, pad=None):
        from harness.nn import masked_mean
        return self.proj(x + masked_mean(x, pad)[:, None])


class PaddingLeak(_Base):
    """Causal prefix mean that ignores the padding mask."""

    def forward(self, x, pad=None):
        t = x.shape[1]
        m = torch.ones(t, t, dtype=x.dtype).tril() if self.causal else torch.ones(t, t, dtype=x.dtype)
        return self.proj((m / m.sum(-1, keepdim=True)) @ x)


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


class BrokenMixers:
    @hookimpl
    def register_mixers(register):
        for name, cls in [("broken.future", FutureLeak), ("broken.padding", PaddingLeak),
                          ("broken.identity", Identity), ("broken.dead_router", DeadRouter)]:
            register(MixerSpec(name, cls, causal_ok=True, padding_ok=True))
        register(MixerSpec("broken.kv_cache", ForgetfulCache, kv_cache=True))


@pytest.fixture(scope="module", autouse=False)
def broken():
    with temporary_plugin(BrokenMixers, name="broken"):
        yield


@pytest.mark.parametrize("name, prop", [
    ("broken.future", "causal leak"),
    ("broken.padding", "padding leak"),
    ("broken.identity", "token mixing"),
    ("broken.dead_router", "parameter gradients"),
    ("broken.kv_cache", "kv cache"),
])
def test_broken_mixer_is_caught(broken, name, prop):
    with pytest.raises(AssertionError, match=prop) as err:
        check_mixer(name)
    # names the measured deviation, or the parameter that got no gradient
    assert re.search(r"\d\.\d{3}e[+-]\d\d", str(err.value)) or "'router." in str(err.value)


def test_failure_message_reports_deviation(broken):
    with pytest.raises(AssertionError) as err:
        check_mixer("broken.future")
    msg = str(err.value)
    assert msg.startswith("causal leak:") and "changed outputs" in msg


def test_capability_flags_decide_which_checks_apply(broken):
    class NotCausal:
        @hookimpl
        def register_mixers(register):
            register(MixerSpec("broken.future_noncausal", FutureLeak, causal_ok=False, padding_ok=False))

    with temporary_plugin(NotCausal, name="noncausal"):
        figures = check_mixer("broken.future_noncausal")
    assert "causal_leak" not in figures and "padding_leak" not in figures


def test_softmax_figures_are_exact():
    figures = check_mixer("softmax")
    assert figures["causal_leak"] == 0.0 and figures["padding_leak"] == 0.0
    assert figures["mixing"] > 1e-3 and figures["min_grad"] > 0
