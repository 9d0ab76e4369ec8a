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

from mtl_jax.aggregators.base import Aggregator
from mtl_jax.jacobian import keep, per_task_grads, pullback_rows, shared_mask
from mtl_jax.tasks import Tasks
from mtl_jax.tree import Selector

Batch = Mapping[str, Any]
WRT = ("parameters", "representation", "losses")
Penalty = Callable[[Any], jax.Array]


class TrainState(flax.struct.PyTreeNode):
    """Everything a train step reads and writes; a pytree of arrays.

    Attributes:
      step: number of updates applied so far (int32 scalar).
      params: model variables, plain nested dicts (``{"params": ...}``).
      opt_state: the optax optimizer state.
      loss_weights: ``[T]`` non-negative weight of each task's loss.
      penalty_weight: scalar weight of the soft-sharing penalty.
      aggregator_state: the gradient aggregator's state (None without one).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    loss_weights: jax.Array
    penalty_weight: jax.Array
    aggregator_state: Any = None


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
               penalty_weight: float = 0.0, aggregator: Aggregator | None = None,
               shared: Selector = "trunk") -> TrainState:
    """Initialise parameters and optimizer state, validating model, tasks and batch.

    Args:
      model: a flax module returning ``{task: output}``.
      tasks: the tasks; names must match the model's outputs and the labels.
      key: PRNG key for parameter initialisation.
      example_batch: ``{"x": inputs, "y": {task: labels}}``; only shapes are used.
      optimizer: any optax gradient transformation.
      loss_weights: ``[T]`` non-negative task weights (default all ones).
      penalty_weight: weight of the penalty given to :func:`make_train_step`.
      aggregator, shared: as given to :func:`make_train_step`; the aggregator's
        state is initialised from the shared parameters (from all of them when
        ``shared`` is None: loss-based methods, which aggregate no gradients).

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
    build = jax.jit(state_builder(model, optimizer, aggregator, shared))
    return build(key, example_batch["x"], as_loss_weights(loss_weights, len(tasks)),
                 as_penalty_weight(penalty_weight))


def check_setup(model: nn.Module, tasks: Tasks, key: jax.Array, example_batch: Batch) -> None:
    """Validate a batch and the model's outputs against the tasks (shapes only)."""
    check_batch(tasks, example_batch)
    outputs = jax.eval_shape(lambda: model.apply(model.init(key, example_batch["x"]),
                                                 example_batch["x"]))
    tasks.check_outputs(outputs)


def state_builder(model: nn.Module, optimizer: optax.GradientTransformation,
                  aggregator: Aggregator | None = None, shared: Selector = "trunk"):
    """``build(key, inputs, loss_weights, penalty_weight) -> TrainState``, to jit or vmap."""

    def build(key, inputs, loss_weights, penalty_weight):
        params = model.init(key, inputs)
        aggregator_state = None if aggregator is None else aggregator.init(
            params if shared is None else keep(params, shared_mask(params, shared)))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=optimizer.init(params), loss_weights=loss_weights,
                          penalty_weight=penalty_weight, aggregator_state=aggregator_state)

    return build


def penalty_term(penalty: Penalty | None, params: Any, penalty_weight: jax.Array) -> jax.Array:
    """``penalty(params)``; 0, and not computed, without a penalty or where its weight is 0."""
    if penalty is None:
        return jnp.zeros(())
    dtype = jax.eval_shape(penalty, params).dtype
    return jax.lax.cond(penalty_weight > 0, penalty, lambda _: jnp.zeros((), dtype), params)


def make_loss_fn(model: nn.Module, tasks: Tasks, penalty: Penalty | None = None):
    """``loss_fn(params, batch, loss_weights, penalty_weight) -> (total, aux)``.

    ``aux`` holds the per-task losses ``[T]`` and the penalty value (0, and not
    computed, where the penalty weight is 0).
    """

    def loss_fn(params, batch, loss_weights, penalty_weight):
        check_batch(tasks, batch)
        outputs = model.apply(params, batch["x"])
        task_losses = tasks.losses(outputs, batch["y"])
        penalty_value = penalty_term(penalty, params, penalty_weight)
        total = jnp.dot(loss_weights, task_losses) + penalty_weight * penalty_value
        return total, {"task_losses": task_losses, "penalty": penalty_value}

    return loss_fn


def make_train_step(model: nn.Module, tasks: Tasks, optimizer: optax.GradientTransformation,
                    *, penalty: Penalty | None = None, aggregator: Aggregator | None = None,
                    shared: Selector = "trunk", wrt: str = "parameters",
                    chunk_size: int | None = None):
    """Build a pure ``step(state, batch) -> (state, logs)``; wrap it in ``jax.jit``.

    Without an aggregator the loss is ``Σ_t w_t L_t(params) + λ · penalty(params)``
    with ``w`` and ``λ`` read from the state. With an aggregator (see
    :mod:`mtl_jax.aggregators`) the per-task gradients ``w_t ∇L_t`` of the
    ``shared`` parameters (a path regex or predicate; ``"trunk"`` for
    :class:`~mtl_jax.models.HardSharing`) are combined by it, the task-specific
    parameters get their ordinary gradient ``Σ_t w_t ∇L_t``, and the penalty's
    gradient is added. When the shared parameters are exactly the model's
    ``trunk`` (the default for :class:`~mtl_jax.models.HardSharing`), the per-task
    gradients factor through the trunk's output: ``T`` backward passes through the
    trunk and one through the heads. ``wrt="representation"`` instead aggregates the
    gradients with respect to the trunk's output (MGDA-UB's rep-grad: two backward
    passes, not ``T``) and trains on ``Σ_t a_t w_t L_t`` with the
    aggregator's weights ``a``; it needs a model with ``trunk`` and ``heads``.
    ``wrt="losses"`` is for loss-based methods (their weights depend on the
    losses only): one forward and one backward pass, like equal weighting.
    A member whose loss weights select a single task (a single-task baseline)
    has nothing to aggregate: its gradient is used as it is.
    ``chunk_size`` bounds how many task gradients are computed at once.

    ``batch["x"]`` is one array (every task reads it) or ``{task: x_t}`` (each
    task its own batch). Logs hold ``loss`` (the total), ``task_losses [T]``,
    ``penalty`` and ``grad_norm``, and with an aggregator ``task_weights [T]``.

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
    if wrt not in WRT:
        raise ValueError(f"wrt must be one of {WRT}, got {wrt!r}")
    if aggregator is None:
        gradients = _summed_gradients(model, tasks, penalty)
    elif wrt == "losses":
        gradients = _loss_weighted_gradients(model, tasks, penalty, aggregator)
    elif wrt == "parameters":
        gradients = _aggregated_gradients(model, tasks, penalty, aggregator, shared, chunk_size)
    else:
        if not (hasattr(model, "trunk") and hasattr(model, "heads")):
            raise ValueError(f"wrt='representation' needs a model with a trunk and heads, "
                             f"got {type(model).__name__}")
        gradients = _representation_gradients(model, tasks, penalty, aggregator)

    def step(state: TrainState, batch: Batch):
        check_batch(tasks, batch)
        grads, aggregator_state, logs = gradients(state, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        logs = {**logs, "grad_norm": optax.tree.norm(grads)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                             aggregator_state=aggregator_state), logs

    return step


def _total(task_losses, penalty_value, state):
    return jnp.dot(state.loss_weights, task_losses) + state.penalty_weight * penalty_value


def _summed_gradients(model, tasks, penalty):
    loss_fn = make_loss_fn(model, tasks, penalty)

    def gradients(state, batch):
        grads, aux = jax.grad(loss_fn, has_aux=True)(
            state.params, batch, state.loss_weights, state.penalty_weight)
        return grads, state.aggregator_state, {
            "loss": _total(aux["task_losses"], aux["penalty"], state), **aux}

    return gradients


def _penalty_grad(penalty, params, penalty_weight):
    value, grad = jax.value_and_grad(penalty_term, argnums=1)(penalty, params, penalty_weight)
    return value, jax.tree_util.tree_map(lambda g: penalty_weight * g, grad)


def _loss_weighted_gradients(model, tasks, penalty, aggregator):
    def gradients(state, batch):
        def loss_fn(params):
            losses = tasks.losses(model.apply(params, batch["x"]), batch["y"])
            no_grads = {"losses": jnp.zeros((len(tasks), 1), losses.dtype)}
            _, aggregator_state = aggregator.update(
                no_grads, state.aggregator_state,
                value=jax.lax.stop_gradient(state.loss_weights * losses))
            weights = _trained_weights(state, aggregator_state)
            penalty_value = penalty_term(penalty, params, state.penalty_weight)
            total = jnp.dot(weights, losses) + state.penalty_weight * penalty_value
            return total, (losses, penalty_value, aggregator_state)

        grads, (losses, penalty_value, aggregator_state) = jax.grad(
            loss_fn, has_aux=True)(state.params)
        return grads, aggregator_state, _logs(losses, penalty_value, state, aggregator_state)

    return gradients


def _single_task(loss_weights: jax.Array) -> jax.Array:
    """Whether only one task is trained (a single-task baseline): nothing to aggregate."""
    return jnp.sum(loss_weights > 0) == 1


def _trained_weights(state: TrainState, aggregator_state) -> jax.Array:
    """The constant weights of the loss to differentiate: loss weights times the method's."""
    return state.loss_weights * jnp.where(_single_task(state.loss_weights), 1.0,
                                          jax.lax.stop_gradient(aggregator_state.weights))


def _scale_rows(per_task: jax.Array, weights: jax.Array) -> jax.Array:
    """Row ``t`` of a ``[T, ...]`` array times ``weights[t]``."""
    return per_task * weights.reshape((-1,) + (1,) * (per_task.ndim - 1))


def _logs(losses, penalty_value, state: TrainState, aggregator_state) -> dict:
    return {"loss": _total(losses, penalty_value, state), "task_losses": losses,
            "penalty": penalty_value, "task_weights": aggregator_state.weights}


def _aggregated_gradients(model, tasks, penalty, aggregator, shared, chunk_size):
    def gradients(state, batch):
        mask = shared_mask(state.params, shared)
        if _trunk_is_shared(model, state.params, mask, batch["x"]):
            losses, trunk_pullback, through_heads = _split_at_representation(
                model, tasks, state.params, batch)
            rest, dz = through_heads(state.loss_weights)
            jac = pullback_rows(lambda c: trunk_pullback(c)[0], dz, chunk_size=chunk_size)
        else:
            losses, jac = per_task_grads(
                lambda p: tasks.losses(model.apply(p, batch["x"]), batch["y"]), state.params,
                chunk_size=chunk_size)
            jac = jax.tree_util.tree_map(lambda g: _scale_rows(g, state.loss_weights), jac)
            rest = jax.tree_util.tree_map(lambda g: g.sum(0), jac)
        direction, aggregator_state = aggregator.update(
            keep(jac, mask), state.aggregator_state, value=state.loss_weights * losses)
        alone = _single_task(state.loss_weights)
        flat_mask, treedef = jax.tree_util.tree_flatten(mask)
        shared_parts = iter(jax.tree_util.tree_leaves(direction))
        grads = treedef.unflatten([
            jnp.where(alone, g.sum(0), next(shared_parts)) if is_shared else r
            for is_shared, g, r in zip(flat_mask, treedef.flatten_up_to(jac),
                                       treedef.flatten_up_to(rest))])
        penalty_value, penalty_grad = _penalty_grad(penalty, state.params, state.penalty_weight)
        grads = jax.tree_util.tree_map(jnp.add, grads, penalty_grad)
        return grads, aggregator_state, _logs(losses, penalty_value, state, aggregator_state)

    return gradients


def _trunk_is_shared(model, params, mask, x) -> bool:
    """Whether the shared parameters are exactly a ``trunk``'s, read by every task.

    Then per-task gradients factor through the trunk's output ``z``
    (:func:`_split_at_representation`): ``T`` backward passes through the trunk and
    one through the heads, instead of ``T`` through the whole model (whose
    stacked heads would cost ``T²`` head gradients).
    """
    if isinstance(x, Mapping) or not (hasattr(model, "trunk") and hasattr(model, "heads")):
        return False
    in_trunk = shared_mask(params, lambda path, leaf: path.startswith("params/trunk/"))
    return jax.tree_util.tree_leaves(in_trunk) == jax.tree_util.tree_leaves(mask)


def _split_at_representation(model, tasks, params, batch):
    """The losses, the trunk's pullback, and ``through_heads(w)``: a backward pass of
    ``Σ_t w_t L_t`` through the heads.

    Every task's head reads its own copy of the trunk output ``z``, so that one
    pass returns, besides the heads' parameter gradients, ``w_t ∂L_t/∂z`` for every
    task, stacked ``[T, B, D]``.
    """
    x, y = batch["x"], batch["y"]
    z, trunk_pullback = jax.vjp(
        lambda p: model.apply(p, x, method=lambda m, v: m.trunk(v)), params)
    losses, heads_pullback = jax.vjp(
        lambda p, zs: tasks.losses(model.apply(p, zs, method=lambda m, v: m.heads(v)), y),
        params, {name: z for name in tasks.names})

    def through_heads(weights):
        head_grads, dz = heads_pullback(weights.astype(losses.dtype))
        return head_grads, jnp.stack([dz[name] for name in tasks.names])

    return losses, trunk_pullback, through_heads


def _representation_gradients(model, tasks, penalty, aggregator):
    def gradients(state, batch):
        if isinstance(batch["x"], Mapping):
            raise ValueError("wrt='representation' needs one input shared by all tasks")
        losses, trunk_pullback, through_heads = _split_at_representation(
            model, tasks, state.params, batch)
        _, dz = through_heads(state.loss_weights)
        _, aggregator_state = aggregator.update(
            {"representation": dz}, state.aggregator_state, value=state.loss_weights * losses)
        head_grads, dz = through_heads(_trained_weights(state, aggregator_state))
        trunk_grads = trunk_pullback(dz.sum(0))[0]
        penalty_value, penalty_grad = _penalty_grad(penalty, state.params, state.penalty_weight)
        grads = jax.tree_util.tree_map(lambda h, t, p: h + t + p, head_grads, trunk_grads,
                                       penalty_grad)
        return grads, aggregator_state, _logs(losses, penalty_value, state, aggregator_state)

    return gradients


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
