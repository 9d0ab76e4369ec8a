"""Shared trunks: an MLP and the seed document's ConvNet (``SharedEncoder``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax


class MLPTrunk(nn.Module):
    """A stack of ``Dense -> activation`` layers; flattens all but the batch axis.

    Attributes:
      features: width of each hidden layer, in order.
      activation: elementwise non-linearity after every layer.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> trunk = MLPTrunk(features=(64, 32))
      >>> params = trunk.init(jax.random.key(0), jnp.ones((4, 8, 8)))
      >>> trunk.apply(params, jnp.ones((4, 8, 8))).shape
      (4, 32)
    """

    features: Sequence[int] = (256, 256)
    activation: Callable[[jax.Array], jax.Array] = nn.relu

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape((x.shape[0], -1))
        for width in self.features:
            x = self.activation(nn.Dense(width)(x))
        return x


class ConvTrunk(nn.Module):
    """The seed document's ``SharedEncoder``, generalised; NHWC input.

    Each entry of ``conv_features`` is a 3x3 'same' convolution, ReLU and a 2x2
    max-pool; then the map is flattened and passed through ``Dense`` + ReLU
    layers of widths ``dense_features``. The defaults are the seed's model:
    conv 3->32, conv 32->64, dense 64*8*8->256 on 32x32x3 images. Any input
    size works; the first dense layer adapts to the flattened size.

    Attributes:
      conv_features: output channels of each conv stage.
      dense_features: widths of the dense layers after flattening.
      kernel_size: spatial size of every convolution kernel.
      pool: window and stride of every max-pool.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> trunk = ConvTrunk()
      >>> x = jnp.ones((2, 32, 32, 3))
      >>> params = trunk.init(jax.random.key(0), x)
      >>> trunk.apply(params, x).shape
      (2, 256)
    """

    conv_features: Sequence[int] = (32, 64)
    dense_features: Sequence[int] = (256,)
    kernel_size: int = 3
    pool: int = 2

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(
                f"ConvTrunk expects NHWC images of rank 4, got shape {x.shape}")
        for channels in self.conv_features:
            x = nn.Conv(channels, (self.kernel_size, self.kernel_size), padding="SAME")(x)
            x = max_pool(nn.relu(x), self.pool)
        x = x.reshape((x.shape[0], -1))
        for width in self.dense_features:
            x = nn.relu(nn.Dense(width)(x))
        return x


def max_pool(x: jax.Array, size: int) -> jax.Array:
    """Non-overlapping ``size x size`` max-pool of NHWC ``x`` (a trailing remainder is dropped).

    Equal to ``nn.max_pool(x, (size, size), strides=(size, size))``, written as a
    reshape and a max so that its gradient is a cheap mask rather than XLA's
    select-and-scatter, which dominates a ConvNet's backward pass on CPU
    (``benchmarks/results/step_speed_cpu.md``).

    Examples:
      >>> import jax.numpy as jnp
      >>> max_pool(jnp.arange(16.0).reshape(1, 4, 4, 1), 2)[0, :, :, 0].tolist()
      [[5.0, 7.0], [13.0, 15.0]]
    """
    batch, height, width, channels = x.shape
    x = x[:, :height // size * size, :width // size * size]
    return x.reshape(batch, height // size, size, width // size, size, channels).max(axis=(2, 4))


SharedEncoder = ConvTrunk
"""The seed document's name for :class:`ConvTrunk` with its default widths."""

