"""Benchmark: what makes a conv net's per-point forward pass fast on CPU. Prints ONE JSON line.

    python benchmarks/conv_options.py [--threads 1] [--compile]

For the BatchNorm CNN cnn:16-32:bn and the SmallResNet of tests/compat_models.py (16
channels, Fashion-MNIST images repeated to 3 channels), eval mode, 500 Fashion-MNIST test
images: milliseconds (process CPU time, best of 5) of one forward pass, as it is (NCHW),
with input and weights in channels-last layout, with every eval-mode BatchNorm folded into
the convolution before it, both, and the same over batches of 64/128/250 instead of 500;
`--compile` adds torch.compile (inductor) with its compile time. Each variant's largest
output difference from the plain pass is reported (the library keeps what stays within 1e-5).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import torch
from torch import nn


def best_ms(fn, n: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(n):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return round(best * 1e3, 1)


def fold(model: nn.Module) -> nn.Module:
    """A copy with each BatchNorm2d that directly follows a Conv2d in a Sequential folded in."""
    model = copy.deepcopy(model)

    def visit(mod):
        for name, child in list(mod.named_children()):
            visit(child)
        if isinstance(mod, nn.Sequential):
            items = list(mod)
            for i in range(len(items) - 1):
                c, b = items[i], items[i + 1]
                if isinstance(c, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                    _fold_into(c, b)
                    mod[i + 1] = nn.Identity()
        for cn, bn in (("c1", "b1"), ("c2", "b2"), ("stem", "bn")):  # SmallResNet's pairs
            if isinstance(getattr(mod, cn, None), nn.Conv2d) and isinstance(getattr(mod, bn, None), nn.BatchNorm2d):
                _fold_into(getattr(mod, cn), getattr(mod, bn))
                setattr(mod, bn, nn.Identity())

    visit(model)
    return model.eval()


def _fold_into(c: nn.Conv2d, b: nn.BatchNorm2d) -> None:
    s = b.weight / torch.sqrt(b.running_var + b.eps)
    with torch.no_grad():
        bias = (c.bias if c.bias is not None else torch.zeros_like(s)) * s + b.bias - b.running_mean * s
        c.weight.mul_(s.view(-1, 1, 1, 1))
        c.bias = nn.Parameter(bias)


def measure(model, x, compile_: bool) -> dict:
    cl = torch.channels_last
    variants = {"nchw": (model, x), "channels_last": (copy.deepcopy(model).to(memory_format=cl),
                                                       x.contiguous(memory_format=cl))}
    fm = fold(model)
    variants["fold"] = (fm, x)
    variants["fold_channels_last"] = (copy.deepcopy(fm).to(memory_format=cl), x.contiguous(memory_format=cl))
    out = {}
    with torch.inference_mode():
        ref = model(x)
        for name, (m, xx) in variants.items():
            out[name] = {"ms": best_ms(lambda: m(xx)), "max_abs_diff": float((m(xx) - ref).abs().max())}
        for bs in (64, 128, 250):
            for name in ("nchw", "fold_channels_last"):
                m, xx = variants[name]
                parts = [xx[i:i + bs] for i in range(0, len(xx), bs)]
                out[f"{name}_batches_of_{bs}"] = {"ms": best_ms(lambda: [m(p) for p in parts])}
    if compile_:
        for name in ("nchw", "fold_channels_last"):
            m, xx = variants[name]
            try:
                t = time.perf_counter()
                cm = torch.compile(m)
                with torch.inference_mode():
                    y = cm(xx)
                ct = time.perf_counter() - t
                with torch.inference_mode():
                    out[f"compiled_{name}"] = {"ms": best_ms(lambda: cm(xx)), "compile_s": round(ct, 1),
                                               "max_abs_diff": float((y - ref).abs().max())}
            except Exception as e:  # no compiler, unsupported op: say so
                out[f"compiled_{name}"] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="also torch.compile (minutes of compiling)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from compat_models import SmallResNet

    from lossprobe.data import fashion_mnist
    from lossprobe.models import cnn

    x = fashion_mnist().test.subset(500, 0).x
    torch.manual_seed(0)
    result = {"benchmark": "conv_options", "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "torch": torch.__version__, "load_avg_before": [round(v, 2) for v in os.getloadavg()],
              "images": len(x), "unit": "ms of process CPU time per forward pass over all images, best of 5"}
    result["cnn_bn"] = measure(cnn((16, 32), batchnorm=True, hidden=128, seed=0).eval(), x, args.compile)
    result["small_resnet"] = measure(SmallResNet(16, 10).eval(), x.expand(-1, 3, -1, -1).contiguous(), args.compile)
    result["load_avg_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
