"""Public contract checks for plugin authors.

``check_mixer("my.mixer", **options)`` builds a registered mixer at a tiny size and verifies the
mixer contract: construction on the meta device (the budget matcher counts there), output shape,
finite outputs and gradients, a non-zero gradient for every
parameter, no causal leak (when ``causal_ok``), no padding leak (when ``padding_ok``), token mixing,
determinism, and KV-cache decoding equal to a causal forward (when ``kv_cache``). A failure raises ``AssertionError`` naming the property and the measured deviation.
Call it from a plugin's tests; the core's own tests run it over every registered mixer.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

from harness.nn.aux import collect_aux
from harness.nn.blocks import build_mixer
from harness.nn.context import SeqContext
from harness.registry import mixer as mixer_spec

# Leak checks run in float64, where an exact mask leaves differences of 0 and a real leak of
# even exp(-30) is still visible.
LEAK_ATOL = 1e-9
MIX_ATOL = 1e-7


def _build(name: str, ctx: SeqContext, dim: int, heads: int, seed: int, options: dict[str, Any]) -> nn.Module:
    torch.manual_seed(seed)
    module = build_mixer(name, dim, heads=heads, ctx=ctx, **options).double()
    module.eval()  # dropout off: the checks compare deterministic forwards
    return module


def _fail(prop: str, detail: str) -> AssertionError:
    return AssertionError(f"{prop}: {detail}")


def _max_dev(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() if a.numel() else 0.0


def check_mixer(name: str, *, dim: int = 32, heads: int = 4, grid: tuple[int, int] = (4, 4), batch: int = 2,
                seed: int = 0, checks: tuple[str, ...] | None = None, **options: Any) -> dict[str, float]:
    """Check the mixer contract for mixer ``name`` built with ``options``.

    Returns the measured figures (max deviations, smallest gradient, parameter count) for reporting. ``checks``
    restricts the properties checked (names: meta, shape, finite, gradients, causal, padding, mixing,
    determinism, kv_cache); by default every property that applies to the mixer's capabilities is checked.
    """
    spec = mixer_spec(name)
    t = grid[0] * grid[1]
    # Every context carries the grid: it costs 1D mixers nothing and grid mixers need it.
    bidir = SeqContext(max_len=t, causal=False, grid=grid)
    wanted = set(checks or ("meta", "shape", "finite", "gradients", "causal", "padding", "mixing", "determinism",
                            "kv_cache"))
    figures: dict[str, float] = {}
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, t, dim, generator=gen, dtype=torch.float64)

    module = _build(name, bidir, dim, heads, seed, options)
    if "meta" in wanted:
        figures["params"] = _check_meta(name, bidir, dim, heads, options, module)
    y = module(x)
    collect_aux(module)
    if "shape" in wanted and tuple(y.shape) != tuple(x.shape):
        raise _fail("output shape", f"expected {tuple(x.shape)}, got {tuple(y.shape)}")
    if "finite" in wanted and not torch.isfinite(y).all():
        raise _fail("finite outputs", f"{(~torch.isfinite(y)).sum().item()} non-finite values")

    if "gradients" in wanted:
        figures["min_grad"] = _check_gradients(module, x, gen)
    if "mixing" in wanted:
        figures["mixing"] = _check_mixing(module, x, causal=False)
    if "determinism" in wanted:
        again = _build(name, bidir, dim, heads, seed, options)(x)
        dev = _max_dev(y, again)
        figures["determinism"] = dev
        if dev > 0:
            raise _fail("determinism", f"two builds with seed {seed} differ by {dev:.3e}")
    if "padding" in wanted and spec.padding_ok:
        figures["padding_leak"] = _check_padding(module, x, gen)
    if "causal" in wanted and spec.causal_ok:
        causal = _build(name, SeqContext(max_len=t, causal=True, grid=grid), dim, heads, seed, options)
        figures["causal_leak"] = _check_causal(causal, x, gen)
        figures["causal_mixing"] = _check_mixing(causal, x, causal=True)
        if "gradients" in wanted:
            _check_gradients(causal, x, gen)
        if "padding" in wanted and spec.padding_ok:
            _check_padding(causal, x, gen)
        if "kv_cache" in wanted and spec.kv_cache:
            figures["kv_cache"] = _check_kv_cache(causal, x)
    return figures


def _check_meta(name: str, ctx: SeqContext, dim: int, heads: int, options: dict[str, Any], real: nn.Module) -> int:
    """The budget matcher counts parameters on the meta device: construction must work there and
    give the same count as a real build."""
    try:
        with torch.device("meta"):
            meta = build_mixer(name, dim, heads=heads, ctx=ctx, **options)
    except Exception as exc:
        raise _fail("meta construction", f"building under torch.device('meta') raised {type(exc).__name__}: "
                    f"{exc}; the budget matcher needs it (avoid .tolist()/.item() on parameters in __init__)") from None
    n_meta = sum(p.numel() for p in meta.parameters())
    n_real = sum(p.numel() for p in real.parameters())
    if n_meta != n_real:
        raise _fail("meta construction", f"{n_meta} parameters on meta vs {n_real} on CPU")
    return n_real


@torch.no_grad()
def _check_kv_cache(module: nn.Module, x: torch.Tensor) -> float:
    """Decoding in chunks through ``forward_cached`` must equal one causal forward."""
    full = module(x)
    cache: dict[str, torch.Tensor] = {}
    t = x.shape[1]
    cuts = [0, t // 2, t // 2 + 1, t]
    steps = [module.forward_cached(x[:, a:b], cache) for a, b in zip(cuts, cuts[1:])]
    collect_aux(module)
    dev = _max_dev(full, torch.cat(steps, 1))
    if dev > 1e-9:
        raise _fail("kv cache", f"forward_cached differs from forward by {dev:.3e}")
    return dev


def _check_gradients(module: nn.Module, x: torch.Tensor, gen: torch.Generator) -> float:
    module.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    y = module(x)
    losses, _ = collect_aux(module)
    # Random weights so that no parameter's gradient cancels by symmetry of a plain sum.
    weight = torch.randn(y.shape, generator=gen, dtype=y.dtype)
    objective = (y * weight).sum() + sum(losses.values(), torch.zeros((), dtype=y.dtype))
    objective.backward()
    if x.grad is None or not torch.isfinite(x.grad).all():
        raise _fail("finite gradients", "the input gradient is missing or non-finite")
    smallest = float("inf")
    for pname, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            raise _fail("parameter gradients", f"parameter {pname!r} gets no gradient (grad is None)")
        if not torch.isfinite(p.grad).all():
            raise _fail("finite gradients", f"parameter {pname!r} has a non-finite gradient")
        norm = p.grad.abs().max().item()
        if norm == 0.0:
            raise _fail("parameter gradients", f"parameter {pname!r} gets an all-zero gradient (max |grad| = 0)")
        smallest = min(smallest, norm)
    module.zero_grad(set_to_none=True)
    return smallest


def _perturbed(x: torch.Tensor, where: Callable[[torch.Tensor], torch.Tensor], gen: torch.Generator) -> torch.Tensor:
    x2 = x.clone()
    noise = torch.randn(x.shape, generator=gen, dtype=x.dtype) * 3.0
    sel = where(x2)
    x2[sel] = x2[sel] + noise[sel]
    return x2


@torch.no_grad()
def _check_mixing(module: nn.Module, x: torch.Tensor, causal: bool) -> float:
    t = x.shape[1]
    j = 0 if causal else t // 2  # a causal mixer can only carry token 0 forward
    y = module(x)
    x2 = x.clone()
    x2[:, j] += torch.linspace(1.0, 2.0, x.shape[-1], dtype=x.dtype)
    y2 = module(x2)
    collect_aux(module)
    others = [i for i in range(t) if i != j]
    dev = _max_dev(y[:, others], y2[:, others])
    if dev <= MIX_ATOL:
        kind = "causal " if causal else ""
        raise _fail("token mixing", f"{kind}perturbing token {j} changed no other token's output "
                    f"(max change {dev:.3e}); the mixer does not mix tokens")
    return dev


@torch.no_grad()
def _check_causal(module: nn.Module, x: torch.Tensor, gen: torch.Generator) -> float:
    t = x.shape[1]
    y = module(x)
    worst = 0.0
    for cut in (0, t // 3, t // 2, t - 2):
        x2 = _perturbed(x, lambda z, c=cut: _positions(z, slice(c + 1, None)), gen)
        y2 = module(x2)
        dev = _max_dev(y[:, : cut + 1], y2[:, : cut + 1])
        worst = max(worst, dev)
        if dev > LEAK_ATOL:
            raise _fail("causal leak", f"changing tokens after position {cut} changed outputs at positions "
                        f"<= {cut} by {dev:.3e}; the mixer sees the future")
    collect_aux(module)
    return worst


@torch.no_grad()
def _check_padding(module: nn.Module, x: torch.Tensor, gen: torch.Generator) -> float:
    b, t, _ = x.shape
    pad = torch.ones(b, t, dtype=torch.bool)
    pad[0, t - t // 4:] = False           # right padding on sample 0
    if b > 1:
        pad[1, : t // 4] = False          # left padding on sample 1
    y = module(x, pad)
    if not torch.isfinite(y[pad]).all():
        raise _fail("finite outputs", "non-finite outputs at real positions under padding")
    x2 = _perturbed(x, lambda z: ~pad, gen)
    y2 = module(x2, pad)
    collect_aux(module)
    dev = _max_dev(y[pad], y2[pad])
    if dev > LEAK_ATOL:
        raise _fail("padding leak", f"changing padded positions changed real outputs by {dev:.3e}")
    return dev


def _positions(x: torch.Tensor, sl: slice) -> torch.Tensor:
    sel = torch.zeros(x.shape, dtype=torch.bool)
    sel[:, sl] = True
    return sel


@contextmanager
def temporary_plugin(plugin: object, name: str | None = None) -> Iterator[None]:
    """Register a plugin object (module or class with hookimpls) for the duration of a block.

    For tests of plugins that are not installed, e.g. a deliberately broken mixer::

        with temporary_plugin(MyTestPlugin):
            check_mixer("my_test_mixer")
    """
    from harness import plugins

    registered = plugins.register(plugin, name)
    try:
        yield
    finally:
        plugins.unregister(plugin, registered)
