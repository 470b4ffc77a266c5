"""GPT-MoP Quartet attention: standardised dual-path scores.

    z(s)   = (s - mean_vis(s)) / sqrt(var_vis(s) + eps^2)      statistics over VISIBLE keys only
    scores = (1 - m) z(q k^T) + m z(q k^T) * z(q2 k2^T) * scale,   m = sigmoid(mixture)

The reference took mean and std over all T keys before the causal mask, so every row's statistics
read future tokens (SEEDS 1.9 bug 1). Here they run over the keys the query may attend to (causal
and padding), which makes the mixer causal and padding-safe.

The spread differs from the reference on purpose: the reference divides by ``std() + eps`` with
torch's default unbiased std (n - 1), here it is the population variance (n) with eps inside the
root. Over n visible keys the z-scores are therefore sqrt((n - 1) / n) times the reference's
(0.97 at n = 16, 0.99 at n = 64). The unbiased form is undefined for a row with one visible key,
the first query of every causal sequence (0 / 0), and sqrt(var + eps^2) keeps that row's value
and gradient finite.
"""
from __future__ import annotations

import torch
from torch import nn

from harness.nn.context import SeqContext
from harness.nn.masks import attention_mask
from harness_mop._common import masked_softmax, merge_heads, score_mask, split_views


def standardise(s: torch.Tensor, mask: torch.Tensor | None, eps: float) -> torch.Tensor:
    """z-score of s (..., Tq, Tk) along keys, statistics over entries where mask holds. Runs in
    at least float32: in float16, eps^2 = 1e-10 would round to 0 and a one-key row divide 0 by 0."""
    dtype = s.dtype
    s = s.float() if dtype in (torch.float16, torch.bfloat16) else s
    if mask is None:
        mu = s.mean(-1, keepdim=True)
        var = (s - mu).square().mean(-1, keepdim=True)
    else:
        w = mask.to(s.dtype)
        n = w.sum(-1, keepdim=True)                              # >= 1: the diagonal is always visible
        mu = (s * w).sum(-1, keepdim=True) / n
        var = ((s - mu) * w).square().sum(-1, keepdim=True) / n
    z = (s - mu) / (var + eps * eps).sqrt()
    # A masked entry is outside its row's statistics and can sit at 1/eps; it is masked again
    # before the softmax, so set it to 0 rather than let float16 overflow there.
    return (z if mask is None else z.masked_fill(~mask, 0.0)).to(dtype)


class QuartetAttention(nn.Module):
    def __init__(self, dim: int, *, heads: int, ctx: SeqContext, mixture_init: float = -5.0,
                 scale_init: float = 1.0, eps: float = 1e-5):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.causal, self.eps = heads, ctx.causal, float(eps)
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 5 * dim, bias=False)             # q, q2, k, k2, v
        self.proj = nn.Linear(dim, dim, bias=False)
        self.mixture = nn.Parameter(torch.tensor(float(mixture_init)))
        self.quartet_scale = nn.Parameter(torch.tensor(float(scale_init)))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """q (2, B, H, Tq, Dh), k (2, B, H, Tk, Dh), v (B, H, Tk, Dh) -> (B, T, D)."""
        z = standardise(q @ k.transpose(-1, -2) * self.scale, mask, self.eps)   # (2, B, H, Tq, Tk)
        m = torch.sigmoid(self.mixture)
        scores = (1 - m) * z[0] + m * self.quartet_scale * z[0] * z[1]
        return self.proj(merge_heads(masked_softmax(scores, mask) @ v))

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        u = split_views(self.qkv(x), 5, self.heads)               # (5, B, H, T, Dh)
        mask = score_mask(pad, self.causal, x.shape[1], x.device)
        return self._attend(u[0:2], u[2:4], u[4], mask)

    def forward_cached(self, x: torch.Tensor, cache: dict[str, torch.Tensor]) -> torch.Tensor:
        """Causal decoding step: x holds only the new tokens (B, t, D); ``cache`` keeps k, k2 and v.
        Statistics over visible keys need nothing beyond the cached keys, so caching is exact."""
        u = split_views(self.qkv(x), 5, self.heads)
        k, v = u[2:4], u[4]
        if "k" in cache:
            k = torch.cat([cache["k"], k], dim=-2)                 # (2, B, H, T_past + t, Dh)
            v = torch.cat([cache["v"], v], dim=-2)
        cache["k"], cache["v"] = k, v
        mask = attention_mask(None, True, x.shape[1], k.shape[-2], device=x.device)   # (1, 1, t, T)
        return self._attend(u[0:2], k, v, mask)
