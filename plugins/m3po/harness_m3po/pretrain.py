"""The shared starting point: an ``lm`` trained on ``arith`` traces ONCE per configuration.

Every variant and seed of a suite starts GRPO from the same weights (the comparison is between
gates, not pretraining runs), so the supervised phase runs once and is cached on disk:

    <cache>/<key>.pt     the lm's state dict (loaded with weights_only=True)
    <cache>/<key>.json   what it was trained on, its greedy validation figures, seconds taken

``<cache>``: the task option ``cache_dir``, else ``$HARNESS_M3PO_CACHE``, else
``~/.cache/harness/m3po``. ``<key>``: a hash of everything the weights depend on: the data
(``ops``, vocabulary), the pretraining settings (steps, batch, lr, seed), the lm's architecture
(dim, depth, heads, mlp_ratio, mixer, max_len) and ``FORMAT`` (bumped when this code changes what
it trains). Delete the folder to pretrain again. Pretraining runs under ``torch.random.fork_rng``
with its own seed, so the run that happens to pretrain continues with the same random state as
one that loads the cache.

Training: next-token cross-entropy on the completion tokens only, AdamW (weight decay 0.01),
linear warmup over 10% then cosine, gradient clipping at 1, fresh seeded examples every step.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

FORMAT = 1
ENV = "HARNESS_M3PO_CACHE"


def default_cache_dir() -> Path:
    return Path(os.environ.get(ENV) or Path.home() / ".cache" / "harness" / "m3po").expanduser()


def checkpoint_key(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps({"format": FORMAT, **config}, sort_keys=True, default=str).encode()
                          ).hexdigest()[:16]


def pretrain_lm(task: Any, policy: Any) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Train a fresh lm of the policy's architecture on the task's traces; (state, figures)."""
    from harness.nn.lm import build_lm
    from harness_m3po.policy import M3POPolicy

    cfg = task.pretrain
    device = next(policy.parameters()).device
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg["seed"])
        lm = build_lm(task.meta, mixer=policy.mixer, mixer_options=policy.mixer_options,
                      **policy.cfg.lm_config()).to(device)
        opt = torch.optim.AdamW(lm.parameters(), lr=cfg["lr"], weight_decay=0.01)
        steps, warm = cfg["steps"], max(1, cfg["steps"] // 10)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, 0.5 * (
            1 + math.cos(math.pi * min(1.0, (s - warm) / max(1, steps - warm))))))
        data, P = task.traces(steps * cfg["batch"], seed=10_000 + cfg["seed"])     # (S B, P + C)
        lm.train()
        for step in range(steps):
            seq = data[step * cfg["batch"]:(step + 1) * cfg["batch"]].to(device)     # (B, P + C)
            logits = lm(seq[:, :-1])[:, P - 1:]                                      # (B, C, V)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), seq[:, P:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
            opt.step()
            sched.step()
        seconds = time.perf_counter() - start
        state = {k: v.detach().cpu().clone() for k, v in lm.state_dict().items()}
        probe = M3POPolicy(task.meta, policy.cfg, policy.mixer, policy.mixer_options).to(device)
        probe.lm.load_state_dict(state)
        prompts, answers = task.splits()["val"]
        scores = task.greedy_scores(probe.eval(), prompts.to(device), answers)
    figures = {"seconds": seconds, "final_loss": float(loss.item()) if steps else float("nan"),
               "val_exact_match": scores["exact"].float().mean().item(),
               "val_answer_format": scores["format"].float().mean().item(),
               "val_trace_match": scores["trace"].float().mean().item()}
    return state, figures


class PretrainedCache:
    """The pretrained lm per architecture: in memory after the first use, on disk across runs."""

    def __init__(self, task: Any, cache_dir: Path | None = None):
        self.task, self.dir = task, cache_dir or default_cache_dir()
        self.states: dict[str, dict[str, torch.Tensor]] = {}

    def config(self, policy: Any) -> dict[str, Any]:
        from harness_m3po.arith import VOCAB

        return {"task": {"ops": self.task.ops, "vocab": VOCAB}, "pretrain": self.task.pretrain,
                "lm": policy.architecture()}

    def path(self, policy: Any) -> Path:
        return self.dir / f"{checkpoint_key(self.config(policy))}.pt"

    def state_for(self, policy: Any) -> dict[str, torch.Tensor]:
        path = self.path(policy)
        key = path.stem
        if key not in self.states:
            if path.is_file():
                self.states[key] = torch.load(path, map_location="cpu", weights_only=True)
            else:
                state, figures = pretrain_lm(self.task, policy)
                self._save(path, state, {**self.config(policy), **figures})
                self.states[key] = state
        return self.states[key]

    def _save(self, path: Path, state: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".pt.part")
        torch.save(state, tmp)
        tmp.replace(path)  # a crash mid-write leaves no half checkpoint under the real name
        path.with_suffix(".json").write_text(json.dumps(info, indent=2, default=str))
