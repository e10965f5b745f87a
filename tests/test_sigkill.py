"""SIGKILL part-way, then run the same command again: the result equals an uninterrupted run,
bit for bit (arrays, numbers, checkpoints, PNG figures), and no temporary file is left.

The kill lands while the N-th file is being written (tests/faults.py), at points chosen from
the uninterrupted run's own sequence of writes: inside the grid, the trainings, the stored
trials, the figures and the very last write. benchmarks/sigkill_matrix.py kills at every write.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs_fashion
from faults import run_state, write_sequence
from lossprobe.results import atomic
from lossprobe.cli import main
from lossprobe.models import build
from lossprobe.training.checkpoints import save_checkpoint

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

HERE = Path(__file__).parent
M = ["--model", "mlp:2-8-2", "--data", "spiral:test"]
SPACE = """
[train]
epochs = 2
[params]
lr = { type = "float", low = 3e-3, high = 0.1, log = true }
width = { type = "int", low = 4, high = 16, log = true }
depth = 1
"""
TINY_TWO_SEEDS = """
train_subset = 300
eval_subset = 100
alphas = 5
surface_steps = 3
surface_subset = 50
"""


def killed_then_resumed(argv: list[str], out: Path, kill_at: int) -> dict:
    """Run argv in a process that SIGKILLs itself at write `kill_at`, then rerun it here; the run's state."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LOSSPROBE_FAULT_KILL_AT": str(kill_at)}
    p = subprocess.run([sys.executable, str(HERE / "faults.py"), *argv], env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == -9, (kill_at, p.returncode, p.stderr[-2000:])
    _fresh_process_state()
    assert main(argv) == 0
    assert not [q for q in out.rglob("*") if atomic.is_temp(q.name)]
    return run_state(out)


def _fresh_process_state() -> None:
    """A search opens its sealed test split once per process; each run here stands for a new process."""
    from lossprobe.search import engine

    engine._TASKS.clear()


def pick(seq: list[str], *names: str) -> list[int]:
    """1-based write numbers of the first write whose path contains each name, and of the last write."""
    picks = []
    for n in names:
        picks.append(next(i for i, p in enumerate(seq, 1) if n in p))
    return sorted(set(picks + [len(seq)]))


def test_surface_killed_anywhere_resumes_to_the_same_result(tmp_path):
    ckpt = tmp_path / "a.safetensors"
    save_checkpoint(build("mlp:2-8-2", seed=0), ckpt)
    args = ["surface", str(ckpt), *M, "--steps", "5", "--out"]
    ref = tmp_path / "ref"
    seq = write_sequence(lambda: main([*args, str(ref)]), ref)
    want = run_state(ref)
    for k in pick(seq, "config.json", "chunk_000002.npz"):  # before any work, in the grid, the last write
        out = tmp_path / f"k{k}"
        assert killed_then_resumed([*args, str(out)], out, k) == want, (k, seq[k - 1])


def test_search_killed_anywhere_resumes_to_the_same_result(tmp_path):
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    args = ["search", "--space", str(space), "--dataset", "spiral", "--method", "probe", "--budget", "6", "--init-probes", "3",
            "--probes-per-round", "1", "--init-full", "1", "--fraction", "0.5", "--probe-epochs", "1", "--meta", "rf",
            "--out"]
    ref = tmp_path / "ref"
    seq = write_sequence(lambda: main([*args, str(ref)]), ref)
    want = run_state(ref)
    # mid-search (a trained candidate not yet stored as a trial), after the test result was recorded,
    # and while a training writes its final model copy (its last epoch already recorded as done)
    last_copy = max(i for i, p in enumerate(seq, 1) if p.startswith("checkpoints/training/")
                    and p.endswith("/model.safetensors"))
    for k in pick(seq, "checkpoints/candidate-", "chosen.json")[:2] + [last_copy]:
        out = tmp_path / f"k{k}"
        got = killed_then_resumed([*args, str(out)], out, k)
        assert got == want, (k, seq[k - 1])


@needs_fashion
def test_two_seed_study_killed_in_each_stage_resumes_to_the_same_result(tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_TWO_SEEDS)
    args = ["study", "two-seeds", "--quick", "--config", str(cfg), "--no-site", "--out"]
    ref = tmp_path / "ref"
    seq = write_sequence(lambda: main([*args, str(ref)]), ref)
    want = run_state(ref)
    # in the training of the second network: the resumed run finishes it and computes every later stage
    # (benchmarks/sigkill_matrix.py kills the study in every stage)
    for k in [pick(seq, "seed1/history.json")[0]]:
        out = tmp_path / f"k{k}"
        assert killed_then_resumed([*args, str(out)], out, k) == want, (k, seq[k - 1])
