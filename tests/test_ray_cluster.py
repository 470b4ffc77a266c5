"""Beyond one machine, for real: a Ray cluster (`ray start --head` on 127.0.0.1 plus a second node
joining it), a throwaway PostgreSQL (initdb into a temporary folder, as the `postgres` user when
run as root) and `mlflow server` on it, all started here and stopped afterwards.

- the Ray executor gives the local executor's metrics and MLflow layout, and resumes;
- a failing run, a worker killed once (retried) and a worker killed twice (recorded failed);
- Ctrl-C cancels the task in flight and keeps the finished run;
- two `harness tune --executor ray` drivers on one PostgreSQL study run exactly --trials trials,
  recorded through `--tracking-uri http://...`, and no password shows anywhere.

Skips with the reason where Ray, PostgreSQL or the mlflow CLI is missing.
"""
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")

from harness import hookimpl, plugins, tracking  # noqa: E402
from harness.executors.ray_runs import RayExecutor  # noqa: E402
from harness.runner import SuiteInterrupted, run_suite  # noqa: E402
from harness.suite import load_suite  # noqa: E402
from harness.testing import temporary_plugin  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "suites" / "smoke.toml")
FAST = ["train.steps=8", "train.eval_every=4", "train.log_every=4", "train.batch_size=32", "suite.seeds=[0]",
        "train.threads=1"]   # equal thread counts: the same metrics as the local executor
HARNESS = [sys.executable, "-c", "from harness.cli import main; main()"]
PASSWORD = "s3cret-Pw"
VENV_BIN = Path(sys.executable).parent
PG_BIN = next((p for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True) if (p / "initdb").exists()),
              None) if Path("/usr/lib/postgresql").exists() else None
PG_BIN = PG_BIN or (Path(shutil.which("initdb")).parent if shutil.which("initdb") else None)

FAULTS = '''
import os, signal
from harness import MixerSpec, hookimpl
from harness.nn.softmax import SoftmaxAttention


def _die(once):
    where = os.environ.get("HARNESS_TEST_KILL_DIR")
    if not where:        # only in the cluster's workers, never in the test process
        return
    marker = os.path.join(where, "killed-once")
    if once and os.path.exists(marker):
        return
    open(marker, "w").close()
    os.kill(os.getpid(), signal.SIGKILL)


class NaN(SoftmaxAttention):
    def forward(self, x, pad=None):
        return super().forward(x, pad) * float("nan")


class KillOnce(SoftmaxAttention):
    def forward(self, x, pad=None):
        _die(once=True)
        return super().forward(x, pad)


class KillAlways(SoftmaxAttention):
    def forward(self, x, pad=None):
        _die(once=False)
        return super().forward(x, pad)


@hookimpl
def register_mixers(register):
    register(MixerSpec("faults.nan", NaN))
    register(MixerSpec("faults.kill_once", KillOnce))
    register(MixerSpec("faults.kill_always", KillAlways))
'''


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_group(proc, grace=2.0):
    """SIGTERM the process group this test started (by its id), then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + grace
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)


def _wait_for(check, what, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"{what} did not come up in {timeout} s")


@pytest.fixture(scope="module")
def workdir():
    path = Path(tempfile.mkdtemp(prefix="hrc", dir="/tmp"))   # short: Ray's socket paths have a length limit
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def fault_plugin(workdir):
    """Mixers that diverge or kill their worker, as an installed plugin the workers and this process load."""
    folder = workdir / "plugin"
    folder.mkdir()
    (folder / "harness_faults.py").write_text(FAULTS)
    dist = folder / "harness_faults-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: harness-faults\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[harness]\nfaults = harness_faults\n")
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    plugins.reset()
    yield folder
    sys.path.remove(str(folder))
    plugins.reset()


@pytest.fixture(scope="module")
def cluster(workdir, fault_plugin):
    """`ray start --head` on 127.0.0.1 and a second node joining it, 1 CPU each; this process
    connects as the driver."""
    if not (VENV_BIN / "ray").exists():
        pytest.skip("the ray command is missing")
    port = _free_port()
    (workdir / "kills").mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fault_plugin), os.environ.get("PYTHONPATH", "")]),
           "HARNESS_TEST_KILL_DIR": str(workdir / "kills"), "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--block"]
    head = subprocess.Popen([str(VENV_BIN / "ray"), "start", "--head", "--port", str(port), "--include-dashboard=false",
                             "--temp-dir", str(workdir / "ray"), *common], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [head]
    old_mode, old_term = os.environ.get("RAY_AUTH_MODE"), signal.getsignal(signal.SIGTERM)
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        _wait_for(lambda: _listening(port), "the Ray head")
        procs.append(subprocess.Popen([str(VENV_BIN / "ray"), "start", "--address", f"127.0.0.1:{port}", *common],
                                      env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        ray.init(address=f"127.0.0.1:{port}", logging_level="WARNING")
        _wait_for(lambda: len([n for n in ray.nodes() if n["Alive"]]) == 2, "the second Ray node")
        yield {"address": f"127.0.0.1:{port}", "env": env}
    finally:
        ray.shutdown()
        signal.signal(signal.SIGTERM, old_term)   # ray.init set its own
        if old_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = old_mode
        for proc in reversed(procs):
            _stop_group(proc)


def _listening(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _as_postgres(cmd):
    """PostgreSQL refuses to run as root: run its tools as the postgres user there."""
    if os.geteuid() != 0:
        return cmd
    if not shutil.which("runuser"):
        pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
    return ["runuser", "-u", "postgres", "--", *cmd]


@pytest.fixture(scope="module")
def postgres(workdir):
    """A throwaway PostgreSQL on 127.0.0.1 with password authentication; databases optuna and mlflow."""
    if PG_BIN is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found")
    folder = Path(tempfile.mkdtemp(prefix="hpg", dir="/tmp"))   # its own: the postgres user must reach it
    (folder / "pw").write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(folder / "pw", "postgres")
    _run_or_fail(_as_postgres([str(PG_BIN / "initdb"), "-D", str(folder / "data"), "-U", "harness", "-A",
                               "scram-sha-256", "--pwfile", str(folder / "pw"), "-E", "UTF8"]))
    port = _free_port()
    _run_or_fail(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(folder / "data"), "-l", str(folder / "log"),
                               "-o", f"-h 127.0.0.1 -p {port} -k {folder}", "-w", "start"]))
    try:
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        for db in ("optuna", "mlflow"):
            _run_or_fail([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "harness", db], env=env)
        yield {"url": lambda db: f"postgresql+psycopg://harness:{PASSWORD}@127.0.0.1:{port}/{db}"}
    finally:
        subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def _run_or_fail(cmd, **kwargs):
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if done.returncode:
        pytest.fail(f"{' '.join(cmd)} failed: {done.stderr[-2000:]}")


@pytest.fixture(scope="module")
def mlflow_server(workdir, postgres):
    """`mlflow server` on 127.0.0.1: PostgreSQL backend store, a shared artifact root. It boots in
    the background (tests ask for it before the cluster, which starts meanwhile); ``ready()`` waits."""
    if not (VENV_BIN / "mlflow").exists():
        pytest.skip("the mlflow command is missing")
    port = _free_port()
    artifacts = workdir / "mlflow-artifacts"
    proc = subprocess.Popen([str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", postgres["url"]("mlflow"),
                             "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1"], start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=open(workdir / "mlflow.log", "w"))
    def ready():
        _wait_for(lambda: _healthy(port) or proc.poll() is not None, "mlflow server", timeout=180)
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited: {(workdir / 'mlflow.log').read_text()[-2000:]}")
        return f"http://127.0.0.1:{port}"

    try:
        yield {"ready": ready, "artifacts": artifacts}
    finally:
        _stop_group(proc)


def _healthy(port):
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    tracking.configure()


def quiet():
    import io

    from rich.console import Console

    return Console(file=io.StringIO(), width=200)


def _layout(uri, experiment):
    """Per run role: sorted tag names, params, metric names (MLflow's system metrics aside)."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    out = {}
    for r in runs:
        role = r.data.tags["harness.role"]
        key = role if role == "parent" else (role, r.data.tags["harness.variant"])
        out[key] = (r.info.status, sorted(k for k in r.data.tags if not k.startswith("mlflow.")),
                    {k: v for k, v in r.data.params.items()},
                    sorted(k for k in r.data.metrics if not k.startswith("system/")),
                    r.data.tags.get("mlflow.parentRunId"))
    return out, client, runs


def test_ray_executor_gives_the_local_results_and_layout_and_resumes(mlflow_server, cluster, in_tmp):
    import mlflow

    local_uri = f"sqlite:///{in_tmp}/local.db"
    tracking.configure(enabled=True, tracking_uri=local_uri)
    local = run_suite(load_suite(SMOKE, [*FAST, "suite.output_dir='local'"]), console=quiet())
    server = mlflow_server["ready"]()
    tracking.configure(enabled=True, tracking_uri=server)
    console = quiet()
    remote = run_suite(load_suite(SMOKE, [*FAST, "suite.output_dir='ray'"]), console=console,
                       executor=RayExecutor(address=cluster["address"]))
    assert "2 node(s), 2 CPU(s)" in console.file.getvalue()     # the head and the node that joined it
    assert [r.status for r in remote] == [r.status for r in local] == ["finished", "finished"]
    for a, b in zip(local, remote):
        assert (a.run.variant, a.run.config_hash) == (b.run.variant, b.run.config_hash)
        assert a.metrics == b.metrics                              # same seeds, same threads: the same numbers
        assert a.history == b.history and b.efficiency["threads"] == 1
    for name in ("results.csv", "results.md", "suite.json"):
        assert (in_tmp / "ray" / name).exists()
    lines = [json.loads(line) for line in (in_tmp / "ray" / "runs.jsonl").read_text().splitlines()]
    assert sorted(r["run"]["variant"] for r in lines) == ["softmax", "softmax_narrow_mlp"]

    here, _, _ = _layout(local_uri, "smoke")
    there, client, runs = _layout(server, "smoke")
    assert set(here) == set(there) == {"parent", ("run", "softmax"), ("run", "softmax_narrow_mlp")}
    parent_id = next(r.info.run_id for r in runs if r.data.tags["harness.role"] == "parent")
    for key in here:
        status, tags, params, metrics, parent = there[key]
        assert (status, tags, metrics) == here[key][:2] + (here[key][3],), key
        if key != "parent":
            assert params == here[key][2] and parent == parent_id
            history = client.get_metric_history(next(r.info.run_id for r in runs if r.data.tags.get(
                "harness.variant") == key[1]), "train/loss")
            assert [m.step for m in history] == [4, 8]            # replayed at the steps they were logged
    assert {a.path for a in client.list_artifacts(parent_id)} >= {"results.csv", "results.md", "suite.json"}
    assert any(mlflow_server["artifacts"].rglob("results.csv"))   # in the server's shared artifact root

    # resume: nothing left to train, so no task (and no cluster) is needed; across executors too
    tracking.configure(enabled=False)
    again = run_suite(load_suite(SMOKE, [*FAST, "suite.output_dir='ray'"]), console=quiet(),
                      executor=RayExecutor(address=cluster["address"]))
    assert [r.status for r in again] == ["skipped", "skipped"]
    across = run_suite(load_suite(SMOKE, [*FAST, "suite.output_dir='local'"]), console=quiet(),
                       executor=RayExecutor(address=cluster["address"]))
    assert [r.status for r in across] == ["skipped", "skipped"]
    mlflow.set_tracking_uri(None)


def test_failures_and_lost_workers_are_recorded_and_the_others_go_on(cluster, in_tmp):
    import mlflow

    uri = f"sqlite:///{in_tmp}/mlflow.db"
    tracking.configure(enabled=True, tracking_uri=uri)
    sets = [*FAST, "variants.nan.mixer=faults.nan", "variants.kill_once.mixer=faults.kill_once",
            "variants.kill_always.mixer=faults.kill_always"]
    console = quiet()
    results = run_suite(load_suite(SMOKE, sets), console=console, executor=RayExecutor(address=cluster["address"]))
    by = {r.run.variant: r for r in results}
    assert [r.run.variant for r in results] == ["softmax", "softmax_narrow_mlp", "nan", "kill_once", "kill_always"]
    assert by["softmax"].status == by["softmax_narrow_mlp"].status == "finished"
    assert by["nan"].status == "failed" and by["nan"].error.startswith("diverged: training loss became nan")
    assert by["kill_once"].status == "finished"                   # its worker died once: Ray ran it again
    assert by["kill_always"].status == "failed"
    assert by["kill_always"].error.startswith("worker lost, and lost again on its retry: ")
    log = [json.loads(line) for line in (in_tmp / "results" / "smoke" / "runs.jsonl").read_text().splitlines()]
    assert sorted((r["run"]["variant"], r["status"]) for r in log) == sorted((v, r.status) for v, r in by.items())
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["smoke"])
    status = dict(zip(runs["tags.harness.variant"].fillna("parent"), runs["status"]))
    assert status == {"parent": "FINISHED", "softmax": "FINISHED", "softmax_narrow_mlp": "FINISHED",
                      "nan": "FAILED", "kill_once": "FINISHED", "kill_always": "FAILED"}   # the parent closed
    mlflow.set_tracking_uri(None)


class _InterruptAfterFirst:
    """A Ctrl-C the moment the first run is recorded, while the other trains on the cluster."""

    @hookimpl
    def run_finished(run, result):
        signal.raise_signal(signal.SIGINT)


def test_ctrl_c_cancels_the_tasks_in_flight_and_keeps_the_finished(cluster, in_tmp):
    import mlflow

    uri = f"sqlite:///{in_tmp}/mlflow.db"
    tracking.configure(enabled=True, tracking_uri=uri)
    suite = load_suite(SMOKE, [*FAST, "variants.softmax_narrow_mlp.train.steps=10000000"])
    with temporary_plugin(_InterruptAfterFirst, name="interrupt"), pytest.raises(SuiteInterrupted) as info:
        run_suite(suite, console=quiet(), executor=RayExecutor(address=cluster["address"]))
    assert [r.key for r in info.value.killed_runs] == ["softmax_narrow_mlp/seed0"]
    log = [json.loads(line) for line in (in_tmp / "results" / "smoke" / "runs.jsonl").read_text().splitlines()]
    assert [(r["run"]["variant"], r["status"]) for r in log] == [("softmax", "finished"),
                                                                ("softmax_narrow_mlp", "killed")]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["smoke"])
    status = dict(zip(runs["tags.harness.variant"].fillna("parent"), runs["status"]))
    assert status == {"parent": "KILLED", "softmax": "FINISHED", "softmax_narrow_mlp": "KILLED"}
    mlflow.set_tracking_uri(None)
    _wait_for(lambda: ray.available_resources().get("CPU", 0) == 2, "the cancelled task's CPU", timeout=60)


def test_two_tune_drivers_share_one_postgres_study_and_no_password_shows(postgres, mlflow_server, cluster, in_tmp):
    import mlflow
    import optuna

    from harness.tune import open_storage

    storage = postgres["url"]("optuna")
    cmd = [*HARNESS, "tune", SMOKE, "-v", "softmax", "--executor", "ray", "--address", cluster["address"],
           "--trials", "4", "--storage", storage, "--tracking-uri", mlflow_server["ready"](),
           *[a for item in FAST[:4] for a in ("--set", item)]]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    drivers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for _ in range(2)]
    outputs = [d.communicate(timeout=600) for d in drivers]
    for d, (out, err) in zip(drivers, outputs):
        assert d.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="smoke.softmax", storage=open_storage(storage))
    trials = study.get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]       # exactly --trials, none lost, none twice
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    lines = [line for out, _ in outputs for line in out.splitlines() if " softmax #" in line]
    assert sorted(int(line.split("#")[1].split()[0]) for line in lines) == [0, 1, 2, 3]

    client = mlflow.MlflowClient(mlflow_server["ready"]())
    exp = client.get_experiment_by_name("smoke-tune")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("harness.role") == "tune-trial"]
    assert sorted(int(r.data.params["trial"]) for r in children) == [0, 1, 2, 3]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all("val/accuracy" in r.data.metrics for r in children)

    # no password in what the harness printed, recorded in MLflow, or wrote to results files
    printed = "".join(out + err for out, err in outputs)
    assert PASSWORD not in printed and "harness:***@127.0.0.1" in printed
    recorded = json.dumps([[r.data.params, r.data.tags] for r in runs])
    assert PASSWORD not in recorded and "harness:***@" in recorded
    for path in (in_tmp / "results").rglob("*"):
        if path.is_file():
            assert PASSWORD not in path.read_text(errors="replace"), path
