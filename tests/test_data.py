"""The sampler against Definition 3.1 (paper notes §1.2-1.4).

Every statistical check is a two-sided test at level ALPHA = 1e-3 whose acceptance region
is computed from the exact null distribution (binomial) or, for sums of many squares or
uniforms, from the CLT with the stated mean and variance. Seeds are fixed, so a check
either always passes or always fails; the level says how unlikely a correct sampler is to
land on a failing seed.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mvsim import data
from mvsim.config import make_config

ALPHA = 1e-3
Z = 3.2905  # two-sided 99.9% standard-normal quantile: P(|N(0,1)| > Z) = 1e-3
N_DRAW = 4000

# float32 tolerances. Views come from a float32 QR; x = coef @ V + noise is a float32
# matmul over 2k <= 8 terms with |coef| <= 1.6 and |V| <= 1: each rounding is at most
# eps32 = 1.2e-7 relative, so a few times 1e-7 per entry; 2e-6 leaves a 10x margin
# and is still ~1e4 below any real discrepancy (smallest z-sum 0.02, noise std 0.1/8).
TOL = 2e-6

# --- exact binomial acceptance region -------------------------------------------------------


def binom_region(n: int, p: float, alpha: float = ALPHA) -> tuple[int, int]:
    """Smallest [lo, hi] with P(X < lo) <= alpha/2 and P(X > hi) <= alpha/2, X ~ Bin(n, p).

    The pmf is summed exactly (log-gamma), so this is the two-sided exact binomial test
    (equal tails) with no normal approximation.
    """
    logs = [
        math.lgamma(n + 1)
        - math.lgamma(j + 1)
        - math.lgamma(n - j + 1)
        + (j * math.log(p) if j else 0.0)
        + ((n - j) * math.log1p(-p) if n - j else 0.0)
        for j in range(n + 1)
    ]
    pmf = np.exp(np.array(logs))
    cdf = np.cumsum(pmf)
    sf = np.cumsum(pmf[::-1])[::-1]  # sf[j] = P(X >= j)
    lo = int(np.searchsorted(cdf, alpha / 2, side="right"))  # P(X <= lo-1) <= alpha/2
    hi = int(np.nonzero(sf > alpha / 2)[0][-1])  # P(X >= hi+1) <= alpha/2
    return lo, hi


def assert_binomial(count: int, n: int, p: float, what: str) -> None:
    lo, hi = binom_region(n, p)
    assert lo <= count <= hi, f"{what}: {count}/{n}, expected in [{lo}, {hi}] for p = {p}"


def test_binom_region_sanity():
    # Bin(100, 0.5): P(X <= 33) = 4.4e-4 <= 5e-4 < P(X <= 34) = 8.9e-4, symmetric.
    assert binom_region(100, 0.5) == (34, 66)
    lo, hi = binom_region(4000, 0.375)
    sd = math.sqrt(4000 * 0.375 * 0.625)
    assert abs((hi - 1500) / sd - Z) < 0.1 and abs((1500 - lo) / sd - Z) < 0.1


# --- cases ------------------------------------------------------------------------------

# name: (overrides of the tiny preset, view). Every (config, n, view, stratified) costs one
# XLA compile of the sampler (~2-3 s on 2 shared cores), so each case is drawn once
# (cached), and the views are spread over the cases: the tiny preset as pure D_m (the
# draw test_train trains on), cp2_random as pure D_s, cp2_equal as the stratified
# training set of its config (N = N_DRAW, drawn exactly as training_set draws it), and
# the i.i.d. mixture on the mu = 0.5 cases.
CASES = {
    # tiny: k = 4, d = 64, P = 8, C_p = 1, s = 1.5, max_noisy = 6 = 2(k-1) (never binds).
    "tiny_multi": ({}, "multi"),
    "cp2_equal": (
        {
            "C_p": 2,
            "P": 16,
            "max_noisy": None,
            "z_split": "equal",
            "mu": 0.5,
            "own_z": (1.0, 1.5),
            "N": N_DRAW,
        },
        "stratified",
    ),
    "cp2_random": (
        {"C_p": 2, "P": 16, "max_noisy": None, "z_split": "random", "mu": 0.5, "own_z": (1.0, 1.5)},
        "single",
    ),
    "gamma": ({"gamma": 0.05, "mu": 0.5, "own_z": (1.0, 1.5)}, "mixed"),
    # isotropic noise; also a binding cap: s = 3 with max_noisy = 2 truncates often.
    "isotropic": ({"project_noise": False, "s": 3.0, "max_noisy": 2, "mu": 0.5}, "mixed"),
}
MIXED = [c for c, (_, v) in CASES.items() if v == "mixed"]  # i.i.d. mixtures


@functools.cache
def cfg_of(case: str):
    return make_config("tiny", CASES[case][0]).data


@functools.cache
def views(case: str):
    cfg = cfg_of(case)
    return data.features(jax.random.PRNGKey(7), cfg.d, cfg.k)


@functools.cache
def draw(case: str):
    """One (Batch, GroundTruth) of N_DRAW points per case, as float64 numpy arrays (ints
    stay ints)."""
    cfg = cfg_of(case)
    view = CASES[case][1]
    batch, truth = data.sample(
        jax.random.PRNGKey(11),
        cfg,
        N_DRAW,
        views(case),
        view="mixed" if view == "stratified" else view,
        stratified=view == "stratified",
        ground_truth=True,
    )
    to_np = lambda a: (
        np.asarray(a, np.float64) if jnp.issubdtype(a.dtype, jnp.floating) else (np.asarray(a))
    )
    return batch._replace(**{f: to_np(v) for f, v in batch._asdict().items()}), truth._replace(
        **{f: to_np(v) for f, v in truth._asdict().items()}
    )


def patch_mask(truth) -> np.ndarray:
    """(n, P, k, 2) bool: patch p belongs to P_v(X) of a present feature v."""
    n, P, k, _ = truth.coef.shape
    mask = np.zeros((n, P, k, 2), bool)
    ni, ji, li, ci = np.nonzero(np.broadcast_to(truth.present[..., None], truth.patches.shape))
    mask[ni, truth.patches[ni, ji, li, ci], ji, li] = True
    return mask


def own_mask(batch, k: int) -> np.ndarray:
    return np.broadcast_to(
        (np.arange(k)[None, :] == batch.y[:, None])[:, :, None], (batch.y.shape[0], k, 2)
    )


ALL = list(CASES)


# --- views and reconstruction -------------------------------------------------------------


@pytest.mark.parametrize("case", ALL)
def test_views_orthonormal(case):
    cfg = cfg_of(case)
    V = np.asarray(views(case), np.float64)
    assert V.shape == (cfg.k, 2, cfg.d)
    Vf = V.reshape(2 * cfg.k, cfg.d)
    assert np.abs(Vf @ Vf.T - np.eye(2 * cfg.k)).max() < TOL


@pytest.mark.parametrize("case", ALL)
def test_x_reconstructed_from_ground_truth(case):
    batch, truth = draw(case)
    cfg = cfg_of(case)
    V = np.asarray(views(case), np.float64)
    assert batch.x.shape == (N_DRAW, cfg.P, cfg.d)
    rec = np.einsum("npkl,kld->npd", truth.coef, V) + truth.noise
    assert np.abs(rec - batch.x).max() < TOL


# --- z-sums ------------------------------------------------------------------------------


def _z_categories(case: str):
    """Boolean masks (n, k, 2) of each row of the notes' §1.2 table, with its range."""
    batch, truth = draw(case)
    cfg = cfg_of(case)
    own = own_mask(batch, cfg.k)
    single = batch.single_view[:, None, None]
    ell = np.arange(2)[None, None, :]
    strong = own & single & (ell == batch.strong_view[:, None, None])
    weak = own & single & (ell != batch.strong_view[:, None, None])
    noisy = truth.present & ~own
    return {
        "own (D_m)": (own & ~single, cfg.own_z),
        "strong (D_s)": (strong, cfg.own_z),
        "weak (D_s)": (weak, cfg.rho),
        "noisy (D_m)": (noisy & ~single, cfg.noisy_z_multi),
        "noisy (D_s)": (noisy & single, cfg.Gamma),
    }


@pytest.mark.parametrize("case", ALL)
def test_zsums_in_configured_ranges(case):
    batch, truth = draw(case)
    cats = _z_categories(case)
    covered = np.zeros(truth.zsum.shape, bool)
    view = CASES[case][1]
    mixed = view in ("mixed", "stratified")
    for name, (mask, (lo, hi)) in cats.items():
        z = truth.zsum[mask]
        # every category occurs, except D_m ones in a pure D_s set and vice versa
        assert (z.size > 0) == (mixed or ("D_s" in name) == (view == "single")), name
        if z.size == 0:
            continue
        assert z.min() >= lo - TOL and z.max() <= hi + TOL, (name, z.min(), z.max(), lo, hi)
        covered |= mask
    assert np.array_equal(covered, truth.present)
    assert np.all(truth.zsum[~truth.present] == 0)


@pytest.mark.parametrize("case", ["cp2_equal", "gamma"])
def test_zsums_fill_their_ranges(case):
    """z is drawn uniformly in its range, not at a fixed point of it.

    For M i.i.d. U[lo, hi] draws, P(min > lo + eps(hi - lo)) = (1 - eps)^M; with eps =
    0.05 and M >= 300 (checked) this is <= 0.95^300 = 2e-7, and the same for the max.
    """
    eps = 0.05
    for name, (mask, (lo, hi)) in _z_categories(case).items():
        if hi == lo:
            continue
        z = draw(case)[1].zsum[mask]
        assert z.size >= 300, name
        assert z.min() < lo + eps * (hi - lo) and z.max() > hi - eps * (hi - lo), name


@pytest.mark.parametrize("case", ["tiny_multi", "cp2_equal", "cp2_random", "isotropic"])
def test_patch_coefficients_sum_to_zsum(case):
    """gamma = 0: a feature's coefficient is z_p on its C_p patches and 0 elsewhere."""
    _, truth = draw(case)
    mask = patch_mask(truth)
    assert np.all(truth.coef[~mask] == 0)
    assert np.all(truth.coef[mask] > 0)
    np.testing.assert_allclose(truth.coef.sum(1), truth.zsum, atol=TOL, rtol=0)
    # each patch carries at most one feature
    assert (truth.coef != 0).sum((2, 3)).max() <= 1


def test_equal_and_random_split():
    C = 2
    _, eq = draw("cp2_equal")
    m = patch_mask(eq)
    per_patch = eq.coef[m]  # every entry should be zsum / C
    zs = np.broadcast_to(eq.zsum[:, None], eq.coef.shape)[m]
    np.testing.assert_allclose(per_patch, zs / C, rtol=1e-6)

    _, rnd = draw("cp2_random")
    ni, ji, li = np.nonzero(rnd.present)
    first = rnd.coef[ni, rnd.patches[ni, ji, li, 0], ji, li] / rnd.zsum[ni, ji, li]
    M = first.size
    # Flat Dirichlet with C = 2: the first share is U(0, 1), mean 1/2, sd 1/sqrt(12 M),
    # and each quarter of [0, 1] holds Bin(M, 1/4) of the shares (Bonferroni over 4).
    assert abs(first.mean() - 0.5) < Z / math.sqrt(12 * M), (first.mean(), M)
    lo, hi = binom_region(M, 0.25, ALPHA / 4)
    for q in range(4):
        count = int(np.sum((first >= q / 4) & (first < (q + 1) / 4)))
        assert lo <= count <= hi, (q, count, lo, hi)
    # ... and P(share within 1e-3 of 1/2) = 2e-3, so nearly all splits are unequal; "more
    # than half equal" would need Bin(M, 2e-3) > M/2, impossible at M in the thousands.
    assert np.mean(np.abs(first - 0.5) > 1e-3) > 0.5


def test_gamma_feature_noise():
    gamma = cfg_of("gamma").gamma
    _, truth = draw("gamma")
    mask = patch_mask(truth)
    # C_p = 1: a feature patch's coefficient is z + alpha, alpha in [0, gamma].
    alpha_feat = truth.coef[mask] - np.broadcast_to(truth.zsum[:, None], truth.coef.shape)[mask]
    alpha_rest = truth.coef[~mask]
    for a in (alpha_feat, alpha_rest):
        assert a.min() >= -TOL and a.max() <= gamma + TOL
    # alpha ~ U[0, gamma] i.i.d.: the mean of M of them has sd gamma/sqrt(12 M).
    M = alpha_rest.size
    assert abs(alpha_rest.mean() - gamma / 2) < Z * gamma / math.sqrt(12 * M)


# --- feature sets and patches ---------------------------------------------------------------


@pytest.mark.parametrize("case", ALL)
def test_patch_sets_disjoint_and_own_views_present(case):
    batch, truth = draw(case)
    cfg = cfg_of(case)
    n = N_DRAW
    assert truth.patches.shape == (n, cfg.k, 2, cfg.C_p)
    counts = np.zeros((n, cfg.P), int)
    ni, ji, li, ci = np.nonzero(np.broadcast_to(truth.present[..., None], truth.patches.shape))
    np.add.at(counts, (ni, truth.patches[ni, ji, li, ci]), 1)
    assert counts.max() <= 1  # disjoint, and C_p distinct patches per feature
    np.testing.assert_array_equal(counts.sum(1), cfg.C_p * truth.present.sum((1, 2)))
    assert truth.patches.min() >= 0 and truth.patches.max() < cfg.P
    # the own class: both views, nothing more from it (own views take own_z / rho,
    # never a noisy range, which test_zsums_in_configured_ranges checks)
    assert np.all(truth.present[np.arange(n), batch.y])
    own = own_mask(batch, cfg.k)
    noisy = truth.present & ~own
    assert not np.any(noisy[np.arange(n), batch.y])
    assert noisy.sum((1, 2)).max() <= cfg.noisy_cap
    assert np.all(batch.y >= 0) and np.all(batch.y < cfg.k)


@pytest.mark.parametrize("case", ["tiny_multi", "cp2_equal", "cp2_random"])
def test_noisy_inclusion_rate_uncapped(case):
    """Each of the 2(k-1) other-class views is in V'(X) independently with prob. s/k."""
    batch, truth = draw(case)
    cfg = cfg_of(case)
    assert cfg.noisy_cap == 2 * (cfg.k - 1)  # the cap cannot bind ...
    assert np.all(truth.n_noisy_dropped == 0)  # ... and did not
    noisy = truth.present & ~own_mask(batch, cfg.k)
    trials = N_DRAW * 2 * (cfg.k - 1)
    assert_binomial(int(noisy.sum()), trials, cfg.s / cfg.k, "noisy features")


def test_noisy_inclusion_rate_with_cap():
    """With a binding cap, the draws before the cap are Bin(., s/k); min(draws, cap) kept."""
    batch, truth = draw("isotropic")
    cfg = cfg_of("isotropic")
    kept = (truth.present & ~own_mask(batch, cfg.k)).sum((1, 2))
    drawn = kept + truth.n_noisy_dropped
    np.testing.assert_array_equal(kept, np.minimum(drawn, cfg.max_noisy))
    assert truth.n_noisy_dropped.max() > 0  # the cap does bind in this case
    trials = N_DRAW * 2 * (cfg.k - 1)
    assert_binomial(int(drawn.sum()), trials, cfg.s / cfg.k, "noisy features before cap")


# --- labels and views -----------------------------------------------------------------------


@pytest.mark.parametrize("case", MIXED)
def test_mixed_single_view_fraction_and_labels(case):
    batch, _ = draw(case)
    cfg = cfg_of(case)
    assert_binomial(int(batch.single_view.sum()), N_DRAW, cfg.mu, "single-view points")
    # labels uniform: each class count ~ Bin(n, 1/k); Bonferroni over k classes
    for j in range(cfg.k):
        lo, hi = binom_region(N_DRAW, 1 / cfg.k, ALPHA / cfg.k)
        assert lo <= int((batch.y == j).sum()) <= hi, j
    np.testing.assert_array_equal(batch.strong_view == -1, ~batch.single_view)
    assert set(np.unique(batch.strong_view[batch.single_view])) <= {0, 1}


def test_pure_view_sets_and_strong_view_uniform():
    single, st = draw("cp2_random")
    multi, mt = draw("tiny_multi")
    assert single.single_view.all() and not multi.single_view.any()
    assert np.all(multi.strong_view == -1)
    assert set(np.unique(single.strong_view)) == {0, 1}
    # ℓ̂ ~ U{0, 1}: count of ℓ̂ = 1 is Bin(n, 1/2)
    assert_binomial(int((single.strong_view == 1).sum()), N_DRAW, 0.5, "strong view 1")
    cfg, cfg_m = cfg_of("cp2_random"), cfg_of("tiny_multi")
    # the z-sums follow the view: the weak view in rho, the strong one in own_z
    rows = np.arange(N_DRAW)
    weak = st.zsum[rows, single.y, 1 - single.strong_view]
    assert weak.min() >= cfg.rho[0] - TOL and weak.max() <= cfg.rho[1] + TOL
    strong = st.zsum[rows, single.y, single.strong_view]
    assert strong.min() >= cfg.own_z[0] - TOL and strong.max() <= cfg.own_z[1] + TOL
    both = mt.zsum[rows, multi.y]
    assert both.min() >= cfg_m.own_z[0] - TOL and both.max() <= cfg_m.own_z[1] + TOL
    # with view='single' there are no D_m noisy z's: every noisy one is in Gamma
    noisy = st.present & ~own_mask(single, cfg.k)
    z = st.zsum[noisy]
    assert z.min() >= cfg.Gamma[0] - TOL and z.max() <= cfg.Gamma[1] + TOL


def test_stratified_training_set():
    cfg = cfg_of("cp2_equal")
    assert cfg.train_composition == "stratified" and cfg.N == N_DRAW
    b = data.training_set(jax.random.PRNGKey(3), cfg, views("cp2_equal"))
    assert b.x.shape == (cfg.N, cfg.P, cfg.d)
    y, sv, st = (np.asarray(a) for a in (b.y, b.single_view, b.strong_view))
    n_single = round(cfg.mu * cfg.N)  # 2000: 250 per (class, view)
    assert sv.sum() == n_single
    per = n_single // (2 * cfg.k)
    for j in range(cfg.k):
        for ell in range(2):
            assert np.sum(sv & (y == j) & (st == ell)) == per, (j, ell)
        assert np.sum(~sv & (y == j)) == (cfg.N - n_single) // cfg.k
    np.testing.assert_array_equal(st == -1, ~sv)


# --- noise ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ALL)
def test_noise_projection(case):
    cfg = cfg_of(case)
    _, truth = draw(case)
    Vf = np.asarray(views(case), np.float64).reshape(2 * cfg.k, cfg.d)
    along = np.abs(truth.noise @ Vf.T)
    if cfg.project_noise:
        # float32 projection residual: ~eps32 * |xi| * sqrt(d) ~ 1e-7 * 1 * 8; bound 1e-5
        assert along.max() < 1e-5
    else:
        # isotropic: <xi, v> ~ N(0, sigma^2), sigma = sigma_n = 10 sigma_p on noise-only
        # patches; P(|N(0, sigma_n)| < sigma_p) = 0.08, so P(all ~10^5 of them are) ~ 0
        assert along.max() > cfg.sigma_p


@pytest.mark.parametrize("case", ALL)
def test_noise_scale(case):
    """Per-coordinate std sigma_n on noise-only patches and sigma_p on feature patches.

    Projected noise is xi - V^T V xi with xi ~ N(0, sigma^2 I_d): its squared norm is
    sigma^2 chi^2_{d-2k} (isotropic: chi^2_d), i.e. a per-coordinate variance of
    sigma^2 (d - 2k)/d on average. Summed over M patches, S/sigma^2 ~ chi^2_{M dof},
    mean M dof, variance 2 M dof; with M dof >= 10^5 the normal approximation is exact
    to well within the margin, so |S/sigma^2 - M dof| <= Z sqrt(2 M dof).
    """
    cfg = cfg_of(case)
    _, truth = draw(case)
    feat = patch_mask(truth).any((2, 3))  # (n, P)
    dof = cfg.d - 2 * cfg.k if cfg.project_noise else cfg.d
    for where, sigma in ((~feat, cfg.sigma_n), (feat, cfg.sigma_p)):
        ss = float(np.sum(truth.noise[where] ** 2)) / sigma**2
        M = int(where.sum()) * dof
        assert M >= 1e5
        assert abs(ss - M) <= Z * math.sqrt(2 * M), (ss / M, Z * math.sqrt(2 / M))


# --- determinism and chunking ---------------------------------------------------------------


def test_same_key_same_data_different_key_differs():
    cfg = cfg_of("tiny_multi")
    V = views("tiny_multi")
    a, ta = data.sample(jax.random.PRNGKey(11), cfg, N_DRAW, V, view="multi", ground_truth=True)
    b, tb = draw("tiny_multi")
    for f in a._fields:
        np.testing.assert_array_equal(np.asarray(getattr(a, f), getattr(b, f).dtype), getattr(b, f))
    for f in ta._fields:
        np.testing.assert_array_equal(
            np.asarray(getattr(ta, f), getattr(tb, f).dtype), getattr(tb, f)
        )
    c = data.sample(jax.random.PRNGKey(12), cfg, N_DRAW, V, view="multi")
    assert not np.array_equal(np.asarray(c.x), np.asarray(a.x))
    assert not np.array_equal(np.asarray(c.y), np.asarray(a.y))
    V2 = data.features(jax.random.PRNGKey(8), cfg.d, cfg.k)
    assert not np.allclose(np.asarray(V2), np.asarray(V))
    np.testing.assert_array_equal(
        np.asarray(data.features(jax.random.PRNGKey(7), cfg.d, cfg.k)), np.asarray(V)
    )


def test_iter_chunks_sizes_and_determinism():
    cfg = cfg_of("tiny_multi")
    V = views("tiny_multi")
    key = jax.random.PRNGKey(5)
    n, chunk = 2 * N_DRAW + 123, N_DRAW  # same shapes as draw("tiny_multi"): no new compile
    chunks = list(data.iter_chunks(key, cfg, n, V, "multi", chunk=chunk))
    assert [c.x.shape[0] for c in chunks] == [chunk, chunk, 123]
    assert sum(c.y.shape[0] for c in chunks) == n
    for c in chunks:
        assert {a.shape[0] for a in c} == {c.x.shape[0]}
    again = list(data.iter_chunks(key, cfg, n, V, "multi", chunk=chunk))
    for c1, c2 in zip(chunks, again, strict=True):
        np.testing.assert_array_equal(np.asarray(c1.x), np.asarray(c2.x))
    first = data.sample(jax.random.split(key, 3)[0], cfg, chunk, V, view="multi")
    np.testing.assert_array_equal(np.asarray(first.x), np.asarray(chunks[0].x))
    assert not np.array_equal(np.asarray(chunks[0].x), np.asarray(chunks[1].x))


def test_sample_rejects_bad_arguments():
    cfg = cfg_of("tiny_multi")
    with pytest.raises(ValueError, match="view"):
        data.sample(jax.random.PRNGKey(0), cfg, 4, views("tiny_multi"), view="both")
    with pytest.raises(ValueError, match="n = 0"):
        data.sample(jax.random.PRNGKey(0), cfg, 0, views("tiny_multi"))
