"""The mixer contract's machinery: what each property measures, its threshold, and the report.

``harness.testing`` (check_mixer, contract_report, leak_probes) is the public page; this module is
the checker behind it: one ``check_<property>`` method per property on ``Checker``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from harness.nn.aux import collect_aux
from harness.nn.blocks import build_mixer
from harness.nn.context import SeqContext
from harness.registry import mixer as mixer_spec

TITLES = {"meta": "meta construction", "shape": "output shape", "finite": "finite outputs",
          "gradients": "parameter gradients", "gradcheck": "gradient check", "reach": "gradient reach",
          "mixing": "token mixing", "determinism": "determinism", "batch": "batch independence",
          "causal": "causal leak", "padding": "padding leak", "truncation": "padding truncation",
          "kv_cache": "kv cache", "compiled": "compiled = eager"}
PROPERTIES = ("meta", "shape", "finite", "gradients", "gradcheck", "reach", "mixing", "determinism", "batch",
              "causal", "padding", "truncation", "kv_cache")
GRIDS = ((4, 4), (3, 4), (5, 8))     # T = 16, 12, 40
GRADCHECK_GRID = (2, 3)              # T = 6: gradcheck perturbs every input and parameter
# Leaks are measured relative to the output scale, in float64. An exact mask leaves 0; an additive
# -30 "mask" leaks about 1e-11 of the output, and float64 rounding is about 1e-16.
LEAK_RTOL = 1e-12
TRUNCATION_RTOL = 1e-10               # the same arithmetic on a shorter tensor: rounding only
MIX_ATOL = 1e-7
PERTURBATION = 10.0                   # large, so that a leak through a near-mask is amplified
# Opt-in (check_mixer(..., compiled=True)): torch.compile'd outputs and gradients against eager, in
# float32 at one tiny length. Compiled kernels reorder reductions and fuse ops: float32 rounding,
# relative to each tensor's largest value.
OPT_IN = ("compiled",)
COMPILED_GRID = (4, 4)                # T = 16: each graph compiles once, in seconds to a minute
COMPILED_RTOL = 1e-4


@dataclass
class PropertyCheck:
    """One property of the contract: its measured figure, the threshold and the verdict."""

    name: str
    measured: float
    threshold: str
    passed: bool
    detail: str = ""
    title: str = ""                   # what the failure message calls it; the property's title by default

    def __post_init__(self) -> None:
        self.title = self.title or TITLES.get(self.name, self.name)


@dataclass
class ContractReport:
    mixer: str
    options: dict[str, Any]
    results: list[PropertyCheck] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def failures(self) -> list[PropertyCheck]:
        return [r for r in self.results if not r.passed]

    def record(self, name: str, measured: float, threshold: str, passed: bool, detail: str = "",
               title: str = "") -> None:
        self.results.append(PropertyCheck(name, float(measured), threshold, bool(passed), detail, title))

    def raise_if_failed(self) -> None:
        if self.failures:
            raise AssertionError("; ".join(f"{r.title}: {r.detail}" for r in self.failures))


def grids_for(spec: Any, max_len: int) -> tuple[tuple[int, int], ...]:
    if not spec.fixed_len:
        return GRIDS
    h = max(d for d in range(1, int(max_len ** 0.5) + 1) if max_len % d == 0)
    return ((h, max_len // h),)


class ContractFailure(Exception):
    def __init__(self, measured: float, threshold: str, detail: str, title: str = ""):
        super().__init__(detail)
        self.measured, self.threshold, self.detail, self.title = measured, threshold, detail, title


def _max_dev(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() if a.numel() else 0.0


def _rel_dev(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> float:
    return _max_dev(a, b) / max(scale.abs().max().item() if scale.numel() else 0.0, 1e-300)


def _limit(limit: float) -> str:
    return "== 0" if limit == 0 else f"<= {limit:g}"


def _at_most(dev: float, limit: float, detail: Callable[[], str]) -> float:
    """``dev``, or a failure with ``detail()`` when it exceeds ``limit``."""
    if dev > limit:
        raise ContractFailure(dev, _limit(limit), detail())
    return dev


def _perturbed(x: torch.Tensor, sel: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``x`` with large noise added where ``sel`` (broadcast to x's shape) is True."""
    noise = torch.randn(x.shape, generator=gen, dtype=x.dtype) * PERTURBATION
    return torch.where(sel.expand_as(x), x + noise, x)


def _positions(x: torch.Tensor, sl: slice) -> torch.Tensor:
    sel = torch.zeros(x.shape[:2] + (1,), dtype=torch.bool)
    sel[:, sl] = True
    return sel


class Checker:
    """Builds the mixer at each length and measures one property per ``check_<property>`` method."""

    def __init__(self, name: str, dim: int, heads: int, batch: int, seed: int, options: dict[str, Any],
                 report: ContractReport):
        self.name, self.dim, self.heads, self.batch, self.seed, self.options = name, dim, heads, batch, seed, options
        self.report = report
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.cut_sample: int | None = None

    # -- building ---------------------------------------------------------------------------

    def build(self, grid: tuple[int, int], causal: bool = False) -> nn.Module:
        torch.manual_seed(self.seed)
        ctx = SeqContext(max_len=grid[0] * grid[1], causal=causal, grid=grid)
        module = build_mixer(self.name, self.dim, heads=self.heads, ctx=ctx, **self.options).double()
        module.eval()  # dropout off: the checks compare deterministic forwards
        return module

    def input(self, grid: tuple[int, int], batch: int | None = None) -> torch.Tensor:
        return torch.randn(batch or self.batch, grid[0] * grid[1], self.dim, generator=self.gen, dtype=torch.float64)

    def run(self, module: nn.Module, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            y = module(x, pad)
        collect_aux(module)  # reported aux values must not pile up across calls
        return y

    def modules(self, grids: tuple[tuple[int, int], ...], spec: Any) -> Iterator[tuple[str, tuple[int, int], nn.Module]]:
        """(label, grid, module) for every length, bidirectional and (when causal_ok) causal."""
        for grid in grids:
            yield f"T={grid[0] * grid[1]}", grid, self.build(grid)
            if spec.causal_ok:
                yield f"causal T={grid[0] * grid[1]}", grid, self.build(grid, causal=True)

    def cut_points(self, t: int) -> list[int]:
        """Every cut point, or a seeded sample that keeps the first and the last."""
        cuts = list(range(t - 1))
        if self.cut_sample is None or self.cut_sample >= len(cuts):
            return cuts
        inner = torch.randperm(len(cuts) - 2, generator=torch.Generator().manual_seed(t))[: self.cut_sample - 2] + 1
        return sorted({0, t - 2, *inner.tolist()})

    def passed(self, prop: str, figure: str, worst: float, limit: float, detail: str = "") -> None:
        self.report.figures[figure] = worst
        self.report.record(prop, worst, _limit(limit), True, detail)

    def causal_runs(self, grids: tuple[tuple[int, int], ...]) -> Iterator[tuple[int, nn.Module, torch.Tensor, torch.Tensor]]:
        """(T, causal module, input, its output) for every length."""
        for grid in grids:
            module = self.build(grid, causal=True)
            x = self.input(grid)
            yield grid[0] * grid[1], module, x, self.run(module, x)

    # -- properties -------------------------------------------------------------------------

    def check_meta(self, grids: tuple[tuple[int, int], ...], spec: Any) -> None:
        grid = grids[0]
        ctx = SeqContext(max_len=grid[0] * grid[1], causal=False, grid=grid)
        try:
            with torch.device("meta"):
                meta = build_mixer(self.name, self.dim, heads=self.heads, ctx=ctx, **self.options)
        except Exception as exc:
            raise ContractFailure(float("nan"), "builds", f"building under torch.device('meta') raised {type(exc).__name__}: "
                          f"{exc}; the budget matcher needs it (avoid .tolist()/.item() on parameters in __init__)")
        n_meta = sum(p.numel() for p in meta.parameters())
        n_real = sum(p.numel() for p in self.build(grid).parameters())
        self.report.figures["params"] = n_real
        if n_meta != n_real:
            raise ContractFailure(abs(n_meta - n_real), "== 0", f"{n_meta} parameters on meta vs {n_real} on CPU")
        self.report.record("meta", 0, "== 0", True, f"{n_real} parameters")

    def check_shape(self, grids: tuple[tuple[int, int], ...], spec: Any) -> None:
        for label, grid, module in self.modules(grids, spec):
            x = self.input(grid)
            y = self.run(module, x)
            if tuple(y.shape) != tuple(x.shape):
                raise ContractFailure(1, "same shape", f"{label}: expected {tuple(x.shape)}, got {tuple(y.shape)}")
        self.report.record("shape", 0, "same shape", True, f"lengths {', '.join(str(h * w) for h, w in grids)}")

    def check_finite(self, grids: tuple[tuple[int, int], ...], spec: Any) -> None:
        for label, grid, module in self.modules(grids, spec):
            y = self.run(module, self.input(grid))
            bad = (~torch.isfinite(y)).sum().item()
            if bad:
                raise ContractFailure(bad, "== 0", f"{label}: {bad} non-finite output values")
        self.report.record("finite", 0, "== 0", True)

    def check_gradients(self, grids: tuple[tuple[int, int], ...], spec: Any) -> None:
        smallest = float("inf")
        for label, grid, module in self.modules(grids[:1], spec):
            smallest = min(smallest, self._gradients(label, module, self.input(grid)))
        self.report.figures["min_grad"] = smallest
        self.report.record("gradients", smallest, "> 0 per parameter", True)

    def _gradients(self, label: str, module: nn.Module, x: torch.Tensor) -> float:
        module.zero_grad(set_to_none=True)
        x = x.clone().requires_grad_(True)
        y = module(x)
        losses, _ = collect_aux(module)
        # Random weights so that no parameter's gradient cancels by symmetry of a plain sum.
        weight = torch.randn(y.shape, generator=self.gen, dtype=y.dtype)
        ((y * weight).sum() + sum(losses.values(), torch.zeros((), dtype=y.dtype))).backward()
        if x.grad is None or not torch.isfinite(x.grad).all():
            raise ContractFailure(float("nan"), "finite", f"{label}: the input gradient is missing or non-finite",
                          "finite gradients")
        smallest = float("inf")
        for pname, p in module.named_parameters():
            if not p.requires_grad:
                continue
            if p.grad is None:
                raise ContractFailure(0, "> 0", f"{label}: parameter {pname!r} gets no gradient (grad is None)")
            if not torch.isfinite(p.grad).all():
                raise ContractFailure(float("nan"), "finite", f"{label}: parameter {pname!r} has a non-finite gradient",
                              "finite gradients")
            norm = p.grad.abs().max().item()
            if norm == 0.0:
                raise ContractFailure(0, "> 0", f"{label}: parameter {pname!r} gets an all-zero gradient (max |grad| = 0)")
            smallest = min(smallest, norm)
        module.zero_grad(set_to_none=True)
        return smallest

    def check_gradcheck(self, grids: tuple[tuple[int, int], ...], spec: Any) -> None:
        grid = grids[0] if spec.fixed_len else GRADCHECK_GRID
        for label, _, module in self.modules((grid,), spec):
            names = [n for n, p in module.named_parameters() if p.requires_grad]
            params = tuple(p.detach().clone().requires_grad_(True) for n, p in module.named_parameters() if p.requires_grad)
            x = self.input(grid, batch=1).requires_grad_(True)

            def forward(x: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
                y = torch.func.functional_call(module, dict(zip(names, values)), (x,))
                collect_aux(module)
                return y

            try:
                torch.autograd.gradcheck(forward, (x, *params), fast_mode=True, raise_exception=True)
            except RuntimeError as exc:
                first = " ".join(str(exc).split())[:300]
                raise ContractFailure(1, "analytical == numerical", f"{label}: the backward disagrees with finite differences "
                              f"(torch.autograd.gradcheck, float64): {first}")
        self.report.record("gradcheck", 0, "analytical == numerical", True, f"T={grid[0] * grid[1]}, input and "
                           f"every parameter")

    def check_reach(self, grids: tuple[tuple[int, int], ...], spec: Any) -> None:
        weakest = float("inf")
        for label, grid, module in self.modules(grids[:1], spec):
            t = grid[0] * grid[1]
            causal = label.startswith("causal")
            j = t - 1 if causal else t // 2   # the output that may read every position (up to itself)
            x = self.input(grid).requires_grad_(True)
            y = module(x)
            collect_aux(module)
            weight = torch.randn(y[:, j].shape, generator=self.gen, dtype=y.dtype)
            (grad,) = torch.autograd.grad((y[:, j] * weight).sum(), x)
            per_position = grad.abs().amax(dim=(0, 2))[: j + 1 if causal else t]   # (T,)
            cold = (per_position == 0).nonzero().flatten().tolist()
            weakest = min(weakest, per_position.min().item())
            if cold:
                raise ContractFailure(0, "> 0 at every position", f"{label}: the gradient of output {j} reaches no input at "
                              f"position(s) {cold[:8]}; scores or mixing weights are cut from the graph")
        self.report.figures["reach"] = weakest
        self.report.record("reach", weakest, "> 0 at every position", True)

    def check_mixing(self, grids: tuple[tuple[int, int], ...], spec: Any) -> None:
        weakest = float("inf")
        for label, grid, module in self.modules(grids, spec):
            t = grid[0] * grid[1]
            j = 0 if label.startswith("causal") else t // 2  # a causal mixer can only carry token 0 forward
            x = self.input(grid)
            x2 = x.clone()
            x2[:, j] += torch.linspace(1.0, 2.0, x.shape[-1], dtype=x.dtype)
            others = [i for i in range(t) if i != j]
            dev = _max_dev(self.run(module, x)[:, others], self.run(module, x2)[:, others])
            key = "causal_mixing" if label.startswith("causal") else "mixing"
            self.report.figures[key] = min(self.report.figures.get(key, float("inf")), dev)
            weakest = min(weakest, dev)
            if dev <= MIX_ATOL:
                raise ContractFailure(dev, f"> {MIX_ATOL:g}", f"{label}: perturbing token {j} changed no other token's output "
                              f"(max change {dev:.3e}); the mixer does not mix tokens")
        self.report.record("mixing", weakest, f"> {MIX_ATOL:g}", True)

    def check_determinism(self, grids: tuple[tuple[int, int], ...], spec: Any) -> None:
        x = self.input(grids[0])
        dev = _max_dev(self.run(self.build(grids[0]), x), self.run(self.build(grids[0]), x))
        self.report.figures["determinism"] = dev
        if dev > 0:
            raise ContractFailure(dev, "== 0", f"two builds with seed {self.seed} differ by {dev:.3e}")
        self.report.record("determinism", dev, "== 0", True)

    def check_batch(self, grids: tuple[tuple[int, int], ...], spec: Any) -> None:
        worst = 0.0
        for label, grid, module in self.modules(grids[:1], spec):
            x = self.input(grid)
            sel = torch.zeros(x.shape[0], 1, 1, dtype=torch.bool)
            sel[1:] = True
            y, y2 = self.run(module, x), self.run(module, _perturbed(x, sel, self.gen))
            dev = _max_dev(y[0], y2[0])
            worst = max(worst, _at_most(dev, 0.0, lambda: f"{label}: changing other samples of the batch changed "
                                        f"sample 0's output by {dev:.3e}; the mixer mixes across the batch"))
        self.passed("batch", "batch_leak", worst, 0.0)

    def check_causal(self, grids: tuple[tuple[int, int], ...], spec: Any) -> None:
        worst = 0.0
        for t, module, x, y in self.causal_runs(grids):
            for cut in self.cut_points(t):
                y2 = self.run(module, _perturbed(x, _positions(x, slice(cut + 1, None)), self.gen))
                dev = _rel_dev(y[:, : cut + 1], y2[:, : cut + 1], y)
                worst = max(worst, _at_most(dev, LEAK_RTOL, lambda: f"T={t}: changing tokens after position {cut} "
                                            f"changed outputs at positions <= {cut} by {dev:.3e} (relative); the "
                                            f"mixer sees the future"))
        self.passed("causal", "causal_leak", worst, LEAK_RTOL, "every cut point")

    def _pads(self, t: int, grid: tuple[int, int]) -> torch.Tensor:
        """Right padding on sample 0, left padding on sample 1; grid mixers pad whole trailing rows."""
        pad = torch.ones(self.batch, t, dtype=torch.bool)
        cut = grid[1] if mixer_spec(self.name).needs_grid else max(1, t // 4)
        pad[0, t - cut:] = False
        if self.batch > 1 and not mixer_spec(self.name).needs_grid:
            pad[1, :cut] = False
        return pad

    def padded_runs(self, grids: tuple[tuple[int, int], ...], spec: Any) -> Iterator[tuple[Any, ...]]:
        """(label, grid, module, input, pad, output under pad) for every module of ``modules``."""
        for label, grid, module in self.modules(grids, spec):
            x = self.input(grid)
            pad = self._pads(x.shape[1], grid)
            yield label, grid, module, x, pad, self.run(module, x, pad)

    def check_padding(self, grids: tuple[tuple[int, int], ...], spec: Any) -> None:
        worst = 0.0
        for label, grid, module, x, pad, y in self.padded_runs(grids, spec):
            if not torch.isfinite(y[pad]).all():
                raise ContractFailure(float("nan"), "finite", f"{label}: non-finite outputs at real positions under padding")
            y2 = self.run(module, _perturbed(x, ~pad[..., None], self.gen), pad)
            dev = _rel_dev(y[pad], y2[pad], y[pad])
            worst = max(worst, _at_most(dev, LEAK_RTOL, lambda: f"{label}: changing padded positions changed real "
                                        f"outputs by {dev:.3e} (relative)"))
        self.passed("padding", "padding_leak", worst, LEAK_RTOL)

    def check_truncation(self, grids: tuple[tuple[int, int], ...], spec: Any) -> None:
        worst = 0.0
        for label, grid, module, x, pad, y in self.padded_runs(grids, spec):
            for b in range(min(self.batch, 2)):
                real = pad[b].nonzero().flatten()
                short = self._truncated_module(module, grid, len(real), label.startswith("causal"))
                y_short = self.run(short, x[b:b + 1, real])
                dev = _rel_dev(y[b, real], y_short[0], y_short)
                side = "right" if b == 0 else "left"
                worst = max(worst, _at_most(dev, TRUNCATION_RTOL, lambda: f"{label}: with {side} padding the real "
                                            f"outputs differ from the outputs of the sequence cut to its {len(real)} "
                                            f"real tokens by {dev:.3e} (relative); they depend on how many pads "
                                            f"there are"))
        self.passed("truncation", "truncation", worst, TRUNCATION_RTOL, "left and right padding")

    def _truncated_module(self, module: nn.Module, grid: tuple[int, int], length: int, causal: bool) -> nn.Module:
        """The same mixer for the shorter sequence: itself for 1D mixers, rebuilt on the shorter grid
        (same weights) for grid mixers."""
        if not mixer_spec(self.name).needs_grid:
            return module
        short = self.build((length // grid[1], grid[1]), causal=causal)
        short.load_state_dict(module.state_dict())
        return short

    def check_compiled(self, grids: tuple[tuple[int, int], ...], spec: Any) -> None:
        """``torch.compile`` of the module (as the bench and ``train.compile`` run it) gives the eager
        outputs, input gradient and every parameter's gradient within float32 rounding, at T = 16,
        bidirectional and (when the mixer supports them) causal and padded: no compiled number may
        come from a different function. Float32, the dtype compiled runs use."""
        from harness.compiling import compile_module, describe_failure

        grid = grids[0] if spec.fixed_len else COMPILED_GRID
        t = grid[0] * grid[1]
        runs = [(f"T={t}", False, False)]
        if spec.causal_ok or spec.padding_ok:
            runs.append((f"{'causal ' if spec.causal_ok else ''}{'padded ' if spec.padding_ok else ''}T={t}",
                         spec.causal_ok, spec.padding_ok))
        worst = 0.0
        for label, causal, padded in runs:
            module = self.build(grid, causal=causal).float()
            x = self.input(grid).float()
            pad = self._pads(t, grid) if padded else None
            weight = torch.randn(x.shape, generator=self.gen)
            want = self._outputs_and_grads(module, module, x, pad, weight)
            try:
                got = self._outputs_and_grads(compile_module(module), module, x, pad, weight)
            except Exception as exc:  # the compiler failed: the property fails, the report goes on
                raise ContractFailure(float("nan"), "compiles", f"{label}: torch.compile raised "
                                      f"{describe_failure(exc)}") from None
            for what in want:
                dev = _rel_dev(want[what], got[what], want[what])
                worst = max(worst, _at_most(dev, COMPILED_RTOL, lambda: f"{label}: compiled {what} differs from "
                                            f"eager by {dev:.3e} (relative, float32)"))
        self.passed("compiled", "compiled_dev", worst, COMPILED_RTOL, f"outputs and gradients, {len(runs)} graph(s)")

    @staticmethod
    def _outputs_and_grads(call: Any, module: nn.Module, x: torch.Tensor, pad: torch.Tensor | None,
                           weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """Output, input gradient and parameter gradients of ``call`` (the module or its compiled form)."""
        module.zero_grad(set_to_none=True)
        x = x.clone().requires_grad_(True)
        y = call(x, pad)
        losses, _ = collect_aux(module)
        ((y * weight).sum() + sum(losses.values(), torch.zeros((), dtype=y.dtype))).backward()
        out = {"output": y.detach(), "input gradient": x.grad}
        out.update({f"gradient of {n}": p.grad for n, p in module.named_parameters() if p.grad is not None})
        module.zero_grad(set_to_none=True)
        return out

    def check_kv_cache(self, grids: tuple[tuple[int, int], ...], spec: Any) -> None:
        worst = 0.0
        for t, module, x, full in self.causal_runs(grids):
            for cuts in ([0, t // 2, t // 2 + 1, t], [0, 1, 2, t // 3, t]):
                cache: dict[str, torch.Tensor] = {}
                with torch.no_grad():
                    steps = [module.forward_cached(x[:, a:b], cache) for a, b in zip(cuts, cuts[1:])]
                collect_aux(module)
                dev = _rel_dev(full, torch.cat(steps, 1), full)
                worst = max(worst, _at_most(dev, TRUNCATION_RTOL, lambda: f"T={t}: forward_cached in chunks {cuts} "
                                            f"differs from forward by {dev:.3e} (relative)"))
        self.passed("kv_cache", "kv_cache", worst, TRUNCATION_RTOL)


