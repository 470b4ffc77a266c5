"""``harness bench``'s figure: time vs sequence length per mixer, and per-FLOP efficiency against
its target line. matplotlib loads inside the functions (``harness.report.plots``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.bench import EFFICIENCY_TARGET, REFERENCE


def bench_figure(frame: Any, time_col: str, title: str) -> Any:
    """Left: log-log time vs T, one line per mixer (the median) with its p20-p80 band, a dashed T^2
    guide through softmax's first point, plain numbers on both axes. Right (when the frame has an
    ``efficiency`` column): per-FLOP efficiency vs T per mixer, with the target line at 1.25."""
    from harness.report.plots import new_figure, plain_log_axis

    with_eff = "efficiency" in frame.columns and frame["efficiency"].notna().any()
    fig = new_figure(13 if with_eff else 7, 5)
    ax, *rest = fig.subplots(1, 2) if with_eff else [fig.subplots()]
    ok = frame[frame["status"] == "ok"].sort_values("T")
    for name, group in ok.groupby("mixer", sort=False):
        line, = ax.plot(group["T"], group[time_col], marker="o", label=name)
        low, high = f"{time_col}_p20", f"{time_col}_p80"
        if low in group.columns and high in group.columns and group[low].notna().any():
            ax.fill_between(group["T"], group[low], group[high], color=line.get_color(), alpha=0.2, lw=0)
    ref = ok[ok["mixer"] == REFERENCE]
    if len(ref):
        t0, y0 = float(ref["T"].iloc[0]), float(ref[time_col].iloc[0])
        ts = sorted(frame["T"].unique())
        ax.plot(ts, [y0 * (t / t0) ** 2 for t in ts], "k--", linewidth=1, label="T^2 guide")
    ax.set(xscale="log", yscale="log", xlabel="sequence length T",
           ylabel=f"{time_col} (median, band = p20-p80)", title=title)
    _length_axis(ax, frame)
    plain_log_axis(ax.yaxis)
    ax.grid(True, which="both", axis="y", alpha=0.3)
    ax.grid(True, which="major", axis="x", alpha=0.3)   # T's minor ticks are hidden: no lines for them
    ax.legend()
    if rest:
        _efficiency_axes(rest[0], frame)
    return fig


def _efficiency_axes(ax: Any, frame: Any) -> None:
    """Efficiency (time ratio / FLOP ratio to softmax) vs T, one line per mixer, target line at 1.25."""
    ok = frame[(frame["status"] == "ok") & frame["efficiency"].notna()].sort_values("T")
    for name, group in ok.groupby("mixer", sort=False):
        ax.plot(group["T"], group["efficiency"], marker="o", label=name)
    ax.axhline(EFFICIENCY_TARGET, color="red", linestyle="--", linewidth=1.2,
               label=f"target {EFFICIENCY_TARGET:g} (TARGETS.md)")
    ax.set_xscale("log")
    _length_axis(ax, frame)
    ax.set(xlabel="sequence length T", ylabel="efficiency = time ratio / FLOP ratio (vs softmax)",
           title="per-FLOP efficiency (lower is better)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()


def write_plot(frame: Any, time_col: str, path: Path, title: str) -> None:
    """Save ``bench_figure``."""
    bench_figure(frame, time_col, title).savefig(path, dpi=120)


def _length_axis(ax: Any, frame: Any) -> None:
    """The measured lengths as plain tick labels on a log x axis, without minor ticks."""
    lengths = sorted(frame["T"].unique())
    ax.set_xticks(lengths, labels=[str(t) for t in lengths])
    ax.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)
