"""The learner of the paper (notes §2): a two-layer patch CNN with a smoothed ReLU.

    F_i(X) = Σ_{r∈[m]} Σ_{p∈[P]} ReLU~(⟨w_{i,r}, x_p⟩),   W = (w_{i,r}) ∈ R^{k×m×d}

The second layer is fixed to all-ones and not trained. Patches do not overlap, so the
"convolution" is one matmul of the (n·P, d) patches with the (d, k·m) weights.

Models are (init, apply) pairs of pure functions over a params pytree, jax-md style, so
they jit and vmap cleanly; :func:`averaged` builds the "training average" model from the
same pieces.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from mvsim.config import ModelConfig

Params = Any
"""A model's params: any pytree of arrays. The patch CNN's is one array W (k, m, d) ((K, k,
m, d) for an averaged model); a flax learner's is the nested dict of its module's state
(:mod:`mvsim.learners`)."""
ApplyFn = Callable[[Params, jax.Array], jax.Array]
AlignmentFn = Callable[[Params, jax.Array], jax.Array]
"""alignment(params, V (k, 2, d)) -> (..., k, 2): what the trainer records as Λ."""


def smoothed_relu(z: Float[Array, "*s"], q: int, varrho: float) -> Float[Array, "*s"]:
    """ReLU~(z): 0 for z ≤ 0, z^q/(q ϱ^{q−1}) on [0, ϱ], z − (1 − 1/q)ϱ above ϱ.

    Elementwise: any shape in, the same shape out, in the units of z.

    C¹ with derivative (z/ϱ)^{q−1} on [0, ϱ]. The polynomial piece is evaluated at z
    clipped to [0, ϱ], so no branch ever sees an argument that would give NaN gradients,
    and is masked to 0 for z ≤ 0 so the gradient there is 0 even for q = 1 (where clip's
    tie rule would otherwise give 1/2 at z = 0).
    """
    zc = jnp.clip(z, 0.0, varrho)
    poly = jnp.where(z > 0, zc**q / (q * varrho ** (q - 1)), 0.0)
    lin = z - (1.0 - 1.0 / q) * varrho
    return jnp.where(z >= varrho, lin, poly)


def smoothed_relu_grad(z: Float[Array, "*s"], q: int, varrho: float) -> Float[Array, "*s"]:
    """ReLU~'(z) in closed form: 0 for z ≤ 0, (z/ϱ)^{q−1} on [0, ϱ], 1 above."""
    # z > 0 mask: for q = 1 the power (z/ϱ)^0 would be 1 at z ≤ 0, not 0.
    poly = jnp.where(z > 0, (jnp.clip(z, 0.0, varrho) / varrho) ** (q - 1), 0.0)
    return jnp.where(z >= varrho, 1.0, poly)


def init_weights(
    key: PRNGKeyArray, cfg: ModelConfig, k: int, d: int, dtype=jnp.float32
) -> Float[Array, "k m d"]:
    """W^{(0)} with i.i.d. N(0, σ_0²) entries, shape (k, m, d). Drawn in float32 and cast,
    so that ``dtype`` changes the precision of a run, not its random draw."""
    draw = jax.random.normal(key, (k, cfg.m, d), dtype=jnp.float32)
    return (cfg.sigma_0 * draw).astype(dtype)


def apply(
    W: Float[Array, "k m d"], x: Float[Array, "n P d"], q: int, varrho: float
) -> Float[Array, "n k"]:
    """F(X) for a batch: W (k, m, d), x (n, P, d) -> logits (n, k)."""
    k, m, d = W.shape
    n, P, _ = x.shape
    # The patch "convolution" as one matmul, weights on the left: under vmap over seeds
    # the seed axis then stays outermost (S·k·m, n·P) and the backward pass needs no
    # transposes of the big activation arrays (x @ Wᵀ put the seeds in the middle:
    # 44–56% of a 10-seed step was transposes; benchmarks/RESULTS.md).
    pre = W.reshape(k * m, d) @ x.reshape(n * P, d).T
    act = smoothed_relu(pre, q, varrho)
    return act.reshape(k, m, n, P).sum(axis=(1, 3)).T


# One apply function per (q, ϱ), not per call: jit caches compiled code by function
# identity, so networks of equal q and ϱ (e.g. the points of a μ or σ_0 sweep) share it.
@functools.cache
def _apply_fn(q: int, varrho: float) -> ApplyFn:
    return lambda W, x: apply(W, x, q, varrho)


@functools.cache
def _avg_apply_fn(q: int, varrho: float) -> ApplyFn:
    return lambda W, x: jax.vmap(lambda w: apply(w, x, q, varrho))(W).mean(0)


def network(cfg: ModelConfig, k: int, d: int, dtype=jnp.float32) -> Network:
    """The paper's single network: ``init(key) -> W`` of shape (k, m, d) with i.i.d.
    N(0, σ_0²) entries; ``apply(W, x (n, P, d)) -> logits (n, k)``."""
    return Network(
        init=lambda key: init_weights(key, cfg, k, d, dtype),
        apply=_apply_fn(cfg.q, cfg.varrho),
    )


def averaged(cfg: ModelConfig, k: int, d: int, K: int, dtype=jnp.float32) -> Network:
    """One model defined as the mean of K networks' outputs, trained jointly end to end.

    Params (K, k, m, d). This is the paper's "training average"; the mean (not the sum)
    keeps the output scale of a single network, so the same η applies.
    """

    def init(key: jax.Array) -> Params:
        return jax.vmap(lambda kk: init_weights(kk, cfg, k, d, dtype))(jax.random.split(key, K))

    return Network(init, _avg_apply_fn(cfg.q, cfg.varrho))


def alignment(W: Float[Array, "*b k m d"], V: Float[Array, "k 2 d"]) -> Float[Array, "*b k 2"]:
    """Raw alignment max_r ⟨w_{i,r}, v_{i,ℓ}⟩: W (..., k, m, d), V (k, 2, d) -> (..., k, 2).

    The paper's Λ_{i,ℓ} is its positive part (:func:`view_strength`). For an averaged
    model (leading axes) the max runs over each member separately.
    """
    return jnp.einsum("...kmd,kld->...kml", W, V).max(axis=-2)


def view_strength(W: Float[Array, "*b k m d"], V: Float[Array, "k 2 d"]) -> Float[Array, "*b k 2"]:
    """Λ_{i,ℓ} = max_r [⟨w_{i,r}, v_{i,ℓ}⟩]^+, shape (..., k, 2)."""
    return jnp.maximum(alignment(W, V), 0.0)


def no_alignment(params: Params, V: jax.Array) -> jax.Array:
    """The Λ of a learner without a weight-space reading of its views: an empty (0,) array,
    so the trainer records nothing and the views are read from behaviour
    (:func:`mvsim.mechanism.behavioural_views`)."""
    return jnp.zeros((0,), V.dtype)


class Network(NamedTuple):
    """An (init, apply) pair. ``init(key) -> params``; ``apply(params, x (n,P,d)) -> (n,k)``.

    ``alignment(params, V)`` is what the trainer records along the way: the patch CNN's
    Λ (:func:`alignment`), or :func:`no_alignment` for a learner whose weights do not
    say which view it learned."""

    init: Callable[[jax.Array], Params]
    apply: ApplyFn
    alignment: AlignmentFn = alignment


def views_learned(Lambda: Float[Array, "*b k 2"], threshold: float) -> Bool[Array, "*b k 2"]:
    """Learned-view indicator per (class, view): Λ_{i,ℓ} ≥ threshold. Shape (..., k, 2) bool.

    The paper's dichotomy is Λ ≳ ϱ (learned) against Λ = Õ(σ_0) (not): any threshold
    between them separates the two; the default is ϱ/2.
    """
    return Lambda >= threshold


def lottery_winner(W0: Float[Array, "*b k m d"], V: Float[Array, "k 2 d"]) -> Int[Array, "*b k"]:
    """The view each class should learn, from the init alone: argmax_ℓ Λ^{(0)}_{i,ℓ}.

    The paper's set M (notes §8.1) keeps (i, ℓ) when Λ^{(0)}_{i,ℓ} beats Λ^{(0)}_{i,3−ℓ}
    by a (1 + Θ(1/log² m)) factor; the plain argmax is its prediction with no margin.
    Shape (..., k) int.
    """
    return jnp.argmax(alignment(W0, V), axis=-1)
