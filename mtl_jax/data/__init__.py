"""Datasets (numpy, on the host): deterministic batching, MultiDigits, synthetic tasks,
and the MMoE paper's synthetic regression tasks of controlled correlation."""

from mtl_jax.data.dataset import Dataset, MultiSource
from mtl_jax.data.mmoe_synthetic import SyntheticConfig, mmoe_synthetic
from mtl_jax.data.multidigits import (
                                      multidigit_pairs,
                                      multidigits,
                                      overlay,
                                      sample_pairs,
                                      source_digits,
                                      source_pools,
)
from mtl_jax.data.synthetic import pooled_features, synthetic_images

__all__ = ["Dataset", "MultiSource", "SyntheticConfig", "mmoe_synthetic", "multidigit_pairs",
           "multidigits", "overlay", "pooled_features", "sample_pairs", "source_digits",
           "source_pools", "synthetic_images"]
