"""Where a sweep's points run: in this process, or as tasks on a Dask cluster.

:func:`mvsim.sweep.run_sweep` hands batches of points (:func:`mvsim.sweep.batches`: one
point, or several that share compiled code) to an executor and stores each point as its
result comes back; the store is written by the driver alone.

- ``local`` (:class:`LocalExecutor`): one batch after another in this process.
- ``dask`` (:class:`mvsim.cluster.DaskExecutor`): every batch is one task of a Dask distributed
  cluster, submitted at once, the costliest first (:func:`mvsim.sweep.point_cost`), so
  that the scheduler balances points of unequal cost over the workers. A worker that
  dies mid-task has its task retried on another (Dask's ``allowed-failures``, default 3,
  before the task counts as failed). Workers never open the store, so nothing depends on
  a network file system's locking. The cluster is the one at ``scheduler`` (an address,
  or ``MVSIM_SCHEDULER``), else a :func:`mvsim.cluster.local_cluster` started for the
  sweep and closed after it.

Every task runs :func:`run_task`: it refuses to run on a worker whose mvsim (version or
source), jax or config-hash code differs from the driver's (:func:`fingerprint`), since
mixed versions would mix results under one key, and it returns a point that raised as a
failed outcome with its error text instead of raising, so that the sweep goes on. The
driver checks every worker's fingerprint before it submits anything
(:meth:`mvsim.cluster.DaskExecutor.check_workers`).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import traceback
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mvsim.config import Config, ConfigError

EXECUTORS = ("local", "dask")
SCHEDULER_ENV = "MVSIM_SCHEDULER"


class WorkerMismatch(RuntimeError):
    """A worker runs another mvsim, jax or config-hash code than the driver."""


def fingerprint() -> dict[str, str]:
    """What must match between the driver and a worker for their results to share keys:
    mvsim's version and source hash, jax's and jaxlib's versions, and the hash of the
    code that keys a point (:func:`mvsim.store.config_hash`, the fields it omits, the
    default config)."""
    import jax
    import jaxlib

    import mvsim
    from mvsim import store
    from mvsim.compilation import source_hash

    keying = [inspect.getsource(f) for f in (store.config_hash, store._canonical)]
    keying += [repr(store.KEY_OMITS_AT_DEFAULT), store._canonical(Config().to_dict())]
    return {
        "mvsim": mvsim.__version__,
        "mvsim source": source_hash(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "config-hash code": hashlib.sha256("\0".join(keying).encode()).hexdigest(),
    }


def worker_info() -> dict[str, Any]:
    """This process's :func:`fingerprint` and JAX backend (asked of every Dask worker
    before a sweep submits anything)."""
    import jax

    return {"fingerprint": fingerprint(), "backend": jax.default_backend()}


def check_fingerprint(expected: Mapping[str, str], got: Mapping[str, str], who: str) -> None:
    """Raise :class:`WorkerMismatch` naming what differs between the driver's fingerprint
    ``expected`` and worker ``who``'s ``got``."""
    diff = [f"{k} {got.get(k)!r} (driver: {v!r})" for k, v in expected.items() if got.get(k) != v]
    if diff:
        raise WorkerMismatch(
            f"worker {who} refused: it runs {', '.join(diff)}; mixed versions would mix "
            "results under one key. Install the driver's mvsim, jax and jaxlib on every "
            "worker (the same checkout, or the same wheel), then rerun: nothing was stored "
            "from that worker"
        )


def env() -> dict[str, Any]:
    """The versions and devices of this process, stored with each point it computes."""
    import jax

    from mvsim import __version__

    return {
        "mvsim_version": __version__,
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "n_devices": jax.device_count(),
    }


def run_task(
    cfgs: Sequence[Config],
    claims: Sequence[str],
    expected: Mapping[str, str] | None = None,
    compile_cache: bool = False,
    progress: bool | str = False,
) -> dict[str, Any]:
    """One task: :func:`mvsim.sweep.run_points` on a batch, in this process. Returns
    ``{'outs': [per point] | None, 'error': text | None, 'env': env(), 'worker': ...,
    'started_at': ...}``;
    a batch that raised comes back with its error text (a failed outcome), except a
    :class:`WorkerMismatch` against ``expected`` (the driver's :func:`fingerprint`), which
    is raised before anything runs. ``compile_cache``: turn on the persistent compilation
    cache first (:func:`mvsim.compilation.enable_cache`). ``progress``: the points' stage
    display (:mod:`mvsim.progress`; the local executor's, under the sweep's bar)."""
    from mvsim import compilation, sweep
    from mvsim.store import utc_now

    worker, started = _worker_name(), utc_now()
    if expected is not None:
        check_fingerprint(expected, fingerprint(), worker)
    compilation.enable_cache(compile_cache)
    try:
        outs, error = sweep.run_points(cfgs, claims, progress), None
    except Exception as e:  # any failure of the points themselves is a result to store
        outs, error = None, "".join(traceback.format_exception_only(e)).strip()
    return {"outs": outs, "error": error, "env": env(), "worker": worker, "started_at": started}


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):  # not inside a Dask worker
        return "local"


@dataclass
class Outcome:
    """What came back for one submitted batch: its per-point results, or its error."""

    batch: list  # [(Point, missing claims)] as submitted
    outs: list[dict[str, Any]] | None
    error: str | None
    env: dict[str, Any]
    worker: str
    started_at: str  # when it started (a worker's clock), else when it was submitted


class LocalExecutor:
    """Batches run one after another in this process, in the order submitted."""

    name = "local"

    def __init__(self, progress: bool | str = False) -> None:
        self._queue: deque = deque()
        self.progress = progress

    def submit(self, batch: list, claims: Sequence[str], cost: float = 0.0) -> None:
        self._queue.append((batch, list(claims)))

    def outcomes(self) -> Iterator[Outcome]:
        while self._queue:
            batch, claims = self._queue.popleft()
            r = run_task([p.cfg for p, _ in batch], claims, progress=self.progress)
            yield Outcome(batch, r["outs"], r["error"], r["env"], r["worker"], r["started_at"])

    def describe(self) -> str:
        return "local (this process)"

    def close(self) -> None:
        self._queue.clear()


def scheduler_address(scheduler: str | None) -> str | None:
    """The scheduler to use: ``scheduler``, else ``$MVSIM_SCHEDULER``, else None."""
    return scheduler or os.environ.get(SCHEDULER_ENV) or None


def resolve_executor(executor: str | None, scheduler: str | None) -> str:
    """'local' or 'dask': ``executor`` as given (an address with 'local' is a ConfigError
    naming ``--scheduler``), else 'dask' when a scheduler address is given or in
    ``$MVSIM_SCHEDULER``, else 'local'."""
    if executor is None:
        return "dask" if scheduler_address(scheduler) else "local"
    if executor not in EXECUTORS:
        raise ConfigError("--executor", executor, f"must be one of {list(EXECUTORS)}")
    if executor == "local" and scheduler:
        raise ConfigError("--scheduler", scheduler, "needs --executor dask (or leave it out)")
    return executor


def start(
    executor: str | None = None,
    scheduler: str | Any | None = None,
    *,
    workers: int | None = None,
    compile_cache: bool = True,
    progress: bool | str = False,
) -> Any:
    """An executor: :class:`LocalExecutor`, or a :class:`mvsim.cluster.DaskExecutor` on
    ``scheduler`` (a ``distributed.Client``, left open, or an address; ``$MVSIM_SCHEDULER``
    too), else on a new :func:`mvsim.cluster.local_cluster` of ``workers`` processes,
    closed with the executor. ``compile_cache``: Dask workers use the persistent
    compilation cache. ``progress``: the local executor's stage display. The executor kind
    follows :func:`resolve_executor`."""
    if scheduler is not None and not isinstance(scheduler, str):  # a distributed.Client
        from mvsim.cluster import DaskExecutor

        return DaskExecutor(scheduler, compile_cache=compile_cache)
    kind = resolve_executor(executor, scheduler)
    if workers is not None and workers < 1:
        raise ConfigError("--workers", workers, "must be ≥ 1")
    if kind == "local":
        if workers is not None:
            raise ConfigError("--workers", workers, "applies to --executor dask only")
        return LocalExecutor(progress)
    from distributed import Client

    from mvsim.cluster import DaskExecutor, local_cluster

    address = scheduler_address(scheduler)
    if address is not None:
        if workers is not None:
            raise ConfigError("--workers", workers, "sizes the local cluster only; a "
                              "cluster at --scheduler has the workers it was given")  # fmt: skip
        return DaskExecutor(Client(address), owns_client=True, compile_cache=compile_cache)
    cluster = local_cluster(workers)
    return DaskExecutor(Client(cluster), owns_client=True, cluster=cluster,
                        compile_cache=compile_cache)  # fmt: skip
