"""Train state and the pure, jit-compiled train and eval steps.

The step is the chain ``params -> outputs -> per-task losses -> weighted sum
(+ penalty) -> gradient -> optax update``. Everything that varies between runs
of one experiment (loss weights, penalty weight, the learning rate inside an
``optax.inject_hyperparams`` optimizer) lives in the state, not in the closure,
so one compiled step serves every member of a ``vmap``-ed ensemble.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtl_jax.tasks import Tasks

Batch = Mapping[str, Any]
Penalty = Callable[[Any], jax.Array]


class TrainState(flax.struct.PyTreeNode):
    """Everything a train step reads and writes; a pytree of arrays.

    Attributes:
      step: number of updates applied so far (int32 scalar).
      params: model variables, plain nested dicts (``{"params": ...}``).
      opt_state: the optax optimizer state.
      loss_weights: ``[T]`` non-negative weight of each task's loss.
      penalty_weight: scalar weight of the soft-sharing penalty.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    loss_weights: jax.Array
    penalty_weight: jax.Array


def check_batch(tasks: Tasks, batch: Batch) -> None:
    """Raise a clear error if ``batch`` is not ``{"x": inputs, "y": {task: labels}}``."""
    if not isinstance(batch, Mapping) or set(batch) != {"x", "y"}:
        keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise ValueError(f"a batch must be a dict with keys 'x' and 'y', got {keys}")
    tasks.check_labels(batch["y"])
    inputs = batch["x"]
    if isinstance(inputs, Mapping):
        if set(inputs) != set(tasks.names):
            raise ValueError(f"per-task inputs are for tasks {sorted(inputs)}, the tasks are "
                             f"{list(tasks.names)}")
        items = inputs.items()
    else:
        items = [("x", inputs)]
    for name, x in items:
        if not np.issubdtype(np.dtype(getattr(x, "dtype", np.float32)), np.floating):
            raise ValueError(f"inputs {name!r} have dtype {x.dtype}; expected a float dtype")
        rows = {np.shape(batch["y"][t])[0] for t in (tasks.names if name == "x" else [name])}
        if rows != {np.shape(x)[0]}:
            raise ValueError(f"inputs {name!r} have {np.shape(x)[0]} rows but the labels have "
                             f"{sorted(rows)}")


def as_loss_weights(loss_weights, num_tasks: int) -> jax.Array:
    """``loss_weights`` (None: all ones) as a float32 ``[T]``; raises if invalid."""
    weights = np.ones(num_tasks) if loss_weights is None else np.asarray(loss_weights, float)
    if weights.shape != (num_tasks,):
        raise ValueError(f"loss_weights has shape {weights.shape}, expected ({num_tasks},): "
                         "one weight per task")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError(f"loss_weights must be finite and non-negative, got {weights.tolist()}")
    return jnp.asarray(weights, jnp.float32)


def as_penalty_weight(penalty_weight) -> jax.Array:
    """``penalty_weight`` as a float32 scalar; raises unless finite and >= 0."""
    value = float(penalty_weight)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"penalty_weight must be finite and non-negative, got {value}")
    return jnp.asarray(value, jnp.float32)


def init_state(model: nn.Module, tasks: Tasks, key: jax.Array, example_batch: Batch,
               optimizer: optax.GradientTransformation, *, loss_weights=None,
               penalty_weight: float = 0.0) -> TrainState:
    """Initialise parameters and optimizer state, validating model, tasks and batch.

    Args:
      model: a flax module returning ``{task: output}``.
      tasks: the tasks; names must match the model's outputs and the labels.
      key: PRNG key for parameter initialisation.
      example_batch: ``{"x": inputs, "y": {task: labels}}``; only shapes are used.
      optimizer: any optax gradient transformation.
      loss_weights: ``[T]`` non-negative task weights (default all ones).
      penalty_weight: weight of the penalty given to :func:`make_train_step`.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> from mtl_jax import models, tasks as mt
      >>> model = models.HardSharing(models.MLPTrunk((16,)), models.StackedHeads(("a", "b"), 3))
      >>> tasks = mt.Tasks([mt.classification("a", 3), mt.classification("b", 3)])
      >>> batch = {"x": jnp.ones((4, 5)), "y": {"a": jnp.zeros(4, int), "b": jnp.ones(4, int)}}
      >>> state = init_state(model, tasks, jax.random.key(0), batch, optax.sgd(0.1))
      >>> int(state.step), state.loss_weights.tolist()
      (0, [1.0, 1.0])
    """
    check_setup(model, tasks, key, example_batch)
    build = jax.jit(state_builder(model, optimizer))
    return build(key, example_batch["x"], as_loss_weights(loss_weights, len(tasks)),
                 as_penalty_weight(penalty_weight))


def check_setup(model: nn.Module, tasks: Tasks, key: jax.Array, example_batch: Batch) -> None:
    """Validate a batch and the model's outputs against the tasks (shapes only)."""
    check_batch(tasks, example_batch)
    outputs = jax.eval_shape(lambda: model.apply(model.init(key, example_batch["x"]),
                                                 example_batch["x"]))
    tasks.check_outputs(outputs)


def state_builder(model: nn.Module, optimizer: optax.GradientTransformation):
    """``build(key, inputs, loss_weights, penalty_weight) -> TrainState``, to jit or vmap."""

    def build(key, inputs, loss_weights, penalty_weight):
        params = model.init(key, inputs)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=optimizer.init(params), loss_weights=loss_weights,
                          penalty_weight=penalty_weight)

    return build


def make_loss_fn(model: nn.Module, tasks: Tasks, penalty: Penalty | None = None):
    """``loss_fn(params, batch, loss_weights, penalty_weight) -> (total, aux)``.

    ``aux`` holds the per-task losses ``[T]`` and the penalty value (0, and not
    computed, where the penalty weight is 0).
    """

    def loss_fn(params, batch, loss_weights, penalty_weight):
        check_batch(tasks, batch)
        outputs = model.apply(params, batch["x"])
        task_losses = tasks.losses(outputs, batch["y"])
        penalty_value = jnp.zeros(())
        if penalty is not None:  # skipped where its weight is 0 (e.g. single-task baselines)
            dtype = jax.eval_shape(penalty, params).dtype
            penalty_value = jax.lax.cond(penalty_weight > 0, penalty,
                                         lambda _: jnp.zeros((), dtype), params)
        total = jnp.dot(loss_weights, task_losses) + penalty_weight * penalty_value
        return total, {"task_losses": task_losses, "penalty": penalty_value}

    return loss_fn


def make_train_step(model: nn.Module, tasks: Tasks, optimizer: optax.GradientTransformation,
                    *, penalty: Penalty | None = None):
    """Build a pure ``step(state, batch) -> (state, logs)``; wrap it in ``jax.jit``.

    The loss is ``Σ_t w_t L_t(params) + λ · penalty(params)`` with ``w`` and ``λ``
    read from the state. ``batch["x"]`` is one array (every task reads it) or
    ``{task: x_t}`` (each task its own batch). Logs hold ``loss`` (the total),
    ``task_losses [T]``, ``penalty`` and ``grad_norm``.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> from mtl_jax import models, tasks as mt
      >>> model = models.HardSharing(models.MLPTrunk((16,)), models.StackedHeads(("a", "b"), 3))
      >>> tasks = mt.Tasks([mt.classification("a", 3), mt.classification("b", 3)])
      >>> batch = {"x": jnp.ones((4, 5)), "y": {"a": jnp.zeros(4, int), "b": jnp.ones(4, int)}}
      >>> state = init_state(model, tasks, jax.random.key(0), batch, optax.sgd(0.1))
      >>> step = jax.jit(make_train_step(model, tasks, optax.sgd(0.1)))
      >>> state, logs = step(state, batch)
      >>> int(state.step), logs["task_losses"].shape
      (1, (2,))
    """
    loss_fn = make_loss_fn(model, tasks, penalty)

    def step(state: TrainState, batch: Batch):
        grads, aux = jax.grad(loss_fn, has_aux=True)(
            state.params, batch, state.loss_weights, state.penalty_weight)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        logs = {"loss": jnp.dot(state.loss_weights, aux["task_losses"])
                + state.penalty_weight * aux["penalty"],
                "grad_norm": optax.tree.norm(grads), **aux}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), logs

    return step


def make_eval_step(model: nn.Module, tasks: Tasks):
    """Build ``eval_step(params, batch, task=None) -> metric sums``.

    With ``task`` given, only that task's head runs and only its sums come
    back (the multi-input setting, where each task has its own test set).
    Accumulate sums over batches and turn them into metrics with
    :meth:`mtl_jax.tasks.Tasks.finalize`.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> from mtl_jax import models, tasks as mt
      >>> model = models.HardSharing(models.MLPTrunk((16,)), models.StackedHeads(("a", "b"), 3))
      >>> tasks = mt.Tasks([mt.classification("a", 3), mt.classification("b", 3)])
      >>> batch = {"x": jnp.ones((4, 5)), "y": {"a": jnp.zeros(4, int), "b": jnp.ones(4, int)}}
      >>> state = init_state(model, tasks, jax.random.key(0), batch, optax.sgd(0.1))
      >>> sums = make_eval_step(model, tasks)(state.params, batch)
      >>> float(sums["a"]["count"])
      4.0
    """

    def eval_step(params, batch: Batch, task: str | None = None):
        if task is None:
            return tasks.metric_sums(model.apply(params, batch["x"]), batch["y"])
        return tasks.select([task]).metric_sums(
            {task: model.apply(params, batch["x"], task=task)}, {task: batch["y"][task]})

    return eval_step
