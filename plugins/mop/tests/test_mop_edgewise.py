"""mop.edgewise: contract checks over the option combinations, gates-off equivalence, distinct
presets, the lens bank's token order and causality, and finiteness under masks."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from harness.nn.blocks import build_mixer
from harness.nn.context import SeqContext
from harness.nn.masks import attention_mask
from harness.testing import check_mixer
from harness_mop._common import ViewLogSumExp, chain_products
from harness_mop.gate_heads import PRESETS
from harness_mop.lens import LensBank

MODES = ("lowrank", "dense")
COMBOS = [
    {},
    {"gate_mode": "dense"},
    {"gate_mode": "dense", "use_k3": False},
    {"share_qkv": False},
    {"share_qkv": False, "gate_mode": "dense", "views": 3},
    {"lens_bank": True},
    {"lens_bank": True, "gate_mode": "dense", "views": 2},
    {"lens_bank": True, "share_qkv": False, "views": 2, "lens_dilations": (1, 3)},
    {"gate_rank": 2, "views": 2},
]


@pytest.mark.parametrize("options", COMBOS, ids=str)
def test_contract(options):
    figures = check_mixer("mop.edgewise", **options)
    assert figures["causal_leak"] == 0.0 and figures["padding_leak"] == 0.0


@pytest.mark.parametrize("preset,mode", list(itertools.product([p for p in PRESETS if p != "neutral"], MODES)))
def test_contract_presets(preset, mode):
    check_mixer("mop.edgewise", gate_init=preset, gate_mode=mode)


def _build(causal=False, t=16, dtype=torch.float64, **options):
    torch.manual_seed(0)
    m = build_mixer("mop.edgewise", 32, heads=4, ctx=SeqContext(max_len=t, causal=causal, grid=(4, 4)), **options)
    return m.to(dtype)


def _pad(b=2, t=16):
    pad = torch.ones(b, t, dtype=torch.bool)
    pad[0, -3:] = False
    pad[1, :4] = False
    return pad


def _plain_view1(m, x, pad, causal):
    """Softmax attention with view 1's q, k, v, built from the mixer's weights by hand."""
    B, T, D = x.shape
    H = m.heads
    u = m.qkv(x)
    if m.share:
        q, k, v = u.view(B, T, 3, H, -1).permute(2, 0, 3, 1, 4)
        q, v = q * m.qk_scale[:, 0], v * m.v_scale[:, 0]
    else:
        w = u.view(B, T, 2 * m.views + 2, H, -1).permute(2, 0, 3, 1, 4)
        q, k, v = w[0], w[m.views], w[2 * m.views]
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask(pad, causal, T))
    return m.proj(y.transpose(1, 2).reshape(B, T, D))


@pytest.mark.parametrize("options", [{}, {"gate_mode": "dense"}, {"share_qkv": False}, {"lens_bank": True},
                                     {"gate_init": "mix5", "gate_mode": "dense"}], ids=str)
@pytest.mark.parametrize("causal,padded", [(False, False), (False, True), (True, False), (True, True)])
def test_gates_forced_to_zero_is_plain_attention_on_view_1(options, causal, padded):
    m = _build(causal, dtype=torch.float32, **options)
    m.gate_head.forward = lambda inp: torch.zeros(*inp.log_f.shape[:2], 4, *inp.log_f.shape[2:])
    x = torch.randn(2, 16, 32)
    pad = _pad() if padded else None
    got, want = m(x, pad), _plain_view1(m, x, pad, causal)
    assert (got - want).abs().max() < 1e-5


@pytest.mark.parametrize("mode", MODES)
def test_neutral_starts_near_plain_attention(mode):
    m = _build(gate_mode=mode)
    x = torch.randn(2, 16, 32, dtype=torch.float64)
    y, plain = m(x), _plain_view1(m, x, None, False)
    assert (y - plain).abs().max() < 0.05 * plain.abs().max()


@pytest.mark.parametrize("mode", MODES)
def test_initial_gates_follow_the_preset(mode):
    x = torch.randn(2, 16, 32, dtype=torch.float64)
    for preset, (logits, _) in PRESETS.items():
        m = _build(gate_mode=mode, gate_init=preset)
        got = {}
        m.gate_head.register_forward_hook(lambda mod, inp, out: got.setdefault("g", out))
        m(x)
        means = got["g"].mean(dim=(0, 1, 3, 4))
        assert torch.allclose(means, torch.sigmoid(torch.tensor(logits, dtype=torch.float64)), atol=0.03), preset


@pytest.mark.parametrize("mode", MODES)
def test_presets_really_differ(mode):
    x = torch.randn(2, 16, 32, dtype=torch.float64)
    outs = {p: _build(gate_mode=mode, gate_init=p)(x) for p in PRESETS}
    scale = outs["neutral"].abs().max()
    for p, q in itertools.combinations(PRESETS, 2):
        assert (outs[p] - outs[q]).abs().max() > 0.02 * scale, (p, q)


def test_lens_bank_filters_along_tokens_per_channel():
    torch.manual_seed(0)
    for causal in (False, True):
        lens = LensBank(4, (1, 2), causal).double()
        q, k = torch.randn(2, 2, 3, 10, 4, dtype=torch.float64).unbind(0)     # (B, H, T, Dh)
        ql, kl = lens(q, k)
        for s, (src, out) in enumerate([(q, ql), (k, kl)]):
            for l, d in enumerate((1, 2)):
                offs = (-2 * d, -d, 0) if causal else (-d, 0, d)
                want = torch.zeros_like(src)
                for tap, off in enumerate(offs):
                    shifted = torch.zeros_like(src)                            # token t reads token t + off
                    lo, hi = max(0, -off), min(10, 10 - off)
                    shifted[:, :, lo:hi] = src[:, :, lo + off : hi + off]
                    want += lens.taps[s, l, :, tap] * shifted
                assert torch.allclose(out[:, :, l], want, atol=1e-12), (causal, s, d)


def test_lens_bank_changes_the_output():
    x = torch.randn(2, 16, 32, dtype=torch.float64)
    assert (_build(lens_bank=True)(x) - _build()(x)).abs().max() > 1e-3


def test_chain_products_match_sequential_products():
    a = torch.rand(2, 3, 5, 6, 6, dtype=torch.float64)
    fwd, bwd = chain_products(a, 2)
    maps = a.unbind(2)
    want_f, want_b = maps[0], maps[4]
    for i in range(1, 5):
        want_f, want_b = want_f @ maps[i], want_b @ maps[4 - i]
    assert torch.allclose(fwd, want_f) and torch.allclose(bwd, want_b)


@pytest.mark.parametrize("masked", [False, True])
def test_view_logsumexp_is_lse_over_views_minus_view_1(masked):
    """Read off the row softmaxes, LSE_i S_i - S_1 equals torch.logsumexp over the view axis on
    every visible entry, and its hand-written gradient passes gradcheck (float64)."""
    torch.manual_seed(0)
    s = (3 * torch.randn(2, 2, 4, 6, 6, dtype=torch.float64)).requires_grad_()
    keep = torch.ones(6, 6, dtype=torch.bool).tril() if masked else torch.ones(6, 6, dtype=torch.bool)

    def orr(s):
        vis = s.masked_fill(~keep, float("-inf"))
        return ViewLogSumExp.apply(s, vis.softmax(-1).detach(), vis.logsumexp(-1).detach())

    got = orr(s)
    want = torch.logsumexp(s, 2) - s[:, :, 0]
    assert torch.allclose(got[..., keep], want[..., keep], atol=1e-12)
    assert torch.isfinite(got).all()
    # The mixer masks the entries a masked key feeds, so no gradient ever arrives there.
    assert torch.autograd.gradcheck(lambda s: orr(s).masked_fill(~keep, 0.0), (s,))


def test_view_logsumexp_stays_finite_where_every_view_underflows():
    """Scores hundreds of nats apart: some visible entries have A_i = 0 in every view (float32).
    Value and gradient stay finite even under a large upstream gradient there."""
    torch.manual_seed(0)
    s = (300 * torch.randn(2, 2, 5, 8, 8)).requires_grad_()
    a = s.softmax(-1)
    assert ((a == 0).all(2)).any()                             # the case under test occurs
    out = ViewLogSumExp.apply(s, a.detach(), s.logsumexp(-1).detach())
    (out * 1e3).sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("options", [{}, {"gate_mode": "dense"}, {"lens_bank": True, "share_qkv": False}], ids=str)
def test_no_nan_in_float32_under_any_mask(options):
    for causal in (False, True):
        m = _build(causal, dtype=torch.float32, **options)
        pad = _pad()
        pad[0, 1:] = False                                     # a sample with a single real token
        x = torch.randn(2, 16, 32, requires_grad=True)
        y = m(x, pad)
        (y * torch.randn_like(y)).sum().backward()
        assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_gate_statistics_are_reported_without_sync():
    from harness.nn.aux import collect_aux

    m = _build()
    m(torch.randn(2, 16, 32, dtype=torch.float64))
    _, stats = collect_aux(m)
    assert set(stats) == {"gate_and", "gate_or", "gate_not", "gate_chain"}
    assert all(isinstance(v, torch.Tensor) for v in stats.values())


def _expect_leak(kind, **options):
    with pytest.raises(AssertionError, match=kind):
        check_mixer("mop.edgewise", checks=("causal", "padding"), **options)


def test_each_leak_guard_is_needed(monkeypatch):
    """Remove one guard at a time: check_mixer must then catch a leak (so the guards are not
    decoration and the contract test above is not vacuous)."""
    import harness_mop.edgewise as ew
    import harness_mop.gate_heads as gh

    real_pairs = ew.real_pairs
    with monkeypatch.context() as m:   # the dense 3x3 also looks at row i+1, a later query
        forward = gh.DenseGateHead.forward
        m.setattr(gh.DenseGateHead, "forward", lambda self, inp: (setattr(self, "causal", False), forward(self, inp))[1])
        _expect_leak("causal leak", gate_mode="dense")
    with monkeypatch.context() as m:   # features not zeroed outside keep
        m.setattr(ew, "GateInputs", lambda s, r, c, lf, lb, keep, cols: gh.GateInputs(s, r, c, lf, lb, None, cols))
        _expect_leak("padding leak", gate_mode="dense")
    with monkeypatch.context() as m:   # low-rank column means over every query, later ones included
        m.setattr(ew, "real_pairs", lambda pad, causal, t, dev, upper=False: real_pairs(pad, causal and not upper, t, dev))
        _expect_leak("causal leak")
    with monkeypatch.context() as m:   # a padded query's diagonal kept in the features
        m.setattr(ew, "real_pairs", lambda pad, causal, t, dev, upper=False:
                  ew.score_mask(pad, causal, t, dev) if not upper else real_pairs(pad, causal, t, dev, upper))
        _expect_leak("padding leak", gate_mode="dense")
