"""Execute a suite: variants x seeds, budget-matched, failures recorded, finished runs skipped.

The output folder keeps ``runs.jsonl`` (one RunResult per line, the later line wins) and
``suite.json``; a re-run skips every run whose config hash already finished there.
"""
from __future__ import annotations

import json
import math
import os
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.registry import metric_higher_is_better
from harness.specs import Run, RunResult
from harness.suite import Suite
from harness.validate import Plan, build_task, check_suite


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


class RunLog:
    """Append-only ``runs.jsonl``; each finished run is written the moment it ends, so an
    interrupted suite loses nothing that finished."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / "runs.jsonl"
        out_dir.mkdir(parents=True, exist_ok=True)

    def finished(self) -> dict[str, dict[str, Any]]:
        """config_hash -> the last finished record."""
        done: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return done
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                # A line cut short by a crash; earlier and later runs still count.
                continue
            if rec.get("status") in ("finished", "skipped"):
                done[rec["run"]["config_hash"]] = rec
        return done

    def append(self, result: RunResult) -> None:
        line = json.dumps(_jsonable(asdict(result))) + "\n"
        if self.path.exists() and self.path.stat().st_size:
            with self.path.open("rb") as fh:
                fh.seek(-1, 2)
                if fh.read(1) != b"\n":  # a line cut short by a crash must not swallow this one
                    line = "\n" + line
        with self.path.open("a") as fh:
            fh.write(line)


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _error_reason(exc: BaseException) -> str:
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
    from harness.profiling import PeakMemory
    from harness.registry import model as model_spec
    from harness.train import TrainConfig, resolve_device, train

    _seed_everything(run.seed)
    build = model_spec(run.model).load()
    model = build(task.meta, mixer=run.mixer, mixer_options=run.mixer_options, **plan.model_config)
    counts = count_params(model)
    cfg = TrainConfig(**run.train)
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


def run_suite(suite: Suite, *, variants: list[str] | None = None, console: Any = None) -> list[RunResult]:
    """Run every (variant, seed); returns results in plan order. KeyboardInterrupt marks the
    current run killed, reports what finished, and re-raises."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from harness.plugins import get_plugin_manager

    console = console or Console()
    hook = get_plugin_manager().hook
    if variants:
        unknown = [v for v in variants if v not in suite.variants]
        if unknown:
            from harness.registry import suggest
            from harness.suite import SuiteError

            raise SuiteError([f"-v {u}: no such variant.{suggest(u, list(suite.variants))}" for u in unknown])
    plans = check_suite(suite)
    task = build_task(suite)
    runs = suite.runs(variants)
    out_dir = suite.output_dir
    log = RunLog(out_dir)
    (out_dir / "suite.json").write_text(json.dumps({
        "name": suite.name, "metric": suite.suite.metric, "reference": suite.reference,
        "higher_is_better": metric_higher_is_better(suite.suite.metric), "variants": list(suite.variants),
        "config": suite.model_dump(),  # the resolved suite: extends and --set applied
    }, indent=2, default=str))
    done = log.finished()
    hook.suite_started(suite=suite, runs=runs, output_dir=str(out_dir))
    results: list[RunResult] = []
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=False)
    current: Run | None = None
    try:
        with progress:
            overall = progress.add_task(f"suite {suite.name}", total=len(runs))
            for run in runs:
                current = run
                if run.config_hash in done:
                    prev = done[run.config_hash]
                    result = RunResult(run, "skipped", metrics=prev.get("metrics", {}),
                                       efficiency=prev.get("efficiency", {}), history=prev.get("history", []),
                                       run_id=prev.get("run_id"))
                    console.print(f"[dim]skip {run.key}: finished before with the same config[/dim]")
                    hook.run_finished(run=run, result=result)
                else:
                    result = _run_one(run, plans[run.variant], task, hook, progress, console, out_dir)
                    hook.run_finished(run=run, result=result)  # first: the tracker sets result.run_id
                    log.append(result)
                results.append(result)
                progress.advance(overall)
                current = None
    except KeyboardInterrupt:
        if current is not None:
            killed = RunResult(current, "killed", error="interrupted by the user (Ctrl-C)")
            hook.run_finished(run=current, result=killed)
            log.append(killed)
            results.append(killed)
        hook.suite_finished(suite=suite, results=results, output_dir=str(out_dir))
        raise
    hook.suite_finished(suite=suite, results=results, output_dir=str(out_dir))
    return results


def _run_one(run: Run, plan: Plan, task: Any, hook: Any, progress: Any, console: Any, out_dir: Path) -> RunResult:
    hook.run_started(run=run)
    bar = progress.add_task(f"  {run.key}", total=run.train["steps"])

    class _Hook:  # forwards metrics and advances this run's bar
        def metrics_logged(self, run: Run, metrics: dict[str, float], step: int) -> None:
            progress.update(bar, completed=step)
            hook.metrics_logged(run=run, metrics=metrics, step=step)

    start = time.perf_counter()
    try:
        result = execute_run(run, plan, task, _Hook(), out_dir)
    except KeyboardInterrupt:
        progress.remove_task(bar)
        raise
    except Exception as exc:
        reason = _error_reason(exc)
        console.print(f"[red]run {run.key} failed: {reason}[/red]")
        if "HARNESS_DEBUG" in os.environ:  # full traceback on request
            console.print(traceback.format_exc())
        result = RunResult(run, "failed", error=reason)
    progress.remove_task(bar)
    if result.status == "finished":
        console.print(f"{run.key}: {run.metric} = {result.metrics.get(run.metric, float('nan')):.4f} "
                      f"({time.perf_counter() - start:.0f} s)")
    return result
