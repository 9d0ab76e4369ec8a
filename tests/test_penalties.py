"""Tests for mtl_jax.penalties against float64 NumPy references."""

from __future__ import annotations

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtl_jax.models import MLPTrunk, SoftSharing
from mtl_jax.penalties import l2, nuclear_norm, trace_norm

KINDS = ("laf", "tucker", "tt")
# A dense kernel, a 3-D leaf and a conv kernel T x 3 x 3 x C x F.
SHAPES = ((3, 5), (3, 4, 6), (3, 3, 3, 2, 4))


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


# --- NumPy references ------------------------------------------------------


def np_nuclear(matrix: np.ndarray) -> float:
    return float(np.linalg.svd(matrix, compute_uv=False).sum())


def np_unfoldings(leaf: np.ndarray, kind: str) -> list[np.ndarray]:
    if kind == "laf":
        return [leaf.reshape(leaf.shape[0], -1)]
    if kind == "tucker":
        return [np.moveaxis(leaf, m, 0).reshape(leaf.shape[m], -1) for m in range(leaf.ndim)]
    paper_order = np.moveaxis(leaf, 0, -1)  # D1, ..., Dk, T
    dims = paper_order.shape
    return [paper_order.reshape(int(np.prod(dims[:i])), int(np.prod(dims[i:])))
            for i in range(1, leaf.ndim)]


def np_trace_norm(leaves, kind, gamma=None) -> float:
    total = 0.0
    for leaf in leaves:
        mats = np_unfoldings(np.asarray(leaf, np.float64), kind)
        weights = np.ones(len(mats)) if gamma is None else gamma
        total += sum(g * np_nuclear(m) for g, m in zip(weights, mats))
    return total


def np_l2(leaves, pairwise=False) -> float:
    total = 0.0
    for leaf in leaves:
        leaf = np.asarray(leaf, np.float64)
        if pairwise:
            for s, t in itertools.combinations(range(leaf.shape[0]), 2):
                total += np.sum((leaf[s] - leaf[t]) ** 2)
        else:
            total += np.sum((leaf - leaf.mean(axis=0)) ** 2)
    return total


def random_params(seed: int, dtype=np.float64) -> dict:
    """Leaves of ranks 2, 3 and 5 sharing a task axis, plus a rank-1 bias."""
    rng = np.random.default_rng(seed)
    dense, mix, conv = SHAPES

    def leaf(shape):
        return jnp.asarray(rng.normal(size=shape), dtype)

    return {"params": {"tower": {
        "Dense_0": {"kernel": leaf(dense), "bias": leaf(dense[:1])},
        "Mix_0": {"kernel": leaf(mix)},
        "Conv_0": {"kernel": leaf(conv)},
    }}}


def selected_leaves(params: dict) -> list[np.ndarray]:
    tower = params["params"]["tower"]
    return [tower["Dense_0"]["kernel"], tower["Mix_0"]["kernel"], tower["Conv_0"]["kernel"]]


# --- Values against NumPy --------------------------------------------------


@pytest.mark.parametrize("pairwise", [False, True])
def test_l2_matches_numpy_f64(x64, pairwise):
    params = random_params(0)
    got = l2(params, pairwise=pairwise)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, np_l2(selected_leaves(params), pairwise), rtol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_trace_norm_matches_numpy_f64(x64, kind):
    params = random_params(1)
    got = trace_norm(params, kind=kind)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, np_trace_norm(selected_leaves(params), kind), rtol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_trace_norm_single_leaf_f64(x64, kind, shape):
    leaf = np.random.default_rng(2).normal(size=shape)
    got = trace_norm({"w": jnp.asarray(leaf)}, kind=kind)
    np.testing.assert_allclose(got, np_trace_norm([leaf], kind), rtol=1e-10)


@pytest.mark.parametrize("penalty, reference", [
    *[(functools.partial(trace_norm, kind=k), functools.partial(np_trace_norm, kind=k))
      for k in KINDS],
    (l2, np_l2),
    (functools.partial(l2, pairwise=True), functools.partial(np_l2, pairwise=True)),
], ids=[*KINDS, "l2", "l2_pairwise"])
def test_float32_and_jit(penalty, reference):
    params = random_params(3, dtype=np.float32)
    got = jax.jit(penalty)(params)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, reference(selected_leaves(params)), rtol=1e-4)
    np.testing.assert_allclose(penalty(params), got, rtol=1e-5)


@pytest.mark.parametrize("kind, gamma", [
    ("laf", (0.5,)),
    ("tucker", (0.5, 2.0, 0.0, 1.5, 3.0)),
    ("tt", (0.5, 2.0, 0.0, 1.5)),
])
def test_gamma_weights(x64, kind, gamma):
    leaf = np.random.default_rng(4).normal(size=SHAPES[2])
    got = trace_norm({"w": jnp.asarray(leaf)}, kind=kind, gamma=gamma)
    np.testing.assert_allclose(got, np_trace_norm([leaf], kind, gamma), rtol=1e-10)
    assert len(gamma) == len(np_unfoldings(leaf, kind))


def test_gamma_wrong_length_names_leaf_and_length():
    params = random_params(5, dtype=np.float32)
    with pytest.raises(ValueError, match=r"needs 2 weights for leaf 'params/tower/Dense_0/kernel'"):
        trace_norm(params, kind="tucker", gamma=(1.0,) * 5)  # fits Conv_0 only
    with pytest.raises(ValueError, match="needs 1 weights"):
        trace_norm(params, kind="laf", gamma=(1.0, 2.0))
    # A gamma that fits every selected leaf is accepted.
    trace_norm(params, kind="tt", select="Mix", gamma=(1.0, 2.0))


def test_unknown_kind_lists_known_kinds():
    with pytest.raises(ValueError, match=r"'cp'.*\['laf', 'tt', 'tucker'\]"):
        trace_norm({"w": jnp.ones((2, 3))}, kind="cp")


# --- Selection -------------------------------------------------------------


def test_select_regex_and_predicate(x64):
    params = random_params(6)
    tower = params["params"]["tower"]
    conv = [tower["Conv_0"]["kernel"]]
    kernels = selected_leaves(params)
    np.testing.assert_allclose(l2(params, select="Conv"), np_l2(conv), rtol=1e-10)
    np.testing.assert_allclose(l2(params, select=r"kernel$"), np_l2(kernels), rtol=1e-10)
    np.testing.assert_allclose(
        trace_norm(params, select=lambda path, leaf: leaf.ndim == 5, kind="tucker"),
        np_trace_norm(conv, "tucker"), rtol=1e-10)
    seen = []
    l2(params, select=lambda path, leaf: seen.append(path) or path.endswith("Mix_0/kernel"))
    assert sorted(seen) == sorted(f"params/tower/{p}" for p in (
        "Conv_0/kernel", "Dense_0/bias", "Dense_0/kernel", "Mix_0/kernel"))


def test_select_paths_of_lists_and_tuples():
    params = {"layers": [{"w": jnp.ones((2, 3))}, (jnp.zeros((2, 4)),)]}
    assert float(l2(params, select=r"^layers/1/0$")) == 0.0
    assert float(l2(params, select=r"^layers/0/w$")) == 0.0


@pytest.mark.parametrize("penalty", [l2, trace_norm])
def test_select_errors(penalty):
    params = random_params(7, dtype=np.float32)
    with pytest.raises(ValueError, match="'nothing_here' matches no parameter leaf"):
        penalty(params, select="nothing_here")
    with pytest.raises(ValueError, match="matches no parameter leaf"):
        penalty({"b": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"'params/tower/Dense_0/bias' of shape \(3,\)"):
        penalty(params, select="Dense_0")
    mixed = {"a": jnp.ones((3, 2)), "b": jnp.ones((4, 2))}
    with pytest.raises(ValueError, match=r"'b' of shape \(4, 2\) has a task axis of length 4"):
        penalty(mixed)
    with pytest.raises(ValueError, match="matches no parameter leaf"):
        jax.jit(functools.partial(penalty, select="nothing_here"))(params)


# --- Gradients -------------------------------------------------------------


def test_nuclear_norm_grad_full_rank(x64):
    a = np.random.default_rng(8).normal(size=(5, 3))
    u, _, vh = np.linalg.svd(a, full_matrices=False)
    grad = jax.grad(nuclear_norm)(jnp.asarray(a))
    np.testing.assert_allclose(grad, u @ vh, atol=1e-10)
    eps = 1e-6
    fd = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        e = np.zeros_like(a)
        e[idx] = eps
        fd[idx] = (np_nuclear(a + e) - np_nuclear(a - e)) / (2 * eps)
    np.testing.assert_allclose(grad, fd, atol=1e-7)
    np.testing.assert_allclose(jax.jacrev(nuclear_norm)(jnp.asarray(a)), grad, atol=1e-12)
    np.testing.assert_allclose(jax.jacfwd(nuclear_norm)(jnp.asarray(a)), grad, atol=1e-12)


def test_nuclear_norm_vmap_dtypes_and_rank_check():
    batch = np.random.default_rng(9).normal(size=(4, 3, 5)).astype(np.float32)
    got = jax.vmap(nuclear_norm)(jnp.asarray(batch))
    np.testing.assert_allclose(got, [np_nuclear(m) for m in batch], rtol=1e-5)
    grads = jax.vmap(jax.grad(nuclear_norm))(jnp.asarray(batch))
    assert grads.shape == batch.shape and grads.dtype == jnp.float32
    assert nuclear_norm(jnp.eye(3, dtype=jnp.int32)).dtype == jnp.float32
    with pytest.raises(ValueError, match=r"expects a matrix, got shape \(2, 2, 2\)"):
        nuclear_norm(jnp.ones((2, 2, 2)))


def test_nuclear_norm_subgradient_at_degenerate_points(x64):
    # Repeated singular values: A = 2 Q has s = (2, 2, 2, 2) and U V^T = Q.
    q, _ = np.linalg.qr(np.random.default_rng(10).normal(size=(4, 4)))
    np.testing.assert_allclose(jax.grad(nuclear_norm)(jnp.asarray(2 * q)), q, atol=1e-10)
    # Identical rows (identical towers): rank one, A = 1 w^T, minimal-norm subgradient u v^T.
    w = np.random.default_rng(11).normal(size=6)
    a = np.tile(w, (3, 1))
    want = np.outer(np.ones(3) / np.sqrt(3), w / np.linalg.norm(w))
    np.testing.assert_allclose(jax.grad(nuclear_norm)(jnp.asarray(a)), want, atol=1e-10)
    # Zero matrix: gradient zero.
    assert not np.any(jax.grad(nuclear_norm)(jnp.zeros((3, 6))))


@pytest.mark.parametrize("kind", KINDS)
def test_trace_norm_directional_derivative(x64, kind):
    rng = np.random.default_rng(12)
    leaf, direction = rng.normal(size=SHAPES[1]), rng.normal(size=SHAPES[1])
    fn = functools.partial(trace_norm, kind=kind)
    _, jvp = jax.jvp(fn, ({"w": jnp.asarray(leaf)},), ({"w": jnp.asarray(direction)},))
    eps = 1e-6
    fd = (np_trace_norm([leaf + eps * direction], kind)
          - np_trace_norm([leaf - eps * direction], kind)) / (2 * eps)
    np.testing.assert_allclose(jvp, fd, rtol=1e-6)


def degenerate_params(case: str) -> dict:
    rng = np.random.default_rng(13)
    if case == "identical":
        return {name: jnp.broadcast_to(jnp.asarray(rng.normal(size=(1,) + s[1:]), jnp.float32), s)
                for name, s in zip("abc", SHAPES)}
    if case == "zeros":
        return {name: jnp.zeros(s, jnp.float32) for name, s in zip("abc", SHAPES)}
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))  # orthogonal times a multiple of I
    return {"a": jnp.asarray(3 * q[:4, :5], jnp.float32),
            "b": jnp.asarray(3 * q.reshape(4, 3, 3), jnp.float32)}


PENALTIES = {
    "l2": l2,
    "l2_pairwise": functools.partial(l2, pairwise=True),
    **{kind: functools.partial(trace_norm, kind=kind) for kind in KINDS},
}


def values_and_grads(params: dict) -> dict:
    """Every penalty's value and gradient, under one ``jax.jit``."""
    return jax.jit(lambda p: {name: jax.value_and_grad(fn)(p) for name, fn in PENALTIES.items()})(
        params)


@pytest.mark.parametrize("case", ["identical", "zeros", "repeated"])
def test_gradients_finite_at_degenerate_points(case):
    for name, (value, grads) in values_and_grads(degenerate_params(case)).items():
        assert np.isfinite(value), name
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads)), name
        if case == "zeros":
            assert value == 0 and not any(np.any(g) for g in jax.tree.leaves(grads)), name


def test_soft_sharing_identical_towers():
    model = SoftSharing(tower=nn.Sequential([MLPTrunk((8,)), nn.Dense(3)]), names=("a", "b", "c"))
    params = model.init(jax.random.key(0), jnp.ones((2, 5)))
    tower = jax.tree.map(lambda w: jnp.broadcast_to(w[:1], w.shape), params["params"]["tower"])
    params = {"params": {**params["params"], "tower": tower}}
    assert params["params"]["tower"]["layers_0"]["Dense_0"]["kernel"].shape == (3, 5, 8)
    for name, (value, grads) in values_and_grads(params).items():
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads)), name
        if name.startswith("l2"):
            assert value == 0.0, name
            assert not any(np.any(g) for g in jax.tree.leaves(grads)), name
        else:
            assert value > 0, name


# --- Properties ------------------------------------------------------------

leaf_shapes = st.sampled_from(SHAPES)


@settings(max_examples=8, deadline=None)
@given(shape=leaf_shapes, seed=st.integers(0, 2**31 - 1), scale=st.floats(1e-3, 1e3))
def test_properties(shape, seed, scale):
    rng = np.random.default_rng(seed)
    with jax.enable_x64(True):
        leaf = scale * rng.normal(size=shape)
        offset = scale * rng.normal(size=shape[1:])
        perm = rng.permutation(shape[0])
        base, shifted, permuted = ({"w": jnp.asarray(x)} for x in (leaf, leaf + offset, leaf[perm]))
        for pairwise in (False, True):
            value = l2(base, pairwise=pairwise)
            assert value >= 0
            np.testing.assert_allclose(l2(shifted, pairwise=pairwise), value, rtol=1e-9)
        for kind in KINDS:
            value = trace_norm(base, kind=kind)
            assert value >= 0
            np.testing.assert_allclose(trace_norm(permuted, kind=kind), value, rtol=1e-9)
