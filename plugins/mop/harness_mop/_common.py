"""Pieces every MoP mixer shares: stacked projections, masks and the chain product.

Every mixer keeps its views (score maps, projections) stacked in one tensor dim, so one batched
matmul serves all views and no Python loop runs over views, heads or hops.
"""
from __future__ import annotations

import functools
import string

import torch

from harness.nn.masks import attention_mask


def split_views(u: torch.Tensor, n: int, heads: int) -> torch.Tensor:
    """(B, T, n*D) -> (n, B, H, T, Dh): n stacked projections with their heads split."""
    b, t, _ = u.shape
    return u.view(b, t, n, heads, -1).permute(2, 0, 3, 1, 4)


def merge_heads(y: torch.Tensor) -> torch.Tensor:
    """(B, H, T, Dh) -> (B, T, H*Dh)."""
    b, h, t, dh = y.shape
    return y.transpose(1, 2).reshape(b, t, h * dh)


def score_mask(pad: torch.Tensor | None, causal: bool, t: int, device: torch.device) -> torch.Tensor | None:
    """The core's (B|1, 1, T, T) bool mask (True = may attend), None when nothing is masked."""
    return attention_mask(pad, causal, t, device=device)


def masked_softmax(s: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Row softmax over keys. The core mask always allows the diagonal, so no row is empty and
    -inf is safe here; it is only ever applied to the final, finite scores of a path."""
    if mask is None:
        return s.softmax(-1)
    return s.masked_fill(~mask, float("-inf")).softmax(-1)


def real_pairs(pad: torch.Tensor | None, causal: bool, t: int, device: torch.device,
               upper: bool = False) -> torch.Tensor | None:
    """(B|1, 1, T, T) bool: entries (i, j) whose query AND key are real and, in a causal context,
    j <= i (``upper``: i <= j, entries that read tokens <= j only). Unlike ``score_mask`` a padded
    query gets no diagonal exception: features of a padded row must not exist at all, or a spatial
    filter would carry them to real rows."""
    mask = None
    if causal:
        tri = torch.ones(t, t, dtype=torch.bool, device=device)
        mask = (tri.triu() if upper else tri.tril())[None, None]
    if pad is not None:
        real = pad[:, None, :, None] & pad[:, None, None, :]
        mask = real if mask is None else mask & real
    return mask


@functools.lru_cache(maxsize=None)
def _chain_equation(n: int) -> str:
    """'...ab,...bc,...cd->...ad' for n maps: one einsum contracts the whole chain."""
    idx = string.ascii_letters[: n + 1]
    return ",".join(f"...{idx[i]}{idx[i + 1]}" for i in range(n)) + f"->...{idx[0]}{idx[n]}"


def chain_products(a: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward chains of the n maps stacked along ``dim`` of a (..., n, ..., T, T):
    (a_1 @ a_2 @ ... @ a_n, a_n @ ... @ a_1).

    One einsum per chain: torch contracts it pairwise (n - 1 batched matmuls on views of a, no
    copies), so there is no Python loop over views here.
    """
    maps = a.unbind(dim)
    eq = _chain_equation(len(maps))
    return torch.einsum(eq, *maps), torch.einsum(eq, *maps[::-1])


class ViewLogSumExp(torch.autograd.Function):
    """LSE_i S_i(r, j) - S_1(r, j) over the view axis of s (B, H, n, T, T), read off the row
    softmaxes the mixer computes anyway: exp S_i(r, j) = A_i(r, j) exp L_i(r), with L_i(r) the
    log-normaliser of row r of view i, so

        LSE(r, j) = c(r) + log Z(r, j),   Z = sum_i A_i(r, j) exp(L_i(r) - c(r)),   c(r) = max_i L_i(r).

    That is one weighted sum over views in place of a max, a shift and an exp per view and entry
    (these maps are memory-bound on a CPU). The gradient is the softmax over views,
    dS_i = g pi_i with pi_i = A_i exp(L_i - c) / Z, minus g on S_1; it reaches S directly.

    Where every view's A_i(r, j) is 0 (a masked key, or one whose score sits 87+ nats below its
    row's in every view) Z is floored at the smallest normal float, so the value stays finite
    rather than -inf; a masked entry's value is never read, and such a key carries weight e^-87.
    """

    @staticmethod
    def forward(ctx, s: torch.Tensor, a: torch.Tensor, row_lse: torch.Tensor) -> torch.Tensor:
        c = row_lse.amax(2, keepdim=True)                         # (B, H, 1, T)
        pi = a * (row_lse - c).exp()[..., None]                   # (B, H, n, T, T): Z pi_i
        z = pi.sum(2).clamp_min_(torch.finfo(a.dtype).tiny)       # (B, H, T, T)
        # Normalised here, not as g / Z in backward: where every A_i underflowed, g / Z could be
        # inf and 0 * inf a NaN.
        pi /= z[:, :, None]
        ctx.save_for_backward(pi)
        return z.log_().add_(c[:, :, 0, :, None]).sub_(s[:, :, 0])

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (pi,) = ctx.saved_tensors
        ds = pi * g[:, :, None]
        ds[:, :, 0] -= g
        return ds, None, None
