"""``ntk``: time and peak memory of ``mvsim.ntk.kernel_matrix`` against N and P."""

from __future__ import annotations

import math
import time
from typing import Any

from benchmarks.harness import Clock, PeakRSS, Settings, bench, loglog_fit


def sec_ntk(s: Settings, clock: Clock) -> dict[str, Any]:
    import importlib

    import jax

    try:
        ntk = importlib.import_module("mvsim.ntk")
    except ImportError as e:
        return {"skipped": f"mvsim.ntk is not importable ({e})"}
    kernel = getattr(ntk, "kernel_matrix", None)
    if kernel is None:
        return {"skipped": "mvsim.ntk has no kernel_matrix(cfg, x1, x2)"}
    from mvsim.config import make_config

    if s.quick:
        Ns, Ps, N0, P0, d = [8, 16], [4, 8], 8, 4, 32
    else:
        Ns, Ps, N0, P0, d = [64, 128, 256, 512], [4, 8, 16, 32], 128, 16, 200
    cfg = make_config("demo", {"d": d} if d != 200 else {})
    out: dict[str, Any] = {
        "function": "mvsim.ntk.kernel_matrix(cfg, x) -> (N, N)",
        "evaluator": cfg.ntk.ntk_kernel,
        "terms": cfg.ntk.ntk_terms,
        "chunk": cfg.ntk.ntk_chunk,
        "d": d,
        "points": {},
        "note": "peak RSS is the high-water mark over the timed calls minus the RSS before "
        "them; memory the allocator kept from earlier work is reused, so small sizes read ~0",
    }

    done: dict[tuple[int, int], dict[str, Any]] = {}

    def point(N: int, P: int) -> dict[str, Any]:
        if (N, P) in done:
            return done[(N, P)]
        x = jax.random.normal(jax.random.key(N * 1000 + P), (N, P, d)) / math.sqrt(d)
        t = time.perf_counter()
        kernel(cfg, x)  # compiles for this shape
        first = time.perf_counter() - t
        with PeakRSS() as pr:  # the evaluation's own buffers (compile excluded)
            st = bench(lambda: kernel(cfg, x), max(2, s.repeats - 2), warmup=0)
        done[(N, P)] = {"N": N, "P": P, "first_call_s": first, "time_s": st, "rss": pr.as_dict()}
        return done[(N, P)]

    for axis, vals in (("N", Ns), ("P", Ps)):
        pts = []
        for v in vals:
            if clock.left() < 0:
                pts.append({axis: v, "skipped": "time budget spent"})
                continue
            pts.append(point(v, P0) if axis == "N" else point(N0, v))
        ok = [p for p in pts if "time_s" in p]
        out["points"][axis] = pts
        out[f"exponent_time_vs_{axis}"] = loglog_fit(
            [p[axis] for p in ok], [p["time_s"]["median"] for p in ok]
        )
        out[f"exponent_peak_rss_vs_{axis}"] = loglog_fit(
            [p[axis] for p in ok], [p["rss"]["peak_minus_before_bytes"] for p in ok]
        )
    print(
        f"  ntk kernel_matrix: time ~ N^{out.get('exponent_time_vs_N') or float('nan'):.2f}, "
        f"P^{out.get('exponent_time_vs_P') or float('nan'):.2f}",
        flush=True,
    )
    return out
