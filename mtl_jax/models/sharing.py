"""Hard and soft parameter sharing over a task axis."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Inputs = jax.Array | Mapping[str, jax.Array]


class HardSharing(nn.Module):
    """A shared trunk feeding per-task heads (Caruana 1997; the seed's model).

    Called with one array, every task reads the same batch (single-input
    setting). Called with ``{task: x_t}``, each task has its own batch
    (multi-input setting, the seed's ``train`` loop): all batches go through the
    trunk together and each task's head sees only its own rows.

    Attributes:
      trunk: module mapping inputs ``[B, ...]`` to a representation ``[B, D]``.
      heads: a :class:`StackedHeads` or :class:`TaskHeads`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from mtl_jax.models import HardSharing, MLPTrunk, StackedHeads
      >>> model = HardSharing(MLPTrunk((32,)), StackedHeads(("a", "b"), 3))
      >>> params = model.init(jax.random.key(0), jnp.ones((5, 8)))
      >>> sorted(model.apply(params, jnp.ones((5, 8))))
      ['a', 'b']
      >>> model.apply(params, jnp.ones((5, 8)), task="b").shape
      (5, 3)
    """

    trunk: nn.Module
    heads: nn.Module

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.heads.names)

    def __call__(self, x: Inputs, task: str | None = None):
        if not isinstance(x, Mapping):
            return self.heads(self.trunk(x), task=task)
        if task is not None:
            raise ValueError("task selection needs one shared input, not a dict")
        names = list(x)
        sizes = [x[name].shape[0] for name in names]
        z = self.trunk(jnp.concatenate([x[name] for name in names]))
        splits = jnp.split(z, list(_cumsum(sizes[:-1])))
        return self.heads(dict(zip(names, splits)))


class SoftSharing(nn.Module):
    """One full tower per task, parameters stacked on a leading task axis.

    The seed's ``TaskNetwork`` per task, evaluated with ``vmap``: every leaf of
    ``params['tower']`` has shape ``[T, ...]``, which is the layout the
    penalties in :mod:`mtl_jax.penalties` tie together. Towers must produce
    outputs of one shape. With ``{task: x_t}`` inputs (all of one shape) each
    tower reads its own task's batch.

    Attributes:
      tower: module mapping ``[B, ...]`` to ``[B, F]``, copied once per task.
      names: task names, in order.

    Examples:
      >>> import flax.linen as nn, jax, jax.numpy as jnp
      >>> from mtl_jax.models import SoftSharing, MLPTrunk
      >>> tower = nn.Sequential([MLPTrunk((16,)), nn.Dense(3)])
      >>> model = SoftSharing(tower, names=("a", "b"))
      >>> params = model.init(jax.random.key(0), jnp.ones((5, 8)))
      >>> params["params"]["tower"]["layers_1"]["kernel"].shape
      (2, 16, 3)
      >>> model.apply(params, jnp.ones((5, 8)), task="a").shape
      (5, 3)
    """

    tower: nn.Module
    names: Sequence[str]

    @nn.compact
    def __call__(self, x: Inputs, task: str | None = None):
        if task is not None and task not in self.names:
            raise KeyError(f"unknown task {task!r}; the towers are {list(self.names)}")
        per_task = isinstance(x, Mapping)
        if per_task:
            if set(x) != set(self.names):
                raise KeyError(f"per-task inputs are for tasks {sorted(x)}, "
                               f"the towers are for {sorted(self.names)}")
            if task is not None:
                raise ValueError("task selection needs one shared input, not a dict")
            shapes = {name: tuple(x[name].shape) for name in self.names}
            if len(set(shapes.values())) > 1:
                raise ValueError(f"SoftSharing needs per-task inputs of one shape, got {shapes}")
            x = jnp.stack([x[name] for name in self.names])
        towers = nn.vmap(
            lambda module, inputs: module(inputs),
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=0 if per_task else None,
            out_axes=0,
            axis_size=len(self.names),
        )
        out = towers(self.tower, x)
        if task is not None:
            return out[list(self.names).index(task)]
        return {name: out[i] for i, name in enumerate(self.names)}


def _cumsum(values: Sequence[int]) -> list[int]:
    total, out = 0, []
    for v in values:
        total += v
        out.append(total)
    return out
