"""Shared fixtures: tiny models, tasks and batches that compile in well under a second.

Hypothesis runs derandomized (the same examples on every run, so CI is
reproducible); ``HYPOTHESIS_PROFILE=explore`` draws fresh examples instead.
"""

import os

import flax.linen as nn
import jax
import numpy as np
import pytest
from hypothesis import settings

import mtl_jax as mtl

settings.register_profile("deterministic", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))

NAMES = ("a", "b")


@pytest.fixture
def tasks():
    return mtl.Tasks([mtl.classification("a", 3), mtl.regression("b", 2)])


@pytest.fixture
def hetero_model():
    """One dense trunk layer; a 3-way classifier head and a 2-d regression head."""
    return mtl.models.HardSharing(
        mtl.models.MLPTrunk((6,), activation=jnp_tanh),
        mtl.models.TaskHeads({"a": nn.Dense(3), "b": nn.Dense(2)}))


def jnp_tanh(x):
    return jax.numpy.tanh(x)


def make_batch(rng: np.random.Generator, size: int = 8, dim: int = 5):
    return {"x": rng.normal(size=(size, dim)).astype(np.float32),
            "y": {"a": rng.integers(0, 3, size).astype(np.int32),
                  "b": rng.normal(size=(size, 2)).astype(np.float32)}}


@pytest.fixture
def batch():
    return make_batch(np.random.default_rng(0))
