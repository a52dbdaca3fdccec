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

Timings are medians over repeats after warm-up, every call blocked with
``jax.block_until_ready``; the spread (min, max, IQR) is kept. Ratios are taken within
one run: an absolute time holds only for the machine and the load it was taken under
(``machine.loadavg_*`` in the JSON).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mvsim.report import json_default, write_json

# The values of TrainConfig.matmul_precision.
PRECISIONS = ("highest", "tensorfloat32", "default")
SECTIONS = ("efficiency", "batching", "verify", "sweep", "precision", "scaling", "ntk")
DEFAULT_SECTIONS = ("efficiency", "batching", "scaling", "ntk", "verify")
SCHEMA_VERSION = 1
TARGETS = {
    "step_vs_same_shape_matmul": 0.70,
    "batching_speedup_S16_cpu_memory_bound": 4.0,
    "batching_speedup_S256_gpu": 30.0,
    "time_to_verdict_demo_s": 60.0,
}

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


# --- settings -------------------------------------------------------------------------


@dataclasses.dataclass
class Settings:
    quick: bool
    sections: tuple[str, ...]
    repeats: int
    steps: int  # GD steps per timed chunk call
    eff_seeds: int  # S of the vmapped efficiency entries
    seeds: tuple[int, ...]  # batching S values
    squares: tuple[int, ...]
    mem_mult: float  # memory-bound size: training set = mem_mult × LLC
    llc_bytes: int | None  # override the detected last-level cache
    verify_k: tuple[int, ...]
    sweep: tuple[str, ...]
    precision: str  # TrainConfig.matmul_precision of every verify run, and JAX's default
    compare_precision: str | None
    budget_s: float
    budget_verify: bool  # does the budget also stop verify runs (only when --budget-s given)
    out: Path
    render: str | None = None


def parse_args(argv: list[str] | None) -> Settings:
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


# --- machine --------------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _size_bytes(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([KMG]?)i?B?", text.strip(), re.I)
    if not m:
        return 0
    return int(m.group(1)) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[m.group(2).upper()]


def cpu_caches() -> list[dict[str, Any]]:
    """cpu0's caches from sysfs (level, type, bytes, sharing CPUs)."""
    out = []
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for d in sorted(base.glob("index*")) if base.exists() else []:
        size = _read(str(d / "size"))
        if size:
            out.append(
                {
                    "level": int(_read(str(d / "level")) or 0),
                    "type": _read(str(d / "type")),
                    "bytes": _size_bytes(size),
                    "shared_cpu_list": _read(str(d / "shared_cpu_list")),
                }
            )
    return out


def _lscpu_llc() -> int:
    try:
        txt = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    best = 0
    for line in txt.splitlines():
        m = re.match(r"\s*L(\d) cache:\s*([\d.]+)\s*([KMG]i?B)", line)
        if m:
            unit = m.group(3)[0].upper()
            best = max(best, int(float(m.group(2)) * {"K": 1024, "M": 1024**2, "G": 1024**3}[unit]))
    return best


def meminfo() -> dict[str, int]:
    out = {}
    for line in (_read("/proc/meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        if key in ("MemTotal", "MemAvailable"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def machine(settings: Settings) -> dict[str, Any]:
    import jax
    import jaxlib

    cpu = "unknown"
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    if cpu == "unknown":
        cpu = platform.processor() or platform.machine()
    caches = cpu_caches()
    unified = [c for c in caches if c["type"] in ("Unified", "Data")]
    llc = max(unified, key=lambda c: (c["level"], c["bytes"]))["bytes"] if unified else 0
    llc_src = "sysfs /sys/devices/system/cpu/cpu0/cache"
    if not llc:
        llc, llc_src = _lscpu_llc(), "lscpu"
    backend = jax.default_backend()
    if backend != "cpu":
        # The working set that matters on an accelerator is its own last-level cache.
        llc, llc_src = 50 * 1024**2, "assumed accelerator L2 = 50 MiB (H100/H200)"
    if settings.llc_bytes:
        llc, llc_src = settings.llc_bytes, "--llc-bytes"
    devs = jax.devices()
    try:
        mem_stats = devs[0].memory_stats()
    except Exception:  # noqa: BLE001 - not every backend has it
        mem_stats = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
                cwd=Path(__file__).parent,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    import optax

    return {
        "date_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "caches": caches,
        "llc_bytes": llc,
        "llc_source": llc_src,
        "memory": meminfo(),
        "backend": backend,
        "devices": [str(d) for d in devs],
        "device_kind": devs[0].device_kind,
        "device_memory_stats": mem_stats,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "optax": optax.__version__,
        "matmul_precision": jax.config.jax_default_matmul_precision or "default",
        "env": {
            k: os.environ.get(k)
            for k in ("JAX_PLATFORMS", "XLA_FLAGS", "JAX_DEFAULT_MATMUL_PRECISION")
        },
        "git_commit": commit,
        "git_dirty_tracked": dirty,
        "loadavg_start": list(os.getloadavg()),
    }


# --- timing and memory helpers -------------------------------------------------------


def stats(ts: list[float]) -> dict[str, Any]:
    a = np.asarray(ts, float)
    q25, q75 = np.percentile(a, [25, 75])
    med = float(np.median(a))
    return {
        "median": med,
        "min": float(a.min()),
        "max": float(a.max()),
        "iqr": float(q75 - q25),
        "rel_spread": float((a.max() - a.min()) / med) if med > 0 else None,
        "n": len(ts),
    }


def bench(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict[str, Any]:
    """Median and spread of ``fn()`` (which must block) over repeats after warm-up."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return stats(ts)


def bench_rounds(
    fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1
) -> tuple[dict[str, dict[str, Any]], dict[str, list[float]]]:
    """Time several blocking callables in interleaved rounds (a, b, c, a, b, c, ...), so a
    change in the machine's load hits all of them alike and their ratios stay fair.
    Returns (stats per name, the raw per-round times per name)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    ts: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            ts[k].append(time.perf_counter() - t)
    return {k: stats(v) for k, v in ts.items()}, ts


def ratio_stats(num: list[float], den: list[float]) -> dict[str, Any]:
    """Median and range of a per-round ratio num[r] / den[r]."""
    r = [a / b for a, b in zip(num, den, strict=True)]
    return {"median": float(np.median(r)), "min": float(min(r)), "max": float(max(r))}


def _status_kb(field: str) -> int | None:
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


class PeakRSS:
    """Peak resident memory of a block: resets the kernel's high-water mark (Linux
    ``/proc/self/clear_refs`` = 5) and reads VmHWM after; falls back to ru_maxrss."""

    def __enter__(self) -> PeakRSS:
        self.reset = False
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.reset = True
        except OSError:
            pass
        self.before = _status_kb("VmRSS") or 0
        return self

    def __exit__(self, *exc: Any) -> None:
        hwm = _status_kb("VmHWM") if self.reset else None
        self.peak = hwm or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.delta = max(0, self.peak - self.before)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rss_before_bytes": self.before,
            "peak_rss_bytes": self.peak,
            "peak_minus_before_bytes": self.delta,
            "method": "VmHWM after clear_refs" if self.reset else "ru_maxrss (never reset)",
        }


def memory_analysis(compiled: Any) -> dict[str, int] | None:
    """XLA's own account of a compiled program's buffers (any backend)."""
    try:
        ma = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return None
    if ma is None:
        return None
    keys = (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "temp_size_in_bytes",
        "alias_size_in_bytes",
        "generated_code_size_in_bytes",
    )
    out = {k: int(getattr(ma, k)) for k in keys if hasattr(ma, k)}
    out["total_bytes"] = sum(
        out.get(k, 0)
        for k in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes")
    ) - out.get("alias_size_in_bytes", 0)
    return out


def loglog_fit(xs: list[float], ys: list[float]) -> float | None:
    """Slope of log y against log x (least squares): the scaling exponent."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if x and y and x > 0 and y > 0]
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        return None
    lx, ly = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(lx, ly, 1)[0])


class Clock:
    """The run's time budget: sections and sizes past it are skipped, with a note."""

    def __init__(self, budget_s: float) -> None:
        self.t0 = time.perf_counter()
        self.budget = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget - self.elapsed()


# --- HLO inspection -------------------------------------------------------------------

# "%name = f32[9920,400]{1,0} op(...)"; a tuple result "(f32[...], s8[...])" gives its first.
_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\(?(\w+)\[([\d,]*)\]")
_OPERAND = re.compile(r"(?:(\w+)\[([\d,]*)\](?:\{[^}]*\})?\s+)?%([\w.\-]+)")


def _dims(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def hlo_matmuls(text: str) -> list[dict[str, Any]]:
    """Every dot (and cuBLAS/oneDNN gemm custom call) of a compiled HLO module: output
    shape, operand shapes and FLOPs (2 · output size · contracted size; None when the
    operands' shapes are not printed)."""
    shapes: dict[str, tuple[int, ...]] = {}
    found = []
    for line in text.splitlines():
        m = _DEF.match(line)
        if not m:
            continue
        name, _, dims = m.groups()
        shapes[name] = _dims(dims)
        is_dot = " dot(" in line
        is_gemm = "custom-call(" in line and re.search(r"gemm|matmul", line, re.I)
        if not (is_dot or is_gemm):
            continue
        call = re.search(r"(?:dot|custom-call)\((.*?)\)", line)
        ops = []
        for dt, odims, oname in _OPERAND.findall(call.group(1) if call else ""):
            ops.append(_dims(odims) if dt else shapes.get(oname))
        entry: dict[str, Any] = {
            "kind": "dot" if is_dot else "gemm_custom_call",
            "out": list(shapes[name]),
            "operands": [list(o) if o else None for o in ops],
        }
        lc = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
        if is_dot and lc and ops and ops[0] is not None:
            contracted = math.prod(ops[0][i] for i in _dims(lc.group(1)))
            entry["flops"] = 2 * math.prod(shapes[name]) * contracted
        elif all(o is not None and len(o) == 2 for o in ops[:2]) and len(shapes[name]) == 2:
            # a plain (m, k)·(k, n) gemm call: k² = |lhs|·|rhs| / |out|
            k = math.isqrt(math.prod(ops[0]) * math.prod(ops[1]) // math.prod(shapes[name]))
            entry["flops"] = 2 * math.prod(shapes[name]) * k
        else:
            entry["flops"] = None
        found.append(entry)
    return found


def hlo_summary(text: str, S: int, km: int, NP: int) -> dict[str, Any]:
    """Do the seeds share one matmul? (a dot whose output has a dimension S·k·m), and the
    large transposes/copies the step pays for around it."""
    mms = hlo_matmuls(text)
    big = NP * S * km
    n_transpose = sum(
        1
        for line in text.splitlines()
        if re.search(r"= \w+\[[\d,]*\]\{[^}]*\} (transpose|copy)\(", line)
        and (m := _DEF.match(line))
        and math.prod(_dims(m.group(3))) >= big
    )
    fused = any(S * km in e["out"] for e in mms) if S > 1 else True
    per_seed_dots = sum(
        1 for e in mms if S > 1 and e["out"] and e["out"][0] == S and km in e["out"]
    )
    return {
        "matmuls": mms,
        "flops_per_step_from_hlo": sum(e["flops"] or 0 for e in mms),
        "seeds_fused_into_one_matmul": bool(fused),
        "batched_per_seed_dots": per_seed_dots,
        "large_transposes_or_copies": n_transpose,
        "n_fusions": text.count(" fusion("),
    }


# --- the trainer's own compiled step ----------------------------------------------------


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
        from mvsim.train import _one_seed_chunk, _State, cross_entropy
    except ImportError as e:  # the private names moved: say so rather than time a copy
        raise RuntimeError(f"mvsim.train no longer exposes the chunk step ({e})") from e
    opt = optax.sgd(tcfg.eta)
    T = 2**30

    def chunk_fn(state, x, y, teacher, V):
        one = lambda s, t: _one_seed_chunk(
            s,
            x,
            y,
            t,
            V,
            apply_fn=net.apply,
            objective=cross_entropy,
            opt=opt,
            cfg=tcfg,
            T=T,
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


def _shape(cfg: Any, S: int, N: int | None = None) -> dict[str, int]:
    D = cfg.data
    return {"k": D.k, "m": cfg.model.m, "N": N or D.N, "P": D.P, "d": D.d, "S": S}


def _flops_issue(sh: dict[str, int]) -> int:
    """The issue's count: forward + two backward matmuls, 2·N·P·d·k·m each, per seed."""
    return 3 * 2 * sh["N"] * sh["P"] * sh["d"] * sh["k"] * sh["m"] * sh["S"]


def _flops_executed(sh: dict[str, int]) -> int:
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
        cfg, net, x, y, V = problem(preset, ov)
        for S in (1, s.eff_seeds):
            if clock.left() < 0:
                out.append({"name": name, "S": S, "skipped": "time budget spent"})
                continue
            sh = _shape(cfg, S)
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
            mm_rounds = [a + b for a, b in zip(raw["forward"], raw["weight_grad"], strict=True)]
            loop_rounds = [t / s.steps for t in raw["matmul_only_loop"]]
            step_rounds = [t / s.steps for t in raw["step"]]
            g_issue = _flops_issue(sh) / step / 1e9
            g_exec = _flops_executed(sh) / step / 1e9
            g_fwd = mm_out["forward"]["gflops"]
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
                    "issue_convention_3_matmuls": _flops_issue(sh),
                    "executed_2_matmuls": _flops_executed(sh),
                    "from_compiled_hlo": hlo["flops_per_step_from_hlo"],
                },
                "gflops_step_issue_convention": g_issue,
                "gflops_step_executed": g_exec,
                "matmul_same_shapes": mm_out,
                "ratios": {
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
                },
                "matmul_only_loop_step_s": st["matmul_only_loop"]["median"] / s.steps,
                "time_breakdown_s": {"matmuls_alone": t_mm, "rest_of_step": step - t_mm},
                "hlo": hlo,
                "loadavg": list(os.getloadavg()),
            }
            if name == "demo_k10" and not (s.quick and S > 1):
                e["train_path"] = train_path(net, cfg.train, x, y, V, S, step, s, clock)
            out.append(e)
            r = e["ratios"]
            print(
                f"  {name:11s} S={S:<3d} step {step * 1e3:8.2f} ms  "
                f"{g_exec:6.1f} GF/s executed ({g_issue:6.1f} by the 3-matmul count)  "
                f"step/same-matmuls {r['step_vs_same_shape_matmuls']:.2f} "
                f"(/matmul-only loop {r['step_vs_matmul_only_loop']:.2f})  "
                f"step/peak {r['step_executed_vs_peak']:.2f}  "
                f"seeds fused: {hlo['seeds_fused_into_one_matmul']}",
                flush=True,
            )
    return {"peak": peak, "entries": out}


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


def sec_batching(s: Settings, peak: dict[str, Any], llc: int, clock: Clock) -> dict[str, Any]:
    import jax

    base_N = 120 if s.quick else 620
    cfg0, net, x0, y0, V = problem("demo", {"N": base_N})
    D = cfg0.data
    row_bytes = D.P * D.d * 4
    tile_mem = max(2, math.ceil(s.mem_mult * llc / (base_N * row_bytes)))
    sizes = [("cache_resident", 1)]
    sizes.append(("memory_bound", tile_mem))
    mem_avail = meminfo().get("MemAvailable")
    dev_limit = None
    if jax.default_backend() != "cpu":
        dev_limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    limit = 0.45 * (dev_limit or mem_avail or 8 * 1024**3)
    result: dict[str, Any] = {
        "method": "S seeds vmapped in ONE call of the trainer's compiled chunk function, "
        "against a Python loop of S calls of the S = 1 compiled function (each blocked), "
        "same data, same steps; compile excluded from both (warm-up call first)",
        "llc_bytes": llc,
        "memory_limit_bytes": limit,
        "sizes": {},
    }
    for label, tile in sizes:
        N = base_N * tile
        sz: dict[str, Any] = {"N": N, "x_bytes": N * row_bytes, "x_over_llc": N * row_bytes / llc}
        if label == "memory_bound" and s.quick:
            sz["skipped"] = "--quick: the memory-bound size takes minutes"
            result["sizes"][label] = sz
            continue
        x = jax.numpy.tile(x0, (tile, 1, 1)) if tile > 1 else x0
        y = jax.numpy.tile(y0, tile) if tile > 1 else y0
        x = jax.block_until_ready(x)
        # On a CPU the memory-bound step takes a good fraction of a second: one step per
        # call there; on a GPU, enough steps per call that dispatch does not dominate.
        on_cpu = jax.default_backend() == "cpu"
        n_steps = s.steps if not on_cpu else (1 if label == "memory_bound" else min(s.steps, 5))
        reps = 2 if (label == "memory_bound" and on_cpu) else s.repeats
        sh1 = _shape(cfg0, 1, N)
        NP, km = N * D.P, D.k * cfg0.model.m
        f1, init_state = trainer_chunk(net, cfg0.train, n_steps)
        params = jax.vmap(net.init)(jax.random.split(jax.random.key(5), max(s.seeds)))
        states1 = [init_state(params[i : i + 1]) for i in range(max(s.seeds))]
        c1 = f1.lower(states1[0], x, y, None, V).compile()

        def one(i: int, c1=c1, states1=states1, x=x, y=y) -> Any:
            return jax.block_until_ready(c1(states1[i], x, y, None, V))

        # The single seed and the best square matmul in the same rounds, so that their
        # ratio (the most batching can buy) is not skewed by a change in the machine's load.
        nsq = peak["best_n"]
        st1, _ = bench_rounds({"single": lambda one=one: one(0),
                               "square": prepare_matmul(nsq, nsq, nsq)}, reps)  # fmt: skip
        t1 = st1["single"]["median"]
        sq_gflops = 2 * nsq**3 / st1["square"]["median"] / 1e9
        sz["single_seed_step_s"] = t1 / n_steps
        sz["single_seed_gflops_executed"] = _flops_executed(sh1) * n_steps / t1 / 1e9
        sz["square_matmul_gflops_same_rounds"] = sq_gflops
        sz["single_seed_vs_peak"] = sz["single_seed_gflops_executed"] / sq_gflops
        # The most batching can buy: a batched step running at the square matmul's rate,
        # against the single seed's achieved rate.
        sz["speedup_ceiling_if_compute_bound"] = 1 / sz["single_seed_vs_peak"]
        sz["x_read_gbytes_per_s"] = 2 * N * row_bytes * n_steps / t1 / 1e9  # fwd + grad pass
        sz["steps_per_call"] = n_steps
        rows = []
        for S in s.seeds:
            row: dict[str, Any] = {"S": S}
            est = S * t1 * (1 + reps) * 2 * 1.3
            if S == 1:
                cS, stS = c1, states1[0]
            else:
                fS, init_S = trainer_chunk(net, cfg0.train, n_steps)
                stS = init_S(params[:S])
                cS = fS.lower(stS, x, y, None, V).compile()
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
                rows.append(row)
                print(f"  {label:14s} S={S:<4d} skipped: {row['skipped']}", flush=True)
                continue
            fns = {
                "vmapped": lambda cS=cS, stS=stS, x=x, y=y: jax.block_until_ready(
                    cS(stS, x, y, None, V)
                ),
                "loop": lambda S=S, one=one: [one(i) for i in range(S)],
            }
            what_if = label == "memory_bound" and S == 16 and not s.quick
            if what_if:
                block = max(b for b in range(1, 161) if N % b == 0)
                bcfg = dataclasses.replace(cfg0.train, block=block)
                fns["what_if_blocked"] = prepare_chunk(net, bcfg, x, y, V, S, n_steps)[0]
            st, raw = bench_rounds(fns, reps)
            vm, loop = st["vmapped"], st["loop"]
            sp = ratio_stats(raw["loop"], raw["vmapped"])
            if what_if:
                row["what_if_blocked_feature_major"] = {
                    "what": "the trainer with TrainConfig.block = block_samples (the GD "
                    "step over blocks of samples: lax.map + jax.checkpoint)",
                    "block_samples": block,
                    "vmapped_s": st["what_if_blocked"],
                    "speedup_loop_over_it": ratio_stats(raw["loop"], raw["what_if_blocked"])[
                        "median"
                    ],
                    "speedup_vs_current_vmapped": ratio_stats(
                        raw["vmapped"], raw["what_if_blocked"]
                    )["median"],
                }
            shS = _shape(cfg0, S, N)
            row.update(
                {
                    "vmapped_s": vm,
                    "loop_s": loop,
                    "speedup_loop_over_vmapped": sp["median"],
                    "speedup_range": sp,
                    "vmapped_gflops_executed": _flops_executed(shS) * n_steps / vm["median"] / 1e9,
                    "loop_gflops_executed": _flops_executed(shS) * n_steps / loop["median"] / 1e9,
                    "hlo": {k: v for k, v in hlo_summary(cS.as_text(), S, km, NP).items()},
                    "loadavg": list(os.getloadavg()),
                }
            )
            rows.append(row)
            print(
                f"  {label:14s} S={S:<4d} loop {loop['median']:8.3f} s  vmapped "
                f"{vm['median']:8.3f} s  speedup {row['speedup_loop_over_vmapped']:5.2f}x  "
                f"({row['vmapped_gflops_executed']:.0f} vs {row['loop_gflops_executed']:.0f}"
                f" GF/s)  fused: {row['hlo']['seeds_fused_into_one_matmul']}",
                flush=True,
            )
            if what_if:
                w = row["what_if_blocked_feature_major"]
                print(
                    f"  {'':14s}        trainer with block = {w['block_samples']}: vmapped "
                    f"{w['vmapped_s']['median']:8.3f} s, speedup over the loop "
                    f"{w['speedup_loop_over_it']:.2f}x",
                    flush=True,
                )
        sz["rows"] = rows
        result["sizes"][label] = sz
        del x, y
    return result


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


def _exponents(fits: dict[str, float | None]) -> str:
    """'N: 0.98, P: 0.68, ...' (n/a where a fit had too few points)."""
    return ", ".join(f"{a}: {e:.2f}" if e is not None else f"{a}: n/a" for a, e in fits.items())


def sec_scaling(s: Settings, clock: Clock) -> dict[str, Any]:
    import jax

    if s.quick:
        base = {"k": 4, "m": 2, "N": 40, "P": 8, "d": 32, "max_noisy": 6}
        axes = {"N": [40, 80], "P": [4, 8], "d": [32, 64], "m": [1, 2]}
        mem_N = [40, 80]
    else:
        base = {"k": 10, "m": 4, "N": 310, "P": 16, "d": 200, "max_noisy": 14}
        axes = {
            "N": [155, 310, 1240, 4960],
            "P": [4, 8, 16, 32],
            "d": [50, 100, 200, 400, 800],
            "m": [1, 2, 4, 8],
        }
        mem_N = [620, 2480, 9920, 39680]
    out: dict[str, Any] = {
        "base": base,
        "data": "Gaussian patches at the data's noise scale",
        "seeds": 1,
        "time_per_step": {},
        "exponents_time": {},
    }
    cache: dict[tuple, Any] = {}

    def compiled_for(ov: dict[str, Any], n_steps: int):
        """(cfg, net, compiled chunk, state, V, x-shape): compiled from abstract shapes, so
        nothing of the size is allocated before a memory measurement starts."""
        ov = dict(base, **ov)
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

    def make_x(cfg: Any):
        D = cfg.data
        kx, ky = jax.random.split(jax.random.key(1))
        x = jax.random.normal(kx, (D.N, D.P, D.d)) * D.sigma_n
        y = jax.random.randint(ky, (D.N,), 0, D.k, dtype=jax.numpy.int32)
        return jax.block_until_ready(x), y

    for axis, values in axes.items():
        pts = []
        for v in values:
            if clock.left() < 0:
                pts.append({axis: v, "skipped": "time budget spent"})
                continue
            cfg, c, state, V = compiled_for({axis: v}, s.steps)
            x, y = make_x(cfg)
            st = bench(
                lambda c=c, state=state, x=x, y=y, V=V: jax.block_until_ready(
                    c(state, x, y, None, V)
                ),
                s.repeats,
            )
            km = cfg.data.k * cfg.model.m
            pts.append(
                {
                    axis: v,
                    "k_m": km,
                    "step_time_s": st["median"] / s.steps,
                    "spread_rel": st["rel_spread"],
                }
            )
        xs = [p.get("k_m") if axis == "m" else p[axis] for p in pts if "step_time_s" in p]
        ys = [p["step_time_s"] for p in pts if "step_time_s" in p]
        name = "k*m" if axis == "m" else axis
        out["time_per_step"][name] = pts
        out["exponents_time"][name] = loglog_fit(xs, ys)
    mem_pts = []
    for N in mem_N:
        if clock.left() < 0:
            mem_pts.append({"N": N, "skipped": "time budget spent"})
            continue
        cfg, c, state, V = compiled_for({"N": N}, s.steps)
        x, y = make_x(cfg)
        with PeakRSS() as pr:  # one chunk's buffers beyond the resident data set
            t = time.perf_counter()
            jax.block_until_ready(c(state, x, y, None, V))
            step = (time.perf_counter() - t) / s.steps
        del x, y
        D = cfg.data
        mem_pts.append(
            {
                "N": N,
                "NPd": N * D.P * D.d,
                "x_bytes": N * D.P * D.d * 4,
                "data_plus_run_peak_bytes": N * D.P * D.d * 4 + pr.delta,
                "rss": pr.as_dict(),
                "xla_memory": memory_analysis(c),
                "step_time_s_single_call": step,
            }
        )
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


# --- targets and report -----------------------------------------------------------------


def summarise(rep: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets against the measured ratios of this run."""
    out: dict[str, Any] = {}
    eff = rep.get("efficiency", {}).get("entries", [])
    t_eff = TARGETS["step_vs_same_shape_matmul"]
    for key, what in (
        ("step_vs_same_shape_matmuls", "plain jnp.matmul calls of the step's two matmul shapes"),
        ("step_vs_matmul_only_loop", "the same two matmuls alone in a compiled lax.scan"),
    ):
        vals = {
            f"{e['name']}_S{e['shape']['S']}": e["ratios"][key]
            for e in eff
            if "ratios" in e and key in e["ratios"]
        }
        if vals:
            out[f"step_vs_same_shape_matmul ({key})"] = {
                "target": t_eff,
                "reference": what,
                "measured": vals,
                "met": {k: v >= t_eff for k, v in vals.items()},
            }
    bat = rep.get("batching", {}).get("sizes", {})
    gpu = rep.get("machine", {}).get("backend") not in (None, "cpu")
    for label, sz in bat.items():
        for row in sz.get("rows", []):
            if "speedup_loop_over_vmapped" not in row:
                continue
            S, sp = row["S"], row["speedup_loop_over_vmapped"]
            if not gpu and S == 16 and label == "memory_bound":
                t = TARGETS["batching_speedup_S16_cpu_memory_bound"]
                out["batching_S16_memory_bound"] = {"target": t, "measured": sp, "met": sp >= t}
            if gpu and S == 256:
                t = TARGETS["batching_speedup_S256_gpu"]
                out[f"batching_S256_{label}"] = {"target": t, "measured": sp, "met": sp >= t}
    for r in rep.get("verify", {}).get("runs", []):
        if "total_s" in r and r["preset"] == "demo" and r["k"] == 10:
            t = TARGETS["time_to_verdict_demo_s"]
            out["time_to_verdict_demo"] = {
                "target_s": t,
                "measured_s": r["total_s"],
                "met": r["total_s"] <= t,
                "flop_lower_bound_s": r["lower_bound_s_at_peak"],
            }
    return out


def _f(v: Any, fmt: str = ".2f") -> str:
    return "–" if v is None else format(v, fmt)


def render_markdown(rep: dict[str, Any]) -> str:
    """Tables of a report (``--render FILE.json``), for benchmarks/RESULTS.md."""
    m = rep["machine"]
    lines = [
        f"Machine: {m['cpu_model']}, {m['cpu_affinity']} cores usable, LLC "
        f"{m['llc_bytes'] / 2**20:.0f} MiB, backend {m['backend']} ({m['device_kind']}), "
        f"jax {m['jax']}, matmul precision {m['matmul_precision']}; {m['date_utc']}; load "
        f"average {m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end.",
        "",
    ]
    pk = rep.get("peak_matmul")
    if pk:
        sq = ", ".join(f"{r['shape'][0]}²: {r['gflops']:.0f}" for r in pk["squares"])
        lines += [f"Square matmuls (GFLOP/s): {sq}; best matmul of any shape in the run: "
                  f"{_f(pk.get('best_any_matmul_gflops'), '.0f')} GFLOP/s.", ""]  # fmt: skip
    eff = rep.get("efficiency", {}).get("entries", [])
    if eff:
        lines += [
            "| shape | S | step ms | GFLOP/s executed (2 matmuls) | GFLOP/s, issue's 3-matmul "
            "count | step / plain same-shape matmuls (range) | step / same matmuls in a "
            "compiled loop | step / square peak |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for e in eff:
            if "ratios" not in e:
                continue
            r = e["ratios"]
            lines.append(
                f"| {e['name']} | {e['shape']['S']} | {e['step_time_s'] * 1e3:.2f} | "
                f"{e['gflops_step_executed']:.0f} | {e['gflops_step_issue_convention']:.0f} | "
                f"**{r['step_vs_same_shape_matmuls']:.2f}** "
                f"({r['step_vs_same_shape_matmuls_range']['min']:.2f}–"
                f"{r['step_vs_same_shape_matmuls_range']['max']:.2f}) | "
                f"**{r['step_vs_matmul_only_loop']:.2f}** | "
                f"{r['step_executed_vs_peak']:.2f} |"
            )
        lines.append("")
    bat = rep.get("batching", {}).get("sizes", {})
    if bat:
        lines += ["| size | X / LLC | S | loop s | vmapped s | speedup (loop / vmapped) | "
                  "vmapped GFLOP/s |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for label, sz in bat.items():
            for row in sz.get("rows", [{"S": "–", "skipped": sz.get("skipped")}]):
                if "skipped" in row:
                    lines.append(f"| {label} | {sz['x_over_llc']:.2f} | {row['S']} | "
                                 f"skipped: {row['skipped']} | | | |")  # fmt: skip
                    continue
                lines.append(
                    f"| {label} | {sz['x_over_llc']:.2f} | {row['S']} | "
                    f"{row['loop_s']['median']:.3f} | {row['vmapped_s']['median']:.3f} | "
                    f"**{row['speedup_loop_over_vmapped']:.2f}×** | "
                    f"{row['vmapped_gflops_executed']:.0f} |"
                )
        lines.append("")
    for sec in ("verify", "sweep"):
        runs = rep.get(sec, {}).get("runs", [])
        if not runs:
            continue
        lines += ["| run | total s | stages s | FLOP lower bound s | verdicts |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for r in runs:
            tag = f"{sec} k={r.get('k', '')} {r.get('set', '')}".strip()
            if "total_s" not in r:
                lines.append(f"| {tag} | skipped: {r.get('skipped')} | | | |")
                continue
            st = ", ".join(f"{k} {v:.0f}" for k, v in r["stages_s"].items())
            vd = ", ".join(f"{k}: {v}" for k, v in r["verdicts"].items())
            lines.append(f"| {tag} | **{r['total_s']:.0f}** | {st} | "
                         f"{_f(r['lower_bound_s_at_peak'], '.0f')} | {vd} |")  # fmt: skip
        lines.append("")
    sc = rep.get("scaling")
    if sc and "exponents_time" in sc:
        et = ", ".join(f"{k}: {_f(v)}" for k, v in sc["exponents_time"].items())
        em = ", ".join(f"{k}: {_f(v)}" for k, v in sc["exponents_memory_vs_NPd"].items())
        lines += [f"Scaling exponents, time per step vs {et}. Memory vs N·P·d: {em}.", ""]
    nt = rep.get("ntk")
    if nt:
        if "skipped" in nt:
            lines += [f"NTK: skipped ({nt['skipped']}).", ""]
        else:
            lines += [f"NTK kernel_matrix: time ∝ N^{_f(nt.get('exponent_time_vs_N'))}, "
                      f"P^{_f(nt.get('exponent_time_vs_P'))}.", ""]  # fmt: skip
    return "\n".join(lines)


def write(rep: dict[str, Any], path: Path) -> None:
    # The report's atomic writer (temp file, fsync, rename) and its numpy-aware encoder.
    write_json(path, rep)


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
        pk = peak["best_gflops"] if peak else None
        if name == "efficiency":
            rep[name] = sec_efficiency(s, peak, clock)
            seen = [m_["gflops"] for e in rep[name]["entries"]
                    for m_ in e.get("matmul_same_shapes", {}).values()]  # fmt: skip
            peak["best_any_matmul_gflops"] = max([peak["best_gflops"], *seen])
        elif name == "batching":
            rep[name] = sec_batching(s, peak, m["llc_bytes"], clock)
        elif name == "verify":
            rep[name] = sec_verify(s, pk, clock)
        elif name == "sweep":
            rep[name] = sec_sweep(s, pk, clock)
        elif name == "precision":
            rep[name] = sec_precision(s, pk, rep.get("verify"), clock)
        elif name == "scaling":
            rep[name] = sec_scaling(s, clock)
        elif name == "ntk":
            rep[name] = sec_ntk(s, clock)
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


if __name__ == "__main__":
    sys.exit(main())
