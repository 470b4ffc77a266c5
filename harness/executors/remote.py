"""What a Ray worker does with one run: train it exactly as the local executor would
(``harness.execute.execute_run``), and send everything back to the driver, which alone writes runs.jsonl,
the reports and MLflow.

The worker writes nothing that outlives the task: the metrics the training logged come back as a
list (the driver replays them into MLflow at their steps), artifact files (samples, profiler
traces) come back as bytes from a temporary folder (the driver writes them where the local
executor would), and tracking is off in the worker. So a worker needs the same installation as
the driver (harness and its plugins), the task's data, and nothing shared with the driver.

This module imports no Ray: the function is wrapped by ``ray.remote`` on the driver.
"""
from __future__ import annotations

import os
import platform
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.plan import Plan
from harness.specs import Run, RunResult
from harness.suite import Suite


@dataclass
class RemoteOutcome:
    """One run's result as a worker sends it back."""

    result: RunResult
    logged: list[tuple[dict[str, float], int]] = field(default_factory=list)   # (metrics, step), in order
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)         # artifact -> (path under the output folder, bytes)
    seconds: float = 0.0
    device: str = ""                          # the worker's device label (tag harness.device)
    host: str = ""
    traceback: str | None = None              # a failure's traceback (printed with HARNESS_DEBUG)


class _Recorder:
    """The hook ``execute_run`` reports to: keeps every logged dict for the driver."""

    def __init__(self) -> None:
        self.logged: list[tuple[dict[str, float], int]] = []

    def metrics_logged(self, run: Any, metrics: dict[str, float], step: int) -> None:
        self.logged.append((dict(metrics), int(step)))


# One task per worker process and task configuration: data is loaded once, not once per run.
_TASKS: dict[str, Any] = {}


def _task(suite: Suite) -> Any:
    import json

    from harness.plan import build_task

    key = json.dumps([suite.suite.task, suite.task], sort_keys=True, default=str)
    if key not in _TASKS:
        _TASKS[key] = build_task(suite)
    return _TASKS[key]


def _collect(artifacts: dict[str, str], root: Path) -> dict[str, tuple[str, bytes]]:
    files = {}
    for name, path in artifacts.items():
        p = Path(path)
        if p.is_file():
            files[name] = (os.path.relpath(p, root), p.read_bytes())
    return files


def execute_remote(suite: Suite, run: Run, plan: Plan) -> RemoteOutcome:
    """Train ``run`` in this worker; a failure comes back as a failed result with its reason."""
    from harness import tracking
    from harness.devices import device_label
    from harness.profiling import keep_freed_memory
    from harness.execute import error_reason, execute_run

    tracking.configure(enabled=False)   # the driver alone writes MLflow
    keep_freed_memory()
    recorder = _Recorder()
    start = time.perf_counter()
    trace = None
    with tempfile.TemporaryDirectory(prefix="harness-run-") as tmp:
        try:
            result = execute_run(run, plan, _task(suite), recorder, Path(tmp))
        except Exception as exc:  # noqa: BLE001 - recorded as the run's failure, as the local executor does
            result, trace = RunResult(run, "failed", error=error_reason(exc)), traceback.format_exc()
        files = _collect(result.artifacts, Path(tmp))
    result.artifacts = {}
    try:
        device = device_label(run.train.get("device", "auto"), threads=run.train.get("threads"))
    except Exception:  # noqa: BLE001 - "cuda" where there is none: the run failed already and says why
        device = ""
    return RemoteOutcome(result, recorder.logged, files, time.perf_counter() - start, device, platform.node(), trace)
