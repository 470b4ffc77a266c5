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
        return self._add_positions(self.tok_embed(tokens), offset)   # (B, T, D)

    def _add_positions(self, token_embeds: torch.Tensor, offset: int = 0) -> torch.Tensor:
        pos = torch.arange(offset, offset + token_embeds.shape[1], device=token_embeds.device)
        return token_embeds + self.pos_embed(pos)                    # (B, T, D)

    def forward(self, tokens: torch.Tensor | None, pad: torch.Tensor | None = None, *,
                token_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V) of ``tokens`` (B, T), or of ``token_embeds`` (B, T, D) given in place of the
        token embeddings (positions are still added here): inputs that are not rows of the embedding
        table, e.g. M3PO's blended embeddings."""
        if (tokens is None) == (token_embeds is None):
            raise ValueError("pass exactly one of tokens and token_embeds")
        x = self._embed(tokens) if token_embeds is None else self._add_positions(token_embeds)  # (B, T, D)
        for block in self.blocks:
            x = block(x, pad)
        return self.head(self.norm(x))                               # (B, T, V)

    def new_caches(self) -> list[dict[str, torch.Tensor]]:
        """One empty KV cache per block, for ``forward_cached``."""
        return [{} for _ in self.blocks]

    def forward_cached(self, token_embeds: torch.Tensor, caches: list[dict[str, torch.Tensor]],
                       offset: int) -> torch.Tensor:
        """Decoding step: the token embeddings of the new positions ``offset .. offset + t - 1``
        (B, t, D) -> their logits (B, t, V); ``caches`` (from ``new_caches``) hold every earlier
        position's keys and values, so a step costs O(T) attention, not a re-run of the prefix."""
        if offset + token_embeds.shape[1] > self.max_len:
            raise ValueError(f"positions up to {offset + token_embeds.shape[1]} exceed max_len={self.max_len}")
        return self.head(self.norm(self._hidden_cached(token_embeds, caches, offset)))  # (B, t, V)

    def _hidden_cached(self, token_embeds: torch.Tensor, caches: list[dict[str, torch.Tensor]],
                       offset: int) -> torch.Tensor:
        x = self._add_positions(token_embeds, offset)                # (B, t, D)
        for block, cache in zip(self.blocks, caches):
            x = block.forward_cached(x, cache)
        return x                                                     # (B, t, D)

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
        caches = self.new_caches()
        out, new = tokens, tokens
        for _ in range(max_new_tokens):
            if self.supports_kv_cache:
                x = self._hidden_cached(self.tok_embed(new), caches, out.shape[1] - new.shape[1])  # (B, t, D)
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
