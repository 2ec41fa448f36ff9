"""The shared statistics: one 95% t-interval and one log-log fit for every consumer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fobbench.stats import fit_slope, t_half_width


def test_t_half_width_is_the_students_t_interval() -> None:
    values = [0.5, 0.7, 0.6, 0.9]
    # t_{0.975}(3) = 3.182446305284263 (tables); s = 0.1707825...
    expected = 3.182446305284263 * np.std(values, ddof=1) / math.sqrt(4)
    assert t_half_width(values) == pytest.approx(expected, rel=1e-12)
    assert t_half_width([0.3]) == 0.0 and t_half_width([]) == 0.0
    assert t_half_width([2.0, 2.0, 2.0]) == 0.0


def test_fit_slope_drops_non_positive_points_and_needs_three() -> None:
    x = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    fit = fit_slope(x, 5 * x**-0.5)
    assert fit.slope == pytest.approx(-0.5, abs=1e-12) and fit.r_squared == pytest.approx(1.0)
    assert fit_slope([1.0, 2.0, 3.0], [1.0, 0.0, -1.0]).points == 1
    assert math.isnan(fit_slope([1.0, 2.0], [1.0, 2.0]).slope)
