"""The meta-model: predicts the FINAL validation accuracy of full training from probe features.

A scikit-learn random forest (``rf``), extremely randomised trees (``et``, 32 trees: the
cheapest tree ensemble, for loops that refit often and are charged for it), a bagged
gradient-boosting ensemble (``gbr``), or bagged ridge regressions on standardised features
(``ridge``: milliseconds); ``auto`` picks rf or gbr by K-fold cross-validation when there are
enough fully trained configurations. The uncertainty is the spread of the ensemble members'
predictions (trees, or the models fitted on bootstrap resamples).

Features are matched by name: `fit` records the names, and `predict` refuses a row that
lacks one instead of filling in zeros (the published framework read its features under
the wrong names and silently got all zeros).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lossprobe.errors import UserError

KINDS = ("auto", "rf", "gbr", "et", "ridge")


def _matrix(rows: list[dict], names: list[str]) -> np.ndarray:
    X = np.empty((len(rows), len(names)))
    for i, r in enumerate(rows):
        missing = [n for n in names if n not in r]
        if missing:
            raise UserError(f"probe features lack '{missing[0]}' that the meta-model was fitted on; "
                            "probe with the same space and settings")
        X[i] = [r[n] for n in names]
    if not np.isfinite(X).all():
        bad = names[int(np.where(~np.isfinite(X))[1][0])]
        raise UserError(f"probe feature '{bad}' is NaN or inf")
    return X


@dataclass
class MetaModel:
    """Regressor of final validation accuracy with an ensemble uncertainty.

    Args:
        kind: 'rf' (random forest), 'gbr' (bagged gradient boosting) or 'auto' (the one
            with the lower cross-validated squared error; rf below `min_cv` rows).
        features: names to use (default: every feature of the first fitted row).
        seed: seeds every member, so the same data gives the same predictions.
    """

    kind: str = "auto"
    features: list[str] | None = None
    seed: int = 0
    n_estimators: int = 100
    min_cv: int = 10
    chosen: str | None = field(default=None, init=False)
    cv_scores: dict = field(default_factory=dict, init=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UserError(f"unknown meta-model '{self.kind}'; choose from {list(KINDS)}")

    def _make(self, kind: str):
        from sklearn.ensemble import RandomForestRegressor  # lazy: scikit-learn's ensembles add ~0.9 s

        if kind == "rf":
            return RandomForestRegressor(n_estimators=self.n_estimators, max_features=0.5, min_samples_leaf=1,
                                         random_state=self.seed, n_jobs=1)
        if kind == "et":
            from sklearn.ensemble import ExtraTreesRegressor  # lazy: scikit-learn's ensembles add ~0.9 s

            return ExtraTreesRegressor(n_estimators=32, max_features=0.5, min_samples_leaf=2, random_state=self.seed,
                                       n_jobs=1)
        if kind == "ridge":
            return _BaggedRidge(n_members=16, seed=self.seed)
        return _BaggedBoosting(n_members=8, seed=self.seed)

    def fit(self, rows: list[dict], y) -> "MetaModel":
        """Fit on feature dicts `rows` [n] and final validation accuracies `y` [n] (0–1)."""
        y = np.asarray(y, dtype=float)
        if len(rows) != len(y) or len(y) < 2:
            raise UserError(f"the meta-model needs at least 2 rows with one target each, got {len(rows)} rows, {len(y)} targets")
        names = list(self.features) if self.features is not None else list(rows[0])
        self.features_ = names
        X = _matrix(rows, names)
        kind = self.kind
        if kind == "auto":
            kind = "rf"
            if len(y) >= self.min_cv:
                self.cv_scores = {k: _cv_mse(lambda k=k: self._make(k), X, y, self.seed) for k in ("rf", "gbr")}
                kind = min(self.cv_scores, key=self.cv_scores.get)
        self.chosen = kind
        self.model_ = self._make(kind).fit(X, y)
        return self

    def predict(self, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        """Predicted final validation accuracy: mean [n] and ensemble standard deviation [n]."""
        if not hasattr(self, "model_"):
            raise UserError("the meta-model has not been fitted")
        X = _matrix(rows, self.features_)
        members = _member_predictions(self.model_, X)
        return members.mean(0), members.std(0)

    def importances(self) -> dict[str, float]:
        imp = getattr(self.model_, "feature_importances_", None)
        return dict(zip(self.features_, map(float, imp))) if imp is not None else {}


class _BaggedBoosting:
    """Gradient-boosting regressors fitted on bootstrap resamples; their spread is the uncertainty."""

    def __init__(self, n_members: int = 8, seed: int = 0):
        self.n_members, self.seed = n_members, seed

    def fit(self, X, y):
        from sklearn.ensemble import GradientBoostingRegressor  # lazy: scikit-learn's ensembles add ~0.9 s

        rng = np.random.default_rng(self.seed)
        self.members_ = []
        for k in range(self.n_members):
            idx = rng.integers(0, len(y), len(y))
            m = GradientBoostingRegressor(n_estimators=80, max_depth=2, learning_rate=0.1, subsample=1.0,
                                          random_state=self.seed + k)
            self.members_.append(m.fit(X[idx], y[idx]))
        self.feature_importances_ = np.mean([m.feature_importances_ for m in self.members_], 0)
        return self

    def predict(self, X):
        return np.mean([m.predict(X) for m in self.members_], 0)


class _BaggedRidge:
    """Ridge regressions on standardised features, fitted on bootstrap resamples (numpy only)."""

    def __init__(self, n_members: int = 16, alpha: float = 1.0, seed: int = 0):
        self.n_members, self.alpha, self.seed = n_members, alpha, seed

    def fit(self, X, y):
        self.mu_, self.sd_ = X.mean(0), X.std(0) + 1e-9
        Z = (X - self.mu_) / self.sd_
        rng = np.random.default_rng(self.seed)
        self.members_ = []
        eye = self.alpha * np.eye(Z.shape[1])
        for _ in range(self.n_members):
            idx = rng.integers(0, len(y), len(y))
            z, t = Z[idx], y[idx]
            zm, tm = z.mean(0), t.mean()
            w = np.linalg.solve((z - zm).T @ (z - zm) + eye, (z - zm).T @ (t - tm))
            self.members_.append((w, tm - zm @ w))
        self.feature_importances_ = np.mean([np.abs(w) for w, _ in self.members_], 0)
        return self

    def predict_members(self, X):
        Z = (X - self.mu_) / self.sd_
        return np.stack([Z @ w + b for w, b in self.members_])

    def predict(self, X):
        return self.predict_members(X).mean(0)


def _member_predictions(model, X) -> np.ndarray:
    if isinstance(model, _BaggedRidge):
        return model.predict_members(X)
    if hasattr(model, "estimators_") and not isinstance(model, _BaggedBoosting):
        return np.stack([t.predict(X) for t in model.estimators_])
    return np.stack([m.predict(X) for m in model.members_])


def _cv_mse(make, X, y, seed: int, folds: int = 4) -> float:
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(y))
    err = 0.0
    for f in range(folds):
        te = idx[f::folds]
        tr = np.setdiff1d(idx, te)
        err += float(((make().fit(X[tr], y[tr]).predict(X[te]) - y[te]) ** 2).sum())
    return err / len(y)
