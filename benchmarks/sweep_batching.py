"""Same-shape sweep points back to back (compiled code reused) against one by one (every
point compiles anew, as each ``train()`` call and each μ did before the compile cache).

``python -m benchmarks.sweep_batching [--preset tiny] [--axis mu=0.05,0.1,0.2,0.3]
[--set T=2000 ...] [--claims single,ensemble] [--out FILE.json]``

Both modes run the same points in one process through :func:`mvsim.sweep.run_point`.
"one by one" clears JAX's caches and mvsim's function caches before every point, which
is what a fresh process per point would pay minus its start-up (so the ratio is a lower
bound on the gain over one process per point). The numbers of the two modes must agree
exactly: the cache changes what is compiled, never what is computed.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Any

import jax

from mvsim import distill, model, sweep, train
from mvsim.config import parse_set
from mvsim.report import write_json


def _clear() -> None:
    jax.clear_caches()
    for fn in (train._chunk_fn, model._apply_fn, model._avg_apply_fn, distill.objective):
        fn.cache_clear()


def _numbers(out: dict[str, Any]) -> list[tuple]:
    return [(c["id"], c["error_over_mu"], tuple(c["ci95"])) for c in out["claims"]]


def run(preset: str, axis: str, fixed: list[str], claims: list[str]) -> dict[str, Any]:
    points = sweep.build_points(preset, parse_set(fixed), sweep.parse_grid([axis]))
    shapes = {p.shape_key() for p in points}
    assert len(shapes) == 1, "the benchmark needs points of one shape"
    res: dict[str, Any] = {"points": [p.values for p in points]}
    numbers = {}
    for mode in ("reused", "one_by_one"):
        _clear()
        per_point, nums = [], []
        t0 = time.perf_counter()
        for p in points:
            if mode == "one_by_one":
                _clear()
            t = time.perf_counter()
            out = sweep.run_point(p.cfg, claims)
            per_point.append(time.perf_counter() - t)
            nums.append(_numbers(out))
        res[mode] = {"total_s": time.perf_counter() - t0, "per_point_s": per_point}
        numbers[mode] = nums
    res["same_numbers"] = numbers["reused"] == numbers["one_by_one"]
    res["speedup"] = res["one_by_one"]["total_s"] / res["reused"]["total_s"]
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--axis", default="mu=0.05,0.1,0.2,0.3")
    ap.add_argument("--set", action="append", default=None)
    ap.add_argument("--claims", default="single,ensemble")
    ap.add_argument("--out", default="sweep-batching.json")
    args = ap.parse_args(argv)
    fixed = args.set if args.set is not None else ["seeds=4", "kd_students=2"]
    res = run(args.preset, args.axis, fixed, args.claims.split(","))
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
    r, o = res["reused"], res["one_by_one"]
    print(
        f"{len(res['points'])} same-shape points ({args.preset}, {args.axis}): reused "
        f"{r['total_s']:.1f} s, one by one {o['total_s']:.1f} s -> {res['speedup']:.2f}x; "
        f"per point reused {[round(x, 1) for x in r['per_point_s']]}, one by one "
        f"{[round(x, 1) for x in o['per_point_s']]}; same numbers: {res['same_numbers']}"
    )
    return 0 if res["same_numbers"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
