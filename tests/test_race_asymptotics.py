"""The reduced race at large k (mvsim.race_asymptotics): reading the task's stop off a
population's fitting steps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mvsim import race_asymptotics as ra


def test_fit_steps_is_the_first_step_from_which_a_point_stays_fitted():
    steps = np.array([0, 10, 20, 30])
    margin = np.array([[-1, -1, -1], [1, -1, -1], [-1, 1, -1], [1, 1, -1]], float)  # (L, N)
    assert ra.fit_steps(steps, margin).tolist() == [30.0, 20.0, math.inf]


def test_task_stop_is_the_median_of_the_max_of_the_tasks_points():
    """Inside the sample: its 2^{−1/n} quantile. Beyond it: the Pareto tail fitted to the
    top tenth. A Pareto(2) sample of 10⁴ (fixed seed) has median max of n draws
    √(n/ln 2); the tail slope's standard error over 10³ points is ≈ 3%, which the
    extrapolation to survival ln2/n = 7·10⁻⁷ amplifies to ≈ 18% in the step (one σ):
    the margin is 3σ."""
    rng = np.random.default_rng(0)
    fits = 1.0 / np.sqrt(rng.uniform(size=10_000))  # survival x^{-2}
    assert ra.task_stop(fits, 10, T=10**9) == pytest.approx(np.quantile(fits, 2**-0.1))
    want = math.sqrt(1e6 / math.log(2))
    got = ra.task_stop(fits, 10**6, T=10**9)
    assert abs(math.log(got / want)) < 3 * 0.18
    assert ra.task_stop(fits, 10**6, T=100) == 100  # past the budget: T
    assert ra.task_stop(np.full(100, np.inf), 10, T=500) == 500  # nothing fitted


def _tiny():
    """A population of 3 classes of the demo task at k = 10 (one seed), to step 3,000 (the
    escapes come near step 400), at a tolerance of 10⁻²."""
    import jax
    import jax.numpy as jnp

    from mvsim import race_model

    cfg = ra.RULES["demo"](10)
    keys = jax.random.split(jax.random.key(1), 2)
    st = jax.tree.map(jnp.asarray, ra.population(cfg, 3, keys[0]))
    init = jax.tree.map(jnp.asarray, race_model.law_init(keys[1], cfg, st, 1, K=3))
    kw = dict(q=cfg.model.q, varrho=cfg.model.varrho, T=3000, n_log=cfg.train.n_log,
              rtol=1e-2)  # fmt: skip
    return cfg, init, st, cfg.train.eta * 3 / 10, kw


def test_segmented_flow_reads_as_one_integration():
    """Segments that restart from the saved state give the one integration's reading: the
    same views at every recorded step and the same fitting step for every point. Both
    integrations follow the exact flow to the tolerance (10⁻²), far inside what moves a
    reading here; a state not carried over, or saved times stitched one step off, moves
    the views' history, which changes inside the window (a class escapes in it)."""
    import jax

    cfg, init, st, eta, kw = _tiny()
    with jax.enable_x64(True):
        one = ra.integrate(init, st, eta, factor=math.inf, **kw)
        seg = ra.integrate(init, st, eta, factor=2.0, **kw)
    assert one["ok"] and seg["ok"] and one["end"] == seg["end"] == kw["T"]
    assert len(ra.segment_ends(one["steps"], 2.0)) > 5  # several restarts, not one
    np.testing.assert_array_equal(one["steps"], seg["steps"])
    views = lambda r: r["lam"] >= cfg.verify.view_threshold * cfg.model.varrho
    assert views(one)[:, 0].sum() < views(one)[:, -1].sum()  # an escape inside the window
    np.testing.assert_array_equal(views(seg), views(one))
    fits = lambda r: ra.fit_steps(r["steps"], r["margin"])
    assert np.isfinite(fits(one)).any()
    np.testing.assert_array_equal(fits(seg), fits(one))


def test_integration_ends_once_the_stop_is_recorded_and_stable():
    """With a fixed stop s* the integration ends at the first segment end ≥ s* (the
    estimate is then recorded and unchanged since the previous segment), and what it
    recorded is the start of the integration to T."""
    import jax

    cfg, init, st, eta, kw = _tiny()
    with jax.enable_x64(True):
        full = ra.integrate(init, st, eta, **kw)
        part = ra.integrate(init, st, eta, until=lambda s, m: 1000.0, **kw)
    ends = full["steps"][ra.segment_ends(full["steps"])]
    assert part["end"] == ends[ends >= 1000][0] < kw["T"]
    L = part["lam"].shape[1]
    np.testing.assert_array_equal(part["lam"], full["lam"][:, :L])
    np.testing.assert_array_equal(part["margin"], full["margin"][:, :L])
