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

from harness.plan import Plan, build_task, plan_suite
from harness.registry import metric_higher_is_better
from harness.runlog import RunLog
from harness.specs import Run, RunResult
from harness.suite import Suite
from harness.tracking.schema import Artifact


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def error_reason(exc: BaseException) -> str:
    """One line for a failed run or trial: out of memory, diverged, or the exception."""
    import torch

    from harness.train import DivergedError

    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return f"out of memory: {str(exc).splitlines()[0][:200]}"
    if isinstance(exc, DivergedError):
        return f"diverged: {exc}"
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def execute_run(run: Run, plan: Plan, task: Any, hook: Any, out_dir: Path = Path(".")) -> RunResult:
    """Build, count, train and evaluate one run with ``train.threads`` torch threads. Exceptions
    propagate to the caller."""
    from harness.devices import torch_threads

    with torch_threads(run.train.get("threads")) as threads:
        return _execute(run, plan, task, hook, out_dir, threads)


def _execute(run: Run, plan: Plan, task: Any, hook: Any, out_dir: Path, threads: int) -> RunResult:
    from harness.budget import count_params, flops_per_token
    from harness.devices import CoreContention, resolve_device
    from harness.profiling import PeakMemory
    from harness.registry import model as model_spec
    from harness.suite import TrainSection
    from harness.train import train

    _seed_everything(run.seed)
    build = model_spec(run.model).load()
    model = build(task.meta, mixer=run.mixer, mixer_options=run.mixer_options, **plan.model_config)
    counts = count_params(model)
    cfg = TrainSection.model_validate(run.train)
    device = resolve_device(cfg.device)
    example = _example_inputs(task)
    tokens_per_sample = _tokens_per_sample(task, model, example)
    tokens = example[0].shape[0] * tokens_per_sample
    efficiency: dict[str, float] = {
        "params": counts.total, "non_embedding_params": counts.non_embedding,
        "flops_per_token": flops_per_token(model.eval(), example, tokens), "threads": threads,
    }
    if plan.target is not None:
        efficiency.update(target_params=plan.target, param_gap=plan.gap)
    if plan.knob is not None:
        efficiency["knob_value"] = plan.model_config[plan.knob]
    model.to(device)  # the weights are the baseline: peak memory is what training adds to them
    with PeakMemory(device) as memory, CoreContention(threads) as load:
        outcome = train(model, task, cfg, seed=run.seed,
                        on_metrics=lambda metrics, step: hook.metrics_logged(run=run, metrics=metrics, step=step))
    efficiency.update(samples_per_s=outcome.samples_per_s, train_time_s=outcome.train_time_s,
                      loop_overhead=outcome.loop_overhead, peak_mem_mb=memory.delta_mb,
                      decayed_params=outcome.decayed_params, contended=float(load.contended),
                      other_busy_cores=load.other_busy_cores)
    efficiency["tokens_per_s"] = outcome.samples_per_s * tokens_per_sample
    tags: dict[str, str] = {}
    if cfg.compile:  # compile time apart from step time (harness.train); why it fell back, as a tag
        efficiency.update(compiled=float(outcome.compiled), compile_seconds=outcome.compile_seconds)
        if outcome.compile_fallback:
            from harness.tracking.schema import Tag

            tags[Tag.COMPILE_FALLBACK] = outcome.compile_fallback
    if getattr(task, "audio_seconds_per_sample", None):
        efficiency["audio_s_per_s"] = outcome.samples_per_s * task.audio_seconds_per_sample
    folder = out_dir / "artifacts" / f"{run.variant}-seed{run.seed}"
    artifacts = {f"{Artifact.SAMPLES_DIR}/{name}": path
                 for name, path in (task.artifacts(model, folder) if hasattr(task, "artifacts") else {}).items()}
    if run.profile:
        artifacts.update({f"{Artifact.PROFILE_DIR}/{name}": path for name, path in
                          _profile(run, model, task, cfg, device, efficiency, tokens_per_sample, out_dir).items()})
    return RunResult(run, "finished", metrics=outcome.metrics, efficiency=efficiency, history=outcome.history,
                     artifacts=artifacts, tags=tags)


def _example_inputs(task: Any, n: int = 2) -> tuple[Any, ...]:
    """What the model is called with for one small batch (counting FLOPs): ``task.example_inputs(n)``
    when the task defines it (several inputs, e.g. audio features and decoder tokens), else the
    first ``n`` validation inputs."""
    if hasattr(task, "example_inputs"):
        return tuple(task.example_inputs(n))
    return (task.splits()["val"][0][:n],)


def _tokens_per_sample(task: Any, model: Any, example: tuple[Any, ...]) -> int:
    """Positions the mixers see per sample: ``task.tokens_per_sample`` when set, else the model's
    patch grid, else the input's length."""
    if getattr(task, "tokens_per_sample", None):
        return int(task.tokens_per_sample)
    if hasattr(model, "grid"):
        return model.grid[0] * model.grid[1]
    return int(example[0].shape[1])


def _profile(run: Run, model: Any, task: Any, cfg: Any, device: Any, efficiency: dict[str, float],
             tokens_per_sample: int, out_dir: Path) -> dict[str, str]:
    """A few extra training steps under torch.profiler, plus FLOPs per step and MFU."""
    from harness import profiling
    from harness.nn.aux import collect_aux
    from harness.train import autocast_for

    autocast = autocast_for(device, cfg.amp)
    batch = tuple(t.to(device) for t in next(iter(task.batches("train", cfg.batch_size, seed=run.seed))))

    def step() -> None:
        with autocast():
            loss = task.loss(model, batch)
        losses, _ = collect_aux(model)
        (loss + sum(losses.values())).backward() if losses else loss.backward()
        model.zero_grad(set_to_none=True)

    model.train()
    folder = out_dir / "profiles" / f"{run.variant}-seed{run.seed}"
    paths = profiling.profile_steps(step, steps=run.profile["steps"], out_dir=folder, wait=run.profile["wait"],
                                    warmup=run.profile["warmup"])
    flops_step = profiling.flops_of(step)
    efficiency["flops_per_step"] = flops_step
    steps_per_s = efficiency["samples_per_s"] / cfg.batch_size
    util, estimated = profiling.mfu(flops_step * steps_per_s, device)
    if util is not None:
        efficiency["mfu"] = util
        efficiency["mfu_estimated"] = float(estimated)
    return paths


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
