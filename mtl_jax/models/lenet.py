"""Sener & Koltun's MultiLeNet: a LeNet trunk and two-layer heads, for MultiMNIST.

Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization" (NeurIPS
2018), Sec. 6 and their code (``multi_task/models/multi_lenet.py``:
``MultiLeNetR``, the shared encoder, and ``MultiLeNetO``, one decoder per task).
On 28x28x1 images (NHWC)::

    trunk:  conv 1->10 5x5 (valid) -> 24x24, max-pool 2 -> 12x12, ReLU,
            conv 10->20 5x5 (valid) -> 8x8, max-pool 2 -> 4x4, ReLU,
            flatten 4*4*20 = 320, dense 320->50, ReLU
    head:   dense 50->50, ReLU, dense 50->10   (one per task)

Their code also applies dropout (channel dropout after the second convolution
and dropout in the heads, both p = 0.5); it is left out here, as the library's
train step has no dropout randomness. The flatten order (HWC rather than
PyTorch's CHW) only permutes the rows of the first dense kernel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax

from mtl_jax.models.heads import Representation, StackedHeads
from mtl_jax.models.trunks import max_pool


class MultiLeNet(nn.Module):
    """The shared LeNet encoder of Sener & Koltun's MultiMNIST model (``MultiLeNetR``).

    Attributes:
      features: width of the representation (the dense layer after the convolutions).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> trunk = MultiLeNet()
      >>> x = jnp.ones((2, 28, 28, 1))
      >>> params = trunk.init(jax.random.key(0), x)
      >>> trunk.apply(params, x).shape
      (2, 50)
      >>> sum(p.size for p in jax.tree.leaves(params))  # 260 + 5,020 + 16,050
      21330
    """

    features: int = 50

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"MultiLeNet expects NHWC images of rank 4, got shape {x.shape}")
        x = nn.relu(max_pool(nn.Conv(10, (5, 5), padding="VALID")(x), 2))
        x = nn.relu(max_pool(nn.Conv(20, (5, 5), padding="VALID")(x), 2))
        return nn.relu(nn.Dense(self.features)(x.reshape((x.shape[0], -1))))


class MultiLeNetHeads(nn.Module):
    """Sener & Koltun's per-task decoders (``MultiLeNetO``): dense, ReLU, dense.

    Both layers are :class:`~mtl_jax.models.StackedHeads` (kernels stacked on a
    task axis, one batched contraction each), so the heads take the same inputs
    as ``StackedHeads``: one shared representation, a dict of per-task ones, and
    ``task=`` to evaluate one head.

    Attributes:
      names: task names, in order.
      features: output width of every head (classes).
      hidden: width of the hidden layer.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> heads = MultiLeNetHeads(("left", "right"), features=10)
      >>> params = heads.init(jax.random.key(0), jnp.ones((4, 50)))
      >>> jax.tree.map(jnp.shape, params["params"]["hidden"])
      {'bias': (2, 50), 'kernel': (2, 50, 50)}
      >>> {k: v.shape for k, v in heads.apply(params, jnp.ones((4, 50))).items()}
      {'left': (4, 10), 'right': (4, 10)}
    """

    names: Sequence[str]
    features: int
    hidden: int = 50

    @nn.compact
    def __call__(self, z: Representation, task: str | None = None):
        h = StackedHeads(self.names, self.hidden, name="hidden")(z, task=task)
        h = {t: nn.relu(v) for t, v in h.items()} if isinstance(h, Mapping) else nn.relu(h)
        return StackedHeads(self.names, self.features, name="output")(h, task=task)
