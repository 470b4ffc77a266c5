"""Routing primitives: per-token head logits (an MLP or an HRM controller) and the maps from logits
to routing weights (soft, or straight-through Gumbel top-k).

Every router maps ``x (B, T, D)`` (and ``pad (B, T)``, True = real) to logits ``(B, T, H)``; the
weights ``(B, T, H)`` sum to 1 over heads. Both routers are causal: the MLP reads token t only, the
HRM controller runs left to right over the sequence.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def soft_route(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / temperature) over heads: (B, T, H) -> (B, T, H), rows sum to 1."""
    return F.softmax(logits if temperature == 1.0 else logits / max(temperature, 1e-6), dim=-1)


def gumbel_topk_route(logits: torch.Tensor, k: int, temperature: float, noise: bool) -> torch.Tensor:
    """Straight-through Gumbel top-k: the forward value is exactly the k-hot mask / k (rows sum to 1);
    the backward is that of softmax((logits + g) / temperature), so the router always gets a gradient.

    ``noise``: add Gumbel(0, 1) noise (training); without it the top-k of the logits is taken
    (evaluation: deterministic).
    """
    if noise:
        # -log(E), E ~ Exp(1), is Gumbel(0, 1)
        logits = logits - torch.empty_like(logits).exponential_().log()
    soft = F.softmax(logits / max(temperature, 1e-6), dim=-1)                      # (B, T, H)
    hard = torch.zeros_like(soft).scatter_(-1, logits.topk(k, dim=-1).indices, 1.0)
    # soft - soft.detach() is exactly 0 in the forward: the value is hard, bit for bit.
    return (hard + (soft - soft.detach())) / k


class MLPRouter(nn.Module):
    """Per-token router: Linear(D, hidden) -> ReLU -> Linear(hidden, H, no bias) (SEEDS 2.2's
    HeadRouter). Reads token t only, so it is causal and padding-safe by construction."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, heads, bias=False)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        return self.from_hidden(self.fc1(x))                                         # (B, T, H)

    def from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """The logits from ``fc1(x)`` (poh.heads computes it inside its qkv matmul)."""
        return self.fc2(F.relu(hidden))


class HRMRouter(nn.Module):
    """Two-timescale recurrent router after SEEDS 2.5's HRMPointerController, made per-token and causal.

    Left to right over the sequence, with u_t = inp(x_t):
        slow (every ``period`` real tokens, from the first):  z_H = LN_H(GRU_H(u_t, z_H))
        fast (every real token):                               z_L = LN_L(GRU_L([u_t; z_H], z_L))
        logits_t = out(z_L + mix(z_H))
    Padded tokens leave both states unchanged and do not advance the slow clock, so a padded
    sequence routes its real tokens exactly as the sequence cut to them does. The states are reset
    on every call (no state carried between calls or refinement passes).
    """

    def __init__(self, dim: int, heads: int, hidden: int, period: int = 4):
        super().__init__()
        if period < 1:
            raise ValueError(f"hrm_period must be >= 1, got {period}")
        self.period = period
        self.inp = nn.Linear(dim, hidden)
        self.f_h = nn.GRUCell(hidden, hidden)
        self.f_l = nn.GRUCell(2 * hidden, hidden)
        self.norm_h = nn.LayerNorm(hidden)
        self.norm_l = nn.LayerNorm(hidden)
        self.mix = nn.Linear(hidden, hidden, bias=False)
        self.out = nn.Linear(hidden, heads, bias=False)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        u = self.inp(x)                                                              # (B, T, C)
        if pad is None:
            real = torch.ones(B, T, dtype=torch.bool, device=x.device)
            index = torch.arange(T, device=x.device).expand(B, T)
        else:
            real = pad
            index = pad.long().cumsum(1) - 1                                         # real-token index
        slow = real & (index % self.period == 0)                                     # (B, T)
        z_h = u.new_zeros(B, u.shape[-1])
        z_l = u.new_zeros(B, u.shape[-1])
        fast_states, slow_states = [], []
        for t in range(T):
            u_t = u[:, t]
            z_h = torch.where(slow[:, t, None], self.norm_h(self.f_h(u_t, z_h)), z_h)
            z_l = torch.where(real[:, t, None], self.norm_l(self.f_l(torch.cat([u_t, z_h], -1), z_l)), z_l)
            fast_states.append(z_l)
            slow_states.append(z_h)
        z_l_all, z_h_all = torch.stack(fast_states, 1), torch.stack(slow_states, 1)  # (B, T, C) each
        return self.out(z_l_all + self.mix(z_h_all))                                 # (B, T, H)
