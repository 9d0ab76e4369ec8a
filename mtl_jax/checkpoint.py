"""Checkpoints with orbax: save every N steps and at the end, keep the last K, resume.

A run directory's checkpoints belong to one configuration: the config is
stored beside them (``config.json``) and a run with a different config, or a
state of a different shape, is refused before anything is written. Existing
checkpoints are never overwritten by a fresh run: continue them with
``resume=True`` or choose another directory.

Orbax writes each checkpoint to a temporary folder and renames it when
complete, so a process killed mid-save leaves the previous checkpoint as the
latest. On resuming, such a half-written folder is removed and reported, and a
complete checkpoint that cannot be read (a damaged file) is set aside as
``<step>.unreadable`` and reported: the run falls back to the newest checkpoint
that can be read. Both reports go to the ``mtl_jax`` logger, which prints
warnings on stderr when logging is not configured.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from mtl_jax import distributed
from mtl_jax.tree import path_str

CONFIG_FILE = "config.json"
HALF_WRITTEN = ".orbax-checkpoint-tmp"
log = logging.getLogger("mtl_jax")


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
        self._pending: int | None = None
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
        if not config_path.exists() and distributed.is_main():
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True))

    @property
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, *, force: bool = False) -> None:
        """Save ``state`` at ``step`` if it is due (or ``force``); asynchronous.

        Raises:
          CheckpointError: when this or the previous save could not be written (a
            full or read-only filesystem); the complete checkpoints stay intact.
        """
        due = force or step % self.save_every == 0
        if due and step not in self._manager.all_steps():
            with self._writing():  # the previous save first: its error is its own
                self._manager.wait_until_finished()
            self._pending = step
            with self._writing():
                self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

    @contextlib.contextmanager
    def _writing(self):
        """Turn a failed (possibly earlier, asynchronous) save into a CheckpointError."""
        try:
            yield
        except Exception as error:  # noqa: BLE001 - orbax and tensorstore raise many kinds
            complete = [s for s in self._manager.all_steps() if s != self._pending]
            latest = f"step {max(complete)}" if complete else "none"
            raise CheckpointError(
                f"could not write the checkpoint of step {self._pending} in "
                f"{str(self.directory)!r} ({type(error).__name__}: {error}); the complete "
                f"checkpoints are intact (latest: {latest})") from None

    def restore_latest(self, template: Any) -> Any | None:
        """The newest readable checkpoint, laid out like ``template``; None when there is none.

        Half-written checkpoints are removed and unreadable ones set aside, each
        reported on the ``mtl_jax`` logger; a layout that does not fit ``template``
        raises :class:`CheckpointError`.
        """
        self._manager.wait_until_finished()
        self._remove_half_written()
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                saved = self._manager.item_metadata(step).tree
            except Exception as error:  # noqa: BLE001 - any damage makes it unreadable
                self._set_aside(step, error)
                continue
            _check_layout(saved, template, self.directory)
            try:
                return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
            except Exception as error:  # noqa: BLE001
                self._set_aside(step, error)
        return None

    def _remove_half_written(self) -> None:
        if not distributed.is_main():  # one process tidies up; the others wait in restore
            return
        for path in sorted(self.directory.glob(f"*{HALF_WRITTEN}*")):
            log.warning("removing the half-written checkpoint %s (its process stopped during "
                        "the save); it is never loaded", path)
            shutil.rmtree(path)

    def _set_aside(self, step: int, error: Exception) -> None:
        path = self.directory / str(step)
        aside = path.with_name(f"{step}.unreadable")
        if distributed.is_main():
            shutil.rmtree(aside, ignore_errors=True)
            path.rename(aside)
        distributed.barrier(f"set aside checkpoint {step}")
        self._manager.reload()
        earlier = [s for s in self._manager.all_steps() if s < step]
        fallback = f"step {max(earlier)}" if earlier else "the start (no earlier checkpoint)"
        log.warning("checkpoint of step %d cannot be read (%s: %s); moved it to %s and "
                    "falling back to %s", step, type(error).__name__, error, aside, fallback)

    def close(self) -> None:
        """Wait for pending saves and release the directory."""
        try:
            with self._writing():
                self._manager.wait_until_finished()
        finally:
            self._manager.close()


def read_latest(directory: str | os.PathLike) -> tuple[int, Any]:
    """``(step, state)`` of the newest checkpoint in ``directory`` as arrays on this process's
    first device, whatever mesh or processes wrote it (to inspect or compare runs).

    Examples:
      >>> import tempfile, jax.numpy as jnp
      >>> ckpt = Checkpointer(tempfile.mkdtemp(), save_every=1)
      >>> ckpt.save(3, {"w": jnp.ones(2)}); ckpt.close()
      >>> step, state = read_latest(ckpt.directory)
      >>> step, state["w"].tolist()
      (3, [1.0, 1.0])
    """
    manager = ocp.CheckpointManager(pathlib.Path(directory).expanduser().resolve(),
                                    item_handlers=ocp.StandardCheckpointHandler())
    try:
        step = manager.latest_step()
        if step is None:
            raise CheckpointError(f"no checkpoint in {str(directory)!r}")
        here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree_util.tree_map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here),
            manager.item_metadata(step).tree, is_leaf=lambda m: hasattr(m, "shape"))
        return step, manager.restore(step, args=ocp.args.StandardRestore(abstract))
    finally:
        manager.close()


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
