"""Run the lossprobe CLI with a fault at the N-th durable write (tests and benchmarks/sigkill_matrix.py).

    python tests/faults.py ARGS...            # as `lossprobe ARGS...`, with these environment variables:

    LOSSPROBE_FAULT_KILL_AT=N    SIGKILL this process while the N-th file is being written
                                 (its temporary file is whole and fsynced but not yet renamed)
    LOSSPROBE_FAULT_SLEEP_AT=N   sleep LOSSPROBE_FAULT_SLEEP seconds (default 5) at the N-th write,
                                 after touching LOSSPROBE_FAULT_SIGNAL (a file) if given; with
                                 LOSSPROBE_FAULT_WAIT_FOR=FILE, wait until FILE exists instead
    LOSSPROBE_FAULT_COUNT=FILE   write the number of durable writes to FILE at exit

Every file lossprobe writes goes through `lossprobe.atomic`, so counting its fsyncs counts
the files written, and killing there interrupts the run between any two of them.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import signal
import sys
import time
from pathlib import Path


def install() -> None:
    from lossprobe.results import atomic

    kill_at = int(os.environ.get("LOSSPROBE_FAULT_KILL_AT", "0") or 0)
    sleep_at = int(os.environ.get("LOSSPROBE_FAULT_SLEEP_AT", "0") or 0)
    sleep_s = float(os.environ.get("LOSSPROBE_FAULT_SLEEP", "5"))
    signal_file = os.environ.get("LOSSPROBE_FAULT_SIGNAL")
    wait_for = os.environ.get("LOSSPROBE_FAULT_WAIT_FOR")
    count_file = os.environ.get("LOSSPROBE_FAULT_COUNT")
    original = atomic._fsync_file
    n = [0]

    def patched(f, path):
        original(f, path)
        n[0] += 1
        if n[0] == sleep_at:
            if signal_file:
                Path(signal_file).write_text(str(os.getpid()))
            if wait_for:
                deadline = time.time() + 600
                while not Path(wait_for).exists() and time.time() < deadline:
                    time.sleep(0.05)
            else:
                time.sleep(sleep_s)
        if n[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    atomic._fsync_file = patched
    if count_file:
        atexit.register(lambda: Path(count_file).write_text(str(n[0])))


# --- comparing runs (tests/test_sigkill.py, benchmarks/sigkill_matrix.py) --------------------------
# run_id: each run directory's own random id (the marker's), which two separate runs never share
_TIMING = re.compile(
    r"second|time|timing|started|finished|resumed|reused|computed_now|evaluated_by|^by$|^command$|^run_id$")
_SKIP = re.compile(r"(^|/)(environment\.json|timing\.json|site/.*|\..*)$|\.(svg|html)$")


def _strip(obj, home: str = "\0"):
    """Without timing keys and run ids, and with the run's own path written as $OUT."""
    if isinstance(obj, dict):
        return {k: _strip(v, home) for k, v in obj.items() if not _TIMING.search(str(k))}
    if isinstance(obj, list):
        return [_strip(v, home) for v in obj]
    if isinstance(obj, str):
        return obj.replace(home, "$OUT")
    if hasattr(obj, "detach"):  # a tensor, from a torch file
        t = obj.detach().cpu().contiguous()
        return (str(t.dtype), tuple(t.shape), t.numpy().tobytes())
    return obj


def _trials(db: Path) -> dict:
    import optuna

    out = {}
    for s in optuna.study.get_all_study_summaries(f"sqlite:///{db}"):
        st = optuna.load_study(study_name=s.study_name, storage=f"sqlite:///{db}")
        out[s.study_name] = {
            "attrs": _strip(st.user_attrs),
            "trials": sorted((json.dumps(_strip(t.user_attrs), sort_keys=True), json.dumps(t.params, sort_keys=True),
                              t.value, t.state.name) for t in st.trials)}
    return out


def run_state(d: Path) -> dict:
    """What a run directory holds, without what legitimately differs between runs (timings,
    start times, SVG/HTML ids, the lock): arrays, JSON, Markdown, PNG and checkpoint bytes,
    and the Optuna trials of a search. Two runs are equal bit for bit when these are equal."""
    import numpy as np

    out = {}
    home = str(Path(d).resolve())
    for p in sorted(Path(d).rglob("*")):
        rel = p.relative_to(d).as_posix()
        if not p.is_file() or _SKIP.search(rel) or ".lossprobe-tmp" in p.name:
            continue
        if p.suffix == ".npz":
            with np.load(p) as f:
                out[rel] = {k: (f[k].dtype.str, f[k].shape, f[k].tobytes()) for k in f.files}
        elif p.suffix == ".json":
            out[rel] = _strip(json.loads(p.read_text().replace(str(d), home)), home)
        elif p.suffix == ".md":
            out[rel] = re.sub(r"\d+(\.\d+)? s\b", "# s", p.read_text().replace(str(d), "$OUT"))
        elif p.suffix == ".db":
            out[rel] = _trials(p)
        elif p.suffix == ".pt":
            import torch

            out[rel] = _strip(torch.load(p, map_location="cpu", weights_only=True), home)
        else:
            out[rel] = p.read_bytes()
    return out


def write_sequence(fn, out: Path) -> list[str]:
    """Run fn() (which must return 0) in this process, recording the files it writes durably, in order
    (paths relative to `out` where they are inside it)."""
    from lossprobe.results import atomic

    real = atomic._fsync_file
    seq: list[str] = []

    def record(f, path):
        real(f, path)
        p = Path(path)
        try:
            seq.append(p.resolve().relative_to(Path(out).resolve()).as_posix())
        except ValueError:
            seq.append(str(p))

    atomic._fsync_file = record
    try:
        assert fn() == 0
    finally:
        atomic._fsync_file = real
    return seq


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    install()
    from lossprobe.cli import main

    code = main(sys.argv[1:])
    sys.exit(code)
