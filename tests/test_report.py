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
    # Holm over the two comparisons: 2 * 0.035 = 0.070, then max(0.070, 1 * 0.205) = 0.205
    assert "+0.0300 (p=0.035, Holm p=0.070)" in text and "+0.0150 (p=0.205, Holm p=0.205, n=2)" in text
    assert "FLOPs/token" in text and "1.50M" in text          # the cost is in the console's table too
    assert "2/3, 1 failed" in text
    assert "token_mixer seed 1 (failed): RuntimeError: loss is NaN at step 40" in text


def test_write_reports_creates_all_files(tmp_path):
    written = report.write_reports(make_results(), tmp_path / "out", metric=METRIC, higher_is_better=True,
                                   reference="softmax", title="demo")
    assert set(written) == {"results.csv", "summary.csv", "results.md", "learning_curves.png",
                            "metric_vs_cost.png"}
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
    assert (tmp_path / "learning_curves.png").exists() and (tmp_path / "metric_vs_cost.png").exists()
    (tmp_path / "metric_vs_params.png").write_bytes(b"an older report's plot")
    results = make_results()      # the same runs, but no curves and no run has the metric reported
    for r in results:
        r.history = []
    written = report.write_reports(results, tmp_path, metric="test/f1", higher_is_better=True,
                                   reference=None, title="demo")
    assert set(written) == {"results.csv", "summary.csv", "results.md"}
    assert not (tmp_path / "learning_curves.png").exists()      # the earlier plot is not left behind
    assert not (tmp_path / "metric_vs_cost.png").exists()
    assert not (tmp_path / "metric_vs_params.png").exists()     # nor the plot this one replaced
    assert "RuntimeError" in written["results.md"].read_text()


def test_write_report_never_shrinks_a_folder(tmp_path):
    results = make_results()
    report.write_reports(results, tmp_path, metric=METRIC, reference="softmax", title="demo")
    before = (tmp_path / "results.md").read_text()
    one_variant = [r for r in results if r.run.variant == "softmax"]
    with pytest.raises(report.ReportError) as err:
        report.write_reports(one_variant, tmp_path, metric=METRIC, title="demo")
    message = str(err.value)
    assert "\n" not in message and "--out" in message and str(tmp_path) in message
    assert "mop/seed0" in message and "and 2 more" in message
    assert (tmp_path / "results.md").read_text() == before        # nothing was written
    # a run that finished there and only failed in the report also counts as lacking
    worse = [make_result("softmax", 0, None) if r.run.key == "softmax/seed0" else r for r in results]
    with pytest.raises(report.ReportError, match=r"\(softmax/seed0\)"):
        report.write_reports(worse, tmp_path, metric=METRIC, title="demo")
    # runs.jsonl counts too: a folder a suite ran in keeps its runs
    fresh = tmp_path / "suite"
    fresh.mkdir()
    write_jsonl(fresh / "runs.jsonl", results)
    with pytest.raises(report.ReportError, match="token_mixer/seed0"):
        report.write_reports(one_variant, fresh, metric=METRIC, title="demo")
    written = report.write_reports(results + [make_result("extra", 0, 0.5)], fresh, metric=METRIC, title="demo")
    assert "results.md" in written                                # a more complete report may replace it


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


def test_corrupt_lines_are_skipped_with_one_warning(tmp_path):
    # a crash cuts the last line short: report reads on, as resume does, and says what it skipped
    path = tmp_path / "runs.jsonl"
    results = make_results()
    write_jsonl(path, results[:2])
    with open(path, "a") as fh:
        fh.write(json.dumps({"status": "finished"}) + "\n")       # line 3: no run
        fh.write(json.dumps(dataclasses.asdict(results[2])) + "\n")
        fh.write('{"run": {"suite": "demo", "varia')              # line 5: cut short
    seen = []
    assert report.load_results_dir(tmp_path, on_warning=seen.append) == results[:3]
    assert len(seen) == 1 and "\n" not in seen[0]
    assert str(path) in seen[0] and "skipped lines 3, 5" in seen[0]
    with pytest.warns(UserWarning, match="skipped lines 3, 5"):
        report.load_results_dir(tmp_path)


def test_report_command_reads_a_cut_runs_jsonl(tmp_path):
    from click.testing import CliRunner

    write_jsonl(tmp_path / "runs.jsonl", make_results())
    with open(tmp_path / "runs.jsonl", "a") as fh:
        fh.write('{"run": {"suite": "demo", "varia')
    res = CliRunner().invoke(report_command, [str(tmp_path), "--metric", METRIC], terminal_width=200)
    assert res.exit_code == 0, res.output
    warnings_ = [line for line in res.output.splitlines() if line.startswith("warning:")]
    assert len(warnings_) == 1
    assert warnings_[0].startswith(f"warning: {tmp_path / 'runs.jsonl'}: skipped line 10, not a run result "
                                   f"(line 10: not valid JSON (")
    assert len(pd.read_csv(tmp_path / "results.csv")) == 9


def test_missing_runs_file(tmp_path):
    with pytest.raises(report.ReportError, match="no runs.jsonl"):
        report.load_results_dir(tmp_path)


def _log_child(client, exp_id, parent_id, result: RunResult, start_time: int, *, end=True, **extra_tags):
    """A child run as the tracker logs it; ``end=False`` leaves it RUNNING (a killed process)."""
    from mlflow.entities import Metric

    tags = {"mlflow.parentRunId": parent_id, "harness.role": "run", "harness.suite": "demo",
            "harness.variant": result.run.variant, "harness.seed": str(result.run.seed),
            "harness.mixer": result.run.mixer, "harness.overrides": ",".join(result.run.overrides),
            **({"harness.status": result.status} if end else {}), **extra_tags}
    if result.error:
        tags["harness.error"] = result.error
    child = client.create_run(exp_id, start_time=start_time, tags=tags,
                              run_name=result.run.key)
    client.log_param(child.info.run_id, "budget.knob", "mlp_ratio")
    # history first (timestamps follow the steps), then final metrics logged afterwards at step 0,
    # "val/accuracy" both as history and as a final value
    metrics = [Metric(k, float(v), start_time + int(p["step"]), int(p["step"]))
               for p in result.history for k, v in p.items() if k != "step"]
    metrics += [Metric(k, float(v), start_time + 10_000, 0)
                for k, v in {**result.metrics, **result.efficiency}.items()]
    if metrics:
        client.log_batch(child.info.run_id, metrics=metrics)
    if end:
        status = {"failed": "FAILED", "killed": "KILLED"}.get(result.status, "FINISHED")
        client.set_terminated(child.info.run_id, status)
    return child.info.run_id


def _parent(client, exp_id, start_time, reference, **params):
    parent = client.create_run(exp_id, start_time=start_time, tags={
        "harness.role": "parent", "harness.metric": METRIC, "harness.reference": reference,
        "harness.higher_is_better": "true"})
    for key, value in params.items():
        client.log_param(parent.info.run_id, key, value)
    return parent.info.run_id


def test_load_results_mlflow_round_trip(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("demo", artifact_location=str(tmp_path / "artifacts"))
    parent = _parent(client, exp_id, 2_000, "mop", runs=5)       # one planned run has no child run
    expected = [make_result("softmax", 0, 0.80), make_result("softmax", 1, 0.82),
                make_result("mop", 0, 0.83, overrides=("train.lr", "model.depth")),
                make_result("mop", 1, None)]
    ids = [_log_child(client, exp_id, parent, r, 2_001 + i) for i, r in enumerate(expected)]

    results, info = report.load_results_mlflow("demo", tracking_uri=uri, parent_run_id=parent)
    assert info["metric"] == METRIC and info["reference"] == "mop" and info["higher_is_better"] is True
    assert info["parent_run_id"] == parent and info["missing"] == 1
    assert [r.run.key for r in results] == [r.run.key for r in expected]
    for got, want, run_id in zip(results, expected, ids):
        assert got.run_id == run_id and got.status == want.status
        assert got.run.mixer == want.run.mixer and got.run.overrides == want.run.overrides
        assert got.run.metric == METRIC and got.error == want.error
        assert got.run.budget == {"knob": "mlp_ratio"}
        assert got.efficiency == pytest.approx(want.efficiency)
        for key, value in want.metrics.items():
            assert got.metrics[key] == pytest.approx(value)
        assert [p["step"] for p in got.history] == [p["step"] for p in want.history]
        for g, w in zip(got.history, want.history):
            assert g == pytest.approx(w)
    with pytest.raises(report.ReportError, match="no MLflow experiment 'nope'.*experiments: .*demo"):
        report.load_results_mlflow("nope", tracking_uri=uri)


def _two_invocations(client, exp_id):
    """A full first invocation; then `-v softmax,mop,token_mixer` again, killed hard (its parent
    and one child left RUNNING), with a re-used result and a run killed after it had finished."""
    first = _parent(client, exp_id, 1_000, "softmax", runs=6, **{"suite.seeds": "[0, 1, 2]"})
    old = {}
    for i, (variant, seed) in enumerate([(v, s) for v in ("softmax", "mop") for s in (0, 1, 2)]):
        result = make_result(variant, seed, ACC[variant][seed])
        old[result.run.key] = _log_child(client, exp_id, first, result, 1_001 + i)
    client.set_terminated(first, "FINISHED")
    second = _parent(client, exp_id, 2_000, "softmax", runs=4, **{"suite.seeds": "[0, 1, 2]"})
    _log_child(client, exp_id, second, make_result("softmax", 0, 0.90), 2_001)
    _log_child(client, exp_id, second, dataclasses.replace(make_result("softmax", 1, 0.82), status="skipped",
                                                           history=[]),
               2_002, **{"harness.reused_run_id": old["softmax/seed1"]})
    _log_child(client, exp_id, second, make_result("mop", 2, None, status="killed"), 2_003)
    _log_child(client, exp_id, second, make_result("token_mixer", 0, 0.5), 2_004, end=False)
    return first, second, old


def test_report_of_an_experiment_merges_every_invocation(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("demo", artifact_location=str(tmp_path / "artifacts"))
    first, second, old = _two_invocations(client, exp_id)

    results, info = report.load_results_mlflow("demo", tracking_uri=uri)
    assert [p["run_id"] for p in info["parents"]] == [first, second]
    assert [p["status"] for p in info["parents"]] == ["FINISHED", "RUNNING"]
    assert info["planned_seeds"] == [0, 1, 2] and info["missing"] == 0
    by_key = {r.run.key: r for r in results}
    assert sorted(by_key) == sorted(["softmax/seed0", "softmax/seed1", "softmax/seed2", "mop/seed0",
                                     "mop/seed1", "mop/seed2", "token_mixer/seed0"])
    assert by_key["softmax/seed0"].metrics[METRIC] == pytest.approx(0.90)        # the latest finished
    assert by_key["mop/seed2"].status == "finished"                              # not the later kill
    assert by_key["mop/seed2"].run_id == old["mop/seed2"]
    # the re-used result stands for the run that produced it, learning curves included
    assert by_key["softmax/seed1"].run_id == old["softmax/seed1"] and by_key["softmax/seed1"].history
    assert by_key["token_mixer/seed0"].status == "running"

    runner = CliRunner()
    res = runner.invoke(report_command, ["demo", "--tracking-uri", uri], terminal_width=220)
    assert res.exit_code == 0, res.output
    line = next(l for l in res.output.splitlines() if l.startswith("read 2 MLflow parent runs of 'demo'"))
    assert line.index(first) < line.index(second) and "(FINISHED)" in line and "(RUNNING)" in line
    summary = pd.read_csv(tmp_path / "results" / "demo" / "summary.csv").set_index("variant")
    assert list(summary.index) == ["softmax", "mop", "token_mixer"]
    assert summary.loc["mop", "n_finished"] == 3 and summary.loc["mop", "n_killed"] == 0
    assert "0/3, 1 running, 2 not run" in res.output

    # one invocation on its own: that parent's children only, into a folder of its own
    res = runner.invoke(report_command, ["demo", "--tracking-uri", uri, "--parent-run", second],
                        terminal_width=220)
    assert res.exit_code == 0, res.output
    own = tmp_path / "results" / f"demo-{second[:8]}"
    per_run = pd.read_csv(own / "results.csv")
    assert sorted(zip(per_run["variant"], per_run["status"])) == [
        ("mop", "killed"), ("softmax", "finished"), ("softmax", "skipped"), ("token_mixer", "running")]
    assert "0/3, 1 killed, 2 not run" in res.output and "2/3, 1 not run" in res.output
    # never over the more complete report of the experiment
    res = runner.invoke(report_command, ["demo", "--tracking-uri", uri, "--parent-run", second,
                                         "--out", str(tmp_path / "results" / "demo")], terminal_width=220)
    assert res.exit_code == 1 and "Traceback" not in res.output
    error = res.output.strip().splitlines()[-1]
    assert error.startswith("Error: not overwriting") and "--out" in error
    assert len(pd.read_csv(tmp_path / "results" / "demo" / "results.csv")) == 7


def test_report_command_on_mlflow_errors(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(tracking_uri=uri).create_experiment("demo", artifact_location=str(tmp_path / "artifacts"))
    res = CliRunner().invoke(report_command, ["nope", "--tracking-uri", uri])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "no MLflow experiment 'nope'" in res.output and "demo" in res.output
    res = CliRunner().invoke(report_command, ["demo", "--tracking-uri", uri])
    assert res.exit_code == 1 and "has no harness parent run" in res.output


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
    for name in ("results.csv", "summary.csv", "results.md", "learning_curves.png", "metric_vs_cost.png"):
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
