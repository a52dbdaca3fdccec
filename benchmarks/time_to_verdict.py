"""``verify``, ``sweep`` and ``precision``: ``mvsim.verify.run`` end to end and per stage,
compile included, with its verdicts and a FLOP lower bound on its time; extra runs with
``--set`` overrides; and whether another matmul precision changes a verdict."""

from __future__ import annotations

import os
import shlex
import time
from typing import Any

import numpy as np

from benchmarks.harness import Clock, PeakRSS, Settings

# Small verify runs for --quick (seconds, not minutes): tiny preset, few steps and points.
QUICK_VERIFY = dict(
    T=100,
    chunk=50,
    kd_T=50,
    seeds=3,
    kd_students=2,
    avg_members=2,
    avg_seeds=2,
    n_test_multi=1000,
    n_test_single=1000,
)


def _verify_cfg(s: Settings, k: int | None, extra: dict[str, Any] | None = None):
    from mvsim.config import make_config

    ov: dict[str, Any] = {} if k is None else {"k": k}
    ov["matmul_precision"] = s.precision
    if s.quick:
        ov.update(QUICK_VERIFY)
    ov.update(extra or {})
    return make_config("tiny" if s.quick else "demo", ov), ov


def run_verify(cfg: Any, flops_rate: float | None) -> dict[str, Any]:
    """verify.run end to end (compile included), its per-stage timing and verdicts, and a
    lower bound on its time: the FLOPs it must do at this run's best matmul rate."""
    from mvsim import claims, verify

    t = time.perf_counter()
    with PeakRSS() as mem:
        m = verify.run(cfg, progress=False)
        results = claims.evaluate_all(m)
    total = time.perf_counter() - t
    D, M, KD, Vc = cfg.data, cfg.model, cfg.distill, cfg.verify
    per_step = 4 * D.N * D.P * D.d * D.k * M.m  # executed FLOPs of one network's gradient
    evals = lambda g: int(np.sum(m.groups[g].grad_evals)) if g in m.groups else 0
    single_evals = evals("single")
    student_evals = sum(evals(g) for g in ("kd", "self_distillation", "control"))
    avg_evals = evals("training_average") * KD.avg_members
    n_models = Vc.seeds + (3 * KD.kd_students if student_evals else 0)
    n_models += KD.avg_seeds * KD.avg_members if avg_evals else 0
    eval_flops = 2 * (Vc.n_test_multi + Vc.n_test_single) * D.P * D.d * D.k * M.m * n_models
    train_flops = per_step * (single_evals + student_evals + avg_evals)
    bound = (train_flops + eval_flops) / (flops_rate * 1e9) if flops_rate else None
    return {
        "preset": cfg.preset,
        "config": {
            k: cfg.flat()[k]
            for k in (
                "k",
                "m",
                "N",
                "P",
                "d",
                "mu",
                "T",
                "seeds",
                "kd_T",
                "n_test_multi",
                "n_test_single",
            )
        },
        "total_s": total,
        "stages_s": dict(m.timing),
        "verdicts": {r.id: r.verdict.name for r in results},
        "integrator": cfg.train.integrator,
        "grad_evals": {
            "singles": single_evals,
            "students": student_evals,
            "training_average_networks": avg_evals,
            "single_stop_steps": np.asarray(m.groups["single"].steps).tolist(),
        },
        "flops": {"train": train_flops, "evaluate": eval_flops},
        "lower_bound_s_at_peak": bound,
        "peak_gflops_used_for_bound": flops_rate,
        "memory": mem.as_dict(),
        "loadavg": list(os.getloadavg()),
    }


_VERIFY_WALLS: list[tuple[int, float]] = []  # (k, seconds) of this run's verify runs


def _verify_skip(s: Settings, clock: Clock, k: int) -> str | None:
    """Why a verify run must be skipped under an explicit --budget-s (None: run it). The
    estimate is the last verify run's time, scaled by (k / its k)² (N and k·m grow with k)."""
    if not s.budget_verify:
        return None
    est = 0.0
    if _VERIFY_WALLS:
        k0, t0 = _VERIFY_WALLS[-1]
        est = t0 * (k / k0) ** 2
    if clock.left() < est:
        return f"time budget: {clock.left():.0f} s left, estimated {est:.0f} s"
    return None


def _run_verify_logged(cfg: Any, peak: float | None) -> dict[str, Any]:
    r = run_verify(cfg, peak)
    _VERIFY_WALLS.append((cfg.data.k, r["total_s"]))
    return r


def sec_verify(s: Settings, peak: float | None, clock: Clock) -> dict[str, Any]:
    runs = []
    for k in s.verify_k:
        cfg, ov = _verify_cfg(s, k)
        if why := _verify_skip(s, clock, cfg.data.k):
            runs.append({"k": k, "overrides": ov, "skipped": why})
            continue
        r = _run_verify_logged(cfg, peak)
        r.update({"k": k, "overrides": ov})
        runs.append(r)
        print(
            f"  verify {cfg.preset} k={k}: {r['total_s']:.1f} s  stages "
            + ", ".join(f"{a}={b:.1f}" for a, b in r["stages_s"].items())
            + f"  verdicts {r['verdicts']}  (FLOP lower bound "
            + (f"{r['lower_bound_s_at_peak']:.1f} s)" if r["lower_bound_s_at_peak"] else "n/a)"),
            flush=True,
        )
    return {"runs": runs}


def sec_sweep(s: Settings, peak: float | None, clock: Clock) -> dict[str, Any]:
    from mvsim.config import parse_set

    runs = []
    for spec in s.sweep:
        extra = parse_set(shlex.split(spec))
        cfg, ov = _verify_cfg(s, s.verify_k[0], extra)
        if why := _verify_skip(s, clock, cfg.data.k):
            runs.append({"set": spec, "skipped": why})
            continue
        r = _run_verify_logged(cfg, peak)
        r.update({"set": spec, "overrides": ov})
        runs.append(r)
        print(f"  sweep --set {spec}: {r['total_s']:.1f} s  verdicts {r['verdicts']}", flush=True)
    return {"runs": runs}


def sec_precision(s: Settings, peak: float | None, prior: dict | None, clock: Clock):
    import jax

    base = s.precision
    other = s.compare_precision or ("tensorfloat32" if base != "tensorfloat32" else "highest")
    cfg, ov = _verify_cfg(s, s.verify_k[0])
    cfg_other, _ = _verify_cfg(s, s.verify_k[0], {"matmul_precision": other})
    runs = (prior or {}).get("runs", [])
    first = runs[0] if runs and "verdicts" in runs[0] else None
    if first is None:
        if why := _verify_skip(s, clock, cfg.data.k):
            return {"base": base, "other": other, "skipped": why}
        first = _run_verify_logged(cfg, peak)
    if why := _verify_skip(s, clock, cfg.data.k):
        return {"base": base, "other": other, "skipped": why}
    second = _run_verify_logged(cfg_other, peak)
    changed = sorted(
        c for c in first["verdicts"] if first["verdicts"][c] != second["verdicts"].get(c)
    )
    # Does the setting change a float32 matmul at all on this backend?
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (256, 300))
    b = jax.random.normal(jax.random.key(1), (300, 64))
    ref = np.asarray(jax.jit(jnp.matmul)(a, b))
    with jax.default_matmul_precision(other):
        alt = np.asarray(jax.jit(jnp.matmul)(a, b))
    diff = float(np.abs(alt - ref).max())
    note = None
    if diff == 0.0:
        note = f"{other} and {base} give bit-identical float32 matmuls on this backend"
    print(
        f"  precision {base} vs {other}: verdicts {'unchanged' if not changed else changed}"
        f"  ({first['total_s']:.1f} s vs {second['total_s']:.1f} s)",
        flush=True,
    )
    return {
        "base": base,
        "other": other,
        "verdicts_base": first["verdicts"],
        "verdicts_other": second["verdicts"],
        "changed_claims": changed,
        "verdicts_unchanged": not changed,
        "total_s_base": first["total_s"],
        "total_s_other": second["total_s"],
        "run_other": second,
        "check_matmul_max_abs_diff": diff,
        "note": note,
    }
