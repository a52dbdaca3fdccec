"""Statistics behind mvsim's verdicts.

The paper (Allen-Zhu & Li, arXiv 2012.09816) states its results as bounds on
test error in units of mu, the fraction of single-view data. mvsim estimates
test error on *stratified* test sets: a multi-view set (``n_multi`` points) and
a single-view set (``n_single`` points). The population mixes them as
``(1 - mu) * multi + mu * single``, so the overall error is

    E = mu * e_s + (1 - mu) * e_m,     E / mu = e_s + c * e_m,   c = (1 - mu) / mu.

Everything here is pure numpy/python and exact where it matters: interval
endpoints come from the binomial distribution itself (Clopper--Pearson), not
from a normal approximation, so a PASS verdict carries a real coverage
guarantee even for the tiny error rates (< 0.001 mu) the ensemble and
distillation claims are about. The Wilson interval is provided for sizing;
comparisons of two models and means over models are in :mod:`mvsim.compare`.

The special functions are implemented here (rather than taken from scipy) so
mvsim depends on numpy alone; they are cross-checked against scipy and exact
binomial sums in ``tests/test_stats.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from enum import StrEnum
from functools import lru_cache
from numbers import Integral, Real
from typing import Any

import numpy as np

__all__ = [
    "Estimate",
    "Verdict",
    "beta_quantile",
    "bonferroni_level",
    "clopper_pearson_interval",
    "combine_verdicts",
    "errors_from_logits",
    "normal_quantile",
    "regularized_beta",
    "required_n",
    "verdict",
    "wilson_interval",
]


# ---------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------


def _check_count(value: Any, name: str, *, allow_zero: bool = True) -> int:
    # bool is an Integral, but errors=True is a bug at the call site, not a count.
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < 0 or (value == 0 and not allow_zero):
        need = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a {need} integer, got {value}")
    return value


def _check_errors_n(errors: Any, n: Any) -> tuple[int, int]:
    n = _check_count(n, "n", allow_zero=False)
    errors = _check_count(errors, "errors")
    if errors > n:
        raise ValueError(f"errors must be <= n, got errors={errors}, n={n}")
    return errors, n


def _check_level(level: Any, name: str = "level") -> float:
    if isinstance(level, bool) or not isinstance(level, Real):
        raise ValueError(f"{name} must be a float in (0, 1), got {level!r}")
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {level}")
    return level


def _check_probability(p: Any, name: str, *, open_interval: bool) -> float:
    if isinstance(p, bool) or not isinstance(p, Real):
        raise ValueError(f"{name} must be a float, got {p!r}")
    p = float(p)
    ok = (0.0 < p < 1.0) if open_interval else (0.0 <= p <= 1.0)
    if not ok:
        rng = "(0, 1)" if open_interval else "[0, 1]"
        raise ValueError(f"{name} must be in {rng}, got {p}")
    return p


# ---------------------------------------------------------------------------
# Special functions
# ---------------------------------------------------------------------------

# Acklam's rational approximation to the normal quantile (relative error
# < 1.15e-9); refined below to full double precision with Halley steps on erfc.
_A = (
    -3.969683028665376e01,
    2.209460984245205e02,
    -2.759285104469687e02,
    1.383577518672690e02,
    -3.066479806614716e01,
    2.506628277459239e00,
)
_B = (
    -5.447609879822406e01,
    1.615858368580409e02,
    -1.556989798598866e02,
    6.680131188771972e01,
    -1.328068155288572e01,
)
_C = (
    -7.784894002430293e-03,
    -3.223964580411365e-01,
    -2.400758277161838e00,
    -2.549671035206940e00,
    4.374664141464968e00,
    2.938163982698783e00,
)
_D = (
    7.784695709041462e-03,
    3.224671290700398e-01,
    2.445134137142996e00,
    3.754408661907416e00,
)


def _normal_cdf(x: float) -> float:
    # erfc keeps relative precision deep in the lower tail, where 1 + erf would not.
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def normal_quantile(p: float) -> float:
    """Inverse of the standard normal CDF, accurate to about 1e-15 relative.

    Args:
        p: probability in the open interval (0, 1).

    Returns:
        z with Phi(z) = p.
    """
    p = _check_probability(p, "p", open_interval=True)
    # Work in the lower half so the Halley residual is computed on a small tail
    # probability (full relative precision) and reflect at the end.
    if p > 0.5:
        return -normal_quantile(1.0 - p)
    if p < 0.02425:
        q = math.sqrt(-2.0 * math.log(p))
        x = (((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5]) / (
            (((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1.0
        )
    else:
        q = p - 0.5
        r = q * q
        x = (
            (((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5])
            * q
            / (((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1.0)
        )
    for _ in range(2):  # Halley converges cubically; two steps from 1e-9 is plenty.
        e = _normal_cdf(x) - p
        u = e * math.sqrt(2.0 * math.pi) * math.exp(0.5 * x * x)
        x = x - u / (1.0 + 0.5 * x * u)
    return x


_FPMIN = 1e-300
_CF_EPS = 1e-16


def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction for I_x(a, b) (modified Lentz; Numerical Recipes 6.4)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _FPMIN else _FPMIN)
    h = d
    # Converges in O(sqrt(max(a, b))) terms on the side of the split where it is used.
    max_iter = 200 + 20 * int(math.sqrt(max(a, b)))
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _FPMIN else _FPMIN)
        c = 1.0 + aa / c
        c = c if abs(c) > _FPMIN else _FPMIN
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _FPMIN else _FPMIN)
        c = 1.0 + aa / c
        c = c if abs(c) > _FPMIN else _FPMIN
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _CF_EPS:
            return h
    raise RuntimeError(f"regularized_beta: continued fraction did not converge (a={a}, b={b})")


_LN_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _stirlerr(n: float) -> float:
    """log(n!) - log(sqrt(2 pi n) (n/e)^n), the error of Stirling's formula."""
    if n <= 15.0:
        # Small arguments: the direct formula loses at most ~1e-14 absolute.
        return math.lgamma(n + 1.0) - (n + 0.5) * math.log(n) + n - _LN_SQRT_2PI
    # Asymptotic series (Loader 2000); terms chosen so the truncation error is
    # below double precision in each range.
    s0, s1, s2, s3, s4 = 1 / 12, 1 / 360, 1 / 1260, 1 / 1680, 1 / 1188
    nn = n * n
    if n > 500:
        return (s0 - s1 / nn) / n
    if n > 80:
        return (s0 - (s1 - s2 / nn) / nn) / n
    if n > 35:
        return (s0 - (s1 - (s2 - s3 / nn) / nn) / nn) / n
    return (s0 - (s1 - (s2 - (s3 - s4 / nn) / nn) / nn) / nn) / n


def _bd0(x: float, m: float) -> float:
    """Deviance term x log(x/m) + m - x, accurate when x is close to m."""
    if abs(x - m) < 0.1 * (x + m):
        # Series in v = (x-m)/(x+m): the closed form would cancel catastrophically.
        v = (x - m) / (x + m)
        s = (x - m) * v
        ej = 2.0 * x * v
        v *= v
        for j in range(1, 1000):
            ej *= v
            s1 = s + ej / (2 * j + 1)
            if s1 == s:
                return s1
            s = s1
        return s
    return x * math.log(x / m) + m - x


def _log_binom_term(k: float, n: float, p: float, q: float) -> float:
    """log( Gamma(n+1) / (Gamma(k+1) Gamma(n-k+1)) p^k q^(n-k) ), 0 < k < n.

    Loader's (2000) saddle-point form. The naive lgamma(n+1) - lgamma(k+1) - ...
    cancels terms of size n log n, losing ~1e-9 relative at n = 1e6; this form
    keeps ~1e-14, so interval endpoints stay exact to near double precision.
    """
    lc = _stirlerr(n) - _stirlerr(k) - _stirlerr(n - k) - _bd0(k, n * p) - _bd0(n - k, n * q)
    lf = 2.0 * _LN_SQRT_2PI + math.log(k) + math.log1p(-k / n)
    return lc - 0.5 * lf


def regularized_beta(x: float, a: float, b: float) -> float:
    """Regularized incomplete beta function I_x(a, b) = P(Beta(a, b) <= x).

    For integer a, b this is the binomial tail P(Bin(a + b - 1, x) >= a), which
    is how the Clopper--Pearson interval uses it. Error is ~1e-14 absolute for
    a + b in the thousands (tests: exact rational binomial sums, scipy) and
    stays ~1e-12 relative at a + b = 1e7 (checked against 50-digit mpmath),
    which is tighter than scipy's betainc in that range.
    """
    if not (a > 0 and b > 0):
        raise ValueError(f"a and b must be positive, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x == 0.0 or x == 1.0:
        return x
    # x^a (1-x)^b / B(a, b) = (a b / (a+b)) * "binomial term" with n = a + b.
    front = a * b / (a + b) * math.exp(_log_binom_term(a, a + b, x, 1.0 - x))
    # The continued fraction converges fast only left of the split point
    # (a+1)/(a+b+2); on the other side use I_x(a, b) = 1 - I_{1-x}(b, a).
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_cf(a, b, x) / a
    return 1.0 - front * _beta_cf(b, a, 1.0 - x) / b


def beta_quantile(q: float, a: float, b: float, *, side: str = "nearest") -> float:
    """Inverse of :func:`regularized_beta` in x, by bisection.

    Bisection is used because I_x(a, b) is monotone in x, so it cannot fail or
    jump to a wrong root, and it runs to floating-point resolution.

    Args:
        q: target probability in [0, 1].
        a, b: positive shape parameters.
        side: which end of the final bracket to return: ``"lower"`` (a value
            whose CDF is <= q), ``"upper"`` (CDF >= q) or ``"nearest"`` (the
            midpoint). Confidence bounds use the side that makes them
            conservative.
    """
    if side not in ("lower", "upper", "nearest"):
        raise ValueError(f"side must be 'lower', 'upper' or 'nearest', got {side!r}")
    q = _check_probability(q, "q", open_interval=False)
    if q == 0.0:
        return 0.0
    if q == 1.0:
        return 1.0
    lo, hi = 0.0, 1.0
    # 2**-1100 is below the smallest double, so the loop always ends on the
    # float-resolution break; the cap only guards against surprises.
    for _ in range(1100):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if regularized_beta(mid, a, b) < q:
            lo = mid
        else:
            hi = mid
        # Relative resolution suffices: endpoints are compared with bounds like
        # 0.001, never needed to more than ~15 significant digits.
        if hi - lo <= 1e-15 * hi:
            break
    if side == "lower":
        return lo
    if side == "upper":
        return hi
    return 0.5 * (lo + hi)


# ---------------------------------------------------------------------------
# One-proportion intervals
# ---------------------------------------------------------------------------


@lru_cache(maxsize=65536)
def _clopper_pearson(errors: int, n: int, level: float) -> tuple[float, float]:
    # Cached: verdicts and coverage checks ask for the same (errors, n) repeatedly.
    alpha = 1.0 - level
    # P(X >= x | p) = I_p(x, n - x + 1) and P(X <= x | p) = 1 - I_p(x + 1, n - x).
    lower = 0.0 if errors == 0 else beta_quantile(alpha / 2, errors, n - errors + 1, side="lower")
    upper = (
        1.0 if errors == n else beta_quantile(1 - alpha / 2, errors + 1, n - errors, side="upper")
    )
    return lower, upper


def clopper_pearson_interval(errors: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper--Pearson) confidence interval for a binomial proportion.

    The endpoints are the beta quantiles ``Beta(alpha/2; x, n-x+1)`` and
    ``Beta(1-alpha/2; x+1, n-x)``, so coverage is >= ``level`` for every true
    proportion -- no normal approximation. The bisection returns the outer end
    of its final bracket, so the endpoints are exact up to the ~1e-12 relative
    error of :func:`regularized_beta` (far below anything a verdict resolves).

    Args:
        errors: number of errors x, 0 <= x <= n.
        n: number of trials, > 0.
        level: confidence level in (0, 1).

    Returns:
        (lower, upper); lower is exactly 0 when errors == 0 and upper is
        exactly 1 when errors == n.
    """
    errors, n = _check_errors_n(errors, n)
    return _clopper_pearson(errors, n, _check_level(level))


def wilson_interval(errors: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion.

    Close to nominal coverage on average but not guaranteed >= level at every
    p, so verdicts use Clopper--Pearson; Wilson is used for sizing
    (:func:`required_n`) and inside Newcombe's difference interval.

    Returns:
        (lower, upper); lower is exactly 0 when errors == 0 and upper is
        exactly 1 when errors == n.
    """
    errors, n = _check_errors_n(errors, n)
    level = _check_level(level)
    z = normal_quantile(1.0 - (1.0 - level) / 2.0)
    p = errors / n
    z2n = z * z / n
    center = (p + z2n / 2.0) / (1.0 + z2n)
    half = z / (1.0 + z2n) * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
    # Pin the edge cases exactly: the formula gives them only up to rounding.
    lower = 0.0 if errors == 0 else max(0.0, center - half)
    upper = 1.0 if errors == n else min(1.0, center + half)
    return lower, upper


def required_n(half_width: float, p: float = 0.5, level: float = 0.95) -> int:
    """Smallest test-set size whose Wilson interval has half-width <= ``half_width``.

    The half-width is evaluated at an observed proportion equal to ``p``. Unlike
    the normal formula ``z^2 p (1-p) / h^2`` this stays meaningful at p = 0
    (the regime of the ensemble claim), where the normal formula returns 0.

    Args:
        half_width: target half-width, > 0.
        p: anticipated error rate in [0, 1]; 0.5 is the worst case.
        level: confidence level in (0, 1).
    """
    if isinstance(half_width, bool) or not isinstance(half_width, Real):
        raise ValueError(f"half_width must be a positive float, got {half_width!r}")
    half_width = float(half_width)
    if not half_width > 0.0:
        raise ValueError(f"half_width must be > 0, got {half_width}")
    p = _check_probability(p, "p", open_interval=False)
    level = _check_level(level)
    z = normal_quantile(1.0 - (1.0 - level) / 2.0)
    pq = p * (1.0 - p)

    def width(n: int) -> float:
        return z * math.sqrt(pq * n + z * z / 4.0) / (n + z * z)

    # width(n) is strictly decreasing in n (d/dn has the sign of
    # z^2 (pq - 1/2) - pq n < 0), and width(n) <= z / (2 sqrt(n + z^2)), so
    # n = ceil(z^2 / (4 h^2)) is always wide enough: binary search in [1, hi].
    lo, hi = 1, max(1, math.ceil(z * z / (4.0 * half_width * half_width)))
    if width(lo) <= half_width:
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if width(mid) <= half_width:
            hi = mid
        else:
            lo = mid
    return hi


def bonferroni_level(level: float, m: int) -> float:
    """Per-member confidence level so that ``m`` intervals hold jointly at ``level``.

    By the union bound, if each of m intervals misses with probability at most
    (1 - level) / m, all of them hold simultaneously with probability >= level.
    Use this for the member CIs fed to :func:`combine_verdicts` when the
    combined verdict should carry a family-wise guarantee.
    """
    level = _check_level(level)
    m = _check_count(m, "m", allow_zero=False)
    return 1.0 - (1.0 - level) / m


# ---------------------------------------------------------------------------
# Stratified estimate
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """Error counts on a stratified (multi-view / single-view) test set.

    Attributes:
        errors_multi, n_multi: errors and size of the multi-view test set.
        errors_single, n_single: errors and size of the single-view test set.
        mu: population weight of single-view data, in [0, 1].

    A stratum may be empty (n = 0) only when its weight is 0: the multi-view
    set when mu = 1, the single-view set when mu = 0.
    """

    errors_multi: int
    n_multi: int
    errors_single: int
    n_single: int
    mu: float

    def __post_init__(self) -> None:
        # Normalize numpy scalars to python ones so to_dict() is JSON-ready and
        # equal estimates compare/hash equal regardless of where counts came from.
        mu = _check_probability(self.mu, "mu", open_interval=False)
        n_multi = _check_count(self.n_multi, "n_multi")
        n_single = _check_count(self.n_single, "n_single")
        errors_multi = _check_count(self.errors_multi, "errors_multi")
        errors_single = _check_count(self.errors_single, "errors_single")
        if errors_multi > n_multi:
            raise ValueError(
                f"errors_multi must be <= n_multi, got errors_multi={errors_multi}, "
                f"n_multi={n_multi}"
            )
        if errors_single > n_single:
            raise ValueError(
                f"errors_single must be <= n_single, got errors_single={errors_single}, "
                f"n_single={n_single}"
            )
        if n_multi == 0 and mu < 1.0:
            raise ValueError(
                f"n_multi must be > 0 unless mu == 1 (multi-view weight 1-mu={1 - mu})"
            )
        if n_single == 0 and mu > 0.0:
            raise ValueError(f"n_single must be > 0 unless mu == 0 (single-view weight mu={mu})")
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "n_multi", n_multi)
        object.__setattr__(self, "n_single", n_single)
        object.__setattr__(self, "errors_multi", errors_multi)
        object.__setattr__(self, "errors_single", errors_single)

    @classmethod
    def from_errors(cls, errors_multi: Any, errors_single: Any, mu: float) -> Estimate:
        """Build from boolean per-point error vectors (e.g. :func:`errors_from_logits`)."""
        em = np.asarray(errors_multi)
        es = np.asarray(errors_single)
        for name, arr in (("errors_multi", em), ("errors_single", es)):
            if arr.ndim != 1:
                raise ValueError(f"{name} must be a 1-D error vector, got shape {arr.shape}")
            if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
                raise ValueError(f"{name} must be boolean (or 0/1)")
        return cls(
            errors_multi=int(em.sum()),
            n_multi=int(em.size),
            errors_single=int(es.sum()),
            n_single=int(es.size),
            mu=mu,
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Estimate:
        """Inverse of :meth:`to_dict` (derived keys are ignored)."""
        names = [f.name for f in fields(cls)]
        missing = [k for k in names if k not in d]
        if missing:
            raise ValueError(f"Estimate.from_dict: missing field(s) {missing}")
        return cls(**{k: d[k] for k in names})

    @property
    def error_multi(self) -> float:
        """Multi-view error rate e_m."""
        if self.n_multi == 0:
            raise ValueError("error_multi is undefined: n_multi == 0")
        return self.errors_multi / self.n_multi

    @property
    def error_single(self) -> float:
        """Single-view error rate e_s."""
        if self.n_single == 0:
            raise ValueError("error_single is undefined: n_single == 0")
        return self.errors_single / self.n_single

    @property
    def c(self) -> float:
        """Weight of the multi-view error in E/mu: c = (1 - mu) / mu."""
        if self.mu == 0.0:
            raise ValueError("c = (1 - mu) / mu is undefined: mu == 0")
        return (1.0 - self.mu) / self.mu

    @property
    def error(self) -> float:
        """Overall population error E = mu * e_s + (1 - mu) * e_m."""
        # Skip zero-weight strata: they may be empty, and 0 * undefined is not 0.
        total = 0.0
        if self.mu > 0.0:
            total += self.mu * self.error_single
        if self.mu < 1.0:
            total += (1.0 - self.mu) * self.error_multi
        return total

    @property
    def error_over_mu(self) -> float:
        """E / mu = e_s + c * e_m, the unit in which the paper states its bounds."""
        c = self.c  # raises for mu == 0
        value = self.error_single
        if c > 0.0:
            value += c * self.error_multi
        return value

    def _stratum_intervals(
        self, level: float
    ) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
        # Bonferroni split over the strata that carry weight: if each misses
        # with probability <= alpha/2, both hold with probability >= 1 - alpha
        # (union bound, independence not needed). With only one weighted
        # stratum no split is needed, so it gets the full level.
        level = _check_level(level)
        weighted_single = self.mu > 0.0
        weighted_multi = self.mu < 1.0
        k = int(weighted_single) + int(weighted_multi)
        stratum_level = 1.0 - (1.0 - level) / k
        ci_s = (
            _clopper_pearson(self.errors_single, self.n_single, stratum_level)
            if weighted_single
            else None
        )
        ci_m = (
            _clopper_pearson(self.errors_multi, self.n_multi, stratum_level)
            if weighted_multi
            else None
        )
        return ci_s, ci_m

    def ci(self, level: float = 0.95) -> tuple[float, float]:
        """Confidence interval for the overall error E, coverage >= ``level``.

        Same construction as :meth:`ci_over_mu`: E is increasing in both
        stratum error rates, so the box of per-stratum intervals maps to
        [mu lo_s + (1-mu) lo_m, mu hi_s + (1-mu) hi_m].
        """
        ci_s, ci_m = self._stratum_intervals(level)
        lo = hi = 0.0
        if ci_s is not None:
            lo += self.mu * ci_s[0]
            hi += self.mu * ci_s[1]
        if ci_m is not None:
            lo += (1.0 - self.mu) * ci_m[0]
            hi += (1.0 - self.mu) * ci_m[1]
        return lo, hi

    def ci_over_mu(self, level: float = 0.95) -> tuple[float, float]:
        """Confidence interval for E/mu with coverage >= ``level``.

        Each weighted stratum gets an exact Clopper--Pearson interval at level
        1 - (1 - level)/2 (Bonferroni); since E/mu = e_s + c e_m is increasing
        in both rates (c >= 0), the true E/mu lies in
        [lo_s + c lo_m, hi_s + c hi_m] whenever both stratum intervals hold,
        which happens with probability >= level. No normal approximation.
        When mu == 1 only the single-view stratum matters and it gets the full
        level. Raises ValueError when mu == 0 (E/mu undefined).
        """
        c = self.c  # raises for mu == 0 before any work
        ci_s, ci_m = self._stratum_intervals(level)
        assert ci_s is not None  # mu > 0 here
        lo, hi = ci_s
        if ci_m is not None:
            lo += c * ci_m[0]
            hi += c * ci_m[1]
        return lo, hi

    def to_dict(self, level: float = 0.95) -> dict[str, Any]:
        """JSON-ready dict: the fields plus derived rates and CIs (None if undefined)."""

        def attempt(fn: Any) -> Any:
            try:
                value = fn()
            except ValueError:
                return None
            return list(value) if isinstance(value, tuple) else value

        return {
            "errors_multi": self.errors_multi,
            "n_multi": self.n_multi,
            "errors_single": self.errors_single,
            "n_single": self.n_single,
            "mu": self.mu,
            "error_multi": attempt(lambda: self.error_multi),
            "error_single": attempt(lambda: self.error_single),
            "error": self.error,
            "error_over_mu": attempt(lambda: self.error_over_mu),
            "level": level,
            "ci": list(self.ci(level)),
            "ci_over_mu": attempt(lambda: self.ci_over_mu(level)),
        }


# ---------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------


class Verdict(StrEnum):
    """Outcome of checking a claimed bound against a confidence interval.

    A ``str`` subclass (StrEnum, i.e. ``str`` + ``Enum``), so members compare
    equal to and serialize as their lowercase values in JSON.
    """

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


def _check_bound(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(value):
        raise ValueError(f"{name} must be a number or None, got {value!r}")
    return float(value)


def verdict(ci: tuple[float, float], lo: float | None, hi: float | None) -> Verdict:
    """Three-valued verdict on the claim ``lo < theta < hi`` given a CI for theta.

    The claim is read with strict inequalities (the paper's "error < 0.001 mu";
    None leaves that side open), and the CI [a, b] is read as the closed set of
    plausible values of theta. Then, with one rule:

    * PASS iff every plausible value satisfies the claim: lo < a and b < hi.
    * FAIL iff no plausible value does: b <= lo or a >= hi (the CI is
      disjoint from the open interval (lo, hi)).
    * INCONCLUSIVE otherwise: the CI straddles or touches a bound from inside.

    Boundary cases follow from that rule: for an upper bound, b == hi is not
    strictly inside, so a CI [a, hi] with a < hi is INCONCLUSIVE; a CI [hi, b]
    contains no value < hi, so it is FAIL. Symmetrically for lower bounds.

    Raises:
        ValueError: if the CI is malformed (NaN, or a > b) or lo >= hi.
    """
    try:
        a, b = (float(v) for v in ci)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"ci must be a pair of numbers, got {ci!r}") from exc
    if math.isnan(a) or math.isnan(b) or a > b:
        raise ValueError(f"ci must satisfy lower <= upper (no NaN), got {ci!r}")
    lo = _check_bound(lo, "lo")
    hi = _check_bound(hi, "hi")
    if lo is not None and hi is not None and not lo < hi:
        raise ValueError(f"lo must be < hi, got lo={lo}, hi={hi}")
    if (lo is not None and b <= lo) or (hi is not None and a >= hi):
        return Verdict.FAIL
    if (lo is None or lo < a) and (hi is None or b < hi):
        return Verdict.PASS
    return Verdict.INCONCLUSIVE


def combine_verdicts(verdicts: Sequence[Verdict]) -> Verdict:
    """Verdict for a claim that must hold for every member (e.g. every seed).

    Rule: FAIL if any member FAILs (one counterexample refutes a "for all"
    claim), PASS iff every member PASSes, INCONCLUSIVE otherwise.

    Each member's verdict comes from its own CI, so with m members the chance
    that *some* member is misjudged grows with m. For a family-wise guarantee
    at ``level``, compute member CIs at :func:`bonferroni_level` (level, m).

    Raises:
        ValueError: on an empty sequence (no evidence is not a PASS) or a
            value that is not a Verdict.
    """
    members = list(verdicts)
    if not members:
        raise ValueError("verdicts must be non-empty")
    try:
        members = [Verdict(v) for v in members]
    except ValueError as exc:
        raise ValueError(f"verdicts must contain Verdict values, got {verdicts!r}") from exc
    if any(v is Verdict.FAIL for v in members):
        return Verdict.FAIL
    if all(v is Verdict.PASS for v in members):
        return Verdict.PASS
    return Verdict.INCONCLUSIVE


# ---------------------------------------------------------------------------
# Errors from model outputs
# ---------------------------------------------------------------------------


def errors_from_logits(logits: Any, y: Any) -> np.ndarray:
    """Per-point errors: point j is wrong iff some i != y_j has F_i >= F_{y_j}.

    Ties count as errors, matching the paper's definition of a correct
    prediction (F_y strictly largest) and erring on the conservative side;
    a row containing NaN is an error too, since it certifies nothing.

    Args:
        logits: array of shape (n, k), k >= 2 (numpy, jax or anything
            ``np.asarray`` accepts; jax arrays are copied to host).
        y: integer labels of shape (n,), each in [0, k).

    Returns:
        Boolean numpy array of shape (n,).
    """
    f = np.asarray(logits)
    labels = np.asarray(y)
    if f.ndim != 2:
        raise ValueError(f"logits must have shape (n, k), got shape {f.shape}")
    n, k = f.shape
    if k < 2:
        raise ValueError(f"logits must have at least 2 classes, got k={k}")
    if labels.shape != (n,):
        raise ValueError(f"y must have shape ({n},) to match logits, got shape {labels.shape}")
    if n and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"y must hold integer labels, got dtype {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(
            f"y must hold labels in [0, {k}), got range [{labels.min()}, {labels.max()}]"
        )
    rows = np.arange(n)
    f_y = f[rows, labels]
    # NaN is the only value unequal to itself; this test also works for dtypes
    # np.isnan / np.issubdtype(..., np.floating) do not know, e.g. jax's bfloat16.
    nan_rows = (f != f).any(axis=1)
    with np.errstate(invalid="ignore"):  # NaN comparisons are handled via nan_rows
        beaten = f >= f_y[:, None]
    beaten[rows, labels] = False  # F_y >= F_y always; only rivals count
    return beaten.any(axis=1) | nan_rows
