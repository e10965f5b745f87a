"""Do two run directories hold the same numbers? (A refactor must not change a study's results.)

Compares summary.json (every value; keys about time are skipped: seconds, timing, speed),
every array of every .npz bitwise (NaN equal to NaN; declaration entries such as `_plots`
are skipped, they describe arrays) and every other result .json of the run (histories,
curvature, ...; keys only the newer run has are listed as `added`, not as differences).
Prints one JSON line per pair: the study, a digest of each summary without its timing
keys, the numbers of arrays and JSON values compared, the differences and additions;
exits 1 when any pair differs.

    python benchmarks/same_numbers.py BEFORE_DIR AFTER_DIR [BEFORE_DIR AFTER_DIR ...]

e.g. run `lossprobe study two-seeds --out before/two-seeds` on the old commit and
`--out after/two-seeds` on the new one, then compare the two folders.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np

TIMING = ("second", "time", "timing", "elapsed", "speed", "throughput", "per_second", "date", "started", "duration", "wall")


def _timing(key: str) -> bool:
    return any(t in key.lower() for t in TIMING)


def strip_timing(obj):
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items() if not _timing(k)}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


NOT_RESULTS = {"summary.json", "config.json", "environment.json", "status.json", "timing.json", "plan.json", "inputs.json"}
SKIP_DIRS = {"site", "checkpoints", "figures"}


def _files(run: Path, pattern: str) -> list[Path]:
    """Files of `run` (subfolders too, e.g. surfaces/, pairs/) that hold results."""
    return sorted(p for p in run.rglob(pattern) if not SKIP_DIRS & set(p.relative_to(run).parts[:-1]))


def _diff(a, b, path: str, out: list, added: list | None = None) -> int:
    """Append differences to `out` (keys only in b to `added` when given); returns values compared."""
    if isinstance(a, dict) and isinstance(b, dict):
        n = 0
        for k in sorted(set(a) | set(b)):
            if k in b and k not in a and added is not None:
                added.append(f"{path}.{k}")
            elif k not in a or k not in b:
                out.append(f"{path}.{k}: only in {'after' if k in b else 'before'}")
            else:
                n += _diff(a[k], b[k], f"{path}.{k}", out, added)
        return n
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: {len(a)} vs {len(b)} entries")
        return sum(_diff(x, y, f"{path}[{i}]", out, added) for i, (x, y) in enumerate(zip(a, b)))
    if not (a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))):
        out.append(f"{path}: {a!r} vs {b!r}")
    return 1


def compare(before: Path, after: Path) -> dict:
    out: list[str] = []
    added: list[str] = []
    sa, sb = (strip_timing(json.loads((d / "summary.json").read_text())) for d in (before, after))
    n_json = _diff(sa, sb, "summary", out)
    for f in _files(before, "*.json"):
        if f.name in NOT_RESULTS:
            continue
        g = after / f.relative_to(before)
        if not g.is_file():
            out.append(f"{f.relative_to(before)}: missing after")
            continue
        n_json += _diff(*(strip_timing(json.loads(x.read_text())) for x in (f, g)), str(f.relative_to(before)), out,
                        added)
    n_arrays = 0
    for f in _files(before, "*.npz"):
        g = after / f.relative_to(before)
        if not g.is_file():
            out.append(f"{f.relative_to(before)}: missing after")
            continue
        with np.load(f) as A, np.load(g) as B:
            for k in sorted(set(A.files) | set(B.files)):
                if k.startswith("_"):
                    continue
                if k not in A.files or k not in B.files:
                    out.append(f"{f.relative_to(before)}:{k}: only in {'after' if k in B.files else 'before'}")
                    continue
                x, y = A[k], B[k]
                n_arrays += 1
                if x.shape != y.shape or not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
                    out.append(f"{f.relative_to(before)}:{k}: arrays differ")
    digest = lambda s: hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest()[:16]  # noqa: E731
    return {"study": sa.get("study", before.name), "before": str(before), "after": str(after),
            "summary_digest_before": digest(sa), "summary_digest_after": digest(sb), "arrays_compared": n_arrays,
            "json_values_compared": n_json, "equal": not out, "differences": out[:20], "added": added[:20]}


def main(argv: list[str]) -> int:
    if len(argv) < 2 or len(argv) % 2:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: python benchmarks/same_numbers.py BEFORE_DIR AFTER_DIR [BEFORE_DIR AFTER_DIR ...]", file=sys.stderr)
        return 2
    ok = True
    for before, after in zip(argv[::2], argv[1::2]):
        r = compare(Path(before), Path(after))
        ok &= r["equal"]
        print(json.dumps(r))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
