"""Reproductions of published multi-task benchmarks (``mtl-jax reproduce NAME``).

* :mod:`~mtl_jax.reproduce.toy`: the two-task toy problem of CAGrad (Liu et al.,
  NeurIPS 2021), Nash-MTL (Navon et al., ICML 2022) and FAMO (Liu et al., NeurIPS
  2023): every aggregator from the same start points, trajectories against the
  Pareto front.
* :mod:`~mtl_jax.reproduce.mmoe`: the synthetic task-correlation benchmark of MMoE
  (Ma et al., KDD 2018): Shared-Bottom, one-gate MoE, MMoE and other architectures
  at task correlations p, each model's runs at every p as one vmapped program.
* :mod:`~mtl_jax.reproduce.multifashion`: MultiFashion (Sener & Koltun's MultiMNIST
  recipe on Fashion-MNIST, NeurIPS 2018; Lin et al., NeurIPS 2019) with their
  MultiLeNet: every method and the single-task baselines, N seeds each.
"""

BENCHMARKS: dict[str, str] = {
    "toy": "two-task toy of CAGrad / Nash-MTL / FAMO: trajectories of every method against "
           "the Pareto front",
    "mmoe": "synthetic two-task regression of MMoE (Ma et al. 2018) with task correlation p: "
            "Shared-Bottom, OMoE, MMoE, CGC/PLE, cross-stitch, soft sharing",
    "multifashion": "MultiFashion (Sener & Koltun's MultiMNIST recipe on Fashion-MNIST) with "
                    "their MultiLeNet: every method against single-task baselines, N seeds",
}
"""Benchmark name → one-line summary (the CLI's ``reproduce`` subcommands)."""

MAX_COUNT = 2**31 - 1
"""The largest count a benchmark takes (steps, runs, batch size, pairs, seeds): compiled
programs count in int32, and a larger count fails to compile or, in a loop, wraps silently."""
MAX_SEED = 2**63 - 1
"""The largest seed: ``jax.random.key`` takes an int64."""


def check_range(name: str, value: int, low: int, high: int = MAX_COUNT) -> None:
    """Raise a ValueError naming ``name`` unless ``low <= value <= high``.

    Examples:
      >>> check_range("--runs", 0, 1)
      Traceback (most recent call last):
      ValueError: --runs must be in [1, 2147483647], got 0
    """
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
