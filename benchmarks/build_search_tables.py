"""Build (or resume) the search benchmark's cached tables, one row at a time.

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/build_search_tables.py \
        --dir runs/search-tables mlp cnn >> runs/search-tables/build.log 2>&1 &

Each finished row is written to DIR/NAME/rows/ at once, so killing the process loses at
most the row in progress; rerunning the same command continues. Tables are built one after
the other with one torch thread. Progress goes to stdout (one line per row) and to
DIR/NAME/progress.log. Prints one JSON line per table at the end (rows, CPU hours).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tables", nargs="+", help="mlp, cnn, or FAMILY-ROLE tables of issue 26 (mlp-dev, mlp-fresh1, cnn-dev, mlp-live, spiral-dev, ...)")
    p.add_argument("--dir", default="runs/search-tables", help="parent directory of the tables")
    p.add_argument("--size", type=int, default=None, help="rows (default: the benchmark's size per table)")
    p.add_argument("--limit-hours", type=float, default=None, help="stop starting new rows after this long")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from lossprobe.search.table import build_table
    from lossprobe.studies.search_benchmark import table_config

    t_start = time.perf_counter()
    for name in args.tables:
        cfg = table_config(name, args.size)
        d = Path(args.dir) / name
        d.mkdir(parents=True, exist_ok=True)
        logf = d / "progress.log"

        def log(msg, logf=logf, name=name):
            line = f"{time.strftime('%H:%M:%S')} {name}: {msg}"
            print(line, flush=True)
            with open(logf, "a") as fh:
                fh.write(line + "\n")

        log(f"building {cfg.size} rows in {d}")
        left = None if args.limit_hours is None else args.limit_hours * 3600 - (time.perf_counter() - t_start)
        rows = build_table(d, cfg, progress=False, limit_seconds=left, log=log)
        cpu = sum(r["full"]["cpu_seconds"] + r["repeat"]["cpu_seconds"]
                  + sum(sum(pr["cpu"].values()) for pr in r["probes"].values()) for r in rows)
        print(json.dumps({"table": name, "rows": len(rows), "of": cfg.size, "cpu_hours": round(cpu / 3600, 3),
                          "dir": str(d)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
