"""Datasets (numpy, on the host): deterministic batching, MultiDigits, synthetic tasks,
the MMoE paper's synthetic regression tasks of controlled correlation, and MultiFashion /
MultiMNIST from the IDX files of Fashion-MNIST / MNIST on disk."""

from mtl_jax.data import idx
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
from mtl_jax.data.multimnist import multifashion, multimnist
from mtl_jax.data.synthetic import pooled_features, synthetic_images

__all__ = ["Dataset", "MultiSource", "SyntheticConfig", "idx", "mmoe_synthetic",
           "multidigit_pairs", "multidigits", "multifashion", "multimnist", "overlay",
           "pooled_features", "sample_pairs", "source_digits", "source_pools", "synthetic_images"]
