"""Checkpoints with orbax: save every N steps and at the end, keep the last K, resume.

A run directory's checkpoints belong to one configuration: the config is
stored beside them (``config.json``) and a run with a different config, or a
state of a different shape, is refused before anything is written. Existing
checkpoints are never overwritten by a fresh run: continue them with
``resume=True`` or choose another directory. Orbax writes each checkpoint to a
temporary folder and renames it when complete, so a process killed mid-save
leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from mtl_jax.tree import path_str

CONFIG_FILE = "config.json"


class CheckpointError(RuntimeError):
    """A checkpoint directory cannot be used for this run."""


def check_writable(directory: str | os.PathLike) -> pathlib.Path:
    """Create ``directory`` if needed and prove it is writable, or raise naming it."""
    path = pathlib.Path(directory).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        raise CheckpointError(f"output directory {str(path)!r} is not writable: "
                              f"{error.strerror or error}") from None
    return path


class Checkpointer:
    """Periodic orbax checkpoints of a train state in ``directory``.

    Args:
      directory: where checkpoints live (created if missing).
      save_every: save when the step is a multiple of this (and at the end).
      keep: how many of the latest checkpoints to keep.
      config: a JSON-serialisable description of the run; a directory written
        with another config is refused.
      resume: whether existing checkpoints may be continued; without it a
        directory that already holds checkpoints is refused.

    Examples:
      >>> import tempfile, jax.numpy as jnp
      >>> ckpt = Checkpointer(tempfile.mkdtemp(), save_every=2, keep=1, config={"lr": 0.1})
      >>> ckpt.save(2, {"w": jnp.ones(3)})
      >>> ckpt.restore_latest({"w": jnp.zeros(3)})["w"].tolist()
      [1.0, 1.0, 1.0]
      >>> ckpt.close()
    """

    def __init__(self, directory: str | os.PathLike, *, save_every: int, keep: int = 3,
                 config: Mapping[str, Any] | None = None, resume: bool = False):
        if save_every < 1 or keep < 1:
            raise ValueError(f"save_every and keep must be >= 1, got {save_every} and {keep}")
        self.directory = check_writable(directory)
        self.save_every = save_every
        config_path = self.directory / CONFIG_FILE
        config = json.loads(json.dumps(config or {}))
        if config_path.exists():
            stored = json.loads(config_path.read_text())
            if stored != config:
                raise CheckpointError(
                    f"checkpoint directory {str(self.directory)!r} was written by a different "
                    f"configuration ({_describe_difference(stored, config)}); use another "
                    "directory")
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_handlers=ocp.StandardCheckpointHandler())
        existing = self._manager.all_steps()
        if existing and not resume:
            self._manager.close()
            raise CheckpointError(
                f"{str(self.directory)!r} already holds checkpoints (steps {sorted(existing)}); "
                "resume them or choose another directory")
        if not config_path.exists():
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True))

    @property
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, *, force: bool = False) -> None:
        """Save ``state`` at ``step`` if it is due (or ``force``); asynchronous."""
        due = force or step % self.save_every == 0
        if due and step not in self._manager.all_steps():
            self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

    def restore_latest(self, template: Any) -> Any | None:
        """The latest checkpoint, laid out like ``template``; None when there is none."""
        self._manager.wait_until_finished()
        step = self._manager.latest_step()
        if step is None:
            return None
        _check_layout(self._manager.item_metadata(step).tree, template, self.directory)
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        """Wait for pending saves and release the directory."""
        self._manager.wait_until_finished()
        self._manager.close()


def _describe_difference(stored: Mapping, current: Mapping) -> str:
    keys = sorted(set(stored) | set(current))
    diffs = [f"{k}: {stored.get(k, '<unset>')!r} then, {current.get(k, '<unset>')!r} now"
             for k in keys if stored.get(k) != current.get(k)]
    return "; ".join(diffs[:5])


def _check_layout(saved, template, directory) -> None:
    def flat(tree):
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {path_str(path): tuple(np.shape(leaf))
                for path, leaf in leaves}

    saved_shapes = flat(jax.tree_util.tree_map(
        lambda m: np.empty(m.shape, np.uint8) if hasattr(m, "shape") else m, saved,
        is_leaf=lambda m: hasattr(m, "shape")))
    wanted = flat(template)
    for name in [*wanted, *(k for k in saved_shapes if k not in wanted)]:
        if saved_shapes.get(name) != wanted.get(name):
            raise CheckpointError(
                f"checkpoint in {str(directory)!r} does not fit this model: parameter "
                f"{name!r} is {saved_shapes.get(name, 'missing')} there and "
                f"{wanted.get(name, 'missing')} here")
