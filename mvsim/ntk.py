r"""The NTK / random-feature side of the paper (notes §7), on the same data as ``verify``.

The paper contrasts deep learning with the NTK regime: for random-feature / NTK models an
ensemble helps (it enlarges the feature set), training the average helps, and knowledge
distillation does not (one model's fixed feature space cannot hold what the ensemble
represents). This module builds both NTK objects for the patch CNN of :mod:`mvsim.model`

    F_i(X) = Σ_{r∈[m]} Σ_{p∈[P]} σ(⟨w_{i,r}, x_p⟩),   σ = ReLU~ (the smoothed ReLU),

and measures them in the same table as the deep models.

Which layer is trained, and the kernel
--------------------------------------
The paper's second layer is fixed to ones and is **not trained**; only W is. The tangent
kernel is therefore the first layer's contribution alone. For one neuron w,
∇_w Σ_p σ(⟨w, x_p⟩) = Σ_p σ'(⟨w, x_p⟩) x_p, so with w ~ N(0, σ_0² I_d) (σ_0 =
``ntk_sigma_0``)

    Θ(X, X') = Σ_{p,p'} E_w[σ'(⟨w, x_p⟩) σ'(⟨w, x'_{p'}⟩)] ⟨x_p, x'_{p'}⟩        (per neuron)

and the empirical NTK of the paper's network (readout 1, m neurons per class) is
Θ_ij(X, X') → δ_ij · m · Θ(X, X') as m → ∞ (classes have their own neurons, so the
kernel is block-diagonal across classes and the same for every class). In
neural-tangents terms: a readout layer with W_std = 1 in NTK parameterization adds its
own gradient, which is the NNGP of the layer below, Σ_{p,p'} E[σ(u_p) σ(u'_{p'})]; a
fixed readout removes exactly that term, so Θ = ntk − nngp of
``serial(Conv1x1, σ, GlobalSumPool, Dense(1))``, which is the ``ntk`` of the stack
without the readout (the per-channel kernel of one neuron). :func:`ntk_stax` builds both
stacks in ``neural_tangents.stax`` (1×1 ``Conv`` in *standard* parameterization with
W_std = σ_0·√d, so the gradient is taken w.r.t. w itself as our trainer does;
``ElementwiseNumerical`` for σ; ``GlobalSumPool`` for the sum over patches);
``tests/test_ntk.py`` checks the identity, and checks Θ against a Monte-Carlo empirical
NTK of a wide network written in plain JAX and against ``nt.empirical_ntk_fn``.

A fast exact evaluator (the 'series' kernel)
--------------------------------------------
neural-tangents' quadrature costs deg² evaluations per entry of the N×N×P×P patch-pair
kernel (measured: ~7 minutes for the demo's 620 training and 4000 test points at
deg = 8–16 on 2 shared cores), and Gauss–Hermite converges only at O(1/deg) for σ', which
has a derivative kink at ϱ (errors of several % of an entry at deg = 16–32). The series kernel uses
Mehler's expansion instead: with a = σ_0|x|, b = σ_0|x'|, ρ = cos∠(x, x') and
g(z) = σ'(z) = clip(z/ϱ, 0, 1)^{q−1},

    E[g(aZ) g(bZ')] = Σ_{n≥0} α_n(a) α_n(b) ρ^n,   α_n(a) = E[g(aZ) He_n(Z)] / √n!,

(Z, Z') standard normal with correlation ρ. The α_n are 1-D integrals per *patch* (a
polynomial piece by Gauss–Legendre and the flat piece in closed form), so the per-pair
cost is one Horner pass of ``ntk_terms`` multiply-adds. Terms n ≥ L are replaced by one
term t(a) t(b) ρ^L with t(a)² = E[g(aZ)²] − Σ_{n<L} α_n(a)², exact on the diagonal; by
Cauchy–Schwarz the error is ≤ 2 t(a) t(b) |ρ|^L per patch pair (:func:`series_error_bound`).
Every term is a positive semi-definite kernel, so the truncated kernel is PSD too.

Finite width
------------
:func:`linearized_network` is the network linearized at its init,
f_lin(W, x) = f(W0, x) + ⟨W − W0, ∇f(W0, x)⟩, with ``ntk_m`` neurons per class at init
std ``ntk_sigma_0``. Linearizing at the feature-learning σ_0 ≪ ϱ gives Jacobians of
order (σ_0/ϱ)^{q−1} and does not train (feasibility study 1), hence its own init scale.
:func:`empirical_ntk_predict` is the t → ∞ limit of such a model trained on the MSE from
a zero-centred start (kernel regression with the empirical NTK of width M), and
:func:`width_convergence` measures how the mean of many of them approaches
:func:`kernel_predict` as M grows (Monte-Carlo rate 1/√M; ``tests/test_ntk.py``).

Everything here is a pure function of the config and PRNG streams of
:func:`mvsim.verify.stream`, so the training set and the (first points of the) test sets
are those of ``mvsim verify``.
"""

from __future__ import annotations

import dataclasses
import functools
import resource
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mvsim import data, distill, model
from mvsim._nt_compat import import_neural_tangents
from mvsim.config import Config, ConfigError
from mvsim.model import Network, Params
from mvsim.stats import (
    Estimate,
    Verdict,
    bonferroni_level,
    combine_verdicts,
    paired_diff_ci,
    verdict,
)
from mvsim.train import Objective, correct, precision, train

__all__ = [
    "empirical_ntk",
    "empirical_ntk_predict",
    "hermite_coefficients",
    "kernel_matrix",
    "kernel_predict",
    "linearize",
    "linearized_averaged",
    "linearized_network",
    "ntk_kernel_fn",
    "ntk_stax",
    "run_ntk",
    "series_error_bound",
    "series_kernel",
    "width_convergence",
]

ROWS = ("deep", "linearized", "infinite")
COLUMNS = ("single", "ensemble", "training_average", "kd", "self_kd")
LEVEL = 0.95

KernelFn = Callable[[jax.Array, jax.Array | None], jax.Array]
"""kernel(x1 (n1, P, d), x2 (n2, P, d) | None) -> Θ (n1, n2), per neuron."""


# --- the infinite-width kernel in neural-tangents ---------------------------------------


def ntk_stax(cfg: Config, d: int, *, readout: bool = False) -> tuple[Callable, Callable, Callable]:
    """The patch CNN of one class in ``neural_tangents.stax``: (init_fn, apply_fn, kernel_fn).

    Input layout (n, P, 1, d): the P patches are a P×1 image with d channels, so a 1×1
    ``Conv`` is the per-patch dense layer. Standard parameterization with W_std = σ_0·√d
    gives weights of std σ_0 and a first-layer NTK of ⟨x_p, x'_p'⟩, i.e. the gradient
    w.r.t. w itself, as :func:`mvsim.train.train` takes it. Without ``readout`` the
    kernel's ``ntk`` is Θ (module docstring); with ``readout`` a trained Dense(1) readout
    (NTK parameterization, W_std = 1) is appended, whose ``ntk − nngp`` is again Θ.
    """
    nt = import_neural_tangents()
    stax = nt.stax
    M = cfg.model
    q, varrho = M.q, M.varrho
    with warnings.catch_warnings():
        # NT warns on every ElementwiseNumerical that accuracy depends on deg: we know.
        warnings.simplefilter("ignore", UserWarning)
        act = stax.ElementwiseNumerical(
            lambda z: model.smoothed_relu(z, q, varrho),
            deg=cfg.ntk.ntk_deg,
            df=lambda z: model.smoothed_relu_grad(z, q, varrho),
        )
    layers = [
        stax.Conv(
            1,
            (1, 1),
            W_std=cfg.ntk.ntk_sigma_0 * float(np.sqrt(d)),
            b_std=None,
            parameterization="standard",
        ),
        act,
        stax.GlobalSumPool(),
    ]
    if readout:
        layers.append(stax.Dense(1, W_std=1.0, b_std=None, parameterization="ntk"))
    return stax.serial(*layers)


def ntk_kernel_fn(cfg: Config) -> KernelFn:
    """Θ by neural-tangents (``ElementwiseNumerical`` quadrature of degree ``ntk_deg``).

    Returns ``kernel(x1 (n1, P, d), x2 (n2, P, d) | None) -> (n1, n2)``, the per-neuron
    tangent kernel of the first (trained) layer with the readout fixed (module docstring).
    Memory is O(deg² n1 n2 P²): use :func:`kernel_matrix` to chunk it. Accuracy: σ' has a
    derivative kink at ϱ, so Gauss–Hermite converges only at O(1/deg) (measured: errors of
    1–10% of an entry at deg = 16–32 on demo-like patches, ~2% at deg = 256 when σ_0|x| ≈
    2ϱ), and the result is not exactly symmetric (the 2-D rule conditions the second
    argument on the first). :func:`series_kernel` is the accurate evaluator.
    """

    @functools.cache
    def compiled(d: int) -> Callable:
        kernel_fn = ntk_stax(cfg, d)[2]
        return jax.jit(lambda a, b: kernel_fn(a, b, "ntk"))

    def kernel(x1: jax.Array, x2: jax.Array | None = None) -> jax.Array:
        x2 = x1 if x2 is None else x2
        f = compiled(int(x1.shape[-1]))
        return f(x1[:, :, None, :], x2[:, :, None, :])

    return kernel


# --- the same kernel as a Hermite (Mehler) series ---------------------------------------


def hermite_coefficients(
    a: jax.Array, q: int, varrho: float, terms: int
) -> tuple[jax.Array, jax.Array]:
    """α_n(a) = E[g(aZ) He_n(Z)]/√n! for n < terms, and E[g(aZ)²], g = σ' = clip(·/ϱ, 0, 1)^{q−1}.

    a: (M,) non-negative scales σ_0|x|. Returns (alpha (M, terms), second_moment (M,)).
    g(az) is (az/ϱ)^{q−1} on [0, c], c = ϱ/a, and 1 above c. The polynomial piece is
    integrated by Gauss–Legendre on [0, min(c, z_max)] (integrand: polynomial × Gaussian,
    so the rule is exact to float precision with ~2·terms nodes); the flat piece is
    ∫_c^∞ He_n φ = He_{n−1}(c) φ(c) (Q(c) for n = 0) in closed form. z_max is where the
    normalised Hermite functions times the Gaussian have decayed below 1e-14.
    """
    r = q - 1
    zmax = 8.0 + 2.0 * float(np.sqrt(terms))
    n_nodes = 3 * terms + 64
    xs, ws = np.polynomial.legendre.leggauss(n_nodes)
    a = jnp.asarray(a)
    if not jnp.issubdtype(a.dtype, jnp.floating):
        a = a.astype(float)  # integer scales would silently truncate every step below
    dt = a.dtype
    safe_a = jnp.where(a > 0, a, 1.0)
    c = jnp.where(a > 0, varrho / safe_a, jnp.inf)
    hi = jnp.minimum(c, zmax)
    z = (jnp.asarray(xs, dt)[None, :] + 1.0) / 2.0 * hi[:, None]  # (M, nodes)
    w = jnp.asarray(ws, dt)[None, :] * hi[:, None] / 2.0 * jnp.exp(-z * z / 2.0)
    w = w / jnp.sqrt(2.0 * jnp.pi)
    gz = jnp.where(a[:, None] > 0, (a[:, None] * z / varrho) ** r, 0.0)
    inside = c < zmax  # the flat piece carries mass
    cc = jnp.where(inside, c, 0.0)
    phi_c = jnp.where(inside, jnp.exp(-cc * cc / 2.0) / jnp.sqrt(2.0 * jnp.pi), 0.0)
    q_c = jnp.where(inside, 0.5 * jax.scipy.special.erfc(cc / jnp.sqrt(2.0)), 0.0)
    gw = gz * w

    # Normalised Hermite recurrence h_{n+1} = (z h_n − √n h_{n−1}) / √(n+1), at the nodes
    # and at c; scan (not a Python loop) so compile time does not grow with `terms`.
    def step(carry, n):
        h_prev, h, hc_prev, hc = carry
        poly = (gw * h).sum(-1)
        flat = jnp.where(n == 0, q_c, hc_prev * phi_c / jnp.sqrt(jnp.maximum(n, 1)))
        nf = n.astype(dt)
        h_next = (z * h - jnp.sqrt(nf) * h_prev) / jnp.sqrt(nf + 1.0)
        hc_next = (cc * hc - jnp.sqrt(nf) * hc_prev) / jnp.sqrt(nf + 1.0)
        return (h, h_next, hc, hc_next), poly + flat

    init = (jnp.zeros_like(z), jnp.ones_like(z), jnp.zeros_like(cc), jnp.ones_like(cc))
    _, alpha = jax.lax.scan(step, init, jnp.arange(terms))
    second = (gz * gw).sum(-1) + q_c
    return alpha.T, second


class _Side(NamedTuple):
    """Per-patch data of one side of a kernel block, flattened over (sample, patch)."""

    x: jax.Array  # (n·P, d)
    norm: jax.Array  # (n·P,)
    alpha: jax.Array  # (terms, n·P) — transposed so each Horner step reads a contiguous row
    tail: jax.Array  # (n·P,)


def _side(x: jax.Array, sigma_0: float, q: int, varrho: float, terms: int) -> _Side:
    n, P, d = x.shape
    xf = x.reshape(n * P, d)
    norm = jnp.linalg.norm(xf, axis=-1)
    alpha, second = hermite_coefficients(sigma_0 * norm, q, varrho, terms)
    # Bessel's inequality makes second ≥ Σα² exactly; the clip only absorbs rounding.
    tail = jnp.sqrt(jnp.maximum(second - (alpha * alpha).sum(-1), 0.0))
    return _Side(xf, norm, alpha.T, tail)


def _series_block(s1: _Side, s2: _Side, P: int, tile: int) -> jax.Array:
    """Θ between the n1 samples of s1 and the n2 of s2: (n1, n2); n1 divisible by tile."""
    terms = s1.alpha.shape[0]
    n2 = s2.x.shape[0] // P

    def rows(args):
        # One tile of `tile` samples (tile·P patches) against every patch of side 2: the
        # working set is tile·P × n2·P, never the whole N×N×P×P array.
        x, norm, alpha, tail = args
        G = x @ s2.x.T
        den = norm[:, None] * s2.norm[None, :]
        rho = jnp.clip(G / jnp.where(den > 0, den, 1.0), -1.0, 1.0)
        S = tail[:, None] * s2.tail[None, :]
        for n in range(terms - 1, -1, -1):  # Horner in ρ; XLA fuses the chain into one loop
            S = alpha[n][:, None] * s2.alpha[n][None, :] + rho * S
        return (S * G).reshape(tile, P, n2, P).sum((1, 3))

    n_tiles = s1.x.shape[0] // (tile * P)
    args = (
        s1.x.reshape(n_tiles, tile * P, -1),
        s1.norm.reshape(n_tiles, tile * P),
        s1.alpha.reshape(terms, n_tiles, tile * P).transpose(1, 0, 2),
        s1.tail.reshape(n_tiles, tile * P),
    )
    return jax.lax.map(rows, args).reshape(n_tiles * tile, n2)


_TILE = 4  # samples per inner tile: 4·P × N·P float64 ≈ 20 MB at the demo size


def _pad_rows(x: jax.Array, multiple: int) -> tuple[jax.Array, int]:
    n = x.shape[0]
    pad = (-n) % multiple
    if pad:
        x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)], 0)
    return x, n


@functools.lru_cache(maxsize=16)
def _series_fns(sigma_0: float, q: int, varrho: float, terms: int, P: int) -> tuple:
    """Jitted (side, block) functions, cached so that repeated calls reuse the compile."""
    side = jax.jit(functools.partial(_side, sigma_0=sigma_0, q=q, varrho=varrho, terms=terms))
    block = jax.jit(lambda xb, s2: _series_block(side(xb), s2, P, _TILE))
    return side, block


def series_kernel(cfg: Config, x1: jax.Array, x2: jax.Array | None = None) -> np.ndarray:
    """Θ(x1, x2) by the Hermite series (module docstring), float64: (n1, n2) numpy.

    x1 (n1, P, d), x2 (n2, P, d). Rows are processed ``ntk_chunk`` at a time and, inside,
    ``_TILE`` samples at a time, so peak memory is O(_TILE·P·n2·P), not O(n1·n2·P²).
    """
    M, C = cfg.model, cfg.ntk
    with precision("float64"):
        x1 = jnp.asarray(x1, jnp.float64)
        x2 = x1 if x2 is None else jnp.asarray(x2, jnp.float64)
        side, block = _series_fns(C.ntk_sigma_0, M.q, M.varrho, C.ntk_terms, x1.shape[1])
        s2 = side(x2)
        chunk = max(_TILE, (min(C.ntk_chunk, x1.shape[0]) + _TILE - 1) // _TILE * _TILE)
        out = []
        for i in range(0, x1.shape[0], chunk):
            xb, n = _pad_rows(x1[i : i + chunk], chunk)
            out.append(np.asarray(block(xb, s2))[:n])
        return np.concatenate(out, 0)


def series_error_bound(cfg: Config, x1: jax.Array, x2: jax.Array | None = None) -> np.ndarray:
    """Upper bound on |series_kernel − Θ|: Σ_{p,p'} 2 t(a_p) t(b_p') |ρ|^L |⟨x_p, x'_p'⟩|.

    (n1, n2) numpy. By Cauchy–Schwarz |Σ_{n≥L} α_n(a) α_n(b) ρ^n| ≤ t(a) t(b) |ρ|^L, and the
    replacement term is bounded by the same amount. Small inputs only (no chunking).
    """
    M, C = cfg.model, cfg.ntk
    with precision("float64"):
        x1 = jnp.asarray(x1, jnp.float64)
        x2 = x1 if x2 is None else jnp.asarray(x2, jnp.float64)
        n1, P, _ = x1.shape
        n2 = x2.shape[0]
        s1 = _side(x1, C.ntk_sigma_0, M.q, M.varrho, C.ntk_terms)
        s2 = _side(x2, C.ntk_sigma_0, M.q, M.varrho, C.ntk_terms)
        G = s1.x @ s2.x.T
        den = s1.norm[:, None] * s2.norm[None, :]
        rho = jnp.clip(jnp.abs(G) / jnp.where(den > 0, den, 1.0), 0.0, 1.0)
        b = 2 * s1.tail[:, None] * s2.tail[None, :] * rho**C.ntk_terms * jnp.abs(G)
        return np.asarray(b.reshape(n1, P, n2, P).sum((1, 3)))


def kernel_matrix(cfg: Config, x1: jax.Array, x2: jax.Array | None = None) -> np.ndarray:
    """Θ(x1, x2), (n1, n2) numpy, by the evaluator ``ntk_kernel``, always in blocks."""
    if cfg.ntk.ntk_kernel == "series":
        return series_kernel(cfg, x1, x2)
    kernel = ntk_kernel_fn(cfg)
    x2 = x1 if x2 is None else x2
    P = x1.shape[1]
    # NT materialises deg² × b² × P² values per block: keep that under ~2^24.
    b = max(1, int(np.sqrt(2**24 / (cfg.ntk.ntk_deg**2 * P * P))))
    with precision("float64"):
        x1 = jnp.asarray(x1, jnp.float64)
        x2 = jnp.asarray(x2, jnp.float64)
        rows = []
        for i in range(0, x1.shape[0], b):
            xa, na = _pad_rows(x1[i : i + b], b)
            cols = []
            for j in range(0, x2.shape[0], b):
                xb, nb = _pad_rows(x2[j : j + b], b)
                cols.append(np.asarray(kernel(xa, xb))[:na, :nb])
            rows.append(np.concatenate(cols, 1))
        return np.concatenate(rows, 0)


def kernel_predict(
    cfg: Config, x_train: jax.Array, y_train: jax.Array, x_test: jax.Array
) -> np.ndarray:
    """Infinite-width, infinite-time GD on the MSE to one-hot targets: test logits (n, k).

    f(x) = Θ(x, X) Θ(X, X)^{-1} Y, the mean prediction of the infinite ensemble
    (``nt.predict.gradient_descent_mse_ensemble`` at t = ∞), solved directly in float64
    by Cholesky. The initial function's mean is the same for every class (each class has
    its own identically distributed neurons), so dropping it changes no argmax; so does
    Θ's overall scale (m, σ_0² conventions). ``ntk_ridge`` > 0 adds ridge·mean(diag Θ).
    """
    k = cfg.data.k
    K_tt = kernel_matrix(cfg, x_train)
    K_st = kernel_matrix(cfg, x_test, x_train)
    Y = np.eye(k)[np.asarray(y_train)]
    K = K_tt + cfg.ntk.ntk_ridge * np.mean(np.diag(K_tt)) * np.eye(K_tt.shape[0])
    K = (K + K.T) / 2  # exact symmetry for Cholesky; the blocks agree to rounding
    L = np.linalg.cholesky(K)
    coef = np.linalg.solve(L.T, np.linalg.solve(L, Y))
    return K_st @ coef


# --- Monte-Carlo empirical NTK of a wide network (plain JAX) ----------------------------


def empirical_ntk(
    W: jax.Array, x1: jax.Array, x2: jax.Array, q: int, varrho: float
) -> tuple[jax.Array, jax.Array]:
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


def _jacobian(W: jax.Array, x: jax.Array, q: int, varrho: float) -> jax.Array:
    """∇_W f(W, x_i) per sample, (n, M, d), for f(W, X) = M^{-1/2} Σ_r Σ_p σ(⟨w_r, x_p⟩)."""
    Mw = W.shape[0]

    def f(W: jax.Array, x: jax.Array) -> jax.Array:
        pre = jnp.einsum("npd,md->npm", x, W)
        return model.smoothed_relu(pre, q, varrho).sum((1, 2)) / jnp.sqrt(Mw)

    return jax.vmap(jax.grad(lambda W, xi: f(W, xi[None])[0]), in_axes=(None, 0))(W, x)


def empirical_ntk_predict(
    cfg: Config, W: jax.Array, x_train: jax.Array, y_train: jax.Array, x_test: jax.Array
) -> np.ndarray:
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
    key: jax.Array,
    x_train: jax.Array,
    y_train: jax.Array,
    x_test: jax.Array,
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


# --- finite-width linearized models ---------------------------------------------------


def linearize(apply_fn: Callable[[Params, jax.Array], jax.Array]) -> Callable:
    """f_lin(params, x) with params[0] = W (trained) and params[1] = W0 (fixed).

    f_lin(W, x) = f(W0, x) + ⟨W − W0, ∇_W f(W0, x)⟩, by one ``jax.jvp`` at W0. W0 passes
    through ``stop_gradient``, so GD never moves it; at W = W0 the tangent is exactly 0.
    """

    def f_lin(params: jax.Array, x: jax.Array) -> jax.Array:
        W, W0 = params[0], jax.lax.stop_gradient(params[1])
        f0, df = jax.jvp(lambda w: apply_fn(w, x), (W0,), (W - W0,))
        return f0 + df

    return f_lin


def _lin_model_cfg(cfg: Config) -> Any:
    return dataclasses.replace(cfg.model, m=cfg.ntk.ntk_m, sigma_0=cfg.ntk.ntk_sigma_0)


def linearized_network(cfg: Config, k: int, d: int, dtype=jnp.float32) -> Network:
    """The paper's network linearized at its init: ``ntk_m`` neurons/class, std ``ntk_sigma_0``.

    Params (2, k, m, d): [W, W0], both equal to the init draw at step 0. Works with
    :func:`mvsim.train.train` unchanged (its Λ record then has a leading axis of 2).
    """
    base = model.network(_lin_model_cfg(cfg), k, d, dtype)

    def init(key: jax.Array) -> jax.Array:
        W0 = base.init(key)
        return jnp.stack([W0, W0])

    return Network(init, linearize(base.apply))


def linearized_averaged(cfg: Config, k: int, d: int, K: int, dtype=jnp.float32) -> Network:
    """Training average of K linearized networks (mean output, trained jointly), as
    :func:`mvsim.model.averaged` does for the deep ones. Params (K, 2, k, m, d)."""
    one = linearized_network(cfg, k, d, dtype)

    def init(key: jax.Array) -> jax.Array:
        return jax.vmap(one.init)(jax.random.split(key, K))

    def apply(params: jax.Array, x: jax.Array) -> jax.Array:
        return jax.vmap(one.apply, in_axes=(0, None))(params, x).mean(0)

    return Network(init, apply)


def centered_objective(objective: Objective) -> Objective:
    """``objective`` on logits measured from their per-point class mean.

    Values change, gradients w.r.t. the logits do not: the mean is subtracted under
    ``stop_gradient``, so the paper's one-sided update still pushes the raw F_i. Only the
    truncation min(τ²F, 1)/τ now sees F relative to the mean (see ``ntk_center_kd``).
    """

    def f(logits: jax.Array, y: jax.Array, teacher: jax.Array | None) -> jax.Array:
        lg = logits - jax.lax.stop_gradient(logits.mean(-1, keepdims=True))
        t = None if teacher is None else teacher - teacher.mean(-1, keepdims=True)
        return objective(lg, y, t)

    return f


# --- the table ------------------------------------------------------------------------


def _cell(em: np.ndarray, es: np.ndarray, mu: float, train_acc: Sequence[float] | None) -> dict:
    """A table cell from per-model error vectors em (S, n_multi), es (S, n_single).

    Several models are pooled as in :mod:`mvsim.claims`: the mean error count over the S
    models on the same n test points (its CI treats it as one test set of size n).
    """
    em, es = np.atleast_2d(em), np.atleast_2d(es)
    est = Estimate(
        int(round(em.sum(1).mean())), em.shape[1], int(round(es.sum(1).mean())), es.shape[1], mu
    )
    ci = est.ci_over_mu(LEVEL)
    return {
        "error_over_mu": est.error_over_mu,
        "ci95": [ci[0], ci[1]],
        "error_multi_view": est.error_multi if est.n_multi else None,
        "error_single_view": est.error_single,
        "n_test_multi": est.n_multi,
        "n_test_single": est.n_single,
        "models": int(em.shape[0]),
        "train_accuracy": None if train_acc is None else [float(a) for a in train_acc],
    }


def _diff_ci(
    a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], mu: float, level: float
) -> tuple[float, float]:
    """CI of E/μ(a) − E/μ(b) on the same test points: exact paired (McNemar) CIs per
    stratum at Bonferroni level, combined as lo_s + c·lo_m, hi_s + c·hi_m (monotone)."""
    c = (1 - mu) / mu
    has_m = a[0].size > 0 and mu < 1
    lvl = bonferroni_level(level, 2) if has_m else level
    lo, hi = paired_diff_ci(a[1], b[1], lvl)
    if has_m:
        lm, hm = paired_diff_ci(a[0], b[0], lvl)
        lo, hi = lo + c * lm, hi + c * hm
    return lo, hi


def _point(a: tuple[np.ndarray, np.ndarray], mu: float) -> float:
    c = (1 - mu) / mu
    return float(a[1].mean() + (c * a[0].mean() if a[0].size else 0.0))


def _better_verdict(
    better: list[tuple[np.ndarray, np.ndarray]],
    worse: list[tuple[np.ndarray, np.ndarray]],
    mu: float,
    definition: str,
) -> dict:
    """Claim 'E(better_j) < E(worse_j) for every pair j': paired CIs of the difference,
    Bonferroni over the pairs; entirely below 0 → PASS, entirely ≥ 0 → FAIL."""
    lvl = bonferroni_level(LEVEL, len(better))
    rows, vs = [], []
    for j, (a, b) in enumerate(zip(better, worse, strict=True)):
        ci = _diff_ci(a, b, mu, lvl)
        v = verdict(ci, None, 0.0)
        vs.append(v)
        rows.append({"pair": j, "diff_over_mu": _point(a, mu) - _point(b, mu), "ci": list(ci),
                     "verdict": v.name})  # fmt: skip
    v = combine_verdicts(vs)
    n_pass = sum(x == Verdict.PASS for x in vs)
    return {
        "verdict": v.name,
        "definition": definition,
        "level": LEVEL,
        "pairs": rows,
        "reason": f"{n_pass}/{len(vs)} pairs significantly better",
    }


KD_FAILS_DEFINITION = (
    "For each student j (init of single j, teacher T_j), with E = error/mu on the same test "
    "points: d1 = E(S_j) - E(T_j) (student worse than its teacher) and d2 = E(S_j) - "
    "(E(L_j) + E(T_j))/2 (student above the midpoint between its own-init single L_j and the "
    "teacher, i.e. it recovered less than half the teacher's gain E(L_j) - E(T_j)). PASS iff "
    "the CIs of d1 and d2 both lie above 0; FAIL iff either lies at or below 0; precondition: "
    "the teacher is significantly better than L_j (else there is no gain to transfer: "
    "INCONCLUSIVE). CIs: exact paired (McNemar) CIs of S-T, S-L and T-L, each split over the 2 "
    "strata, Bonferroni over the 3 differences and the students; d2's CI is the mean of the "
    "CIs of S-T and S-L."
)


def _kd_fails_verdict(
    students: list[tuple[np.ndarray, np.ndarray]],
    teachers: list[tuple[np.ndarray, np.ndarray]],
    singles: list[tuple[np.ndarray, np.ndarray]],
    mu: float,
) -> dict:
    n = len(students)
    lvl = bonferroni_level(LEVEL, 3 * n)  # three differences per student; strata split inside
    rows, vs = [], []
    for j in range(n):
        s, t, l_ = students[j], teachers[j], singles[j]
        st = _diff_ci(s, t, mu, lvl)
        sl = _diff_ci(s, l_, mu, lvl)
        tl = _diff_ci(t, l_, mu, lvl)  # precondition: teacher better than the single
        d2 = ((st[0] + sl[0]) / 2, (st[1] + sl[1]) / 2)
        if verdict(tl, None, 0.0) != Verdict.PASS:
            v, why = Verdict.INCONCLUSIVE, "teacher not significantly better than the single"
        else:
            v = combine_verdicts([verdict(st, 0.0, None), verdict(d2, 0.0, None)])
            why = ""
        vs.append(v)
        rows.append(
            {
                "student": j,
                "E_student": _point(s, mu),
                "E_teacher": _point(t, mu),
                "E_single": _point(l_, mu),
                "d1_ci": list(st),
                "d2_ci": list(d2),
                "teacher_gain_ci": [-tl[1], -tl[0]],
                "verdict": v.name,
                "reason": why,
            }
        )
    v = combine_verdicts(vs)
    n_pass = sum(x == Verdict.PASS for x in vs)
    return {
        "verdict": v.name,
        "definition": KD_FAILS_DEFINITION,
        "level": LEVEL,
        "students": rows,
        "reason": f"{n_pass}/{n} students stay near the single",
    }


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _stream(cfg: Config, name: str) -> jax.Array:
    from mvsim.verify import stream

    return stream(cfg, name)


_LIN_CHUNK = 20  # GD steps per compiled chunk for linearized models

_NTK_STREAMS = {"lin_init": 101, "lin_average": 102}


def run_ntk(
    cfg: Config,
    measurements: Any | None = None,
    *,
    deep_teacher_logits: np.ndarray | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The deep-vs-NTK table (report.json ``ntk``) and the NTK-side verdicts.

    Rows: 'deep' (from ``measurements``, a :class:`mvsim.verify.Measurements`, if given),
    'linearized' (finite width, :func:`linearized_network`), 'infinite'
    (:func:`kernel_predict`; its ensemble is its single: the infinite-width mean predictor
    is deterministic). Columns: single / ensemble / training_average / kd / self_kd, plus
    the extra columns 'kd_control' and 'kd_from_deep' (see below).

    Linearized models: ``ntk_seeds`` singles (GD to perfect training accuracy or
    ``ntk_T`` steps); the ensemble is their mean logit; the training average is
    ``ntk_avg_seeds`` models, each the mean of ``ntk_avg_members`` jointly trained nets.
    Students (``ntk_kd_students`` per variant, ``ntk_kd_T`` GD steps, student j from
    single j's init, objective ``distill.objective(cfg.distill)``, centred if
    ``ntk_center_kd``): 'kd' is taught by the mean of the *other* singles (independent of
    its teacher; single j is its own-init baseline), 'self_kd' by single j+1, 'kd_control'
    by single j itself (what the objective and the extra steps do without new knowledge),
    'kd_from_deep' by the deep ensemble: ``deep_teacher_logits`` (N, k) on the training
    set, else ``measurements.single_train_logits`` (K, N, k) if it has them, else the
    first ``ntk_deep_teachers`` deep singles of verify's init stream, trained here.

    Data: verify's streams, so the training set is verify's and the test sets are the
    first ``ntk_n_test_multi`` / ``ntk_n_test_single`` points of verify's test sets.
    Verdicts: see :data:`VERDICT_DEFINITIONS`.

    Raises :class:`ConfigError` naming ``learner`` for any learner but the patch CNN, the
    network whose kernel this is.
    """
    if cfg.model.learner != "patch_cnn":
        raise ConfigError(
            "learner",
            cfg.model.learner,
            "the NTK side linearises the patch CNN; run it with learner=patch_cnn",
        )
    log = log or (lambda s: None)
    D, M, C = cfg.data, cfg.model, cfg.ntk
    mu = D.mu
    timing: dict[str, float] = {}
    k, d = D.k, D.d
    S, n_st = C.ntk_seeds, C.ntk_kd_students
    t_all = time.perf_counter()
    with precision(cfg.train.dtype, cfg.train.matmul_precision):
        dtype = jnp.dtype(cfg.train.dtype)
        V = data.features(_stream(cfg, "features"), d, k, dtype)
        tr = data.training_set(_stream(cfg, "data"), D, V, dtype)
        x, y = tr.x, tr.y
        tests = _test_sets(cfg, V, dtype)

        # Linearized singles and training averages. A linear model fits in tens of steps,
        # so the early stop is checked that often.
        tcfg = dataclasses.replace(
            cfg.train, eta=C.ntk_eta, T=C.ntk_T, chunk=min(cfg.train.chunk, _LIN_CHUNK)
        )
        lin = linearized_network(cfg, k, d, dtype)
        t = time.perf_counter()
        singles = train(jax.random.fold_in(_stream(cfg, "init"), _NTK_STREAMS["lin_init"]),
                        lin, x, y, V, tcfg, seeds=S, progress=progress,
                        desc=f"{S} linearized singles")  # fmt: skip
        timing["linearized_single"] = time.perf_counter() - t
        log(f"linearized singles: steps {singles.stop_step.tolist()}")

        t = time.perf_counter()
        lin_avg = linearized_averaged(cfg, k, d, C.ntk_avg_members, dtype)
        # The mean of K outputs hands each member 1/K of the gradient; η·K makes the
        # function move at the single's rate (the mean kernel), as verify's avg_eta_mult.
        mult = C.ntk_avg_members if cfg.distill.avg_eta_mult is None else cfg.distill.avg_eta_mult
        acfg = dataclasses.replace(tcfg, eta=C.ntk_eta * mult)
        averages = train(
            jax.random.fold_in(_stream(cfg, "average"), _NTK_STREAMS["lin_average"]),
            lin_avg, x, y, V, acfg, seeds=C.ntk_avg_seeds, progress=progress,
            desc="linearized training averages",
        )  # fmt: skip
        timing["linearized_average"] = time.perf_counter() - t

        # The deep teacher.
        t = time.perf_counter()
        deep_params, deep_source = None, "none"
        if deep_teacher_logits is not None:
            deep_source = "argument"
        elif getattr(measurements, "single_train_logits", None) is not None:
            deep_teacher_logits = np.asarray(measurements.single_train_logits).mean(0)
            deep_source = "measurements"
        elif C.ntk_deep_teachers > 0:
            net = model.network(M, k, d, dtype)
            deep = train(_stream(cfg, "init"), net, x, y, V, cfg.train,
                         seeds=C.ntk_deep_teachers, progress=progress,
                         desc=f"{C.ntk_deep_teachers} deep teachers")  # fmt: skip
            deep_params = deep.params
            deep_teacher_logits = np.asarray(
                jax.vmap(net.apply, in_axes=(0, None))(deep_params, x).mean(0)
            )
            deep_source = f"trained here: verify's first {C.ntk_deep_teachers} singles"
        timing["deep_teachers"] = time.perf_counter() - t
        log(f"deep teacher: {deep_source}")

        # Students, in blocks of n_st: kd, self_kd, kd_control[, kd_from_deep].
        t = time.perf_counter()
        lin_train = jax.vmap(lin.apply, in_axes=(0, None))(singles.params, x)  # (S, N, k)
        idx = np.arange(n_st)
        variants = {
            "kd": (lin_train.sum(0)[None] - lin_train[idx]) / (S - 1),
            "self_kd": lin_train[(idx + 1) % S],
            "kd_control": lin_train[idx],
        }
        if deep_teacher_logits is not None:
            g_ = jnp.asarray(deep_teacher_logits, dtype)
            variants["kd_from_deep"] = jnp.broadcast_to(g_, (n_st,) + g_.shape)
        objective = distill.objective(cfg.distill)
        if C.ntk_center_kd:
            objective = centered_objective(objective)
        inits = jnp.concatenate([singles.init_params[idx]] * len(variants))
        teachers = jnp.concatenate(list(variants.values()))
        students = train(None, lin, x, y, V, tcfg, init_params=inits, objective=objective,
                         teacher_logits=teachers, T=C.ntk_kd_T, stop="none", progress=progress,
                         desc=f"{len(variants) * n_st} linearized students")  # fmt: skip
        timing["linearized_students"] = time.perf_counter() - t

        # Every finite model on the same test points.
        t = time.perf_counter()
        net_deep = model.network(M, k, d, dtype)

        @jax.jit
        def errs(xb: jax.Array, yb: jax.Array) -> dict[str, jax.Array]:
            wrong = lambda lg: ~jax.vmap(lambda l_: correct(l_, yb))(lg)
            ls = jax.vmap(lin.apply, in_axes=(0, None))(singles.params, xb)
            out = {
                "single": wrong(ls),
                "ensemble": wrong(ls.mean(0, keepdims=True)),
                "loo": wrong((ls.sum(0)[None] - ls[idx]) / (S - 1)),  # the kd teachers
                "average": wrong(jax.vmap(lin_avg.apply, in_axes=(0, None))(averages.params, xb)),
                "students": wrong(jax.vmap(lin.apply, in_axes=(0, None))(students.params, xb)),
            }
            if deep_params is not None:
                ld = jax.vmap(net_deep.apply, in_axes=(0, None))(deep_params, xb)
                out["deep_teacher"] = wrong(ld.mean(0, keepdims=True))
            return out

        E = {name: _errors(errs, *tests[name]) for name in ("single", "multi")}
        E["multi"] = E["multi"] or {
            kk: np.zeros((v.shape[0], 0), bool) for kk, v in E["single"].items()
        }
        timing["evaluate_linearized"] = time.perf_counter() - t

    # Infinite width: kernel regression on the same training set and test points.
    t = time.perf_counter()
    rss0 = _peak_rss_mb()
    x_test = jnp.concatenate([tests["multi"][0], tests["single"][0]])
    logits_test = kernel_predict(cfg, x, y, x_test)
    timing["kernel"] = time.perf_counter() - t
    n_m = tests["multi"][0].shape[0]
    y_all = np.concatenate([np.asarray(tests["multi"][1]), np.asarray(tests["single"][1])])
    wrong_inf = ~np.asarray(correct(jnp.asarray(logits_test), jnp.asarray(y_all)))
    memory = {
        "peak_rss_mb_before_kernel": rss0,
        "peak_rss_mb_after_kernel": _peak_rss_mb(),
        # The largest intermediate of the series kernel: a tile of _TILE samples' patches
        # against every training patch, ~4 live float64 arrays of that shape.
        "kernel_tile_mb": _TILE * D.P * D.N * D.P * 8 * 4 / 2**20,
        "unchunked_nxnxpxp_mb": (D.N + x_test.shape[0]) * D.N * D.P**2 * 8 / 2**20,
    }

    # The table.
    def grp(name: str, j: slice | int | None = None) -> tuple[np.ndarray, np.ndarray]:
        em, es = E["multi"][name], E["single"][name]
        return (em, es) if j is None else (em[j], es[j])

    block = {v: slice(i * n_st, (i + 1) * n_st) for i, v in enumerate(variants)}
    stu_cell = lambda v: _cell(*grp("students", block[v]), mu, students.final_accuracy[block[v]])
    table: dict[str, dict[str, Any]] = {r: dict.fromkeys(COLUMNS + EXTRA_COLUMNS) for r in ROWS}
    table["linearized"].update(
        single=_cell(*grp("single"), mu, singles.final_accuracy),
        ensemble=_cell(*grp("ensemble"), mu, None),
        training_average=_cell(*grp("average"), mu, averages.final_accuracy),
        **{v: stu_cell(v) for v in variants},
    )
    inf_cell = _cell(wrong_inf[None, :n_m], wrong_inf[None, n_m:], mu, None)
    table["infinite"].update(single=inf_cell, ensemble=inf_cell)
    if measurements is not None:
        for col, name in _DEEP_GROUPS:
            gg = measurements.groups.get(name)
            if gg is not None:
                table["deep"][col] = _cell(gg.errors_multi, gg.errors_single, mu, gg.train_accuracy)

    # Verdicts.
    per = lambda name, j: grp(name, j)
    verdicts = {
        "ntk_ensemble_helps": _better_verdict(
            [per("ensemble", 0)] * S, [per("single", j) for j in range(S)], mu,
            VERDICT_DEFINITIONS["ntk_ensemble_helps"],
        ),
        "ntk_average_helps": _better_verdict(
            [per("average", j) for j in range(min(C.ntk_avg_seeds, S))],
            [per("single", j) for j in range(min(C.ntk_avg_seeds, S))], mu,
            VERDICT_DEFINITIONS["ntk_average_helps"],
        ),
        "ntk_kd_fails": _kd_fails_verdict(
            [per("students", block["kd"].start + j) for j in range(n_st)],
            [per("loo", j) for j in range(n_st)],
            [per("single", j) for j in range(n_st)], mu,
        ),
    }  # fmt: skip
    deep_test = _deep_teacher_errors(E, measurements, tests)
    if "kd_from_deep" in variants and deep_test is not None:
        verdicts["ntk_kd_fails_deep_teacher"] = _kd_fails_verdict(
            [per("students", block["kd_from_deep"].start + j) for j in range(n_st)],
            [deep_test] * n_st,
            [per("single", j) for j in range(n_st)],
            mu,
        )
    teachers_out = {"kd": _cell(*grp("loo"), mu, None)}
    if deep_test is not None:
        teachers_out["kd_from_deep"] = _cell(deep_test[0][None], deep_test[1][None], mu, None)
    timing["total"] = time.perf_counter() - t_all
    return {
        "rows": list(ROWS),
        "columns": list(COLUMNS),
        "extra_columns": list(EXTRA_COLUMNS),
        "table": table,
        "verdicts": verdicts,
        "ntk_config": dataclasses.asdict(C),
        "deep_teacher": deep_source,
        "teachers": teachers_out,
        "linearized": {
            "single_steps": singles.stop_step.tolist(),
            "average_steps": averages.stop_step.tolist(),
            "student_final_objective": {
                v: students.final_loss[block[v]].tolist() for v in variants
            },
        },
        "kernel": {
            "evaluator": C.ntk_kernel,
            "terms": C.ntk_terms,
            "deg": C.ntk_deg,
            "n_train": int(x.shape[0]),
            "n_test": int(x_test.shape[0]),
        },  # fmt: skip
        "memory": memory,
        "timing": timing,
    }


EXTRA_COLUMNS = ("kd_control", "kd_from_deep")

_DEEP_GROUPS = (
    ("single", "single"),
    ("ensemble", "ensemble"),
    ("training_average", "training_average"),
    ("kd", "kd"),
    ("self_kd", "self_distillation"),
    ("kd_control", "control"),
)

VERDICT_DEFINITIONS = {
    "ntk_ensemble_helps": (
        "E/mu(linearized ensemble) < E/mu(linearized single j) for every single j: PASS iff "
        "every paired CI of the difference lies below 0, FAIL iff one lies at or above 0 "
        "(exact paired per-stratum CIs, Bonferroni over singles and strata)"
    ),
    "ntk_average_helps": (
        "E/mu(linearized training average j) < E/mu(linearized single j) for each pair j < "
        "min(ntk_avg_seeds, ntk_seeds): same rule as ntk_ensemble_helps"
    ),
    "ntk_kd_fails": KD_FAILS_DEFINITION,
}


def _test_sets(cfg: Config, V: jax.Array, dtype: Any) -> dict[str, tuple[jax.Array, jax.Array]]:
    """The first n points of verify's multi- and single-view test sets (same key split and
    chunk size as :func:`mvsim.verify.run`, and ``split`` is prefix-stable), held whole:
    the NTK rows use a few thousand points."""
    D, C = cfg.data, cfg.ntk
    kt_m, kt_s = jax.random.split(_stream(cfg, "test"))
    out = {}
    for name, key, n in (("multi", kt_m, C.ntk_n_test_multi),
                         ("single", kt_s, C.ntk_n_test_single)):  # fmt: skip
        parts = list(data.iter_chunks(key, D, n, V, name, dtype=dtype)) if n else []
        out[name] = (
            jnp.concatenate([b.x for b in parts]) if parts else jnp.zeros((0, D.P, D.d), dtype),
            jnp.concatenate([b.y for b in parts]) if parts else jnp.zeros((0,), jnp.int32),
        )
    return out


def _errors(errs: Callable, xs: jax.Array, ys: jax.Array, chunk: int = 1024) -> dict:
    """Per-model error vectors {name: (models, n)} over a test set, in chunks."""
    parts = [errs(xs[i : i + chunk], ys[i : i + chunk]) for i in range(0, xs.shape[0], chunk)]
    if not parts:
        return {}
    return {kk: np.concatenate([np.asarray(p[kk]) for p in parts], 1) for kk in parts[0]}


def _deep_teacher_errors(
    E: dict, measurements: Any | None, tests: dict
) -> tuple[np.ndarray, np.ndarray] | None:
    """The deep teacher's test errors on our points: measured here if it was trained here,
    else verify's ensemble restricted to our (prefix) test points, if it covers them."""
    if "deep_teacher" in E["single"]:
        return E["multi"]["deep_teacher"][0], E["single"]["deep_teacher"][0]
    g = None if measurements is None else measurements.groups.get("ensemble")
    n_m, n_s = tests["multi"][0].shape[0], tests["single"][0].shape[0]
    if g is None or g.errors_multi.shape[1] < n_m or g.errors_single.shape[1] < n_s:
        return None
    return g.errors_multi[0, :n_m], g.errors_single[0, :n_s]
