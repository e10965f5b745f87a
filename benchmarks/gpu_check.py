"""Every capability once on a GPU, checked against the same call on the CPU; one JSON line.

Workload: the compatibility-matrix models of tests/compat_models.py (ResNet with BatchNorm,
LSTM, GroupNorm CNN, tied weights, two inputs, regression, tiny HF BERT and GPT-2) with
their small data; on each: interpolation, a 3×3 surface, the top Hessian eigenvalue,
a Hutch++ trace, the critical-point probe and one epoch of curve training, on the model's
device. Every number must match the CPU's within a relative 1e-3 (GPU kernels differ in
rounding), and the result must stay on the device where the model lives.

Without CUDA (or MPS) it prints {"skipped": ...} and exits 0, so CI machines can run it.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def device() -> str | None:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return None


def run_all(case, dev: str) -> dict:
    import lossprobe as lp
    from lossprobe.curvature import hessian, sharpness
    from lossprobe.core.batching import move
    from lossprobe.connectivity.curves import Curve, CurveTrainConfig, evaluate_curve, train_curve

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


def main() -> int:
    from compat_models import cases

    dev = device()
    if dev is None:
        print(json.dumps({"benchmark": "gpu_check", "skipped": "no CUDA or MPS device; nothing to check",
                          "torch": torch.__version__}))
        return 0
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
    print(json.dumps({"benchmark": "gpu_check", "device": dev, "name": torch.cuda.get_device_name(0) if dev == "cuda"
                      else dev, "torch": torch.__version__, "cases": rows, "failures": failures,
                      "ok": not failures}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
