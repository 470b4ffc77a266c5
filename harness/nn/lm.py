"""Causal language model: token + learned position embeddings, pre-LN blocks, tied output head."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from harness.nn.blocks import BackboneConfig, block_stack, init_backbone
from harness.nn.context import SeqContext
from harness.specs import TaskMeta


@dataclass
class LMConfig(BackboneConfig):
    """The shared backbone keys; the lm adds none."""


class LM(nn.Module):
    def __init__(self, meta: TaskMeta, cfg: LMConfig, mixer: str, mixer_options: dict[str, Any] | None = None):
        super().__init__()
        if not meta.vocab_size or not meta.max_len:
            raise ValueError("the lm model needs a token task with vocab_size and max_len")
        self.max_len = meta.max_len
        ctx = SeqContext(max_len=meta.max_len, causal=True)
        self.tok_embed = nn.Embedding(meta.vocab_size, cfg.dim)
        self.pos_embed = nn.Embedding(meta.max_len, cfg.dim)
        self.blocks = block_stack(cfg, ctx, mixer, mixer_options)
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, meta.vocab_size, bias=False)
        init_backbone(self)
        self.head.weight = self.tok_embed.weight  # tied

    def _embed(self, tokens: torch.Tensor, offset: int = 0) -> torch.Tensor:
        pos = torch.arange(offset, offset + tokens.shape[1], device=tokens.device)
        return self.tok_embed(tokens) + self.pos_embed(pos)          # (B, T, D)

    def forward(self, tokens: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        x = self._embed(tokens)                                      # (B, T, D)
        for block in self.blocks:
            x = block(x, pad)
        return self.head(self.norm(x))                               # (B, T, V)

    @property
    def supports_kv_cache(self) -> bool:
        return all(hasattr(b.mixer, "forward_cached") for b in self.blocks)

    @torch.no_grad()
    def generate(self, tokens: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample continuations of tokens (B, T). Uses a KV cache when every mixer supports one,
        otherwise re-runs the (cropped) prefix each step."""
        if tokens.shape[1] + max_new_tokens > self.max_len and self.supports_kv_cache:
            raise ValueError(f"prompt + new tokens exceed max_len={self.max_len}")
        caches: list[dict[str, torch.Tensor]] = [{} for _ in self.blocks]
        out, new = tokens, tokens
        for _ in range(max_new_tokens):
            if self.supports_kv_cache:
                x = self._embed(new, offset=out.shape[1] - new.shape[1])
                for block, cache in zip(self.blocks, caches):
                    x = block.forward_cached(x, cache)
                logits = self.head(self.norm(x[:, -1]))              # (B, V)
            else:
                logits = self(out[:, -self.max_len:])[:, -1]         # (B, V)
            logits = logits / max(temperature, 1e-6)
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            new = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)  # (B, 1)
            out = torch.cat([out, new], dim=1)
        return out


def build_lm(meta: TaskMeta, *, mixer: str, mixer_options: dict[str, Any] | None = None, **config: Any) -> LM:
    return LM(meta, LMConfig(**config), mixer, mixer_options)
