"""The multi-view data distribution of Definition 3.1 (paper notes §1).

Everything here is a pure function of a PRNG key and a :class:`~mvsim.config.DataConfig`,
jit-compiled with the config static, and vectorised over samples (no per-sample Python).

Shapes: ``n`` samples, ``P`` patches, ``d`` dimensions, ``k`` classes, 2 views per class.
A sample's input is ``x = coef · V + noise`` where ``coef`` (n, P, k, 2) holds every
patch's coefficient on every view (the z's of feature patches plus the feature noise α)
and ``V`` (k, 2, d) the orthonormal views.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from mvsim.config import DataConfig

View = Literal["mixed", "multi", "single"]


class Batch(NamedTuple):
    """A data set. ``strong_view`` is ℓ̂ ∈ {0, 1} for single-view points and −1 otherwise."""

    x: Float[Array, "n P d"]
    y: Int[Array, " n"]  # labels in [0, k)
    single_view: Bool[Array, " n"]
    strong_view: Int[Array, " n"]


class GroundTruth(NamedTuple):
    """What generated a :class:`Batch`: ``x == einsum('npkl,kld->npd', coef, V) + noise``."""

    coef: Float[Array, "n P k 2"]  # coefficient of every view in every patch
    noise: Float[Array, "n P d"]  # Gaussian noise ξ
    present: Bool[Array, "n k 2"]  # the feature set V(X)
    patches: Int[Array, "n k 2 C_p"]  # P_v(X), meaningful where present
    zsum: Float[Array, "n k 2"]  # Σ_{p∈P_v(X)} z_p (0 where absent)
    n_noisy_dropped: Int[Array, " n"]  # noisy features removed by the max_noisy cap


def features(
    key: PRNGKeyArray, d: int, k: int, dtype: jnp.dtype = jnp.float32
) -> Float[Array, "k 2 d"]:
    """2k orthonormal views in R^d, as an array (k, 2, d): a random rotation of e_1..e_2k."""
    g = jax.random.normal(key, (d, 2 * k), dtype=jnp.float32)
    q, r = jnp.linalg.qr(g)
    # Fix the sign ambiguity of QR so the result is a deterministic function of the key.
    q = q * jnp.sign(jnp.diagonal(r))[None, :]
    return q.T.reshape(k, 2, d).astype(dtype)


def _uniform(key: jax.Array, shape: tuple[int, ...], rng: tuple[float, float]) -> jax.Array:
    return jax.random.uniform(key, shape, minval=rng[0], maxval=rng[1])


def _labels(
    key: jax.Array, k: int, n: int, view: View, stratified: bool, sc: dict[str, jax.Array]
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Labels y, the single-view flag and ℓ̂ for n samples."""
    ky, ks, kl = jax.random.split(key, 3)
    if stratified:
        # Exactly round(μn) single-view points cycling over (class, strong view), then
        # multi-view points cycling over classes: no (class, view) is left out by chance.
        n_single = sc["n_single"]
        idx = jnp.arange(n)
        is_single = idx < n_single
        j = jnp.where(is_single, idx, idx - n_single)
        y = (j % k).astype(jnp.int32)
        strong = jnp.where(is_single, (j // k) % 2, -1).astype(jnp.int32)
        return y, is_single, strong
    y = jax.random.randint(ky, (n,), 0, k, dtype=jnp.int32)
    if view == "mixed":
        is_single = jax.random.bernoulli(ks, sc["mu"], (n,))
    else:
        is_single = jnp.full((n,), view == "single")
    strong = jax.random.randint(kl, (n,), 0, 2, dtype=jnp.int32)
    return y, is_single, jnp.where(is_single, strong, -1)


# Fields that change no shape: the sampler takes them as traced values (see _scalars), so a
# sweep over μ, s, ρ, Γ, σ_p, ... compiles it once per shape, not once per point.
_TRACED = {
    "mu": 0.0, "s": 0.0, "rho": (0.0, 0.0), "own_z": (0.0, 0.0), "Gamma": (0.0, 0.0),
    "noisy_z_multi": (0.0, 0.0), "gamma": 0.0, "sigma_p": 0.0, "sigma_n": 0.0,
}  # fmt: skip


def _scalars(cfg: DataConfig, n: int, view: View) -> tuple[DataConfig, dict[str, jax.Array]]:
    """Split cfg into its static part (traced fields zeroed) and the traced values.

    Derived numbers are computed here in Python double precision, as before the split
    (round(μn), s/k), so the samples are the same bits as with the fields static.
    """
    n_single = {"mixed": round(cfg.mu * n), "multi": 0, "single": n}[view]
    sc = {name: jnp.asarray(getattr(cfg, name)) for name in _TRACED}  # default float type
    sc["p_noisy"] = jnp.asarray(cfg.s / cfg.k)
    sc["n_single"] = jnp.asarray(n_single, jnp.int32)
    return dataclasses.replace(cfg, **_TRACED), sc


@functools.partial(jax.jit, static_argnames=("cfg", "n", "view", "stratified", "dtype"))
def _sample(
    key: jax.Array,
    V: jax.Array,
    sc: dict[str, jax.Array],
    cfg: DataConfig,
    n: int,
    view: View,
    stratified: bool,
    dtype: jnp.dtype,
) -> tuple[Batch, GroundTruth]:
    k, P, d, C = cfg.k, cfg.P, cfg.d, cfg.C_p
    keys = jax.random.split(key, 10)
    y, is_single, strong = _labels(keys[0], k, n, view, stratified, sc)

    own = jax.nn.one_hot(y, k, dtype=jnp.bool_)[:, :, None] & jnp.ones((1, 1, 2), jnp.bool_)

    # V'(X): every other-class view independently with probability s/k, then at most
    # max_noisy of them kept (a uniformly random subset when the draw exceeds the cap).
    noisy = jax.random.bernoulli(keys[1], sc["p_noisy"], (n, k, 2)) & ~own
    prio = jax.random.uniform(keys[2], (n, k, 2))
    flat_prio = jnp.where(noisy, prio, 2.0).reshape(n, 2 * k)
    rank = jnp.argsort(jnp.argsort(flat_prio, axis=1), axis=1).reshape(n, k, 2)
    kept = noisy & (rank < cfg.noisy_cap)
    dropped = (noisy.sum((1, 2)) - kept.sum((1, 2))).astype(jnp.int32)
    present = own | kept

    # z-sums (notes §1.2 table): own views [1, O(1)]; in D_s the weak view is ρ-scale and
    # noisy features Γ-scale; in D_m noisy features are in [Ω(1), 0.4].
    shape = (n, k, 2)
    sv = is_single[:, None, None]
    ell = jnp.arange(2)[None, None, :]
    weak = own & sv & (ell != strong[:, None, None])
    z_own = jnp.where(
        weak, _uniform(keys[3], shape, sc["rho"]), _uniform(keys[4], shape, sc["own_z"])
    )
    z_noisy = jnp.where(
        sv, _uniform(keys[5], shape, sc["Gamma"]), _uniform(keys[6], shape, sc["noisy_z_multi"])
    )
    zsum = jnp.where(own, z_own, jnp.where(kept, z_noisy, 0.0))

    # Disjoint patch sets: a random permutation of the patches per sample, with the t-th
    # present feature taking positions [t·C_p, (t+1)·C_p) of it.
    perm = jnp.argsort(jax.random.uniform(keys[7], (n, P)), axis=1).astype(jnp.int32)
    slot = jnp.cumsum(present.reshape(n, 2 * k), axis=1).reshape(n, k, 2) - 1
    pos = jnp.clip(slot, 0)[..., None] * C + jnp.arange(C)  # (n, k, 2, C)
    pos = jnp.minimum(pos, P - 1)  # absent features only; masked below
    patches = jnp.take_along_axis(perm, pos.reshape(n, -1), axis=1).reshape(n, k, 2, C)

    if cfg.z_split == "equal" or C == 1:
        split = jnp.full((n, k, 2, C), 1.0 / C)
    else:
        e = jax.random.exponential(keys[8], (n, k, 2, C))
        split = e / e.sum(-1, keepdims=True)
    z = zsum[..., None] * split * present[..., None]

    rows = jnp.arange(n)[:, None, None, None]
    view_idx = jnp.arange(2 * k).reshape(1, k, 2, 1)
    coef = jnp.zeros((n, P, 2 * k)).at[rows, patches, view_idx].add(z)
    in_set = jnp.broadcast_to(present[..., None], patches.shape)
    feature_patch = jnp.zeros((n, P), jnp.bool_).at[rows, patches].max(in_set)

    ka, kn = jax.random.split(keys[9])
    # γ = 0 adds exact zeros: the same x as skipping the draw, without a branch on γ.
    coef = coef + jax.random.uniform(ka, (n, P, 2 * k), maxval=sc["gamma"])

    Vf = V.reshape(2 * k, d).astype(jnp.float32)
    std = jnp.where(feature_patch, sc["sigma_p"], sc["sigma_n"])[..., None]
    noise = jax.random.normal(kn, (n, P, d)) * std
    if cfg.project_noise:
        noise = noise - (noise @ Vf.T) @ Vf
    x = coef @ Vf + noise

    batch = Batch(x.astype(dtype), y, is_single, strong)
    truth = GroundTruth(
        coef.reshape(n, P, k, 2).astype(dtype),
        noise.astype(dtype),
        present,
        patches,
        zsum.astype(dtype),
        dropped,
    )
    return batch, truth


@functools.partial(jax.jit, static_argnames=("cfg", "n", "stratified", "dtype"))
def _sample_gaussian(
    key: jax.Array, V: jax.Array, cfg: DataConfig, n: int, stratified: bool, dtype: jnp.dtype
) -> tuple[Batch, GroundTruth]:
    """The 'gaussian' family: x_p = a·u_y + ξ_p on every patch, ξ_p ~ N(0, σ_n² I_d).

    u_y = v_{y,1} (the first view of class y), a = Δ·σ_n/√(2P), so the class means
    M_y = a·(u_y, …, u_y) ∈ R^{P×d} are pairwise ‖M_i − M_j‖ = Δ·σ_n apart. There is one
    feature per class and every sample carries it at the same strength: no sample lacks
    a view, which is the structure the multi-view theory needs.
    """
    k, P, d = cfg.k, cfg.P, cfg.d
    ky, kn = jax.random.split(key)
    if stratified:
        y = (jnp.arange(n) % k).astype(jnp.int32)
    else:
        y = jax.random.randint(ky, (n,), 0, k, dtype=jnp.int32)
    a = gaussian_mean(cfg)
    coef = jnp.zeros((n, P, k, 2)).at[jnp.arange(n), :, y, 0].set(a)
    noise = jax.random.normal(kn, (n, P, d)) * cfg.sigma_n
    x = coef.reshape(n, P, 2 * k) @ V.reshape(2 * k, d).astype(jnp.float32) + noise
    present = jnp.zeros((n, k, 2), bool).at[jnp.arange(n), y, 0].set(True)
    batch = Batch(x.astype(dtype), y, jnp.zeros(n, bool), jnp.full(n, -1, jnp.int32))
    truth = GroundTruth(
        coef.astype(dtype),
        noise.astype(dtype),
        present,
        jnp.zeros((n, k, 2, cfg.C_p), jnp.int32),
        (present * (a * P)).astype(dtype),
        jnp.zeros(n, jnp.int32),
    )
    return batch, truth


def gaussian_mean(cfg: DataConfig) -> float:
    """Per-patch mean a = Δ·σ_n/√(2P) of the 'gaussian' family (Δ = ``gauss_sep``)."""
    return cfg.gauss_sep * cfg.sigma_n / math.sqrt(2 * cfg.P)


def gaussian_bayes_error(k: int, sep: float, grid: int = 20001) -> float:
    """Bayes error of the 'gaussian' family with k classes at separation Δ = ``sep``.

    The class means are equal-norm and pairwise orthogonal-direction, so the optimal rule
    picks argmax_j ⟨Σ_p x_p, u_j⟩; these k scores are independent normals of equal
    variance, the true class's shifted by Δ/√2 standard deviations. Hence
    error = 1 − ∫ φ(z − Δ/√2) Φ(z)^{k−1} dz (trapezoid rule on ±12 sd, error < 1e-9).
    At k = 2 it is Φ(−Δ/2).
    """
    import numpy as np

    if k < 2 or sep <= 0:
        raise ValueError(f"need k ≥ 2 and sep > 0, got k={k}, sep={sep}")
    delta = sep / math.sqrt(2.0)
    z = np.linspace(delta - 12.0, delta + 12.0, grid)
    phi = np.exp(-0.5 * (z - delta) ** 2) / math.sqrt(2 * math.pi)
    Phi = 0.5 * np.array([math.erfc(-t / math.sqrt(2.0)) for t in z])
    return float(1.0 - np.trapezoid(phi * Phi ** (k - 1), z))


def sample(
    key: PRNGKeyArray,
    cfg: DataConfig,
    n: int,
    V: Float[Array, "k 2 d"],
    *,
    view: View = "mixed",
    stratified: bool = False,
    ground_truth: bool = False,
    dtype: jnp.dtype = jnp.float32,
) -> Batch | tuple[Batch, GroundTruth]:
    """Draw n samples of Definition 3.1.

    Args:
      key: PRNG key; the result is a deterministic function of it.
      cfg: the data config.
      n: number of samples.
      V: views (k, 2, d) from :func:`features` (shared by training and test sets).
      view: 'mixed' (D_s with probability μ, else D_m), 'multi' (all D_m) or 'single'.
        Ignored by the 'gaussian' family (``cfg.family``), which has no views to select.
      stratified: exact composition instead of i.i.d. labels (see ``train_composition``).
      ground_truth: also return the :class:`GroundTruth`.
      dtype: dtype of ``x``.

    Returns:
      A :class:`Batch`, or ``(Batch, GroundTruth)``.
    """
    if view not in ("mixed", "multi", "single"):
        raise ValueError(f"view = {view!r}: must be 'mixed', 'multi' or 'single'")
    if n < 1:
        raise ValueError(f"n = {n}: must be ≥ 1")
    f32 = jnp.dtype(jnp.float32)
    # Drawn in float32 whatever `dtype` is, then cast: under float64 JAX's samplers would
    # draw other numbers from the same key, and a float64 run would be another experiment.
    with jax.enable_x64(False):
        V32 = jnp.asarray(V).astype(f32)
        if cfg.family == "gaussian":  # one mixture: `view` has nothing to select
            batch, truth = _sample_gaussian(key, V32, cfg, n, stratified, f32)
        else:
            static, sc = _scalars(cfg, n, view)
            batch, truth = _sample(key, V32, sc, static, n, view, stratified, f32)
    cast = lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a
    batch, truth = jax.tree.map(cast, (batch, truth))
    return (batch, truth) if ground_truth else batch


def training_set(
    key: PRNGKeyArray,
    cfg: DataConfig,
    V: Float[Array, "k 2 d"],
    dtype: jnp.dtype = jnp.float32,
    *,
    ground_truth: bool = False,
) -> Batch | tuple[Batch, GroundTruth]:
    """The training set Z: N samples, composed as ``cfg.train_composition`` says.

    Returns a :class:`Batch` with x (N, P, d), y (N,), single_view (N,), strong_view (N,),
    and its :class:`GroundTruth` too if ``ground_truth``. ``mvsim verify`` draws it with
    the key ``verify.stream(cfg, "data")`` and V from ``verify.stream(cfg, "features")``.
    """
    stratified = cfg.train_composition == "stratified"
    return sample(key, cfg, cfg.N, V, stratified=stratified, ground_truth=ground_truth,
                  dtype=dtype)  # fmt: skip


def iter_chunks(
    key: PRNGKeyArray,
    cfg: DataConfig,
    n: int,
    V: Float[Array, "k 2 d"],
    view: View,
    chunk: int = 8192,
    dtype: jnp.dtype = jnp.float32,
) -> Iterator[Batch]:
    """Yield a large test set of ``n`` points in chunks (fixed shape, so one compile).

    The last chunk is drawn full-size and trimmed; each chunk has its own key, so the
    set is a deterministic function of (key, n, chunk).
    """
    chunk = min(chunk, n)
    n_chunks = -(-n // chunk)
    for i, kc in enumerate(jax.random.split(key, n_chunks)):
        b = sample(kc, cfg, chunk, V, view=view, dtype=dtype)
        take = min(chunk, n - i * chunk)
        yield b if take == chunk else Batch(*(a[:take] for a in b))
