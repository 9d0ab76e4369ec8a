"""Multi-task attention network (MTAN; Liu, Johns & Davison, CVPR 2019) over a conv trunk.

Shikun Liu, Edward Johns, Andrew J. Davison. *End-to-End Multi-Task Learning
with Attention.* CVPR 2019.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.models.heads import StackedHeads
from mtl_jax.models.mmoe import check_call, check_names, stacked
from mtl_jax.models.trunks import ConvTrunk, max_pool


class AttentionMask(nn.Module):
    """One task's soft attention mask: ``sigmoid(conv1x1(ReLU(conv1x1(x))))``, NHWC.

    The paper's ``h(g(·))`` (parameters ``g`` and ``h``) without batch
    normalisation (the library's models hold parameters only); a 1x1
    convolution is a ``Dense`` on the channel axis.

    Attributes:
      channels: channels of the mask (those of the features it multiplies).
    """

    channels: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Dense(self.channels, name="g")(x))
        return nn.sigmoid(nn.Dense(self.channels, name="h")(x))


class MTAN(nn.Module):
    """Per-task soft attention over the stages of a shared ConvNet (Liu et al., CVPR 2019).

    Shikun Liu, Edward Johns, Andrew J. Davison. *End-to-End Multi-Task Learning
    with Attention.* CVPR 2019. The shared network is ``trunk``'s
    ``conv -> ReLU -> max-pool`` stages; at stage ``j`` with shared features
    ``p_j``, task ``t`` computes the mask
    ``a_tj = sigmoid(conv1x1(ReLU(conv1x1([p_j ; f_j(â_t,j-1)]))))`` and its
    features ``â_tj = a_tj ⊙ p_j`` (the first stage's mask reads ``p_1`` only);
    ``f_j``, shared by the tasks as in the paper, is a 3x3 ``conv -> ReLU ->
    max-pool`` taking the task's previous features to stage ``j``'s channels and
    resolution. Each task's last features are max-pooled and flattened, go
    through ``trunk``'s dense layers (shared weights, as the paper shares every
    layer outside the attention modules) and its own linear head. Attention
    modules are stacked on a leading task axis and evaluated with ``nn.vmap``.
    The trunk is only read for its configuration.

    Parameters: ``shared_conv_{j}`` (the shared network), ``shared_block_{j}``
    (``f_j``, ``j >= 1``), ``shared_dense_{i}``, ``attention_{j}/{g,h}/...
    [T, ...]`` and ``heads/... [T, ...]``. Shared (:attr:`shared`): every
    ``shared_*`` parameter; the attention modules and heads are task-specific.

    Attributes:
      trunk: a :class:`~mtl_jax.models.ConvTrunk` with at least one conv stage.
      names: task names, in order; ``T = len(names)``.
      features: output width of every head.
      shared: path regex of the parameters several tasks share, for
        ``make_train_step(shared=...)``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from mtl_jax.models import ConvTrunk, MTAN
      >>> model = MTAN(ConvTrunk((4, 8), (16,)), names=("left", "right"), features=10)
      >>> x = jnp.ones((2, 12, 12, 1))
      >>> params = model.init(jax.random.key(0), x)
      >>> params["params"]["attention_1"]["g"]["kernel"].shape
      (2, 16, 8)
      >>> model.apply(params, x, task="right").shape
      (2, 10)
    """

    trunk: nn.Module
    names: Sequence[str]
    features: int

    shared: ClassVar[str] = r"(^|/)shared_"

    def __post_init__(self) -> None:
        check_names("MTAN", self.names)
        if not isinstance(self.trunk, ConvTrunk):
            raise ValueError(f"MTAN attends to the stages of a convolutional trunk on NHWC "
                             f"images: it needs a ConvTrunk, got {type(self.trunk).__name__}")
        if not self.trunk.conv_features:
            raise ValueError("MTAN needs a ConvTrunk with conv stages, got conv_features=()")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, task: str | None = None):
        check_call("MTAN", self.names, x, task)
        if x.ndim != 4:
            raise ValueError(f"MTAN expects NHWC images of rank 4, got shape {x.shape}")
        num_tasks, size, pool = len(self.names), self.trunk.kernel_size, self.trunk.pool
        attended = None                                                  # [T, B, H, W, C]
        for j, channels in enumerate(self.trunk.conv_features):
            shared = nn.relu(nn.Conv(channels, (size, size), padding="SAME",
                                     name=f"shared_conv_{j}")(x))        # p_j: [B, H, W, C]
            if attended is None:
                inputs = shared
            else:
                previous = nn.Conv(channels, (size, size), padding="SAME",
                                   name=f"shared_block_{j}")(_fold(attended))
                previous = _unfold(max_pool(nn.relu(previous), pool), num_tasks)
                inputs = jnp.concatenate(
                    [jnp.broadcast_to(shared, previous.shape[:-1] + shared.shape[-1:]), previous],
                    axis=-1)
            masks = stacked(AttentionMask, num_tasks, None if attended is None else 0)(
                channels, name=f"attention_{j}")(inputs)
            attended = masks * shared
            x = max_pool(shared, pool)
        z = max_pool(_fold(attended), pool)
        z = z.reshape(z.shape[0], -1)
        for i, width in enumerate(self.trunk.dense_features):
            z = nn.relu(nn.Dense(width, name=f"shared_dense_{i}")(z))
        z = z.reshape(num_tasks, -1, z.shape[-1])
        out = StackedHeads(self.names, self.features, name="heads")(dict(zip(self.names, z)))
        return out if task is None else out[task]


def _fold(x: jax.Array) -> jax.Array:
    """``[T, B, ...]`` to ``[T * B, ...]``: shared layers read every task's rows at once."""
    return x.reshape(-1, *x.shape[2:])


def _unfold(x: jax.Array, num_tasks: int) -> jax.Array:
    return x.reshape(num_tasks, -1, *x.shape[1:])
