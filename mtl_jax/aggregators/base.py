"""The aggregator interface: per-task gradients in, one update direction out.

An aggregator is an :class:`optax.experimental.aggregating.Aggregator`:
``init(params) -> state`` and
``update(per_task_grads, state, params=None, *, value=losses) -> (direction, state)``
where every leaf of ``per_task_grads`` has a leading task axis ``[T, ...]``,
``value`` holds the ``[T]`` task losses, and ``direction`` has the shape of
``params``. It is a descent direction to hand to any optax optimizer (which
negates and scales it), so equal weighting returns the sum of the task
gradients. Every state is an :class:`AggregatorState` whose ``weights`` field
reports, after each update, the task weights (or their equivalent) for logs.

Most methods choose weights ``w`` from the ``[T, T]`` Gramian ``G = J Jᵀ`` of the
stacked gradients (and the losses) and return ``Jᵀ w``; :func:`from_weighting`
builds such an aggregator from a small weighting function, so each method is a
few lines of arithmetic on ``T × T`` matrices, solved on the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from optax.experimental import aggregating

Aggregator = aggregating.Aggregator

PerTaskGrads = Any  # a pytree whose leaves are [T, ...]


class AggregatorState(NamedTuple):
    """State of every aggregator.

    Attributes:
      weights: ``[T]`` weights (or equivalent) of the last update, for logging.
      inner: the method's own state (``()`` when it has none).
    """

    weights: jax.Array
    inner: Any = ()


def gramian(grads: PerTaskGrads) -> jax.Array:
    """``G[s, t] = <g_s, g_t>`` over all leaves, accumulated in float32 or wider.

    Examples:
      >>> gramian({"w": jnp.array([[1.0, 0.0], [1.0, 1.0]])}).tolist()
      [[1.0, 1.0], [1.0, 2.0]]
    """
    leaves = jax.tree_util.tree_leaves(grads)
    return sum(jnp.einsum("s...,t...->st", g, g,
                          preferred_element_type=jnp.promote_types(g.dtype, jnp.float32))
               for g in leaves)


def accumulation_dtype(grads: PerTaskGrads) -> Any:
    """The widest floating dtype of the leaves, at least float32."""
    dtype = jnp.dtype(jnp.float32)
    for leaf in jax.tree_util.tree_leaves(grads):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            dtype = jnp.promote_types(dtype, leaf.dtype)
    return dtype


def max_abs(grads: PerTaskGrads, dtype: Any) -> jax.Array:
    """The largest ``|g|`` entry over all leaves and tasks (0 if there is none)."""
    amax = jnp.zeros((), dtype)
    for leaf in jax.tree_util.tree_leaves(grads):
        amax = jnp.maximum(amax, jnp.max(jnp.abs(leaf), initial=0).astype(dtype))
    return amax


def scaled_gramian(grads: PerTaskGrads) -> tuple[jax.Array, jax.Array]:
    """``(Ĝ, m)``: ``m = max_{t, i} |g_t[i]|`` and ``Ĝ = G / m²``, the Gramian of ``g / m``.

    ``Ĝ`` has entries of order one whatever the size of the gradients, so methods
    read it where ``‖g‖²`` itself would overflow float32 (norms ``≳ 1e19``) or
    underflow (``≲ 1e-19``). When ``m`` is in the range where neither happens, ``Ĝ``
    is ``G / m²`` (no copy of the gradients); otherwise it is the Gramian of a
    rescaled copy. ``m`` is 0 (and ``Ĝ`` zero) when the gradients are all zero,
    subnormal or not finite.

    Examples:
      >>> g, m = scaled_gramian({"w": jnp.array([[1e30, 0.0], [0.0, 2e30]])})
      >>> g.tolist(), f"{float(m):.3g}"
      ([[0.25, 0.0], [0.0, 1.0]], '2e+30')
    """
    dtype = accumulation_dtype(grads)
    info = jnp.finfo(dtype)
    m = max_abs(grads, dtype)
    ok = (m >= info.tiny) & jnp.isfinite(m)
    safe = jnp.where(ok, m, 1.0)
    size = max(sum(math.prod(leaf.shape[1:]) for leaf in jax.tree_util.tree_leaves(grads)), 1)
    low = math.sqrt(float(info.tiny)) / float(info.eps)  # entries ≥ ε·m square to normals
    high = math.sqrt(float(info.max) / (4.0 * size))  # no entry of G can overflow
    g_hat = lax.cond(
        (safe >= low) & (safe <= high),
        lambda: gramian(grads).astype(dtype) / (safe * safe),
        lambda: gramian(jax.tree_util.tree_map(lambda g: g.astype(dtype) / safe, grads)))
    return jnp.where(ok, g_hat, 0.0), jnp.where(ok, m, 0.0)


def combine(grads: PerTaskGrads, weights: jax.Array) -> Any:
    """``Σ_t w_t g_t`` leaf by leaf.

    Examples:
      >>> combine({"w": jnp.array([[1.0, 0.0], [1.0, 1.0]])}, jnp.array([2.0, 1.0]))["w"].tolist()
      [3.0, 1.0]
    """
    return jax.tree_util.tree_map(
        lambda g: jnp.tensordot(weights.astype(g.dtype), g, axes=1), grads)


WeightingFn = Callable[[Any, Any, jax.Array | None], tuple[jax.Array, Any]]


def from_weighting(weighting: WeightingFn, num_tasks: int,
                   init_inner: Callable[[int], Any] = lambda t: (), *,
                   summary: Callable[[PerTaskGrads], Any] = gramian) -> Aggregator:
    """An aggregator returning ``Jᵀ w`` with ``w, inner = weighting(summary(J), inner, value)``.

    Args:
      weighting: ``(summary, inner_state, value [T] or None) -> (w [T], inner)``.
      num_tasks: ``T``; the state's shapes depend on it.
      init_inner: builds the method's inner state from ``T``.
      summary: what the weighting reads of the gradients: the ``[T, T]``
        Gramian by default, or e.g. a rescaled Gramian robust to huge norms.

    Examples:
      >>> mean = from_weighting(lambda g, s, value: (jnp.full(len(g), 1.0 / len(g)), s), 2)
      >>> grads = {"w": jnp.array([[2.0, 0.0], [0.0, 4.0]])}
      >>> state = mean.init({"w": jnp.zeros(2)})
      >>> direction, state = mean.update(grads, state, value=jnp.ones(2))
      >>> direction["w"].tolist(), state.weights.tolist()
      ([1.0, 2.0], [0.5, 0.5])
    """
    check_num_tasks(num_tasks)

    def init(params):
        del params
        return AggregatorState(jnp.ones(num_tasks, jnp.float32), init_inner(num_tasks))

    def update(grads, state, params=None, *, value=None, **extra):
        del params, extra
        check_grads(grads, num_tasks)
        weights, inner = weighting(summary(grads), state.inner, value)
        return combine(grads, weights), AggregatorState(weights.astype(jnp.float32), inner)

    return Aggregator(init, update)


def check_num_tasks(num_tasks: int) -> None:
    if not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}")


def check_grads(grads: PerTaskGrads, num_tasks: int) -> None:
    """Raise unless every leaf of ``grads`` has a leading axis of ``num_tasks``."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(grads)[0]:
        if leaf.ndim < 1 or leaf.shape[0] != num_tasks:
            raise ValueError(f"per-task gradient {jax.tree_util.keystr(path)} has shape "
                             f"{leaf.shape}; expected a leading task axis of {num_tasks}")
