"""Tests of the min-norm family: the Gramian solvers and the aggregators built on them.

Reference results come from scipy (SLSQP, nnls, root, least_squares), used only here,
in float64 (``jax.enable_x64``) on random Gramians: T = 2..20, well- and
ill-conditioned, conflicting, aligned and low-rank. Each jitted solver is compiled
once per (T, dtype) and vmapped over a batch of Gramians. Tolerances are stated
next to each check, with the reason.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize

from mtl_jax.aggregators import solvers
from mtl_jax.aggregators.base import gramian, scaled_gramian
from mtl_jax.aggregators.min_norm import (
    FACTORIES,
    cagrad,
    dualproj,
    fairgrad,
    mgda,
    nash_mtl,
    upgrad,
)

KINDS = ("well", "ill", "conflicting", "aligned", "lowrank")
BATCH = 4  # random Gramians per (T, kind); all kinds go through one vmapped call per T


def jacobian(rng: np.random.Generator, t: int, kind: str, dim: int | None = None) -> np.ndarray:
    """A random ``[T, dim]`` matrix of task gradients of the given kind."""
    dim = dim or 2 * t + 3
    j = rng.normal(size=(t, dim))
    if kind == "ill":  # gradient norms spread over three orders of magnitude
        j *= np.logspace(0, -3, t)[:, None]
    elif kind == "conflicting":  # half the tasks pull against the other half
        j[t // 2:] = -0.8 * j[: t - t // 2] + 0.3 * rng.normal(size=(t - t // 2, dim))
    elif kind == "aligned":  # a shared component and 10% task-specific noise
        j = rng.normal(size=(1, dim)) + 0.1 * j
    elif kind == "lowrank":  # rank 2: T ≥ 3 gradients in a plane (often 0 in their hull)
        j = rng.normal(size=(t, 2)) @ rng.normal(size=(2, dim))
    return j


def gramians(t: int, kinds=KINDS, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """``BATCH`` random Gramians of each kind, stacked, and the kind of each."""
    rng = np.random.default_rng([seed, t])
    gs, labels = [], []
    for kind in kinds:
        for _ in range(BATCH):
            j = jacobian(rng, t, kind)
            gs.append(j @ j.T)
            labels.append(kind)
    return np.stack(gs), labels


@functools.cache
def batched(name: str, x64: bool, **kwargs):
    """``jit(vmap(solver))`` returning ``(solution, info)``: compiled once per solver, knobs,
    ``T`` and dtype (the tests below use one batch size per ``T``)."""
    fn = getattr(solvers, name)
    return jax.jit(jax.vmap(lambda *args: fn(*args, return_info=True, **kwargs)))


def solve64(name: str, *args, **kwargs):
    with jax.enable_x64(True):
        x, info = batched(name, True, **kwargs)(*(jnp.asarray(a, jnp.float64) for a in args))
        return np.asarray(x), jax.tree_util.tree_map(np.asarray, info)


def solve32(name: str, *args, **kwargs):
    x, info = batched(name, False, **kwargs)(*(jnp.asarray(a, jnp.float32) for a in args))
    return np.asarray(x, np.float64), jax.tree_util.tree_map(np.asarray, info)


SIMPLEX = [{"type": "eq", "fun": lambda w: np.sum(w) - 1.0, "jac": lambda w: np.ones_like(w)}]


def slsqp_simplex(fun, jac, t: int, starts) -> float:
    """The best SLSQP minimum over the simplex from several starts (a reference value)."""
    best = np.inf
    for x0 in starts:
        res = optimize.minimize(fun, x0, jac=jac, method="SLSQP", bounds=[(0.0, 1.0)] * t,
                                constraints=SIMPLEX, options={"ftol": 1e-15, "maxiter": 2000})
        x = np.clip(res.x, 0, None)
        best = min(best, fun(x / np.sum(x)))
    return best


# ---------------------------------------------------------------------------
# the simplex projection and MGDA's min-norm point
# ---------------------------------------------------------------------------


def test_project_simplex_matches_a_bisection_reference():
    # The projection is exact; 1e-6 absolute is float32 rounding of O(1) entries.
    rng = np.random.default_rng(0)
    v = rng.normal(size=(50, 6)) * rng.choice([0.1, 1.0, 10.0], size=(50, 1))
    got = np.asarray(jax.jit(solvers.project_simplex)(jnp.asarray(v, jnp.float32)))
    for vi, gi in zip(v, got):
        theta = optimize.brentq(lambda th, vi=vi: np.maximum(vi - th, 0).sum() - 1,
                                vi.min() - 1, vi.max())
        np.testing.assert_allclose(gi, np.maximum(vi - theta, 0), atol=1e-6)


def test_min_norm_two_tasks_is_the_closed_form():
    # w1 = clip(((g2 − g1)·g2) / ‖g1 − g2‖², 0, 1); the solver uses this formula, so
    # float32 rounding (1e-5 absolute) is the only slack.
    rng = np.random.default_rng(1)
    g = rng.normal(size=(64, 2, 5)) * rng.choice([0.01, 1.0, 100.0], size=(64, 2, 1))
    g[:8, 1] = -g[:8, 0] * 3.0  # exactly opposite: w1 = 3/4
    g[8:12, 1] = g[8:12, 0] * 2.0  # collinear, same direction: the shorter one
    gs = np.einsum("bsd,btd->bst", g, g)
    w, info = solve32("min_norm_simplex", gs)
    d = g[:, 1] - g[:, 0]
    expected = np.clip(np.einsum("bd,bd->b", d, g[:, 1]) / np.einsum("bd,bd->b", d, d), 0, 1)
    np.testing.assert_allclose(w[:, 0], expected, atol=1e-5)
    np.testing.assert_allclose(w[:8, 0], 0.75, atol=1e-6)
    np.testing.assert_allclose(w[8:12, 0], 1.0, atol=1e-6)
    assert np.all(info.iterations == 0)


@pytest.mark.parametrize("t", [3, 7, 20])
def test_min_norm_simplex_is_optimal_against_slsqp(t):
    gs, kinds = gramians(t)
    w, info = solve64("min_norm_simplex", gs, tol=1e-12)
    assert np.all(info.iterations <= 100)
    for g, wi, kind in zip(gs, w, kinds):
        scale = np.max(np.diag(g))
        # Feasible: on the simplex up to float64 rounding.
        assert np.all(wi >= 0) and abs(wi.sum() - 1) < 1e-12
        # KKT: (G w)_j ≥ wᵀGw for every task (each gradient has a nonnegative inner
        # product with the min-norm point). 1e-10·max‖g‖² absorbs float64 rounding of an
        # exact active-set solution (κ up to ~1e6 for the "ill" kind).
        gw = g @ wi
        assert np.all(gw >= wi @ gw - 1e-10 * scale), (kind, gw, wi @ gw)
        # No worse than SLSQP's best of two starts (same slack).
        ref = slsqp_simplex(lambda x, g=g: x @ g @ x, lambda x, g=g: 2 * g @ x, t,
                            [np.full(t, 1 / t), np.eye(t)[np.argmin(np.diag(g))]])
        assert wi @ g @ wi <= ref + 1e-10 * scale, (kind, wi @ g @ wi, ref)


def test_min_norm_simplex_float32_is_close_to_float64():
    # float32 Gramians carry ~1e-7·max‖g‖² of rounding, so the min-norm value can only be
    # trusted to a few 1e-7 of max‖g‖²: 1e-6 absolute (normalised) is the check.
    gs, _ = gramians(7, seed=1)
    gs /= np.max(np.diagonal(gs, axis1=1, axis2=2), axis=1)[:, None, None]
    w32, _ = solve32("min_norm_simplex", gs)
    w64, _ = solve64("min_norm_simplex", gs, tol=1e-12)
    f32 = np.einsum("bs,bst,bt->b", w32, gs, w32)
    f64 = np.einsum("bs,bst,bt->b", w64, gs, w64)
    np.testing.assert_allclose(f32, f64, atol=1e-6)


# ---------------------------------------------------------------------------
# the nonnegative QP and the dual cone (UPGrad, DualProj)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("t", [3, 20])  # T = 7 through UPGrad/DualProj below
def test_nonneg_qp_matches_nnls(t):
    # min_{x ≥ 0} ½xᵀGx + cᵀx = min ‖Lᵀx + L⁻¹c‖² (G = LLᵀ): scipy's nnls is an
    # independent reference. G gets a 1e-4·tr ridge as in UPGrad, so κ ≤ ~1e4 and both
    # solvers agree to ~1e-12·κ; the check is 1e-8 relative to max|x| (+1e-10).
    gs, kinds = gramians(t)
    gs = gs / np.trace(gs, axis1=1, axis2=2)[:, None, None] + 1e-4 * np.eye(t)
    cs = np.random.default_rng(t).normal(size=(len(gs), t))
    x, info = solve64("nonneg_qp", gs, cs, tol=1e-12)
    assert np.all(info.converged) and np.all(info.iterations <= 100)
    for g, c, xi in zip(gs, cs, x):
        low = np.linalg.cholesky(g)
        ref, _ = optimize.nnls(low.T, -np.linalg.solve(low, c))
        np.testing.assert_allclose(xi, ref, atol=1e-8 * max(1.0, np.abs(ref).max()) + 1e-10)


def torchjd_project(g: np.ndarray, u: np.ndarray, norm_eps: float, reg_eps: float) -> np.ndarray:
    """TorchJD's ``project_weights`` for one ``u``: normalise G by its trace (zero when the
    trace is below norm_eps), add reg_eps·I, then min vᵀGv s.t. v ≥ u, with scipy's nnls."""
    tr = np.trace(g)
    gn = np.zeros_like(g) if tr < norm_eps else g / tr
    gr = gn + reg_eps * np.eye(len(g))
    low = np.linalg.cholesky(gr)
    x, _ = optimize.nnls(low.T, -low.T @ u)
    return u + x


def torchjd_upgrad(g, pref, norm_eps=1e-4, reg_eps=1e-4):
    return sum(torchjd_project(g, pref[i] * np.eye(len(g))[i], norm_eps, reg_eps)
               for i in range(len(g)))


def torchjd_dualproj(g, pref, norm_eps=1e-4, reg_eps=1e-4):
    return torchjd_project(g, pref, norm_eps, reg_eps)


@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
def test_upgrad_and_dualproj_match_the_torchjd_definition(name):
    # The aggregator in float64 (vmapped over 20 Jacobians of all kinds, T = 7, random
    # preferences) against an independent numpy + scipy-nnls implementation of
    # TorchJD's UPGradWeighting / DualProjWeighting. Both solve the same QPs exactly:
    # the weights agree to 1e-6 relative (they are reported in float32).
    # The direction is in the dual cone: J d ≥ −reg_eps·tr(G)·Σ|w|, the slack the ridge
    # allows (KKT of the regularised QP: (G/tr G + εI) w ≥ 0).
    factory, ref_fn = {"upgrad": (upgrad, torchjd_upgrad),
                       "dualproj": (dualproj, torchjd_dualproj)}[name]
    t = 7
    rng = np.random.default_rng(7)
    pref = rng.uniform(0.2, 1.0, size=t)
    js = np.stack([jacobian(rng, t, kind) for kind in KINDS for _ in range(BATCH)])
    with jax.enable_x64(True):
        agg = factory(t, pref_vector=pref, tol=1e-12)
        states = jax.tree_util.tree_map(lambda x: jnp.stack([x] * len(js)), agg.init(None))
        d, state = jax.jit(jax.vmap(agg.update))({"w": jnp.asarray(js)}, states)
        d, w = np.asarray(d["w"]), np.asarray(state.weights, np.float64)
    for j, di, wi in zip(js, d, w):
        g = j @ j.T
        ref = ref_fn(g, pref)
        np.testing.assert_allclose(wi, ref, rtol=1e-6, atol=1e-7 * np.abs(ref).max())
        slack = 1e-4 * np.trace(g) * np.abs(ref).sum() * 1.01 + 1e-12
        assert np.all(j @ di >= -slack), (j @ di, slack)


def test_upgrad_float32_matches_the_reference_and_norm_eps():
    # float32 end to end (T = 3): the Gramian's rounding (~1e-7 relative) is amplified by
    # the QP's conditioning (κ ≤ ~1e4 with the ridge): 1e-3 relative to max|w|.
    rng = np.random.default_rng(8)
    agg, update = shared("upgrad")
    for kind in ("well", "conflicting", "aligned", "ill"):
        j = jacobian(rng, 3, kind, dim=8).astype(np.float32)
        _, state = update(pack(j), agg.init(None), jnp.ones(3))
        ref = torchjd_upgrad(j.astype(np.float64) @ j.T.astype(np.float64), np.full(3, 1 / 3))
        np.testing.assert_allclose(np.asarray(state.weights), ref, atol=1e-3 * ref.max())
    # TorchJD zeroes a Gramian with trace < norm_eps = 1e-4: the weights are then 1/T.
    j = np.zeros((3, 8), np.float32)
    j[:, :2] = [[1.0, 0.0], [-1.0, 0.2], [0.0, 1.0]]
    _, small = update(pack(j * 1e-3), agg.init(None), jnp.ones(3))
    np.testing.assert_allclose(np.asarray(small.weights), 1 / 3, rtol=1e-6)
    _, big = update(pack(j), agg.init(None), jnp.ones(3))
    assert not np.allclose(np.asarray(big.weights), 1 / 3)


# ---------------------------------------------------------------------------
# CAGrad
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("t, c", [(3, 2.0), (7, 0.4), (20, 0.4)])
def test_cagrad_simplex_is_optimal_against_slsqp(t, c):
    # F(w) = wᵀGb + c√(bᵀGb)√(wᵀGw): ours (exact up to rounding) must be no worse than
    # SLSQP's best of two starts, to 1e-10·max‖g‖² (float64 rounding of an exact solve).
    # For the low-rank kind (0 in the hull: F is not differentiable at its minimiser,
    # approached by bisection) the slack is 1e-8·max‖g‖²: there F's error goes like the
    # square root of the Gramian's rounding.
    gs, kinds = gramians(t)
    w, info = solve64("cagrad_simplex", gs, c=c, tol=1e-12)
    assert np.all(info.iterations <= 200)
    for g, wi, kind in zip(gs, w, kinds):
        b = np.full(t, 1 / t)
        s = c * np.sqrt(b @ g @ b)

        def f(x, g=g, s=s, b=b):
            return x @ g @ b + s * np.sqrt(max(x @ g @ x, 0.0))

        def jac(x, g=g, s=s, b=b):
            return g @ b + s * g @ x / np.sqrt(max(x @ g @ x, 1e-300))

        ref = slsqp_simplex(f, jac, t, [b, np.eye(t)[np.argmin(g @ b)]])
        slack = (1e-8 if kind == "lowrank" else 1e-10) * np.max(np.diag(g))
        assert np.all(wi >= 0) and abs(wi.sum() - 1) < 1e-10
        assert f(wi) <= ref + slack, (kind, f(wi), ref)


def test_cagrad_direction_and_rescale():
    # d = (g0 + (√φ/‖g_w‖) g_w) / (1 + c²) (rescale = 1, the default) with g0 the mean
    # gradient, φ = c²‖g0‖² and w minimising F; rescale = 0 drops the 1/(1 + c²).
    # float32 throughout: 1e-4 relative.
    rng = np.random.default_rng(3)
    j = jacobian(rng, 3, "conflicting", dim=8).astype(np.float32)
    c = 0.4
    agg, update = shared("cagrad")
    d, state = update(pack(j), agg.init(None), jnp.ones(3))
    w = (np.asarray(state.weights, np.float64) * (1 + c * c) - 1 / 3)  # = (√φ/‖g_w‖) w
    w = w / w.sum()
    gw, g0 = w @ j, j.mean(0)
    expected = g0 + c * np.linalg.norm(g0) / np.linalg.norm(gw) * gw
    np.testing.assert_allclose(unpack(d), expected / (1 + c * c), rtol=1e-4, atol=1e-5)
    # w minimises F (float32 vs a float64 SLSQP: 1e-5 relative to max‖g‖²)
    g = j.astype(np.float64) @ j.T.astype(np.float64)
    s = c * np.linalg.norm(g0)
    f = lambda x: x @ g @ np.full(3, 1 / 3) + s * np.sqrt(max(x @ g @ x, 0))  # noqa: E731
    ref = slsqp_simplex(f, None, 3, [np.full(3, 1 / 3)])
    assert f(w) <= ref + 1e-5 * np.max(np.diag(g))
    agg0 = cagrad(3, c=c, rescale=0)
    d0, _ = jax.jit(agg0.update)(pack(j), agg0.init(None))
    np.testing.assert_allclose(unpack(d0), expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# Nash-MTL and FairGrad
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("t", [3, 20])  # T = 7 through alpha_fair (same code) below
def test_nash_bargaining_solves_g_alpha_equals_one_over_alpha(t):
    # Kinds with a solution (positive-definite G; low-rank ones with 0 in the hull have
    # none). Newton converges quadratically: the relative residual max|α(Gα) − 1| must
    # reach 1e-10 in float64 (the solution is unique, so this pins α down), and α matches
    # scipy's root (hybr, in log-space, where it converges) to 1e-7.
    gs, kinds = gramians(t, kinds=("well", "ill", "conflicting", "aligned"))
    a, info = solve64("nash_bargaining", gs, tol=1e-10, max_iters=50)
    assert np.all(info.converged), info.residual
    for g, ai in zip(gs, a):
        np.testing.assert_allclose(ai * (g @ ai), 1.0, atol=1e-10)
        with np.errstate(over="ignore", invalid="ignore"):
            sol = optimize.root(lambda bt, g=g: np.exp(bt) * (g @ np.exp(bt)) - 1,
                                -0.5 * np.log(np.diag(g)), method="hybr")
            ref = np.exp(sol.x)
        if np.max(np.abs(ref * (g @ ref) - 1)) < 1e-9:
            np.testing.assert_allclose(ai, ref, rtol=1e-7)


@pytest.mark.parametrize("alpha, t", [(0.5, 7), (2.0, 20), (5.0, 3)])
def test_alpha_fair_fixed_point_and_least_squares(alpha, t):
    # G w = w^(-1/α) to 1e-9 relative in float64 (Newton, tol 1e-10 on the residual).
    # The LibMTL/paper reference, scipy.optimize.least_squares from 1/T with bounds
    # (0, ∞), agrees to 1e-6 relative where it converges (well-conditioned kinds).
    gs, kinds = gramians(t, kinds=("well", "ill", "conflicting", "aligned"), seed=2)
    w, info = solve64("alpha_fair", gs, alpha=alpha, tol=1e-10, max_iters=100)
    assert np.all(info.converged), info.residual
    for g, wi, kind in zip(gs, w, kinds):
        np.testing.assert_allclose(g @ wi, wi ** (-1 / alpha), rtol=1e-9)
        if kind in ("well", "aligned"):
            ref = optimize.least_squares(lambda x, g=g: g @ x - x ** (-1 / alpha),
                                         np.full(t, 1 / t), bounds=(0, np.inf),
                                         xtol=1e-15, ftol=1e-15, gtol=1e-15)
            np.testing.assert_allclose(wi, ref.x, rtol=1e-6)


def test_nash_mtl_aggregator_norm_clipping_and_reuse():
    rng = np.random.default_rng(4)
    j1 = jacobian(rng, 3, "well", dim=8).astype(np.float32)
    j2 = jacobian(rng, 3, "well", dim=8).astype(np.float32)
    g1 = j1.astype(np.float64) @ j1.T.astype(np.float64)
    g2 = j2.astype(np.float64) @ j2.T.astype(np.float64)
    # Default max_norm = 1: the unclipped α (state) solves Gα = 1/α (float32: the
    # residual floor is ~ε·κ, 2e-4 absolute); ‖Σα g‖² = Σ α(Gα) = T, so the clipped
    # direction is a unit vector and the weights are α/√T (1e-4 relative).
    agg = nash_mtl(3, update_weights_every=2)
    update = jax.jit(lambda g, s: agg.update(g, s))
    d1, s1 = update(pack(j1), agg.init(None))
    a1 = np.asarray(s1.inner.alpha, np.float64)
    np.testing.assert_allclose(a1 * (g1 @ a1), 1.0, atol=2e-4)
    np.testing.assert_allclose(np.linalg.norm(unpack(d1)), 1.0, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(s1.weights), a1 / np.sqrt(3), rtol=1e-4)
    # The second update reuses α with the new gradients (then clips)...
    d2, s2 = update(pack(j2), s1)
    np.testing.assert_array_equal(np.asarray(s2.inner.alpha), np.asarray(s1.inner.alpha))
    expected = a1 @ j2
    np.testing.assert_allclose(unpack(d2), expected / max(np.linalg.norm(expected), 1.0),
                               rtol=1e-4, atol=1e-6)
    # ...and the third solves again (warm-started from it).
    _, s3 = update(pack(j2), s2)
    assert int(s3.inner.step) == 3
    a3 = np.asarray(s3.inner.alpha, np.float64)
    np.testing.assert_allclose(a3 * (g2 @ a3), 1.0, atol=2e-4)


def test_gradient_scale_covariance():
    # Scaling every gradient by k: MGDA/CAGrad/UPGrad/DualProj weights are unchanged,
    # Nash-MTL's (clipped) weights and FairGrad's (α = 1) scale as 1/k. With k = 1e±20
    # (‖g‖² would overflow or underflow float32 without the scaled Gramian); float32
    # rounding of the normalised problems: 1e-4 relative. (UPGrad/DualProj only for
    # k = 1e20: below tr G = norm_eps = 1e-4 they return the preferences, as TorchJD.)
    j = jacobian(np.random.default_rng(5), 3, "conflicting", dim=8).astype(np.float32)
    for name in sorted(FACTORIES):
        agg, update = shared(name)
        _, s1 = update(pack(j), agg.init(None), jnp.ones(3))
        power = -1.0 if name in ("nash_mtl", "fairgrad") else 0.0
        for k in (1e20,) if name in ("upgrad", "dualproj") else (1e20, 1e-20):
            _, sk = update(pack(j * k), agg.init(None), jnp.ones(3))
            np.testing.assert_allclose(np.asarray(sk.weights, np.float64),
                                       np.asarray(s1.weights, np.float64) * k ** power,
                                       rtol=1e-4, err_msg=name)


# ---------------------------------------------------------------------------
# every aggregator: direction = Σ w_t g_t, jit, vmap, T = 1
# ---------------------------------------------------------------------------


PARAMS = {"a": jnp.zeros((2, 3)), "b": jnp.zeros(2)}


def pack(j: np.ndarray) -> dict:
    """``[T, 8]`` gradients as the pytree ``{"a": [T, 2, 3], "b": [T, 2]}``."""
    j = jnp.asarray(j, jnp.float32)
    return {"a": j[:, :6].reshape(-1, 2, 3), "b": j[:, 6:8]}


def unpack(d) -> np.ndarray:
    return np.concatenate([np.asarray(d["a"]).reshape(-1), np.asarray(d["b"])]).astype(
        np.float64)


@functools.cache
def shared(name: str):
    """The default aggregator for ``T = 3`` and its jitted update (compiled once)."""
    agg = FACTORIES[name](3)
    return agg, jax.jit(lambda g, s, v: agg.update(g, s, PARAMS, value=v))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_direction_is_the_weighted_sum_and_vmap_matches(name):
    # direction = Σ_t w_t g_t with the reported weights, leaf by leaf (float32 matmul:
    # 1e-5 relative), and vmap over a batch of problems equals one at a time.
    rng = np.random.default_rng(6)
    agg, update = shared(name)
    js = rng.normal(size=(4, 3, 8)).astype(np.float32)
    js[1] *= np.array([[1.0], [1e-3], [10.0]], np.float32)
    js[2, 1] = -0.7 * js[2, 0] + 0.3 * js[2, 1]  # conflicting (still with a Nash solution)
    values = jnp.asarray(rng.uniform(0.5, 2.0, size=(4, 3)), jnp.float32)
    states = jax.tree_util.tree_map(lambda x: jnp.stack([x] * 4), agg.init(PARAMS))
    batch = jax.tree_util.tree_map(lambda x: x.reshape(4, 3, *x.shape[1:]),
                                   pack(js.reshape(12, 8)))
    vmapped = jax.jit(jax.vmap(lambda g, s, v: agg.update(g, s, PARAMS, value=v)))
    vd, vs = vmapped(batch, states, values)
    for i in range(4):
        d, state = update(pack(js[i]), agg.init(PARAMS), values[i])
        w = np.asarray(state.weights, np.float64)
        assert jax.tree_util.tree_structure(d) == jax.tree_util.tree_structure(PARAMS)
        np.testing.assert_allclose(unpack(d), w @ js[i].astype(np.float64), rtol=1e-5,
                                   atol=1e-6 * np.abs(w).max())
        np.testing.assert_allclose(np.asarray(vs.weights[i]), w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(unpack({k: v[i] for k, v in vd.items()}), unpack(d),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_single_task(name):
    # T = 1: every method returns a positive multiple of the gradient.
    agg = FACTORIES[name](1)
    g = jnp.asarray([[3.0, -4.0]])
    d, state = jax.jit(lambda g, s: agg.update(g, s, value=jnp.ones(1)))({"w": g},
                                                                        agg.init(None))
    assert float(state.weights[0]) > 0
    np.testing.assert_allclose(np.asarray(d["w"]), float(state.weights[0]) * np.asarray(g[0]),
                               rtol=1e-6)


def test_mgda_gradient_normalizations():
    # Sener & Koltun's normalisations choose w on g_t / n_t and apply it to the raw g_t.
    # The reference solves the normalised problem with the (already tested) solver;
    # float32: 1e-5 absolute on the weights.
    rng = np.random.default_rng(9)
    j = rng.normal(size=(3, 8)).astype(np.float32)
    losses = np.array([2.0, 0.5, 1.0], np.float32)
    norms = np.linalg.norm(j, axis=1)
    refs = {}
    # ("loss" is "loss+" without the norms: the two cover every code path.)
    for normalization, n in (("l2", norms), ("loss+", losses * norms)):
        jn = (j / n[:, None]).astype(np.float64)
        refs[normalization] = jn @ jn.T
    w_ref, _ = solve32("min_norm_simplex", np.stack(list(refs.values())))
    for (normalization, _), wr in zip(refs.items(), w_ref):
        agg = mgda(3, normalization=normalization)
        d, state = jax.jit(lambda g, s, v, agg=agg: agg.update(g, s, value=v))(
            pack(j), agg.init(None), jnp.asarray(losses))
        np.testing.assert_allclose(np.asarray(state.weights), wr, atol=1e-5)
        np.testing.assert_allclose(unpack(d), wr @ j, rtol=1e-4, atol=1e-5)
    agg = mgda(3, normalization="loss")
    with pytest.raises(ValueError, match="needs the task losses"):
        agg.update(pack(j), agg.init(None))


def test_scaled_gramian_handles_huge_and_tiny_gradients():
    # Ĝ·m² for moderate gradients equals base.gramian (float32: 1e-5 relative);
    # 1e±30 gradients (‖g‖² = 1e±60 over/underflows float32) give the same finite Ĝ.
    rng = np.random.default_rng(10)
    g = pack(rng.normal(size=(3, 8)))
    g_hat, m = scaled_gramian(g)
    np.testing.assert_allclose(np.asarray(g_hat) * float(m) ** 2, np.asarray(gramian(g)),
                               rtol=1e-5, atol=1e-6)
    for k in (1e30, 1e-30):
        gh, mk = scaled_gramian(jax.tree_util.tree_map(lambda x, k=k: x * k, g))
        np.testing.assert_allclose(np.asarray(gh), np.asarray(g_hat), rtol=1e-5, atol=1e-6)
        assert np.isfinite(float(mk)) and float(mk) > 0
    z, mz = scaled_gramian({"w": jnp.zeros((2, 3))})
    assert float(mz) == 0 and not np.any(np.asarray(z))


# ---------------------------------------------------------------------------
# bounded iterations and degenerate input
# ---------------------------------------------------------------------------


def test_solvers_return_within_max_iters_on_adversarial_input():
    # tol = 0 (never met) on: collinear and exactly opposite gradients (no Nash/FairGrad
    # solution: the potential is unbounded below), near-identical ones, 0 in the hull,
    # norms spread over 12 orders of magnitude. Every solver must stop at max_iters = 2
    # (counting CAGrad's inner active-set iterations) with finite output.
    rng = np.random.default_rng(11)
    v = rng.normal(size=(1, 6))
    cases = [
        np.vstack([v, -v, 2 * v, -3 * v]),
        np.vstack([v, v, v, v]) + 1e-7 * rng.normal(size=(4, 6)),
        jacobian(rng, 4, "lowrank"),
        rng.normal(size=(4, 6)) * np.array([[1e6], [1.0], [1e-6], [1e-3]]),
    ]
    gs = np.stack([c @ c.T for c in cases])
    # (nash_bargaining is alpha_fair with α = 1: the same code.)
    for name, kwargs in (("min_norm_simplex", {}), ("cagrad_simplex", {"c": 0.4}),
                         ("alpha_fair", {"alpha": 2.0})):
        x, info = solve32(name, gs, max_iters=2, tol=0.0, **kwargs)
        assert np.all(info.iterations <= 2), (name, info.iterations)
        assert np.all(np.isfinite(x)), name
    ridge = gs / np.trace(gs, axis1=1, axis2=2)[:, None, None] + 1e-4 * np.eye(4)
    x, info = solve32("nonneg_qp", ridge, -np.ones((4, 4)), max_iters=2, tol=0.0)
    assert np.all(info.iterations <= 2) and np.all(np.isfinite(x))


CASES = ("random", "zero", "identical", "opposite", "collinear", "one_zero", "mixed_scales")


@settings(max_examples=20, deadline=None)
@given(case=st.sampled_from(CASES), log_scale=st.sampled_from([-30, -10, 0, 10, 30]),
       seed=st.integers(0, 2 ** 16), loss=st.sampled_from([0.0, 1e-30, 1.0, 1e30]))
def test_degenerate_inputs_give_finite_output(case, log_scale, seed, loss):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(3, 8))
    j = {
        "random": base,
        "zero": np.zeros((3, 8)),
        "identical": np.repeat(base[:1], 3, axis=0),
        "opposite": np.stack([base[0], -base[0], base[1]]),
        "collinear": base[:1] * np.array([[1.0], [2.0], [-0.5]]),
        "one_zero": np.stack([base[0], np.zeros(8), base[2]]),
        "mixed_scales": base * np.array([[1e20], [1.0], [1e-20]]),
    }[case] * 10.0 ** log_scale
    j = np.clip(j, -1e38, 1e38).astype(np.float32)
    for name in sorted(FACTORIES):
        agg, update = shared(name)
        d, state = update(pack(j), agg.init(None), jnp.full(3, loss, jnp.float32))
        assert np.all(np.isfinite(unpack(d))), (name, case)
        assert np.all(np.isfinite(np.asarray(state.weights))), (name, case)
        if case == "zero":
            assert not np.any(unpack(d)), name


# ---------------------------------------------------------------------------
# knobs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("factory, kwargs, knob", [
    (mgda, {"normalization": "l1"}, "normalization"),
    (mgda, {"max_iters": 0}, "max_iters"),
    (mgda, {"tol": -1.0}, "tol"),
    (cagrad, {"c": -0.1}, "c"),
    (cagrad, {"rescale": 3}, "rescale"),
    (cagrad, {"rescale": 1.0}, "rescale"),
    (cagrad, {"max_iters": 2.5}, "max_iters"),
    (nash_mtl, {"max_norm": -1.0}, "max_norm"),
    (nash_mtl, {"update_weights_every": 0}, "update_weights_every"),
    (nash_mtl, {"optim_niter": 0}, "optim_niter"),
    (upgrad, {"pref_vector": [1.0, 2.0]}, "pref_vector"),
    (upgrad, {"pref_vector": [1.0, -1.0, 1.0]}, "pref_vector"),
    (upgrad, {"reg_eps": 0.0}, "reg_eps"),
    (upgrad, {"norm_eps": float("nan")}, "norm_eps"),
    (dualproj, {"pref_vector": [0.0, 0.0, 0.0]}, "pref_vector"),
    (dualproj, {"max_iters": True}, "max_iters"),
    (fairgrad, {"alpha": 0.0}, "alpha"),
    (fairgrad, {"tol": float("inf")}, "tol"),
])
def test_bad_knobs_raise_clear_errors(factory, kwargs, knob):
    with pytest.raises(ValueError, match=knob):
        factory(3, **kwargs)


def test_bad_solver_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="square"):
        solvers.min_norm_simplex(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="c must be"):
        solvers.nonneg_qp(jnp.eye(3), jnp.ones(2))
    with pytest.raises(ValueError, match="alpha"):
        solvers.alpha_fair(jnp.eye(2), alpha=-1.0)
    with pytest.raises(ValueError, match="init"):
        solvers.nash_bargaining(jnp.eye(2), init=jnp.ones(3))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_bad_num_tasks_and_shapes(name):
    with pytest.raises(ValueError, match="num_tasks"):
        FACTORIES[name](0)
    agg = FACTORIES[name](3)
    with pytest.raises(ValueError, match="leading task axis"):
        agg.update({"w": jnp.ones((2, 4))}, agg.init(None), value=jnp.ones(3))


def test_factories_registry():
    assert sorted(FACTORIES) == ["cagrad", "dualproj", "fairgrad", "mgda", "nash_mtl", "upgrad"]
    assert FACTORIES["upgrad"] is upgrad
