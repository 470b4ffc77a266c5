"""Gates (component kind ``m3po.gate``): similarity S_ij between the next-token distributions of
paths i and j of one prompt. Every gate maps p (G groups, N paths, V) -> S (G, N, N); the weights
come from the shared ``harness_m3po.weights.attention_weights`` (temperature, masking,
calibration), so a gate is only its similarity.

A gate is built as ``cls(vocab_size, **options)``; unknown options fail in ``build_gate``.
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from harness_m3po.jsd import pairwise_jsd

GATE_KIND = "m3po.gate"


class Gate(nn.Module):
    """Base: ``connects`` False means no path ever mixes (the ``none`` ablation)."""

    connects = True

    def __init__(self, vocab_size: int):
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        self.vocab_size = vocab_size

    @property
    def learnable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def forward(self, p: torch.Tensor) -> torch.Tensor:                  # (G, N, V) -> (G, N, N)
        raise NotImplementedError


class CosineGate(Gate):
    """cos(p_i, p_j): the paper's gate (Eq. 3)."""

    def forward(self, p):
        q = F.normalize(p, dim=-1)                                        # (G, N, V)
        return q @ q.transpose(1, 2)


class RawDotGate(Gate):
    """p_i . p_j (in [0, 1]; tiny for flat distributions)."""

    def forward(self, p):
        return p @ p.transpose(1, 2)


class ScaledDotGate(Gate):
    """p_i . p_j / sqrt(V)."""

    def forward(self, p):
        return p @ p.transpose(1, 2) / math.sqrt(self.vocab_size)


class JSDGate(Gate):
    """1 - sqrt(JSD(p_i, p_j)) (nats), every pair vectorised one diagonal at a time
    (``harness_m3po.jsd``): no pair loop, memory O(N V). p is smoothed to (p + eps) / (1 + V eps)
    (the reference's +1e-8, renormalised) so log p in the gradient is finite; sqrt's argument is
    clamped at 1e-12, so identical rows (JSD = 0) give a zero, finite gradient instead of sqrt's
    infinite slope."""

    def __init__(self, vocab_size: int, eps: float = 1e-8):
        super().__init__(vocab_size)
        self.eps = eps

    def forward(self, p):
        scale = 1.0 / (1.0 + self.vocab_size * self.eps)
        if torch.is_grad_enabled() and p.requires_grad:
            q = (p + self.eps) * scale                                    # (G, N, V), rows sum to 1
        else:
            q = torch.add(p, self.eps).mul_(scale)                        # one buffer, no autograd copies
        return 1.0 - pairwise_jsd(q).clamp_min(1e-12).sqrt()


class BhattacharyyaGate(Gate):
    """sum_v sqrt(p_iv p_jv) = sqrt(p) @ sqrt(p)^T. p is clamped at eps (1e-12) under the sqrt, so
    the slope stays finite at p = 0; the reference added 1e-8 to every entry instead, which biases
    each coefficient by up to ~1e-4 sqrt(V)."""

    def __init__(self, vocab_size: int, eps: float = 1e-12):
        super().__init__(vocab_size)
        self.eps = eps

    def forward(self, p):
        r = p.clamp_min(self.eps).sqrt()                                  # (G, N, V)
        return r @ r.transpose(1, 2)


class LuongGate(Gate):
    """Low-rank bilinear S_ij = (p_i U)(p_j W)^T, U, W (V, rank). ``init = "identity"`` (the
    reference's): U = W = Q from the QR of a Gaussian (V, rank), so S starts symmetric (a
    projection) and learning can break the symmetry; ``"xavier"``: independent N(0, sqrt(2/(V+r)))."""

    INITS = ("identity", "xavier")

    def __init__(self, vocab_size: int, rank: int = 16, init: str = "identity"):
        super().__init__(vocab_size)
        if rank < 1:
            raise ValueError(f"luong rank must be >= 1, got {rank}")
        if init not in self.INITS:
            raise ValueError(f"luong init must be one of {', '.join(self.INITS)}, not {init!r}")
        if init == "identity":
            q, _ = torch.linalg.qr(torch.randn(vocab_size, rank))          # (V, min(V, r)) orthonormal columns
            q = F.pad(q, (0, rank - q.shape[1]))                           # rank > V: zero extra columns
            u, w = q.clone(), q.clone()
        else:
            std = math.sqrt(2.0 / (vocab_size + rank))
            u, w = torch.randn(vocab_size, rank) * std, torch.randn(vocab_size, rank) * std
        self.U, self.W = nn.Parameter(u), nn.Parameter(w)

    def forward(self, p):
        p = p.float()
        return (p @ self.U) @ (p @ self.W).transpose(1, 2)                # (G, N, r) x (G, r, N)


class BahdanauGate(Gate):
    """Additive S_ij = v . tanh(W1 p_i + W2 p_j), W1, W2 (attn_dim, V) Xavier, v ~ N(0, 1/attn_dim).
    The pairwise tanh is (G, N, N, attn_dim): attn_dim, not V, sets its size."""

    def __init__(self, vocab_size: int, attn_dim: int = 32):
        super().__init__(vocab_size)
        if attn_dim < 1:
            raise ValueError(f"bahdanau attn_dim must be >= 1, got {attn_dim}")
        self.W1 = nn.Linear(vocab_size, attn_dim, bias=False)
        self.W2 = nn.Linear(vocab_size, attn_dim, bias=False)
        nn.init.xavier_uniform_(self.W1.weight)
        nn.init.xavier_uniform_(self.W2.weight)
        self.v = nn.Parameter(torch.randn(attn_dim) / math.sqrt(attn_dim))

    def forward(self, p):
        p = p.float()
        a, b = self.W1(p), self.W2(p)                                     # (G, N, a) each
        return torch.tanh(a[:, :, None, :] + b[:, None, :, :]) @ self.v    # (G, N, N)


class PeerMeanGate(Gate):
    """Ablation: equal similarities, so every active peer gets the same weight."""

    def forward(self, p):
        G, N, _ = p.shape
        return p.new_zeros(G, N, N)


class NoneGate(PeerMeanGate):
    """Ablation: no cross-path mixing at all; the rollout is plain GRPO (identical to lam = 0)."""

    connects = False


def build_gate(name: str, vocab_size: int, options: dict | None = None) -> Gate:
    """A registered ``m3po.gate`` component, built; an unknown option fails in one line."""
    from harness.registry import get_registries

    cls = get_registries().component(GATE_KIND, name).load()
    options = dict(options or {})
    allowed = [k for k in inspect.signature(cls).parameters if k != "vocab_size"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"gate {name!r} has no option(s) {', '.join(unknown)}; its options: "
                         f"{', '.join(allowed) or 'none'}")
    return cls(vocab_size, **options)
