"""The training loop: AdamW, linear warmup then cosine, clipping, periodic validation, final test.

Auxiliary losses reported by modules (harness.nn.aux) join the objective; their statistics are
logged. The loop's own work (batches, logging) is timed apart from the model step so the overhead
can be reported.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from harness.nn.aux import collect_aux, mean_stats_by_name


WARMUP_STEPS = 3


class DivergedError(RuntimeError):
    pass


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 128
    lr: float = 3e-3
    warmup: float = 0.1            # fraction of steps
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0         # 0 disables
    eval_every: int = 250
    log_every: int = 50
    device: str = "auto"           # auto | cpu | cuda
    amp: bool = True               # bf16 autocast on CUDA


@dataclass
class TrainOutcome:
    metrics: dict[str, float]                         # final "val/…" and "test/…"
    history: list[dict[str, float]] = field(default_factory=list)
    samples_per_s: float = 0.0
    train_time_s: float = 0.0
    loop_overhead: float = 0.0                        # share of a training iteration outside the model step


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def autocast_for(device: torch.device, amp: bool) -> Callable[[], Any]:
    if device.type == "cuda" and amp:
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def lr_lambda(steps: int, warmup: float) -> Callable[[int], float]:
    warm = max(1, int(round(steps * warmup)))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only: norms, biases, gains and positions keep weight decay off (nanoGPT)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 and not getattr(p, "_harness_embedding", False) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _to(batch: tuple[torch.Tensor, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(device, non_blocking=True) for t in batch)


def train(model: nn.Module, task: Any, cfg: TrainConfig, *, seed: int,
          on_metrics: Callable[[dict[str, float], int], None] | None = None,
          on_step: Callable[[int], None] | None = None,
          profiler: Any | None = None) -> TrainOutcome:
    """Train ``model`` on ``task``; ``on_metrics(metrics, step)`` receives every logged dict."""
    device = resolve_device(cfg.device)
    model.to(device)
    autocast = autocast_for(device, cfg.amp)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.steps, cfg.warmup))
    batches = iter(task.batches("train", cfg.batch_size, seed=seed))
    history: list[dict[str, float]] = []
    emit = on_metrics or (lambda m, s: None)

    def log(metrics: dict[str, float], step: int) -> None:
        history.append({"step": step, **metrics})
        emit(metrics, step)

    def evaluate(split: str) -> dict[str, float]:
        model.eval()
        out = task.evaluate(model, task.batches(split, cfg.batch_size), device, autocast)
        collect_aux(model)
        model.train()
        return {f"{split}/{k}": v for k, v in out.items()}

    model.train()
    step_time = loop_time = 0.0   # over measured steps: model step only / the whole iteration
    samples = 0
    loss_sum = torch.zeros((), device=device)
    start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        t_iter = time.perf_counter()
        batch = _to(next(batches), device)
        t0 = time.perf_counter()
        with autocast():
            loss = task.loss(model, batch)
        aux_losses, stats = collect_aux(model)
        objective = loss + sum(aux_losses.values()) if aux_losses else loss
        opt.zero_grad(set_to_none=True)
        objective.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        loss_sum += loss.detach()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t1 = time.perf_counter()
        if profiler is not None:
            profiler.step()
        if on_step is not None:
            on_step(step)
        if step % cfg.log_every == 0 or step == cfg.steps:
            n = cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every
            mean_loss = (loss_sum / n).item()
            loss_sum.zero_()
            if not math.isfinite(mean_loss):
                raise DivergedError(f"training loss became {mean_loss} by step {step}")
            metrics = {"train/loss": mean_loss, "train/lr": sched.get_last_lr()[0]}
            metrics.update({f"train/aux/{k}": v.item() for k, v in aux_losses.items()})
            metrics.update({f"train/stat/{k}": v.item() for k, v in mean_stats_by_name(stats).items()})
            log(metrics, step)
        if step > WARMUP_STEPS:  # the first steps pay for allocator and kernel warm-up
            step_time += t1 - t0
            loop_time += time.perf_counter() - t_iter
            samples += len(batch[0])
        if step % cfg.eval_every == 0 and step != cfg.steps:
            log(evaluate("val"), step)  # validation is work, not loop overhead: outside loop_time
    wall = time.perf_counter() - start
    final = {**evaluate("val"), **evaluate("test")}
    log(final, cfg.steps)
    return TrainOutcome(metrics=final, history=history,
                        samples_per_s=samples / step_time if step_time > 0 else 0.0, train_time_s=wall,
                        loop_overhead=(loop_time - step_time) / loop_time if loop_time > 0 else 0.0)
