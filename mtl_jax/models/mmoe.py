"""Mixture-of-experts multi-task models: MMoE and one-gate MoE, CGC and PLE.

Experts are copies of one expert module (any module mapping ``[B, ...]`` to
``[B, H]``, e.g. an :class:`~mtl_jax.models.MLPTrunk`) with parameters stacked
on a leading expert axis; gates are stacked on a leading gate axis and task
towers on a leading task axis. Every stack is evaluated with ``nn.vmap`` or an
``einsum``: no Python loop over tasks or experts runs in the forward pass.

The whole family names its parameters alike, so that the parameters several
tasks' losses depend on (the ``shared`` selector of
:func:`mtl_jax.make_train_step`) are found by name:

- ``shared_experts``: experts every task's gate reads, ``[E, ...]``;
- ``shared_gate``: the one-gate MoE's gate, and PLE's inner-level gate over
  all experts of its level;
- ``task_experts``: CGC/PLE's experts of each task, ``[T, E_t, ...]``;
- ``task_gates``: one gate per task, ``[T, ...]``;
- ``towers``: one tower per task, ``[T, ...]``.

Gates are pluggable: a model's ``gate`` builds its gate modules as
``gate(num_gates, num_experts, name=...)``; the default is
:class:`SoftmaxGates`, :class:`mtl_jax.models.DSelectKGates` is the other.

The helpers :func:`check_names`, :func:`check_call` and :func:`stacked` are
shared with the other multi-task architectures (cross-stitch, MTAN).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.models.trunks import MLPTrunk

GateFactory = Callable[..., nn.Module]
"""A gate module class, or a ``functools.partial`` of one, built as
``gate(num_gates, num_experts, name=...)``; the module maps ``[B, D]`` (one input
for all gates) or ``[G, B, D]`` (one per gate) to expert weights ``[G, B, E]``."""


def check_names(model: str, names: Sequence[str]) -> None:
    """Raise a ValueError unless ``names`` are one or more distinct task names."""
    if isinstance(names, str) or len(names) == 0 or len(set(names)) != len(names):
        raise ValueError(f"{model} needs one or more distinct task names, got {names!r}")


def check_call(model: str, names: Sequence[str], x: Any, task: str | None) -> None:
    """Raise before any work on per-task inputs (one shared input is needed) or an unknown task."""
    if isinstance(x, Mapping):
        raise ValueError(f"{model} reads one input shared by all tasks; per-task inputs "
                         f"{{task: x}} (got {sorted(x)}) are not supported")
    if task is not None and task not in names:
        raise KeyError(f"unknown task {task!r}; {model}'s tasks are {list(names)}")


def stacked(target: Any, axis_size: int, in_axes: int | None = 0) -> Any:
    """``target`` (a module class, or a function of a module) as ``axis_size`` copies.

    The copies' parameters are independently initialised and stacked on a new
    leading axis; ``in_axes=None`` feeds every copy the same input, ``0`` each
    copy its slice of a stacked input. Outputs are stacked on axis 0.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> dense = stacked(nn.Dense, 3, in_axes=None)(4)
      >>> params = dense.init(jax.random.key(0), jnp.ones((2, 5)))
      >>> params["params"]["kernel"].shape, dense.apply(params, jnp.ones((2, 5))).shape
      ((3, 5, 4), (3, 2, 4))
    """
    return nn.vmap(target, variable_axes={"params": 0}, split_rngs={"params": True},
                   in_axes=in_axes, out_axes=0, axis_size=axis_size)


def mix(weights: jax.Array, experts: jax.Array) -> jax.Array:
    """Gate-weighted sums of expert outputs: ``[G, B, E]`` and ``[E, B, H]`` to ``[G, B, H]``."""
    return jnp.einsum("gbe,ebh->gbh", weights, experts)


class Experts(nn.Module):
    """``num`` copies of ``expert``, parameters stacked on a leading expert axis.

    Every copy reads the same input ``[B, ...]``; the outputs are ``[num, B, H]``.

    Attributes:
      expert: module mapping ``[B, ...]`` to ``[B, H]``, copied ``num`` times.
      num: number of experts.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> experts = Experts(MLPTrunk((8,)), num=3)
      >>> params = experts.init(jax.random.key(0), jnp.ones((2, 5)))
      >>> params["params"]["expert"]["Dense_0"]["kernel"].shape
      (3, 5, 8)
    """

    expert: nn.Module
    num: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return stacked(lambda module, inputs: module(inputs), self.num, in_axes=None)(
            self.expert, x)


class SoftmaxGates(nn.Module):
    """``num_gates`` softmax gates over ``num_experts`` experts (Ma et al. 2018, eq. 5).

    Gate ``g`` weighs the experts by ``softmax(x K_g)``, without a bias as in the
    paper. Parameter: ``kernel [G, D, E]``.

    Attributes:
      num_gates: number of gates ``G``.
      num_experts: number of experts ``E``.
      kernel_init: initialiser of the stacked kernels.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> gates = SoftmaxGates(num_gates=2, num_experts=3)
      >>> params = gates.init(jax.random.key(0), jnp.ones((4, 5)))
      >>> weights = gates.apply(params, jnp.ones((4, 5)))
      >>> weights.shape, bool(jnp.allclose(weights.sum(-1), 1.0))
      ((2, 4, 3), True)
    """

    num_gates: int
    num_experts: int
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal(batch_axis=(0,))

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x``: ``[B, D]`` read by every gate, or ``[G, B, D]``, one input per gate."""
        kernel = self.param("kernel", self.kernel_init,
                            (self.num_gates, x.shape[-1], self.num_experts))
        spec = "bd,gde->gbe" if x.ndim == 2 else "gbd,gde->gbe"
        return nn.softmax(jnp.einsum(spec, x, kernel), axis=-1)


class Tower(nn.Module):
    """A task tower: ``Dense -> ReLU`` layers of widths ``hidden``, then ``Dense(features)``."""

    hidden: Sequence[int]
    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(self.features)(MLPTrunk(self.hidden)(x))


def _towers(names: Sequence[str], hidden: Sequence[int], features: int, x: jax.Array,
            task: str | None):
    """Each task's tower (stacked as ``towers``) on its row of ``x [T, B, H]``; outputs by name."""
    out = stacked(Tower, len(names))(hidden, features, name="towers")(x)
    if task is not None:
        return out[list(names).index(task)]
    return {name: out[t] for t, name in enumerate(names)}


def _flat(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


SHARED = r"(^|/)shared_(experts|gate)/"


class MMoE(nn.Module):
    """Multi-gate mixture of experts (Ma et al., KDD 2018), or the one-gate MoE.

    Jiaqi Ma, Zhe Zhao, Xinyang Yi, Jilin Chen, Lichan Hong, Ed H. Chi. *Modeling
    Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts.*
    KDD 2018. Task ``t`` reads ``y_t = tower_t(Σ_e g_t(x)_e f_e(x))``: ``E`` experts
    ``f_e`` shared by all tasks, one gate ``g_t`` per task on the (flattened)
    input. ``one_gate=True`` is the paper's OMoE baseline: one gate shared by all
    tasks, whose mixture feeds every tower.

    Parameters: ``shared_experts/expert/... [E, ...]``; ``task_gates/... [T, ...]``
    (or ``shared_gate/... [1, ...]`` with ``one_gate``); ``towers/... [T, ...]``.
    Shared (:attr:`shared`): the experts, and the gate with ``one_gate``.
    With a :class:`~mtl_jax.models.DSelectKGates` gate this is the DSelect-k MoE
    of Hazimeh et al. (2021).

    Attributes:
      expert: module mapping ``[B, ...]`` to ``[B, H]``, copied ``num_experts``
        times (the paper's experts are MLPs: ``MLPTrunk(widths)``).
      names: task names, in order; ``T = len(names)``.
      features: output width of every task (classes, or regression targets).
      num_experts: number of experts ``E``, >= 1.
      tower_features: hidden widths of every task tower (``()``: a linear tower).
      one_gate: one gate shared by all tasks (OMoE) instead of one per task.
      gate: builds the gates (see :data:`GateFactory`).
      shared: path regex of the parameters several tasks share, for
        ``make_train_step(shared=...)``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from mtl_jax.models import MLPTrunk, MMoE
      >>> model = MMoE(MLPTrunk((16,)), names=("a", "b"), features=3, num_experts=4)
      >>> params = model.init(jax.random.key(0), jnp.ones((5, 8)))
      >>> params["params"]["task_gates"]["kernel"].shape
      (2, 8, 4)
      >>> {k: v.shape for k, v in model.apply(params, jnp.ones((5, 8))).items()}
      {'a': (5, 3), 'b': (5, 3)}
    """

    expert: nn.Module
    names: Sequence[str]
    features: int
    num_experts: int = 4
    tower_features: Sequence[int] = ()
    one_gate: bool = False
    gate: GateFactory = SoftmaxGates

    shared: ClassVar[str] = SHARED

    def __post_init__(self) -> None:
        check_names(type(self).__name__, self.names)
        if self.num_experts < 1:
            raise ValueError(f"{type(self).__name__} needs num_experts >= 1, "
                             f"got {self.num_experts}")
        self.gate(1, self.num_experts, parent=None)  # a detached gate: checks its settings now
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, task: str | None = None):
        check_call(type(self).__name__, self.names, x, task)
        num_tasks = len(self.names)
        experts = Experts(self.expert.clone(parent=None), self.num_experts,
                          name="shared_experts")(x)
        if self.one_gate:
            weights = self.gate(1, self.num_experts, name="shared_gate")(_flat(x))
        else:
            weights = self.gate(num_tasks, self.num_experts, name="task_gates")(_flat(x))
        mixed = jnp.broadcast_to(mix(weights, experts), (num_tasks, *experts.shape[1:]))
        return _towers(self.names, self.tower_features, self.features, mixed, task)


class Extraction(nn.Module):
    """One extraction layer of CGC/PLE (Tang et al., RecSys 2020, Sec. 4.2-4.3).

    Task ``t``'s gate weighs its own ``E_t`` experts and the ``E_s`` shared
    experts; with ``shared_gate`` (PLE's inner levels) one more gate, reading the
    shared branch, weighs all ``T E_t + E_s`` experts of the layer.

    Attributes:
      expert: module mapping ``[B, ...]`` to ``[B, H]``, copied for every expert.
      num_tasks: number of tasks ``T``.
      num_shared_experts: ``E_s``, experts every task's gate reads.
      num_task_experts: ``E_t``, each task's own experts.
      shared_gate: whether to compute the shared branch's output (inner levels).
      gate: builds the gates (see :data:`GateFactory`).
    """

    expert: nn.Module
    num_tasks: int
    num_shared_experts: int
    num_task_experts: int
    shared_gate: bool
    gate: GateFactory = SoftmaxGates

    @nn.compact
    def __call__(self, shared: jax.Array, tasks: jax.Array | None = None):
        """``(tasks' outputs [T, B, H], shared output [B, H] or None)``.

        Args:
          shared: the shared branch's input ``[B, ...]``.
          tasks: each task's input ``[T, B, D]``; None: every task reads ``shared``.
        """
        num_own = self.num_task_experts
        common = Experts(self.expert.clone(parent=None), self.num_shared_experts,
                         name="shared_experts")(shared)
        own = stacked(Experts, self.num_tasks, in_axes=None if tasks is None else 0)(
            self.expert.clone(parent=None), num_own, name="task_experts")(
            shared if tasks is None else tasks)                        # [T, E_t, B, H]
        weights = self.gate(self.num_tasks, num_own + self.num_shared_experts,
                            name="task_gates")(_flat(shared) if tasks is None else tasks)
        out = (jnp.einsum("tbe,tebh->tbh", weights[..., :num_own], own)
               + mix(weights[..., num_own:], common))
        if not self.shared_gate:
            return out, None
        every = jnp.concatenate([own.reshape(-1, *own.shape[2:]), common])
        weights = self.gate(1, len(every), name="shared_gate")(_flat(shared))
        return out, mix(weights, every)[0]


class PLE(nn.Module):
    """Progressive layered extraction (Tang et al., RecSys 2020); CGC is one level.

    Hongyan Tang, Junning Liu, Ming Zhao, Xudong Gong. *Progressive Layered
    Extraction (PLE): A Novel Multi-Task Learning (MTL) Model for Personalized
    Recommendations.* RecSys 2020. ``levels`` :class:`Extraction` layers: at
    each, task ``t``'s gate weighs its own ``E_t`` experts and ``E_s`` shared
    experts; every level but the last also has a shared gate over all its
    experts, whose output is the next level's shared input. Level 1 reads the
    input everywhere; later levels read task ``t``'s (or the shared) output of
    the level before. Towers read the last level's task outputs.

    Parameters: ``level_{j}/shared_experts/expert/... [E_s, ...]``,
    ``level_{j}/task_experts/expert/... [T, E_t, ...]``,
    ``level_{j}/task_gates/... [T, ...]``, ``level_{j}/shared_gate/... [1, ...]``
    (``j < levels - 1``) and ``towers/... [T, ...]``.

    Shared (:attr:`shared`, depends on ``levels``, so it is a property): the
    shared experts and gates, and, through the shared gates, the task experts
    of the inner levels and the task gates of all but the last two levels.

    Attributes:
      expert: module mapping ``[B, ...]`` to ``[B, H]``, copied for every expert;
        later levels feed it ``[B, H]``.
      names: task names, in order; ``T = len(names)``.
      features: output width of every task.
      num_shared_experts: ``E_s`` per level, >= 1.
      num_task_experts: ``E_t`` per task and level, >= 1.
      levels: number of extraction layers, >= 1 (1: CGC).
      tower_features: hidden widths of every task tower.
      gate: builds the gates (see :data:`GateFactory`).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from mtl_jax.models import MLPTrunk, PLE
      >>> model = PLE(MLPTrunk((16,)), names=("a", "b"), features=3, num_shared_experts=2,
      ...             num_task_experts=1, levels=2)
      >>> params = model.init(jax.random.key(0), jnp.ones((5, 8)))
      >>> params["params"]["level_1"]["task_experts"]["expert"]["Dense_0"]["kernel"].shape
      (2, 1, 16, 16)
      >>> model.apply(params, jnp.ones((5, 8)), task="b").shape
      (5, 3)
    """

    expert: nn.Module
    names: Sequence[str]
    features: int
    num_shared_experts: int = 1
    num_task_experts: int = 1
    levels: int = 2
    tower_features: Sequence[int] = ()
    gate: GateFactory = SoftmaxGates

    def __post_init__(self) -> None:
        model = type(self).__name__
        check_names(model, self.names)
        for field in ("num_shared_experts", "num_task_experts", "levels"):
            if getattr(self, field) < 1:
                raise ValueError(f"{model} needs {field} >= 1, got {getattr(self, field)}")
        self.gate(1, self.num_shared_experts + self.num_task_experts, parent=None)  # check now
        super().__post_init__()

    @property
    def shared(self) -> str:
        """Path regex of the parameters several tasks' losses depend on."""
        last = self.levels - 1
        parts = ["shared_(experts|gate)"]
        if last > 0:  # inner levels' task experts feed their level's shared gate
            parts.append(rf"level_({'|'.join(map(str, range(last)))})/task_experts")
        if last > 1:  # ... and the task gates before them feed those experts
            parts.append(rf"level_({'|'.join(map(str, range(last - 1)))})/task_gates")
        return rf"(^|/)({'|'.join(parts)})/"

    @nn.compact
    def __call__(self, x: jax.Array, task: str | None = None):
        check_call(type(self).__name__, self.names, x, task)
        shared, tasks = x, None
        for level in range(self.levels):
            tasks, shared = Extraction(
                self.expert.clone(parent=None), len(self.names), self.num_shared_experts,
                self.num_task_experts, shared_gate=level < self.levels - 1, gate=self.gate,
                name=f"level_{level}")(shared, tasks)
        return _towers(self.names, self.tower_features, self.features, tasks, task)


class CGC(PLE):
    """Customized gate control (Tang et al., RecSys 2020, Sec. 4.2): :class:`PLE` with one level.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from mtl_jax.models import CGC, MLPTrunk
      >>> model = CGC(MLPTrunk((16,)), names=("a", "b"), features=3, num_shared_experts=2)
      >>> params = model.init(jax.random.key(0), jnp.ones((5, 8)))
      >>> params["params"]["level_0"]["task_gates"]["kernel"].shape, model.shared
      ((2, 8, 3), '(^|/)(shared_(experts|gate))/')
    """

    levels: int = 1
