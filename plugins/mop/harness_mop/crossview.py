"""MoP mode C: cross-view binding, S = [Q1, Q2] M [K1; K2]^T with a learnable 2x2 mixer M.

Options beyond the bilinear form: transpose cues t1 S1^T + t2 S2^T and a per-key prior
A_sharp(i, j) ~ A1(i, j) A2(k*, j). Without them the whole mixer is ONE bilinear form: one
attention with queries and keys of width 2*Dh and values of width Dh (see ``_bilinear``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.nn.context import SeqContext
from harness_mop._common import masked_softmax, merge_heads, score_mask, split_views

ANCHORS = ("colmass", "fixed")


class CrossViewAttention(nn.Module):
    """Two views (q1, k1, v1) and (q2, k2). View 2 only shapes scores, so it has no value
    projection (the reference allocated an unused v2).

    Causality of the transpose cues: S^T(i, j) = q_j . k_i. Every entry a causal query i keeps
    (j <= i) uses tokens j and i only, and entries with j > i are masked after combining, so the
    cues are causal. Under padding, real (i, j) only ever read real tokens, for the same reason.
    """

    sdpa_on_cpu = False   # the tests turn it on to check the SDPA branch against the formula

    def __init__(self, dim: int, *, heads: int, ctx: SeqContext, t1: float = 0.0, t2: float = 0.0,
                 learn_transpose: bool = False, prior: bool = False, prior_weight: float = 0.5,
                 anchor: str = "colmass", fixed_k_star: int = 0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        if anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {ANCHORS}, not {anchor!r}")
        self.heads, self.causal = heads, ctx.causal
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 5 * dim, bias=False)           # q1, q2, k1, k2, v1
        self.proj = nn.Linear(dim, dim, bias=False)
        self.mix = nn.Parameter(torch.eye(2))                     # identity: starts as S1 + S2
        self.cues = learn_transpose or t1 != 0.0 or t2 != 0.0
        t = torch.tensor([float(t1), float(t2)])
        if learn_transpose:
            self.t = nn.Parameter(t)
        else:
            self.register_buffer("t", t, persistent=False)
        self.prior, self.prior_weight = prior, float(prior_weight)
        self.anchor, self.fixed_k_star = anchor, int(fixed_k_star)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        B, T, D = x.shape
        H = self.heads
        mask = score_mask(pad, self.causal, T, x.device)
        if not (self.cues or self.prior):
            return self.proj(merge_heads(self._bilinear(x, mask)))
        u = split_views(self.qkv(x), 5, H)                           # (5, B, H, T, Dh)
        q, k, v = u[0:2], u[2:4], u[4]                               # (2, B, H, T, Dh) x2, (B, H, T, Dh)
        k_eff = torch.einsum("ab,bnhtd->anhtd", self.mix, k)         # row a of M folded into the keys
        s = torch.einsum("anhid,anhjd->nhij", q, k_eff) * self.scale  # (B, H, T, T) = sum_ab M_ab S_ab
        views = q @ k.transpose(-1, -2) * self.scale                 # (2, B, H, T, T): S1, S2
        if self.cues:
            s = s + torch.einsum("a,anhji->nhij", self.t.to(s.dtype), views)   # t1 S1^T + t2 S2^T
        a = masked_softmax(s, mask)                                  # (B, H, T, T)
        if self.prior:
            a = (1.0 - self.prior_weight) * a + self.prior_weight * self._sharp(views, mask, pad)
        return self.proj(merge_heads(a @ v))

    def _bilinear(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """softmax([q1, q2] [k_eff1, k_eff2]^T) v1 -> (B, H, T, Dh), with M folded into the key
        weights (k_eff_a = sum_b M_ab k_b) and the scale into the query weights. The weight rows are
        grouped per head as [q1 q2 | k_eff1 k_eff2 | v1], so one projection leaves [q1, q2] and
        [k_eff1, k_eff2] adjacent, and a split (whose backward is one concatenation) cuts them out.

        On CPU the attention is two batched matmuls: torch's CPU flash kernel needs one head width
        for q, k and v, and for 2Dh-wide q, k with a Dh-wide v SDPA falls back to its math path,
        which measured slower than this (harness bench, B=32 T=64 D=128 H=4, fp32, 2 threads). Elsewhere
        SDPA runs it."""
        B, T, D = x.shape
        H = self.heads
        w = self.qkv.weight.view(5, H, -1, D)                        # (5, H, Dh, D)
        k_eff = torch.einsum("ab,bhkd->ahkd", self.mix, w[2:4])
        w = torch.cat([w[0:2] * self.scale, k_eff, w[4:]]).transpose(0, 1).reshape(5 * D, D)   # rows (H, 5, Dh)
        q, k, v = F.linear(x, w).view(B, T, H, 5, -1).split([2, 2, 1], dim=3)
        q = q.flatten(3).transpose(1, 2)                             # (B, H, T, 2Dh): [q1, q2] / sqrt(Dh)
        k = k.flatten(3).transpose(1, 2)                             # (B, H, T, 2Dh): [k_eff1, k_eff2]
        v = v.squeeze(3).transpose(1, 2)                             # (B, H, T, Dh)
        if self.sdpa_on_cpu or x.device.type != "cpu":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0,
                                                  is_causal=self.causal and mask is None)
        return masked_softmax(q @ k.transpose(-1, -2), mask) @ v

    def _sharp(self, views: torch.Tensor, mask: torch.Tensor | None, pad: torch.Tensor | None) -> torch.Tensor:
        """A_sharp(i, j) ~ A1(i, j) A2(k*(i), j), computed in log space as softmax(S1 + log A2[k*]).

        For a real query the two supports always share k* itself. A padded query's may not (its
        anchor can be another padded row), so log 0 is floored at a finite -1e4 rather than -inf:
        such rows stay finite, and real rows are unchanged because exp(-1e4) is exactly 0."""
        s1, s2 = views
        log_a2 = s2.masked_fill(~mask, float("-inf")).log_softmax(-1) if mask is not None else s2.log_softmax(-1)
        idx = self._anchor(log_a2.exp(), pad)                    # (B, H, T|1): anchor row per query
        prior = log_a2.gather(-2, idx[..., None].expand(*idx.shape, s2.shape[-1]))   # (B, H, T|1, T)
        prior = prior.clamp_min(-1e4)
        return masked_softmax(s1 + prior, mask)

    def _anchor(self, a2: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        """The reference's argmax of A2's row sums is always row 0 (every softmax row sums to 1).
        "colmass" anchors on the key that real queries attend to most in view 2. In a causal context
        query i only counts queries <= i (a cumulative sum), so k*(i) <= i and its row of A2 only
        reads tokens <= i. "fixed" uses fixed_k_star, clamped to i when causal. With padding, positions
        count real tokens only (the k*-th real token), so a left-padded sequence anchors where the
        same sequence without its pads does."""
        B, H, T, _ = a2.shape
        if self.anchor == "fixed":
            return self._fixed_anchor(B, H, T, pad, a2.device)
        w = a2 if pad is None else a2 * pad[:, None, :, None].to(a2.dtype)   # real queries only
        mass = w.cumsum(-2) if self.causal else w.sum(-2, keepdim=True)      # (B, H, T|1, T)
        return mass.argmax(-1)                                               # (B, H, T|1)

    def _fixed_anchor(self, B: int, H: int, T: int, pad: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """-> (B, H, T|1): the fixed_k_star-th (real) token, or query i's own position if earlier when causal."""
        k = self.fixed_k_star
        if pad is None:
            pos = torch.arange(T, device=device)
            fixed = pos.clamp(max=k) if self.causal else pos.new_full((1,), k)
            return fixed.clamp(max=T - 1).expand(B, H, -1)
        rank = pad.long().cumsum(-1) - 1                                     # (B, T): index among real tokens
        last = (pad.sum(-1, keepdim=True) - 1).clamp_min(0)                  # (B, 1)
        target = rank.clamp(0, k) if self.causal else torch.full_like(last, k)
        target = torch.minimum(target, last)                                 # (B, T|1)
        real_first = torch.argsort((~pad).to(torch.int8), dim=-1, stable=True)   # (B, T): real positions in order
        return real_first.gather(1, target)[:, None].expand(B, H, -1)
