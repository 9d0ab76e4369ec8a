"""Chunked per-task gradients at T = 40 (CelebA's size): the same update, in less memory.

``benchmarks/memory.py`` states, and checks at full size, the bound

    peak(method, k) ≤ peak(EW) + 3·|J| + 2·|dZ| + min(k, T)·w,
    |J| = 4·T·P,  |dZ| = 4·T·B·D,  w = 4·(P + 2·B·Σ widths),

with P the trunk's parameter count, B the batch and D the trunk's output width. Here
XLA's temporaries alone are held to it, less EW's share: a stricter test, one
compilation fewer. Steps compile without LLVM optimisation, which halves the time
and leaves XLA's buffer assignment as it is.
"""

import jax
import numpy as np
import optax
import pytest

import mtl_jax as mtl

T, B, IN, WIDTHS, CLASSES = 40, 64, 8, (32, 32), 3
METHOD, CHUNK = "mgda", 3  # 3 does not divide 40: lax.map's remainder runs too
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@pytest.fixture(scope="module")
def setup():
    names = tuple(f"t{i}" for i in range(T))
    model = mtl.models.HardSharing(mtl.models.MLPTrunk(WIDTHS),
                                   mtl.models.StackedHeads(names, CLASSES))
    tasks = mtl.Tasks([mtl.classification(n, CLASSES) for n in names])
    rng = np.random.default_rng(0)
    batch = {"x": rng.standard_normal((B, IN), dtype=np.float32),
             "y": {n: rng.integers(0, CLASSES, B, dtype=np.int32) for n in names}}
    aggregator, _ = mtl.aggregators.get(METHOD, T)
    state = mtl.init_state(model, tasks, jax.random.key(0), batch, optax.sgd(1.0),
                           aggregator=aggregator)
    return model, tasks, batch, aggregator, state


@pytest.fixture(scope="module")
def steps(setup):
    """The compiled SGD(1) step, all T task gradients at once and in chunks."""
    model, tasks, batch, aggregator, state = setup

    def compiled(chunk_size):
        step = mtl.make_train_step(model, tasks, optax.sgd(1.0), aggregator=aggregator,
                                   chunk_size=chunk_size)
        return jax.jit(step).lower(state, batch).compile(FAST_COMPILE)

    return {k: compiled(k) for k in (None, CHUNK)}


def reference_gradient(setup):
    """MGDA's direction on the trunk from ``jax.jacrev`` of the T losses through the
    whole model (not factored through the trunk, not chunked); the heads' summed
    gradient."""
    model, tasks, batch, aggregator, state = setup

    def losses(params):
        return tasks.losses(model.apply(params, batch["x"]), batch["y"])

    def gradient(params):
        trunk = jax.jacrev(losses)(params)["params"]["trunk"]
        direction, _ = aggregator.update({"params": {"trunk": trunk}}, state.aggregator_state,
                                         value=losses(params))
        heads = jax.grad(lambda p: losses(p).sum())(params)["params"]["heads"]
        return {"params": {"trunk": direction["params"]["trunk"], "heads": heads}}

    return jax.jit(gradient).lower(state.params).compile(FAST_COMPILE)(state.params)


def test_chunked_update_matches_unchunked_and_jacrev(setup, steps):
    batch, state = setup[2], setup[-1]
    expected = reference_gradient(setup)
    for compiled in steps.values():
        new_state, _ = compiled(state, batch)
        grads = jax.tree_util.tree_map(lambda p, q: p - q, state.params, new_state.params)
        jax.tree_util.tree_map(
            lambda g, e: np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6), grads, expected)


def test_chunked_temp_memory_is_lower_and_within_the_bound(setup, steps):
    params = setup[-1].params["params"]["trunk"]
    shared = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
    assert shared == sum((n_in + 1) * n for n_in, n in zip((IN, *WIDTHS), WIDTHS))
    jacobian, cotangents = 4 * T * shared, 4 * T * B * WIDTHS[-1]
    per_task = 4 * (shared + 2 * B * sum(WIDTHS))
    temp = {k: c.memory_analysis().temp_size_in_bytes for k, c in steps.items()}
    assert temp[CHUNK] < temp[None]
    for k, tasks_at_once in ((None, T), (CHUNK, CHUNK)):
        assert temp[k] <= 3 * jacobian + 2 * cotangents + tasks_at_once * per_task
