"""The search methods on synthetic tables: budget and cost accounting (with fake timings), the
test set read once after selection, rung promotion, replay statistics."""

import math

import numpy as np
import pytest

from lossprobe.search.benchmark import (
    bootstrap_ci, budget_to_regret, correlations, ert, km_median, noise_ceiling, paired_ert_ratio, regret_curve,
    replay, time_to_regret,
)
from lossprobe.search.loop import LoopConfig, probe_search
from lossprobe.search.methods import (
    BASELINES, METHODS, MFConfig, MFSearch, full_rungs, probe_ladder, run_method, successive_halving,
)
from lossprobe.search.oracle import OutOfBudget, TableOracle
from lossprobe.search.space import SearchSpace

from search_fake import fake_rows, quality

SPACE = SearchSpace.from_dict({"train": {"epochs": 4}, "params": {
    "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
    "width": {"type": "int", "low": 8, "high": 128, "log": True}}})
FID = "f0.2xe1"


def synthetic_rows(n=60, seed=0):
    return fake_rows(SPACE, n, [(0.2, 1)], seed)


class CountingOracle(TableOracle):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.n_probe = self.n_epochs = 0

    def probe(self, key, fid):
        out = super().probe(key, fid)
        self.n_probe += 1
        return out

    def train(self, key, epoch):
        before = self.progress.get(key, 0)
        out = super().train(key, epoch)
        self.n_epochs += self.progress.get(key, 0) - before
        return out


def test_budget_counts_probes_and_full_trainings_and_test_is_read_once_at_the_end():
    rows = synthetic_rows()
    oracle = CountingOracle(rows, SPACE, seed=0, axis="epochs", budget=30)
    events, tests = [], []

    def final_test(key):
        tests.append((key, len(events)))
        return 0.5

    res = probe_search(oracle, LoopConfig(budget=30, init_probes=8, probes_per_round=4, init_full=2),
                       on_event=lambda e, r: events.append(e), final_test=final_test)
    spent = oracle.n_probe * 0.2 * 1 + oracle.n_epochs * 1.0  # nominal: fraction × epochs, 1 per epoch
    assert res.spent == pytest.approx(spent) and spent <= 30 + 1e-9
    assert oracle.clock.by_kind.get("meta", 0.0) == 0.0  # the nominal axis does not charge the meta-model
    assert oracle.n_epochs >= 3 * 4 and oracle.n_probe >= 12
    assert tests == [(res.chosen, len(events))]  # once, after every probe and training
    trained = {e.key: e.value for e in events if e.kind == "full"}
    assert res.chosen_val_accuracy == max(trained.values())
    assert res.test_accuracy == 0.5


def test_charged_cost_equals_the_measured_timings():
    """Seconds axis with fake timings: every probe is charged its families' measured seconds, every
    epoch its share of the measured training time, and meta-model work the fake clock's ticks."""
    rows = synthetic_rows()
    ticks = iter(np.arange(0, 10_000, 0.25))  # each reading of the timer advances it by 0.25 s
    oracle = TableOracle(rows, SPACE, seed=1, families=("curve", "hessian"), budget=40.0, timer=lambda: next(ticks))
    probed, epochs = [], []
    real_probe, real_train = oracle.probe, oracle.train

    def probe(key, fid):
        out = real_probe(key, fid)  # raises OutOfBudget (charging nothing) once the budget is spent
        probed.append((key, fid))
        return out

    def train(key, epoch):
        start = oracle.progress.get(key, 0)
        out = real_train(key, epoch)
        epochs.append((key, start, epoch))
        return out

    oracle.probe, oracle.train = probe, train
    run_method("mf", oracle, seed=1, fidelity=FID, min_fit=2)
    by = {r["id"]: r for r in rows}
    want_probe = sum(by[k]["probes"][f]["cpu"]["curve"] + by[k]["probes"][f]["cpu"]["hessian"] for k, f in probed)
    want_train = sum(oracle.epoch_cost(k, a, b) for k, a, b in epochs if b > a)
    assert oracle.clock.by_kind["probe"] == pytest.approx(want_probe, abs=1e-9)
    assert oracle.clock.by_kind["train"] == pytest.approx(want_train, abs=1e-9)
    # a full training's epochs add up to its measured CPU time (epoch 0's evaluation included)
    k = next(iter(by))
    assert sum(oracle.epoch_cost(k, e - 1, e) for e in range(1, 5)) == pytest.approx(by[k]["full"]["cpu_seconds"])
    meta = oracle.clock.by_kind.get("meta", 0.0)
    assert meta > 0 and meta / 0.25 == pytest.approx(round(meta / 0.25))  # whole ticks of the fake timer
    assert oracle.clock.spent == pytest.approx(want_probe + want_train + meta)
    assert oracle.clock.spent >= 40.0  # it ran until the budget was spent


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_replays_within_budget_and_the_incumbent_never_gets_worse(method):
    """Regret is scored on an independent measurement, so it may rise when a new incumbent with a
    better selection value scores worse there; what may never happen is that the incumbent's
    selection value (the regret measured on the selection signal) gets worse."""
    rows = synthetic_rows()
    rep = replay(method, rows, SPACE, seed=1, budget=40, axis="epochs", options={"fidelity": FID})
    assert rep.t and max(rep.t) <= 40 + 1e-9  # nominal costs are known in advance: never overrun
    sel = {r["id"]: r["full"]["val_accuracy"] for r in rows}
    best_sel = max(sel.values())
    grid = np.arange(1, 41, dtype=float)
    selection_regret = np.full(len(grid), best_sel - 0.1)
    for t, k in zip(rep.t, rep.keys):
        selection_regret[grid >= t - 1e-9] = best_sel - sel[k]
    assert np.all(np.diff(selection_regret) <= 1e-12) and selection_regret[-1] < selection_regret[0]
    reg = regret_curve(rep, grid)
    assert np.all(reg[-1] <= reg[0]) and np.all(np.abs(reg - (rep.reference - np.array(
        [rep.floor if not any(t <= g + 1e-9 for t in rep.t) else
         [s for t, s in zip(rep.t, rep.scores) if t <= g + 1e-9][-1] for g in grid]))) < 1e-12)
    again = replay(method, rows, SPACE, seed=1, budget=40, axis="epochs", options={"fidelity": FID})
    assert again.keys == rep.keys and again.t == rep.t  # reproducible (Hyperband once hashed a random study name)


def test_probe_methods_beat_random_on_a_table_where_probes_are_informative():
    rows = fake_rows(SPACE, 150, [(0.2, 1)], 3)
    grid = np.array([24.0])

    def mean_regret(m):
        return np.mean([regret_curve(replay(m, rows, SPACE, s, 24, "epochs", options={"fidelity": FID}), grid)[0]
                        for s in range(6)])

    rand = mean_regret("random")
    assert mean_regret("probe") < rand and mean_regret("mf") < rand


def test_rung_promotion_finds_the_known_best_configuration():
    """Noise-free probes and curves that rank configurations by quality: successive halving and
    the multi-fidelity loop must promote the best configuration up to the last rung."""
    rows = fake_rows(SPACE, 27, [(0.2, 1)], 5)
    for r in rows:  # the probe sees the final quality exactly (shifted), so ranks agree at every rung
        r["probes"][FID]["features"]["val_acc"] = r["full"]["val_accuracy"] - 0.2
    best = max(rows, key=lambda r: r["full"]["val_accuracy"])["id"]
    assert full_rungs(4) == [1, 3, 4] and full_rungs(6) == [1, 3, 6] and full_rungs(3) == [1, 3]
    ladder = probe_ladder(4, FID)
    assert ladder == [("probe", FID), ("full", 3), ("full", 4)]
    # synchronous successive halving: 9 probed, 3 trained to epoch 3, 1 to the end, per bracket
    o = CountingOracle(rows, SPACE, seed=0, axis="epochs", budget=1e9)
    with pytest.raises(OutOfBudget):  # 27 rows = 3 brackets, then the leftovers, then nothing is left
        successive_halving(o, seed=0, ladder=ladder)
    assert o.n_probe == 27 and best in o.trace.keys[:3] and o.trace.chosen == best
    # the leftovers go up until every candidate is fully trained (their order: test_search_probe_rungs)
    assert len(o.trace.t) == 27 and sorted(o.progress.values()) == [4] * 27
    # the meta-model-led loop: a candidate goes up only when it is in its rung's top 1/eta
    o = TableOracle(rows, SPACE, seed=0, axis="epochs", budget=1e9)
    s = MFSearch(o, MFConfig(fidelity=FID, eta=3, min_fit=2, seed=0))
    s.run_all()
    for r in range(len(s.ladder) - 1):
        assert len(s.promoted[r]) <= len(s.done[r]) // 3  # never more than the top third of the rung
        assert set(s.done[r + 1]) == s.promoted[r]
    assert best in s.finals and o.trace.chosen == best


def test_statistics_helpers():
    rows = synthetic_rows(40)
    c = correlations(rows, FID, n_fit=15, seeds=2, meta="rf")
    assert len(c["meta_spearman"]) == 2 and np.mean(c["probe_spearman"]) > 0.5
    nc = noise_ceiling(rows)
    assert nc["n"] == 40 and nc["spearman"][0] > 0.9
    b = budget_to_regret(np.array([[0.2, 0.05, 0.0], [0.2, 0.2, 0.2]]), np.array([1.0, 2.0, 3.0]), 0.05)
    assert b[0] == 2.0 and np.isinf(b[1])
    assert set(BASELINES) == {"random", "tpe", "sh", "hyperband", "sh-probe", "asha-probe", "hyperband-probe", "asha",
                              "bohb", "lce", "probe-rank"}
    # ERT: (2 + 4 + 10 censored at the budget) / 2 successes; Kaplan-Meier median
    assert ert([2.0, 4.0, math.inf], 10.0) == pytest.approx(8.0)
    assert ert([math.inf, math.inf], 10.0) == math.inf
    assert km_median([1.0, 2.0, 3.0, math.inf], 10.0) == 2.0 and km_median([1.0, math.inf, math.inf], 10.0) == math.inf
    r = paired_ert_ratio([1.0] * 20, [2.0] * 20, 10.0)
    assert r["ratio"] == pytest.approx(0.5) and r["interval"] == [0.5, 0.5] and r["wilcoxon_p"] < 0.001
    m, lo, hi = bootstrap_ci(np.random.default_rng(0).normal(1.0, 1.0, 200))
    assert lo < 1.0 < hi and hi - lo < 0.4
    rep = replay("random", rows, SPACE, seed=0, budget=20, axis="epochs")
    t = time_to_regret(rep, 1.0)
    assert t == rep.t[0]  # every finished training has regret below 1
