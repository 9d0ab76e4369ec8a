"""Gradient-surgery aggregators: PCGrad, GradVac, GradDrop, IMTL-G, Aligned-MTL, ConFIG.

Every factory returns an :class:`~mtl_jax.aggregators.base.Aggregator` (see
:mod:`mtl_jax.aggregators.base`): ``update`` takes per-task gradients whose leaves
are ``[T, ...]`` and returns a descent direction shaped like the parameters.

Except GradDrop (which is elementwise and needs the full per-task gradients),
all of these methods return a linear combination ``Σ_t c_t g_t`` of the
*original* task gradients, and the combination only depends on inner products.
They are therefore computed on the ``[T, T]`` Gramian, the gradients are
touched once at the end (:func:`~mtl_jax.aggregators.base.combine`) and the
memory stays ``O(T² + |θ|)``. Sequential algorithms (PCGrad, GradVac) track the
coefficient matrix ``C`` (the modified gradient ``g'_i`` is ``Σ_s C[i, s] g_s``)
in a :func:`jax.lax.fori_loop` over visiting positions, vectorised over ``i``.
``state.weights`` reports the coefficients ``c``.

Numerics. The weights of all these methods are invariant to a common rescaling
of the gradients, so they are computed from the Gramian of the gradients divided
by their largest absolute entry ``a`` (over all leaves and tasks), i.e. ``G / a²``
when ``a`` is moderate, else the Gramian of a rescaled copy: norms
like ``1e30`` (whose squares overflow float32) or ``1e-30`` (whose squares
underflow) give the same weights as norms near 1. The Gramian is accumulated in
float32 or wider. Zero gradients are detected with a threshold just above the
floating-point underflow of that rescaled Gramian; pseudo-inverses and
eigen-decompositions drop singular/eigen values below a relative tolerance, so
degenerate inputs (zero, identical, opposite or collinear gradients, ``T = 1``)
give finite outputs.

Randomness (PCGrad's and GradVac's task order, GradDrop's sign choice) comes from
a PRNG key stored in the state as raw ``uint32`` key data (so states are plain
arrays that checkpoint, ``tree_map`` and ``vmap`` like any other), seeded by the
``seed`` knob and advanced at each update.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from mtl_jax.aggregators.base import (
    Aggregator,
    AggregatorState,
    accumulation_dtype,
    check_grads,
    check_num_tasks,
    from_weighting,
    max_abs,
    scaled_gramian,
)

__all__ = [
    "FACTORIES",
    "GradVacInner",
    "aligned_mtl",
    "config",
    "graddrop",
    "gradvac",
    "imtl_g",
    "pcgrad",
]


# ---------------------------------------------------------------------------- helpers


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")


def _check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if not -(2**63) <= seed < 2**63:
        raise ValueError(f"seed must fit in a signed 64-bit int, got {seed!r}")


def _check_unit_interval(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a real number in [0, 1], got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value


def _key_data(seed: int) -> jax.Array:
    return jax.random.key_data(jax.random.key(seed))


def _split_key(data: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(next key data, a typed key to use now)`` from stored key data."""
    new, use = jax.random.split(jax.random.wrap_key_data(data))
    return jax.random.key_data(new), use


def _tiny(dtype: Any) -> float:
    """Squared norms at or below this (in the rescaled Gramian) count as zero."""
    info = jnp.finfo(dtype)
    return float(info.tiny) / float(info.eps)


def _eps(dtype: Any) -> float:
    return float(jnp.finfo(dtype).eps)


def _unit_scaling(gram: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(active, norms, inverse norms)``; inactive (zero) tasks get 0 for both."""
    diag = jnp.diagonal(gram)
    active = diag > _tiny(gram.dtype)
    safe = jnp.where(active, diag, 1.0)
    norms = jnp.where(active, jnp.sqrt(safe), 0.0)
    inv_norms = jnp.where(active, 1.0 / jnp.sqrt(safe), 0.0)
    return active, norms, inv_norms


def _visit_order(key: jax.Array, num_tasks: int, shuffle: bool) -> jax.Array:
    """``order[i, k]``: the ``k``-th task that task ``i`` visits (``i`` itself is skipped).

    With ``shuffle``, row ``i`` is an independent uniformly random permutation: the
    ranks of ``T`` random integers (ties broken by index), which avoids a sort
    (cheaper to compile) for the usual small ``T``.
    """
    tasks = jnp.arange(num_tasks)
    if not shuffle:
        return jnp.broadcast_to(tasks, (num_tasks, num_tasks))
    if num_tasks > 64:  # the rank computation below is O(T³)
        return jax.random.permutation(
            key, jnp.broadcast_to(tasks, (num_tasks, num_tasks)), axis=1, independent=True)
    draws = jax.random.bits(key, (num_tasks, num_tasks))
    before = (draws[:, None, :] < draws[:, :, None]) | (
        (draws[:, None, :] == draws[:, :, None]) & (tasks[None, :] < tasks[:, None])[None])
    rank = jnp.sum(before, axis=2)  # rank[i, a]: position of task a in row i
    return jnp.sum(jnp.where(rank[:, :, None] == tasks, tasks[None, :, None], 0), axis=1)


def _gramian_aggregator(num_tasks: int,
                        weighting: Callable[[jax.Array, Any], tuple[jax.Array, Any]],
                        init_inner: Callable[[], Any]) -> Aggregator:
    """:func:`~mtl_jax.aggregators.base.from_weighting` with ``w, inner = weighting(G, inner)``
    on the rescaled Gramian (:func:`~mtl_jax.aggregators.base.scaled_gramian`), which
    all methods here are invariant to."""
    return from_weighting(lambda gram, inner, value: weighting(gram, inner), num_tasks,
                          lambda t: init_inner(),
                          summary=lambda grads: scaled_gramian(grads)[0])


# ---------------------------------------------------------------------------- PCGrad


def _pcgrad_coefficients(gram: jax.Array, order: jax.Array) -> jax.Array:
    """``C`` with ``g'_i = Σ_s C[i, s] g_s`` after PCGrad's projections."""
    num_tasks = gram.shape[0]
    rows = jnp.arange(num_tasks)
    diag = jnp.diagonal(gram)
    usable = diag > _tiny(gram.dtype)
    safe_diag = jnp.where(usable, diag, 1.0)

    def visit(k, coef):
        j = order[:, k]
        inner = jnp.sum(coef * gram[j], axis=1)  # <g'_i, g_j>, using the original g_j
        conflict = (j != rows) & usable[j] & (inner < 0)
        step = jnp.where(conflict, inner / safe_diag[j], 0.0)
        return coef.at[rows, j].add(-step)

    return lax.fori_loop(0, num_tasks, visit, jnp.eye(num_tasks, dtype=gram.dtype))


def pcgrad(num_tasks: int, *, seed: int = 0, shuffle: bool = True) -> Aggregator:
    """PCGrad: project each gradient off the others it conflicts with.

    Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020
    (https://arxiv.org/abs/2001.06782), Algorithm 1. For every task ``i``, its
    gradient ``g'_i`` (initially ``g_i``) visits the other tasks ``j`` in a random
    order; if ``<g'_i, g_j> < 0`` it is projected onto the normal plane of the
    *original* ``g_j``: ``g'_i -= <g'_i, g_j> / ||g_j||² g_j``. The direction is
    the sum ``Σ_i g'_i`` (as the paper and LibMTL). The method has no
    hyper-parameters.

    Each task draws its own independent permutation and skips itself, as in the
    paper's algorithm and TorchJD's ``PCGrad``. (The official TensorFlow code shuffles
    once per step for all tasks, and LibMTL does not skip ``j = i``.) Computed on the
    Gramian: ``state.weights`` holds ``c`` with direction ``Σ_t c_t g_t``.

    Args:
      num_tasks: number of tasks ``T``.
      seed: seed of the PRNG key (kept in the state) drawing the visiting orders.
      shuffle: if False, every task visits the others in index order ``0..T-1``
        (deterministic; the key is still carried).

    Returns:
      The aggregator; ``state.inner`` is the PRNG key data.

    Examples:
      >>> agg = pcgrad(2)
      >>> grads = {"w": jnp.array([[1.0, 0.0], [-1.0, 1.0]])}
      >>> direction, state = agg.update(grads, agg.init({"w": jnp.zeros(2)}))
      >>> direction["w"].tolist(), state.weights.tolist()
      ([0.5, 1.5], [2.0, 1.5])
    """
    check_num_tasks(num_tasks)
    _check_seed(seed)
    _check_bool("shuffle", shuffle)

    def weighting(gram, key_data):
        key_data, key = _split_key(key_data)
        coef = _pcgrad_coefficients(gram, _visit_order(key, num_tasks, shuffle))
        return coef.sum(axis=0), key_data

    return _gramian_aggregator(num_tasks, weighting, lambda: _key_data(seed))


# ---------------------------------------------------------------------------- GradVac


class GradVacInner(NamedTuple):
    """GradVac's own state.

    Attributes:
      key: PRNG key data for the visiting orders.
      targets: ``[T, T]`` EMA targets ``φ̂[i, j]`` of the cosine similarity of
        ``g'_i`` with ``g_j`` (diagonal unused), initially 0.
    """

    key: jax.Array
    targets: jax.Array


def _gradvac_coefficients(gram: jax.Array, order: jax.Array, targets: jax.Array,
                          beta: float) -> tuple[jax.Array, jax.Array]:
    num_tasks = gram.shape[0]
    rows = jnp.arange(num_tasks)
    tiny, eps = _tiny(gram.dtype), _eps(gram.dtype)
    diag = jnp.diagonal(gram)
    usable = diag > tiny
    norms = jnp.where(usable, jnp.sqrt(jnp.where(usable, diag, 1.0)), 1.0)
    abs_norms = jnp.where(usable, norms, 0.0)

    def visit(k, carry):
        coef, phi_hat = carry
        j = order[:, k]
        inner = jnp.sum(coef * gram[j], axis=1)  # <g'_i, g_j>
        sq_i = jnp.maximum(jnp.sum((coef @ gram) * coef, axis=1), 0.0)  # ||g'_i||²
        # ||g'_i||² from the Gramian has rounding noise ~ ε (Σ_s |C_is| ||g_s||)²: below
        # it g'_i counts as zero (its cosine, amplified by 1/√(1-φ̂²), would be noise).
        noise = num_tasks * eps * (jnp.abs(coef) @ abs_norms) ** 2
        valid = (j != rows) & usable[j] & (sq_i > jnp.maximum(noise, tiny))
        norm_i = jnp.sqrt(jnp.where(valid, sq_i, 1.0))
        norm_j = norms[j]
        phi = jnp.clip(inner / (norm_i * norm_j), -1.0, 1.0)
        target = phi_hat[rows, j]
        sin_target = jnp.sqrt(jnp.maximum(1.0 - target**2, eps))
        sin_phi = jnp.sqrt(jnp.maximum(1.0 - phi**2, 0.0))
        step = norm_i * (target * sin_phi - phi * sin_target) / (norm_j * sin_target)
        adjust = valid & (phi < target)
        coef = coef.at[rows, j].add(jnp.where(adjust, step, 0.0))
        phi_hat = phi_hat.at[rows, j].set(
            jnp.where(valid, (1.0 - beta) * target + beta * phi, target))
        return coef, phi_hat

    init = (jnp.eye(num_tasks, dtype=gram.dtype), targets.astype(gram.dtype))
    return lax.fori_loop(0, num_tasks, visit, init)


def gradvac(num_tasks: int, *, beta: float = 1e-2, seed: int = 0,
            shuffle: bool = True) -> Aggregator:
    """Gradient Vaccine: raise each pairwise cosine similarity to an adaptive target.

    Wang et al., "Gradient Vaccine: Investigating and Improving Multi-task
    Optimization in Massively Multilingual Models", ICLR 2021
    (https://arxiv.org/abs/2010.05874), Algorithm 1. As PCGrad, each ``g'_i``
    visits the other tasks ``j`` in a random order, with the observed similarity
    ``φ = cos(g'_i, g_j)`` and an EMA target ``φ̂_ij`` (initially 0); if
    ``φ < φ̂_ij``::

        g'_i += ||g'_i|| (φ̂_ij √(1-φ²) - φ √(1-φ̂_ij²)) / (||g_j|| √(1-φ̂_ij²)) g_j

    which makes ``cos(g'_i, g_j) = φ̂_ij``; then ``φ̂_ij ← (1-β) φ̂_ij + β φ`` with the
    observed (pre-adjustment) ``φ`` at every visit of a pair with nonzero gradients
    (eq. 3; LibMTL updates the EMA only when the adjustment fires, which lets the
    targets only decrease from 0). The direction is ``Σ_i g'_i``.
    ``beta`` defaults to the paper's ``1e-2`` (LibMTL's default is 0.5). With all
    targets 0 (the first step, or ``beta=0``) this is exactly PCGrad.

    The paper applies the rule per layer (LibMTL offers whole-model, per-layer and
    per-matrix); this is the whole-model variant: one cosine per task pair over
    all shared parameters, computed on the Gramian. ``1 - φ̂²`` is floored at the
    machine epsilon so targets near ±1 stay finite, and a ``g'_i`` whose norm is at
    the rounding level of the Gramian (e.g. ``g - g``) counts as zero (no
    adjustment, no EMA update). ``state.weights`` holds ``c`` with direction
    ``Σ_t c_t g_t``.

    Args:
      num_tasks: number of tasks ``T``.
      beta: EMA rate of the targets, in ``[0, 1]``.
      seed: seed of the PRNG key (kept in the state) drawing the visiting orders.
      shuffle: if False, every task visits the others in index order.

    Returns:
      The aggregator; ``state.inner`` is a :class:`GradVacInner`.

    Examples:
      >>> agg = gradvac(2)
      >>> grads = {"w": jnp.array([[1.0, 0.0], [-1.0, 1.0]])}
      >>> direction, state = agg.update(grads, agg.init({"w": jnp.zeros(2)}))
      >>> direction["w"].tolist()  # targets start at 0: PCGrad's step
      [0.5, 1.5]
      >>> print(*(f"{x:.4f}" for x in state.inner.targets.ravel().tolist()))  # 0.01 cos
      0.0000 -0.0071 -0.0071 0.0000
    """
    check_num_tasks(num_tasks)
    beta = _check_unit_interval("beta", beta)
    _check_seed(seed)
    _check_bool("shuffle", shuffle)

    def init_inner():
        return GradVacInner(_key_data(seed), jnp.zeros((num_tasks, num_tasks), jnp.float32))

    def weighting(gram, inner):
        key_data, key = _split_key(inner.key)
        coef, targets = _gradvac_coefficients(
            gram, _visit_order(key, num_tasks, shuffle), inner.targets, beta)
        return coef.sum(axis=0), GradVacInner(key_data, targets.astype(inner.targets.dtype))

    return _gramian_aggregator(num_tasks, weighting, init_inner)


# ---------------------------------------------------------------------------- GradDrop


def graddrop(num_tasks: int, *, leakage: float | Sequence[float] = 0.0,
             seed: int = 0) -> Aggregator:
    """GradDrop: keep, per coordinate, only the gradients of one randomly chosen sign.

    Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient
    Sign Dropout", NeurIPS 2020 (https://arxiv.org/abs/2010.06808), Algorithm 1.
    For every coordinate, the positive sign purity
    ``P = ½ (1 + Σ_t g_t / Σ_t |g_t|)`` is compared with one uniform draw ``U``
    shared by the tasks: if ``U < P`` the positive components are kept, otherwise
    the negative ones; ``M_t`` marks the kept components of task ``t`` and the
    direction is ``Σ_t (ℓ_t + (1 - ℓ_t) M_t) g_t`` with leak ``ℓ_t``
    (default 0 as in the paper and LibMTL).

    The paper applies GradDrop to gradients with respect to the activations of a
    chosen layer (with a sign correction for batch-separated inputs), and so does
    LibMTL (which only supports it with representation gradients). Here, as
    TorchJD's ``GradDrop`` does with a parameter Jacobian, it is applied
    elementwise to the gradients with respect to the shared parameters, over every
    leaf of the pytree; the purity uses one shared draw ``U`` per coordinate and
    ``U < P`` keeps the positive sign (so exactly one sign is kept even when
    ``U = P``). This method needs the full per-task gradients (no Gramian).
    ``state.weights[t]`` reports the fraction of task ``t``'s nonzero gradient
    entries that were kept (leaked entries count ``ℓ_t``; 1 for an all-zero task).

    Args:
      num_tasks: number of tasks ``T``.
      leakage: leak ``ℓ`` in ``[0, 1]``, one float for all tasks or one per task.
        ``1`` keeps everything (plain sum).
      seed: seed of the PRNG key (kept in the state) drawing ``U``.

    Returns:
      The aggregator; ``state.inner`` is the PRNG key data.

    Examples:
      >>> agg = graddrop(2)
      >>> grads = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]])}  # no sign conflict
      >>> direction, state = agg.update(grads, agg.init({"w": jnp.zeros(2)}))
      >>> direction["w"].tolist(), state.weights.tolist()
      ([4.0, 6.0], [1.0, 1.0])
    """
    check_num_tasks(num_tasks)
    if isinstance(leakage, int | float) and not isinstance(leakage, bool):
        leaks = (_check_unit_interval("leakage", leakage),) * num_tasks
    elif isinstance(leakage, Sequence) and not isinstance(leakage, str):
        if len(leakage) != num_tasks:
            raise ValueError(f"leakage must be a float or a sequence of num_tasks={num_tasks} "
                             f"floats, got {len(leakage)} values")
        leaks = tuple(_check_unit_interval("leakage", v) for v in leakage)
    else:
        raise ValueError(f"leakage must be a float in [0, 1] or a sequence of them, "
                         f"got {leakage!r}")
    _check_seed(seed)

    def init(params):
        del params
        return AggregatorState(jnp.ones(num_tasks, jnp.float32), _key_data(seed))

    def update(grads, state, params=None, *, value=None, **extra):
        del params, value, extra
        check_grads(grads, num_tasks)
        key_data, key = _split_key(state.inner)
        dtype = accumulation_dtype(grads)
        amax = max_abs(grads, dtype)  # common rescaling: no overflow in Σ|g|
        amax = jnp.where(amax > 0, amax, 1.0)
        leak = jnp.asarray(leaks, dtype)
        leaves, treedef = jax.tree_util.tree_flatten(grads)
        sizes = [math.prod(leaf.shape[1:]) for leaf in leaves]
        draws = jax.random.uniform(key, (sum(sizes),), dtype)  # one U per coordinate
        kept = jnp.zeros(num_tasks, dtype)
        nonzero = jnp.zeros(num_tasks, dtype)
        out, offset = [], 0
        for leaf, size in zip(leaves, sizes):
            g = leaf.astype(dtype) / amax
            total, mass = jnp.sum(g, axis=0), jnp.sum(jnp.abs(g), axis=0)
            purity = 0.5 * (1.0 + jnp.where(mass > 0, total / jnp.where(mass > 0, mass, 1.0),
                                            0.0))
            draw = draws[offset:offset + size].reshape(leaf.shape[1:])
            offset += size
            mask = jnp.where(draw < purity, g > 0, g < 0)
            shape = (num_tasks,) + (1,) * (leaf.ndim - 1)
            mult = leak.reshape(shape) + (1.0 - leak.reshape(shape)) * mask
            out.append(jnp.sum(leaf * mult.astype(leaf.dtype), axis=0))
            nz = (leaf != 0).reshape(num_tasks, -1)
            kept += jnp.sum(nz * mult.reshape(num_tasks, -1), axis=1)
            nonzero += jnp.sum(nz, axis=1, dtype=dtype)
        weights = jnp.where(nonzero > 0, kept / jnp.where(nonzero > 0, nonzero, 1.0), 1.0)
        direction = jax.tree_util.tree_unflatten(treedef, out)
        return direction, AggregatorState(weights.astype(jnp.float32), key_data)

    return Aggregator(init, update)


# ---------------------------------------------------------------------------- IMTL-G


def _imtl_g_weights(gram: jax.Array) -> jax.Array:
    num_tasks = gram.shape[0]
    if num_tasks == 1:
        return jnp.ones(1, gram.dtype)
    tasks = jnp.arange(num_tasks)
    active, norms, inv_norms = _unit_scaling(gram)
    cross = gram * inv_norms[None, :]  # cross[s, t] = <g_s, u_t>
    ref = jnp.argmax(norms)  # the paper's "task 1": any active task gives the same answer
    diff = (tasks == ref).astype(gram.dtype)[None, :] - jnp.eye(num_tasks, dtype=gram.dtype)
    # Row t of diff is e_ref - e_t, so D Uᵀ = diff cross diffᵀ, g_ref Uᵀ = diff cross[ref].
    scale = jnp.where(norms[ref] > 0, norms[ref], 1.0)
    du = diff @ cross @ diff.T / scale
    gu = diff @ cross[ref] / scale
    free = (active & (tasks != ref)).astype(gram.dtype)
    system = du.T * free[:, None] * free[None, :] + jnp.diag(1.0 - free)
    rtol = 100.0 * num_tasks * _eps(gram.dtype)
    alpha = jnp.linalg.pinv(system, rtol=rtol) @ (gu * free)  # α D Uᵀ = g_ref Uᵀ
    alpha = alpha * free
    alpha = alpha + (tasks == ref) * (1.0 - jnp.sum(alpha))
    # A nonsingular G has the same α in closed form, α ∝ G⁻¹ (||g_t||)_t, which is
    # backward stable; the D Uᵀ system above (differences of gradients and of unit
    # vectors) loses about κ(J) more digits.
    lam = jnp.linalg.eigvalsh(gram)
    v = jnp.linalg.solve(gram, norms)
    closed = v / jnp.sum(v)
    regular = (lam[0] > rtol * lam[-1]) & jnp.all(jnp.isfinite(closed))
    return jnp.where(regular, closed, alpha)


def imtl_g(num_tasks: int) -> Aggregator:
    """IMTL-G: the combination whose projections on every task's unit gradient are equal.

    Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021
    (https://openreview.net/forum?id=IMPnRXEWpvr), the gradient-balancing part
    (IMTL-G; the loss-scale part IMTL-L is a separate method). With
    ``u_t = g_t / ||g_t||``, ``D = [g_1 - g_t]`` and ``U = [u_1 - u_t]`` for ``t ≥ 2``,
    ``α_{2:T} = g_1 Uᵀ (D Uᵀ)⁻¹``, ``α_1 = 1 - Σ α_{2:T}`` and the direction is
    ``Σ_t α_t g_t`` (weights sum to 1, as in the paper and LibMTL). No
    hyper-parameters.

    Everything is computed from the Gramian (``<g_s, u_t> = G[s, t] / √G[t, t]``).
    Deviations for degenerate inputs, where the paper's inverse does not exist:
    the reference task "1" is the task of largest norm (the solution does not
    depend on it when it is unique), zero gradients get weight 0, and
    ``(D Uᵀ)⁻¹`` is a pseudo-inverse dropping singular values below
    ``100 T ε`` relative (``D Uᵀ`` is first divided by the largest norm), so e.g.
    identical gradients give ``α = e_ref`` (direction ``g``) and exactly opposite
    ones ``α = (½, ½)`` (direction 0). When ``G`` is numerically nonsingular
    (smallest eigenvalue above ``100 T ε`` times the largest), ``α`` is computed
    from the equivalent closed form ``α ∝ G⁻¹ (||g_t||)_t`` instead: it is backward
    stable, while the ``D Uᵀ`` system loses about ``κ(J)`` more digits to
    cancellation (an O(1) error at ``κ(G) = 1e12`` in float64). TorchJD's ``IMTLG``
    uses ``α ∝ G⁺ √diag(G)`` everywhere, which differs only on degenerate inputs.
    ``state.weights`` holds ``α``.

    Args:
      num_tasks: number of tasks ``T``.

    Returns:
      The aggregator (no inner state).

    Examples:
      >>> agg = imtl_g(2)
      >>> grads = {"w": jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])}
      >>> direction, state = agg.update(grads, agg.init({"w": jnp.zeros(3)}))
      >>> print(*(f"{x:.4f}" for x in direction["w"].tolist()))  # as TorchJD's IMTLG
      0.0767 1.0000 1.0000
    """
    check_num_tasks(num_tasks)

    def weighting(gram, inner):
        return _imtl_g_weights(gram), inner

    return _gramian_aggregator(num_tasks, weighting, tuple)


# ---------------------------------------------------------------------------- Aligned-MTL


_ALIGNED_SCALES = ("min", "median", "rmse")


def _aligned_mtl_weights(gram: jax.Array, scale: str) -> jax.Array:
    num_tasks = gram.shape[0]
    lam, vecs = jnp.linalg.eigh(gram)  # ascending
    tol = jnp.max(lam) * num_tasks * _eps(gram.dtype)
    keep = lam > tol
    rank = jnp.sum(keep)
    inv_sqrt = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, lam, 1.0)), 0.0)
    # The kept eigenvalues are the last ``rank`` ones (ascending order).
    if scale == "min":
        level = lam[num_tasks - rank]
    elif scale == "median":  # lower median of the kept values, as torch.median
        level = lam[num_tasks - rank + (rank - 1) // 2]
    else:  # "rmse"
        level = jnp.sum(jnp.where(keep, lam, 0.0)) / jnp.maximum(rank, 1)
    level = jnp.where(rank > 0, level, 1.0)
    balance = jnp.sqrt(level) * (vecs * inv_sqrt[None, :]) @ vecs.T
    return jnp.where(rank > 0, jnp.sum(balance, axis=1), jnp.ones(num_tasks, gram.dtype))


def aligned_mtl(num_tasks: int, *, scale: str = "min") -> Aggregator:
    """Aligned-MTL: align the task gradients to an orthogonal, equal-norm system.

    Senushkin et al., "Independent Component Alignment for Multi-Task Learning",
    CVPR 2023 (https://arxiv.org/abs/2305.19000), Algorithm 1. With the Gramian
    ``G = V Λ Vᵀ`` (eigenvalues below ``λ_max T ε`` are dropped, as in the official
    code), the balance matrix ``B = σ V Λ^{-1/2} Vᵀ`` turns the gradients into
    aligned ones ``ĝ_t = Σ_s B[s, t] g_s`` that are orthogonal with equal norm
    ``σ``; the direction is their sum (equal task weights), so ``state.weights``
    holds ``α = B 1``. ``σ² = λ_min`` (``"min"``, the paper's and default choice), the
    lower median ``λ`` (``"median"``) or the mean ``λ`` (``"rmse"``), the three
    ``scale_mode`` options of the official code (SamsungLabs/MTL) over the kept
    eigenvalues.

    The sum matches the official code and LibMTL; TorchJD's ``AlignedMTL`` applies
    the mean preference vector instead (its direction is ours divided by ``T``).
    If every gradient is zero, ``α = 1``.

    Args:
      num_tasks: number of tasks ``T``.
      scale: ``"min"``, ``"median"`` or ``"rmse"``: which eigenvalue sets the norm
        of the aligned gradients.

    Returns:
      The aggregator (no inner state).

    Examples:
      >>> agg = aligned_mtl(2)
      >>> grads = {"w": jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])}
      >>> direction, state = agg.update(grads, agg.init({"w": jnp.zeros(3)}))
      >>> print(*(f"{x:.4f}" for x in direction["w"].tolist()))  # 2x TorchJD's (mean)
      0.4266 1.9347 1.9347
    """
    check_num_tasks(num_tasks)
    if scale not in _ALIGNED_SCALES:
        raise ValueError(f"scale must be one of {_ALIGNED_SCALES}, got {scale!r}")

    def weighting(gram, inner):
        return _aligned_mtl_weights(gram, scale), inner

    return _gramian_aggregator(num_tasks, weighting, tuple)


# ---------------------------------------------------------------------------- ConFIG


def _config_weights(gram: jax.Array, use_least_squares: bool) -> jax.Array:
    num_tasks = gram.shape[0]
    active, norms, inv_norms = _unit_scaling(gram)
    cosines = gram * inv_norms[:, None] * inv_norms[None, :]  # Gramian of the unit vectors
    target = active.astype(gram.dtype)
    rtol = 10.0 * num_tasks * _eps(gram.dtype)
    if use_least_squares:
        beta = jnp.linalg.lstsq(cosines, target, rcond=rtol)[0]
    else:
        beta = jnp.linalg.pinv(cosines, rtol=rtol, hermitian=True) @ target
    # y = Σ β_t u_t solves Ûᵀ y = 1 (min norm); direction = (Σ_t <g_t, ŷ>) ŷ.
    k_beta = cosines @ beta  # <u_t, y>, the part of the target 1 that y attains
    sq_norm = jnp.dot(beta, k_beta)  # ||y||²
    length = jnp.dot(norms, k_beta)  # Σ_t <g_t, y>
    # If no y attains any part of 1 (|K β| ~ ε, far below the cut-off √rtol; e.g. g and
    # -g), the least-squares y is 0: β is rounding noise, and so would be ŷ.
    attained = jnp.dot(k_beta, k_beta) > rtol * jnp.sum(target)
    ok = attained & (sq_norm > _tiny(gram.dtype))
    factor = jnp.where(ok, length / jnp.where(ok, sq_norm, 1.0), 0.0)
    return factor * beta * inv_norms


def config(num_tasks: int, *, use_least_squares: bool = True) -> Aggregator:
    """ConFIG: the conflict-free direction with equal cosine to every task gradient.

    Liu, Chu, Thuerey, "ConFIG: Towards Conflict-free Training of Physics Informed
    Neural Networks", ICLR 2025 (https://arxiv.org/abs/2408.11104), eq. 2 with
    equal weights and the projection length. With unit vectors ``û_t``,
    ``v = pinv(Ûᵀ) 1`` (the minimum-norm ``v`` with ``û_tᵀ v = 1`` for all ``t``),
    ``v̂ = v / ||v||`` and the direction is ``(Σ_t g_tᵀ v̂) v̂``.

    Computed on the Gramian: ``v = Σ_t β_t û_t`` with ``β = K⁺ 1`` where ``K`` is
    the Gramian of the unit vectors, so ``state.weights`` holds ``c`` with
    direction ``Σ_t c_t g_t``. As the official code (and TorchJD), zero gradients
    get a zero unit vector (and weight 0); the official two-task shortcut
    (``ConFIG_update_double``) is the same direction in exact arithmetic. When
    ``1`` is orthogonal to every ``(û_tᵀ v)_t`` (to within the cut-off below; e.g.
    two exactly opposite gradients), ``v = 0`` and the direction is 0, as
    TorchJD's (the official code normalises rounding noise instead).
    Forming ``K`` squares the condition number of ``Û``, so singular directions
    of ``K`` below ``10 T ε`` relative (of ``Û``: ``√(10 T ε)``, about ``3e-3`` in
    float32 with ``T = 10``) are dropped.

    Args:
      num_tasks: number of tasks ``T``.
      use_least_squares: solve ``K β = 1`` with an SVD least-squares solve
        (``jnp.linalg.lstsq``, the official default); if False, multiply by the
        symmetric pseudo-inverse (eigendecomposition). Both give the minimum-norm
        solution and differ only by rounding.

    Returns:
      The aggregator (no inner state).

    Examples:
      >>> agg = config(2)
      >>> grads = {"w": jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])}
      >>> direction, state = agg.update(grads, agg.init({"w": jnp.zeros(3)}))
      >>> print(*(f"{x:.4f}" for x in direction["w"].tolist()))  # as TorchJD's ConFIG
      0.1588 2.0706 2.0706
    """
    check_num_tasks(num_tasks)
    _check_bool("use_least_squares", use_least_squares)

    def weighting(gram, inner):
        return _config_weights(gram, use_least_squares), inner

    return _gramian_aggregator(num_tasks, weighting, tuple)


FACTORIES: dict[str, Callable[..., Aggregator]] = {
    "pcgrad": pcgrad,
    "gradvac": gradvac,
    "graddrop": graddrop,
    "imtl_g": imtl_g,
    "aligned_mtl": aligned_mtl,
    "config": config,
}
