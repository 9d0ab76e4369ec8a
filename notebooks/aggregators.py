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
# # Task weighting and gradient aggregation
#
# When tasks share parameters, each task's loss pulls the shared parameters its
# own way. `mtl_jax.aggregators` holds the methods that decide the update from
# those pulls: loss-based weightings (EW, UW, DWA, FAMO, ...) that need one
# backward pass, and gradient-based aggregators (MGDA, PCGrad, CAGrad, Nash-MTL,
# UPGrad, ...) that read every task's gradient. All of them are
# `optax.experimental.aggregating.Aggregator`s and run inside the compiled step.
#
# This notebook: (1) what the aggregators do to two conflicting gradients, (2)
# per-task gradients of a real model and their Gramian, (3) training the same
# model with several methods and watching their task weights.

# %%
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from IPython.display import Markdown, display

import mtl_jax
import mtl_jax.data
from mtl_jax.aggregators import registry
from mtl_jax.models import HardSharing, MLPTrunk, StackedHeads
from mtl_jax.reproduce import toy

print(f"jax {jax.__version__} on {jax.default_backend()}; {len(registry.METHODS)} methods")
for name, method in registry.METHODS.items():
    print(f"  {name:12s} wrt={method.wrt:15s} {method.summary}")

# %% [markdown]
# ## 1. Two conflicting gradients
#
# `mtl_jax.aggregators.get(name, num_tasks)` returns the aggregator and what its
# weights depend on (`wrt`). `update` takes per-task gradients (any pytree whose
# leaves have a leading task axis) and the task losses (`value=`), and returns a
# descent direction shaped like the parameters, to hand to any optax optimizer.
# Here the parameters are one 2-vector and the two gradients conflict (negative
# cosine) and differ in size by 3×.

# %%
grads = {"x": jnp.array([[3.0, 0.5], [-0.8, 1.0]])}  # rows: g1, g2
losses = jnp.array([1.0, 1.0])
params = {"x": jnp.zeros(2)}
g1, g2 = np.asarray(grads["x"])
print(f"cos(g1, g2) = {g1 @ g2 / np.linalg.norm(g1) / np.linalg.norm(g2):.3f}")

shown = ["ew", "mgda", "pcgrad", "cagrad", "imtl_g", "nash_mtl", "upgrad", "aligned_mtl",
         "dualproj", "fairgrad", "config", "gradvac"]
directions = {}
for name in shown:
    aggregator, _ = mtl_jax.aggregators.get(name, num_tasks=2)
    direction, state = jax.jit(aggregator.update)(grads, aggregator.init(params), value=losses)
    directions[name] = np.asarray(direction["x"])
    d = directions[name]
    print(f"{name:12s} weights {np.round(np.asarray(state.weights), 3)}  "
          f"<d,g1> = {d @ g1:6.2f}  <d,g2> = {d @ g2:6.2f}")

# %% [markdown]
# A direction with `<d, g_t> > 0` for both tasks decreases both losses to first
# order. Equal weighting (the sum) decreases the big task's loss and *increases*
# the small one's; MGDA's min-norm point, PCGrad's projections, UPGrad and the
# others keep both inner products non-negative, each with its own trade-off.

# %%
fig, axes = plt.subplots(2, 6, figsize=(15, 5.4), sharex=True, sharey=True)
for ax, (name, d) in zip(axes.flat, directions.items()):
    for g, colour in ((g1, "tab:blue"), (g2, "tab:orange")):
        ax.annotate("", g, (0, 0), arrowprops=dict(arrowstyle="->", color=colour, lw=1.5))
    ax.annotate("", d, (0, 0), arrowprops=dict(arrowstyle="->", color="black", lw=2.5))
    ax.set(title=name, xlim=(-1.5, 3.5), ylim=(-0.5, 2.0), aspect="equal")
    ax.grid(alpha=0.3)
fig.suptitle("g1 (blue), g2 (orange) and the aggregated direction (black)")
fig.tight_layout()
plt.show()

# %% [markdown]
# The aggregators are chainable with optax: the direction goes to an optimizer
# exactly like a gradient.

# %%
aggregator, _ = mtl_jax.aggregators.get("upgrad", num_tasks=2)
optimizer = optax.sgd(0.1)
agg_state, opt_state = aggregator.init(params), optimizer.init(params)
direction, agg_state = aggregator.update(grads, agg_state, value=losses)
updates, opt_state = optimizer.update(direction, opt_state, params)
print("new params:", optax.apply_updates(params, updates)["x"])

# %% [markdown]
# ## 2. Per-task gradients of a model
#
# `mtl_jax.jacobian.per_task_grads` returns the task losses and their Jacobian
# (every leaf `[T, ...]`) in one compiled computation: one forward pass and `T`
# vectorised backward passes (chunked with `chunk_size=` when `T` is large).
# The Gramian `G = J Jᵀ` is all most aggregators read: a `T × T` matrix,
# whatever the model's size. Here: a hard-sharing MLP on MultiDigits, two
# tasks (the left and right digit of an overlapping pair).

# %%
train, test = mtl_jax.data.multidigits()
tasks = mtl_jax.Tasks([mtl_jax.classification(name, 10) for name in ("left", "right")])
BATCH = 64
example = train.batch(0, BATCH, seed=0)
model = HardSharing(MLPTrunk((256, 256)), StackedHeads(tasks.names, 10))
variables = model.init(jax.random.key(0), example["x"])


def task_losses(trunk_params, batch):
    full = {"params": {**variables["params"], "trunk": trunk_params}}
    return tasks.losses(model.apply(full, batch["x"]), batch["y"])


@jax.jit
def jacobian(trunk_params, batch):
    return mtl_jax.jacobian.per_task_grads(lambda p: task_losses(p, batch), trunk_params)


losses, jac = jacobian(variables["params"]["trunk"], example)
G = mtl_jax.aggregators.base.gramian(jac)
norms = np.sqrt(np.diag(G))
print("losses", np.round(np.asarray(losses), 3))
print("Jacobian leaves:", jax.tree_util.tree_map(jnp.shape, jac))
print("gradient norms", np.round(norms, 3), " cosine", round(float(G[0, 1] / norms.prod()), 3))

# %% [markdown]
# ## 3. Training with several methods
#
# `make_train_step(..., aggregator=..., wrt=...)` puts the aggregator inside the
# compiled step: `wrt="parameters"` aggregates the per-task gradients of the
# shared parameters (the heads get their ordinary gradients),
# `wrt="representation"` those of the trunk's output (MGDA-UB), and
# `wrt="losses"` gives loss-based methods the losses only (one backward pass).
# `init_state` initialises the aggregator's state (FAMO's logits, Nash-MTL's
# warm start, ...) and the step logs the task weights it chose.

# %%
STEPS = 300
methods = ["ew", "mgda", "mgda_ub", "pcgrad", "nash_mtl", "upgrad", "famo"]
optimizer = optax.adam(1e-3)
eval_step = jax.jit(mtl_jax.make_eval_step(model, tasks))
results, weights, times = {}, {}, {}
for name in methods:
    aggregator, wrt = mtl_jax.aggregators.get(name, num_tasks=len(tasks))
    state = mtl_jax.init_state(model, tasks, jax.random.key(0), example, optimizer,
                               aggregator=aggregator)
    step = jax.jit(mtl_jax.make_train_step(model, tasks, optimizer, aggregator=aggregator,
                                           wrt=wrt))
    history = []
    start = time.perf_counter()
    for i in range(STEPS):
        state, logs = step(state, train.batch(i, BATCH, seed=0))
        history.append(logs["task_weights"])
    times[name] = time.perf_counter() - start
    weights[name] = np.asarray(jax.device_get(history))
    results[name] = mtl_jax.evaluate(eval_step, state.params, tasks, test, batch_size=1000)
    print(f"{name:9s} {STEPS} steps in {times[name]:5.1f} s (incl. compiling); "
          + ", ".join(f"{t} {r['accuracy']:.3f}" for t, r in results[name].items()))

display(Markdown(mtl_jax.metrics.markdown_table(results, tasks.higher_is_better, digits=3)))

# %% [markdown]
# The weights each method chose, step by step (for EW they stay at 1; MGDA's
# lie on the simplex; Nash-MTL's scale with the inverse gradient norms; FAMO's
# follow the tasks' loss decrease rates).

# %%
fig, axes = plt.subplots(1, len(methods), figsize=(2.6 * len(methods), 2.8), sharex=True)
for ax, name in zip(axes, methods):
    for t, task in enumerate(tasks.names):
        ax.plot(weights[name][:, t], label=task, lw=1)
    ax.set(title=name, xlabel="step")
axes[0].set_ylabel("task weight")
axes[0].legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. The two-task toy of the CAGrad, Nash-MTL and FAMO papers
#
# `mtl_jax.reproduce.toy` holds the papers' two-parameter problem. `toy.run`
# trains all five start points of a method as one compiled program (a `scan`
# over 35,000 Adam steps, `vmap`ped over the start points). Equal weighting
# stalls from (9, 9) and ends at the L2 end of the Pareto front from the other
# starts; MGDA drifts to the front's extremes; FAMO and IMTL-G land in its
# balanced middle (`benchmarks/results/toy.md` has every method and the papers'
# figures).

# %%
front = toy.pareto_front(scale=0.1, grid=401)
fig, axes = plt.subplots(1, 4, figsize=(14, 3.4), sharey=True)
for ax, name in zip(axes, ["ew", "mgda", "famo", "imtl_g"]):
    runs = toy.run(name)  # the default "nash" setting: L1 scaled by 0.1, 35,000 steps
    ax.plot(front.losses[:, 0], front.losses[:, 1], color="0.6", lw=5, label="Pareto front")
    for start, losses in zip(toy.STARTS, runs.losses):
        ax.plot(losses[:, 0], losses[:, 1], lw=1.2, label=f"start {start}")
        ax.plot(*losses[-1], "o", color="black", ms=4)
    ax.set(title=f"{name} ({runs.run_s:.1f} s)", xlabel="0.1 · L1")
axes[0].set_ylabel("L2")
axes[-1].legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 5. From the command line
#
# ```bash
# mtl-jax list methods                      # every method, with its paper
# mtl-jax train --method nash_mtl --seeds 3 # multi-task seeds + single-task baselines
# mtl-jax reproduce toy                     # the two-task toy of the CAGrad/Nash-MTL/FAMO papers
# ```
#
# Each method's knobs are keyword arguments of its factory, e.g.
# `mtl_jax.aggregators.get("cagrad", 2, c=0.5)`; the docstrings cite the papers
# and state where our definition differs from other implementations.
