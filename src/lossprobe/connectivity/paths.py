"""Linear interpolation between two models and the barriers along it.

θ(α) = (1 − α) θ_A + α θ_B is evaluated in that form (not θ_A + α(θ_B − θ_A)) so that
α = 0 and α = 1 reproduce each model's parameters, and so its loss, bit for bit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar, Mapping

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lossprobe.core.batching import Data, TensorData, as_data, at_batch, move
from lossprobe.core.losses import criterion
from lossprobe.core.memory import check_vectors
from lossprobe.core.objective import Objective
from lossprobe.core.space import ParamSpace
from lossprobe.errors import UserError
from lossprobe.results import contract as results_mod
from lossprobe.results.contract import Result, register
from lossprobe.results.plotspec import Series, line

BN_MODES = ("interpolate", "recompute")


def default_alphas() -> np.ndarray:
    """41 points from −0.5 to 1.5 in steps of 0.05; 0 and 1 are exact."""
    return np.arange(-10, 31) / 20.0


@register
@dataclass(init=False)
class PathEvaluation(Result):
    """Loss and accuracy at points of a path between two models, on each named split.

    One type for straight lines (``axis='alpha'``: θ(α) = (1 − α) θ_A + α θ_B, α may leave
    [0, 1]) and curves (``axis='t'``: θ(t) on a trained curve, t in [0, 1]). `t` holds the
    coordinates; `alphas` and `ts` are the same array under the names each kind uses.
    ``PathEvaluation(alphas=...)`` is a line and ``PathEvaluation(ts=...)`` a curve (the names
    `Interpolation` and `CurveEvaluation` are this class). `bn` says how BatchNorm
    statistics were set along the path.
    """

    NAME: ClassVar[str] = "path"
    GRIDDED: ClassVar[bool] = True

    t: np.ndarray
    loss: dict[str, np.ndarray]
    accuracy: dict[str, np.ndarray]
    bn: str
    axis: str

    def __init__(self, t=None, loss=None, accuracy=None, bn: str = "interpolate", axis: str | None = None, *,
                 alphas=None, ts=None):
        given = [v for v in (t, alphas, ts) if v is not None]
        if len(given) != 1:
            raise UserError("a path evaluation needs its coordinates once: t, alphas (a line) or ts (a curve)")
        self.t = np.asarray(given[0], dtype=float)
        self.axis = axis or ("t" if ts is not None else "alpha")
        if self.axis not in ("alpha", "t"):
            raise UserError(f"axis must be 'alpha' (a line) or 't' (a curve), got {self.axis!r}")
        self.loss = dict(loss or {})
        self.accuracy = dict(accuracy or {})
        self.bn = bn

    @property
    def alphas(self) -> np.ndarray:
        return self.t

    @property
    def ts(self) -> np.ndarray:
        return self.t

    @property
    def splits(self) -> list[str]:
        return list(self.loss)

    def loss_barrier(self, split: str) -> float:
        return loss_barrier(self.t, self.loss[split])

    def error_barrier(self, split: str) -> float:
        return error_barrier(self.t, 1.0 - self.accuracy[split])

    def barriers(self) -> dict[str, dict[str, float]]:
        """{'loss_barrier': {split: value}, 'error_barrier': {split: value}} over [0, 1]."""
        return {
            "loss_barrier": {s: self.loss_barrier(s) for s in self.loss},
            "error_barrier": {s: self.error_barrier(s) for s in self.loss},
        }

    # --- the result contract ---
    @property
    def _coord_name(self) -> str:
        return "alphas" if self.axis == "alpha" else "ts"

    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        out = {f"{prefix}{self._coord_name}": self.t}
        for s in self.loss:
            out[f"{prefix}loss_{s}"] = self.loss[s]
            out[f"{prefix}accuracy_{s}"] = self.accuracy[s]
        return out

    def metadata(self) -> dict:
        return {"axis": self.axis, "bn": self.bn, "splits": self.splits}

    @classmethod
    def from_arrays(cls, arrays, metadata=None, prefix: str = "") -> "PathEvaluation":
        """Rebuild from `to_arrays(prefix)`; without metadata the axis and splits are read
        from the array names (alphas or ts; loss_<split>)."""
        metadata = dict(metadata or {})
        axis = metadata.get("axis") or ("alpha" if f"{prefix}alphas" in arrays else "t")
        coord = arrays[f"{prefix}{'alphas' if axis == 'alpha' else 'ts'}"]
        head = f"{prefix}loss_"
        splits = metadata.get("splits") or [k[len(head):] for k in arrays
                                            if k.startswith(head) and f"{prefix}accuracy_{k[len(head):]}" in arrays]
        return cls(coord, {s: np.asarray(arrays[f"{prefix}loss_{s}"]) for s in splits},
                   {s: np.asarray(arrays[f"{prefix}accuracy_{s}"]) for s in splits},
                   bn=metadata.get("bn", "interpolate"), axis=axis)

    def summary(self) -> dict:
        out = {"points": len(self.t), "axis": self.axis, "bn": self.bn}
        has_ends = bool(np.any(self.t == 0.0) and np.any(self.t == 1.0))
        if has_ends and self.loss:
            out.update(self.barriers())
        for s in self.loss:
            out[f"loss_{s}_ends"] = [float(self.loss[s][np.argmin(np.abs(self.t - e))]) for e in (0.0, 1.0)]
        return out

    def report(self) -> str:
        what = "straight line" if self.axis == "alpha" else "curve"
        b = self.barriers()
        lines = [f"Barriers along the {what} ({len(self.t)} points; BatchNorm statistics: {self.bn}):", "",
                 "| split | loss barrier | error barrier |", "|---|---|---|"]
        for s in self.loss:
            eb = b["error_barrier"][s]
            lines.append(f"| {s} | {b['loss_barrier'][s]:.4f} | {f'{eb:.2%}' if np.isfinite(eb) else 'n/a'} |")
        return "\n".join(lines)

    def plots(self, prefix: str = "", title: str | None = None) -> list:
        x = f"{prefix}{self._coord_name}"
        xlabel = "α (0 = first model, 1 = second model)" if self.axis == "alpha" else "t (position along the curve)"
        what = title or ("straight line between the models" if self.axis == "alpha" else "curve between the models")
        return [line(f"loss along the {what}", x,
                     [Series(f"{prefix}loss_{s}", s, group=s, dash=i > 0) for i, s in enumerate(self.loss)],
                     xlabel=xlabel, ylabel="loss"),
                line(f"accuracy along the {what}", x,
                     [Series(f"{prefix}accuracy_{s}", s, group=s, dash=i > 0) for i, s in enumerate(self.loss)],
                     xlabel=xlabel, ylabel="accuracy")]

    def to_xarray(self):
        """xarray.Dataset: loss and accuracy over (split, alpha|t)."""
        xr = results_mod.xarray()
        splits = self.splits
        return xr.Dataset({"loss": (("split", self.axis), np.stack([self.loss[s] for s in splits])),
                           "accuracy": (("split", self.axis), np.stack([self.accuracy[s] for s in splits]))},
                          coords={"split": splits, self.axis: self.t}, attrs={"bn": self.bn})


Interpolation = PathEvaluation  # the straight line (alphas=...)


def _endpoints(alphas: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    alphas, values = np.asarray(alphas, float), np.asarray(values, float)
    if alphas.shape != values.shape:
        raise UserError(f"alphas {alphas.shape} and values {values.shape} differ in shape")
    i0, i1 = np.flatnonzero(alphas == 0.0), np.flatnonzero(alphas == 1.0)
    if not len(i0) or not len(i1):
        raise UserError("a barrier needs the endpoints α = 0 and α = 1 on the grid")
    inside = (alphas >= 0) & (alphas <= 1)
    return alphas[inside], values[inside], float(values[i0[0]]), float(values[i1[0]])


def loss_barrier(alphas, losses) -> float:
    """max over α in [0, 1] of L(θα) − ((1 − α) L_A + α L_B); 0 for a convex path."""
    a, v, v0, v1 = _endpoints(alphas, losses)
    return float(np.max(v - ((1 - a) * v0 + a * v1)))


def error_barrier(alphas, errors) -> float:
    """sup over α in [0, 1] of the error minus the mean endpoint error (Frankle et al. 2020)."""
    a, v, v0, v1 = _endpoints(alphas, errors)
    return float(np.max(v) - 0.5 * (v0 + v1))


def non_finite(alphas, losses, name: str = "α", ends: tuple[str, str] = ("A", "B"), where: str = "") -> str | None:
    """None if the loss is finite at every α in [0, 1] (where the barrier is taken), else one
    line naming the non-finite endpoint or the first few non-finite α."""
    a = np.asarray(alphas, dtype=float)
    v = np.asarray(losses, dtype=float)
    inside = (a >= 0) & (a <= 1)
    bad = inside & ~np.isfinite(v)
    if not bad.any():
        return None
    on = f" on {where}" if where else ""
    for end, at in zip(ends, (0.0, 1.0)):
        hit = bad & (a == at)
        if hit.any():
            return (f"the loss at endpoint {end} ({name} = {at:g}) is {v[hit][0]}{on}: the model there outputs NaN or "
                    "inf, so the barrier is undefined")
    shown = ", ".join(f"{x:.4g}" for x in a[bad][:5]) + (" ..." if bad.sum() > 5 else "")
    return (f"the loss is not finite at {name} = {shown}{on} ({int(bad.sum())} of {int(inside.sum())} points in "
            "[0, 1]), so the barrier is undefined; the models between the endpoints overflow")


def named_splits(data) -> dict[str, Data]:
    """One data set (named 'data') or a mapping of names to data sets, as {name: Data}.

    A dict whose values are all arrays is one data set (columns, e.g. HF-style
    ``{"input_ids": ..., "labels": ...}``), not a mapping of names.
    """
    if isinstance(data, Mapping) and not all(isinstance(v, (torch.Tensor, np.ndarray)) for v in data.values()):
        return {k: as_data(v, k) for k, v in data.items()}
    return {"data": as_data(data, "data")}


def evaluate_per_point(model_at, n: int, splits: dict[str, Data], loss="cross_entropy", batch_size: int = 4096,
                       progress: str | None = None, forward=None,
                       metric=None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Loss and accuracy [n] on each split of the model `model_at(i)` for i = 0 … n − 1.

    For paths whose points are not one affine family (re-estimated BatchNorm statistics,
    REPAIR): each point is its own model, evaluated with a plain forward pass.
    `progress` is the progress bar's label (None: no bar).
    """
    losses = {k: np.empty(n) for k in splits}
    accs = {k: np.empty(n) for k in splits}
    points = range(n)
    if progress:

        points = tqdm(points, desc=progress, unit="pt", leave=False, dynamic_ncols=True)
    for i in points:
        m = model_at(i)
        for k, split in splits.items():
            ev = Objective(m, split, loss=loss, batch_size=batch_size, shortcut=False, forward=forward, metric=metric,
                           check=False).loss_at()
            losses[k][i], accs[k][i] = ev.loss[0], ev.accuracy[0]
    return losses, accs


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, data, n_batches: int = 50, batch_size: int = 128, seed: int = 0,
                        forward=None) -> nn.Module:
    """Re-estimate BatchNorm running statistics by a seeded pass over training batches.

    The statistics are exact averages over the batches (momentum=None), not a running
    blend. In-memory data is drawn in a seeded order; a stream gives its first
    `n_batches` batches. The model is left in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    device = next(model.parameters()).device
    data = as_data(data, "bn")
    fwd = criterion(forward=forward).forward
    if isinstance(data, TensorData):
        limit = min(n_batches, max(1, len(data) // batch_size))
        batches = data.epoch(batch_size, torch.Generator().manual_seed(seed))
    else:
        limit, batches = n_batches, data.batches()
    model.train()
    try:
        for i, batch in enumerate(batches):
            if i >= limit:
                break
            with at_batch(i, data, batch_size, "the BatchNorm statistics pass" if isinstance(data, TensorData) else None):
                fwd(model, move(batch, device))
    finally:
        for m, mom in saved:
            m.momentum = mom
        model.eval()
    return model


def interpolate(
    model_a: nn.Module,
    model_b: nn.Module,
    data,
    alphas=None,
    bn: str = "interpolate",
    bn_data=None,
    bn_batches: int = 50,
    loss="cross_entropy",
    batch_size: int = 4096,
    progress: bool = False,
    forward=None,
    metric=None,
    memory=None,
) -> Interpolation:
    """Loss and accuracy at θ(α) = (1 − α) θ_A + α θ_B on each split of `data`.

    Args:
        data: one data set (any form `Objective` takes), or a mapping of names to data
            sets (e.g. {'train': ..., 'test': ...}).
        alphas: the grid; default `default_alphas()` (−0.5 … 1.5, 41 points).
        bn: for models with BatchNorm, 'interpolate' the running statistics with the
            weights, or 'recompute' them at each α from `bn_data` (seeded batches).
        loss: the batch contract (see `Objective`), with `forward` and `metric`.
        forward: ``forward(model, batch) -> output``.
        metric: ``metric(output, target) -> per-sample values`` instead of accuracy.
        memory: bytes (or '12G') the interpolation may use beyond the two models; default what
            is free on the model's device, less a margin. It needs one working copy of the
            parameters (two more with bn='recompute'); checked before any work.
    """
    if bn not in BN_MODES:
        raise UserError(f"bn must be one of {BN_MODES}, got '{bn}'")
    splits = named_splits(data)
    alphas = default_alphas() if alphas is None else np.asarray(alphas, dtype=float).reshape(-1)
    if alphas.size == 0 or not np.isfinite(alphas).all():
        raise UserError("alphas must be a non-empty list of finite numbers")
    bn_model = has_batchnorm(model_a)
    space_a = ParamSpace(model_a, include_buffers=bn_model)
    space_a.check_compatible(ParamSpace(model_b, include_buffers=bn_model))
    out = Interpolation(alphas=alphas, bn=bn if bn_model else "none")
    device = next((p.device for p in model_a.parameters()), None)
    check_vectors("interpolation", 3 if bn_model and bn == "recompute" else 1, space_a.numel *
                  torch.empty(0, dtype=space_a.dtype).element_size(), device, memory)
    coords = torch.tensor(np.stack([1 - alphas, alphas], 1))

    if bn_model and bn == "recompute":
        if bn_data is None:
            raise UserError("bn='recompute' needs bn_data: training batches to re-estimate BatchNorm statistics")
        work = copy.deepcopy(model_a)
        space_p = ParamSpace(work)
        pa, pb = space_p.flatten(model_a), space_p.flatten(model_b)

        def model_at(i):
            space_p.load_into(work, (1 - alphas[i]) * pa + alphas[i] * pb)
            return recompute_batchnorm(work, bn_data, n_batches=bn_batches, forward=forward)

        out.loss, out.accuracy = evaluate_per_point(model_at, len(alphas), splits, loss, batch_size,
                                                    forward=forward, metric=metric)
        return out

    for k, split in splits.items():
        obj = Objective(model_a, split, loss=loss, batch_size=batch_size, space=space_a, forward=forward,
                        metric=metric)
        # θ(α) = (1 − α)·θ_A + α·θ_B formed in one working copy, tensor by tensor from the two
        # models' own parameters (no flat copy of either)
        ev = obj.evaluate(coords, origin=0, directions=[model_a, model_b], progress=progress)
        out.loss[k], out.accuracy[k] = ev.loss, ev.accuracy
    return out
