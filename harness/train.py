"""The training loop: AdamW, linear warmup then cosine, clipping, periodic validation, final test.

Auxiliary losses reported by modules (harness.nn.aux) join the objective; their statistics are
logged. Modules that request per-example task losses (``harness.nn.aux.request_example_losses``,
e.g. MAW's supervised and GRPO routers) get them after the forward, before backward, from no-grad
probe forwards of the same batch (``per_example_loss`` below; the probes count as model-step time).
The loop's own work (batches, logging) is timed apart from the model step so the overhead can be
reported. With ``train.compile`` the model runs through ``torch.compile`` (``harness.compiling``):
a training step during which anything compiled counts as compile time (``compile_seconds``), never
as step time or throughput; a model that fails to compile falls back to eager with a warning, and
the reason is kept (``TrainOutcome.compile_fallback``).
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from harness.devices import available_cores, resolve_device
from harness.nn.aux import (answer_example_loss_requests, collect_aux, mean_stats_by_name,
                            pop_example_loss_requests)
from harness.suite import TrainSection

WARMUP_STEPS = 3
ADAM_BETAS = (0.9, 0.999)


class DivergedError(RuntimeError):
    pass


@dataclass
class TrainOutcome:
    metrics: dict[str, float]                         # final "val/…" and "test/…"
    history: list[dict[str, float]] = field(default_factory=list)
    samples_per_s: float = 0.0
    train_time_s: float = 0.0
    loop_overhead: float = 0.0                        # share of a training iteration outside the model step
    decayed_params: int = 0                           # scalar parameters under weight decay
    compiled: bool = False                            # train.compile asked and the model ran compiled
    compile_seconds: float = 0.0                      # training steps that compiled: apart from step time
    compile_fallback: str = ""                        # why a train.compile model ran eager instead


def autocast_for(device: torch.device, amp: bool) -> Callable[[], Any]:
    if device.type == "cuda" and amp:
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def effective_train(train: dict[str, Any]) -> dict[str, Any]:
    """A run's ``train`` settings as it applies them, for logs: ``amp`` only where autocast acts
    (CUDA; False on CPU), ``threads`` resolved to a count (None = ``available_cores()``)."""
    device = train.get("device", "auto")
    on_cuda = device == "cuda" or (device in (None, "auto") and torch.cuda.is_available())
    return {**train, "amp": bool(train.get("amp", True)) and on_cuda,
            "threads": train.get("threads") or available_cores()}


def lr_lambda(steps: int, warmup: float) -> Callable[[int], float]:
    warm = max(1, int(round(steps * warmup)))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


SMALL_PARAM_NUMEL = 64   # at most this many elements: a small mixing matrix (2x2 ... 8x8), never decayed


def no_decay_ids(model: nn.Module) -> set[int]:
    """The parameters that modules declare no-decay, by ``id``.

    The declaration is timm's convention: a module method ``no_weight_decay()`` returning names of
    the module's own parameters, as ``named_parameters()`` of that module spells them (``"qk_scale"``,
    ``"gate.weight"``). Every module in the model may declare, not only the top one, so a mixer
    marks its own gains wherever a backbone places it. A name that is not a parameter of the module
    is an error (a typo must not silently decay a gain).
    """
    ids: set[int] = set()
    for module in model.modules():
        declare = getattr(module, "no_weight_decay", None)
        if not callable(declare):
            continue
        own = dict(module.named_parameters())
        for name in declare():
            if name not in own:
                raise ValueError(f"{type(module).__name__}.no_weight_decay() names {name!r}, which is not one of "
                                 f"its parameters ({', '.join(own) or 'none'})")
            ids.add(id(own[name]))
    return ids


def decayed_by_default(p: torch.Tensor) -> bool:
    """The default rule: decay a weight matrix, nothing else.

    A parameter is a weight matrix when, after dropping size-1 axes, it still has >= 2 axes AND
    more than ``SMALL_PARAM_NUMEL`` elements, and it is not flagged ``_harness_embedding``. So
    biases, norms, gains and per-head scales shaped (H, 1, 1) or (1, 1, D), the cls token,
    learned positions and small mixing matrices such as an identity-initialised 2x2 keep weight
    decay off; a (32, 32) projection, as in suites/smoke.toml, has 1,024 elements.
    """
    axes = sum(1 for size in p.shape if size > 1)
    return axes >= 2 and p.numel() > SMALL_PARAM_NUMEL and not getattr(p, "_harness_embedding", False)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on weight matrices only (``decayed_by_default``), minus every
    parameter a module declares no-decay through ``no_weight_decay()`` (``no_decay_ids``).

    Decay pulls a parameter to 0: right for a projection, wrong for a gain, scale or mixer that
    starts at 1 or at the identity, which the softmax baseline (norms and biases only) never has.
    A mixer whose gains the default rule does not catch declares them, e.g.::

        def no_weight_decay(self) -> set[str]:
            return {"qk_scale", "v_scale"}
    """
    declared = no_decay_ids(model)
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if decayed_by_default(p) and id(p) not in declared else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def decayed_count(groups: list[dict[str, Any]]) -> int:
    """Scalar parameters under weight decay (a group with weight_decay > 0)."""
    return sum(p.numel() for g in groups if g["weight_decay"] > 0 for p in g["params"])


def _to(batch: tuple[torch.Tensor, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(device, non_blocking=True) for t in batch)


class _Timer:
    """Model-step time and whole-iteration time over the measured steps (after warm-up)."""

    def __init__(self) -> None:
        self.step_time = self.loop_time = 0.0
        self.samples = 0

    def add(self, step: int, t_iter: float, t0: float, t1: float, samples: int) -> None:
        if step > WARMUP_STEPS:  # the first steps pay for allocator and kernel warm-up
            self.step_time += t1 - t0
            self.loop_time += time.perf_counter() - t_iter
            self.samples += samples

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.step_time if self.step_time > 0 else 0.0

    @property
    def overhead(self) -> float:
        return (self.loop_time - self.step_time) / self.loop_time if self.loop_time > 0 else 0.0


def _train_metrics(loss_sum: torch.Tensor, n: int, step: int, lr: float, aux_losses: dict[str, torch.Tensor],
                   stats: Any) -> dict[str, float]:
    """The logged training figures; the one ``.item()`` sync of a logging step."""
    mean_loss = (loss_sum / n).item()
    if not math.isfinite(mean_loss):
        raise DivergedError(f"training loss became {mean_loss} by step {step}")
    metrics = {"train/loss": mean_loss, "train/lr": lr}
    metrics.update({f"train/aux/{k}": v.item() for k, v in aux_losses.items()})
    metrics.update({f"train/stat/{k}": v.item() for k, v in mean_stats_by_name(stats).items()})
    return metrics


_warned_no_per_example: set[str] = set()


def per_example_loss(task: Any, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The task loss of each example of ``batch``, (B,): the task's optional
    ``per_example_loss(model, batch)``; for a task without one, its batch ``loss`` repeated B times
    (B = ``len(batch[0])``), with one warning per task class: every example then gets the same value."""
    method = getattr(task, "per_example_loss", None)
    if callable(method):
        return method(model, batch)
    name = type(task).__name__
    if name not in _warned_no_per_example:
        _warned_no_per_example.add(name)
        warnings.warn(f"task {name} has no per_example_loss(model, batch); modules that asked for per-example "
                      f"losses get its batch loss for every example", stacklevel=2)
    return task.loss(model, batch).detach().expand(len(batch[0]))


class _Compiled:
    """``train.compile``: the model the loop calls (compiled, or eager after a fallback), and the
    time of the training steps that compiled."""

    def __init__(self, model: nn.Module, wanted: bool):
        self.eager, self.seconds, self.fallback = model, 0.0, ""
        self.model: nn.Module = model
        if wanted:
            from harness.compiling import compile_module

            try:
                self.model = compile_module(model)
            except Exception as exc:  # noqa: BLE001 - any failure: eager, with the reason
                self.fall_back(exc)

    @property
    def active(self) -> bool:
        return self.model is not self.eager

    def fall_back(self, exc: BaseException) -> None:
        from harness.compiling import describe_failure

        self.model, self.fallback = self.eager, describe_failure(exc)
        warnings.warn(f"train.compile: the model failed to compile and runs eager: {self.fallback}", stacklevel=3)

    def events(self) -> int:
        from harness.compiling import compile_events

        return compile_events() if self.active else 0


def train(model: nn.Module, task: Any, cfg: TrainSection, *, seed: int,
          on_metrics: Callable[[dict[str, float], int], None] | None = None) -> TrainOutcome:
    """Train ``model`` on ``task``; ``on_metrics(metrics, step)`` receives every logged dict."""
    device = resolve_device(cfg.device)
    model.to(device)
    autocast = autocast_for(device, cfg.amp)
    groups = param_groups(model, cfg.weight_decay)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=ADAM_BETAS)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.steps, cfg.warmup))
    batches = iter(task.batches("train", cfg.batch_size, seed=seed))
    history: list[dict[str, float]] = []
    emit = on_metrics or (lambda m, s: None)

    def log(metrics: dict[str, float], step: int) -> None:
        history.append({"step": step, **metrics})
        emit(metrics, step)

    net = _Compiled(model, bool(getattr(cfg, "compile", False)))

    def evaluate(split: str) -> dict[str, float]:
        model.eval()
        try:
            out = task.evaluate(net.model, task.batches(split, cfg.batch_size), device, autocast)
        except Exception as exc:  # noqa: BLE001
            if not net.active:
                raise
            net.fall_back(exc)
            collect_aux(model)
            out = task.evaluate(model, task.batches(split, cfg.batch_size), device, autocast)
        collect_aux(model)
        pop_example_loss_requests(model)  # evaluation answers none
        model.train()
        return {f"{split}/{k}": v for k, v in out.items()}

    model.train()
    timer = _Timer()
    loss_sum = torch.zeros((), device=device)
    start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        t_iter = time.perf_counter()
        batch = _to(next(batches), device)
        t0 = time.perf_counter()
        events = net.events()
        try:
            with autocast():
                loss = task.loss(net.model, batch)
        except Exception as exc:  # noqa: BLE001 - a compiler failure: eager from here on
            if not net.active:
                raise
            net.fall_back(exc)
            collect_aux(model)
            with autocast():
                loss = task.loss(model, batch)
        aux_losses, stats = collect_aux(model)
        requests = pop_example_loss_requests(model)
        if requests:  # probes without autograd; the modules report their losses on delivery

            def example_losses(batch: tuple[torch.Tensor, ...] = batch) -> torch.Tensor:
                with autocast():
                    return per_example_loss(task, model, batch)

            more_losses, more_stats = answer_example_loss_requests(model, requests, example_losses)
            aux_losses.update(more_losses)
            stats.update(more_stats)
        opt.zero_grad(set_to_none=True)
        try:
            (loss + sum(aux_losses.values()) if aux_losses else loss).backward()
        except Exception as exc:  # noqa: BLE001 - the compiled backward failed: redo the step eager
            if not net.active:
                raise
            net.fall_back(exc)
            opt.zero_grad(set_to_none=True)
            with autocast():
                loss = task.loss(model, batch)
            aux_losses, stats = collect_aux(model)
            pop_example_loss_requests(model)   # answered on the compiled pass already
            (loss + sum(aux_losses.values()) if aux_losses else loss).backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        loss_sum += loss.detach()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t1 = time.perf_counter()
        if step % cfg.log_every == 0 or step == cfg.steps:
            n = cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every
            log(_train_metrics(loss_sum, n, step, sched.get_last_lr()[0], aux_losses, stats), step)
            loss_sum.zero_()
        if net.active and net.events() != events:   # this step compiled: compile time, not step time
            net.seconds += t1 - t0
        else:
            timer.add(step, t_iter, t0, t1, len(batch[0]))
        if step % cfg.eval_every == 0 and step != cfg.steps:
            log(evaluate("val"), step)  # validation is work, not loop overhead: outside loop_time
    wall = time.perf_counter() - start
    final = {**evaluate("val"), **evaluate("test")}
    log(final, cfg.steps)
    return TrainOutcome(metrics=final, history=history, samples_per_s=timer.samples_per_s, train_time_s=wall,
                        loop_overhead=timer.overhead, decayed_params=decayed_count(groups), compiled=net.active,
                        compile_seconds=net.seconds, compile_fallback=net.fallback)
