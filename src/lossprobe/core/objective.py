"""The objective: a model, a loss and data, evaluated at points of parameter space.

The hot path of every probe is `Objective.evaluate(coords, origin, directions)`: loss and
accuracy at the K points ``origin + coords @ directions`` of an affine subspace.

Speed comes from two choices:

* Data batches are the outer loop and points the inner loop, so each batch is prepared
  (sliced, moved to the device) once for all K points.
* Nothing that does not move is recomputed (`lossprobe.hoist`): whatever the forward pass
  computes before it first reads a parameter that the directions move is computed once
  per batch, and when that first moving layer is a Linear, Conv or Embedding (linear in
  its weights) its output ``f(x; w0) + sum_i c_i f(x; d_i)`` is combined per point from
  m + 1 outputs computed once per batch. Only the rest of the network runs per point.
  Each plan is verified numerically against a plain forward pass before it is used.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.func import functional_call, grad, jvp
from tqdm.auto import tqdm

from lossprobe.core.batching import Forward, TensorData, as_data, at_batch, leaves, take
from lossprobe.core.hoist import Hoister, Plan, Runner, capture, moving_tensors
from lossprobe.core.losses import Loss, Terms, criterion
from lossprobe.core.distributed import data_parallel
from lossprobe.core.space import ParamSpace
from lossprobe.errors import UserError


@dataclass
class Evaluation:
    """Mean loss [K] and accuracy [K] (NaN when the loss has no accuracy) over `n` samples."""

    loss: np.ndarray
    accuracy: np.ndarray
    n: int

    def __getitem__(self, key: str) -> np.ndarray:
        return getattr(self, key)


class BatchCall(nn.Module):
    """The model called on a batch by the criterion's forward, so that `functional_call`
    can swap its parameters whatever the call looks like."""

    def __init__(self, model: nn.Module, forward: Forward):
        super().__init__()
        self.model = model
        self.batch_forward = forward  # forward(model, batch) -> output

    def forward(self, batch):
        return self.batch_forward(self.model, batch)


@contextlib.contextmanager
def second_order():
    """Attention by the math backend, whose kernels have double-backward and forward-mode
    derivatives (the fused CPU/GPU kernels do not); the caller's setting is restored."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel  # lazy: absent before torch 2.2 (the floor is 2.1)
    except ImportError:  # torch without the attention module: nothing to switch
        yield
        return
    with sdpa_kernel([SDPBackend.MATH]):
        yield


@contextlib.contextmanager
def model_mode(model: nn.Module, train: bool = False):
    """Put `model` in eval (or train) mode and restore every module's own flag after."""
    flags = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def check_fits(model: nn.Module, data, crit, batch_size: int = 8, model_name: str | None = None,
               data_name: str | None = None) -> None:
    """Run a few samples of `data` through `model` in eval mode; one line naming the model,
    the data and the first mismatch if they do not fit. The targets of every sample of
    in-memory data are checked against the loss too (`losses.target_problem`)."""
    data = as_data(data)
    batch = take(data.first(batch_size), slice(0, 2))  # two samples: a transformer pays 2 of its B sequences
    with torch.no_grad(), model_mode(model, False):
        crit.check(model, batch, model_name or type(model).__name__, data_name or f"'{data.name}'",
                   targets=data.tree if isinstance(data, TensorData) else None)



def non_finite_data(data) -> str | None:
    """'holds N NaN or infinite value(s) in its inputs, first at sample i' for in-memory data
    with such values in a floating-point tensor, else None."""
    if not isinstance(data, TensorData):
        return None
    n, first = 0, None
    for t in leaves(data.tree):
        if t.is_floating_point() or t.is_complex():
            bad = ~torch.isfinite(t)
            k = int(bad.sum())
            if k:
                n += k
                i = int(bad.reshape(len(t), -1).any(1).nonzero()[0, 0]) if t.ndim else 0
                first = i if first is None else min(first, i)
    return f"holds {n} NaN or infinite value(s), first at sample {first}" if n else None


def require_finite(model: nn.Module, what: str = "the model") -> nn.Module:
    """Refuse a model with NaN or infinite parameters or buffers in one line naming `what` (a
    checkpoint, say) and the first such tensor; returns the model."""
    bad = total = 0
    first = None
    for name, t in model.state_dict().items():
        if t.is_floating_point():
            n = int((~torch.isfinite(t)).sum())
            if n and first is None:
                first = name
            bad += n
            total += t.numel()
    if bad:
        raise UserError(f"{what} has {bad} non-finite value(s) (NaN or inf) among its {total} weights, first in "
                        f"'{first}'; loss, barriers and curvature are undefined there")
    return model

METHODS = ("auto", "reverse", "forward")
DEFAULT_METHOD = "reverse"  # measured faster on CPU by benchmarks/hessian.py (see docs/curvature.md)
CONV_BATCH = 256  # samples per per-point pass of a conv net on CPU (see evaluate)


class Objective:
    """Loss and accuracy of `model` on `data` as a function of its flat parameters.

    The value is the sum of per-sample (or per-token) losses over all of `data` divided by
    the total count (see `lossprobe.losses`), so it does not depend on `batch_size`.

    Args:
        model: any `nn.Module`; it is not modified (modes are restored after each call).
        data: a `Split`, ``(x, y)`` arrays, ``(x1, ..., xn, y)`` arrays, a dict of arrays, a
            `Dataset` (kept in memory), a `DataLoader` or any re-iterable of batches
            (streamed in its own order, which must be fixed for reproducible results).
            Batches may be tuples, dicts or any nesting of them; they move to the model's
            device.
        loss: 'cross_entropy', 'bce', 'mse', 'model', a `Loss`, a torch loss module or
            ``fn(output, target) -> per-sample losses [B]``; or a `Criterion`.
        forward: ``forward(model, batch) -> output``; by default ``model(x)`` for
            ``(x, y)``, ``model(x1, ..., xn)`` for ``(x1, ..., xn, y)``, ``model(**batch)``
            for a dict.
        metric: ``metric(output, target) -> [B]`` per-sample values reported as accuracy.
        target: ``target(batch) -> target``; by default the last element of a tuple batch,
            ``batch["labels"]`` of a dict.
        batch_size: samples per forward pass for in-memory data.
        include_buffers: put BatchNorm running statistics in the parameter vector, so
            they move along directions too (e.g. interpolating them between two models).
        train_mode: evaluate in train mode (BatchNorm uses batch statistics, dropout is
            active). Default False: probes evaluate the deterministic network.
        shortcut: 'auto' hoists what does not move (see `lossprobe.hoist`: the part of the
            forward pass before the first moving parameter, the first moving layer's
            linear combination, eval-mode BatchNorm folded into convolutions, channels-last
            convolutions on CPU) wherever it is verified exact; True requires it; False
            evaluates every point with a plain forward pass.
        check: run one batch at construction so that a model that does not fit the data
            fails at once with one line.
        distributed: under torch.distributed (torchrun), evaluate this rank's share of the
            batches and sum losses, counts, gradients and curvature products over the ranks
            (data-parallel: every rank gets the numbers of one process). None (default): when a
            process group with more than one rank is initialised; False: never.

    A model wrapped with FSDP2's ``fully_shard`` is probed model-sharded (see
    `lossprobe.core.sharding`): every parameter-sized vector holds this rank's rows, points are
    written into the model in place and evaluated by its own forward (the user's parameters
    are put back after each probe), derivatives gather the model whole.
    """

    def __init__(
        self,
        model: nn.Module,
        data,
        loss="cross_entropy",
        batch_size: int = 4096,
        include_buffers: bool = False,
        train_mode: bool = False,
        shortcut: bool | str = "auto",
        space: ParamSpace | None = None,
        forward: Forward | None = None,
        metric: Callable | None = None,
        check: bool = True,
        target: Callable | None = None,
        distributed: bool | None = None,
    ):
        if batch_size <= 0:
            raise UserError(f"batch_size must be positive, got {batch_size}")
        self.model = model
        self.space = space or ParamSpace(model, include_buffers=include_buffers)
        self.criterion = criterion(loss, forward=forward, metric=metric, model=model, target=target)
        self.batch_size = batch_size
        self.train_mode = train_mode
        self.device = self.space.device
        self.dist = data_parallel(distributed)
        data = as_data(data)
        if isinstance(data, TensorData):
            if len(data) == 0:
                raise UserError(f"data '{data.name}' is empty")
        self.data = data.to(self.device)
        self.call = BatchCall(model, self.criterion.forward)
        self._theta0: torch.Tensor | None = None
        self._fl_cache: _HoistCache | None = None
        if shortcut not in (False, "auto", True):
            raise UserError(f"shortcut must be 'auto', True or False, got {shortcut!r}")
        self.shards = self.space.shards
        if self.shards is not None:
            if shortcut is True or train_mode:
                raise UserError("a model sharded with fully_shard is evaluated by its own forward pass in eval mode: "
                                "shortcut=True and train_mode=True are not supported")
            shortcut = False
            _ = self.theta0  # the user's values: origins read them, probes put the model back from them
        self._shortcut = shortcut
        self._hoister = Hoister(self) if shortcut else None
        if check:
            self.check()
        if shortcut is True and not self.shortcut_active:
            raise UserError("hoisting (the first-layer shortcut) does not apply to this model")

    @property
    def loss(self) -> Loss:
        return self.criterion.loss

    @property
    def theta0(self) -> torch.Tensor:
        """The model's parameters as one flat vector [P] (made on first use and kept: one copy of
        the parameters; the probes that keep to the memory contract never ask for it)."""
        if self._theta0 is None:
            self._theta0 = self.space.flatten(self.model)
        elif self.shards is not None and not self.shards.dirty:
            # a sharded model's copy is where probes restore it from: kept up to date with the user's
            # changes between probes (training, say), read again while no probe has written a point
            with torch.no_grad():
                for e in self.space.entries:
                    self._theta0[e.slice].copy_(self.shards.local(e.name).reshape(-1))
        return self._theta0

    @property
    def vector_bytes(self) -> int:
        """Bytes of one parameter vector in the model's dtype: the model size M of the memory contract."""
        return self.space.numel * torch.empty(0, dtype=self.space.dtype).element_size()

    @property
    def shortcut_active(self) -> bool:
        """Whether evaluate() hoists anything for directions that move every parameter
        (for fewer moving parameters it can hoist more; see `hoisting`)."""
        return self.hoisting() is not None

    def check(self, model_name: str | None = None, data_name: str | None = None) -> None:
        """Evaluate a few samples at the model's own parameters; one line naming the model and
        the data (by these names, when given) if they do not fit."""
        check_fits(self.model, self.data, self.criterion, self.batch_size, model_name, data_name)

    def require_finite_loss(self, where: str = "the model's parameters", data_name: str | None = None) -> float:
        """The loss at the model's own parameters over all the data; one line naming `where`
        (a checkpoint, say) when it is NaN or infinite, as every probe around it would be."""
        loss = float(self.loss_at().loss[0])
        if not np.isfinite(loss):
            bad = non_finite_data(self.data)
            if bad:
                raise UserError(f"data {data_name or repr(self.data.name)} {bad}: the loss is {loss} there, whatever "
                                "the model; remove or fix those samples")
            raise UserError(f"the loss at {where} is {loss} on {data_name or repr(self.data.name)}: the model outputs "
                            "NaN or inf there, so barriers, curvature, sharpness and surfaces around it are undefined")
        return loss

    # --- data ----------------------------------------------------------------------
    @property
    def n_samples(self) -> int:
        return self.data.n_samples

    def batches(self, batch_size: int | None = None) -> Iterator:
        """The data's batches, on the model's device, in a fixed order; under torch.distributed
        (data-parallel), this rank's share of them (see `lossprobe.core.distributed`)."""
        it = self.data.batches(batch_size or self.batch_size)
        return self.dist.shard(it, self.data) if self.dist is not None else it

    def _all_reduce(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Sums over the ranks of a data-parallel run (the tensors as they are otherwise)."""
        return self.dist.all_reduce(*tensors) if self.dist is not None else tensors

    @property
    def n_batches(self) -> int:
        return self.data.n_batches(self.batch_size)

    # --- modes -----------------------------------------------------------------------
    def mode(self, train: bool | None = None):
        """Put the model in eval (or train) mode and restore every module's flag after."""
        return model_mode(self.model, self.train_mode if train is None else train)

    def forward(self, theta, batch):
        """Model output on `batch` at flat parameters `theta` [P] (differentiable in `theta`), at
        the model's own parameters (None), or with the tensors of a dict {"model.NAME": tensor}."""
        if self.shards is not None:
            if isinstance(theta, dict):
                raise UserError("a sharded model is evaluated at flat vectors of its rows, not at a dict of tensors")
            if theta is not None:
                self.shards.load(self.space, theta)
            else:
                self.shards.restore(self.space, self._theta0)
            return self.call(batch)
        if theta is None:
            tensors = {}
        elif isinstance(theta, dict):
            tensors = dict(theta)
        else:
            tensors = self.space.unflatten(theta, prefix="model.")
        if not tensors and not self.train_mode:
            return self.call(batch)
        if self.train_mode:
            # train-mode BatchNorm updates running statistics in place: give it copies so
            # that probing never changes the user's model
            for name, b in self.model.named_buffers():
                if "model." + name not in tensors:
                    tensors["model." + name] = b.clone()
        return functional_call(self.call, tensors, (batch,), strict=False)

    def terms(self, theta, batch) -> Terms:
        """Loss terms (sums and counts) of one batch at `theta` (see `forward`; differentiable in it)."""
        return self.criterion.terms(self.forward(theta, batch), batch)

    # --- the hot path ----------------------------------------------------------------
    def evaluate(
        self,
        coords: torch.Tensor | np.ndarray | None = None,
        origin=None,
        directions=None,
        progress: bool | Callable[[int], None] = False,
    ) -> Evaluation:
        """Mean loss and accuracy at the points ``origin + coords @ directions``.

        Args:
            coords: [K, m] coordinates (or [K] when m = 1). None means the origin alone.
            origin: [P] flat parameters; None (default) the model's own, read in place (no
                copy); 0 the zero vector (then the points are Σ c_i d_i: interpolation).
            directions: [m, P] (or [P] for one direction), or a list of m rows each a [P]
                tensor, a model of the same architecture or its state dict (read per tensor:
                no [m, P] copy is made).
            progress: show a progress bar, or a callback called with the number of
                point-batches done.
        Returns:
            `Evaluation` with loss and accuracy arrays of shape [K] (float64).

        Memory: the directions as given, plus one working copy of the parameters [P] in the
        model's dtype (θ of the point being evaluated, written only where the directions move).
        """
        space = self.space
        if self.shards is not None:  # its own values change per point: the origin and rows read the kept copy
            home = self.theta0  # (brought up to date with the model)
            origin = home if origin is None else origin
            if isinstance(directions, (list, tuple)):
                directions = [home if d is self.model else d for d in directions]
        org = Origin(self, origin)
        rows = Rows(space, directions, self.device)
        m = rows.m
        if coords is None:
            coords = torch.zeros(1, m)
        coords = torch.as_tensor(coords, dtype=torch.float64)
        if coords.ndim == 1:
            coords = coords[:, None] if m == 1 else coords[None]
        if coords.ndim != 2 or coords.shape[1] != m:
            raise UserError(f"coords have shape {tuple(coords.shape)}, expected (K, {m}) for {m} direction(s)")
        K = coords.shape[0]
        if not torch.isfinite(coords).all():
            raise UserError("coords contain NaN or inf")
        # a half-precision model's points are formed in float32 (its coordinates too) and rounded once
        coords_dev = coords.to(self.device, _point_dtype(space.dtype))

        loss_sum = torch.zeros(K, dtype=torch.float64, device=self.device)
        correct = torch.zeros(K, dtype=torch.float64, device=self.device)
        count = torch.zeros(K, dtype=torch.float64, device=self.device)
        correct_n = torch.zeros(K, dtype=torch.float64, device=self.device)
        cache = self._fl_cache if self._fl_cache is not None and self._fl_cache.matches(org, rows) else None
        moving = rows.moving()
        buf = org.working_copy() if (m and moving) or org.kind == "zero" else None
        theta_at = buf if buf is not None else org.flat_or_none()
        by_name = {e.name: e for e in space.entries}
        entries_plain = [by_name[n] for n in sorted(moving, key=lambda n: by_name[n].offset)]

        write = _writer(buf, org, rows, m, space.dtype)

        plan = self._plan(moving, buf, rows, write) if K > 1 and buf is not None else None
        # the first moving layer's m + 1 outputs pay off over more than m + 1 points (or when kept)
        inject = plan is not None and plan.layer is not None and (K > m + 1 or cache is not None)
        # only the moving tensors of θ(c) are formed per point; the injected layer's own
        # weights are never read (most of an MLP's parameters sit in its first layer)
        entries_inject = [e for e in entries_plain if e.name not in set(plan.exclusive)] if inject else None
        coords_list = coords_dev.cpu().tolist()
        # conv nets on CPU: per-point passes over a few hundred images stay in cache
        # (measured 1.2-1.4x faster per image than 500+, benchmarks/conv_options.py)
        eval_bs = self.batch_size
        if K > 1 and self._hoister is not None and not self.train_mode and isinstance(self.data, TensorData) \
                and self._hoister.channels_last:
            eval_bs = min(eval_bs, CONV_BATCH)
        bar = _progress(progress, total=self.data.n_batches(eval_bs) * K)
        if self.shards is None:
            grad_off, rounds = torch.inference_mode(), ((b, True) for b in self.batches(eval_bs))
        else:  # FSDP2's parameters must not become inference tensors; every rank runs as many passes
            grad_off, rounds = torch.no_grad(), self._lockstep(self.batches(eval_bs), eval_bs)
        with grad_off, self.mode(), self._restoring():
            for b_idx, (batch, real) in enumerate(rounds):
                with at_batch(b_idx, self.data, eval_bs):
                    if K > 1 and self._hoister is not None and not self.train_mode:
                        batch = self._hoister.layout(batch)
                    hoisted = None
                    if plan is not None:
                        def compute(batch=batch):
                            write(None, entries_plain)  # capture at the origin
                            return capture(self, plan, batch, buf, rows if inject else None, inject,
                                           self._hoister.channels_last)
                        hoisted = cache.get(b_idx, compute) if cache is not None else compute()
                        # a direction so large that f(x; d) overflows would turn 0·inf into NaN
                        # even at the centre: take the plain path for this batch instead
                        if hoisted is not None and not hoisted.finite:
                            hoisted = None
                    runner = Runner(plan, hoisted, inject, self._hoister.channels_last) if hoisted is not None else None
                    entries = entries_inject if runner is not None and runner.inject else entries_plain
                    with runner.installed() if runner is not None else contextlib.nullcontext():
                        for k in range(K):
                            if buf is not None and m:
                                write(coords_dev[k], entries)
                            if runner is not None:
                                runner.point(coords_list[k], coords_dev[k])
                            t = self.terms(theta_at, batch)
                            if runner is not None and not runner.done():
                                # the pass did not go as traced (data-dependent control flow?):
                                # redo this point plainly and stop hoisting
                                runner.off = True
                                write(coords_dev[k], entries_plain)
                                t = self.terms(theta_at, batch)
                                self._hoister.reject(plan.moving)
                                plan, inject = None, False
                                entries = entries_plain
                            if not real:  # a pass that only keeps a sharded model's ranks in step
                                continue
                            loss_sum[k] += t.loss.double()
                            count[k] += t.count
                            if t.correct is not None:
                                correct[k] += t.correct.double()
                                correct_n[k] += t.correct_count
                            bar(1)
        bar(None)
        del buf
        loss_sum, correct, count, correct_n = self._all_reduce(loss_sum, correct, count, correct_n)
        n = int(count[0]) if K else 0
        if K and not bool((count > 0).all()):
            raise UserError(f"data '{self.data.name}' yielded no samples (or only ignored labels)")
        acc = torch.where(correct_n > 0, correct / correct_n.clamp_min(1), torch.nan).cpu().numpy()
        return Evaluation(loss=(loss_sum / count).cpu().numpy(), accuracy=acc, n=n)

    def loss_at(self, theta: torch.Tensor | None = None) -> Evaluation:
        """Loss and accuracy at one point (the model's own parameters by default)."""
        return self.evaluate(None, origin=theta)

    # --- gradients -------------------------------------------------------------------
    def loss_and_grad(self, theta: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
        """Mean loss and its gradient [P] at `theta` (default: the model's own parameters, read in
        place), accumulated over all batches into one vector."""
        if self.shards is not None:
            return self._sharded_derivative(theta, None)
        if theta is None:
            lv = Leaves(self, None, names={e.name for e in self.space.entries})
        else:
            lv = Leaves(self, theta.detach().to(self.device, self.space.dtype))
        grad = torch.zeros(self.space.numel, dtype=self.space.dtype, device=self.device)
        total, n = 0.0, 0.0
        lv.grads_into(grad)
        try:
            with self.mode():
                for i, batch in enumerate(self.batches()):
                    with at_batch(i, self.data, self.batch_size):
                        t = self.terms(lv.tensors, batch)
                        if t.loss.requires_grad:
                            torch.autograd.backward(t.loss, inputs=lv.inputs)
                        total += float(t.loss.detach())
                        n += float(t.count)
        finally:
            lv.clear()
        if self.dist is not None:
            (grad,) = self._all_reduce(grad)
            tot = self._all_reduce(torch.tensor([total, n], dtype=torch.float64, device=self.device))[0]
            total, n = float(tot[0]), float(tot[1])
        if n == 0:
            raise UserError(f"data '{self.data.name}' yielded no samples")
        return total / n, grad.div_(n)

    def hvp(self, v: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """Exact Hessian-vector product H(theta) v of the mean loss, by double backward."""
        return hvp(self, v, theta)

    # --- a model sharded with FSDP2 (lossprobe.core.sharding) ------------------------------
    def sharded_hvp(self, v: torch.Tensor, theta: torch.Tensor | None = None,
                    out: torch.Tensor | None = None) -> torch.Tensor:
        """H(θ) v for a sharded model: this rank's rows of the product, v this rank's rows."""
        return self._sharded_derivative(theta, v, out)[1]

    def _sharded_derivative(self, theta, v, out=None):
        """(mean loss, gradient) when `v` is None, else (mean loss, H v): the model gathered whole,
        this rank's batches, the whole tensors summed over the ranks, this rank's rows kept."""
        sh, space = self.shards, self.space
        _ = self.theta0  # the copy the model is put back from, up to date
        if theta is not None:
            space.check_vector(theta, "theta")
            sh.load(space, theta.detach().to(self.device, space.dtype))
        total, n = 0.0, 0.0
        with self._restoring(), self.mode(), second_order() if v is not None else contextlib.nullcontext(), \
                sh.gathered() as whole:
            inputs = [whole[e.name] for e in space.entries]
            vs = None if v is None else [sh.whole(e.name, v[e.slice].to(x.dtype)) for e, x in zip(space.entries, inputs)]
            acc: list = [None] * len(inputs)  # the first batch's tensors, then sums into them
            for i, batch in enumerate(self.batches()):
                with at_batch(i, self.data, self.batch_size):
                    t = self.criterion.terms(self.call(batch), batch)
                    if t.loss.requires_grad:
                        g = torch.autograd.grad(t.loss, inputs, create_graph=vs is not None, allow_unused=True)
                        if vs is not None:
                            pairs = [(gi, vi) for gi, vi in zip(g, vs) if gi is not None and gi.requires_grad]
                            g = torch.autograd.grad([p[0] for p in pairs], inputs, grad_outputs=[p[1] for p in pairs],
                                                    allow_unused=True) if pairs else (None,) * len(inputs)
                        for j, gi in enumerate(g):
                            if gi is not None:
                                acc[j] = gi.detach() if acc[j] is None else acc[j].add_(gi.detach())
                        del g
                    total += float(t.loss.detach())
                    n += float(t.count)
            del vs
        res = torch.empty(space.numel, dtype=space.dtype, device=self.device) if out is None else out
        for j, e in enumerate(space.entries):
            a = acc[j] if acc[j] is not None else \
                torch.zeros(sh.pieces[e.name].shape, dtype=space.dtype, device=self.device)
            acc[j] = None  # each whole tensor freed once its rows are kept
            if self.dist is not None:  # (distributed=False: every rank read every batch)
                sh.reduce(a)
            res[e.slice].copy_(sh.rows_of(e.name, a).reshape(-1))
            del a
        if self.dist is not None:
            tot = sh.reduce(torch.tensor([total, n], dtype=torch.float64, device=self.device))
            total, n = float(tot[0]), float(tot[1])
        if n == 0:
            raise UserError(f"data '{self.data.name}' yielded no samples")
        return total / n, res.div_(n)

    def _lockstep(self, batches, batch_size: int):
        """(batch, real) rounds until no rank has a batch left: each FSDP2 forward all-gathers, so a
        rank whose share has run out repeats a batch (real=False: its terms are not counted)."""
        it, spare = iter(batches), None
        while True:
            b = next(it, None)
            flag = torch.tensor([0 if b is None else 1], dtype=torch.int64, device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.shards.group)
            if not int(flag.item()):
                return
            if b is None:
                if spare is None:
                    spare = next(iter(self.data.batches(batch_size)))
                yield spare, False
            else:
                spare = b
                yield b, True

    @contextlib.contextmanager
    def _restoring(self):
        """A sharded model's own parameters put back when the block ends (points are written into it)."""
        try:
            yield
        finally:
            if self.shards is not None:
                self.shards.restore(self.space, self._theta0)

    # --- hoisting ------------------------------------------------------------------------
    @contextlib.contextmanager
    def reuse_first_layer(self, origin, directions, max_bytes: float = 256e6):
        """Within this block, evaluate() calls with this same origin and directions reuse
        the hoisted per-batch values (the point-independent modules' outputs and the first
        moving layer's m + 1 outputs) instead of recomputing them per call.

        Surfaces evaluate a grid in many small chunks; without this each chunk would pay
        the hoisted part of the forward pass again. The cache is kept only while it fits in
        `max_bytes`, and only for in-memory data (fixed batches).
        """
        if self._hoister is None or not isinstance(self.data, TensorData):
            yield
            return
        old = self._fl_cache
        self._fl_cache = _HoistCache(Origin(self, origin), Rows(self.space, directions, self.device), max_bytes)
        try:
            yield
        finally:
            self._fl_cache = old

    # --- hoisting ------------------------------------------------------------------------
    def _moving(self, directions) -> frozenset:
        if directions is None:
            return frozenset(e.name for e in self.space.entries if e.kind != "buffer")
        return Rows(self.space, directions, self.device).moving()

    def _plan(self, moving: frozenset, buf, rows, write) -> Plan | None:
        if self._hoister is None or self.train_mode or not moving:
            return None
        return self._hoister.plan(moving, buf, rows, write, force=self._shortcut is True)

    def hoisting(self, directions=None, origin=None) -> dict | None:
        """What evaluate() computes once per batch instead of once per point for these
        directions [m, P] (default: every parameter moves): the hoisted modules and the
        first moving layer, or None when it takes the plain path."""
        moving = self._moving(directions)
        if self._hoister is None or self.train_mode or not moving:
            return None
        org = Origin(self, origin)
        buf = org.working_copy()
        if directions is None:  # random rows on the moving tensors, to verify the plan with
            g = torch.Generator(device="cpu").manual_seed(0)
            mask = torch.zeros(self.space.numel, dtype=torch.bool)
            for n in moving:
                mask[self.space[n].slice] = True
            scale = float(buf.norm()) / math.sqrt(self.space.numel) + 1e-3
            directions = torch.randn(2, self.space.numel, generator=g).to(buf) * 1e-2 * scale * mask.to(buf.device)
        rows = Rows(self.space, directions, self.device)
        write = _writer(buf, org, rows, rows.m, self.space.dtype)
        plan = self._plan(moving, buf, rows, write)
        return plan.describe() if plan is not None else None


def as_objective(model_or_objective, data=None, *, subset: int | None = None, subset_seed: int = 0,
                 **options) -> Objective:
    """The `Objective` a probe works on: an Objective as it is, or one built from a model and
    its data with `options` (loss, forward, metric, target, batch_size, include_buffers,
    train_mode, ...: see `Objective`); `subset` takes a seeded subset of in-memory data."""
    if isinstance(model_or_objective, Objective):
        given = [k for k, v in {"data": data, "subset": subset, **options}.items() if v is not None]
        if given:
            raise UserError(f"pass {', '.join(given)} to the Objective, not to the probe, when giving an Objective")
        return model_or_objective
    if not isinstance(model_or_objective, nn.Module):
        raise TypeError(f"expected an nn.Module or an Objective, got {type(model_or_objective).__name__}")
    if data is None:
        raise UserError("data is required: a Split, (x, y) tensors, a Dataset or a DataLoader")
    data = as_data(data)
    if subset:
        if not isinstance(data, TensorData):
            raise UserError("subset needs in-memory data (a Split or tensors), not a DataLoader")
        data = data.subset(int(subset), subset_seed)
    return Objective(model_or_objective, data, **options)


def hvp(objective: Objective, v: torch.Tensor, theta: torch.Tensor | None = None, method: str = "auto",
        check: bool = True) -> torch.Tensor:
    """Exact Hessian-vector product H(θ) v [P] of the objective's mean loss over all its data.

    Sums per batch (sample-weighted) and divides by the sample count. Parameters the loss
    does not use give zeros. `method`: 'reverse' (double backward), 'forward'
    (``torch.func`` jvp of grad) or 'auto'.
    """
    space = objective.space
    if objective.shards is not None:
        space.check_vector(v, "v")
        return objective.sharded_hvp(v.detach().to(objective.device, space.dtype), theta)
    theta = (objective.theta0 if theta is None else theta).detach().to(objective.device, space.dtype)
    v = v.detach().to(objective.device, space.dtype)
    if check:
        space.check_vector(theta, "theta")
        space.check_vector(v, "v")
    method = DEFAULT_METHOD if method == "auto" else method
    out, n = torch.zeros_like(theta), 0.0
    with objective.mode(), second_order():
        if method == "reverse":
            for i, batch in enumerate(objective.batches()):
                with at_batch(i, objective.data, objective.batch_size):
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

            for i, batch in enumerate(objective.batches()):
                with at_batch(i, objective.data, objective.batch_size):
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


def _point_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _writer(buf, org, rows, m: int, dtype: torch.dtype):
    """``write(c, entries)``: θ(c) = origin + c @ directions into the working copy `buf` on
    `entries` (c None: the origin), tensor by tensor, outside autocast (the parameters'
    arithmetic keeps their precision); for a half-precision model in float32, rounded once."""
    half = dtype in (torch.float16, torch.bfloat16)
    dev = buf.device.type if buf is not None else "cpu"

    def write(c, entries):
        with torch.autocast(dev, enabled=False):
            for e in entries:
                out = buf[e.slice]
                if c is None:
                    org.fill(e, out)
                elif half:
                    blk = rows.block(e).float()
                    out.copy_(torch.addmv(org.seg(e).float(), blk.T, c.float()))
                elif rows.mat is not None:
                    torch.addmv(org.seg(e), rows.block(e).T, c, out=out)
                else:  # rows given one by one (two models): scaled adds, no [m, numel] stack
                    cl = c.tolist()
                    torch.mul(rows.seg(0, e), cl[0], out=out)
                    for i in range(1, m):
                        out.add_(rows.seg(i, e), alpha=cl[i])
                    if org.kind != "zero":
                        out.add_(org.seg(e))

    return write


class Origin:
    """The origin of an affine family of points, read per tensor: the model's own parameters
    (None: nothing is copied), a flat vector [P], or zero (0: the points are Σ c_i d_i)."""

    def __init__(self, objective: Objective, origin=None):
        self.space = objective.space
        self.objective = objective
        if origin is None:
            self.kind, self.flat = "model", None
            self.live = self.space._tensors(objective.model)
        elif isinstance(origin, (int, float)) and not isinstance(origin, bool) and origin == 0:
            self.kind, self.flat = "zero", None
        else:
            if isinstance(origin, nn.Module):
                origin = self.space.flatten(origin)
            self.kind = "flat"
            self.flat = torch.as_tensor(origin).to(objective.device, self.space.dtype).reshape(-1)
            self.space.check_vector(self.flat, "origin")
        self._zeros: torch.Tensor | None = None

    def seg(self, e) -> torch.Tensor:
        """This origin's values on entry `e` as a flat [numel] tensor (a view where possible)."""
        if self.kind == "flat":
            return self.flat[e.slice]
        if self.kind == "model":
            return self.live[e.name].detach().reshape(-1).to(self.space.dtype)
        if self._zeros is None or self._zeros.numel() < e.numel:
            self._zeros = torch.zeros(max(e.numel for e in self.space.entries), dtype=self.space.dtype,
                                      device=self.objective.device)
        return self._zeros[: e.numel]

    def fill(self, e, out: torch.Tensor) -> None:
        if self.kind == "zero":
            out.zero_()
        else:
            out.copy_(self.seg(e))

    def working_copy(self) -> torch.Tensor:
        """A fresh [P] vector holding the origin (one copy of the parameters)."""
        if self.kind == "flat":
            return self.flat.clone()
        if self.kind == "zero":
            return torch.zeros(self.space.numel, dtype=self.space.dtype, device=self.objective.device)
        return self.space.flatten(self.objective.model)

    def flat_or_none(self):
        """What `Objective.forward` takes for the origin itself: the flat vector, or None."""
        if self.kind == "zero":
            raise UserError("the zero origin needs directions")
        return self.flat

    def key(self):
        if self.kind == "flat":
            return ("flat", self.flat.data_ptr(), tuple(self.flat.shape), self.flat._version)
        if self.kind == "model":
            return ("model", id(self.objective.model), tuple(t._version for t in self.live.values()))
        return ("zero",)


class Rows:
    """m vectors of a parameter space read per tensor: the rows of an [m, P] tensor (or one
    [P] tensor), or a list of rows each a [P] tensor, a model of the same architecture or its
    state dict; no [m, P] copy is made of a list."""

    def __init__(self, space: ParamSpace, rows, device):
        self.space = space
        self.device = device
        self.mat: torch.Tensor | None = None
        self.items: list = []
        if rows is None:
            self.mat = torch.zeros(0, space.numel, device=device, dtype=space.dtype)
        elif isinstance(rows, (torch.Tensor, np.ndarray)):
            mat = torch.as_tensor(rows).to(device, space.dtype)
            self.mat = mat[None] if mat.ndim == 1 else mat
            if self.mat.ndim != 2 or self.mat.shape[1] != space.numel:
                raise UserError(f"directions have shape {tuple(torch.as_tensor(rows).shape)}, expected (m, "
                                f"{space.numel}) to match the model's parameters")
        else:
            for r in rows:
                if isinstance(r, nn.Module):
                    self.items.append(space._tensors(r))
                elif isinstance(r, dict):
                    self.items.append(dict(r))
                else:
                    t = torch.as_tensor(r).reshape(-1)
                    space.check_vector(t, "direction")
                    self.items.append(t.to(device, space.dtype))
        self._moving: frozenset | None = None

    @property
    def m(self) -> int:
        return self.mat.shape[0] if self.mat is not None else len(self.items)

    def seg(self, i: int, e) -> torch.Tensor:
        """Row i on entry `e`, flat [numel]."""
        if self.mat is not None:
            return self.mat[i, e.slice]
        it = self.items[i]
        if isinstance(it, torch.Tensor):
            return it[e.slice]
        t = it.get(e.name)
        if t is None:
            raise UserError(f"parameter '{e.name}' is missing from the given model or state dict")
        if tuple(t.shape) != e.shape:
            raise UserError(f"parameter '{e.name}' has shape {tuple(t.shape)}, expected {e.shape}: "
                            "the two models have different architectures")
        return t.detach().reshape(-1).to(self.device, self.space.dtype)

    def block(self, e) -> torch.Tensor:
        """[m, numel] on entry `e`: a view of an [m, P] tensor, else stacked (a small copy)."""
        if self.mat is not None:
            return self.mat[:, e.slice]
        return torch.stack([self.seg(i, e) for i in range(self.m)])

    def moving(self) -> frozenset:
        """Names of the tensors in which some row is nonzero."""
        if self._moving is None:
            if self.mat is not None:
                self._moving = moving_tensors(self.space, self.mat) if self.m else frozenset()
            else:
                self._moving = frozenset(e.name for e in self.space.entries
                                         if any(bool((self.seg(i, e) != 0).any()) for i in range(self.m)))
        return self._moving

    def key(self):
        if self.mat is not None:
            return ("mat", self.mat.data_ptr(), tuple(self.mat.shape), self.mat._version)
        return ("items", tuple(id(i) for i in self.items))


class Leaves:
    """The parameters at a point as autograd leaves, without copying them: one flat leaf that
    aliases a given θ [P], or (θ None) one leaf per tensor aliasing the model's own parameters.

    `tensors` is what `Objective.forward` takes; `inputs` are the leaves to differentiate
    (per tensor: the selected ones, by default every parameter that requires a gradient).
    `grads_into(out)` makes backward passes accumulate into `out` [P] in place, so a product
    over many batches needs no P-length temporary beyond one tensor's gradient."""

    def __init__(self, objective: Objective, theta: torch.Tensor | None = None, names=None,
                 dtype: torch.dtype | None = None):
        space = objective.space
        self.space = space
        if theta is not None:
            self.flat = True
            self.th = theta.detach().to(dtype or theta.dtype).requires_grad_(True)
            self.tensors = space.unflatten(self.th, prefix="model.")
            self.inputs = [self.th]
            self.entries = None
        else:
            self.flat = False
            live = space._tensors(objective.model)
            if names is None:
                names = {e.name for e in space.entries if e.kind != "buffer" and live[e.name].requires_grad}
            self.tensors, self.inputs, self.entries = {}, [], []
            for e in space.entries:
                t = live[e.name].detach()
                if dtype is not None and t.is_floating_point() and t.dtype != dtype:
                    t = t.to(dtype)  # a copy: products of a float16 model run in float32
                if e.name in names:
                    t.requires_grad_(True)
                    self.inputs.append(t)
                    self.entries.append(e)
                self.tensors["model." + e.name] = t

    @property
    def dtype(self) -> torch.dtype:
        return self.inputs[0].dtype if self.inputs else self.space.dtype

    def views(self, v: torch.Tensor) -> list[torch.Tensor]:
        """A full vector [P] as the leaves' shapes (views)."""
        if self.flat:
            return [v]
        return [v[e.slice].view(e.shape) for e in self.entries]

    def grads_into(self, out: torch.Tensor) -> None:
        for t, g in zip(self.inputs, self.views(out)):
            t.grad = g

    def clear(self) -> None:
        for t in self.inputs:
            t.grad = None

    def storages(self) -> set:
        """Data pointers of the leaves' storages (the parameters themselves: not graph memory)."""
        return {t.untyped_storage().data_ptr() for t in self.inputs}


class _HoistCache:
    """Hoisted per-batch values for one (origin, directions) pair, by batch index."""

    def __init__(self, origin: Origin, rows: Rows, max_bytes: float):
        self.key = (origin.key(), rows.key())
        self.max_bytes = max_bytes
        self.bytes = 0
        self.full = False
        self.store: dict[int, object] = {}

    def matches(self, origin: Origin, rows: Rows) -> bool:
        return (origin.key(), rows.key()) == self.key

    def get(self, b_idx: int, compute):
        if b_idx in self.store:
            return self.store[b_idx]
        h = compute()
        size = h.nbytes() if h is not None else 0
        if not self.full and self.bytes + size <= self.max_bytes:
            self.store[b_idx] = h
            self.bytes += size
        else:
            self.full = True
        return h


def _progress(progress, total: int):
    """Return a function advance(n) / advance(None) to close."""
    if callable(progress):
        def advance(n):
            if n is not None:
                progress(n)
        return advance
    if not progress:
        return lambda n: None

    bar = tqdm(total=total, unit="pt·batch", dynamic_ncols=True, leave=False)

    def advance(n):
        if n is None:
            bar.close()
        else:
            bar.update(n)

    return advance


def warn_if_stochastic(model: nn.Module) -> None:
    """Warn when a model in train mode has dropout or BatchNorm (results would be noisy)."""
    if model.training and any(
        isinstance(m, (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)) for m in model.modules()
    ):
        warnings.warn(
            "the model is in train mode and has dropout or BatchNorm: losses depend on the batch "
            "and the random state; evaluate in eval mode for reproducible numbers",
            stacklevel=2,
        )
