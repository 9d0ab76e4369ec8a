"""The MMoE synthetic data (Ma et al., KDD 2018, Sec. 4.2) and the vmapped benchmark."""

import json
import math

import jax
import numpy as np
import pytest

from mtl_jax import cli
from mtl_jax.data import SyntheticConfig, mmoe_synthetic
from mtl_jax.data.mmoe_synthetic import TASKS, labels, sample, task_weights
from mtl_jax.reproduce import mmoe

LINEAR = dict(alphas=(), betas=())


def label_correlation(data):
    return np.corrcoef(data["y"]["y1"][:, 0], data["y"]["y2"][:, 0])[0, 1]


def test_shapes_dtypes_and_task_names():
    data = mmoe_synthetic(0.5, 7, seed=3, config=SyntheticConfig(dim=12))
    assert data["x"].shape == (7, 12) and data["x"].dtype == np.float32
    assert list(data["y"]) == list(TASKS) == ["y1", "y2"]
    assert all(y.shape == (7, 1) and y.dtype == np.float32 for y in data["y"].values())


def test_same_seed_same_data_other_seed_other_data():
    a, b = mmoe_synthetic(0.9, 50, seed=1), mmoe_synthetic(0.9, 50, seed=1)
    np.testing.assert_array_equal(a["x"], b["x"])
    np.testing.assert_array_equal(a["y"]["y2"], b["y"]["y2"])
    c = mmoe_synthetic(0.9, 50, seed=2)
    assert not np.allclose(a["x"], c["x"])


@pytest.mark.parametrize("p", [-1.0, -0.3, 0.0, 0.7, 1.0])
def test_weights_have_norm_c_and_cosine_p(p):
    config = SyntheticConfig(dim=30, scale=2.5)
    w = np.asarray(task_weights(jax.random.key(4), p, config), np.float64)
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), [2.5, 2.5], rtol=1e-5)
    np.testing.assert_allclose(w[0] @ w[1] / 2.5 ** 2, p, atol=1e-5)


def test_labels_follow_the_papers_formula_in_float64():
    config = SyntheticConfig(dim=6, scale=1.5, alphas=(0.5, 3.0, 1.0), betas=(0.2, -1.0, 2.0),
                             noise_std=0.0)
    w = task_weights(jax.random.key(0), 0.4, config)
    x, y = sample(jax.random.key(1), w, 64, config)
    z = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T
    expected = z + sum(np.sin(a * z + b) for a, b in zip(config.alphas, config.betas))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_noise_has_the_papers_variance():
    config = SyntheticConfig(dim=4)
    w = task_weights(jax.random.key(0), 0.5, config)
    x, y = sample(jax.random.key(1), w, 100_000, config)
    residual = np.asarray(y) - np.asarray(labels(x @ w.T, config))
    np.testing.assert_allclose(residual.var(0), [0.01, 0.01], rtol=0.03)


@pytest.mark.parametrize("scale", [1.0, 3.0])
@pytest.mark.parametrize("p", [-0.5, 0.3, 0.8])
def test_linear_labels_have_the_closed_form_correlation(p, scale):
    # y_k = w_kᵀx + ε_k: corr = p c² / (c² + σ²), about p.
    config = SyntheticConfig(scale=scale, **LINEAR)
    corr = label_correlation(mmoe_synthetic(p, 40_000, seed=5, config=config))
    expected = p * scale ** 2 / (scale ** 2 + 0.01)
    assert corr == pytest.approx(expected, abs=4 * (1 - expected ** 2) / math.sqrt(40_000) + 1e-3)


def test_label_correlation_rises_with_p_and_the_sines_lower_it():
    ps = [0.0, 0.25, 0.5, 0.75, 0.9, 1.0]
    corr = [label_correlation(mmoe_synthetic(p, 20_000, seed=6)) for p in ps]
    assert np.all(np.diff(corr) > 0.05)
    assert abs(corr[0]) < 0.03 and corr[-1] > 0.99
    assert corr[2] < 0.5 - 0.04  # the sines lower the correlation below p in (0, 1)


@pytest.mark.parametrize(("kwargs", "name"), [
    (dict(p=1.5), "p"), (dict(p=-1.01), "p"), (dict(p=float("nan")), "p"), (dict(p="x"), "p"),
    (dict(num_examples=0), "num_examples"), (dict(seed=-1), "seed"),
])
def test_bad_arguments_name_themselves(kwargs, name):
    args = {"p": 0.5, "num_examples": 4, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=name):
        mmoe_synthetic(args.pop("p"), args.pop("num_examples"), **args)


@pytest.mark.parametrize(("kwargs", "name"), [
    (dict(dim=1), "dim"), (dict(dim=2.5), "dim"), (dict(scale=0.0), "scale"),
    (dict(alphas=(1.0,), betas=()), "alphas"), (dict(betas=(0.0, float("inf"))), "betas"),
    (dict(noise_std=-0.1), "noise_std"),
])
def test_bad_config_names_the_field(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SyntheticConfig(**kwargs)


def test_members_are_p_major_and_keyed_by_seed_and_stream():
    keys, ps = mmoe.member_inputs(3, [0.5, 1.0], seed=0)
    assert ps.tolist() == [0.5] * 3 + [1.0] * 3
    again, _ = mmoe.member_inputs(3, [0.5, 1.0], seed=0)
    other, _ = mmoe.member_inputs(3, [0.5, 1.0], seed=0, stream=1)
    data = jax.random.key_data
    np.testing.assert_array_equal(data(keys), data(again))
    assert len({tuple(k) for k in np.asarray(data(keys)).tolist()}) == 6
    assert not np.array_equal(data(keys), data(other))
    with pytest.raises(ValueError, match="p must be in"):
        mmoe.member_inputs(1, [2.0], seed=0)


def test_paper_sizes_give_comparable_parameter_counts():
    counts = {name: mmoe.parameter_count(name) for name in mmoe.MODELS}
    assert counts["mmoe"] == 8 * (100 * 16 + 16) + 2 * 100 * 8 + 2 * (16 * 8 + 8 + 8 + 1)
    assert counts["shared_bottom"] == 100 * 128 + 128 + 2 * (128 * 8 + 8 + 8 + 1)
    assert max(counts.values()) < 1.3 * min(counts.values())


def test_vmapped_sweep_equals_the_runs_one_at_a_time():
    setup = mmoe.Setup(steps=30, batch_size=8, test_size=16, records=2)
    keys, ps = mmoe.member_inputs(2, [0.5, 1.0], seed=0)
    together = mmoe.vectorised("mmoe", keys, ps, setup)
    alone = mmoe.sequential("mmoe", keys, ps, setup)
    assert together.result.test.shape == (4, 3, 2) and together.result.train.shape == (4, 2, 2)
    for got, want in zip(together.result, alone.result):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert together.result.test[:, -1].mean() < 0.8 * together.result.test[:, 0].mean()
    assert len(np.unique(together.result.test[:, -1, 0])) == 4  # each run its own data and init


def test_cli_writes_the_files_and_never_overwrites(tmp_path, capsys):
    out = tmp_path / "mmoe"
    assert cli.main(["reproduce", "mmoe", "--models", "shared_bottom", "--runs", "2",
                     "--steps", "3", "--p", "0.5,1", "--sweep", "--sweep-runs", "1",
                     "--out", str(out)]) == 0
    assert "| shared_bottom | 15,010 |" in capsys.readouterr().out
    for name in ("mmoe.json", "mmoe.md", "mmoe_curves.png", "mmoe_sweep.png"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "mmoe.json").read_text())
    assert summary["setup"]["p"] == [0.5, 1.0] and summary["setup"]["record_steps"] == [0, 1, 2, 3]
    result = summary["models"]["shared_bottom"]
    assert len(result["p"]["0.5"]["final_runs"]) == 2
    assert result["vectorised"]["members"] == 2 * 2 + 11 * 1
    assert "sequential" not in result  # only with --sequential N
    assert len(summary["sweep"]["models"]["shared_bottom"]["mean"]) == 11
    assert cli.main(["reproduce", "mmoe", "--models", "mmoe", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--models", "mmoe,nope"], "'nope'"), (["--p", "0.5,1.5"], "1.5"),
    (["--runs", "0"], "--runs"), (["--p", "0.5,0.5"], "distinct"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, args, message):
    assert cli.main(["reproduce", "mmoe", *args, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "x").exists()
