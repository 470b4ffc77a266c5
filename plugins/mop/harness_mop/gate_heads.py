"""Edgewise gate heads: per head and per edge (i, j), four gates g_and, g_or, g_not, g_chain in [0, 1].

Input channels per (batch, head) are [S_1..S_n, S_1^T..S_n^T, log C_fwd, log C_bwd]. Two forms:

- ``DenseGateHead``: 1x1 conv -> GELU -> optional 3x3 conv -> 1x1 conv -> sigmoid on the full
  (T, T) feature maps (GELU once; the reference applied it twice on the 3x3 branch).
- ``LowRankGateHead``: row and column means of the features -> per-gate rank-r factors a_i, b_j
  -> G_ij = sum_r a_ir b_jr -> sigmoid.

Leak rules (a causal context, padding): every feature map is built from finite scores and zeroed
outside ``keep`` (query and key real and, if causal, j <= i) before any filter looks across
positions, and so is the dense head's hidden map before its 3x3 (what the conv sees outside
``keep`` is then its own zero padding: a padded sequence gives the outputs of the truncated one); the dense 3x3 conv only looks at rows i-2..i; low-rank row means run over a query's
visible keys (j <= i) and column means over the queries that came before key j (r <= j). The
gate at (i, j <= i) therefore reads tokens <= i only, and never a padded token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Initial gate logits (and, or, not, chain) and the initial NOT strength beta / beta_not.
# -5 is "off" (sigmoid 0.007), +2 is "on" (0.88). nor and xor are not expressible exactly over a
# base path S1 with non-negative gates; the README says what each preset starts as.
PRESETS: dict[str, tuple[tuple[float, float, float, float], float]] = {
    "neutral": ((-5.0, -5.0, -5.0, -5.0), 1.0),   # plain attention on view 1
    "and": ((2.0, -5.0, -5.0, -5.0), 1.0),        # S1 + others
    "or": ((-5.0, 2.0, -5.0, -5.0), 1.0),         # ~ LSE over views
    "not": ((-5.0, -5.0, 2.0, -5.0), 1.0),        # S1 - beta mean(others)
    "nor": ((-5.0, -5.0, 2.0, -5.0), 4.0),        # strict exclusion: beta g_not > 1
    "xor": ((-5.0, 2.0, 2.0, -5.0), 1.0),         # union minus the others' support
    "chain": ((-5.0, -5.0, -5.0, 2.0), 1.0),      # + log C_fwd and value transport
    "mix5": ((2.0, 2.0, 2.0, -5.0), 1.0),         # and, or and not at once
}


@dataclass
class GateInputs:
    """What a gate head may read. ``keep`` (B|1, 1, T, T): real query and key and, if causal,
    j <= i; ``cols``: the same with i <= j (a key's column statistics over earlier queries)."""

    scores: torch.Tensor                  # (B, H, n, T, T), finite everywhere
    row_means: torch.Tensor | None        # (B, H, n, T): mean over keep of row i of each S (low-rank)
    col_means: torch.Tensor | None        # (B, H, n, T): mean over cols of column j of each S
    log_f: torch.Tensor                   # (B, H, T, T): log(C_fwd + eps)
    log_b: torch.Tensor                   # (B, H, T, T): log(C_bwd + eps)
    keep: torch.Tensor | None
    cols: torch.Tensor | None


def score_means(q: torch.Tensor, k: torch.Tensor, keep: torch.Tensor | None, cols: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column means of S = q k^T, q (B, H, v, T, Dh), k (B, H, v|1, T, Dh), from q and k
    alone: mean_j S_ij = q_i . mean_j k_j. O(T Dh) unmasked, one (T, T) x (T, Dh) product masked,
    never a pass over the (T, T) maps (their backward would be a full-size add per view)."""
    if keep is None:
        k_bar = k.mean(-2, keepdim=True)                          # (B, H, v|1, 1, Dh)
    else:
        w = keep[:, :, None].to(q.dtype)                          # (B|1, 1, 1, T, T)
        k_bar = (w @ k) / w.sum(-1, keepdim=True).clamp_min(1.0)  # (B, H, v|1, T, Dh): mean over row i's keys
    if cols is None:
        q_bar = q.mean(-2, keepdim=True)
    else:
        w = cols[:, :, None].to(q.dtype)
        q_bar = (w.transpose(-1, -2) @ q) / w.sum(-2)[..., None].clamp_min(1.0)   # mean over column j's queries
    return (q * k_bar).sum(-1), (k * q_bar).sum(-1)


def check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise ValueError(f"gate_init must be one of {', '.join(PRESETS)}, not {preset!r}")


class DenseGateHead(nn.Module):
    """Runs channels-last: the 1x1 convs are one GEMM over all (i, j), the 3x3 a mkldnn conv."""

    def __init__(self, views: int, preset: str, hidden: int = 16, use_k3: bool = True, causal: bool = False):
        super().__init__()
        self.causal = causal
        self.inp = nn.Linear(2 * views + 2, hidden)               # the 1x1 conv over feature channels
        self.k3 = nn.Conv2d(hidden, hidden, 3) if use_k3 else None
        self.out = nn.Linear(hidden, 4)                           # the final 1x1 conv
        nn.init.normal_(self.out.weight, std=0.02)                # small: start at the preset's gates
        with torch.no_grad():
            self.out.bias.copy_(torch.tensor(PRESETS[preset][0]))

    def forward(self, inp: GateInputs) -> torch.Tensor:
        """-> gates (B, H, 4, T, T)."""
        s = inp.scores                                            # (B, H, n, T, T)
        B, H, n, T, _ = s.shape
        # Channels-last in one pass: [S_1..S_n, S_1^T..S_n^T, log C_fwd, log C_bwd] per edge.
        f = torch.stack([*s.unbind(2), *s.transpose(-1, -2).unbind(2), inp.log_f, inp.log_b], -1)   # (B, H, T, T, C)
        if inp.keep is not None:
            f = f * inp.keep[..., None].to(f.dtype)               # zero outside keep, before any 3x3
        h = F.gelu(self.inp(f))                                   # (B, H, T, T, hidden)
        if inp.keep is not None and self.k3 is not None:
            # The 1x1's bias makes h non-zero outside keep; the 3x3 must see 0 there, the value its
            # own zero padding has at a border, so that a padded sequence gives exactly the outputs
            # of the same sequence cut to its real tokens.
            h = h * inp.keep[..., None].to(h.dtype)
        h = h.flatten(0, 1)                                       # (BH, T, T, hidden)
        if self.k3 is None:
            g = self.out(h).permute(0, 3, 1, 2)                   # (BH, 4, T, T)
        else:
            # No nonlinearity between the 3x3 and the final 1x1, so they compose into ONE 3x3 conv
            # hidden -> 4 (same function, same parameters, a quarter of the 3x3's work).
            w = torch.einsum("om,mckl->ockl", self.out.weight, self.k3.weight)
            b = self.out.weight @ self.k3.bias + self.out.bias
            # Causal: pad 2 rows on both sides and keep the first T output rows, i.e. rows i-2..i
            # (row i+1 is a later query); "same" padding otherwise.
            g = F.conv2d(h.permute(0, 3, 1, 2), w, b, padding=(2, 1) if self.causal else 1)[:, :, :T]
        return torch.sigmoid(g).reshape(B, H, 4, T, T)           # (B, H, 4, T, T)


class LowRankGateHead(nn.Module):
    def __init__(self, views: int, preset: str, rank: int = 4):
        super().__init__()
        self.rank = rank
        self.a = nn.Linear(2 * views + 2, 4 * rank)               # query-side factors
        self.b = nn.Linear(2 * views + 2, 4 * rank)               # key-side factors
        for lin in (self.a, self.b):
            nn.init.normal_(lin.weight, std=0.02)
        # Split each gate's logit L as r * (sqrt(|L|/r) * sign(L) sqrt(|L|/r)) = L, so every preset
        # (neutral's -5 included) starts where the dense head starts; the reference's lowrank
        # neutral started every gate at sigmoid(0) = 0.5.
        logits = torch.tensor(PRESETS[preset][0])
        mag = (logits.abs() / rank).sqrt()[:, None].expand(4, rank)
        with torch.no_grad():
            self.a.bias.copy_(mag.reshape(-1))
            self.b.bias.copy_((mag * logits.sign()[:, None]).reshape(-1))

    def forward(self, inp: GateInputs) -> torch.Tensor:
        """-> gates (B, H, 4, T, T)."""
        r_s, c_s = inp.row_means, inp.col_means                   # (B, H, n, T): S over row i / column j
        B, H, n, T = r_s.shape
        r_c = torch.stack([_mean(inp.log_f, inp.keep, -1), _mean(inp.log_b, inp.keep, -1)], 2)   # (B, H, 2, T)
        c_c = torch.stack([_mean(inp.log_f, inp.cols, -2), _mean(inp.log_b, inp.cols, -2)], 2)
        # Row i of S^T is column i of S (and cols is keep transposed), so the S^T channels are the
        # other side's means: no (T, T) transpose is built.
        row_f = torch.cat([r_s, c_s, r_c], 2).transpose(-1, -2)   # (B, H, T, 2n+2)
        col_f = torch.cat([c_s, r_s, c_c], 2).transpose(-1, -2)
        a = self.a(row_f).view(B, H, T, 4, self.rank).transpose(2, 3)                  # (B, H, 4, T, r)
        b = self.b(col_f).view(B, H, T, 4, self.rank).permute(0, 1, 3, 4, 2)          # (B, H, 4, r, T)
        return torch.sigmoid(a @ b)                               # (B, H, 4, T, T)


def _mean(f: torch.Tensor, keep: torch.Tensor | None, dim: int) -> torch.Tensor:
    """Mean of f (B, H, T, T) over ``dim`` where keep (B|1, 1, T, T) holds (f is finite, so a
    product masks exactly)."""
    if keep is None:
        return f.mean(dim)
    w = keep.to(f.dtype)
    return (f * w).sum(dim) / w.sum(dim).clamp_min(1.0)
