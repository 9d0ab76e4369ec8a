"""The training loop: steps, periodic evaluation, JSON-lines logs, checkpoints.

:func:`fit` drives a compiled step over a data source whose batches are a pure
function of ``(seed, step)``, so a run resumed from a checkpoint at step ``s``
sees exactly the batches the uninterrupted run saw. It works the same for one
state and for an ensemble (a state with a leading member axis, stepped by
:func:`mtl_jax.ensemble.step`).

SIGTERM and SIGINT (a scheduler's preemption, Ctrl-C) do not cut a step short:
the step under way finishes, a checkpoint of it is written, and :func:`fit`
raises :class:`Preempted`. A second signal during that save acts as usual.
With several processes, a signal to any of them stops all of them after the
same step.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import numpy as np
from tqdm import tqdm

from mtl_jax import distributed
from mtl_jax.checkpoint import Checkpointer
from mtl_jax.ensemble import member
from mtl_jax.tasks import Tasks
from mtl_jax.train import TrainState

Results = dict[str, dict[str, float]]


class Source(Protocol):
    def batch(self, step: int, batch_size: int, seed: int) -> Mapping[str, Any]: ...


class NonFiniteLossError(FloatingPointError):
    """A task's loss became NaN or infinite.

    ``step`` is the index of the offending batch (``data.batch(step, ...)``),
    so the state returned and saved last is the one after ``step`` updates.
    """

    def __init__(self, step: int, task: str, value: float, member: int | None):
        where = "" if member is None else f" of ensemble member {member}"
        super().__init__(f"non-finite loss ({value}) for task {task!r} at step {step}{where}; "
                         "training stopped, the last checkpoint is left as it was")
        self.step, self.task, self.member = step, task, member


class Preempted(Exception):
    """Training stopped by ``signal`` after ``step`` completed updates.

    ``checkpoint`` is the directory holding the checkpoint of that step (None
    when the run had no checkpointer, so nothing was saved).
    """

    def __init__(self, step: int, signal_name: str, checkpoint: str | None):
        saved = (f"checkpoint saved in {checkpoint}; run the same command with --resume to "
                 "continue exactly" if checkpoint else "no checkpointer, nothing was saved")
        super().__init__(f"stopped by {signal_name} after step {step}; {saved}")
        self.step, self.signal_name, self.checkpoint = step, signal_name, checkpoint


def num_members(state: TrainState) -> int | None:
    """Ensemble size of ``state``, or None for a single model."""
    return None if np.ndim(state.step) == 0 else int(np.shape(state.step)[0])


def start_step(state: TrainState) -> int:
    """How many updates ``state`` (or its first member) has made; works on any process."""
    step = state.step
    if isinstance(step, jax.Array) and not step.is_fully_addressable:
        step = step.addressable_shards[0].data  # every member has made the same number
    return int(np.ravel(jax.device_get(step))[0])


def evaluate(eval_step: Callable, params: Any, tasks: Tasks, data, batch_size: int = 1024,
             members: int | None = None) -> Results | list[Results]:
    """Metrics of ``params`` on all of ``data``.

    ``data`` is a :class:`~mtl_jax.data.Dataset` (every task's labels per
    example) or a :class:`~mtl_jax.data.MultiSource` (each task its own set,
    evaluated with that task's head only). For an ensemble pass the lifted
    ``eval_step`` and ``members``; the result is then one dict per member.
    """
    sources = getattr(data, "sources", None)
    if sources is None:
        totals = _accumulate(eval_step, params, data.eval_batches(batch_size), None)
    else:
        totals = {}
        for name, source in sources.items():
            batches = ({"x": b["x"], "y": {name: b["y"][name]}}
                       for b in source.eval_batches(batch_size))
            totals.update(_accumulate(eval_step, params, batches, name))
    if members is None:
        return tasks.finalize(totals)
    return [tasks.finalize(member(totals, i)) for i in range(members)]


def _accumulate(eval_step, params, batches, task):
    total = None
    for batch in batches:
        sums = eval_step(params, batch, task=task) if task else eval_step(params, batch)
        total = sums if total is None else jax.tree_util.tree_map(np.add, total, sums)
    if total is None:
        raise ValueError("evaluation data is empty")
    return jax.device_get(total)


def fit(train_step: Callable, state: TrainState, tasks: Tasks, data: Source, *, steps: int,
        batch_size: int, seed: int = 0, eval_fn: Callable[[Any], Any] | None = None,
        eval_every: int = 0, log_every: int = 10, log_path: str | os.PathLike | None = None,
        checkpointer: Checkpointer | None = None, progress: bool = True):
    """Train ``state`` up to ``steps`` updates; returns ``(state, last_eval)``.

    Args:
      train_step: a compiled ``(state, batch) -> (state, logs)``.
      state: a train state (or an ensemble of them); training resumes from
        ``state.step``.
      tasks: the tasks, for names in logs and errors.
      data: a source with ``batch(step, batch_size, seed)``.
      steps: total number of updates (including any already done).
      batch_size, seed: passed to ``data.batch``.
      eval_fn: ``params -> results`` (one dict, or one per member), run every
        ``eval_every`` steps and at the end.
      log_every: write the training losses every this many steps.
      log_path: JSON-lines file to append train and eval records to.
      checkpointer: saves every ``checkpointer.save_every`` steps and at the end.
      progress: show a progress bar.

    Raises:
      NonFiniteLossError: at the first step whose loss is NaN or infinite; the
        state of that step is neither returned nor saved.
      Preempted: on SIGTERM or SIGINT (in the main thread), after finishing the
        step under way and saving it.
    """
    if steps < 0 or batch_size < 1 or log_every < 1 or eval_every < 0:
        raise ValueError(f"need steps >= 0, batch_size >= 1, log_every >= 1, eval_every >= 0; "
                         f"got {steps}, {batch_size}, {log_every}, {eval_every}")
    members = num_members(state)
    start = start_step(state)
    log = open(log_path, "a") if log_path is not None else None  # noqa: SIM115
    last_eval = None
    bar = tqdm(total=steps, initial=start, disable=not progress, desc="train",
               dynamic_ncols=True)
    try:
        with _deferred_signals() as received:
            for step in range(start, steps):
                state, logs = train_step(state, data.batch(step, batch_size, seed))
                losses = np.asarray(jax.device_get(logs["task_losses"]))
                _check_finite(losses, tasks, step, members)
                done = step + 1
                if done % log_every == 0 or done == steps:
                    _write_train(log, done, tasks, jax.device_get(logs), members)
                    bar.set_postfix(
                        loss=f"{float(np.mean(jax.device_get(logs['loss']))):.4f}")
                if eval_fn is not None and (
                        (eval_every and done % eval_every == 0) or done == steps):
                    last_eval = eval_fn(state.params)
                    _write_eval(log, done, last_eval)
                stop = distributed.any_process(bool(received))  # all processes stop together
                if checkpointer is not None:
                    checkpointer.save(done, state, force=done == steps or stop)
                bar.update(1)
                if stop and done < steps:
                    where = str(checkpointer.directory) if checkpointer else None
                    raise Preempted(done, received[0] if received else "a signal to another "
                                    "process", where)
        if eval_fn is not None and last_eval is None:
            last_eval = eval_fn(state.params)
    finally:
        bar.close()
        if log is not None:
            log.close()
        if checkpointer is not None:
            checkpointer.close()
    return state, last_eval


@contextlib.contextmanager
def _deferred_signals():
    """Record SIGTERM/SIGINT in the yielded list instead of acting on them (main thread)."""
    received: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {}

    def record(signum, frame):
        received.append(signal.Signals(signum).name)
        for number, handler in previous.items():  # a second signal acts as usual
            signal.signal(number, handler)

    for number in (signal.SIGTERM, signal.SIGINT):
        previous[number] = signal.signal(number, record)
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _check_finite(losses: np.ndarray, tasks: Tasks, step: int, members: int | None) -> None:
    bad = np.argwhere(~np.isfinite(losses))
    if bad.size:
        *member, task = bad[0]
        raise NonFiniteLossError(step, tasks.names[task], float(losses[tuple(bad[0])]),
                                 int(member[0]) if member else None)


def _write_train(log, step: int, tasks: Tasks, logs: Mapping, members: int | None) -> None:
    if log is None:
        return
    for index in [None] if members is None else range(members):
        values = logs if index is None else member(logs, index)
        record = {"step": step, "split": "train",
                  "losses": dict(zip(tasks.names, map(float, values["task_losses"]))),
                  "loss": float(values["loss"]), "penalty": float(values["penalty"])}
        if "task_weights" in values:
            record["weights"] = dict(zip(tasks.names, map(float, values["task_weights"])))
        if index is not None:
            record["member"] = index
        log.write(json.dumps(record) + "\n")
    log.flush()


def _write_eval(log, step: int, results) -> None:
    if log is None:
        return
    per_member = results if isinstance(results, list) else [results]
    for index, metrics in enumerate(per_member):
        record = {"step": step, "split": "test", "metrics": metrics}
        if isinstance(results, list):
            record["member"] = index
        log.write(json.dumps(record) + "\n")
    log.flush()
