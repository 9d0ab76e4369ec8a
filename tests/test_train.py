"""make_train_step / make_eval_step against a hand-written float64 reference."""

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_batch

import mtl_jax as mtl


def reference_losses(params, batch):
    """The hetero model's per-task losses in numpy float64, written from scratch."""
    p = jax.tree_util.tree_map(lambda w: np.asarray(w, np.float64), params["params"])
    z = np.tanh(batch["x"] @ p["trunk"]["Dense_0"]["kernel"] + p["trunk"]["Dense_0"]["bias"])
    heads = p["heads"]
    logits = z @ heads["heads_a"]["kernel"] + heads["heads_a"]["bias"]
    logits = logits - logits.max(1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    ce = -log_probs[np.arange(len(logits)), batch["y"]["a"]].mean()
    pred = z @ heads["heads_b"]["kernel"] + heads["heads_b"]["bias"]
    mse = ((pred - batch["y"]["b"]) ** 2).mean()
    return np.array([ce, mse])


def numeric_grad(f, params, eps=1e-6):
    """Central finite differences of scalar f over every parameter, in float64."""
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    flat = np.asarray(flat, np.float64)
    grad = np.zeros_like(flat)
    for i in range(flat.size):
        up, down = flat.copy(), flat.copy()
        up[i] += eps
        down[i] -= eps
        grad[i] = (f(unravel(up)) - f(unravel(down))) / (2 * eps)
    return grad


def test_losses_and_sgd_update_match_float64_reference(hetero_model, tasks, batch):
    weights = np.array([0.7, 1.9])
    lr = 0.05
    state = mtl.init_state(hetero_model, tasks, jax.random.key(1), batch, optax.sgd(lr),
                           loss_weights=weights)
    step = jax.jit(mtl.make_train_step(hetero_model, tasks, optax.sgd(lr)))
    new_state, logs = step(state, batch)
    expected = reference_losses(state.params, batch)
    np.testing.assert_allclose(logs["task_losses"], expected, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], weights @ expected, rtol=1e-5)
    total = lambda p: float(weights @ reference_losses(  # noqa: E731
        jax.tree_util.tree_map(np.asarray, p), batch))
    with jax.enable_x64(True):
        params64 = jax.tree_util.tree_map(lambda w: np.asarray(w, np.float64), state.params)
        grad = numeric_grad(total, params64)
        before, _ = jax.flatten_util.ravel_pytree(params64)
    after, _ = jax.flatten_util.ravel_pytree(new_state.params)
    np.testing.assert_allclose(np.asarray(after), np.asarray(before) - lr * grad, atol=2e-5)
    assert int(new_state.step) == 1


def test_zero_loss_weight_leaves_that_head_untouched(hetero_model, tasks, batch):
    state = mtl.init_state(hetero_model, tasks, jax.random.key(0), batch, optax.sgd(0.1),
                           loss_weights=[1.0, 0.0])
    new, _ = jax.jit(mtl.make_train_step(hetero_model, tasks, optax.sgd(0.1)))(state, batch)
    for name in ("kernel", "bias"):
        np.testing.assert_array_equal(new.params["params"]["heads"]["heads_b"][name],
                                      state.params["params"]["heads"]["heads_b"][name])
        assert not np.allclose(new.params["params"]["heads"]["heads_a"][name],
                               state.params["params"]["heads"]["heads_a"][name])


def test_penalty_gradient_enters_update_with_its_weight(batch):
    import flax.linen as nn
    tasks = mtl.Tasks([mtl.classification("a", 3), mtl.classification("b", 3)])
    model = mtl.models.SoftSharing(nn.Dense(3), names=("a", "b"))
    labels = {"a": batch["y"]["a"], "b": batch["y"]["a"][::-1].copy()}
    b = {"x": batch["x"], "y": labels}
    lr, lam = 0.1, 0.3
    step = jax.jit(mtl.make_train_step(model, tasks, optax.sgd(lr), penalty=mtl.penalties.l2))
    with_penalty = mtl.init_state(model, tasks, jax.random.key(0), b, optax.sgd(lr),
                                  penalty_weight=lam)
    without = with_penalty.replace(penalty_weight=jnp.zeros(()))
    new_with, logs = step(with_penalty, b)
    new_without, _ = step(without, b)
    kernel = np.asarray(with_penalty.params["params"]["tower"]["kernel"], np.float64)
    # d/dW_t of sum_t ||W_t - mean||^2 is 2 (W_t - mean): a closed form.
    penalty_grad = 2 * (kernel - kernel.mean(0))
    diff = (np.asarray(new_without.params["params"]["tower"]["kernel"])
            - np.asarray(new_with.params["params"]["tower"]["kernel"]))
    np.testing.assert_allclose(diff, lr * lam * penalty_grad, atol=1e-6)
    np.testing.assert_allclose(logs["penalty"], ((kernel - kernel.mean(0)) ** 2).sum(),
                               rtol=1e-5)


def test_step_compiles_once_across_steps(hetero_model, tasks):
    traces = []
    inner = mtl.make_train_step(hetero_model, tasks, optax.adam(1e-2))

    def counted(state, batch):
        traces.append(1)
        return inner(state, batch)

    step = jax.jit(counted)
    rng = np.random.default_rng(0)
    state = mtl.init_state(hetero_model, tasks, jax.random.key(0), make_batch(rng),
                           optax.adam(1e-2))
    for _ in range(5):
        state, _ = step(state, make_batch(rng))
    assert len(traces) == 1 and int(state.step) == 5
    assert step._cache_size() == 1  # traced once and compiled once


def test_multi_input_losses_are_each_tasks_own(hetero_model, tasks):
    rng = np.random.default_rng(3)
    own = {name: make_batch(rng, size=6) for name in ("a", "b")}
    multi = {"x": {n: own[n]["x"] for n in own}, "y": {n: own[n]["y"][n] for n in own}}
    state = mtl.init_state(hetero_model, tasks, jax.random.key(0), multi, optax.sgd(0.1))
    _, logs = jax.jit(mtl.make_train_step(hetero_model, tasks, optax.sgd(0.1)))(state, multi)
    expected = [reference_losses(state.params, own["a"])[0],
                reference_losses(state.params, own["b"])[1]]
    np.testing.assert_allclose(logs["task_losses"], expected, rtol=1e-5)


def test_eval_step_sums_match_numpy(hetero_model, tasks, batch):
    state = mtl.init_state(hetero_model, tasks, jax.random.key(0), batch, optax.sgd(0.1))
    eval_step = jax.jit(mtl.make_eval_step(hetero_model, tasks), static_argnames="task")
    sums = eval_step(state.params, batch)
    out = hetero_model.apply(state.params, batch["x"])
    correct = (np.argmax(out["a"], 1) == batch["y"]["a"]).sum()
    np.testing.assert_allclose(sums["a"]["accuracy"], correct)
    np.testing.assert_allclose(sums["a"]["loss"] / 8, reference_losses(state.params, batch)[0],
                               rtol=1e-5)
    only_b = eval_step(state.params, batch, task="b")
    assert set(only_b) == {"b"}
    np.testing.assert_allclose(only_b["b"]["mae"], sums["b"]["mae"], rtol=1e-6)


@pytest.mark.parametrize("change, message", [
    (lambda b: {"x": b["x"], "y": {"a": b["y"]["a"]}}, "missing \\['b'\\]"),
    (lambda b: {"x": b["x"], "y": {**b["y"], "c": b["y"]["a"]}}, "unexpected \\['c'\\]"),
    (lambda b: {"x": b["x"], "y": {**b["y"], "a": b["y"]["a"][:, None]}}, "task 'a'.*shape"),
    (lambda b: {"x": b["x"], "y": {**b["y"], "a": b["y"]["a"].astype(np.float32)}},
     "task 'a'.*dtype"),
    (lambda b: {"x": b["x"].astype(np.int32), "y": b["y"]}, "float dtype"),
    (lambda b: {"x": b["x"][:3], "y": b["y"]}, "3 rows"),
    (lambda b: {"inputs": b["x"], "y": b["y"]}, "keys 'x' and 'y'"),
])
def test_bad_batches_are_refused_by_name(hetero_model, tasks, batch, change, message):
    with pytest.raises((ValueError, KeyError), match=message):
        mtl.init_state(hetero_model, tasks, jax.random.key(0), change(batch), optax.sgd(0.1))


def test_bad_weights_and_mismatched_model_are_refused(hetero_model, tasks, batch):
    init = functools.partial(mtl.init_state, hetero_model, tasks, jax.random.key(0), batch,
                             optax.sgd(0.1))
    with pytest.raises(ValueError, match="non-negative"):
        init(loss_weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="one weight per task"):
        init(loss_weights=[1.0])
    with pytest.raises(ValueError, match="penalty_weight"):
        init(penalty_weight=float("nan"))
    wrong = mtl.Tasks([mtl.classification("a", 4), mtl.regression("b", 2)])
    with pytest.raises(ValueError, match="task 'a'.*outputs shape"):
        mtl.init_state(hetero_model, wrong, jax.random.key(0), batch, optax.sgd(0.1))
