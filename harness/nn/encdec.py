"""Encoder-decoder for speech recognition: conv subsampler + bidirectional encoder over log-mel
frames, causal character decoder with cross-attention, tied output head, greedy decoding.

Both self-attentions are the registered mixer under test (encoder: bidirectional with the frame
padding mask; decoder: causal). Cross-attention is plain multi-head attention in every variant,
so a comparison varies the mixer only.

Training adds a CTC loss on the encoder (``ctc_weight``, joint CTC-attention training as in Kim,
Hori and Watanabe 2017): a cross-attention decoder learns its alignment slowly from scratch, and
the monotonic CTC objective teaches the encoder where each character is within a few hundred
steps. It is reported through ``harness.nn.report_loss`` (logged as ``train/aux/ctc``); decoding
and evaluation use the attention decoder only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.nn.aux import report_loss
from harness.nn.blocks import BackboneConfig, Block, block_stack, init_backbone
from harness.nn.context import SeqContext
from harness.specs import TaskMeta

SUBSAMPLE = 4                     # two stride-2 convolutions
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2  # the character vocabulary's special tokens (harness.tasks.audio)


@dataclass
class EncDecConfig(BackboneConfig):
    """``depth`` is the encoder's block count; ``decoder_depth`` the decoder's."""

    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 2.0
    decoder_depth: int = 2
    ctc_weight: float = 0.3       # 0: no CTC head, attention loss only


def subsampled_pad(pad: torch.Tensor) -> torch.Tensor:
    """Frame mask (B, F) -> encoder-position mask (B, ceil(ceil(F/2)/2)): a kernel-3, stride-2,
    padding-1 conv maps n real frames to ceil(n/2) real outputs."""
    lengths = pad.sum(1)                                             # (B,)
    n_out = pad.shape[1]
    for _ in range(2):
        lengths, n_out = (lengths + 1) // 2, (n_out + 1) // 2
    return torch.arange(n_out, device=pad.device)[None, :] < lengths[:, None]   # (B, F')


class ConvSubsampler(nn.Module):
    """Two Conv1d(kernel 3, stride 2) over time: (B, F, M) -> (B, F/4, D). Padded frames are zeroed
    before each conv, so a real output never reads padding content (only the zeros an unpadded
    sequence of the same length would see at its edge)."""

    def __init__(self, features: int, dim: int):
        super().__init__()
        self.conv1 = nn.Conv1d(features, dim, 3, stride=2, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        lengths = pad.sum(1)                                         # (B,)
        h = x.masked_fill(~pad[:, :, None], 0.0).transpose(1, 2)     # (B, M, F)
        h = F.gelu(self.conv1(h))                                    # (B, D, F/2)
        lengths = (lengths + 1) // 2
        keep = torch.arange(h.shape[2], device=h.device)[None, :] < lengths[:, None]   # (B, F/2)
        h = F.gelu(self.conv2(h * keep[:, None, :]))                 # (B, D, F/4)
        return h.transpose(1, 2)                                     # (B, F/4, D)


class CrossAttention(nn.Module):
    """Plain multi-head attention from decoder queries to encoder keys, masking padded keys."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_pad: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        S, H = memory.shape[1], self.heads
        q = self.q(x).view(B, T, H, D // H).transpose(1, 2)                          # (B, H, T, Dh)
        k, v = self.kv(memory).view(B, S, 2, H, D // H).permute(2, 0, 3, 1, 4)       # each (B, H, S, Dh)
        mask = memory_pad[:, None, None, :]                                          # (B, 1, 1, S)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)                  # (B, H, T, Dh)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))                         # (B, T, D)


class DecoderBlock(Block):
    """Pre-LN ``x + mixer(norm(x))`` (causal), ``x + cross(norm(x), memory)``, ``x + mlp(norm(x))``.
    A Block subclass, so init_backbone leaves the mixer's own initialisation alone."""

    def __init__(self, dim: int, *, heads: int, mlp_ratio: float, ctx: SeqContext, mixer: str,
                 mixer_options: dict[str, Any] | None = None):
        super().__init__(dim, heads=heads, mlp_ratio=mlp_ratio, ctx=ctx, mixer=mixer, mixer_options=mixer_options)
        self.norm_cross = nn.LayerNorm(dim)
        self.cross = CrossAttention(dim, heads)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_pad: torch.Tensor) -> torch.Tensor:
        # decoder padding trails the real tokens, so causal attention alone keeps it out of real outputs
        x = x + self.mixer(self.norm1(x), None)                                      # (B, T, D)
        x = x + self.cross(self.norm_cross(x), memory, memory_pad)
        return x + self.mlp(self.norm2(x))


class EncDec(nn.Module):
    def __init__(self, meta: TaskMeta, cfg: EncDecConfig, mixer: str, mixer_options: dict[str, Any] | None = None):
        super().__init__()
        if not (meta.features and meta.max_frames and meta.vocab_size and meta.max_len):
            raise ValueError("the encdec model needs an audio task with features, max_frames, vocab_size and max_len")
        self.max_len = meta.max_len
        enc_len = -(-meta.max_frames // SUBSAMPLE)
        self.subsample = ConvSubsampler(meta.features, cfg.dim)
        self.enc_pos = nn.Embedding(enc_len, cfg.dim)
        self.encoder = block_stack(cfg, SeqContext(max_len=enc_len, causal=False), mixer, mixer_options)
        self.enc_norm = nn.LayerNorm(cfg.dim)
        self.tok_embed = nn.Embedding(meta.vocab_size, cfg.dim)
        self.dec_pos = nn.Embedding(meta.max_len, cfg.dim)
        dec_ctx = SeqContext(max_len=meta.max_len, causal=True)
        self.decoder = nn.ModuleList(
            DecoderBlock(cfg.dim, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, ctx=dec_ctx, mixer=mixer,
                         mixer_options=mixer_options) for _ in range(cfg.decoder_depth))
        self.dec_norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, meta.vocab_size, bias=False)
        self.ctc_weight = cfg.ctc_weight
        self.ctc_head = nn.Linear(cfg.dim, meta.vocab_size) if cfg.ctc_weight > 0 else None
        init_backbone(self)
        self.head.weight = self.tok_embed.weight  # tied

    def encode(self, features: torch.Tensor, feature_pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, F, M) log-mel frames, (B, F) bool -> memory (B, S, D) and its mask (B, S), S = ceil(F/4)."""
        x = self.subsample(features, feature_pad)                                    # (B, S, D)
        pad = subsampled_pad(feature_pad)                                            # (B, S)
        x = x + self.enc_pos(torch.arange(x.shape[1], device=x.device))
        return self.enc_norm(self.run_encoder(x, pad, features, feature_pad)), pad

    def run_encoder(self, x: torch.Tensor, pad: torch.Tensor, features: torch.Tensor,
                    feature_pad: torch.Tensor) -> torch.Tensor:
        """The encoder blocks over x (B, S, D) with its mask (B, S). ``features`` / ``feature_pad``
        (the log-mel input) are for subclasses whose blocks read them (mop.whisper's mel gate)."""
        for block in self.encoder:
            x = block(x, pad)
        return x

    def decode(self, tokens: torch.Tensor, memory: torch.Tensor, memory_pad: torch.Tensor) -> torch.Tensor:
        """Teacher-forced decoder: tokens (B, T) starting with bos -> logits (B, T, V)."""
        x = self.tok_embed(tokens) + self.dec_pos(torch.arange(tokens.shape[1], device=tokens.device))   # (B, T, D)
        for block in self.decoder:
            x = block(x, memory, memory_pad)
        return self.head(self.dec_norm(x))                                           # (B, T, V)

    def forward(self, features: torch.Tensor, feature_pad: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        memory, memory_pad = self.encode(features, feature_pad)
        if self.training and self.ctc_head is not None:
            report_loss(self, "ctc", self.ctc_weight * self.ctc_loss(memory, memory_pad, tokens))
        return self.decode(tokens, memory, memory_pad)                               # (B, T, V)

    def ctc_loss(self, memory: torch.Tensor, memory_pad: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """CTC of the encoder's per-position character distribution (blank = PAD_ID) against the
        characters in the decoder's input tokens (bos, eos and padding dropped); mean per target."""
        log_probs = F.log_softmax(self.ctc_head(memory).float(), -1).transpose(0, 1)   # (S, B, V)
        chars = tokens >= 3                                                          # (B, T) character positions
        # characters first in each row (a stable sort keeps their order), the rest cut by length
        order = torch.sort((~chars).to(torch.int8), dim=1, stable=True).indices
        targets = torch.gather(tokens, 1, order)                                     # (B, T)
        return F.ctc_loss(log_probs, targets, memory_pad.sum(1), chars.sum(1), blank=PAD_ID,
                          reduction="mean", zero_infinity=True)

    @torch.no_grad()
    def greedy(self, features: torch.Tensor, feature_pad: torch.Tensor, max_new: int | None = None) -> torch.Tensor:
        """Arg-max decoding from bos until every row has produced eos or ``max_new`` tokens
        (default: the decoder's positions minus bos). Returns (B, n <= max_new) token ids, bos
        excluded; after a row's eos every token is PAD_ID."""
        limit = self.max_len - 1 if max_new is None else min(max_new, self.max_len - 1)
        memory, memory_pad = self.encode(features, feature_pad)
        out = torch.full((features.shape[0], 1), BOS_ID, dtype=torch.long, device=features.device)   # (B, 1)
        done = torch.zeros(features.shape[0], dtype=torch.bool, device=features.device)              # (B,)
        for _ in range(limit):
            # the whole prefix is re-run each step: not every mixer has a KV cache
            nxt = self.decode(out, memory, memory_pad)[:, -1].argmax(-1)                          # (B,)
            nxt = nxt.masked_fill(done, PAD_ID)
            out = torch.cat([out, nxt[:, None]], dim=1)
            done = done | (nxt == EOS_ID)
            if bool(done.all()):
                break
        return out[:, 1:]


def build_encdec(meta: TaskMeta, *, mixer: str, mixer_options: dict[str, Any] | None = None,
                 **config: Any) -> EncDec:
    return EncDec(meta, EncDecConfig(**config), mixer, mixer_options)


__all__ = ["EncDec", "EncDecConfig", "build_encdec", "subsampled_pad", "SUBSAMPLE", "PAD_ID", "BOS_ID", "EOS_ID"]
