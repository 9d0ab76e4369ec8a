"""PyTorch reference train steps for task-weighting and gradient-aggregation methods.

The loop is the one of the PyTorch libraries and the methods' papers, as LibMTL
(Lin & Zhang, "LibMTL: A Library for Multi-Task Learning", JMLR 24(209), 2023,
https://github.com/median-research-group/LibMTL) runs it; it is written here
from that description, no LibMTL code is copied:

- gradient-based methods (PCGrad, MGDA, CAGrad, Nash-MTL, UPGrad): one forward
  pass, then a Python loop of ``T`` backward passes through the retained graph,
  each giving one task's gradient of the shared parameters as one row of a dense
  ``[T, |θ_shared|]`` matrix; the method turns the matrix into one vector, which
  becomes the shared parameters' gradient; each head gets its own task's
  ordinary gradient from the same pass; then the optimizer steps.
- MGDA-UB: the loop is over the gradients of the shared representation
  (``[T, batch · features]``), and one backward pass of ``Σ_t w_t L_t`` follows.
- loss-based methods (EW, FAMO): one backward pass of ``Σ_t w_t L_t``.

The aggregation itself is TorchJD 0.18's (Quinton & Rey, "Jacobian Descent for
Multi-Objective Optimization", 2024, https://github.com/TorchJD/torchjd), the
reference PyTorch implementations, with their default settings (PCGrad's loop
and the quadprog and cvxpy solvers of UPGrad, CAGrad and Nash-MTL run on the
CPU; MGDA's Frank-Wolfe loop runs on the Gramian's device). EW and FAMO (Liu
et al., NeurIPS 2023) are written here. Scaling conventions follow
``mtl_jax.aggregators``, so that both frameworks compute the same update: EW is
the sum of the task gradients, PCGrad the sum of the projected gradients,
MGDA's weights sum to 1, CAGrad is divided by ``1 + c²`` (its official code's
and LibMTL's default ``rescale=1``; TorchJD's ``CAGrad`` does not rescale),
Nash-MTL's direction is clipped to norm 1 and UPGrad averages (preference
``1/T``). ``tests/test_benchmarks.py`` checks each method's direction against
mtl_jax's. One difference remains: TorchJD's MGDA stops Frank-Wolfe at steps
below 1e-3, exact for two tasks but approximate beyond (mtl_jax solves exactly).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
import torch_models
import torchjd.aggregation as tjd
from torch import Tensor

Step = Callable[[Tensor, Sequence[Tensor]], Tensor]
Weighting = Callable[[Tensor], Tensor]  # [T] losses or [T, n] Jacobian -> [T] weights
Aggregate = Callable[[Tensor], Tensor]  # [T, n] Jacobian -> [n] direction

CAGRAD_C = 0.4  # mtl_jax's and the CAGrad paper's c (NYUv2, Cityscapes)


def forward(model: torch_models.MultiTaskModel, x: Tensor,
            labels: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """The shared representation and the ``[T]`` cross-entropies; the encoder runs once."""
    rep = model.shared_encoder(x)
    losses = [F.cross_entropy(head(rep), y)
              for head, y in zip(model.task_heads, labels, strict=True)]
    return rep, torch.stack(losses)


def shared_jacobian(model: torch_models.MultiTaskModel, losses: Tensor) -> Tensor:
    """``[T, |θ_shared|]``: row ``t`` is ``∇ L_t`` of the encoder's parameters, flattened.

    One backward pass per task through the retained graph (the last one frees
    it). Each pass also yields task ``t``'s head gradient, stored as that head's
    ``.grad``: heads train on their ordinary gradients.
    """
    shared = list(model.shared_encoder.parameters())
    rows = []
    for t, (loss, head) in enumerate(zip(losses, model.task_heads, strict=True)):
        own = list(head.parameters())
        grads = torch.autograd.grad(loss, shared + own, retain_graph=t < len(losses) - 1)
        rows.append(torch.cat([g.reshape(-1) for g in grads[:len(shared)]]))
        for param, grad in zip(own, grads[len(shared):], strict=True):
            param.grad = grad
    return torch.stack(rows)


def set_shared_grad(model: torch_models.MultiTaskModel, direction: Tensor) -> None:
    """Split the flat ``direction`` into the encoder parameters' ``.grad``."""
    offset = 0
    for param in model.shared_encoder.parameters():
        param.grad = direction[offset:offset + param.numel()].view_as(param)
        offset += param.numel()


def representation_jacobian(rep: Tensor, losses: Tensor) -> Tensor:
    """``[T, batch · features]``: row ``t`` is ``∇ L_t`` of the shared representation."""
    return torch.stack([torch.autograd.grad(loss, rep, retain_graph=True)[0].reshape(-1)
                        for loss in losses])


def jacobian_step(model: torch_models.MultiTaskModel, optimizer: torch.optim.Optimizer,
                  aggregate: Aggregate) -> Step:
    """A step that aggregates the per-task gradients of the shared parameters."""

    def step(x: Tensor, labels: Sequence[Tensor]) -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        _, losses = forward(model, x, labels)
        set_shared_grad(model, aggregate(shared_jacobian(model, losses)))
        optimizer.step()
        return losses.detach().sum()

    return step


def weighted_loss_step(model: torch_models.MultiTaskModel, optimizer: torch.optim.Optimizer,
                       weighting: Weighting, *, on_representation: bool) -> Step:
    """A step on ``Σ_t w_t L_t``; ``w`` from the losses, or from the representation's
    per-task gradients when ``on_representation`` (MGDA-UB)."""

    def step(x: Tensor, labels: Sequence[Tensor]) -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        rep, losses = forward(model, x, labels)
        stat = representation_jacobian(rep, losses) if on_representation else losses.detach()
        weights = weighting(stat).detach()
        (weights @ losses).backward()
        optimizer.step()
        return losses.detach().sum()

    return step


class FAMO:
    """FAMO's task weights (Liu, Liu, Stone & Liu, "FAMO: Fast Adaptive Multitask
    Optimization", NeurIPS 2023), as ``mtl_jax.aggregators.weighting.famo``.

    ``c = softmax(ξ - log(L + eps))``. Before weighting, the logits ``ξ`` take
    the step of the update made at the previous call: their gradient is the
    softmax's Jacobian-vector product ``z ⊙ δ - z (zᵀδ)`` with ``z = softmax(ξ)``
    and ``δ = log ℓ_prev - log ℓ`` (the paper's Algorithm 2), and their optimizer
    is ``torch.optim.Adam(lr, weight_decay)`` as in the paper's code. As in
    mtl_jax, ``ℓ_prev`` is the previous call's loss vector (the official code
    runs one extra forward pass after the update instead), and the first call
    makes no logit update.
    """

    def __init__(self, num_tasks: int, *, device: torch.device | str = "cpu",
                 learning_rate: float = 0.025, weight_decay: float = 1e-3,
                 eps: float = 1e-8) -> None:
        self.logits = torch.zeros(num_tasks, device=device, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.logits], lr=learning_rate,
                                          weight_decay=weight_decay)
        self.eps = eps
        self.prev_log_loss: Tensor | None = None

    def __call__(self, losses: Tensor) -> Tensor:
        log_loss = torch.log(losses.clamp(min=0.0) + self.eps)
        if self.prev_log_loss is not None:
            z = torch.softmax(self.logits.detach(), dim=0)
            delta = self.prev_log_loss - log_loss
            self.logits.grad = z * delta - z * (z @ delta)
            self.optimizer.step()
        self.prev_log_loss = log_loss
        return torch.softmax(self.logits.detach() - log_loss, dim=0)


def scaled(aggregate: Aggregate, factor: float) -> Aggregate:
    """``aggregate`` times a constant."""
    return lambda jacobian: factor * aggregate(jacobian)


def equal_weights(losses: Tensor) -> Tensor:
    """EW: every weight 1, the gradient of the sum of the losses."""
    return torch.ones_like(losses)


METHODS = ("ew", "pcgrad", "mgda", "mgda_ub", "cagrad", "nash_mtl", "upgrad", "famo")


def make_step(method: str, model: torch_models.MultiTaskModel,
              optimizer: torch.optim.Optimizer, num_tasks: int, *,
              aggregator: tjd.Aggregator | None = None) -> Step:
    """``step(x, labels) -> Σ_t L_t`` (before the update) for ``method``, a name of
    ``mtl_jax.aggregators.METHODS`` listed in :data:`METHODS`.

    The model must already be on its device; per-call state (FAMO's logits,
    Nash-MTL's previous weights) lives in the returned closure. ``aggregator``
    replaces the method's TorchJD aggregator (MGDA-UB uses its weighting), e.g.
    ``torchjd.aggregation.MGDA(epsilon=1e-7)`` for a tighter Frank-Wolfe solve.
    """
    device = next(model.parameters()).device
    if method == "ew":
        return weighted_loss_step(model, optimizer, equal_weights, on_representation=False)
    if method == "famo":
        return weighted_loss_step(model, optimizer, FAMO(num_tasks, device=device),
                                  on_representation=False)
    if method == "mgda_ub":
        return weighted_loss_step(model, optimizer, (aggregator or tjd.MGDA()).weighting,
                                  on_representation=True)
    defaults: dict[str, Callable[[], Aggregate]] = {
        "pcgrad": tjd.PCGrad,
        "mgda": tjd.MGDA,
        "cagrad": lambda: tjd.CAGrad(c=CAGRAD_C),
        "nash_mtl": lambda: tjd.NashMTL(n_tasks=num_tasks),
        "upgrad": tjd.UPGrad,
    }
    if method not in defaults:
        raise ValueError(f"unknown method {method!r}; known: {METHODS}")
    aggregate = aggregator or defaults[method]()
    if method == "cagrad":
        aggregate = scaled(aggregate, 1.0 / (1.0 + CAGRAD_C ** 2))
    return jacobian_step(model, optimizer, aggregate)
