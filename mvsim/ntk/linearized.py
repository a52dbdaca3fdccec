"""Finite-width linearized networks (f_lin(W, x) = f(W0, x) + ⟨W − W0, ∇f(W0, x)⟩) and
the stages of :func:`mvsim.ntk.run_ntk` that train them: singles, training averages and
students (taught by other linearized models or by the deep ensemble)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from mvsim import distill, model
from mvsim.config import Config
from mvsim.model import Network, Params
from mvsim.progress import Progress
from mvsim.train import Objective, TrainResult, train

_LIN_CHUNK = 20  # GD steps per compiled chunk for linearized models


class TrainingSet(NamedTuple):
    """verify's training set and its views."""

    x: Float[Array, "N P d"]
    y: Int[Array, " N"]
    V: Float[Array, "k 2 d"]


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


# --- the stages of run_ntk that train them ---------------------------------------------


def _lin_train_cfg(cfg: Config) -> Any:
    """GD for linearized models. A linear model fits in tens of steps, so the early stop is
    checked that often."""
    C = cfg.ntk
    return dataclasses.replace(
        cfg.train, eta=C.ntk_eta, T=C.ntk_T, chunk=min(cfg.train.chunk, _LIN_CHUNK)
    )


def train_singles(
    key: jax.Array,
    cfg: Config,
    lin: Network,
    ts: TrainingSet,
    progress: Progress = False,
) -> TrainResult:
    """``ntk_seeds`` linearized singles, GD to perfect training accuracy or ``ntk_T`` steps."""
    S = cfg.ntk.ntk_seeds
    return train(key, lin, *ts, _lin_train_cfg(cfg), seeds=S, progress=progress,
                 desc=f"{S} linearized singles")  # fmt: skip


def train_averages(
    key: jax.Array,
    cfg: Config,
    lin_avg: Network,
    ts: TrainingSet,
    progress: Progress = False,
) -> TrainResult:
    """``ntk_avg_seeds`` training averages, each of ``ntk_avg_members`` jointly trained nets."""
    C = cfg.ntk
    # The mean of K outputs hands each member 1/K of the gradient; η·K makes the
    # function move at the single's rate (the mean kernel), as verify's avg_eta_mult.
    mult = C.ntk_avg_members if cfg.distill.avg_eta_mult is None else cfg.distill.avg_eta_mult
    acfg = dataclasses.replace(_lin_train_cfg(cfg), eta=C.ntk_eta * mult)
    return train(key, lin_avg, *ts, acfg, seeds=C.ntk_avg_seeds, progress=progress,
                 desc="linearized training averages")  # fmt: skip


def teacher_variants(
    cfg: Config,
    lin_train: Float[Array, "S N k"],
    deep_teacher_logits: Float[np.ndarray, "N k"] | None,
    dtype: Any,
) -> dict[str, Float[Array, "n_st N k"]]:
    """The teachers of the ``ntk_kd_students`` students of each variant, from the singles'
    training logits: 'kd' the mean of the *other* singles, 'self_kd' single j+1,
    'kd_control' single j itself, 'kd_from_deep' the deep ensemble (when there is one)."""
    S, n_st = cfg.ntk.ntk_seeds, cfg.ntk.ntk_kd_students
    idx = np.arange(n_st)
    variants = {
        "kd": (lin_train.sum(0)[None] - lin_train[idx]) / (S - 1),
        "self_kd": lin_train[(idx + 1) % S],
        "kd_control": lin_train[idx],
    }
    if deep_teacher_logits is not None:
        g_ = jnp.asarray(deep_teacher_logits, dtype)
        variants["kd_from_deep"] = jnp.broadcast_to(g_, (n_st,) + g_.shape)
    return variants


def train_students(
    cfg: Config,
    lin: Network,
    singles: TrainResult,
    deep_teacher_logits: Float[np.ndarray, "N k"] | None,
    ts: TrainingSet,
    dtype: Any,
    progress: Progress = False,
) -> tuple[Sequence[str], TrainResult]:
    """The students, in blocks of ``ntk_kd_students``, one block per variant of
    :func:`teacher_variants` (student j from single j's init, ``ntk_kd_T`` GD steps,
    objective ``distill.objective(cfg.distill)``, centred if ``ntk_center_kd``).
    Returns (the variants in block order, the students)."""
    C = cfg.ntk
    lin_train = jax.vmap(lin.apply, in_axes=(0, None))(singles.params, ts.x)  # (S, N, k)
    variants = teacher_variants(cfg, lin_train, deep_teacher_logits, dtype)
    objective = distill.objective(cfg.distill)
    if C.ntk_center_kd:
        objective = centered_objective(objective)
    idx = np.arange(C.ntk_kd_students)
    inits = jnp.concatenate([singles.init_params[idx]] * len(variants))
    teachers = jnp.concatenate(list(variants.values()))
    n = len(variants) * C.ntk_kd_students
    students = train(None, lin, *ts, _lin_train_cfg(cfg), init_params=inits,
                     objective=objective, teacher_logits=teachers, T=C.ntk_kd_T, stop="none",
                     progress=progress, desc=f"{n} linearized students")  # fmt: skip
    return tuple(variants), students
