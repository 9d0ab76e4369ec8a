"""Small jittable solvers on ``[T, T]`` Gramians for the min-norm family of aggregators.

Every function here is pure, works on a symmetric positive semi-definite Gramian
``G = J Jᵀ`` (``T`` tasks, ``T`` small), runs in the Gramian's floating dtype
(float32, or float64 when x64 is on), and can be ``jax.jit``-ed and ``jax.vmap``-ed:
iterative solvers are ``lax.while_loop``s that stop at a stated tolerance or after
``max_iters`` iterations, whichever comes first, and never branch in Python on
traced values. No solver calls a host library (no cvxpy, scipy or quadprog).

The simplex and α-fair solvers first rescale ``G`` by a scalar (its largest or mean
diagonal entry) so that their results do not depend on the size of the gradients,
and map the result back to ``G``'s units; every tolerance is relative (to the size
of the terms it compares). Pass ``return_info=True`` to also get a
:class:`SolverInfo` (iterations, the stopping quantity, whether it met the
tolerance).

The simplex and orthant problems are solved by a primal active-set method
(Lawson & Hanson's NNLS scheme), which is exact up to rounding and typically
needs about as many iterations as there are nonzero weights: far fewer, and far
more accurate on ill-conditioned Gramians, than projected-gradient or
Frank–Wolfe iterations.

Solvers:

* :func:`project_simplex`: Euclidean projection onto the probability simplex.
* :func:`min_norm_simplex`: ``argmin_{w ∈ Δ} wᵀ G w`` (MGDA's min-norm point).
* :func:`nonneg_qp`: ``argmin_{x ≥ 0} ½ xᵀ G x + cᵀ x`` (an active-set method).
* :func:`dual_cone_weights`: ``argmin_{v ≥ u} vᵀ G v``, the weights of the
  projection of ``Jᵀ u`` onto the dual cone of the rows of ``J`` (UPGrad, DualProj).
* :func:`cagrad_simplex`: ``argmin_{w ∈ Δ} wᵀ G b + c √(bᵀ G b) √(wᵀ G w)`` (CAGrad).
* :func:`alpha_fair`: the positive solution of ``G w = w^{-1/α}`` (FairGrad);
  :func:`nash_bargaining` is its ``α = 1`` case, ``G w = 1 / w`` (Nash-MTL).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


class SolverInfo(NamedTuple):
    """What an iterative solver did.

    Attributes:
      iterations: iterations run (``0 ≤ iterations ≤ max_iters``), int32.
      residual: the solver's stopping quantity at the returned point (see each
        solver); ``converged`` is ``residual ≤ tol``.
      converged: whether the tolerance was met.
    """

    iterations: jax.Array
    residual: jax.Array
    converged: jax.Array


# ---------------------------------------------------------------------------
# knob validation (Python values only) and small helpers
# ---------------------------------------------------------------------------


def check_int(name: str, value, minimum: int = 1) -> int:
    """Raise a ValueError naming ``name`` unless ``value`` is an int ``≥ minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_float(name: str, value, *, minimum: float = 0.0, strict: bool = False) -> float:
    """Raise a ValueError naming ``name`` unless ``value`` is a finite real ``≥`` (or ``>``)
    ``minimum``."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        op = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {op} {minimum}, got {value!r}")
    return float(value)


def _square(G) -> jax.Array:
    """``G`` as a symmetric float matrix (at least float32)."""
    G = jnp.asarray(G)
    if G.ndim != 2 or G.shape[0] != G.shape[1]:
        raise ValueError(f"expected a square [T, T] Gramian, got shape {G.shape}")
    dtype = jnp.promote_types(G.dtype, jnp.float32)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.float32
    G = G.astype(dtype)
    return 0.5 * (G + G.T)


def _normalize(G: jax.Array, scale: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(G / scale, scale > tiny)``, with ``G / scale`` replaced by zeros when the scale is
    zero, subnormal or not finite (so that degenerate input gives finite output)."""
    tiny = jnp.finfo(G.dtype).tiny
    ok = (scale > tiny) & jnp.isfinite(scale)
    safe = jnp.where(ok, scale, 1.0)
    Gn = jnp.where(ok, G / safe, jnp.zeros_like(G))
    return jnp.where(jnp.isfinite(Gn), Gn, 0.0), ok


def _info(iterations, residual, tol) -> SolverInfo:
    residual = jnp.asarray(residual)
    return SolverInfo(jnp.asarray(iterations, jnp.int32), residual, residual <= tol)


def _single_task(dtype, tol, return_info: bool):
    """The one point ``w = (1,)`` of the one-task simplex (and its info if asked)."""
    w = jnp.ones(1, dtype)
    return (w, _info(0, jnp.zeros((), dtype), tol)) if return_info else w


# ---------------------------------------------------------------------------
# the simplex
# ---------------------------------------------------------------------------


def project_simplex(v: jax.Array) -> jax.Array:
    """Euclidean projection of ``v`` (last axis) onto the simplex ``{w ≥ 0, Σ w = 1}``.

    The sort-based algorithm (Held, Wolfe & Crowder 1974; Duchi et al. 2008): sort
    ``v`` in decreasing order ``u``, find the largest ``ρ`` with
    ``u_ρ > (Σ_{k ≤ ρ} u_k − 1) / ρ``, and return ``max(v − θ, 0)`` with
    ``θ = (Σ_{k ≤ ρ} u_k − 1) / ρ``. Exact, ``O(T log T)``, no iterations.

    Examples:
      >>> project_simplex(jnp.array([0.5, 2.0, -1.0])).tolist()
      [0.0, 1.0, 0.0]
      >>> [round(x, 4) for x in project_simplex(jnp.array([0.6, 0.6, 0.0])).tolist()]
      [0.5, 0.5, 0.0]
    """
    v = jnp.asarray(v)
    t = v.shape[-1]
    u = -jnp.sort(-v, axis=-1)
    css = jnp.cumsum(u, axis=-1) - 1.0
    k = jnp.arange(1, t + 1, dtype=v.dtype)
    rho = jnp.sum(u - css / k > 0, axis=-1, keepdims=True)  # ≥ 1 always
    theta = jnp.take_along_axis(css, rho - 1, axis=-1) / rho.astype(v.dtype)
    return jnp.maximum(v - theta, 0.0)


def _two_task_min_norm(G: jax.Array) -> jax.Array:
    """Closed form of :func:`min_norm_simplex` for ``T = 2``: ``w₁ = clip(((g₂ − g₁)·g₂) /
    ‖g₁ − g₂‖², 0, 1)``; equal gradients (``‖g₁ − g₂‖ ≈ 0``) give ``(½, ½)``."""
    num = G[1, 1] - G[0, 1]
    den = G[0, 0] + G[1, 1] - 2.0 * G[0, 1]
    eps = jnp.finfo(G.dtype).eps
    ok = den > 4 * eps * (G[0, 0] + G[1, 1])
    w1 = jnp.where(ok, jnp.clip(num / jnp.where(ok, den, 1.0), 0.0, 1.0), 0.5)
    return jnp.stack([w1, 1.0 - w1])


# ---------------------------------------------------------------------------
# a primal active-set engine (Lawson & Hanson 1974, generalised)
# ---------------------------------------------------------------------------


def _robust_solve(m, rhs):
    """``m⁻¹ rhs`` by LU with partial pivoting (no truncation of small pivots, which
    matters for tasks with tiny gradients), or by least squares when ``m`` is
    singular (identical or collinear gradients)."""
    x = jnp.linalg.solve(m, rhs)
    ok = jnp.all(jnp.isfinite(x))
    # lax.cond skips the SVD unless needed (under vmap both branches run, as a select)
    return lax.cond(ok, lambda: x, lambda: jnp.linalg.lstsq(m, rhs)[0])


def _active_set(value_fn, grad_fn, sub_fn, x0, free0, *, simplex: bool, max_iters,
                tol: float, at_minimum=True):
    """Primal active-set iterations for ``min φ(x)`` over ``x ≥ 0`` (and ``Σ x = 1`` when
    ``simplex``), ``φ`` convex.

    ``value_fn(x) -> (φ(x), size)`` (``size`` bounds the rounding of ``φ``);
    ``grad_fn(x) -> (∇φ(x), scale)`` where ``scale > 0`` is the size of the terms in
    each gradient entry (for relative tests); ``sub_fn(free) -> (z, valid)`` minimises
    ``φ`` over ``{z : z_j = 0 off free (, Σ z = 1)}`` without sign constraints.

    Each iteration: if the current point is the subproblem's minimiser
    (``need_add``), free the fixed coordinate with the largest relative KKT
    violation (``(λ − ∇φ_j) / scale_j`` with ``λ`` the multiplier of ``Σ x = 1``, or
    0 on the orthant) if it exceeds ``tol``, else stop (optimal). Then solve the
    subproblem on the free set; if the solution is positive on it, move there,
    otherwise move from ``x`` towards it until the first free coordinate reaches 0
    and fix that coordinate. ``φ`` never increases: a subproblem solution that
    would increase it (rounding in an ill-conditioned solve) counts as a failure.
    Stops after ``max_iters`` iterations, when the subproblem fails (``valid``
    false), or when rounding fixes a coordinate right after freeing it
    (stagnation). ``at_minimum`` says whether ``x0`` already minimises the
    subproblem on ``free0`` (a cold start at a vertex or at 0) or not (a warm start
    from another problem's solution). ``max_iters`` may be traced. Returns
    ``(x, free, k)``.
    """
    dtype = x0.dtype

    def multiplier(grad, free):
        if not simplex:
            return jnp.zeros((), dtype)
        return jnp.sum(jnp.where(free, grad, 0.0)) / jnp.maximum(jnp.sum(free), 1)

    def cond(s):
        k, _, _, _, done = s
        return (k < max_iters) & ~done

    def body(s):
        k, x, free, need_add, _ = s
        grad, scale = grad_fn(x)
        lam = multiplier(grad, free)
        viol = jnp.where(free, -jnp.inf, (lam - grad) / scale)
        j = jnp.argmax(viol)
        can_add = viol[j] > tol
        optimal = need_add & ~can_add
        adding = need_add & can_add
        free1 = jnp.where(adding, free.at[j].set(True), free)
        z, valid = sub_fn(free1)
        z = jnp.where(free1, z, 0.0)
        valid = valid & jnp.all(jnp.isfinite(z))
        z = jnp.where(valid, z, x)
        fx, size = value_fn(x)
        fz, _ = value_fn(z)
        valid = valid & (fz <= fx + 16 * jnp.finfo(dtype).eps * size)
        feasible = jnp.all(jnp.where(free1, z > 0, True))
        blocking = free1 & (z <= 0)
        ratio = jnp.where(blocking, x / jnp.where(blocking, x - z, 1.0), jnp.inf)
        i = jnp.argmin(ratio)
        step = jnp.clip(ratio[i], 0.0, 1.0)
        x_int = jnp.maximum(x + step * (z - x), 0.0).at[i].set(0.0)
        if simplex:
            x_int = x_int / jnp.maximum(jnp.sum(x_int), jnp.finfo(dtype).tiny)
        free_int = free1 & (x_int > 0)
        stalled = ~valid | (adding & ~feasible & (step <= 0) & (i == j))
        stop = optimal | stalled
        x_new = jnp.where(stop, x, jnp.where(feasible, z, x_int))
        free_new = jnp.where(stop, free, jnp.where(feasible, free1, free_int))
        return k + 1, x_new, free_new, feasible, stop

    init = (jnp.int32(0), x0, free0, jnp.asarray(at_minimum, bool), jnp.bool_(False))
    k, x, free, _, _ = lax.while_loop(cond, body, init)
    return x, free, k


def _simplex_qp(Gn, h, w0, free0, *, max_iters, tol, at_minimum=True):
    """``argmin_{w ∈ Δ} ½ wᵀ G w + hᵀ w`` by :func:`_active_set`, from ``(w0, free0)``.

    The subproblem is the bordered KKT system ``[G_FF 1; 1ᵀ 0] [w_F; −ν] = [−h_F; 1]``
    (identity rows off the free set), solved by :func:`_robust_solve`.
    """
    t = Gn.shape[0]
    dtype = Gn.dtype
    absg = jnp.abs(Gn)
    tiny = jnp.finfo(dtype).tiny
    eye = jnp.eye(t, dtype=dtype)

    def grad_fn(w):
        return Gn @ w + h, absg @ w + jnp.abs(h) + tiny

    def value_fn(w):
        return 0.5 * w @ (Gn @ w) + h @ w, 0.5 * w @ (absg @ w) + jnp.abs(h) @ w

    def sub_fn(free):
        kkt = jnp.zeros((t + 1, t + 1), dtype)
        kkt = kkt.at[:t, :t].set(jnp.where(free[:, None] & free[None, :], Gn, eye))
        border = jnp.where(free, 1.0, 0.0).astype(dtype)
        kkt = kkt.at[:t, t].set(border).at[t, :t].set(border)
        rhs = jnp.zeros(t + 1, dtype).at[:t].set(jnp.where(free, -h, 0.0)).at[t].set(1.0)
        return _robust_solve(kkt, rhs)[:t], jnp.bool_(True)

    return _active_set(value_fn, grad_fn, sub_fn, w0, free0, simplex=True,
                       max_iters=max_iters, tol=tol, at_minimum=at_minimum)


def _simplex_gap(grad, scale, w):
    """The Frank–Wolfe gap ``∇φᵀ w − min_t ∇φ_t`` relative to ``scaleᵀ w`` (a bound on
    ``φ(w) − min_Δ φ``, relative to the size of the terms of ``∇φᵀ w``)."""
    gap = jnp.maximum(grad @ w - jnp.min(grad), 0.0)
    return gap / (scale @ w)


# ---------------------------------------------------------------------------
# MGDA's min-norm point
# ---------------------------------------------------------------------------


def min_norm_simplex(G, *, max_iters: int = 100, tol: float = 1e-6,
                     return_info: bool = False):
    """The min-norm point of the convex hull of the gradients: ``argmin_{w ∈ Δ} wᵀ G w``.

    MGDA's subproblem (Désidéri 2012; Sener & Koltun 2018). ``G`` is first divided
    by its largest diagonal entry ``max_t ‖g_t‖²``.

    Algorithm: ``T = 1`` and ``T = 2`` are solved in closed form (``T = 2``:
    ``w₁ = clip(((g₂ − g₁)·g₂) / ‖g₁ − g₂‖², 0, 1)``, ``(½, ½)`` for equal
    gradients). For ``T ≥ 3``: a primal active-set method (Lawson & Hanson's NNLS
    scheme with the constraint ``Σ w = 1``; Wolfe's 1976 min-norm-point algorithm
    is the same idea). Start at the vertex of the shortest gradient; repeatedly
    free the task ``j`` with the most negative reduced gradient
    ``(G w)_j − λ`` (``λ = wᵀ G w``), solve the bordered KKT system
    ``[G_FF 1; 1ᵀ 0] [w_F; −λ] = [0; 1]`` on the free set ``F`` (by LU, falling back
    to least squares when it is singular, so collinear or identical gradients are
    fine), and step back to the boundary when that solution has a non-positive
    entry. A solution that would increase ``wᵀ G w`` (rounding in an ill-conditioned
    solve) stops the iterations, so the objective never increases. Exact up to
    rounding; each iteration is one ``(T+1) × (T+1)`` linear solve, and the count is
    about the number of tasks with nonzero weight.

    Convergence criterion: no task off the support has a relative KKT violation
    ``(λ − (G w)_j) / (|G| w)_j > tol``. The returned ``residual`` is the relative
    Frank–Wolfe gap ``(wᵀ G w − min_t (G w)_t) / wᵀ |G| w`` (it bounds the excess
    ``½ (wᵀ G w − min_Δ vᵀ G v)`` relative to ``½ wᵀ |G| w``). At most
    ``max_iters`` iterations.

    Args:
      G: ``[T, T]`` Gramian.
      max_iters: iteration bound (``T ≥ 3``).
      tol: relative KKT tolerance.
      return_info: also return a :class:`SolverInfo` (``residual`` = the relative gap).

    Returns:
      ``w`` (``[T]``, on the simplex), and the info if asked.

    Examples:
      >>> G = jnp.array([[1.0, 0.0], [0.0, 4.0]])  # g1 ⟂ g2, ‖g2‖ = 2‖g1‖
      >>> [round(x, 4) for x in min_norm_simplex(G).tolist()]
      [0.8, 0.2]
      >>> w, info = min_norm_simplex(jnp.eye(3), return_info=True)
      >>> [round(x, 4) for x in w.tolist()], bool(info.converged)
      ([0.3333, 0.3333, 0.3333], True)
    """
    check_int("max_iters", max_iters)
    check_float("tol", tol)
    G = _square(G)
    t = G.shape[0]
    dtype = G.dtype
    if t == 1:
        return _single_task(dtype, tol, return_info)
    Gn, _ = _normalize(G, jnp.max(jnp.diag(G)))
    absg = jnp.abs(Gn)
    tiny = jnp.finfo(dtype).tiny

    def grad_fn(w):
        return Gn @ w, absg @ w + tiny

    if t == 2:
        w = _two_task_min_norm(Gn)
        k = 0
    else:
        w0 = jax.nn.one_hot(jnp.argmin(jnp.diag(Gn)), t, dtype=dtype)
        w, _, k = _simplex_qp(Gn, jnp.zeros(t, dtype), w0, w0 > 0, max_iters=max_iters,
                              tol=tol)
    if not return_info:
        return w
    return w, _info(k, _simplex_gap(*grad_fn(w), w), tol)


# ---------------------------------------------------------------------------
# the nonnegative orthant: UPGrad and DualProj
# ---------------------------------------------------------------------------


def nonneg_qp(G, c, *, max_iters: int = 100, tol: float = 1e-6,
              return_info: bool = False):
    """``argmin_{x ≥ 0} ½ xᵀ G x + cᵀ x`` for a symmetric positive-definite ``G``.

    Algorithm: the primal active-set method of Lawson & Hanson (1974, NNLS) written
    for the quadratic: start at ``x = 0`` with every coordinate fixed at 0; free the
    coordinate whose gradient ``(G x + c)_j`` is most negative, solve the equality
    problem ``G_FF z_F = −c_F`` on the free set ``F`` and, if ``z_F > 0``, accept it;
    otherwise step from ``x`` towards ``z`` until a free coordinate reaches 0, fix it
    and solve again. Each iteration is one ``T × T`` linear solve (identity rows for
    the fixed coordinates, so shapes stay static). It is exact up to rounding and
    finishes in a number of iterations close to the number of nonzero coordinates.
    ``c`` may be ``[K, T]``: the ``K`` problems are solved at once (``vmap``).

    Convergence criterion: a coordinate is freed only when its relative violation
    ``−(G x + c)_j / (|G| |x| + |c|)_j`` exceeds ``tol``; the solver stops when none
    does. The returned ``residual`` is the relative KKT residual
    ``max_j v_j / (|G| |x| + |c|)_j`` with ``v_j = |(G x + c)_j|`` on the free set and
    ``max(−(G x + c)_j, 0)`` off it. It stops after ``max_iters`` iterations at the
    latest (``x`` is always feasible, ``x ≥ 0``), or when rounding makes a freed
    coordinate drop straight back (stagnation).

    Args:
      G: ``[T, T]`` symmetric positive-definite matrix (add a ridge if it is only
        semi-definite; a singular system stops the solver at a feasible point).
      c: ``[T]`` or ``[K, T]`` linear terms.
      max_iters: iteration bound (per problem).
      tol: relative KKT tolerance.
      return_info: also return a :class:`SolverInfo` (``residual`` = the KKT residual).

    Returns:
      ``x`` with ``c``'s shape, and the info if asked.

    Examples:
      >>> G = jnp.array([[2.0, 1.0], [1.0, 2.0]])
      >>> nonneg_qp(G, jnp.array([-1.0, 1.0])).tolist()  # x2 is held at 0
      [0.5, 0.0]
      >>> nonneg_qp(G, jnp.array([[-3.0, -3.0], [1.0, 1.0]])).tolist()
      [[1.0, 1.0], [0.0, 0.0]]
    """
    check_int("max_iters", max_iters)
    check_float("tol", tol)
    G = _square(G)
    t = G.shape[0]
    dtype = G.dtype
    c = jnp.asarray(c, dtype)
    if c.shape[-1] != t or c.ndim not in (1, 2):
        raise ValueError(f"c must be [T] or [K, T] with T = {t}, got {c.shape}")
    absg = jnp.abs(G)
    eye = jnp.eye(t, dtype=dtype)
    tiny = jnp.finfo(dtype).tiny

    def solve_one(ci):
        def grad_fn(x):
            return G @ x + ci, absg @ jnp.abs(x) + jnp.abs(ci) + tiny

        def value_fn(x):
            return 0.5 * x @ (G @ x) + ci @ x, 0.5 * jnp.abs(x) @ (absg @ jnp.abs(x)) + \
                jnp.abs(ci) @ jnp.abs(x)

        def sub_fn(free):
            m = jnp.where(free[:, None] & free[None, :], G, eye)
            return _robust_solve(m, jnp.where(free, -ci, 0.0)), jnp.bool_(True)

        x0 = jnp.zeros(t, dtype)
        x, free, k = _active_set(value_fn, grad_fn, sub_fn, x0, x0 > 0, simplex=False,
                                 max_iters=max_iters, tol=tol)
        grad, scale = grad_fn(x)
        v = jnp.where(free, jnp.abs(grad), jnp.maximum(-grad, 0.0)) / scale
        return x, _info(k, jnp.max(v), tol)

    x, info = solve_one(c) if c.ndim == 1 else jax.vmap(solve_one)(c)
    return (x, info) if return_info else x


def dual_cone_weights(G, u, *, max_iters: int = 100, tol: float = 1e-6,
                      return_info: bool = False):
    """Weights of the projection of ``Jᵀ u`` onto the dual cone ``{d : J d ≥ 0}``.

    By Proposition 1 of Quinton & Rey (2024, "Jacobian Descent for Multi-Objective
    Optimization"), ``π(Jᵀ u) = Jᵀ v`` with ``v = argmin_{v ≥ u} vᵀ G v``. Writing
    ``v = u + x`` this is :func:`nonneg_qp` with linear term ``G u``; its KKT
    conditions give ``G v ≥ 0``, i.e. ``J (Jᵀ v) ≥ 0``. ``G`` must be positive
    definite: UPGrad and DualProj add a ridge first, as TorchJD does.

    Args:
      G: ``[T, T]`` positive-definite Gramian.
      u: ``[T]`` or ``[K, T]`` weights of the vectors to project.
      max_iters, tol, return_info: as in :func:`nonneg_qp`.

    Returns:
      ``v`` with ``u``'s shape, and the info if asked.

    Examples:
      >>> G = jnp.array([[1.0, -0.5], [-0.5, 1.0]])  # 120° apart
      >>> dual_cone_weights(G, jnp.array([1.0, 0.0])).tolist()  # g1 + ½ g2 ⟂ g2
      [1.0, 0.5]
    """
    G = _square(G)
    u = jnp.asarray(u, G.dtype)
    x, info = nonneg_qp(G, u @ G, max_iters=max_iters, tol=tol, return_info=True)
    v = u + x
    return (v, info) if return_info else v


# ---------------------------------------------------------------------------
# CAGrad
# ---------------------------------------------------------------------------


def cagrad_simplex(G, *, c: float = 0.4, max_iters: int = 200, tol: float = 1e-6,
                   return_info: bool = False):
    """CAGrad's dual problem: ``argmin_{w ∈ Δ} F(w) = g_wᵀ g₀ + √φ ‖g_w‖``.

    With ``g_w = Jᵀ w``, ``g₀ = Jᵀ 1/T`` the mean gradient and ``φ = c² ‖g₀‖²``
    (Liu et al., NeurIPS 2021, eq. 5), in Gramian terms
    ``F(w) = wᵀ G b + s √(wᵀ G w)`` with ``b = 1/T`` and ``s = c √(bᵀ G b)``. ``F``
    is convex and positively homogeneous of degree 1 in ``G``, so ``G`` is first
    divided by its largest diagonal entry.

    Algorithm: since ``s n = min_{τ > 0} n² / (2τ) + s² τ / 2``,
    ``min F = min_{τ > 0} Φ(τ)`` with
    ``Φ(τ) = min_{w ∈ Δ} [aᵀ w + wᵀ G w / (2τ)] + s² τ / 2`` (``a = G b``), a convex
    function of ``τ`` (a partial minimum of a jointly convex function) whose
    derivative has the sign of ``s τ − ‖g_{w(τ)}‖``. So the solver looks for the
    root ``τ*`` of ``s τ = ‖g_{w(τ)}‖``, where ``w(τ)`` solves the simplex QP
    ``min_Δ ½ wᵀ G w + τ aᵀ w`` exactly (the active-set method of
    :func:`min_norm_simplex`, warm-started from the previous ``w``). On a fixed
    support ``S``, ``w(τ) = u + τ v`` is affine in ``τ`` (``u = p / 1ᵀp``,
    ``v = (1ᵀr) u − r``, ``p = G_SS⁻¹ 1``, ``r = G_SS⁻¹ a_S``), so the root is the
    positive root of the quadratic ``s² τ² = (u + τ v)ᵀ G (u + τ v)``: a Newton-like
    step that is exact once the support is right. It is safeguarded by the bracket
    ``0 ≤ τ* ≤ 1 / s`` (``‖g_w‖ ≤ 1`` after normalisation), shrunk at every step,
    with a bisection in ``log τ`` when the proposal leaves it. ``w(τ*)`` minimises
    ``F`` (and ``s / ‖g_w‖ = 1 / τ*``). ``c = 0`` (or ``g₀ = 0``) makes ``F``
    linear: the best vertex is returned. Starts at ``τ = 1 / c``.

    Convergence criterion: ``|s τ − ‖g_w‖| ≤ tol · (s τ + ‖g_w‖)`` with ``w = w(τ)``
    solved to the relative KKT tolerance ``tol``. At most ``max_iters`` iterations
    in all, counting every active-set iteration of the inner QPs. The returned
    ``residual`` is the relative Frank–Wolfe gap of ``F``,
    ``(∇F(w)ᵀ w − min_t ∇F(w)_t) / (|∇F|(w)ᵀ w)`` (``|∇F|`` sums the absolute terms
    of the gradient), which bounds ``F(w) − min F``. When the optimum has
    ``g_w = 0`` (Pareto-stationary gradients) ``τ* = 0`` is a limit, approached by
    bisection until the iteration bound.

    Args:
      G: ``[T, T]`` Gramian.
      c: CAGrad's ``c ≥ 0`` (radius of the ball around ``g₀``, relative to ``‖g₀‖``).
      max_iters: bound on the total number of (inner active-set) iterations.
      tol: relative tolerance.
      return_info: also return a :class:`SolverInfo` (``residual`` = the relative gap).

    Returns:
      ``w`` (``[T]``, on the simplex), and the info if asked.

    Examples:
      >>> G = jnp.array([[1.0, -0.5], [-0.5, 2.0]])
      >>> [round(x, 4) for x in cagrad_simplex(G, c=0.0).tolist()]  # linear F: best vertex
      [1.0, 0.0]
      >>> [round(x, 4) for x in cagrad_simplex(G, c=1.0).tolist()]
      [0.75, 0.25]
    """
    check_float("c", c)
    check_int("max_iters", max_iters)
    check_float("tol", tol)
    G = _square(G)
    t = G.shape[0]
    dtype = G.dtype
    if t == 1:
        return _single_task(dtype, tol, return_info)
    Gn, _ = _normalize(G, jnp.max(jnp.diag(G)))
    absg = jnp.abs(Gn)
    b = jnp.full(t, 1.0 / t, dtype)
    a = Gn @ b
    s = c * jnp.sqrt(jnp.maximum(b @ a, 0.0))
    tiny = jnp.finfo(dtype).tiny
    eye = jnp.eye(t, dtype=dtype)
    active = s > tiny
    safe_s = jnp.where(active, s, 1.0)

    def norm_of(w):
        return jnp.sqrt(jnp.maximum(w @ (Gn @ w), 0.0))

    def root_on_support(free, lo, hi):
        """The root of s² τ² = ‖g_{u + τ v}‖² on the support ``free``, if in (lo, hi)."""
        m = jnp.where(free[:, None] & free[None, :], Gn, eye)
        rhs = jnp.where(free[:, None], jnp.stack([jnp.ones(t, dtype), a], axis=1), 0.0)
        pr = _robust_solve(m, rhs)
        p, r = jnp.where(free, pr[:, 0], 0.0), jnp.where(free, pr[:, 1], 0.0)
        big_a = jnp.sum(p)
        u = p / jnp.where(big_a != 0, big_a, 1.0)
        v = jnp.sum(r) * u - r
        gu, gv = Gn @ u, Gn @ v
        uu, uv, vv = u @ gu, u @ gv, v @ gv
        quad = s * s - vv
        root = (uv + jnp.sqrt(jnp.maximum(uv * uv + quad * uu, 0.0))) / jnp.where(
            quad > 0, quad, 1.0)
        ok = (big_a > 0) & (quad > 0) & jnp.isfinite(root) & (root > lo) & (root < hi)
        return ok, root

    def cond(st):
        k, _, _, _, _, _, done = st
        return (k < max_iters) & ~done & active

    def body(st):
        k, tau, lo, hi, w, free, _ = st
        w, free, k_in = _simplex_qp(Gn, tau * a, w, free, max_iters=max_iters - k, tol=tol,
                                    at_minimum=False)
        n = norm_of(w)
        err = s * tau - n
        converged = jnp.abs(err) <= tol * (s * tau + n)
        lo = jnp.where(err < 0, tau, lo)
        hi = jnp.where(err > 0, tau, hi)
        ok, root = root_on_support(free, lo, hi)
        bisect = jnp.where(lo > 0, jnp.sqrt(lo * hi), 0.25 * hi)
        tau_new = jnp.where(ok, root, bisect)
        collapsed = hi - lo <= 4 * jnp.finfo(dtype).eps * hi
        return k + jnp.maximum(k_in, 1), tau_new, lo, hi, w, free, converged | collapsed

    w0 = jax.nn.one_hot(jnp.argmin(a + s * jnp.sqrt(jnp.maximum(jnp.diag(Gn), 0.0))), t,
                        dtype=dtype)
    hi0 = 1.0 / safe_s
    tau0 = jnp.minimum(jnp.asarray(1.0 / max(c, 1e-30), dtype), hi0)
    init = (jnp.int32(0), tau0, jnp.zeros((), dtype), hi0, w0, w0 > 0, jnp.bool_(False))
    k, _, _, _, w, _, _ = lax.while_loop(cond, body, init)
    if not return_info:
        return w
    gw = Gn @ w
    lam = jnp.where(norm_of(w) > 0, s / jnp.where(norm_of(w) > 0, norm_of(w), 1.0), 0.0)
    grad, scale = a + lam * gw, jnp.abs(a) + lam * (absg @ w) + tiny
    return w, _info(k, _simplex_gap(grad, scale, w), tol)


# ---------------------------------------------------------------------------
# α-fair weights: FairGrad and Nash-MTL
# ---------------------------------------------------------------------------


_LOG_BOUND = 18.0  # normalised log-weights are kept in ±18·max(1, α), capped by the dtype
_LINE_SEARCH = 30  # candidate step sizes t_max · 2^-k tested (in parallel) per Newton step
_MAX_LOG_STEP = 3.0  # a Newton step changes no log-weight by more than this


def alpha_fair(G, *, alpha: float = 1.0, init=None, max_iters: int = 50, tol: float = 1e-4,
               return_info: bool = False):
    """The positive solution ``w`` of ``G w = w^{-1/α}`` (elementwise), FairGrad's weights.

    FairGrad (Ban & Ji, ICML 2024) picks the update ``d = Jᵀ w`` whose per-task
    improvements ``u_t = g_tᵀ d = (G w)_t`` are α-fair: ``u_t = w_t^{-1/α}``.
    ``α = 1`` is proportional fairness, the Nash bargaining solution of Nash-MTL
    (:func:`nash_bargaining`). With ``q = 1/α`` the solution is the minimiser of the
    strictly convex ``f(w) = ½ wᵀ G w − Σ_t h(w_t)`` on ``w > 0``, where
    ``h' (w) = w^{-q}`` (``h = log`` for ``α = 1``); it exists and is unique when ``G``
    is positive definite. ``G`` is first divided by its mean diagonal entry ``s``;
    the result is mapped back by ``w = w̃ · s^{-1/(1+q)}``.

    Algorithm: damped Newton in log-coordinates. With ``S = diag(w^{(1+q)/2})`` it
    solves the symmetrically scaled Newton system of ``∇f = 0``,
    ``(S G S + q I) y = −w^{(1−q)/2} ⊙ ρ`` with ``ρ = w^q ⊙ G w − 1`` (the matrix is
    ``≥ q I`` and has a unit-sized diagonal near the solution), takes
    ``z = w^{(q−1)/2} ⊙ y`` (the Newton step relative to ``w``) and sets
    ``w ← w ⊙ exp(τ z)``, which keeps ``w > 0``. The step ``τ`` is the largest of
    ``τ_max · 2^{-k}``, ``k < 30``, ``τ_max = min(1, 3 / max|z|)``, that decreases
    ``f`` (Armijo, ``c₁ = 10⁻⁴``) or the residual ``max|ρ|``; none stops the solver
    (stagnation). Normalised log-weights are clipped to ``±18 · max(1, α)`` (at most
    a quarter of the dtype's exponent range: ``±22`` in float32), which bounds the
    weights when there is no solution (a zero gradient, or gradients with ``0``
    in their convex hull such as exactly opposite ones, where ``f`` is unbounded
    below) and may stop short of solutions with extremely small weights for large
    ``α``. The default start is ``w_t = G_tt^{-1/(1+q)}``, exact for orthogonal
    gradients; ``init`` (in ``G``'s units) warm-starts it when it is finite and
    positive.

    Convergence criterion: the relative residual ``max_t |w_t^q (G w)_t − 1| ≤ tol``
    (it is scale-free); at most ``max_iters`` Newton steps. Newton converges
    quadratically, so the residual drops from ``O(1)`` to rounding level in a few
    steps; that level is about ``ε · cond`` (``(G w)_t`` cancels when gradients
    conflict), ``~1e-6``–``1e-5`` in float32 for typical Gramians, hence the default
    ``tol = 1e-4``. A zero (or non-finite) ``G`` returns zeros.

    Args:
      G: ``[T, T]`` Gramian.
      alpha: FairGrad's ``α > 0``.
      init: optional ``[T]`` positive starting point, in ``G``'s units.
      max_iters: bound on Newton steps.
      tol: tolerance on the relative residual.
      return_info: also return a :class:`SolverInfo` (``residual`` = ``max|ρ|``).

    Returns:
      ``w`` (``[T]``, positive), and the info if asked.

    Examples:
      >>> G = jnp.array([[4.0, 0.0], [0.0, 1.0]])  # orthogonal: w_t = G_tt^(-α/(1+α))
      >>> alpha_fair(G, alpha=1.0).tolist()
      [0.5, 1.0]
      >>> w = alpha_fair(jnp.array([[2.0, 1.0], [1.0, 2.0]]), alpha=2.0)
      >>> bool(jnp.allclose(jnp.array([[2.0, 1.0], [1.0, 2.0]]) @ w, w ** -0.5, rtol=1e-5))
      True
    """
    check_float("alpha", alpha, strict=True)
    check_int("max_iters", max_iters)
    check_float("tol", tol)
    q = 1.0 / alpha
    G = _square(G)
    t = G.shape[0]
    dtype = G.dtype
    if init is not None and jnp.shape(init) != (t,):
        raise ValueError(f"init must have shape ({t},), got {jnp.shape(init)}")
    scale = jnp.trace(G) / t
    Gn, ok = _normalize(G, scale)
    safe_scale = jnp.where(ok, scale, 1.0)
    log_scale = jnp.log(safe_scale)
    # w_t = (G w)_t^(-α): the spread of the log-weights grows with α. A quarter of the
    # dtype's exponent range keeps w_s w_t G_st finite (22 in float32, 177 in float64).
    bound = min(_LOG_BOUND * max(1.0, alpha), math.log(jnp.finfo(dtype).max) / 4)
    bound = max(bound, min(_LOG_BOUND, math.log(jnp.finfo(dtype).max) / 4))

    diag = jnp.diag(Gn)
    beta0 = -jnp.log(jnp.clip(diag, jnp.exp(-bound), jnp.exp(bound))) / (1.0 + q)
    if init is not None:
        init = jnp.asarray(init, dtype)
        valid = jnp.all(jnp.isfinite(init) & (init > 0))
        warm = jnp.log(jnp.where(valid, init, 1.0)) + log_scale / (1.0 + q)
        beta0 = jnp.where(valid & jnp.all(jnp.isfinite(warm)), warm, beta0)
    beta0 = jnp.clip(beta0, -bound, bound)

    def potential(beta):
        w = jnp.exp(beta)
        h = jnp.sum(beta) if q == 1.0 else jnp.sum(jnp.exp((1.0 - q) * beta)) / (1.0 - q)
        return 0.5 * w @ (Gn @ w) - h

    def residual(beta):
        w = jnp.exp(beta)
        return jnp.exp(q * beta) * (Gn @ w) - 1.0

    def res_inf(beta):
        return jnp.max(jnp.abs(residual(beta)))

    steps = 2.0 ** -jnp.arange(_LINE_SEARCH, dtype=dtype)

    def cond(s):
        k, _, res, stalled = s
        return (k < max_iters) & (res > tol) & ~stalled

    def body(s):
        k, beta, res, _ = s
        rho = residual(beta)
        half = jnp.exp(0.5 * (1.0 + q) * beta)  # S = diag(w^((1+q)/2))
        m = (half[:, None] * Gn) * half[None, :] + q * jnp.eye(t, dtype=dtype)
        skew = jnp.exp(0.5 * (1.0 - q) * beta)  # w^((1-q)/2)
        z = jnp.linalg.solve(m, -skew * rho) / skew
        z = jnp.where(jnp.isfinite(z), z, 0.0)
        tmax = jnp.minimum(1.0, _MAX_LOG_STEP / jnp.maximum(jnp.max(jnp.abs(z)), 1e-30))
        taus = tmax * steps
        cands = jnp.clip(beta[None, :] + taus[:, None] * z[None, :], -bound, bound)
        f0 = potential(beta)
        slope = jnp.sum(jnp.exp((1.0 - q) * beta) * rho * z)
        fc = jax.vmap(potential)(cands)
        rc = jax.vmap(res_inf)(cands)
        good = ((fc <= f0 + 1e-4 * taus * jnp.minimum(slope, 0.0))
                | (rc <= (1.0 - 1e-4 * taus) * res))
        good = good & jnp.isfinite(fc) & jnp.isfinite(rc)
        idx = jnp.argmax(good)
        found = jnp.any(good)
        beta_new = jnp.where(found, cands[idx], beta)
        return k + 1, beta_new, jnp.where(found, rc[idx], res), ~found

    init_state = (jnp.int32(0), beta0, res_inf(beta0), jnp.bool_(False))
    k, beta, res, _ = lax.while_loop(cond, body, init_state)
    w = jnp.exp(beta - log_scale / (1.0 + q))
    w = jnp.where(ok & jnp.isfinite(w), w, 0.0)
    res = jnp.where(ok, res, jnp.inf)
    return (w, _info(k, res, tol)) if return_info else w


def nash_bargaining(G, *, init=None, max_iters: int = 20, tol: float = 1e-4,
                    return_info: bool = False):
    """Nash-MTL's bargaining weights: the positive ``α`` with ``G α = 1 / α``.

    Navon et al. (ICML 2022), Theorem 5.1: the Nash bargaining solution of the
    tasks is ``d = Jᵀ α`` with ``α_t (G α)_t = 1`` for every ``t`` (each task's
    utility ``g_tᵀ d`` is the inverse of its weight), so ``‖d‖² = αᵀ G α = T``.
    The paper solves it by a sequence of convex-concave programs (cvxpy/ECOS); this
    is :func:`alpha_fair` with ``α = 1`` instead: a damped Newton method on the
    convex ``½ αᵀ G α − Σ log α_t``, stopping when ``max_t |α_t (G α)_t − 1| ≤ tol``
    or after ``max_iters`` steps (see :func:`alpha_fair`).

    Examples:
      >>> G = jnp.array([[2.0, 1.0], [1.0, 2.0]])
      >>> a = nash_bargaining(G)
      >>> [round(x, 4) for x in (a * (G @ a)).tolist()]
      [1.0, 1.0]
    """
    return alpha_fair(G, alpha=1.0, init=init, max_iters=max_iters, tol=tol,
                      return_info=return_info)
