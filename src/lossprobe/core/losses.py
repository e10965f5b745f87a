"""Losses as every probe needs them: sums over a batch with the count they are divided by.

A probe's loss is the sum of per-sample (or per-token) losses over all of its data divided
by the total count, so no result depends on how the data is batched. Conventions:

    cross_entropy  logits [B, C] with class labels [B] (or class probabilities [B, C]);
                   [B, T, C] with token labels [B, T]; [B, C, d...] with labels [B, d...].
                   Labels equal to -100 are ignored and not counted (as in torch and HF).
                   Accuracy: argmax over C equals the label, over the same count.
    bce            logits with the shape of 0/1 targets; per sample the mean over its output
                   elements (as ``nn.BCEWithLogitsLoss``); accuracy: logit > 0 matches.
    mse            per sample the mean of squared errors over its output elements, so the
                   mean over the data equals ``nn.MSELoss()`` (mean reduction); no accuracy.
    model          the loss the model returns (``output.loss`` or ``output["loss"]``), a batch
                   mean, weighted by the batch's count: the labels that are not -100 when the
                   batch has labels (shifted by one for causal language models, whose loss
                   predicts the next token), otherwise the batch size.
    a callable     ``loss(output, target)`` returning per-sample losses [B] (trailing
                   dimensions are averaged, as mean reduction would). A 0-d result (a batch
                   mean) is refused: it cannot be weighted correctly. A torch loss module
                   (``nn.CrossEntropyLoss()``, ``nn.MSELoss()``) is used with reduction='none'.

The output may be a tensor, or anything with ``.logits`` (an HF ``ModelOutput``), or a
tuple whose first element is the output tensor.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lossprobe.core.batching import Forward, batch_len, default_forward, default_target, describe
from lossprobe.errors import UserError, describe_exception

IGNORE_INDEX = -100


class Terms(NamedTuple):
    """One batch's contribution: loss sum and its count, metric sum and its count."""

    loss: torch.Tensor
    count: torch.Tensor | int
    correct: torch.Tensor | None
    correct_count: torch.Tensor | int


def logits_of(output) -> torch.Tensor:
    """The output tensor of a model's output (a tensor, ``.logits``, or a tuple's first tensor)."""
    if isinstance(output, torch.Tensor):
        return output
    lg = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    if isinstance(lg, torch.Tensor):
        return lg
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise UserError(f"the model returned {type(output).__name__}, not a tensor of outputs or an object with .logits: "
                    "pass forward= that returns the output tensor, or loss='model' for the loss the model computes")


KINDS = ("cross_entropy", "bce", "mse", "model", "custom")


class Loss:
    """A loss: ``fn(output, target, batch) -> (sum, count)`` and an optional accuracy of the
    same form (None where accuracy means nothing).

    `kind` says which loss it is, whatever its `name`: one of the built-in likelihoods
    ('cross_entropy', 'bce', 'mse'), the model's own loss ('model'), or 'custom' (a user's
    function or torch loss module, known only through its values).
    """

    def __init__(self, name: str, fn: Callable, correct: Callable | None = None, kind: str = "custom"):
        if kind not in KINDS:
            raise ValueError(f"loss kind must be one of {KINDS}, got {kind!r}")
        self.name = name
        self.fn = fn
        self._correct = correct
        self.kind = kind

    @property
    def has_accuracy(self) -> bool:
        return self._correct is not None

    def terms(self, output, target, batch=None) -> Terms:
        s, n = self.fn(output, target, batch)
        if self._correct is None:
            return Terms(s, n, None, 0)
        got = self._correct(output, target, batch)
        if got is None:
            return Terms(s, n, None, 0)
        return Terms(s, n, got[0], got[1])

    def __repr__(self) -> str:
        return f"Loss({self.name!r})"


# --- cross-entropy ---------------------------------------------------------------------------
def _ce_layout(z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [N, C] and labels [N] (or probabilities [N, C]) from any supported layout."""
    if y is None:
        raise UserError("cross_entropy needs targets: the batch has none (the last element of a tuple, "
                        "or 'labels' of a dict); pass a target or loss='model'")
    if y.is_floating_point() and y.shape == z.shape:  # class probabilities
        return z.reshape(-1, z.shape[-1]), y.reshape(-1, z.shape[-1])
    if z.shape[:-1] == y.shape:  # [B, C] / [B, T, C]: classes last
        return z.reshape(-1, z.shape[-1]), y.reshape(-1).long()
    if z.ndim >= 3 and z.shape[0] == y.shape[0] and z.shape[2:] == y.shape[1:]:  # [B, C, d...]: torch layout
        return z.movedim(1, -1).reshape(-1, z.shape[1]), y.reshape(-1).long()
    raise UserError(f"cross_entropy: outputs of shape {list(z.shape)} do not fit targets of shape {list(y.shape)}; "
                    "expected logits [B, C] with labels [B], or [B, T, C] with [B, T]")


HALF = (torch.float16, torch.bfloat16)


def _upcast(z: torch.Tensor) -> torch.Tensor:
    """Half-precision outputs in float32 for the loss: per-sample losses and their sums are
    never rounded to 8 or 11 bits (the sums over batches are float64 in the probes)."""
    return z.float() if z.dtype in HALF else z


def _ce(out, y, batch):
    z, t = _ce_layout(_upcast(logits_of(out)), y)
    if t.is_floating_point():
        return F.cross_entropy(z, t, reduction="sum"), len(z)
    return F.cross_entropy(z, t, reduction="sum", ignore_index=IGNORE_INDEX), _count(t)


def argmax_hits(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``z.argmax(-1) == labels`` (labels of IGNORE_INDEX never hit). Over a large vocabulary
    argmax is the slow part of a language model's evaluation on the CPU (a tenth of a GPT-2
    forward pass): a row can hit only if its label's logit is the row's maximum (amax is
    vectorised, 7× faster), so argmax runs on those rows alone; ties resolve as argmax does."""
    valid = labels != IGNORE_INDEX
    if z.shape[-1] <= 256 or z.numel() < (1 << 20):
        return (z.argmax(-1) == labels) & valid
    at_label = z.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    maybe = valid & (at_label >= z.amax(-1))
    hits = torch.zeros_like(maybe)
    hits[maybe] = z[maybe].argmax(-1) == labels[maybe]
    return hits


def _ce_correct(out, y, batch):
    z, t = _ce_layout(logits_of(out), y)
    if t.is_floating_point():
        return (z.argmax(-1) == t.argmax(-1)).sum(), len(z)
    return argmax_hits(z, t).sum(), _count(t)


def _count(labels: torch.Tensor) -> torch.Tensor:
    return (labels != IGNORE_INDEX).sum()


# --- bce and mse: per sample, the mean over its output elements --------------------------------
def _per_sample(z: torch.Tensor, y: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if y is None:
        raise UserError(f"{what} needs targets: the batch has none (the last element of a tuple, or 'labels' of a dict)")
    if z.numel() != y.numel():
        raise UserError(f"{what}: outputs of shape {list(z.shape)} do not fit targets of shape {list(y.shape)}")
    b = z.shape[0] if z.ndim else 1
    return z.reshape(b, -1), y.reshape(b, -1).to(z.dtype)


def _bce(out, y, batch):
    z, t = _per_sample(_upcast(logits_of(out)), y, "bce")
    if z.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(z.reshape(-1), t.reshape(-1), reduction="sum"), len(z)
    return F.binary_cross_entropy_with_logits(z, t, reduction="none").mean(1).sum(), len(z)


def _bce_correct(out, y, batch):
    z, t = _per_sample(logits_of(out), y, "bce")
    hit = (z > 0) == (t > 0.5)
    return (hit.sum() if z.shape[1] == 1 else hit.to(z.dtype).mean(1).sum()), len(z)


def _mse(out, y, batch):
    z, t = _per_sample(_upcast(logits_of(out)), y, "mse")
    if z.shape[1] == 1:
        return F.mse_loss(z.reshape(-1), t.reshape(-1), reduction="sum"), len(z)
    return F.mse_loss(z, t, reduction="none").mean(1).sum(), len(z)


# --- the model's own loss --------------------------------------------------------------------
def _model_labels(y, batch):
    if isinstance(batch, Mapping) and isinstance(batch.get("labels"), torch.Tensor):
        return batch["labels"]
    return y if isinstance(y, torch.Tensor) else None


def _model_loss(causal: bool):
    def fn(out, y, batch):
        loss = out.get("loss") if isinstance(out, Mapping) else getattr(out, "loss", None)
        if not isinstance(loss, torch.Tensor):
            raise UserError(f"loss='model' but the model returned {type(out).__name__} without a loss: give it labels "
                            "in the batch (e.g. batch['labels']) or choose a loss such as cross_entropy")
        if loss.ndim:
            raise UserError(f"loss='model': the model's loss has shape {list(loss.shape)}, expected a batch mean")
        labels = _model_labels(y, batch)
        if labels is not None and not labels.is_floating_point() and labels.ndim >= 1:
            lab = labels[..., 1:] if causal and labels.ndim >= 2 else labels
            n = _count(lab)
            # a batch whose labels are all ignored adds nothing (its mean loss is 0/0)
            return torch.where(n > 0, loss * n, torch.zeros_like(loss)), n
        n = batch_len(batch)
        return loss * n, n

    return fn


def _model_correct(causal: bool):
    def fn(out, y, batch):
        labels = _model_labels(y, batch)
        try:
            z = logits_of(out)
        except UserError:
            return None
        if labels is None or labels.is_floating_point():
            return None
        if causal and z.ndim == 3 and labels.ndim == 2:
            z, labels = z[:, :-1], labels[:, 1:]
        if z.shape[:-1] != labels.shape:
            return None
        return argmax_hits(z, labels).sum(), _count(labels)

    return fn


def is_causal_lm(model: nn.Module | None) -> bool:
    """HF causal language models shift labels by one inside their loss."""
    name = type(model).__name__ if model is not None else ""
    return name.endswith("ForCausalLM") or name.endswith("LMHeadModel")


# --- user callables ---------------------------------------------------------------------------
def _user_loss(fn: Callable) -> Callable:
    name = getattr(fn, "__name__", type(fn).__name__)

    def f(out, y, batch):
        v = fn(out, y)
        if not isinstance(v, torch.Tensor):
            raise UserError(f"the loss function '{name}' returned {type(v).__name__}, expected a tensor of "
                            "per-sample losses [B]")
        if v.ndim == 0:
            raise UserError(f"the loss function '{name}' returned one number (a batch mean?): lossprobe needs "
                            "per-sample losses [B] to weight batches correctly; use reduction='none'")
        n = _samples(y, batch)
        if n is not None and len(v) != n and len(v) % n:
            raise UserError(f"the loss function '{name}' returned {len(v)} value(s) for a batch of {n} samples: "
                            "lossprobe needs one loss per sample [B] to weight batches correctly")
        if v.ndim > 1:
            v = v.reshape(len(v), -1).mean(1)
        return _upcast(v).sum(), len(v)

    return f


def _samples(y, batch) -> int | None:
    """Samples in a batch: the target's first dimension, else the batch's (None if unknown)."""
    if isinstance(y, torch.Tensor) and y.ndim:
        return int(y.shape[0])
    try:
        return batch_len(batch)
    except UserError:
        return None


def _user_metric(fn: Callable) -> Callable:
    name = getattr(fn, "__name__", type(fn).__name__)

    def f(out, y, batch):
        v = fn(out, y)
        v = torch.as_tensor(v)
        if v.ndim != 1:
            raise UserError(f"the metric '{name}' returned shape {list(v.shape)}, expected per-sample values [B]")
        return v.to(torch.float64).sum(), len(v)

    return f


BUILTIN = ("cross_entropy", "bce", "mse", "model")


# --- targets: one check per kind of loss, over all the data ---------------------------------------
def _first_bad(mask: torch.Tensor, y: torch.Tensor) -> tuple[int, object]:
    """(sample, value) of the first True in `mask` (shaped like `y`)."""
    flat = mask.reshape(-1).nonzero()[0, 0]
    per = max(1, y[0].numel()) if y.ndim else 1
    return int(flat) // per, y.reshape(-1)[flat].item()


def _classes(z: torch.Tensor | None, y: torch.Tensor) -> int | None:
    """The number of classes of outputs `z` (one batch) for labels `y` (all samples), by the
    layouts `_ce_layout` accepts; None when they do not fit (the batch check says so)."""
    if z is None or z.ndim < 1:
        return None
    if tuple(y.shape[1:]) == tuple(z.shape[1:-1]):
        return int(z.shape[-1])
    if z.ndim >= 3 and tuple(y.shape[1:]) == tuple(z.shape[2:]):
        return int(z.shape[1])
    return None


def target_problem(kind: str, y, z: torch.Tensor | None) -> str | None:
    """What is wrong with the targets `y` (of all the samples) for a loss of `kind`, given the
    outputs `z` of one batch, or None. One rule per kind:

    cross_entropy  class labels: integers (or floats without a fraction) in [0, C) or -100,
                   C the outputs' classes; class probabilities (floats of the outputs' shape):
                   in [0, 1], summing to 1 over the classes
    bce            targets in [0, 1]
    mse            finite targets
    model          integer labels in [0, C) or -100, C the last axis of the model's logits
    custom         (the user's loss: nothing is known about its targets)
    """
    if not isinstance(y, torch.Tensor) or y.numel() == 0 or kind == "custom":
        return None
    if y.is_complex():
        return f"the targets are complex ({y.dtype}); a loss needs real targets"
    floating = y.is_floating_point()
    if floating and not bool(torch.isfinite(y).all()):
        i, v = _first_bad(~torch.isfinite(y), y)
        return f"the targets hold {v} (NaN or infinite), first at sample {i}"
    if kind == "cross_entropy":
        if floating and z is not None and z.ndim >= 1 and tuple(y.shape[1:]) == tuple(z.shape[1:]):
            lo, hi = float(y.min()), float(y.max())
            if lo < 0 or hi > 1:
                i, v = _first_bad((y < 0) | (y > 1), y)
                return (f"cross_entropy reads targets of the outputs' shape as class probabilities, but they hold "
                        f"{v:g} at sample {i} (values from {lo:g} to {hi:g}; probabilities lie in [0, 1]): are the "
                        "inputs named as the target? (--data FILE:INPUTS,TARGET)")
            sums = y.double().sum(-1)
            if bool(((sums - 1).abs() > 1e-3).any()):
                i, v = _first_bad((sums - 1).abs() > 1e-3, sums)
                return (f"cross_entropy reads targets of the outputs' shape as class probabilities, but those of "
                        f"sample {i} sum to {v:.4g}, not 1")
            return None
        if floating:
            frac = y != torch.round(y)
            if bool(frac.any()):
                i, v = _first_bad(frac, y)
                return (f"the labels are floats with a fraction ({v:g} at sample {i}): cross_entropy needs integer "
                        "class labels, or class probabilities with the outputs' shape")
        return _label_range(y, _classes(z, y), "class")
    if kind == "bce":
        lo, hi = float(y.min()), float(y.max())
        if lo < 0 or hi > 1:
            i, v = _first_bad((y < 0) | (y > 1), y)
            return f"bce targets must lie in [0, 1], found {v:g} at sample {i} (values from {lo:g} to {hi:g})"
        return None
    if kind == "model" and not floating and y.dtype != torch.bool and z is not None and z.ndim >= 1:
        return _label_range(y, int(z.shape[-1]), "label")
    return None


def _label_range(y: torch.Tensor, n: int | None, what: str) -> str | None:
    if n is None:
        return None
    yl = y.long()
    bad = (yl != IGNORE_INDEX) & ((yl < 0) | (yl >= n))
    if bool(bad.any()):
        i, v = _first_bad(bad, yl)
        return (f"{what} {v} at sample {i} is outside the model's {n} outputs 0..{n - 1} "
                f"({IGNORE_INDEX} marks an ignored position)")
    return None


def get_loss(loss, model: nn.Module | None = None) -> Loss:
    """A `Loss` from a name (see the module doc), a `Loss`, a torch loss module or a function."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        if loss == "cross_entropy":
            return Loss("cross_entropy", _ce, _ce_correct, kind="cross_entropy")
        if loss == "bce":
            return Loss("bce", _bce, _bce_correct, kind="bce")
        if loss == "mse":
            return Loss("mse", _mse, None, kind="mse")
        if loss == "model":
            causal = is_causal_lm(model)
            return Loss("model", _model_loss(causal), _model_correct(causal), kind="model")
        raise UserError(f"unknown loss '{loss}'; choose from {list(BUILTIN)} or pass a function")
    if isinstance(loss, nn.modules.loss._Loss):
        if getattr(loss, "reduction", "none") != "none":
            loss = copy.copy(loss)
            loss.reduction = "none"
        return Loss(type(loss).__name__, _user_loss(loss), None)
    if callable(loss):
        return Loss(getattr(loss, "__name__", "custom"), _user_loss(loss), None)
    raise TypeError(f"loss must be a name, a Loss or a callable, got {type(loss).__name__}")


class Criterion:
    """How one batch becomes loss terms: ``forward(model, batch)``, ``target(batch)``, the loss,
    and optionally a metric replacing the loss's accuracy.

    Args:
        loss: a name, a `Loss`, a torch loss module or ``fn(output, target) -> [B]``.
        forward: ``forward(model, batch) -> output``; default `batching.default_forward`.
        target: ``target(batch) -> target``; default `batching.default_target`.
        metric: ``metric(output, target) -> [B]`` per-sample values (e.g. 0/1 correct),
            reported as the accuracy; default the loss's own accuracy, if any.
        model: the model, to recognise causal language models for ``loss='model'``.
    """

    def __init__(self, loss="cross_entropy", forward: Forward | None = None, target: Callable | None = None,
                 metric: Callable | None = None, model: nn.Module | None = None):
        if isinstance(loss, Criterion):
            forward = forward or loss.forward
            target = target or loss.target
            metric = metric or loss.metric
            loss = loss.loss
        for what, f in (("forward", forward), ("target", target), ("metric", metric)):
            if f is not None and not callable(f):
                raise UserError(f"{what}= must be a function, got {type(f).__name__}")
        self.loss = get_loss(loss, model)
        self.forward = forward or default_forward
        self.target = target or default_target
        self.metric = metric
        self._metric = _user_metric(metric) if metric is not None else None

    @property
    def name(self) -> str:
        return self.loss.name

    @property
    def has_accuracy(self) -> bool:
        return self.metric is not None or self.loss.has_accuracy

    def terms(self, output, batch) -> Terms:
        """Loss terms of a batch from the model's output on it."""
        y = self.target(batch)
        t = self.loss.terms(output, y, batch)
        if self._metric is not None:
            s, n = self._metric(output, y, batch)
            t = Terms(t.loss, t.count, s, n)
        return t

    def __call__(self, model: nn.Module, batch) -> Terms:
        return self.terms(self.forward(model, batch), batch)

    def check(self, model: nn.Module, batch, model_name: str = "the model", data_name: str = "the data",
              targets=None) -> Terms:
        """Run one batch and turn a failure into one line naming model, data and the problem.
        `targets`: a batch of every sample (in-memory data), whose targets are checked against
        the loss (`target_problem`) so that a bad label anywhere is one line before any work."""
        try:
            out = self.forward(model, batch)
        except (UserError, KeyboardInterrupt, GeneratorExit):
            raise
        except BaseException as e:  # the user's model raised: shape, dtype, keyword (or exited)
            if getattr(type(e), "passes_wrappers", False):
                raise
            msg = describe_exception(e)
            how = "" if self.forward is not default_forward else (
                "; the default forward calls " + ("model(**batch)" if isinstance(batch, Mapping) else
                                                  "model(x1, ..., xn) on all but the last element")
                + ": pass forward=(lambda model, batch: ...) if your model is called differently")
            raise UserError(f"{model_name} cannot be called on a batch of {data_name} {describe(batch)}: "
                            f"{msg}{how}") from None
        try:
            t = self.terms(out, batch)
        except (UserError, KeyboardInterrupt, GeneratorExit):
            raise
        except BaseException as e:  # the loss (or the user's target or metric) raised, or exited
            shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise UserError(f"loss '{self.name}' fails on {model_name}'s output {shape} for {data_name} "
                            f"{describe(batch)}: {describe_exception(e)}") from None
        if targets is not None:
            try:
                y = self.target(targets)
                z = logits_of(out)
            except Exception:  # noqa: BLE001 - nothing to check against; every batch is checked as it comes
                y, z = None, None
            if self.loss.kind == "model":
                y = _model_labels(y, targets)
            problem = target_problem(self.loss.kind, y, z)
            if problem:
                raise UserError(f"{data_name}: {problem}")
        return t


def criterion(loss="cross_entropy", forward: Forward | None = None, metric: Callable | None = None,
              model: nn.Module | None = None, target: Callable | None = None) -> Criterion:
    """A `Criterion` from the keywords every probe takes (a `Criterion` passes through)."""
    if isinstance(loss, Criterion) and forward is None and metric is None and target is None:
        return loss
    return Criterion(loss, forward=forward, target=target, metric=metric, model=model)


__all__ = ["BUILTIN", "KINDS", "Criterion", "Loss", "Terms", "criterion", "get_loss", "is_causal_lm", "logits_of",
           "target_problem"]
