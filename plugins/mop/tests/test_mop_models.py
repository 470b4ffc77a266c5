"""mop.vit (closed-form extra parameters, gate maps) and mop.gpt (causality, bounded gates, cached
generation)."""
import pytest
import torch

from harness.registry import model as model_spec
from harness.specs import TaskMeta
from harness_mop.vit_mop import extra_params

IMAGES = TaskMeta(input="image", num_classes=10, image_size=(16, 16), channels=3)
TOKENS = TaskMeta(input="tokens", vocab_size=40, max_len=24, causal=True)


def _count(m):
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def _build(name, meta, **config):
    torch.manual_seed(0)
    return model_spec(name).load()(meta, **config)


@pytest.mark.parametrize("dim,views,kernels", [(64, 5, 3), (48, 3, 6), (32, 2, 2)])
def test_vit_mop_extra_params_match_the_closed_form(dim, views, kernels):
    base = _build("vit", IMAGES, mixer="softmax", dim=dim, depth=2, heads=4, patch=4)
    mop = _build("mop.vit", IMAGES, mixer="softmax", dim=dim, depth=2, heads=4, patch=4, views=views, kernels=kernels)
    hid = max(8, views + kernels)
    closed = views * dim + 9 * views * 16 + 16 * kernels + (views + kernels) * hid + 2 * hid + 2 + 2
    assert extra_params(dim, views, kernels) == closed
    assert _count(mop) - _count(base) == closed


def test_vit_mop_seed_figure():
    assert extra_params(224, 5, 3) == 1972                     # SEEDS 1.2: V*D + 720 + 48 + 64 + 18 + 2


def test_vit_mop_forward_and_gate_maps():
    m = _build("mop.vit", IMAGES, mixer="mop.crossview", dim=32, depth=1, heads=4, patch=4)
    images = torch.randn(2, 3, 16, 16)
    assert m(images).shape == (2, 10)
    gate, views, kernels = m.get_gate_maps(images)
    assert gate.shape == (2, 1, 4, 4) and views.shape == (2, 5, 4, 4) and kernels.shape == (2, 3, 4, 4)
    a = torch.nn.functional.softplus(m.mop.alpha_pos)
    b = torch.nn.functional.softplus(m.mop.alpha_neg)
    assert (gate >= 1 - b).all() and (gate <= 1 + a).all()


def test_vit_mop_gate_scales_each_patch_before_pooling():
    m = _build("mop.vit", IMAGES, mixer="softmax", dim=32, depth=1, heads=4, patch=4).double()
    images = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    x = m.features(images)
    gate = m.get_gate_maps(images)[0].flatten(2).transpose(1, 2)       # (B, N, 1)
    assert torch.allclose(m(images), m.head((x * gate).mean(1)))


@pytest.mark.parametrize("mixer", ["mop.quartet", "softmax", "mop.edgewise"])
def test_gpt_mop_is_causal(mixer):
    m = _build("mop.gpt", TOKENS, mixer=mixer, dim=32, depth=2, heads=4).double().eval()
    tokens = torch.randint(0, 40, (2, 24))
    logits = m(tokens)
    assert logits.shape == (2, 24, 40)
    for t in (0, 7, 22):
        other = tokens.clone()
        other[:, t + 1 :] = torch.randint(0, 40, (2, 23 - t))
        assert (m(other)[:, : t + 1] - logits[:, : t + 1]).abs().max() < 1e-9, t


def test_gpt_mop_ignores_left_padding():
    m = _build("mop.gpt", TOKENS, dim=32, depth=2, heads=4).double().eval()
    tokens = torch.randint(0, 40, (2, 24))
    pad = torch.ones(2, 24, dtype=torch.bool)
    pad[:, :5] = False
    other = tokens.clone()
    other[:, :5] = torch.randint(0, 40, (2, 5))
    assert (m(tokens, pad)[:, 5:] - m(other, pad)[:, 5:]).abs().max() < 1e-9


def test_gpt_mop_gates_are_bounded_and_start_near_one():
    m = _build("mop.gpt", TOKENS, dim=32, depth=1, heads=4)
    gate = m.blocks[0].gate
    with torch.no_grad():
        gate.alpha_pos.fill_(3.0)
        gate.alpha_neg.fill_(8.0)                                   # a_neg = sigmoid(8) < 1
        gate.fuse.weight.mul_(100.0)
        x = torch.randn(4, 24, 32).sign() * (1 + torch.rand(4, 24, 32))    # away from 0: gate = y / x
        ratio = gate(x)[0] / x
    assert (ratio > 0).all() and (ratio <= 1 + torch.nn.functional.softplus(torch.tensor(3.0)) + 1e-5).all()
    fresh = _build("mop.gpt", TOKENS, dim=32, depth=1, heads=4).blocks[0].gate
    x = torch.randn(4, 24, 32)
    assert ((fresh(x)[0] / x - 1).abs() < 0.1).all()


def test_gpt_mop_cached_generation_matches_uncached():
    m = _build("mop.gpt", TOKENS, dim=32, depth=2, heads=4).eval()
    assert m.supports_kv_cache
    prompt = torch.randint(0, 40, (2, 5))
    cached = m.generate(prompt, 10, top_k=1)
    out = prompt
    with torch.no_grad():
        for _ in range(10):
            out = torch.cat([out, m(out)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(cached, out)


def test_gpt_mop_generates_without_cache_for_cacheless_mixers():
    m = _build("mop.gpt", TOKENS, mixer="mop.multihop", dim=32, depth=1, heads=4).eval()
    assert not m.supports_kv_cache
    assert m.generate(torch.randint(0, 40, (1, 4)), 6, top_k=1).shape == (1, 10)


@pytest.mark.parametrize("name,meta,mixer", [("mop.vit", IMAGES, "mop.edgewise"), ("mop.gpt", TOKENS, "mop.quartet")])
def test_models_count_on_the_meta_device(name, meta, mixer):
    from harness.budget import count_on_meta

    build = lambda: model_spec(name).load()(meta, mixer=mixer, dim=32, depth=2, heads=4)   # noqa: E731
    assert count_on_meta(build).total == _count(build())
