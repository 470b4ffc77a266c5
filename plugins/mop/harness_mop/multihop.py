"""MoP mode D: multi-hop, value-aware mixing of two score maps.

    Smix = S1 + g_and S2 + g_or (LSE(S1, S2) - S1) - g_not beta S2 + g_chain log(C + eps)
    C    = A1 @ A2^(hops-1)                       (i -> k -> ... -> j through view 2)
    y    = softmax(Smix) @ v1 + sigmoid(chain_value_logit) * C @ v2

C @ v2 is A1 @ (A2^(hops-1) @ v2) by associativity; C is needed for the score term anyway, so the
value transport costs one (T, T) x (T, Dh) product instead of hops of them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.nn.context import SeqContext
from harness_mop._common import masked_softmax, merge_heads, score_mask


class MultiHopAttention(nn.Module):
    """Gates are fixed floats (the reference) or, with learn_gates, learnable scalars initialised
    to them. Terms whose fixed gate is 0 are not computed (a static choice, made once here)."""

    def __init__(self, dim: int, *, heads: int, ctx: SeqContext, hops: int = 3, gate_and: float = 1.0,
                 gate_or: float = 0.0, gate_not: float = 0.0, gate_chain: float = 1.0, beta_not: float = 0.5,
                 learn_gates: bool = False, chain_value_init: float = -2.0, eps: float = 1e-6):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        if hops < 1:
            raise ValueError(f"hops must be >= 1, not {hops}")
        self.heads, self.causal, self.hops = heads, ctx.causal, int(hops)
        self.scale = (dim // heads) ** -0.5
        self.beta, self.eps = float(beta_not), float(eps)
        self.qkv = nn.Linear(dim, 6 * dim, bias=False)            # q1, q2, k1, k2, v1, v2
        self.proj = nn.Linear(dim, dim, bias=False)
        values = (float(gate_and), float(gate_or), float(gate_not), float(gate_chain))
        if learn_gates:
            self.gates = nn.Parameter(torch.tensor(values))
        else:
            self.register_buffer("gates", torch.tensor(values), persistent=False)
        self.active = tuple(learn_gates or g != 0.0 for g in values)          # and, or, not, chain
        self.chain_value_logit = nn.Parameter(torch.tensor(float(chain_value_init)))

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        B, T, D = x.shape
        # The scale is folded into the query rows of the weight, and the views are cut out with
        # a split of the token-major projection, whose backward is one concatenation
        # straight into the layout the projection's backward reads (slicing would zero-fill and add a
        # full-size gradient buffer per slice).
        w = torch.cat([self.qkv.weight[: 2 * D] * self.scale, self.qkv.weight[2 * D:]])
        u = F.linear(x, w).view(B, T, 6, self.heads, -1)          # (B, T, 6, H, Dh)
        q, k, v1, v2 = u.split([2, 2, 1, 1], dim=2)               # (B, T, 2|1, H, Dh)
        q, k = q.permute(2, 0, 3, 1, 4), k.permute(2, 0, 3, 1, 4)  # (2, B, H, T, Dh) each
        v1, v2 = v1.squeeze(2).transpose(1, 2), v2.squeeze(2).transpose(1, 2)   # (B, H, T, Dh) each
        s = q @ k.transpose(-1, -2)                               # (2, B, H, T, T): S1, S2, finite
        mask = score_mask(pad, self.causal, T, x.device)
        a1, a2 = masked_softmax(s, mask).unbind(0)                # (B, H, T, T) each: A1, A2
        # A1 @ A2^(hops-1); matrix_power squares repeatedly, no Python loop over hops.
        c = a1 if self.hops == 1 else a1 @ torch.linalg.matrix_power(a2, self.hops - 1)
        g = self.gates.to(s.dtype)
        use_and, use_or, use_not, use_chain = self.active
        s1, s2 = s.unbind(0)
        smix = s1
        # Every term reads the finite raw scores; the mask is applied once, to the sum. Each term is
        # one fused multiply-add (addcmul with a 0-dim gate): these (T, T) passes are memory-bound.
        if use_and or use_not:
            smix = torch.addcmul(smix, g[0] - g[2] * self.beta, s2)
        if use_or:
            smix = torch.addcmul(smix, g[1], torch.logaddexp(s1, s2) - s1)
        if use_chain:
            smix = torch.addcmul(smix, g[3], torch.log(c + self.eps))   # C is 0 where masked: log(eps), finite
        y = masked_softmax(smix, mask) @ v1 + torch.sigmoid(self.chain_value_logit) * (c @ v2)
        return self.proj(merge_heads(y))
