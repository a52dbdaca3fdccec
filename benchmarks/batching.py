"""``batching``: S seeds vmapped in one call of the trainer's compiled chunk against a Python
loop of S single-seed calls, at a cache-resident size and a memory-bound one."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, NamedTuple

from benchmarks.harness import Clock, Settings, bench_rounds, meminfo, memory_analysis, ratio_stats
from benchmarks.hlo import hlo_summary
from benchmarks.step import (
    flops_executed,
    prepare_chunk,
    prepare_matmul,
    problem,
    shape_of,
    trainer_chunk,
)

_METHOD = (
    "S seeds vmapped in ONE call of the trainer's compiled chunk function, "
    "against a Python loop of S calls of the S = 1 compiled function (each blocked), "
    "same data, same steps; compile excluded from both (warm-up call first)"
)


class _Size(NamedTuple):
    """One data size of the section: its data, the single-seed compiled chunk (one state
    per seed), and how it is timed."""

    label: str
    N: int
    x: Any
    y: Any
    n_steps: int
    reps: int
    params: Any  # (max S, ...) inits
    c1: Any  # compiled chunk for one seed
    states1: list  # one S = 1 state per seed


def sec_batching(s: Settings, peak: dict[str, Any], llc: int, clock: Clock) -> dict[str, Any]:
    base_N = 120 if s.quick else 620
    prob = problem("demo", {"N": base_N})
    D = prob[0].data
    row_bytes = D.P * D.d * 4
    tile_mem = max(2, math.ceil(s.mem_mult * llc / (base_N * row_bytes)))
    limit = _memory_limit()
    result: dict[str, Any] = {"method": _METHOD, "llc_bytes": llc, "memory_limit_bytes": limit,
                              "sizes": {}}  # fmt: skip
    for label, tile in (("cache_resident", 1), ("memory_bound", tile_mem)):
        N = base_N * tile
        sz: dict[str, Any] = {"N": N, "x_bytes": N * row_bytes, "x_over_llc": N * row_bytes / llc}
        if label == "memory_bound" and s.quick:
            sz["skipped"] = "--quick: the memory-bound size takes minutes"
        else:
            size = _prepare_size(s, prob, label, tile)
            single, t1 = _single_seed(size, prob, peak, row_bytes)
            sz.update(single)
            sz["rows"] = [_row(s, size, prob, S, t1, limit, clock) for S in s.seeds]
            del size  # the memory-bound size's data is several times the cache
        result["sizes"][label] = sz
    return result


def _memory_limit() -> float:
    """45% of the free memory (the device's on an accelerator): larger S are skipped."""
    import jax

    mem_avail = meminfo().get("MemAvailable")
    dev_limit = None
    if jax.default_backend() != "cpu":
        dev_limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    return 0.45 * (dev_limit or mem_avail or 8 * 1024**3)


def _prepare_size(s: Settings, prob: tuple, label: str, tile: int) -> _Size:
    import jax

    cfg0, net, x0, y0, V = prob
    x = jax.numpy.tile(x0, (tile, 1, 1)) if tile > 1 else x0
    y = jax.numpy.tile(y0, tile) if tile > 1 else y0
    x = jax.block_until_ready(x)
    # On a CPU the memory-bound step takes a good fraction of a second: one step per
    # call there; on a GPU, enough steps per call that dispatch does not dominate.
    on_cpu = jax.default_backend() == "cpu"
    n_steps = s.steps if not on_cpu else (1 if label == "memory_bound" else min(s.steps, 5))
    reps = 2 if (label == "memory_bound" and on_cpu) else s.repeats
    f1, init_state = trainer_chunk(net, cfg0.train, n_steps)
    params = jax.vmap(net.init)(jax.random.split(jax.random.key(5), max(s.seeds)))
    states1 = [init_state(params[i : i + 1]) for i in range(max(s.seeds))]
    c1 = f1.lower(states1[0], x, y, None, V).compile()
    return _Size(label, x.shape[0], x, y, n_steps, reps, params, c1, states1)


def _one(size: _Size, V: Any, i: int) -> Any:
    """One blocking call of the single-seed chunk, for seed i."""
    import jax

    return jax.block_until_ready(size.c1(size.states1[i], size.x, size.y, None, V))


def _single_seed(
    size: _Size, prob: tuple, peak: dict[str, Any], row_bytes: int
) -> tuple[dict[str, Any], float]:
    """The single seed against the best square matmul, in the same rounds, so that their
    ratio (the most batching can buy) is not skewed by a change in the machine's load.
    Returns (its entries of the size's record, its median time per call)."""
    cfg0, V = prob[0], prob[4]
    nsq, n_steps = peak["best_n"], size.n_steps
    st1, _ = bench_rounds({"single": lambda: _one(size, V, 0),
                           "square": prepare_matmul(nsq, nsq, nsq)}, size.reps)  # fmt: skip
    t1 = st1["single"]["median"]
    sq_gflops = 2 * nsq**3 / st1["square"]["median"] / 1e9
    sz: dict[str, Any] = {"single_seed_step_s": t1 / n_steps}
    sz["single_seed_gflops_executed"] = (
        flops_executed(shape_of(cfg0, 1, size.N)) * n_steps / t1 / 1e9
    )
    sz["square_matmul_gflops_same_rounds"] = sq_gflops
    sz["single_seed_vs_peak"] = sz["single_seed_gflops_executed"] / sq_gflops
    # The most batching can buy: a batched step running at the square matmul's rate,
    # against the single seed's achieved rate.
    sz["speedup_ceiling_if_compute_bound"] = 1 / sz["single_seed_vs_peak"]
    sz["x_read_gbytes_per_s"] = 2 * size.N * row_bytes * n_steps / t1 / 1e9  # fwd + grad pass
    sz["steps_per_call"] = n_steps
    return sz, t1


def _compiled_for(size: _Size, prob: tuple, S: int) -> tuple[Any, Any]:
    """(compiled chunk, state) for S seeds vmapped in one call."""
    if S == 1:
        return size.c1, size.states1[0]
    cfg0, net, V = prob[0], prob[1], prob[4]
    fS, init_S = trainer_chunk(net, cfg0.train, size.n_steps)
    stS = init_S(size.params[:S])
    return fS.lower(stS, size.x, size.y, None, V).compile(), stS


def _row(
    s: Settings, size: _Size, prob: tuple, S: int, t1: float, limit: float, clock: Clock
) -> dict[str, Any]:
    """S seeds: vmapped against the loop (and, at the memory-bound S = 16, the trainer with
    ``TrainConfig.block``), unless their buffers or the time budget rule it out."""
    import jax

    cfg0, net, V = prob[0], prob[1], prob[4]
    x, y, N, n_steps, reps = size.x, size.y, size.N, size.n_steps, size.reps
    row: dict[str, Any] = {"S": S}
    est = S * t1 * (1 + reps) * 2 * 1.3
    cS, stS = _compiled_for(size, prob, S)
    mem = memory_analysis(cS)
    row["xla_memory"] = mem
    if mem and mem["total_bytes"] > limit:
        row["skipped"] = (
            f"needs {mem['total_bytes'] / 2**30:.1f} GiB of buffers "
            f"(> {limit / 2**30:.1f} GiB, 45% of free memory)"
        )
    elif est > clock.left():
        row["skipped"] = f"estimated {est:.0f} s > {clock.left():.0f} s left of budget"
    if "skipped" in row:
        print(f"  {size.label:14s} S={S:<4d} skipped: {row['skipped']}", flush=True)
        return row
    fns = {
        "vmapped": lambda: jax.block_until_ready(cS(stS, x, y, None, V)),
        "loop": lambda: [_one(size, V, i) for i in range(S)],
    }
    what_if = size.label == "memory_bound" and S == 16 and not s.quick
    if what_if:
        block = max(b for b in range(1, 161) if N % b == 0)
        bcfg = dataclasses.replace(cfg0.train, block=block)
        fns["what_if_blocked"] = prepare_chunk(net, bcfg, x, y, V, S, n_steps)[0]
    st, raw = bench_rounds(fns, reps)
    if what_if:
        row["what_if_blocked_feature_major"] = _what_if(st, raw, block)
    row.update(_timings(st, raw, shape_of(cfg0, S, N), n_steps, cS, S))
    _print_row(size.label, S, row)
    return row


def _what_if(st: dict, raw: dict, block: int) -> dict[str, Any]:
    return {
        "what": "the trainer with TrainConfig.block = block_samples (the GD "
        "step over blocks of samples: lax.map + jax.checkpoint)",
        "block_samples": block,
        "vmapped_s": st["what_if_blocked"],
        "speedup_loop_over_it": ratio_stats(raw["loop"], raw["what_if_blocked"])["median"],
        "speedup_vs_current_vmapped": ratio_stats(raw["vmapped"], raw["what_if_blocked"])["median"],
    }


def _timings(st: dict, raw: dict, shS: dict[str, int], n_steps: int, cS: Any, S: int) -> dict:
    vm, loop = st["vmapped"], st["loop"]
    sp = ratio_stats(raw["loop"], raw["vmapped"])
    km, NP = shS["k"] * shS["m"], shS["N"] * shS["P"]
    return {
        "vmapped_s": vm,
        "loop_s": loop,
        "speedup_loop_over_vmapped": sp["median"],
        "speedup_range": sp,
        "vmapped_gflops_executed": flops_executed(shS) * n_steps / vm["median"] / 1e9,
        "loop_gflops_executed": flops_executed(shS) * n_steps / loop["median"] / 1e9,
        "hlo": {k: v for k, v in hlo_summary(cS.as_text(), S, km, NP).items()},
        "loadavg": list(os.getloadavg()),
    }


def _print_row(label: str, S: int, row: dict[str, Any]) -> None:
    vm, loop = row["vmapped_s"], row["loop_s"]
    print(
        f"  {label:14s} S={S:<4d} loop {loop['median']:8.3f} s  vmapped "
        f"{vm['median']:8.3f} s  speedup {row['speedup_loop_over_vmapped']:5.2f}x  "
        f"({row['vmapped_gflops_executed']:.0f} vs {row['loop_gflops_executed']:.0f}"
        f" GF/s)  fused: {row['hlo']['seeds_fused_into_one_matmul']}",
        flush=True,
    )
    if "what_if_blocked_feature_major" in row:
        w = row["what_if_blocked_feature_major"]
        print(
            f"  {'':14s}        trainer with block = {w['block_samples']}: vmapped "
            f"{w['vmapped_s']['median']:8.3f} s, speedup over the loop "
            f"{w['speedup_loop_over_it']:.2f}x",
            flush=True,
        )
