"""The report's figures: the metric against cost (FLOPs per token, throughput) with error bars over
seeds and a legend beside the axes; learning curves with every logged point, legend beside them."""
from __future__ import annotations

import pytest

from harness import report
from harness.report.plots import learning_curves_figure, metric_vs_cost_figure
from harness.specs import Run, RunResult

pytest.importorskip("matplotlib")
pd = pytest.importorskip("pandas")

METRIC = "test/accuracy"
VARIANTS = {  # variant -> (FLOPs per token, samples/s per seed, accuracy per seed)
    "softmax": (1.2e6, [900.0, 1000.0, 1100.0], [0.80, 0.82, 0.84]),
    "a_long_variant_name": (2.5e6, [500.0, 520.0, 540.0], [0.83, 0.84, 0.88]),
    "another_long_one": (2.4e6, [510.0, 530.0, 550.0], [0.82, 0.85, 0.86]),
}
LOG_STEPS = list(range(10, 101, 10))
EVAL_STEPS = [25, 50, 75, 100]


def results() -> list[RunResult]:
    out = []
    for variant, (flops, speeds, accs) in VARIANTS.items():
        for seed, (speed, acc) in enumerate(zip(speeds, accs)):
            run = Run(suite="demo", variant=variant, seed=seed, task="tiny", model="vit", mixer="softmax",
                      metric=METRIC)
            history = [{"step": s, "train/loss": 2.0 / s} for s in LOG_STEPS]
            history += [{"step": s, "val/accuracy": acc * s / 100} for s in EVAL_STEPS]
            out.append(RunResult(run=run, status="finished", metrics={METRIC: acc},
                                 efficiency={"params": 60_000.0, "flops_per_token": flops, "samples_per_s": speed,
                                             "contended": 1.0 if seed == 2 and variant == "softmax" else 0.0},
                                 history=sorted(history, key=lambda p: p["step"])))
    return out


def _boxes(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = [ax.get_window_extent(renderer) for ax in fig.axes if ax.get_visible()]
    legends = [legend.get_window_extent(renderer) for legend in fig.legends]
    return axes, legends


def test_metric_vs_cost_has_both_costs_error_bars_and_a_legend_beside_the_axes():
    frame = report.results_frame(results())
    fig = metric_vs_cost_figure(frame, METRIC, "demo")
    flops_ax, speed_ax = fig.axes
    assert "FLOPs per token" in flops_ax.get_xlabel() and "samples/s" in speed_ax.get_xlabel()
    for ax in (flops_ax, speed_ax):
        assert len(ax.containers) == len(VARIANTS)         # one error bar (mean ± std) per variant
        assert not ax.texts                                 # no annotations to collide
        assert not ax.get_legend()
    # the error bar of a_long_variant_name: mean and std over its three seeds on both axes
    bar = speed_ax.containers[1]
    x, y = bar.lines[0].get_data()
    assert x[0] == pytest.approx(520.0) and y[0] == pytest.approx(0.85)
    y_segment = bar.lines[2][1].get_segments()[0]
    assert y_segment[1][1] - y_segment[0][1] == pytest.approx(2 * pd.Series([0.83, 0.84, 0.88]).std())
    axes, legends = _boxes(fig)
    assert len(legends) == 1 and all(not legends[0].overlaps(box) for box in axes)
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert texts == list(VARIANTS)
    assert "x = timed on a busy machine" in fig._suptitle.get_text()


def test_metric_vs_cost_without_cost_data_is_none():
    frame = report.results_frame(results()).drop(columns=["flops_per_token", "samples_per_s"])
    assert metric_vs_cost_figure(frame, METRIC, "demo") is None


def test_learning_curves_plot_every_logged_point_and_keep_the_legend_out_of_the_data():
    fig = learning_curves_figure(results(), METRIC, "demo")
    by_title = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert list(by_title) == ["val/accuracy", "train/loss"]
    for key, steps in (("train/loss", LOG_STEPS), ("val/accuracy", EVAL_STEPS)):
        lines = by_title[key].get_lines()
        assert len(lines) == len(VARIANTS)
        assert all(list(line.get_xdata()) == steps for line in lines)
    axes, legends = _boxes(fig)
    assert len(legends) == 1 and all(not legends[0].overlaps(box) for box in axes)
    assert all(ax.get_legend() is None for ax in fig.axes)
