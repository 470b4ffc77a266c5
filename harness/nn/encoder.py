"""Bidirectional encoder for sequence classification, pair classification and re-ranking.

Pair tasks (TaskMeta.input == "token_pairs") pass ``segments`` (B, T) in {0, 1}; re-ranking is
classification with one output (a relevance score).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.nn.blocks import BackboneConfig, block_stack, init_backbone
from harness.nn.context import SeqContext
from harness.nn.masks import masked_mean
from harness.specs import TaskMeta


@dataclass
class EncoderConfig(BackboneConfig):
    pooling: str = "cls"   # "cls" | "mean"

    def __post_init__(self) -> None:
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', not {self.pooling!r}")


class Encoder(nn.Module):
    def __init__(self, meta: TaskMeta, cfg: EncoderConfig, mixer: str, mixer_options: dict[str, Any] | None = None):
        super().__init__()
        if not meta.vocab_size or not meta.max_len or not meta.num_classes:
            raise ValueError("the encoder model needs a token task with vocab_size, max_len and num_classes")
        self.pooling = cfg.pooling
        n = meta.max_len + (cfg.pooling == "cls")
        ctx = SeqContext(max_len=n, causal=False)
        self.tok_embed = nn.Embedding(meta.vocab_size, cfg.dim)
        self.pos_embed = nn.Embedding(n, cfg.dim)
        self.seg_embed = nn.Embedding(2, cfg.dim) if meta.input == "token_pairs" else None
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if cfg.pooling == "cls" else None
        self.blocks = block_stack(cfg, ctx, mixer, mixer_options)
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, meta.num_classes, bias=False)
        init_backbone(self)

    def forward(self, tokens: torch.Tensor, pad: torch.Tensor | None = None,
                segments: torch.Tensor | None = None) -> torch.Tensor:
        x = self.tok_embed(tokens)                                   # (B, T, D)
        if self.seg_embed is not None and segments is not None:
            x = x + self.seg_embed(segments)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1)   # (B, 1 + T, D)
            if pad is not None:
                pad = torch.cat([pad.new_ones(pad.shape[0], 1), pad], 1)
        x = x + self.pos_embed(torch.arange(x.shape[1], device=x.device))
        for block in self.blocks:
            x = block(x, pad)
        x = self.norm(x)
        pooled = x[:, 0] if self.cls is not None else masked_mean(x, pad)    # (B, D)
        return self.head(pooled)                                     # (B, K)


def build_encoder(meta: TaskMeta, *, mixer: str, mixer_options: dict[str, Any] | None = None,
                  **config: Any) -> Encoder:
    return Encoder(meta, EncoderConfig(**config), mixer, mixer_options)
