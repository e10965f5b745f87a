"""Directions that need the curvature of the loss, and the language that names directions.

The primitives (random filter-normalised directions, planes, directions between models,
PCA of a trajectory, rescaling) live in `lossprobe.core.directions` and are re-exported
here, so `lossprobe.directions` is the one place a user looks. This module adds what needs
the curvature operators: the top eigenvectors of the Hessian (or GGN, Fisher, K-FAC) as
directions, the curvature of the loss along given directions, and the language in which a
user names the direction of each axis of a slice or surface (`resolve`):

    random          a seeded Gaussian direction, filter-normalised by default (Li et al. 2018)
    hessian, ggn, fisher, efisher, kfac
                    the top eigenvectors of that curvature operator, unit length by default
    gradient        the gradient of the loss, unit length by default
    pca:PATH        the top principal directions of a recorded trajectory: a .npy [T, P], a
                    folder holding one trajectory*.npy, or a folder of checkpoints
    towards:CKPT    CKPT − θ, so the checkpoint CKPT is at coordinate 1

A surface given one name takes its second axis from the same kind where it has a second
direction (random, pca, the eigenvectors), otherwise a random one.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import torch

from lossprobe.core.directions import (
    NORMS,
    WHOLE_NORMS,
    Direction,
    Reference,
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
from lossprobe.core.vectors import norm64
from lossprobe.curvature import hessian
from lossprobe.curvature.operators import CURVATURES, NAMES, curvature_operator
from lossprobe.errors import UserError
from lossprobe.training.checkpoints import apply_state_dict, load_state_dict


def curvature_directions(objective, k: int = 2, curvature: str = "hessian", norm: str | None = "unit",
                         params=None, seed: int = 0, options: dict | None = None, progress: bool = False,
                         tol: float | None = None) -> list[Direction]:
    """The top-k eigenvectors of the Hessian (or 'ggn', 'fisher', 'efisher', 'kfac') of an
    `Objective`'s loss at its parameters, scaled as a whole (`rescale`: unit by default).

    Each Direction's meta holds the eigenvalue, its residual ‖Cv − λv‖ and the products used.
    An eigenvector's sign is arbitrary; it is fixed so that its largest entry is positive.
    """
    op = curvature_operator(objective, curvature, params=params, **(options or {}))
    r = hessian.eigenvalues(op, k=k, which="largest", seed=seed, progress=progress, tol=tol)
    ref = Reference(objective.space, objective.model)
    out = []
    for i in range(len(r.values)):
        v = r.vectors[i]
        if v[v.abs().argmax()] < 0:
            v.neg_()
        # in place where the dtypes agree: the directions stay rows of the Lanczos result (no copy)
        d = rescale(v, norm, ref, dtype=objective.space.dtype, out=v if v.dtype == objective.space.dtype else None)
        out.append(Direction(d, {
            "kind": curvature, "index": i, "norm": norm, "length": objective.space.norm(d), "eigenvalue": float(r.values[i]),
            "residual": float(r.residuals[i]), "matvecs": int(r.matvecs), "converged": bool(r.converged)}))
    del r
    return out


def curvature_along(objective, directions, curvature: str = "hessian", options: dict | None = None) -> list[dict]:
    """Per direction d: the curvature of the loss along it, one product each:
    ``second_derivative`` = dᵀCd (d²L/da² at the centre in the direction's own units, C the
    Hessian unless `curvature` says otherwise) and ``rayleigh`` = dᵀCd / ‖d‖² (per unit of
    parameter length: an eigenvalue for an eigenvector)."""
    op = curvature_operator(objective, curvature, **(options or {}))
    out = []
    for d in directions:
        v = op.restrict(as_vector(d).to(objective.device, op.vector_dtype))
        cv = op.apply(v)
        q = op.counting().dot(v, cv)
        del cv
        full = objective.space.norm(as_vector(d))
        out.append({"operator": curvature, "second_derivative": q,
                    "rayleigh": q / full ** 2 if full > 0 else float("nan"), "length": full})
    return out



# --- the language of directions ---------------------------------------------------------------
EIGEN_KINDS = CURVATURES
KINDS = ("random", "gradient", "pca", "towards") + EIGEN_KINDS
NAMES_HELP = "random, hessian, ggn, fisher, efisher, kfac, gradient, pca:PATH, towards:CKPT"


def parse(specs, m: int, option: str = "directions") -> list[tuple[str, str | None]]:
    """(kind, argument) for each of the `m` axes from a name or a sequence of names (see the
    module docstring); `option` names the argument in messages (the CLI's ``--directions``)."""
    given = [specs] if isinstance(specs, str) else list(specs or ["random"])
    if len(given) > m:
        raise UserError(f"{option}: {len(given)} given for {m} axis/axes")
    out = []
    for g in given:
        if not isinstance(g, str):
            raise UserError(f"{option}: each direction is named by a string ({NAMES_HELP}), got {type(g).__name__}")
        kind, _, arg = g.partition(":")
        if kind not in KINDS:
            raise UserError(f"{option}: unknown '{g}'; choose from {NAMES_HELP}")
        if kind in ("pca", "towards") and not arg:
            raise UserError(f"{option} {kind} needs a path: {kind}:{'PATH' if kind == 'pca' else 'CKPT'}")
        if kind not in ("pca", "towards") and arg:
            raise UserError(f"{option} {kind} takes no argument, got '{g}'")
        out.append((kind, arg or None))
    if len(out) < m:
        kind, arg = out[0]
        out.append((kind, arg) if kind in ("random", "pca") + EIGEN_KINDS else ("random", None))
    if sum(k == "gradient" for k, _ in out) > 1:
        raise UserError(f"{option}: the gradient gives one direction, not two")
    return out


def axis_norm(kind: str, norm: str | None = "auto", option: str = "norm"):
    """The normalisation of an axis of `kind`: 'auto' for the kind's default (filter for random
    directions, unit length for the rest, none towards a checkpoint), 'filter', 'layer',
    'model', 'unit', or None / 'none' for none. Only random directions may be filter- or
    layer-normalised: it would change the shape of any other."""
    if kind == "towards":
        return None
    if norm == "auto":
        return "filter" if kind == "random" else "unit"
    norm = None if norm == "none" else norm
    if norm not in ("filter", "layer", "model", "unit", None):
        raise UserError(f"{option} must be one of auto, filter, layer, model, unit, none; got {norm!r}")
    if kind != "random" and norm in ("filter", "layer"):
        raise UserError(f"{option} {norm} would change the shape of a {kind} direction: use unit, model or none")
    return norm


def load_trajectory(path, objective):
    """A recorded trajectory for PCA in the objective's parameter layout: a .npy [T, P]
    (memory-mapped), a folder holding one trajectory*.npy, or a folder of checkpoints of the
    objective's model (sorted by name, numbers in natural order; read one at a time)."""
    p = Path(path)
    if p.is_file() and p.suffix == ".npy":
        arr = np.load(p, mmap_mode="r")
    elif p.is_dir():
        npys = sorted(p.rglob("trajectory*.npy"))
        if len(npys) > 1:
            raise UserError(f"pca:{path} holds {len(npys)} trajectories ({', '.join(str(n) for n in npys[:4])}): "
                            "name one .npy file")
        if npys:
            arr = np.load(npys[0], mmap_mode="r")
        else:
            def key(f):
                return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", f.name)]

            ckpts = sorted((f for f in p.rglob("*") if f.suffix in (".safetensors", ".pt", ".pth")), key=key)
            if len(ckpts) < 2:
                raise UserError(f"pca:{path} holds no trajectory*.npy and fewer than 2 checkpoints")

            def vectors():
                work = copy.deepcopy(objective.model)
                for f in ckpts:
                    yield objective.space.flatten(apply_state_dict(work, load_state_dict(str(f)), str(f))).cpu()

            return vectors()
    else:
        raise UserError(f"pca:{path} is neither a .npy trajectory nor a folder")
    if arr.ndim != 2 or arr.shape[1] != objective.space.numel:
        raise UserError(f"the trajectory {path} has shape {list(arr.shape)}; the model has {objective.space.numel} "
                        "parameters in this layout (include_buffers changes it)")
    return arr


_TRAJECTORY_FILES = (".safetensors", ".pt", ".pth")


def input_files(specs, m: int = 2, option: str = "--directions") -> dict:
    """{what: path or (folder, select)} of the files the named directions read (the checkpoint
    of towards:CKPT, the trajectory or checkpoints of pca:PATH), for a run's input fingerprints."""
    out = {}
    for kind, arg in parse(specs, m, option):
        if kind == "towards":
            out[f"{option} towards: checkpoint"] = arg
        elif kind == "pca":
            p = Path(arg)
            out[f"{option} pca: trajectory"] = p if p.is_file() else (
                p, lambda rel: rel.rsplit("/", 1)[-1].startswith("trajectory") and rel.endswith(".npy")
                or rel.endswith(_TRAJECTORY_FILES))
    return out


def towards(objective, checkpoint) -> Direction:
    """θ_CKPT − θ: from the objective's point to a checkpoint of the same model (at coordinate 1)."""
    other = apply_state_dict(copy.deepcopy(objective.model), load_state_dict(str(checkpoint)), str(checkpoint))
    space = objective.space
    v = space.flatten(other).to(objective.device)  # θ_CKPT, then minus θ in place: one vector
    live = space._tensors(objective.model)
    for e in space.entries:
        v[e.slice].sub_(live[e.name].detach().reshape(-1).to(v.dtype))
    d = Direction(v, {"kind": "between", "norm": None, "length": objective.space.norm(v)})
    if not d.meta["length"] > 0:
        raise UserError(f"towards:{checkpoint} holds the same weights as the centre: the direction between them is "
                        "zero; give a different checkpoint")
    return Direction(d.vector, {**d.meta, "kind": "towards", "checkpoint": str(checkpoint)})


def resolve(objective, specs="random", m: int = 2, *, norm: str | None = "auto", seed: int = 0,
            include_bias: bool = False, orthogonal: bool = False, progress: bool = False, reference=None,
            along: bool = True, option: str = "directions") -> list[Direction]:
    """The directions of the `m` axes named by `specs` (see the module docstring) around the
    objective's parameters.

    Each Direction's meta says what it is (kind, normalisation, seed or eigenvalue or source)
    and how the loss curves along it: its length, ``second_derivative`` = dᵀHd and
    ``rayleigh`` = dᵀHd / ‖d‖² (one Hessian-vector product each). `norm` overrides the kinds'
    defaults (`axis_norm`); biases and normalisation parameters stay fixed in random
    directions unless `include_bias`; `orthogonal` makes a second random direction orthogonal
    to the first. Eigenvectors of one operator come from one Lanczos run for all the axes
    that ask for it. `reference` (default: the objective's parameters) is what random and PCA
    directions are scaled against; `along=False` skips the curvature along the directions.
    """
    specs = parse(specs, m, option)
    ref = objective.model if reference is None else reference  # read in place: no flat copy
    dirs: list = [None] * len(specs)
    for kind in EIGEN_KINDS:
        axes = [i for i, (k, _) in enumerate(specs) if k == kind]
        if axes:
            got = curvature_directions(objective, k=len(axes), curvature=kind, norm=axis_norm(kind, norm),
                                       seed=seed, progress=progress)
            for i, d in zip(axes, got):
                dirs[i] = d
    axes = [i for i, (k, _) in enumerate(specs) if k == "random"]
    if axes:
        rnorm = axis_norm("random", norm)
        opts = dict(seed=seed, norm=rnorm if rnorm != "unit" else None, ignore=() if include_bias else ("bias", "norm"),
                    reference=ref)
        # the plane's first direction is `random_direction` with the same seed: draw one when one is used
        plane = (random_direction(objective.space, **opts),) if axes == [0] else \
            random_plane(objective.space, orthogonal=orthogonal, **opts)
        for i in axes:
            d = plane[i]
            if rnorm == "unit":
                d = Direction(rescale(d.vector, "unit", dtype=objective.space.dtype), {**d.meta, "norm": "unit"})
            dirs[i] = d
    pcas = [(i, arg) for i, (k, arg) in enumerate(specs) if k == "pca"]
    for arg in dict.fromkeys(a for _, a in pcas):
        axes = [i for i, a in pcas if a == arg]
        pnorm = axis_norm("pca", norm)
        got, _ = pca_directions(load_trajectory(arg, objective), k=len(axes))
        for i, d in zip(axes, got):
            pref = Reference(objective.space, ref) if pnorm == "model" else None
            dirs[i] = Direction(rescale(d.vector.to(objective.device), pnorm, pref, dtype=objective.space.dtype),
                                {**d.meta, "norm": pnorm, "source": arg})
    for i, (k, arg) in enumerate(specs):
        if k == "gradient":
            dirs[i] = gradient_direction(objective, norm=axis_norm("gradient", norm))
        elif k == "towards":
            dirs[i] = towards(objective, arg)
    for i, d in enumerate(dirs):
        if not objective.space.norm(d.vector) > 0:
            raise UserError(f"direction d{i + 1} ({specs[i][0]}) is zero")
    if not along:
        return dirs
    return [Direction(d.vector, {**d.meta, "norm": d.meta.get("norm"), "length": a["length"],
                                 "second_derivative": a["second_derivative"], "rayleigh": a["rayleigh"],
                                 "curvature_operator": "hessian"})
            for d, a in zip(dirs, curvature_along(objective, dirs))]


def describe(meta: dict, short: bool = False) -> str:
    """A direction in words, from its meta: 'Hessian eigenvector 1 (λ = 3.2), unit length', ..."""
    kind = meta.get("kind", "direction")
    norm = meta.get("norm")
    scale = {"unit": "unit length", "model": "length ‖θ‖", "filter": "filter-normalised",
             "layer": "layer-normalised", None: "raw"}.get(norm, str(norm))
    if kind in EIGEN_KINDS:
        text = f"{NAMES[kind]} eigenvector {meta.get('index', 0) + 1} (λ = {meta['eigenvalue']:.4g}"
        text += ")" if short else f", residual {meta['residual']:.1e})"
        return f"{text}, {scale}"
    if kind == "random":
        return f"random (seed {meta.get('seed')}, {scale})"
    if kind == "gradient":
        return f"gradient ({scale})" + ("" if short else f", ‖∇L‖ = {meta['gradient_norm']:.4g}")
    if kind == "pca":
        return (f"PC{meta.get('index', 0) + 1} of the trajectory ({100 * meta['explained_variance_ratio']:.0f}% of "
                f"variance, {scale})")
    if kind == "towards":
        return f"towards {meta.get('checkpoint')} (at 1)"
    return kind


__all__ = ["EIGEN_KINDS", "KINDS", "Direction", "NORMS", "WHOLE_NORMS", "as_vector", "axis_norm", "describe",
           "input_files",
           "load_trajectory", "parse", "resolve", "towards", "between", "curvature_along", "curvature_directions",
           "gradient_direction", "normalize", "pca_directions", "plane_through", "project", "random_direction",
           "random_plane", "rescale", "stack"]
