"""Parameter parity with torch's nn.TransformerEncoder, as the PoH reference states it (SEEDS 2.7).

The reference's PoHStack (post-norm, ReLU, no positional encoding, shared router) against
``nn.TransformerEncoder(nn.TransformerEncoderLayer(d, H, d_ff), depth)`` (post-norm, ReLU), at
d = 512, H = 8, d_ff = 2048, depth = 6:

    baseline layer  = 4 (d^2 + d)     q, k, v, out with biases (in_proj 3d x d + 3d, out_proj)
                    + 2 d d_ff + d_ff + d   feed-forward with biases
                    + 4 d             two LayerNorms
                    = 3,152,384;  x 6 = 18,914,304
    PoH layer       = 4 (d^2 + d) + 2 d d_ff (feed-forward biases removed for parity) + 4 d + H (head gain)
                    = 3,149,832;  x 6 = 18,898,992
    shared router   = d (d/4) + d/4 + (d/4) H   (Linear(d, d/4) with bias, Linear(d/4, H) without)
                    = 66,688
    PoH stack       = 18,965,680 = baseline + 51,376 (+0.27%)
    51,376          = router 66,688 + head gains 6 x 8 - feed-forward biases 6 x (2048 + 512)

The PoH layer here is the harness's ``poh.heads`` mixer (``bias=True``; its fused qkv Linear holds
exactly the parameters of separate q, k, v Linears) inside a post-norm ReLU layer built for this
comparison; the harness's own blocks are pre-norm GELU.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from harness.nn import SeqContext
from harness_poh.heads import PoHAttention


def baseline_params(d: int = 512, heads: int = 8, d_ff: int = 2048, depth: int = 6) -> int:
    """nn.TransformerEncoder's count, closed form."""
    return depth * (4 * (d * d + d) + 2 * d * d_ff + d_ff + d + 4 * d)


def poh_params(d: int = 512, heads: int = 8, d_ff: int = 2048, depth: int = 6, share_router: bool = True) -> int:
    """The PoH stack's count, closed form (router d -> d/4 -> H, its second Linear bias-free)."""
    hidden = d // 4
    router = d * hidden + hidden + hidden * heads
    layer = 4 * (d * d + d) + 2 * d * d_ff + 4 * d + heads
    return depth * layer + router * (1 if share_router else depth)


class PostNormPoHLayer(nn.Module):
    """nn.TransformerEncoderLayer's layout (post-norm, ReLU, dropout off) with poh.heads as its
    attention and a bias-free feed-forward."""

    def __init__(self, d: int, heads: int, d_ff: int, ctx: SeqContext):
        super().__init__()
        self.mixer = PoHAttention(d, heads=heads, ctx=ctx, bias=True)
        self.norm1 = nn.LayerNorm(d)
        self.ff1 = nn.Linear(d, d_ff, bias=False)
        self.ff2 = nn.Linear(d_ff, d, bias=False)
        self.norm2 = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm1(x + self.mixer(x, pad))
        return self.norm2(x + self.ff2(F.relu(self.ff1(x))))


class PoHParityStack(nn.Module):
    """``depth`` post-norm PoH layers, no positional encoding; one router shared by all layers
    when ``share_router``."""

    def __init__(self, d: int = 512, heads: int = 8, d_ff: int = 2048, depth: int = 6, share_router: bool = True,
                 max_len: int = 512, causal: bool = False):
        super().__init__()
        ctx = SeqContext(max_len=max_len, causal=causal)
        self.layers = nn.ModuleList(PostNormPoHLayer(d, heads, d_ff, ctx) for _ in range(depth))
        if share_router:
            for layer in self.layers[1:]:
                layer.mixer.router = self.layers[0].mixer.router

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, pad)
        return x


def baseline_encoder(d: int = 512, heads: int = 8, d_ff: int = 2048, depth: int = 6) -> nn.TransformerEncoder:
    """torch's post-norm ReLU encoder (its defaults), without a final norm."""
    layer = nn.TransformerEncoderLayer(d, heads, d_ff, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


def count(module: nn.Module) -> int:
    """Unique trainable parameters (a shared router once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
