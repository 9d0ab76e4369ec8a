"""Cross-stitch networks (Misra et al., CVPR 2016): task columns mixed after every stage.

Ishan Misra, Abhinav Shrivastava, Abhinav Gupta, Martial Hebert. *Cross-stitch
Networks for Multi-task Learning.* CVPR 2016.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.models.heads import StackedHeads
from mtl_jax.models.mmoe import check_call, check_names, stacked
from mtl_jax.models.trunks import ConvTrunk, MLPTrunk, max_pool


def near_identity(alpha_self: float) -> nn.initializers.Initializer:
    """Initialiser of ``[..., T, T]`` units: ``alpha_self`` on the diagonal, rows summing to 1.

    The paper's ``(α_S, α_D)`` initialisation, a convex combination
    ``α_S + α_D = 1`` for two tasks (it compares several values; ``(0.9, 0.1)``
    is the default here), with ``α_D = (1 - α_S) / (T - 1)`` for ``T`` tasks.

    Examples:
      >>> import jax
      >>> near_identity(0.9)(jax.random.key(0), (3, 3))
      Array([[0.9 , 0.05, 0.05],
             [0.05, 0.9 , 0.05],
             [0.05, 0.05, 0.9 ]], dtype=float32)
    """

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        num_tasks = shape[-1]
        other = (1.0 - alpha_self) / (num_tasks - 1)
        unit = jnp.where(jnp.eye(num_tasks, dtype=bool), alpha_self, other).astype(dtype)
        return jnp.broadcast_to(unit, shape)

    return init


class CrossStitchUnit(nn.Module):
    """Learnable linear mixing of ``T`` task activations (Misra et al. 2016, eq. 1).

    ``x̃_t = Σ_s α[t, s] x_s`` at every position, with one ``α [T, T]`` for all
    channels, or with ``per_channel`` one ``α [C, T, T]`` per channel ``C`` (the
    last axis). Parameter: ``alpha``.

    Attributes:
      alpha_self: initial weight of a task's own activation (``α_S``).
      per_channel: one unit per channel instead of one for the whole stage.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> unit = CrossStitchUnit(alpha_self=0.9, per_channel=True)
      >>> x = jnp.stack([jnp.ones((4, 3)), jnp.zeros((4, 3))])     # [T=2, B=4, C=3]
      >>> params = unit.init(jax.random.key(0), x)
      >>> params["params"]["alpha"].shape, unit.apply(params, x)[:, 0, 0]
      ((3, 2, 2), Array([0.9, 0.1], dtype=float32))
    """

    alpha_self: float = 0.9
    per_channel: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        num_tasks = x.shape[0]
        shape = (x.shape[-1], num_tasks, num_tasks) if self.per_channel else (num_tasks,) * 2
        alpha = self.param("alpha", near_identity(self.alpha_self), shape)
        if self.per_channel:
            return jnp.einsum("cts,s...c->t...c", alpha, x)
        return jnp.einsum("ts,s...->t...", alpha, x)


class CrossStitch(nn.Module):
    """One column per task, copies of the stages of ``trunk``, mixed by cross-stitch units.

    Ishan Misra, Abhinav Shrivastava, Abhinav Gupta, Martial Hebert.
    *Cross-stitch Networks for Multi-task Learning.* CVPR 2016. The columns
    follow ``trunk``: for a :class:`~mtl_jax.models.ConvTrunk` every stage
    ``conv -> ReLU -> max-pool`` and then every ``Dense -> ReLU`` (the seed's
    conv32-pool-conv64-pool-dense256), for an :class:`~mtl_jax.models.MLPTrunk`
    every ``Dense -> activation``. After each stage a :class:`CrossStitchUnit`
    mixes the columns (as the paper does after every pooling and fully
    connected layer); then each task's linear head reads its column. The
    columns' parameters are stacked on a leading task axis and evaluated with
    ``nn.vmap``; the trunk itself is only read for its configuration.

    Parameters: ``column_{i}/kernel [T, ...]`` and ``column_{i}/bias [T, ...]``
    for stage ``i``; ``stitch_{i}/alpha [T, T]`` (or ``[C, T, T]``) after it,
    named ``stitch_out`` after the last stage; ``heads/kernel [T, D, F]`` and
    ``heads/bias [T, F]``. Shared (:attr:`shared`): the columns and the units
    ``stitch_{i}``, since the units route every column to every task. Row ``t``
    of ``stitch_out`` feeds task ``t``'s head only, so it is task-specific like
    the heads. The paper trains the units with a larger learning rate than the
    columns (use ``optax.multi_transform`` for that).

    Attributes:
      trunk: an ``MLPTrunk`` or ``ConvTrunk`` whose stages each column copies.
      names: task names, at least two; ``T = len(names)``.
      features: output width of every head.
      alpha_self: initial weight of a column's own activation in each unit
        (``α_S``; the others get ``(1 - α_S) / (T - 1)``).
      per_channel: one unit per channel (``[C, T, T]``) instead of per stage.
      shared: path regex of the parameters several tasks share, for
        ``make_train_step(shared=...)``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from mtl_jax.models import ConvTrunk, CrossStitch
      >>> model = CrossStitch(ConvTrunk((4, 8), (16,)), names=("left", "right"), features=10)
      >>> x = jnp.ones((2, 12, 12, 1))
      >>> params = model.init(jax.random.key(0), x)
      >>> params["params"]["column_1"]["kernel"].shape, params["params"]["stitch_1"]["alpha"].shape
      ((2, 3, 3, 4, 8), (2, 2))
      >>> {k: v.shape for k, v in model.apply(params, x).items()}
      {'left': (2, 10), 'right': (2, 10)}
    """

    trunk: nn.Module
    names: Sequence[str]
    features: int
    alpha_self: float = 0.9
    per_channel: bool = False

    shared: ClassVar[str] = r"(^|/)(column|stitch)_\d+/"

    def __post_init__(self) -> None:
        check_names("CrossStitch", self.names)
        if len(self.names) < 2:
            raise ValueError(f"CrossStitch mixes the columns of two or more tasks, got "
                             f"{list(self.names)}")
        if not isinstance(self.trunk, MLPTrunk | ConvTrunk):
            raise ValueError(f"CrossStitch copies the stages of an MLPTrunk or a ConvTrunk, got "
                             f"{type(self.trunk).__name__}")
        if not self._stages():
            raise ValueError("CrossStitch needs a trunk with at least one stage")
        if not 0.0 <= self.alpha_self <= 1.0:
            raise ValueError(f"alpha_self must be in [0, 1], got {self.alpha_self}")
        super().__post_init__()

    def _stages(self) -> list[tuple[str, int]]:
        if isinstance(self.trunk, ConvTrunk):
            return ([("conv", c) for c in self.trunk.conv_features]
                    + [("dense", w) for w in self.trunk.dense_features])
        return [("dense", w) for w in self.trunk.features]

    @nn.compact
    def __call__(self, x: jax.Array, task: str | None = None):
        check_call("CrossStitch", self.names, x, task)
        conv = isinstance(self.trunk, ConvTrunk)
        if conv and x.ndim != 4:
            raise ValueError(f"CrossStitch on a ConvTrunk expects NHWC images of rank 4, got "
                             f"shape {x.shape}")
        num_tasks, h, in_axes = len(self.names), x, None   # the first stage reads the input
        stages = self._stages()
        for i, (kind, width) in enumerate(stages):
            if kind == "conv":
                size = self.trunk.kernel_size
                h = stacked(nn.Conv, num_tasks, in_axes)(
                    width, (size, size), padding="SAME", name=f"column_{i}")(h)
                h = max_pool(nn.relu(h).reshape(-1, *h.shape[2:]), self.trunk.pool)
                h = h.reshape(num_tasks, -1, *h.shape[1:])
            else:
                h = h.reshape(*h.shape[:1 if in_axes is None else 2], -1)
                h = stacked(nn.Dense, num_tasks, in_axes)(width, name=f"column_{i}")(h)
                h = nn.relu(h) if conv else self.trunk.activation(h)
            unit = "stitch_out" if i == len(stages) - 1 else f"stitch_{i}"
            h = CrossStitchUnit(self.alpha_self, self.per_channel, name=unit)(h)
            in_axes = 0
        h = h.reshape(num_tasks, h.shape[1], -1)
        out = StackedHeads(self.names, self.features, name="heads")(dict(zip(self.names, h)))
        return out if task is None else out[task]
