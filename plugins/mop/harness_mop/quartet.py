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

Speed (unmasked calls: bidirectional, no padding). With keys centred per head (k - mean_j k_j),
every row of s = q k_c^T has mean 0 exactly, so z = s * r with r = 1 / sqrt(mean_j s^2 + eps^2):
no mean pass over (T, T) maps. ``_QuartetSoftmax`` then runs standardisation, mixing and softmax
as one autograd node with a hand-written backward (4 elementwise (T, T) ops forward, 8 backward,
where autograd ran a node per op, each with its own temporaries). The matrix products are the design's own: q k^T for both views and
A v; centring and statistics add no products. Masked calls (causal, padding, the KV cache) take the
general path through ``standardise``.
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


class _QuartetSoftmax(torch.autograd.Function):
    """softmax_j(z0 (a + b z1)), z_v = s_v r_v, r_v = (mean_j s_v^2 + eps^2)^-1/2, for raw scores
    s (2, ..., T, T) whose rows have mean 0 (centred keys): the unmasked Quartet scores' softmax.

    Backward, with g the gradient of the pre-softmax scores, h = g s0 and u = r0 (a + b r1 s1)
    (scores = s0 u): d s0 = g u - dr0 r0^3 s0 / T, d s1 = h b r0 r1 - dr1 r1^3 s1 / T, with
    dr0 = a sum_j h + b r1 sum_j h s1 and dr1 = b r0 sum_j h s1; each line below is one (T, T) pass.
    """

    @staticmethod
    def forward(ctx, s: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
        t = s.shape[-1]
        r = torch.rsqrt(torch.linalg.vector_norm(s, dim=-1, keepdim=True).square_().div_(t).add_(eps * eps))
        s0, s1 = s.unbind(0)
        r0, r1 = r.unbind(0)                                     # (..., T, 1)
        u = torch.addcmul(a * r0, s1, b * r0 * r1)               # r0 (a + b z1)
        p = torch.softmax(s0 * u, -1)                            # softmax(z0 (a + b z1))
        ctx.save_for_backward(s, r, u, a, b, p)
        return p

    @staticmethod
    def backward(ctx, dp: torch.Tensor):
        s, r, u, a, b, p = ctx.saved_tensors
        t = s.shape[-1]
        s0, s1 = s.unbind(0)
        r0, r1 = r.unbind(0)
        g = torch._softmax_backward_data(dp, p, -1, p.dtype)   # d scores
        h = g * s0
        h_s1 = torch.linalg.vecdot(h, s1).unsqueeze(-1)         # sum_j g s0 s1
        h_sum = h.sum(-1, keepdim=True)                         # sum_j g s0
        dr0 = a * h_sum + b * r1 * h_s1
        dr1 = b * r0 * h_s1
        ds = torch.empty_like(s)
        ds0, ds1 = ds.unbind(0)
        torch.mul(g, u, out=ds0)                                # d s0 through the product
        ds0.addcmul_(s0, dr0 * r0.pow(3), value=-1.0 / t)       # ... and through r0
        torch.mul(h, b * r0 * r1, out=ds1)
        ds1.addcmul_(s1, dr1 * r1.pow(3), value=-1.0 / t)
        da = (r0 * h_sum).sum() if ctx.needs_input_grad[1] else None
        db = (r0 * r1 * h_s1).sum() if ctx.needs_input_grad[2] else None
        return ds, da, db, None


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
        mask = score_mask(pad, self.causal, x.shape[1], x.device)
        if mask is None and x.dtype in (torch.float32, torch.float64):
            return self._forward_unmasked(x)
        u = split_views(self.qkv(x), 5, self.heads)               # (5, B, H, T, Dh)
        return self._attend(u[0:2], u[2:4], u[4], mask)

    def _forward_unmasked(self, x: torch.Tensor) -> torch.Tensor:
        """Every key visible: centred keys make each score row's mean 0, so z = s r (module doc)."""
        B, T, D = x.shape
        # The scale rides on the query rows of the weight; a split (not slices) cuts the views, so
        # the projection's backward is one concatenation.
        w = torch.cat([self.qkv.weight[: 2 * D] * self.scale, self.qkv.weight[2 * D:]])
        u = torch.nn.functional.linear(x, w).view(B, T, 5, self.heads, -1)
        q, k, v = u.split([2, 2, 1], dim=2)                       # (B, T, 2|1, H, Dh)
        q, k = q.permute(2, 0, 3, 1, 4), k.permute(2, 0, 3, 1, 4)  # (2, B, H, T, Dh)
        v = v.squeeze(2).transpose(1, 2)                          # (B, H, T, Dh)
        s = q @ (k - k.mean(-2, keepdim=True)).transpose(-1, -2)   # (2, B, H, T, T), rows of mean 0
        m = torch.sigmoid(self.mixture)
        p = _QuartetSoftmax.apply(s, (1 - m).to(s.dtype), (m * self.quartet_scale).to(s.dtype), self.eps)
        return self.proj(merge_heads(p @ v))

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
