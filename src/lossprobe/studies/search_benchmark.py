"""Search benchmark: does probe-based search beat random search, TPE and successive halving?

Stages (each saved as it finishes; rerunning the same command resumes):
    table         configurations drawn from the space, each fully trained (per-epoch curves;
                  a second seed for the first `n_repeat`) with probe features at every
                  fidelity; cached row by row in `table_dir` (default OUT/table), shareable
    correlations  held-out Spearman/Kendall of predicted vs true final val accuracy per
                  fidelity, with and without sharpness features, and the noise ceiling
    replay        every method × seed on the table: regret against budget
    report        summary.json, figures, report.md with the verdict

All accuracies are validation accuracies on a fixed seeded validation subset; the test
set is never read by this study (it compares selection, not generalisation).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import tomllib
from dataclasses import dataclass, field

import numpy as np

from .. import config as config_mod
from ..errors import UserError

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
channels = { type = "int", low = 4, high = 32, log = true }
depth = { type = "int", low = 1, high = 3 }
batchnorm = { type = "categorical", choices = [true, false] }
dropout = { type = "float", low = 0.0, high = 0.5 }
momentum = 0.9
width = 64
"""

# The two tables the benchmark reports side by side. Sized so that each builds in about
# 1-2.5 hours of one CPU core (every row is trained twice; see docs/search.md).
TABLES = {
    "mlp": {"space_toml": DEFAULT_SPACE_TOML, "size": 400, "fidelities": [[0.1, 1], [0.2, 2], [0.4, 2]],
            "n_train": 10_000, "n_val": 5_000, "n_score_val": 5_000, "n_probe_val": 2_000},
    "cnn": {"space_toml": CNN_SPACE_TOML, "size": 200, "fidelities": [[0.1, 1], [0.25, 2]],
            "n_train": 4_000, "n_val": 2_000, "n_score_val": 5_000, "n_probe_val": 1_000},
}


def table_config(name: str, size: int | None = None):
    """The `TableConfig` of one of the benchmark's tables ('mlp' or 'cnn')."""
    from ..search.space import SearchSpace
    from ..search.table import TableConfig

    if name not in TABLES:
        raise UserError(f"unknown benchmark table '{name}'; choose from {', '.join(TABLES)}")
    t = TABLES[name]
    space = SearchSpace.from_dict(tomllib.loads(t["space_toml"]), source=f"(built-in {name} space)")
    return TableConfig(space=space.to_dict(), size=size or t["size"], fidelities=[list(f) for f in t["fidelities"]],
                       n_train=t["n_train"], n_val=t["n_val"], n_score_val=t["n_score_val"],
                       n_probe_val=t["n_probe_val"])


@dataclass
class SearchBenchmarkConfig:
    space: str | None = None  # TOML file of the search space (default: examples/space.toml's space)
    size: int = 200  # configurations in the table
    n_repeat: int = 50  # of them trained with a second seed (noise ceiling)
    fidelities: list[list[float]] = field(default_factory=lambda: [[0.1, 1], [0.2, 2], [0.4, 2]])
    search_fidelity: int = 1  # index into fidelities used by the probe-based search
    n_train: int = 10_000
    n_val: int = 5_000
    data_seed: int = 0
    seeds: int = 10
    budget: float = 120.0  # full-data epoch equivalents (120 = 20 full trainings of 6 epochs)
    target_regret: float = 0.01
    n_fit: int = 30  # rows the meta-model is fitted on for the correlation analysis
    table_dir: str | None = None

    def __post_init__(self):
        if self.size < 8:
            raise UserError(f"size must be at least 8, got {self.size}")
        if not 0 <= self.n_repeat <= self.size:
            raise UserError(f"n_repeat must be in [0, size], got {self.n_repeat}")
        if not self.fidelities or any(len(f) != 2 or not 0 < f[0] <= 1 or f[1] < 1 or int(f[1]) != f[1]
                                      for f in self.fidelities):
            raise UserError(f"fidelities must be [fraction in (0, 1], epochs >= 1] pairs, got {self.fidelities}")
        if not 0 <= self.search_fidelity < len(self.fidelities):
            raise UserError(f"search_fidelity must index fidelities (0..{len(self.fidelities) - 1})")
        if self.seeds < 1 or self.budget <= 0 or not 2 <= self.n_fit < self.size:
            raise UserError("seeds >= 1, budget > 0 and 2 <= n_fit < size are required")


QUICK = {"size": 16, "n_repeat": 6, "fidelities": [[0.2, 1], [0.3, 2]], "n_train": 1500, "n_val": 800,
         "seeds": 3, "budget": 36.0, "n_fit": 8}


def _space(cfg: SearchBenchmarkConfig):
    from ..search.space import SearchSpace

    if cfg.space:
        return SearchSpace.from_toml(cfg.space)
    return SearchSpace.from_dict(tomllib.loads(DEFAULT_SPACE_TOML), source="(built-in default)")


def run(out, config: SearchBenchmarkConfig | None = None, force: bool = False, progress: bool = True) -> dict:
    from ..report.search_plots import plot_correlations, plot_regret
    from ..search.benchmark import (METHODS, ReplaySettings, bootstrap_ci, budget_to_regret, correlations,
                                    noise_ceiling, replay_all)
    from ..search.table import TableConfig, build_table
    from ..store import RunDir

    cfg = config or SearchBenchmarkConfig()
    t_start = time.perf_counter()
    space = _space(cfg)
    rd = RunDir(out, "search-benchmark", dataclasses.asdict(cfg), force=force, seeds={"seeds": cfg.seeds})
    tcfg = TableConfig(space=space.to_dict(), size=cfg.size, n_repeat=cfg.n_repeat,
                       fidelities=[[float(f), int(e)] for f, e in cfg.fidelities], n_train=cfg.n_train,
                       n_val=cfg.n_val, data_seed=cfg.data_seed)
    tdir = cfg.table_dir or str(rd / "table")
    if progress:
        print(f"table: {cfg.size} configurations in {tdir} (built once, reused)")
    rows = build_table(tdir, tcfg, progress=progress)
    if len(rows) < cfg.size:
        raise UserError(f"the table has {len(rows)} of {cfg.size} rows; rerun to finish it")
    rd.mark("table")
    keys = tcfg.keys()
    fid = keys[cfg.search_fidelity]
    y = np.array([r["full"]["val_accuracy"] for r in rows])

    if not rd.done("correlations"):
        if progress:
            print(f"correlations at fidelities {keys} over {cfg.seeds} seeds")
        corr = {}
        for k in keys:
            corr[k] = {"with": correlations(rows, k, cfg.n_fit, cfg.seeds),
                       "without": correlations(rows, k, cfg.n_fit, cfg.seeds, sharpness=False)}
        rd.save_json("correlations.json", {"per_fidelity": corr, "noise_ceiling": noise_ceiling(rows)})
        rd.mark("correlations")
    cj = rd.load_json("correlations.json")

    if not rd.done("replay"):
        rs = ReplaySettings(fid, cfg.budget, cfg.seeds, cfg.target_regret, methods=METHODS)
        rep = replay_all(rows, space, rs, progress=progress)
        rd.save_arrays("regret.npz", grid=rep["grid"], **{m: c for m, c in rep["curves"].items()})
        rd.save_json("chosen.json", {"chosen": rep["chosen"], "best": rep["best"], "floor": rep["floor"]})
        rd.mark("replay")
    arr = rd.load_arrays("regret.npz")
    grid = arr.pop("grid")
    curves = {m: arr[m] for m in METHODS if m in arr}

    # --- statistics -------------------------------------------------------------------
    def ci(v):
        return list(bootstrap_ci(v))

    spearman, kendall = {}, {}
    for k in keys:
        c = cj["per_fidelity"][k]
        spearman[k] = {"meta": ci(c["with"]["meta_spearman"]), "meta_no_sharpness": ci(c["without"]["meta_spearman"]),
                       "probe_val_acc": ci(c["with"]["probe_spearman"]),
                       "meta_top_half": ci(c["with"]["meta_spearman_top"]),
                       "probe_val_acc_top_half": ci(c["with"]["probe_spearman_top"])}
        kendall[k] = {"meta": ci(c["with"]["meta_kendall"]), "meta_no_sharpness": ci(c["without"]["meta_kendall"]),
                      "probe_val_acc": ci(c["with"]["probe_kendall"])}
    ceiling = cj["noise_ceiling"]
    regret_at_budget = {m: ci(c[:, -1]) for m, c in curves.items()}
    b2r = {}
    for m, c in curves.items():
        b = budget_to_regret(c, grid, cfg.target_regret)
        reached = np.isfinite(b)
        b2r[m] = {"mean": ci(np.where(reached, b, cfg.budget))[0] if reached.any() else None,
                  "interval": ci(np.where(reached, b, cfg.budget))[1:], "median": float(np.median(np.where(reached, b, np.inf))),
                  "reached": f"{int(reached.sum())}/{len(b)}"}
    half = int(np.searchsorted(grid, cfg.budget / 2 - 1e-9))
    regret_at_half = {m: ci(c[:, min(half, c.shape[1] - 1)]) for m, c in curves.items()}
    # anytime quality: regret averaged over the budget grid (area under the regret curve / budget)
    mean_regret = {m: ci(c.mean(1)) for m, c in curves.items()}
    base = {m: regret_at_budget[m][0] for m in ("random", "tpe", "sh", "hyperband") if m in regret_at_budget}
    best_base = min(base, key=lambda m: (base[m], mean_regret[m][0]))
    pm, bm = regret_at_budget["probe"], regret_at_budget[best_base]
    if pm[2] < bm[1]:
        verdict = f"probe-based search beats the best baseline ({best_base}) at the full budget: the 95% intervals do not overlap"
    elif abs(pm[0] - bm[0]) < 1e-9:
        verdict = f"probe-based search ties with the best baseline ({best_base}) at the full budget (mean regret {pm[0]:.4f})"
    elif pm[0] < bm[0]:
        verdict = (f"probe-based search has a lower mean regret than the best baseline ({best_base}) at the full budget "
                   f"({pm[0]:.4f} vs {bm[0]:.4f}), but the 95% intervals overlap: not a clear win")
    else:
        verdict = (f"probe-based search does NOT beat the best baseline ({best_base}) at the full budget "
                   f"(mean regret {pm[0]:.4f} vs {bm[0]:.4f})")
    verdict += (f"; averaged over budgets (anytime regret, which counts the budget spent before the first full "
                f"training ends) probe {mean_regret['probe'][0]:.4f} vs {best_base} {mean_regret[best_base][0]:.4f}")
    b_probe = b2r["probe"]
    fastest = min((m for m in base), key=lambda m: b2r[m]["mean"] if b2r[m]["mean"] is not None else np.inf)
    if b_probe["mean"] is not None and b2r[fastest]["mean"] is not None:
        verdict += (f"; to reach regret <= {cfg.target_regret} it needs {b_probe['mean']:.1f} epochs "
                    f"(reached {b_probe['reached']}) against {b2r[fastest]['mean']:.1f} for {fastest} "
                    f"(reached {b2r[fastest]['reached']})")
    meta_vs_rank = regret_at_budget["probe"][0] - regret_at_budget["probe-rank"][0]
    verdict += ("; the meta-model " + ("does not improve on" if meta_vs_rank >= -1e-9 else "improves on")
                + f" ranking candidates by probe validation accuracy alone (mean regret {regret_at_budget['probe'][0]:.4f} "
                f"vs {regret_at_budget['probe-rank'][0]:.4f}; budget to target {b_probe['mean'] or float('nan'):.1f} vs "
                f"{b2r['probe-rank']['mean'] or float('nan'):.1f})")
    sharp = regret_at_budget["probe"][0] - regret_at_budget["probe-no-sharpness"][0]
    fs = spearman[fid]
    sharp_verdict = (f"sharpness features change held-out Spearman at {fid} by {fs['meta'][0] - fs['meta_no_sharpness'][0]:+.3f} "
                     f"and mean regret at budget by {sharp:+.4f} (negative = they help)")

    title = f"Fashion-MNIST ({cfg.n_train} train / {cfg.n_val} val), {len(rows)} configurations, {cfg.seeds} seeds"
    figs = [plot_regret(grid, curves, rd.figures, title)]
    for stat, d in (("spearman", spearman), ("kendall", kendall)):
        figs.append(plot_correlations(keys, {k: d[k]["meta"] for k in keys}, {k: d[k]["probe_val_acc"] for k in keys},
                                      {k: d[k]["meta_no_sharpness"] for k in keys}, ceiling[stat], rd.figures, title, stat))
    from ..search.benchmark import wall_probe_cost

    wall_cost = {k: wall_probe_cost(rows, k, float(space.epochs)) for k in keys}
    seconds_table = float(sum(r["full"]["seconds"] + sum(p["seconds"] for p in r["probes"].values()) for r in rows))
    summary = {
        "study": "search-benchmark", "table_size": len(rows), "table_dir": tdir, "search_fidelity": fid,
        "budget": cfg.budget, "full_training_epochs": space.epochs, "seeds": cfg.seeds,
        "best_in_table": float(y.max()), "median_in_table": float(np.median(y)),
        "spearman": spearman, "kendall": kendall, "noise_ceiling": ceiling,
        "regret_at_budget": regret_at_budget, "regret_at_half_budget": regret_at_half,
        "mean_regret_over_budget": mean_regret,
        "budget_to_regret": b2r, "target_regret": cfg.target_regret,
        "verdict": verdict, "sharpness_ablation": sharp_verdict,
        "probe_cost_nominal": {k: float(rows[0]["probes"][k]["cost"]) for k in keys},
        "probe_cost_wall": wall_cost,
        "table_training_seconds": seconds_table, "seconds": time.perf_counter() - t_start,
    }
    rd.save_json("summary.json", summary)
    (rd / "report.md").write_text(_report(summary, keys, figs))
    rd.mark("report")
    rd.complete()
    return summary


def _fmt(v):
    return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"


def _report(s: dict, keys: list[str], figs: list[str]) -> str:
    lines = [f"# Search benchmark ({s['table_size']} configurations, {s['seeds']} seeds)", "",
             f"Budget {s['budget']:g} full-data epochs ({s['budget'] / s['full_training_epochs']:g} full trainings); "
             f"probe-based search probes at {s['search_fidelity']}. Best final val accuracy in the table "
             f"{s['best_in_table']:.4f}, median {s['median_in_table']:.4f}.", "",
             f"**Verdict:** {s['verdict']}.", "", f"**Sharpness ablation:** {s['sharpness_ablation']}.", "",
             "## Predicting final validation accuracy (held-out, mean [95% CI] over seeds)", "",
             "| fidelity | Spearman meta | Spearman meta w/o sharpness | Spearman probe val acc | Kendall meta | Kendall probe val acc "
             "| Spearman meta, top half | Spearman probe val acc, top half |",
             "|---|---|---|---|---|---|---|---|"]
    for k in keys:
        sp, kd = s["spearman"][k], s["kendall"][k]
        lines.append(f"| {k} | {_fmt(sp['meta'])} | {_fmt(sp['meta_no_sharpness'])} | {_fmt(sp['probe_val_acc'])} | "
                     f"{_fmt(kd['meta'])} | {_fmt(kd['probe_val_acc'])} | {_fmt(sp['meta_top_half'])} | "
                     f"{_fmt(sp['probe_val_acc_top_half'])} |")
    nc = s["noise_ceiling"]
    if nc.get("n", 0) >= 3:
        lines += ["", f"Noise ceiling (seed 0 vs seed 1 full training, {nc['n']} configurations): Spearman "
                  f"{_fmt(nc['spearman'])}, Kendall {_fmt(nc['kendall'])}, mean |Δacc| {nc['mean_abs_diff']:.4f}."]
    lines += ["", "Top half: Spearman among held-out configurations whose true accuracy is above the median, "
              "where a search must tell good from best."]
    lines += ["", "## Regret (best in table − chosen, validation accuracy), mean [95% CI] over seeds", "",
              f"| method | regret at budget {s['budget']:g} | regret at half budget | regret averaged over budgets | budget to regret ≤ {s['target_regret']} (mean [CI], reached) |",
              "|---|---|---|---|---|"]
    for m, v in s["regret_at_budget"].items():
        b = s["budget_to_regret"][m]
        bt = f"{b['mean']:.1f} [{b['interval'][0]:.1f}, {b['interval'][1]:.1f}], {b['reached']}" if b["mean"] is not None else f"never, {b['reached']}"
        lines.append(f"| {m} | {_fmt(v)} | {_fmt(s['regret_at_half_budget'][m])} | "
                     f"{_fmt(s['mean_regret_over_budget'][m])} | {bt} |")
    lines += ["", "Probe cost per fidelity, nominal (fraction × epochs) vs measured wall time in the same units: "
              + ", ".join(f"{k} {s['probe_cost_nominal'][k]:.2f} vs {s['probe_cost_wall'][k]:.2f}" for k in keys)
              + "; `probe-wall-cost` replays `probe` with the wall-time charge."]
    lines += ["", "Budget to regret counts seeds that never reach the target at the full budget as the full budget.",
              "Baselines on the table: suggestions of TPE/SH/Hyperband snap to the nearest untried row.", ""]
    lines += [f"![{n}](figures/{n}.png)\n" for n in figs]
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..cli.common import add_out, positive_int

    add_out(p, default="runs/search-benchmark")
    p.add_argument("--config", metavar="FILE.toml",
                   help="TOML file with any of: " + ", ".join(f.name for f in dataclasses.fields(SearchBenchmarkConfig)))
    p.add_argument("--space", metavar="TOML", help="search space (default: the space of examples/space.toml)")
    p.add_argument("--size", type=positive_int, help="configurations in the table (default: 200)")
    p.add_argument("--seeds", type=positive_int, help="replay seeds per method (default: 10)")
    p.add_argument("--budget", type=float, help="budget in full-data epoch equivalents (default: 120)")
    p.add_argument("--table-dir", metavar="DIR", help="where the table is cached (default: OUT/table); "
                   "share it between runs, it only grows")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 16 configurations on 1500 images, 3 seeds, budget 36")


def run_cli(args) -> int:
    overrides = dict(QUICK) if args.quick else {}
    flags = {"space": args.space, "size": args.size, "seeds": args.seeds, "budget": args.budget,
             "table_dir": args.table_dir}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    cfg = config_mod.load(SearchBenchmarkConfig, args.config, overrides)
    s = run(args.out, cfg, force=args.force)
    fid = s["search_fidelity"]
    print(f"table of {s['table_size']} configurations; Spearman at {fid}: meta {s['spearman'][fid]['meta'][0]:.3f}, "
          f"probe val acc {s['spearman'][fid]['probe_val_acc'][0]:.3f}, ceiling {s['noise_ceiling']['spearman'][0]:.3f}")
    for m, v in s["regret_at_budget"].items():
        print(f"  regret at budget {s['budget']:g}: {m:<20s} {_fmt(v)}")
    print(s["verdict"])
    print(f"wrote {args.out}/report.md ({s['seconds']:.0f} s)")
    return 0
