"""The synthetic task-correlation benchmark of MMoE, every run of a model as one program.

Ma, Zhao, Yi, Chen, Hong & Chi (KDD 2018), "Modeling Task Relationships in
Multi-task Learning with Multi-gate Mixture-of-Experts", Sec. 4.3 and 6.2.1
(Fig. 3 and 4): two regression tasks whose weight vectors have cosine ``p``
(:mod:`mtl_jax.data.mmoe_synthetic`); Shared-Bottom, one-gate MoE (OMoE) and
MMoE trained at ``p ∈ {0.5, 0.9, 1.0}``, the loss averaged over 200 runs, each
with its own data and initialisation.

Every run of one model, at every ``p``, is one member of a single ``jax.vmap``-ed,
``jax.jit``-compiled program: a member draws its ``u1, u2``, its test set and
each step's batch from its own key inside the program (nothing is built on the
host), initialises its model, and trains it with a ``jax.lax.fori_loop`` over
the steps between test evaluations inside a ``jax.lax.scan`` over the
evaluations. :func:`sequential` compiles the same single-run program once and
calls it per member, for the speed comparison. Nothing depends on the backend
but the compiler options (:func:`_compiler_options`).

The paper's set-up, as far as it states it (Sec. 6.2.1): input dimension 100;
MoE models with 8 experts, each one ReLU layer of 16 units; towers of one layer
of 8 units; Shared-Bottom with one shared layer sized to the experts' parameter
count (``100 × 16 × 8 / 100 = 128`` units) and the same towers; Adam, its
learning rate grid-searched over ``{1e-4, 1e-3, 1e-2}``; 200 runs per model and
correlation. It does not give the number of examples, the batch size, the
number of steps, or ``c``, ``m``, ``α``, ``β`` (see the data module). Here
(:class:`Setup`): every step draws a fresh batch of 32 examples (online
training: the training set is ``steps × 32`` examples, each seen once); the loss
reported is the mean squared error on a fixed test set of 1,000 examples per
run. Hyperparameters (:data:`MODELS`), picked on pilot runs with seed 0 (the
reported runs use other seeds): Adam's learning rate 1e-2 for every model (it
beat 1e-3 for every model after 400 and 2,000 steps; 1e-3 overtakes it only
after about 5,000 steps); the soft-sharing penalty weights from ``{1e-3, 1e-2,
1e-1}``: 0.1 for ``l2``, 1e-3 for the trace norm (larger ones hurt).

Models (:data:`MODELS`; parameter counts in ``benchmarks/results/mmoe.md``):
the paper's three, and, with comparable parameter counts, CGC and PLE (Tang et
al., RecSys 2020; 4 shared and 2 own experts per task per level), cross-stitch
(Misra et al., CVPR 2016; per-task columns 100-64-8 stitched after each layer)
and soft parameter sharing (one 100-64-8-1 tower per task) tied by
:func:`mtl_jax.penalties.l2` (Duong et al., ACL 2015) or
:func:`mtl_jax.penalties.trace_norm` (Yang & Hospedales 2017) on the towers'
first kernels (:data:`TIED`).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import platform
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from jax import lax

from mtl_jax import penalties
from mtl_jax.data.mmoe_synthetic import (
    TASKS,
    SyntheticConfig,
    check_correlation,
    sample,
    task_weights,
)
from mtl_jax.models import CGC, PLE, CrossStitch, HardSharing, MLPTrunk, MMoE, SoftSharing
from mtl_jax.models.heads import TaskHeads
from mtl_jax.models.mmoe import Tower
from mtl_jax.plots import save_png
from mtl_jax.tasks import Tasks, regression
from mtl_jax.train import Penalty, make_train_step, state_builder

P_VALUES = (0.5, 0.9, 1.0)
"""The paper's task correlations (Fig. 3 and 4)."""
SWEEP_P = tuple(round(0.1 * i, 1) for i in range(11))
"""The finer sweep of ``p`` (``--sweep``): 0, 0.1, ..., 1."""
EXPERTS, EXPERT_WIDTH, TOWER_WIDTH = 8, 16, 8
"""The paper's MoE sizes: 8 experts of one ReLU layer of 16 units, towers of 8 units."""
BOTTOM_WIDTH = 128
"""The Shared-Bottom layer: the experts' ``8 × 16`` units (the paper's 12,800 / 100)."""
COLUMN_WIDTHS = (64, 8)
"""Cross-stitch columns and soft-sharing towers: half the bottom each, then the tower layer."""
TIED = r"layers_0/Dense_0/kernel$"
"""The soft-sharing penalties act on the towers' first kernels ``[2, 100, 64]`` (92% of the
parameters). Not on every kernel: jaxlib's batched SVD splits its batch over the CPU's
intra-op thread pool and blocks until done, so two of them at once (one per penalised
leaf) deadlock a vmapped program on a 2-thread pool; with one leaf there is one SVD per step."""

TASK_SET = Tasks([regression(name) for name in TASKS])


class Model(NamedTuple):
    """One model of the benchmark.

    Attributes:
      build: makes the flax module (two tasks ``y1, y2``, one output each).
      learning_rate: Adam's learning rate.
      summary: a line for tables and help.
      penalty: the soft-sharing penalty, or None.
      penalty_weight: its weight.
    """

    build: Callable[[], nn.Module]
    learning_rate: float
    summary: str
    penalty: Penalty | None = None
    penalty_weight: float = 0.0


def _towers() -> TaskHeads:
    return TaskHeads({name: Tower((TOWER_WIDTH,), 1) for name in TASKS})


def _expert() -> MLPTrunk:
    return MLPTrunk((EXPERT_WIDTH,))


def _column() -> nn.Module:
    return nn.Sequential([MLPTrunk(COLUMN_WIDTHS), nn.Dense(1)])


MODELS: dict[str, Model] = {
    "shared_bottom": Model(
        lambda: HardSharing(MLPTrunk((BOTTOM_WIDTH,)), _towers()), 1e-2,
        "Shared-Bottom: one shared ReLU layer of 128, a 8-1 tower per task"),
    "omoe": Model(
        lambda: MMoE(_expert(), TASKS, 1, EXPERTS, (TOWER_WIDTH,), one_gate=True), 1e-2,
        "one-gate MoE: 8 experts of 16, one softmax gate, 8-1 towers"),
    "mmoe": Model(
        lambda: MMoE(_expert(), TASKS, 1, EXPERTS, (TOWER_WIDTH,)), 1e-2,
        "MMoE: 8 experts of 16, a softmax gate per task, 8-1 towers"),
    "cgc": Model(
        lambda: CGC(_expert(), TASKS, 1, num_shared_experts=4, num_task_experts=2,
                    tower_features=(TOWER_WIDTH,)), 1e-2,
        "CGC: 4 shared + 2 per task experts of 16, 8-1 towers"),
    "ple": Model(
        lambda: PLE(_expert(), TASKS, 1, num_shared_experts=4, num_task_experts=2, levels=2,
                    tower_features=(TOWER_WIDTH,)), 1e-2,
        "PLE: two CGC levels (4 shared + 2 per task experts of 16), 8-1 towers"),
    "cross_stitch": Model(
        lambda: CrossStitch(MLPTrunk(COLUMN_WIDTHS), TASKS, 1), 1e-2,
        "cross-stitch: a 64-8 column per task, stitched after each layer, linear heads"),
    "soft_l2": Model(
        lambda: SoftSharing(_column(), TASKS), 1e-2,
        "soft sharing: a 64-8-1 tower per task, l2 penalty on the first kernels",
        functools.partial(penalties.l2, select=TIED), 1e-1),
    "soft_trace": Model(
        lambda: SoftSharing(_column(), TASKS), 1e-2,
        "soft sharing: a 64-8-1 tower per task, trace-norm (laf) penalty on the first kernels",
        functools.partial(penalties.trace_norm, select=TIED), 1e-3),
}
"""Model name → :class:`Model` (``mtl-jax reproduce mmoe --models NAME,...``)."""


def check_models(names: Sequence[str]) -> None:
    """Raise a ValueError naming the first model not in :data:`MODELS`.

    Examples:
      >>> check_models(["mmoe", "shared_bottom"])
    """
    for name in names:
        if name not in MODELS:
            raise ValueError(f"unknown mmoe model {name!r}; known: {list(MODELS)}")


@dataclasses.dataclass(frozen=True)
class Setup:
    """How every run trains and is evaluated.

    Attributes:
      steps: Adam steps per run.
      batch_size: fresh examples drawn per step.
      test_size: examples in each run's test set.
      records: test evaluations after step 0, evenly spaced up to the last step
        (at most ``steps``).
      data: the generator's constants.
    """

    steps: int = 400
    batch_size: int = 32
    test_size: int = 1000
    records: int = 20
    data: SyntheticConfig = SyntheticConfig()

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "test_size", "records"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")

    @property
    def record_steps(self) -> np.ndarray:
        """The steps at which the test loss is recorded: ``records + 1``, evenly spaced.

        Examples:
          >>> Setup(steps=10, records=4).record_steps.tolist()
          [0, 2, 5, 8, 10]
        """
        return np.unique(np.linspace(0, self.steps, self.records + 1).round().astype(int))


class Run(NamedTuple):
    """What one run (or, stacked on a leading axis, many) returns.

    Attributes:
      test: ``[R, 2]`` test MSE of each task at :attr:`Setup.record_steps`.
      train: ``[R - 1, 2]`` mean training loss of each task over the steps before
        each record.
      correlation: ``[]`` Pearson correlation of the two labels on the test set.
    """

    test: Any
    train: Any
    correlation: Any


def _as_labels(y: jax.Array) -> dict[str, jax.Array]:
    return {name: y[:, k:k + 1] for k, name in enumerate(TASKS)}


def trainer(name: str, setup: Setup = Setup(), learning_rate: float | None = None
            ) -> Callable[[jax.Array, jax.Array], Run]:
    """The single-run program ``run(key, p) -> Run`` of model ``name`` (pure; jit or vmap it).

    ``key`` seeds the run's data (``u1, u2``, test set, batches) and its
    initialisation; ``p`` is its task correlation.

    Examples:
      >>> run = jax.jit(trainer("mmoe", Setup(steps=4, batch_size=8, test_size=16, records=2)))
      >>> result = run(jax.random.key(0), 0.5)
      >>> result.test.shape, result.train.shape
      ((3, 2), (2, 2))
    """
    check_models([name])
    spec = MODELS[name]
    model = spec.build()
    optimizer = optax.adam(spec.learning_rate if learning_rate is None else learning_rate)
    step = make_train_step(model, TASK_SET, optimizer, penalty=spec.penalty)
    build = state_builder(model, optimizer)
    data = setup.data
    lengths = np.diff(setup.record_steps, prepend=0)  # 0 first: the test loss at step 0

    def run(key: jax.Array, p: jax.Array) -> Run:
        data_key, init_key = jax.random.split(key)
        weights = task_weights(jax.random.fold_in(data_key, 0), p, data)
        x_test, y_test = sample(jax.random.fold_in(data_key, 1), weights, setup.test_size, data)
        batch_key = jax.random.fold_in(data_key, 2)

        def test_losses(params) -> jax.Array:
            return TASK_SET.losses(model.apply(params, x_test), _as_labels(y_test))

        def train_step(_, carry):
            state, total = carry
            x, y = sample(jax.random.fold_in(batch_key, state.step), weights,
                          setup.batch_size, data)
            state, logs = step(state, {"x": x, "y": _as_labels(y)})
            return state, total + logs["task_losses"]

        def chunk(state, length: jax.Array):
            state, total = lax.fori_loop(0, length, train_step,
                                         (state, jnp.zeros(len(TASKS))))
            return state, (total / jnp.maximum(length, 1), test_losses(state.params))

        state = build(init_key, x_test[:setup.batch_size], jnp.ones(len(TASKS)),
                      jnp.asarray(spec.penalty_weight, jnp.float32))
        _, (train, test) = lax.scan(chunk, state, lengths)
        return Run(test, train[1:], jnp.corrcoef(y_test[:, 0], y_test[:, 1])[0, 1])

    return run


def member_inputs(runs: int, ps: Sequence[float], seed: int, stream: int = 0
                  ) -> tuple[jax.Array, jax.Array]:
    """Keys ``[len(ps) · runs]`` and correlations of the members, ``p``-major.

    Member ``j · runs + r`` is run ``r`` at ``ps[j]``. Its key depends only on
    ``(seed, stream, j · runs + r)``, not on the model: run ``r`` at ``ps[j]``
    sees the same data in every model (a paired comparison), while runs and
    correlations are independent draws. ``stream`` separates the main runs (0)
    from the sweep (1).

    Examples:
      >>> keys, ps = member_inputs(2, [0.5, 1.0], seed=0)
      >>> keys.shape, ps.tolist()
      ((4,), [0.5, 0.5, 1.0, 1.0])
    """
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be a positive int, got {runs!r}")
    if not ps:
        raise ValueError("no task correlations p given")
    values = [check_correlation(p) for p in ps]
    keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), stream),
                            len(values) * runs)
    return keys, jnp.repeat(jnp.asarray(values, jnp.float32), runs)


def _compiler_options() -> dict[str, Any] | None:
    """LLVM optimisation level 1 on XLA:CPU: a third of the compile time, the same run time.

    Measured on the 2-core benchmark machine for MMoE with 600 members: compile
    25 s → 8 s, run time unchanged (``benchmarks/results/mmoe.md``). Other
    backends keep their defaults.
    """
    return {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None


class Timed(NamedTuple):
    """Results with the seconds spent compiling and running them."""

    result: Run
    compile_s: float
    run_s: float


def vectorised(name: str, keys: jax.Array, ps: jax.Array, setup: Setup = Setup(),
               learning_rate: float | None = None) -> Timed:
    """All members ``(keys[i], ps[i])`` of model ``name`` as one ``vmap``-ed compiled program.

    Examples:
      >>> keys, ps = member_inputs(2, [0.5, 1.0], seed=0)
      >>> timed = vectorised("shared_bottom", keys, ps, Setup(steps=2, batch_size=4,
      ...                    test_size=8, records=1))
      >>> timed.result.test.shape
      (4, 2, 2)
    """
    program = jax.jit(jax.vmap(trainer(name, setup, learning_rate)))
    start = time.perf_counter()
    compiled = program.lower(keys, ps).compile(_compiler_options())
    compiled_at = time.perf_counter()
    result = jax.block_until_ready(compiled(keys, ps))
    done = time.perf_counter()
    return Timed(jax.tree_util.tree_map(np.asarray, result), compiled_at - start,
                 done - compiled_at)


def sequential(name: str, keys: jax.Array, ps: jax.Array, setup: Setup = Setup(),
               learning_rate: float | None = None) -> Timed:
    """The same members one after another: the single-run program compiled once, called per member.

    ``run_s`` is the time of all the calls (each waited for before the next).
    """
    program = jax.jit(trainer(name, setup, learning_rate))
    start = time.perf_counter()
    compiled = program.lower(keys[0], ps[0]).compile(_compiler_options())
    compiled_at = time.perf_counter()
    results = [jax.block_until_ready(compiled(key, p)) for key, p in zip(keys, ps)]
    done = time.perf_counter()
    stacked = jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]),
                                     *results)
    return Timed(stacked, compiled_at - start, done - compiled_at)


def parameter_count(name: str, dim: int = SyntheticConfig().dim) -> int:
    """Number of trainable parameters of model ``name`` for inputs of width ``dim``.

    Examples:
      >>> parameter_count("mmoe")  # experts 8 (100·16 + 16), gates 2·100·8, towers 2·145
      14818
    """
    check_models([name])
    shapes = jax.eval_shape(MODELS[name].build().init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, dim), jnp.float32))
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(shapes))


# --------------------------------------------------------------------------- summaries


def _stats(values: np.ndarray) -> dict[str, float]:
    """Mean, std, standard error, median and quartiles over the leading (run) axis."""
    q25, median, q75 = np.percentile(values, [25, 50, 75], axis=0)
    return {"mean": values.mean(0).tolist(), "std": values.std(0).tolist(),
            "sem": (values.std(0) / np.sqrt(len(values))).tolist(),
            "median": median.tolist(), "q25": q25.tolist(), "q75": q75.tolist()}


def _by_p(run: Run, ps: Sequence[float], runs: int) -> dict[str, Any]:
    """Per ``p``: curve statistics, final test losses per run and their statistics."""
    out = {}
    for j, p in enumerate(ps):
        part = slice(j * runs, (j + 1) * runs)
        test, train = run.test[part], run.train[part]
        out[f"{p:g}"] = {"curve": _stats(test), "train_curve": {"mean": train.mean(0).tolist()},
                         "final": _stats(test[:, -1]),
                         "final_runs": np.round(test[:, -1], 6).tolist(),
                         "label_correlation": _stats(run.correlation[part])}
    return out


def table(summary: Mapping[str, Any]) -> str:
    """The Markdown table of a :func:`benchmark` summary: final test MSE per task, mean ± std."""
    ps = summary["setup"]["p"]
    head = ["model", "params"] + [f"p = {p:g}, {t}" for p in ps for t in TASKS]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for name, result in summary["models"].items():
        cells = []
        for p in ps:
            final = result["p"][f"{p:g}"]["final"]
            cells += [f"{m:.3f} ± {s:.3f}" for m, s in zip(final["mean"], final["std"])]
        lines.append(f"| {name} | {result['params']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gap_table(summary: Mapping[str, Any], baseline: str = "shared_bottom") -> str:
    """Paired differences ``baseline − model`` of the final test MSE (both tasks' mean).

    Each run's data are the same for every model, so the difference is taken per
    run; cells are its mean ± standard error. Positive: the model is better.
    """
    models = summary["models"]
    if baseline not in models:
        return ""
    ps = summary["setup"]["p"]
    head = ["model"] + [f"p = {p:g}" for p in ps]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * len(ps)]
    for name, result in models.items():
        if name == baseline:
            continue
        cells = []
        for p in ps:
            base = np.mean(models[baseline]["p"][f"{p:g}"]["final_runs"], axis=1)
            diff = base - np.mean(result["p"][f"{p:g}"]["final_runs"], axis=1)
            cells.append(f"{diff.mean():+.3f} ± {diff.std() / np.sqrt(len(diff)):.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def speed_table(summary: Mapping[str, Any]) -> str:
    """Seconds per model: the vectorised program and the sequential runs (extrapolated)."""
    lines = ["| model | members | vmapped compile s | vmapped run s | vmapped total s "
             "| sequential compile s | s per run | sequential total s (extrapolated) "
             "| speed-up |",
             "| --- |" + " ---: |" * 8]
    for name, result in summary["models"].items():
        vec, seq = result["vectorised"], result.get("sequential")
        cells = [f"{vec['members']}", f"{vec['compile_s']:.1f}", f"{vec['run_s']:.1f}",
                 f"{vec['compile_s'] + vec['run_s']:.1f}"]
        if seq:
            cells += [f"{seq['compile_s']:.1f}", f"{seq['per_run_s']:.3f}",
                      f"{seq['total_s']:.1f}",
                      f"{seq['total_s'] / (vec['compile_s'] + vec['run_s']):.1f}×"]
        else:
            cells += ["—"] * 4
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots

_COLORS = plt.get_cmap("tab10").colors


def plot_curves(summary: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Test MSE vs step, one panel per task (rows) and ``p`` (columns).

    Each model: the mean over runs (line) and the runs' interquartile range (band).
    """
    ps, steps = summary["setup"]["p"], summary["setup"]["record_steps"]
    fig, axes = plt.subplots(len(TASKS), len(ps), figsize=(4.6 * len(ps), 3.6 * len(TASKS)),
                             squeeze=False, sharex=True, sharey=True)
    for col, p in enumerate(ps):
        for row, task in enumerate(TASKS):
            ax = axes[row, col]
            for i, (name, result) in enumerate(summary["models"].items()):
                curve = result["p"][f"{p:g}"]["curve"]
                mean = np.asarray(curve["mean"])[:, row]
                ax.fill_between(steps, np.asarray(curve["q25"])[:, row],
                                np.asarray(curve["q75"])[:, row], color=_COLORS[i], alpha=0.12,
                                lw=0)
                ax.plot(steps, mean, color=_COLORS[i], lw=1.6, label=name)
            ax.set_yscale("log")
            ax.grid(alpha=0.3, which="both")
            ax.set_title(f"task {task}, p = {p:g}")
            if row == len(TASKS) - 1:
                ax.set_xlabel("step")
            if col == 0:
                ax.set_ylabel("test MSE")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8), frameon=False)
    setup = summary["setup"]
    fig.suptitle(f"MMoE synthetic benchmark: test MSE, mean of {setup['runs']} runs per p "
                 f"(band: interquartile range over runs)")
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    save_png(fig, path, dpi=80)


def plot_sweep(summary: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Label correlation vs ``p``, and the final test MSE (tasks' mean) vs ``p`` per model."""
    sweep = summary["sweep"]
    ps = np.asarray(sweep["p"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6),
                                      gridspec_kw={"width_ratios": [1, 1.6]})
    corr = sweep["label_correlation"]
    left.errorbar(ps, corr["mean"], yerr=corr["std"], fmt="o-", color="k", capsize=3,
                  label="labels y1, y2 (mean ± std over runs)")
    data = summary["setup"]["data"]
    linear = ps * data["scale"] ** 2 / (data["scale"] ** 2 + data["noise_std"] ** 2)
    left.plot(ps, linear, "--", color="0.5", label="linear labels (no sines): p c²/(c² + σ²)")
    left.set_xlabel("task correlation p = cos(w1, w2)")
    left.set_ylabel("Pearson correlation of the labels")
    left.legend(frameon=False, fontsize=9)
    left.grid(alpha=0.3)
    for i, (name, result) in enumerate(sweep["models"].items()):
        mean, sem = np.asarray(result["mean"]), np.asarray(result["sem"])
        right.fill_between(ps, mean - sem, mean + sem, color=_COLORS[i], alpha=0.2, lw=0)
        right.plot(ps, mean, "o-", ms=3, color=_COLORS[i], label=name)
    right.set_xlabel("task correlation p")
    right.set_ylabel(f"final test MSE (mean of both tasks, step {summary['setup']['steps']})")
    right.set_yscale("log")
    right.grid(alpha=0.3, which="both")
    right.legend(frameon=False, fontsize=9, ncol=2)
    right.set_title(f"mean of {sweep['runs']} runs per p (band: ± standard error)")
    fig.tight_layout()
    save_png(fig, path, dpi=80)


# --------------------------------------------------------------------------- benchmark


def benchmark(models: Sequence[str] | None = None, *, runs: int = 20,
              ps: Sequence[float] = P_VALUES, sweep_runs: int = 0, setup: Setup = Setup(),
              learning_rate: float | None = None, sequential_runs: int = 0, seed: int = 0,
              out: str | os.PathLike = ".",
              log: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Train ``models`` (default all of :data:`MODELS`) at every ``p``; write the results.

    Each model's main runs (``runs`` per ``p``) and sweep runs (``sweep_runs`` per
    ``p`` of :data:`SWEEP_P`, if any) are the members of one compiled program.
    With ``sequential_runs`` the first that many members are also run one after
    another with the single-run program, and the sequential time of all members
    is extrapolated from theirs; their results are compared with the
    vectorised ones (``max_abs_diff``).

    Writes ``mmoe.json`` (setup, parameter counts, curves, final losses of every
    run, label correlations, timings), ``mmoe.md`` (tables), ``mmoe_curves.png``
    and, with a sweep, ``mmoe_sweep.png`` into ``out`` (created if missing).

    Returns:
      The summary written to ``mmoe.json``.
    """
    models = list(MODELS if models is None else models)
    if not models:
        raise ValueError("no models to run; known: " + ", ".join(MODELS))
    check_models(models)
    ps = [check_correlation(p) for p in ps]
    if len(set(ps)) != len(ps):
        raise ValueError(f"the task correlations p must be distinct, got {ps}")
    if isinstance(sweep_runs, bool) or not isinstance(sweep_runs, int) or sweep_runs < 0:
        raise ValueError(f"sweep_runs must be an int >= 0, got {sweep_runs!r}")
    if isinstance(sequential_runs, bool) or not isinstance(sequential_runs, int) \
            or sequential_runs < 0:
        raise ValueError(f"sequential_runs must be an int >= 0, got {sequential_runs!r}")
    started = time.perf_counter()
    keys, member_ps = member_inputs(runs, ps, seed)
    main = len(keys)
    if sweep_runs:
        sweep_keys, sweep_ps = member_inputs(sweep_runs, SWEEP_P, seed, stream=1)
        keys = jnp.concatenate([keys, sweep_keys])
        member_ps = jnp.concatenate([member_ps, sweep_ps])
    results, sweep = {}, {}
    for name in models:
        timed = vectorised(name, keys, member_ps, setup, learning_rate)
        spec = MODELS[name]
        result = {"summary": spec.summary, "params": parameter_count(name, setup.data.dim),
                  "learning_rate": spec.learning_rate if learning_rate is None
                  else learning_rate,
                  "penalty_weight": spec.penalty_weight,
                  "vectorised": {"members": len(keys), "compile_s": timed.compile_s,
                                 "run_s": timed.run_s}}
        main_part = Run(*(np.asarray(a)[:main] for a in timed.result))
        result["p"] = _by_p(main_part, ps, runs)
        line = (f"{name:14s} {len(keys)} members: compile {timed.compile_s:5.1f} s, "
                f"run {timed.run_s:6.1f} s")
        if sequential_runs:
            count = min(sequential_runs, len(keys))
            alone = sequential(name, keys[:count], member_ps[:count], setup, learning_rate)
            per_run = alone.run_s / count
            result["sequential"] = {
                "runs_timed": count, "compile_s": alone.compile_s, "per_run_s": per_run,
                "total_s": alone.compile_s + per_run * len(keys),
                "max_abs_diff": float(np.max(np.abs(alone.result.test
                                                    - timed.result.test[:count])))}
            line += (f"; sequential: compile {alone.compile_s:4.1f} s, "
                     f"{per_run:.3f} s per run")
        if sweep_runs:
            finals = timed.result.test[main:, -1].mean(-1)
            sweep[name] = [_stats(finals[j * sweep_runs:(j + 1) * sweep_runs])
                           for j in range(len(SWEEP_P))]
            sweep_correlation = timed.result.correlation[main:]
        results[name] = result
        log(line)
    summary = {
        "setup": {"runs": runs, "p": ps, "steps": setup.steps, "batch_size": setup.batch_size,
                  "test_size": setup.test_size, "record_steps": setup.record_steps.tolist(),
                  "seed": seed, "optimizer": "adam",
                  "data": dataclasses.asdict(setup.data),
                  "source": "Ma et al., KDD 2018, Sec. 4.2, 4.3, 6.2.1"},
        "models": results,
    }
    if sweep_runs:
        summary["sweep"] = {
            "p": list(SWEEP_P), "runs": sweep_runs,
            "label_correlation": _stats(sweep_correlation.reshape(len(SWEEP_P), sweep_runs).T),
            "models": {name: {k: [s[k] for s in stats] for k in ("mean", "std", "sem")}
                       for name, stats in sweep.items()}}
    os.makedirs(out, exist_ok=True)
    plot_curves(summary, os.path.join(out, "mmoe_curves.png"))
    if sweep_runs:
        plot_sweep(summary, os.path.join(out, "mmoe_sweep.png"))
    summary.update({
        "total_s": time.perf_counter() - started,
        "date": f"{datetime.datetime.now():%Y-%m-%d %H:%M}",
        "machine": {"devices": [str(d) for d in jax.devices()], "cpus": os.cpu_count(),
                    "processor": _processor(), "jax": jax.__version__,
                    "python": platform.python_version()},
    })
    with open(os.path.join(out, "mmoe.json"), "w") as f:
        f.write(_dumps(summary))
    with open(os.path.join(out, "mmoe.md"), "w") as f:
        f.write(report(summary))
    return summary


def _dumps(summary: Mapping[str, Any]) -> str:
    """JSON with floats to 6 significant digits and every list of numbers on one line."""
    text = json.dumps(_rounded(summary), indent=1)
    return re.sub(r"\[[-+0-9.eE,\s]*\]", lambda m: re.sub(r"\s+", "", m.group()), text)


def _rounded(tree: Any) -> Any:
    if isinstance(tree, float):
        return float(f"{tree:.6g}")
    if isinstance(tree, Mapping):
        return {k: _rounded(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [_rounded(v) for v in tree]
    return tree


def _processor() -> str:
    """The CPU model name (from ``/proc/cpuinfo`` where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def report(summary: Mapping[str, Any]) -> str:
    """The Markdown report of a :func:`benchmark` summary (tables, speed, machine)."""
    setup, machine = summary["setup"], summary["machine"]
    corr = {p: summary["models"][next(iter(summary["models"]))]["p"][f"{p:g}"]
            ["label_correlation"] for p in setup["p"]}
    vec_total = sum(r["vectorised"]["compile_s"] + r["vectorised"]["run_s"]
                    for r in summary["models"].values())
    lines = [
        "# MMoE synthetic benchmark (Ma et al., KDD 2018, Sec. 4.3 and 6.2.1)", "",
        f"{setup['runs']} runs per model and p ∈ {{{', '.join(f'{p:g}' for p in setup['p'])}}}"
        f", {setup['steps']:,} Adam steps of {setup['batch_size']} fresh examples, test MSE on "
        f"{setup['test_size']:,} examples per run; data: {setup['data']}. "
        f"Machine: {machine['processor']} ({machine['cpus']} CPUs), {machine['devices']}, "
        f"JAX {machine['jax']}. Total {summary['total_s']:.0f} s.", "",
        "Final test MSE per task (mean ± std over runs):", "", table(summary), "",
        "Shared-Bottom minus model, final test MSE (mean of both tasks), per-run paired "
        "difference, mean ± standard error (positive: the model is better):", "",
        gap_table(summary), "",
        "Pearson correlation of the labels (test sets; mean ± std over runs): "
        + ", ".join(f"p = {p:g}: {c['mean']:.3f} ± {c['std']:.3f}" for p, c in corr.items())
        + ".", "",
        f"Speed (vectorised total {vec_total:.1f} s):", "", speed_table(summary), ""]
    return "\n".join(lines)
