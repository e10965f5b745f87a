"""The search benchmark: every method replayed on one precomputed table, for many seeds.

The table (`lossprobe.search.table`) holds configurations drawn from the space, each
fully trained with its per-epoch validation curve and probe features at several
fidelities. Replaying a method on it costs no training, so every method sees the same
configurations and the same numbers, and can be run for many seeds:

* probe-based search (`loop.probe_search`) with and without the sharpness features, without
  the exploration bonus (kappa = 0), with probes charged their measured wall time instead
  of fraction × epochs (``probe-wall-cost``), and a heuristic that ranks candidates by
  probe validation accuracy alone (no meta-model);
* random search, Optuna TPE, successive halving and Hyperband (`baselines`).

Reported: Spearman and Kendall correlation between the meta-model's predicted and the
true final validation accuracy at each probe fidelity (meta-model fitted on `n_fit`
random rows, scored on the rest), with the seed-to-seed correlation of full training
as the noise ceiling; regret (best accuracy in the table minus the chosen one's) against
budget with 95% bootstrap intervals over seeds; and the budget each method needs to
reach a target regret.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .baselines import BASELINES, Trace
from .loop import LoopConfig, probe_search
from .probes import SHARPNESS_FEATURES
from .space import SearchSpace

METHODS = ("probe", "probe-no-sharpness", "probe-kappa0", "probe-rank", "probe-wall-cost", "random", "tpe", "sh",
           "hyperband")


class TableOracle:
    """The table as an oracle for the probe loop and for the baselines (one seed's view).

    Candidates come in a seeded random order; a baseline's suggestion snaps to the nearest
    row not yet used (hyperparameters encoded as in the meta-model, standardised).
    """

    def __init__(self, rows: list[dict], space: SearchSpace, fidelity: str, seed: int = 0):
        self.rows = {r["id"]: r for r in rows}
        self.space = space
        self.epochs = space.epochs
        self.fidelity = fidelity
        self.order = list(np.random.default_rng([seed, 17]).permutation(sorted(self.rows)))
        first = rows[0]["probes"][fidelity]
        self.probe_cost = float(first["cost"])
        self.full_cost = float(space.epochs)
        enc = np.array([list(space.encode(self.rows[i]["values"]).values()) for i in self.order])
        self._mu, self._sd = enc.mean(0), enc.std(0) + 1e-9
        self._enc = (enc - self._mu) / self._sd
        self._used: set = set()

    # probe loop
    def candidates(self, start: int, n: int) -> list:
        return [int(k) for k in self.order[start : start + n]]

    def probe_many(self, keys: list) -> list[dict]:
        return [dict(self.rows[k]["probes"][self.fidelity]["features"]) for k in keys]

    def full(self, key) -> float:
        return float(self.rows[key]["full"]["val_accuracy"])

    # baselines
    def random_key(self, rng):
        left = [k for k in self.order if k not in self._used]
        if not left:
            return None
        k = int(left[int(rng.integers(len(left)))])
        self._used.add(k)
        return k

    def snap(self, values: dict):
        x = (np.array(list(self.space.encode(values).values())) - self._mu) / self._sd
        d = ((self._enc - x) ** 2).sum(1)
        for j in np.argsort(d):
            k = int(self.order[j])
            if k not in self._used:
                self._used.add(k)
                return k
        return None

    def curve(self, key) -> list[float]:
        return list(self.rows[key]["full"]["val_curve"][1:])


def run_method(method: str, rows: list[dict], space: SearchSpace, fidelity: str, budget: float, seed: int,
               loop_overrides: dict | None = None) -> Trace:
    """Replay one method for one seed; returns its incumbent trace."""
    oracle = TableOracle(rows, space, fidelity, seed)
    if method in BASELINES:
        return BASELINES[method](oracle, budget, seed)
    kw = dict(budget=budget, seed=seed, **(loop_overrides or {}))
    if method == "probe-no-sharpness":
        kw["sharpness"] = False
    elif method == "probe-wall-cost":
        # charge probes what they cost in wall time (features and evaluation included), not f × e
        oracle.probe_cost = wall_probe_cost(rows, fidelity, oracle.full_cost)
    elif method == "probe-kappa0":
        kw["kappa"] = 0.0  # no exploration bonus: the predicted mean alone
    elif method == "probe-rank":
        kw["init_full"] = 10**9  # never fit the meta-model: rank by probe validation accuracy
    elif method != "probe":
        raise ValueError(f"unknown method '{method}'; choose from {list(METHODS)}")
    res = probe_search(oracle, LoopConfig(**kw))
    b, a, keys = res.incumbent_curve()
    return Trace(method, list(b), list(a), keys)


def wall_probe_cost(rows: list[dict], fidelity: str, full_cost: float) -> float:
    """A probe's cost in budget units by measured wall time: median over rows of
    (probe seconds / full-training seconds) × full_cost."""
    ratios = [r["probes"][fidelity]["seconds"] / r["full"]["seconds"] for r in rows
              if r["full"].get("seconds") and r["probes"][fidelity].get("seconds")]
    return float(np.median(ratios)) * full_cost if ratios else float(rows[0]["probes"][fidelity]["cost"])


def regret_curve(trace: Trace, grid: np.ndarray, best: float, floor: float) -> np.ndarray:
    """Regret [len(grid)] of the incumbent at each budget; before any finished trial the
    regret is best − floor (the worst accuracy in the table)."""
    out = np.full(len(grid), best - floor)
    for s, a in zip(trace.spent, trace.best):
        if not math.isnan(a):
            out[grid >= s - 1e-9] = np.minimum(out[grid >= s - 1e-9], best - a)
    return out


def bootstrap_ci(values, n_boot: int = 2000, seed: int = 0, stat=np.mean) -> tuple[float, float, float]:
    """Statistic and 95% percentile-bootstrap interval over the first axis."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    boots = np.array([stat(v[rng.integers(0, len(v), len(v))]) for _ in range(n_boot)])
    return float(stat(v)), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def correlations(rows: list[dict], fidelity: str, n_fit: int, seeds: int, sharpness: bool = True,
                 meta: str = "auto") -> dict:
    """Held-out Spearman and Kendall of predicted vs true final val accuracy, per seed.

    Each seed fits the meta-model on `n_fit` random rows and scores the others. Also the
    correlations of the raw probe validation accuracy (no meta-model) on the same rows, and
    Spearman restricted to the held-out rows whose true accuracy is above the median
    (``*_top``), where a search has to tell good from best.
    """
    from .meta import MetaModel

    y = np.array([r["full"]["val_accuracy"] for r in rows])
    feats = [r["probes"][fidelity]["features"] for r in rows]
    if not sharpness:
        feats = [{k: v for k, v in f.items() if k not in SHARPNESS_FEATURES} for f in feats]
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
        # where selection happens: among held-out rows in the better half of true accuracy
        top = y[te] >= np.median(y[te])
        out["meta_spearman_top"].append(stats.spearmanr(mu[top], y[te][top]).statistic)
        out["probe_spearman_top"].append(stats.spearmanr(pv[top], y[te][top]).statistic)
    return out


def noise_ceiling(rows: list[dict]) -> dict:
    """Seed-to-seed Spearman and Kendall of final val accuracy on the rows trained twice."""
    rep = [r for r in rows if "repeat" in r]
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
    return res


@dataclass
class ReplaySettings:
    fidelity: str
    budget: float
    seeds: int = 10
    target_regret: float = 0.01
    grid_points: int | None = None  # budget grid for regret curves (default: one point per budget unit, >= 25)
    methods: tuple = METHODS


def replay_all(rows: list[dict], space: SearchSpace, rs: ReplaySettings, progress: bool = False) -> dict:
    """Every method × seed: regret curves [seeds, grid] on a common budget grid."""
    best = max(r["full"]["val_accuracy"] for r in rows)
    floor = min(r["full"]["val_accuracy"] for r in rows)
    n = rs.grid_points or max(25, int(round(rs.budget)))
    grid = np.linspace(0, rs.budget, n + 1)[1:]
    curves, chosen = {}, {}
    jobs = [(m, s) for m in rs.methods for s in range(rs.seeds)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), unit="run", desc="replay", dynamic_ncols=True)
    for m, s in jobs:
        tr = run_method(m, rows, space, rs.fidelity, rs.budget, s)
        curves.setdefault(m, []).append(regret_curve(tr, grid, best, floor))
        chosen.setdefault(m, []).append(tr.chosen)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(method=m)
    if bar is not None:
        bar.close()
    return {"grid": grid, "curves": {m: np.array(c) for m, c in curves.items()}, "chosen": chosen,
            "best": best, "floor": floor}


def budget_to_regret(curves: np.ndarray, grid: np.ndarray, target: float) -> np.ndarray:
    """Per seed: the smallest budget on `grid` at which regret <= target (inf if never)."""
    out = np.full(len(curves), np.inf)
    for i, c in enumerate(curves):
        hit = np.where(c <= target + 1e-12)[0]
        if len(hit):
            out[i] = grid[hit[0]]
    return out
