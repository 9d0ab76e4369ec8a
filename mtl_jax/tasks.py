"""Tasks: a name, a loss, metrics with their direction, and the label layout.

A :class:`Tasks` collection is the contract between a model's outputs
(``{name: [B, *output_shape]}``) and a batch's labels (``{name: [B, *label_shape]}``):
it validates both by name, shape and dtype before anything is compiled, and
turns them into a vector of per-task losses ordered like ``Tasks.names``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

PerExample = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Metric:
    """A metric as a per-example statistic, averaged, then ``finalize``-d."""

    per_example: PerExample
    higher_is_better: bool
    finalize: Callable[[jax.Array], jax.Array] = lambda mean: mean


def _squared_error(out, y):
    return jnp.sum(jnp.square(out - y).reshape(out.shape[0], -1), axis=1)


def _absolute_error(out, y):
    return jnp.mean(jnp.abs(out - y).reshape(out.shape[0], -1), axis=1)


def _cross_entropy(out, y):
    return optax.softmax_cross_entropy_with_integer_labels(out, y)


def _binary_cross_entropy(out, y):
    return jnp.mean(optax.sigmoid_binary_cross_entropy(out, y).reshape(out.shape[0], -1),
                    axis=1)


def _accuracy(out, y):
    return (jnp.argmax(out, axis=-1) == y).astype(jnp.float32)


def _binary_accuracy(out, y):
    return jnp.mean(((out > 0) == (y > 0.5)).astype(jnp.float32).reshape(out.shape[0], -1),
                    axis=1)


def _mean_squared_error(out, y):
    return _squared_error(out, y) / np.prod(out.shape[1:], dtype=int)


LOSSES: dict[str, PerExample] = {
    "cross_entropy": _cross_entropy,
    "binary_cross_entropy": _binary_cross_entropy,
    "mse": _mean_squared_error,
    "l1": _absolute_error,
}

METRICS: dict[str, Metric] = {
    "accuracy": Metric(_accuracy, higher_is_better=True),
    "binary_accuracy": Metric(_binary_accuracy, higher_is_better=True),
    "mae": Metric(_absolute_error, higher_is_better=False),
    "mse": Metric(_mean_squared_error, higher_is_better=False),
    "rmse": Metric(_mean_squared_error, higher_is_better=False, finalize=jnp.sqrt),
}


@dataclasses.dataclass(frozen=True)
class Task:
    """One task: how its output is scored.

    Attributes:
      name: key of the task in model outputs and labels.
      loss: a name in :data:`LOSSES`.
      metrics: names in :data:`METRICS`.
      output_shape: per-example shape of the model's output for this task.
      label_shape: per-example shape of the labels.
      label_kind: ``"int"`` (class indices) or ``"float"``.

    Examples:
      >>> t = Task("age", loss="l1", metrics=("mae",), output_shape=(1,), label_shape=(1,),
      ...          label_kind="float")
      >>> t.higher_is_better
      {'mae': False}
    """

    name: str
    loss: str
    metrics: tuple[str, ...]
    output_shape: tuple[int, ...]
    label_shape: tuple[int, ...]
    label_kind: str

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a task name must be a non-empty string, got {self.name!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"task {self.name!r}: unknown loss {self.loss!r}; "
                             f"known: {sorted(LOSSES)}")
        for metric in self.metrics:
            if metric not in METRICS:
                raise ValueError(f"task {self.name!r}: unknown metric {metric!r}; "
                                 f"known: {sorted(METRICS)}")
        if self.label_kind not in ("int", "float"):
            raise ValueError(f"task {self.name!r}: label_kind must be 'int' or 'float', "
                             f"got {self.label_kind!r}")

    @property
    def higher_is_better(self) -> dict[str, bool]:
        return {m: METRICS[m].higher_is_better for m in self.metrics}

    def per_example_loss(self, output: jax.Array, label: jax.Array) -> jax.Array:
        return LOSSES[self.loss](output, label)


def classification(name: str, num_classes: int) -> Task:
    """A ``num_classes``-way classification task: cross-entropy, accuracy.

    Examples:
      >>> classification("left", 10).output_shape
      (10,)
    """
    if num_classes < 2:
        raise ValueError(f"task {name!r}: num_classes must be >= 2, got {num_classes}")
    return Task(name, "cross_entropy", ("accuracy",), (num_classes,), (), "int")


def binary(name: str, num_labels: int = 1) -> Task:
    """``num_labels`` independent binary labels (0/1 floats): BCE on logits.

    Examples:
      >>> binary("smiling").loss
      'binary_cross_entropy'
    """
    return Task(name, "binary_cross_entropy", ("binary_accuracy",), (num_labels,),
                (num_labels,), "float")


def regression(name: str, dim: int = 1, loss: str = "mse") -> Task:
    """Regression of ``dim`` targets with ``loss`` ``"mse"`` or ``"l1"``; MAE and RMSE.

    Examples:
      >>> regression("depth", loss="l1").metrics
      ('mae', 'rmse')
    """
    if loss not in ("mse", "l1"):
        raise ValueError(f"task {name!r}: regression loss must be 'mse' or 'l1', got {loss!r}")
    return Task(name, loss, ("mae", "rmse"), (dim,), (dim,), "float")


class Tasks:
    """An ordered collection of tasks with unique names.

    Examples:
      >>> import jax.numpy as jnp
      >>> tasks = Tasks([classification("a", 3), regression("b")])
      >>> outputs = {"a": jnp.zeros((2, 3)), "b": jnp.ones((2, 1))}
      >>> labels = {"a": jnp.array([0, 1]), "b": jnp.zeros((2, 1))}
      >>> [round(float(v), 4) for v in tasks.losses(outputs, labels)]
      [1.0986, 1.0]
    """

    def __init__(self, tasks: Iterable[Task]):
        self.tasks = tuple(tasks)
        if not self.tasks:
            raise ValueError("Tasks needs at least one task")
        names = [t.name for t in self.tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate task names: {duplicates}")
        self.names = tuple(names)
        self._by_name = dict(zip(names, self.tasks))

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self):
        return iter(self.tasks)

    def __getitem__(self, name: str) -> Task:
        return self._by_name[name]

    @property
    def higher_is_better(self) -> dict[str, dict[str, bool]]:
        """``{task: {metric: higher_is_better}}``, the directions Δm and tables need."""
        return {t.name: t.higher_is_better for t in self.tasks}

    def select(self, names: Iterable[str]) -> Tasks:
        """The sub-collection of the named tasks, in the given order."""
        names = list(names)
        unknown = [n for n in names if n not in self._by_name]
        if unknown:
            raise KeyError(f"unknown tasks {unknown}; the tasks are {list(self.names)}")
        return Tasks(self._by_name[n] for n in names)

    def check_labels(self, labels: Mapping[str, jax.Array]) -> None:
        """Raise a ValueError naming the task whose labels are missing or malformed."""
        _check_keys("labels", labels, self.names)
        for task in self.tasks:
            y = labels[task.name]
            shape, dtype = tuple(np.shape(y)), np.dtype(getattr(y, "dtype", np.float32))
            if len(shape) < 1 or shape[1:] != task.label_shape:
                raise ValueError(f"task {task.name!r}: labels have shape {shape}, expected "
                                 f"{_batched(task.label_shape)}")
            kind = "int" if np.issubdtype(dtype, np.integer) else (
                "float" if np.issubdtype(dtype, np.floating) else str(dtype))
            if kind != task.label_kind:
                raise ValueError(f"task {task.name!r}: labels have dtype {dtype}, expected "
                                 f"{'an integer' if task.label_kind == 'int' else 'a float'} "
                                 "dtype")

    def check_outputs(self, outputs: Mapping[str, jax.Array]) -> None:
        """Raise a ValueError naming the task whose model output does not fit."""
        _check_keys("model outputs", outputs, self.names)
        for task in self.tasks:
            shape = tuple(np.shape(outputs[task.name]))
            if shape[1:] != task.output_shape:
                raise ValueError(f"task {task.name!r}: the model outputs shape {shape}, the "
                                 f"task expects {_batched(task.output_shape)}")

    def losses(self, outputs: Mapping[str, jax.Array],
               labels: Mapping[str, jax.Array]) -> jax.Array:
        """Mean loss of every task, as a vector ordered like ``names``."""
        return jnp.stack([jnp.mean(t.per_example_loss(outputs[t.name], labels[t.name]))
                          for t in self.tasks])

    def metric_sums(self, outputs: Mapping[str, jax.Array],
                    labels: Mapping[str, jax.Array]) -> dict[str, dict[str, jax.Array]]:
        """Per-task sums of every metric's per-example statistic (and of the loss).

        Sums over batches add up; :meth:`finalize` turns the totals into metrics.
        ``"count"`` holds the number of examples.
        """
        sums = {}
        for t in self.tasks:
            out, y = outputs[t.name], labels[t.name]
            entry = {"loss": jnp.sum(t.per_example_loss(out, y)),
                     "count": jnp.asarray(out.shape[0], jnp.float32)}
            for m in t.metrics:
                entry[m] = jnp.sum(METRICS[m].per_example(out, y))
            sums[t.name] = entry
        return sums

    def finalize(self, sums: Mapping[str, Mapping[str, jax.Array]]) -> dict[str, dict[str, float]]:
        """Metrics from accumulated :meth:`metric_sums` (python floats)."""
        result = {}
        for t in self.tasks:
            entry = sums[t.name]
            count = float(entry["count"])
            if count == 0:
                raise ValueError(f"task {t.name!r}: no examples were evaluated")
            values = {"loss": float(entry["loss"]) / count}
            for m in t.metrics:
                values[m] = float(METRICS[m].finalize(jnp.asarray(float(entry[m]) / count)))
            result[t.name] = values
        return result


def _check_keys(what: str, tree: Mapping, names: tuple[str, ...]) -> None:
    if not isinstance(tree, Mapping):
        raise TypeError(f"{what} must be a dict keyed by task name, got {type(tree).__name__}")
    missing, extra = set(names) - set(tree), set(tree) - set(names)
    if missing or extra:
        raise ValueError(f"{what} do not match the tasks: missing {sorted(missing)}, "
                         f"unexpected {sorted(extra)} (tasks are {list(names)})")


def _batched(shape: tuple[int, ...]) -> str:
    return "(batch" + "".join(f", {d}" for d in shape) + ")"
