"""Benchmark: hyperparameter search methods on the clock, replayed on the cached tables.

Runs `lossprobe study search-benchmark` on the tables in --table-dir (built by
benchmarks/build_search_tables.py; a missing row is trained first, which takes hours) and
prints one JSON line per table: the budget, regret at 25/50/100% of the wall-clock budget
and the expected time to 1 point of regret per method, the best baseline, the issue's
targets for `mf` and `probe`, and the default method the measurements choose.

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/search.py \
        --table-dir runs/search-tables --out runs/search-benchmark
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table-dir", default="runs/search-tables")
    p.add_argument("--out", default="runs/search-benchmark")
    p.add_argument("--seeds", type=int, default=100)
    p.add_argument("--tables", nargs="+", default=["mlp", "cnn"])
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from lossprobe.studies.search_benchmark import SearchBenchmarkConfig, run

    cfg = SearchBenchmarkConfig(tables=args.tables, table_dir=args.table_dir, seeds=args.seeds)
    s = run(args.out, cfg, progress=False)
    for name, t in s["tables"].items():
        rep = t["replay"]["seconds"]
        unit = t["full_training_seconds"]
        line = {
            "benchmark": "search", "table": name, "configurations": t["size"], "seeds": s["seeds"],
            "budget_full_trainings": t["budget_trainings"], "full_training_cpu_seconds": round(unit, 3),
            "regret_at": {m: {q: round(r["regret_at"][q][0], 4) for q in ("0.25", "0.5", "1")}
                          for m, r in rep["methods"].items()},
            "ert_to_1_point_full_trainings": {m: (round(r["time_to_target"]["ert"] / unit, 2)
                                                  if r["time_to_target"]["ert"] != float("inf") else None)
                                              for m, r in rep["methods"].items()},
            "success_rate": {m: r["time_to_target"]["success_rate"] for m, r in rep["methods"].items()},
            "best_baseline_ert": rep["best_baseline_ert"], "best_baseline_final": rep["best_baseline_final"],
            "targets": t["targets"], "default_method": s["default_method"]["measured"],
            "default_features": s["default_families"]["measured"],
        }
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
