"""Same-shape sweep points: vmapped together in one call, against one by one with the
compiled code reused, against one by one with every point compiling anew.

``python -m benchmarks.sweep_batching [--preset tiny] [--axis mu=0.05,0.1,0.2,0.3]
[--set T=2000 ...] [--claims single,ensemble] [--out FILE.json]``

All modes run the same points in one process. ``batched``: one
:func:`mvsim.sweep.run_points` call for all of them (``mvsim sweep --batch-points Q``);
``reused``: :func:`mvsim.sweep.run_point` per point, which reuses the compiled code of the
previous point (``--batch-points 1``); ``fresh``: the same, but JAX's and mvsim's caches
are cleared before every point, which is what a fresh process per point would pay minus
its start-up. Each mode starts from cleared caches, so compiling is included. The numbers
of the modes must agree exactly: batching changes how the work is laid out, never what
is computed (the exit status says whether they did).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Any

import jax

from mvsim import distill, model, sweep, train, verify
from mvsim.config import parse_set
from mvsim.report import write_json

MODES = ("batched", "reused", "fresh")


def _clear() -> None:
    jax.clear_caches()
    for fn in (train._chunk_fn, model._apply_fn, model._avg_apply_fn, distill.objective,
               verify._errs_fn):  # fmt: skip
        fn.cache_clear()


def _numbers(out: dict[str, Any]) -> list[tuple]:
    return [(c["id"], c["error_over_mu"], tuple(c["ci95"])) for c in out["claims"]]


def run(
    preset: str, axis: str, fixed: list[str], claims: list[str], modes: tuple[str, ...] = MODES
) -> dict[str, Any]:
    points = sweep.build_points(preset, parse_set(fixed), sweep.parse_grid([axis]))
    keys = {verify.batch_key(p.cfg) for p in points}
    assert len(keys) == 1, "the benchmark needs points that can share a compiled call"
    res: dict[str, Any] = {"points": [p.values for p in points]}
    numbers = {}
    for mode in modes:
        _clear()
        t0 = time.perf_counter()
        if mode == "batched":
            outs = sweep.run_points([p.cfg for p in points], claims)
            per_point = [time.perf_counter() - t0]
        else:
            outs, per_point = [], []
            for p in points:
                if mode == "fresh":
                    _clear()
                t = time.perf_counter()
                outs.append(sweep.run_point(p.cfg, claims))
                per_point.append(time.perf_counter() - t)
        calls = outs[:1] if mode == "batched" else outs  # a batch's stages are shared
        res[mode] = {"total_s": time.perf_counter() - t0, "per_call_s": per_point,
                     "stages_s": [o["timing"] for o in calls]}  # fmt: skip
        numbers[mode] = [_numbers(o) for o in outs]
    res["same_numbers"] = all(numbers[m] == numbers[modes[0]] for m in modes)
    for m in ("reused", "fresh"):
        if m in res and "batched" in res:
            res[f"speedup_batched_over_{m}"] = res[m]["total_s"] / res["batched"]["total_s"]
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--axis", default="mu=0.05,0.1,0.2,0.3")
    ap.add_argument("--set", action="append", default=None)
    ap.add_argument("--claims", default="single,ensemble")
    ap.add_argument("--modes", default=",".join(MODES), help=f"a subset of {','.join(MODES)}")
    ap.add_argument("--out", default="sweep-batching.json")
    args = ap.parse_args(argv)
    fixed = args.set if args.set is not None else ["seeds=4", "kd_students=2"]
    modes = tuple(args.modes.split(","))
    if not modes or set(modes) - set(MODES):
        ap.error(f"--modes must be a subset of {','.join(MODES)}")
    res = run(args.preset, args.axis, fixed, args.claims.split(","), modes)
    res.update(
        preset=args.preset,
        axis=args.axis,
        fixed=fixed,
        claims=args.claims,
        jax_version=jax.__version__,
        backend=jax.default_backend(),
        machine={"processor": platform.processor() or platform.machine(),
                 "cpus": os.cpu_count(), "loadavg_end": list(os.getloadavg())},
    )  # fmt: skip
    write_json(args.out, res)
    times = ", ".join(f"{m} {res[m]['total_s']:.1f} s" for m in modes)
    ratios = ", ".join(f"{k} {v:.2f}x" for k, v in res.items() if k.startswith("speedup"))
    print(
        f"{len(res['points'])} same-shape points ({args.preset}, {args.axis}): {times}; "
        f"{ratios}; same numbers: {res['same_numbers']}"
    )
    return 0 if res["same_numbers"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
