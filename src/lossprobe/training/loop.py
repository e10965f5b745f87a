"""Training with recorded learning curves, used by every study.

`fit(model, train, val, config)` trains in place and returns a `History`. Two seeds are
kept apart: the model's initialisation is whatever the caller built (see
`lossprobe.models.build(spec, seed)`), and `config.data_seed` fixes the order of
batches (and dropout masks). With `checkpoint_dir`, every epoch is saved (weights as
safetensors, optimiser state as plain tensors) so an interrupted run resumes at the
last finished epoch with the same numbers it would have produced uninterrupted.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lossprobe.core.batching import as_data, at_batch
from lossprobe.core.losses import criterion
from lossprobe.core.objective import Objective, check_fits
from lossprobe.core.space import ParamSpace
from lossprobe.errors import UserError
from lossprobe.results.atomic import makedirs, save_npy, save_torch, write_text
from lossprobe.results.contract import Record, register
from lossprobe.results.plotspec import Series, line
from lossprobe.training.checkpoints import apply_state_dict, load_state_dict, save_checkpoint

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad")
SCHEDULES = ("constant", "cosine", "step", "linear", "onecycle")
AUGMENTATIONS = ("none", "flip", "crop", "crop+flip")
ONECYCLE_WARMUP = 0.25  # onecycle without warmup_epochs: the first quarter of the steps warm up


@dataclass
class TrainConfig:
    """How to train. `lr` is the peak learning rate; `schedule` decays it per step.

    Schedules: ``constant``, ``cosine`` (to 0 at the last step), ``linear`` (to 0),
    ``step`` (×`gamma` every `step_size` epochs) and ``onecycle`` (linear up, then linear
    down to 0: a triangle). `warmup_epochs` (may be fractional) first raises the rate
    linearly from lr/steps to lr, and the decay runs over the remaining steps; onecycle
    without it warms up over the first quarter of training.

    `augment` transforms image batches ([N, C, H, W] or [N, H, W] inputs) during training
    only: ``flip`` mirrors half of the images left-right, ``crop`` shifts each image by up
    to `crop_padding` pixels in each direction (a random crop of the image padded by
    `crop_padding`, border pixels repeated), ``crop+flip`` both. The draws come from a
    generator seeded per epoch by `data_seed`, so a resumed run repeats them exactly.
    """

    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int = 12
    batch_size: int = 128
    data_seed: int = 0
    schedule: str = "cosine"
    step_size: int = 5  # epochs between decays for schedule="step"
    gamma: float = 0.1
    loss: str = "cross_entropy"
    eval_batch_size: int = 4096
    trajectory_every: int = 0  # record the flat parameters every k steps (0: never)
    warmup_epochs: float = 0.0
    augment: str = "none"
    crop_padding: int = 4

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown optimizer '{self.optimizer}'; choose from {list(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown schedule '{self.schedule}'; choose from {list(SCHEDULES)}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if int(getattr(self, name)) <= 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise UserError(f"lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise UserError("weight_decay must be >= 0 and momentum in [0, 1)")
        if self.trajectory_every < 0:
            raise UserError(f"trajectory_every must be >= 0, got {self.trajectory_every}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise UserError(f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs}")
        if self.augment not in AUGMENTATIONS:
            raise UserError(f"unknown augment '{self.augment}'; choose from {list(AUGMENTATIONS)}")
        if self.crop_padding < 0:
            raise UserError(f"crop_padding must be >= 0, got {self.crop_padding}")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name: f.type for f in fields(cls)}
        for k, v in d.items():
            if k not in known:
                raise UserError(f"unknown training option '{k}'; known: {sorted(known)}")
        return cls(**d)


@register
@dataclass
class History(Record):
    """Per-epoch learning curves. Epoch 0 is the initial model, before any step."""

    NAME: ClassVar[str] = "history"

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    batch_loss: list[float] = field(default_factory=list)  # mean minibatch loss during the epoch
    lr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # cumulative wall time
    stopped: str | None = None  # why training stopped early, if it did

    def summary(self) -> dict:
        last = lambda v: v[-1] if v else None  # noqa: E731
        return {"epochs": last(self.epoch), "train_loss": last(self.train_loss), "train_accuracy": last(self.train_accuracy),
                "val_loss": last(self.val_loss), "val_accuracy": last(self.val_accuracy),
                "generalization_gap": last(self.generalization_gap), "seconds": last(self.seconds), "stopped": self.stopped}

    def plots(self, prefix: str = "") -> list:
        n = len(self.epoch)
        out = []
        for what in ("loss", "accuracy"):
            series = [Series(f"{prefix}{split}_{what}", label, group=split, dash=split == "val")
                      for split, label in (("train", "train"), ("val", "validation"))
                      if n and len(getattr(self, f"{split}_{what}")) == n]
            if series:
                out.append(line(f"learning curves: {what}", f"{prefix}epoch", series, xlabel="epoch", ylabel=what))
        return out

    def to_arrays(self, prefix: str = "") -> dict:
        """The per-epoch curves (batch_loss and lr have one entry per epoch after the first)."""
        return {f"{prefix}{k}": np.asarray(getattr(self, k), dtype=float if k != "epoch" else np.int64)
                for k in ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")}

    @property
    def generalization_gap(self) -> list[float]:
        """Train accuracy minus validation accuracy per epoch."""
        return [a - b for a, b in zip(self.train_accuracy, self.val_accuracy)]


class TrainingDiverged(UserError):
    """The loss became NaN or inf. ``.stopped`` says where; ``.history`` holds what the
    training loop recorded up to that point (fit: a `History`)."""

    def __init__(self, stopped: str, lr: float):
        super().__init__(f"training diverged: {stopped}; try a smaller learning rate (lr={lr})")
        self.stopped = stopped
        self.history = None


@dataclass
class StepState:
    """What step hooks see: the epoch (1-based), the batch's index in it (1-based), the
    optimiser steps taken so far, the batch's mean loss (a 0-d tensor with its graph) and the
    optimiser (to read, e.g. by `lossprobe.track.Tracker`; not to change)."""

    epoch: int
    index: int
    step: int
    loss: torch.Tensor
    optimizer: torch.optim.Optimizer | None = None


def run_epoch(opt: torch.optim.Optimizer, batches, batch_terms, *, epoch: int, step: int, lr: float,
              lr_at=None, before_step=None, on_step=None) -> tuple[int, float, float]:
    """One pass of minibatch steps: the inner loop of `fit`, `lossprobe.curves.train_curve`
    and `lossprobe.trajectory.train_trajectory`.

    For batch i of `batches`: set every group's learning rate to ``lr_at(step)`` (when
    given), compute ``terms = batch_terms(i, batch)`` (a `lossprobe.losses.Terms`), skip a
    batch without samples, and stop with `TrainingDiverged` if the mean loss is NaN or inf
    (the one divergence rule, before the step that would spread it); else backward,
    ``before_step(state)`` (gradients are there, weights not yet updated), the optimiser
    step, ``on_step(state)``. `lr` is named in the divergence message.

    Returns (steps taken so far, sum of the batches' loss sums, their sample count).
    """
    run_sum, run_n = 0.0, 0.0
    for i, batch in enumerate(batches):
        if lr_at is not None:
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
        with at_batch(i, order=f"epoch {epoch}"):  # the model and the loss on it (not the callbacks)
            t = batch_terms(i, batch)
        if not float(t.count):
            continue
        loss = t.loss / t.count
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"loss became {loss.item()} at epoch {epoch}, step {i + 1}", lr)
        opt.zero_grad(set_to_none=True)
        with at_batch(i, order=f"epoch {epoch}"):
            loss.backward()
        if before_step is not None:
            before_step(StepState(epoch, i + 1, step, loss, opt))
        opt.step()
        step += 1
        run_sum += float(t.loss.detach())
        run_n += float(t.count)
        if on_step is not None:
            on_step(StepState(epoch, i + 1, step, loss, opt))
    return step, run_sum, run_n


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    o, lr, wd = cfg.optimizer, cfg.lr, cfg.weight_decay
    if o == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if o in ("momentum", "nesterov"):
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum or 0.9, nesterov=o == "nesterov", weight_decay=wd)
    if o == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if o == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if o == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=cfg.momentum if cfg.momentum else 0.0, weight_decay=wd)
    return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)


def cosine_factor(step: int, total: int) -> float:
    """Cosine decay of the learning rate from 1 at step 0 to 0 at step `total`."""
    return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def warmup_steps(cfg: TrainConfig, total: int, steps_per_epoch: int) -> int:
    """Steps of linear warmup (see `TrainConfig`)."""
    if cfg.warmup_epochs > 0:
        return max(1, round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "onecycle":
        return max(1, round(ONECYCLE_WARMUP * total))
    return 0


def lr_factor(cfg: TrainConfig, step: int, total: int, steps_per_epoch: int) -> float:
    """The learning rate at `step` (0-based) of `total`, as a fraction of ``cfg.lr``."""
    w = warmup_steps(cfg, total, steps_per_epoch)
    if step < w:
        return (step + 1) / w
    s, rest = step - w, max(total - w, 1)
    if cfg.schedule == "cosine":
        return cosine_factor(s, rest)
    if cfg.schedule in ("linear", "onecycle"):
        return max(0.0, 1.0 - s / rest)
    if cfg.schedule == "step":
        return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size)
    return 1.0


def augment_batch(batch, cfg: TrainConfig, generator: torch.Generator):
    """The batch with its images flipped and/or shifted (see `TrainConfig.augment`).

    The images are the input of a tuple batch (its first element) or ``batch["pixel_values"]``
    / the first image-shaped tensor of a dict; other entries are untouched.
    """
    if cfg.augment == "none":
        return batch

    if isinstance(batch, Mapping):
        key = "pixel_values" if "pixel_values" in batch else next(
            (k for k, v in batch.items() if isinstance(v, torch.Tensor) and v.is_floating_point() and v.ndim >= 3), None)
        if key is None:
            raise UserError(f"augment='{cfg.augment}': the batch has no image tensor ([N, C, H, W] or [N, H, W])")
        return {**batch, key: augment_images(batch[key], cfg, generator)}
    if isinstance(batch, (tuple, list)):
        return type(batch)([augment_images(batch[0], cfg, generator), *batch[1:]])
    return augment_images(batch, cfg, generator)


def augment_images(x: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    if not (isinstance(x, torch.Tensor) and x.is_floating_point() and x.ndim in (3, 4)):
        raise UserError(f"augment='{cfg.augment}' needs image inputs [N, C, H, W] or [N, H, W], got "
                        f"{list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    squeeze = x.ndim == 3
    if squeeze:
        x = x[:, None]
    n, _, h, w = x.shape
    # draws on the CPU generator, in a fixed order, whatever the augmentation
    flip = torch.rand(n, generator=generator) < 0.5
    shift = torch.randint(-cfg.crop_padding, cfg.crop_padding + 1, (n, 2), generator=generator)
    if "flip" in cfg.augment:
        x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
    if "crop" in cfg.augment and cfg.crop_padding > 0:
        # a shifted image samples row i - dy, column j - dx of the original, clamped at the
        # border (border pixels repeated: Fashion-MNIST's border is background)
        rows = (torch.arange(h)[None, :] - shift[:, :1]).clamp(0, h - 1).to(x.device)  # [n, h]
        cols = (torch.arange(w)[None, :] - shift[:, 1:]).clamp(0, w - 1).to(x.device)  # [n, w]
        x = x.gather(2, rows[:, None, :, None].expand(n, x.shape[1], h, w))
        x = x.gather(3, cols[:, None, None, :].expand(n, x.shape[1], h, w))
    return x[:, 0] if squeeze else x


def evaluate_model(model: nn.Module, data, loss="cross_entropy", batch_size: int = 4096, forward=None,
                   metric=None) -> tuple[float, float]:
    """Mean loss and accuracy (NaN where there is none) of the model in eval mode on all of `data`."""
    ev = Objective(model, data, loss=loss, batch_size=batch_size, shortcut=False, forward=forward, metric=metric,
                   check=False).loss_at()
    return float(ev.loss[0]), float(ev.accuracy[0])


def fit(
    model: nn.Module,
    train,
    val=None,
    config: TrainConfig | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = False,
    *,
    loss=None,
    forward=None,
    metric=None,
    on_step=None,
    on_epoch=None,
    **overrides,
) -> History:
    """Train `model` in place on `train`, evaluating on all of `train` and `val` every epoch.

    `train` and `val` take any data form of `lossprobe.batching.as_data`: in-memory data is
    shuffled by ``config.data_seed``; a DataLoader is read in its own order (seed its
    shuffling through ``torch.manual_seed``, which fit sets per epoch). `loss`, `forward`
    and `metric` follow the batch contract of `Objective` (`loss` overrides
    ``config.loss``, e.g. with a function).

    Returns the `History`. If `checkpoint_dir` is given, each epoch is saved there and a
    later call with the same directory resumes after the last saved epoch. The recorded
    parameter trajectory (``config.trajectory_every > 0``) is saved as
    ``trajectory.npy`` [T, P] in `checkpoint_dir` and kept as ``history.trajectory``.
    Raises `TrainingDiverged` (with ``.history``) if the loss becomes NaN or inf.

    Hooks: ``on_step(state)`` after every optimiser step (a `StepState`), ``on_epoch(history)``
    after every epoch is recorded (and checkpointed). Both run in the training process and
    must not draw from torch's global random generator, or the run's numbers change.
    """
    cfg = config or TrainConfig()
    if overrides:
        cfg = TrainConfig(**{**asdict(cfg), **overrides})
    device = next(model.parameters()).device
    train = as_data(train, "train").to(device)
    val = as_data(val, "val") if val is not None else None
    if train.n_samples == 0:
        raise UserError("the training split is empty")
    crit = criterion(loss if loss is not None else cfg.loss, forward=forward, metric=metric, model=model)
    check_fits(model, train, crit, cfg.batch_size)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    steps_per_epoch = train.n_batches(cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    space = ParamSpace(model)
    hist, trajectory, start_epoch, elapsed = History(), [], 1, 0.0
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None:

        makedirs(ckpt)
        saved_cfg = ckpt / "train_config.json"
        try:
            old_cfg = json.loads(saved_cfg.read_text()) if saved_cfg.is_file() else None
        except ValueError:
            old_cfg = None  # damaged: derived data, written again below
        # fields added since the run started take their defaults
        if old_cfg is not None and {**asdict(TrainConfig()), **old_cfg} != asdict(cfg):
            raise UserError(
                f"{ckpt} holds a training run with a different configuration; use another directory"
            )
        _write_json(saved_cfg, asdict(cfg))
        resumed = _load_state(ckpt, model, opt)
        if resumed is not None:
            hist, trajectory = resumed
            start_epoch = hist.epoch[-1] + 1
            elapsed = hist.seconds[-1]
            # a kill while the last epoch wrote its model.safetensors copy leaves an older copy
            # behind; history.json already counts that epoch, so no later save would replace it
            save_checkpoint(model, ckpt / "model.safetensors")

    def record(epoch: int, batch_loss: float, t0: float):
        tl, ta = evaluate_model(model, train, crit, cfg.eval_batch_size)
        vl, va = evaluate_model(model, val, crit, cfg.eval_batch_size) if val is not None else (math.nan, math.nan)
        hist.epoch.append(epoch)
        hist.train_loss.append(tl)
        hist.train_accuracy.append(ta)
        hist.val_loss.append(vl)
        hist.val_accuracy.append(va)
        hist.batch_loss.append(batch_loss)
        hist.lr.append(opt.param_groups[0]["lr"])
        hist.seconds.append(elapsed + time.perf_counter() - t0)

    t0 = time.perf_counter()
    if not hist.epoch:
        record(0, math.nan, t0)
        if cfg.trajectory_every:
            trajectory.append(space.flatten(model).cpu())
        if ckpt is not None:
            _save_state(ckpt, model, opt, hist, trajectory)

    bar = None
    if progress:

        bar = tqdm(total=cfg.epochs, initial=start_epoch - 1, unit="epoch", dynamic_ncols=True, leave=False)
    step = (start_epoch - 1) * steps_per_epoch

    def step_hook(state: StepState) -> None:
        if cfg.trajectory_every and state.step % cfg.trajectory_every == 0:
            trajectory.append(space.flatten(model).cpu())
        if on_step is not None:
            on_step(state)

    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            model.train()
            # Per-epoch seeds make a resumed run draw the same batches and dropout masks.
            gen = torch.Generator().manual_seed(cfg.data_seed * 100_003 + epoch)
            torch.manual_seed(cfg.data_seed * 100_003 + epoch)
            aug_gen = torch.Generator().manual_seed(cfg.data_seed * 100_003 + epoch + 7_919_000_000)
            step, run_sum, run_n = run_epoch(
                opt, train.epoch(cfg.batch_size, gen, device),
                lambda i, batch: crit(model, augment_batch(batch, cfg, aug_gen)), epoch=epoch, step=step, lr=cfg.lr,
                lr_at=lambda s: cfg.lr * lr_factor(cfg, s, total_steps, steps_per_epoch), on_step=step_hook)
            model.eval()
            record(epoch, run_sum / run_n if run_n else math.nan, t0)
            if ckpt is not None:
                _save_state(ckpt, model, opt, hist, trajectory)
            if on_epoch is not None:
                on_epoch(hist)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(train_acc=f"{hist.train_accuracy[-1]:.3f}", val_acc=f"{hist.val_accuracy[-1]:.3f}")
    except TrainingDiverged as e:
        model.eval()
        hist.stopped = e.stopped
        e.history = hist
        if ckpt is not None:
            _write_json(ckpt / "history.json", hist.to_dict())
        raise
    finally:
        if bar is not None:
            bar.close()
    model.eval()
    hist.trajectory = torch.stack(trajectory) if trajectory else None  # type: ignore[attr-defined]
    return hist


def _write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2))


def _save_state(ckpt: Path, model, opt, hist: History, trajectory) -> None:
    # Files carry the epoch in their name and history.json, written last, says which epoch
    # is complete, so a kill at any moment leaves a consistent state to resume from.
    e = hist.epoch[-1]

    save_checkpoint(model, ckpt / f"model-{e}.safetensors")
    save_torch(ckpt / f"optimizer-{e}.pt", opt.state_dict())
    if trajectory:
        save_npy(ckpt / f"trajectory-{e}.npy", torch.stack(trajectory).numpy())
    _write_json(ckpt / "history.json", hist.to_dict())
    # the files of the epochs this history saved before, and nothing else of the folder (a user's
    # model-best.safetensors or a trajectory another tool wrote stays)
    for k in hist.epoch[:-1]:
        if k != e:
            for old in (f"model-{k}.safetensors", f"optimizer-{k}.pt", f"trajectory-{k}.npy"):
                (ckpt / old).unlink(missing_ok=True)
    save_checkpoint(model, ckpt / "model.safetensors")


def _load_state(ckpt: Path, model, opt):
    """The state saved after the last complete epoch, or None to train from the start (nothing
    saved, a stopped run, or a damaged file: all of it is derived data)."""
    hfile = ckpt / "history.json"
    if not hfile.is_file():
        return None
    try:
        hist = History.from_dict(json.loads(hfile.read_text()))
        if hist.stopped or not hist.epoch:
            return None
        e = hist.epoch[-1]
        if not (ckpt / f"model-{e}.safetensors").is_file():
            return None
        state = load_state_dict(ckpt / f"model-{e}.safetensors")
        opt_state = None
        if (ckpt / f"optimizer-{e}.pt").is_file():
            opt_state = torch.load(ckpt / f"optimizer-{e}.pt", map_location="cpu", weights_only=True)
        trajectory = []
        if (ckpt / f"trajectory-{e}.npy").is_file():
            trajectory = list(torch.from_numpy(np.load(ckpt / f"trajectory-{e}.npy")))
    except Exception:  # noqa: BLE001 - damaged: start again rather than fail
        return None
    apply_state_dict(model, state, ckpt / f"model-{e}.safetensors")
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    return hist, trajectory
