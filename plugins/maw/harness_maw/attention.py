"""maw: multi-attention-weight attention. Per head, D depth-wise attention maps; a router picks (or
weights) one depth per example (per head with ``per_head``; per position in a causal context).

    q_d, k_d = depth projections of x                  (B, H, D, T, Dq) each, one matmul with v
    v        = value projection of x                    (B, H, T, Dh)
    O_d      = softmax_keys(q_d k_d^T / sqrt(Dq) + mask) v      all D maps in ONE SDPA call over (B, H*D)
    s        = mean of x over the real tokens           (B, 1, dim); causal: prefix means (B, T, dim)
    w, c     = router(s)                                 (B, S, R, D) weights over depths, c the chosen depth
    out      = proj(concat_h(sum_d w_d O_d))

Every map is a real attention: a softmax over keys (rows sum to 1); padded keys get exactly zero
weight (SDPA's boolean mask; a padded query attends to itself only, so no row is empty); causal
when ``ctx.causal``. The depth axis is a batch axis of one fused SDPA call (no Python loop), whose
CPU and CUDA kernels never materialise a (T, T) map: memory is O(B H D T Dh), not the reference's
(B, H, T, T, D) score tensor (SEEDS 3.5.5).

Three ways to compute it, picked per call, all with the same values (and, where autograd runs, the
same gradients as weighting all D maps under autograd; tested against a naive per-depth loop):

- every depth (the default without autograd, soft weights, and one route per position when
  causal): the full projection, D maps in one SDPA call, ``sum_d w_d O_d``. One route per example
  folds the weights into the values (``sum_d A_d (w_d v)``), so the depths are summed after SDPA.
- chosen depth only, when the weights are one-hot without a gradient and there is one route per
  example: ``maw.grpo`` (its policy learns from rewards, not through the output), probe forwards,
  and the straight-through routers at inference with ``eval_chosen_depth=True``. Each example's
  chosen rows of the q, k projection are gathered and applied in one batched matmul, then one
  SDPA call over (B, H): softmax attention's FLOPs plus the router's.
- straight-through (``maw.soft``, ``maw.supervised`` under autograd, one route per example): the
  value is the chosen map's output, but the weights' gradient needs <g, O_d> for every depth. The
  chosen depth runs under autograd as above; every depth runs once more without it (forward
  only); ``sum_d (w_d - sg(w_d)) sg(O_d)``, exactly 0 in the forward, carries the weights'
  gradient. One backward of projection and map instead of D (whose q, k gradients would be 0).

``eval_chosen_depth`` is off by default so that the FLOPs ``harness bench`` counts (on an inference
forward) are the D maps the training step computes. Attention dropout (``dropout``) draws its own
masks in each SDPA call.

Routing input. The routers read the mean of the block input over the real tokens, which depends on
the input sequence and ignores padding. In a causal context a sequence summary would leak the
future, so the state of position t is the mean over real tokens up to t, and each position is
routed on its own (S = T): causal by construction.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.nn import SeqContext, attention_mask
from harness.nn.aux import probe_index

ROUTER_KIND = "maw.router"


def build_router(name: str, dim: int, *, heads: int, depths: int, per_head: bool, options: dict) -> nn.Module:
    """A registered ``maw.router`` component, built."""
    from harness.registry import get_registries

    cls = get_registries().component(ROUTER_KIND, name).load()
    return cls(dim, heads=heads, depths=depths, per_head=per_head, **options)


class MAWAttention(nn.Module):
    """Options: ``depths`` D (4), ``depth_dim`` (head width Dq of each depth's q and k; default the
    head width Dh, as SEEDS 3.1's cleanest version; SDPA's CPU fast path needs Dq == Dh),
    ``router`` (``"maw.soft"``; any registered ``maw.router``), ``router_options`` (dict passed to
    the router), ``per_head`` (False: one depth per example for all heads), ``router_hidden``
    (dim / 4), ``bias`` (False), ``dropout`` (attention dropout, 0), ``eval_chosen_depth`` (False),
    ``gather_rows`` (how the chosen depth's q, k are computed: True gathers each example's rows of
    the projection weight, False projects every depth and gathers the activations; None: True
    when T >= dim / 2, where it measured faster)."""

    def __init__(self, dim: int, *, heads: int, ctx: SeqContext, depths: int = 4, depth_dim: int | None = None,
                 router: str = "maw.soft", router_options: dict | None = None, per_head: bool = False,
                 router_hidden: int | None = None, bias: bool = False, dropout: float = 0.0,
                 eval_chosen_depth: bool = False, gather_rows: bool | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        if depths < 2:
            raise ValueError(f"depths must be >= 2, got {depths} (one depth is softmax attention with an idle router: "
                             f"use the softmax mixer)")
        self.heads, self.depths, self.causal, self.dropout = heads, int(depths), ctx.causal, float(dropout)
        self.head_dim = dim // heads
        self.depth_dim = int(depth_dim or self.head_dim)
        self.eval_chosen_depth = bool(eval_chosen_depth)
        self.gather_rows = gather_rows
        self.qk_width = 2 * heads * self.depths * self.depth_dim
        # One matmul: every depth's q, every depth's k (each laid out (H, D, Dq)), then v (H, Dh).
        self.qkv = nn.Linear(dim, self.qk_width + dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.router = build_router(router, dim, heads=heads, depths=self.depths, per_head=per_head,
                                   options={**(router_options or {}), **({"hidden": router_hidden} if router_hidden
                                                                           else {})})

    # -- routing input ----------------------------------------------------------------------

    def route_state(self, x: torch.Tensor, pad: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(state (B, S, dim), real (B, S) | None): S = 1 (mean over real tokens) or, causal, S = T
        (mean over the real tokens up to each position)."""
        if not self.causal:
            if pad is None:
                return x.mean(1, keepdim=True), None
            w = pad.to(x.dtype).unsqueeze(-1)                                            # (B, T, 1)
            return (x * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0), None
        if pad is None:
            count = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)[None, :, None]
            return x.cumsum(1) / count, None
        w = pad.to(x.dtype).unsqueeze(-1)
        return (x * w).cumsum(1) / w.cumsum(1).clamp_min(1.0), pad

    # -- attention --------------------------------------------------------------------------

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        mask = attention_mask(pad, self.causal, q.shape[-2], device=q.device)           # (B|1, 1, T, T) | None
        p = self.dropout if self.training else 0.0
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)

    def _chosen(self, x: torch.Tensor, choice: torch.Tensor, pad: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """The chosen depth's map per (example, head), ``choice`` (B, H): its output and v, each
        (B, H, T, Dh), and every depth's q, k when they were computed on the way (else None)."""
        B, T, dim = x.shape
        H, D, Dq, Dh = self.heads, self.depths, self.depth_dim, self.head_dim
        bias = self.qkv.bias
        if self.gather_rows if self.gather_rows is not None else T >= dim // 2:
            # The chosen depth's rows of the q, k projection, gathered per example and applied in
            # one batched matmul: softmax attention's FLOPs. The gather copies 2 dim^2 weights per
            # example, so short sequences (T < dim / 2) take the branch below.
            # row (s, h, d) of the (q | k, head, depth) blocks, for each example: (B * 2 * H,)
            rows = (torch.arange(2, device=x.device)[:, None] * H * D + torch.arange(H, device=x.device) * D)
            rows = (rows[None] + choice[:, None, :]).flatten()
            w_qk, w_v = self.qkv.weight.split([self.qk_width, dim])   # split, not slices: one cat backward
            w_sel = w_qk.view(2 * H * D, Dq * dim).index_select(0, rows).view(B, 2 * H * Dq, dim)
            qk = torch.bmm(x, w_sel.transpose(1, 2))                                    # (B, T, 2 H Dq)
            if bias is not None:
                b_qk, b_v = bias.split([self.qk_width, dim])
                qk = qk + b_qk.view(2 * H * D, Dq).index_select(0, rows).view(B, 1, 2 * H * Dq)
            v = F.linear(x, w_v, None if bias is None else b_v).view(B, T, H, Dh).transpose(1, 2)
            q, k = qk.view(B, T, 2, H, Dq).permute(2, 0, 3, 1, 4)                         # (B, H, T, Dq) each
            all_qk = None
        else:
            # Every depth's q, k (one matmul with v), then the chosen depth's activations.
            q_all, k_all, v = self.qkv(x).split([self.qk_width // 2, self.qk_width // 2, dim], -1)
            idx = choice[:, None, :, None, None].expand(B, T, H, 1, Dq)
            q, k = (t.view(B, T, H, D, Dq).gather(3, idx).squeeze(3).transpose(1, 2) for t in (q_all, k_all))
            v = v.view(B, T, H, Dh).transpose(1, 2)
            all_qk = (q_all, k_all)
        return self._sdpa(q, k, v, pad), v, all_qk

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        B, H, T, Dh = y.shape
        return self.proj(y.transpose(1, 2).reshape(B, T, H * Dh))

    def _straight_through(self, x: torch.Tensor, choice: torch.Tensor, weights: torch.Tensor,
                          pad: torch.Tensor | None) -> torch.Tensor:
        """One-hot weights (B, H, D) with a (straight-through) gradient, one route per example.

        The value is the chosen map's output y_c; the weights' gradient needs <g, O_d> for every
        depth d. So the chosen depth runs under autograd (its projection rows and its map, forward
        and backward), every depth runs once more without it (forward only: the full q, k
        projection and all D maps in one SDPA call), and ``sum_d (w_d - sg(w_d)) sg(O_d)`` (exactly
        0 in the forward) carries the weights' gradient. These are the gradients of weighting all D
        maps under autograd (whose q, k gradients are 0 for every unchosen depth), with one
        backward of projection and map instead of D."""
        B, T, dim = x.shape
        H, D, Dq, Dh = self.heads, self.depths, self.depth_dim, self.head_dim
        y, v, all_qk = self._chosen(x, choice, pad)                                      # (B, H, T, Dh) each
        with torch.no_grad():
            if all_qk is None:
                bias = None if self.qkv.bias is None else self.qkv.bias[: self.qk_width]
                q, k = F.linear(x, self.qkv.weight[: self.qk_width], bias).chunk(2, -1)
            else:
                q, k = (t.detach() for t in all_qk)
            q, k = (t.view(B, T, H, D, Dq).permute(0, 2, 3, 1, 4).reshape(B, H * D, T, Dq) for t in (q, k))
            v_all = v.unsqueeze(2).expand(B, H, D, T, Dh).reshape(B, H * D, T, Dh)
            every = self._sdpa(q, k, v_all, pad).view(B, H, D, T, Dh)                   # O_d for every d
        delta = (weights - weights.detach()).to(y.dtype)[..., None, None]                # (B, H, D, 1, 1), value 0
        return self._out(y + (delta * every).sum(2))

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        B, T, dim = x.shape
        H, D, Dq, Dh = self.heads, self.depths, self.depth_dim, self.head_dim
        state, real = self.route_state(x, pad)
        weights, choice = self.router(state, real)                                      # (B, S, R, D), (B, S, R)
        one_route = weights.shape[1] == 1
        if (choice is not None and one_route and not weights.requires_grad
                and (not getattr(self.router, "straight_through", True) or self.eval_chosen_depth
                     or probe_index() is not None)):
            return self._out(self._chosen(x, choice[:, 0].expand(B, H), pad)[0])
        if choice is not None and one_route and weights.requires_grad:
            return self._straight_through(x, choice[:, 0].expand(B, H), weights[:, 0].expand(B, H, D), pad)
        half = self.qk_width // 2
        q, k, v = self.qkv(x).split([half, half, dim], -1)     # split, not slices: its backward is one cat
        weights = weights.to(v.dtype)                          # under autocast the router's softmax is fp32
        q, k = (t.view(B, T, H, D, Dq).permute(0, 2, 3, 1, 4).reshape(B, H * D, T, Dq) for t in (q, k))
        v = v.view(B, T, H, 1, Dh).permute(0, 2, 3, 1, 4)                               # (B, H, 1, T, Dh)
        if one_route:
            # sum_d w_d A_d v = sum_d A_d (w_d v): the weights ride in the values (the copy of v
            # per depth that SDPA needs anyway), and the depths are summed after one SDPA call.
            v_all = v * weights[:, 0].expand(B, H, D)[..., None, None]                   # (B, H, D, T, Dh)
            y = self._sdpa(q, k, v_all.reshape(B, H * D, T, Dh), pad)
            y = y.view(B, H, D, T, Dh).sum(2)                                            # (B, H, T, Dh)
        else:
            # One route per position (causal): weight each query's output per depth.
            y = self._sdpa(q, k, v.expand(B, H, D, T, Dh).reshape(B, H * D, T, Dh), pad)
            w = weights.expand(B, T, H, D).permute(0, 2, 3, 1)[..., None]                # (B, H, D, T, 1)
            y = (y.view(B, H, D, T, Dh) * w).sum(2)                                      # (B, H, T, Dh)
        return self._out(y)
