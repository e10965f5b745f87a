"""A meta-model that transfers across tasks (issue 26): trained on the probes and learning curves of
*other* tasks' benchmark tables, it ranks a new task's candidates zero-shot, or warm-started with
the new task's finished trainings as they arrive.

Numbers from different tasks are put on one scale first (`transfer_features`): accuracies as the
share of the way from chance to 1, losses divided by log(classes), learning rates, weight decay and
batch sizes on log scales, the optimiser one-hot; a learning curve is read at a *fraction* of its
training (so a 3-epoch and a 10-epoch training compare). The target is the final validation
accuracy on the same scale. `TransferScorer` plugs the model into `lossprobe.search.methods.ASHA`
as its ranking of a rung; `CurveScorer` ranks a paused full-training rung by a learning-curve
extrapolator instead (LC-PFN in the benchmark, or the least-squares curve families of
`methods.extrapolate`). Every fit and prediction is charged to the oracle's clock.
"""

from __future__ import annotations

import math

import numpy as np

from lossprobe.errors import UserError
from lossprobe.search.methods import extrapolate

OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop")
PROBE_NAMES = ("p_val_acc", "p_train_acc", "p_val_loss", "p_train_loss", "p_val_acc_slope", "p_train_loss_slope",
               "p_diverged")
HP_NAMES = ("lr", "weight_decay", "batch_size", "dropout", "momentum") + tuple(f"opt_{o}" for o in OPTIMIZERS)
CURVE_NAMES = ("c_value", "c_slope")
FEATURES = PROBE_NAMES + HP_NAMES


def _acc(v: float, chance: float) -> float:
    return (float(v) - chance) / (1.0 - chance)


def transfer_features(probe: dict, values: dict, chance: float, n_classes: int) -> dict:
    """Task-free features of a candidate from its probe's features and its (complete) hyperparameters."""
    L = math.log(max(2, n_classes))
    opt = str(values.get("optimizer", "adam"))
    out = {"p_val_acc": _acc(probe["val_acc"], chance), "p_train_acc": _acc(probe["train_acc"], chance),
           "p_val_loss": float(probe["val_loss"]) / L, "p_train_loss": float(probe["train_loss"]) / L,
           "p_val_acc_slope": float(probe["val_acc_slope"]) / (1.0 - chance),
           "p_train_loss_slope": float(probe["train_loss_slope"]) / L, "p_diverged": float(probe.get("diverged", 0.0)),
           "lr": math.log10(float(values["lr"])), "weight_decay": math.log10(max(float(values.get("weight_decay", 0.0)),
                                                                              1e-8)),
           "batch_size": math.log2(float(values.get("batch_size", 128))), "dropout": float(values.get("dropout", 0.0)),
           "momentum": float(values.get("momentum", 0.0)) if opt in ("momentum", "sgd") else 0.0}
    for o in OPTIMIZERS:
        out[f"opt_{o}"] = float(opt == o)
    return out


def curve_at(curve: list, frac: float, chance: float) -> dict:
    """The curve (values after epochs 0..E) read at a fraction of its training, on the task-free scale:
    the value (linearly interpolated) and the slope per unit fraction over the last tenth before it."""
    c = np.asarray([_acc(v, chance) for v in curve], dtype=float)
    t = np.arange(len(c)) / (len(c) - 1)
    v = float(np.interp(frac, t, c))
    prev = float(np.interp(max(0.0, frac - 0.1), t, c))
    return {"c_value": v, "c_slope": (v - prev) / max(min(0.1, frac), 1e-9)}


def _matrix(rows: list[dict], names) -> np.ndarray:
    X = np.array([[r[n] for n in names] for r in rows], dtype=float)
    return np.nan_to_num(X, nan=0.0, posinf=10.0, neginf=-10.0)


class TransferModel:
    """Extra-trees regressor of the task-free final accuracy (see the module doc); `fit` takes
    per-row weights so a warm start can weigh the new task's rows against the other tasks'."""

    def __init__(self, names=FEATURES, seed: int = 0, n_estimators: int = 64):
        self.names, self.seed, self.n_estimators = tuple(names), seed, n_estimators

    def fit(self, rows: list[dict], y, weights=None) -> "TransferModel":
        from sklearn.ensemble import ExtraTreesRegressor  # lazy: scikit-learn's ensembles add ~0.9 s

        if len(rows) < 2:
            raise UserError("the transfer model needs at least 2 rows")
        self.model_ = ExtraTreesRegressor(n_estimators=self.n_estimators, max_features=0.5, min_samples_leaf=3,
                                          random_state=self.seed, n_jobs=1)
        self.model_.fit(_matrix(rows, self.names), np.asarray(y, dtype=float), sample_weight=weights)
        return self

    def predict(self, rows: list[dict]) -> np.ndarray:
        return self.model_.predict(_matrix(rows, self.names))


def table_examples(rows: list[dict], space, fidelity: str, chance: float, n_classes: int) -> tuple[list, list, list]:
    """(probe feature rows, task-free final accuracies, task-free curves [epochs 0..E]) of a table."""
    X, y, curves = [], [], []
    for r in rows:
        X.append(transfer_features(r["probes"][fidelity]["features"], space.complete(r["values"]), chance, n_classes))
        y.append(_acc(r["full"]["val_accuracy"], chance))
        curves.append([float(v) for v in r["full"]["val_curve"]])
    return X, y, curves


class TransferScorer:
    """An `ASHA` scorer: ranks a rung by the transferred model's predicted final accuracy.

    Args:
        sources: [(feature rows, targets, curves, chance)] of the other tasks' tables (`table_examples`).
        chance: the new task's chance accuracy.
        n_classes: the new task's number of classes.
        warm: refit on the sources plus the new task's finished candidates whenever one more has
            finished; its rows weigh as much in total as the sources' once `warm_full` have finished.
        space: the new task's space (`complete` gives the fixed values too).
        warm_full: finished candidates of the new task after which its rows weigh as much as the sources'.
        seed: seeds the model's fits.
    """

    def __init__(self, sources: list, chance: float, n_classes: int, space, warm: bool = False, warm_full: int = 10,
                 seed: int = 0):
        self.chance, self.n_classes, self.space, self.warm, self.warm_full, self.seed = (
            chance, n_classes, space, warm, warm_full, seed)
        self.src_X = [x for s in sources for x in s[0]]
        self.src_y = [v for s in sources for v in s[1]]
        self.src_curves = [(c, s[3]) for s in sources for c in s[2]]
        self.models: dict = {}  # rung -> model
        self.preds: dict = {}  # rung -> {key: prediction}
        self.fitted_at: dict = {}  # rung -> number of the new task's finished candidates it was fitted with
        self.fits = 0

    def _rows(self, asha, r: int, keys) -> list[dict]:
        out = []
        E = asha.o.epochs
        for k in keys:
            f = transfer_features(asha.feats[k][0], self.space.complete(asha.o.values(k)), self.chance, self.n_classes)
            if r > 0:  # a paused full training: its curve so far (epoch 0 = chance), read at its fraction
                curve = [self.chance] + list(asha.feats[k][r])
                f.update(curve_at_prefix(curve, int(asha.ladder[r][1]), E, self.chance))
            out.append(f)
        return out

    def _fit(self, asha, r: int, finished: list) -> None:
        E = asha.o.epochs
        names = FEATURES if r == 0 else FEATURES + CURVE_NAMES
        X = [dict(x) for x in self.src_X]
        if r > 0:
            frac = int(asha.ladder[r][1]) / E
            for x, (c, ch) in zip(X, self.src_curves):
                x.update(curve_at(c, frac, ch))
        y = list(self.src_y)
        w = [1.0] * len(X)
        if self.warm and finished:
            tX = self._rows(asha, r, finished)
            X += tX
            y += [_acc(asha.done[-1][k], self.chance) for k in finished]
            w += [len(self.src_X) / max(self.warm_full, len(finished))] * len(finished)
        self.models[r] = TransferModel(names, seed=self.seed).fit(X, y, np.asarray(w))
        self.fitted_at[r] = len(finished)
        self.preds[r] = {}
        self.fits += 1

    def __call__(self, asha, r: int, keys) -> dict:
        finished = list(asha.done[-1])
        with asha.o.clock.timed("meta"):
            if r not in self.models or (self.warm and len(finished) > self.fitted_at[r]):
                self._fit(asha, r, finished)
            new = [k for k in keys if k not in self.preds[r]]
            if new:
                for k, p in zip(new, self.models[r].predict(self._rows(asha, r, new))):
                    self.preds[r][k] = float(p)
        return {k: self.preds[r][k] for k in keys}


def curve_at_prefix(curve: list, k: int, E: int, chance: float) -> dict:
    """`curve_at` for a curve known to epoch k of E (values after epochs 0..k): read at fraction k/E."""
    c = [_acc(v, chance) for v in curve[: k + 1]]
    frac = k / E
    v = c[-1]
    t = np.arange(len(c)) / E
    prev = float(np.interp(max(0.0, frac - 0.1), t, c))
    return {"c_value": v, "c_slope": (v - prev) / max(min(0.1, frac), 1e-9)}


class CurveScorer:
    """An `ASHA` scorer for paused full-training rungs: ranks them by `extrapolate(curves [B, k], k, E) ->
    predicted final values [B]` (LC-PFN, or the least-squares curve families); the probe rung by its
    raw value."""

    def __init__(self, extrapolate):
        self.extrapolate = extrapolate
        self.preds: dict = {}

    def __call__(self, asha, r: int, keys) -> dict:
        kind, x = asha.ladder[r]
        if kind != "full":
            return {k: asha.done[r][k] for k in keys}
        new = [k for k in keys if (r, k) not in self.preds]
        if new:
            with asha.o.clock.timed("meta"):
                curves = np.array([list(asha.feats[k][r]) for k in new], dtype=float)
                for k, p in zip(new, self.extrapolate(curves, int(x), asha.o.epochs)):
                    self.preds[(r, k)] = float(p)
        return {k: self.preds[(r, k)] for k in keys}


def least_squares_extrapolate(curves: np.ndarray, k: int, E: int) -> np.ndarray:
    """The mean prediction of `methods.extrapolate`'s curve families (the `lce` method's), per curve."""
    return np.array([extrapolate(list(c), E)[0] if len(c) >= 2 else c[-1] for c in curves])
