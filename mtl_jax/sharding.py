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
"""

from __future__ import annotations

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
    """A ``members`` x ``data`` mesh over ``devices`` (default: every visible device).

    With neither size given every device goes to ``members``; with one given,
    the other takes the remaining factor. ``members * data`` must equal the
    number of devices.

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
    if members * data != count:
        raise ValueError(f"mesh members={members} x data={data} needs {members * data} devices, "
                         f"{count} visible")
    return Mesh(np.asarray(devices).reshape(members, data), AXES)


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
    return jax.device_put(states, _along(mesh, "members"))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Place a batch: batch axis over ``data``, replicated over ``members``.

    Examples:
      >>> import jax, numpy as np
      >>> mesh = make_mesh(devices=jax.devices()[:1])
      >>> shard_batch({"x": np.ones((4, 5))}, mesh)["x"].sharding.spec == PartitionSpec("data")
      True
    """
    check_divisible("batch size", _leading_size(batch), mesh, "data")
    return jax.device_put(batch, _along(mesh, "data"))


def sharded_step(train_step: Callable, mesh: Mesh) -> Callable:
    """``mtl_jax.ensemble.step(train_step, "vmap")`` run over ``mesh``.

    The returned ``(states, batch) -> (states, logs)`` takes states placed by
    :func:`shard_ensemble` (they are donated) and any batch, which it places
    with :func:`shard_batch`; states and logs come back sharded over members.

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
                       out_shardings=(members, members))

    def step(states, batch):
        return compiled(states, shard_batch(batch, mesh))

    return step
