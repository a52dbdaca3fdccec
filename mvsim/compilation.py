"""Compiled programs: JAX's persistent compilation cache, and the time spent compiling.

A flow program costs seconds of XLA compile (a diffrax solve: 13 s of the 17 s of a
``tiny`` sweep's first point on 2 cores). Within a process :mod:`mvsim.train` compiles
once per shape (η, T, the stop thresholds and the flow's tolerances are traced); across
processes (a rerun, a restarted sweep, every Dask worker) the persistent cache hands the
executables over from disk. The CLI turns it on by default (:func:`enable_cache`;
``--no-compile-cache`` turns it off): in ``$XDG_CACHE_HOME/mvsim`` (default
``~/.cache/mvsim``), in a folder named after the jax and jaxlib versions and mvsim's
version and source hash (:func:`source_hash`), so a new jax or a changed mvsim never
reads an entry another wrote. (JAX's own key already covers the program, the compiler
and its flags; the folder makes the rule explicit and keeps stale entries apart, to be
deleted by hand.) A user's ``JAX_COMPILATION_CACHE_DIR`` is left as it is. JAX caches no
program that holds a host callback: the flow's solve is traced so that it holds none
(:func:`mvsim.flow.cacheable_checks`), and the progress meter is compiled in only where a
display is live.

:class:`CompileTime` measures the share of a run spent tracing, lowering and compiling
(persistent-cache reads included), from the spans JAX reports through
:mod:`jax.monitoring`; a sweep stores it with each point (``timing_json['compile']``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from pathlib import Path

import jax

# The spans JAX reports for a program it has not run before (jax._src.dispatch): tracing
# to a jaxpr, lowering it, and XLA's compile or the persistent cache's read.
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


@functools.cache
def source_hash() -> str:
    """SHA-256 of mvsim's installed source (every ``.py`` and template, by relative path):
    what the code that produced a result was, beyond its version string."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.suffix in (".py", ".j2") and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def cache_dir() -> Path:
    """The default persistent cache folder of this jax, jaxlib and mvsim (see the module
    docstring)."""
    import jaxlib

    from mvsim import __version__

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    name = f"jax-{jax.__version__}-jaxlib-{jaxlib.__version__}-mvsim-{__version__}"
    return base / "mvsim" / f"{name}-{source_hash()[:12]}"


def enable_cache(enabled: bool = True) -> str | None:
    """Turn on JAX's persistent compilation cache in :func:`cache_dir` (before the first
    compile of the process; a folder set by the user through ``JAX_COMPILATION_CACHE_DIR``
    or ``jax.config`` is kept). ``enabled=False`` leaves JAX as it is. Returns the folder
    in use, or None."""
    current = jax.config.jax_compilation_cache_dir
    if current or not enabled:
        return current or None
    path = cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    return str(path)


_active = threading.local()  # the CompileTime blocks open in this thread, innermost last
_listening = threading.Lock()
_registered: list[bool] = []


def _on_span(event: str, start: float, end: float, **_: object) -> None:
    if event in COMPILE_EVENTS:
        for timer in getattr(_active, "stack", ()):
            timer.spans.append((start, end))


class CompileTime:
    """``with CompileTime() as c: ...`` then ``c.seconds``: the wall time this thread spent
    tracing, lowering and compiling (or reading compiled programs from the persistent
    cache) inside the block, as the union of JAX's spans (a trace nested in another's
    counts once). Other threads' compiles are not counted."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []
        self.seconds = 0.0

    def __enter__(self) -> CompileTime:
        with _listening:
            if not _registered:  # jax.monitoring's listeners are per process
                jax.monitoring.register_event_time_span_listener(_on_span)
                _registered.append(True)
        if not hasattr(_active, "stack"):
            _active.stack = []
        _active.stack.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _active.stack.remove(self)
        self.seconds = union_seconds(self.spans)


def union_seconds(spans: list[tuple[float, float]]) -> float:
    """Total length of the union of [start, end] intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total
