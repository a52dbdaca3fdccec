"""mvsim benchmarks: ``python -m benchmarks.run [--quick] [--out FILE.json] [--only A,B]``.

Sections (``--only`` takes a comma-separated subset; the default is all but the GPU-script
ones, and ``verify`` is left out of ``--quick`` unless named):

- ``efficiency``: the GD step of the real trainer (the jitted chunk function that
  :func:`mvsim.train.train` builds from ``_one_seed_chunk``, vmapped over seeds) at the
  demo (k = 10), k = 20 and theory-k = 10 shapes, one seed and vmapped; its FLOP/s against
  plain ``jnp.matmul`` of the very shapes the compiled step multiplies, and against the
  best large square matmul of the same run. A cross-check times ``train()`` itself (two
  step budgets, per-step cost from the difference, so the per-call compile cancels).
- ``batching``: S seeds vmapped in one call against a Python loop of S single-seed calls
  of the same compiled function (same data, same steps), at a cache-resident size and at
  a memory-bound one (training set several times the last-level cache). Compile excluded
  from both (each shape is warmed up first). Reports what the compiled HLO multiplies.
- ``verify``: ``mvsim.verify.run`` on the demo preset, end to end and per stage, compile
  included, with the verdicts and a FLOP lower bound on its time for this machine.
- ``sweep``: extra verify runs with ``--sweep "mu=0.05"``-style overrides (GPU script).
- ``precision``: verify again under ``--compare-precision`` and say whether verdicts change.
- ``scaling``: time per step against N, P, d and k·m; memory against N·P·d (peak RSS and
  XLA's own buffer analysis); fitted log-log exponents.
- ``ntk``: time and peak memory of ``mvsim.ntk.kernel_matrix`` against N and P.

One module per section (``benchmarks/efficiency.py``, ``batching.py``,
``time_to_verdict.py`` for verify, sweep and precision, ``scaling.py``, ``ntk_memory.py``),
on a shared harness (``harness.py``: settings, machine record, timing; ``step.py``: the
trainer's compiled step; ``hlo.py``) and one report (``report.py``: targets, JSON,
Markdown). This module is the command line and the order of the sections.

Timings are medians over repeats after warm-up, every call blocked with
``jax.block_until_ready``; the spread (min, max, IQR) is kept. Ratios are taken within
one run: an absolute time holds only for the machine and the load it was taken under
(``machine.loadavg_*`` in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.batching import sec_batching
from benchmarks.efficiency import sec_efficiency
from benchmarks.harness import Clock, Settings, machine
from benchmarks.ntk_memory import sec_ntk
from benchmarks.report import SCHEMA_VERSION, render_markdown, summarise, write
from benchmarks.scaling import sec_scaling
from benchmarks.step import sec_peak
from benchmarks.time_to_verdict import sec_precision, sec_sweep, sec_verify
from mvsim.report import json_default

# The values of TrainConfig.matmul_precision.
PRECISIONS = ("highest", "tensorfloat32", "default")
SECTIONS = ("efficiency", "batching", "verify", "sweep", "precision", "scaling", "ntk")
DEFAULT_SECTIONS = ("efficiency", "batching", "scaling", "ntk", "verify")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--quick", action="store_true", help="seconds-long smoke run, tiny sizes")
    ap.add_argument("--out", default=None, help="JSON report (default benchmarks/results.json)")
    ap.add_argument("--only", default=None, help=f"comma-separated subset of {SECTIONS}")
    ap.add_argument("--seeds", default=None, help="batching S values (default 1,4,16,64)")
    ap.add_argument("--verify-k", default="10", help="k values of the time-to-verdict runs")
    ap.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="'FIELD=VALUE ...'",
        help="one extra verify run per item, with these --set overrides (repeatable)",
    )
    ap.add_argument(
        "--precision",
        default=None,
        choices=PRECISIONS,
        help="matmul precision of this run: the config field matmul_precision of every verify "
        "run, and jax_default_matmul_precision for the raw benchmarks; default: the "
        "JAX_DEFAULT_MATMUL_PRECISION environment variable, else the config's default (highest)",
    )
    ap.add_argument(
        "--compare-precision",
        default=None,
        choices=PRECISIONS,
        help="'precision' section: rerun the first verify config at this precision",
    )
    ap.add_argument("--mem-mult", type=float, default=3.0, help="memory-bound size / LLC")
    ap.add_argument("--llc-bytes", type=int, default=None, help="override the detected LLC")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats after warm-up")
    ap.add_argument("--render", default=None, help="print a report's tables as Markdown, exit")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="skip sizes and sections once this many seconds have passed (default 600, "
        "120 with --quick; verify runs are exempt unless --budget-s is given)",
    )
    return ap


def parse_args(argv: list[str] | None) -> Settings:
    ap = _parser()
    a = ap.parse_args(argv)
    if a.only:
        sections = tuple(s.strip() for s in a.only.split(",") if s.strip())
        bad = sorted(set(sections) - set(SECTIONS))
        if bad:
            ap.error(f"--only: unknown section(s) {bad}; known: {list(SECTIONS)}")
    else:
        sections = tuple(s for s in DEFAULT_SECTIONS if not (a.quick and s == "verify"))
    prec = a.precision or os.environ.get("JAX_DEFAULT_MATMUL_PRECISION") or "highest"
    if prec not in PRECISIONS:
        ap.error(f"JAX_DEFAULT_MATMUL_PRECISION={prec!r}: must be one of {PRECISIONS}")
    import jax

    jax.config.update("jax_default_matmul_precision", prec)
    q = a.quick
    seeds = (
        tuple(int(s) for s in a.seeds.split(",")) if a.seeds else ((1, 2) if q else (1, 4, 16, 64))
    )
    if q:
        seeds = tuple(s for s in seeds if s <= 4) or (1, 2)
    return Settings(
        quick=q,
        sections=sections,
        repeats=a.repeats or (3 if q else 5),
        steps=3 if q else 10,
        eff_seeds=2 if q else 10,
        seeds=seeds,
        squares=(256, 512) if q else (1024, 2048),
        mem_mult=a.mem_mult,
        llc_bytes=a.llc_bytes,
        verify_k=tuple(int(k) for k in a.verify_k.split(",")),
        sweep=tuple(a.sweep),
        precision=prec,
        compare_precision=a.compare_precision,
        budget_s=a.budget_s or (120.0 if q else 600.0),
        budget_verify=a.budget_s is not None,
        out=Path(a.out) if a.out else Path(__file__).with_name("results.json"),
        render=a.render,
    )


def main(argv: list[str] | None = None) -> int:
    s = parse_args(argv)
    if s.render:
        print(render_markdown(json.loads(Path(s.render).read_text())))
        return 0
    clock = Clock(s.budget_s)
    rep: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "quick": s.quick,
        "sections_requested": list(s.sections),
        "argv": list(sys.argv[1:] if argv is None else argv),
    }
    rep["machine"] = m = machine(s)
    print(
        f"mvsim benchmarks on {m['cpu_model']} ({m['cpu_affinity']} cores usable), "
        f"backend {m['backend']} [{m['device_kind']}], jax {m['jax']}, precision "
        f"{m['matmul_precision']}, load {m['loadavg_start'][0]:.2f}",
        flush=True,
    )
    write(rep, s.out)
    peak = None
    if {"efficiency", "batching", "verify", "sweep", "precision"} & set(s.sections):
        peak = sec_peak(s)
        rep["peak_matmul"] = peak
        print(f"  best square matmul: {peak['best_gflops']:.1f} GF/s (n={peak['best_n']})")
    timings: dict[str, float] = {}
    for name in s.sections:
        exempt = name in ("verify", "sweep", "precision") and not s.budget_verify
        if clock.left() < 0 and not exempt:
            rep[name] = {"skipped": f"time budget of {s.budget_s:.0f} s spent"}
            continue
        print(f"[{name}]", flush=True)
        t = time.perf_counter()
        rep[name] = run_section(name, s, rep, peak, clock)
        timings[name] = time.perf_counter() - t
        rep["section_wall_s"] = timings
        rep["machine"]["loadavg_end"] = list(os.getloadavg())
        write(rep, s.out)
    rep["targets"] = summarise(rep)
    rep["total_wall_s"] = clock.elapsed()
    rep["machine"]["loadavg_end"] = list(os.getloadavg())
    write(rep, s.out)
    print("targets:")
    for k, v in rep["targets"].items():
        print(f"  {k}: {json.dumps(v, default=json_default)}")
    print(f"wrote {s.out} ({clock.elapsed():.0f} s)")
    return 0


def run_section(
    name: str, s: Settings, rep: dict[str, Any], peak: dict[str, Any] | None, clock: Clock
) -> dict[str, Any]:
    """One section's part of the report. The efficiency section also records, in ``peak``,
    the best matmul of any shape it timed."""
    pk = peak["best_gflops"] if peak else None
    if name == "efficiency":
        out = sec_efficiency(s, peak, clock)
        seen = [m_["gflops"] for e in out["entries"]
                for m_ in e.get("matmul_same_shapes", {}).values()]  # fmt: skip
        peak["best_any_matmul_gflops"] = max([peak["best_gflops"], *seen])
        return out
    if name == "batching":
        return sec_batching(s, peak, rep["machine"]["llc_bytes"], clock)
    if name == "verify":
        return sec_verify(s, pk, clock)
    if name == "sweep":
        return sec_sweep(s, pk, clock)
    if name == "precision":
        return sec_precision(s, pk, rep.get("verify"), clock)
    if name == "scaling":
        return sec_scaling(s, clock)
    return sec_ntk(s, clock)


if __name__ == "__main__":
    sys.exit(main())
