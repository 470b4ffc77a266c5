"""The linear mixer: equal to the naive O(T^2) formula in float64, and the mixer contract."""
import pytest
import torch

from harness.nn.context import SeqContext
from harness.nn.linear_attention import CHUNK, EPS, LinearAttention, feature_map
from harness.testing import check_mixer


def naive(module: LinearAttention, x: torch.Tensor, pad: torch.Tensor, causal: bool) -> torch.Tensor:
    """y_i = sum_j w_ij v_j / (sum_j w_ij + EPS), w_ij = phi(q_i).phi(k_j) over visible real keys j."""
    B, T, D = x.shape
    H = module.heads
    q, k, v = module.qkv(x).view(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)     # each (B, H, T, Dh)
    w = feature_map(q) @ feature_map(k).transpose(-1, -2)                      # (B, H, T, T)
    visible = pad[:, None, None, :] & (torch.ones(T, T, dtype=torch.bool).tril() if causal else True)
    w = w * visible
    y = (w @ v) / (w.sum(-1, keepdim=True) + EPS)                               # (B, H, T, Dh)
    return module.proj(y.transpose(1, 2).reshape(B, T, D))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("T", [24, 2 * CHUNK + 6])   # one chunk, and several with a partial last one
def test_equals_naive_quadratic_formula(causal, T):
    torch.manual_seed(0)
    module = LinearAttention(32, heads=4, ctx=SeqContext(max_len=T, causal=causal)).double()
    x = torch.randn(3, T, 32, dtype=torch.float64)
    pad = torch.ones(3, T, dtype=torch.bool)
    pad[0, T - 6:] = False
    pad[1, :5] = False
    with torch.no_grad():
        y = module(x, pad)
        ref = naive(module, x, pad, causal)
    assert torch.allclose(y[pad], ref[pad], rtol=1e-10, atol=1e-12)


def test_kv_cache_state_is_fixed_size_and_exact_across_chunks():
    module = LinearAttention(16, heads=2, ctx=SeqContext(max_len=80, causal=True)).double()
    cache: dict = {}
    with torch.no_grad():
        x = torch.randn(1, 80, 16, dtype=torch.float64)
        steps = [module.forward_cached(part, cache) for part in x.split([40, 1, 39], dim=1)]
        full = module(x)
    assert cache["kv"].shape == (1, 2, 8, 8) and cache["z"].shape == (1, 2, 8)
    assert torch.allclose(torch.cat(steps, 1), full, rtol=1e-10, atol=1e-12)


def test_passes_the_mixer_contract():
    check_mixer("linear")
