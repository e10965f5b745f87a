"""Parameter trajectories of networks, their planes, and how faithful the picture is.

A drawn optimiser path is a projection: each recorded parameter vector θ_t [P] is mapped
to coordinates c_t [2] on a plane ``origin + c @ directions`` (the PCA plane of the
trajectories, Li et al. 2018, or a random filter-normalised plane), and the contours
under it are the loss *on the plane*. The point θ_t itself is usually *off* the plane,
so its loss differs from the contour value under its marker. `path_fidelity` reports,
for every drawn point:

    true_loss      L(θ_t), the loss the optimiser actually had
    surface_loss   the surface's loss at c_t (bilinear interpolation of the grid)
    plane_loss     L(origin + c_t @ directions), exact (no interpolation error)
    distance       ‖θ_t − (origin + c_t @ directions)‖, in parameter units
    rel_distance   distance / the drawn window's half-width in parameter units (how far
                   off the plane the point is, on the scale of the picture)
    sin_angle      distance / ‖θ_t − origin‖ (the sine of the angle to the plane)

so a reader can see where the picture can be trusted (small distance: the contour under
the marker is the loss the optimiser had) and where it cannot.

Also here: training with recorded trajectories and per-step monitors
(`train_trajectory`), PCA planes with bounded memory (Gram matrix of the snapshots,
never a P×P covariance), random filter-normalised planes, 2-D surfaces on a plane,
roughness numbers for a surface, and the extreme Hessian eigenvalues along a run.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from lossprobe.core.batching import TensorData, as_data, take, tree_map
from lossprobe.core.directions import pca_directions, random_direction
from lossprobe.core.directions import random_plane as directions_random_plane
from lossprobe.core.losses import criterion
from lossprobe.core.objective import BatchCall, Objective
from lossprobe.core.space import ParamSpace
from lossprobe.curvature import hessian as _hess
from lossprobe.curvature.operators import HessianOperator
from lossprobe.errors import UserError
from lossprobe.landscape.surfaces import Surface, plane_grids
from lossprobe.training.loop import TrainConfig, TrainingDiverged, make_optimizer, run_epoch
from lossprobe.trajectories.monitors import TrainingMonitor

# --- training with a recorded trajectory ------------------------------------------------


@dataclass
class Trajectory:
    """A recorded run.

    Attributes:
        label: a name for plots ("adam", "seed 3").
        steps: [T] optimiser step of each snapshot (0 = the initial point).
        thetas: [T, P] flat parameters (float32, CPU) at those steps.
        monitor: per-step gradient norm, weight norm and minibatch loss.
        config: how it was trained.
    """

    label: str
    steps: np.ndarray
    thetas: torch.Tensor
    monitor: TrainingMonitor | None = None
    config: dict = field(default_factory=dict)

    @property
    def final(self) -> torch.Tensor:
        return self.thetas[-1]

    def __len__(self) -> int:
        return len(self.steps)


def train_trajectory(
    model: nn.Module,
    train,
    optimizer: str = "sgd",
    lr: float = 0.1,
    steps: int = 3000,
    batch_size: int = 32,
    every: int = 20,
    seed: int = 0,
    loss: str = "bce",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    label: str | None = None,
    progress: bool = False,
    monitor: TrainingMonitor | None = None,
    forward=None,
) -> Trajectory:
    """Train `model` in place for `steps` minibatch steps and record θ every `every` steps.

    Args:
        optimizer: sgd, momentum, nesterov, rmsprop (no momentum), adam, adamw, adagrad
            (`lossprobe.train.make_optimizer`, i.e. torch.optim).
        batch_size: minibatch size; ``batch_size >= len(train)`` gives full-batch GD.
        seed: data order (each epoch a seeded permutation).
        weight_decay: L2 penalty coefficient (torch's coupled weight decay: λθ added to
            the gradient, i.e. the gradient of the loss + λ/2 ‖θ‖²).
        monitor: a `TrainingMonitor` to fill (one is created if None).
        loss: the batch contract of `Objective` (with `forward`); `train` is in-memory data
            (a `Split`, arrays, a dict of arrays or a `Dataset`).
    Returns:
        `Trajectory` with snapshots at steps 0, every, 2·every, ..., and the last step.
    The steps run in `lossprobe.train.run_epoch` (fit's inner loop), one seeded permutation
    of the data per epoch (its last incomplete batch dropped); a NaN or inf loss raises
    `TrainingDiverged` (``.history``: the trajectory recorded so far).
    """
    if steps <= 0 or every <= 0 or batch_size <= 0:
        raise UserError(f"steps, every and batch_size must be positive, got {steps}, {every}, {batch_size}")
    train = as_data(train, "train")
    if not isinstance(train, TensorData):
        raise UserError("train_trajectory needs in-memory training data (a Split, arrays or a Dataset), not a stream")
    crit = criterion(loss, forward=forward, model=model)
    loss_name = crit.name if isinstance(loss, str) else "custom"
    cfg = TrainConfig(optimizer=optimizer, lr=lr, momentum=0.0 if optimizer == "rmsprop" else momentum,
                      weight_decay=weight_decay, schedule="constant")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg)
    space = ParamSpace(model)
    mon = monitor if monitor is not None else TrainingMonitor(model)
    mon.source = model
    g = torch.Generator().manual_seed(seed)
    n = len(train)
    bs = min(batch_size, n)
    per_epoch = n // bs  # a seeded permutation per epoch; its last incomplete batch is dropped
    snaps, at = [space.flatten(model).detach().float().cpu().clone()], [0]
    bar = None
    if progress:

        bar = tqdm(total=steps, desc=label or optimizer, unit="step", leave=False, dynamic_ncols=True,
                   mininterval=1.0)
    config = {"optimizer": optimizer, "lr": lr, "steps": steps, "batch_size": bs, "every": every, "seed": seed,
              "loss": loss_name, "momentum": cfg.momentum, "weight_decay": weight_decay}

    def record(state) -> None:
        mon.record(state.loss)

    def snapshot(state) -> None:
        if state.step % every == 0 or state.step == steps:
            snaps.append(space.flatten(model).detach().float().cpu().clone())
            at.append(state.step)
        if bar is not None:
            bar.update(1)

    model.train()
    step, epoch = 0, 0
    try:
        while step < steps:
            epoch += 1
            order = torch.randperm(n, generator=g)
            batches = (take(train.tree, order[j * bs: (j + 1) * bs]) for j in range(min(per_epoch, steps - step)))
            step, _, _ = run_epoch(opt, batches, lambda i, batch: crit(model, batch), epoch=epoch, step=step, lr=lr,
                                   before_step=record, on_step=snapshot)
    except TrainingDiverged as e:
        e.history = Trajectory(label or optimizer, np.asarray(at), torch.stack(snaps), mon, config)
        raise
    finally:
        if bar is not None:
            bar.close()
        model.eval()
    return Trajectory(label or optimizer, np.asarray(at), torch.stack(snaps), mon, config)


def losses_at(objective: Objective, thetas: torch.Tensor, chunk: int = 64):
    """Loss [T] and accuracy [T] at each row of `thetas` [T, P], exactly (full data).

    Uses the evaluator with the snapshots themselves as directions (identity
    coordinates), `chunk` rows at a time, so memory stays at chunk × P.
    """
    thetas = torch.as_tensor(thetas)
    losses, accs = [], []
    zero = torch.zeros(objective.space.numel, dtype=objective.space.dtype, device=objective.device)
    for i in range(0, len(thetas), chunk):
        block = thetas[i : i + chunk].to(objective.device, objective.space.dtype)
        ev = objective.evaluate(torch.eye(len(block), dtype=torch.float64), origin=zero, directions=block)
        losses.append(ev.loss)
        accs.append(ev.accuracy)
    return np.concatenate(losses), np.concatenate(accs)


# --- planes ----------------------------------------------------------------------------


@dataclass
class Plane:
    """The affine plane ``origin + c @ directions`` of parameter space.

    origin [P], directions [2, P] (float64, CPU). For a PCA plane the directions are
    orthonormal and `explained_variance_ratio` [2] is the share of the snapshots'
    squared displacement from `origin` (or their variance, if centred) along each.
    """

    origin: torch.Tensor
    directions: torch.Tensor
    kind: str
    explained_variance_ratio: np.ndarray | None = None
    note: str = ""

    def point(self, coords) -> torch.Tensor:
        """Parameters [K, P] at coordinates [K, 2]."""
        c = torch.as_tensor(np.asarray(coords), dtype=torch.float64).reshape(-1, 2)
        return self.origin[None] + c @ self.directions

    def project(self, thetas) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coordinates [T, 2] of the nearest plane points, distances [T] and sin_angle [T].

        The coordinates solve the least-squares problem min_c ‖θ − origin − c @ D‖ (the
        directions need not be orthogonal, as random planes' are not). Distances are
        Euclidean in parameter units; sin_angle = distance / ‖θ − origin‖ (0 where θ is
        the origin).
        """
        X = torch.as_tensor(thetas).to(torch.float64).reshape(-1, self.origin.numel()) - self.origin[None]
        D = self.directions
        gram = D @ D.T
        coords = torch.linalg.solve(gram, D @ X.T).T  # [T, 2]
        resid = X - coords @ D
        dist = resid.norm(dim=1)
        norm = X.norm(dim=1)
        rel = torch.where(norm > 0, dist / norm.clamp_min(1e-300), torch.zeros_like(dist))
        return coords.numpy(), dist.numpy(), rel.numpy()

    @classmethod
    def random(cls, model: nn.Module, origin: torch.Tensor | None = None, seed: int = 0) -> "Plane":
        """The plane through `origin` (default: the model's parameters) spanned by the two
        filter-normalised directions of `lossprobe.directions.random_plane` (one generator
        seeded with `seed`; biases and normalisation parameters zero)."""
        space = ParamSpace(model)
        origin = space.flatten(model) if origin is None else torch.as_tensor(origin)
        origin = origin.to(torch.float64).reshape(-1)
        d1, d2 = directions_random_plane(space, seed=seed, norm="filter", reference=origin.to(space.dtype))
        dirs = torch.stack([d1.vector, d2.vector]).to(torch.float64).cpu()
        return cls(origin, dirs, "random", None, note="filter-normalised")


def _gram(X_rows: Sequence[torch.Tensor], origin: torch.Tensor, chunk: int) -> torch.Tensor:
    T = len(X_rows)
    G = torch.zeros(T, T, dtype=torch.float64)
    P = origin.numel()
    stack = torch.stack(list(X_rows)) if not isinstance(X_rows, torch.Tensor) else X_rows
    for j in range(0, P, chunk):
        B = stack[:, j : j + chunk].to(torch.float64) - origin[j : j + chunk][None]
        G += B @ B.T
    return G


def origin_given_last(first: torch.Tensor, origin: torch.Tensor) -> bool:
    """Whether `origin` is the trajectory's last snapshot (the case Li et al. use)."""
    return bool(torch.equal(first[-1].to(torch.float64), origin))


def pca_plane(thetas, origin: torch.Tensor | None = None, center: bool = False, chunk: int = 1 << 20) -> Plane:
    """The PCA plane of one or several trajectories (Li et al. 2018), with bounded memory.

    Args:
        thetas: [T, P] snapshots, or a list of such arrays (stacked: one plane for all).
        origin: a point of the plane, e.g. the final parameters [P]. Default: the last
            snapshot of the (first) trajectory.
        center: False (default): the plane through `origin` that is closest to all
            snapshots (PCA of θ_t − origin without centring, so every snapshot's
            distance to the plane is what it looks like). True: classic PCA, the plane
            through the snapshots' mean (which becomes the origin).
        chunk: parameters per block when forming the Gram matrix; memory is T² + chunk·T.
    A single trajectory with the last snapshot (or the mean) as origin goes to
    `lossprobe.directions.pca_directions` (the same method).
    Returns:
        `Plane` with orthonormal directions and explained_variance_ratio [2]: λ_k / Σλ,
        the share of Σ_t ‖θ_t − origin‖² along direction k.
    """
    if isinstance(thetas, (list, tuple)):
        first = torch.as_tensor(thetas[0])
        X = torch.cat([torch.as_tensor(t) for t in thetas])
    else:
        X = first = torch.as_tensor(thetas)
    if X.ndim != 2 or len(X) < 2:
        raise UserError(f"PCA needs at least two snapshots of shape [T, P], got {tuple(X.shape)}")
    T, P = X.shape
    if center:
        origin = X.to(torch.float64).mean(0)
    elif origin is None:
        origin = first[-1].to(torch.float64)
    origin = torch.as_tensor(origin).to(torch.float64).reshape(-1)
    if origin.numel() != P:
        raise UserError(f"origin has {origin.numel()} entries, the snapshots have {P}")
    if not isinstance(thetas, (list, tuple)) and (center or origin_given_last(first, origin)):
        # the same Gram-matrix method and ratios as lossprobe.directions.pca_directions
        dirs, evr = pca_directions(X, k=2, center="mean" if center else "final", block=chunk)
        D = torch.stack([d.vector for d in dirs]).to(torch.float64)
        q, _ = torch.linalg.qr(D.T)  # re-orthonormalise in float64 (they are float32)
        D = (q * torch.sign((q.T * D).sum(1))).T.contiguous()
        return Plane(origin, D, "pca", np.asarray(evr, dtype=float), note="centred" if center else "through origin")
    G = _gram(X, origin, chunk)
    evals, U = torch.linalg.eigh(G)  # ascending
    evals, U = evals.flip(0).clamp_min(0), U.flip(1)
    total = float(evals.sum())
    if total <= 0 or evals[1] <= 1e-12 * total:
        raise UserError("the snapshots span fewer than two directions around the origin; record more steps")
    dirs = torch.zeros(2, P, dtype=torch.float64)
    for j in range(0, P, chunk):
        B = X[:, j : j + chunk].to(torch.float64) - origin[j : j + chunk][None]
        dirs[:, j : j + chunk] = (U[:, :2].T @ B) / evals[:2].sqrt()[:, None]
    # Orthonormalise once more against rounding (the eigenvectors of G are orthonormal).
    q, _ = torch.linalg.qr(dirs.T)
    signs = torch.sign((q.T * dirs).sum(1))
    dirs = (q * signs).T.contiguous()
    evr = (evals[:2] / total).numpy()
    return Plane(origin, dirs, "pca", evr, note="centred" if center else "through origin")


def filter_normalized_direction(model: nn.Module, origin: torch.Tensor | None = None, seed: int = 0,
                                space: ParamSpace | None = None) -> torch.Tensor:
    """Deprecated: use ``lossprobe.directions.random_direction(model, seed, norm="filter")``.

    A random direction [P] (float64) with each filter scaled to the norm of the origin's
    filter; biases, normalisation parameters and buffers are zero (Li et al. 2018)."""
    warnings.warn("lossprobe.trajectory.filter_normalized_direction is deprecated; use "
                  "lossprobe.directions.random_direction(model, seed=seed, norm='filter')", DeprecationWarning,
                  stacklevel=2)
    space = space or ParamSpace(model)
    origin = space.flatten(model) if origin is None else torch.as_tensor(origin)
    d = random_direction(space, seed=seed, norm="filter", ignore=("bias", "norm", "buffer"),
                         reference=origin.reshape(-1))
    return d.vector.to(torch.float64)


def random_plane(model: nn.Module, origin: torch.Tensor | None = None, seed: int = 0) -> Plane:
    """Deprecated: `Plane.random(model, origin, seed)` (`lossprobe.directions.random_plane`
    gives the two directions themselves)."""
    warnings.warn("trajectory.random_plane is Plane.random now", DeprecationWarning, stacklevel=2)
    return Plane.random(model, origin, seed)


# --- surfaces on a plane ------------------------------------------------------------------


class PlaneSurface:
    """Deprecated: a plane surface is a `lossprobe.surface.Surface` with dims ("y", "x").

    ``PlaneSurface(xs, ys, loss, accuracy)`` returns ``Surface.plane(xs, ys, loss, accuracy)``
    (loss and accuracy [ny, nx], rows are y)."""

    def __new__(cls, xs, ys, loss, accuracy):
        warnings.warn("PlaneSurface is Surface.plane(xs, ys, loss, accuracy) now", DeprecationWarning, stacklevel=2)
        return Surface.plane(xs, ys, loss, accuracy)

    @staticmethod
    def grids(prefix: str = "") -> dict[str, dict[str, str]]:
        """Deprecated: `lossprobe.surface.plane_grids(prefix)`."""
        return plane_grids(prefix)


def grid_extent(coords: np.ndarray, margin: float = 0.2, minimum: float = 0.0) -> tuple[tuple[float, float], tuple[float, float]]:
    """A box around the projected points [K, 2] and the origin, widened by `margin` of its
    size and at least ±`minimum` around the origin."""
    c = np.vstack([np.asarray(coords, dtype=float).reshape(-1, 2), [[0.0, 0.0]]])
    lo, hi = c.min(0), c.max(0)
    span = np.maximum(hi - lo, 1e-6)
    lo, hi = lo - margin * span, hi + margin * span
    lo, hi = np.minimum(lo, -minimum), np.maximum(hi, minimum)
    return (float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1]))


def plane_surface(objective: Objective, plane: Plane, extent, n: int = 41, progress: bool = False) -> Surface:
    """Loss and accuracy on an n×n grid of the plane over extent ((x0, x1), (y0, y1)): a
    `Surface` with dims ("y", "x") (rows are y).

    One call of the core evaluator (`Objective.evaluate`) for all n² points.
    """
    if n < 2:
        raise UserError(f"the grid needs at least 2 points per axis, got {n}")
    (x0, x1), (y0, y1) = extent
    xs, ys = np.linspace(x0, x1, n), np.linspace(y0, y1, n)
    X, Y = np.meshgrid(xs, ys)
    coords = torch.from_numpy(np.stack([X.ravel(), Y.ravel()], 1))
    ev = objective.evaluate(coords, origin=plane.origin.to(objective.space.dtype),
                            directions=plane.directions.to(objective.space.dtype), progress=progress)
    return Surface.plane(xs, ys, ev.loss.reshape(n, n), ev.accuracy.reshape(n, n),
                         meta={"axis_labels": ["y (plane direction 2)", "x (plane direction 1)"], "plane": plane.kind})


# --- fidelity of a drawn path -------------------------------------------------------------


def path_fidelity(objective: Objective, plane: Plane, thetas, surface: Surface | None = None,
                  true_loss: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """For every snapshot [T, P]: coordinates, distance from the plane, and three losses.

    Returns arrays [T] (coords [T, 2]): coords, distance, rel_distance (distance / the
    half-width of the surface's window in parameter units; without a surface, / the
    largest ‖c_t @ directions‖ of this path), sin_angle, true_loss (at θ_t), plane_loss
    (exact, at the projected point), surface_loss (the grid interpolated at the projected
    point; NaN outside the grid or without `surface`).
    """
    thetas = torch.as_tensor(thetas)
    coords, dist, sin_angle = plane.project(thetas)
    dn = plane.directions.norm(dim=1).numpy()
    if surface is not None:
        radius = max(np.abs(surface.xs).max() * dn[0], np.abs(surface.ys).max() * dn[1])
    else:
        radius = float(np.max(np.linalg.norm(coords @ plane.directions.numpy(), axis=1)))
    rel = dist / radius if radius > 0 else np.zeros_like(dist)
    if true_loss is None:
        true_loss, _ = losses_at(objective, thetas)
    proj = plane.point(coords)
    plane_loss, _ = losses_at(objective, proj)
    surf = surface.interpolate(coords, dims=("x", "y")) if surface is not None else np.full(len(coords), np.nan)
    return {"coords": coords, "distance": dist, "rel_distance": rel, "sin_angle": sin_angle,
            "true_loss": np.asarray(true_loss, float),
            "plane_loss": plane_loss, "surface_loss": surf}


def fidelity_summary(f: dict[str, np.ndarray], near: float = 0.1) -> dict:
    """How well the contours under the drawn points match the true losses.

    Points are "near" the plane when rel_distance ≤ `near` (their distance from the
    plane is at most `near` of the drawn window's half-width). For near and far points: count,
    median and max |true − surface| and |true − plane| loss differences, and the median
    relative difference |true − surface| / true.
    """
    true, surf, plane = f["true_loss"], f["surface_loss"], f["plane_loss"]
    rel = f["rel_distance"]
    ok = np.isfinite(surf)

    def stats(mask):
        m = mask & ok
        if not m.any():
            return {"n": 0}
        d_s = np.abs(true[m] - surf[m])
        d_p = np.abs(true[m] - plane[m])
        return {"n": int(m.sum()), "median_abs_diff_surface": float(np.median(d_s)),
                "max_abs_diff_surface": float(d_s.max()), "median_abs_diff_plane": float(np.median(d_p)),
                "median_rel_diff_surface": float(np.median(d_s / np.maximum(np.abs(true[m]), 1e-12))),
                "median_rel_distance": float(np.median(rel[m]))}

    diff = np.abs(true - surf)
    corr = None
    if ok.sum() > 2 and np.std(rel[ok]) > 0 and np.std(diff[ok]) > 0:
        corr = float(np.corrcoef(rel[ok], diff[ok])[0, 1])
    return {"near_threshold": near, "n_points": int(len(true)), "n_outside_grid": int((~ok).sum()),
            "near": stats(rel <= near), "far": stats(rel > near), "all": stats(np.ones_like(ok)),
            "corr_rel_distance_abs_diff": corr,
            "median_rel_distance": float(np.median(rel)), "max_rel_distance": float(rel.max())}


# --- roughness ------------------------------------------------------------------------------


def roughness(Z: np.ndarray, sigma: float = 1.0) -> dict:
    """Roughness numbers of a surface Z [ny, nx] (any grid; NaNs not allowed).

    Returns:
        mean_abs_smooth_diff: mean |Z − G_σ * Z|, G_σ a Gaussian filter of `sigma` grid
            cells (reflecting edges): how much detail a smoothed copy loses, in loss units.
        relative_smooth_diff: that divided by the surface's range (max − min), so surfaces
            of different heights compare.
        positive_curvature_share: share of 1-D second differences (along x and along y,
            at interior points) that are positive: 1 for a convex bowl, about 0.5 or less
            for a rough, non-convex surface.
        range: max − min.
    """
    from scipy.ndimage import gaussian_filter  # lazy: scipy.ndimage adds ~0.07 s to `import lossprobe`

    Z = np.asarray(Z, dtype=float)
    if Z.ndim != 2 or min(Z.shape) < 3:
        raise UserError(f"roughness needs a 2-D grid of at least 3×3, got shape {Z.shape}")
    if not np.isfinite(Z).all():
        raise UserError("the surface has NaN or inf values; roughness needs finite losses")
    smooth = gaussian_filter(Z, sigma=sigma, mode="reflect")
    mad = float(np.mean(np.abs(Z - smooth)))
    rng = float(Z.max() - Z.min())
    dx = Z[:, 2:] - 2 * Z[:, 1:-1] + Z[:, :-2]
    dy = Z[2:, :] - 2 * Z[1:-1, :] + Z[:-2, :]
    pos = (np.sum(dx > 0) + np.sum(dy > 0)) / (dx.size + dy.size)
    return {"mean_abs_smooth_diff": mad, "relative_smooth_diff": mad / rng if rng > 0 else 0.0,
            "positive_curvature_share": float(pos), "range": rng, "sigma": sigma}


# --- curvature along training ------------------------------------------------------------


def hessian_extremes(model: nn.Module, data, thetas, loss: str = "bce", dense_max: int = 2500,
                     forward=None) -> dict[str, np.ndarray]:
    """Smallest and largest Hessian eigenvalues of the mean loss at each snapshot [T, P].

    Small networks (P ≤ `dense_max`): the exact dense Hessian in float64
    (`torch.func.hessian`) on all of `data`, and `torch.linalg.eigvalsh`. Larger ones:
    Lanczos from `lossprobe.hessian.eigenvalues(which="both")`.
    Returns {"min": [T], "max": [T], "method": "dense" | "lanczos"}.
    """
    data = as_data(data)
    space = ParamSpace(model)
    thetas = torch.as_tensor(thetas)
    lo, hi = [], []
    if space.numel <= dense_max and isinstance(data, TensorData):

        crit = criterion(loss, forward=forward, model=model)
        m64 = copy.deepcopy(model).double().eval()
        s64 = ParamSpace(m64)
        call = BatchCall(m64, crit.forward)
        batch = tree_map(lambda t: t.double() if t.is_floating_point() else t, data.tree)

        def f(th):
            t = crit.terms(functional_call(call, s64.unflatten(th, prefix="model."), (batch,)), batch)
            return t.loss / t.count

        hess = torch.func.hessian(f)
        for th in thetas:
            H = hess(th.to(torch.float64))
            ev = torch.linalg.eigvalsh(0.5 * (H + H.T))
            lo.append(float(ev[0]))
            hi.append(float(ev[-1]))
        method = "dense"
    else:

        work = copy.deepcopy(model)
        obj = Objective(work, data, loss=loss, forward=forward)
        for th in thetas:
            r = _hess.eigenvalues(HessianOperator(obj, theta=th.to(space.dtype)), k=1, which="both")
            hi.append(float(r.values[0]))
            lo.append(float(r.values[1]))
        method = "lanczos"
    return {"min": np.asarray(lo), "max": np.asarray(hi), "method": method}


def near_saddles(hmin: np.ndarray, hmax: np.ndarray, grad: np.ndarray, neg_ratio: float = 0.01,
                 grad_ratio: float = 0.1) -> np.ndarray:
    """Indices of checkpoints that look like the run passed near a saddle.

    A checkpoint counts when the Hessian has a clearly negative eigenvalue
    (λ_min < −neg_ratio · λ_max) while the gradient is small (below `grad_ratio` of its
    largest value along the run).
    """
    hmin, hmax, grad = (np.asarray(a, dtype=float) for a in (hmin, hmax, grad))
    gmax = np.nanmax(grad) if grad.size else 0.0
    mask = (hmin < -neg_ratio * np.abs(hmax)) & (grad < grad_ratio * gmax)
    return np.nonzero(mask)[0]


def projection_match(groups: dict[str, list[tuple[dict, float]]]) -> dict:
    """How well drawn points match the contour under them, near the plane and far from it.

    `groups` maps a name (a kind of plane) to its paths, each as (the arrays `path_fidelity`
    returned, the relative distance up to which a point counts as near the plane). Per group:
    counts and the median and largest |true loss − contour loss| of near and far points, their
    correlation with the distance, and the share of points whose true loss is below the contour;
    and 'by_distance': all groups pooled, binned by relative distance."""
    out = {}
    all_rel, all_d = [], []
    for group, paths in groups.items():
        near_d, far_d, rel_all, d_all, below = [], [], [], [], []
        thr = None
        for f, thr in paths:
            ok = np.isfinite(f["surface_loss"])
            d = np.abs(f["true_loss"] - f["surface_loss"])
            near_d += list(d[ok & (f["rel_distance"] <= thr)])
            far_d += list(d[ok & (f["rel_distance"] > thr)])
            rel_all += list(f["rel_distance"][ok])
            d_all += list(d[ok])
            below += list((f["true_loss"] < f["surface_loss"])[ok & (f["rel_distance"] > 0)])
        corr = float(np.corrcoef(rel_all, d_all)[0, 1]) if len(d_all) > 2 and np.std(d_all) > 0 else None
        all_rel.append(np.asarray(rel_all))
        all_d.append(np.asarray(d_all))
        out[group] = {"near_threshold": thr, "n_near": len(near_d), "n_far": len(far_d),
                      "median_abs_diff_near": float(np.median(near_d)) if near_d else None,
                      "median_abs_diff_far": float(np.median(far_d)) if far_d else None,
                      "max_abs_diff_near": float(np.max(near_d)) if near_d else None,
                      "max_abs_diff_far": float(np.max(far_d)) if far_d else None,
                      "corr_rel_distance_abs_diff": corr,
                      # off the plane the optimiser usually sits lower than the contour under it
                      "share_true_below_contour": float(np.mean(below)) if below else None}
    rel, d = np.concatenate(all_rel), np.concatenate(all_d)
    edges = [0.0, 0.01, 0.03, 0.1, 0.3, np.inf]
    bins = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (rel >= lo) & (rel < hi) if lo > 0 else (rel < hi)
        bins.append({"rel_distance_from": lo, "rel_distance_to": None if np.isinf(hi) else hi, "n": int(m.sum()),
                     "median_abs_diff": float(np.median(d[m])) if m.any() else None,
                     "p90_abs_diff": float(np.quantile(d[m], 0.9)) if m.any() else None})
    out["by_distance"] = bins
    return out


__all__ = [
    "Plane", "PlaneSurface", "Trajectory", "filter_normalized_direction", "fidelity_summary", "grid_extent",
    "hessian_extremes", "losses_at", "near_saddles", "path_fidelity", "pca_plane", "plane_surface",
    "projection_match",
    "random_plane", "roughness", "train_trajectory",
]
