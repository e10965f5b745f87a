"""Trained low-loss curves between two fixed endpoints (Garipov et al. 2018).

A curve is θ(t) = Σ_k c_k(t) w_k, t in [0, 1], over control points w_0 = θ_A, w_1 … w_n
(the trainable "bends") and w_{n+1} = θ_B:

* ``bezier``: Bernstein weights c_k(t) = C(n+1, k) t^k (1 − t)^(n+1−k) (one bend: the
  quadratic Bezier curve of Garipov et al.);
* ``polychain``: a polygonal chain through the bends at t = k/(n+1) (hat-function weights).

Any `nn.Module` works: the model is called through `torch.func.functional_call` with the
curve's parameters, so there are no curve-specific model classes. The endpoints are
fixed; θ(0) and θ(1) are exactly θ_A and θ_B (the weights are exact 0s and 1s there).
The bends start on the straight line (w_k = θ_A + k/(n+1) (θ_B − θ_A)), where the curve
is the line itself, and training minimises E_{t ~ U(0,1)} L(θ(t)) with one t drawn per
batch (Garipov et al.).

BatchNorm: training runs in train mode (batch statistics, as Garipov et al.); evaluation
at each t re-estimates the running statistics over seeded training batches first (the
statistics of one point of the curve are not those of another). The curve lives in the
space of parameters only; buffers are not part of it.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from math import comb
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from lossprobe.connectivity.paths import (
    PathEvaluation,
    evaluate_per_point,
    has_batchnorm,
    named_splits,
    recompute_batchnorm,
)
from lossprobe.core.batching import as_data
from lossprobe.core.losses import criterion
from lossprobe.core.objective import BatchCall, Objective, check_fits
from lossprobe.core.space import ParamSpace
from lossprobe.errors import UserError
from lossprobe.results import atomic
from lossprobe.training.loop import TrainingDiverged, cosine_factor, run_epoch

KINDS = ("bezier", "polychain")


def curve_weights(t, bends: int, kind: str = "bezier") -> torch.Tensor:
    """Weights c_k(t) [len(t), bends + 2] of the control points θ_A, bends…, θ_B (float64).

    Rows sum to 1; at t = 0 the row is (1, 0, …, 0) and at t = 1 it is (0, …, 0, 1) exactly.
    """
    if kind not in KINDS:
        raise UserError(f"curve kind must be one of {KINDS}, got '{kind}'")
    t = torch.as_tensor(np.asarray(t, dtype=np.float64)).reshape(-1)
    n = bends + 1  # degree / number of segments
    if kind == "bezier":
        k = torch.arange(n + 1, dtype=torch.float64)
        binom = torch.tensor([comb(n, int(i)) for i in k], dtype=torch.float64)
        return binom * t[:, None] ** k * (1 - t[:, None]) ** (n - k)
    # polychain: segment j covers [j/n, (j+1)/n]
    out = torch.zeros(len(t), n + 1, dtype=torch.float64)
    s = (t * n).clamp(0, n)
    j = s.floor().clamp(max=n - 1).long()
    frac = s - j
    out[torch.arange(len(t)), j] = 1 - frac
    out[torch.arange(len(t)), j + 1] += frac
    return out


class Curve(nn.Module):
    """A curve of parameters between `model_a` and `model_b` (same architecture).

    Args:
        bends: number of trainable control points n ≥ 1.
        kind: 'bezier' or 'polychain'.
        forward: ``forward(model, batch) -> output`` (the batch contract of `Objective`).

    Attributes:
        bends: nn.Parameter [n, P], the trainable control points in the flat layout of
            `space` (parameters only).
        theta_a, theta_b: buffers [P], the fixed endpoints.
    """

    def __init__(self, model_a: nn.Module, model_b: nn.Module, bends: int = 1, kind: str = "bezier", forward=None):
        super().__init__()
        if bends < 1:
            raise UserError(f"a curve needs at least one bend, got {bends}")
        if kind not in KINDS:
            raise UserError(f"curve kind must be one of {KINDS}, got '{kind}'")
        self.space = ParamSpace(model_a)
        self.space.check_compatible(ParamSpace(model_b))
        self.kind, self.n_bends = kind, int(bends)

        # the model whose forward we call; its own parameters are never used
        self.call = BatchCall(copy.deepcopy(model_a), criterion(forward=forward).forward)
        for p in self.base.parameters():
            p.requires_grad_(False)
        a, b = self.space.flatten(model_a), self.space.flatten(model_b)
        self.register_buffer("theta_a", a)
        self.register_buffer("theta_b", b)
        frac = torch.arange(1, bends + 1, dtype=a.dtype)[:, None] / (bends + 1)
        self.bends = nn.Parameter(a + frac * (b - a))  # on the straight line

    @property
    def base(self) -> nn.Module:
        """The model whose forward the curve calls."""
        return self.call.model

    def control_points(self) -> torch.Tensor:
        """[n + 2, P]: θ_A, the bends, θ_B."""
        return torch.cat([self.theta_a[None], self.bends, self.theta_b[None]])

    def point(self, t: float) -> torch.Tensor:
        """θ(t) [P] (differentiable in the bends)."""
        c = curve_weights([t], self.n_bends, self.kind)[0].to(self.theta_a)
        return c @ self.control_points()

    def forward(self, batch, t: float):
        """The model's output on `batch` at θ(t)."""
        return functional_call(self.call, self.space.unflatten(self.point(t), prefix="model."), (batch,), strict=False)

    def model_at(self, t: float) -> nn.Module:
        """A plain copy of the model with parameters θ(t) (buffers are model A's)."""
        m = copy.deepcopy(self.base)
        with torch.no_grad():
            self.space.load_into(m, self.point(t).detach())
        for p in m.parameters():
            p.requires_grad_(True)
        return m.eval()

    def state_for_saving(self) -> dict[str, torch.Tensor]:
        return {"bends": self.bends.detach().contiguous().cpu(),
                "theta_a": self.theta_a.contiguous().cpu(), "theta_b": self.theta_b.contiguous().cpu()}


@dataclass
class CurveTrainConfig:
    """How to train the bends. lr follows a cosine schedule over all steps."""

    epochs: int = 2
    lr: float = 1e-3
    optimizer: str = "adam"  # adam | momentum
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 128
    seed: int = 0  # batch order and the t drawn per batch
    loss: str = "cross_entropy"

    def __post_init__(self):
        if self.epochs <= 0 or self.batch_size <= 0:
            raise UserError("curve training needs positive epochs and batch_size")
        if not self.lr > 0:
            raise UserError(f"lr must be positive, got {self.lr}")
        if self.optimizer not in ("adam", "momentum"):
            raise UserError(f"curve optimizer must be 'adam' or 'momentum', got '{self.optimizer}'")


@dataclass
class CurveHistory:
    epoch: list[int] = field(default_factory=list)
    batch_loss: list[float] = field(default_factory=list)  # mean over the epoch's batches (random t)
    seconds: list[float] = field(default_factory=list)


def train_curve(curve: Curve, train, config: CurveTrainConfig | None = None,
                checkpoint_dir: str | os.PathLike | None = None, progress: bool = False, loss=None,
                metric=None) -> CurveHistory:
    """Train the bends in place: per batch draw t ~ U(0, 1) and step on L(θ(t)).

    `train` is any data form of `Objective`; the curve's own `forward` calls the model.
    `loss` overrides ``config.loss`` (e.g. with a function). With `checkpoint_dir`, the
    bends and optimiser are saved after every epoch and a later call resumes after the
    last saved epoch, drawing the same batches and t. The steps run in `lossprobe.train.run_epoch`
    (fit's inner loop); a NaN or inf loss raises `TrainingDiverged` (``.history``: the epochs done).
    """
    cfg = config or CurveTrainConfig()
    device = curve.theta_a.device
    train = as_data(train, "train").to(device)
    if train.n_samples == 0:
        raise UserError("curve training needs non-empty training data")
    crit = criterion(loss if loss is not None else cfg.loss, model=curve.base)
    # endpoint A (the model the curve calls, at its own weights) on a few samples, and the
    # targets of all of them against the loss: bad data is one line before any step
    check_fits(curve.base, train, criterion(crit.loss, forward=curve.call.batch_forward, model=curve.base),
               data_name=f"the training data '{train.name}'")
    params = [curve.bends]
    opt = (torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay) if cfg.optimizer == "adam"
           else torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay))
    steps = train.n_batches(cfg.batch_size)
    total = steps * cfg.epochs
    hist, start = CurveHistory(), 1
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None:

        atomic.makedirs(ckpt)
        f = ckpt / "curve_state.pt"
        cfg_file = ckpt / "curve_config.json"
        try:
            old_cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else None
        except ValueError:
            old_cfg = None  # damaged: derived data, written again below
        if old_cfg is not None and old_cfg != asdict(cfg):
            raise UserError(f"{ckpt} holds curve training with a different configuration; use another directory")
        atomic.write_text(cfg_file, json.dumps(asdict(cfg)))
        st = None
        if f.is_file():
            try:
                st = torch.load(f, map_location="cpu", weights_only=True)
                hist = CurveHistory(**st["history"])
            except Exception:  # noqa: BLE001 - a damaged or older state file: train from the start
                st, hist = None, CurveHistory()
        if st is not None:
            with torch.no_grad():
                curve.bends.copy_(st["bends"])
            opt.load_state_dict(st["optimizer"])
            start = hist.epoch[-1] + 1 if hist.epoch else 1
    bar = None
    if progress and start <= cfg.epochs:

        bar = tqdm(total=total, initial=(start - 1) * steps, desc="curve", unit="step", leave=False, dynamic_ncols=True)
    t0 = time.perf_counter()
    elapsed = hist.seconds[-1] if hist.seconds else 0.0
    step = (start - 1) * steps
    curve.base.train()
    try:
        for epoch in range(start, cfg.epochs + 1):
            g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            source = train.epoch(cfg.batch_size, g)  # the batch order is drawn before the t's
            ts = torch.rand(steps, generator=g, dtype=torch.float64)
            torch.manual_seed(cfg.seed * 100_003 + epoch)
            step, run_s, run_n = run_epoch(
                opt, itertools.islice(source, steps), lambda i, batch: crit.terms(curve(batch, float(ts[i])), batch),
                epoch=epoch, step=step, lr=cfg.lr, lr_at=lambda s: cfg.lr * cosine_factor(s, total),
                on_step=(lambda state: bar.update(1)) if bar is not None else None)
            hist.epoch.append(epoch)
            hist.batch_loss.append(run_s / run_n if run_n else math.nan)
            hist.seconds.append(elapsed + time.perf_counter() - t0)
            if ckpt is not None:  # one file, so the bends and the history always agree
                atomic.save_torch(ckpt / "curve_state.pt", {"bends": curve.bends.detach(), "optimizer": opt.state_dict(),
                                                            "history": asdict(hist)})
                atomic.write_text(ckpt / "curve_history.json", json.dumps(asdict(hist)))
    except TrainingDiverged as e:
        e.history = hist
        raise
    finally:
        if bar is not None:
            bar.close()
        curve.base.eval()
    return hist


CurveEvaluation = PathEvaluation  # a curve's evaluation: PathEvaluation(ts=...)


@torch.no_grad()
def evaluate_curve(curve: Curve, data, ts=None, bn_data=None,
                   bn_batches: int = 50, bn_seed: int = 0, loss="cross_entropy", batch_size: int = 4096,
                   progress: bool = False, metric=None) -> CurveEvaluation:
    """Loss and accuracy at θ(t) for each t (default 0, 0.05, …, 1) on each split.

    Models without BatchNorm: one vectorised `Objective.evaluate` call per split
    (θ(t) = curve_weights(t) @ control points). With BatchNorm: at each t the running
    statistics are re-estimated on `bn_data` over `bn_batches` seeded batches first.
    """
    splits = named_splits(data)
    ts = np.linspace(0, 1, 21) if ts is None else np.asarray(ts, dtype=float).reshape(-1)
    if ts.size == 0 or not np.isfinite(ts).all():
        raise UserError("ts must be a non-empty list of finite numbers")
    out = CurveEvaluation(ts=ts)
    if has_batchnorm(curve.base):
        if bn_data is None:
            raise UserError("a model with BatchNorm needs bn_data (training batches) to re-estimate statistics along the curve")

        def model_at(i):
            m = curve.model_at(float(ts[i]))
            return recompute_batchnorm(m, bn_data, n_batches=bn_batches, seed=bn_seed, forward=curve.call.batch_forward)

        out.loss, out.accuracy = evaluate_per_point(model_at, len(ts), splits, loss, batch_size,
                                                    progress="curve points" if progress else None,
                                                    forward=curve.call.batch_forward, metric=metric)
        return out
    coords = curve_weights(ts, curve.n_bends, curve.kind).to(curve.theta_a.dtype)
    ctrl = curve.control_points().detach()
    zero = torch.zeros_like(curve.theta_a)
    base = curve.model_at(0.0)
    for k, split in splits.items():
        obj = Objective(base, split, loss=loss, batch_size=batch_size, space=ParamSpace(base), forward=curve.call.batch_forward,
                        metric=metric)
        ev = obj.evaluate(coords, origin=zero, directions=ctrl, progress=progress)
        out.loss[k], out.accuracy[k] = ev.loss, ev.accuracy
    return out


__all__ = ["Curve", "CurveEvaluation", "CurveHistory", "CurveTrainConfig", "KINDS", "curve_weights",
           "evaluate_curve", "train_curve"]
