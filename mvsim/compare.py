"""Statistics across models: the difference of two models' error rates (on different test
points, Newcombe; on the same points, exact McNemar) and the mean of a quantity over models
(Student t). Built on :mod:`mvsim.stats`' exact intervals and special functions, and, like
them, pure numpy, cross-checked against scipy in ``tests/test_stats.py``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from mvsim.stats import (
    _check_count,
    _check_level,
    _check_probability,
    _clopper_pearson,
    beta_quantile,
    wilson_interval,
)

__all__ = ["mean_ci", "paired_diff_ci", "t_quantile", "two_proportion_diff_ci"]


# ---------------------------------------------------------------------------
# Comparing two models
# ---------------------------------------------------------------------------


def two_proportion_diff_ci(
    e1: int, n1: int, e2: int, n2: int, level: float = 0.95
) -> tuple[float, float]:
    """CI for p1 - p2 of two independent proportions (Newcombe's hybrid score).

    Newcombe (1998, Stat. Med. 17:873, method 10): with Wilson intervals
    (l_i, u_i) for each p_i and d = p1 - p2,

        lower = d - sqrt((p1 - l1)^2 + (u2 - p2)^2)
        upper = d + sqrt((u1 - p1)^2 + (p2 - l2)^2).

    Good coverage near nominal and sensible at 0 or n errors, unlike the Wald
    interval. Use it when the two models were evaluated on *different* test
    points; on the same points use :func:`paired_diff_ci`, which is tighter.
    """
    for name, value in (("e1", e1), ("e2", e2)):
        _check_count(value, name)
    n1 = _check_count(n1, "n1", allow_zero=False)
    n2 = _check_count(n2, "n2", allow_zero=False)
    if e1 > n1:
        raise ValueError(f"e1 must be <= n1, got e1={e1}, n1={n1}")
    if e2 > n2:
        raise ValueError(f"e2 must be <= n2, got e2={e2}, n2={n2}")
    level = _check_level(level)
    p1, p2 = e1 / n1, e2 / n2
    l1, u1 = wilson_interval(e1, n1, level)
    l2, u2 = wilson_interval(e2, n2, level)
    d = p1 - p2
    lower = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    upper = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return max(-1.0, lower), min(1.0, upper)


def _as_error_vector(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D error vector, got shape {arr.shape}")
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must be boolean (or 0/1)")
        arr = arr.astype(bool)
    return arr


def paired_diff_ci(a: Any, b: Any, level: float = 0.95) -> tuple[float, float]:
    """Exact, McNemar-based CI for err(a) - err(b) on the *same* test points.

    Only discordant points matter: with n10 = #(a wrong, b right),
    n01 = #(a right, b wrong), m = n10 + n01 and n points,

        d = p10 - p01 = psi * (2 pi - 1),   psi = p10 + p01,  pi = p10 / psi.

    psi gets a Clopper--Pearson interval from m of n; pi gets one from n10 of
    m, which is exact conditionally on m (n10 | m ~ Bin(m, pi)) -- this is the
    exact McNemar test, and its interval excludes 1/2 exactly when d's sign is
    resolved. Each gets level 1 - (1 - level)/2 (Bonferroni), and d's interval
    is the range of psi (2 pi - 1) over that box (a bilinear function, so its
    extremes are at the corners). Coverage >= level with no normal
    approximation, at the price of being somewhat conservative. With no
    discordant points pi is unconstrained ([0, 1]) and the interval is the
    symmetric [-psi_hi, psi_hi].

    Args:
        a, b: boolean (or 0/1) per-point error vectors of equal length n > 0.
        level: confidence level in (0, 1).

    Returns:
        (lower, upper) for the difference of error rates, a minus b.
    """
    av = _as_error_vector(a, "a")
    bv = _as_error_vector(b, "b")
    if av.shape != bv.shape:
        raise ValueError(f"a and b must have the same shape, got {av.shape} and {bv.shape}")
    n = av.size
    if n == 0:
        raise ValueError("a must be non-empty")
    level = _check_level(level)
    half_level = 1.0 - (1.0 - level) / 2.0
    n10 = int(np.count_nonzero(av & ~bv))
    n01 = int(np.count_nonzero(~av & bv))
    m = n10 + n01
    psi_lo, psi_hi = _clopper_pearson(m, n, half_level)
    pi_lo, pi_hi = (0.0, 1.0) if m == 0 else _clopper_pearson(n10, m, half_level)
    corners = [psi * (2.0 * pi - 1.0) for psi in (psi_lo, psi_hi) for pi in (pi_lo, pi_hi)]
    return max(-1.0, min(corners)), min(1.0, max(corners))


# ---------------------------------------------------------------------------
# A mean over models
# ---------------------------------------------------------------------------


def t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t distribution with ``df`` degrees of freedom, p in (0, 1).

    From the beta function: for t > 0, P(|T| > t) = I_x(df/2, 1/2) with
    x = df / (df + t²), so the two-sided point is found by :func:`beta_quantile`.
    """
    p = _check_probability(p, "p", open_interval=True)
    df = _check_count(df, "df", allow_zero=False)
    if p == 0.5:
        return 0.0
    tail = 2.0 * min(p, 1.0 - p)  # P(|T| > t)
    x = beta_quantile(tail, df / 2.0, 0.5)
    t = math.sqrt(df * (1.0 / x - 1.0)) if x > 0 else math.inf
    return t if p > 0.5 else -t


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval for the mean of ``values`` (two or more finite numbers,
    taken as a normal sample): mean ± t_{(1+level)/2, n−1} · sd/√n. A sample with no spread
    gives the mean as both ends."""
    level = _check_level(level)
    v = np.asarray(values, float)
    if v.ndim != 1 or v.size < 2 or not np.all(np.isfinite(v)):
        raise ValueError(f"values must be two or more finite numbers, got {values!r}")
    half = t_quantile(0.5 + level / 2.0, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean() - half), float(v.mean() + half)
