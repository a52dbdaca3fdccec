"""Full-batch training, one seed at a time, vmapped over seeds and points.

Two integrators of the same path (``TrainConfig.integrator``):

- 'flow' (the default): :func:`_flow_one` integrates ONE model's gradient flow over the
  whole run (:func:`mvsim.flow.solve`, adaptive steps, the stop rule as an event);
- 'gd' (the reference): :func:`_one_seed_chunk` advances ONE seed by ``chunk`` fixed-η
  GD steps with ``lax.scan``, called chunk after chunk until every model has stopped,
  the host checking divergence and compacting stopped models away between chunks.

:func:`train_points` vmaps either over seeds (a point's seeds share its data unless given
their own teacher) and over points (sweep points of the same shapes, each with its own
data and η); :func:`train` is one point. Neither seeds nor points are looped over in
Python.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from mvsim import devices, flow
from mvsim import progress as prog
from mvsim.config import TrainConfig
from mvsim.model import AlignmentFn, ApplyFn, Network, Params

Objective = Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array]
"""objective(logits (n, k), y (n,), teacher_logits (n, k) | None) -> scalar loss."""


class DivergenceError(FloatingPointError):
    """Training produced NaN/Inf. Names the first seed and step where it happened."""


class TrainResult(NamedTuple):
    """Outcome of :func:`train` for S seeds (numpy arrays, except the params); from
    :func:`train_points` every array but ``steps`` has a leading (Q, S) instead of (S,)."""

    params: Params  # (S, ...) final weights
    init_params: Params  # (S, ...) initial weights
    steps: np.ndarray  # (L,) the recorded (log-spaced) steps
    loss: np.ndarray  # (S, L) training loss at each recorded step (NaN after a seed stopped)
    accuracy: np.ndarray  # (S, L) training accuracy (strict margin)
    alignment: np.ndarray  # (S, L, ..., k, 2) max_r ⟨w_{i,r}, v_{i,ℓ}⟩ ((S, L, 0): no Λ)
    stop_step: np.ndarray  # (S,) GD steps (flow: GD-equivalent steps t/η) each seed took
    grad_evals: np.ndarray  # (S,) gradient evaluations it cost (GD: one a step)
    final_loss: np.ndarray  # (S,)
    final_accuracy: np.ndarray  # (S,)
    # (S, L', ...) the weights at every step of history_steps (L',), the run's whole grid
    # (GD's metrics above stop where every seed has; the final weights past a seed's
    # stop): what verify's error curves evaluate, after training, in one batched pass.
    history_params: Params = None
    history_steps: np.ndarray | None = None

    def point(self, q: int) -> TrainResult:
        """Point q of a :func:`train_points` result (arrays (Q, S, ...)): a result of S
        seeds, as :func:`train` returns."""
        take = lambda a: jax.tree.map(lambda b: b[q], a)
        shared = ("steps", "history_steps")
        return self._replace(**{f: take(getattr(self, f)) for f in self._fields if f not in shared})


def cross_entropy(
    logits: Float[Array, "n k"], y: Int[Array, " n"], teacher: Float[Array, "n k"] | None = None
) -> Float[Array, ""]:
    """Mean softmax cross-entropy with hard labels (the paper's L(F), notes §2).

    logits (n, k), y (n,) int labels in [0, k); ``teacher`` is ignored (the signature of
    an :data:`Objective`). Returns a scalar in nats per sample.
    """
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def accuracy(logits: Float[Array, "n k"], y: Int[Array, " n"]) -> Float[Array, ""]:
    """Fraction of rows predicted right, exactly 1.0 when every row is right: a float32
    mean of 97 Trues is 0.99999994, and so is count/97 under jit (XLA multiplies by the
    reciprocal), which an ``acc >= 1`` test misses."""
    n_ok = correct(logits, y).sum()
    return jnp.where(n_ok == y.shape[0], 1.0, n_ok / y.shape[0])


def _margins(logits: jax.Array, y: jax.Array) -> jax.Array:
    """F_y − max_{i≠y} F_i per row, shape (n,)."""
    fy = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    other = jnp.where(jax.nn.one_hot(y, logits.shape[1], dtype=bool), -jnp.inf, logits)
    return fy - other.max(axis=1)


def correct(logits: Float[Array, "n k"], y: Int[Array, " n"]) -> Bool[Array, " n"]:
    """F_y > F_i for every i ≠ y (ties are errors), shape (n,) bool."""
    return _margins(logits, y) > 0


def margin(logits: Float[Array, "n k"], y: Int[Array, " n"]) -> Float[Array, ""]:
    """min over rows of F_y − max_{i≠y} F_i: positive exactly when every row is right
    (ties are errors), a real-valued form of ``accuracy == 1`` for locating the stop."""
    return _margins(logits, y).min()


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


def history_steps(T: int, n: int, horizon: int | None = None) -> np.ndarray:
    """The recorded steps of a run of T steps: :func:`log_steps` of the horizon (default
    T), then those of T past it, so that the times up to the horizon do not depend on the
    cap T (the trajectory reading compares runs whose caps differ)."""
    if horizon is None or horizon >= T:
        return log_steps(T, n)
    late = log_steps(T, n)
    return np.concatenate([log_steps(horizon, n), late[late > horizon]])


def blocked(apply_fn: ApplyFn, block: int) -> ApplyFn:
    """``apply_fn`` evaluated over blocks of ``block`` samples: (params, x (n, P, d)) ->
    (n, k), the same logits. Full blocks go through one ``lax.map`` whose body is
    rematerialised in the backward pass (``jax.checkpoint``); a remainder of n mod block
    samples is one more call (all n of them when n < block). See ``TrainConfig.block`` for
    why."""

    def f(params: Params, x: jax.Array) -> jax.Array:
        n = x.shape[0]
        nb = n // block
        if nb == 0:  # no full block: an empty lax.map's (0, -1) reshape cannot be resolved
            return apply_fn(params, x)
        body = jax.checkpoint(lambda xb: apply_fn(params, xb))
        main = jax.lax.map(body, x[: nb * block].reshape(nb, block, *x.shape[1:]))
        out = main.reshape(nb * block, -1)
        if n > nb * block:
            out = jnp.concatenate([out, apply_fn(params, x[nb * block :])], axis=0)
        return out

    return f


class Traced(NamedTuple):
    """The :class:`TrainConfig` values that keep every array shape, handed to the compiled
    trainer as arguments rather than baked in as constants, so that runs differing only in
    them (with η, passed per point) share one compiled program (:func:`traced`)."""

    T: jax.Array  # the step budget (the flow: time T·η)
    ts: jax.Array  # (n_log + 2,) the recorded steps log_steps(T, n_log), padded with T
    loss_tol: jax.Array
    converge_tol: jax.Array
    flow_rtol: jax.Array
    flow_atol: jax.Array


def traced(cfg: TrainConfig, T: int, dtype, horizon: int | None = None) -> Traced:
    """``cfg``'s shape-free values (budget ``T``) as arrays of the training ``dtype``. The
    recorded steps (:func:`history_steps`) are padded to a fixed length by repeating T
    (saved again, then dropped), since their count varies with T: n_log + 2, or twice
    that where a horizon before T splits them."""
    ts = history_steps(T, cfg.n_log, horizon)
    room = (cfg.n_log + 2) * (1 if horizon is None or horizon >= T else 2)
    ts = np.concatenate([ts, np.full(room - len(ts), T)])
    # what diffrax would check inside the solve (flow.cacheable_checks)
    assert ts[0] >= 0 and ts[-1] <= T and np.all(np.diff(ts) >= 0), ts
    a = lambda v: jnp.asarray(v, dtype)
    return Traced(a(T), a(ts), a(cfg.loss_tol), a(cfg.converge_tol), a(cfg.flow_rtol),
                  a(cfg.flow_atol))  # fmt: skip


# The static config a compiled trainer is cached under: its traced values normalised.
_NORMAL = {"eta": 1.0, "T": 1, "loss_tol": 0.0, "converge_tol": 1.0, "flow_rtol": 1.0,
           "flow_atol": 1.0}  # fmt: skip


class _State(NamedTuple):
    params: Params
    opt_state: optax.OptState
    t: jax.Array  # steps taken so far
    done: jax.Array  # bool: frozen
    stop_step: jax.Array
    mean: jax.Array  # the objective's running mean over log-time (flow.drift)
    hist: Params = None  # (L, ...) the params at the recorded steps (None: not recorded)


def _one_seed_chunk(
    state: _State,
    x: jax.Array,
    y: jax.Array,
    teacher: jax.Array | None,
    V: jax.Array,
    *,
    apply_fn: ApplyFn,
    align_fn: AlignmentFn,
    objective: Objective,
    opt: optax.GradientTransformation,
    cfg: TrainConfig,
    tr: Traced,
    stop: str,
    n_steps: int,
):
    """Advance one seed by ``n_steps`` GD steps. Metrics are those of the params *before*
    each step's update, i.e. of the model after t updates; so are the params kept in
    ``state.hist`` at the recorded steps (:func:`history_steps`)."""

    fwd = _forward(apply_fn, cfg, x.shape[0])
    want = tr.ts.astype(jnp.int32)  # padded with repeats of T (Traced.ts)

    def record(hist, params, t):
        if hist is None:
            return None
        j = jnp.minimum(jnp.searchsorted(want, t), want.shape[0] - 1)
        hit = want[j] == t
        return jax.tree.map(lambda h, p: h.at[j].set(jnp.where(hit, p, h[j])), hist, params)

    def loss_and_logits(params):
        logits = fwd(params, x)
        return objective(logits, y, teacher), logits

    def step(s: _State, _):
        (loss, logits), grads = jax.value_and_grad(loss_and_logits, has_aux=True)(s.params)
        acc = accuracy(logits, y)
        finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(logits))
        mean = jnp.where(s.t == 0, loss, s.mean)  # the flow's L̄(0) = L(0)
        if stop == "accuracy":
            hit = acc >= 1.0  # exact: accuracy() is 1.0 iff every point is right
        elif stop == "loss":
            hit = loss < tr.loss_tol
        elif stop == "converged":
            hit = flow.converged(loss, mean, margin(logits, y), tr.converge_tol) < 0
        else:
            hit = jnp.zeros((), bool)
        done = s.done | hit | (s.t >= tr.T) | ~finite
        stop_step = jnp.where(done & ~s.done, s.t, s.stop_step)
        updates, opt_state = opt.update(grads, s.opt_state, s.params)
        new_params = optax.apply_updates(s.params, updates)
        keep = lambda old, new: jnp.where(done, old, new)
        out = (loss, acc, align_fn(s.params, V), finite, s.done)
        nxt = _State(
            jax.tree.map(keep, s.params, new_params),
            jax.tree.map(keep, s.opt_state, opt_state),
            s.t + jnp.where(done, 0, 1),
            done,
            stop_step,
            # An Euler step of the flow's running mean, in units of η = 1 step.
            (mean + jnp.where(done, 0.0, flow.drift(loss, mean, s.t, 1))).astype(s.mean.dtype),
            record(s.hist, s.params, s.t),
        )
        return nxt, out

    return jax.lax.scan(step, state, None, length=n_steps)


def _forward(apply_fn: ApplyFn, cfg: TrainConfig, n: int) -> ApplyFn:
    """The apply used in training: blocked over samples when ``cfg.block`` asks for it."""
    return blocked(apply_fn, cfg.block) if 0 < cfg.block < n else apply_fn


@functools.lru_cache(maxsize=64)
def _chunk_fn(
    apply_fn: ApplyFn,
    align_fn: AlignmentFn,
    objective: Objective,
    cfg: TrainConfig,
    stop: str,
    n_steps: int,
    teacher_axis: int | None,
    points: int,
    meter: bool = False,
) -> Callable:
    """The jitted chunk ``f(state, x, y, teacher, V, eta, tr)`` over (points, seeds): ``n_steps``
    GD steps (``integrator = 'gd'``), or the whole flow of each model ('flow'; ``state``
    is then the init params and ``n_steps`` unused). Seeds are vmapped inside a point
    (sharing its data), points outside (each with its own x, y, V, η and teachers). One
    per static setup: calls with the same model, objective and config (η and the
    :class:`Traced` values excepted) reuse it, and jit compiles once per array shape. η
    and ``tr`` (T, the recorded steps, the stop thresholds and the flow's tolerances) are
    traced so that a sweep over them compiles once; ``cfg``'s copies are not read
    (callers pass them normalised, :data:`_NORMAL`, so they do not split the cache).
    ``teacher_axis``: None (no teacher), 0 (one per seed) or -1 (one per point,
    shared by its seeds). ``points``: 1 (one point) or 2 (several). ``meter``: the flow
    reports its progress while it runs (:class:`mvsim.progress.FlowMeter`; a separate
    program, since one with a host callback never enters JAX's persistent cache)."""

    def point_chunk(state, x, y, teacher, V, eta, tr):
        kw = dict(apply_fn=apply_fn, align_fn=align_fn, objective=objective, cfg=cfg, tr=tr,
                  stop=stop)  # fmt: skip
        if cfg.integrator == "flow":
            one = lambda s, t: _flow_one(s, x, y, t, V, eta, meter=meter, **kw)
        else:
            opt = optax.sgd(eta)
            one = lambda s, t: _one_seed_chunk(s, x, y, t, V, opt=opt, n_steps=n_steps, **kw)
        return jax.vmap(one, in_axes=(0, 0 if teacher_axis == 0 else None))(state, teacher)

    t_axis = None if teacher_axis is None else 0
    if points > 1:
        return jax.jit(jax.vmap(point_chunk, in_axes=(0, 0, 0, t_axis, 0, 0, None)))

    # One point: the same computation without the unit batch axis, which XLA's CPU dots
    # do not see through (a size-1 vmap made the demo's step about 10% slower).
    def one_point(state, x, y, teacher, V, eta, tr):
        drop = lambda t: jax.tree.map(lambda a: a[0], t)
        out = point_chunk(*drop((state, x, y, teacher, V, eta)), tr)
        return jax.tree.map(lambda a: a[None], out)

    return jax.jit(one_point)


def _flow_one(params, x, y, teacher, V, eta, *, apply_fn, align_fn, objective, cfg, tr, stop,
              save_fn=None, meter=False):  # fmt: skip
    """One model's whole flow (:func:`mvsim.flow.solve`) on its data."""
    fwd = _forward(apply_fn, cfg, x.shape[0])

    def metrics(p):
        logits = fwd(p, x)
        return objective(logits, y, teacher), accuracy(logits, y), align_fn(p, V)

    def stop_fn(p, mean):
        logits = fwd(p, x)
        if stop == "accuracy":
            return -margin(logits, y)
        loss = objective(logits, y, teacher)
        if stop == "loss":
            return loss - tr.loss_tol
        return flow.converged(loss, mean, margin(logits, y), tr.converge_tol)

    loss_fn = lambda p: objective(fwd(p, x), y, teacher)
    return flow.solve(params, eta, loss_fn, metrics, None if stop == "none" else stop_fn, tr.ts,
                      cfg=cfg, T=tr.T, rtol=tr.flow_rtol, atol=tr.flow_atol, save_fn=save_fn,
                      meter=prog.FlowMeter() if meter else None)  # fmt: skip


def init_seeds(net: Network, key: jax.Array, seeds: int) -> Params:
    """(seeds, ...) initial params of ``net``, one per key of ``jax.random.split(key, seeds)``
    (what :func:`train` draws from ``key``)."""
    return jax.vmap(net.init)(jax.random.split(key, seeds))


def train(
    key: PRNGKeyArray | None,
    net: Network,
    x: Float[Array, "N P d"],
    y: Int[Array, " N"],
    V: Float[Array, "k 2 d"],
    cfg: TrainConfig,
    *,
    seeds: int | None = None,
    init_params: Params | None = None,
    objective: Objective = cross_entropy,
    teacher_logits: Float[Array, "N k"] | Float[Array, "S N k"] | None = None,
    T: int | None = None,
    stop: str | None = None,
    progress: prog.Progress = False,
    desc: str = "train",
    shard: bool = True,
    horizon: int | None = None,
) -> TrainResult:
    """Train S seeds of ``net`` on (x, y) (the flow or GD, ``cfg.integrator``), vmapped
    over seeds.

    Args:
      key: PRNG key for the S initialisations (ignored when ``init_params`` is given).
      net: the (init, apply) pair.
      x: (N, P, d) training inputs, shared by every seed.
      y: (N,) labels.
      V: (k, 2, d) views, for recording Λ.
      cfg: the training config (integrator and its tolerances, η, T, early stop, dtype).
      seeds: S (required unless ``init_params`` is given).
      init_params: (S, ...) initial params, e.g. to distil into a known init.
      objective: ``objective(logits, y, teacher) -> loss``; default cross-entropy.
      teacher_logits: (N, k) shared by all seeds, or (S, N, k) one teacher per seed.
      T: step budget (default ``cfg.T``); stop: early-stop rule (default ``cfg.stop``).
      progress: the stage's display (:data:`mvsim.progress.Progress`; True: a bar that
        moves while the models train, then a line with the time).
      shard: split the seed axis over the local devices when there are several and S
        divides evenly (:mod:`mvsim.devices`); False keeps every seed on one device.
      horizon: the recorded steps are those of the horizon, then of T past it
        (:func:`history_steps`; default: of T).

    This is :func:`train_points` with one point.

    Raises:
      DivergenceError: the loss or outputs became NaN/Inf, or the flow's solver failed
        (names the seed, and GD's step or the flow's GD-equivalent step).
    """
    with precision(cfg.dtype, cfg.matmul_precision):
        if init_params is None:
            if seeds is None or key is None:
                raise ValueError("train needs `key` and `seeds`, or `init_params`")
            init_params = init_seeds(net, key, seeds)
        add = lambda a: None if a is None else jnp.asarray(a)[None]
        res = train_points(
            net, add(x), add(y), add(V), cfg, jax.tree.map(add, init_params),
            etas=[cfg.eta], objective=objective, teacher_logits=add(teacher_logits),
            T=T, stop=stop, progress=progress, desc=desc, shard=shard, horizon=horizon,
        )  # fmt: skip
    return res.point(0)


def train_points(
    net: Network,
    x: Float[Array, "Q N P d"],
    y: Int[Array, "Q N"],
    V: Float[Array, "Q k 2 d"],
    cfg: TrainConfig,
    init_params: Params,
    *,
    etas: Sequence[float] | None = None,
    objective: Objective = cross_entropy,
    teacher_logits: Float[Array, "Q N k"] | Float[Array, "Q S N k"] | None = None,
    T: int | None = None,
    stop: str | None = None,
    progress: prog.Progress = False,
    desc: str = "train",
    shard: bool = True,
    horizon: int | None = None,
) -> TrainResult:
    """Train Q points × S seeds in one compiled call: Q sweep points that share every
    array shape (and the static config), each with its own data and η, S seeds each.

    Args:
      net: the (init, apply) pair (its apply is shared; inits are given).
      x: (Q, N, P, d) each point's training inputs, shared by its seeds.
      y: (Q, N) labels; V: (Q, k, 2, d) views, for recording Λ.
      cfg: the training config (``cfg.integrator``: fixed-η GD or the adaptive flow); its
        η is used where ``etas`` is None.
      init_params: (Q, S, ...) initial params.
      etas: (Q,) learning rates (η is traced, so points may differ in it). Under the
        flow, η maps GD steps to flow time t = step·η.
      teacher_logits: (Q, N, k) one teacher per point, or (Q, S, N, k) one per seed.
      T, stop, objective, progress, desc: as in :func:`train`.
      shard: split the point axis (or, when Q does not divide, the seed axis) over the
        local devices (:mod:`mvsim.devices`).
      horizon: where the recorded steps split (:func:`history_steps`; default: T).

    Returns a :class:`TrainResult` whose arrays carry a leading (Q, S) (``steps`` (L,)).

    Raises:
      DivergenceError: the loss or outputs became NaN/Inf, or the flow's solver failed
        (names the point, the seed, and GD's step or the flow's GD-equivalent step).
    """
    T = cfg.T if T is None else T
    stop = cfg.stop if stop is None else stop
    with precision(cfg.dtype, cfg.matmul_precision):
        dtype = jnp.dtype(cfg.dtype)
        init_params, x, y, V, eta, teacher_logits, teacher_axis = _points_inputs(
            cfg, dtype, init_params, x, y, V, etas, teacher_logits
        )
        Q, S = jax.tree.leaves(init_params)[0].shape[:2]
        want = history_steps(T, cfg.n_log, horizon)
        compiled = functools.partial(_chunk_fn, net.apply, net.alignment, objective,
                                     dataclasses.replace(cfg, **_NORMAL), stop,
                                     min(cfg.chunk, T + 1), teacher_axis)  # fmt: skip
        tr = traced(cfg, T, dtype, horizon)
        chunk_fn = lambda points, meter=False: lambda *a: compiled(points, meter=meter)(*a, tr)
        data = (x, y, V, eta)
        what = "the flow solver" if cfg.integrator == "flow" else "GD's chunk"
        with prog.stage(desc, progress, total=T, unit="steps", compiling=what) as st:
            try:
                if cfg.integrator == "flow":
                    per_step = flow.SOLVERS[cfg.flow_solver][1]
                    with prog.solving(st, T=T, models=Q * S, per_step=per_step):
                        state, rec = _run_flow(chunk_fn, init_params, data, teacher_logits,
                                               teacher_axis, want, shard, net.alignment,
                                               st.live)  # fmt: skip
                else:
                    gd0 = _gd_state(init_params, Q, S, T, dtype, len(tr.ts))
                    state, rec = _run_gd(chunk_fn, gd0, data, teacher_logits, teacher_axis,
                                         want, shard, st)  # fmt: skip
            except DivergenceError as e:  # which stage: 'seed 1' alone is ambiguous in verify
                raise DivergenceError(f"{e} [stage: {desc}]") from None
            st.update(T)
            st.summary = _stage_summary(state, T)
            return _result(net, objective, state, init_params, x, y, teacher_logits, want,
                           teacher_axis, rec)  # fmt: skip


def _points_inputs(cfg, dtype, init_params, x, y, V, etas, teacher_logits) -> tuple:
    """train_points' inputs in the training dtype, with their (Q, ...) leading axes checked:
    (init_params, x, y, V, eta (Q,), teacher_logits, the teachers' seed axis: 0 for one per
    seed, -1 for one per point, None for none)."""
    init_params = jax.tree.map(lambda a: jnp.asarray(a, dtype), init_params)
    Q = jax.tree.leaves(init_params)[0].shape[0]
    x, V = jnp.asarray(x, dtype), jnp.asarray(V, dtype)
    y = jnp.asarray(y)
    eta = jnp.asarray([cfg.eta] * Q if etas is None else list(etas), dtype)
    if eta.shape != (Q,) or x.shape[0] != Q or y.shape[0] != Q or V.shape[0] != Q:
        raise ValueError(
            f"train_points: x {x.shape}, y {y.shape}, V {V.shape} and etas {eta.shape} "
            f"need a leading axis of Q = {Q} points (init_params is (Q, S, ...))"
        )
    teacher_axis = None
    if teacher_logits is not None:
        teacher_logits = jnp.asarray(teacher_logits, dtype)
        teacher_axis = 0 if teacher_logits.ndim == 4 else -1
    return init_params, x, y, V, eta, teacher_logits, teacher_axis


def _gd_state(init_params: Params, Q: int, S: int, T: int, dtype, L: int) -> _State:
    """GD's state at step 0 for (Q, S) models (optax's SGD keeps no state of its own), with
    room for the params at the L recorded steps."""
    opt = optax.sgd(1.0)
    full = lambda v, dt: jnp.full((Q, S), v, dt)
    hist = jax.tree.map(lambda a: jnp.repeat(a[:, :, None], L, axis=2), init_params)
    return _State(init_params, jax.vmap(jax.vmap(opt.init))(init_params), full(0, jnp.int32),
                  full(False, bool), full(T, jnp.int32), full(0.0, dtype), hist)  # fmt: skip


def _run_flow(chunk_fn, init_params, data, teacher, teacher_axis, want, shard, align_fn, meter):
    """Every model's flow in one call (:func:`mvsim.flow.solve`): the final state (params,
    stop_step, evals) and the recorded rows {step: [loss, acc, Λ]}, in GD's conventions
    (NaN loss and accuracy past a model's stop, Λ frozen there). ``meter``: report
    progress while the solve runs (to the stage of :func:`mvsim.progress.solving`)."""
    Q = data[0].shape[0]
    qi, si = np.arange(Q), np.tile(np.arange(jax.tree.leaves(init_params)[0].shape[1]), (Q, 1))
    params, p_data, p_teacher = _place_models(init_params, qi, si, data, teacher,
                                              teacher_axis, shard)  # fmt: skip
    px, py, pV, peta = p_data
    out = chunk_fn(min(Q, 2), meter=meter)(params, px, py, p_teacher, pV, peta)
    stop_step = np.asarray(out.stop_step)  # waits for the solve (the meter reports meanwhile)
    _check_flow(np.asarray(out.ok), stop_step, Q)
    live = want <= stop_step[..., None] * (1 + 1e-6)  # (Q, S, L); t/η rounds off T·η/η
    L = len(want)  # the saves past it repeat T (the padding of Traced.ts)
    loss = np.where(live, np.asarray(out.loss)[:, :, :L], np.nan)
    acc = np.where(live, np.asarray(out.accuracy)[:, :, :L], np.nan)
    lam = np.asarray(out.alignment)[:, :, :L]  # (Q, S, L, ..., k, 2)
    final = np.asarray(jax.vmap(jax.vmap(align_fn, in_axes=(0, None)))(out.params, data[2]))
    lam = np.where(live.reshape(live.shape + (1,) * (lam.ndim - 3)), lam, final[:, :, None])
    rec = {int(t): [loss[:, :, j], acc[:, :, j], lam[:, :, j]] for j, t in enumerate(want)}
    return out, rec


def _stage_summary(state, T: int) -> str:
    """What a training stage's end line says: where its models stopped, at what cost."""
    span = lambda a, f: f"{f(a.min())}" if a.min() == a.max() else f"{f(a.min())}–{f(a.max())}"
    stop = np.asarray(state.stop_step, np.float64)
    evals = np.asarray(state.evals if isinstance(state, flow.Solved) else state.stop_step)
    return (f"stopped at step {span(stop, '{:,.0f}'.format)} of {T:,}, "
            f"{span(evals, '{:,}'.format)} gradient evaluations per model")  # fmt: skip


def _check_flow(ok: np.ndarray, stop_step: np.ndarray, Q: int) -> None:
    """Raise :class:`DivergenceError` naming the first model whose flow failed."""
    if not ok.all():
        q, s = np.unravel_index(np.argmin(ok), ok.shape)
        where = f"seed {s}" + (f" of point {q}" if Q > 1 else "")
        raise DivergenceError(
            f"training diverged: the flow of {where} failed (NaN/Inf, or flow_max_steps "
            f"solver steps) by GD-equivalent step {stop_step[q, s]:.0f} "
            "(check the data scale, or raise flow_max_steps)"
        )


def _run_gd(chunk_fn, state, data, teacher, teacher_axis, want, shard, st):
    """Call GD's chunk until every model has stopped, compacting the running models between
    calls; the final state and the recorded rows {step: [loss, acc, Λ]}.

    Compaction: a stopped seed is frozen but would still cost a full step under vmap.
    Once the running models fit in half the points or half the seeds, they continue alone
    (one compile per new shape, cached across calls): points with none running are
    dropped, and each kept point keeps its running seeds first, padded with its stopped
    ones. A slow tail costs at most about twice what the tail models cost. (Sizes rounded
    to powers of two cost the demo 8% more model-steps.)"""
    Q, S = np.asarray(state.done).shape
    qi, si = np.arange(Q), np.tile(np.arange(S), (Q, 1))  # the models in `sub`
    place = lambda st, qi, si: _place_models(st, qi, si, data, teacher, teacher_axis, shard)
    sub, p_data, p_teacher = place(state, qi, si)
    full, last_lam, rec, t0 = sub, None, {}, 0
    while True:
        px, py, pV, peta = p_data
        sub, out = chunk_fn(min(len(qi), 2))(sub, px, py, p_teacher, pV, peta)
        loss, acc, lam, finite, was_done = (np.asarray(a) for a in out)  # (Q', S', n, ...)
        _check_finite(finite, was_done, t0, qi, si, Q)
        if last_lam is None:
            last_lam = np.zeros((Q, S, *lam.shape[3:]), lam.dtype)
        rows = (qi[:, None], si)
        for j in range(loss.shape[2]):
            last_lam[rows] = lam[:, :, j]
            if t0 + j in want:
                row_loss = np.full((Q, S), np.nan, loss.dtype)
                row_acc = np.full((Q, S), np.nan, acc.dtype)
                row_loss[rows] = np.where(was_done[:, :, j], np.nan, loss[:, :, j])
                row_acc[rows] = np.where(was_done[:, :, j], np.nan, acc[:, :, j])
                rec[t0 + j] = [row_loss, row_acc, last_lam.copy()]
        t0 += loss.shape[2]
        running = ~np.asarray(sub.done)  # (Q', S')
        st.update(min(t0, st.total), f"{Q * S - int(running.sum())}/{Q * S} done")
        if not running.any():
            break
        per_point = running.sum(1)
        q_new, s_new = int((per_point > 0).sum()), int(per_point.max())
        if s_new <= si.shape[1] // 2 or q_new <= len(qi) // 2:
            full = _scatter(full, sub, qi, si)
            # Running points first, and in each its running seeds first (both stable);
            # the padding is stopped models, which stay frozen.
            keep_q = np.argsort(per_point == 0, kind="stable")[:q_new]
            order = np.argsort(~running[keep_q], axis=1, kind="stable")[:, :s_new]
            si = np.take_along_axis(si[keep_q], order, axis=1)
            qi = qi[keep_q]
            sub, p_data, p_teacher = place(_gather(full, qi, si), qi, si)
    return _scatter(full, sub, qi, si), rec


def _place_models(state, qi, si, data, teacher, teacher_axis, shard):
    """The models (points qi, seeds si) and their data, on the devices. While every point
    runs, qi is all of them in order, and the data is not copied."""
    Q = data[0].shape[0]
    rows = (lambda a: a) if len(qi) == Q else (lambda a: a[qi])
    teachers = _take(teacher, teacher_axis, qi, si)
    return _place(state, tuple(rows(a) for a in data), teachers, teacher_axis, shard)


def _result(
    net, objective, state, init_params, x, y, teacher, want, teacher_axis, rec
) -> TrainResult:
    """The :class:`TrainResult` of the final state (GD's or the flow's) and the rows."""
    params = state.params
    final_logits = jax.vmap(jax.vmap(net.apply, in_axes=(0, None)))(params, x)
    tl = teacher
    if teacher_axis == -1:
        tl = jnp.broadcast_to(teacher[:, None], final_logits.shape)
    per_seed = jax.vmap(objective, in_axes=(0, None, None if tl is None else 0))
    final_loss = jax.vmap(per_seed, in_axes=(0, 0, None if tl is None else 0))(final_logits, y, tl)
    final_acc = jax.vmap(jax.vmap(accuracy, in_axes=(0, None)))(final_logits, y)
    steps = np.array(sorted(rec))
    is_flow = isinstance(state, flow.Solved)
    evals = state.evals if is_flow else state.stop_step
    return TrainResult(
        params=params,
        init_params=init_params,
        steps=steps,
        loss=np.stack([rec[t][0] for t in steps], 2),
        accuracy=np.stack([rec[t][1] for t in steps], 2),
        alignment=np.stack([rec[t][2] for t in steps], 2),
        stop_step=np.asarray(state.stop_step, np.float64),
        grad_evals=np.asarray(evals),
        final_loss=np.asarray(final_loss),
        final_accuracy=np.asarray(final_acc),
        history_params=_past_stop(
            state.history if is_flow else state.hist, params, want, np.asarray(state.stop_step)
        ),  # fmt: skip
        history_steps=np.asarray(want),
    )


def _past_stop(hist: Params, final: Params, steps: np.ndarray, stop_step: np.ndarray) -> Params:
    """The recorded params (Q, S, L, ...) with the final params at the steps past each
    model's stop (the flow saved inf there, GD never wrote them): a stopped model is
    frozen, as its metrics are."""
    if hist is None:
        return None
    # On the host: eager jnp ops here would compile anew for every count L of recorded steps.
    hist = jax.tree.map(lambda h: np.asarray(h)[:, :, : len(steps)], hist)  # past L: padding
    live = steps <= stop_step[..., None] * (1 + 1e-6)  # (Q, S, L)
    at = lambda a: live.reshape(live.shape + (1,) * (a.ndim - 3))
    return jax.tree.map(lambda h, p: np.where(at(h), h, np.asarray(p)[:, :, None]), hist, final)


def _take(teacher, axis: int | None, qi: np.ndarray, si: np.ndarray):
    """The teachers of the models in the compacted (points qi, seeds si) layout."""
    if teacher is None:
        return None
    return teacher[qi[:, None], si] if axis == 0 else teacher[qi]


def _place(state: _State, point_data: tuple, teacher, teacher_axis: int | None, shard: bool):
    """Put the (Q', S') models on the local devices (:mod:`mvsim.devices`): the point
    axis split when it divides evenly (each device holds its points' data), else the seed
    axis (every device holds all the data), else one device."""
    axis = devices.model_axis(state, shard)
    if axis == 0:
        return (devices.shard_axis(state, 0), devices.shard_axis(point_data, 0),
                devices.shard_axis(teacher, 0))  # fmt: skip
    if axis == 1:
        t = devices.shard_axis(teacher, 1) if teacher_axis == 0 else devices.replicate(teacher)
        return devices.shard_axis(state, 1), devices.replicate(point_data), t
    return state, point_data, teacher


def _gather(full: _State, qi: np.ndarray, si: np.ndarray) -> _State:
    """The state of the models (points qi (Q',), seeds si (Q', S'))."""
    return jax.tree.map(lambda a: a[qi[:, None], si], full)


def _scatter(full: _State, sub: _State, qi: np.ndarray, si: np.ndarray) -> _State:
    """Write the running models' state back into the all-model (Q, S) state."""
    return jax.tree.map(lambda f, s: f.at[qi[:, None], si].set(s), full, sub)


def _check_finite(
    finite: np.ndarray, was_done: np.ndarray, t0: int, qi: np.ndarray, si: np.ndarray, Q: int
) -> None:
    bad = ~finite & ~was_done  # (Q', S', n)
    if bad.any():
        j = int(np.argmax(bad.any((0, 1))))  # the earliest step, then the first model there
        q, s = np.unravel_index(np.argmax(bad[:, :, j]), bad.shape[:2])
        where = f"seed {int(si[q, s])}" + (f" of point {int(qi[q])}" if Q > 1 else "")
        raise DivergenceError(
            f"training diverged: loss or logits became NaN/Inf at step {t0 + j} of {where} "
            "(lower eta, or check the data scale)"
        )


def predict(apply_fn: ApplyFn, params: Params, x: jax.Array, chunk: int = 8192) -> jax.Array:
    """Logits of S models on x: params (S, ...), x (n, P, d) -> (S, n, k), in chunks."""
    f = jax.jit(jax.vmap(apply_fn, in_axes=(0, None)))
    return jnp.concatenate([f(params, x[i : i + chunk]) for i in range(0, x.shape[0], chunk)], 1)
