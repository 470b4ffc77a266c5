"""poh.heads / poh.heads_topk: the mixer contract (bidirectional, causal, padded), router gradients
in both routing modes, the straight-through top-k's forward value, the H-scaling fix and no host
syncs in forward."""
import pytest
import torch

from harness.nn import SeqContext, collect_aux
from harness.nn.blocks import build_mixer
from harness.nn.softmax import SoftmaxAttention
from harness.testing import check_mixer
from harness_poh.routing import gumbel_topk_route, soft_route

torch.set_num_threads(1)


@pytest.mark.parametrize("name, options", [
    ("poh.heads", {}),
    ("poh.heads", {"router": "hrm", "hrm_period": 3}),
    ("poh.heads", {"bias": True, "temperature": 0.5}),
    ("poh.heads_topk", {}),
    ("poh.heads_topk", {"router": "hrm", "topk": 1}),
])
def test_contract(name, options):
    # check_mixer builds every length bidirectional and causal (causal_ok), and checks padding
    # leaks and truncation with left and right padding (padding_ok); gradcheck for poh.heads only.
    figures = check_mixer(name, **options)
    assert figures["causal_leak"] == 0.0 and figures["padding_leak"] == 0.0


def _build(name, causal=False, T=12, D=32, H=4, **options):
    torch.manual_seed(0)
    return build_mixer(name, D, heads=H, ctx=SeqContext(max_len=T, causal=causal), **options)


@pytest.mark.parametrize("name, options", [
    ("poh.heads", {}), ("poh.heads_topk", {}), ("poh.heads_topk", {"topk": 1}),
    ("poh.heads", {"router": "hrm"}), ("poh.heads_topk", {"router": "hrm"}),
])
@pytest.mark.parametrize("train", [True, False])
def test_router_gets_gradients(name, options, train):
    m = _build(name, causal=True, **options).train(train)
    x = torch.randn(3, 12, 32)
    y = m(x)
    collect_aux(m)
    (y * torch.randn_like(y)).sum().backward()
    router = dict(m.router.named_parameters())
    assert router
    for pname, p in router.items():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, pname
    # a head's gain learns wherever the head is used: every token under soft routing, the
    # selected tokens under top-k
    gain_grad = m.head_gain.grad.abs()
    assert (gain_grad.min() if name == "poh.heads" else gain_grad.max()) > 0


def test_topk_forward_is_exactly_k_hot_and_backward_is_soft():
    logits = torch.randn(4, 7, 6, requires_grad=True)
    for noise in (False, True):
        w = gumbel_topk_route(logits, 2, temperature=1.0, noise=noise)
        assert ((w > 0).sum(-1) == 2).all()
        assert set(w.detach().unique().tolist()) == {0.0, 0.5}
        assert torch.equal(w.sum(-1), torch.ones(4, 7))
    w = gumbel_topk_route(logits, 2, temperature=1.0, noise=False)
    assert torch.equal(w > 0, torch.zeros_like(w, dtype=torch.bool).scatter(-1, logits.topk(2).indices, True))
    (w * torch.randn_like(w)).sum().backward()
    assert logits.grad.abs().min() > 0                              # straight-through: every logit learns


def test_soft_route_and_temperature():
    logits = torch.randn(2, 5, 4)
    w = soft_route(logits, 1.0)
    assert torch.allclose(w.sum(-1), torch.ones(2, 5)) and (w >= 0).all()
    assert soft_route(logits, 0.1).amax(-1).mean() > soft_route(logits, 10.0).amax(-1).mean()


def test_uniform_routing_is_plain_multi_head_attention():
    """SEEDS 2.10.4: the reference scaled each head by ~1/H; here uniform weights times H give
    exactly multi-head attention (gain 1), so poh.heads starts as a drop-in for softmax."""
    for causal in (False, True):
        m = _build("poh.heads", causal=causal).double().eval()
        torch.nn.init.zeros_(m.router.fc2.weight)                      # logits 0: w = 1/H everywhere
        ref = SoftmaxAttention(32, heads=4, ctx=SeqContext(max_len=12, causal=causal)).double().eval()
        ref.qkv.weight.data.copy_(m.qkv.weight)
        ref.proj.weight.data.copy_(m.proj.weight)
        x = torch.randn(2, 12, 32, dtype=torch.float64)
        pad = torch.ones(2, 12, dtype=torch.bool)
        pad[0, 9:] = False
        assert torch.allclose(m(x), ref(x), atol=1e-12, rtol=0)
        assert torch.allclose(m(x, pad)[pad], ref(x, pad)[pad], atol=1e-12, rtol=0)


def test_head_gain_and_routing_scale_each_head():
    """Zeroing one head's gain removes exactly that head's contribution."""
    m = _build("poh.heads", D=32, H=4).double().eval()
    x = torch.randn(2, 12, 32, dtype=torch.float64)
    with torch.no_grad():
        m.head_gain[1] = 0.0
        m.proj.weight[:, 8:16] += 1.0                                  # head 1's slice of the projection
        y1 = m(x)
        m.proj.weight[:, 8:16] -= 5.0
        y2 = m(x)
    assert torch.allclose(y1, y2, atol=1e-12, rtol=0)


def test_hrm_router_is_causal_and_skips_padding():
    from harness_poh.routing import HRMRouter

    torch.manual_seed(0)
    r = HRMRouter(16, 4, 8, period=3).double()
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    full = r(x)
    x2 = x.clone()
    x2[:, 6:] += 5.0
    assert torch.equal(r(x2)[:, :6], full[:, :6])                      # left to right: no future
    pad = torch.ones(2, 10, dtype=torch.bool)
    pad[0, :3] = False                                                 # left padding
    padded = r(x, pad)
    assert torch.allclose(padded[0, 3:], r(x[:1, 3:])[0], atol=1e-12, rtol=0)


def test_no_host_sync_in_forward(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("host sync (.item()/.tolist()) in forward")

    mixers = [_build("poh.heads", causal=True).train(), _build("poh.heads_topk").train(),
              _build("poh.heads", router="hrm").train()]
    x = torch.randn(2, 12, 32)
    pad = torch.ones(2, 12, dtype=torch.bool)
    pad[1, :4] = False
    monkeypatch.setattr(torch.Tensor, "item", refuse)
    monkeypatch.setattr(torch.Tensor, "tolist", refuse)
    for m in mixers:
        m(x, pad).sum().backward()
        collect_aux(m)


@pytest.mark.parametrize("bad, match", [({"router": "lstm"}, "router must be"), ({"temperature": 0.0}, "temperature"),
                                        ({"topk": 5}, "topk")])
def test_bad_options(bad, match):
    name = "poh.heads_topk" if "topk" in bad else "poh.heads"
    with pytest.raises(ValueError, match=match):
        _build(name, **bad)
