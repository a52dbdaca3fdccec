"""The learner (paper notes §2): smoothed ReLU, network output, gradients, averaging, Λ."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mvsim import model
from mvsim.config import ModelConfig
from mvsim.train import cross_entropy


def relu_ref(z, q: int, varrho: float):
    """The notes' piecewise formula, in float64 numpy."""
    z = np.asarray(z, np.float64)
    mid = np.clip(z, 0, varrho) ** q / (q * varrho ** (q - 1))
    return np.where(z <= 0, 0.0, np.where(z <= varrho, mid, z - (1 - 1 / q) * varrho))


def relu_grad_ref(z, q: int, varrho: float):
    z = np.asarray(z, np.float64)
    mid = (np.clip(z, 0, varrho) / varrho) ** (q - 1)
    return np.where(z <= 0, 0.0, np.where(z <= varrho, mid, 1.0))


QS = [1, 2, 3, 4]
VARRHOS = [1.0, 0.37]


H = 1e-7  # the one-sided probe distance of the continuity test


def points(varrho: float) -> np.ndarray:
    """Test points: a grid over ±3ϱ, the joints exactly, extremes, and (last six) the
    probes ϱ - h, ϱ, ϱ + h, -h, 0, h of the continuity test."""
    grid = np.linspace(-3 * varrho, 3 * varrho, 601)  # includes -3ϱ..3ϱ in steps of ϱ/100
    special = [0.0, -0.0, varrho, -varrho, 0.5 * varrho, 1e-30, -1e-30, 1e3, 1e6, -1e6]
    near = [np.nextafter(varrho, 0), np.nextafter(varrho, 2)]
    probes = [varrho - H, varrho, varrho + H, -H, 0.0, H]
    return np.concatenate([grid, special, near, probes])


@functools.cache
def _evaluator(q: int, varrho: float):
    def f(t):
        return model.smoothed_relu(t, q, varrho)

    def all_of(t):
        g = jax.vmap(jax.grad(f))(t)
        g2 = jax.vmap(jax.grad(jax.grad(f)))(t)
        return f(t), g, model.smoothed_relu_grad(t, q, varrho), g2

    return jax.jit(all_of)


def evaluate(z: np.ndarray, q: int, varrho: float):
    """One jitted call: ReLU~(z), jax.grad of it, the closed-form derivative and the
    second derivative, elementwise, in z's dtype (float64 needs jax.enable_x64)."""
    return [np.asarray(a) for a in _evaluator(q, varrho)(jnp.asarray(z))]


@pytest.mark.parametrize(("q", "varrho"), list(itertools.product(QS, VARRHOS)))
def test_smoothed_relu_matches_formula(q, varrho):
    z = points(varrho)
    with jax.enable_x64(True):
        val, _, closed, _ = evaluate(z, q, varrho)
    assert val.dtype == np.float64
    np.testing.assert_allclose(val, relu_ref(z, q, varrho), rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(closed, relu_grad_ref(z, q, varrho), rtol=1e-14, atol=1e-300)
    # exact values at the joints and below 0
    at = dict(zip(z.tolist(), val.tolist(), strict=False))
    assert at[0.0] == 0.0 and at[-1e6] == 0.0 and at[-varrho] == 0.0
    assert at[varrho] == pytest.approx(varrho / q, rel=1e-15)
    assert at[1e6] == pytest.approx(1e6 - (1 - 1 / q) * varrho, rel=1e-15)
    # float32 too (the training dtype)
    z32 = z.astype(np.float32)
    val32 = evaluate(z32, q, varrho)[0]
    assert val32.dtype == np.float32
    np.testing.assert_allclose(val32, relu_ref(z32, q, varrho), rtol=2e-6, atol=1e-30)


@pytest.mark.parametrize(("q", "varrho"), list(itertools.product(QS, VARRHOS)))
def test_smoothed_relu_continuous_and_c1_at_varrho(q, varrho):
    """Left and right limits of value and slope agree at ϱ (and at 0 for q >= 2).

    With h = 1e-7 in float64, a continuous function with slope <= 1 differs across the
    joint by at most 2h (plus rounding ~1e-16); a jump of the derivative would show as an
    O(1) gap between the slopes, against |ReLU~''| h <= (q - 1)/ϱ · h ~ 1e-6 for C¹.
    Difference quotients add rounding 2 eps64 |f| / h <= 2.2e-16 · 3 / 1e-7 < 1e-8.
    """
    h = H
    with jax.enable_x64(True):
        f, df, _, _ = (a[-6:] for a in evaluate(points(varrho), q, varrho))
    tol = 2 * (q - 1) / varrho * h + 1e-8
    assert abs(f[0] - f[2]) <= 2 * h + 1e-15
    assert f[1] == pytest.approx(varrho / q, rel=1e-14)
    assert abs(df[0] - df[2]) <= tol and df[1] == 1.0
    # one-sided slopes from the function values themselves
    left, right = (f[1] - f[0]) / h, (f[2] - f[1]) / h
    assert abs(left - 1) <= tol and abs(right - 1) <= 1e-8
    assert abs(f[5] - f[3]) <= h + 1e-15 and f[4] == 0.0  # continuous at 0
    if q >= 2:
        assert abs(df[5] - df[3]) <= tol  # C¹ at 0 too
    else:
        assert df[5] == 1.0 and df[3] == 0.0  # q = 1 is the plain ReLU: a kink at 0


@pytest.mark.parametrize(("q", "varrho"), list(itertools.product(QS, VARRHOS)))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_autodiff_matches_closed_form_gradient(q, varrho, dtype):
    """jax.grad(smoothed_relu) == smoothed_relu_grad everywhere, incl. exactly 0 and ϱ.

    At z = 0 the spec's derivative is 0 (ReLU~'(z) = 0 for z <= 0) for every q, including
    q = 1 where the function is the plain ReLU (autodiff used to give 1/2 there, and the
    closed form 1 for every z <= 0).
    """
    z = points(varrho).astype(dtype)
    with jax.enable_x64(dtype == "float64"):
        _, auto, closed, g2 = evaluate(z, q, varrho)
    assert auto.dtype == np.dtype(dtype)
    assert np.all(np.isfinite(auto)) and np.all(np.isfinite(closed)) and np.all(np.isfinite(g2))
    rtol = 1e-6 if dtype == "float32" else 1e-14
    np.testing.assert_allclose(auto, closed, rtol=rtol, atol=1e-30)
    np.testing.assert_allclose(closed, relu_grad_ref(z, q, varrho), rtol=rtol, atol=1e-30)
    assert np.all(auto[z <= 0] == 0) and np.all(closed[z <= 0] == 0)
    assert np.all(auto[z >= np.asarray(varrho, dtype)] == 1)
    assert auto[z == 0].size >= 2 and np.any(z == varrho)  # the joints are among the points


# --- the network -------------------------------------------------------------------------


def _rand_problem(seed, n, P, d, k, m, scale, dtype=np.float32):
    """numpy draws (no threefry compile per shape): x (n, P, d), W (k, m, d)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, P, d)).astype(dtype)
    W = (scale * rng.standard_normal((k, m, d))).astype(dtype)
    return jnp.asarray(x), jnp.asarray(W)


@pytest.mark.parametrize("q", [1, 3, 4])
def test_forward_equals_naive_loop(q):
    varrho = 0.8
    n, P, d, k, m = 3, 5, 6, 3, 2
    x, W = _rand_problem(0, n, P, d, k, m, scale=0.4)
    xn, Wn = np.asarray(x, np.float64), np.asarray(W, np.float64)
    ref = np.zeros((n, k))
    for a in range(n):
        for i in range(k):
            for r in range(m):
                for p in range(P):
                    ref[a, i] += relu_ref(Wn[i, r] @ xn[a, p], q, varrho)
    pre = np.einsum("npd,krd->npkr", xn, Wn)
    # the test is only meaningful if all three pieces occur
    assert (pre < 0).any() and ((pre > 0) & (pre < varrho)).any() and (pre > varrho).any()
    got = np.asarray(model.apply(W, x, q, varrho))
    assert got.shape == (n, k)
    # float32: each term has rounding ~1e-7 relative; sums of P·m = 10 terms of size <= ~3
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    net = model.network(ModelConfig(m=m, q=q, varrho=varrho), k, d)
    np.testing.assert_array_equal(np.asarray(net.apply(W, x)), got)


def test_init_shape_and_scale():
    cfg = ModelConfig(m=3, sigma_0=0.05)
    net = model.network(cfg, 5, 40)
    W32 = net.init(jax.random.PRNGKey(1))
    assert W32.shape == (5, 3, 40) and W32.dtype == jnp.float32
    W = np.asarray(W32, np.float64)
    # 600 i.i.d. N(0, σ0²) entries: S = Σ w²/σ0² ~ χ²_600, sd sqrt(1200) = 34.6;
    # |S - 600| <= 3.29 sd is the two-sided 99.9% region (normal approx., skew ~0.1).
    S = float(np.sum(W**2)) / 0.05**2
    assert abs(S - 600) <= 3.2905 * np.sqrt(1200)
    W2 = np.asarray(net.init(jax.random.PRNGKey(2)))
    assert not np.array_equal(W, W2)
    np.testing.assert_array_equal(np.asarray(net.init(jax.random.PRNGKey(1))), W)


def _loss(W, x, y, q, varrho):
    return cross_entropy(model.apply(W, x, q, varrho), y)


@pytest.mark.parametrize("q", [3, 4])
def test_gradient_vs_central_differences_float64(q):
    """∇_W of the mean cross-entropy against central differences, in float64.

    Error budget of (L(W + hU) - L(W - hU)) / 2h for a unit direction U:
    - truncation: L is C¹ with a piecewise-smooth second derivative (jumps at ϱ). If no
      pre-activation crosses a joint within ±h, the error is h²/6·|L'''| ~ 1e-12 · O(10);
      if one does, it is at most h·|ΔL''| ≤ h·(q - 1)/ϱ·|x_p|² ~ 1e-6 · 40 (|x_p|² ≈ d).
    - rounding: eps64·|L|/h ~ 1e-16 · 2 / 1e-6 = 2e-10.
    So |fd - ad| ≤ 1e-4·max(1, |ad|) holds with margin, while a wrong gradient (a
    missing factor, a wrong sign, a dropped class) is off by O(|ad|) ~ 0.1 - 1.
    """
    varrho = 0.7
    n, P, d, k, m = 6, 4, 10, 3, 2
    h = 1e-6
    with jax.enable_x64(True):
        x, W = _rand_problem(3, n, P, d, k, m, scale=0.25, dtype=np.float64)
        y = jnp.asarray(np.random.default_rng(4).integers(0, k, n))
        pre = np.einsum("npd,krd->npkr", np.asarray(x), np.asarray(W))
        assert (pre < 0).any() and ((pre > 0) & (pre < varrho)).any() and (pre > varrho).any()
        losses = jax.jit(jax.vmap(lambda W: _loss(W, x, y, q, varrho)))
        g = np.asarray(jax.jit(jax.grad(lambda W: _loss(W, x, y, q, varrho)))(W))
        assert g.dtype == np.float64
        # directions: every coordinate (k·m·d = 60 of them), then 5 random unit ones
        U = np.concatenate([np.eye(W.size), np.random.default_rng(10).standard_normal((5, W.size))])
        U /= np.linalg.norm(U, axis=1, keepdims=True)
        U = U.reshape(-1, *W.shape)
        Wn = np.asarray(W)
        fd = (np.asarray(losses(Wn + h * U)) - np.asarray(losses(Wn - h * U))) / (2 * h)
        ad = np.einsum("ukmd,kmd->u", U, g)
        err = np.abs(fd - ad)
        assert np.all(err <= 1e-4 * np.maximum(1.0, np.abs(ad))), err.max()
        assert np.abs(ad).max() > 1e-2  # not trivially zero


def test_gradient_matches_notes_formula():
    """-∇_{w_ir} L = mean over samples of (1[i=y] - logit_i) Σ_p ReLU~'(<w_ir, x_p>) x_p."""
    q, varrho = 4, 0.7
    n, P, d, k, m = 6, 4, 10, 3, 2
    with jax.enable_x64(True):
        x, W = _rand_problem(5, n, P, d, k, m, 0.25, np.float64)
        y = jnp.asarray(np.random.default_rng(6).integers(0, k, n))
        g = np.asarray(jax.jit(jax.grad(lambda W: _loss(W, x, y, q, varrho)))(W))
        xn, Wn, yn = np.asarray(x), np.asarray(W), np.asarray(y)
        F = np.asarray(jax.jit(model.apply, static_argnums=(2, 3))(W, x, q, varrho))
        prob = np.exp(F - F.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        ref = np.zeros_like(Wn)
        for a in range(n):
            for i in range(k):
                for r in range(m):
                    act = relu_grad_ref(xn[a] @ Wn[i, r], q, varrho)  # (P,)
                    ref[i, r] -= ((i == yn[a]) - prob[a, i]) * (act @ xn[a]) / n
        np.testing.assert_allclose(g, ref, rtol=1e-10, atol=1e-14)


# --- averaging and view alignment -----------------------------------------------------------


@pytest.mark.parametrize("K", [1, 3])
def test_averaged_is_mean_of_members(K):
    cfg = ModelConfig(m=2, q=3, varrho=0.6, sigma_0=0.3)
    k, d = 3, 7
    avg = model.averaged(cfg, k, d, K)
    x, W = _rand_problem(K, 4, 5, d, K * k, 2, scale=0.5)
    W = W.reshape(K, k, 2, d)
    single = model.network(cfg, k, d)
    one = jax.jit(single.apply)
    ref = np.mean([np.asarray(one(W[j], x)) for j in range(K)], axis=0)
    pre = np.einsum("npd,Kkrd->npKkr", np.asarray(x), np.asarray(W))
    assert (pre > cfg.varrho).any() and ((pre > 0) & (pre < cfg.varrho)).any()
    # float32 mean of K outputs of size ~10: rounding ~1e-6 relative
    np.testing.assert_allclose(np.asarray(jax.jit(avg.apply)(W, x)), ref, rtol=1e-6, atol=1e-6)


def test_alignment_and_view_strength_vs_naive():
    k, m, d, K = 3, 4, 9, 2
    rng = np.random.default_rng(0)
    W = jnp.asarray(rng.standard_normal((K, k, m, d)), jnp.float32)
    V = jnp.asarray(rng.standard_normal((k, 2, d)), jnp.float32)
    Wn, Vn = np.asarray(W, np.float64), np.asarray(V, np.float64)
    ref = np.empty((K, k, 2))
    for a in range(K):
        for i in range(k):
            for ell in range(2):
                ref[a, i, ell] = max(Wn[a, i, r] @ Vn[i, ell] for r in range(m))
    al = np.asarray(model.alignment(W, V))
    assert al.shape == (K, k, 2)
    np.testing.assert_allclose(al, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(model.alignment(W[1], V)), ref[1], rtol=1e-5, atol=1e-5)
    vs = np.asarray(model.view_strength(W, V))
    assert (ref < 0).any() and (ref > 0).any()  # the positive part matters here
    np.testing.assert_allclose(vs, np.maximum(ref, 0), rtol=1e-5, atol=1e-5)
    assert np.all(vs[ref < 0] == 0)
    learned = np.asarray(model.views_learned(jnp.asarray(vs), 0.5))
    np.testing.assert_array_equal(learned, vs >= 0.5)
    np.testing.assert_array_equal(np.asarray(model.lottery_winner(W, V)), ref.argmax(-1))
