"""Every probe once, for tests/test_distributed.py: run alone (one process) or under
``torchrun --nproc-per-node 2`` (gloo, CPU); rank 0 writes the numbers as JSON to argv[1].

Data: 203 samples in batches of 32 (7 batches, the last one short), so ranks get unequal
shares; an MLP with a tanh (curvature everywhere), cross-entropy.
"""

from __future__ import annotations

import gc
import json
import os
import sys

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

import lossprobe as lp
from lossprobe.curvature import hessian
from lossprobe.curvature.operators import GGNOperator, HessianOperator


def mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).eval()


def samples() -> tuple[torch.Tensor, torch.Tensor]:
    """203 seeded samples of 6 features and 3 classes."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(203, 6, generator=g), torch.randint(0, 3, (203,), generator=g)


def main() -> dict:
    torch.set_num_threads(1)
    if "RANK" in os.environ:
        dist.init_process_group("gloo")
    data = samples()
    a, b = mlp(0), mlp(1)
    out = {"world": dist.get_world_size() if dist.is_initialized() else 1}
    obj = lp.Objective(a, data, batch_size=32)
    ev = obj.loss_at()
    out["loss"], out["accuracy"] = float(ev.loss[0]), float(ev.accuracy[0])
    loss, grad = obj.loss_and_grad()
    out["grad"] = grad.double().tolist()
    s = lp.surface(obj, None, span=(-1, 1), steps=3, seed=0, progress=False)
    out["surface"] = s.loss.ravel().tolist()
    out["surface_accuracy"] = s.accuracy.ravel().tolist()
    line = lp.interpolate(a, b, data, alphas=[0.0, 0.3, 1.0], batch_size=32)
    out["interpolation"] = line.loss["data"].tolist()
    v = torch.randn(obj.space.numel, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out["hvp"] = HessianOperator(obj).matvec(v).tolist()
    out["ggn"] = GGNOperator(obj).matvec(v).tolist()
    out.update(spectrum(obj))
    return out


def spectrum(obj) -> dict:
    """Lanczos top-2 (basis in memory and on disk) and the Hutch++ trace."""
    e = hessian.eigenvalues(HessianOperator(obj), k=2, tol=1e-8)
    # the basis on disk (large models' default): each rank keeps its own file, the products are summed
    d = hessian.eigenvalues(HessianOperator(obj), k=2, tol=1e-8, basis="disk")
    t = hessian.trace(HessianOperator(obj), matvecs=12, seed=1)
    return {"eigenvalues": e.values.tolist(), "eigenvalues_disk": d.values.tolist(), "trace": t.trace}


def finish(out: dict, path: str) -> None:
    """Rank 0 (or the one process) writes the numbers; the process group ends; the process exits.

    Called after main() has returned, so its models (FSDP2's hold the process group) are freed
    before the group is destroyed. The process then leaves with os._exit, skipping interpreter
    teardown: there a gloo worker thread that drops a finished all-gather's tensors waits for
    the GIL, is unwound, and aborts the process ("terminate called without an active
    exception", pytorch/pytorch#190489) after every number is written; 2 of 155 runs of
    fsdp_probe.py did so on this machine before this exit.
    """
    gc.collect()
    if not dist.is_initialized() or dist.get_rank() == 0:
        with open(path, "w") as f:
            json.dump(out, f)
    if dist.is_initialized():
        dist.barrier()  # rank 0's file is written before any rank leaves
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    np.seterr(all="ignore")
    finish(main(), sys.argv[1])
