"""mvsim.mechanism: phase boundaries, the phase-1 power law, the lottery, memorisation;
and the figures drawn from them (mvsim.plots)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

import mvsim
from mvsim import mechanism, plots

ROOT = Path(__file__).resolve().parents[1]


def _tensor_power(x0: float, c: float, q: int, stop: float) -> np.ndarray:
    """x_{t+1} = x_t + c·x_t^{q−1} until x ≥ stop: the paper's phase-1 dynamics."""
    x = [x0]
    while x[-1] < stop:
        x.append(x[-1] + c * x[-1] ** (q - 1))
    return np.array(x)


@pytest.mark.parametrize("q", [3, 4, 5])
def test_power_law_slope_recovers_q_minus_1(q: int) -> None:
    """On exact tensor-power dynamics recorded every step, rate = c·x_t^{q−1} exactly and
    the geometric midpoint is x_t·√(1 + c·x_t^{q−2}): log Λ is off by ½·log(1 + c·x^{q−2}),
    whose derivative in log x, the slope's error, is ≤ ½·c·(q−2)·x^{q−2} ≤ 0.0019 over the
    fit range x ≤ 0.5 at c = 0.01, q ≤ 5: the slope is q − 1 to within 0.01."""
    c = 1e-2
    x = _tensor_power(0.1, c, q, stop=1.0)  # up to ϱ = 1
    steps = np.arange(len(x))
    lam = np.stack([x, np.full_like(x, 0.1)], -1)[:, None, :]  # (L, k=1, 2): loser flat
    mid, rate = mechanism.growth_rates(steps, lam)
    assert mid.shape == rate.shape == (len(x) - 1, 1, 2)
    slope = mechanism.power_law_slope(mid, rate, 0.1, 0.5)
    assert abs(slope - (q - 1)) < 0.01, slope
    # The flat loser has rate 0: excluded, it does not drag the slope to 0.
    assert np.isnan(mechanism.power_law_slope(mid[..., 1], rate[..., 1], 0.0, 1.0))


def test_power_law_slope_needs_points() -> None:
    mid = np.array([0.1, 0.2])
    assert np.isnan(mechanism.power_law_slope(mid, np.array([1.0, 2.0]), 0.0, 1.0))
    assert np.isnan(mechanism.power_law_slope(np.full(5, 0.3), np.ones(5), 0.0, 1.0))


def test_crossing_steps() -> None:
    steps = np.array([0, 1, 10, 100])
    lam = np.zeros((2, 4, 1, 2))  # (S, L, k, 2)
    lam[0, :, 0, 0] = [0.1, 0.5, 1.2, 3.0]  # reaches 1 at step 10
    lam[0, :, 0, 1] = [0.1, 0.1, 0.1, 0.1]  # never
    lam[1, :, 0, 0] = [1.0, 1.0, 1.0, 1.0]  # at init already
    lam[1, :, 0, 1] = [0.0, 0.0, 0.0, 1.0]  # at the last step
    got = mechanism.crossing_steps(steps, lam, 1.0)
    np.testing.assert_array_equal(got, [[[10, -1]], [[0, 100]]])


def test_initial_ratio_and_outcome() -> None:
    a = np.array([[[0.2, 0.1], [0.1, 0.4], [-0.1, 0.3], [0.2, -0.5]]])  # (1, k=4, 2)
    r = mechanism.initial_ratio(a)
    np.testing.assert_allclose(r[0, :3], [2.0, 0.25, 0.0])
    assert np.isinf(r[0, 3])
    views = np.array([[[True, False], [False, True], [True, True], [False, False]]])
    np.testing.assert_array_equal(mechanism.learned_outcome(views), [[1, 2, 3, 0]])
    assert mechanism.OUTCOMES[3] == "both views"


@pytest.fixture(scope="module")
def tiny_data():
    cfg = mvsim.make_config("tiny")
    V = mvsim.features(jax.random.key(0), cfg.data.d, cfg.data.k)
    batch, truth = mvsim.sample(
        jax.random.key(1), cfg.data, cfg.data.N, V, stratified=True, ground_truth=True
    )
    return cfg, V, batch, truth


def test_memorisation_split_matches_direct_evaluation(tiny_data) -> None:
    """Every row is F_y of that model on that point's features / noise, as apply gives."""
    cfg, V, batch, truth = tiny_data
    net = mvsim.network(cfg.model, cfg.data.k, cfg.data.d)
    params = jax.vmap(net.init)(jax.random.split(jax.random.key(2), 2))  # (S=2, k, m, d)
    views = np.zeros((2, cfg.data.k, 2), bool)
    views[0, :, 0] = True  # model 0 'learned' view 1 of every class, model 1 nothing
    pts = mvsim.memorisation_split(net.apply, params, batch, truth, views)
    n_sv = int(np.asarray(batch.single_view).sum())
    assert n_sv > 0 and all(len(v) == 2 * n_sv for v in pts.values())
    for row in (0, n_sv - 1, n_sv, 2 * n_sv - 1):
        s, i, y = pts["seed"][row], pts["index"][row], pts["y"][row]
        assert bool(batch.single_view[i]) and y == int(batch.y[i])
        feat = net.apply(params[s], (batch.x - truth.noise)[i : i + 1])[0, y]
        noise = net.apply(params[s], truth.noise[i : i + 1])[0, y]
        assert pts["F_y_features_only"][row] == pytest.approx(float(feat), rel=1e-4, abs=1e-6)
        assert pts["F_y_noise_only"][row] == pytest.approx(float(noise), rel=1e-4, abs=1e-6)
        strong = int(batch.strong_view[i])
        assert pts["strong_view_learned"][row] == (s == 0 and strong == 0)
    summary = mechanism.memorisation_summary(pts)
    learned = pts["strong_view_learned"]
    assert summary["learned_strong_view"]["n_points"] == learned.sum()
    assert summary["unlearned_strong_view"]["mean_F_y_noise_only"] == pytest.approx(
        pts["F_y_noise_only"][~learned].mean()
    )


def test_draw_patches_boxes_the_label(tiny_data) -> None:
    cfg, V, batch, truth = tiny_data
    fig = plots.draw_patches(batch, truth, [0, 1])
    axes = [a for a in fig.axes if a.images]
    assert len(axes) == 2
    img = axes[0].images[0].get_array()
    assert img.shape == (cfg.data.P, 2 * cfg.data.k)
    np.testing.assert_allclose(img, np.asarray(truth.coef[0]).reshape(cfg.data.P, -1))
    box = axes[0].patches[0]
    assert box.get_x() == pytest.approx(2 * int(batch.y[0]) - 0.5) and box.get_width() == 2


def test_kernel_matrix_figure_sorts_by_class() -> None:
    y = np.array([1, 0, 1, 0])
    kern = np.array([[4.0, 0, 2, 0], [0, 1, 0, 0.5], [2, 0, 1, 0], [0, 0.5, 0, 1]])
    fig = plots.draw_kernel_matrix(kern, y)
    cos = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(np.diag(cos), 1.0)
    np.testing.assert_allclose(cos[0, 1], 0.5)  # the two class-0 inputs: 0.5/√(1·1)
    np.testing.assert_allclose(cos[2, 3], 1.0)  # class 1: 2/√(4·1)


def test_old_reports_still_replot(tmp_path) -> None:
    """A report.json written before the mechanism figures existed (the committed demo,
    less the fields added since) re-plots: figures whose data it lacks are skipped, not
    crashed on."""
    rep = json.loads((ROOT / "docs" / "demo" / "report.json").read_text())
    mech = rep["mechanism"]
    for key in ("views", "init_alignment"):
        mech.pop(key, None)
    mech["memorisation"].pop("points", None)
    names = {Path(p).stem for p in plots.all_figures(rep, tmp_path)}
    assert {"alignment_over_time", "view_matrix", "claims_vs_bounds", "ntk_bars"} <= names
    assert "alignment_phases" in names  # needs only the history, which old reports have
    assert not {"lottery", "memorisation", "self_distillation_views"} & names


def test_phase1_intervals_end_when_the_class_learns_a_view() -> None:
    """Class 0: view 1 reaches ϱ = 1 at step 10, so its phase 1 is the intervals ending
    before step 10 — for both views, as view 2's later growth is phase-2 dynamics. Class 1
    never reaches ϱ: every interval is phase 1."""
    steps = np.array([0, 1, 3, 10, 30])
    lam = np.zeros((5, 2, 2))  # (L, k, 2)
    lam[:, 0, 0] = [0.1, 0.2, 0.5, 1.5, 3.0]
    lam[:, 0, 1] = [0.1, 0.1, 0.1, 0.2, 0.6]
    lam[:, 1, :] = 0.1
    mask = mechanism.phase1_intervals(steps, lam, 1.0)
    mid, _ = mechanism.growth_rates(steps, lam)
    assert mask.shape == mid.shape == (4, 2, 2)
    np.testing.assert_array_equal(mask[:, 0, 0], [True, True, False, False])
    np.testing.assert_array_equal(mask[:, 0, 1], mask[:, 0, 0])
    assert mask[:, 1].all()


def test_initial_ratio_distribution_m1_matches_the_closed_form():
    # m = 1: Λ = max(N, 0). A class with a view at 0 has r = 0 (prob. 3/4); for two positive
    # half-normals X/Y is |Cauchy|, so P(min/max < t) = (4/π)·arctan t.
    from mvsim.mechanism import initial_ratio_distribution
    from mvsim.stats import clopper_pearson_interval

    n = 200_000
    bins = (0.0, 0.5, 1.0)
    p = initial_ratio_distribution(1, bins, n=n, seed=3)
    exact = 0.75 + 0.25 * (4 / np.pi) * np.arctan(0.5)
    lo, hi = clopper_pearson_interval(int(round(p[0] * n)), n, 1 - 1e-6)
    assert lo <= exact <= hi
    assert p.sum() == pytest.approx(1.0)


def test_close_races_grow_with_m_and_the_prediction_weights_the_curve():
    from mvsim.mechanism import (
        RATIO_BINS,
        all_one_view_probability,
        initial_ratio_distribution,
        predicted_two_view_fraction,
    )

    close = [initial_ratio_distribution(m)[-2:].sum() for m in (1, 2, 4, 8)]
    assert all(a < b for a, b in zip(close, close[1:], strict=False))
    curve = [0.0] * (len(RATIO_BINS) - 2) + [1.0]  # only r ≥ 0.95 races end with two views
    assert predicted_two_view_fraction(4, curve) == pytest.approx(initial_ratio_distribution(4)[-1])
    assert predicted_two_view_fraction(4, [0.0] * (len(RATIO_BINS) - 1)) == 0.0
    assert all_one_view_probability(0.0, 10, 10) == 1.0
    assert all_one_view_probability(0.1, 2, 3) == pytest.approx(0.9**6)


def test_race_figure_from_the_committed_demo_report(tmp_path):
    rep = json.loads((Path(__file__).parents[1] / "docs/demo/report.json").read_text())
    rows = rep["mechanism"]["two_views_by_initial_ratio"]
    fig = plots.draw_race(rep)
    curve = [r["frac_two_views"] or 0.0 for r in rows]
    pred = mechanism.predicted_two_view_fraction(rep["config"]["model"]["m"], curve)
    assert f"{pred:.3f}" in fig.axes[0].get_title()
    two = sum((r["frac_two_views"] or 0.0) * r["classes"] for r in rows)
    assert f"{two / sum(r['classes'] for r in rows):.3f}" in fig.axes[0].get_title()
    assert {p.rsplit("/", 1)[-1] for p in plots.race(rep, tmp_path)} == {"race.png", "race.svg"}
