"""Tests of mtl_jax.tasks: losses and metrics against numpy float64, validation errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtl_jax.tasks import LOSSES, METRICS, Task, Tasks, binary, classification, regression

RTOL, ATOL = 1e-5, 1e-6


# --------------------------------------------------------------------------- numpy references

def np_cross_entropy(logits, y):
    logits = np.asarray(logits, np.float64)
    m = logits.max(axis=-1, keepdims=True)
    log_softmax = logits - m - np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))
    return -log_softmax[np.arange(len(y)), y]                     # per example


def np_bce_logits(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    p = 1 / (1 + np.exp(-x))
    per = -(y * np.log(p) + (1 - y) * np.log(1 - p))               # textbook form
    return per.reshape(len(x), -1).mean(axis=1)


def np_squared(out, y):
    return ((np.asarray(out, np.float64) - y) ** 2).reshape(len(out), -1).mean(axis=1)


def np_abs(out, y):
    return np.abs(np.asarray(out, np.float64) - y).reshape(len(out), -1).mean(axis=1)


def _batch(seed, n, *, classes=4, bin_labels=3, reg_dim=2):
    rng = np.random.default_rng(seed)
    outputs = {"cls": rng.normal(size=(n, classes)).astype(np.float32),
               "bin": rng.normal(size=(n, bin_labels)).astype(np.float32),
               "reg": rng.normal(size=(n, reg_dim)).astype(np.float32)}
    labels = {"cls": rng.integers(0, classes, size=n).astype(np.int32),
              "bin": rng.integers(0, 2, size=(n, bin_labels)).astype(np.float32),
              "reg": rng.normal(size=(n, reg_dim)).astype(np.float32)}
    return outputs, labels


def _tasks(reg_loss="mse"):
    return Tasks([classification("cls", 4), binary("bin", 3), regression("reg", 2, reg_loss)])


# --------------------------------------------------------------------------- losses

def test_task_constructors():
    c, b, r = classification("cls", 4), binary("bin", 3), regression("reg", 2, "l1")
    assert (c.loss, c.metrics, c.output_shape, c.label_shape, c.label_kind) == (
        "cross_entropy", ("accuracy",), (4,), (), "int")
    assert (b.loss, b.metrics, b.output_shape, b.label_shape, b.label_kind) == (
        "binary_cross_entropy", ("binary_accuracy",), (3,), (3,), "float")
    assert (r.loss, r.metrics, r.output_shape, r.label_shape, r.label_kind) == (
        "l1", ("mae", "rmse"), (2,), (2,), "float")
    assert regression("r").loss == "mse"


@pytest.mark.parametrize("reg_loss,np_reg", [("mse", np_squared), ("l1", np_abs)])
def test_losses_match_numpy_float64(reg_loss, np_reg):
    tasks = _tasks(reg_loss)
    outputs, labels = _batch(0, 7)
    tasks.check_outputs(outputs)
    tasks.check_labels(labels)
    losses = np.asarray(tasks.losses(outputs, labels))
    expected = [np_cross_entropy(outputs["cls"], labels["cls"]).mean(),
                np_bce_logits(outputs["bin"], labels["bin"]).mean(),
                np_reg(outputs["reg"], labels["reg"]).mean()]
    assert losses.shape == (3,)
    np.testing.assert_allclose(losses, expected, rtol=RTOL, atol=ATOL)
    # per-example losses too
    for name, ref in (("cls", np_cross_entropy), ("bin", np_bce_logits), ("reg", np_reg)):
        np.testing.assert_allclose(
            np.asarray(tasks[name].per_example_loss(outputs[name], labels[name])),
            ref(outputs[name], labels[name]), rtol=RTOL, atol=ATOL)


def test_losses_are_ordered_like_names_and_follow_select():
    tasks = _tasks()
    outputs, labels = _batch(1, 5)
    full = np.asarray(tasks.losses(outputs, labels))
    expected = {"cls": np_cross_entropy(outputs["cls"], labels["cls"]).mean(),
                "bin": np_bce_logits(outputs["bin"], labels["bin"]).mean(),
                "reg": np_squared(outputs["reg"], labels["reg"]).mean()}
    np.testing.assert_allclose(full, [expected[n] for n in tasks.names], rtol=RTOL)
    sub = tasks.select(["reg", "cls"])
    assert sub.names == ("reg", "cls") and len(sub) == 2
    sub_out = {n: outputs[n] for n in sub.names}
    sub_lab = {n: labels[n] for n in sub.names}
    np.testing.assert_allclose(np.asarray(sub.losses(sub_out, sub_lab)),
                               [expected["reg"], expected["cls"]], rtol=RTOL)
    assert [t.name for t in tasks] == ["cls", "bin", "reg"]


def test_cross_entropy_is_stable_for_large_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]], np.float32)
    y = np.array([1, 2], np.int32)
    got = np.asarray(LOSSES["cross_entropy"](logits, y))
    np.testing.assert_allclose(got, [1000.0, np.log(3.0)], rtol=1e-6)
    x = np.array([[60.0, -60.0]], np.float32)
    # BCE with logits: loss(60, 0) = 60 + log1p(exp(-60)), loss(-60, 0) ~ exp(-60)
    got = np.asarray(LOSSES["binary_cross_entropy"](x, np.zeros((1, 2), np.float32)))
    np.testing.assert_allclose(got, [(60.0 + np.exp(-60.0)) / 2], rtol=1e-6)


def test_losses_are_differentiable():
    tasks = _tasks()
    outputs, labels = _batch(2, 4)
    # d/dout of the mean MSE over n*d elements is 2 (out - y) / (n d)
    g = jax.grad(lambda o: tasks.losses(o, labels)[2])(outputs)
    np.testing.assert_allclose(np.asarray(g["reg"]),
                               2 * (outputs["reg"] - labels["reg"]) / 8, rtol=1e-5, atol=1e-6)
    # d/dlogits of the mean cross-entropy is (softmax - onehot) / n
    g = jax.grad(lambda o: tasks.losses(o, labels)[0])(outputs)
    e = np.exp(outputs["cls"].astype(np.float64))
    expected = (e / e.sum(1, keepdims=True) - np.eye(4)[labels["cls"]]) / 4
    np.testing.assert_allclose(np.asarray(g["cls"]), expected, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(g["bin"]) == 0)


# --------------------------------------------------------------------------- metrics

def _accumulate(tasks, batches):
    total = None
    for outputs, labels in batches:
        sums = tasks.metric_sums(outputs, labels)
        total = sums if total is None else jax.tree_util.tree_map(jnp.add, total, sums)
    return tasks.finalize(total)


def _concat(batches):
    outs = {k: np.concatenate([b[0][k] for b in batches]) for k in batches[0][0]}
    labs = {k: np.concatenate([b[1][k] for b in batches]) for k in batches[0][1]}
    return outs, labs


@settings(max_examples=5, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=4), st.integers(0, 2**16))
def test_metrics_accumulate_to_the_metric_over_all_data(sizes, seed):
    tasks = _tasks("l1")
    batches = [_batch(seed + i, n) for i, n in enumerate(sizes)]
    result = _accumulate(tasks, batches)
    out, lab = _concat(batches)
    f64 = lambda a: np.asarray(a, np.float64)
    err = f64(out["reg"]) - lab["reg"]
    expected = {
        "cls": {"loss": np_cross_entropy(out["cls"], lab["cls"]).mean(),
                "accuracy": np.mean(np.argmax(out["cls"], axis=1) == lab["cls"])},
        "bin": {"loss": np_bce_logits(out["bin"], lab["bin"]).mean(),
                "binary_accuracy": np.mean((out["bin"] > 0) == (lab["bin"] > 0.5))},
        "reg": {"loss": np.mean(np.abs(err)), "mae": np.mean(np.abs(err)),
                "rmse": np.sqrt(np.mean(err ** 2))},
    }
    assert set(result) == set(expected)
    for name in expected:
        assert set(result[name]) == set(expected[name])
        for metric, value in expected[name].items():
            assert isinstance(result[name][metric], float)
            assert result[name][metric] == pytest.approx(value, rel=1e-5, abs=1e-6), (
                name, metric)


def test_rmse_is_sqrt_of_pooled_mse_not_mean_of_batch_rmse():
    task = Task("r", "mse", ("mse", "rmse", "mae"), (1,), (1,), "float")
    tasks = Tasks([task])
    # batch 1: errors 0, 0 ; batch 2: errors 3, 4, 0 -> pooled mse 25/5 = 5
    batches = [({"r": np.zeros((2, 1), np.float32)}, {"r": np.zeros((2, 1), np.float32)}),
               ({"r": np.array([[3.0], [4.0], [0.0]], np.float32)},
                {"r": np.zeros((3, 1), np.float32)})]
    result = _accumulate(tasks, batches)["r"]
    assert result["mse"] == pytest.approx(5.0)
    assert result["loss"] == pytest.approx(5.0)
    assert result["rmse"] == pytest.approx(np.sqrt(5.0))
    assert result["mae"] == pytest.approx(7.0 / 5)
    mean_of_batch_rmse = (0.0 + np.sqrt(25.0 / 3)) / 2
    assert abs(result["rmse"] - mean_of_batch_rmse) > 0.1


def test_metric_sums_counts_and_empty_finalize():
    tasks = Tasks([classification("c", 3)])
    outputs = {"c": np.array([[0.0, 2.0, 1.0], [5.0, 0.0, 0.0]], np.float32)}
    sums = tasks.metric_sums(outputs, {"c": np.array([1, 2], np.int32)})
    assert float(sums["c"]["count"]) == 2.0
    assert float(sums["c"]["accuracy"]) == 1.0  # first right (argmax 1), second wrong
    zero = jax.tree_util.tree_map(jnp.zeros_like, sums)
    with pytest.raises(ValueError, match="'c'.*no examples"):
        tasks.finalize(zero)


def test_higher_is_better():
    assert {m: METRICS[m].higher_is_better for m in METRICS} == {
        "accuracy": True, "binary_accuracy": True, "mae": False, "mse": False, "rmse": False}
    assert classification("c", 3).higher_is_better == {"accuracy": True}
    assert binary("b").higher_is_better == {"binary_accuracy": True}
    assert regression("r").higher_is_better == {"mae": False, "rmse": False}


# --------------------------------------------------------------------------- validation

def test_task_definition_errors():
    with pytest.raises(ValueError, match=r"duplicate task names: \['a'\]"):
        Tasks([classification("a", 2), regression("a"), binary("b")])
    with pytest.raises(ValueError, match="at least one task"):
        Tasks([])
    with pytest.raises(ValueError, match=r"'x'.*unknown loss 'hinge'"):
        Task("x", "hinge", (), (1,), (1,), "float")
    with pytest.raises(ValueError, match=r"'x'.*unknown metric 'f1'"):
        Task("x", "mse", ("mae", "f1"), (1,), (1,), "float")
    with pytest.raises(ValueError, match=r"'x'.*label_kind"):
        Task("x", "mse", (), (1,), (1,), "double")
    with pytest.raises(ValueError, match="non-empty string"):
        Task("", "mse", (), (1,), (1,), "float")
    with pytest.raises(ValueError, match=r"'r'.*'huber'"):
        regression("r", loss="huber")
    for n in (1, 0):
        with pytest.raises(ValueError, match=rf"'c'.*num_classes.*{n}"):
            classification("c", n)


def test_select_unknown_names():
    tasks = _tasks()
    with pytest.raises(KeyError, match=r"\['zz'\]"):
        tasks.select(["cls", "zz"])
    with pytest.raises(KeyError):
        tasks["zz"]


def test_check_labels_errors_name_the_task():
    tasks = _tasks()
    _, labels = _batch(3, 4)
    tasks.check_labels(labels)  # valid labels pass
    missing = {k: v for k, v in labels.items() if k != "bin"}
    with pytest.raises(ValueError, match=r"labels.*missing \['bin'\]"):
        tasks.check_labels(missing)
    with pytest.raises(ValueError, match=r"labels.*unexpected \['extra'\]"):
        tasks.check_labels({**labels, "extra": labels["reg"]})
    with pytest.raises(TypeError, match="dict"):
        tasks.check_labels(labels["reg"])
    with pytest.raises(ValueError, match=r"'reg'.*shape \(4, 3\).*\(batch, 2\)"):
        tasks.check_labels({**labels, "reg": np.zeros((4, 3), np.float32)})
    with pytest.raises(ValueError, match=r"'cls'.*shape \(4, 1\).*\(batch\)"):
        tasks.check_labels({**labels, "cls": labels["cls"][:, None]})
    with pytest.raises(ValueError, match=r"'cls'.*shape \(\)"):
        tasks.check_labels({**labels, "cls": np.int32(1)})
    with pytest.raises(ValueError, match=r"'cls'.*float32.*integer"):
        tasks.check_labels({**labels, "cls": labels["cls"].astype(np.float32)})
    with pytest.raises(ValueError, match=r"'reg'.*int32.*float"):
        tasks.check_labels({**labels, "reg": labels["reg"].astype(np.int32)})
    with pytest.raises(ValueError, match=r"'bin'.*bool"):
        tasks.check_labels({**labels, "bin": labels["bin"] > 0.5})
    # jax arrays are checked the same way
    tasks.check_labels(jax.tree_util.tree_map(jnp.asarray, labels))
    with pytest.raises(ValueError, match=r"'cls'.*float32"):
        tasks.check_labels({**labels, "cls": jnp.asarray(labels["cls"], jnp.float32)})


def test_check_outputs_errors_name_the_task():
    tasks = _tasks()
    outputs, _ = _batch(4, 4)
    tasks.check_outputs(outputs)
    with pytest.raises(ValueError, match=r"'cls'.*\(4, 5\).*\(batch, 4\)"):
        tasks.check_outputs({**outputs, "cls": np.zeros((4, 5), np.float32)})
    with pytest.raises(ValueError, match=r"'reg'.*\(4,\).*\(batch, 2\)"):
        tasks.check_outputs({**outputs, "reg": np.zeros((4,), np.float32)})
    with pytest.raises(ValueError, match=r"model outputs.*missing \['reg'\]"):
        tasks.check_outputs({k: v for k, v in outputs.items() if k != "reg"})
    with pytest.raises(ValueError, match=r"model outputs.*unexpected \['x'\]"):
        tasks.check_outputs({**outputs, "x": outputs["reg"]})
