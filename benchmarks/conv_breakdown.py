"""Where the seed ConvNet's training step spends its time: XLA against PyTorch, per conv layer.

For each convolution of the seed model (batch 256, 32x32x3 input), times the
forward convolution, the gradient with respect to the kernel and the gradient
with respect to the input, in JAX (NHWC, ``lax.conv_general_dilated``) and in
PyTorch (NCHW, ``torch.nn.functional.conv2d`` and ``torch.autograd.grad``).
Writes ``benchmarks/results/conv_breakdown_<backend>.md``.

    python benchmarks/conv_breakdown.py [--batch 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import pathlib
import platform
import time

import jax
import numpy as np
import torch
from jax import lax

RESULTS = pathlib.Path(__file__).parent / "results"
LAYERS = ((32, 3, 32), (16, 32, 64))  # input size, in channels, out channels (seed model)


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def jax_timings(x: np.ndarray, w: np.ndarray, repeats: int) -> list[float]:
    numbers = ("NHWC", "HWIO", "NHWC")
    conv = lambda v, k: lax.conv_general_dilated(v, k, (1, 1), "SAME",  # noqa: E731
                                                 dimension_numbers=numbers)
    x, w = jax.device_put(x.transpose(0, 2, 3, 1)), jax.device_put(w.transpose(2, 3, 1, 0))
    dy = conv(x, w)
    forward = jax.jit(conv)
    kernel_grad = jax.jit(lambda v, k, g: jax.vjp(lambda kk: conv(v, kk), k)[1](g)[0])
    input_grad = jax.jit(lambda v, k, g: jax.vjp(lambda vv: conv(vv, k), v)[1](g)[0])
    return [median_ms(lambda f=f, a=a: jax.block_until_ready(f(*a)), repeats)
            for f, a in ((forward, (x, w)), (kernel_grad, (x, w, dy)), (input_grad, (x, w, dy)))]


def torch_timings(x: np.ndarray, w: np.ndarray, repeats: int) -> list[float]:
    conv = torch.nn.functional.conv2d
    x, w = torch.from_numpy(x).requires_grad_(), torch.from_numpy(w).requires_grad_()
    dy = conv(x, w, padding=1).detach()

    def grad(wrt):
        return lambda: torch.autograd.grad(conv(x, w, padding=1), wrt, dy)

    with torch.no_grad():
        forward = median_ms(lambda: conv(x, w, padding=1), repeats)
    # autograd.grad includes the forward pass; subtract it to get the gradient alone.
    return [forward, median_ms(grad(w), repeats) - forward, median_ms(grad(x), repeats) - forward]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    lines = [f"# Convolution cost per layer on {jax.default_backend()} "
             f"({platform.processor() or platform.machine()}, torch threads "
             f"{torch.get_num_threads()})", "",
             f"`python benchmarks/conv_breakdown.py --batch {args.batch} --repeats "
             f"{args.repeats}`", "", "Median ms per call.", "",
             "| layer | op | JAX (XLA) | PyTorch | XLA / PyTorch |", "|---|---|---|---|---|"]
    for size, cin, cout in LAYERS:
        x = rng.normal(size=(args.batch, cin, size, size)).astype(np.float32)
        w = rng.normal(size=(cout, cin, 3, 3)).astype(np.float32)
        ours, theirs = jax_timings(x, w, args.repeats), torch_timings(x, w, args.repeats)
        for op, a, b in zip(("forward", "d kernel", "d input"), ours, theirs):
            lines.append(f"| conv {cin}→{cout} on {size}×{size} | {op} | {a:.1f} | {b:.1f} | "
                         f"{a / b:.2f} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"conv_breakdown_{jax.default_backend()}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
