"""End-to-end runs of tiny suites: results, resume, failures, Ctrl-C, MLflow layout, determinism."""
import json

import pytest

from harness import MixerSpec, hookimpl, tracking
from harness.nn.softmax import SoftmaxAttention
from harness.runner import run_suite
from harness.suite import load_suite
from harness.testing import temporary_plugin

SMOKE = "suites/smoke.toml"
FAST = ["train.steps=12", "train.eval_every=6", "train.log_every=4", "suite.seeds=[0]"]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    import os
    root = os.getcwd()
    monkeypatch.chdir(tmp_path)
    return root


def suite(root, *extra):
    return load_suite(f"{root}/{SMOKE}", [*FAST, *extra])


def test_run_writes_results_and_resumes(in_tmp, capsys):
    tracking.configure(enabled=False)
    results = run_suite(suite(in_tmp))
    assert [r.status for r in results] == ["finished", "finished"]
    r = results[0]
    assert 0.0 <= r.metrics["test/accuracy"] <= 1.0 and "val/loss" in r.metrics
    assert abs(r.efficiency["param_gap"]) <= 0.02 and r.efficiency["flops_per_token"] > 0
    lines = open("results/smoke/runs.jsonl").read().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["run"]["variant"] == "softmax"
    again = run_suite(suite(in_tmp))
    assert [r.status for r in again] == ["skipped", "skipped"]
    assert again[0].metrics == pytest.approx(results[0].metrics)
    changed = run_suite(suite(in_tmp, "train.lr=0.001"))  # a different config is not skipped
    assert [r.status for r in changed] == ["finished", "finished"]


def test_same_seed_same_metrics_on_cpu(in_tmp):
    tracking.configure(enabled=False)
    a = run_suite(suite(in_tmp, "suite.output_dir='a'"))
    b = run_suite(suite(in_tmp, "suite.output_dir='b'"))
    assert a[0].metrics == b[0].metrics


class NaNMixer(SoftmaxAttention):
    def forward(self, x, pad=None):
        return super().forward(x, pad) * float("nan")


class Interrupting(SoftmaxAttention):
    def forward(self, x, pad=None):
        raise KeyboardInterrupt


class Mixers:
    @hookimpl
    def register_mixers(register):
        register(MixerSpec("test.nan", NaNMixer))
        register(MixerSpec("test.interrupt", Interrupting))


def test_diverging_run_is_failed_and_others_finish(in_tmp):
    tracking.configure(enabled=False)
    with temporary_plugin(Mixers, name="testmixers"):
        results = run_suite(suite(in_tmp, "variants.softmax_narrow_mlp.mixer=test.nan"))
    by = {r.run.variant: r for r in results}
    assert by["softmax"].status == "finished"
    assert by["softmax_narrow_mlp"].status == "failed"
    assert by["softmax_narrow_mlp"].error.startswith("diverged: training loss became nan")
    assert "softmax_narrow_mlp" in open("results/smoke/results.md").read()


def test_ctrl_c_marks_run_killed_and_keeps_finished(in_tmp):
    tracking.configure(enabled=False)
    with temporary_plugin(Mixers, name="testmixers"), pytest.raises(KeyboardInterrupt):
        run_suite(suite(in_tmp, "variants.softmax_narrow_mlp.mixer=test.interrupt"))
    records = [json.loads(l) for l in open("results/smoke/runs.jsonl")]
    assert [(r["run"]["variant"], r["status"]) for r in records] == [("softmax", "finished"),
                                                                    ("softmax_narrow_mlp", "killed")]


def test_mlflow_parent_and_children(in_tmp):
    import mlflow

    uri = "sqlite:///mlruns/mlflow.db"  # relative to the temporary working directory
    tracking.configure(enabled=True, tracking_uri=uri)
    try:
        run_suite(suite(in_tmp, "suite.seeds=[0, 1]"))
    finally:
        tracking.configure(enabled=True, tracking_uri=None)
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["smoke"])
    parents = runs[runs["tags.harness.role"] == "parent"]
    children = runs[runs["tags.harness.role"] == "run"]
    assert len(parents) == 1 and len(children) == 4
    assert set(children["tags.mlflow.parentRunId"]) == {parents.run_id.iloc[0]}
    assert sorted(zip(children["tags.harness.variant"], children["tags.harness.seed"])) == [
        ("softmax", "0"), ("softmax", "1"), ("softmax_narrow_mlp", "0"), ("softmax_narrow_mlp", "1")]
    for col in ("metrics.test/accuracy", "metrics.params", "metrics.target_params", "metrics.param_gap",
                "metrics.flops_per_token", "metrics.samples_per_s", "metrics.peak_mem_mb", "params.model.dim",
                "params.train.lr", "params.params.target", "tags.harness.git_commit", "tags.harness.device"):
        assert children[col].notna().all(), col
    history = mlflow.MlflowClient().get_metric_history(children.run_id.iloc[0], "train/loss")
    assert [m.step for m in history] == [4, 8, 12]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parents.run_id.iloc[0])}
    assert {"results.csv", "results.md", "suite.json"} <= artifacts


def test_profiled_run_records_trace_table_and_mfu(in_tmp):
    tracking.configure(enabled=False)
    results = run_suite(suite(in_tmp, "profile.enabled=true", "profile.steps=2", "train.steps=4"), variants=["softmax"])
    r = results[0]
    assert set(r.artifacts) == {"trace", "table"}
    assert json.load(open(r.artifacts["trace"]))["traceEvents"]
    assert "aten::" in open(r.artifacts["table"]).read()
    assert r.efficiency["flops_per_step"] > 0 and 0 < r.efficiency["mfu"] < 1
