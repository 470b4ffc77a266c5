"""The static sequence context every mixer is built with."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SeqContext:
    """Static per model. ``grid`` is the (h, w) patch grid of image models, row-major."""

    max_len: int
    causal: bool = False
    grid: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.grid is not None and self.grid[0] * self.grid[1] != self.max_len:
            raise ValueError(f"grid {self.grid} does not hold max_len={self.max_len} tokens")
