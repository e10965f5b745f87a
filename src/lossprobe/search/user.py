"""Searching your own model: its builder, your data in any form of the batch contract, your loss
and the objective you choose.

`UserTaskSpec` says how a process (this one, another worker on the same storage, a Ray
worker) rebuilds the task: the builder (``path/to/file.py:build``, ``module:build`` or a
callable), the data (any ``--data`` spec or any data form `lossprobe.core.batching.as_data`
takes), the loss, forward and objective. `UserTaskSpec.load()` gives a `UserTask`, the
`lossprobe.search.probes.Task` whose models are ``build(**[model] values)`` (seeded), trained
by `fit` with your loss and forward, and scored by your objective:

    accuracy   the loss's accuracy (cross_entropy, bce, a model loss with logits), maximised
    loss       the loss itself (mean over the split, as every probe computes it), minimised
    a metric   ``metric(output, target) -> per-sample values [B]`` (as ``metric=`` everywhere),
               averaged over the split; maximised unless ``direction="min"``

Every search method maximises one number, the *score*: the objective, or its negative when
it is minimised (so the Optuna studies of a loss objective hold -loss). Everything shown to
you (chosen.json, events, report, the `SearchRun`) is in the objective's own units.

Splits. Without validation data a seeded share (`val_fraction`) of the training data is
carved off for selection; the probe split (`probe_split`, where probes are evaluated) is
carved from what remains, so a probe never evaluates on the selection split; full
trainings and probes train on the rest. Without test data there is no test evaluation.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from lossprobe.core.batching import Data, Stream, TensorData, as_data, leaves, take
from lossprobe.core.losses import BUILTIN, criterion
from lossprobe.core.objective import check_fits
from lossprobe.core.specs import call_user, load_callable, looks_like_code
from lossprobe.data.sources import IMAGE_SUFFIXES, TENSOR_SUFFIXES
from lossprobe.data.sources import load as load_data
from lossprobe.errors import UserError
from lossprobe.search.probes import LOSS_CAP, SealedSplit, Task
from lossprobe.search.space import SearchSpace, UserSpace, describe_builder

OBJECTIVES = ("accuracy", "loss")
DIVERGED = -1e12  # the score of a run whose untrained value is not even finite
_TASKS: dict = {}  # one user task per process (its data in memory), by the spec's token

__all__ = ["Goal", "UserTask", "UserTaskSpec", "goal", "resolve_builder"]


# --- the objective ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Goal:
    """What the search optimises: 'accuracy', 'loss' or 'metric' (`metric` the function), and
    whether it is maximised ('max') or minimised ('min')."""

    kind: str = "accuracy"
    direction: str = "max"
    metric: Callable | None = None
    name: str = "accuracy"  # how reports call it: 'accuracy', 'loss (mse)', 'r2'

    @property
    def sign(self) -> float:
        return 1.0 if self.direction == "max" else -1.0

    def score(self, value: float) -> float:
        """The number every method maximises."""
        return self.sign * float(value)

    def unscore(self, score: float) -> float:
        """The objective, in its units, of a score."""
        return self.sign * float(score)

    def regret(self, value: float, best: float) -> float:
        """How much worse `value` is than `best`, in the objective's units (>= 0 when `best` is best)."""
        return self.sign * (float(best) - float(value))

    def describe(self) -> dict:
        return {"objective": self.name, "kind": self.kind, "direction": self.direction}


def goal(objective="accuracy", direction: str | None = None, loss_name: str = "loss") -> Goal:
    """The `Goal` of ``objective``: 'accuracy', 'loss', a metric function, or a 'module:function'
    (or 'file.py:function[:k=v]') spec naming one."""
    if direction not in (None, "max", "min"):
        raise UserError(f"direction must be 'max' or 'min', got {direction!r}")
    if objective == "accuracy":
        if direction == "min":
            raise UserError("the accuracy is maximised; for a quantity to minimise give --objective loss or a metric "
                            "with --direction min")
        return Goal("accuracy", "max", None, "accuracy")
    if objective == "loss":
        if direction == "max":
            raise UserError("the loss is minimised; for a quantity to maximise give a metric (--objective "
                            "module:function)")
        return Goal("loss", "min", None, f"loss ({loss_name})")
    if isinstance(objective, str):
        if not looks_like_code(objective):
            raise UserError(f"--objective must be accuracy, loss or module:function (a per-sample metric), "
                            f"got '{objective}'")
        fn = _function(objective, "objective")
        name = objective.split(":")[1]
    elif callable(objective):
        fn, name = objective, getattr(objective, "__name__", None) or type(objective).__name__
    else:
        raise UserError(f"objective must be 'accuracy', 'loss' or a function metric(output, target) -> [B], "
                        f"got {type(objective).__name__}")
    return Goal("metric", direction or "max", fn, name)


# --- naming things so that every worker finds them ---------------------------------------------
def _absolute(spec: str) -> str:
    """`spec` with a leading file or folder path made absolute (file.py:fn, FILE.npz:keys,
    imagefolder:DIR...), so that a worker started elsewhere finds the same thing."""
    head, sep, rest = spec.partition(":")
    if head.endswith((".py", *TENSOR_SUFFIXES)) or head.lower().endswith(IMAGE_SUFFIXES):
        return str(Path(head).expanduser().resolve()) + sep + rest
    if head == "imagefolder" and rest:
        folder, sep2, opts = rest.partition(":")
        return f"imagefolder:{Path(folder).expanduser().resolve()}{sep2}{opts}"
    if head in ("cifar10", "cifar100") and rest:
        folder, sep2, part = rest.partition(":")
        return f"{head}:{Path(folder).expanduser().resolve()}{sep2}{part}"
    return spec


def _function(spec: str, what: str) -> Callable:
    fn, kwargs = load_callable(spec, what)
    return functools.partial(fn, **kwargs) if kwargs else fn


def resolve_builder(build) -> tuple[Callable, dict, str]:
    """(builder, the keyword arguments its spec fixes, its name) of a 'file.py:build[:k=v]' /
    'module:build' spec or a callable (a function or an nn.Module class)."""
    if isinstance(build, str):
        if not looks_like_code(build):
            raise UserError(f"--model '{build}' must name your builder: path/to/file.py:function or "
                            "module:function (the built-in mlp/cnn are searched with --dataset and [params])")
        fn, kwargs = load_callable(build, "model")
        return fn, kwargs, build
    if not callable(build):
        raise UserError(f"build must be a function (or class) returning an nn.Module, got {type(build).__name__}")
    return build, {}, describe_builder(build)


def _describe_callable(fn) -> str | None:
    if fn is None or isinstance(fn, str):
        return fn
    if isinstance(fn, functools.partial):
        return f"{_describe_callable(fn.func)}({', '.join(f'{k}={v!r}' for k, v in fn.keywords.items())})"
    if isinstance(fn, nn.Module):
        return repr(fn)
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def _fingerprint(data, read_values: bool = True) -> str:
    """A short description of data passed as an object: its size and (unless `read_values`
    is False, as for the sealed test set) a hash of a strided sample of its values."""
    d = as_data(data)
    if not isinstance(d, TensorData):
        return f"stream of {d.n_batches()} batches"
    shapes = [(str(t.dtype), tuple(t.shape)) for t in leaves(d.tree)]
    if not read_values:
        return f"{len(d)} samples {shapes}"
    h = hashlib.sha256(repr(shapes).encode())
    for t in leaves(d.tree):
        flat = t.detach().reshape(-1).cpu()
        part = flat[:: max(1, flat.numel() // 65_536)]
        h.update((part.to(torch.float64) if part.is_floating_point() else part.to(torch.int64)).numpy().tobytes())
    return f"{len(d)} samples {shapes} sha256:{h.hexdigest()[:16]}"


def _describe_data(data, read_values: bool = True):
    if data is None or isinstance(data, str):
        return data
    return _fingerprint(data, read_values)


# --- the task ----------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class UserTaskSpec:
    """How any process rebuilds the task of a search over your own model (see the module doc).

    Args:
        build: 'path/to/file.py:build[:k=v]', 'module:build', or a callable returning an nn.Module
            from keyword arguments (the [model] values).
        train: the training data: a ``--data`` spec string (read by each process itself) or
            any data form (`as_data`).
        val: the selection split (as `train`); None: carved from `train` (module doc).
        test: evaluated once for the chosen configuration (as `train`); None: no test evaluation.
        probe: the split probes are evaluated on (as `train`); None: carved from `train`.
        loss: the loss (a name, a 'module:function' spec or a function).
        forward: how the model is called on a batch (None: the default forward).
        objective: what the search optimises (see `goal`).
        direction: 'max' or 'min' (see `goal`).
        val_fraction: the share of the training data carved off for selection when `val` is None.
        probe_split: the share carved off for evaluating probes when `probe` is None.
        seed: seeds the carving (the search's seed).
    """

    build: Any
    train: Any
    val: Any = None
    test: Any = None
    probe: Any = None
    loss: Any = "cross_entropy"
    forward: Any = None
    objective: Any = "accuracy"
    direction: str | None = None
    val_fraction: float = 0.2
    probe_split: float = 0.1
    seed: int = 0
    token: str = field(default="", compare=False)

    def __post_init__(self):
        for name in ("build", "train", "val", "test", "probe", "loss", "forward", "objective"):
            v = getattr(self, name)
            if isinstance(v, str):
                object.__setattr__(self, name, _absolute(v))
        if self.train is None:
            raise UserError("a search needs training data")
        for name, v in (("val_fraction", self.val_fraction), ("probe_split", self.probe_split)):
            if not (isinstance(v, (int, float)) and 0 < v < 1):
                raise UserError(f"{name} must be in (0, 1), got {v!r}")
        if self.val is None and self.val_fraction + self.probe_split >= 1:
            raise UserError(f"val_fraction + probe_split must be below 1 (the rest is trained on), got "
                            f"{self.val_fraction} + {self.probe_split}")
        if not self.token:
            object.__setattr__(self, "token", json.dumps(self.describe(), sort_keys=True))

    def describe(self) -> dict:
        """What identifies the task (the storage's settings and the run's config.json hold it)."""
        if self.token:
            return json.loads(self.token)
        return {"build": self.build if isinstance(self.build, str) else _describe_callable(self.build),
                "train": _describe_data(self.train), "val": _describe_data(self.val),
                "test": _describe_data(self.test, read_values=False), "probe": _describe_data(self.probe),
                "loss": _describe_callable(self.loss), "forward": _describe_callable(self.forward),
                "objective": _describe_callable(self.objective), "direction": self.direction,
                "val_fraction": self.val_fraction if self.val is None else None,
                "probe_split": self.probe_split if self.probe is None else None, "seed": self.seed}

    def load(self) -> "UserTask":
        if self.token not in _TASKS:
            _TASKS.clear()  # keep one data set per process
            _TASKS[self.token] = self._load()
        return _TASKS[self.token]

    def _load(self) -> "UserTask":
        builder, bkw, bname = resolve_builder(self.build)
        if isinstance(self.build, str) and ".py:" in self.build:  # file.py:build, not the whole path
            head, _, rest = self.build.partition(".py:")
            bname = f"{Path(head).name}.py:{rest}"
        loss = self.loss
        if isinstance(loss, str) and loss not in BUILTIN:
            if not looks_like_code(loss):
                raise UserError(f"unknown loss '{loss}'; choose from {', '.join(BUILTIN)} or give module:function")
            loss = _function(loss, "loss")
        forward = _function(self.forward, "forward") if isinstance(self.forward, str) else self.forward
        g = goal(self.objective, self.direction, _loss_name(self.loss))
        train = _data(self.train, "training data")
        val = _data(self.val, "validation data") if self.val is not None else None
        probe = _data(self.probe, "probe data") if self.probe is not None else None
        test = _data(self.test, "test data") if self.test is not None else None
        n_all = train.n_samples if isinstance(train, TensorData) else None
        train, val, probe, how = _carve(train, val, probe, self.val_fraction, self.probe_split, self.seed)
        return UserTask(train, val, SealedSplit(test) if test is not None else None, name=str(self.train)[:80],
                        input_shape=(0,), n_classes=0, probe_val=probe, builder=builder, builder_kwargs=bkw,
                        builder_name=bname, loss=loss, forward=forward, goal=g, splits=how, n_given=n_all)


def _loss_name(loss) -> str:
    if isinstance(loss, str):
        return loss.split(":")[1] if looks_like_code(loss) else loss
    return getattr(loss, "__name__", None) or type(loss).__name__


def _data(spec, what: str) -> Data:
    if isinstance(spec, str):
        return load_data(spec)
    return as_data(spec, what)


def _carve(train: Data, val, probe, val_fraction: float, probe_split: float, seed: int):
    """(train, val, probe, how): the validation and probe splits carved from `train` where not given,
    by one seeded permutation (disjoint: selection, probe evaluation, training)."""
    need = [n for n, d in (("validation", val), ("probe", probe)) if d is None]
    how = {"val": "given" if val is not None else None, "probe": "given" if probe is not None else None}
    if not need:
        return train, val, probe, how
    if not isinstance(train, TensorData):
        opts = " and ".join({"validation": "--val-data (val_data=)", "probe": "--probe-data (probe_data=)"}[n]
                            for n in need)
        raise UserError(f"the training data is a stream of batches, from which no {' or '.join(need)} split can "
                        f"be carved: give {opts}")
    n = len(train)
    n_val = max(1, round(val_fraction * n)) if val is None else 0
    n_probe = max(1, round(probe_split * n)) if probe is None else 0
    if n - n_val - n_probe < 1:
        raise UserError(f"the training data has {n} samples: too few to carve a validation and a probe split "
                        "and keep some to train on; give more data or --val-data/--probe-data")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1_000_003 * int(seed) + 271))
    parent = train.indices if train.indices is not None else np.arange(n)

    def part(idx, name):
        idx = idx.sort().values
        return train._with(take(train.tree, idx), f"{train.name}:{name}", parent[idx.numpy()])

    if val is None:
        val = part(perm[:n_val], "val")
        how["val"] = f"carved: {n_val} of {n} training samples (val_fraction {val_fraction:g}, seed {seed})"
    if probe is None:
        probe = part(perm[n_val:n_val + n_probe], "probe")
        how["probe"] = f"carved: {n_probe} of {n} training samples (probe_split {probe_split:g}, seed {seed})"
    rest = part(perm[n_val + n_probe:], "train")
    how["train"] = f"{len(rest)} samples"
    return rest, val, probe, how


@dataclass
class UserTask(Task):
    """A `Task` whose models come from your builder, trained with your loss and forward and scored
    by your objective (see the module doc)."""

    builder: Callable | None = None
    builder_kwargs: dict = field(default_factory=dict)
    builder_name: str = "build"
    loss: Any = "cross_entropy"
    forward: Callable | None = None
    goal: Goal = field(default_factory=Goal)
    splits: dict = field(default_factory=dict)
    n_given: int | None = None

    def __post_init__(self):
        pass  # no input shape to read: the builder knows its inputs

    def build_model(self, space: SearchSpace, values: dict, seed: int) -> nn.Module:
        kwargs = {**self.builder_kwargs, **space.model_kwargs(values)}
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            model = call_user(self.builder, kwargs, self.builder_name, "model")
        finally:
            torch.random.set_rng_state(state)
        if not isinstance(model, nn.Module):
            raise UserError(f"model '{self.builder_name}' returned {type(model).__name__}, not a torch.nn.Module")
        return model

    def fit_kwargs(self) -> dict:
        return {"loss": self.loss, "forward": self.forward, "metric": self.goal.metric}

    @property
    def chance(self) -> float:
        return 0.0  # the epoch-0 point of learning-curve features: any constant (runs fall back to their own)

    def loss_cap(self, history: dict) -> float:
        """Ten times the untrained model's loss (at least `LOSS_CAP`): the scale of your loss."""
        first = [abs(float(v[0])) for k in ("train_loss", "val_loss") if (v := history.get(k))
                 and math.isfinite(v[0])]
        return max([LOSS_CAP] + [10.0 * f for f in first])

    def scores(self, history: dict, split: str, cap: float | None = None) -> list[float]:
        if self.goal.kind == "loss":
            vals = history[f"{split}_loss"]
            return [-(min(float(v), cap) if cap is not None else float(v)) for v in vals]
        return [self.goal.score(v) for v in history[f"{split}_accuracy"]]

    def fallback(self, history: dict) -> float:
        """A diverged run keeps the score of its untrained model (the first point of its curve)."""
        s = self.scores(history, "val", self.loss_cap(history)) if history.get("epoch") else []
        return s[0] if s and math.isfinite(s[0]) else DIVERGED

    def value(self, loss: float, accuracy: float) -> float:
        return float(loss) if self.goal.kind == "loss" else float(accuracy)

    def check(self, space: UserSpace, seed: int = 0) -> None:
        """Before any work: a configuration of the space builds, the model takes batches of each split
        and the loss gives the objective its numbers (one line naming the first problem)."""
        if isinstance(self.train, Stream) and "batch_size" in space.tables:
            raise UserError("the training data is a stream of batches (a DataLoader?), whose batches are fixed: "
                            "[train] 'batch_size' would change nothing; leave it out, or pass in-memory data")
        values = space.sample(np.random.default_rng([seed, 7, 0]))
        model = self.build_model(space, values, seed)
        crit = criterion(self.loss, forward=self.forward, metric=self.goal.metric, model=model)
        name = f"model '{self.builder_name}'"
        for what, data in (("training data", self.train), ("validation data", self.val),
                           ("probe data", self.probe_val)):
            check_fits(model, data, crit, model_name=name, data_name=f"the {what}")
        if self.goal.kind == "accuracy":
            batch = take(self.val.first(8), slice(0, 8)) if isinstance(self.val, TensorData) else self.val.first()
            was = model.training
            model.eval()
            with torch.no_grad():
                t = crit(model, batch)
            model.train(was)
            if t.correct is None:
                raise UserError(f"--objective accuracy, but loss '{crit.name}' gives no accuracy for the outputs of "
                                f"{name} (a regression?): use --objective loss, or a metric (--objective "
                                "module:function returning per-sample values)")

    def describe_splits(self) -> dict:
        def n(d):
            return None if d is None else (d.n_samples if not isinstance(d, Stream) else f"{d.n_batches()} batches")

        return {"train": n(self.train), "val": n(self.val), "probe": n(self.probe_val),
                "test": "given (sealed)" if self.test is not None else None, **{f"how_{k}": v for k, v in
                                                                             self.splits.items() if v}}

