"""The project's one mask convention: ``pad`` is bool (B, T), True = real token."""
from __future__ import annotations

import torch


def attention_mask(pad: torch.Tensor | None, causal: bool, t_q: int, t_k: int | None = None,
                   device: torch.device | None = None) -> torch.Tensor | None:
    """Bool mask (B|1, 1, Tq, Tk), True = may attend, or None when nothing is masked.

    Queries are the last ``t_q`` of ``t_k`` positions (KV-cache decoding). Every query may attend
    to itself, so a padded query never sees an empty row (no NaN); real queries still never see
    padded keys, because a padded key is only visible to itself.
    """
    t_k = t_q if t_k is None else t_k
    if pad is None and not causal:
        return None
    device = pad.device if pad is not None else device
    q_pos = torch.arange(t_k - t_q, t_k, device=device)[:, None]   # (Tq, 1)
    k_pos = torch.arange(t_k, device=device)[None, :]              # (1, Tk)
    mask = (k_pos <= q_pos) if causal else torch.ones(t_q, t_k, dtype=torch.bool, device=device)
    mask = mask[None, None]                                        # (1, 1, Tq, Tk)
    if pad is not None:
        mask = mask & pad[:, None, None, :]                        # (B, 1, Tq, Tk)
    return mask | (k_pos == q_pos)[None, None]


def masked_mean(x: torch.Tensor, pad: torch.Tensor | None, dim: int = 1) -> torch.Tensor:
    """Mean of x (B, T, ...) over real tokens along ``dim``."""
    if pad is None:
        return x.mean(dim)
    w = pad.to(x.dtype).reshape(*pad.shape, *([1] * (x.dim() - 2)))
    return (x * w).sum(dim) / w.sum(dim).clamp_min(1.0)
