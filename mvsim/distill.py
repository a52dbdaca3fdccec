"""Distillation objectives (paper §4–5, notes §4).

Each objective has the trainer's signature ``objective(logits, y, teacher) -> loss`` so a
student is trained by the same vmapped GD as any model (:func:`mvsim.train.train`).

The paper's update is not the gradient of a loss:

    w ← w − η ∇L_CE − η′ E[(p^τ_i(F) − p^τ_i(G))^− ∇F_i]

with (a)^− = min(a, 0). It is the gradient of the *surrogate*
``L_CE + (η′/η) · E[Σ_i sg((p^τ_i(F) − p^τ_i(G))^−) · F_i]``, where sg stops the gradient,
so plain GD at rate η on the surrogate performs exactly the paper's update.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from mvsim.config import DistillConfig
from mvsim.train import Objective, cross_entropy


def soft_probs(logits: jax.Array, tau: float, truncate: bool) -> jax.Array:
    """p^τ(F): softmax(min(τ²F, 1)/τ) (the paper's truncated form) or softmax(F/τ)."""
    z = jnp.minimum(tau**2 * logits, 1.0) / tau if truncate else logits / tau
    return jax.nn.softmax(z, axis=-1)


def paper_objective(cfg: DistillConfig) -> Objective:
    """The paper's one-sided update as a surrogate loss (module docstring)."""

    def objective(logits: jax.Array, y: jax.Array, teacher: jax.Array | None) -> jax.Array:
        gap = soft_probs(logits, cfg.kd_tau, cfg.kd_truncate) - soft_probs(
            teacher, cfg.kd_tau, cfg.kd_truncate
        )
        push = jax.lax.stop_gradient(jnp.minimum(gap, 0.0))
        kd = (push * logits).sum(-1).mean()
        ce = cross_entropy(logits, y) if cfg.kd_hard_label else 0.0
        return ce + cfg.kd_eta_ratio * kd

    return objective


def hinton_objective(cfg: DistillConfig) -> Objective:
    """α·CE + (1−α)·τ²·KL(softmax(G/τ) ‖ softmax(F/τ)) (Hinton et al. 2015)."""

    def objective(logits: jax.Array, y: jax.Array, teacher: jax.Array | None) -> jax.Array:
        tau = cfg.kd_hinton_tau
        target = jax.nn.softmax(teacher / tau, axis=-1)
        kl = optax.kl_divergence(jax.nn.log_softmax(logits / tau, axis=-1), target).mean()
        return cfg.kd_alpha * cross_entropy(logits, y) + (1 - cfg.kd_alpha) * tau**2 * kl

    return objective


@functools.cache  # the same function for the same config: jit reuses it
def objective(cfg: DistillConfig) -> Objective:
    """The distillation objective selected by ``cfg.kd_objective``."""
    return {"paper": paper_objective, "hinton": hinton_objective}[cfg.kd_objective](cfg)
