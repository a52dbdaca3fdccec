"""Θ, the infinite-width tangent kernel of the patch CNN (the package docstring derives it):
neural-tangents' quadrature (:func:`ntk_kernel_fn`), the exact Hermite series with its
error bound (:func:`series_kernel`, :func:`series_error_bound`), both evaluated in blocks
(:func:`kernel_matrix`), and the infinite-width predictor (:func:`kernel_predict`)."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from mvsim import model
from mvsim._nt_compat import import_neural_tangents
from mvsim.config import Config
from mvsim.train import precision

KernelFn = Callable[[Float[Array, "n1 P d"], Float[Array, "n2 P d"] | None], Float[Array, "n1 n2"]]
"""kernel(x1 (n1, P, d), x2 (n2, P, d) | None) -> Θ (n1, n2), per neuron."""


# --- the infinite-width kernel in neural-tangents ---------------------------------------


def ntk_stax(cfg: Config, d: int, *, readout: bool = False) -> tuple[Callable, Callable, Callable]:
    """The patch CNN of one class in ``neural_tangents.stax``: (init_fn, apply_fn, kernel_fn).

    Input layout (n, P, 1, d): the P patches are a P×1 image with d channels, so a 1×1
    ``Conv`` is the per-patch dense layer. Standard parameterization with W_std = σ_0·√d
    gives weights of std σ_0 and a first-layer NTK of ⟨x_p, x'_p'⟩, i.e. the gradient
    w.r.t. w itself, as :func:`mvsim.train.train` takes it. Without ``readout`` the
    kernel's ``ntk`` is Θ (:mod:`mvsim.ntk`); with ``readout`` a trained Dense(1) readout
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
    tangent kernel of the first (trained) layer with the readout fixed (:mod:`mvsim.ntk`).
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

    def kernel(
        x1: Float[Array, "n1 P d"], x2: Float[Array, "n2 P d"] | None = None
    ) -> Float[Array, "n1 n2"]:
        x2 = x1 if x2 is None else x2
        f = compiled(int(x1.shape[-1]))
        return f(x1[:, :, None, :], x2[:, :, None, :])

    return kernel


# --- the same kernel as a Hermite (Mehler) series ---------------------------------------


def hermite_coefficients(
    a: Float[Array, " M"], q: int, varrho: float, terms: int
) -> tuple[Float[Array, "M terms"], Float[Array, " M"]]:
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


def series_kernel(
    cfg: Config, x1: Float[Array, "n1 P d"], x2: Float[Array, "n2 P d"] | None = None
) -> Float[np.ndarray, "n1 n2"]:
    """Θ(x1, x2) by the Hermite series (:mod:`mvsim.ntk`), float64: (n1, n2) numpy.

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


def series_error_bound(
    cfg: Config, x1: Float[Array, "n1 P d"], x2: Float[Array, "n2 P d"] | None = None
) -> Float[np.ndarray, "n1 n2"]:
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


def kernel_matrix(
    cfg: Config, x1: Float[Array, "n1 P d"], x2: Float[Array, "n2 P d"] | None = None
) -> Float[np.ndarray, "n1 n2"]:
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
    cfg: Config,
    x_train: Float[Array, "N P d"],
    y_train: Int[Array, " N"],
    x_test: Float[Array, "n P d"],
) -> Float[np.ndarray, "n k"]:
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
