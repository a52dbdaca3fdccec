"""Tests for mvsim.stats: interval accuracy, coverage, verdict logic, input checks."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest

from mvsim.compare import paired_diff_ci, t_quantile, two_proportion_diff_ci
from mvsim.stats import (
    Estimate,
    Verdict,
    beta_quantile,
    bonferroni_level,
    clopper_pearson_interval,
    combine_verdicts,
    errors_from_logits,
    normal_quantile,
    regularized_beta,
    required_n,
    verdict,
    wilson_interval,
)

# Coverage checks simulate DRAWS intervals and count how often they contain the
# truth. If the true coverage is exactly 0.95, the empirical coverage is a
# binomial proportion with standard error sqrt(0.95 * 0.05 / DRAWS) = 0.00487
# for DRAWS = 2000. Allowing 3 standard errors below 0.95 (one-sided false
# alarm rate ~0.13% per check, and the seeds are fixed anyway) gives a
# threshold of 0.95 - 0.0146 = 0.935: an interval whose true coverage is below
# ~0.935 fails, one at or above 0.95 passes.
DRAWS = 2000
LEVEL = 0.95
COVERAGE_MARGIN = 3 * math.sqrt(LEVEL * (1 - LEVEL) / DRAWS)
COVERAGE_FLOOR = LEVEL - COVERAGE_MARGIN


def _binom_pmf(k: int, n: int, p: float) -> float:
    return math.comb(n, k) * p**k * (1 - p) ** (n - k)


# ---------------------------------------------------------------------------
# Special functions
# ---------------------------------------------------------------------------


def test_normal_quantile_known_values():
    assert normal_quantile(0.5) == 0.0
    assert normal_quantile(0.975) == pytest.approx(1.959963984540054, rel=1e-14)
    assert normal_quantile(0.995) == pytest.approx(2.5758293035489004, rel=1e-14)
    assert normal_quantile(0.025) == pytest.approx(-1.959963984540054, rel=1e-14)
    assert normal_quantile(1e-10) == pytest.approx(-6.361340902404056, rel=1e-13)


def test_normal_quantile_inverts_cdf():
    for p in [1e-300, 1e-20, 1e-5, 0.01, 0.2, 0.5, 0.7, 0.99, 1 - 1e-9]:
        z = normal_quantile(p)
        cdf = 0.5 * math.erfc(-z / math.sqrt(2))
        assert cdf == pytest.approx(p, rel=1e-13)


def test_normal_quantile_rejects_out_of_range():
    for p in [0.0, 1.0, -0.1, 1.5]:
        with pytest.raises(ValueError, match="p"):
            normal_quantile(p)


def test_regularized_beta_equals_exact_binomial_tail():
    # For integers, I_p(x, n - x + 1) = P(Bin(n, p) >= x); evaluate the right
    # side in exact rational arithmetic (p is converted exactly from its float).
    for n in [1, 7, 40, 150]:
        for p in [0.003, 0.05, 0.37, 0.5, 0.91]:
            pf = Fraction(p)
            for x in sorted({1, 2, n // 3, n // 2, n} & set(range(1, n + 1))):
                exact = sum(math.comb(n, k) * pf**k * (1 - pf) ** (n - k) for k in range(x, n + 1))
                got = regularized_beta(p, x, n - x + 1)
                assert got == pytest.approx(float(exact), rel=1e-12, abs=1e-15), (n, p, x)


def test_beta_quantile_inverts_regularized_beta():
    for a, b in [(1, 1), (3, 50), (40, 2), (2.5, 7.5), (5, 10**6)]:
        for q in [0.025, 0.5, 0.975]:
            x = beta_quantile(q, a, b)
            assert regularized_beta(x, a, b) == pytest.approx(q, rel=1e-12)
    lo = beta_quantile(0.3, 4, 9, side="lower")
    hi = beta_quantile(0.3, 4, 9, side="upper")
    assert lo <= hi and regularized_beta(lo, 4, 9) <= 0.3 <= regularized_beta(hi, 4, 9)


def test_special_functions_match_scipy():
    scipy_special = pytest.importorskip("scipy.special")
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(200):
        a, b = rng.integers(1, 3000, size=2)
        x = float(rng.random())
        assert regularized_beta(x, a, b) == pytest.approx(
            scipy_special.betainc(a, b, x), rel=1e-11, abs=1e-14
        )
    for p in [1e-12, 0.001, 0.3, 0.9999]:
        assert normal_quantile(p) == pytest.approx(scipy_stats.norm.ppf(p), rel=1e-13)
    for df in (1, 2, 3, 4, 15, 200):  # the trajectory reading's intervals over models
        for p in (0.975, 0.9, 0.6, 0.025):
            assert t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-10)
    assert t_quantile(0.5, 3) == 0.0


# ---------------------------------------------------------------------------
# One-proportion intervals
# ---------------------------------------------------------------------------

# Newcombe (1998), Stat. Med. 17:857, Table II, plus the 0/10 and 5/10 cases.
CP_TEXTBOOK = {
    (0, 10): (0.0, 0.3085),
    (5, 10): (0.1871, 0.8129),
    (81, 263): (0.2527, 0.3676),
    (15, 148): (0.0578, 0.1617),
    (0, 20): (0.0, 0.1684),
    (1, 29): (0.0009, 0.1776),
    (29, 29): (0.8806, 1.0),
}
WILSON_TEXTBOOK = {
    (0, 10): (0.0, 0.2775),
    (5, 10): (0.2366, 0.7634),
    (81, 263): (0.2553, 0.3662),
    (15, 148): (0.0624, 0.1605),
    (0, 20): (0.0, 0.1611),
    (1, 29): (0.0061, 0.1718),
    (29, 29): (0.8830, 1.0),
}


@pytest.mark.parametrize(("counts", "expected"), CP_TEXTBOOK.items())
def test_clopper_pearson_textbook(counts, expected):
    lo, hi = clopper_pearson_interval(*counts)
    assert lo == pytest.approx(expected[0], abs=5e-5)
    assert hi == pytest.approx(expected[1], abs=5e-5)


@pytest.mark.parametrize(("counts", "expected"), WILSON_TEXTBOOK.items())
def test_wilson_textbook(counts, expected):
    lo, hi = wilson_interval(*counts)
    assert lo == pytest.approx(expected[0], abs=5e-5)
    assert hi == pytest.approx(expected[1], abs=5e-5)


def test_clopper_pearson_closed_forms():
    # With 0 errors the upper bound solves (1 - p)^n = alpha/2; with n errors
    # the lower bound solves p^n = alpha/2. Both are closed-form.
    for n in [1, 3, 10, 1000, 10**6]:
        for level in [0.9, 0.95, 0.999]:
            half_alpha = (1 - level) / 2
            lo, hi = clopper_pearson_interval(0, n, level)
            assert lo == 0.0
            assert hi == pytest.approx(-math.expm1(math.log(half_alpha) / n), rel=1e-11)
            lo, hi = clopper_pearson_interval(n, n, level)
            assert hi == 1.0
            assert lo == pytest.approx(half_alpha ** (1 / n), rel=1e-12)


def test_wilson_closed_form_zero_errors():
    z = normal_quantile(0.975)
    for n in [1, 10, 12345]:
        assert wilson_interval(0, n) == (0.0, pytest.approx(z * z / (n + z * z), rel=1e-14))
        assert wilson_interval(n, n)[1] == 1.0


def test_clopper_pearson_matches_scipy_beta_ppf():
    beta = pytest.importorskip("scipy.stats").beta
    for x, n, level in [(1, 29, 0.95), (3, 1000, 0.99), (500, 1000, 0.95), (7, 10**6, 0.975)]:
        alpha = 1 - level
        lo, hi = clopper_pearson_interval(x, n, level)
        assert lo == pytest.approx(beta.ppf(alpha / 2, x, n - x + 1), rel=1e-9)
        assert hi == pytest.approx(beta.ppf(1 - alpha / 2, x + 1, n - x), rel=1e-9)


def test_intervals_nest_and_contain_point_estimate():
    for x, n in [(0, 5), (1, 5), (37, 100), (100, 100)]:
        cp90 = clopper_pearson_interval(x, n, 0.90)
        cp99 = clopper_pearson_interval(x, n, 0.99)
        assert cp99[0] <= cp90[0] <= x / n <= cp90[1] <= cp99[1]
        w90, w99 = wilson_interval(x, n, 0.90), wilson_interval(x, n, 0.99)
        assert w99[0] <= w90[0] <= x / n <= w90[1] <= w99[1]


@pytest.mark.parametrize("fn", [clopper_pearson_interval, wilson_interval])
def test_one_proportion_bad_input(fn):
    with pytest.raises(ValueError, match=r"\bn\b"):
        fn(0, 0)
    with pytest.raises(ValueError, match=r"\bn\b"):
        fn(0, -3)
    with pytest.raises(ValueError, match="errors"):
        fn(-1, 10)
    with pytest.raises(ValueError, match="errors"):
        fn(11, 10)
    with pytest.raises(ValueError, match="errors"):
        fn(2.5, 10)
    with pytest.raises(ValueError, match="errors"):
        fn(True, 10)
    for level in [0.0, 1.0, 95]:
        with pytest.raises(ValueError, match="level"):
            fn(1, 10, level)
    # numpy integers are counts too.
    assert fn(np.int64(3), np.int32(10)) == fn(3, 10)


def _simulated_coverage(interval, p: float, n: int, seed: int, draws: int = DRAWS) -> float:
    xs = np.random.default_rng(seed).binomial(n, p, size=draws)
    table = [interval(x, n) for x in range(n + 1)]
    return float(np.mean([table[x][0] <= p <= table[x][1] for x in xs]))


@pytest.mark.parametrize("p", [0.01, 0.1, 0.5])
@pytest.mark.parametrize("n", [10, 50, 200])
def test_clopper_pearson_simulated_coverage(p, n):
    coverage = _simulated_coverage(clopper_pearson_interval, p, n, seed=1000 * n + int(1000 * p))
    assert coverage >= COVERAGE_FLOOR, coverage


def test_coverage_check_rejects_a_too_narrow_interval():
    # The harness must be able to fail: an 80% interval posing as 95% is caught.
    def narrow(x, n):
        return clopper_pearson_interval(x, n, 0.80)

    assert _simulated_coverage(narrow, 0.5, 200, seed=7) < COVERAGE_FLOOR


def test_clopper_pearson_exact_coverage():
    # Coverage computed exactly (sum of binomial pmf over the x whose interval
    # contains p): Clopper-Pearson must be >= level at every p, no margin.
    for n in [1, 5, 20, 80]:
        table = [clopper_pearson_interval(x, n) for x in range(n + 1)]
        for p in np.linspace(0.001, 0.999, 97):
            cov = sum(_binom_pmf(x, n, p) for x in range(n + 1) if table[x][0] <= p <= table[x][1])
            assert cov >= LEVEL - 1e-12, (n, p, cov)


# ---------------------------------------------------------------------------
# Stratified estimate
# ---------------------------------------------------------------------------


def test_estimate_point_values():
    est = Estimate(errors_multi=3, n_multi=1000, errors_single=49, n_single=100, mu=0.2)
    assert est.error_multi == 0.003
    assert est.error_single == 0.49
    assert est.c == pytest.approx(4.0)
    assert est.error == pytest.approx(0.2 * 0.49 + 0.8 * 0.003)
    assert est.error_over_mu == pytest.approx(0.49 + 4 * 0.003)
    assert est.error_over_mu == pytest.approx(est.error / est.mu)


def test_estimate_ci_is_bonferroni_clopper_pearson():
    est = Estimate(errors_multi=3, n_multi=1000, errors_single=49, n_single=100, mu=0.2)
    lo_m, hi_m = clopper_pearson_interval(3, 1000, 0.975)
    lo_s, hi_s = clopper_pearson_interval(49, 100, 0.975)
    assert est.ci_over_mu() == pytest.approx((lo_s + 4 * lo_m, hi_s + 4 * hi_m))
    assert est.ci() == pytest.approx((0.2 * lo_s + 0.8 * lo_m, 0.2 * hi_s + 0.8 * hi_m))
    lo, hi = est.ci_over_mu()
    assert lo < est.error_over_mu < hi
    lo99, hi99 = est.ci_over_mu(0.99)
    assert lo99 < lo and hi < hi99


def test_estimate_mu_one_needs_no_multi_stratum():
    est = Estimate(errors_multi=0, n_multi=0, errors_single=5, n_single=100, mu=1.0)
    assert est.error == est.error_over_mu == 0.05
    # One weighted stratum: no Bonferroni split, the full level goes to it.
    assert est.ci_over_mu() == clopper_pearson_interval(5, 100, 0.95)
    assert est.ci() == clopper_pearson_interval(5, 100, 0.95)
    with pytest.raises(ValueError, match="n_multi"):
        _ = est.error_multi
    # Multi-view data present but weightless is ignored.
    est2 = Estimate(errors_multi=7, n_multi=10, errors_single=5, n_single=100, mu=1.0)
    assert est2.ci_over_mu() == est.ci_over_mu()


def test_estimate_mu_zero():
    est = Estimate(errors_multi=2, n_multi=100, errors_single=0, n_single=0, mu=0.0)
    assert est.error == 0.02
    assert est.ci() == clopper_pearson_interval(2, 100)
    with pytest.raises(ValueError, match="mu"):
        _ = est.error_over_mu
    with pytest.raises(ValueError, match="mu"):
        est.ci_over_mu()
    d = est.to_dict()
    assert d["error_over_mu"] is None and d["ci_over_mu"] is None and d["error_single"] is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_multi": 0}, "n_multi"),  # empty stratum with weight 1 - mu > 0
        ({"n_single": 0, "errors_single": 0}, "n_single"),  # empty stratum, weight mu > 0
        ({"errors_multi": 11}, "errors_multi"),
        ({"errors_single": -1}, "errors_single"),
        ({"n_single": 2.0}, "n_single"),
        ({"mu": 1.5}, "mu"),
        ({"mu": -0.1}, "mu"),
        ({"mu": float("nan")}, "mu"),
        ({"mu": "0.1"}, "mu"),
    ],
)
def test_estimate_bad_input_names_field(kwargs, field):
    base = {"errors_multi": 1, "n_multi": 10, "errors_single": 1, "n_single": 10, "mu": 0.1}
    with pytest.raises(ValueError, match=field):
        Estimate(**{**base, **kwargs})


def test_estimate_json_roundtrip_and_numpy_normalization():
    est = Estimate(
        errors_multi=np.int64(3),
        n_multi=np.int64(1000),
        errors_single=np.int32(49),
        n_single=100,
        mu=np.float32(0.25),
    )
    assert type(est.n_multi) is int and type(est.mu) is float
    d = json.loads(json.dumps(est.to_dict()))
    assert d["ci_over_mu"] == pytest.approx(list(est.ci_over_mu()))
    assert d["error"] == pytest.approx(est.error)
    assert Estimate.from_dict(d) == est
    with pytest.raises(ValueError, match="n_single"):
        Estimate.from_dict({"errors_multi": 1, "n_multi": 2, "errors_single": 0, "mu": 0.5})


def test_estimate_from_errors():
    em = np.array([True, False, False, False])
    es = np.array([1, 0, 1])
    est = Estimate.from_errors(em, es, mu=0.5)
    assert (est.errors_multi, est.n_multi, est.errors_single, est.n_single) == (1, 4, 2, 3)
    with pytest.raises(ValueError, match="errors_single"):
        Estimate.from_errors(em, np.array([0, 2]), mu=0.5)
    with pytest.raises(ValueError, match="errors_multi"):
        Estimate.from_errors(em.reshape(2, 2), es, mu=0.5)


@pytest.mark.parametrize(
    ("mu", "p_single", "p_multi", "n_single", "n_multi"),
    [
        (0.2, 0.5, 0.002, 400, 3000),  # single model regime
        (0.05, 0.01, 0.0005, 300, 4000),  # ensemble regime, c = 19
        (0.5, 0.25, 0.1, 60, 80),  # small strata
    ],
)
def test_estimate_ci_simulated_coverage(mu, p_single, p_multi, n_single, n_multi):
    rng = np.random.default_rng(int(1e6 * mu) + n_single)
    xs = rng.binomial(n_single, p_single, size=DRAWS)
    xm = rng.binomial(n_multi, p_multi, size=DRAWS)
    truth = p_single + (1 - mu) / mu * p_multi
    hits = 0
    for s, m in zip(xs, xm, strict=True):
        lo, hi = Estimate(int(m), n_multi, int(s), n_single, mu).ci_over_mu()
        hits += lo <= truth <= hi
    assert hits / DRAWS >= COVERAGE_FLOOR, hits / DRAWS


# ---------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------


def test_verdict_inside_outside_straddling():
    assert verdict((0.495, 0.505), 0.49, 0.51) is Verdict.PASS
    assert verdict((0.52, 0.60), 0.49, 0.51) is Verdict.FAIL  # above
    assert verdict((0.30, 0.40), 0.49, 0.51) is Verdict.FAIL  # below
    assert verdict((0.48, 0.50), 0.49, 0.51) is Verdict.INCONCLUSIVE  # straddles lo
    assert verdict((0.50, 0.52), 0.49, 0.51) is Verdict.INCONCLUSIVE  # straddles hi
    assert verdict((0.40, 0.60), 0.49, 0.51) is Verdict.INCONCLUSIVE  # covers both


def test_verdict_open_bounds():
    assert verdict((0.0, 0.0009), None, 0.001) is Verdict.PASS
    assert verdict((0.0, 0.0011), None, 0.001) is Verdict.INCONCLUSIVE
    assert verdict((0.002, 0.003), None, 0.001) is Verdict.FAIL
    assert verdict((0.3, 0.5), 0.26, None) is Verdict.PASS
    assert verdict((0.1, 0.2), 0.26, None) is Verdict.FAIL
    assert verdict((-5.0, 5.0), None, None) is Verdict.PASS  # vacuous claim


def test_verdict_exact_boundary():
    # Claims are strict (lo < theta < hi); the CI is closed.
    assert verdict((0.0005, 0.001), None, 0.001) is Verdict.INCONCLUSIVE  # hi on bound
    assert verdict((0.001, 0.002), None, 0.001) is Verdict.FAIL  # no value < 0.001
    assert verdict((0.001, 0.001), None, 0.001) is Verdict.FAIL
    assert verdict((0.49, 0.50), 0.49, 0.51) is Verdict.INCONCLUSIVE  # lo on bound
    assert verdict((0.48, 0.49), 0.49, 0.51) is Verdict.FAIL  # no value > 0.49
    assert verdict((0.49, 0.51), 0.49, 0.51) is Verdict.INCONCLUSIVE
    assert verdict((0.51, 0.52), 0.49, 0.51) is Verdict.FAIL
    # A hair inside is inside.
    assert verdict((0.0, math.nextafter(0.001, 0.0)), None, 0.001) is Verdict.PASS


def test_verdict_bad_input():
    with pytest.raises(ValueError, match="ci"):
        verdict((0.2, 0.1), None, 0.5)
    with pytest.raises(ValueError, match="ci"):
        verdict((float("nan"), 0.1), None, 0.5)
    with pytest.raises(ValueError, match="ci"):
        verdict((0.1,), None, 0.5)
    with pytest.raises(ValueError, match="lo"):
        verdict((0.1, 0.2), 0.5, 0.5)
    with pytest.raises(ValueError, match="hi"):
        verdict((0.1, 0.2), None, float("nan"))


def test_verdict_on_estimates_ensemble_claim():
    # Zero errors everywhere: enough test points resolve "< 0.001 mu", too few do not.
    mu = 0.1  # c = 9
    big = Estimate(errors_multi=0, n_multi=200_000, errors_single=0, n_single=20_000, mu=mu)
    small = Estimate(errors_multi=0, n_multi=2_000, errors_single=0, n_single=2_000, mu=mu)
    assert verdict(big.ci_over_mu(), None, 0.001) is Verdict.PASS
    assert verdict(small.ci_over_mu(), None, 0.001) is Verdict.INCONCLUSIVE
    bad = Estimate(errors_multi=40, n_multi=2_000, errors_single=30, n_single=2_000, mu=mu)
    assert verdict(bad.ci_over_mu(), None, 0.001) is Verdict.FAIL


def test_verdict_is_a_json_string():
    assert Verdict.PASS == "pass" and isinstance(Verdict.FAIL, str)
    assert json.dumps([Verdict.INCONCLUSIVE]) == '["inconclusive"]'
    assert str(Verdict.PASS) == "pass"


def test_combine_verdicts():
    P, F, I = Verdict.PASS, Verdict.FAIL, Verdict.INCONCLUSIVE
    assert combine_verdicts([P, P, P]) is P
    assert combine_verdicts([P]) is P
    assert combine_verdicts([P, F, P]) is F
    assert combine_verdicts([I, F]) is F
    assert combine_verdicts([P, I, P]) is I
    assert combine_verdicts([I, I]) is I
    assert combine_verdicts(("pass", "pass")) is P  # serialized verdicts are accepted
    with pytest.raises(ValueError, match="verdicts"):
        combine_verdicts([])
    with pytest.raises(ValueError, match="verdicts"):
        combine_verdicts([P, "maybe"])


def test_bonferroni_level():
    assert bonferroni_level(0.95, 1) == 0.95
    assert bonferroni_level(0.95, 5) == pytest.approx(0.99)
    with pytest.raises(ValueError, match="m"):
        bonferroni_level(0.95, 0)


# ---------------------------------------------------------------------------
# Errors from logits
# ---------------------------------------------------------------------------


def test_errors_from_logits_ties_are_errors():
    logits = np.array(
        [
            [2.0, 1.0, 0.0],  # correct (y=0 strictly largest)
            [1.0, 1.0, 0.0],  # tie with the label -> error
            [0.0, 3.0, 3.0],  # tie among rivals above label -> error
            [0.0, 5.0, 1.0],  # plain error
            [3.0, 3.0, 3.0],  # all equal -> error
            [-np.inf, -np.inf, 0.0],  # label 2 strictly largest -> correct
            [np.nan, 1.0, 0.0],  # NaN certifies nothing -> error
        ]
    )
    y = np.array([0, 0, 0, 0, 1, 2, 1])
    expected = [False, True, True, True, True, False, True]
    got = errors_from_logits(logits, y)
    assert got.dtype == bool and got.tolist() == expected


def test_errors_from_logits_integer_and_empty():
    assert errors_from_logits(np.array([[1, 1], [2, 1]]), np.array([1, 0])).tolist() == [
        True,
        False,
    ]
    assert errors_from_logits(np.zeros((0, 4)), np.zeros(0, dtype=int)).shape == (0,)


def test_errors_from_logits_matches_argmax_without_ties():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(500, 7))
    y = rng.integers(0, 7, size=500)
    np.testing.assert_array_equal(errors_from_logits(logits, y), logits.argmax(1) != y)


def test_errors_from_logits_jax_arrays():
    jnp = pytest.importorskip("jax.numpy")
    logits = jnp.array([[1.0, 1.0], [0.0, 2.0], [3.0, 0.0]])
    y = jnp.array([0, 1, 0])
    got = errors_from_logits(logits, y)
    assert isinstance(got, np.ndarray) and got.tolist() == [True, False, False]
    # bfloat16 is not an np.floating subtype; its NaNs must still count as errors.
    half = jnp.array([[jnp.nan, 1.0], [1.0, 0.0], [0.0, 1.0]], dtype=jnp.bfloat16)
    assert errors_from_logits(half, jnp.array([1, 0, 0])).tolist() == [True, False, True]


def test_errors_from_logits_bad_input():
    with pytest.raises(ValueError, match="logits"):
        errors_from_logits(np.zeros(3), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="logits"):
        errors_from_logits(np.zeros((3, 1)), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="y"):
        errors_from_logits(np.zeros((3, 2)), np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="y"):
        errors_from_logits(np.zeros((3, 2)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="y"):
        errors_from_logits(np.zeros((3, 2)), np.array([0.0, 1.0, 1.0]))


# ---------------------------------------------------------------------------
# Comparing two models
# ---------------------------------------------------------------------------

# Newcombe (1998), Stat. Med. 17:873, Table II, method 10.
NEWCOMBE_DIFF = [
    ((56, 70, 48, 80), (0.0524, 0.3339)),
    ((9, 10, 3, 10), (0.1705, 0.8090)),
    ((6, 7, 2, 7), (0.0582, 0.8062)),
    ((5, 56, 0, 29), (-0.0381, 0.1926)),
    ((0, 10, 0, 20), (-0.1611, 0.2775)),
    ((0, 10, 0, 10), (-0.2775, 0.2775)),
    ((10, 10, 0, 20), (0.6791, 1.0)),
    ((10, 10, 0, 10), (0.6075, 1.0)),
]


@pytest.mark.parametrize(("counts", "expected"), NEWCOMBE_DIFF)
def test_two_proportion_diff_ci_newcombe_table(counts, expected):
    lo, hi = two_proportion_diff_ci(*counts)
    assert lo == pytest.approx(expected[0], abs=5e-5)
    assert hi == pytest.approx(expected[1], abs=5e-5)


def test_two_proportion_diff_ci_antisymmetric_and_bad_input():
    lo, hi = two_proportion_diff_ci(56, 70, 48, 80)
    assert two_proportion_diff_ci(48, 80, 56, 70) == pytest.approx((-hi, -lo))
    with pytest.raises(ValueError, match="n2"):
        two_proportion_diff_ci(1, 10, 0, 0)
    with pytest.raises(ValueError, match="e1"):
        two_proportion_diff_ci(11, 10, 0, 10)
    with pytest.raises(ValueError, match="level"):
        two_proportion_diff_ci(1, 10, 0, 10, level=1.0)


def test_paired_diff_ci_basic():
    rng = np.random.default_rng(5)
    a = rng.random(1000) < 0.1
    lo, hi = paired_diff_ci(a, a)  # no discordant pairs: symmetric around 0
    assert lo == -hi and hi > 0
    # n10 = #(a wrong, b right) = 40, n01 = #(a right, b wrong) = 5.
    a = np.zeros(1000, bool)
    b = np.zeros(1000, bool)
    a[:40] = True
    b[40:45] = True
    lo, hi = paired_diff_ci(a, b)
    assert 0 < lo < 0.035 < hi
    assert paired_diff_ci(b, a) == pytest.approx((-hi, -lo))
    # Concordant errors leave the interval alone: only discordant pairs matter.
    a[500:600] = b[500:600] = True
    assert paired_diff_ci(a, b) == pytest.approx((lo, hi))
    # 0/1 integer vectors are accepted.
    assert paired_diff_ci(a.astype(int), b.astype(np.uint8)) == pytest.approx((lo, hi))


def test_paired_is_tighter_than_unpaired_for_correlated_models():
    a = np.zeros(5000, bool)
    b = np.zeros(5000, bool)
    a[:500] = b[:500] = True  # shared mistakes
    a[500:560] = True  # 60 extra for a
    b[560:570] = True  # 10 extra for b
    paired = paired_diff_ci(a, b)
    unpaired = two_proportion_diff_ci(int(a.sum()), a.size, int(b.sum()), b.size)
    assert paired[0] > 0 and unpaired[0] < 0 < unpaired[1]


def test_paired_diff_ci_simulated_coverage():
    rng = np.random.default_rng(11)
    n, p10, p01 = 400, 0.03, 0.01
    truth = p10 - p01
    hits = 0
    for _ in range(DRAWS):
        kind = rng.choice(3, size=n, p=[p10, p01, 1 - p10 - p01])
        lo, hi = paired_diff_ci(kind == 0, kind == 1)
        hits += lo <= truth <= hi
    assert hits / DRAWS >= COVERAGE_FLOOR


def test_paired_diff_ci_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        paired_diff_ci(np.zeros(3, bool), np.zeros(4, bool))
    with pytest.raises(ValueError, match="a"):
        paired_diff_ci(np.array([0, 2, 1]), np.zeros(3, bool))
    with pytest.raises(ValueError, match="b"):
        paired_diff_ci(np.zeros(3, bool), np.zeros((3, 1), bool))
    with pytest.raises(ValueError, match="non-empty"):
        paired_diff_ci(np.zeros(0, bool), np.zeros(0, bool))


# ---------------------------------------------------------------------------
# Sizing
# ---------------------------------------------------------------------------


def test_required_n_is_minimal():
    # p = 0: the Wilson interval for 0 errors is [0, z^2/(n+z^2)], half-width
    # is half of that; the normal formula would say n = 0 here.
    n = required_n(0.001, p=0.0)
    assert wilson_interval(0, n)[1] / 2 <= 0.001 < wilson_interval(0, n - 1)[1] / 2
    # p = 0.5, even n so the observed proportion is exactly 0.5.
    n = required_n(0.01, p=0.5)
    assert n == 9600  # a little below the normal 1.96^2 / (4 * 0.01^2) = 9604
    lo, hi = wilson_interval(n // 2, n)
    assert (hi - lo) / 2 <= 0.01
    lo, hi = wilson_interval(n // 2 - 1, n - 2)
    assert (hi - lo) / 2 > 0.01
    assert required_n(0.01, p=0.5, level=0.99) > n
    assert required_n(0.9) == 1


def test_required_n_bad_input():
    for h in [0.0, -0.1, float("nan")]:
        with pytest.raises(ValueError, match="half_width"):
            required_n(h)
    with pytest.raises(ValueError, match="p"):
        required_n(0.01, p=1.5)
    with pytest.raises(ValueError, match="level"):
        required_n(0.01, level=0.0)
