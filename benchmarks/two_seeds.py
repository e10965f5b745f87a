"""Benchmark: the default two-seed study end to end, against its 5-minute limit.

Workload: `lossprobe study two-seeds` with default settings — two MLPs 784-256-256-10
trained 12 epochs with Adam on 50k Fashion-MNIST images (validation 10k), evaluation on
the whole train split every epoch, interpolation at 41 points on all 50k train and 10k
test images, figures and report. Prints one JSON line.

Usage: python benchmarks/two_seeds.py [--out DIR]
"""

import argparse
import json
import os
import shutil
import tempfile
import time

import torch

from lossprobe.studies.two_seeds import TwoSeedsConfig, run

LIMIT_SECONDS = 300.0  # the target on a 2-core machine


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="keep the run directory here (default: a temporary directory)")
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="lossprobe-bench-")
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    s = run(out, TwoSeedsConfig(), force=True, progress=False)
    wall = time.perf_counter() - t0
    print(json.dumps({
        "benchmark": "two_seeds",
        "workload": "2x MLP 784-256-256-10, Adam, 12 epochs, 50k train; 41-point interpolation on 50k train + 10k test",
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
        "seconds": round(wall, 1),
        "training_seconds": [round(t, 1) for t in s["training_seconds"]],
        "limit_seconds": LIMIT_SECONDS,
        "within_limit": wall <= LIMIT_SECONDS,
        "test_accuracy": [round(a, 4) for a in s["test_accuracy"]],
        "val_accuracy": [round(a, 4) for a in s["val_accuracy"]],
        "min_test_accuracy_target": 0.88,
        "loss_barrier": {k: round(v, 4) for k, v in s["loss_barrier"].items() if isinstance(v, float)},
        "error_barrier": {k: round(v, 4) for k, v in s["error_barrier"].items() if isinstance(v, float)},
        "verdict": s["verdict"],
    }))
    if not args.out:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
