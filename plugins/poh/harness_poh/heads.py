"""poh.heads: multi-head attention whose heads are weighted per token by a router.

    q, k, v = split(qkv(x))                             (B, H, T, Dh) each (with the MLP router's
                                                        first layer in the same matmul)
    y_h     = SDPA(q_h, k_h, v_h, mask)                 torch's fused attention, causal / pad mask
    w       = route(router(x))                          (B, T, H), rows sum to 1
    out     = proj(concat_h(H * gain_h * w_{t,h} * y_{t,h}))

``H * w`` averages 1 over heads, so with a uniform router the mixer is plain multi-head attention
times the per-head gain (init 1): the reference scaled each head by w ~ 1/H and so shrank the
attention output H-fold at init (SEEDS 2.10.4). The router reads token t only (or runs left to
right: ``router = "hrm"``), so causality and padding are the attention's.

Two registered names, because surrogate gradients are a property of the spec, not of an option:
``poh.heads`` routes softly (exact gradients, gradcheck applies) and ``poh.heads_topk`` routes by a
straight-through Gumbel top-k (declares ``surrogate_gradients``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.nn import SeqContext, report_stat
from harness.nn.masks import attention_mask
from harness_poh.routing import HRMRouter, MLPRouter, gumbel_topk_route, soft_route

ROUTERS = ("mlp", "hrm")


def build_router(kind: str, dim: int, heads: int, hidden: int | None, period: int) -> nn.Module:
    if kind not in ROUTERS:
        raise ValueError(f"router must be one of {', '.join(ROUTERS)}, not {kind!r}")
    hidden = hidden or max(1, dim // 4)
    return MLPRouter(dim, heads, hidden) if kind == "mlp" else HRMRouter(dim, heads, hidden, period)


class PoHAttention(nn.Module):
    """Soft head routing: ``w = softmax(router(x) / temperature)``.

    Options: ``router`` ("mlp" | "hrm"), ``temperature`` (1.0), ``router_hidden`` (D / 4; the HRM
    controller's width too), ``hrm_period`` (4: the slow GRU's update period in tokens), ``bias``
    (False, as the softmax reference; True gives the PoH reference's q/k/v/out biases), ``dropout``
    (attention dropout, 0). A router shared across layers is the model's business (``poh.refiner``
    ``share_router``), which assigns one router module to every layer's ``router`` attribute.
    """

    def __init__(self, dim: int, *, heads: int, ctx: SeqContext, router: str = "mlp", temperature: float = 1.0,
                 router_hidden: int | None = None, hrm_period: int = 4, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.heads, self.causal, self.dropout, self.temperature = heads, ctx.causal, dropout, float(temperature)
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)      # parameter-identical to separate q, k, v Linears
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.head_gain = nn.Parameter(torch.ones(heads))
        self.router = build_router(router, dim, heads, router_hidden, hrm_period)

    def route(self, logits: torch.Tensor) -> torch.Tensor:
        return soft_route(logits, self.temperature)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        B, T, D = x.shape
        H = self.heads
        if type(self.router) is MLPRouter:
            # The router's first layer rides in the qkv matmul: one (D -> 3D + hidden) product whose
            # backward is one concatenation. Its weight is concatenated per call (a small copy), so
            # a router shared across layers (poh.refiner share_router) still works.
            fc1 = self.router.fc1
            bias = None if self.qkv.bias is None else torch.cat([self.qkv.bias, fc1.bias])
            q, k, v, hidden = F.linear(x, torch.cat([self.qkv.weight, fc1.weight]), bias).split(
                [D, D, D, fc1.out_features], dim=-1)                             # (B, T, D) x 3, (B, T, hidden)
            logits = self.router.from_hidden(hidden if bias is not None else hidden + fc1.bias)
        else:
            q, k, v = self.qkv(x).split(D, dim=-1)
            logits = self.router(x, pad)                                         # (B, T, H)
        q, k, v = (t.view(B, T, H, D // H).transpose(1, 2) for t in (q, k, v))  # each (B, H, T, Dh)
        mask = attention_mask(pad, self.causal, T, device=x.device)
        p = self.dropout if self.training else 0.0
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        w = self.route(logits)                                                   # (B, T, H), rows sum to 1
        if self.training:
            with torch.no_grad():
                report_stat(self, "route_max", w.amax(-1).mean())
        scale = (w * (H * self.head_gain)).unsqueeze(-1)                         # (B, T, H, 1)
        # SDPA's output is laid out (B, T, H, Dh) in memory: the product and the reshape stay copy-free.
        return self.proj((y.transpose(1, 2) * scale).reshape(B, T, D))


class PoHTopkAttention(PoHAttention):
    """Top-k head routing by a straight-through Gumbel top-k: ``topk`` heads per token, each
    weighted 1 / topk in the forward (Gumbel noise while training, none in eval), the gradient of
    softmax((logits + g) / temperature) in the backward. Options: those of poh.heads and ``topk`` (2)."""

    def __init__(self, dim: int, *, heads: int, ctx: SeqContext, topk: int = 2, router: str = "mlp",
                 temperature: float = 1.0, router_hidden: int | None = None, hrm_period: int = 4, bias: bool = False,
                 dropout: float = 0.0):
        super().__init__(dim, heads=heads, ctx=ctx, router=router, temperature=temperature,
                         router_hidden=router_hidden, hrm_period=hrm_period, bias=bias, dropout=dropout)
        if not 1 <= topk <= heads:
            raise ValueError(f"topk must be in 1..heads={heads}, got {topk}")
        self.topk = topk

    def route(self, logits: torch.Tensor) -> torch.Tensor:
        return gumbel_topk_route(logits, self.topk, self.temperature, noise=self.training)
