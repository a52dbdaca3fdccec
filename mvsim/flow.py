"""The gradient flow dW/dt = −∇L(W), integrated adaptively with diffrax.

Every verdict depends on the *path* of training (which view of a class escapes first,
when a seed fits its data), not on the clock. The theorems' GD at η ≤ 1/poly(k) is the
flow: GD step s sits at flow time t = s·η, and halving η changed nothing measured. An
adaptive solver follows the same path with long steps on the plateaus and short ones at
the escapes, so the budget T (GD steps) becomes the flow time T·η and every recorded
"step" is a GD-equivalent step t/η.

:func:`solve` integrates ONE model over the whole run in one ``diffrax.diffeqsolve``
(a PID step-size controller; the stop rule as an ``Event``; the history saved at the
recorded times); :mod:`mvsim.train` vmaps it over seeds and points as it does GD's chunk,
so every model keeps its own step size. One solve per model, not one per recorded
interval: a vmapped loop runs as long as its slowest member, and per interval the
slowest differs (measured: 2.5× the wall time with 45 intervals).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import diffrax as dfx
import equinox._errors as eqx_errors
import jax
import jax.numpy as jnp
import optimistix as optx

from mvsim.config import TrainConfig
from mvsim.model import Params

SOLVERS: dict[str, tuple[type[dfx.AbstractAdaptiveSolver], int]] = {
    "heun": (dfx.Heun, 2),
    "bosh3": (dfx.Bosh3, 3),
    "tsit5": (dfx.Tsit5, 6),
}
"""``TrainConfig.flow_solver`` → (diffrax solver, gradient evaluations per step; the FSAL
solvers reuse their last stage)."""

PI = {"pcoeff": 0.3, "icoeff": 0.4}
"""A PI step-size controller (diffrax's suggestion for non-stiff problems): the
prototype's I-controller rejected 13–20% of its steps."""

Metrics = Callable[[Params], tuple[jax.Array, jax.Array, jax.Array]]
"""metrics(params) -> (objective, training accuracy, Λ (…, k, 2))."""


class Solved(NamedTuple):
    """One model's run (leading (Q, S) axes once vmapped)."""

    params: Params  # at the stop (or at T·η)
    stop_step: jax.Array  # GD-equivalent step t/η where it stopped (T if it never did)
    evals: jax.Array  # gradient evaluations (accepted and rejected steps)
    ok: jax.Array  # False: NaN/Inf, or flow_max_steps reached
    loss: jax.Array  # (L,) objective at the recorded steps (inf past the stop)
    accuracy: jax.Array  # (L,)
    alignment: jax.Array  # (L, ..., k, 2)
    history: Params  # (L, ...) the weights at the recorded steps (inf past the stop)
    saved: Any = None  # (L, ...) save_fn of the weights there, when solve was given one


class _StopBisection(optx.Bisection):
    """Bisection that returns its bracket's far end, where the stop rule already holds (a
    fitted model has accuracy exactly 1, as GD stops at the first step past the root),
    rather than the midpoint, which lies on either side of the root."""

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        return state.upper, aux, {}


@contextlib.contextmanager
def cacheable_checks() -> Iterator[None]:
    """Trace diffrax's argument checks without host callbacks, so that the solve's
    program can enter JAX's persistent compilation cache.

    With T and the recorded steps traced (:class:`mvsim.train.Traced`), diffrax's checks
    that ``saveat.ts`` is sorted and inside [0, T·η] and that dt0 points from t0 to t1
    become runtime checks, and equinox's default (``EQX_ON_ERROR=raise``) raises them
    through a host callback; JAX never writes a program with a host callback into its
    persistent cache (measured: every flow program was compiled again in every process,
    4–5 s each). Here a failed check returns NaN instead (equinox's ``nan`` mode), which
    the run's divergence check reports. The checks cannot fail: the recorded steps are
    sorted and end at T by construction (:func:`mvsim.train.traced` asserts it on the
    host) and η > 0. equinox reads the mode while tracing, from the module-level name
    that ``EQX_ON_ERROR`` sets; ``tests/test_compilation.py`` fails if a flow program
    holds a host callback again."""
    before = eqx_errors.EQX_ON_ERROR
    eqx_errors.EQX_ON_ERROR = "nan"
    try:
        yield
    finally:
        eqx_errors.EQX_ON_ERROR = before


def rms(params: Params) -> jax.Array:
    """Root-mean-square of one model's weights. ``flow_atol`` is in units of the initial
    weights' RMS, so one tolerance serves every σ_0 and every learner (σ_0 for the patch
    CNN)."""
    leaves = jax.tree.leaves(params)
    r = jnp.sqrt(sum(jnp.sum(jnp.square(a)) for a in leaves) / sum(a.size for a in leaves))
    return jnp.where(r > 0, r, 1.0)  # an all-zero init would leave no tolerance at all


def drift(loss: jax.Array, mean: jax.Array, t: jax.Array, eta: jax.Array) -> jax.Array:
    """d(mean)/dt of the objective's running mean over log-time, (L − L̄)/(t + η). Where the
    objective moves by a per e-fold of time, L − L̄ settles at a: the 'converged' rule's
    measure of change, carried at no extra gradient (GD takes Euler steps of the same)."""
    return (loss - mean) / (t + eta)


def converged(loss: jax.Array, mean: jax.Array, margin: jax.Array, tol: float) -> jax.Array:
    """The 'converged' stop rule as a distance, negative exactly where it holds: the
    training set is fitted (margin > 0, so the plateau before the first escape, where
    nothing moves yet, is not a limit) and the objective changes by less than ``tol`` per
    e-fold of time. Real-valued, so that the flow locates its stop like the others."""
    return jnp.maximum(-margin, jnp.abs(loss - mean) - tol)


def solve(
    params: Params,
    eta: jax.Array,
    loss_fn: Callable[[Params], jax.Array],
    metrics: Metrics,
    stop_fn: Callable[[Params, jax.Array], jax.Array] | None,
    ts: jax.Array,
    *,
    cfg: TrainConfig,
    T: jax.Array,
    rtol: jax.Array,
    atol: jax.Array,
    save_fn: Callable[[Params], Any] | None = None,
    meter: dfx.AbstractProgressMeter | None = None,
) -> Solved:
    """Integrate one model from t = 0 to T·η (flow time; η maps GD steps to time), and
    save ``metrics`` at GD-equivalent steps ``ts`` (non-decreasing; a repeated step is
    saved again). T and the tolerances ``rtol``, ``atol`` (``cfg.flow_rtol``,
    ``cfg.flow_atol``) may be traced, so that one compiled solve serves every value; ``cfg``
    supplies the solver and its step limit. ``save_fn`` (optional): also evaluated inside
    the solve at those steps (``Solved.saved``).

    ``stop_fn(params, L̄)`` is the stop rule (None: never): a real distance to the stop,
    non-negative while the model runs; it stops where the distance turns negative, a time
    located by bisection on the solver's interpolant (GD stops at the first step past
    it). ``meter``: a diffrax progress meter (:class:`mvsim.progress.FlowMeter` moves a
    stage's bar while the solve runs); None: none."""
    solver_cls, per_step = SOLVERS[cfg.flow_solver]

    def field(t, y, args):
        W, mean = y
        loss, g = jax.value_and_grad(loss_fn)(W)
        return jax.tree.map(jnp.negative, g), drift(loss, mean, t, eta)

    y0 = (params, loss_fn(params))
    event, at_init = None, jnp.zeros((), bool)
    if stop_fn is not None:
        cond = lambda t, y, args, **kw: stop_fn(*y)
        # A rule that holds at the init stops there, as GD does at step 0; the event, a
        # sign change, would never come (its solve runs on and is discarded below).
        at_init = stop_fn(*y0) < 0
        # Bisection, not Newton: a margin is a min of maxes, piecewise smooth in t. Its
        # direction is fixed (decreasing) rather than detected: under vmap diffrax also
        # root-finds the models without an event, on a decreasing function whose root is
        # an end point, which the detection rejects as "not contained".
        event = dfx.Event(cond, _StopBisection(rtol=1e-6, atol=1e-3 * eta, flip=True))

    # Error control on the weights only: the running mean is a measurement, not the path.
    norm = lambda e: jnp.max(jnp.stack([jnp.max(jnp.abs(a)) for a in jax.tree.leaves(e[0])]))
    ctrl = dfx.PIDController(rtol=rtol, atol=atol * rms(params),
                             norm=norm, **PI)  # fmt: skip
    # The weights are saved, and the metrics taken after the solve in one batched pass:
    # metrics inside the loop made every step's program larger (compile) and, under vmap,
    # evaluated them at steps where another model had a save pending.
    subs = [dfx.SubSaveAt(ts=ts * eta, fn=lambda t, y, a: y[0]), dfx.SubSaveAt(t1=True)]
    if save_fn is not None:
        subs.append(dfx.SubSaveAt(ts=ts * eta, fn=lambda t, y, a: save_fn(y[0])))
    save = dfx.SaveAt(subs=subs)
    with cacheable_checks():
        sol = dfx.diffeqsolve(
            dfx.ODETerm(field), solver_cls(), 0.0, T * eta, eta, y0, stepsize_controller=ctrl,
            event=event, saveat=save, max_steps=cfg.flow_max_steps, throw=False,
            progress_meter=dfx.NoProgressMeter() if meter is None else meter,
        )  # fmt: skip
    (t_end, (W_end, _)) = (sol.ts[1][0], sol.ys[1])
    loss, acc, lam = jax.vmap(metrics)(sol.ys[0])  # inf past the stop: masked by the caller
    W_end = jax.tree.map(lambda a, p: jnp.where(at_init, p, a[0]), W_end, params)
    ok = (sol.result == dfx.RESULTS.successful) | (sol.result == dfx.RESULTS.event_occurred)
    ok = at_init | (ok & jnp.isfinite(loss_fn(W_end)))
    evals = jnp.where(at_init, 0, sol.stats["num_steps"] * per_step)
    return Solved(W_end, jnp.where(at_init, 0.0, t_end / eta), evals, ok, loss, acc, lam,
                  sol.ys[0], sol.ys[2] if save_fn is not None else None)  # fmt: skip
