"""SoftSharing's two lowerings, vmapped towers against unrolled towers, on this backend.

Times one forward+backward pass of ``SoftSharing`` with the seed ConvNet as the
tower (plus a linear head), for T tasks on a batch of 32x32x3 images, with
``lowering="vmap"`` and ``lowering="unroll"`` (same parameters), and writes
``benchmarks/results/soft_sharing_lowering_<backend>.md``.

    python benchmarks/soft_sharing_lowering.py [--batch 128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import pathlib
import platform
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax.models import ConvTrunk, SoftSharing

RESULTS = pathlib.Path(__file__).parent / "results"


def median_ms(fn, repeats: int) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(args.batch, 32, 32, 3)), jnp.float32)
    tower = nn.Sequential([ConvTrunk(), nn.Dense(10)])
    lines = [f"# SoftSharing lowerings on {jax.default_backend()} "
             f"({platform.processor() or platform.machine()})", "",
             f"`python benchmarks/soft_sharing_lowering.py --batch {args.batch} --repeats "
             f"{args.repeats}`", "", "Median ms of one forward+backward pass of T seed-ConvNet "
             "towers.", "", "| T | vmap | unroll | vmap / unroll |", "|---|---|---|---|"]
    for num_tasks in (2, 8):
        names = tuple(f"t{i}" for i in range(num_tasks))
        params = SoftSharing(tower, names, "vmap").init(jax.random.key(0), x)
        times = {}
        for lowering in ("vmap", "unroll"):
            model = SoftSharing(tower, names, lowering)
            grad = jax.jit(jax.grad(lambda p, m=model: sum(
                jnp.sum(out ** 2) for out in m.apply(p, x).values())))
            times[lowering] = median_ms(lambda g=grad, p=params: g(p), args.repeats)
        lines.append(f"| {num_tasks} | {times['vmap']:.1f} | {times['unroll']:.1f} | "
                     f"{times['vmap'] / times['unroll']:.1f}× |")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"soft_sharing_lowering_{jax.default_backend()}.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
