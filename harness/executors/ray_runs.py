"""Runs as Ray tasks (``--executor ray``, ``--jobs N``).

Each (variant, seed) left to train becomes one Ray task asking the suite's ``[resources]``
(``resources.py``); its torch threads follow its CPUs unless ``train.threads`` is set, and the run
records the count it used. At most as many tasks are in flight as fit the cluster at once (or
``--jobs``), in plan order. The driver keeps every guarantee of the local executor:

- it alone writes runs.jsonl, the reports and MLflow: a finished task's logged metrics are replayed
  into its MLflow child run at their steps, its artifact files written where the local executor
  writes them (``remote.py``), and its result appended the moment it comes back;
- a failing run comes back as a failed result with its reason while the others go on;
- a lost worker (killed, out of memory, its node gone) is retried once by Ray (``max_retries``),
  and if it is lost again the run is recorded failed with the reason;
- Ctrl-C or SIGTERM cancels every task in flight (they are marked killed, with an MLflow child
  each) and keeps every finished run; runs not yet submitted are left for a re-run to resume.

The progress bar counts completed tasks; a task in flight shows as a row without steps (its
metrics arrive when it ends). Child runs therefore open and close in MLflow when a task ends.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterator

from harness.executors.cluster import Cluster, connect
from harness.executors.remote import RemoteOutcome, execute_remote
from harness.executors.resources import TaskResources, run_threads, task_resources
from harness.redact import redact
from harness.specs import Run, RunResult

LOST_WORKER_RETRIES = 1   # a run whose worker is lost runs once more, then is recorded failed
WAIT_S = 0.5              # ray.wait's timeout: how soon Ctrl-C and SIGTERM are seen


class RayExecutor:
    in_process = False

    def __init__(self, address: str | None = None, jobs: int | None = None, private: bool = False) -> None:
        self.address, self.jobs, self.private = address, jobs, private
        self.name = f"--jobs {jobs}" if private else "--executor ray"
        self.cluster: Cluster | None = None
        self.resources = TaskResources(1.0, 0.0, 1)
        self.at_once = 1
        self._writer: Any = None

    @contextlib.contextmanager
    def session(self, ex: Any, runs: list[Run]) -> Iterator[None]:
        """Connected to the cluster while the suite runs (not at all when every run resumes)."""
        if not runs:
            yield
            return
        from harness.devices import available_cores

        with connect(self.address, local_cpus=available_cores() if self.private else None, why=self.name) as cluster:
            ex.interrupts.reinstall()  # ray.init set its own SIGTERM handler
            self.cluster = cluster
            self.resources = task_resources(ex.suite.resources, jobs=self.jobs, cluster_cpus=cluster.cpus)
            cluster.check_fits(self.resources.num_cpus, self.resources.num_gpus)
            fit = cluster.capacity(self.resources.num_cpus, self.resources.num_gpus)
            self.at_once = min(fit, self.jobs) if self.jobs else fit
            ex.console.print(f"[dim]executor ray: {cluster.describe()}; {self.resources.describe()}, "
                             f"up to {self.at_once} at once[/dim]", highlight=False, soft_wrap=True)
            try:
                yield
            finally:
                self.cluster = None

    def _prepared(self, run: Run) -> Run:
        """The run with the torch threads it will use, so runs.jsonl and MLflow record them."""
        return dataclasses.replace(run, train={**run.train, "threads": run_threads(run.train, self.resources)})

    def train(self, runs: list[Run], ex: Any) -> None:
        if not runs:
            return
        assert self.cluster is not None
        ray = self.cluster.ray
        task = ray.remote(execute_remote).options(num_cpus=self.resources.num_cpus, num_gpus=self.resources.num_gpus,
                                                  max_retries=LOST_WORKER_RETRIES, retry_exceptions=False)
        queue = deque(self._prepared(run) for run in runs)
        in_flight: dict[Any, tuple[Run, Any, float]] = {}
        bars = ex.progress.bars
        try:
            while queue or in_flight:
                while queue and len(in_flight) < self.at_once:
                    run = queue.popleft()
                    ref = task.remote(ex.suite, run, ex.plans[run.variant])
                    in_flight[ref] = (run, bars.add_task(f"  {run.key} (Ray task)", total=None), time.perf_counter())
                    ex.pending[run.key] = run
                try:
                    ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=WAIT_S)
                except Exception as exc:  # noqa: BLE001 - the cluster itself is gone: no run can end
                    self._cluster_lost(ex, in_flight, queue, exc)
                    return
                for ref in ready:
                    run, bar, started = in_flight.pop(ref)
                    bars.remove_task(bar)
                    self._report(ex, run, self._outcome(ray, ref, run, started))
        except BaseException:
            _cancel(ray, in_flight)
            raise

    def _outcome(self, ray: Any, ref: Any, run: Run, started: float) -> RemoteOutcome:
        """The task's outcome, or a failed one saying why the task itself did not return."""
        from harness.execute import error_reason

        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # raised outside execute_remote's own handling
            cause = getattr(exc, "cause", None) or exc
            reason = f"on the worker: {error_reason(cause)}"
        except ray.exceptions.TaskCancelledError:
            reason = "cancelled on the cluster"
        except ray.exceptions.RayError as exc:  # the worker or its node died on the retry too
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            reason = (f"worker lost, and lost again on its retry: {type(exc).__name__}"
                      + (f": {first}" if first else ""))
        return RemoteOutcome(RunResult(run, "failed", error=redact(reason)), seconds=time.perf_counter() - started)

    def _report(self, ex: Any, run: Run, outcome: RemoteOutcome) -> None:
        """Record a returned task as the local executor records a run: observers, runs.jsonl, line."""
        from harness.runner import report_line

        result = outcome.result
        result.run = run
        result.artifacts = _write_files(ex.suite.output_dir, outcome.files)
        with ex.interrupts.held():
            run_id = ex.begin(run)
            self._tag_device(run_id, outcome.device)
            for metrics, step in outcome.logged:
                ex.hook.metrics_logged(run=run, metrics=metrics, step=step)
            ex.finish(run, result)
        report_line(run, result, outcome.seconds, ex.console, outcome.traceback)

    def _tag_device(self, run_id: str | None, device: str) -> None:
        """The child run names the worker's device, not the driver's."""
        from harness import tracking
        from harness.tracking.schema import Tag

        if not (run_id and device and tracking.enabled()):
            return
        if self._writer is None:
            self._writer = tracking.RunWriter()
        self._writer.tags(run_id, {Tag.DEVICE: device})

    def _cluster_lost(self, ex: Any, in_flight: dict[Any, tuple[Run, Any, float]], queue: deque[Run],
                      exc: Exception) -> None:
        """Every run in flight or queued is recorded failed with the reason; the suite then ends."""
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        reason = redact(f"the Ray cluster was lost: {type(exc).__name__}: {first}")
        ex.console.print(f"[red]{reason}[/red]", highlight=False)
        for run, bar, started in in_flight.values():
            ex.progress.bars.remove_task(bar)
            self._report(ex, run, RemoteOutcome(RunResult(run, "failed", error=reason),
                                                seconds=time.perf_counter() - started))
        for run in queue:
            self._report(ex, run, RemoteOutcome(RunResult(run, "failed", error=f"not started: {reason}")))
        in_flight.clear()
        queue.clear()


def _cancel(ray: Any, in_flight: dict[Any, Any]) -> None:
    """Stop every task in flight now (force: a training step does not check for cancellation)."""
    for ref in in_flight:
        try:
            ray.cancel(ref, force=True)
        except Exception:  # noqa: BLE001 - finished meanwhile, or the cluster is gone
            pass


def _write_files(out_dir: Path, files: dict[str, tuple[str, bytes]]) -> dict[str, str]:
    """A worker's artifact files, written under the driver's output folder at the local executor's paths."""
    paths = {}
    for name, (relative, data) in files.items():
        if Path(relative).is_absolute() or ".." in Path(relative).parts:
            continue
        path = Path(out_dir) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths[name] = str(path)
    return paths
