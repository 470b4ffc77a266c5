"""The lm's input-embedding entry points (used by plugins/m3po): forward(token_embeds=...) and
the KV-cached forward_cached equal the token-id forward, and generate() is unchanged by them."""
import pytest
import torch

from harness.nn.lm import build_lm
from harness.specs import TaskMeta

META = TaskMeta("tokens", vocab_size=11, max_len=16, causal=True)


def lm():
    torch.manual_seed(0)
    return build_lm(META, mixer="softmax", dim=16, depth=2, heads=2).eval()


def test_token_embeds_equal_tokens():
    model = lm()
    tokens = torch.randint(0, 11, (3, 9))
    assert torch.equal(model(None, token_embeds=model.tok_embed(tokens)), model(tokens))
    with pytest.raises(ValueError, match="exactly one"):
        model(tokens, token_embeds=model.tok_embed(tokens))
    with pytest.raises(ValueError, match="exactly one"):
        model(None)


def test_forward_cached_equals_full_forward():
    model = lm()
    x = model.tok_embed(torch.randint(0, 11, (2, 12))) + 0.1 * torch.randn(2, 12, 16)   # not table rows
    full = model(None, token_embeds=x)
    caches = model.new_caches()
    parts = [model.forward_cached(x[:, :5], caches, 0)]
    parts += [model.forward_cached(x[:, t:t + 1], caches, t) for t in range(5, 12)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)
    with pytest.raises(ValueError, match="max_len"):
        model.forward_cached(x[:, :5], model.new_caches(), 12)


def test_generate_still_uses_the_cache_and_is_seeded():
    model = lm()
    prompt = torch.randint(0, 11, (2, 4))
    a = model.generate(prompt, 8, generator=torch.Generator().manual_seed(1))
    b = model.generate(prompt, 8, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 12) and torch.equal(a, b) and torch.equal(a[:, :4], prompt)
