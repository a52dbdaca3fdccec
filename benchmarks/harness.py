"""What every benchmark section stands on: the run's settings and time budget, the machine
record (CPU, caches, memory, backend, versions, git commit, load), and timing and memory
measurement (medians over interleaved rounds, per-round ratios, peak RSS, XLA's buffer
analysis, log-log exponents)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import platform
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# Peak resident memory of a block: the package's own measure, which the sweep store also
# records per point; the sections import it from here.
from mvsim.resources import PeakRSS  # noqa: F401


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
    """The record of where a run's numbers came from (report.json ``machine``)."""
    import jax
    import jaxlib

    caches = cpu_caches()
    backend = jax.default_backend()
    llc, llc_src = _llc(caches, backend, settings.llc_bytes)
    devs = jax.devices()
    try:
        mem_stats = devs[0].memory_stats()
    except Exception:  # noqa: BLE001 - not every backend has it
        mem_stats = None
    commit, dirty = _git()
    cpu = _cpu_model()
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


def _cpu_model() -> str:
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _llc(caches: list[dict[str, Any]], backend: str, override: int | None) -> tuple[int, str]:
    """The last-level cache's size in bytes, and where that number came from."""
    unified = [c for c in caches if c["type"] in ("Unified", "Data")]
    llc = max(unified, key=lambda c: (c["level"], c["bytes"]))["bytes"] if unified else 0
    llc_src = "sysfs /sys/devices/system/cpu/cpu0/cache"
    if not llc:
        llc, llc_src = _lscpu_llc(), "lscpu"
    if backend != "cpu":
        # The working set that matters on an accelerator is its own last-level cache.
        llc, llc_src = 50 * 1024**2, "assumed accelerator L2 = 50 MiB (H100/H200)"
    if override:
        llc, llc_src = override, "--llc-bytes"
    return llc, llc_src


def _git() -> tuple[str | None, bool | None]:
    """(HEAD's commit, whether tracked files differ from it) of this checkout."""
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
        return None, None
    return commit, dirty


# --- timing and memory ----------------------------------------------------------------


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
