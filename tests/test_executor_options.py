"""Executors without a cluster: [resources], CPUs and threads per task, option errors in one line,
password masking. Fast; the Ray and PostgreSQL end-to-end tests are in test_ray_cluster.py."""
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.executors import ExecutorError, LocalExecutor, executor_for
from harness.executors.cluster import Cluster, check_reachable
from harness.executors.resources import run_threads, task_resources
from harness.redact import redact
from harness.suite import ResourcesSection, SuiteError, load_suite

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "suites" / "smoke.toml")
SECRET = "pa55-w0rd"


def test_resources_section_takes_fractions_below_one_and_whole_numbers_above():
    suite = load_suite(SMOKE, ["resources.num_cpus=0.5", "resources.num_gpus=0.25"])
    assert (suite.resources.num_cpus, suite.resources.num_gpus) == (0.5, 0.25)
    assert load_suite(SMOKE, ["resources.num_gpus=2"]).resources.num_gpus == 2
    with pytest.raises(SuiteError) as bad:
        load_suite(SMOKE, ["resources.num_gpus=1.5"])
    assert bad.value.problems[0].startswith("resources.num_gpus: ") and "whole number" in bad.value.problems[0]
    with pytest.raises(SuiteError) as unknown:
        load_suite(SMOKE, ["resources.cpus=1"])
    assert "did you mean num_cpus?" in unknown.value.problems[0]


def test_resources_are_not_hashed():
    """Where a run trains is not what it trains: resume matches across executors."""
    plain = [r.config_hash for r in load_suite(SMOKE).runs()]
    assert [r.config_hash for r in load_suite(SMOKE, ["resources.num_cpus=0.5"]).runs()] == plain


def test_cpus_and_threads_per_task():
    default = ResourcesSection()
    assert task_resources(default) == task_resources(default, cluster_cpus=64)
    assert (task_resources(default).num_cpus, task_resources(default).threads) == (1.0, 1)
    halves = task_resources(default, jobs=2, cluster_cpus=2)     # --jobs 2 on 2 cores: a core each
    assert (halves.num_cpus, halves.threads) == (1.0, 1)
    thirds = task_resources(default, jobs=3, cluster_cpus=2)     # below one core: a fraction, one thread
    assert thirds.num_cpus == pytest.approx(2 / 3) and thirds.threads == 1
    assert task_resources(default, jobs=3, cluster_cpus=16).num_cpus == 5    # Ray: whole numbers above one
    explicit = task_resources(ResourcesSection(num_cpus=4, num_gpus=0.5), jobs=8, cluster_cpus=64)
    assert (explicit.num_cpus, explicit.num_gpus, explicit.threads) == (4, 0.5, 4)
    assert run_threads({"threads": None}, explicit) == 4 and run_threads({"threads": 2}, explicit) == 2


def test_cluster_capacity_and_a_task_no_node_can_hold():
    cluster = Cluster(ray=None, address="127.0.0.1:6379", nodes=2, cpus=4, gpus=1,
                      largest_node={"CPU": 2, "GPU": 1}, started_here=False)
    assert cluster.capacity(1, 0) == 4 and cluster.capacity(1, 0.25) == 4 and cluster.capacity(0.5, 0.5) == 2
    cluster.check_fits(2, 1)
    with pytest.raises(ExecutorError, match="no node of the Ray cluster at 127.0.0.1:6379 has that many"):
        cluster.check_fits(3, 0)


def test_executor_choices():
    assert isinstance(executor_for("local"), LocalExecutor)
    assert isinstance(executor_for("local", jobs=1), LocalExecutor)   # --jobs 1: the local executor
    with pytest.raises(ExecutorError, match="no such executor; choose one of local, ray"):
        executor_for("slurm")
    with pytest.raises(ExecutorError, match="add --executor ray"):
        executor_for("local", address="127.0.0.1:6379")


def test_ray_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)   # import ray now raises ImportError
    with pytest.raises(ExecutorError, match=r"--jobs 2 needs Ray, which is not installed here: pip install"):
        executor_for("local", jobs=2)
    out = CliRunner().invoke(_cli(), ["run", SMOKE, "--no-track", "--executor", "ray"])
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert out.output.strip() == "harness run: --executor ray needs Ray, which is not installed here: pip install -e '.[ray]'"
    out = CliRunner().invoke(_cli(), ["tune", SMOKE, "--no-track", "--executor", "ray"])
    assert out.exit_code == 1 and "harness tune --executor ray needs Ray" in out.output and "Traceback" not in out.output


def _cli():
    from harness.cli import cli

    return cli


def test_bad_executor_options_are_usage_errors():
    out = CliRunner().invoke(_cli(), ["run", SMOKE, "--executor", "slurm"])
    assert out.exit_code == 2 and "'slurm' is not one of 'local', 'ray'" in out.output
    out = CliRunner().invoke(_cli(), ["run", SMOKE, "--address", "127.0.0.1:6379"])
    assert out.exit_code == 2 and "--address names a Ray cluster: add --executor ray" in out.output
    out = CliRunner().invoke(_cli(), ["run", SMOKE, "--jobs", "0"])
    assert out.exit_code == 2


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_address_fails_fast_in_one_line(tmp_path, monkeypatch):
    pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]')")
    monkeypatch.chdir(tmp_path)
    address = f"127.0.0.1:{_free_port()}"     # nothing listens there
    with pytest.raises(ExecutorError, match=f"--address {address}: no Ray cluster answers there"):
        check_reachable(address)
    out = CliRunner().invoke(_cli(), ["run", SMOKE, "--executor", "ray", "--address", address,
                                      "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--set", "train.steps=2"])
    assert out.exit_code == 1, out.output
    assert f"--address {address}: no Ray cluster answers there" in out.output and "nothing was run" in out.output
    assert "Traceback" not in out.output
    assert not (tmp_path / "results" / "smoke" / "runs.jsonl").exists()
    assert not (tmp_path / "mlflow.db").exists()   # no MLflow parent run was opened


@pytest.mark.parametrize("text, shown", [
    (f"postgresql+psycopg://harness:{SECRET}@127.0.0.1:5432/optuna", "postgresql+psycopg://harness:***@127.0.0.1:5432/optuna"),
    (f"http://admin:{SECRET}@127.0.0.1:5000", "http://admin:***@127.0.0.1:5000"),
    (f"postgresql://harness@db/optuna?password={SECRET}&sslmode=require", "postgresql://harness@db/optuna?password=***&sslmode=require"),
    (f"cannot open postgresql://u:{SECRET}@h/db: refused", "cannot open postgresql://u:***@h/db: refused"),
    ("http://127.0.0.1:5000/path", "http://127.0.0.1:5000/path"),
    ("sqlite:///mlruns/optuna.db", "sqlite:///mlruns/optuna.db"),
    ("suites/vision.tune.journal", "suites/vision.tune.journal"),
])
def test_passwords_are_masked(text, shown):
    assert redact(text) == shown


def test_storage_display_and_driver():
    from harness.tune.storage import _with_driver, display_url

    assert SECRET not in display_url(f"postgresql://harness:{SECRET}@127.0.0.1/optuna")
    import importlib.util

    if importlib.util.find_spec("psycopg") and not importlib.util.find_spec("psycopg2"):
        assert _with_driver("postgresql://h/db") == "postgresql+psycopg://h/db"
    assert _with_driver("sqlite:///x.db") == "sqlite:///x.db"


def test_interrupted_message_names_every_cancelled_run():
    import signal

    from harness.cli.run import interrupted_message
    from harness.runner import SuiteInterrupted
    from harness.specs import RunResult

    runs = load_suite(SMOKE).runs()
    results = [RunResult(runs[0], "finished"), RunResult(runs[1], "killed"), RunResult(runs[2], "killed")]
    exc = SuiteInterrupted("interrupted", signal.SIGINT, runs[1], results, killed_runs=[runs[1], runs[2]])
    assert interrupted_message(exc, "results/smoke") == (
        f"Ctrl-C: runs {runs[1].key}, {runs[2].key} are marked killed; 1 finished run(s) are kept in "
        "results/smoke/runs.jsonl and a re-run resumes after them.")
