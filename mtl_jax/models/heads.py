"""Task heads: homogeneous heads stacked on a task axis, or a dict of modules.

A head module maps a representation to per-task outputs. It accepts either one
shared representation ``[B, D]`` (every task reads the same input) or a dict
``{task: [B_t, D]}`` (each task has its own input stream), and returns a dict
``{task: output}``; with ``task="name"`` it evaluates that task's head only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Representation = jax.Array | Mapping[str, jax.Array]


def _check_task(task: str | None, names: Sequence[str]) -> None:
    if task is not None and task not in names:
        raise KeyError(f"unknown task {task!r}; the heads know {list(names)}")


class StackedHeads(nn.Module):
    """One linear head per task, all kernels stacked on a leading task axis.

    Every task's output comes from one batched contraction
    (``einsum('bd,tdf->tbf')``), with no loop over tasks. Parameters:
    ``kernel [T, D, F]`` and ``bias [T, F]``.

    Attributes:
      names: task names, in order; ``T = len(names)``.
      features: output width of every head (classes, or regression targets).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> heads = StackedHeads(names=("left", "right"), features=10)
      >>> params = heads.init(jax.random.key(0), jnp.ones((4, 16)))
      >>> params["params"]["kernel"].shape
      (2, 16, 10)
      >>> {k: v.shape for k, v in heads.apply(params, jnp.ones((4, 16))).items()}
      {'left': (4, 10), 'right': (4, 10)}
    """

    names: Sequence[str]
    features: int
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal(
        batch_axis=(0,))

    @nn.compact
    def __call__(self, z: Representation, task: str | None = None):
        _check_task(task, self.names)
        shared = not isinstance(z, Mapping)
        dim = z.shape[-1] if shared else next(iter(z.values())).shape[-1]
        kernel = self.param("kernel", self.kernel_init,
                            (len(self.names), dim, self.features))
        bias = self.param("bias", nn.initializers.zeros,
                          (len(self.names), self.features))
        if task is not None:
            if not shared:
                raise ValueError("task selection needs one shared input, not a dict")
            i = list(self.names).index(task)
            return z @ kernel[i] + bias[i]
        if shared:
            out = jnp.einsum("bd,tdf->tbf", z, kernel) + bias[:, None]
            return {name: out[i] for i, name in enumerate(self.names)}
        _check_names(z, self.names)
        if len({z[name].shape for name in self.names}) == 1:
            stacked = jnp.stack([z[name] for name in self.names])
            out = jnp.einsum("tbd,tdf->tbf", stacked, kernel) + bias[:, None]
            return {name: out[i] for i, name in enumerate(self.names)}
        return {name: z[name] @ kernel[i] + bias[i]
                for i, name in enumerate(self.names)}


class TaskHeads(nn.Module):
    """Heterogeneous heads: a mapping from task name to any flax module.

    Attributes:
      heads: ``{task: module}``, e.g. a 10-way classifier beside a regressor.

    Examples:
      >>> import flax.linen as nn, jax, jax.numpy as jnp
      >>> heads = TaskHeads({"digit": nn.Dense(10), "size": nn.Dense(1)})
      >>> params = heads.init(jax.random.key(0), jnp.ones((4, 16)))
      >>> {k: v.shape for k, v in heads.apply(params, jnp.ones((4, 16))).items()}
      {'digit': (4, 10), 'size': (4, 1)}
    """

    heads: Mapping[str, nn.Module]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.heads)

    @nn.compact
    def __call__(self, z: Representation, task: str | None = None):
        _check_task(task, self.names)
        if task is not None:
            if isinstance(z, Mapping):
                raise ValueError("task selection needs one shared input, not a dict")
            return self.heads[task](z)
        if isinstance(z, Mapping):
            _check_names(z, self.names)
            return {name: head(z[name]) for name, head in self.heads.items()}
        return {name: head(z) for name, head in self.heads.items()}


def _check_names(z: Mapping[str, jax.Array], names: Sequence[str]) -> None:
    if set(z) != set(names):
        raise KeyError(
            f"per-task inputs are for tasks {sorted(z)}, the heads are for {sorted(names)}")
