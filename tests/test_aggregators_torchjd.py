"""Cross-check of the gradient aggregators against TorchJD 0.18 (an independent PyTorch library).

Every method both libraries implement runs on the same seeded random Jacobians ``J``: T
from 2 to 40, d from ``⌈T/2⌉`` (rank-deficient, singular Gramian) to 200, Gaussian,
ill-conditioned (singular values 1e3..1e-3), conflicting (negative cosines), aligned (all
cosines positive) and ill-conditioned aligned. Ours runs in float64 (``jax.enable_x64``),
jitted once per (method, T, knobs) on ``J`` zero-padded to 200 columns; TorchJD gets
float64 tensors. Each test maps the knobs and states the scaling between the two; random
methods get our draws (TorchJD's ``torch.randperm``/``rand``/``randn`` return them), and
stateful ones run sequences of updates.

Tolerances are derived bounds, not observed errors: the float64 rounding of combining T
gradients (``2 T ε Σ|w_t| ||g_t||``), that of ``G`` amplified by its condition number where a
method solves with or eigen-decomposes ``G``, the float32 storage of ``state.weights``, and
each solver's accuracy: ours from :mod:`mtl_jax.aggregators.solvers` (its ``tol`` knob
tightened where the default would dominate), TorchJD's from its solver (quadprog exact,
Clarabel's 1e-8 gap, Frank–Wolfe's own gap, the residuals of least_squares and of
Nash-MTL's CCP), turned into per-Jacobian certificates where the solution is only
approximate. Weights are compared where they are unique.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("torchjd")

import torch  # noqa: E402
from qpsolvers import solve_qp  # noqa: E402
from torchjd import aggregation as tja  # noqa: E402

from mtl_jax import aggregators  # noqa: E402
from mtl_jax.aggregators import projection  # noqa: E402

EPS = float(np.finfo(np.float64).eps)
U32 = 2.0**-24  # float32 unit roundoff: state.weights and RLW's draws are float32
KINDS = ("well", "ill", "conflicting", "aligned", "ill_aligned")
DMAX = 200  # every Jacobian is zero-padded to [T, DMAX]: one compilation per (method, T)
FAST_COMPILE = {"xla_backend_optimization_level": 0}


# --------------------------------------------------------------------------- Jacobians


def orthonormal(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(n, k)))
    return q * np.sign(np.diag(r))


def jacobian(rng: np.random.Generator, t: int, d: int, kind: str) -> np.ndarray:
    """A random ``[t, d]`` Jacobian of the given kind (rank ``min(t, d)``)."""
    r = min(t, d)

    def noise(rows, scale):  # rows of norm scale·U(0.2, 1) in random directions
        n = rng.normal(size=(rows, d))
        return n / np.linalg.norm(n, axis=1, keepdims=True) * scale * rng.uniform(
            0.2, 1.0, (rows, 1))

    if kind == "well":
        return rng.normal(size=(t, d))
    if kind == "ill":
        return orthonormal(rng, t, r) * np.logspace(3, -3, r) @ orthonormal(rng, d, r).T
    if kind == "conflicting":  # g_{h+i} = -0.8 g_i + noise of norm < 0.4 ||g_i||: cos < 0
        j, h = rng.normal(size=(t, d)), t // 2
        base = j[: t - h]
        j[h:] = -0.8 * base + noise(t - h, 0.4) * np.linalg.norm(base, axis=1, keepdims=True)
        return j
    shared = orthonormal(rng, d, 1).T  # a unit direction shared by every task
    if kind == "aligned":  # noise of norm < 0.3: all cosines positive
        return shared + noise(t, 0.3)
    if kind == "ill_aligned":  # 10·shared plus rows of norm ≤ 1 with spread 1..1e-3
        return 10 * shared + orthonormal(rng, t, r) * np.logspace(0, -3, r) @ orthonormal(
            rng, d, r).T
    raise ValueError(kind)


def dims(t: int) -> tuple[int, ...]:
    return tuple(sorted({(t + 1) // 2, t, 2 * t + 1, DMAX}))


@functools.cache
def cases(t: int, seed: int = 0) -> tuple[tuple[int, str, np.ndarray], ...]:
    """``(d, kind, J)`` for every d in :func:`dims` and every kind (20 Jacobians)."""
    rng = np.random.default_rng([seed, t])
    return tuple((d, kind, jacobian(rng, t, d, kind)) for d in dims(t) for kind in KINDS)


def all_cases(t: int, seeds: int | None = None) -> list[tuple[int, str, np.ndarray]]:
    """:func:`cases` for ``seeds`` seeds: by default two below T = 20, one from T = 20."""
    seeds = seeds or (1 if t >= 20 else 2)
    return [c for seed in range(seeds) for c in cases(t, seed)]


@pytest.mark.parametrize("t", [2, 3, 5, 10, 20, 40])
def test_jacobians_are_of_their_kind(t):
    # Rank min(T, d); κ(J) = 1e6 for "ill"; a negative cosine for "conflicting", none for
    # the aligned kinds.
    for d, kind, j in all_cases(t, 2):
        s = np.linalg.svd(j, compute_uv=False)
        r = min(t, d)
        assert np.sum(s > 1e-9 * s[0]) == r, (d, kind)
        norms = np.linalg.norm(j, axis=1)
        cosines = j @ j.T / np.outer(norms, norms)
        if kind == "ill" and r > 1:
            np.testing.assert_allclose(s[0] / s[r - 1], 1e6, rtol=1e-6)
        if kind == "conflicting":
            assert cosines.min() < 0, d
        if kind in ("aligned", "ill_aligned"):
            assert cosines.min() > 0, (d, kind)


# --------------------------------------------------------------------------- running both


@functools.cache
def compiled(name: str, t: int, knobs: tuple):
    agg, _ = aggregators.get(name, t, **dict(knobs))
    return agg, jax.jit(agg.update, compiler_options=FAST_COMPILE)


def ours(name: str, j: np.ndarray, state=None, **knobs):
    """``(direction [d], weights [T] (float32 values), state)`` of our ``name`` in float64."""
    t, d = j.shape
    agg, update = compiled(name, t, tuple(sorted(knobs.items())))
    padded = np.zeros((t, DMAX))
    padded[:, :d] = j
    with jax.enable_x64(True):
        state = agg.init(None) if state is None else state
        direction, state = update({"w": jnp.asarray(padded)}, state, value=jnp.ones(t))
        return np.asarray(direction["w"])[:d], np.asarray(state.weights, np.float64), state


def theirs(aggregator, j: np.ndarray) -> np.ndarray:
    return aggregator(torch.from_numpy(j)).numpy()


def theirs_weighted(aggregator, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(direction, weights)`` of a TorchJD ``WeightedAggregator``, whose forward is
    ``weighting(J) @ J``, from one call of its weighting."""
    jt = torch.from_numpy(j)
    w = aggregator.weighting(jt)
    return (w @ jt).numpy(), w.numpy()


def check(got, want, bound, what):
    err = np.linalg.norm(np.asarray(got) - np.asarray(want))
    assert err <= bound, f"{what}: |ours - torchjd| = {err:.3g} > {bound:.3g}"


def combination_rounding(j: np.ndarray, w: np.ndarray) -> float:
    """Bound on the float64 rounding of ``Σ_t w_t g_t`` in any order: ``2 T ε Σ|w_t| ||g_t||``."""
    return 2 * len(j) * EPS * float(np.abs(w) @ np.linalg.norm(j, axis=1))


def sigma_min(j: np.ndarray) -> float:
    return float(np.linalg.svd(j, compute_uv=False)[-1])


def hull_distance(j: np.ndarray) -> float:
    """``min_{w ∈ Δ} ||Jᵀ w||² / max_t ||g_t||²`` (quadprog): 0 when 0 is in the hull."""
    g = j @ j.T
    t = len(g)
    w = solve_qp(g + 1e-14 * np.trace(g) * np.eye(t), np.zeros(t), A=np.ones((1, t)),
                 b=np.ones(1), lb=np.zeros(t), solver="quadprog")
    return float(w @ g @ w / np.max(np.diag(g)))


# --------------------------------------------------------------------------- fixed weights


@pytest.mark.parametrize("t", [2, 3, 5, 10, 20, 40])
def test_sum_mean_constant(t):
    # ew = TorchJD's Sum = T · Mean; fixed(w) = Constant(w). The weights are exact (fixed
    # stores float32, so w is drawn in float32), so only the float64 rounding of the
    # combination differs.
    rng = np.random.default_rng(t)
    w = rng.uniform(0.0, 2.0, t).astype(np.float32).astype(np.float64)
    for d, kind, j in all_cases(t, 2):
        ones = np.ones(t)
        got, weights, _ = ours("ew", j)
        np.testing.assert_array_equal(weights, ones)
        check(got, theirs(tja.Sum(), j), combination_rounding(j, ones), f"Sum {d} {kind}")
        check(got / t, theirs(tja.Mean(), j), combination_rounding(j, ones / t), "Mean")
        got, weights, _ = ours("fixed", j, weights=tuple(w))
        np.testing.assert_array_equal(weights, w)
        check(got, theirs(tja.Constant(torch.from_numpy(w)), j), combination_rounding(j, w),
              f"Constant {d} {kind}")


@pytest.mark.parametrize("t", [2, 5, 10, 40])
def test_random_is_rlw(t, monkeypatch):
    # TorchJD's Random = softmax of torch.randn(T) = our rlw("normal"). Its randn returns our
    # float32 draw λ (split of the state's key, as rlw does), so both weight by softmax(λ):
    # ours in float32, within (T + 4) u32 relative per weight (exp, sum, division).
    draws = []
    monkeypatch.setattr(torch, "randn", lambda *a, **k: torch.from_numpy(draws[-1]))
    state = None
    for d, kind, j in all_cases(t):  # one sequence of updates: the key advances
        if state is None:
            state = compiled("rlw", t, ())[0].init(None)
        with jax.enable_x64(True):
            sub = jax.random.split(state.inner)[1]
            draws.append(np.asarray(jax.random.normal(sub, (t,), jnp.float32), np.float64))
        got, weights, state = ours("rlw", j, state)
        want, want_w = theirs_weighted(tja.Random(), j)
        np.testing.assert_allclose(weights, want_w, rtol=(t + 4) * U32)
        check(got, want,
              (t + 4) * U32 * float(want_w @ np.linalg.norm(j, axis=1))
              + combination_rounding(j, want_w), f"Random {d} {kind}")


# --------------------------------------------------------------------------- dual-cone QPs


@pytest.mark.parametrize(("name", "t", "pref"), [
    ("upgrad", 2, False), ("upgrad", 5, True), ("upgrad", 20, False), ("upgrad", 40, False),
    ("dualproj", 3, False), ("dualproj", 10, True), ("dualproj", 40, False)])
def test_upgrad_and_dualproj(name, t, pref):
    # Same definition and defaults (norm_eps = reg_eps = 1e-4, p = 1/T or a random
    # pref_vector): the QPs min_{v ≥ u} vᵀ R v with R = G / tr G + 1e-4 I (κ(R) ≤ 1e4),
    # solved exactly by quadprog and by our active-set method, here with tol = 1e-12 (the
    # default 1e-6 is a stopping tolerance: up to ≈ 1e-6 κ(R) in v). Each v is then
    # accurate to κ(R) (tol + 4ε) relative, and w sums T of them for UPGrad; the direction
    # Jᵀw inherits ||J||₂ ||Δw||. The weights are stored in float32.
    rng = np.random.default_rng(t)
    p = rng.uniform(0.1, 1.0, t) if pref else None
    knobs = {"tol": 1e-12, "pref_vector": None if p is None else tuple(p)}
    tjd = {"upgrad": tja.UPGrad, "dualproj": tja.DualProj}[name]
    p_t = None if p is None else torch.from_numpy(p)
    for d, kind, j in all_cases(t):
        got, weights, _ = ours(name, j, **knobs)
        want, want_w = theirs_weighted(tjd(p_t), j)
        lam = np.linalg.eigvalsh(j @ j.T / np.sum(j * j)) + 1e-4
        dw = t * lam[-1] / lam[0] * (1e-12 + 4 * EPS) * np.linalg.norm(want_w)
        check(weights, want_w, dw + 2 * U32 * np.linalg.norm(want_w), f"{name} weights")
        check(got, want, np.linalg.norm(j, 2) * dw + combination_rounding(j, want_w),
              f"{name} {d} {kind}")


# --------------------------------------------------------------------------- MGDA and CAGrad


def mgda_gap(j: np.ndarray, d: np.ndarray) -> float:
    """Frank–Wolfe gap of ``d = Jᵀw``, ``w ∈ Δ``: ``||d||² - min_t g_tᵀd``, at least half of
    ``||d||² - ||d*||²``."""
    return max(float(d @ d - np.min(j @ d)), 0.0)


@pytest.mark.parametrize("t", [2, 5, 10, 40])
def test_mgda(t):
    # Both: the min-norm point of the hull, weights on the simplex (no rescaling by T).
    # TorchJD's Frank–Wolfe (epsilon = 1e-3, max_iters = 100) stops early (gaps up to ~1e-2
    # of max||g_t||²), so the bound is its certificate: for d = Jᵀw, w ∈ Δ,
    # ||d - d*||² ≤ ||d||² - ||d*||² ≤ 2 gap(d) (d* is the min-norm point of a convex set),
    # hence ||ours - theirs|| ≤ √(2 gap(ours)) + √(2 gap(theirs)); ours (exact active set)
    # is also no longer than theirs. 1e-12 max||g_t||² absorbs the rounding of the gaps.
    # The weights are unique for full row rank: ||Δw|| ≤ ||Δd|| / σ_min(J).
    for d, kind, j in all_cases(t):
        got, weights, _ = ours("mgda", j)
        want, want_w = theirs_weighted(tja.MGDA(), j)
        slack = 1e-12 * np.max(np.sum(j * j, axis=1))
        bound = sum(math.sqrt(2 * (mgda_gap(j, x) + slack)) for x in (got, want))
        check(got, want, bound, f"MGDA {d} {kind}")
        assert got @ got <= want @ want + slack, (d, kind)
        if d >= t:
            check(weights, want_w, bound / sigma_min(j) + 2 * U32, f"MGDA weights {d} {kind}")


def cagrad_bound(j: np.ndarray, c: float, got, want, want_w) -> tuple[float, float]:
    """``(bound on ||got - want||, F(w_theirs) - ψ(got))`` for CAGrad (see :func:`test_cagrad`)."""
    t = len(j)
    g0 = j.mean(axis=0)
    lam = float(want_w.sum()) - 1.0  # TorchJD's weights are 1/T + λ w with λ = c||g0|| / ||g_w||
    assert lam > 0, "TorchJD took its Pareto-stationary branch (zero weights)"
    g_w = (want_w - 1.0 / t) / lam @ j
    upper = g_w @ g0 + c * np.linalg.norm(g0) * np.linalg.norm(g_w)  # F(w) ≥ max ψ
    slack = 1e-13 * np.sum(j * j)
    gaps = [max(upper - np.min(j @ x), 0.0) + slack for x in (got, want)]
    return sum(math.sqrt(2 * lam * g) for g in gaps), upper - np.min(j @ got)


@pytest.mark.parametrize(("t", "c", "rescale"), [(2, 0.4, 0), (5, 0.8, 1), (10, 0.4, 0),
                                                 (40, 0.4, 0)])
def test_cagrad(t, c, rescale):
    # TorchJD's CAGrad(c) is ours with rescale=0; rescale=1 (our default, as the official
    # code) divides the direction by 1 + c². Both build d = g0 + c||g0|| g_w / ||g_w|| (on the
    # sphere ||d - g0|| = c||g0||) from w ∈ Δ minimising F(w) = g_wᵀg0 + c||g0|| ||g_w||: ours
    # exactly, TorchJD with Clarabel (duality gap 1e-8 on G / tr G). The bound is a
    # certificate: d maximises ψ(d) = min_t g_tᵀd on that sphere, max ψ = min F ≤ F(w_theirs),
    # and ψ loses ||g_w|| / (2 c||g0||) ||d - d*||² on the sphere, so
    # ||d - d*||² ≤ 2 λ (F(w_theirs) - ψ(d)) with λ = c||g0|| / ||g_w||. Ours must reach
    # TorchJD's value to Clarabel's tolerance: F(w_theirs) - ψ(ours) ≤ 1e-7 tr G.
    factor = (1 + c * c) if rescale else 1.0
    for d, kind, j in all_cases(t, 1):
        got, weights, _ = ours("cagrad", j, c=c, rescale=rescale)
        got, weights = got * factor, weights * factor
        want, want_w = theirs_weighted(tja.CAGrad(c=c), j)
        bound, value_gap = cagrad_bound(j, c, got, want, want_w)
        check(got, want, bound, f"CAGrad {d} {kind}")
        assert value_gap <= 1e-7 * np.sum(j * j), (d, kind, value_gap)
        if d >= t:
            check(weights, want_w, bound / sigma_min(j) + 2 * U32 * factor * np.linalg.norm(
                want_w), f"CAGrad weights {d} {kind}")


# --------------------------------------------------------------------------- IMTL-G, ConFIG, ...


def condition(j: np.ndarray) -> float:
    """``κ(G)`` over the nonzero singular values of ``J`` (rank ``min(T, d)``)."""
    s = np.linalg.svd(j, compute_uv=False)[: min(j.shape)]
    return float((s[0] / s[-1]) ** 2)


@pytest.mark.parametrize("t", [2, 5, 10, 20, 40])
def test_imtl_g(t):
    # Full row rank (d ≥ T): both solve G α = c (||g_t||)_t, Σα = 1 (TorchJD: pinv(G); ours:
    # the same closed form by LU, the paper's D Uᵀ system being kept for singular G), each
    # accurate to ≈ ε κ(G) (4 ε (T + κ) bounds it, T for forming G). Rank-deficient
    # (d < T): TorchJD uses its own generalisation (Quinton & Rey 2024), a different
    # definition; ours follows the paper, whose condition, equal projections u_tᵀd on the
    # unit gradients, is checked to the same accuracy (d is 0 for generic rank-deficient J,
    # where a combination of the gradients with Σα = 1 vanishes).
    for d, kind, j in all_cases(t):
        got, weights, _ = ours("imtl_g", j)
        rel = 4 * EPS * (t + condition(j))
        assert abs(weights.sum() - 1.0) <= t * U32 * np.abs(weights).sum()  # float32 weights
        if d >= t:
            want, want_w = theirs_weighted(tja.IMTLG(), j)
            check(got, want, rel * np.linalg.norm(want) + combination_rounding(j, want_w),
                  f"IMTL-G {d} {kind}")
            check(weights, want_w, (rel + 2 * U32) * np.linalg.norm(want_w), "IMTL-G weights")
        else:
            proj = (j @ got) / np.linalg.norm(j, axis=1)
            spread = proj.max() - proj.min()
            assert spread <= rel * np.linalg.norm(j, axis=1).max(), (d, kind, spread)


@pytest.mark.parametrize(("t", "scale"), [(2, "min"), (3, "median"), (10, "rmse"), (10, "min"),
                                          (40, "min")])
def test_aligned_mtl(t, scale):
    # Ours sums the aligned gradients (as the official code and LibMTL), TorchJD averages
    # them (pref_vector 1/T): ours = T · theirs. Both eigen-decompose G, drop eigenvalues
    # below λ_max T ε and build √σ² V Λ^{-1/2} Vᵀ: rounding of G perturbs G^{-1/2} by
    # ≈ ε κ(G) / 2 relative, and the T aligned unit components add up to √T.
    for d, kind, j in all_cases(t):
        got, _, _ = ours("aligned_mtl", j, scale=scale)
        want = theirs(tja.AlignedMTL(scale_mode=scale), j)
        rel = 4 * EPS * (t + condition(j)) * math.sqrt(t)
        check(got / t, want, rel * np.linalg.norm(want) + 1e-15 * np.linalg.norm(j),
              f"Aligned-MTL {d} {kind}")


@pytest.mark.parametrize("t", [2, 5, 20, 40])
def test_config(t):
    # Same definition (pref_vector 1: TorchJD's default), no weights on TorchJD's side.
    # TorchJD takes pinv of the unit vectors Û (SVD, cut-off max(T, d) ε); ours solves
    # with K = Û Ûᵀ (cut-off 10 T ε, i.e. √(10 T ε) on Û), which squares the conditioning:
    # ≈ ε κ(K) relative. Jacobians with a singular value of Û between the two cut-offs
    # would be truncated differently: none of these is (asserted). Where 1 is orthogonal to
    # the range of Û (e.g. two opposite gradients) the direction is 0: ours exactly,
    # TorchJD up to normalise(v, eps=1e-12) of a rounding-level v (||v|| ≲ T ε ||Û⁺||),
    # i.e. within T ε ||Û⁺|| / 1e-12 Σ||g_t||.
    for d, kind, j in all_cases(t):
        got, _, _ = ours("config", j)
        want = theirs(tja.ConFIG(), j)
        units = j / np.linalg.norm(j, axis=1, keepdims=True)
        s = np.linalg.svd(units, compute_uv=False)
        band = (s > max(t, d) * EPS * s[0]) & (s <= math.sqrt(10 * t * EPS) * s[0])
        assert not band.any(), (d, kind, s)
        kept = s[s > math.sqrt(10 * t * EPS) * s[0]]
        attained = np.linalg.norm(units @ np.linalg.pinv(units) @ np.ones(t))
        if attained <= math.sqrt(10 * t * EPS * t):
            np.testing.assert_array_equal(got, 0.0)
            noise = t * EPS / kept[-1] / 1e-12 * np.sum(np.linalg.norm(j, axis=1))
            check(got, want, noise, f"ConFIG {d} {kind} (zero)")
            continue
        rel = 4 * EPS * (t + (kept[0] / kept[-1]) ** 2)
        check(got, want, rel * np.linalg.norm(want) + 1e-15 * np.linalg.norm(j),
              f"ConFIG {d} {kind}")


# --------------------------------------------------------------------------- random orders


def feed(monkeypatch, name: str) -> list:
    """Make ``torch.<name>`` return the next tensor of the returned queue (our draws)."""
    queue: list = []

    def draw(*args, **kwargs):
        return queue.pop(0)

    monkeypatch.setattr(torch, name, draw)
    return queue


def visit_orders(key_data, t: int) -> np.ndarray:
    """``order[i]``: the tasks our PCGrad/GradVac update visits for task ``i``, from the
    state's key data (the private helpers the aggregators use)."""
    with jax.enable_x64(True):
        key = projection._split_key(key_data)[1]
        return np.array(projection._visit_order(key, t, True))


def surgery_rounding(j: np.ndarray) -> float:
    """Rounding bound for PCGrad/GradVac: each g'_i = Σ_s C[i, s] g_s takes ≤ T steps,
    each computed from Gramian entries (≤ T terms) and moving g'_i by ≲ ||g'_i||."""
    return 4 * len(j) ** 2 * EPS * float(np.sum(np.linalg.norm(j, axis=1)))


@pytest.mark.parametrize("t", [2, 3, 10, 40])
def test_pcgrad(t, monkeypatch):
    # Same algorithm (each task visits the others in its own random order, skipping
    # itself; the sum of the projected gradients). TorchJD's torch.randperm(T) returns,
    # for task i, our order[i] (drawn from our state's key); the key advances per update.
    queue = feed(monkeypatch, "randperm")
    state = compiled("pcgrad", t, ())[0].init(None)
    for d, kind, j in all_cases(t):
        order = visit_orders(state.inner, t)
        queue[:] = [torch.as_tensor(row) for row in order]
        want, want_w = theirs_weighted(tja.PCGrad(), j)
        assert not queue
        got, weights, state = ours("pcgrad", j, state)
        check(got, want, surgery_rounding(j), f"PCGrad {d} {kind}")
        check(weights, want_w, 2 * U32 * np.linalg.norm(want_w)
              + surgery_rounding(j) / np.linalg.norm(j, axis=1).min(), "PCGrad weights")


@pytest.mark.parametrize(("t", "beta"), [(3, 0.5), (5, 0.01), (20, 0.5), (40, 0.5)])
def test_gradvac(t, beta, monkeypatch):
    # Same algorithm, whole-model variant, EMA targets φ̂ updated at every visit, run as one
    # sequence of updates per T. TorchJD's eps (added to two denominators) is set to 0:
    # ours has no such term (it floors 1 - φ̂² at ε instead, which never binds here).
    # Orders: TorchJD's torch.randperm(T - 1) indexes the other tasks; it returns the
    # positions of our order[i]. State: before each update our (float64) targets are set
    # to TorchJD's, so each update starts from the same φ̂, and both new φ̂ are compared.
    # Rounding: both take ||g'_i||² = cᵀGc from the Gramian, which loses ε (||g_i|| /
    # ||g'_i||)² to cancellation, and ||g'_i|| ≳ s ||g_i|| with s the smallest sine between
    # two gradients or of a target; the adjustments divide by sin φ̂ ≥ s: the surgery bound
    # (with TorchJD's coefficients, 16 T² ε Σ(|w_t| + 1) ||g_t||) grows as 1 / s².
    queue = feed(monkeypatch, "randperm")
    agg = compiled("gradvac", t, (("beta", beta),))[0]
    state = agg.init(None)
    tjd = tja.GradVac(beta=beta, eps=0.0)
    off = ~np.eye(t, dtype=bool)
    for step, (d, kind, j) in enumerate(all_cases(t)):
        phi = tjd.gramian_weighting._phi_t
        targets = np.zeros((t, t)) if phi is None else phi.numpy().copy()
        with jax.enable_x64(True):
            state = state._replace(inner=state.inner._replace(targets=jnp.asarray(targets)))
        order = visit_orders(state.inner.key, t)
        queue[:] = [torch.as_tensor([o - (o > i) for o in row if o != i])
                    for i, row in enumerate(order)]
        want, want_w = theirs_weighted(tjd, j)
        assert not queue
        got, weights, state = ours("gradvac", j, state, beta=beta)
        norms = np.linalg.norm(j, axis=1)
        cosines = (j @ j.T / np.outer(norms, norms))[off]
        sine = np.sqrt(1 - np.concatenate([targets[off], cosines]) ** 2).min()
        rel = 16 * t**2 * EPS / max(sine, 1e-6) ** 2
        bound = rel * (np.abs(want_w) + 1) @ norms
        check(got, want, bound, f"GradVac {step} {d} {kind}")
        check(weights, want_w, bound / norms.min() + 2 * U32 * np.linalg.norm(want_w),
              f"GradVac weights {step}")
        check(np.asarray(state.inner.targets), tjd.gramian_weighting._phi_t.numpy(),
              beta * t * rel, f"GradVac targets {step}")


@pytest.mark.parametrize(("t", "leak"), [(2, False), (10, True), (40, False)])
def test_graddrop(t, leak, monkeypatch):
    # Same rule (purity P = (1 + Σg / Σ|g|) / 2, one uniform U per coordinate shared by
    # the tasks, keep the positive components if U < P; leak ℓ_t): TorchJD's torch.rand
    # returns our draws U (our state's key, one per padded coordinate), so the masks are
    # identical and only the float64 rounding of the sums differs.
    queue = feed(monkeypatch, "rand")
    rng = np.random.default_rng(t)
    leaks = rng.uniform(0.0, 0.5, t) if leak else np.zeros(t)
    knobs = {"leakage": tuple(leaks)} if leak else {}
    tjd = tja.GradDrop(leak=torch.from_numpy(leaks) if leak else None)
    state = compiled("graddrop", t, tuple(knobs.items()))[0].init(None)
    for d, kind, j in all_cases(t):
        with jax.enable_x64(True):
            key = projection._split_key(state.inner)[1]
            draws = np.array(jax.random.uniform(key, (DMAX,), jnp.float64))
        queue[:] = [torch.from_numpy(draws[:d])]
        want = theirs(tjd, j)
        assert not queue
        got, _, state = ours("graddrop", j, state, **knobs)
        check(got, want, combination_rounding(j, np.ones(t)), f"GradDrop {d} {kind}")


# --------------------------------------------------------------------------- FairGrad, Nash-MTL


def solvable(j: np.ndarray) -> bool:
    """Whether ``G w = w^{-1/α}`` has a well-posed positive solution: 0 is not within
    1e-6 max||g_t||² of the hull of the gradients (else ``f`` is unbounded below)."""
    return hull_distance(j) > 1e-6


def fair_bounds(j: np.ndarray, w: np.ndarray, alpha: float, residual: float):
    """``(log-weight bound, direction bound)`` around the solution ``w`` of ``G w = w^{-q}``.

    With ``β = log w``, ``∇_β f = w^{1-q} ρ`` (``ρ = w^q G w - 1``) and ``∇²_β f ⪰
    q diag(w^{1-q})``, so to first order ``||Δβ||_D ≤ α ||ρ||_D`` with ``D = diag(w^{1-q})``;
    the direction moves by ``Jᵀ(w Δβ)``, at most ``√λ_max(W G W) ||Δβ||``. ``residual``
    bounds ``||ρ||₂`` summed over both libraries; a factor 2 covers second-order terms.
    """
    q = 1.0 / alpha
    dw = w ** (1 - q)
    dbeta = 2 * alpha * math.sqrt(dw.max() / dw.min()) * residual
    jw = j * w[:, None]
    return dbeta, math.sqrt(np.linalg.eigvalsh(jw @ jw.T)[-1]) * dbeta


def fair_residual(j: np.ndarray, w: np.ndarray, direction: np.ndarray, alpha: float):
    """``||w^{1/α} (J d) - 1||₂`` with ``J d = G w`` from the float64 direction."""
    return float(np.linalg.norm(w ** (1 / alpha) * (j @ direction) - 1))


@pytest.mark.parametrize(("t", "alpha"), [(2, 1.0), (3, 2.0), (10, 1.0), (20, 0.5), (40, 1.0)])
def test_fairgrad(t, alpha):
    # Same equation G w = w^{-1/α}, no rescaling; TorchJD solves it with scipy's
    # least_squares from 1/T (ftol = xtol = gtol = 1e-8), ours by Newton (tol 1e-12 here:
    # the default 1e-4 is a stopping tolerance). Where 0 is (nearly) in the hull there is
    # no solution and both return arbitrary iterates: skipped. Elsewhere ours must solve it
    # (residual ≤ 1e-6 √T, its float32 weights included) and, where least_squares did too
    # (residual ≤ 1e-5; at least half the Jacobians), match TorchJD within the bound from
    # both residuals (:func:`fair_bounds`).
    compared = 0
    for d, kind, j in all_cases(t):
        if not solvable(j):
            continue
        got, weights, _ = ours("fairgrad", j, alpha=alpha, tol=1e-12)
        want, want_w = theirs_weighted(tja.FairGrad(alpha=alpha), j)
        res_o, res_t = (fair_residual(j, w, x, alpha) for w, x in ((weights, got), (want_w, want)))
        assert res_o <= 1e-6 * math.sqrt(t), (d, kind, res_o)
        if res_t > 1e-5:
            continue
        compared += 1
        dbeta, bound = fair_bounds(j, want_w, alpha, res_o + res_t)
        check(got, want, bound + combination_rounding(j, want_w), f"FairGrad {d} {kind}")
        np.testing.assert_allclose(weights, want_w, rtol=dbeta + 2 * U32)
    assert compared >= len(cases(t)) // 2


@pytest.mark.filterwarnings("ignore:You are solving a parameterized problem that is not DPP")
@pytest.mark.parametrize(("t", "every", "max_norm"), [(2, 1, 1.0), (5, 2, 1.0), (10, 1, 0.0),
                                                      (20, 2, 1.0), (40, 3, 1.0)])
def test_nash_mtl(t, every, max_norm):
    # Same knobs: n_tasks = T, max_norm, update_weights_every, optim_niter = 20 (TorchJD's
    # CCP iterations; ours counts Newton steps, tol 1e-12 here). Both solve α (G α) = 1
    # (TorchJD's ECOS problem rescales G by ||G||_F and α back), so ||Jᵀα|| = √T, and
    # max_norm = 1 clips both to unit vectors: then only α up to scale matters, and the
    # residual is taken up to scale, r / mean(r) - 1 with r = w (J d). Stateful: each
    # solvable J (the first 8: each TorchJD solve rebuilds its cvxpy problem) starts a
    # sequence of 3 updates on J + 0.05 k N ||J|| / √(T d) with one TorchJD instance and
    # one state, both warm-started from their previous α; updates with k % every != 0
    # reuse it (ours stored in float32: + u32). Bounds: :func:`fair_bounds` (α = 1) from
    # both residuals at the last solve, doubled for the normalisation. A TorchJD solve
    # that stops short (residual > 1e-3: CCP not converged) ends that sequence's
    # comparison; ours must still be a solution.
    rng = np.random.default_rng(t)
    compared = 0
    starts = [j for _, _, j in all_cases(t, 1) if solvable(j)][:8]  # cvxpy: ~0.1 s a solve
    for j in starts:
        noise = rng.normal(size=j.shape) * np.linalg.norm(j) / math.sqrt(j.size)
        nash = tja.NashMTL(n_tasks=t, max_norm=max_norm, update_weights_every=every)
        state, dbeta = None, None
        for k in range(3):
            jk = j + 0.05 * k * noise
            if not solvable(jk):
                break
            got, weights, state = ours("nash_mtl", jk, state, max_norm=max_norm,
                                       update_weights_every=every, tol=1e-12)
            want, want_w = theirs_weighted(nash, jk)
            if k % every == 0:  # a solve: residuals (up to scale when clipped)
                res_o, res_t = (np.linalg.norm(r / r.mean() - 1 if max_norm else r - 1)
                                for r in (weights * (jk @ got), want_w * (jk @ want)))
                assert res_o <= 1e-6 * math.sqrt(t), (j.shape, k, res_o)
                dbeta = None if res_t > 1e-3 else fair_bounds(jk, want_w, 1.0, res_o + res_t)[0]
            if dbeta is None:
                continue
            compared += 1
            jw = jk * want_w[:, None]
            moved = math.sqrt(np.linalg.eigvalsh(jw @ jw.T)[-1]) * (dbeta + U32)
            bound = (2 if max_norm else 1) * moved + combination_rounding(jk, want_w)
            check(got, want, bound, f"Nash {j.shape} step {k}")
            rel = dbeta + 2 * moved / np.linalg.norm(want) + 2 * U32
            np.testing.assert_allclose(weights, want_w, rtol=rel)
    assert len(starts) == 8 and compared >= 12
