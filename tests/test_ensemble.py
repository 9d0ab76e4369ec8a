"""An ensemble member trained together with others equals that member trained alone."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_batch

import mtl_jax as mtl

LRS = [1e-2, 3e-2, 1e-1]
LOSS_WEIGHTS = [[1.0, 1.0], [1.0, 0.0], [0.2, 2.0]]
PENALTY = [0.0, 0.5, 2.0]


@pytest.fixture(scope="module")
def setup():
    model = mtl.models.SoftSharing(nn.Sequential([nn.Dense(4), nn.tanh, nn.Dense(3)]),
                                   names=("a", "b"))
    # Soft sharing towers need one output width: regress b from 2 of the 3 outputs.
    tasks = mtl.Tasks([mtl.classification("a", 3), mtl.regression("b", 3)])
    rng = np.random.default_rng(0)
    batches = [make_batch(rng) for _ in range(4)]
    for b in batches:
        b["y"]["b"] = np.concatenate([b["y"]["b"], b["y"]["b"][:, :1]], 1)
    optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    step = mtl.make_train_step(model, tasks, optimizer, penalty=mtl.penalties.l2)
    return model, tasks, batches, optimizer, step


def train_alone(setup, key, lr, weights, penalty):
    model, tasks, batches, _, _ = setup
    optimizer = optax.adam(lr)
    state = mtl.init_state(model, tasks, key, batches[0], optimizer, loss_weights=weights,
                           penalty_weight=penalty)
    step = jax.jit(mtl.make_train_step(model, tasks, optimizer, penalty=mtl.penalties.l2))
    for b in batches:
        state, _ = step(state, b)
    return state


@pytest.mark.parametrize("lowering", ["vmap", "loop", "map"])
def test_each_member_equals_training_it_alone(setup, lowering):
    model, tasks, batches, optimizer, step = setup
    keys = jax.random.split(jax.random.key(7), 3)
    states = mtl.ensemble.init(model, tasks, keys, batches[0], optimizer,
                               loss_weights=LOSS_WEIGHTS, penalty_weight=PENALTY,
                               learning_rate=LRS)
    ensemble_step = mtl.ensemble.step(step, lowering)
    for b in batches:
        states, logs = ensemble_step(states, b)
    assert logs["task_losses"].shape == (3, 2)
    for i in range(3):
        alone = train_alone(setup, keys[i], LRS[i], LOSS_WEIGHTS[i], PENALTY[i])
        got = mtl.ensemble.member(states.params, i)
        # Batched matmuls sum in another order; Adam's first steps (update ~ lr * sign)
        # amplify float32 rounding to a few 1e-6 in weights of size ~0.5.
        jax.tree_util.tree_map(
            lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5),
            got, alone.params)


def test_members_differ_by_key(setup):
    model, tasks, batches, optimizer, _ = setup
    states = mtl.ensemble.init(model, tasks, jax.random.split(jax.random.key(0), 2), batches[0],
                               optimizer)
    kernel = states.params["params"]["tower"]["layers_0"]["kernel"]
    assert not np.allclose(kernel[0], kernel[1])


def test_lift_loop_and_vmap_agree():
    fn = lambda w, x: jnp.sin(w) * x  # noqa: E731
    w = jnp.linspace(0, 1, 5)
    expected = np.sin(np.linspace(0, 1, 5)) * 3.0
    for lowering in ("vmap", "loop", "map"):
        np.testing.assert_allclose(mtl.ensemble.lift(fn, lowering)(w, 3.0), expected, rtol=1e-6)


def test_bad_ensemble_arguments(setup):
    model, tasks, batches, optimizer, _ = setup
    keys = jax.random.split(jax.random.key(0), 3)
    with pytest.raises(ValueError, match="loss_weights has shape"):
        mtl.ensemble.init(model, tasks, keys, batches[0], optimizer, loss_weights=[[1, 1]] * 2)
    with pytest.raises(ValueError, match="non-negative"):
        mtl.ensemble.init(model, tasks, keys, batches[0], optimizer, penalty_weight=[1, -1, 0])
    with pytest.raises(ValueError, match="inject_hyperparams"):
        mtl.ensemble.init(model, tasks, keys, batches[0], optax.adam(1e-3), learning_rate=0.1)
    with pytest.raises(ValueError, match="positive"):
        mtl.ensemble.init(model, tasks, keys, batches[0], optimizer, learning_rate=[1, 0, 1])
    with pytest.raises(ValueError, match="unknown ensemble lowering"):
        mtl.ensemble.step(lambda s, b: (s, {}), "pmap")


def test_auto_lowering_loops_convolutions_on_cpu_and_vmaps_the_rest():
    x = jnp.ones((2, 6, 6, 1))
    conv = mtl.models.ConvTrunk((2,), (3,))
    params = jax.vmap(lambda k: conv.init(k, x))(jax.random.split(jax.random.key(0), 2))
    dense = lambda w, v: jnp.tanh(v @ w)  # noqa: E731
    cpu = jax.default_backend() == "cpu"
    assert mtl.ensemble.choose_lowering(conv.apply, params, x) == ("loop" if cpu else "vmap")
    assert mtl.ensemble.choose_lowering(dense, jnp.ones((2, 3, 3)), jnp.ones(3)) == "vmap"
    # Inside a jitted, differentiated step the convolution is still found.
    step = jax.jit(jax.grad(lambda p, v: conv.apply(p, v).sum()))
    assert mtl.ensemble.choose_lowering(step, params, x) == ("loop" if cpu else "vmap")
    np.testing.assert_allclose(mtl.ensemble.lift(conv.apply)(params, x),
                               jax.vmap(conv.apply, in_axes=(0, None))(params, x), rtol=1e-6)
