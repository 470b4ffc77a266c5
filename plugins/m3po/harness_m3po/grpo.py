"""GRPO as in the M3PO paper (Eq. 7-8): group-normalised advantages, raw log-probabilities (no
PPO ratio, no clipping: every rollout serves one update, so the ratio would be 1), and a KL
penalty to a frozen reference with weight beta.

    A_i  = (R_i - mean_group R) / (std_group R + eps)
    loss = mean_i [ -A_i sum_t log pi(y_it) + beta sum_t KL_it ] / L_max

The per-token KL is the k3 estimator exp(r - l) - (r - l) - 1 (l, r: policy and reference
log-probabilities), >= 0 and unbiased. Sums over completion tokens are divided by the constant
``L_max`` (max new tokens), not by each sequence's own length: the paper's sum over t, scaled, and
no preference for short or long completions.
"""
from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """rewards (G, N) -> advantages (G, N); a group with equal rewards gets exactly 0."""
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, keepdim=True) if rewards.shape[-1] > 1 else torch.zeros_like(mean)
    return (rewards - mean) / (std + eps)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate (same shape as the inputs), >= 0."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def grpo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor,
              beta: float, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """logp, ref_logp, mask (R, L); advantages (R,) -> (loss, mean KL per sequence), scalars."""
    mask = mask.to(logp.dtype)
    pg = -(advantages.detach()[:, None] * logp * mask).sum(-1) / max_len        # (R,)
    kl = (kl_k3(logp, ref_logp.detach()) * mask).sum(-1) / max_len              # (R,)
    return (pg + beta * kl).mean(), kl.mean()
