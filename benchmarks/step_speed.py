"""One multi-task training step, mtl_jax against PyTorch eager and torch.compile.

A step is: forward pass, the sum of T tasks' cross-entropies on one batch that
carries every task's labels, backward pass, Adam(1e-3) update. Two shared trunks
with linear heads (10 classes each) are measured: the seed document's ConvNet
(``mtl_jax.models.ConvTrunk`` / ``torch_models.SharedEncoder``) and an MLP
512-512 on the flattened 32x32x3 image. Every framework starts from the same
weights (mtl_jax's initialisation, copied into the torch modules), so the loss
of the first step, reported beside the timings, agrees across frameworks.

The first ``--warmup`` steps (compilation included) are not timed; then each
step is timed on its own, after waiting for its result, and the median and the
interquartile range over ``--repeats`` steps are reported. Results go to
``<out-dir>/step_speed_<backend>.{json,md}``.

    python benchmarks/step_speed.py [--tasks 8] [--batch 256] [--repeats 10] [--warmup 3]
        [--device auto|cpu|gpu] [--threads N] [--frameworks mtl_jax eager compile]
        [--out-dir benchmarks/results]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import numpy as np
import optax
import torch
import torch_models

import mtl_jax

RESULTS = pathlib.Path(__file__).parent / "results"
IMAGE_SHAPE = (32, 32, 3)  # H, W, C
NUM_CLASSES = 10
MLP_WIDTHS = (512, 512)
FRAMEWORKS = {"mtl_jax": "mtl_jax", "eager": "PyTorch eager",
              "compile": "PyTorch torch.compile"}


@dataclasses.dataclass(frozen=True)
class Trunk:
    """One shared trunk, in both frameworks."""

    name: str
    flax_trunk: Callable[[], nn.Module]
    torch_encoder: Callable[[], torch.nn.Module]
    features: int  # width of the representation the heads read


TRUNKS = (
    Trunk("seed ConvNet", mtl_jax.models.ConvTrunk, torch_models.SharedEncoder, 256),
    Trunk(f"MLP {'-'.join(map(str, MLP_WIDTHS))}",
          lambda: mtl_jax.models.MLPTrunk(MLP_WIDTHS),
          lambda: torch_models.mlp_encoder(int(np.prod(IMAGE_SHAPE)), MLP_WIDTHS),
          MLP_WIDTHS[-1]),
)

Runner = Callable[[], Any]  # one step, waited for; returns the loss before the update


def jax_step_runner(step: Callable, state: Any, batch: Any) -> Runner:
    """Calls of ``step(state, batch) -> (state, logs)``, each on the state the previous
    one returned (which a donating step needs), waited for; returns ``logs["loss"]``."""

    def run() -> jax.Array:
        nonlocal state
        state, logs = step(state, batch)
        jax.block_until_ready((state, logs))
        return logs["loss"]

    return run


def torch_step_runner(step: Callable[..., torch.Tensor], x: torch.Tensor,
                      labels: Sequence[torch.Tensor], device: torch.device) -> Runner:
    """Calls of a torch ``step(x, labels) -> loss``, waited for on a GPU."""

    def run() -> torch.Tensor:
        loss = step(x, labels)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return loss

    return run


def jax_runner(trunk: Trunk, x: np.ndarray, labels: np.ndarray,
               device: jax.Device) -> tuple[Runner, Any]:
    """The mtl_jax step, and the initial variables as NumPy arrays."""
    names = tuple(f"task{t}" for t in range(len(labels)))
    model = mtl_jax.models.HardSharing(trunk.flax_trunk(),
                                       mtl_jax.models.StackedHeads(names, NUM_CLASSES))
    tasks = mtl_jax.Tasks([mtl_jax.classification(n, NUM_CLASSES) for n in names])
    batch = jax.device_put({"x": x, "y": dict(zip(names, labels))}, device)
    with jax.default_device(device):
        state = mtl_jax.init_state(model, tasks, jax.random.key(0), batch, optax.adam(1e-3))
    variables = jax.device_get(state.params)  # a copy: the step donates the state
    # init_state's arrays are uncommitted, the step's outputs committed to the
    # device; jit compiles once per kind, so commit the state now: one compilation.
    state = jax.device_put(state, device)
    step = jax.jit(mtl_jax.make_train_step(model, tasks, optax.adam(1e-3)), donate_argnums=0)
    return jax_step_runner(step, state, batch), variables


def torch_runner(trunk: Trunk, variables: Any, x: np.ndarray, labels: np.ndarray,
                 device: torch.device, compile_loss: bool) -> Runner:
    """The PyTorch step on NCHW inputs, from mtl_jax's initial weights."""
    model = torch_models.MultiTaskModel(
        trunk.torch_encoder(),
        [torch_models.TaskHead(trunk.features, NUM_CLASSES) for _ in labels])
    torch_models.load_flax_params(model, variables, IMAGE_SHAPE)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch_models.multitask_loss
    if compile_loss:
        loss_fn = torch.compile(loss_fn, mode="default")
    step = torch_models.make_train_step(model, optimizer, loss_fn)
    x_nchw = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(device)
    ys = [torch.from_numpy(y.astype(np.int64)).to(device) for y in labels]
    return torch_step_runner(step, x_nchw, ys, device)


def time_steps(run: Runner, warmup: int, repeats: int) -> dict[str, Any]:
    """Time the first step, run the rest of the warm-up, then time ``repeats`` steps.

    ``run`` returns the loss before its update (reported as ``loss_at_step_1``; the
    mean of an ensemble's per-member losses), or None where there is no loss (a bare
    matrix product, say).
    """
    start = time.perf_counter()
    loss = run()
    first_step_s = time.perf_counter() - start
    for _ in range(warmup - 1):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    q1, median, q3 = np.percentile(np.asarray(times) * 1e3, [25, 50, 75])
    row = {"median_ms": float(median), "iqr_ms": float(q3 - q1),
           "times_ms": [t * 1e3 for t in times], "first_step_s": first_step_s}
    return row if loss is None else row | {"loss_at_step_1": float(loss.mean())}


def measure(trunk: Trunk, devices: tuple[jax.Device, torch.device], *, tasks: int = 8,
            batch: int = 256, frameworks: Sequence[str] = tuple(FRAMEWORKS), warmup: int = 3,
            repeats: int = 10) -> list[dict[str, Any]]:
    """One row per framework (keys of :data:`FRAMEWORKS`) for ``trunk``, ``tasks`` tasks and
    ``batch`` examples: ``model``, ``framework`` and :func:`time_steps`'s fields, or ``error``."""
    jax_device, torch_device = devices
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *IMAGE_SHAPE), dtype=np.float32)
    labels = rng.integers(0, NUM_CLASSES, (tasks, batch), dtype=np.int32)
    run_jax, variables = jax_runner(trunk, x, labels, jax_device)
    rows = []
    for framework in frameworks:
        row: dict[str, Any] = {"model": trunk.name, "framework": FRAMEWORKS[framework]}
        if framework == "mtl_jax":
            row |= time_steps(run_jax, warmup, repeats)
        elif framework == "eager":
            run = torch_runner(trunk, variables, x, labels, torch_device, compile_loss=False)
            row |= time_steps(run, warmup, repeats)
        else:
            try:  # torch.compile compiles on the first call, inside time_steps
                run = torch_runner(trunk, variables, x, labels, torch_device, compile_loss=True)
                row |= time_steps(run, warmup, repeats)
            except Exception as error:  # noqa: BLE001 - any failure is a result to report
                row["error"] = f"{type(error).__name__}: {error}"[:2000]
        print(_describe(row), flush=True)
        rows.append(row)
    return rows


def resolve_devices(choice: str) -> tuple[jax.Device, torch.device]:
    """The JAX and torch devices for ``--device``; ``auto`` takes a GPU when both see one."""
    jax_gpus = _jax_gpus()
    if choice == "gpu" or (choice == "auto" and jax_gpus and torch.cuda.is_available()):
        if not jax_gpus or not torch.cuda.is_available():
            raise SystemExit(f"--device gpu: JAX sees {len(jax_gpus)} GPU(s), torch.cuda is "
                             f"{'' if torch.cuda.is_available() else 'not '}available")
        return jax_gpus[0], torch.device("cuda", 0)
    return jax.devices("cpu")[0], torch.device("cpu")


def _jax_gpus() -> list[jax.Device]:
    try:
        return jax.devices("gpu")
    except RuntimeError:  # no GPU backend
        return []


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def machine_info(devices: tuple[jax.Device, torch.device]) -> dict[str, Any]:
    jax_device, torch_device = devices
    cores = available_cores()
    on_gpu = torch_device.type == "cuda"
    return {
        "cpu": cpu_model(),
        "cores": cores,
        "jax_device": jax_device.device_kind,
        "torch_device": torch.cuda.get_device_name(torch_device) if on_gpu else cpu_model(),
        "threads": {"torch": torch.get_num_threads(),
                    "jax": "n/a (GPU)" if on_gpu else f"XLA CPU default (all {cores} cores)"},
        "versions": {"python": platform.python_version(), "jax": jax.__version__,
                     "flax": flax.__version__, "optax": optax.__version__,
                     "mtl_jax": mtl_jax.__version__, "torch": torch.__version__},
        "os": platform.platform(),
    }


def _describe(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"{row['model']:>14} | {row['framework']:<22} | failed: {row['error'][:200]}"
    return (f"{row['model']:>14} | {row['framework']:<22} | {row['median_ms']:9.2f} ms/step "
            f"(IQR {row['iqr_ms']:.2f}) | first step {row['first_step_s']:.1f} s "
            f"| loss {row['loss_at_step_1']:.4f}")


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page: setup, then one table row per measurement."""
    m, cfg = report["machine"], report["config"]
    threads = m["threads"]
    lines = [
        f"# One multi-task training step on {report['backend']}: mtl_jax vs PyTorch", "",
        f"`{report['command']}`", "",
        f"- Date: {report['date']}",
        f"- Machine: {m['cpu']}, {m['cores']} cores; JAX device: {m['jax_device']}; "
        f"torch device: {m['torch_device']}",
        f"- Threads: torch {threads['torch']} (torch.set_num_threads), JAX {threads['jax']}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- T={cfg['tasks']} tasks of {NUM_CLASSES} classes, batch {cfg['batch']}, "
        f"{cfg['repeats']} timed steps after {cfg['warmup']} warm-up steps; "
        "median and interquartile range (Q3 - Q1) in ms.",
        "- Step: forward, sum of the T cross-entropies, backward, Adam(1e-3). PyTorch runs "
        "the encoder once and loops over the heads; torch.compile (mode=\"default\") "
        "compiles that loss (forward and backward), the optimizer step stays eager. "
        "Inputs: NHWC for mtl_jax, NCHW for PyTorch; all start from the same weights.",
        "- Speed-up: the PyTorch variant's median over mtl_jax's (above 1: mtl_jax is "
        "faster). First step: wall time of the first step, compilation included.", "",
        *table(report["rows"]),
    ]
    return "\n".join(lines) + "\n"


def table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """:func:`measure`'s rows as a Markdown table (speed-ups over mtl_jax's row of the same
    model), followed by the failures."""
    lines = ["| model | framework | median ms/step | IQR ms | mtl_jax speed-up | first step s "
             "| loss at step 1 |",
             "|---|---|---|---|---|---|---|"]
    ours = {r["model"]: r for r in rows if r["framework"] == FRAMEWORKS["mtl_jax"]}
    errors = []
    for row in rows:
        if "error" in row:
            errors.append(f"- {row['model']}, {row['framework']}: `{row['error']}`")
            lines.append(f"| {row['model']} | {row['framework']} | failed (below) | | | | |")
            continue
        mine = ours.get(row["model"])
        speedup = ("—" if mine is None or mine is row
                   else f"{row['median_ms'] / mine['median_ms']:.2f}×")
        lines.append(f"| {row['model']} | {row['framework']} | {row['median_ms']:.2f} | "
                     f"{row['iqr_ms']:.2f} | {speedup} | {row['first_step_s']:.1f} | "
                     f"{row['loss_at_step_1']:.4f} |")
    if errors:
        lines += ["", "Failures:", "", *errors]
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8, help="number of tasks T")
    parser.add_argument("--batch", type=int, default=256, help="examples per step")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed steps first, compilation included (at least 1)")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: all cores); JAX on CPU always "
                             "uses XLA's default, all cores")
    parser.add_argument("--frameworks", nargs="+", choices=tuple(FRAMEWORKS),
                        default=list(FRAMEWORKS))
    parser.add_argument("--out-dir", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args(argv)
    if min(args.tasks, args.batch, args.repeats, args.warmup) < 1:
        parser.error("--tasks, --batch, --repeats and --warmup must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write the JSON and Markdown reports, and return the report."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    devices = resolve_devices(args.device)
    torch.set_num_threads(args.threads or available_cores())
    report = {
        "backend": devices[0].platform,
        "command": shlex.join(["python", "benchmarks/step_speed.py", *argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": {k: str(v) if isinstance(v, pathlib.Path) else v
                   for k, v in vars(args).items()},
        "machine": machine_info(devices),
        "rows": [row for trunk in TRUNKS
                 for row in measure(trunk, devices, tasks=args.tasks, batch=args.batch,
                                    frameworks=args.frameworks, warmup=args.warmup,
                                    repeats=args.repeats)],
    }
    write_report(report, markdown(report), args.out_dir / f"step_speed_{report['backend']}")
    return report


def write_report(report: dict, page: str, stem: pathlib.Path) -> None:
    """Write ``stem.json`` (the report) and ``stem.md`` (its page), and print the page."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(page)
    print(page)


if __name__ == "__main__":
    main()
