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

import numpy as np
import torch

from .curvature import (
    CountingOperator,
    EigResult,
    SLQResult,
    TraceResult,
    gaussian_density,
    hutchinson,
    hutchpp,
    lanczos_eigs,
    slq,
)
from .errors import UserError
from .objective import Objective, second_order, warn_if_stochastic
from .space import KINDS

METHODS = ("auto", "reverse", "forward")
DEFAULT_METHOD = "reverse"  # measured faster on CPU by benchmarks/hessian.py (see docs/curvature.md)

__all__ = [
    "HessianOperator",
    "as_linear_operator",
    "eigenvalues",
    "trace",
    "spectral_density",
    "hvp",
    "Density",
]


class HessianOperator:
    """H(θ) of the objective's mean loss, restricted to the chosen parameters.

    Acts on float64 vectors of length ``n`` (the number of selected parameters) and
    returns float64; products are computed in the model's dtype. ``calls`` counts them.

    Args:
        objective: the `Objective` (its model, loss, data and mode).
        theta: the point [P]; the objective's own parameters by default.
        params: None (all parameters with ``requires_grad``), a list of parameter
            kinds ('weight', 'bias', 'norm'), parameter names or module-name prefixes,
            or a boolean mask [P].
        method: 'auto', 'reverse' (double backward) or 'forward' (forward-over-reverse).
        cache_graph: keep the gradient's graph and reuse it for every product (only the
            second backward pass is repeated). 'auto' caches when the data is one batch
            (memory: one batch's activations); True caches every batch's graph.
    """

    def __init__(self, objective: Objective, theta: torch.Tensor | None = None, params=None, method: str = "auto",
                 cache_graph: bool | str = "auto"):
        if not isinstance(objective, Objective):
            raise TypeError(f"expected a lossprobe Objective, got {type(objective).__name__}")
        if method not in METHODS:
            raise UserError(f"method must be one of {list(METHODS)}, got {method!r}")
        self.objective = objective
        space = objective.space
        self.theta = (objective.theta0 if theta is None else theta).detach().to(objective.device, space.dtype)
        space.check_vector(self.theta, "theta")
        self.method = DEFAULT_METHOD if method == "auto" else method
        self.mask = select_params(objective, params)
        self.index = torch.nonzero(self.mask).squeeze(1).to(objective.device)
        self.full = bool(self.mask.all())
        self.n = int(self.mask.sum())
        self.device = objective.device
        self.calls = 0
        if cache_graph not in ("auto", True, False):
            raise UserError(f"cache_graph must be 'auto', True or False, got {cache_graph!r}")
        self.cache_graph = self.method == "reverse" and (
            cache_graph is True or (cache_graph == "auto" and objective.n_batches == 1))
        self._graphs: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._n = 0
        with objective.mode():
            if objective.model.training:
                warn_if_stochastic(objective.model)
        # blocks (module name, slice of the selected coordinates), in layout order
        self.blocks: list[tuple[str, slice]] = []
        pos, groups = 0, {}
        for e in space.entries:
            k = int(self.mask[e.slice].sum())
            if not k:
                continue
            module = e.name.rpartition(".")[0] or e.name
            if module in groups and groups[module].stop == pos:
                groups[module] = slice(groups[module].start, pos + k)
            else:
                groups[module if module not in groups else f"{e.name}"] = slice(pos, pos + k)
            pos += k
        self.blocks = list(groups.items())

    # --- vectors ---------------------------------------------------------------------
    def embed(self, v: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Selected-coordinate vector(s) [.., n] -> full parameter vector(s) [.., P] (zeros elsewhere)."""
        v = v.to(self.device)
        dtype = dtype or v.dtype
        if self.full:
            return v.to(dtype)
        out = torch.zeros(*v.shape[:-1], self.objective.space.numel, dtype=dtype, device=self.device)
        out[..., self.index] = v.to(dtype)
        return out

    def restrict(self, full: torch.Tensor) -> torch.Tensor:
        return full if self.full else full[..., self.index]

    # --- products --------------------------------------------------------------------
    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return self.matvec(v)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for v [n] (any float dtype); returns float64 [n]."""
        if v.shape != (self.n,):
            raise UserError(f"vector has shape {tuple(v.shape)}, expected ({self.n},)")
        self.calls += 1
        full = self.embed(v, self.objective.space.dtype)
        if self.cache_graph:
            hv = self._cached_hvp(full)
        else:
            hv = hvp(self.objective, full, self.theta, method=self.method, check=False)
        return self.restrict(hv).to(torch.float64)

    def _cached_hvp(self, v: torch.Tensor) -> torch.Tensor:
        obj = self.objective
        if self._graphs is None:
            self._graphs, self._n = [], 0.0
            with obj.mode(), second_order():
                for batch in obj.batches():
                    th = self.theta.clone().requires_grad_(True)
                    t = obj.terms(th, batch)
                    g = torch.autograd.grad(t.loss, th, create_graph=True)[0] if t.loss.requires_grad else None
                    self._graphs.append((th, g))
                    self._n += float(t.count)
            if self._n == 0:
                raise UserError("the data yielded no samples")
        out = torch.zeros_like(self.theta)
        with second_order():
            for th, g in self._graphs:
                if g is not None and g.requires_grad:
                    (hv,) = torch.autograd.grad(g, th, grad_outputs=v, retain_graph=True, allow_unused=True)
                    if hv is not None:
                        out += hv
        return out / self._n

    def release(self) -> None:
        """Free the cached gradient graph (it is rebuilt on the next product)."""
        self._graphs = None

    def counting(self) -> CountingOperator:
        return CountingOperator(self.matvec, self.n, self.device)


def select_params(objective: Objective, params=None) -> torch.Tensor:
    """Boolean mask [P] of the coordinates selected by `params` (see `HessianOperator`)."""
    space = objective.space
    live = dict(objective.model.named_parameters())
    if params is None:
        mask = torch.zeros(space.numel, dtype=torch.bool)
        for e in space.entries:
            if e.kind != "buffer" and e.name in live and live[e.name].requires_grad:
                mask[e.slice] = True
    elif isinstance(params, torch.Tensor):
        if params.dtype != torch.bool or params.shape != (space.numel,):
            raise UserError(f"a parameter mask must be a bool tensor of shape ({space.numel},)")
        mask = params.cpu().clone()
    else:
        if isinstance(params, str):
            params = [params]
        mask = torch.zeros(space.numel, dtype=torch.bool)
        for p in params:
            if p in KINDS:
                mask |= space.mask([p])
                continue
            hit = [e for e in space.entries if e.name == p or e.name.startswith(p + ".")]
            if not hit:
                raise UserError(f"no parameter named '{p}' (or under module '{p}'); parameters: "
                                f"{', '.join(space.names[:8])}{' ...' if len(space.names) > 8 else ''}")
            for e in hit:
                mask[e.slice] = True
    if not mask.any():
        raise UserError("no parameters selected for the Hessian (all frozen, or the selection is empty)")
    return mask


def hvp(objective: Objective, v: torch.Tensor, theta: torch.Tensor | None = None, method: str = "auto",
        check: bool = True) -> torch.Tensor:
    """Exact Hessian-vector product H(θ) v [P] of the objective's mean loss over all its data.

    Sums per batch (sample-weighted) and divides by the sample count. Parameters the loss
    does not use give zeros. `method`: 'reverse' (double backward), 'forward'
    (``torch.func`` jvp of grad) or 'auto'.
    """
    space = objective.space
    theta = (objective.theta0 if theta is None else theta).detach().to(objective.device, space.dtype)
    v = v.detach().to(objective.device, space.dtype)
    if check:
        space.check_vector(theta, "theta")
        space.check_vector(v, "v")
    method = DEFAULT_METHOD if method == "auto" else method
    out, n = torch.zeros_like(theta), 0.0
    with objective.mode(), second_order():
        if method == "reverse":
            for batch in objective.batches():
                th = theta.clone().requires_grad_(True)
                t = objective.terms(th, batch)
                if t.loss.requires_grad:
                    (g,) = torch.autograd.grad(t.loss, th, create_graph=True)
                    if g.requires_grad:  # False when the loss is linear in θ: H = 0
                        (hv,) = torch.autograd.grad(g @ v, th, allow_unused=True)
                        if hv is not None:
                            out += hv
                n += float(t.count)
        elif method == "forward":
            from torch.func import grad, jvp

            for batch in objective.batches():
                counts = []

                def f(th, batch=batch):
                    t = objective.terms(th, batch)
                    counts.append(t.count)
                    return t.loss

                _, hv = jvp(grad(f), (theta,), (v,))
                out += hv
                n += float(counts[0])
        else:
            raise UserError(f"method must be one of {list(METHODS)}, got {method!r}")
    if n == 0:
        raise UserError("the data yielded no samples")
    return out / n


def _operator(objective: Objective, theta, params, method: str, curvature: str | None, options: dict | None):
    """The Hessian, or with `curvature` another operator of `lossprobe.operators` (GGN, Fisher,
    empirical Fisher, K-FAC), which the functions of this module accept alike."""
    if curvature in (None, "hessian") and not options:
        return HessianOperator(objective, theta, params, method)
    from .operators import curvature_operator

    return curvature_operator(objective, curvature or "hessian", theta=theta, params=params, method=method,
                              **(options or {}))


def as_linear_operator(objective: Objective, theta: torch.Tensor | None = None, params=None, method: str = "auto",
                       curvature: str = "hessian", options: dict | None = None):
    """H(θ) as a `scipy.sparse.linalg.LinearOperator` (float64, shape (n, n), symmetric).

    Works with scipy's solvers: ``eigsh(as_linear_operator(obj), k=5, which='LA')``.
    The wrapped `HessianOperator` is available as ``.hessian`` (``.hessian.calls`` counts products).
    ``curvature='ggn'|'fisher'|'efisher'|'kfac'`` (with `options`, see `lossprobe.operators`)
    wraps that operator instead (also as ``.operator``).
    """
    from scipy.sparse.linalg import LinearOperator

    H = _operator(objective, theta, params, method, curvature, options)

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
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit=unit, dynamic_ncols=True, leave=False)
    return bar, bar.update


def eigenvalues(
    objective: Objective,
    params=None,
    k: int = 1,
    which: str = "largest",
    theta: torch.Tensor | None = None,
    tol: float | None = None,
    max_steps: int = 300,
    seed: int = 0,
    residuals: str = "exact",
    method: str = "auto",
    progress: bool = False,
    curvature: str = "hessian",
    options: dict | None = None,
) -> EigResult:
    """The k extreme Hessian eigenvalues by Lanczos (full reorthogonalisation, float64).

    Args:
        which: 'largest' (algebraically, largest first), 'smallest' (most negative first)
            or 'both' (k largest then k smallest).
        tol: stop when every wanted Ritz pair has ``||Hy − θy|| ≤ tol · max|θ|``; defaults
            to 1e-5 for float32 models (the products' own rounding) and 1e-9 for float64.
        residuals: 'exact' measures each ``||Hy − θy||`` with one more product;
            'estimate' reports the Lanczos estimate |β_m s_m| (no extra products).
    Returns:
        `EigResult` whose ``vectors`` [k, P] are unit vectors in the full parameter space
        (zeros outside `params`), ready to use as surface directions.

    ``curvature='ggn'|'fisher'|'efisher'|'kfac'`` takes the eigenpairs of that operator
    instead (`lossprobe.operators`; `options` such as ``{"mc_samples": 1, "seed": 0}``).
    """
    H = _operator(objective, theta, params, method, curvature, options)
    if tol is None:
        tol = 1e-9 if objective.space.dtype == torch.float64 else 1e-5
    bar, tick = _bar(progress, None)  # the number of steps is decided by convergence
    try:
        r = lanczos_eigs(H.counting(), k=k, which=which, tol=tol, max_steps=max_steps, seed=seed,
                         residuals=residuals, progress=tick)
    finally:
        if bar is not None:
            bar.close()
    r.vectors = H.embed(r.vectors)
    if not r.converged:
        warnings.warn(f"Lanczos stopped at max_steps={max_steps} before reaching tol={tol:g}; "
                      f"residuals are {np.array2string(r.residuals, precision=2)}", stacklevel=2)
    return r


def trace(
    objective: Objective,
    params=None,
    method: str = "hutch++",
    matvecs: int = 99,
    seed: int = 0,
    per_layer: bool = True,
    theta: torch.Tensor | None = None,
    hvp_method: str = "auto",
    progress: bool = False,
    curvature: str = "hessian",
    options: dict | None = None,
) -> TraceResult:
    """Hessian trace with a standard error, by Hutch++ (default) or plain Hutchinson.

    `matvecs` Hessian-vector products in all. With ``per_layer``, ``result.blocks``
    maps each module (e.g. '0' for '0.weight' and '0.bias') to (trace, stderr) of its
    diagonal block, from the same products. `curvature` and `options` as in `eigenvalues`.
    """
    H = _operator(objective, theta, params, hvp_method, curvature, options)
    blocks = H.blocks if per_layer else None
    bar, tick = _bar(progress, matvecs)
    try:
        if method in ("hutch++", "hutchpp"):
            r = hutchpp(H.counting(), matvecs=matvecs, seed=seed, blocks=blocks, progress=tick)
        elif method == "hutchinson":
            r = hutchinson(H.counting(), samples=matvecs, seed=seed, blocks=blocks, progress=tick)
        else:
            raise UserError(f"trace method must be 'hutch++' or 'hutchinson', got {method!r}")
    finally:
        if bar is not None:
            bar.close()
    return r


@dataclass
class Density:
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

    def to_dict(self) -> dict:
        return {"grid": self.grid.tolist(), "density": self.density.tolist(), "sigma": self.sigma,
                "matvecs": self.matvecs, "slq_trace": self.slq.trace, "slq_trace_stderr": self.slq.trace_stderr,
                "nodes": self.slq.nodes.tolist(), "weights": self.slq.weights.tolist()}


def spectral_density(
    objective: Objective,
    params=None,
    probes: int = 4,
    steps: int = 80,
    seed: int = 0,
    sigma: float | None = None,
    sigma_rel: float = 0.01,
    points: int = 1000,
    theta: torch.Tensor | None = None,
    method: str = "auto",
    progress: bool = False,
    curvature: str = "hessian",
    options: dict | None = None,
) -> Density:
    """Spectral density of the Hessian by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    `probes` Rademacher vectors × `steps` Lanczos steps products. The quadrature is
    broadened by Gaussians of width `sigma` (default ``sigma_rel`` × spectral range) on
    `points` grid points. `curvature` and `options` as in `eigenvalues`.
    """
    H = _operator(objective, theta, params, method, curvature, options)
    bar, tick = _bar(progress, probes * min(steps, H.n))
    try:
        q = slq(H.counting(), probes=probes, steps=steps, seed=seed, progress=tick)
    finally:
        if bar is not None:
            bar.close()
    lo, hi = float(np.nanmin(q.nodes)), float(np.nanmax(q.nodes))
    s = sigma if sigma is not None else sigma_rel * max(hi - lo, 1e-12)
    grid, dens = gaussian_density(q.nodes, q.weights, sigma=s, points=points)
    return Density(grid=grid, density=dens, sigma=s, slq=q)
