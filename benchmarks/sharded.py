"""Benchmark: model-sharded probes (FSDP2 ``fully_shard``, torchrun, gloo, CPU) against one process
on the same workload, in the same run: per-rank peak memory in model sizes, time, and the numbers.

Workload: GPT-2 from `transformers` (random initialisation from the config, seeded; no download;
`--model small` = 124M parameters), eval mode, the model's own causal-LM loss (`loss="model"`),
8 sequences of `--tokens` tokens in batches of 4 (two batches: one per rank). Probes:

* surface 5×5 (filter-normalised random plane, `lp.surface`);
* Hessian top eigenvalue to relative tolerance 1e-3 (`hessian.eigenvalues`, k=1), on
  `--curvature-tokens` tokens per sequence.

Each probe runs twice, each time in fresh processes: once in one process with the model whole
(one thread), once under ``torchrun --nproc-per-node 2`` with every GPT-2 block and then the root
wrapped by ``fully_shard`` (one thread per rank). Memory is each process's peak resident set
(VmHWM, reset just before the probe, also sampled every 0.2 s) above its resident set just before,
with the model (or its shard) and data loaded, in model sizes M = the whole model's parameters × 4
bytes; workers run with MALLOC_MMAP_THRESHOLD_=65536 so freed blocks leave the resident set.
Times are wall-clock on this shared 2-core machine (the sharded run uses both cores, the single
process one).

    python benchmarks/sharded.py [--model small|tiny] [--probes surface top1]

Prints ONE JSON line (and a Markdown table on stderr).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from scale import Memory, build, tokens  # noqa: E402  (the same workload and memory probe as scale.py)

PROBES = ("surface", "top1")


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    import lossprobe as lp
    from lossprobe.curvature import hessian

    torch.set_num_threads(1)
    sharded = "RANK" in os.environ
    if sharded:
        dist.init_process_group("gloo")
    model = build(args.model, seed=0)
    P = sum(p.numel() for p in model.parameters())
    if sharded:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        for block in model.transformer.h:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
    n_tok = args.tokens if args.probe == "surface" else args.curvature_tokens
    vocab = model.config.vocab_size
    data = tokens(8, n_tok, vocab)
    obj = lp.Objective(model, data, loss="model", batch_size=4)
    gc.collect()
    mem = Memory(args.limit_gb * 1e9)
    if sharded:
        dist.barrier()
    mem.start()
    t0, c0 = time.perf_counter(), time.process_time()
    extra = {}
    if args.probe == "surface":
        s = lp.surface(obj, None, span=(-1, 1), steps=5, seed=0, progress=False)
        numbers = s.loss.ravel().tolist()
    else:
        r = hessian.eigenvalues(obj, k=1, tol=1e-3)
        numbers = r.values.tolist()
        extra = {"matvecs": int(r.matvecs), "converged": bool(r.converged)}
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = mem.peak_above()
    row = {"peak_M": peak / (4 * P), "seconds": seconds, "cpu_seconds": cpu, "numbers": numbers,
           "parameters": P, **extra}
    if sharded:
        rows = [None] * dist.get_world_size()
        dist.all_gather_object(rows, row)
        if dist.get_rank() == 0:
            Path(args.json).write_text(json.dumps({"ranks": rows}))
        dist.destroy_process_group()
    else:
        Path(args.json).write_text(json.dumps({"ranks": [row]}))
    # skip interpreter teardown: a gloo worker thread releasing a finished collective then can
    # abort the process after the row is written (see tests/dist_probe.py's finish)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _launch(args, probe: str, sharded: bool, tmp: Path) -> dict:
    out = tmp / f"{probe}-{'sharded' if sharded else 'one'}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536",
           "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable]
    if sharded:
        cmd += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += [str(Path(__file__).resolve()), "--worker", "--probe", probe, "--model", args.model, "--json", str(out),
            "--tokens", str(args.tokens), "--curvature-tokens", str(args.curvature_tokens),
            "--limit-gb", str(args.limit_gb)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0 or not out.is_file():
        return {"error": (p.stdout + p.stderr)[-1500:]}
    return json.loads(out.read_text())


def _rel(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-30)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="small", choices=("small", "tiny"), help="GPT-2 size (tiny: to try the script)")
    ap.add_argument("--probes", nargs="+", default=list(PROBES), choices=PROBES, help="which probes to run")
    ap.add_argument("--tokens", type=int, default=128, help="tokens per sequence for the surface")
    ap.add_argument("--curvature-tokens", type=int, default=32, help="tokens per sequence for the Hessian")
    ap.add_argument("--limit-gb", type=float, default=10.0, help="stop a process whose resident set passes this")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--probe", default="surface", help=argparse.SUPPRESS)
    ap.add_argument("--json", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    res = {"benchmark": "sharded", "model": f"gpt2-{args.model}", "cores": os.cpu_count(), "ranks": 2,
           "threads_per_process": 1, "sequences": 8, "batch_size": 4, "tokens": args.tokens,
           "curvature_tokens": args.curvature_tokens, "rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for probe in args.probes:
            one = _launch(args, probe, False, Path(tmp))
            two = _launch(args, probe, True, Path(tmp))
            row = {"one_process": one, "fsdp2_two_ranks": two}
            if "error" not in one and "error" not in two:
                o, t = one["ranks"][0], two["ranks"]
                row["max_rank_peak_M"] = max(r["peak_M"] for r in t)
                row["peak_ratio_sharded_vs_one"] = row["max_rank_peak_M"] / o["peak_M"]
                row["time_ratio_sharded_vs_one"] = max(r["seconds"] for r in t) / o["seconds"]
                row["max_rel_diff_vs_one"] = _rel(o["numbers"], t[0]["numbers"])
            res["rows"][probe] = row
    print(json.dumps(res))
    lines = ["| probe | one process: peak M, s | FSDP2 2 ranks: peak M per rank, s | numbers vs one |", "|---|---|---|---|"]
    for probe, row in res["rows"].items():
        if "max_rank_peak_M" not in row:
            lines.append(f"| {probe} | failed | failed | |")
            continue
        o, t = row["one_process"]["ranks"][0], row["fsdp2_two_ranks"]["ranks"]
        lines.append(f"| {probe} | {o['peak_M']:.2f} M, {o['seconds']:.0f} s | "
                     f"{', '.join(format(r['peak_M'], '.2f') for r in t)} M, {max(r['seconds'] for r in t):.0f} s | "
                     f"{row['max_rel_diff_vs_one']:.1e} |")
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()
