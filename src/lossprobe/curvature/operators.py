"""Curvature operators beyond the Hessian: GGN, Fisher (sampled or exact), empirical Fisher, K-FAC.

Each is a symmetric positive semi-definite operator on the same footing as
`lossprobe.hessian.HessianOperator`: the same parameter selection (``params=``), the same
batch contract (`Objective.forward` and its criterion: any batch, ``forward=``, counts from
the loss), float64 vectors in and out, ``embed``/``restrict``/``blocks`` for per-layer
traces, ``counting()`` for the algorithms of `lossprobe.curvature`. `hessian.eigenvalues`,
`hessian.trace`, `hessian.spectral_density` and `hessian.as_linear_operator` take
``curvature='ggn' | 'fisher' | 'efisher' | 'kfac'``.

With the mean loss ``L(θ) = (1/N) Σ_b Σ_{i∈b} ℓ(z_i(θ), y_i)`` (N the count of the loss:
samples, or tokens that are not -100) and ``J_b`` the Jacobian of batch b's outputs z:

    ggn      G = (1/N) Σ_b J_bᵀ H_b J_b,   H_b the Hessian of the batch's loss sum w.r.t. z
             (closed form for cross_entropy, bce, mse; autograd for a user loss)
    fisher   F = (1/N) Σ_i w_i E_{ỹ∼p(·|z_i)} [g̃_i g̃_iᵀ],   g̃_i = ∇_θ −log p(ỹ | z_i),
             ỹ sampled from the model's predictive distribution (seeded, fixed for the
             operator's life, `mc_samples` per output row); `mc_samples=None` takes the
             exact expectation (enumerated classes for cross_entropy)
    efisher  E = (1/N) Σ_i w_i g_i g_iᵀ with the data's own labels in place of ỹ
    kfac     per Linear/Conv2d layer, G ≈ Γ ⊗ Ω (Martens & Grosse 2015; Grosse & Martens
             2016 for convolutions), block-diagonal over layers

Likelihoods: cross_entropy is −log softmax (w = 1); bce per sample is (1/d) Σ of d Bernoulli
negative log-likelihoods (w = 1/d); mse per sample is (1/d) ‖z − y‖², i.e. (1/d) × the
negative log-likelihood of N(z, I/2) up to a constant (w = 1/d). With these weights the
exact Fisher equals the GGN for all three, and the empirical Fisher is the Fisher with the
data's labels (for cross_entropy it is the familiar (1/N) Σ ∇ℓ_i ∇ℓ_iᵀ).

Products: z, and the graph of z, are computed once per batch and kept (`cache_graph`);
J v is the derivative of the linear map u ↦ Jᵀu (double backward: no forward-mode
formulas needed, so every model that has Hessian products has these), Jᵀw one backward.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lossprobe.core.batching import at_batch
from lossprobe.core.graphs import GraphCache, parse_bytes
from lossprobe.core.losses import IGNORE_INDEX, _ce_layout, _model_labels, is_causal_lm, logits_of
from lossprobe.core.objective import DEFAULT_METHOD, METHODS, Leaves, Objective, hvp, second_order, warn_if_stochastic
from lossprobe.core.space import KINDS
from lossprobe.curvature.algorithms import CountingOperator
from lossprobe.errors import UserError

CURVATURES = ("hessian", "ggn", "fisher", "efisher", "kfac")
NAMES = {"hessian": "Hessian", "ggn": "GGN", "fisher": "Fisher", "efisher": "empirical Fisher", "kfac": "K-FAC"}
KFAC_TYPES = ("auto", "exact", "mc", "empirical")

__all__ = ["CURVATURES", "CurvatureOperator", "HessianOperator", "select_params", "EmpiricalFisherOperator", "FisherOperator", "GGNOperator",
           "KFACOperator", "OutputLoss", "curvature_operator", "dense"]


# --- the loss as a function of the output rows ------------------------------------------------
class OutputLoss:
    """The loss of one batch as a function of its output rows ``z`` [R, C].

    kind: 'cross_entropy', 'bce', 'mse' (closed forms, likelihoods) or 'generic' (autograd,
    no likelihood: GGN and empirical Fisher only). `rows(output, batch)` gives (z, target)
    in the loss's layout: logits [N, C] with labels [N] for cross_entropy (tokens of
    [B, T, C] outputs are rows; a causal LM's logits are shifted), [B, d] for bce and mse.
    """

    def __init__(self, objective: Objective):
        crit = objective.criterion
        kind = crit.loss.kind
        self.target = crit.target
        self.causal = kind == "model" and is_causal_lm(objective.model)
        self.loss_fn = crit.loss if kind == "custom" else None
        # the model's own loss is the cross-entropy of its logits (HF classification and LM heads)
        self.kind = {"model": "cross_entropy", "custom": "generic"}.get(kind, kind)
        self.from_model = kind == "model"
        self.name = crit.loss.name

    def rows(self, output, batch):
        """(z [R, C] differentiable, target) of a batch from the model's output."""
        y = self.target(batch)
        if self.from_model:

            y = _model_labels(y, batch)
            if y is None or y.is_floating_point():
                raise UserError("curvature with loss='model' reads the model's loss as cross-entropy on its logits, "
                                "but the batch has no integer labels; pass loss='cross_entropy' (or mse/bce)")
            z = logits_of(output)
            if self.causal and z.ndim == 3 and y.ndim == 2:
                z, y = z[:, :-1], y[:, 1:]
            return _ce_layout(z, y)
        if self.kind == "cross_entropy":
            return _ce_layout(logits_of(output), y)
        if self.kind in ("bce", "mse"):
            z = logits_of(output)
            if y is None or z.numel() != y.numel():
                raise UserError(f"{self.kind}: outputs {list(z.shape)} do not fit targets")
            b = z.shape[0] if z.ndim else 1
            return z.reshape(b, -1), y.reshape(b, -1).to(z.dtype)
        if not isinstance(output, torch.Tensor):
            raise UserError(f"curvature with the loss '{self.name}' needs a model that returns a tensor (it returned "
                            f"{type(output).__name__}): pass forward= that returns the output tensor")
        return output, y

    def check_model_loss(self, output, batch) -> None:
        """For loss='model': the model's own loss must equal cross-entropy on its logits."""
        loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
        z, y = self.rows(output, batch)
        mine = F.cross_entropy(z.detach().double(), y, ignore_index=IGNORE_INDEX)
        if not isinstance(loss, torch.Tensor) or not torch.allclose(loss.detach().double(), mine, rtol=1e-4, atol=1e-6):
            raise UserError("curvature with loss='model' reads the model's loss as cross-entropy on its logits, but "
                            f"they differ on the first batch ({float(loss) if isinstance(loss, torch.Tensor) else loss} "
                            f"vs {float(mine):.6g}); pass loss='cross_entropy', 'mse', 'bce' or your own function")

    @property
    def has_likelihood(self) -> bool:
        return self.kind != "generic"

    def _mask(self, y):
        """[R, 1] float mask of rows that count (cross_entropy labels that are not -100)."""
        if self.kind == "cross_entropy" and not y.is_floating_point():
            return (y != IGNORE_INDEX).unsqueeze(-1)
        return None

    def weight(self, z) -> float:
        """w: the loss per row is w × the negative log-likelihood."""
        return 1.0 if self.kind == "cross_entropy" else 1.0 / z.shape[1]

    # H_out u for the batch's loss sum
    def hvp(self, z, y, u, state=None):
        z = z.detach()
        if self.kind == "cross_entropy":
            p = torch.softmax(z, -1)
            hu = p * u - p * (p * u).sum(-1, keepdim=True)
            if y.is_floating_point():
                return hu * y.sum(-1, keepdim=True)
            return hu * self._mask(y)
        if self.kind == "bce":
            s = torch.sigmoid(z)
            return s * (1 - s) * u / z.shape[1]
        if self.kind == "mse":
            return 2.0 * u / z.shape[1]
        zl, g = state
        (hu,) = torch.autograd.grad(g, zl, grad_outputs=u, retain_graph=True, allow_unused=True)
        return torch.zeros_like(u) if hu is None else hu

    def generic_state(self, z, y, batch):
        """For a user loss: z as a leaf and the gradient of the loss sum w.r.t. it (with graph)."""
        zl = z.detach().requires_grad_(True)
        with torch.enable_grad():
            s, _ = self.loss_fn.fn(zl, y, batch)
            (g,) = torch.autograd.grad(s, zl, create_graph=True)
        return zl, g

    def gradient(self, z, y, batch=None):
        """∇_z of the batch's loss sum at the data's labels [R, C] (rows: per-row gradients)."""
        zl = z.detach().requires_grad_(True)
        with torch.enable_grad():
            if self.kind == "generic":
                s, _ = self.loss_fn.fn(zl, y, batch)
            elif self.kind == "cross_entropy":
                s = (F.cross_entropy(zl, y, reduction="sum") if y.is_floating_point()
                     else F.cross_entropy(zl, y, reduction="sum", ignore_index=IGNORE_INDEX))
            elif self.kind == "bce":
                s = F.binary_cross_entropy_with_logits(zl, y, reduction="sum") / zl.shape[1]
            else:
                s = ((zl - y) ** 2).sum() / zl.shape[1]
            (g,) = torch.autograd.grad(s, zl)
        return g

    def sample(self, z, y, samples: int, gen: torch.Generator):
        """Labels drawn from the model's predictive distribution at z: [samples, R] (classes) or
        [samples, R, C] (bce 0/1, mse Gaussian N(z, I/2)); CPU generator, any device."""
        z = z.detach()
        if self.kind == "cross_entropy":
            p = torch.softmax(z.double(), -1).cpu()
            return torch.multinomial(p, samples, replacement=True, generator=gen).T.contiguous().to(z.device)
        if self.kind == "bce":
            p = torch.sigmoid(z.double()).cpu()
            return torch.bernoulli(p.expand(samples, *p.shape), generator=gen).to(z.device, z.dtype)
        if self.kind == "mse":
            eps = torch.randn(samples, *z.shape, generator=gen, dtype=torch.float64) * math.sqrt(0.5)
            return (z.unsqueeze(0) + eps.to(z.device, z.dtype))
        raise UserError(f"the Fisher needs a likelihood: loss '{self.name}' is not cross_entropy, bce or mse "
                        "(use curvature='ggn' or 'efisher')")

    def factors(self, z, y, how: str, labels=None, batch=None):
        """Rows r [S, R, C] with Q = Σ_s r_s r_sᵀ per row, the output-space matrix of:
        'exact' (the exact Fisher = H_out), 'mc' (sampled `labels`), 'empirical' (data labels)."""
        z = z.detach()
        m = self._mask(y) if y is not None and not (self.kind == "generic") else None
        if how == "empirical":
            w = self.weight(z) if self.has_likelihood else 1.0
            r = self.gradient(z, y, batch)[None] / math.sqrt(w)
            return r
        if how == "exact":
            if self.kind == "cross_entropy":
                p = torch.softmax(z, -1)
                eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
                r = p.sqrt().T[:, :, None] * (eye[:, None, :] - p[None])  # [C, R, C]: √p_c (e_c − p)
                if y.is_floating_point():
                    r = r * y.sum(-1, keepdim=True).sqrt()[None]
                return r * m[None] if m is not None else r
            C = z.shape[1]
            if self.kind == "mse":
                scale = torch.full_like(z, math.sqrt(2.0 / C))
            elif self.kind == "bce":
                s = torch.sigmoid(z)
                scale = (s * (1 - s) / C).sqrt()
            else:
                raise UserError(f"K-FAC 'exact' needs cross_entropy, bce or mse, not the loss '{self.name}'")
            eye = torch.eye(C, dtype=z.dtype, device=z.device)
            return eye[:, None, :] * scale[None]
        # sampled labels: r = √(w/S) ∇_z −log p(ỹ|z)
        S = labels.shape[0]
        w = self.weight(z)
        if self.kind == "cross_entropy":
            p = torch.softmax(z, -1)
            r = p[None] - F.one_hot(labels, z.shape[1]).to(z.dtype)
            if y.is_floating_point():
                r = r * y.sum(-1, keepdim=True).sqrt()[None]
            elif m is not None:
                r = r * m[None]
        elif self.kind == "bce":
            r = torch.sigmoid(z)[None] - labels
        else:
            r = 2.0 * (z[None] - labels)
        return r * math.sqrt(w / S)


# --- the operators ------------------------------------------------------------------------
def _blocks(space, mask, names=None) -> list[tuple[str, slice]]:
    """(module name, slice of the selected coordinates) in layout order: per-layer traces
    (the selection as a mask [P], or as the names of wholly selected tensors)."""
    pos, groups = 0, {}
    for e in space.entries:
        k = int(mask[e.slice].sum()) if mask is not None else (e.numel if e.name in names else 0)
        if not k:
            continue
        module = e.name.rpartition(".")[0] or e.name
        if module in groups and groups[module].stop == pos:
            groups[module] = slice(groups[module].start, pos + k)
        else:
            groups[module if module not in groups else f"{e.name}"] = slice(pos, pos + k)
        pos += k
    return list(groups.items())


def select_entries(objective: Objective, params=None) -> tuple[list[str] | None, torch.Tensor | None]:
    """The selection of `params` as the names of wholly selected tensors (no P-sized mask is
    made), or (None, a boolean mask [P]) when it selects parts of tensors."""
    space = objective.space
    if params is None:
        live = dict(objective.model.named_parameters())
        names = [e.name for e in space.entries if e.kind != "buffer" and e.name in live and live[e.name].requires_grad]
        if not names:
            raise UserError("no parameters selected for the Hessian (all frozen, or the selection is empty)")
        return names, None
    mask = select_params(objective, params)
    names = [e.name for e in space.entries if bool(mask[e.slice].all())]
    if sum(space[n].numel for n in names) == int(mask.sum()):
        return names, None
    return None, mask


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


class CurvatureOperator:
    """Common part: the point, the parameter selection, vectors in and out, counting.

    Subclasses implement ``_apply(v_full, out_full) -> out_full``: the full product [P] in
    the model's dtype, written into `out_full` (zeroed by them). Vectors of the algorithms are
    [n] (the selected coordinates) in `vector_dtype`: the model's dtype, float32 for a
    half-precision model (and float64 for a float64 model). With every parameter selected
    and a float32 model a product reads and writes the caller's vectors in place: nothing
    P-sized is allocated per product beyond one tensor's gradient.
    """

    name = "curvature"
    fixed_dtype: torch.dtype | None = None  # the dtype `_apply` works in when the operator fixes it (K-FAC)

    @property
    def work_dtype(self) -> torch.dtype:
        """The dtype products are computed in: the model's, float32 for a float16 model (its
        second-order products overflow in float16), or the operator's own (K-FAC: float64)."""
        if self.fixed_dtype is not None:
            return self.fixed_dtype
        dt = self.objective.space.dtype
        return torch.float32 if dt == torch.float16 else dt

    def __init__(self, objective: Objective, theta: torch.Tensor | None = None, params=None,
                 cache_graph: bool | str = "auto", mask: torch.Tensor | None = None):
        if not isinstance(objective, Objective):
            raise TypeError(f"expected a lossprobe Objective, got {type(objective).__name__}")
        if cache_graph not in ("auto", True, False):
            raise UserError(f"cache_graph must be 'auto', True or False, got {cache_graph!r}")
        self.objective = objective
        space = objective.space
        self._theta = None if theta is None else theta.detach().to(objective.device, space.dtype)
        if self._theta is not None:
            space.check_vector(self._theta, "theta")
        entries, mask = select_entries(objective, params) if mask is None else (None, mask)
        self._mask = mask
        self.entries = entries  # names of wholly selected tensors, or None (a coordinate mask)
        self.full = mask is None and len(entries) == len(space.entries)
        self.n = sum(space[n].numel for n in entries) if mask is None else int(mask.sum())
        self._index = None
        self.device = objective.device
        self.calls = 0
        self.cache_graph = cache_graph is True or (cache_graph == "auto" and objective.n_batches == 1)
        self.blocks = _blocks(space, self._mask, None if self._mask is not None else set(self.entries))
        if space.shards is not None and (not self.full or self.name != "hessian"):
            raise UserError(f"a model sharded with fully_shard supports the Hessian of all its parameters, not "
                            f"{'the ' + self.name if self.name != 'hessian' else 'a selection of them'} (that needs "
                            "the whole model on each rank: unwrap it, or use the data-parallel mode)")
        with objective.mode():
            if objective.model.training:
                warn_if_stochastic(objective.model)

    @property
    def theta(self) -> torch.Tensor:
        """The point [P] (the model's own parameters unless given: then a flat copy is made on
        first use; the products themselves read the parameters in place)."""
        return self._theta if self._theta is not None else self.objective.theta0

    @property
    def mask(self) -> torch.Tensor:
        """Boolean mask [P] of the selected coordinates."""
        if self._mask is None:
            space = self.objective.space
            m = torch.zeros(space.numel, dtype=torch.bool)
            for n in self.entries:
                m[space[n].slice] = True
            return m
        return self._mask

    @property
    def index(self) -> torch.Tensor:
        if self._index is None:
            self._index = torch.nonzero(self.mask).squeeze(1).to(self.device)
        return self._index

    @property
    def vector_dtype(self) -> torch.dtype:
        """The dtype of the vectors the algorithms keep: float32 at least, the model's otherwise."""
        dt = self.objective.space.dtype
        return torch.float32 if dt in (torch.float16, torch.bfloat16) else dt

    @property
    def dim(self) -> int:
        """The operator's dimension: `n`, or for a sharded model the whole of which each rank holds n."""
        shards = self.objective.space.shards
        return shards.global_numel if shards is not None else self.n

    @property
    def vector_bytes(self) -> int:
        """Bytes of one [n] vector of `vector_dtype`."""
        return self.n * torch.empty(0, dtype=self.vector_dtype).element_size()

    def leaves(self) -> Leaves:
        """The point as autograd leaves (aliases: the flat θ if given, else the parameters; float32
        copies of a float16 model's)."""
        dt = torch.float32 if self.objective.space.dtype == torch.float16 else None  # (K-FAC's float64 is its factors')
        return Leaves(self.objective, self._theta, None if self._mask is not None else set(self.entries), dtype=dt)

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

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return self.matvec(v)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """C v for v [n] (any float dtype); returns float64 [n]."""
        if v.shape != (self.n,):
            raise UserError(f"vector has shape {tuple(v.shape)}, expected ({self.n},)")
        return self.apply(v.to(self.device, self.vector_dtype)).to(torch.float64)

    def apply(self, v: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """C v for v [n] in `vector_dtype`, written into `out` [n] (allocated when None)."""
        self.calls += 1
        work = self.work_dtype
        if out is None:
            out = torch.empty(self.n, dtype=self.vector_dtype, device=self.device)
        if self.full and v.dtype == work and out.dtype == work:
            self._apply(v, out)
        else:
            full_out = torch.empty(self.objective.space.numel, dtype=work, device=self.device)
            self._apply(self.embed(v, work), full_out)
            out.copy_(self.restrict(full_out))
            del full_out
        return out

    def counting(self) -> CountingOperator:
        """The operator for the algorithms: vectors [n] of `vector_dtype`, products written in place."""
        space = self.objective.space
        sh = space.shards  # a sharded model's vectors are pieces: sums and draws span the ranks
        pieces = {} if sh is None else dict(reduce=sh.reduce, dim=sh.global_numel,
                                            fill=lambda out, gen, kind: sh.fill(out, gen, space.entries, kind))
        return CountingOperator(self.apply, self.n, self.device, dtype=self.vector_dtype, out=True, **pieces)

    def _apply(self, v: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def release(self) -> None:
        """Free cached graphs (rebuilt on the next product)."""

    def set_graph_budget(self, budget: float) -> None:
        """Bytes that kept graphs may take (the probes give what remains of their memory)."""


class HessianOperator(CurvatureOperator):
    """H(θ) of the objective's mean loss, restricted to the chosen parameters.

    Acts on vectors of length ``n`` (the number of selected parameters): `matvec` takes any
    float vector and returns float64; `apply` (what the algorithms use) works in the model's
    dtype (float32 for half-precision models) and writes into a given vector. Products are
    computed in the model's dtype. ``calls`` counts them.

    Args:
        objective: the `Objective` (its model, loss and data and mode).
        theta: the point [P]; the objective's own parameters by default (read in place: the
            gradient graphs are built on leaves that alias the parameters, no copy).
        params: None (all parameters with ``requires_grad``), a list of parameter
            kinds ('weight', 'bias', 'norm'), parameter names or module-name prefixes,
            or a boolean mask [P].
        method: 'auto', 'reverse' (double backward) or 'forward' (forward-over-reverse).
        cache_graph: keep each batch's gradient graph and reuse it for every product (only
            the second backward pass is repeated). 'auto' keeps graphs while their total
            size stays within `cache_budget` and rebuilds the batches that do not fit for
            each product; True keeps every batch's graph; False rebuilds every product.
        cache_budget: bytes the kept graphs may take ('auto'): a number or a string such
            as '2G'; None means what the probe's memory budget leaves (see
            `lossprobe.curvature.hessian`; used alone: half of the memory available when the
            first product runs). See `lossprobe.graphs`.
    """

    name = "hessian"

    def __init__(self, objective: Objective, theta: torch.Tensor | None = None, params=None, method: str = "auto",
                 cache_graph: bool | str = "auto", cache_budget: float | str | None = None):
        if method not in METHODS:
            raise UserError(f"method must be one of {list(METHODS)}, got {method!r}")
        super().__init__(objective, theta, params, cache_graph)
        self.method = DEFAULT_METHOD if method == "auto" else method
        if objective.space.shards is not None:  # products through the gathered model (Objective.sharded_hvp)
            self.method, self.cache_graph, self.budget_given, self.graphs = "reverse", False, True, None
            return
        # the gradient graphs are kept per batch within the budget (not only for one-batch data)
        self.cache_graph = self.method == "reverse" and cache_graph is not False
        budget = float("inf") if cache_graph is True else (None if cache_budget is None else parse_bytes(cache_budget))
        if cache_graph is False:
            budget = 0.0
        self.budget_given = cache_budget is not None or cache_graph != "auto"
        self.graphs = GraphCache(objective, self.leaves(), _gradient_graph(objective), budget=budget,
                                 context=second_order) if self.method == "reverse" else None

    def set_graph_budget(self, budget: float) -> None:
        if self.graphs is not None and not self.budget_given and self.graphs.count is None:
            self.graphs.budget = max(0.0, float(budget))

    def _apply(self, v: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if self.objective.space.shards is not None:
            return self.objective.sharded_hvp(v, self._theta, out=out)
        if self.method != "reverse":
            out.copy_(hvp(self.objective, v, self.theta, method=self.method, check=False))
            return out
        out.zero_()
        lv = self.graphs.leaves
        lv.grads_into(out)
        try:
            vs = lv.views(v)
            for _, g, _ in self.graphs:
                pairs = [(gi, vi, xi) for gi, vi, xi in zip(g, vs, lv.inputs) if gi is not None and gi.requires_grad]
                if pairs:  # no graph: the loss is linear in θ, H = 0
                    torch.autograd.backward([p[0] for p in pairs], grad_tensors=[p[1] for p in pairs],
                                            inputs=lv.inputs, retain_graph=True)
        finally:
            lv.clear()
        (out,) = self.objective._all_reduce(out)
        return out.div_(self.graphs.count)

    def release(self) -> None:
        """Free the kept gradient graphs (they are rebuilt on the next product)."""
        if self.graphs is not None:
            self.graphs.release()


def _gradient_graph(objective: Objective):
    """GraphCache builder: the batch's loss-sum gradient w.r.t. the leaves, with its graph
    (a tuple aligned with ``leaves.inputs``; None for a leaf the loss does not use)."""
    def build(leaves, batch):
        t = objective.terms(leaves.tensors, batch)
        if not t.loss.requires_grad:
            return (None,) * len(leaves.inputs), t.count
        g = torch.autograd.grad(t.loss, leaves.inputs, create_graph=True, allow_unused=True)
        return g, t.count
    return build


@dataclass
class _Batch:
    th: Leaves | None  # the leaves the graph was built from
    z: torch.Tensor  # output rows [R, C] (with graph when th is not None)
    y: object
    u0: torch.Tensor | None  # dummy cotangent; g = Jᵀ u0 has a graph linear in u0
    g: torch.Tensor | None
    extra: object = None  # per-batch data of the output matrix (labels, generic state)


class _OutputSpaceOperator(CurvatureOperator):
    """Jᵀ Q J for an output-space matrix Q per batch (GGN, Fisher, empirical Fisher)."""

    def __init__(self, objective, theta=None, params=None, cache_graph="auto"):
        super().__init__(objective, theta, params, cache_graph)
        self.loss = OutputLoss(objective)
        self._cache: list[_Batch] | None = None
        self._extras: list | None = None
        self._lv: Leaves | None = None
        self.count = self._count_and_check()

    def _count_and_check(self) -> float:
        obj, n = self.objective, 0.0
        with torch.no_grad(), obj.mode(), second_order():
            for i, batch in enumerate(obj.batches()):
                with at_batch(i, obj.data, obj.batch_size):
                    out = obj.forward(self._theta, batch)
                    if i == 0 and self.loss.from_model:
                        self.loss.check_model_loss(out, batch)
                    n += float(obj.criterion.terms(out, batch).count)
        if obj.dist is not None:
            n = float(obj._all_reduce(torch.tensor([n], dtype=torch.float64, device=obj.device))[0][0])
        if n == 0:
            raise UserError("the data yielded no samples")
        return n

    def _extra(self, i, z, y, batch):  # per-batch data fixed for the operator's life
        return None

    def _build(self, batch, i) -> _Batch:
        obj = self.objective
        if self._lv is None:
            self._lv = self.leaves()  # shared by every batch: aliases of the parameters (or of θ)
        lv = self._lv
        z, y = self.loss.rows(obj.forward(lv.tensors, batch), batch)
        if not z.requires_grad:
            return _Batch(None, z.detach(), y, None, None, self._extra(i, z, y, batch))
        u0 = torch.zeros_like(z, requires_grad=True)
        g = torch.autograd.grad(z, lv.inputs, grad_outputs=u0, create_graph=True, allow_unused=True)
        return _Batch(lv, z, y, u0, g, self._extra(i, z, y, batch))

    def _batches(self):
        obj = self.objective
        if self._cache is not None:
            yield from self._cache
            return
        keep = [] if self.cache_graph else None
        for i, batch in enumerate(obj.batches()):
            with at_batch(i, obj.data, obj.batch_size):
                b = self._build(batch, i)
            if keep is not None:
                keep.append(b)
            yield b
        if keep is not None:
            self._cache = keep

    def release(self) -> None:
        self._cache = None

    def _apply(self, v: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        out.zero_()
        with self.objective.mode(), second_order(), torch.enable_grad():
            for b in self._batches():
                if b.th is None:
                    continue
                lv = b.th
                pairs = [(gi, vi) for gi, vi in zip(b.g, lv.views(v)) if gi is not None and gi.requires_grad]
                if not pairs:
                    continue
                (jv,) = torch.autograd.grad([p[0] for p in pairs], b.u0, grad_outputs=[p[1] for p in pairs],
                                            retain_graph=True)
                w = self._output_product(b, jv)
                lv.grads_into(out)
                try:
                    torch.autograd.backward(b.z, grad_tensors=w.to(b.z.dtype), inputs=lv.inputs, retain_graph=True)
                finally:
                    lv.clear()
        (out,) = self.objective._all_reduce(out)
        return out.div_(self.count)

    def _output_product(self, b: _Batch, u):
        raise NotImplementedError


class GGNOperator(_OutputSpaceOperator):
    """The generalised Gauss-Newton matrix G = (1/N) Σ_b J_bᵀ H_b J_b (see the module doc)."""

    name = "ggn"

    def _extra(self, i, z, y, batch):
        if self.loss.kind == "generic":
            return self.loss.generic_state(z, y, batch)
        return None

    def _output_product(self, b, u):
        return self.loss.hvp(b.z, b.y, u, b.extra)


def _factor_product(r: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Σ_s r_s (r_s · u) row by row: r [S, R, ...], u [R, ...] -> [R, ...] (a row is index 0 of u)."""
    rf = r.reshape(r.shape[0], r.shape[1], -1)
    uf = u.reshape(u.shape[0], -1)
    return (rf * (rf * uf[None]).sum(-1, keepdim=True)).sum(0).reshape(u.shape)


class FisherOperator(_OutputSpaceOperator):
    """The Fisher: sampled labels (`mc_samples` per row, seeded, drawn once) or, with
    ``mc_samples=None``, the exact expectation over the model's predictive distribution."""

    name = "fisher"

    def __init__(self, objective, theta=None, params=None, cache_graph="auto", mc_samples: int | None = 1,
                 seed: int = 0):
        if mc_samples is not None and (isinstance(mc_samples, bool) or int(mc_samples) < 1):
            raise UserError(f"mc_samples must be a positive integer or None (exact), got {mc_samples!r}")
        self.mc_samples = None if mc_samples is None else int(mc_samples)
        self.seed = int(seed)
        self._gen = torch.Generator().manual_seed(self.seed)
        super().__init__(objective, theta, params, cache_graph)
        if not self.loss.has_likelihood:
            raise UserError(f"the Fisher needs a likelihood: loss '{self.loss.name}' is not cross_entropy, bce or mse "
                            "(use curvature='ggn' or 'efisher')")
        self._labels: list = []

    def _extra(self, i, z, y, batch):
        if self.mc_samples is None:
            return None
        # labels are drawn once per batch, the first time it is seen, so that the operator is
        # one fixed symmetric matrix for every product (Lanczos needs that)
        while len(self._labels) <= i:
            self._labels.append(None)
        if self._labels[i] is None:
            self._labels[i] = self.loss.sample(z, y, self.mc_samples, self._gen)
        return self._labels[i]

    def _output_product(self, b, u):
        if self.mc_samples is None:
            if self.loss.kind == "cross_entropy":
                return _factor_product(self.loss.factors(b.z, b.y, "exact"), u)
            return self.loss.hvp(b.z, b.y, u)  # bce, mse: E[ggᵀ] is H_out in closed form
        return _factor_product(self.loss.factors(b.z, b.y, "mc", b.extra), u)


class EmpiricalFisherOperator(_OutputSpaceOperator):
    """The empirical Fisher (1/N) Σ_i w_i g_i g_iᵀ, per-row gradients at the data's labels."""

    name = "efisher"

    def _extra(self, i, z, y, batch):
        w = self.loss.weight(z) if self.loss.has_likelihood else 1.0
        return self.loss.gradient(z, y, batch) / math.sqrt(w)

    def _output_product(self, b, u):
        return _factor_product(b.extra[None], u)


# --- K-FAC ----------------------------------------------------------------------------------
class KFACOperator(CurvatureOperator):
    """K-FAC: per Linear / Conv2d layer a Kronecker factor Γ ⊗ Ω of the GGN (or Fisher) block.

    For a layer with inputs a (a column of ones appended when it has a bias; for a Conv2d,
    the unfolded patches at every output position) and output gradients g:

        Ω = (1/N) Σ_rows a aᵀ,    Γ = (1/R) Σ_rows Σ_s g_s g_sᵀ

    N the loss's count, R the rows the layer saw (samples × positions), g_s the gradient of
    the batch's loss sum w.r.t. the layer output when the output rows' cotangents are the
    factors r_s of Q (`OutputLoss.factors`): 'exact' (the C columns of H_out^{1/2}: K-FAC of
    the GGN, C backward passes per batch), 'mc' (`mc_samples` sampled labels: K-FAC of the
    Fisher, as curvlinops' default), 'empirical' (the data's labels). 'auto': exact when the
    outputs have at most 64 columns, else mc.

    Approximations: blocks of different layers (and the weight-bias coupling across layers)
    are zero; within a layer E[a aᵀ ⊗ g gᵀ] ≈ E[a aᵀ] ⊗ E[g gᵀ] (independence of activations
    and output gradients), and for convolutions also across positions (KFC's spatial
    homogeneity and uncorrelated derivatives). It is exact for one sample through a Linear
    layer. Parameters outside Linear/Conv2d layers (norm layers, embeddings, RNNs, grouped
    or padded-by-string convolutions) are left out of the operator with a warning.
    """

    name = "kfac"
    fixed_dtype = torch.float64  # the Kronecker factors are float64

    def __init__(self, objective, theta=None, params=None, kfac_type: str = "auto", mc_samples: int = 1,
                 seed: int = 0):
        if kfac_type not in KFAC_TYPES:
            raise UserError(f"kfac_type must be one of {list(KFAC_TYPES)}, got {kfac_type!r}")
        if int(mc_samples) < 1:
            raise UserError(f"mc_samples must be a positive integer, got {mc_samples!r}")
        space = objective.space
        sel = select_params(objective, params)
        self.layers = self._supported_layers(objective, sel)
        mask = torch.zeros_like(sel)
        for _, _, w, b in self.layers:
            mask[w.slice] = sel[w.slice]
            if b is not None:
                mask[b.slice] = sel[b.slice]
        left = [e.name for e in space.entries if sel[e.slice].any() and not mask[e.slice].any()]
        if not mask.any():
            raise UserError("K-FAC covers Linear and Conv2d layers: none of the selected parameters is in one")
        if left:
            warnings.warn(f"K-FAC covers Linear and Conv2d layers only; left out: {', '.join(left[:6])}"
                          f"{' ...' if len(left) > 6 else ''}", stacklevel=3)
        self.left_out = left
        super().__init__(objective, theta, params=None, mask=mask)
        self.loss = OutputLoss(objective)
        self.mc_samples = int(mc_samples)
        self.seed = int(seed)
        self.kfac_type = kfac_type
        self._factors()

    @staticmethod
    def _supported_layers(objective, sel):
        space = objective.space
        out = []
        for name, mod in objective.model.named_modules():
            ok = isinstance(mod, nn.Linear) or (
                isinstance(mod, nn.Conv2d) and mod.groups == 1 and not isinstance(mod.padding, str)
                and mod.padding_mode == "zeros")
            if not ok:
                continue
            w = space[f"{name}.weight"] if f"{name}.weight" in space else None
            if w is None or not sel[w.slice].any():
                continue
            b = space[f"{name}.bias"] if mod.bias is not None and f"{name}.bias" in space else None
            out.append((name, mod, w, b))
        return out

    def _factors(self) -> None:
        obj = self.objective
        gen = torch.Generator().manual_seed(self.seed)
        mods = {id(m): k for k, (_, m, _, _) in enumerate(self.layers)}
        L = len(self.layers)
        SA: list = [None] * L
        SG: list = [None] * L
        R = [0] * L
        acts: dict[int, list] = {}
        grads: dict[int, list] = {}
        n = 0.0

        def fwd_hook(mod, args, output):
            k = mods[id(mod)]
            acts.setdefault(k, []).append(self._inputs(mod, args[0].detach(), self.layers[k][3] is not None))
            if output.requires_grad:
                output.register_hook(lambda g, k=k: grads.setdefault(k, []).append(self._outputs(g)))

        handles = [m.register_forward_hook(fwd_hook) for _, m, _, _ in self.layers]
        how = self.kfac_type
        try:
            with obj.mode(), second_order(), torch.enable_grad():
                lv = self.leaves()
                for i, batch in enumerate(obj.batches()):
                    with at_batch(i, obj.data, obj.batch_size):
                        acts.clear()
                        out = obj.forward(lv.tensors, batch)
                        if i == 0 and self.loss.from_model:
                            self.loss.check_model_loss(out, batch)
                        n += float(obj.criterion.terms(out, batch).count)
                        z, y = self.loss.rows(out, batch)
                        if how == "auto":
                            how = "exact" if z.shape[-1] <= 64 and self.loss.kind != "generic" else (
                                "mc" if self.loss.has_likelihood else "empirical")
                        if how == "mc":
                            r = self.loss.factors(z, y, "mc", self.loss.sample(z, y, self.mc_samples, gen))
                        else:
                            r = self.loss.factors(z, y, how)
                        for k, a_list in acts.items():
                            a = torch.cat(a_list).double()
                            SA[k] = a.T @ a if SA[k] is None else SA[k] + a.T @ a
                            R[k] += a.shape[0]
                        if not z.requires_grad:
                            continue
                        for s in range(r.shape[0]):
                            grads.clear()
                            torch.autograd.grad(z, lv.inputs, grad_outputs=r[s].to(z.dtype),
                                                retain_graph=s + 1 < r.shape[0], allow_unused=True)
                            for k, g_list in grads.items():
                                g = torch.cat(g_list).double()
                                SG[k] = g.T @ g if SG[k] is None else SG[k] + g.T @ g
        finally:
            for h in handles:
                h.remove()
        if obj.dist is not None:  # data-parallel: the factors are sums over every rank's batches
            SA = [x if x is not None else torch.zeros(0, dtype=torch.float64) for x in SA]
            SG = [x if x is not None else torch.zeros(0, dtype=torch.float64) for x in SG]
            sums = obj._all_reduce(torch.tensor([n, *R], dtype=torch.float64, device=self.device))[0]
            n, R = float(sums[0]), [int(x) for x in sums[1:].tolist()]
            SA = [obj._all_reduce(x)[0] if x.numel() else None for x in SA]
            SG = [obj._all_reduce(x)[0] if x.numel() else None for x in SG]
        if n == 0:
            raise UserError("the data yielded no samples")
        self.kfac_type_used = how
        self.count = n
        self.A, self.G = [], []
        for k, (name, mod, w, b) in enumerate(self.layers):
            out_dim = w.shape[0]
            in_dim = int(np.prod(w.shape[1:])) + (1 if b is not None else 0)
            A = SA[k] / n if SA[k] is not None else torch.zeros(in_dim, in_dim, dtype=torch.float64)
            G = SG[k] / max(R[k], 1) if SG[k] is not None else torch.zeros(out_dim, out_dim, dtype=torch.float64)
            self.A.append(A.to(self.device))
            self.G.append(G.to(self.device))

    def _inputs(self, mod, x, bias: bool):
        """Rows of a layer's inputs [R, in(+1)]: leading dimensions are rows; patches for a conv."""
        if isinstance(mod, nn.Conv2d):
            x = F.unfold(x, mod.kernel_size, dilation=mod.dilation, padding=mod.padding, stride=mod.stride)
            x = x.transpose(1, 2).reshape(-1, x.shape[1])
        else:
            x = x.reshape(-1, x.shape[-1])
        if bias:
            x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], 1)
        return x

    @staticmethod
    def _outputs(g):
        if g.ndim == 4:  # conv output [B, C, H, W]
            return g.detach().permute(0, 2, 3, 1).reshape(-1, g.shape[1])
        return g.detach().reshape(-1, g.shape[-1])

    def _apply(self, v, out):
        out.zero_()
        for (name, mod, w, b), A, G in zip(self.layers, self.A, self.G):
            V = v[w.slice].view(w.shape[0], -1).double()
            if b is not None:
                V = torch.cat([V, v[b.slice].double()[:, None]], 1)
            Y = G @ V @ A
            if b is not None:
                out[b.slice] = Y[:, -1].to(out.dtype)
                Y = Y[:, :-1]
            out[w.slice] = Y.reshape(-1).to(out.dtype)
        return out



# --- construction ---------------------------------------------------------------------------
def curvature_operator(objective: Objective, curvature: str = "ggn", theta: torch.Tensor | None = None, params=None,
                       method: str = "auto", **options):
    """The operator named by `curvature` ('hessian', 'ggn', 'fisher', 'efisher', 'kfac').

    options: ``cache_graph`` (ggn/fisher/efisher, as the Hessian's), ``mc_samples`` and
    ``seed`` (fisher: None for the exact expectation; kfac), ``kfac_type`` (kfac).
    """
    if curvature not in CURVATURES:
        raise UserError(f"curvature must be one of {list(CURVATURES)}, got {curvature!r}")
    allowed = {"hessian": {"cache_graph", "cache_budget"}, "ggn": {"cache_graph"}, "efisher": {"cache_graph"},
               "fisher": {"cache_graph", "mc_samples", "seed"}, "kfac": {"kfac_type", "mc_samples", "seed"}}[curvature]
    bad = sorted(set(options) - allowed)
    if bad:
        raise UserError(f"curvature '{curvature}' takes no option(s) {bad}; it takes {sorted(allowed)}")
    if curvature == "hessian":

        return HessianOperator(objective, theta, params, method, **options)
    cls = {"ggn": GGNOperator, "fisher": FisherOperator, "efisher": EmpiricalFisherOperator,
           "kfac": KFACOperator}[curvature]
    return cls(objective, theta, params, **options)


def dense(op) -> torch.Tensor:
    """The operator as a dense float64 matrix [n, n] (n products: small models only)."""
    n = op.n
    cols = [op.matvec(torch.eye(n, dtype=torch.float64)[i]) for i in range(n)]
    return torch.stack(cols, 1)
