"""The mtl-jax command line: help, list, a short real run, and clear errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import cli
from mtl_jax.aggregators import registry
from mtl_jax.experiment import (
    ARCHS,
    DATASETS,
    PENALTIES,
    TRUNKS,
    Config,
    build_model,
    member_plan,
    tower_penalty,
)
from mtl_jax.jacobian import per_task_grads
from mtl_jax.tree import matches, path_str

SHORT = ["train", "--trunk", "mlp", "--steps", "30", "--batch-size", "32", "--eval-every", "15",
         "--checkpoint-every", "10", "--quiet"]


def test_help_documents_every_flag(capsys):
    train_parser = cli.parser()._subparsers._group_actions[0].choices["train"]
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    flags = [opt for action in train_parser._actions for opt in action.option_strings]
    assert len(flags) > 15
    for flag in flags:
        assert flag in text
    for action in train_parser._actions:
        assert action.help, f"{action.option_strings} has no help"
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "train" in capsys.readouterr().out


def test_list_describes_every_registered_choice(capsys):
    registries = {"archs": ARCHS, "penalties": PENALTIES, "datasets": DATASETS, "trunks": TRUNKS,
                  "methods": registry.METHODS}
    for what, names in registries.items():
        assert set(cli.CATALOGUE[what]) == set(names), what
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for names in registries.values():
        for name in names:
            assert f"  {name} " in out


def test_short_run_prints_table_and_writes_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main([*SHORT, "--seeds", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "multi-task" in printed and "single-task" in printed and "Δm%" in printed
    for name in ("config.json", "metrics.jsonl", "curves.png", "results.json", "results.md"):
        assert (out / name).exists(), name
    assert (out / "checkpoints" / "30").is_dir()
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 2 and len(results["baselines"]) == 2
    # Δm from the saved per-task accuracies, recomputed here from its definition.
    base = {t: np.mean([b[t]["accuracy"] for b in results["baselines"]]) for t in ("left",
                                                                                  "right")}
    deltas = [np.mean([-(r[t]["accuracy"] - base[t]) / base[t] * 100 for t in base])
              for r in results["runs"]]
    np.testing.assert_allclose(results["delta_m"], [np.mean(deltas), np.std(deltas)], rtol=1e-9)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # 2 seeds + 2 tasks x 2 seeds of baselines = 6 members, logged every 10 steps.
    assert sum(r["split"] == "train" for r in records) == 6 * 3
    assert sorted({r["step"] for r in records if r["split"] == "test"}) == [15, 30]


def test_baselines_are_one_hot_members_without_penalty():
    weights, penalty = member_plan(Config(seeds=2, penalty_weight=0.5, arch="soft"), 3)
    np.testing.assert_array_equal(weights, [[1, 1, 1]] * 2 + [[1, 0, 0]] * 2 + [[0, 1, 0]] * 2
                                  + [[0, 0, 1]] * 2)
    np.testing.assert_array_equal(penalty, [0.5, 0.5] + [0.0] * 6)


def exit_code(args):
    """main's return value, or the code argparse exits with."""
    try:
        return cli.main(args)
    except SystemExit as exit:
        return exit.code


@pytest.mark.parametrize("args, message", [
    (["--arch", "cross"], "invalid choice"),
    (["--loss-weights", "1,-2"], "loss_weights must be a sequence of finite numbers >= 0"),
    (["--loss-weights", "1,2,3"], "3 entries for 2 tasks"),
    (["--loss-weights", "a,b"], "comma-separated numbers"),
    (["--steps", "0"], "steps must be an integer in [1, 2147483647], got 0"),
    (["--lr", "-1"], "learning_rate must be a positive number"),
    (["--penalty-weight", "nan", "--arch", "soft"], "penalty_weight must be a finite number >= 0"),
    (["--resume"], "--resume needs --out"),
])
def test_bad_arguments_get_one_clear_line(args, message, capsys):
    assert exit_code([*SHORT, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_existing_run_is_not_overwritten_and_foreign_resume_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main([*SHORT, "--no-baselines", "--out", str(out)]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert cli.main([*SHORT, "--no-baselines", "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert cli.main([*SHORT, "--no-baselines", "--lr", "0.01", "--out", str(out),
                     "--resume"]) == 2
    assert "different configuration" in capsys.readouterr().err
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert before == after


def test_unwritable_output_directory(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main([*SHORT, "--out", str(blocker / "run")]) == 2
    assert "not writable" in capsys.readouterr().err


@pytest.mark.parametrize("method", sorted(registry.METHODS))
def test_every_method_trains_the_default_through_the_cli(method, tmp_path, capsys):
    out = tmp_path / method
    code = cli.main(["train", "--method", method, "--trunk", "mlp", "--steps", "4",
                     "--batch-size", "16", "--eval-every", "0", "--no-baselines", "--quiet",
                     "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    for task in ("left", "right"):
        assert np.isfinite(results["runs"][0][task]["loss"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert train and all(np.isfinite(r["loss"]) for r in train)
    assert all(set(r["weights"]) == {"left", "right"} for r in train)


def test_gradient_methods_need_shared_parameters(capsys):
    assert exit_code([*SHORT, "--method", "pcgrad", "--arch", "soft"]) == 2
    assert "arch 'soft' shares none" in capsys.readouterr().err
    assert exit_code([*SHORT, "--method", "mgda_ub", "--arch", "mmoe"]) == 2
    assert "needs arch 'hard'" in capsys.readouterr().err


def test_attention_over_feature_maps_needs_a_conv_trunk(capsys):
    assert exit_code([*SHORT, "--arch", "mtan", "--trunk", "mlp"]) == 2
    assert "needs trunk 'conv'" in capsys.readouterr().err


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_architecture_trains_through_the_cli(arch, tmp_path, capsys):
    # With a gradient method wherever the architecture shares parameters, so that
    # its `shared` selector is exercised, and an L2 penalty on its per-task
    # parameters; 2 steps, with the single-task baselines.
    method = "ew" if arch == "soft" else "pcgrad"
    trunk = "conv" if ARCHS[arch].needs_conv else "mlp"
    out = tmp_path / arch
    code = cli.main(["train", "--arch", arch, "--trunk", trunk, "--method", method,
                     "--penalty", "l2", "--penalty-weight", "0.1",
                     "--steps", "2", "--batch-size", "8", "--eval-every", "0", "--quiet",
                     "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == len(results["baselines"]) == 1
    for run in results["runs"] + results["baselines"]:
        for task in ("left", "right"):
            assert np.isfinite(run[task]["loss"]) and 0 <= run[task]["accuracy"] <= 1


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_penalties_tie_exactly_parameters_each_task_owns(arch):
    # A leaf holds per-task copies when, along its leading axis, slice t gets gradient
    # from task t only (per-task Jacobian; cross-stitch units set to the identity so that
    # they do not mix the columns); the penalty must select only such leaves and equal
    # the numpy L2 spread over them.
    names = ("a", "b", "c")
    trunk = "conv" if ARCHS[arch].needs_conv else "mlp"
    model = build_model(arch, trunk, names, 4)
    x = jax.random.normal(jax.random.key(0), (5, 12, 12, 1))
    params = model.init(jax.random.key(1), x)["params"]
    params = jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.eye(len(names)) if "stitch" in path_str(path) else v, params)
    jac = jax.jit(lambda p: per_task_grads(
        lambda q: jnp.stack([jnp.sum(out ** 2) for out in model.apply({"params": q}, x).values()]),
        p)[1])(params)
    expected, selected = 0.0, 0
    for (path, leaf), j in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                               jax.tree_util.tree_leaves(jac)):
        path = path_str(path)
        towers = ARCHS[arch].towers  # None: every leaf with a task axis
        if not (leaf.ndim >= 2 if towers is None else matches(towers, path, leaf)):
            continue
        selected += 1
        assert leaf.shape[0] == len(names), path
        j = np.asarray(j).reshape(len(names), len(names), -1)  # [task, slice, rest]
        owned = np.abs(j).sum(-1) > 0
        np.testing.assert_array_equal(owned, np.eye(len(names), dtype=bool), err_msg=path)
        w = np.asarray(leaf, np.float64)
        expected += ((w - w.mean(0)) ** 2).sum()
    assert selected > 0
    got = float(tower_penalty(arch, "l2")(params))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert tower_penalty(arch, "none") is None
