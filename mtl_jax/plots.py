"""Figures of a run: per-task training losses and test metrics over steps; compact PNGs."""

from __future__ import annotations

import io
import json
import os
from collections import defaultdict

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from mtl_jax.tasks import Tasks


def save_png(fig: plt.Figure, path: str | os.PathLike, dpi: int = 72) -> None:
    """Save ``fig`` as a 256-colour PNG (a third of the size, the same to the eye), close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    Image.open(buffer).convert("RGB").quantize(256).save(path, optimize=True)


def _series(records, split: str, value):
    """``{(group, task, metric): {step: [values over members]}}`` from log records."""
    series = defaultdict(lambda: defaultdict(list))
    for record in records:
        if record["split"] == split:
            for key, v in value(record):
                series[key][record["step"]].append(v)
    return series


def plot_curves(log_path: str | os.PathLike, tasks: Tasks, seeds: int,
                path: str | os.PathLike) -> None:
    """Plot a run's ``metrics.jsonl``: one panel per task loss and per task metric.

    Members ``< seeds`` are the multi-task model, the rest the single-task
    baselines (only their own task is drawn). Lines are means over seeds.
    """
    with open(log_path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    group = lambda r: "multi-task" if r.get("member", 0) < seeds else "single-task"  # noqa: E731
    own = lambda r, t: r.get("member", 0) < seeds or tasks.names[  # noqa: E731
        (r["member"] - seeds) // seeds] == t
    train = _series(records, "train", lambda r: [((group(r), t, "loss"), v)
                                                 for t, v in r["losses"].items() if own(r, t)])
    test = _series(records, "test", lambda r: [((group(r), t, m), v)
                                               for t, ms in r["metrics"].items() if own(r, t)
                                               for m, v in ms.items() if m != "loss"])
    panels = [("train", t, "loss") for t in tasks.names] + [
        ("test", t.name, m) for t in tasks for m in t.metrics]
    fig, axes = plt.subplots(2, max(len(tasks), len(panels) - len(tasks)),
                             figsize=(4 * len(tasks), 6), squeeze=False)
    for ax in axes.ravel():
        ax.set_visible(False)
    for i, (split, task, metric) in enumerate(panels):
        ax = axes[0 if split == "train" else 1, i if split == "train" else i - len(tasks)]
        ax.set_visible(True)
        source = train if split == "train" else test
        for label in ("multi-task", "single-task"):
            points = source.get((label, task, metric))
            if points:
                steps = sorted(points)
                ax.plot(steps, [np.mean(points[s]) for s in steps], label=label,
                        marker="" if split == "train" else "o")
        ax.set_title(f"{task}: {split} {metric}")
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
