import pytest
import torch

from harness.budget import count_params
from harness.nn import collect_aux, report_loss, report_stat
from harness.nn.aux import mean_stats_by_name
from harness.nn.blocks import build_mixer
from harness.nn.context import SeqContext
from harness.registry import model
from harness.specs import TaskMeta

IMG = TaskMeta("image", num_classes=10, image_size=(32, 32), channels=3)
TOK = TaskMeta("tokens", vocab_size=37, max_len=24)


def vit_closed_form(dim, depth, mlp_ratio=4.0, patch=4, channels=3, n=64, classes=10):
    h = int(dim * mlp_ratio)
    return depth * (4 * dim * dim + 2 * dim * h + 4 * dim) + channels * patch * patch * dim + n * dim + 2 * dim + dim * classes


@pytest.mark.parametrize("dim, depth, ratio", [(64, 2, 4.0), (96, 3, 2.5), (224, 8, 4.0)])
def test_vit_param_count_closed_form(dim, depth, ratio):
    with torch.device("meta"):
        m = model("vit").load()(IMG, mixer="softmax", dim=dim, depth=depth, heads=4, mlp_ratio=ratio)
    assert count_params(m).total == vit_closed_form(dim, depth, ratio)
    assert count_params(m).non_embedding == vit_closed_form(dim, depth, ratio) - 64 * dim


def test_reference_5m_config_count():
    # SEEDS.md 1.6: the reference's CIFAR-100 5M baseline (dim 224, depth 8, heads 4) has 4,872,000 parameters.
    with torch.device("meta"):
        m = model("vit").load()(TaskMeta("image", num_classes=100, image_size=(32, 32)), mixer="softmax",
                                dim=224, depth=8, heads=4)
    assert count_params(m).total == vit_closed_form(224, 8, classes=100) == 4_872_000


def test_vit_forward_and_grid():
    m = model("vit").load()(IMG, mixer="softmax", dim=32, depth=1, heads=4, patch=8)
    assert m.grid == (4, 4)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_lm_kv_cache_matches_full_forward():
    torch.manual_seed(0)
    lm = model("lm").load()(TOK, mixer="softmax", dim=32, depth=2, heads=4).eval()
    tokens = torch.randint(0, 37, (2, 10))
    full = lm(tokens)                                            # (B, T, V)
    caches = [{} for _ in lm.blocks]
    steps = []
    for i, chunk in enumerate([tokens[:, :4], tokens[:, 4:5], tokens[:, 5:10]]):
        x = lm._embed(chunk, offset=sum(c.shape[1] for c in steps))
        for block, cache in zip(lm.blocks, caches):
            x = block.forward_cached(x, cache)
        steps.append(lm.head(lm.norm(x)))
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_lm_generate_is_deterministic_and_tied():
    lm = model("lm").load()(TOK, mixer="softmax", dim=32, depth=2, heads=4).eval()
    assert lm.head.weight is lm.tok_embed.weight
    prompt = torch.randint(0, 37, (2, 3))
    a = lm.generate(prompt, 8, generator=torch.Generator().manual_seed(1))
    b = lm.generate(prompt, 8, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 11) and torch.equal(a, b) and torch.equal(a[:, :3], prompt)


def test_lm_is_causal():
    lm = model("lm").load()(TOK, mixer="softmax", dim=32, depth=2, heads=4).eval()
    t = torch.randint(0, 37, (1, 12))
    t2 = t.clone()
    t2[0, 7:] = (t2[0, 7:] + 1) % 37
    assert torch.allclose(lm(t)[:, :7], lm(t2)[:, :7], atol=1e-6)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_encoder_ignores_padding(pooling):
    meta = TaskMeta("token_pairs", vocab_size=37, max_len=12, num_classes=3)
    enc = model("encoder").load()(meta, mixer="softmax", dim=32, depth=2, heads=4, pooling=pooling).eval()
    tokens = torch.randint(0, 37, (2, 12))
    pad = torch.ones(2, 12, dtype=torch.bool)
    pad[:, 9:] = False
    segments = (torch.arange(12) >= 5).long().expand(2, 12)
    other = tokens.clone()
    other[:, 9:] = 0
    assert torch.allclose(enc(tokens, pad, segments), enc(other, pad, segments), atol=1e-6)
    assert enc(tokens, pad, segments).shape == (2, 3)


def test_unknown_model_config_key_is_rejected():
    with pytest.raises(TypeError, match="widht"):
        model("vit").load()(IMG, mixer="softmax", widht=3)


def test_unknown_mixer_option_is_rejected():
    with pytest.raises(ValueError, match="has no option\\(s\\) dropuot; its options are: bias, dropout"):
        build_mixer("softmax", 32, heads=4, ctx=SeqContext(16), dropuot=0.1)


def test_non_causal_mixer_refused_in_causal_model():
    from harness import MixerSpec, hookimpl
    from harness.testing import temporary_plugin

    class P:
        @hookimpl
        def register_mixers(register):
            register(MixerSpec("bidir.only", "harness.nn.softmax:SoftmaxAttention", causal_ok=False))

    with temporary_plugin(P, name="p"), pytest.raises(ValueError, match="not causal"):
        model("lm").load()(TOK, mixer="bidir.only", dim=32, depth=1, heads=4)


def test_aux_losses_and_stats_are_collected():
    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    report_loss(m[0], "ponder", torch.tensor(0.5, requires_grad=True))
    report_stat(m[0], "gate", torch.tensor(0.25))
    report_stat(m[1], "gate", torch.tensor(0.75))
    losses, stats = collect_aux(m)
    assert set(losses) == {"0.ponder"} and set(stats) == {"0.gate", "1.gate"}
    assert mean_stats_by_name(stats)["gate"].item() == 0.5
    assert collect_aux(m) == ({}, {})  # popped
