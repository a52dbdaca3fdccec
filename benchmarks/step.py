"""The trainer's own compiled GD step, as the benchmarks time it: the chunk function that
:func:`mvsim.train.train` builds, a problem of a preset's shape, the step's FLOP counts,
and the plain matmuls it is compared with (same shapes, a compiled loop of them, and the
machine's best square matmul)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from benchmarks.harness import Settings, bench


def trainer_chunk(net: Any, tcfg: Any, n_steps: int, teacher_axis: int | None = None):
    """The jitted chunk function exactly as :func:`mvsim.train.train` builds it: one seed's
    ``_one_seed_chunk`` (``n_steps`` GD steps in ``lax.scan``) vmapped over seeds, with
    stop = 'none' and a step budget that is never reached, so every step is computed.

    Returns ``(jitted_fn, init_state)``; call ``fn(state, x, y, None, V)``.
    """
    import jax
    import jax.numpy as jnp
    import optax

    try:
        from mvsim.train import _one_seed_chunk, _State, cross_entropy, traced
    except ImportError as e:  # the private names moved: say so rather than time a copy
        raise RuntimeError(f"mvsim.train no longer exposes the chunk step ({e})") from e
    opt = optax.sgd(tcfg.eta)
    T = 2**30
    tr = traced(tcfg, T, jnp.dtype(tcfg.dtype))

    def chunk_fn(state, x, y, teacher, V):
        one = lambda s, t: _one_seed_chunk(
            s,
            x,
            y,
            t,
            V,
            apply_fn=net.apply,
            align_fn=net.alignment,
            objective=cross_entropy,
            opt=opt,
            cfg=tcfg,
            tr=tr,
            stop="none",
            n_steps=n_steps,
        )
        return jax.vmap(one, in_axes=(0, teacher_axis))(state, teacher)

    def init_state(params):
        S = params.shape[0]
        return _State(
            params,
            jax.vmap(opt.init)(params),
            jnp.zeros(S, jnp.int32),
            jnp.zeros(S, bool),
            jnp.full(S, T, jnp.int32),
            jnp.zeros(S, params.dtype),
        )

    return jax.jit(chunk_fn), init_state


def problem(preset: str, overrides: dict[str, Any]):
    """(cfg, net, x, y, V) for a preset, x and y the real sampler's training set."""
    import jax

    from mvsim import data, model
    from mvsim.config import make_config

    cfg = make_config(preset, overrides)
    D = cfg.data
    V = data.features(jax.random.key(0), D.d, D.k)
    net = model.network(cfg.model, D.k, D.d)
    b = data.training_set(jax.random.key(1), D, V)
    return cfg, net, jax.block_until_ready(b.x), b.y, V


def shape_of(cfg: Any, S: int, N: int | None = None) -> dict[str, int]:
    D = cfg.data
    return {"k": D.k, "m": cfg.model.m, "N": N or D.N, "P": D.P, "d": D.d, "S": S}


def flops_issue(sh: dict[str, int]) -> int:
    """The issue's count: forward + two backward matmuls, 2·N·P·d·k·m each, per seed."""
    return 3 * 2 * sh["N"] * sh["P"] * sh["d"] * sh["k"] * sh["m"] * sh["S"]


def flops_executed(sh: dict[str, int]) -> int:
    """What the step multiplies: forward and the weight gradient (the input gradient of
    the data is never needed, and XLA drops it)."""
    return 2 * 2 * sh["N"] * sh["P"] * sh["d"] * sh["k"] * sh["m"] * sh["S"]


def prepare_chunk(net, tcfg, x, y, V, S: int, n_steps: int, key: int = 2):
    """The compiled chunk for S seeds and a blocking call of it: (run, compile_s, compiled)."""
    import jax

    f, init_state = trainer_chunk(net, tcfg, n_steps)
    params = jax.vmap(net.init)(jax.random.split(jax.random.key(key), S))
    state = init_state(params)
    t = time.perf_counter()
    compiled = f.lower(state, x, y, None, V).compile()
    compile_s = time.perf_counter() - t
    run = lambda: jax.block_until_ready(compiled(state, x, y, None, V))
    return run, compile_s, compiled


def prepare_matmul(m: int, k: int, n: int) -> Callable[[], Any]:
    """A blocking call of plain jitted ``jnp.matmul`` (m, k) × (k, n), float32."""
    import jax
    import jax.numpy as jnp

    ka, kb = jax.random.split(jax.random.key(7))
    a = jax.random.normal(ka, (m, k))
    b = jax.random.normal(kb, (k, n))
    f = jax.jit(jnp.matmul)
    return lambda: jax.block_until_ready(f(a, b))


def prepare_matmul_loop(NP: int, d: int, n_out: int, n_steps: int) -> Callable[[], Any]:
    """The step's two matmuls alone, in the same kind of compiled loop as the trainer's
    chunk (``lax.scan``, buffers reused): pre = X·Wᵀ, then the weight gradient preᵀ·X,
    and a tiny update that chains the steps. XLA picks the layouts it likes best here."""
    import jax

    kx, kw = jax.random.split(jax.random.key(7))
    x = jax.random.normal(kx, (NP, d))
    W = jax.random.normal(kw, (n_out, d)) * 0.01

    def chunk(W, x):
        def body(W, _):
            pre = x @ W.T
            return W - 1e-9 * (pre.T @ x), None

        return jax.lax.scan(body, W, None, length=n_steps)[0]

    c = jax.jit(chunk).lower(W, x).compile()
    return lambda: jax.block_until_ready(c(W, x))


def matmul_time(m: int, k: int, n: int, repeats: int) -> dict[str, Any]:
    st = bench(prepare_matmul(m, k, n), repeats)
    return {"shape": [m, k, n], "time_s": st, "gflops": 2 * m * k * n / st["median"] / 1e9}


def sec_peak(s: Settings) -> dict[str, Any]:
    """Best large square matmul of this run: the machine's practical float32 peak."""
    res = [matmul_time(n, n, n, max(3, s.repeats)) for n in s.squares]
    best = max(res, key=lambda r: r["gflops"])
    return {"squares": res, "best_gflops": best["gflops"], "best_n": best["shape"][0]}
