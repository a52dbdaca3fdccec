"""Tests for mvsim.ntk: the infinite-width kernel, its checks, linearized models, the table.

Tolerances are derived, not tuned:
- Monte Carlo: the empirical NTK of M neurons is a mean of M i.i.d. per-neuron kernels, so
  it deviates from Θ by at most z·sd/√M per entry (CLT), z the Bonferroni normal quantile
  over the entries at family-wise level 1e-4; the series kernel adds its rigorous tail bound.
- Float64 linear algebra: residuals of a Cholesky solve are bounded by c·n·ε·‖K‖·‖α‖.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mvsim import model, ntk
from mvsim.config import make_config
from mvsim.stats import normal_quantile
from mvsim.train import precision
from mvsim.verify import Group

EPS64 = float(np.finfo(np.float64).eps)


def _patches(n: int = 3, P: int = 4, d: int = 8, seed: int = 0) -> jax.Array:
    """Random patches with norms in [0.3, 1.5] (σ_0|x| straddles ϱ = 1, so both pieces of
    σ' matter) and one near-duplicate patch pair (ρ ≈ 1, the hardest case for the series)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, P, d))
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    x *= rng.uniform(0.3, 1.5, size=(n, P, 1))
    x[1, 0] = 1.1 * x[0, 0]
    return jnp.asarray(x, jnp.float64)


def _cfg(**over):
    return make_config("tiny", {"ntk_sigma_0": 1.0, **over})


def test_nt_kernel_evaluates_on_tiny_input_and_fixed_readout_identity() -> None:
    """neural-tangents (through the compat module) evaluates Θ, and the 'ntk' of the stack
    without readout equals ntk − nngp of the stack with a trained readout (the readout's
    own gradient is the NNGP below it), to float rounding. (NT's Θ is not exactly
    symmetric: its 2-D rule conditions the second argument on the first, so the two
    orders carry different quadrature errors; see the convergence test.)"""
    cfg = _cfg(ntk_deg=32)
    with precision("float64"):
        x = _patches()
        theta = np.asarray(ntk.ntk_kernel_fn(cfg)(x))
        assert theta.shape == (3, 3) and np.isfinite(theta).all()
        assert (np.diag(theta) > 0).all()
        kf = ntk.ntk_stax(cfg, x.shape[-1], readout=True)[2]
        k = kf(x[:, :, None, :], None, ("nngp", "ntk"))
        np.testing.assert_allclose(np.asarray(k.ntk - k.nngp), theta, rtol=1e-10, atol=1e-12)


def test_nt_quadrature_converges_to_series_kernel() -> None:
    """NT's Gauss–Hermite quadrature of E[σ'σ'] converges to the series kernel. σ' has a
    derivative kink at ϱ, for which Gauss–Hermite converges at O(1/deg); 8× the degree
    must then cut the error by at least half that factor, 4×."""
    with precision("float64"):
        x = _patches()
        exact = ntk.series_kernel(_cfg(ntk_terms=64), x)
        err = {
            deg: np.abs(np.asarray(ntk.ntk_kernel_fn(_cfg(ntk_deg=deg))(x)) - exact).max()
            for deg in (32, 256)
        }
    bound = ntk.series_error_bound(_cfg(ntk_terms=64), x).max()
    assert err[256] <= err[32] / 4 + bound, err


def test_series_kernel_matches_monte_carlo_empirical_ntk() -> None:
    """Series Θ vs the empirical NTK of a wide finite network in plain JAX (readout fixed)."""
    cfg = _cfg(ntk_terms=32)
    M = 2**16
    with precision("float64"):
        x = _patches()
        W = cfg.ntk.ntk_sigma_0 * jax.random.normal(jax.random.key(1), (M, x.shape[-1]))
        theta_mc, sd = map(np.asarray, ntk.empirical_ntk(W, x, x, cfg.model.q, cfg.model.varrho))
        theta = ntk.series_kernel(cfg, x)
        bound = ntk.series_error_bound(cfg, x)
    n_entries = x.shape[0] * (x.shape[0] + 1) // 2  # symmetric: unique entries
    z = normal_quantile(1 - 1e-4 / (2 * n_entries))
    tol = z * sd / np.sqrt(M) + bound
    assert (np.abs(theta_mc - theta) <= tol).all(), (theta_mc - theta) / tol


def test_series_truncation_within_its_bound() -> None:
    """Kernels with 8 and 64 terms differ by no more than the sum of their error bounds."""
    with precision("float64"):
        x = _patches(seed=3)
        k8, k64 = (ntk.series_kernel(_cfg(ntk_terms=L), x) for L in (8, 64))
        b8, b64 = (ntk.series_error_bound(_cfg(ntk_terms=L), x) for L in (8, 64))
    assert (np.abs(k8 - k64) <= b8 + b64 + 1e-12).all()


def test_hermite_coefficients_bessel_and_completeness() -> None:
    """Σ_n α_n² ≤ E[g²] (Bessel) and the gap shrinks as terms grow (Parseval)."""
    with precision("float64"):
        a = jnp.array([0.0, 0.2, 1.0, 3.0])
        gaps = []
        for L in (16, 128):
            alpha, second = map(np.asarray, ntk.hermite_coefficients(a, 4, 1.0, L))
            gap = second - (alpha**2).sum(1)
            assert (gap >= -1e-14).all()
            gaps.append(gap)
    assert alpha[0].max() == 0 and second[0] == 0  # a zero patch contributes nothing
    assert (gaps[1][1:] < gaps[0][1:]).all()


def test_empirical_ntk_matches_neural_tangents_empirical_ntk_fn() -> None:
    """Our plain-JAX Jacobian NTK equals nt.empirical_ntk_fn (implementations 1 and 2) on
    the same finite network: the same number computed twice, so float64 rounding only."""
    nt = ntk.import_neural_tangents()
    q, varrho = 4, 1.0
    with precision("float64"):
        x1, x2 = _patches(seed=1), _patches(n=2, seed=2)
        W = jax.random.normal(jax.random.key(0), (64, x1.shape[-1]), jnp.float64)

        def f(W, x):
            pre = jnp.einsum("npd,md->npm", x, W)
            return model.smoothed_relu(pre, q, varrho).sum((1, 2))[:, None] / jnp.sqrt(64)

        ours = np.asarray(ntk.empirical_ntk(W, x1, x2, q, varrho)[0])
        for impl in (1, 2):
            fn = nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=0, implementation=impl)
            theirs = np.asarray(fn(x1, x2, W))[:, :, 0, 0]
            np.testing.assert_allclose(theirs, ours, rtol=1e-10, atol=1e-12)


def test_linearized_model_equals_network_at_init() -> None:
    """f_lin(W0, x) == f(W0, x) exactly (same W0; the tangent is exactly 0), W0 gets no
    gradient, and f_lin is affine in W."""
    cfg = make_config("tiny", {"ntk_m": 3, "ntk_sigma_0": 0.8})
    k, d = cfg.data.k, cfg.data.d
    lin = ntk.linearized_network(cfg, k, d)
    params = lin.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (5, cfg.data.P, d)) / np.sqrt(d)
    base = model.network(ntk.linearized._lin_model_cfg(cfg), k, d)
    np.testing.assert_array_equal(np.asarray(params[0]), np.asarray(base.init(jax.random.key(0))))
    np.testing.assert_array_equal(
        np.asarray(lin.apply(params, x)), np.asarray(base.apply(params[1], x))
    )
    grads = jax.grad(lambda p: lin.apply(p, x).sum())(params)
    assert not np.asarray(grads[1]).any() and np.asarray(grads[0]).any()
    delta = 0.1 * jax.random.normal(jax.random.key(2), params.shape[1:])
    f = lambda t: lin.apply(params.at[0].add(t * delta), x)
    np.testing.assert_allclose(f(2.0) - f(0.0), 2 * (f(1.0) - f(0.0)), rtol=1e-4, atol=1e-4)


def test_kernel_predictor_interpolates_training_set() -> None:
    """Infinite-time GD on the MSE reproduces the one-hot targets on the training inputs,
    up to the float64 Cholesky residual c·n·ε·‖K‖₂·‖α‖ (c = 4n for the solve's backward
    error, a pessimistic constant), and so classifies every training point right."""
    from mvsim import data
    from mvsim.verify import stream

    cfg = make_config("tiny")
    D = cfg.data
    V = data.features(stream(cfg, "features"), D.d, D.k)
    tr = data.training_set(stream(cfg, "data"), D, V)
    pred = ntk.kernel_predict(cfg, tr.x, tr.y, tr.x)
    Y = np.eye(D.k)[np.asarray(tr.y)]
    K = ntk.kernel_matrix(cfg, tr.x)
    alpha = np.linalg.solve((K + K.T) / 2, Y)
    n = K.shape[0]
    tol = 4 * n * n * EPS64 * np.linalg.norm(K, 2) * np.abs(alpha).max() * np.sqrt(n)
    assert np.abs(pred - Y).max() <= tol, (np.abs(pred - Y).max(), tol)
    assert (pred.argmax(1) == np.asarray(tr.y)).all()


def test_linearized_ensemble_approaches_infinite_width_at_monte_carlo_rate() -> None:
    """Issue 5: the ensemble of many wide linearized models approaches the infinite-width
    prediction. Each model is kernel regression with the empirical NTK of width M (a
    zero-centred linearized model at t → ∞); its kernel is a mean of M i.i.d. per-neuron
    kernels, so the mean of R such predictions deviates from kernel_predict's by
    Monte-Carlo error ∝ 1/√(M·R), plus an O(1/M) bias of the nonlinear predictor.

    Tolerance from the rate: over a 16× range of widths the distance must shrink by
    16^β with β ∈ [1/4, 3/4], the midpoints between 1/√M (β = 1/2) and its alternatives,
    a floor (β = 0: no convergence) and bias-dominated 1/M (β = 1); the per-model spread,
    which measures the Monte-Carlo fluctuation directly, must obey the same window; and
    each 4× step must bring the ensemble closer. The 32-term series kernel's own
    truncation moves p_∞ by 1.3e-4 relative here (measured against 128 terms), 1% of
    the smallest distance (measured: 0.046, 0.038, 0.015 at M = 64, 256, 1024)."""
    cfg = _cfg()
    widths, R = (64, 256, 1024), 16
    with precision("float64"):
        x = _patches(n=24, seed=4)
        y = jnp.arange(8) % cfg.data.k
        out = ntk.width_convergence(cfg, jax.random.key(0), x[:8], y, x[8:], widths, R)
    dist, spread = np.array(out["distance"]), np.array(out["spread"])
    info = {kk: np.round(out[kk], 4).tolist() for kk in ("distance", "spread", "mc_error")}
    assert (np.diff(dist) < 0).all(), info
    span = np.log(widths[-1] / widths[0])
    for name, v in (("distance", dist), ("spread", spread)):
        beta = np.log(v[0] / v[-1]) / span
        assert 0.25 <= beta <= 0.75, (name, beta, info)


def test_centered_objective_keeps_gradients() -> None:
    """Centring shifts the logits' values under stop_gradient only: for cross-entropy
    (shift-invariant) value and gradient are unchanged."""
    from mvsim.train import cross_entropy

    lg = jax.random.normal(jax.random.key(0), (6, 4)) + 30.0
    y = jnp.arange(6) % 4
    obj = ntk.centered_objective(cross_entropy)
    np.testing.assert_allclose(obj(lg, y, None), cross_entropy(lg, y), rtol=1e-5)
    np.testing.assert_allclose(
        jax.grad(obj)(lg, y, None), jax.grad(cross_entropy)(lg, y), rtol=1e-5, atol=1e-7
    )


@pytest.fixture(scope="module")
def tiny_table() -> tuple[dict, object]:
    cfg = make_config(
        "tiny",
        {
            "T": 30,
            "chunk": 30,
            "ntk_m": 4,
            "ntk_T": 40,
            "ntk_kd_T": 10,
            "ntk_seeds": 2,
            "ntk_avg_members": 2,
            "ntk_avg_seeds": 1,
            "ntk_kd_students": 1,
            "ntk_deep_teachers": 2,
            "ntk_n_test_multi": 150,
            "ntk_n_test_single": 100,
        },
    )
    rng = np.random.default_rng(0)
    fake = type("M", (), {})()  # the deep row only reads Measurements.groups
    fake.groups = {
        name: Group(name, rng.random((s, 300)) < 0.01, rng.random((s, 200)) < 0.3, np.ones(s))
        for name, s in (("single", 3), ("ensemble", 1), ("kd", 2), ("self_distillation", 2),
                        ("training_average", 2))
    }  # fmt: skip
    return ntk.run_ntk(cfg, fake), cfg


def test_run_ntk_returns_the_table_schema(tiny_table) -> None:
    out, cfg = tiny_table
    json.dumps(out)  # report.json-ready
    assert out["rows"] == ["deep", "linearized", "infinite"]
    assert out["columns"] == ["single", "ensemble", "training_average", "kd", "self_kd"]
    keys = {"error_over_mu", "ci95", "error_multi_view", "error_single_view", "n_test_multi",
            "n_test_single"}  # fmt: skip
    for row in out["rows"]:
        for col in out["columns"]:
            cell = out["table"][row][col]
            if row == "infinite" and col not in ("single", "ensemble"):
                assert cell is None  # no training average / distillation at infinite width
                continue
            assert keys <= set(cell), (row, col)
            lo, hi = cell["ci95"]
            assert lo <= cell["error_over_mu"] <= hi
    lin = out["table"]["linearized"]
    assert lin["single"]["n_test_multi"] == cfg.ntk.ntk_n_test_multi
    assert lin["single"]["n_test_single"] == cfg.ntk.ntk_n_test_single
    assert lin["kd_from_deep"] is not None
    assert out["table"]["deep"]["single"]["n_test_single"] == 200
    assert out["table"]["infinite"]["single"] == out["table"]["infinite"]["ensemble"]
    for name in ("ntk_ensemble_helps", "ntk_kd_fails", "ntk_average_helps",
                 "ntk_kd_fails_deep_teacher"):  # fmt: skip
        assert out["verdicts"][name]["verdict"] in ("PASS", "FAIL", "INCONCLUSIVE")
        assert out["verdicts"][name]["definition"]


def test_report_table_and_figure_show_the_ntk_table(tiny_table, tmp_path, monkeypatch) -> None:
    """report.table prints the table and every NTK verdict; plots.ntk_bars draws it, and
    all_figures draws it exactly when the report has an ``ntk`` entry. The report is a
    minimal stand-in around the tiny run's table, round-tripped through JSON as
    report.json would be."""
    from mvsim import plots, report

    out, cfg = tiny_table
    rep = {
        "preset": "tiny",
        "config": cfg.to_dict(),
        "backend": "cpu",
        "claims": [],
        "mechanism": {"frac_one_view": 1.0, "frac_two_views": 0.0, "frac_no_view": 0.0,
                      "lottery_prediction_accuracy": None, "memorisation": {}},
        "timing": {},
        "ntk": json.loads(json.dumps(out)),
    }  # fmt: skip
    text = report.table(rep)
    lines = text.splitlines()
    head = next(i for i, s in enumerate(lines) if s.startswith("error/μ [95% CI]"))
    for col in ("single", "ensemble", "training-average", "KD", "self-KD"):
        assert col in lines[head]
    for i, row in enumerate(("deep", "linearized", "infinite")):
        line = lines[head + 2 + i]
        for col in out["columns"]:
            cell = out["table"][row][col]
            if cell is None:
                continue
            lo, hi = cell["ci95"]
            assert f"{cell['error_over_mu']:.3f} [{lo:.3f}, {hi:.3f}]" in line, (row, col)
        assert line.count("—") == sum(out["table"][row][c] is None for c in out["columns"])
    for name, v in out["verdicts"].items():
        assert f"{name}: {v['verdict']} — {v['reason']}" in lines, name
    assert "ntk" not in report.table({kk: v for kk, v in rep.items() if kk != "ntk"}).lower()

    paths = plots.ntk_bars(rep, tmp_path)
    assert sorted(p.rsplit(".", 1)[1] for p in paths) == ["png", "svg"]
    assert all((tmp_path / p).stat().st_size > 0 for p in paths)
    for other in ("alignment_over_time", "view_matrix", "claims_vs_bounds", "comparison_bars"):
        monkeypatch.setattr(plots, other, lambda rep, out: [])
    assert [p.rsplit("/", 1)[1] for p in plots.all_figures(rep, tmp_path / "a")] == [
        "ntk_bars.png",
        "ntk_bars.svg",
    ]
    assert plots.all_figures({kk: v for kk, v in rep.items() if kk != "ntk"}, tmp_path) == []
