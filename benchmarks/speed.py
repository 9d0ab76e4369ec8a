"""The speed suite: every mtl_jax-against-PyTorch comparison, side by side in one process.

Five sections (``--sections``, default all), each reusing the benchmark that
owns the comparison:

- ``hard``: one hard-sharing step (T = 8, batch 256) on the seed's ConvNet and an
  MLP 512-512, mtl_jax against PyTorch eager and ``torch.compile``
  (``step_speed.measure``).
- ``methods``: EW and the per-task-gradient methods PCGrad, MGDA, CAGrad, Nash-MTL
  and UPGrad at T = 2, 8, 40 on the MLP and ConvNet trunks of
  ``aggregator_speed``, mtl_jax against the LibMTL-style PyTorch loop
  (``aggregator_speed.measure``).
- ``ensembles``: N = 1, 8, 32, 128 members of one hard-sharing model (T = 8,
  batch 64, every member on the same batch, Adam(1e-3)) stepped together:
  mtl_jax's ``ensemble.step`` with the ``vmap`` lowering and with ``auto``'s
  choice, a PyTorch loop over N models and optimizers, and ``torch.func``
  (``stack_module_state``, ``vmap`` of ``grad`` over ``functional_call``,
  ``torch.optim.Adam`` over the stacked parameters: Adam is elementwise, so
  that is every member's own Adam). On the MLP trunk of ``ensemble_lowering``
  (512-512 on 32x32x3 images); on the ConvNet only up to
  :attr:`Plan.cpu_conv_members` on a CPU.
- ``scaling``: the ensemble step of mtl_jax (``vmap``) and ``torch.func`` as T,
  N and the batch grow, one axis at a time from a base point: median step time
  and peak memory (mtl_jax: XLA's buffer assignment of the compiled step,
  ``aggregator_speed.xla_peak_bytes``; torch: ``torch.cuda.max_memory_allocated``,
  on a GPU only), plotted on log axes in ``speed_<backend>_scaling.png``.
- ``flops``: FLOPs per step from XLA's cost analysis over the step time, for the
  hard-sharing steps and the largest ensemble that fits, in float32 and with
  bfloat16 compute (:class:`mtl_jax.precision.MixedPrecision`), against the device's measured
  matmul peak (a large ``jnp.dot``) and, for a roofline, its copy bandwidth.

Every mtl_jax and PyTorch pair starts from the same weights (the losses at step 1
agree; ``tests/test_benchmarks.py`` checks that the three ensemble
implementations compute the same update). The Markdown page lists the targets of
issue 5 as met, missed or not measured, row by row. ``--device auto`` takes the
GPU when JAX and torch both see one; otherwise every section runs on the CPU and
the page says so. On a GPU both frameworks use TF32 for float32 matmuls (JAX's
default precision; ``torch.set_float32_matmul_precision("high")``) and JAX does
not preallocate memory (``XLA_PYTHON_CLIENT_PREALLOCATE=false``), so that
torch can allocate too. ``mtl_jax.ensemble``'s ``auto`` reads JAX's default
backend, so ``--device cpu`` on a GPU machine wants ``JAX_PLATFORMS=cpu`` too.
Results: ``<out>/speed_<backend>.{json,md}`` and ``speed_<backend>_scaling.png``
(``speed_<backend>_quick*`` with ``--quick``).

    python benchmarks/speed.py [--quick] [--device auto|cpu|gpu]
        [--sections hard,methods,ensembles,scaling,flops] [--out benchmarks/results]
        [--repeats 5] [--warmup 2] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import gc
import os
import pathlib
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import aggregator_speed
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
import step_speed
import torch
import torch_models
from aggregator_speed import Sizes, ms_cell, pair_cell, succeeded, xla_peak_bytes
from matplotlib.ticker import NullLocator
from step_speed import (
    Runner,
    jax_step_runner,
    time_steps,
    torch_step_runner,
    write_report,
)

import mtl_jax
from mtl_jax.plots import save_png
from mtl_jax.precision import MixedPrecision

RESULTS = pathlib.Path(__file__).parent / "results"
SECTIONS = ("hard", "methods", "ensembles", "scaling", "flops")
GRADIENT_METHODS = ("pcgrad", "mgda", "cagrad", "nash_mtl", "upgrad")
ENSEMBLE_IMPLEMENTATIONS = ("mtl_jax vmap", "mtl_jax auto", "PyTorch loop", "torch.func")
SCALING_IMPLEMENTATIONS = ("mtl_jax vmap", "torch.func")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
MLP_IMAGES = Sizes(batch=64, in_features=int(np.prod(step_speed.IMAGE_SHAPE)),
                   widths=step_speed.MLP_WIDTHS)  # step_speed's and ensemble_lowering's MLP
FIT_FRACTION = 0.9  # of the GPU's memory that XLA's estimate of a step may take
MAX_MEMBERS = 1 << 14
TorchStep = Callable[[torch.Tensor, Sequence[torch.Tensor]], torch.Tensor]
TorchOptimizer = Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer]


@dataclasses.dataclass(frozen=True)
class Plan:
    """The sizes every section runs at: :data:`FULL`, or :data:`QUICK` (``--quick``)."""

    hard_tasks: int
    hard_batch: int
    method_tasks: tuple[int, ...]
    method_sizes: Mapping[str, Sizes]  # trunk name -> model and batch
    ensemble_tasks: int
    ensemble_sizes: Mapping[str, Sizes]
    members: tuple[int, ...]
    cpu_conv_members: tuple[int, ...]  # the vmapped ConvNet is slow on XLA:CPU
    scaling_base: Mapping[str, int]  # tasks, members, batch
    scaling_axes: Mapping[str, tuple[int, ...]]
    flops_sizes: Mapping[str, Sizes]  # the hard-sharing steps of the FLOP section
    matmul_size: Mapping[str, int]  # per platform: n of the n x n peak matmul
    bandwidth_mib: Mapping[str, int]  # per platform: the array the bandwidth is timed on

    def ensemble_members(self, trunk: str, platform: str) -> tuple[int, ...]:
        """The ensemble sizes to run for ``trunk`` on ``platform``."""
        return self.cpu_conv_members if (trunk, platform) == ("conv", "cpu") else self.members


FULL = Plan(
    hard_tasks=8, hard_batch=256,
    method_tasks=(2, 8, 40), method_sizes=aggregator_speed.FULL,
    ensemble_tasks=8,
    ensemble_sizes={"mlp": MLP_IMAGES, "conv": Sizes(batch=64, trunk="conv")},
    members=(1, 8, 32, 128), cpu_conv_members=(1, 8, 32),
    scaling_base={"tasks": 8, "members": 8, "batch": 64},
    scaling_axes={"tasks": (2, 8, 32, 128), "members": (1, 8, 32, 128),
                  "batch": (16, 64, 256, 1024)},
    flops_sizes={"mlp": dataclasses.replace(MLP_IMAGES, batch=256),
                 "conv": Sizes(batch=256, trunk="conv")},
    matmul_size={"cpu": 2048, "gpu": 8192}, bandwidth_mib={"cpu": 256, "gpu": 1024},
)
QUICK = Plan(
    hard_tasks=2, hard_batch=4,
    method_tasks=(2,), method_sizes={"mlp": aggregator_speed.QUICK},
    ensemble_tasks=2, ensemble_sizes={"mlp": aggregator_speed.QUICK},
    members=(1, 2), cpu_conv_members=(1, 2),
    scaling_base={"tasks": 2, "members": 2, "batch": 8},
    scaling_axes={"tasks": (2,), "members": (1, 2), "batch": (8,)},  # two points
    flops_sizes={"mlp": aggregator_speed.QUICK},
    matmul_size={"cpu": 128, "gpu": 128}, bandwidth_mib={"cpu": 1, "gpu": 1},
)
TRUNK_NAMES = {"mlp": "MLP", "conv": "seed ConvNet"}


def describe_model(sizes: Sizes) -> str:
    """``MLP 3072-512-512`` or ``seed ConvNet``."""
    if sizes.trunk == "conv":
        return TRUNK_NAMES["conv"]
    return f"MLP {'-'.join(map(str, (sizes.in_features, *sizes.widths)))}"


def describe_sizes(sizes: Sizes) -> str:
    """``MLP 3072-512-512, batch 64`` or ``seed ConvNet, batch 64``."""
    return f"{describe_model(sizes)}, batch {sizes.batch}"


def as_sizes(sizes: Mapping[str, Any]) -> Sizes:
    """A :class:`Sizes` from its JSON form (as the report stores it)."""
    return Sizes(**{**sizes, "widths": tuple(sizes["widths"])})


# ----------------------------------------------------------------------------- shared pieces

def xla_flops(compiled: Any) -> float:
    """FLOPs of one call of a compiled program, from XLA's cost analysis (a dot of
    ``[m, k]`` by ``[k, n]`` counts ``2 m n k``; elementwise ops one per element)."""
    return float(_cost_analysis(compiled)["flops"])


def xla_bytes_accessed(compiled: Any) -> float:
    """Bytes XLA's cost model expects one call to read and write."""
    return float(_cost_analysis(compiled)["bytes accessed"])


def _cost_analysis(compiled: Any) -> dict[str, float]:
    analysis = compiled.cost_analysis()
    return analysis[0] if isinstance(analysis, list) else analysis  # a list in older JAX


def jax_setup(sizes: Sizes, x: np.ndarray, labels: np.ndarray, device: jax.Device,
              members: int | None = None, *, optimizer: optax.GradientTransformation | None = None,
              dtype: Any = jnp.float32) -> tuple[Callable, Callable[[], Any], Any]:
    """``(train_step, init, batch)`` for ``aggregator_speed.flax_model(sizes, T)`` on
    ``device``: the plain hard-sharing step (sum of the losses, no aggregator), a function
    building its initial state (one member from key 0, or ``members`` stacked ones from
    its split, committed to ``device``), and the batch. ``dtype`` other than float32
    computes through :class:`MixedPrecision`; the optimizer defaults to Adam(1e-3)."""
    model, tasks = aggregator_speed.flax_model(sizes, len(labels))
    if dtype != jnp.float32:
        model = MixedPrecision(model, dtype)
    optimizer = optimizer or optax.adam(1e-3)
    names = aggregator_speed.task_names(len(labels))
    batch = jax.device_put({"x": x, "y": dict(zip(names, labels))}, device)
    key = jax.random.key(0)

    def init() -> Any:
        with jax.default_device(device):
            state = (mtl_jax.init_state(model, tasks, key, batch, optimizer) if members is None
                     else mtl_jax.ensemble.init(model, tasks, jax.random.split(key, members),
                                                batch, optimizer))
        # Committed like the step's outputs, so that one compilation serves every call.
        return jax.device_put(state, device)

    return mtl_jax.make_train_step(model, tasks, optimizer), init, batch


def jitted(train_step: Callable, members: int | None, lowering: str = "vmap") -> Callable:
    """The step compiled for one member, or lifted over ``members`` by ``lowering``; it
    donates the state."""
    if members is None:
        return jax.jit(train_step, donate_argnums=0)
    return mtl_jax.ensemble.step(train_step, lowering)


def compiled_runner(program: Callable, state: Any, batch: Any) -> tuple[Runner, dict[str, Any]]:
    """Compile ``program`` ahead of time; its runner and facts: compilation seconds, XLA's
    peak memory (MiB) and GFLOPs per call."""
    start = time.perf_counter()
    compiled = program.lower(state, batch).compile()
    facts = {"compile_s": time.perf_counter() - start,
             "peak_mib": xla_peak_bytes(compiled) / 2**20, "gflop": xla_flops(compiled) / 1e9,
             "gbytes_accessed": xla_bytes_accessed(compiled) / 1e9}
    return jax_step_runner(compiled, state, batch), facts


def waited(fn: Callable, *args: Any) -> Runner:
    """A runner that calls ``fn(*args)`` and waits for it; it has no loss."""

    def run() -> None:
        jax.block_until_ready(fn(*args))

    return run


def release(device: torch.device) -> None:
    """Free what the last measurement left: Python garbage, torch's cached GPU blocks."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def attempt(measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``measure()``, or ``{"error": ...}``: a failure (no C++ compiler for
    torch.compile, out of memory) is a result to report."""
    try:
        return measure()
    except Exception as error:  # noqa: BLE001
        return {"error": f"{type(error).__name__}: {error}"[:2000]}


# ----------------------------------------------------------------------------- ensembles

class _MultitaskLoss(torch.nn.Module):
    """``torch_models.multitask_loss`` of a model as a module's ``forward``, for
    ``torch.func.functional_call``."""

    def __init__(self, model: torch_models.MultiTaskModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, labels: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch_models.multitask_loss(self.model, x, labels)


def torch_members(sizes: Sizes, variables: Any, device: torch.device
                  ) -> list[torch_models.MultiTaskModel]:
    """One torch model per member of mtl_jax's stacked ``variables``, holding its weights."""
    size = len(jax.tree_util.tree_leaves(variables)[0])
    return [aggregator_speed.torch_model(sizes, mtl_jax.ensemble.member(variables, i), device)
            for i in range(size)]


def adam(params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
    """``torch.optim.Adam(lr=1e-3)``: optax.adam(1e-3)'s twin."""
    return torch.optim.Adam(params, lr=1e-3)


def torch_loop_step(models: Sequence[torch_models.MultiTaskModel],
                    optimizer: TorchOptimizer = adam) -> TorchStep:
    """``step(x, labels) -> [N] losses``: each model's own train step, one after another."""
    steps = [torch_models.make_train_step(model, optimizer(model.parameters()))
             for model in models]

    def step(x: torch.Tensor, labels: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack([member_step(x, labels) for member_step in steps])

    return step


def torch_func_step(models: Sequence[torch_models.MultiTaskModel],
                    optimizer: TorchOptimizer = adam
                    ) -> tuple[TorchStep, dict[str, torch.Tensor]]:
    """``step(x, labels) -> [N] losses`` of the models stacked by ``torch.func``, and the
    stacked parameters it updates in place (``model.<parameter name>``, member axis 0).

    The per-member gradients are ``vmap(grad(functional_call))``; the ``optimizer`` runs
    over the stacked tensors, which for an elementwise one (Adam, SGD) is each member's.
    """
    losses = [_MultitaskLoss(model) for model in models]
    params, _ = torch.func.stack_module_state(losses)  # no buffers in these models
    template = copy.deepcopy(losses[0]).to("meta")

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, labels: Sequence[torch.Tensor]
             ) -> torch.Tensor:
        return torch.func.functional_call(template, p, (x, labels))

    grads_and_losses = torch.func.vmap(torch.func.grad_and_value(loss), in_dims=(0, None, None))
    opt = optimizer(params.values())

    def step(x: torch.Tensor, labels: Sequence[torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():  # grad differentiates inside; no outer graph
            grads, values = grads_and_losses(params, x, labels)
        for name, param in params.items():
            param.grad = grads[name]
        opt.step()
        return values

    return step, params


def measure_ensemble(sizes: Sizes, num_tasks: int, members: int,
                     devices: tuple[jax.Device, torch.device], timing: Mapping[str, int],
                     implementations: Sequence[str] = ENSEMBLE_IMPLEMENTATIONS
                     ) -> list[dict[str, Any]]:
    """One row per implementation (of :data:`ENSEMBLE_IMPLEMENTATIONS`) for ``members``
    members of ``aggregator_speed.flax_model(sizes, num_tasks)`` on one shared batch.

    Rows hold ``trunk``, ``tasks``, ``members``, ``batch``, ``implementation``,
    ``time_steps``' fields (the loss is the members' mean), mtl_jax's ``compile_s``,
    ``peak_mib`` (XLA's estimate), ``gflop`` and ``lowering``, torch's ``peak_mib`` on a
    GPU; or ``error``. ``auto`` is timed only where it does not choose ``vmap``.
    """
    jax_device, torch_device = devices
    x, labels = aggregator_speed.synthetic_data(sizes, num_tasks)
    train_step, init, batch = jax_setup(sizes, x, labels, jax_device, members)
    states = init()  # each mtl_jax run donates a copy of it
    variables = jax.device_get(states.params)
    auto = mtl_jax.ensemble.choose_lowering(train_step, states, batch)
    x_t, labels_t = aggregator_speed.torch_inputs(x, labels, torch_device)

    def copy_of_states() -> Any:
        return jax.tree_util.tree_map(jnp.copy, states)

    def mtl_jax_vmap() -> dict[str, Any]:
        run, facts = compiled_runner(jitted(train_step, members), copy_of_states(), batch)
        return facts | time_steps(run, **timing)

    def mtl_jax_auto() -> dict[str, Any]:  # compiles in its first (untimed) step
        run = jax_step_runner(jitted(train_step, members, auto), copy_of_states(), batch)
        return time_steps(run, **timing)

    def torch_measurement(build: Callable[[], TorchStep]) -> Callable[[], dict[str, Any]]:
        def measure() -> dict[str, Any]:
            step = build()
            if torch_device.type == "cuda":  # the peak of the steps, parameters included
                torch.cuda.reset_peak_memory_stats(torch_device)
            row = time_steps(torch_step_runner(step, x_t, labels_t, torch_device), **timing)
            if torch_device.type == "cuda":
                row["peak_mib"] = torch.cuda.max_memory_allocated(torch_device) / 2**20
            return row
        return measure

    measurements = {
        "mtl_jax vmap": mtl_jax_vmap,
        "mtl_jax auto": mtl_jax_auto,
        "PyTorch loop": torch_measurement(
            lambda: torch_loop_step(torch_members(sizes, variables, torch_device))),
        "torch.func": torch_measurement(
            lambda: torch_func_step(torch_members(sizes, variables, torch_device))[0]),
    }
    common = {"trunk": sizes.trunk, "tasks": num_tasks, "members": members,
              "batch": sizes.batch}
    rows: dict[str, dict[str, Any]] = {}
    for name in implementations:
        row = {**common, "implementation": name}
        if name == "mtl_jax auto":
            row["lowering"] = auto
        if name == "mtl_jax auto" and auto == "vmap" and "mtl_jax vmap" in rows:
            row |= {k: v for k, v in rows["mtl_jax vmap"].items() if k not in row}
            row["same_as"] = "mtl_jax vmap"
        else:
            row |= attempt(measurements[name])
        rows[name] = row
        print(describe(row), flush=True)
    release(torch_device)
    return list(rows.values())


def describe(row: Mapping[str, Any]) -> str:
    """One progress line for an ensemble or scaling row."""
    head = (f"{TRUNK_NAMES[row['trunk']]:>12} T={row['tasks']:>3} N={row['members']:>4} "
            f"B={row['batch']:>4} | {row['implementation']:<12} | ")
    if "error" in row:
        return head + f"failed: {row['error'][:200]}"
    return head + (f"{row['median_ms']:10.2f} ms/step (IQR {row['iqr_ms']:.2f}) | "
                   f"loss {row['loss_at_step_1']:.4f}")


# ----------------------------------------------------------------------------- sections

def run_hard(plan: Plan, devices: tuple[jax.Device, torch.device],
             timing: Mapping[str, int]) -> dict[str, Any]:
    """``step_speed.measure`` for both of its trunks."""
    return {"tasks": plan.hard_tasks, "batch": plan.hard_batch,
            "rows": [row for trunk in step_speed.TRUNKS
                     for row in step_speed.measure(trunk, devices, tasks=plan.hard_tasks,
                                                   batch=plan.hard_batch, **timing)]}


def run_methods(plan: Plan, devices: tuple[jax.Device, torch.device],
                timing: Mapping[str, int]) -> dict[str, Any]:
    """``aggregator_speed.measure`` for EW and :data:`GRADIENT_METHODS`, per trunk and T."""
    jax_device, torch_device = devices
    rows = []
    for trunk, sizes in plan.method_sizes.items():
        for num_tasks in plan.method_tasks:
            for method in ("ew", *GRADIENT_METHODS):
                for row in aggregator_speed.measure(method, num_tasks, sizes,
                                                    torch_device=torch_device,
                                                    jax_device=jax_device, **timing):
                    print(f"{TRUNK_NAMES[trunk]:>12} | {aggregator_speed.describe(row)}",
                          flush=True)
                    rows.append({"trunk": trunk, **row})
    return {"sizes": {trunk: dataclasses.asdict(sizes)
                      for trunk, sizes in plan.method_sizes.items()}, "rows": rows}


def run_ensembles(plan: Plan, devices: tuple[jax.Device, torch.device],
                  timing: Mapping[str, int]) -> dict[str, Any]:
    """:func:`measure_ensemble` for every trunk and ensemble size of the plan."""
    platform = devices[0].platform
    members = {trunk: plan.ensemble_members(trunk, platform) for trunk in plan.ensemble_sizes}
    rows = [row for trunk, sizes in plan.ensemble_sizes.items() for n in members[trunk]
            for row in measure_ensemble(sizes, plan.ensemble_tasks, n, devices, timing)]
    return {"sizes": {trunk: dataclasses.asdict(sizes)
                      for trunk, sizes in plan.ensemble_sizes.items()},
            "tasks": plan.ensemble_tasks,
            "members": members, "rows": rows}


def run_scaling(plan: Plan, devices: tuple[jax.Device, torch.device],
                timing: Mapping[str, int]) -> dict[str, Any]:
    """mtl_jax (``vmap``) and ``torch.func`` ensemble steps along each axis of the plan,
    from its base point; a point on several axes is measured once."""
    measured: dict[tuple[int, int, int], list[dict[str, Any]]] = {}
    rows = []
    for axis, values in plan.scaling_axes.items():
        for value in values:
            point = {**plan.scaling_base, axis: value}
            key = (point["tasks"], point["members"], point["batch"])
            if key not in measured:
                sizes = dataclasses.replace(plan.ensemble_sizes["mlp"], batch=point["batch"])
                measured[key] = measure_ensemble(sizes, point["tasks"], point["members"],
                                                 devices, timing, SCALING_IMPLEMENTATIONS)
            rows += [{"axis": axis, "value": value, **row} for row in measured[key]]
    return {"sizes": dataclasses.asdict(plan.ensemble_sizes["mlp"]),
            "base": dict(plan.scaling_base), "rows": rows}


def matmul_peak(device: jax.Device, size: int, dtype: Any, timing: Mapping[str, int]
                ) -> dict[str, Any]:
    """The FLOP rate of a ``size`` x ``size`` ``jnp.dot`` in ``dtype`` (``2 size³`` FLOPs)."""
    a = jax.device_put(jnp.asarray(
        np.random.default_rng(0).standard_normal((size, size)), dtype), device)
    compiled = jax.jit(jnp.dot).lower(a, a).compile()
    row = time_steps(waited(compiled, a, a), **timing)
    return {"size": size, "median_ms": row["median_ms"],
            "flop_per_s": 2 * size**3 / (row["median_ms"] / 1e3)}


def memory_bandwidth(device: jax.Device, mib: int, timing: Mapping[str, int]) -> dict[str, Any]:
    """Bytes per second of ``x + 1`` over a float32 array of ``mib`` MiB (read and write)."""
    x = jax.device_put(jnp.zeros(mib * 2**20 // 4, jnp.float32), device)
    compiled = jax.jit(lambda v: v + 1).lower(x).compile()
    row = time_steps(waited(compiled, x), **timing)
    return {"mib": mib, "median_ms": row["median_ms"],
            "bytes_per_s": 2 * mib * 2**20 / (row["median_ms"] / 1e3)}


def largest_fitting_members(sizes: Sizes, num_tasks: int, start: int, device: jax.Device) -> int:
    """The largest ``N = start · 2^k`` whose vmapped ensemble step XLA expects to fit in
    :data:`FIT_FRACTION` of a GPU's memory; ``start`` elsewhere (on a CPU, time, not
    memory, bounds the run). Compiles only: nothing is allocated."""
    limit = (device.memory_stats() or {}).get("bytes_limit") if device.platform == "gpu" else None
    members = start
    while limit and 2 * members <= MAX_MEMBERS:
        x, labels = aggregator_speed.synthetic_data(sizes, num_tasks)
        train_step, init, batch = jax_setup(sizes, x, labels, device, 2 * members)
        compiled = jitted(train_step, 2 * members).lower(jax.eval_shape(init), batch).compile()
        if xla_peak_bytes(compiled) > FIT_FRACTION * limit:
            break
        members *= 2
    return members


def flop_rate(sizes: Sizes, num_tasks: int, members: int | None, device: jax.Device,
              dtype: Any, timing: Mapping[str, int]) -> dict[str, Any]:
    """:func:`compiled_runner`'s facts and ``time_steps``' fields for one step (an ensemble
    of ``members``, vmapped, or a single model), and its FLOP rate from XLA's count."""
    x, labels = aggregator_speed.synthetic_data(sizes, num_tasks)
    train_step, init, batch = jax_setup(sizes, x, labels, device, members, dtype=dtype)
    run, facts = compiled_runner(jitted(train_step, members), init(), batch)
    row = facts | time_steps(run, **timing)
    return row | {"flop_per_s": row["gflop"] * 1e9 / (row["median_ms"] / 1e3)}


def run_flops(plan: Plan, devices: tuple[jax.Device, torch.device],
              timing: Mapping[str, int]) -> dict[str, Any]:
    """Matmul peaks and bandwidth, then :func:`flop_rate` of the hard-sharing steps and of the
    largest ensemble that fits, in float32 and bfloat16 compute."""
    device = devices[0]
    peaks = {name: matmul_peak(device, plan.matmul_size[device.platform], dtype, timing)
             for name, dtype in COMPUTE_DTYPES.items()}
    bandwidth = memory_bandwidth(device, plan.bandwidth_mib[device.platform], timing)
    ensemble = plan.ensemble_sizes["mlp"]
    largest = largest_fitting_members(ensemble, plan.ensemble_tasks, max(plan.members), device)
    workloads = [(f"hard-sharing step, T={plan.hard_tasks}, {describe_sizes(sizes)}", sizes,
                  plan.hard_tasks, None) for sizes in plan.flops_sizes.values()]
    workloads.append((f"ensemble of {largest}, T={plan.ensemble_tasks}, "
                      f"{describe_sizes(ensemble)}", ensemble, plan.ensemble_tasks, largest))
    rows = []
    for workload, sizes, num_tasks, members in workloads:
        for compute, dtype in COMPUTE_DTYPES.items():
            row = {"workload": workload, "members": members, "compute": compute}
            row |= attempt(lambda s=sizes, t=num_tasks, m=members, d=dtype:
                           flop_rate(s, t, m, device, d, timing))
            if "error" not in row:
                row |= roofline(row, peaks[compute]["flop_per_s"], bandwidth["bytes_per_s"])
            print(f"{workload} | {compute} | " + (
                row["error"][:200] if "error" in row else
                f"{row['median_ms']:.2f} ms, {row['flop_per_s'] / 1e9:.1f} GFLOP/s, "
                f"{100 * row['fraction_of_peak']:.1f}% of the matmul peak"), flush=True)
            rows.append(row)
            release(devices[1])
    return {"matmul_peak": peaks, "bandwidth": bandwidth, "largest_members": largest,
            "rows": rows}


def roofline(row: Mapping[str, Any], peak: float, bandwidth: float) -> dict[str, float]:
    """The achieved fraction of the matmul ``peak``, XLA's arithmetic intensity (FLOPs per
    byte accessed) and the roofline bound ``min(1, intensity · bandwidth / peak)``."""
    intensity = row["gflop"] / row["gbytes_accessed"]
    return {"fraction_of_peak": row["flop_per_s"] / peak, "flop_per_byte": intensity,
            "roofline_fraction": min(1.0, intensity * bandwidth / peak)}


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "hard": run_hard, "methods": run_methods, "ensembles": run_ensembles,
    "scaling": run_scaling, "flops": run_flops}


# ----------------------------------------------------------------------------- targets

@dataclasses.dataclass(frozen=True)
class Target:
    """One target of issue 5: ``ratio ≥ threshold`` for every subject ``measure`` finds in
    its section (on ``platform`` only)."""

    platform: str
    section: str
    text: str
    threshold: float
    measure: Callable[[dict[str, Any]], list[tuple[str, float | None, str]]]
    unit: str = "×"  # "×": a speed-up; "%": a fraction shown in percent


def _speedup(theirs: Mapping[str, Any] | None, ours: Mapping[str, Any] | None) -> float | None:
    """``theirs`` median over ``ours`` (above 1: ``ours`` is faster); None if either failed."""
    if not (succeeded(theirs) and succeeded(ours)):
        return None
    return theirs["median_ms"] / ours["median_ms"]


def _hard(framework: str, mlp_only: bool):
    """mtl_jax's step against ``framework`` (a key of ``step_speed.FRAMEWORKS``)."""
    def measure(section: dict[str, Any]) -> list[tuple[str, float | None, str]]:
        rows = {(r["model"], r["framework"]): r for r in section["rows"]}
        return [(model, _speedup(rows.get((model, step_speed.FRAMEWORKS[framework])), row), "")
                for (model, name), row in rows.items()
                if name == "mtl_jax" and (model.startswith("MLP") or not mlp_only)]
    return measure


def _methods(mlp_only: bool):
    """mtl_jax against the PyTorch loop for every method but EW, trunk and T."""
    def measure(section: dict[str, Any]) -> list[tuple[str, float | None, str]]:
        rows = {(r["trunk"], r["method"], r["tasks"], r["framework"]): r
                for r in section["rows"]}
        return [(f"{TRUNK_NAMES[trunk]}, {method}, T={tasks}",
                 _speedup(rows.get((trunk, method, tasks, "PyTorch")), row), "")
                for (trunk, method, tasks, framework), row in rows.items()
                if framework == "mtl_jax" and method != "EW"
                and (trunk == "mlp" or not mlp_only)]
    return measure


def _ensembles(against: str, members: int | None, mlp_only: bool):
    """mtl_jax's ``auto`` against ``against`` at ``members`` (None: every N)."""
    def measure(section: dict[str, Any]) -> list[tuple[str, float | None, str]]:
        rows = {(r["trunk"], r["members"], r["implementation"]): r for r in section["rows"]}
        return [(f"{TRUNK_NAMES[trunk]}, N={n}", _speedup(rows.get((trunk, n, against)), row),
                 "")
                for (trunk, n, name), row in rows.items()
                if name == "mtl_jax auto" and members in (None, n)
                and (trunk == "mlp" or not mlp_only)]
    return measure


def _largest_ensemble_flops(section: dict[str, Any]) -> list[tuple[str, float | None, str]]:
    """The largest ensemble's fraction of the matmul peak, per compute dtype."""
    return [(f"{r['workload']}, {r['compute']}", r.get("fraction_of_peak"), _roofline_note(r))
            for r in section["rows"] if r["members"] is not None]


def _roofline_note(row: Mapping[str, Any]) -> str:
    if "error" in row:
        return ""
    return (f"XLA's cost model: {row['flop_per_byte']:.1f} FLOP/byte, so at the measured copy "
            f"bandwidth the step can reach at most {100 * row['roofline_fraction']:.0f}% of "
            "the matmul peak")


TARGETS = (
    Target("gpu", "hard", "hard-sharing step ≥ 5× PyTorch eager", 5, _hard("eager", False)),
    Target("gpu", "hard", "hard-sharing step ≥ 5× torch.compile", 5, _hard("compile", False)),
    Target("gpu", "methods", "gradient methods ≥ 5× the PyTorch loop", 5, _methods(False)),
    Target("gpu", "ensembles", "ensemble of 32 ≥ 3× torch.func", 3,
           _ensembles("torch.func", 32, False)),
    Target("gpu", "flops", "largest ensemble that fits ≥ 25% of the measured matmul peak",
           0.25, _largest_ensemble_flops, unit="%"),
    Target("cpu", "hard", "MLP hard-sharing step no slower than PyTorch eager", 1,
           _hard("eager", True)),
    Target("cpu", "hard", "MLP hard-sharing step no slower than torch.compile", 1,
           _hard("compile", True)),
    Target("cpu", "methods", "MLP gradient methods no slower than the PyTorch loop", 1,
           _methods(True)),
    Target("cpu", "ensembles", "MLP ensembles no slower than the PyTorch loop", 1,
           _ensembles("PyTorch loop", None, True)),
    Target("cpu", "ensembles", "MLP ensembles no slower than torch.func", 1,
           _ensembles("torch.func", None, True)),
)
UNPROFILED = "unprofiled"


def evaluate_targets(sections: Mapping[str, dict[str, Any]], platform: str
                     ) -> list[dict[str, Any]]:
    """One line per target and subject: ``status`` met, missed or not measured, and for a
    miss what limits it (``unprofiled`` where no profile says). A target of another
    platform, or of a section not run, is one ``not measured`` line."""
    lines = []
    for target in TARGETS:
        head = {"platform": target.platform, "section": target.section,
                "target": target.text, "threshold": target.threshold, "unit": target.unit}
        if target.platform != platform:
            lines.append(head | {"subject": "all", "status": "not measured",
                                 "note": f"a {target.platform.upper()} target; this run is on "
                                         f"the {platform.upper()}"})
            continue
        if target.section not in sections:
            lines.append(head | {"subject": "all", "status": "not measured",
                                 "note": f"section {target.section!r} not run"})
            continue
        measured = target.measure(sections[target.section])
        if not measured:
            lines.append(head | {"subject": "all", "status": "not measured",
                                 "note": "not among the sizes of this run"})
        for subject, value, note in measured:
            if value is None:
                lines.append(head | {"subject": subject, "status": "not measured",
                                     "note": "a measurement failed (see the section)"})
            elif value >= target.threshold:
                lines.append(head | {"subject": subject, "value": value, "status": "met"})
            else:
                lines.append(head | {"subject": subject, "value": value, "status": "missed",
                                     "note": f"{UNPROFILED}; {note}" if note else UNPROFILED})
    return lines


# ----------------------------------------------------------------------------- report

def markdown(report: Mapping[str, Any]) -> str:
    """The report as one Markdown page: setup, targets, then one part per section run."""
    sections = report["sections"]
    page = [*_header(report), "", "## Targets", "", *_targets_table(report["targets"])]
    parts = {"hard": _hard_part, "methods": _methods_part, "ensembles": _ensembles_part,
             "scaling": _scaling_part, "flops": _flops_part}
    for name in SECTIONS:
        if name in sections:
            page += ["", *parts[name](sections[name], report)]
    if report["backend"] == "cpu":
        page += ["", *_cpu_limits()]
    return "\n".join(page) + "\n"


def _header(report: Mapping[str, Any]) -> list[str]:
    m, cfg = report["machine"], report["config"]
    threads = m["threads"]
    on_gpu = report["backend"] == "gpu"
    return [
        f"# Speed suite on {report['backend']}: mtl_jax vs PyTorch", "",
        f"`{report['command']}`", "",
        f"- Date: {report['date']}",
        f"- Machine: {m['cpu']}, nproc {m['nproc']} ({m['cores']} usable); JAX device: "
        f"{m['jax_device']}; torch device: {m['torch_device']}",
        "- Device: " + ("GPU: every section ran on it; float32 matmuls use TF32 in both "
                        "frameworks (JAX's default precision, "
                        "`torch.set_float32_matmul_precision('high')`)." if on_gpu else
                        "CPU. " + report["device_note"] + " Every section ran on the CPU, "
                        "so the GPU targets are not measured."),
        f"- Threads: torch {threads['torch']}, JAX {threads['jax']}, BLAS and OpenMP pools "
        f"{threads['blas_openmp']}; environment: "
        + ", ".join(f"{k}={v}" for k, v in m["env"].items()),
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- Sections run: {', '.join(cfg['sections'])}"
        + (" (`--quick`: tiny sizes, for tests; not a measurement)" if cfg["quick"] else ""),
        f"- Timing: {cfg['repeats']} timed steps after {cfg['warmup']} untimed ones (the "
        "first untimed step compiles, except where compilation is reported apart); "
        "median ± interquartile range (Q3 − Q1) in ms. A ratio X / mtl_jax above 1: "
        "mtl_jax is faster. Every pair starts from the same weights: the losses at "
        "step 1 agree.",
    ]


def _targets_table(targets: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["| device | target | subject | measured | status | what limits it |",
             "|---|---|---|---|---|---|"]
    for t in targets:
        value = "—" if "value" not in t else (
            f"{100 * t['value']:.1f}%" if t["unit"] == "%" else f"{t['value']:.2f}×")
        lines.append(f"| {t['platform'].upper()} | {t['target']} | {t['subject']} | {value} | "
                     f"**{t['status']}** | {t.get('note', '')} |")
    return lines


def _hard_part(section: Mapping[str, Any], report: Mapping[str, Any]) -> list[str]:
    return ["## Hard-sharing step (`step_speed.py`)", "",
            f"T = {section['tasks']} tasks of {step_speed.NUM_CLASSES} classes, batch "
            f"{section['batch']}, 32×32×3 Gaussian images; forward, sum of the T "
            "cross-entropies, backward, Adam(1e-3). PyTorch: the seed's model "
            "(`torch_models.py`), encoder once and a loop over the heads; torch.compile "
            "(mode \"default\") compiles the loss, forward and backward, the optimizer stays "
            "eager. mtl_jax speed-up: the PyTorch median over mtl_jax's.", "",
            *step_speed.table(section["rows"])]


def _methods_part(section: Mapping[str, Any], report: Mapping[str, Any]) -> list[str]:
    lines = ["## Per-task-gradient methods (`aggregator_speed.py`)", "",
             f"PyTorch: {aggregator_speed.TORCH_DESCRIPTION}, `torch_methods.py`; one forward "
             "and T backward passes into a [T, |θ_shared|] matrix, TorchJD's solver, Adam. "
             "mtl_jax: `make_train_step(..., aggregator=agg, wrt=wrt)`, one XLA program. EW "
             "is the reference of the \"in EW steps\" column: (1 + 2T)/3 is the floor of a "
             "full-Jacobian method (one forward, T backward passes)."]
    for trunk, sizes in section["sizes"].items():
        for num_tasks in sorted({r["tasks"] for r in section["rows"] if r["trunk"] == trunk}):
            rows = [r for r in section["rows"] if r["trunk"] == trunk and r["tasks"] == num_tasks]
            lines += ["", f"### {describe_sizes(as_sizes(sizes))}, T = {num_tasks}", "",
                      *aggregator_speed.table(rows, with_memory=report["backend"] == "gpu")]
    errors = [f"- {r['trunk']}, T={r['tasks']}, {r['method']}, {r['framework']}: "
              f"`{r['error']}`" for r in section["rows"] if "error" in r]
    return lines + (["", "Failures:", "", *errors] if errors else [])


def _ensembles_part(section: Mapping[str, Any], report: Mapping[str, Any]) -> list[str]:
    lines = ["## Ensembles", "",
             f"N members of one hard-sharing model (T = {section['tasks']}), each on the same "
             "batch, Adam(1e-3), one step of all. mtl_jax: `mtl_jax.ensemble.step` with the "
             "`vmap` lowering (compiled ahead of time: compile s, XLA peak MiB) and with "
             "`auto`'s choice (where it is `vmap`, the same program and timing). PyTorch loop: "
             "N models and `torch.optim.Adam`s stepped one after another. torch.func: "
             "`stack_module_state`, `vmap(grad_and_value(functional_call))`, "
             "`torch.optim.Adam` over the stacked parameters. Ratios: X / mtl_jax auto."]
    if report["backend"] == "cpu" and "conv" in section["members"]:
        lines[-1] += (" The seed ConvNet ran at N = "
                      f"{', '.join(map(str, section['members']['conv']))} only, for CPU time: "
                      "its vmapped step is slow on XLA:CPU (`ensemble_lowering_cpu.md`).")
    for trunk, sizes in section["sizes"].items():
        rows = [r for r in section["rows"] if r["trunk"] == trunk]
        lines += ["", f"### {describe_sizes(as_sizes(sizes))}; N = "
                  f"{', '.join(map(str, section['members'][trunk]))}", "",
                  "| N | mtl_jax vmap ms | mtl_jax auto ms (lowering) | PyTorch loop ms | "
                  "torch.func ms | loop / auto | torch.func / auto | compile s (vmap) | "
                  "XLA peak MiB (vmap) | loss at step 1 (vmap / auto / loop / torch.func) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for n in section["members"][trunk]:
            by = {r["implementation"]: r for r in rows if r["members"] == n}
            vmap, auto = by.get("mtl_jax vmap"), by.get("mtl_jax auto")
            loop, func = by.get("PyTorch loop"), by.get("torch.func")
            lines.append(
                f"| {n} | {ms_cell(vmap)} | {ms_cell(auto)} ({auto and auto['lowering']}) | "
                f"{ms_cell(loop)} | {ms_cell(func)} | {_ratio(loop, auto)} | "
                f"{_ratio(func, auto)} | {pair_cell([vmap], 'compile_s', '.1f')} | "
                f"{pair_cell([vmap], 'peak_mib', '.0f')} | "
                f"{pair_cell([vmap, auto, loop, func], 'loss_at_step_1', '.4f')} |")
    return lines + _failures(section["rows"])


def _ratio(theirs: Mapping[str, Any] | None, ours: Mapping[str, Any] | None) -> str:
    value = _speedup(theirs, ours)
    return "—" if value is None else f"{value:.2f}×"


def _failures(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    errors = [f"- {TRUNK_NAMES[r['trunk']]}, T={r['tasks']}, N={r['members']}, "
              f"batch {r['batch']}, {r['implementation']}: `{r['error']}`"
              for r in rows if "error" in r]
    return ["", "Failures:", "", *errors] if errors else []


def _scaling_part(section: Mapping[str, Any], report: Mapping[str, Any]) -> list[str]:
    base = section["base"]
    on_gpu = report["backend"] == "gpu"
    lines = ["## Scaling", "",
             f"The ensemble step of {describe_model(as_sizes(section['sizes']))} "
             f"(mtl_jax `vmap`, torch.func) as one of T, N and the batch grows from T = "
             f"{base['tasks']}, N = {base['members']}, batch {base['batch']}. Peak memory: "
             "mtl_jax from XLA's buffer assignment of the compiled step (arguments + outputs "
             "+ temporaries − donated); torch.func " + (
                 "`torch.cuda.max_memory_allocated` over its steps (parameters included)."
                 if on_gpu else "not measured (CPU)."), "",
             f"![step time and peak memory against T, N and the batch]({report['plot']})"]
    for axis in dict.fromkeys(r["axis"] for r in section["rows"]):
        lines += ["", f"### {axis}", "",
                  f"| {axis} | mtl_jax ms | torch.func ms | torch.func / mtl_jax | "
                  "mtl_jax peak MiB | torch.func peak MiB |", "|---|---|---|---|---|---|"]
        for value in dict.fromkeys(r["value"] for r in section["rows"] if r["axis"] == axis):
            by = {r["implementation"]: r for r in section["rows"]
                  if r["axis"] == axis and r["value"] == value}
            ours, func = by.get("mtl_jax vmap"), by.get("torch.func")
            torch_peak = pair_cell([func], "peak_mib", ".0f") if on_gpu else "not measured"
            lines.append(f"| {value} | {ms_cell(ours)} | {ms_cell(func)} | {_ratio(func, ours)} "
                         f"| {pair_cell([ours], 'peak_mib', '.0f')} | {torch_peak} |")
    points = {(r["tasks"], r["members"], r["batch"], r["implementation"]): r
              for r in section["rows"]}  # a point on several axes, reported once
    return lines + _failures(points.values())


def _flops_part(section: Mapping[str, Any], report: Mapping[str, Any]) -> list[str]:
    peaks, bandwidth = section["matmul_peak"], section["bandwidth"]
    lines = ["## Achieved FLOP rate", "",
             "FLOPs per step: XLA's cost analysis of the compiled step "
             "(`compiled.cost_analysis()['flops']`). Matmul peak: the median time of an n×n "
             "`jnp.dot` in the dtype, 2n³ FLOPs. bfloat16 compute: parameters and inputs cast "
             "to bfloat16 inside the loss, outputs back to float32; parameters and optimizer "
             "state float32 (`mtl_jax.precision.MixedPrecision`). Roofline bound: XLA's FLOPs "
             "per byte accessed times the copy bandwidth (`x + 1` over "
             f"{bandwidth['mib']} MiB: {bandwidth['bytes_per_s'] / 1e9:.1f} GB/s), over the "
             "peak. The largest ensemble: " + (
                 "the largest N = 128·2^k whose step XLA expects to fit in "
                 f"{FIT_FRACTION:.0%} of the GPU's memory." if report["backend"] == "gpu" else
                 "the largest N of the ensembles section (on a CPU, time, not memory, bounds "
                 "it)."), "",
             "| matmul | n | ms | GFLOP/s |", "|---|---|---|---|"]
    for name, peak in peaks.items():
        lines.append(f"| {name} | {peak['size']} | {peak['median_ms']:.2f} | "
                     f"{peak['flop_per_s'] / 1e9:.1f} |")
    lines += ["", "| workload | compute | XLA GFLOP/step | ms/step | GFLOP/s | % of the matmul "
              "peak (same dtype) | FLOP/byte (XLA) | roofline bound, % of peak |",
              "|---|---|---|---|---|---|---|---|"]
    for r in section["rows"]:
        if "error" in r:
            lines.append(f"| {r['workload']} | {r['compute']} | failed: `{r['error'][:300]}` "
                         "| | | | | |")
            continue
        lines.append(f"| {r['workload']} | {r['compute']} | {r['gflop']:.3g} | "
                     f"{ms_cell(r)} | {r['flop_per_s'] / 1e9:.1f} | "
                     f"{100 * r['fraction_of_peak']:.1f}% | {r['flop_per_byte']:.1f} | "
                     f"{100 * r['roofline_fraction']:.0f}% |")
    return lines


def _cpu_limits() -> list[str]:
    return ["## What limits the seed ConvNet on this CPU (from the committed profiles)", "",
            "- XLA:CPU's convolution kernels: the kernel gradient of the second convolution "
            "takes 8× PyTorch's (oneDNN) time, the other convolution ops 1.5–3.3× "
            "(`conv_breakdown_cpu.md`).",
            "- Per-task gradients through the ConvNet are vmapped convolution gradients, "
            "i.e. batched kernel gradients, the same op (`aggregator_speed_cpu_conv.md`).",
            "- A vmapped ConvNet ensemble costs 27× one member at N = 8, a loop of the "
            "compiled step 9.8× (`ensemble_lowering_cpu.md`): hence `auto` = loop there."]


def plot_scaling(section: Mapping[str, Any], path: pathlib.Path) -> None:
    """Step time (top) and peak memory (bottom) against each scaling axis, log-log."""
    axes_names = list(dict.fromkeys(r["axis"] for r in section["rows"]))
    fig, axes = plt.subplots(2, len(axes_names), figsize=(4 * len(axes_names), 6.5),
                             squeeze=False)
    for col, axis in enumerate(axes_names):
        for name in SCALING_IMPLEMENTATIONS:
            rows = [r for r in section["rows"] if r["axis"] == axis
                    and r["implementation"] == name and "error" not in r]
            axes[0, col].plot([r["value"] for r in rows], [r["median_ms"] for r in rows],
                              marker="o", label=name)
            memory = [r for r in rows if "peak_mib" in r]
            if memory:
                axes[1, col].plot([r["value"] for r in memory], [r["peak_mib"] for r in memory],
                                  marker="o", label=name)
        axes[0, col].set(title=f"varying {axis}", ylabel="ms per step")
        axes[1, col].set(xlabel=axis, ylabel="peak MiB")
        values = sorted({r["value"] for r in section["rows"] if r["axis"] == axis})
        for ax in axes[:, col]:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(values, [str(v) for v in values])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


# ----------------------------------------------------------------------------- command line

def section_list(text: str) -> list[str]:
    """``"hard,flops"`` -> ``["hard", "flops"]``, each one of :data:`SECTIONS`."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(SECTIONS))
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"sections must be among {', '.join(SECTIONS)}; "
                                         f"got {text!r}")
    return [name for name in SECTIONS if name in names]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds), for tests")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                        help="auto: the GPU when JAX and torch both see one, else the CPU")
    parser.add_argument("--sections", type=section_list, default=list(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS, help="output directory")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps (5; quick 2)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first, at least 1 (2; quick 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: all usable cores, as XLA:CPU "
                             "uses)")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.warmup = args.warmup or (1 if args.quick else 2)
    if min(args.repeats, args.warmup) < 1:
        parser.error("--repeats and --warmup must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the sections, write ``speed_<backend>[_quick].{json,md}`` and the scaling plot,
    and return the report."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave memory to torch
    warnings.filterwarnings("ignore", message="You are solving a parameterized problem that "
                            "is not DPP")  # TorchJD's Nash-MTL, at every call
    devices = step_speed.resolve_devices(args.device)
    torch.set_num_threads(args.threads or step_speed.available_cores())
    if devices[1].type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32, as JAX's default precision
    plan = QUICK if args.quick else FULL
    timing = {"warmup": args.warmup, "repeats": args.repeats}
    backend = devices[0].platform
    stem = args.out / f"speed_{backend}{'_quick' if args.quick else ''}"
    report: dict[str, Any] = {
        "backend": backend,
        "device_note": "" if backend == "gpu" else (
            "`--device cpu` was asked for." if args.device == "cpu" else
            "No GPU is visible to both JAX and torch."),
        "command": shlex.join([*(f"{k}={os.environ[k]}" for k in aggregator_speed.THREAD_ENV
                                 if k in os.environ),
                               "python", "benchmarks/speed.py", *argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": {"quick": args.quick, "sections": args.sections, **timing,
                   "plan": dataclasses.asdict(plan)},
        "machine": aggregator_speed.machine(devices),
        "plot": f"{stem.name}_scaling.png",
        "sections": {},
    }
    for name in args.sections:
        print(f"== {name}", flush=True)
        report["sections"][name] = RUNNERS[name](plan, devices, timing)
        release(devices[1])
    report["targets"] = evaluate_targets(report["sections"], backend)
    if "scaling" in report["sections"]:
        stem.parent.mkdir(parents=True, exist_ok=True)
        plot_scaling(report["sections"]["scaling"], stem.parent / report["plot"])
    write_report(report, markdown(report), stem)
    return report


if __name__ == "__main__":
    main()
