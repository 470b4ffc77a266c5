"""torch.compile: train.compile (compile time apart from step time, eager fallback with its reason),
harness bench --compile, and check_mixer(..., compiled=True).

Compiling on a CPU takes seconds to a minute per graph, so the tests that compile are marked slow
(they still run in CI, once each); the fallback tests fail the compiler on purpose and are fast.
"""
from __future__ import annotations

import pytest
import torch

from harness import bench, tracking
from harness.runner import run_suite
from harness.suite import TrainSection, load_suite
from harness.testing import check_mixer, contract_report

SMOKE = "suites/smoke.toml"
# One variant, one seed, 10 steps: the model compiles in the first step, and evaluation compiles
# its own (eval, no-grad) graph.
TINY = ["train.steps=10", "train.eval_every=10", "train.log_every=5", "suite.seeds=[0]", "train.threads=1"]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    import os

    root = os.getcwd()
    monkeypatch.chdir(tmp_path)
    return root


def _fail_compile(monkeypatch):
    """torch.compile as a compiler that raises on the first call of the compiled module."""
    def broken(module, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("inductor: no C++ compiler (simulated)")
        return call

    monkeypatch.setattr(torch, "compile", broken)


def test_train_compile_is_a_suite_key_off_by_default():
    assert TrainSection().compile is False
    assert TrainSection.model_validate({"compile": True}).compile is True


@pytest.mark.slow
def test_suite_with_train_compile_records_compile_time_apart(in_tmp):
    """A tiny digits suite with train.compile = true: compiled, compile time logged apart (MLflow
    metric compile_seconds), and throughput from the steps that did not compile."""
    import mlflow

    import os

    uri = f"sqlite:///{os.getcwd()}/mlruns/mlflow.db"  # absolute: MLflow caches a store per URI string
    tracking.configure(enabled=True, tracking_uri=uri)
    try:
        results = run_suite(load_suite(f"{in_tmp}/{SMOKE}", [*TINY, "train.compile=true"]), variants=["softmax"])
    finally:
        tracking.configure(enabled=True, tracking_uri=None)
    (r,) = results
    assert r.status == "finished", r.error
    assert r.efficiency["compiled"] == 1.0 and r.efficiency["compile_seconds"] > 0
    assert r.efficiency["samples_per_s"] > 0
    # Throughput counts the steps that did not compile: no step rate near the compile time's.
    step_s = 64 / r.efficiency["samples_per_s"]
    assert step_s < r.efficiency["compile_seconds"]
    assert "harness.compile_fallback" not in r.tags
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["smoke"])
    child = runs[runs["tags.harness.role"] == "run"].iloc[0]
    assert child["metrics.compile_seconds"] == pytest.approx(r.efficiency["compile_seconds"])
    assert child["metrics.compiled"] == 1.0


def test_suite_falls_back_to_eager_when_compile_fails(in_tmp, monkeypatch, recwarn):
    tracking.configure(enabled=False)
    _fail_compile(monkeypatch)
    results = run_suite(load_suite(f"{in_tmp}/{SMOKE}", [*TINY, "train.compile=true"]), variants=["softmax"])
    (r,) = results
    assert r.status == "finished"                                # the suite goes on, eager
    assert r.efficiency["compiled"] == 0.0 and r.efficiency["compile_seconds"] == 0.0
    assert "no C++ compiler (simulated)" in r.tags["harness.compile_fallback"]
    assert any("failed to compile and runs eager" in str(w.message) for w in recwarn.list)


def test_without_compile_nothing_is_recorded(in_tmp):
    tracking.configure(enabled=False)
    (r,) = run_suite(load_suite(f"{in_tmp}/{SMOKE}", TINY), variants=["softmax"])
    assert "compile_seconds" not in r.efficiency and not r.tags


def test_bench_compile_fallback_is_recorded_and_timed_eager(monkeypatch):
    _fail_compile(monkeypatch)
    frame = bench.run_bench(["softmax"], [16], dim=16, heads=2, batch=2, warmup=0, reps=2, compile=True)
    row = frame.iloc[0]
    assert row["status"] == "ok" and not row["compiled"] and row["compile_s"] != row["compile_s"]   # NaN
    assert row["message"].startswith("compile failed, timed eager") and "simulated" in row["message"]
    assert row["fwd_bwd_ms"] > 0


@pytest.mark.slow
def test_bench_compile_times_compilation_apart():
    frame = bench.run_bench(["softmax"], [16], dim=16, heads=2, batch=2, warmup=1, reps=3, compile=True)
    row = frame.iloc[0]
    assert row["status"] == "ok" and row["compiled"] and row["message"] == ""
    # The compiling first calls are their own column, not in the timed reps.
    assert row["compile_s"] * 1e3 > 10 * row["fwd_bwd_ms"]
    assert row["efficiency"] == pytest.approx(1.0)


def test_check_mixer_compiled_reports_a_compiler_failure(monkeypatch):
    _fail_compile(monkeypatch)
    report = contract_report("softmax", checks=("compiled",))
    (check,) = report.results
    assert check.name == "compiled" and not check.passed and "simulated" in check.detail


def test_check_mixer_compiled_catches_a_different_function(monkeypatch):
    """A 'compiled' module that computes something else (here: a scaled output) fails the check."""
    def wrong(module, **kwargs):
        return lambda x, pad=None: module(x, pad) * 1.01

    monkeypatch.setattr(torch, "compile", wrong)
    with pytest.raises(AssertionError, match="compiled output differs from eager"):
        check_mixer("softmax", checks=("compiled",))


EDGEWISE_INDUCTOR = ("inductor's kernels give mop.edgewise gradients (qk_scale, qkv.weight, input) 1e-3 to 1e-2 "
                     "off eager in float32 (aot_eager agrees): its compiled numbers do not count (plugins/mop/README.md)")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["softmax", "mop.quartet", "mop.multihop",
                                  pytest.param("mop.edgewise", marks=pytest.mark.xfail(reason=EDGEWISE_INDUCTOR))])
def test_compiled_mixers_equal_eager(name):
    """The MoP mixers whose compiled bench numbers count (CLARIFICATIONS #15): float32, T = 16."""
    figures = check_mixer(name, checks=("compiled",), compiled=True)
    assert figures["compiled_dev"] <= 1e-4


def test_edgewise_graph_capture_equals_eager():
    """dynamo + AOTAutograd (no inductor kernels) trace mop.edgewise's custom autograd nodes, no_grad
    block and in-place ops into the same function: what differs compiled is inductor's numerics."""
    from harness.contract import COMPILED_GRID, Checker, ContractReport

    checker = Checker("mop.edgewise", 32, 4, 2, 0, {}, ContractReport("mop.edgewise", {}))
    module = checker.build(COMPILED_GRID).float()
    x = checker.input(COMPILED_GRID).float()
    weight = torch.randn(x.shape)
    want = checker._outputs_and_grads(module, module, x, None, weight)
    got = checker._outputs_and_grads(torch.compile(module, backend="aot_eager", dynamic=False), module, x, None, weight)
    for what in want:
        assert (want[what] - got[what]).abs().max() <= 1e-5 * want[what].abs().max(), what
