"""In-memory image datasets with per-task labels, and deterministic batching.

A :class:`Dataset` holds images ``x [N, H, W, C]`` and one label array per task.
Its :meth:`Dataset.batch` is a pure function of ``(seed, step)``: the examples
of step ``s`` are the ``s``-th slice of a per-epoch permutation seeded by
``[seed, epoch]``, so a run resumed at step ``s`` sees exactly the batches an
uninterrupted run saw. :class:`MultiSource` gives every task its own stream.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Iterator, Mapping

import numpy as np

Batch = dict[str, np.ndarray | dict[str, np.ndarray]]


@functools.lru_cache(maxsize=32)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The (read-only) order of the ``n`` examples in ``epoch``."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    order.flags.writeable = False
    return order


@functools.lru_cache(maxsize=256)
def _task_seed(seed: int, index: int) -> int:
    """A seed for the stream of task number ``index``, mixed from ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _check_seed(seed: int) -> None:
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Images and per-task labels.

    Attributes:
      x: images ``[N, H, W, C]`` float32.
      y: task name -> labels ``[N, ...]`` (int32 class indices, or floats).
      name: a name used in error messages and reports.

    Examples:
      >>> import numpy as np
      >>> ds = Dataset(np.zeros((10, 2, 2, 1), np.float32), {"a": np.arange(10)}, "toy")
      >>> len(ds), ds.batch(step=7, batch_size=4, seed=0)["x"].shape
      (10, (4, 2, 2, 1))
    """

    x: np.ndarray
    y: dict[str, np.ndarray]
    name: str

    def __post_init__(self):
        n = len(self.x)
        if n == 0:
            raise ValueError(f"dataset {self.name!r} is empty")
        if np.ndim(self.x) != 4:
            raise ValueError(f"dataset {self.name!r}: images must be [N, H, W, C], got shape "
                             f"{np.shape(self.x)}")
        for task, labels in self.y.items():
            if len(labels) != n:
                raise ValueError(f"dataset {self.name!r}: task {task!r} has {len(labels)} "
                                 f"labels for {n} images")

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, indices: np.ndarray | Iterable[int]) -> Dataset:
        """The examples at ``indices`` (an index array or a boolean mask), in that order.

        Examples:
          >>> import numpy as np
          >>> ds = Dataset(np.zeros((5, 1, 1, 1), np.float32), {"a": np.arange(5)}, "toy")
          >>> ds.subset([4, 0]).y["a"].tolist()
          [4, 0]
        """
        indices = np.asarray(indices)
        return Dataset(self.x[indices], {t: v[indices] for t, v in self.y.items()}, self.name)

    def select(self, task_names: str | Iterable[str]) -> Dataset:
        """The same images with only the labels of ``task_names``.

        Examples:
          >>> import numpy as np
          >>> ds = Dataset(np.zeros((2, 1, 1, 1), np.float32),
          ...              {"a": np.zeros(2), "b": np.ones(2)}, "toy")
          >>> list(ds.select(["b"]).y)
          ['b']
        """
        names = (task_names,) if isinstance(task_names, str) else tuple(task_names)
        for task in names:
            if task not in self.y:
                raise KeyError(f"dataset {self.name!r} has no task {task!r}; it has "
                               f"{list(self.y)}")
        return Dataset(self.x, {t: self.y[t] for t in names}, self.name)

    def batch(self, step: int, batch_size: int, seed: int) -> Batch:
        """The training batch of ``step``: a pure function of ``(seed, step)``.

        Returns:
          ``{"x": images [batch_size, H, W, C], "y": {task: labels [batch_size, ...]}}``
          for the examples at :meth:`batch_indices`.

        Examples:
          >>> import numpy as np
          >>> ds = Dataset(np.zeros((6, 1, 1, 1), np.float32), {"a": np.arange(6)}, "toy")
          >>> epoch = [ds.batch(s, 2, seed=1)["y"]["a"] for s in range(3)]
          >>> sorted(np.concatenate(epoch).tolist())
          [0, 1, 2, 3, 4, 5]
        """
        indices = self.batch_indices(step, batch_size, seed)
        return {"x": self.x[indices], "y": {t: v[indices] for t, v in self.y.items()}}

    def batch_indices(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        """Which examples form the training batch of ``step``.

        An epoch has ``len(self) // batch_size`` steps (the remainder is dropped);
        its order is a permutation drawn from ``np.random.default_rng([seed, epoch])``,
        so within an epoch every example appears at most once.

        Examples:
          >>> import numpy as np
          >>> ds = Dataset(np.zeros((5, 1, 1, 1), np.float32), {}, "toy")
          >>> ds.batch_indices(0, 2, seed=0).shape
          (2,)
        """
        n = len(self)
        if not 0 < batch_size <= n:
            raise ValueError(f"dataset {self.name!r}: batch_size must be in [1, {n}] (the "
                             f"dataset size), got batch_size={batch_size} for {n} examples")
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        _check_seed(seed)
        epoch, position = divmod(int(step), n // batch_size)
        start = position * batch_size
        return _permutation(int(seed), epoch, n)[start:start + batch_size]

    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        """The whole dataset in order, in chunks of ``batch_size`` (the last may be smaller).

        Examples:
          >>> import numpy as np
          >>> ds = Dataset(np.zeros((5, 1, 1, 1), np.float32), {"a": np.arange(5)}, "toy")
          >>> [len(b["x"]) for b in ds.eval_batches(2)]
          [2, 2, 1]
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        return (self._slice(start, start + batch_size)
                for start in range(0, len(self), batch_size))

    def _slice(self, start: int, stop: int) -> Batch:
        return {"x": self.x[start:stop], "y": {t: v[start:stop] for t, v in self.y.items()}}


class MultiSource:
    """One data stream per task (the multi-input setting).

    Task ``t``'s batches come from ``sources[t]`` with a seed mixed from the run's
    seed and the task's position, so the streams differ even when two tasks share
    a source; its labels are that source's labels for ``t``. Sources may differ in
    length.

    Examples:
      >>> import numpy as np
      >>> ds = Dataset(np.zeros((8, 1, 1, 1), np.float32),
      ...              {"a": np.arange(8), "b": np.arange(8)}, "toy")
      >>> multi = MultiSource({"a": ds, "b": ds.subset(range(4))})
      >>> batch = multi.batch(step=0, batch_size=2, seed=0)
      >>> multi.names, {t: y.shape for t, y in batch["y"].items()}
      (('a', 'b'), {'a': (2,), 'b': (2,)})
    """

    def __init__(self, sources: Mapping[str, Dataset]):
        if not sources:
            raise ValueError("MultiSource needs at least one source")
        for task, source in sources.items():
            if task not in source.y:
                raise KeyError(f"the source of task {task!r} (dataset {source.name!r}) has no "
                               f"labels for it; it has {list(source.y)}")
        self.sources = dict(sources)

    @property
    def names(self) -> tuple[str, ...]:
        """The task names, in order."""
        return tuple(self.sources)

    def batch(self, step: int, batch_size: int, seed: int) -> Batch:
        """One batch per task: ``{"x": {task: x_t}, "y": {task: y_t}}``."""
        _check_seed(seed)
        xs, ys = {}, {}
        for index, (task, source) in enumerate(self.sources.items()):
            indices = source.batch_indices(step, batch_size, seed=_task_seed(int(seed), index))
            xs[task], ys[task] = source.x[indices], source.y[task][indices]
        return {"x": xs, "y": ys}
