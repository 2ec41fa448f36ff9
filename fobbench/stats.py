"""The statistics every benchmark shares: the 95% t-interval and log-log slope fits.

One implementation, so that an accuracy band in a figure, the ``eval_acc_ci95`` column of a
training run, the interval test of ``compare`` and the rate fits of ``gradcheck`` agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
"""Two-sided confidence level of every interval fobbench reports."""


def t_half_width(values: Sequence[float] | np.ndarray) -> float:
    """Half-width of the 95% Student-t interval of the mean of ``values``.

    t₀.₉₇₅(n − 1)·s/√n with s the sample standard deviation (ddof 1); 0.0 for fewer than
    two values (a single sample has no spread to report). Values are used as given: callers
    drop non-finite ones first where those can occur.
    """
    data = np.asarray(values, dtype=float)
    n = len(data)
    if n < 2:
        return 0.0
    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * data.std(ddof=1) / np.sqrt(n))


@dataclass(frozen=True)
class Fit:
    """A log-log least-squares fit ``log y = slope·log x + b`` with a 95% t-interval.

    Attributes:
        slope: fitted exponent.
        lo, hi: its 95% interval, slope ∓ t₀.₉₇₅(n − 2)·stderr.
        r_squared: coefficient of determination of the log-log fit.
        points: finite (x, y) pairs used.
    """

    slope: float
    lo: float
    hi: float
    r_squared: float
    points: int


def fit_slope(x: Sequence[float], y: Sequence[float]) -> Fit:
    """Fit the log-log slope of y against x (scipy ``linregress``; CI = slope ± t₀.₉₇₅·stderr).

    Pairs with a non-finite logarithm (zero, negative, NaN) are dropped; with fewer than three
    left every field but ``points`` is NaN.
    """
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    keep = np.isfinite(lx) & np.isfinite(ly)
    lx, ly = lx[keep], ly[keep]
    if len(lx) < 3:
        return Fit(float("nan"), float("nan"), float("nan"), float("nan"), len(lx))
    result = stats.linregress(lx, ly)
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(lx) - 2) * result.stderr)
    return Fit(float(result.slope), float(result.slope) - half, float(result.slope) + half,
               float(result.rvalue**2), len(lx))
