"""Summaries of finished results: Δm%, mean ± std over seeds, mean rank, markdown tables.

Results are nested dicts ``{task: {metric: value}}`` as returned by
:meth:`mtl_jax.tasks.Tasks.finalize`; directions are ``{task: {metric: bool}}``
(``True`` when higher is better) as given by :attr:`mtl_jax.tasks.Task.higher_is_better`.
Only the task-metrics named in the directions are compared, so the ``"loss"``
entries of the results are ignored unless a direction names them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

Results = Mapping[str, Mapping[str, float]]
Directions = Mapping[str, Mapping[str, bool]]
Value = float | tuple[float, float]


def _pairs(higher_is_better: Directions) -> list[tuple[str, str, bool]]:
    """Every ``(task, metric, higher_is_better)``, in order; at least one."""
    pairs = [(task, metric, higher) for task, metrics in higher_is_better.items()
             for metric, higher in metrics.items()]
    if not pairs:
        raise ValueError("higher_is_better names no task metric")
    return pairs


def _lookup(results: Mapping[str, Mapping[str, Value]], task: str, metric: str,
            what: str) -> Value:
    try:
        return results[task][metric]
    except KeyError:
        raise KeyError(f"{what} have no value for task {task!r}, metric {metric!r}") from None


def _point(value: Value) -> float:
    """A value, or the mean of a ``(mean, std)`` pair."""
    return float(value[0]) if isinstance(value, tuple) else float(value)


def delta_m(results: Results, baselines: Results, higher_is_better: Directions) -> float:
    """Δm%: the mean relative change against baselines, signed so that lower is better.

    ``Δm% = (1/K) Σ_k (-1)^{h_k} (M_k - B_k) / B_k × 100`` over the K task-metrics of
    ``higher_is_better``, with ``h_k = 1`` when higher is better, as in Navon et al.,
    "Multi-Task Learning as a Bargaining Game" (Nash-MTL, ICML 2022) and Liu et al.,
    "FAMO: Fast Adaptive Multitask Optimization" (NeurIPS 2023). Baselines are
    usually the single-task models.

    Raises:
      KeyError: a task-metric is missing from ``results`` or ``baselines``.
      ValueError: a baseline is zero, or ``higher_is_better`` is empty.

    Examples:
      >>> directions = {"a": {"accuracy": True}, "b": {"mae": False}}
      >>> delta_m({"a": {"accuracy": 0.75}, "b": {"mae": 1.25}},
      ...         {"a": {"accuracy": 0.5}, "b": {"mae": 1.0}}, directions)
      -12.5
    """
    changes = []
    for task, metric, higher in _pairs(higher_is_better):
        value = float(_lookup(results, task, metric, "results"))
        base = float(_lookup(baselines, task, metric, "baselines"))
        if base == 0:
            raise ValueError(f"the baseline of task {task!r}, metric {metric!r} is zero")
        change = (value - base) / base
        changes.append(-change if higher else change)
    return 100.0 * float(np.mean(changes))


def mean_std(runs: Sequence[Results], *,
             include_loss: bool = False) -> dict[str, dict[str, tuple[float, float]]]:
    """Mean and population standard deviation (``ddof=0``) of every metric over runs.

    The task-metrics are those of the first run (without ``"loss"`` unless
    ``include_loss``); every other run must have them too.

    Raises:
      ValueError: ``runs`` is empty.
      KeyError: a run lacks a task-metric of the first.

    Examples:
      >>> mean_std([{"a": {"accuracy": 0.5, "loss": 1.0}}, {"a": {"accuracy": 1.0, "loss": 2.0}}])
      {'a': {'accuracy': (0.75, 0.25)}}
    """
    if not runs:
        raise ValueError("mean_std needs at least one run")
    summary = {}
    for task, metrics in runs[0].items():
        summary[task] = {}
        for metric in metrics:
            if metric == "loss" and not include_loss:
                continue
            values = [float(_lookup(run, task, metric, f"run {i}")) for i, run in enumerate(runs)]
            summary[task][metric] = (float(np.mean(values)), float(np.std(values)))
    return summary


def _ranks(values: Sequence[float], higher: bool) -> list[float]:
    """1-based ranks, 1 = best; tied values share the average of their ranks."""
    keys = [-v if higher else v for v in values]
    return [1 + sum(other < key for other in keys) + (sum(other == key for other in keys) - 1) / 2
            for key in keys]


def mean_rank(scores: Mapping[str, Mapping[str, Mapping[str, Value]]],
              higher_is_better: Directions) -> dict[str, float]:
    """Each method's rank (1 = best, ties averaged) averaged over the task-metrics.

    Values may be floats or ``(mean, std)`` pairs (ranked by the mean).

    Raises:
      ValueError: ``scores`` or ``higher_is_better`` is empty.
      KeyError: a method lacks a task-metric.

    Examples:
      >>> scores = {"ew": {"a": {"accuracy": 0.9}, "b": {"mae": 2.0}},
      ...           "famo": {"a": {"accuracy": 0.9}, "b": {"mae": 1.0}},
      ...           "stl": {"a": {"accuracy": 0.8}, "b": {"mae": 3.0}}}
      >>> mean_rank(scores, {"a": {"accuracy": True}, "b": {"mae": False}})
      {'ew': 1.75, 'famo': 1.25, 'stl': 3.0}
    """
    if not scores:
        raise ValueError("mean_rank needs at least one method")
    methods = list(scores)
    per_metric = [_ranks([_point(_lookup(scores[m], task, metric, f"the scores of {m!r}"))
                          for m in methods], higher)
                  for task, metric, higher in _pairs(higher_is_better)]
    return {m: float(np.mean([ranks[i] for ranks in per_metric]))
            for i, m in enumerate(methods)}


def _format(value: Value | None, digits: int) -> str:
    if value is None:
        return "—"
    if isinstance(value, tuple):
        mean, std = value
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{value:.{digits}f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", r"\|") for cell in cells) + " |"


def markdown_table(rows: Mapping[str, Mapping[str, Mapping[str, Value]]],
                   higher_is_better: Directions,
                   delta: Mapping[str, Value | None] | None = None, digits: int = 2) -> str:
    """A GitHub-markdown table: one row per method, one column per task-metric.

    Column headers carry the direction (``"left accuracy ↑"``, ``"depth mae ↓"``);
    values are printed as given (``"12.34"``, or ``"12.34 ± 0.56"`` for a
    ``(mean, std)`` pair), ``"—"`` where a row lacks one. With ``delta``, a last
    column ``"Δm% ↓"`` shows each row's Δm% (``"—"`` for ``None`` or a missing row).

    Raises:
      KeyError: ``delta`` names a row that is not in ``rows``.
      ValueError: ``higher_is_better`` is empty.

    Examples:
      >>> print(markdown_table({"famo": {"left": {"accuracy": (91.234, 0.5)}}},
      ...                      {"left": {"accuracy": True}}, delta={"famo": -1.5}))
      | Method | left accuracy ↑ | Δm% ↓ |
      | --- | ---: | ---: |
      | famo | 91.23 ± 0.50 | -1.50 |
    """
    columns = _pairs(higher_is_better)
    unknown = sorted(set(delta or {}) - set(rows))
    if unknown:
        raise KeyError(f"delta names rows that are not in the table: {unknown}")
    header = ["Method"] + [f"{task} {metric} {'↑' if higher else '↓'}"
                           for task, metric, higher in columns]
    if delta is not None:
        header.append("Δm% ↓")
    lines = [_row(header), _row(["---"] + ["---:"] * (len(header) - 1))]
    for name, results in rows.items():
        cells = [name] + [_format(results.get(task, {}).get(metric), digits)
                          for task, metric, _ in columns]
        if delta is not None:
            cells.append(_format(delta.get(name), digits))
        lines.append(_row(cells))
    return "\n".join(lines)
