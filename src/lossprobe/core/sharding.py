"""Model-sharded probes: a model wrapped with FSDP2 (``torch.distributed.fsdp.fully_shard``).

Each rank holds rows of every parameter (FSDP2 shards along the first dimension, in
``torch.chunk`` pieces), and the probes keep every parameter-sized vector the same way: the
flat vector of a sharded `ParamSpace` is the concatenation of this rank's rows of each tensor.
What crosses ranks:

- dot products and norms: partial sums all-reduced (`Shards.reduce`);
- per-unit norms of filter normalisation along a sharded axis: squared sums all-reduced;
- random vectors (directions, Lanczos start vectors, Hutchinson probes): every rank reads the
  seeded stream of the *whole* vector and keeps its rows (`Shards.fill`), so a sharded run
  draws the same vectors as one process;
- a point θ: written into each rank's rows of the model in place; FSDP2's own forward
  all-gathers them layer by layer (the user's parameters are put back after every probe);
- derivatives (gradient, Hessian-vector products): the model is gathered whole for the
  product (`Shards.gathered`: a second-order product needs every layer's parameters in one
  graph), the product is summed over the ranks' batches and each rank keeps its rows.

So per rank: the probe's vectors in 1/W of their size; a forward pass holds what FSDP2 holds
(one layer gathered at a time when it reshards after forward); a derivative holds the whole
model, its graph and two whole vectors (the direction and the product).
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from lossprobe.core.vectors import draw_segments
from lossprobe.errors import UserError


def _fsdp():
    """(FSDPModule, DTensor, Shard), or None when no FSDP2 model can exist in this process: a
    sharded model means that its modules were imported, so nothing is imported here until then
    (start-up time: FSDP2 takes about 0.5 s to import, which `import lossprobe` should not pay)."""
    if "torch.distributed.fsdp" not in sys.modules and "torch.distributed.tensor" not in sys.modules:
        return None
    try:
        from torch.distributed.fsdp import FSDPModule  # start-up time (see above)
        from torch.distributed.tensor import DTensor, Shard  # start-up time (see above)
    except ImportError:  # pragma: no cover - a build without torch.distributed
        return None
    return FSDPModule, DTensor, Shard


def is_sharded(model: nn.Module) -> bool:
    """Whether the model is wrapped with FSDP2's fully_shard (its parameters are DTensors)."""
    kinds = _fsdp()
    if kinds is None:
        return False
    fsdp_module, dtensor, _ = kinds
    return any(isinstance(m, fsdp_module) for m in model.modules()) or \
        any(isinstance(p, dtensor) for p in model.parameters())


def is_dtensor(t) -> bool:
    """Whether `t` is a DTensor (without importing DTensor: see `_fsdp`)."""
    kinds = _fsdp()
    return kinds is not None and isinstance(t, kinds[1])


def _fsdp_modules(model: nn.Module) -> list:
    kinds = _fsdp()
    return [] if kinds is None else [m for m in model.modules() if isinstance(m, kinds[0])]


def resharded(model: nn.Module) -> nn.Module:
    """The model with its parameters sharded (FSDP2 leaves the root's gathered after a forward
    pass): then `named_parameters` gives the DTensors."""
    for m in _fsdp_modules(model):
        m.reshard()
    return model


@dataclass(frozen=True)
class Piece:
    """This rank's rows [r0, r1) of one tensor of `rows` rows (whole shape `shape`)."""

    shape: tuple[int, ...]
    r0: int
    r1: int

    @property
    def per_row(self) -> int:
        return math.prod(self.shape[1:])

    @property
    def local_shape(self) -> tuple[int, ...]:
        return (self.r1 - self.r0, *self.shape[1:]) if self.shape else ()


class Shards:
    """The geometry and collectives of an FSDP2 model's parameters (see the module doc)."""

    def __init__(self, model: nn.Module, names: list[str]):
        params = dict(resharded(model).named_parameters())
        _, dtensor, shard = _fsdp()
        meshes = set()
        self.pieces: dict[str, Piece] = {}
        for name in names:
            p = params[name]
            if not isinstance(p, dtensor):
                raise UserError(f"parameter '{name}' is not sharded while others are: wrap the whole model with "
                                "fully_shard (its root too), so that every parameter is a DTensor")
            if p.device_mesh.ndim != 1 or len(p.placements) != 1 or not isinstance(p.placements[0], shard) \
                    or p.placements[0].dim != 0:
                raise UserError(f"parameter '{name}' is placed as {p.placements} on a {p.device_mesh.ndim}-D mesh: "
                                "lossprobe supports FSDP2's default (Shard(0) on a 1-D mesh), not HSDP or "
                                "tensor parallelism")
            meshes.add(p.device_mesh)
            self.pieces[name] = _piece(p)
        if len(meshes) != 1:
            raise UserError("the model's parameters are sharded over different device meshes; lossprobe needs one")
        mesh = meshes.pop()
        self.group = mesh.get_group()
        self.world = dist.get_world_size(self.group)
        self.rank = dist.get_rank(self.group)
        if self.world != dist.get_world_size():
            raise UserError("the model is sharded over a subgroup of the ranks; lossprobe needs it sharded over all")
        self.model = model
        self.device = next(iter(params.values())).device
        self.sharded = {n: params[n] for n in names}  # the DTensor parameters, kept across (un)sharding
        self.fsdp = _fsdp_modules(model)
        self.global_numel = sum(math.prod(pc.shape) for pc in self.pieces.values())
        self.dirty = False  # points written into the model since the user's values were put back

    # --- vectors ---------------------------------------------------------------------
    def reduce(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over the ranks (in place)."""
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t

    def sum(self, x: float) -> float:
        """A float64 number summed over the ranks (a partial dot product)."""
        t = torch.tensor([x], dtype=torch.float64, device=self.device)
        return float(self.reduce(t).item())

    def intervals(self, entries) -> list[tuple[int, int, int]]:
        """(whole-vector start, stop, local start) of this rank's rows of each entry, in order."""
        out, g = [], 0
        for e in entries:
            pc = self.pieces[e.name]
            per = pc.per_row if pc.shape else 1
            out.append((g + pc.r0 * per, g + pc.r1 * per, e.offset))
            g += math.prod(pc.shape)
        return out

    def fill(self, out: torch.Tensor, gen: torch.Generator, entries, kind: str = "normal") -> torch.Tensor:
        """This rank's rows of the seeded draw of the whole vector (`normal_into` or
        `rademacher_into` of the whole space), streamed in pieces."""
        spans = self.intervals(entries)
        flat = out.view(-1)
        j = 0
        for a, b, x in draw_segments(self.global_numel, gen, kind):
            while j < len(spans) and spans[j][1] <= a:
                j += 1
            i = j
            while i < len(spans) and spans[i][0] < b:
                g0, g1, l0 = spans[i]
                lo, hi = max(a, g0), min(b, g1)
                if hi > lo:
                    flat[l0 + lo - g0:l0 + hi - g0].copy_(x[lo - a:hi - a])
                i += 1
        return out

    def whole(self, name: str, local: torch.Tensor) -> torch.Tensor:
        """The whole tensor `name` from every rank's rows `local` (all-gather; a new tensor)."""
        pc = self.pieces[name]
        rows = pc.shape[0] if pc.shape else 1
        step = -(-rows // self.world)
        pad = torch.zeros((step, *pc.shape[1:]), dtype=local.dtype, device=local.device)
        pad[: pc.r1 - pc.r0].copy_(local.reshape(pc.local_shape))
        parts = [torch.empty_like(pad) for _ in range(self.world)]
        dist.all_gather(parts, pad, group=self.group)
        return torch.cat(parts)[:rows].view(pc.shape)

    def rows_of(self, name: str, whole: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a whole tensor."""
        pc = self.pieces[name]
        return whole.reshape(pc.shape)[pc.r0:pc.r1] if pc.shape else whole

    # --- the model's own parameters ----------------------------------------------------
    def local(self, name: str) -> torch.Tensor:
        return self.sharded[name].to_local()

    def load(self, space, vec: torch.Tensor) -> None:
        """Write this rank's rows `vec` [P_local] into the model in place (FSDP2 gathers them)."""
        resharded(self.model)  # a group left gathered (the root's, by default) would keep the old values
        with torch.no_grad():
            for e in space.entries:
                if e.numel:
                    self.local(e.name).copy_(vec[e.slice].view(e.shape))
        self.dirty = True

    def restore(self, space, home: torch.Tensor) -> None:
        """Put the user's parameters `home` (this rank's rows, kept by the probe) back after a
        probe wrote points into the model."""
        if self.dirty:
            self.load(space, home)
            self.dirty = False

    @contextlib.contextmanager
    def gathered(self):
        """The model with every parameter gathered whole, kept so through forward and any number
        of backward passes (no collective runs inside, so ranks may run different numbers of
        batches); yields {name: whole parameter} (the leaves of the graphs built inside).
        The user's FSDP2 settings are put back after."""
        saved = []
        for m in self.fsdp:
            for g in m._get_fsdp_state()._fsdp_param_groups:
                saved.append((g, g.post_forward_mesh_info, g.reshard_after_backward, g.reduce_grads))
                g.post_forward_mesh_info = None  # no reshard after forward
                g.reshard_after_backward = False
                g.reduce_grads = False
        try:
            resharded(self.model)  # (gathered before the last write: gather again)
            for m in self.fsdp:
                m.unshard()
            params = dict(self.model.named_parameters())
            yield {n: params[n] for n in self.sharded}
        finally:
            for m in self.fsdp:
                m.reshard()
            for g, pf, rab, rg in saved:
                g.post_forward_mesh_info, g.reshard_after_backward, g.reduce_grads = pf, rab, rg


def _piece(p) -> Piece:
    """This rank's rows of a Shard(0) DTensor: torch.chunk pieces (FSDP2's layout)."""
    shape = tuple(p.shape)
    local = p.to_local()
    if not shape:
        return Piece(shape, 0, 1)
    world = p.device_mesh.size()
    rank = p.device_mesh.get_local_rank()
    step = -(-shape[0] // world)
    r0 = min(rank * step, shape[0])
    r1 = min(r0 + step, shape[0])
    if tuple(local.shape) != (r1 - r0, *shape[1:]):
        raise UserError(f"a parameter of shape {shape} holds local rows {tuple(local.shape)} on rank {rank}, not "
                        "torch.chunk's: lossprobe supports FSDP2's default sharding only")
    return Piece(shape, r0, r1)


__all__ = ["Piece", "Shards", "is_dtensor", "is_sharded", "resharded"]
