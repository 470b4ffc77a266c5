"""harness.report: statistics, tables, files, loaders and the `report` command (no training)."""
from __future__ import annotations

import dataclasses
import json
import math
import warnings

import pytest

from harness import report
from harness.cli.report import report_command
from harness.report.plots import history_keys
from harness.specs import Run, RunResult

pd = pytest.importorskip("pandas")
stats = pytest.importorskip("scipy.stats")

METRIC = "test/accuracy"
T975_DF2 = 4.302652729749464           # scipy.stats.t.ppf(0.975, 2), written out to check it
TARGET = 200_000

# variant -> seed -> accuracy (None = that run failed)
ACC = {
    "softmax": {0: 0.80, 1: 0.82, 2: 0.84},
    "mop": {0: 0.83, 1: 0.84, 2: 0.88},
    "token_mixer": {0: 0.81, 1: None, 2: 0.86},
}
PARAMS = {"softmax": 200_400, "mop": 199_000, "token_mixer": 201_000}


def make_result(variant: str, seed: int, acc: float | None, *, overrides=(), mixer=None,
                status=None) -> RunResult:
    run = Run(suite="demo", variant=variant, seed=seed, task="tiny", model="vit",
              mixer=mixer or variant, metric=METRIC, overrides=tuple(overrides),
              budget={"params": TARGET, "tolerance": 0.02})
    if acc is None:
        return RunResult(run=run, status=status or "failed",
                         error="Traceback (most recent call last):\n  ...\nRuntimeError: loss is NaN at step 40",
                         history=[{"step": 20, "train/loss": 2.0}])
    params = PARAMS.get(variant, TARGET)
    return RunResult(
        run=run,
        status=status or "finished",
        metrics={METRIC: acc, "val/accuracy": acc - 0.01, "test/loss": 1.0 - acc},
        efficiency={"params": params, "target_params": TARGET, "param_gap": (params - TARGET) / TARGET,
                    "flops_per_token": 1.5e6, "samples_per_s": 1000.0 + 10 * seed, "peak_mem_mb": 512.0},
        history=[{"step": s, "train/loss": 2.0 / s + seed * 0.01,
                  **({"val/accuracy": acc * s / 300} if s >= 200 else {})}
                 for s in (100, 200, 300)],
        run_id=f"{variant}-{seed}",
    )


def make_results() -> list[RunResult]:
    return [make_result(v, s, a, overrides=("train.lr",) if v == "mop" else ())
            for v, seeds in ACC.items() for s, a in seeds.items()]


def summary_of(results, reference="softmax", higher_is_better=True):
    return report.summarize(report.results_frame(results), METRIC, higher_is_better, reference).set_index("variant")


# -- statistics ------------------------------------------------------------------------------

def test_results_frame_one_row_per_run():
    frame = report.results_frame(make_results())
    assert len(frame) == 9
    for col in ("variant", "mixer", "seed", "status", "error", "overrides", METRIC, "params",
                "param_gap", "samples_per_s", "peak_mem_mb", "flops_per_token"):
        assert col in frame.columns
    failed = frame[frame["status"] == "failed"]
    assert list(failed["variant"]) == ["token_mixer"] and math.isnan(failed[METRIC].iloc[0])
    assert set(frame.loc[frame["variant"] == "mop", "overrides"]) == {"train.lr"}


def test_summary_mean_std_ci_by_hand():
    s = summary_of(make_results())
    ref = s.loc["softmax"]
    assert ref["mean"] == pytest.approx(0.82)
    assert ref["std"] == pytest.approx(0.02)
    assert ref["ci95"] == pytest.approx(0.02 * T975_DF2 / math.sqrt(3))
    assert ref["ci95"] == pytest.approx(0.04968, abs=1e-5)
    assert bool(ref["reference"]) and math.isnan(ref["delta"]) and math.isnan(ref["p_value"])
    assert ref["params"] == pytest.approx(200_400)
    assert ref["param_gap_pct"] == pytest.approx(0.2)
    assert s.loc["mop"]["param_gap_pct"] == pytest.approx(-0.5)   # signed
    assert ref["samples_per_s"] == pytest.approx(1010.0)
    assert ref["n_finished"] == 3 and ref["n_runs"] == 3 and ref["n_failed"] == 0


def test_summary_order_reference_first_then_suite_order():
    s = report.summarize(report.results_frame(make_results()), METRIC, True, "mop")
    assert list(s["variant"]) == ["mop", "softmax", "token_mixer"]


def test_paired_delta_and_p_value_match_scipy():
    s = summary_of(make_results())
    mop, ref = [0.83, 0.84, 0.88], [0.80, 0.82, 0.84]
    assert s.loc["mop", "delta"] == pytest.approx(0.03)
    expected = stats.ttest_rel(mop, ref).pvalue
    assert s.loc["mop", "p_value"] == pytest.approx(expected)
    # and by hand: differences [.03, .02, .04] -> t = 0.03 / (0.01 / sqrt 3), df = 2, two-sided
    assert s.loc["mop", "p_value"] == pytest.approx(2 * stats.t.sf(0.03 / (0.01 / math.sqrt(3)), 2), rel=1e-6)
    assert s.loc["mop", "n_paired"] == 3


def test_failed_run_counted_and_excluded():
    s = summary_of(make_results())
    tm = s.loc["token_mixer"]
    assert tm["n_runs"] == 3 and tm["n_finished"] == 2 and tm["n_failed"] == 1 and tm["n"] == 2
    assert tm["mean"] == pytest.approx((0.81 + 0.86) / 2)
    assert tm["std"] == pytest.approx(stats.tstd([0.81, 0.86]))
    # paired only on seeds both finished (0 and 2)
    assert tm["n_paired"] == 2
    assert tm["delta"] == pytest.approx(((0.81 - 0.80) + (0.86 - 0.84)) / 2)
    assert tm["p_value"] == pytest.approx(stats.ttest_rel([0.81, 0.86], [0.80, 0.84]).pvalue)
    failures = report.summarize(report.results_frame(make_results()), METRIC, True, "softmax").attrs["failures"]
    assert failures == [{"variant": "token_mixer", "seed": 1, "status": "failed",
                         "error": make_result("token_mixer", 1, None).error}]


def test_best_follows_direction_and_flags_overrides():
    s = summary_of(make_results())
    assert s["best"].tolist() == [False, True, False] and s.index[1] == "mop"
    assert bool(s.loc["mop", "overridden"]) and s.loc["mop", "overrides"] == "train.lr"
    assert not bool(s.loc["softmax", "overridden"])
    lower = report.summarize(report.results_frame(make_results()), METRIC, False, "softmax").set_index("variant")
    assert lower["best"].idxmax() == "softmax"


def test_degenerate_cases_give_nan_without_warnings():
    results = [
        make_result("softmax", 0, 0.80), make_result("softmax", 1, 0.82),
        make_result("mop", 0, 0.85), make_result("mop", 1, 0.87),     # constant differences
        make_result("token_mixer", 0, 0.70),                          # one seed
        make_result("solo", 5, 0.9, mixer="softmax"),                 # no shared seed
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = summary_of(results)
    assert s.loc["mop", "delta"] == pytest.approx(0.05) and math.isnan(s.loc["mop", "p_value"])
    tm = s.loc["token_mixer"]
    assert tm["mean"] == pytest.approx(0.70) and math.isnan(tm["std"]) and math.isnan(tm["ci95"])
    assert tm["delta"] == pytest.approx(-0.10) and math.isnan(tm["p_value"])
    assert s.loc["solo", "n_paired"] == 0 and math.isnan(s.loc["solo", "delta"])


def test_unknown_reference_is_a_clear_error():
    with pytest.raises(report.ReportError, match="nope.*softmax, mop, token_mixer"):
        report.summarize(report.results_frame(make_results()), METRIC, True, "nope")


def test_direction_flag_then_recorded_for_suite_metric_then_registry(tmp_path):
    from click.testing import CliRunner

    from harness.report.sources import metric_direction

    # the flag wins; what was recorded counts only for the suite's metric; else the registry
    assert metric_direction(METRIC, False, suite_metric=METRIC, recorded=True) is False
    assert metric_direction(METRIC, None, suite_metric=METRIC, recorded=False) is False
    assert metric_direction("test/loss", None, suite_metric=METRIC, recorded=True) is False
    assert metric_direction("val/accuracy", None, suite_metric=METRIC, recorded=False) is True
    assert metric_direction("test/f1", None, suite_metric="test/f1", recorded=False) is False
    with pytest.raises(report.ReportError, match="'test/f1'.*--higher-is-better or --lower-is-better"):
        metric_direction("test/f1", None, suite_metric=METRIC, recorded=True)

    results = make_results()
    for r in results:
        if r.status == "finished":
            r.metrics["test/f1"] = r.metrics["test/loss"]
    write_jsonl(tmp_path / "runs.jsonl", results)
    (tmp_path / "suite.json").write_text(json.dumps(
        {"name": "demo", "metric": METRIC, "reference": "softmax", "higher_is_better": False}))
    runner = CliRunner()

    def best(*args):
        res = runner.invoke(report_command, [str(tmp_path), *args], terminal_width=200)
        assert res.exit_code == 0, res.output
        summary = pd.read_csv(tmp_path / "summary.csv")
        return summary.loc[summary["best"], "variant"].tolist()

    assert best() == ["softmax"]                            # recorded: lower accuracy is better
    assert best("--higher-is-better") == ["mop"]
    assert best("--metric", "test/loss") == ["mop"]         # registry: loss goes down
    assert best("--metric", "test/f1", "--higher-is-better") == ["softmax"]
    res = runner.invoke(report_command, [str(tmp_path), "--metric", "test/f1"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "--higher-is-better or --lower-is-better" in res.output and len(res.output.strip().splitlines()) == 1


# -- console and files -----------------------------------------------------------------------

def test_print_summary_table_footnote_and_failures():
    from rich.console import Console

    frame = report.results_frame(make_results())
    summary = report.summarize(frame, METRIC, True, "softmax")
    console = Console(record=True, width=220, color_system=None)
    report.print_summary(summary, METRIC, console)
    text = console.export_text()
    for variant in ACC:
        assert variant in text
    assert "mop†" in text and "per-variant overrides" in text and "train.lr" in text
    assert "0.8200 ± 0.0200" in text and "±0.0497" in text and "ref" in text
    assert "+0.0300 (p=0.035)" in text and "+0.0150 (p=0.205 n=2)" in text
    assert "token_mixer seed 1 (failed): RuntimeError: loss is NaN at step 40" in text


def test_write_reports_creates_all_files(tmp_path):
    written = report.write_reports(make_results(), tmp_path / "out", metric=METRIC, higher_is_better=True,
                                   reference="softmax", title="demo")
    assert set(written) == {"results.csv", "summary.csv", "results.md", "learning_curves.png",
                            "metric_vs_params.png"}
    for path in written.values():
        assert path.is_file() and path.stat().st_size > 0
    assert written["learning_curves.png"].read_bytes()[:4] == b"\x89PNG"
    # one subplot per curve: the suite's validation metric first, then train/loss
    assert history_keys(make_results(), METRIC) == ["val/accuracy", "train/loss"]
    md = written["results.md"].read_text()
    for variant in ACC:
        assert f"| {variant}" in md
    assert "**0.8500 ± 0.0265**" in md                     # best (mop) in bold
    assert "Failed runs" in md and "`token_mixer` seed 1 (failed): RuntimeError: loss is NaN" in md
    assert "paired t-test" in md
    per_run = pd.read_csv(written["results.csv"])
    assert len(per_run) == 9 and METRIC in per_run.columns
    summary = pd.read_csv(written["summary.csv"])
    assert list(summary["variant"]) == ["softmax", "mop", "token_mixer"]


def test_write_reports_skips_plots_without_data(tmp_path):
    report.write_reports(make_results(), tmp_path, metric=METRIC, reference="softmax", title="demo")
    assert (tmp_path / "learning_curves.png").exists()
    results = [make_result("softmax", 0, None), make_result("mop", 0, None)]   # all failed
    for r in results:
        r.history = []
    written = report.write_reports(results, tmp_path, metric=METRIC, higher_is_better=True,
                                   reference=None, title="demo")
    assert set(written) == {"results.csv", "summary.csv", "results.md"}
    assert not (tmp_path / "learning_curves.png").exists()      # the earlier plot is not left behind
    assert not (tmp_path / "metric_vs_params.png").exists()
    assert "RuntimeError" in written["results.md"].read_text()


# -- loading ---------------------------------------------------------------------------------

def write_jsonl(path, results):
    with open(path, "w") as fh:
        for r in results:
            fh.write(json.dumps(dataclasses.asdict(r)) + "\n")


def test_runs_jsonl_round_trip_last_line_wins(tmp_path):
    results = make_results()
    # an earlier failed attempt of softmax/seed0, superseded by the finished one written later
    write_jsonl(tmp_path / "runs.jsonl", [make_result("softmax", 0, None), *results])
    loaded = report.load_results_dir(tmp_path)
    assert len(loaded) == 9
    assert loaded == results        # dataclass equality: overrides come back as a tuple
    assert [r.run.key for r in loaded][:3] == ["softmax/seed0", "softmax/seed1", "softmax/seed2"]
    assert report.load_results_dir(tmp_path / "runs.jsonl") == results


def test_skipped_counts_as_finished(tmp_path):
    results = make_results()
    results[0].status = "skipped"
    s = summary_of(results)
    assert s.loc["softmax", "n_finished"] == 3 and s.loc["softmax", "mean"] == pytest.approx(0.82)


def test_corrupt_line_names_file_and_line(tmp_path):
    path = tmp_path / "runs.jsonl"
    write_jsonl(path, make_results()[:2])
    with open(path, "a") as fh:
        fh.write('{"run": {"suite": "demo", "varia\n')
    with pytest.raises(report.ReportError, match=r"runs\.jsonl:3: not valid JSON"):
        report.load_results_dir(tmp_path)
    path.write_text(json.dumps({"status": "finished"}) + "\n")
    with pytest.raises(report.ReportError, match=r"runs\.jsonl:1: not a run result"):
        report.load_results_dir(tmp_path)


def test_missing_runs_file(tmp_path):
    with pytest.raises(report.ReportError, match="no runs.jsonl"):
        report.load_results_dir(tmp_path)


def _log_child(client, exp_id, parent_id, result: RunResult, start_time: int):
    from mlflow.entities import Metric

    tags = {"mlflow.parentRunId": parent_id, "harness.role": "run", "harness.suite": "demo",
            "harness.variant": result.run.variant, "harness.seed": str(result.run.seed),
            "harness.mixer": result.run.mixer, "harness.status": result.status,
            "harness.overrides": ",".join(result.run.overrides)}
    if result.error:
        tags["harness.error"] = result.error
    child = client.create_run(exp_id, start_time=start_time, tags=tags,
                              run_name=result.run.key)
    # history first (timestamps follow the steps), then final metrics logged afterwards at step 0,
    # "val/accuracy" both as history and as a final value
    metrics = [Metric(k, float(v), start_time + int(p["step"]), int(p["step"]))
               for p in result.history for k, v in p.items() if k != "step"]
    metrics += [Metric(k, float(v), start_time + 10_000, 0)
                for k, v in {**result.metrics, **result.efficiency}.items()]
    if metrics:
        client.log_batch(child.info.run_id, metrics=metrics)
    client.set_terminated(child.info.run_id, "FAILED" if result.status == "failed" else "FINISHED")
    return child.info.run_id


def test_load_results_mlflow_round_trip_and_cli(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("demo", artifact_location=str(tmp_path / "artifacts"))

    # an older invocation that must not be picked up by default
    old = client.create_run(exp_id, start_time=1_000, tags={"harness.role": "parent",
                            "harness.metric": METRIC, "harness.reference": "softmax",
                            "harness.higher_is_better": "true"})
    _log_child(client, exp_id, old.info.run_id, make_result("softmax", 9, 0.5), 1_001)

    parent = client.create_run(exp_id, start_time=2_000, tags={"harness.role": "parent",
                               "harness.metric": METRIC, "harness.reference": "mop",
                               "harness.higher_is_better": "true"})
    client.log_param(parent.info.run_id, "runs", 5)      # one planned run has no child run
    expected = [make_result("softmax", 0, 0.80), make_result("softmax", 1, 0.82),
                make_result("mop", 0, 0.83, overrides=("train.lr", "model.depth")),
                make_result("mop", 1, None)]
    ids = [_log_child(client, exp_id, parent.info.run_id, r, 2_001 + i) for i, r in enumerate(expected)]

    results, info = report.load_results_mlflow("demo", tracking_uri=uri)
    assert info["metric"] == METRIC and info["reference"] == "mop" and info["higher_is_better"] is True
    assert info["parent_run_id"] == parent.info.run_id and info["missing"] == 1
    assert [r.run.key for r in results] == [r.run.key for r in expected]
    for got, want, run_id in zip(results, expected, ids):
        assert got.run_id == run_id and got.status == want.status
        assert got.run.mixer == want.run.mixer and got.run.overrides == want.run.overrides
        assert got.run.metric == METRIC and got.error == want.error
        assert got.efficiency == pytest.approx(want.efficiency)
        for key, value in want.metrics.items():
            assert got.metrics[key] == pytest.approx(value)
        assert [p["step"] for p in got.history] == [p["step"] for p in want.history]
        for g, w in zip(got.history, want.history):
            assert g == pytest.approx(w)

    old_results, _ = report.load_results_mlflow("demo", tracking_uri=uri, parent_run_id=old.info.run_id)
    assert [r.run.key for r in old_results] == ["softmax/seed9"]

    with pytest.raises(report.ReportError, match="no MLflow experiment 'nope'.*experiments: .*demo"):
        report.load_results_mlflow("nope", tracking_uri=uri)

    runner = CliRunner()
    res = runner.invoke(report_command, ["demo", "--tracking-uri", uri])
    assert res.exit_code == 0, res.output
    assert "softmax" in res.output and "ref" in res.output
    assert "warning: 1 planned run(s) have no child run" in res.output
    assert (tmp_path / "results" / "demo" / "results.md").is_file()

    res = runner.invoke(report_command, ["nope", "--tracking-uri", uri])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "no MLflow experiment 'nope'" in res.output and "demo" in res.output


# -- command line ----------------------------------------------------------------------------

def test_report_command_on_dir(tmp_path):
    from click.testing import CliRunner

    write_jsonl(tmp_path / "runs.jsonl", make_results())
    (tmp_path / "suite.json").write_text(json.dumps(
        {"name": "demo", "metric": METRIC, "reference": "softmax", "higher_is_better": True}))
    runner = CliRunner()
    res = runner.invoke(report_command, [str(tmp_path)], terminal_width=200)
    assert res.exit_code == 0, res.output
    for variant in ACC:
        assert variant in res.output
    assert "RuntimeError: loss is NaN" in res.output
    for name in ("results.csv", "summary.csv", "results.md", "learning_curves.png", "metric_vs_params.png"):
        assert (tmp_path / name).is_file(), name

    out = tmp_path / "elsewhere"
    res = runner.invoke(report_command, [str(tmp_path), "--metric", "test/loss",
                                                "--reference", "mop", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = pd.read_csv(out / "summary.csv")
    assert summary["variant"].iloc[0] == "mop"
    assert summary.loc[summary["best"], "variant"].tolist() == ["mop"]     # lowest loss wins

    res = runner.invoke(report_command, [str(tmp_path), "--reference", "nope"])
    assert res.exit_code == 1 and "unknown reference variant 'nope'" in res.output
    res = runner.invoke(report_command, [str(tmp_path), "--metric", "test/f1"])
    assert res.exit_code == 1 and "no finished run has metric 'test/f1'" in res.output


def test_report_command_unknown_target(tmp_path, monkeypatch):
    from click.testing import CliRunner

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "results" / "demo").mkdir(parents=True)
    write_jsonl(tmp_path / "results" / "demo" / "runs.jsonl", make_results()[:1])
    runner = CliRunner()
    res = runner.invoke(report_command, ["nope"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "no MLflow store" in res.output and "results/demo" in res.output
    assert not (tmp_path / "mlruns").exists()        # no empty store created as a side effect
    res = runner.invoke(report_command, [str(tmp_path / "results")])
    assert res.exit_code == 1 and "has no runs.jsonl" in res.output and "results/demo" in res.output


def test_import_is_cheap():
    import subprocess
    import sys

    code = ("import sys, harness.report; "
            "print(sorted(m for m in ('pandas', 'scipy', 'matplotlib', 'mlflow', 'rich') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
