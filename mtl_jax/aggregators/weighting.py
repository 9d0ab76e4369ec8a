"""Loss-weighting aggregators: each returns ``Σ_t w_t g_t`` with weights from the losses.

Every factory here builds an :class:`~mtl_jax.aggregators.base.Aggregator` whose
``update(per_task_grads, state, params=None, *, value=losses)`` returns a descent
direction in gradient units, ``Σ_t w_t g_t`` (equal weighting returns the plain
sum of the task gradients, i.e. the gradient of the sum of the losses, as
LibMTL's EW), and reports the ``[T]`` weights it used in ``state.weights``.

=============  ==========================================================  ==========
name           weights                                                     needs loss
=============  ==========================================================  ==========
``ew``         1                                                           no
``fixed``      given constants                                             no
``uw``         ``exp(-s_t)``, ``s`` learned by Adam (Kendall et al. 2018)  yes
``dwa``        ``T softmax(r / temperature)`` (Liu et al. 2019)            yes
``gls``        ``(Π L)^(1/T) / (T L_t)`` (Chennupati et al. 2019)          yes
``rlw``        softmax of random samples (Lin et al. 2022)                 no
``famo``       ``softmax(ξ - log L)``, ``ξ`` learned (Liu et al. 2023)     yes
``stch``       smooth Tchebycheff (Lin et al. 2024)                        yes
``imtl_l``     ``exp(s_t)``, ``s`` learned by Adam (Liu et al. 2021)       yes
``gradnorm``   learned to equalise ``||w_t g_t||`` (Chen et al. 2018)      yes
``db_mtl``     ``α_t`` on EMAs of ``∇ log L_t`` (Lin et al. 2023)          yes
=============  ==========================================================  ==========

Everything is jittable and vmappable: the state is a pytree of arrays, the
control flow is ``jnp.where``, randomness comes from a PRNG key in the state.

Numerics. Losses enter logarithms and denominators through a floor
(``L + 1e-8`` where the papers' code or LibMTL adds that constant, a relative
floor for GLS; negative losses count as 0 where a method takes logs or
ratios), softmax logits are clipped to ``±1e30``, exponents of learned
log-scales to ``±60``, and the gradients fed to the inner Adam steps to
``±1e18`` (so Adam's second moment stays finite in float32); gradient norms are
computed after rescaling each task by its largest entry (the Gramian's
diagonal would overflow above ~1e19 and underflow below ~1e-19). None of these
bites at ordinary values. Every weight is then finite and bounded (at most
about ``1e8 T`` for the ``1/L`` methods), so the state stays finite and the
direction is finite whenever ``Σ_t w_t ||g_t||`` fits in float32: the tests
cover zero, equal, opposite, collinear, ``1e-30`` and ``1e30`` gradients with
zero, ``1e-30`` and ``1e30`` losses for ``T = 1, 2, 3``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtl_jax.aggregators.base import (
    Aggregator,
    AggregatorState,
    check_grads,
    check_num_tasks,
    combine,
)

__all__ = [
    "FACTORIES",
    "DBMTLState",
    "DWAState",
    "FAMOState",
    "GradNormState",
    "LearnedScaleState",
    "STCHState",
    "db_mtl",
    "dwa",
    "ew",
    "famo",
    "fixed",
    "gls",
    "gradnorm",
    "imtl_l",
    "rlw",
    "stch",
    "uw",
]

_LOSS_EPS = 1e-8  # added to losses before logs/divisions (LibMTL's DB-MTL, FAMO).
_GLS_RATIO = 1e-8  # GLS floors each loss at this fraction of the largest loss.
_NORM_RATIO = 1e-8  # DB-MTL floors each EMA gradient norm at this fraction of the largest.
_MAX_LOGIT = 1e30  # softmax inputs are clipped to ±this (so no inf - inf).
_MAX_EXPONENT = 60.0  # learned log-scales enter exp() clipped to ±this.
_MAX_ADAM_GRAD = 1e18  # gradients of the inner Adam steps are clipped to ±this.
_MIN_GRADNORM_WEIGHT = 1e-6  # GradNorm's weights stay above this before renormalising.
_TINY = float(np.finfo(np.float32).tiny)

Losses = jax.Array


# --------------------------------------------------------------------------- helpers


def _check_real(name: str, x: Any, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> float:
    """Return ``x`` as a float or raise a ValueError naming the knob."""
    if isinstance(x, bool) or not isinstance(x, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a real number, got {x!r}")
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x!r}")
    if low is not None and (x < low or (low_open and x == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {x!r}")
    if high is not None and (x > high or (high_open and x == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {x!r}")
    return x


def _check_int(name: str, x: Any, *, low: int = 0) -> int:
    if isinstance(x, bool) or not isinstance(x, int | np.integer) or x < low:
        raise ValueError(f"{name} must be an int >= {low}, got {x!r}")
    return int(x)


def _check_per_task(name: str, x: Any, num_tasks: int, *, low: float | None = None,
                    low_open: bool = False) -> np.ndarray:
    """A scalar or a length-``T`` vector of finite reals, as a float32 ``[T]`` array."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a number or {num_tasks} numbers, got {x!r}") from e
    if arr.ndim == 0:
        arr = np.full(num_tasks, float(arr))
    if arr.shape != (num_tasks,):
        raise ValueError(f"{name} must be a number or {num_tasks} numbers (one per task), "
                         f"got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {x!r}")
    if low is not None and (np.any(arr < low) or (low_open and np.any(arr == low))):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {x!r}")
    return arr.astype(np.float32)


def _losses(value: Any, num_tasks: int, method: str) -> Losses:
    """The ``[T]`` losses as float32, or a ValueError when missing or misshapen."""
    if value is None:
        raise ValueError(f"{method} weights the tasks by their losses: call "
                         f"update(per_task_grads, state, value=losses) with the [{num_tasks}] "
                         "task losses")
    value = jnp.asarray(value)
    if value.shape != (num_tasks,):
        raise ValueError(f"{method}: value (the task losses) must have shape ({num_tasks},), "
                         f"got {value.shape}")
    return value.astype(jnp.float32)


def _softmax(logits: jax.Array) -> jax.Array:
    """Softmax of logits clipped to ``±1e30`` (finite even for overflowing inputs)."""
    return jax.nn.softmax(jnp.clip(logits, -_MAX_LOGIT, _MAX_LOGIT))


def _exp(x: jax.Array) -> jax.Array:
    return jnp.exp(jnp.clip(x, -_MAX_EXPONENT, _MAX_EXPONENT))


def _adam_step(opt: optax.GradientTransformation, params: jax.Array, opt_state: Any,
               grad: jax.Array) -> tuple[jax.Array, Any]:
    grad = jnp.clip(grad, -_MAX_ADAM_GRAD, _MAX_ADAM_GRAD)
    updates, opt_state = opt.update(grad, opt_state, params)
    return params + updates, opt_state


def _task_norms(grads: Any, num_tasks: int) -> jax.Array:
    """``[T]`` norms ``||g_t||`` over all leaves, without float32 overflow/underflow.

    (The Gramian's diagonal squares the entries, so it overflows in float32 for
    norms above ~1e19 and underflows below ~1e-19; each task is rescaled by its
    largest entry first.)
    """
    leaves = [g.reshape(num_tasks, -1).astype(jnp.promote_types(g.dtype, jnp.float32))
              for g in jax.tree_util.tree_leaves(grads)]
    if not leaves:
        return jnp.zeros(num_tasks, jnp.float32)
    scale = jnp.max(jnp.stack([jnp.max(jnp.abs(g), axis=1) for g in leaves]), axis=0)
    safe = jnp.where(scale > 0, scale, 1.0)
    sq = sum(jnp.sum(jnp.square(g / safe[:, None]), axis=1) for g in leaves)
    return (safe * jnp.sqrt(sq)).astype(jnp.float32)


StepFn = Callable[[Any, Losses | None, Any], tuple[Any, jax.Array, Any]]


def _aggregator(num_tasks: int, method: str, init_inner: Callable[[Any], Any], step: StepFn,
                *, needs_value: bool) -> Aggregator:
    """An aggregator from ``step(grads, losses, inner) -> (direction, weights, inner)``."""

    def init(params):
        return AggregatorState(jnp.ones(num_tasks, jnp.float32), init_inner(params))

    def update(grads, state, params=None, *, value=None, **extra):
        del params, extra
        check_grads(grads, num_tasks)
        losses = _losses(value, num_tasks, method) if needs_value else None
        direction, weights, inner = step(grads, losses, state.inner)
        return direction, AggregatorState(weights.astype(jnp.float32), inner)

    return Aggregator(init, update)


def _static_weights(num_tasks: int, method: str, weights: np.ndarray) -> Aggregator:
    w = jnp.asarray(weights, jnp.float32)
    return _aggregator(num_tasks, method, lambda params: (),
                       lambda grads, losses, inner: (combine(grads, w), w, inner),
                       needs_value=False)


# --------------------------------------------------------------------------- static


def ew(num_tasks: int) -> Aggregator:
    """Equal weighting: the sum of the task gradients (weights 1).

    The gradient of ``Σ_t L_t``, i.e. LibMTL's EW (sum, not mean, of the
    losses). ``value`` is not needed.

    Args:
      num_tasks: ``T``.

    Returns:
      An aggregator returning ``Σ_t g_t``.

    Examples:
      >>> agg = ew(2)
      >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 2.0]])}
      >>> direction, state = agg.update(grads, agg.init({"w": jnp.zeros(2)}))
      >>> direction["w"].tolist(), state.weights.tolist()
      ([1.0, 2.0], [1.0, 1.0])
    """
    check_num_tasks(num_tasks)
    return _static_weights(num_tasks, "ew", np.ones(num_tasks, np.float32))


def fixed(num_tasks: int, weights: Sequence[float] | np.ndarray) -> Aggregator:
    """Linear scalarisation with given non-negative weights: ``Σ_t w_t g_t``.

    Args:
      num_tasks: ``T``.
      weights: ``T`` finite non-negative weights (a scalar is used for every task).

    Returns:
      An aggregator returning ``Σ_t w_t g_t``; ``value`` is not needed.

    Examples:
      >>> agg = fixed(2, [0.5, 2.0])
      >>> grads = {"w": jnp.array([[2.0, 0.0], [0.0, 1.0]])}
      >>> direction, state = agg.update(grads, agg.init({"w": jnp.zeros(2)}))
      >>> direction["w"].tolist(), state.weights.tolist()
      ([1.0, 2.0], [0.5, 2.0])
    """
    check_num_tasks(num_tasks)
    w = _check_per_task("weights", weights, num_tasks, low=0.0)
    return _static_weights(num_tasks, "fixed", w)


# --------------------------------------------------------------------------- learned log-scales


class LearnedScaleState(NamedTuple):
    """Inner state of :func:`uw` and :func:`imtl_l`: the ``[T]`` log-scales and their Adam state."""

    log_scale: jax.Array
    opt_state: Any


def uw(num_tasks: int, *, learning_rate: float = 1e-3,
       init_log_variance: float = 0.0) -> Aggregator:
    """Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    Each task has a learned log-variance ``s_t = log σ_t²`` and the objective is
    ``Σ_t exp(-s_t) L_t + s_t``; the direction is ``Σ_t exp(-s_t) g_t``
    (weights ``exp(-s_t)``, evaluated at the current ``s``) and then ``s`` takes
    one Adam step (``optax.adam(learning_rate)``) on its own gradient
    ``1 - exp(-s_t) L_t``, as LibMTL trains ``s`` together with the network.

    This is the 0.5-free form. LibMTL uses ``Σ_t L_t / (2 exp(s_t)) + s_t / 2``
    (initialised at ``s = -0.5``): the same stationary point ``exp(s_t) = L_t``
    and, Adam being invariant to a constant gradient factor, the same ``s``
    trajectory, but weights ``exp(-s_t) / 2``. With the default
    ``init_log_variance=0`` the first update is equal weighting.

    Args:
      num_tasks: ``T``.
      learning_rate: Adam learning rate of ``s`` (> 0). Default 1e-3.
      init_log_variance: initial ``s_t`` (finite). Default 0.

    Returns:
      An aggregator; ``update`` needs ``value`` (the ``[T]`` losses). Its
      ``state.inner`` is a :class:`LearnedScaleState`.

    Examples:
      >>> agg = uw(2, learning_rate=0.1)
      >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
      >>> state = agg.init({"w": jnp.zeros(2)})
      >>> for _ in range(2):
      ...     direction, state = agg.update(grads, state, value=jnp.array([0.5, 4.0]))
      >>> np.asarray(state.weights, float).round(3).tolist()  # s moved by ±lr once
      [1.105, 0.905]
    """
    check_num_tasks(num_tasks)
    lr = _check_real("learning_rate", learning_rate, low=0.0, low_open=True)
    s0 = _check_real("init_log_variance", init_log_variance)
    opt = optax.adam(lr)

    def init_inner(params):
        s = jnp.full(num_tasks, s0, jnp.float32)
        return LearnedScaleState(s, opt.init(s))

    def step(grads, losses, inner):
        s = inner.log_scale
        w = _exp(-s)
        s_new, opt_state = _adam_step(opt, s, inner.opt_state, 1.0 - w * losses)
        return combine(grads, w), w, LearnedScaleState(s_new, opt_state)

    return _aggregator(num_tasks, "uw", init_inner, step, needs_value=True)


def imtl_l(num_tasks: int, *, learning_rate: float = 1e-3) -> Aggregator:
    """IMTL-L, the loss-balancing half of IMTL (Liu et al., ICLR 2021).

    Each task has a learned log-scale ``s_t`` (initialised at 0) and the
    objective is ``Σ_t exp(s_t) L_t - s_t``; the direction is
    ``Σ_t exp(s_t) g_t`` (weights ``exp(s_t)`` at the current ``s``), then ``s``
    takes one Adam step on its gradient ``exp(s_t) L_t - 1``. The stationary
    point is ``exp(s_t) L_t = 1``: every scaled loss is pushed to 1. (LibMTL's
    ``IMTL`` combines this with IMTL-G; here it is the loss part alone.)

    Args:
      num_tasks: ``T``.
      learning_rate: Adam learning rate of ``s`` (> 0). Default 1e-3.

    Returns:
      An aggregator; ``update`` needs ``value``. Its ``state.inner`` is a
      :class:`LearnedScaleState`.

    Examples:
      >>> agg = imtl_l(2, learning_rate=0.1)
      >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
      >>> state = agg.init({"w": jnp.zeros(2)})
      >>> for _ in range(2):
      ...     direction, state = agg.update(grads, state, value=jnp.array([0.5, 4.0]))
      >>> np.asarray(state.weights, float).round(3).tolist()
      [1.105, 0.905]
    """
    check_num_tasks(num_tasks)
    lr = _check_real("learning_rate", learning_rate, low=0.0, low_open=True)
    opt = optax.adam(lr)

    def init_inner(params):
        s = jnp.zeros(num_tasks, jnp.float32)
        return LearnedScaleState(s, opt.init(s))

    def step(grads, losses, inner):
        s = inner.log_scale
        w = _exp(s)
        s_new, opt_state = _adam_step(opt, s, inner.opt_state, w * losses - 1.0)
        return combine(grads, w), w, LearnedScaleState(s_new, opt_state)

    return _aggregator(num_tasks, "imtl_l", init_inner, step, needs_value=True)


# --------------------------------------------------------------------------- DWA


class DWAState(NamedTuple):
    """Inner state of :func:`dwa`.

    Attributes:
      count: number of updates seen, saturating at 2.
      last: the (smoothed) losses of the previous update.
      before_last: those of the update before.
    """

    count: jax.Array
    last: jax.Array
    before_last: jax.Array


def dwa(num_tasks: int, *, temperature: float = 2.0, smoothing: float = 0.0) -> Aggregator:
    """Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019).

    ``w_t = T softmax(r / temperature)_t`` with ``r_t = L_t(k-1) / L_t(k-2)``,
    the ratio of task ``t``'s losses at the two previous updates; the first two
    updates use weights 1. Weights sum to ``T``.

    The paper (and LibMTL) uses each epoch's average training loss and changes
    the weights once per epoch; here the losses are per update (the ``value``
    of each call), optionally smoothed by an exponential moving average
    ``m_k = smoothing · m_{k-1} + (1 - smoothing) · L_k`` (``m_0 = L_0``) whose
    last two values then give ``r``. ``smoothing=0`` (default) is the raw
    per-step ratio. Negative losses are treated as 0; a ratio ``x/0`` is
    treated as 1 if ``x = 0`` and capped at 1e30 otherwise.

    Args:
      num_tasks: ``T``.
      temperature: softmax temperature (> 0). Default 2 (the paper's).
      smoothing: EMA factor of the losses, in ``[0, 1)``. Default 0 (none).

    Returns:
      An aggregator; ``update`` needs ``value``. Its ``state.inner`` is a
      :class:`DWAState`.

    Examples:
      >>> agg = dwa(2)
      >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
      >>> state = agg.init({"w": jnp.zeros(2)})
      >>> for losses in ([1.0, 1.0], [0.5, 1.0], [0.5, 1.0]):
      ...     direction, state = agg.update(grads, state, value=jnp.array(losses))
      >>> np.asarray(state.weights, float).round(3).tolist()  # 2 softmax([0.5, 1] / 2)
      [0.876, 1.124]
    """
    check_num_tasks(num_tasks)
    temp = _check_real("temperature", temperature, low=0.0, low_open=True)
    beta = _check_real("smoothing", smoothing, low=0.0, high=1.0, high_open=True)

    def init_inner(params):
        zeros = jnp.zeros(num_tasks, jnp.float32)
        return DWAState(jnp.zeros((), jnp.int32), zeros, zeros)

    def step(grads, losses, inner):
        losses = jnp.maximum(losses, 0.0)
        num, den = inner.last, inner.before_last
        ratio = jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0),
                          jnp.where(num > 0, _MAX_LOGIT, 1.0))
        ratio = jnp.minimum(ratio, _MAX_LOGIT)
        w = jnp.where(inner.count >= 2, num_tasks * _softmax(ratio / temp), 1.0)
        smoothed = jnp.where(inner.count == 0, losses, beta * inner.last + (1 - beta) * losses)
        new = DWAState(jnp.minimum(inner.count + 1, 2), smoothed, inner.last)
        return combine(grads, w), w, new

    return _aggregator(num_tasks, "dwa", init_inner, step, needs_value=True)


# --------------------------------------------------------------------------- GLS


def gls(num_tasks: int) -> Aggregator:
    """Geometric loss strategy (Chennupati et al., CVPR workshops 2019).

    Minimises the geometric mean ``(Π_t L_t)^(1/T)``; its gradient is
    ``Σ_t w_t g_t`` with ``w_t = (Π_s L_s)^(1/T) / (T L_t)``, computed in log
    space. Guard: each loss is floored at ``1e-8 × max_s L_s`` (and at the
    smallest normal float32), so zero losses give finite weights and no weight
    exceeds ``1e8``; at equal losses every weight is ``1/T``. It has no knobs.

    Args:
      num_tasks: ``T``.

    Returns:
      An aggregator; ``update`` needs ``value``.

    Examples:
      >>> agg = gls(2)
      >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
      >>> direction, state = agg.update(grads, agg.init({"w": jnp.zeros(2)}),
      ...                               value=jnp.array([1.0, 4.0]))
      >>> np.asarray(state.weights, float).round(3).tolist()  # sqrt(4) / (2 L_t)
      [1.0, 0.25]
    """
    check_num_tasks(num_tasks)

    def step(grads, losses, inner):
        floor = jnp.maximum(_GLS_RATIO * jnp.max(losses), _TINY)
        log_l = jnp.log(jnp.maximum(losses, floor))
        w = jnp.exp(jnp.mean(log_l) - log_l - math.log(num_tasks))
        return combine(grads, w), w, inner

    return _aggregator(num_tasks, "gls", lambda params: (), step, needs_value=True)


# --------------------------------------------------------------------------- RLW

_RLW_DISTRIBUTIONS = ("normal", "uniform", "dirichlet")


def rlw(num_tasks: int, *, distribution: str = "normal", seed: int = 0) -> Aggregator:
    """Random Loss Weighting, RLW (Lin et al., TMLR 2022).

    From "Reasonable Effectiveness of Random Weighting: A Litmus Test for
    Multi-Task Learning". Each update draws fresh weights ``softmax(λ)``, ``λ`` sampled from
    ``distribution``: ``"normal"`` (``N(0, 1)`` per task, the paper's and
    LibMTL's default), ``"uniform"`` (``U(0, 1)``) or ``"dirichlet"``
    (``Dir(1, …, 1)``); as in LibMTL, every sample goes through the softmax, so
    the weights sum to 1. The PRNG key lives in the state, seeded by ``seed``.

    Args:
      num_tasks: ``T``.
      distribution: ``"normal"`` (default), ``"uniform"`` or ``"dirichlet"``.
      seed: seed of the state's PRNG key (an int). Default 0.

    Returns:
      An aggregator; ``value`` is not needed. Its ``state.inner`` is the key.

    Examples:
      >>> agg = rlw(3, seed=0)
      >>> grads = {"w": jnp.eye(3)}
      >>> direction, state = agg.update(grads, agg.init({"w": jnp.zeros(3)}))
      >>> bool(jnp.all(state.weights > 0)), round(float(state.weights.sum()), 5)
      (True, 1.0)
    """
    check_num_tasks(num_tasks)
    if distribution not in _RLW_DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {_RLW_DISTRIBUTIONS}, got {distribution!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not (
            -(2**63) <= seed < 2**63):
        raise ValueError(f"seed must be an int that fits in 64 bits, got {seed!r}")
    seed = int(seed)

    def sample(key):
        if distribution == "normal":
            return jax.random.normal(key, (num_tasks,), jnp.float32)
        if distribution == "uniform":
            return jax.random.uniform(key, (num_tasks,), jnp.float32)
        return jax.random.dirichlet(key, jnp.ones(num_tasks, jnp.float32))

    def step(grads, losses, key):
        key, sub = jax.random.split(key)
        w = _softmax(sample(sub))
        return combine(grads, w), w, key

    return _aggregator(num_tasks, "rlw", lambda params: jax.random.PRNGKey(seed), step,
                       needs_value=False)


# --------------------------------------------------------------------------- FAMO


class FAMOState(NamedTuple):
    """Inner state of :func:`famo`.

    Attributes:
      logits: ``ξ``, the ``[T]`` weight logits.
      opt_state: state of their Adam-with-weight-decay optimiser.
      prev_log_loss: ``log(L - min_loss + eps)`` of the previous update.
      has_prev: whether there was a previous update.
    """

    logits: jax.Array
    opt_state: Any
    prev_log_loss: jax.Array
    has_prev: jax.Array


def famo(num_tasks: int, *, learning_rate: float = 0.025, weight_decay: float = 1e-3,
         min_loss: float | Sequence[float] = 0.0, eps: float = 1e-8) -> Aggregator:
    """FAMO, Fast Adaptive Multitask Optimization (Liu et al., NeurIPS 2023, arXiv 2306.03792).

    With ``z = softmax(ξ)`` and ``ℓ_t = L_t - min_loss_t + eps``, the direction
    is ``Σ_t c_t g_t`` with ``c_t = (z_t / ℓ_t) / Σ_s (z_s / ℓ_s)`` (the paper's
    normalised ``c``; the gradient of ``Σ_t z_t log ℓ_t / Σ_s(z_s/ℓ_s)`` with the
    denominator held constant), computed as ``c = softmax(ξ - log ℓ)``. The
    weights sum to 1 (mean-like scale, as in the paper).

    Logit update (the paper's Algorithm 2 = its official code = LibMTL): after
    the network step ``θ_k → θ_{k+1}``, ``δ = log ℓ(θ_k) - log ℓ(θ_{k+1})``,
    ``ξ`` gets the gradient ``J_softmax(ξ)ᵀ δ = z ⊙ δ - z (zᵀδ)`` and one step of
    Adam with L2 weight decay (``torch.optim.Adam(weight_decay=γ)``, here
    ``optax.chain(optax.add_decayed_weights(γ), optax.adam(lr))``).

    Per-call mapping: the official code evaluates ``ℓ(θ_{k+1})`` with an extra
    forward pass on batch ``k`` right after the step. An aggregator only sees
    one loss vector per call, so call ``k`` uses the previous call's losses as
    ``ℓ(θ_{k-1})`` and its own as ``ℓ(θ_k)``: it first applies the logit update
    for the step taken at call ``k-1`` (with the Jacobian at the current ``ξ``),
    then weights its gradients with the updated ``ξ``, exactly the paper's
    order, except that the two losses come from consecutive batches rather
    than one batch (noisier, no extra forward pass). The first call makes no
    logit update (uniform ``z``).

    Args:
      num_tasks: ``T``.
      learning_rate: Adam learning rate of the logits (> 0). Default 0.025
        (paper).
      weight_decay: L2 coefficient ``γ`` of the logits (>= 0). Default 1e-3
        (paper's Algorithm 2 and LibMTL; the official code defaults to 1e-5).
      min_loss: the known lower bound ``ℓ*`` of each loss (scalar or ``[T]``),
        default 0 as in the official code. Losses below it count as at it.
      eps: added to ``L - min_loss`` before the log and division (> 0).
        Default 1e-8 (official code).

    Returns:
      An aggregator; ``update`` needs ``value``. Its ``state.inner`` is a
      :class:`FAMOState`.

    Examples:
      >>> agg = famo(2)
      >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
      >>> direction, state = agg.update(grads, agg.init({"w": jnp.zeros(2)}),
      ...                               value=jnp.array([1.0, 3.0]))
      >>> np.asarray(state.weights, float).round(3).tolist()  # ∝ 1 / L at uniform z
      [0.75, 0.25]
    """
    check_num_tasks(num_tasks)
    lr = _check_real("learning_rate", learning_rate, low=0.0, low_open=True)
    wd = _check_real("weight_decay", weight_decay, low=0.0)
    floor = jnp.asarray(_check_per_task("min_loss", min_loss, num_tasks))
    eps = _check_real("eps", eps, low=0.0, low_open=True)
    opt = optax.chain(optax.add_decayed_weights(wd), optax.adam(lr))

    def init_inner(params):
        xi = jnp.zeros(num_tasks, jnp.float32)
        return FAMOState(xi, opt.init(xi), jnp.zeros(num_tasks, jnp.float32),
                         jnp.zeros((), bool))

    def step(grads, losses, inner):
        log_l = jnp.log(jnp.maximum(losses - floor, 0.0) + eps)
        xi = inner.logits
        z = _softmax(xi)
        delta = inner.prev_log_loss - log_l
        d_xi = z * delta - z * jnp.sum(z * delta)
        xi_new, opt_new = _adam_step(opt, xi, inner.opt_state, d_xi)
        xi, opt_state = jax.tree_util.tree_map(
            lambda new, old: jnp.where(inner.has_prev, new, old),
            (xi_new, opt_new), (xi, inner.opt_state))
        c = _softmax(xi - log_l)
        return combine(grads, c), c, FAMOState(xi, opt_state, log_l, jnp.ones((), bool))

    return _aggregator(num_tasks, "famo", init_inner, step, needs_value=True)


# --------------------------------------------------------------------------- STCH


class STCHState(NamedTuple):
    """Inner state of :func:`stch`: updates seen (saturating) and the nadir estimate."""

    count: jax.Array
    nadir: jax.Array


def stch(num_tasks: int, *, mu: float = 1.0, warmup_steps: int = 0,
         nadir: float | Sequence[float] | None = None, log_losses: bool = True,
         ideal: float | Sequence[float] = 0.0) -> Aggregator:
    """Smooth Tchebycheff scalarisation (Lin et al., ICML 2024, arXiv 2402.19078).

    The paper's STCH loss is ``μ log Σ_t exp((f_t - z_t) / μ)`` with ideal
    point ``z``, a smooth maximum of the objectives whose gradient is
    ``Σ_t softmax((f - z)/μ)_t ∇f_t``. For multi-task learning the official
    code (and LibMTL) takes ``f_t = log(L_t / n_t)``, the log of each loss
    normalised by a nadir ``n`` estimated as the mean loss over a warm-up,
    ideal point 0, and multiplies the loss by ``T``. So here

    * ``f_t = log((L_t + 1e-8) / (n_t + 1e-8))`` (``log_losses=True``,
      default), or ``f_t = L_t / n_t`` (``log_losses=False``; with
      ``nadir=1`` this is the plain ``μ log Σ exp((L_t - z_t)/μ)``);
    * ``p = softmax((f - ideal) / μ)`` and the weights on the raw gradients
      are ``w_t = T p_t ∂f_t/∂L_t``, i.e. ``T p_t / (L_t + 1e-8)`` or
      ``T p_t / n_t``;
    * ``n = nadir`` if given; otherwise the mean of the losses of the first
      ``warmup_steps`` updates (LibMTL: the warm-up epoch's mean), or, with
      ``warmup_steps=0`` (default), the losses of the first update;
    * during the warm-up updates the direction is that of ``Σ_t f_t`` without
      the nadir (``Σ_t log L_t``: weights ``1 / (L_t + 1e-8)``, as LibMTL; or
      weights 1 when ``log_losses=False``).

    LibMTL adds 1e-20 to ``L/n`` inside the log; we add 1e-8 to both ``L`` and
    ``n`` (finite weights, at most ``T·1e8``). Logits are clipped to ±1e30.

    Args:
      num_tasks: ``T``.
      mu: smoothing ``μ`` (> 0); small ``μ`` approaches the hard maximum.
        Default 1 (LibMTL).
      warmup_steps: updates before STCH starts, whose losses average into the
        nadir (int >= 0). Default 0 (LibMTL counts epochs, default 4).
      nadir: fixed positive normaliser (scalar or ``[T]``); None (default)
        estimates it as above.
      log_losses: normalise-and-log the losses (default, official MTL code) or
        normalise only.
      ideal: ideal point ``z`` in ``f`` units (scalar or ``[T]``). Default 0.

    Returns:
      An aggregator; ``update`` needs ``value``. Its ``state.inner`` is an
      :class:`STCHState`.

    Examples:
      >>> agg = stch(2, nadir=1.0, log_losses=False)
      >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
      >>> direction, state = agg.update(grads, agg.init({"w": jnp.zeros(2)}),
      ...                               value=jnp.array([1.0, 2.0]))
      >>> np.asarray(state.weights, float).round(3).tolist()  # 2 softmax([1, 2])
      [0.538, 1.462]
    """
    check_num_tasks(num_tasks)
    mu = _check_real("mu", mu, low=0.0, low_open=True)
    warmup = _check_int("warmup_steps", warmup_steps)
    fixed_nadir = (None if nadir is None
                   else jnp.asarray(_check_per_task("nadir", nadir, num_tasks, low=0.0,
                                                    low_open=True)))
    if not isinstance(log_losses, bool):
        raise ValueError(f"log_losses must be a bool, got {log_losses!r}")
    z = jnp.asarray(_check_per_task("ideal", ideal, num_tasks))
    # Updates that feed the nadir estimate (at least the first one when there is no warm-up).
    averaged = 0 if fixed_nadir is not None else max(warmup, 1)

    def init_inner(params):
        return STCHState(jnp.zeros((), jnp.int32), jnp.zeros(num_tasks, jnp.float32))

    def step(grads, losses, inner):
        losses = jnp.maximum(losses, 0.0)
        count = inner.count
        if fixed_nadir is None:
            # Running mean of the losses of the first `averaged` updates.
            running = inner.nadir + (losses - inner.nadir) / (count + 1).astype(jnp.float32)
            n = jnp.where(count < averaged, running, inner.nadir)
        else:
            n = fixed_nadir
        if log_losses:
            f = jnp.log(losses + _LOSS_EPS) - jnp.log(n + _LOSS_EPS)
            df = 1.0 / (losses + _LOSS_EPS)
            warm_w = df
        else:
            safe_n = jnp.maximum(n, _LOSS_EPS)
            f = losses / safe_n
            df = 1.0 / safe_n
            warm_w = jnp.ones(num_tasks, jnp.float32)
        w = num_tasks * _softmax((f - z) / mu) * df
        w = jnp.where(count < warmup, warm_w, w)
        new = STCHState(jnp.minimum(count + 1, warmup + 1), n)
        return combine(grads, w), w, new

    return _aggregator(num_tasks, "stch", init_inner, step, needs_value=True)


# --------------------------------------------------------------------------- GradNorm


class GradNormState(NamedTuple):
    """Inner state of :func:`gradnorm`.

    Attributes:
      weights: the ``[T]`` loss weights for the next update (sum ``T``).
      opt_state: their Adam state.
      initial_losses: ``L_t(0)``, the losses of the first update.
      count: updates seen (saturating at 1).
    """

    weights: jax.Array
    opt_state: Any
    initial_losses: jax.Array
    count: jax.Array


def gradnorm(num_tasks: int, *, alpha: float = 1.5, learning_rate: float = 0.025) -> Aggregator:
    """GradNorm (Chen et al., ICML 2018).

    Weights ``w`` (initially 1) give the direction ``Σ_t w_t g_t``; then, as in
    the paper's Algorithm 1: ``G_t = ||w_t g_t||``, ``Ḡ = mean_t G_t``,
    ``L̃_t = L_t / L_t(0)`` (losses over the first update's losses),
    ``r_t = L̃_t / mean_s L̃_s``, target ``Ḡ r_t^α`` held constant; the gradient
    of ``Σ_t |G_t - Ḡ r_t^α|`` w.r.t. ``w_t`` is ``sign(G_t - Ḡ r_t^α) ||g_t||``;
    ``w`` takes one Adam step (``optax.adam(learning_rate)``), is floored at
    1e-6 and renormalised to ``Σ_t w_t = T``. ``state.weights`` reports the
    weights used for the direction.

    Differences from the paper: the norms are over all shared parameters in
    the Jacobian given (the paper uses only the last shared layer, to save
    backward passes; here the full Jacobian is already at hand); the weights
    are learned by their own Adam optimiser (the paper uses the network's
    optimiser; LibMTL additionally parameterises ``w = T softmax(·)``);
    ``L(0)`` is the first update's losses (LibMTL: the first epoch's mean).
    Ratios are taken as ``(L + 1e-8) / (L(0) + 1e-8)`` in log space.

    Args:
      num_tasks: ``T``.
      alpha: restoring-force strength ``α`` (>= 0). Default 1.5 (paper).
      learning_rate: Adam learning rate of the weights (> 0). Default 0.025.

    Returns:
      An aggregator; ``update`` needs ``value``. Its ``state.inner`` is a
      :class:`GradNormState`.

    Examples:
      >>> agg = gradnorm(2, learning_rate=0.1)
      >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 3.0]])}
      >>> state = agg.init({"w": jnp.zeros(2)})
      >>> for _ in range(2):
      ...     direction, state = agg.update(grads, state, value=jnp.array([1.0, 1.0]))
      >>> np.asarray(state.weights, float).round(3).tolist()  # the big gradient loses weight
      [1.1, 0.9]
    """
    check_num_tasks(num_tasks)
    alpha = _check_real("alpha", alpha, low=0.0)
    lr = _check_real("learning_rate", learning_rate, low=0.0, low_open=True)
    opt = optax.adam(lr)

    def init_inner(params):
        w = jnp.ones(num_tasks, jnp.float32)
        return GradNormState(w, opt.init(w), jnp.zeros(num_tasks, jnp.float32),
                             jnp.zeros((), jnp.int32))

    def step(grads, losses, inner):
        losses = jnp.maximum(losses, 0.0)
        w = inner.weights
        initial = jnp.where(inner.count == 0, losses, inner.initial_losses)
        norms = _task_norms(grads, num_tasks)
        g_norm = w * norms
        log_ratio = jnp.log(losses + _LOSS_EPS) - jnp.log(initial + _LOSS_EPS)
        log_r = log_ratio - (jax.nn.logsumexp(log_ratio) - math.log(num_tasks))
        target = jnp.mean(g_norm) * _exp(alpha * log_r)
        grad_w = jnp.sign(g_norm - target) * norms
        w_new, opt_state = _adam_step(opt, w, inner.opt_state, grad_w)
        w_new = jnp.maximum(w_new, _MIN_GRADNORM_WEIGHT)
        w_new = num_tasks * w_new / jnp.sum(w_new)
        new = GradNormState(w_new, opt_state, initial, jnp.ones((), jnp.int32))
        return combine(grads, w), w, new

    return _aggregator(num_tasks, "gradnorm", init_inner, step, needs_value=True)


# --------------------------------------------------------------------------- DB-MTL


class DBMTLState(NamedTuple):
    """Inner state of :func:`db_mtl`.

    Attributes:
      buffer: EMA ``ĝ_t`` of each task's log-loss gradient, shaped like the
        per-task gradients (``[T, ...]`` per leaf).
      count: updates seen.
    """

    buffer: Any
    count: jax.Array


def db_mtl(num_tasks: int, *, beta: float = 0.9, beta_sigma: float = 0.5) -> Aggregator:
    """DB-MTL, Dual-Balancing Multi-Task Learning (Lin et al. 2023, arXiv 2308.12029).

    Loss-scale balancing: each task's loss is replaced by ``log(L_t + 1e-8)``,
    whose gradient is ``g_t / (L_t + 1e-8)``. Gradient-magnitude balancing: an
    EMA ``ĝ_t ← (1 - β_k) ∇log L_t + β_k ĝ_t`` with ``β_k = beta / k^beta_sigma``
    at update ``k = 1, 2, …`` (buffer initialised at 0, as LibMTL), then every
    ``ĝ_t`` is rescaled to the largest norm: the direction is ``Σ_t α_t ĝ_t``
    with ``α_t = max_s ||ĝ_s|| / ||ĝ_t||``.

    ``state.weights`` reports ``α`` (the balancing factors on ``ĝ``, not on the
    raw gradients: with ``beta=0`` the raw-gradient weights are
    ``α_t / (L_t + 1e-8)``); ``state.inner.buffer`` holds ``ĝ``, shaped like the
    per-task gradients, so ``init(params)`` needs ``params`` of the same
    structure as the gradients (without the task axis). LibMTL divides by
    ``||ĝ_t|| + 1e-8``; here ``||ĝ_t||`` is floored at ``1e-8 max_s ||ĝ_s||``
    instead (scale-free, ``α <= 1e8``; identical for non-negligible norms).

    Args:
      num_tasks: ``T``.
      beta: EMA factor ``β`` in ``[0, 1)``. Default 0.9 (LibMTL).
      beta_sigma: decay exponent ``σ`` of ``β_k`` (>= 0). Default 0.5 (LibMTL's
        command-line default is 0, a constant ``β``).

    Returns:
      An aggregator; ``update`` needs ``value``. Its ``state.inner`` is a
      :class:`DBMTLState`.

    Examples:
      >>> agg = db_mtl(2, beta=0.0)
      >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 4.0]])}
      >>> state = agg.init({"w": jnp.zeros(2)})
      >>> direction, state = agg.update(grads, state, value=jnp.array([1.0, 1.0]))
      >>> np.asarray(direction["w"], float).round(3).tolist(), state.weights.tolist()
      ([4.0, 4.0], [4.0, 1.0])
    """
    check_num_tasks(num_tasks)
    beta = _check_real("beta", beta, low=0.0, high=1.0, high_open=True)
    sigma = _check_real("beta_sigma", beta_sigma, low=0.0)

    def init_inner(params):
        if params is None:
            raise ValueError("db_mtl keeps a per-task gradient EMA: init(params) needs the "
                             "shared parameters (the gradients' structure without the task axis)")
        buffer = jax.tree_util.tree_map(
            lambda p: jnp.zeros((num_tasks, *jnp.shape(p)), jnp.result_type(p)), params)
        return DBMTLState(buffer, jnp.zeros((), jnp.int32))

    def step(grads, losses, inner):
        buf_def = jax.tree_util.tree_structure(inner.buffer)
        if jax.tree_util.tree_structure(grads) != buf_def or any(
                b.shape != g.shape for b, g in zip(jax.tree_util.tree_leaves(inner.buffer),
                                                   jax.tree_util.tree_leaves(grads))):
            raise ValueError("db_mtl: per-task gradients do not match the state's gradient "
                             "buffer; init(params) with params shaped like one task's gradient")
        inv = 1.0 / (jnp.maximum(losses, 0.0) + _LOSS_EPS)
        k = (inner.count + 1).astype(jnp.float32)
        beta_k = beta / k ** sigma

        def ema(g, b):
            scale = inv.reshape((num_tasks,) + (1,) * (g.ndim - 1))
            log_grad = (g.astype(jnp.float32) * scale).astype(b.dtype)
            return log_grad + (beta_k * (b - log_grad)).astype(b.dtype)

        buffer = jax.tree_util.tree_map(ema, grads, inner.buffer)
        norms = _task_norms(buffer, num_tasks)
        top = jnp.max(norms)
        alpha = jnp.where(top > 0, top / jnp.maximum(norms, _NORM_RATIO * top + _TINY), 1.0)
        count = jnp.minimum(inner.count + 1, jnp.iinfo(jnp.int32).max - 1)
        return combine(buffer, alpha), alpha, DBMTLState(buffer, count)

    return _aggregator(num_tasks, "db_mtl", init_inner, step, needs_value=True)


FACTORIES: dict[str, Callable[..., Aggregator]] = {
    "ew": ew,
    "fixed": fixed,
    "uw": uw,
    "dwa": dwa,
    "gls": gls,
    "rlw": rlw,
    "famo": famo,
    "stch": stch,
    "imtl_l": imtl_l,
    "gradnorm": gradnorm,
    "db_mtl": db_mtl,
}
"""Lower-case method name → factory (each takes ``num_tasks`` first, then keyword knobs)."""
