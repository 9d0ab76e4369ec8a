"""Gradient aggregators that solve a small problem on the Gramian: MGDA, CAGrad,
Nash-MTL, UPGrad, DualProj and FairGrad.

Each factory takes ``num_tasks`` and keyword knobs (checked in Python, with a
ValueError naming the knob) and returns an :class:`~mtl_jax.aggregators.base.Aggregator`
that, like :func:`~mtl_jax.aggregators.base.from_weighting`, picks weights ``w``
from the ``[T, T]`` Gramian of the per-task gradients and returns the descent
direction ``Jᵀ w = Σ_t w_t g_t``; ``state.weights`` reports ``w``. The solvers are
in :mod:`mtl_jax.aggregators.solvers`: jittable, vmappable, with stated
tolerances and bounded iteration counts.

One difference from :func:`~mtl_jax.aggregators.base.from_weighting`'s default:
the Gramian is that of the gradients divided by their largest absolute entry ``m``
(:func:`~mtl_jax.aggregators.base.scaled_gramian`), because ``‖g‖²`` overflows
float32 for gradients of norm ``~1e19`` and more and underflows for ``~1e-19``
and less. The weighting
functions get that scaled Gramian ``Ĝ = G / m²`` and ``m``; the methods whose
weights depend on the gradients' size (Nash-MTL, FairGrad, UPGrad/DualProj's
``norm_eps``) map them back.

MGDA-UB (Sener & Koltun's upper bound) is :func:`mgda` applied to the gradients
with respect to the shared representation instead of the shared parameters: that
choice belongs to the caller (see :mod:`mtl_jax.jacobian`), not to the aggregator.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mtl_jax.aggregators import solvers
from mtl_jax.aggregators.base import (
    Aggregator,
    check_num_tasks,
    from_weighting,
    scaled_gramian,
)

__all__ = ["FACTORIES", "NashMTLState", "cagrad", "dualproj", "fairgrad", "mgda",
           "nash_mtl", "upgrad"]

ScaledWeightingFn = Callable[[jax.Array, jax.Array, Any, jax.Array | None],
                             tuple[jax.Array, Any]]


def _aggregator(weighting: ScaledWeightingFn, num_tasks: int,
                init_inner: Callable[[int], Any] = lambda t: ()) -> Aggregator:
    """:func:`~mtl_jax.aggregators.base.from_weighting` on
    :func:`~mtl_jax.aggregators.base.scaled_gramian`,
    with ``w, inner = weighting(Ĝ, m, inner, value)`` and weights kept finite."""
    big = jnp.finfo(jnp.float32).max / (4 * num_tasks)

    def finite_weighting(summary, inner, value):
        weights, inner = weighting(*summary, inner, value)
        return jnp.clip(jnp.nan_to_num(weights, posinf=big, neginf=-big), -big, big), inner

    return from_weighting(finite_weighting, num_tasks, init_inner, summary=scaled_gramian)


def _check_pref_vector(pref_vector, num_tasks: int) -> np.ndarray:
    """The preference vector as a float array, or ``1/T`` when it is None."""
    if pref_vector is None:
        return np.full(num_tasks, 1.0 / num_tasks)
    try:
        p = np.asarray(pref_vector, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"pref_vector must be a vector of {num_tasks} numbers, "
                         f"got {pref_vector!r}") from err
    if p.shape != (num_tasks,):
        raise ValueError(f"pref_vector must have shape ({num_tasks},), got {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or not np.any(p > 0):
        raise ValueError("pref_vector must be finite and nonnegative with a positive entry, "
                         f"got {p.tolist()}")
    return p


def _check_choice(name: str, value, choices: tuple) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is one of ``choices`` (of the
    same type: ``1.0`` is not the int ``1``, but a bool is accepted as ``0``/``1``)."""
    kinds = {type(c) for c in choices}
    if int in kinds:
        kinds.add(bool)
    if type(value) not in kinds or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


# ---------------------------------------------------------------------------
# MGDA
# ---------------------------------------------------------------------------


_NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def mgda(num_tasks: int, *, normalization: str = "none", max_iters: int = 100,
         tol: float = 1e-6) -> Aggregator:
    """MGDA: the min-norm element of the convex hull of the task gradients.

    Désidéri (2012), "Multiple-gradient descent algorithm (MGDA) for multiobjective
    optimization"; Sener & Koltun (NeurIPS 2018), "Multi-Task Learning as
    Multi-Objective Optimization". The weights are
    ``w = argmin_{w ∈ Δ} ‖Σ_t w_t ĝ_t‖²`` (:func:`~mtl_jax.aggregators.solvers.min_norm_simplex`,
    exact for two tasks, an active-set method otherwise) and the direction is
    ``Σ_t w_t g_t``: a common descent direction for every task, zero at a
    Pareto-stationary point. The weights sum to 1 (as in TorchJD's ``MGDA`` and
    LibMTL's ``MGDA``, neither of which rescales by ``T``), so the direction is on
    the scale of one gradient, not of the sum of the ``T`` gradients.

    ``normalization`` is Sener & Koltun's gradient normalisation ``ĝ_t = g_t / n_t``
    used to choose the weights: ``"none"`` (``n_t = 1``, the default, as in LibMTL),
    ``"l2"`` (``n_t = ‖g_t‖``), ``"loss"`` (``n_t = L_t``) or ``"loss+"``
    (``n_t = L_t ‖g_t‖``); the loss-based ones need ``value`` (the ``[T]`` losses;
    their absolute values are used). As in Sener & Koltun's code, the weights then
    multiply the raw gradients ``g_t`` (LibMTL multiplies the normalised ones
    instead). A task whose ``n_t`` is zero counts as a zero gradient.

    MGDA-UB is this aggregator applied to the gradients with respect to the
    shared representation; choosing those gradients is the caller's job.

    Args:
      num_tasks: ``T``.
      normalization: ``"none"``, ``"l2"``, ``"loss"`` or ``"loss+"``.
      max_iters: active-set iteration bound of the min-norm solver.
      tol: its relative KKT tolerance (see
        :func:`~mtl_jax.aggregators.solvers.min_norm_simplex`).

    Examples:
      >>> agg = mgda(2)
      >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 2.0]])}
      >>> d, state = agg.update(grads, agg.init({"w": jnp.zeros(2)}))
      >>> [round(x, 4) for x in state.weights.tolist()], [round(x, 4) for x in d["w"].tolist()]
      ([0.8, 0.2], [0.8, 0.4])
    """
    check_num_tasks(num_tasks)
    _check_choice("normalization", normalization, _NORMALIZATIONS)
    solvers.check_int("max_iters", max_iters)
    solvers.check_float("tol", tol)

    def weighting(g, m, inner, value):
        del m
        if normalization in ("loss", "loss+") and value is None:
            raise ValueError(f"mgda(normalization={normalization!r}) needs the task losses: "
                             "call update(..., value=losses)")
        dtype = g.dtype
        n = jnp.ones(num_tasks, dtype)
        if normalization in ("l2", "loss+"):
            n = n * jnp.sqrt(jnp.maximum(jnp.diag(g), 0.0))
        if normalization in ("loss", "loss+"):
            n = n * jnp.abs(jnp.asarray(value, dtype).reshape(num_tasks))
        tiny = jnp.finfo(dtype).tiny
        inv = jnp.where((n > tiny) & jnp.isfinite(n), 1.0 / jnp.where(n > tiny, n, 1.0), 0.0)
        inv = jnp.where(jnp.isfinite(inv), inv, 0.0)
        inv = inv / jnp.maximum(jnp.max(inv), tiny)  # a common factor: keeps Ĝ in range
        w = solvers.min_norm_simplex(inv[:, None] * g * inv[None, :], max_iters=max_iters,
                                     tol=tol)
        return w, inner

    return _aggregator(weighting, num_tasks)


# ---------------------------------------------------------------------------
# CAGrad
# ---------------------------------------------------------------------------


def cagrad(num_tasks: int, *, c: float = 0.4, rescale: int = 1, max_iters: int = 200,
           tol: float = 1e-6) -> Aggregator:
    """CAGrad: the mean gradient, pulled towards the worst-off task within a ball.

    Liu, Liu, Jin, Stone & Liu (NeurIPS 2021), "Conflict-Averse Gradient Descent for
    Multi-task Learning", Algorithm 1. With ``g₀`` the mean gradient and
    ``φ = c² ‖g₀‖²``, ``w`` minimises ``F(w) = g_wᵀ g₀ + √φ ‖g_w‖`` over the simplex
    (``g_w = Σ w_t g_t``; :func:`~mtl_jax.aggregators.solvers.cagrad_simplex`, exact
    up to rounding) and the direction is ``d = g₀ + (√φ / ‖g_w‖) g_w``, i.e. the
    reported weights are ``1/T + (√φ / ‖g_w‖) w_t``, divided by ``1 + c²`` when
    ``rescale = 1``. ``c = 0.4`` is the paper's value for NYUv2 and Cityscapes.
    Like the paper, the direction is built on the *mean* gradient (so it is on the
    scale of one gradient, not of the sum).

    ``rescale`` follows the official code (and LibMTL): ``0`` no rescaling, ``1``
    (the default there and here) divides by ``1 + c²``, ``2`` divides by ``1 + c``
    (``False``/``True`` mean ``0``/``1``).
    When ``g_w = 0`` to rounding (``‖g_w‖² ≤ 16 ε max_t ‖g_t‖²``: the gradients are
    Pareto-stationary), the perturbation's direction is undefined and ``d = g₀``
    (TorchJD returns zero weights there; the official code divides by
    ``‖g_w‖ + 10⁻⁸``).

    Args:
      num_tasks: ``T``.
      c: the ball's radius relative to ``‖g₀‖``, ``c ≥ 0`` (``c = 0`` is the mean).
      rescale: ``0``, ``1`` or ``2`` (see above).
      max_iters: iteration bound of the solver.
      tol: its relative tolerance.

    Examples:
      >>> agg = cagrad(2, c=1.0, rescale=0)
      >>> grads = {"w": jnp.array([[1.0, 0.0], [-2.0, 0.6]])}
      >>> d, state = agg.update(grads, agg.init({"w": jnp.zeros(2)}))
      >>> g = grads["w"]
      >>> [round(x, 2) for x in (g @ g.mean(0)).tolist()]  # the mean hurts task 1
      [-0.5, 1.18]
      >>> [round(x, 4) for x in (g @ d["w"]).tolist()]  # CAGrad's direction helps both
      [0.0769, 0.0769]
    """
    check_num_tasks(num_tasks)
    solvers.check_float("c", c)
    _check_choice("rescale", rescale, (0, 1, 2))
    solvers.check_int("max_iters", max_iters)
    solvers.check_float("tol", tol)
    factor = {0: 1.0, 1: 1.0 / (1.0 + c * c), 2: 1.0 / (1.0 + c)}[int(rescale)]

    def weighting(g, m, inner, value):
        del m, value
        w = solvers.cagrad_simplex(g, c=c, max_iters=max_iters, tol=tol)
        dtype = g.dtype
        b = jnp.full(num_tasks, 1.0 / num_tasks, dtype)
        s = c * jnp.sqrt(jnp.maximum(b @ g @ b, 0.0))
        n2 = jnp.maximum(w @ g @ w, 0.0)
        ok = n2 > 16 * jnp.finfo(dtype).eps * jnp.max(jnp.diag(g))
        lam = jnp.where(ok, s / jnp.sqrt(jnp.where(ok, n2, 1.0)), 0.0)
        return factor * (b + lam * w), inner

    return _aggregator(weighting, num_tasks)


# ---------------------------------------------------------------------------
# Nash-MTL
# ---------------------------------------------------------------------------


class NashMTLState(NamedTuple):
    """Nash-MTL's inner state.

    Attributes:
      step: updates done so far (int32).
      alpha: the last solved ``α`` (before norm clipping), in gradient units; zeros
        before the first solve.
    """

    step: jax.Array
    alpha: jax.Array


def nash_mtl(num_tasks: int, *, max_norm: float = 1.0, update_weights_every: int = 1,
             optim_niter: int = 20, tol: float = 1e-4) -> Aggregator:
    """Nash-MTL: the Nash bargaining solution between the tasks.

    Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya (ICML 2022),
    "Multi-Task Learning as a Bargaining Game". The weights ``α > 0`` solve
    ``G α = 1 / α`` (each task's improvement ``g_tᵀ d`` is ``1 / α_t``), so
    ``‖Σ α_t g_t‖ = √T`` whatever the gradients' size; the direction is
    ``Σ α_t g_t``. The paper solves it with a sequence of convex-concave programs
    (cvxpy/ECOS); here :func:`~mtl_jax.aggregators.solvers.nash_bargaining`
    runs a damped Newton method warm-started from the previous ``α``, for at most
    ``optim_niter`` steps, to the relative residual ``max_t |α_t (G α)_t − 1| ≤ tol``.

    As in the paper's code (and TorchJD's and LibMTL's ports, whose defaults these
    are): ``α`` is recomputed every ``update_weights_every`` updates and reused in
    between (state), and when ``max_norm > 0`` the direction is scaled down to norm
    ``max_norm`` if longer (at the solution it has norm ``√T``, so the default
    ``max_norm = 1`` makes it a unit vector for ``T ≥ 2``); ``max_norm = 0``
    disables this. The reported weights include that scaling. Gradients with no
    solution (a zero gradient, or gradients with ``0`` in their convex hull such as
    exactly opposite ones) give bounded, finite weights (the solver clips its
    log-weights and stops after ``optim_niter`` steps); the clipping then bounds
    the direction.

    Args:
      num_tasks: ``T``.
      max_norm: cap on the direction's norm; ``0`` for none.
      update_weights_every: recompute ``α`` every this many updates.
      optim_niter: Newton step bound per solve.
      tol: relative residual tolerance of the solve.

    Examples:
      >>> agg = nash_mtl(2, max_norm=0.0)
      >>> grads = {"w": jnp.array([[2.0, 0.0], [0.0, 0.5]])}
      >>> d, state = agg.update(grads, agg.init({"w": jnp.zeros(2)}))
      >>> [round(x, 4) for x in state.weights.tolist()], [round(x, 4) for x in d["w"].tolist()]
      ([0.5, 2.0], [1.0, 1.0])
    """
    check_num_tasks(num_tasks)
    solvers.check_float("max_norm", max_norm)
    solvers.check_int("update_weights_every", update_weights_every)
    solvers.check_int("optim_niter", optim_niter)
    solvers.check_float("tol", tol)

    def init_inner(t):
        return NashMTLState(jnp.zeros((), jnp.int32), jnp.zeros(t, jnp.float32))

    def weighting(g, m, inner, value):
        del value
        dtype = g.dtype
        ok = m > 0
        safe_m = jnp.where(ok, m, 1.0)
        prev = inner.alpha.astype(dtype)

        def solve(_):
            a_hat = solvers.nash_bargaining(g, init=prev * m, max_iters=optim_niter, tol=tol)
            return jnp.where(ok, a_hat / safe_m, 0.0)

        alpha = lax.cond(inner.step % update_weights_every == 0, solve, lambda _: prev, None)
        alpha = jnp.where(jnp.isfinite(alpha), alpha, 0.0)
        weights = alpha
        if max_norm > 0:
            v = alpha * m  # ‖Σ α_t g_t‖² = (m α)ᵀ Ĝ (m α)
            norm = jnp.sqrt(jnp.maximum(v @ g @ v, 0.0))
            weights = jnp.where(norm > max_norm, alpha * (max_norm / jnp.where(
                norm > max_norm, norm, 1.0)), alpha)
        return weights, NashMTLState(inner.step + 1, alpha.astype(jnp.float32))

    return _aggregator(weighting, num_tasks, init_inner)


# ---------------------------------------------------------------------------
# UPGrad and DualProj
# ---------------------------------------------------------------------------


def _torchjd_gramian(g, m, norm_eps: float, reg_eps: float):
    """TorchJD's ``regularize(normalize(G, norm_eps), reg_eps)``: ``G / tr G`` (zero when
    ``tr G < norm_eps``) plus ``reg_eps · I``, from ``Ĝ = G / m²``."""
    dtype = g.dtype
    tr = jnp.trace(g)
    small = m * jnp.sqrt(jnp.maximum(tr, 0.0)) < math.sqrt(norm_eps)  # tr G = m² tr Ĝ
    small = small | ~(tr > 0)
    gn = jnp.where(small, jnp.zeros_like(g), g / jnp.where(small, 1.0, tr))
    return gn + reg_eps * jnp.eye(g.shape[0], dtype=dtype)


def _check_torchjd_knobs(norm_eps, reg_eps, max_iters, tol):
    solvers.check_float("norm_eps", norm_eps)
    solvers.check_float("reg_eps", reg_eps, strict=True)
    solvers.check_int("max_iters", max_iters)
    solvers.check_float("tol", tol)


def upgrad(num_tasks: int, *, pref_vector=None, norm_eps: float = 1e-4,
           reg_eps: float = 1e-4, max_iters: int = 100, tol: float = 1e-6) -> Aggregator:
    """UPGrad: project each task gradient onto the dual cone of all of them, then average.

    Quinton & Rey (2024), "Jacobian Descent for Multi-Objective Optimization" (the
    TorchJD paper). Each ``p_i g_i`` is projected onto the dual cone
    ``{d : g_tᵀ d ≥ 0 ∀t}``, whose projection is ``Jᵀ v_i`` with
    ``v_i = argmin_{v ≥ p_i e_i} vᵀ G v`` (their Proposition 1); the weights are
    ``w = Σ_i v_i`` and the direction ``Jᵀ w`` conflicts with no task
    (``J Jᵀ w ≥ 0`` up to the ridge below). ``p`` is ``pref_vector``, ``1/T`` by
    default (so the direction is on the scale of one gradient).

    Mirrors TorchJD's ``UPGradWeighting`` (whose defaults these are) so that results
    are comparable: the Gramian is divided by its trace (replaced by zeros when the
    trace is below ``norm_eps``: then ``w = p``) and ``reg_eps · I`` is added before
    solving. TorchJD solves the ``T`` QPs with quadprog in float64; here all ``T``
    are solved at once, in the Gramian's dtype, by
    :func:`~mtl_jax.aggregators.solvers.dual_cone_weights` (an exact active-set
    method, relative KKT tolerance ``tol``, at most ``max_iters`` iterations each).

    Args:
      num_tasks: ``T``.
      pref_vector: ``[T]`` nonnegative preference weights, or None for ``1/T``.
      norm_eps: trace below which the Gramian counts as zero (absolute, in squared
        gradient units, as in TorchJD).
      reg_eps: ridge added to the normalised Gramian, ``> 0``.
      max_iters: active-set iteration bound per QP.
      tol: relative KKT tolerance.

    Examples:
      >>> agg = upgrad(2)
      >>> grads = {"w": jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # 135° apart
      >>> d, state = agg.update(grads, agg.init({"w": jnp.zeros(2)}))
      >>> bool(jnp.all(grads["w"] @ d["w"] >= -1e-4))  # no conflict with either task
      True
    """
    check_num_tasks(num_tasks)
    p = _check_pref_vector(pref_vector, num_tasks)
    _check_torchjd_knobs(norm_eps, reg_eps, max_iters, tol)

    def weighting(g, m, inner, value):
        del value
        gr = _torchjd_gramian(g, m, norm_eps, reg_eps)
        u = jnp.diag(jnp.asarray(p, g.dtype))
        v = solvers.dual_cone_weights(gr, u, max_iters=max_iters, tol=tol)
        return jnp.sum(v, axis=0), inner

    return _aggregator(weighting, num_tasks)


def dualproj(num_tasks: int, *, pref_vector=None, norm_eps: float = 1e-4,
             reg_eps: float = 1e-4, max_iters: int = 100, tol: float = 1e-6) -> Aggregator:
    """DualProj: project the (preference-weighted) mean gradient onto the dual cone.

    Quinton & Rey (2024), "Jacobian Descent for Multi-Objective Optimization"; the
    projection is the solution of eq. 11 of Lopez-Paz & Ranzato (NeurIPS 2017),
    "Gradient Episodic Memory for Continual Learning". The weights are
    ``w = argmin_{v ≥ p} vᵀ G v`` and ``Jᵀ w`` is the projection of ``Jᵀ p`` onto
    ``{d : g_tᵀ d ≥ 0 ∀t}``; ``p`` is ``pref_vector``, ``1/T`` by default. Gramian
    normalisation and ridge as in :func:`upgrad` (TorchJD's ``DualProjWeighting``).

    Args:
      num_tasks: ``T``.
      pref_vector: ``[T]`` nonnegative preference weights, or None for ``1/T``.
      norm_eps: trace below which the Gramian counts as zero (then ``w = p``).
      reg_eps: ridge added to the normalised Gramian, ``> 0``.
      max_iters: active-set iteration bound.
      tol: relative KKT tolerance.

    Examples:
      >>> agg = dualproj(2)
      >>> grads = {"w": jnp.array([[1.0, 0.0], [-1.0, 1.0]])}
      >>> d, state = agg.update(grads, agg.init({"w": jnp.zeros(2)}))
      >>> bool(jnp.all(grads["w"] @ d["w"] >= -1e-4))
      True
    """
    check_num_tasks(num_tasks)
    p = _check_pref_vector(pref_vector, num_tasks)
    _check_torchjd_knobs(norm_eps, reg_eps, max_iters, tol)

    def weighting(g, m, inner, value):
        del value
        gr = _torchjd_gramian(g, m, norm_eps, reg_eps)
        w = solvers.dual_cone_weights(gr, jnp.asarray(p, g.dtype), max_iters=max_iters,
                                      tol=tol)
        return w, inner

    return _aggregator(weighting, num_tasks)


# ---------------------------------------------------------------------------
# FairGrad
# ---------------------------------------------------------------------------


def fairgrad(num_tasks: int, *, alpha: float = 1.0, max_iters: int = 50,
             tol: float = 1e-4) -> Aggregator:
    """FairGrad: α-fair allocation of the update's improvements among the tasks.

    Ban & Ji (ICML 2024), "Fair Resource Allocation in Multi-Task Learning". The
    weights ``w > 0`` solve ``G w = w^{-1/α}``: task ``t``'s improvement
    ``g_tᵀ d = (G w)_t`` is ``w_t^{-1/α}``; the direction is ``Σ w_t g_t``.
    ``α = 1`` is proportional fairness (Nash-MTL's bargaining solution without its
    norm clipping); larger ``α`` favours the worst-off task more (``α → ∞``
    approaches max-min fairness). ``α = 1`` is LibMTL's default. The paper's code
    (and LibMTL) solve it with ``scipy.optimize.least_squares`` from ``1/T``; here
    :func:`~mtl_jax.aggregators.solvers.alpha_fair` runs a damped Newton method to
    the relative residual ``max_t |w_t^{1/α} (G w)_t − 1| ≤ tol``, at most
    ``max_iters`` steps. Weights scale with the gradients' size as
    ``‖g‖^{-2α/(1+α)}``.

    Args:
      num_tasks: ``T``.
      alpha: FairGrad's ``α > 0``.
      max_iters: Newton step bound.
      tol: relative residual tolerance.

    Examples:
      >>> agg = fairgrad(2, alpha=1.0)
      >>> grads = {"w": jnp.array([[2.0, 0.0], [0.0, 0.5]])}
      >>> d, state = agg.update(grads, agg.init({"w": jnp.zeros(2)}))
      >>> [round(x, 4) for x in state.weights.tolist()]
      [0.5, 2.0]
    """
    check_num_tasks(num_tasks)
    solvers.check_float("alpha", alpha, strict=True)
    solvers.check_int("max_iters", max_iters)
    solvers.check_float("tol", tol)
    power = -2.0 * alpha / (1.0 + alpha)

    def weighting(g, m, inner, value):
        del value
        w_hat = solvers.alpha_fair(g, alpha=alpha, max_iters=max_iters, tol=tol)
        ok = m > 0
        w = w_hat * jnp.exp(power * jnp.log(jnp.where(ok, m, 1.0)))  # G = m² Ĝ
        return jnp.where(ok & jnp.isfinite(w), w, 0.0), inner

    return _aggregator(weighting, num_tasks)


FACTORIES: dict[str, Callable[..., Aggregator]] = {
    "mgda": mgda,
    "cagrad": cagrad,
    "nash_mtl": nash_mtl,
    "upgrad": upgrad,
    "dualproj": dualproj,
    "fairgrad": fairgrad,
}
