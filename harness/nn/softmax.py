"""Reference mixer: multi-head softmax attention on torch's scaled_dot_product_attention."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.nn.context import SeqContext
from harness.nn.masks import attention_mask


class SoftmaxAttention(nn.Module):
    """Fused qkv projection, SDPA, output projection. No biases (as the ViT reference)."""

    def __init__(self, dim: int, *, heads: int, ctx: SeqContext, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.causal, self.dropout = heads, ctx.causal, dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, D = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.heads, D // self.heads)    # (B, T, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                            # each (B, H, T, Dh)
        return q, k, v

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        B, H, T, Dh = y.shape
        return self.proj(y.transpose(1, 2).reshape(B, T, H * Dh))       # (B, T, D)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self._qkv(x)
        mask = attention_mask(pad, self.causal, x.shape[1], device=x.device)
        p = self.dropout if self.training else 0.0
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self._out(y)

    def forward_cached(self, x: torch.Tensor, cache: dict[str, torch.Tensor]) -> torch.Tensor:
        """Causal decoding step: x holds only the new tokens (B, t, D); ``cache`` keeps k and v."""
        q, k, v = self._qkv(x)
        if "k" in cache:
            k = torch.cat([cache["k"], k], dim=2)                        # (B, H, T_past + t, Dh)
            v = torch.cat([cache["v"], v], dim=2)
        cache["k"], cache["v"] = k, v
        mask = attention_mask(None, True, q.shape[2], k.shape[2], device=x.device)
        return self._out(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
