"""Probes return named, non-zero features that the meta-model accepts; the test split stays sealed."""

import math

import numpy as np

import pytest

from lossprobe.errors import UserError
from lossprobe.search.meta import MetaModel
from lossprobe.search.probes import PROBE_FEATURES, SealedSplit, feature_names, make_task, probe, train_full
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


def test_feature_families_are_chosen_by_name(task):
    from lossprobe.search.probes import ALL_FAMILIES, DEFAULT_FAMILIES, parse_families

    assert parse_families("hessian, grad_norm") == ("curve", "grad_norm", "hessian")  # curve always, canonical order
    assert parse_families("all") == ALL_FAMILIES and parse_families(None) == DEFAULT_FAMILIES
    with pytest.raises(UserError, match="unknown probe feature family 'sharp'"):
        parse_families("curve,sharp")
    v = {"lr": 0.02, "optimizer": "adam", "width": 16}
    r = probe(SPACE, v, task, 0.5, 1, seed=0, families="grad_norm")
    assert list(r.features) == feature_names(SPACE, families=("curve", "grad_norm"))
    assert "grad_norm" in r.features and "hessian_top" not in r.features and "sharpness_noise" not in r.features
    assert set(r.family_seconds) == {"curve", "grad_norm"} and all(s >= 0 for s in r.family_seconds.values())
    full = probe(SPACE, v, task, 0.5, 1, seed=0)
    assert set(full.family_seconds) == set(ALL_FAMILIES)
    assert {k: full.features[k] for k in r.features} == r.features  # the same numbers, fewer of them


def test_table_oracle_returns_and_charges_only_the_chosen_families():
    from lossprobe.search.oracle import TableOracle

    from search_fake import fake_rows

    rows = fake_rows(SPACE, 10, [(0.5, 1)], 0)
    o = TableOracle(rows, SPACE, seed=0, families=["sharpness"])
    k = o.draw(np.random.default_rng(0))
    f = o.probe(k, "f0.5xe1")
    assert "sharpness_noise" in f and "grad_norm" not in f and "hessian_top" not in f
    cpu = {r["id"]: r for r in rows}[k]["probes"]["f0.5xe1"]["cpu"]
    assert o.clock.spent == pytest.approx(cpu["curve"] + cpu["sharpness"])


def test_cli_features_and_method_are_recorded(tmp_path, capsys):
    import json

    from lossprobe.cli import main
    from lossprobe.search.methods import DEFAULT_METHOD

    space = tmp_path / "space.toml"
    space.write_text('[train]\nepochs = 2\n[params]\nlr = { type = "float", low = 3e-3, high = 0.1, log = true }\n'
                     'width = { type = "int", low = 8, high = 32 }\n')
    base = ["search", "--space", str(space), "--dataset", "spiral", "--budget", "6", "--fraction", "0.25"]
    assert main(base + ["--features", "hessians", "--out", str(tmp_path / "bad")]) == 2
    assert "unknown probe feature family 'hessians'" in capsys.readouterr().err
    assert main(base + ["--features", "grad_norm", "--init-probes", "6", "--out", str(tmp_path / "a")]) == 0
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert s["features"] == ["curve", "grad_norm"]
    assert s["method"] == DEFAULT_METHOD and s["method_is_default"] and s["default_method"] == DEFAULT_METHOD
    import optuna

    st = optuna.load_study(study_name="search-probes", storage=f"sqlite:///{tmp_path / 'a' / 'search.db'}")
    feats = [t.user_attrs["features"] for t in st.trials]
    assert feats and all("grad_norm" in f and "hessian_top" not in f for f in feats)
    assert main(base + ["--method", "sh", "--eta", "3", "--out", str(tmp_path / "b")]) == 0
    s = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert s["method"] == "sh" and not s["method_is_default"] and s["n_probes"] == 0
