"""Data-parallel evaluation under torch.distributed (torchrun): each rank its share of the
batches, sums and counts all-reduced, so every rank holds the numbers of one process.

    torchrun --nproc-per-node 2 my_probe.py      # inside: dist.init_process_group("gloo" | "nccl")

An `Objective` built while a process group of more than one rank is initialised shards its
batches by index (rank r reads batches r, r + W, r + 2W, ...: each batch is the same one a
single process evaluates, so per-batch results are identical) and all-reduces what every
probe sums: loss and accuracy sums and counts (float64), gradients, curvature products and
the counts they are divided by. Everything else (directions, seeds, Lanczos, Hutch++) is
computed identically on every rank from identical inputs, so the ranks stay in lockstep and
agree bit for bit. A `DataLoader` whose sampler is a `DistributedSampler` is already sharded
by the user and is read as it is.

Only sums of P-length vectors cross ranks (one all-reduce per product); nothing is gathered.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch
import torch.distributed as dist

from lossprobe.errors import UserError


def active() -> bool:
    """Whether a torch.distributed process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """True on rank 0, or without a process group (the process that writes files)."""
    return rank() == 0


class DataParallel:
    """This rank's share of the batches and the all-reduce of sums (see the module doc)."""

    def __init__(self, group=None):
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)

    def shard(self, batches: Iterable, data=None) -> Iterator:
        if _presharded(data):
            yield from batches
            return
        for i, b in enumerate(batches):
            if i % self.world == self.rank:
                yield b

    def all_reduce(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each tensor summed over the ranks (one collective for all of them when they share a
        dtype and device; large ones, e.g. curvature products, in place)."""
        out = list(tensors)
        small = [i for i, t in enumerate(tensors) if t.numel() <= 4096]
        if len(small) > 1 and len({(tensors[i].dtype, tensors[i].device) for i in small}) == 1:
            flat = torch.cat([tensors[i].reshape(-1) for i in small])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
            pos = 0
            for i in small:
                n = tensors[i].numel()
                out[i] = flat[pos:pos + n].view_as(tensors[i])
                pos += n
        else:
            small = []
        for i, t in enumerate(tensors):
            if i in small:
                continue
            work = t if t.is_contiguous() else t.contiguous()
            dist.all_reduce(work, op=dist.ReduceOp.SUM, group=self.group)
            if work is not t:
                t.copy_(work)
            out[i] = t
        return tuple(out)

    def broadcast_object(self, obj, src: int = 0):
        box = [obj]
        dist.broadcast_object_list(box, src=src, group=self.group)
        return box[0]


def _presharded(data) -> bool:
    source = getattr(data, "source", None)
    sampler = getattr(source, "sampler", None)
    return isinstance(sampler, torch.utils.data.distributed.DistributedSampler)


def data_parallel(distributed: bool | None = None) -> DataParallel | None:
    """The data-parallel helper for an objective: None without a process group (or with
    ``distributed=False``)."""
    if distributed is False:
        return None
    if not active():
        if distributed:
            raise UserError("distributed=True needs an initialised torch.distributed process group of 2+ ranks "
                            "(run under torchrun and call torch.distributed.init_process_group first)")
        return None
    return DataParallel()


__all__ = ["DataParallel", "active", "data_parallel", "is_main", "rank"]
