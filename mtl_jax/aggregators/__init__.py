"""Task weighting and gradient aggregation methods, as optax aggregators.

``get(name, num_tasks)`` returns a method and what it needs (``wrt``); the
factories live in :mod:`~mtl_jax.aggregators.weighting` (loss-based),
:mod:`~mtl_jax.aggregators.projection` and :mod:`~mtl_jax.aggregators.min_norm`
(gradient-based, with the on-device solvers of :mod:`~mtl_jax.aggregators.solvers`).
"""

from mtl_jax.aggregators import min_norm, projection, solvers, weighting
from mtl_jax.aggregators.base import Aggregator, AggregatorState, combine, gramian
from mtl_jax.aggregators.registry import METHODS, get

__all__ = ["METHODS", "Aggregator", "AggregatorState", "combine", "get", "gramian", "min_norm",
           "projection", "solvers", "weighting"]
