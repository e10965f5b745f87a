"""Permutation alignment: permute the hidden units of model B to match model A.

Two networks trained from different seeds compute nearly the same function up to a
permutation of their hidden units (Entezari et al. 2021; Ainsworth et al. 2022, "Git
Re-Basin"). `align(model_a, model_b)` finds those permutations and returns a copy of B
with them applied: the same function as B, but with weights close to A's, so that the
straight line between A and the aligned B shows how much of the barrier was symmetry.

The permutation groups are derived from the model (`permutation_spec`, see
`lossprobe.align_derive`): from its `torch.fx` graph, or from the module structure of
HF BERT/GPT-2 models, so no hand-written "permutation spec" is needed. An operation the
derivation does not know raises a `UserError` naming it; pass your own spec instead.

Never silently wrong: after every alignment, the aligned B is run next to B on a batch
and must give the same outputs (within `check_tol` of the output scale); otherwise
`align` raises one line naming the permutation groups that change the function.

Weight matching (Ainsworth et al. 2022): coordinate descent over the groups, each step a
linear assignment problem (`scipy.optimize.linear_sum_assignment`) maximising
Σ ⟨W_A, P W_B Pᵀ⟩, in random order, with restarts; the best restart is kept.
Activation matching: one pass over the data through both models collects the
cross-correlation of every group's channels at its probe points (by default the
post-activation features, as in the papers); the same coordinate descent then
maximises the summed correlation of matched units.
"""

from __future__ import annotations

import copy
import math
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from lossprobe.connectivity.alignment.fx import derive, example_batch, record_values
from lossprobe.connectivity.alignment.spec import Member, PermutationSpec, Probe
from lossprobe.core.batching import as_data, at_batch, leaves, move
from lossprobe.core.losses import criterion
from lossprobe.core.space import tied_names
from lossprobe.errors import UserError

METHODS = ("weights", "activations")
FEATURES = ("post", "all")
CHECK_TOL = 1e-3  # largest output difference allowed, relative to the largest output magnitude


# --- the permutation spec -------------------------------------------------------------
# --- normalising a spec for a model: tied tensors, one axis in two groups --------------------
def normalise_spec(spec: PermutationSpec, model: nn.Module) -> PermutationSpec:
    """The spec with tied tensors under one name and groups that permute the same tensor
    axis merged into one (so the permutation is consistent), or a one-line refusal."""
    aliases = {**tied_names(model), **spec.aliases}
    canon = {}
    for g, members in spec.groups.items():
        canon[g] = [m._replace(name=aliases.get(m.name, m.name)) for m in members]
    parent = {g: g for g in canon}

    def find(g):
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    state = model.state_dict()
    seen: dict[tuple, str] = {}
    for g, members in canon.items():
        for m in members:
            nd = state[m.name].ndim if m.name in state else 64
            # the same axis with the same layout: one permutation (axes with different
            # layouts, e.g. heads and the dimensions within them, compose)
            key = (m.name, m.axis % max(nd, 1), m.inner, m.outer, m.start, m.length)
            if key in seen:
                a, b = find(seen[key]), find(g)
                if a != b:
                    parent[b] = a
            else:
                seen[key] = g
    merged: dict[str, list[Member]] = {}
    names: dict[str, list[str]] = {}
    for g, members in canon.items():
        r = find(g)
        names.setdefault(r, []).append(g)
        lst = merged.setdefault(r, [])
        for m in members:
            if m not in lst:
                lst.append(m)
    groups = {("+".join(names[r]) if len(names[r]) > 1 else r): mem for r, mem in merged.items()}
    rename = {g: ("+".join(names[find(g)]) if len(names[find(g)]) > 1 else find(g)) for g in canon}
    # a structured group keeps its families only where no group of it was merged with another
    blocks = {og: fams for og, fams in spec.blocks.items()
              if all(rename.get(g) == g for g in [og, *(w for f in fams for w in f)])}
    out = PermutationSpec(groups, list(spec.repair_layers), list(spec.norm_layers),
                          {}, {a: c for a, c in aliases.items()}, spec.structure, blocks)
    for g, probes in spec.probes.items():
        out.probes.setdefault(rename.get(g, g), []).extend(probes)
    return out


# --- applying permutations ----------------------------------------------------------------
def _as_perm(p, device=None) -> torch.Tensor:
    return torch.as_tensor(np.asarray(p), dtype=torch.long, device=device)


def apply_permutation(state: Mapping[str, torch.Tensor], spec: PermutationSpec,
                      perms: Mapping[str, torch.Tensor | np.ndarray]) -> dict[str, torch.Tensor]:
    """A new state dict with every group's permutation applied to its axes.

    ``perms[g][i] = j`` means unit i of the result is unit j of `state` (so P·W in matrix
    terms); permuting a model this way leaves its function unchanged. Tied aliases get
    the permuted tensor of the name they alias.
    """
    out = dict(state)
    for name, axes in spec.axes_of().items():
        t = out[name]
        for m, g in axes:
            if g not in perms:
                continue
            p = _as_perm(perms[g], t.device)
            t = torch.index_select(t, m.axis, m.index(p, t.shape[m.axis]))
        out[name] = t
    for alias, name in spec.aliases.items():
        if alias in out and name in out:
            out[alias] = out[name]
    return out


def random_permutation(model: nn.Module, seed: int = 0, spec: PermutationSpec | None = None,
                       example=None) -> tuple[nn.Module, dict]:
    """A copy of `model` with its hidden units randomly permuted (same function), and the perms."""
    spec = normalise_spec(spec, model) if spec is not None else permutation_spec(model, example=example)
    sizes = spec.sizes(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    perms = {k: torch.randperm(n, generator=g) for k, n in sizes.items()}
    out = copy.deepcopy(model)
    out.load_state_dict(apply_permutation(model.state_dict(), spec, perms))
    return out, perms


def permutation_spec(model: nn.Module, example=None, forward=None) -> PermutationSpec:
    """Derive the permutation groups of `model` (see `lossprobe.align_derive`).

    `example` is a batch the model runs on, or data to take one from (the batch contract
    of `Objective`, with `forward`): it gives the derivation every tensor's shape. Without it, an input is
    made up from the first layers where possible. Raises `UserError` naming the first
    operation the derivation cannot reason about.
    """
    return derive(model, example=example, forward=forward)


# --- weight matching ---------------------------------------------------------------------
def match_weights(state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor], spec: PermutationSpec,
                  max_iter: int = 100, restarts: int = 3, seed: int = 0, include_buffers: bool = False) -> dict[str, torch.Tensor]:
    """Permutations of B's units maximising Σ ⟨θ_A, π(θ_B)⟩ over all permuted tensors.

    Coordinate descent: each group in turn solves a linear assignment problem with the other
    groups held fixed, in a random order per sweep, until a sweep improves nothing.
    `restarts` runs with different orders; the permutation set with the largest total
    inner product wins. A structured group (`PermutationSpec.blocks`: GroupNorm groups,
    attention heads) is one coordinate together with the permutations within its blocks:
    for every pair of blocks the best assignment of their channels, then the best
    assignment of blocks on those values, so the whole symmetry group is searched. Buffers (BatchNorm statistics) are permuted but only count in the
    objective with `include_buffers`.
    """
    from scipy.optimize import linear_sum_assignment  # lazy: scipy.optimize adds ~0.15 s to `import lossprobe`

    sizes = spec.sizes(state_a)
    spec.sizes(state_b)
    axes = spec.axes_of()
    a64 = {k: v.detach().double().cpu() for k, v in state_a.items() if k in axes}
    b64 = {k: v.detach().double().cpu() for k, v in state_b.items() if k in axes}
    buffers = {k for k in axes if k.endswith(("running_mean", "running_var"))}
    counted = {k for k in axes if include_buffers or k not in buffers}

    def sides(name: str, k: int, perms) -> tuple[torch.Tensor, torch.Tensor]:
        """(A', B') for member k of `name`'s axes: ⟨A, Q_after P Q_before B⟩ = ⟨A', P B'⟩ with
        B' = B under every other member applied before it (and those on other axes, which
        commute with it) and A' = A under the inverses of the members on the same axis
        applied after it. Permutations of one axis need not commute (the blocks of a
        GroupNorm or of attention heads, and one permutation within each block)."""
        a, t = a64[name], b64[name]
        lst = axes[name]
        nd = max(t.ndim, 1)
        axis = lst[k][0].axis % nd
        for j, (m, g) in enumerate(lst):
            if j == k or (j > k and m.axis % nd == axis):
                continue
            t = torch.index_select(t, m.axis, m.index(perms[g], t.shape[m.axis]))
        for j in range(len(lst) - 1, k, -1):
            m, g = lst[j]
            if m.axis % nd == axis:
                a = torch.index_select(a, m.axis, torch.argsort(m.index(perms[g], a.shape[m.axis])))
        return a, t

    def total(perms) -> float:
        s = 0.0
        for name in counted:
            t = b64[name]
            for m, g in axes[name]:
                t = torch.index_select(t, m.axis, m.index(perms[g], t.shape[m.axis]))
            s += float((a64[name] * t).sum())
        return s

    order = {g: i for i, g in enumerate(spec.groups)}
    # structured groups (see PermutationSpec.blocks): the blocks' permutation and one permutation
    # within each block are solved jointly, the families' groups are no coordinates of their own
    blocks = {og: [f for f in fams if len(f) == sizes.get(og) and all(w in sizes for w in f)
                   and len({sizes[w] for w in f}) == 1]
              for og, fams in spec.blocks.items() if og in sizes}
    blocks = {og: fams for og, fams in blocks.items() if fams}
    inside = {w for fams in blocks.values() for f in fams for w in f}

    def composite(og: str, family: list[str], perms) -> torch.Tensor:
        """Unit i (of the family's G·per channels) of the result is channel comp[i] of B."""
        G, per = sizes[og], sizes[family[0]]
        t = torch.arange(G * per)
        for h in sorted([og, *family], key=order.__getitem__):
            m = Member("units", 0, per) if h == og else Member("units", 0, 1, 1, family.index(h) * per, per)
            t = t[m.index(perms[h], G * per)]
        return t

    def joint_step(og: str, perms) -> bool:
        """The best permutation of og's blocks together with the best permutation within each
        block (the other groups held fixed): per pair of blocks (b of A, c of B) and family, a
        linear assignment of their channels; then an assignment of blocks on the summed values."""
        G = sizes[og]
        struct = {og, *(w for f in blocks[og] for w in f)}
        fixed = {**perms, **{h: torch.arange(sizes[h]) for h in struct}}
        value = torch.zeros(G, G, dtype=torch.float64)
        current = 0.0
        solved = []
        for family in blocks[og]:
            per = sizes[family[0]]
            K = torch.zeros(G * per, G * per, dtype=torch.float64)
            for m0 in spec.groups[family[0]]:
                if m0.name not in counted:
                    continue
                mu = m0._replace(length=G * per * m0.inner)
                t = b64[m0.name]
                for m, g in axes[m0.name]:
                    if g not in struct:
                        t = torch.index_select(t, m.axis, m.index(fixed[g], t.shape[m.axis]))
                K += mu.moved(a64[m0.name], G * per) @ mu.moved(t, G * per).T
            sub = {}
            for b in range(G):
                for c in range(G):
                    blk = K[b * per:(b + 1) * per, c * per:(c + 1) * per]
                    _, col = linear_sum_assignment(blk.numpy(), maximize=True)
                    value[b, c] += float(blk[torch.arange(per), torch.as_tensor(col)].sum())
                    sub[b, c] = torch.as_tensor(col, dtype=torch.long)
            current += float(K[torch.arange(G * per), composite(og, family, perms)].sum())
            solved.append((family, sub))
        _, sig = linear_sum_assignment(value.numpy(), maximize=True)
        new_val = float(value[torch.arange(G), torch.as_tensor(sig)].sum())
        if not new_val > current + 1e-12 * max(1.0, abs(current)):
            return False
        sig = torch.as_tensor(sig, dtype=torch.long)
        inv = torch.argsort(sig)
        perms[og] = sig
        for family, sub in solved:
            within_first = order[family[0]] < order[og]
            for c, w in enumerate(family):  # block c's group: of B's block c, or of the result's
                perms[w] = sub[int(inv[c]), c] if within_first else sub[c, int(sig[c])]
        return True

    rng = np.random.default_rng(seed)
    best, best_score = None, -math.inf
    names = sorted(sizes)
    for _ in range(max(1, restarts)):
        perms = {g: torch.arange(n) for g, n in sizes.items()}
        for _it in range(max_iter):
            improved = False
            for gi in rng.permutation(len(names)):
                g = names[gi]
                if g in inside:
                    continue
                if g in blocks:
                    improved |= joint_step(g, perms)
                    continue
                n = sizes[g]
                cost = torch.zeros(n, n, dtype=torch.float64)
                for m in spec.groups[g]:
                    if m.name not in counted:
                        continue
                    k = axes[m.name].index((m, g))
                    a, b = sides(m.name, k, perms)
                    cost += m.moved(a, n) @ m.moved(b, n).T
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
def _as_batches(data, batch_size: int):
    yield from as_data(data, "align").batches(batch_size)


def _probe_views(values: dict, probes: Sequence[Probe]):
    for p in probes:
        v = values.get((p.kind, p.name))
        if v is None:
            continue
        if p.index is not None:
            v = v[p.index]
        if not isinstance(v, torch.Tensor):
            continue
        v = v.movedim(p.dim, -1)
        if p.start or p.length is not None:
            v = v[..., p.start:p.start + (v.shape[-1] - p.start if p.length is None else p.length)]
        yield p, v.reshape(-1, v.shape[-1]).double()


@torch.no_grad()
def _collect_stats(models, spec: PermutationSpec, data, batch_size: int, forward, probes: dict[str, list[Probe]]):
    """One pass of `data` through both models: per probe the sums needed for the correlation
    between every unit of A and every unit of B."""
    wanted = [p for ps in probes.values() for p, _ in ps]
    stats: dict[tuple, list] = {}
    for i, batch in enumerate(_as_batches(data, batch_size)):
        with at_batch(i, order="the data read for activation matching"):
            seen = []
            for m in models:
                batch_m = move(batch, next(m.parameters()).device)
                seen.append(record_values(m, batch_m, wanted, forward))
            for (pa, xa), (_, xb) in zip(_probe_views(seen[0], wanted), _probe_views(seen[1], wanted)):
                key = (pa.kind, pa.name, pa.index, pa.start, pa.length)
                xb = xb.to(xa.device)
                s = stats.setdefault(key, [0, 0.0, 0.0, 0.0, 0.0, 0.0])
                s[0] += xa.shape[0]
                s[1] = s[1] + xa.sum(0)
                s[2] = s[2] + xb.sum(0)
                s[3] = s[3] + (xa * xa).sum(0)
                s[4] = s[4] + (xb * xb).sum(0)
                s[5] = s[5] + xa.T @ xb
    return stats


TIE_BREAK = 1e-3  # weight of the other probes under features='post'


def select_probes(spec: PermutationSpec, features: str = "post") -> dict[str, list[tuple[Probe, float]]]:
    """The probes activation matching reads per group, with their weights.

    'post': the post-activation features decide where a group has any (the papers'
    choice); its other probes (the layer outputs before the activation) enter with weight
    `TIE_BREAK` only, so that units which never activate on the data (all-zero features,
    correlation 0 with everything) are still matched by their pre-activations.
    'all': every probe with weight 1 (layer outputs, activations, residual sums).
    """
    if features not in FEATURES:
        raise UserError(f"features must be one of {FEATURES}, got '{features}'")
    out = {}
    for g, ps in spec.probes.items():
        has_post = any(p.post for p in ps)
        if features == "post" and has_post:
            out[g] = [(p, 1.0 if p.post else TIE_BREAK) for p in ps]
        else:
            out[g] = [(p, 1.0) for p in ps]
    return out


def match_activations(model_a: nn.Module, model_b: nn.Module, spec: PermutationSpec, data,
                      batch_size: int = 1024, features: str = "post", forward=None,
                      restarts: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """Permutations of B's units maximising the summed correlation of matched units.

    Every probe of a group contributes its A×B correlation matrix, measured in one pass
    over `data`; `features` chooses the probes (`select_probes`). Groups that share a
    tensor axis (attention heads and the dimensions within them, GroupNorm groups and
    the channels within them) are solved together by the coordinate descent of
    `match_weights` on the correlation matrices; a group without probes stays as it is.
    """
    probes = select_probes(spec, features)
    if not any(probes.values()):
        raise UserError("activation matching found no layers to read in this model's permutation spec "
                        "(a hand-written spec has none): use method='weights'")
    stats = _collect_stats((model_a, model_b), spec, data, batch_size, forward, probes)
    # correlation matrices as pseudo-tensors: maximise Σ_u C[u, π(u)] = ⟨I, C Pᵀ⟩ over each
    # probe's B axis (axis 1), with the layout of the groups acting on the probe's axis
    sizes = spec.sizes(model_a.state_dict())
    eye, corr, groups = {}, {}, {}
    for g, ps in probes.items():
        for p, weight in ps:
            key = (p.kind, p.name, p.index, p.start, p.length)
            if key not in stats:
                continue
            cnt, sa, sb, saa, sbb, sab = stats[key]
            ma, mb = sa / cnt, sb / cnt
            cov = sab / cnt - ma[:, None] * mb[None, :]
            sd_a = (saa / cnt - ma * ma).clamp_min(0).sqrt()
            sd_b = (sbb / cnt - mb * mb).clamp_min(0).sqrt()
            c = weight * (cov / (sd_a[:, None] * sd_b[None, :] + 1e-12)).cpu()
            tname = f"probe:{g}:{p.kind}:{p.name}:{p.index}:{p.start}"
            eye[tname] = torch.eye(c.shape[0], dtype=torch.float64)
            corr[tname] = c
            for gg, outer, inner, *part in (p.layout or ((g, 1, 1),)):
                if gg in sizes:  # part: (start, length) of a group acting on one block of the axis
                    groups.setdefault(gg, []).append(Member(tname, 1, inner, outer, *part))
    if not groups:
        raise UserError("activation matching: the data reached none of the layers it reads")
    # the groups act on each probe's axis in the order they act on the model's tensors
    pspec = PermutationSpec({g: groups[g] for g in spec.groups if g in groups}, blocks=spec.blocks)
    perms = match_weights(eye, corr, pspec, restarts=restarts, seed=seed)
    for g, n in sizes.items():
        perms.setdefault(g, torch.arange(n))
    return perms


# --- the check: never silently wrong ------------------------------------------------------
def _outputs(out) -> list[torch.Tensor]:
    return [t for t in leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]


@torch.no_grad()
def _difference(model_b: nn.Module, other: nn.Module, batch, forward) -> tuple[float, float]:
    """(max |output difference|, max |output|) of two models on one batch, in eval mode."""
    modes = [(m, m.training) for mod in (model_b, other) for m in mod.modules()]
    try:
        model_b.eval()
        other.eval()
        device = next(model_b.parameters()).device
        ob = _outputs(forward(model_b, move(batch, device)))
        oo = _outputs(forward(other, move(batch, next(other.parameters()).device)))
    finally:
        for m, t in modes:
            m.training = t
    if not ob or len(ob) != len(oo):
        raise UserError("the alignment check found no floating-point outputs to compare: pass forward= that "
                        "returns the model's output tensor, or check=False")
    diff = max(float((a.double() - b.double().to(a.device)).abs().max()) for a, b in zip(ob, oo) if a.numel())
    scale = max(float(a.double().abs().max()) for a in ob if a.numel())
    return diff, scale


def check_alignment(model_b: nn.Module, aligned: nn.Module, spec: PermutationSpec, perms: Mapping, batch,
                    forward=None, tol: float = CHECK_TOL) -> float:
    """Raise `UserError` (one line, naming the groups) unless `aligned` computes the same
    function as `model_b` on `batch`; returns the relative difference."""
    fwd = criterion(forward=forward).forward
    diff, scale = _difference(model_b, aligned, batch, fwd)
    rel = diff / max(scale, 1e-12)
    if rel <= tol:
        return rel
    # which groups break it: apply each one alone
    sb = model_b.state_dict()
    bad = []
    for g, p in perms.items():
        if bool((_as_perm(p) == torch.arange(len(p))).all()):
            continue
        one = copy.deepcopy(model_b)
        one.load_state_dict(apply_permutation(sb, spec, {g: p}))
        d, _ = _difference(model_b, one, batch, fwd)
        if d / max(scale, 1e-12) > tol:
            bad.append(g)
    named = ", ".join(f"'{g}'" for g in (bad or [g for g in perms]))
    raise UserError(
        f"alignment check failed: the permuted model does not compute the same function as B (largest output "
        f"difference {diff:.3g} against an output scale of {scale:.3g}); the permutation of group(s) {named} "
        f"({spec.structure} spec) is not a symmetry of this model: pass spec= with the groups written by hand"
    )


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
    features: str = "post",
    forward=None,
    check: bool = True,
    check_tol: float = CHECK_TOL,
):
    """Return a copy of `model_b` with its hidden units permuted to match `model_a`.

    Args:
        method: 'weights' (weight matching, no data needed) or 'activations' (correlation
            of every group's units over `data`).
        data: any data form of `Objective` (a `Split`, (x, y) tensors, a dict of arrays,
            a Dataset or DataLoader); needed for 'activations'; its first batch also serves
            the derivation (shapes) and the check.
        spec: the permutation groups; derived from `model_a` when None. A dict
            {group: [(state_dict_name, axis[, inner]), ...]} is accepted too. Groups that
            permute the same tensor axis (or tied tensors) are merged.
        features: activation matching reads 'post' (post-activation features where a
            group has them, the papers' choice; default) or 'all' (every layer output,
            activation and residual sum of the group).
        forward: ``forward(model, batch) -> output`` (the batch contract of `Objective`).
        check: run B and the aligned B on one batch (of `data`, or made up from the first
            layers) and raise `UserError` naming the groups if their outputs differ by
            more than `check_tol` times the largest output.
        restarts: weight matching's random sweep orders: how many (the best is kept).
        max_iter: weight matching's sweeps per order, at most.
        seed: the seed of the sweep orders.
        return_perms: also return {group: LongTensor[n]} (unit i of the result is unit
            `perms[g][i]` of B).

    The result computes the same function as `model_b` (checked, up to rounding).
    """
    if method not in METHODS:
        raise UserError(f"method must be one of {METHODS}, got '{method}'")
    if features not in FEATURES:
        raise UserError(f"features must be one of {FEATURES}, got '{features}'")
    if not isinstance(model_a, nn.Module) or not isinstance(model_b, nn.Module):
        raise TypeError("align() takes two torch.nn.Module objects")
    sa, sb = model_a.state_dict(), model_b.state_dict()
    if set(sa) != set(sb) or any(sa[k].shape != sb[k].shape for k in sa):
        raise UserError("align() needs two models of the same architecture (their state dicts differ)")
    example = example_batch(model_a, data, forward) if (check or spec is None) else None
    if spec is None:
        spec = permutation_spec(model_a, example=example, forward=forward)
    else:
        if not isinstance(spec, PermutationSpec):
            spec = PermutationSpec(dict(spec))
        spec = normalise_spec(spec, model_a)
    if not spec.groups:  # nothing to permute (e.g. an LSTM with a Linear head): B as it is
        perms = {}
    elif method == "weights":
        perms = match_weights(sa, sb, spec, max_iter=max_iter, restarts=restarts, seed=seed)
    else:
        if data is None:
            raise UserError("method='activations' needs data= (a few thousand training samples)")
        if not spec.probes:
            derived = permutation_spec(model_a, example=example, forward=forward)
            spec.probes = {g: ps for g, ps in derived.probes.items() if g in spec.groups}
        perms = match_activations(model_a, model_b, spec, data, batch_size, features=features, forward=forward)
    out = copy.deepcopy(model_b)
    out.load_state_dict(apply_permutation(sb, spec, perms))
    out.train(model_b.training)
    if check:
        if example is None:
            raise UserError("align() checks that the aligned model computes B's function on one batch, and could "
                            "not make one up for this model: pass data= (a few samples), or check=False")
        check_alignment(model_b, out, spec, perms, example, forward, check_tol)
    return (out, perms) if return_perms else out


__all__ = ["CHECK_TOL", "FEATURES", "METHODS", "TIE_BREAK", "Member", "PermutationSpec", "Probe", "align", "apply_permutation",
           "check_alignment", "match_activations", "match_weights", "normalise_spec", "permutation_spec",
           "random_permutation", "select_probes"]
