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
* ``diverged``             1 if the probe's loss became NaN/inf (other features then take
                           the fixed values of a chance-level network)

The cost of a probe is f·e full-data epoch equivalents (the budget unit of the search).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.split import Split
from ..errors import UserError
from .space import SearchSpace

PROBE_FEATURES = (
    "probe_fraction", "probe_epochs",
    "train_loss", "train_acc", "val_loss", "val_acc",
    "train_loss_slope", "train_acc_slope", "val_loss_slope", "val_acc_slope",
    "grad_norm", "sharpness_noise", "hessian_top", "diverged",
)
SHARPNESS_FEATURES = ("sharpness_noise", "hessian_top")
LOSS_CAP = 10.0  # losses of diverged or exploding runs are capped so features stay finite


def feature_names(space: SearchSpace, sharpness: bool = True) -> list[str]:
    """The names, in order, of the features a probe returns and the meta-model expects."""
    names = space.encoded_names() + list(PROBE_FEATURES)
    return names if sharpness else [n for n in names if n not in SHARPNESS_FEATURES]


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

    def __post_init__(self):
        if not self.input_shape:
            self.input_shape = tuple(self.train.x.shape[1:])
        if isinstance(self.test, Split):
            self.test = SealedSplit(self.test)


def make_task(dataset: str = "fashion-mnist", n_train: int | None = None, n_val: int | None = None,
              seed: int = 0, root=None) -> Task:
    """Fashion-MNIST (default) or CIFAR-10/100 ('cifar10:DIR', 'cifar100:DIR') as a `Task`.

    `n_train`/`n_val` take seeded subsets; the test split is sealed (see `SealedSplit`).
    """
    if dataset == "fashion-mnist":
        from ..data import fashion_mnist

        ds = fashion_mnist(root=root, split_seed=seed)
        train, val, test, n_classes = ds.train, ds.val, ds.test, 10
    elif dataset == "spiral":  # tiny synthetic task for tests and demos: n points per class
        from ..data import two_spirals

        train = two_spirals(n=(n_train or 400) // 2, seed=seed, name="spiral:train")
        val = two_spirals(n=(n_val or 200) // 2, seed=seed + 1, name="spiral:val")
        test, n_classes = two_spirals(n=100, seed=seed + 2, name="spiral:test"), 2
        n_train = n_val = None
    elif dataset.split(":")[0] in ("cifar10", "cifar100"):
        from ..data.cifar import cifar

        kind, _, path = dataset.partition(":")
        ds = cifar(path or root, kind=kind, split_seed=seed)
        train, val, test, n_classes = ds.train, ds.val, ds.test, ds.n_classes
    else:
        raise UserError(f"unknown dataset '{dataset}'; use fashion-mnist, cifar10:DIR, cifar100:DIR or spiral")
    if n_train:
        train = train.subset(n_train, seed=seed + 1)
    if n_val:
        val = val.subset(n_val, seed=seed + 2)
    return Task(train, val, SealedSplit(test), dataset, tuple(train.x.shape[1:]), n_classes)


@dataclass
class ProbeResult:
    features: dict[str, float]
    cost: float  # full-data epoch equivalents
    history: dict = field(default_factory=dict)
    seconds: float = 0.0


def _subset_fraction(split: Split, fraction: float, seed: int) -> Split:
    if not 0 < fraction <= 1:
        raise UserError(f"probe fraction must be in (0, 1], got {fraction}")
    n = max(1, int(round(fraction * len(split))))
    return split.subset(n, seed=seed) if n < len(split) else split


def weight_noise_sharpness(model, data: Split, sigma: float = 0.05, draws: int = 8, seed: int = 0) -> float:
    """Mean rise of the loss when each parameter tensor gets Gaussian noise of std
    `sigma` × its RMS value (relative noise), over `draws` seeded draws. Unitless loss (nats)."""
    from ..objective import Objective

    obj = Objective(model, data, shortcut=False)
    theta = obj.theta0
    scale = torch.empty_like(theta)
    for e in obj.space.entries:
        w = theta[e.slice]
        scale[e.slice] = w.pow(2).mean().sqrt().clamp_min(1e-8)
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(draws, theta.numel(), generator=g).to(theta) * (sigma * scale)
    ev = obj.evaluate(torch.eye(draws), origin=theta, directions=dirs)
    base = obj.loss_at().loss[0]
    return float(np.mean(ev.loss) - base)


def hessian_top_eigenvalue(model, data: Split, iters: int = 10, seed: int = 0) -> float:
    """Largest-magnitude Hessian eigenvalue of the mean loss by power iteration (HVPs)."""
    from ..objective import Objective

    obj = Objective(model, data, shortcut=False)
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(obj.theta0.numel(), generator=g).to(obj.theta0)
    v /= v.norm()
    lam = 0.0
    for _ in range(iters):
        hv = obj.hvp(v)
        lam = float(v @ hv)
        nrm = hv.norm()
        if not torch.isfinite(nrm) or nrm == 0:
            break
        v = hv / nrm
    return lam


SHARPNESS_IMPLS = ("filter", "rms")


def _sharpness(model, data: Split, sigma: float, draws: int, seed: int, impl: str = "filter") -> float:
    """Loss rise under relative Gaussian weight noise of size `sigma`.

    impl="filter": `lossprobe.sharpness.noise_robustness` (noise scaled per filter, weights
    only); impl="rms": `weight_noise_sharpness` (noise scaled per tensor, all parameters).
    """
    if impl == "rms":
        return weight_noise_sharpness(model, data, sigma, draws, seed)
    if impl != "filter":
        raise UserError(f"unknown sharpness implementation '{impl}'; choose from {list(SHARPNESS_IMPLS)}")
    from ..objective import Objective
    from ..sharpness import noise_robustness

    r = noise_robustness(Objective(model, data, shortcut=False), sigmas=(sigma,), draws=draws, seed=seed)
    return float(r.loss_mean[0] - r.clean_loss)


def probe(space: SearchSpace, values: dict, task: Task, fraction: float = 0.2, epochs: int = 2,
          seed: int = 0, sharpness: bool = True, hessian: bool = True, noise_sigma: float = 0.05,
          sharpness_impl: str = "filter") -> ProbeResult:
    """Train `values` on a seeded `fraction` of `task.train` for `epochs` and return its features.

    The subset, the initialisation and the batch order all follow `seed`. The test split is
    never touched. `sharpness_impl` picks the weight-noise probe (see `_sharpness`).
    """
    import time

    from ..train import TrainingDiverged, fit

    t0 = time.perf_counter()
    if epochs <= 0:
        raise UserError(f"probe epochs must be positive, got {epochs}")
    sub = _subset_fraction(task.train, fraction, seed=10_007 * seed + int(fraction * 1000))
    model = space.build_model(values, task.input_shape, task.n_classes, seed=seed)
    cfg = space.train_config(values, epochs=epochs, data_seed=seed)
    feats = space.encode(values)
    feats.update(probe_fraction=float(fraction), probe_epochs=float(epochs))
    diverged = False
    try:
        hist = fit(model, sub, task.val, cfg)
    except TrainingDiverged as e:
        hist, diverged = e.history, True
    chance = 1.0 / task.n_classes
    h = hist.to_dict()
    if diverged or not all(math.isfinite(v) for v in (h["train_loss"][-1], h["val_loss"][-1])):
        diverged = True
        feats.update(train_loss=LOSS_CAP, train_acc=chance, val_loss=LOSS_CAP, val_acc=chance,
                     train_loss_slope=0.0, train_acc_slope=0.0, val_loss_slope=0.0, val_acc_slope=0.0,
                     grad_norm=1e3, sharpness_noise=LOSS_CAP, hessian_top=1e3, diverged=1.0)
    else:
        def last(k):
            return min(float(h[k][-1]), LOSS_CAP) if "loss" in k else float(h[k][-1])

        def slope(k):
            return last(k) - (min(float(h[k][-2]), LOSS_CAP) if "loss" in k else float(h[k][-2]))

        feats.update(train_loss=last("train_loss"), train_acc=last("train_accuracy"),
                     val_loss=last("val_loss"), val_acc=last("val_accuracy"),
                     train_loss_slope=slope("train_loss"), train_acc_slope=slope("train_accuracy"),
                     val_loss_slope=slope("val_loss"), val_acc_slope=slope("val_accuracy"))
        from ..objective import Objective

        model.eval()
        gsub = sub.subset(1024, seed=seed + 7)
        _, grad = Objective(model, gsub, shortcut=False).loss_and_grad()
        feats["grad_norm"] = float(grad.norm())
        feats["sharpness_noise"] = _sharpness(model, gsub, noise_sigma, 8, seed, sharpness_impl) if sharpness else math.nan
        feats["hessian_top"] = hessian_top_eigenvalue(model, sub.subset(256, seed=seed + 8), seed=seed) if hessian else math.nan
        feats["diverged"] = 0.0
        for k in ("grad_norm", "sharpness_noise", "hessian_top"):
            if not math.isfinite(feats[k]):
                feats[k] = 1e3 if (sharpness or k == "grad_norm") and (hessian or k != "hessian_top") else math.nan
    names = feature_names(space)
    out = {k: float(feats[k]) for k in names}
    return ProbeResult(out, cost=float(fraction) * epochs, history=h, seconds=time.perf_counter() - t0)


@dataclass
class FullResult:
    val_accuracy: float  # final validation accuracy (what the search maximises)
    history: dict
    cost: float  # epochs on all training data
    seconds: float
    model: object = None


def train_full(space: SearchSpace, values: dict, task: Task, seed: int = 0, epochs: int | None = None,
               keep_model: bool = False) -> FullResult:
    """Train `values` on all of `task.train` for the space's epochs; a diverged run scores chance."""
    import time

    from ..train import TrainingDiverged, fit

    t0 = time.perf_counter()
    model = space.build_model(values, task.input_shape, task.n_classes, seed=seed)
    cfg = space.train_config(values, epochs=epochs, data_seed=seed)
    try:
        hist = fit(model, task.train, task.val, cfg)
        acc = float(hist.val_accuracy[-1])
    except TrainingDiverged as e:
        hist, acc = e.history, 1.0 / task.n_classes
    h = hist.to_dict()
    # a diverged run's curve is padded with chance so every curve has epochs + 1 entries
    n = cfg.epochs + 1
    for k in ("val_accuracy", "train_accuracy"):
        h[k] = [v if math.isfinite(v) else 1.0 / task.n_classes for v in h[k]] + [1.0 / task.n_classes] * (n - len(h[k]))
    for k in ("val_loss", "train_loss"):
        h[k] = [min(v, LOSS_CAP) if math.isfinite(v) else LOSS_CAP for v in h[k]] + [LOSS_CAP] * (n - len(h[k]))
    return FullResult(acc, h, float(cfg.epochs), time.perf_counter() - t0, model if keep_model else None)
