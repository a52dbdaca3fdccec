"""``efficiency``: the trainer's GD step against the machine: its FLOP/s at the demo, k = 20
and theory shapes (one seed and vmapped), against plain matmuls of the very shapes it
multiplies, a compiled loop of them and the best square matmul; and ``train()`` itself,
per step, from two step budgets."""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np

from benchmarks.harness import Clock, Settings, bench_rounds, ratio_stats
from benchmarks.hlo import hlo_summary
from benchmarks.step import (
    flops_executed,
    flops_issue,
    prepare_chunk,
    prepare_matmul,
    prepare_matmul_loop,
    problem,
    shape_of,
)


def _shapes(s: Settings) -> list[tuple[str, str, dict[str, Any]]]:
    if s.quick:
        return [("demo_k10", "demo", {"N": 120})]
    return [
        ("demo_k10", "demo", {}),
        ("demo_k20", "demo", {"k": 20}),
        ("theory_k10", "theory", {"k": 10}),
    ]


def sec_efficiency(s: Settings, peak: dict[str, Any], clock: Clock) -> dict[str, Any]:
    out = []
    for name, preset, ov in _shapes(s):
        prob = problem(preset, ov)
        for S in (1, s.eff_seeds):
            if clock.left() < 0:
                out.append({"name": name, "S": S, "skipped": "time budget spent"})
                continue
            e = _entry(s, peak, clock, (name, preset, ov), prob, S)
            out.append(e)
            _print_entry(e)
    return {"peak": peak, "entries": out}


def _entry(
    s: Settings, peak: dict[str, Any], clock: Clock, shape: tuple, prob: tuple, S: int
) -> dict[str, Any]:
    """One shape at S seeds: the compiled step, the same-shape matmuls and the matmul-only
    loop timed in interleaved rounds, their ratios, and what the compiled HLO multiplies."""
    name, preset, ov = shape
    cfg, net, x, y, V = prob
    sh = shape_of(cfg, S)
    NP, km, d = sh["N"] * sh["P"], sh["k"] * sh["m"], sh["d"]
    step_fn, compile_s, compiled = prepare_chunk(net, cfg.train, x, y, V, S, s.steps)
    mm = {
        "forward": (NP, d, S * km),  # X (NP, d) @ Wᵀ (d, S·k·m)
        "weight_grad": (S * km, NP, d),  # dpreᵀ (S·k·m, NP) @ X (NP, d)
        "input_grad_not_executed": (NP, S * km, d),  # dpre @ W: dead, XLA drops it
    }
    fns = {"step": step_fn}
    fns.update({k: prepare_matmul(*v) for k, v in mm.items()})
    fns["matmul_only_loop"] = prepare_matmul_loop(NP, d, S * km, s.steps)
    st, raw = bench_rounds(fns, s.repeats)
    step = st["step"]["median"] / s.steps
    hlo = hlo_summary(compiled.as_text(), S, km, NP)
    mm_out = {
        k: {"shape": list(v), "time_s": st[k],
            "gflops": 2 * math.prod(v) / st[k]["median"] / 1e9}
        for k, v in mm.items()
    }  # fmt: skip
    t_mm = st["forward"]["median"] + st["weight_grad"]["median"]
    g_issue = flops_issue(sh) / step / 1e9
    g_exec = flops_executed(sh) / step / 1e9
    e = {
        "name": name,
        "preset": preset,
        "overrides": ov,
        "shape": sh,
        "steps_per_call": s.steps,
        "rounds": s.repeats,
        "compile_s": compile_s,
        "call_time_s": st["step"],
        "step_time_s": step,
        "flops_per_step": {
            "issue_convention_3_matmuls": flops_issue(sh),
            "executed_2_matmuls": flops_executed(sh),
            "from_compiled_hlo": hlo["flops_per_step_from_hlo"],
        },
        "gflops_step_issue_convention": g_issue,
        "gflops_step_executed": g_exec,
        "matmul_same_shapes": mm_out,
        "ratios": _ratios(raw, s.steps, g_issue, g_exec, mm_out["forward"]["gflops"], peak),
        "matmul_only_loop_step_s": st["matmul_only_loop"]["median"] / s.steps,
        "time_breakdown_s": {"matmuls_alone": t_mm, "rest_of_step": step - t_mm},
        "hlo": hlo,
        "loadavg": list(os.getloadavg()),
    }
    if name == "demo_k10" and not (s.quick and S > 1):
        e["train_path"] = train_path(net, cfg.train, x, y, V, S, step, s, clock)
    return e


def _ratios(
    raw: dict[str, list[float]],
    steps: int,
    g_issue: float,
    g_exec: float,
    g_fwd: float,
    peak: dict[str, Any],
) -> dict[str, Any]:
    mm_rounds = [a + b for a, b in zip(raw["forward"], raw["weight_grad"], strict=True)]
    loop_rounds = [t / steps for t in raw["matmul_only_loop"]]
    step_rounds = [t / steps for t in raw["step"]]
    return {
        # Headline: the time the step's own two matmuls take alone over the
        # step's time, per interleaved round (1.0 = the step costs no more
        # than its matmuls).
        "step_vs_same_shape_matmuls": ratio_stats(mm_rounds, step_rounds)["median"],
        "step_vs_same_shape_matmuls_range": ratio_stats(mm_rounds, step_rounds),
        # The same two matmuls alone in a compiled lax.scan like the trainer's
        # (buffers reused, layouts XLA's choice): the fairest reference.
        "step_vs_matmul_only_loop": ratio_stats(loop_rounds, step_rounds)["median"],
        # The issue's literal: step FLOP/s (3-matmul count) / forward matmul's.
        "step_issue_flops_vs_forward_matmul": g_issue / g_fwd,
        "step_executed_vs_peak": g_exec / peak["best_gflops"],
        "step_issue_flops_vs_peak": g_issue / peak["best_gflops"],
        "forward_matmul_vs_peak": g_fwd / peak["best_gflops"],
    }


def _print_entry(e: dict[str, Any]) -> None:
    r, hlo, S = e["ratios"], e["hlo"], e["shape"]["S"]
    name, step = e["name"], e["step_time_s"]
    g_exec, g_issue = e["gflops_step_executed"], e["gflops_step_issue_convention"]
    print(
        f"  {name:11s} S={S:<3d} step {step * 1e3:8.2f} ms  "
        f"{g_exec:6.1f} GF/s executed ({g_issue:6.1f} by the 3-matmul count)  "
        f"step/same-matmuls {r['step_vs_same_shape_matmuls']:.2f} "
        f"(/matmul-only loop {r['step_vs_matmul_only_loop']:.2f})  "
        f"step/peak {r['step_executed_vs_peak']:.2f}  "
        f"seeds fused: {hlo['seeds_fused_into_one_matmul']}",
        flush=True,
    )


def train_path(net, tcfg, x, y, V, S: int, step_est: float, s: Settings, clock: Clock):
    """``mvsim.train.train`` itself with fixed-η GD (stop='none'; the GD step is what this
    section times, the flow is benchmarks/flow.py's): per-step cost from two step budgets,
    (t_long − t_short) / extra steps, so the compile each call pays cancels; the per-call
    overhead (mostly that compile: train jits a fresh closure per call) is reported too."""
    import dataclasses as dc

    import jax

    from mvsim.train import train

    C = s.steps * (2 if s.quick else 5)
    tc = dc.replace(tcfg, chunk=C, stop="none", n_log=2, integrator="gd")
    extra_chunks = max(1, math.ceil((0.2 if s.quick else 3.0) / max(step_est * C, 1e-9)))
    if clock.left() < 4 * (1 + extra_chunks) * C * step_est + 10:
        return {"skipped": "time budget"}
    key = jax.random.key(3)

    def wall(T: int) -> float:
        t = time.perf_counter()
        r = train(key, net, x, y, V, tc, seeds=S, T=T)
        jax.block_until_ready(r.params)
        return time.perf_counter() - t

    if not s.quick:
        wall(C - 1)  # warm the helpers around the chunk (init, final logits)
    pairs = []
    for _ in range(1 if s.quick else 2):
        t_short, t_long = wall(C - 1), wall((1 + extra_chunks) * C - 1)
        pairs.append((t_short, t_long))
    per_step = float(np.median([(b - a) / (extra_chunks * C) for a, b in pairs]))
    t_short = float(np.median([a for a, _ in pairs]))
    return {
        "method": "difference of two step budgets; compile cancels",
        "steps_short": C,
        "steps_long": (1 + extra_chunks) * C,
        "walls_s": pairs,
        "step_time_s": per_step,
        "ratio_to_chunk_fn_step": per_step / step_est if step_est else None,
        "per_call_overhead_s": t_short - C * per_step,
    }
