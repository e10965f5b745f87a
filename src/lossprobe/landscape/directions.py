"""Directions that need the curvature of the loss, and the language that names directions.

The primitives (random filter-normalised directions, planes, directions between models,
PCA of a trajectory, rescaling) live in `lossprobe.core.directions` and are re-exported
here, so `lossprobe.directions` is the one place a user looks. This module adds what needs
the curvature operators: the top eigenvectors of the Hessian (or GGN, Fisher, K-FAC) as
directions, and the curvature of the loss along given directions.
"""

from __future__ import annotations

import torch

from lossprobe.core.directions import (
    NORMS,
    WHOLE_NORMS,
    Direction,
    as_vector,
    between,
    gradient_direction,
    normalize,
    pca_directions,
    plane_through,
    project,
    random_direction,
    random_plane,
    rescale,
    stack,
)
from lossprobe.curvature import hessian
from lossprobe.curvature.operators import curvature_operator


def curvature_directions(objective, k: int = 2, curvature: str = "hessian", norm: str | None = "unit",
                         params=None, seed: int = 0, options: dict | None = None, progress: bool = False,
                         tol: float | None = None) -> list[Direction]:
    """The top-k eigenvectors of the Hessian (or 'ggn', 'fisher', 'efisher', 'kfac') of an
    `Objective`'s loss at its parameters, scaled as a whole (`rescale`: unit by default).

    Each Direction's meta holds the eigenvalue, its residual ‖Cv − λv‖ and the products used.
    An eigenvector's sign is arbitrary; it is fixed so that its largest entry is positive.
    """
    r = hessian.eigenvalues(objective, params=params, k=k, which="largest", seed=seed, progress=progress,
                            curvature=curvature, options=options, tol=tol)
    out = []
    for i in range(len(r.values)):
        v = r.vectors[i].to(torch.float64)
        if v[v.abs().argmax()] < 0:
            v = -v
        d = rescale(v, norm, objective.theta0)
        out.append(Direction(d.to(objective.space.dtype), {
            "kind": curvature, "index": i, "norm": norm, "length": float(d.norm()), "eigenvalue": float(r.values[i]),
            "residual": float(r.residuals[i]), "matvecs": int(r.matvecs), "converged": bool(r.converged)}))
    return out


def curvature_along(objective, directions, curvature: str = "hessian", options: dict | None = None) -> list[dict]:
    """Per direction d: the curvature of the loss along it, one product each:
    ``second_derivative`` = dᵀCd (d²L/da² at the centre in the direction's own units, C the
    Hessian unless `curvature` says otherwise) and ``rayleigh`` = dᵀCd / ‖d‖² (per unit of
    parameter length: an eigenvalue for an eigenvector)."""
    op = curvature_operator(objective, curvature, **(options or {}))
    out = []
    for d in directions:
        v = op.restrict(as_vector(d).to(objective.device, torch.float64))
        cv = op.matvec(v)
        q = float(v @ cv)
        full = float(as_vector(d).double().norm())
        out.append({"operator": curvature, "second_derivative": q,
                    "rayleigh": q / full ** 2 if full > 0 else float("nan"), "length": full})
    return out


__all__ = ["Direction", "NORMS", "WHOLE_NORMS", "as_vector", "between", "curvature_along", "curvature_directions",
           "gradient_direction", "normalize", "pca_directions", "plane_through", "project", "random_direction",
           "random_plane", "rescale", "stack"]
