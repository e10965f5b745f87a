"""Analytic two-dimensional landscapes, optimisers on them, and their critical points.

The test functions people draw optimiser paths on, as torch functions of a point
``xy [..., 2]`` (float64) that return values ``[...]``, with their known minima:

=============  ================================================  =====================
name           f(x, y)                                           known minima
=============  ================================================  =====================
sincos         sin(4x)·cos(4y) + 2(x² + y²)                      (−0.3131, 0) global
quadratic      ½(x² + 25y²)  (an ill-conditioned valley)         (0, 0)
rosenbrock     (1 − x)² + 100(y − x²)²                           (1, 1)
himmelblau     (x² + y − 11)² + (x + y² − 7)²                    four, all with f = 0
rastrigin      20 + Σ (t² − 10 cos 2πt)                          (0, 0)
beale          (1.5 − x + xy)² + (2.25 − x + xy²)² + (2.625 − x + xy³)²   (3, 0.5)
saddle         x² − y²                                           none (saddle at 0)
monkey         x³ − 3xy²  (the monkey saddle)                    none (degenerate saddle)
=============  ================================================  =====================

Optimisers are the `torch.optim` implementations (GD and SGD-with-noise are
`torch.optim.SGD`, momentum and Nesterov are `SGD(momentum=...)`, RMSprop and Adam are
theirs) driving one parameter tensor of shape [2]; simulated annealing and a parallel
(vectorised, coarse-to-fine) grid search are the gradient-free baselines.

Critical points are found by Newton's method on the gradient from a grid of starts and
classified by the eigenvalues of the exact Hessian (`torch.func.hessian`, float64);
where the Hessian is singular the point is classified by the sign of f − f(p) on a
small ring around it (the monkey saddle needs this).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from lossprobe.curvature.critical import CriticalPoint
from lossprobe.errors import UserError

DTYPE = torch.float64

# --- the functions ------------------------------------------------------------------


def _xy(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return p[..., 0], p[..., 1]


def _sincos(p):
    x, y = _xy(p)
    return torch.sin(4 * x) * torch.cos(4 * y) + 2 * (x**2 + y**2)


def _quadratic(p):
    x, y = _xy(p)
    return 0.5 * (x**2 + 25 * y**2)


def _rosenbrock(p):
    x, y = _xy(p)
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def _himmelblau(p):
    x, y = _xy(p)
    return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2


def _rastrigin(p):
    x, y = _xy(p)
    return 20 + x**2 - 10 * torch.cos(2 * math.pi * x) + y**2 - 10 * torch.cos(2 * math.pi * y)


def _beale(p):
    x, y = _xy(p)
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def _saddle(p):
    x, y = _xy(p)
    return x**2 - y**2


def _monkey(p):
    x, y = _xy(p)
    return x**3 - 3 * x * y**2


@dataclass(frozen=True)
class ToyFunction:
    """A 2-D test function with what is known about it.

    Attributes:
        name: registry key.
        formula: the function as text (for titles and reports).
        fn: torch function of points [..., 2] (float64) returning values [...].
        minima: known local minima (x, y); the first is a global one.
        min_value: f at the global minimum (None if unbounded below).
        bounds: ((x_min, x_max), (y_min, y_max)) for plots and searches.
        start: default starting point for the optimisers.
        lr: default learning rate of plain gradient descent on it.
        adaptive_lr: default learning rate of RMSprop and Adam.
        log_contours: draw contours of log(1 + f − f_min) (steep functions).
        threshold: the loss below which an optimiser counts as having arrived.
        known_saddles: known saddle points (for tests and plots).
    """

    name: str
    formula: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    minima: tuple[tuple[float, float], ...]
    min_value: float | None
    bounds: tuple[tuple[float, float], tuple[float, float]]
    start: tuple[float, float]
    lr: float
    adaptive_lr: float
    log_contours: bool = False
    threshold: float | None = None
    known_saddles: tuple[tuple[float, float], ...] = field(default=())

    def __call__(self, xy) -> torch.Tensor:
        xy = torch.as_tensor(xy, dtype=DTYPE)
        if xy.shape[-1] != 2:
            raise UserError(f"{self.name} takes points of shape [..., 2], got {tuple(xy.shape)}")
        return self.fn(xy)

    def value(self, xy) -> float:
        return float(self(xy))

    def grad(self, xy) -> torch.Tensor:
        """Exact gradient [2] at one point (autograd, float64)."""
        p = torch.as_tensor(xy, dtype=DTYPE)
        return torch.func.grad(self.fn)(p)

    def hessian(self, xy) -> torch.Tensor:
        """Exact Hessian [2, 2] at one point (autograd, float64)."""
        p = torch.as_tensor(xy, dtype=DTYPE)
        return torch.func.hessian(self.fn)(p)

    def grid(self, n: int = 201, bounds=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Values on an n×n grid: xs [n], ys [n], Z [n(y), n(x)] (rows are y, as contour wants)."""
        (x0, x1), (y0, y1) = bounds or self.bounds
        xs, ys = np.linspace(x0, x1, n), np.linspace(y0, y1, n)
        X, Y = np.meshgrid(xs, ys)
        Z = self(torch.from_numpy(np.stack([X, Y], -1))).numpy()
        return xs, ys, Z

    @property
    def global_minimum(self) -> tuple[float, float] | None:
        return self.minima[0] if self.minima else None

    def distance_to_minimum(self, xy) -> float | None:
        """Euclidean distance from `xy` to the nearest known minimum (None if there is none)."""
        if not self.minima:
            return None
        p = np.asarray(xy, dtype=float)
        return float(min(np.linalg.norm(p - np.asarray(m)) for m in self.minima))


TOYS: dict[str, ToyFunction] = {
    t.name: t
    for t in [
        ToyFunction(
            "sincos", "sin(4x)·cos(4y) + 2(x² + y²)", _sincos,
            minima=((-0.31308830850064717, 0.0), (0.2928689541448699, 0.6059572626455171),
                    (0.2928689541448699, -0.6059572626455171), (0.898826216790387, 0.0)),
            min_value=-0.7536754405363791, bounds=((-1.5, 1.5), (-1.5, 1.5)), start=(1.2, 1.1),
            lr=0.02, adaptive_lr=0.05, threshold=-0.75,
        ),
        ToyFunction(
            "quadratic", "½(x² + 25y²)", _quadratic, minima=((0.0, 0.0),), min_value=0.0,
            bounds=((-3.0, 3.0), (-1.5, 1.5)), start=(-2.8, 1.0), lr=0.075, adaptive_lr=0.1, threshold=1e-3,
        ),
        ToyFunction(
            "rosenbrock", "(1 − x)² + 100(y − x²)²", _rosenbrock, minima=((1.0, 1.0),), min_value=0.0,
            bounds=((-2.0, 2.0), (-1.0, 3.0)), start=(-1.5, 2.0), lr=1e-3, adaptive_lr=0.02,
            log_contours=True, threshold=1e-3,
        ),
        ToyFunction(
            "himmelblau", "(x² + y − 11)² + (x + y² − 7)²", _himmelblau,
            minima=((3.0, 2.0), (-2.805118086952745, 3.131312518250573),
                    (-3.779310253377747, -3.2831859912861696), (3.5844283403304917, -1.8481265269644034)),
            min_value=0.0, bounds=((-5.0, 5.0), (-5.0, 5.0)), start=(-0.5, -0.2), lr=5e-3, adaptive_lr=0.05,
            log_contours=True, threshold=1e-3,
        ),
        ToyFunction(
            "rastrigin", "20 + x² − 10cos(2πx) + y² − 10cos(2πy)", _rastrigin, minima=((0.0, 0.0),),
            min_value=0.0, bounds=((-5.12, 5.12), (-5.12, 5.12)), start=(3.2, 2.3), lr=2e-3, adaptive_lr=0.05,
            threshold=1e-2,
        ),
        ToyFunction(
            "beale", "(1.5 − x + xy)² + (2.25 − x + xy²)² + (2.625 − x + xy³)²", _beale, minima=((3.0, 0.5),),
            min_value=0.0, bounds=((-4.5, 4.5), (-4.5, 4.5)), start=(1.0, 1.5), lr=1e-3, adaptive_lr=0.05,
            log_contours=True, threshold=1e-3,
        ),
        ToyFunction(
            "saddle", "x² − y²", _saddle, minima=(), min_value=None, bounds=((-2.0, 2.0), (-2.0, 2.0)),
            start=(1.8, 1e-3), lr=0.05, adaptive_lr=0.05, threshold=None, known_saddles=((0.0, 0.0),),
        ),
        ToyFunction(
            "monkey", "x³ − 3xy²", _monkey, minima=(), min_value=None, bounds=((-1.5, 1.5), (-1.5, 1.5)),
            start=(-0.2, 1.2), lr=0.02, adaptive_lr=0.05, threshold=None, known_saddles=((0.0, 0.0),),
        ),
    ]
}


def get_toy(name: str) -> ToyFunction:
    """The toy function called `name` (see `TOYS`); a clear error names the choices."""
    if isinstance(name, ToyFunction):
        return name
    key = str(name).removeprefix("toy:")
    if key not in TOYS:
        raise UserError(f"unknown toy function '{key}'; choose from {', '.join(TOYS)}")
    return TOYS[key]


# --- critical points -------------------------------------------------------------------


def classify(toy: ToyFunction | Callable, point, tol: float = 1e-6, ring: float = 1e-3) -> CriticalPoint:
    """Classify a critical point by the exact Hessian's eigenvalues.

    Both eigenvalues > tol·scale: minimum; both < −tol·scale: maximum; opposite signs:
    saddle. If an eigenvalue is within tol·scale of zero (scale = max(1, |λ|max)) the
    Hessian cannot decide, and the point is classified by f − f(p) on a ring of radius
    `ring` (64 points): all above → minimum, all below → maximum, both → saddle.
    """
    fn = toy.fn if isinstance(toy, ToyFunction) else toy
    p = torch.as_tensor(point, dtype=DTYPE)
    H = torch.func.hessian(fn)(p)
    g = torch.func.grad(fn)(p)
    ev = torch.linalg.eigvalsh(0.5 * (H + H.T))
    scale = max(1.0, float(ev.abs().max()))
    lo, hi = float(ev[0]), float(ev[1])
    degenerate = min(abs(lo), abs(hi)) <= tol * scale
    if not degenerate:
        kind = "minimum" if lo > 0 else "maximum" if hi < 0 else "saddle"
    else:
        t = torch.linspace(0, 2 * math.pi, 65, dtype=DTYPE)[:-1]
        ringpts = p + ring * torch.stack([torch.cos(t), torch.sin(t)], 1)
        diff = fn(ringpts) - fn(p)
        eps = 1e-14 * max(1.0, abs(float(fn(p))))
        above, below = bool((diff > eps).any()), bool((diff < -eps).any())
        kind = "saddle" if above and below else "minimum" if above else "maximum" if below else "flat"
    return CriticalPoint((float(p[0]), float(p[1])), float(fn(p)), (lo, hi), kind, degenerate,
                         float(g.norm()))


def find_critical_points(toy: ToyFunction, n_starts: int = 15, iters: int = 100, grad_tol: float = 1e-8,
                         merge_tol: float = 1e-4, bounds=None) -> list[CriticalPoint]:
    """Critical points of `toy` inside its bounds: Newton on ∇f = 0 from an n×n grid of starts.

    All starts are iterated together (vmap of the exact gradient and Hessian). A step
    solves H δ = −g by least squares, so singular Hessians (the monkey saddle) still
    converge; steps are capped at a tenth of the domain's width to keep Newton local.
    Points are kept when |∇f| < grad_tol·max(1, |f|), merged within `merge_tol`, and
    classified with `classify`. Sorted by value.
    """
    (x0, x1), (y0, y1) = bounds or toy.bounds
    xs, ys = torch.linspace(x0, x1, n_starts, dtype=DTYPE), torch.linspace(y0, y1, n_starts, dtype=DTYPE)
    # A tiny shift keeps starts off symmetry lines where Newton may stall on a ridge.
    P = torch.cartesian_prod(xs, ys) + 1e-7
    grad = torch.vmap(torch.func.grad(toy.fn))
    hess = torch.vmap(torch.func.hessian(toy.fn))
    cap = 0.1 * max(x1 - x0, y1 - y0)
    for _ in range(iters):
        g, H = grad(P), hess(P)
        step = torch.linalg.lstsq(H, -g[..., None], rcond=None).solution[..., 0]
        step = torch.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0)
        norm = step.norm(dim=-1, keepdim=True)
        step = torch.where(norm > cap, step * cap / norm, step)
        P = P + step
        if float(step.abs().max()) < 1e-15:  # every start has settled
            break
    g = grad(P)
    vals = toy.fn(P)
    inside = (P[:, 0] >= x0) & (P[:, 0] <= x1) & (P[:, 1] >= y0) & (P[:, 1] <= y1)
    ok = inside & torch.isfinite(g).all(1) & (g.norm(dim=1) < grad_tol * vals.abs().clamp_min(1.0))
    found: list[torch.Tensor] = []
    for p in P[ok]:
        if all(float((p - q).norm()) > merge_tol for q in found):
            found.append(p)
    out = [classify(toy, p) for p in found]
    return sorted(out, key=lambda c: c.value)


# --- optimisers ------------------------------------------------------------------------

GRADIENT_OPTIMIZERS = ("gd", "sgd", "momentum", "nesterov", "rmsprop", "adam")
FREE_OPTIMIZERS = ("annealing", "grid")
OPTIMIZERS = GRADIENT_OPTIMIZERS + FREE_OPTIMIZERS

OPTIMIZER_LABELS = {
    "gd": "gradient descent",
    "sgd": "SGD (gradient noise)",
    "momentum": "momentum 0.9",
    "nesterov": "Nesterov 0.9",
    "rmsprop": "RMSprop",
    "adam": "Adam",
    "annealing": "simulated annealing",
    "grid": "grid search",
}


@dataclass
class ToyRun:
    """One optimiser's path on a toy function.

    points [T+1, 2] and values [T+1] include the start (row 0); for the grid search a
    row is the best point after each refinement round. `evaluations` counts function (or
    gradient) evaluations, the fair cost across gradient-based and gradient-free methods.
    """

    optimizer: str
    points: np.ndarray
    values: np.ndarray
    lr: float | None
    evaluations: int
    diverged: bool = False
    left_domain: bool = False  # stopped after leaving the bounds widened by half their width

    @property
    def final_value(self) -> float:
        return float(self.values[-1])

    def steps_to_threshold(self, threshold: float | None) -> int | None:
        return steps_to_threshold(self.values, threshold)


def steps_to_threshold(values: Sequence[float], threshold: float | None, steps: Sequence[int] | None = None) -> int | None:
    """First step (index into `values`, or the matching entry of `steps`) with value < threshold; None if never."""
    if threshold is None:
        return None
    v = np.asarray(values, dtype=float)
    hit = np.nonzero(v < threshold)[0]
    if not hit.size:
        return None
    i = int(hit[0])
    return int(steps[i]) if steps is not None else i


def make_torch_optimizer(name: str, params, lr: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    """The torch.optim optimiser behind each gradient-based name."""
    if name in ("gd", "sgd"):
        return torch.optim.SGD(params, lr=lr)
    if name in ("momentum", "nesterov"):
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=name == "nesterov")
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise UserError(f"unknown optimizer '{name}'; choose from {', '.join(OPTIMIZERS)}")


def default_lr(toy: ToyFunction, name: str) -> float:
    """A learning rate that is stable for `name` on `toy`: GD's `toy.lr`, 0.3× that for the
    momentum methods, `toy.adaptive_lr` for RMSprop and Adam."""
    if name in ("rmsprop", "adam"):
        return toy.adaptive_lr
    if name in ("momentum", "nesterov"):
        # heavy ball with β = 0.9 takes steps up to 1/(1 − β) = 10× larger: scale lr down
        # so that it is stable where GD is, while still showing the overshoot
        return toy.lr * 0.3
    return toy.lr


def run_optimizer(
    toy: ToyFunction | str,
    name: str,
    start: Sequence[float] | None = None,
    steps: int = 200,
    lr: float | None = None,
    seed: int = 0,
    noise: float = 1.0,
    momentum: float = 0.9,
    temperature: float | None = None,
    grid_points: int = 21,
) -> ToyRun:
    """Run optimiser `name` on `toy` for `steps` steps from `start` and record its path.

    Args:
        name: gd, sgd (gradient plus N(0, noise²) noise per coordinate, seeded),
            momentum, nesterov, rmsprop, adam, annealing, grid.
        lr: learning rate (default `default_lr`); for annealing it is the proposal step
            as a fraction of the domain width (default 0.05).
        temperature: annealing start temperature (default: the spread of f over the
            domain / 10); it decays geometrically to 1e-4 of itself.
        grid_points: points per axis per round of the grid search; it runs
            max(3, steps // grid_points²) rounds, each zooming 4× around the best point.
    A run that leaves the finite numbers (diverges) stops there with ``diverged=True``; one
    that leaves the bounds widened by half their width on each side (e.g. sliding off a
    saddle towards −∞) stops there with ``left_domain=True``.
    """
    toy = get_toy(toy)
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer '{name}'; choose from {', '.join(OPTIMIZERS)}")
    if steps <= 0:
        raise UserError(f"steps must be positive, got {steps}")
    start = toy.start if start is None else tuple(float(v) for v in start)
    if name == "annealing":
        return _annealing(toy, start, steps, lr if lr is not None else 0.05, seed, temperature)
    if name == "grid":
        return _grid_search(toy, steps, grid_points)
    lr = default_lr(toy, name) if lr is None else float(lr)
    if not lr > 0:
        raise UserError(f"lr must be positive, got {lr}")
    p = torch.tensor(start, dtype=DTYPE, requires_grad=True)
    opt = make_torch_optimizer(name, [p], lr, momentum)
    gen = torch.Generator().manual_seed(seed)
    points, values = [p.detach().clone()], [float(toy.fn(p.detach()))]
    diverged = left = False
    (x0, x1), (y0, y1) = toy.bounds
    hx, hy = (x1 - x0) / 2, (y1 - y0) / 2
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        f = toy.fn(p)
        f.backward()
        if name == "sgd":
            # stochastic gradients of a 2-D function: the exact gradient plus seeded noise
            p.grad.add_(noise * torch.randn(2, generator=gen, dtype=DTYPE))
        opt.step()
        v = float(toy.fn(p.detach()))
        if not (math.isfinite(v) and torch.isfinite(p).all()):
            diverged = True
            break
        points.append(p.detach().clone())
        values.append(v)
        q = points[-1]
        if not (x0 - hx <= q[0] <= x1 + hx and y0 - hy <= q[1] <= y1 + hy):
            left = True
            break
    return ToyRun(name, torch.stack(points).numpy(), np.array(values), lr, evaluations=len(values) - 1,
                  diverged=diverged, left_domain=left)


def _annealing(toy: ToyFunction, start, steps: int, step_frac: float, seed: int, temperature: float | None) -> ToyRun:
    """Metropolis simulated annealing with Gaussian proposals and a geometric cooling schedule.

    The path recorded is the chain's current state (what the method "walks"); proposals
    outside the bounds are rejected.
    """
    (x0, x1), (y0, y1) = toy.bounds
    scale = step_frac * max(x1 - x0, y1 - y0)
    if temperature is None:
        _, _, Z = toy.grid(41)
        temperature = float(np.std(Z)) / 10 or 1.0
    gen = torch.Generator().manual_seed(seed)
    cur = torch.tensor(start, dtype=DTYPE)
    fcur = float(toy.fn(cur))
    points, values = [cur.clone()], [fcur]
    for k in range(steps):
        T = temperature * (1e-4) ** (k / max(1, steps - 1))
        prop = cur + scale * (1 - 0.9 * k / steps) * torch.randn(2, generator=gen, dtype=DTYPE)
        u = float(torch.rand((), generator=gen, dtype=DTYPE))
        if x0 <= prop[0] <= x1 and y0 <= prop[1] <= y1:
            fp = float(toy.fn(prop))
            if fp <= fcur or u < math.exp(-(fp - fcur) / T):
                cur, fcur = prop, fp
        points.append(cur.clone())
        values.append(fcur)
    return ToyRun("annealing", torch.stack(points).numpy(), np.array(values), step_frac, evaluations=steps + 1)


def _grid_search(toy: ToyFunction, steps: int, n: int) -> ToyRun:
    """Coarse-to-fine grid search: each round evaluates an n×n grid in one vectorised call
    and zooms 4× around the best point so far. Uses about `steps` evaluations in all."""
    rounds = max(3, steps // (n * n))
    (x0, x1), (y0, y1) = toy.bounds
    cx, cy, wx, wy = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    points, values = [], []
    best, fbest = None, math.inf
    for _ in range(rounds):
        xs = torch.linspace(max(x0, cx - wx), min(x1, cx + wx), n, dtype=DTYPE)
        ys = torch.linspace(max(y0, cy - wy), min(y1, cy + wy), n, dtype=DTYPE)
        P = torch.cartesian_prod(xs, ys)
        F = toy.fn(P)
        i = int(torch.argmin(F))
        if float(F[i]) < fbest:
            best, fbest = P[i].clone(), float(F[i])
        points.append(best.clone())
        values.append(fbest)
        cx, cy = float(best[0]), float(best[1])
        wx, wy = wx / 4, wy / 4
    return ToyRun("grid", torch.stack(points).numpy(), np.array(values), None, evaluations=rounds * n * n)


def run_all(toy: ToyFunction | str, optimizers: Sequence[str] = OPTIMIZERS, steps: int = 200, seed: int = 0,
            start=None, lrs: dict | None = None, noise: float = 1.0) -> dict[str, ToyRun]:
    """Run several optimisers from the same start; returns {name: ToyRun}."""
    lrs = lrs or {}
    return {o: run_optimizer(toy, o, start=start, steps=steps, lr=lrs.get(o), seed=seed, noise=noise)
            for o in optimizers}


__all__ = [
    "CriticalPoint", "FREE_OPTIMIZERS", "GRADIENT_OPTIMIZERS", "OPTIMIZERS", "OPTIMIZER_LABELS", "TOYS",
    "ToyFunction", "ToyRun", "classify", "default_lr", "find_critical_points", "get_toy",
    "make_torch_optimizer", "run_all", "run_optimizer", "steps_to_threshold",
]
