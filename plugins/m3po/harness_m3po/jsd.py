"""Pairwise Jensen-Shannon divergence of N distributions, vectorised over pairs, memory O(N V).

    JSD(a, b) = H(m) - (H(a) + H(b)) / 2,   m = (a + b) / 2,   H(x) = sum_v entr(x_v) = -sum_v x_v log x_v

H(a), H(b) are per-row entropies (N values); only H(m) needs each pair. Building m for every pair
at once holds N^2 V numbers (the reference looped over the 28 pairs of N = 8 in Python instead).
Here the pairs are taken one diagonal at a time: offset d pairs row i with row i + d for every i
at once, so step d is two contiguous slices (no gather) of N - d rows, N - 1 steps in all, and
the working set is one (G, N - 1, V) buffer: O(N V) forward and backward. With s = a + b,

    H(m) = sum_v entr(s / 2) = sum_v entr(s) / 2 + ln 2 sum_v s / 2          (= ... + ln 2 on the simplex)

so a step is one add into the buffer, entr in place and a row sum. The backward is written out
(recomputing the sum per diagonal), so autograd keeps no per-pair tensor:

    d JSD(a, b) / d a_v = 1/2 log(a_v / m_v)

Rows must sum to 1 and, for the gradient, be strictly positive (the gate smooths them first).
"""
from __future__ import annotations

import math

import torch


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
        row = 0.5 * math.log(2.0) * p.sum(-1) - 0.5 * torch.special.entr(p).sum(-1)  # (G, N)
        buf = p.new_empty(G, max(N - 1, 1), V)                            # the one pair buffer
        cross = []
        for d in range(1, N):
            s = torch.add(p[:, :N - d], p[:, d:], out=buf[:, :N - d])      # (G, N - d, V): a + b
            cross.append(torch.special.entr(s, out=s).sum(-1))            # (G, N - d)
        jsd = 0.5 * torch.cat(cross, -1) + row[:, i] + row[:, j]          # (G, P)
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
