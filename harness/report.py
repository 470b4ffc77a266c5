"""Reports over a suite's results: statistics per variant, tables, CSV/Markdown and plots.

Inputs are ``RunResult`` records, read from a suite's output folder (``runs.jsonl``, one
``dataclasses.asdict(RunResult)`` per line, a later line for the same (variant, seed) wins) or
rebuilt from MLflow (one parent run per invocation, one child run per (variant, seed)).

Statistics, per variant, over its finished seeds (``finished`` and ``skipped``: a skipped run
re-used an earlier result and carries its metrics; ``failed`` and ``killed`` runs are counted and
excluded):

- mean, std (ddof=1) and the 95% CI half-width ``t(0.975, n-1) * std / sqrt(n)`` (NaN with 1 seed);
- delta vs the reference variant: the mean of paired differences (variant - reference) on the
  seeds both finished, and the two-sided paired t-test p-value on those seeds (NaN with fewer than
  2 shared seeds or when the differences have no variance).

Heavy libraries (pandas, scipy, matplotlib, mlflow, rich) are imported inside the functions so that
``import harness.report`` stays cheap.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import click

from harness.specs import Run, RunResult

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from rich.console import Console

__all__ = [
    "ReportError",
    "results_frame",
    "summarize",
    "print_summary",
    "write_reports",
    "load_results_dir",
    "load_results_mlflow",
    "report_command",
    "infer_higher_is_better",
    "FINISHED_STATUSES",
    "FAILED_STATUSES",
    "EFFICIENCY_KEYS",
]

RUNS_FILE = "runs.jsonl"
SUITE_FILE = "suite.json"

FINISHED_STATUSES = ("finished", "skipped")   # skipped = re-used from an earlier invocation
FAILED_STATUSES = ("failed", "killed")
EFFICIENCY_KEYS = (
    "params", "target_params", "param_gap", "flops_per_token", "samples_per_s", "tokens_per_s",
    "peak_mem_mb", "train_time_s",
)
_LOWER_IS_BETTER_HINTS = ("loss", "perplexity", "ppl", "bpc", "wer", "cer")
_FRAME_FIXED = ("variant", "mixer", "seed", "status", "error", "overrides")
_OVERRIDE_MARK = "†"


class ReportError(ValueError):
    """A results source that cannot be read or reported on; the message says why, in one line."""


def infer_higher_is_better(metric: str) -> bool:
    """Direction guess from a metric name: losses, perplexity, bpc, WER and CER go down."""
    name = metric.lower()
    return not any(hint in name for hint in _LOWER_IS_BETTER_HINTS)


# -- frames and statistics -------------------------------------------------------------------

def _is_finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _to_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def results_frame(results: Iterable[RunResult]) -> "pd.DataFrame":
    """One row per run: variant, mixer, seed, status, error, overrides (comma-separated keys), then
    every metric and efficiency key seen as a column (NaN where a run lacks it), then run_id."""
    import pandas as pd

    rows: list[dict[str, Any]] = []
    value_keys: list[str] = []
    for result in results:
        run = result.run
        row: dict[str, Any] = {
            "variant": run.variant,
            "mixer": run.mixer,
            "seed": int(run.seed),
            "status": result.status,
            "error": result.error,
            "overrides": ",".join(run.overrides or ()),
        }
        for source in (result.metrics or {}, result.efficiency or {}):
            for key, value in source.items():
                if key in _FRAME_FIXED or key == "run_id":
                    continue
                if key not in value_keys:
                    value_keys.append(key)
                row.setdefault(key, _to_float(value))
        row["run_id"] = result.run_id
        rows.append(row)
    columns = [*_FRAME_FIXED, *value_keys, "run_id"]
    frame = pd.DataFrame(rows, columns=columns)
    for key in value_keys:
        frame[key] = pd.to_numeric(frame[key], errors="coerce").astype(float)
    if not frame.empty:
        frame["seed"] = frame["seed"].astype(int)
    return frame


def _t_ci_halfwidth(std: float, n: int) -> float:
    from scipy import stats

    if n < 2 or not math.isfinite(std):
        return math.nan
    return float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))


def _paired(values: Mapping[int, float], reference: Mapping[int, float]) -> tuple[int, float, float]:
    """(n shared seeds, mean paired difference, two-sided paired t-test p-value)."""
    import numpy as np
    from scipy import stats

    shared = sorted(set(values) & set(reference))
    if not shared:
        return 0, math.nan, math.nan
    a = np.array([values[s] for s in shared], dtype=float)
    b = np.array([reference[s] for s in shared], dtype=float)
    diffs = a - b
    delta = float(diffs.mean())
    if len(shared) < 2:
        return len(shared), delta, math.nan
    scale = max(1.0, float(np.max(np.abs(a))), float(np.max(np.abs(b))))
    if float(np.ptp(diffs)) <= 1e-12 * scale:   # no variance (up to rounding): t undefined
        return len(shared), delta, math.nan
    p = float(stats.ttest_rel(a, b).pvalue)
    return len(shared), delta, (p if math.isfinite(p) else math.nan)


def _nanmean(series: "pd.Series") -> float:
    values = series.dropna()
    return float(values.mean()) if len(values) else math.nan


SUMMARY_COLUMNS = (
    "variant", "mixer", "reference", "n_runs", "n_finished", "n_failed", "params", "target_params",
    "param_gap_pct", "metric", "n", "mean", "std", "ci95", "n_paired", "delta", "p_value",
    "samples_per_s", "tokens_per_s", "peak_mem_mb", "flops_per_token", "overridden", "overrides",
    "best",
)


def summarize(
    frame: "pd.DataFrame",
    metric: str,
    higher_is_better: bool = True,
    reference: str | None = None,
) -> "pd.DataFrame":
    """One row per variant, the reference first, then suite order (first appearance in ``frame``).

    Columns: variant, mixer, reference (bool), n_runs, n_finished, n_failed, params (mean achieved),
    target_params, param_gap_pct (signed, 100 * (achieved - target) / target), metric (its name),
    n (finished seeds with a finite metric), mean, std, ci95 (half-width), n_paired, delta (mean of
    variant - reference on shared seeds; NaN on the reference row), p_value (paired t-test),
    samples_per_s, tokens_per_s, peak_mem_mb, flops_per_token (means over finished runs),
    overridden (bool), overrides (union of per-variant override keys), best (bool, by direction).

    ``summary.attrs`` holds ``metric``, ``reference``, ``higher_is_better`` and ``failures`` (a list
    of {variant, seed, status, error} for failed and killed runs), which ``print_summary`` shows.
    """
    import pandas as pd

    if frame.empty:
        out = pd.DataFrame(columns=list(SUMMARY_COLUMNS))
        out.attrs.update(metric=metric, reference=reference, higher_is_better=higher_is_better,
                         failures=[])
        return out

    variants = list(dict.fromkeys(frame["variant"]))
    if reference is None:
        reference = variants[0]
    if reference not in variants:
        raise ReportError(f"reference variant {reference!r} is not among the results "
                          f"(variants: {', '.join(variants)})")
    order = [reference, *[v for v in variants if v != reference]]

    def finished_values(rows: "pd.DataFrame") -> dict[int, float]:
        if metric not in rows.columns:
            return {}
        ok = rows[rows["status"].isin(FINISHED_STATUSES)]
        return {int(s): float(v) for s, v in zip(ok["seed"], ok[metric]) if _is_finite(v)}

    ref_values = finished_values(frame[frame["variant"] == reference])
    records: list[dict[str, Any]] = []
    for variant in order:
        rows = frame[frame["variant"] == variant]
        finished = rows[rows["status"].isin(FINISHED_STATUSES)]
        values = finished_values(rows)
        n = len(values)
        series = pd.Series(list(values.values()), dtype=float)
        mean = float(series.mean()) if n else math.nan
        std = float(series.std(ddof=1)) if n >= 2 else math.nan
        if variant == reference:
            n_paired, delta, p_value = len(values), math.nan, math.nan
        else:
            n_paired, delta, p_value = _paired(values, ref_values)

        def col(name: str) -> float:
            return _nanmean(finished[name]) if name in finished.columns else math.nan

        params, target = col("params"), col("target_params")
        if "param_gap" in finished.columns and finished["param_gap"].notna().any():
            gap_pct = 100.0 * _nanmean(finished["param_gap"])
        elif _is_finite(params) and _is_finite(target) and target:
            gap_pct = 100.0 * (params - target) / target
        else:
            gap_pct = math.nan
        override_keys = sorted({k for o in rows["overrides"] for k in str(o or "").split(",") if k})
        mixers = [m for m in rows["mixer"] if m]
        records.append({
            "variant": variant,
            "mixer": mixers[0] if mixers else "",
            "reference": variant == reference,
            "n_runs": int(len(rows)),
            "n_finished": int(len(finished)),
            "n_failed": int(rows["status"].isin(FAILED_STATUSES).sum()),
            "params": params,
            "target_params": target,
            "param_gap_pct": gap_pct,
            "metric": metric,
            "n": n,
            "mean": mean,
            "std": std,
            "ci95": _t_ci_halfwidth(std, n),
            "n_paired": n_paired,
            "delta": delta,
            "p_value": p_value,
            "samples_per_s": col("samples_per_s"),
            "tokens_per_s": col("tokens_per_s"),
            "peak_mem_mb": col("peak_mem_mb"),
            "flops_per_token": col("flops_per_token"),
            "overridden": bool(override_keys),
            "overrides": ",".join(override_keys),
            "best": False,
        })
    out = pd.DataFrame.from_records(records, columns=list(SUMMARY_COLUMNS))
    means = out["mean"].astype(float)
    if means.notna().any():
        best = means.idxmax() if higher_is_better else means.idxmin()
        out.loc[best, "best"] = True
    failed = frame[frame["status"].isin(FAILED_STATUSES)]
    out.attrs.update(
        metric=metric, reference=reference, higher_is_better=bool(higher_is_better),
        failures=[
            {"variant": r.variant, "seed": int(r.seed), "status": r.status,
             "error": r.error if isinstance(r.error, str) else None}
            for r in failed.itertuples(index=False)
        ],
    )
    return out


# -- formatting ------------------------------------------------------------------------------

def _decimals(summary: "pd.DataFrame") -> int:
    """Decimals that give the largest mean 4 significant digits (0.82 -> 4, 35.1 -> 2)."""
    values = [abs(float(v)) for v in summary["mean"] if _is_finite(v) and float(v) != 0.0]
    if not values:
        return 4
    return int(min(6, max(0, 3 - math.floor(math.log10(max(values))))))


def _fmt_count(value: Any) -> str:
    if not _is_finite(value):
        return "–"
    value = float(value)
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:.0f}"


def _fmt_p(p: Any) -> str:
    if not _is_finite(p):
        return "p=n/a"
    return "p<0.001" if float(p) < 0.001 else f"p={float(p):.3f}"


def _table(summary: "pd.DataFrame", metric: str, *, flops: bool = False
           ) -> tuple[list[str], list[list[str]], list[bool]]:
    """Header, cell strings and per-row "best" flags, shared by the console and Markdown tables.

    The mean column is always the 4th (index 3)."""
    dec = _decimals(summary)
    show_tokens = summary["tokens_per_s"].notna().any() and not summary["samples_per_s"].notna().any()
    show_flops = flops and summary["flops_per_token"].notna().any()
    ref_n = int(summary.loc[summary["reference"].astype(bool), "n"].max()) if summary["reference"].any() else 0
    header = ["variant", "mixer", "params (gap)", f"{metric} mean ± std", "95% CI",
              "Δ vs ref (p)", "tokens/s" if show_tokens else "samples/s", "peak MB"]
    if show_flops:
        header.append("FLOPs/token")
    header.append("finished")
    rows: list[list[str]] = []
    best: list[bool] = []
    for r in summary.itertuples(index=False):
        name = f"{r.variant}{_OVERRIDE_MARK}" if r.overridden else str(r.variant)
        params = _fmt_count(r.params)
        if _is_finite(r.param_gap_pct):
            params += f" ({r.param_gap_pct:+.1f}%)"
        if _is_finite(r.mean):
            mean = f"{r.mean:.{dec}f}"
            if _is_finite(r.std):
                mean += f" ± {r.std:.{dec}f}"
        else:
            mean = "–"
        ci = f"±{r.ci95:.{dec}f}" if _is_finite(r.ci95) else "–"
        if r.reference:
            delta = "ref"
        elif _is_finite(r.delta):
            # n shown only where fewer seeds were paired than either side finished
            n_note = f" n={r.n_paired}" if r.n_paired < max(int(r.n), ref_n) else ""
            delta = f"{r.delta:+.{dec}f} ({_fmt_p(r.p_value)}{n_note})"
        else:
            delta = "–"
        speed = r.tokens_per_s if show_tokens else r.samples_per_s
        cells = [name, str(r.mixer or ""), params, mean, ci, delta,
                 f"{speed:,.0f}" if _is_finite(speed) else "–",
                 f"{r.peak_mem_mb:,.0f}" if _is_finite(r.peak_mem_mb) else "–"]
        if show_flops:
            cells.append(_fmt_count(r.flops_per_token))
        cells.append(f"{r.n_finished}/{r.n_runs}" + (f", {r.n_failed} failed" if r.n_failed else ""))
        rows.append(cells)
        best.append(bool(r.best))
    return header, rows, best


def _override_notes(summary: "pd.DataFrame") -> list[str]:
    return [f"{r.variant}: {r.overrides}" for r in summary.itertuples(index=False) if r.overridden]


def _first_line(text: str | None, limit: int = 300) -> str:
    """One line of an error: a traceback's last line (its message), else the first line."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        return "no error message"
    line = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _failures(summary: "pd.DataFrame", frame: "pd.DataFrame | None") -> list[dict[str, Any]]:
    if frame is not None and not frame.empty:
        failed = frame[frame["status"].isin(FAILED_STATUSES)]
        return [{"variant": r.variant, "seed": int(r.seed), "status": r.status,
                 "error": r.error if isinstance(r.error, str) else None}
                for r in failed.itertuples(index=False)]
    return list(summary.attrs.get("failures", []))


def _explanation(summary: "pd.DataFrame", metric: str) -> str:
    reference = summary.attrs.get("reference") or (
        summary.loc[summary["reference"], "variant"].iloc[0] if summary["reference"].any() else "?")
    direction = "higher" if summary.attrs.get("higher_is_better", True) else "lower"
    return (f"{metric}: mean ± std (ddof=1) over finished seeds, {direction} is better, best in bold; "
            f"95% CI = Student-t half-width; Δ = variant − {reference} averaged over shared seeds, "
            f"p = paired t-test (n = shared seeds); params = mean achieved, gap vs the budget target; "
            f"{_OVERRIDE_MARK} = variant with per-variant overrides.")


def _fit_columns(natural: list[int], narrowest: list[int], width: int) -> tuple[int, list[int] | None] | None:
    """(padding, fixed column widths or None for rich's own) for a SIMPLE_HEAD table in ``width``,
    or None when it cannot fit.

    Rich shrinks an over-wide table without regard to word boundaries and crops the last columns,
    so narrow a table here: take the widest column down one character at a time, never below its
    longest word; with padding 1 if that fits, else padding 0."""
    n = len(natural)
    for pad in (1, 0):
        avail = width - (n - 1) * (1 + pad) - 2
        if sum(natural) <= avail:
            return pad, None
        widths = list(natural)
        while sum(widths) > avail:
            candidates = [i for i in range(n) if widths[i] > narrowest[i]]
            if not candidates:
                break
            widest = max(candidates, key=lambda i: widths[i])
            widths[widest] -= 1
        if sum(widths) <= avail:
            return pad, widths
    return None


def default_console() -> "Console":
    """A rich console; 160 columns wide when stdout is not a terminal (a log file, a pipe), where
    nothing wraps the lines and rich's default of 80 would squeeze the table."""
    from rich.console import Console

    if not sys.stdout.isatty() and "COLUMNS" not in os.environ:
        return Console(width=160)
    return Console()


# Columns a narrow terminal may leave out, least needed first (the files keep them all).
_DROPPABLE = ("mixer", "peak MB", "samples/s", "tokens/s", "95% CI")


def print_summary(
    summary: "pd.DataFrame",
    metric: str,
    console: "Console | None" = None,
    *,
    frame: "pd.DataFrame | None" = None,
    title: str | None = None,
) -> None:
    """Print the summary as a rich table, then override footnotes and failed runs with reasons.

    Failed runs come from ``frame`` when given, else from ``summary.attrs["failures"]``. On a
    terminal too narrow for every column, the least needed ones are left out (and named)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    console = console or default_console()
    if summary.empty:
        console.print("[yellow]no runs to report[/yellow]")
        return
    header, rows, best = _table(summary, metric)
    header[3] = "mean ± std"
    direction = "higher" if summary.attrs.get("higher_is_better", True) else "lower"
    heading = f"{title + ' · ' if title else ''}{metric} ({direction} is better)"
    right = {"params (gap)", "95% CI", "samples/s", "tokens/s", "peak MB"}
    records = list(summary.itertuples(index=False))

    def without(name: str) -> None:
        i = header.index(name)
        del header[i]
        for row in rows:
            del row[i]

    hidden: list[str] = []
    if all(not r.mixer or r.mixer == r.variant for r in records):
        without("mixer")   # it would repeat the variant names
    while True:
        keep = {0, header.index("mean ± std")}   # variant and mean ± std are never wrapped
        natural = [max(len(text) for text in [*(row[i] for row in rows), name])
                   for i, name in enumerate(header)]
        # the narrowest a column may get: its longest word, so wrapping never splits a number
        narrowest = [natural[i] if i in keep else
                     max(len(w) for text in [*(row[i] for row in rows), name] for w in text.split() or [""])
                     for i, name in enumerate(header)]
        fit = _fit_columns(natural, narrowest, console.width)
        droppable = [name for name in _DROPPABLE if name in header]
        if fit is not None or not droppable:
            break
        hidden.append(droppable[0])
        without(droppable[0])
    pad, widths = fit if fit is not None else (0, None)   # still too narrow: rich folds the cells

    table = Table(title=heading, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD,
                  pad_edge=False, padding=(0, pad), collapse_padding=True)
    for i, name in enumerate(header):
        # "fold", not "…", if rich must cut a cell: a cut-off number reads as another number
        table.add_column(name, justify="right" if name in right else "left", no_wrap=i in keep,
                         width=widths[i] if widths else None, overflow="fold")
    metric_col = header.index("mean ± std")
    for cells, is_best in zip(rows, best):
        cells = [escape(c) for c in cells]
        if is_best:
            cells[metric_col] = f"[bold]{cells[metric_col]}[/bold]"
        table.add_row(*cells)
    console.print(table)
    if hidden:
        console.print(f"[dim]columns left out for the terminal width: {', '.join(hidden)} "
                      f"(all are in summary.csv)[/dim]")
        if "mixer" in hidden:
            mixers = ", ".join(f"{r.variant}={r.mixer}" for r in records if r.mixer and r.mixer != r.variant)
            console.print(f"mixers: {escape(mixers)}")
    for note in _override_notes(summary):
        console.print(f"{_OVERRIDE_MARK} per-variant overrides — {escape(note)}")
    console.print(f"[dim]{escape(_explanation(summary, metric))}[/dim]")
    failures = _failures(summary, frame)
    if failures:
        console.print(f"[red]{len(failures)} run(s) did not finish:[/red]")
        for f in failures:
            console.print(f"  [red]✗[/red] {escape(f['variant'])} seed {f['seed']} ({f['status']}): "
                          f"{escape(_first_line(f['error']))}")


# -- files -----------------------------------------------------------------------------------

def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _markdown(summary: "pd.DataFrame", frame: "pd.DataFrame", metric: str, title: str) -> str:
    lines = [f"# {title}", ""]
    if summary.empty:
        return "\n".join([*lines, "No runs.", ""])
    header, rows, best = _table(summary, metric, flops=True)
    lines.append("| " + " | ".join(_md_escape(h) for h in header) + " |")
    lines.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|")
    for cells, is_best in zip(rows, best):
        cells = [_md_escape(c) for c in cells]
        if is_best:
            cells[3] = f"**{cells[3]}**"
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for note in _override_notes(summary):
        lines.append(f"{_OVERRIDE_MARK} per-variant overrides — {_md_escape(note)}  ")
    lines.append(_explanation(summary, metric))
    lines.append("")
    failures = _failures(summary, frame)
    lines.append("## Failed runs")
    lines.append("")
    if failures:
        for f in failures:
            lines.append(f"- `{f['variant']}` seed {f['seed']} ({f['status']}): "
                         f"{_md_escape(_first_line(f['error']))}")
    else:
        lines.append("None.")
    lines.append("")
    return "\n".join(lines)


def _colors(variants: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(variants) <= 10 else "tab20"]
    return {v: cmap(i % cmap.N) for i, v in enumerate(variants)}


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)   # Agg, without touching pyplot's global backend
    return fig


_MAX_CURVES = 6


def _history_keys(results: list[RunResult], metric: str) -> list[str]:
    """The curves worth a subplot: validation and training metrics (not the learning rate) that
    some run logged at two or more steps; the suite's validation metric and train/loss first."""
    steps: dict[str, set[float]] = {}
    for result in results:
        seen: dict[str, set[float]] = {}
        for point in result.history or ():
            for key, value in point.items():
                if key != "step" and _is_finite(value) and _is_finite(point.get("step")):
                    seen.setdefault(key, set()).add(float(point["step"]))
        for key, s in seen.items():
            if len(s) > len(steps.get(key, ())):
                steps[key] = s
    keys = [k for k, s in steps.items()
            if len(s) >= 2 and k.startswith(("val/", "train/")) and k != "train/lr"]
    val_metric = "val/" + metric.split("/", 1)[-1]
    priority = [k for k in (val_metric, "train/loss", "val/loss") if k in keys]
    return [*priority, *sorted(k for k in keys if k not in priority)][:_MAX_CURVES]


def _plot_learning_curves(results: list[RunResult], path: Path, metric: str, title: str) -> bool:
    import pandas as pd

    finished = [r for r in results if r.status in FINISHED_STATUSES and r.history]
    keys = _history_keys(finished, metric)
    if not keys:
        return False
    points = [
        {"variant": r.run.variant, "seed": r.run.seed, "step": float(p["step"]), "key": k,
         "value": float(v)}
        for r in finished for p in r.history if _is_finite(p.get("step"))
        for k, v in p.items() if k != "step" and _is_finite(v)
    ]
    if not points:
        return False
    long = pd.DataFrame(points)
    variants = list(dict.fromkeys(r.run.variant for r in results))
    colors = _colors(variants)
    ncols = min(len(keys), 3)
    nrows = math.ceil(len(keys) / ncols)
    fig = _new_figure(5.0 * ncols, 3.6 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, key in zip(axes, keys):
        sub = long[long["key"] == key]
        for variant in variants:
            data = sub[sub["variant"] == variant]
            if data.empty:
                continue
            stats = data.groupby("step")["value"].agg(["mean", "std", "count"]).sort_index()
            steps = stats.index.to_numpy()
            ax.plot(steps, stats["mean"], color=colors[variant], label=variant, lw=1.5,
                    marker="o" if len(steps) <= 30 else None, ms=3)
            band = stats["std"].where(stats["count"] > 1)
            if band.notna().any():
                ax.fill_between(steps, stats["mean"] - band, stats["mean"] + band,
                                color=colors[variant], alpha=0.2, lw=0)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    axes[0].legend(fontsize="small")
    fig.suptitle(f"{title}: learning curves (mean over seeds, band = ±1 std)")
    fig.savefig(path, dpi=120)
    return True


def _plot_metric_vs_params(frame: "pd.DataFrame", path: Path, metric: str, title: str) -> bool:
    if frame.empty or metric not in frame.columns or "params" not in frame.columns:
        return False
    data = frame[frame["status"].isin(FINISHED_STATUSES)]
    data = data[data[metric].notna() & data["params"].notna()]
    if data.empty:
        return False
    variants = list(dict.fromkeys(frame["variant"]))
    colors = _colors(variants)
    fig = _new_figure(6.4, 4.4)
    ax = fig.subplots()
    for variant in variants:
        sub = data[data["variant"] == variant]
        if sub.empty:
            continue
        ax.scatter(sub["params"], sub[metric], color=colors[variant], alpha=0.6, s=22, label=variant)
        x, y = float(sub["params"].mean()), float(sub[metric].mean())
        ax.scatter([x], [y], color=colors[variant], marker="D", s=60, edgecolor="black", lw=0.6)
        ax.annotate(variant, (x, y), xytext=(5, 5), textcoords="offset points", fontsize="small")
    if "target_params" in data.columns and data["target_params"].notna().any():
        target = float(data["target_params"].dropna().median())
        ax.axvline(target, color="grey", ls="--", lw=1, label="target")
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: _fmt_count(x)))
    ax.set_xlabel("parameters (achieved)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(f"{title}: {metric} vs parameters (dots = seeds, ◆ = mean)")
    fig.savefig(path, dpi=120)
    return True


def write_reports(
    results: list[RunResult],
    out_dir: str | os.PathLike[str],
    *,
    metric: str,
    higher_is_better: bool = True,
    reference: str | None = None,
    title: str = "results",
) -> dict[str, Path]:
    """Write results.csv, summary.csv, results.md, learning_curves.png and metric_vs_params.png.

    Returns {file name: path} for the files written; a plot with no data is skipped (and absent)."""
    results = list(results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = results_frame(results)
    summary = summarize(frame, metric, higher_is_better, reference)
    written: dict[str, Path] = {}

    path = out / "results.csv"
    frame.to_csv(path, index=False)
    written[path.name] = path
    path = out / "summary.csv"
    summary.to_csv(path, index=False)
    written[path.name] = path
    path = out / "results.md"
    path.write_text(_markdown(summary, frame, metric, title), encoding="utf-8")
    written[path.name] = path
    plots = (("learning_curves.png", lambda p: _plot_learning_curves(results, p, metric, title)),
             ("metric_vs_params.png", lambda p: _plot_metric_vs_params(frame, p, metric, title)))
    for name, plot in plots:
        path = out / name
        if plot(path):
            written[name] = path
        else:
            path.unlink(missing_ok=True)   # no data now: do not leave an earlier report's plot
    return written


# -- loading ---------------------------------------------------------------------------------

_RUN_FIELDS = {f.name for f in dataclasses.fields(Run)}
_RESULT_FIELDS = {f.name for f in dataclasses.fields(RunResult)}


def result_from_dict(data: Mapping[str, Any]) -> RunResult:
    """Rebuild a RunResult from ``dataclasses.asdict(result)``; unknown keys are ignored."""
    if not isinstance(data, Mapping) or not isinstance(data.get("run"), Mapping):
        raise ValueError("expected an object with a 'run' object")
    run_data = {k: v for k, v in data["run"].items() if k in _RUN_FIELDS}
    missing = [k for k in ("suite", "variant", "seed", "task", "model", "mixer", "metric")
               if k not in run_data]
    if missing:
        raise ValueError(f"run is missing {', '.join(missing)}")
    run_data["overrides"] = tuple(run_data.get("overrides") or ())
    run_data["seed"] = int(run_data["seed"])
    fields = {k: v for k, v in data.items() if k in _RESULT_FIELDS and k != "run"}
    if "status" not in fields:
        raise ValueError("result is missing status")
    return RunResult(run=Run(**run_data), **fields)


def _dedupe(results: Iterable[RunResult]) -> list[RunResult]:
    """Last result per (variant, seed) wins, kept at the position of its first appearance."""
    latest: dict[tuple[str, int], RunResult] = {}
    for result in results:
        latest[(result.run.variant, int(result.run.seed))] = result
    return list(latest.values())


def _runs_file(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path if path.is_file() else path / RUNS_FILE


def load_results_dir(path: str | os.PathLike[str]) -> list[RunResult]:
    """Read ``runs.jsonl`` in ``path`` (or ``path`` itself when it is the file).

    A later line for the same (variant, seed) supersedes an earlier one; blank lines are skipped;
    a line that is not a valid result raises ``ReportError`` naming the file and line number."""
    file = _runs_file(path)
    if not file.is_file():
        raise ReportError(f"no {RUNS_FILE} in {Path(path)}")
    results: list[RunResult] = []
    with file.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ReportError(f"{file}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            try:
                results.append(result_from_dict(data))
            except (TypeError, ValueError) as exc:
                raise ReportError(f"{file}:{lineno}: not a run result ({exc})") from None
    return _dedupe(results)


def read_suite_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``suite.json`` next to ``runs.jsonl`` (name, metric, reference, higher_is_better), or {}."""
    file = _runs_file(path).parent / SUITE_FILE
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return data if isinstance(data, dict) else {}


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    from harness.tracking import tracking_uri as resolve

    return resolve(tracking_uri)


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):]
    return None if path in ("", ":memory:") else Path(path)


def _client(tracking_uri: str | None) -> tuple[Any, str]:
    uri = resolve_tracking_uri(tracking_uri)
    db = _sqlite_path(uri)
    if db is not None and not db.is_file():
        # MLflow would silently create an empty store; say there is none instead.
        raise ReportError(f"no MLflow store at {uri} (file {db} does not exist)")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri), uri


def _search_all(client: Any, experiment_id: str, filter_string: str, order_by: list[str] | None = None) -> list[Any]:
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000,
                                  order_by=order_by, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _parse_bool(value: Any, default: bool) -> bool:
    if value is None:
        return default
    return str(value).strip().lower() in ("1", "true", "yes", "on")


_MLFLOW_STATUS = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "killed",
                  "RUNNING": "running", "SCHEDULED": "running"}


def _child_result(client: Any, child: Any, metric: str, suite: str) -> RunResult:
    tags = child.data.tags
    params = child.data.params
    # MLflow's own system metrics (log_system_metrics) are monitoring, not results
    latest = {k: v for k, v in child.data.metrics.items() if not k.startswith("system/")}
    # results are namespaced ("test/accuracy", "val/loss"); efficiency figures are not ("params")
    efficiency = {k: float(v) for k, v in latest.items() if k in EFFICIENCY_KEYS or "/" not in k}
    metrics = {k: float(v) for k, v in latest.items() if k not in efficiency}
    by_step: dict[int, dict[str, float]] = {}
    for key in metrics:
        points = client.get_metric_history(child.info.run_id, key)
        if len(points) < 2 and all(p.step == 0 for p in points):
            continue   # logged once: a final value only
        points = sorted(points, key=lambda p: (p.timestamp, p.step))
        # A final value shares its name with the history ("val/accuracy"): it is the one logged
        # last, whatever its step. History points go forward in steps; a point logged after a
        # later step (a final value logged at step 0) is not part of the curve.
        metrics[key] = float(points[-1].value)
        top = -1
        for p in points:
            if p.step >= top:
                by_step.setdefault(int(p.step), {})[key] = float(p.value)
                top = p.step
    history = [{"step": step, **values} for step, values in sorted(by_step.items())]
    overrides = tuple(k.strip() for k in (tags.get("harness.overrides") or "").split(",") if k.strip())
    try:
        seed = int(tags.get("harness.seed", params.get("seed", 0)))
    except ValueError:
        seed = 0
    run = Run(
        suite=tags.get("harness.suite", suite),
        variant=tags.get("harness.variant") or child.info.run_name or child.info.run_id,
        seed=seed,
        task=tags.get("harness.task", params.get("task", "")),
        model=tags.get("harness.model", params.get("model", "")),
        mixer=tags.get("harness.mixer", params.get("mixer", "")),
        metric=metric,
        overrides=overrides,
    )
    status = tags.get("harness.status") or _MLFLOW_STATUS.get(child.info.status, "running")
    return RunResult(run=run, status=status, metrics=metrics, efficiency=efficiency,
                     history=history, error=tags.get("harness.error") or None,
                     run_id=child.info.run_id)


def load_results_mlflow(
    experiment: str,
    tracking_uri: str | None = None,
    parent_run_id: str | None = None,
) -> tuple[list[RunResult], dict[str, Any]]:
    """Rebuild the results of one invocation (the latest parent run unless ``parent_run_id``).

    Returns (results in suite order, info) with info keys experiment, suite, tracking_uri,
    parent_run_id, metric, reference, higher_is_better (None where the parent lacks the tag)."""
    client, uri = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ReportError(f"no MLflow experiment {experiment!r} at {uri} "
                          f"(experiments: {', '.join(names) or 'none'})")
    if parent_run_id:
        parent = client.get_run(parent_run_id)
        if parent.info.experiment_id != exp.experiment_id:
            raise ReportError(f"run {parent_run_id} is not in experiment {experiment!r}")
    else:
        parents = client.search_runs([exp.experiment_id], filter_string="tags.`harness.role` = 'parent'",
                                     order_by=["attributes.start_time DESC"], max_results=1)
        if not parents:
            raise ReportError(f"experiment {experiment!r} at {uri} has no harness parent run "
                              f"(tag harness.role=parent)")
        parent = parents[0]
    ptags = parent.data.tags
    children = _search_all(client, exp.experiment_id,
                           f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                           order_by=["attributes.start_time ASC"])
    children = [c for c in children if c.data.tags.get("harness.role", "run") == "run"]
    metric = ptags.get("harness.metric")
    if metric and not any(metric in c.data.metrics for c in children):
        # the tracker logs metric names made MLflow-safe: test/ndcg@10 -> test/ndcg_at_10
        safe = _mlflow_metric_key(metric)
        if any(safe in c.data.metrics for c in children):
            metric = safe
    hib = ptags.get("harness.higher_is_better")
    try:
        planned = int(parent.data.params.get("runs", ""))
    except ValueError:
        planned = None
    results = _dedupe(_child_result(client, c, metric or "", experiment) for c in children)
    info = {
        "experiment": experiment,
        "suite": experiment,
        "tracking_uri": uri,
        "parent_run_id": parent.info.run_id,
        "metric": metric,
        "reference": ptags.get("harness.reference"),
        "higher_is_better": None if hib is None else _parse_bool(hib, True),
        # planned runs this parent has no child for (e.g. re-used results the tracker did not log)
        "missing": max(0, planned - len(results)) if planned is not None else 0,
    }
    return results, info


def _mlflow_metric_key(name: str) -> str:
    from harness.tracking import metric_key

    return metric_key(name)


# -- command line ----------------------------------------------------------------------------

def _result_dirs(root: Path = Path("results")) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(str(p.parent) for p in root.glob(f"*/{RUNS_FILE}"))[:20]


def _first_metric(results: list[RunResult]) -> str | None:
    return next((r.run.metric for r in results if r.run.metric), None)


@click.command("report")
@click.argument("experiment_or_dir")
@click.option("--tracking-uri", default=None,
              help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Where to write the reports [default: the results dir itself, or results/<experiment>].")
@click.option("--metric", default=None, help="Metric to compare [default: the suite's metric].")
@click.option("--reference", default=None, help="Reference variant for Δ [default: the suite's reference].")
@click.option("--higher-is-better/--lower-is-better", "higher_is_better", default=None,
              help="Metric direction [default: the suite's, else guessed from the metric name].")
@click.option("--parent-run", "parent_run_id", default=None,
              help="MLflow parent run id to report on [default: the latest invocation].")
def report_command(experiment_or_dir: str, tracking_uri: str | None, out_dir: str | None,
                   metric: str | None, reference: str | None, higher_is_better: bool | None,
                   parent_run_id: str | None) -> None:
    """Summarize a suite: EXPERIMENT_OR_DIR is a results directory (with runs.jsonl) or an MLflow
    experiment name (the suite's name). Prints the table and writes CSV, Markdown and plots."""
    target = Path(experiment_or_dir)
    try:
        if target.is_dir() or target.suffix == ".jsonl":
            if not _runs_file(target).is_file():
                if not target.exists():
                    raise ReportError(f"no such file: {target}")
                found = sorted(str(p.parent) for p in target.glob(f"*/{RUNS_FILE}"))[:20]
                hint = f"; result dirs inside: {', '.join(found)}" if found else ""
                raise ReportError(f"{target} has no {RUNS_FILE}{hint}")
            results = load_results_dir(target)
            suite = read_suite_info(target)
            default_out = _runs_file(target).parent
            title = str(suite.get("name") or (results[0].run.suite if results else default_out.name))
            suite_metric = suite.get("metric") or _first_metric(results)
            suite_reference = suite.get("reference")
            suite_hib = suite.get("higher_is_better")
        else:
            try:
                results, info = load_results_mlflow(experiment_or_dir, tracking_uri, parent_run_id)
            except ReportError as exc:
                dirs = _result_dirs()
                hint = f"; result dirs: {', '.join(dirs)}" if dirs else ""
                raise ReportError(f"{experiment_or_dir!r} is not a results directory; {exc}{hint}") from None
            if info.get("missing"):
                click.echo(f"warning: {info['missing']} planned run(s) have no child run under MLflow "
                           f"parent {info['parent_run_id']} (results re-used from an earlier invocation "
                           f"are reported from the suite's runs.jsonl); the table shows the rest.",
                           err=True)
            default_out = Path("results") / experiment_or_dir.replace("/", "_").replace(os.sep, "_")
            title = experiment_or_dir
            suite_metric = info.get("metric") or _first_metric(results)
            suite_reference = info.get("reference")
            suite_hib = info.get("higher_is_better")
    except ReportError as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # MLflow/database errors: one line, no traceback
        raise click.ClickException(f"could not read results from {experiment_or_dir!r}: "
                                   f"{type(exc).__name__}: {_first_line(str(exc))}") from None

    if not results:
        raise click.ClickException(f"{experiment_or_dir!r} has no runs to report")
    variants = list(dict.fromkeys(r.run.variant for r in results))
    chosen_metric = metric or suite_metric
    if not chosen_metric:
        raise click.ClickException("no metric recorded for these runs; pass --metric")
    seen = sorted({k for r in results for k in r.metrics})
    finished = [r for r in results if r.status in FINISHED_STATUSES]
    if finished and not any(chosen_metric in r.metrics for r in finished):
        raise click.ClickException(f"no finished run has metric {chosen_metric!r} "
                                   f"(metrics: {', '.join(seen) or 'none'})")
    if higher_is_better is None:
        if suite_hib is not None and chosen_metric == suite_metric:
            higher_is_better = _parse_bool(suite_hib, True)
        else:
            higher_is_better = infer_higher_is_better(chosen_metric)
    chosen_reference = reference or suite_reference
    if chosen_reference not in variants:
        if reference:
            raise click.ClickException(f"unknown reference variant {reference!r} "
                                       f"(variants: {', '.join(variants)})")
        chosen_reference = variants[0]

    console = default_console()
    frame = results_frame(results)
    summary = summarize(frame, chosen_metric, higher_is_better, chosen_reference)
    print_summary(summary, chosen_metric, console, frame=frame, title=title)
    out = Path(out_dir) if out_dir else default_out
    try:
        written = write_reports(results, out, metric=chosen_metric, higher_is_better=higher_is_better,
                                reference=chosen_reference, title=title)
    except OSError as exc:
        raise click.ClickException(f"could not write reports to {out}: {exc}") from None
    console.print(f"wrote {', '.join(written)} to {out}")
