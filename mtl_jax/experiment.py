"""A complete experiment: an MTL model, its single-task baselines, one program.

This is what ``mtl-jax train`` runs. The multi-task members (one per seed) and
the single-task baselines (one per task and seed: the same architecture
trained with a one-hot loss weight and no penalty, so on the same budget) form
a single ensemble, stepped together by one compiled step. The report gives
per-task metrics as mean ± std over seeds and Δm% against the baselines.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import numbers
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh

from mtl_jax import distributed, ensemble, metrics, penalties, sharding
from mtl_jax.aggregators import registry
from mtl_jax.checkpoint import CONFIG_FILE, Checkpointer, CheckpointError, check_writable
from mtl_jax.data import Dataset, idx, multidigits, multifashion, multimnist, synthetic_images
from mtl_jax.loop import evaluate, fit, start_step
from mtl_jax.models import (
    CGC,
    MTAN,
    PLE,
    ConvTrunk,
    CrossStitch,
    DSelectKGates,
    HardSharing,
    MLPTrunk,
    MMoE,
    MultiLeNet,
    MultiLeNetHeads,
    SoftSharing,
    StackedHeads,
)
from mtl_jax.plots import plot_curves
from mtl_jax.precision import PRECISIONS, MixedPrecision
from mtl_jax.reproduce import MAX_COUNT, MAX_SEED
from mtl_jax.tasks import Tasks, classification
from mtl_jax.train import make_eval_step, make_train_step

DATASETS: dict[str, Callable[[Config], tuple[Dataset, Dataset]]] = {
    "multidigits": lambda c: multidigits(**_sizes(c), seed=c.seed),
    "synthetic": lambda c: _split(synthetic_images(
        4, num_examples=(c.num_train or SYNTHETIC_SIZES[0]) + (c.num_test or SYNTHETIC_SIZES[1]),
        seed=c.seed), c.num_test or SYNTHETIC_SIZES[1]),
    "multifashion": lambda c: multifashion(data_dir=c.data_dir, **_sizes(c), seed=c.seed),
    "multimnist": lambda c: multimnist(data_dir=c.data_dir, **_sizes(c), seed=c.seed),
}
"""Dataset name → ``(train, test)`` of a :class:`Config` (its seed, sizes and data_dir)."""

IDX_DATASETS: dict[str, str] = {"multifashion": "fashion-mnist", "multimnist": "mnist"}
"""The datasets read from IDX files on disk (``data_dir``) → their :mod:`mtl_jax.data.idx` name."""


def _sizes(config: Config) -> dict[str, int]:
    """The ``num_train`` / ``num_test`` set in ``config`` (unset: the dataset's default)."""
    return {name: getattr(config, name) for name in ("num_train", "num_test")
            if getattr(config, name) is not None}


def _split(data: Dataset, num_test: int) -> tuple[Dataset, Dataset]:
    return data.subset(np.arange(num_test, len(data))), data.subset(np.arange(num_test))


TRUNKS: dict[str, Callable[[], nn.Module]] = {
    "conv": ConvTrunk,
    "mlp": lambda: MLPTrunk((256, 256)),
    "lenet": MultiLeNet,
}

PENALTIES: dict[str, Callable[[Any], jax.Array] | None] = {
    "none": None,
    "l2": penalties.l2,
    "l2-pairwise": functools.partial(penalties.l2, pairwise=True),
    "trace-laf": functools.partial(penalties.trace_norm, kind="laf"),
    "trace-tucker": functools.partial(penalties.trace_norm, kind="tucker"),
    "trace-tt": functools.partial(penalties.trace_norm, kind="tt"),
}


class Arch(NamedTuple):
    """How ``--arch NAME`` builds its model: ``build(trunk, names, num_classes)``.

    ``towers`` selects the parameters that every task owns a copy of, stacked on
    a leading task axis (a regex for :mod:`mtl_jax.penalties`, ``None``: every
    leaf): ``--penalty`` ties those together, soft sharing on top of the
    architecture's own sharing (e.g. L2-tied heads of a hard-shared trunk, or
    trace-norm-tied towers of MMoE).
    """

    build: Callable[[nn.Module, tuple[str, ...], int], nn.Module]
    summary: str
    towers: str | None
    needs_conv: bool = False


_MOE_TOWERS = r"(^|/)towers/"

ARCHS: dict[str, Arch] = {
    "hard": Arch(lambda trunk, names, c: HardSharing(trunk, _heads(trunk, names, c)),
                 "shared trunk, stacked per-task heads (hard parameter sharing)",
                 r"(^|/)heads/"),
    "soft": Arch(lambda trunk, names, c: SoftSharing(nn.Sequential([trunk, nn.Dense(c)]), names),
                 "one trunk+head tower per task, tied by --penalty (soft sharing)", None),
    "mmoe": Arch(lambda trunk, names, c: MMoE(trunk, names, c, num_experts=4),
                 "4 trunk experts, one softmax gate per task (Ma et al. 2018)", _MOE_TOWERS),
    "omoe": Arch(lambda trunk, names, c: MMoE(trunk, names, c, num_experts=4, one_gate=True),
                 "4 trunk experts, one gate shared by all tasks (Ma et al. 2018's baseline)",
                 _MOE_TOWERS),
    "dselect-k": Arch(lambda trunk, names, c: MMoE(
        trunk, names, c, num_experts=4, gate=functools.partial(DSelectKGates, k=2)),
        "4 trunk experts, DSelect-k gates with k = 2 (Hazimeh et al. 2021)", _MOE_TOWERS),
    "cgc": Arch(lambda trunk, names, c: CGC(trunk, names, c, num_shared_experts=2,
                                             num_task_experts=1),
                "2 shared + 1 expert per task, per-task gates (Tang et al. 2020)",
                r"(^|/)(towers|level_0/task_experts)/"),
    "ple": Arch(lambda trunk, names, c: PLE(trunk, names, c, num_shared_experts=2,
                                             num_task_experts=1, levels=2),
                "2 levels of CGC extraction (progressive layered extraction, Tang et al. 2020)",
                r"(^|/)(towers|level_1/task_experts)/"),  # level 0's feed the shared gate
    "cross-stitch": Arch(lambda trunk, names, c: CrossStitch(trunk, names, c),
                         "per-task columns mixed by cross-stitch units (Misra et al. 2016)",
                         r"(^|/)(column_\d+|heads)/"),
    "mtan": Arch(lambda trunk, names, c: MTAN(trunk, names, c),
                 "per-task attention over a shared conv trunk (Liu et al. 2019); --trunk conv",
                 r"(^|/)(attention_\d+|heads)/", needs_conv=True),
}


def _heads(trunk: nn.Module, names: tuple[str, ...], num_classes: int) -> nn.Module:
    """Linear stacked heads, or for ``MultiLeNet`` its paper's two-layer heads."""
    if isinstance(trunk, MultiLeNet):
        return MultiLeNetHeads(names, num_classes)
    return StackedHeads(names, num_classes)


def tower_penalty(arch: str, penalty: str) -> Callable[[Any], jax.Array] | None:
    """``--penalty penalty`` acting on ``--arch arch``'s per-task parameters (``Arch.towers``).

    Examples:
      >>> import jax.numpy as jnp
      >>> params = {"trunk": {"kernel": jnp.ones((3, 3))},
      ...           "heads": {"kernel": jnp.array([[[0.0]], [[2.0]]])}}
      >>> float(tower_penalty("hard", "l2")(params))  # the heads only: 1² + 1²
      2.0
    """
    fn = PENALTIES[penalty]
    return None if fn is None else functools.partial(fn, select=ARCHS[arch].towers)


def build_model(arch: str, trunk: str, names: Sequence[str], num_classes: int,
                precision: str = "f32") -> nn.Module:
    """The model of ``--arch arch`` on a ``--trunk trunk`` trunk (or experts, towers),
    computing in ``precision`` (:data:`mtl_jax.precision.PRECISIONS`)."""
    model = ARCHS[arch].build(TRUNKS[trunk](), tuple(names), num_classes)
    dtype = PRECISIONS[precision]
    return model if dtype is None else MixedPrecision(model, dtype)


def shared_parameters(model: nn.Module) -> str:
    """The path regex of the parameters the tasks share (aggregated by gradient methods)."""
    return getattr(model, "shared", "trunk")


INT_FIELDS = {"steps": 1, "batch_size": 1, "seeds": 1, "checkpoint_every": 1, "keep": 1,
              "eval_every": 0, "seed": 0, "num_train": 1, "num_test": 1, "chunk_size": 1}
OPTIONAL_FIELDS = ("num_train", "num_test", "chunk_size")
SYNTHETIC_SIZES = (4096, 1024)  # training and test examples of "synthetic" by default


def default_train_size(dataset: str) -> int:
    """The number of training examples of ``dataset`` when ``num_train`` is unset."""
    if dataset == "synthetic":
        return SYNTHETIC_SIZES[0]
    loader = {"multidigits": multidigits, "multifashion": multifashion,
              "multimnist": multimnist}[dataset]
    return inspect.signature(loader).parameters["num_train"].default


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a run (``steps`` may grow when resuming).

    ``num_train`` / ``num_test`` are the numbers of training / test examples (pairs
    for the Multi* datasets; None: the dataset's default); ``data_dir`` is where the
    datasets of :data:`IDX_DATASETS` read their files (None: the Debian package's).
    ``mesh`` is ``(members, data)``: run the ensemble over that device mesh
    (:mod:`mtl_jax.sharding`, the vmap lowering); ``(1, 1)``: one device; None:
    every visible device that the numbers of members and examples divide
    (:func:`mtl_jax.sharding.default_mesh`; one device when only one is visible).
    ``precision`` "bf16" computes in bfloat16 with float32 parameters and
    optimizer state (:mod:`mtl_jax.precision`). ``chunk_size`` bounds how many
    per-task gradients a gradient method computes at once (memory; None: all).
    """

    dataset: str = "multidigits"
    data_dir: str | None = None
    num_train: int | None = None
    num_test: int | None = None
    arch: str = "hard"
    trunk: str = "conv"
    penalty: str = "none"
    penalty_weight: float = 0.0
    method: str = "ew"
    loss_weights: tuple[float, ...] | None = None
    learning_rate: float = 1e-3
    steps: int = 1500
    batch_size: int = 128
    seeds: int = 1
    seed: int = 0
    baselines: bool = True
    eval_every: int = 250
    checkpoint_every: int = 500
    keep: int = 3
    lowering: str = "auto"
    mesh: tuple[int, int] | None = None
    precision: str = "f32"
    chunk_size: int | None = None

    def validate(self) -> None:
        """Raise ValueError naming the first bad field; runs before any work."""
        self._check_types()
        choices = {"dataset": DATASETS, "arch": ARCHS, "trunk": TRUNKS, "penalty": PENALTIES,
                   "method": registry.METHODS, "lowering": ensemble.LOWERINGS,
                   "precision": PRECISIONS}
        for field, known in choices.items():
            if getattr(self, field) not in known:
                raise ValueError(f"unknown {field} {getattr(self, field)!r}; "
                                 f"choose from {sorted(known)}")
        size = self.num_train or default_train_size(self.dataset)
        if self.batch_size > size:
            raise ValueError(f"batch_size ({self.batch_size}) must not exceed the number of "
                             f"training examples ({size}; num_train)")
        if self.dataset in IDX_DATASETS:
            try:
                idx.find_files(IDX_DATASETS[self.dataset], self.data_dir)
            except FileNotFoundError as error:
                raise ValueError(str(error)) from None
        elif self.data_dir is not None:
            raise ValueError(f"data_dir is for the datasets read from disk "
                             f"{sorted(IDX_DATASETS)}, not {self.dataset!r}")
        wrt = registry.METHODS[self.method].wrt
        if wrt == "parameters" and self.arch == "soft":
            raise ValueError(f"method {self.method!r} aggregates the gradients of shared "
                             "parameters; arch 'soft' shares none")
        if wrt == "representation" and self.arch != "hard":
            raise ValueError(f"method {self.method!r} aggregates the gradients of a shared "
                             "representation and needs arch 'hard'")
        if ARCHS[self.arch].needs_conv and self.trunk != "conv":
            raise ValueError(f"arch {self.arch!r} attends over convolutional feature maps "
                             f"and needs trunk 'conv', got {self.trunk!r}")
        if self.mesh is not None and tuple(self.mesh) != (1, 1):
            if self.lowering not in ("auto", "vmap"):
                raise ValueError(f"a mesh runs the vmap lowering; lowering {self.lowering!r} "
                                 "cannot be combined with it")
            sharding.check_divisible("batch_size", self.batch_size,
                                     sharding.make_mesh(*self.mesh), "data")

    def _check_types(self) -> None:
        """Every field of the right type and within range, naming the first that is not."""
        def fail(field, wanted):
            raise ValueError(f"{field} must be {wanted}, got {getattr(self, field)!r}")

        def integer(value):
            return isinstance(value, numbers.Integral) and not isinstance(value, bool)

        for field, low in INT_FIELDS.items():
            value = getattr(self, field)
            if value is None and field in OPTIONAL_FIELDS:
                continue
            high = MAX_SEED if field == "seed" else MAX_COUNT
            if not (integer(value) and low <= value <= high):
                fail(field, f"an integer in [{low}, {high}]")
        for field, low in (("learning_rate", 0.0), ("penalty_weight", 0.0)):
            value = getattr(self, field)
            if not (isinstance(value, numbers.Real) and not isinstance(value, bool)
                    and math.isfinite(value) and value >= low
                    and (value > 0 or field != "learning_rate")):
                fail(field, "a positive number" if field == "learning_rate"
                     else "a finite number >= 0")
        for field in ("dataset", "arch", "trunk", "penalty", "method", "lowering", "precision"):
            if not isinstance(getattr(self, field), str):
                fail(field, "a name (str)")
        if not isinstance(self.baselines, bool):
            fail("baselines", "True or False")
        if self.data_dir is not None and not isinstance(self.data_dir, str | os.PathLike):
            fail("data_dir", "a path")
        weights = self.loss_weights
        if weights is not None and not (isinstance(weights, tuple | list) and all(
                isinstance(w, numbers.Real) and not isinstance(w, bool) and math.isfinite(w)
                and w >= 0 for w in weights)):
            fail("loss_weights", "a sequence of finite numbers >= 0")
        if self.mesh is not None and not (isinstance(self.mesh, tuple | list)
                                          and len(self.mesh) == 2
                                          and all(integer(n) and n >= 1 for n in self.mesh)):
            fail("mesh", "a pair (members, data) of positive integers")

    def identity(self) -> dict[str, Any]:
        """The fields a checkpoint must agree on to be resumed."""
        fields = dataclasses.asdict(self)
        for free in ("steps", "eval_every", "checkpoint_every", "keep", "lowering", "data_dir",
                     "mesh", "chunk_size"):
            fields.pop(free)
        if fields["precision"] == "f32":  # absent when the default: older runs still resume
            fields.pop("precision")
        for optional in ("num_train", "num_test"):  # absent when unset: older runs still resume
            if fields[optional] is None:
                fields.pop(optional)
        return fields


@dataclasses.dataclass
class Report:
    """Per-task results of the multi-task members and of the baselines."""

    tasks: Tasks
    runs: list[dict[str, dict[str, float]]]
    baselines: list[dict[str, dict[str, float]]] | None

    def rows(self) -> dict[str, dict]:
        rows = {"multi-task": metrics.mean_std(self.runs)}
        if self.baselines:
            rows["single-task"] = metrics.mean_std(self.baselines)
        return rows

    def delta_m(self) -> tuple[float, float] | None:
        if not self.baselines:
            return None
        base = {t: {m: v[0] for m, v in ms.items()}
                for t, ms in metrics.mean_std(self.baselines).items()}
        deltas = [metrics.delta_m(run, base, self.tasks.higher_is_better) for run in self.runs]
        return float(np.mean(deltas)), float(np.std(deltas))

    def table(self) -> str:
        delta = self.delta_m()
        return metrics.markdown_table(self.rows(), self.tasks.higher_is_better, digits=4,
                                      delta={"multi-task": delta, "single-task": None}
                                      if delta else None)

    def to_json(self) -> dict:
        return {"runs": self.runs, "baselines": self.baselines, "delta_m": self.delta_m()}


def member_plan(config: Config, num_tasks: int) -> tuple[np.ndarray, np.ndarray]:
    """Loss weights ``[N, T]`` and penalty weights ``[N]``: MTL seeds, then baselines."""
    mtl = np.broadcast_to(np.asarray(config.loss_weights or np.ones(num_tasks), float),
                          (config.seeds, num_tasks))
    weights, penalty = [mtl], [np.full(config.seeds, config.penalty_weight)]
    if config.baselines:
        weights.append(np.repeat(np.eye(num_tasks), config.seeds, axis=0))
        penalty.append(np.zeros(num_tasks * config.seeds))
    return np.concatenate(weights), np.concatenate(penalty)


def run(config: Config, out: str | pathlib.Path | None = None, *, resume: bool = False,
        progress: bool = True) -> Report:
    """Train and evaluate ``config``; write logs, plots and checkpoints to ``out``.

    Examples:
      >>> report = run(Config(steps=20, eval_every=0, trunk="mlp"), progress=False)
      >>> report.tasks.names
      ('left', 'right')
    """
    config.validate()
    out_dir = check_writable(out) if out is not None else None
    train, test = DATASETS[config.dataset](config)
    names = tuple(train.y)
    if config.loss_weights is not None and len(config.loss_weights) != len(names):
        raise ValueError(f"loss_weights has {len(config.loss_weights)} entries for "
                         f"{len(names)} tasks {list(names)}")
    num_classes = int(max(labels.max() for labels in train.y.values())) + 1
    tasks = Tasks([classification(n, num_classes) for n in names])
    model = build_model(config.arch, config.trunk, names, num_classes, config.precision)
    optimizer = optax.adam(config.learning_rate)
    loss_weights, penalty_weights = member_plan(config, len(names))
    knobs = {}
    if config.method == "fixed":  # the weights go to the method, not to the losses
        knobs = {"weights": loss_weights[0]}
        loss_weights = (loss_weights > 0).astype(float)
    aggregator, wrt = registry.get(config.method, len(names), **knobs)
    mesh = _mesh(config, len(loss_weights))
    if mesh is not None:
        sharding.check_divisible("ensemble members (seeds, and seeds x tasks baselines)",
                                 len(loss_weights), mesh, "members")
    keys = jax.random.split(jax.random.key(config.seed), len(loss_weights))
    example = train.batch(0, min(config.batch_size, len(train)), config.seed)
    shared = None if wrt == "losses" else shared_parameters(model)
    state = ensemble.init(model, tasks, keys, example, optimizer, loss_weights=loss_weights,
                          penalty_weight=penalty_weights, aggregator=aggregator, shared=shared)
    if mesh is not None:
        state = sharding.shard_ensemble(state, mesh)
    main = distributed.is_main()
    checkpointer, log_path = None, None
    if out_dir is not None:
        checkpointer = _open_checkpoints(out_dir, config, resume)
        restored = checkpointer.restore_latest(state) if resume else None
        log_path = out_dir / "metrics.jsonl"
        if restored is not None:
            state = restored
            if main:
                _truncate_log(log_path, start_step(state))
        elif log_path.exists() and main:
            log_path.unlink()
        if main:
            (out_dir / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
        distributed.barrier("run directory ready")
    train_step = make_train_step(model, tasks, optimizer,
                                 penalty=tower_penalty(config.arch, config.penalty),
                                 aggregator=aggregator, wrt=wrt, shared=shared,
                                 chunk_size=config.chunk_size)
    eval_step, source = make_eval_step(model, tasks), train
    if mesh is None:
        step = ensemble.step(train_step, config.lowering)
        eval_step = ensemble.lift(eval_step, config.lowering, static_argnames="task")
    else:
        step, source = sharding.sharded_step(train_step, mesh), sharding.ShardedSource(train, mesh)
        eval_step = sharding.sharded_eval(eval_step, mesh)
    members = len(loss_weights)
    state, results = fit(step, state, tasks, source, steps=config.steps,
                         batch_size=config.batch_size, seed=config.seed,
                         eval_fn=lambda p: evaluate(eval_step, p, tasks, test, members=members),
                         eval_every=config.eval_every, log_path=log_path if main else None,
                         checkpointer=checkpointer, progress=progress and main)
    report = _report(tasks, results, config)
    if out_dir is not None and main:
        (out_dir / "results.json").write_text(json.dumps(report.to_json(), indent=2))
        (out_dir / "results.md").write_text(report.table() + "\n")
        plot_curves(log_path, tasks, config.seeds, out_dir / "curves.png")
    return report


def _mesh(config: Config, members: int) -> Mesh | None:
    """``config.mesh`` (``(1, 1)``: one device, unsharded), or with none given and several
    devices visible, :func:`mtl_jax.sharding.default_mesh` (unless a lowering other than
    vmap was asked for)."""
    if config.mesh is None:
        if config.lowering not in ("auto", "vmap") and jax.process_count() == 1:
            return None
        return sharding.default_mesh(members, config.batch_size)
    return None if tuple(config.mesh) == (1, 1) else sharding.make_mesh(*config.mesh)


def _open_checkpoints(out_dir: pathlib.Path, config: Config, resume: bool) -> Checkpointer:
    ckpt_dir = out_dir / "checkpoints"
    if not resume and (out_dir / "metrics.jsonl").exists():
        raise CheckpointError(f"{str(out_dir)!r} already holds a run; pass --resume to continue "
                              "it or choose another --out")
    if resume and not (ckpt_dir / CONFIG_FILE).exists():
        raise CheckpointError(f"nothing to resume in {str(out_dir)!r}: no checkpoints there")
    return Checkpointer(ckpt_dir, save_every=config.checkpoint_every, keep=config.keep,
                        config=config.identity(), resume=resume)


def _truncate_log(path: pathlib.Path, step: int) -> None:
    """Drop log records past ``step``: the resumed run writes them again."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines()
                if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))


def _report(tasks: Tasks, results: list, config: Config) -> Report:
    runs = results[:config.seeds]
    baselines = None
    if config.baselines:
        per_task = [results[config.seeds + t * config.seeds:config.seeds + (t + 1) * config.seeds]
                    for t in range(len(tasks))]
        baselines = [{name: per_task[t][s][name] for t, name in enumerate(tasks.names)}
                     for s in range(config.seeds)]
    return Report(tasks, runs, baselines)
