"""Fuzzing ``mtl-jax train`` with bad arguments (hypothesis): every case is refused.

Each case is a short, otherwise valid command with one to three bad flags drawn from
unknown names, wrong types, negative, zero, NaN and infinite hyperparameters, loss
weights of the wrong count or sign, meshes that do not fit the visible devices, and
data sets that need files which are not there. Every one must end with exit status 2,
a message on stderr, no traceback, and nothing written to ``--out``: the checks run
before any work. ``MAX_EXAMPLES`` cases are tried per run.
"""

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtl_jax import cli, ensemble
from mtl_jax.aggregators import registry
from mtl_jax.experiment import ARCHS, DATASETS, PENALTIES, TRUNKS

MAX_EXAMPLES = 250
VALID = ["train", "--trunk", "mlp", "--steps", "2", "--batch-size", "8", "--eval-every", "0",
         "--quiet", "--no-baselines"]

CHOICES = {"--arch": ARCHS, "--method": registry.METHODS, "--trunk": TRUNKS,
           "--dataset": DATASETS, "--penalty": PENALTIES, "--lowering": ensemble.LOWERINGS}
POSITIVE_INTS = ("--steps", "--batch-size", "--seeds", "--keep", "--checkpoint-every")
NON_NEGATIVE_INTS = ("--seed", "--eval-every")


def unknown_name(known):
    return st.text(string.ascii_letters + string.digits + "_", min_size=1,
                   max_size=12).filter(lambda name: name not in known)


def not_an_int():
    return st.one_of(st.sampled_from(["x", "1.5", "1e3", "", "nan", "two"]),
                     st.floats(allow_nan=False, allow_infinity=False)
                     .filter(lambda v: not float(v).is_integer()).map(repr))


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


BAD_FLAGS = st.one_of(
    *[st.tuples(st.just(flag), unknown_name(known)) for flag, known in CHOICES.items()],
    *[st.tuples(st.just(flag), st.one_of(st.integers(max_value=0).map(str), not_an_int()))
      for flag in POSITIVE_INTS],
    *[st.tuples(st.just(flag), st.one_of(st.integers(max_value=-1).map(str), not_an_int()))
      for flag in NON_NEGATIVE_INTS],
    st.tuples(st.just("--lr"), bad_float(allow_zero=False)),
    st.tuples(st.just("--penalty-weight"), st.one_of(
        st.floats(max_value=-1e-9, allow_infinity=False).map(repr),
        st.sampled_from(["nan", "inf", "x"]))),
    st.tuples(st.just("--loss-weights"), bad_loss_weights()),
    st.tuples(st.just("--mesh"), st.one_of(
        st.sampled_from(["members=64", "data=3,members=3", "members=0", "gpus=2", "members=x",
                         "members=2,members=2", "", "data"]),
        st.integers(2, 4096).map(lambda n: f"members={n},data={n}"))),
    st.tuples(st.just("--dataset"), st.sampled_from(["multimnist"])),  # needs --data-dir
    st.tuples(st.just("--data-dir"), st.just("/nonexistent/idx")).map(
        lambda pair: ("--dataset", "multifashion", *pair)),
)


# capsys is read (and so emptied) once per example
@settings(max_examples=MAX_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=st.lists(BAD_FLAGS, min_size=1, max_size=3))
def test_bad_train_arguments_are_refused_before_any_work(bad, tmp_path_factory, capsys):
    out = tmp_path_factory.mktemp("fuzz") / "run"
    argv = [*VALID, *(part for flags in bad for part in flags), "--out", str(out)]
    try:
        code = cli.main(argv)
    except SystemExit as exit:  # argparse: wrong type or unknown choice
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2, (argv, err)
    assert err.strip() and "Traceback" not in err, (argv, err)
    assert not out.exists() or not any(out.iterdir()), argv

