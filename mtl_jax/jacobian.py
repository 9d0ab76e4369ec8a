"""Per-task gradients: the Jacobian of the task losses, in one compiled computation.

:func:`per_task_grads` returns the gradient of every task's loss with respect
to any pytree (all parameters, or a shared representation for rep-grad as in
MGDA-UB): one forward pass and ``T`` vector-Jacobian products, vmapped over
the rows of the identity, or mapped in chunks of ``chunk_size`` rows so that
memory stays bounded for many tasks. :func:`shared_mask` marks which
parameters the tasks share; the aggregators act on those.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from mtl_jax.tree import Selector, matches, path_str


def per_task_grads(losses_fn: Callable[[Any], jax.Array], primal: Any, *,
                   chunk_size: int | None = None) -> tuple[jax.Array, Any]:
    """The ``[T]`` losses and their Jacobian: ``primal``'s structure, leaves ``[T, ...]``.

    Args:
      losses_fn: ``primal -> [T]`` losses.
      primal: the pytree to differentiate with respect to.
      chunk_size: compute at most this many task gradients at once
        (``lax.map`` over chunks); ``None`` computes all ``T`` together.

    Examples:
      >>> losses, jac = per_task_grads(lambda w: jnp.stack([w @ w, 3 * w[0]]), jnp.ones(2))
      >>> jac.tolist()
      [[2.0, 2.0], [3.0, 0.0]]
    """
    losses, pullback = jax.vjp(losses_fn, primal)
    if losses.ndim != 1:
        raise ValueError(f"losses_fn must return a vector of task losses, got shape "
                         f"{losses.shape}")
    basis = jnp.eye(losses.shape[0], dtype=losses.dtype)
    return losses, pullback_rows(lambda cotangent: pullback(cotangent)[0], basis,
                                 chunk_size=chunk_size)


def pullback_rows(pullback: Callable[[jax.Array], Any], cotangents: jax.Array, *,
                  chunk_size: int | None = None) -> Any:
    """``pullback`` of every row of ``cotangents [T, ...]``, stacked: leaves ``[T, ...]``.

    ``chunk_size`` maps over chunks of that many rows (``lax.map``), bounding memory;
    ``None`` vectorises all rows together.

    Examples:
      >>> _, pullback = jax.vjp(lambda w: 2.0 * w, jnp.ones(2))
      >>> pullback_rows(lambda c: pullback(c)[0], jnp.eye(2)).tolist()
      [[2.0, 0.0], [0.0, 2.0]]
    """
    if chunk_size is None or chunk_size >= cotangents.shape[0]:
        return jax.vmap(pullback)(cotangents)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return jax.lax.map(pullback, cotangents, batch_size=chunk_size)


def shared_mask(params: Any, shared: Selector) -> Any:
    """A pytree of bools like ``params``: True for the leaves the tasks share.

    ``shared`` is a regex searched in each leaf's path (``"trunk"`` for
    :class:`~mtl_jax.models.HardSharing`) or a predicate ``(path, leaf) -> bool``.

    Examples:
      >>> shared_mask({"trunk": {"w": 1}, "heads": {"w": 2}}, "trunk")
      {'heads': {'w': False}, 'trunk': {'w': True}}
    """
    mask = jax.tree_util.tree_map_with_path(
        lambda path, leaf: matches(shared, path_str(path), leaf), params)
    if not any(jax.tree_util.tree_leaves(mask)):
        paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        raise ValueError(f"shared={shared!r} matches no parameter; the parameters are {paths}")
    return mask


def keep(tree: Any, mask: Any) -> Any:
    """``tree`` with the leaves where ``mask`` is False replaced by None (pruned)."""
    return jax.tree_util.tree_map(lambda m, x: x if m else None, mask, tree)
