"""Flax (linen) modules for multi-task learning."""

from mtl_jax.models.cross_stitch import CrossStitch, CrossStitchUnit
from mtl_jax.models.dselect_k import DSelectKGates, selector_entropy
from mtl_jax.models.heads import StackedHeads, TaskHeads
from mtl_jax.models.lenet import MultiLeNet, MultiLeNetHeads
from mtl_jax.models.mmoe import CGC, PLE, Experts, MMoE, SoftmaxGates
from mtl_jax.models.mtan import MTAN
from mtl_jax.models.sharing import HardSharing, SoftSharing
from mtl_jax.models.trunks import ConvTrunk, MLPTrunk, SharedEncoder

__all__ = ["CGC", "PLE", "ConvTrunk", "CrossStitch", "CrossStitchUnit", "DSelectKGates",
           "Experts", "HardSharing", "MLPTrunk", "MMoE", "MTAN", "MultiLeNet", "MultiLeNetHeads",
           "SharedEncoder", "SoftSharing", "SoftmaxGates", "StackedHeads", "TaskHeads",
           "selector_entropy"]
