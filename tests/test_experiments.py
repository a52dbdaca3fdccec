"""The supporting experiments (issue 8): the Gaussian family, neuron dropping, the gain
verdict, theory-scaling; end-to-end runs on tiny settings."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mvsim import cli, data, model
from mvsim.config import ConfigError, make_config
from mvsim.experiments import dropping, gaussian, theory_scaling
from mvsim.stats import Verdict, clopper_pearson_interval

# --- the Gaussian family -----------------------------------------------------------------


def _gauss(n: int, stratified: bool, **kw):
    cfg = make_config("tiny", {"family": "gaussian", **kw})
    V = data.features(jax.random.key(0), cfg.data.d, cfg.data.k)
    b, t = data.sample(jax.random.key(1), cfg.data, n, V, stratified=stratified,
                       ground_truth=True)  # fmt: skip
    return cfg, V, b, t


def test_gaussian_sampler_shapes_and_labels():
    cfg, V, b, t = _gauss(1000, False)
    k, P, d = cfg.data.k, cfg.data.P, cfg.data.d
    assert b.x.shape == (1000, P, d) and b.y.shape == (1000,)
    y = np.asarray(b.y)
    assert y.min() >= 0 and y.max() < k
    assert not np.asarray(b.single_view).any() and (np.asarray(b.strong_view) == -1).all()
    # x is exactly its ground truth: mean part + noise
    rebuilt = jnp.einsum("npkl,kld->npd", t.coef, V) + t.noise
    np.testing.assert_allclose(np.asarray(b.x), np.asarray(rebuilt), atol=1e-5)
    # the view argument selects nothing in this family
    b2 = data.sample(jax.random.key(1), cfg.data, 1000, V, view="single")
    np.testing.assert_array_equal(np.asarray(b2.x), np.asarray(b.x))


def test_gaussian_class_balance_within_binomial_margins():
    n = 4000
    cfg, _, b, _ = _gauss(n, False)
    k = cfg.data.k
    counts = np.bincount(np.asarray(b.y), minlength=k)
    # each count ~ Bin(n, 1/k); all k exact intervals at a joint 99.9% must contain 1/k
    for c in counts:
        lo, hi = clopper_pearson_interval(int(c), n, 1 - 0.001 / k)
        assert lo < 1 / k < hi, counts
    _, _, bs, _ = _gauss(4 * k + 2, True)
    assert np.bincount(np.asarray(bs.y), minlength=k).tolist() == [5, 5, 4, 4]


def test_gaussian_mean_and_covariance():
    """Projections on the class direction have mean a, other directions mean 0, and the
    noise is isotropic with std σ_n even along the views (not projected off)."""
    n = 2000
    cfg, V, b, _ = _gauss(n, False, project_noise=True)  # ignored by this family
    a, sig = data.gaussian_mean(cfg.data), cfg.data.sigma_n
    x, y = np.asarray(b.x, np.float64), np.asarray(b.y)
    Vn = np.asarray(V, np.float64)
    own = np.einsum("npd,nd->np", x, Vn[y, 0]).ravel()  # n·P samples of N(a, σ²)
    other = np.einsum("npd,nd->np", x, Vn[(y + 1) % cfg.data.k, 0]).ravel()  # N(0, σ²)
    m = own.size
    # 6 standard errors: a false alarm has probability < 1e-8 per check
    assert abs(own.mean() - a) < 6 * sig / math.sqrt(m)
    assert abs(other.mean()) < 6 * sig / math.sqrt(m)
    # variance of m normals: relative s.e. sqrt(2/m)
    assert abs(own.var() / sig**2 - 1) < 6 * math.sqrt(2 / m)
    assert abs(a - cfg.data.gauss_sep * sig / math.sqrt(2 * cfg.data.P)) < 1e-12


def test_gaussian_bayes_error_matches_closed_form_and_monte_carlo():
    # k = 2: Φ(−Δ/2)
    for sep in (1.0, 3.0, 6.0):
        assert data.gaussian_bayes_error(2, sep) == pytest.approx(
            0.5 * math.erfc(sep / 2 / math.sqrt(2)), abs=1e-9
        )
    # k = 5 against simulated optimal decisions on the projected scores
    rng = np.random.default_rng(0)
    k, sep, n = 5, 3.0, 200_000
    s = rng.standard_normal((n, k))
    s[:, 0] += sep / math.sqrt(2)
    err = int((s[:, 1:].max(1) > s[:, 0]).sum())
    lo, hi = clopper_pearson_interval(err, n, 0.999)
    assert lo < data.gaussian_bayes_error(k, sep) < hi
    with pytest.raises(ValueError):
        data.gaussian_bayes_error(1, 3.0)


@pytest.mark.parametrize(
    "field,value",
    [("family", "mixture"), ("gauss_sep", 0.0), ("gauss_sep", -1.0), ("drop_threshold", 0.0),
     ("gauss_gain_ratio", 1.5), ("exp_n_test_multi", 0), ("exp_n_test_single", -3)],
)  # fmt: skip
def test_bad_experiment_fields_are_config_errors(field, value):
    with pytest.raises(ConfigError) as e:
        make_config("tiny", {field: value})
    assert e.value.field == field


def test_default_family_is_multiview_and_unchanged():
    cfg = make_config("tiny")
    assert cfg.data.family == "multiview"
    V = data.features(jax.random.key(0), cfg.data.d, cfg.data.k)
    b = data.sample(jax.random.key(1), cfg.data, 50, V)
    assert np.asarray(b.single_view).dtype == bool  # the Definition-3.1 sampler ran


# --- dropping -------------------------------------------------------------------------------


def test_neuron_outputs_sum_to_the_network():
    cfg = make_config("tiny")
    W = model.init_weights(jax.random.key(0), cfg.model, 4, cfg.data.d) * 20
    x = jax.random.normal(jax.random.key(1), (7, cfg.data.P, cfg.data.d)) * 0.3
    G = dropping.neuron_outputs(W, x, cfg.model.q, cfg.model.varrho)
    assert G.shape == (7, 4, cfg.model.m)
    np.testing.assert_allclose(
        np.asarray(G.sum(-1)), np.asarray(model.apply(W, x, cfg.model.q, cfg.model.varrho)),
        rtol=1e-5, atol=1e-6,
    )  # fmt: skip


def test_drop_mask_zeroes_only_neurons_on_learned_views():
    k, m, d = 2, 3, 8
    V = jnp.eye(d)[: 2 * k].reshape(k, 2, d)
    W = jnp.zeros((k, m, d))
    W = W.at[0, 0].set(V[0, 0] * 0.9)  # class 0 neuron 0 on view 0
    W = W.at[0, 1].set(V[0, 1] * 0.9)  # class 0 neuron 1 on view 1
    W = W.at[1, 2].set(V[1, 1] * 0.1)  # below threshold
    views = jnp.array([[True, False], [False, True]])
    mask = np.asarray(dropping.drop_mask(W, V, views, 0.25))
    assert mask.tolist() == [[True, False, False], [False, False, False]]


def test_other_view_mask():
    views = np.array(
        [[[True, False]], [[False, True]], [[True, False]], [[True, True]]]
    )  # 4 seeds, 1 class
    m = dropping._other_view_mask(views)[:, :, 0]
    # seed 0 (learned view 0) is complemented by seeds learning view 1: 1 and 3
    assert m[0].tolist() == [False, True, False, True]
    assert m[1].tolist() == [True, False, True, True]
    assert not m[3].any()  # a two-view class has no "other view"


@pytest.fixture(scope="module")
def drop_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("dropping")
    rc = cli.main(["experiment", "dropping", "--preset", "tiny", "--no-progress",
                   "--set", "T=600", "--set", "exp_n_test_multi=600",
                   "--set", "exp_n_test_single=600", "--out", str(out)])  # fmt: skip
    assert rc == 0
    return json.loads((out / "report.json").read_text()), out


def test_dropping_report(drop_report):
    rep, out = drop_report
    assert rep["experiment"] == "dropping" and rep["config"]["data"]["k"] == 4
    assert (out / "figures" / "dropping.png").exists() and (
        out / "figures" / "dropping.svg"
    ).exists()
    page = (out / "report.html").read_text(encoding="utf-8")  # `--out` writes the page too
    assert "mvsim experiment dropping" in page and page.count("<svg") == 1
    for r in rep["rows"]:
        assert all(v is None or isinstance(v, str | int | float | bool) for v in r.values())
        assert all(not (isinstance(v, float) and not math.isfinite(v)) for v in r.values())
        if r["n_evaluations"]:
            # zeroing neurons only lowers F_y: no point goes from wrong to right
            assert r["acc_after"] <= r["acc_before"] + 1e-12
            for mod in dropping.MODELS:
                a = r[f"acc_{mod}"]
                if a is not None:
                    assert r[f"acc_{mod}_ci_lo"] <= a <= r[f"acc_{mod}_ci_hi"]
    pooled = {r["category"]: r for r in rep["rows"] if r["seed"] == -1}
    seeds = rep["summary"]["seeds"]
    for cat, r in pooled.items():
        per_seed = [x for x in rep["rows"] if x["category"] == cat and x["seed"] >= 0]
        assert len(per_seed) == seeds
        assert sum(x["n_evaluations"] for x in per_seed) == r["n_evaluations"]


# --- the Gaussian control's verdict ----------------------------------------------------------


def test_relative_gain_box_ci():
    r, lo, hi = gaussian.relative_gain((0.1, 0.08, 0.12), (0.2, 0.18, 0.22))
    assert r == pytest.approx(0.5)
    assert lo == pytest.approx(1 - 0.12 / 0.18) and hi == pytest.approx(1 - 0.08 / 0.22)
    assert gaussian.relative_gain((0.0, 0.0, 0.01), (0.0, 0.0, 0.01))[1] == -math.inf


@pytest.mark.parametrize(
    "r_gauss,r_multi,single_lo,expected",
    [
        ((0.02, -0.03, 0.07), (0.99, 0.95, 1.0), 0.1, Verdict.PASS),  # far smaller
        ((0.5, 0.4, 0.6), (0.99, 0.95, 1.0), 0.1, Verdict.FAIL),  # comparable
        ((0.1, -0.2, 0.4), (0.99, 0.95, 1.0), 0.1, Verdict.INCONCLUSIVE),  # straddles 0.19
        ((0.0, -1.0, 1.0), (0.99, 0.95, 1.0), 0.0, Verdict.INCONCLUSIVE),  # zero error
        ((0.0, -0.1, 0.1), (0.3, -0.1, 0.6), 0.1, Verdict.INCONCLUSIVE),  # no multi gain
    ],
)
def test_gain_verdict(r_gauss, r_multi, single_lo, expected):
    v, reason = gaussian.gain_verdict(r_gauss, r_multi, 0.2, single_lo)
    assert v == expected and reason


@pytest.mark.slow
def test_gaussian_experiment_tiny(tmp_path):
    rc = cli.main(["experiment", "gaussian", "--preset", "tiny", "--no-progress",
                   "--set", "exp_n_test_multi=1000", "--set", "exp_n_test_single=1000",
                   "--out", str(tmp_path)])  # fmt: skip
    assert rc == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    (c,) = rep["claims"]
    assert c["id"] == "gaussian_ensemble_no_gain"
    assert c["verdict"] in ("PASS", "FAIL", "INCONCLUSIVE")
    fams = {r["family"] for r in rep["rows"]}
    assert fams == {"multiview", "gaussian"}
    for r in rep["rows"]:
        if r["kind"] == "test_error":
            assert r["ci_lo"] <= r["value"] <= r["ci_hi"]
    assert (tmp_path / "figures" / "gaussian.svg").exists()


# --- theory-scaling --------------------------------------------------------------------------


def test_rho_below_gamma_crossing():
    lk = theory_scaling.rho_below_gamma_log10_k()
    k_below, k_above = 10.0 ** (lk - 1), 10.0 ** (lk + 1)
    # ρ < Γ ⇔ ln k · k^−0.01 < 1, evaluated in logs
    f = lambda log10k: math.log(log10k * math.log(10)) - 0.01 * log10k * math.log(10)
    assert f(lk - 1) > 0 > f(lk + 1)
    assert 200 < lk < 400 and k_below < k_above
    cfg = make_config("theory", {"k": 10})
    assert cfg.data.rho[0] > cfg.data.Gamma[1]  # the literal recipe at k = 10


def test_init_view_fraction_matches_sampled_inits():
    cfg = make_config("theory", {"k": 10})
    p = theory_scaling.init_view_fraction(cfg)
    W0 = model.init_weights(jax.random.key(3), cfg.model, 2000, 1)[..., 0]  # (2000, m) ⟨w, v⟩
    hit = int((np.asarray(W0).max(-1) >= cfg.verify.view_threshold * cfg.model.varrho).sum())
    lo, hi = clopper_pearson_interval(hit, 2000, 0.999)
    assert lo < p < hi and 0.5 < p < 0.65  # σ_0 ≈ ϱ: most views "learned" at init


def test_theory_configs_validate_before_compute():
    with pytest.raises(ConfigError):
        theory_scaling.configs([4, 1])
    with pytest.raises(ConfigError):
        theory_scaling.configs([])
    cs = theory_scaling.configs([4, 6], overrides={"seeds": 2})
    assert [c.data.P for c in cs] == [16, 36] and cs[1].distill.kd_students == 2


def test_cli_experiment_errors(capsys):
    assert cli.main(["experiment", "theory-scaling", "--ks", "4,x"]) == 2
    assert "--ks" in capsys.readouterr().err
    assert cli.main(["experiment", "dropping", "--ks", "4"]) == 2
    assert cli.main(["experiment", "gaussian", "--set", "family=foo"]) == 2
    with pytest.raises(SystemExit):
        cli.main(["experiment", "boosting"])


@pytest.mark.slow
def test_theory_scaling_tiny(tmp_path):
    rc = cli.main(["experiment", "theory-scaling", "--ks", "3", "--seeds", "2",
                   "--no-progress", "--set", "exp_n_test_multi=500",
                   "--set", "exp_n_test_single=500", "--out", str(tmp_path)])  # fmt: skip
    assert rc == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    (r,) = rep["rows"]
    assert r["k"] == 3 and r["P"] == 9 and r["rho_below_Gamma"] is False
    assert r["ci_lo"] <= r["error_over_mu"] <= r["ci_hi"]
    assert r["frac_one_view"] + r["frac_two_views"] + r["frac_no_view"] == pytest.approx(1)
    assert r["single_verdict"] in ("PASS", "FAIL", "INCONCLUSIVE")
    assert (tmp_path / "figures" / "theory_scaling.png").exists()
