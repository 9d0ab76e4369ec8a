"""Mixed precision: compute in bfloat16, keep parameters and optimizer state in float32.

:class:`MixedPrecision` wraps any model: inside ``apply`` the float32
parameters and inputs are cast to the compute dtype and the outputs cast back,
so losses, gradients (the casts' transposes), parameters and the optimizer's
moments stay float32 while the matrix products and convolutions run in
bfloat16. Everything else about the wrapped model (its ``shared`` regex, its
``trunk`` and ``heads``) shows through.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

PRECISIONS = {"f32": None, "bf16": jnp.bfloat16}


def cast(tree: Any, dtype: Any) -> Any:
    """Every floating-point leaf of ``tree`` as ``dtype`` (other leaves unchanged).

    Examples:
      >>> import numpy as np
      >>> [x.dtype.name for x in cast([np.ones(2), np.arange(2)], jnp.bfloat16)]
      ['bfloat16', 'int64']
    """
    return jax.tree_util.tree_map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


@dataclasses.dataclass(frozen=True)
class MixedPrecision:
    """``model`` computing in ``dtype``, with float32 parameters, inputs and outputs.

    Examples:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> model = MixedPrecision(nn.Dense(2))
      >>> params = model.init(jax.random.key(0), jnp.ones((1, 3)))
      >>> params["params"]["kernel"].dtype, model.apply(params, jnp.ones((1, 3))).dtype
      (dtype('float32'), dtype('float32'))
    """

    model: Any
    dtype: Any = jnp.bfloat16

    def init(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.init(*args, **kwargs)

    def apply(self, variables: Any, x: Any, **kwargs: Any) -> Any:
        outputs = self.model.apply(cast(variables, self.dtype), cast(x, self.dtype), **kwargs)
        return cast(outputs, jnp.float32)

    def __getattr__(self, name: str) -> Any:
        if name == "model":  # not set yet (copying, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)
