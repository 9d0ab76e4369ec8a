"""Ensembles over many devices: a ``members`` x ``data`` device mesh.

An ensemble (:mod:`mtl_jax.ensemble`) is a train state with a leading member
axis. On a 2-d :class:`jax.sharding.Mesh` with axes ``("members", "data")``:

* :func:`shard_ensemble` splits that member axis over ``members`` and
  replicates it over ``data`` (every member's parameters live whole on each
  device of its row);
* :func:`shard_batch` splits the batch axis over ``data`` and replicates it
  over ``members``;
* :func:`sharded_step` runs the ensemble's ``"vmap"`` step, unchanged, jitted
  with those shardings. XLA's SPMD partitioner inserts the all-reduce that
  makes the gradient the mean over the whole batch (data parallelism), so the
  result equals the single-device step up to the order of float sums.

On a CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (set before
JAX starts) simulates 8 devices.

The same functions serve many processes (hosts, :mod:`mtl_jax.distributed`):
the mesh then spans every process's devices, arrays are global
(``jax.make_array_from_callback``: each process builds only the shards on its
own devices, and :class:`ShardedSource` reads only its own rows of each batch),
and what the host needs back (logs, evaluation sums) comes replicated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mtl_jax import ensemble

AXES = ("members", "data")


def parse_mesh(text: str) -> tuple[int, int]:
    """``"members=M,data=D"`` (either part optional, default 1) → ``(M, D)``.

    Examples:
      >>> parse_mesh("members=4,data=2")
      (4, 2)
      >>> parse_mesh("data=8")
      (1, 8)
    """
    sizes = dict.fromkeys(AXES, 1)
    seen = set()
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in AXES or name in seen or not value.strip().isdigit():
            raise ValueError(f"bad mesh {text!r}: expected comma-separated members=M and/or "
                             f"data=D with positive integers, e.g. members=4,data=2")
        seen.add(name)
        sizes[name] = int(value)
    if min(sizes.values()) < 1:
        raise ValueError(f"bad mesh {text!r}: axis sizes must be >= 1")
    return sizes["members"], sizes["data"]


def make_mesh(members: int | None = None, data: int | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``members`` x ``data`` mesh over the first ``members * data`` of ``devices``
    (default: every visible device).

    With neither size given every device goes to ``members``; with one given,
    the other takes the remaining factor. ``members=1, data=1`` is one device.

    Examples:
      >>> import jax
      >>> mesh = make_mesh(devices=jax.devices()[:1])
      >>> dict(mesh.shape)
      {'members': 1, 'data': 1}
    """
    devices = list(jax.devices() if devices is None else devices)
    count = len(devices)
    for name, size in (("members", members), ("data", data)):
        if size is not None and size < 1:
            raise ValueError(f"mesh {name} must be >= 1, got {size}")
    if members is None:
        members = max(count // (data or 1), 1)
    if data is None:
        data = max(count // members, 1)
    if members * data > count:
        raise ValueError(f"mesh members={members} x data={data} needs {members * data} devices, "
                         f"{count} visible")
    return Mesh(np.asarray(devices[:members * data]).reshape(members, data), AXES)


def default_mesh(members: int, batch_size: int) -> Mesh | None:
    """The mesh a run uses when none is asked for: None (one device) when a single device
    is visible; otherwise members split over as many devices as divide their number, and
    each batch over as many of the rest as divide the batch size.

    With several processes the mesh must hold every device; a run whose sizes do not
    allow that is refused with the sizes that would.

    Examples:
      >>> default_mesh(members=6, batch_size=128) is None  # one CPU device
      True
    """
    count = jax.device_count()
    if count == 1:
        return None
    rows = math.gcd(members, count)
    columns = math.gcd(batch_size, count // rows)
    if rows * columns < count and jax.process_count() > 1:
        raise ValueError(f"{jax.process_count()} processes with {count} devices need a mesh "
                         f"over all of them: make the ensemble members ({members}) times the "
                         f"batch size ({batch_size}) divisible by {count}, or pass --mesh")
    return None if rows * columns == 1 else make_mesh(rows, columns)


def _along(mesh: Mesh, axis: str) -> NamedSharding:
    """Leading array axis split over mesh ``axis``, everything else replicated."""
    return NamedSharding(mesh, PartitionSpec(axis))


def check_divisible(what: str, size: int, mesh: Mesh, axis: str) -> None:
    """Raise ValueError unless ``size`` splits evenly over the mesh ``axis``.

    Examples:
      >>> import jax
      >>> check_divisible("ensemble members", 3, make_mesh(devices=jax.devices()[:1]), "members")
    """
    if size % mesh.shape[axis]:
        raise ValueError(f"{what} ({size}) must be divisible by the mesh's {axis} axis "
                         f"({mesh.shape[axis]})")


def _leading_size(tree: Any) -> int:
    return int(np.shape(jax.tree_util.tree_leaves(tree)[0])[0])


def _global(tree: Any, sharding: NamedSharding) -> Any:
    """Host arrays (equal on every process) as global arrays; each process fills its shards."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def place(x):
        if hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(place(jax.random.key_data(x)),
                                            impl=jax.random.key_impl(x))
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree_util.tree_map(place, tree)


def shard_ensemble(states: Any, mesh: Mesh) -> Any:
    """Place an ensemble: member axis over ``members``, replicated over ``data``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> mesh = make_mesh(devices=jax.devices()[:1])
      >>> states = shard_ensemble({"w": jnp.zeros((3, 2))}, mesh)
      >>> states["w"].sharding.spec == PartitionSpec("members")
      True
    """
    check_divisible("ensemble members", _leading_size(states), mesh, "members")
    return _global(states, _along(mesh, "members"))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Place a batch: batch axis over ``data``, replicated over ``members``.

    Examples:
      >>> import jax, numpy as np
      >>> mesh = make_mesh(devices=jax.devices()[:1])
      >>> shard_batch({"x": np.ones((4, 5))}, mesh)["x"].sharding.spec == PartitionSpec("data")
      True
    """
    check_divisible("batch size", _leading_size(batch), mesh, "data")
    sharding = _along(mesh, "data")
    if all(isinstance(x, jax.Array) and x.sharding == sharding
           for x in jax.tree_util.tree_leaves(batch)):
        return batch  # placed already (ShardedSource)
    return _global(batch, sharding)


class ShardedSource:
    """A data source whose batches come split over the mesh's ``data`` axis.

    For a :class:`~mtl_jax.data.Dataset` each process gathers only the rows of
    the batch that its own devices hold; other sources build the batch on the
    host and place it.

    Examples:
      >>> import jax, numpy as np
      >>> from mtl_jax.data import Dataset
      >>> data = Dataset(np.arange(12.0).reshape(6, 1, 1, 2), {"a": np.arange(6)}, "toy")
      >>> source = ShardedSource(data, make_mesh(devices=jax.devices()[:1]))
      >>> bool((np.asarray(source.batch(0, 4, 0)["x"]) == data.batch(0, 4, 0)["x"]).all())
      True
    """

    def __init__(self, source: Any, mesh: Mesh):
        self.source, self.mesh = source, mesh

    def batch(self, step: int, batch_size: int, seed: int) -> Any:
        check_divisible("batch size", batch_size, self.mesh, "data")
        if not hasattr(self.source, "batch_indices"):
            return shard_batch(self.source.batch(step, batch_size, seed), self.mesh)
        rows = self.source.batch_indices(step, batch_size, seed)
        sharding = _along(self.mesh, "data")

        def read(array):
            return jax.make_array_from_callback(
                (batch_size, *array.shape[1:]), sharding, lambda index: array[rows[index[0]]])

        return jax.tree_util.tree_map(read, {"x": self.source.x, "y": self.source.y})


def sharded_step(train_step: Callable, mesh: Mesh) -> Callable:
    """``mtl_jax.ensemble.step(train_step, "vmap")`` run over ``mesh``.

    The returned ``(states, batch) -> (states, logs)`` takes states placed by
    :func:`shard_ensemble` (they are donated) and any batch, which it places
    with :func:`shard_batch`; states come back sharded over members, the logs
    replicated (every process can read them).

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> from mtl_jax import models, tasks as mt, make_train_step
      >>> model = models.HardSharing(models.MLPTrunk((8,)), models.StackedHeads(("a", "b"), 3))
      >>> tasks = mt.Tasks([mt.classification("a", 3), mt.classification("b", 3)])
      >>> batch = {"x": jnp.ones((4, 5)), "y": {"a": jnp.zeros(4, int), "b": jnp.ones(4, int)}}
      >>> mesh = make_mesh(devices=jax.devices()[:1])
      >>> states = shard_ensemble(ensemble.init(model, tasks, jax.random.split(
      ...     jax.random.key(0), 2), batch, optax.sgd(0.1)), mesh)
      >>> step = sharded_step(make_train_step(model, tasks, optax.sgd(0.1)), mesh)
      >>> states, logs = step(states, batch)
      >>> logs["task_losses"].shape
      (2, 2)
    """
    members = _along(mesh, "members")
    compiled = jax.jit(ensemble.step(train_step, "vmap"), donate_argnums=0,
                       in_shardings=(members, _along(mesh, "data")),
                       out_shardings=(members, NamedSharding(mesh, PartitionSpec())))

    def step(states, batch):
        return compiled(states, shard_batch(batch, mesh))

    return step


def sharded_eval(eval_step: Callable, mesh: Mesh) -> Callable:
    """``eval_step(params, batch, task=None)`` over an ensemble placed on ``mesh``.

    Members stay where :func:`shard_ensemble` put them; the batch and the
    per-member results are replicated, so every process reads the results.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> mesh = make_mesh(devices=jax.devices()[:1])
      >>> f = sharded_eval(lambda w, x: {"sum": (w * x).sum()}, mesh)
      >>> f(shard_ensemble(jnp.ones((2, 3)), mesh), jnp.arange(3.0))["sum"].tolist()
      [3.0, 3.0]
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    lifted = jax.jit(ensemble.lift(eval_step, "vmap", static_argnames="task"),
                     static_argnames="task", out_shardings=replicated)

    def evaluate(params, batch, **kwargs):
        return lifted(params, _global(batch, replicated), **kwargs)

    return evaluate
