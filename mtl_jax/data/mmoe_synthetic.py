"""The synthetic two-task regression of MMoE, with a controlled task correlation.

Ma, Zhao, Yi, Chen, Hong & Chi (KDD 2018), "Modeling Task Relationships in
Multi-task Learning with Multi-gate Mixture-of-Experts", Sec. 4.2:

1. draw orthogonal unit vectors ``u1, u2`` in ``R^d``;
2. with a scale ``c`` and a correlation ``p`` in ``[-1, 1]``, set
   ``w1 = c u1`` and ``w2 = c (p u1 + sqrt(1 - p²) u2)``, so ``cos(w1, w2) = p``
   (the paper's "task correlation");
3. draw inputs ``x ~ N(0, I_d)``;
4. label them ``y_k = w_kᵀx + Σ_{i=1..m} sin(α_i w_kᵀx + β_i) + ε_k`` with
   ``ε_k ~ N(0, 0.01)`` (variance 0.01: standard deviation 0.1), for ``k = 1, 2``.

Without the sines the labels' Pearson correlation is ``p c² / (c² + 0.01)``, about
``p``; with them it is smaller for ``0 < p < 1`` and still rises with ``p`` (the
paper's Fig. 2).

The paper gives ``d = 100`` (Sec. 6.2) but not ``c``, ``m``, ``α_i``, ``β_i``. The
defaults here (:class:`SyntheticConfig`) are ``c = 1``, ``m = 2``, ``α = (1, 2)``,
``β = (0, 1)``: the sines then carry about three quarters of the label variance
(``w_kᵀx`` is ``N(0, c²)``), and the label correlation is about 0.43 at ``p = 0.5``
and 0.86 at ``p = 0.9``.

:func:`task_weights` and :func:`sample` are traceable JAX functions of a key (the
benchmark in :mod:`mtl_jax.reproduce.mmoe` calls them inside its compiled
program); :func:`mmoe_synthetic` is the host-side dataset, a pure function of a seed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

TASKS = ("y1", "y2")
"""The two tasks' names, as in the paper."""


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """The generator's constants.

    Attributes:
      dim: input dimension ``d``, >= 2 (the paper's is 100).
      scale: ``c``, the norm of ``w1`` and ``w2``, > 0.
      alphas: ``α_1..α_m``, the sines' frequencies (``()``: no sines, linear labels).
      betas: ``β_1..β_m``, their phases; as many as ``alphas``.
      noise_std: standard deviation of ``ε`` (the paper's variance 0.01), >= 0.

    Examples:
      >>> SyntheticConfig(dim=1)
      Traceback (most recent call last):
      ...
      ValueError: dim must be an int >= 2 (two orthogonal directions), got 1
    """

    dim: int = 100
    scale: float = 1.0
    alphas: tuple[float, ...] = (1.0, 2.0)
    betas: tuple[float, ...] = (0.0, 1.0)
    noise_std: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 2:
            raise ValueError(f"dim must be an int >= 2 (two orthogonal directions), "
                             f"got {self.dim!r}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be positive and finite, got {self.scale!r}")
        if len(self.alphas) != len(self.betas):
            raise ValueError(f"alphas and betas must have one entry per sine, got "
                             f"{len(self.alphas)} alphas and {len(self.betas)} betas")
        for name in ("alphas", "betas"):
            if not all(math.isfinite(v) for v in getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)!r}")
        if not (math.isfinite(self.noise_std) and self.noise_std >= 0):
            raise ValueError(f"noise_std must be finite and >= 0, got {self.noise_std!r}")


def check_correlation(p: Any) -> float:
    """``p`` as a float, or a ValueError unless it is a number in ``[-1, 1]``.

    Examples:
      >>> check_correlation(0.5)
      0.5
      >>> check_correlation(1.5)
      Traceback (most recent call last):
      ...
      ValueError: the task correlation p must be in [-1, 1], got 1.5
    """
    try:
        value = float(p)
    except (TypeError, ValueError):
        raise ValueError(f"the task correlation p must be a number in [-1, 1], "
                         f"got {p!r}") from None
    if not -1.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"the task correlation p must be in [-1, 1], got {p!r}")
    return value


def task_weights(key: jax.Array, p: ArrayLike, config: SyntheticConfig = SyntheticConfig()
                 ) -> jax.Array:
    """``[w1, w2]``, ``[2, d]``: steps 1-2 of the paper's recipe (Gram-Schmidt on normals).

    Traceable (``p`` may be traced); ``p`` must lie in ``[-1, 1]``, see
    :func:`check_correlation`.

    Examples:
      >>> w = task_weights(jax.random.key(0), 0.3, SyntheticConfig(dim=5, scale=2.0))
      >>> [round(float(v), 4) for v in (jnp.linalg.norm(w[0]), w[0] @ w[1] / 4)]
      [2.0, 0.3]
    """
    u = jax.random.normal(key, (2, config.dim))
    u1 = u[0] / jnp.linalg.norm(u[0])
    u2 = u[1] - (u[1] @ u1) * u1
    u2 = u2 / jnp.linalg.norm(u2)
    p = jnp.asarray(p, u.dtype)
    return config.scale * jnp.stack([u1, p * u1 + jnp.sqrt(1.0 - p * p) * u2])


def labels(z: jax.Array, config: SyntheticConfig = SyntheticConfig()) -> jax.Array:
    """The noise-free labels ``z + Σ_i sin(α_i z + β_i)`` of the projections ``z = w_kᵀx``.

    Examples:
      >>> labels(jnp.array([0.0]), SyntheticConfig(alphas=(1.0,), betas=(jnp.pi / 2,))).tolist()
      [1.0]
    """
    alphas = jnp.asarray(config.alphas, z.dtype)
    betas = jnp.asarray(config.betas, z.dtype)
    return z + jnp.sum(jnp.sin(alphas * z[..., None] + betas), axis=-1)


def sample(key: jax.Array, weights: jax.Array, num_examples: int,
           config: SyntheticConfig = SyntheticConfig()) -> tuple[jax.Array, jax.Array]:
    """``num_examples`` examples ``(x [N, d], y [N, 2])``: steps 3-4 of the paper's recipe.

    One normal draw ``[N, d + 2]`` gives the inputs and the two labels' noise.

    Examples:
      >>> config = SyntheticConfig(dim=3)
      >>> x, y = sample(jax.random.key(1), task_weights(jax.random.key(0), 1.0, config), 4,
      ...               config)
      >>> x.shape, y.shape
      ((4, 3), (4, 2))
    """
    draws = jax.random.normal(key, (num_examples, config.dim + 2))
    x, noise = draws[:, :config.dim], draws[:, config.dim:]
    return x, labels(x @ weights.T, config) + config.noise_std * noise


def mmoe_synthetic(p: float, num_examples: int, *, seed: int = 0,
                   config: SyntheticConfig = SyntheticConfig()) -> dict[str, Any]:
    """A dataset of the MMoE paper's synthetic tasks, as a batch of numpy arrays.

    A pure function of its arguments: the same seed gives the same ``u1, u2`` and
    the same examples.

    Args:
      p: the task correlation ``cos(w1, w2)``, in ``[-1, 1]``.
      num_examples: number of examples, >= 1.
      seed: seeds the directions ``u1, u2``, the inputs and the noise; >= 0.
      config: the generator's constants.

    Returns:
      ``{"x": float32 [N, d], "y": {"y1": float32 [N, 1], "y2": float32 [N, 1]}}``,
      the batch layout of :func:`mtl_jax.make_train_step`.

    Raises:
      ValueError: naming ``p``, ``num_examples`` or ``seed`` when out of range.

    Examples:
      >>> data = mmoe_synthetic(0.9, 2000, seed=0)
      >>> data["x"].shape, data["y"]["y1"].shape
      ((2000, 100), (2000, 1))
      >>> round(float(np.corrcoef(data["y"]["y1"][:, 0], data["y"]["y2"][:, 0])[0, 1]), 1)
      0.9
    """
    p = check_correlation(p)
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
        raise ValueError(f"num_examples must be an int >= 1, got {num_examples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    x, y = _generate(jax.random.key(seed), p, num_examples, config)
    y = np.asarray(y)
    return {"x": np.asarray(x), "y": {name: y[:, k:k + 1] for k, name in enumerate(TASKS)}}


@jax.jit(static_argnums=(2, 3))
def _generate(key: jax.Array, p: float, num_examples: int, config: SyntheticConfig):
    weights_key, examples_key = jax.random.split(key)
    return sample(examples_key, task_weights(weights_key, p, config), num_examples, config)
