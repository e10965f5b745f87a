"""1-D slices and 2-D surfaces of the loss around a point, chunked, resumable, on Ray.

    theta(a)    = origin + a d1                  (slice, grid [n])
    theta(a, b) = origin + a d1 + b d2           (surface, grid [n1, n2]; rows follow d1)

The grid is cut into chunks (by default one row of a surface) that are evaluated with
`Objective.evaluate` (batches outer, points inner, what does not move hoisted) and written to
``out/chunks/`` as each finishes, atomically. What is computed is recorded by the chunk
files themselves (the `mask`), never by a sentinel value, so a loss that is NaN or inf is
stored as such. Killing the process and calling again with the same `out` evaluates
only the missing chunks; a directory that holds a different surface is refused.

`backend='ray'` runs the chunks as Ray tasks: model, data, origin and directions are
`ray.put` once and shared by every task; a failed task is retried; the driver writes the
chunk files, so resuming works the same as locally.

``lossprobe.surface(...)`` and ``lossprobe.slice(...)`` are this module's `surface` and `slice`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
import weakref
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors import safe_open
from torch import nn
from tqdm.auto import tqdm

from lossprobe.core.batching import TensorData, leaves
from lossprobe.core.distributed import is_main
from lossprobe.core.directions import Direction
from lossprobe.core.memory import check_vectors
from lossprobe.core.objective import Objective, as_objective
from lossprobe.core.vectors import all_finite, norm64, sha_update
from lossprobe.errors import UserError
from lossprobe.landscape import directions as D
from lossprobe.landscape.topology import persistence
from lossprobe.results import contract as results
from lossprobe.results import plotspec
from lossprobe.results.atomic import makedirs, save_npz, save_safetensors
from lossprobe.results.contract import Result, register
from lossprobe.results.plotspec import Series, line
from lossprobe.results.store import FolderLock, load_arrays, read_json, save_arrays, to_jsonable, write_json
from lossprobe.runtime.cluster import Executor, backend_name
from lossprobe.runtime.threads import torch_threads

FORMAT = 1


# --- grids ---------------------------------------------------------------------------
def grid_axis(lo: float, hi: float, steps: int) -> np.ndarray:
    """`steps` evenly spaced coordinates over [lo, hi] with 0 (the centre) exactly on the grid.

    When lo ≤ 0 ≤ hi the points are k·h for consecutive integers k, with h = (hi − lo)/(steps − 1):
    for a symmetric span and odd `steps` that is exactly linspace(lo, hi) with exact ends and
    an exact 0. When no k·h lands on lo (e.g. an even `steps` on a symmetric span) the grid is
    shifted by half a step towards the negative side so that 0 stays a grid point: steps=4 on
    (−1, 1) gives (−4/3, −2/3, 0, 2/3). A span that excludes 0 gives plain linspace (the
    centre is then not on the grid). steps=1 gives the single point 0 (or lo when 0 is outside).
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise UserError(f"steps must be a positive integer, got {steps!r}")
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise UserError(f"span ({lo}, {hi}) must be finite")
    if steps == 1:
        return np.array([0.0 if lo <= 0 <= hi else lo])
    if not lo < hi:
        raise UserError(f"span ({lo:g}, {hi:g}) is empty: the first value must be below the second")
    n = steps - 1
    if not lo <= 0 <= hi:
        return np.linspace(lo, hi, steps)
    width = hi - lo
    k_lo = int(math.floor(lo * n / width + 0.5 - 1e-9))
    k = np.arange(steps) + k_lo
    # k·width/n rather than k·h: exact at the ends whenever an end is a grid point
    return k * width / n


def _as_pair(v, what: str):
    if isinstance(v, (int, float, np.integer, np.floating)):
        return (v, v)
    v = tuple(v)
    if len(v) == 2 and all(isinstance(x, (int, float, np.integer, np.floating)) for x in v):
        return v
    raise UserError(f"{what} must be a pair of numbers, got {v!r}")


# --- the result ----------------------------------------------------------------------
DIRECTION_DIMS = {1: ("d1",), 2: ("d1", "d2")}
PLANE_DIMS = ("y", "x")  # a plane surface: rows are y (plane direction 2), columns x (direction 1)
_DIM_LABELS = {"d1": "direction 1", "d2": "direction 2", "x": "x (plane direction 1)", "y": "y (plane direction 2)"}


def _coord_name(dim: str, i: int) -> str:
    """The array name of a coordinate in files: xs/ys on a plane, coords_<i> along directions."""
    return {"x": "xs", "y": "ys"}.get(dim, f"coords_{i}")


@register
@dataclass
class Surface(Result):
    """Loss and accuracy on a grid of one (slice) or two (surface) named axes.

    One type for every grid of the loss: surfaces along random or chosen directions
    (dims ``("d1",)`` or ``("d1", "d2")``, row i at ``coords[0][i]`` along d1) and surfaces on
    a plane through optimiser paths (dims ``("y", "x")``: rows follow the plane's second
    direction, as an image of the plane is drawn). `dims` names the array axes in order,
    like an xarray DataArray, so a reader never has to guess which axis is which.

    Attributes:
        coords: list of 1-D coordinate arrays, one per dim: [n] or [n1], [n2].
        loss: mean loss, shape [n] or [n1, n2] (float64; NaN where not computed, or
            where the loss itself was NaN: `mask` tells the two apart).
        accuracy: same shape (NaN where not computed, the loss has no accuracy, or the
            loss was not finite).
        mask: bool, same shape: True where the point has been computed (None: all).
        meta: directions' metadata, spans, steps, data (name, n, subset seed), origin
            description, timing, backend.
        subset_indices: rows of the data split used (None: the whole split).
        dims: the names of the axes (default: d1[, d2]).
    """

    NAME: ClassVar[str] = "surface"
    GRIDDED: ClassVar[bool] = True

    coords: list
    loss: np.ndarray
    accuracy: np.ndarray
    mask: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    subset_indices: np.ndarray | None = None
    dims: tuple[str, ...] | None = None

    def __post_init__(self):
        self.coords = [np.asarray(c) for c in self.coords]
        if self.mask is None:
            self.mask = np.ones(np.shape(self.loss), dtype=bool)
        if self.dims is None:
            self.dims = DIRECTION_DIMS.get(len(self.coords), tuple(f"d{i + 1}" for i in range(len(self.coords))))
        self.dims = tuple(self.dims)
        if len(self.dims) != len(self.coords) or len(set(self.dims)) != len(self.dims):
            raise UserError(f"a surface needs one distinct name per axis, got dims {self.dims} for {len(self.coords)} axes")

    @classmethod
    def plane(cls, xs, ys, loss, accuracy, meta: dict | None = None) -> "Surface":
        """A surface on a plane: loss and accuracy [len(ys), len(xs)] (rows are y)."""
        return cls([np.asarray(ys), np.asarray(xs)], np.asarray(loss), np.asarray(accuracy), meta=dict(meta or {}),
                   dims=PLANE_DIMS)

    @property
    def ndim(self) -> int:
        return len(self.coords)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.coords)

    @property
    def points(self) -> int:
        return int(np.prod(self.grid_shape))

    @property
    def complete(self) -> bool:
        return bool(self.mask.all())

    def coord(self, dim: str) -> np.ndarray:
        """The coordinates along the axis named `dim`."""
        if dim not in self.dims:
            raise UserError(f"this surface has axes {', '.join(self.dims)}, not '{dim}'")
        return self.coords[self.dims.index(dim)]

    @property
    def xs(self) -> np.ndarray:
        """Coordinates along a plane's x (its first direction)."""
        return self.coord("x")

    @property
    def ys(self) -> np.ndarray:
        """Coordinates along a plane's y (its second direction)."""
        return self.coord("y")

    def center_index(self) -> tuple[int, ...] | None:
        idx = []
        for c in self.coords:
            hit = np.flatnonzero(c == 0)
            if not len(hit):
                return None
            idx.append(int(hit[0]))
        return tuple(idx)

    @property
    def center_loss(self) -> float:
        i = self.center_index()
        return float(self.loss[i]) if i is not None else float("nan")

    def grid_points(self) -> np.ndarray:
        """All grid coordinates [K, m] in row-major (C) order of the arrays (columns in `dims` order)."""
        mesh = np.meshgrid(*self.coords, indexing="ij")
        return np.stack([m.reshape(-1) for m in mesh], 1)

    def interpolate(self, points, dims: tuple[str, ...] | None = None) -> np.ndarray:
        """Multilinear interpolation of the loss at `points` [K, ndim]; NaN outside the grid.

        The columns of `points` are the axes named by `dims` (default: this surface's dims);
        e.g. ``plane.interpolate(xy, dims=("x", "y"))`` for points given as (x, y)."""
        # lazy: scipy.interpolate adds ~0.15 s to `import lossprobe`
        from scipy.interpolate import RegularGridInterpolator

        dims = tuple(dims or self.dims)
        if sorted(dims) != sorted(self.dims):
            raise UserError(f"points name axes {dims}; this surface has {self.dims}")
        f = RegularGridInterpolator(tuple(self.coords), self.loss, method="linear", bounds_error=False,
                                    fill_value=np.nan)
        c = np.asarray(points, dtype=float).reshape(-1, self.ndim)
        return f(c[:, [dims.index(d) for d in self.dims]])

    def summary(self) -> dict:
        finite = self.loss[self.mask & np.isfinite(self.loss)]
        return {
            "center_loss": self.center_loss,
            "center_accuracy": float(self.accuracy[self.center_index()]) if self.center_index() is not None else None,
            "grid_shape": list(self.grid_shape),
            "points": self.points,
            "computed": int(self.mask.sum()),
            "non_finite": int((self.mask & ~np.isfinite(self.loss)).sum()),
            "min_loss": float(finite.min()) if finite.size else None,
            "max_loss": float(finite.max()) if finite.size else None,
            "seconds": self.meta.get("seconds"),
            "points_per_second": self.meta.get("points_per_second"),
        }

    def topology(self) -> dict:
        """Basins and saddles of a 2-D surface: the 0-dimensional persistence of its sublevel
        sets (`lossprobe.landscape.topology.persistence`), also kept in ``meta['topology']``
        (the 20 most persistent pairs) for the summary and the report."""
        if self.ndim != 2:
            raise UserError("topology needs a 2-D surface")
        topo = persistence(np.where(self.mask, self.loss, np.nan))
        self.meta["topology"] = {**topo, "pairs": topo["pairs"][:20]}
        return topo

    def report(self) -> str:
        """A Markdown section for report.md: what each axis is, the loss over the grid, the
        automatic spans and the topology where there are some."""
        kind = "surface" if self.ndim == 2 else "slice"
        metas = [d if isinstance(d, dict) else {} for d in self.meta.get("directions") or [{}] * self.ndim]
        spans = self.meta.get("spans") or [[float(c[0]), float(c[-1])] for c in self.coords]
        auto = self.meta.get("auto_span")
        lines = [f"Grid {'×'.join(map(str, self.grid_shape))} ({kind}) on {self.meta.get('data', {}).get('n', '?')} "
                 "samples.", "",
                 "| axis | direction | length ‖d‖ | span | d²L/da² at the centre | curvature dᵀHd/‖d‖² |",
                 "|---|---|---|---|---|---|"]
        for i, (meta, (lo, hi)) in enumerate(zip(metas, spans)):
            lines.append(f"| d{i + 1} | {D.describe(meta) if meta.get('kind') else 'given'} | "
                         f"{_num(meta.get('length'))} | {lo:.4g} … {hi:.4g}{' (auto)' if auto else ''} | "
                         f"{_num(meta.get('second_derivative'))} | {_num(meta.get('rayleigh'))} |")
        if auto:
            lines += ["", f"Spans chosen automatically: on each axis the loss stays under {auto[0]['factor']:g} × the "
                      f"centre loss ({auto[0]['threshold']:.4g}) up to the span ({auto[0]['evaluations']} evaluations)."]
        s = self.summary()
        seconds = self.meta.get("seconds")
        lines += ["", f"Loss at the centre: **{_num(s['center_loss'], '.4f')}**; range {_num(s['min_loss'], '.4f')} … "
                  f"{_num(s['max_loss'], '.4f')}; {s['non_finite']} non-finite point(s)."
                  + (f" Computed in {seconds:.1f} s." if isinstance(seconds, (int, float)) else "")]
        topo = self.meta.get("topology")
        if topo:
            lines += ["", f"Topology (0-dimensional persistence of the sublevel sets, 4-neighbour grid): "
                      f"**{topo['basins']} basin(s)**, {topo['saddles']} saddle(s) between them, counting basins "
                      f"that persist more than {topo['tolerance']:.3g}; marked on the figures."]
        return "\n".join(lines)

    # --- the result contract ---
    def axis_labels(self) -> list[str]:
        labels = self.meta.get("axis_labels")
        if isinstance(labels, (list, tuple)) and len(labels) == self.ndim:
            return [str(x) for x in labels]
        given = [d.get("axis_label") for d in self.meta.get("directions") or [] if isinstance(d, dict)]
        if len(given) == self.ndim and all(given):
            return [str(x) for x in given]
        return [_DIM_LABELS.get(d, d) for d in self.dims]

    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Coordinates (xs/ys on a plane, coords_<i> along directions), loss, accuracy, the
        mask when some point is not computed, and the subset indices when there are some;
        each name after `prefix`."""
        out = dict(zip(self._coord_names(prefix), self.coords))
        if self.dims == PLANE_DIMS:  # x first, as plane files have always been written
            out = {prefix + "xs": out[prefix + "xs"], prefix + "ys": out[prefix + "ys"]}
        out[prefix + "loss"] = self.loss
        out[prefix + "accuracy"] = self.accuracy
        if not self.complete:
            out[prefix + "mask"] = self.mask
        if self.subset_indices is not None:
            out[prefix + "subset_indices"] = self.subset_indices
        return out

    def _coord_names(self, prefix: str = "") -> list[str]:
        return [prefix + _coord_name(d, i) for i, d in enumerate(self.dims)]

    def metadata(self) -> dict:
        return {"ndim": self.ndim, "dims": list(self.dims), "meta": self.meta}

    @classmethod
    def from_arrays(cls, arrays, metadata=None, prefix: str = "") -> "Surface":
        metadata = dict(metadata or {})
        dims = metadata.get("dims")
        if dims is None:  # files written before dims were saved: planes have xs/ys, others coords_<i>
            if prefix + "xs" in arrays and prefix + "ys" in arrays:
                dims = PLANE_DIMS
            else:
                n = metadata.get("ndim") or sum(1 for k in arrays if k.startswith(prefix + "coords_"))
                dims = DIRECTION_DIMS.get(n, tuple(f"d{i + 1}" for i in range(n)))
        coords = [np.asarray(arrays[prefix + _coord_name(d, i)]) for i, d in enumerate(dims)]
        mask = arrays.get(prefix + "mask")
        return cls(coords, np.asarray(arrays[prefix + "loss"]), np.asarray(arrays[prefix + "accuracy"]),
                   None if mask is None else np.asarray(mask).astype(bool), dict(metadata.get("meta") or {}),
                   arrays.get(prefix + "subset_indices"), tuple(dims))

    def plots(self, prefix: str = "") -> list:
        labels = self.axis_labels()
        title = str(self.meta.get("title") or "loss")
        if self.ndim == 1:
            return [line(title, self._coord_names(prefix)[0], [Series(prefix + "loss", "loss")],
                         xlabel=labels[0], ylabel="loss")]
        if self.ndim != 2:
            return []
        rows, cols = self._coord_names(prefix)
        out = [plotspec.surface(title, prefix + "loss", rows, cols, xlabel=labels[1], ylabel=labels[0], zlabel="loss")]
        if np.isfinite(self.accuracy).any():
            out.append(plotspec.surface(f"{title}: accuracy", prefix + "accuracy", rows, cols, xlabel=labels[1],
                               ylabel=labels[0], zlabel="accuracy"))
        return out

    def grids(self, prefix: str = "") -> dict | None:
        """The axes of a 2-D surface for `store.save_arrays(grids=...)` (names of `to_arrays(prefix)`)."""
        if self.ndim != 2:
            return None
        labels = self.axis_labels()
        rows, cols = self._coord_names(prefix)
        spec = {"rows": rows, "cols": cols, "row_label": labels[0], "col_label": labels[1]}
        return {prefix + k: spec for k in ("loss", "accuracy", "mask") if k != "mask" or not self.complete}

    def to_xarray(self):
        """xarray.Dataset with loss, accuracy and mask over this surface's named dims."""
        xr = results.xarray()
        coords = {d: c for d, c in zip(self.dims, self.coords)}
        return xr.Dataset({k: (self.dims, getattr(self, k)) for k in ("loss", "accuracy", "mask")}, coords=coords,
                          attrs={"axis_labels": self.axis_labels()})

    # --- files: the established layout (surface.npz + surface.json with "meta") ---
    @staticmethod
    def _paths(path) -> tuple[Path, Path]:
        p = Path(path)
        if p.suffix == ".npz":
            return p, p.with_suffix(".json")
        return p / "surface.npz", p / "surface.json"

    def save(self, path) -> Path:
        """Write arrays to PATH.npz and metadata to PATH.json (PATH a directory: surface.npz/json)."""
        npz, js = self._paths(path)
        arrays = {**self.to_arrays(), "mask": self.mask}  # the file always says what was computed
        grids = self.grids()
        if grids is not None:
            grids["mask"] = grids["loss"]
        save_arrays(npz, arrays, grids, plots=self.plots())
        write_json(js, {"type": "Surface", "format": FORMAT, **to_jsonable(self.metadata())})
        return npz

    @classmethod
    def load(cls, path) -> "Surface":
        """Reopen a surface written by `save` (or a surface `out` directory)."""
        npz, js = cls._paths(path)
        if not npz.is_file():
            raise UserError(f"no saved surface at {npz}")
        info = read_json(js) if js.is_file() else {}
        return cls.from_arrays(load_arrays(npz), info)


def _num(v, fmt: str = ".4g") -> str:
    """A number for a report in format `fmt` (losses: '.4f'), or 'n/a' when there is none."""
    return f"{v:{fmt}}" if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"


def plane_grids(prefix: str = "") -> dict[str, dict[str, str]]:
    """The grid declaration of a plane surface's `to_arrays(prefix)` (rows y, columns x), for
    `RunDir.save_arrays(grids=...)` before the surface exists."""
    return Surface.plane(np.zeros(2), np.zeros(2), np.zeros((2, 2)), np.zeros((2, 2))).grids(prefix)


def load(path) -> Surface:
    """Reopen a saved surface (see `Surface.save`)."""
    return Surface.load(path)


# --- chunk storage ---------------------------------------------------------------------
class _ParamsOf:
    """A model's parameters as the flat vector [P] of a space, for `_digest` (hashed tensor by
    tensor: the digest of the flattened vector without making it)."""

    def __init__(self, space, model):
        self.space, self.live = space, space._tensors(model)


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, _ParamsOf):
            h.update(str((p.space.dtype, (p.space.numel,))).encode())
            for e in p.space.entries:
                sha_update(h, p.live[e.name].detach().to(p.space.dtype))
        elif isinstance(p, torch.Tensor):
            t = p.detach()
            h.update(str((t.dtype, tuple(t.shape))).encode())
            sha_update(h, t)
        elif isinstance(p, np.ndarray):
            h.update(str((p.dtype, p.shape)).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(json.dumps(to_jsonable(p), sort_keys=True).encode())
    return h.hexdigest()


class ChunkStore:
    """Chunk files under DIR/chunks: chunk_NNNNNN.npz with the flat indices, loss and accuracy.

    A chunk is written atomically and durably (lossprobe.atomic), so a file that exists is
    whole; `DIR/plan.json` holds the fingerprint of what is being computed. Only chunk files
    are ever deleted (a damaged plan.json, or force=True for a different surface).
    """

    def __init__(self, directory, fingerprint: str, plan: dict, force: bool = False):
        self.dir = Path(directory)
        self.chunks = self.dir / "chunks"
        lock = FolderLock(self.dir, what="out directory")  # one writer per grid (shared within a process)
        weakref.finalize(self, lock.release)
        plan_file = self.dir / "plan.json"
        if plan_file.is_file():
            try:
                old_plan = json.loads(plan_file.read_text())
                old = old_plan.get("fingerprint")
                # the digest of every sample (plans written before it existed have none)
                if old_plan.get("data_sha256") not in (None, plan.get("data_sha256")):
                    old = None
                damaged = False
            except (ValueError, AttributeError, OSError, RecursionError):
                old, damaged = None, True  # derived data: start the grid again
            if old != fingerprint:
                if not (force or damaged):
                    raise UserError(
                        f"{self.dir} holds chunks of a different surface (other model, data, directions or grid); "
                        "choose another out directory or pass force=True / --force to overwrite it")
                for f in self.chunks.glob("chunk_*.npz"):
                    f.unlink()
        makedirs(self.chunks)
        write_json(plan_file, {**plan, "fingerprint": fingerprint})

    def path(self, i: int) -> Path:
        return self.chunks / f"chunk_{i:06d}.npz"

    def done(self, n_chunks: int) -> set[int]:
        out = set()
        for f in self.chunks.glob("chunk_*.npz"):
            try:
                i = int(f.stem.split("_")[1])
            except (IndexError, ValueError):
                continue
            if i < n_chunks:
                out.add(i)
        return out

    def write(self, i: int, idx: np.ndarray, loss: np.ndarray, acc: np.ndarray) -> None:
        save_npz(self.path(i), idx=idx, loss=loss, accuracy=acc)

    def read(self, i: int) -> dict | None:
        try:
            with np.load(self.path(i)) as f:
                return {k: f[k] for k in ("idx", "loss", "accuracy")}
        except Exception:  # a damaged file (e.g. disk full): recompute that chunk
            return None


# --- evaluation of one chunk (shared by the local and Ray backends) -------------------
def _eval_chunk(obj: Objective, origin, dirs, pts: np.ndarray, progress=None) -> tuple[np.ndarray, np.ndarray]:
    ev = obj.evaluate(torch.from_numpy(pts), origin=origin, directions=dirs, progress=progress or False)
    loss = np.asarray(ev.loss, dtype=np.float64)
    acc = np.asarray(ev.accuracy, dtype=np.float64)
    acc = np.where(np.isfinite(loss), acc, np.nan)  # accuracy means nothing where the loss blew up
    return loss, acc


_RAY_OBJECTIVES: dict = {}


def _ray_chunk(model, data, origin, dirs, opts: dict, pts: np.ndarray):
    """Body of a Ray task: build (once per worker process) the objective, evaluate a chunk."""
    key = opts["token"]
    obj = _RAY_OBJECTIVES.get(key)
    if obj is None:
        _RAY_OBJECTIVES.clear()
        obj = Objective(model, data, loss=opts["loss"], batch_size=opts["batch_size"],
                        include_buffers=opts["include_buffers"], train_mode=False)
        _RAY_OBJECTIVES[key] = obj
    with obj.reuse_first_layer(origin, dirs):
        return _eval_chunk(obj, origin, dirs, pts)


# --- public API -------------------------------------------------------------------------
def _directions_tensor(directions, m: int, space_numel: int, norms: bool = False, norm=norm64):
    """The directions as one [m, P] tensor and their metadata (and, with `norms`, their float64
    norms by `norm`: one pass over each, which also tells whether every entry is finite)."""
    if isinstance(directions, (Direction, torch.Tensor, np.ndarray)):
        directions = [directions] if (isinstance(directions, Direction) or np.ndim(directions) == 1) else list(directions)
    directions = list(directions)
    if len(directions) != m:
        raise UserError(f"expected {m} direction(s), got {len(directions)}")
    vecs, metas, norms_out = [], [], []
    for i, d in enumerate(directions):
        if isinstance(d, Direction):
            v, meta = d.vector, dict(d.meta)
        else:
            v, meta = torch.as_tensor(d), {"kind": "given"}
        v = v.reshape(-1) if v.ndim > 1 and v.shape[0] == 1 else v
        if v.ndim != 1 or v.numel() != space_numel:
            raise UserError(f"direction {i + 1} has shape {tuple(v.shape)}, expected ({space_numel},) to match "
                            "the model's parameters")
        nrm = norm(v)  # finite exactly when every entry is (a half or float32 square cannot overflow float64)
        if not math.isfinite(nrm) or (v.dtype == torch.float64 and not all_finite(v)):
            meta["non_finite_entries"] = True
        vecs.append(v)
        metas.append(meta)
        norms_out.append(nrm)
    return (_rows_of_one(vecs), metas, norms_out) if norms else (_rows_of_one(vecs), metas)


def _rows_of_one(vecs: list[torch.Tensor]) -> torch.Tensor:
    """The vectors as one [m, P] tensor: a view when they are consecutive rows of one tensor
    (directions made together), else a stack (a copy)."""
    v0 = vecs[0]
    n = v0.numel()
    same = all(v.dtype == v0.dtype and v.device == v0.device and v.is_contiguous() and v.numel() == n
               and v.untyped_storage().data_ptr() == v0.untyped_storage().data_ptr() for v in vecs)
    if same and all(v.storage_offset() == v0.storage_offset() + i * n for i, v in enumerate(vecs)):
        return v0.as_strided((len(vecs), n), (n, 1), v0.storage_offset())
    return torch.stack([v.to(v0.dtype) for v in vecs])


def _compute(obj: Objective, dirs_in, spans, steps, *, origin=None, out=None, force=False, run: GridRun,
             subset: dict | None = None) -> Surface:
    """The grid origin + Σ a_i d_i over `spans` × `steps`, chunked and stored in `out` (resumable)."""
    t_start = time.perf_counter()
    backend = backend_name(run.backend)
    m = len(spans)
    axes = [grid_axis(lo, hi, n) for (lo, hi), n in zip(spans, steps)]
    shape = tuple(len(a) for a in axes)
    K = int(np.prod(shape))
    model = obj.model
    split = obj.data if isinstance(obj.data, TensorData) else None
    loss_name = obj.loss.name
    chunk_size, progress, on_chunk = run.chunk_size, run.progress, run.on_chunk

    given, dir_meta, dir_norms = _directions_tensor(dirs_in, m, obj.space.numel, norms=True, norm=obj.space.norm)
    dirs = given.to(obj.device, obj.space.dtype)
    if dirs is not given:  # cast (or moved): the norms of what is evaluated
        dir_norms = [obj.space.norm(d) for d in dirs]
    # the origin stays the model's own parameters (read in place) unless one is given
    origin_t = None if origin is None else _origin_vector(origin, obj)
    if origin_t is not None:
        obj.space.check_vector(origin_t, "origin")

    pts_all = np.stack([g.reshape(-1) for g in np.meshgrid(*axes, indexing="ij")], 1)  # [K, m]
    hoisting = obj.hoisting(dirs, origin_t) if K > 1 else None
    if chunk_size is None and out is None and on_chunk is None and backend == "local":
        chunk_size = K  # nothing to resume: one chunk, so one working copy and one set-up for the grid
    elif chunk_size is None:
        chunk_size = shape[-1] if m == 2 else max(1, min(64, math.ceil(K / 8)))
    if chunk_size < 1:
        raise UserError(f"chunk_size must be positive, got {chunk_size}")
    n_chunks = math.ceil(K / chunk_size)

    n_data = obj.n_samples
    sub_idx = split.indices if isinstance(split, TensorData) else None
    data_meta = {"name": getattr(split, "name", "loader"), "n": n_data, "subset": None, "subset_seed": None,
                 **(subset or {})}
    meta = {
        "kind": "slice" if m == 1 else "surface",
        "directions": dir_meta,
        "direction_norms": dir_norms,
        "spans": [list(map(float, s)) for s in spans],
        "steps": list(shape),
        "origin": "model" if origin is None else "given",
        "loss": loss_name,
        "data": data_meta,
        "backend": backend,
        "chunk_size": chunk_size,
        "shortcut": hoisting is not None,
        "hoisting": hoisting,
        "batch_size": obj.batch_size,
    }

    loss_arr = np.full(K, np.nan)
    acc_arr = np.full(K, np.nan)
    mask = np.zeros(K, dtype=bool)
    store = None
    todo = list(range(n_chunks))
    # data-parallel (torchrun): every rank evaluates every chunk on its share of the batches;
    # rank 0 alone keeps the chunk files and the others follow its list of what is missing
    writer = obj.dist is None or obj.dist.rank == 0
    if out is not None and writer:
        x_digest = None
        if isinstance(split, TensorData):
            cols = leaves(split.tree)
            x_digest = _digest(cols[0][: min(len(split), 256)], *cols[1:], split.indices if split.indices is not None else [])
        fp = _digest(FORMAT, origin_t if origin_t is not None else _ParamsOf(obj.space, obj.model), dirs, pts_all,
                     chunk_size, loss_name, x_digest, n_data, obj.batch_size, obj.space.names,
                     obj.space.include_buffers)
        # every sample, not only the rows in `fp` (kept as it was, so older grids still resume)
        full = _digest(*leaves(split.tree)) if isinstance(split, TensorData) else None
        store = ChunkStore(out, fp, {"format": FORMAT, "grid_shape": list(shape), "chunks": n_chunks,
                                      "chunk_size": chunk_size, "meta": meta, "data_sha256": full}, force=force)
        for i in sorted(store.done(n_chunks)):
            got = store.read(i)
            if got is None:
                continue
            loss_arr[got["idx"]], acc_arr[got["idx"]] = got["loss"], got["accuracy"]
            mask[got["idx"]] = True
        todo = [i for i in range(n_chunks) if not mask[i * chunk_size: (i + 1) * chunk_size].all()]
        meta["resumed_chunks"] = n_chunks - len(todo)
    if out is not None and obj.dist is not None:
        got = obj.dist.broadcast_object((todo, loss_arr, acc_arr, mask, meta.get("resumed_chunks")) if writer else None)
        todo, loss_arr, acc_arr, mask, meta["resumed_chunks"] = got
    todo_points = sum(len(range(i * chunk_size, min(K, (i + 1) * chunk_size))) for i in todo)

    def finish(i, loss_c, acc_c):
        idx = np.arange(i * chunk_size, min(K, (i + 1) * chunk_size))
        loss_arr[idx], acc_arr[idx], mask[idx] = loss_c, acc_c, True
        if store is not None:
            store.write(i, idx, loss_c, acc_c)
        if on_chunk is not None:
            on_chunk(i, n_chunks)

    bar = None
    if progress and todo_points:

        bar = tqdm(total=todo_points, unit="pt", dynamic_ncols=True,
                   desc=f"{meta['kind']} {'×'.join(map(str, shape))}")
    t_eval = time.perf_counter()
    try:
        if todo:
            if backend == "ray" and not isinstance(obj.data, TensorData):
                raise UserError("backend='ray' needs in-memory data (a Split or tensors), not a DataLoader")
            with Executor(backend, run.address, timeout=run.ray_timeout, retries=run.ray_retries) as ex:
                _run_chunks(ex, obj, model, origin_t, dirs, pts_all, todo, chunk_size, K, finish, bar)
    finally:
        if bar is not None:
            bar.n = round(bar.n)
            bar.close()
    seconds = time.perf_counter() - t_eval
    meta["seconds"] = seconds
    meta["points_computed_now"] = todo_points
    meta["points_per_second"] = todo_points / seconds if todo_points and seconds > 0 else None
    meta["total_seconds"] = time.perf_counter() - t_start
    res = Surface(axes, loss_arr.reshape(shape), acc_arr.reshape(shape), mask.reshape(shape), meta,
                  np.asarray(sub_idx) if sub_idx is not None else None)
    if out is not None and writer:
        res.save(out)
    return res


def _origin_vector(origin, obj: Objective) -> torch.Tensor:
    if isinstance(origin, nn.Module):
        return obj.space.flatten(origin)
    if isinstance(origin, Direction):
        origin = origin.vector
    return torch.as_tensor(origin).to(obj.device, obj.space.dtype).reshape(-1)


def _run_chunks(ex: Executor, obj, model, origin, dirs, pts_all, todo, chunk_size, K, finish, bar) -> None:
    """Evaluate the chunks `todo` on the executor: here with `obj` (its hoisted first layer
    reused across chunks, the bar ticking per batch), or as Ray tasks that share the model,
    data, origin and directions (put once) and build their own objective."""
    chunks = [pts_all[i * chunk_size: min(K, (i + 1) * chunk_size)] for i in todo]
    if ex.backend == "local":
        nb = max(1, obj.n_batches)
        tick = (lambda n: bar.update(n / nb)) if bar is not None else None
        with obj.reuse_first_layer(origin, dirs):
            for j, (loss_c, acc_c) in ex.as_completed(_eval_chunk, [(obj, origin, dirs, c, tick) for c in chunks]):
                finish(todo[j], loss_c, acc_c)
        return
    data = obj.data.to("cpu")
    # put once: every task gets references, Ray ships each object to a worker once;
    # workers get a CPU copy (never move the caller's model off its device)
    cpu_model = model if obj.device.type == "cpu" else copy.deepcopy(model).cpu()
    origin_cpu = origin.cpu() if origin is not None else None  # None: the model's own parameters
    refs = [ex.put(v) for v in (cpu_model, data, origin_cpu, dirs.cpu())]
    opts = {"loss": obj.criterion, "batch_size": obj.batch_size, "include_buffers": obj.space.include_buffers,
            "token": _digest(origin_cpu if origin_cpu is not None else "model", dirs.cpu(), os.getpid(), time.time())}
    for j, (loss_c, acc_c) in ex.as_completed(_ray_chunk, [(*refs, opts, c) for c in chunks]):
        finish(todo[j], loss_c, acc_c)
        if bar is not None:
            bar.update(len(loss_c))


@dataclass(frozen=True)
class GridRun:
    """How a grid is computed, not what: in this process or as Ray tasks (`backend`, the
    cluster's `address`, reached within `ray_timeout` seconds, failed tasks retried
    `ray_retries` times), in chunks of `chunk_size` points (default: one row of a surface),
    with `threads` torch threads (None: leave the setting alone; each point is a few small
    matrix products, so on a shared machine one thread is often fastest), a progress bar,
    ``on_chunk(i, n_chunks)`` after each stored chunk, and `memory` (bytes or '12G'; default
    what is free on the model's device, less a margin) that the grid's parameter-sized
    vectors must fit in, checked before any work (one line naming what it needs). The numbers
    do not depend on any of it, so a run started here may be resumed on Ray and the other way
    round."""

    backend: str = "local"
    address: str | None = None
    ray_timeout: float = 30.0
    ray_retries: int = 3
    chunk_size: int | None = None
    threads: int | None = None
    progress: bool = True
    on_chunk: Callable[[int, int], None] | None = None
    memory: float | str | None = None


RUN_OPTIONS = tuple(f.name for f in fields(GridRun))


def surface(model_or_objective, data=None, directions="random", span=(-1, 1), steps=51, *, origin=None,
            seed: int = 0, norm: str | None = "auto", include_bias: bool = False, orthogonal: bool = False,
            out=None, force: bool = False, run: GridRun | None = None, **options) -> Surface:
    """Loss and accuracy on the 2-D grid origin + a·d1 + b·d2.

    Args:
        model_or_objective: an `nn.Module` (with `data`) or a ready `Objective`.
        data: any data form `Objective` takes (arrays, dict batches, a Dataset, a DataLoader).
        directions: names from the direction language of `lossprobe.directions` ('random',
            'hessian', 'ggn', 'fisher', 'efisher', 'kfac', 'gradient', 'pca:PATH',
            'towards:CKPT'), one or one per axis (('hessian', 'random')); or the directions
            themselves: two Directions or [P] tensors, or a [2, P] tensor.
        span: (lo, hi) for both axes or ((lo1, hi1), (lo2, hi2)), in units of the directions;
            'auto' (or 'auto:FACTOR', or per axis) for the largest symmetric span at which the
            loss on the axis stays under FACTOR × the centre loss (`auto_span`, factor 4).
        steps: n for an n × n grid, or (n1, n2); 0 is always a grid point (see `grid_axis`).
        origin: the centre θ [P] (a tensor or a model); default the model's parameters.
        seed: seed of random directions (and of the Lanczos start vector of eigenvectors).
        norm: how named directions are scaled ('auto': each kind's default, filter for random
            directions and unit length for the others; see `lossprobe.directions.axis_norm`).
        include_bias: move biases and normalisation parameters along random directions too.
        orthogonal: make a second random direction orthogonal to the first.
        out: folder for the directions, the chunks and the result; rerunning with the same
            arguments resumes, and only missing chunks are evaluated.
        run: how the grid is computed (`GridRun`: backend, chunks, threads, progress); its
            fields may also be given as keywords (``backend='ray'``).
        force: start afresh when `out` holds the chunks of a different grid.
        **options: when given a model, how its `Objective` is built: loss, forward, metric,
            target, batch_size, include_buffers, train_mode, subset, subset_seed.

    Returns:
        `Surface` with coords [n1], [n2] and loss/accuracy/mask [n1, n2].
    """
    return grid(model_or_objective, data, directions, span, steps, m=2, origin=origin, seed=seed, norm=norm,
                include_bias=include_bias, orthogonal=orthogonal, out=out, force=force, run=run, **options)


def slice(model_or_objective, data=None, direction="random", span=(-1, 1), steps=51, *, origin=None,  # noqa: A001
          seed: int = 0, norm: str | None = "auto", include_bias: bool = False, out=None, force: bool = False,
          run: GridRun | None = None, **options) -> Surface:
    """Loss and accuracy along the line origin + a·d for a on a grid over `span` (the options
    as in `surface`, with one direction: a name, a Direction or a [P] tensor).

    Returns a `Surface` with one axis: coords [n], loss/accuracy/mask [n].
    """
    return grid(model_or_objective, data, direction, span, steps, m=1, origin=origin, seed=seed, norm=norm,
                include_bias=include_bias, out=out, force=force, run=run, **options)


def grid(model_or_objective, data=None, directions="random", span=(-1, 1), steps=51, *, m: int, origin=None,
         seed: int = 0, norm: str | None = "auto", include_bias: bool = False, orthogonal: bool = False, out=None,
         force: bool = False, run: GridRun | None = None, **options) -> Surface:
    """The grid of `m` (1 or 2) axes behind `slice` and `surface` (see `surface`): `plan`, then `compute`."""
    run_kw = {k: options.pop(k) for k in list(options) if k in RUN_OPTIONS}
    if run_kw and run is not None:
        raise UserError(f"give {', '.join(sorted(run_kw))} in run=GridRun(...) or as keywords, not both")
    run = run or GridRun(**run_kw)
    subset = {"subset": int(options["subset"]), "subset_seed": options.get("subset_seed", 0)} \
        if options.get("subset") else None
    obj = as_objective(model_or_objective, data, **options)
    check_fits(obj, directions, m, origin, run.memory)
    with torch_threads(run.threads):
        p = plan(obj, directions, span, steps, m=m, origin=origin, seed=seed, norm=norm, include_bias=include_bias,
                 orthogonal=orthogonal, out=out, progress=run.progress)
        return compute(obj, p, out=out, force=force, run=run, subset=subset)


def check_fits(obj: Objective, directions, m: int, origin=None, memory=None) -> None:
    """The grid's memory contract, checked before any work: one working copy of the
    parameters, the `m` directions when they are drawn here (named), and the origin when it is
    given as a model (read into a vector); one line naming the need when it does not fit."""
    vectors = 1 + (m if directions is None or _named(directions) else 0) + (1 if isinstance(origin, nn.Module) else 0)
    check_vectors("surface" if m == 2 else "slice" if m == 1 else f"grid (m={m})", vectors, obj.vector_bytes,
                  obj.device, memory)


@dataclass
class GridPlan:
    """What a grid will evaluate: its directions (with what each is), the span and number of
    points of each axis, the origin, and the automatic spans' search when there was one."""

    directions: list
    spans: list
    steps: tuple
    origin: object = None
    auto_span: list | None = None

    @property
    def m(self) -> int:
        return len(self.spans)

    @property
    def points(self) -> int:
        return int(np.prod(self.steps))

    def axes(self) -> list[np.ndarray]:
        return [grid_axis(lo, hi, n) for (lo, hi), n in zip(self.spans, self.steps)]

    def metas(self) -> list[dict]:
        return [dict(d.meta) if isinstance(d, Direction) else {"kind": "given"} for d in self.directions]

    def describe(self) -> list[str]:
        """One line per axis: what the direction is, how the loss curves along it, its span."""
        lines = []
        for i, (meta, (lo, hi)) in enumerate(zip(self.metas(), self.spans)):
            text = f"d{i + 1}: {D.describe(meta)}"
            if meta.get("second_derivative") is not None:
                text += f"; d²L/da² = {meta['second_derivative']:.4g}, dᵀHd/‖d‖² = {meta['rayleigh']:.4g}"
            text += f"; span {lo:.4g} … {hi:.4g}"
            if self.auto_span:
                a = self.auto_span[i]
                text += (f" (auto: loss ≤ {a['factor']:g} × centre {a['center_loss']:.4g} up to ±{a['span']:.4g}"
                         f"{'' if a['reached'] else ', threshold not reached'})")
            lines.append(text)
        return lines

    def estimate(self, objective: Objective, points: int | None = None) -> dict:
        """Time a few points (this also warms up) and say what is computed once per batch:
        {'seconds_per_point', 'seconds' (for the whole grid), 'hoisting' (None: a plain
        forward pass per point)}. By default one point per 20 of the grid, 1 to 4."""
        dirs = _directions_tensor(self.directions, self.m, objective.space.numel)[0].to(objective.device,
                                                                                      objective.space.dtype)
        origin = None if self.origin is None else _origin_vector(self.origin, objective)
        points = max(1, min(4, self.points // 20)) if points is None else points
        probe = np.zeros((max(1, min(points, self.points)), self.m))
        t0 = time.perf_counter()
        objective.evaluate(probe, origin=origin, directions=dirs)
        per = (time.perf_counter() - t0) / len(probe)
        return {"seconds_per_point": per, "seconds": per * self.points,
                "hoisting": objective.hoisting(dirs, origin) if self.points > 1 else None}


ALONG_POINTS = 40  # per axis: grids with fewer points skip the curvature along random axes (see `plan`)


def plan(objective: Objective, directions="random", span=(-1, 1), steps=51, *, m: int, origin=None, seed: int = 0,
         norm: str | None = "auto", include_bias: bool = False, orthogonal: bool = False, out=None,
         progress: bool = False, along: bool | str = "auto") -> GridPlan:
    """The `GridPlan` of a grid (the arguments as in `surface`): named directions resolved, 'auto'
    spans searched; both kept in `out`, so a resumed run reuses them.

    `along`: store the Hessian's curvature along each named axis (one Hessian-vector product
    per axis, about four forward passes and a gradient graph each). 'auto' does so when it
    costs at most a tenth of the grid: for grids of at least 40 points per axis, for
    eigenvector axes (their Lanczos run costs more) and for an 'auto' span (its search starts
    from it); a small grid on a large model skips it."""
    spans = _spans(span, m)
    steps_t = _steps(steps, m)
    for sp, n in zip(spans, steps_t):
        if sp[0] != "auto":
            grid_axis(sp[0], sp[1], n)  # a given span is checked before any work
    if along == "auto":
        names = [directions] if isinstance(directions, str) else list(directions) if _named(directions) else []
        along = (int(np.prod(steps_t)) >= ALONG_POINTS * m or any(sp[0] == "auto" for sp in spans)
                 or any(str(n).partition(":")[0] in D.EIGEN_KINDS for n in names))
    dirs = _directions(objective, directions, m, origin, seed, norm, include_bias, orthogonal, progress, out,
                       along=bool(along))
    spans, auto = _auto_spans(objective, spans, dirs, origin, out)
    return GridPlan(dirs, spans, steps_t, origin, auto)


def compute(objective: Objective, plan: GridPlan, *, out=None, force: bool = False, run: GridRun | None = None,
            subset: dict | None = None) -> Surface:
    """Evaluate a `GridPlan` (see `surface` for `out`, `force` and `run`; `subset` records how
    the objective's data was subsampled)."""
    run = run or GridRun()
    with torch_threads(run.threads):
        res = _compute(objective, plan.directions, plan.spans, plan.steps, origin=plan.origin, out=out, force=force,
                       run=run, subset=subset)
    if plan.auto_span:
        res.meta["auto_span"] = plan.auto_span
        if out is not None and is_main():
            res.save(out)
    return res


def _named(directions) -> bool:
    return isinstance(directions, str) or (
        isinstance(directions, (list, tuple)) and bool(directions) and all(isinstance(d, str) for d in directions))


def _directions(obj: Objective, directions, m: int, origin, seed, norm, include_bias, orthogonal, progress,
                out, along: bool = True) -> list:
    """Directions as given, or resolved from their names (`lossprobe.directions.resolve`) and
    kept in `out` so that a resumed run reuses them (eigenvectors cost a Lanczos run)."""
    if directions is None:
        directions = "random"
    if not _named(directions):
        return directions
    request = {"names": [directions] if isinstance(directions, str) else list(directions), "m": m, "seed": seed,
               "norm": norm, "include_bias": include_bias, "orthogonal": orthogonal,
               "origin": origin is not None}
    kept = _kept_directions(out, request, obj)
    sh = obj.space.shards
    if sh is not None and sh.sum(float(kept is None)) > 0:
        kept = None  # every rank reads its own rows of them, or every rank makes them again
    if kept is not None:
        return kept
    dirs = D.resolve(obj, directions, m, norm=norm, seed=seed, include_bias=include_bias, orthogonal=orthogonal,
                     progress=progress, reference=None if origin is None else _origin_vector(origin, obj),
                     along=along)
    for i, d in enumerate(dirs):
        d.meta["axis_label"] = f"α{i + 1}: {D.describe(d.meta, short=True)}"
    if out is not None and (sh is not None or is_main()):  # a sharded model: every rank its rows
        makedirs(Path(out))
        save_safetensors(_directions_file(out, obj), {f"d{i + 1}": d.vector for i, d in enumerate(dirs)})
    if out is not None and is_main():
        write_json(Path(out) / "directions.json", {"request": request, "directions": [d.meta for d in dirs]})
    return dirs


def _directions_file(out, obj: Objective) -> Path:
    """Where the directions are kept: one file, or one per rank of a sharded model (its rows)."""
    sh = obj.space.shards
    return Path(out) / ("directions.safetensors" if sh is None else
                        f"directions.rank{sh.rank}-of-{sh.world}.safetensors")


def _kept_directions(out, request: dict, obj: Objective) -> list | None:
    """The directions a previous run with the same request stored in `out`, or None."""
    if out is None:
        return None
    vf, jf = _directions_file(out, obj), Path(out) / "directions.json"
    if not (vf.is_file() and jf.is_file()):
        return None
    try:
        info = read_json(jf)
        if info.get("request") != to_jsonable(request):
            return None
        metas = info["directions"]
        if not isinstance(metas, list) or len(metas) != request["m"] or not all(isinstance(x, dict) for x in metas):
            return None  # the wrong shape: computed again
        # read one direction at a time into rows of one [m, P] tensor (no second copy)
        rows = torch.empty(len(metas), obj.space.numel, dtype=obj.space.dtype, device=obj.device)
        with safe_open(str(vf), framework="pt") as f:
            for i in range(len(metas)):
                v = f.get_tensor(f"d{i + 1}")
                if v.ndim != 1 or v.numel() != obj.space.numel or not v.is_floating_point():
                    return None
                rows[i].copy_(v)
                if not all_finite(rows[i]):
                    return None
        return [Direction(rows[i], meta) for i, meta in enumerate(metas)]
    except (UserError, OSError, KeyError, TypeError, ValueError, AttributeError, SafetensorError, RecursionError):
        return None  # damaged: derived data, computed again


def _auto_spans(obj: Objective, spans, dirs, origin, out) -> tuple[list[tuple[float, float]], list | None]:
    """(lo, hi) per axis, with 'auto' axes chosen by `auto_span` (kept in `out` for a resume)."""
    if not any(sp[0] == "auto" for sp in spans):
        return spans, None
    factor = max(sp[1] for sp in spans if sp[0] == "auto")
    auto = None
    kept = Path(out) / "auto_span.json" if out is not None else None
    if kept is not None and kept.is_file():
        try:
            got = read_json(kept)
            auto = got["auto_span"] if got.get("factor") == factor and len(got["auto_span"]) == len(spans) else None
            if auto is not None and not all(isinstance(a, dict) and isinstance(a.get("span"), (int, float))
                                            and math.isfinite(a["span"]) and a["span"] > 0 for a in auto):
                auto = None  # damaged: searched again
        except (UserError, OSError, KeyError, TypeError, AttributeError):
            auto = None
    if auto is None:
        second = [d.meta.get("second_derivative") if isinstance(d, Direction) else None for d in dirs]
        auto = auto_span(obj, dirs, factor=factor, origin=origin,
                         second_derivatives=second if any(q is not None for q in second) else None)
        if kept is not None and is_main():
            write_json(kept, {"factor": factor, "auto_span": auto})
    return [(-a["span"], a["span"]) if sp[0] == "auto" else sp for sp, a in zip(spans, auto)], auto


def _spans(span, m: int) -> list[tuple]:
    """Per axis (lo, hi), or ('auto', FACTOR) for a span chosen by `auto_span`."""
    if isinstance(span, str):
        span = [span] * m
    if isinstance(span, (list, tuple)) and any(isinstance(sp, str) for sp in span):
        if len(span) != m:
            raise UserError(f"span: one entry per axis ({m}), got {len(span)}")
        out = []
        for sp in span:
            auto = parse_span(sp) if isinstance(sp, str) else None
            if isinstance(sp, str) and auto is None:
                raise UserError(f"span takes (lo, hi) or 'auto[:FACTOR]', got '{sp}'")
            out.append(auto if auto is not None else _spans(sp, 1)[0])
        return out
    try:
        arr = np.asarray(span, dtype=float)
    except (TypeError, ValueError):
        raise UserError(f"span must be (lo, hi) or ((lo1, hi1), (lo2, hi2)), got {span!r}") from None
    if arr.shape == (2,):
        arr = np.tile(arr, (m, 1))
    if arr.shape != (m, 2):
        raise UserError(f"span must be (lo, hi){' or ((lo1, hi1), (lo2, hi2))' if m == 2 else ''}, got {span!r}")
    out = []
    for lo, hi in arr:
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise UserError(f"span ({lo}, {hi}) must be finite")
        if not lo < hi:
            raise UserError(f"span ({lo:g}, {hi:g}) is empty: the first value must be below the second")
        out.append((float(lo), float(hi)))
    return out


def _steps(steps, m: int) -> tuple[int, ...]:
    if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
        steps = (int(steps),) * m
    steps = tuple(steps)
    if len(steps) != m:
        raise UserError(f"steps must be one integer or {m} integers, got {steps!r}")
    for s in steps:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
            raise UserError(f"steps must be positive integers, got {s!r}")
    return tuple(int(s) for s in steps)


# --- a span chosen for the user ----------------------------------------------------------
AUTO_FACTOR = 4.0
AUTO_FACTOR_MAX = 1e6


def parse_span(text) -> tuple[str, float] | None:
    """'auto' or 'auto:FACTOR' -> ('auto', FACTOR); anything else None."""
    if not isinstance(text, str) or not (text == "auto" or text.startswith("auto:")):
        return None
    if text == "auto":
        return ("auto", AUTO_FACTOR)
    try:
        f = float(text[5:])
    except ValueError:
        f = float("nan")
    if not f > 1 or not math.isfinite(f):
        raise UserError(f"span auto:FACTOR needs a FACTOR above 1, got '{text[5:]}'")
    if f > AUTO_FACTOR_MAX:
        raise UserError(f"span auto:FACTOR takes a FACTOR up to {AUTO_FACTOR_MAX:g} (× the centre loss), got "
                        f"'{text[5:]}': a larger one only finds where the loss overflows; give --span LO HI")
    return ("auto", f)


def auto_span(objective: Objective, directions, factor: float = AUTO_FACTOR, origin=None, start=None,
              second_derivatives=None, rel_tol: float = 0.01, max_doublings: int = 30) -> list[dict]:
    """Per direction, the largest s such that the loss stays under `factor` × the centre loss
    on the segment [−s·d, s·d], by a 1-D search before any grid is computed.

    On each side of each direction: from `start` (per direction; by default the quadratic
    model's answer sqrt(2(factor − 1)L/q) where a `second_derivatives` entry q = dᵀHd > 0 is
    given, else 1) the step is
    doubled (or halved) until the loss crosses the threshold T = factor·L(θ), then the
    crossing is bisected until the bracket is within `rel_tol` and interpolated linearly
    in the loss. All rays advance together, so each round is one `Objective.evaluate` of
    2m points. The span of a direction is the nearer of its two crossings, s = min(s₋, s₊),
    so the loss on the axis reaches T at one end and stays below it in between. A NaN or
    inf loss counts as above T. A side where no crossing is found within 2^max_doublings
    × start keeps that bound (`reached` False). The first crossing found by doubling is
    taken: a loss that rises above T and falls back within one doubling is not seen. A side
    whose loss turns NaN or inf before reaching T keeps the last finite point (`reached` False).

    Returns one dict per direction: span, minus, plus, threshold, factor, center_loss,
    reached (both sides), evaluations.
    """
    dirs = torch.stack([torch.as_tensor(d.vector if isinstance(d, Direction) else d) for d in directions]) \
        if not isinstance(directions, torch.Tensor) else directions
    if dirs.ndim == 1:
        dirs = dirs[None]
    dirs = dirs.to(objective.device, objective.space.dtype)
    m = dirs.shape[0]
    if not factor > 1:
        raise UserError(f"the auto-span factor must be above 1, got {factor}")
    origin_t = None if origin is None else _origin_vector(origin, objective)
    L0 = float(objective.evaluate(None, origin=origin_t).loss[0])
    if not (math.isfinite(L0) and L0 > 0):
        raise UserError(f"--span auto needs a positive, finite loss at the centre (it is {L0}); give --span LO HI")
    T = factor * L0
    if start is None and second_derivatives is not None:
        start = [math.sqrt(2 * (factor - 1) * L0 / q) if q and math.isfinite(q) and q > 0 else None
                 for q in second_derivatives]
    starts = [1.0] * m if start is None else [float(x) if x and math.isfinite(x) and x > 0 else 1.0 for x in start]
    # rays: (direction i, sign); state: lo (below T, with its loss), hi (above T, with its loss)
    rays = [(i, sgn) for i in range(m) for sgn in (-1.0, 1.0)]
    lo = {r: (0.0, L0) for r in rays}
    hi: dict = {r: None for r in rays}
    probe = {r: starts[r[0]] for r in rays}
    floor = {r: starts[r[0]] * 2.0 ** -max_doublings for r in rays}
    cap = {r: starts[r[0]] * 2.0 ** max_doublings for r in rays}
    evals = 0
    active = set(rays)
    while active:
        todo = sorted(active)
        coords = torch.zeros(len(todo), m, dtype=torch.float64)
        for j, (i, sgn) in enumerate(todo):
            coords[j, i] = sgn * probe[(i, sgn)]
        vals = objective.evaluate(coords, origin=origin_t, directions=dirs).loss
        evals += len(todo)
        for r, v in zip(todo, vals):
            a = probe[r]
            above = not (math.isfinite(v) and v < T)
            if above:
                hi[r] = (a, float(v) if math.isfinite(v) else float("inf"))
            else:
                lo[r] = (a, float(v))
            if hi[r] is None:  # no crossing yet: double
                if a >= cap[r]:
                    active.discard(r)
                else:
                    probe[r] = a * 2
            elif lo[r][0] == 0.0:  # above T at every step so far: halve until below
                if hi[r][0] <= floor[r]:
                    active.discard(r)
                else:
                    probe[r] = hi[r][0] / 2
            elif hi[r][0] - lo[r][0] <= rel_tol * hi[r][0]:
                active.discard(r)
            else:
                probe[r] = 0.5 * (lo[r][0] + hi[r][0])
    out = []
    for i in range(m):
        side = {}
        for sgn in (-1.0, 1.0):
            r = (i, sgn)
            (a0, v0), h = lo[r], hi[r]
            if h is None:
                side[sgn] = (a0, False)
            elif math.isfinite(h[1]) and h[1] > v0:
                side[sgn] = (a0 + (T - v0) / (h[1] - v0) * (h[0] - a0), True)
            else:  # the loss became NaN or inf before it reached the threshold: not reached
                side[sgn] = (a0 if a0 > 0 else h[0], False)
        s = min(side[-1.0][0], side[1.0][0])
        out.append({"span": s, "minus": side[-1.0][0], "plus": side[1.0][0], "threshold": T, "factor": factor,
                    "center_loss": L0, "reached": side[-1.0][1] and side[1.0][1], "start": starts[i],
                    "evaluations": evals})
    return out


__all__ = ["AUTO_FACTOR", "ChunkStore", "GridPlan", "GridRun", "Surface", "auto_span", "compute", "grid", "grid_axis",
           "load", "parse_span", "plan", "slice", "surface"]
