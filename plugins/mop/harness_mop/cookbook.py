"""The MoP cookbook: boolean operators over two attention views, as plain functions.

Score-space forms take pre-softmax scores S1, S2 (..., Tq, Tk) and an optional bool ``mask``
(True = may attend, broadcastable to the scores; every row must keep at least one key) and return
row-stochastic attention. Probability-space forms take the attention maps A1 = softmax(S1),
A2 = softmax(S2) (or, for OR, the scores) and renormalise. Where an identity holds, the two forms
agree to rounding; the tests check each one.

============  ===============================  ==========================================
operator      score space                      probability space
============  ===============================  ==========================================
AND           softmax(S1 + S2)                 normalize(A1 * A2)
OR            softmax(LSE(S1, S2))             normalize(exp S1 + exp S2)
NOT           softmax(S1 - beta S2)            normalize(A1 * A2 ** -beta)
XOR           softmax(|S1 - S2|)               normalize(A1 + A2 - 2 A1 A2)   (not equal)
chain         log(A1 @ A2)  (as scores)        A1 @ A2  (two hops i -> k -> j)
per-key prior                                  normalize(A1 * A2[k*])
============  ===============================  ==========================================

Worked example (the seed README's "red ball"): A1 = [0.50, 0.10, 0.40] (red), A2 = [0.10, 0.50,
0.40] (round). A1 * A2 = [0.05, 0.05, 0.16], which normalises to [0.1923, 0.1923, 0.6154]
(0.05 / 0.26 and 0.16 / 0.26). The seed's table prints [0.185, 0.185, 0.630], which is not the
normalisation of its own product row.
"""
from __future__ import annotations

import torch


def _masked(s: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return s if mask is None else s.masked_fill(~mask, float("-inf"))


def normalize(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Rescale non-negative weights to sum to 1 along ``dim``."""
    return p / p.sum(dim, keepdim=True)


def and_(s1: torch.Tensor, s2: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Conjunction: keys both views like. Adding logits multiplies probabilities."""
    return _masked(s1 + s2, mask).softmax(-1)


def and_prob(a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
    return normalize(a1 * a2)


def or_(s1: torch.Tensor, s2: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Soft union: keys either view likes, LSE(S1, S2) = log(exp S1 + exp S2)."""
    return _masked(torch.logaddexp(s1, s2), mask).softmax(-1)


def or_prob(s1: torch.Tensor, s2: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """normalize(exp S1 + exp S2): needs the scores, since A1 + A2 drops each row's partition
    function. One shift for both views keeps exp finite and cancels in the normalisation."""
    s1, s2 = _masked(s1, mask), _masked(s2, mask)
    top = torch.maximum(s1.amax(-1, keepdim=True), s2.amax(-1, keepdim=True))
    return normalize((s1 - top).exp() + (s2 - top).exp())


def not_(s1: torch.Tensor, s2: torch.Tensor, beta: float = 0.5, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Exclusion: keys view 1 likes unless view 2 does too (beta >= 0 sets how strongly)."""
    return _masked(s1 - beta * s2, mask).softmax(-1)


def not_prob(a1: torch.Tensor, a2: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """normalize(A1 * A2^-beta), where A1 > 0 (a masked key stays at 0; A2 is 0 there too)."""
    keep = a1 > 0
    return normalize(torch.where(keep, a1 * a2.clamp_min(torch.finfo(a2.dtype).tiny) ** -beta, 0.0))


def xor_(s1: torch.Tensor, s2: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Disagreement in score space: keys the two views score differently."""
    return _masked((s1 - s2).abs(), mask).softmax(-1)


def xor_prob(a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
    """Disagreement in probability space: P(exactly one view) = A1 + A2 - 2 A1 A2. A different
    operator from ``xor_`` (no identity links them); both are offered, as in the seed."""
    return normalize(a1 + a2 - 2 * a1 * a2)


def chain(a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
    """Two hops i -> k -> j: C = A1 @ A2, row-stochastic when both are."""
    return a1 @ a2


def chain_scores(a1: torch.Tensor, a2: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The chain as additive scores, log(A1 @ A2 + eps): softmax of it is ~ A1 @ A2."""
    return torch.log(a1 @ a2 + eps)


def per_key_prior(a1: torch.Tensor, a2: torch.Tensor, k_star: int) -> torch.Tensor:
    """Edge sharpening by anchor row k* of view 2: A_sharp(i, j) ~ A1(i, j) A2(k*, j)."""
    return normalize(a1 * a2[..., k_star : k_star + 1, :])
