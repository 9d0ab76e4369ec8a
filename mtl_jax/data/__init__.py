"""Datasets (numpy, on the host): deterministic batching, MultiDigits, synthetic tasks."""

from mtl_jax.data.dataset import Dataset, MultiSource
from mtl_jax.data.multidigits import (
                                      multidigit_pairs,
                                      multidigits,
                                      overlay,
                                      sample_pairs,
                                      source_digits,
                                      source_pools,
)
from mtl_jax.data.synthetic import pooled_features, synthetic_images

__all__ = ["Dataset", "MultiSource", "multidigit_pairs", "multidigits", "overlay",
           "pooled_features", "sample_pairs", "source_digits", "source_pools",
           "synthetic_images"]
