"""Contract checks and reference equivalences for mop.crossview, mop.multihop and mop.quartet."""
import pytest
import torch

from harness.nn.blocks import build_mixer
from harness.nn.context import SeqContext
from harness.nn.masks import attention_mask
from harness.testing import check_mixer

CONTRACT = [
    ("mop.crossview", {}),
    ("mop.crossview", {"t1": 0.2, "t2": 0.2}),
    ("mop.crossview", {"learn_transpose": True}),
    ("mop.crossview", {"prior": True}),
    ("mop.crossview", {"prior": True, "anchor": "fixed", "fixed_k_star": 5}),
    ("mop.crossview", {"prior": True, "t1": 0.3, "t2": -0.1}),
    ("mop.multihop", {}),
    ("mop.multihop", {"hops": 2}),
    ("mop.multihop", {"hops": 1, "learn_gates": True}),
    ("mop.multihop", {"hops": 4, "learn_gates": True, "gate_or": 0.5, "gate_not": 0.5}),
    ("mop.quartet", {}),
    ("mop.quartet", {"mixture_init": 0.0}),
]


@pytest.mark.parametrize("name,options", CONTRACT, ids=[f"{n}-{o}" for n, o in CONTRACT])
def test_contract(name, options):
    figures = check_mixer(name, **options)
    assert figures["causal_leak"] == 0.0 and figures["padding_leak"] == 0.0


def _build(name, causal=False, t=16, dim=32, heads=4, **options):
    torch.manual_seed(0)
    return build_mixer(name, dim, heads=heads, ctx=SeqContext(max_len=t, causal=causal), **options).double()


def _pad(b=2, t=16):
    pad = torch.ones(b, t, dtype=torch.bool)
    pad[0, -3:] = False
    pad[1, :4] = False
    return pad


def _heads(u, n, heads):
    b, t, _ = u.shape
    return u.view(b, t, n, heads, -1).permute(2, 0, 3, 1, 4)          # (n, B, H, T, Dh)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("sdpa", [False, True], ids=["bmm", "sdpa"])
def test_crossview_fast_path_is_the_bilinear_form(causal, padded, sdpa):
    """Both fast paths (two batched matmuls on CPU, SDPA elsewhere) against the four-map formula."""
    m = _build("mop.crossview", causal)
    m.sdpa_on_cpu = sdpa
    with torch.no_grad():
        m.mix.copy_(torch.tensor([[0.9, 0.3], [-0.2, 1.1]]))
    x = torch.randn(2, 16, 32, dtype=torch.float64)
    pad = _pad() if padded else None
    q1, q2, k1, k2, v1 = _heads(m.qkv(x), 5, 4)
    M = m.mix
    s = (M[0, 0] * q1 @ k1.transpose(-1, -2) + M[0, 1] * q1 @ k2.transpose(-1, -2)
         + M[1, 0] * q2 @ k1.transpose(-1, -2) + M[1, 1] * q2 @ k2.transpose(-1, -2)) / 8 ** 0.5
    mask = attention_mask(pad, causal, 16)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    want = m.proj((s.softmax(-1) @ v1).transpose(1, 2).reshape(2, 16, 32))
    assert torch.allclose(m(x, pad), want, atol=1e-12)


def test_crossview_colmass_anchor_is_not_always_row_zero():
    m = _build("mop.crossview", prior=True)
    x = torch.randn(8, 16, 32, dtype=torch.float64)
    q1, q2, k1, k2, v1 = _heads(m.qkv(x), 5, 4)
    a2 = (q2 @ k2.transpose(-1, -2) / 8 ** 0.5).softmax(-1)
    idx = m._anchor(a2, None)
    assert idx.shape == (8, 4, 1)
    assert (idx != 0).any() and idx.unique().numel() > 1
    assert torch.equal(idx[..., 0], a2.sum(-2).argmax(-1))            # the key with most column mass


def test_crossview_causal_anchor_stays_in_the_past():
    m = _build("mop.crossview", causal=True, prior=True)
    a2 = torch.rand(2, 4, 16, 16, dtype=torch.float64).tril()
    a2 = a2 / a2.sum(-1, keepdim=True)
    idx = m._anchor(a2, None)
    assert (idx <= torch.arange(16)).all()


@pytest.mark.parametrize("hops", [1, 2, 3, 4])
def test_multihop_matches_a_loop_reference(hops):
    m = _build("mop.multihop", hops=hops, learn_gates=True, gate_or=0.3, gate_not=0.4)
    x = torch.randn(2, 16, 32, dtype=torch.float64)
    q1, q2, k1, k2, v1, v2 = _heads(m.qkv(x), 6, 4)
    s1, s2 = q1 @ k1.transpose(-1, -2) / 8 ** 0.5, q2 @ k2.transpose(-1, -2) / 8 ** 0.5
    a1, a2 = s1.softmax(-1), s2.softmax(-1)
    c, t = a1, v2
    for _ in range(hops - 1):                    # the reference's hop loop, here only as the oracle
        c = c @ a2
        t = a2 @ t
    g = m.gates
    smix = (s1 + g[0] * s2 + g[1] * (torch.logaddexp(s1, s2) - s1) - g[2] * 0.5 * s2
            + g[3] * torch.log(c + 1e-6))
    y = smix.softmax(-1) @ v1 + torch.sigmoid(m.chain_value_logit) * (a1 @ t)
    want = m.proj(y.transpose(1, 2).reshape(2, 16, 32))
    assert torch.allclose(m(x), want, atol=1e-10)


def test_quartet_standardises_over_visible_keys_only():
    m = _build("mop.quartet", causal=True, mixture_init=0.5)
    x = torch.randn(2, 16, 32, dtype=torch.float64)
    q, q2, k, k2, v = _heads(m.qkv(x), 5, 4)
    out = torch.zeros(2, 4, 16, 8, dtype=torch.float64)
    mix = torch.sigmoid(m.mixture)
    for i in range(16):                          # one query row at a time, over keys 0..i
        s = q[:, :, i : i + 1] @ k[:, :, : i + 1].transpose(-1, -2) / 8 ** 0.5
        s2 = q2[:, :, i : i + 1] @ k2[:, :, : i + 1].transpose(-1, -2) / 8 ** 0.5
        z = lambda a: (a - a.mean(-1, keepdim=True)) / (a.var(-1, unbiased=False, keepdim=True) + 1e-10).sqrt()
        sc = (1 - mix) * z(s) + mix * m.quartet_scale * z(s) * z(s2)
        out[:, :, i] = (sc.softmax(-1) @ v[:, :, : i + 1])[:, :, 0]
    want = m.proj(out.transpose(1, 2).reshape(2, 16, 32))
    assert torch.allclose(m(x), want, atol=1e-10)


def test_quartet_kv_cache_matches_full_forward():
    m = _build("mop.quartet", causal=True, mixture_init=0.0)
    x = torch.randn(2, 16, 32, dtype=torch.float64)
    full = m(x)
    cache = {}
    steps = [m.forward_cached(x[:, :5], cache)] + [m.forward_cached(x[:, t : t + 1], cache) for t in range(5, 16)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-12)


def test_mixers_stay_finite_in_float32_under_masks():
    x = torch.randn(2, 16, 32)
    for name, options in CONTRACT:
        for causal in (False, True):
            torch.manual_seed(0)
            m = build_mixer(name, 32, heads=4, ctx=SeqContext(max_len=16, causal=causal), **options)
            xx = x.clone().requires_grad_(True)
            y = m(xx, _pad())
            y.square().sum().backward()
            assert torch.isfinite(y).all() and torch.isfinite(xx.grad).all(), (name, options, causal)



def test_quartet_reference_statistics_leak_is_caught(monkeypatch):
    """The reference's z-score over all keys (SEEDS 1.9 bug 1) fails the causal check."""
    import harness_mop.quartet as quartet

    standardise = quartet.standardise
    monkeypatch.setattr(quartet, "standardise", lambda s, mask, eps: standardise(s, None, eps))
    with pytest.raises(AssertionError, match="causal leak"):
        check_mixer("mop.quartet", checks=("causal",))
