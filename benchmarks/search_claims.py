"""Issue 26: tune every search method on the development tables, then evaluate the tuned methods on
fresh tables that were used for no choice, and report as an HPO reviewer asks.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/search_claims.py tune \
        --table-dir runs/search-tables --out runs/search-claims
    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/search_claims.py evaluate \
        --table-dir runs/search-tables --out runs/search-claims

Tables (built by benchmarks/build_search_tables.py): mlp-dev, cnn-dev (tuning), mlp-fresh1..3,
cnn-fresh1..3 and mlp-live (evaluation). Every replay (one method setting × seed on one table)
is cached in OUT/replays/TABLE/METHOD/SETTING.json, so a killed run resumes. `tune` writes
OUT/tuning.json (every setting's ERT at each target on each development table, and the
winner per method); `evaluate` reads the winners and writes OUT/evaluation.json and
OUT/evaluation.md (tables per target with qualifying counts, success rates, time to target
over successful seeds, Kaplan–Meier medians, paired comparisons with intervals across
tables) and OUT/figures/anytime_regret_*.png. Prints one JSON line at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import sys
import time
from pathlib import Path

BUDGET = 20.0  # full trainings (median CPU seconds of one full training in the table)
DEV = ("mlp-dev", "cnn-dev")
FRESH = {"mlp": ("mlp-fresh1", "mlp-fresh2", "mlp-fresh3"), "cnn": ("cnn-fresh1", "cnn-fresh2", "cnn-fresh3"),
         "mlp-live": ("mlp-live",), "spiral": ("spiral-fresh1", "spiral-fresh2", "spiral-fresh3"),
         "digits": ("digits-fresh1", "digits-fresh2", "digits-fresh3")}
LIVE = ("mlp-live",)
# groups pooling several families (times are in full trainings of each table, so tables pool)
POOLED = {"mlp+cnn": ("mlp", "cnn")}


def grid(**axes) -> list[dict]:
    keys = list(axes)
    return [dict(zip(keys, v)) for v in itertools.product(*(axes[k] for k in keys))]


RUNGS = ("probe,full", "probe,full@auto,full")
# every method's free settings (issue 26: eta, initial pool, promotion rule, TPE start-up), tried on the
# development tables only; seeds per setting (the slow meta-model and TPE replays get fewer)
GRIDS = {
    "random": ([{}], 100),
    "tpe": (grid(n_startup=[5, 10, 20]), 40),
    "bohb": (grid(eta=[3, 6], n_startup=[5, 10]), 40),
    "sh": (grid(eta=[3, 6]), 100),
    "hyperband": (grid(eta=[3, 6]), 100),
    "asha": (grid(eta=[3, 6]), 60),
    "lce": (grid(min_epochs=[2]), 100),
    "sh-probe": (grid(rungs=RUNGS, eta=[3, 6, 9], n0=[1, 2]), 100),  # brackets of n0 × eta^(rungs-1) candidates
    "asha-probe": (grid(rungs=RUNGS, eta=[3, 6, 9], init=[0, 12], rule=["asha", "quota"]), 100),
    "hyperband-probe": (grid(rungs=RUNGS, eta=[3, 6, 9]), 100),
    "probe-rank": (grid(init_probes=[6, 12, 24], probes_per_round=[3, 6, 9]), 100),
    "probe": (grid(kappa=[0.0, 1.0]), 30),
    "mf": (grid(eta=[3, 6, 9], propose=[0, 16]), 30),
}
PROBE_METHODS = ("sh-probe", "asha-probe", "hyperband-probe", "probe-rank", "probe", "mf")


def key_of(opts: dict) -> str:
    return json.dumps(opts, sort_keys=True)


def fname(opts: dict) -> str:
    return hashlib.sha1(key_of(opts).encode()).hexdigest()[:12] + ".json"


def resolve(method: str, opts: dict, rows, fid: str) -> dict:
    """The options a replay gets: the probe fidelity for probe methods; sh-probe's n0 as a multiple."""
    o = dict(opts)
    if method in PROBE_METHODS:
        o["fidelity"] = fid
    if method == "sh-probe" and "n0" in o:  # n0 is given as a multiple of eta^(rungs-1)
        from lossprobe.search.methods import parse_rungs

        R = len(parse_rungs(o["rungs"], len(rows[0]["full"]["val_curve"]) - 1, fid, o["eta"]))
        o["n0"] = o["n0"] * o["eta"] ** (R - 1)
    return o


MIN_ROWS = 20  # a table with fewer rows built is not used


def available(table_dir, names) -> list[str]:
    """The tables of `names` that exist with at least MIN_ROWS rows built."""
    d = Path(table_dir)
    return [n for n in names if (d / n / "table_config.json").is_file()
            and len(list((d / n / "rows").glob("*.json"))) >= MIN_ROWS]


class Tables:
    def __init__(self, table_dir):
        self.dir = Path(table_dir)
        self.cache = {}

    def get(self, name):
        if name not in self.cache:
            from lossprobe.search.space import SearchSpace
            from lossprobe.search.table import load_rows

            cfg = json.loads((self.dir / name / "table_config.json").read_text())
            rows = load_rows(self.dir / name, cfg["size"])
            if len(rows) < min(cfg["size"], MIN_ROWS):
                raise SystemExit(f"table {name} has {len(rows)} of {cfg['size']} rows; build it first")
            # a table whose build stopped early is a smaller random sample (rows are built in id order):
            # it is used as it is and reported as partial
            cfg = {**cfg, "rows_built": len(rows), "partial": len(rows) < cfg["size"]}
            space = SearchSpace.from_dict(cfg["space"])
            fid = next(iter(rows[0]["probes"]))
            self.cache[name] = (rows, space, fid, cfg)
        return self.cache[name]


def runs_for(out: Path, tables: Tables, name: str, method: str, opts: dict, seeds: int, log) -> dict:
    from lossprobe.search.evaluation import replay_runs

    rows, space, fid, _ = tables.get(name)
    f = out / "replays" / f"{name}@{len(rows)}" / method / fname(opts)  # a table may grow: its size is in the path
    if f.is_file():
        r = json.loads(f.read_text())
        if len(r["seeds"]) >= seeds:
            return r
    t0 = time.process_time()
    r = replay_runs(rows, space, method, resolve(method, opts, rows, fid), range(seeds), BUDGET)
    r["options"] = opts
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps(r))
    tmp.replace(f)
    log(f"{name} {method} {key_of(opts)}: {seeds} seeds in {time.process_time() - t0:.0f} CPU s")
    return r


def summarize_runs(runs: dict, targets) -> dict:
    from lossprobe.search.evaluation import anytime_regret, final_regret, target_summary, times_to

    return {"targets": {f"{t:g}": target_summary(times_to(runs, t), BUDGET) for t in targets},
            "anytime_regret": float(anytime_regret(runs).mean()), "final_regret": float(final_regret(runs).mean()),
            "seeds": len(runs["seeds"]), "spent": runs["spent"], "replay_seconds": runs["replay_seconds"]}


def tuning_score(per_table: dict) -> tuple:
    """Geometric mean over the development tables of the ERT at 1 point (a table without a success
    counts its censored time over half a success), then the mean anytime regret."""
    logs = []
    for s in per_table.values():
        t = s["targets"]["0.01"]
        e = t["ert"]
        if not math.isfinite(e):
            e = BUDGET * t["n"] / 0.5
        logs.append(math.log(e))
    return (math.exp(sum(logs) / len(logs)), sum(s["anytime_regret"] for s in per_table.values()) / len(per_table))


def cmd_tune(args, log) -> dict:
    from lossprobe.search.evaluation import TARGETS

    out, tables = Path(args.out), Tables(args.table_dir)
    methods = args.methods or list(GRIDS)
    res = {"budget_trainings": BUDGET, "tables": list(DEV), "criterion": "geometric mean over the development "
           "tables of the ERT to 1 point of regret (full trainings); ties: mean anytime regret", "methods": {}}
    dev = [t for t in DEV if not args.tables or t in args.tables]  # --tables: pre-compute one table's replays
    for m in methods:
        settings, seeds = GRIDS[m]
        seeds = min(seeds, args.max_seeds) if args.max_seeds else seeds
        rows = []
        for opts in settings:
            per = {name: summarize_runs(runs_for(out, tables, name, m, opts, seeds, log), TARGETS) for name in dev}
            score = tuning_score(per)
            rows.append({"options": opts, "score": score[0], "anytime": score[1], "per_table": per})
        rows.sort(key=lambda r: (r["score"], r["anytime"]))
        res["methods"][m] = {"seeds": seeds, "settings": rows, "best": rows[0]["options"]}
        log(f"tuned {m}: best {key_of(rows[0]['options'])} (score {rows[0]['score']:.2f})")
        if dev == list(DEV):
            _write(out / "tuning.json", res)
    if dev == list(DEV):
        (out / "tuning.md").write_text(tuning_markdown(res))
    return res


def tuning_markdown(res: dict) -> str:
    """The tuning log: per method the settings tried, seeds, and each setting's ERT to 1 point on the two
    development tables (full trainings) with its success rate, best first."""
    lines = ["| method | settings tried | seeds | chosen | ERT to 1 point, mlp-dev / cnn-dev (success) | "
             "runner-up (ERT mlp-dev / cnn-dev) |", "|---|---|---|---|---|---|"]

    def show(o):
        return ", ".join(f"{k}={v}" for k, v in sorted(o.items())) or "—"

    def erts(r):
        t = [r["per_table"][n]["targets"]["0.01"] for n in DEV]
        return " / ".join(f"{x['ert']:.1f}" if math.isfinite(x["ert"]) else "∞" for x in t), \
            " / ".join(f"{x['success_rate']:.0%}" for x in t)
    for m, r in res["methods"].items():
        st = r["settings"]
        keys = sorted({k for x in st for k in x["options"]})
        tried = "; ".join(f"{k} ∈ {{{', '.join(str(v) for v in sorted({x['options'][k] for x in st}, key=str))}}}"
                          for k in keys) or "none"
        e, sr = erts(st[0])
        ru = f"{show(st[1]['options'])} ({erts(st[1])[0]})" if len(st) > 1 else "—"
        lines.append(f"| `{m}` | {tried} ({len(st)}) | {r['seeds']} | {show(st[0]['options'])} | {e} ({sr}) | {ru} |")
    return "\n".join(lines) + "\n"


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_jsonable))
    tmp.replace(path)


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    raise TypeError(type(x))


# --- evaluation on the fresh tables -------------------------------------------------------------

# the settings the tables were first benchmarked with, to check the earlier claim on fresh tables
SHIPPED = {"sh-probe@shipped": ("sh-probe", {"rungs": "probe,full@3,full", "eta": 3, "n0": 1},
                                 {"cnn": {"rungs": "probe,full"}}),
           "probe-rank@shipped": ("probe-rank", {"init_probes": 12, "probes_per_round": 6}, {})}
# matched schedules: probe-rank trains the best untrained probe after init_probes probes and after every
# probes_per_round more; ASHA with the quota rule over [probe, full] trains the best unpromoted probe
# whenever the promotions fall below 1/eta of the probes. probe-rank(9, 9) is asha-probe(eta 9, quota)
# exactly (up to the draw order); asha-probe(eta 9, quota, init 24) is the nearest ASHA to probe-rank(24, 9)
MATCHED = {"probe-rank@9/9": ("probe-rank", {"init_probes": 9, "probes_per_round": 9}, {}),
           "asha-probe@init24": ("asha-probe", {"rungs": "probe,full", "eta": 9, "init": 24, "rule": "quota"}, {})}
MATCHED_PAIRS = (("probe-rank@9/9", "asha-probe", "identical schedule: 1 full training per 9 probes"),
                 ("probe-rank", "asha-probe@init24", "probe-rank(24, 9) vs the nearest ASHA (eta 9, quota, 24 first)"),
                 ("probe-rank", "asha-probe", "both as tuned on the development tables"),
                 ("probe-rank", "sh-probe", "both as tuned (sh-probe: brackets of 18 probes, 2 trained)"),
                 ("probe-rank@shipped", "sh-probe@shipped", "the earlier claim's two settings"))
EVAL_SEEDS = {"tpe": 60, "bohb": 60, "probe": 40, "mf": 40}  # slow replays get fewer seeds; others 100
TARGET_NAMES = {"0.005": "0.5 point", "0.01": "1 point", "0.02": "2 points", "0.03": "3 points"}


def evaluated(tuning: dict) -> dict:
    """name -> (method, options per family) of every evaluated entry: each method at its tuned
    setting, and the two shipped settings of the earlier claim."""
    out = {m: (m, {"mlp": r["best"], "cnn": r["best"]}) for m, r in tuning["methods"].items()}
    for name, (m, opts, per) in {**SHIPPED, **MATCHED}.items():
        out[name] = (m, {f: {**opts, **per.get(f, {})} for f in ("mlp", "cnn")})
    return out


def family(table: str) -> str:
    return table.split("-")[0]


def cmd_evaluate(args, log) -> dict:
    import numpy as np

    from lossprobe.search.evaluation import (
        TARGETS, anytime_regret, pooled_difference, pooled_ratio, qualifying, target_summary, times_to,
    )

    out, tables = Path(args.out), Tables(args.table_dir)
    tuning = json.loads((out / "tuning.json").read_text())
    entries = evaluated(tuning)
    if args.methods:
        entries = {k: v for k, v in entries.items() if k in args.methods or v[0] in args.methods}
    groups = {g: available(args.table_dir, FRESH[g]) for g in args.groups}
    if args.tables:
        groups = {g: [t for t in ts if t in args.tables] for g, ts in groups.items()}
    groups = {g: ts for g, ts in groups.items() if ts}
    for g, parts in POOLED.items():
        if len([p for p in parts if p in groups]) > 1:
            groups[g] = [t for p in parts if p in groups for t in groups[p]]
    runs = {}
    for g, names in groups.items():
        if g in POOLED:
            continue  # its tables' runs are its families'
        for name in names:
            for e, (m, per) in entries.items():
                seeds = min(EVAL_SEEDS.get(m, 100), args.max_seeds or 10**9)
                runs[(name, e)] = runs_for(out, tables, name, m, per.get(family(name), per["mlp"]), seeds, log)
    reference = args.reference
    res = {"budget_trainings": BUDGET, "reference": reference, "groups": {}, "tables": {}}
    for g, names in groups.items():
        G = {"tables": names, "qualifying": {}, "methods": {}, "vs_reference": {}}
        for name in names:
            rows, space, _, cfg = tables.get(name)
            q = qualifying(rows, space, range(100), targets=TARGETS)
            unit = runs[(name, next(iter(entries)))]["unit_seconds"]
            ys = [r["repeat"]["score_accuracy"] for r in rows]
            res["tables"][name] = {"rows": len(rows), "partial": cfg["partial"], "size_planned": cfg["size"],
                                   "unit_seconds": unit, "best_score": max(ys),
                                   "median_score": float(np.median(ys)), "n_train": cfg["n_train"],
                                   "qualifying": {t: [float(np.mean(v)), int(min(v)), int(max(v))] for t, v in q.items()},
                                   "cpu_hours": sum(r["full"]["cpu_seconds"] + r["repeat"]["cpu_seconds"]
                                                    + sum(sum(p["cpu"].values()) for p in r["probes"].values())
                                                    for r in rows) / 3600}
            for t, v in q.items():
                G["qualifying"].setdefault(t, []).extend(v)
        G["qualifying"] = {t: [float(np.mean(v)), int(min(v)), int(max(v))] for t, v in G["qualifying"].items()}
        for e in entries:
            rr = [runs[(n, e)] for n in names]
            G["methods"][e] = {
                "targets": {f"{t:g}": target_summary(np.concatenate([times_to(r, t) for r in rr]), BUDGET)
                            for t in TARGETS},
                "per_table_ert_1pt": [target_summary(times_to(r, 0.01), BUDGET)["ert"] for r in rr],
                "anytime_regret": float(np.mean(np.concatenate([anytime_regret(r) for r in rr]))),
                "final_regret": float(np.mean([np.mean(_final(r)) for r in rr])),
                # full trainings of budget spent, mean over seeds and tables: below the budget when a method
                # stopped because the table's pool had no untried candidate left (SH, Hyperband, TPE...)
                "budget_used": float(np.mean([sum(r["spent"].values()) for r in rr])),
                "seeds": [len(r["seeds"]) for r in rr]}
        if reference in entries:
            for e in entries:
                if e == reference:
                    continue
                comp = {}
                for t in TARGETS:
                    ta, tb = [], []
                    for n in names:
                        a, b = runs[(n, e)], runs[(n, reference)]
                        k = min(len(a["seeds"]), len(b["seeds"]))  # paired: the same seeds (pools)
                        ta.append(times_to(a, t)[:k])
                        tb.append(times_to(b, t)[:k])
                    comp[f"{t:g}"] = pooled_ratio(ta, tb, BUDGET)
                av, bv = [], []
                for n in names:
                    a, b = runs[(n, e)], runs[(n, reference)]
                    k = min(len(a["seeds"]), len(b["seeds"]))
                    av.append(anytime_regret(a)[:k])
                    bv.append(anytime_regret(b)[:k])
                comp["anytime_regret_difference"] = pooled_difference(av, bv)
                G["vs_reference"][e] = comp
        G["matched"] = []
        for a_, b_, what in MATCHED_PAIRS:
            if a_ not in entries or b_ not in entries:
                continue
            comp = {"a": a_, "b": b_, "what": what}
            for t in TARGETS:
                ta, tb = [], []
                for n in names:
                    a, b = runs[(n, a_)], runs[(n, b_)]
                    k = min(len(a["seeds"]), len(b["seeds"]))
                    ta.append(times_to(a, t)[:k])
                    tb.append(times_to(b, t)[:k])
                comp[f"{t:g}"] = pooled_ratio(ta, tb, BUDGET)
            G["matched"].append(comp)
        res["groups"][g] = G
        log(f"evaluated {g}: {len(entries)} methods on {names}")
    tag = f"-{args.tag}" if args.tag else ""
    _write(out / f"evaluation{tag}.json", res)
    (out / f"evaluation{tag}.md").write_text(evaluation_markdown(res, entries))
    _figures(out, groups, entries, runs)
    return res


def summary_line(res: dict) -> dict:
    """The benchmark's one JSON line: per group the tables, qualifying configurations per pool, and
    for the headline methods the ERT / success at 1 point and the ratios against the reference."""
    def num(x, d=2):
        return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else round(x, d)
    out = {"benchmark": "search-claims", "budget_trainings": BUDGET, "reference": res["reference"], "groups": {}}
    for g, G in res["groups"].items():
        row = {"tables": {n: res["tables"][n]["rows"] for n in G["tables"]},
               "qualifying_mean": {k: round(v[0], 1) for k, v in G["qualifying"].items()}, "methods": {}}
        for e, m in G["methods"].items():
            t = m["targets"]
            row["methods"][e] = {"budget_used": num(m.get("budget_used"), 1),
                                 "ert": {k: num(v["ert"], 1) for k, v in t.items()},
                                 "success": {k: round(v["success_rate"], 2) for k, v in t.items()}}
            c = G["vs_reference"].get(e)
            if c:
                row["methods"][e]["ratio_1pt"] = [num(c["0.01"]["ratio"]), num(c["0.01"]["interval"][0]),
                                                  num(c["0.01"]["interval"][1])]
        row["matched_1pt"] = {f"{c['a']} / {c['b']}": [num(c["0.01"]["ratio"]), num(c["0.01"]["interval"][0]),
                                                       num(c["0.01"]["interval"][1])] for c in G["matched"]}
        out["groups"][g] = row
    return out


def _final(r):
    from lossprobe.search.evaluation import final_regret

    return final_regret(r)


def _fmt_ert(s: dict) -> str:
    e = s["ert"]
    return "∞" if not math.isfinite(e) else f"{e:.1f}"


def _fmt_ratio(c: dict) -> str:
    r, (lo, hi) = c["ratio"], c["interval"]

    def f(x):
        return "∞" if x is not None and isinstance(x, float) and math.isinf(x) else ("—" if x != x else f"{x:.2f}")
    return f"{f(r)} [{f(lo)}, {f(hi)}]"


def evaluation_markdown(res: dict, entries: dict) -> str:
    lines = [f"# Search methods on the fresh tables (budget {BUDGET:g} full trainings)", ""]
    for name, t in res["tables"].items():
        q = t["qualifying"]
        part = f" (partial: {t['rows']} of {t['size_planned']} planned)" if t.get("partial") else ""
        lines.append(f"- `{name}`: {t['rows']} configurations{part} ({t['n_train']} training images), one full "
                     f"training {t['unit_seconds']:.2f} CPU s (median), best score {t['best_score']:.4f}, median "
                     f"{t['median_score']:.4f}; qualifying per pool (mean [min–max]) at 0.5/1/2/3 points: "
                     + ", ".join(f"{q[k][0]:.1f} [{q[k][1]}–{q[k][2]}]" for k in ("0.005", "0.01", "0.02", "0.03"))
                     + f"; built in {t['cpu_hours']:.2f} CPU h")
    lines.append("")
    ref = res["reference"]
    for g, G in res["groups"].items():
        lines += [f"## {g}: {', '.join(G['tables'])}", ""]
        for tk, tname in TARGET_NAMES.items():
            q = G["qualifying"][tk]
            lines += [f"### {g}, target: regret ≤ {tname} (qualifying configurations per pool: mean {q[0]:.1f}, "
                      f"min {q[1]}, max {q[2]})", "",
                      f"| method | ERT [95%] | success | time if reached (mean) | KM median | ERT ratio vs `{ref}` "
                      "[95%, tables and seeds resampled] | per table |", "|---|---|---|---|---|---|---|"]
            for e in sorted(entries, key=lambda e: G["methods"][e]["targets"][tk]["ert"]):
                s = G["methods"][e]["targets"][tk]
                lo, hi = s["ert_interval"]
                ci = f" [{lo:.1f}, {'∞' if math.isinf(hi) else f'{hi:.1f}'}]" if math.isfinite(s["ert"]) else ""
                km = "—" if math.isinf(s["km_median"]) else f"{s['km_median']:.1f}"
                sm = "—" if s["successful_mean"] != s["successful_mean"] else f"{s['successful_mean']:.1f}"
                comp = G["vs_reference"].get(e, {}).get(tk)
                per = ", ".join("—" if x != x else ("∞" if math.isinf(x) else f"{x:.2f}") for x in comp["per_table"]) \
                    if comp else ""
                lines.append(f"| {e} | {_fmt_ert(s)}{ci} | {s['success_rate']:.0%} | {sm} | {km} | "
                             f"{_fmt_ratio(comp) if comp else '(reference)'} | {per} |")
            lines.append("")
        if G.get("matched"):
            lines += [f"### {g}: matched schedules (ERT ratio a / b, 95% with tables and seeds resampled)", "",
                      "| a | b | what | 0.5 point | 1 point | 2 points | 3 points |", "|---|---|---|---|---|---|---|"]
            for c in G["matched"]:
                lines.append(f"| {c['a']} | {c['b']} | {c['what']} | "
                             + " | ".join(_fmt_ratio(c[k]) for k in TARGET_NAMES) + " |")
            lines.append("")
        lines += [f"### {g}: anytime regret (mean over the budget) and final regret", "",
                  f"| method | anytime | Δ vs `{ref}` [95%] | final | budget used (of {BUDGET:g}) |",
                  "|---|---|---|---|---|"]
        for e in entries:
            m = G["methods"][e]
            d = G["vs_reference"].get(e, {}).get("anytime_regret_difference")
            ds = f"{d['mean']:+.4f} [{d['interval'][0]:+.4f}, {d['interval'][1]:+.4f}]" if d else "(reference)"
            lines.append(f"| {e} | {m['anytime_regret']:.4f} | {ds} | {m['final_regret']:.4f} | "
                         f"{m.get('budget_used', math.nan):.1f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _figures(out: Path, groups: dict, entries: dict, runs: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from lossprobe.search.evaluation import regret_curves

    grid = np.linspace(0.1, BUDGET, 200)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for g, names in groups.items():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        colors = plt.get_cmap("tab20")
        for i, e in enumerate(entries):
            c = np.concatenate([regret_curves(runs[(n, e)], grid) for n in names])
            ax.plot(grid, c.mean(0), label=e, lw=2 if e in ("asha-probe", "probe-rank", "sh-probe") else 1,
                    ls="-" if "@" not in e else "--", color=colors(i % 20))
        ax.set_yscale("log")
        ax.set_xlabel("budget spent (full trainings of CPU time)")
        ax.set_ylabel("mean regret (accuracy)")
        ax.set_title(f"anytime regret, fresh {g} tables\n({', '.join(names)})", fontsize=9)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(out / "figures" / f"anytime_regret_{g}.png", dpi=110)
        plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("tune", "evaluate"))
    p.add_argument("--table-dir", default="runs/search-tables")
    p.add_argument("--out", default="runs/search-claims")
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--max-seeds", type=int, default=None, help="cap the seeds per setting (a quick look)")
    p.add_argument("--tables", nargs="+", default=None, help="only these tables (tune: pre-compute the replays of one development table)")
    p.add_argument("--reference", default="asha-probe", help="evaluate: the method every other is compared with")
    p.add_argument("--groups", nargs="+", default=["mlp", "cnn", "mlp-live"], choices=list(FRESH),
                   help="evaluate: the families of fresh tables (those built with at least 20 rows are used)")
    p.add_argument("--tag", default="", help="evaluate: suffix of the output files (evaluation-TAG.json)")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    logf = Path(args.out) / f"{args.command}.log"
    logf.parent.mkdir(parents=True, exist_ok=True)

    def log(msg):
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        with open(logf, "a") as fh:
            fh.write(line + "\n")

    t0 = time.process_time()
    if args.command == "tune":
        res = cmd_tune(args, log)
        print(json.dumps({"benchmark": "search-claims", "command": "tune", "cpu_seconds": round(time.process_time() - t0),
                          "best": {m: r["best"] for m, r in res["methods"].items()}}), flush=True)
    else:
        res = cmd_evaluate(args, log)
        print(json.dumps({**summary_line(res), "command": "evaluate", "cpu_seconds": round(time.process_time() - t0)}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
