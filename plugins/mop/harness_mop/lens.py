"""Q/K lens bank: depthwise 3-tap convolutions over tokens, one per dilation, of view 1's q and k.

Each dilation d yields a filtered (q_d, k_d) pair and so one extra score map. All dilations and
both of q and k run as ONE grouped conv: every dilation's 3 taps are placed into a shared kernel of
width 2*max(d)+1 (the other taps are fixed zeros), so there is no loop over dilations.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LensBank(nn.Module):
    def __init__(self, head_dim: int, dilations: tuple[int, ...] = (1, 2), causal: bool = False):
        super().__init__()
        dilations = tuple(int(d) for d in dilations)
        if not dilations or min(dilations) < 1:
            raise ValueError(f"lens dilations must be positive integers, not {dilations}")
        self.dk, self.n = head_dim, len(dilations)
        reach = max(dilations)
        self.width = 2 * reach + 1
        # Tap offsets per dilation: (-d, 0, +d) "same", or (-2d, -d, 0) causal (no future token).
        offsets = torch.tensor([[-2 * d, -d, 0] if causal else [-d, 0, d] for d in dilations])   # (L, 3)
        self.left = 2 * reach if causal else reach                # left padding of the input
        self.right = 0 if causal else reach
        place = F.one_hot(offsets + self.left, self.width).float()    # (L, 3, width)
        self.register_buffer("place", place, persistent=False)
        taps = 0.1 * torch.randn(2, self.n, head_dim, 3)          # (q|k, L, Dh, tap)
        taps[..., 2 if causal else 1] += 1.0                      # start near identity: tap at offset 0
        self.taps = nn.Parameter(taps)

    def no_weight_decay(self) -> set[str]:
        """The taps start at the identity filter: decay would pull the lens views' q and k to 0
        rather than to plain view 1 (harness.train.param_groups)."""
        return {"taps"}

    def forward(self, q: torch.Tensor, k: torch.Tensor, pad: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """q, k (B, H, T, Dh) -> q_lens, k_lens (B, H, L, T, Dh)."""
        B, H, T, dk = q.shape
        z = torch.cat([q, k], -1)                                 # (B, H, T, 2Dh)
        if pad is not None:
            z = z * pad[:, None, :, None].to(z.dtype)             # padded tokens act as the conv's zero padding
        # Channels-first by a real transpose; the reference's reshape(B*H, dk, N) scrambled tokens.
        z = z.transpose(-1, -2).reshape(B * H, 2 * dk, T)         # (BH, 2Dh, T)
        w = torch.einsum("sldt,ltk->sdlk", self.taps, self.place.to(self.taps.dtype))   # (2, Dh, L, width)
        w = w.reshape(2 * dk * self.n, 1, self.width)             # group (s, d) -> its L outputs
        out = F.conv1d(F.pad(z, (self.left, self.right)), w, groups=2 * dk)   # (BH, 2Dh*L, T)
        out = out.view(B, H, 2, dk, self.n, T).permute(2, 0, 1, 4, 5, 3)      # (2, B, H, L, T, Dh)
        return out[0], out[1]
