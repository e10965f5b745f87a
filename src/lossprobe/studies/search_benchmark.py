"""Search benchmark: which hyperparameter search reaches a good configuration soonest on the clock?

Stages per table (each saved as it finishes; rerunning the same command resumes):
    table         configurations drawn from the space, each fully trained twice (seed 0 for
                  selection on split A with its per-epoch curve; seed 1 scored on the disjoint
                  split B) and probed at several fidelities (seed 2, split P), with measured
                  CPU seconds per piece of work; cached row by row in TABLE_DIR/NAME, shareable
    correlations  held-out Spearman/Kendall of predicted vs true final val accuracy per
                  fidelity, with and without feature families, and the noise ceiling
    features      each probe feature family's measured cost and held-out value (Spearman and
                  replayed regret with and without it)
    replay        every method × seed on the table, cost in measured seconds (primary) and in
                  nominal epochs: regret curves, time to the target regret
    report        summary.json (with the default method the measurements choose), figures,
                  report.md

Two tables by default (`TABLES`): MLPs (examples/space.toml) and CNNs (examples/space_cnn.toml)
on Fashion-MNIST. The test set is never read by this study (it compares selection).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lossprobe.errors import UserError
from lossprobe.figures.search import plot_correlations, plot_regret
from lossprobe.results import plotspec
from lossprobe.runtime.config import finite_float, positive_int
from lossprobe.search.benchmark import (
    ReplaySettings,
    bootstrap_ci,
    correlations,
    full_seconds,
    noise_ceiling,
    paired_difference,
    paired_ert_ratio,
    replay_all,
    summarize,
)
from lossprobe.search.methods import BASELINES, DEFAULT_METHOD, METHODS
from lossprobe.search.oracle import TableOracle
from lossprobe.search.probes import ALL_FAMILIES, DEFAULT_FAMILIES
from lossprobe.search.space import SearchSpace
from lossprobe.search.space import SearchSpace as _S
from lossprobe.search.table import TableConfig, build_table
from lossprobe.studies.base import Preset, Stage, Study, option, run_study

# Same text as examples/space.toml, so the study runs from an installed package.
DEFAULT_SPACE_TOML = """
[train]
model = "mlp"
epochs = 6
schedule = "cosine"

[params]
lr = { type = "float", low = 1e-4, high = 0.5, log = true }
momentum = { type = "float", low = 0.0, high = 0.95 }
weight_decay = { type = "float", low = 1e-6, high = 1e-2, log = true }
batch_size = { type = "categorical", choices = [32, 64, 128, 256] }
optimizer = { type = "categorical", choices = ["sgd", "momentum", "adam", "rmsprop"] }
width = { type = "int", low = 16, high = 256, log = true }
depth = { type = "int", low = 1, high = 3 }
dropout = { type = "float", low = 0.0, high = 0.5 }
activation = "relu"
"""


# The CNN space of the second table (same text as examples/space_cnn.toml).
CNN_SPACE_TOML = """
[train]
model = "cnn"
epochs = 3
schedule = "cosine"

[params]
lr = { type = "float", low = 1e-4, high = 0.3, log = true }
weight_decay = { type = "float", low = 1e-6, high = 1e-2, log = true }
batch_size = { type = "categorical", choices = [32, 64, 128, 256] }
optimizer = { type = "categorical", choices = ["sgd", "momentum", "adam", "rmsprop"] }
channels = { type = "int", low = 4, high = 24, log = true }
depth = { type = "int", low = 1, high = 3 }
batchnorm = { type = "categorical", choices = [true, false] }
dropout = { type = "float", low = 0.0, high = 0.5 }
momentum = 0.9
width = 64
"""

# The two tables the benchmark reports side by side, sized for a shared 2-core machine: each
# builds in under an hour of one CPU core (every row is trained twice; see docs/search.md).
TABLES = {
    "mlp": {"space_toml": DEFAULT_SPACE_TOML, "size": 200, "fidelities": [[0.1, 1], [0.2, 2], [0.4, 2]],
            "n_train": 10_000, "n_val": 5_000, "n_score_val": 5_000, "n_probe_val": 2_000},
    "cnn": {"space_toml": CNN_SPACE_TOML, "size": 150, "fidelities": [[0.1, 1], [0.2, 2]],
            "n_train": 2_000, "n_val": 1_500, "n_score_val": 5_000, "n_probe_val": 1_000},
}


# Two more tasks for the transfer experiment (issue 26): the MLP space on two small data sets.
SPIRAL_SPACE_TOML = DEFAULT_SPACE_TOML.replace("epochs = 6", "epochs = 10")
DIGITS_SPACE_TOML = DEFAULT_SPACE_TOML.replace("epochs = 6", "epochs = 10")
EXTRA_TABLES = {
    "spiral": {"space_toml": SPIRAL_SPACE_TOML, "size": 150, "fidelities": [[0.2, 2]], "dataset": "spiral",
               "n_train": 3_000, "n_val": 1_000, "n_score_val": 1_000, "n_probe_val": 1_000},
    "digits": {"space_toml": DIGITS_SPACE_TOML, "size": 150, "fidelities": [[0.2, 2]], "dataset": "digits",
               "n_train": 1_000, "n_val": 300, "n_score_val": 300, "n_probe_val": 197},
}

# Tables of issue 26, named FAMILY-ROLE: 'dev' tables (the first rows of the tables above, with
# their seeds: every setting of every method was tuned on them), 'fresh1'..'fresh3' (new
# configuration samples, data splits, training and probe seeds; used for no choice) and, for
# the MLP, 'live' (the live default: all 50k training images but a probe split of 5k carved
# from them, probes evaluated there). Probes at the search fidelity only, learning-curve
# features only (the default families), so they cost what a search pays.
ROLE_SIZES = {"mlp": {"dev": 120, "fresh": 100, "live": 50}, "cnn": {"dev": 100, "fresh": 80},
              "spiral": {"dev": 100, "fresh": 100}, "digits": {"dev": 100, "fresh": 100}}
ROLES = ("dev", "fresh1", "fresh2", "fresh3", "live")


def variant_names() -> list[str]:
    return [f"{f}-{r}" for f, sizes in ROLE_SIZES.items() for r in ROLES if r.rstrip("123") in sizes]


def table_config(name: str, size: int | None = None):
    """The `TableConfig` of one of the benchmark's tables ('mlp' or 'cnn', or a FAMILY-ROLE table of
    `variant_names()`)."""
    if "-" in name and name in variant_names():
        return _variant_config(name, size)
    if name not in TABLES and name not in EXTRA_TABLES:
        raise UserError(f"unknown benchmark table '{name}'; choose from {', '.join(list(TABLES) + variant_names())}")
    t = TABLES.get(name) or EXTRA_TABLES[name]
    space = SearchSpace.from_dict(tomllib.loads(t["space_toml"]), source=f"(built-in {name} space)")
    return TableConfig(space=space.to_dict(), size=size or t["size"], fidelities=[list(f) for f in t["fidelities"]],
                       n_train=t["n_train"], n_val=t["n_val"], n_score_val=t["n_score_val"],
                       n_probe_val=t["n_probe_val"], dataset=t.get("dataset", "fashion-mnist"))


def _variant_config(name: str, size: int | None):
    fam, role = name.split("-")
    tc = table_config(fam)
    tc.size = size or ROLE_SIZES[fam][role.rstrip("123")]
    tc.fidelities = [list(tc.fidelities[0])]
    tc.families = ["curve"]
    if role != "dev":
        k = 4 if role == "live" else int(role[-1])
        tc.sample_seed, tc.data_seed, tc.seeds = 100 + k, k, [10 * k, 10 * k + 1, 10 * k + 2]
    if role == "live":  # all training images, less the probe split that `lossprobe search` carves off
        tc.n_train, tc.n_probe_val = 45_000, 5_000
    return tc


@dataclass
class SearchBenchmarkConfig:
    tables: list[str] = option(default_factory=lambda: ["mlp", "cnn"], flag="--tables", nargs="+",  # names in TABLES
                               choices=tuple(TABLES), help="tables to benchmark (default: mlp cnn)")
    space: str | None = option(None, flag="--space", metavar="TOML",  # replaces the tables by one ("custom")
                               help="benchmark one table of this space instead (MLP table settings)")
    sizes: dict = option(default_factory=dict)  # table name -> rows (default: TABLES' size)
    table_overrides: dict = option(default_factory=dict)  # table name -> TableConfig fields (tests, --quick)
    table_dir: str | None = option(None, flag="--table-dir", metavar="DIR",  # TABLE_DIR/NAME
                                   help="parent directory of the cached tables, DIR/mlp and DIR/cnn "
                                   "(default: OUT/tables); share it between runs, it only grows")
    seeds: int = option(100, flag="--seeds", type=positive_int,  # paired: seed s is the same pool and order for every method
                        help="replay seeds per method (default: 100)")
    pool: float = 0.8  # fraction of the table each replay seed draws
    budget_trainings: float = option(20.0, flag="--budget", type=finite_float,  # in measured seconds
                                     help="budget in median full trainings (default: 20)")
    target_regret: float = 0.01
    methods: list[str] = option(default_factory=list, flag="--methods", nargs="+", metavar="METHOD",
                                help="methods to replay (default: all)")
    search_fidelity: dict = option(default_factory=dict)  # table -> probe fidelity of probe-based methods
    n_fit: int = 30  # rows the meta-model is fitted on in the correlation analysis
    corr_seeds: int = 20
    feature_seeds: int = 100  # replay seeds of the feature-family ablation
    feature_method: str = "probe"  # the method whose regret the feature ablation measures
    epochs_axis: bool = True  # also replay with nominal costs (fraction × epochs; epochs)

    def __post_init__(self):
        if not self.tables:
            raise UserError("give at least one table")
        bad = [t for t in self.tables if t not in TABLES and t != "custom"]
        if bad:
            raise UserError(f"unknown benchmark table '{bad[0]}'; choose from {', '.join(TABLES)}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise UserError(f"unknown search method '{bad[0]}'; choose from {', '.join(METHODS)}")
        if self.seeds < 1 or self.budget_trainings <= 0 or not 0 < self.pool <= 1 or self.corr_seeds < 1:
            raise UserError("seeds >= 1, budget_trainings > 0, 0 < pool <= 1 and corr_seeds >= 1 are required")
        if self.n_fit < 2:
            raise UserError(f"n_fit must be at least 2, got {self.n_fit}")
        if self.space:  # one table of the user's space
            self.tables = ["custom"]


QUICK = {"tables": ["mlp"], "sizes": {"mlp": 16},
         "table_overrides": {"mlp": {"fidelities": [[0.2, 1], [0.3, 2]], "n_train": 1500, "n_val": 800,
                                     "n_score_val": 800, "n_probe_val": 400}},
         "seeds": 3, "budget_trainings": 6.0, "n_fit": 8, "corr_seeds": 3, "feature_seeds": 3}


def _table(cfg: SearchBenchmarkConfig, name: str):
    """(TableConfig, SearchSpace) of table `name` under `cfg`."""
    if name == "custom" or cfg.space:
        tc = table_config("mlp", cfg.sizes.get(name))
        space = SearchSpace.from_toml(cfg.space) if cfg.space else SearchSpace.from_dict(tc.space)
        tc.space = space.to_dict()
    else:
        tc = table_config(name, cfg.sizes.get(name))
    for k, v in cfg.table_overrides.get(name, {}).items():
        if not hasattr(tc, k):
            raise UserError(f"table_overrides.{name}: unknown table setting '{k}'")
        setattr(tc, k, v)

    return tc, _S.from_dict(tc.space, source=f"(table {name})")


def _space(cfg: SearchBenchmarkConfig, name: str | None = None):
    return _table(cfg, name or cfg.tables[0])[1]


def _probe_methods():
    return ("sh-probe", "asha-probe", "hyperband-probe", "probe-rank", "probe", "mf")


def _build(ctx, name: str) -> dict:
    """Table `name`, built once (row by row, resumable) in TABLE_DIR/NAME, and what its replays need."""
    cfg = ctx.cfg
    tcfg, space = _table(cfg, name)
    tdir = Path(cfg.table_dir) / name if cfg.table_dir else ctx.rd / "tables" / name
    ctx.say(f"table {name}: {tcfg.size} configurations in {tdir} (built once, reused)")
    rows = build_table(tdir, tcfg, progress=ctx.progress)
    if len(rows) < tcfg.size:
        raise UserError(f"table {name} has {len(rows)} of {tcfg.size} rows; rerun to finish it")
    keys = tcfg.keys()
    fid = cfg.search_fidelity.get(name) or keys[0]
    if fid not in keys:
        raise UserError(f"search_fidelity.{name} = '{fid}' is not one of the table's fidelities {keys}")
    unit = full_seconds(rows)
    ys = np.array([r["repeat"]["score_accuracy"] for r in rows])
    return {"rows": rows, "tcfg": tcfg, "space": space, "fidelity": fid, "unit_seconds": unit,
            "budget": cfg.budget_trainings * unit, "methods": tuple(cfg.methods or METHODS),
            "best_score": float(ys.max()), "median_score": float(np.median(ys)), "table_dir": str(tdir)}


def _correlations(ctx, name: str) -> dict:
    """Held-out Spearman/Kendall per fidelity, with and without feature families; the noise ceiling."""
    cfg, t = ctx.cfg, ctx.out[f"table-{name}"]
    rows, keys = t["rows"], t["tcfg"].keys()
    ctx.say(f"  correlations at fidelities {keys} over {cfg.corr_seeds} seeds")
    corr = {}
    for k in keys:
        corr[k] = {"all": correlations(rows, k, cfg.n_fit, cfg.corr_seeds),
                   "default": correlations(rows, k, cfg.n_fit, cfg.corr_seeds, families=DEFAULT_FAMILIES),
                   "no_sharpness": correlations(rows, k, cfg.n_fit, cfg.corr_seeds, sharpness=False)}
    ctx.rd.save_json(f"correlations-{name}.json", {"per_fidelity": corr, "noise_ceiling": noise_ceiling(rows)})
    return ctx.rd.load_json(f"correlations-{name}.json")


def _features(ctx, name: str) -> dict:
    t = ctx.out[f"table-{name}"]
    ctx.say(f"  feature families: cost and value at {t['fidelity']}")
    ctx.rd.save_json(f"features-{name}.json",
                     _feature_study(t["rows"], t["space"], ctx.cfg, t["fidelity"], t["budget"], ctx.progress))
    return ctx.rd.load_json(f"features-{name}.json")


def _replays(ctx, name: str) -> dict:
    """Every method × seed on the table, on the seconds axis (and nominal epochs); each method's
    replay is saved as it finishes (replay-NAME-AXIS-METHOD.npz/.json) and reused by a rerun."""
    cfg, rd, t = ctx.cfg, ctx.rd, ctx.out[f"table-{name}"]
    rows, space, methods, budget = t["rows"], t["space"], t["methods"], t["budget"]
    options = {m: {"fidelity": t["fidelity"]} for m in _probe_methods()}
    axes = [("seconds", budget)] + ([("epochs", cfg.budget_trainings * space.epochs)] if cfg.epochs_axis else [])
    summaries = {}
    for axis, b in axes:
        rs = ReplaySettings(budget=b, seeds=cfg.seeds, axis=axis, pool=cfg.pool, target_regret=cfg.target_regret,
                            methods=methods, options=options)
        cache = {}
        for m in methods:
            f = rd / f"replay-{name}-{axis}-{m}.npz"
            if f.is_file():
                a = rd.load_arrays(f.name)
                j = rd.load_json(f"replay-{name}-{axis}-{m}.json")
                cache[m] = {"curves": a["curves"], "time_to_target": a["time_to_target"], **j}
        cost = np.linspace(0, rs.budget, rs.grid_points + 1)[1:]  # replay_all's grid

        def save(m, res, axis=axis, cost=cost):
            rd.save_json(f"replay-{name}-{axis}-{m}.json", {k: res[k] for k in ("chosen", "spent", "replay_seconds")})
            rd.save_arrays(f"replay-{name}-{axis}-{m}.npz", curves=res["curves"], time_to_target=res["time_to_target"],
                           cost=cost, mean_regret=res["curves"].mean(0), plots=[plotspec.line(
                               f"{m} on table {name}: regret against cost (mean over {cfg.seeds} seeds)", "cost",
                               [plotspec.Series("mean_regret", m)],
                               xlabel="cost (measured seconds)" if axis == "seconds" else "cost (nominal epochs)",
                               ylabel="regret (best true score − score of the returned configuration)")])

        rep = replay_all(rows, space, rs, progress=ctx.progress, cache=cache, on_method=save)
        summaries[axis] = {"budget": b, **summarize(rep, b, cfg.target_regret, BASELINES)}
        if axis == "seconds":
            grid, curves = rep["grid"], {m: rep["methods"][m]["curves"] for m in methods}
    return {"replay": summaries, "grid": grid, "curves": curves}


def _stages(cfg: SearchBenchmarkConfig) -> list[Stage]:
    out = []
    for name in cfg.tables:
        out += [
            Stage(f"table-{name}", lambda ctx, name=name: _build(ctx, name), resume=False),  # the table caches itself
            Stage(f"correlations-{name}", lambda ctx, name=name: _correlations(ctx, name),
                  load=lambda ctx, name=name: ctx.rd.load_json(f"correlations-{name}.json"),
                  files=(f"correlations-{name}.json",)),
            Stage(f"features-{name}", lambda ctx, name=name: _features(ctx, name),
                  load=lambda ctx, name=name: ctx.rd.load_json(f"features-{name}.json"), files=(f"features-{name}.json",)),
            Stage(f"replay-{name}", lambda ctx, name=name: _replays(ctx, name), resume=False),  # cached per method
        ]
    return out + [Stage("report", _report, resume=False)]


def _results(ctx, name: str) -> dict:
    """Everything measured on table `name` (what `_report` reads)."""
    return {**ctx.out[f"table-{name}"], "correlations": ctx.out[f"correlations-{name}"],
            "features": ctx.out[f"features-{name}"], **ctx.out[f"replay-{name}"]}


def _feature_study(rows, space, cfg: SearchBenchmarkConfig, fid: str, budget: float, progress: bool) -> dict:
    """Each extra family's measured cost, and its value: held-out Spearman and replayed regret of
    `cfg.feature_method` with the base probe (hyperparameters + learning curve) and with the family."""
    extra = [f for f in ALL_FAMILIES if f != "curve"]
    full = np.median([r["full"]["cpu_seconds"] for r in rows])
    cost = {}
    for f in ALL_FAMILIES:
        c = np.array([r["probes"][fid]["cpu"].get(f, 0.0) for r in rows])
        base = np.array([r["probes"][fid]["cpu"].get("curve", 0.0) for r in rows])
        cost[f] = {"median_seconds": float(np.median(c)), "vs_probe_training": float(np.median(c / np.maximum(base, 1e-9))),
                   "vs_full_training": float(np.median(c) / full)}
    sets = {"base": ("curve",), **{f"+{f}": ("curve", f) for f in extra}, "all": ALL_FAMILIES}
    sp = {k: correlations(rows, fid, cfg.n_fit, cfg.corr_seeds, families=v)["meta_spearman"] for k, v in sets.items()}
    out = {"fidelity": fid, "cost": cost, "spearman": {}, "replay": {}, "method": cfg.feature_method}
    for k in sets:
        out["spearman"][k] = {"mean": float(np.mean(sp[k])),
                              "vs_base": paired_difference(sp[k], sp["base"]) if k != "base" else None}
    reps = {}
    for k, v in sets.items():
        rs = ReplaySettings(budget=budget, seeds=cfg.feature_seeds, pool=cfg.pool, target_regret=cfg.target_regret,
                            methods=(cfg.feature_method,), options={cfg.feature_method: {"fidelity": fid}}, families=v)
        reps[k] = replay_all(rows, space, rs, progress=progress)["methods"][cfg.feature_method]
    for k in sets:
        c = reps[k]["curves"]
        d = {"anytime_regret": float(c.mean()), "regret_at_budget": float(c[:, -1].mean()),
             "success_rate": float(np.mean(reps[k]["time_to_target"] <= budget))}
        if k != "base":
            d["anytime_vs_base"] = paired_difference(c.mean(1), reps["base"]["curves"].mean(1))
            d["ert_ratio_vs_base"] = paired_ert_ratio(reps[k]["time_to_target"], reps["base"]["time_to_target"], budget)
        out["replay"][k] = d
    # a family pays for itself when, charged its cost, it lowers the anytime regret significantly
    pays = {}
    for f in extra:
        a = out["replay"][f"+{f}"]["anytime_vs_base"]
        pays[f] = bool(a["interval"][1] < 0)
    out["pays"] = pays
    return out


def _ci(v):
    return [float(x) for x in v]


def _oracle_regret(rows, space, seeds: int, pool: float) -> float:
    """Mean regret of choosing, in each seed's pool, the row with the best selection value
    (seed 0 on A): the floor any method that selects on A faces."""
    out = []
    for s in range(seeds):
        o = TableOracle(rows, space, seed=s, pool=pool)
        k = max(o.rows, key=lambda i: o.rows[i]["full"]["val_accuracy"])
        out.append(o.reference() - o.score(k))
    return float(np.mean(out))


def _targets(rep: dict, method: str) -> dict:
    """The issue's targets for `method` against the best baseline (seconds axis)."""
    m = rep["methods"].get(method)
    if m is None:
        return {}
    e = m["vs_best_baseline_ert"]
    f = m["vs_best_baseline_final"]
    t1 = bool(math.isfinite(e["ratio"]) and e["ratio"] <= 0.6 and e["interval"][1] < 1 and e["wilcoxon_p"] < 0.05)
    if f["interval"][1] < 0:
        final = "better"
    elif f["interval"][0] > 0:
        final = "worse"
    else:
        final = "tie (the 95% interval of the paired difference contains 0)"
    return {"method": method, "baseline_ert": e["baseline"], "ert_ratio": e["ratio"], "ert_ratio_interval": e["interval"],
            "ert_wilcoxon_p": e["wilcoxon_p"], "target_time_met": t1,
            "baseline_final": f["baseline"], "final_regret_difference": f["mean"], "final_interval": f["interval"],
            "final_verdict": final, "target_final_met": final != "worse"}


def _report(ctx) -> dict:
    cfg, rd = ctx.cfg, ctx.rd
    res = {name: _results(ctx, name) for name in cfg.tables}
    tables, figs = {}, []
    fractions = ("0.25", "0.5", "1")
    for name, r in res.items():
        corr, fid = r["correlations"], r["fidelity"]
        spearman = {}
        for k, c in corr["per_fidelity"].items():
            spearman[k] = {"meta": _ci(bootstrap_ci(c["all"]["meta_spearman"])),
                           "meta_default_features": _ci(bootstrap_ci(c["default"]["meta_spearman"])),
                           "meta_no_sharpness": _ci(bootstrap_ci(c["no_sharpness"]["meta_spearman"])),
                           "probe_val_acc": _ci(bootstrap_ci(c["all"]["probe_spearman"])),
                           "meta_top_half": _ci(bootstrap_ci(c["all"]["meta_spearman_top"])),
                           "probe_val_acc_top_half": _ci(bootstrap_ci(c["all"]["probe_spearman_top"]))}
        tc = r["tcfg"]
        rep = r["replay"]["seconds"]
        tables[name] = {
            "size": len(r["rows"]), "table_dir": r["table_dir"], "model": r["space"].model,
            "n_train": tc.n_train, "n_val": tc.n_val, "n_score_val": tc.n_score_val, "n_probe_val": tc.n_probe_val,
            "full_training_epochs": r["space"].epochs, "fidelities": tc.keys(), "search_fidelity": fid,
            "full_training_seconds": r["unit_seconds"], "budget_seconds": r["budget"],
            "budget_trainings": cfg.budget_trainings, "best_score": r["best_score"], "median_score": r["median_score"],
            "oracle_regret": _oracle_regret(r["rows"], r["space"], cfg.seeds, cfg.pool),
            "table_cpu_hours": float(sum(x["full"]["cpu_seconds"] + x["repeat"]["cpu_seconds"]
                                         + sum(sum(p["cpu"].values()) for p in x["probes"].values())
                                         for x in r["rows"]) / 3600),
            "spearman": spearman, "noise_ceiling": corr["noise_ceiling"], "features": r["features"],
            "replay": r["replay"], "targets": {m: _targets(rep, m) for m in ("mf", "probe")},
        }
        title = (f"{name.upper()} table: Fashion-MNIST ({tc.n_train} train / {tc.n_val} val), {len(r['rows'])} "
                 f"configurations, {cfg.seeds} seeds")
        figs.append(plot_regret(r["grid"], r["curves"], rd.figures, title, unit=r["unit_seconds"],
                                name=f"regret_vs_seconds_{name}"))
        figs.append(plot_correlations(list(spearman), {k: v["meta"] for k, v in spearman.items()},
                                      {k: v["probe_val_acc"] for k, v in spearman.items()},
                                      {k: v["meta_default_features"] for k, v in spearman.items()},
                                      corr["noise_ceiling"]["spearman"], rd.figures, title, "spearman",
                                      name=f"correlation_spearman_{name}", third="meta-model, default features"))

    # --- the default method: lowest regret at 25/50/100% of the wall-clock budget, on every table
    common = set.intersection(*(set(t["replay"]["seconds"]["methods"]) for t in tables.values()))
    score = {m: float(np.mean([t["replay"]["seconds"]["methods"][m]["regret_at"][q][0]
                               for t in tables.values() for q in fractions])) for m in sorted(common)}
    best = min(score, key=score.get)
    runner = min((m for m in score if m != best), key=score.get, default=None)
    default = {"measured": best, "criterion": "mean regret at 25%, 50% and 100% of the wall-clock budget, "
               "averaged over the tables", "scores": score, "runner_up": runner, "in_code": DEFAULT_METHOD,
               "agrees": best == DEFAULT_METHOD}
    # families that pay for themselves on every table where they were measured
    pays = {f: all(t["features"]["pays"].get(f, False) for t in tables.values())
            for f in next(iter(tables.values()))["features"]["pays"]}
    fam = {"measured": ["curve"] + [f for f, ok in pays.items() if ok], "in_code": list(DEFAULT_FAMILIES),
           "pays": pays}
    fam["agrees"] = sorted(fam["measured"]) == sorted(fam["in_code"])

    verdict = []
    for name, t in tables.items():
        for m in ("mf", "probe"):
            g = t["targets"].get(m)
            if not g:
                continue
            verdict.append(
                f"{name}: {m} needs {g['ert_ratio']:.2f}× [{g['ert_ratio_interval'][0]:.2f}, {g['ert_ratio_interval'][1]:.2f}] "
                f"the expected wall-clock time of the best baseline ({g['baseline_ert']}) to reach regret <= "
                f"{cfg.target_regret} (target <= 0.6×, significant: {'met' if g['target_time_met'] else 'missed'}); "
                f"at the full budget vs {g['baseline_final']}: {g['final_verdict']} "
                f"(difference {g['final_regret_difference']:+.4f})")
    summary = {"study": "search-benchmark", "tables": tables, "default_method": default, "default_families": fam,
               "seeds": cfg.seeds, "pool": cfg.pool, "target_regret": cfg.target_regret, "verdict": verdict,
               "seconds": ctx.elapsed()}
    rd.save_json("summary.json", summary)
    rd.write_text("report.md", _report_text(summary, figs))
    return summary


def _fmt(v, d=3):
    return f"{v[0]:.{d}f} [{v[1]:.{d}f}, {v[2]:.{d}f}]"


def _num(x, d=2):
    return "∞" if x is None or (isinstance(x, float) and math.isinf(x)) else f"{x:.{d}f}"


def regret_table(t: dict, axis: str = "seconds") -> list[str]:
    """Markdown rows: method × regret at 25/50/100% of the budget, ERT to the target, vs best baseline."""
    rep = t["replay"][axis]
    unit = t["full_training_seconds"] if axis == "seconds" else t["full_training_epochs"]
    lines = ["| method | regret at 25% | at 50% | at 100% | ERT to 1 point (full trainings) | success | "
             "ERT / best baseline [95% CI], p |", "|---|---|---|---|---|---|---|"]
    order = sorted(rep["methods"], key=lambda m: rep["methods"][m]["regret_at"]["1"][0])
    for m in order:
        r = rep["methods"][m]
        tt = r["time_to_target"]
        e = r.get("vs_best_baseline_ert", {})
        rel = (f"{_num(e.get('ratio'))} [{_num(e['interval'][0])}, {_num(e['interval'][1])}], {e['wilcoxon_p']:.2g}"
               if e and m != e.get("baseline") else "(best baseline)" if e else "")
        lines.append(f"| {m} | {_fmt(r['regret_at']['0.25'])} | {_fmt(r['regret_at']['0.5'])} | {_fmt(r['regret_at']['1'])} | "
                     f"{_num(tt['ert'] / unit if math.isfinite(tt['ert']) else math.inf, 1)} "
                     f"[{_num(tt['interval'][0] / unit, 1)}, {_num(tt['interval'][1] / unit, 1)}] | "
                     f"{tt['success_rate']:.0%} | {rel} |")
    return lines


def feature_table(t: dict) -> list[str]:
    f = t["features"]
    lines = [f"Probe fidelity {f['fidelity']}; regret of `{f['method']}` replays charged each family's measured cost.", "",
             "| probe features | cost per probe (s) | × probe training | × full training | held-out Spearman "
             "(Δ vs base [95% CI]) | anytime regret (Δ vs base [95% CI]) | ERT ratio vs base | pays for itself |",
             "|---|---|---|---|---|---|---|---|"]
    for k in f["spearman"]:
        fams = ["curve"] if k == "base" else (["curve", k[1:]] if k.startswith("+") else list(f["cost"]))
        c = sum(f["cost"][x]["median_seconds"] for x in fams)
        vp = sum(f["cost"][x]["vs_probe_training"] for x in fams if x != "curve")
        vf = sum(f["cost"][x]["vs_full_training"] for x in fams)
        sp = f["spearman"][k]
        rp = f["replay"][k]
        dsp = f" ({sp['vs_base']['mean']:+.3f} [{sp['vs_base']['interval'][0]:+.3f}, {sp['vs_base']['interval'][1]:+.3f}])" \
            if sp["vs_base"] else ""
        dr = (f" ({rp['anytime_vs_base']['mean']:+.4f} [{rp['anytime_vs_base']['interval'][0]:+.4f}, "
              f"{rp['anytime_vs_base']['interval'][1]:+.4f}])") if "anytime_vs_base" in rp else ""
        er = f"{_num(rp['ert_ratio_vs_base']['ratio'])}" if "ert_ratio_vs_base" in rp else ""
        pay = ("yes" if f["pays"].get(k[1:]) else "no") if k.startswith("+") else ""
        name = {"base": "base: hyperparameters + learning curve", "all": "all families"}.get(k, k)
        lines.append(f"| {name} | {c:.3f} | {1 + vp:.2f} | {vf:.3f} | {sp['mean']:.3f}{dsp} | "
                     f"{rp['anytime_regret']:.4f}{dr} | {er} | {pay} |")
    return lines


def _report_text(s: dict, figs: list[str]) -> str:
    lines = [f"# Search benchmark ({len(s['tables'])} tables, {s['seeds']} paired seeds per method)", "",
             "Cost is measured CPU seconds of one core (probes with the features they compute, full-training "
             "epochs, meta-model fitting); regret is the best true value in the seed's pool (both trainings "
             "scored on the held-out split B, averaged) minus the independent score (seed 1 on B) of the "
             "configuration the method would return at that time.", "",
             f"**Default method (measured):** `{s['default_method']['measured']}` — {s['default_method']['criterion']}"
             f"; runner-up `{s['default_method']['runner_up']}`. `lossprobe search` uses `{s['default_method']['in_code']}`"
             + ("." if s["default_method"]["agrees"] else " — **this disagrees with the measurement**."), "",
             f"**Default probe features (measured):** {', '.join(s['default_families']['measured'])}; in code: "
             f"{', '.join(s['default_families']['in_code'])}.", ""]
    lines += ["**Targets:**", ""] + [f"- {v}" for v in s["verdict"]] + [""]
    for name, t in s["tables"].items():
        lines += [f"## Table `{name}`: {t['size']} {t['model'].upper()} configurations", "",
                  f"{t['full_training_epochs']} epochs on {t['n_train']} Fashion-MNIST training images; selection on "
                  f"{t['n_val']} validation images (A), independent score on {t['n_score_val']} others (B), probes "
                  f"evaluated on {t['n_probe_val']} unused training images (P). One full training takes "
                  f"{t['full_training_seconds']:.2f} s (median); budget {t['budget_seconds']:.1f} s = "
                  f"{t['budget_trainings']:g} full trainings. Best score in the table {t['best_score']:.4f}, median "
                  f"{t['median_score']:.4f}. Regret of selecting the best seed-0 value of the whole pool (the floor "
                  f"for any method that selects on A): {t['oracle_regret']:.4f}. Table cost {t['table_cpu_hours']:.2f} CPU hours.",
                  "", "### Wall-clock regret (mean [95% BCa CI])", ""] + regret_table(t, "seconds")
        if "epochs" in t["replay"]:
            lines += ["", "### Nominal cost (probe = fraction × epochs, meta-model free)", ""] + regret_table(t, "epochs")
        lines += ["", "### Probe feature families: measured cost and value", ""] + feature_table(t)
        nc = t["noise_ceiling"]
        lines += ["", "### Predicting final validation accuracy (held-out Spearman, mean [95% CI])", "",
                  "| fidelity | meta, all features | meta, default features | probe val acc alone | meta, top half | probe val acc, top half |",
                  "|---|---|---|---|---|---|"]
        for k, v in t["spearman"].items():
            lines.append(f"| {k} | {_fmt(v['meta'])} | {_fmt(v['meta_default_features'])} | {_fmt(v['probe_val_acc'])} | "
                         f"{_fmt(v['meta_top_half'])} | {_fmt(v['probe_val_acc_top_half'])} |")
        if nc.get("n", 0) >= 3:
            lines += ["", f"Noise ceiling (seed 0 vs seed 1 on A, {nc['n']} configurations): Spearman {_fmt(nc['spearman'])}, "
                      f"mean |Δacc| {nc['mean_abs_diff']:.4f} (top half {nc.get('mean_abs_diff_top_half', math.nan):.4f})."]
        lines.append("")
    lines += ["ERT = (Σ over seeds of min(time to target, budget)) / #successes, in median full trainings; "
              "the ratio's interval is a paired bootstrap over seeds, p a Wilcoxon signed-rank test on the censored times.", ""]
    lines += [f"![{n}](figures/{n}.png)\n" for n in figs]
    return "\n".join(lines) + "\n"


# --- the study --------------------------------------------------------------------------
def _cli_lines(s: dict, out) -> list[str]:
    lines = []
    for name, t in s["tables"].items():
        rep = t["replay"]["seconds"]["methods"]
        lines.append(f"table {name}: {t['size']} configurations, budget {t['budget_seconds']:.0f} s")
        for m in sorted(rep, key=lambda m: rep[m]["regret_at"]["1"][0]):
            r = rep[m]
            lines.append(f"  {m:<16s} regret at 25/50/100%: {r['regret_at']['0.25'][0]:.4f} "
                         f"{r['regret_at']['0.5'][0]:.4f} {r['regret_at']['1'][0]:.4f}; ERT to {s['target_regret']}: "
                         f"{_num(r['time_to_target']['ert'] / t['full_training_seconds'], 1)} full trainings "
                         f"({r['time_to_target']['success_rate']:.0%} reach it)")
    return lines + list(s["verdict"]) + [f"default method (measured): {s['default_method']['measured']}",
                                         f"wrote {out}/report.md ({s['seconds']:.0f} s)"]


STUDY = Study(
    name="search-benchmark",
    config=SearchBenchmarkConfig, stages=_stages, cli_lines=_cli_lines, prepare=lambda cfg: {"seeds": cfg.seeds},
    files=lambda cfg: {"--space file": cfg.space} if cfg.space else {},
    presets=(Preset("quick", QUICK, "a smoke run: one table of 16 configurations on 1500 images, 3 seeds"
                    " (keys set in --config, and flags, win over it)"),),
)


def run(out, config: SearchBenchmarkConfig | None = None, force: bool = False, progress: bool = True) -> dict:
    """Run the benchmark into directory `out` and return its summary dict."""
    return run_study(STUDY, out, config, force=force, progress=progress)
