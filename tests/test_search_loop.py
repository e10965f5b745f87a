"""The probe loop: budget accounting, the test set read once after selection, baselines and replay."""

import numpy as np
import pytest

from lossprobe.search.baselines import BASELINES
from lossprobe.search.benchmark import (METHODS, TableOracle, budget_to_regret, correlations, noise_ceiling,
                                        regret_curve, run_method)
from lossprobe.search.loop import LoopConfig, probe_search
from lossprobe.search.probes import feature_names
from lossprobe.search.space import SearchSpace

SPACE = SearchSpace.from_dict({"train": {"epochs": 4}, "params": {
    "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
    "width": {"type": "int", "low": 8, "high": 128, "log": True}}})


def synthetic_rows(n=60, seed=0):
    """A fake table where final accuracy peaks at lr = 1e-2 and the probe sees it with noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        v = SPACE.sample(np.random.default_rng([seed, i]))
        q = 0.9 - 0.08 * (np.log10(v["lr"]) + 2) ** 2 + 0.01 * np.log2(v["width"])
        curve = [0.1] + [0.1 + (q - 0.1) * (1 - 0.5 ** (e + 1)) for e in range(4)]
        f = {**SPACE.encode(v), "probe_fraction": 0.2, "probe_epochs": 1.0}
        f.update({k: float(rng.normal()) for k in feature_names(SPACE) if k not in f})
        f["val_acc"] = q - 0.2 + 0.03 * rng.normal()
        rows.append({"id": i, "values": v, "full": {"val_accuracy": curve[-1], "val_curve": curve},
                     "probes": {"p": {"features": f, "cost": 0.2}}, "repeat": {"val_accuracy": curve[-1] + 0.005 * rng.normal()}})
    return rows


class CountingOracle(TableOracle):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.n_probe = self.n_full = 0

    def probe_many(self, keys):
        self.n_probe += len(keys)
        return super().probe_many(keys)

    def full(self, key):
        self.n_full += 1
        return super().full(key)


def test_budget_counts_probes_and_full_trainings_and_test_is_read_once_at_the_end():
    rows = synthetic_rows()
    oracle = CountingOracle(rows, SPACE, "p", seed=0)
    events, tests = [], []

    def final_test(key):
        tests.append((key, len(events)))
        return 0.5

    res = probe_search(oracle, LoopConfig(budget=30, init_probes=8, probes_per_round=4, init_full=2),
                       on_event=lambda e, r: events.append(e), final_test=final_test)
    spent = oracle.n_probe * oracle.probe_cost + oracle.n_full * oracle.full_cost
    assert res.spent == pytest.approx(spent) and spent <= 30 + 1e-9
    assert oracle.n_full >= 3 and oracle.n_probe >= 12
    assert tests == [(res.chosen, len(events))]  # once, after every probe and training
    trained = {e.key: e.value for e in events if e.kind == "full"}
    assert res.chosen_val_accuracy == max(trained.values())
    assert res.test_accuracy == 0.5


@pytest.mark.parametrize("method", METHODS)
def test_every_method_replays_within_budget_and_regret_never_rises(method):
    rows = synthetic_rows()
    tr = run_method(method, rows, SPACE, "p", budget=40, seed=1)
    assert tr.spent and max(tr.spent) <= 40 + 1e-9
    best = max(r["full"]["val_accuracy"] for r in rows)
    grid = np.arange(1, 41, dtype=float)
    reg = regret_curve(tr, grid, best, 0.1)
    assert np.all(np.diff(reg) <= 1e-12) and reg[-1] >= 0
    if method in BASELINES:  # replays are reproducible (Hyperband once hashed a random study name)
        again = run_method(method, rows, SPACE, "p", budget=40, seed=1)
        assert again.keys == tr.keys and again.spent == tr.spent


def test_probe_search_beats_random_on_a_table_where_probes_are_informative():
    rows = synthetic_rows(120, 3)
    best = max(r["full"]["val_accuracy"] for r in rows)
    grid = np.array([24.0])
    probe_reg = np.mean([regret_curve(run_method("probe", rows, SPACE, "p", 24, s), grid, best, 0.1)[0] for s in range(4)])
    rand_reg = np.mean([regret_curve(run_method("random", rows, SPACE, "p", 24, s), grid, best, 0.1)[0] for s in range(4)])
    assert probe_reg < rand_reg


def test_statistics_helpers():
    rows = synthetic_rows(40)
    c = correlations(rows, "p", n_fit=15, seeds=2, meta="rf")
    assert len(c["meta_spearman"]) == 2 and np.mean(c["probe_spearman"]) > 0.5
    nc = noise_ceiling(rows)
    assert nc["n"] == 40 and nc["spearman"][0] > 0.9
    b = budget_to_regret(np.array([[0.2, 0.05, 0.0], [0.2, 0.2, 0.2]]), np.array([1.0, 2.0, 3.0]), 0.05)
    assert b[0] == 2.0 and np.isinf(b[1])
    assert set(BASELINES) == {"random", "tpe", "sh", "hyperband"}
