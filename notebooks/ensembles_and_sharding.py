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
# # Ensembles and sharding: a hyperparameter sweep as one program
#
# A typical MTL question is "how do the task weights and the learning rate
# trade the tasks off?": a grid of runs. In `mtl_jax` every hyperparameter that
# varies between such runs (loss weights, penalty weight, the learning rate)
# lives in the train state, not in the compiled step, so the whole grid trains
# as **one** compiled program: the train states are stacked on a leading
# *member* axis and the step is `vmap`-ed over it.
#
# This notebook:
#
# 1. simulates 8 devices on the CPU;
# 2. trains a 4 × 5 grid (learning rate × loss weights, 20 members) on
#    MultiDigits as one vmapped program, tabulates and plots it, and checks that
#    a member is exactly the model you would get by training it alone;
# 3. runs the same sweep sharded over the 8 devices (4 groups of members, each
#    batch split in 2), shows where each member lives, and compares the result;
# 4. shows the command-line equivalent, and
# 5. how the same runs span several hosts.
#
# It runs in well under a minute on a 2-core CPU. Paired with
# `ensembles_and_sharding.py` by [jupytext](https://jupytext.readthedocs.io).

# %%
import os

# XLA reads XLA_FLAGS once, when JAX initialises its CPU backend, so this must run
# before `import jax` (restart the kernel if JAX was already imported). The flag
# splits the host CPU into 8 "devices" that share its cores: enough to try out
# meshes and sharding on a laptop. On a machine with 8 real accelerators, drop both lines.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")
os.environ["JAX_PLATFORMS"] = "cpu"  # simulate on the host even where a GPU is visible

import time

import jax
import matplotlib.pyplot as plt
import numpy as np
import optax
from IPython.display import Markdown, display

import mtl_jax
from mtl_jax import ensemble, sharding
from mtl_jax.data import multidigits
from mtl_jax.models import HardSharing, MLPTrunk, StackedHeads

assert jax.device_count() == 8, (
    f"{jax.device_count()} devices: JAX was imported before XLA_FLAGS was set; restart the kernel")
print(f"jax {jax.__version__}: {jax.devices()}")

# %% [markdown]
# ## 1. Data, tasks and model
#
# MultiDigits: two 8×8 digits overlapping on a 12×12 canvas; task `left` is the
# top-left digit's class, `right` the bottom-right one's. The model is hard
# sharing with a one-layer MLP trunk (fast on a CPU) and a linear head per task.

# %%
STEPS, BATCH = 200, 64  # a short run: enough to rank the grid, fast on a CPU
train, test = multidigits()
names = tuple(train.y)
tasks = mtl_jax.Tasks([mtl_jax.classification(name, 10) for name in names])
model = HardSharing(MLPTrunk((256,)), StackedHeads(names, 10))
example = train.batch(0, BATCH, seed=0)
print(f"{len(train)} training and {len(test)} test pairs, tasks {names}")

# %% [markdown]
# ## 2. The sweep: 20 members, one program
#
# The grid: 4 learning rates × 5 weightings `(w, 1 − w)` of the losses of
# `left` and `right`. Members are ordered learning rate first, so members 0–4
# share the smallest learning rate, 5–9 the next, and so on.
#
# `ensemble.init` builds one train state per PRNG key and stacks them. Loss
# weights are given per member (`[N, T]`), and so is the learning rate: that
# needs an optimizer whose learning rate is part of its *state*, which is what
# `optax.inject_hyperparams` does (the `1e-3` below is only a placeholder that
# `ensemble.init` overwrites member by member). The penalty weight of soft
# sharing (`penalty_weight=[...]`, one per member) would be swept the same way.
#
# Every member gets its own key, hence its own initialisation; pass one key
# repeated to compare hyperparameters from the same starting point instead.

# %%
LEARNING_RATES = (3e-4, 1e-3, 3e-3, 1e-2)
LEFT_WEIGHTS = (0.1, 0.3, 0.5, 0.7, 0.9)
grid = [(lr, w) for lr in LEARNING_RATES for w in LEFT_WEIGHTS]
MEMBERS = len(grid)
rates = np.array([lr for lr, _ in grid])
loss_weights = np.array([[w, 1 - w] for _, w in grid])  # [members, tasks]

optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
keys = jax.random.split(jax.random.key(0), MEMBERS)
initial = ensemble.init(model, tasks, keys, example, optimizer,
                        loss_weights=loss_weights, learning_rate=rates)
# The ensemble's train step *donates* its input states (their buffers are reused
# for the result). Keep a host copy of the initial states to train them again below.
initial = jax.device_get(initial)
print("trunk kernel:", initial.params["params"]["trunk"]["Dense_0"]["kernel"].shape,
      "| loss_weights:", initial.loss_weights.shape,
      "| learning rates:", initial.opt_state.hyperparams["learning_rate"].shape)

# %% [markdown]
# `make_train_step` builds the ordinary single-model step; `ensemble.step(...,
# "vmap")` lifts it over the member axis and compiles it once with `jax.jit`.
# (The default lowering, `"auto"`, picks `"vmap"` for an MLP; for a ConvNet on a
# CPU it loops over members instead, which XLA:CPU runs faster.) `fit` and
# `evaluate` work unchanged on ensembles; with `members=` the evaluation returns
# one result per member.

# %%
train_step = mtl_jax.make_train_step(model, tasks, optimizer)
sweep_step = ensemble.step(train_step, "vmap")
sweep_eval = ensemble.lift(mtl_jax.make_eval_step(model, tasks), "vmap")


def evaluate_members(params):
    return mtl_jax.evaluate(sweep_eval, params, tasks, test, batch_size=1000, members=MEMBERS)


start = time.perf_counter()
states, results = mtl_jax.fit(sweep_step, jax.device_put(initial), tasks, train, steps=STEPS,
                              batch_size=BATCH, seed=0, eval_fn=evaluate_members,
                              log_every=STEPS, progress=False)
sweep_seconds = time.perf_counter() - start
print(f"{MEMBERS} members x {STEPS} steps in {sweep_seconds:.1f} s (compilation included)")

# %% [markdown]
# ### Results per member

# %%
accuracy = np.array([[r[t]["accuracy"] for t in names] for r in results])  # [members, tasks]
lines = ["| member | learning rate | loss weights (left, right) | left accuracy ↑ "
         "| right accuracy ↑ | mean ↑ |", "| ---: | ---: | :---: | ---: | ---: | ---: |"]
for i, ((lr, w), acc) in enumerate(zip(grid, accuracy)):
    lines.append(f"| {i} | {lr:g} | ({w:.1f}, {1 - w:.1f}) | {acc[0]:.3f} | {acc[1]:.3f} "
                 f"| {acc.mean():.3f} |")
display(Markdown("\n".join(lines)))

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharex=True)
by_rate = accuracy.reshape(len(LEARNING_RATES), len(LEFT_WEIGHTS), len(names))
for lr, acc in zip(LEARNING_RATES, by_rate):
    for ax, values in zip(axes, (acc[:, 0], acc[:, 1], acc.mean(axis=1))):
        ax.plot(LEFT_WEIGHTS, values, "o-", label=f"lr {lr:g}")
for ax, title in zip(axes, ("left accuracy", "right accuracy", "mean accuracy")):
    ax.set(title=title, xlabel="loss weight of left (right: 1 − w)")
    ax.grid(alpha=0.3)
axes[0].legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# Moving weight to a task helps it and costs the other, most visibly at the
# smallest learning rate, where 200 steps leave both tasks undertrained; at the
# larger ones the learning rate matters more than the weighting. (With Adam,
# scaling a task's loss hardly changes the updates of its own head, since Adam
# divides each parameter's gradient by its running scale: the weights act
# through the shared trunk, where the tasks' gradients are mixed.) Twenty runs,
# one compilation, one program.
#
# ### A member is the model you would train alone
#
# Vectorising over members changes nothing about each member: train member 7
# (learning rate 1e-3, weights (0.5, 0.5)) on its own, with the same key, loss
# weights and learning rate, and compare the parameters.

# %%
i = 7
lr_i, w_i = grid[i]
alone_optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=lr_i)
alone = mtl_jax.init_state(model, tasks, keys[i], example, alone_optimizer,
                           loss_weights=loss_weights[i])
alone_step = jax.jit(mtl_jax.make_train_step(model, tasks, alone_optimizer))
alone, _ = mtl_jax.fit(alone_step, alone, tasks, train, steps=STEPS, batch_size=BATCH, seed=0,
                       log_every=STEPS, progress=False)


def max_abs_difference(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


difference = max_abs_difference(ensemble.member(states.params, i), alone.params)
print(f"member {i} (lr {lr_i:g}, weights ({w_i}, {1 - w_i})) vs. trained alone: "
      f"max |Δ parameter| = {difference:.1e}")
assert difference < 1e-3

# %% [markdown]
# The difference is float rounding (batched and unbatched matrix products may
# sum in different orders), not a different model. Rounding differences are
# not always harmless, though: section 3 shows one growing.
#
# ## 3. The same sweep over 8 devices
#
# `sharding.make_mesh(members=4, data=2)` arranges the 8 devices in a 4 × 2
# grid with named axes:
#
# * along **`members`**, the ensemble is split: each row of the mesh holds 5 of
#   the 20 members (here: one learning rate per row);
# * along **`data`**, each batch is split: the two devices of a row hold the
#   same members and see half of the batch each; XLA adds the all-reduce that
#   makes each gradient the mean over the whole batch (data parallelism).
#
# `shard_ensemble` places the states, `sharded_step` is the same vmapped step
# compiled for that placement (it places each batch with `shard_batch`), and
# `sharded_eval` evaluates the members where they are.

# %%
mesh = sharding.make_mesh(members=4, data=2)
print(mesh.devices)
sharded = sharding.shard_ensemble(initial, mesh)
kernel = sharded.params["params"]["trunk"]["Dense_0"]["kernel"]
print("trunk kernel", kernel.shape, kernel.sharding)

lines = ["| device | mesh (members, data) | members | learning rate | kernel shard |",
         "| --- | :---: | :---: | ---: | :---: |"]
for shard in sorted(kernel.addressable_shards, key=lambda s: s.device.id):
    row, column = np.argwhere(mesh.devices == shard.device)[0]
    held = range(MEMBERS)[shard.index[0]]
    lines.append(f"| {shard.device} | ({row}, {column}) | {held[0]}–{held[-1]} "
                 f"| {rates[held[0]]:g} | {shard.data.shape} |")
display(Markdown("\n".join(lines)))

batch_x = sharding.shard_batch(example, mesh)["x"]
print("a batch:", batch_x.shape, "->", {str(s.device): s.data.shape[0]
                                       for s in batch_x.addressable_shards[:2]}, "...")

# %% [markdown]
# Each device holds a `(5, 144, 256)` slice of the `(20, 144, 256)` kernel, and
# 32 of each batch's 64 examples. Train it with the same `fit` as before.

# %%
sharded_step = sharding.sharded_step(train_step, mesh)
sharded_eval = sharding.sharded_eval(mtl_jax.make_eval_step(model, tasks), mesh)
start = time.perf_counter()
sharded, sharded_results = mtl_jax.fit(
    sharded_step, sharded, tasks, train, steps=STEPS, batch_size=BATCH, seed=0,
    eval_fn=lambda params: mtl_jax.evaluate(sharded_eval, params, tasks, test, batch_size=1000,
                                            members=MEMBERS),
    log_every=STEPS, progress=False)
print(f"sharded: {STEPS} steps in {time.perf_counter() - start:.1f} s "
      f"(one device: {sweep_seconds:.1f} s)")
print("trained kernel:", sharded.params["params"]["trunk"]["Dense_0"]["kernel"].sharding.spec)

# %% [markdown]
# On simulated devices this is no faster: the 8 "devices" share the same 2
# cores and add communication. On 8 real accelerators each computes a quarter of
# the members on half of each batch.
#
# Is it the same training? Splitting the batch changes only the order in which
# the per-example gradients are summed. Compare each member with the one-device
# run, after one step and after all of them:

# %%
one_device, _ = sweep_step(jax.device_put(initial), example)
one_mesh, _ = sharded_step(sharding.shard_ensemble(initial, mesh), example)


def per_member_difference(a, b):
    leaves = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    return np.max([np.abs(np.asarray(x) - np.asarray(y)).reshape(MEMBERS, -1).max(axis=1)
                   for x, y in leaves], axis=0)


first = per_member_difference(one_device.params, one_mesh.params)
last = per_member_difference(states.params, sharded.params)
sharded_accuracy = np.array([[r[t]["accuracy"] for t in names] for r in sharded_results])
change = np.abs(sharded_accuracy - accuracy).max(axis=1)
lines = ["| learning rate | max \\|Δ parameter\\|, step 1 | max \\|Δ parameter\\|, step "
         f"{STEPS} | max \\|Δ accuracy\\| |", "| ---: | ---: | ---: | ---: |"]
for row, lr in enumerate(LEARNING_RATES):
    members = slice(row * len(LEFT_WEIGHTS), (row + 1) * len(LEFT_WEIGHTS))
    lines.append(f"| {lr:g} | {first[members].max():.1e} | {last[members].max():.1e} "
                 f"| {change[members].max():.4f} |")
display(Markdown("\n".join(lines)))
assert first.max() < 1e-4 and change.max() < 0.03

# %% [markdown]
# After one step every member agrees to float rounding. Over a whole run the
# differences usually stay at that level, but at the largest learning rate they
# can grow until the parameters differ visibly, while the test accuracies still
# agree to a few examples in 2000. That is a property of training at that
# learning rate (small perturbations grow; two GPUs or two XLA versions would
# show it too), not of the sharding: a useful warning sign of a learning rate
# near the edge of stability.
#
# ## 4. From the command line
#
# `mtl-jax train` trains an ensemble of seeds *and* their single-task baselines
# (same model and budget, one task's loss each) and reports Δm% against them;
# `--mesh members=M,data=D` runs that ensemble over an `M × D` mesh. On a CPU,
# simulate the devices as above:
#
# ```bash
# XLA_FLAGS=--xla_force_host_platform_device_count=8 \
#     mtl-jax train --trunk mlp --seeds 4 --mesh members=4,data=2 --steps 300 --batch-size 64
# ```
#
# 4 seeds plus 2 × 4 baselines make 12 members, 3 per row of the mesh; the
# members must split evenly over `members`, and `--batch-size` over `data`.
# From Python, the same run is
#
# ```python
# from mtl_jax import experiment
# config = experiment.Config(trunk="mlp", seeds=4, steps=300, batch_size=64, mesh=(4, 2))
# report = experiment.run(config, "runs/mesh")   # writes a run directory, like --out
# print(report.table())                          # per-task mean ± std and Δm%
# ```
#
# The CLI sweeps seeds (and one setting of the other flags); a grid of learning
# rates and loss weights like the one above is for the Python API.

# %% [markdown]
# ## 5. Several processes and hosts
#
# One Python process drives the devices of its own host. To train over several
# hosts (GPU nodes, a TPU pod slice), start the same `mtl-jax train` command
# once per host, each with its own `--process-id`. Each process first joins
# JAX's distributed runtime (`jax.distributed.initialize`, with the address of
# process 0 as coordinator; gloo collectives on CPUs); after that
# `jax.devices()` lists the devices of every process, and the `--mesh` spans
# them all (`members × data` is then the number of devices on all hosts).
# For example, on two hosts of 8 GPUs each (8 seeds and 16 baselines: 3
# members per row of the 8 × 2 mesh):
#
# ```bash
# # on host 0, whose address is the coordinator's:
# mtl-jax train --seeds 8 --mesh members=8,data=2 --out /shared/runs/sweep \
#     --coordinator host0:1234 --num-processes 2 --process-id 0
# # on host 1, the same command but for its index:
# mtl-jax train --seeds 8 --mesh members=8,data=2 --out /shared/runs/sweep \
#     --coordinator host0:1234 --num-processes 2 --process-id 1
# ```
#
# (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` can
# replace the flags.) Each process builds only what lives on its own devices:
# its members' states and its rows of each batch (`sharding.ShardedSource`).
# Process 0 prints the table and writes the logs, results and plots; all
# processes write the checkpoints together, so `--out` must be a directory that
# every host sees. `make_mesh` lays the devices out row by row, so with `data`
# no larger than one host's device count the gradient all-reduce usually stays
# inside a host, and members on different hosts train independently.
#
# To try it on one machine, run two processes of two simulated devices each:
#
# ```bash
# export XLA_FLAGS=--xla_force_host_platform_device_count=2
# run="mtl-jax train --trunk mlp --seeds 2 --steps 50 --mesh members=2,data=2 --out runs/two \
#      --coordinator 127.0.0.1:12345 --num-processes 2"
# $run --process-id 1 & $run --process-id 0; wait
# ```
