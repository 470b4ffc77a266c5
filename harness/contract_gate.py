"""The contract gate: before any training, every mixer of a suite is probed for the leaks its task
would turn into a published number (a causal leak on a causal task, a padding leak where the task
pads), at the suite's sequence length and model width, with ``harness.testing.leak_probes``.

``harness validate`` and ``harness run`` refuse a mixer that fails, naming the property and the
measured leak; ``--no-contract`` skips the gate (the runs are then tagged as unchecked).
"""
from __future__ import annotations

import json
from typing import Any

from harness.suite import Suite


def _probe_key(mixer: str, options: dict[str, Any], dim: int, heads: int) -> str:
    return json.dumps([mixer, options, dim, heads], sort_keys=True, default=str)


def gate_problems(suite: Suite, task: Any, task_spec: Any, plans: dict[str, Any]) -> list[str]:
    """One line per variant whose mixer leaks on this task; [] when the task needs no probe."""
    from harness.testing import leak_probes

    causal = bool(task.meta.causal or task_spec.causal)
    padding = bool(task_spec.needs_padding)
    length = int(task.meta.max_len or 0)
    if not (causal or padding) or length < 2:
        return []
    problems: list[str] = []
    probed: dict[str, Any] = {}
    for name, plan in plans.items():
        v = suite.variants[name]
        dim, heads = int(plan.model_config.get("dim", 32)), int(plan.model_config.get("heads", 4))
        key = _probe_key(v.mixer, v.options, dim, heads)
        if key not in probed:
            probed[key] = leak_probes(v.mixer, length=length, causal=causal, padding=padding, dim=dim, heads=heads,
                                      **v.options)
        for failure in probed[key].failures:
            problems.append(f"variants.{name}.mixer: {v.mixer!r} fails the mixer contract at T={length}: "
                            f"{failure.title}: {failure.detail} (measured {failure.measured:.3e}, limit "
                            f"{failure.threshold}); a number it produced would not be honest. Fix the mixer "
                            f"(`harness check {v.mixer}` shows every property), or pass --no-contract to run anyway")
    return problems
