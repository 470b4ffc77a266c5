"""The end of thinking: the delimiter matched as a whole token sequence.

The reference ended thinking at ANY single BPE piece of "</reasoning>" or "<answer>" (one "<" or
">" sufficed; SEEDS 5.4.3). Here a path leaves thinking only once its generated tokens end with
the complete delimiter sequence; the state per path is a window of its last len(delimiter)
tokens, compared on the device (no host round trip per step).
"""
from __future__ import annotations

from typing import Sequence

import torch


class DelimiterMatcher:
    """Per path: has the delimiter appeared yet? ``push(tokens (R,))`` after each sampled token
    returns the paths that completed it with this token; ``seen`` (R,) accumulates."""

    def __init__(self, delimiter: Sequence[int], rows: int, device: torch.device | str = "cpu"):
        if len(delimiter) == 0:
            raise ValueError("the delimiter needs at least one token")
        self.delimiter = torch.as_tensor(list(delimiter), dtype=torch.long, device=device)   # (Ld,)
        self.window = torch.full((rows, len(delimiter)), -1, dtype=torch.long, device=device)  # (R, Ld)
        self.seen = torch.zeros(rows, dtype=torch.bool, device=device)                        # (R,)

    def push(self, tokens: torch.Tensor) -> torch.Tensor:
        self.window = torch.cat([self.window[:, 1:], tokens[:, None]], dim=1)                 # (R, Ld)
        now = (self.window == self.delimiter).all(-1)                                         # (R,)
        self.seen |= now
        return now


def delimiter_count(tokens: Sequence[int], delimiter: Sequence[int]) -> int:
    """Occurrences of the delimiter in a token list (overlaps counted: '#####' holds '####' twice,
    so repeating a '#' counts as repeating the delimiter)."""
    d, t = list(delimiter), list(tokens)
    return sum(t[i:i + len(d)] == d for i in range(len(t) - len(d) + 1))
