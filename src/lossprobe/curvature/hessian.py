"""The Hessian of an objective's loss: products, extreme eigenpairs, trace and spectral density.

    >>> from lossprobe import Objective, hessian
    >>> obj = Objective(model, data)                     # eval mode by default
    >>> eig = hessian.eigenvalues(obj, k=5)              # largest first, with residuals
    >>> eig.values, eig.residuals, eig.vectors           # vectors [k, P]: surface directions
    >>> tr = hessian.trace(obj)                          # Hutch++, value ± stderr, per layer
    >>> dens = hessian.spectral_density(obj)             # SLQ, Gaussian broadening
    >>> A = hessian.as_linear_operator(obj)              # scipy LinearOperator: eigsh(A, ...)

Products H v are exact (no finite differences): the loss over all of the objective's data
(sample-weighted sums over batches, divided by the sample count) is differentiated twice.
Two ways are implemented: double backward (reverse-over-reverse) and ``torch.func``
forward-over-reverse (``jvp`` of ``grad``); ``method="auto"`` uses the one that
`benchmarks/hessian.py` measured faster (reverse-over-reverse on CPU, see docs/curvature.md).

`params` restricts the Hessian to some parameters: None means every parameter that
requires a gradient (frozen parameters and BatchNorm running statistics are left out;
unused parameters simply give zero rows). The algorithms (Lanczos, Hutch++, SLQ) live
in `lossprobe.curvature` and work on any symmetric operator.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.distributed as dist
from scipy.sparse.linalg import LinearOperator
from tqdm.auto import tqdm

from lossprobe.core.objective import Objective, hvp
from lossprobe.curvature.algorithms import (
    EigResult,
    SLQResult,
    TraceResult,
    gaussian_density,
    hutchinson,
    hutchpp,
    lanczos_eigs,
    lanczos_eigs_spilled,
    slq,
)
from lossprobe.core.memory import budget, fmt, require, vectors_allowed
from lossprobe.core.spill import spill_room
from lossprobe.curvature.operators import CurvatureOperator, HessianOperator, curvature_operator
from lossprobe.errors import UserError, warn_deprecated
from lossprobe.results.contract import Result, json_float, register, xarray
from lossprobe.results.plotspec import Series, line

__all__ = [
    "HessianOperator",
    "operator",
    "as_linear_operator",
    "eigenvalues",
    "trace",
    "spectral_density",
    "hvp",
    "Density",
]


LEGACY = {"params", "theta", "method", "hvp_method", "options", "cache_budget"}


def operator(op, curvature: str = "hessian", **legacy) -> CurvatureOperator:
    """The operator a curvature probe works on.

    A `CurvatureOperator` (`HessianOperator`, `GGNOperator`, ... built with whatever
    parameters it needs) passes through; an `Objective` gives its operator named by
    `curvature` ('hessian', 'ggn', 'fisher', 'efisher', 'kfac') at default settings. The
    keywords the probes took before they took operators (``params``, ``theta``, ``method`` /
    ``hvp_method``, ``options``, ``cache_budget``) still build the operator, with a warning.
    """
    if isinstance(op, CurvatureOperator):
        if legacy:
            raise UserError(f"{sorted(legacy)} configure the operator: pass them when building it, not to the probe")
        return op
    if not isinstance(op, Objective):
        raise TypeError(f"expected a curvature operator or an Objective, got {type(op).__name__}")
    if legacy:
        bad = sorted(set(legacy) - LEGACY)
        if bad:
            raise TypeError(f"unexpected keyword argument(s) {bad}")
        warn_deprecated("passing " + ", ".join(sorted(legacy)) + " to a curvature probe",
                        "an operator built with them, e.g. eigenvalues(HessianOperator(objective, params=...), k=...)",
                        stacklevel=4)
        kw = dict(legacy.pop("options", None) or {})
        if "hvp_method" in legacy:
            legacy["method"] = legacy.pop("hvp_method")
        if legacy.get("cache_budget") is not None:
            kw["cache_budget"] = legacy.pop("cache_budget")
        legacy.pop("cache_budget", None)
        return curvature_operator(op, curvature or "hessian", **legacy, **kw)
    return curvature_operator(op, curvature or "hessian")


def as_linear_operator(op, curvature: str = "hessian", **legacy):
    """A curvature operator (or an `Objective`'s operator named by `curvature`, see `operator`)
    as a `scipy.sparse.linalg.LinearOperator` (float64, shape (n, n), symmetric).

    Works with scipy's solvers: ``eigsh(as_linear_operator(obj), k=5, which='LA')``. The
    wrapped operator is available as ``.operator`` (and ``.hessian``; ``.calls`` counts products).
    """
    H = operator(op, curvature, **legacy)

    def mv(x):
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        return H.matvec(torch.from_numpy(x)).cpu().numpy()

    def mm(X):
        X = np.asarray(X, dtype=np.float64)
        return np.stack([mv(X[:, j]) for j in range(X.shape[1])], 1)

    op = LinearOperator((H.n, H.n), matvec=mv, rmatvec=mv, matmat=mm, dtype=np.float64)
    op.hessian = op.operator = H
    return op


def _bar(progress: bool, total: int | None, unit: str = "Hv"):
    if not progress:
        return None, None

    bar = tqdm(total=total, unit=unit, dynamic_ncols=True, leave=False)
    return bar, bar.update


def _plan(H: CurvatureOperator, what: str, vectors: int, memory) -> None:
    """Check that `vectors` vectors of the operator fit the budget (one line if not) and give
    the graph cache what remains."""
    have, source = budget(H.device, memory)
    vec = H.vector_bytes
    need = vectors * vec
    if not H.full:  # a restricted selection: products go through full-size vectors
        need += 2 * H.objective.vector_bytes
    require(what, need, have, source, f" ({vectors} vectors of {fmt(vec)}, plus one gradient graph and a batch's "
            "activations)")
    H.set_graph_budget(have - need)


def _agreed(H: CurvatureOperator, value: int) -> int:
    """The least of the ranks' `value`s under torch.distributed (each rank measures its own free
    memory and disk, but all must run the same products), else `value`."""
    obj = H.objective
    if obj.dist is None and obj.space.shards is None:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=obj.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


SPILL_STEPS = 40  # disk room (vectors, beyond 2 per wanted pair) that 'auto' asks for before it spills


def _default_tol(H: CurvatureOperator) -> float:
    dt = H.objective.space.dtype
    return 1e-9 if dt == torch.float64 else (1e-5 if dt == torch.float32 else 1e-3)


def eigenvalues(
    op,
    k: int = 1,
    which: str = "largest",
    tol: float | None = None,
    max_steps: int = 300,
    seed: int = 0,
    residuals: str = "exact",
    progress: bool = False,
    curvature: str = "hessian",
    memory=None,
    max_basis: int | None = None,
    v0: torch.Tensor | None = None,
    basis: str = "auto",
    **legacy,
) -> EigResult:
    """The k extreme eigenvalues of a curvature operator by Lanczos.

    Args:
        op: a `CurvatureOperator` (e.g. ``HessianOperator(objective, params="weight")``), or an
            `Objective`, whose operator named by `curvature` is taken at default settings.
        which: 'largest' (algebraically, largest first), 'smallest' (most negative first)
            or 'both' (k largest then k smallest).
        tol: stop when every wanted Ritz pair has ``||Hy − θy|| ≤ tol · max|θ|``; defaults
            to 1e-5 for float32 models (the products' own rounding), 1e-9 for float64 and 1e-3
            for half precision.
        residuals: 'exact' measures each ``||Hy − θy||`` with one more product;
            'estimate' reports the Lanczos estimate |β_m s_m| (no extra products).
        memory: bytes (or '12G') the probe may use: its vectors, then gradient graphs kept
            with what remains (default: the memory free on the model's device, less 10 %).
            A probe that does not fit says so in one line before any product.
        max_basis: vectors kept at once with ``basis='memory'`` (default k' + 3 with k' = k, or 2k
            for 'both', or as many as fit in 256 MiB when that is more): a bounded basis is
            thick-restarted.
        v0: a start vector [P] (or a block [b, P] of them: their sum), e.g. the eigenvectors of
            an earlier call (a warm start); default a seeded Gaussian vector.
        basis: where the Lanczos vectors live. 'memory': all in memory (full
            reorthogonalisation), thick-restarted when `max_basis` bounds them; 'disk': two in
            memory and every one written to a temporary file in ``TMPDIR`` (one model size of
            disk per step, freed at the end), with selective orthogonalisation
            (`lossprobe.curvature.algorithms.lanczos_eigs_spilled`; a full disk stops the
            iteration with a warning and what converged); 'auto': 'memory' when the whole
            basis fits in 256 MiB or `max_basis` is given, else 'disk' when the disk has room
            for 2k' + 40 vectors (a tmpfs has none), else a thick-restarted basis in memory (a GPU's 1B model).

    Returns:
        `EigResult` whose ``vectors`` [k, P] are unit vectors in the full parameter space
        (zeros outside the operator's parameters; float32 for float32 and half models),
        ready to use as surface directions.

    A small residual says that each value is an eigenvalue, not that no larger one was missed
    (an eigenvector the random start barely touches enters the Krylov space late): for several
    eigenvalues of a large model ask for a few more than needed, or compare two seeds.

    Memory: with 'disk', k' + 2 vectors of the model's size in float32 (3 M for the top
    eigenvalue of a float32 model); with 'memory', ``max_basis`` of them ((k' + 3) M at default
    settings on a model above 256 MiB / (k' + 3)); plus the gradient graphs.
    """
    H = operator(op, curvature, **legacy)
    if basis not in ("auto", "memory", "disk"):
        raise UserError(f"basis must be 'auto', 'memory' or 'disk', got {basis!r}")
    if tol is None:
        tol = _default_tol(H)
    n_want = k * (2 if which == "both" else 1)
    whole = max(n_want + 3, min(max_steps, H.dim) + 2)
    rows = max_basis if max_basis is not None else \
        _agreed(H, min(vectors_allowed(H.vector_bytes, n_want + 3, memory), whole))
    if basis == "auto":
        basis = "memory" if max_basis is not None or rows >= whole or \
            spill_room() < min(max_steps, 2 * n_want + SPILL_STEPS) * H.vector_bytes else "disk"
        basis = "disk" if _agreed(H, int(basis == "disk")) else "memory"
    if basis == "disk":
        rows = n_want + 2
    _plan(H, f"eigenvalues(k={k}, which='{which}')", rows, memory)
    if v0 is not None:
        v0 = H.restrict(torch.as_tensor(v0).to(H.device, H.vector_dtype))
    bar, tick = _bar(progress, None)  # the number of steps is decided by convergence
    try:
        if basis == "disk":
            r = lanczos_eigs_spilled(H.counting(), k=k, which=which, tol=tol, max_steps=max_steps, seed=seed,
                                     residuals=residuals, progress=tick, v0=v0)
        else:
            r = lanczos_eigs(H.counting(), k=k, which=which, tol=tol, max_steps=max_steps, seed=seed,
                             residuals=residuals, progress=tick, max_basis=rows if rows < whole else None, v0=v0)
    finally:
        if bar is not None:
            bar.close()
    r.vectors = H.embed(r.vectors)
    if not r.converged:
        warnings.warn(f"Lanczos stopped at max_steps={max_steps} before reaching tol={tol:g}; "
                      f"residuals are {np.array2string(r.residuals, precision=2)}", stacklevel=2)
    return r


def trace(
    op,
    method: str = "hutch++",
    matvecs: int = 99,
    seed: int = 0,
    per_layer: bool = True,
    progress: bool = False,
    curvature: str = "hessian",
    memory=None,
    max_sketch: int | None = None,
    **legacy,
) -> TraceResult:
    """The trace of a curvature operator (see `eigenvalues` for `op`, `curvature` and `memory`)
    with a standard error, by Hutch++ (default) or plain Hutchinson.

    `matvecs` operator-vector products in all. With ``per_layer``, ``result.blocks`` maps each
    module (e.g. '0' for '0.weight' and '0.bias') to (trace, stderr) of its diagonal block,
    from the same products. `max_sketch` bounds Hutch++'s sketch (default 4 vectors, or as
    many as fit in 256 MiB, at most matvecs // 3): memory is that plus 2 vectors (so 6 M at
    default settings on a large model), plus the gradient graphs.
    """
    H = operator(op, curvature, **legacy)
    blocks = H.blocks if per_layer else None
    if method in ("hutch++", "hutchpp"):
        s = max_sketch if max_sketch is not None else \
            _agreed(H, min(matvecs // 3, vectors_allowed(H.vector_bytes, 6, memory) - 2))
        _plan(H, f"trace(hutch++, {matvecs} products)", s + 2, memory)
    elif method == "hutchinson":
        _plan(H, "trace(hutchinson)", 2, memory)
    else:
        raise UserError(f"trace method must be 'hutch++' or 'hutchinson', got {method!r}")
    bar, tick = _bar(progress, matvecs)
    try:
        if method in ("hutch++", "hutchpp"):
            r = hutchpp(H.counting(), matvecs=matvecs, seed=seed, blocks=blocks, progress=tick, max_sketch=s)
        else:
            r = hutchinson(H.counting(), samples=matvecs, seed=seed, blocks=blocks, progress=tick)
    finally:
        if bar is not None:
            bar.close()
    return r


@register
@dataclass
class Density(Result):
    """Hessian spectral density: grid [G] (eigenvalue axis), density [G] (integrates to 1),
    the SLQ quadrature (nodes/weights [v, m]), broadening `sigma`, products used, and
    the SLQ trace estimate with its standard error."""

    grid: np.ndarray
    density: np.ndarray
    sigma: float
    slq: SLQResult

    @property
    def matvecs(self) -> int:
        return self.slq.matvecs

    NAME: ClassVar[str] = "density"
    GRIDDED: ClassVar[bool] = True

    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        return {f"{prefix}grid": self.grid, f"{prefix}density": self.density, f"{prefix}nodes": self.slq.nodes,
                f"{prefix}weights": self.slq.weights}

    def metadata(self) -> dict:
        return {"sigma": self.sigma, "matvecs": self.matvecs, "n": self.slq.n, "slq_trace": self.slq.trace,
                "slq_trace_stderr": self.slq.trace_stderr}

    @classmethod
    def from_arrays(cls, arrays, metadata=None, prefix: str = "") -> "Density":
        m = metadata or {}
        nan = float("nan")
        slq_ = SLQResult(np.asarray(arrays[f"{prefix}nodes"]), np.asarray(arrays[f"{prefix}weights"]),
                         m.get("matvecs", 0), m.get("n", 0), json_float(m.get("slq_trace", nan)),
                         json_float(m.get("slq_trace_stderr", nan)))
        return cls(np.asarray(arrays[f"{prefix}grid"]), np.asarray(arrays[f"{prefix}density"]),
                   json_float(m.get("sigma", nan)), slq_)

    def summary(self) -> dict:
        return {"sigma": self.sigma, "matvecs": self.matvecs, "slq_trace": self.slq.trace,
                "slq_trace_stderr": self.slq.trace_stderr, "support": [float(self.grid[0]), float(self.grid[-1])]}

    def plots(self, prefix: str = "") -> list:
        return [line("Hessian spectral density (SLQ)", f"{prefix}grid", [Series(f"{prefix}density", "density")],
                     xlabel="eigenvalue λ", ylabel="density", log_y=True)]

    def to_xarray(self):
        """xarray.Dataset: the density over the eigenvalue axis, and the SLQ nodes and weights."""
        xr = xarray()
        return xr.Dataset({"density": (("eigenvalue",), self.density),
                           "nodes": (("probe", "node"), self.slq.nodes), "weights": (("probe", "node"), self.slq.weights)},
                          coords={"eigenvalue": self.grid}, attrs={"sigma": self.sigma, "matvecs": self.matvecs})


def spectral_density(
    op,
    probes: int = 4,
    steps: int = 80,
    seed: int = 0,
    sigma: float | None = None,
    sigma_rel: float = 0.01,
    points: int = 1000,
    progress: bool = False,
    curvature: str = "hessian",
    memory=None,
    max_basis: int | None = None,
    **legacy,
) -> Density:
    """Spectral density of a curvature operator (see `eigenvalues` for `op`, `curvature` and
    `memory`) by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    `probes` Rademacher vectors × `steps` Lanczos steps products. The quadrature is
    broadened by Gaussians of width `sigma` (default ``sigma_rel`` × spectral range) on
    `points` grid points. `max_basis` bounds the Lanczos vectors kept (default 5 and the start
    vector: 6 M on a large model; or as many as fit in 256 MiB: full reorthogonalisation for small models; beyond it each vector is
    orthogonalised against the last ones only, see `lossprobe.curvature.slq`).
    """
    H = operator(op, curvature, **legacy)
    rows = max_basis if max_basis is not None else _agreed(H, min(vectors_allowed(H.vector_bytes, 5, memory), steps + 2))
    _plan(H, f"spectral_density({probes} probes × {steps} steps)", rows + 1, memory)
    bar, tick = _bar(progress, probes * min(steps, H.dim))
    try:
        q = slq(H.counting(), probes=probes, steps=steps, seed=seed, progress=tick,
                max_basis=rows if rows < min(steps, H.dim) + 2 else None)
    finally:
        if bar is not None:
            bar.close()
    lo, hi = float(np.nanmin(q.nodes)), float(np.nanmax(q.nodes))
    s = sigma if sigma is not None else sigma_rel * max(hi - lo, 1e-12)
    grid, dens = gaussian_density(q.nodes, q.weights, sigma=s, points=points)
    return Density(grid=grid, density=dens, sigma=s, slq=q)
