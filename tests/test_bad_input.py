"""Fuzzing bad input (hypothesis): every case is refused, with a message naming the problem.

Three suites. Each case is a short, otherwise valid call with one to three bad parts drawn
from unknown names, wrong types, negative, zero, NaN, infinite and out-of-range numbers,
loss weights of the wrong count or sign, meshes that do not fit the visible devices,
batches larger than the data set, and data or output directories that cannot be used:

* ``mtl-jax train`` (:func:`test_bad_train_arguments_are_refused_before_any_work`);
* the Python API, ``experiment.run(Config(...), out)``
  (:func:`test_bad_configs_are_refused_before_any_work`): it must raise ``ValueError``
  or ``TypeError`` whose message names one of the bad fields (as a whole word). A bad
  value is a ``ValueError``; a wrong type (a string, float, bool or None for an int, a
  string for a float, a malformed mesh) may be either. The class is left open because
  with several bad fields the first one checked decides it; what fails is an error from
  deep inside (numpy's or Python's own ``TypeError``, an ``OverflowError``), which names
  no field;
* ``mtl-jax reproduce toy|mmoe|multifashion``
  (:func:`test_bad_reproduce_arguments_are_refused_before_any_work`).

A command must exit with status 2 and an error line naming a bad flag (or its field),
with no traceback. Nothing may be written to ``--out`` / ``out``, and no case may train:
the first real work of each entry point is replaced by a tripwire raising
:class:`WorkStarted`, so an input that validation lets through fails the test at once.
Every drawn case is bad by construction, alone and combined, so none could train.

Counting: ``python -m pytest -q tests/test_bad_input.py --hypothesis-show-statistics``
prints each suite's "N passing examples": ``TRAIN_EXAMPLES``, ``CONFIG_EXAMPLES`` and
``REPRODUCE_EXAMPLES`` cases, the same on every run (the derandomised profile of
``conftest.py``).
"""

import dataclasses
import math
import re
import string
from typing import Any, NamedTuple

import jax
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from mtl_jax import cli, ensemble, experiment
from mtl_jax.aggregators import registry
from mtl_jax.data import idx
from mtl_jax.experiment import ARCHS, DATASETS, PENALTIES, TRUNKS, Config
from mtl_jax.precision import PRECISIONS
from mtl_jax.reproduce import MAX_COUNT, MAX_SEED, mmoe, multifashion, toy

TRAIN_EXAMPLES = 250
CONFIG_EXAMPLES = 250
REPRODUCE_EXAMPLES = 300
# tmp_path_factory, capsys and the tripwires are shared by the examples of a test; no
# explain phase: on a failure it reruns the failing case some hundred times
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                phases=[phase for phase in Phase if phase is not Phase.explain])
NAN, INF = math.nan, math.inf
TRAIN_PAIRS = 10_000  # multidigits' default training set: no batch can be larger
NOT_INTEGRAL = st.builds(lambda n, f: n + f, st.integers(-10**9, 10**9), st.floats(0.001, 0.999))


class Bad(NamedTuple):
    """One bad part of a case: argv words (or Config fields) and the words its error names."""

    part: Any
    names: tuple[str, ...]


class WorkStarted(Exception):
    """A tripwire: a bad input got past validation into real work."""


@pytest.fixture
def tripwires(monkeypatch):
    """Replace the first real work of every entry point by :class:`WorkStarted`."""
    def trip(*args, **kwargs):
        raise WorkStarted("validation let this input through: work started")

    monkeypatch.setattr(ensemble, "init", trip)  # experiment.run: every check is before it
    monkeypatch.setattr(toy, "pareto_front", trip)  # toy.benchmark's first work
    monkeypatch.setattr(mmoe, "member_inputs", trip)  # mmoe.benchmark's first work
    monkeypatch.setattr(multifashion, "run", trip)  # after every config is validated


def names_any(bad: list[Bad]) -> str:
    """A regex matching any name of ``bad`` as a whole word (``seed`` is not in ``seeds``)."""
    return "|".join(rf"(?<!\w){re.escape(word)}(?!\w)" for b in bad for word in b.names)


def flag_words(flag: str, *also: str) -> tuple[str, ...]:
    """What an error about ``--some-flag`` names: the flag or its field ``some_flag``."""
    name = flag.lstrip("-")
    return (name, name.replace("-", "_"), *also)


def bad_flag(flag: str, values, *also: str):
    return st.builds(Bad, st.tuples(st.just(flag), values), st.just(flag_words(flag, *also)))


def unknown_name(known):
    return st.text(string.ascii_letters + string.digits + "_", min_size=1,
                   max_size=12).filter(lambda name: name not in known)


def not_an_int():
    return st.one_of(st.sampled_from(["x", "1.5", "1e3", "", "nan", "two"]),
                     NOT_INTEGRAL.map(repr))


def bad_int(low: int, high: int = MAX_COUNT):
    """An integer flag's value outside ``[low, high]``, or not an integer."""
    return st.one_of(st.integers(max_value=low - 1).map(str),
                     st.integers(min_value=high + 1, max_value=2**80).map(str), not_an_int())


def bad_float(allow_zero: bool):
    bad = st.floats(max_value=0.0, exclude_max=allow_zero, allow_nan=False,
                    allow_infinity=False)
    return st.one_of(bad.map(repr), st.sampled_from(["nan", "inf", "-inf", "x", "1e"]))


def bad_loss_weights():
    numbers = st.floats(0.0, 10.0).map(lambda w: f"{w:g}")
    return st.one_of(
        st.lists(numbers, min_size=1, max_size=5).filter(lambda ws: len(ws) != 2),
        st.tuples(numbers, st.sampled_from(["-1", "nan", "inf", "a"])).map(list),
    ).map(",".join)


def bad_names(known):
    """A ``--methods`` / ``--models`` list with an unknown name, or with no name."""
    return st.one_of(unknown_name(known),
                     st.tuples(st.sampled_from(sorted(known)), unknown_name(known)).map(",".join),
                     st.sampled_from([",", " , ", ""]))


def assert_refused(argv: list[str], capsys, bad: list[Bad]) -> None:
    """``cli.main(argv)`` exits 2 with an error naming a part of ``bad``, no traceback."""
    try:
        code = cli.main(argv)
    except SystemExit as exit:  # argparse: wrong type or unknown choice
        code = exit.code
    err = capsys.readouterr().err  # read, and so emptied, once per example
    assert code == 2, (argv, err)
    assert err.strip() and "Traceback" not in err, (argv, err)
    message = err.strip().splitlines()[-1]  # argparse prints its usage lines first
    assert "error:" in message, (argv, err)
    assert re.search(names_any(bad), message.partition("error:")[2]), (argv, message)


def snapshot(path):
    """What is at ``path``: None, a file's bytes, or a directory's ``{name: bytes}``."""
    if path.is_dir():
        return {str(p.relative_to(path)): p.is_file() and p.read_bytes() for p in path.rglob("*")}
    return path.read_bytes() if path.exists() else None


# --- mtl-jax train -------------------------------------------------------------------------

VALID = ["train", "--trunk", "mlp", "--steps", "2", "--batch-size", "8", "--eval-every", "0",
         "--quiet", "--no-baselines"]

CHOICES = {"--arch": ARCHS, "--method": registry.METHODS, "--trunk": TRUNKS,
           "--dataset": DATASETS, "--penalty": PENALTIES, "--lowering": ensemble.LOWERINGS,
           "--precision": PRECISIONS}
POSITIVE_INTS = ("--steps", "--batch-size", "--seeds", "--keep", "--checkpoint-every",
                 "--chunk-size")
NON_NEGATIVE_INTS = ("--seed", "--eval-every")

BAD_TRAIN_FLAGS = st.one_of(
    *[bad_flag(flag, unknown_name(known)) for flag, known in CHOICES.items()],
    *[bad_flag(flag, st.one_of(st.integers(max_value=0).map(str), not_an_int()))
      for flag in POSITIVE_INTS],
    *[bad_flag(flag, st.one_of(st.integers(max_value=-1).map(str), not_an_int()))
      for flag in NON_NEGATIVE_INTS],
    bad_flag("--seed", st.integers(MAX_SEED + 1, 2**80).map(str)),  # jax.random.key: int64
    bad_flag("--steps", st.integers(MAX_COUNT + 1, 2**80).map(str)),  # an int32 step counter
    bad_flag("--batch-size", st.integers(TRAIN_PAIRS + 1, 10**12).map(str), "num_train"),
    bad_flag("--lr", bad_float(allow_zero=False), "learning_rate"),
    bad_flag("--penalty-weight", st.one_of(
        st.floats(max_value=-1e-9, allow_infinity=False).map(repr),
        st.sampled_from(["nan", "inf", "x"]))),
    bad_flag("--loss-weights", bad_loss_weights()),
    bad_flag("--mesh", st.one_of(
        st.sampled_from(["members=64", "data=3,members=3", "members=0", "gpus=2", "members=x",
                         "members=2,members=2", "", "data"]),
        st.integers(2, 4096).map(lambda n: f"members={n},data={n}"))),
    st.just(Bad(("--dataset", "multimnist"), ("data-dir", "data_dir"))),  # needs --data-dir
    st.just(Bad(("--dataset", "multifashion", "--data-dir", "/nonexistent/idx"),
                ("data-dir", "data_dir"))),
)


@settings(FUZZ, max_examples=TRAIN_EXAMPLES)
@given(bad=st.lists(BAD_TRAIN_FLAGS, min_size=1, max_size=3))
def test_bad_train_arguments_are_refused_before_any_work(bad, tmp_path_factory, capsys,
                                                         tripwires):
    out = tmp_path_factory.mktemp("fuzz") / "run"
    argv = [*VALID, *(word for b in bad for word in b.part), "--out", str(out)]
    assert_refused(argv, capsys, bad)
    assert snapshot(out) in (None, {}), argv


# --- the Python API: experiment.run(Config(...)) -------------------------------------------

BASE = {"trunk": "mlp", "steps": 2, "batch_size": 8, "eval_every": 0, "baselines": False}
FIELDS = {field.name for field in dataclasses.fields(Config)}
CHOICE_FIELDS = {"dataset": DATASETS, "arch": ARCHS, "trunk": TRUNKS, "penalty": PENALTIES,
                 "method": registry.METHODS, "lowering": ensemble.LOWERINGS,
                 "precision": PRECISIONS}
POSITIVE_FIELDS = ("steps", "batch_size", "seeds", "checkpoint_every", "keep", "num_train",
                   "num_test", "chunk_size")
OPTIONAL_FIELDS = ("num_train", "num_test", "chunk_size")  # None: a default
NON_NEGATIVE_FIELDS = ("seed", "eval_every")

WRONG_INT = st.one_of(
    st.sampled_from(["5", "x", "", True, False, 2.0, NAN, INF, -INF, [1], (1,), 1j]),
    NOT_INTEGRAL,
    st.integers(1, 100).map(str))
WRONG_FLOAT = st.sampled_from(["0.1", "x", "", None, True, False, [0.1], (0.1,), 1j])


def bad_field(name: str, values, *also: str):
    return st.builds(Bad, st.fixed_dictionaries({name: values}), st.just((name, *also)))


def bad_fields(names: tuple[str, ...], **fields):
    """A bad case setting several fields (one is bad because of the others)."""
    return st.builds(Bad, st.fixed_dictionaries(fields), st.just(names))


def bad_mesh():
    count = jax.device_count()
    sizes = st.integers(1, 64)
    return st.one_of(
        st.tuples(sizes, sizes).filter(lambda mesh: mesh[0] * mesh[1] != count),
        st.tuples(st.integers(max_value=0), sizes),
        st.tuples(sizes, st.integers(max_value=0)),
        st.sampled_from([(), (1,), (count,), (1, 1, 1), (count, 1, 1), "members=1", count,
                         (1.0, float(count)), ("1", str(count)), (True, True)]))


def bad_weights():
    weight = st.floats(0.0, 10.0)
    bad = st.sampled_from([-1.0, -1e-9, NAN, INF, -INF])
    return st.one_of(
        st.lists(weight, max_size=5).filter(lambda ws: len(ws) != 2).map(tuple),  # 2 tasks
        st.tuples(weight, bad), st.tuples(bad, weight),
        st.sampled_from(["1,2", "ab", 1.0, 2, ("a", "b"), (None, 1.0), (1.0, "1")]))


CONFIG_CASES = st.one_of(
    st.text(string.ascii_lowercase + "_", min_size=1, max_size=12)
    .filter(lambda name: name not in FIELDS).map(lambda name: Bad({name: 1}, (name,))),
    *[bad_field(name, st.one_of(unknown_name(known), st.sampled_from([None, 0, 1.5, ["x"]])))
      for name, known in CHOICE_FIELDS.items()],
    bad_field("arch", st.just("mtan"), "trunk"),  # attends over conv feature maps
    *[bad_field(name, st.one_of(st.integers(max_value=0), WRONG_INT,
                                st.nothing() if name in OPTIONAL_FIELDS else st.none()))
      for name in POSITIVE_FIELDS],
    *[bad_field(name, st.one_of(st.integers(max_value=-1), st.none(), WRONG_INT))
      for name in NON_NEGATIVE_FIELDS],
    bad_field("seed", st.integers(MAX_SEED + 1, 2**100)),  # jax.random.key takes an int64
    bad_field("steps", st.integers(MAX_COUNT + 1, 2**100)),  # the step counter is an int32
    # a batch larger than the training set: multidigits' default one, or num_train < 8
    bad_field("batch_size", st.integers(TRAIN_PAIRS + 1, 10**12), "num_train"),
    bad_field("num_train", st.integers(1, BASE["batch_size"] - 1), "batch_size"),
    bad_field("learning_rate", st.one_of(st.floats(max_value=0.0), st.just(NAN),
                                         st.just(INF), WRONG_FLOAT)),
    bad_field("penalty_weight", st.one_of(st.floats(max_value=0.0, exclude_max=True),
                                          st.sampled_from([NAN, INF]), WRONG_FLOAT)),
    bad_field("baselines", st.sampled_from(["no", "yes", "", "False", None, 0.5, 2, [True]])),
    bad_field("data_dir", st.one_of(st.text(max_size=8), st.sampled_from([3, ["x"]]))),
    bad_fields(("data_dir",), data_dir=st.sampled_from(["/nonexistent/fashion", 3, ["x"]]),
               dataset=st.just("multifashion")),
    bad_fields(("data_dir",), dataset=st.just("multimnist")),  # no default directory
    bad_field("loss_weights", bad_weights()),
    bad_field("mesh", st.deferred(bad_mesh)),  # counts the devices when first drawn
)


@settings(FUZZ, max_examples=CONFIG_EXAMPLES)
@given(cases=st.lists(CONFIG_CASES, min_size=1, max_size=3))
def test_bad_configs_are_refused_before_any_work(cases, tmp_path_factory, tripwires):
    # one case per first field (a later one would hide an earlier one); where a second field
    # is shared (dataset), either value keeps the config bad and its error named
    cases = list({next(iter(case.part)): case for case in cases}.values())
    fields = {key: value for case in cases for key, value in case.part.items()}
    out = tmp_path_factory.mktemp("config") / "run"
    with pytest.raises((ValueError, TypeError)) as error:
        experiment.run(Config(**{**BASE, **fields}), out, progress=False)
    assert re.search(names_any(cases), str(error.value)), (fields, repr(error.value))
    assert snapshot(out) in (None, {}), fields


# --- mtl-jax reproduce toy | mmoe | multifashion -------------------------------------------

OUT_FILE, OUT_FULL = "<an existing file>", "<a non-empty directory>"
BAD_OUT = bad_flag("--out", st.sampled_from([OUT_FILE, OUT_FULL]), "not empty", "not a directory")

REPRODUCE = {
    "toy": (["--methods", "ew", "--steps", "2"], st.one_of(
        bad_flag("--setting", unknown_name(toy.SETTINGS)),
        bad_flag("--methods", bad_names(toy.METHODS), "method"),
        bad_flag("--methods", st.sampled_from(["mgda_ub", "fixed"]), "method"),  # not here
        bad_flag("--steps", bad_int(1)),
        BAD_OUT)),
    "mmoe": (["--models", "mmoe", "--runs", "1", "--steps", "2", "--batch-size", "4"], st.one_of(
        bad_flag("--models", bad_names(mmoe.MODELS), "model"),
        *[bad_flag(flag, bad_int(1)) for flag in ("--runs", "--steps", "--sweep-runs",
                                                   "--batch-size")],
        bad_flag("--sequential", bad_int(0)),
        bad_flag("--seed", bad_int(0, MAX_SEED)),
        bad_flag("--lr", bad_float(allow_zero=False), "learning_rate"),
        st.builds(Bad, st.tuples(st.just("--p"), st.one_of(
            st.floats().filter(lambda p: not -1 <= p <= 1).map(repr),
            st.sampled_from(["x", "", ",", "0.5,", "0.5,0.5", "1,1.0", "0.9,nan"]))),
            st.just(("--p", "correlation", "correlations"))),
        BAD_OUT)),
    "multifashion": (["--reduced", "--methods", "ew", "--seeds", "1", "--steps", "2",
                      "--batch-size", "8", "--train-pairs", "16", "--test-pairs", "8"],
                     st.one_of(
        bad_flag("--methods", bad_names(registry.METHODS), "method"),
        *[bad_flag(flag, bad_int(1)) for flag in ("--seeds", "--steps")],
        bad_flag("--batch-size", bad_int(1), "train-pairs"),
        bad_flag("--train-pairs", bad_int(1), "num_train", "batch_size"),
        bad_flag("--test-pairs", bad_int(1), "num_test"),
        bad_flag("--seed", bad_int(0, MAX_SEED)),
        bad_flag("--batch-size", st.integers(17, MAX_COUNT).map(str), "num_train"),  # > 16
        bad_flag("--train-pairs", st.integers(1, 7).map(str), "num_train", "batch_size"),
        bad_flag("--lr", bad_float(allow_zero=False), "learning_rate"),
        bad_flag("--data-dir", st.sampled_from(["/nonexistent/fashion", "."])),
        BAD_OUT)),
}


@pytest.fixture(scope="module")
def fake_fashion(tmp_path_factory):
    """A directory with Fashion-MNIST's file names (empty: validation only looks at names)."""
    directory = tmp_path_factory.mktemp("fake-fashion")
    for stem in (stem for split in idx.FILES.values() for stem in split):
        (directory / stem).touch()
    return directory


@settings(FUZZ, max_examples=REPRODUCE_EXAMPLES)
@given(bad=st.sampled_from(sorted(REPRODUCE)).flatmap(
    lambda name: st.tuples(st.just(name), st.lists(REPRODUCE[name][1], min_size=1, max_size=3))))
def test_bad_reproduce_arguments_are_refused_before_any_work(bad, tmp_path_factory, capsys,
                                                             tripwires, fake_fashion):
    benchmark, flags = bad
    event(f"reproduce {benchmark}")  # --hypothesis-show-statistics: the share of each
    out = tmp_path_factory.mktemp("reproduce") / "out"
    argv = ["reproduce", benchmark, *REPRODUCE[benchmark][0], "--out", str(out)]
    if benchmark == "multifashion":  # files found whether or not the real data is installed
        argv[2:2] = ["--data-dir", str(fake_fashion)]
    for (flag, value), _ in flags:
        if value not in (OUT_FILE, OUT_FULL):
            argv += [flag, value]
        elif not out.exists():  # the first of them
            target = out / "keep" if value == OUT_FULL else out
            target.parent.mkdir(exist_ok=True)
            target.write_text("keep me")
    before = snapshot(out)
    assert_refused(argv, capsys, flags)
    assert snapshot(out) == before, argv
