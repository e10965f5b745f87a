"""Channel classes into permutation groups: the union-find both derivations share.

`Builder` collects the classes of channels that must be permuted together (a union-find
whose `FIXED` class absorbs the input and output axes, which are never permuted), the
members of each class, the layers REPAIR rescales and the probe points, and `resolve`s
them into a `PermutationSpec`. `fx` feeds it from a traced graph, `hf` from the module
structure of HF models.
"""

from __future__ import annotations

from torch import nn

from lossprobe.connectivity.alignment.spec import Member, PermutationSpec, Probe
from lossprobe.core.space import tied_names
from lossprobe.errors import UserError

FIXED = "<fixed>"


class _UnionFind:
    def __init__(self):
        self.parent: dict[str, str] = {}

    def add(self, x: str) -> str:
        self.parent.setdefault(x, x)
        return x

    def find(self, x: str) -> str:
        self.add(x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        if rb == FIXED:  # the fixed class absorbs whatever it meets
            ra, rb = rb, ra
        self.parent[rb] = ra
        return True


def _hf_conv1d(mod) -> bool:
    return type(mod).__name__ == "Conv1D" and hasattr(mod, "nf")


class Builder:
    """Collects classes, members, REPAIR layers and probes; `resolve` makes the spec."""

    def __init__(self, model: nn.Module, structure: str):
        self.model = model
        self.structure = structure
        self.state = model.state_dict()
        self.alias = tied_names(model)
        self.uf = _UnionFind()
        self.uf.add(FIXED)
        self.members: list[tuple[str, Member | tuple]] = []  # (class, member); inner may be "auto"
        self.struct: dict[str, tuple[int, str, str]] = {}  # class -> (blocks, outer node, what)
        self.repair: list[tuple[str, str]] = []  # (module, output class)
        self.norms: list[str] = []
        self.followed_by_bn: set[str] = set()
        self.probes: list[tuple[str, Probe]] = []
        self.struct_cls: list[tuple[str, str]] = []

    # --- building blocks ---------------------------------------------------------------
    def new(self, name: str) -> str:
        return self.uf.add(name)

    def fix(self, cls: str | None) -> None:
        if cls is not None:
            self.uf.union(cls, FIXED)

    def join(self, a: str | None, b: str | None) -> str | None:
        if a is None and b is None:
            return None
        if a is None or b is None:  # a permuted axis meets one that is not permuted
            self.fix(a if a is not None else b)
            return FIXED
        self.uf.union(a, b)
        return self.uf.find(a)

    def add(self, cls: str | None, name: str, axis: int, inner=1, outer: int = 1, start: int = 0,
            length: int | None = None) -> None:
        if cls is None or name not in self.state:
            return
        name = self.alias.get(name, name)
        self.members.append((cls, (name, axis, inner, outer, start, length)))

    def structure_of(self, cls: str, blocks: int, outer_node: str, what: str) -> None:
        self.struct[f"{cls}@{outer_node}"] = (blocks, outer_node, what)
        self.struct_cls.append((cls, f"{cls}@{outer_node}"))

    def probe(self, cls: str | None, probe: Probe) -> None:
        if cls is not None:
            self.probes.append((cls, probe))

    def linear(self, prefix: str, mod: nn.Module, in_cls: str | None, inner=1, out_cls: str | None = None) -> str:
        """Linear, HF Conv1D ([in, out] weight) or Conv (groups=1): members and the output class."""
        out = out_cls or self.new(f"{prefix}:out")
        o_axis, i_axis = (1, 0) if _hf_conv1d(mod) else (0, 1)
        self.add(in_cls, f"{prefix}.weight", i_axis, inner)
        self.add(out, f"{prefix}.weight", o_axis)
        if getattr(mod, "bias", None) is not None:
            self.add(out, f"{prefix}.bias", 0)
        self.repair.append((prefix, out))
        return out

    def channel_params(self, prefix: str, mod: nn.Module, cls: str | None,
                       names=("weight", "bias", "running_mean", "running_var")) -> None:
        for t in names:
            if getattr(mod, t, None) is not None:
                self.add(cls, f"{prefix}.{t}", 0)

    def attention(self, prefix: str, heads: int, in_cls: str | None, out_cls: str, q, k, v, o) -> None:
        """Q, K, V projections from `in_cls`, output projection to `out_cls`. q/k/v/o are
        (module prefix, module, slice start, slice length) of the projection's output axis
        (o: of its input axis); heads one group, per-head dims of Q/K and of V/O two more."""
        heads_node = self.new(f"{prefix}:heads")
        qk, vo = self.new(f"{prefix}:qk"), self.new(f"{prefix}:vo")
        self.structure_of(qk, heads, heads_node, f"attention '{prefix}'")
        self.structure_of(vo, heads, heads_node, f"attention '{prefix}'")
        for cls, parts in ((qk, (q, k)), (vo, (v,))):
            for pfx, mod, start, length, weight in parts:
                hf = _hf_conv1d(mod)
                self.add(in_cls, f"{pfx}.{weight}", 0 if hf else 1)
                self.add(cls, f"{pfx}.{weight}", 1 if hf else 0, 1, 1, start, length)
                bias = weight.replace("weight", "bias")
                if getattr(mod, bias, None) is not None:
                    self.add(cls, f"{pfx}.{bias}", 0, 1, 1, start, length)
        pfx, mod = o
        self.linear(pfx, mod, vo, out_cls=out_cls)

    # --- the spec --------------------------------------------------------------------------
    def resolve(self) -> PermutationSpec:
        uf, find = self.uf, self.uf.find
        struct_cls = self.struct_cls
        changed = True
        while changed:
            changed = False
            seen: dict[tuple, str] = {}
            for cls, (name, axis, _inner, _outer, start, length) in self.members:
                key = (name, axis % max(self.state[name].ndim, 1), start, length)
                if key in seen:
                    changed |= uf.union(seen[key], cls)
                else:
                    seen[key] = cls
            by_root: dict[str, list[tuple[int, str, str]]] = {}
            for cls, skey in struct_cls:
                by_root.setdefault(find(cls), []).append(self.struct[skey])
            for root, lst in by_root.items():
                blocks = {b for b, _, _ in lst}
                if len(blocks) > 1:
                    whats = sorted({w for _, _, w in lst})
                    raise UserError(f"cannot derive permutation groups: {' and '.join(whats)} split the same channels "
                                    f"into {sorted(blocks)} groups; pass spec= with the groups written by hand")
                for _, node, _ in lst[1:]:
                    changed |= uf.union(lst[0][1], node)
                if root == FIXED:
                    changed |= uf.union(lst[0][1], FIXED)
        # units per class
        members: dict[str, list] = {}
        for cls, m in self.members:
            lst = members.setdefault(find(cls), [])
            if m not in lst:
                lst.append(m)
        n_of: dict[str, int] = {}
        for root, lst in members.items():
            for name, axis, inner, outer, start, length in lst:
                if inner != "auto":
                    size = self.state[name].shape[axis]
                    n_of[root] = ((size - start) if length is None else length) // (inner * outer)
                    break
        struct_of: dict[str, tuple[int, str]] = {}
        for cls, skey in struct_cls:
            b, node, _ = self.struct[skey]
            struct_of[find(cls)] = (b, find(node))
        groups: dict[str, list[Member]] = {}
        layout: dict[str, tuple] = {}
        main: dict[str, str] = {}

        def gname(base: str) -> str:
            name, k = base, 2
            while name in groups:
                name, k = f"{base}#{k}", k + 1
            return name

        outer_name: dict[str, str] = {}
        block_families: dict[str, list[list[str]]] = {}
        for root, lst in members.items():
            if root == FIXED or root not in n_of:
                continue
            n = n_of[root]
            resolved = []
            for name, axis, inner, outer, start, length in lst:
                if inner == "auto":
                    size = self.state[name].shape[axis]
                    span = (size - start) if length is None else length
                    if span % (n * outer):
                        raise UserError(f"cannot match '{name}' axis {axis} ({size} inputs) to {n} channels of its input")
                    inner = span // (n * outer)
                resolved.append(Member(name, axis, inner, outer, start, length))
            base = ("P_" + resolved[0].name.rsplit(".", 1)[0]) if root.endswith(":out") else \
                "P_" + root.replace(":", ".")
            blocks, onode = struct_of.get(root, (1, FIXED))
            if blocks > 1 and n % blocks == 0:
                per = n // blocks
                lay = []
                family = []
                if per > 1 and all(m.outer == 1 for m in resolved):
                    # the whole symmetry group: one permutation of the channels within each block
                    # (GroupNorm group, attention head), independent of the others, and (below)
                    # the permutation of the blocks themselves
                    for b in range(blocks):
                        w = gname(f"{base}[{b}]")
                        groups[w] = [m._replace(start=m.start + b * per * m.inner, length=per * m.inner)
                                     for m in resolved]
                        family.append(w)
                        lay.append((w, 1, 1, b * per, per))
                        main.setdefault(root, w)
                elif per > 1:  # a layout that cannot be sliced per block: one permutation shared by all
                    w = gname(base)
                    groups[w] = [m._replace(outer=m.outer * blocks) for m in resolved]
                    lay.append((w, blocks, 1))
                    main[root] = w
                if onode != FIXED:
                    if onode not in outer_name:
                        outer_name[onode] = gname("P_" + onode.replace(":", "."))
                        groups[outer_name[onode]] = []
                    og = outer_name[onode]
                    groups[og] += [m._replace(inner=m.inner * per) for m in resolved]
                    if family:
                        block_families.setdefault(og, []).append(family)
                    lay.append((og, 1, per))
                    main.setdefault(root, og)
                layout[root] = tuple(lay)
            else:
                g = gname(base)
                groups[g] = resolved
                layout[root] = ((g, 1, 1),)
                main[root] = g
        groups = {g: m for g, m in groups.items() if m}
        spec = PermutationSpec(groups, structure=self.structure, blocks=block_families)
        spec.sizes(self.state)
        sizes = spec.sizes(self.state)
        trivial = [g for g, n in sizes.items() if n <= 1]
        for g in trivial:
            del spec.groups[g]
        spec.blocks = {og: fams for og, fams in spec.blocks.items() if og in spec.groups}
        seen_r: list[str] = []
        for m, c in self.repair:
            if find(c) != FIXED and m not in self.followed_by_bn and m not in seen_r:
                seen_r.append(m)
        spec.repair_layers = seen_r
        spec.norm_layers = list(dict.fromkeys(self.norms))
        for c, p in self.probes:
            r = find(c)
            if r in main and main[r] in spec.groups:
                p.layout = tuple(x for x in layout[r] if x[0] in spec.groups)
                spec.probes.setdefault(main[r], []).append(p)
        spec.aliases = dict(self.alias)
        return spec
