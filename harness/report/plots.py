"""The report's figures (matplotlib, Agg, without pyplot's global state): learning curves (mean
over seeds, ±1 std band) and the metric against achieved parameters."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def _new_figure(width: float, height: float) -> Any:
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


def plot_learning_curves(results: list[RunResult], path: Path, metric: str, title: str) -> bool:
    """Save one subplot per ``history_keys`` curve of the finished runs; False (nothing saved) without data."""
    import pandas as pd

    finished = [r for r in results if r.status in FINISHED_STATUSES and r.history]
    keys = history_keys(finished, metric)
    points = _history_points(finished) if keys else []
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
        _plot_curve(ax, long, key, variants, colors)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    axes[0].legend(fontsize="small")
    fig.suptitle(f"{title}: learning curves (mean over seeds, band = ±1 std)")
    fig.savefig(path, dpi=DPI)
    return True


def plot_metric_vs_params(frame: "pd.DataFrame", path: Path, metric: str, title: str) -> bool:
    """Save the metric of each finished seed and each variant's mean against achieved parameters,
    with the budget target; False (nothing saved) without data."""
    if frame.empty or metric not in frame.columns or "params" not in frame.columns:
        return False
    data = frame[frame["status"].isin(FINISHED_STATUSES)]
    data = data[data[metric].notna() & data["params"].notna()]
    if data.empty:
        return False
    from matplotlib.ticker import FuncFormatter, MaxNLocator

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
        ax.axvline(float(data["target_params"].dropna().median()), color="grey", ls="--", lw=1, label="target")
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: fmt_count(x)))
    ax.set_xlabel("parameters (achieved)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(f"{title}: {metric} vs parameters (dots = seeds, ◆ = mean)")
    fig.savefig(path, dpi=DPI)
    return True
