"""Full-batch gradient descent, one seed at a time, vmapped over seeds.

:func:`_one_seed_chunk` advances ONE seed by ``chunk`` GD steps with ``lax.scan``; the
public :func:`train` vmaps it over seeds (all seeds share the data unless given their own
teacher) and calls it chunk after chunk until every seed has stopped. Between chunks
(never inside a step) the host checks for divergence and early stopping. Seeds are never
looped over in Python.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mvsim.config import TrainConfig
from mvsim.devices import replicate, shard_seeds
from mvsim.model import ApplyFn, Network, Params, alignment

Objective = Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array]
"""objective(logits (n, k), y (n,), teacher_logits (n, k) | None) -> scalar loss."""


class DivergenceError(FloatingPointError):
    """Training produced NaN/Inf. Names the first seed and step where it happened."""


class TrainResult(NamedTuple):
    """Outcome of :func:`train` for S seeds (numpy arrays, except the params)."""

    params: Params  # (S, ...) final weights
    init_params: Params  # (S, ...) initial weights
    steps: np.ndarray  # (L,) the recorded (log-spaced) steps
    loss: np.ndarray  # (S, L) training loss at each recorded step (NaN after a seed stopped)
    accuracy: np.ndarray  # (S, L) training accuracy (strict margin)
    alignment: np.ndarray  # (S, L, ..., k, 2) max_r ⟨w_{i,r}, v_{i,ℓ}⟩
    stop_step: np.ndarray  # (S,) number of GD steps each seed took
    final_loss: np.ndarray  # (S,)
    final_accuracy: np.ndarray  # (S,)


def cross_entropy(logits: jax.Array, y: jax.Array, teacher: jax.Array | None = None) -> jax.Array:
    """Mean softmax cross-entropy with hard labels (the paper's L(F), notes §2).

    logits (n, k), y (n,) int labels in [0, k); ``teacher`` is ignored (the signature of
    an :data:`Objective`). Returns a scalar in nats per sample.
    """
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def accuracy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Fraction of rows predicted right, exactly 1.0 when every row is right: a float32
    mean of 97 Trues is 0.99999994, and so is count/97 under jit (XLA multiplies by the
    reciprocal), which an ``acc >= 1`` test misses."""
    n_ok = correct(logits, y).sum()
    return jnp.where(n_ok == y.shape[0], 1.0, n_ok / y.shape[0])


def correct(logits: jax.Array, y: jax.Array) -> jax.Array:
    """F_y > F_i for every i ≠ y (ties are errors), shape (n,) bool."""
    fy = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    other = jnp.where(jax.nn.one_hot(y, logits.shape[1], dtype=bool), -jnp.inf, logits)
    return fy > other.max(axis=1)


def precision(dtype: str, matmul: str | None = None) -> contextlib.AbstractContextManager:
    """Context in which arrays of ``dtype`` ('float32' | 'float64') can be made and
    matmuls traced at precision ``matmul`` (TrainConfig.matmul_precision; None: JAX's)."""
    stack = contextlib.ExitStack()
    if dtype == "float64":
        stack.enter_context(jax.enable_x64(True))
    if matmul is not None:
        stack.enter_context(jax.default_matmul_precision(matmul))
    return stack


def log_steps(T: int, n: int) -> np.ndarray:
    """About n log-spaced steps in [0, T], always including 0 and T."""
    s = np.unique(np.round(np.logspace(0, np.log10(max(T, 1)), n)).astype(int))
    return np.unique(np.concatenate([[0], s, [T]]))


def blocked(apply_fn: ApplyFn, block: int) -> ApplyFn:
    """``apply_fn`` evaluated over blocks of ``block`` samples: (params, x (n, P, d)) ->
    (n, k), the same logits. Full blocks go through one ``lax.map`` whose body is
    rematerialised in the backward pass (``jax.checkpoint``); a remainder of n mod block
    samples is one more call. See ``TrainConfig.block`` for why."""

    def f(params: Params, x: jax.Array) -> jax.Array:
        n = x.shape[0]
        nb = n // block
        body = jax.checkpoint(lambda xb: apply_fn(params, xb))
        main = jax.lax.map(body, x[: nb * block].reshape(nb, block, *x.shape[1:]))
        out = main.reshape(nb * block, -1)
        if n > nb * block:
            out = jnp.concatenate([out, apply_fn(params, x[nb * block :])], axis=0)
        return out

    return f


class _State(NamedTuple):
    params: Params
    opt_state: optax.OptState
    t: jax.Array  # steps taken so far
    done: jax.Array  # bool: frozen
    stop_step: jax.Array


def _one_seed_chunk(
    state: _State,
    x: jax.Array,
    y: jax.Array,
    teacher: jax.Array | None,
    V: jax.Array,
    *,
    apply_fn: ApplyFn,
    objective: Objective,
    opt: optax.GradientTransformation,
    cfg: TrainConfig,
    T: int,
    stop: str,
    n_steps: int,
):
    """Advance one seed by ``n_steps`` GD steps. Metrics are those of the params *before*
    each step's update, i.e. of the model after t updates."""

    fwd = blocked(apply_fn, cfg.block) if 0 < cfg.block < x.shape[0] else apply_fn

    def loss_and_logits(params):
        logits = fwd(params, x)
        return objective(logits, y, teacher), logits

    def step(s: _State, _):
        (loss, logits), grads = jax.value_and_grad(loss_and_logits, has_aux=True)(s.params)
        acc = accuracy(logits, y)
        finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(logits))
        if stop == "accuracy":
            hit = acc >= 1.0  # exact: accuracy() is 1.0 iff every point is right
        elif stop == "loss":
            hit = loss < cfg.loss_tol
        else:
            hit = jnp.zeros((), bool)
        done = s.done | hit | (s.t >= T) | ~finite
        stop_step = jnp.where(done & ~s.done, s.t, s.stop_step)
        updates, opt_state = opt.update(grads, s.opt_state, s.params)
        new_params = optax.apply_updates(s.params, updates)
        keep = lambda old, new: jnp.where(done, old, new)
        out = (loss, acc, alignment(s.params, V), finite, s.done)
        nxt = _State(
            jax.tree.map(keep, s.params, new_params),
            jax.tree.map(keep, s.opt_state, opt_state),
            s.t + jnp.where(done, 0, 1),
            done,
            stop_step,
        )
        return nxt, out

    return jax.lax.scan(step, state, None, length=n_steps)


@functools.lru_cache(maxsize=64)
def _chunk_fn(
    apply_fn: ApplyFn,
    objective: Objective,
    cfg: TrainConfig,
    T: int,
    stop: str,
    n_steps: int,
    teacher_axis: int | None,
) -> Callable:
    """The jitted, seed-vmapped chunk ``f(state, x, y, teacher, V, eta)``, one per static
    setup: calls with the same model, objective and config (η excepted) reuse it, and jit
    compiles once per array shape. η is a traced argument so that an η sweep compiles once;
    ``cfg.eta`` is not read (callers pass it normalised so it does not split the cache)."""

    def chunk_fn(state, x, y, teacher, V, eta):
        opt = optax.sgd(eta)
        one = lambda s, t: _one_seed_chunk(
            s, x, y, t, V, apply_fn=apply_fn, objective=objective, opt=opt,
            cfg=cfg, T=T, stop=stop, n_steps=n_steps,
        )  # fmt: skip
        return jax.vmap(one, in_axes=(0, teacher_axis))(state, teacher)

    return jax.jit(chunk_fn)


def train(
    key: jax.Array | None,
    net: Network,
    x: jax.Array,
    y: jax.Array,
    V: jax.Array,
    cfg: TrainConfig,
    *,
    seeds: int | None = None,
    init_params: Params | None = None,
    objective: Objective = cross_entropy,
    teacher_logits: jax.Array | None = None,
    T: int | None = None,
    stop: str | None = None,
    progress: bool = False,
    desc: str = "train",
    shard: bool = True,
) -> TrainResult:
    """Train S seeds of ``net`` by full-batch GD on (x, y), vmapped over seeds.

    Args:
      key: PRNG key for the S initialisations (ignored when ``init_params`` is given).
      net: the (init, apply) pair.
      x: (N, P, d) training inputs, shared by every seed.
      y: (N,) labels.
      V: (k, 2, d) views, for recording Λ.
      cfg: the training config (η, T, chunk, early stop, dtype).
      seeds: S (required unless ``init_params`` is given).
      init_params: (S, ...) initial params, e.g. to distil into a known init.
      objective: ``objective(logits, y, teacher) -> loss``; default cross-entropy.
      teacher_logits: (N, k) shared by all seeds, or (S, N, k) one teacher per seed.
      T: step budget (default ``cfg.T``); stop: early-stop rule (default ``cfg.stop``).
      progress: show a progress bar.
      shard: split the seed axis over the local devices when there are several and S
        divides evenly (:mod:`mvsim.devices`); False keeps every seed on one device.

    Raises:
      DivergenceError: the loss or outputs became NaN/Inf (names seed and step).
    """
    T = cfg.T if T is None else T
    stop = cfg.stop if stop is None else stop
    with precision(cfg.dtype, cfg.matmul_precision):
        dtype = jnp.dtype(cfg.dtype)
        if init_params is None:
            if seeds is None or key is None:
                raise ValueError("train needs `key` and `seeds`, or `init_params`")
            init_params = jax.vmap(net.init)(jax.random.split(key, seeds))
        init_params = jax.tree.map(lambda a: jnp.asarray(a, dtype), init_params)
        S = jax.tree.leaves(init_params)[0].shape[0]
        x = jnp.asarray(x, dtype)
        V = jnp.asarray(V, dtype)
        teacher_axis = None
        if teacher_logits is not None:
            teacher_logits = jnp.asarray(teacher_logits, dtype)
            teacher_axis = 0 if teacher_logits.ndim == 3 else None

        opt = optax.sgd(cfg.eta)
        state = _State(
            init_params,
            jax.vmap(opt.init)(init_params),
            jnp.zeros(S, jnp.int32),
            jnp.zeros(S, bool),
            jnp.full(S, T, jnp.int32),
        )
        n_steps = min(cfg.chunk, T + 1)
        # Seeds on devices: the state (and per-seed teachers) split along the seed axis,
        # the shared data replicated (mvsim.devices; a no-op on one device).
        state = shard_seeds(state, shard)
        x, y, V = replicate((x, y, V), shard)
        if teacher_axis == 0:
            teacher_logits = shard_seeds(teacher_logits, shard)
        chunk_fn = _chunk_fn(net.apply, objective, dataclasses.replace(cfg, eta=1.0), T, stop,
                             n_steps, teacher_axis)  # fmt: skip
        eta = jnp.asarray(cfg.eta, dtype)
        want = log_steps(T, cfg.n_log)
        rec: dict[int, list] = {}
        from tqdm.auto import tqdm

        bar = tqdm(total=T, desc=desc, disable=not progress, leave=False, unit="step")
        # Seed compaction: a stopped seed is frozen but would still cost a full step under
        # vmap. Once half of the running seeds have stopped, the rest continue alone (one
        # recompile per halving), so a slow tail costs what the tail seeds cost.
        full = state
        active = np.arange(S)
        sub, sub_teacher = state, teacher_logits
        last_lam: np.ndarray | None = None
        t0 = 0
        while t0 <= T:
            sub, out = chunk_fn(sub, x, y, sub_teacher, V, eta)
            loss, acc, lam, finite, was_done = (np.asarray(a) for a in out)
            _check_finite(finite, was_done, t0, active)
            if last_lam is None:
                last_lam = np.zeros((S, *lam.shape[2:]), lam.dtype)
            for j in range(loss.shape[1]):
                last_lam[active] = lam[:, j]
                if t0 + j in want:
                    row_loss = np.full(S, np.nan, loss.dtype)
                    row_acc = np.full(S, np.nan, acc.dtype)
                    row_loss[active] = np.where(was_done[:, j], np.nan, loss[:, j])
                    row_acc[active] = np.where(was_done[:, j], np.nan, acc[:, j])
                    rec[t0 + j] = [row_loss, row_acc, last_lam.copy()]
            t0 += n_steps
            bar.update(min(n_steps, T - bar.n))
            running = ~np.asarray(sub.done)
            if not running.any():
                break
            if running.sum() <= len(active) // 2:
                full = _scatter(full, sub, active)
                active, sub = active[running], jax.tree.map(lambda a, r=running: a[r], sub)
                sub = shard_seeds(sub, shard)
                if teacher_axis == 0:
                    sub_teacher = shard_seeds(teacher_logits[active], shard)
        bar.close()
        state = _scatter(full, sub, active)
        steps = np.array(sorted(rec))
        final_logits = jax.vmap(net.apply, in_axes=(0, None))(state.params, x)
        final_loss = jax.vmap(lambda lg, t: objective(lg, y, t), in_axes=(0, teacher_axis))(
            final_logits, teacher_logits
        )
        final_acc = jax.vmap(lambda lg: accuracy(lg, y))(final_logits)
        return TrainResult(
            params=state.params,
            init_params=init_params,
            steps=steps,
            loss=np.stack([rec[t][0] for t in steps], 1),
            accuracy=np.stack([rec[t][1] for t in steps], 1),
            alignment=np.stack([rec[t][2] for t in steps], 1),
            stop_step=np.asarray(state.stop_step),
            final_loss=np.asarray(final_loss),
            final_accuracy=np.asarray(final_acc),
        )


def _scatter(full: _State, sub: _State, active: np.ndarray) -> _State:
    """Write the running seeds' state back into the all-seed state."""
    return jax.tree.map(lambda f, s: f.at[active].set(s), full, sub)


def _check_finite(finite: np.ndarray, was_done: np.ndarray, t0: int, active: np.ndarray) -> None:
    bad = ~finite & ~was_done
    if bad.any():
        j = int(np.argmax(bad.any(0)))  # the earliest step, then the lowest seed there
        seed = int(active[np.argmax(bad[:, j])])
        raise DivergenceError(
            f"training diverged: loss or logits became NaN/Inf at step {t0 + j} of seed {seed} "
            "(lower eta, or check the data scale)"
        )


def predict(apply_fn: ApplyFn, params: Params, x: jax.Array, chunk: int = 8192) -> jax.Array:
    """Logits of S models on x: params (S, ...), x (n, P, d) -> (S, n, k), in chunks."""
    f = jax.jit(jax.vmap(apply_fn, in_axes=(0, None)))
    return jnp.concatenate([f(params, x[i : i + chunk]) for i in range(0, x.shape[0], chunk)], 1)
