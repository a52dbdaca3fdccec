"""The finite-width tangent kernel, in plain JAX: the empirical NTK of a wide network from
explicit Jacobians (:func:`empirical_ntk`), wide linearized models trained to t → ∞ in
closed form (:func:`empirical_ntk_predict`), and how their ensemble approaches the
infinite-width predictor as the width grows (:func:`width_convergence`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from mvsim import model
from mvsim.config import Config
from mvsim.ntk.kernel import kernel_predict
from mvsim.train import precision


def empirical_ntk(
    W: Float[Array, "M d"],
    x1: Float[Array, "n1 P d"],
    x2: Float[Array, "n2 P d"],
    q: int,
    varrho: float,
) -> tuple[Float[Array, "n1 n2"], Float[Array, "n1 n2"]]:
    """Empirical NTK of f(W, X) = M^{-1/2} Σ_r Σ_p σ(⟨w_r, x_p⟩), W (M, d), w.r.t. W only.

    The readout is fixed at M^{-1/2} (not trained), so J J^T is the mean over neurons of
    θ_r(X, X') = Σ_{p,p'} σ'(⟨w_r, x_p⟩) σ'(⟨w_r, x'_p'⟩) ⟨x_p, x'_p'⟩, i.i.d. over r.
    Returns (Θ_emp (n1, n2) from explicit Jacobians, per-neuron std of θ_r (n1, n2)), the
    latter giving the Monte-Carlo standard error std/√M.
    """
    Mw = W.shape[0]
    J1, J2 = _jacobian(W, x1, q, varrho), _jacobian(W, x2, q, varrho)  # (n, M, d)
    theta = jnp.einsum("amd,bmd->ab", J1, J2)
    per_neuron = Mw * jnp.einsum("amd,bmd->mab", J1, J2)
    return theta, per_neuron.std(0)


def _jacobian(
    W: Float[Array, "M d"], x: Float[Array, "n P d"], q: int, varrho: float
) -> Float[Array, "n M d"]:
    """∇_W f(W, x_i) per sample, (n, M, d), for f(W, X) = M^{-1/2} Σ_r Σ_p σ(⟨w_r, x_p⟩)."""
    Mw = W.shape[0]

    def f(W: jax.Array, x: jax.Array) -> jax.Array:
        pre = jnp.einsum("npd,md->npm", x, W)
        return model.smoothed_relu(pre, q, varrho).sum((1, 2)) / jnp.sqrt(Mw)

    return jax.vmap(jax.grad(lambda W, xi: f(W, xi[None])[0]), in_axes=(None, 0))(W, x)


def empirical_ntk_predict(
    cfg: Config,
    W: Float[Array, "R k M d"],
    x_train: Float[Array, "N P d"],
    y_train: Int[Array, " N"],
    x_test: Float[Array, "n P d"],
) -> Float[np.ndarray, "R n k"]:
    """Test logits of R width-M linearized networks trained to t → ∞: (R, n, k).

    W (R, k, M, d): the R models' init draws (M neurons per class; the paper's init has
    std ``ntk_sigma_0`` here). Each model is the paper's network linearized at W0 = W[r]
    and trained by GD on the MSE to one-hot targets until convergence from a zero-centred
    start: only the tangent part ⟨W − W0, ∇f(W0, x)⟩ is kept (f(W0, ·) is dropped, as
    :func:`kernel_predict` drops the initial function's mean). GD from W = W0 converges to
    kernel regression with the *empirical* NTK, class by class (each class has its own
    neurons, so its own kernel Θ̂_i = J_i J_iᵀ, J_i = ∇_{W_i} f_i(W0, ·)):
    f_i(x) = Θ̂_i(x, X) Θ̂_i(X, X)⁻¹ Y_i. Θ̂_i is a mean of M i.i.d. per-neuron kernels, so
    it tends to Θ at the Monte-Carlo rate 1/√M, and so does the prediction (to first
    order in Θ̂_i − Θ); the mean over models tends to :func:`kernel_predict`'s
    (:func:`width_convergence`). Float64; Θ̂_i(X, X) must be invertible (M·d ≥ n_train).
    Models go one at a time (``lax.map``), classes vmapped: memory O(k·n·M·d).
    """
    q, varrho, k = cfg.model.q, cfg.model.varrho, cfg.data.k
    with precision("float64"):
        W = jnp.asarray(W, jnp.float64)
        x_tr = jnp.asarray(x_train, jnp.float64)
        x_te = jnp.asarray(x_test, jnp.float64)
        Y = jnp.eye(k, dtype=jnp.float64)[jnp.asarray(y_train)]  # (N, k)
        if W.ndim != 4 or W.shape[1] != k or W.shape[3] != x_tr.shape[-1]:
            raise ValueError(f"W must be (models, k={k}, width, d={x_tr.shape[-1]}), got {W.shape}")

        def one_class(w: jax.Array, y: jax.Array) -> jax.Array:
            J_tr, J_te = _jacobian(w, x_tr, q, varrho), _jacobian(w, x_te, q, varrho)
            K = jnp.einsum("amd,bmd->ab", J_tr, J_tr)
            K_st = jnp.einsum("amd,bmd->ab", J_te, J_tr)
            L = jnp.linalg.cholesky((K + K.T) / 2)
            return K_st @ jax.scipy.linalg.cho_solve((L, True), y)

        def one_model(w: jax.Array) -> jax.Array:
            return jax.vmap(one_class, in_axes=(0, 1), out_axes=1)(w, Y)  # (n, k)

        return np.asarray(jax.jit(lambda W: jax.lax.map(one_model, W))(W))


def width_convergence(
    cfg: Config,
    key: PRNGKeyArray,
    x_train: Float[Array, "N P d"],
    y_train: Int[Array, " N"],
    x_test: Float[Array, "n P d"],
    widths: Sequence[int],
    n_models: int,
) -> dict[str, Any]:
    """How fast the ensemble of wide linearized models approaches the infinite-width NTK.

    For each width M (independent draws per width): the mean p̄_M of ``n_models``
    :func:`empirical_ntk_predict` predictions and its relative distance
    ‖p̄_M − p_∞‖_F / ‖p_∞‖_F from :func:`kernel_predict`'s p_∞. Also the per-model spread
    s_M = √(Σ_r ‖p_r − p̄_M‖²_F / (R − 1)) / ‖p_∞‖_F and the ensemble mean's Monte-Carlo
    standard error s_M/√R. Both fall as 1/√M; the distance does too once the O(1/M) bias
    of the nonlinear (inverse-kernel) predictor is below the Monte-Carlo error, and then
    it is of the order of the standard error. Returns lists keyed 'widths', 'distance',
    'spread', 'mc_error', plus 'n_models' and 'seconds'.
    """
    if n_models < 2:
        raise ValueError(f"n_models must be at least 2 (the spread needs two), got {n_models}")
    t = time.perf_counter()
    p_inf = kernel_predict(cfg, x_train, y_train, x_test)
    norm = float(np.linalg.norm(p_inf))
    out: dict[str, Any] = {"widths": [int(w) for w in widths], "n_models": int(n_models)}
    dist, spread = [], []
    k, d = cfg.data.k, int(x_train.shape[-1])
    with precision("float64"):
        # One draw for all widths, split: independent models per width, and one compile
        # of the sampler (it dominates the run time at these sizes).
        z = jax.random.normal(key, (n_models * k * d * sum(out["widths"]),), jnp.float64)
    z = np.asarray(z)
    offsets = np.cumsum([0] + [n_models * k * d * w for w in out["widths"]])
    for w, a, b in zip(out["widths"], offsets[:-1], offsets[1:], strict=True):
        W = cfg.ntk.ntk_sigma_0 * z[a:b].reshape(n_models, k, w, d)
        p = empirical_ntk_predict(cfg, W, x_train, y_train, x_test)
        mean = p.mean(0)
        dist.append(float(np.linalg.norm(mean - p_inf)) / norm)
        spread.append(float(np.sqrt(((p - mean) ** 2).sum() / (n_models - 1))) / norm)
    out["distance"] = dist
    out["spread"] = spread
    out["mc_error"] = [float(s / np.sqrt(n_models)) for s in spread]
    out["seconds"] = time.perf_counter() - t
    return out
