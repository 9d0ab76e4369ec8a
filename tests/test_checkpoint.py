"""Checkpoints: keep K, refuse foreign or existing runs, and exact resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
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


TRAIN = [sys.executable, "-m", "mtl_jax.cli", "train", "--trunk", "mlp", "--steps", "300",
         "--batch-size", "32", "--checkpoint-every", "25", "--eval-every", "0", "--quiet"]


def final_state(run_dir):
    """The raw arrays of the run's latest checkpoint (no template: what is on disk)."""
    manager = ocp.CheckpointManager(run_dir / "checkpoints",
                                    item_handlers=ocp.StandardCheckpointHandler())
    step = manager.latest_step()
    tree = manager.restore(step, args=ocp.args.StandardRestore())
    manager.close()
    return step, jax.tree_util.tree_leaves(tree)


def test_killed_run_resumes_to_exactly_the_uninterrupted_result(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run([*TRAIN, "--out", str(whole)], check=True, env=env, capture_output=True)
    proc = subprocess.Popen([*TRAIN, "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        ckpts = killed / "checkpoints"
        if ckpts.exists() and any(p.name.isdigit() and int(p.name) >= 50 for p in ckpts.iterdir()):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_at, _ = final_state(killed)
    assert 50 <= interrupted_at < 300
    resumed = subprocess.run([*TRAIN, "--out", str(killed), "--resume"], env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    step_a, leaves_a = final_state(whole)
    step_b, leaves_b = final_state(killed)
    assert step_a == step_b == 300
    for a, b in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(a, b)  # bit for bit
    assert json.loads((whole / "results.json").read_text()) == json.loads(
        (killed / "results.json").read_text())
