"""Tests of mtl_jax.metrics: Δm%, mean ± std, mean rank and markdown tables."""

import numpy as np
import pytest

from mtl_jax.metrics import delta_m, markdown_table, mean_rank, mean_std

DIRECTIONS = {"left": {"accuracy": True}, "depth": {"mae": False, "rmse": False}}
BASELINE = {"left": {"accuracy": 0.8, "loss": 0.5}, "depth": {"mae": 2.0, "rmse": 4.0, "loss": 1.0}}


def test_delta_m_closed_form_with_mixed_directions():
    results = {"left": {"accuracy": 0.88, "loss": 9.0}, "depth": {"mae": 2.5, "rmse": 3.0}}
    # accuracy +10% (better, counts -10), mae +25% (worse, +25), rmse -25% (better, -25)
    expected = (-10.0 + 25.0 - 25.0) / 3
    assert delta_m(results, BASELINE, DIRECTIONS) == pytest.approx(expected)
    assert delta_m(BASELINE, BASELINE, DIRECTIONS) == 0.0


def test_delta_m_is_negative_when_every_metric_improves():
    better = {"left": {"accuracy": 0.9}, "depth": {"mae": 1.5, "rmse": 3.5}}
    worse = {"left": {"accuracy": 0.7}, "depth": {"mae": 2.5, "rmse": 4.5}}
    assert delta_m(better, BASELINE, DIRECTIONS) < 0 < delta_m(worse, BASELINE, DIRECTIONS)


def test_delta_m_uses_only_the_metrics_in_directions():
    results = {"left": {"accuracy": 0.6, "loss": 100.0}}
    assert delta_m(results, BASELINE, {"left": {"accuracy": True}}) == pytest.approx(25.0)


def test_delta_m_errors():
    with pytest.raises(KeyError, match=r"results.*'depth'.*'rmse'"):
        delta_m({"left": {"accuracy": 0.9}, "depth": {"mae": 1.0}}, BASELINE, DIRECTIONS)
    with pytest.raises(KeyError, match=r"baselines.*'left'.*'accuracy'"):
        delta_m(BASELINE, {"depth": BASELINE["depth"]}, DIRECTIONS)
    with pytest.raises(ValueError, match=r"'depth'.*'mae'.*zero"):
        delta_m(BASELINE, {**BASELINE, "depth": {"mae": 0.0, "rmse": 1.0}}, DIRECTIONS)
    with pytest.raises(ValueError, match="no task metric"):
        delta_m(BASELINE, BASELINE, {})


def test_mean_std_matches_numpy():
    rng = np.random.default_rng(0)
    values = rng.uniform(size=(5, 3))
    runs = [{"left": {"accuracy": v[0], "loss": v[1]}, "depth": {"mae": v[2]}} for v in values]
    summary = mean_std(runs)
    assert set(summary["left"]) == {"accuracy"}  # "loss" left out by default
    assert summary["left"]["accuracy"] == pytest.approx((values[:, 0].mean(), values[:, 0].std()))
    assert summary["depth"]["mae"] == pytest.approx((values[:, 2].mean(),
                                                     values[:, 2].std(ddof=0)))
    with_loss = mean_std(runs, include_loss=True)
    assert with_loss["left"]["loss"] == pytest.approx((values[:, 1].mean(), values[:, 1].std()))
    assert mean_std(runs[:1])["depth"]["mae"] == (values[0, 2], 0.0)


def test_mean_std_errors():
    with pytest.raises(ValueError):
        mean_std([])
    with pytest.raises(KeyError, match=r"run 1.*'left'.*'accuracy'"):
        mean_std([{"left": {"accuracy": 0.5}}, {"left": {"f1": 0.5}}])


def test_mean_rank_with_ties():
    scores = {
        "a": {"left": {"accuracy": 0.9}, "depth": {"mae": 1.0, "rmse": 2.0}},
        "b": {"left": {"accuracy": 0.9}, "depth": {"mae": 1.0, "rmse": 3.0}},
        "c": {"left": {"accuracy": 0.7}, "depth": {"mae": 1.0, "rmse": 1.0}},
    }
    # accuracy: a, b tie for 1-2 -> 1.5, c 3; mae: three-way tie -> 2; rmse: c 1, a 2, b 3.
    ranks = mean_rank(scores, DIRECTIONS)
    assert ranks == pytest.approx({"a": (1.5 + 2 + 2) / 3, "b": (1.5 + 2 + 3) / 3,
                                   "c": (3 + 2 + 1) / 3})
    assert sum(ranks.values()) == pytest.approx(3 * 2)  # ranks average to (M + 1) / 2


def test_mean_rank_accepts_mean_std_pairs_and_checks_inputs():
    scores = {"a": {"left": {"accuracy": (0.8, 0.1)}}, "b": {"left": {"accuracy": (0.9, 0.3)}}}
    assert mean_rank(scores, {"left": {"accuracy": True}}) == {"a": 2.0, "b": 1.0}
    with pytest.raises(KeyError, match=r"'b'.*'left'.*'accuracy'"):
        mean_rank({"a": scores["a"], "b": {}}, {"left": {"accuracy": True}})
    with pytest.raises(ValueError):
        mean_rank({}, {"left": {"accuracy": True}})


def test_markdown_table():
    rows = {"single-task": {"left": {"accuracy": 91.234}, "depth": {"mae": 0.5, "rmse": 0.75}},
            "famo": {"left": {"accuracy": (92.0, 0.456)}, "depth": {"mae": (0.4, 0.01)}}}
    table = markdown_table(rows, DIRECTIONS, delta={"single-task": None, "famo": (-3.21, 0.5)})
    lines = table.splitlines()
    assert lines[0] == ("| Method | left accuracy ↑ | depth mae ↓ | depth rmse ↓ | Δm% ↓ |")
    assert lines[1] == "| --- | ---: | ---: | ---: | ---: |"
    assert lines[2] == "| single-task | 91.23 | 0.50 | 0.75 | — |"
    assert lines[3] == "| famo | 92.00 ± 0.46 | 0.40 ± 0.01 | — | -3.21 ± 0.50 |"
    assert len(lines) == 4


def test_markdown_table_options_and_errors():
    rows = {"a|b": {"left": {"accuracy": 0.12345}}}
    table = markdown_table(rows, {"left": {"accuracy": True}}, digits=3)
    assert "Δm%" not in table and r"| a\|b | 0.123 |" in table
    with pytest.raises(KeyError, match="'ghost'"):
        markdown_table(rows, {"left": {"accuracy": True}}, delta={"ghost": 1.0})
    with pytest.raises(ValueError):
        markdown_table(rows, {})
