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


def _run(tmp_path, name, torchrun: bool) -> dict:
    out = tmp_path / f"{name}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable]
    if torchrun:
        cmd += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += [str(HERE / "dist_probe.py"), str(out)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(out.read_text())


def test_two_processes_equal_one(tmp_path):
    pytest.importorskip("torch.distributed")
    one = _run(tmp_path, "one", torchrun=False)
    two = _run(tmp_path, "two", torchrun=True)
    assert one["world"] == 1 and two["world"] == 2
    for key in one:
        if key == "world":
            continue
        a, b = np.asarray(one[key], float), np.asarray(two[key], float)
        if a.size > 9:  # a vector (gradient, products): relative in norm
            rel = float(np.linalg.norm(a - b) / np.linalg.norm(a))
        else:  # numbers and grids: each one relative
            rel = float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-30)))
        print(f"{key}: relative difference {rel:.1e}")
        assert rel <= 1e-6, (key, rel)
