"""``m3po.policy``: the harness ``lm`` as a GRPO policy with M3PO cross-path mixing.

The model the runner builds and the trainer optimises. Its ``forward`` is the lm's (the runner
counts FLOPs on it); the training step is ``grpo_loss``, which a task calls from its ``loss`` (the
``arith`` task does): one multi-path rollout, rewards from the task, one GRPO loss, so each
rollout serves exactly one update (the trainer steps once per ``loss`` call).

Before training a task loads the shared pretrained weights (``load_pretrained``), which also
freezes a copy as the KL reference. The reference is kept outside the module tree: it is not
counted as parameters, not optimised and not moved by ``.to()`` (it is created on the lm's
device).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from harness.nn import report_stat
from harness.nn.lm import LM, LMConfig
from harness.specs import TaskMeta
from harness_m3po.gates import build_gate
from harness_m3po.grpo import grpo_loss, group_advantages
from harness_m3po.rollout import MixSettings, Rollout, policy_logprobs, rollout, sequence_logprobs
from harness_m3po.weights import CALIBRATIONS

_REFERENCE = "_m3po_reference"


@dataclass
class PolicyConfig:
    """The lm's keys (dim, depth, heads, mlp_ratio) and M3PO's: ``gate`` (a registered
    ``m3po.gate``), ``gate_options`` (passed to it), ``paths`` N per prompt, ``lam`` (mixing
    weight, paper 0.1), ``temperature`` (of the gate softmax, paper 0.1), ``calibration``
    ("none" | "zscore": similarities z-scored per row before the temperature), ``beta`` (KL
    weight, paper 0.005)."""

    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    gate: str = "cosine"
    gate_options: dict[str, Any] = field(default_factory=dict)
    paths: int = 4
    lam: float = 0.1
    temperature: float = 0.1
    calibration: str = "none"
    beta: float = 0.005

    def __post_init__(self) -> None:
        if self.paths < 2:
            raise ValueError(f"paths must be >= 2 (GRPO compares paths within a group), got {self.paths}")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {self.lam}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {', '.join(CALIBRATIONS)}, not {self.calibration!r}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")

    def lm_config(self) -> dict[str, Any]:
        return {"dim": self.dim, "depth": self.depth, "heads": self.heads, "mlp_ratio": self.mlp_ratio}


class M3POPolicy(nn.Module):
    def __init__(self, meta: TaskMeta, cfg: PolicyConfig, mixer: str, mixer_options: dict[str, Any] | None = None):
        super().__init__()
        self.cfg, self.mixer, self.mixer_options = cfg, mixer, dict(mixer_options or {})
        self.lm = LM(meta, LMConfig(**cfg.lm_config()), mixer, mixer_options)
        if not self.lm.supports_kv_cache:
            raise ValueError(f"m3po.policy decodes with a KV cache; mixer {mixer!r} has no forward_cached")
        self.gate = build_gate(cfg.gate, meta.vocab_size, cfg.gate_options)
        self.mix = MixSettings(self.gate, cfg.paths, cfg.lam, cfg.temperature, cfg.calibration)
        self.max_len = meta.max_len

    def forward(self, tokens: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        return self.lm(tokens, pad)                                                  # (B, T, V)

    def architecture(self) -> dict[str, Any]:
        """What a pretrained checkpoint must match: the lm's shape and mixer."""
        return {**self.cfg.lm_config(), "mixer": self.mixer, "mixer_options": self.mixer_options,
                "max_len": self.max_len, "vocab_size": self.lm.tok_embed.num_embeddings}

    # -- the reference and the pretrained start --------------------------------------------------

    @property
    def reference(self) -> LM | None:
        return self.__dict__.get(_REFERENCE)

    def load_pretrained(self, state: dict[str, torch.Tensor]) -> None:
        """Start from ``state`` (an lm state dict) and freeze a copy of it as the KL reference."""
        self.lm.load_state_dict(state)
        ref = copy.deepcopy(self.lm).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        self.__dict__[_REFERENCE] = ref

    # -- decoding -----------------------------------------------------------------------------

    def rollout(self, prompts: torch.Tensor, *, max_new_tokens: int, delimiter: Sequence[int], eos: int,
                generator: torch.Generator | None = None) -> Rollout:
        return rollout(self.lm, self.mix, prompts, max_new_tokens=max_new_tokens, delimiter=delimiter, eos=eos,
                       generator=generator)

    @torch.no_grad()
    def greedy(self, prompts: torch.Tensor, *, max_new_tokens: int, eos: int) -> torch.Tensor:
        """Single-path greedy decoding (the paper's inference) with the KV cache: (B, P) -> (B, L)."""
        caches = self.lm.new_caches()
        logits = self.lm.forward_cached(self.lm.tok_embed(prompts), caches, 0)[:, -1]  # (B, V)
        out, finished = [], torch.zeros(len(prompts), dtype=torch.bool, device=prompts.device)
        for step in range(max_new_tokens):
            y = logits.argmax(-1)                                                    # (B,)
            out.append(y)
            finished = finished | (y == eos)
            if step == max_new_tokens - 1 or bool(finished.all()):
                break
            logits = self.lm.forward_cached(self.lm.tok_embed(y[:, None]), caches, prompts.shape[1] + step)[:, -1]
        return torch.stack(out, 1)

    # -- training -----------------------------------------------------------------------------

    def grpo_loss(self, prompts: torch.Tensor, reward: Callable[[torch.Tensor], torch.Tensor], *,
                  max_new_tokens: int, delimiter: Sequence[int], eos: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """One GRPO objective over N paths for each prompt (G, P). ``reward(completions (R, L))``
        -> (R,) rewards, path r answering prompt r // N. Reports reward, KL and gate statistics."""
        if self.reference is None:
            raise RuntimeError("m3po.policy has no reference: call load_pretrained(state) before training")
        was_training = self.training
        self.eval()  # sampling is the policy itself, without training-time noise
        ro = self.rollout(prompts, max_new_tokens=max_new_tokens, delimiter=delimiter, eos=eos, generator=generator)
        self.train(was_training)
        rewards = reward(ro.completions).to(ro.logprobs.dtype)                       # (R,)
        advantages = group_advantages(rewards.view(-1, self.cfg.paths)).view(-1)     # (R,)
        logp = policy_logprobs(self.lm, self.mix, ro)                                # (R, L)
        with torch.no_grad():
            ref_logp = sequence_logprobs(self.reference, ro, ro.inputs)              # (R, L)
        loss, kl = grpo_loss(logp, ref_logp, ro.mask, advantages, self.cfg.beta, max_new_tokens)
        report_stat(self, "reward", rewards.mean())
        report_stat(self, "kl", kl)
        report_stat(self, "completion_tokens", ro.mask.float().sum(-1).mean())
        report_stat(self, "thinking_tokens", ro.thinking.float().sum(-1).mean())
        if ro.mixed is not None:
            report_stat(self, "mixed_share", ro.mixed.float().mean())
        for name, value in ro.stats.items():
            report_stat(self, f"gate_{name}", value)
        return loss


def build_policy(meta: TaskMeta, *, mixer: str = "softmax", mixer_options: dict[str, Any] | None = None,
                 **config: Any) -> M3POPolicy:
    return M3POPolicy(meta, PolicyConfig(**config), mixer, mixer_options)
