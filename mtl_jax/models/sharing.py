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

    The seed's ``TaskNetwork`` per task: every leaf of ``params['tower']`` has
    shape ``[T, ...]``, which is the layout the penalties in
    :mod:`mtl_jax.penalties` tie together. Towers must produce outputs of one
    shape. With ``{task: x_t}`` inputs each tower reads its own task's batch.

    Two lowerings compute the same outputs from the same parameters:
    ``"vmap"`` evaluates all towers as one batched computation (the fast one
    on GPUs and TPUs); ``"unroll"`` applies the tower once per task to its slice
    of the parameters, which on XLA:CPU is several times faster for
    convolutional towers (batched convolutions lower poorly there) and runs
    only the selected tower when ``task`` is given. ``"auto"`` picks
    ``"unroll"`` on CPU and ``"vmap"`` elsewhere. Initialisation always uses
    ``vmap``, so the parameters are the same whichever lowering applies them.

    Attributes:
      tower: module mapping ``[B, ...]`` to ``[B, F]``, copied once per task;
        its variables must all be parameters (no batch statistics).
      names: task names, in order.
      lowering: ``"auto"``, ``"vmap"`` or ``"unroll"``.

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
    lowering: str = "auto"

    @nn.compact
    def __call__(self, x: Inputs, task: str | None = None):
        if self.lowering not in ("auto", "vmap", "unroll"):
            raise ValueError(f"unknown SoftSharing lowering {self.lowering!r}; "
                             "choose 'auto', 'vmap' or 'unroll'")
        if task is not None and task not in self.names:
            raise KeyError(f"unknown task {task!r}; the towers are {list(self.names)}")
        per_task = isinstance(x, Mapping)
        if per_task:
            if set(x) != set(self.names):
                raise KeyError(f"per-task inputs are for tasks {sorted(x)}, "
                               f"the towers are for {sorted(self.names)}")
            if task is not None:
                raise ValueError("task selection needs one shared input, not a dict")
        lowering = self.lowering
        if lowering == "auto":
            lowering = "unroll" if jax.default_backend() == "cpu" else "vmap"
        if self.is_initializing() or lowering == "vmap":
            out = self._vmapped(x, per_task)
            if task is not None:
                return out[list(self.names).index(task)]
            return {name: out[i] for i, name in enumerate(self.names)}
        stacked = self.variables["params"]["tower"]
        tower = self.tower.clone(parent=None)

        def apply(name):
            index = list(self.names).index(name)
            params = jax.tree_util.tree_map(lambda w: w[index], stacked)
            return tower.apply({"params": params}, x[name] if per_task else x)

        if task is not None:
            return apply(task)
        return {name: apply(name) for name in self.names}

    def _vmapped(self, x: Inputs, per_task: bool) -> jax.Array:
        if per_task:
            shapes = {name: tuple(x[name].shape) for name in self.names}
            if len(set(shapes.values())) > 1:
                raise ValueError("the 'vmap' lowering needs per-task inputs of one shape, "
                                 f"got {shapes}")
            x = jnp.stack([x[name] for name in self.names])
        towers = nn.vmap(
            lambda module, inputs: module(inputs),
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=0 if per_task else None,
            out_axes=0,
            axis_size=len(self.names),
        )
        return towers(self.tower, x)


def _cumsum(values: Sequence[int]) -> list[int]:
    total, out = 0, []
    for v in values:
        total += v
        out.append(total)
    return out
