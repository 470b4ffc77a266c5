"""SEEDS 2.7's parameter parity, reproduced exactly: PoH stack 18,965,680 vs torch's
nn.TransformerEncoder 18,914,304 at d = 512, H = 8, d_ff = 2048, depth 6, no positional encoding,
shared router (its second Linear bias-free), post-norm ReLU."""
import torch

from harness_poh.parity import (PoHParityStack, baseline_encoder, baseline_params, count, poh_params)

POH, BASELINE = 18_965_680, 18_914_304


def test_closed_forms():
    assert poh_params() == POH and baseline_params() == BASELINE
    assert POH - BASELINE == 51_376 == 66_688 + 6 * 8 - 6 * (2048 + 512)    # router + gains - FFN biases


def test_modules_have_exactly_the_reference_counts():
    with torch.device("meta"):
        poh, base = PoHParityStack(), baseline_encoder()
        per_layer_routers = PoHParityStack(share_router=False)
    assert count(base) == BASELINE
    assert count(poh) == POH
    assert count(per_layer_routers) == poh_params(share_router=False) == POH + 5 * 66_688
    layer = poh.layers[0]
    assert layer.mixer.qkv.bias is not None and layer.mixer.proj.bias is not None     # q/k/v/out biases
    assert layer.ff1.bias is None and layer.ff2.bias is None                          # FFN biases removed
    assert layer.mixer.router.fc1.bias is not None and layer.mixer.router.fc2.bias is None
    assert layer.mixer.router.fc1.out_features == 512 // 4 and layer.mixer.router.fc2.out_features == 8
    assert all(lyr.mixer.router is layer.mixer.router for lyr in poh.layers)


def test_parity_stack_runs_post_norm_and_causal():
    torch.manual_seed(0)
    stack = PoHParityStack(d=32, heads=4, d_ff=64, depth=2, max_len=10, causal=True).double().eval()
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    y = stack(x)
    assert y.shape == x.shape
    assert torch.allclose(y.mean(-1), torch.zeros(2, 10, dtype=torch.float64), atol=1e-12)   # ends in a LayerNorm
    x2 = x.clone()
    x2[:, 6:] += 3.0
    assert torch.equal(stack(x2)[:, :6], y[:, :6])
