"""``harness bench``: forward (and backward) time, peak memory and FLOPs of mixers across lengths.

Every mixer is timed at the same shape in the same process as the reference ``softmax`` mixer, and
reported as a ratio to it (TARGETS.md quotes ratios, not absolute times: machines are noisy).
Out-of-memory and other failures are recorded per (mixer, T) and the bench goes on.

Module top stays light (click and stdlib): torch, pandas, matplotlib and mlflow load inside functions.
"""
from __future__ import annotations

import gc
import json
import math
import os
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

REFERENCE = "softmax"
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
NOISY_SPREAD = 0.25  # (p80 - p20) / median above which a timing is flagged as noisy
COLUMNS = ["mixer", "T", "status", "fwd_ms", "fwd_ms_p20", "fwd_ms_p80", "fwd_reps",
           "fwd_bwd_ms", "fwd_bwd_ms_p20", "fwd_bwd_ms_p80", "fwd_bwd_reps",
           "ratio_vs_softmax", "fwd_ratio_vs_softmax", "peak_mem_mb", "flops", "grid", "options", "message"]


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


def parse_value(text: str) -> Any:
    """A TOML/JSON literal (5, 0.1, true, "x", [1, 2]), else the bare string. Never evaluated as code."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_options(items: tuple[str, ...] | list[str]) -> dict[str, dict[str, Any]]:
    """``["mop.edgewise.views=5"]`` -> ``{"mop.edgewise": {"views": 5}}``; the key is the text after
    the last dot, because mixer names contain dots."""
    by_mixer: dict[str, dict[str, Any]] = {}
    for item in items:
        path, sep, value = item.partition("=")
        mixer, dot, key = path.strip().rpartition(".")
        if not sep or not dot or not mixer or not key:
            raise click.BadParameter(f"expected MIXER.KEY=VALUE, got {item!r}", param_hint="--option")
        by_mixer.setdefault(mixer, {})[key] = parse_value(value.strip())
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


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    """One mixer built at one length, with the two calls the bench times."""

    module: Any
    forward: Callable[[], None]
    forward_backward: Callable[[], None]


def build_case(name: str, T: int, *, dim: int, heads: int, batch: int, causal: bool, device: Any, dtype: Any,
               options: dict[str, Any]) -> Case:
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

    def forward() -> None:
        with torch.no_grad():
            module(x)
        collect_aux(module)  # drop reported aux values so they do not pile up across reps

    def forward_backward() -> None:
        y = module(x_grad)
        losses, _ = collect_aux(module)
        ((y * grad_out).sum() + sum(losses.values())).backward()
        module.zero_grad(set_to_none=True)
        x_grad.grad = None

    return Case(module, forward, forward_backward)


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
              max_seconds: float | None = None, on_progress: Callable[[str, int], None] | None = None) -> Any:
    """Measure every mixer at every T; returns a pandas DataFrame with one row per (mixer, T).

    At each T all mixers are built first, then timed in interleaved rounds (see
    harness.profiling.time_interleaved), so load changes on a shared machine hit them alike.
    ``status`` is ok | oom | error | skipped, with ``message`` saying why. ``peak_mem_mb`` is the
    growth of peak memory during one call (see harness.profiling.PeakMemory). ``flops`` counts one
    forward call. ``ratio_vs_softmax`` compares fwd+bwd times when ``backward``, else forward
    times; ``fwd_ratio_vs_softmax`` always compares forward times. ``max_seconds`` caps the timed
    seconds per (mixer, T, phase), down to 3 reps (``fwd_reps``/``fwd_bwd_reps`` say how many ran).
    ``on_progress(description, cases_done)`` reports progress.
    """
    import pandas as pd
    import torch

    from harness.profiling import as_device, flops_of, time_interleaved
    from harness.registry import mixer as mixer_spec

    device = as_device(device)
    dtype = getattr(torch, DTYPES.get(dtype, dtype)) if isinstance(dtype, str) else dtype
    options_by_mixer = options_by_mixer or {}
    lens = sorted(seq_lens)
    rows = {(name, T): {"mixer": name, "T": T, "grid": "x".join(map(str, grid_for(T))),
                        "options": json.dumps(options_by_mixer.get(name, {}), sort_keys=True)}
            for name in mixers for T in lens}
    oom_at: dict[str, int] = {}  # a longer sequence will not fit either: do not thrash the allocator
    report = on_progress or (lambda description, done: None)

    def fail(name: str, T: int, exc: BaseException) -> None:
        oom = _is_oom(exc)
        if oom:
            oom_at.setdefault(name, T)
        rows[name, T].update(status="oom" if oom else "error", message=_one_line(exc))

    for T in lens:
        cases: dict[str, Case] = {}
        for name in mixers:
            row = rows[name, T]
            reason = skip_reason(mixer_spec(name), T, causal)
            if reason:
                row.update(status="skipped", message=reason)
            elif name in oom_at:
                row.update(status="oom", message=f"not run: out of memory at T={oom_at[name]}")
            else:
                report(f"{name} T={T}: build, FLOPs, memory", 0)
                try:
                    case = build_case(name, T, dim=dim, heads=heads, batch=batch, causal=causal, device=device,
                                      dtype=dtype, options=options_by_mixer.get(name, {}))
                    row.update(flops=flops_of(case.forward), status="ok", message="",
                               peak_mem_mb=case_peak_memory_mb(case, device, backward))
                    cases[name] = case
                except Exception as exc:  # recorded, never fatal: the bench goes on
                    fail(name, T, exc)
                    _free_memory(device)
        phases = [("fwd_ms", "forward")] + ([("fwd_bwd_ms", "forward_backward")] if backward else [])
        for column, call in phases:
            report(f"T={T}: timing {column[:-3]} of {len(cases)} mixer(s)", 0)
            for case in cases.values():
                case.module.train(call == "forward_backward")
            timed = time_interleaved({n: getattr(c, call) for n, c in cases.items()}, warmup, reps, device,
                                     max_seconds)
            for name, stats in timed.items():
                if isinstance(stats, Exception):
                    fail(name, T, stats)
                    del cases[name]
                else:
                    rows[name, T].update({column: stats["median"], f"{column}_p20": stats["p20"],
                                          f"{column}_p80": stats["p80"], f"{column[:-3]}_reps": stats["reps"]})
        cases.clear()
        _free_memory(device)
        report(f"T={T} done", len(mixers))
    frame = pd.DataFrame(list(rows.values())).reindex(columns=COLUMNS)
    return add_ratios(frame, backward)


def add_ratios(frame: Any, backward: bool) -> Any:
    """Time of each row / time of the reference at the same T (NaN where the reference did not run)."""
    ref = frame[(frame["mixer"] == REFERENCE) & (frame["status"] == "ok")].set_index("T")
    for column, time_col in (("fwd_ratio_vs_softmax", "fwd_ms"),
                             ("ratio_vs_softmax", "fwd_bwd_ms" if backward else "fwd_ms")):
        frame[column] = frame[time_col] / frame["T"].map(ref[time_col])
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

def write_plot(frame: Any, time_col: str, path: Path, title: str) -> None:
    """Log-log time vs T, one line per mixer, with a dashed T^2 guide through softmax's first point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    ok = frame[frame["status"] == "ok"]
    for name, group in ok.groupby("mixer", sort=False):
        ax.plot(group["T"], group[time_col], marker="o", label=name)
    ref = ok[ok["mixer"] == REFERENCE].sort_values("T")
    if len(ref):
        t0, y0 = float(ref["T"].iloc[0]), float(ref[time_col].iloc[0])
        ts = sorted(frame["T"].unique())
        ax.plot(ts, [y0 * (t / t0) ** 2 for t in ts], "k--", linewidth=1, label="T^2 guide")
    ax.set(xscale="log", yscale="log", xlabel="sequence length T", ylabel=f"{time_col} (median)", title=title)
    ax.set_xticks(sorted(frame["T"].unique()), labels=[str(t) for t in sorted(frame["T"].unique())])
    ax.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    table = Table(title=f"harness bench (median ms; ratio = {basis} time / softmax's at the same T)")
    for header in ("mixer", "T", "fwd ms", "fwd+bwd ms", "vs softmax", "peak MB", "FLOPs", "status"):
        table.add_column(header, justify="left" if header in ("mixer", "status") else "right",
                         no_wrap=header == "mixer")
    previous = None
    for r in frame.itertuples(index=False):
        if previous is not None and r.mixer != previous:
            table.add_section()
        previous = r.mixer
        table.add_row(r.mixer, str(r.T), _ms(r.fwd_ms), _ms(r.fwd_bwd_ms),
                      _fmt(r.ratio_vs_softmax, ".2f") + ("x" if r.status == "ok" else ""),
                      _fmt(r.peak_mem_mb, ".1f"), _si(r.flops),
                      r.status if r.status == "ok" else f"[red]{r.status}[/red]")
    return table


def device_label(device: Any) -> str:
    import torch

    from harness.profiling import cpu_model

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({cpu_model()}, {os.cpu_count()} logical cores)"


def log_to_mlflow(tracking_uri: str, params: dict[str, Any], frame: Any, files: list[Path], time_col: str) -> str:
    from harness.tracking import connect

    mlflow = connect(tracking_uri)
    mlflow.set_experiment("bench")
    with mlflow.start_run(run_name="bench") as run:
        mlflow.log_params(params)
        for r in frame[frame["status"] == "ok"].itertuples(index=False):
            mlflow.log_metric(f"{r.mixer}.{time_col}", float(getattr(r, time_col)), step=int(r.T))
            if r.ratio_vs_softmax == r.ratio_vs_softmax:
                mlflow.log_metric(f"{r.mixer}.ratio_vs_softmax", float(r.ratio_vs_softmax), step=int(r.T))
        for path in files:
            mlflow.log_artifact(str(path))
        return run.info.run_id


# ---------------------------------------------------------------------------------------------- CLI

def _busy_warning(device: Any) -> str | None:
    """CPU timings are only as good as the machine is idle: say so when something else runs."""
    if device.type != "cpu":
        return None
    import psutil

    busy = psutil.cpu_percent(interval=0.3)  # all cores, while this process sleeps
    if busy < 25:
        return None
    return (f"the CPU is {busy:.0f}% busy with other processes: times (and less so ratios) will be noisy")


def _threads() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (containers, taskset)
    except AttributeError:
        return os.cpu_count() or 1


@click.command("bench")
@click.option("--mixers", default="all", show_default=True, help="Comma-separated mixer names, or 'all'.")
@click.option("--seq-lens", default="64,128,256,512", show_default=True, help="Comma-separated lengths T.")
@click.option("--dim", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--heads", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--batch", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--causal/--no-causal", default=False, show_default=True)
@click.option("--backward/--no-backward", default=True, show_default=True, help="Also time forward+backward.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="fp32", show_default=True)
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(min=0))
@click.option("--reps", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--max-time", "max_seconds", default=10.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds of timed calls per mixer, length and phase; slow cases stop early (>= 3 reps).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch CPU threads [default: the cores this process may use].")
@click.option("--out", "out_dir", default="results/bench", show_default=True, type=click.Path(file_okay=False))
@click.option("--mlflow/--no-mlflow", "use_mlflow", default=False, show_default=True)
@click.option("--tracking-uri", default=None,
              help="MLflow URI [default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db].")
@click.option("--option", "option_items", multiple=True, metavar="MIXER.KEY=VALUE",
              help="Mixer option, e.g. mop.edgewise.views=5 (repeatable; values are TOML/JSON literals).")
def bench_command(mixers: str, seq_lens: str, dim: int, heads: int, batch: int, causal: bool, backward: bool,
                  device: str, dtype: str, warmup: int, reps: int, max_seconds: float, threads: int | None,
                  out_dir: str, use_mlflow: bool, tracking_uri: str | None, option_items: tuple[str, ...]) -> None:
    """Time every mixer across sequence lengths, relative to softmax at the same shape."""
    from harness.registry import UnknownNameError

    lens = parse_seq_lens(seq_lens)
    options = parse_options(option_items)
    try:
        names = resolve_mixers(mixers)
    except UnknownNameError as exc:
        raise click.UsageError(str(exc)) from None
    for name in options:
        if name not in names:
            raise click.UsageError(f"--option names mixer {name!r}, which is not benchmarked ({', '.join(names)})")
    if dim % heads:
        raise click.UsageError(f"--dim {dim} is not divisible by --heads {heads}")

    import torch
    from rich.console import Console
    from rich.progress import Progress

    from harness.profiling import as_device, keep_freed_memory

    if device == "cuda" and not torch.cuda.is_available():
        raise click.UsageError("--device cuda was asked but torch sees no CUDA device")
    dev = as_device(device)
    if dtype != "fp32" and dev.type != "cuda":
        raise click.UsageError(f"--dtype {dtype} is only supported on cuda; this run is on {dev.type} (use fp32)")
    torch.set_num_threads(threads or _threads())
    keep_freed_memory()

    console = Console()
    shape = f"B={batch} D={dim} H={heads} causal={causal} backward={backward}"
    console.print(f"[bold]harness bench[/bold]  device={device_label(dev)}  dtype={dtype}  "
                  f"torch={torch.__version__}  threads={torch.get_num_threads()}")
    console.print(f"shape: {shape}  T={','.join(map(str, lens))}  "
                  f"warmup={warmup} reps={reps} max-time={max_seconds:g}s")
    busy = _busy_warning(dev)
    if busy:
        console.print(f"[yellow]{busy}[/yellow]")
    if mixers.strip() != "all" and REFERENCE not in [n.strip() for n in mixers.split(",")]:
        console.print(f"({REFERENCE} added as the reference for ratios)")

    # Refresh only between cases: an auto-refresh thread would wake up during the timed calls and
    # compete with torch's threads for the cores.
    start = time.monotonic()
    with Progress(console=console, transient=True, auto_refresh=False) as progress:
        task = progress.add_task("benchmarking", total=len(names) * len(lens))

        def on_progress(description: str, done: int) -> None:
            progress.update(task, advance=done, description=description, refresh=True)
            if done:  # a line per length too, for logs where the bar is not shown
                progress.console.print(f"{description} ({time.monotonic() - start:.0f} s)", highlight=False)

        frame = run_bench(names, lens, dim=dim, heads=heads, batch=batch, causal=causal, backward=backward,
                          device=dev, dtype=DTYPES[dtype], warmup=warmup, reps=reps, options_by_mixer=options,
                          max_seconds=max_seconds, on_progress=on_progress)

    console.print(results_table(frame, backward))
    for r in frame[frame["status"] != "ok"].itertuples(index=False):
        console.print(f"  {r.mixer} T={r.T}: {r.status}: {r.message}", markup=False)
    time_col = "fwd_bwd_ms" if backward else "fwd_ms"
    spread = (frame[f"{time_col}_p80"] - frame[f"{time_col}_p20"]) / frame[time_col]
    noisy = frame[spread > NOISY_SPREAD]
    if len(noisy):
        cases = ", ".join(f"{r.mixer} T={r.T}" for r in noisy.itertuples(index=False))
        console.print(f"[yellow]noisy (p20..p80 wider than {NOISY_SPREAD:.0%} of the median): {cases}[/yellow]")

    fit, last = loglog_slope(frame, REFERENCE, time_col)
    if last is not None:
        ok_t = frame[(frame["mixer"] == REFERENCE) & (frame["status"] == "ok")]["T"]
        flops_fit, flops_last = loglog_slope(frame, REFERENCE, "flops")
        # Attention FLOPs grow as T^2, the projections' as T; the former dominate only for T > 2 * dim,
        # so the FLOPs slope is the honest yardstick for the time slope at these lengths.
        console.print(f"{REFERENCE} {time_col} ~ T^{fit:.2f} (log-log fit, T={ok_t.min()}..{ok_t.max()}), "
                      f"T^{last:.2f} between the two longest T; its FLOPs grow as T^{flops_fit:.2f} and "
                      f"T^{flops_last:.2f} (T^2 once attention dominates, T >> 2*dim={2 * dim}).")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out / "bench.csv", out / "bench.png"
    frame.to_csv(csv_path, index=False)
    write_plot(frame, time_col, png_path, f"{shape}, {dtype}, {dev.type}")
    console.print(f"wrote {csv_path} and {png_path}")

    if use_mlflow:
        from harness.tracking import tracking_uri as resolve_uri

        uri = resolve_uri(tracking_uri)
        params = {"mixers": ",".join(names), "seq_lens": ",".join(map(str, lens)), "dim": dim, "heads": heads,
                  "batch": batch, "causal": causal, "backward": backward, "device": device_label(dev),
                  "dtype": dtype, "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "warmup": warmup, "reps": reps, "max_time": max_seconds,
                  "options": json.dumps(options, sort_keys=True)}
        run_id = log_to_mlflow(uri, params, frame, [csv_path, png_path], time_col)
        console.print(f"logged to MLflow run {run_id} (experiment 'bench', {uri})")
