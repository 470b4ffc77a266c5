"""Linear attention (Katharopoulos et al., 2020): softmax's exp(q.k) replaced by phi(q).phi(k) with
phi = elu + 1, so the key-value summary is a (Dh, Dh) state and the cost is linear in T.

A weaker reference than softmax on recall: the state has a fixed size, whatever the length, so it
cannot hold many key-value bindings exactly (Zoology's argument; suites/mqar.toml measures it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.nn.context import SeqContext

# Added to every denominator: a query with no visible real key (a padded query under left padding,
# causal) divides 0 by EPS instead of by 0. The same constant on every length keeps padded and
# truncated sequences equal.
EPS = 1e-6
CHUNK = 32                          # tokens per chunk of the causal form (see linear_attention_causal)


def feature_map(x: torch.Tensor) -> torch.Tensor:
    """elu(x) + 1: positive, so every normaliser is a sum of positive terms."""
    return F.elu(x) + 1.0


def linear_attention_bidirectional(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Features q, k (B, H, T, Dh) (padded keys already zero), values v (B, H, T, Dv) -> (B, H, T, Dv)."""
    kv = torch.einsum("bhtd,bhte->bhde", k, v)                      # (B, H, Dh, Dv)
    z = k.sum(2)                                                    # (B, H, Dh)
    num = torch.einsum("bhtd,bhde->bhte", q, kv)                    # (B, H, T, Dv)
    den = torch.einsum("bhtd,bhd->bht", q, z)[..., None] + EPS      # (B, H, T, 1)
    return num / den


def _chunked(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """(B, H, T, E) -> (B, H, N, chunk, E), zero-padded at the end to a whole number of chunks."""
    B, H, T, E = x.shape
    x = F.pad(x, (0, 0, 0, -T % chunk))
    return x.view(B, H, -1, chunk, E)


def linear_attention_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            state: tuple[torch.Tensor, torch.Tensor] | None = None, chunk: int = CHUNK
                            ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Causal form, chunked: a masked matmul inside each chunk of ``chunk`` tokens, and the running
    sums of phi(k) v^T over earlier chunks (and ``state``, from earlier calls: KV-cache decoding)
    for the rest. Cost T * (chunk + Dh) * Dv per head: linear in T, and matmul-shaped, which on a
    CPU is several times faster than a per-token prefix sum of (Dh, Dv) outer products.

    Features q, k (B, H, T, Dh) (padded keys zero), values v (B, H, T, Dv) -> the output
    (B, H, T, Dv) and the new state ((B, H, Dh, Dv), (B, H, Dh))."""
    T = q.shape[2]
    qc, kc, vc = _chunked(q, chunk), _chunked(k, chunk), _chunked(v, chunk)      # (B, H, N, C, E)
    w = (qc @ kc.transpose(-1, -2)).tril()                                       # (B, H, N, C, C)
    kv = kc.transpose(-1, -2) @ vc                                               # (B, H, N, Dh, Dv)
    z = kc.sum(3)                                                                # (B, H, N, Dh)
    kv_before, z_before = kv.cumsum(2) - kv, z.cumsum(2) - z                     # sums over earlier chunks
    if state is not None:
        kv_before = kv_before + state[0][:, :, None]
        z_before = z_before + state[1][:, :, None]
    num = w @ vc + qc @ kv_before                                                # (B, H, N, C, Dv)
    den = w.sum(-1, keepdim=True) + qc @ z_before[..., None] + EPS               # (B, H, N, C, 1)
    y = (num / den).flatten(2, 3)[:, :, :T]                                      # (B, H, T, Dv)
    return y, (kv_before[:, :, -1] + kv[:, :, -1], z_before[:, :, -1] + z[:, :, -1])


class LinearAttention(nn.Module):
    """Multi-head linear attention: fused qkv projection, elu+1 features, output projection.
    Padded keys are zeroed after the feature map, so they contribute exactly nothing."""

    def __init__(self, dim: int, *, heads: int, ctx: SeqContext, bias: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.causal = heads, ctx.causal
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def _features(self, x: torch.Tensor, pad: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, D = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.heads, D // self.heads)    # (B, T, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                            # each (B, H, T, Dh)
        q, k = feature_map(q), feature_map(k)
        if pad is not None:
            # where, not a product: a non-finite value at a padded position must not leak as NaN.
            k = torch.where(pad[:, None, :, None], k, torch.zeros((), dtype=k.dtype, device=k.device))
        return q, k, v

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        B, H, T, Dh = y.shape
        return self.proj(y.transpose(1, 2).reshape(B, T, H * Dh))       # (B, T, D)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self._features(x, pad)
        if self.causal:
            y, _ = linear_attention_causal(q, k, v)
        else:
            y = linear_attention_bidirectional(q, k, v)
        return self._out(y)

    def forward_cached(self, x: torch.Tensor, cache: dict[str, torch.Tensor]) -> torch.Tensor:
        """Causal decoding: x holds only the new tokens (B, t, D); ``cache`` keeps the running sums
        (a fixed-size state, not the past keys and values)."""
        q, k, v = self._features(x, None)
        state = (cache["kv"], cache["z"]) if "kv" in cache else None
        y, (cache["kv"], cache["z"]) = linear_attention_causal(q, k, v, state)
        return self._out(y)
