"""Built-in metrics: ``fn(outputs, targets) -> float`` over a whole evaluation split."""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose arg-max class equals the label."""
    return (logits.argmax(-1) == labels).float().mean().item()


def loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cross-entropy in nats."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)).item()


def perplexity(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return math.exp(loss(logits, labels))


def bpc(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Bits per character: cross-entropy in bits."""
    return loss(logits, labels) / math.log(2)


def wer(hypotheses: list[str], references: list[str]) -> float:
    """Word error rate over a whole split (jiwer: total edits / total reference words)."""
    import jiwer

    return float(jiwer.wer(list(references), list(hypotheses)))


def cer(hypotheses: list[str], references: list[str]) -> float:
    """Character error rate over a whole split (jiwer: total edits / total reference characters)."""
    import jiwer

    return float(jiwer.cer(list(references), list(hypotheses)))
