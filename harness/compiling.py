"""``torch.compile`` for the trainer (``train.compile``) and ``harness bench --compile``.

Compilation is paid on the first calls of each new graph (eval and train, forward and backward).
Both callers time those calls apart from step time: ``compile_events()`` counts what torch's
compiler has done so far, so a caller can tell whether a call compiled. A module that fails to
compile runs eager; the caller records why (``CompileFallback``) and goes on.
"""
from __future__ import annotations

from typing import Any

RECOMPILE_LIMIT = 64   # dynamo's default (8) silently runs eager after 8 graphs per code object


def compile_module(module: Any) -> Any:
    """``torch.compile(module, dynamic=False)``: static shapes (a bench case, a training batch), so
    every shape gets its own specialised kernels; a new batch size recompiles (counted by
    ``compile_events``). Raises the recompile limit, so many mixers of one class (the bench builds
    one per length) do not fall back to eager without a word."""
    import torch
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), RECOMPILE_LIMIT))
    return torch.compile(module, dynamic=False)


def compile_events() -> int:
    """Frames dynamo has compiled plus graphs inductor has built or loaded from its cache, so far
    in this process; it grows during any call that compiled (a backward graph compiles lazily, at
    its first backward). 0 where torch has no such counters."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover - torch without dynamo
        return 0
    inductor = counters.get("inductor", {})
    return int(counters.get("frames", {}).get("total", 0) + inductor.get("fxgraph_cache_miss", 0)
               + inductor.get("fxgraph_cache_hit", 0))


def describe_failure(exc: BaseException, limit: int = 300) -> str:
    """One line: the exception's type and the start of its message (compiler errors run to pages)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
