"""Ensembles: many members (seeds, hyperparameters) trained as one program.

A member is one :class:`~mtl_jax.train.TrainState`; an ensemble is the same
pytree with a leading member axis. :func:`init` builds it, :func:`lift` turns a
single-member function (a train or eval step) into one over the member axis.
Three lowerings compute the same thing:

* ``"vmap"``: one batched program (``jax.vmap`` inside ``jax.jit``); the fastest
  on GPUs and TPUs.
* ``"loop"``: the single-member step compiled once and called per member; on
  XLA:CPU, batched convolutions lower poorly and this is several times faster
  (``benchmarks/ensemble_lowering.py`` measures it).
* ``"map"``: ``jax.lax.map`` over members inside one program (low memory).

``"auto"`` picks ``"loop"`` for functions with convolutions on CPU and
``"vmap"`` otherwise (decided at the first call, from the traced function).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax

from mtl_jax.tasks import Tasks
from mtl_jax.train import (
    Batch,
    TrainState,
    as_loss_weights,
    as_penalty_weight,
    check_setup,
    state_builder,
)

LOWERINGS = ("auto", "vmap", "loop", "map")


def _check_lowering(lowering: str) -> None:
    if lowering not in LOWERINGS:
        raise ValueError(f"unknown ensemble lowering {lowering!r}; choose from {LOWERINGS}")


def _has_convolution(jaxpr: jax.extend.core.Jaxpr) -> bool:
    return (any(eqn.primitive.name == "conv_general_dilated" for eqn in jaxpr.eqns)
            or any(map(_has_convolution, jax.extend.core.subjaxprs(jaxpr))))


def choose_lowering(fn: Callable, states: Any, *args, **kwargs) -> str:
    """The ``"auto"`` lowering of ``fn`` for these arguments on the default backend.

    On XLA:CPU a batched convolution runs many times slower than the same
    convolutions one member at a time (``benchmarks/results/ensemble_lowering_cpu.md``),
    so functions with convolutions are looped there; everything else is vmapped.
    """
    if jax.default_backend() != "cpu":
        return "vmap"
    traced = jax.make_jaxpr(functools.partial(fn, **kwargs))(member(states, 0), *args)
    return "loop" if _has_convolution(traced.jaxpr) else "vmap"


def _init_by_map(builder: Callable, x: Any, per_member: tuple) -> bool:
    """Whether to build members one at a time (``lax.map``): on XLA:CPU a vmapped build
    of a convolutional model compiles about 3x slower than the same build mapped."""
    if jax.default_backend() != "cpu":
        return False
    first = jax.tree_util.tree_map(lambda leaf: leaf[0], per_member)
    return _has_convolution(jax.make_jaxpr(builder)(first[0], x, *first[1:]).jaxpr)


def _broadcast(name: str, value, size: int, per_member_shape: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(value, float)
    if array.shape == per_member_shape:
        return np.broadcast_to(array, (size, *per_member_shape))
    if array.shape != (size, *per_member_shape):
        raise ValueError(f"{name} has shape {array.shape}; expected {per_member_shape} (shared "
                         f"by all members) or {(size, *per_member_shape)} (one per member)")
    return array


def init(model: nn.Module, tasks: Tasks, keys: jax.Array, example_batch: Batch,
         optimizer: optax.GradientTransformation, *, loss_weights=None, penalty_weight=0.0,
         learning_rate=None, aggregator=None, shared="trunk") -> TrainState:
    """Initialise one member per key, with per-member hyperparameters.

    Args:
      model, tasks, example_batch, optimizer: as for :func:`mtl_jax.init_state`.
      keys: ``[N]`` PRNG keys, one per member.
      loss_weights: ``[T]`` shared or ``[N, T]`` per member.
      penalty_weight: scalar or ``[N]``.
      learning_rate: None (keep the optimizer's) or scalar / ``[N]``; needs an
        optimizer built with ``optax.inject_hyperparams``.
      aggregator, shared: as for :func:`mtl_jax.init_state`.

    Returns:
      A :class:`TrainState` whose leaves have a leading member axis ``N``.
      Member ``i`` equals ``init_state(..., keys[i], ...)`` with its values.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> from mtl_jax import models, tasks as mt
      >>> model = models.HardSharing(models.MLPTrunk((8,)), models.StackedHeads(("a", "b"), 3))
      >>> tasks = mt.Tasks([mt.classification("a", 3), mt.classification("b", 3)])
      >>> batch = {"x": jnp.ones((4, 5)), "y": {"a": jnp.zeros(4, int), "b": jnp.ones(4, int)}}
      >>> opt = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
      >>> states = init(model, tasks, jax.random.split(jax.random.key(0), 3), batch, opt,
      ...               learning_rate=[1e-3, 1e-2, 1e-1])
      >>> states.params["params"]["heads"]["kernel"].shape
      (3, 2, 8, 3)
    """
    size = len(keys)
    if size < 1:
        raise ValueError("an ensemble needs at least one member (got 0 keys)")
    weights = _broadcast("loss_weights", np.ones(len(tasks)) if loss_weights is None
                         else loss_weights, size, (len(tasks),))
    penalties = _broadcast("penalty_weight", penalty_weight, size, ())
    for w, p in zip(weights, penalties):
        as_loss_weights(w, len(tasks))
        as_penalty_weight(p)
    if learning_rate is not None:
        rates = _broadcast("learning_rate", learning_rate, size, ())
        if not np.all(np.isfinite(rates)) or np.any(rates <= 0):
            raise ValueError(f"learning_rate must be positive and finite, got {rates.tolist()}")
    check_setup(model, tasks, keys[0], example_batch)
    builder = state_builder(model, optimizer, aggregator, shared)
    per_member = (keys, jnp.asarray(weights, jnp.float32), jnp.asarray(penalties, jnp.float32))
    x = example_batch["x"]
    if _init_by_map(builder, x, per_member):
        build = jax.jit(lambda members: jax.lax.map(lambda m: builder(m[0], x, *m[1:]), members))
    else:
        build = jax.jit(lambda members: jax.vmap(builder, in_axes=(0, None, 0, 0))(
            members[0], x, *members[1:]))
    states = build(per_member)
    if learning_rate is None:
        return states
    return states.replace(opt_state=_set_hyperparameter(states.opt_state, "learning_rate",
                                                        jnp.asarray(rates, jnp.float32)))


def _set_hyperparameter(opt_state, name: str, values: jax.Array):
    found = []

    def injected(node) -> bool:  # optax's Inject(Stateful)HyperparamsState
        return isinstance(getattr(node, "hyperparams", None), dict)

    def visit(node):
        if injected(node) and name in node.hyperparams:
            found.append(True)
            return node._replace(hyperparams={**node.hyperparams, name: values.astype(
                node.hyperparams[name].dtype)})
        return node

    new_state = jax.tree_util.tree_map(visit, opt_state, is_leaf=injected)
    if not found:
        raise ValueError(f"the optimizer has no injectable hyperparameter {name!r}; build it "
                         f"with optax.inject_hyperparams, e.g. "
                         f"optax.inject_hyperparams(optax.adam)({name}=1e-3)")
    return new_state


def member(states: Any, index: int) -> Any:
    """The ``index``-th member of a stacked pytree."""
    return jax.tree_util.tree_map(lambda x: x[index], states)


@functools.cache
def _unstack(size: int):
    return jax.jit(lambda tree: [member(tree, i) for i in range(size)])


@jax.jit
def _stack(trees):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def _size(tree) -> int:
    return len(jax.tree_util.tree_leaves(tree)[0])


def lift(fn: Callable, lowering: str = "auto", *, static_argnames=()) -> Callable:
    """Map ``fn(member, *shared)`` over the leading axis of its first argument.

    The other arguments (a batch, say) are shared by all members; the result is
    jit-compiled in every lowering and stacked on a leading member axis. For
    train steps, whose result replaces the members, use :func:`step`.

    Examples:
      >>> import jax.numpy as jnp
      >>> f = lift(lambda w, x: w * x, "loop")
      >>> f(jnp.arange(3.0), 2.0).tolist()
      [0.0, 2.0, 4.0]
    """
    _check_lowering(lowering)
    if lowering == "vmap":
        return jax.jit(lambda tree, *args, **kw: jax.vmap(
            lambda t: fn(t, *args, **kw))(tree), static_argnames=static_argnames)
    if lowering == "map":
        return jax.jit(lambda tree, *args, **kw: jax.lax.map(
            lambda t: fn(t, *args, **kw), tree), static_argnames=static_argnames)
    if lowering == "auto":
        return _auto(lambda low: lift(fn, low, static_argnames=static_argnames), fn)
    one = jax.jit(fn, static_argnames=static_argnames)

    def looped(tree, *args, **kw):
        return _stack([one(t, *args, **kw) for t in _unstack(_size(tree))(tree)])

    return looped


def _auto(build: Callable[[str], Callable], fn: Callable) -> Callable:
    """Defer the choice of lowering to the first call, when arguments exist."""
    chosen = {}

    def call(tree, *args, **kw):
        if "fn" not in chosen:
            chosen["fn"] = build(choose_lowering(fn, tree, *args, **kw))
        return chosen["fn"](tree, *args, **kw)

    return call


def step(train_step: Callable, lowering: str = "auto") -> Callable:
    """Lift a train step over ensemble members: ``(states, batch) -> (states, logs)``.

    The ``states`` passed in are donated (their buffers may be reused for the
    result), so keep only the returned states.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> from mtl_jax import models, tasks as mt, make_train_step
      >>> model = models.HardSharing(models.MLPTrunk((8,)), models.StackedHeads(("a", "b"), 3))
      >>> tasks = mt.Tasks([mt.classification("a", 3), mt.classification("b", 3)])
      >>> batch = {"x": jnp.ones((4, 5)), "y": {"a": jnp.zeros(4, int), "b": jnp.ones(4, int)}}
      >>> states = init(model, tasks, jax.random.split(jax.random.key(0), 2), batch, optax.sgd(0.1))
      >>> states, logs = step(make_train_step(model, tasks, optax.sgd(0.1)))(states, batch)
      >>> logs["task_losses"].shape
      (2, 2)
    """
    _check_lowering(lowering)
    if lowering == "auto":
        return _auto(lambda low: step(train_step, low), train_step)
    if lowering != "loop":
        return jax.jit(lift(train_step, lowering), donate_argnums=0)
    one = jax.jit(train_step, donate_argnums=0)

    def looped(states, *args):
        # One copy out of the stack and one back in per step. Updating members in
        # place with dynamic_update_slice would avoid both, but XLA then copies
        # the whole stacked optimizer state for every member (N^2 traffic).
        results = [one(state, *args) for state in _unstack(_size(states))(states)]
        return _stack([r[0] for r in results]), _stack([r[1] for r in results])

    return looped
