"""MoP token gates: views -> kernels -> excitatory/inhibitory fusion -> one multiplicative gate per token.

    gate = 1 + a_pos sigmoid(G_0) - a_neg sigmoid(G_1)

``GridGate`` is ViT-MoP's (2D maps on the patch grid); ``CausalTokenGate`` is GPT-MoP's (1D over
time, causal, bounded).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GridGate(nn.Module):
    """ViewsLinear(D, V) -> Kernels3 (V -> 16 3x3, SiLU, 16 -> K 1x1) -> FuseExcInh (V+K -> hid 1x1,
    SiLU, hid -> 2 1x1 with bias), hid = max(8, V + K); raw alphas start at 0.8 (softplus 1.17).

    Parameters: V*D + 9*V*16 + 16*K + (V+K)*hid + 2*hid + 2 + 2.
    """

    def __init__(self, dim: int, grid: tuple[int, int], views: int = 5, kernels: int = 3):
        super().__init__()
        self.grid = grid
        hid = max(8, views + kernels)
        self.views = nn.Linear(dim, views, bias=False)                         # V*D
        nn.init.trunc_normal_(self.views.weight, std=0.02)
        self.kernels = nn.Sequential(
            nn.Conv2d(views, 16, 3, padding=1, bias=False), nn.SiLU(),         # 9*V*16
            nn.Conv2d(16, kernels, 1, bias=False))                             # 16*K
        self.fuse = nn.Sequential(
            nn.Conv2d(views + kernels, hid, 1, bias=False), nn.SiLU(),         # (V+K)*hid
            nn.Conv2d(hid, 2, 1))                                              # 2*hid + 2
        self.alpha_pos = nn.Parameter(torch.tensor(0.8))                       # + 2
        self.alpha_neg = nn.Parameter(torch.tensor(0.8))

    def maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, N, D) -> gate (B, 1, gh, gw), views (B, V, gh, gw), kernels (B, K, gh, gw)."""
        B, N, _ = x.shape
        views = self.views(x).transpose(1, 2).reshape(B, -1, *self.grid)       # row-major grid
        kernels = self.kernels(views)
        g = torch.sigmoid(self.fuse(torch.cat([views, kernels], 1)))           # (B, 2, gh, gw)
        gate = 1 + F.softplus(self.alpha_pos) * g[:, :1] - F.softplus(self.alpha_neg) * g[:, 1:]
        return gate, views, kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gate every token of x (B, N, D)."""
        gate = self.maps(x)[0]
        return x * gate.flatten(2).transpose(1, 2)                              # (B, N, D)


class CausalTokenGate(nn.Module):
    """GPT-MoP's gate. The reference's Kernels1D (kernel 3, padding 1) showed token t its successor
    and its gates were unbounded (no sigmoid, raw alphas). Here the kernel conv is left-padded only,
    the fused logits go through a sigmoid, a_pos = softplus(.) and a_neg = sigmoid(.) < 1, so
    gate in (0, 1 + a_pos): it can neither flip a token's sign nor zero it. Both alphas start at
    0.5 and the fusion at ~0.5 each, so the gate starts near 1 (the block starts as the LM's).
    """

    def __init__(self, dim: int, views: int = 5, kernels: int = 3, kernel_size: int = 3):
        super().__init__()
        self.span = kernel_size - 1                                            # past tokens a gate sees
        self.views = nn.Linear(dim, views, bias=False)
        nn.init.trunc_normal_(self.views.weight, std=0.02)
        self.kernels = nn.Conv1d(views, kernels, kernel_size, bias=False)      # no padding: see forward
        self.fuse = nn.Conv1d(views + kernels, 2, 1)
        nn.init.normal_(self.fuse.weight, std=0.02)                            # g_pos ~ g_neg ~ 0.5 at init
        nn.init.zeros_(self.fuse.bias)
        self.alpha_pos = nn.Parameter(torch.tensor(math.log(math.expm1(0.5))))  # softplus -> 0.5
        self.alpha_neg = nn.Parameter(torch.tensor(0.0))                        # sigmoid  -> 0.5

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None,
                past: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, t, D); ``past`` (B, V, span) holds the views of the previous ``span`` tokens (zeros
        at the start). Returns the gated x and the new ``past`` for incremental decoding."""
        views = self.views(x).transpose(1, 2)                                  # (B, V, t)
        if pad is not None:
            views = views * pad[:, None, :].to(views.dtype)                    # padding reads as the zero start
        if past is None:
            past = views.new_zeros(views.shape[0], views.shape[1], self.span)
        seq = torch.cat([past, views], -1)                                     # (B, V, span + t): left context only
        kernels = self.kernels(seq)                                            # (B, K, t)
        g = torch.sigmoid(self.fuse(torch.cat([views, kernels], 1)))           # (B, 2, t)
        gate = 1 + F.softplus(self.alpha_pos) * g[:, 0] - torch.sigmoid(self.alpha_neg) * g[:, 1]   # (B, t)
        return x * gate[..., None], seq[..., seq.shape[-1] - self.span:]
