"""Mixed precision: bfloat16 compute, float32 parameters, optimizer state and losses."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

from mtl_jax import cli, make_train_step, models
from mtl_jax import tasks as mt
from mtl_jax.experiment import Config, build_model, run, shared_parameters
from mtl_jax.precision import MixedPrecision
from mtl_jax.train import init_state

NAMES = ("a", "b")


def bf16(x):
    """Round to bfloat16 and back to float64: the values the bf16 computation sees."""
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


@pytest.fixture
def setup():
    model = models.HardSharing(models.MLPTrunk((16,)), models.StackedHeads(NAMES, 3))
    tasks = mt.Tasks([mt.classification(n, 3) for n in NAMES])
    rng = np.random.default_rng(0)
    batch = {"x": rng.standard_normal((32, 7)).astype(np.float32),
             "y": {n: rng.integers(0, 3, 32) for n in NAMES}}
    return model, tasks, batch


def test_outputs_are_computed_from_bfloat16_values(setup):
    model, _, batch = setup
    wrapped = MixedPrecision(model)
    params = wrapped.init(jax.random.key(0), batch["x"])
    out = wrapped.apply(params, batch["x"])
    p = params["params"]
    hidden = np.maximum(bf16(batch["x"]) @ bf16(p["trunk"]["Dense_0"]["kernel"])
                        + bf16(p["trunk"]["Dense_0"]["bias"]), 0)
    for t, name in enumerate(NAMES):
        expected = bf16(hidden) @ bf16(p["heads"]["kernel"][t]) + bf16(p["heads"]["bias"][t])
        assert out[name].dtype == jnp.float32
        np.testing.assert_allclose(out[name], expected, rtol=0.03, atol=0.03)
    exact = model.apply(params, batch["x"])
    assert max(float(np.max(np.abs(out[n] - exact[n]))) for n in NAMES) > 1e-4  # not float32


def test_train_step_keeps_float32_state_and_tracks_the_float32_step(setup):
    model, tasks, batch = setup
    opt = optax.adam(1e-2)
    results = {}
    for name, m in (("f32", model), ("bf16", MixedPrecision(model))):
        state = init_state(m, tasks, jax.random.key(0), batch, opt)
        step = jax.jit(make_train_step(m, tasks, opt))
        for _ in range(5):
            state, logs = step(state, batch)
        assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(
            (state.params, state.opt_state)) if jnp.issubdtype(leaf.dtype, jnp.floating)} == {
            jnp.dtype(jnp.float32)}
        results[name] = (logs["loss"], state.params)
    np.testing.assert_allclose(results["bf16"][0], results["f32"][0], rtol=0.02)
    for a, b in zip(*(jax.tree_util.tree_leaves(results[n][1]) for n in ("f32", "bf16"))):
        np.testing.assert_allclose(b, a, atol=0.02)


def test_the_wrapped_model_shows_through():
    model = build_model("mmoe", "mlp", NAMES, 3, "bf16")
    assert isinstance(model, MixedPrecision)
    assert shared_parameters(model) == shared_parameters(build_model("mmoe", "mlp", NAMES, 3))


def test_precision_is_part_of_the_run_and_checked_on_resume(tmp_path, capsys):
    out = tmp_path / "run"
    run(Config(trunk="mlp", steps=4, batch_size=8, eval_every=0, baselines=False,
               precision="bf16"), out, progress=False)
    assert Config(precision="bf16").identity()["precision"] == "bf16"
    assert "precision" not in Config().identity()  # older f32 runs still resume
    args = ["train", "--trunk", "mlp", "--steps", "6", "--batch-size", "8", "--eval-every", "0",
            "--no-baselines", "--quiet", "--out", str(out), "--resume"]
    assert cli.main(args) == 2
    assert "different configuration (precision: 'bf16' then" in capsys.readouterr().err
    assert cli.main([*args, "--precision", "bf16"]) == 0
    with pytest.raises(SystemExit) as exit_info:  # argparse: not a choice
        cli.main([*args[:-4], "--precision", "f16"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'f16'" in capsys.readouterr().err
