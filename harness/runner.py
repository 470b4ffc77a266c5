"""Execute a suite: variants x seeds, budget-matched, failures recorded, finished runs skipped.

The output folder keeps ``runs.jsonl`` (one RunResult per line, the later line wins) and
``suite.json``; a re-run skips every run whose config hash already finished there.
"""
from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path
from typing import Any

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
    """Build, count, train and evaluate one run. Exceptions propagate to the caller."""

    from harness.budget import count_params, flops_per_token
    from harness.devices import resolve_device
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
    example = task.splits()["val"][0][:2]
    tokens = example.shape[0] * (model.grid[0] * model.grid[1] if hasattr(model, "grid") else example.shape[1])
    efficiency: dict[str, float] = {
        "params": counts.total, "non_embedding_params": counts.non_embedding,
        "flops_per_token": flops_per_token(model.eval(), example, tokens),
    }
    if plan.target is not None:
        efficiency.update(target_params=plan.target, param_gap=plan.gap)
    with PeakMemory(device) as memory:
        outcome = train(model, task, cfg, seed=run.seed,
                        on_metrics=lambda metrics, step: hook.metrics_logged(run=run, metrics=metrics, step=step))
    efficiency.update(samples_per_s=outcome.samples_per_s, train_time_s=outcome.train_time_s,
                      loop_overhead=outcome.loop_overhead, peak_mem_mb=memory.peak_mb)
    tokens_per_sample = tokens // example.shape[0]
    efficiency["tokens_per_s"] = outcome.samples_per_s * tokens_per_sample
    artifacts = {}
    if run.profile:
        artifacts = _profile(run, model, task, cfg, device, efficiency, tokens_per_sample, out_dir)
    return RunResult(run, "finished", metrics=outcome.metrics, efficiency=efficiency, history=outcome.history,
                     artifacts=artifacts)


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


def run_suite(suite: Suite, *, variants: list[str] | None = None, console: Any = None) -> list[RunResult]:
    """Run every (variant, seed); returns results in plan order. KeyboardInterrupt marks the
    current run killed, reports what finished, and re-raises."""
    from rich.console import Console

    from harness.plugins import get_plugin_manager

    console = console or Console()
    hook = get_plugin_manager().hook
    _check_variants(suite, variants)
    plans = plan_suite(suite)
    task = build_task(suite)
    runs = suite.runs(variants)
    out_dir = suite.output_dir
    log = RunLog(out_dir)
    _write_suite_info(suite, out_dir)
    done = log.finished()
    hook.suite_started(suite=suite, runs=runs, output_dir=str(out_dir))
    results: list[RunResult] = []
    progress = _SuiteProgress(suite, len(runs), console)
    current: tuple[Run, str | None] | None = None
    try:
        with progress.bars:
            for run in runs:
                if run.config_hash in done:
                    result = _reuse(run, done[run.config_hash], console)
                    hook.run_finished(run=run, result=result)
                else:
                    current = (run, _tracker_id(hook.run_started(run=run)))
                    result = _run_one(run, plans[run.variant], task, hook, progress, console, out_dir)
                    result.run_id = current[1]
                    hook.run_finished(run=run, result=result)
                    log.append(result)
                    current = None
                results.append(result)
                progress.bars.advance(progress.overall)
    except KeyboardInterrupt:
        if current is not None:
            killed = RunResult(current[0], "killed", error="interrupted by the user (Ctrl-C)", run_id=current[1])
            hook.run_finished(run=current[0], result=killed)
            log.append(killed)
            results.append(killed)
        hook.suite_finished(suite=suite, results=results, output_dir=str(out_dir))
        raise
    hook.suite_finished(suite=suite, results=results, output_dir=str(out_dir))
    return results


def _reuse(run: Run, prev: RunResult, console: Any) -> RunResult:
    console.print(f"[dim]skip {run.key}: finished before with the same config[/dim]")
    return RunResult(run, "skipped", metrics=prev.metrics, efficiency=prev.efficiency, history=prev.history,
                     run_id=prev.run_id)


def _run_one(run: Run, plan: Plan, task: Any, hook: Any, progress: _SuiteProgress, console: Any,
             out_dir: Path) -> RunResult:
    bars = progress.bars
    bar = bars.add_task(f"  {run.key}", total=run.train["steps"])

    class _Hook:  # forwards metrics and advances this run's bar
        def metrics_logged(self, run: Run, metrics: dict[str, float], step: int) -> None:
            bars.update(bar, completed=step)
            hook.metrics_logged(run=run, metrics=metrics, step=step)

    start = time.perf_counter()
    try:
        result = execute_run(run, plan, task, _Hook(), out_dir)
    except KeyboardInterrupt:
        bars.remove_task(bar)
        raise
    except Exception as exc:
        reason = error_reason(exc)
        console.print(f"[red]run {run.key} failed: {reason}[/red]")
        if "HARNESS_DEBUG" in os.environ:  # full traceback on request
            console.print(traceback.format_exc())
        result = RunResult(run, "failed", error=reason)
    bars.remove_task(bar)
    if result.status == "finished":
        console.print(f"{run.key}: {run.metric} = {result.metrics.get(run.metric, float('nan')):.4f} "
                      f"({time.perf_counter() - start:.0f} s)")
    return result
