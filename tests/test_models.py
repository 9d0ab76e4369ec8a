"""Tests of mtl_jax.models: trunks, heads, hard and soft sharing.

Every output is checked against an independent float64 numpy computation (or a
PyTorch port of the seed's SharedEncoder), using the flax parameters.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtl_jax.models import (
    ConvTrunk,
    HardSharing,
    MLPTrunk,
    SharedEncoder,
    SoftSharing,
    StackedHeads,
    TaskHeads,
)

RTOL, ATOL = 1e-5, 1e-5


def _np(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def _rand(seed, shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _init(module, *args, seed=0):
    """Random parameters of ``module.init``'s structure, drawn with numpy.

    ``jax.eval_shape`` gives the structure without compiling flax's random
    initialisers (slow on CPU); biases are non-zero so every term is exercised.
    """
    shapes = jax.eval_shape(module.init, jax.random.key(0), *args)
    rng = np.random.default_rng(seed)

    def draw(leaf):
        fan_in = np.prod(leaf.shape[:-1]) if len(leaf.shape) >= 2 else 4.0
        return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), jnp.float32)

    return jax.tree_util.tree_map(draw, shapes)


# --------------------------------------------------------------------------- numpy references

def np_relu(x):
    return np.maximum(x, 0.0)


def np_dense(x, p):
    return x @ p["kernel"] + p["bias"]


def np_conv_same(x, kernel, bias):
    """Cross-correlation with 'same' zero padding; x [B,H,W,C], kernel [kh,kw,C,O]."""
    kh, kw = kernel.shape[:2]
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    xp = np.pad(x, ((0, 0), (ph, kh - 1 - ph), (pw, kw - 1 - pw), (0, 0)))
    b, h, w, _ = x.shape
    out = np.zeros((b, h, w, kernel.shape[-1]))
    for i in range(h):
        for j in range(w):
            window = xp[:, i:i + kh, j:j + kw, :]                # [B, kh, kw, C]
            out[:, i, j, :] = np.einsum("bijc,ijco->bo", window, kernel)
    return out + bias


def np_max_pool(x, k=2):
    b, h, w, c = x.shape
    h2, w2 = h // k, w // k
    x = x[:, :h2 * k, :w2 * k]
    return x.reshape(b, h2, k, w2, k, c).max(axis=(2, 4))


def np_conv_trunk(x, p, n_conv, n_dense):
    x = np.asarray(x, np.float64)
    for i in range(n_conv):
        c = p[f"Conv_{i}"]
        x = np_max_pool(np_relu(np_conv_same(x, c["kernel"], c["bias"])))
    x = x.reshape(x.shape[0], -1)
    for i in range(n_dense):
        x = np_relu(np_dense(x, p[f"Dense_{i}"]))
    return x


def np_mlp(x, p, n, act=np_relu):
    x = np.asarray(x, np.float64).reshape(x.shape[0], -1)
    for i in range(n):
        x = act(np_dense(x, p[f"Dense_{i}"]))
    return x


def _count_dot_outputs(jaxpr):
    """Output shapes of every dot_general/conv in a jaxpr, sub-jaxprs included."""
    shapes = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
            shapes.extend(tuple(v.aval.shape) for v in eqn.outvars)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    shapes.extend(_count_dot_outputs(inner))
    return shapes


# --------------------------------------------------------------------------- ConvTrunk

def test_conv_trunk_matches_numpy_float64():
    trunk = ConvTrunk(conv_features=(4, 6), dense_features=(5,))
    x = _rand(0, (2, 8, 8, 3))
    params = _init(trunk, x)
    out = trunk.apply(params, x)
    assert out.shape == (2, 5)
    expected = np_conv_trunk(x, _np(params["params"]), n_conv=2, n_dense=1)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=RTOL, atol=ATOL)
    assert np.any(expected > 0)  # the ReLU output is not trivially zero


def test_conv_trunk_odd_size_and_no_dense_matches_numpy():
    # 6x6 -> pool 3x3 -> pool 1x1 (floor): exercises 'VALID' pooling on odd sizes
    trunk = ConvTrunk(conv_features=(3, 2), dense_features=())
    x = _rand(1, (1, 6, 6, 2))
    params = _init(trunk, x, seed=1)
    expected = np_conv_trunk(x, _np(params["params"]), n_conv=2, n_dense=0)
    assert expected.shape == (1, 2)
    np.testing.assert_allclose(np.asarray(trunk.apply(params, x)), expected,
                               rtol=RTOL, atol=ATOL)


def test_default_conv_trunk_param_shapes():
    params = jax.eval_shape(SharedEncoder().init, jax.random.key(0),
                            jnp.zeros((1, 32, 32, 3)))["params"]
    shapes = jax.tree_util.tree_map(lambda a: a.shape, params)
    assert shapes == {
        "Conv_0": {"kernel": (3, 3, 3, 32), "bias": (32,)},
        "Conv_1": {"kernel": (3, 3, 32, 64), "bias": (64,)},
        "Dense_0": {"kernel": (64 * 8 * 8, 256), "bias": (256,)},
    }


def test_default_conv_trunk_matches_pytorch_shared_encoder():
    torch = pytest.importorskip("torch")
    tnn = torch.nn

    class TorchSharedEncoder(tnn.Module):  # the seed document's model, NCHW
        def __init__(self):
            super().__init__()
            self.conv1 = tnn.Conv2d(3, 32, kernel_size=3, padding=1)
            self.conv2 = tnn.Conv2d(32, 64, kernel_size=3, padding=1)
            self.pool = tnn.MaxPool2d(2, 2)
            self.fc = tnn.Linear(64 * 8 * 8, 256)

        def forward(self, x):
            x = self.pool(torch.relu(self.conv1(x)))
            x = self.pool(torch.relu(self.conv2(x)))
            x = x.view(x.size(0), -1)
            return torch.relu(self.fc(x))

    trunk = ConvTrunk()
    x = _rand(2, (2, 32, 32, 3))
    params = _init(trunk, x, seed=2)
    p = _np(params["params"])

    ref = TorchSharedEncoder().double()
    with torch.no_grad():
        for name, conv in (("Conv_0", ref.conv1), ("Conv_1", ref.conv2)):
            # flax [kh, kw, in, out] -> torch [out, in, kh, kw]
            conv.weight.copy_(torch.from_numpy(p[name]["kernel"].transpose(3, 2, 0, 1).copy()))
            conv.bias.copy_(torch.from_numpy(p[name]["bias"]))
        # flax flattens (H, W, C), torch flattens (C, H, W): permute the input rows.
        k = p["Dense_0"]["kernel"].reshape(8, 8, 64, 256)              # [H, W, C, out]
        ref.fc.weight.copy_(torch.from_numpy(
            k.transpose(3, 2, 0, 1).reshape(256, 64 * 8 * 8).copy()))  # [out, C*H*W]
        ref.fc.bias.copy_(torch.from_numpy(p["Dense_0"]["bias"]))
        expected = ref(torch.from_numpy(
            np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float64))).numpy()

    out = np.asarray(trunk.apply(params, x))
    assert out.shape == (2, 256)
    assert np.count_nonzero(expected) > 10
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_conv_trunk_rejects_non_image_input():
    with pytest.raises(ValueError, match="rank 4"):
        ConvTrunk(conv_features=(2,), dense_features=(3,)).init(
            jax.random.key(0), jnp.zeros((8, 8, 3)))


# --------------------------------------------------------------------------- MLPTrunk

@pytest.mark.parametrize("activation,np_act", [(nn.relu, np_relu), (nn.tanh, np.tanh)])
def test_mlp_trunk_matches_numpy_and_flattens(activation, np_act):
    trunk = MLPTrunk(features=(7, 4), activation=activation)
    x = _rand(3, (3, 2, 5))  # flattened to [3, 10]
    params = _init(trunk, x, seed=3)
    assert params["params"]["Dense_0"]["kernel"].shape == (10, 7)
    expected = np_mlp(x, _np(params["params"]), 2, np_act)
    np.testing.assert_allclose(np.asarray(trunk.apply(params, x)), expected,
                               rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------- StackedHeads

NAMES = ("a", "b", "c")


@pytest.fixture(scope="module")
def stacked():
    heads = StackedHeads(names=NAMES, features=4)
    return heads, _init(heads, jnp.zeros((1, 5)), seed=4)


def test_stacked_heads_param_shapes_and_lecun_init_per_task():
    heads = StackedHeads(names=NAMES, features=32)
    p = jax.jit(heads.init)(jax.random.key(4), jnp.zeros((1, 64)))["params"]
    assert p["kernel"].shape == (3, 64, 32) and p["bias"].shape == (3, 32)
    np.testing.assert_array_equal(np.asarray(p["bias"]), 0.0)
    k = np.asarray(p["kernel"], np.float64)
    # LeCun normal with the task axis as a batch axis: fan_in = D = 64 (not T * D)
    for t in range(3):
        assert np.std(k[t]) == pytest.approx(1 / np.sqrt(64), rel=0.1)
    assert not np.allclose(k[0], k[1]) and not np.allclose(k[1], k[2])


def test_stacked_heads_shared_input_matches_numpy(stacked):
    heads, params = stacked
    p = _np(params["params"])
    z = _rand(6, (2, 5))
    out = heads.apply(params, z)
    assert list(out) == list(NAMES)
    for t, name in enumerate(NAMES):
        expected = z.astype(np.float64) @ p["kernel"][t] + p["bias"][t]
        np.testing.assert_allclose(np.asarray(out[name]), expected, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(np.asarray(heads.apply(params, z, task=name)),
                                   np.asarray(out[name]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sizes", [(3, 3, 3), (1, 4, 2)])
def test_stacked_heads_per_task_inputs_match_numpy(stacked, sizes):
    heads, params = stacked
    p = _np(params["params"])
    z = {name: _rand(10 + t, (n, 5)) for t, (name, n) in enumerate(zip(NAMES, sizes))}
    z = {k: z[k] for k in reversed(NAMES)}  # dict order must not matter
    out = heads.apply(params, z)
    for t, name in enumerate(NAMES):
        expected = z[name].astype(np.float64) @ p["kernel"][t] + p["bias"][t]
        np.testing.assert_allclose(np.asarray(out[name]), expected, rtol=RTOL, atol=ATOL)


def test_stacked_heads_errors(stacked):
    heads, params = stacked
    with pytest.raises(KeyError, match="'nope'"):
        heads.apply(params, jnp.zeros((2, 5)), task="nope")
    with pytest.raises(KeyError, match="per-task inputs"):
        heads.apply(params, {"a": jnp.zeros((2, 5)), "b": jnp.zeros((2, 5))})
    with pytest.raises(KeyError, match="per-task inputs"):
        heads.apply(params, {n: jnp.zeros((2, 5)) for n in ("a", "b", "c", "d")})
    with pytest.raises(ValueError, match="shared input"):
        heads.apply(params, {n: jnp.zeros((2, 5)) for n in NAMES}, task="a")


# --------------------------------------------------------------------------- TaskHeads

def _task_heads():
    return TaskHeads({"digit": nn.Dense(10), "size": nn.Dense(1)})


def test_task_heads_shapes_values_and_selection():
    heads = _task_heads()
    z = _rand(7, (3, 6))
    params = _init(heads, z, seed=7)
    p = _np(params["params"])
    out = heads.apply(params, z)
    assert {k: v.shape for k, v in out.items()} == {"digit": (3, 10), "size": (3, 1)}
    for name in ("digit", "size"):
        expected = np_dense(z.astype(np.float64), p[f"heads_{name}"])
        np.testing.assert_allclose(np.asarray(out[name]), expected, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(np.asarray(heads.apply(params, z, task=name)),
                                   expected, rtol=RTOL, atol=ATOL)
    # per-task inputs with unequal batch sizes
    zs = {"size": _rand(8, (2, 6)), "digit": _rand(9, (4, 6))}
    out = heads.apply(params, zs)
    for name in ("digit", "size"):
        expected = np_dense(zs[name].astype(np.float64), p[f"heads_{name}"])
        np.testing.assert_allclose(np.asarray(out[name]), expected, rtol=RTOL, atol=ATOL)
    with pytest.raises(KeyError, match="'colour'"):
        heads.apply(params, z, task="colour")
    with pytest.raises(KeyError, match="per-task inputs"):
        heads.apply(params, {"digit": z})


# --------------------------------------------------------------------------- HardSharing

def _hard(heads):
    model = HardSharing(MLPTrunk((6,)), heads)
    return model, _init(model, jnp.zeros((1, 4)), seed=11)


def _np_hard(x, p, kind):
    z = np_mlp(x, p["trunk"], 1)
    if kind == "stacked":
        return {n: z @ p["heads"]["kernel"][t] + p["heads"]["bias"][t]
                for t, n in enumerate(("a", "b"))}
    return {n: np_dense(z, p["heads"][f"heads_{n}"]) for n in ("a", "b")}


HEADS = {
    "stacked": lambda: StackedHeads(("a", "b"), 3),
    "task": lambda: TaskHeads({"a": nn.Dense(3), "b": nn.Dense(2)}),
}


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_hard_sharing_single_input_and_task_selection(kind):
    model, params = _hard(HEADS[kind]())
    assert model.names == ("a", "b")
    x = _rand(12, (5, 4))
    out = model.apply(params, x)
    assert sorted(out) == ["a", "b"]
    expected = _np_hard(x, _np(params["params"]), kind)
    for name in ("a", "b"):
        np.testing.assert_allclose(np.asarray(out[name]), expected[name], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(np.asarray(model.apply(params, x, task=name)),
                                   np.asarray(out[name]), rtol=1e-6, atol=1e-6)
    with pytest.raises(KeyError, match="'zz'"):
        model.apply(params, x, task="zz")
    with pytest.raises(ValueError, match="shared input"):
        model.apply(params, {"a": x, "b": x}, task="a")


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_hard_sharing_task_selection_evaluates_only_that_head(kind):
    model, params = _hard(HEADS[kind]())
    x = jnp.asarray(_rand(13, (5, 4)))
    trunk_dots = _count_dot_outputs(
        jax.make_jaxpr(lambda p, x: model.trunk.apply({"params": p}, x))(
            params["params"]["trunk"], x).jaxpr)
    selected = _count_dot_outputs(
        jax.make_jaxpr(lambda p, x: model.apply(p, x, task="a"))(params, x).jaxpr)
    full = _count_dot_outputs(jax.make_jaxpr(lambda p, x: model.apply(p, x))(params, x).jaxpr)
    size = lambda shapes: sum(int(np.prod(s)) for s in shapes)
    # the selected jaxpr computes the trunk plus exactly one [5, 3] head product
    assert size(selected) == size(trunk_dots) + 5 * 3
    assert size(full) > size(selected)
    # and the other head's parameters do not reach the result
    if kind == "stacked":
        heads = params["params"]["heads"]
        poisoned = {"kernel": heads["kernel"].at[1].set(jnp.nan),
                    "bias": heads["bias"].at[1].set(jnp.nan)}
    else:
        poisoned = {**params["params"]["heads"], "heads_b": jax.tree_util.tree_map(
            lambda w: jnp.full_like(w, jnp.nan), params["params"]["heads"]["heads_b"])}
    bad = {"params": {**params["params"], "heads": poisoned}}
    assert np.all(np.isnan(np.asarray(model.apply(bad, x)["b"])))
    np.testing.assert_array_equal(np.asarray(model.apply(bad, x, task="a")),
                                  np.asarray(model.apply(params, x, task="a")))


@settings(max_examples=4, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.sampled_from(sorted(HEADS)))
def test_hard_sharing_per_task_inputs_do_not_leak(n_a, n_b, kind):
    model, params = _hard(HEADS[kind]())
    p = _np(params["params"])
    xa, xb = _rand(n_a, (n_a, 4)), _rand(10 + n_b, (n_b, 4))
    out = model.apply(params, {"b": xb, "a": xa})
    assert out["a"].shape[0] == n_a and out["b"].shape[0] == n_b
    for name, x in (("a", xa), ("b", xb)):
        expected = _np_hard(x, p, kind)[name]  # that task's input alone
        np.testing.assert_allclose(np.asarray(out[name]), expected, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(np.asarray(out[name]),
                                   np.asarray(model.apply(params, x, task=name)),
                                   rtol=1e-5, atol=1e-5)


def test_hard_sharing_per_task_inputs_wrong_tasks():
    model, params = _hard(HEADS["stacked"]())
    with pytest.raises(KeyError, match="per-task inputs"):
        model.apply(params, {"a": jnp.zeros((2, 4)), "z": jnp.zeros((2, 4))})


# --------------------------------------------------------------------------- SoftSharing

TOWER = nn.Sequential([MLPTrunk((8,)), nn.Dense(3)])


@pytest.fixture(scope="module")
def soft():
    model = SoftSharing(TOWER, names=NAMES)
    # flax's own initialisation: each tower must get its own random draw
    params = jax.jit(model.init)(jax.random.key(14), jnp.zeros((1, 4)))
    return model, params


def _slice(params, t):
    return {"params": jax.tree_util.tree_map(lambda w: w[t], params["params"]["tower"])}


def _np_tower(x, p):
    h = np_mlp(x, p["layers_0"], 1)
    return np_dense(h, p["layers_1"])


def test_soft_sharing_params_stacked_and_distinct(soft):
    _, params = soft
    assert list(params["params"]) == ["tower"]
    leaves = jax.tree_util.tree_leaves(params["params"]["tower"])
    assert len(leaves) == 4 and all(leaf.shape[0] == 3 for leaf in leaves)
    k = np.asarray(params["params"]["tower"]["layers_1"]["kernel"])
    assert k.shape == (3, 8, 3)
    for s, t in ((0, 1), (0, 2), (1, 2)):
        assert not np.allclose(k[s], k[t])
        assert not np.allclose(params["params"]["tower"]["layers_0"]["Dense_0"]["kernel"][s],
                               params["params"]["tower"]["layers_0"]["Dense_0"]["kernel"][t])


def test_soft_sharing_shared_input_equals_plain_tower(soft):
    model, params = soft
    x = _rand(15, (5, 4))
    out = model.apply(params, x)
    assert list(out) == list(NAMES)
    for t, name in enumerate(NAMES):
        plain = np.asarray(TOWER.apply(_slice(params, t), x))
        np.testing.assert_allclose(np.asarray(out[name]), plain, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(out[name]),
                                   _np_tower(x, _np(_slice(params, t)["params"])),
                                   rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(np.asarray(model.apply(params, x, task=name)),
                                   np.asarray(out[name]), rtol=1e-6, atol=1e-6)
    assert not np.allclose(np.asarray(out["a"]), np.asarray(out["b"]))


def test_soft_sharing_per_task_inputs(soft):
    model, params = soft
    xs = {name: _rand(20 + t, (2, 4)) for t, name in enumerate(reversed(NAMES))}
    out = model.apply(params, xs)
    for t, name in enumerate(NAMES):
        expected = _np_tower(xs[name], _np(_slice(params, t)["params"]))
        np.testing.assert_allclose(np.asarray(out[name]), expected, rtol=RTOL, atol=ATOL)


def test_soft_sharing_errors(soft):
    model, params = soft
    x = jnp.zeros((2, 4))
    with pytest.raises(KeyError, match="'d'"):
        model.apply(params, x, task="d")
    with pytest.raises(KeyError, match="per-task inputs"):
        model.apply(params, {"a": x, "b": x})
    with pytest.raises(ValueError, match="shared input"):
        model.apply(params, {n: x for n in NAMES}, task="a")


def test_soft_sharing_conv_towers_match_numpy():
    # the seed's TaskNetwork per task: ConvTrunk + Dense(10), on tiny images
    tower = nn.Sequential([ConvTrunk(conv_features=(2,), dense_features=(4,)), nn.Dense(10)])
    model = SoftSharing(tower, names=("l", "r"))
    xs = {"l": _rand(30, (2, 4, 4, 3)), "r": _rand(31, (2, 4, 4, 3))}
    params = _init(model, xs, seed=16)
    assert params["params"]["tower"]["layers_0"]["Conv_0"]["kernel"].shape == (2, 3, 3, 3, 2)
    out = model.apply(params, xs)
    for t, name in enumerate(("l", "r")):
        p = _np(_slice(params, t)["params"])
        expected = np_dense(np_conv_trunk(xs[name], p["layers_0"], 1, 1), p["layers_1"])
        assert out[name].shape == (2, 10)
        np.testing.assert_allclose(np.asarray(out[name]), expected, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------- gradients

def test_gradients_reach_trunk_and_every_head():
    model, params = _hard(HEADS["stacked"]())
    x = jnp.asarray(_rand(40, (5, 4)))
    grads = jax.grad(lambda p: sum(jnp.sum(v) for v in model.apply(p, x).values()))(params)
    g = grads["params"]
    assert np.linalg.norm(g["trunk"]["Dense_0"]["kernel"]) > 0
    # closed form: d/dK_t sum(z K_t + b_t) = (sum_b z_b) 1^T and d/db_t = B
    z = np_mlp(np.asarray(x), _np(params["params"])["trunk"], 1)
    for t in range(2):
        np.testing.assert_allclose(np.asarray(g["heads"]["kernel"][t]),
                                   np.repeat(z.sum(0)[:, None], 3, axis=1),
                                   rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(np.asarray(g["heads"]["bias"][t]), np.full(3, 5.0))

    model, params = _hard(HEADS["task"]())
    grads = jax.grad(lambda p: sum(jnp.sum(v) for v in model.apply(p, x).values()))(params)
    for leaf in jax.tree_util.tree_leaves(grads):
        assert np.linalg.norm(np.asarray(leaf)) > 0


def test_soft_sharing_gradients_reach_every_tower(soft):
    model, params = soft
    x = jnp.asarray(_rand(41, (4, 4)))
    grads = jax.grad(lambda p: sum(jnp.sum(v) for v in model.apply(p, x).values()))(params)
    for leaf in jax.tree_util.tree_leaves(grads):
        for t in range(3):
            assert np.linalg.norm(np.asarray(leaf[t])) > 0
    # only task "b" in the loss: the other towers get exactly zero gradient
    grads = jax.grad(lambda p: jnp.sum(model.apply(p, x)["b"]))(params)
    for leaf in jax.tree_util.tree_leaves(grads):
        leaf = np.asarray(leaf)
        assert np.all(leaf[[0, 2]] == 0) and np.linalg.norm(leaf[1]) > 0


def test_max_pool_equals_flax_max_pool_and_its_gradient_reaches_the_maxima():
    from mtl_jax.models.trunks import max_pool

    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 6, 3)), jnp.float32)
    expected = nn.max_pool(x, (2, 2), strides=(2, 2))
    np.testing.assert_array_equal(max_pool(x, 2), expected)
    grad = jax.grad(lambda v: max_pool(v, 2).sum())(x)
    flax_grad = jax.grad(lambda v: nn.max_pool(v, (2, 2), strides=(2, 2)).sum())(x)
    np.testing.assert_array_equal(grad, flax_grad)  # no ties in random data


def test_soft_sharing_lowerings_agree_on_outputs_and_gradients():
    tower = nn.Sequential([ConvTrunk((4, 6), (5,)), nn.Dense(3)])
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 1)), jnp.float32)
    vmapped = SoftSharing(tower, ("a", "b", "c"), lowering="vmap")
    unrolled = SoftSharing(tower, ("a", "b", "c"), lowering="unroll")
    params = vmapped.init(jax.random.key(0), x)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params,
                           unrolled.init(jax.random.key(0), x))
    out_v, out_u = vmapped.apply(params, x), unrolled.apply(params, x)
    for name in ("a", "b", "c"):
        np.testing.assert_allclose(out_u[name], out_v[name], atol=1e-5)
    np.testing.assert_allclose(unrolled.apply(params, x, task="b"), out_v["b"], atol=1e-5)

    def loss(model):
        return lambda p: sum(jnp.sum(v ** 2) for v in model.apply(p, x).values())

    jax.tree_util.tree_map(lambda g, h: np.testing.assert_allclose(g, h, rtol=1e-4, atol=1e-5),
                           jax.grad(loss(vmapped))(params), jax.grad(loss(unrolled))(params))


def test_soft_sharing_unrolled_accepts_per_task_inputs_of_different_sizes():
    model = SoftSharing(nn.Dense(2), ("a", "b"), lowering="unroll")
    x = {"a": jnp.ones((3, 4)), "b": jnp.ones((5, 4))}
    params = model.init(jax.random.key(0), {"a": jnp.ones((3, 4)), "b": jnp.ones((3, 4))})
    out = model.apply(params, x)
    kernel = np.asarray(params["params"]["tower"]["kernel"])
    bias = np.asarray(params["params"]["tower"]["bias"])
    np.testing.assert_allclose(out["b"], np.ones((5, 4)) @ kernel[1] + bias[1], rtol=1e-6)
    with pytest.raises(ValueError, match="one shape"):
        SoftSharing(nn.Dense(2), ("a", "b"), lowering="vmap").apply(params, x)
    with pytest.raises(ValueError, match="unknown SoftSharing lowering"):
        SoftSharing(nn.Dense(2), ("a", "b"), lowering="pmap").apply(params, x)
