"""One run: seed, build the model, count it, train it, profile it, evaluate it -> RunResult.

The driver (``harness.runner``) and every executor (``harness.executors``), and tuning trials,
call ``execute_run``; ``error_reason`` is the one line a failed run records.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.plan import Plan
from harness.specs import Run, RunResult
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
