"""Every model-sharded probe once, for tests/test_distributed.py: run alone (one process, the
model whole) or under ``torchrun --nproc-per-node 2`` (gloo, CPU) with the model wrapped by
FSDP2's ``fully_shard`` (each Linear, then the root); rank 0 writes the numbers as JSON to argv[1].

Data: 203 samples in batches of 32 (7 batches: the ranks get unequal shares, so the sharded
forward passes must keep in step). Vectors (gradient, products) are gathered whole to compare.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

import lossprobe as lp
from lossprobe.curvature import hessian
from lossprobe.core.sharding import resharded
from lossprobe.curvature.operators import HessianOperator

from dist_probe import finish, samples, spectrum  # (run as a script: tests/ is on the path)


def mlp(seed):
    torch.manual_seed(seed)
    # 17 hidden units: rows split 9 + 8; the LayerNorm's vectors are split too
    return nn.Sequential(nn.Linear(6, 17), nn.LayerNorm(17), nn.Tanh(), nn.Linear(17, 3)).eval()


def shard(model):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for m in model:
        if isinstance(m, nn.Linear):
            fully_shard(m, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def whole(obj, vec):
    """The whole vector from each rank's rows (the vector itself in one process)."""
    sh = obj.space.shards
    if sh is None:
        return vec
    return torch.cat([sh.whole(e.name, vec[e.slice]).reshape(-1) for e in obj.space.entries])


def partial_wrap_refused() -> bool:
    """A model whose root was left unwrapped (some parameters plain) gets one line, not a traceback."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from lossprobe.errors import UserError
    m = mlp(2)
    fully_shard(m[0], mesh=init_device_mesh("cpu", (dist.get_world_size(),)))
    try:
        lp.Objective(m, samples())
    except UserError as e:
        return "not sharded while others are" in str(e)
    return False


def full_state(model):
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).clone() for k, v in model.state_dict().items()}


def main() -> dict:
    torch.set_num_threads(1)
    sharded = "RANK" in os.environ
    if sharded:
        dist.init_process_group("gloo")
    data = samples()
    a, b = mlp(0), mlp(1)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    if sharded:
        a, b = shard(a), shard(b)
    out = {"world": dist.get_world_size() if dist.is_initialized() else 1}
    obj = lp.Objective(a, data, batch_size=32)
    ev = obj.loss_at()
    out["loss"], out["accuracy"] = float(ev.loss[0]), float(ev.accuracy[0])
    loss, grad = obj.loss_and_grad()
    out["grad"] = whole(obj, grad).double().tolist()
    s = lp.surface(obj, None, span=(-1, 1), steps=3, seed=0, progress=False)
    out["surface"] = s.loss.ravel().tolist()
    out["surface_accuracy"] = s.accuracy.ravel().tolist()
    sl = lp.slice(obj, None, span=(-1, 1), steps=3, seed=2, include_bias=True, progress=False)
    out["slice_with_biases"] = sl.loss.ravel().tolist()
    line = lp.interpolate(a, b, data, alphas=[0.0, 0.3, 1.0], batch_size=32)
    out["interpolation"] = line.loss["data"].tolist()
    v_whole = torch.randn(obj.space.global_numel, generator=torch.Generator().manual_seed(5))
    v = torch.empty(obj.space.numel)
    if obj.space.shards is not None:  # this rank's rows of the same vector
        for e, (g0, g1, l0) in zip(obj.space.entries, obj.space.shards.intervals(obj.space.entries)):
            v[l0:l0 + g1 - g0] = v_whole[g0:g1]
    else:
        v = v_whole
    out["hvp"] = whole(obj, HessianOperator(obj).matvec(v)).tolist()
    out.update(spectrum(obj))
    d = hessian.spectral_density(HessianOperator(obj), probes=2, steps=10, seed=3)
    out["density_trace"] = d.slq.trace
    after = full_state(a)
    out["model_unchanged"] = all(torch.equal(before[k], after[k]) for k in before)
    # the user changes the model between probes (a training step, say): the probes follow it
    with torch.no_grad():
        for p in resharded(a).parameters():
            p.mul_(0.9)
    changed = full_state(a)
    out["loss_after_change"] = float(obj.loss_at().loss[0])
    s = lp.surface(obj, None, span=(-1, 1), steps=3, seed=4, progress=False)
    out["surface_after_change"] = s.loss.ravel().tolist()
    out["grad_after_change"] = whole(obj, obj.loss_and_grad(obj.theta0 * 1.01)[1]).double().tolist()
    # distributed=False: every rank reads every batch (nothing is summed over the ranks)
    every = lp.Objective(a, data, batch_size=32, distributed=False)
    out["grad_every_batch_on_every_rank"] = whole(every, every.loss_and_grad()[1]).double().tolist()
    out["loss_every_batch_on_every_rank"] = float(every.loss_at().loss[0])
    out["partial_wrap_refused"] = partial_wrap_refused() if sharded else True
    after = full_state(a)
    out["model_kept_change"] = all(torch.equal(changed[k], after[k]) for k in changed)
    return out


if __name__ == "__main__":
    np.seterr(all="ignore")
    finish(main(), sys.argv[1])
