"""RankMixer's multi-head token mixing (Zhu et al., arXiv 2507.15551), as a harness mixer.

Each of the T tokens is split into H = T heads of width d = D / T; output token h is the
concatenation over tokens of head h::

    s = x.view(B, T, H, d).permute(0, 2, 1, 3).reshape(B, H, T * d)     # H == T: (B, T, D)

With H == T this is a permutation of the B x T x D entries (a block transpose of the T x T grid of
d-wide chunks), parameter-free, and its own inverse. Every output token reads one chunk of every
input token, so the mixer is bidirectional (``causal_ok=False``) and works at one length only
(``fixed_len=True``, T = ``ctx.max_len``). The heads are the mixer's own (H = T), independent of the
block's ``heads``, which is accepted and ignored.

Residual and norm: the harness block is pre-LN, ``x + mixer(norm1(x))`` then ``x + mlp(norm2(x))``,
so it already provides RankMixer's residual and LayerNorm around the mixing; this module returns
the mixed tokens only, without a second residual or norm.

Options:

- ``pffn`` (False): RankMixer's per-token FFN (separate weights for every position) as a pre-LN
  residual sub-layer on the mixed tokens, ``m + PFFN(LN(m))``, inside the mixer slot (the block's
  shared MLP still follows). Hidden width ``int(pffn_ratio * D)``; parameters
  ``T * 2 * D * hidden`` plus the LayerNorm's ``2 * D``.
- ``mismatch`` ("error"): what to do when T does not divide D. "error" raises, naming the fix;
  "project" zero-pads every token to D' = T * ceil(D / T) features, mixes (still a permutation of
  the padded tensor), and maps the D' mixed features back to D with a learned Linear(D', D) (no bias),
  which adds D' * D parameters and their FLOPs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from harness.nn.context import SeqContext

MISMATCH = ("error", "project")
# Bit-exact integer views used to move a d-wide chunk as one wide element (widest first).
_WIDE = ((8, torch.int64), (4, torch.int32), (2, torch.int16))


def mix_tokens(x: torch.Tensor, heads: int) -> torch.Tensor:
    """RankMixer token mixing, literally: (B, T, D) -> (B, heads, T * D / heads); with heads == T,
    (B, T, D). Output token h is the concatenation over t of x[:, t, h*d:(h+1)*d]. Its own inverse
    when heads == T. The reference formula; ``TokenMixer`` computes the same with ``permute_tokens``."""
    B, T, D = x.shape
    d = D // heads
    return x.reshape(B, T, heads, d).permute(0, 2, 1, 3).reshape(B, heads, T * d)


def _transpose_chunks(x: torch.Tensor) -> torch.Tensor:
    """``mix_tokens(x, T)`` without autograd, moving each d-wide chunk as a few wide integer elements
    (a float32 chunk of d = 2 is one int64): the same bits, and a strided copy whose inner run is
    one element instead of d floats: about 3x faster forward at T = 64, D = 128 on CPU (README, Cost)."""
    B, T, W = x.shape
    x = x.contiguous()
    nbytes = W // T * x.element_size()
    for width, dtype in _WIDE:
        if nbytes % width == 0 and x.storage_offset() * x.element_size() % width == 0:
            k = nbytes // width
            y = x.view(dtype).view(B, T, T, k).transpose(1, 2).contiguous()     # (B, H=T, T, k)
            return y.view(B, T, T * k).view(x.dtype)                             # (B, T, W)
    return x.view(B, T, T, W // T).transpose(1, 2).reshape(B, T, W)


class _PermuteTokens(torch.autograd.Function):
    """The mixing as a permutation P with P = P^-1 = P^T: the backward is the same permutation."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _transpose_chunks(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _PermuteTokens.apply(grad)   # differentiable again: double backward works


def permute_tokens(x: torch.Tensor) -> torch.Tensor:
    """``mix_tokens(x, T)`` for (B, T, D) with T dividing D: bit-identical, differentiable, faster."""
    if x.shape[-1] % x.shape[1]:
        raise ValueError(f"permute_tokens needs T = {x.shape[1]} to divide D = {x.shape[-1]}")
    return _PermuteTokens.apply(x)


class PerTokenFFN(nn.Module):
    """RankMixer's PFFN: a two-layer GELU FFN with separate weights for each of the T positions
    (no biases, as the harness MLP). (B, T, D) -> (B, T, D)."""

    def __init__(self, tokens: int, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(tokens, dim, hidden))    # (T, D, F)
        self.w2 = nn.Parameter(torch.empty(tokens, hidden, dim))    # (T, F, D)
        # The backbone's N(0, 0.02) init skips mixer parameters; give these the same one.
        nn.init.trunc_normal_(self.w1, std=0.02)
        nn.init.trunc_normal_(self.w2, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.bmm(x.transpose(0, 1), self.w1)                    # (T, B, F): one matmul per position
        h = F.gelu(h, approximate="tanh")
        return torch.bmm(h, self.w2).transpose(0, 1)                 # (B, T, D)


class TokenMixer(nn.Module):
    """``token_mixer``: parameter-free multi-head token mixing with T heads of its own."""

    def __init__(self, dim: int, *, heads: int, ctx: SeqContext, pffn: bool = False, pffn_ratio: float = 1.0,
                 mismatch: str = "error"):
        super().__init__()
        del heads  # the mixer's heads are its T tokens (RankMixer needs H == T), not the block's heads
        if ctx.causal:
            raise ValueError("token_mixer is not causal: every output token reads a chunk of every input token")
        if mismatch not in MISMATCH:
            raise ValueError(f"token_mixer: mismatch must be one of {', '.join(MISMATCH)}, got {mismatch!r}")
        T = ctx.max_len
        self.tokens, self.dim = T, dim
        self.width = T * math.ceil(dim / T)                           # D' >= D, divisible by T
        self.proj: nn.Linear | None = None
        if self.width != dim:
            if mismatch == "error":
                raise ValueError(
                    f"token_mixer splits each token into T = {T} heads (one per token; RankMixer needs H == T), "
                    f"so dim {dim} must be divisible by the sequence length {T}. Use a dim that is a multiple of "
                    f"{T} (with the budget knob 'dim', set dim_multiple = {T} in [model]), or the option "
                    f"mismatch = \"project\" (zero-pad to {self.width} features, mix, Linear({self.width}, {dim})).")
            self.proj = nn.Linear(self.width, dim, bias=False)
        self.pffn_norm: nn.LayerNorm | None = None
        self.pffn: PerTokenFFN | None = None
        if pffn:
            hidden = max(1, int(dim * pffn_ratio + 1e-9))
            self.pffn_norm = nn.LayerNorm(dim)
            self.pffn = PerTokenFFN(T, dim, hidden)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        B, T, D = x.shape
        if T != self.tokens:
            raise ValueError(f"token_mixer is fixed-length: built for T = {self.tokens} tokens, got {T}")
        if pad is not None:
            # Zero the padded tokens, so no real output reads a padded token's content (exact).
            x = x.masked_fill(~pad[..., None], 0.0)
        if self.width != D:
            x = F.pad(x, (0, self.width - D))                         # (B, T, D')
        m = permute_tokens(x)                                         # (B, T, D'): mix_tokens(x, T), a permutation
        if self.proj is not None:
            m = self.proj(m)                                          # (B, T, D)
        if self.pffn is not None:
            m = m + self.pffn(self.pffn_norm(m))
        return m

    def extra_repr(self) -> str:
        return f"tokens={self.tokens}, dim={self.dim}, head_dim={self.width // self.tokens}"
