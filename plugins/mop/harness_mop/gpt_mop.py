"""GPT-MoP: the harness LM with a causal, bounded MoP token gate after the mixer of every block.

    x = x + mixer(norm1(x));  x = gate(x);  x = x + mlp(norm2(x))

The LM's blocks are built by ``harness.nn.lm.LM`` and adopted into ``MoPBlock`` (same modules,
same initialisation), so embeddings, head, forward and generate() are the LM's own. Generation
keeps the KV cache when the mixer has one: the gate's only state is the views of its last
kernel_size - 1 tokens, stored in the block's cache next to the mixer's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from harness.nn.blocks import Block
from harness.nn.lm import LM, LMConfig
from harness.specs import TaskMeta
from harness_mop.token_gates import CausalTokenGate


class MoPBlock(Block):
    def __init__(self, block: Block, gate: CausalTokenGate):
        # Adopt a built Block's modules rather than rebuilding (and re-initialising) them.
        torch.nn.Module.__init__(self)
        self.norm1, self.mixer, self.norm2, self.mlp = block.norm1, block.mixer, block.norm2, block.mlp
        self.gate = gate

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x), pad)
        x, _ = self.gate(x, pad)
        return x + self.mlp(self.norm2(x))

    def forward_cached(self, x: torch.Tensor, cache: dict[str, torch.Tensor]) -> torch.Tensor:
        x = x + self.mixer.forward_cached(self.norm1(x), cache)
        x, cache["mop_views"] = self.gate(x, past=cache.get("mop_views"))
        return x + self.mlp(self.norm2(x))


@dataclass
class GPTMoPConfig(LMConfig):
    """The lm's config keys and the token gate's."""

    views: int = 5
    kernels: int = 3
    kernel_size: int = 3


class GPTMoP(LM):
    def __init__(self, meta: TaskMeta, cfg: GPTMoPConfig, mixer: str, mixer_options: dict[str, Any] | None = None):
        super().__init__(meta, cfg, mixer, mixer_options)
        self.blocks = torch.nn.ModuleList(
            MoPBlock(b, CausalTokenGate(cfg.dim, cfg.views, cfg.kernels, cfg.kernel_size)) for b in self.blocks)


def build_gpt_mop(meta: TaskMeta, *, mixer: str = "mop.quartet", mixer_options: dict[str, Any] | None = None,
                  **config: Any) -> GPTMoP:
    return GPTMoP(meta, GPTMoPConfig(**config), mixer, mixer_options)
