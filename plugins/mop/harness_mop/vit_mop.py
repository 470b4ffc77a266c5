"""ViT-MoP: the harness ViT encoder, then one MoP spatial gate on the patch grid before mean pooling.

Extra parameters over ``vit`` with the same config (D = dim, V = views, K = kernels,
hid = max(8, V + K)):

    V*D + 9*V*16 + 16*K + (V+K)*hid + 2*hid + 2 + 2

(views linear, 3x3 and 1x1 kernel convs, fusion convs with the last one's 2 biases, two alphas):
1,972 at D = 224, V = 5, K = 3, as SEEDS 1.2 states.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from harness.nn.vit import ViT, ViTConfig
from harness.specs import TaskMeta
from harness_mop.token_gates import GridGate


def extra_params(dim: int, views: int = 5, kernels: int = 3) -> int:
    """The closed form above."""
    hid = max(8, views + kernels)
    return views * dim + 9 * views * 16 + 16 * kernels + (views + kernels) * hid + 2 * hid + 2 + 2


@dataclass
class ViTMoPConfig(ViTConfig):
    """The vit's config keys and the gate's."""

    views: int = 5
    kernels: int = 3


class ViTMoP(ViT):
    def __init__(self, meta: TaskMeta, cfg: ViTMoPConfig, mixer: str, mixer_options: dict[str, Any] | None = None):
        super().__init__(meta, cfg, mixer, mixer_options)
        self.mop = GridGate(cfg.dim, self.grid, cfg.views, cfg.kernels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.mop(self.features(images))                       # (B, N, D), every patch gated
        return self.head(x.mean(1))                               # (B, K)

    @torch.no_grad()
    def get_gate_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """gate (B, 1, gh, gw), views (B, V, gh, gw), kernels (B, K, gh, gw)."""
        return self.mop.maps(self.features(images))


def build_vit_mop(meta: TaskMeta, *, mixer: str = "softmax", mixer_options: dict[str, Any] | None = None,
                  **config: Any) -> ViTMoP:
    return ViTMoP(meta, ViTMoPConfig(**config), mixer, mixer_options)
