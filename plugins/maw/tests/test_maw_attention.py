"""maw: the mixer contract with every router, agreement with a naive per-depth reference (outputs and
gradients, on each of the three compute paths), one SDPA call whatever D (no loop over depth),
FLOPs that count every depth map, exact zeros for padded keys, and no host syncs in forward."""
import math

import pytest
import torch
import torch.nn.functional as F

from harness.nn import SeqContext, collect_aux
from harness.nn.aux import probing
from harness.nn.blocks import build_mixer
from harness.profiling import flops_of
from harness.testing import check_mixer

torch.set_num_threads(1)

ROUTERS = ("maw.soft", "maw.supervised", "maw.grpo")


@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("options", [{}, {"per_head": True, "depths": 3}])
def test_contract(router, options):
    # check_mixer builds every length bidirectional and causal, checks padding leaks and truncation
    # with left and right padding, gradients for every parameter (routers included), reach, mixing,
    # determinism and batch independence (gradcheck is skipped: surrogate_gradients).
    figures = check_mixer("maw", router=router, **options)
    assert figures["causal_leak"] == 0.0 and figures["padding_leak"] == 0.0
    assert figures["truncation"] < 1e-12


def _build(causal=False, T=12, dim=32, H=4, seed=0, **options):
    torch.manual_seed(seed)
    return build_mixer("maw", dim, heads=H, ctx=SeqContext(max_len=T, causal=causal), **options)


def naive(m, x, pad, weights):
    """sum_d w_d softmax(q_d k_d^T / sqrt(Dq) + mask) v, one explicit map per depth (a Python loop)."""
    B, T, dim = x.shape
    H, D, Dq, Dh = m.heads, m.depths, m.depth_dim, m.head_dim
    q, k, v = m.qkv(x).split([H * D * Dq, H * D * Dq, dim], -1)
    q, k, v = q.view(B, T, H, D, Dq), k.view(B, T, H, D, Dq), v.view(B, T, H, Dh)
    allowed = torch.ones(T, T, dtype=torch.bool)
    if m.causal:
        allowed = allowed.tril()
    allowed = allowed.expand(B, 1, T, T)
    if pad is not None:
        allowed = allowed & pad[:, None, None, :]
    allowed = allowed | torch.eye(T, dtype=torch.bool)
    out = 0
    for d in range(D):
        scores = torch.einsum("bthe,bshe->bhts", q[..., d, :], k[..., d, :]) / math.sqrt(Dq)
        maps = F.softmax(scores.masked_fill(~allowed, float("-inf")), -1)             # rows sum to 1
        o = torch.einsum("bhts,bshc->bthc", maps, v)
        out = out + o * weights[..., d].expand(B, T, H)[..., None]
    return m.proj(out.reshape(B, T, dim))


def _grads(m, y, x, weight):
    m.zero_grad(set_to_none=True)
    x.grad = None
    losses, _ = collect_aux(m)
    ((y * weight).sum() + sum(losses.values(), torch.zeros((), dtype=y.dtype))).backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    return grads, x.grad.clone()


@pytest.mark.parametrize("router, options, causal", [
    ("maw.soft", {}, False),                          # one-hot straight-through: chosen map + all maps no-grad
    ("maw.supervised", {"per_head": True}, False),
    ("maw.soft", {"router_options": {"hard": False}}, False),   # soft weights: every map under autograd
    ("maw.soft", {}, True),                           # causal: one route per position, every map
    ("maw.grpo", {"per_head": True}, False),          # no gradient through the weights: the chosen map only
    ("maw.grpo", {}, True),
    ("maw.grpo", {"bias": True, "depths": 3}, False),
    ("maw.supervised", {"bias": True}, False),
    # the chosen depth's q, k from gathered weight rows (the default for T >= dim / 2) rather than
    # from every depth's activations (the default here, T = 12 < 16)
    ("maw.soft", {"gather_rows": True}, False),
    ("maw.grpo", {"gather_rows": True, "bias": True, "per_head": True}, False),
    ("maw.supervised", {"gather_rows": True, "bias": True}, False),
])
def test_matches_naive_reference_outputs_and_gradients(router, options, causal):
    m = _build(causal=causal, router=router, **options).double().eval()
    B, T = 3, 12
    x = torch.randn(B, T, 32, dtype=torch.float64, requires_grad=True)
    pad = torch.ones(B, T, dtype=torch.bool)
    pad[0, 9:] = False
    pad[1, :4] = False
    weight = torch.randn(B, T, 32, dtype=torch.float64)
    y = m(x, pad)
    got, got_x = _grads(m, y, x, weight)
    weights, _ = m.router(*m.route_state(x, pad))
    expected_y = naive(m, x, pad, weights)
    want, want_x = _grads(m, expected_y, x, weight)
    torch.testing.assert_close(y, expected_y, rtol=1e-10, atol=1e-12)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-12, msg=name)
    torch.testing.assert_close(got_x, want_x, rtol=1e-9, atol=1e-12)


def test_soft_weights_pass_gradcheck():
    # The deterministic soft router (hard=False) has exact gradients: the depth machinery is checked
    # against finite differences (the registered name skips gradcheck for its surrogate routers).
    m = _build(T=6, dim=16, H=2, router_options={"hard": False}, depths=3).double().eval()
    x = torch.randn(2, 6, 16, dtype=torch.float64, requires_grad=True)
    pad = torch.ones(2, 6, dtype=torch.bool)
    pad[1, 4:] = False
    names = [n for n, _ in m.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in m.named_parameters())

    def f(x, *values):
        y = torch.func.functional_call(m, dict(zip(names, values)), (x, pad))
        collect_aux(m)
        return y

    assert torch.autograd.gradcheck(f, (x, *params), fast_mode=True)


@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("gather_rows", [False, True])
def test_eval_chosen_depth_gives_the_same_outputs_with_one_map(router, bias, gather_rows):
    m = _build(router=router, bias=bias, gather_rows=gather_rows).eval()
    x = torch.randn(2, 12, 32)
    pad = torch.ones(2, 12, dtype=torch.bool)
    pad[0, 8:] = False
    with torch.no_grad():
        full = m(x, pad)
        m.eval_chosen_depth = True
        lean = m(x, pad)
    torch.testing.assert_close(lean, full, rtol=1e-5, atol=1e-6)


def _count_sdpa(monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def counting(q, k, v, **kw):
        calls.append(tuple(q.shape))
        return real(q, k, v, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    return calls


@pytest.mark.parametrize("depths", [2, 8])
def test_one_sdpa_call_over_every_depth(monkeypatch, depths):
    calls = _count_sdpa(monkeypatch)
    B, T, H = 2, 12, 4
    x = torch.randn(B, T, 32)
    for causal in (False, True):
        m = _build(causal=causal, depths=depths).train()
        calls.clear()
        with torch.no_grad():
            m(x)
        assert calls == [(B, H * depths, T, 8)]                      # the depth axis is a batch axis
    m = _build(depths=depths).train()
    calls.clear()
    m(x).sum().backward()                                            # straight-through: chosen + all
    assert calls == [(B, H, T, 8), (B, H * depths, T, 8)]
    m = _build(depths=depths, router="maw.grpo").train()
    calls.clear()
    m(x).sum().backward()                                            # no gradient through the weights
    assert calls == [(B, H, T, 8)]


@pytest.mark.parametrize("gather_rows", [True, False])
def test_flops_count_every_depth_map(gather_rows):
    B, T, dim, H, D = 2, 16, 32, 4, 4
    m = _build(T=T, depths=D, gather_rows=gather_rows).eval()
    x = torch.randn(B, T, dim)
    with torch.no_grad():                                            # as harness bench counts them
        flops = flops_of(lambda: m(x))
    projections = 2 * B * T * dim * (2 * H * D * (dim // H) + dim) + 2 * B * T * dim * dim
    maps = 4 * B * H * D * T * T * (dim // H)                        # q k^T and A v for each of the D maps
    router = 2 * B * (dim * m.router.net[0].out_features + m.router.net[0].out_features * D)
    assert flops == projections + maps + router
    # a training forward of the straight-through router runs the chosen map once more, under
    # autograd (and one backward of it instead of D), and with gather_rows the chosen depth's
    # projection rows too (whose backward then replaces the full projection's)
    rows = 2 * B * T * dim * 2 * dim if gather_rows else 0
    assert flops_of(lambda: m.train()(x)) == flops + maps // D + rows
    # grpo (no gradient through its weights) attends with the chosen depth only; with gather_rows
    # it also projects only that depth: softmax attention's FLOPs plus the router's
    g = _build(T=T, depths=D, router="maw.grpo", gather_rows=gather_rows)
    softmax = 2 * B * T * dim * 4 * dim + 4 * B * H * T * T * (dim // H)
    for mode in (True, False):
        g.train(mode)
        assert flops_of(lambda: g(x)) == (softmax if gather_rows else projections + maps // D) + router


@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("causal", [False, True])
def test_padded_keys_get_exactly_zero_weight(router, causal):
    m = _build(causal=causal, router=router).train()
    x = torch.randn(2, 12, 32)
    pad = torch.ones(2, 12, dtype=torch.bool)
    pad[0, 7:] = False
    pad[1, :3] = False
    x2 = torch.where(pad[..., None], x, 1e3 * torch.randn_like(x))
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            torch.manual_seed(1)
            y = m(x, pad)
            torch.manual_seed(1)                                     # the same Gumbel noise
            y2 = m(x2, pad)
        assert torch.equal(y[pad], y2[pad])


def test_forward_has_no_host_sync(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("host sync in forward")

    x = torch.randn(2, 12, 32)
    pad = torch.ones(2, 12, dtype=torch.bool)
    pad[0, 9:] = False
    modules = [_build(router=r, causal=c, per_head=p) for r in ROUTERS for c in (False, True) for p in (False, True)]
    monkeypatch.setattr(torch.Tensor, "item", fail)
    monkeypatch.setattr(torch.Tensor, "tolist", fail)
    for m in modules:
        m.train()
        y = m(x, pad)
        losses, _ = collect_aux(m)
        (y.sum() + sum(losses.values(), torch.zeros(()))).backward()
        with torch.no_grad(), probing(1):
            m(x, pad)


def test_options_are_checked():
    with pytest.raises(ValueError, match="divisible"):
        _build(dim=30)
    with pytest.raises(ValueError, match="depths"):
        _build(depths=1)
    from harness.registry import UnknownNameError

    with pytest.raises(UnknownNameError, match="maw.router"):
        _build(router="maw.sofft")


def test_depth_dim_other_than_head_width():
    check_mixer("maw", depth_dim=4, depths=2, checks=("shape", "gradients", "causal", "padding", "truncation"))


@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("causal", [False, True])
def test_bf16_autocast(router, causal):
    # under autocast the projections are bf16 while the router's softmax is fp32 (SDPA needs one dtype)
    m = _build(causal=causal, router=router).train()
    x = torch.randn(2, 12, 32, requires_grad=True)
    pad = torch.ones(2, 12, dtype=torch.bool)
    pad[0, 8:] = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x, pad)
        losses, _ = collect_aux(m)
    (y.float().square().mean() + sum(losses.values(), torch.zeros(()))).backward()
    assert y.dtype == torch.bfloat16 and torch.isfinite(x.grad).all()
