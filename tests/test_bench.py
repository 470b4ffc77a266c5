"""harness bench: run_bench rows, ratios, failures recorded, the click command's files and errors."""
from __future__ import annotations

import click
import pytest
import torch
from click.testing import CliRunner

from harness import bench, bench_plot
from harness.cli.bench import bench_command
from harness.suite import parse_literal
from harness.nn.softmax import SoftmaxAttention
from harness.specs import MixerSpec

TINY = dict(dim=16, heads=2, batch=2, warmup=0, reps=2)
CLI_TINY = ["--dim", "16", "--heads", "2", "--batch", "2", "--warmup", "0", "--reps", "2", "--threads", "1"]


def test_run_bench_softmax_rows():
    frame = bench.run_bench(["softmax"], [64, 16], **TINY)
    assert list(frame["T"]) == [16, 64]
    assert (frame["status"] == "ok").all()
    assert (frame["fwd_ms"] > 0).all() and (frame["fwd_bwd_ms"] > 0).all()
    assert (frame["ratio_vs_softmax"] == 1.0).all() and (frame["fwd_ratio_vs_softmax"] == 1.0).all()
    assert (frame["flops"] > 0).all()
    assert list(frame["grid"]) == ["4x4", "8x8"]


def test_run_bench_forward_only_has_no_backward_times():
    frame = bench.run_bench(["softmax"], [16], backward=False, **TINY)
    assert frame["fwd_bwd_ms"].isna().all()
    assert frame["ratio_vs_softmax"].iloc[0] == 1.0


def test_run_bench_interleaves_several_mixers_and_reports_progress(monkeypatch):
    # A second registered name for the softmax class stands in for a plugin mixer.
    from harness.registry import get_registries

    spec = MixerSpec("twin", "harness.nn.softmax:SoftmaxAttention")
    monkeypatch.setitem(get_registries().mixers._specs, "twin", spec)
    seen = []
    frame = bench.run_bench(["softmax", "twin"], [16], on_progress=lambda d, n: seen.append(n), **TINY)
    assert list(frame["status"]) == ["ok", "ok"]
    assert frame["ratio_vs_softmax"].iloc[1] > 0
    assert sum(seen) == 2


def test_out_of_memory_is_recorded_not_fatal(monkeypatch):
    def forward(self, x, pad=None):
        if x.shape[1] >= 64:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return x

    monkeypatch.setattr(SoftmaxAttention, "forward", forward)
    frame = bench.run_bench(["softmax"], [16, 64, 256], **TINY).set_index("T")
    assert frame.loc[16, "status"] == "ok"
    assert frame.loc[64, "status"] == "oom" and "out of memory" in frame.loc[64, "message"]
    assert frame.loc[256, "status"] == "oom" and "T=64" in frame.loc[256, "message"]  # not attempted


def test_other_errors_are_recorded(monkeypatch):
    def forward(self, x, pad=None):
        raise ValueError("shape mismatch")

    monkeypatch.setattr(SoftmaxAttention, "forward", forward)
    row = bench.run_bench(["softmax"], [16], **TINY).iloc[0]
    assert row["status"] == "error" and row["message"] == "ValueError: shape mismatch"


def test_torch_oom_error_is_classified():
    assert bench._is_oom(torch.cuda.OutOfMemoryError("boom"))
    assert not bench._is_oom(RuntimeError("size mismatch"))


def test_skip_reasons():
    grid_mixer = MixerSpec("g", "x:y", needs_grid=True, causal_ok=False)
    assert "not causal" in bench.skip_reason(grid_mixer, 64, causal=True)
    assert bench.skip_reason(grid_mixer, 64, causal=False) is None   # 8x8
    assert bench.skip_reason(grid_mixer, 128, causal=False) is None  # 8x16
    assert "grid" in bench.skip_reason(grid_mixer, 13, causal=False)  # prime
    assert bench.skip_reason(MixerSpec("f", "x:y", fixed_len=True), 50, causal=False) is None


def test_grid_for_is_most_square():
    assert bench.grid_for(64) == (8, 8)
    assert bench.grid_for(128) == (8, 16)
    assert bench.grid_for(13) == (1, 13)


def test_parse_options_and_values():
    parsed = bench.parse_options(["mop.edgewise.views=5", "mop.edgewise.gate_init=mix5", "softmax.dropout=0.1",
                                  "softmax.bias=true", 'x.y.z="quoted"', "a.l=[1, 2]"])
    assert parsed == {"mop.edgewise": {"views": 5, "gate_init": "mix5"}, "softmax": {"dropout": 0.1, "bias": True},
                      "x.y": {"z": "quoted"}, "a": {"l": [1, 2]}}
    assert parse_literal("__import__('os')") == "__import__('os')"  # a string, never evaluated
    with pytest.raises(click.BadParameter):
        bench.parse_options(["noequals"])


def test_parse_seq_lens():
    assert bench.parse_seq_lens("256, 64,64") == [64, 256]
    for bad in ("", "64,abc", "0,64"):
        with pytest.raises(click.BadParameter):
            bench.parse_seq_lens(bad)


def test_cli_writes_csv_and_plot(tmp_path):
    result = CliRunner().invoke(bench_command,
                                ["--mixers", "softmax", "--seq-lens", "16,36", "--out", str(tmp_path), *CLI_TINY])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "bench.csv").read_text().startswith("mixer,T,status")
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert "torch=" in result.output and "softmax" in result.output and "T^" in result.output


def test_cli_unknown_mixer_suggests_without_traceback(tmp_path):
    result = CliRunner().invoke(bench_command, ["--mixers", "sofmax", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "Unknown mixer 'sofmax'. Did you mean: softmax?" in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("args, message", [
    (["--seq-lens", "64,x"], "--seq-lens"),
    (["--option", "nosuch.k=1"], "not benchmarked"),
    (["--dim", "10", "--heads", "4"], "not divisible"),
])
def test_cli_bad_input_is_a_usage_error(tmp_path, args, message):
    result = CliRunner().invoke(bench_command, ["--mixers", "softmax", "--out", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output
    assert isinstance(result.exception, SystemExit)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_cli_half_precision_needs_cuda(tmp_path):
    result = CliRunner().invoke(bench_command, ["--mixers", "softmax", "--dtype", "bf16", "--device", "cpu",
                                                      "--out", str(tmp_path)])
    assert result.exit_code == 2 and "only supported on cuda" in result.output


def test_cli_logs_to_mlflow(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default artifact root is relative to the working directory
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = CliRunner().invoke(bench_command, ["--mixers", "softmax", "--seq-lens", "16", "--mlflow",
                                                      "--tracking-uri", uri, *CLI_TINY])
    assert result.exit_code == 0, result.output
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("bench").experiment_id])[0]
    assert run.data.params["mixers"] == "softmax"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"bench.csv", "bench.png"}


def test_plot_has_p20_p80_bands_and_plain_tick_labels():
    import pandas as pd
    from matplotlib.collections import PolyCollection

    rows = [{"mixer": m, "T": t, "status": "ok", "fwd_bwd_ms": base * t / 64,
             "fwd_bwd_ms_p20": 0.9 * base * t / 64, "fwd_bwd_ms_p80": 1.2 * base * t / 64}
            for m, base in (("softmax", 0.5), ("other", 2.0)) for t in (64, 128, 256, 512)]
    fig = bench_plot.bench_figure(pd.DataFrame(rows), "fwd_bwd_ms", "title")
    ax = fig.axes[0]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2                                  # one p20-p80 band per mixer
    top = bands[0].get_paths()[0].vertices[:, 1].max()
    assert top == pytest.approx(1.2 * 0.5 * 512 / 64)      # the band reaches softmax's p80 at T=512
    fig.canvas.draw()
    labels = [t.get_text() for axis in (ax.xaxis, ax.yaxis) for t in axis.get_ticklabels() if t.get_text()]
    assert labels and not any("10^" in label or "$" in label for label in labels)
    assert {"64", "512", "1", "10"} <= set(labels)          # plain numbers on both axes


def test_efficiency_is_time_ratio_over_flop_ratio():
    import pandas as pd

    rows = [{"mixer": "softmax", "T": 64, "status": "ok", "fwd_ms": 1.0, "fwd_bwd_ms": 2.0, "flops": 100.0},
            {"mixer": "heavy", "T": 64, "status": "ok", "fwd_ms": 3.0, "fwd_bwd_ms": 6.0, "flops": 200.0},
            {"mixer": "free", "T": 64, "status": "ok", "fwd_ms": 0.1, "fwd_bwd_ms": 0.2, "flops": 0.0}]
    frame = bench.add_ratios(pd.DataFrame(rows).reindex(columns=bench.COLUMNS), backward=True).set_index("mixer")
    assert frame.loc["heavy", "ratio_vs_softmax"] == 3.0 and frame.loc["heavy", "flop_ratio_vs_softmax"] == 2.0
    assert frame.loc["heavy", "efficiency"] == 1.5 and frame.loc["softmax", "efficiency"] == 1.0
    assert frame.loc["free", "efficiency"] != frame.loc["free", "efficiency"]   # ~0 FLOPs: NaN, exempt


def test_run_bench_rows_have_efficiency_and_no_compile_columns_by_default():
    frame = bench.run_bench(["softmax"], [16], **TINY)
    row = frame.iloc[0]
    assert row["efficiency"] == 1.0 and row["flop_ratio_vs_softmax"] == 1.0
    assert not row["compiled"] and row["compile_s"] != row["compile_s"]


def test_cli_prints_the_efficiency_column(tmp_path):
    result = CliRunner().invoke(bench_command, ["--mixers", "softmax", "--seq-lens", "16", "--out", str(tmp_path),
                                                *CLI_TINY], terminal_width=250)
    assert result.exit_code == 0, result.output
    assert "efficiency" in result.output and "FLOP ratio" in result.output and "1.25" in result.output
    assert "efficiency" in (tmp_path / "bench.csv").read_text().splitlines()[0]


def test_plot_marks_the_efficiency_target():
    import pandas as pd

    rows = [{"mixer": m, "T": t, "status": "ok", "fwd_bwd_ms": base * t / 64, "efficiency": eff}
            for m, base, eff in (("softmax", 0.5, 1.0), ("other", 2.0, 1.6)) for t in (64, 256)]
    fig = bench_plot.bench_figure(pd.DataFrame(rows), "fwd_bwd_ms", "title")
    assert len(fig.axes) == 2
    eff_ax = fig.axes[1]
    targets = [ln for ln in eff_ax.get_lines() if set(ln.get_ydata()) == {bench.EFFICIENCY_TARGET}]
    assert targets and "1.25" in targets[0].get_label()
    assert {ln.get_label() for ln in eff_ax.get_lines()} >= {"softmax", "other"}
