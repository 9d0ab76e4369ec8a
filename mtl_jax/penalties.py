"""Penalties that tie per-task towers together (soft parameter sharing).

Soft sharing (:class:`mtl_jax.models.SoftSharing`) keeps one tower per task and
stores every parameter leaf with a leading task axis ``T``. The penalties here
are pure functions of such a parameter pytree returning a scalar, meant to be
added to the task loss inside a jitted train step::

    loss = task_loss + weight * penalty(params)

Use :func:`functools.partial` to fix options, e.g.
``functools.partial(trace_norm, kind="tucker")``.

Both penalties pick the leaves they act on with ``select``:

* ``None``: every leaf with ``ndim >= 2`` (a task axis plus at least one more);
* a string: a regular expression, matched with :func:`re.search` against the
  leaf's path joined with ``"/"``, e.g. ``"params/tower/Dense_0/kernel"``;
* a predicate ``(path, leaf) -> bool``.

Selection and shape checks run in Python on static shapes, so they raise at
trace time and work unchanged under :func:`jax.jit`.

References:
  Duong, Cohn, Bird and Cook, "Low Resource Dependency Parsing: Cross-lingual
  Parameter Sharing in a Neural Network Parser", ACL 2015.

  Yang and Hospedales, "Trace Norm Regularised Deep Multi-Task Learning",
  ICLR workshop 2017.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from mtl_jax.tree import Selector, matches, path_str

__all__ = ["l2", "nuclear_norm", "trace_norm"]

"""``None`` (all leaves with ``ndim >= 2``), a regex, or ``(path, leaf) -> bool``."""


def nuclear_norm(matrix: ArrayLike) -> jax.Array:
    """Nuclear (trace) norm ``sum_i s_i`` of a matrix, with a finite gradient.

    The nuclear norm is not differentiable where singular values vanish, and
    JAX's SVD derivative divides by ``s_i**2 - s_j**2``, which is NaN/inf for
    zero or repeated singular values -- exactly the situation of identical
    towers at initialisation. This function instead defines its derivative
    (via :func:`jax.custom_jvp`, so ``grad``, ``jacrev``, ``jacfwd`` and
    ``vmap`` all work) as the minimal-norm subgradient ``U_r V_r^T``, where
    ``U_r, V_r`` hold the singular vectors whose singular values exceed the
    relative tolerance ``max(s) * max(m, n) * eps(dtype)``. It equals the
    gradient ``U V^T`` for a full-rank matrix and is ``0`` for the zero matrix.

    Args:
      matrix: a 2-D array; integer inputs are promoted to floating point.

    Returns:
      A scalar of the matrix's floating dtype.

    Raises:
      ValueError: if ``matrix`` is not 2-D.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> float(nuclear_norm(jnp.diag(jnp.array([3.0, -4.0]))))
      7.0
      >>> jax.grad(nuclear_norm)(jnp.zeros((2, 3))).tolist()
      [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    """
    matrix = jnp.asarray(matrix)
    if matrix.ndim != 2:
        raise ValueError(f"nuclear_norm expects a matrix, got shape {matrix.shape}")
    if not jnp.issubdtype(matrix.dtype, jnp.inexact):
        matrix = matrix.astype(jnp.result_type(float))
    return _nuclear_norm(matrix)


@jax.custom_jvp
def _nuclear_norm(matrix: jax.Array) -> jax.Array:
    return jnp.sum(jnp.linalg.svd(matrix, full_matrices=False, compute_uv=False))


@_nuclear_norm.defjvp
def _nuclear_norm_jvp(
    primals: tuple[jax.Array], tangents: tuple[jax.Array]
) -> tuple[jax.Array, jax.Array]:
    (matrix,), (dmatrix,) = primals, tangents
    u, s, vh = jnp.linalg.svd(matrix, full_matrices=False)
    tol = jnp.max(s) * max(matrix.shape) * jnp.finfo(matrix.dtype).eps
    # u_i^T dA v_i for every singular triple; rows of vh are v_i^T.
    directional = jnp.einsum("mi,mn,in->i", u, dmatrix, vh)
    return jnp.sum(s), jnp.sum(jnp.where(s > tol, directional, 0))


def l2(params: Any, *, select: Selector = None, pairwise: bool = False) -> jax.Array:
    """Squared L2 distance between the task towers.

    For every selected leaf ``W`` of shape ``[T, ...]`` the penalty is
    ``sum_t ||W_t - mean_t W||**2``, the spread of the towers around their
    mean (the L2 coupling of Duong et al., ACL 2015, generalised from two to
    ``T`` tasks). With ``pairwise=True`` it is ``sum_{s<t} ||W_s - W_t||**2``,
    computed in ``O(T)`` memory through the identity
    ``sum_{s<t} ||W_s - W_t||**2 = T * sum_t ||W_t - mean_t W||**2``.
    The penalty and its gradient are exactly zero when all towers are equal.

    Args:
      params: a pytree whose selected leaves carry a leading task axis.
      select: which leaves to penalise; see the module docstring.
      pairwise: sum over pairs of tasks instead of distances to the mean.

    Returns:
      The scalar penalty, summed over the selected leaves.

    Raises:
      ValueError: if nothing is selected, or a selected leaf has ``ndim < 2``
        or a task axis of a different length than the others.

    Examples:
      >>> import jax.numpy as jnp
      >>> params = {"w": jnp.array([[0.0, 0.0], [2.0, 0.0]]), "b": jnp.ones(2)}
      >>> float(l2(params))
      2.0
      >>> float(l2(params, pairwise=True))
      4.0
    """
    leaves = _select(params, select)
    num_tasks = leaves[0][1].shape[0]
    total = sum(_spread(leaf) for _, leaf in leaves)
    return num_tasks * total if pairwise else total


def trace_norm(
    params: Any,
    *,
    kind: str = "laf",
    select: Selector = None,
    gamma: Sequence[ArrayLike] | None = None,
) -> jax.Array:
    """Trace-norm coupling of the task towers (Yang & Hospedales, 2017).

    Each selected leaf ``W`` of shape ``[T, D1, ..., Dk]`` (task axis first) is
    unfolded into matrices whose :func:`nuclear_norm` s are summed, weighted
    by ``gamma``:

    * ``"laf"`` (last axis flattening): the ``T x (D1*...*Dk)`` matrix.
      One weight.
    * ``"tucker"``: every mode unfolding, mode ``m`` against the product of
      the others, for the modes ``T, D1, ..., Dk`` in that order.
      ``k + 1`` weights.
    * ``"tt"`` (tensor train): in the paper's mode order ``D1, ..., Dk, T``
      (task axis moved last), the reshapes ``[D1*...*Di] x [D(i+1)*...*Dk*T]``
      for ``i = 1..k``. ``k`` weights.

    Low trace norm encourages the towers to share a low-rank structure. The
    gradient is finite everywhere, including identical towers and zeros.

    Args:
      params: a pytree whose selected leaves carry a leading task axis.
      kind: ``"laf"``, ``"tucker"`` or ``"tt"``.
      select: which leaves to penalise; see the module docstring.
      gamma: per-unfolding weights, default all ones. It must fit every
        selected leaf (leaves of different rank need different lengths for
        ``"tucker"`` and ``"tt"``).

    Returns:
      The scalar penalty, summed over the selected leaves.

    Raises:
      ValueError: if ``kind`` is unknown, nothing is selected, a selected leaf
        has ``ndim < 2`` or a task axis of a different length than the others,
        or ``gamma`` has the wrong length for a leaf.

    Examples:
      >>> import jax.numpy as jnp
      >>> params = {"w": jnp.ones((3, 2, 2))}
      >>> round(float(trace_norm(params)), 4)  # rank one: sqrt(3 * 4)
      3.4641
      >>> round(float(trace_norm(params, kind="tucker", gamma=(1.0, 0.0, 0.0))), 4)
      3.4641
      >>> round(float(trace_norm(params, kind="tt")), 4)
      6.9282
    """
    if kind not in _UNFOLDINGS:
        raise ValueError(f"unknown trace norm kind {kind!r}; known kinds: {sorted(_UNFOLDINGS)}")
    terms = []
    for path, leaf in _select(params, select):
        matrices = _UNFOLDINGS[kind](leaf)
        if gamma is None:
            weights = (1,) * len(matrices)
        elif len(gamma) == len(matrices):
            weights = tuple(gamma)
        else:
            raise ValueError(
                f"gamma for kind {kind!r} needs {len(matrices)} weights for leaf "
                f"{path!r} of shape {leaf.shape}, got {len(gamma)}")
        terms.extend(w * nuclear_norm(m) for w, m in zip(weights, matrices))
    return sum(terms)


def _spread(leaf: jax.Array) -> jax.Array:
    """``sum_t ||W_t - mean_t W||**2``; shifting by ``W_0`` first is exact for equal towers."""
    shifted = leaf - leaf[:1]
    return jnp.sum(jnp.square(shifted - jnp.mean(shifted, axis=0)))


def _laf(leaf: jax.Array) -> list[jax.Array]:
    return [leaf.reshape(leaf.shape[0], -1)]


def _tucker(leaf: jax.Array) -> list[jax.Array]:
    return [jnp.moveaxis(leaf, mode, 0).reshape(size, -1) for mode, size in enumerate(leaf.shape)]


def _tt(leaf: jax.Array) -> list[jax.Array]:
    tasks_last = jnp.moveaxis(leaf, 0, -1)
    rows = 1
    matrices = []
    for size in tasks_last.shape[:-1]:
        rows *= size
        matrices.append(tasks_last.reshape(rows, -1))
    return matrices


_UNFOLDINGS: dict[str, Callable[[jax.Array], list[jax.Array]]] = {
    "laf": _laf,
    "tucker": _tucker,
    "tt": _tt,
}


def _select(params: Any, select: Selector) -> list[tuple[str, jax.Array]]:
    """The ``(path, leaf)`` pairs chosen by ``select``, validated to share a task axis."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    pairs = [(path_str(path), jnp.asarray(leaf)) for path, leaf in flat]
    if select is None:
        chosen = [(p, leaf) for p, leaf in pairs if leaf.ndim >= 2]
        described = "None (all leaves with ndim >= 2)"
    else:
        chosen = [(p, leaf) for p, leaf in pairs if matches(select, p, leaf)]
        described = repr(select)
    if not chosen:
        raise ValueError(f"select={described} matches no parameter leaf; "
                         f"leaves: {[p for p, _ in pairs]}")
    first_path, first = chosen[0]
    for path, leaf in chosen:
        if leaf.ndim < 2:
            raise ValueError(f"leaf {path!r} of shape {leaf.shape} has no axis besides "
                             "the task axis; penalised leaves need ndim >= 2")
        if leaf.shape[0] != first.shape[0]:
            raise ValueError(f"leaf {path!r} of shape {leaf.shape} has a task axis of "
                             f"length {leaf.shape[0]}, but leaf {first_path!r} of shape "
                             f"{first.shape} has {first.shape[0]}")
    return chosen
