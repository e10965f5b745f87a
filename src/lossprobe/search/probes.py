"""Probes: train a candidate briefly on a seeded fraction of the data and read named features.

A probe of configuration `values` at fidelity (fraction f, epochs e) trains the network on
a seeded subset of f·N training images for e epochs and returns `ProbeResult.features`, a
dict whose keys are exactly `feature_names(space)`:

* ``hp_*``                 the hyperparameters (log10 for log ranges, one-hot for choices)
* ``probe_fraction``, ``probe_epochs``  the fidelity
* ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``  after the last probe epoch
* ``*_slope``              change of those per epoch over the last probe epoch
* ``grad_norm``            ‖∇L‖ of the training loss at the probe's end (on ≤1024 samples)
* ``sharpness_noise``      mean rise of the training loss under Gaussian weight noise of
                           relative size ``noise_sigma`` (8 seeded draws, one
                           `Objective.evaluate` call): per filter through
                           `lossprobe.sharpness.noise_robustness` (default), or per tensor
* ``hessian_top``          top Hessian eigenvalue by power iteration on ≤256 samples
                           (`lossprobe.curvature.power_iteration`)
* ``diverged``             1 if the probe's loss became NaN/inf (other features then take
                           the fixed values of a chance-level network)

Features come in *families* (`FAMILIES`), each with its own measured cost, so a search can
compute only those that pay for themselves (`DEFAULT_FAMILIES`, chosen by the benchmark's
cost/value measurement; any subset by name with ``families=``):

* ``curve``      the probe's training itself and its learning curve (always computed)
* ``grad_norm``  one gradient on ≤1024 training samples
* ``sharpness``  the weight-noise probe (``sharpness_noise``)
* ``hessian``    the power iteration (``hessian_top``)

A probe's nominal cost is f·e full-data epochs; its measured cost is `ProbeResult.seconds`
(wall) and `ProbeResult.family_seconds` (process CPU seconds per family: ``curve`` for the
training and its per-epoch evaluations, then one entry per extra family computed).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from lossprobe.core.batching import Data, Split, Stream, batch_len
from lossprobe.core.objective import Objective
from lossprobe.core.space import KINDS
from lossprobe.curvature.algorithms import power_iteration
from lossprobe.curvature.operators import HessianOperator
from lossprobe.curvature.sharpness import noise_robustness
from lossprobe.data import fashion_mnist, two_spirals
from lossprobe.data.cifar import cifar
from lossprobe.errors import UserError
from lossprobe.search.space import SearchSpace
from lossprobe.training.loop import TrainingDiverged, evaluate_model, fit

PROBE_FEATURES = (
    "probe_fraction", "probe_epochs",
    "train_loss", "train_acc", "val_loss", "val_acc",
    "train_loss_slope", "train_acc_slope", "val_loss_slope", "val_acc_slope",
    "grad_norm", "sharpness_noise", "hessian_top", "diverged",
)
SHARPNESS_FEATURES = ("sharpness_noise", "hessian_top")
LOSS_CAP = 10.0  # losses of diverged or exploding runs are capped so features stay finite

# feature families: what each computes (hyperparameters and the fidelity are always present, free)
FAMILIES: dict[str, tuple[str, ...]] = {
    "curve": ("train_loss", "train_acc", "val_loss", "val_acc", "train_loss_slope", "train_acc_slope",
              "val_loss_slope", "val_acc_slope", "diverged"),
    "grad_norm": ("grad_norm",),
    "sharpness": ("sharpness_noise",),
    "hessian": ("hessian_top",),
}
ALL_FAMILIES = tuple(FAMILIES)
# The families a probe computes by default: those whose held-out value paid for their measured
# cost in the search benchmark (docs/search.md, "Which probe features pay for themselves").
DEFAULT_FAMILIES = ("curve",)


def parse_families(spec) -> tuple[str, ...]:
    """Families from a list or a comma-separated string ('curve,grad_norm'; 'all'; 'default').

    ``curve`` is always included (it is the probe's training). Unknown names are one clear error."""
    if spec is None or spec == "default":
        return DEFAULT_FAMILIES
    if isinstance(spec, str):
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    names = list(spec)
    if names == ["all"]:
        return ALL_FAMILIES
    bad = [n for n in names if n not in FAMILIES]
    if bad:
        raise UserError(f"unknown probe feature family '{bad[0]}'; choose from {', '.join(FAMILIES)} (or 'all')")
    return tuple(f for f in ALL_FAMILIES if f == "curve" or f in names)


def feature_names(space: SearchSpace, sharpness: bool = True, families=ALL_FAMILIES) -> list[str]:
    """The names, in order, of the features a probe returns and the meta-model expects.

    `families` (see `FAMILIES`) selects which probe features are present; ``sharpness=False``
    drops the sharpness and Hessian features (the earlier ablation)."""
    fam = parse_families(families)
    keep = {"probe_fraction", "probe_epochs"} | {n for f in fam for n in FAMILIES[f]}
    names = space.encoded_names() + [n for n in PROBE_FEATURES if n in keep]
    return names if sharpness else [n for n in names if n not in SHARPNESS_FEATURES]


def family_of(name: str) -> str | None:
    """The family a feature belongs to (None for hyperparameters and the fidelity)."""
    for f, names in FAMILIES.items():
        if name in names:
            return f
    return None


class SealedSplit:
    """A held-out split that refuses to be read until it is opened, and opens once.

    The search loop calls `open(reason)` exactly once, after selection has finished; any
    earlier access to `.x`, `.y`, `len()` or iteration raises `RuntimeError`, and a second
    `open` raises too. `accesses` records each opening for audits and tests.
    """

    def __init__(self, split: Split):
        self._split = split
        self.accesses: list[str] = []

    def open(self, reason: str) -> Split:
        if self.accesses:
            raise RuntimeError(f"the test set was already used ({self.accesses[0]}); it is touched once per search")
        self.accesses.append(reason)
        return self._split

    @property
    def touched(self) -> bool:
        return bool(self.accesses)

    def reseal(self) -> "SealedSplit":
        """A new, unopened seal over the same data: one per search (a process may run several)."""
        return SealedSplit(self._split)

    def _refuse(self, *a, **k):
        raise RuntimeError("the test set is sealed during selection; only the final evaluation may open it")

    x = property(_refuse)
    y = property(_refuse)
    __len__ = _refuse
    __iter__ = _refuse
    batches = _refuse
    subset = _refuse
    to = _refuse


@dataclass
class Task:
    """What a search runs on: train and validation splits, and the sealed test split."""

    train: Split
    val: Split
    test: SealedSplit | None
    name: str = "data"
    input_shape: tuple[int, ...] = ()
    n_classes: int = 10
    probe_val: Split | None = None  # where probes are evaluated (None: `val`); disjoint from `val` when set
    score_val: Split | None = None  # benchmark only: a held-out split never used for selection

    def __post_init__(self):
        if not self.input_shape:
            self.input_shape = tuple(self.train.x.shape[1:])
        if isinstance(self.test, Split):
            self.test = SealedSplit(self.test)

    # --- what a configuration means on this task: the built-in mlp/cnn (`lossprobe.search.user.UserTask`
    # builds your own model, with your loss and objective) ---
    def build_model(self, space: SearchSpace, values: dict, seed: int):
        """The network of configuration `values`, initialised with `seed`."""
        return space.build_model(values, self.input_shape, self.n_classes, seed=seed)

    def train_config(self, space: SearchSpace, values: dict, epochs: int | None = None, data_seed: int = 0):
        return space.train_config(values, epochs=epochs, data_seed=data_seed)

    def fit_kwargs(self) -> dict:
        """The batch contract (loss=, forward=, metric=) that `fit` and `evaluate_model` get."""
        return {}

    @property
    def chance(self) -> float:
        """The value of a network that learned nothing (curves of diverged runs stay there)."""
        return 1.0 / self.n_classes

    def loss_cap(self, history: dict) -> float:
        """Losses above this are capped in probe features (diverged or exploding runs)."""
        return LOSS_CAP

    def scores(self, history: dict, split: str, cap: float | None = None) -> list[float]:
        """The search's value (higher is better) after each epoch on `split` ('train' or 'val') of a
        training's history: its accuracy here."""
        return list(history[f"{split}_accuracy"])

    def fallback(self, history: dict) -> float:
        """The value a diverged training is given."""
        return self.chance

    def value(self, loss: float, accuracy: float) -> float:
        """The objective, in its own units, from a loss and an accuracy (or metric): the accuracy here."""
        return accuracy


PROBE_SPLIT = 0.1  # share of the training data `lossprobe search` carves off to evaluate probes on


def carve_probe_split(train: Split, probe_split: float, seed: int = 0) -> tuple[Split, Split]:
    """(train, probe): `probe_split` of the training data carved off by a seeded permutation, where
    probes are evaluated (never the selection split). The same carve as the search benchmark's
    tables (`lossprobe.search.table.benchmark_task` with n_train + n_probe_val = all of it)."""
    if not 0 < probe_split < 1:
        raise UserError(f"--probe-split must be in (0, 1), got {probe_split}")
    n = len(train)
    n_probe = max(1, int(round(probe_split * n)))
    if n - n_probe < 1:
        raise UserError(f"the training data has {n} samples: too few to carve a probe split")
    perm = np.random.default_rng([seed, 31]).permutation(n)
    parent = train.indices if train.indices is not None else np.arange(n)

    def part(idx, name):
        idx = np.sort(idx)
        t = torch.as_tensor(idx)
        return Split(train.x[t], train.y[t], f"{train.name}:{name}", parent[idx])

    return part(perm[:n - n_probe], "train"), part(perm[n - n_probe:], "probe")


def make_task(dataset: str = "fashion-mnist", n_train: int | None = None, n_val: int | None = None,
              seed: int = 0, root=None, probe_split: float | None = PROBE_SPLIT) -> Task:
    """Fashion-MNIST (default) or CIFAR-10/100 ('cifar10:DIR', 'cifar100:DIR') as a `Task`.

    A `probe_split` share of the training data is carved off (seeded) for evaluating probes, so
    probes never see the selection split (None: probes are evaluated on the validation split, as
    before issue 26); then `n_train`/`n_val` take seeded subsets of what remains. The test split
    is sealed (see `SealedSplit`).
    """
    probe_val = None
    if dataset == "fashion-mnist":

        ds = fashion_mnist(root=root, split_seed=seed)
        train, val, test, n_classes = ds.train, ds.val, ds.test, 10
    elif dataset == "spiral":  # tiny synthetic task for tests and demos: n points per class

        train = two_spirals(n=(n_train or 400) // 2, seed=seed, name="spiral:train")
        val = two_spirals(n=(n_val or 200) // 2, seed=seed + 1, name="spiral:val")
        test, n_classes = two_spirals(n=100, seed=seed + 2, name="spiral:test"), 2
        if probe_split is not None:  # its own points: a share of the training set's size
            probe_val = two_spirals(n=max(1, int(round(probe_split * len(train))) // 2), seed=seed + 3,
                                    name="spiral:probe")
        n_train = n_val = None
    elif dataset.split(":")[0] in ("cifar10", "cifar100"):

        kind, _, path = dataset.partition(":")
        ds = cifar(path or root, kind=kind, split_seed=seed)
        train, val, test, n_classes = ds.train, ds.val, ds.test, ds.n_classes
    else:
        raise UserError(f"unknown dataset '{dataset}'; use fashion-mnist, cifar10:DIR, cifar100:DIR or spiral")
    if probe_split is not None and probe_val is None:
        train, probe_val = carve_probe_split(train, probe_split, seed)
    if n_train:
        train = train.subset(n_train, seed=seed + 1)
    if n_val:
        val = val.subset(n_val, seed=seed + 2)
    return Task(train, val, SealedSplit(test), dataset, tuple(train.x.shape[1:]), n_classes, probe_val=probe_val)


@dataclass
class ProbeResult:
    features: dict[str, float]
    cost: float  # full-data epoch equivalents (nominal: fraction × epochs)
    history: dict = field(default_factory=dict)
    seconds: float = 0.0  # wall time, everything included
    family_seconds: dict = field(default_factory=dict)  # process CPU seconds per feature family


class _Stopwatch:
    """Wall and process-CPU seconds of a block (CPU time is robust to other load on a shared machine)."""

    def __enter__(self):
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self._w, time.process_time() - self._c


def _subset_fraction(split: Data, fraction: float, seed: int) -> Data:
    if not 0 < fraction <= 1:
        raise UserError(f"probe fraction must be in (0, 1], got {fraction}")
    if isinstance(split, Stream):  # batches in the stream's own order: the first `fraction` of them
        nb = split.n_batches()
        return _Prefix(split, max(1, int(round(fraction * nb)))) if fraction < 1 else split
    n = max(1, int(round(fraction * len(split))))
    return split.subset(n, seed=seed) if n < len(split) else split


def _samples(data: Data, n: int, seed: int) -> Data:
    """A seeded subset of about `n` samples (in-memory data), or the first batches holding `n` (a stream)."""
    if not isinstance(data, Stream):
        return data.subset(n, seed=seed)
    batches, got = [], 0
    for b in data.batches():
        batches.append(b)
        got += batch_len(b)
        if got >= n:
            break
    return Stream(batches, f"{data.name}[{got}]")


class _Prefix(Stream):
    """The first `n` batches of a stream, each time it is read (a probe's share of a DataLoader)."""

    def __init__(self, stream: Stream, n: int):
        super().__init__(stream.source, f"{stream.name}[:{n} batches]", stream.device)
        self.n = n

    def batches(self, batch_size: int | None = None):
        return itertools.islice(super().batches(batch_size), self.n)

    def n_batches(self, batch_size: int | None = None) -> int:
        return self.n

    @property
    def n_samples(self) -> int:
        return sum(batch_len(b) for b in self.batches())

    def to(self, device) -> "_Prefix":
        return _Prefix(Stream(self.source, self.name, device), self.n)


def hessian_top_eigenvalue(model, data: Split, iters: int = 10, seed: int = 0, **contract) -> float:
    """Largest-magnitude Hessian eigenvalue of the mean loss by power iteration
    (`lossprobe.curvature.power_iteration` on the `HessianOperator`); `contract`: loss=, forward=."""
    obj = Objective(model, data, shortcut=False, **contract)
    # plain products (no kept graphs) and an iterate in the model's dtype: the feature's numbers as measured so far
    H = HessianOperator(obj, cache_graph=False)
    lam, _ = power_iteration(H.counting(), iters=iters, seed=seed, dtype=obj.space.dtype)
    return lam


SHARPNESS_IMPLS = ("filter", "rms")


def _sharpness(model, data: Split, sigma: float, draws: int, seed: int, impl: str = "filter", **contract) -> float:
    """Mean rise of the loss under relative Gaussian weight noise of size `sigma`, over
    `draws` seeded draws (`lossprobe.sharpness.noise_robustness`).

    impl="filter": noise scaled per filter, weights only; impl="rms": noise scaled per
    tensor (std = `sigma` × the tensor's RMS value), all parameters.
    """
    if impl not in SHARPNESS_IMPLS:
        raise UserError(f"unknown sharpness implementation '{impl}'; choose from {list(SHARPNESS_IMPLS)}")

    kinds, per = (("weight",), "filter") if impl == "filter" else (KINDS, "tensor")
    r = noise_robustness(Objective(model, data, shortcut=False, **contract), sigmas=(sigma,), draws=draws, seed=seed,
                         kinds=kinds, per=per)
    return float(r.loss_mean[0] - r.clean_loss)


def weight_noise_sharpness(model, data: Split, sigma: float = 0.05, draws: int = 8, seed: int = 0) -> float:
    """Mean rise of the loss when each parameter tensor gets Gaussian noise of std
    `sigma` × its RMS value (relative noise), over `draws` seeded draws. Unitless loss (nats).
    The per-tensor case of `_sharpness` (impl="rms")."""
    return _sharpness(model, data, sigma, draws, seed, "rms")


def probe(space: SearchSpace, values: dict, task: Task, fraction: float = 0.2, epochs: int = 2,
          seed: int = 0, sharpness: bool = True, hessian: bool = True, noise_sigma: float = 0.05,
          sharpness_impl: str = "filter", families=ALL_FAMILIES) -> ProbeResult:
    """Train `values` on a seeded `fraction` of `task.train` for `epochs` and return its features.

    The subset, the initialisation and the batch order all follow `seed`. Validation
    features are measured on `task.probe_val` when the task has one (a split disjoint from
    the one full trainings are selected on), else on `task.val`. The test split is never
    touched. `families` (names from `FAMILIES`, or 'default'/'all') selects which feature
    families are computed; `sharpness=False` / `hessian=False` also leave those out (their
    features are then NaN). `sharpness_impl` picks the weight-noise probe (see `_sharpness`).
    """
    t0 = time.perf_counter()
    if epochs <= 0:
        raise UserError(f"probe epochs must be positive, got {epochs}")
    fam = parse_families(families)
    want = {"grad_norm": "grad_norm" in fam, "sharpness": sharpness and "sharpness" in fam,
            "hessian": hessian and "hessian" in fam}
    secs: dict[str, float] = {}
    val = task.probe_val if task.probe_val is not None else task.val
    contract = task.fit_kwargs()
    with _Stopwatch() as sw:
        sub = _subset_fraction(task.train, fraction, seed=10_007 * seed + int(fraction * 1000))
        model = task.build_model(space, values, seed)
        cfg = task.train_config(space, values, epochs=epochs, data_seed=seed)
        feats = space.encode(values)
        feats.update(probe_fraction=float(fraction), probe_epochs=float(epochs))
        diverged = False
        try:
            hist = fit(model, sub, val, cfg, **contract)
        except TrainingDiverged as e:
            hist, diverged = e.history, True
        h = hist.to_dict()
        cap = task.loss_cap(h)
        tr, va = task.scores(h, "train", cap), task.scores(h, "val", cap)
        if diverged or not all(math.isfinite(v) for v in (h["train_loss"][-1], h["val_loss"][-1], tr[-1], va[-1])):
            diverged = True
            chance = task.fallback(h)
            feats.update(train_loss=cap, train_acc=chance, val_loss=cap, val_acc=chance,
                         train_loss_slope=0.0, train_acc_slope=0.0, val_loss_slope=0.0, val_acc_slope=0.0,
                         grad_norm=1e3, sharpness_noise=cap, hessian_top=1e3, diverged=1.0)
        else:
            curves = {"train_loss": h["train_loss"], "val_loss": h["val_loss"], "train_accuracy": tr,
                      "val_accuracy": va}

            def last(k):
                return min(float(curves[k][-1]), cap) if "loss" in k else float(curves[k][-1])

            def slope(k):
                return last(k) - (min(float(curves[k][-2]), cap) if "loss" in k else float(curves[k][-2]))

            feats.update(train_loss=last("train_loss"), train_acc=last("train_accuracy"),
                         val_loss=last("val_loss"), val_acc=last("val_accuracy"),
                         train_loss_slope=slope("train_loss"), train_acc_slope=slope("train_accuracy"),
                         val_loss_slope=slope("val_loss"), val_acc_slope=slope("val_accuracy"), diverged=0.0)
    secs["curve"] = sw.cpu
    if not diverged:

        model.eval()
        gsub = _samples(sub, 1024, seed=seed + 7)
        obj_kw = {k: v for k, v in contract.items() if k in ("loss", "forward")}
        if want["grad_norm"]:
            with _Stopwatch() as sw:
                _, grad = Objective(model, gsub, shortcut=False, **obj_kw).loss_and_grad()
                feats["grad_norm"] = float(grad.norm())
            secs["grad_norm"] = sw.cpu
        if want["sharpness"]:
            with _Stopwatch() as sw:
                feats["sharpness_noise"] = _sharpness(model, gsub, noise_sigma, 8, seed, sharpness_impl, **obj_kw)
            secs["sharpness"] = sw.cpu
        if want["hessian"]:
            with _Stopwatch() as sw:
                feats["hessian_top"] = hessian_top_eigenvalue(model, _samples(sub, 256, seed=seed + 8), seed=seed,
                                                              **obj_kw)
            secs["hessian"] = sw.cpu
        for k, on in (("grad_norm", want["grad_norm"]), ("sharpness_noise", want["sharpness"]),
                      ("hessian_top", want["hessian"])):
            if not on:
                feats[k] = math.nan
            elif not math.isfinite(feats[k]):
                feats[k] = 1e3
    else:
        for k, on in (("grad_norm", want["grad_norm"]), ("sharpness_noise", want["sharpness"]),
                      ("hessian_top", want["hessian"])):
            if not on:
                feats[k] = math.nan
    names = feature_names(space, families=fam)
    out = {k: float(feats[k]) for k in names}
    return ProbeResult(out, cost=float(fraction) * epochs, history=h, seconds=time.perf_counter() - t0,
                       family_seconds=secs)


@dataclass
class FullResult:
    val_accuracy: float  # final validation accuracy (what the search maximises)
    history: dict
    cost: float  # epochs on all training data
    seconds: float  # wall time
    model: object = None
    cpu_seconds: float = 0.0  # process CPU time of the training (with its per-epoch evaluations)
    extra: dict = field(default_factory=dict)  # final accuracy on each of `eval_splits`
    curve: list = field(default_factory=list)  # the search's value after epochs 0..E (diverged: chance)


def train_full(space: SearchSpace, values: dict, task: Task, seed: int = 0, epochs: int | None = None,
               keep_model: bool = False, val: Split | None | str = "task", eval_splits: dict | None = None) -> FullResult:
    """Train `values` on all of `task.train` for the space's epochs; a diverged run scores chance.

    `val` is evaluated after every epoch (default `task.val`; None: no per-epoch validation,
    then `val_accuracy` is NaN). `eval_splits` ({name: split}) are evaluated once, on the final
    model, outside the measured time (the benchmark's independent measurements)."""
    t0 = time.perf_counter()
    val = task.val if isinstance(val, str) else val
    contract = task.fit_kwargs()
    with _Stopwatch() as sw:
        model = task.build_model(space, values, seed)
        cfg = task.train_config(space, values, epochs=epochs, data_seed=seed)
        diverged = False
        try:
            hist = fit(model, task.train, val, cfg, **contract)
            h = hist.to_dict()
            acc = float(task.scores(h, "val", task.loss_cap(h))[-1])
        except TrainingDiverged as e:
            hist, diverged = e.history, True
            h = hist.to_dict()
            acc = task.fallback(h)
    chance = task.fallback(h)
    if val is not None and not diverged and not math.isfinite(acc):
        acc, diverged = chance, True
    curve = [v if math.isfinite(v) else chance for v in task.scores(h, "val", task.loss_cap(h))]
    # a diverged run's curve is padded with chance so every curve has epochs + 1 entries
    n = cfg.epochs + 1
    for k in ("val_accuracy", "train_accuracy"):
        h[k] = [v if math.isfinite(v) else chance for v in h[k]] + [chance] * (n - len(h[k]))
    for k in ("val_loss", "train_loss"):
        h[k] = [min(v, LOSS_CAP) if math.isfinite(v) else LOSS_CAP for v in h[k]] + [LOSS_CAP] * (n - len(h[k]))
    curve += [chance] * (n - len(curve))
    if val is None and not diverged:
        acc = math.nan
    extra = {}
    for name, split in (eval_splits or {}).items():
        a = chance if diverged else float(task.value(*evaluate_model(model.eval(), split, **contract)))
        extra[name] = a if math.isfinite(a) else chance
    return FullResult(acc, h, float(cfg.epochs), time.perf_counter() - t0, model if keep_model else None,
                      cpu_seconds=sw.cpu, extra=extra, curve=curve)
