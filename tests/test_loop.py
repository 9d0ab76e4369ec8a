"""The training loop (mtl_jax.loop): logs, evaluation, a clean stop at a non-finite loss."""

import json

import jax
import numpy as np
import optax
import pytest

import mtl_jax as mtl
from mtl_jax.checkpoint import Checkpointer
from mtl_jax.data import Dataset, MultiSource
from mtl_jax.loop import NonFiniteLossError, evaluate, fit


def dataset(rng, n=48):
    x = rng.normal(size=(n, 2, 2, 1)).astype(np.float32)
    y = {"a": (x[:, 0, 0, 0] > 0).astype(np.int32), "b": x.sum((1, 2)).astype(np.float32)}
    return Dataset(x, y, "toy")


@pytest.fixture
def setup():
    tasks = mtl.Tasks([mtl.classification("a", 2), mtl.regression("b", 1)])
    model = mtl.models.HardSharing(mtl.models.MLPTrunk((8,)),
                                   mtl.models.TaskHeads({"a": _dense(2), "b": _dense(1)}))
    return model, tasks


def _dense(n):
    import flax.linen as nn
    return nn.Dense(n)


def test_fit_logs_every_n_steps_and_evaluates(setup, tmp_path):
    model, tasks = setup
    data = dataset(np.random.default_rng(0))
    opt = optax.adam(1e-2)
    state = mtl.init_state(model, tasks, jax.random.key(0), data.batch(0, 8, 0), opt)
    eval_step = jax.jit(mtl.make_eval_step(model, tasks), static_argnames="task")
    log = tmp_path / "m.jsonl"
    state, results = fit(jax.jit(mtl.make_train_step(model, tasks, opt)), state, tasks, data,
                         steps=12, batch_size=8, eval_fn=lambda p: evaluate(eval_step, p, tasks,
                                                                           data),
                         eval_every=6, log_every=4, log_path=log, progress=False)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [4, 8, 12]
    assert [r["step"] for r in records if r["split"] == "test"] == [6, 12]
    assert records[-1]["metrics"] == results
    out = model.apply(state.params, data.x)
    np.testing.assert_allclose(results["a"]["accuracy"],
                               np.mean(np.argmax(out["a"], 1) == data.y["a"]), rtol=1e-6)
    np.testing.assert_allclose(results["b"]["rmse"],
                               np.sqrt(np.mean((out["b"] - data.y["b"]) ** 2)), rtol=1e-5)


class Poisoned:
    """A source whose batch at ``bad_step`` has NaN labels for task "b"."""

    def __init__(self, data, bad_step):
        self.data, self.bad_step = data, bad_step

    def batch(self, step, batch_size, seed):
        batch = self.data.batch(step, batch_size, seed)
        if step == self.bad_step:
            batch["y"]["b"] = np.full_like(batch["y"]["b"], np.nan)
        return batch


def test_nan_stops_at_its_step_naming_the_task_and_keeps_last_checkpoint(setup, tmp_path):
    model, tasks = setup
    data = Poisoned(dataset(np.random.default_rng(0)), bad_step=5)
    opt = optax.sgd(1e-2)
    state = mtl.init_state(model, tasks, jax.random.key(0), data.batch(0, 8, 0), opt)
    ckpt = Checkpointer(tmp_path / "ck", save_every=2, keep=5)
    with pytest.raises(NonFiniteLossError, match="task 'b' at step 5") as info:
        fit(jax.jit(mtl.make_train_step(model, tasks, opt)), state, tasks, data, steps=12,
            batch_size=8, seed=3, checkpointer=ckpt, progress=False)
    assert info.value.task == "b" and info.value.step == 5
    reopened = Checkpointer(tmp_path / "ck", save_every=2, keep=5, resume=True)
    assert reopened.latest_step == 4  # saved after 4 updates; nothing after the bad batch
    restored = reopened.restore_latest(state)
    assert int(restored.step) == 4
    assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(restored.params))
    reopened.close()


def test_nan_in_an_ensemble_names_the_member(setup):
    model, tasks = setup
    data = dataset(np.random.default_rng(1))
    opt = optax.sgd(1e-2)
    states = mtl.ensemble.init(model, tasks, jax.random.split(jax.random.key(0), 2),
                               data.batch(0, 8, 0), opt, loss_weights=[[1, 1], [1e38, 1e38]])
    with pytest.raises(NonFiniteLossError, match="member 1"):
        fit(mtl.ensemble.step(mtl.make_train_step(model, tasks, opt), "vmap"), states, tasks,
            data, steps=50, batch_size=8, progress=False)


def test_multi_source_evaluation_uses_each_tasks_own_set(setup):
    model, tasks = setup
    rng = np.random.default_rng(2)
    a, b = dataset(rng, n=16), dataset(rng, n=24)
    source = MultiSource({"a": a.select(["a"]), "b": b.select(["b"])})
    opt = optax.sgd(0.1)
    state = mtl.init_state(model, tasks, jax.random.key(0), source.batch(0, 4, 0), opt)
    eval_step = jax.jit(mtl.make_eval_step(model, tasks), static_argnames="task")
    results = evaluate(eval_step, state.params, tasks, source, batch_size=5)
    out_a = model.apply(state.params, a.x, task="a")
    out_b = model.apply(state.params, b.x, task="b")
    np.testing.assert_allclose(results["a"]["accuracy"], np.mean(np.argmax(out_a, 1) == a.y["a"]))
    np.testing.assert_allclose(results["b"]["mae"], np.mean(np.abs(out_b - b.y["b"])), rtol=1e-5)
