"""An ensemble trained over a device mesh equals the same ensemble on one device.

The equivalence needs several devices, so it runs this file as a script in a
subprocess with 8 simulated CPU devices (``XLA_FLAGS``, read when JAX starts):
each setup trains on one device and on three meshes, and the parent process
compares the parameters.
"""

import dataclasses
import functools
import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

import mtl_jax as mtl
from mtl_jax import cli, experiment, sharding

MESHES = {"members=4,data=2": (4, 2), "members=8": (8, 1), "data=8": (1, 8)}
SETUPS = ("hard", "soft-trace", "pcgrad")
MEMBERS, BATCH, STEPS = 8, 16, 3
EXPERIMENT = experiment.Config(trunk="mlp", seeds=4, steps=3, batch_size=16, num_train=64,
                               num_test=64, eval_every=0)
# Float32 sums reordered by the data-parallel reduction (each device sums its 8 or
# 2 examples, then the partial sums are all-reduced) differ in the last bits: after
# 3 steps of SGD with lr 0.1 the weights (size up to ~1) differ by up to 2e-7.
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


def build(setup: str):
    """Model, tasks, optimizer, train step and init options of a setup."""
    names = ("a", "b")
    tasks = mtl.Tasks([mtl.classification(n, 3) for n in names])
    optimizer = optax.sgd(0.1)
    if setup == "soft-trace":
        model = mtl.models.SoftSharing(nn.Sequential([nn.Dense(6), nn.tanh, nn.Dense(3)]), names)
        penalty = functools.partial(mtl.penalties.trace_norm, kind="tucker")
        return (model, tasks, optimizer,
                mtl.make_train_step(model, tasks, optimizer, penalty=penalty),
                {"penalty_weight": 0.1})
    model = mtl.models.HardSharing(mtl.models.MLPTrunk((8,)), mtl.models.StackedHeads(names, 3))
    if setup == "hard":
        return model, tasks, optimizer, mtl.make_train_step(model, tasks, optimizer), {}
    aggregator, wrt = mtl.aggregators.get(setup, len(names))
    return (model, tasks, optimizer,
            mtl.make_train_step(model, tasks, optimizer, aggregator=aggregator, wrt=wrt),
            {"aggregator": aggregator})


def batches(steps: int = STEPS) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"x": rng.normal(size=(BATCH, 5)).astype(np.float32),
             "y": {n: rng.integers(0, 3, BATCH).astype(np.int32) for n in ("a", "b")}}
            for _ in range(steps)]


def train(setup: str, meshes: list) -> list:
    """Parameters after ``STEPS`` steps from one init, per mesh (None: one device)."""
    model, tasks, optimizer, train_step, options = build(setup)
    data = batches()
    initial = jax.device_get(mtl.ensemble.init(
        model, tasks, jax.random.split(jax.random.key(0), MEMBERS), data[0], optimizer,
        loss_weights=[1.0, 0.5], **options))
    results = []
    for mesh in meshes:
        if mesh is None:
            states, step = jax.device_put(initial), mtl.ensemble.step(train_step, "vmap")
        else:
            states, step = sharding.shard_ensemble(initial, mesh), sharding.sharded_step(
                train_step, mesh)
        for batch in data:
            states, _ = step(states, batch)
        results.append(states.params)
    return results


def flat(params) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def main(out: pathlib.Path) -> None:
    """Run every setup on one device and on every mesh; save what the tests compare."""
    placement = {}
    for setup in SETUPS:
        single, *sharded = train(setup, [None, *(sharding.make_mesh(*m) for m in MESHES.values())])
        np.savez(out / f"{setup}.npz", **flat(single))
        for name, params in zip(MESHES, sharded, strict=True):
            leaf = jax.tree_util.tree_leaves(params)[0]
            placement[f"{setup} {name}"] = [len(leaf.sharding.device_set),
                                            leaf.addressable_shards[0].data.shape[0]]
            np.savez(out / f"{setup} {name}.npz", **flat(params))
    reports = {name: experiment.run(dataclasses.replace(EXPERIMENT, mesh=mesh),
                                    progress=False).to_json()
               for name, mesh in (("single", (1, 1)), ("mesh", (4, 2)))}
    defaults = {f"{members} {batch}": dict(getattr(sharding.default_mesh(members, batch), "shape",
                                                   {}))
                for members, batch in ((12, 16), (9, 16), (6, 13), (5, 7))}
    errors = {}
    for name, changes in {"members": {"seeds": 3}, "batch": {"batch_size": 13}}.items():
        try:
            experiment.run(dataclasses.replace(EXPERIMENT, mesh=(4, 2), **changes), progress=False)
        except ValueError as error:
            errors[name] = str(error)
    (out / "placement.json").write_text(json.dumps(placement))
    (out / "reports.json").write_text(json.dumps(reports))
    (out / "errors.json").write_text(json.dumps(errors))
    (out / "defaults.json").write_text(json.dumps(defaults))


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("sharding")
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    done = subprocess.run([sys.executable, __file__, str(out)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("setup", SETUPS)
def test_sharded_training_equals_one_device(results, setup, mesh):
    single = np.load(results / f"{setup}.npz")
    sharded = np.load(results / f"{setup} {mesh}.npz")
    assert set(sharded) == set(single)
    for path in single:
        np.testing.assert_allclose(sharded[path], single[path], err_msg=path, **TOLERANCE)
    members, _ = MESHES[mesh]
    placement = json.loads((results / "placement.json").read_text())
    assert placement[f"{setup} {mesh}"] == [8, MEMBERS // members]  # 8 devices, split members


def test_experiment_over_a_mesh_reports_what_one_device_does(results):
    reports = json.loads((results / "reports.json").read_text())
    for key in ("runs", "baselines"):
        for single, sharded in zip(reports["single"][key], reports["mesh"][key], strict=True):
            for task, metrics in single.items():
                for metric, value in metrics.items():
                    assert sharded[task][metric] == pytest.approx(value, abs=1e-5), (task, metric)


def test_experiment_refuses_members_or_batch_that_do_not_split(results):
    errors = json.loads((results / "errors.json").read_text())
    assert errors == {
        "members": "ensemble members (seeds, and seeds x tasks baselines) (9) must be divisible "
                   "by the mesh's members axis (4)",
        "batch": "batch_size (13) must be divisible by the mesh's data axis (2)"}


def test_default_mesh_uses_the_devices_that_members_and_batch_divide(results):
    assert json.loads((results / "defaults.json").read_text()) == {
        "12 16": {"members": 4, "data": 2},  # all 8 devices
        "9 16": {"members": 1, "data": 8},  # 9 members share no factor with 8: data parallel
        "6 13": {"members": 2, "data": 1},  # 2 of the 8 devices
        "5 7": {}}  # nothing divides: one device


@pytest.mark.parametrize(("spec", "message"), [
    ("members=4,data", "bad mesh 'members=4,data'"),
    ("gpus=2", "bad mesh 'gpus=2'"),
    ("members=0", "axis sizes must be >= 1"),
    ("members=2,members=2", "bad mesh"),
])
def test_bad_mesh_spec_is_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        sharding.parse_mesh(spec)


def test_mesh_needing_other_devices_is_refused():
    count = jax.device_count()
    with pytest.raises(ValueError, match=rf"members=3 x data=2 needs 6 devices, {count} visible"):
        sharding.make_mesh(3, 2)
    with pytest.raises(ValueError, match="mesh data must be >= 1"):
        sharding.make_mesh(data=0)
    assert dict(sharding.make_mesh().shape) == {"members": count, "data": 1}


def test_members_and_batch_must_split_evenly_over_the_mesh():
    # One device cannot form a 4 x 2 mesh; the checks read only the mesh's shape.
    fake = type("FakeMesh", (), {"shape": {"members": 4, "data": 2}})()
    with pytest.raises(ValueError, match=r"ensemble members \(6\) must be divisible by the "
                                         r"mesh's members axis \(4\)"):
        sharding.shard_ensemble({"w": np.zeros((6, 3))}, fake)
    with pytest.raises(ValueError, match=r"batch size \(5\) must be divisible by the mesh's "
                                         r"data axis \(2\)"):
        sharding.shard_batch({"x": np.zeros((5, 3))}, fake)


def test_cli_refuses_a_bad_mesh_in_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["train", "--mesh", "members=x"])
    assert "bad mesh 'members=x'" in capsys.readouterr().err
    count = jax.device_count()
    assert cli.main(["train", "--mesh", f"members={count + 1}", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error == (f"mtl-jax: error: mesh members={count + 1} x data=1 needs {count + 1} "
                     f"devices, {count} visible\n")
    assert cli.main(["train", "--mesh", f"members={count + 1}", "--lowering", "loop"]) == 2
    assert "lowering 'loop' cannot be combined" in capsys.readouterr().err


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
