"""The two-task toy problem of CAGrad, Nash-MTL and FAMO, for every aggregator.

Liu, Liu, Jin, Stone & Liu (NeurIPS 2021), "Conflict-Averse Gradient Descent for
Multi-task Learning", Fig. 1; Navon et al. (ICML 2022), "Multi-Task Learning as a
Bargaining Game", Fig. 1 and App. B; Liu, Feng, Stone & Liu (NeurIPS 2023), "FAMO:
Fast Adaptive Multitask Optimization", Fig. 1. With ``x = (x1, x2)``::

    f1 = log(max(|0.5(-x1 - 7) - tanh(-x2)|, 5e-6)) + 6
    f2 = log(max(|0.5(-x1 + 3) + tanh(-x2) + 2|, 5e-6)) + 6
    g1 = ((x1 - 7)² + 0.1 (x2 + 8)²) / 10 - 20
    g2 = ((x1 + 7)² + 0.1 (x2 + 8)²) / 10 - 20
    c1 = max(tanh(x2 / 2), 0),  c2 = max(tanh(-x2 / 2), 0)
    L1 = scale · (c1 f1 + c2 g1),  L2 = c1 f2 + c2 g2

Both tasks share all parameters (``x`` itself), so the per-task gradients are the
rows of ``jax.jacrev`` of the losses. Each method trains every start point with
``optax.adam(1e-3)`` on the aggregator's direction, as the papers do; the start
points of one method are one ``jax.vmap``-ed, ``jax.lax.scan``-ned, compiled
program.

Settings (:data:`SETTINGS`, read off the papers' code):

* ``"nash"`` (default): Nash-MTL's ``experiments/toy/trainer.py``: ``L1`` scaled by
  0.1 (the losses then differ in scale), 35,000 steps, five start points
  :data:`STARTS`; it compares LS, MGDA, PCGrad, CAGrad (``c = 0.4``) and Nash-MTL.
* ``"famo"``: FAMO's ``experiments/toy``: the same problem and start points, 50,000
  steps; FAMO with no logit weight decay (``gamma = 0`` in its ``run.sh``).
* ``"cagrad"``: CAGrad's ``toy.py``: no scaling, 100,000 steps, its three start
  points; Adam on the mean loss, MGDA, PCGrad and CAGrad with ``c = 0.5`` and the
  direction divided by ``1 + c`` (``rescale=2``).

Every registered method is run (:data:`METHODS`) except ``mgda_ub``, which is MGDA
on the gradients of the shared representation: here the representation is ``x``
itself, so it is ``mgda``; and ``fixed``, which with weights 1 is ``ew``. ``ew``
(the sum of the losses) is the papers' LS; their "Adam" (the mean loss) differs
only by a constant factor, to which Adam is invariant up to its ``eps``.

The losses reach about -20, and the loss-based methods take logs of (or divide
by) them, so the aggregators get ``value = L - lower`` with ``lower =
(-21 scale, -21)``, FAMO's toy ``min_losses``: FAMO is then exactly FAMO's toy,
gradient-based methods do not read ``value``, and the other loss-based methods
(none of which is in the papers' figures) see positive losses.

Pareto front and "reached". The front is computed numerically: the losses on a
``1001 × 1001`` grid over :data:`BOX`, filtered to the non-dominated points
(:func:`pareto_front`); their ``x`` are the Pareto set (``x1 ∈ [-7, 7]``,
``x2`` between -8.44 and -8.06). An end point has *reached* the front when, in loss coordinates
normalised by the front's ideal and nadir points (so the scale does not matter),
its distance to the front's polyline is at most :data:`TOL` (0.1% of the front's
extent; converged runs end within 1e-4, the grid's resolution) and no front point is
better in both losses by more than :data:`TOL` (:func:`assess`). The criterion is
in loss space, as the papers' figures: the valley above the Pareto set is so flat
(``0.01 (x2 + 8)²`` and a saturated ``tanh``) that a run can be within it while ``x``
is still far, so ``toy.json`` also gives each end point's ``x`` distance to the
Pareto set. The flat region at large ``x2`` (``c1 → 1``: ``f1`` is smallest at
``x1 = -5``, ``f2`` at ``x1 = 5``, so ``x1 ∈ [-5, 5]`` is Pareto-stationary up to
``tanh`` saturation) is dominated by the front: runs that stop there count as not
reached.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from jax import lax

from mtl_jax.aggregators import registry
from mtl_jax.aggregators.base import Aggregator
from mtl_jax.plots import save_png

FLOOR = 5e-6
"""Lower clamp of the log's argument (``LOWER`` in the papers' code)."""
LEARNING_RATE = 1e-3
"""Adam's learning rate in all three papers."""
LOWER_BOUND = -21.0
"""A lower bound of each unscaled loss (FAMO's toy ``min_losses``); see the module doc."""
BOX = (-10.0, 10.0)
"""The square ``x1, x2 ∈ BOX`` where the front is computed and the contours drawn."""
GRID = 1001
"""Grid points per axis for the numerical Pareto front."""
TOL = 1e-3
"""Distance to the front, as a fraction of its extent, below which a run reached it."""
RECORDS = 500
"""About this many points of each trajectory are kept (every ``steps // RECORDS``-th)."""

STARTS = ((-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0))
"""Nash-MTL's and FAMO's five start points."""
CAGRAD_STARTS = ((-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0))
"""CAGrad's three start points."""


class Setting(NamedTuple):
    """One paper's toy set-up.

    Attributes:
      scale: factor on ``L1``.
      steps: Adam steps.
      starts: start points ``(x1, x2)``.
      knobs: method name → keyword knobs for its factory (others: defaults).
      source: where the numbers come from.
    """

    scale: float
    steps: int
    starts: tuple[tuple[float, float], ...]
    knobs: Mapping[str, Mapping[str, Any]]
    source: str


SETTINGS: dict[str, Setting] = {
    "nash": Setting(0.1, 35_000, STARTS, {"famo": {"weight_decay": 0.0}},
                    "Navon et al. 2022, App. B; nash-mtl experiments/toy/trainer.py"),
    "famo": Setting(0.1, 50_000, STARTS, {"famo": {"weight_decay": 0.0}},
                    "Liu et al. 2023, Fig. 1; FAMO experiments/toy/trainer.py and run.sh"),
    "cagrad": Setting(1.0, 100_000, CAGRAD_STARTS,
                      {"cagrad": {"c": 0.5, "rescale": 2}, "famo": {"weight_decay": 0.0}},
                      "Liu et al. 2021, Fig. 1; CAGrad toy.py"),
}
"""Setting name → :class:`Setting` (``mtl-jax reproduce toy --setting NAME``)."""

METHODS: tuple[str, ...] = tuple(m for m in registry.METHODS if m not in ("mgda_ub", "fixed"))
"""The methods run by default: all registered ones but ``mgda_ub`` and ``fixed``."""


def _clamp_min(v: jax.Array, low: float) -> jax.Array:
    """``max(v, low)`` whose gradient passes at ``v == low`` (as ``torch.clamp``)."""
    return jnp.where(v >= low, v, low)


def objective(x: jax.Array, scale: float = 1.0) -> jax.Array:
    """The two losses ``[L1, L2]`` at ``x = (x1, x2)``, ``L1`` multiplied by ``scale``.

    Examples:
      >>> x = jnp.array([-5.0, 20.0])  # c1 = 1, c2 = 0; f1 at its floor, f2 = log(5) + 6
      >>> [round(v, 3) for v in objective(x).tolist()]
      [-6.206, 7.609]
    """
    x1, x2 = x[0], x[1]
    f1 = jnp.log(_clamp_min(jnp.abs(0.5 * (-x1 - 7) - jnp.tanh(-x2)), FLOOR)) + 6
    f2 = jnp.log(_clamp_min(jnp.abs(0.5 * (-x1 + 3) + jnp.tanh(-x2) + 2), FLOOR)) + 6
    g1 = ((x1 - 7) ** 2 + 0.1 * (x2 + 8) ** 2) / 10 - 20
    g2 = ((x1 + 7) ** 2 + 0.1 * (x2 + 8) ** 2) / 10 - 20
    c1 = _clamp_min(jnp.tanh(x2 / 2), 0.0)
    c2 = _clamp_min(jnp.tanh(-x2 / 2), 0.0)
    return jnp.stack([scale * (c1 * f1 + c2 * g1), c1 * f2 + c2 * g2])


def get_setting(name: str) -> Setting:
    """The :class:`Setting` called ``name``, or a ValueError naming the known ones.

    Examples:
      >>> get_setting("nash").steps
      35000
    """
    if name not in SETTINGS:
        raise ValueError(f"unknown toy setting {name!r}; known: {sorted(SETTINGS)}")
    return SETTINGS[name]


def check_methods(methods: Sequence[str]) -> None:
    """Raise a ValueError naming the first method not in :data:`METHODS`.

    Examples:
      >>> check_methods(["ew", "mgda"])
    """
    for method in methods:
        if method not in METHODS:
            why = {"mgda_ub": " (here it is mgda: the representation is x itself)",
                   "fixed": " (with weights 1 it is ew)"}.get(method, "")
            raise ValueError(f"unknown toy method {method!r}{why}; known: {list(METHODS)}")


def _trainer(aggregator: Aggregator, scale: float, steps: int,
             every: int) -> Callable[[jax.Array], jax.Array]:
    """``x0 [2] -> xs [R, 2]``: Adam on the aggregated direction, ``x`` every ``every`` steps."""
    optimizer = optax.adam(LEARNING_RATE)
    lower = jnp.array([LOWER_BOUND * scale, LOWER_BOUND])
    jacobian = jax.jacrev(lambda x: (objective(x, scale),) * 2, has_aux=True)

    def step(carry, _):
        x, opt_state, agg_state = carry
        jac, losses = jacobian(x)  # jac[t] = ∇L_t: the per-task gradients, task axis first
        direction, agg_state = aggregator.update(jac, agg_state, x, value=losses - lower)
        updates, opt_state = optimizer.update(direction, opt_state, x)
        return (optax.apply_updates(x, updates), opt_state, agg_state), None

    def chunk(carry, _):
        carry, _ = lax.scan(step, carry, length=every)
        return carry, carry[0]

    def train(x0):
        carry = (x0, optimizer.init(x0), aggregator.init(x0))
        carry, xs = lax.scan(chunk, carry, length=steps // every)
        records = [x0[None], xs]
        if steps % every:
            carry, _ = lax.scan(step, carry, length=steps % every)
            records.append(carry[0][None])
        return jnp.concatenate(records)

    return train


class Trajectories(NamedTuple):
    """The recorded runs of one method from every start point.

    Attributes:
      steps: ``[R]`` step of each record (0, every k-th, and the last).
      params: ``[S, R, 2]`` ``x`` of each start point at those steps.
      losses: ``[S, R, 2]`` the setting's losses there (``L1`` scaled).
      compile_s: seconds to compile the program.
      run_s: seconds to run it.
    """

    steps: np.ndarray
    params: np.ndarray
    losses: np.ndarray
    compile_s: float
    run_s: float


def run(method: str, setting: str = "nash", *, steps: int | None = None,
        starts: Sequence[Sequence[float]] | None = None,
        record_every: int | None = None) -> Trajectories:
    """Train every start point of ``setting`` with ``method``, as one compiled program.

    Args:
      method: a name in :data:`METHODS`; its knobs come from the setting.
      setting: a name in :data:`SETTINGS`.
      steps: Adam steps (default: the setting's).
      starts: start points (default: the setting's).
      record_every: keep ``x`` every this many steps (default ``steps // 500``, >= 1).

    Returns:
      The :class:`Trajectories`.

    Examples:
      >>> traj = run("mgda", steps=20)
      >>> traj.params.shape, int(traj.steps[-1])  # 5 start points, steps 0, 1, ..., 20
      ((5, 21, 2), 20)
    """
    config = get_setting(setting)
    check_methods([method])
    steps = config.steps if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    every = record_every or max(1, steps // RECORDS)
    x0 = jnp.asarray(config.starts if starts is None else starts, jnp.float32)
    aggregator, _ = registry.get(method, 2, **config.knobs.get(method, {}))
    train = jax.jit(jax.vmap(_trainer(aggregator, config.scale, steps, every)))
    start = time.perf_counter()
    compiled = train.lower(x0).compile()
    compiled_at = time.perf_counter()
    xs = jax.block_until_ready(compiled(x0))
    done = time.perf_counter()
    record_steps = np.arange(steps // every + 1) * every
    if steps % every:
        record_steps = np.append(record_steps, steps)
    losses = jax.vmap(jax.vmap(lambda x: objective(x, config.scale)))(xs)
    return Trajectories(record_steps, np.asarray(xs), np.asarray(losses),
                        compiled_at - start, done - compiled_at)


def nondominated(losses: np.ndarray) -> np.ndarray:
    """Mask of the rows of ``losses [N, 2]`` that no other row weakly dominates.

    Examples:
      >>> nondominated(np.array([[0.0, 2.0], [1.0, 1.0], [1.0, 3.0], [2.0, 0.0]])).tolist()
      [True, True, False, True]
    """
    order = np.lexsort((losses[:, 1], losses[:, 0]))  # by L1, then L2
    second = losses[order, 1]
    best_before = np.minimum.accumulate(np.concatenate([[np.inf], second[:-1]]))
    mask = np.zeros(len(losses), bool)
    mask[order] = second < best_before
    return mask


class Front(NamedTuple):
    """The numerical Pareto front, sorted by ``L1``.

    Attributes:
      params: ``[P, 2]`` the Pareto set: grid points ``x`` not dominated by any other.
      losses: ``[P, 2]`` their losses (the front).
      ideal: ``[2]`` the smallest value of each loss on the front.
      nadir: ``[2]`` the largest.
    """

    params: np.ndarray
    losses: np.ndarray
    ideal: np.ndarray
    nadir: np.ndarray


def pareto_front(scale: float = 1.0, *, box: tuple[float, float] = BOX,
                 grid: int = GRID) -> Front:
    """The non-dominated points of a ``grid × grid`` grid over ``box²``.

    Examples:
      >>> front = pareto_front(grid=201)
      >>> [round(float(v), 1) for v in (front.params[:, 0].min(), front.params[:, 0].max())]
      [-7.0, 7.0]
    """
    axis = np.linspace(*box, grid, dtype=np.float32)
    points = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)
    losses = np.asarray(jax.jit(jax.vmap(lambda x: objective(x, scale)))(points), np.float64)
    keep = nondominated(losses)
    order = np.argsort(losses[keep, 0])
    params, front = points[keep][order].astype(np.float64), losses[keep][order]
    return Front(params, front, front.min(0), front.max(0))


def _polyline_distance(points: np.ndarray, line: np.ndarray) -> np.ndarray:
    """Euclidean distance of each of ``points [N, 2]`` to the polyline ``line [P, 2]``."""
    a, b = line[:-1], line[1:]
    ab = b - a
    rel = points[:, None] - a[None]
    t = np.clip(np.sum(rel * ab, -1) / np.maximum(np.sum(ab * ab, -1), 1e-300), 0.0, 1.0)
    nearest = a[None] + t[..., None] * ab[None]
    return np.min(np.linalg.norm(points[:, None] - nearest, axis=-1), axis=1)


def assess(losses: np.ndarray, front: Front, tol: float = TOL) -> tuple[np.ndarray, np.ndarray]:
    """Which end points ``losses [N, 2]`` reached the front, and their distance to it.

    Both in loss coordinates normalised by the front, ``(L - ideal) / (nadir - ideal)``:
    reached means distance ``<= tol`` and no front point lower in both losses by
    more than ``tol``.

    Examples:
      >>> front = pareto_front(grid=201)
      >>> reached, distance = assess(front.losses[[0, 40]] + [[0.0, 0.0], [3.0, 3.0]], front)
      >>> reached.tolist()
      [True, False]
    """
    span = np.where(front.nadir > front.ideal, front.nadir - front.ideal, 1.0)
    u = (np.asarray(losses, np.float64) - front.ideal) / span
    f = (front.losses - front.ideal) / span
    distance = _polyline_distance(u, f) if len(f) > 1 else np.linalg.norm(u - f, axis=-1)
    dominated = np.any(np.all(f[None] < u[:, None] - tol, axis=-1), axis=1)
    return (distance <= tol) & ~dominated, distance


# --------------------------------------------------------------------------- plots

_COLORS = plt.get_cmap("tab10").colors


def _grid_axes(count: int) -> tuple[plt.Figure, np.ndarray]:
    cols = min(count, 5)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel()[count:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def _legend(fig: plt.Figure, starts: Sequence[Sequence[float]], front_label: str) -> None:
    handles = [plt.Line2D([], [], color=_COLORS[i], label=f"start ({x1:g}, {x2:g})")
               for i, (x1, x2) in enumerate(starts)]
    handles += [plt.Line2D([], [], color="0.55", lw=5, label=front_label),
                plt.Line2D([], [], color="k", marker="o", ls="", label="end: reached"),
                plt.Line2D([], [], color="k", marker="x", ls="", ms=8, mew=2,
                           label="end: not reached")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False,
               fontsize=9)


def _draw_runs(ax, xy: np.ndarray, reached: np.ndarray) -> None:
    """Trajectories ``xy [S, R, 2]``: lines, start dots, end markers by ``reached``."""
    for i, path in enumerate(xy):
        ax.plot(path[:, 0], path[:, 1], color=_COLORS[i], lw=1.4, zorder=3)
        ax.plot(*path[0], "o", color="k", ms=5, zorder=4)
        ax.plot(*path[-1], "o" if reached[i] else "x", color=_COLORS[i], ms=7, mew=2,
                zorder=5, markeredgecolor="k" if reached[i] else _COLORS[i])


def plot_params(runs: Mapping[str, Trajectories], reached: Mapping[str, np.ndarray],
                setting: Setting, front: Front, path: str | os.PathLike) -> None:
    """One panel per method: trajectories in ``x`` over contours of the mean loss."""
    axis = np.linspace(*BOX, 201, dtype=np.float32)
    x1, x2 = np.meshgrid(axis, axis)
    points = np.stack([x1, x2], -1).reshape(-1, 2)
    mean = np.asarray(jax.vmap(lambda x: objective(x, setting.scale).mean())(points))
    fig, axes = _grid_axes(len(runs))
    for ax, (name, traj) in zip(axes, runs.items()):
        ax.contour(x1, x2, mean.reshape(x1.shape), levels=14, cmap="viridis", linewidths=0.6,
                   zorder=1)
        ax.plot(front.params[:, 0], front.params[:, 1], color="0.55", lw=5, zorder=2)
        _draw_runs(ax, traj.params, reached[name])
        ax.set_title(f"{name}  ({int(reached[name].sum())}/{len(reached[name])} reached)")
        ax.set_aspect("equal")
    fig.suptitle(f"toy: trajectories in x over contours of (L1 + L2) / 2 "
                 f"(L1 × {setting.scale:g}, {setting.steps:,} Adam steps)")
    _legend(fig, setting.starts, "Pareto set")
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    save_png(fig, path)


def plot_losses(runs: Mapping[str, Trajectories], reached: Mapping[str, np.ndarray],
                setting: Setting, front: Front, path: str | os.PathLike) -> None:
    """One panel per method: trajectories in loss space, and the Pareto front."""
    fig, axes = _grid_axes(len(runs))
    for ax, (name, traj) in zip(axes, runs.items()):
        ax.plot(front.losses[:, 0], front.losses[:, 1], color="0.55", lw=5, zorder=2)
        _draw_runs(ax, traj.losses, reached[name])
        ax.set_title(f"{name}  ({int(reached[name].sum())}/{len(reached[name])} reached)")
        ax.set_xlabel(f"L1 (× {setting.scale:g})" if setting.scale != 1 else "L1")
        ax.set_ylabel("L2")
    fig.suptitle(f"toy: trajectories in loss space ({setting.steps:,} Adam steps)")
    _legend(fig, setting.starts, "Pareto front")
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    save_png(fig, path)


# --------------------------------------------------------------------------- benchmark


def table(summary: Mapping[str, Any]) -> str:
    """The Markdown table of a :func:`benchmark` summary: end losses, reached, seconds.

    Each cell is ``L1, L2`` at the end (``L1`` scaled as in the setting) and ✓ when
    the run reached the Pareto front.
    """
    starts = summary["setting"]["starts"]
    head = ["method", *(f"({x1:g}, {x2:g})" for x1, x2 in starts), "reached", "compile s",
            "run s"]
    lines = ["| " + " | ".join(head) + " |",
             "| --- |" + " ---: |" * (len(head) - 1)]
    for name, result in summary["methods"].items():
        cells = [f"{r['losses'][0]:.2f}, {r['losses'][1]:.2f} {'✓' if r['reached'] else '✗'}"
                 for r in result["runs"]]
        count = sum(r["reached"] for r in result["runs"])
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {count}/{len(cells)} | {result['compile_s']:.1f}"
                       f" | {result['run_s']:.1f} |")
    return "\n".join(lines)


def benchmark(setting: str = "nash", methods: Sequence[str] | None = None, *,
              steps: int | None = None, out: str | os.PathLike = ".",
              log: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Run ``methods`` (default :data:`METHODS`) in ``setting`` and write the results.

    Writes ``toy.json`` (per method and start point: end ``x``, end losses, reached,
    normalised loss distance to the front and ``x`` distance to the Pareto set;
    compile and run seconds), ``toy.md`` (the :func:`table`),
    ``toy_params.png`` and ``toy_losses.png`` into ``out`` (created if missing).

    Returns:
      The summary written to ``toy.json``.
    """
    config = get_setting(setting)
    methods = list(METHODS if methods is None else methods)
    if not methods:
        raise ValueError("no methods to run; known: " + ", ".join(METHODS))
    check_methods(methods)
    steps = config.steps if steps is None else steps
    started = time.perf_counter()
    front = pareto_front(config.scale)
    runs, reached, results = {}, {}, {}
    for name in methods:
        traj = run(name, setting, steps=steps)
        runs[name] = traj
        reached[name], distance = assess(traj.losses[:, -1], front)
        gaps = traj.params[:, -1, None] - front.params[None]
        x_distance = np.min(np.linalg.norm(gaps, axis=-1), axis=1)
        results[name] = {
            "knobs": dict(config.knobs.get(name, {})),
            "compile_s": traj.compile_s, "run_s": traj.run_s,
            "runs": [{"start": list(s), "end": traj.params[i, -1].tolist(),
                      "losses": traj.losses[i, -1].tolist(), "reached": bool(reached[name][i]),
                      "distance": float(distance[i]), "x_distance": float(x_distance[i])}
                     for i, s in enumerate(config.starts)]}
        log(f"{name:12s} {int(reached[name].sum())}/{len(config.starts)} reached  "
            f"compile {traj.compile_s:5.1f} s  run {traj.run_s:5.1f} s")
    os.makedirs(out, exist_ok=True)
    plot_params(runs, reached, config._replace(steps=steps), front,
                os.path.join(out, "toy_params.png"))
    plot_losses(runs, reached, config._replace(steps=steps), front,
                os.path.join(out, "toy_losses.png"))
    summary = {
        "setting": {"name": setting, "scale": config.scale, "steps": steps,
                    "starts": [list(s) for s in config.starts], "source": config.source,
                    "learning_rate": LEARNING_RATE,
                    "value_lower_bound": [LOWER_BOUND * config.scale, LOWER_BOUND]},
        "criterion": {"tol": TOL, "grid": GRID, "box": list(BOX),
                      "front_ideal": front.ideal.tolist(), "front_nadir": front.nadir.tolist(),
                      "rule": "normalised distance to the front <= tol and no front point "
                              "lower in both losses by more than tol"},
        "methods": results,
        "total_s": time.perf_counter() - started,
        "date": f"{datetime.datetime.now():%Y-%m-%d %H:%M}",
        "devices": [str(d) for d in jax.devices()],
    }
    with open(os.path.join(out, "toy.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(out, "toy.md"), "w") as f:
        f.write(f"# Toy benchmark, setting `{setting}` ({config.source})\n\n"
                f"L1 × {config.scale:g}, {steps:,} Adam steps (lr {LEARNING_RATE:g}); "
                f"cells: end losses L1, L2 and whether the run reached the Pareto front "
                f"(normalised distance <= {TOL:g}). Total {summary['total_s']:.0f} s.\n\n"
                + table(summary) + "\n")
    return summary
