"""Tests of the multi-task architectures: MMoE/OMoE, CGC/PLE, DSelect-k, cross-stitch, MTAN.

Every forward pass is checked against an independent float64 numpy computation
from the flax parameters; the ``shared`` regex of every model against the
parameters that several tasks' gradients actually reach.
"""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_models import _init, _np, _rand, np_conv_same, np_dense, np_max_pool, np_relu

import mtl_jax as mtl
from mtl_jax.jacobian import keep, per_task_grads, shared_mask
from mtl_jax.models import (
    CGC,
    MTAN,
    PLE,
    ConvTrunk,
    CrossStitch,
    DSelectKGates,
    HardSharing,
    MLPTrunk,
    MMoE,
    StackedHeads,
    selector_entropy,
)
from mtl_jax.models.dselect_k import smooth_step
from mtl_jax.tree import path_str

RTOL, ATOL = 1e-5, 1e-5
NAMES = ("a", "b")
E, H, F = 3, 5, 3            # experts, expert width, classes
TASKS = mtl.Tasks([mtl.classification(n, F) for n in NAMES])
VECTOR, IMAGE = (4,), (8, 8, 1)


def _dselect(per_example, k=2, gamma=1.0):
    return functools.partial(DSelectKGates, k=k, gamma=gamma, per_example=per_example)


# name -> (model factory, input shape of one example)
ARCHS = {
    "mmoe": (lambda: MMoE(MLPTrunk((H,)), NAMES, F, num_experts=E, tower_features=(2,)), VECTOR),
    "omoe": (lambda: MMoE(MLPTrunk((H,)), NAMES, F, num_experts=E, one_gate=True), VECTOR),
    "cgc": (lambda: CGC(MLPTrunk((H,)), NAMES, F, num_shared_experts=2, num_task_experts=2),
            VECTOR),
    "ple": (lambda: PLE(MLPTrunk((H,)), NAMES, F, num_shared_experts=2, num_task_experts=1,
                        levels=3, tower_features=(2,)), VECTOR),
    "dselect_k": (lambda: MMoE(MLPTrunk((H,)), NAMES, F, num_experts=E, gate=_dselect(True)),
                  VECTOR),
    "dselect_k_static": (lambda: MMoE(MLPTrunk((H,)), NAMES, F, num_experts=4,
                                      gate=_dselect(False)), VECTOR),
    "ple_dselect_k": (lambda: PLE(MLPTrunk((H,)), NAMES, F, num_shared_experts=2, levels=2,
                                  gate=_dselect(True)), VECTOR),
    "cross_stitch_mlp": (lambda: CrossStitch(MLPTrunk((H, 4)), NAMES, F), VECTOR),
    "cross_stitch_conv": (lambda: CrossStitch(ConvTrunk((2, 3), (4,)), NAMES, F,
                                              per_channel=True), IMAGE),
    "mtan": (lambda: MTAN(ConvTrunk((2, 3), (4,)), NAMES, F), IMAGE),
}


def _setup(name, batch=6, seed=0):
    factory, shape = ARCHS[name]
    model = factory()
    x = _rand(seed, (batch, *shape))
    return model, _init(model, jnp.zeros((1, *shape)), seed=seed), x


def _labels(x, seed=0):
    """Labels of a fixed random linear teacher per task: learnable from ``x``."""
    rng = np.random.default_rng(seed)
    flat = x.reshape(len(x), -1)
    return {n: np.argmax(flat @ rng.normal(size=(flat.shape[1], F)), 1).astype(np.int32)
            for n in NAMES}


# --------------------------------------------------------------------------- numpy references

def np_softmax(v):
    v = np.exp(v - v.max(-1, keepdims=True))
    return v / v.sum(-1, keepdims=True)


def np_expert(x, p, index):
    """One expert of ``MLPTrunk((H,))``: ``index`` selects it in the stacked parameters."""
    d = p["Dense_0"]
    return np_relu(x.reshape(len(x), -1) @ d["kernel"][index] + d["bias"][index])


def np_tower(h, p, t):
    if "MLPTrunk_0" in p:
        d = p["MLPTrunk_0"]["Dense_0"]
        h = np_relu(h @ d["kernel"][t] + d["bias"][t])
    return h @ p["Dense_0"]["kernel"][t] + p["Dense_0"]["bias"][t]


def np_smooth_step(t, gamma):
    cubic = -2 * t ** 3 / gamma ** 3 + 3 * t / (2 * gamma) + 0.5
    return np.where(t <= -gamma / 2, 0.0, np.where(t >= gamma / 2, 1.0, cubic))


def np_dselect_k(x, p, g, num_experts, gamma=1.0):
    """Gate ``g``'s expert weights ``[B or 1, E]`` and selectors ``[B or 1, k, E]``."""
    m = math.ceil(math.log2(num_experts))
    codes = [[int(c) for c in np.binary_repr(e, m)] if m else [] for e in range(num_experts)]
    if "z_logits" in p:
        z, w = p["z_logits"][g][None], p["w_logits"][g][None]
    else:
        z = np.einsum("bd,dkm->bkm", x, p["z_kernel"][g]) + p["z_bias"][g]
        w = x @ p["w_kernel"][g] + p["w_bias"][g]
    s = np_smooth_step(z, gamma)
    r = np.ones((*z.shape[:2], num_experts))
    for e, code in enumerate(codes):
        for j, bit in enumerate(code):
            r[..., e] *= s[..., j] if bit else 1 - s[..., j]
    return np.einsum("bk,bke->be", np_softmax(w), r), r


def np_gate(x, p, g, num_experts):
    if "kernel" in p:
        return np_softmax(x @ p["kernel"][g])
    return np_dselect_k(x, p, g, num_experts)[0]


def np_mmoe(x, p, num_experts, one_gate=False):
    x = x.reshape(len(x), -1)
    experts = [np_expert(x, p["shared_experts"]["expert"], e) for e in range(num_experts)]
    out = {}
    for t, name in enumerate(NAMES):
        gate = (p["shared_gate"], 0) if one_gate else (p["task_gates"], t)
        w = np_gate(x, *gate, num_experts)
        mixed = sum(w[:, [e]] * experts[e] for e in range(num_experts))
        out[name] = np_tower(mixed, p["towers"], t)
    return out


def np_ple(x, p, levels, num_shared, num_own):
    shared = x.reshape(len(x), -1)
    tasks = [shared] * len(NAMES)
    for j in range(levels):
        q = p[f"level_{j}"]
        common = [np_expert(shared, q["shared_experts"]["expert"], e) for e in range(num_shared)]
        own = [[np_expert(tasks[t], q["task_experts"]["expert"], (t, e)) for e in range(num_own)]
               for t in range(len(NAMES))]
        outputs = []
        for t in range(len(NAMES)):
            candidates = own[t] + common
            w = np_gate(tasks[t], q["task_gates"], t, len(candidates))
            outputs.append(sum(w[:, [i]] * c for i, c in enumerate(candidates)))
        if j < levels - 1:
            candidates = [e for row in own for e in row] + common
            w = np_gate(shared, q["shared_gate"], 0, len(candidates))
            shared = sum(w[:, [i]] * c for i, c in enumerate(candidates))
        tasks = outputs
    return {n: np_tower(tasks[t], p["towers"], t) for t, n in enumerate(NAMES)}


def np_cross_stitch(x, p, trunk):
    conv = isinstance(trunk, ConvTrunk)
    stages = ([("conv", c) for c in trunk.conv_features] + [("dense", w) for w in
              trunk.dense_features]) if conv else [("dense", w) for w in trunk.features]
    h = [np.asarray(x, np.float64)] * len(NAMES)
    for i, (kind, _) in enumerate(stages):
        col = p[f"column_{i}"]
        if kind == "conv":
            h = [np_max_pool(np_relu(np_conv_same(v, col["kernel"][t], col["bias"][t])))
                 for t, v in enumerate(h)]
        else:
            h = [np_relu(v.reshape(len(v), -1) @ col["kernel"][t] + col["bias"][t])
                 for t, v in enumerate(h)]
        alpha = p["stitch_out" if i == len(stages) - 1 else f"stitch_{i}"]["alpha"]
        if alpha.ndim == 3:   # per channel: alpha[c, t, s] on the last axis
            h = [sum(alpha[:, t, s] * v for s, v in enumerate(h)) for t in range(len(NAMES))]
        else:
            h = [sum(alpha[t, s] * v for s, v in enumerate(h)) for t in range(len(NAMES))]
    return {n: h[t].reshape(len(x), -1) @ p["heads"]["kernel"][t] + p["heads"]["bias"][t]
            for t, n in enumerate(NAMES)}


def np_mtan(x, p, trunk):
    x = np.asarray(x, np.float64)
    attended = None
    for j, _ in enumerate(trunk.conv_features):
        conv = p[f"shared_conv_{j}"]
        shared = np_relu(np_conv_same(x, conv["kernel"], conv["bias"]))
        features = []
        for t in range(len(NAMES)):
            inputs = shared
            if attended is not None:
                block = p[f"shared_block_{j}"]
                previous = np_max_pool(np_relu(np_conv_same(attended[t], block["kernel"],
                                                            block["bias"])))
                inputs = np.concatenate([shared, previous], axis=-1)
            a = p[f"attention_{j}"]
            g = np_relu(inputs @ a["g"]["kernel"][t] + a["g"]["bias"][t])
            mask = 1 / (1 + np.exp(-(g @ a["h"]["kernel"][t] + a["h"]["bias"][t])))
            features.append(mask * shared)
        attended = features
        x = np_max_pool(shared)
    out = {}
    for t, name in enumerate(NAMES):
        z = np_max_pool(attended[t]).reshape(len(x), -1)
        for i, _ in enumerate(trunk.dense_features):
            z = np_relu(np_dense(z, p[f"shared_dense_{i}"]))
        out[name] = z @ p["heads"]["kernel"][t] + p["heads"]["bias"][t]
    return out


def np_reference(name, model, x, p):
    if name in ("mmoe", "omoe", "dselect_k", "dselect_k_static"):
        return np_mmoe(x, p, model.num_experts, one_gate=model.one_gate)
    if name in ("cgc", "ple", "ple_dselect_k"):
        return np_ple(x, p, model.levels, model.num_shared_experts, model.num_task_experts)
    if name.startswith("cross_stitch"):
        return np_cross_stitch(x, p, model.trunk)
    return np_mtan(x, p, model.trunk)


# --------------------------------------------------------------------------- every architecture

@functools.cache
def _evaluated(name):
    """Outputs, the gradient of the summed task losses and the per-task gradients (one jit)."""
    model, params, x = _setup(name, batch=8)
    # DSelect-k starts with unsaturated smooth-steps (z near 0): no expert is cut off yet
    params = jax.tree_util.tree_map_with_path(
        lambda path, v: v * 0.01 if "/z_" in path_str(path) else v, params)
    y = _labels(x)

    @jax.jit
    def evaluate(p):
        jac = per_task_grads(lambda q: TASKS.losses(model.apply(q, x), y), p)[1]
        return model.apply(p, x), model.apply(p, x, task="b"), jac

    out, selected, jac = evaluate(params)
    # the gradient of the summed task losses: the per-task gradients' sum
    grad = jax.tree_util.tree_map(lambda j: j.sum(0), jac)
    return model, params, x, out, selected, grad, jac


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_outputs_match_numpy_float64_and_task_selection(name):
    model, params, x, out, selected, _, _ = _evaluated(name)
    assert tuple(model.names) == NAMES
    assert list(out) == list(NAMES)
    expected = np_reference(name, model, x, _np(params["params"]))
    for task in NAMES:
        assert out[task].shape == (len(x), F)
        np.testing.assert_allclose(np.asarray(out[task]), expected[task], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(selected), np.asarray(out["b"]), rtol=1e-6, atol=1e-6)
    assert not np.allclose(expected["a"], expected["b"])


def _stacked_axes(path):
    """How many leading axes of a leaf index experts, tasks or gates."""
    if "task_experts" in path:
        return 2
    stacked = ("experts", "gate", "towers", "column_", "attention_", "heads")
    return 1 if any(part in path for part in stacked) else 0


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_gradients_reach_every_expert_and_gate_and_shared_regex_is_exact(name):
    model, params, _, _, _, grad, jac = _evaluated(name)
    mask = shared_mask(params, model.shared)
    for (path, g), j, is_shared in zip(jax.tree_util.tree_flatten_with_path(grad)[0],
                                       jax.tree_util.tree_leaves(jac),
                                       jax.tree_util.tree_leaves(mask)):
        path, g, j = path_str(path), np.asarray(g), np.asarray(j)
        # every expert / task / gate slice gets a gradient from the summed loss
        slices = g.reshape(int(np.prod(g.shape[:_stacked_axes(path)])), -1)
        assert np.all(np.linalg.norm(slices, axis=1) > 0), path
        # shared exactly where some coordinate gets a gradient from two or more tasks
        several = np.any((j != 0).sum(0) >= 2)
        assert is_shared == several, (path, is_shared)


def _state(model, params, optimizer, aggregator):
    """A train state around given parameters (what ``init_state`` builds from ``model.init``)."""
    return mtl.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
        loss_weights=jnp.ones(len(NAMES)), penalty_weight=jnp.zeros(()),
        aggregator_state=aggregator.init(keep(params, shared_mask(params, model.shared))))


@pytest.mark.parametrize("name, method", [
    ("mmoe", "ew"), ("ple", "ew"), ("cross_stitch_mlp", "mgda"), ("cross_stitch_conv", "ew"),
    ("mtan", "ew")])
def test_training_lowers_the_loss(name, method):
    factory, shape = ARCHS[name]
    model = factory()
    x = _rand(1, (32, *shape))
    batch = {"x": x, "y": _labels(x, seed=1)}
    optimizer = optax.adam(3e-2)
    aggregator, wrt = mtl.aggregators.get(method, len(NAMES))
    state = _state(model, _init(model, x[:1], seed=1), optimizer, aggregator)
    knobs = {"aggregator": aggregator, "wrt": wrt} if wrt == "parameters" else {}
    step = jax.jit(mtl.make_train_step(model, TASKS, optimizer, shared=model.shared, **knobs))
    losses = []
    for _ in range(25):
        state, logs = step(state, batch)
        losses.append(float(logs["loss"]))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses


def test_init_state_independent_experts_gates_towers_and_mgda_on_mmoe():
    model = ARCHS["mmoe"][0]()
    x = _rand(2, (32, 4))
    batch = {"x": x, "y": _labels(x, seed=2)}
    optimizer = optax.adam(3e-2)
    aggregator, wrt = mtl.aggregators.get("mgda", len(NAMES))
    state = mtl.init_state(model, TASKS, jax.random.key(0), batch, optimizer,
                           aggregator=aggregator, shared=model.shared)
    params = state.params["params"]
    for stack in (params["shared_experts"]["expert"]["Dense_0"]["kernel"],
                  params["task_gates"]["kernel"], params["towers"]["Dense_0"]["kernel"]):
        stack = np.asarray(stack)                   # every copy has its own random draw
        assert all(not np.allclose(stack[i], stack[j]) for i in range(len(stack))
                   for j in range(i))
    step = jax.jit(mtl.make_train_step(model, TASKS, optimizer, aggregator=aggregator, wrt=wrt,
                                       shared=model.shared))
    losses = []
    for _ in range(25):
        state, logs = step(state, batch)
        losses.append(float(logs["loss"]))
    assert losses[-1] < 0.8 * losses[0], losses


def test_cross_stitch_units_start_near_identity():
    model = CrossStitch(MLPTrunk((2, 2)), ("a", "b", "c"), F, alpha_self=0.8)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 3)))["params"]
    for unit in ("stitch_0", "stitch_out"):     # the paper's (α_S, α_D) initialisation
        np.testing.assert_allclose(params[unit]["alpha"], 0.1 + 0.7 * np.eye(3), rtol=1e-6)
    assert not np.allclose(params["column_0"]["kernel"][0], params["column_0"]["kernel"][1])


# --------------------------------------------------------------------------- layouts

def _shapes(model, x):
    params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    return {path_str(p): tuple(v.shape) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def test_moe_parameter_layouts():
    x = jnp.zeros((2, 4))
    assert _shapes(ARCHS["mmoe"][0](), x) == {
        "shared_experts/expert/Dense_0/kernel": (E, 4, H),
        "shared_experts/expert/Dense_0/bias": (E, H),
        "task_gates/kernel": (2, 4, E),
        "towers/MLPTrunk_0/Dense_0/kernel": (2, H, 2),
        "towers/MLPTrunk_0/Dense_0/bias": (2, 2),
        "towers/Dense_0/kernel": (2, 2, F),
        "towers/Dense_0/bias": (2, F)}
    assert _shapes(ARCHS["omoe"][0](), x)["shared_gate/kernel"] == (1, 4, E)
    ple = _shapes(ARCHS["ple"][0](), x)
    assert ple["level_0/task_experts/expert/Dense_0/kernel"] == (2, 1, 4, H)
    assert ple["level_1/task_experts/expert/Dense_0/kernel"] == (2, 1, H, H)
    assert ple["level_1/shared_experts/expert/Dense_0/kernel"] == (2, H, H)
    assert ple["level_0/task_gates/kernel"] == (2, 4, 1 + 2)
    assert ple["level_1/shared_gate/kernel"] == (1, H, 2 * 1 + 2)
    assert "level_2/shared_gate/kernel" not in ple           # no shared gate at the last level
    dselect = _shapes(ARCHS["dselect_k"][0](), x)
    assert {k: v for k, v in dselect.items() if k.startswith("task_gates")} == {
        "task_gates/z_kernel": (2, 4, 2, 2), "task_gates/z_bias": (2, 2, 2),
        "task_gates/w_kernel": (2, 4, 2), "task_gates/w_bias": (2, 2)}
    static = _shapes(ARCHS["dselect_k_static"][0](), x)
    assert static["task_gates/z_logits"] == (2, 2, 2) and static["task_gates/w_logits"] == (2, 2)


def test_cross_stitch_and_mtan_parameter_layouts():
    x = jnp.zeros((2, *IMAGE))
    cross = _shapes(ARCHS["cross_stitch_conv"][0](), x)
    assert cross["column_0/kernel"] == (2, 3, 3, 1, 2)
    assert cross["column_1/kernel"] == (2, 3, 3, 2, 3)
    assert cross["column_2/kernel"] == (2, 2 * 2 * 3, 4)
    assert cross["stitch_0/alpha"] == (2, 2, 2) and cross["stitch_1/alpha"] == (3, 2, 2)
    assert cross["stitch_out/alpha"] == (4, 2, 2) and cross["heads/kernel"] == (2, 4, F)
    mtan = _shapes(ARCHS["mtan"][0](), x)
    assert mtan["shared_conv_0/kernel"] == (3, 3, 1, 2)
    assert mtan["shared_block_1/kernel"] == (3, 3, 2, 3)
    assert mtan["attention_0/g/kernel"] == (2, 2, 2)
    assert mtan["attention_1/g/kernel"] == (2, 3 + 3, 3)
    assert mtan["attention_1/h/kernel"] == (2, 3, 3)
    assert mtan["shared_dense_0/kernel"] == (2 * 2 * 3, 4) and mtan["heads/kernel"] == (2, 4, F)


def test_ple_shared_regex_follows_the_levels():
    shared = {levels: PLE(MLPTrunk((H,)), NAMES, F, levels=levels).shared for levels in (1, 2, 4)}
    assert CGC(MLPTrunk((H,)), NAMES, F).shared == shared[1]
    assert re.search(shared[2], "params/level_0/task_experts/expert/Dense_0/kernel")
    assert not re.search(shared[2], "params/level_0/task_gates/kernel")
    assert re.search(shared[4], "params/level_1/task_gates/kernel")
    assert not re.search(shared[4], "params/level_2/task_gates/kernel")
    assert not re.search(shared[4], "params/level_3/task_experts/expert/Dense_0/kernel")


# --------------------------------------------------------------------------- DSelect-k

def test_smooth_step_matches_the_cubic_and_is_c1():
    t = np.linspace(-1.5, 1.5, 61)
    for gamma in (0.5, 2.0):
        np.testing.assert_allclose(smooth_step(jnp.asarray(t), gamma), np_smooth_step(t, gamma),
                                   atol=1e-6)
        slope = jax.vmap(jax.grad(lambda v, g=gamma: smooth_step(v, g)))
        edges = jnp.array([-gamma / 2, gamma / 2])
        np.testing.assert_allclose(slope(edges), [0.0, 0.0], atol=1e-6)   # C1 at the knots


@pytest.mark.parametrize("num_experts", [3, 4])
def test_dselect_k_sown_regularisers_and_static_penalty(num_experts):
    model = MMoE(MLPTrunk((H,)), NAMES, F, num_experts=num_experts, gate=_dselect(False))
    params = _init(model, jnp.zeros((1, 4)), seed=3)
    x = _rand(4, (5, 4))
    _, state = model.apply(params, x, mutable=["intermediates"])
    sown = state["intermediates"]["task_gates"]
    p = _np(params["params"])["task_gates"]
    selectors = [np_dselect_k(None, p, g, num_experts)[1] for g in range(len(NAMES))]
    entropy = sum(-(r * np.log(r + 1e-6)).sum() for r in selectors)
    np.testing.assert_allclose(sown["selector_entropy"][0], entropy, rtol=1e-5)
    np.testing.assert_allclose(selector_entropy(params, num_experts=num_experts), entropy,
                               rtol=1e-5)
    if num_experts == 4:
        assert "unreachable" not in sown
    else:
        np.testing.assert_allclose(sown["unreachable"][0],
                                   sum((1 / r.sum(-1)).sum() for r in selectors), rtol=1e-5)


def test_dselect_k_saturated_selectors_pick_at_most_k_experts():
    gates = DSelectKGates(num_gates=2, num_experts=8, k=2, per_example=False)
    params = {"params": {"z_logits": jnp.array([[[1.0, -1.0, 1.0], [-1.0, -1.0, 1.0]],
                                                 [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]]),
                         "w_logits": jnp.array([[0.0, 1.0], [0.3, -0.2]])}}
    weights = np.asarray(gates.apply(params, jnp.ones((3, 6))))
    assert weights.shape == (2, 3, 8)
    w = np.exp([0.0, 1.0]) / np.exp([0.0, 1.0]).sum()
    np.testing.assert_allclose(weights[0, 0], np.eye(8)[5] * w[0] + np.eye(8)[1] * w[1],
                               atol=1e-6)
    np.testing.assert_allclose(weights[1, 2], np.eye(8)[7], atol=1e-6)  # both chose expert 7


def test_dselect_k_trains_with_its_entropy_penalty_through_make_train_step():
    model = ARCHS["dselect_k_static"][0]()
    x = _rand(5, (32, 4))
    batch = {"x": x, "y": _labels(x, seed=5)}
    optimizer = optax.adam(3e-2)
    penalty = functools.partial(selector_entropy, num_experts=4)
    params = _init(model, x[:1], seed=5)
    params = jax.tree_util.tree_map_with_path(   # the official init: z near 0, entropy near max
        lambda path, v: v * 0.01 if "z_logits" in path_str(path) else v, params)
    state = _state(model, params, optimizer, mtl.aggregators.get("ew", len(NAMES))[0])
    state = state.replace(penalty_weight=jnp.asarray(0.1))
    step = jax.jit(mtl.make_train_step(model, TASKS, optimizer, penalty=penalty))
    logs = []
    for _ in range(25):
        state, log = step(state, batch)
        logs.append(log)
    assert float(logs[-1]["penalty"]) < 0.8 * float(logs[0]["penalty"])
    assert float(logs[-1]["task_losses"].sum()) < 0.8 * float(logs[0]["task_losses"].sum())


# --------------------------------------------------------------------------- bad input

def test_bad_construction_raises_value_errors_naming_the_problem():
    expert = MLPTrunk((H,))
    with pytest.raises(ValueError, match="num_experts >= 1, got 0"):
        MMoE(expert, NAMES, F, num_experts=0)
    for field in ("num_shared_experts", "num_task_experts", "levels"):
        with pytest.raises(ValueError, match=f"{field} >= 1, got 0"):
            PLE(expert, NAMES, F, **{field: 0})
    with pytest.raises(ValueError, match="k=4"):
        MMoE(expert, NAMES, F, num_experts=3, gate=_dselect(True, k=4))
    with pytest.raises(ValueError, match="k=4"):            # CGC gates see 1 + 2 experts
        CGC(expert, NAMES, F, num_shared_experts=2, gate=_dselect(True, k=4))
    with pytest.raises(ValueError, match="k=0"):
        DSelectKGates(2, 3, k=0)
    with pytest.raises(ValueError, match="gamma > 0"):
        DSelectKGates(2, 3, gamma=0.0)
    with pytest.raises(ValueError, match="distinct task names"):
        MMoE(expert, ("a", "a"), F)
    with pytest.raises(ValueError, match="distinct task names"):
        PLE(expert, (), F)
    with pytest.raises(ValueError, match="two or more tasks"):
        CrossStitch(expert, ("a",), F)
    with pytest.raises(ValueError, match="MLPTrunk or a ConvTrunk, got StackedHeads"):
        CrossStitch(StackedHeads(NAMES, 3), NAMES, F)
    with pytest.raises(ValueError, match="alpha_self"):
        CrossStitch(expert, NAMES, F, alpha_self=1.5)
    with pytest.raises(ValueError, match="needs a ConvTrunk, got MLPTrunk"):
        MTAN(expert, NAMES, F)
    with pytest.raises(ValueError, match="needs a ConvTrunk with conv stages"):
        MTAN(ConvTrunk(conv_features=()), NAMES, F)
    with pytest.raises(ValueError, match="no static DSelect-k gate"):
        selector_entropy(_init(ARCHS["dselect_k"][0](), jnp.zeros((1, 4))), num_experts=E)


@pytest.mark.parametrize("name", ["mmoe", "ple", "cross_stitch_conv", "mtan"])
def test_bad_inputs_raise_before_any_work(name):
    model, params, x = _setup(name)
    with pytest.raises(KeyError, match="'zz'"):             # a task with no gate / head
        model.apply(params, x, task="zz")
    with pytest.raises(ValueError, match="per-task inputs"):
        model.apply(params, {"a": x, "b": x})
    if name in ("cross_stitch_conv", "mtan"):
        with pytest.raises(ValueError, match="rank 4"):
            model.init(jax.random.key(0), x.reshape(len(x), -1))


def test_tasks_that_do_not_match_the_model_are_refused():
    model, _, x = _setup("mmoe")
    tasks = mtl.Tasks([mtl.classification(n, F) for n in ("a", "c")])
    batch = {"x": x, "y": {"a": np.zeros(len(x), np.int32), "c": np.zeros(len(x), np.int32)}}
    with pytest.raises(ValueError, match="model outputs"):
        mtl.init_state(model, tasks, jax.random.key(0), batch, optax.sgd(0.1))


def test_hard_sharing_is_not_an_mtan_trunk():
    with pytest.raises(ValueError, match="got HardSharing"):
        MTAN(HardSharing(MLPTrunk((H,)), StackedHeads(NAMES, F)), NAMES, F)
