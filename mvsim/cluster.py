"""A sweep's points as tasks of a Dask distributed cluster (``--executor dask``).

:class:`DaskExecutor` submits every batch of points as one task (:func:`mvsim.executor.run_task`)
and yields the outcomes as they complete; :func:`mvsim.sweep.run_sweep` stores them.
:func:`local_cluster` is the cluster of one machine: one worker process per device, or
per group of CPU cores, each with one thread (JAX keeps its own threads inside it). A
real cluster (SLURM through dask-jobqueue, several GPU boxes, Kubernetes) is reached
through its scheduler's address: docs/sweeps.md.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from distributed import Client, LocalCluster, as_completed
from distributed.diagnostics.plugin import WorkerPlugin

from mvsim.config import ConfigError
from mvsim.executor import (
    Outcome,
    WorkerMismatch,
    check_fingerprint,
    fingerprint,
    run_task,
    worker_info,
)


@dataclass
class DaskExecutor:
    """Batches as tasks of ``client`` (see :mod:`mvsim.executor`), the costliest first.
    ``owns_client``: close the client with the executor; ``cluster``: a cluster started for
    this sweep, closed with it. ``compile_cache``: workers turn on the persistent
    compilation cache before their first task."""

    client: Client
    owns_client: bool = False
    cluster: Any = None
    compile_cache: bool = True
    expected: dict[str, str] = field(default_factory=fingerprint)

    name = "dask"

    def __post_init__(self) -> None:
        self._pending: dict[Any, tuple[list, str]] = {}
        self._done = as_completed()

    def check_workers(self, log: Any = print) -> str:
        """Wait for a first worker, then compare every worker's fingerprint with the
        driver's: :class:`~mvsim.executor.WorkerMismatch` before any point runs. Returns
        the workers' JAX backend ('cpu' unless one has an accelerator). (A worker that
        joins later is checked by its first task.)"""
        if not self.client.scheduler_info()["workers"]:
            log(f"sweep: waiting for a first worker at {self.client.scheduler.address}")
            self.client.wait_for_workers(1)
        info = self.client.run(worker_info)
        for who, got in sorted(info.items()):
            check_fingerprint(self.expected, got["fingerprint"], who)
        backends = {got["backend"] for got in info.values()}
        return "cpu" if backends == {"cpu"} else sorted(backends - {"cpu"})[0]

    def submit(self, batch: list, claims: Sequence[str], cost: float = 0.0) -> None:
        from mvsim.store import utc_now

        key = f"mvsim-point-{batch[0][0].hash[:12]}-{uuid.uuid4().hex[:8]}"
        fut = self.client.submit(run_task, [p.cfg for p, _ in batch], list(claims),
                                 self.expected, self.compile_cache, key=key, pure=False,
                                 priority=int(cost))  # fmt: skip
        self._pending[fut] = (batch, utc_now())
        self._done.add(fut)

    def outcomes(self) -> Iterator[Outcome]:
        """Each task's outcome as it completes (tasks submitted meanwhile included)."""
        for fut in self._done:
            batch, submitted = self._pending.pop(fut)
            try:
                r = fut.result()
            except WorkerMismatch:
                raise
            except Exception as e:  # KilledWorker: the workers running it died too often
                r = {"outs": None, "env": {}, "worker": "?", "error": _task_error(e),
                     "started_at": submitted}  # fmt: skip
            yield Outcome(batch, r["outs"], r["error"], r["env"], r["worker"], r["started_at"])

    def describe(self) -> str:
        n = len(self.client.scheduler_info()["workers"])
        where = "a local cluster" if self.cluster is not None else "the cluster"
        return f"dask, {where} at {self.client.scheduler.address} ({n} workers)"

    def close(self) -> None:
        for fut in list(self._pending):
            fut.cancel()
        self._pending.clear()
        if self.owns_client:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _task_error(e: Exception) -> str:
    text = f"{type(e).__name__}: {e}"
    if type(e).__name__ == "KilledWorker":
        text += " (each worker that ran this point died: out of memory, or killed)"
    return text


@functools.cache
def local_devices() -> tuple[str, int]:
    """(backend, local device count) that a fresh process of this environment would see:
    asked of a subprocess, so that this one (the driver) leaves the accelerators to the
    workers; ('cpu', usable cores) without asking where JAX can only use the CPU."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = int(cores or 1)
    if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu" or not _has_accelerator():
        return "cpu", cores
    probe = "import jax; print(jax.default_backend(), jax.local_device_count())"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=300).stdout.split()  # fmt: skip
    return (out[-2], int(out[-1])) if out[-2] != "cpu" else ("cpu", cores)


def _has_accelerator() -> bool:
    """Whether a JAX plugin for a GPU or TPU is installed (``jax_plugins.*``, libtpu)."""
    import importlib.util
    import pkgutil

    try:
        import jax_plugins
    except ImportError:
        return importlib.util.find_spec("libtpu") is not None
    return any(True for _ in pkgutil.iter_modules(jax_plugins.__path__)) or (
        importlib.util.find_spec("libtpu") is not None
    )


def local_cluster(workers: int | None = None) -> LocalCluster:
    """A ``LocalCluster`` of worker processes with one thread each: on a GPU machine one
    per device (default all; each sees its own alone), on the CPU ``workers`` (default: one
    per core), each pinned to its own group of cores/workers cores (:class:`PinWorkers`;
    more workers than cores share them)."""
    backend, n_dev = local_devices()
    n = workers or n_dev
    if backend != "cpu" and n > n_dev:
        raise ConfigError("--workers", n, f"at most one per device: this machine has {n_dev}")
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True)
    with Client(cluster) as c:
        c.register_plugin(PinWorkers(backend, n), name="mvsim-pin")
    return cluster


class PinWorkers(WorkerPlugin):
    """Worker i of a :func:`local_cluster` (its name there) sees device i alone (GPU), or
    runs on the i-th of ``n_workers`` equal groups of the cores (CPU): set before JAX
    starts its backend in the worker, so that JAX sizes its thread pools to the group.
    Restarted workers get it again."""

    def __init__(self, backend: str, n_workers: int) -> None:
        self.backend, self.n_workers = backend, n_workers

    def setup(self, worker: Any) -> None:
        i = int(worker.name) % self.n_workers
        if self.backend != "cpu":
            os.environ["CUDA_VISIBLE_DEVICES"] = str(i)
        elif hasattr(os, "sched_setaffinity"):
            cores = sorted(os.sched_getaffinity(0))
            size = max(1, len(cores) // self.n_workers)
            group = {cores[(i * size + j) % len(cores)] for j in range(size)}  # wraps
            for tid in os.listdir("/proc/self/task"):  # every thread, not only this one
                try:
                    os.sched_setaffinity(int(tid), group)
                except OSError:  # a thread that ended meanwhile
                    pass
