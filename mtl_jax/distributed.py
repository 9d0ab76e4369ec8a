"""Many processes as one program: JAX's distributed runtime, and who writes what.

Each process (one per host, or several on one machine) runs the same
``mtl-jax train`` command with its own ``--process-id``; after
:func:`initialize` JAX sees every process's devices, the device mesh of
:mod:`mtl_jax.sharding` spans them all, and the compiled step's collectives
cross processes (on CPUs through gloo). Only process 0 writes logs, results
and plots; checkpoints are written by all processes together (orbax), each
its own shards.

Examples:
  >>> settings(None, None, None, environ={})  # nothing asked: one process
  >>> settings("10.0.0.1:1234", 2, 1, environ={})
  {'coordinator_address': '10.0.0.1:1234', 'num_processes': 2, 'process_id': 1}
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
       "process_id": "JAX_PROCESS_ID"}


def settings(coordinator: str | None, num_processes: int | None, process_id: int | None,
             environ: Mapping[str, str] = os.environ) -> dict | None:
    """The arguments of ``jax.distributed.initialize``: flags first, then the environment
    (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``); None when
    neither asks for more than one process. Raises ValueError naming a bad value."""
    given = {"coordinator_address": coordinator, "num_processes": num_processes,
             "process_id": process_id}
    for key, name in ENV.items():
        if given[key] is None and environ.get(name):
            given[key] = environ[name]
    if all(value is None for value in given.values()):
        return None
    missing = [f"--{k.replace('_address', '').replace('_', '-')} (or {ENV[k]})"
               for k, v in given.items() if v is None]
    if missing:
        raise ValueError(f"a multi-process run needs {', '.join(missing)} as well")
    host, sep, port = str(given["coordinator_address"]).rpartition(":")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"coordinator must be HOST:PORT, got {given['coordinator_address']!r}")
    for key in ("num_processes", "process_id"):
        try:
            given[key] = int(given[key])
        except ValueError:
            raise ValueError(f"{key} must be an integer, got {given[key]!r}") from None
    if given["num_processes"] < 1 or not 0 <= given["process_id"] < given["num_processes"]:
        raise ValueError(f"need num_processes >= 1 and 0 <= process_id < num_processes, got "
                         f"{given['num_processes']} and {given['process_id']}")
    return given


def initialize(coordinator_address: str, num_processes: int, process_id: int) -> None:
    """Join the other processes (blocks until all have joined); call before any JAX work.

    On CPUs the cross-process collectives go through gloo.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)


def is_main() -> bool:
    """Whether this is process 0, the one that writes logs, results and plots."""
    return jax.process_index() == 0


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is true on any process (every process gets the same answer)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag]))))


def barrier(name: str) -> None:
    """Wait until every process gets here (a no-op for one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
