"""The report's figures (matplotlib, Agg, without pyplot's global state): learning curves (mean
over seeds, ±1 std band, every logged point) and the metric against the cost of each variant, FLOPs
per token and throughput (mean ± std over seeds). Parameters are matched by the budget, so the
metric against them would plot noise; what the variants still differ in is compute and speed.
Legends sit outside the axes, so no label covers data.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from harness.report.stats import is_finite
from harness.report.cells import fmt_count
from harness.runlog import FINISHED_STATUSES
from harness.specs import RunResult

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

MAX_CURVES = 6
DPI = 120


def _colors(variants: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(variants) <= 10 else "tab20"]
    return {v: cmap(i % cmap.N) for i, v in enumerate(variants)}


def new_figure(width: float, height: float) -> Any:
    """A constrained-layout figure on an Agg canvas (no pyplot: safe in threads and tests)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)   # Agg, without touching pyplot's global backend
    return fig


def history_keys(results: list[RunResult], metric: str) -> list[str]:
    """The curves worth a subplot: validation and training metrics (not the learning rate) that
    some run logged at two or more steps; the suite's validation metric and train/loss first."""
    steps: dict[str, set[float]] = {}
    for result in results:
        seen: dict[str, set[float]] = {}
        for point in result.history or ():
            for key, value in point.items():
                if key != "step" and is_finite(value) and is_finite(point.get("step")):
                    seen.setdefault(key, set()).add(float(point["step"]))
        for key, s in seen.items():
            if len(s) > len(steps.get(key, ())):
                steps[key] = s
    keys = [k for k, s in steps.items()
            if len(s) >= 2 and k.startswith(("val/", "train/")) and k != "train/lr"]
    val_metric = "val/" + metric.split("/", 1)[-1]
    priority = [k for k in (val_metric, "train/loss", "val/loss") if k in keys]
    return [*priority, *sorted(k for k in keys if k not in priority)][:MAX_CURVES]


def _history_points(results: list[RunResult]) -> list[dict[str, Any]]:
    """One {variant, seed, step, key, value} per finite history value."""
    return [
        {"variant": r.run.variant, "seed": r.run.seed, "step": float(p["step"]), "key": k, "value": float(v)}
        for r in results for p in r.history if is_finite(p.get("step"))
        for k, v in p.items() if k != "step" and is_finite(v)
    ]


def _plot_curve(ax: Any, points: "pd.DataFrame", key: str, variants: list[str], colors: dict[str, Any]) -> None:
    """One subplot: per variant, the mean over seeds at each step, and a ±1 std band where 2+ seeds."""
    sub = points[points["key"] == key]
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


def _figure_legend(fig: Any, axes: Any) -> None:
    """One legend for the figure, below the axes (clear of the data and the title): every labelled
    artist once, in drawing order."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:
        fig.legend(list(entries.values()), list(entries), loc="outside lower center", fontsize="small",
                   ncols=min(len(entries), 4), frameon=False)


def learning_curves_figure(results: list[RunResult], metric: str, title: str) -> Any:
    """One subplot per ``history_keys`` curve of the finished runs, every logged step a point; None
    without data."""
    import pandas as pd

    finished = [r for r in results if r.status in FINISHED_STATUSES and r.history]
    keys = history_keys(finished, metric)
    points = _history_points(finished) if keys else []
    if not points:
        return None
    long = pd.DataFrame(points)
    variants = list(dict.fromkeys(r.run.variant for r in results))
    colors = _colors(variants)
    ncols = min(len(keys), 3)
    nrows = math.ceil(len(keys) / ncols)
    fig = new_figure(5.0 * ncols, 3.6 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, key in zip(axes, keys):
        _plot_curve(ax, long, key, variants, colors)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    _figure_legend(fig, axes)
    fig.suptitle(f"{title}: learning curves (mean over seeds, band = ±1 std)")
    return fig


def plot_learning_curves(results: list[RunResult], path: Path, metric: str, title: str) -> bool:
    """Save ``learning_curves_figure``; False (nothing saved) without data."""
    fig = learning_curves_figure(results, metric, title)
    if fig is None:
        return False
    fig.savefig(path, dpi=DPI)
    return True


def plain_log_axis(axis: Any, formatter: Callable[[float], str] = lambda v: f"{v:g}") -> None:
    """A log-scaled axis labelled with plain numbers (0.5, 1, 2, 5, 10), not 10^k: at 1-2-5 steps
    over up to 3 decades, at the powers of ten beyond. Call it once the data are plotted."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    low, high = sorted(abs(v) for v in axis.get_view_interval())
    decades = math.log10(high / low) if low > 0 else math.inf
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades <= 3 else (1.0,)))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: formatter(v)))
    axis.set_minor_formatter(NullFormatter())


def throughput_column(frame: "pd.DataFrame") -> str | None:
    """The throughput the table shows: samples/s where recorded, else tokens/s; None for neither."""
    for column in ("samples_per_s", "tokens_per_s"):
        if column in frame.columns and frame[column].notna().any():
            return column
    return None


def _fmt_rate(value: float) -> str:
    """A rate as the table writes it: 1,000 (and 2.5 below 10)."""
    return f"{value:,.0f}" if abs(value) >= 10 else f"{value:.2g}"


def _cost_panel(ax: Any, data: "pd.DataFrame", x: str, metric: str, colors: dict[str, Any],
                fmt: Callable[[float], str]) -> None:
    """Per variant: its seeds as faint dots (x for a run timed on a busy machine) and the mean with
    ±1 std error bars on both axes; x ticks written by ``fmt``, on a log scale past 20x."""
    import pandas as pd
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    for variant, color in colors.items():
        sub = data[(data["variant"] == variant) & data[x].notna()]
        if sub.empty:
            continue
        busy = sub["contended"] > 0.5 if "contended" in sub.columns else pd.Series(False, index=sub.index)
        ax.scatter(sub.loc[~busy, x], sub.loc[~busy, metric], color=color, alpha=0.35, s=14, lw=0)
        ax.scatter(sub.loc[busy, x], sub.loc[busy, metric], color=color, alpha=0.6, s=22, marker="x")
        xs, ys = sub[x].astype(float), sub[metric].astype(float)
        ax.errorbar(xs.mean(), ys.mean(), xerr=xs.std() if len(sub) > 1 else None,
                    yerr=ys.std() if len(sub) > 1 else None, fmt="o", color=color, ms=6, mec="black",
                    mew=0.6, capsize=3, lw=1.2, label=variant)
    values = data[x].dropna().astype(float)
    if len(values) and values.min() > 0 and values.max() / values.min() > 20:
        ax.set_xscale("log")
        plain_log_axis(ax.xaxis, fmt)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(5))   # "40.25k" labels need room: few ticks
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: fmt(v)))
    ax.margins(x=0.08)   # an error bar's cap at the edge would merge with the frame
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)


def metric_vs_cost_figure(frame: "pd.DataFrame", metric: str, title: str) -> Any:
    """The metric of the finished runs against FLOPs per token (left) and throughput (right), one
    point per variant with ±1 std over seeds; None without data."""
    if frame.empty or metric not in frame.columns:
        return None
    data = frame[frame["status"].isin(FINISHED_STATUSES) & frame[metric].notna()]
    speed = throughput_column(data)
    panels = [(x, label, fmt) for x, label, fmt in (
        ("flops_per_token", "forward FLOPs per token", fmt_count),
        (speed, f"throughput ({(speed or '').replace('_per_s', '')}/s)", _fmt_rate),
    ) if x and x in data.columns and data[x].notna().any()]
    if not panels:
        return None
    colors = _colors(list(dict.fromkeys(frame["variant"])))
    fig = new_figure(5.2 * len(panels), 4.8)
    axes = fig.subplots(1, len(panels), squeeze=False).ravel()
    for ax, (x, label, fmt) in zip(axes, panels):
        _cost_panel(ax, data, x, metric, colors, fmt)
        ax.set_xlabel(label)
    _figure_legend(fig, axes)
    busy = "contended" in data.columns and bool((data["contended"] > 0.5).any())
    fig.suptitle(f"{title}: {metric} vs cost\n(mean ± 1 std over seeds; dots = seeds"
                 f"{', x = timed on a busy machine' if busy else ''})", fontsize="medium")
    return fig


def plot_metric_vs_cost(frame: "pd.DataFrame", path: Path, metric: str, title: str) -> bool:
    """Save ``metric_vs_cost_figure``; False (nothing saved) without data."""
    fig = metric_vs_cost_figure(frame, metric, title)
    if fig is None:
        return False
    fig.savefig(path, dpi=DPI)
    return True
