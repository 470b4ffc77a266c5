"""MoP mode E: per-head, per-edge boolean gates over n stacked score maps.

    S_i   = q_i k_i^T / sqrt(Dh), i = 1..n  (n = views + lens dilations)       (n, B, H, T, T)
    C_fwd = A_1 @ ... @ A_n,  C_bwd = A_n @ ... @ A_1                          O(n T^3) per head
    g     = gate_head([S_i, S_i^T, log C_fwd, log C_bwd])                       (4, B, H, T, T)
    Smix  = S_1 + g_and sum_{i>1} S_i + g_or (LSE_i S_i - S_1)
                - g_not beta mean_{i>1} S_i + g_chain log(C_fwd + eps)
    y     = softmax(Smix) @ v_1 + sigmoid(chain_value_logit) (g_chain * C_fwd) @ v_n

The chain gate also weights the value transport, edge by edge, so with every gate at 0 the mixer
IS plain attention on view 1 (the "neutral" preset starts within sigmoid(-5) of it).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from harness.nn.aux import report_stat
from harness.nn.context import SeqContext
from harness_mop._common import chain_products, masked_softmax, merge_heads, real_pairs, score_mask, split_views
from harness_mop.gate_heads import DenseGateHead, LowRankGateHead, check_preset, preset_beta_factor
from harness_mop.lens import LensBank

GATE_MODES = ("lowrank", "dense")
GATE_NAMES = ("and", "or", "not", "chain")


class EdgewiseAttention(nn.Module):
    """``views`` projected views (>= 2), shared (one qkv + per-view diagonal scales) or separate.
    Only views 1 and n carry values (the base path and the chain's transport), so no view owns a
    value projection that nothing reads."""

    def __init__(self, dim: int, *, heads: int, ctx: SeqContext, views: int = 5, share_qkv: bool = True,
                 gate_mode: str = "lowrank", gate_rank: int = 4, gate_hidden: int = 16, use_k3: bool = True,
                 gate_init: str = "neutral", beta_not: float = 0.5, lens_bank: bool = False,
                 lens_dilations: tuple[int, ...] = (1, 2), chain_value_init: float = -2.0, eps: float = 1e-6):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        if views < 2:
            raise ValueError(f"edgewise needs views >= 2, not {views}")
        if gate_mode not in GATE_MODES:
            raise ValueError(f"gate_mode must be one of {GATE_MODES}, not {gate_mode!r}")
        check_preset(gate_init)
        dk = dim // heads
        self.heads, self.causal, self.views, self.share = heads, ctx.causal, views, share_qkv
        self.scale, self.eps = dk ** -0.5, float(eps)
        if share_qkv:
            self.qkv = nn.Linear(dim, 3 * dim, bias=False)
            self.q_scale = nn.Parameter(torch.ones(views, heads, 1, dk))
            self.k_scale = nn.Parameter(torch.ones(views, heads, 1, dk))
            self.v_scale = nn.Parameter(torch.ones(2, heads, 1, dk))     # views 1 and n
        else:
            self.qkv = nn.Linear(dim, (2 * views + 2) * dim, bias=False)
        self.lens = LensBank(dk, tuple(lens_dilations), ctx.causal) if lens_bank else None
        n = views + (self.lens.n if self.lens is not None else 0)
        self.n = n
        if gate_mode == "dense":
            self.gate_head: nn.Module = DenseGateHead(2 * n + 2, gate_init, gate_hidden, use_k3, ctx.causal)
        else:
            self.gate_head = LowRankGateHead(2 * n + 2, gate_init, gate_rank)
        # Learnable NOT strength per head (the reference's fixed beta); "nor" starts 4x stronger.
        beta0 = float(beta_not) * preset_beta_factor(gate_init)
        self.log_beta = nn.Parameter(torch.full((heads, 1, 1), math.log(beta0)))
        self.chain_value_logit = nn.Parameter(torch.tensor(float(chain_value_init)))
        self.proj = nn.Linear(dim, dim, bias=False)

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> q, k (views, B, H, T, Dh) and v (2, B, H, T, Dh)."""
        V = self.views
        if self.share:
            q, k, v = split_views(self.qkv(x), 3, self.heads)        # each (B, H, T, Dh)
            return q * self.q_scale[:, None], k * self.k_scale[:, None], v * self.v_scale[:, None]
        u = split_views(self.qkv(x), 2 * V + 2, self.heads)          # (2V+2, B, H, T, Dh)
        return u[:V], u[V:2 * V], u[2 * V:]

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        T = x.shape[1]
        q, k, v = self._project(x)
        if self.lens is not None:
            q_l, k_l = self.lens(q[0], k[0], pad)                     # (L, B, H, T, Dh)
            q, k = torch.cat([q, q_l]), torch.cat([k, k_l])          # (n, B, H, T, Dh)
        s = q @ k.transpose(-1, -2) * self.scale                     # (n, B, H, T, T), finite everywhere
        mask = score_mask(pad, self.causal, T, x.device)
        c_fwd, c_bwd = chain_products(masked_softmax(s, mask))       # (B, H, T, T) each
        log_c = torch.log(torch.stack([c_fwd, c_bwd]) + self.eps)    # (2, B, H, T, T), finite
        keep = real_pairs(pad, self.causal, T, x.device)             # features and row means live here
        cols = real_pairs(pad, self.causal, T, x.device, upper=True)  # column means: queries r <= j
        g = self.gate_head(s, log_c, keep, keep, cols)               # (4, B, H, T, T) in [0, 1]
        others = s[1:].sum(0)                                        # (B, H, T, T)
        beta = self.log_beta.exp().to(s.dtype)                       # (H, 1, 1)
        smix = (s[0] + g[0] * others + g[1] * (torch.logsumexp(s, 0) - s[0])
                - g[2] * beta * others / (self.n - 1) + g[3] * log_c[0])
        y = masked_softmax(smix, mask) @ v[0]                        # (B, H, T, Dh)
        y = y + torch.sigmoid(self.chain_value_logit) * ((g[3] * c_fwd) @ v[1])
        self._report(g)
        return self.proj(merge_heads(y))

    def _report(self, g: torch.Tensor) -> None:
        """Mean of each gate, as tensors (no sync): gate_and, gate_or, gate_not, gate_chain."""
        means = g.detach().mean(dim=(1, 2, 3, 4))                    # (4,)
        for name, value in zip(GATE_NAMES, means.unbind()):
            report_stat(self, f"gate_{name}", value)
