"""Sweeps on the local executor against a Dask cluster, the compile share of a sweep, and
what a cluster of many nodes would cost the scheduler and the store.

``python -m benchmarks.executors --part grid|k-scaling|overhead|compile [--out FILE.json]``

- ``grid``: the 3×3 demo grid of docs/sweeps.md (μ × P, 8 seeds, single and ensemble),
  first with the local executor (this process, JAX on every core), then on a Dask
  LocalCluster of ``--workers`` single-threaded workers (one core each), into two fresh
  stores: wall time, points per hour, each worker's idle share (1 − its busy time over
  the run's wall time, from Dask's task stream), the points' compile seconds, and
  whether the two stores hold the same numbers.
- ``k-scaling``: the same for the points of ``mvsim experiment k-scaling`` (demo family,
  ``--ks``, the default seeds per k, ``--claims``).
- Both take ``--set FIELD=VALUE`` (repeatable, as ``mvsim sweep --set``) to shrink the
  points (fewer seeds, smaller test sets) where the full ones do not fit the time at hand.
  Both sides compile in their own processes, once per shape, without the persistent cache
  (the local side has none here, so the Dask workers are not given one either).
- ``overhead``: the scheduler's cost per task, from ``--tasks`` empty tasks on the
  LocalCluster, and the store's write rate, from a real point's rows written again and
  again; extrapolated to ``--nodes`` workers.
- ``compile``: a sweep over values that keep every shape (T × flow_rtol × μ on
  ``--preset``), its points one by one in one process as ``mvsim sweep`` runs them, with
  the seconds spent tracing, lowering and compiling read from ``jax.monitoring``. Run it
  with the mvsim to measure: this part imports nothing of mvsim beyond ``sweep`` (so a
  checkout from before the traced values can run it too:
  ``cd /work/wt/base && .venv/bin/python /path/to/benchmarks/executors.py --part compile``).
  ``--cache DIR`` turns on JAX's persistent compilation cache in DIR first, as the CLI
  does by default: run it twice into one fresh DIR for a cold and a warm cache.

Every part is one process and one run, so its two sides share the machine's state.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import jax

GRID = ["mu=0.05,0.1,0.2", "P=16,20,24"]
GRID_FIXED = {"seeds": 8}
COMPILE_GRID = ["T=1500,2000", "flow_rtol=0.5,1.0", "mu=0.05,0.1"]
# The store's columns that say when, where and how long, not what was measured.
HOST_COLUMNS = {"seconds", "timing_json", "peak_rss_bytes", "started_at", "finished_at"}


def _numbers(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as c:
        cols = [r[1] for r in c.execute("PRAGMA table_info(results)")]
        keep = ", ".join(n for n in cols if n not in HOST_COLUMNS)
        return c.execute(f"SELECT {keep} FROM results ORDER BY config_hash, claim").fetchall()


def _idle(stream: list[dict], wall: float) -> dict[str, float]:
    """Each worker's idle share of ``wall`` from Dask's task stream (compute spans)."""
    busy: dict[str, float] = {}
    for t in stream:
        for s in t.get("startstops", ()):
            if s.get("action") == "compute":
                busy[t["worker"]] = busy.get(t["worker"], 0.0) + s["stop"] - s["start"]
    return {w: round(max(0.0, 1 - b / wall), 3) for w, b in sorted(busy.items())}


def compare(points: list, claims: list[str] | None, workers: int, tmp: Path) -> dict[str, Any]:
    """The same points through the local executor, then a LocalCluster of ``workers``."""
    from distributed import Client

    from mvsim import sweep
    from mvsim.cluster import local_cluster

    out: dict[str, Any] = {"points": len(points)}
    stores = {"local": tmp / "local.sqlite", "dask": tmp / "dask.sqlite"}
    quiet = dict(progress=False, log=lambda line: print(line, flush=True))
    t = time.perf_counter()
    s = sweep.run_sweep(points, stores["local"], claims, executor="local", **quiet)
    out["local"] = _side(s, time.perf_counter() - t)
    cluster = local_cluster(workers)
    with Client(cluster) as client:
        client.get_task_stream(start=time.time())  # record from here on
        t = time.perf_counter()
        s = sweep.run_sweep(points, stores["dask"], claims, scheduler=client,
                            compile_cache=False, **quiet)  # fmt: skip
        wall = time.perf_counter() - t
        out["dask"] = _side(s, wall)
        out["dask"]["workers"] = workers
        out["dask"]["idle_share"] = _idle(client.get_task_stream(), wall)
    cluster.close()
    out["same_numbers"] = _numbers(stores["local"]) == _numbers(stores["dask"])
    out["speedup_dask_over_local"] = round(out["local"]["wall_s"] / out["dask"]["wall_s"], 3)
    return out


def _side(s: Any, wall: float) -> dict[str, Any]:
    return {"wall_s": round(wall, 2), "points_per_hour": round(s.computed / wall * 3600, 1),
            "compile_s": round(s.compile_seconds, 2), "failed": s.failed}  # fmt: skip


def grid(workers: int, tmp: Path, fixed: dict[str, Any]) -> dict[str, Any]:
    from mvsim import sweep

    fixed = {**GRID_FIXED, **fixed}
    points = sweep.build_points("demo", fixed, sweep.parse_grid(GRID))
    return {"grid": GRID, "fixed": fixed, "claims": "single,ensemble",
            **compare(points, ["single", "ensemble"], workers, tmp)}  # fmt: skip


def k_scaling(
    ks: list[int], claims: list[str] | None, workers: int, tmp: Path, fixed: dict[str, Any]
) -> dict[str, Any]:
    from mvsim.experiments import k_scaling as ksc

    points = ksc.points(ks, "demo", fixed, claims)
    res = compare(points, claims, workers, tmp)
    return {"ks": ks, "seeds": [p.cfg.verify.seeds for p in points], "fixed": fixed,
            "claims": ",".join(claims) if claims else "all", **res}  # fmt: skip


def _noop(i: int) -> int:
    return i


def overhead(tasks: int, workers: int, nodes: int, tmp: Path) -> dict[str, Any]:
    """Per-task scheduler overhead (empty tasks, submitted as a sweep submits: one by
    one, gathered as they complete) and the store's write rate."""
    from distributed import Client, as_completed

    from mvsim.cluster import local_cluster

    cluster = local_cluster(workers)
    with Client(cluster) as client:
        client.gather([client.submit(_noop, -i, pure=False) for i in range(workers * 4)])
        t = time.perf_counter()
        futs = [client.submit(_noop, i, pure=False, priority=i) for i in range(tasks)]
        for f in as_completed(futs):
            f.result()
        per_task = (time.perf_counter() - t) / tasks
    cluster.close()
    writes = _store_rate(tmp)
    return {
        "tasks": tasks, "workers": workers, "scheduler_s_per_task": per_task,
        "tasks_per_s": 1 / per_task, **writes, "nodes": nodes,
        # A point must take longer than this for the scheduler (one process, whatever the
        # nodes) and the store not to hold the cluster back: each finished point costs the
        # driver one task round trip and one store transaction.
        "min_point_s_for_nodes": nodes * (per_task + 1 / writes["points_per_s"]),
    }  # fmt: skip


def _store_rate(tmp: Path, n: int = 200) -> dict[str, Any]:
    """Points per second the driver writes: a tiny point's real rows (its claims and
    mechanism), stored under n distinct configs, one transaction each (WAL, FULL sync)."""
    from mvsim import store, sweep
    from mvsim.executor import env

    p = sweep.build_points("tiny", {"T": 100, "seeds": 2}, sweep.parse_grid(["mu=0.1"]))[0]
    out = sweep.run_point(p.cfg, ["single", "ensemble"])
    pts = sweep.build_points("tiny", {"T": 100, "seeds": 2},
                             {"sigma_p": [0.01 + 1e-5 * i for i in range(n)]})  # fmt: skip
    conn = store.connect(tmp / "rate.sqlite")
    e = env()
    t = time.perf_counter()
    for q in pts:
        store.write_point(conn, q.cfg, q.values, out["claims"], out["mechanism"],
                          seconds=1.0, timing=out["timing"], started_at=store.utc_now(),
                          env=e, peak_rss_bytes=out["peak_rss_bytes"])  # fmt: skip
    dt = time.perf_counter() - t
    conn.close()
    size = (tmp / "rate.sqlite").stat().st_size
    return {"store_points": n, "points_per_s": n / dt, "bytes_per_point": size / n}


def compile_share(preset: str, fixed: dict[str, Any], grid_items: list[str]) -> dict[str, Any]:
    """A sweep's points one by one in this process; seconds spent compiling, from the
    spans JAX reports (their union: nested traces once)."""
    from mvsim import sweep

    events = ("/jax/core/compile/jaxpr_trace_duration",
              "/jax/core/compile/jaxpr_to_mlir_module_duration",
              "/jax/core/compile/backend_compile_duration")  # fmt: skip
    spans: list[tuple[float, float]] = []
    jax.monitoring.register_event_time_span_listener(
        lambda ev, s, e, **_: spans.append((s, e)) if ev in events else None
    )
    points = sweep.build_points(preset, fixed, sweep.parse_grid(grid_items))
    per_point = []
    t0 = time.perf_counter()
    for p in points:
        spans.clear()
        t = time.perf_counter()
        sweep.run_point(p.cfg, ["single", "ensemble"])
        per_point.append({"values": p.values, "wall_s": round(time.perf_counter() - t, 3),
                          "compile_s": round(_union(spans), 3)})  # fmt: skip
    total = time.perf_counter() - t0
    compiled = sum(q["compile_s"] for q in per_point)
    return {"preset": preset, "fixed": fixed, "grid": grid_items, "points": per_point,
            "wall_s": round(total, 2), "compile_s": round(compiled, 2),
            "compile_share": round(compiled / total, 3)}  # fmt: skip


def _union(spans: list[tuple[float, float]]) -> float:
    # mvsim.compilation.union_seconds, copied: the checkout before the traced values
    # (measured by the compile part) has no mvsim.compilation.
    total, reach = 0.0, float("-inf")
    for s, e in sorted(spans):
        if e > reach:
            total += e - max(s, reach)
            reach = e
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", required=True, choices=("grid", "k-scaling", "overhead", "compile"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ks", default="3,5,10,20")
    ap.add_argument("--claims", default="single,ensemble", help="k-scaling: claims, or 'all'")
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--preset", default="demo", help="compile: the preset")
    ap.add_argument("--seeds", type=int, default=4, help="compile: seeds per point")
    ap.add_argument("--cache", default=None, help="compile: persistent compilation cache dir")
    ap.add_argument("--set", action="append", default=[], help="grid, k-scaling: FIELD=VALUE")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.cache:  # before the first compile, as mvsim.compilation.enable_cache
        jax.config.update("jax_compilation_cache_dir", args.cache)
    tmp = Path(tempfile.mkdtemp(prefix="mvsim-executors-"))
    t = time.perf_counter()
    if args.part in ("grid", "k-scaling"):
        from mvsim.config import parse_set
    if args.part == "grid":
        res = grid(args.workers, tmp, parse_set(args.set))
    elif args.part == "k-scaling":
        claims = None if args.claims == "all" else args.claims.split(",")
        ks = [int(k) for k in args.ks.split(",")]
        res = k_scaling(ks, claims, args.workers, tmp, parse_set(args.set))
    elif args.part == "overhead":
        res = overhead(args.tasks, args.workers, args.nodes, tmp)
    else:
        fixed = {"seeds": args.seeds, "n_test_multi": 20000, "n_test_single": 20000}
        res = compile_share(args.preset, fixed, COMPILE_GRID)
        res["compile_cache"] = args.cache
    import mvsim

    res.update(part=args.part, seconds=round(time.perf_counter() - t, 1),
               mvsim_version=mvsim.__version__, mvsim_path=str(Path(mvsim.__file__).parent),
               jax_version=jax.__version__, backend=jax.default_backend(),
               machine={"processor": platform.processor() or platform.machine(),
                        "cpus": os.cpu_count(), "loadavg_end": list(os.getloadavg())})  # fmt: skip
    from json import dumps

    text = dumps(res, indent=1, default=str)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
