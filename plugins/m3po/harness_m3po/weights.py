"""The one attention-weight computation every gate shares, and its statistics.

    valid_ij = active_i and active_j and i != j          (a path that left thinking neither sends nor receives)
    z        = S, or S z-scored over each row's valid entries (calibration = "zscore")
    A_i.     = softmax_j(z_ij / T) over valid j;  A_i. = 0 when row i has no valid peer

Invalid pairs get -inf before the softmax, as the reference code does (the paper writes S = 0,
which would still give an exited path some weight; SEEDS 5.4.5). Calibration exists because the
raw similarities live on very different scales (raw_dot ~ 1e-3, scaled_dot ~ 1e-5 at Qwen's V):
at one temperature they differ in sharpness more than in what they measure (SEEDS 5.4.8).

Statistics are over valid rows and pairs only (the reference averaged in the all-zero rows of
inactive paths, SEEDS 5.4.10). They are accumulated as tensors (sums and counts) across a
rollout's steps and read once: no host sync per step.
"""
from __future__ import annotations

import torch

CALIBRATIONS = ("none", "zscore")
STAT_NAMES = ("attention_entropy", "attention_max", "attention_variance", "similarity_mean", "similarity_std")


def valid_pairs(active: torch.Tensor) -> torch.Tensor:
    """active (G, N) bool -> valid (G, N, N): both paths active, off the diagonal."""
    N = active.shape[-1]
    eye = torch.eye(N, dtype=torch.bool, device=active.device)
    return active[:, :, None] & active[:, None, :] & ~eye


def zscore_rows(S: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(S - row mean) / row std over each row's valid entries (G, N, N); one valid entry -> 0."""
    w = valid.to(S.dtype)
    count = w.sum(-1, keepdim=True).clamp_min(1.0)                        # (G, N, 1)
    mean = (S * w).sum(-1, keepdim=True) / count
    var = (((S - mean) * w) ** 2).sum(-1, keepdim=True) / count
    # clamp, not + eps: raw_dot's spread can be ~1e-5, which an additive eps would swamp
    return (S - mean) / var.clamp_min(1e-20).sqrt()


def attention_weights(S: torch.Tensor, active: torch.Tensor, temperature: float, calibration: str = "none",
                      connects: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarities S (G, N, N) and thinking mask active (G, N) -> (A (G, N, N), valid (G, N, N)).
    Rows of A sum to 1 where the row has a valid peer, else 0. ``connects=False`` (the ``none``
    ablation) makes every pair invalid."""
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {', '.join(CALIBRATIONS)}, not {calibration!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    valid = valid_pairs(active) if connects else torch.zeros_like(S, dtype=torch.bool)
    z = zscore_rows(S, valid) if calibration == "zscore" else S
    has_peer = valid.any(-1, keepdim=True)                                # (G, N, 1)
    # rows without a valid peer get finite logits so neither softmax nor its backward sees NaN
    logits = (z / temperature).masked_fill(~valid, float("-inf")).masked_fill(~has_peer, 0.0)
    A = torch.softmax(logits, dim=-1) * has_peer                          # (G, N, N)
    return A, valid


class GateStats:
    """Running sums over a rollout's steps; ``means()`` -> the five statistics as 0-d tensors."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}

    def _add(self, key: str, value: torch.Tensor) -> None:
        self.sums[key] = self.sums[key] + value if key in self.sums else value

    @torch.no_grad()
    def add(self, S: torch.Tensor, A: torch.Tensor, valid: torch.Tensor) -> None:
        w = valid.to(A.dtype)                                             # (G, N, N)
        row = valid.any(-1).to(A.dtype)                                   # (G, N): rows with a peer
        count = w.sum(-1).clamp_min(1.0)                                  # (G, N)
        entropy = -(torch.xlogy(A, A)).sum(-1)                            # (G, N)
        variance = (((A - 1.0 / count[..., None]) * w) ** 2).sum(-1) / count
        self._add("rows", row.sum())
        self._add("entropy", (entropy * row).sum())
        self._add("max", (A.amax(-1) * row).sum())
        self._add("variance", (variance * row).sum())
        s = S.detach().to(A.dtype)
        self._add("pairs", w.sum())
        self._add("sim", (s * w).sum())
        self._add("sim_sq", (s * s * w).sum())

    def means(self) -> dict[str, torch.Tensor]:
        if not self.sums:
            return {}
        rows, pairs = self.sums["rows"].clamp_min(1.0), self.sums["pairs"].clamp_min(1.0)
        mean = self.sums["sim"] / pairs
        var = (self.sums["sim_sq"] / pairs - mean ** 2).clamp_min(0.0)
        return {"attention_entropy": self.sums["entropy"] / rows, "attention_max": self.sums["max"] / rows,
                "attention_variance": self.sums["variance"] / rows, "similarity_mean": mean,
                "similarity_std": var.sqrt()}
