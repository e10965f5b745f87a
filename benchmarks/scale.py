"""Benchmark: every probe on GPT-2 small (124M) and medium (355M) on the CPU, one thread; time
in plain forward passes and peak memory in model sizes, beside a plain loop and PyHessian.

Workload: GPT-2 from `transformers` (random initialisation from the config, seeded; no
download), 8 sequences of 128 tokens (seeded random ids; the model's own causal-LM loss,
`loss="model"`), eval mode. Each probe runs in its own process (`--worker`), sequentially:

* interpolation, 5 α (two models loaded), beside a plain loop that writes
  (1 − α)θ_A + αθ_B into a working copy of the model and runs a forward pass;
* surface 5×5 (filter-normalised random plane), beside a plain loop that draws two
  filter-normalised directions per parameter (float32, as loss-landscapes does), then sets
  θ + a·d1 + b·d2 into the model's parameters and runs a forward pass per point;
* slice 11 (one random direction);
* Hessian top-1 and top-3 eigenvalues to relative tolerance 1e-3 (`hessian.eigenvalues`),
  and the Hutch++ trace (`--trace-products`, default 12);
* PyHessian's top eigenvalue (power iteration, maxIter 100, tol 1e-3), on the same data through
  a wrapper module returning next-token logits [B·(T−1), V] with targets the next tokens
  (the same mean loss), with the math attention kernel (it needs double backward);
* a tight reference: Lanczos (basis on disk) to tol 1e-6 (`--ref-tol`), top 3, at most
  `--ref-steps` steps.

Time is wall-clock (`passes`) and this process's CPU time (`cpu_passes`: one thread, so robust to other
load on a shared machine) in units of one plain forward pass over the same data, measured in the same
process just before the probe (the best of two after a warm-up). Memory is the peak resident
set (VmHWM, reset before the probe, sampled every 0.2 s too) above the resident set just
before it, with the model(s) and data loaded, in model sizes M = parameters × 4 bytes (workers
run with MALLOC_MMAP_THRESHOLD_=65536 so that freed blocks leave the resident set at once); the
activations of one forward pass are reported too (`activations_M`). A
watchdog stops a worker whose resident set passes `--limit-gb` (the machine is shared) and the
row says so. `--curvature-tokens` runs the curvature rows on fewer tokens per sequence (their
gradient graph grows with the tokens: about 10 GB at 8×128 for GPT-2 small).

    python benchmarks/scale.py [--model small|medium|both] [--probes ...] [--limit-gb 10]

Prints ONE JSON line (and a Markdown table on stderr). PyHessian is benchmark-only
(`pip install --no-deps pyhessian`).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import threading
import time

PROBES = ("interpolation", "surface", "slice", "top1", "top3", "trace", "pyhessian", "reference")
CURVATURE = ("top1", "top3", "trace", "pyhessian", "reference")
CONFIGS = {"small": dict(n_embd=768, n_layer=12, n_head=12), "medium": dict(n_embd=1024, n_layer=24, n_head=16),
           "tiny": dict(n_embd=64, n_layer=2, n_head=2, vocab_size=1000)}  # tiny: to try the script


# --- memory ------------------------------------------------------------------------------------
def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


class Memory:
    """Peak resident memory of this process during a block, above its start (VmHWM, reset first;
    also sampled every 0.2 s); a watchdog ends the process above `limit` bytes."""

    def __init__(self, limit: float):
        self.limit = limit
        self.samples_peak = 0
        self._stop = False
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self):
        while not self._stop:
            r = _status("VmRSS")
            self.samples_peak = max(self.samples_peak, r)
            if r > self.limit:
                print(json.dumps({"aborted": f"resident memory {r / 1e9:.2f} GB passed the limit "
                                             f"{self.limit / 1e9:.1f} GB"}), flush=True)
                os._exit(3)
            time.sleep(0.2)

    def start(self):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.base = _status("VmRSS")
        self.samples_peak = self.base

    def peak_above(self) -> int:
        return max(_status("VmHWM"), self.samples_peak) - self.base


# --- the workload ------------------------------------------------------------------------------
def build(size: str, seed: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(**CONFIGS[size])).eval()


def tokens(n_seq: int, n_tok: int, vocab: int = 50257):
    import torch

    x = torch.randint(0, vocab, (n_seq, n_tok), generator=torch.Generator().manual_seed(123))
    return {"input_ids": x, "labels": x}


def forward_seconds(model, data, repeats: int = 2, clock=time.perf_counter, sync=lambda: None) -> float:
    """The best of `repeats` forward passes after a warm-up; `sync` waits for a GPU's queue."""
    import torch

    with torch.inference_mode():
        model(**data)  # warm-up: kernels chosen, caches filled
        best = float("inf")
        for _ in range(repeats):
            sync()
            t = clock()
            model(**data)
            sync()
            best = min(best, clock() - t)
    return best


def worker(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    mem = Memory(args.limit_gb * 1e9)
    import lossprobe as lp
    from lossprobe.curvature import hessian

    probe = args.worker
    n_tok = args.curvature_tokens if probe in CURVATURE else args.tokens
    a = build(args.model, 0)
    P = sum(p.numel() for p in a.parameters())
    M = P * 4
    data = tokens(args.sequences, n_tok, a.config.vocab_size)
    b = build(args.model, 1) if probe == "interpolation" else None
    mem.start()
    fwd = forward_seconds(a, data)
    act = mem.peak_above() / M
    fwd_cpu = forward_seconds(a, data, clock=time.process_time)
    row = {"probe": probe, "model": f"gpt2-{args.model}", "parameters": P, "tokens": [args.sequences, n_tok],
           "forward_s": fwd, "forward_cpu_s": fwd_cpu, "activations_M": act}

    def timed(fn):  # wall clock and this process's CPU time (one thread: robust to a loaded machine)
        mem.start()
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        sec, cpu = time.perf_counter() - t, time.process_time() - c
        return out, {"seconds": sec, "passes": sec / fwd, "cpu_seconds": cpu, "cpu_passes": cpu / fwd_cpu,
                     "peak_M": mem.peak_above() / M, "peak_GB": mem.peak_above() / 1e9}

    kw = dict(loss="model", batch_size=args.sequences)
    if probe == "interpolation":
        alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
        res, row["lossprobe"] = timed(lambda: lp.interpolate(a, b, data, alphas=alphas, **kw))
        ours = res.loss["data"]

        def plain():
            work = copy.deepcopy(a)
            out = []
            with torch.inference_mode():
                for al in alphas:
                    for pw, pa, pb in zip(work.parameters(), a.parameters(), b.parameters()):
                        torch.mul(pa, 1 - al, out=pw)
                        pw.add_(pb, alpha=al)
                    out.append(float(work(**data).loss))
            return out

        ref, row["plain_loop"] = timed(plain)
        row["max_abs_diff_vs_plain"] = max(abs(x - y) for x, y in zip(ours, ref))
        row["loss"] = list(map(float, ours))
    elif probe in ("surface", "slice"):
        steps = 5 if probe == "surface" else 11
        fn = lp.surface if probe == "surface" else lp.slice
        res, row["lossprobe"] = timed(lambda: fn(a, data, span=(-1, 1), steps=steps, seed=0, progress=False,
                                                 **kw))
        row["loss_range"] = [float(res.loss.min()), float(res.loss.max())]
        row["hoisting"] = res.meta.get("hoisting")
        if probe == "surface":
            def plain():
                g = torch.Generator().manual_seed(0)
                origin = [p.detach().clone() for p in a.parameters()]
                dirs = []
                for _ in range(2):
                    ds = []
                    for p in a.parameters():
                        d = torch.randn(p.shape, generator=g)
                        if p.ndim >= 2:  # filter-normalised per output row; biases and norms stay fixed
                            d.mul_(p.detach().norm(dim=-1, keepdim=True) / d.norm(dim=-1, keepdim=True).clamp_min(1e-12))
                        else:
                            d.zero_()
                        ds.append(d)
                    dirs.append(ds)
                axis = [-1.0, -0.5, 0.0, 0.5, 1.0]
                out = []
                with torch.inference_mode():
                    for x in axis:
                        for y in axis:
                            for p, o, d1, d2 in zip(a.parameters(), origin, *dirs):
                                torch.add(o, d1, alpha=x, out=p)
                                p.add_(d2, alpha=y)
                            out.append(float(a(**data).loss))
                    for p, o in zip(a.parameters(), origin):
                        p.copy_(o)
                return out

            ref, row["plain_loop"] = timed(plain)
            row["plain_loss_range"] = [min(ref), max(ref)]
    elif probe in ("top1", "top3", "reference"):
        k = 1 if probe == "top1" else 3
        opts = dict(tol=1e-3) if probe != "reference" else dict(tol=args.ref_tol, max_steps=args.ref_steps, basis="disk")
        r, row["lossprobe"] = timed(lambda: hessian.eigenvalues(lp.Objective(a, data, **kw), k=k, **opts))
        row.update(eigenvalues=r.values.tolist(), residuals=r.residuals.tolist(), matvecs=r.matvecs,
                   converged=r.converged, thick_restarts=r.restarts)
    elif probe == "trace":
        r, row["lossprobe"] = timed(lambda: hessian.trace(lp.Objective(a, data, **kw), matvecs=args.trace_products))
        row.update(trace=r.trace, stderr=r.stderr, matvecs=r.matvecs)
    elif probe == "pyhessian":
        row.update(pyhessian(a, data, timed))
    return row


def pyhessian(model, data, timed) -> dict:
    import numpy as np
    import torch
    from torch import nn
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        import pyhessian  # noqa: F401
    except ImportError:  # benchmark-only peer; --no-deps so it cannot replace the CPU torch
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "pyhessian"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    from pyhessian import hessian as PyHessian

    class NextToken(nn.Module):  # the same mean loss: logits of every position but the last
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            z = self.m(input_ids=x).logits[:, :-1]
            return z.reshape(-1, z.shape[-1])

    x = data["input_ids"]
    y = x[:, 1:].reshape(-1)
    count = {"n": 0}
    phmod = sys.modules["pyhessian.hessian"]
    orig = phmod.hessian_vector_product

    def counted(*a, **k):
        count["n"] += 1
        return orig(*a, **k)

    phmod.hessian_vector_product = counted
    torch.manual_seed(0)

    def run():
        with sdpa_kernel([SDPBackend.MATH]):
            ph = PyHessian(NextToken(model).eval(), nn.CrossEntropyLoss(), data=(x, y), cuda=False)
            ev, _ = ph.eigenvalues(maxIter=100, tol=1e-3, top_n=1)
        return float(ev[0])

    top, t = timed(run)
    return {"pyhessian": t, "eigenvalues": [top], "matvecs": count["n"], "numpy": np.__version__}


# --- the driver --------------------------------------------------------------------------------
def driver(args) -> dict:
    out = {"benchmark": "scale", "cores": os.cpu_count(), "torch_threads": args.threads,
           "load_average_1min": os.getloadavg()[0], "sequences": args.sequences, "tokens": args.tokens,
           "curvature_tokens": args.curvature_tokens, "trace_products": args.trace_products, "limit_gb": args.limit_gb,
           "models": {}}
    sizes = ["small", "medium"] if args.model == "both" else [args.model]
    for size in sizes:
        rows = {}
        for probe in args.probes:
            cmd = [sys.executable, __file__, "--worker", probe, "--model", size, "--threads", str(args.threads),
                   "--tokens", str(args.tokens), "--curvature-tokens", str(args.curvature_tokens),
                   "--sequences", str(args.sequences), "--limit-gb", str(args.limit_gb),
                   "--trace-products", str(args.trace_products), "--ref-tol", str(args.ref_tol),
                   "--ref-steps", str(args.ref_steps)]
            # malloc gives large blocks back at once, so the resident set follows what is allocated
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(args.threads)}
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
            rows[probe] = json.loads(lines[-1]) if lines else {"error": (p.stderr or "").strip().splitlines()[-1:]}
            print(f"[scale] {size} {probe}: {json.dumps(rows[probe])}", file=sys.stderr, flush=True)
        out["models"][f"gpt2-{size}"] = summarise(rows)
    small, medium = out["models"].get("gpt2-small"), out["models"].get("gpt2-medium")
    if small and medium:  # the target: each ratio of the medium model within 20 % of the small one's
        out["medium_vs_small"] = {k: medium[k] / small[k] for k in small
                                  if k != "rows" and isinstance(small.get(k), float) and k in medium and small[k]}
    out["load_average_1min_after"] = os.getloadavg()[0]
    return out


def summarise(rows: dict) -> dict:
    s = {"rows": rows}

    def get(p, *keys):
        r = rows.get(p, {})
        for k in keys:
            r = r.get(k, {}) if isinstance(r, dict) else {}
        return r if r != {} else None

    for p in ("interpolation", "surface"):
        a, b = get(p, "lossprobe", "seconds"), get(p, "plain_loop", "seconds")
        if a and b:
            s[f"{p}_time_vs_plain"] = a / b
        a, b = get(p, "lossprobe", "cpu_seconds"), get(p, "plain_loop", "cpu_seconds")
        if a and b:
            s[f"{p}_cpu_time_vs_plain"] = a / b
    ph, t1 = get("pyhessian", "pyhessian", "seconds"), get("top1", "lossprobe", "seconds")
    if ph and t1:
        s["top1_time_vs_pyhessian"] = t1 / ph
        # in forward passes of each row's own process (the rows ran at different times)
        s["top1_passes_vs_pyhessian"] = get("top1", "lossprobe", "passes") / get("pyhessian", "pyhessian", "passes")
        if get("pyhessian", "pyhessian", "cpu_seconds") and get("top1", "lossprobe", "cpu_seconds"):
            s["top1_cpu_time_vs_pyhessian"] = get("top1", "lossprobe", "cpu_seconds") / get("pyhessian", "pyhessian",
                                                                                            "cpu_seconds")
        s["top1_peak_M_minus_pyhessian"] = get("top1", "lossprobe", "peak_M") - get("pyhessian", "pyhessian", "peak_M")
    ref = get("reference", "eigenvalues")
    if ref:
        for p in ("top1", "top3", "pyhessian"):
            ev = get(p, "eigenvalues")
            if ev:
                s[f"{p}_rel_error"] = max(abs(x - r) / abs(r) for x, r in zip(ev, ref))
    return s


def table(res: dict) -> str:
    lines = ["| model | probe | time (forward passes) | peak above the model(s) (M) | peer: time | peer: peak (M) | notes |",
             "|---|---|---|---|---|---|---|"]
    for name, s in res["models"].items():
        for p, r in s["rows"].items():
            ours = r.get("lossprobe") or r.get("pyhessian") or {}
            peer = r.get("plain_loop") or {}
            notes = r.get("aborted") or r.get("error") or ""
            if "eigenvalues" in r:
                notes = f"λ = {', '.join(f'{v:.5g}' for v in r['eigenvalues'])}; {r.get('matvecs')} products"
                if f"{p}_rel_error" in s:
                    notes += f"; rel. error {s[f'{p}_rel_error']:.1e}"
            if "trace" in r:
                notes = f"trace {r['trace']:.4g} ± {r['stderr']:.2g} ({r['matvecs']} products)"
            lines.append(f"| {name} | {p}{' (PyHessian)' if p == 'pyhessian' else ''} | "
                         f"{ours.get('passes', float('nan')):.2f} | {ours.get('peak_M', float('nan')):.2f} | "
                         f"{peer.get('passes', float('nan')):.2f} | {peer.get('peak_M', float('nan')):.2f} | {notes} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="both", choices=("small", "medium", "both", "tiny"))
    ap.add_argument("--probes", nargs="+", default=list(PROBES), choices=PROBES)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sequences", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128, help="tokens per sequence (default: %(default)s)")
    ap.add_argument("--curvature-tokens", type=int, default=128,
                    help="tokens per sequence for the curvature rows (default: %(default)s)")
    ap.add_argument("--trace-products", type=int, default=12)
    ap.add_argument("--ref-tol", type=float, default=1e-6, help="tolerance of the tight reference (default: %(default)s)")
    ap.add_argument("--ref-steps", type=int, default=150, help="most Lanczos steps of the reference (default: %(default)s)")
    ap.add_argument("--limit-gb", type=float, default=10.0, help="a worker above this resident memory stops")
    ap.add_argument("--worker", choices=PROBES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import warnings

        with warnings.catch_warnings(record=True) as caught:  # e.g. a Lanczos run stopped early: kept in the row
            warnings.simplefilter("always")
            row = worker(args)
        row["warnings"] = sorted({str(w.message).splitlines()[0] for w in caught
                                  if not issubclass(w.category, (DeprecationWarning, FutureWarning))})
        print(json.dumps(row), flush=True)
        return
    res = driver(args)
    print(table(res), file=sys.stderr)
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
