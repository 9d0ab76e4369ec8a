"""Which ensemble lowering is fastest on this backend: vmap, a loop of compiled steps, lax.map.

Times one train step of an ensemble of N members against one member alone, for
the seed's ConvNet and for an MLP trunk, and writes
``benchmarks/results/ensemble_lowering_<backend>.{json,md}``. ``mtl_jax.ensemble``'s
``lowering="auto"`` follows these figures.

    python benchmarks/ensemble_lowering.py [--members 8] [--batch 64] [--tasks 8]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mtl_jax as mtl
from mtl_jax.data import synthetic_images

RESULTS = pathlib.Path(__file__).parent / "results"


def median_step_time(step, state, batch, repeats: int) -> float:
    """Median seconds of ``state, _ = step(state, batch)`` after one warm-up call."""
    state = jax.block_until_ready(step(state, batch))[0]  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state = jax.block_until_ready(step(state, batch))[0]
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(trunk, name: str, members: int, batch_size: int, num_tasks: int, repeats: int):
    data = synthetic_images(num_tasks, num_examples=batch_size, seed=0)
    batch = data.batch(0, batch_size, seed=0)
    tasks = mtl.Tasks([mtl.classification(t, 10) for t in data.y])
    model = mtl.models.HardSharing(trunk, mtl.models.StackedHeads(tuple(data.y), 10))
    optimizer = optax.adam(1e-3)
    step = mtl.make_train_step(model, tasks, optimizer)
    single = mtl.init_state(model, tasks, jax.random.key(0), batch, optimizer)
    states = mtl.ensemble.init(model, tasks, jax.random.split(jax.random.key(0), members),
                               batch, optimizer)
    row = {"model": name, "members": members,
           "one member": median_step_time(jax.jit(step, donate_argnums=0), single, batch,
                                          repeats)}
    for lowering in ("vmap", "loop", "map"):
        fresh = jax.tree_util.tree_map(jnp.copy, states)  # each lowering donates its own
        row[lowering] = median_step_time(mtl.ensemble.step(step, lowering), fresh, batch,
                                         repeats)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = [measure(mtl.models.ConvTrunk(), "seed ConvNet", args.members, args.batch,
                    args.tasks, args.repeats),
            measure(mtl.models.MLPTrunk((512, 512)), "MLP 512-512", args.members, args.batch,
                    args.tasks, args.repeats)]
    backend = jax.default_backend()
    machine = f"{platform.processor() or platform.machine()}, {jax.devices()[0].device_kind}"
    command = ("python benchmarks/ensemble_lowering.py --members {members} --batch {batch} "
               "--tasks {tasks} --repeats {repeats}").format(**vars(args))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"ensemble_lowering_{backend}.json").write_text(json.dumps(
        {"backend": backend, "machine": machine, "command": command, "rows": rows}, indent=2))
    lines = [f"# Ensemble lowering on {backend} ({machine})", "", f"`{command}`", "",
             "Median seconds per train step; in brackets, the multiple of one member's step.",
             "", "| model | N | one member | vmap | loop of jitted steps | lax.map |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r[k]:.4f} ({r[k] / r['one member']:.1f}×)" for k in ("vmap", "loop", "map")]
        lines.append(f"| {r['model']} | {r['members']} | {r['one member']:.4f} | "
                     + " | ".join(cells) + " |")
    (RESULTS / f"ensemble_lowering_{backend}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
