"""Method names for configs and the CLI: ``get("pcgrad", num_tasks)``.

Each entry records the factory, what the method's weights depend on (``wrt``,
see :func:`mtl_jax.make_train_step`): ``"losses"`` (loss-based: one backward
pass), ``"parameters"`` (the per-task gradients of the shared parameters) or
``"representation"`` (per-task gradients of the shared representation, MGDA-UB's
rep-grad), and a one-line summary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from mtl_jax.aggregators import min_norm, projection, weighting
from mtl_jax.aggregators.base import Aggregator


class Method(NamedTuple):
    factory: Callable[..., Aggregator]
    wrt: str
    summary: str


METHODS: dict[str, Method] = {
    "ew": Method(weighting.ew, "losses", "equal weighting: the sum of the task losses"),
    "fixed": Method(weighting.fixed, "losses", "fixed linear scalarisation of the losses"),
    "uw": Method(weighting.uw, "losses", "uncertainty weighting (Kendall et al. 2018)"),
    "dwa": Method(weighting.dwa, "losses", "dynamic weight average (Liu et al. 2019)"),
    "gls": Method(weighting.gls, "losses", "geometric loss strategy (Chennupati et al. 2019)"),
    "rlw": Method(weighting.rlw, "losses", "random loss weighting (Lin et al. 2022)"),
    "famo": Method(weighting.famo, "losses", "fast adaptive multitask optimisation (Liu et al. "
                   "2023)"),
    "stch": Method(weighting.stch, "losses", "smooth Tchebycheff scalarisation (Lin et al. "
                   "2024)"),
    "imtl_l": Method(weighting.imtl_l, "losses", "impartial MTL, loss balance (Liu et al. 2021)"),
    "gradnorm": Method(weighting.gradnorm, "parameters", "gradient normalisation (Chen et al. "
                       "2018)"),
    "db_mtl": Method(weighting.db_mtl, "parameters", "dual-balancing MTL (Lin et al. 2023)"),
    "pcgrad": Method(projection.pcgrad, "parameters", "projecting conflicting gradients (Yu et "
                     "al. 2020)"),
    "gradvac": Method(projection.gradvac, "parameters", "gradient vaccine (Wang et al. 2021)"),
    "graddrop": Method(projection.graddrop, "parameters", "gradient sign dropout (Chen et al. "
                       "2020)"),
    "imtl_g": Method(projection.imtl_g, "parameters", "impartial MTL, gradient balance (Liu et "
                     "al. 2021)"),
    "aligned_mtl": Method(projection.aligned_mtl, "parameters", "aligned MTL (Senushkin et al. "
                          "2023)"),
    "config": Method(projection.config, "parameters", "conflict-free updates (Liu et al. 2025)"),
    "mgda": Method(min_norm.mgda, "parameters", "multiple-gradient descent, min-norm point "
                   "(Sener & Koltun 2018)"),
    "mgda_ub": Method(min_norm.mgda, "representation", "MGDA on the shared representation's "
                      "gradients (upper bound, Sener & Koltun 2018)"),
    "cagrad": Method(min_norm.cagrad, "parameters", "conflict-averse gradients (Liu et al. "
                     "2021)"),
    "nash_mtl": Method(min_norm.nash_mtl, "parameters", "Nash bargaining (Navon et al. 2022)"),
    "upgrad": Method(min_norm.upgrad, "parameters", "unconflicting projections (Quinton & Rey "
                     "2024)"),
    "dualproj": Method(min_norm.dualproj, "parameters", "projection onto the dual cone "
                       "(Quinton & Rey 2024)"),
    "fairgrad": Method(min_norm.fairgrad, "parameters", "alpha-fair gradients (Ban & Ji 2024)"),
}


def get(name: str, num_tasks: int, **knobs) -> tuple[Aggregator, str]:
    """The aggregator called ``name`` for ``num_tasks`` tasks, and its ``wrt``.

    Examples:
      >>> aggregator, wrt = get("pcgrad", 2)
      >>> wrt
      'parameters'
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}")
    method = METHODS[name]
    return method.factory(num_tasks, **knobs), method.wrt
