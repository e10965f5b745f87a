"""Training monitors for any loop: gradient norm and weight norm per step, and plateaus.

Two ways to use them::

    mon = TrainingMonitor(model)
    mon.attach(optimizer)          # records ‖grad‖ and ‖θ‖ just before every optimizer.step()
    for x, y in loader:
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        mon.log_loss(loss)          # the minibatch loss of this step
    print(mon.plateaus())          # where training stalled

or, without hooks, call ``mon.record(loss)`` after ``backward()`` and before ``step()``.

A plateau is a run of steps where the variance of the loss over a sliding window is
below a threshold: the loss has stopped moving. With ``relative=True`` the variance is
divided by the squared mean loss over the window (so the threshold does not depend on
the loss's scale).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np
import torch
from torch import nn

from lossprobe.errors import UserError


def _params(source) -> list[torch.Tensor]:
    if isinstance(source, nn.Module):
        return [p for p in source.parameters() if p.requires_grad]
    if isinstance(source, torch.optim.Optimizer):
        return [p for g in source.param_groups for p in g["params"]]
    return list(source)


@torch.no_grad()
def grad_norm(source) -> float:
    """Euclidean norm of all gradients of a model, optimizer or iterable of tensors (0 if none)."""
    sq = [p.grad.detach().double().pow(2).sum() for p in _params(source) if p.grad is not None]
    return float(torch.stack(sq).sum().sqrt()) if sq else 0.0


@torch.no_grad()
def weight_norm(source) -> float:
    """Euclidean norm of all parameters (as one flat vector)."""
    sq = [p.detach().double().pow(2).sum() for p in _params(source)]
    return float(torch.stack(sq).sum().sqrt()) if sq else 0.0


@dataclass
class Plateau:
    """Steps [start, end] (inclusive) over which the loss stalled, and its mean there."""

    start: int
    end: int
    mean_loss: float

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def to_dict(self) -> dict:
        return {**asdict(self), "length": self.length}


def rolling_variance(values: Iterable[float], window: int) -> np.ndarray:
    """Variance of each full window of `window` consecutive values: [len − window + 1]."""
    v = np.asarray(list(values), dtype=float)
    if window <= 1:
        raise UserError(f"window must be at least 2, got {window}")
    if v.size < window:
        return np.empty(0)
    w = np.lib.stride_tricks.sliding_window_view(v, window)
    return w.var(axis=1)


def detect_plateaus(losses: Iterable[float], window: int = 50, threshold: float = 1e-4, relative: bool = True,
                    min_length: int | None = None, steps: Iterable[int] | None = None) -> list[Plateau]:
    """Runs of steps where the loss variance over a `window` is below `threshold`.

    Args:
        losses: loss per step [T].
        window: steps per window.
        threshold: variance threshold (of loss/mean(loss) when `relative`).
        relative: divide each window's variance by its squared mean loss.
        min_length: shortest plateau reported, in steps (default `window`).
        steps: step numbers of the entries of `losses` (default 0..T−1).
    Returns:
        plateaus in order; a window that is flat marks all of its steps as stalled, and
        overlapping flat windows merge into one plateau.
    """
    v = np.asarray(list(losses), dtype=float)
    st = np.arange(v.size) if steps is None else np.asarray(list(steps))
    if st.size != v.size:
        raise UserError(f"{st.size} step numbers for {v.size} losses")
    if threshold < 0:
        raise UserError(f"threshold must be non-negative, got {threshold}")
    var = rolling_variance(v, window)
    if relative and var.size:
        mean = np.lib.stride_tricks.sliding_window_view(v, window).mean(axis=1)
        var = var / np.maximum(mean**2, 1e-300)
    flat = np.zeros(v.size, dtype=bool)
    for i in np.nonzero(np.isfinite(var) & (var < threshold))[0]:
        flat[i : i + window] = True
    out: list[Plateau] = []
    min_length = window if min_length is None else min_length
    i = 0
    while i < v.size:
        if flat[i]:
            j = i
            while j + 1 < v.size and flat[j + 1]:
                j += 1
            if j - i + 1 >= min_length:
                out.append(Plateau(int(st[i]), int(st[j]), float(np.mean(v[i : j + 1]))))
            i = j + 1
        else:
            i += 1
    return out


class TrainingMonitor:
    """Per-step gradient norm, weight norm and loss of a training run, and its plateaus.

    Args:
        model: the model (or an iterable of parameters) being trained.
        window: the plateau detector's window (`detect_plateaus`).
        threshold: its variance threshold.
        relative: whether it divides each window's variance by its squared mean loss.
    """

    def __init__(self, model, window: int = 50, threshold: float = 1e-4, relative: bool = True):
        self.source = model
        self.window, self.threshold, self.relative = window, threshold, relative
        self.steps: list[int] = []
        self.grad_norm: list[float] = []
        self.weight_norm: list[float] = []
        self.loss: list[float] = []
        self._handles = []

    def __len__(self) -> int:
        return len(self.grad_norm)

    def record(self, loss=None) -> None:
        """Record this step's gradient norm, weight norm and (optionally) loss.

        Call it after ``loss.backward()`` and before ``optimizer.step()``.
        """
        self.steps.append(len(self.grad_norm))
        self.grad_norm.append(grad_norm(self.source))
        self.weight_norm.append(weight_norm(self.source))
        if loss is not None:
            self.log_loss(loss)

    def log_loss(self, loss) -> None:
        """Record the loss of the current step (a float or a 0-d tensor)."""
        self.loss.append(float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss))

    def attach(self, optimizer: torch.optim.Optimizer) -> "TrainingMonitor":
        """Record norms automatically before every ``optimizer.step()`` (a step pre-hook)."""
        self._handles.append(optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.record()))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def plateaus(self, **kw) -> list[Plateau]:
        """Plateaus of the logged loss (settings default to the monitor's)."""
        if not self.loss:
            return []
        opts = {"window": self.window, "threshold": self.threshold, "relative": self.relative, **kw}
        return detect_plateaus(self.loss, steps=range(len(self.loss)), **opts)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"grad_norm": np.asarray(self.grad_norm), "weight_norm": np.asarray(self.weight_norm),
                "loss": np.asarray(self.loss)}

    def summary(self) -> dict:
        """Key numbers: final and peak norms, where training stalled."""
        g, w = np.asarray(self.grad_norm), np.asarray(self.weight_norm)
        plateaus = self.plateaus()
        return {
            "steps": len(g),
            "grad_norm_final": float(g[-1]) if g.size else math.nan,
            "grad_norm_max": float(g.max()) if g.size else math.nan,
            "weight_norm_initial": float(w[0]) if w.size else math.nan,
            "weight_norm_final": float(w[-1]) if w.size else math.nan,
            "plateaus": [p.to_dict() for p in plateaus],
            "first_stall_step": plateaus[0].start if plateaus else None,
            "plateau_settings": {"window": self.window, "threshold": self.threshold, "relative": self.relative},
        }


__all__ = ["Plateau", "TrainingMonitor", "detect_plateaus", "grad_norm", "rolling_variance", "weight_norm"]
