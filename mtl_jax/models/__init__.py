"""Flax (linen) modules for multi-task learning."""

from mtl_jax.models.heads import StackedHeads, TaskHeads
from mtl_jax.models.sharing import HardSharing, SoftSharing
from mtl_jax.models.trunks import ConvTrunk, MLPTrunk, SharedEncoder

__all__ = ["ConvTrunk", "HardSharing", "MLPTrunk", "SharedEncoder", "SoftSharing",
           "StackedHeads", "TaskHeads"]
