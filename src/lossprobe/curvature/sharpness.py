"""Sharpness and flatness measures of a trained network, as the generalisation literature defines them.

Worst case (adversarial weight perturbations):
* `keskar_sharpness`   Keskar et al. (2017): the largest loss rise over the box
                       |δ_i| ≤ ε(|w_i| + 1), found by projected (sign) gradient ascent,
                       reported as 100·(max L − L)/(1 + L) and as the raw rise.
* `sam_sharpness`      Foret et al. (2021) ρ-sharpness: max over ||δ||₂ ≤ ρ of L(w+δ) − L(w);
                       ``adaptive=True`` gives ASAM (Kwon et al. 2021), the ball
                       ||δ / (|w| + η)||₂ ≤ ρ. One ascent step is SAM's own approximation;
                       more steps give projected gradient ascent.
Average case (random weight perturbations, every draw seeded):
* `noise_robustness`   loss and accuracy under Gaussian weight noise whose scale is σ times
                       each filter's norm, several draws per σ, mean and standard deviation.
* `pac_bayes_sigma`    Jiang et al. (2019) "PAC-Bayes flatness": the largest σ for which the
                       expected loss (or error) rise under N(0, σ²) noise stays within a bound,
                       by bisection on log σ with fixed noise draws.
Critical points:
* `critical_point`     gradient norm plus extreme Hessian eigenvalues → minimum, maximum,
                       saddle, degenerate or not critical, with the condition number.

All functions take an `Objective` (model, loss, data; eval mode by default).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import numpy as np
import torch

from lossprobe.core.directions import random_direction
from lossprobe.core.objective import Objective
from lossprobe.curvature.critical import CriticalPoint
from lossprobe.curvature.hessian import eigenvalues
from lossprobe.curvature.operators import HessianOperator
from lossprobe.errors import UserError
from lossprobe.results.contract import Record, Result, json_float, register, xarray
from lossprobe.results.plotspec import Series, line
from lossprobe.results.store import to_jsonable

__all__ = [
    "keskar_sharpness",
    "sam_sharpness",
    "noise_robustness",
    "pac_bayes_sigma",
    "critical_point",
    "classify_critical_point",
    "filter_noise",
    "filter_normalized_direction",
    "NoiseRobustness",
    "CriticalPoint",
]


def _theta(obj: Objective, theta):
    if obj.space.shards is not None:
        raise UserError("sharpness measures and weight noise are not supported for a model sharded with fully_shard "
                        "(their noise and ascent steps are whole vectors); surfaces, interpolation and the Hessian are")
    t = (obj.theta0 if theta is None else theta).detach().to(obj.device, obj.space.dtype)
    obj.space.check_vector(t, "theta")
    return t


def _kind_mask(obj: Objective, kinds) -> torch.Tensor:
    return obj.space.mask(kinds).to(obj.device)


# --- directions ----------------------------------------------------------------------
NOISE_SCALES = ("filter", "tensor")


def filter_noise(obj: Objective, theta: torch.Tensor | None = None, seed: int = 0,
                 kinds: Sequence[str] = ("weight",), count: int = 1, per: str = "filter") -> torch.Tensor:
    """Gaussian noise [count, P] with per-filter scale: entry std = ||w_f|| / sqrt(size_f).

    A filter is one output unit (along each weight's `Entry.unit_axis`: a row of a Linear
    weight, one output channel of a Conv kernel); 1-D tensors count as one filter. With
    ``per="tensor"`` every tensor counts as one filter (entry std = the tensor's RMS value).
    Multiply by σ to get noise whose norm is about σ times each filter's norm. Entries of
    other kinds are zero.
    """
    if per not in NOISE_SCALES:
        raise UserError(f"per must be one of {list(NOISE_SCALES)}, got {per!r}")
    theta = _theta(obj, theta)
    gen = torch.Generator().manual_seed(int(seed))
    out = torch.zeros(count, obj.space.numel, dtype=obj.space.dtype)
    noise = torch.randn(count, obj.space.numel, generator=gen, dtype=torch.float64)
    th = theta.detach().cpu().double()
    for e in obj.space.entries:
        if e.kind not in kinds:
            continue
        if per == "tensor":
            w = th[e.slice]
            scale = w.norm() / math.sqrt(w.numel())
        else:
            w = e.units(th[e.slice])  # [units, size]
            scale = e.per_unit(w.norm(dim=1) / math.sqrt(w.shape[1]))
        out[:, e.slice] = (noise[:, e.slice] * scale).to(out)
    return out.to(obj.device)


def filter_normalized_direction(obj: Objective, theta: torch.Tensor | None = None, seed: int = 0,
                                kinds: Sequence[str] = ("weight",)) -> torch.Tensor:
    """Deprecated: use ``lossprobe.directions.random_direction(obj.space, seed, norm="filter",
    reference=θ)``, which this calls.

    Random direction [P] normalised filter-wise (Li et al. 2018); parameters of kinds
    other than `kinds` (by default biases and normalisation parameters) are zero."""
    warnings.warn("lossprobe.sharpness.filter_normalized_direction is deprecated; use "
                  "lossprobe.directions.random_direction(space, seed=seed, norm='filter', reference=theta)",
                  DeprecationWarning, stacklevel=2)
    ignore = [k for k in ("weight", "bias", "norm", "buffer") if k not in kinds]
    d = random_direction(obj.space, seed=seed, norm="filter", ignore=ignore, reference=_theta(obj, theta))
    return d.vector.to(obj.device, obj.space.dtype)


# --- worst case ------------------------------------------------------------------------
@register
@dataclass
class SharpnessResult(Record):
    """A worst-case sharpness measurement.

    loss: L(θ); perturbed_loss: L(θ+δ*) at the best perturbation found; rise: their
    difference; sharpness: the measure as its paper defines it; history: the loss after
    each ascent step; grad_evals: full-data gradients used; radius: ε or ρ.
    """

    measure: str
    radius: float
    loss: float
    perturbed_loss: float
    rise: float
    sharpness: float
    history: list[float] = field(default_factory=list)
    grad_evals: int = 0
    delta_norm: float = 0.0

    NAME: ClassVar[str] = "sharpness"

    def report(self) -> str:
        what = {"keskar": f"Keskar ε={self.radius:g} sharpness: **{self.sharpness:.4g}%**",
                "sam": f"SAM ρ={self.radius:g} sharpness: **{self.rise:.4g}** (loss rise)",
                "asam": f"ASAM ρ={self.radius:g} sharpness: **{self.rise:.4g}** (loss rise)"}.get(
            self.measure, f"{self.measure} sharpness: **{self.sharpness:.4g}**")
        return f"{what}; loss {self.loss:.4g} → {self.perturbed_loss:.4g} after {self.grad_evals} gradients."


def keskar_sharpness(
    objective: Objective,
    epsilon: float = 1e-3,
    steps: int = 20,
    step_size: float | None = None,
    theta: torch.Tensor | None = None,
    kinds: Sequence[str] = ("weight", "bias", "norm"),
    seed: int = 0,
) -> SharpnessResult:
    """Keskar et al. (2017) ε-sharpness: 100 · (max_{δ∈C} L(θ+δ) − L(θ)) / (1 + L(θ)),
    C the box |δ_i| ≤ ε(|θ_i| + 1) over the parameters of `kinds`.

    The maximum is sought by projected gradient ascent with sign steps (the steepest
    ascent for a box), step size ``step_size`` × box half-width (default 2.5/steps so
    that the iterate can cross the box), projected back onto the box each step, starting
    from a seeded random corner scaled by 1/2. The best point seen is kept, so the value
    is a lower bound on the true maximum that grows with `steps`.
    """
    if not epsilon > 0:
        raise UserError(f"epsilon must be positive, got {epsilon}")
    if steps < 1:
        raise UserError(f"steps must be at least 1, got {steps}")
    theta = _theta(objective, theta)
    mask = _kind_mask(objective, kinds).to(theta.dtype)
    box = epsilon * (theta.abs() + 1) * mask
    alpha = (step_size if step_size is not None else 2.5 / steps) * box
    gen = torch.Generator().manual_seed(int(seed))
    delta = (torch.randint(0, 2, theta.shape, generator=gen).to(theta) * 2 - 1) * 0.5 * box
    l0 = float(objective.loss_at(theta).loss[0])
    best, best_delta, hist, evals = l0, torch.zeros_like(theta), [], 0
    for _ in range(steps):
        loss, g = objective.loss_and_grad(theta + delta)
        evals += 1
        hist.append(loss)
        if loss > best:
            best, best_delta = loss, delta.clone()
        delta = torch.maximum(torch.minimum(delta + alpha * torch.sign(g), box), -box)
    final = float(objective.loss_at(theta + delta).loss[0])
    hist.append(final)
    if final > best:
        best, best_delta = final, delta
    return SharpnessResult("keskar", epsilon, l0, best, best - l0, 100 * (best - l0) / (1 + l0), hist, evals,
                           float(best_delta.norm()))


def sam_sharpness(
    objective: Objective,
    rho: float = 0.05,
    adaptive: bool = False,
    steps: int = 1,
    eta: float = 0.01,
    theta: torch.Tensor | None = None,
    kinds: Sequence[str] = ("weight", "bias", "norm"),
) -> SharpnessResult:
    """SAM ρ-sharpness max_{||δ||₂≤ρ} L(θ+δ) − L(θ), or ASAM's with ||δ/(|θ|+η)||₂ ≤ ρ.

    One step is SAM's first-order solution δ = ρ T²g/||Tg|| (T = I for SAM,
    T = diag(|θ|+η) for ASAM). More steps continue with normalised gradient ascent
    (step ρ/steps·2) projected back onto the ball; the best point seen is kept.
    """
    if not rho > 0:
        raise UserError(f"rho must be positive, got {rho}")
    if steps < 1:
        raise UserError(f"steps must be at least 1, got {steps}")
    theta = _theta(objective, theta)
    mask = _kind_mask(objective, kinds).to(theta.dtype)
    T = ((theta.abs() + eta) if adaptive else torch.ones_like(theta)) * mask

    def project(d):  # onto ||d / T|| <= rho, in the coordinates u = d / T
        u = torch.where(T > 0, d / T.clamp_min(1e-30), torch.zeros_like(d))
        nu = float(u.norm())
        return d if nu <= rho else d * (rho / nu)

    l0, g = objective.loss_and_grad(theta)
    evals, hist = 1, []
    tg = T * g
    ntg = float(tg.norm())
    if ntg == 0:
        return SharpnessResult("asam" if adaptive else "sam", rho, l0, l0, 0.0, 0.0, [l0], evals, 0.0)
    delta = rho * T * tg / ntg
    best, best_delta = l0, torch.zeros_like(theta)
    for i in range(steps):
        if i > 0:
            tg = T * g
            delta = project(delta + (2 * rho / steps) * T * tg / max(float(tg.norm()), 1e-30))
        loss, g = objective.loss_and_grad(theta + delta)
        evals += 1
        hist.append(loss)
        if loss > best:
            best, best_delta = loss, delta.clone()
    name = "asam" if adaptive else "sam"
    return SharpnessResult(name, rho, l0, best, best - l0, best - l0, hist, evals, float(best_delta.norm()))


# --- average case ------------------------------------------------------------------------
@register
@dataclass
class NoiseRobustness(Result):
    """Loss and accuracy under relative Gaussian weight noise.

    sigmas [S]; loss/accuracy [S, D] per draw; *_mean, *_std [S] over the D draws;
    clean_loss, clean_accuracy at σ = 0.
    """

    sigmas: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    clean_loss: float
    clean_accuracy: float
    draws: int
    seed: int

    @property
    def loss_mean(self):
        return self.loss.mean(1)

    @property
    def loss_std(self):
        return self.loss.std(1, ddof=1) if self.draws > 1 else np.zeros(len(self.sigmas))

    @property
    def accuracy_mean(self):
        return self.accuracy.mean(1)

    @property
    def accuracy_std(self):
        return self.accuracy.std(1, ddof=1) if self.draws > 1 else np.zeros(len(self.sigmas))

    NAME: ClassVar[str] = "noise_robustness"
    GRIDDED: ClassVar[bool] = True

    def report(self) -> str:
        rows = [f"| {sg:g} | {lm:.4g} ± {ls:.2g} | {am:.2%} |" for sg, lm, ls, am in
                zip(self.sigmas, self.loss_mean, self.loss_std, self.accuracy_mean)]
        return "\n".join([f"Under relative Gaussian weight noise ({self.draws} draws per σ; clean loss "
                          f"{self.clean_loss:.4g}, accuracy {self.clean_accuracy:.2%}):", "",
                          "| σ | loss (mean ± s.d.) | accuracy |", "|---|---|---|", *rows])

    def to_dict(self) -> dict:
        """Means and standard deviations over the draws, and every draw ('loss', 'accuracy' `[S][D]`)."""
        return to_jsonable({"sigmas": self.sigmas, "loss_mean": self.loss_mean, "loss_std": self.loss_std,
                            "accuracy_mean": self.accuracy_mean, "accuracy_std": self.accuracy_std,
                            "clean_loss": self.clean_loss, "clean_accuracy": self.clean_accuracy, "draws": self.draws,
                            "seed": self.seed, "loss": self.loss, "accuracy": self.accuracy})

    @classmethod
    def from_dict(cls, d) -> "NoiseRobustness":
        f = lambda k: np.asarray(d[k], dtype=float)  # noqa: E731
        return cls(f("sigmas"), f("loss"), f("accuracy"), json_float(d["clean_loss"]), json_float(d["clean_accuracy"]),
                   int(d["draws"]), int(d["seed"]))

    def summary(self) -> dict:
        d = self.to_dict()
        return {k: v for k, v in d.items() if k not in ("loss", "accuracy")}

    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        return {f"{prefix}sigmas": self.sigmas, f"{prefix}loss": self.loss, f"{prefix}accuracy": self.accuracy,
                f"{prefix}loss_mean": self.loss_mean, f"{prefix}accuracy_mean": self.accuracy_mean}

    def metadata(self) -> dict:
        return {"clean_loss": self.clean_loss, "clean_accuracy": self.clean_accuracy, "draws": self.draws,
                "seed": self.seed}

    @classmethod
    def from_arrays(cls, arrays, metadata=None, prefix: str = "") -> "NoiseRobustness":
        m = metadata or {}
        return cls(np.asarray(arrays[f"{prefix}sigmas"]), np.asarray(arrays[f"{prefix}loss"]),
                   np.asarray(arrays[f"{prefix}accuracy"]), json_float(m.get("clean_loss")),
                   json_float(m.get("clean_accuracy")), int(m.get("draws", arrays[f"{prefix}loss"].shape[1])),
                   int(m.get("seed", 0)))

    def plots(self, prefix: str = "") -> list:
        x = f"{prefix}sigmas"
        return [line("loss under weight noise", x, [Series(f"{prefix}loss_mean", "mean loss over draws")],
                     xlabel="σ (noise relative to each filter's norm)", ylabel="loss"),
                line("accuracy under weight noise", x, [Series(f"{prefix}accuracy_mean", "mean accuracy over draws")],
                     xlabel="σ (noise relative to each filter's norm)", ylabel="accuracy")]

    def to_xarray(self):
        """xarray.Dataset: loss and accuracy over (sigma, draw)."""
        xr = xarray()
        return xr.Dataset({"loss": (("sigma", "draw"), self.loss), "accuracy": (("sigma", "draw"), self.accuracy)},
                          coords={"sigma": self.sigmas, "draw": np.arange(self.draws)},
                          attrs={"clean_loss": self.clean_loss, "clean_accuracy": self.clean_accuracy, "seed": self.seed})


def noise_robustness(
    objective: Objective,
    sigmas: Sequence[float] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3),
    draws: int = 5,
    seed: int = 0,
    kinds: Sequence[str] = ("weight",),
    theta: torch.Tensor | None = None,
    progress: bool = False,
    per: str = "filter",
) -> NoiseRobustness:
    """Mean and std of loss and accuracy at θ + σ·n_j, n_j = `filter_noise` draws j = 1..D.

    σ is relative: each filter (``per="tensor"``: each tensor) gets noise of about σ times
    its own norm (so layers of different scale are perturbed alike, and BatchNorm's scale
    invariance does not hide the perturbation). The same D draws are reused for every σ, so the curves are smooth
    in σ. All points go through one `Objective.evaluate` call.
    """
    sig = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if len(sig) == 0 or not np.all(np.isfinite(sig)) or np.any(sig < 0):
        raise UserError(f"sigmas must be non-negative numbers, got {list(sigmas)}")
    if draws < 1:
        raise UserError(f"draws must be at least 1, got {draws}")
    theta = _theta(objective, theta)
    N = filter_noise(objective, theta, seed, kinds, count=draws, per=per)  # [D, P]
    coords = np.zeros((len(sig) * draws + 1, draws))
    for i, s in enumerate(sig):
        for j in range(draws):
            coords[i * draws + j, j] = s
    ev = objective.evaluate(coords, origin=theta, directions=N, progress=progress)
    loss = ev.loss[:-1].reshape(len(sig), draws)
    acc = ev.accuracy[:-1].reshape(len(sig), draws)
    return NoiseRobustness(sig, loss, acc, float(ev.loss[-1]), float(ev.accuracy[-1]), draws, seed)


@register
@dataclass
class PacBayesSigma(Record):
    """Result of the PAC-Bayes σ search: sigma (the largest σ found within the bound),
    measure 1/σ² (Jiang et al.'s flatness measure, larger = sharper), the criterion,
    the bound, and every (σ, rise) evaluated."""

    sigma: float
    measure: float
    criterion: str
    bound: float
    noise: str
    evaluated: list[tuple[float, float]]
    clean: float

    NAME: ClassVar[str] = "pac_bayes_sigma"

    def report(self) -> str:
        return (f"PAC-Bayes σ ({self.criterion} rise ≤ {self.bound:g} under {self.noise} noise): **{self.sigma:.4g}** "
                f"(flatness measure 1/σ² = {self.measure:.4g}).")


def pac_bayes_sigma(
    objective: Objective,
    bound: float = 0.1,
    criterion: str = "error",
    noise: str = "absolute",
    draws: int = 5,
    seed: int = 0,
    sigma_range: tuple[float, float] = (1e-5, 10.0),
    iterations: int = 20,
    theta: torch.Tensor | None = None,
    kinds: Sequence[str] = ("weight", "bias", "norm"),
) -> PacBayesSigma:
    """Largest σ with E_u[crit(θ+u)] − crit(θ) ≤ bound, u ~ N(0, σ²) (Jiang et al. 2019, §C).

    criterion: 'error' (1 − accuracy; Jiang et al. use a deviation of 0.1) or 'loss'.
    noise: 'absolute' (pacbayes.sigma: the same σ on every weight) or 'magnitude'
    (pacbayes.mag.sigma: std σ·|w_i| + 1e-3·σ per weight). The expectation is the mean
    over `draws` fixed seeded draws, so the rise is a deterministic function of σ and the
    bisection on log σ is well defined. Returns the σ at the lower end of the final bracket.
    """
    if criterion not in ("error", "loss"):
        raise UserError(f"criterion must be 'error' or 'loss', got {criterion!r}")
    if noise not in ("absolute", "magnitude"):
        raise UserError(f"noise must be 'absolute' or 'magnitude', got {noise!r}")
    if not bound > 0:
        raise UserError(f"bound must be positive, got {bound}")
    lo, hi = map(float, sigma_range)
    if not 0 < lo < hi:
        raise UserError(f"sigma_range must be 0 < low < high, got {sigma_range}")
    theta = _theta(objective, theta)
    if criterion == "error" and not objective.loss.has_accuracy:
        raise UserError("criterion 'error' needs a loss with accuracy (classification); use criterion='loss'")
    gen = torch.Generator().manual_seed(int(seed))
    mask = _kind_mask(objective, kinds).to(theta.dtype)
    N = torch.randn(draws, objective.space.numel, generator=gen, dtype=torch.float64).to(theta) * mask
    if noise == "magnitude":
        N = N * (theta.abs() + 1e-3)

    def crit(ev):
        return ev.loss if criterion == "loss" else 1 - ev.accuracy

    clean = float(crit(objective.loss_at(theta))[0])
    evaluated = []

    def rise(s):
        coords = np.eye(draws) * s
        r = float(crit(objective.evaluate(coords, origin=theta, directions=N)).mean() - clean)
        evaluated.append((s, r))
        return r

    if rise(lo) > bound:
        return PacBayesSigma(lo, 1 / lo**2, criterion, bound, noise, evaluated, clean)
    if rise(hi) <= bound:
        return PacBayesSigma(hi, 1 / hi**2, criterion, bound, noise, evaluated, clean)
    for _ in range(iterations):
        mid = math.sqrt(lo * hi)
        if rise(mid) <= bound:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1.01:
            break
    return PacBayesSigma(lo, 1 / lo**2, criterion, bound, noise, evaluated, clean)


# --- critical points ---------------------------------------------------------------------
def classify_critical_point(grad_norm: float, lambda_min: float, lambda_max: float,
                            grad_tol: float = 1e-3, eig_tol: float = 1e-6) -> CriticalPoint:
    """Classify from ||∇L|| and the extreme Hessian eigenvalues.

    Not critical if ||∇L|| > grad_tol. Otherwise, with τ = eig_tol · max(|λmin|, |λmax|, 1e-30)
    (a relative tolerance): minimum if λmin > τ, maximum if λmax < −τ, saddle if
    λmin < −τ < τ < λmax, degenerate otherwise (some extreme eigenvalue within ±τ of 0).
    """
    lmin, lmax = float(lambda_min), float(lambda_max)
    if lmin > lmax:
        lmin, lmax = lmax, lmin
    tau = eig_tol * max(abs(lmin), abs(lmax), 1e-30)
    a, b = abs(lmin), abs(lmax)
    cond = max(a, b) / min(a, b) if min(a, b) > 0 else math.inf
    if grad_norm > grad_tol:
        kind = "not critical"
    elif lmin > tau:
        kind = "minimum"
    elif lmax < -tau:
        kind = "maximum"
    elif lmin < -tau and lmax > tau:
        kind = "saddle"
    else:
        kind = "degenerate"
    return CriticalPoint(None, None, (lmin, lmax), kind, min(a, b) <= tau, float(grad_norm), cond, grad_tol, eig_tol)


def critical_point(objective: Objective, theta: torch.Tensor | None = None, params=None,
                   grad_tol: float = 1e-3, eig_tol: float = 1e-6, seed: int = 0, **eig_kwargs) -> CriticalPoint:
    """Gradient norm and extreme eigenvalues (Lanczos, `lossprobe.curvature.hessian.eigenvalues`
    with which='both', k=1) at θ, classified by `classify_critical_point`. `eig_kwargs` go to
    `eigenvalues` (tol, max_steps, residuals, progress)."""
    theta = _theta(objective, theta)
    loss, g = objective.loss_and_grad(theta)
    H = HessianOperator(objective, theta, params)
    gn = float(H.restrict(g).norm())
    r = eigenvalues(H, k=1, which="both", seed=seed, **eig_kwargs)
    lmax, lmin = float(r.values[0]), float(r.values[-1])
    cp = classify_critical_point(gn, lmin, lmax, grad_tol, eig_tol)
    cp.value = float(loss)
    cp.residuals = r.residuals.tolist()
    return cp
