"""Data-parallel under torchrun: two processes (gloo, CPU) give one process's numbers to 1e-6
relative, for every probe (losses, accuracies, gradients, Hessian and GGN products, Lanczos,
Hutch++, surfaces, interpolation): numbers each to 1e-6 of themselves, vectors in norm (their
float32 sums are grouped by rank, so a coordinate that cancels keeps only ~1e-7 of the terms)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent


def _run(tmp_path, name, torchrun: bool, script: str = "dist_probe.py") -> dict:
    out = tmp_path / f"{name}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable]
    if torchrun:
        cmd += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += [str(HERE / script), str(out)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(out.read_text())


def test_two_processes_equal_one(tmp_path):
    pytest.importorskip("torch.distributed")
    one = _run(tmp_path, "one", torchrun=False)
    two = _run(tmp_path, "two", torchrun=True)
    assert one["world"] == 1 and two["world"] == 2
    _compare(one, two)


def _compare(one: dict, two: dict) -> None:
    """Every number of `two` within 1e-6 of `one`'s (flags skipped)."""
    for key in one:
        if key == "world" or isinstance(one[key], bool):
            continue
        a, b = np.asarray(one[key], float), np.asarray(two[key], float)
        if a.size > 9:  # a vector (gradient, products): relative in norm
            rel = float(np.linalg.norm(a - b) / np.linalg.norm(a))
        else:  # numbers and grids: each one relative
            rel = float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-30)))
        print(f"{key}: relative difference {rel:.1e}")
        assert rel <= 1e-6, (key, rel)


def test_model_sharded_with_fsdp2_equals_one_process(tmp_path):
    """FSDP2 (fully_shard, gloo, CPU): each rank holds its rows of the model and of every vector;
    loss, gradient, surfaces (filter-normalised, and with biases and LayerNorm moving),
    interpolation between two sharded models, Hessian products, Lanczos (basis in memory and on
    disk), Hutch++ and SLQ give one process's numbers on the whole model, and the user's
    parameters are as they were."""
    pytest.importorskip("torch.distributed.fsdp")
    one = _run(tmp_path, "one", torchrun=False, script="fsdp_probe.py")
    two = _run(tmp_path, "two", torchrun=True, script="fsdp_probe.py")
    assert one["world"] == 1 and two["world"] == 2
    assert one["model_unchanged"] and two["model_unchanged"]
    assert one["model_kept_change"] and two["model_kept_change"]
    assert two["partial_wrap_refused"]
    _compare(one, two)
