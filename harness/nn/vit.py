"""Vision transformer: patch embedding, learned positions, pre-LN blocks, mean-pool head.

Parameter count (no biases except LayerNorm), with D = dim, L = depth, h = int(D * mlp_ratio),
N = number of patches, C = channels, p = patch, K = classes:
    L * (4 D^2 + 2 D h + 4 D) + C p^2 D + N D + 2 D + D K
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.nn.blocks import BackboneConfig, block_stack, init_backbone
from harness.nn.context import SeqContext
from harness.specs import TaskMeta


@dataclass
class ViTConfig(BackboneConfig):
    patch: int = 4


class ViT(nn.Module):
    def __init__(self, meta: TaskMeta, cfg: ViTConfig, mixer: str, mixer_options: dict[str, Any] | None = None):
        super().__init__()
        if meta.image_size is None:
            raise ValueError("the vit model needs an image task (TaskMeta.image_size)")
        h, w = meta.image_size
        if h % cfg.patch or w % cfg.patch:
            raise ValueError(f"image size {h}x{w} is not divisible by patch {cfg.patch}")
        self.grid = (h // cfg.patch, w // cfg.patch)
        n = self.grid[0] * self.grid[1]
        ctx = SeqContext(max_len=n, causal=False, grid=self.grid)
        self.patch_embed = nn.Conv2d(meta.channels, cfg.dim, cfg.patch, cfg.patch, bias=False)
        self.pos_embed = nn.Parameter(torch.zeros(1, n, cfg.dim))
        self.pos_embed._harness_embedding = True  # excluded from non-embedding counts
        self.blocks = block_stack(cfg, ctx, mixer, mixer_options)
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, meta.num_classes, bias=False)
        init_backbone(self)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)                  # (B, D, gh, gw)
        x = x.flatten(2).transpose(1, 2)              # (B, N, D), row-major over the grid
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)                           # (B, N, D)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).mean(1))  # (B, K)


def build_vit(meta: TaskMeta, *, mixer: str, mixer_options: dict[str, Any] | None = None, **config: Any) -> ViT:
    return ViT(meta, ViTConfig(**config), mixer, mixer_options)
