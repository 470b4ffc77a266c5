"""Edgewise gate heads: per head and per edge (i, j), four gates g_and, g_or, g_not, g_chain in [0, 1].

Input channels per (batch, head) are [S_1..S_n, S_1^T..S_n^T, log C_fwd, log C_bwd]. Two forms:

- ``DenseGateHead``: 1x1 conv -> GELU -> optional 3x3 conv -> 1x1 conv -> sigmoid on the full
  (T, T) feature maps (GELU once; the reference applied it twice on the 3x3 branch).
- ``LowRankGateHead``: row and column means of the features -> per-gate rank-r factors a_i, b_j
  -> G_ij = sum_r a_ir b_jr -> sigmoid.

Leak rules (a causal context, padding): every feature map is built from finite scores and zeroed
outside ``real_pairs`` (query and key real and, if causal, j <= i) before any filter looks across
positions; the dense 3x3 conv only looks at rows i-2..i; low-rank row means run over a query's
visible keys (j <= i) and column means over the queries that came before key j (r <= j). The
gate at (i, j <= i) therefore reads tokens <= i only, and never a padded token.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Initial gate logits (and, or, not, chain) and the initial NOT strength beta / beta_not.
# -5 is "off" (sigmoid 0.007), +2 is "on" (0.88). nor and xor are not expressible exactly over a
# base path S1 with non-negative gates; see the README for what each preset starts as.
PRESETS: dict[str, tuple[tuple[float, float, float, float], float]] = {
    "neutral": ((-5.0, -5.0, -5.0, -5.0), 1.0),   # plain attention on view 1
    "and": ((2.0, -5.0, -5.0, -5.0), 1.0),        # S1 + others
    "or": ((-5.0, 2.0, -5.0, -5.0), 1.0),         # ~ LSE over views
    "not": ((-5.0, -5.0, 2.0, -5.0), 1.0),        # S1 - beta mean(others)
    "nor": ((-5.0, -5.0, 2.0, -5.0), 4.0),        # strict exclusion: beta*g_not > 1
    "xor": ((-5.0, 2.0, 2.0, -5.0), 1.0),         # union minus the others' support
    "chain": ((-5.0, -5.0, -5.0, 2.0), 1.0),      # + log C_fwd and value transport
    "mix5": ((2.0, 2.0, 2.0, -5.0), 1.0),         # and, or and not at once
}


def features(s: torch.Tensor, log_c: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """s (n, B, H, T, T), log_c (2, B, H, T, T) -> (B*H, 2n+2, T, T), zero outside ``keep``."""
    n, B, H, T, _ = s.shape
    f = torch.cat([s, s.transpose(-1, -2), log_c], 0).movedim(0, 2)     # (B, H, C, T, T)
    if keep is not None:
        f = f * keep[:, :, None].to(f.dtype)                            # keep (B|1, 1, 1, T, T)
    return f.reshape(B * H, 2 * n + 2, T, T)


class DenseGateHead(nn.Module):
    def __init__(self, channels: int, preset: str, hidden: int = 16, use_k3: bool = True, causal: bool = False):
        super().__init__()
        self.causal = causal
        self.inp = nn.Conv2d(channels, hidden, 1)
        self.k3 = nn.Conv2d(hidden, hidden, 3) if use_k3 else None   # padded by hand, see forward
        self.out = nn.Conv2d(hidden, 4, 1)
        nn.init.normal_(self.out.weight, std=0.02)                # small: start at the preset's gates
        with torch.no_grad():
            self.out.bias.copy_(torch.tensor(PRESETS[preset][0]))

    def forward(self, s: torch.Tensor, log_c: torch.Tensor, keep: torch.Tensor | None,
                rows: torch.Tensor | None, cols: torch.Tensor | None) -> torch.Tensor:
        n, B, H, T, _ = s.shape
        h = F.gelu(self.inp(features(s, log_c, keep)))             # (BH, hidden, T, T)
        if self.k3 is not None:
            # Causal: rows i-2..i only (row i+1 would be a later query); "same" padding otherwise.
            h = self.k3(F.pad(h, (1, 1, 2, 0) if self.causal else (1, 1, 1, 1)))
        g = torch.sigmoid(self.out(h))                            # (BH, 4, T, T)
        return g.view(B, H, 4, T, T).movedim(2, 0)                # (4, B, H, T, T)


class LowRankGateHead(nn.Module):
    def __init__(self, channels: int, preset: str, rank: int = 4):
        super().__init__()
        self.rank = rank
        self.a = nn.Linear(channels, 4 * rank)                    # query-side factors
        self.b = nn.Linear(channels, 4 * rank)                    # key-side factors
        for lin in (self.a, self.b):
            nn.init.normal_(lin.weight, std=0.02)
        # Split each gate's logit L as r * (sqrt(|L|/r) * sign(L) sqrt(|L|/r)) = L, so every preset
        # (neutral's -5 included) starts where the dense head starts.
        logits = torch.tensor(PRESETS[preset][0])
        mag = (logits.abs() / rank).sqrt()[:, None].expand(4, rank)
        with torch.no_grad():
            self.a.bias.copy_(mag.reshape(-1))
            self.b.bias.copy_((mag * logits.sign()[:, None]).reshape(-1))

    def forward(self, s: torch.Tensor, log_c: torch.Tensor, keep: torch.Tensor | None,
                rows: torch.Tensor | None, cols: torch.Tensor | None) -> torch.Tensor:
        n, B, H, T, _ = s.shape
        f = torch.cat([s, log_c], 0)                              # (n+2, B, H, T, T)
        r_mean = _mean(f, rows, -1)                               # (n+2, B, H, T): over keys of row i
        c_mean = _mean(f, cols, -2)                               # (n+2, B, H, T): over queries of column j
        # Row i of S^T is column i of S (and rows is cols transposed), so the S^T channels are the
        # other side's means: no (T, T) transpose is built.
        row_f = torch.cat([r_mean[:n], c_mean[:n], r_mean[n:]], 0).movedim(0, -1)   # (B, H, T, 2n+2)
        col_f = torch.cat([c_mean[:n], r_mean[:n], c_mean[n:]], 0).movedim(0, -1)
        a = self.a(row_f).view(B, H, T, 4, self.rank).permute(3, 0, 1, 2, 4)   # (4, B, H, T, r)
        b = self.b(col_f).view(B, H, T, 4, self.rank).permute(3, 0, 1, 4, 2)   # (4, B, H, r, T)
        return torch.sigmoid(a @ b)                               # (4, B, H, T, T)


def _mean(f: torch.Tensor, keep: torch.Tensor | None, dim: int) -> torch.Tensor:
    """Mean of f over ``dim`` where keep holds (finite f, so a product masks exactly)."""
    if keep is None:
        return f.mean(dim)
    w = keep.to(f.dtype)                                          # (B|1, 1, T, T)
    return (f * w).sum(dim) / w.sum(dim).clamp_min(1.0)


def preset_beta_factor(preset: str) -> float:
    return PRESETS[preset][1]


def check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise ValueError(f"gate_init must be one of {', '.join(PRESETS)}, not {preset!r}")


__all__ = ["PRESETS", "DenseGateHead", "LowRankGateHead", "features", "preset_beta_factor", "check_preset"]
