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
# # Multi-task architectures
#
# `mtl_jax.models` holds the standard ways of sharing a network between tasks,
# all flax.linen modules mapping inputs to `{task: output}` (so they plug into
# `make_train_step` like `HardSharing`), with their per-task and per-expert
# parts stacked on a leading axis:
#
# | model | sharing | paper |
# | --- | --- | --- |
# | `HardSharing` | one trunk, per-task heads | Caruana 1997 |
# | `SoftSharing` | a tower per task, tied by a penalty | Duong 2015; Yang & Hospedales 2017 |
# | `CrossStitch` | per-task columns mixed by learned T×T units | Misra et al. 2016 |
# | `MMoE` (`one_gate=True`: OMoE) | experts mixed by one softmax gate per task | Ma et al. 2018 |
# | `CGC`, `PLE` | shared and task-specific experts, one or more levels | Tang et al. 2020 |
# | `DSelectKGates` | sparse, differentiable top-k gates for MMoE/PLE | Hazimeh et al. 2021 |
# | `MTAN` | per-task attention over a shared conv trunk | Liu et al. 2019 |
#
# This notebook: the MMoE paper's synthetic tasks, whose correlation `p` we
# control; one model per architecture and its parameter count; then every
# model trained at several correlations, many runs of every correlation as
# one compiled program, and a plot of task correlation against test loss.

# %%
import functools
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

from mtl_jax.data import mmoe_synthetic
from mtl_jax.models import MTAN, ConvTrunk, DSelectKGates, MLPTrunk, MMoE
from mtl_jax.reproduce import mmoe as bench

print(f"jax {jax.__version__} on {jax.default_backend()}")

# %% [markdown]
# ## 1. Tasks with a controlled correlation
#
# Ma et al. (KDD 2018, §4) build two regression tasks from weight vectors
# `w1 = c·u1`, `w2 = c·(p·u1 + √(1−p²)·u2)` with orthogonal unit `u1, u2`:
# `y_k = w_kᵀx + Σ_i sin(α_i w_kᵀx + β_i) + ε`. The cosine of `w1, w2` is `p`;
# the labels' correlation rises with it (less than `p` because of the sines).

# %%
for p in (0.0, 0.5, 0.9, 1.0):
    data = mmoe_synthetic(p, 5000, seed=0)
    y1, y2 = data["y"]["y1"][:, 0], data["y"]["y2"][:, 0]
    print(f"p = {p:.1f}: label correlation {np.corrcoef(y1, y2)[0, 1]:+.3f}; "
          f"x {data['x'].shape}")

# %% [markdown]
# ## 2. One model per architecture
#
# The benchmark's models (`mtl_jax.reproduce.mmoe.MODELS`) are sized like the
# paper's: comparable parameter counts. Each declares which of its parameters
# several tasks share (`model.shared`, a path regex), which is what gradient
# aggregators (`make_train_step(shared=...)`) combine.

# %%
x = jnp.zeros((4, 100))
rows = []
for name, spec in bench.MODELS.items():
    model = spec.build()
    params = model.init(jax.random.key(0), x)
    outputs = model.apply(params, x)
    rows.append(f"| {name} | {bench.parameter_count(name):,} | "
                f"`{getattr(model, 'shared', 'trunk')}` | {spec.summary} |")
    assert {k: v.shape for k, v in outputs.items()} == {"y1": (4, 1), "y2": (4, 1)}
display(Markdown("| model | parameters | shared | structure |\n| --- | ---: | --- | --- |\n"
                 + "\n".join(rows)))

# %% [markdown]
# Two more: MMoE with DSelect-k gates (each task picks k = 2 of the 8 experts,
# smoothly), and MTAN, which attends over convolutional feature maps, so it is
# shown on MultiDigits-shaped images.

# %%
dselect = MMoE(MLPTrunk((16,)), bench.TASKS, 1, num_experts=8,
               gate=functools.partial(DSelectKGates, k=2))
mtan = MTAN(ConvTrunk(), ("left", "right"), 10)
for label, model, inputs in (("MMoE + DSelect-k", dselect, x),
                             ("MTAN", mtan, jnp.zeros((2, 12, 12, 1)))):
    params = model.init(jax.random.key(0), inputs)
    count = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
    shapes = {k: v.shape for k, v in model.apply(params, inputs).items()}
    print(f"{label}: {count:,} parameters, shared {model.shared!r}, outputs {shapes}")

# %% [markdown]
# ## 3. Task correlation against performance
#
# `bench.trainer(name, setup)` is one run as a pure function of `(key, p)`: the
# key draws the run's `u1, u2`, its test set, its batches and its
# initialisation. `jax.vmap` of it trains every run of every correlation at
# once; one `jax.jit` compiles the lot. Here: 8 runs at each of 6 correlations
# (48 members per model), 300 Adam steps. `mtl-jax reproduce mmoe` runs the
# paper's scale (`benchmarks/results/mmoe.md`).

# %%
RUNS, P_GRID = 8, (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
setup = bench.Setup(steps=300, records=6)
keys, ps = bench.member_inputs(RUNS, P_GRID, seed=0)
shown = ["shared_bottom", "omoe", "mmoe", "cgc", "cross_stitch", "soft_l2"]
final, correlation = {}, None
for name in shown:
    start = time.perf_counter()
    result = jax.jit(jax.vmap(bench.trainer(name, setup)))(keys, ps)
    loss = np.asarray(result.test[:, -1].mean(axis=-1)).reshape(len(P_GRID), RUNS)
    final[name] = loss
    correlation = np.asarray(result.correlation).reshape(len(P_GRID), RUNS).mean(axis=1)
    print(f"{name:14s} {len(keys)} runs in {time.perf_counter() - start:5.1f} s "
          f"(compiling included); final test MSE at p = 1: {loss[-1].mean():.3f}")

# %% [markdown]
# Run `r` at a given `p` sees the same data in every model (`member_inputs`
# derives its key from the run only), so the paired difference to Shared-Bottom
# is much less noisy than the losses themselves.

# %%
fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 3.8))
base = final["shared_bottom"]
for i, (name, loss) in enumerate(final.items()):
    mean, err = loss.mean(axis=1), loss.std(axis=1) / np.sqrt(RUNS)
    left.errorbar(P_GRID, mean, yerr=err, marker="o", ms=3, capsize=2, color=f"C{i}",
                  label=name)
    if name != "shared_bottom":
        diff = loss - base
        middle.errorbar(P_GRID, diff.mean(axis=1), yerr=diff.std(axis=1) / np.sqrt(RUNS),
                        marker="o", ms=3, capsize=2, color=f"C{i}", label=name)
left.set(xlabel="task correlation p", ylabel="final test MSE (mean of both tasks)",
         title=f"{RUNS} runs per point, {setup.steps} steps")
left.legend(fontsize=8)
middle.axhline(0, color="0.5", lw=1)
middle.set(xlabel="task correlation p", ylabel="test MSE − Shared-Bottom's (paired)",
           title="below 0: better than Shared-Bottom")
right.plot(P_GRID, correlation, marker="o")
right.plot([0, 1], [0, 1], ls="--", color="0.6", label="p")
right.set(xlabel="task correlation p", ylabel="label correlation (test sets)",
          title="the labels' correlation rises with p")
right.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# The MMoE paper's finding is that the gap between MMoE and Shared-Bottom
# grows as the tasks' correlation falls. Eight short runs per point are too few
# to settle it (the error bars are standard errors);
# `benchmarks/results/mmoe.md` has 200 runs per setting, the paper's
# comparison, and the speed of the vectorised sweep against running the same
# runs one after another.
#
# ## 4. From the command line
#
# ```bash
# mtl-jax list archs                                   # every architecture
# mtl-jax train --arch mmoe --trunk mlp                # on MultiDigits, with baselines
# mtl-jax train --arch cgc --trunk mlp --method pcgrad # with a gradient aggregator
# mtl-jax reproduce mmoe                               # the synthetic benchmark
# ```
