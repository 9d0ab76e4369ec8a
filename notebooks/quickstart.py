# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # mtl_jax quickstart
#
# Your first five minutes with `mtl_jax`: load a two-task dataset, build a
# **hard-sharing** and a **soft-sharing** model, train both with the public
# API, compare them per task, and train a small **ensemble** of seeds as one
# program. Everything runs on a laptop CPU in well under a minute.
#
# This notebook is paired with `quickstart.py` by
# [jupytext](https://jupytext.readthedocs.io): edit either, then run
# `jupytext --sync notebooks/quickstart.py`.

# %%
import os

# The trace-norm penalty below takes small SVDs through OpenBLAS at every step; on a CPU,
# OpenBLAS's thread pool only slows them down (a lot, when other processes share the cores).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # must be set before numpy/jax load

import functools
import json
import pathlib
import tempfile
import time

import flax.linen as nn
import jax
import matplotlib.pyplot as plt
import numpy as np
import optax
from IPython.display import Markdown, display

import mtl_jax
import mtl_jax.data
from mtl_jax import evaluate, fit
from mtl_jax.models import HardSharing, MLPTrunk, SoftSharing, StackedHeads

STEPS, BATCH = 300, 64  # a short run: enough to separate the models, fast on a CPU
workdir = pathlib.Path(tempfile.mkdtemp(prefix="mtl_jax_quickstart_"))  # JSON-lines logs
print(f"jax {jax.__version__} on {jax.default_backend()}; logs in {workdir}")

# %% [markdown]
# ## 1. The data: MultiDigits
#
# `multidigits()` builds a download-free analogue of MultiMNIST: two 8×8 digits
# overlapping on a 12×12 canvas. Task `"left"` is the top-left digit's class,
# task `"right"` the bottom-right one's. The train and test sets are built from
# disjoint pools of source digits.

# %%
train, test = mtl_jax.data.multidigits()
print(f"train: {len(train)} images {train.x.shape[1:]}, test: {len(test)}; tasks {list(train.y)}")

fig, axes = plt.subplots(2, 6, figsize=(9, 3.4))
for i, ax in enumerate(axes.flat):
    ax.imshow(train.x[i, :, :, 0], cmap="gray_r")
    ax.set_title(f"left {train.y['left'][i]} · right {train.y['right'][i]}", fontsize=9)
    ax.axis("off")
fig.tight_layout()
plt.show()

# %% [markdown]
# A batch is `{"x": images, "y": {task: labels}}`, and `train.batch(step, batch_size, seed)`
# is a pure function of its arguments, so runs are reproducible and resumable.
# The tasks say how each output is scored (loss, metrics, shapes).

# %%
tasks = mtl_jax.Tasks([mtl_jax.classification(name, 10) for name in ("left", "right")])
directions = tasks.higher_is_better  # for the result tables
example = train.batch(0, BATCH, seed=0)
print({key: value.shape for key, value in example["y"].items()}, example["x"].shape)
print(directions)

# %% [markdown]
# ## 2. Two models
#
# * **Hard sharing**: one trunk shared by both tasks, plus one linear head per
#   task (`StackedHeads` keeps the heads' kernels on one leading task axis).
# * **Soft sharing**: one full tower (trunk + classifier) per task. Every
#   parameter gets a leading task axis of length 2, and a penalty ties the towers
#   together: here the Tucker trace norm of Yang & Hospedales (2017), which
#   favours towers that share a low-rank structure.
#
# The trunk below is a one-layer MLP. `ConvTrunk()` (the seed's ConvNet) drops
# in unchanged and is fine for hard sharing, but soft sharing with the trace
# norm on its towers takes about a minute for this run on a CPU (the trace norm
# takes SVDs of every unfolding of every weight at each step).

# %%
def trunk():
    return MLPTrunk((256,))  # or mtl_jax.models.ConvTrunk(): slower on a CPU, see above


hard_model = HardSharing(trunk(), StackedHeads(("left", "right"), 10))
soft_model = SoftSharing(nn.Sequential([trunk(), nn.Dense(10)]), names=("left", "right"))
penalty = functools.partial(mtl_jax.penalties.trace_norm, kind="tucker")

optimizer = optax.adam(1e-3)
hard_state = mtl_jax.init_state(hard_model, tasks, jax.random.key(0), example, optimizer)
# The penalty's *weight* lives in the train state; the penalty itself goes to make_train_step.
soft_state = mtl_jax.init_state(soft_model, tasks, jax.random.key(0), example, optimizer,
                                penalty_weight=1e-3)


def count(params):
    return sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))


def layout(params):
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        print(f"  {jax.tree_util.keystr(path, simple=True, separator='/'):36s} {leaf.shape}")


for name, state in (("hard sharing", hard_state), ("soft sharing", soft_state)):
    print(f"{name}: {count(state.params):,} parameters")
    layout(state.params)

# %% [markdown]
# The soft-sharing towers carry the task axis first: `(2, 144, 256)` is one
# `144 → 256` kernel per task. That stacked layout is what the penalties in
# `mtl_jax.penalties` act on, and `vmap` evaluates both towers in one call.
#
# ## 3. Training
#
# The train step is a pure function `step(state, batch) -> (state, logs)`;
# compile it with `jax.jit`. `fit` drives it over the data, evaluates at the end
# (`eval_fn`) and appends per-task training losses to a JSON-lines log.
# The eval step returns metric sums; `evaluate` accumulates them over the test
# set (in batches of 1000, so that both test batches have one shape and compile once).

# %%
def train_model(name, model, state, penalty=None):
    step = jax.jit(mtl_jax.make_train_step(model, tasks, optimizer, penalty=penalty))
    eval_step = jax.jit(mtl_jax.make_eval_step(model, tasks))
    log_path = workdir / f"{name}.jsonl"
    start = time.perf_counter()
    state, results = fit(step, state, tasks, train, steps=STEPS, batch_size=BATCH, seed=0,
                         eval_fn=lambda params: evaluate(eval_step, params, tasks, test,
                                                         batch_size=1000),
                         log_every=5, log_path=log_path, progress=False)
    print(f"{name}: {STEPS} steps in {time.perf_counter() - start:.1f} s; "
          + ", ".join(f"{t} accuracy {r['accuracy']:.3f}" for t, r in results.items()))
    return state, results, log_path


hard_state, hard_results, hard_log = train_model("hard", hard_model, hard_state)
soft_state, soft_results, soft_log = train_model("soft", soft_model, soft_state, penalty)

# %% [markdown]
# ## 4. Comparison
#
# `mtl_jax.metrics.markdown_table` turns `{method: {task: {metric: value}}}` into
# a table; arrows show which direction is better.

# %%
results = {"hard sharing": hard_results, "soft sharing + trace norm": soft_results}
display(Markdown(mtl_jax.metrics.markdown_table(results, directions, digits=3)))

# %% [markdown]
# Every line of the log is one JSON record: `{"step", "split": "train",
# "losses": {task: loss}, "loss", "penalty"}` for training, and
# `{"step", "split": "test", "metrics": ...}` for evaluations.

# %%
def read_log(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


logs = {"hard sharing": read_log(hard_log), "soft sharing + trace norm": read_log(soft_log)}
print(logs["soft sharing + trace norm"][0])

fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
for label, records in logs.items():
    records = [r for r in records if r["split"] == "train"]
    for ax, task in zip(axes, tasks.names):
        ax.plot([r["step"] for r in records], [r["losses"][task] for r in records], label=label)
for ax, task in zip(axes, tasks.names):
    ax.set(title=f"{task}: training loss", xlabel="step", yscale="log")
    ax.legend()
width = 0.38
for i, (label, result) in enumerate(results.items()):
    accuracies = [result[task]["accuracy"] for task in tasks.names]
    bars = axes[2].bar(np.arange(len(tasks)) + (i - 0.5) * width, accuracies, width, label=label)
    axes[2].bar_label(bars, fmt="%.3f", fontsize=8)
axes[2].set(title="final test accuracy (colours as left)", xticks=range(len(tasks)),
            xticklabels=tasks.names, ylim=(0.8, 1.0))
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 5. An ensemble of seeds, trained as one program
#
# `mtl_jax.ensemble.init` stacks one train state per key on a leading member
# axis; `mtl_jax.ensemble.step` lifts the train step over that axis (a `vmap`
# on accelerators, a loop over one compiled step on a CPU, where that is
# faster), and `ensemble.lift` does the same for the eval step. `fit` and
# `evaluate` work unchanged; `evaluate` then returns one result per member.
# Here the three members differ only in their initialisation (they see the same
# batches); loss weights, penalty weight and learning rate can differ per member, too.

# %%
SEEDS = 3
keys = jax.random.split(jax.random.key(1), SEEDS)
members = mtl_jax.ensemble.init(hard_model, tasks, keys, example, optimizer)
print("stacked head kernels:", members.params["params"]["heads"]["kernel"].shape)

ensemble_step = mtl_jax.ensemble.step(mtl_jax.make_train_step(hard_model, tasks, optimizer))
ensemble_eval = mtl_jax.ensemble.lift(mtl_jax.make_eval_step(hard_model, tasks))
start = time.perf_counter()
members, member_results = fit(
    ensemble_step, members, tasks, train, steps=STEPS, batch_size=BATCH, seed=0,
    eval_fn=lambda params: evaluate(ensemble_eval, params, tasks, test, batch_size=1000,
                                    members=SEEDS),
    log_every=5, log_path=workdir / "ensemble.jsonl", progress=False)
print(f"{SEEDS} members, {STEPS} steps in {time.perf_counter() - start:.1f} s")

rows = {f"hard sharing, {SEEDS} seeds": mtl_jax.metrics.mean_std(member_results), **results}
display(Markdown(mtl_jax.metrics.markdown_table(rows, directions, digits=3)))

# %% [markdown]
# ## 6. The same from the command line
#
# `mtl-jax train` runs a complete experiment: the multi-task model for every
# seed *and* its single-task baselines (same architecture, one task's loss
# each, same budget) as one ensemble. It prints per-task mean ± std and Δm%
# against the baselines, and writes `config.json`, `metrics.jsonl`,
# `curves.png`, `results.md` and checkpoints to `--out`:
#
# ```bash
# mtl-jax train --arch soft --penalty trace-tucker --penalty-weight 1e-3
# # closer to this notebook (its MLP trunk has two layers of 256):
# mtl-jax train --arch soft --penalty trace-tucker --penalty-weight 1e-3 \
#     --trunk mlp --steps 300 --batch-size 64 --seeds 3
# mtl-jax list    # architectures, penalties, datasets and trunks
# ```
#
# Resume an interrupted run with `--resume --out DIR`. Programmatically, the
# same is `mtl_jax.experiment.run(mtl_jax.experiment.Config(...), out_dir)`.
