"""The CAGrad / Nash-MTL / FAMO toy: objective, Pareto front, runs, and the CLI."""

import json

import jax
import numpy as np
import pytest

from mtl_jax import cli
from mtl_jax.reproduce import toy


def reference(x, scale=1.0):
    """The toy's losses in float64 numpy, written from the papers' formulas."""
    x1, x2 = x[..., 0], x[..., 1]
    f1 = np.log(np.maximum(np.abs(0.5 * (-x1 - 7) - np.tanh(-x2)), 5e-6)) + 6
    f2 = np.log(np.maximum(np.abs(0.5 * (-x1 + 3) + np.tanh(-x2) + 2), 5e-6)) + 6
    c1 = np.maximum(np.tanh(x2 / 2), 0)
    c2 = np.maximum(np.tanh(-x2 / 2), 0)
    g1 = ((x1 - 7) ** 2 + 0.1 * (x2 + 8) ** 2) / 10 - 20
    g2 = ((x1 + 7) ** 2 + 0.1 * (x2 + 8) ** 2) / 10 - 20
    return np.stack([scale * (c1 * f1 + c2 * g1), c1 * f2 + c2 * g2], -1)


def smooth_points(rng, n):
    """Random points of the box away from the kinks (x2 = 0, the |.| and clamp)."""
    x = rng.uniform(-10, 10, size=(4 * n, 2))
    x1, x2 = x[:, 0], x[:, 1]
    far = ((np.abs(x2) > 0.1) & (np.abs(0.5 * (-x1 - 7) - np.tanh(-x2)) > 0.1)
           & (np.abs(0.5 * (-x1 + 3) + np.tanh(-x2) + 2) > 0.1))
    return x[far][:n]


@pytest.fixture(scope="module")
def nash_front():
    return toy.pareto_front(toy.SETTINGS["nash"].scale)


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_objective_matches_float64_numpy(scale):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-10, 10, size=(300, 2)), toy.STARTS, toy.CAGRAD_STARTS])
    got = jax.vmap(lambda p: toy.objective(p, scale))(x.astype(np.float32))
    np.testing.assert_allclose(got, reference(x, scale), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_jacobian_matches_finite_differences(scale):
    x = smooth_points(np.random.default_rng(1), 100)
    h = 1e-6
    numeric = np.stack([(reference(x + h * e, scale) - reference(x - h * e, scale)) / (2 * h)
                        for e in np.eye(2)], -1)  # [N, task, coordinate]
    jac = jax.vmap(jax.jacrev(lambda p: toy.objective(p, scale)))(x.astype(np.float32))
    np.testing.assert_allclose(jac, numeric, rtol=2e-3, atol=1e-3)


def test_jacobian_at_the_origin_passes_the_clamp_like_torch():
    # c1 = c2 = 0 at x2 = 0: torch.clamp lets the gradient of tanh through at the tie.
    f1 = f2 = np.log(3.5) + 6
    g1 = g2 = (49 + 6.4) / 10 - 20
    expected = [[0.0, 0.5 * f1 - 0.5 * g1], [0.0, 0.5 * f2 - 0.5 * g2]]
    np.testing.assert_allclose(jax.jacrev(toy.objective)(np.zeros(2, np.float32)), expected,
                               rtol=1e-5)


def test_pareto_set_at_large_x2_is_x1_between_minus_5_and_5():
    # c1 -> 1 and tanh(-x2) -> -1: f1 = log(|x1 + 5| / 2) + 6 is smallest at x1 = -5 and
    # f2 = log(|x1 - 5| / 2) + 6 at x1 = 5; between them one falls as the other rises.
    x1 = np.linspace(-10, 10, 2001)
    x = np.stack([x1, np.full_like(x1, 20.0)], -1)
    losses = np.asarray(jax.vmap(toy.objective)(x.astype(np.float32)), np.float64)
    assert x1[np.argmin(losses[:, 0])] == pytest.approx(-5, abs=0.011)
    assert x1[np.argmin(losses[:, 1])] == pytest.approx(5, abs=0.011)
    kept = x1[toy.nondominated(losses)]
    assert kept.min() == pytest.approx(-5, abs=0.011)
    assert kept.max() == pytest.approx(5, abs=0.011)


def test_global_pareto_set_is_the_valley_floor(nash_front):
    assert nash_front.params[:, 0].min() == pytest.approx(-7, abs=0.03)
    assert nash_front.params[:, 0].max() == pytest.approx(7, abs=0.03)
    assert np.all(np.abs(nash_front.params[:, 1] + 8.25) < 0.2)
    assert np.all(np.diff(nash_front.losses[:, 1]) <= 0)  # sorted by L1: L2 falls
    reached, _ = toy.assess(nash_front.losses[::100], nash_front)
    assert reached.all()
    reached, _ = toy.assess(reference(np.array(toy.STARTS), 0.1), nash_front)
    assert not reached.any()


@pytest.mark.parametrize("method", ["famo", "pcgrad"])
def test_vmapped_run_equals_each_start_alone(method):
    # Equal up to float32 rounding (vectorised and scalar code differ in the last ulp), which
    # Adam amplifies where a gradient is near 0 (from (0, 0)): within a tenth of a step.
    together = toy.run(method, steps=200, record_every=50)
    assert together.params.shape == (5, 5, 2)
    np.testing.assert_array_equal(together.steps, [0, 50, 100, 150, 200])
    for i, start in enumerate(toy.STARTS[:3] if method == "pcgrad" else toy.STARTS):
        alone = toy.run(method, steps=200, starts=[start], record_every=50)
        np.testing.assert_allclose(alone.params[0], together.params[i], rtol=0, atol=1e-4)
        np.testing.assert_allclose(alone.losses[0], together.losses[i], rtol=0, atol=1e-4)


def test_ew_and_mgda_behave_as_in_nash_mtl_figure_1(nash_front):
    # LS (ew) is ruled by L2, whose gradient is 10x larger: every run that reaches the
    # valley ends at the minimiser of 0.1 L1 + L2 there, x1 = -6.3 / 1.1; from (9, 9) it
    # stops on the flat region above. MGDA reaches the front from every start.
    ew = toy.run("ew")
    reached, _ = toy.assess(ew.losses[:, -1], nash_front)
    assert reached.tolist() == [True, True, False, True, True]
    np.testing.assert_allclose(ew.params[reached, -1, 0], -6.3 / 1.1, atol=0.02)
    assert ew.params[2, -1, 1] > 0
    mgda = toy.run("mgda")
    assert toy.assess(mgda.losses[:, -1], nash_front)[0].all()


def test_famo_reaches_the_front_from_every_start_in_its_setting(nash_front):
    famo = toy.run("famo", "famo")  # same scale as "nash", so the same front
    assert toy.assess(famo.losses[:, -1], nash_front)[0].all()


def test_cli_runs_a_small_benchmark_and_writes_its_files(tmp_path, capsys):
    out = tmp_path / "toy"
    assert cli.main(["reproduce", "toy", "--methods", "ew,mgda", "--steps", "300",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| ew |" in printed and "| mgda |" in printed
    for name in ("toy.json", "toy.md", "toy_params.png", "toy_losses.png"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "toy.json").read_text())
    assert list(summary["methods"]) == ["ew", "mgda"]
    assert summary["setting"]["steps"] == 300 and summary["setting"]["scale"] == 0.1
    for result in summary["methods"].values():
        assert [r["start"] for r in result["runs"]] == [list(s) for s in toy.STARTS]
        assert all(set(r) >= {"end", "losses", "reached", "distance"} for r in result["runs"])
    # An existing run is never overwritten.
    assert cli.main(["reproduce", "toy", "--methods", "ew", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_cli_errors_and_help(tmp_path, capsys):
    assert cli.main(["reproduce", "toy", "--methods", "ew,nope", "--out",
                     str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'nope'" in err and "nash_mtl" in err
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "--help"])
    assert "toy" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "toy", "--setting", "nope"])
