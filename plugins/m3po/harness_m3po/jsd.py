"""Pairwise Jensen-Shannon divergence of N distributions, vectorised over pairs, memory O(N V).

    JSD(a, b) = H(m) - (H(a) + H(b)) / 2,   m = (a + b) / 2,   H(x) = sum_v entr(x_v) = -sum_v x_v log x_v

H(a), H(b) are per-row entropies (N values); only H(m) needs each pair. Building m for every pair
at once holds N^2 V numbers (the reference looped over the 28 pairs of N = 8 in Python instead).
Here the pairs are taken one diagonal at a time: offset d pairs row i with row i + d for every i
at once, so step d is two contiguous slices (no gather) of N - d rows, N - 1 steps in all, and
the working set is two (G, N - 1, V) buffers: O(N V) forward and backward. With s = a + b,

    H(m) = sum_v entr(s / 2) = sum_v entr(s) / 2 + ln 2 sum_v s / 2          (= ... + ln 2 on the simplex)

so a step is one add into the buffer, x log x into a second one and a row sum. The backward is written out
(recomputing the sum per diagonal), so autograd keeps no per-pair tensor:

    d JSD(a, b) / d a_v = 1/2 log(a_v / m_v)

Rows must sum to 1 and, for the gradient, be strictly positive (the gate smooths them first).
"""
from __future__ import annotations

import math

import torch


# Below this many pair elements (8 MB in float32) the forward builds every pair at once: at
# N = 8, V = 4,096 that is 0.9 MB and the diagonal loop's ~40 small kernels cost more than the
# arithmetic; above it (V = 151,936: 17 MB) the diagonals keep the working set O(N V).
ONE_SHOT_ELEMENTS = 2 ** 21


def _x_log_x_sum(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """sum_v x_v log x_v over the last axis (0 log 0 = 0), x >= 0. Written as clamp, log, multiply
    rather than torch.special.entr, whose CPU kernel ran 5-6x slower than these three here (it was
    the gate's whole cost)."""
    log_x = torch.clamp_min(x, torch.finfo(x.dtype).tiny, out=out).log_()                    # (..., V)
    return log_x.mul_(x).sum(-1)


def _diagonal_pairs(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair (i, i + d), d = 1 .. n - 1 in order, i ascending: the loop's output order."""
    rows = torch.arange(n, device=device)
    i = torch.cat([rows[:n - d] for d in range(1, n)]) if n > 1 else rows[:0]
    j = torch.cat([rows[d:] for d in range(1, n)]) if n > 1 else rows[:0]
    return i, j


class PairwiseJSD(torch.autograd.Function):
    """p (G, N, V) -> JSD (G, N, N) in nats, symmetric, zero diagonal."""

    @staticmethod
    def forward(ctx, p: torch.Tensor) -> torch.Tensor:
        G, N, V = p.shape
        i, j = _diagonal_pairs(N, p.device)                               # (P,) each, diagonal by diagonal
        # the per-row part of JSD_ij = H(m) - H(a)/2 - H(b)/2, with H(m)'s ln 2 mass term
        row = 0.5 * math.log(2.0) * p.sum(-1) + 0.5 * _x_log_x_sum(p)      # (G, N)
        if G * len(i) * V <= ONE_SHOT_ELEMENTS:  # small: every pair at once, a few kernels instead of 6 per diagonal
            s = p[:, i] + p[:, j]                                         # (G, P, V): a + b
            cross = -_x_log_x_sum(s)                                      # (G, P)
        else:
            buf = p.new_empty(G, max(N - 1, 1), V)                        # the pair buffer
            log_buf = torch.empty_like(buf)                               # and its x log x
            diagonals = []
            for d in range(1, N):
                s = torch.add(p[:, :N - d], p[:, d:], out=buf[:, :N - d])  # (G, N - d, V): a + b
                diagonals.append(-_x_log_x_sum(s, out=log_buf[:, :N - d]))  # (G, N - d): sum entr(s)
            cross = torch.cat(diagonals, -1)                              # (G, P)
        jsd = 0.5 * cross + row[:, i] + row[:, j]                         # (G, P)
        out = p.new_zeros(G, N, N)
        out[:, i, j] = jsd
        out[:, j, i] = jsd
        ctx.save_for_backward(p)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (p,) = ctx.saved_tensors
        G, N, V = p.shape
        log_p = p.log()                                                   # (G, N, V)
        out = torch.zeros_like(p)
        buf = p.new_empty(G, max(N - 1, 1), V)
        rows = torch.arange(N, device=p.device)
        for d in range(1, N):
            i, j = rows[:N - d], rows[d:]
            w = (0.5 * (grad[:, i, j] + grad[:, j, i]))[..., None]         # (G, N - d, 1): both entries hold the pair
            log_m = torch.add(p[:, :N - d], p[:, d:], out=buf[:, :N - d]).log_().sub_(math.log(2.0))  # (G, N - d, V)
            out[:, :N - d] += w * (log_p[:, :N - d] - log_m)
            out[:, d:] += w * (log_p[:, d:] - log_m)
        return out


def pairwise_jsd(p: torch.Tensor) -> torch.Tensor:
    """JSD (G, N, N) of the rows of p (G, N, V) (nats; at most ln 2); memory O(G N V)."""
    return PairwiseJSD.apply(p)
