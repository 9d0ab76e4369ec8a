"""Reproductions of published multi-task benchmarks (``mtl-jax reproduce NAME``).

* :mod:`~mtl_jax.reproduce.toy`: the two-task toy problem of CAGrad (Liu et al.,
  NeurIPS 2021), Nash-MTL (Navon et al., ICML 2022) and FAMO (Liu et al., NeurIPS
  2023): every aggregator from the same start points, trajectories against the
  Pareto front.
"""

BENCHMARKS: dict[str, str] = {
    "toy": "two-task toy of CAGrad / Nash-MTL / FAMO: trajectories of every method against "
           "the Pareto front",
}
"""Benchmark name → one-line summary (the CLI's ``reproduce`` subcommands)."""
