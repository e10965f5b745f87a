"""Losses as the evaluator needs them: summed over a batch, with a count of correct predictions."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .errors import UserError


class Loss:
    """A loss that returns `(sum of per-sample losses, number correct or None)` for a batch.

    Sums, not means, so that batches of unequal size are weighted by their sample count.
    """

    def __init__(self, name: str, fn: Callable, correct: Callable | None):
        self.name = name
        self._fn = fn
        self._correct = correct

    @property
    def has_accuracy(self) -> bool:
        return self._correct is not None

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        total = self._fn(out, y)
        if total.ndim:  # a user function that returns per-sample losses
            total = total.sum()
        correct = self._correct(out, y) if self._correct is not None else None
        return total, correct

    def __repr__(self) -> str:
        return f"Loss({self.name!r})"


def _ce(out, y):
    return F.cross_entropy(out, y, reduction="sum")


def _ce_correct(out, y):
    return (out.argmax(-1) == y).sum()


def _bce(out, y):
    return F.binary_cross_entropy_with_logits(out.reshape(-1), y.reshape(-1).to(out.dtype), reduction="sum")


def _bce_correct(out, y):
    return ((out.reshape(-1) > 0) == (y.reshape(-1) > 0.5)).sum()


def _mse(out, y):
    return F.mse_loss(out.reshape(len(out), -1), y.reshape(len(y), -1).to(out.dtype), reduction="none").sum(1).sum()


BUILTIN = {
    "cross_entropy": lambda: Loss("cross_entropy", _ce, _ce_correct),
    "bce": lambda: Loss("bce", _bce, _bce_correct),
    "mse": lambda: Loss("mse", _mse, None),
}


def get_loss(loss: str | Loss | Callable) -> Loss:
    """A `Loss` from a name ('cross_entropy', 'bce', 'mse'), a `Loss`, or a function.

    A plain function `fn(output, target)` must return per-sample losses [B] or their sum;
    it gets no accuracy.
    """
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        if loss not in BUILTIN:
            raise UserError(f"unknown loss '{loss}'; choose from {sorted(BUILTIN)} or pass a function")
        return BUILTIN[loss]()
    if callable(loss):
        return Loss(getattr(loss, "__name__", "custom"), loss, None)
    raise TypeError(f"loss must be a name, a Loss or a callable, got {type(loss).__name__}")
