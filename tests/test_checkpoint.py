"""Checkpoints: keep K, refuse foreign or existing runs, never load a damaged one.

Killing and resuming real training processes is in ``test_faults.py``.
"""

import logging

import jax.numpy as jnp
import pytest

from mtl_jax.checkpoint import Checkpointer, CheckpointError


def test_saves_every_n_keeps_last_k_and_restores(tmp_path):
    ckpt = Checkpointer(tmp_path, save_every=3, keep=2, config={"x": 1})
    for step in range(1, 11):
        ckpt.save(step, {"w": jnp.full(2, float(step))}, force=step == 10)
    ckpt.close()
    reopened = Checkpointer(tmp_path, save_every=3, keep=2, config={"x": 1}, resume=True)
    assert reopened.latest_step == 10
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [9, 10]
    assert reopened.restore_latest({"w": jnp.zeros(2)})["w"].tolist() == [10.0, 10.0]
    reopened.close()


def test_refuses_existing_run_foreign_config_and_foreign_model(tmp_path):
    first = Checkpointer(tmp_path, save_every=1, config={"lr": 0.1})
    first.save(1, {"w": jnp.ones(3)})
    first.close()
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        Checkpointer(tmp_path, save_every=1, config={"lr": 0.1})
    with pytest.raises(CheckpointError, match="different configuration.*lr: 0.1 then, 0.2 now"):
        Checkpointer(tmp_path, save_every=1, config={"lr": 0.2}, resume=True)
    ckpt = Checkpointer(tmp_path, save_every=1, config={"lr": 0.1}, resume=True)
    with pytest.raises(CheckpointError, match="parameter 'w' is \\(3,\\) there and \\(4,\\) here"):
        ckpt.restore_latest({"w": jnp.ones(4)})
    assert ckpt.restore_latest({"w": jnp.zeros(3)})["w"].tolist() == [1.0, 1.0, 1.0]
    ckpt.close()


def test_unwritable_directory_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(CheckpointError, match="not writable"):
        Checkpointer(blocker / "ck", save_every=1)
    assert blocker.read_text() == "not a directory"


def test_half_written_and_unreadable_checkpoints_are_never_loaded(tmp_path, caplog,
                                                                  monkeypatch):
    monkeypatch.setattr(logging.getLogger("mtl_jax"), "propagate", True)  # cli.main may unset it
    ckpt = Checkpointer(tmp_path, save_every=1, keep=5)
    for step in (1, 2, 3):
        ckpt.save(step, {"w": jnp.full(2, float(step))})
    ckpt.close()
    half = tmp_path / "4.orbax-checkpoint-tmp"  # what a process killed mid-save leaves
    half.mkdir()
    (half / "partial").write_bytes(b"\0" * 10)
    for data in (tmp_path / "3").rglob("d/*"):  # damage every data file of step 3
        data.write_bytes(data.read_bytes()[:5])
    reopened = Checkpointer(tmp_path, save_every=1, keep=5, resume=True)
    with caplog.at_level("WARNING", logger="mtl_jax"):
        restored = reopened.restore_latest({"w": jnp.zeros(2)})
    assert restored["w"].tolist() == [2.0, 2.0]
    assert not half.exists() and (tmp_path / "3.unreadable").is_dir()
    assert "half-written checkpoint" in caplog.text and "4.orbax-checkpoint-tmp" in caplog.text
    assert "checkpoint of step 3 cannot be read" in caplog.text
    assert "falling back to step 2" in caplog.text
    reopened.save(3, {"w": jnp.full(2, 30.0)})  # the step is written again, not skipped
    reopened.close()
    again = Checkpointer(tmp_path, save_every=1, keep=5, resume=True)
    assert again.restore_latest({"w": jnp.zeros(2)})["w"].tolist() == [30.0, 30.0]
    again.close()
