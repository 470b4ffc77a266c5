"""Execute a suite: variants x seeds, budget-matched, failures recorded, finished runs skipped.

The output folder keeps ``runs.jsonl`` (one RunResult per line, the later line wins) and
``suite.json``; a re-run skips every run whose config hash already finished there. Ctrl-C and
SIGTERM mark the training run(s) killed and keep every finished one (``SuiteInterrupted``).

This module is the driver: it plans, resumes, calls the observer hooks, writes runs.jsonl and
closes everything on an interrupt. Where runs train is an executor's job (``harness.executors``):
one at a time in this process (local, the default) or as Ray tasks (``--executor ray``,
``--jobs N``); the driver's guarantees are the same for both.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Iterator

from harness.execute import error_reason, execute_run
from harness.plan import Plan, build_task, plan_suite
from harness.registry import metric_higher_is_better
from harness.runlog import RunLog
from harness.specs import Run, RunResult
from harness.suite import Suite
from harness.tracking.schema import Artifact


def _check_variants(suite: Suite, variants: list[str] | None) -> None:
    unknown = [v for v in variants or () if v not in suite.variants]
    if unknown:
        from harness.registry import suggest
        from harness.suite import SuiteError

        raise SuiteError([f"-v {u}: no such variant.{suggest(u, list(suite.variants))}" for u in unknown])


def _write_suite_info(suite: Suite, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / Artifact.SUITE).write_text(json.dumps({
        "name": suite.name, "metric": suite.suite.metric, "reference": suite.reference,
        "higher_is_better": metric_higher_is_better(suite.suite.metric), "variants": list(suite.variants),
        "config": suite.model_dump(),  # the resolved suite: extends and --set applied
    }, indent=2, default=str))


def _tracker_id(ids: list[Any]) -> str | None:
    """The first id a ``run_started`` implementation returned (the tracker's run id)."""
    return next((i for i in ids if i), None)


class _SuiteProgress:
    """One bar for the suite, one for the run that trains."""

    def __init__(self, suite: Suite, total: int, console: Any):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bars = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), console=console, transient=False)
        self.overall = self.bars.add_task(f"suite {suite.name}", total=total)


CTRL_C = "interrupted by the user (Ctrl-C)"
SIGNAL_CAUSES = {signal.SIGINT: CTRL_C, signal.SIGTERM: "terminated (SIGTERM)"}


class SuiteInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a suite. ``signum``: which signal; ``killed``: the run marked
    killed (None when none was training; the first of them where several were, on Ray);
    ``killed_runs``: every run marked killed; ``results``: what this invocation recorded, the
    killed runs included."""

    def __init__(self, cause: str, signum: int, killed: Run | None, results: list[RunResult],
                 killed_runs: list[Run] | None = None):
        super().__init__(cause)
        self.cause, self.signum, self.killed, self.results = cause, signum, killed, results
        self.killed_runs = killed_runs if killed_runs is not None else ([killed] if killed else [])


class _Interrupts:
    """While a suite runs, SIGTERM (what ``timeout`` and schedulers send) stops it as Ctrl-C does:
    both raise KeyboardInterrupt in the main thread. Inside ``held()`` (a result being recorded,
    a tracker run being opened) a signal waits for the block to end, so no result is half written;
    once stopping, further signals are ignored so the clean-up completes (SIGKILL still ends it).
    Off the main thread Python allows no handlers, and only Ctrl-C's default applies."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.holding = self.pending = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "_Interrupts":
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._handle) for sig in SIGNAL_CAUSES}
        return self

    def reinstall(self) -> None:
        """Take the signals back after a library set its own handler (``ray.init`` sets SIGTERM's);
        the handlers from before ``__enter__`` are still the ones restored at exit."""
        if self.previous:
            for sig in SIGNAL_CAUSES:
                signal.signal(sig, self._handle)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: set outside Python

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            return
        self.signum = signum
        if self.holding:
            self.pending = True
        else:
            raise KeyboardInterrupt(SIGNAL_CAUSES[signum])

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
            if self.pending:
                self.pending = False
                raise KeyboardInterrupt(SIGNAL_CAUSES[self.signum])  # type: ignore[index]


def run_suite(suite: Suite, *, variants: list[str] | None = None, console: Any = None,
              contract: bool = True, executor: Any = None) -> list[RunResult]:
    """Run every (variant, seed); returns results in plan order. Ctrl-C or SIGTERM marks the
    training run(s) killed, closes the trackers, reports what finished, and raises SuiteInterrupted.
    ``contract=False`` skips the contract gate (harness.contract_gate); the runs say so.
    ``executor``: where runs train (``harness.executors``; default: one at a time in this process)."""
    from rich.console import Console

    from harness.executors import LocalExecutor

    execution = _Execution(suite, console or Console(), executor or LocalExecutor())
    execution.contract = contract
    with _Interrupts() as interrupts:
        try:
            return execution.run(variants, interrupts)
        except KeyboardInterrupt:
            interrupts.signum = interrupts.signum or signal.SIGINT  # from now on signals are ignored
            raise execution.interrupted(interrupts.signum) from None


class _Execution:
    """One invocation: what it has opened and recorded, so an interrupt can close and keep it.

    An executor trains the runs it is given and reports each through ``begin`` (the tracker's run
    opens) and ``finish`` (recorded and on disk), both inside ``interrupts.held()``; a run it has
    in hand but not reported sits in ``pending`` and is marked killed by an interrupt."""

    def __init__(self, suite: Suite, console: Any, executor: Any):
        from harness.plugins import get_plugin_manager

        self.suite, self.console, self.executor = suite, console, executor
        self.hook = get_plugin_manager().hook
        self.log = RunLog(suite.output_dir)
        self.results: list[RunResult] = []
        self.current: tuple[Run, str | None] | None = None   # the run whose tracker run is open, and its id
        self.pending: dict[str, Run] = {}                     # handed to the executor, not reported yet
        self.open = False                                     # suite_started called, suite_finished not
        self.contract = True                                  # probe the mixers before training
        self.plans: dict[str, Plan] = {}
        self.task: Any = None                                 # built here for the local executor only
        self.order: dict[str, int] = {}                       # run key -> plan position
        self.progress: _SuiteProgress | None = None
        self.interrupts: _Interrupts | None = None

    def run(self, variants: list[str] | None, interrupts: _Interrupts) -> list[RunResult]:
        suite, hook = self.suite, self.hook
        self.interrupts = interrupts
        _check_variants(suite, variants)
        self.plans = plan_suite(suite, contract=self.contract)
        if getattr(self.executor, "in_process", False):
            self.task = build_task(suite)
        runs = suite.runs(variants)
        self.order = {run.key: i for i, run in enumerate(runs)}
        if not self.contract:
            self.console.print("[yellow]warning: --no-contract: the mixers were not probed for leaks before "
                               "training; every run is tagged contract=skipped[/yellow]")
            for run in runs:
                run.contract_skipped = True
        _write_suite_info(suite, suite.output_dir)
        skipped_lines = self.log.read().warning()   # resume skips a line cut short by a crash: say so
        if skipped_lines:
            self.console.print(skipped_lines, style="yellow", markup=False)
        done = self.log.finished()
        previous = {(r.run.variant, r.run.seed): r for r in done.values()}
        todo = [run for run in runs if run.config_hash not in done]
        # Connect first (Ray), so a cluster that is not there fails before the MLflow parent opens.
        with self.executor.session(self, todo):
            with interrupts.held():
                hook.suite_started(suite=suite, runs=runs, output_dir=str(suite.output_dir))
                self.open = True
            self.progress = _SuiteProgress(suite, len(runs), self.console)
            with self.progress.bars:
                for run in runs:
                    if run.config_hash in done:
                        with interrupts.held():
                            self._record(run, _reuse(run, done[run.config_hash], self.console))
                            self._advance()
                    else:
                        _note_rerun(run, previous.get((run.variant, run.seed)), self.console)
                self.executor.train(todo, self)
            with interrupts.held():
                self.open = False
                self._in_plan_order()
                hook.suite_finished(suite=suite, results=self.results, output_dir=str(suite.output_dir))
        return self.results

    def begin(self, run: Run) -> str | None:
        """The run starts for the observers (call inside ``interrupts.held()``); the tracker's id."""
        self.current = (run, _tracker_id(self.hook.run_started(run=run)))
        return self.current[1]

    def finish(self, run: Run, result: RunResult) -> None:
        """The run's result: on disk the moment it is known, then to the observers (inside ``held()``)."""
        result.run_id = self.current[1] if self.current else None
        self.log.append(result)
        self._record(run, result)
        self.current = None
        self.pending.pop(run.key, None)
        self._advance()

    def _advance(self) -> None:
        if self.progress is not None:
            self.progress.bars.advance(self.progress.overall)

    def _record(self, run: Run, result: RunResult) -> None:
        self.hook.run_finished(run=run, result=result)
        self.results.append(result)

    def _in_plan_order(self) -> None:
        # An executor may finish runs in any order; reports and the return value follow the plan.
        self.results.sort(key=lambda r: self.order.get(r.run.key, len(self.order)))

    def _kill(self, run: Run, run_id: str | None, cause: str) -> RunResult:
        killed = RunResult(run, "killed", error=cause, run_id=run_id)
        self.log.append(killed)
        self._record(run, killed)
        return killed

    def interrupted(self, signum: int) -> SuiteInterrupted:
        """Mark the training run(s) killed, close the suite's hooks; the exception to raise."""
        cause = SIGNAL_CAUSES[signum]
        killed: list[RunResult] = []
        if self.current is not None:
            run, run_id = self.current
            self.pending.pop(run.key, None)
            killed.append(self._kill(run, run_id, cause))
            self.current = None
        for run in list(self.pending.values()):  # in a worker when the interrupt came: a tracker run each
            killed.append(self._kill(run, self.begin(run), cause))
            self.current = None
        self.pending.clear()
        if self.open:
            self.open = False
            self._in_plan_order()
            self.hook.suite_finished(suite=self.suite, results=self.results, output_dir=str(self.suite.output_dir))
        return SuiteInterrupted(cause, signum, killed[0].run if killed else None, self.results,
                                killed_runs=[k.run for k in killed])


# What must match for a re-run to be a change of code or defaults rather than of configuration.
_CONFIG_FIELDS = ("task", "model", "mixer", "metric", "task_options", "model_config", "mixer_options", "train",
                  "budget")


def _note_rerun(run: Run, previous: RunResult | None, console: Any) -> None:
    """One dim line when runs.jsonl holds a finished result of the same configuration under
    another hash: the hash also covers versions and the mixer's resolved options."""
    if previous is None or previous.run.config_hash == run.config_hash:
        return

    def config(r: Run) -> str:
        return json.dumps({f: getattr(r, f) for f in _CONFIG_FIELDS}, sort_keys=True, default=str)

    if config(previous.run) == config(run):
        console.print(f"[dim]re-run {run.key}: harness or plugin versions, or resolved options, changed since "
                      f"runs.jsonl's result[/dim]")


def _reuse(run: Run, prev: RunResult, console: Any) -> RunResult:
    console.print(f"[dim]skip {run.key}: finished before with the same config[/dim]")
    return RunResult(run, "skipped", metrics=prev.metrics, efficiency=prev.efficiency, history=prev.history,
                     run_id=prev.run_id)


def report_line(run: Run, result: RunResult, seconds: float, console: Any, trace: str | None = None) -> None:
    """The console line of a run that ended: its metric and time, or why it failed."""
    if result.status == "finished":
        console.print(f"{run.key}: {run.metric} = {result.metrics.get(run.metric, float('nan')):.4f} "
                      f"({seconds:.0f} s)")
    elif result.status == "failed":
        console.print(f"[red]run {run.key} failed: {result.error}[/red]", highlight=False)
        if trace and "HARNESS_DEBUG" in os.environ:  # full traceback on request
            console.print(trace, markup=False, highlight=False)


def run_in_process(run: Run, plan: Plan, task: Any, hook: Any, progress: _SuiteProgress, console: Any,
                   out_dir: Path) -> RunResult:
    """Train one run here, its bar fed by every logged step; a failure is recorded, not raised."""
    bars = progress.bars
    bar = bars.add_task(f"  {run.key}", total=run.train["steps"])

    class _Hook:  # forwards metrics and advances this run's bar
        def metrics_logged(self, run: Run, metrics: dict[str, float], step: int) -> None:
            bars.update(bar, completed=step)
            hook.metrics_logged(run=run, metrics=metrics, step=step)

    start = time.perf_counter()
    trace = None
    try:
        result = execute_run(run, plan, task, _Hook(), out_dir)
    except KeyboardInterrupt:
        bars.remove_task(bar)
        raise
    except Exception as exc:
        result, trace = RunResult(run, "failed", error=error_reason(exc)), traceback.format_exc()
    bars.remove_task(bar)
    report_line(run, result, time.perf_counter() - start, console, trace)
    return result
