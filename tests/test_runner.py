"""End-to-end runs of tiny suites: results, resume, failures, Ctrl-C, MLflow layout, determinism."""
import io
import json
import signal
import subprocess
import time

import pytest
import torch

from harness import MixerSpec, hookimpl, tracking
from harness.devices import available_cores
from harness.nn.softmax import SoftmaxAttention
from harness.plan import plan_suite
from harness.profiling import current_rss_mb
from harness.runner import SuiteInterrupted, run_suite
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
    assert r.efficiency["knob_value"] == plan_suite(suite(in_tmp))["softmax"].model_config["mlp_ratio"]
    assert r.efficiency["contended"] in (0.0, 1.0) and r.efficiency["threads"] == available_cores()
    assert 0 < r.efficiency["decayed_params"] < r.efficiency["params"]
    # what the training allocated, not the process (torch, mlflow, pandas: hundreds of MB)
    assert 0 < r.efficiency["peak_mem_mb"] < current_rss_mb() / 4
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

    import os

    # absolute: MLflow caches a store per URI string, so a relative one could reach another test's folder
    uri = f"sqlite:///{os.getcwd()}/mlruns/mlflow.db"
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
    for name in ("test/accuracy", "params", "samples_per_s"):  # final figures at the last step, never at 0
        assert [m.step for m in mlflow.MlflowClient().get_metric_history(children.run_id.iloc[0], name)] == [12]
    assert set(children["params.budget.knob_value"]) == {str(v) for v in children["metrics.knob_value"]}
    assert set(children["params.train.amp"]) == {"False"}            # autocast does nothing on a CPU
    assert set(children["params.train.threads"]) == {str(available_cores())}
    assert set(children["tags.harness.contended"]) <= {"true", "false"}
    params = [c for c in runs.columns if c.startswith("params.")]
    assert not (runs[params] == "None").any().any()                  # unset keys are not logged
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parents.run_id.iloc[0])}
    assert {"results.csv", "results.md", "suite.json"} <= artifacts


def test_profiled_run_records_trace_table_and_mfu(in_tmp):
    tracking.configure(enabled=False)
    results = run_suite(suite(in_tmp, "profile.enabled=true", "profile.steps=2", "train.steps=4"), variants=["softmax"])
    r = results[0]
    assert set(r.artifacts) == {"profile/trace", "profile/table"}
    assert json.load(open(r.artifacts["profile/trace"]))["traceEvents"]
    assert "aten::" in open(r.artifacts["profile/table"]).read()
    assert r.efficiency["flops_per_step"] > 0 and 0 < r.efficiency["mfu"] < 1


class ThreadProbe(SoftmaxAttention):
    seen: set[int] = set()

    def forward(self, x, pad=None):
        ThreadProbe.seen.add(torch.get_num_threads())
        return super().forward(x, pad)


class ProbeMixers:
    @hookimpl
    def register_mixers(register):
        register(MixerSpec("test.threads", ThreadProbe))


def test_train_threads_set_for_the_run_and_recorded(in_tmp):
    tracking.configure(enabled=False)
    before = torch.get_num_threads()
    with temporary_plugin(ProbeMixers, name="probemixers"):
        results = run_suite(suite(in_tmp, "train.threads=1", "variants.softmax.mixer=test.threads"),
                            variants=["softmax"])
    assert ThreadProbe.seen == {1} and results[0].efficiency["threads"] == 1
    assert torch.get_num_threads() == before


def quiet():
    from rich.console import Console

    return Console(file=io.StringIO(), width=200)


def test_a_plugin_version_bump_re_runs_and_says_why(in_tmp, monkeypatch):
    from harness import plugins

    tracking.configure(enabled=False)
    run_suite(suite(in_tmp), variants=["softmax"], console=quiet())
    info = next(i for i in plugins.plugin_infos() if i.name == "harness.mixers")
    monkeypatch.setattr(info, "version", info.version + ".post1")
    console = quiet()
    again = run_suite(suite(in_tmp), variants=["softmax"], console=console)
    assert again[0].status == "finished"
    assert ("re-run softmax/seed0: harness or plugin versions, or resolved options, changed since runs.jsonl's "
            "result") in console.file.getvalue()


def defaults_plugin(value):
    class Plugin:
        @hookimpl
        def register_mixers(register):
            register(MixerSpec("test.defaults", SoftmaxAttention, defaults={"dropout_like": value}))

    return Plugin


def test_config_hash_covers_the_mixer_registered_defaults(in_tmp):
    hashes = []
    for value in (0.0, 0.1):
        with temporary_plugin(defaults_plugin(value), name="defaults"):
            hashes.append(suite(in_tmp, "variants.softmax.mixer=test.defaults").runs()[0].config_hash)
    assert hashes[0] != hashes[1]


def cli_run(root, *args):
    from click.testing import CliRunner

    from harness.cli.run import run_command

    sets = [a for item in FAST for a in ("--set", item)]
    return CliRunner().invoke(run_command, [f"{root}/{SMOKE}", "--no-track", *sets, *args])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_exit_status_when_every_run_fails(in_tmp):
    result = cli_run(in_tmp, "--set", "train.device=cuda")
    assert result.exit_code == 4, result.output


def test_exit_status_when_some_runs_fail(in_tmp):
    with temporary_plugin(Mixers, name="testmixers"):
        result = cli_run(in_tmp, "--set", "variants.softmax_narrow_mlp.mixer=test.nan")
    assert result.exit_code == 3, result.output


def test_interrupt_before_any_run_started_says_so(in_tmp, monkeypatch):
    from harness import runner

    def interrupted(suite):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "build_task", interrupted)
    with pytest.raises(SuiteInterrupted) as info:
        run_suite(suite(in_tmp))
    assert info.value.killed is None and info.value.results == []
    result = cli_run(in_tmp)
    assert result.exit_code == 130
    assert "interrupted before any run started; nothing to resume" in result.output
    assert "killed" not in result.output


def test_sigterm_marks_the_run_killed_keeps_the_finished_and_closes_mlflow(in_tmp, tmp_path, harness_cmd):
    """A real process: the second run trains for ever until SIGTERM (what timeout sends)."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [*harness_cmd, "run", f"{in_tmp}/{SMOKE}", "--tracking-uri", uri,
           *[a for item in FAST for a in ("--set", item)], "--set", "variants.softmax_narrow_mlp.train.steps=10000000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "results" / "smoke" / "runs.jsonl"
    deadline = time.time() + 300
    while not (log.exists() and log.read_text().strip()) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(3)  # the second run is training
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["run"]["variant"], r["status"]) for r in records] == [("softmax", "finished"),
                                                                    ("softmax_narrow_mlp", "killed")]
    assert records[1]["error"] == "terminated (SIGTERM)"
    assert "run softmax_narrow_mlp/seed0 is marked killed" in err
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["smoke"])
    status = dict(zip(runs["tags.harness.variant"].fillna("parent"), runs["status"]))
    assert status == {"parent": "KILLED", "softmax": "FINISHED", "softmax_narrow_mlp": "KILLED"}


def test_running_only_a_non_reference_variant_prints_its_table(in_tmp):
    result = cli_run(in_tmp, "-v", "softmax_narrow_mlp")
    assert result.exit_code == 0, result.output
    assert "reference variant 'softmax' has no runs" in result.output and "-v softmax" in result.output
    assert "softmax_narrow_mlp" in result.output and "Traceback" not in result.output
