"""Final metrics of a run and of its re-run: identical where the run was deterministic (CPU, or
torch's deterministic algorithms), else equal within ``atol + rtol * |recorded|``."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

DEFAULT_RTOL = 1e-2
DEFAULT_ATOL = 1e-3


@dataclass(frozen=True)
class MetricCheck:
    name: str
    recorded: float
    now: float
    ok: bool


def exact_expected(manifest: dict[str, Any]) -> bool:
    """A CPU run at a fixed thread count, or any run with deterministic algorithms on, re-runs
    bit for bit on the same versions."""
    return (manifest.get("device", {}).get("type") == "cpu"
            or bool(manifest.get("determinism", {}).get("deterministic_algorithms")))


def compare(recorded: dict[str, float], now: dict[str, float], *, exact: bool, rtol: float = DEFAULT_RTOL,
            atol: float = DEFAULT_ATOL) -> list[MetricCheck]:
    """Every result metric (``<split>/<name>``) the re-run reports that the original recorded too
    (a tuning trial recorded no test metrics), under MLflow's names on both sides."""
    from harness.tracking.schema import metric_key

    checks = []
    for name in sorted(now):
        key = metric_key(name)
        if "/" not in name or key not in recorded:
            continue
        a, b = float(recorded[key]), float(now[name])
        if exact:
            ok = a == b or (math.isnan(a) and math.isnan(b))
        else:
            ok = math.isclose(b, a, rel_tol=rtol, abs_tol=atol)
        checks.append(MetricCheck(key, a, b, ok))
    return checks
