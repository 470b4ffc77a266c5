"""``harness bench``: time every mixer across sequence lengths, relative to softmax at the same shape."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from harness.bench import DTYPES, NOISY_SPREAD, REFERENCE
from harness.cli.common import TRACKING_URI_HELP


def _busy_warning(device: Any) -> str | None:
    """CPU timings are only as good as the machine is idle: say so when something else runs."""
    if device.type != "cpu":
        return None
    import psutil

    busy = psutil.cpu_percent(interval=0.3)  # all cores, while this process sleeps
    if busy < 25:
        return None
    return f"the CPU is {busy:.0f}% busy with other processes: times (and less so ratios) will be noisy"


def _mixer_names(mixers: str, options: dict[str, dict[str, Any]], dim: int, heads: int) -> list[str]:
    from harness.bench import resolve_mixers
    from harness.registry import UnknownNameError

    try:
        names = resolve_mixers(mixers)
    except UnknownNameError as exc:
        raise click.UsageError(str(exc)) from None
    for name in options:
        if name not in names:
            raise click.UsageError(f"--option names mixer {name!r}, which is not benchmarked ({', '.join(names)})")
    if dim % heads:
        raise click.UsageError(f"--dim {dim} is not divisible by --heads {heads}")
    return names


def _device(device: str, dtype: str) -> Any:
    import torch

    from harness.devices import resolve_device

    if device == "cuda" and not torch.cuda.is_available():
        raise click.UsageError("--device cuda was asked but torch sees no CUDA device")
    dev = resolve_device(device)
    if dtype != "fp32" and dev.type != "cuda":
        raise click.UsageError(f"--dtype {dtype} is only supported on cuda; this run is on {dev.type} (use fp32)")
    return dev


def _measure(console: Any, names: list[str], lens: list[int], **settings: Any) -> Any:
    """run_bench under a progress bar refreshed only between cases: an auto-refresh thread would wake
    up during the timed calls and compete with torch's threads for the cores."""
    from rich.progress import Progress

    from harness.bench import run_bench

    start = time.monotonic()
    with Progress(console=console, transient=True, auto_refresh=False) as progress:
        task = progress.add_task("benchmarking", total=len(names) * len(lens))

        def on_progress(description: str, done: int) -> None:
            progress.update(task, advance=done, description=description, refresh=True)
            if done:  # a line per length too, for logs where the bar is not shown
                progress.console.print(f"{description} ({time.monotonic() - start:.0f} s)", highlight=False)

        return run_bench(names, lens, on_progress=on_progress, **settings)


def _print_findings(console: Any, frame: Any, time_col: str, dim: int) -> None:
    """Failed cases, noisy timings, and how softmax's time and FLOPs grow with T."""
    from harness.bench import loglog_slope

    for r in frame[frame["status"] != "ok"].itertuples(index=False):
        console.print(f"  {r.mixer} T={r.T}: {r.status}: {r.message}", markup=False)
    for r in frame[(frame["status"] == "ok") & frame["message"].fillna("").astype(str).str.startswith("compile")
                   ].itertuples(index=False):
        console.print(f"  {r.mixer} T={r.T}: {r.message}", markup=False, style="yellow")
    spread = (frame[f"{time_col}_p80"] - frame[f"{time_col}_p20"]) / frame[time_col]
    noisy = frame[spread > NOISY_SPREAD]
    if len(noisy):
        cases = ", ".join(f"{r.mixer} T={r.T}" for r in noisy.itertuples(index=False))
        console.print(f"[yellow]noisy (p20..p80 wider than {NOISY_SPREAD:.0%} of the median): {cases}[/yellow]")
    fit, last = loglog_slope(frame, REFERENCE, time_col)
    if last is None:
        return
    ok_t = frame[(frame["mixer"] == REFERENCE) & (frame["status"] == "ok")]["T"]
    flops_fit, flops_last = loglog_slope(frame, REFERENCE, "flops")
    # Attention FLOPs grow as T^2, the projections' as T; the former dominate only for T > 2 * dim,
    # so the FLOPs slope is the honest yardstick for the time slope at these lengths.
    console.print(f"{REFERENCE} {time_col} ~ T^{fit:.2f} (log-log fit, T={ok_t.min()}..{ok_t.max()}), "
                  f"T^{last:.2f} between the two longest T; its FLOPs grow as T^{flops_fit:.2f} and "
                  f"T^{flops_last:.2f} (T^2 once attention dominates, T >> 2*dim={2 * dim}).")


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
@click.option("--tracking-uri", default=None, help=TRACKING_URI_HELP)
@click.option("--option", "option_items", multiple=True, metavar="MIXER.KEY=VALUE",
              help="Mixer option, e.g. mop.edgewise.views=5 (repeatable; values are TOML/JSON literals).")
@click.option("--compile/--no-compile", "compile_", default=False, show_default=True,
              help="Run every mixer (softmax too) through torch.compile; the compile time is its own column, "
                   "never part of the timed calls; a mixer that fails to compile is timed eager, with the reason.")
def bench_command(mixers: str, seq_lens: str, dim: int, heads: int, batch: int, causal: bool, backward: bool,
                  device: str, dtype: str, warmup: int, reps: int, max_seconds: float, threads: int | None,
                  out_dir: str, use_mlflow: bool, tracking_uri: str | None, option_items: tuple[str, ...],
                  compile_: bool) -> None:
    """Time every mixer across sequence lengths, relative to softmax at the same shape."""
    from harness.bench import parse_options, parse_seq_lens

    lens = parse_seq_lens(seq_lens)
    options = parse_options(option_items)
    names = _mixer_names(mixers, options, dim, heads)

    import torch
    from rich.console import Console

    from harness.bench import log_to_mlflow, results_table
    from harness.bench_plot import write_plot
    from harness.devices import available_cores, device_label
    from harness.profiling import keep_freed_memory

    dev = _device(device, dtype)
    torch.set_num_threads(threads or available_cores())
    keep_freed_memory()
    console = Console()
    shape = f"B={batch} D={dim} H={heads} causal={causal} backward={backward}" + (" compiled" if compile_ else "")
    console.print(f"[bold]harness bench[/bold]  device={device_label(dev)}  dtype={dtype}  "
                  f"torch={torch.__version__}  threads={torch.get_num_threads()}")
    console.print(f"shape: {shape}  T={','.join(map(str, lens))}  warmup={warmup} reps={reps} max-time={max_seconds:g}s")
    busy = _busy_warning(dev)
    if busy:
        console.print(f"[yellow]{busy}[/yellow]")
    if mixers.strip() != "all" and REFERENCE not in [n.strip() for n in mixers.split(",")]:
        console.print(f"({REFERENCE} added as the reference for ratios)")
    frame = _measure(console, names, lens, dim=dim, heads=heads, batch=batch, causal=causal, backward=backward,
                     device=dev, dtype=DTYPES[dtype], warmup=warmup, reps=reps, options_by_mixer=options,
                     max_seconds=max_seconds, compile=compile_)
    console.print(results_table(frame, backward))
    time_col = "fwd_bwd_ms" if backward else "fwd_ms"
    _print_findings(console, frame, time_col, dim)

    from harness.tracking.schema import Artifact

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out / Artifact.BENCH_CSV, out / Artifact.BENCH_PLOT
    frame.to_csv(csv_path, index=False)
    write_plot(frame, time_col, png_path, f"{shape}, {dtype}, {dev.type}")
    console.print(f"wrote {csv_path} and {png_path}")
    if use_mlflow:
        params = {"mixers": ",".join(names), "seq_lens": ",".join(map(str, lens)), "dim": dim, "heads": heads,
                  "batch": batch, "causal": causal, "backward": backward, "device": device_label(dev),
                  "dtype": dtype, "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "warmup": warmup, "reps": reps, "max_time": max_seconds, "options": json.dumps(options, sort_keys=True),
                  "compile": compile_}
        run_id = log_to_mlflow(tracking_uri, params, frame, [csv_path, png_path], time_col)
        from harness.redact import redact
        from harness.tracking import tracking_uri as resolve_uri

        console.print(f"logged to MLflow run {run_id} (experiment 'bench', {redact(resolve_uri(tracking_uri))})")
