"""The types of a permutation spec: which tensor axes each permutation group moves.

A `PermutationSpec` maps group names to their `Member`s (a tensor name, the axis the group
permutes and its layout along that axis), names the layers REPAIR rescales and the
normalisation layers that follow the groups, and records the `Probe` points where
activation matching reads each group's features. The derivations (`fx`, `hf`) build
specs; `matching` applies and searches them. This module imports nothing from either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, NamedTuple

import torch

from lossprobe.errors import UserError


class Member(NamedTuple):
    """One tensor axis (or a slice of it) that a group's permutation reorders.

    Entries ``start .. start + length`` of axis `axis` of tensor `name` are laid out as
    [outer, n, inner]; the permutation (of n units) reorders the middle factor, the same
    way in each of the `outer` blocks, moving `inner` consecutive entries together.
    `length` None means the rest of the axis. Plain layouts have outer = inner = 1.
    """

    name: str
    axis: int
    inner: int = 1
    outer: int = 1
    start: int = 0
    length: int | None = None

    def span(self, size: int) -> int:
        return size - self.start if self.length is None else self.length

    def index(self, perm: torch.Tensor, size: int) -> torch.Tensor:
        """A full-length index along the axis that applies `perm` (for index_select)."""
        idx = torch.arange(size, device=perm.device)
        n = len(perm)
        sub = (torch.arange(self.outer, device=perm.device)[:, None, None] * (n * self.inner)
               + perm[None, :, None] * self.inner + torch.arange(self.inner, device=perm.device)[None, None, :])
        span = self.outer * n * self.inner
        idx[self.start:self.start + span] = sub.reshape(-1) + self.start
        return idx

    def moved(self, t: torch.Tensor, n: int) -> torch.Tensor:
        """[n, rest]: the permuted factor in front, everything else flattened."""
        t = t.narrow(self.axis, self.start, self.span(t.shape[self.axis])).movedim(self.axis, 0)
        rest = t.shape[1:]
        t = t.reshape(self.outer, n, self.inner, *rest).movedim(1, 0)
        return t.reshape(n, -1)

    def describe(self) -> str:
        extra = []
        if self.inner != 1:
            extra.append(f"blocks of {self.inner}")
        if self.outer != 1:
            extra.append(f"in each of {self.outer} blocks")
        if self.start or self.length is not None:
            extra.append(f"entries {self.start}..{'' if self.length is None else self.start + self.length}")
        return f"'{self.name}' axis {self.axis}" + (f" ({', '.join(extra)})" if extra else "")


def as_member(m) -> Member:
    if isinstance(m, Member):
        return m
    if isinstance(m, Mapping):
        return Member(str(m["name"]), int(m["axis"]), int(m.get("inner", 1)), int(m.get("outer", 1)),
                      int(m.get("start", 0)), None if m.get("length") is None else int(m["length"]))
    m = tuple(m)
    if not 2 <= len(m) <= 6:
        raise UserError(f"a permutation group member is (name, axis[, inner[, outer[, start, length]]]), got {m}")
    name, axis, *rest = m
    vals = [int(v) if v is not None else None for v in rest]
    return Member(str(name), int(axis), *vals)


@dataclass
class Probe:
    """Where activation matching reads a group's units: a module's output (hook) or an fx
    node's value, channel axis `dim`, entries `start .. start + length` of that axis
    (None: all of it); `post` marks a feature after a nonlinearity."""

    kind: str  # "module" or "node"
    name: str
    dim: int
    post: bool = False
    start: int = 0
    length: int | None = None
    index: int | None = None  # the element of a tuple output (HF blocks return tuples)
    # the groups acting on the probe's channel axis: (group, outer, inner) each; empty
    # means the group the probe is listed under, plainly
    layout: tuple = ()


@dataclass
class PermutationSpec:
    """Which tensor axes each permutation acts on.

    `groups` maps a group name to its members (`Member`, or tuples ``(name, axis)``,
    ``(name, axis, inner)``, ``(name, axis, inner, outer, start, length)``). Permuting a
    group by P (a permutation of n units) reorders each member's axis as `Member`
    describes. Tensor names are state-dict keys (parameters and buffers); a tensor tied
    under several names is listed once, under its first name, and `aliases` maps the
    other names to it.

    `repair_layers` names the Linear/Conv modules whose outputs REPAIR rescales (hidden
    layers not followed by BatchNorm) and `norm_layers` the BatchNorm modules whose
    statistics it re-estimates; `probes` says where activation matching reads each group;
    `structure` records how the groups were found. All are filled in by `permutation_spec`.

    `blocks` records the structured symmetries: for a group that permutes whole blocks of
    channels (GroupNorm groups, attention heads), the families of groups that permute the
    channels within each block, one group per block in block order (a family per kind of
    block the group moves: the heads' Q/K dimensions and their V dimensions). Matching
    solves such a group jointly with its families (`matching.match_weights`).
    """

    groups: dict[str, list[Member]]
    repair_layers: list[str] = field(default_factory=list)
    norm_layers: list[str] = field(default_factory=list)
    probes: dict[str, list[Probe]] = field(default_factory=dict, repr=False)
    aliases: dict[str, str] = field(default_factory=dict, repr=False)
    structure: str = "hand-written"
    blocks: dict[str, list[list[str]]] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.groups = {str(g): [as_member(m) for m in members] for g, members in self.groups.items()}

    def sizes(self, state: Mapping[str, torch.Tensor]) -> dict[str, int]:
        """Units per group, checked against the tensors in `state`."""
        out = {}
        for g, members in self.groups.items():
            n = None
            for m in members:
                if m.name not in state:
                    raise UserError(f"permutation group '{g}' names '{m.name}', which the model does not have")
                t = state[m.name]
                if not -t.ndim <= m.axis < t.ndim:
                    raise UserError(f"permutation group '{g}': '{m.name}' has no axis {m.axis} (shape {tuple(t.shape)})")
                size = t.shape[m.axis]
                span = m.span(size)
                if m.inner <= 0 or m.outer <= 0 or m.start < 0 or span <= 0 or m.start + span > size \
                        or span % (m.inner * m.outer):
                    raise UserError(f"permutation group '{g}': {m.describe()} does not fit its size {size}")
                k = span // (m.inner * m.outer)
                if n is None:
                    n = k
                elif k != n:
                    raise UserError(f"permutation group '{g}' mixes sizes {n} and {k} ({m.describe()})")
            if n:
                out[g] = n
        return out

    def axes_of(self) -> dict[str, list[tuple[Member, str]]]:
        """tensor name -> [(member, group)]"""
        out: dict[str, list[tuple[Member, str]]] = {}
        for g, members in self.groups.items():
            for m in members:
                out.setdefault(m.name, []).append((m, g))
        return out

    def as_sets(self) -> set[frozenset]:
        """The groups as a set of frozensets of members (to compare specs)."""
        return {frozenset(self._key(m) for m in members) for members in self.groups.values()}

    @staticmethod
    def _key(m: Member) -> tuple:
        return (m.name, m.axis, m.inner) if (m.outer, m.start, m.length) == (1, 0, None) else tuple(m)
