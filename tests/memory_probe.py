"""Peak memory of every probe above the loaded model(s), in model sizes, for tests/test_memory.py.

Run as a script (its own process, so that the resident set is this workload's): an MLP of
8.9M parameters (512, eight hidden layers of 1024, 10: 35.7 MB per model size M, so every
parameter-sized vector is mmapped by malloc and given back when freed; no tensor is more than
12 % of the model, as in a transformer) on 64 samples; per probe the peak resident
set (VmHWM, reset before it) above the resident set just before it, from a second round of
every probe (the first pays the libraries' one-time buffers, tens of MB that would be a model
size here and nothing on a real model). The small-model allowance (`lossprobe.core.memory.SMALL`:
more vectors when they fit in 256 MiB) is switched off, so the contract proper is measured.
Prints one JSON object.
"""

from __future__ import annotations

import json
import sys
import warnings

import torch
from torch import nn


def _status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def measure(fn):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status("VmRSS")
    out = fn()
    return out, _status("VmHWM") - base


def mlp(seed):
    torch.manual_seed(seed)
    layers = [nn.Linear(512, 1024), nn.Tanh()]
    for _ in range(8):
        layers += [nn.Linear(1024, 1024), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(1024, 10)).eval()


def main() -> None:
    torch.set_num_threads(1)
    import lossprobe as lp
    import lossprobe.core.memory as memory
    from lossprobe.curvature import hessian
    from lossprobe.curvature.operators import HessianOperator

    memory.SMALL = 0  # the contract proper: no extra vectors for small models
    kw = {}
    if sys.argv[1:] == ["gpt2"]:
        a, b = gpt2(0), gpt2(1)
        x = torch.randint(0, 16384, (4, 32), generator=torch.Generator().manual_seed(0))
        data, kw = {"input_ids": x, "labels": x}, {"loss": "model", "batch_size": 4}
    else:
        a, b = mlp(0), mlp(1)
        g = torch.Generator().manual_seed(0)
        data = (torch.randn(64, 512, generator=g), torch.randint(0, 10, (64,), generator=g))
    M = sum(p.numel() for p in a.parameters()) * 4
    for _ in range(2):  # the second round is reported
        res = {"M_bytes": M, **round_(a, b, data, kw, small=bool(kw))}
    print(json.dumps(res))


def gpt2(seed):
    """A small GPT-2 (2 blocks of width 256, vocabulary 16384: 5.8M parameters, 23 MB per M: above
    `core.vectors.CHUNK`, so no probe takes the small-model float64 paths)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_embd=256, n_layer=2, n_head=4, vocab_size=16384, n_positions=64,
                                      bos_token_id=0, eos_token_id=0)).eval()


def round_(a, b, data, kw, small: bool = False) -> dict:
    """Every probe's peak (`small`: the landscape probes, top-1 and the trace only)."""
    import lossprobe as lp
    from lossprobe.curvature import hessian
    from lossprobe.curvature.operators import HessianOperator

    res = {}
    def graph():  # one gradient graph and one product through it, the vectors made beforehand
        H = HessianOperator(lp.Objective(a, data, **kw))
        v, out = torch.ones(H.n), torch.empty(H.n)
        return measure(lambda: H.apply(v, out))[1]
    graph()  # once first: the libraries' one-time buffers are not any probe's
    res["graph"] = graph()
    # the activations of one batch (one forward pass and its loss): part of every probe's allowance
    _, res["activations"] = measure(lambda: lp.Objective(a, data, **kw).loss_at())
    _, res["interpolation"] = measure(lambda: lp.interpolate(a, b, data, alphas=[0, 0.5, 1, 1.5], **kw))
    _, res["surface"] = measure(lambda: lp.surface(a, data, steps=3, progress=False, **kw))
    _, res["slice"] = measure(lambda: lp.slice(a, data, steps=5, progress=False, **kw))
    for k in (1, 2) if not small else (1,):
        for basis in ("auto", "memory") if not small else ("auto",):
            def top(k=k, basis=basis):  # 'auto' spills the basis to disk on these models
                H = HessianOperator(lp.Objective(a, data, **kw))
                with warnings.catch_warnings():  # a few restarts reach the peak: not run to convergence
                    warnings.simplefilter("ignore")
                    r = hessian.eigenvalues(H, k=k, tol=1e-6, max_steps=14, basis=basis)
                return H.graphs.stats["bytes"], r
            name = f"top{k}" + ("_memory" if basis == "memory" else "")
            (graph, r), res[name] = measure(top)
            res[f"{name}_graph"] = graph
            res[f"{name}_restarts"] = r.restarts

    def tr():
        H = HessianOperator(lp.Objective(a, data, **kw))
        hessian.trace(H, matvecs=12)
        return H.graphs.stats["bytes"]
    res["trace_graph"], res["trace"] = measure(tr)

    if small:
        return res

    def dens():
        H = HessianOperator(lp.Objective(a, data, **kw))
        hessian.spectral_density(H, probes=1, steps=12)
        return H.graphs.stats["bytes"]
    res["density_graph"], res["density"] = measure(dens)
    return res


if __name__ == "__main__":
    sys.exit(main())
