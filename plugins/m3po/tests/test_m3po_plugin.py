"""The installed plugin registers its gates, model, task and metrics, lazily; the suite validates."""
import subprocess
import sys
from pathlib import Path

import pytest

from harness.registry import get_registries

GATES = {"cosine", "raw_dot", "scaled_dot", "jsd", "bhattacharyya", "luong", "bahdanau", "peer_mean", "none"}
ROOT = Path(__file__).resolve().parents[3]


def test_registered_once_installed():
    regs = get_registries()
    for name in GATES:
        spec = regs.component("m3po.gate", name)
        assert spec.plugin == "m3po" and spec.kind == "m3po.gate"
        spec.load()
    assert regs.models.get("m3po.policy").plugin == "m3po"
    task = regs.tasks.get("arith")
    assert task.causal and task.metrics == ("exact_match", "answer_format", "trace_match")
    assert regs.metrics.get("exact_match").higher_is_better


def test_plugin_module_does_not_import_torch():
    code = "import sys, harness_m3po.plugin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_model_config_is_strict():
    fields = get_registries().models.get("m3po.policy").config_fields()
    assert {"gate", "gate_options", "paths", "lam", "temperature", "calibration", "beta", "dim"} <= set(fields)


@pytest.mark.skipif(not (ROOT / "suites" / "m3po.toml").is_file(), reason="run from the repository")
def test_suite_plans_every_gate():
    from harness.plan import plan_suite
    from harness.suite import load_suite

    suite = load_suite(ROOT / "suites" / "m3po.toml")
    plans = plan_suite(suite, contract=False)
    gates = {suite.variants[v].model.get("gate") for v in plans}
    assert gates == GATES - {"none"} | {"none"} and len(suite.suite.seeds) == 3
    bad = load_suite(ROOT / "suites" / "m3po.toml", ["variants.jsd.model.gate_options={chunks=2}"])
    from harness.suite import SuiteError
    with pytest.raises(SuiteError, match="chunks"):
        plan_suite(bad, contract=False)
