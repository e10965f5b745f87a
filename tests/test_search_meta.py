"""The meta-model learns a known answer and beats a constant predictor."""

import numpy as np
import pytest

from lossprobe.errors import UserError
from lossprobe.search.meta import MetaModel


def _table(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (n, 6))
    # final accuracy depends on a probe accuracy-like feature and on a log-lr optimum; the rest is noise
    y = 0.6 + 0.25 * X[:, 0] - 0.15 * X[:, 1] ** 2 + 0.01 * rng.normal(size=n)
    return [{f"x{j}": float(v) for j, v in enumerate(r)} for r in X], y


@pytest.mark.parametrize("kind", ["rf", "gbr", "auto"])
def test_meta_model_beats_constant_predictor(kind):
    rows, y = _table(80, 0)
    test_rows, yt = _table(60, 1)
    m = MetaModel(kind, seed=0).fit(rows, y)
    mean, std = m.predict(test_rows)
    mse = float(np.mean((mean - yt) ** 2))
    const = float(np.mean((y.mean() - yt) ** 2))
    assert mse < 0.3 * const, (kind, mse, const)
    assert np.all(std >= 0) and std.mean() > 0
    if kind == "auto":
        assert m.chosen in ("rf", "gbr") and set(m.cv_scores) == {"rf", "gbr"}
    imp = m.importances()
    assert max(imp, key=imp.get) == "x0"


def test_same_seed_same_predictions_and_bad_input():
    rows, y = _table(30, 2)
    a = MetaModel("rf", seed=1).fit(rows, y).predict(rows[:5])
    b = MetaModel("rf", seed=1).fit(rows, y).predict(rows[:5])
    assert np.array_equal(a[0], b[0])
    with pytest.raises(UserError, match="unknown meta-model"):
        MetaModel("svm")
    with pytest.raises(UserError, match="NaN"):
        MetaModel("rf").fit([{"a": float("nan")}, {"a": 1.0}], [0.1, 0.2])
