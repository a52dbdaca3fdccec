"""``scaling``: time per GD step against N, P, d and k·m, and memory against N·P·d (peak
RSS and XLA's own buffer analysis), with fitted log-log exponents."""

from __future__ import annotations

import time
from typing import Any

from benchmarks.harness import Clock, PeakRSS, Settings, bench, loglog_fit, memory_analysis
from benchmarks.step import trainer_chunk


def _exponents(fits: dict[str, float | None]) -> str:
    """'N: 0.98, P: 0.68, ...' (n/a where a fit had too few points)."""
    return ", ".join(f"{a}: {e:.2f}" if e is not None else f"{a}: n/a" for a, e in fits.items())


def _plan(s: Settings) -> tuple[dict[str, int], dict[str, list[int]], list[int]]:
    """(the base shape, the values of each axis, the N of the memory points)."""
    if s.quick:
        base = {"k": 4, "m": 2, "N": 40, "P": 8, "d": 32, "max_noisy": 6}
        axes = {"N": [40, 80], "P": [4, 8], "d": [32, 64], "m": [1, 2]}
        return base, axes, [40, 80]
    base = {"k": 10, "m": 4, "N": 310, "P": 16, "d": 200, "max_noisy": 14}
    axes = {
        "N": [155, 310, 1240, 4960],
        "P": [4, 8, 16, 32],
        "d": [50, 100, 200, 400, 800],
        "m": [1, 2, 4, 8],
    }
    return base, axes, [620, 2480, 9920, 39680]


def sec_scaling(s: Settings, clock: Clock) -> dict[str, Any]:
    base, axes, mem_N = _plan(s)
    out: dict[str, Any] = {
        "base": base,
        "data": "Gaussian patches at the data's noise scale",
        "seeds": 1,
        "time_per_step": {},
        "exponents_time": {},
    }
    cache: dict[tuple, Any] = {}
    compiled = lambda ov: _compiled_for(cache, dict(base, **ov), s.steps)
    for axis, values in axes.items():
        pts = [_time_point(s, clock, compiled, axis, v) for v in values]
        xs = [p.get("k_m") if axis == "m" else p[axis] for p in pts if "step_time_s" in p]
        ys = [p["step_time_s"] for p in pts if "step_time_s" in p]
        name = "k*m" if axis == "m" else axis
        out["time_per_step"][name] = pts
        out["exponents_time"][name] = loglog_fit(xs, ys)
    mem_pts = [_memory_point(s, clock, compiled, N) for N in mem_N]
    ok = [p for p in mem_pts if "NPd" in p]
    out["memory"] = mem_pts
    out["exponents_memory_vs_NPd"] = {
        "data_plus_run_peak_rss": loglog_fit(
            [p["NPd"] for p in ok], [p["data_plus_run_peak_bytes"] for p in ok]
        ),
        "xla_buffers": loglog_fit(
            [p["NPd"] for p in ok], [(p["xla_memory"] or {}).get("total_bytes") for p in ok]
        ),
    }
    print(f"  fitted exponents, time per step vs: {_exponents(out['exponents_time'])}", flush=True)
    print(
        f"  fitted exponents, memory vs N·P·d: {_exponents(out['exponents_memory_vs_NPd'])}",
        flush=True,
    )
    return out


def _compiled_for(cache: dict[tuple, Any], ov: dict[str, Any], n_steps: int) -> tuple:
    """(cfg, compiled chunk, state, V) of the demo at the overrides ``ov``: compiled from
    abstract shapes, so nothing of the size is allocated before a memory measurement
    starts; cached in ``cache``."""
    import jax

    ov = dict(ov)
    ov["max_noisy"] = min(ov["max_noisy"], ov["P"] - 2)
    key = (tuple(sorted(ov.items())), n_steps)
    if key not in cache:
        from mvsim import data, model
        from mvsim.config import make_config

        cfg = make_config("demo", ov)
        D = cfg.data
        V = data.features(jax.random.key(0), D.d, D.k)
        net = model.network(cfg.model, D.k, D.d)
        f, init_state = trainer_chunk(net, cfg.train, n_steps)
        state = init_state(jax.vmap(net.init)(jax.random.split(jax.random.key(2), 1)))
        xs = jax.ShapeDtypeStruct((D.N, D.P, D.d), jax.numpy.float32)
        ys = jax.ShapeDtypeStruct((D.N,), jax.numpy.int32)
        cache[key] = (cfg, f.lower(state, xs, ys, None, V).compile(), state, V)
    return cache[key]


def _make_x(cfg: Any) -> tuple[Any, Any]:
    """Gaussian patches at the data's noise scale and random labels, of cfg's shape."""
    import jax

    D = cfg.data
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (D.N, D.P, D.d)) * D.sigma_n
    y = jax.random.randint(ky, (D.N,), 0, D.k, dtype=jax.numpy.int32)
    return jax.block_until_ready(x), y


def _time_point(s: Settings, clock: Clock, compiled, axis: str, v: int) -> dict[str, Any]:
    """Time per step with one axis at ``v`` (the others at the base)."""
    import jax

    if clock.left() < 0:
        return {axis: v, "skipped": "time budget spent"}
    cfg, c, state, V = compiled({axis: v})
    x, y = _make_x(cfg)
    st = bench(lambda: jax.block_until_ready(c(state, x, y, None, V)), s.repeats)
    km = cfg.data.k * cfg.model.m
    return {axis: v, "k_m": km, "step_time_s": st["median"] / s.steps,
            "spread_rel": st["rel_spread"]}  # fmt: skip


def _memory_point(s: Settings, clock: Clock, compiled, N: int) -> dict[str, Any]:
    """Peak memory of one chunk call at N samples, against the data's own size."""
    import jax

    if clock.left() < 0:
        return {"N": N, "skipped": "time budget spent"}
    cfg, c, state, V = compiled({"N": N})
    x, y = _make_x(cfg)
    with PeakRSS() as pr:  # one chunk's buffers beyond the resident data set
        t = time.perf_counter()
        jax.block_until_ready(c(state, x, y, None, V))
        step = (time.perf_counter() - t) / s.steps
    del x, y
    D = cfg.data
    return {
        "N": N,
        "NPd": N * D.P * D.d,
        "x_bytes": N * D.P * D.d * 4,
        "data_plus_run_peak_bytes": N * D.P * D.d * 4 + pr.delta,
        "rss": pr.as_dict(),
        "xla_memory": memory_analysis(c),
        "step_time_s_single_call": step,
    }
