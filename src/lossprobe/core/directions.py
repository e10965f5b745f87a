"""Directions in parameter space: random (normalised), between models, planes, PCA.

Every function returns `Direction` objects: a flat vector [P] in the layout of a
`ParamSpace` plus a `meta` dict saying how it was made (kind, seed, normalisation, ...),
so a saved surface can be reproduced.

Normalisation of a random Gaussian direction d against reference weights θ
(Li et al., 2018, "Visualizing the Loss Landscape of Neural Nets"):

    filter  for every weight tensor, each output filter (row of a Linear weight, output
            channel of a Conv weight, the output column of an HF Conv1D or ConvTranspose
            weight: the tensor's `Entry.unit_axis`) is rescaled so that
            ‖d_filter‖ = ‖θ_filter‖. One-dimensional tensors that are not ignored (biases,
            norm parameters, running statistics when asked for) count as one filter.
    layer   every tensor is rescaled so that ‖d_tensor‖ = ‖θ_tensor‖.
    model   the whole vector is rescaled so that ‖d‖ = ‖θ‖ (over the entries not ignored).
    None    the raw N(0, 1) draw.

Ignored kinds (default biases and normalisation parameters, as Li et al. do) are zero in
the direction, so those parameters stay at the reference value along it.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from lossprobe.core.space import KINDS, ParamSpace
from lossprobe.core.vectors import CHUNK, dot64, norm64, work_chunk
from lossprobe.errors import UserError

NORMS = ("filter", "layer", "model", None)


@dataclass
class Direction:
    """A direction [P] in parameter space and how it was made.

    Attributes:
        vector: flat tensor [P] (the dtype and device of the space it was made for).
        meta: JSON-friendly description: kind ('random', 'between', 'plane', 'pca', 'given'),
            seed, norm, ignore, include_buffers, and kind-specific fields.
    """

    vector: torch.Tensor
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.vector.numel()

    @property
    def norm(self) -> float:
        return norm64(self.vector)

    def to(self, *args, **kwargs) -> "Direction":
        return Direction(self.vector.to(*args, **kwargs), dict(self.meta))

    def __repr__(self) -> str:
        return f"Direction(P={len(self)}, norm={self.norm:.4g}, meta={self.meta})"


def as_vector(obj, space: ParamSpace | None = None) -> torch.Tensor:
    """A flat [P] tensor from a Direction, a tensor/array, a module or a state dict."""
    if isinstance(obj, Direction):
        return obj.vector
    if isinstance(obj, nn.Module) or isinstance(obj, dict):
        if space is None:
            if not isinstance(obj, nn.Module):
                raise UserError("a state dict needs a ParamSpace to be flattened")
            space = ParamSpace(obj)
        return space.flatten(obj)
    if isinstance(obj, (torch.Tensor, np.ndarray, list, tuple)):
        t = torch.as_tensor(obj)
        return t.reshape(-1) if t.ndim != 1 else t
    raise TypeError(f"expected a Direction, a tensor, a module or a state dict, got {type(obj).__name__}")


# --- random directions ------------------------------------------------------------------
class Reference:
    """Reference weights read per tensor: a model's own parameters (no flat copy) or a flat
    vector [P]."""

    def __init__(self, space: ParamSpace, source):
        self.space = space
        if isinstance(source, nn.Module):
            self.live, self.flat = space._tensors(source), None
        else:
            self.live, self.flat = None, as_vector(source, space)
            space.check_vector(self.flat, "reference")

    def seg(self, e) -> torch.Tensor:
        """Entry `e` of the reference as a flat tensor in its own dtype (a view where possible)."""
        if self.flat is not None:
            return self.flat[e.slice]
        return self.live[e.name].detach().reshape(-1)

    def whole(self) -> torch.Tensor:
        """The reference as one flat vector (a copy for a model)."""
        return self.flat if self.flat is not None else self.space.flatten(self.live)


def _space_and_reference(space_or_model, include_buffers: bool, reference) -> tuple[ParamSpace, Reference | None]:
    if isinstance(space_or_model, ParamSpace):
        space = space_or_model
        ref = None
    elif isinstance(space_or_model, nn.Module):
        space = ParamSpace(space_or_model, include_buffers=include_buffers)
        ref = Reference(space, space_or_model)
    else:
        raise TypeError(f"expected a ParamSpace or an nn.Module, got {type(space_or_model).__name__}")
    if reference is not None:
        ref = Reference(space, reference.vector if isinstance(reference, Direction) else reference)
    return space, ref


def _check_options(norm, ignore) -> tuple[str, ...]:
    if norm not in NORMS:
        raise UserError(f"norm must be one of 'filter', 'layer', 'model' or None, got {norm!r}")
    ignore = (ignore,) if isinstance(ignore, str) else tuple(ignore or ())
    bad = [k for k in ignore if k not in KINDS]
    if bad:
        raise UserError(f"unknown kind(s) {bad} in ignore; choose from {list(KINDS)}")
    return ignore


def normalize(d: torch.Tensor, reference: torch.Tensor, space: ParamSpace, norm: str | None,
              ignore: Sequence[str] = ("bias", "norm")) -> torch.Tensor:
    """Return a normalised copy of direction `d` [P] against `reference` [P] (see module doc),
    in float64 (a small-model helper: `random_direction` normalises tensor by tensor)."""
    ignore = _check_options(norm, ignore)
    d = d.detach().to(torch.float64).clone()
    keep = ~space.mask(ignore) if ignore else torch.ones(space.numel, dtype=torch.bool)
    d[~keep.to(d.device)] = 0
    if norm is None:
        return d
    if reference is None:
        raise UserError(f"norm='{norm}' needs reference weights: pass a model or reference=θ")
    ref = reference.detach().to(d.device, torch.float64)
    if norm == "model":
        k = keep.to(d.device)
        return d * (ref[k].norm() / d[k].norm().clamp_min(1e-30))
    for e in space.entries:
        if e.kind in ignore:
            continue
        _normalize_entry(e, d[e.slice], lambda e=e: ref[e.slice], norm)
    return d


def _unit_norms(e, seg: torch.Tensor, rows: int = 1 << 14) -> torch.Tensor:
    """Per output unit the float64 norm of entry `e`'s values `seg` (any dtype), in row chunks
    (each row's norm is the same as over the whole tensor at once)."""
    u = seg.view(e.shape).movedim(e.unit_axis, 0)
    out = []
    for r in range(0, u.shape[0], rows):
        out.append(u[r:r + rows].reshape(min(rows, u.shape[0] - r), -1).double().norm(dim=1))
    return torch.cat(out)


def _normalize_entry(e, seg64: torch.Tensor, ref_seg, norm: str) -> None:
    """Scale the float64 values `seg64` of entry `e` in place against the reference (filter or layer)."""
    w = ref_seg()
    if norm == "filter" and len(e.shape) >= 2 and e.unit_axis is not None:
        seg64.mul_(e.per_unit(_unit_norms(e, w) / e.units(seg64).norm(dim=1).clamp_min(1e-30)))
    else:  # layer norm, or a 1-D tensor under filter norm: one filter
        seg64.mul_(w.double().norm() / seg64.norm().clamp_min(1e-30))


def _draw(space: ParamSpace, g: torch.Generator) -> torch.Tensor:
    # Drawn on the CPU in float64 so the same seed gives the same direction on any device.
    return torch.randn(space.numel, generator=g, dtype=torch.float64)


class _Stream:
    """The seeded float64 draw of n values (`_draw`), read in pieces of any size; it can be
    rewound to a snapshot (to read a tensor twice: once for its norms, once to scale it)."""

    def __init__(self, n: int, gen: torch.Generator, chunk: int):
        self.n, self.gen = n, gen
        self.chunk = max(16, chunk - chunk % 16)
        self.start = 0  # values drawn so far (pieces of `_draw_blocks`)
        self.cur: torch.Tensor | None = None
        self.pos = 0

    def _next_piece(self):
        size = self.chunk if self.n - self.start >= 2 * self.chunk else self.n - self.start
        self.cur = torch.randn(size, generator=self.gen, dtype=torch.float64)
        self.start += size
        self.pos = 0

    def take(self, k: int) -> torch.Tensor:
        """The next k values (float64)."""
        out = torch.empty(k, dtype=torch.float64)
        filled = 0
        while filled < k:
            if self.cur is None or self.pos == self.cur.numel():
                self._next_piece()
            t = min(k - filled, self.cur.numel() - self.pos)
            out[filled:filled + t] = self.cur[self.pos:self.pos + t]
            filled += t
            self.pos += t
        return out

    def snapshot(self):
        return self.gen.get_state(), self.start, None if self.cur is None else self.cur.clone(), self.pos

    def restore(self, snap) -> None:
        state, self.start, cur, self.pos = snap
        self.gen.set_state(state)
        self.cur = cur


def _row_blocks(e, chunk: int):
    """(first row, rows) blocks of entry `e` along its first axis, about `chunk` values each."""
    rows = e.shape[0] if len(e.shape) else 1
    per = max(1, e.numel // max(rows, 1))
    step = max(1, chunk // per)
    for r in range(0, rows, step):
        yield r, min(step, rows - r)


def _random_entry(e, st: _Stream, out: torch.Tensor, ref: Reference | None, norm, ignored: bool, scale,
                  chunk: int) -> None:
    """Entry `e` of a normalised random direction into `out` (its slice of the vector), from the
    stream: whole when it is small (exactly `normalize`'s arithmetic), else in blocks of rows
    (filter norm along the first axis: the same arithmetic per row), else twice (its norms, then
    its values)."""
    n = e.numel
    if ignored or norm is None or norm == "model":
        for r, k in _row_blocks(e, chunk):
            per = n // max(e.shape[0] if len(e.shape) else 1, 1)
            vals = st.take(k * per)
            if ignored:
                out[r * per:(r + k) * per].zero_()
            else:
                out[r * per:(r + k) * per].copy_(vals.mul_(scale) if scale is not None else vals)
        return
    if n <= chunk:
        seg = st.take(n)
        _normalize_entry(e, seg, lambda: ref.seg(e), norm)
        out.copy_(seg)
        return
    w = ref.seg(e)
    if norm == "filter" and len(e.shape) >= 2 and e.unit_axis == 0:
        per = n // e.shape[0]
        wr = w.view(e.shape[0], per)
        for r, k in _row_blocks(e, chunk):
            vals = st.take(k * per).view(k, per)
            vals.mul_((wr[r:r + k].double().norm(dim=1) / vals.norm(dim=1).clamp_min(1e-30))[:, None])
            out[r * per:(r + k) * per].copy_(vals.reshape(-1))
        return
    # layer norm, or filter norm along another axis, of a large tensor: norms first, then values
    snap = st.snapshot()
    axis = e.unit_axis if (norm == "filter" and len(e.shape) >= 2 and e.unit_axis is not None) else None
    sq = torch.zeros(e.shape[axis] if axis is not None else 1, dtype=torch.float64)
    for r, k in _row_blocks(e, chunk):
        vals = st.take(k * (n // e.shape[0])).view(k, *e.shape[1:])
        if axis is None:
            sq += vals.square().sum()
        else:
            sq += vals.square().sum([d for d in range(vals.ndim) if d != axis])
    st.restore(snap)
    if axis is None:
        f = w.double().norm() / sq.sqrt().clamp_min(1e-30)
    else:
        f = _unit_norms(e, w) / sq.sqrt().clamp_min(1e-30)
    shape = [1] * len(e.shape)
    if axis is not None:
        shape[axis] = -1
    for r, k in _row_blocks(e, chunk):
        per = n // e.shape[0]
        vals = st.take(k * per).view(k, *e.shape[1:])
        vals.mul_(f.view(shape) if axis is not None else f)
        out[r * per:(r + k) * per].copy_(vals.reshape(-1))


def _random_vector(space: ParamSpace, ref: Reference | None, gen: torch.Generator, norm, ignore,
                   chunk: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """One normalised Gaussian direction [P] in the space's dtype and device: the values of
    ``normalize(_draw(space, gen), ...)`` cast to the model's dtype, made tensor by tensor
    from the seeded stream, with float64 temporaries of about `chunk` values ('model' norm
    reads the stream twice to know its scale)."""
    if norm is not None and ref is None:
        raise UserError(f"norm='{norm}' needs reference weights: pass a model or reference=θ")
    out = torch.empty(space.numel, dtype=space.dtype, device=space.device) if out is None else out
    scale = None
    if norm == "model":
        state = gen.get_state()
        st = _Stream(space.numel, gen, chunk)
        dd = rr = 0.0
        for e in space.entries:
            per = e.numel // max(e.shape[0] if len(e.shape) else 1, 1)
            for _, k in _row_blocks(e, chunk):
                vals = st.take(k * per)
                if e.kind not in ignore:
                    dd += float(vals.square().sum())
            if e.kind not in ignore:
                rr += norm64(ref.seg(e)) ** 2
        scale = math.sqrt(rr) / max(math.sqrt(dd), 1e-30)
        gen.set_state(state)
    st = _Stream(space.numel, gen, chunk)
    for e in space.entries:
        _random_entry(e, st, out[e.slice], ref, norm, e.kind in ignore, scale, chunk)
    return out


def _sharded_vector(space: ParamSpace, ref: Reference | None, gen: torch.Generator, norm, ignore, chunk: int,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """This rank's rows of the direction one process draws (`normalize(_draw(...))` of the whole
    model, `lossprobe.core.sharding`): every rank reads the seeded stream of the whole vector and
    keeps its rows; norms of the draw are known on every rank, the reference's are summed over
    the ranks."""
    if norm is not None and ref is None:
        raise UserError(f"norm='{norm}' needs reference weights: pass a model or reference=θ")
    sh = space.shards
    out = torch.empty(space.numel, dtype=space.dtype, device=space.device) if out is None else out
    chunk = max(1 << 14, min(chunk, sh.global_numel // 64))

    def rows_of(pc):  # (first row, rows) blocks of the whole tensor
        rows = pc.shape[0] if pc.shape else 1
        step = max(1, chunk // max(pc.per_row, 1))
        return [(r, min(step, rows - r)) for r in range(0, rows, step)]

    def ref_sq(e, axis):  # the reference's squared norms: per unit, or of the whole tensor
        w = ref.seg(e).double()
        if axis is None:
            return sh.reduce(w.square().sum().reshape(1))
        sq = w.view(e.shape).square().sum([d for d in range(len(e.shape)) if d != axis])
        return sq if axis == 0 else sh.reduce(sq)  # along the rows each rank holds its own units

    scale = None
    if norm == "model":
        state = gen.get_state()
        st = _Stream(sh.global_numel, gen, chunk)
        dd = 0.0
        for e in space.entries:
            pc = sh.pieces[e.name]
            for _, k in rows_of(pc):
                vals = st.take(k * pc.per_row)
                if e.kind not in ignore:
                    dd += float(vals.square().sum())
        rr = sh.sum(sum(norm64(ref.seg(e)) ** 2 for e in space.entries if e.kind not in ignore))
        scale = math.sqrt(rr) / max(math.sqrt(dd), 1e-30)
        gen.set_state(state)
    st = _Stream(sh.global_numel, gen, chunk)
    for e in space.entries:
        pc = sh.pieces[e.name]
        seg = out[e.slice]
        per = pc.per_row
        if e.kind in ignore or norm in (None, "model"):
            f = None
        elif norm == "filter" and len(pc.shape) >= 2 and e.unit_axis is not None:
            axis = e.unit_axis
            wn = ref_sq(e, axis).sqrt().cpu()  # (the draw is on the CPU)
            snap = st.snapshot()
            dq = torch.zeros(pc.shape[axis], dtype=torch.float64)
            for r, k in rows_of(pc):
                v = st.take(k * per).view(k, *pc.shape[1:])
                if axis == 0:
                    dq[r:r + k] += v.reshape(k, -1).square().sum(1)
                else:
                    dq += v.square().sum([d for d in range(v.ndim) if d != axis])
            st.restore(snap)
            if axis == 0:  # this rank's units are its rows
                dq = dq[pc.r0:pc.r1]
            f = wn / dq.sqrt().clamp_min(1e-30)
        else:  # layer norm, or a 1-D tensor under filter norm: one unit
            wn = float(ref_sq(e, None).sqrt())
            snap = st.snapshot()
            dq = sum(float(st.take(k * per).square().sum()) for _, k in rows_of(pc))
            st.restore(snap)
            f = wn / max(math.sqrt(dq), 1e-30)
        for r, k in rows_of(pc):
            v = st.take(k * per)
            lo, hi = max(r, pc.r0), min(r + k, pc.r1)
            if hi <= lo:
                continue
            v = v[(lo - r) * per:(hi - r) * per]
            dst = seg[(lo - pc.r0) * per:(hi - pc.r0) * per]
            if e.kind in ignore:
                dst.zero_()
                continue
            if f is not None:
                if len(pc.shape) >= 2 and norm == "filter" and e.unit_axis is not None:
                    shape = [1] * len(pc.shape)
                    if e.unit_axis == 0:
                        ff, shape[0] = f[lo - pc.r0:hi - pc.r0], -1
                    else:
                        ff, shape[e.unit_axis] = f, -1
                    v = (v.view(hi - lo, *pc.shape[1:]) * ff.view(shape)).reshape(-1)
                else:
                    v = v * f
            elif scale is not None:
                v = v * scale
            dst.copy_(v)
    return out


def _work_chunk(space: ParamSpace, chunk: int) -> int:
    """Values per float64 temporary while drawing: `chunk`, or 1/64 of the model when that is less
    (so the temporaries stay a small fraction of a model size)."""
    return max(1 << 14, min(chunk, space.numel // 64))  # (not vectors.work_chunk: tests pass tiny chunks)


def _small(space: ParamSpace, chunk: int) -> bool:
    """Below one chunk of parameters the float64 vectors are cheap: use the plain arithmetic."""
    return space.numel <= chunk


def random_direction(space_or_model, seed: int = 0, norm: str | None = "filter",
                     ignore: Sequence[str] = ("bias", "norm"), include_buffers: bool = False,
                     reference=None, chunk: int = CHUNK) -> Direction:
    """A seeded Gaussian direction [P], normalised against the reference weights.

    Args:
        space_or_model: an `nn.Module` (its parameters are the reference unless
            `reference` is given) or a `ParamSpace` (then `reference` is needed for
            filter/layer/model normalisation).
        seed: seed of the Gaussian draw (CPU generator; identical across devices).
        norm: 'filter' (Li et al.), 'layer', 'model' or None.
        ignore: parameter kinds set to zero in the direction ('bias', 'norm', 'buffer',
            'weight'). Pass () to move every parameter.
        include_buffers: put BatchNorm running statistics in the space (and so, unless
            'buffer' is in `ignore`, in the direction).
        reference: θ [P] (tensor, Direction or module) to normalise against.

    The direction is made tensor by tensor on the model's device in its dtype: no float64
    copy of P is made (the draw is the same seeded float64 stream as always, in chunks).
    """
    space, ref = _space_and_reference(space_or_model, include_buffers, reference)
    ignore = _check_options(norm, ignore)
    g = torch.Generator().manual_seed(int(seed))
    if space.shards is not None:
        d = _sharded_vector(space, ref, g, norm, ignore, chunk)
    elif _small(space, chunk):
        d = normalize(_draw(space, g), ref.whole() if ref is not None else None, space, norm, ignore)
        d = d.to(space.dtype).to(space.device)
    else:
        d = _random_vector(space, ref, g, norm, ignore, _work_chunk(space, chunk))
    meta = {"kind": "random", "seed": int(seed), "index": 0, "norm": norm, "ignore": list(ignore),
            "include_buffers": space.include_buffers}
    return Direction(d, meta)


def random_plane(space_or_model, seed: int = 0, norm: str | None = "filter",
                 ignore: Sequence[str] = ("bias", "norm"), include_buffers: bool = False,
                 reference=None, orthogonal: bool = False, chunk: int = CHUNK) -> tuple[Direction, Direction]:
    """Two seeded Gaussian directions (the first equals `random_direction(seed)`).

    Both come from one generator seeded with `seed` (the second is the next draw).
    With `orthogonal=True` the second is made orthogonal to the first (Gram–Schmidt)
    and rescaled to its norm before projection; filter normalisation then holds only
    approximately for it (in high dimension the projection removes very little).
    Memory: the two directions in the model's dtype plus float64 temporaries of one tensor.
    """
    space, ref = _space_and_reference(space_or_model, include_buffers, reference)
    ignore = _check_options(norm, ignore)
    g = torch.Generator().manual_seed(int(seed))
    rows = torch.empty(2, space.numel, dtype=space.dtype, device=space.device)  # one [2, P] tensor: no stack later
    if space.shards is None and _small(space, chunk):
        r = ref.whole() if ref is not None else None
        d1 = normalize(_draw(space, g), r, space, norm, ignore)
        d2 = normalize(_draw(space, g), r, space, norm, ignore)
        cos = float(d1 @ d2 / (d1.norm() * d2.norm()).clamp_min(1e-30))
        if orthogonal:
            n2 = d2.norm()
            d2 = d2 - (d2 @ d1) / (d1 @ d1).clamp_min(1e-30) * d1
            d2 = d2 * (n2 / d2.norm().clamp_min(1e-30))
        rows[0].copy_(d1)
        rows[1].copy_(d2)
        d1, d2 = rows[0], rows[1]
    else:
        wc = _work_chunk(space, chunk)
        make = _sharded_vector if space.shards is not None else _random_vector
        d1 = make(space, ref, g, norm, ignore, chunk if space.shards is not None else wc, out=rows[0])
        d2 = make(space, ref, g, norm, ignore, chunk if space.shards is not None else wc, out=rows[1])
        n1, n2 = space.norm(d1), space.norm(d2)
        d12 = space.dot(d1, d2)
        cos = d12 / max(n1 * n2, 1e-30)
        if orthogonal:
            coef = d12 / max(n1 * n1, 1e-30)
            for a in range(0, space.numel, wc):
                b = min(space.numel, a + wc)
                d2[a:b] = (d2[a:b].double() - coef * d1[a:b].double()).to(d2.dtype)
            f = n2 / max(space.norm(d2), 1e-30)
            for a in range(0, space.numel, wc):
                b = min(space.numel, a + wc)
                d2[a:b] = (d2[a:b].double() * f).to(d2.dtype)
    base = {"kind": "random", "seed": int(seed), "norm": norm, "ignore": list(ignore),
            "include_buffers": space.include_buffers, "orthogonal": bool(orthogonal), "cosine_before": cos}
    return (Direction(d1, {**base, "index": 0}), Direction(d2, {**base, "index": 1}))


# --- directions between models ------------------------------------------------------------
def between(model_a, model_b, space: ParamSpace | None = None) -> Direction:
    """θ_B − θ_A [P]: from model (or vector) A to B; A + 1·d is B."""
    if space is None and isinstance(model_a, nn.Module):
        space = ParamSpace(model_a)
        if isinstance(model_b, nn.Module):
            space.check_compatible(ParamSpace(model_b))
    a, b = as_vector(model_a, space), as_vector(model_b, space)
    if a.shape != b.shape:
        raise UserError(f"the two points have {a.numel()} and {b.numel()} parameters: they must match")
    d = b.to(a.dtype) - a
    return Direction(d, {"kind": "between", "norm": None, "length": float(d.double().norm())})


def plane_through(theta0, theta1, theta2, space: ParamSpace | None = None) -> tuple[Direction, Direction]:
    """Directions (d1, d2) of the plane through three points, with θ0 as its origin.

    Gram–Schmidt without rescaling: d1 = θ1 − θ0 and d2 = the part of θ2 − θ0 orthogonal
    to d1. So θ0 sits at coordinates (0, 0), θ1 at (1, 0) and θ2 at (x2, 1) with
    x2 = ⟨θ2 − θ0, d1⟩ / ‖d1‖²; `meta['points']` lists them and `meta['lengths']`
    gives ‖d1‖ and ‖d2‖ (one unit along each axis, in parameter units).
    Points may be models, state dicts (with `space`) or flat tensors.
    """
    if space is None and isinstance(theta0, nn.Module):
        space = ParamSpace(theta0)
    t0, t1, t2 = (as_vector(t, space).to(torch.float64) for t in (theta0, theta1, theta2))
    if not (t0.shape == t1.shape == t2.shape):
        raise UserError("the three points must have the same number of parameters")
    d1 = t1 - t0
    n1 = float(d1 @ d1)
    if n1 == 0:
        raise UserError("the first two points are identical: they do not define a direction")
    v = t2 - t0
    x2 = float(v @ d1) / n1
    d2 = v - x2 * d1
    if float(d2.norm()) <= 1e-5 * float(v.norm()):  # float32 inputs: rounding leaves ~1e-7
        raise UserError("the three points are (nearly) on one line: they do not define a plane")
    dtype = as_vector(theta0, space).dtype
    meta = {"kind": "plane", "norm": None, "points": {"theta0": [0.0, 0.0], "theta1": [1.0, 0.0], "theta2": [x2, 1.0]},
            "lengths": [n1 ** 0.5, float(d2.norm())]}
    return (Direction(d1.to(dtype), {**meta, "index": 0}), Direction(d2.to(dtype), {**meta, "index": 1}))


# --- PCA of a trajectory ------------------------------------------------------------------
def _rows(trajectory, tmpdir: str | None) -> tuple:
    """(rows, spill): the trajectory's rows as an indexable object (a tensor, an array, or a
    memmap on disk) and the temporary file this function created for them (None when it
    created none). Only that file is ever deleted: a user's .npy, memory-mapped or not,
    stays."""
    if isinstance(trajectory, torch.Tensor):
        if trajectory.ndim != 2:
            raise UserError(f"a trajectory tensor must be [T, P], got shape {tuple(trajectory.shape)}")
        return trajectory.detach().cpu(), None
    if isinstance(trajectory, np.ndarray):
        if trajectory.ndim != 2:
            raise UserError(f"a trajectory array must be [T, P], got shape {trajectory.shape}")
        return trajectory, None
    if isinstance(trajectory, (str, os.PathLike)):
        arr = np.load(trajectory, mmap_mode="r")
        if arr.ndim != 2:
            raise UserError(f"the trajectory {trajectory} must be [T, P], got shape {arr.shape}")
        return arr, None
    # An iterable of vectors (e.g. a generator reading checkpoints): spill to a memory-mapped
    # file so that memory stays bounded and we can read it twice (Gram matrix, then directions).
    fd, path = tempfile.mkstemp(suffix=".f32", dir=tmpdir)
    P, T = None, 0
    with os.fdopen(fd, "wb") as f:
        for v in trajectory:
            v = as_vector(v).detach().cpu().to(torch.float32).numpy()
            if P is None:
                P = v.size
            elif v.size != P:
                os.unlink(path)
                raise UserError(f"trajectory vector {T} has {v.size} entries, the first has {P}")
            f.write(v.tobytes())
            T += 1
    if not T:
        os.unlink(path)
        raise UserError("the trajectory is empty")
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=(T, P))
    return mm, path


def _block(X, i0: int, i1: int) -> torch.Tensor:
    b = X[:, i0:i1]
    return b.to(torch.float64) if isinstance(b, torch.Tensor) else torch.from_numpy(np.asarray(b, dtype=np.float64))


def pca_directions(trajectory, k: int = 2, center: str = "final", block: int = 1 << 18,
                   tmpdir: str | None = None) -> tuple[list[Direction], np.ndarray]:
    """Top-k principal directions of a recorded trajectory and their explained variance.

    Args:
        trajectory: [T, P] tensor or array (or a path to a .npy file, memory-mapped), or an
            iterable of T flat vectors / Directions (spilled to a temporary memory-mapped file).
        k: number of directions.
        center: 'final' (differences to the last point, as Li et al.) or 'mean'.
        block: parameters per block when forming the Gram matrix.
    Memory: the T×T Gram matrix (float64) plus one [T, block] slab at a time; never a
    [T, P] copy or a P×P matrix. Cost O(T² P).
    Returns:
        (directions, explained_variance_ratio [k]): unit-norm directions [P] (float32),
        signed so that the trajectory's first point has a negative coordinate along
        each; ratios are λ_i / Σλ of the centred points.
    """
    if center not in ("final", "mean"):
        raise UserError(f"center must be 'final' or 'mean', got {center!r}")
    X, spill = _rows(trajectory, tmpdir)
    try:
        return _pca(X, k, center, block)
    finally:
        if spill is not None:  # the file this call wrote, and only that one
            del X
            try:
                os.unlink(spill)
            except OSError:
                pass


def _pca(X, k: int, center: str, block: int) -> tuple[list[Direction], np.ndarray]:
    T, P = X.shape
    if k < 1:
        raise UserError(f"k must be at least 1, got {k}")
    if T < 2:
        raise UserError(f"a trajectory needs at least 2 points for PCA, got {T}")
    G = torch.zeros(T, T, dtype=torch.float64)
    for i0 in range(0, P, block):
        b = _block(X, i0, i0 + block)
        if not torch.isfinite(b).all():
            bad = (~torch.isfinite(b)).any(1).nonzero()[:, 0].tolist()
            raise UserError(f"the trajectory has NaN or infinite values (in point(s) {bad[:5]} of {T}, parameter "
                            f"block {i0}): its principal directions are undefined")
        G += b @ b.T
    if not torch.isfinite(G).all():
        raise UserError("the trajectory's values are too large: their products overflow (inf); rescale it")
    # Centre the Gram matrix without touching X again: Gc = (X − 1cᵀ)(X − 1cᵀ)ᵀ.
    if center == "mean":
        J = torch.eye(T, dtype=torch.float64) - 1.0 / T
        Gc = J @ G @ J
        W = J  # rows of centred X are W @ X
    else:
        W = torch.eye(T, dtype=torch.float64)
        W[:, -1] -= 1.0
        Gc = W @ G @ W.T
    Gc = (Gc + Gc.T) / 2
    evals, evecs = torch.linalg.eigh(Gc)
    evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
    total = float(evals.sum())
    rank = int((evals > 1e-12 * max(total, 1e-300)).sum())
    if rank < k:
        raise UserError(f"the trajectory spans only {rank} direction(s) around its {center} point; asked for k={k}")
    # v_i = Xcᵀ u_i / sqrt(λ_i) with Xc = W X, formed block by block.
    C = (W.T @ evecs[:, :k]) / evals[:k].sqrt()  # [T, k]
    V = torch.empty(k, P, dtype=torch.float64)
    for i0 in range(0, P, block):
        V[:, i0:i0 + block] = C.T @ _block(X, i0, i0 + block)
    # Sign: the first trajectory point should lie on the negative side of each axis.
    coords0 = (evecs[0, :k] * evals[:k].sqrt())  # coordinate of row 0 of Xc along v_i
    for i in range(k):
        if coords0[i] > 0:
            V[i] = -V[i]
    evr = (evals[:k] / total).numpy() if total > 0 else np.zeros(k)
    dirs = [Direction(V[i].to(torch.float32), {"kind": "pca", "norm": "unit", "index": i, "center": center,
                                               "explained_variance_ratio": float(evr[i]), "points": T})
            for i in range(k)]
    return dirs, evr


def project(points, origin, directions: Sequence[Direction] | torch.Tensor) -> np.ndarray:
    """Least-squares coordinates [T, m] of points [T, P] on the plane origin + c @ directions."""
    D = torch.stack([as_vector(d).to(torch.float64) for d in directions]) if not isinstance(directions, torch.Tensor) \
        else directions.to(torch.float64)
    X = torch.as_tensor(np.asarray(points) if not isinstance(points, torch.Tensor) else points).to(torch.float64)
    o = as_vector(origin).to(torch.float64)
    A = D @ D.T
    return torch.linalg.solve(A, D @ (X - o).T).T.numpy()


def stack(directions: Iterable) -> torch.Tensor:
    """Directions (Direction objects, [P] tensors, or one [m, P] tensor) as an [m, P] tensor."""
    if isinstance(directions, torch.Tensor):
        return directions[None] if directions.ndim == 1 else directions
    if isinstance(directions, Direction):
        return directions.vector[None]
    vs = [as_vector(d) for d in directions]
    if not vs:
        raise UserError("no directions given")
    return torch.stack([v.to(vs[0].dtype) for v in vs])


# --- directions that matter: curvature eigenvectors, the gradient --------------------------
WHOLE_NORMS = ("unit", "model", None)


def rescale(d: torch.Tensor, norm: str | None, reference: torch.Tensor | None = None,
            dtype: torch.dtype | None = None, chunk: int = CHUNK, out: torch.Tensor | None = None) -> torch.Tensor:
    """`d` scaled as a whole (its shape kept, so an eigenvector stays one): 'unit' (‖d‖ = 1),
    'model' (‖d‖ = ‖θ‖ of `reference`, a vector or a model) or None (as it is). The scaling is
    float64 arithmetic, chunk by chunk; the result is float64 (as always) unless `dtype` is given,
    then it is written in that dtype without a float64 copy of P."""
    if norm not in WHOLE_NORMS:
        raise UserError(f"this direction is scaled as a whole: norm must be 'unit', 'model' or None, got {norm!r} "
                        "(filter or layer normalisation would change its shape)")
    d = d.detach()
    if norm is None:
        return d.to(dtype or torch.float64) if out is None else out.copy_(d)
    n = norm64(d)
    if not n > 0:
        raise UserError("the direction is zero: it cannot be normalised")
    if norm == "unit":
        target = 1.0
    elif isinstance(reference, Reference):
        target = math.sqrt(sum(norm64(reference.seg(e)) ** 2 for e in reference.space.entries))
    elif isinstance(reference, nn.Module):
        ref = Reference(ParamSpace(reference), reference)
        target = math.sqrt(sum(norm64(ref.seg(e)) ** 2 for e in ref.space.entries))
    else:
        target = norm64(reference)
    out = torch.empty(d.shape, dtype=dtype or torch.float64, device=d.device) if out is None else out
    flat, of = d.reshape(-1), out.reshape(-1)
    step = flat.numel() if flat.numel() <= chunk else work_chunk(flat.numel(), chunk)
    for a in range(0, flat.numel(), step):
        of[a:a + step] = flat[a:a + step].double() * (target / n)
    return out


def gradient_direction(objective, norm: str | None = "unit") -> Direction:
    """The gradient of the `Objective`'s mean loss at its parameters, scaled as a whole
    (unit by default; meta: the gradient's norm and the loss)."""
    loss, g = objective.loss_and_grad()
    gn = norm64(g)
    if not gn > 0:
        raise UserError("the gradient is zero at this point: it gives no direction")
    d = rescale(g, norm, Reference(objective.space, objective.model), dtype=objective.space.dtype)
    return Direction(d, {"kind": "gradient", "norm": norm, "length": norm64(d), "gradient_norm": gn,
                         "loss": float(loss)})


__all__ = ["Direction", "NORMS", "Reference", "WHOLE_NORMS", "between",
           "gradient_direction", "normalize", "pca_directions", "plane_through", "project", "random_direction",
           "random_plane", "rescale", "stack"]
