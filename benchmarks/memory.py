"""Peak memory of a T = 40 train step: per-task-gradient methods, chunked, against EW.

CelebA has 40 tasks. A per-task-gradient method (PCGrad, MGDA, ...) runs ``T``
backward passes through the shared trunk into a ``[T, |θ_shared|]`` Jacobian;
``make_train_step(..., chunk_size=k)`` runs them ``k`` at a time (``lax.map``)
instead of all together (``vmap``, ``k = None``). For each trunk, method and ``k``
the step (``aggregator_speed.flax_model``: ``T`` linear 10-way heads, Adam(1e-3),
the state donated) is compiled and measured:

- XLA's buffer assignment (``compiled.memory_analysis()``): arguments, outputs,
  temporaries and donated (aliased) bytes; the peak is arguments + outputs +
  temporaries - aliased (``aggregator_speed.xla_peak_bytes``). Deterministic; no
  step needs to run.
- On a GPU, the allocator's ``peak_bytes_in_use`` after running the step, each
  row in a fresh process (the statistic is a running maximum over the process).
- Optionally the time of a step: chunking trades speed for memory.

Every peak is compared with EW's and with :func:`bound`, a closed form in the
shapes of the model; the results page states the bound and how tight it is.

    python benchmarks/memory.py [--quick] [--trunks mlp,conv] [--repeats N] [--isolate]
        [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import multiprocessing
import os
import pathlib
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from aggregator_speed import (
    FULL,
    QUICK,
    Sizes,
    flax_model,
    synthetic_data,
    task_names,
    xla_peak_bytes,
)
from step_speed import available_cores, cpu_model, jax_step_runner, time_steps, write_report

import mtl_jax
from mtl_jax.aggregators.base import from_weighting, scaled_gramian

# Grown on demand, so that the allocator's peak is the step's and fresh processes fit.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

RESULTS = pathlib.Path(__file__).parent / "results"
NUM_TASKS = 40  # CelebA's attributes
OPTIMIZER = optax.adam(1e-3)
BYTES = 4  # float32
METHODS = ("ew", "pcgrad", "mgda", "cagrad", "nash_mtl", "upgrad", "imtl_g")
MiB = 2**20


def by_gramian(gram: jax.Array, inner: Any, value: Any) -> tuple[jax.Array, Any]:
    """Weights read from the Gramian, as every Gramian-based method's are."""
    return jax.nn.softmax(jnp.diag(gram)), inner


# Stand-ins for the parts of a Gramian-based method's work, to attribute its memory:
# the Jacobian alone (direction Σ_t g_t), weights from G = J Jᵀ, from the rescaled G.
ABLATIONS: dict[str, Callable[[int], Any]] = {
    "(Σ rows of J)": lambda t: from_weighting(lambda g, s, v: (jnp.ones(t), s), t,
                                              summary=lambda grads: jnp.zeros(())),
    "(Gramian)": lambda t: from_weighting(by_gramian, t),
    "(scaled Gramian)": lambda t: from_weighting(
        by_gramian, t, summary=lambda grads: scaled_gramian(grads)[0]),
}


@dataclasses.dataclass(frozen=True)
class Setting:
    """What to measure on one trunk."""

    sizes: Sizes
    methods: tuple[str, ...]
    chunks: tuple[int | None, ...]  # None: all T tasks at once (vmap)
    repeats: int  # timed steps per row; 0: compile only


PLANS = {
    "full": {"mlp": Setting(FULL["mlp"], METHODS + tuple(ABLATIONS), (None, 20, 8, 4, 1), 3),
             # A step of the chunked ConvNet takes 15-35 s on a 2-core CPU: not timed.
             "conv": Setting(Sizes(batch=16, trunk="conv"), ("ew", "pcgrad", "upgrad",
                                                             *ABLATIONS), (None, 8, 1), 0)},
    "quick": {"mlp": Setting(QUICK, ("ew", "pcgrad", *ABLATIONS), (None, 1), 1)},
}


def terms(sizes: Sizes, num_tasks: int) -> dict[str, int]:
    """The closed-form sizes the bound is made of, from shapes alone (no compilation).

    ``shared_params`` P = |θ_shared| (the trunk's parameters); ``jacobian`` |J| =
    4·T·P bytes; ``cotangents`` |dZ| = 4·T·B·D bytes, the ``[T, B, D]`` gradients of
    the losses with respect to the trunk's output; ``per_task`` w = 4·(P + 2·B·A)
    bytes, one task's backward pass through the trunk (its gradient, and two
    cotangents the size of each layer's output, A values per example in all).
    """
    model, _ = flax_model(sizes, num_tasks)
    x = jnp.zeros((sizes.batch, *sizes.input_shape))
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    z, captured = jax.eval_shape(lambda p: model.apply(
        p, x, method=lambda m, v: m.trunk(v), capture_intermediates=True), params)
    layers = {k: v for k, v in captured["intermediates"]["trunk"].items() if k != "__call__"}
    shared = _size(params["params"]["trunk"])
    return {"shared_params": shared, "jacobian": BYTES * num_tasks * shared,
            "cotangents": BYTES * num_tasks * z.size,
            "per_task": BYTES * (shared + 2 * _size(layers))}


def _size(tree: Any) -> int:
    return sum(leaf.size for leaf in jax.tree_util.tree_leaves(tree))


def bound(ew_peak: int, t: dict[str, int], chunk: int | None, num_tasks: int) -> int:
    """peak(EW) + 3·|J| + 2·|dZ| + min(k, T)·w: the Jacobian and two copies of it (the
    aggregator's), the stacked cotangents and the heads' T-fold input, k backward passes."""
    return ew_peak + 3 * t["jacobian"] + 2 * t["cotangents"] + tasks_at_once(
        chunk, num_tasks) * t["per_task"]


def jacobian_only(ew_peak: int, t: dict[str, int], chunk: int | None, num_tasks: int) -> int:
    """peak(EW) + |J| + min(k, T)·w: the bound if the Jacobian were the only extra buffer."""
    return ew_peak + t["jacobian"] + tasks_at_once(chunk, num_tasks) * t["per_task"]


def tasks_at_once(chunk: int | None, num_tasks: int) -> int:
    return num_tasks if chunk is None else min(chunk, num_tasks)


def xla_memory(compiled: Any) -> dict[str, int]:
    """XLA's buffer assignment of a compiled step, in bytes."""
    m = compiled.memory_analysis()
    return {"argument_bytes": m.argument_size_in_bytes, "output_bytes": m.output_size_in_bytes,
            "temp_bytes": m.temp_size_in_bytes, "alias_bytes": m.alias_size_in_bytes,
            "generated_code_bytes": m.generated_code_size_in_bytes,
            "peak_bytes": xla_peak_bytes(compiled)}


def aggregator_for(method: str, num_tasks: int) -> tuple[Any, str]:
    """``(aggregator, wrt)`` of a registry method or of one of :data:`ABLATIONS`."""
    if method in ABLATIONS:
        return ABLATIONS[method](num_tasks), "parameters"
    return mtl_jax.aggregators.get(method, num_tasks)


def measure(sizes: Sizes, method: str, chunks: Sequence[int | None], repeats: int,
            num_tasks: int = NUM_TASKS, device_peak: bool = False) -> list[dict[str, Any]]:
    """One row per chunk size: XLA's memory figures, compile seconds, with ``repeats``
    the median step time, and with ``device_peak`` (for a process that measures one
    row) the allocator's peak where the device keeps one (not the CPU)."""
    x, labels = synthetic_data(sizes, num_tasks)
    model, tasks = flax_model(sizes, num_tasks)
    batch = {"x": x, "y": dict(zip(task_names(num_tasks), labels))}
    aggregator, wrt = aggregator_for(method, num_tasks)
    with jax.disable_jit():  # op by op: compiling the initialisation costs seconds
        state = mtl_jax.init_state(model, tasks, jax.random.key(0), batch, OPTIMIZER,
                                   aggregator=aggregator)
    rows = []
    for i, chunk in enumerate(chunks):
        step = jax.jit(mtl_jax.make_train_step(model, tasks, OPTIMIZER, aggregator=aggregator,
                                               wrt=wrt, chunk_size=chunk), donate_argnums=0)
        start = time.perf_counter()
        compiled = step.lower(state, batch).compile()
        row = {"trunk": sizes.trunk, "method": method, "chunk": chunk,
               "compile_s": time.perf_counter() - start, **xla_memory(compiled)}
        if repeats:  # the step donates its state: the last row may spend the original
            fresh = state if i == len(chunks) - 1 else jax.tree_util.tree_map(jnp.copy, state)
            timing = time_steps(jax_step_runner(compiled, fresh, batch), 1, repeats)
            row |= {"step_ms": timing["median_ms"], "times_ms": timing["times_ms"]}
        stats = jax.devices()[0].memory_stats()  # None on the CPU
        if stats and repeats and device_peak:
            row["device_peak_bytes"] = stats["peak_bytes_in_use"]
        print(describe(row), flush=True)
        rows.append(row)
    return rows


def chunks_for(method: str, setting: Setting) -> tuple[int | None, ...]:
    """The setting's chunk sizes for a per-task-gradient method, its smallest for the
    ablations; EW (and any method without per-task parameter gradients): None only."""
    if method in ABLATIONS:
        return setting.chunks[-1:]
    wrt = mtl_jax.aggregators.registry.METHODS[method].wrt
    return setting.chunks if wrt == "parameters" else (None,)


def run(setting: Setting, num_tasks: int, isolate: bool) -> list[dict[str, Any]]:
    """Every method and chunk size of ``setting``; ``isolate``: each row in a fresh process."""
    rows = []
    for method in setting.methods:
        chunks = chunks_for(method, setting)
        for group in ([[c] for c in chunks] if isolate else [chunks]):
            rows += in_process(measure, isolate)(setting.sizes, method, group, setting.repeats,
                                                 num_tasks, isolate)
    return rows


def in_process(fn: Callable, fresh: bool) -> Callable:
    """``fn``, or ``fn`` called in a fresh (spawned) Python process."""
    if not fresh:
        return fn

    def call(*args: Any) -> Any:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(fn, args)

    return call


def annotate(rows: list[dict[str, Any]], t: dict[str, int], num_tasks: int) -> None:
    """Add to each row its ratios to EW's peaks and the two bounds, with whether they hold."""
    ew = next(r for r in rows if r["method"] == "ew")
    for row in rows:
        row["peak_over_ew"] = row["peak_bytes"] / ew["peak_bytes"]
        if "device_peak_bytes" in row and "device_peak_bytes" in ew:
            row["device_peak_over_ew"] = row["device_peak_bytes"] / ew["device_peak_bytes"]
        if row["method"] != "ew":
            for name, fn in (("bound", bound), ("jacobian_only", jacobian_only)):
                row[f"{name}_bytes"] = fn(ew["peak_bytes"], t, row["chunk"], num_tasks)
                row[f"within_{name}"] = row["peak_bytes"] <= row[f"{name}_bytes"]


def describe(row: dict[str, Any]) -> str:
    """One progress line."""
    line = (f"{row['trunk']:>4} {row['method']:>16} chunk {chunk_name(row['chunk']):>4} | "
            f"peak {row['peak_bytes'] / MiB:8.1f} MiB (temp {row['temp_bytes'] / MiB:7.1f}) | "
            f"compile {row['compile_s']:5.1f} s")
    if "step_ms" in row:
        line += f" | {row['step_ms']:9.1f} ms/step"
    return line


def chunk_name(chunk: int | None) -> str:
    return "all" if chunk is None else str(chunk)


def machine() -> dict[str, Any]:
    device = jax.devices()[0]
    return {"cpu": cpu_model(), "nproc": os.cpu_count(), "usable_cores": available_cores(),
            "device": device.device_kind, "os": platform.platform(),
            "versions": {"python": platform.python_version(), "jax": jax.__version__,
                         "optax": optax.__version__, "mtl_jax": mtl_jax.__version__}}


def mib(nbytes: float) -> str:
    return f"{nbytes / MiB:.1f}"


def table(rows: list[dict[str, Any]], on_gpu: bool) -> list[str]:
    """One Markdown table for one trunk."""
    header = ("| method | chunk k | XLA peak MiB | × EW | temp MiB | bound MiB (peak / bound) "
              "| EW + \\|J\\| + k·w MiB (holds?) | step ms | compile s |")
    rule = "|---|---|---|---|---|---|---|---|---|"
    if on_gpu:
        header, rule = header + " device peak MiB | device × EW |", rule + "---|---|"
    lines = [header, rule]
    for r in rows:
        within = (f"{mib(r['bound_bytes'])} ({r['peak_bytes'] / r['bound_bytes']:.2f})"
                  if "bound_bytes" in r else "—")
        naive = (f"{mib(r['jacobian_only_bytes'])} ({'yes' if r['within_jacobian_only'] else 'no'})"
                 if "jacobian_only_bytes" in r else "—")
        step = f"{r['step_ms']:.1f}" if "step_ms" in r else "—"
        line = (f"| {r['method']} | {chunk_name(r['chunk'])} | {mib(r['peak_bytes'])} | "
                f"{r['peak_over_ew']:.2f} | {mib(r['temp_bytes'])} | {within} | {naive} | "
                f"{step} | {r['compile_s']:.1f} |")
        if on_gpu:
            line += (f" {mib(r['device_peak_bytes'])} | {r['device_peak_over_ew']:.2f} |"
                     if "device_peak_over_ew" in r else " — | — |")
        lines.append(line)
    return lines


def summary(rows: list[dict[str, Any]], jacobian: int) -> list[str]:
    """Per method: the peak at its largest and smallest chunk, the chunk from which on it
    falls no further, and what the smallest chunk adds to EW's peak, in Jacobians |J|."""
    ew = next(r for r in rows if r["method"] == "ew")
    lines = []
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != "ew"):
        mine = sorted((r for r in rows if r["method"] == method),
                      key=lambda r: -tasks_at_once(r["chunk"], NUM_TASKS))
        first, last = mine[0], mine[-1]
        floor = next(r for r in mine if r["peak_bytes"] == last["peak_bytes"])
        extra = (last["peak_bytes"] - ew["peak_bytes"]) / jacobian
        at_last = (f"{mib(last['peak_bytes'])} MiB ({last['peak_over_ew']:.1f}× EW, EW + "
                   f"{extra:.2f}·|J|) at k = {chunk_name(last['chunk'])}")
        if first is last:
            lines.append(f"- {method}: {at_last}.")
            continue
        lines.append(f"- {method}: {mib(first['peak_bytes'])} MiB ({first['peak_over_ew']:.1f}× "
                     f"EW) at k = {chunk_name(first['chunk'])}, {at_last}; the peak stops "
                     f"falling at k = {chunk_name(floor['chunk'])}.")
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page."""
    m = report["machine"]
    on_gpu = report["backend"] == "gpu"
    lines = [
        f"# Peak memory of a T = {report['tasks']} step on {report['backend']}: "
        "per-task-gradient methods, chunked, against EW", "",
        f"`{report['command']}`", "",
        f"- Date: {report['date']}; took {report['wall_s'] / 60:.1f} min",
        f"- Machine: {m['cpu']}, nproc {m['nproc']} ({m['usable_cores']} usable); JAX "
        f"device: {m['device']}; {m['os']}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- Step: `make_train_step(model, tasks, optax.adam(1e-3), aggregator=agg, wrt=wrt, "
        f"chunk_size=k)` with `agg, wrt = mtl_jax.aggregators.get(method, {report['tasks']})`, "
        "state donated; HardSharing(trunk, StackedHeads) with T linear 10-way heads, "
        "Gaussian inputs. k = all: the T backward passes vmapped together; k: `lax.map` over "
        "chunks of k tasks. EW is loss-based (one backward pass, no chunks).",
        "- XLA peak: XLA's buffer assignment of the compiled step (`memory_analysis()`), "
        "arguments + outputs + temporaries − donated (aliased); deterministic, what XLA "
        "allocates. Temp: the temporaries alone. × EW: over EW's XLA peak."
        + (" Device peak: `memory_stats()['peak_bytes_in_use']` after running the step, "
           "each row in a fresh process." if on_gpu else
           " The CPU allocator keeps no peak statistic (`memory_stats()` is None)."),
        "- Rows in parentheses are not methods but stand-ins for parts of a Gramian-based "
        "method's work, at the smallest chunk, to attribute its memory: `(Σ rows of J)` "
        "returns Σ_t g_t (the Jacobian and nothing else), `(Gramian)` weights read from "
        "G = J Jᵀ (`aggregators.base.gramian`), `(scaled Gramian)` from "
        "`aggregators.base.scaled_gramian`, as the registry's Gramian-based methods do.",
        "- Step ms: median of the timed steps after one untimed step (— where not timed). "
        "Other jobs shared the machine; the times are indicative, the memory figures exact.",
        "",
        "## The bound",
        "",
        "With T tasks, P = |θ_shared| trunk parameters, batch B, trunk output width D and A "
        "values per example in the outputs of the trunk's layers, all float32 (4 bytes):",
        "",
        "    |J|  = 4·T·P            the Jacobian, one gradient of the trunk per task",
        "    |dZ| = 4·T·B·D          the gradients of the losses w.r.t. the trunk's output",
        "    w    = 4·(P + 2·B·A)    one task's backward pass through the trunk",
        "",
        "    peak(method, k) ≤ peak(EW) + 3·|J| + 2·|dZ| + min(k, T)·w",
        "",
        f"holds for {held(report, 'within_bound')} (peak / bound ≤ 1). Its terms are the "
        "buffers that can be live besides EW's: the Jacobian J and up to two copies of it "
        "that the aggregator makes (XLA relayouts J for the Gramian's contraction, and "
        "`scaled_gramian`'s overflow branch divides a copy of J: XLA reserves a "
        "conditional's buffers whether or not the branch runs); two `[T, B, D]` buffers "
        "(the cotangents dZ, and the T copies of the trunk's output that the step feeds to "
        "the heads, which `StackedHeads` stacks); and min(k, T) backward passes through the "
        "trunk. Only the last term depends on k. Chunking bounds the working set of the "
        "backward passes, not the Jacobian, its copies or the `[T, B, D]` buffers: the peak "
        "stops falling once k·w is below the rest, and a `lax.map` runs the chunks one "
        "after another. The rows in parentheses split that floor into its parts (the "
        "summaries give each as EW + x·|J|). The bound with the Jacobian as the only extra "
        f"buffer, EW + |J| + k·w, holds for {held(report, 'within_jacobian_only')}.",
    ]
    for trunk, section in report["trunks"].items():
        t = section["terms"]
        s = section["sizes"]
        model = ("the seed's ConvNet on 32x32x3 images" if trunk == "conv"
                 else f"MLP {'-'.join(map(str, s['widths']))} on {s['in_features']}-dim inputs")
        lines += [
            "", f"## {model}, batch {s['batch']}, T = {report['tasks']}", "",
            f"P = {t['shared_params']:,}; |J| = {mib(t['jacobian'])} MiB, |dZ| = "
            f"{mib(t['cotangents'])} MiB, w = {mib(t['per_task'])} MiB; floor of the bound "
            f"(k = 1, less EW) {mib(3 * t['jacobian'] + 2 * t['cotangents'] + t['per_task'])} "
            "MiB.", "",
            *table(section["rows"], on_gpu), "", *summary(section["rows"], t["jacobian"]),
        ]
    return "\n".join(lines) + "\n"


def held(report: dict[str, Any], key: str) -> str:
    """``"every row"`` or ``"n of m rows"``: how many per-task-gradient rows have ``key``."""
    flags = [r[key] for section in report["trunks"].values() for r in section["rows"]
             if key in r]
    return "every row" if all(flags) else f"{sum(flags)} of {len(flags)} rows"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a tiny MLP, EW and PCGrad, chunks all, 8, 1 (a smoke run)")
    parser.add_argument("--trunks", default=None,
                        help="comma-separated subset of the plan's trunks (mlp, conv)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed steps per row, 0 for none (default: the plan's)")
    parser.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                        help="each row in a fresh process (default: where the device keeps "
                             "a peak statistic, i.e. on a GPU)")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure, write ``memory_<backend>[_quick].{json,md}``, and return the report."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    plan = PLANS["quick" if args.quick else "full"]
    names = args.trunks.split(",") if args.trunks else list(plan)
    isolate = (jax.devices()[0].memory_stats() is not None if args.isolate is None
               else args.isolate)
    start = time.perf_counter()
    report: dict[str, Any] = {
        "backend": jax.default_backend(), "tasks": NUM_TASKS,
        "command": shlex.join([*(f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY",)
                                 if k in os.environ), "python", "benchmarks/memory.py", *argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(), "isolated": isolate, "trunks": {},
    }
    for name in names:
        setting = plan[name]
        if args.repeats is not None:
            setting = dataclasses.replace(setting, repeats=args.repeats)
        t = terms(setting.sizes, NUM_TASKS)
        rows = run(setting, NUM_TASKS, isolate)
        annotate(rows, t, NUM_TASKS)
        report["trunks"][name] = {"sizes": dataclasses.asdict(setting.sizes), "terms": t,
                                  "repeats": setting.repeats, "rows": rows}
    report["wall_s"] = time.perf_counter() - start
    stem = f"memory_{report['backend']}" + ("_quick" if args.quick else "")
    write_report(report, markdown(report), args.out / stem)
    return report


if __name__ == "__main__":
    main()
