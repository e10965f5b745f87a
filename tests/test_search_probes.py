"""Probes return named, non-zero features that the meta-model accepts; the test split stays sealed."""

import math

import pytest

from lossprobe.errors import UserError
from lossprobe.search.meta import MetaModel
from lossprobe.search.probes import (PROBE_FEATURES, SealedSplit, feature_names, make_task, probe,
                                     train_full)
from lossprobe.search.space import SearchSpace

SPACE = SearchSpace.from_dict({"train": {"epochs": 3}, "params": {
    "lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
    "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
    "width": {"type": "int", "low": 8, "high": 32}}, })


@pytest.fixture(scope="module")
def task():
    return make_task("spiral", n_train=400, n_val=200)


def test_probe_features_are_named_as_the_model_expects_and_non_zero(task):
    values = {"lr": 0.02, "optimizer": "adam", "width": 24}
    r = probe(SPACE, values, task, fraction=0.5, epochs=2, seed=0)
    assert list(r.features) == feature_names(SPACE)  # same names, same order
    assert r.cost == pytest.approx(1.0)
    # accuracy slopes may be exactly 0 on a small validation set; everything else is measured
    measured = [k for k in PROBE_FEATURES if k not in ("diverged", "train_acc_slope", "val_acc_slope")]
    for k in measured:
        v = r.features[k]
        assert math.isfinite(v) and v != 0.0, f"feature {k} is {v}"  # the published bug: all zeros
    assert all(math.isfinite(r.features[k]) for k in ("train_acc_slope", "val_acc_slope"))
    assert r.features["diverged"] == 0.0
    assert r.features["probe_fraction"] == 0.5 and r.features["probe_epochs"] == 2
    assert 0.3 < r.features["val_acc"] <= 1 and r.features["train_loss"] > 0
    assert r.features["hessian_top"] > 0 and r.features["grad_norm"] > 0
    # the meta-model consumes exactly these names, and refuses rows that lack one
    r2 = probe(SPACE, {"lr": 0.003, "optimizer": "sgd", "width": 8}, task, fraction=0.5, epochs=2, seed=0)
    m = MetaModel("rf", features=feature_names(SPACE)).fit([r.features, r2.features], [0.9, 0.6])
    mean, std = m.predict([r.features])
    assert mean.shape == (1,) and std.shape == (1,)
    wrong = {k.replace("val_acc", "validation_accuracy"): v for k, v in r.features.items()}
    with pytest.raises(UserError, match="lack 'val_acc'"):
        m.predict([wrong])


def test_probes_are_seeded_and_depend_on_fidelity(task):
    v = {"lr": 0.02, "optimizer": "adam", "width": 16}
    a = probe(SPACE, v, task, 0.25, 1, seed=3, hessian=False)
    b = probe(SPACE, v, task, 0.25, 1, seed=3, hessian=False)
    c = probe(SPACE, v, task, 0.5, 1, seed=3, hessian=False)
    assert a.features == b.features
    assert a.features["train_loss"] != c.features["train_loss"]


def test_divergence_gives_finite_chance_features(task):
    r = probe(SPACE, {"lr": 1e6, "optimizer": "sgd", "width": 8}, task, 0.5, 1, seed=0)
    assert all(math.isfinite(v) for v in r.features.values())
    f = train_full(SPACE, {"lr": 1e6, "optimizer": "sgd", "width": 8}, task)
    assert len(f.history["val_accuracy"]) == SPACE.epochs + 1


def test_sealed_split_refuses_reads_and_opens_once(task):
    sealed = task.test
    assert isinstance(sealed, SealedSplit) and not sealed.touched
    with pytest.raises(RuntimeError, match="sealed"):
        sealed.x
    with pytest.raises(RuntimeError, match="sealed"):
        len(sealed)
    fresh = SealedSplit(sealed._split)
    assert len(fresh.open("final")) == 200
    with pytest.raises(RuntimeError, match="already used"):
        fresh.open("again")
