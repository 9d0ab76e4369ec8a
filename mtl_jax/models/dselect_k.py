"""DSelect-k gates (Hazimeh et al., NeurIPS 2021) for the mixture-of-experts models.

Hussein Hazimeh, Zhe Zhao, Aakanksha Chowdhery, Maheswaran Sathiamoorthy, Yihua
Chen, Rahul Mazumder, Lichan Hong, Ed H. Chi. *DSelect-k: Differentiable
Selection in the Mixture of Experts with Applications to Multi-Task Learning.*
NeurIPS 2021.

A DSelect-k gate mixes ``k`` *single-expert selectors*. Selector ``i`` holds
``m = ceil(log2 E)`` logits ``z_i``; with the cubic smooth-step

    S(t) = 0 for t <= -γ/2,   1 for t >= γ/2,   -2 t³/γ³ + 3 t / (2γ) + 1/2 otherwise,

it weighs expert ``e`` (binary code ``b(e)``, most significant bit first) by
``r(z_i)_e = Π_j S(z_ij)^b(e)_j (1 - S(z_ij))^(1 - b(e)_j)``; the gate is
``q = Σ_i softmax(w)_i r(z_i)``. Once the smooth-steps saturate at 0 or 1 each
selector picks one expert, so at most ``k`` experts get a non-zero weight.
*Static* gates learn ``z`` and ``w`` directly; *per-example* gates compute
them from the input by linear maps. Use them in :class:`~mtl_jax.models.MMoE`
(the paper's multi-task model) or :class:`~mtl_jax.models.PLE` through their
``gate`` argument.

The paper's optional entropy regulariser (pushing every selector to a single
expert) and, when ``E`` is not a power of two, the official implementation's
term ``Σ_i 1 / Σ_e r(z_i)_e`` (keeping weight off the codes of no expert) are
sown by every gate into the ``"intermediates"`` collection as
``selector_entropy`` and ``unreachable``. ``make_train_step`` does not read
them: for static gates pass :func:`selector_entropy` as its ``penalty`` (the
entropy is a function of the parameters alone), or add the sown values to a
loss of your own.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax.tree import path_str

EPSILON = 1e-6
"""Added inside the logarithm of the entropy, as in the official implementation."""


def smooth_step(t: jax.Array, gamma: float) -> jax.Array:
    """The cubic smooth-step ``S`` of width ``gamma`` (Hazimeh et al. 2020, 2021).

    Examples:
      >>> smooth_step(jnp.array([-1.0, 0.0, 0.25, 1.0]), gamma=1.0).tolist()
      [0.0, 0.5, 0.84375, 1.0]
    """
    cubic = -2.0 / gamma ** 3 * t ** 3 + 1.5 / gamma * t + 0.5
    return jnp.where(t <= -gamma / 2, 0.0, jnp.where(t >= gamma / 2, 1.0, cubic))


def binary_codes(num_experts: int) -> np.ndarray:
    """``[E, ceil(log2 E)]`` booleans: row ``e`` is ``e`` in binary, most significant bit first.

    Examples:
      >>> binary_codes(3).astype(int).tolist()
      [[0, 0], [0, 1], [1, 0]]
    """
    width = math.ceil(math.log2(num_experts))
    return (np.arange(num_experts)[:, None] >> np.arange(width)[::-1]) & 1 == 1


def selectors(z: jax.Array, num_experts: int, gamma: float) -> jax.Array:
    """Single-expert selectors: logits ``[..., m]`` to expert weights ``[..., E]``.

    Examples:
      >>> selectors(jnp.array([[1.0, -1.0], [0.0, 0.0]]), 4, gamma=1.0).tolist()
      [[0.0, 0.0, 1.0, 0.0], [0.25, 0.25, 0.25, 0.25]]
    """
    steps = smooth_step(z, gamma)[..., None, :]                     # [..., 1, m]
    return jnp.prod(jnp.where(binary_codes(num_experts), steps, 1.0 - steps), axis=-1)


def entropy(weights: jax.Array) -> jax.Array:
    """Entropy of each weight vector on the last axis."""
    return -jnp.sum(weights * jnp.log(weights + EPSILON), axis=-1)


def _uniform(limit: float) -> nn.initializers.Initializer:
    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -limit, limit)

    return init


class DSelectKGates(nn.Module):
    """``num_gates`` DSelect-k gates over ``num_experts`` experts (Hazimeh et al. 2021).

    Parameters, static: ``z_logits [G, k, m]`` and ``w_logits [G, k]``;
    per-example: ``z_kernel [G, D, k, m]``, ``z_bias [G, k, m]``,
    ``w_kernel [G, D, k]`` and ``w_bias [G, k]``. Initialised as in the official
    implementation: ``z`` uniform in ``±γ/100`` (every selector starts near the
    uniform mixture), ``w`` uniform in ``±0.05``. Each call sows the sum over
    gates and selectors (mean over examples) of the selectors' entropy as
    ``selector_entropy``, and for ``E`` not a power of two of ``1 / Σ_e r_e`` as
    ``unreachable``, into ``"intermediates"``.

    Attributes:
      num_gates: number of gates ``G`` (one per task in MMoE).
      num_experts: number of experts ``E``.
      k: number of single-expert selectors: at most ``k`` experts per gate, in
        ``[1, E]``.
      gamma: width of the smooth-step's cubic region, > 0.
      per_example: the weights depend on the input (True) or only on the gate.

    Examples:
      >>> import functools, jax, jax.numpy as jnp
      >>> from mtl_jax.models import DSelectKGates, MLPTrunk, MMoE
      >>> gates = DSelectKGates(num_gates=2, num_experts=4, k=2, per_example=False)
      >>> params = gates.init(jax.random.key(0), jnp.ones((3, 5)))
      >>> params["params"]["z_logits"].shape, gates.apply(params, jnp.ones((3, 5))).shape
      ((2, 2, 2), (2, 3, 4))
      >>> model = MMoE(MLPTrunk((16,)), ("a", "b"), features=3, num_experts=4,
      ...              gate=functools.partial(DSelectKGates, k=2))
      >>> params = model.init(jax.random.key(0), jnp.ones((5, 8)))
      >>> params["params"]["task_gates"]["z_kernel"].shape
      (2, 8, 2, 2)
      >>> outputs, state = model.apply(params, jnp.ones((5, 8)), mutable=["intermediates"])
      >>> state["intermediates"]["task_gates"]["selector_entropy"][0].shape
      ()
    """

    num_gates: int
    num_experts: int
    k: int = 2
    gamma: float = 1.0
    per_example: bool = True

    def __post_init__(self) -> None:
        if self.num_experts < 1:
            raise ValueError(f"DSelect-k needs num_experts >= 1, got {self.num_experts}")
        if not 1 <= self.k <= self.num_experts:
            raise ValueError(f"DSelect-k selects k in [1, num_experts={self.num_experts}] "
                             f"experts, got k={self.k}")
        if not self.gamma > 0:
            raise ValueError(f"DSelect-k's smooth-step needs gamma > 0, got {self.gamma}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Expert weights ``[G, B, E]`` for ``x [B, D]`` (all gates) or ``[G, B, D]`` (one each)."""
        m = math.ceil(math.log2(self.num_experts))
        z_init, w_init = _uniform(self.gamma / 100), _uniform(0.05)
        shape = (self.num_gates, self.k)
        if self.per_example:
            rows = "b" if x.ndim == 2 else "gb"
            z = jnp.einsum(f"{rows}d,gdkm->gbkm", x,
                           self.param("z_kernel", z_init, (shape[0], x.shape[-1], *shape[1:], m)))
            z = z + self.param("z_bias", z_init, (*shape, m))[:, None]
            w = jnp.einsum(f"{rows}d,gdk->gbk", x,
                           self.param("w_kernel", w_init, (shape[0], x.shape[-1], shape[1])))
            w = w + self.param("w_bias", w_init, shape)[:, None]
        else:
            z = self.param("z_logits", z_init, (*shape, m))[:, None]      # [G, 1, k, m]
            w = self.param("w_logits", w_init, shape)[:, None]            # [G, 1, k]
        r = selectors(z, self.num_experts, self.gamma)                     # [G, B|1, k, E]
        self.sow("intermediates", "selector_entropy", entropy(r).sum((0, 2)).mean())
        if self.num_experts != 2 ** m:
            self.sow("intermediates", "unreachable", (1.0 / r.sum(-1)).sum((0, 2)).mean())
        weights = jnp.einsum("gbk,gbke->gbe", nn.softmax(w, axis=-1), r)
        return jnp.broadcast_to(weights, (self.num_gates, x.shape[-2], self.num_experts))


def selector_entropy(params: Any, *, num_experts: int, gamma: float = 1.0) -> jax.Array:
    """Summed entropy of every static DSelect-k selector in ``params`` (no input needed).

    A penalty for :func:`mtl_jax.make_train_step`: ``penalty=functools.partial(
    selector_entropy, num_experts=E, gamma=γ)`` with the regularisation weight
    as ``penalty_weight``. Per-example gates' entropy depends on the input: read
    it from ``model.apply(params, x, mutable=["intermediates"])`` instead.

    Args:
      params: model variables containing static gates (``z_logits`` leaves).
      num_experts: the gates' number of experts.
      gamma: the gates' smooth-step width.

    Examples:
      >>> params = {"params": {"task_gates": {"z_logits": jnp.zeros((2, 1, 2))}}}
      >>> round(float(selector_entropy(params, num_experts=4)), 4)  # 2 uniform selectors
      2.7726
    """
    logits = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
              if path_str(path).endswith("z_logits")]
    if not logits:
        raise ValueError("params hold no static DSelect-k gate (no 'z_logits' parameter); "
                         "per-example gates sow their entropy into 'intermediates'")
    return sum(entropy(selectors(z, num_experts, gamma)).sum() for z in logits)
