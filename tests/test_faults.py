"""Fault injection on a real training process (a CI-sized ``benchmarks/faults.py``).

Ten SIGKILLs at random moments (a third of them while a checkpoint is being
written), a SIGTERM, a SIGINT and a full filesystem interrupt one run of
``mtl-jax train``; each time it is resumed. Its final parameters, optimizer state,
results and log must equal an uninterrupted run's bit for bit, and each graceful
stop must say what it did.
"""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import faults  # noqa: E402


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    return faults.campaign(tmp_path_factory.mktemp("faults"), kills=10, seed=0)


def test_interrupted_run_ends_bit_identical_to_the_uninterrupted_one(campaign):
    events, found = campaign
    assert len(events) == 13
    assert found == []


def test_every_interruption_stopped_where_it_says(campaign):
    events, _ = campaign
    for event in events:
        if event.kind.startswith("kill"):
            assert event.returncode == -9
        elif event.kind in ("SIGTERM", "SIGINT"):
            assert event.returncode == {"SIGTERM": 143, "SIGINT": 130}[event.kind]
            assert event.message == (
                f"mtl-jax: stopped by {event.kind} after step {event.step_after}; checkpoint "
                f"saved in {event.message.split('saved in ')[1].split(';')[0]}; run the same "
                "command with --resume to continue exactly")
            assert event.step_after > event.step_before
            assert not event.half_written
        else:  # the full disk: no step could be saved, the complete ones are intact
            assert event.returncode == 2
            assert event.message.startswith(
                f"mtl-jax: error: could not write the checkpoint of step {event.step_before + 4}")
            assert "File too large" in event.message
            assert event.message.endswith(f"(latest: step {event.step_before})")
            assert event.step_after == event.step_before


def test_some_kills_hit_a_save_and_the_resume_never_loads_it(campaign):
    events, found = campaign
    assert sum(e.half_written for e in events if e.kind == "kill-during-save") >= 2
    assert found == []  # every resume that met a half-written checkpoint continued exactly
