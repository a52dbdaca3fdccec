"""Placing the seed axis on devices: one engine for one CPU, several GPUs, or a pod.

:func:`shard_seeds` puts the leading (seed) axis of a pytree on a 1-D mesh of all LOCAL
devices with a :class:`jax.sharding.NamedSharding`; ``jax.jit`` then runs each device's
seeds where they live (seeds are independent, so no communication is needed beyond the
shared, replicated training data). Nothing changes the math: a sharded run computes the
same per-seed numbers as an unsharded one (tests/test_sweep.py checks this on 4 forced
host devices).

When the seed count does not divide evenly over the devices, the arrays are left where
they are (one device) rather than padded: padding would train phantom seeds, and the
trainer's seed compaction already changes the count as seeds stop.

Multi-host: :func:`initialize_distributed` calls ``jax.distributed.initialize()`` when a
standard cluster environment is present (``JAX_COORDINATOR_ADDRESS``, SLURM with several
tasks, Open MPI); each process then shards over its own local devices and a sweep splits
its points over the processes (:mod:`mvsim.sweep`). Not tested on a multi-host machine.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "seeds"


def seed_mesh() -> Mesh | None:
    """A 1-D mesh over the local devices, or None with a single device."""
    devs = jax.local_devices()
    if len(devs) < 2:
        return None
    return Mesh(np.array(devs), (AXIS,))


def shard_seeds(tree, enabled: bool = True):
    """Shard the leading axis of every leaf over the local devices (replicate nothing).

    Returns ``tree`` unchanged when disabled, with one device, or when the leading axis
    does not divide evenly by the device count (see the module docstring).
    """
    return shard_axis(tree, 0) if _splits(tree, 0, enabled) else tree


def model_axis(state, enabled: bool = True) -> int | None:
    """Which leading axis of a (points, seeds, ...) pytree to split over the local
    devices: 0 when the point count divides evenly by the device count, else 1 when the
    seed count does, else None (one device, or no even split: see the module docstring)."""
    return next((axis for axis in (0, 1) if _splits(state, axis, enabled)), None)


def _splits(tree, axis: int, enabled: bool) -> bool:
    """Whether ``axis`` of every leaf divides evenly over several local devices."""
    mesh = seed_mesh() if enabled else None
    leaves = jax.tree.leaves(tree)
    if mesh is None or not leaves:
        return False
    n = mesh.devices.size
    return all(np.ndim(a) > axis and np.shape(a)[axis] % n == 0 for a in leaves)


def shard_axis(tree, axis: int):
    """Split ``axis`` of every leaf of ``tree`` over the local devices (None stays None)."""
    mesh = seed_mesh()
    if mesh is None or tree is None:
        return tree
    spec = PartitionSpec(*([None] * axis), AXIS)
    return jax.device_put(tree, NamedSharding(mesh, spec))


def replicate(tree, enabled: bool = True):
    """Place ``tree`` whole on every local device (data shared by all seeds)."""
    mesh = seed_mesh() if enabled else None
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def _cluster_env() -> bool:
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and env.get("SLURM_JOB_ID"):
        return True
    return int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1


def initialize_distributed() -> bool:
    """``jax.distributed.initialize()`` if a multi-process environment is detected.

    Must run before any other JAX call of the process. Returns whether it initialised.
    """
    if not _cluster_env():
        return False
    jax.distributed.initialize()
    return True
