"""`harness reproduce`: a run's manifest in MLflow, the re-run from it with identical metrics on CPU,
data drift refused, tuning trials, and one-line errors for what a user can get wrong."""
import json
import random
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner

from harness import tracking
from harness.cli import cli

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "suites" / "smoke.toml")
FAST = ["train.steps=8", "train.eval_every=4", "train.log_every=4", "suite.seeds=[0]", "train.batch_size=32"]
SETS = [arg for item in FAST for arg in ("--set", item)]

CHARLM = """
[suite]
name = "drift"
task = "charlm"
model = "lm"
metric = "test/bpc"
seeds = [0]

[task]
corpus = "corpus.txt"
seq_len = 16
eval_windows = 16

[model]
dim = 16
depth = 1
heads = 2

[train]
steps = 4
batch_size = 8
eval_every = 4
log_every = 2

[variants.softmax]
mixer = "softmax"
"""


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    tracking.configure(enabled=True, tracking_uri=None)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def runs(uri, experiment, role):
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], f"tags.`harness.role` = '{role}'")


def manifest_of(uri, run_id, tmp):
    path = mlflow.MlflowClient(tracking_uri=uri).download_artifacts(run_id, "manifest.json", str(tmp))
    return json.loads(Path(path).read_text())


def test_a_run_is_reproduced_by_id_with_identical_metrics_on_cpu(in_tmp):
    uri = f"sqlite:///{in_tmp}/mlflow.db"
    out = invoke("run", SMOKE, "-v", "softmax", *SETS, "--tracking-uri", uri)
    assert out.exit_code == 0, out.output + out.stderr
    (original,) = runs(uri, "smoke", "run")
    m = manifest_of(uri, original.info.run_id, in_tmp)
    assert m["run"] == {"suite": "smoke", "variant": "softmax", "seed": 0, "role": "run", "metric": "test/accuracy",
                        "config_hash": original.data.tags["harness.config_hash"]}
    assert m["suite"]["train"]["steps"] == 8 and list(m["suite"]["variants"]) == ["softmax"]
    assert m["device"]["type"] == "cpu" and m["determinism"]["threads"] >= 1
    assert m["sources"]["harness"]["kind"] in ("checkout", "wheel") and "torch" in m["versions"]
    digits = [p for p in m["data_files"] if p.endswith("digits.csv.gz")]
    assert len(digits) == 1 and len(m["data_files"][digits[0]]) == 64
    assert original.data.params["manifest.seed"] == "0" and original.data.params["manifest.device"] == "cpu"

    out = invoke("reproduce", original.info.run_id, "--tracking-uri", uri)
    assert out.exit_code == 0, out.output + out.stderr
    assert "metrics identical (exact equality)" in out.output
    (new,) = [r for r in runs(uri, "smoke", "run") if r.info.run_id != original.info.run_id]
    assert new.data.tags["reproduces"] == original.info.run_id
    assert new.data.tags["harness.reproduction"] == "identical"
    for name in ("test/accuracy", "test/loss", "val/accuracy", "val/loss"):
        assert new.data.metrics[name] == original.data.metrics[name]
    assert not Path("results/smoke/runs.jsonl").read_text().count("reproduce")  # the original folder is untouched

    # what a user can get wrong: one line each, exit 1, no traceback
    parent = runs(uri, "smoke", "parent")[0].info.run_id
    for args, message in (
        (["nosuchrun", "--tracking-uri", uri], "error: no run 'nosuchrun' in"),
        ([parent, "--tracking-uri", uri], f"error: run {parent} has no manifest.json (it is a parent run"),
        ([parent, "--tracking-uri", f"sqlite:///{in_tmp}/absent.db"], "error: no MLflow store at"),
    ):
        out = invoke("reproduce", *args)
        assert out.exit_code == 1 and out.stderr.startswith(message), out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and isinstance(out.exception, SystemExit)


def test_a_changed_data_file_is_reported_as_drift_and_refused(in_tmp):
    rng = random.Random(0)
    corpus = in_tmp / "corpus.txt"
    corpus.write_text("".join(rng.choice("abcdefgh ") for _ in range(1500)))
    Path("drift.toml").write_text(CHARLM)
    uri = f"sqlite:///{in_tmp}/mlflow.db"
    out = invoke("run", "drift.toml", "--no-contract", "--tracking-uri", uri)
    assert out.exit_code == 0, out.output + out.stderr
    (original,) = runs(uri, "drift", "run")
    recorded = manifest_of(uri, original.info.run_id, in_tmp)["data_files"]
    (path,) = recorded
    assert Path(path) == corpus.resolve()

    corpus.write_text(corpus.read_text()[::-1])       # same size, other content
    out = invoke("reproduce", original.info.run_id, "--tracking-uri", uri)
    assert out.exit_code == 1
    assert f"drift: data_files[{path}]: recorded {recorded[path][:12]}, now " in out.output
    assert out.stderr.startswith("error: 1 manifest entry differs from this environment") and "--allow-drift" in out.stderr
    assert len(runs(uri, "drift", "run")) == 1        # refused: nothing was re-run

    out = invoke("reproduce", original.info.run_id, "--tracking-uri", uri, "--allow-drift")
    assert out.exit_code in (0, 4), out.output + out.stderr
    assert "re-run (with drift)" in out.output
    (new,) = [r for r in runs(uri, "drift", "run") if r.info.run_id != original.info.run_id]
    assert new.data.tags["reproduces"] == original.info.run_id and "data_files" in new.data.tags["harness.drift"]
    assert new.data.tags["harness.contract"] == "skipped"  # as the original was run


def test_a_tuning_trial_is_reproduced(in_tmp):
    uri = f"sqlite:///{in_tmp}/mlflow.db"
    out = invoke("tune", SMOKE, "-v", "softmax", "--trials", 1, "--storage", in_tmp / "optuna.journal",
                 "--tracking-uri", uri, *SETS)
    assert out.exit_code == 0, out.output + out.stderr
    (trial,) = runs(uri, "smoke-tune", "tune-trial")
    m = manifest_of(uri, trial.info.run_id, in_tmp)
    assert m["run"]["role"] == "tune-trial"
    lr = m["suite"]["variants"]["softmax"]["train"]["lr"]     # the sampled value, applied
    assert float(trial.data.params["train.lr"]) == lr

    out = invoke("reproduce", trial.info.run_id, "--tracking-uri", uri)
    assert out.exit_code == 0, out.output + out.stderr
    assert "metrics identical" in out.output and "val/accuracy" in out.output
    (new,) = runs(uri, "smoke", "run")
    assert new.data.tags["reproduces"] == trial.info.run_id
    assert new.data.metrics["val/accuracy"] == trial.data.metrics["val/accuracy"]
