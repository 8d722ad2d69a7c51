"""Several processes as one JAX runtime: TPU pod workers, GPU hosts, or CPU processes on one machine.

:func:`initialize` wraps ``jax.distributed.initialize``. On a TPU pod (or a SLURM / Open MPI GPU
cluster) every argument is found in the environment, so every worker runs the same command. On
CPU (tests, a laptop) it also sets the simulated device count and the gloo collectives, which
cross-process CPU computations need. After it, ``jax.devices()`` lists every process's devices,
a mesh spans them all, each process feeds only its rows of a batch
(:func:`sortedjax.sharding.host_batch`), orbax writes checkpoints collectively, and process 0
alone writes logs and results (:func:`is_main`).
"""

from __future__ import annotations

import jax
import numpy as np

import sortedjax.sharding as sharding


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    cpu_devices: int | None = None,
) -> None:
    """Join the job. ``coordinator``: ``"host:port"`` of process 0 (``None``: from the environment).

    ``cpu_devices``: simulated CPU devices for this process (CPU only; must run before any JAX work).
    """

    if sharding.backends_started():
        raise ValueError(
            "initialize() must run before any JAX computation (the backends are already started); "
            "call it first thing in the program"
        )
    given = [x is not None for x in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError(
            f"give coordinator, num_processes and process_id together or none of them (all from the "
            f"environment); got coordinator={coordinator!r}, num_processes={num_processes!r}, process_id={process_id!r}"
        )
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in 0..{num_processes - 1}, got {process_id}")
    if cpu_devices is not None:
        if cpu_devices < 1:
            raise ValueError(f"cpu_devices must be >= 1, got {cpu_devices}")
        jax.config.update("jax_num_cpu_devices", cpu_devices)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only the CPU backend reads it
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)


def is_main() -> bool:
    """Process 0: the one that writes logs, results, figures and exported models."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """A barrier of every process (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def gather(tree):
    """Every leaf as a whole numpy array on every process (sharded arrays are all-gathered)."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, jax.device_get(tree))
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
