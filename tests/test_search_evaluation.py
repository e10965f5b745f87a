"""Evaluation across tables and the cross-task transfer model (issue 26): the numbers on hand-made
runs with a known answer, and the scorers inside ASHA on synthetic tables."""

import math

import numpy as np

from lossprobe.search.evaluation import (
    anytime_regret, ert, final_regret, pooled_difference, pooled_ratio, qualifying, replay_runs, target_summary,
    times_to,
)
from lossprobe.search.space import SearchSpace
from lossprobe.search.transfer import (
    CurveScorer, TransferScorer, least_squares_extrapolate, table_examples, transfer_features,
)

from search_fake import fake_rows

SPACE = SearchSpace.from_dict({"train": {"epochs": 6}, "params": {
    "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
    "width": {"type": "int", "low": 8, "high": 128, "log": True}}})
FID = "f0.1xe1"

# three seeds: reaches 1 point at t = 5; at t = 2; finishes only after the budget of 20
RUNS = {"seeds": [0, 1, 2], "t": [[1.0, 5.0], [2.0], [30.0]], "scores": [[0.80, 0.895], [0.9], [0.9]],
        "reference": [0.9, 0.9, 0.9], "floor": [0.5, 0.5, 0.5], "budget_trainings": 20.0}


def test_times_ert_success_and_km_apart():
    t = times_to(RUNS, 0.01)
    assert list(t[:2]) == [5.0, 2.0] and math.isinf(t[2])
    assert ert(t, 20.0) == (5 + 2 + 20) / 2
    s = target_summary(t, 20.0, n_boot=200)
    assert s["success_rate"] == 2 / 3 and s["successful_mean"] == 3.5 and s["km_median"] == 5.0
    assert s["ert"] == 13.5 and s["ert_interval"][0] <= 13.5 <= s["ert_interval"][1]
    assert list(times_to(RUNS, 0.2)[:2]) == [1.0, 2.0]  # a looser target is reached sooner
    assert np.allclose(final_regret(RUNS), [0.005, 0.0, 0.4])  # seed 2: nothing finished in the budget
    a = anytime_regret(RUNS)
    assert np.isclose(a[2], 0.4) and 0.0 < a[1] < a[0] < 0.4


def test_pooled_ratio_across_tables():
    rng = np.random.default_rng(0)
    tables = [rng.uniform(1, 10, 30) for _ in range(3)]
    same = pooled_ratio(tables, tables, 20.0, n_boot=200)
    assert same["ratio"] == 1.0 and same["interval"] == [1.0, 1.0] and same["per_table"] == [1.0] * 3
    half = pooled_ratio([x / 2 for x in tables], tables, 20.0, n_boot=200)  # a is twice as fast everywhere
    assert np.isclose(half["ratio"], 0.5) and np.allclose(half["interval"], 0.5) and half["tables"] == 3
    # one table where a never succeeds: the pooled ratio rises, and the interval (tables resampled) is wide
    worse = pooled_ratio([tables[0], tables[1], np.full(30, math.inf)], tables, 20.0, n_boot=300)
    assert worse["ratio"] > 1.5 and math.isinf(worse["per_table"][2])
    assert worse["interval"][0] < worse["ratio"] < worse["interval"][1]
    d = pooled_difference([x + 1 for x in tables], tables, n_boot=200)
    assert np.isclose(d["mean"], 1.0) and np.allclose(d["interval"], 1.0)


def test_replays_spend_the_budget_and_qualifying_counts():
    rows = fake_rows(SPACE, 30, [(0.1, 1)], seed=0)
    r = replay_runs(rows, SPACE, "asha-probe", {"fidelity": FID, "eta": 3}, range(3), 10.0)
    assert r["seeds"] == [0, 1, 2] and all(len(ts) >= 1 for ts in r["t"])
    assert sum(r["spent"].values()) >= 10.0 - 1e-6  # ASHA spends the budget (leftovers once the pool is out)
    assert all(t <= 10.0 + 3.0 for ts in r["t"] for t in ts)  # the last piece may end after the budget
    q = qualifying(rows, SPACE, range(3))
    counts = [q[k] for k in ("0.005", "0.01", "0.02", "0.03")]
    assert all(c >= 1 for cs in counts for c in cs)
    assert all(a <= b for x, y in zip(counts, counts[1:]) for a, b in zip(x, y))  # looser target, more qualify


def test_transfer_features_are_task_free():
    probe = {"val_acc": 0.1, "train_acc": 1.0, "val_loss": math.log(10), "train_loss": 0.0, "val_acc_slope": 0.0,
             "train_loss_slope": 0.0}
    f = transfer_features(probe, {"lr": 1e-2, "batch_size": 64, "optimizer": "sgd", "momentum": 0.9}, 0.1, 10)
    assert f["p_val_acc"] == 0.0 and f["p_train_acc"] == 1.0 and np.isclose(f["p_val_loss"], 1.0)
    assert f["lr"] == -2.0 and f["batch_size"] == 6.0 and f["opt_sgd"] == 1.0 and f["momentum"] == 0.9
    g = transfer_features({**probe, "val_acc": 0.75}, {"lr": 1e-2}, 0.5, 2)  # a 2-class task on the same scale
    assert g["p_val_acc"] == 0.5


def test_transfer_and_curve_scorers_inside_asha():
    src_rows = fake_rows(SPACE, 40, [(0.1, 1)], seed=1)
    X, y, curves = table_examples(src_rows, SPACE, FID, 0.1, 10)
    sources = [(X, y, curves, 0.1)]
    rows = fake_rows(SPACE, 30, [(0.1, 1)], seed=2)
    for warm in (False, True):
        opts = {"fidelity": FID, "eta": 3,
                "scorer_factory": lambda w=warm: TransferScorer(sources, 0.1, 10, SPACE, warm=w, warm_full=5)}
        r = replay_runs(rows, SPACE, "asha-probe", opts, range(2), 8.0)
        assert r["spent"]["meta"] > 0 and all(len(ts) >= 1 for ts in r["t"])  # the model is charged
    opts = {"fidelity": FID, "eta": 3, "rungs": "probe,full@3,full",
            "scorer_factory": lambda: CurveScorer(least_squares_extrapolate)}
    r = replay_runs(rows, SPACE, "asha-probe", opts, range(2), 8.0)
    assert all(len(ts) >= 1 for ts in r["t"])
    c = np.array([[0.2, 0.4, 0.5], [0.3, 0.35, 0.37]])
    p = least_squares_extrapolate(c, 3, 6)
    assert p.shape == (2,) and p[0] > p[1]
