"""Curvature algorithms as functions of any symmetric linear operator.

Everything here takes a ``matvec(v) -> A v`` on float64 torch vectors of length ``n``
(or a dense symmetric matrix, a `scipy.sparse.linalg.LinearOperator`, ...) and knows
nothing about networks, so it can be tested on a dense matrix with a known spectrum.
`lossprobe.curvature.hessian` applies them to the Hessian of an `Objective`, and to the GGN,
Fisher, empirical Fisher and K-FAC operators of `lossprobe.curvature.operators`.

* `lanczos`            Lanczos tridiagonalisation with full reorthogonalisation in float64.
* `lanczos_eigs`       extreme eigenpairs, growing the Krylov space until every wanted
                       Ritz pair's residual ``||A y - θ y||`` is below tolerance.
* `power_iteration`    the dominant eigenvalue by a fixed number of power steps (a cheap
                       estimate without residuals).
* `hutchinson`         trace by Rademacher probes, with a standard error (and per block).
* `hutchpp`            Hutch++ (Meyer, Musco, Musco & Woodruff 2021): exact trace on a
                       sketched top subspace plus Hutchinson on the rest.
* `slq`                stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017; Ghorbani et
                       al. 2019): nodes and weights of the spectral density, with the
                       symmetric tridiagonal eigensolver `scipy.linalg.eigh_tridiagonal`.
* `gaussian_density`   Gaussian broadening of SLQ nodes on a grid (integrates to 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from lossprobe.errors import UserError
from lossprobe.results.contract import Result, json_float, register

MatVec = Callable[[torch.Tensor], torch.Tensor]


# --- operators -----------------------------------------------------------------------
class CountingOperator:
    """Wrap ``matvec`` so that it takes and returns float64 vectors and counts its calls.

    `op` may be a function of a torch vector, a dense matrix (numpy or torch) or anything
    with a ``matvec`` method (a scipy ``LinearOperator``).
    """

    def __init__(self, op, n: int | None = None, device: torch.device | str | None = None):
        self.calls = 0
        if isinstance(op, CountingOperator):
            op, n, device = op._fn, op.n, op.device
        if isinstance(op, np.ndarray):
            op = torch.from_numpy(op)
        if isinstance(op, torch.Tensor):
            if op.ndim != 2 or op.shape[0] != op.shape[1]:
                raise UserError(f"a dense operator must be a square matrix, got shape {tuple(op.shape)}")
            mat = op.to(torch.float64)
            self._fn = lambda v: mat @ v
            n, device = mat.shape[0], mat.device
        elif hasattr(op, "matvec") and hasattr(op, "shape"):
            lin = op
            self._fn = lambda v: torch.from_numpy(np.asarray(lin.matvec(v.cpu().numpy()), dtype=np.float64).reshape(-1))
            n, device = lin.shape[0], "cpu"
        elif callable(op):
            self._fn = op
        else:
            raise TypeError(f"expected a matvec function, a matrix or a LinearOperator, got {type(op).__name__}")
        if n is None:
            raise UserError("the operator's dimension n is needed for a matvec function")
        self.n = int(n)
        self.device = torch.device(device or "cpu")

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self._fn(v)
        return out.to(device=self.device, dtype=torch.float64).reshape(-1)


def _rademacher(n: int, gen: torch.Generator, device) -> torch.Tensor:
    return (torch.randint(0, 2, (n,), generator=gen, dtype=torch.int8).to(torch.float64) * 2 - 1).to(device)


def _generator(seed: int | torch.Generator | None) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(0 if seed is None else int(seed))


# --- Lanczos -------------------------------------------------------------------------
@dataclass
class LanczosState:
    """A Lanczos decomposition ``A Q_m = Q_m T_m + β_m q_{m+1} e_mᵀ``.

    alpha [m], beta [m] (beta[j] couples q_j and q_{j+1}; beta[m-1] is β_m), Q [m, n]
    float64 orthonormal rows, q_next [n] (unit, or zero after breakdown).
    """

    alpha: list[float] = field(default_factory=list)
    beta: list[float] = field(default_factory=list)
    Q: list[torch.Tensor] = field(default_factory=list)
    q_next: torch.Tensor | None = None
    restarts: int = 0  # invariant subspaces found (breakdowns followed by a fresh vector)
    _buf: torch.Tensor | None = None  # [capacity, n]: the rows of Q, contiguous for fast reorthogonalisation

    def append(self, q: torch.Tensor) -> None:
        m = len(self.Q)
        if self._buf is None or m == self._buf.shape[0]:
            cap = max(16, 2 * m)
            buf = torch.empty(cap, q.numel(), dtype=q.dtype, device=q.device)
            if m:
                buf[:m] = self._buf[:m]
            self._buf = buf
            self.Q = [buf[i] for i in range(m)]
        self._buf[m] = q
        self.Q.append(self._buf[m])

    def basis(self) -> torch.Tensor:
        """Q as one [m, n] tensor (a view, no copy)."""
        return self._buf[: len(self.Q)]

    @property
    def steps(self) -> int:
        return len(self.alpha)

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues θ [m] (ascending) and eigenvectors S [m, m] of T_m."""
        a = np.asarray(self.alpha, dtype=np.float64)
        if len(a) == 1:
            return a.copy(), np.ones((1, 1))
        e = np.asarray(self.beta[:-1], dtype=np.float64)
        return eigh_tridiagonal(a, e)


def lanczos(
    matvec,
    n: int | None = None,
    steps: int = 30,
    v0: torch.Tensor | None = None,
    seed: int | torch.Generator | None = 0,
    state: LanczosState | None = None,
    device=None,
) -> LanczosState:
    """Run (or continue) Lanczos with full reorthogonalisation in float64.

    Every new vector is orthogonalised against all previous ones (classical Gram-Schmidt,
    repeated when the DGKS criterion asks for it: "twice is enough"), so the Ritz values
    carry no ghost copies and residual estimates stay honest. When the Krylov space becomes invariant
    (β ≈ 0) before `n` steps, a fresh random vector orthogonal to the basis continues
    the process, so repeated eigenvalues are found too.

    Args:
        matvec: the symmetric operator (see `CountingOperator`).
        n: dimension (needed only for a plain function).
        steps: how many steps to add (capped at n in total).
        v0: start vector [n]; a seeded Gaussian vector if None.
        state: a previous `LanczosState` to extend.
    """
    op = matvec if isinstance(matvec, CountingOperator) else CountingOperator(matvec, n, device)
    n = op.n
    gen = _generator(seed)
    st = state or LanczosState()
    if st.steps == 0:
        q = torch.randn(n, generator=gen, dtype=torch.float64).to(op.device) if v0 is None else v0.detach().to(op.device, torch.float64).reshape(-1).clone()
        if q.numel() != n:
            raise UserError(f"start vector has {q.numel()} entries, expected {n}")
        nq = q.norm()
        if not torch.isfinite(nq) or nq == 0:
            raise UserError("the Lanczos start vector is zero or not finite")
        st.q_next = q / nq
    target = min(n, st.steps + steps)
    scale = 0.0
    while st.steps < target:
        q = st.q_next
        if q is None or float(q.norm()) == 0.0:
            # invariant subspace found: continue with a random vector orthogonal to the basis
            q = _orth_against(torch.randn(n, generator=gen, dtype=torch.float64).to(op.device), st.basis())
            q = q / q.norm()
            st.beta[-1] = 0.0
            st.restarts += 1
        st.append(q)
        q = st.Q[-1]
        w = op(q)
        if not torch.isfinite(w).all():
            raise UserError("the operator returned NaN or inf (is the loss finite at this point?)")
        a = float(q @ w)
        w = w - a * q - (st.beta[-1] * st.Q[-2] if len(st.Q) > 1 else 0.0)
        w = _orth_against(w, st.basis())
        b = float(w.norm())
        scale = max(scale, abs(a) + b, *(abs(x) for x in st.beta[-1:]))
        st.alpha.append(a)
        st.beta.append(b)
        if b <= 1e-13 * max(scale, 1e-300) * math.sqrt(n) or len(st.Q) >= n:
            st.q_next = torch.zeros_like(q)
        else:
            st.q_next = w / b
    return st


def _orth_against(w: torch.Tensor, B: torch.Tensor | None) -> torch.Tensor:
    """w minus its projection on the rows of B [m, n] by classical Gram-Schmidt, repeated
    when the first pass cancelled much of w (the DGKS criterion: ‖w'‖ < ‖w‖/√2), which is
    when one pass can leave a loss of orthogonality; "twice is enough"."""
    if B is None or B.shape[0] == 0:
        return w
    before = w.norm()
    w = w - B.T @ (B @ w)
    if w.norm() < 0.7071 * before:
        w = w - B.T @ (B @ w)
    return w


@register
@dataclass
class EigResult(Result):
    """Extreme eigenpairs of a symmetric operator.

    values [k] float64 (largest first for 'largest', smallest first for 'smallest';
    for 'both', the k largest then the k smallest), residuals [k] = ||A y − θ y||
    (exact products or the Lanczos estimate |β_m s_m|, see `residual_kind`),
    vectors [k, n] float64 unit vectors, matvecs: products used, steps: Lanczos steps.
    """

    values: np.ndarray
    residuals: np.ndarray
    vectors: torch.Tensor
    matvecs: int
    steps: int
    converged: bool
    which: str
    residual_kind: str = "exact"
    all_ritz_values: np.ndarray | None = None

    NAME: ClassVar[str] = "eigenvalues"
    JSON_OMITS: ClassVar[frozenset[str]] = frozenset({"vectors"})  # [k, P]: `save` keeps them

    def to_dict(self) -> dict:
        """The JSON form: the summary's keys and, when recorded, every Ritz value of the last
        Krylov space (``all_ritz_values``); the eigenvectors are left out (`save` keeps them)."""
        d = self.summary()
        if self.all_ritz_values is not None:
            d["all_ritz_values"] = np.asarray(self.all_ritz_values).tolist()
        return d

    @classmethod
    def from_dict(cls, d) -> "EigResult":
        ritz = d.get("all_ritz_values")
        return cls(np.asarray(d["eigenvalues"], float), np.asarray(d["residuals"], float), None, d["matvecs"],
                   d["lanczos_steps"], d["converged"], d["which"], d.get("residual_kind", "exact"),
                   None if ritz is None else np.asarray(ritz, float))

    def summary(self) -> dict:
        return {"eigenvalues": self.values.tolist(), "residuals": self.residuals.tolist(), "matvecs": self.matvecs,
                "lanczos_steps": self.steps, "converged": self.converged, "which": self.which,
                "residual_kind": self.residual_kind}

    def report(self) -> str:
        order = {"largest": "largest first", "smallest": "smallest first", "both": "largest, then smallest"}
        lines = [f"Eigenvalues ({order.get(self.which, self.which)}; Lanczos, {self.matvecs} products"
                 f"{'' if self.converged else ', not converged'}):", "",
                 "| # | eigenvalue | residual ‖Hv−λv‖ |", "|---|---|---|"]
        lines += [f"| {i + 1} | {v:.6g} | {r:.2e} |" for i, (v, r) in enumerate(zip(self.values, self.residuals))]
        return "\n".join(lines)

    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        out = {f"{prefix}eigenvalues": self.values, f"{prefix}residuals": self.residuals}
        if self.vectors is not None:
            out[f"{prefix}vectors"] = torch.as_tensor(self.vectors).detach().cpu().double().numpy()
        if self.all_ritz_values is not None:
            out[f"{prefix}all_ritz_values"] = np.asarray(self.all_ritz_values)
        return out

    def metadata(self) -> dict:
        return {"matvecs": self.matvecs, "lanczos_steps": self.steps, "converged": self.converged, "which": self.which,
                "residual_kind": self.residual_kind}

    @classmethod
    def from_arrays(cls, arrays, metadata=None, prefix: str = "") -> "EigResult":
        m = metadata or {}
        vec = arrays.get(f"{prefix}vectors")
        return cls(np.asarray(arrays[f"{prefix}eigenvalues"]), np.asarray(arrays[f"{prefix}residuals"]),
                   None if vec is None else torch.from_numpy(np.asarray(vec)), m.get("matvecs", 0),
                   m.get("lanczos_steps", 0), bool(m.get("converged", False)), m.get("which", "largest"),
                   m.get("residual_kind", "exact"), arrays.get(f"{prefix}all_ritz_values"))


def _pick(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    """Indices of the wanted Ritz values in the order they are reported."""
    order = np.argsort(theta)
    k = min(k, len(theta))
    if which == "largest":
        return order[::-1][:k]
    if which == "smallest":
        return order[:k]
    if which == "both":
        top = list(order[::-1][:k])
        bottom = [i for i in order[:k] if i not in top] if len(theta) > k else []
        return np.array(top + bottom[: k], dtype=int)
    raise UserError(f"which must be 'largest', 'smallest' or 'both', got {which!r}")


def lanczos_eigs(
    matvec,
    n: int | None = None,
    k: int = 1,
    which: str = "largest",
    tol: float = 1e-6,
    max_steps: int = 300,
    min_steps: int | None = None,
    check_every: int = 5,
    seed: int | torch.Generator | None = 0,
    v0: torch.Tensor | None = None,
    residuals: str = "exact",
    device=None,
    progress: Callable[[int], None] | None = None,
) -> EigResult:
    """The k extreme eigenpairs by Lanczos with full reorthogonalisation.

    The Krylov space grows until each wanted Ritz pair has residual estimate
    ``|β_m s_{m,i}| ≤ tol · max|θ|`` (the spectral-norm estimate), or `max_steps`
    (or n) steps. With full reorthogonalisation that estimate equals the true residual
    up to rounding; ``residuals='exact'`` spends k more products to report
    ``||A y − θ y||`` measured directly.

    Returns an `EigResult`.
    """
    if k <= 0:
        raise UserError(f"k must be positive, got {k}")
    if residuals not in ("exact", "estimate"):
        raise UserError(f"residuals must be 'exact' or 'estimate', got {residuals!r}")
    _pick(np.zeros(1), 1, which)  # validate `which`
    op = matvec if isinstance(matvec, CountingOperator) else CountingOperator(matvec, n, device)
    n = op.n
    n_want = k * (2 if which == "both" else 1)
    if n_want > n:
        raise UserError(f"asked for {n_want} eigenvalues of a {n}×{n} operator")
    max_steps = min(max_steps, n)
    first = min(max_steps, min_steps if min_steps is not None else max(2 * n_want + 8, 12))
    gen = _generator(seed)
    st = lanczos(op, steps=first, v0=v0, seed=gen)
    converged = False
    while True:
        theta, S = st.ritz()
        idx = _pick(theta, k, which)
        spec = max(float(np.abs(theta).max()), 1e-300)
        beta_m = st.beta[-1] if st.q_next is not None and float(st.q_next.norm()) > 0 else 0.0
        est = np.abs(beta_m * S[-1, idx])
        if (len(idx) >= n_want and np.all(est <= tol * spec)) or st.steps >= n:
            converged = True
            break
        if st.steps >= max_steps:
            break
        before = op.calls
        st = lanczos(op, steps=min(check_every, max_steps - st.steps), seed=gen, state=st)
        if progress:
            progress(op.calls - before)
    Qm = st.basis()  # [m, n]
    Sk = torch.from_numpy(np.ascontiguousarray(S[:, idx])).to(Qm)
    Y = (Sk.T @ Qm)  # [k, n]
    Y = Y / Y.norm(dim=1, keepdim=True)
    vals = theta[idx]
    if residuals == "exact":
        res = np.array([float((op(y) - v * y).norm()) for y, v in zip(Y, vals)])
    else:
        res = est
    return EigResult(values=np.asarray(vals, dtype=np.float64), residuals=np.asarray(res, dtype=np.float64),
                     vectors=Y, matvecs=op.calls, steps=st.steps, converged=converged, which=which,
                     residual_kind=residuals, all_ritz_values=theta)


# --- power iteration -----------------------------------------------------------------
def power_iteration(matvec, iters: int = 10, seed: int | torch.Generator | None = 0, n: int | None = None,
                    dtype: torch.dtype = torch.float64, device=None) -> tuple[float, torch.Tensor]:
    """The dominant (largest-magnitude) eigenvalue of a symmetric operator by `iters` power
    steps from a seeded Gaussian start: (the Rayleigh quotient vᵀAv of the last iterate, v).

    A cheap, unchecked estimate (no residual, no convergence test; `lanczos_eigs` gives
    both). It stops early when Av is zero or not finite. `dtype` is the precision the
    iterate is drawn and kept in (the products are computed by the operator as always).
    """
    if iters < 1:
        raise UserError(f"iters must be at least 1, got {iters}")
    op = matvec if isinstance(matvec, CountingOperator) else CountingOperator(matvec, n, device)
    v = torch.randn(op.n, generator=_generator(seed), dtype=dtype).to(op.device)
    v /= v.norm()
    lam = 0.0
    for _ in range(iters):
        av = op(v).to(dtype)
        lam = float(v @ av)
        nrm = av.norm()
        if not torch.isfinite(nrm) or nrm == 0:
            break
        v = av / nrm
    return lam, v


# --- trace ---------------------------------------------------------------------------
@register
@dataclass
class TraceResult(Result):
    """A trace estimate with its standard error (over the random probes).

    trace, stderr: floats; blocks: {name: (trace, stderr)} when blocks were given;
    samples [s]: the per-probe values of the stochastic part; matvecs: products used;
    method: 'hutchinson' or 'hutch++'. For Hutch++ the error is that of the Hutchinson
    part given the sketched subspace (the deflated part is exact).
    """

    trace: float
    stderr: float
    matvecs: int
    method: str
    samples: np.ndarray
    blocks: dict[str, tuple[float, float]] | None = None
    deflated: float = 0.0

    NAME: ClassVar[str] = "trace"
    JSON_OMITS: ClassVar[frozenset[str]] = frozenset({"samples"})  # per probe: `save` keeps them

    def to_dict(self) -> dict:
        """The JSON form (the per-probe samples are left out, and come back empty from
        `from_dict`: `save` keeps them)."""
        d = {"trace": self.trace, "trace_stderr": self.stderr, "matvecs": self.matvecs, "method": self.method,
             "deflated": self.deflated}
        if self.blocks is not None:
            d["blocks"] = {k: {"trace": v[0], "stderr": v[1]} for k, v in self.blocks.items()}
        return d

    @classmethod
    def from_dict(cls, d, samples=None) -> "TraceResult":
        blocks = d.get("blocks")
        nan = float("nan")
        return cls(json_float(d["trace"]), json_float(d["trace_stderr"]), d["matvecs"], d["method"],
                   np.zeros(0) if samples is None else np.asarray(samples),
                   None if blocks is None else {k: (json_float(v["trace"]), json_float(v.get("stderr", nan))) for k, v in blocks.items()},
                   json_float(d.get("deflated", 0.0)))

    def summary(self) -> dict:
        return self.to_dict()

    def report(self) -> str:
        return (f"Trace ({self.method}, {self.matvecs} products): **{self.trace:.6g} ± {self.stderr:.2g}** "
                "(1 s.e.).")

    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        return {f"{prefix}samples": np.asarray(self.samples)}

    def metadata(self) -> dict:
        return self.to_dict()

    @classmethod
    def from_arrays(cls, arrays, metadata=None, prefix: str = "") -> "TraceResult":
        return cls.from_dict(metadata or {}, samples=arrays[f"{prefix}samples"])


def _block_sums(x: torch.Tensor, blocks) -> torch.Tensor | None:
    """Sum of x [.., n] over each block (a list of (name, slice)) -> [.., B]."""
    if blocks is None:
        return None
    return torch.stack([x[..., s].sum(-1) for _, s in blocks], -1)


def _stats(samples: torch.Tensor) -> tuple[float, float]:
    m = samples.shape[0]
    mean = float(samples.mean())
    se = float(samples.std(unbiased=True) / math.sqrt(m)) if m > 1 else float("nan")
    return mean, se


def hutchinson(
    matvec,
    n: int | None = None,
    samples: int = 100,
    seed: int | torch.Generator | None = 0,
    blocks: Sequence[tuple[str, slice]] | None = None,
    device=None,
    progress: Callable[[int], None] | None = None,
) -> TraceResult:
    """Hutchinson's estimator tr(A) ≈ mean zᵀAz over Rademacher z, with its standard error.

    `blocks`: optional list of (name, slice) that partition [0, n); the trace of each
    diagonal block is estimated from the same products.
    """
    if samples < 1:
        raise UserError(f"samples must be at least 1, got {samples}")
    op = matvec if isinstance(matvec, CountingOperator) else CountingOperator(matvec, n, device)
    gen = _generator(seed)
    per = []
    for _ in range(samples):
        z = _rademacher(op.n, gen, op.device)
        per.append(z * op(z))
        if progress:
            progress(1)
    P = torch.stack(per)  # [s, n]
    tot = P.sum(1)
    t, se = _stats(tot)
    blk = None
    if blocks is not None:
        B = _block_sums(P, blocks)
        blk = {name: _stats(B[:, i]) for i, (name, _) in enumerate(blocks)}
    return TraceResult(trace=t, stderr=se, matvecs=op.calls, method="hutchinson", samples=tot.cpu().numpy(), blocks=blk)


def exact_trace(op: "CountingOperator", blocks: Sequence[tuple[str, slice]] | None = None,
                progress: Callable[[int], None] | None = None) -> TraceResult:
    """tr(A) = Σ_i e_iᵀ A e_i with n products: what a randomised estimate spends anyway once
    its budget reaches the dimension (a random sketch of n ±1 vectors is often singular)."""
    diag = torch.empty(op.n, dtype=torch.float64, device=op.device)
    for i in range(op.n):
        e = torch.zeros(op.n, dtype=torch.float64, device=op.device)
        e[i] = 1.0
        diag[i] = _tick(op(e), progress)[i]
    blk = {name: (float(diag[sl].sum()), 0.0) for name, sl in blocks} if blocks is not None else None
    tot = float(diag.sum())
    return TraceResult(trace=tot, stderr=0.0, matvecs=op.calls, method="exact", samples=np.array([tot]),
                       blocks=blk, deflated=tot)


def hutchpp(
    matvec,
    n: int | None = None,
    matvecs: int = 99,
    seed: int | torch.Generator | None = 0,
    blocks: Sequence[tuple[str, slice]] | None = None,
    device=None,
    progress: Callable[[int], None] | None = None,
) -> TraceResult:
    """Hutch++: tr(A) = tr(QᵀAQ) + tr((I−QQᵀ)A(I−QQᵀ)), Q an orthonormal basis of A·S.

    `matvecs` products (a multiple of 3 is best) go one third to A·S, one third to A·Q
    and one third to Hutchinson probes on the complement. When `matvecs` reaches the
    dimension n the trace is computed exactly with n products instead (`exact_trace`). The first term is exact for a
    given Q; the standard error is that of the Hutchinson term. Per-block traces use
    ``tr(P_b A) = Σ_c (P_b q_c)·(A q_c) + E[(P_b w)·(A w)]``, w = (I−QQᵀ)g.
    """
    if matvecs < 3:
        raise UserError(f"Hutch++ needs at least 3 products, got {matvecs}")
    op = matvec if isinstance(matvec, CountingOperator) else CountingOperator(matvec, n, device)
    n = op.n
    if n <= matvecs:
        return exact_trace(op, blocks, progress)
    gen = _generator(seed)
    s = min(matvecs // 3, n)
    g_count = max(matvecs - 2 * s, 1)
    S = torch.stack([_rademacher(n, gen, op.device) for _ in range(s)], 1)  # [n, s]
    AS = torch.stack([_tick(op(S[:, i]), progress) for i in range(s)], 1)
    # orthonormal basis of range(A·S) by SVD, dropping numerically zero directions (A of low rank)
    U, sv, _ = torch.linalg.svd(AS, full_matrices=False)
    Q = U[:, sv > 1e-12 * max(float(sv.max()), 1e-300)] if s else U
    AQ = torch.stack([_tick(op(Q[:, i]), progress) for i in range(Q.shape[1])], 1) if Q.shape[1] else Q
    per_q = (Q * AQ)  # [n, r]: column sums give qᵀAq, block sums give the block parts
    deflated = float(per_q.sum())
    per = []
    for _ in range(g_count):
        g = _rademacher(n, gen, op.device)
        w = g - Q @ (Q.T @ g) if Q.shape[1] else g
        if Q.shape[1] == n:
            per.append(torch.zeros(n, dtype=torch.float64, device=op.device))
            continue
        per.append(w * _tick(op(w), progress))
    P = torch.stack(per)  # [g, n]
    tot = P.sum(1)
    rest, se = _stats(tot)
    if g_count == 1:
        se = float("nan")
    blk = None
    if blocks is not None:
        Bq = _block_sums(per_q.T, blocks).sum(0)  # [B]
        Bg = _block_sums(P, blocks)  # [g, B]
        blk = {}
        for i, (name, _) in enumerate(blocks):
            m_, e_ = _stats(Bg[:, i])
            blk[name] = (float(Bq[i]) + m_, e_)
    return TraceResult(trace=deflated + rest, stderr=se, matvecs=op.calls, method="hutch++",
                       samples=tot.cpu().numpy(), blocks=blk, deflated=deflated)


def _tick(x, progress):
    if progress:
        progress(1)
    return x


# --- spectral density ----------------------------------------------------------------
@dataclass
class SLQResult:
    """Stochastic Lanczos quadrature: per probe, nodes [v, m] and weights [v, m] (each row
    sums to 1), the discrete measure of the spectral density. ``trace`` is the SLQ
    estimate n·Σ τθ (mean over probes) with its standard error."""

    nodes: np.ndarray
    weights: np.ndarray
    matvecs: int
    n: int
    trace: float
    trace_stderr: float

    def density(self, grid: np.ndarray | None = None, sigma: float | None = None, points: int = 1000,
                sigma_rel: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
        return gaussian_density(self.nodes, self.weights, grid, sigma, points, sigma_rel)


def slq(
    matvec,
    n: int | None = None,
    probes: int = 4,
    steps: int = 80,
    seed: int | torch.Generator | None = 0,
    device=None,
    progress: Callable[[int], None] | None = None,
) -> SLQResult:
    """Spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    For each of `probes` Rademacher start vectors, `steps` Lanczos steps (full
    reorthogonalisation, float64) give T; its eigen-decomposition by the symmetric
    tridiagonal solver gives nodes θ_j and weights τ_j = (s_{1j})², a quadrature of
    vᵀ f(A) v / n.
    """
    if probes < 1 or steps < 1:
        raise UserError("slq needs at least one probe and one step")
    op = matvec if isinstance(matvec, CountingOperator) else CountingOperator(matvec, n, device)
    gen = _generator(seed)
    steps = min(steps, op.n)
    nodes, weights = [], []
    for _ in range(probes):
        before = op.calls
        v0 = _rademacher(op.n, gen, op.device)
        st = lanczos(op, steps=steps, v0=v0, seed=gen)
        theta, S = st.ritz()
        nodes.append(theta)
        weights.append(S[0] ** 2)
        if progress:
            progress(op.calls - before)
    m = max(len(x) for x in nodes)
    N = np.full((probes, m), np.nan)
    W = np.zeros((probes, m))
    for i, (t, w) in enumerate(zip(nodes, weights)):
        N[i, : len(t)] = t
        W[i, : len(w)] = w / w.sum()
        N[i, len(t):] = t[-1]  # padding with weight 0
    tr = op.n * np.nansum(N * W, axis=1)
    se = float(tr.std(ddof=1) / math.sqrt(probes)) if probes > 1 else float("nan")
    return SLQResult(nodes=N, weights=W, matvecs=op.calls, n=op.n, trace=float(tr.mean()), trace_stderr=se)


def gaussian_density(
    nodes: np.ndarray,
    weights: np.ndarray,
    grid: np.ndarray | None = None,
    sigma: float | None = None,
    points: int = 1000,
    sigma_rel: float = 0.01,
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth the SLQ measure with Gaussians of width `sigma` on `grid`.

    nodes, weights: [v, m] from `slq`. `sigma` defaults to ``sigma_rel`` times the
    spectral range; the grid defaults to `points` points covering the range ± 5σ, so
    the density integrates to 1 (trapezoid rule) up to discretisation.
    Returns (grid [G], density [G]).
    """
    nodes = np.atleast_2d(np.asarray(nodes, dtype=np.float64))
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    lo, hi = float(np.nanmin(nodes)), float(np.nanmax(nodes))
    span = max(hi - lo, 1e-12 * max(abs(lo), abs(hi), 1.0))
    if sigma is None:
        sigma = sigma_rel * span
    if not sigma > 0:
        raise UserError(f"sigma must be positive, got {sigma}")
    if grid is None:
        grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, points)
    grid = np.asarray(grid, dtype=np.float64)
    dens = np.zeros_like(grid)
    norm = 1.0 / (sigma * math.sqrt(2 * math.pi))
    v = nodes.shape[0]
    for t, w in zip(nodes, weights):
        ok = np.isfinite(t) & (w > 0)
        d = (grid[:, None] - t[ok][None, :]) / sigma
        dens += (np.exp(-0.5 * d * d) * w[ok][None, :]).sum(1) * norm
    return grid, dens / v
