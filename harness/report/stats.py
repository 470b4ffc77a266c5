"""The statistics of a report, on plain numbers (numpy and scipy only).

- ``mean_std``: the mean and the sample standard deviation (ddof=1);
- ``ci95_half_width``: the Student-t 95% confidence interval half-width of a mean,
  ``t(0.975, n-1) * std / sqrt(n)``;
- ``paired_t_test``: the mean paired difference and the two-sided paired t-test p-value of two
  variants on the seeds both finished;
- ``holm_adjust``: Holm-Bonferroni adjusted p-values of a family of tests (the variants of one
  table, each compared with the reference).

Undefined statistics (one seed, no shared seed, differences without variance) are NaN, never a
warning.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence


def is_finite(value: Any) -> bool:
    """True for a number (or numeric string) that is neither None, NaN nor infinite."""
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, std with ddof=1) of ``values``: the mean is NaN without values, the std with fewer than 2."""
    import numpy as np

    array = np.asarray(values, dtype=float)
    mean = float(array.mean()) if len(array) else math.nan
    std = float(array.std(ddof=1)) if len(array) >= 2 else math.nan
    return mean, std


def ci95_half_width(std: float, n: int) -> float:
    """Student-t 95% CI half-width of the mean of ``n`` values with sample std ``std`` (NaN if n < 2)."""
    from scipy import stats

    if n < 2 or not math.isfinite(std):
        return math.nan
    return float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))


def paired_t_test(values: Mapping[int, float], reference: Mapping[int, float]) -> tuple[int, float, float]:
    """(n shared seeds, mean of ``values - reference`` over them, two-sided paired t-test p-value).

    Both mappings are seed -> value. The delta is NaN without a shared seed; the p-value is NaN
    with fewer than 2 shared seeds or when the differences are constant."""
    import numpy as np
    from scipy import stats

    shared = sorted(set(values) & set(reference))
    if not shared:
        return 0, math.nan, math.nan
    a = np.array([values[s] for s in shared], dtype=float)
    b = np.array([reference[s] for s in shared], dtype=float)
    diffs = a - b
    delta = float(diffs.mean())
    if len(shared) < 2:
        return len(shared), delta, math.nan
    scale = max(1.0, float(np.max(np.abs(a))), float(np.max(np.abs(b))))
    if float(np.ptp(diffs)) <= 1e-12 * scale:   # no variance (up to rounding): t is undefined
        return len(shared), delta, math.nan
    p = float(stats.ttest_rel(a, b).pvalue)
    return len(shared), delta, (p if math.isfinite(p) else math.nan)


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given; NaN stays NaN and is not counted.

    With the m finite p-values sorted ascending, p_(1) <= ... <= p_(m), the adjusted value of the
    i-th is max over j <= i of min(1, (m - j + 1) * p_(j)): the running maximum keeps the order of
    the raw p-values, so a test is never declared significant after one with a smaller p was not."""
    finite = sorted((float(p), i) for i, p in enumerate(p_values) if is_finite(p))
    m = len(finite)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(finite):      # rank = j - 1
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
