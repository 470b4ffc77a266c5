"""MoP mode E: per-head, per-edge boolean gates over n stacked score maps.

    S_i   = q_i k_i^T / sqrt(Dh), i = 1..n  (n = views + lens dilations)       (B, H, n, T, T)
    C_fwd = A_1 @ ... @ A_n,  C_bwd = A_n @ ... @ A_1                          O(n T^3) per head
    g     = gate_head([S_i, S_i^T, log C_fwd, log C_bwd])                       (B, H, 4, T, T)
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
from harness_mop.gate_heads import (PRESETS, DenseGateHead, GateInputs, LowRankGateHead, check_preset,
                                    score_means)
from harness_mop.lens import LensBank

GATE_MODES = ("lowrank", "dense")


class EdgewiseAttention(nn.Module):
    """``views`` projected views (>= 2), shared or separate. Shared: one qkv projection and, per
    view, a diagonal scale; a diagonal scale of q and one of k act on S_i only through their
    product, so each view has one ``qk_scale`` (the reference's q_scale * k_scale). Only views 1
    and n carry values (the base path and the chain's transport), so no view owns a value
    projection that nothing reads."""

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
            # The reference set every view's scales to 1, so at init all views were the same view:
            # S_i = S_1, OR was a constant shift and the views only parted by chance. View 1 keeps
            # scale 1 (the base path is plain attention); the others start as random reweightings.
            qk_scale = torch.ones(heads, views, 1, dk)
            qk_scale[:, 1:] += 0.5 * torch.randn(heads, views - 1, 1, dk)
            self.qk_scale = nn.Parameter(qk_scale)
            self.v_scale = nn.Parameter(torch.ones(heads, 2, 1, dk))        # views 1 and n
        else:
            self.qkv = nn.Linear(dim, (2 * views + 2) * dim, bias=False)    # q, k per view; v_1, v_n
        self.lens = LensBank(dk, tuple(lens_dilations), ctx.causal) if lens_bank else None
        self.n = views + (self.lens.n if self.lens is not None else 0)
        self.lowrank = gate_mode == "lowrank"
        if gate_mode == "dense":
            self.gate_head: nn.Module = DenseGateHead(self.n, gate_init, gate_hidden, use_k3, ctx.causal)
        else:
            self.gate_head = LowRankGateHead(self.n, gate_init, gate_rank)
        # Learnable NOT strength per head (the reference's fixed beta); "nor" starts 4x stronger.
        beta0 = float(beta_not) * PRESETS[gate_init][1]
        self.log_beta = nn.Parameter(torch.full((heads, 1, 1), math.log(beta0)))
        self.chain_value_logit = nn.Parameter(torch.tensor(float(chain_value_init)))
        self.proj = nn.Linear(dim, dim, bias=False)

    def no_weight_decay(self) -> set[str]:
        """The per-view gains start at 1 and are no weight matrices: decay would pull every view's
        scores and values to 0 (harness.train.param_groups). log_beta, shaped (H, 1, 1), is a gain
        by harness's default rule already."""
        return {"qk_scale", "v_scale"} if self.share else set()

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """-> q (B, H, V, T, Dh) with the 1/sqrt(Dh) scale folded in, k (B, H, V|1, T, Dh) (one k
        shared by every view), v_1, v_n (B, H, T, Dh)."""
        V = self.views
        if self.share:
            q, k, v = split_views(self.qkv(x), 3, self.heads)            # (B, H, T, Dh) each
            v1, vn = (v[:, :, None] * self.v_scale).unbind(2)
            return q[:, :, None] * (self.qk_scale * self.scale), k[:, :, None], v1, vn
        u = split_views(self.qkv(x), 2 * V + 2, self.heads).permute(1, 2, 0, 3, 4)   # (B, H, 2V+2, T, Dh)
        return u[:, :, :V] * self.scale, u[:, :, V:2 * V], u[:, :, 2 * V], u[:, :, 2 * V + 1]

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v1, vn = self._project(x)                                  # q (B, H, V, T, Dh), k (B, H, V|1, T, Dh)
        if self.lens is not None:
            q_l, k_l = self.lens(q[:, :, 0], k[:, :, 0], pad)            # (B, H, L, T, Dh)
            q, k = torch.cat([q, q_l], 2), torch.cat([k.expand(-1, -1, self.views, -1, -1), k_l], 2)
        s = _scores(q, k)                                                # (B, H, n, T, T)
        # s is finite everywhere: masks act on softmax inputs and, as zeros, on gate features.
        mask = score_mask(pad, self.causal, T, x.device)                 # (B|1, 1, T, T)
        s_vis = s if mask is None else s.masked_fill(~mask[:, :, None], float("-inf"))
        a = s_vis.softmax(-1)                                            # (B, H, n, T, T): A_i
        c_fwd, c_bwd = chain_products(a, 2)                              # (B, H, T, T) each
        log_f, log_b = torch.log(c_fwd + self.eps), torch.log(c_bwd + self.eps)   # 0 -> log eps, finite
        keep = real_pairs(pad, self.causal, T, x.device)                 # features and row means
        cols = real_pairs(pad, self.causal, T, x.device, upper=True)     # column means: queries r <= j
        means = score_means(q, k, keep, cols) if self.lowrank else (None, None)   # (B, H, n, T) each
        g = self.gate_head(GateInputs(s, *means, log_f, log_b, keep, cols))
        g_and, g_or, g_not, g_chain = g.unbind(2)                        # (B, H, T, T) each, in [0, 1]
        with torch.no_grad():
            # L_i(r) = S_i(r, j) - log A_i(r, j) at any visible j. At the row's largest score, where A_i
            # is largest too (>= 1/T), the log is exact to rounding: two max passes instead of
            # logsumexp's max, shift, exp and sum.
            row_lse = s_vis.amax(-1) - a.amax(-1).log()                  # (B, H, n, T): L_i(r)
        beta = self.log_beta.exp()                                       # (H, 1, 1)
        coef = torch.addcmul(g_and, g_not, beta, value=-1.0 / (self.n - 1))   # on sum_{i>1} S_i
        smix = _EdgeMix.apply(s, a.detach(), row_lse, coef, g_or, g_chain, log_f)
        y = masked_softmax(smix, mask) @ v1                              # (B, H, T, Dh)
        y = y + torch.sigmoid(self.chain_value_logit) * ((g_chain * c_fwd) @ vn)
        self._report(g)
        return self.proj(merge_heads(y))

    def _report(self, g: torch.Tensor) -> None:
        """Mean of each gate, as tensors (no sync): gate_and, gate_or, gate_not, gate_chain."""
        g_and, g_or, g_not, g_chain = g.detach().mean(dim=(0, 1, 3, 4)).unbind()
        report_stat(self, "gate_and", g_and)
        report_stat(self, "gate_or", g_or)
        report_stat(self, "gate_not", g_not)
        report_stat(self, "gate_chain", g_chain)


def _scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q (B, H, v, T, Dh), k (B, H, v|1, T, Dh) -> (B, H, v, T, T). A k shared by all views is
    one matmul with v*T query rows."""
    if k.shape[2] == 1:
        B, H, v, T, _ = q.shape
        return (q.flatten(2, 3) @ k[:, :, 0].transpose(-1, -2)).unflatten(2, (v, T))
    return q @ k.transpose(-1, -2)


class _EdgeMix(torch.autograd.Function):
    """Smix = S_1 + coef sum_{i>1} S_i + g_or (LSE_i S_i - S_1) + g_chain log_f as one autograd node,
    from the score stack s (B, H, n, T, T); coef = g_and - g_not beta / (n - 1).

    S_1 and sum_{i>1} S_i are read out of the stack (no second product for them: the FLOPs stay the
    design's), the LSE over views is ``ViewLogSumExp``'s (read off the row softmaxes ``a`` and their
    log-normalisers ``row_lse``), and the gradient for the whole stack is written in one buffer:
    dS_1 = d (1 - g_or + g_or pi_1), dS_i = d (coef + g_or pi_i) for i > 1, with pi the softmax
    over views. Autograd would slice, add and accumulate (n, T, T) gradients per term instead.
    """

    @staticmethod
    def forward(ctx, s: torch.Tensor, a: torch.Tensor, row_lse: torch.Tensor, coef: torch.Tensor,
                g_or: torch.Tensor, g_chain: torch.Tensor, log_f: torch.Tensor) -> torch.Tensor:
        c = row_lse.amax(2, keepdim=True)                                # (B, H, 1, T)
        pi = a * (row_lse - c).exp()[..., None]                          # (B, H, n, T, T): Z pi_i
        z = pi.sum(2).clamp_min_(torch.finfo(a.dtype).tiny)             # see ViewLogSumExp
        pi /= z[:, :, None]
        s1 = s[:, :, 0]
        orr = z.log_().add_(c[:, :, 0, :, None]).sub_(s1)                # LSE_i S_i - S_1
        rest = s[:, :, 1:].sum(2)                                        # sum_{i>1} S_i
        smix = torch.addcmul(s1, coef, rest).addcmul_(g_or, orr).addcmul_(g_chain, log_f)
        ctx.save_for_backward(pi, rest, orr, coef, g_or, g_chain, log_f)
        return smix

    @staticmethod
    def backward(ctx, d: torch.Tensor):
        pi, rest, orr, coef, g_or, g_chain, log_f = ctx.saved_tensors
        d_or = d * g_or
        ds = pi * d_or[:, :, None]                                       # through the LSE, every view
        ds[:, :, 1:] += (d * coef)[:, :, None]
        ds[:, :, 0] += d - d_or
        return ds, None, None, d * rest, d * orr, d * log_f, d * g_chain
