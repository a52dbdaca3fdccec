"""The vmapped GD trainer (``integrator = 'gd'``, the reference the flow is tested against
in tests/test_flow.py): per-seed equivalence, determinism, early stopping, divergence,
precision and the recorded history.

Reference: a plain jitted GD step W <- W - eta ∇L(W) iterated in a Python loop, with the
training accuracy of the pre-update weights recorded at every step.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mvsim import data, model
from mvsim.config import make_config
from mvsim.train import (
    DivergenceError,
    accuracy,
    correct,
    cross_entropy,
    history_steps,
    log_steps,
    precision,
    train,
    train_points,
)

# NB: ``mvsim.train`` the attribute is the function (re-exported by mvsim/__init__), so the
# module's names are imported from it explicitly.

T_MAIN = 300
S = 3
# Tolerance for float32 weights of two computations of the same GD trajectory that may
# round differently (vmapped vs unbatched matmuls, scan vs Python loop): each step adds
# a rounding of ~eps32 = 1.2e-7 relative to |W| <= ~5; over <= 300 steps that is
# <= 300 · 1.2e-7 · 5 ≈ 2e-4 in the worst case without cancellation, 1e-6 typically.
# One GD step of these runs moves W by >= 2e-3 (checked where it matters), so 2e-4 still
# tells "t steps" from "t ± 1 steps".
W_TOL = 2e-4


@functools.cache
def setup():
    """tiny preset, 64 multi-view training points (first 64 of the same draw that
    test_data uses, so a full-session run compiles the sampler once)."""
    cfg = make_config("tiny")
    dc = cfg.data
    V = data.features(jax.random.PRNGKey(7), dc.d, dc.k)
    batch = data.sample(jax.random.PRNGKey(11), dc, 4000, V, view="multi")
    x, y = batch.x[:64], batch.y[:64]
    net = model.network(cfg.model, dc.k, dc.d)
    tc = dataclasses.replace(cfg.train, T=T_MAIN, integrator="gd")
    return cfg, V, x, y, net, tc


@functools.cache
def main_run():
    cfg, V, x, y, net, tc = setup()
    assert tc.stop == "accuracy" and tc.chunk == 100
    return train(jax.random.PRNGKey(3), net, x, y, V, tc, seeds=S)


@functools.cache
def gd_step():
    cfg, V, x, y, net, tc = setup()

    @jax.jit
    def step(W, xx):
        def f(W):
            logits = model.apply(W, xx, cfg.model.q, cfg.model.varrho)
            return cross_entropy(logits, y), logits

        (loss, logits), g = jax.value_and_grad(f, has_aux=True)(W)
        return W - tc.eta * g, loss, correct(logits, y).mean(), jnp.all(jnp.isfinite(logits))

    return step


def reference(W0, n_steps: int):
    """Plain GD: weights after each of 0..n_steps + 1 updates, and the accuracy and loss
    of the weights after each of 0..n_steps updates."""
    x = setup()[2]
    step = gd_step()
    Ws, accs, losses = [np.asarray(W0)], [], []
    W = W0
    for _ in range(n_steps + 1):
        W, loss, acc, _ = step(W, x)
        accs.append(float(acc))
        losses.append(float(loss))
        Ws.append(np.asarray(W))
    return Ws, np.array(accs), np.array(losses)


# --- vmap over seeds -------------------------------------------------------------------------


def test_vmap_equals_separate_runs():
    cfg, V, x, y, net, tc = setup()
    r = main_run()
    assert r.params.shape == (S, cfg.data.k, cfg.model.m, cfg.data.d)
    # the seeds really are different, and stop at different times
    assert len(set(r.stop_step.tolist())) == S
    for s in range(S):
        one = train(None, net, x, y, V, tc, init_params=r.init_params[s : s + 1])
        assert one.stop_step[0] == r.stop_step[s]
        np.testing.assert_allclose(
            np.asarray(one.params[0]), np.asarray(r.params[s]), rtol=0, atol=W_TOL
        )
        np.testing.assert_array_equal(one.steps, r.steps[: one.steps.size])
        L = one.steps.size
        np.testing.assert_allclose(one.loss[0], r.loss[s, :L], rtol=1e-4, equal_nan=True)
        np.testing.assert_allclose(one.alignment[0], r.alignment[s, :L], rtol=0, atol=W_TOL)


def test_init_params_are_the_network_init():
    cfg, V, x, y, net, tc = setup()
    r = main_run()
    keys = jax.random.split(jax.random.PRNGKey(3), S)
    for s in range(S):
        np.testing.assert_array_equal(np.asarray(r.init_params[s]), np.asarray(net.init(keys[s])))


def test_same_key_twice_is_bitwise_identical():
    cfg, V, x, y, net, tc = setup()
    a = main_run()
    b = train(jax.random.PRNGKey(3), net, x, y, V, tc, seeds=S)
    for f in (
        "params",
        "init_params",
        "steps",
        "accuracy",
        "alignment",
        "stop_step",
        "final_loss",
        "final_accuracy",
    ):
        np.testing.assert_array_equal(np.asarray(getattr(a, f)), np.asarray(getattr(b, f)), f)
    np.testing.assert_array_equal(a.loss, b.loss)  # NaN == NaN positionwise here


# --- early stopping --------------------------------------------------------------------------


def test_accuracy_stop_at_first_perfect_step_then_frozen():
    """stop='accuracy': each seed stops at the first t whose weights W_t (t updates) have
    training accuracy 1, keeps W_t while the other seeds run on, and a seed that never
    gets there stops at T."""
    r = main_run()
    stopped = 0
    for s in range(S):
        t_stop = int(r.stop_step[s])
        Ws, accs, _ = reference(r.init_params[s], t_stop)
        hits = np.nonzero(accs >= 1.0)[0]
        if t_stop < T_MAIN:
            stopped += 1
            assert hits.size and hits[0] == t_stop, (s, t_stop, hits[:3])
            assert r.final_accuracy[s] == 1.0
        else:
            assert hits.size == 0  # never perfect within T: ran the full budget
        W = np.asarray(r.params[s])
        np.testing.assert_allclose(W, Ws[t_stop], rtol=0, atol=W_TOL)
        # frozen: one more step would have moved it by far more than the tolerance
        assert np.abs(Ws[t_stop + 1] - W).max() > 10 * W_TOL
    assert 1 <= stopped < S  # both kinds of seeds occur in this run


def test_stop_none_truncated_at_stop_step_gives_the_same_weights():
    """A stop='none' run of T = t* steps from a seed's init reproduces that seed's
    early-stopped weights from the S-seed run, and runs exactly T steps, also when T is
    not a multiple of the chunk (chunk = 5: the last chunk runs past T, frozen)."""
    cfg, V, x, y, net, tc = setup()
    r = main_run()
    s = int(np.argmin(r.stop_step))
    t_stop = int(r.stop_step[s])
    assert 0 < t_stop < T_MAIN and t_stop % 5 != 0
    # n_log = 400: log-spaced points 1 <= t <= 48 are < 1 apart, so every step is recorded
    tcn = dataclasses.replace(tc, chunk=5, n_log=400)
    none = train(
        None, net, x, y, V, tcn, init_params=r.init_params[s : s + 1], stop="none", T=t_stop
    )
    assert none.stop_step[0] == t_stop
    np.testing.assert_allclose(
        np.asarray(none.params[0]), np.asarray(r.params[s]), rtol=0, atol=W_TOL
    )
    # exactly T updates: matches GD after T steps, not T - 1 or T + 1
    Ws, accs, losses = reference(r.init_params[s], t_stop)
    W = np.asarray(none.params[0])
    np.testing.assert_allclose(W, Ws[t_stop], rtol=0, atol=W_TOL)
    assert np.abs(W - Ws[t_stop - 1]).max() > 10 * W_TOL
    assert np.abs(W - Ws[t_stop + 1]).max() > 10 * W_TOL
    # the full history, step by step, is that of plain GD
    np.testing.assert_array_equal(none.steps, np.arange(t_stop + 1))
    np.testing.assert_array_equal(none.accuracy[0], accs)
    np.testing.assert_allclose(none.loss[0], losses, rtol=1e-4)
    assert np.all(accs[:t_stop] < 1) and accs[t_stop] == 1


# --- divergence ----------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [100, 1])
def test_divergence_raises_naming_step_and_seed(chunk):
    """x scaled by 1e20: the first GD step makes |W| ~ 1e18, so the step-1 logits overflow
    float32. Seed 0 starts at W = 0, a stationary point (ReLU~'(0) = 0 gives a zero
    gradient), so it never diverges: the error must name seed 1 and step 1."""
    cfg, V, x, y, net, tc = setup()
    r = main_run()
    big = x * 1e20
    W1 = r.init_params[1]
    # what plain GD does: step 0 finite, step 1 not
    step = gd_step()
    W, loss0, _, fin0 = step(W1, big)
    _, loss1, _, fin1 = step(W, big)
    assert bool(fin0) and np.isfinite(float(loss0))
    assert not (bool(fin1) and np.isfinite(float(loss1)))
    W0 = jnp.stack([jnp.zeros_like(W1), W1])
    tcd = dataclasses.replace(tc, chunk=chunk, stop="none", T=20)
    with pytest.raises(DivergenceError) as info:
        train(None, net, big, y, V, tcd, init_params=W0, desc="2 big models")
    msg = str(info.value)
    assert "step 1 of seed 1" in msg and msg.endswith("[stage: 2 big models]"), msg


# --- precision -----------------------------------------------------------------------------


def test_float64_training():
    cfg, V, x, y, net, tc = setup()
    r = main_run()
    T = 10
    tc64 = dataclasses.replace(tc, dtype="float64", stop="none", T=T)
    run = train(None, net, x, y, V, tc64, init_params=r.init_params[:1])
    assert run.params.dtype == jnp.float64 and run.init_params.dtype == jnp.float64
    assert run.final_loss.dtype == np.float64
    # against GD done in float64: agreement to ~1e-12, which float32 arithmetic
    # (rounding ~1e-7 per step) could not reach
    with jax.enable_x64(True):
        q, vr, eta = cfg.model.q, cfg.model.varrho, tc.eta
        x64, W = jnp.asarray(x, jnp.float64), jnp.asarray(r.init_params[0], jnp.float64)
        grad = jax.jit(jax.grad(lambda W: cross_entropy(model.apply(W, x64, q, vr), y)))
        for _ in range(T):
            W = W - eta * grad(W)
        W = np.asarray(W)
    assert W.dtype == np.float64
    np.testing.assert_allclose(np.asarray(run.params[0]), W, rtol=0, atol=1e-10)
    W32, _, _ = reference(r.init_params[0], T)
    assert np.abs(W32[T] - W).max() > 1e-9  # float32 GD is measurably different


# --- history -------------------------------------------------------------------------------


def test_history():
    cfg, V, x, y, net, tc = setup()
    r = main_run()
    k = cfg.data.k
    align = jax.jit(model.alignment)

    @jax.jit
    def metrics(W):
        logits = model.apply(W, x, cfg.model.q, cfg.model.varrho)
        return cross_entropy(logits, y), correct(logits, y).mean()

    L = r.steps.size
    assert r.steps[0] == 0 and np.all(np.diff(r.steps) > 0)
    assert set(r.steps.tolist()) <= set(log_steps(T_MAIN, tc.n_log).tolist())
    # recording runs until every seed has stopped (here: the one that hits T)
    assert r.steps[-1] == T_MAIN == r.stop_step.max()
    assert r.alignment.shape == (S, L, k, 2)
    assert r.loss.shape == r.accuracy.shape == (S, L)
    for s in range(S):
        live = r.steps <= r.stop_step[s]
        assert np.all(np.isfinite(r.loss[s, live])) and np.all(np.isnan(r.loss[s, ~live]))
        acc = r.accuracy[s, live]
        assert np.all((acc >= 0) & (acc <= 1))
        # after the stop, Λ stays at the frozen weights' value
        frozen = np.asarray(align(r.params[s], V))
        np.testing.assert_allclose(
            r.alignment[s, ~live], np.broadcast_to(frozen, ((~live).sum(), k, 2)), rtol=0, atol=1e-6
        )
    # step 0 is the init: loss, accuracy, Λ of W^{(0)}
    np.testing.assert_allclose(
        r.alignment[:, 0], np.asarray(align(r.init_params, V)), rtol=1e-6, atol=1e-7
    )
    for s in range(S):
        _, accs, losses = reference(r.init_params[s], 0)
        assert r.loss[s, 0] == pytest.approx(losses[0], rel=1e-5)
        assert r.accuracy[s, 0] == accs[0]
    # final values are those of the final weights
    for s in range(S):
        loss, acc = metrics(r.params[s])
        assert r.final_loss[s] == pytest.approx(float(loss), rel=1e-5)
        assert r.final_accuracy[s] == float(acc)
    # the weights at the recorded steps (what the error curves evaluate): those after t
    # updates, as plain GD gives them, and frozen past a seed's stop
    h = np.asarray(r.history_params)
    assert h.shape == (S, L, *r.params.shape[1:])
    np.testing.assert_allclose(np.asarray(align(h.reshape(-1, *h.shape[2:]), V)).reshape(
        r.alignment.shape), r.alignment, rtol=1e-6, atol=1e-6)  # fmt: skip
    Ws = reference(r.init_params[0], 60)[0]
    for j in np.flatnonzero(r.steps <= 60):
        np.testing.assert_allclose(h[0, j], Ws[r.steps[j]], rtol=0, atol=W_TOL)
    for s in range(S):
        past = r.steps > r.stop_step[s]
        np.testing.assert_array_equal(h[s, past], np.broadcast_to(r.params[s], h[s, past].shape))


def test_history_steps_up_to_the_horizon_do_not_depend_on_the_cap():
    """The trajectory reading compares runs whose caps differ: the recorded steps up to
    the horizon are those of the horizon whatever T is, then T's own past it."""
    for T in (2000, 4000, 20_000):
        st = history_steps(T, 48, 1000)
        np.testing.assert_array_equal(st[st <= 1000], log_steps(1000, 48))
        np.testing.assert_array_equal(st[st > 1000], log_steps(T, 48)[log_steps(T, 48) > 1000])
    np.testing.assert_array_equal(history_steps(500, 48, None), log_steps(500, 48))
    np.testing.assert_array_equal(history_steps(500, 48, 500), log_steps(500, 48))


def test_log_steps():
    for T, n in [(1, 2), (300, 48), (5000, 48), (7, 100)]:
        st = log_steps(T, n)
        assert st[0] == 0 and st[-1] == T and np.all(np.diff(st) > 0)
        assert st.size <= n + 1


def test_matmul_precision_is_in_force_while_tracing_and_restored_after():
    # The field reaches XLA only through jax.default_matmul_precision at trace time.
    seen = []
    before = jax.config.jax_default_matmul_precision
    with precision("float32", "tensorfloat32"):
        jax.jit(lambda a: seen.append(jax.config.jax_default_matmul_precision) or a)(1.0)
    assert seen == ["tensorfloat32"]
    assert jax.config.jax_default_matmul_precision == before
    with precision("float64", "highest"):
        assert jnp.zeros(1).dtype == jnp.float64
        assert jax.config.jax_default_matmul_precision == "highest"
    assert jnp.zeros(1).dtype == jnp.float32


@pytest.mark.parametrize("block", [16, 24])  # 64 = 4·16; 64 = 2·24 + a remainder of 16
def test_sample_blocking_gives_the_same_training(block):
    cfg, V, x, y, net, tc = setup()
    r = main_run()
    b = train(jax.random.PRNGKey(3), net, x, y, V, dataclasses.replace(tc, block=block), seeds=S)
    np.testing.assert_array_equal(b.stop_step, r.stop_step)
    np.testing.assert_allclose(np.asarray(b.params), np.asarray(r.params), rtol=0, atol=W_TOL)
    np.testing.assert_allclose(b.loss, r.loss, rtol=1e-4, equal_nan=True)


def test_accuracy_is_exactly_one_when_every_point_is_right():
    # A float32 mean of 97 Trues is 0.99999994: the accuracy stop would never fire.
    jitted = jax.jit(accuracy)  # under jit XLA divides by multiplying with 1/n
    for n in (1, 3, 97, 123, 620, 1240):  # 97 and 123: float32 means that miss 1
        y = jnp.zeros(n, jnp.int32)
        logits = jnp.eye(3)[y]
        assert float(accuracy(logits, y)) == 1.0
        assert float(jitted(logits, y)) == 1.0
        assert float(accuracy(logits, y.at[0].set(1))) == pytest.approx((n - 1) / n, rel=1e-6)


# --- several points in one call --------------------------------------------------------------


def test_points_trained_together_equal_each_point_alone():
    """train_points on Q = 3 points (own data, labels, views and η each) gives every point
    what it gets alone: same stop steps, weights within W_TOL, same history."""
    cfg, V, x, y, net, tc = setup()
    xs = jnp.stack([x, x * 0.9, x * 1.1])
    ys = jnp.stack([y, y, y])
    Vs = jnp.stack([V, V, V])
    etas = [tc.eta, tc.eta, tc.eta * 0.5]
    inits = jnp.stack([main_run().init_params] * 3)
    both = train_points(net, xs, ys, Vs, tc, inits, etas=etas)
    assert both.params.shape[:2] == (3, S) and both.loss.shape[:2] == (3, S)
    # A test of the ragged compaction only if points and seeds stop at different steps.
    assert len({tuple(r) for r in both.stop_step.tolist()}) == 3, both.stop_step
    assert (both.stop_step < T_MAIN).any() and (both.stop_step == T_MAIN).any(), both.stop_step
    for q in range(3):
        one = train(None, net, xs[q], ys[q], V, dataclasses.replace(tc, eta=etas[q]),
                    init_params=inits[q])  # fmt: skip
        np.testing.assert_array_equal(one.stop_step, both.stop_step[q])
        np.testing.assert_allclose(np.asarray(one.params), np.asarray(both.params[q]),
                                   rtol=0, atol=W_TOL)  # fmt: skip
        np.testing.assert_array_equal(one.steps, both.steps[: one.steps.size])
        np.testing.assert_array_equal(
            np.isnan(one.loss), np.isnan(both.loss[q][:, : one.steps.size])
        )
        np.testing.assert_allclose(one.final_accuracy, both.final_accuracy[q])


def test_points_need_one_leading_axis():
    cfg, V, x, y, net, tc = setup()
    inits = jax.vmap(jax.vmap(net.init))(jax.random.split(jax.random.PRNGKey(5), (2, S)))
    with pytest.raises(ValueError, match="leading axis of Q = 2"):
        train_points(net, x[None], y[None], V[None], tc, inits)


def test_divergence_names_the_point():
    cfg, V, x, y, net, tc = setup()
    r = main_run()
    W = jnp.stack([r.init_params[1:2], r.init_params[1:2]])  # (2 points, 1 seed)
    tcd = dataclasses.replace(tc, stop="none", T=20)
    with pytest.raises(DivergenceError, match="step 1 of seed 0 of point 1"):
        train_points(net, jnp.stack([x, x * 1e20]), jnp.stack([y, y]), jnp.stack([V, V]),
                     tcd, W)  # fmt: skip
