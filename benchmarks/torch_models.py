"""PyTorch reference for the benchmarks: the seed document's hard-sharing model.

``SharedEncoder``, ``TaskHead`` and ``MultiTaskModel`` are ported from the seed
document, ``/work/shared/seed/000_c0cd54db01dac7f9.txt`` (section 3.1-3.2, the
hard-parameter-sharing PyTorch example), with its structure and names kept. The
seed's code uses ``F.relu`` without importing ``torch.nn.functional``; the
import is added here.

Beyond the seed: :func:`mlp_encoder` (the torch twin of
``mtl_jax.models.MLPTrunk``), :func:`multitask_loss` and :func:`make_train_step`
(a hard-sharing step as a PyTorch user writes it), and :func:`load_flax_params`,
which copies mtl_jax parameters into these modules so both frameworks can start
from identical weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F  # missing from the seed's listing

LossFn = Callable[["MultiTaskModel", torch.Tensor, Sequence[torch.Tensor]], torch.Tensor]


class SharedEncoder(nn.Module):
    """The seed's shared ConvNet: NCHW 3x32x32 images -> 256 features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(64 * 8 * 8, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 64 * 8 * 8)
        return F.relu(self.fc1(x))


class TaskHead(nn.Module):
    """The seed's task-specific head: one linear layer."""

    def __init__(self, input_size: int, output_size: int) -> None:
        super().__init__()
        self.fc2 = nn.Linear(input_size, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(x)


class MultiTaskModel(nn.Module):
    """The seed's hard-sharing model: a shared encoder and a list of task heads.

    ``forward(x, task_idx)`` is the seed's interface and reruns the encoder for
    every task it is called for; :func:`multitask_loss` does not use it.
    """

    def __init__(self, shared_encoder: nn.Module, task_heads: Sequence[nn.Module]) -> None:
        super().__init__()
        self.shared_encoder = shared_encoder
        self.task_heads = nn.ModuleList(task_heads)

    def forward(self, x: torch.Tensor, task_idx: int) -> torch.Tensor:
        shared_repr = self.shared_encoder(x)
        return self.task_heads[task_idx](shared_repr)


def mlp_encoder(in_features: int, widths: Sequence[int]) -> nn.Sequential:
    """``Flatten`` then ``Linear -> ReLU`` per width: ``mtl_jax.models.MLPTrunk``'s twin."""
    layers: list[nn.Module] = [nn.Flatten()]
    for width in widths:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    return nn.Sequential(*layers)


def multitask_loss(model: MultiTaskModel, x: torch.Tensor,
                   labels: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over tasks of the mean cross-entropy, every task labelling the same batch.

    The way a PyTorch user writes hard sharing when each example carries all
    tasks' labels: the encoder runs ONCE, then a Python loop over
    ``model.task_heads`` adds up the per-task losses. Calling the seed's
    ``model(x, task_idx)`` per task instead would rerun the encoder T times,
    which would make PyTorch look unfairly slow, so it is not done.
    ``labels[t]`` holds task ``t``'s class indices ``[B]``.
    """
    shared_repr = model.shared_encoder(x)
    loss = F.cross_entropy(model.task_heads[0](shared_repr), labels[0])
    for head, y in zip(model.task_heads[1:], labels[1:], strict=True):
        loss = loss + F.cross_entropy(head(shared_repr), y)
    return loss


def make_train_step(model: MultiTaskModel, optimizer: torch.optim.Optimizer,
                    loss_fn: LossFn = multitask_loss
                    ) -> Callable[[torch.Tensor, Sequence[torch.Tensor]], torch.Tensor]:
    """``step(x, labels) -> loss``: zero the gradients, forward, backward, update.

    ``loss_fn`` may be ``torch.compile(multitask_loss)``, which compiles the
    forward and (through AOTAutograd) the backward; the optimizer stays eager.
    The returned loss is the one before the update.
    """

    def step(x: torch.Tensor, labels: Sequence[torch.Tensor]) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, x, labels)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def load_flax_params(model: MultiTaskModel, variables: Mapping[str, Any],
                     image_shape: tuple[int, int, int]) -> None:
    """Copy a ``HardSharing(trunk, StackedHeads)`` model's parameters into ``model``.

    ``model.shared_encoder`` is a :class:`SharedEncoder` (for ``ConvTrunk()``)
    or an :func:`mlp_encoder` (for ``MLPTrunk``); ``model.task_heads`` are
    :class:`TaskHead`\\ s in the order of ``StackedHeads.names``. Conv kernels go
    from HWIO to OIHW and dense kernels are transposed. Flax flattens NHWC maps
    in (H, W, C) order and torch flattens NCHW maps in (C, H, W) order, so the
    input rows of the first dense layer after a flatten are permuted.
    ``image_shape`` is the NHWC input's ``(H, W, C)``.
    """
    params = variables["params"]
    trunk, heads = params["trunk"], params["heads"]
    encoder = model.shared_encoder
    if isinstance(encoder, SharedEncoder):
        _copy_conv(encoder.conv1, trunk["Conv_0"])
        _copy_conv(encoder.conv2, trunk["Conv_1"])
        channels = encoder.conv2.out_channels
        side = math.isqrt(encoder.fc1.in_features // channels)
        _copy_dense(encoder.fc1, trunk["Dense_0"], flattened=(side, side, channels))
    else:
        linears = [layer for layer in encoder if isinstance(layer, nn.Linear)]
        for i, linear in enumerate(linears):
            _copy_dense(linear, trunk[f"Dense_{i}"], flattened=image_shape if i == 0 else None)
    kernel, bias = np.asarray(heads["kernel"]), np.asarray(heads["bias"])
    for t, head in enumerate(model.task_heads):
        _copy_dense(head.fc2, {"kernel": kernel[t], "bias": bias[t]})


def _copy_conv(conv: nn.Conv2d, p: Mapping[str, Any]) -> None:
    _assign(conv.weight, np.asarray(p["kernel"]).transpose(3, 2, 0, 1))
    _assign(conv.bias, np.asarray(p["bias"]))


def _copy_dense(linear: nn.Linear, p: Mapping[str, Any],
                flattened: tuple[int, int, int] | None = None) -> None:
    """``flattened``: the (H, W, C) map whose flax flattening feeds this layer."""
    kernel = np.asarray(p["kernel"])  # [in, out]
    if flattened is not None:
        kernel = (kernel.reshape(*flattened, -1)  # [H, W, C, out]
                  .transpose(2, 0, 1, 3)  # [C, H, W, out]
                  .reshape(kernel.shape))
    _assign(linear.weight, kernel.T)
    _assign(linear.bias, np.asarray(p["bias"]))


def _assign(param: torch.Tensor, value: np.ndarray) -> None:
    if tuple(param.shape) != value.shape:
        raise ValueError(f"shape mismatch: torch {tuple(param.shape)}, flax {value.shape}")
    with torch.no_grad():
        param.copy_(torch.from_numpy(np.array(value, dtype=np.float32)))
