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
# # MultiFashion: two tasks in one image
#
# MultiFashion puts two Fashion-MNIST items on one image: one at the top-left,
# one at the bottom-right, overlapping (the MultiMNIST recipe of Sener & Koltun,
# NeurIPS 2018). Task `"left"` names the top-left item's class, task `"right"`
# the bottom-right one's. Both tasks read the same pixels, and where the items
# overlap they compete for the shared features: a standard benchmark for how a
# method balances two tasks.
#
# This notebook loads the data, shows a few pairs, trains Sener & Koltun's
# MultiLeNet with two methods (equal weighting and MGDA-UB) and their
# single-task baselines, and plots the accuracy trade-off. The full comparison
# of every method is `mtl-jax reproduce multifashion`
# (`benchmarks/results/multifashion.md`).
#
# The data come from Debian's `dataset-fashion-mnist` package
# (`apt-get install dataset-fashion-mnist`), read from
# `/usr/share/datasets/fashion-mnist`; nothing is downloaded. Where it is not
# installed, the notebook writes a small synthetic data set in Fashion-MNIST's
# file format instead and says so.
#
# Paired with `multifashion.py` by [jupytext](https://jupytext.readthedocs.io).

# %%
import tempfile

import jax
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

import mtl_jax
from mtl_jax.data import idx, multifashion
from mtl_jax.experiment import Config, run

# %% [markdown]
# ## 1. The data
#
# `multifashion()` reads the four IDX files, checks them (headers, sizes, labels,
# 6,000 / 1,000 images per class), and builds the pairs: test pairs only from the
# test split. Building 60,000 pairs takes about a second and is cached.
#
# Without the package, `synthetic_idx` writes 600 / 200 images of ten textured
# shapes (one per class, randomly shifted and noisy) in the same four-file layout;
# everything below then runs the same way, on easier data.

# %%
def synthetic_idx(folder, sizes=(600, 200), seed=0):
    """Write a small Fashion-MNIST look-alike (ten shapes + noise) as IDX files."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:28, :28]
    shapes = [(np.abs(rows - 14) < 2 + k) & (np.abs(cols - 14) < 12 - k) if k % 2 else
              (np.hypot(rows - 14, cols - 14) < 4 + k) for k in range(10)]
    for split, n in zip(("train", "test"), sizes):
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        shifts = rng.integers(-3, 4, size=(n, 2))
        images = np.stack([np.roll(shapes[c], tuple(s), axis=(0, 1)) for c, s in
                           zip(labels, shifts)]) * rng.uniform(120, 255, size=(n, 1, 1))
        images = np.clip(images + rng.normal(0, 25, images.shape), 0, 255).astype(np.uint8)
        images_file, labels_file = idx.FILES[split]
        idx.write_idx(f"{folder}/{images_file}.gz", images)
        idx.write_idx(f"{folder}/{labels_file}.gz", labels)
    return folder


try:
    idx.find_files("fashion-mnist")
    data_dir, NUM_TRAIN, NUM_TEST = None, 60_000, 2_000
    print("Fashion-MNIST found in", idx.RELEASES["fashion-mnist"].default_dir)
except FileNotFoundError as error:
    data_dir = synthetic_idx(tempfile.mkdtemp(prefix="mtl_jax_multifashion_"))
    NUM_TRAIN, NUM_TEST = 6_000, 1_000
    print(f"{error}\n-> using a small synthetic stand-in written to {data_dir}")

train, test = multifashion(data_dir=data_dir, num_train=NUM_TRAIN, num_test=NUM_TEST)
print(f"train: {len(train):,} pairs {train.x.shape[1:]}, test: {len(test):,}; "
      f"tasks {list(train.y)}")

CLASSES = ["T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "boot"]
fig, axes = plt.subplots(2, 6, figsize=(10, 3.8))
for i, ax in enumerate(axes.flat):
    ax.imshow(train.x[i, :, :, 0], cmap="gray_r")
    ax.set_title(f"{CLASSES[train.y['left'][i]]} /\n{CLASSES[train.y['right'][i]]}",
                 fontsize=8)
    ax.axis("off")
fig.suptitle("MultiFashion pairs: top-left / bottom-right item")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 2. The model
#
# `MultiLeNet` is Sener & Koltun's shared LeNet (two 5x5 convolutions with 10 and
# 20 channels, a 50-wide representation); `MultiLeNetHeads` their per-task heads
# (dense 50, ReLU, dense 10), kept on a task axis. `mtl-jax train --trunk lenet`
# builds the same model.

# %%
model = mtl_jax.models.HardSharing(mtl_jax.models.MultiLeNet(),
                                   mtl_jax.models.MultiLeNetHeads(("left", "right"), 10))
params = model.init(jax.random.key(0), train.x[:2])
for path, leaf in jax.tree_util.tree_leaves_with_path(params["params"]):
    print(f"  {jax.tree_util.keystr(path, simple=True, separator='/'):22s} {leaf.shape}")
print(f"{sum(leaf.size for leaf in jax.tree_util.tree_leaves(params)):,} parameters")

# %% [markdown]
# ## 3. Two methods, their seeds and the single-task baselines
#
# `mtl_jax.experiment.run` trains a `Config` (what `mtl-jax train` runs): each
# method's seeds form one compiled ensemble, and the EW program also holds the
# single-task baselines (one member per task and seed, trained on that task's
# loss alone). MGDA-UB (`mgda_ub`) weighs the tasks by the min-norm combination
# of their gradients with respect to the shared representation.

# %%
STEPS, BATCH, SEEDS = 150, 64, 2


def train_method(method):
    config = Config(dataset="multifashion", data_dir=data_dir, num_train=NUM_TRAIN,
                    num_test=NUM_TEST, trunk="lenet", method=method, steps=STEPS,
                    batch_size=BATCH, seeds=SEEDS, baselines=method == "ew", eval_every=0)
    return run(config, progress=False)


reports = {method: train_method(method) for method in ("ew", "mgda_ub")}
rows = {name: mtl_jax.metrics.mean_std(report.runs) for name, report in reports.items()}
rows["single-task"] = mtl_jax.metrics.mean_std(reports["ew"].baselines)
display(Markdown(mtl_jax.metrics.markdown_table(rows, reports["ew"].tasks.higher_is_better,
                                                digits=3)))

# %% [markdown]
# ## 4. The trade-off
#
# Each point is one seed; the dashed lines are the single-task accuracies. A
# method above and to the right of another is better on both tasks. After this
# short run the differences between methods are within the seeds' spread; the
# reproduction trains longer and runs every method.

# %%
def accuracies(runs):
    return np.array([[r["left"]["accuracy"], r["right"]["accuracy"]] for r in runs])


fig, ax = plt.subplots(figsize=(5.5, 4.5))
for name, report in reports.items():
    points = accuracies(report.runs)
    ax.scatter(points[:, 0], points[:, 1], label=name, s=40, edgecolors="k")
base = accuracies(reports["ew"].baselines).mean(0)
ax.axvline(base[0], color="0.4", ls="--", lw=1)
ax.axhline(base[1], color="0.4", ls="--", lw=1, label="single-task")
ax.set(xlabel="left accuracy", ylabel="right accuracy",
       title=f"MultiFashion, {STEPS} steps of {BATCH}")
ax.legend()
fig.tight_layout()
plt.show()
