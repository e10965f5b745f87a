"""Parameter space: a model's parameters (and optionally buffers) as one flat vector.

Every probe works in this space. `ParamSpace` records the layout (name, shape, kind,
offset) once; `flatten` and `unflatten` move between a flat vector of length `numel`
and the `{name: tensor}` dicts that `torch.func.functional_call` takes. `unflatten`
returns views into the flat vector, so it copies nothing.

Kinds come from the module that owns each tensor, not from its name:
    weight  weights of Linear, Conv, ConvTranspose, Bilinear, Embedding, RNN/LSTM/GRU
            (``weight_ih_l*``, ``weight_hh_l*``), MultiheadAttention, HF ``Conv1D``
    bias    their biases (including an RNN's ``bias_ih_l*`` and ``bias_hh_l*``)
    norm    parameters of normalisation layers (BatchNorm, LayerNorm, GroupNorm, RMSNorm,
            InstanceNorm, and any module whose class name ends in "Norm")
    buffer  floating-point buffers, e.g. BatchNorm running statistics
Parameters of other modules fall back to their name: a tensor named ``*bias*`` with one
dimension is a bias, anything else a weight.

Each weight also records its output-unit axis (`Entry.unit_axis`), the axis that indexes
its output units (filters): 0 for Linear, Conv, RNN and attention weights and Embedding
rows (one token's vector), 1 for ConvTranspose and HF ``Conv1D`` (stored [in, out]).
Filter normalisation rescales each unit along that axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch
from torch import nn

from lossprobe.core.sharding import Shards, is_dtensor, is_sharded, resharded
from lossprobe.core.vectors import dot64, norm64
from lossprobe.errors import UserError

KINDS = ("weight", "bias", "norm", "buffer")

_NORM_TYPES = tuple(t for t in (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    getattr(nn, "RMSNorm", None),
) if t is not None)
_UNIT0_TYPES = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd, nn.Embedding, nn.EmbeddingBag,
                nn.modules.rnn.RNNBase, nn.modules.rnn.RNNCellBase, nn.MultiheadAttention)


def classify(module: nn.Module, pname: str, p: torch.Tensor) -> tuple[str, int | None]:
    """(kind, output-unit axis) of parameter `pname` owned directly by `module`."""
    cls = type(module).__name__
    if isinstance(module, _NORM_TYPES) or cls.endswith("Norm") or cls.endswith("NormLayer"):
        return "norm", None
    is_bias = "bias" in pname and p.ndim <= 1
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return ("bias", None) if is_bias else ("weight", 1 if p.ndim >= 2 else None)
    if cls == "Conv1D" and p.ndim == 2:  # HF GPT-2 style: weight [in, out], y = x @ W + b
        return "weight", 1
    if isinstance(module, _UNIT0_TYPES) or cls == "Conv1D":
        return ("bias", None) if is_bias else ("weight", 0 if p.ndim >= 2 else None)
    if is_bias:
        return "bias", None
    return "weight", (0 if p.ndim >= 2 else None)


@dataclass(frozen=True)
class Entry:
    """One tensor of the layout: where it lives in the flat vector and what it is."""

    name: str
    shape: tuple[int, ...]
    kind: str
    offset: int
    numel: int
    unit_axis: int | None = None  # axis of the output units (filters) for weights

    def units(self, segment: torch.Tensor) -> torch.Tensor:
        """This tensor's slice of a flat vector as [units, rest]: one row per output unit.

        Tensors without a unit axis (biases, norm parameters) are one unit.
        """
        t = segment.view(self.shape)
        if self.unit_axis is None or len(self.shape) < 2:
            return t.reshape(1, -1)
        return t.movedim(self.unit_axis, 0).reshape(self.shape[self.unit_axis], -1)

    def per_unit(self, factors: torch.Tensor) -> torch.Tensor:
        """Per-unit values [units] (as `units` orders them) spread over the tensor, flat [numel]."""
        if self.unit_axis is None or len(self.shape) < 2:
            return factors.reshape(-1)[:1].expand(self.numel)
        shape = [1] * len(self.shape)
        shape[self.unit_axis] = -1
        return factors.reshape(shape).expand(self.shape).reshape(-1)

    @property
    def slice(self) -> slice:
        return slice(self.offset, self.offset + self.numel)


class ParamSpace:
    """Layout of a model's parameters as one flat vector.

    Args:
        model: the module whose parameters define the space.
        include_buffers: also place floating-point buffers (BatchNorm running mean and
            variance) in the vector, so that they move with the parameters.
        trainable_only: leave out parameters with ``requires_grad=False``.
    """

    def __init__(self, model: nn.Module, include_buffers: bool = False, trainable_only: bool = False):
        if not isinstance(model, nn.Module):
            raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
        sharded = is_sharded(model)
        if sharded:
            resharded(model)
        if sharded and include_buffers:
            raise UserError("include_buffers is not supported for a model sharded with fully_shard (its buffers "
                            "are not sharded); probe its parameters only")
        kinds: dict[str, tuple[str, int | None]] = {}
        for mname, module in model.named_modules():
            for pname, p in module.named_parameters(recurse=False):
                kinds[f"{mname}.{pname}" if mname else pname] = classify(module, pname, p)
        entries: list[Entry] = []
        offset = 0
        # named_parameters() lists a tied tensor once, under its first name
        for name, p in model.named_parameters():
            if trainable_only and not p.requires_grad:
                continue
            kind, axis = kinds.get(name, ("weight", None))
            t = p.to_local() if is_dtensor(p) else p  # a sharded model's vectors hold this rank's rows
            entries.append(Entry(name, tuple(t.shape), kind, offset, t.numel(), axis))
            offset += t.numel()
        if include_buffers:
            for name, b in model.named_buffers():
                if b.is_floating_point():
                    entries.append(Entry(name, tuple(b.shape), "buffer", offset, b.numel()))
                    offset += b.numel()
        if offset == 0 and not sharded:
            raise UserError("the model has no parameters to probe")
        self.entries: tuple[Entry, ...] = tuple(entries)
        self.numel = offset
        self.include_buffers = include_buffers
        self._by_name = {e.name: e for e in entries}
        first = next(iter(model.parameters()))
        self.dtype = first.dtype
        self.device = first.device
        # FSDP2 (see `lossprobe.core.sharding`): this rank's rows; dots and draws span the ranks
        self.shards: Shards | None = Shards(model, [e.name for e in entries]) if sharded else None
        self.global_numel = self.shards.global_numel if sharded else self.numel

    # --- layout --------------------------------------------------------------------
    def __len__(self) -> int:
        return self.numel

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> Entry:
        return self._by_name[name]

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def mask(self, kinds: Iterable[str]) -> torch.Tensor:
        """Boolean mask [numel] that is True on entries of the given kinds."""
        kinds = set(kinds)
        unknown = kinds - set(KINDS)
        if unknown:
            raise UserError(f"unknown parameter kind(s) {sorted(unknown)}; choose from {list(KINDS)}")
        m = torch.zeros(self.numel, dtype=torch.bool)
        for e in self.entries:
            if e.kind in kinds:
                m[e.slice] = True
        return m

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """aᵀb of two vectors of this space in float64 (summed over the ranks of a sharded model)."""
        d = dot64(a, b)
        return self.shards.sum(d) if self.shards is not None else d

    def norm(self, a: torch.Tensor) -> float:
        """‖a‖ in float64 (over the whole vector of a sharded model)."""
        if self.shards is None:
            return norm64(a)
        return math.sqrt(max(self.shards.sum(dot64(a, a)), 0.0))

    def describe(self) -> list[dict]:
        return [{"name": e.name, "shape": list(e.shape), "kind": e.kind, "numel": e.numel, "unit_axis": e.unit_axis}
                for e in self.entries]

    # --- conversions ---------------------------------------------------------------
    def flatten(self, source: nn.Module | Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
        """Concatenate the model's (or state dict's) tensors into one vector [numel]."""
        tensors = self._tensors(source)
        out = torch.empty(self.numel, dtype=dtype or self.dtype, device=self.device)
        with torch.no_grad():
            for e in self.entries:
                t = tensors.get(e.name)
                if t is None:
                    raise UserError(f"parameter '{e.name}' is missing from the given model or state dict")
                if self.shards is not None and tuple(t.shape) != e.shape \
                        and tuple(t.shape) == self.shards.pieces[e.name].shape:
                    t = self.shards.rows_of(e.name, t)  # a whole tensor (a full state dict): this rank's rows
                if tuple(t.shape) != e.shape:
                    raise UserError(
                        f"parameter '{e.name}' has shape {tuple(t.shape)}, expected {e.shape}: "
                        "the two models have different architectures"
                    )
                out[e.slice] = t.detach().reshape(-1).to(out)
        return out

    def unflatten(self, vec: torch.Tensor, prefix: str = "") -> dict[str, torch.Tensor]:
        """Views of `vec` shaped as the model's tensors (no copies), names prefixed by `prefix`."""
        self.check_vector(vec)
        return {prefix + e.name: vec[e.slice].view(e.shape) for e in self.entries}

    def load_into(self, model: nn.Module, vec: torch.Tensor) -> nn.Module:
        """Copy `vec` into the model's parameters (and buffers, if in the space) in place."""
        self.check_vector(vec)
        live = self._tensors(model)
        with torch.no_grad():
            for e in self.entries:
                live[e.name].copy_(vec[e.slice].view(e.shape))
        return model

    def check_vector(self, vec: torch.Tensor, what: str = "vector") -> None:
        if not isinstance(vec, torch.Tensor) or vec.ndim != 1 or vec.numel() != self.numel:
            got = tuple(vec.shape) if isinstance(vec, torch.Tensor) else type(vec).__name__
            raise UserError(f"{what} has shape {got}, expected ({self.numel},) to match the model's parameters")

    def check_compatible(self, other: "ParamSpace") -> None:
        """Raise naming the first parameter where two layouts differ."""
        for a, b in zip(self.entries, other.entries):
            if a.name != b.name or a.shape != b.shape:
                raise UserError(
                    f"the models differ at parameter '{a.name}' {a.shape} vs '{b.name}' {b.shape}: "
                    "they must have the same architecture"
                )
        if len(self.entries) != len(other.entries):
            longer = self if len(self.entries) > len(other.entries) else other
            extra = longer.entries[min(len(self.entries), len(other.entries))]
            raise UserError(f"the models differ at parameter '{extra.name}': one model has it, the other does not")

    def _tensors(self, source: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.shards is not None and source is self.shards.model:
            return {n: self.shards.local(n) for n in self._by_name}
        if isinstance(source, nn.Module):
            d = dict((resharded(source) if self.shards is not None else source).named_parameters())
            if self.include_buffers:
                d.update(dict(source.named_buffers()))
            return _local(d)
        if isinstance(source, Mapping):
            return _local(dict(source))
        raise TypeError(f"expected a module or a state dict, got {type(source).__name__}")


def _local(d: dict) -> dict:
    """DTensors (an FSDP2 model's parameters or sharded state dict) as this rank's rows."""
    if any(is_dtensor(t) for t in d.values()):
        return {k: (t.to_local() if is_dtensor(t) else t) for k, t in d.items()}
    return d


def tied_names(model: nn.Module) -> dict[str, str]:
    """{alias: first name} for every tensor the model holds under more than one name."""
    first: dict[int, str] = {}
    out = {}
    for k, v in model.state_dict(keep_vars=True).items():
        if not v.numel():
            continue
        if id(v) in first:
            out[k] = first[id(v)]
        else:
            first[id(v)] = k
    return out
