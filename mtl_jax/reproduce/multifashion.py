"""MultiFashion with Sener & Koltun's MultiLeNet: every method and the single-task baselines.

The MultiMNIST benchmark of Sener & Koltun, "Multi-Task Learning as
Multi-Objective Optimization" (NeurIPS 2018, Sec. 6.1), on Fashion-MNIST
(MultiFashion, Lin et al., "Pareto Multi-Task Learning", NeurIPS 2019): two
10-way tasks, the class of the top-left and of the bottom-right item of an
overlaid pair (:mod:`mtl_jax.data.multimnist`), on the MultiLeNet of
:mod:`mtl_jax.models.lenet` (hard sharing, a LeNet trunk, two-layer heads).

Each method is one :func:`mtl_jax.experiment.run`: its ``seeds`` members (each
its own initialisation; the pairs and the batch order are those of ``seed``)
trained as one compiled ensemble with Adam (``jax.vmap``-ed on accelerators; on
a CPU the ensemble's ``"auto"`` lowering loops the compiled member step, which is
faster there for convolutions). The EW program also holds the
single-task baselines (one member per task and seed: the same model trained on
that task's loss alone), so EW always runs; Δm% of every method is against
their mean accuracy. Written to ``out``: ``multifashion.json`` (per seed and
method: test accuracies, Δm%; seconds; the setup), ``multifashion.md`` (the
:func:`table`) and ``multifashion.png`` (left vs right test accuracy, a point
per seed, a colour per method).

Setups (:data:`SETUPS`): ``"full"``, the papers' scale (60,000 / 10,000 pairs,
batch 256, 100 epochs as in Sener & Koltun's code, whose learning rate also
decays by 0.85 every 10 epochs; Adam at a constant 1e-3 here), meant for a GPU;
``"reduced"``, 150 steps of 128 pairs, sized to finish every default method on a
2-core CPU in under 15 minutes (measured in ``benchmarks/results/multifashion.md``).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import matplotlib.pyplot as plt
import numpy as np

from mtl_jax import metrics
from mtl_jax.aggregators import registry
from mtl_jax.experiment import Config, Report, run
from mtl_jax.plots import save_png
from mtl_jax.reproduce import MAX_SEED, check_range

TASKS = ("left", "right")
DIRECTIONS = {task: {"accuracy": True} for task in TASKS}

METHODS: tuple[str, ...] = ("ew", "uw", "gradnorm", "mgda_ub", "pcgrad", "cagrad", "imtl_g",
                            "nash_mtl", "famo", "upgrad", "aligned_mtl")
"""The methods run by default (registry names), in the table's order."""

NAMES: dict[str, str] = {
    "ew": "EW", "uw": "UW", "gradnorm": "GradNorm", "mgda_ub": "MGDA-UB", "pcgrad": "PCGrad",
    "cagrad": "CAGrad", "imtl_g": "IMTL-G", "nash_mtl": "Nash-MTL", "famo": "FAMO",
    "upgrad": "UPGrad", "aligned_mtl": "Aligned-MTL",
}
"""Registry name → the name the papers use (others: the registry name)."""


class Setup(NamedTuple):
    """The training budget of every method.

    Attributes:
      steps: Adam steps.
      batch_size: pairs per step.
      learning_rate: Adam's learning rate.
      num_train: training pairs (from Fashion-MNIST's train split).
      num_test: test pairs (from its test split).
      seeds: members per method (initialisations).
      seed: seeds the pairs, the batch order and the initialisations.
    """

    steps: int
    batch_size: int
    learning_rate: float = 1e-3
    num_train: int = 60_000
    num_test: int = 10_000
    seeds: int = 5
    seed: int = 0

    def check(self) -> None:
        """Raise a ValueError naming the first bad field.

        Examples:
          >>> SETUPS["reduced"]._replace(steps=0).check()
          Traceback (most recent call last):
          ValueError: steps must be in [1, 2147483647], got 0
        """
        for field in ("steps", "batch_size", "num_train", "num_test", "seeds"):
            check_range(field, getattr(self, field), 1)
        if self.batch_size > self.num_train:
            raise ValueError(f"batch_size {self.batch_size} exceeds the {self.num_train} "
                             "training pairs")
        if not (np.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        check_range("seed", self.seed, 0, MAX_SEED)


SETUPS: dict[str, Setup] = {
    "full": Setup(steps=23_400, batch_size=256),
    "reduced": Setup(steps=150, batch_size=128),
}
"""``"full"``: 100 epochs of 60,000 pairs (for a GPU); ``"reduced"``: for a 2-core CPU."""


def check_methods(methods: Sequence[str]) -> None:
    """Raise a ValueError naming the first method that is not registered.

    Examples:
      >>> check_methods(["ew", "pcgrad"])
    """
    for method in methods:
        if method not in registry.METHODS:
            raise ValueError(f"unknown method {method!r}; known: {sorted(registry.METHODS)}")


def config(method: str, setup: Setup, data_dir: str | None = None) -> Config:
    """The :class:`~mtl_jax.experiment.Config` of ``method`` (with the baselines for ``"ew"``).

    Examples:
      >>> c = config("pcgrad", SETUPS["reduced"])
      >>> c.trunk, c.arch, c.baselines, c.seeds
      ('lenet', 'hard', False, 5)
    """
    return Config(dataset="multifashion", data_dir=data_dir, num_train=setup.num_train,
                  num_test=setup.num_test, arch="hard", trunk="lenet", method=method,
                  learning_rate=setup.learning_rate, steps=setup.steps,
                  batch_size=setup.batch_size, seeds=setup.seeds, seed=setup.seed,
                  baselines=method == "ew", eval_every=0)


def _percent(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return {task: 100.0 * float(results[task]["accuracy"]) for task in TASKS}


def _summarise(reports: Mapping[str, Report], seconds: Mapping[str, float]) -> dict[str, Any]:
    """Per seed and method: accuracies (%) and Δm% against the mean single-task accuracy."""
    baselines = [_percent(b) for b in reports["ew"].baselines]
    base = {task: {"accuracy": float(np.mean([b[task] for b in baselines]))} for task in TASKS}
    methods = {}
    for name, report in reports.items():
        runs = [_percent(r) for r in report.runs]
        deltas = [metrics.delta_m({t: {"accuracy": v} for t, v in r.items()}, base, DIRECTIONS)
                  for r in runs]
        methods[name] = {"runs": runs, "delta_m": deltas, "seconds": seconds[name]}
    return {"baselines": baselines, "methods": methods}


def table(summary: Mapping[str, Any]) -> str:
    """The Markdown table of a :func:`benchmark` summary: test accuracy (%) and Δm%.

    Cells are mean ± std over seeds; the single-task row is the baselines.
    """
    def cells(runs):
        return metrics.mean_std([{t: {"accuracy": r[t]} for t in TASKS} for r in runs])

    rows = {NAMES.get(m, m): cells(r["runs"]) for m, r in summary["methods"].items()}
    delta = {NAMES.get(m, m): (float(np.mean(r["delta_m"])), float(np.std(r["delta_m"])))
             for m, r in summary["methods"].items()}
    rows["single-task"], delta["single-task"] = cells(summary["baselines"]), None
    return metrics.markdown_table(rows, DIRECTIONS, delta=delta, digits=2)


def plot(summary: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Left vs right test accuracy: a point per seed, a colour per method; baselines dashed."""
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    colors = plt.get_cmap("tab20").colors
    colors, markers = colors[::2] + colors[1::2], "osD^vP"  # ten distinct hues first
    for i, (method, result) in enumerate(summary["methods"].items()):
        runs = np.array([[r["left"], r["right"]] for r in result["runs"]])
        ax.scatter(runs[:, 0], runs[:, 1], s=30, color=colors[i % len(colors)],
                   marker=markers[i % len(markers)], label=NAMES.get(method, method),
                   edgecolors="k", linewidths=0.4)
    base = np.array([[b["left"], b["right"]] for b in summary["baselines"]])
    ax.axvline(base[:, 0].mean(), color="0.4", ls="--", lw=1)
    ax.axhline(base[:, 1].mean(), color="0.4", ls="--", lw=1, label="single-task (mean)")
    setup = summary["setup"]
    ax.set(xlabel="left (top-left item) test accuracy %",
           ylabel="right (bottom-right item) test accuracy %",
           title=f"MultiFashion, MultiLeNet: {setup['steps']:,} Adam steps of "
                 f"{setup['batch_size']}, {setup['seeds']} seeds")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    save_png(fig, path)


def benchmark(methods: Sequence[str] | None = None, *, setup: Setup = SETUPS["reduced"],
              data_dir: str | None = None, out: str | os.PathLike = ".",
              log: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Train ``methods`` (default :data:`METHODS`; EW always) and write the results to ``out``.

    Every configuration is validated (methods, setup, the data files) before any
    training.

    Returns:
      The summary written to ``multifashion.json``.
    """
    methods = list(dict.fromkeys(["ew", *(METHODS if methods is None else methods)]))
    check_methods(methods)
    setup.check()
    configs = {method: config(method, setup, data_dir) for method in methods}
    for c in configs.values():
        c.validate()
    started = time.perf_counter()
    reports, seconds = {}, {}
    for method, c in configs.items():
        begin = time.perf_counter()
        reports[method] = run(c, progress=False)
        seconds[method] = time.perf_counter() - begin
        accuracy = np.mean([[r[t]["accuracy"] for t in TASKS] for r in reports[method].runs], 0)
        log(f"{NAMES.get(method, method):12s} left {100 * accuracy[0]:5.2f}%  right "
            f"{100 * accuracy[1]:5.2f}%  {seconds[method]:6.1f} s")
    summary = {
        "setup": {**setup._asdict(), "dataset": "multifashion", "model": "MultiLeNet (hard)",
                  "data_dir": data_dir or "/usr/share/datasets/fashion-mnist"},
        **_summarise(reports, seconds),
        "total_s": time.perf_counter() - started,
        "date": f"{datetime.datetime.now():%Y-%m-%d %H:%M}",
        "devices": [str(d) for d in jax.devices()],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "multifashion.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(out, "multifashion.md"), "w") as f:
        f.write(f"# MultiFashion, MultiLeNet ({setup.steps:,} Adam steps of {setup.batch_size}, "
                f"lr {setup.learning_rate:g}, {setup.num_train:,} / {setup.num_test:,} pairs, "
                f"{setup.seeds} seeds)\n\nTest accuracy (%), mean ± std over seeds; Δm% "
                f"against the single-task baselines. Total {summary['total_s']:.0f} s.\n\n"
                + table(summary) + "\n\nSeconds per method (compile, train, evaluate): "
                + ", ".join(f"{NAMES.get(m, m)} {r['seconds']:.0f}"
                            for m, r in summary["methods"].items()) + ".\n")
    plot(summary, os.path.join(out, "multifashion.png"))
    return summary
