"""Successive halving, ASHA and Hyperband whose lowest rung is the probe (issue 26): their rung
schedules on a synthetic table with a known answer."""

import numpy as np
import pytest

from lossprobe.errors import UserError
from lossprobe.search.methods import ASHA, METHODS, PROBE_RUNG_DEFAULTS, parse_rungs, run_method
from lossprobe.search.oracle import TableOracle
from lossprobe.search.space import SearchSpace

from search_fake import fake_rows

SPACE = SearchSpace.from_dict({"train": {"epochs": 6}, "params": {
    "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
    "width": {"type": "int", "low": 8, "high": 128, "log": True}}})
FID = "f0.1xe1"


def exact_rows(n: int, seed: int = 0) -> list[dict]:
    """Rows whose probe and every epoch of the curve rank configurations exactly as their final value,
    with distinct values (the best configuration is known: the highest final value)."""
    rows = fake_rows(SPACE, n, [(0.1, 1)], seed)
    for i, r in enumerate(rows):
        q = r["full"]["val_accuracy"] + 1e-6 * i  # no ties
        r["full"]["val_accuracy"] = q
        r["full"]["val_curve"] = [0.1] + [0.1 + (q - 0.1) * e / 6 for e in range(1, 7)]
        r["probes"][FID]["features"]["val_acc"] = q - 0.3
        r["repeat"]["score_accuracy"] = r["full"]["score_accuracy"] = q
    return rows


class Recorder(TableOracle):
    """A table oracle that logs every probe and every piece of full training, in order."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.log = []

    def probe(self, key, fid):
        out = super().probe(key, fid)
        self.log.append(("probe", key, 0))
        return out

    def train(self, key, epoch):
        before = self.progress.get(key, 0)
        out = super().train(key, epoch)
        if self.progress.get(key, 0) > before:
            self.log.append(("train", key, self.progress[key]))
        return out


def best_key(rows):
    return max(rows, key=lambda r: r["full"]["val_accuracy"])["id"]


def test_parse_rungs():
    assert parse_rungs("probe,full", 6, FID) == [("probe", FID), ("full", 6)]
    assert parse_rungs(None, 6, FID) == [("probe", FID), ("full", 6)]
    assert parse_rungs("probe,full@2,full", 6, FID) == [("probe", FID), ("full", 2), ("full", 6)]
    assert parse_rungs(["probe", "full@auto", "full"], 6, FID, eta=3) == [("probe", FID), ("full", 2), ("full", 6)]
    assert parse_rungs("probe,full@auto,full", 6, FID, eta=9) == [("probe", FID), ("full", 1), ("full", 6)]
    assert parse_rungs("probe,full@auto,full", 1, FID, eta=3) == [("probe", FID), ("full", 1)]  # nothing to pause
    for bad in ("full", "probe", "full,probe", "probe,full@6,full", "probe,full@3,full@2,full", "probe,half,full"):
        with pytest.raises(UserError, match="rungs"):
            parse_rungs(bad, 6, FID)
    assert set(PROBE_RUNG_DEFAULTS) == {"sh-probe", "asha-probe", "hyperband-probe"} and set(PROBE_RUNG_DEFAULTS) <= set(METHODS)


def test_sh_probe_schedules():
    rows = exact_rows(36)
    # [probe, full], eta 3: brackets of 3 probes, the best one trained to the end
    o = Recorder(rows, SPACE, seed=0, axis="epochs", budget=1e9)
    run_method("sh-probe", o, seed=0, fidelity=FID, rungs="probe,full", eta=3, n0=3)
    kinds = [(k, e) for k, _, e in o.log]
    assert kinds[:48] == [("probe", 0)] * 3 + [("train", 6)] + ([("probe", 0)] * 3 + [("train", 6)]) * 11
    # the pool (36) is exhausted: the 24 probes not promoted are trained in order of their probe value
    left = [k for _, k, _ in o.log[:48] if k not in {k for kind, k, _ in o.log[:48] if kind == "train"}]
    assert kinds[48:] == [("train", 6)] * 24
    assert [k for _, k, _ in o.log[48:]] == sorted(left, key=lambda k: -o.rows[k]["full"]["val_accuracy"])
    for b in range(12):  # in each bracket the trained candidate is the best of its three probes
        probed = [k for _, k, _ in o.log[4 * b: 4 * b + 3]]
        assert o.log[4 * b + 3][1] == max(probed, key=lambda k: o.rows[k]["full"]["val_accuracy"])
    assert o.trace.chosen == best_key(rows)
    # [probe, full@2, full], eta 3: 9 probes, 3 trained to epoch 2, 1 of them to the end
    o = Recorder(rows, SPACE, seed=0, axis="epochs", budget=1e9)
    run_method("sh-probe", o, seed=0, fidelity=FID, rungs="probe,full@2,full", eta=3, n0=9)
    first = o.log[:13]
    assert [(k, e) for k, _, e in first] == [("probe", 0)] * 9 + [("train", 2)] * 3 + [("train", 6)]
    top3 = sorted((k for _, k, _ in first[:9]), key=lambda k: -o.rows[k]["full"]["val_accuracy"])[:3]
    assert [k for _, k, _ in first[9:12]] == top3 and first[12][1] == top3[0]
    assert o.n_probes == 36 and o.trace.chosen == best_key(rows)
    # then the leftovers, the highest rung first: the 8 paused at epoch 2 go to the end, then the rest
    assert [(k, e) for k, _, e in o.log[52:60]] == [("train", 6)] * 8 and len(o.trace.t) == 36
    # eta 6 with an initial pool of 12: 12 probes, 2 trained
    o = Recorder(rows, SPACE, seed=0, axis="epochs", budget=1e9)
    run_method("sh-probe", o, seed=0, fidelity=FID, rungs="probe,full", eta=6, n0=12)
    assert [(k, e) for k, _, e in o.log[:14]] == [("probe", 0)] * 12 + [("train", 6)] * 2
    assert [(k, e) for k, _, e in o.log[14:42]] == ([("probe", 0)] * 12 + [("train", 6)] * 2) * 2
    assert len(o.trace.t) == 36 and o.trace.chosen == best_key(rows)  # 3 brackets, then the leftovers
    # the default: [probe, full], eta 9, brackets of 2 × 9 probes (PROBE_RUNG_DEFAULTS)
    o = Recorder(rows, SPACE, seed=0, axis="epochs", budget=1e9)
    run_method("sh-probe", o, seed=0, fidelity=FID)
    assert [(k, e) for k, _, e in o.log[:20]] == [("probe", 0)] * 18 + [("train", 6)] * 2


def test_asha_probe_promotes_the_top_of_each_rung():
    rows = exact_rows(40)
    for rule in ("asha", "quota"):
        o = Recorder(rows, SPACE, seed=1, axis="epochs", budget=1e9)
        run_method("asha-probe", o, seed=1, fidelity=FID, rungs="probe,full@2,full", eta=3, rule=rule)
        o2 = Recorder(rows, SPACE, seed=1, axis="epochs", budget=1e9)
        a = ASHA(o2, parse_rungs("probe,full@2,full", 6, FID), eta=3, rule=rule, seed=1).run_all()
        assert o2.log == o.log  # the method is the class
        # replay the log: every promotion was in the top floor(n/eta) of its rung at that moment
        seen = {0: [], 2: []}
        ups = {0: 0, 2: 0}
        n_pool = len(o.order)
        for i, (kind, key, e) in enumerate(o.log):
            r = 0 if kind == "probe" else e
            if kind == "train" and len(seen[0]) == n_pool:  # the pool is exhausted: the leftovers go up in
                lower = {2: 0, 6: 2}[e]                      # order, the highest rung first
                left = [c for c in seen[lower] if c not in {k for _, k, x in o.log[:i] if x == e}]
                higher = [c for c in seen.get(2, []) if lower == 0 and c not in {k for _, k, x in o.log[:i] if x == 6}]
                assert not higher
                assert key == max(left, key=lambda c: o.rows[c]["full"]["val_accuracy"])
            elif kind == "train":
                lower = {2: 0, 6: 2}[e]
                cands = seen[lower]
                k = len(cands) // 3
                top = sorted(cands, key=lambda c: -o.rows[c]["full"]["val_accuracy"])[:k]
                assert key in top
                ups[lower] += 1
                if rule == "quota":
                    assert ups[lower] <= k
            if r in seen:
                seen[r].append(key)
        assert a.promoted[0] == set(a.done[1]) and a.promoted[1] == set(a.done[2])
        assert set(a.done[2]) == set(o.order)  # with budget to spare, every candidate ends fully trained
        assert o.trace.chosen == best_key(rows)
    # the initial pool: nothing goes up before `init` probes
    o = Recorder(rows, SPACE, seed=0, axis="epochs", budget=1e9)
    run_method("asha-probe", o, seed=0, fidelity=FID, rungs="probe,full", eta=6, init=12)
    assert [k for k, _, _ in o.log[:13]] == ["probe"] * 12 + ["train"]
    assert o.log[12][1] == max((k for _, k, _ in o.log[:12]), key=lambda k: o.rows[k]["full"]["val_accuracy"])
    with pytest.raises(UserError, match="promotion rule"):
        run_method("asha-probe", o, seed=0, fidelity=FID, rule="best")


def test_hyperband_probe_brackets():
    rows = exact_rows(30)
    o = Recorder(rows, SPACE, seed=0, axis="epochs", budget=1e9)
    run_method("hyperband-probe", o, seed=0, fidelity=FID, rungs="probe,full", eta=3)
    # bracket s=1: 3 probes, the best trained; bracket s=0: 2 candidates trained without a probe
    kinds = [(k, e) for k, _, e in o.log[:7]]
    assert kinds == [("probe", 0)] * 3 + [("train", 6)] + [("train", 6)] * 2 + [("probe", 0)]
    assert o.log[3][1] == max((k for _, k, _ in o.log[:3]), key=lambda k: o.rows[k]["full"]["val_accuracy"])
    assert o.trace.chosen == best_key(rows)


def test_probe_rung_methods_on_the_seconds_axis_spend_the_budget():
    rows = exact_rows(60)
    for m in ("sh-probe", "asha-probe", "hyperband-probe"):
        o = TableOracle(rows, SPACE, seed=2, axis="seconds", budget=30.0, pool=0.8)
        run_method(m, o, seed=2, fidelity=FID)
        assert o.clock.spent >= 30.0 - 1e-9 and len(o.trace.t) >= 2
        assert set(o.clock.by_kind) <= {"probe", "train"}
        assert np.isclose(sum(o.clock.by_kind.values()), o.clock.spent)
