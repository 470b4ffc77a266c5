"""`harness run --jobs 2` on one machine: a private local Ray cluster (ray.init with this
machine's cores), two runs at once with the threads divided between them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")

from harness.devices import available_cores  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAST = ["train.steps=8", "train.eval_every=4", "train.log_every=4", "train.batch_size=32", "suite.seeds=[0]"]


def test_jobs_runs_at_once_on_a_local_ray_cluster_with_threads_divided(tmp_path):
    cmd = [sys.executable, "-c", "from harness.cli import main; main()", "run", str(ROOT / "suites" / "smoke.toml"),
           "--jobs", "2", "--no-track", *[a for item in FAST for a in ("--set", item)]]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}   # never an existing cluster
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "executor ray: a local Ray cluster: 1 node(s)" in done.stdout
    assert "up to 2 at once" in done.stdout
    records = [json.loads(line) for line in (tmp_path / "results" / "smoke" / "runs.jsonl").read_text().splitlines()]
    assert sorted((r["run"]["variant"], r["status"]) for r in records) == [("softmax", "finished"),
                                                                          ("softmax_narrow_mlp", "finished")]
    threads = max(1, available_cores() // 2)
    assert {r["efficiency"]["threads"] for r in records} == {threads}
    assert {r["run"]["train"]["threads"] for r in records} == {threads}   # recorded as applied
