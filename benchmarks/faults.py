"""Fault injection: interrupt a real ``mtl-jax train`` many times, resume, compare bit for bit.

One run is trained without interruption. A second run of the same command is
interrupted again and again, each time resumed with ``--resume``:

- ``SIGKILL`` at a random moment after the run has made progress, or the moment
  a checkpoint is being written (a half-written ``*.orbax-checkpoint-tmp``
  folder on disk);
- ``SIGTERM`` and ``SIGINT`` (preemption, Ctrl-C): the process must finish its
  step, save it, and exit with 143 / 130 and a message naming the step;
- a full filesystem (``ulimit -f``, RLIMIT_FSIZE: every write past a few hundred kB fails,
  as on a full disk): the process must stop with a clear error naming the
  checkpoint it could not write, leaving the complete ones intact.

At the end the interrupted run's final checkpoint, results and training log
must equal the uninterrupted run's exactly. Run it on its own to write the
figures of ``benchmarks/results/faults.md``::

    python benchmarks/faults.py --kills 40

``tests/test_faults.py`` runs a CI-sized version (12 interruptions).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from mtl_jax.checkpoint import HALF_WRITTEN, read_latest

COMMAND = [sys.executable, "-m", "mtl_jax.cli", "train", "--trunk", "mlp", "--steps", "400",
           "--batch-size", "16", "--checkpoint-every", "4", "--keep", "2", "--eval-every", "100",
           "--quiet"]
FILE_SIZE_LIMIT = 200 * 1024  # bytes: a checkpoint of the default run's state is ~1 MB
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


@dataclasses.dataclass
class Interruption:
    kind: str  # "kill", "kill-during-save", "SIGTERM", "SIGINT", "disk-full"
    step_before: int  # latest complete checkpoint when the process started
    step_after: int  # latest complete checkpoint after it stopped
    half_written: bool  # a half-written checkpoint was on disk after it stopped
    returncode: int
    message: str  # the last line mtl-jax printed on stderr


def latest_complete(run_dir: pathlib.Path) -> int:
    """The step of the run's newest complete checkpoint (0: none yet)."""
    ckpts = run_dir / "checkpoints"
    steps = [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.exists() else []
    return max(steps, default=0)


def half_written(run_dir: pathlib.Path) -> bool:
    ckpts = run_dir / "checkpoints"
    return ckpts.exists() and any(HALF_WRITTEN in p.name for p in ckpts.iterdir())


def start(run_dir: pathlib.Path, *, full_disk: bool = False) -> subprocess.Popen:
    resume = ["--resume"] if (run_dir / "checkpoints" / "config.json").exists() else []
    command = [*COMMAND, "--out", str(run_dir), *resume]
    if full_disk:  # bash sets the limit (no preexec_fn: forking a threaded process is unsafe);
        # an ignored SIGXFSZ survives exec, so writes past the limit fail with EFBIG
        command = ["bash", "-c", f"trap '' XFSZ; ulimit -f {FILE_SIZE_LIMIT // 1024}; "
                   'exec "$@"', "bash", *command]
    return subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> bool:
    """Poll ``condition`` until it holds (True) or the process ends (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    raise TimeoutError("the training process made no progress")


def interrupt(run_dir: pathlib.Path, kind: str, rng: np.random.Generator) -> Interruption:
    """Start (or resume) the run and interrupt it once in the way ``kind`` names."""
    before = latest_complete(run_dir)
    proc = start(run_dir, full_disk=kind == "disk-full")
    if kind != "disk-full":
        progressed = _wait_for(lambda: latest_complete(run_dir) > before, proc)
        if progressed and kind == "kill-during-save":
            progressed = _wait_for(lambda: half_written(run_dir), proc)
        elif progressed:
            time.sleep(rng.uniform(0.0, 0.3))
        if progressed and proc.poll() is None:
            proc.send_signal({"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}.get(
                kind, signal.SIGKILL))
    _, stderr = proc.communicate(timeout=120)
    # its own last line: after a failed save, tensorstore's threads may still print
    # their traceback below it
    ours = [line for line in stderr.splitlines() if line.startswith("mtl-jax:")]
    return Interruption(kind, before, latest_complete(run_dir),
                        half_written(run_dir), proc.returncode, ours[-1] if ours else "")


def schedule(kills: int, rng: np.random.Generator) -> list[str]:
    """``kills`` SIGKILLs, a third of them aimed at saves, plus SIGTERM, SIGINT, full disk."""
    kinds = ["kill-during-save" if i % 3 == 2 else "kill" for i in range(kills)]
    kinds += ["SIGTERM", "SIGINT", "disk-full"]
    return [kinds[i] for i in rng.permutation(len(kinds))]


def final_state(run_dir: pathlib.Path):
    """The step and raw arrays of the run's latest checkpoint (no template: what is on disk)."""
    step, state = read_latest(run_dir / "checkpoints")
    return step, [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(state)]


def differences(whole: pathlib.Path, interrupted: pathlib.Path) -> list[str]:
    """What differs between the two runs' final checkpoints, results and logs (empty: none)."""
    found = []
    step_a, leaves_a = final_state(whole)
    step_b, leaves_b = final_state(interrupted)
    if step_a != step_b:
        found.append(f"final step {step_a} vs {step_b}")
    if len(leaves_a) != len(leaves_b) or any(
            a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes()
            for a, b in zip(leaves_a, leaves_b)):
        found.append("final parameters or optimizer state differ")
    for name in ("results.json", "metrics.jsonl"):
        if (whole / name).read_text() != (interrupted / name).read_text():
            found.append(f"{name} differs")
    return found


def campaign(workdir: pathlib.Path, kills: int, seed: int = 0) -> tuple[list[Interruption], list]:
    """The uninterrupted run and the interrupted one; returns the interruptions and differences."""
    rng = np.random.default_rng(seed)
    whole, interrupted = workdir / "whole", workdir / "interrupted"
    reference = start(whole)
    events = [interrupt(interrupted, kind, rng) for kind in schedule(kills, rng)]
    finish = start(interrupted)  # resumes it to the end
    errors = [proc.communicate()[1] for proc in (reference, finish)]
    if reference.returncode or finish.returncode:
        raise RuntimeError(f"a run failed: {errors[0][-2000:]}{errors[1][-2000:]}")
    return events, differences(whole, interrupted)


def write_results(events: list[Interruption], found: list[str], seconds: float,
                  out: pathlib.Path) -> None:
    kinds = {k: sum(e.kind == k for e in events) for k in dict.fromkeys(e.kind for e in events)}
    during_save = sum(e.half_written for e in events)
    rows = "\n".join(f"| {i} | {e.kind} | {e.step_before} | {e.step_after} | "
                     f"{'yes' if e.half_written else 'no'} | {e.returncode} | "
                     f"{e.message[:110].replace('|', '/')} |"
                     for i, e in enumerate(events, 1))
    out.with_suffix(".json").write_text(json.dumps(
        {"interruptions": [dataclasses.asdict(e) for e in events], "differences": found,
         "seconds": seconds}, indent=1))
    out.with_suffix(".md").write_text(f"""# Fault injection

`python benchmarks/faults.py --kills {kinds.get('kill', 0) + kinds.get('kill-during-save', 0)}`
on {platform.machine()} ({os.cpu_count()} cores), {platform.python_version()}, {seconds:.0f} s.
The run is `{' '.join(COMMAND[2:])}`; the same run trained without interruption
is the reference.

- Interruptions survived: **{len(events)}** ({', '.join(f'{v} {k}' for k, v in kinds.items())}).
- Processes stopped while a checkpoint was half-written on disk: **{during_save}**; each
  resume removed it, said so, and continued from the previous complete checkpoint.
- Differences from the uninterrupted run (final parameters and optimizer state bit for
  bit, `results.json`, the whole `metrics.jsonl` log): **{'; '.join(found) or 'none'}**.
- Data lost: **none** (every resume started from a complete checkpoint; the log was cut
  back to it and written again identically).

| # | interruption | saved before | saved after | half-written | exit | its last message |
| ---: | --- | ---: | ---: | --- | ---: | --- |
{rows}
""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=40, help="number of SIGKILLs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/mtl-jax-faults")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "faults"))
    args = parser.parse_args()
    workdir = pathlib.Path(args.workdir)
    if workdir.exists() and any(workdir.iterdir()):
        sys.exit(f"--workdir {workdir} is not empty")
    workdir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    events, found = campaign(workdir, args.kills, args.seed)
    write_results(events, found, time.monotonic() - began, pathlib.Path(args.out))
    print(pathlib.Path(args.out).with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
