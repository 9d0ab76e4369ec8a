"""Per-task gradients and the aggregated train step, against jax.grad task by task."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtl_jax as mtl
from mtl_jax.aggregators.base import from_weighting
from mtl_jax.jacobian import per_task_grads, shared_mask

NAMES = ("a", "b", "c")


@pytest.fixture(scope="module")
def setup():
    model = mtl.models.HardSharing(mtl.models.MLPTrunk((6,), activation=jnp.tanh),
                                   mtl.models.StackedHeads(NAMES, 3))
    tasks = mtl.Tasks([mtl.classification(n, 3) for n in NAMES])
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(8, 4)).astype(np.float32),
             "y": {n: rng.integers(0, 3, 8).astype(np.int32) for n in NAMES}}
    return model, tasks, batch


def task_grad(model, tasks, batch, params, t):
    """Task t's gradient by plain jax.grad of its own loss."""
    return jax.grad(lambda p: tasks.losses(model.apply(p, batch["x"]), batch["y"])[t])(params)


def test_per_task_grads_rows_are_each_tasks_gradient_and_chunking_agrees(setup):
    model, tasks, batch = setup
    params = model.init(jax.random.key(0), batch["x"])
    losses_fn = lambda p: tasks.losses(model.apply(p, batch["x"]), batch["y"])  # noqa: E731
    losses, jac = per_task_grads(losses_fn, params)
    np.testing.assert_allclose(losses, losses_fn(params), rtol=1e-6)
    for t in range(3):
        expected = task_grad(model, tasks, batch, params, t)
        jax.tree_util.tree_map(lambda j, e, t=t: np.testing.assert_allclose(j[t], e, atol=1e-6),
                               jac, expected)
    _, chunked = per_task_grads(losses_fn, params, chunk_size=2)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7), jac, chunked)
    with pytest.raises(ValueError, match="chunk_size"):
        per_task_grads(losses_fn, params, chunk_size=0)


def test_shared_mask_selects_by_path_and_names_misses():
    params = {"params": {"trunk": {"w": 1.0}, "heads": {"w": 2.0}}}
    assert shared_mask(params, "trunk") == {"params": {"trunk": {"w": True},
                                                       "heads": {"w": False}}}
    with pytest.raises(ValueError, match="matches no parameter.*params/heads/w"):
        shared_mask(params, "encoder")


def fixed(weights):
    weights = jnp.asarray(weights, jnp.float32)
    return from_weighting(lambda g, s, value: (weights, s), len(weights))


@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize("shared", ["trunk", "trunk/Dense_0/kernel"])
def test_aggregated_step_combines_shared_gradients_and_sums_head_gradients(setup, chunk_size,
                                                                          shared):
    # shared="trunk" factors the per-task gradients through the trunk's output; a
    # selector of part of the trunk takes the general path (the whole model's
    # per-task gradients). Both must give the same update rule.
    model, tasks, batch = setup
    weights, loss_weights, lr = [2.0, 0.5, 1.0], np.array([1.0, 3.0, 0.5]), 0.1
    aggregator = fixed(weights)
    state = mtl.init_state(model, tasks, jax.random.key(1), batch, optax.sgd(lr),
                           loss_weights=loss_weights, aggregator=aggregator, shared=shared)
    step = jax.jit(mtl.make_train_step(model, tasks, optax.sgd(lr), aggregator=aggregator,
                                       shared=shared, chunk_size=chunk_size))
    new, logs = step(state, batch)
    grads = [task_grad(model, tasks, batch, state.params, t) for t in range(3)]
    mask = shared_mask(state.params, shared)
    expected = jax.tree_util.tree_map(
        lambda is_shared, *gs: sum((w if is_shared else 1.0) * lw * g
                                   for w, lw, g in zip(weights, loss_weights, gs)),
        mask, *grads)
    jax.tree_util.tree_map(
        lambda n, o, e: np.testing.assert_allclose(n, o - lr * e, atol=1e-6),
        new.params, state.params, expected)
    np.testing.assert_allclose(logs["task_weights"], weights)


def test_equal_weights_aggregator_matches_the_plain_step(setup):
    model, tasks, batch = setup
    ones = fixed([1.0, 1.0, 1.0])
    plain = mtl.init_state(model, tasks, jax.random.key(2), batch, optax.adam(1e-2))
    agg = mtl.init_state(model, tasks, jax.random.key(2), batch, optax.adam(1e-2),
                         aggregator=ones)
    plain_step = jax.jit(mtl.make_train_step(model, tasks, optax.adam(1e-2)))
    agg_step = jax.jit(mtl.make_train_step(model, tasks, optax.adam(1e-2), aggregator=ones))
    for _ in range(3):
        plain, _ = plain_step(plain, batch)
        agg, _ = agg_step(agg, batch)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
                           agg.params, plain.params)


def test_representation_gradients_train_on_the_aggregators_loss_weights(setup):
    model, tasks, batch = setup
    weights, lr = [0.2, 1.0, 3.0], 0.05
    aggregator = fixed(weights)
    state = mtl.init_state(model, tasks, jax.random.key(3), batch, optax.sgd(lr),
                           aggregator=aggregator)
    step = jax.jit(mtl.make_train_step(model, tasks, optax.sgd(lr), aggregator=aggregator,
                                       wrt="representation"))
    new, logs = step(state, batch)
    expected = jax.grad(lambda p: jnp.dot(jnp.asarray(weights), tasks.losses(
        model.apply(p, batch["x"]), batch["y"])))(state.params)
    jax.tree_util.tree_map(lambda n, o, e: np.testing.assert_allclose(n, o - lr * e, atol=1e-6),
                           new.params, state.params, expected)
    soft = mtl.models.SoftSharing(nn.Dense(3), NAMES)
    with pytest.raises(ValueError, match="trunk and heads"):
        mtl.make_train_step(soft, tasks, optax.sgd(lr), aggregator=aggregator,
                            wrt="representation")
    with pytest.raises(ValueError, match="wrt must be"):
        mtl.make_train_step(model, tasks, optax.sgd(lr), aggregator=aggregator, wrt="z")


@pytest.mark.parametrize("wrt", ["parameters", "representation", "losses"])
def test_a_single_active_task_bypasses_the_aggregator(setup, wrt):
    model, tasks, batch = setup
    zero = fixed([0.0, 0.0, 0.0])  # would freeze the trunk if it were applied
    state = mtl.init_state(model, tasks, jax.random.key(4), batch, optax.sgd(0.1),
                           loss_weights=[0.0, 1.0, 0.0], aggregator=zero)
    new, _ = jax.jit(mtl.make_train_step(model, tasks, optax.sgd(0.1), aggregator=zero,
                                         wrt=wrt))(state, batch)
    expected = task_grad(model, tasks, batch, state.params, 1)
    jax.tree_util.tree_map(lambda n, o, e: np.testing.assert_allclose(n, o - 0.1 * e, atol=1e-6),
                           new.params, state.params, expected)


def test_loss_based_weights_train_on_the_weighted_loss_in_one_backward_pass(setup):
    model, tasks, batch = setup
    # A loss-based weighting: w = softmax(losses), read from `value` only.
    softmax = from_weighting(lambda g, s, value: (jax.nn.softmax(value), s), 3)
    state = mtl.init_state(model, tasks, jax.random.key(5), batch, optax.sgd(0.1),
                           aggregator=softmax)
    new, logs = jax.jit(mtl.make_train_step(model, tasks, optax.sgd(0.1), aggregator=softmax,
                                            wrt="losses"))(state, batch)
    losses = np.asarray(tasks.losses(model.apply(state.params, batch["x"]), batch["y"]),
                        np.float64)
    weights = np.exp(losses) / np.exp(losses).sum()
    np.testing.assert_allclose(logs["task_weights"], weights, rtol=1e-5)
    expected = jax.grad(lambda p: jnp.dot(jnp.asarray(weights, jnp.float32), tasks.losses(
        model.apply(p, batch["x"]), batch["y"])))(state.params)
    jax.tree_util.tree_map(lambda n, o, e: np.testing.assert_allclose(n, o - 0.1 * e, atol=1e-6),
                           new.params, state.params, expected)
