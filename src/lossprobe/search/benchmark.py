"""The search benchmark: every method replayed on precomputed tables, for many paired seeds.

The tables (`lossprobe.search.table`) hold configurations drawn from a space, each trained
twice (seed 0, whose per-epoch curve on split A is what methods select on; seed 1, whose
accuracy on the disjoint split B is the independent measurement a chosen configuration is
scored by) and probed at several fidelities (seed 2, evaluated on split P), with measured
CPU seconds for every piece of work. Replaying a method costs no training, so every method
sees the same numbers and can be replayed for hundreds of seeds:

* a replay seed draws a random pool (by default 80%) of the table's rows and an order, so
  seeds vary the configurations on offer, not only the order; seed s is the same pool and
  order for every method (paired comparisons);
* regret at time t = best true value in the pool (both trainings on B, averaged) minus the
  independent score (seed 1 on B) of the incumbent at t (the finished candidate with the
  best selection value so far); before any full training has finished it is the reference
  minus the worst score in the pool;
* cost is measured seconds (primary axis) or nominal full-data epochs (secondary).

Statistics: regret at fractions of the budget with BCa bootstrap intervals over seeds;
time to a target regret per seed (censored at the budget), summarised as the expected
running time ERT = (Σ min(T_i, B)) / #successes with its success rate, a paired bootstrap
interval, and the Kaplan–Meier median; paired differences against a reference method with
BCa intervals and Wilcoxon signed-rank p-values.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import stats
from tqdm.auto import tqdm

from lossprobe.search.meta import MetaModel
from lossprobe.search.methods import METHODS, run_method
from lossprobe.search.oracle import TableOracle
from lossprobe.search.probes import ALL_FAMILIES, FAMILIES, SHARPNESS_FEATURES, parse_families
from lossprobe.search.space import SearchSpace


def full_seconds(rows: list[dict]) -> float:
    """Median CPU seconds of one full training in the table (the budget's unit)."""
    return float(np.median([r["full"]["cpu_seconds"] for r in rows]))


# --- one replay ---------------------------------------------------------------------------


@dataclass
class Replay:
    method: str
    seed: int
    t: list  # finish times of full trainings
    keys: list  # incumbent after each
    scores: list  # its independent score
    reference: float
    floor: float
    spent: dict  # cost by kind
    seconds: float  # how long the replay itself took


def replay(method: str, rows: list[dict], space: SearchSpace, seed: int, budget: float, axis: str = "seconds",
           pool: float = 0.8, families=None, options: dict | None = None, timer=time.process_time) -> Replay:
    t0 = time.perf_counter()
    o = TableOracle(rows, space, seed=seed, families=families, axis=axis, budget=budget, pool=pool, timer=timer)
    tr = run_method(method, o, seed=seed, **(options or {}))
    ts, ks = tr.incumbents()
    return Replay(method, seed, ts, ks, [o.score(k) for k in ks], o.reference(), o.floor(), dict(o.clock.by_kind),
                  time.perf_counter() - t0)


def regret_curve(rep: Replay, grid: np.ndarray) -> np.ndarray:
    """Regret [len(grid)] of the incumbent at each time on `grid`."""
    out = np.full(len(grid), rep.reference - rep.floor)
    for t, s in zip(rep.t, rep.scores):
        out[grid >= t - 1e-9] = rep.reference - s
    return out


def budget_to_regret(curves: np.ndarray, grid: np.ndarray, target: float) -> np.ndarray:
    """Per seed: the smallest budget on `grid` at which regret <= target (inf if never)."""
    out = np.full(len(curves), np.inf)
    for i, c in enumerate(curves):
        hit = np.where(c <= target + 1e-12)[0]
        if len(hit):
            out[i] = grid[hit[0]]
    return out


def time_to_regret(rep: Replay, target: float) -> float:
    """First time the incumbent's regret is <= target (inf if never within the replay)."""
    for t, s in zip(rep.t, rep.scores):
        if rep.reference - s <= target + 1e-12:
            return float(t)
    return math.inf


# --- statistics ---------------------------------------------------------------------------


def bootstrap_ci(values, n_boot: int = 2000, seed: int = 0, stat=np.mean, method: str = "BCa") -> tuple[float, float, float]:
    """Statistic and 95% bootstrap interval over the first axis (BCa by default; percentile
    when BCa is undefined, e.g. all values equal)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    point = float(stat(v))
    if len(v) < 3 or np.ptp(v) == 0:
        return point, point, point
    if method == "BCa":

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = stats.bootstrap((v,), lambda x, axis: stat(x, axis=axis), n_resamples=n_boot, method="BCa",
                                random_state=np.random.default_rng(seed), vectorized=True)
        lo, hi = float(r.confidence_interval.low), float(r.confidence_interval.high)
        if math.isfinite(lo) and math.isfinite(hi):
            return point, lo, hi
    rng = np.random.default_rng(seed)
    boots = np.array([stat(v[rng.integers(0, len(v), len(v))]) for _ in range(n_boot)])
    return point, float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def ert(times, budget: float) -> float:
    """Expected running time to the target: (Σ min(T_i, budget)) / #successes (inf if none)."""
    t = np.asarray(times, dtype=float)
    ok = t <= budget + 1e-9
    return float(np.minimum(t, budget).sum() / ok.sum()) if ok.any() else math.inf


def km_median(times, budget: float) -> float:
    """Kaplan–Meier median time to the target, runs censored at `budget` (inf if not reached)."""
    t = np.sort(np.minimum(np.asarray(times, dtype=float), math.inf))
    n, surv = len(t), 1.0
    for i, ti in enumerate(t):
        if ti > budget + 1e-9:
            break
        surv *= 1 - 1 / (n - i)
        if surv <= 0.5:
            return float(ti)
    return math.inf


def ert_summary(times, budget: float, n_boot: int = 2000, seed: int = 0) -> dict:
    t = np.asarray(times, dtype=float)
    rng = np.random.default_rng(seed)
    boots = np.array([ert(t[rng.integers(0, len(t), len(t))], budget) for _ in range(n_boot)])
    lo, hi = (float(np.percentile(np.where(np.isinf(boots), 1e12, boots), q)) for q in (2.5, 97.5))
    lo, hi = (math.inf if v >= 1e11 else v for v in (lo, hi))
    return {"ert": ert(t, budget), "interval": [lo, hi],
            "success_rate": float(np.mean(t <= budget + 1e-9)), "km_median": km_median(t, budget),
            "n": int(len(t))}


def paired_ert_ratio(ta, tb, budget: float, n_boot: int = 2000, seed: int = 0) -> dict:
    """ERT(a) / ERT(b) over the same seeds, with a paired bootstrap interval and a Wilcoxon
    signed-rank p-value on the per-seed times censored at the budget."""
    ta, tb = np.asarray(ta, dtype=float), np.asarray(tb, dtype=float)
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(n_boot):
        i = rng.integers(0, len(ta), len(ta))
        ratios.append(ert_ratio(ert(ta[i], budget), ert(tb[i], budget)))
    ratios = np.array(ratios)
    ratios = ratios[~np.isnan(ratios)]
    big = np.isinf(ratios)
    ratios = np.where(big, 1e12, ratios)  # percentiles of inf warn; map back below

    def pct(q):
        if len(ratios) == 0:
            return math.nan
        v = float(np.percentile(ratios, q))
        return math.inf if v >= 1e11 else v
    ea, eb = ert(ta, budget), ert(tb, budget)
    ca, cb = np.minimum(ta, budget), np.minimum(tb, budget)
    p = float(stats.wilcoxon(ca, cb).pvalue) if np.any(ca != cb) else 1.0
    return {"ratio": ert_ratio(ea, eb), "interval": [pct(2.5), pct(97.5)], "wilcoxon_p": p}


def ert_ratio(a: float, b: float) -> float:
    """ERT a / ERT b, where an infinite ERT (the target never reached) is worse than any finite one."""
    if math.isinf(a) and math.isinf(b):
        return math.nan
    if math.isinf(b):
        return 0.0
    if math.isinf(a):
        return math.inf
    return a / b if b > 0 else math.nan


def paired_difference(a, b, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean of a − b over the same seeds, BCa interval, Wilcoxon signed-rank p-value."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    m, lo, hi = bootstrap_ci(d, n_boot, seed)
    p = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return {"mean": m, "interval": [lo, hi], "wilcoxon_p": p}


# --- correlations and the value of feature families --------------------------------------------


def correlations(rows: list[dict], fidelity: str, n_fit: int, seeds: int, sharpness: bool = True,
                 meta: str = "et", families=None) -> dict:
    """Held-out Spearman and Kendall of predicted vs true final val accuracy, per seed.

    Each seed fits the meta-model on `n_fit` random rows and scores the others. Also the
    correlations of the raw probe validation accuracy (no meta-model) on the same rows, and
    Spearman restricted to the held-out rows whose true accuracy is above the median
    (``*_top``), where a search has to tell good from best. `families` restricts the probe
    features (hyperparameters and fidelity always included).
    """
    fam = parse_families(families if families is not None else ALL_FAMILIES)
    drop = {n for f, names in FAMILIES.items() if f not in fam for n in names}
    if not sharpness:
        drop |= set(SHARPNESS_FEATURES)
    y = np.array([r["full"]["val_accuracy"] for r in rows])
    feats = [{k: v for k, v in r["probes"][fidelity]["features"].items() if k not in drop} for r in rows]
    out = {"meta_spearman": [], "meta_kendall": [], "probe_spearman": [], "probe_kendall": [],
           "meta_spearman_top": [], "probe_spearman_top": []}
    for s in range(seeds):
        idx = np.random.default_rng([s, 99]).permutation(len(rows))
        tr, te = idx[:n_fit], idx[n_fit:]
        m = MetaModel(meta, seed=s).fit([feats[i] for i in tr], y[tr])
        mu, _ = m.predict([feats[i] for i in te])
        out["meta_spearman"].append(stats.spearmanr(mu, y[te]).statistic)
        out["meta_kendall"].append(stats.kendalltau(mu, y[te]).statistic)
        pv = np.array([feats[i]["val_acc"] for i in te])
        out["probe_spearman"].append(stats.spearmanr(pv, y[te]).statistic)
        out["probe_kendall"].append(stats.kendalltau(pv, y[te]).statistic)
        top = y[te] >= np.median(y[te])
        out["meta_spearman_top"].append(stats.spearmanr(mu[top], y[te][top]).statistic)
        out["probe_spearman_top"].append(stats.spearmanr(pv[top], y[te][top]).statistic)
    return out


def noise_ceiling(rows: list[dict]) -> dict:
    """Seed-to-seed Spearman and Kendall of final accuracy on split A (seed 0 vs seed 1),
    and how well the selection signal (seed 0 on A) predicts the independent score (seed 1 on B)."""
    rep = [r for r in rows if "repeat" in r and r["repeat"].get("val_accuracy") is not None]
    if len(rep) < 3:
        return {"n": len(rep), "spearman": [math.nan] * 3, "kendall": [math.nan] * 3}
    a = np.array([r["full"]["val_accuracy"] for r in rep])
    b = np.array([r["repeat"]["val_accuracy"] for r in rep])
    rng = np.random.default_rng(0)
    res = {"n": len(rep)}
    for name, fn in (("spearman", stats.spearmanr), ("kendall", stats.kendalltau)):
        point = fn(a, b).statistic
        boots = []
        for _ in range(1000):
            i = rng.integers(0, len(a), len(a))
            boots.append(fn(a[i], b[i]).statistic)
        res[name] = [float(point), float(np.nanpercentile(boots, 2.5)), float(np.nanpercentile(boots, 97.5))]
    res["mean_abs_diff"] = float(np.mean(np.abs(a - b)))
    good = a >= np.median(a)
    res["mean_abs_diff_top_half"] = float(np.mean(np.abs(a - b)[good]))
    if all("score_accuracy" in r["repeat"] for r in rep):
        s = np.array([r["repeat"]["score_accuracy"] for r in rep])
        res["selection_vs_score_spearman"] = float(stats.spearmanr(a, s).statistic)
    return res


# --- all replays ------------------------------------------------------------------------------


@dataclass
class ReplaySettings:
    budget: float  # in the axis' unit
    seeds: int = 100
    axis: str = "seconds"
    pool: float = 0.8
    target_regret: float = 0.01
    grid_points: int = 200
    methods: tuple = tuple(METHODS)
    options: dict = field(default_factory=dict)  # method -> options (e.g. fidelity)
    families: tuple | None = None  # probe feature families (default: probes.DEFAULT_FAMILIES)


def replay_all(rows: list[dict], space: SearchSpace, rs: ReplaySettings, progress: bool = False,
               cache: dict | None = None, on_method=None) -> dict:
    """Every method × seed: regret curves [seeds, grid] on a common grid, times to the target,
    costs. `cache` (method -> result) skips methods already replayed; `on_method(name, result)`
    is called as each method finishes (to save it)."""
    grid = np.linspace(0, rs.budget, rs.grid_points + 1)[1:]
    out = dict(cache or {})
    todo = [m for m in rs.methods if m not in out]
    bar = None
    if progress and todo:

        bar = tqdm(total=len(todo) * rs.seeds, unit="replay", desc=f"replay ({rs.axis})", dynamic_ncols=True)
    for m in todo:
        curves, ttt, chosen, spent, secs = [], [], [], [], []
        for s in range(rs.seeds):
            rep = replay(m, rows, space, s, rs.budget, rs.axis, rs.pool, rs.families, rs.options.get(m))
            curves.append(regret_curve(rep, grid))
            ttt.append(time_to_regret(rep, rs.target_regret))
            chosen.append(rep.keys[-1] if rep.keys else None)
            spent.append(rep.spent)
            secs.append(rep.seconds)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(method=m)
        res = {"curves": np.array(curves), "time_to_target": np.array(ttt), "chosen": chosen,
               "spent": {k: float(np.mean([sp.get(k, 0.0) for sp in spent])) for k in ("probe", "train", "meta")},
               "replay_seconds": float(np.mean(secs))}
        out[m] = res
        if on_method is not None:
            on_method(m, res)
    if bar is not None:
        bar.close()
    return {"grid": grid, "methods": out}


def summarize(rep: dict, budget: float, target: float, baselines: tuple, fractions=(0.25, 0.5, 1.0)) -> dict:
    """Per method: regret at fractions of the budget, anytime regret, ERT to the target; and
    each method against the best baseline (paired)."""
    grid = rep["grid"]
    per = {}
    for m, r in rep["methods"].items():
        c = r["curves"]
        at = {}
        for q in fractions:
            j = int(np.searchsorted(grid, q * budget - 1e-9))
            at[f"{q:g}"] = list(bootstrap_ci(c[:, min(j, c.shape[1] - 1)]))
        per[m] = {"regret_at": at, "anytime_regret": list(bootstrap_ci(c.mean(1))),
                  "time_to_target": ert_summary(r["time_to_target"], budget), "spent": r["spent"],
                  "replay_seconds": r["replay_seconds"]}
    base = [m for m in baselines if m in per]
    best_ert = min(base, key=lambda m: (per[m]["time_to_target"]["ert"], per[m]["anytime_regret"][0])) if base else None
    best_final = min(base, key=lambda m: (per[m]["regret_at"]["1"][0], per[m]["anytime_regret"][0])) if base else None
    for m in per:
        r = rep["methods"][m]
        if best_ert is not None:
            per[m]["vs_best_baseline_ert"] = {"baseline": best_ert, **paired_ert_ratio(
                r["time_to_target"], rep["methods"][best_ert]["time_to_target"], budget)}
        if best_final is not None:
            per[m]["vs_best_baseline_final"] = {"baseline": best_final, **paired_difference(
                r["curves"][:, -1], rep["methods"][best_final]["curves"][:, -1])}
    return {"methods": per, "best_baseline_ert": best_ert, "best_baseline_final": best_final}
