"""Curvature algorithms as functions of any symmetric linear operator.

Everything here takes a ``matvec(v) -> A v`` on float64 torch vectors of length ``n``
(or a dense symmetric matrix, a `scipy.sparse.linalg.LinearOperator`, ...) and knows
nothing about networks, so it can be tested on a dense matrix with a known spectrum.
`lossprobe.curvature.hessian` applies them to the Hessian of an `Objective`, and to the GGN,
Fisher, empirical Fisher and K-FAC operators of `lossprobe.curvature.operators`.

* `lanczos`            Lanczos tridiagonalisation with full reorthogonalisation in float64.
* `lanczos_eigs`       extreme eigenpairs, growing the Krylov space until every wanted
                       Ritz pair's residual ``||A y - θ y||`` is below tolerance.
* `lanczos_eigs_spilled` the same with two vectors in memory and the basis in a temporary
                       file (selective orthogonalisation): large models.
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
import warnings
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from lossprobe.core.spill import SpilledRows
from lossprobe.core.vectors import all_finite, combine_rows, dot64, exact, norm64, normal_into, rademacher_into
from lossprobe.errors import UserError
from lossprobe.results.contract import Result, json_float, register

MatVec = Callable[[torch.Tensor], torch.Tensor]


# --- operators -----------------------------------------------------------------------
class CountingOperator:
    """Wrap ``matvec`` so that it takes and returns vectors of one dtype and counts its calls.

    `op` may be a function of a torch vector, a dense matrix (numpy or torch) or anything
    with a ``matvec`` method (a scipy ``LinearOperator``). `dtype` is the precision of the
    vectors the algorithms keep (float64 unless given: the curvature operators of a float32
    or half-precision model give float32). With ``out=True`` the function takes ``out=`` and
    writes its product there (no P-length temporary).

    Vectors held in pieces (a model sharded over ranks, `lossprobe.core.sharding`): `n` is this
    rank's piece, `dim` the whole dimension, `reduce` sums a small tensor of partial dot
    products over the ranks and ``fill(out, gen, kind)`` writes this rank's piece of the seeded
    draw of a whole vector ('normal' or 'rademacher'), so every rank follows one process.
    """

    def __init__(self, op, n: int | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, out: bool = False, reduce: Callable | None = None,
                 fill: Callable | None = None, dim: int | None = None):
        self.calls = 0
        self._out = out
        self.reduce = reduce
        self.fill = fill
        if isinstance(op, CountingOperator):
            dtype, self._out, self.reduce = dtype or op.dtype, op._out, reduce or op.reduce
            self.fill, dim = fill or op.fill, dim or op.dim
            op, n, device = op._fn, op.n, op.device
        if isinstance(op, np.ndarray):
            op = torch.from_numpy(op)
        if isinstance(op, torch.Tensor):
            if op.ndim != 2 or op.shape[0] != op.shape[1]:
                raise UserError(f"a dense operator must be a square matrix, got shape {tuple(op.shape)}")
            mat = op.to(torch.float64)
            self._fn = lambda v: mat @ v.to(torch.float64)
            n, device = mat.shape[0], mat.device
        elif hasattr(op, "matvec") and hasattr(op, "shape"):
            lin = op
            self._fn = lambda v: torch.from_numpy(np.asarray(lin.matvec(v.detach().cpu().double().numpy()),
                                                             dtype=np.float64).reshape(-1))
            n, device = lin.shape[0], "cpu"
        elif callable(op):
            self._fn = op
        else:
            raise TypeError(f"expected a matvec function, a matrix or a LinearOperator, got {type(op).__name__}")
        if n is None:
            raise UserError("the operator's dimension n is needed for a matvec function")
        self.n = int(n)
        self.dim = int(dim) if dim is not None else self.n
        self.device = torch.device(device or "cpu")
        self.dtype = dtype or torch.float64

    def __call__(self, v: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += 1
        if self._out:
            return self._fn(v, out=out)
        r = self._fn(v).to(device=self.device, dtype=self.dtype).reshape(-1)
        if out is not None:
            out.copy_(r)
            return out
        return r

    def empty(self, rows: int | None = None) -> torch.Tensor:
        """Uninitialised vector(s) [n] or [rows, n] in the operator's dtype and device."""
        return torch.empty((self.n,) if rows is None else (rows, self.n), dtype=self.dtype, device=self.device)

    # reductions over (possibly sharded) vectors, accumulated in float64
    def dot(self, a: torch.Tensor, b: torch.Tensor) -> float:
        d = dot64(a, b)
        return float(self.reduce(torch.tensor([d], dtype=torch.float64)).item()) if self.reduce else d

    def norm(self, a: torch.Tensor) -> float:
        if self.reduce is None:
            return norm64(a)
        return math.sqrt(self.dot(a, a))

    def normal_into(self, out: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The seeded Gaussian draw into `out` (this rank's piece of it when sharded)."""
        return self.fill(out, gen, "normal") if self.fill is not None else normal_into(out, gen)

    def rademacher_into(self, out: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return self.fill(out, gen, "rademacher") if self.fill is not None else rademacher_into(out, gen)

    def project(self, blocks: Sequence[torch.Tensor], w: torch.Tensor) -> list[torch.Tensor]:
        """Per block of rows [r, n], the dot products of its rows with `w` [r] (one gemv each)."""
        hs = [B @ w for B in blocks]
        if self.reduce is None or not hs:
            return hs
        flat = self.reduce(torch.cat(hs).to(torch.float64))
        return list(flat.split([len(h) for h in hs]))


def _rademacher(op: "CountingOperator", gen: torch.Generator, dtype=torch.float64, out: torch.Tensor | None = None):
    out = torch.empty(op.n, dtype=dtype, device=op.device) if out is None else out
    return op.rademacher_into(out, gen)


def _generator(seed: int | torch.Generator | None) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(0 if seed is None else int(seed))


# --- the basis: rows kept for reorthogonalisation, in blocks -----------------------------
class Basis:
    """Up to `capacity` vectors of length n, in blocks: one block of `head` rows first (what a
    caller keeps at the end, so that every other block can be freed) and the rest in blocks
    allocated as needed. Rows are addressed by slot (block, row); `order` lists the slots of
    the logical rows. Free slots are reused, so a full basis drops its oldest rows (a window)."""

    def __init__(self, n: int, dtype, device, capacity: int | None = None, head: int = 0):
        self.n, self.dtype, self.device = n, dtype, torch.device(device)
        self.capacity = capacity
        self.head = head
        self.blocks: list[torch.Tensor] = []
        self.free: list[tuple[int, int]] = []
        self.order: list[tuple[int, int]] = []

    @property
    def allocated(self) -> int:
        return sum(b.shape[0] for b in self.blocks)

    def __len__(self) -> int:
        return len(self.order)

    def row(self, slot) -> torch.Tensor:
        return self.blocks[slot[0]][slot[1]]

    def rows(self) -> list[torch.Tensor]:
        return [self.row(s) for s in self.order]

    def new_slot(self) -> tuple[int, int]:
        """A free slot (allocating a block if there is room, else the oldest row's)."""
        if not self.free:
            have = self.allocated
            if self.capacity is None or have < self.capacity:
                size = self.head if (not self.blocks and self.head) else max(16, have)
                if self.capacity is not None:
                    size = min(size, self.capacity - have)
                b = len(self.blocks)
                self.blocks.append(torch.empty(size, self.n, dtype=self.dtype, device=self.device))
                self.free.extend((b, i) for i in range(size))
            else:
                self.free.append(self.order.pop(0))
        return self.free.pop(0)

    def used_blocks(self, exclude=()) -> list[tuple[torch.Tensor, list[int]]]:
        """(block rows in use, their indices in `order`) per block, for projections."""
        pos = {s: i for i, s in enumerate(self.order) if s not in exclude}
        out = []
        for b, blk in enumerate(self.blocks):
            idx = [r for r in range(blk.shape[0]) if (b, r) in pos]
            if not idx:
                continue
            lo, hi = idx[0], idx[-1] + 1
            if hi - lo == len(idx):
                out.append((blk[lo:hi], [pos[(b, r)] for r in idx]))
            else:
                for r in idx:
                    out.append((blk[r:r + 1], [pos[(b, r)]]))
        return out

    def orthogonalise(self, op, w: torch.Tensor, exclude=()) -> torch.Tensor:
        """w minus its projection on the rows (classical Gram-Schmidt, repeated when the first
        pass cancelled much of w: the DGKS criterion ‖w'‖ < ‖w‖/√2; "twice is enough"), in place."""
        blocks = [B for B, _ in self.used_blocks(exclude)]
        if not blocks:
            return w
        before = op.norm(w)
        with exact(w):
            for again in (False, True):
                hs = op.project(blocks, w)
                for B, h in zip(blocks, hs):
                    w.addmv_(B.T, h.to(w.dtype), alpha=-1)
                if again or op.norm(w) >= 0.7071 * before:
                    break
        return w

    def keep(self, slots) -> None:
        """Keep only these slots, in this order; the others become free (their blocks are
        released when wholly free and not the head block)."""
        keep = list(slots)
        self.free = [s for s in list(self.order) + self.free if s not in keep]
        self.order = keep

    def release_unused(self) -> None:
        """Free every block that holds no row in use (the head block included)."""
        used = {b for b, _ in self.order}
        for b, blk in enumerate(self.blocks):
            if b not in used and blk.numel():
                self.blocks[b] = blk.new_empty(0, self.n)
        self.free = [s for s in self.free if s[0] in used]


# --- Lanczos -------------------------------------------------------------------------
@dataclass
class LanczosState:
    """A Lanczos decomposition ``A Q_m = Q_m T_m + β_m q_{m+1} e_mᵀ``.

    After a thick restart the first rows of Q are Ritz vectors (values `theta_kept`) coupled
    to the next Lanczos vector by `sigma` (T has an arrow in its first rows); alpha [j], beta [j]
    are the tridiagonal part since then (beta[j] couples Lanczos rows j and j+1; beta[-1] is β_m).
    `basis` holds the rows (float64 for matrices, the operator's dtype for networks: float32
    for float32 and half-precision models) and q_next; `steps` counts every Lanczos step.
    """

    alpha: list[float] = field(default_factory=list)
    beta: list[float] = field(default_factory=list)
    restarts: int = 0  # invariant subspaces found (breakdowns followed by a fresh vector)
    thick_restarts: int = 0
    steps: int = 0
    theta_kept: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sigma: np.ndarray = field(default_factory=lambda: np.zeros(0))
    basis_rows: Basis | None = None
    next_slot: tuple | None = None  # slot of q_{m+1} in the basis (None: zero, after breakdown)

    @property
    def Q(self) -> list[torch.Tensor]:
        """The basis rows [n] in order (views)."""
        return self.basis_rows.rows() if self.basis_rows is not None else []

    @property
    def q_next(self) -> torch.Tensor | None:
        return self.basis_rows.row(self.next_slot) if self.next_slot is not None else None

    @property
    def m(self) -> int:
        return len(self.basis_rows) if self.basis_rows is not None else 0

    def basis(self) -> torch.Tensor:
        """Q as one [m, n] tensor (a copy when its rows sit in several blocks)."""
        rows = self.Q
        return torch.stack(rows) if rows else torch.zeros(0, 0)

    @property
    def beta_m(self) -> float:
        return float(self.beta[-1]) if self.beta and self.next_slot is not None else 0.0

    def tridiagonal(self) -> np.ndarray:
        """T_m as a dense [m, m] float64 matrix (arrow rows first after a thick restart)."""
        r, a = len(self.theta_kept), len(self.alpha)
        T = np.zeros((r + a, r + a))
        T[np.arange(r), np.arange(r)] = self.theta_kept
        if r and a:
            T[:r, r] = T[r, :r] = self.sigma
        for j in range(a):
            T[r + j, r + j] = self.alpha[j]
            if j + 1 < a:
                T[r + j, r + j + 1] = T[r + j + 1, r + j] = self.beta[j]
        return T

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues θ [m] (ascending) and eigenvectors S [m, m] of T_m."""
        if len(self.theta_kept):
            theta, S = np.linalg.eigh(self.tridiagonal())
            return theta, S
        a = np.asarray(self.alpha, dtype=np.float64)
        if len(a) == 1:
            return a.copy(), np.ones((1, 1))
        e = np.asarray(self.beta[:-1], dtype=np.float64)
        return eigh_tridiagonal(a, e)


def _start_vector(op: CountingOperator, v0, gen, out: torch.Tensor) -> None:
    """q_1 into `out`: v0 (a vector, or a block [b, n] of start vectors, summed: a warm start
    from earlier eigenvectors), else the seeded Gaussian draw, normalised."""
    if v0 is None:
        op.normal_into(out, gen)
    else:
        v = torch.as_tensor(v0).detach()
        if v.ndim == 2:
            if v.shape[1] != op.n:
                raise UserError(f"start block has shape {tuple(v.shape)}, expected (b, {op.n})")
            out.zero_()
            for row in v:
                out.add_(row.to(out.device, out.dtype))
        else:
            if v.numel() != op.n:
                raise UserError(f"start vector has {v.numel()} entries, expected {op.n}")
            out.copy_(v.reshape(-1).to(out.device, out.dtype))
    nq = op.norm(out)
    if not math.isfinite(nq) or nq == 0:
        raise UserError("the Lanczos start vector is zero or not finite")
    out.div_(nq)


def lanczos(
    matvec,
    n: int | None = None,
    steps: int = 30,
    v0: torch.Tensor | None = None,
    seed: int | torch.Generator | None = 0,
    state: LanczosState | None = None,
    device=None,
    max_basis: int | None = None,
    dtype: torch.dtype | None = None,
) -> LanczosState:
    """Run (or continue) Lanczos with full reorthogonalisation.

    Every new vector is orthogonalised against the kept ones (classical Gram-Schmidt,
    repeated when the DGKS criterion asks for it: "twice is enough"), so the Ritz values
    carry no ghost copies and residual estimates stay honest. When the Krylov space becomes invariant
    (β ≈ 0) before `n` steps, a fresh random vector orthogonal to the basis continues
    the process, so repeated eigenvalues are found too.

    The vectors are kept in the operator's dtype (float64 for matrices and plain functions,
    `dtype` if given); the tridiagonal bookkeeping is float64. `max_basis` bounds the rows
    kept (q_next and the product being formed included): past it the oldest rows are dropped
    and new vectors are orthogonalised against the last ones only (enough for the quadrature
    of `slq`; `lanczos_eigs` restarts instead). None keeps every row.

    Args:
        matvec: the symmetric operator (see `CountingOperator`).
        n: dimension (needed only for a plain function).
        steps: how many steps to add (capped at n in total).
        v0: start vector [n], or a block [b, n] of start vectors (their sum starts the
            process: a warm start from earlier eigenvectors); a seeded Gaussian vector if None.
        state: a previous `LanczosState` to extend.
    """
    op = matvec if isinstance(matvec, CountingOperator) else CountingOperator(matvec, n, device, dtype=dtype)
    n = op.n
    gen = _generator(seed)
    st = state or LanczosState()
    if st.basis_rows is None:
        if max_basis is not None and max_basis < 3:
            raise UserError(f"Lanczos needs room for at least 3 vectors, got max_basis={max_basis}")
        st.basis_rows = Basis(n, op.dtype, op.device, max_basis)
    B = st.basis_rows
    if st.steps == 0 and st.next_slot is None and not len(B):
        slot = B.new_slot()
        _start_vector(op, v0, gen, B.row(slot))
        st.next_slot = slot
    target = min(op.dim, st.steps + steps) if not st.thick_restarts else st.steps + steps
    scale = 0.0
    while st.steps < target:
        if st.next_slot is None:
            # invariant subspace found: continue with a random vector orthogonal to the basis
            slot = B.new_slot()
            q = op.normal_into(B.row(slot), gen)
            B.orthogonalise(op, q)
            q.div_(op.norm(q))
            if st.beta:
                st.beta[-1] = 0.0
            st.restarts += 1
        else:
            slot = st.next_slot
        B.order.append(slot)
        st.next_slot = None
        q = B.row(slot)
        prev = B.row(B.order[-2]) if len(st.alpha) and len(B) > 1 else None
        wslot = B.new_slot()
        w = op(q, out=B.row(wslot))
        if not all_finite(w):
            B.free.insert(0, wslot)
            raise UserError("the operator returned NaN or inf (is the loss finite at this point?)")
        a = op.dot(q, w)
        w.sub_(q, alpha=a)
        if prev is not None:
            w.sub_(prev, alpha=st.beta[-1])
        B.orthogonalise(op, w, exclude=(wslot,))
        b = op.norm(w)
        scale = max(scale, abs(a) + b, *(abs(x) for x in st.beta[-1:]))
        st.alpha.append(a)
        st.beta.append(b)
        st.steps += 1
        if b <= 1e-13 * max(scale, 1e-300) * math.sqrt(op.dim) or len(B) >= op.dim:
            B.free.insert(0, wslot)  # q_next is zero
        else:
            w.div_(b)
            st.next_slot = wslot
    return st


def _thick_restart(st: LanczosState, theta: np.ndarray, S: np.ndarray, keep: np.ndarray) -> None:
    """Keep the Ritz vectors `keep` (indices into θ) and q_next; the rest of the basis is freed
    (Wu & Simon 2000). A Q_r = Q_r diag(θ_r) + q_next σᵀ with σ = β_m S[m−1, keep]."""
    B = st.basis_rows
    slots = list(B.order)
    targets = [s for s in slots][: len(keep)]
    combine_rows([B.row(s) for s in slots], S[:, keep], [B.row(s) for s in targets])
    st.sigma = st.beta_m * S[-1, keep]
    st.theta_kept = np.asarray(theta[keep], dtype=np.float64)
    B.keep(targets)
    st.alpha, st.beta = [], []
    st.thick_restarts += 1


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
    restarts: int = 0  # thick restarts of a bounded basis (0: plain Lanczos)

    NAME: ClassVar[str] = "eigenvalues"
    JSON_OMITS: ClassVar[frozenset[str]] = frozenset({"vectors"})  # [k, P]: `save` keeps them

    def to_dict(self) -> dict:
        """The JSON form: the summary's keys and, when recorded, every Ritz value of the last
        Krylov space (``all_ritz_values``); the eigenvectors are left out (`save` keeps them)."""
        d = self.summary()
        if self.all_ritz_values is not None:
            d["all_ritz_values"] = np.asarray(self.all_ritz_values).tolist()
        if self.restarts:
            d["thick_restarts"] = self.restarts
        return d

    @classmethod
    def from_dict(cls, d) -> "EigResult":
        ritz = d.get("all_ritz_values")
        return cls(np.asarray(d["eigenvalues"], float), np.asarray(d["residuals"], float), None, d["matvecs"],
                   d["lanczos_steps"], d["converged"], d["which"], d.get("residual_kind", "exact"),
                   None if ritz is None else np.asarray(ritz, float), restarts=d.get("thick_restarts", 0))

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
            v = torch.as_tensor(self.vectors).detach().cpu()  # in its own dtype: no float64 copy of [k, P]
            out[f"{prefix}vectors"] = (v.float() if v.dtype in (torch.float16, torch.bfloat16) else v).numpy()
        if self.all_ritz_values is not None:
            out[f"{prefix}all_ritz_values"] = np.asarray(self.all_ritz_values)
        return out

    def metadata(self) -> dict:
        d = {"matvecs": self.matvecs, "lanczos_steps": self.steps, "converged": self.converged, "which": self.which,
             "residual_kind": self.residual_kind}
        if self.restarts:
            d["thick_restarts"] = self.restarts
        return d

    @classmethod
    def from_arrays(cls, arrays, metadata=None, prefix: str = "") -> "EigResult":
        m = metadata or {}
        vec = arrays.get(f"{prefix}vectors")
        return cls(np.asarray(arrays[f"{prefix}eigenvalues"]), np.asarray(arrays[f"{prefix}residuals"]),
                   None if vec is None else torch.from_numpy(np.asarray(vec)), m.get("matvecs", 0),
                   m.get("lanczos_steps", 0), bool(m.get("converged", False)), m.get("which", "largest"),
                   m.get("residual_kind", "exact"), arrays.get(f"{prefix}all_ritz_values"), m.get("thick_restarts", 0))


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


def keep_count(n_want: int, max_basis: int) -> int:
    """Ritz vectors kept at a thick restart: the wanted ones plus half the spare rows (at least
    one step of room is left for the next cycle)."""
    return max(n_want, min(max_basis - 3, n_want + max(0, max_basis - 2 - n_want) // 2))


def _eig_operator(matvec, n, k: int, which: str, residuals: str, device, dtype) -> tuple[CountingOperator, int]:
    """The eigensolvers' checked arguments: the counting operator and how many pairs are wanted
    (k, or 2k for 'both')."""
    if k <= 0:
        raise UserError(f"k must be positive, got {k}")
    if residuals not in ("exact", "estimate"):
        raise UserError(f"residuals must be 'exact' or 'estimate', got {residuals!r}")
    _pick(np.zeros(1), 1, which)  # validate `which`
    op = matvec if isinstance(matvec, CountingOperator) else CountingOperator(matvec, n, device, dtype=dtype)
    n_want = k * (2 if which == "both" else 1)
    if n_want > op.dim:
        raise UserError(f"asked for {n_want} eigenvalues of a {op.dim}×{op.dim} operator")
    return op, n_want


def _ritz_result(op: CountingOperator, Y: torch.Tensor, theta: np.ndarray, idx: np.ndarray, est: np.ndarray,
                 residuals: str, out: torch.Tensor | None = None, **fields) -> EigResult:
    """The `EigResult` of the Ritz vectors Y [k, n] (normalised here) with values theta[idx]:
    residuals measured with one product each ('exact', written into `out` when given) or the
    Lanczos estimates `est`."""
    for y in Y:
        y.div_(op.norm(y))
    vals = theta[idx]
    if residuals == "exact":
        res = []
        for y, v in zip(Y, vals):
            r = op(y, out=out)
            res.append(op.norm(r.sub_(y, alpha=float(v))))
            del r
        res = np.array(res)
    else:
        res = est
    return EigResult(values=np.asarray(vals, dtype=np.float64), residuals=np.asarray(res, dtype=np.float64),
                     vectors=Y, matvecs=op.calls, residual_kind=residuals, all_ritz_values=theta, **fields)


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
    max_basis: int | None = None,
    dtype: torch.dtype | None = None,
) -> EigResult:
    """The k extreme eigenpairs by Lanczos with full reorthogonalisation.

    The Krylov space grows until each wanted Ritz pair has residual estimate
    ``|β_m s_{m,i}| ≤ tol · max|θ|`` (the spectral-norm estimate), or `max_steps`
    (or n) steps. With full reorthogonalisation that estimate equals the true residual
    up to rounding; ``residuals='exact'`` spends k more products to report
    ``||A y − θ y||`` measured directly.

    `max_basis` bounds the vectors kept at once (the basis, q_next and the product being
    formed): when the basis is full before convergence, a thick restart (Wu & Simon 2000) keeps
    the wanted Ritz vectors and a few more and the process continues from q_next; the memory
    is then `max_basis` vectors of the operator's dtype whatever the number of steps. None keeps
    every vector (plain Lanczos, the same steps as always). `v0` may be a start vector or a
    block [b, n] of them (a warm start: their sum).

    Returns an `EigResult` (vectors [k, n] in the operator's dtype).
    """
    op, n_want = _eig_operator(matvec, n, k, which, residuals, device, dtype)
    n = op.n
    if max_basis is not None and max_basis < n_want + 3:
        raise UserError(f"max_basis={max_basis} leaves no room: {n_want} eigenvector(s) need at least {n_want + 3} "
                        "vectors (the Ritz vectors, q_next, the product)")
    max_steps = min(max_steps, op.dim)
    first = min(max_steps, min_steps if min_steps is not None else max(2 * n_want + 8, 12))
    gen = _generator(seed)
    st = LanczosState(basis_rows=Basis(n, op.dtype, op.device, max_basis, head=n_want))
    B = st.basis_rows
    target = first
    converged = False
    while True:
        room = op.dim if max_basis is None else max_basis - len(B.order) - 1  # q_next takes a row too
        grow = min(target - st.steps, room)
        if grow > 0:
            before = op.calls
            lanczos(op, steps=grow, v0=v0, seed=gen, state=st)
            if progress:
                progress(op.calls - before)
        theta, S = st.ritz()
        idx = _pick(theta, k, which)
        spec = max(float(np.abs(theta).max()), 1e-300)
        est = np.abs(st.beta_m * S[-1, idx])
        if (len(idx) >= n_want and np.all(est <= tol * spec)) or len(B.order) >= op.dim:
            converged = True
            break
        if st.steps >= max_steps:
            break
        if st.steps < target:  # the basis is full: restart with the wanted Ritz vectors (and a few more)
            r = keep_count(n_want, max_basis)
            keep = _pick(theta, r if which != "both" else max(1, r // 2), which)
            _thick_restart(st, theta, S, keep)
            continue
        target = st.steps + min(check_every, max_steps - st.steps)
    # the Ritz vectors into the head block (n_want rows allocated first), then free the rest
    head = [(0, i) for i in range(len(idx))]
    combine_rows(B.rows(), S[:, idx], [B.row(h) for h in head])
    B.keep(head)
    B.release_unused()
    return _ritz_result(op, B.blocks[0][: len(idx)], theta, idx, est, residuals, steps=st.steps,
                        converged=converged, which=which, restarts=st.thick_restarts)


def lanczos_eigs_spilled(
    matvec,
    n: int | None = None,
    k: int = 1,
    which: str = "largest",
    tol: float = 1e-6,
    max_steps: int = 300,
    min_steps: int | None = None,
    seed: int | torch.Generator | None = 0,
    v0: torch.Tensor | None = None,
    residuals: str = "exact",
    device=None,
    progress: Callable[[int], None] | None = None,
    dtype: torch.dtype | None = None,
    directory: str | None = None,
) -> EigResult:
    """The k extreme eigenpairs by Lanczos with two vectors in memory and the basis on disk.

    The three-term recurrence ``β_j q_{j+1} = A q_j − α_j q_j − β_{j−1} q_{j−1}`` needs only
    q_j and the product in memory: each q_j is written to a temporary file (`SpilledRows`) and
    q_{j−1} is read back from it, chunk by chunk. Orthogonality is kept where it is lost
    (Paige 1971): against q_j once more each step, and against every Ritz vector whose residual
    falls below √ε·max|θ| (selective orthogonalisation, Parlett & Scott 1979: such a vector is
    formed from the file once and kept, so ghost copies of converged eigenvalues cannot appear).
    The wanted Ritz vectors are formed from the file at the end. Memory: 2 vectors, plus one
    per locked Ritz vector (at most n_want), plus n_want for the result (reusing the two):
    at most ``n_want + 2`` vectors; the disk holds one vector per step.

    Stopping rule, arguments and result as `lanczos_eigs` (``restarts`` is 0; the Ritz values
    are those of the final tridiagonal matrix).
    """
    op, n_want = _eig_operator(matvec, n, k, which, residuals, device, dtype)
    n = op.n
    max_steps = min(max_steps, op.dim)
    first = min(max_steps, min_steps if min_steps is not None else max(2 * n_want + 4, 8))
    eps = float(torch.finfo(op.dtype).eps)
    gen = _generator(seed)
    q, w = op.empty(), op.empty()
    _start_vector(op, v0, gen, q)
    rows = SpilledRows(n, op.dtype, op.device, directory)
    alpha: list[float] = []
    beta: list[float] = []
    locked: list[tuple[float, torch.Tensor]] = []  # (θ, Ritz vector) kept for selective orthogonalisation
    converged, scale = False, 0.0
    try:
        while True:
            if alpha and not rows.has_room():  # the disk is full: stop with what converged so far
                warnings.warn(f"Lanczos stopped after {len(alpha)} steps: {rows.directory} has no room for "
                              "another vector (set TMPDIR to a larger disk)", stacklevel=3)
                break
            j = rows.append(q)
            op(q, out=w)
            if progress:
                progress(1)
            if not all_finite(w):
                raise UserError("the operator returned NaN or inf (is the loss finite at this point?)")
            with exact(w):
                a = op.dot(q, w)
                w.sub_(q, alpha=a)
                if j:
                    rows.axpy(j - 1, -beta[-1], w)
                c = op.dot(q, w)  # the local orthogonality the recurrence loses first
                w.sub_(q, alpha=c)
                for _, y in locked:
                    w.sub_(y, alpha=op.dot(y, w))
            b = op.norm(w)
            alpha.append(a + c)
            beta.append(b)
            steps = len(alpha)
            scale = max(scale, abs(a + c) + b)
            tiny = b <= 1e-13 * scale * math.sqrt(op.dim)
            # the Ritz pairs every step (O(m²)): a wanted pair that converged to the vectors' own
            # precision is locked at once, before the recurrence can make a ghost copy of it
            theta, S = eigh_tridiagonal(np.asarray(alpha), np.asarray(beta[:-1])) if steps > 1 else \
                (np.asarray(alpha), np.ones((1, 1)))
            idx = _pick(theta, k, which)
            spec = max(float(np.abs(theta).max()), 1e-300)
            est = np.abs(b * S[-1, idx])
            if steps >= first or steps >= max_steps or tiny:
                if tiny or (len(idx) >= n_want and np.all(est <= tol * spec)) or steps >= op.dim:
                    converged = len(idx) >= n_want
                    break
                if steps >= max_steps:
                    break
            for i in idx[np.abs(b * S[-1, idx]) <= math.sqrt(eps) * spec]:
                if len(locked) < n_want and not any(abs(t - theta[i]) <= 1e-9 * spec for t, _ in locked):
                    y = op.empty()
                    rows.combine(S[:, [i]], [y])
                    y.div_(op.norm(y))
                    locked.append((float(theta[i]), y))
            w.div_(b)
            q, w = w, q  # q_{j+1}; q_j lives on in the file
        # the Ritz vectors, formed from the file: into q (k' = 1) or a new block (q and w freed first)
        locked.clear()
        y = None  # (the last locked vector, still named by the loops above)
        if len(idx) == 1:
            Y = q.view(1, -1)
        else:
            del q, w
            Y = op.empty(len(idx))
            w = None
        rows.combine(S[:, idx], list(Y))
    finally:
        rows.close()
    # the residual products go into w, free again (None for several vectors: one is allocated)
    return _ritz_result(op, Y, theta, idx, est, residuals, out=w, steps=len(alpha), converged=converged,
                        which=which, restarts=0)


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
    diagonal block is estimated from the same products. Two vectors are kept at a time (z
    and Az), in the operator's dtype; the sums are float64.
    """
    if samples < 1:
        raise UserError(f"samples must be at least 1, got {samples}")
    op = matvec if isinstance(matvec, CountingOperator) else CountingOperator(matvec, n, device)
    gen = _generator(seed)
    tot, per_block = [], []
    z = op.empty()
    for _ in range(samples):
        _rademacher(op, gen, out=z)
        az = op(z)
        az.mul_(z)
        tot.append(_sum64(op, az))
        if blocks is not None:
            per_block.append(_block_sums64(op, az, blocks))
        del az
        if progress:
            progress(1)
    tot = torch.tensor(tot, dtype=torch.float64)
    t, se = _stats(tot)
    blk = None
    if blocks is not None:
        Bs = torch.stack(per_block)
        blk = {name: _stats(Bs[:, i]) for i, (name, _) in enumerate(blocks)}
    return TraceResult(trace=t, stderr=se, matvecs=op.calls, method="hutchinson", samples=tot.numpy(), blocks=blk)


def _sum64(op: CountingOperator, x: torch.Tensor) -> float:
    """Σ x in float64 (chunked, reduced over shards)."""
    s = float(x.double().sum()) if x.numel() <= (1 << 22) else sum(float(c.double().sum()) for c in x.split(1 << 22))
    return float(op.reduce(torch.tensor([s], dtype=torch.float64)).item()) if op.reduce is not None else s


def _block_sums64(op: CountingOperator, x: torch.Tensor, blocks) -> torch.Tensor:
    """[B] float64 sums of x over each block."""
    out = torch.tensor([float(x[sl].double().sum()) if x[sl].numel() <= (1 << 22) else
                        sum(float(c.double().sum()) for c in x[sl].split(1 << 22)) for _, sl in blocks],
                       dtype=torch.float64)
    return op.reduce(out) if op.reduce is not None else out


def exact_trace(op: "CountingOperator", blocks: Sequence[tuple[str, slice]] | None = None,
                progress: Callable[[int], None] | None = None) -> TraceResult:
    """tr(A) = Σ_i e_iᵀ A e_i with n products: what a randomised estimate spends anyway once
    its budget reaches the dimension (a random sketch of n ±1 vectors is often singular)."""
    diag = torch.empty(op.n, dtype=torch.float64, device=op.device)
    e = op.empty()
    for i in range(op.n):
        e.zero_()
        e[i] = 1.0
        diag[i] = float(_tick(op(e), progress)[i])
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
    max_sketch: int | None = None,
) -> TraceResult:
    """Hutch++: tr(A) = tr(QᵀAQ) + tr((I−QQᵀ)A(I−QQᵀ)), Q an orthonormal basis of A·S.

    `matvecs` products (a multiple of 3 is best) go one third to A·S, one third to A·Q
    and one third to Hutchinson probes on the complement. When `matvecs` reaches the
    dimension n the trace is computed exactly with n products instead (`exact_trace`). The first term is exact for a
    given Q; the standard error is that of the Hutchinson term. Per-block traces use
    ``tr(P_b A) = Σ_c (P_b q_c)·(A q_c) + E[(P_b w)·(A w)]``, w = (I−QQᵀ)g.

    `max_sketch` bounds the sketch's width s (default matvecs // 3): memory is s + 2 vectors
    of the operator's dtype (Q, a probe and its product), and the products the sketch does
    not take go to the Hutchinson part. Q is orthonormalised in place (classical
    Gram-Schmidt twice, dropping numerically dependent columns).
    """
    if matvecs < 3:
        raise UserError(f"Hutch++ needs at least 3 products, got {matvecs}")
    op = matvec if isinstance(matvec, CountingOperator) else CountingOperator(matvec, n, device)
    n = op.n
    if op.dim <= matvecs and op.fill is None:
        return exact_trace(op, blocks, progress)
    gen = _generator(seed)
    s = min(matvecs // 3, op.dim)
    if max_sketch is not None:
        s = max(0, min(s, int(max_sketch)))
    g_count = max(matvecs - 2 * s, 1)
    # A·S, one column at a time (S is drawn first, as one [n, s] Rademacher block was)
    Q = Basis(n, op.dtype, op.device, capacity=max(s, 1), head=max(s, 1))
    raw = [normal_free_slot(Q, lambda out: _rademacher(op, gen, out=out)) for _ in range(s)]
    for slot in raw:
        col = Q.row(slot)
        prod = _tick(op(col), progress)
        col.copy_(prod)
        del prod
    # orthonormal basis of range(A·S), dropping numerically zero directions (A of low rank)
    norms = [op.norm(Q.row(sl)) for sl in raw]
    top = max(norms, default=0.0)
    for slot, nrm in zip(raw, norms):
        w = Q.row(slot)
        if not nrm > 1e-12 * max(top, 1e-300):
            continue
        Q.orthogonalise(op, w)
        Q.orthogonalise(op, w)
        nw = op.norm(w)
        if nw > 1e-6 * nrm and nw > 0:
            w.div_(nw)
            Q.order.append(slot)
    Q.keep(list(Q.order))
    deflated = 0.0
    bq = torch.zeros(len(blocks), dtype=torch.float64) if blocks is not None else None
    for q in Q.rows():
        aq = _tick(op(q), progress)
        aq.mul_(q)
        deflated += _sum64(op, aq)
        if blocks is not None:
            bq += _block_sums64(op, aq, blocks)
        del aq
    tot, per_block = [], []
    g = op.empty()
    for _ in range(g_count):
        _rademacher(op, gen, out=g)
        if len(Q) == op.dim:  # (the whole dimension: a rank's piece n may be shorter than the sketch)
            tot.append(0.0)
            if blocks is not None:
                per_block.append(torch.zeros(len(blocks), dtype=torch.float64))
            continue
        if len(Q):
            _project_out(op, Q, g)
        ag = _tick(op(g), progress)
        ag.mul_(g)
        tot.append(_sum64(op, ag))
        if blocks is not None:
            per_block.append(_block_sums64(op, ag, blocks))
        del ag
    tot = torch.tensor(tot, dtype=torch.float64)
    rest, se = _stats(tot)
    if g_count == 1:
        se = float("nan")
    blk = None
    if blocks is not None:
        Bg = torch.stack(per_block)
        blk = {}
        for i, (name, _) in enumerate(blocks):
            m_, e_ = _stats(Bg[:, i])
            blk[name] = (float(bq[i]) + m_, e_)
    return TraceResult(trace=deflated + rest, stderr=se, matvecs=op.calls, method="hutch++",
                       samples=tot.numpy(), blocks=blk, deflated=deflated)


def normal_free_slot(basis: Basis, fill) -> tuple:
    """A new slot of `basis` (not in its order yet) filled by ``fill(row)``."""
    slot = basis.new_slot()
    fill(basis.row(slot))
    return slot


def _project_out(op: CountingOperator, Q: Basis, g: torch.Tensor) -> None:
    """g ← g − Q(Qᵀg), one pass (Q orthonormal), in place."""
    blocks = [B for B, _ in Q.used_blocks()]
    with exact(g):
        for B, h in zip(blocks, op.project(blocks, g)):
            g.addmv_(B.T, h.to(g.dtype), alpha=-1)


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
    max_basis: int | None = None,
) -> SLQResult:
    """Spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    For each of `probes` Rademacher start vectors, `steps` Lanczos steps (full
    reorthogonalisation; vectors in the operator's dtype, T in float64) give T; its
    eigen-decomposition by the symmetric tridiagonal solver gives nodes θ_j and weights
    τ_j = (s_{1j})², a quadrature of vᵀ f(A) v / n. `max_basis` bounds the vectors kept:
    beyond it each new vector is orthogonalised against the last `max_basis` − 2 only (the
    quadrature stays a valid one in finite precision; a converged node may then appear twice).
    """
    if probes < 1 or steps < 1:
        raise UserError("slq needs at least one probe and one step")
    op = matvec if isinstance(matvec, CountingOperator) else CountingOperator(matvec, n, device)
    gen = _generator(seed)
    steps = min(steps, op.dim)
    nodes, weights = [], []
    for _ in range(probes):
        before = op.calls
        v0 = _rademacher(op, gen, dtype=op.dtype)
        st = lanczos(op, steps=steps, v0=v0, seed=gen, max_basis=max_basis)
        del v0
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
    tr = op.dim * np.nansum(N * W, axis=1)
    se = float(tr.std(ddof=1) / math.sqrt(probes)) if probes > 1 else float("nan")
    return SLQResult(nodes=N, weights=W, matvecs=op.calls, n=op.dim, trace=float(tr.mean()), trace_stderr=se)


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
