"""``harness bench``: forward (and backward) time, peak memory and FLOPs of mixers across lengths.

Every mixer is timed at the same shape in the same process as the reference ``softmax`` mixer, and
reported as a ratio to it (ratios, not absolute times, are what carries over between noisy
machines), and as per-FLOP efficiency: time ratio / FLOP ratio, both to softmax in the same row
(../shared/TARGETS.md: target <= 1.25). With ``compile`` every mixer, the reference included, runs
through ``torch.compile``; the compile (the first calls) is timed apart, in ``compile_s``, and never
enters the timed reps; a mixer that fails to compile is timed eager, with the reason in ``message``. Out-of-memory and other failures are recorded per (mixer, T) and the bench goes on.
The command itself is ``harness.cli.bench``; this module measures, tabulates and logs; the plot is
``harness.bench_plot``.

Module top stays light (click and stdlib): torch, pandas, matplotlib and mlflow load inside functions.
"""
from __future__ import annotations

import gc
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

from harness.compiling import describe_failure
from harness.suite import parse_literal

REFERENCE = "softmax"
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
NOISY_SPREAD = 0.25  # (p80 - p20) / median above which a timing is flagged as noisy
EFFICIENCY_TARGET = 1.25  # ../shared/TARGETS.md: time ratio / FLOP ratio to softmax, at most this
COLUMNS = ["mixer", "T", "status", "fwd_ms", "fwd_ms_p20", "fwd_ms_p80", "fwd_reps",
           "fwd_bwd_ms", "fwd_bwd_ms_p20", "fwd_bwd_ms_p80", "fwd_bwd_reps",
           "ratio_vs_softmax", "fwd_ratio_vs_softmax", "flop_ratio_vs_softmax", "efficiency", "peak_mem_mb", "flops",
           "compiled", "compile_s", "grid", "options", "message"]


# ------------------------------------------------------------------------------------ input parsing

def parse_seq_lens(text: str) -> list[int]:
    try:
        lens = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        lens = []
    if not lens or lens[0] < 1:
        raise click.BadParameter(f"expected positive integers separated by commas, got {text!r}",
                                 param_hint="--seq-lens")
    return lens


def parse_options(items: tuple[str, ...] | list[str]) -> dict[str, dict[str, Any]]:
    """``["mop.edgewise.views=5"]`` -> ``{"mop.edgewise": {"views": 5}}``; the key is the text after
    the last dot, because mixer names contain dots."""
    by_mixer: dict[str, dict[str, Any]] = {}
    for item in items:
        path, sep, value = item.partition("=")
        mixer, dot, key = path.strip().rpartition(".")
        if not sep or not dot or not mixer or not key:
            raise click.BadParameter(f"expected MIXER.KEY=VALUE, got {item!r}", param_hint="--option")
        by_mixer.setdefault(mixer, {})[key] = parse_literal(value.strip())
    return by_mixer


def resolve_mixers(text: str) -> list[str]:
    """``all`` or a comma list; unknown names raise UnknownNameError ("Did you mean ...?").
    The reference comes first and is always included, so every row has a ratio."""
    from harness.registry import get_registries

    mixers = get_registries().mixers
    names = mixers.names() if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        mixers.get(name)
    if REFERENCE in mixers and REFERENCE not in names:
        names = [REFERENCE, *names]
    return sorted(dict.fromkeys(names), key=lambda n: n != REFERENCE)  # dedupe, reference first


def grid_for(T: int) -> tuple[int, int]:
    """The most square (h, w) with h * w == T and h <= w: 64 -> (8, 8), 128 -> (8, 16), 13 -> (1, 13)."""
    h = max(d for d in range(1, math.isqrt(T) + 1) if T % d == 0)
    return h, T // h


# ------------------------------------------------------------------------------------- measurement

def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _free_memory(device: Any) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def skip_reason(spec: Any, T: int, causal: bool) -> str | None:
    """Why a mixer cannot run at this T and causality, or None. fixed_len mixers do run: each
    (mixer, T) is built with max_len=T, which is the one length they support."""
    if causal and not spec.causal_ok:
        return "not causal (causal_ok=False) but --causal was asked"
    if spec.needs_grid and grid_for(T)[0] == 1:
        return f"needs a 2D grid; T={T} has no h x w factorisation with h, w >= 2"
    return None


@dataclass
class Case:
    """One mixer built at one length, with the two calls the bench times. ``eager_forward`` is the
    uncompiled forward (FLOPs are counted there: the same function, and the counter sees every
    product). With compilation asked, ``compiled`` says whether it took, ``compile_s`` how long the
    compiling first calls took, ``compile_error`` why it fell back to eager."""

    module: Any
    forward: Callable[[], None]
    forward_backward: Callable[[], None]
    eager_forward: Callable[[], None] | None = None
    compiled: bool = False
    compile_s: float | None = None
    compile_error: str = ""


def build_case(name: str, T: int, *, dim: int, heads: int, batch: int, causal: bool, device: Any, dtype: Any,
               options: dict[str, Any], compile: bool = False, backward: bool = True) -> Case:
    import torch

    from harness.nn.aux import collect_aux
    from harness.nn.blocks import build_mixer
    from harness.nn.context import SeqContext

    torch.manual_seed(0)
    ctx = SeqContext(max_len=T, causal=causal, grid=grid_for(T))
    module = build_mixer(name, dim, heads=heads, ctx=ctx, **options).to(device=device, dtype=dtype)
    module.eval()  # forward-only is timed as inference; forward+backward switches to train()
    x = torch.randn(batch, T, dim, device=device, dtype=dtype)
    # The input needs a gradient too: inside a model the mixer also back-propagates to x.
    x_grad = x.detach().clone().requires_grad_(True)
    grad_out = torch.randn_like(x)

    def calls(run: Any) -> tuple[Callable[[], None], Callable[[], None]]:
        def forward() -> None:
            with torch.no_grad():
                run(x)
            collect_aux(module)  # drop reported aux values so they do not pile up across reps

        def forward_backward() -> None:
            y = run(x_grad)
            losses, _ = collect_aux(module)
            ((y * grad_out).sum() + sum(losses.values())).backward()
            module.zero_grad(set_to_none=True)
            x_grad.grad = None

        return forward, forward_backward

    forward, forward_backward = calls(module)
    case = Case(module, forward, forward_backward, eager_forward=forward)
    if compile:
        compile_case(case, calls, backward)
    return case


def compile_case(case: Case, calls: Callable[[Any], tuple[Callable[[], None], Callable[[], None]]],
                 backward: bool) -> None:
    """Swap the case's calls for ``torch.compile``d ones and pay the compilation now: the first
    forward (eval) and forward+backward (train) calls compile their graphs, and their wall time is
    ``compile_s``, apart from the timed reps. On any failure the case stays eager and
    ``compile_error`` says why."""
    import time

    from harness.compiling import compile_module

    module = case.module
    start = time.perf_counter()
    try:
        forward, forward_backward = calls(compile_module(module))
        module.eval()
        forward()
        if backward:
            module.train()
            forward_backward()
    except Exception as exc:  # noqa: BLE001 - any compiler failure: the mixer is timed eager
        case.compile_error = f"compile failed, timed eager: {describe_failure(exc, limit=200)}"
        module.zero_grad(set_to_none=True)
        return
    finally:
        module.eval()
    case.forward, case.forward_backward = forward, forward_backward
    case.compiled, case.compile_s = True, time.perf_counter() - start


def case_peak_memory_mb(case: Case, device: Any, backward: bool) -> float:
    """Growth of peak memory during one call (one fwd+bwd call when ``backward``)."""
    from harness.profiling import PeakMemory

    with PeakMemory(device) as mem:
        case.forward()
    peak = mem.delta_mb
    if backward:
        case.module.train()
        with PeakMemory(device) as mem:
            case.forward_backward()
        case.module.eval()
        peak = max(peak, mem.delta_mb)
    return peak


def run_bench(mixers: list[str], seq_lens: list[int], dim: int = 128, heads: int = 4, batch: int = 32,
              causal: bool = False, backward: bool = True, device: Any = "cpu", dtype: Any = "float32",
              warmup: int = 2, reps: int = 10, options_by_mixer: dict[str, dict[str, Any]] | None = None,
              max_seconds: float | None = None, on_progress: Callable[[str, int], None] | None = None,
              compile: bool = False) -> Any:
    """Measure every mixer at every T; returns a pandas DataFrame with one row per (mixer, T).

    At each T all mixers are built first, then timed in interleaved rounds (see
    harness.profiling.time_interleaved), so load changes on a shared machine hit them alike.
    ``status`` is ok | oom | error | skipped, with ``message`` saying why. ``peak_mem_mb`` is the
    growth of peak memory during one call (see harness.profiling.PeakMemory). ``flops`` counts one
    forward call. ``ratio_vs_softmax`` compares fwd+bwd times when ``backward``, else forward
    times; ``fwd_ratio_vs_softmax`` always compares forward times. ``max_seconds`` caps the timed
    seconds per (mixer, T, phase), down to 3 reps (``fwd_reps``/``fwd_bwd_reps`` say how many ran).
    ``flop_ratio_vs_softmax`` is the FLOP ratio and ``efficiency`` = ``ratio_vs_softmax`` /
    ``flop_ratio_vs_softmax`` (how much slower each FLOP runs than softmax's). ``compile``: every
    mixer runs through ``torch.compile``; ``compiled`` says where it took, ``compile_s`` is the time
    of the compiling first calls (never part of the timed reps), and a mixer that fails to compile
    is timed eager with the reason in ``message``.
    ``on_progress(description, cases_done)`` reports progress.
    """
    import pandas as pd
    import torch

    from harness.devices import resolve_device

    shape = _Shape(dim=dim, heads=heads, batch=batch, causal=causal, backward=backward,
                   device=resolve_device(device),
                   dtype=getattr(torch, DTYPES.get(dtype, dtype)) if isinstance(dtype, str) else dtype,
                   compile=compile)
    bench = _Bench(mixers, sorted(seq_lens), shape, options_by_mixer or {}, on_progress)
    phases = [("fwd_ms", "forward")] + ([("fwd_bwd_ms", "forward_backward")] if backward else [])
    for T in bench.lens:
        cases = bench.build_cases(T)
        for column, call in phases:
            bench.time_phase(T, cases, column, call, warmup, reps, max_seconds)
        cases.clear()
        _free_memory(shape.device)
        bench.report(f"T={T} done", len(mixers))
    frame = pd.DataFrame(list(bench.rows.values())).reindex(columns=COLUMNS)
    return add_ratios(frame, backward)


@dataclass
class _Shape:
    dim: int
    heads: int
    batch: int
    causal: bool
    backward: bool
    device: Any
    dtype: Any
    compile: bool = False


class _Bench:
    """The rows of one bench, filled length by length: cases are built, then timed by phase."""

    def __init__(self, mixers: list[str], lens: list[int], shape: _Shape, options: dict[str, dict[str, Any]],
                 on_progress: Callable[[str, int], None] | None):
        self.mixers, self.lens, self.shape, self.options = mixers, lens, shape, options
        self.rows = {(name, T): {"mixer": name, "T": T, "grid": "x".join(map(str, grid_for(T))),
                                 "options": json.dumps(options.get(name, {}), sort_keys=True)}
                     for name in mixers for T in lens}
        self.oom_at: dict[str, int] = {}  # a longer sequence will not fit either: do not thrash the allocator
        self.report = on_progress or (lambda description, done: None)

    def fail(self, name: str, T: int, exc: BaseException) -> None:
        oom = _is_oom(exc)
        if oom:
            self.oom_at.setdefault(name, T)
        self.rows[name, T].update(status="oom" if oom else "error", message=describe_failure(exc, limit=200))

    def build_cases(self, T: int) -> dict[str, Case]:
        """Every mixer that can run at T, built, with its FLOPs and peak memory recorded."""
        from harness.profiling import flops_of
        from harness.registry import mixer as mixer_spec

        cases: dict[str, Case] = {}
        shape = self.shape
        for name in self.mixers:
            row = self.rows[name, T]
            reason = skip_reason(mixer_spec(name), T, shape.causal)
            if reason:
                row.update(status="skipped", message=reason)
                continue
            if name in self.oom_at:
                row.update(status="oom", message=f"not run: out of memory at T={self.oom_at[name]}")
                continue
            self.report(f"{name} T={T}: build{', compile' if shape.compile else ''}, FLOPs, memory", 0)
            try:
                case = build_case(name, T, dim=shape.dim, heads=shape.heads, batch=shape.batch, causal=shape.causal,
                                  device=shape.device, dtype=shape.dtype, options=self.options.get(name, {}),
                                  compile=shape.compile, backward=shape.backward)
                row.update(flops=flops_of(case.eager_forward or case.forward), status="ok",
                           message=case.compile_error, compiled=case.compiled,
                           compile_s=math.nan if case.compile_s is None else case.compile_s,
                           peak_mem_mb=case_peak_memory_mb(case, shape.device, shape.backward))
                cases[name] = case
            except Exception as exc:  # recorded, never fatal: the bench goes on
                self.fail(name, T, exc)
                _free_memory(shape.device)
        return cases

    def time_phase(self, T: int, cases: dict[str, Case], column: str, call: str, warmup: int, reps: int,
                   max_seconds: float | None) -> None:
        """Time ``call`` ("forward" or "forward_backward") of every case, interleaved."""
        from harness.profiling import time_interleaved

        self.report(f"T={T}: timing {column[:-3]} of {len(cases)} mixer(s)", 0)
        for case in cases.values():
            case.module.train(call == "forward_backward")
        timed = time_interleaved({n: getattr(c, call) for n, c in cases.items()}, warmup, reps, self.shape.device,
                                 max_seconds)
        for name, stats in timed.items():
            if isinstance(stats, Exception):
                self.fail(name, T, stats)
                del cases[name]
            else:
                self.rows[name, T].update({column: stats["median"], f"{column}_p20": stats["p20"],
                                           f"{column}_p80": stats["p80"], f"{column[:-3]}_reps": stats["reps"]})


def add_ratios(frame: Any, backward: bool) -> Any:
    """Time of each row / time of the reference at the same T (NaN where the reference did not run),
    the FLOP ratio likewise, and ``efficiency`` = time ratio / FLOP ratio."""
    ref = frame[(frame["mixer"] == REFERENCE) & (frame["status"] == "ok")].set_index("T")
    for column, time_col in (("fwd_ratio_vs_softmax", "fwd_ms"),
                             ("ratio_vs_softmax", "fwd_bwd_ms" if backward else "fwd_ms"),
                             ("flop_ratio_vs_softmax", "flops")):
        frame[column] = frame[time_col].astype(float) / frame["T"].map(ref[time_col]).astype(float)
    # A mixer with ~0 FLOPs (token_mixer) has no meaningful efficiency: NaN, not a huge number.
    flop_ratio = frame["flop_ratio_vs_softmax"].where(frame["flop_ratio_vs_softmax"] > 1e-3)
    frame["efficiency"] = frame["ratio_vs_softmax"] / flop_ratio
    return frame


def loglog_slope(frame: Any, mixer: str, time_col: str) -> tuple[float, float | None]:
    """Fitted exponent k of time ~ T^k over all of a mixer's ok rows, and between its two longest."""
    import numpy as np

    ok = frame[(frame["mixer"] == mixer) & (frame["status"] == "ok")].sort_values("T")
    if len(ok) < 2:
        return float("nan"), None
    logs_t, logs_y = np.log(ok["T"].to_numpy(float)), np.log(ok[time_col].to_numpy(float))
    fit = float(np.polyfit(logs_t, logs_y, 1)[0])
    last = float((logs_y[-1] - logs_y[-2]) / (logs_t[-1] - logs_t[-2]))
    return fit, last


# ------------------------------------------------------------------------------------------ output

def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _ms(value: Any) -> str:
    """Milliseconds with about 4 significant digits: 2.838, 57.24, 2174, 15454."""
    if value is None or value != value:
        return "-"
    return format(value, ".3f" if value < 10 else ".2f" if value < 100 else ".1f" if value < 1000 else ".0f")


def _si(value: Any) -> str:
    """12_345_678 -> "12.3M"; NaN -> "-"."""
    if value is None or value != value:
        return "-"
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.0f}"


def results_table(frame: Any, backward: bool) -> Any:
    from rich.table import Table

    basis = "fwd+bwd" if backward else "fwd"
    table = Table(title=f"harness bench (median ms; ratio = {basis} time / softmax's at the same T; "
                        f"efficiency = ratio / FLOP ratio, target <= {EFFICIENCY_TARGET:g})")
    compiled = "compile_s" in frame.columns and frame["compile_s"].notna().any()
    headers = ["mixer", "T", "fwd ms", "fwd+bwd ms", "vs softmax", "peak MB", "FLOPs", "FLOP ratio", "efficiency"]
    for header in headers + (["compile s"] if compiled else []) + ["status"]:
        table.add_column(header, justify="left" if header in ("mixer", "status") else "right",
                         no_wrap=header == "mixer")
    previous = None
    for r in frame.itertuples(index=False):
        if previous is not None and r.mixer != previous:
            table.add_section()
        previous = r.mixer
        eff = _fmt(r.efficiency, ".2f")
        if eff != "-" and r.efficiency > EFFICIENCY_TARGET:
            eff = f"[yellow]{eff}[/yellow]"
        status = r.status if r.status == "ok" else f"[red]{r.status}[/red]"
        if r.status == "ok" and isinstance(r.message, str) and r.message.startswith("compile failed"):
            status = "ok [yellow](eager)[/yellow]"
        cells = [r.mixer, str(r.T), _ms(r.fwd_ms), _ms(r.fwd_bwd_ms),
                 _fmt(r.ratio_vs_softmax, ".2f") + ("x" if r.status == "ok" else ""),
                 _fmt(r.peak_mem_mb, ".1f"), _si(r.flops), _fmt(r.flop_ratio_vs_softmax, ".2f"), eff]
        if compiled:
            cells.append(_fmt(r.compile_s, ".1f"))
        table.add_row(*cells, status)
    return table


def log_to_mlflow(tracking_uri: str | None, params: dict[str, Any], frame: Any, files: list[Path],
                  time_col: str) -> str:
    """One run in experiment ``bench``: the settings as params, per-mixer times and ratios as
    metrics stepped by T, the CSV and plot as artifacts. Returns the run id."""
    from harness.tracking import RunWriter
    from harness.tracking.schema import BENCH_EXPERIMENT, bench_metric

    writer = RunWriter(tracking_uri)
    run_id = writer.start(writer.experiment(BENCH_EXPERIMENT), "bench", {})
    writer.params(run_id, params)
    for r in frame[frame["status"] == "ok"].itertuples(index=False):
        values = {bench_metric(r.mixer, time_col): getattr(r, time_col),
                  bench_metric(r.mixer, "ratio_vs_softmax"): r.ratio_vs_softmax,
                  bench_metric(r.mixer, "efficiency"): r.efficiency}
        if isinstance(r.compile_s, float) and r.compile_s == r.compile_s:   # compiled: its compile time apart
            values[bench_metric(r.mixer, "compile_s")] = r.compile_s
        writer.metrics(run_id, {k: float(v) for k, v in values.items() if v is not None and v == v}, step=int(r.T))
    for path in files:
        writer.artifact(run_id, path)
    writer.end(run_id, "FINISHED")
    return run_id
