"""Evaluating search methods across several benchmark tables, as an HPO reviewer asks (issue 26).

`lossprobe.search.benchmark` replays methods on one table and compares them over seeds (pools
of that table). Here every number is in *full trainings* (the table's median CPU seconds of
one full training), so tables of one family can be pooled, and comparisons get intervals
across tables, not only across the heavily overlapping pools of one table:

* `replay_runs`: one method (with its options) × seeds on a table; per seed the incumbent's
  finish times and independent scores (what every other number is computed from), cached as
  plain JSON by the caller;
* `times_to`: per seed the first time regret <= target (inf if never);
* `target_summary`: ERT (Hansen et al.: Σ min(T, B) / #successes), the success rate, the
  Kaplan–Meier median and, separately from the success rate, the time to the target over the
  successful seeds only;
* `qualifying`: per pool, how many configurations are within the target of the pool's best
  (how many answers count as a success);
* `pooled_ratio`: ERT(a) / ERT(b) over the runs of several tables together, with a
  hierarchical bootstrap interval (tables resampled with replacement, then seeds within each
  table, paired between a and b); `per_table` lists each table's own ratio;
* `pooled_difference`: the same for the mean anytime regret (paired differences).
"""

from __future__ import annotations

import math
import time

import numpy as np

from lossprobe.search.benchmark import ert_ratio, km_median
from lossprobe.search.methods import run_method
from lossprobe.search.oracle import TableOracle

TARGETS = (0.005, 0.01, 0.02, 0.03)  # regret targets: 0.5, 1, 2 and 3 points of accuracy


def unit_seconds(rows: list[dict]) -> float:
    """Median CPU seconds of one full training in the table."""
    return float(np.median([r["full"]["cpu_seconds"] for r in rows]))


def replay_runs(rows: list[dict], space, method: str, options: dict | None, seeds, budget_trainings: float = 20.0,
                pool: float = 0.8, families=None, timer=time.process_time) -> dict:
    """Replay `method` on the table for each seed in `seeds`; times in full trainings. An option
    ``scorer_factory`` (a callable) makes each seed's ``scorer`` (see `methods.ASHA`).

    Returns {"seeds", "t": [[finish times]], "scores": [[incumbent's independent score]],
    "reference": [...], "floor": [...], "spent": {kind: mean}, "replay_seconds": mean}."""
    unit = unit_seconds(rows)
    out = {"seeds": [], "t": [], "scores": [], "reference": [], "floor": [], "spent": {}, "replay_seconds": 0.0,
           "unit_seconds": unit, "budget_trainings": budget_trainings}
    spent, secs = [], []
    for s in seeds:
        t0 = time.perf_counter()
        o = TableOracle(rows, space, seed=int(s), families=families, axis="seconds", budget=budget_trainings * unit,
                        pool=pool, timer=timer)
        opts = dict(options or {})
        if "scorer_factory" in opts:  # a scorer keeps state (caches, fitted models): a new one per seed
            opts["scorer"] = opts.pop("scorer_factory")()
        tr = run_method(method, o, seed=int(s), **opts)
        ts, ks = tr.incumbents()
        out["seeds"].append(int(s))
        out["t"].append([float(t) / unit for t in ts])
        out["scores"].append([o.score(k) for k in ks])
        out["reference"].append(o.reference())
        out["floor"].append(o.floor())
        spent.append(dict(o.clock.by_kind))
        secs.append(time.perf_counter() - t0)
    out["spent"] = {k: float(np.mean([sp.get(k, 0.0) for sp in spent])) / unit for k in ("probe", "train", "meta")}
    out["replay_seconds"] = float(np.mean(secs)) if secs else 0.0
    return out


def times_to(runs: dict, target: float) -> np.ndarray:
    """Per seed: the first time (full trainings) at which the incumbent's regret <= target; inf if never
    within the budget."""
    B = runs["budget_trainings"]
    out = np.full(len(runs["seeds"]), np.inf)
    for i, (ts, sc, ref) in enumerate(zip(runs["t"], runs["scores"], runs["reference"])):
        for t, s in zip(ts, sc):
            if ref - s <= target + 1e-12 and t <= B + 1e-9:
                out[i] = t
                break
    return out


def regret_curves(runs: dict, grid: np.ndarray) -> np.ndarray:
    """Regret [seeds, len(grid)] of the incumbent at each time on `grid` (full trainings)."""
    out = np.empty((len(runs["seeds"]), len(grid)))
    for i, (ts, sc, ref, fl) in enumerate(zip(runs["t"], runs["scores"], runs["reference"], runs["floor"])):
        c = np.full(len(grid), ref - fl)
        for t, s in zip(ts, sc):
            c[grid >= t - 1e-9] = ref - s
        out[i] = c
    return out


def final_regret(runs: dict) -> np.ndarray:
    return regret_curves(runs, np.array([runs["budget_trainings"]]))[:, 0]


def anytime_regret(runs: dict, points: int = 100) -> np.ndarray:
    """Per seed: the mean regret over the budget (area under the regret curve / budget)."""
    B = runs["budget_trainings"]
    return regret_curves(runs, np.linspace(B / points, B, points)).mean(1)


def ert(times, budget: float) -> float:
    t = np.asarray(times, dtype=float)
    ok = t <= budget + 1e-9
    return float(np.minimum(t, budget).sum() / ok.sum()) if ok.any() else math.inf


def target_summary(times, budget: float, n_boot: int = 1000, seed: int = 0) -> dict:
    """ERT with a bootstrap interval, the success rate, the Kaplan–Meier median, and the time to the
    target over the successful seeds only (mean and median): success and speed reported apart."""
    t = np.asarray(times, dtype=float)
    ok = t <= budget + 1e-9
    rng = np.random.default_rng(seed)
    boots = np.array([ert(t[rng.integers(0, len(t), len(t))], budget) for _ in range(n_boot)])
    boots = np.where(np.isinf(boots), 1e12, boots)
    lo, hi = (float(np.percentile(boots, q)) for q in (2.5, 97.5))
    return {"ert": ert(t, budget), "ert_interval": [lo if lo < 1e11 else math.inf, hi if hi < 1e11 else math.inf],
            "success_rate": float(ok.mean()), "km_median": km_median(t, budget),
            "successful_mean": float(t[ok].mean()) if ok.any() else math.nan,
            "successful_median": float(np.median(t[ok])) if ok.any() else math.nan, "n": int(len(t))}


def qualifying(rows: list[dict], space, seeds, pool: float = 0.8, targets=TARGETS) -> dict:
    """Per target: the number of configurations in each seed's pool whose independent score is within
    the target of the pool's reference (best true value): {target: [count per seed]}."""
    out = {f"{t:g}": [] for t in targets}
    for s in seeds:
        o = TableOracle(rows, space, seed=int(s), pool=pool)
        ref = o.reference()
        sc = np.array([o.score(k) for k in o.rows])
        for t in targets:
            out[f"{t:g}"].append(int(np.sum(ref - sc <= t + 1e-12)))
    return out


def _pooled_ert(tables_a, tables_b, budget, idx_tables, idx_seeds):
    ta = np.concatenate([tables_a[j][i] for j, i in zip(idx_tables, idx_seeds)])
    tb = np.concatenate([tables_b[j][i] for j, i in zip(idx_tables, idx_seeds)])
    return ert(ta, budget), ert(tb, budget)


def pooled_ratio(times_a: list, times_b: list, budget: float, n_boot: int = 2000, seed: int = 0) -> dict:
    """ERT(a) / ERT(b) over the runs of several tables pooled (each a list of per-seed times, seeds
    paired between a and b), with a hierarchical bootstrap interval: tables resampled with
    replacement, then seeds within each drawn table. Also each table's own ratio."""
    ta = [np.asarray(x, dtype=float) for x in times_a]
    tb = [np.asarray(x, dtype=float) for x in times_b]
    n = len(ta)
    rng = np.random.default_rng(seed)
    point = ert_ratio(*_pooled_ert(ta, tb, budget, range(n), [np.arange(len(x)) for x in ta]))
    boots = []
    for _ in range(n_boot):
        js = rng.integers(0, n, n)
        iss = [rng.integers(0, len(ta[j]), len(ta[j])) for j in js]
        boots.append(ert_ratio(*_pooled_ert(ta, tb, budget, js, iss)))
    boots = np.array(boots)
    boots = boots[~np.isnan(boots)]
    boots = np.where(np.isinf(boots), 1e12, boots)

    def pct(q):
        if not len(boots):
            return math.nan
        v = float(np.percentile(boots, q))
        return math.inf if v >= 1e11 else v
    per = [ert_ratio(ert(a, budget), ert(b, budget)) for a, b in zip(ta, tb)]
    return {"ratio": point, "interval": [pct(2.5), pct(97.5)], "per_table": per, "tables": n}


def pooled_difference(values_a: list, values_b: list, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean of a − b (paired per seed) over several tables, hierarchical bootstrap interval as
    `pooled_ratio`; also each table's own mean difference."""
    d = [np.asarray(a, dtype=float) - np.asarray(b, dtype=float) for a, b in zip(values_a, values_b)]
    n = len(d)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        js = rng.integers(0, n, n)
        boots.append(float(np.mean(np.concatenate([d[j][rng.integers(0, len(d[j]), len(d[j]))] for j in js]))))
    return {"mean": float(np.mean(np.concatenate(d))), "interval": [float(np.percentile(boots, 2.5)),
                                                                      float(np.percentile(boots, 97.5))],
            "per_table": [float(x.mean()) for x in d], "tables": n}
