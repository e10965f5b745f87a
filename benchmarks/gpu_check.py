"""Every capability once on a GPU, checked against the same call on the CPU; and a 1B-parameter
scale row. One JSON line.

Compatibility check (`--compat`, the default): the compatibility-matrix models of
tests/compat_models.py (ResNet with BatchNorm, LSTM, GroupNorm CNN, tied weights, two inputs,
regression, tiny HF BERT and GPT-2) with their small data; on each: interpolation, a 3×3 surface,
the top Hessian eigenvalue, a Hutch++ trace, the critical-point probe and one epoch of curve
training, on the model's device. Every number must match the CPU's within a relative 1e-3 (GPU
kernels differ in rounding), and the result must stay on the device where the model lives.

Scale row (`--scale`, and by default when CUDA is present): a Llama-3.2-1B-architecture model
from `transformers` (hidden 2048, MLP 8192, 16 layers, 32 heads, 8 KV heads, vocabulary 128256,
tied embeddings: 1.24B parameters; random initialisation from the config, seeded; no download)
in bfloat16, eval mode, on one device. Data: 8 sequences of `--tokens` (default 256) seeded
random token ids, the model's own causal-LM loss (`loss="model"`, batch_size 8). Probes:

* interpolation, 11 α, to a second model (seed 1, freed after);
* surface 11×11 (filter-normalised random plane, span ±1), beside a plain loop on 3×3 points
  (two filter-normalised directions in bfloat16, then θ + x·d1 + y·d2 written into the
  parameters and a forward pass per point): a time per point of each;
* Hessian top-3 eigenvalues (tol 1e-3) and the Hutch++ trace (12 products), on
  `--hessian-tokens` per sequence (default 128: their gradient graph grows with the tokens).

Each probe reports wall seconds (the device synchronised before each clock reading), the same
in plain forward passes over its data (under inference_mode, the best of two after a warm-up),
and peak CUDA memory above what was allocated just before it (`max_memory_allocated`, peak
stats reset first) in model sizes M = parameters × 2 bytes and in GB, with its key numbers. A
probe that fails (e.g. CUDA out of memory) records its error and the others still run.
`--scale-size tiny` (a ~5M-parameter Llama) with `--device cpu` tries the row on a CPU.

    python benchmarks/gpu_check.py [--scale] [--scale-size 1b|tiny] [--device auto|cuda|cpu]
                                   [--compat | --no-compat] [--tokens N] [--hessian-tokens N]

Without CUDA (or MPS), and no --device cpu, it prints {"skipped": ...} and exits 0, so CI
machines can run it.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scale  # noqa: E402  (the same token batch and forward timing as the CPU benchmark)

# Llama-3.2-1B's shape (its RoPE scaling aside: no effect on cost); tiny: to try the row on a CPU
LLAMA = {
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True},
    "tiny": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 8,
             "num_key_value_heads": 4, "vocab_size": 8000, "tie_word_embeddings": True},
}
NAMES = {"1b": "llama-3.2-1b-architecture", "tiny": "llama-tiny"}


def device() -> str | None:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return None


def run_all(case, dev: str) -> dict:
    import lossprobe as lp
    from lossprobe.connectivity.curves import Curve, CurveTrainConfig, evaluate_curve, train_curve
    from lossprobe.core.batching import move
    from lossprobe.curvature import hessian, sharpness

    a, b = case.build(0).to(dev), case.build(1).to(dev)
    data = move(case.data, dev)
    kw = case.kwargs
    out = {}
    t = time.perf_counter()
    line = lp.interpolate(a, b, data, alphas=[0.0, 0.5, 1.0], batch_size=case.batch_size, **kw)
    out["interpolate"] = float(line.loss["data"][1])
    s = lp.surface(a, data, span=(-0.5, 0.5), steps=3, batch_size=case.batch_size, progress=False, seed=1, **kw)
    out["surface"] = float(s.loss[2, 0])
    obj = lp.Objective(a, data, batch_size=case.batch_size, **kw)
    assert obj.theta0.device.type == dev
    eig = hessian.eigenvalues(obj, k=1, max_steps=40, seed=0)
    assert eig.vectors.device.type == dev
    out["top_eigenvalue"] = float(eig.values[0])
    out["trace"] = float(hessian.trace(obj, matvecs=30, seed=0).trace)
    out["grad_norm"] = float(sharpness.critical_point(obj, max_steps=20).grad_norm)
    curve = Curve(a, b, bends=1)
    train_curve(curve, data, CurveTrainConfig(epochs=1, batch_size=4), loss=kw.get("loss"))
    out["curve"] = float(evaluate_curve(curve, data, ts=[0.5], bn_data=data, batch_size=case.batch_size,
                                        **kw).loss["data"][0])
    out["seconds"] = time.perf_counter() - t
    return out


# --- the scale row ------------------------------------------------------------------------------
def sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()
    elif dev == "mps":
        torch.mps.synchronize()


def free(dev: str) -> None:
    gc.collect()
    if dev == "cuda":
        torch.cuda.empty_cache()


def build_llama(size: str, seed: int, dev: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    with torch.device(dev):  # initialised on the device: a 1B model's float32 init on the host is slow
        model = LlamaForCausalLM(LlamaConfig(**LLAMA[size]))
    return model.to(torch.bfloat16).eval()


def tokens(n_seq: int, n_tok: int, vocab: int, dev: str) -> dict:
    """scale.py's seeded token batch, on `dev`."""
    return {k: v.to(dev) for k, v in scale.tokens(n_seq, n_tok, vocab).items()}


def measure(fn, dev: str, fwd: float, M: int):
    """fn()'s result and its cost: wall seconds, forward passes, peak device memory above the start."""
    free(dev)
    sync(dev)
    base = torch.cuda.memory_allocated() if dev == "cuda" else 0
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    out = fn()
    sync(dev)
    sec = time.perf_counter() - t
    cost = {"seconds": sec, "passes": sec / fwd}
    if dev == "cuda":  # memory counters exist on CUDA only
        peak = torch.cuda.max_memory_allocated() - base
        cost.update(peak_M=peak / M, peak_GB=peak / 1e9)
    return out, cost


def plain_surface(model, data, axis, dev: str):
    """The loop a user writes: two filter-normalised random directions (per output row; biases and
    norms fixed) kept in the model's dtype, then θ + x·d1 + y·d2 into the parameters per point."""
    g = torch.Generator(dev).manual_seed(0)
    params = list(model.parameters())

    def direction(p):
        d = torch.randn(p.shape, generator=g, device=dev)
        if p.ndim < 2:
            return torch.zeros_like(p)
        return d.mul_(p.float().norm(dim=-1, keepdim=True) / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)).to(p.dtype)

    with torch.inference_mode():
        origin = [p.detach().clone() for p in params]
        dirs = [[direction(p) for p in params] for _ in range(2)]
        sync(dev)
        t = time.perf_counter()
        losses = []
        for x in axis:
            for y in axis:
                for p, o, d1, d2 in zip(params, origin, *dirs):
                    torch.add(o, d1, alpha=x, out=p)
                    p.add_(d2, alpha=y)
                losses.append(float(model(**data).loss))
        sync(dev)
        points_s = time.perf_counter() - t
        for p, o in zip(params, origin):
            p.copy_(o)
    return losses, points_s


def scale_row(args, dev: str) -> dict:
    import transformers

    import lossprobe as lp
    from lossprobe.curvature import hessian

    n_tok = args.tokens or (256 if args.scale_size == "1b" else 64)
    h_tok = args.hessian_tokens or (128 if args.scale_size == "1b" else 32)
    row = {"model": NAMES[args.scale_size], "dtype": "bfloat16", "device": dev, "torch": torch.__version__,
           "transformers": transformers.__version__, "sequences": args.sequences, "tokens": n_tok,
           "hessian_tokens": h_tok}
    if dev == "cuda":
        props = torch.cuda.get_device_properties(0)
        row.update(gpu=props.name, gpu_memory_GB=props.total_memory / 1e9)
    t = time.perf_counter()
    a = build_llama(args.scale_size, 0, dev)
    sync(dev)
    row["build_s"] = time.perf_counter() - t
    P = sum(p.numel() for p in a.parameters())  # tied embeddings counted once
    M = P * a.dtype.itemsize
    row.update(parameters=P, M_GB=M / 1e9)
    vocab = a.config.vocab_size
    data, hdata = tokens(args.sequences, n_tok, vocab, dev), tokens(args.sequences, h_tok, vocab, dev)
    fwd, hfwd = (scale.forward_seconds(a, d, sync=lambda: sync(dev)) for d in (data, hdata))
    row.update(forward_s=fwd, hessian_forward_s=hfwd)
    kw = {"loss": "model", "batch_size": args.sequences}
    probes = {}

    def interpolation():
        b = build_llama(args.scale_size, 1, dev)  # freed when this function returns
        res, cost = measure(lambda: lp.interpolate(a, b, data, alphas=[i / 10 for i in range(11)], **kw), dev, fwd, M)
        return {**cost, "loss": [float(v) for v in res.loss["data"]], "loss_barrier": res.loss_barrier("data")}

    def surface():
        res, cost = measure(lambda: lp.surface(a, data, span=(-1, 1), steps=11, seed=0, progress=False, **kw),
                            dev, fwd, M)
        return {**cost, "points": 121, "per_point_s": cost["seconds"] / 121,
                "loss_range": [float(res.loss.min()), float(res.loss.max())], "hoisting": res.meta.get("hoisting")}

    def surface_plain():
        axis = [-1.0, 0.0, 1.0]
        (losses, points_s), cost = measure(lambda: plain_surface(a, data, axis, dev), dev, fwd, M)
        return {**cost, "points": 9, "points_s": points_s, "per_point_s": points_s / 9,
                "setup_s": cost["seconds"] - points_s, "loss_range": [min(losses), max(losses)]}

    def top3():
        r, cost = measure(lambda: hessian.eigenvalues(lp.Objective(a, hdata, **kw), k=3, tol=1e-3), dev, hfwd, M)
        return {**cost, "eigenvalues": r.values.tolist(), "residuals": r.residuals.tolist(), "matvecs": r.matvecs,
                "converged": bool(r.converged), "thick_restarts": r.restarts}

    def trace():
        r, cost = measure(lambda: hessian.trace(lp.Objective(a, hdata, **kw), matvecs=12), dev, hfwd, M)
        return {**cost, "trace": float(r.trace), "stderr": float(r.stderr), "matvecs": r.matvecs}

    for name, fn in [("interpolation", interpolation), ("surface", surface), ("surface_plain_loop", surface_plain),
                     ("hessian_top3", top3), ("hessian_trace", trace)]:
        try:  # one probe's failure (CUDA out of memory, say) is its row's; the others still run
            probes[name] = fn()
        except Exception as e:  # noqa: BLE001
            probes[name] = {"error": f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"}
        free(dev)
        print(f"[gpu_check] scale {name}: {json.dumps(probes[name])}", file=sys.stderr, flush=True)
    row["probes"] = probes
    s, p = probes["surface"], probes["surface_plain_loop"]
    if "per_point_s" in s and "per_point_s" in p:
        # lossprobe's time includes drawing its directions; the loop's points do not
        row["surface_per_point_vs_plain"] = s["per_point_s"] / p["per_point_s"]
        row["surface_time_vs_plain_at_121"] = s["seconds"] / (p["setup_s"] + 121 * p["per_point_s"])
    row["errors"] = [k for k, v in probes.items() if "error" in v]
    return row


# --- the driver --------------------------------------------------------------------------------
def compat_check(dev: str) -> dict:
    from compat_models import cases

    rows, failures = {}, []
    for case in cases():
        gpu = run_all(case, dev)
        cpu = run_all(copy.deepcopy(case), "cpu")
        diffs = {k: abs(gpu[k] - cpu[k]) / max(1e-6, abs(cpu[k])) for k in gpu if k != "seconds"}
        # the trace is a randomised estimate drawn on each device's own generator state:
        # only the exactly computed quantities must agree
        bad = [k for k, v in diffs.items() if v > 1e-3 and k not in ("trace",)]
        failures += [f"{case.name}:{k}" for k in bad]
        rows[case.name] = {"gpu": gpu, "cpu_seconds": cpu["seconds"], "max_rel_diff": max(diffs.values()), "bad": bad}
    return {"cases": rows, "failures": failures, "ok": not failures}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", action="store_true", help="run the scale row only (with --compat: both)")
    ap.add_argument("--scale-size", default="1b", choices=tuple(LLAMA))
    ap.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"))
    ap.add_argument("--compat", action=argparse.BooleanOptionalAction, default=None,
                    help="the compatibility-matrix check (default: on, off with --scale)")
    ap.add_argument("--sequences", type=int, default=8)
    ap.add_argument("--tokens", type=int, help="tokens per sequence (default 256; tiny: 64)")
    ap.add_argument("--hessian-tokens", type=int, help="tokens per sequence of the Hessian rows (default 128; tiny: 32)")
    args = ap.parse_args()
    compat = (not args.scale) if args.compat is None else args.compat
    dev = device() if args.device == "auto" else args.device
    if dev is None:
        print(json.dumps({"benchmark": "gpu_check", "skipped": "no CUDA or MPS device; nothing to check",
                          "torch": torch.__version__}))
        return 0
    out = {"benchmark": "gpu_check", "device": dev, "name": torch.cuda.get_device_name(0) if dev == "cuda" else dev,
           "torch": torch.__version__}
    failed = False
    if compat and dev == "cpu":  # it compares an accelerator with the CPU
        out["compat"] = "skipped: the compatibility check needs an accelerator"
    elif compat:
        out.update(compat_check(dev))
        failed = not out["ok"]
    # by default also the 1B row where there is CUDA (it is sized for one 80 GB GPU)
    if args.scale or dev == "cuda":
        out["scale"] = scale_row(args, dev)
        failed = failed or bool(out["scale"]["errors"])
    print(json.dumps(out), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
