"""Multi-process training on one machine: two CPU processes on 127.0.0.1 equal one process.

Each process simulates two CPU devices, so the ``members=2,data=2`` mesh spans
both processes: ensemble members are split between the processes and every batch
between each process's two devices. The trained parameters and optimizer state
must equal a single-process run's to float tolerance (the data-parallel mean is
summed in another order), and only process 0 may write logs and results.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from mtl_jax import cli, distributed
from mtl_jax.checkpoint import read_latest
from mtl_jax.experiment import Config, run

ARGS = ["train", "--trunk", "mlp", "--steps", "30", "--batch-size", "16", "--seeds", "2",
        "--eval-every", "10", "--checkpoint-every", "10", "--quiet"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    address = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "mtl_jax.cli", *ARGS, "--mesh", "members=2,data=2",
         "--out", str(root / "two"), "--coordinator", address, "--num-processes", "2",
         "--process-id", str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    run(Config(trunk="mlp", steps=30, batch_size=16, seeds=2, eval_every=10,
               checkpoint_every=10), root / "one", progress=False)
    return root / "one", root / "two", [out for out, _ in outputs]


def test_two_processes_train_what_one_process_trains(runs):
    one, two, _ = runs
    step_one, state_one = read_latest(one / "checkpoints")
    step_two, state_two = read_latest(two / "checkpoints")
    assert step_one == step_two == 30
    leaves_one, leaves_two = (jax.tree_util.tree_leaves(s) for s in (state_one, state_two))
    assert len(leaves_one) == len(leaves_two)
    for a, b in zip(leaves_one, leaves_two):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=2e-5)


def test_only_process_zero_writes_logs_and_results(runs):
    one, two, stdouts = runs
    assert "| multi-task |" in stdouts[0]
    assert [line for line in stdouts[1].splitlines()  # gloo's own connection notes aside
            if not line.startswith("[Gloo]")] == []
    records = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"], r.get("member")) for r in records] == [
        (r["step"], r["split"], r.get("member")) for r in reference]  # once each, not twice
    results = json.loads((two / "results.json").read_text())
    expected = json.loads((one / "results.json").read_text())
    np.testing.assert_allclose(results["delta_m"], expected["delta_m"], atol=0.5)


@pytest.mark.parametrize("flags, message", [
    (["--coordinator", "127.0.0.1:1234"], "needs --num-processes"),
    (["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"],
     "coordinator must be HOST:PORT"),
    (["--coordinator", "h:99999", "--num-processes", "2", "--process-id", "0"],
     "coordinator must be HOST:PORT"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"],
     "0 <= process_id < num_processes"),
    (["--coordinator", "h:1", "--num-processes", "two", "--process-id", "0"],
     "num_processes must be an integer"),
])
def test_bad_multi_process_flags_are_refused_before_joining(flags, message, capsys, tmp_path):
    assert cli.main([*ARGS, "--out", str(tmp_path / "x"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_settings_read_the_environment_after_the_flags():
    env = {"JAX_COORDINATOR_ADDRESS": "a:1", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert distributed.settings(None, None, None, env) == {
        "coordinator_address": "a:1", "num_processes": 4, "process_id": 3}
    assert distributed.settings(None, "2", "1", env)["num_processes"] == 2
