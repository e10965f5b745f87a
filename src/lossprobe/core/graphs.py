"""Per-batch autograd graphs kept across products, within a memory budget.

A curvature product (Hessian, GGN, Fisher) over data in batches needs, per batch, a graph
built by a forward pass and a first backward pass; the product itself is one more
backward pass through it. Rebuilding the graph for every product repeats the expensive
part. `GraphCache` keeps each batch's graph while their total size stays under a budget
and rebuilds only the batches that do not fit, for every product:

    cache = GraphCache(objective, theta, build, budget=None)    # default: half the free memory
    for th, item, count in cache:          # every batch: kept ones from memory, the rest built now
        ...                                # e.g. torch.autograd.grad(item, th, v, retain_graph=True)
    cache.count                            # total count (the loss's denominator)

``build(th, batch) -> (item, count)`` builds one batch's graph at the leaf ``th`` (a fresh
copy of θ that requires grad); `item` holds what the product differentiates (for the
Hessian, the gradient built with ``create_graph=True``). A graph's size is measured while it
is built, as the bytes of the distinct storages autograd saves for backward (saved-tensor
hooks), so the budget is honoured without guessing. Batches are kept in data order until
the next one would exceed the budget; from then on batches are rebuilt per pass.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Callable, Iterator

import torch

from lossprobe.core.batching import at_batch
from lossprobe.errors import UserError

DEFAULT_FRACTION = 0.5


def free_memory(device: torch.device | str | None = None) -> int | None:
    """Bytes of memory available now on `device`: CUDA's free memory, else the host's
    available RAM (/proc/meminfo MemAvailable, or free pages); None when unknown."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def default_budget(device=None, fraction: float = DEFAULT_FRACTION) -> float:
    """`fraction` of the memory available on `device` now (1 GB when that is unknown)."""
    free = free_memory(device)
    return fraction * (free if free is not None else 1e9)


_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


def parse_bytes(text: str | float | int) -> float:
    """'2G', '500MB', '1.5GiB', '0', 1e9 -> bytes; 'inf' for no limit."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        s = str(text).strip().lower()
        if s in ("inf", "unlimited", "none"):
            return float("inf")
        m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)", s)
        if not m or m.group(2) not in _UNITS:
            raise UserError(f"memory size {text!r} not understood; use e.g. 500M, 2G, 1.5GiB, 0 or inf")
        value = float(m.group(1)) * _UNITS[m.group(2)]
    if value < 0:
        raise UserError(f"memory size must be >= 0, got {text!r}")
    return value


class _Measure:
    """Bytes of the distinct storages autograd saves while the block runs (leaving out the
    storages in `exclude`: the parameters themselves, which the graph does not add)."""

    def __init__(self, exclude=()):
        self.seen: dict = {}
        self.exclude = set(exclude)

    def pack(self, t):
        try:
            s = t.untyped_storage()
            if s.data_ptr() in self.exclude:
                return t
            self.seen[(s.data_ptr(), str(t.device))] = s.nbytes()
        except Exception:  # tensors without storage (e.g. some subclasses): size unknown
            self.seen[("n", id(t))] = t.numel() * t.element_size()
        return t

    @property
    def bytes(self) -> int:
        return int(sum(self.seen.values()))


class GraphCache:
    """Each batch's graph, kept across passes while the total stays within `budget` bytes.

    Args:
        objective: the `Objective` (its data, mode and forward).
        theta: the point: a flat vector [P] (one leaf aliasing it is shared by every batch)
            or `lossprobe.core.objective.Leaves` (per-tensor leaves aliasing the parameters).
        build: ``build(leaves, batch) -> (item, count)`` (see the module doc).
        budget: bytes that kept graphs may take; None: `DEFAULT_FRACTION` of the memory
            available when the first graph is built; 0 keeps nothing (rebuild every pass);
            ``float('inf')`` keeps everything.
        context: a context manager factory entered around every build and every pass
            (the Hessian uses math attention kernels, which have double backward).
    """

    def __init__(self, objective, theta, build: Callable, budget: float | None = None,
                 context: Callable | None = None):
        self.objective = objective
        if isinstance(theta, torch.Tensor):
            theta = theta.detach().requires_grad_(True)  # one shared leaf (aliases θ: no copy)
        self.leaves = theta
        self.build = build
        self.budget = None if budget is None else parse_bytes(budget)
        self.context = context
        self.kept: dict[int, tuple] = {}
        self.bytes = 0
        self.full = False  # a batch did not fit: later batches are not kept either
        self.count: float | None = None
        self.n_batches: int | None = None
        self.built = 0  # graphs built so far (kept or not)

    def _build(self, batch):
        th = self.leaves
        own = th.storages() if hasattr(th, "storages") else {th.untyped_storage().data_ptr()}
        meas = _Measure(own)
        with torch.autograd.graph.saved_tensors_hooks(meas.pack, lambda t: t):
            item, count = self.build(th, batch)
        self.built += 1
        # what the graph holds: the tensors saved for backward and the item itself (the gradient)
        held = sum(t.numel() * t.element_size() for t in (item if isinstance(item, (tuple, list)) else [item])
                   if isinstance(t, torch.Tensor))
        return th, item, float(count), meas.bytes + held

    def __iter__(self) -> Iterator[tuple[torch.Tensor, object, float]]:
        obj = self.objective
        first = self.count is None
        if self.budget is None:
            self.budget = default_budget(obj.device)
        total, n = 0.0, 0
        ctx = self.context() if self.context is not None else contextlib.nullcontext()
        with ctx, obj.mode():
            if not first and self.n_batches is not None and len(self.kept) == self.n_batches:
                for i in range(self.n_batches):  # everything kept: no need to read the data
                    th, item, count = self.kept[i]
                    yield th, item, count
                return
            for i, batch in enumerate(obj.batches()):
                n += 1
                hit = self.kept.get(i)
                if hit is not None:
                    total += hit[2]
                    yield hit
                    continue
                with at_batch(i, obj.data, obj.batch_size):
                    th, item, count, size = self._build(batch)
                total += count
                if first and not self.full and self.bytes + size <= self.budget:
                    self.kept[i] = (th, item, count)
                    self.bytes += size
                elif first:
                    self.full = True
                yield th, item, count
                del item
        if first:
            total = float(obj._all_reduce(torch.tensor([total], dtype=torch.float64, device=obj.device))[0][0]) \
                if getattr(obj, "dist", None) is not None else total
            self.count, self.n_batches = total, n
            if total == 0:
                raise UserError("the data yielded no samples")

    def release(self) -> None:
        """Drop every kept graph (they are rebuilt on the next pass)."""
        self.kept.clear()
        self.bytes = 0
        self.full = False
        self.count = None
        self.n_batches = None

    @property
    def stats(self) -> dict:
        """Batches kept, their bytes, the budget, and graphs built so far."""
        return {"batches": self.n_batches, "kept": len(self.kept), "bytes": self.bytes, "budget": self.budget,
                "built": self.built}
