"""harness.report.stats against values worked out by hand (no pandas, no data frames)."""
from __future__ import annotations

import math
import warnings

import pytest

pytest.importorskip("scipy")

from harness.report.stats import ci95_half_width, holm_adjust, is_finite, mean_std, paired_t_test  # noqa: E402

T975_DF2 = 4.302652729749464      # Student-t 0.975 quantile, 2 degrees of freedom (tables: 4.303)
T975_DF3 = 3.182446305284263      # 3 degrees of freedom (tables: 3.182)


def test_mean_std_by_hand():
    # 0.80, 0.82, 0.84: mean 0.82; squared deviations 0.0004 + 0 + 0.0004 over n - 1 = 2 -> std 0.02
    mean, std = mean_std([0.80, 0.82, 0.84])
    assert mean == pytest.approx(0.82) and std == pytest.approx(0.02)
    mean, std = mean_std([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])   # sum of squares 32 over 7
    assert mean == 5.0 and std == pytest.approx(math.sqrt(32 / 7))
    mean, std = mean_std([0.7])
    assert mean == 0.7 and math.isnan(std)
    mean, std = mean_std([])
    assert math.isnan(mean) and math.isnan(std)


def test_ci95_half_width_by_hand():
    # values 1, 2, 3: std (ddof=1) = 1, so the half-width is t(0.975, 2) / sqrt(3)
    assert ci95_half_width(1.0, 3) == pytest.approx(T975_DF2 / math.sqrt(3))
    assert ci95_half_width(1.0, 3) == pytest.approx(2.4841, abs=1e-4)
    # it scales with std and shrinks with n
    assert ci95_half_width(2.0, 4) == pytest.approx(T975_DF3 * 2.0 / 2.0)
    assert ci95_half_width(0.0, 5) == 0.0


def test_ci95_half_width_undefined_is_nan():
    for std, n in ((1.0, 1), (1.0, 0), (math.nan, 3), (math.inf, 3)):
        assert math.isnan(ci95_half_width(std, n))


def test_paired_t_test_by_hand():
    # differences on the shared seeds 0, 1, 2: 0.03, 0.02, 0.04 -> mean 0.03, std 0.01,
    # t = 0.03 / (0.01 / sqrt 3) = 5.196, df = 2; two-sided p = 2 * (1 - F(t)), and for df = 2
    # the t distribution's CDF has a closed form, F(t) = 1/2 + t / (2 sqrt(t^2 + 2))
    values = {0: 0.83, 1: 0.84, 2: 0.88, 7: 0.99}          # seed 7: not shared, left out
    reference = {0: 0.80, 1: 0.82, 2: 0.84, 5: 0.10}
    n, delta, p = paired_t_test(values, reference)
    t = 0.03 / (0.01 / math.sqrt(3))
    assert n == 3
    assert delta == pytest.approx(0.03)
    assert p == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-6)
    assert p == pytest.approx(0.0351, abs=1e-4)


def test_paired_t_test_sign_follows_values_minus_reference():
    n, delta, p = paired_t_test({0: 1.0, 1: 2.0, 2: 2.5}, {0: 2.0, 1: 2.5, 2: 4.0})
    # differences -1, -0.5, -1.5: mean -1, std 0.5, t = -1 / (0.5 / sqrt 3) = -3.464
    t = 1.0 / (0.5 / math.sqrt(3))
    assert (n, delta) == (3, pytest.approx(-1.0))
    assert p == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-6)


def test_paired_t_test_degenerate_cases_are_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # no shared seed: nothing to pair
        n, delta, p = paired_t_test({0: 1.0}, {1: 1.0})
        assert n == 0 and math.isnan(delta) and math.isnan(p)
        # one shared seed: a delta, no test
        n, delta, p = paired_t_test({0: 0.9, 1: 0.8}, {0: 0.7})
        assert n == 1 and delta == pytest.approx(0.2) and math.isnan(p)
        # constant differences (up to rounding): no variance, t undefined
        n, delta, p = paired_t_test({0: 0.85, 1: 0.87, 2: 0.91}, {0: 0.80, 1: 0.82, 2: 0.86})
        assert n == 3 and delta == pytest.approx(0.05) and math.isnan(p)
        # identical values
        n, delta, p = paired_t_test({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})
        assert n == 2 and delta == 0.0 and math.isnan(p)


def test_is_finite():
    assert is_finite(1) and is_finite(0.0) and is_finite("2.5")
    for value in (None, math.nan, math.inf, -math.inf, "x", object()):
        assert not is_finite(value)


def test_import_needs_no_pandas():
    import subprocess
    import sys

    code = "import sys, harness.report.stats; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_holm_adjust_by_hand():
    # m = 4 finite p-values, sorted: 0.005, 0.01, 0.03, 0.04
    # -> 4 * 0.005 = 0.02; 3 * 0.01 = 0.03; 2 * 0.03 = 0.06; 1 * 0.04 = 0.04, kept at 0.06 (running max)
    adjusted = holm_adjust([0.01, 0.04, 0.03, math.nan, 0.005])
    assert adjusted[:3] == [pytest.approx(0.03), pytest.approx(0.06), pytest.approx(0.06)]
    assert math.isnan(adjusted[3]) and adjusted[4] == pytest.approx(0.02)
    # capped at 1: 2 * 0.6 = 1.2 -> 1; then max(1, 0.7) = 1
    assert holm_adjust([0.7, 0.6]) == [1.0, 1.0]
    # one test: nothing to adjust; none: nothing at all
    assert holm_adjust([0.2]) == [pytest.approx(0.2)]
    assert holm_adjust([]) == []
    assert all(math.isnan(p) for p in holm_adjust([math.nan, None]))
