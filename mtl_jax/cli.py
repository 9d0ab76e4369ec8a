"""The ``mtl-jax`` command line: ``train``, ``list`` and ``reproduce``."""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import os
import signal
import sys

from mtl_jax import distributed, ensemble, sharding
from mtl_jax.aggregators import registry
from mtl_jax.checkpoint import CheckpointError
from mtl_jax.experiment import ARCHS, DATASETS, PENALTIES, TRUNKS, Config, run
from mtl_jax.loop import NonFiniteLossError, Preempted
from mtl_jax.precision import PRECISIONS
from mtl_jax.reproduce import BENCHMARKS, MAX_SEED, check_range, mmoe, multifashion, toy

CATALOGUE = {
    "archs": {name: arch.summary for name, arch in ARCHS.items()},
    "penalties": {"none": "no penalty",
                  "l2": "sum over tasks of squared distance to the task mean (Duong et al. 2015)",
                  "l2-pairwise": "sum over task pairs of squared distances",
                  "trace-laf": "nuclear norm of the task x rest matrix (Yang & Hospedales 2017)",
                  "trace-tucker": "sum of nuclear norms of all mode unfoldings",
                  "trace-tt": "sum of nuclear norms of the tensor-train unfoldings"},
    "datasets": {"multidigits": "pairs of scikit-learn's 8x8 digits, MultiMNIST-style; "
                                "tasks left/right",
                 "synthetic": "seeded 32x32x3 images with 4 related 10-way tasks",
                 "multifashion": "pairs of Fashion-MNIST items overlaid MultiMNIST-style "
                                 "(Sener & Koltun 2018); tasks left/right; --data-dir",
                 "multimnist": "pairs of MNIST digits overlaid MultiMNIST-style; tasks "
                               "left/right; needs --data-dir"},
    "methods": {name: method.summary for name, method in registry.METHODS.items()},
    "trunks": {"conv": "the seed's ConvNet (SharedEncoder): conv32-pool-conv64-pool-dense256",
               "mlp": "two dense layers of 256",
               "lenet": "Sener & Koltun's MultiLeNet: conv10-pool-conv20-pool-dense50; "
                        "with --arch hard, their heads dense50-dense10"},
}


def _names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names such as ew,mgda, "
                                         f"got {text!r}")
    return names


def _correlations(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated task correlations such as 0.5,0.9,1.0, got {text!r}"
        ) from None


def _weights(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 1,0.5, got {text!r}") from None


def _mesh(text: str) -> tuple[int, int]:
    try:
        return sharding.parse_mesh(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parser() -> argparse.ArgumentParser:
    defaults = Config()
    top = argparse.ArgumentParser(
        prog="mtl-jax",
        description="Multi-task learning in JAX: train models, list choices, reproduce benchmarks.")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = commands.add_parser(
        "train", help="train a multi-task model and its single-task baselines",
        description="Train a multi-task model (one member per seed) and its single-task "
        "baselines on the same budget, as one compiled ensemble; print per-task metrics and "
        "delta_m, and write config, metrics.jsonl, curves.png, results and checkpoints to --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = train.add_argument
    add("--dataset", default=defaults.dataset, choices=sorted(DATASETS), help="built-in data")
    add("--data-dir", default=None,
        help="directory of the IDX files of multifashion (default: "
        "/usr/share/datasets/fashion-mnist, from apt-get install dataset-fashion-mnist) or "
        "multimnist (required)")
    add("--arch", default=defaults.arch, choices=list(ARCHS),
        help="multi-task architecture (see: mtl-jax list archs)")
    add("--trunk", default=defaults.trunk, choices=sorted(TRUNKS), help="trunk / tower body")
    add("--penalty", default=defaults.penalty, choices=list(PENALTIES),
        help="soft-sharing penalty on the per-task parameters: whole towers of --arch soft, "
             "the heads, towers, columns or attention modules of the others")
    add("--penalty-weight", type=float, default=defaults.penalty_weight,
        help="weight of the penalty in the loss")
    add("--method", default=defaults.method, choices=sorted(registry.METHODS),
        help="task weighting / gradient aggregation method (see: mtl-jax list methods)")
    add("--loss-weights", type=_weights, default=None,
        help="comma-separated non-negative task loss weights (default: all 1)")
    add("--lr", type=float, default=defaults.learning_rate, help="Adam learning rate")
    add("--steps", type=int, default=defaults.steps, help="total training steps")
    add("--batch-size", type=int, default=defaults.batch_size, help="examples per step")
    add("--seeds", type=int, default=defaults.seeds,
        help="independent seeds, trained together as an ensemble; reported as mean ± std")
    add("--seed", type=int, default=defaults.seed, help="base seed for data and init")
    add("--no-baselines", action="store_true", help="skip the single-task baselines")
    add("--eval-every", type=int, default=defaults.eval_every,
        help="evaluate on the test set every N steps (0: only at the end)")
    add("--checkpoint-every", type=int, default=defaults.checkpoint_every,
        help="save a checkpoint every N steps (and at the end)")
    add("--keep", type=int, default=defaults.keep, help="checkpoints to keep")
    add("--lowering", default=defaults.lowering, choices=ensemble.LOWERINGS,
        help="how members are stepped together (auto: a loop of compiled steps for conv "
        "models on CPU, vmap otherwise)")
    add("--mesh", type=_mesh, default=None,
        help="run the ensemble over a device mesh, e.g. members=4,data=2: members split over "
        "4 devices, each batch over 2 (data parallel), on the first 8 devices; "
        "members=1,data=1 is one device (default: every visible device that the numbers of "
        "members and of examples in a batch divide)")
    add("--precision", default=defaults.precision, choices=sorted(PRECISIONS),
        help="bf16: compute in bfloat16, parameters and optimizer state stay float32")
    add("--chunk-size", type=int, default=None, metavar="K",
        help="gradient methods: compute at most K per-task gradients at once (bounds memory "
        "for many tasks; default: all together)")
    add("--coordinator", default=None, metavar="HOST:PORT",
        help="multi-process run: the address of process 0 (default: $JAX_COORDINATOR_ADDRESS)")
    add("--num-processes", default=None, metavar="N",
        help="multi-process run: how many processes (default: $JAX_NUM_PROCESSES)")
    add("--process-id", default=None, metavar="I",
        help="multi-process run: this process's index, 0..N-1 (default: $JAX_PROCESS_ID)")
    add("--out", default=None,
        help="run directory (default: runs/<date-time>); an existing run is never overwritten")
    add("--resume", action="store_true",
        help="continue the run in --out from its latest checkpoint")
    add("--quiet", action="store_true", help="no progress bar")
    lister = commands.add_parser("list", help="list methods, architectures, penalties, datasets, "
                                 "trunks",
                                 description="List the choices for train's flags.")
    lister.add_argument("what", nargs="?", choices=sorted(CATALOGUE),
                        help="what to list (default: everything)")
    _add_reproduce(commands)
    return top


def _add_reproduce(commands) -> None:
    listing = "; ".join(f"{name}: {text}" for name, text in BENCHMARKS.items())
    reproduce = commands.add_parser(
        "reproduce", help="reproduce a published benchmark",
        description=f"Reproduce a published benchmark. Benchmarks: {listing}.")
    benchmarks = reproduce.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    settings = "; ".join(f"{name}: L1 x {s.scale:g}, {s.steps:,} steps, {len(s.starts)} starts "
                         f"({s.source})" for name, s in toy.SETTINGS.items())
    parser = benchmarks.add_parser(
        "toy", help=BENCHMARKS["toy"],
        description="Train every method from the start points of the two-task toy problem "
        "(CAGrad, Nash-MTL, FAMO) with Adam, each method as one compiled program; write "
        "toy.json, toy.md, toy_params.png and toy_losses.png to --out and print the table. "
        f"Settings: {settings}.")
    add = parser.add_argument
    add("--setting", default="nash", choices=list(toy.SETTINGS),
        help="whose set-up: loss scale, steps, start points, method knobs (default: nash)")
    add("--methods", type=_names, default=None,
        help="comma-separated methods (default: every method of 'mtl-jax list methods' but "
        "mgda_ub, which is mgda here, and fixed, which is ew)")
    add("--steps", type=int, default=None, help="Adam steps (default: the setting's)")
    add("--out", default=None,
        help="output directory (default: runs/toy-<date-time>); a non-empty one is refused")
    _add_mmoe(benchmarks)
    _add_multifashion(benchmarks)


def _add_mmoe(benchmarks) -> None:
    defaults = mmoe.Setup()
    parser = benchmarks.add_parser(
        "mmoe", help=BENCHMARKS["mmoe"],
        description="The synthetic benchmark of MMoE (Ma et al., KDD 2018, Sec. 4.3 and "
        "6.2.1): two regression tasks whose weight vectors have cosine p; every model's runs "
        "at every p (each run its own data and initialisation) are one vmapped, compiled "
        "program. Writes mmoe.json, mmoe.md, mmoe_curves.png and, with --sweep, "
        "mmoe_sweep.png to --out and prints the table. The defaults are a reduced run (a few "
        "minutes on a 2-core CPU); the paper's scale is --runs 200, e.g. "
        "'mtl-jax reproduce mmoe --runs 200 --steps 2000 --sweep --sweep-runs 50 "
        "--sequential 5'. Models: " + "; ".join(f"{name}: {m.summary}"
                                               for name, m in mmoe.MODELS.items()) + ".")
    add = parser.add_argument
    add("--runs", type=int, default=20,
        help="independent runs (data and initialisation) per model and p (paper: 200)")
    add("--steps", type=int, default=defaults.steps, help="Adam steps per run")
    add("--p", type=_correlations, default=mmoe.P_VALUES,
        help="comma-separated task correlations in [-1, 1] (default: the paper's 0.5,0.9,1.0)")
    add("--sweep", action="store_true",
        help="also run --sweep-runs runs at p = 0, 0.1, ..., 1 (in the same programs) and "
        "plot the final loss against p")
    add("--sweep-runs", type=int, default=10, help="runs per p of the sweep")
    add("--models", type=_names, default=None,
        help=f"comma-separated models (default: all of {','.join(mmoe.MODELS)})")
    add("--lr", type=float, default=None,
        help="Adam learning rate for every model (default: each model's, see mmoe.md)")
    add("--batch-size", type=int, default=defaults.batch_size,
        help="fresh examples per step")
    add("--sequential", type=int, default=0, metavar="N",
        help="also time the first N members run one after another with the single-run "
        "program and extrapolate to all (0: skip)")
    add("--seed", type=int, default=0, help="seeds every run's data and initialisation")
    add("--out", default=None,
        help="output directory (default: runs/mmoe-<date-time>); a non-empty one is refused")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _report_warnings_plainly()
    if args.command == "list":
        for what in [args.what] if args.what else sorted(CATALOGUE):
            print(f"{what}:")
            for name, text in CATALOGUE[what].items():
                print(f"  {name:14s} {text}")
        return 0
    if args.command == "reproduce":
        return _reproduce(args)
    try:  # before anything touches JAX's devices
        processes = distributed.settings(args.coordinator, args.num_processes, args.process_id)
    except ValueError as error:
        return _fail(str(error))
    if processes is not None:
        if args.out is None:
            return _fail("a multi-process run needs --out DIR, the same on every process")
        distributed.initialize(**processes)
    config = Config(dataset=args.dataset, data_dir=args.data_dir, arch=args.arch,
                    trunk=args.trunk, penalty=args.penalty,
                    penalty_weight=args.penalty_weight, method=args.method,
                    loss_weights=args.loss_weights,
                    learning_rate=args.lr, steps=args.steps, batch_size=args.batch_size,
                    seeds=args.seeds, seed=args.seed, baselines=not args.no_baselines,
                    eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
                    keep=args.keep, lowering=args.lowering, mesh=args.mesh,
                    precision=args.precision, chunk_size=args.chunk_size)
    if args.resume and args.out is None:
        return _fail("--resume needs --out DIR naming the run to continue")
    out = args.out or f"runs/{datetime.datetime.now():%Y%m%d-%H%M%S}"
    try:
        report = run(config, out, resume=args.resume, progress=not args.quiet)
    except (ValueError, KeyError, CheckpointError, NonFiniteLossError) as error:
        return _fail(error.args[0] if isinstance(error, KeyError) else str(error))
    except OSError as error:  # writing logs, plots or results
        return _fail(f"cannot write {error.filename or out!r}: {error.strerror or error}")
    except Preempted as stop:
        print(f"mtl-jax: {stop}", file=sys.stderr)
        code = getattr(signal.Signals, stop.signal_name, signal.SIGTERM)
        return 128 + code  # the shell's code for that signal
    if not distributed.is_main():
        return 0
    print(report.table())
    print(f"\nwrote {out}/: config.json, metrics.jsonl, curves.png, results.md, checkpoints/")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    out = args.out or f"runs/{args.benchmark}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    if os.path.isdir(out) and os.listdir(out):
        return _fail(f"--out {out} exists and is not empty; choose a new directory")
    if os.path.exists(out) and not os.path.isdir(out):
        return _fail(f"--out {out} exists and is not a directory")
    try:
        if args.benchmark == "mmoe":
            return _reproduce_mmoe(args, out)
        if args.benchmark == "multifashion":
            return _reproduce_multifashion(args, out)
        toy.check_methods(args.methods or ())
        if args.steps is not None:
            check_range("--steps", args.steps, 1)
        summary = toy.benchmark(args.setting, args.methods, steps=args.steps, out=out,
                                log=lambda line: print(line, flush=True))
    except ValueError as error:
        return _fail(str(error))
    print(f"\n{toy.table(summary)}\n\ntotal {summary['total_s']:.0f} s")
    print(f"wrote {out}/: toy.json, toy.md, toy_params.png, toy_losses.png")
    return 0


def _reproduce_mmoe(args: argparse.Namespace, out: str) -> int:
    mmoe.check_models(args.models or ())
    for flag in ("runs", "steps", "sweep_runs", "batch_size"):
        check_range(f"--{flag.replace('_', '-')}", getattr(args, flag), 1)
    check_range("--sequential", args.sequential, 0)
    check_range("--seed", args.seed, 0, MAX_SEED)
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be positive and finite, got {args.lr}")
    setup = mmoe.Setup(steps=args.steps, batch_size=args.batch_size,
                       records=min(mmoe.Setup().records, args.steps))
    summary = mmoe.benchmark(args.models, runs=args.runs, ps=args.p,
                             sweep_runs=args.sweep_runs if args.sweep else 0, setup=setup,
                             learning_rate=args.lr, sequential_runs=args.sequential,
                             seed=args.seed, out=out, log=lambda line: print(line, flush=True))
    print(f"\n{mmoe.table(summary)}\n\ntotal {summary['total_s']:.0f} s")
    print(f"wrote {out}/: mmoe.json, mmoe.md, mmoe_curves.png"
          + (", mmoe_sweep.png" if args.sweep else ""))
    return 0


def _add_multifashion(benchmarks) -> None:
    full, reduced = multifashion.SETUPS["full"], multifashion.SETUPS["reduced"]
    parser = benchmarks.add_parser(
        "multifashion", help=BENCHMARKS["multifashion"],
        description="MultiFashion (Sener & Koltun's MultiMNIST recipe, NeurIPS 2018, on "
        "Fashion-MNIST) with their MultiLeNet: the single-task baselines and every method, "
        "each method's seeds one compiled ensemble (mtl-jax train's program). Writes "
        "multifashion.json, multifashion.md and multifashion.png (left vs right test "
        "accuracy per seed) to --out and prints the table. Default: the papers' scale "
        f"({full.num_train:,} / {full.num_test:,} pairs, {full.steps:,} steps of "
        f"{full.batch_size}, meant for a GPU); --reduced: {reduced.steps} steps of "
        f"{reduced.batch_size} (under 15 minutes on a 2-core CPU). Reads "
        "/usr/share/datasets/fashion-mnist (apt-get install dataset-fashion-mnist) or "
        "--data-dir.")
    add = parser.add_argument
    add("--reduced", action="store_true",
        help="the CPU setting's defaults for --steps and --batch-size")
    add("--methods", type=_names, default=None,
        help="comma-separated methods (default: " + ",".join(multifashion.METHODS)
        + "); ew always runs, it carries the single-task baselines")
    add("--seeds", type=int, default=None,
        help=f"initialisations per method (default {full.seeds})")
    add("--steps", type=int, default=None, help="Adam steps (default: the setting's)")
    add("--batch-size", type=int, default=None, help="pairs per step (default: the setting's)")
    add("--lr", type=float, default=None,
        help=f"Adam learning rate (default {full.learning_rate:g})")
    add("--train-pairs", type=int, default=None,
        help=f"training pairs (default {full.num_train:,})")
    add("--test-pairs", type=int, default=None, help=f"test pairs (default {full.num_test:,})")
    add("--seed", type=int, default=None, help="seeds the pairs, batches and initialisations")
    add("--data-dir", default=None,
        help="directory of Fashion-MNIST's four IDX files (default: the Debian package's)")
    add("--out", default=None,
        help="output directory (default: runs/multifashion-<date-time>); a non-empty one is "
        "refused")


def _reproduce_multifashion(args: argparse.Namespace, out: str) -> int:
    setup = multifashion.SETUPS["reduced" if args.reduced else "full"]
    flags = {"steps": args.steps, "batch_size": args.batch_size, "learning_rate": args.lr,
             "num_train": args.train_pairs, "num_test": args.test_pairs, "seeds": args.seeds,
             "seed": args.seed}
    setup = setup._replace(**{k: v for k, v in flags.items() if v is not None})
    summary = multifashion.benchmark(args.methods, setup=setup, data_dir=args.data_dir, out=out,
                                     log=lambda line: print(line, flush=True))
    print(f"\n{multifashion.table(summary)}\n\ntotal {summary['total_s']:.0f} s")
    print(f"wrote {out}/: multifashion.json, multifashion.md, multifashion.png")
    return 0


def _report_warnings_plainly() -> None:
    """mtl_jax's warnings as ``mtl-jax: ...`` lines; orbax's own error logs are silenced
    (their errors reach the user as one CheckpointError each)."""
    logger = logging.getLogger("mtl_jax")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("mtl-jax: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logging.getLogger("absl").setLevel(logging.CRITICAL)


def _fail(message: str) -> int:
    print(f"mtl-jax: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
