"""Whisper-MoP: the harness encdec with a MoP gate from the log-mel spectrogram after the mixer of
every encoder block (SEEDS 1.5):

    x = x + mixer(norm1(x));  x = x * gate_l;  x = x + mlp(norm2(x))

gate_l (B, S, 1) comes from layer l's own ``MelGate`` over the raw log-mel image (B, 1, F, M):
1x1 conv 1 -> V views, k x k conv V -> K kernels, 1x1 fusion V+K -> 2, averaged over mel bins,
then over the subsampler's 4-frame windows so it lines up with the encoder's positions.

Departures from the reference, both fixes: the fused logits pass through a sigmoid and the alphas
through softplus / sigmoid, so the gate lies in (0, 1 + a_pos) and cannot flip a frame's sign
(the reference's gate was unbounded); and the comparison baseline is plain ``encdec``, not a
Whisper-MoP whose alphas start at zero but train (the reference's "baseline" became a MoP model).
Padded frames are zeroed before the convs and excluded from the window average, so a padded batch
gates its real positions as the unpadded one does. The gate reads the spectrogram, not hidden
states, as in the reference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.nn.blocks import Block
from harness.nn.encdec import SUBSAMPLE, EncDec, EncDecConfig
from harness.specs import TaskMeta


class MelGate(nn.Module):
    """Parameters: V + V*K*k*k + K + 2*(V+K) + 2 + 2 (views, kernels, fusion, two alphas)."""

    def __init__(self, views: int = 5, kernels: int = 3, kernel_size: int = 5):
        super().__init__()
        self.views = nn.Conv2d(1, views, 1, bias=False)
        self.kernels = nn.Conv2d(views, kernels, kernel_size, padding=kernel_size // 2)
        self.fuse = nn.Conv2d(views + kernels, 2, 1)
        nn.init.normal_(self.fuse.weight, std=0.02)
        nn.init.zeros_(self.fuse.bias)
        # With the fusion near 0.5, the gate starts at 1 + (softplus(0) - sigmoid(a_neg)) / 2 = 1:
        # a_neg = logit(log 2).
        self.alpha_pos = nn.Parameter(torch.tensor(0.0))
        self.alpha_neg = nn.Parameter(torch.tensor(math.log(math.log(2) / (1 - math.log(2)))))

    def forward(self, mel: torch.Tensor, frame_pad: torch.Tensor) -> torch.Tensor:
        """mel (B, F, M), frame_pad (B, F) bool -> per-frame gate (B, F)."""
        img = mel.masked_fill(~frame_pad[:, :, None], 0.0)[:, None]              # (B, 1, F, M)
        views = self.views(img)                                                   # (B, V, F, M)
        g = torch.sigmoid(self.fuse(torch.cat([views, self.kernels(views)], 1)))  # (B, 2, F, M)
        g = g.mean(-1)                                                            # (B, 2, F)
        return 1 + F.softplus(self.alpha_pos) * g[:, 0] - torch.sigmoid(self.alpha_neg) * g[:, 1]


def frames_to_positions(gate: torch.Tensor, frame_pad: torch.Tensor) -> torch.Tensor:
    """Per-frame gate (B, F) -> per-encoder-position gate (B, S, 1): the mean over each position's
    4-frame window of its real frames (1 where a window has none, i.e. a padded position)."""
    w = frame_pad.to(gate.dtype)
    total = F.avg_pool1d((gate * w)[:, None], SUBSAMPLE, SUBSAMPLE, ceil_mode=True)   # (B, 1, S)
    count = F.avg_pool1d(w[:, None], SUBSAMPLE, SUBSAMPLE, ceil_mode=True)
    mean = torch.where(count > 0, total / count.clamp_min(1e-9), torch.ones_like(total))
    return mean[:, 0, :, None]                                                        # (B, S, 1)


class GatedEncoderBlock(Block):
    def __init__(self, block: Block, gate: MelGate):
        # Adopt a built Block's modules rather than rebuilding (and re-initialising) them.
        nn.Module.__init__(self)
        self.norm1, self.mixer, self.norm2, self.mlp = block.norm1, block.mixer, block.norm2, block.mlp
        self.gate = gate

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None, gate: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x), pad)
        x = x * gate                                                              # (B, S, D)
        return x + self.mlp(self.norm2(x))


@dataclass
class WhisperMoPConfig(EncDecConfig):
    """The encdec's config keys and the mel gate's."""

    views: int = 5
    kernels: int = 3
    kernel_size: int = 5


class WhisperMoP(EncDec):
    def __init__(self, meta: TaskMeta, cfg: WhisperMoPConfig, mixer: str, mixer_options: dict[str, Any] | None = None):
        super().__init__(meta, cfg, mixer, mixer_options)
        self.encoder = nn.ModuleList(
            GatedEncoderBlock(b, MelGate(cfg.views, cfg.kernels, cfg.kernel_size)) for b in self.encoder)

    def run_encoder(self, x: torch.Tensor, pad: torch.Tensor, features: torch.Tensor,
                    feature_pad: torch.Tensor) -> torch.Tensor:
        for block in self.encoder:
            x = block(x, pad, frames_to_positions(block.gate(features, feature_pad), feature_pad))
        return x

    @torch.no_grad()
    def gate_maps(self, features: torch.Tensor, feature_pad: torch.Tensor) -> torch.Tensor:
        """Every layer's per-frame gate, (L, B, F): what the reference returned as ``gates``."""
        return torch.stack([block.gate(features, feature_pad) for block in self.encoder])


def build_whisper_mop(meta: TaskMeta, *, mixer: str = "softmax", mixer_options: dict[str, Any] | None = None,
                      **config: Any) -> WhisperMoP:
    return WhisperMoP(meta, WhisperMoPConfig(**config), mixer, mixer_options)
