"""Log-mel features in plain torch (torch.stft and a triangular mel filterbank; no torchaudio)."""
from __future__ import annotations

import math

import torch


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """HTK mel scale."""
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int) -> torch.Tensor:
    """Triangular filters (n_fft // 2 + 1, n_mels), equally spaced on the mel scale from 0 Hz to Nyquist."""
    n_bins = n_fft // 2 + 1
    freqs = torch.linspace(0.0, sample_rate / 2, n_bins, dtype=torch.float64)              # (n_bins,)
    top = hz_to_mel(torch.tensor(sample_rate / 2, dtype=torch.float64))
    edges = mel_to_hz(torch.linspace(0.0, float(top), n_mels + 2, dtype=torch.float64))   # (n_mels + 2,)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]                             # each (n_mels,)
    rising = (freqs[:, None] - lower) / (centre - lower)                                  # (n_bins, n_mels)
    falling = (upper - freqs[:, None]) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


def frame_count(n_samples: int, hop: int) -> int:
    """Frames torch.stft(center=True) gives for a signal of ``n_samples``."""
    return n_samples // hop + 1


def log_mel(waves: torch.Tensor, sample_rate: int, *, n_mels: int, n_fft: int, hop: int) -> torch.Tensor:
    """Log-mel energies of mono signals (..., S) -> (..., frames, n_mels), frames = S // hop + 1.
    Batch many signals in one call: torch.stft's per-call cost dwarfs a short clip's FFTs."""
    window = torch.hann_window(n_fft)
    spec = torch.stft(waves, n_fft, hop_length=hop, window=window, center=True, return_complex=True)
    power = spec.abs() ** 2                                                               # (..., n_bins, frames)
    mel = mel_filterbank(n_mels, n_fft, sample_rate).T @ power                            # (..., n_mels, frames)
    return torch.log(mel + 1e-6).transpose(-1, -2)                                        # (..., frames, n_mels)


def normalise(features: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """Per-utterance mean and variance normalisation per mel bin over real frames: (B, F, M) with
    mask (B, F) -> (B, F, M), padded frames 0. Removes most of a speaker's and a microphone's
    constant colouring, which matters with few training speakers."""
    w = pad[:, :, None].to(features.dtype)                                                # (B, F, 1)
    n = w.sum(1, keepdim=True).clamp_min(1.0)                                             # (B, 1, 1)
    mean = (features * w).sum(1, keepdim=True) / n                                        # (B, 1, M)
    var = (((features - mean) * w) ** 2).sum(1, keepdim=True) / n
    return (features - mean) / var.sqrt().clamp_min(1e-3) * w


def seconds_to_frames(seconds: float, sample_rate: int, hop: int) -> int:
    return frame_count(int(math.ceil(seconds * sample_rate)), hop)


def band_mask(size: int, width: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    """One random band per row: bool (batch, size), True inside a band of 0..width positions."""
    w = torch.randint(0, width + 1, (batch, 1), generator=gen)                            # (B, 1)
    start = (torch.rand(batch, 1, generator=gen) * (size - w + 1)).long()                 # (B, 1)
    pos = torch.arange(size)[None, :]                                                     # (1, size)
    return (pos >= start) & (pos < start + w)


def spec_augment(features: torch.Tensor, gen: torch.Generator, *, n_masks: int, freq_width: int,
                 time_width: int) -> torch.Tensor:
    """SpecAugment's masking on normalised features (B, F, M): ``n_masks`` mel bands and
    ``n_masks`` time spans per utterance set to 0 (the per-utterance mean), so the model cannot
    lean on one speaker's formants or on a single frame."""
    B, T, M = features.shape
    drop = torch.zeros(B, T, M, dtype=torch.bool)
    for _ in range(n_masks):
        drop |= band_mask(M, freq_width, B, gen)[:, None, :]                              # (B, 1, M)
        drop |= band_mask(T, time_width, B, gen)[:, :, None]                              # (B, F, 1)
    return features.masked_fill(drop, 0.0)
