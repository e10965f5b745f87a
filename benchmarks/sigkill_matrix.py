"""SIGKILL matrix: kill a run while it writes its N-th file, rerun the same command, compare.

For each workload the uninterrupted run is done first and its sequence of durable writes
recorded (every file lossprobe writes goes through lossprobe.atomic). Then, for each chosen
N, the command runs in a fresh process that SIGKILLs itself while writing file N (its
temporary file whole, not yet renamed), the same command is run again to completion, and the
run directory is compared with the uninterrupted one (tests/faults.py:run_state: arrays,
JSON without timings, Markdown, PNG and checkpoint bytes, the Optuna trials of a search).

Workloads (tiny, on the two-spiral set, except the study on Fashion-MNIST):
  surface    `lossprobe surface` 5×5 around an MLP 2-8-2        every write
  search     `lossprobe search` on spirals, budget 6           every write
  two-seeds  `lossprobe study two-seeds --quick` with a tiny config: the first write of each
             stage (training per seed, interpolation, connectivity, surfaces, report) and
             evenly spaced writes, up to --max-points

Prints one JSON line: per workload the number of writes, the kill points, how many resumed
runs were identical, and the ones that were not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from faults import run_state, write_sequence  # noqa: E402

SPACE = """
[train]
epochs = 2
[params]
lr = { type = "float", low = 3e-3, high = 0.1, log = true }
width = { type = "int", low = 4, high = 16, log = true }
depth = 1
"""
TINY = "train_subset = 300\neval_subset = 100\nalphas = 5\nsurface_steps = 3\nsurface_subset = 50\n"


def workloads(t: Path) -> dict[str, list[str]]:
    from lossprobe.models import build
    from lossprobe.training.checkpoints import save_checkpoint

    save_checkpoint(build("mlp:2-8-2", seed=0), t / "a.safetensors")
    (t / "space.toml").write_text(SPACE)
    (t / "tiny.toml").write_text(TINY)
    spiral = ["--model", "mlp:2-8-2", "--data", "spiral:test"]
    return {
        "surface": ["surface", str(t / "a.safetensors"), *spiral, "--steps", "5", "--out"],
        "search": ["search", "--space", str(t / "space.toml"), "--dataset", "spiral", "--method", "probe", "--budget", "6", "--init-probes",
                   "3", "--probes-per-round", "1", "--init-full", "1", "--fraction", "0.5", "--probe-epochs", "1",
                   "--meta", "rf", "--out"],
        "two-seeds": ["study", "two-seeds", "--quick", "--config", str(t / "tiny.toml"), "--no-site", "--out"],
    }


STAGES = ("seed0/", "seed1/", "interpolation.npz", "connectivity", "surfaces/", "report.md", "status.json")


def kill_points(seq: list[str], limit: int) -> list[int]:
    n = len(seq)
    if not limit or n <= limit:
        return list(range(1, n + 1))
    pts = {n}
    for s in STAGES:
        hit = [i for i, p in enumerate(seq, 1) if s in p]
        if hit:
            pts.add(hit[0])
    k = 1
    while len(pts) < limit and k <= n:
        pts.add(k)
        k += max(1, n // limit)
    return sorted(pts)


def resume_in_new_process(argv: list[str], env: dict) -> int:
    return subprocess.run([sys.executable, str(ROOT / "tests" / "faults.py"), *argv], env=env,
                          capture_output=True, text=True, timeout=1800).returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("surface", "search", "two-seeds"), action="append")
    ap.add_argument("--max-points", type=int, default=12, help="kill points of the two-seed study (default 12)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from lossprobe.cli import main as lp

    t = Path(tempfile.mkdtemp(prefix="lossprobe-sigkill-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    report = {"benchmark": "sigkill_matrix", "cores": os.cpu_count()}
    try:
        for name, argv in workloads(t).items():
            if args.only and name not in args.only:
                continue
            t0 = time.perf_counter()
            ref = t / f"{name}-ref"
            import contextlib
            import io

            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                seq = write_sequence(lambda: lp([*argv, str(ref)]), ref)
            want = run_state(ref)
            points = kill_points(seq, args.max_points if name == "two-seeds" else 0)
            same, differ = 0, []
            for k in points:
                out = t / f"{name}-k{k}"
                killed = subprocess.run([sys.executable, str(ROOT / "tests" / "faults.py"), *argv, str(out)],
                                        env={**env, "LOSSPROBE_FAULT_KILL_AT": str(k)}, capture_output=True,
                                        text=True, timeout=1800)
                rc = resume_in_new_process([*argv, str(out)], env)
                temps = [q.name for q in out.rglob("*.lossprobe-tmp*")]
                got = run_state(out) if rc == 0 else None
                if killed.returncode == -9 and rc == 0 and not temps and got == want:
                    same += 1
                else:
                    diff = sorted(k2 for k2 in set(want) | set(got or {}) if (got or {}).get(k2) != want.get(k2))
                    differ.append({"kill_at": k, "file": seq[k - 1], "killed_rc": killed.returncode, "resume_rc": rc,
                                   "temps_left": temps, "differing": diff[:5]})
                shutil.rmtree(out, ignore_errors=True)
            report[name] = {"writes": len(seq), "kill_points": len(points), "identical": same, "different": differ,
                            "seconds": round(time.perf_counter() - t0, 1)}
    finally:
        shutil.rmtree(t, ignore_errors=True)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
