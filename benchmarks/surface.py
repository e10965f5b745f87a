"""Benchmark: filter-normalised loss surfaces, lossprobe vs the PyPI package loss-landscapes
(random_plane) vs a plain loop, against the naive FLOP limit, on models as users bring them.
Prints ONE JSON line. Cases (each measured side by side in this run):

* `mlp`: MLP 784-256-256-10 on 2,000 Fashion-MNIST test images, 21×21 (the original row);
* `prefix_mlp`: the same MLP as a user's own model with a parameter-free standardising
  module in front (per-sample (x - mean) / std, preprocessing inside the model), on the
  full 10,000-image test set, 11×11;
* `resnet_head`: the SmallResNet of tests/compat_models.py (16 channels, 10 classes) on 500
  Fashion-MNIST test images repeated to 3 channels (28×28), with directions that move only
  the linear head (a head-only / fine-tuning landscape), 11×11; loss-landscapes gets the
  same restriction through its GeneralModelWrapper([model.head]);
* `cnn_bn`: the BatchNorm CNN cnn:16-32:bn on 500 test images, 11×11.

    python benchmarks/surface.py [--threads 1] [--repeats 2] [--quick]

* lossprobe: `lossprobe.landscape.surfaces.surface` (chunks, first-layer shortcut, batches outer).
* plain loop: copy θ(a, b) into the module, run a forward pass, per point (same directions
  and grid as lossprobe: its losses are the reference for `max_abs_diff`).
* loss-landscapes: `loss_landscapes.random_plane(model, Loss(...), steps=21,
  normalization='filter')` on the same data and grid size (its own random directions).
  It is benchmark-only: imported if installed, otherwise pip-installed here.
* FLOP limit: forward FLOPs of the naive method (2·Σ in·out multiply-adds per sample and
  point) divided by the best matrix-multiply rate measured in this run (a 1024² square
  matmul and the first layer's own shape, the faster of the two).
* The small BatchNorm CNN (cnn:16-32:bn, 500 images, 11×11) is reported the same way.

Every method runs with the same torch thread count (--threads). The machine is shared:
the JSON records the load average; each time is the best of --repeats runs, both
wall-clock (`*_s`) and CPU time of the process (`cpu_s`, the time it actually ran; with one
thread the fairer measure when other jobs share the cores). Ratios are given for both.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F


def _loss_landscapes():
    try:
        return importlib.import_module("loss_landscapes"), importlib.import_module("loss_landscapes.metrics")
    except ImportError:
        try:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "loss-landscapes"], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
            return importlib.import_module("loss_landscapes"), importlib.import_module("loss_landscapes.metrics")
        except Exception:
            return None, None


def matmul_rate(shapes, repeats: int = 7) -> tuple[float, float]:
    """Best measured float32 matmul rate (FLOP/s) over the given (M, K, N) shapes: (wall, cpu)."""
    best_w = best_c = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b
        for _ in range(repeats):
            with _Clock() as c:
                for _ in range(3):
                    a @ b
            best_w = max(best_w, 3 * 2 * m * k * n / c.wall)
            best_c = max(best_c, 3 * 2 * m * k * n / max(c.cpu, 1e-9))
    return best_w, min(best_c, best_w * torch.get_num_threads())


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class _Clock:
    """Wall-clock and CPU (process) time of a block. On a shared machine the process is often
    descheduled; with one thread its CPU time is the time it actually ran on a core."""

    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


def naive_forward_flops(model, x, points: int) -> float:
    """2 × multiply-adds of every Linear/Conv layer for one forward pass, × points."""
    macs = []

    def hook(mod, inp, out):
        if isinstance(mod, torch.nn.Linear):
            macs.append(out.numel() * mod.in_features)
        elif isinstance(mod, torch.nn.Conv2d):
            k = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
            macs.append(out.numel() * k)

    hs = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return 2.0 * sum(macs) * points


class Standardize(torch.nn.Module):
    """Per-sample (x - mean) / std over all features: preprocessing inside the model."""

    def forward(self, x):
        x = x.flatten(1)
        return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True).clamp_min(1e-6)


def plain_loop(model, x, y, theta0, dirs, pts):
    from lossprobe import ParamSpace

    work = copy.deepcopy(model).eval()
    sp = ParamSpace(work)
    out = np.empty(len(pts))
    with torch.no_grad():
        for i, p in enumerate(pts):
            sp.load_into(work, theta0 + torch.as_tensor(p, dtype=torch.float32) @ dirs)
            out[i] = F.cross_entropy(work(x), y).item()
    return out


def run_case(name, model, x, y, steps, repeats, ll_mod, only=None, ll_modules=None):
    """`only`: parameter-name prefixes the directions move (None: filter-normalised random
    directions as Li et al., biases and norms fixed); `ll_modules`: the modules
    loss-landscapes perturbs (its GeneralModelWrapper), None for the whole model."""
    from lossprobe.landscape import surfaces as S
    from lossprobe.core import directions as D
    from lossprobe import ParamSpace

    model.eval()
    d1, d2 = D.random_plane(model, seed=0, norm="filter")
    sp = ParamSpace(model)
    if only is not None:
        keep = torch.zeros(sp.numel, dtype=torch.bool)
        for e in sp.entries:
            if any(e.name == p or e.name.startswith(p + ".") for p in only):
                keep[e.slice] = True
        for d in (d1, d2):
            d.vector[~keep] = 0
    dirs = torch.stack([d1.vector, d2.vector])
    theta0 = sp.flatten(model)
    times = {"lossprobe": [], "plain_loop": [], "loss_landscapes": []}
    cpu = {"lossprobe": [], "plain_loop": [], "loss_landscapes": []}
    res = ref = None
    ll_norm, notes = "filter", []
    for _ in range(repeats):
        with _Clock() as c:
            res = S.surface(model, (x, y), (d1, d2), span=(-1, 1), steps=steps, progress=False)
        times["lossprobe"].append(c.wall)
        cpu["lossprobe"].append(c.cpu)
        pts = res.grid_points()
        with _Clock() as c:
            ref = plain_loop(model, x, y, theta0, dirs, pts)
        times["plain_loop"].append(c.wall)
        cpu["plain_loop"].append(c.cpu)
        if ll_mod[0] is not None:
            ll, metrics = ll_mod
            metric = metrics.Loss(torch.nn.CrossEntropyLoss(), x, y)
            m_copy = copy.deepcopy(model).eval()
            if ll_modules is not None:
                from loss_landscapes.model_interface.model_wrapper import GeneralModelWrapper

                m_copy = GeneralModelWrapper(m_copy, ll_modules(m_copy), lambda m, inp: m(inp))
            with torch.no_grad():
                try:
                    with _Clock() as c:
                        ll.random_plane(m_copy, metric, distance=1, steps=steps, normalization=ll_norm,
                                        deepcopy_model=True)
                except ZeroDivisionError:
                    # its filter normalisation divides by the norm of each 1-D parameter entry, which
                    # fails on BatchNorm parameters: time the same loop with layer normalisation
                    ll_norm = "layer"
                    notes.append("loss-landscapes' filter normalisation raised ZeroDivisionError on this model; "
                                 "timed with normalization='layer' (same per-point loop)")
                    with _Clock() as c:
                        ll.random_plane(m_copy, metric, distance=1, steps=steps, normalization=ll_norm,
                                        deepcopy_model=True)
                times["loss_landscapes"].append(c.wall)
                cpu["loss_landscapes"].append(c.cpu)
    best = {k: (min(v) if v else None) for k, v in times.items()}
    bcpu = {k: (min(v) if v else None) for k, v in cpu.items()}
    points = steps * steps
    flops = naive_forward_flops(model, x, points)
    first = next(m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
    with torch.no_grad():
        centre_plain = float(F.cross_entropy(model(x), y))
    shapes = [(1024, 1024, 1024)]
    if isinstance(first, torch.nn.Linear):
        shapes.append((len(x), first.in_features, first.out_features))
    rate_w, rate_c = matmul_rate(shapes)
    lp, lpc = best["lossprobe"], bcpu["lossprobe"]

    def ratio(a, b):
        return round(a / b, 2) if a and b else None

    out = {
        "workload": name,
        "grid": [steps, steps],
        "points": points,
        "samples": len(x),
        "lossprobe_s": round(lp, 3),
        "loss_landscapes_s": round(best["loss_landscapes"], 3) if best["loss_landscapes"] else None,
        "plain_loop_s": round(best["plain_loop"], 3),
        "naive_gflop": round(flops / 1e9, 2),
        "matmul_gflops": round(rate_w / 1e9, 1),
        "flop_limit_s": round(flops / rate_w, 3),
        "max_abs_diff": float(np.max(np.abs(res.loss.reshape(-1) - ref))),
        "centre_abs_diff_vs_plain_forward": abs(float(res.center_loss) - centre_plain),
        "speedup_vs_plain": ratio(best["plain_loop"], lp),
        "speedup_vs_loss_landscapes": ratio(best["loss_landscapes"], lp),
        "flop_limit_over_lossprobe": ratio(flops / rate_w, lp),
        "cpu_s": {k: (round(v, 3) if v else None) for k, v in bcpu.items()},
        "matmul_gflops_cpu": round(rate_c / 1e9, 1),
        "flop_limit_cpu_s": round(flops / rate_c, 3),
        "cpu_speedup_vs_plain": ratio(bcpu["plain_loop"], lpc),
        "cpu_speedup_vs_loss_landscapes": ratio(bcpu["loss_landscapes"], lpc),
        "cpu_flop_limit_over_lossprobe": ratio(flops / rate_c, lpc),
        "shortcut": res.meta["shortcut"],
        "hoisting": res.meta.get("hoisting"),
        "all_times_s": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "loss_landscapes_normalization": ll_norm if ll_mod[0] is not None else None,
    }
    if notes:
        out["notes"] = sorted(set(notes))
    return out


def bmm_check(threads: int) -> dict:
    """Is vectorising points (batched matmul, what vmap over points becomes) faster than one
    matmul per point for the MLP's second layer? Per-point milliseconds of each."""
    h, w = torch.randn(2000, 256), torch.randn(256, 256)
    hb, wb = torch.randn(8, 2000, 256), torch.randn(8, 256, 256)
    mm = min(_time(lambda: h @ w.T) for _ in range(10)) * 1e3
    bmm = min(_time(lambda: torch.bmm(hb, wb.transpose(1, 2))) for _ in range(5)) * 1e3 / 8
    return {"mm_ms_per_point": round(mm, 3), "bmm8_ms_per_point": round(bmm, 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for every method (default 1: stable timings on a shared machine)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per method; the best is reported (default 2)")
    ap.add_argument("--quick", action="store_true", help="smaller grids and data (a smoke test, not the benchmark)")
    ap.add_argument("--no-cnn", action="store_true", help="skip the BatchNorm CNN case")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from lossprobe.data import fashion_mnist
    from lossprobe.models import cnn, mlp

    test = fashion_mnist().test
    ll_mod = _loss_landscapes()
    n_mlp, s_mlp = (500, 7) if args.quick else (2000, 21)
    sub = test.subset(n_mlp, 0)
    result = {
        "benchmark": "surface",
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_before": [round(v, 2) for v in os.getloadavg()],
        "torch": torch.__version__,
        "loss_landscapes": getattr(ll_mod[0], "__version__", "installed") if ll_mod[0] else None,
        "weights": "initialisation seed 0 (timing does not depend on training)",
    }
    result["mlp"] = run_case("mlp:784-256-256-10, Fashion-MNIST test", mlp([784, 256, 256, 10], seed=0),
                             sub.x, sub.y, s_mlp, args.repeats, ll_mod)
    n_pre, s_pre = (1000, 5) if args.quick else (len(test), 11)
    pre = test.subset(n_pre, 0)
    result["prefix_mlp"] = run_case(
        "user MLP: Standardize (per-sample (x-mean)/std) + 784-256-256-10, full Fashion-MNIST test",
        torch.nn.Sequential(Standardize(), mlp([784, 256, 256, 10], seed=0)), pre.x, pre.y, s_pre,
        args.repeats, ll_mod)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from compat_models import SmallResNet

    n_res, s_res = (100, 5) if args.quick else (500, 11)
    rsub = test.subset(n_res, 0)
    torch.manual_seed(0)
    result["resnet_head"] = run_case(
        "SmallResNet(16 channels, 10 classes) of tests/compat_models.py, head-only directions, Fashion-MNIST "
        "test images repeated to 3 channels",
        SmallResNet(16, 10), rsub.x.expand(-1, 3, -1, -1).contiguous(), rsub.y, s_res, max(1, args.repeats - 1),
        ll_mod, only=["head.weight"], ll_modules=lambda m: [m.head])
    if not args.no_cnn:
        n_cnn, s_cnn = (200, 5) if args.quick else (500, 11)
        subc = test.subset(n_cnn, 0)
        result["cnn_bn"] = run_case("cnn:16-32:bn, Fashion-MNIST test",
                                    cnn((16, 32), batchnorm=True, hidden=128, seed=0), subc.x, subc.y, s_cnn,
                                    max(1, args.repeats - 1), ll_mod)
    result["vectorised_points_check"] = bmm_check(args.threads)

    def met(case, speedup_plain, speedup_ll=None, flop=False, centre=False):
        c = result.get(case)
        if c is None:
            return None
        out = {}
        for kind, pre_ in (("wall", ""), ("cpu", "cpu_")):
            ok = (c[f"{pre_}speedup_vs_plain"] or 0) >= speedup_plain and c["max_abs_diff"] <= 1e-4
            if speedup_ll is not None:
                ok = ok and (c[f"{pre_}speedup_vs_loss_landscapes"] or 0) >= speedup_ll
            if flop:
                ok = ok and (c["lossprobe_s"] < c["flop_limit_s"] if kind == "wall"
                             else c["cpu_s"]["lossprobe"] < c["flop_limit_cpu_s"])
            if centre:
                ok = ok and c["centre_abs_diff_vs_plain_forward"] <= 1e-4
            out[kind] = bool(ok)
        return out

    m = result["mlp"]
    result["target_met_wall"] = bool(
        m["speedup_vs_plain"] >= 3 and (m["speedup_vs_loss_landscapes"] or 0) >= 3
        and m["lossprobe_s"] < m["flop_limit_s"] and m["max_abs_diff"] <= 1e-4)
    result["target_met_cpu"] = bool(
        m["cpu_speedup_vs_plain"] >= 3 and (m["cpu_speedup_vs_loss_landscapes"] or 0) >= 3
        and m["cpu_s"]["lossprobe"] < m["flop_limit_cpu_s"] and m["max_abs_diff"] <= 1e-4)
    result["targets"] = {
        "prefix_mlp: >=3x loss-landscapes and plain, below FLOP limit, centre within 1e-4":
            met("prefix_mlp", 3, 3, flop=True, centre=True),
        "resnet_head: >=10x plain": met("resnet_head", 10),
        "cnn_bn: >=1.5x plain": met("cnn_bn", 1.5),
    }
    result["load_avg_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
