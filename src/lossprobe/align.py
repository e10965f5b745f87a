"""Permutation alignment: permute the hidden units of model B to match model A.

Two networks trained from different seeds compute nearly the same function up to a
permutation of their hidden units (Entezari et al. 2021; Ainsworth et al. 2022, "Git
Re-Basin"). `align(model_a, model_b)` finds those permutations and returns a copy of B
with them applied: the same function as B, but with weights close to A's, so that the
straight line between A and the aligned B shows how much of the barrier was symmetry.

The permutation groups are derived from the model's `torch.fx` graph, so no hand-written
"permutation spec" is needed:

* every Linear/Conv output channel axis starts a group, shared by its bias;
* an axis flows unchanged through elementwise ops, activations, pooling and dropout;
* BatchNorm/LayerNorm weight, bias and running statistics join the group of their input;
* a residual addition (``a + b``) merges the groups of its operands (union-find);
* ``flatten`` of a [N, C, H, W] tensor feeds the next Linear with C blocks of H·W inputs;
* the model input and output axes are fixed (never permuted).

An operation the derivation does not know (``torch.cat``, grouped convolutions,
GroupNorm, ...) raises a `UserError` naming it; pass your own `PermutationSpec` instead.

Weight matching (Ainsworth et al. 2022): coordinate descent over the groups, each step a
linear assignment problem (`scipy.optimize.linear_sum_assignment`) maximising
Σ ⟨W_A, P W_B Pᵀ⟩, in random order, with restarts; the best restart is kept.
Activation matching: one pass over the data through both models collects the
cross-correlation of every layer's channels; each group is assigned independently.
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .errors import UserError

METHODS = ("weights", "activations")


# --- the permutation spec -------------------------------------------------------------
@dataclass
class PermutationSpec:
    """Which tensor axes each permutation acts on.

    `groups` maps a group name to its members ``(tensor_name, axis, inner)``: permuting the
    group by P (a permutation of n units) reorders axis `axis` of the tensor in blocks of
    `inner` consecutive entries (inner > 1 where a flattened [C, H, W] feature map feeds a
    Linear layer), so ``shape[axis] == n * inner``. Tensor names are state-dict keys
    (parameters and buffers). Members may be given as ``(name, axis)`` with inner 1.

    `repair_layers` names the Linear/Conv modules whose outputs REPAIR rescales (hidden
    layers not followed by BatchNorm) and `norm_layers` the BatchNorm modules whose
    statistics it re-estimates; both are filled in by `permutation_spec`.
    """

    groups: dict[str, list[tuple[str, int, int]]]
    repair_layers: list[str] = field(default_factory=list)
    norm_layers: list[str] = field(default_factory=list)
    # activation-matching probes: group -> [(node name, channel dim)] (from the fx graph)
    probes: dict[str, list[tuple[str, int]]] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.groups = {str(g): [(str(m[0]), int(m[1]), int(m[2]) if len(m) > 2 else 1) for m in members]
                       for g, members in self.groups.items()}

    def sizes(self, state: Mapping[str, torch.Tensor]) -> dict[str, int]:
        """Units per group, checked against the tensors in `state`."""
        out = {}
        for g, members in self.groups.items():
            n = None
            for name, axis, inner in members:
                if name not in state:
                    raise UserError(f"permutation group '{g}' names '{name}', which the model does not have")
                t = state[name]
                if not -t.ndim <= axis < t.ndim:
                    raise UserError(f"permutation group '{g}': '{name}' has no axis {axis} (shape {tuple(t.shape)})")
                size = t.shape[axis]
                if inner <= 0 or size % inner:
                    raise UserError(f"permutation group '{g}': axis {axis} of '{name}' ({size}) is not a multiple of {inner}")
                if n is None:
                    n = size // inner
                elif size // inner != n:
                    raise UserError(f"permutation group '{g}' mixes sizes {n} and {size // inner} ('{name}' axis {axis})")
            if n:
                out[g] = n
        return out

    def axes_of(self) -> dict[str, list[tuple[int, str, int]]]:
        """tensor name -> [(axis, group, inner)]"""
        out: dict[str, list[tuple[int, str, int]]] = {}
        for g, members in self.groups.items():
            for name, axis, inner in members:
                out.setdefault(name, []).append((axis, g, inner))
        return out

    def as_sets(self) -> set[frozenset]:
        """The groups as a set of frozensets of (name, axis, inner), to compare specs."""
        return {frozenset(m) for m in self.groups.values()}


# --- deriving the spec from torch.fx --------------------------------------------------------
_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid,
    nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
_ACTIVATION_MODULES = _PASS_MODULES[:17]

_F = torch.nn.functional
_PASS_FUNCTIONS = {
    _F.relu, _F.relu6, _F.leaky_relu, _F.elu, _F.selu, _F.celu, _F.gelu, _F.silu, _F.mish, _F.hardtanh,
    _F.hardswish, _F.softplus, torch.relu, torch.tanh, torch.sigmoid, _F.tanh, _F.sigmoid, _F.dropout,
    _F.dropout2d, _F.max_pool1d, _F.max_pool2d, _F.max_pool3d, _F.avg_pool1d, _F.avg_pool2d, _F.avg_pool3d,
    _F.adaptive_avg_pool1d, _F.adaptive_avg_pool2d, _F.adaptive_max_pool2d, operator.neg, torch.neg,
}
_ACTIVATION_FUNCTIONS = {_F.relu, _F.relu6, _F.leaky_relu, _F.elu, _F.selu, _F.celu, _F.gelu, _F.silu, _F.mish,
                         _F.hardtanh, _F.hardswish, _F.softplus, torch.relu, torch.tanh, torch.sigmoid, _F.tanh,
                         _F.sigmoid}
_PASS_METHODS = {"relu", "relu_", "tanh", "sigmoid", "contiguous", "clone", "detach", "float", "neg", "abs"}
_MERGE_FUNCTIONS = {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
                    operator.truediv, torch.add, torch.sub, torch.mul}
_MERGE_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div"}

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

    def union(self, a: str, b: str) -> str:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if rb == FIXED:  # the fixed class absorbs whatever it meets
            ra, rb = rb, ra
        self.parent[rb] = ra
        return ra


def _trace(model: nn.Module):
    import torch.fx

    try:
        return torch.fx.symbolic_trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, NotImplementedError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"torch.fx could not trace {type(model).__name__} ({first}); pass spec=PermutationSpec(...) "
            "to align() with the permutation groups written by hand"
        ) from None


def permutation_spec(model: nn.Module) -> PermutationSpec:
    """Derive the permutation groups of `model` from its `torch.fx` graph.

    Raises `UserError` naming the first operation it cannot reason about.
    """
    gm = _trace(model)
    uf = _UnionFind()
    uf.add(FIXED)
    # per fx node: its channel class (None for non-tensors), whether it is a flattened
    # feature map, and where its channel axis is (1 for conv layouts, -1 for Linear)
    cls: dict[str, str | None] = {}
    flat: dict[str, bool] = {}
    cdim: dict[str, int] = {}
    members: list[tuple[str, str, int, int | str]] = []  # (class, tensor name, axis, inner | "auto")
    repair: list[tuple[str, str]] = []  # (module name, output class)
    norms: list[str] = []
    followed_by_bn: set[str] = set()
    modules = dict(gm.named_modules())
    probes: list[tuple[str, str, int]] = []  # (node name, class, channel dim)

    def unsupported(node, what: str):
        raise UserError(
            f"cannot derive permutation groups through {what} (fx node '{node.name}'); "
            "pass spec=PermutationSpec(...) to align() with the groups written by hand"
        )

    def arg_nodes(node):
        import torch.fx

        found: list = []
        torch.fx.node.map_arg((node.args, node.kwargs), lambda a: found.append(a) or a)
        return found

    def tensor_args(node):
        return [a for a in arg_nodes(node) if cls.get(a.name) is not None]

    def single(node):
        ts = tensor_args(node)
        return ts[0] if ts else None

    for node in gm.graph.nodes:
        name = node.name
        if node.op == "placeholder":
            cls[name], flat[name], cdim[name] = FIXED, False, 1
            continue
        if node.op == "get_attr":
            unsupported(node, f"a direct use of the tensor '{node.target}' (parameters must be used through modules)")
        if node.op == "output":
            for a in arg_nodes(node):
                if cls.get(a.name) is not None:
                    uf.union(cls[a.name], FIXED)
            continue
        src = single(node)
        if node.op == "call_module":
            mod = modules[node.target]
            prefix = node.target
            if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                if isinstance(mod, nn.Linear):
                    inner = "auto"
                else:
                    if mod.groups != 1:
                        unsupported(node, f"grouped convolution '{prefix}' (groups={mod.groups})")
                    inner = 1
                if src is None:
                    unsupported(node, f"module '{prefix}' without a tensor input")
                members.append((cls[src.name], f"{prefix}.weight", 1, inner if flat[src.name] else 1))
                out = uf.add(f"{prefix}:out")
                members.append((out, f"{prefix}.weight", 0, 1))
                if mod.bias is not None:
                    members.append((out, f"{prefix}.bias", 0, 1))
                cls[name], flat[name], cdim[name] = out, False, (-1 if isinstance(mod, nn.Linear) else 1)
                repair.append((prefix, out))
                probes.append((name, out, cdim[name]))
                continue
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                c = cls[src.name]
                for t in ("weight", "bias", "running_mean", "running_var"):
                    if getattr(mod, t, None) is not None:
                        members.append((c, f"{prefix}.{t}", 0, 1))
                if src.op == "call_module" and isinstance(modules[src.target], (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) \
                        and len(src.users) == 1:
                    followed_by_bn.add(src.target)
                cls[name], flat[name], cdim[name] = c, False, 1
                norms.append(prefix)
                probes.append((name, c, 1))
                continue
            if isinstance(mod, nn.LayerNorm):
                if len(mod.normalized_shape) != 1:
                    unsupported(node, f"LayerNorm '{prefix}' over {len(mod.normalized_shape)} axes")
                c = cls[src.name]
                for t in ("weight", "bias"):
                    if getattr(mod, t, None) is not None:
                        members.append((c, f"{prefix}.{t}", 0, 1))
                cls[name], flat[name], cdim[name] = c, flat[src.name], -1
                continue
            if isinstance(mod, nn.Flatten):
                if mod.start_dim != 1 or mod.end_dim != -1:
                    unsupported(node, f"Flatten '{prefix}' with start_dim={mod.start_dim}, end_dim={mod.end_dim}")
                cls[name], flat[name], cdim[name] = cls[src.name], True, 1
                continue
            if isinstance(mod, (nn.Softmax, nn.LogSoftmax)) or isinstance(mod, _PASS_MODULES):
                if next(mod.parameters(recurse=False), None) is not None:
                    unsupported(node, f"module '{prefix}' ({type(mod).__name__}) with parameters")
                cls[name], flat[name], cdim[name] = cls[src.name], flat[src.name], cdim[src.name]
                if isinstance(mod, _ACTIVATION_MODULES):
                    probes.append((name, cls[name], cdim[name]))
                continue
            unsupported(node, f"module '{prefix}' of type {type(mod).__name__}")
        target = node.target
        tname = getattr(target, "__name__", str(target))
        if node.op == "call_method" and target in ("size", "dim", "numel"):
            cls[name] = None
            continue
        if node.op == "call_function" and target is getattr:
            cls[name] = None
            continue
        if src is None:  # arithmetic on sizes and other non-tensors
            cls[name] = None
            continue
        is_fn = node.op == "call_function"
        if (is_fn and target in _PASS_FUNCTIONS) or (not is_fn and target in _PASS_METHODS):
            cls[name], flat[name], cdim[name] = cls[src.name], flat[src.name], cdim[src.name]
            if (is_fn and target in _ACTIVATION_FUNCTIONS) or (not is_fn and target in ("relu", "relu_", "tanh", "sigmoid")):
                probes.append((name, cls[name], cdim[name]))
            continue
        if (is_fn and target in _MERGE_FUNCTIONS) or (not is_fn and target in _MERGE_METHODS):
            ts = tensor_args(node)
            c = cls[ts[0].name]
            for t in ts[1:]:
                if flat[t.name] != flat[ts[0].name]:
                    unsupported(node, f"'{tname}' of a flattened and an unflattened tensor")
                c = uf.union(c, cls[t.name])
            cls[name], flat[name], cdim[name] = c, flat[ts[0].name], cdim[ts[0].name]
            probes.append((name, c, cdim[name]))
            continue
        if (is_fn and target is torch.flatten) or (not is_fn and target == "flatten"):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            if start != 1 or end != -1:
                unsupported(node, f"flatten(start_dim={start}, end_dim={end}) (only start_dim=1 is supported)")
            cls[name], flat[name], cdim[name] = cls[src.name], True, 1
            continue
        if not is_fn and target in ("view", "reshape"):
            shape = node.args[1:]
            if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
                shape = tuple(shape[0])
            if len(shape) == 2 and shape[1] == -1:  # x.view(x.size(0), -1): a flatten
                cls[name], flat[name], cdim[name] = cls[src.name], True, 1
                continue
            unsupported(node, f"'{target}' to shape {shape} (only x.{target}(N, -1) is supported)")
        if (is_fn and target is torch.mean) or (not is_fn and target in ("mean", "amax", "sum")):
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
            if dims and all(isinstance(d, int) and d >= 2 for d in dims):  # pooling over spatial axes
                cls[name], flat[name], cdim[name] = cls[src.name], flat[src.name], cdim[src.name]
                continue
            unsupported(node, f"'{tname}' over dims {dims} (only spatial dims ≥ 2 keep the channels)")
        unsupported(node, f"operation '{tname}'")

    # resolve the classes into groups
    by_class: dict[str, list[tuple[str, int, int | str]]] = {}
    for c, tname, axis, inner in members:
        by_class.setdefault(uf.find(c), []).append((tname, axis, inner))
    params = dict(model.state_dict())
    groups: dict[str, list[tuple[str, int, int]]] = {}
    root_name: dict[str, str] = {}
    for root, mem in by_class.items():
        if root == FIXED:
            continue
        # n: from a member whose inner is known to be 1 (an output-channel axis)
        n = next(params[t].shape[a] for t, a, i in mem if i == 1)
        resolved = []
        for t, a, i in mem:
            if i == "auto":
                size = params[t].shape[a]
                if size % n:
                    raise UserError(f"cannot match '{t}' axis {a} ({size} inputs) to {n} channels of its input")
                i = size // n
            resolved.append((t, a, i))
        gname = "P_" + resolved[0][0].rsplit(".", 1)[0]
        groups[gname] = resolved
        root_name[root] = gname
    spec = PermutationSpec(groups)
    spec.repair_layers = [m for m, c in repair if uf.find(c) != FIXED and m not in followed_by_bn]
    spec.norm_layers = [m for m in norms if m in dict(model.named_modules())]
    for node_name, c, d in probes:
        r = uf.find(c)
        if r in root_name:
            spec.probes.setdefault(root_name[r], []).append((node_name, d))
    spec.sizes(params)
    return spec


# --- applying permutations ----------------------------------------------------------------
def _expand(perm: torch.Tensor, inner: int) -> torch.Tensor:
    if inner == 1:
        return perm
    return (perm[:, None] * inner + torch.arange(inner)).reshape(-1)


def apply_permutation(state: Mapping[str, torch.Tensor], spec: PermutationSpec,
                      perms: Mapping[str, torch.Tensor | np.ndarray]) -> dict[str, torch.Tensor]:
    """A new state dict with every group's permutation applied to its axes.

    ``perms[g][i] = j`` means unit i of the result is unit j of `state` (so P·W in matrix
    terms); permuting a model this way leaves its function unchanged.
    """
    out = dict(state)
    for name, axes in spec.axes_of().items():
        t = out[name]
        for axis, g, inner in axes:
            if g not in perms:
                continue
            p = torch.as_tensor(np.asarray(perms[g]), dtype=torch.long, device=t.device)
            t = torch.index_select(t, axis, _expand(p, inner))
        out[name] = t
    return out


def random_permutation(model: nn.Module, seed: int = 0, spec: PermutationSpec | None = None) -> tuple[nn.Module, dict]:
    """A copy of `model` with its hidden units randomly permuted (same function), and the perms."""
    spec = spec or permutation_spec(model)
    sizes = spec.sizes(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    perms = {k: torch.randperm(n, generator=g) for k, n in sizes.items()}
    out = copy.deepcopy(model)
    out.load_state_dict(apply_permutation(model.state_dict(), spec, perms))
    return out, perms


# --- weight matching ---------------------------------------------------------------------
def _moved(t: torch.Tensor, axis: int, inner: int, n: int) -> torch.Tensor:
    """[n, rest]: the group axis (with its inner blocks) in front, everything else flattened."""
    t = t.movedim(axis, 0)
    return t.reshape(n, inner * int(np.prod(t.shape[1:], dtype=np.int64)))


def match_weights(state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor], spec: PermutationSpec,
                  max_iter: int = 100, restarts: int = 3, seed: int = 0, include_buffers: bool = False) -> dict[str, torch.Tensor]:
    """Permutations of B's units maximising Σ ⟨θ_A, π(θ_B)⟩ over all permuted tensors.

    Coordinate descent: each group in turn solves a linear assignment problem with the other
    groups held fixed, in a random order per sweep, until a sweep improves nothing.
    `restarts` runs with different orders; the permutation set with the largest total
    inner product wins. Buffers (BatchNorm statistics) are permuted but only count in the
    objective with `include_buffers`.
    """
    from scipy.optimize import linear_sum_assignment

    sizes = spec.sizes(state_a)
    spec.sizes(state_b)
    axes = spec.axes_of()
    a64 = {k: v.detach().double().cpu() for k, v in state_a.items() if k in axes}
    b64 = {k: v.detach().double().cpu() for k, v in state_b.items() if k in axes}
    buffers = {k for k in axes if k.endswith(("running_mean", "running_var"))}
    counted = {k for k in axes if include_buffers or k not in buffers}

    def permuted_except(name: str, skip_axis: int, skip_group: str, perms) -> torch.Tensor:
        t = b64[name]
        for axis, g, inner in axes[name]:
            if axis == skip_axis and g == skip_group:
                continue
            t = torch.index_select(t, axis, _expand(perms[g], inner))
        return t

    def total(perms) -> float:
        s = 0.0
        for name in counted:
            t = b64[name]
            for axis, g, inner in axes[name]:
                t = torch.index_select(t, axis, _expand(perms[g], inner))
            s += float((a64[name] * t).sum())
        return s

    rng = np.random.default_rng(seed)
    best, best_score = None, -math.inf
    names = sorted(sizes)
    for _ in range(max(1, restarts)):
        perms = {g: torch.arange(n) for g, n in sizes.items()}
        for _it in range(max_iter):
            improved = False
            for gi in rng.permutation(len(names)):
                g = names[gi]
                n = sizes[g]
                cost = torch.zeros(n, n, dtype=torch.float64)
                for name, axis, inner in spec.groups[g]:
                    if name not in counted:
                        continue
                    wa = _moved(a64[name], axis, inner, n)
                    wb = _moved(permuted_except(name, axis, g, perms), axis, inner, n)
                    cost += wa @ wb.T
                _, col = linear_sum_assignment(cost.numpy(), maximize=True)
                new = torch.as_tensor(col, dtype=torch.long)
                old_val = float(cost[torch.arange(n), perms[g]].sum())
                new_val = float(cost[torch.arange(n), new].sum())
                if new_val > old_val + 1e-12 * max(1.0, abs(old_val)):
                    perms[g] = new
                    improved = True
            if not improved:
                break
        score = total(perms)
        if score > best_score:
            best, best_score = {g: p.clone() for g, p in perms.items()}, score
    return best


# --- activation matching ------------------------------------------------------------------
@torch.no_grad()
def _collect_stats(model_a: nn.Module, model_b: nn.Module, spec: PermutationSpec, data, batch_size: int = 1024):
    """One pass of `data` through both models: per group the sums needed for the
    correlation between every channel of A and every channel of B, over all probe nodes."""
    import torch.fx

    if not spec.probes:
        raise UserError("activation matching needs a spec derived from the model's fx graph (no probe layers found)")
    gms = [torch.fx.symbolic_trace(m).eval() for m in (model_a, model_b)]
    wanted = {node for nodes in spec.probes.values() for node, _ in nodes}

    class Recorder(torch.fx.Interpreter):
        def __init__(self, gm):
            super().__init__(gm)
            self.seen = {}

        def run_node(self, n):
            out = super().run_node(n)
            if n.name in wanted:
                self.seen[n.name] = out
            return out

    stats: dict[tuple[str, str], list] = {}
    recs = [Recorder(g) for g in gms]
    placeholders = [n.target for n in gms[0].graph.nodes if n.op == "placeholder"]
    for batch in _as_batches(data, batch_size):
        inputs = _graph_inputs(batch, placeholders)
        for r in recs:
            r.seen = {}
            r.run(*inputs)
        for g, nodes in spec.probes.items():
            for node, d in nodes:
                xa = recs[0].seen[node].movedim(d, -1)
                xb = recs[1].seen[node].movedim(d, -1)
                xa = xa.reshape(-1, xa.shape[-1]).double()
                xb = xb.reshape(-1, xb.shape[-1]).double()
                s = stats.setdefault((g, node), [0, 0.0, 0.0, 0.0, 0.0, 0.0])
                s[0] += xa.shape[0]
                s[1] = s[1] + xa.sum(0)
                s[2] = s[2] + xb.sum(0)
                s[3] = s[3] + (xa * xa).sum(0)
                s[4] = s[4] + (xb * xb).sum(0)
                s[5] = s[5] + xa.T @ xb
    return stats


def _as_batches(data, batch_size: int):
    from .batching import as_data

    yield from as_data(data, "align").batches(batch_size)


def _graph_inputs(batch, placeholders: list[str]) -> list:
    """The traced graph's positional inputs from a batch: all but the target of a tuple,
    or the dict entries named like the graph's inputs."""
    from collections.abc import Mapping

    if isinstance(batch, Mapping):
        missing = [p for p in placeholders if p not in batch]
        if missing:
            raise UserError(f"activation matching: the batch has no '{missing[0]}' for the model's input of that name")
        return [batch[p] for p in placeholders]
    if isinstance(batch, (tuple, list)):
        return list(batch[:-1]) if len(batch) > 1 else list(batch)
    return [batch]


def match_activations(model_a: nn.Module, model_b: nn.Module, spec: PermutationSpec, data,
                      batch_size: int = 1024) -> dict[str, torch.Tensor]:
    """Permutations of B's units maximising the summed correlation of matched channels.

    Every probe layer of a group (the outputs of its Linear/Conv/BatchNorm layers,
    activations and residual sums) contributes its A×B correlation matrix, measured in
    one pass over `data`; each group is then one linear assignment problem.
    """
    from scipy.optimize import linear_sum_assignment

    stats = _collect_stats(model_a, model_b, spec, data, batch_size)
    perms = {}
    for g, n in spec.sizes(model_a.state_dict()).items():
        corr = torch.zeros(n, n, dtype=torch.float64)
        for (gg, _node), (cnt, sa, sb, saa, sbb, sab) in stats.items():
            if gg != g:
                continue
            ma, mb = sa / cnt, sb / cnt
            cov = sab / cnt - ma[:, None] * mb[None, :]
            sd_a = (saa / cnt - ma * ma).clamp_min(0).sqrt()
            sd_b = (sbb / cnt - mb * mb).clamp_min(0).sqrt()
            corr += cov / (sd_a[:, None] * sd_b[None, :] + 1e-12)
        _, col = linear_sum_assignment(corr.numpy(), maximize=True)
        perms[g] = torch.as_tensor(col, dtype=torch.long)
    return perms


# --- the public entry point -----------------------------------------------------------------
def align(
    model_a: nn.Module,
    model_b: nn.Module,
    method: str = "weights",
    data=None,
    spec: PermutationSpec | Mapping[str, Sequence] | None = None,
    restarts: int = 3,
    max_iter: int = 100,
    seed: int = 0,
    batch_size: int = 1024,
    return_perms: bool = False,
):
    """Return a copy of `model_b` with its hidden units permuted to match `model_a`.

    Args:
        method: 'weights' (weight matching, no data needed) or 'activations' (correlation
            of every layer's channels over `data`).
        data: a `Split`, (x, y) tensors, a Dataset or a DataLoader; needed for 'activations'.
        spec: the permutation groups; derived from the fx graph of `model_a` when None.
            A dict {group: [(state_dict_name, axis[, inner]), ...]} is accepted too.
        restarts, max_iter, seed: weight matching's random sweep orders.
        return_perms: also return {group: LongTensor[n]} (unit i of the result is unit
            perms[g][i] of B).

    The result computes the same function as `model_b` (up to rounding).
    """
    if method not in METHODS:
        raise UserError(f"method must be one of {METHODS}, got '{method}'")
    if not isinstance(model_a, nn.Module) or not isinstance(model_b, nn.Module):
        raise TypeError("align() takes two torch.nn.Module objects")
    if spec is None:
        spec = permutation_spec(model_a)
    elif not isinstance(spec, PermutationSpec):
        spec = PermutationSpec(dict(spec))
    sa, sb = model_a.state_dict(), model_b.state_dict()
    if set(sa) != set(sb) or any(sa[k].shape != sb[k].shape for k in sa):
        raise UserError("align() needs two models of the same architecture (their state dicts differ)")
    if method == "weights":
        perms = match_weights(sa, sb, spec, max_iter=max_iter, restarts=restarts, seed=seed)
    else:
        if data is None:
            raise UserError("method='activations' needs data= (a few thousand training samples)")
        if not spec.probes:
            spec.probes = permutation_spec(model_a).probes
        perms = match_activations(model_a, model_b, spec, data, batch_size)
    out = copy.deepcopy(model_b)
    out.load_state_dict(apply_permutation(sb, spec, perms))
    out.train(model_b.training)
    return (out, perms) if return_perms else out


__all__ = ["METHODS", "PermutationSpec", "align", "apply_permutation", "match_activations", "match_weights",
           "permutation_spec", "random_permutation"]


# `lossprobe.align(...)` calls `align`, while `lossprobe.align.permutation_spec` etc. stay
# reachable: the module itself is callable (the package exports the module, not a function
# that would shadow it).
import sys as _sys  # noqa: E402
import types as _types  # noqa: E402


class _CallableModule(_types.ModuleType):
    def __call__(self, *args, **kwargs):
        return align(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
