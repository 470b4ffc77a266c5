"""Pieces every MoP mixer shares: stacked projections, masks and the chain product.

Every mixer keeps its views (score maps, projections) stacked in a leading tensor dim, so one
batched matmul serves all views and no Python loop runs over views, heads or hops.
"""
from __future__ import annotations

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


def chain_products(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward chains of n stacked maps a (n, ..., T, T):
    (a[0] @ a[1] @ ... @ a[n-1], a[n-1] @ ... @ a[0]).

    Both chains are reduced together as a balanced tree: each level is ONE batched matmul over all
    adjacent pairs, so the n-1 products per chain cost ceil(log2 n) calls (n is a static config,
    like matrix_power's repeated squaring), not n-1 dependent calls in a Python loop over views.
    """
    x = torch.stack([a, a.flip(0)])                    # (2, n, ..., T, T): both orders at once
    while x.shape[1] > 1:                              # ceil(log2 n) levels
        m = x.shape[1] // 2
        paired = x[:, 0:2 * m:2] @ x[:, 1:2 * m:2]     # (2, m, ..., T, T), order kept
        x = torch.cat([paired, x[:, 2 * m:]], 1) if x.shape[1] % 2 else paired
    return x[0, 0], x[1, 0]
