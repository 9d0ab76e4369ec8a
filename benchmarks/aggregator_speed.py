"""Per-task-gradient methods: mtl_jax's compiled step against the LibMTL-style PyTorch loop.

For each method (EW, PCGrad, MGDA, MGDA-UB, CAGrad, Nash-MTL, UPGrad, FAMO) and
each number of tasks T, one training step of the same hard-sharing model is
timed in both frameworks, side by side in one process:

- mtl_jax: ``make_train_step(model, tasks, optax.adam(1e-3), aggregator=agg,
  wrt=wrt)`` with ``agg, wrt = mtl_jax.aggregators.get(method, T)``, compiled
  ahead of time: per-task gradients by vmapped VJPs and the method's solver,
  all inside one XLA program.
- PyTorch: ``benchmarks/torch_methods.py``, the loop of LibMTL (Lin & Zhang
  2023) with TorchJD 0.18's aggregators: one forward pass, ``T`` backward passes
  into a dense ``[T, |θ_shared|]`` matrix, the method's weighting (TorchJD's
  solvers run on the CPU), the shared gradient set, ``torch.optim.Adam``.

Model: the seed's ConvNet (``--trunk conv``, the default: ``ConvTrunk`` and
``torch_models.SharedEncoder``, 32x32x3 images, batch 64) or an MLP trunk of two
ReLU layers of 256 (``--trunk mlp``, 64-dim inputs, batch 256; ``--quick``: tiny),
and T linear 10-way classification heads (``HardSharing(..., StackedHeads)`` and
its torch twin from ``torch_models``), Adam(1e-3),
both from the same initial weights (so the losses before the first step
agree). Timing as ``step_speed.time_steps``: ``--warmup`` untimed steps (the
first one reported; mtl_jax's compilation is reported apart), then the median
and interquartile range of ``--repeats`` steps, each waited for. On a GPU
(JAX's default backend, torch on cuda) peak memory is recorded too. Results go
to ``<out>/aggregator_speed_<backend>_<trunk>.{json,md}``.

Threads: torch gets all usable cores (``--threads`` to change), as XLA:CPU and
OpenBLAS take by default; the thread-related environment variables are recorded
and prefixed to the recorded command. On a machine shared with other processes,
torch's OpenMP threads spin-wait and stall (seen: about 1 s per step on 2 busy
cores); ``OMP_WAIT_POLICY=PASSIVE`` avoids that.

    python benchmarks/aggregator_speed.py [--trunk conv|mlp] [--tasks 2,8,40] [--methods ...]
        [--repeats 10] [--warmup 2] [--quick] [--threads N] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import importlib.metadata
import os
import pathlib
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax
import threadpoolctl
import torch
import torch_methods
import torch_models
from step_speed import (
    IMAGE_SHAPE,
    Runner,
    available_cores,
    jax_step_runner,
    machine_info,
    time_steps,
    torch_step_runner,
    write_report,
)

import mtl_jax

RESULTS = pathlib.Path(__file__).parent / "results"
METHODS = {"ew": "EW", "pcgrad": "PCGrad", "mgda": "MGDA", "mgda_ub": "MGDA-UB",
           "cagrad": "CAGrad", "nash_mtl": "Nash-MTL", "upgrad": "UPGrad", "famo": "FAMO"}
FRAMEWORKS = ("mtl_jax", "PyTorch")
TORCH_DESCRIPTION = "LibMTL-style loop, TorchJD 0.18 aggregators"
# Environment variables that set threads; recorded, and prefixed to the command.
THREAD_ENV = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "XLA_FLAGS")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The model and batch: the seed's ConvNet on 32x32x3 images (``trunk="conv"``), or
    an MLP trunk of ``widths`` on ``in_features`` inputs; 10-way heads."""

    batch: int = 256
    in_features: int = 64
    widths: tuple[int, ...] = (256, 256)
    classes: int = 10
    trunk: str = "mlp"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return IMAGE_SHAPE if self.trunk == "conv" else (self.in_features,)


FULL = {"conv": Sizes(batch=64, trunk="conv"), "mlp": Sizes()}
QUICK = Sizes(batch=8, in_features=8, widths=(16, 16))


def synthetic_data(sizes: Sizes, num_tasks: int, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian inputs ``[B, ...]`` (NHWC images for the ConvNet) and labels ``[T, B]``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((sizes.batch, *sizes.input_shape), dtype=np.float32)
    return x, rng.integers(0, sizes.classes, (num_tasks, sizes.batch), dtype=np.int32)


def task_names(num_tasks: int) -> tuple[str, ...]:
    return tuple(f"task{t}" for t in range(num_tasks))


def flax_model(sizes: Sizes, num_tasks: int) -> tuple[Any, mtl_jax.Tasks]:
    """``HardSharing(ConvTrunk or MLPTrunk, StackedHeads)`` and its ``T`` classification
    tasks."""
    names = task_names(num_tasks)
    trunk = (mtl_jax.models.ConvTrunk() if sizes.trunk == "conv"
             else mtl_jax.models.MLPTrunk(sizes.widths))
    model = mtl_jax.models.HardSharing(trunk, mtl_jax.models.StackedHeads(names, sizes.classes))
    return model, mtl_jax.Tasks([mtl_jax.classification(n, sizes.classes) for n in names])


def jax_setup(method: str, sizes: Sizes, x: np.ndarray, labels: np.ndarray,
              optimizer: optax.GradientTransformation, *, device: jax.Device | None = None,
              **knobs: Any) -> tuple[Any, Any, Any]:
    """The jitted (not yet compiled) mtl_jax step for ``method`` (with the method's
    ``knobs``, default none), its state and the batch, on ``device`` (default: JAX's
    first device). The step donates the state."""
    num_tasks = len(labels)
    model, tasks = flax_model(sizes, num_tasks)
    aggregator, wrt = mtl_jax.aggregators.get(method, num_tasks, **knobs)
    device = device or jax.devices()[0]
    batch = jax.device_put({"x": x, "y": dict(zip(task_names(num_tasks), labels))}, device)
    with jax.disable_jit():  # op by op: compiling the initialisation costs seconds
        state = mtl_jax.init_state(model, tasks, jax.random.key(0), batch, optimizer,
                                   aggregator=aggregator)
    # Committed like the step's outputs, so that one compilation serves every call.
    state = jax.device_put(state, device)
    step = jax.jit(mtl_jax.make_train_step(model, tasks, optimizer, aggregator=aggregator,
                                           wrt=wrt), donate_argnums=0)
    return step, state, batch


def torch_model(sizes: Sizes, variables: Any, device: torch.device | str
                ) -> torch_models.MultiTaskModel:
    """The torch twin of :func:`flax_model`, holding the flax ``variables``."""
    kernel = np.asarray(variables["params"]["heads"]["kernel"])
    encoder = (torch_models.SharedEncoder() if sizes.trunk == "conv"
               else torch_models.mlp_encoder(sizes.in_features, sizes.widths))
    model = torch_models.MultiTaskModel(
        encoder, [torch_models.TaskHead(kernel.shape[1], sizes.classes) for _ in kernel])
    torch_models.load_flax_params(
        model, variables, IMAGE_SHAPE if sizes.trunk == "conv" else (1, 1, sizes.in_features))
    return model.to(device)


def torch_inputs(x: np.ndarray, labels: np.ndarray, device: torch.device | str
                 ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Inputs (images as NCHW) and int64 labels, on ``device``."""
    if x.ndim == 4:
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return (torch.from_numpy(x).to(device),
            [torch.from_numpy(y.astype(np.int64)).to(device) for y in labels])


def jax_runner(method: str, sizes: Sizes, x: np.ndarray, labels: np.ndarray,
               device: jax.Device | None = None) -> tuple[Runner, Any, dict[str, Any]]:
    """The compiled mtl_jax step with Adam(1e-3) on ``device``, the initial variables
    (NumPy), and compilation facts: seconds, and on a GPU XLA's memory estimate."""
    step, state, batch = jax_setup(method, sizes, x, labels, optax.adam(1e-3), device=device)
    variables = jax.device_get(state.params)  # a copy: the step donates the state
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    facts: dict[str, Any] = {"compile_s": time.perf_counter() - start}
    if batch["x"].device.platform == "gpu":
        facts["peak_mib"] = xla_peak_bytes(compiled) / 2**20
    return jax_step_runner(compiled, state, batch), variables, facts


def xla_peak_bytes(compiled: Any) -> int:
    """XLA's buffer assignment of one step: arguments, outputs and temporaries, less
    the donated (aliased) bytes."""
    m = compiled.memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            - m.alias_size_in_bytes)


def torch_runner(method: str, sizes: Sizes, variables: Any, x: np.ndarray,
                 labels: np.ndarray, device: torch.device) -> Runner:
    """The PyTorch step of :mod:`torch_methods` with Adam(1e-3), from ``variables``."""
    torch.manual_seed(0)  # PCGrad's visiting orders
    model = torch_model(sizes, variables, device)
    step = torch_methods.make_step(method, model, torch.optim.Adam(model.parameters(), lr=1e-3),
                                   len(labels))
    return torch_step_runner(step, *torch_inputs(x, labels, device), device)


def measure(method: str, num_tasks: int, sizes: Sizes = FULL["conv"], *, repeats: int = 10,
            warmup: int = 2, torch_device: torch.device | None = None,
            jax_device: jax.Device | None = None) -> list[dict[str, Any]]:
    """Time ``method`` at ``num_tasks`` tasks: one row for mtl_jax, one for PyTorch.

    Rows hold ``method``, ``tasks``, ``framework`` and :func:`step_speed.time_steps`'s
    fields (``median_ms``, ``iqr_ms``, ``times_ms``, ``first_step_s``,
    ``loss_at_step_1``), mtl_jax's ``compile_s``, on a GPU ``peak_mib``; or ``error``.
    The devices default to torch's GPU if it has one and JAX's first device.
    """
    torch_device = torch_device or default_torch_device()
    x, labels = synthetic_data(sizes, num_tasks)
    common = {"method": METHODS[method], "tasks": num_tasks}
    run, variables, facts = jax_runner(method, sizes, x, labels, jax_device)
    rows = [{**common, "framework": "mtl_jax", **facts, **time_steps(run, warmup, repeats)}]
    del run
    gc.collect()
    row: dict[str, Any] = {**common, "framework": "PyTorch"}
    try:
        if torch_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(torch_device)
        row |= time_steps(torch_runner(method, sizes, variables, x, labels, torch_device),
                          warmup, repeats)
        if torch_device.type == "cuda":
            row["peak_mib"] = torch.cuda.max_memory_allocated(torch_device) / 2**20
    except Exception as error:  # noqa: BLE001 - a failing solver is a result to report
        row["error"] = f"{type(error).__name__}: {error}"[:2000]
    rows.append(row)
    gc.collect()
    return rows


def default_torch_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def describe(row: dict[str, Any]) -> str:
    """One progress line."""
    head = f"T={row['tasks']:>3} {row['method']:>8} | {row['framework']:<7} | "
    if "error" in row:
        return head + f"failed: {row['error'][:200]}"
    return head + (f"{row['median_ms']:9.2f} ms/step (IQR {row['iqr_ms']:.2f}) | "
                   f"first step {row['first_step_s']:.2f} s | loss {row['loss_at_step_1']:.4f}")


def blas_threads() -> str:
    """Every BLAS and OpenMP runtime loaded (torch's, NumPy's and SciPy's for TorchJD's
    solvers, ...), named by the package that ships it, with its thread count."""
    pools = threadpoolctl.threadpool_info()
    return ", ".join(f"{_package(p['filepath'])} {p['internal_api']} {p['num_threads']}"
                     for p in pools) or "none found"


def _package(path: str) -> str:
    """``.../site-packages/numpy.libs/libopenblas.so`` -> ``numpy``."""
    parts = pathlib.Path(path).parts
    top = parts[parts.index("site-packages") + 1] if "site-packages" in parts else parts[-1]
    return top.removesuffix(".libs")


def machine(devices: tuple[jax.Device, torch.device]) -> dict[str, Any]:
    """``step_speed.machine_info`` plus nproc, BLAS threads, solver versions, thread env."""
    info = machine_info(devices)
    info["nproc"] = os.cpu_count()
    info["threads"]["blas_openmp"] = blas_threads()
    info["env"] = {k: os.environ.get(k, "unset") for k in THREAD_ENV}
    for package in ("torchjd", "cvxpy", "quadprog"):
        info["versions"][package] = importlib.metadata.version(package)
    return info


def succeeded(row: dict[str, Any] | None) -> bool:
    """Whether ``row`` exists and holds a measurement, not an ``error``."""
    return row is not None and "error" not in row


def ms_cell(row: dict[str, Any] | None) -> str:
    """``median ± IQR`` in ms; "failed" or "—" (no row)."""
    if row is None:
        return "—"
    return f"{row['median_ms']:.2f} ± {row['iqr_ms']:.2f}" if succeeded(row) else "failed"


def pair_cell(rows: Sequence[dict[str, Any] | None], key: str, fmt: str) -> str:
    """``key`` of each row, formatted, joined by " / " ("—" where missing)."""
    return " / ".join(format(r[key], fmt) if succeeded(r) and key in r else "—" for r in rows)


FULL_JACOBIAN = ("PCGrad", "MGDA", "CAGrad", "Nash-MTL", "UPGrad")


def floor(method: str, num_tasks: int) -> float:
    """The arithmetic floor of a step, in EW steps: one forward and ``T`` backward passes
    (a backward pass costing about two forwards) for full-Jacobian methods, ``(1 + 2T)/3``;
    one forward and one backward (one EW step) for rep-grad and loss-based ones."""
    return (1 + 2 * num_tasks) / 3 if method in FULL_JACOBIAN else 1.0


def table(rows: list[dict[str, Any]], with_memory: bool) -> list[str]:
    """One Markdown table: a line per method, mtl_jax beside PyTorch, and mtl_jax's step
    in EW steps against the arithmetic floor (:func:`floor`)."""
    header = ("| method | mtl_jax ms/step | PyTorch ms/step | PyTorch / mtl_jax | "
              "mtl_jax in EW steps (floor) | "
              "mtl_jax compile s | first step s (mtl_jax / PyTorch) | loss at step 1 |")
    rule = "|---|---|---|---|---|---|---|---|"
    if with_memory:
        header, rule = header + " peak MiB (mtl_jax / PyTorch) |", rule + "---|"
    lines = [header, rule]
    by_method: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_method.setdefault(row["method"], {})[row["framework"]] = row
    ew = by_method.get("EW", {}).get("mtl_jax")
    for method, pair in by_method.items():
        ours, theirs = pair.get("mtl_jax"), pair.get("PyTorch")
        ratio = (f"{theirs['median_ms'] / ours['median_ms']:.2f}×"
                 if succeeded(ours) and succeeded(theirs) else "—")
        in_ew = (f"{ours['median_ms'] / ew['median_ms']:.2f} "
                 f"({floor(method, ours['tasks']):.2f})"
                 if succeeded(ours) and succeeded(ew) else "—")
        line = (f"| {method} | {ms_cell(ours)} | {ms_cell(theirs)} | {ratio} | {in_ew} | "
                f"{pair_cell([ours], 'compile_s', '.1f')} | "
                f"{pair_cell([ours, theirs], 'first_step_s', '.2f')} | "
                f"{pair_cell([ours, theirs], 'loss_at_step_1', '.4f')} |")
        if with_memory:
            line += f" {pair_cell([ours, theirs], 'peak_mib', '.0f')} |"
        lines.append(line)
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page: setup, then one table per number of tasks."""
    m, cfg = report["machine"], report["config"]
    sizes = cfg["sizes"]
    threads = m["threads"]
    lines = [
        f"# Aggregation methods on {report['backend']}: mtl_jax vs PyTorch ({TORCH_DESCRIPTION})",
        "", f"`{report['command']}`", "",
        f"- Date: {report['date']}",
        f"- Machine: {m['cpu']}, nproc {m['nproc']} ({m['cores']} usable); JAX device: "
        f"{m['jax_device']}; torch device: {m['torch_device']}",
        f"- Threads: torch {threads['torch']} (torch.set_num_threads), JAX {threads['jax']}, "
        f"BLAS and OpenMP pools loaded {threads['blas_openmp']}; environment: "
        + ", ".join(f"{k}={v}" for k, v in m["env"].items()),
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        "- Model: " + (
            "the seed's ConvNet (conv32-pool-conv64-pool-dense256) on 32x32x3 Gaussian images"
            if sizes["trunk"] == "conv" else
            f"MLP trunk {'-'.join(map(str, sizes['widths']))} (ReLU) on "
            f"{sizes['in_features']}-dim Gaussian inputs")
        + f", T linear {sizes['classes']}-way heads, batch {sizes['batch']}, cross-entropies, "
        "Adam(1e-3); both frameworks start from the same weights (the loss at step 1, "
        "Σ_t L_t, agrees).",
        "- mtl_jax in EW steps: its step time over its EW step time, beside the arithmetic "
        "floor: (1 + 2T)/3 for full-Jacobian methods (one forward, T backward passes), 1 for "
        "rep-grad (MGDA-UB) and loss-based (FAMO) ones.",
        f"- Timing: {cfg['repeats']} timed steps after {cfg['warmup']} untimed ones; median "
        "± interquartile range (Q3 - Q1) in ms. PyTorch / mtl_jax above 1: mtl_jax is faster. "
        "mtl_jax compiles ahead of time (compile s, not in its first step).",
        "- mtl_jax: `make_train_step(..., aggregator=agg, wrt=wrt)`, `agg, wrt = "
        "mtl_jax.aggregators.get(method, T)` (defaults). PyTorch: `benchmarks/torch_methods.py`"
        ": one forward, T backward passes into a [T, |θ_shared|] matrix (MGDA-UB: of the "
        "shared representation, then one backward of Σ w_t L_t; EW and FAMO: one backward "
        "of Σ w_t L_t), TorchJD's PCGrad, MGDA, CAGrad(c=0.4, rescaled by 1/(1+c²)), "
        "NashMTL and UPGrad at their defaults. TorchJD's MGDA stops Frank-Wolfe at steps "
        "below 1e-3 (mtl_jax's solver is exact); its Nash-MTL problem is not DPP, so cvxpy "
        "re-canonicalises it at every ECOS solve.",
    ]
    if report["backend"] == "gpu":
        lines.append("- Peak memory: mtl_jax from XLA's buffer assignment of the compiled step "
                     "(arguments + outputs + temporaries − donated), PyTorch "
                     "`torch.cuda.max_memory_allocated` over its steps.")
    errors = [f"- T={r['tasks']}, {r['method']}, {r['framework']}: `{r['error']}`"
              for r in report["rows"] if "error" in r]
    for num_tasks in cfg["tasks"]:
        rows = [r for r in report["rows"] if r["tasks"] == num_tasks]
        if rows:
            lines += ["", f"## T = {num_tasks} tasks", "",
                      *table(rows, with_memory=report["backend"] == "gpu")]
    if errors:
        lines += ["", "Failures:", "", *errors]
    return "\n".join(lines) + "\n"


def task_counts(text: str) -> list[int]:
    """``"2,8,40"`` -> ``[2, 8, 40]``, each at least 2."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of ints: {text!r}") from error
    if not counts or min(counts) < 2:
        raise argparse.ArgumentTypeError(f"task counts must be at least 2, got {text!r}")
    return counts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=task_counts, default=[2, 8, 40],
                        help="comma-separated numbers of tasks T")
    parser.add_argument("--methods", nargs="+", choices=tuple(METHODS), default=list(METHODS))
    parser.add_argument("--repeats", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 1)")
    parser.add_argument("--trunk", choices=tuple(FULL), default="conv",
                        help="the seed's ConvNet (batch 64) or an MLP 256-256 (batch 256)")
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny model and batch ({QUICK}), for tests")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: all usable cores, as XLA:CPU "
                             "and OpenBLAS use)")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS, help="output directory")
    args = parser.parse_args(argv)
    if min(args.repeats, args.warmup) < 1:
        parser.error("--repeats and --warmup must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write the JSON and Markdown reports, and return the report."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message="You are solving a parameterized problem that "
                            "is not DPP")  # TorchJD's Nash-MTL, at every call; noted in the page
    torch.set_num_threads(args.threads or available_cores())
    sizes = QUICK if args.quick else FULL[args.trunk]
    torch_device = default_torch_device()
    report = {
        "backend": jax.default_backend(),
        "command": shlex.join([*(f"{k}={os.environ[k]}" for k in THREAD_ENV if k in os.environ),
                               "python", "benchmarks/aggregator_speed.py", *argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": {"tasks": args.tasks, "methods": args.methods, "repeats": args.repeats,
                   "warmup": args.warmup, "sizes": dataclasses.asdict(sizes)},
        "machine": machine((jax.devices()[0], torch_device)),
        "rows": [],
    }
    for num_tasks in args.tasks:
        for method in args.methods:
            for row in measure(method, num_tasks, sizes, repeats=args.repeats,
                               warmup=args.warmup, torch_device=torch_device):
                print(describe(row), flush=True)
                report["rows"].append(row)
    suffix = "quick" if args.quick else args.trunk
    write_report(report, markdown(report),
                 args.out / f"aggregator_speed_{report['backend']}_{suffix}")
    return report


if __name__ == "__main__":
    main()
