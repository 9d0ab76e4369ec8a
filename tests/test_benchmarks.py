"""The benchmarks' PyTorch port computes what mtl_jax computes, and step_speed runs.

From identical weights the two frameworks must give the same multi-task loss,
the same gradients and the same weights after one Adam step; otherwise the
step-speed comparison would time two different computations.
"""

from __future__ import annotations

import json
import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")

import mtl_jax  # noqa: E402
from mtl_jax.train import make_loss_fn  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import step_speed  # noqa: E402
import torch_models  # noqa: E402

NUM_TASKS, BATCH = 2, 4
TRUNKS = {trunk.name: trunk for trunk in step_speed.TRUNKS}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny sizes need no threads; one avoids OpenMP stalls on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def setup(trunk: step_speed.Trunk, optimizer: optax.GradientTransformation):
    """The mtl_jax model, tasks, state and batch, and the torch twin with the same weights."""
    names = tuple(f"task{t}" for t in range(NUM_TASKS))
    model = mtl_jax.models.HardSharing(trunk.flax_trunk(),
                                       mtl_jax.models.StackedHeads(names, 10))
    tasks = mtl_jax.Tasks([mtl_jax.classification(n, 10) for n in names])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, *step_speed.IMAGE_SHAPE), dtype=np.float32)
    labels = rng.integers(0, 10, (NUM_TASKS, BATCH), dtype=np.int32)
    batch = {"x": jnp.asarray(x), "y": {n: jnp.asarray(y) for n, y in zip(names, labels)}}
    state = mtl_jax.init_state(model, tasks, jax.random.key(0), batch, optimizer)
    torch_model = torch_twin(trunk, state.params)
    x_nchw = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    ys = [torch.from_numpy(y.astype(np.int64)) for y in labels]
    return model, tasks, state, batch, torch_model, x_nchw, ys


def torch_twin(trunk: step_speed.Trunk, variables) -> torch_models.MultiTaskModel:
    """A torch model holding ``variables`` (flax layout)."""
    model = torch_models.MultiTaskModel(
        trunk.torch_encoder(), [torch_models.TaskHead(trunk.features, 10)
                                for _ in range(NUM_TASKS)])
    torch_models.load_flax_params(model, jax.device_get(variables), step_speed.IMAGE_SHAPE)
    return model


def assert_params_close(model: torch.nn.Module, expected: torch.nn.Module, *, grads: bool,
                        atol: float, rtol: float) -> None:
    actual = dict(model.named_parameters())
    for name, want in expected.named_parameters():
        got = actual[name].grad if grads else actual[name]
        np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(),
                                   atol=atol, rtol=rtol, err_msg=name)


@pytest.mark.parametrize("trunk_name", TRUNKS)
def test_port_matches_mtl_jax(trunk_name):
    """Same loss and gradients, then the same weights after one Adam step."""
    trunk = TRUNKS[trunk_name]
    # Adam's first update is lr * g / (|g| + eps): with the default eps = 1e-8 it
    # turns float32 rounding in gradients near 1e-8 into differences of up to lr.
    # A larger eps keeps the update rule (and tests where eps enters it) but
    # bounds that amplification by lr / eps = 1.
    optimizer = optax.adam(1e-3, eps=1e-3)
    model, tasks, state, batch, torch_model, x, ys = setup(trunk, optimizer)
    loss_fn, train_step = make_loss_fn(model, tasks), mtl_jax.make_train_step(model, tasks,
                                                                              optimizer)

    @jax.jit  # one compilation for the gradients and the step
    def grads_and_step(state, batch):
        grads = jax.grad(lambda p: loss_fn(p, batch, state.loss_weights,
                                           state.penalty_weight)[0])(state.params)
        return grads, *train_step(state, batch)

    grads, new_state, logs = grads_and_step(state, batch)

    torch_optimizer = torch.optim.Adam(torch_model.parameters(), lr=1e-3, eps=1e-3)
    torch_loss = torch_models.make_train_step(torch_model, torch_optimizer)(x, ys)

    np.testing.assert_allclose(torch_loss.item(), float(logs["loss"]), rtol=1e-5)
    # The flax gradients in torch layout, through the same conversion as the weights.
    assert_params_close(torch_model, torch_twin(trunk, grads), grads=True,
                        atol=1e-5, rtol=1e-4)
    assert_params_close(torch_model, torch_twin(trunk, new_state.params), grads=False,
                        atol=1e-5, rtol=0)


def test_step_speed_smoke(tmp_path, monkeypatch):
    """A tiny run writes every row; a failing torch.compile is reported, not raised."""

    def broken_compile(fn, **kwargs):
        def compiled(*args, **kw):
            raise RuntimeError("no C++ compiler")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    step_speed.main(["--tasks", "2", "--batch", "4", "--repeats", "1", "--warmup", "1",
                     "--device", "cpu", "--threads", "1", "--out-dir", str(tmp_path)])

    report = json.loads((tmp_path / "step_speed_cpu.json").read_text())
    rows = {(r["model"], r["framework"]): r for r in report["rows"]}
    assert set(rows) == {(trunk, framework) for trunk in TRUNKS
                         for framework in step_speed.FRAMEWORKS.values()}
    for trunk in TRUNKS:
        ours, eager = rows[trunk, "mtl_jax"], rows[trunk, "PyTorch eager"]
        assert ours["median_ms"] > 0 and eager["median_ms"] > 0
        assert len(ours["times_ms"]) == 1
        np.testing.assert_allclose(eager["loss_at_step_1"], ours["loss_at_step_1"], rtol=1e-5)
        assert "no C++ compiler" in rows[trunk, "PyTorch torch.compile"]["error"]
    assert report["config"]["tasks"] == 2 and "--batch 4" in report["command"]
    assert report["machine"]["threads"]["torch"] == 1
    page = (tmp_path / "step_speed_cpu.md").read_text()
    assert "| model | framework | median ms/step |" in page
    assert "no C++ compiler" in page


# --------------------------------------------------------------------------- aggregator_speed

try:  # TorchJD (the [bench] or [crosscheck] extra) is the PyTorch side's aggregation
    import torchjd.aggregation as tjd
except ImportError:
    tjd = None
else:
    import aggregator_speed
    import torch_methods

needs_torchjd = pytest.mark.skipif(tjd is None, reason="needs torchjd: pip install -e '.[bench]'")
AGG_METHODS = ("ew", "pcgrad", "mgda", "mgda_ub", "cagrad", "nash_mtl", "upgrad", "famo")
AGG_LR = 0.1  # SGD: the parameters move, so later steps see new gradients and losses
# Steps compared: FAMO's logits first move at step 2 and then carry Adam state,
# Nash-MTL warm-starts from its previous solution; the others are stateless.
AGG_STEPS = {"famo": 3, "nash_mtl": 2}
# Largest |torch - mtl_jax| over the direction, relative to its largest entry.
# 1e-5: float32 rounding of the same arithmetic summed in another order (seen:
# up to 2e-6, after three steps of diverging rounding). Solver-based methods get
# their solvers' accuracy instead: CAGrad's Clarabel (default gap tolerance 1e-8
# on the objective, so ~1e-4 on the weights; seen 7e-5), Nash-MTL's ECOS
# sequence (stops at a residual of 1e-3; seen 2e-5). TorchJD's MGDA is
# Frank-Wolfe, which converges slowly: its default stops at steps below 1e-3,
# exact for two tasks (one line search spans the whole segment) but 7% off the
# min-norm point at T = 8 on this model (mtl_jax's active-set solve is exact);
# run to steps of 1e-5 (at most 1e4 iterations) it is within 2e-3 (seen 1.6e-3).
AGG_TOLERANCE = {"cagrad": 5e-4, "nash_mtl": 1e-3}
TIGHT_MGDA_TOLERANCE = 5e-3


def record_updates() -> optax.GradientTransformation:
    """Passes the updates through unchanged and keeps the last ones as its state."""
    return optax.GradientTransformation(
        lambda params: jax.tree_util.tree_map(jnp.zeros_like, params),
        lambda updates, state, params=None: (updates, updates))


def torch_override(method: str, num_tasks: int):
    """The TorchJD aggregator replacing the benchmark's (MGDA's Frank-Wolfe run longer for
    T > 2, where its default stops early; else None) and the comparison's tolerance."""
    if method in ("mgda", "mgda_ub") and num_tasks > 2:
        return tjd.MGDA(epsilon=1e-5, max_iters=10_000), TIGHT_MGDA_TOLERANCE
    return None, AGG_TOLERANCE.get(method, 1e-5)


@needs_torchjd
@pytest.mark.filterwarnings("ignore:You are solving a parameterized problem that is not DPP")
@pytest.mark.parametrize("num_tasks", [2, 8])
@pytest.mark.parametrize("method", AGG_METHODS)
def test_torch_methods_match_mtl_jax(method, num_tasks, monkeypatch):
    """From the same weights and batch, the PyTorch step of aggregator_speed and mtl_jax's
    give every parameter the same direction (before the optimizer: SGD on both sides,
    so that Adam's g / |g| cannot hide a wrong scale), step after step.

    PCGrad visits the other tasks in index order on both sides (mtl_jax's
    ``shuffle=False``, TorchJD's ``torch.randperm`` replaced by ``arange``).
    """
    assert AGG_METHODS == torch_methods.METHODS
    sizes = aggregator_speed.QUICK
    knobs = {"shuffle": False} if method == "pcgrad" else {}
    monkeypatch.setattr(torch, "randperm", lambda n, **kw: torch.arange(n))
    x, labels = aggregator_speed.synthetic_data(sizes, num_tasks)
    optimizer = optax.chain(record_updates(), optax.sgd(AGG_LR))
    step, state, batch = aggregator_speed.jax_setup(method, sizes, x, labels, optimizer,
                                                    **knobs)
    # Optimisation level 0 compiles about 3x faster; it is the same program.
    step = step.lower(state, batch).compile({"xla_backend_optimization_level": 0})
    model = aggregator_speed.torch_model(sizes, jax.device_get(state.params), "cpu")
    override, tolerance = torch_override(method, num_tasks)
    torch_step = torch_methods.make_step(
        method, model, torch.optim.SGD(model.parameters(), lr=AGG_LR), num_tasks,
        aggregator=override)
    x_t, ys = aggregator_speed.torch_inputs(x, labels, "cpu")
    for _ in range(AGG_STEPS.get(method, 1)):
        state, logs = step(state, batch)
        torch_loss = torch_step(x_t, ys)
        np.testing.assert_allclose(torch_loss.item(), float(logs["loss"]), rtol=1e-5)
        # mtl_jax's recorded direction, converted to torch layout like the weights.
        expected = dict(aggregator_speed.torch_model(
            sizes, jax.device_get(state.opt_state[0]), "cpu").named_parameters())
        scale = max(float(p.detach().abs().max()) for p in expected.values())
        for name, param in model.named_parameters():
            np.testing.assert_allclose(param.grad.numpy(), expected[name].detach().numpy(),
                                       rtol=0, atol=tolerance * scale, err_msg=name)
    if method == "pcgrad" and num_tasks == 8:  # conflicts: the projections were exercised
        assert not np.allclose(logs["task_weights"], 1.0)


@needs_torchjd
def test_aggregator_speed_smoke(tmp_path):
    """A tiny run writes one row per framework, method and T, and one table per T."""
    report = aggregator_speed.main(["--quick", "--tasks", "2,8", "--methods", "ew",
                                    "--repeats", "2", "--warmup", "1", "--threads", "1",
                                    "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "aggregator_speed_cpu_quick.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"]))
    rows = {(r["tasks"], r["method"], r["framework"]): r for r in saved["rows"]}
    assert set(rows) == {(t, "EW", f) for t in (2, 8) for f in aggregator_speed.FRAMEWORKS}
    for (t, m, _), row in rows.items():
        assert row["median_ms"] > 0 and len(row["times_ms"]) == 2
        np.testing.assert_allclose(row["loss_at_step_1"],
                                   rows[t, m, "mtl_jax"]["loss_at_step_1"], rtol=1e-5)
    assert saved["config"]["sizes"]["batch"] == aggregator_speed.QUICK.batch
    assert saved["machine"]["threads"]["torch"] == 1
    page = (tmp_path / "aggregator_speed_cpu_quick.md").read_text()
    assert "## T = 2 tasks" in page and "## T = 8 tasks" in page
    assert "| EW |" in page and "--tasks 2,8" in page


@needs_torchjd
def test_aggregator_speed_on_the_seed_convnet_starts_both_frameworks_alike():
    """The ConvNet path (NHWC in JAX, NCHW in torch, the same weights): equal first losses."""
    sizes = aggregator_speed.Sizes(batch=4, trunk="conv")
    rows = aggregator_speed.measure("mgda_ub", 3, sizes, repeats=1, warmup=1,
                                    torch_device=torch.device("cpu"))
    assert [r["framework"] for r in rows] == list(aggregator_speed.FRAMEWORKS)
    assert all("error" not in r for r in rows), rows
    np.testing.assert_allclose(rows[1]["loss_at_step_1"], rows[0]["loss_at_step_1"], rtol=1e-5)
    assert aggregator_speed.floor("MGDA", 40) == 27.0 and aggregator_speed.floor("FAMO", 40) == 1


# --------------------------------------------------------------------------- speed suite

if tjd is not None:
    import speed


def torch_adam(params):
    """The twin of ``optax.adam(1e-3, eps=1e-3)``: a large eps, as in
    test_port_matches_mtl_jax, so that Adam's first step g / (|g| + eps) does not turn
    float32 rounding of tiny gradients into differences of up to the learning rate."""
    return torch.optim.Adam(params, lr=1e-3, eps=1e-3)


@needs_torchjd
@pytest.mark.parametrize("trunk", ["mlp", "conv"])
def test_speed_ensemble_implementations_compute_the_same_update(trunk):
    """From the same initial weights and batch, one step of a 2-member ensemble gives the
    same losses and the same updated parameters in mtl_jax (vmap and auto), the PyTorch
    loop and torch.func: the ensemble timings compare the same computation."""
    sizes = (aggregator_speed.QUICK if trunk == "mlp"
             else aggregator_speed.Sizes(batch=2, trunk="conv"))
    members, num_tasks = 2, 3
    x, labels = aggregator_speed.synthetic_data(sizes, num_tasks)
    train_step, init, batch = speed.jax_setup(sizes, x, labels, jax.devices("cpu")[0], members,
                                              optimizer=optax.adam(1e-3, eps=1e-3))
    states = init()
    variables = jax.device_get(states.params)
    auto = mtl_jax.ensemble.choose_lowering(train_step, states, batch)
    auto_states, auto_logs = speed.jitted(train_step, members, auto)(
        jax.tree_util.tree_map(jnp.copy, states), batch)
    new_states, logs = speed.jitted(train_step, members)(states, batch)

    x_t, labels_t = aggregator_speed.torch_inputs(x, labels, "cpu")
    cpu = torch.device("cpu")
    loop_models = speed.torch_members(sizes, variables, cpu)
    loop_loss = speed.torch_loop_step(loop_models, torch_adam)(x_t, labels_t)
    func_step, stacked = speed.torch_func_step(speed.torch_members(sizes, variables, cpu),
                                               torch_adam)
    func_loss = func_step(x_t, labels_t)

    assert auto == ("loop" if trunk == "conv" else "vmap")  # on CPU
    for losses in (auto_logs["loss"], loop_loss, func_loss):  # per member
        np.testing.assert_allclose(np.asarray(losses), logs["loss"], rtol=1e-5)
    before = speed.torch_members(sizes, variables, cpu)
    after = {name: speed.torch_members(sizes, jax.device_get(s.params), cpu)
             for name, s in (("vmap", new_states), ("auto", auto_states))}
    for i in range(members):
        loop = dict(loop_models[i].named_parameters())
        for name, initial in before[i].named_parameters():
            want = dict(after["vmap"][i].named_parameters())[name].detach().numpy()
            assert np.abs(want - initial.detach().numpy()).max() > 1e-4, name  # it moved
            candidates = {"auto": dict(after["auto"][i].named_parameters())[name],
                          "loop": loop[name], "torch.func": stacked[f"model.{name}"][i]}
            for label, got in candidates.items():
                np.testing.assert_allclose(got.detach().numpy(), want, rtol=0, atol=1e-6,
                                           err_msg=f"member {i}, {name}, {label}")


@needs_torchjd
def test_speed_mixed_precision_keeps_float32_state():
    """bfloat16 compute: float32 parameters and optimizer state, a loss near float32's."""
    sizes = aggregator_speed.QUICK
    x, labels = aggregator_speed.synthetic_data(sizes, 2)
    device = jax.devices("cpu")[0]
    losses = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        train_step, init, batch = speed.jax_setup(sizes, x, labels, device, dtype=dtype)
        state, logs = speed.jitted(train_step, None)(init(), batch)
        dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves((state.params,
                                                                     state.opt_state))}
        assert dtypes <= {jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}
        losses[dtype] = float(logs["loss"])
    assert losses[jnp.float32] != losses[jnp.bfloat16]
    np.testing.assert_allclose(losses[jnp.bfloat16], losses[jnp.float32], rtol=2e-2)


@needs_torchjd
@pytest.mark.parametrize("m, k, n", [(8, 16, 32), (3, 5, 7)])
def test_speed_flop_counter_matches_hand_count_for_a_dense_layer(m, k, n):
    """XLA's cost analysis counts a [m, k] x [k, n] product as 2·m·n·k FLOPs."""
    x, w = jnp.ones((m, k)), jnp.ones((k, n))
    assert speed.xla_flops(jax.jit(jnp.dot).lower(x, w).compile()) == 2 * m * n * k
    dense = nn.Dense(n, use_bias=False)
    params = dense.init(jax.random.key(0), x)
    assert speed.xla_flops(jax.jit(dense.apply).lower(params, x).compile()) == 2 * m * n * k


@needs_torchjd
def test_speed_targets_are_met_missed_or_not_measured():
    """A ratio at or above the target is met, below it missed (unprofiled), a failed
    measurement, a section not run or a target of the other platform not measured."""
    def row(model, framework, ms):
        return {"model": model, "framework": framework, "median_ms": ms}

    hard = {"rows": [row("MLP 512-512", "mtl_jax", 10.0),
                     row("MLP 512-512", "PyTorch eager", 20.0),
                     row("MLP 512-512", "PyTorch torch.compile", 5.0),
                     row("seed ConvNet", "mtl_jax", 10.0),
                     row("seed ConvNet", "PyTorch eager", 1.0)]}
    lines = speed.evaluate_targets({"hard": hard}, "cpu")
    by_target = {}
    for line in lines:
        by_target.setdefault(line["target"], []).append(line)
    assert set(by_target) == {t.text for t in speed.TARGETS}
    for target in speed.TARGETS:
        if target.platform == "gpu":
            assert [line["status"] for line in by_target[target.text]] == ["not measured"]
    eager, = by_target["MLP hard-sharing step no slower than PyTorch eager"]
    assert eager["status"] == "met" and eager["value"] == 2.0  # the ConvNet is not a CPU target
    compiled, = by_target["MLP hard-sharing step no slower than torch.compile"]
    assert compiled["status"] == "missed" and compiled["note"] == "unprofiled"
    methods, = by_target["MLP gradient methods no slower than the PyTorch loop"]
    assert methods["status"] == "not measured" and "not run" in methods["note"]

    hard["rows"][2] = row("MLP 512-512", "PyTorch torch.compile", 0) | {"error": "no compiler"}
    gpu = {line["target"]: line for line in speed.evaluate_targets({"hard": hard}, "gpu")}
    assert gpu["hard-sharing step ≥ 5× torch.compile"]["status"] == "not measured"


@needs_torchjd
def test_speed_quick_writes_every_section_and_target(tmp_path, monkeypatch):
    """``--quick`` runs every section and writes the JSON, the Markdown (every section,
    every target line) and the scaling plot. torch.compile is replaced by the identity:
    compiling for real takes a minute; step_speed's test covers the comparison."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    report = speed.main(["--quick", "--device", "cpu", "--threads", "1", "--repeats", "1",
                         "--out", str(tmp_path)])

    saved = json.loads((tmp_path / "speed_cpu_quick.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert list(saved["sections"]) == list(speed.SECTIONS)
    assert {t["target"] for t in saved["targets"]} == {t.text for t in speed.TARGETS}
    for line in saved["targets"]:
        assert line["status"] in ("met", "missed", "not measured")
        assert (line["platform"] == "gpu") == (line["status"] == "not measured"), line
    ensembles = saved["sections"]["ensembles"]["rows"]
    assert {r["implementation"] for r in ensembles} == set(speed.ENSEMBLE_IMPLEMENTATIONS)
    for n in speed.QUICK.members:
        losses = [r["loss_at_step_1"] for r in ensembles if r["members"] == n]
        np.testing.assert_allclose(losses, losses[0], rtol=1e-5)
    flops = saved["sections"]["flops"]
    assert all(r["fraction_of_peak"] > 0 and r["gflop"] > 0 for r in flops["rows"]), flops
    assert {r["compute"] for r in flops["rows"]} == set(speed.COMPUTE_DTYPES)
    assert (tmp_path / "speed_cpu_quick_scaling.png").stat().st_size > 0

    page = (tmp_path / "speed_cpu_quick.md").read_text()
    for heading in ("## Targets", "## Hard-sharing step", "## Per-task-gradient methods",
                    "## Ensembles", "## Scaling", "## Achieved FLOP rate"):
        assert heading in page
    for target in speed.TARGETS:
        assert f"| {target.platform.upper()} | {target.text} |" in page
    assert "Every section ran on the CPU" in page and "speed_cpu_quick_scaling.png" in page
