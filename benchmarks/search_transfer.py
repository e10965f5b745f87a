"""Issue 26, transfer measured: a meta-model trained on the probes and learning curves of *other* tasks'
tables ranks a new task's candidates inside ASHA-with-probe, zero-shot or warm-started, evaluated
leave-one-task-out on the fresh tables of four tasks (Fashion-MNIST MLP and CNN, the spiral set,
scikit-learn's digits), against the tuned ASHA-with-probe (raw probe ranking), the same ASHA with a
paused-training rung ranked by LC-PFN or by least-squares curve extrapolation, and the tuned
probe-rank and sh-probe.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/search_transfer.py \
        --table-dir runs/search-tables --out runs/search-claims [--lcpfn runs/search-claims/lcpfn.pt \
        --lcpfn-pkg runs/lcpfn_pkg]

Needs OUT/tuning.json (benchmarks/search_claims.py tune). The one free setting of the warm start
(`warm_full`: after how many finished trainings the new task's rows weigh as much as all the
others') is chosen on the development tables (mlp-dev, cnn-dev; sources: the other tasks'
development tables). Writes OUT/transfer.json and OUT/transfer.md; replays are cached in
OUT/replays/TABLE/transfer-*/; prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from search_claims import BUDGET, MIN_ROWS, Tables, _write, resolve  # noqa: E402  (the same folder)

TASKS = {"mlp": ("mlp-dev", "mlp-fresh1", "mlp-fresh2", "mlp-fresh3", "mlp-live"),
         "cnn": ("cnn-dev", "cnn-fresh1", "cnn-fresh2", "cnn-fresh3"),
         "spiral": ("spiral-dev", "spiral-fresh1", "spiral-fresh2", "spiral-fresh3"),
         "digits": ("digits-dev", "digits-fresh1", "digits-fresh2", "digits-fresh3")}
CHANCE = {"fashion-mnist": (0.1, 10), "digits": (0.1, 10), "spiral": (0.5, 2)}
SEEDS = 100


def task_of(table: str) -> str:
    return table.split("-")[0]


class Examples:
    def __init__(self, tables: Tables):
        self.tables, self.cache = tables, {}

    def get(self, name):
        from lossprobe.search.transfer import table_examples

        if name not in self.cache:
            rows, space, fid, cfg = self.tables.get(name)
            ch, nc = CHANCE[cfg.get("dataset", "fashion-mnist")]
            X, y, c = table_examples(rows, space, fid, ch, nc)
            self.cache[name] = (X, y, c, ch)
        return self.cache[name]


def lcpfn_extrapolator(path: str, pkg: str):
    """LC-PFN's predicted mean at epoch E from epochs 1..k, for a batch of curves."""
    import numpy as np
    import torch

    sys.path.insert(0, pkg)
    model = torch.load(path, weights_only=False)  # our own file (benchmarks/train_lcpfn.py): a pickled module
    model.eval()

    def f(curves, k, E):
        c = torch.as_tensor(np.asarray(curves, dtype=np.float32)[:, :k])  # [B, k]
        B = c.shape[0]
        x = torch.arange(1, k + 2, dtype=torch.float32)
        x[-1] = float(E)
        x = x[:, None, None].expand(k + 1, B, 1).contiguous()
        y = c.T.contiguous()  # [k, B]
        with torch.no_grad():
            logits = model((x, y), single_eval_pos=k)  # [1, B, buckets]
            return model.criterion.mean(logits)[0].numpy()
    return f


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table-dir", default="runs/search-tables")
    p.add_argument("--out", default="runs/search-claims")
    p.add_argument("--lcpfn", default=None)
    p.add_argument("--lcpfn-pkg", default="runs/lcpfn_pkg")
    p.add_argument("--seeds", type=int, default=SEEDS)
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    args = p.parse_args(argv)

    import numpy as np
    import torch
    from scipy import stats

    torch.set_num_threads(1)
    from lossprobe.search.evaluation import (
        TARGETS, anytime_regret, pooled_difference, pooled_ratio, replay_runs, target_summary, times_to,
    )
    from lossprobe.search.transfer import CurveScorer, TransferModel, TransferScorer, least_squares_extrapolate

    out, tables = Path(args.out), Tables(args.table_dir)
    ex = Examples(tables)
    tuning = json.loads((out / "tuning.json").read_text())
    best = {m: r["best"] for m, r in tuning["methods"].items()}
    asha_opts = dict(best["asha-probe"])
    # the curve extrapolators rank a paused full training: the best tuned ASHA-with-probe setting that has one
    curve_opts = next(r["options"] for r in tuning["methods"]["asha-probe"]["settings"]
                      if r["options"]["rungs"] == "probe,full@auto,full")
    logf = out / "transfer.log"

    def log(msg):
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        with open(logf, "a") as fh:
            fh.write(line + "\n")

    lcpfn = lcpfn_extrapolator(args.lcpfn, args.lcpfn_pkg) if args.lcpfn else None

    def complete(n) -> bool:
        """Usable: built with at least MIN_ROWS rows (a table whose build stopped early is a smaller random
        sample, used as it is; its size is in transfer.json)."""
        f = tables.dir / n / "table_config.json"
        return f.is_file() and len(list((tables.dir / n / "rows").glob("*.json"))) >= MIN_ROWS

    def sources_for(task: str, dev_only: bool) -> list:
        names = [t for k, ts in TASKS.items() if k != task for t in ts if not dev_only or t.endswith("-dev")]
        missing = [n for n in names if not complete(n)]
        if missing:
            log(f"sources for {task}: {', '.join(missing)} not complete, left out")
        return [ex.get(n) for n in names if complete(n)]

    def chance_of(name):
        return CHANCE[tables.get(name)[3].get("dataset", "fashion-mnist")]

    def variants(name: str, dev_only: bool, warm_full: int) -> dict:
        rows, space, fid, cfg = tables.get(name)
        ch, nc = chance_of(name)
        src = sources_for(task_of(name), dev_only)
        out_ = {
            "asha-probe": ("asha-probe", resolve("asha-probe", asha_opts, rows, fid)),
            "asha-probe + transfer (zero-shot)": ("asha-probe", {**resolve("asha-probe", asha_opts, rows, fid),
                "scorer_factory": lambda: TransferScorer(src, ch, nc, space, warm=False)}),
            "asha-probe + transfer (warm)": ("asha-probe", {**resolve("asha-probe", asha_opts, rows, fid),
                "scorer_factory": lambda: TransferScorer(src, ch, nc, space, warm=True, warm_full=warm_full)}),
            "asha-probe [probe, full@k, full]": ("asha-probe", resolve("asha-probe", curve_opts, rows, fid)),
            "asha-probe [probe, full@k, full] + least squares": ("asha-probe", {
                **resolve("asha-probe", curve_opts, rows, fid),
                "scorer_factory": lambda: CurveScorer(least_squares_extrapolate)}),
            "probe-rank": ("probe-rank", resolve("probe-rank", best["probe-rank"], rows, fid)),
            "sh-probe": ("sh-probe", resolve("sh-probe", best["sh-probe"], rows, fid)),
        }
        if lcpfn is not None:
            out_["asha-probe [probe, full@k, full] + LC-PFN"] = ("asha-probe", {
                **resolve("asha-probe", curve_opts, rows, fid), "scorer_factory": lambda: CurveScorer(lcpfn)})
        # the tuned paused rung is at epoch E/eta = 1, where a curve has one point and nothing can be
        # extrapolated; so also a pause at half the training (MLP 3 of 6 epochs, spiral/digits 5 of 10; the
        # CNN's 3 epochs give 1 again), ranked by its raw value, least squares and LC-PFN
        E = len(rows[0]["full"]["val_curve"]) - 1
        half = {**resolve("asha-probe", curve_opts, rows, fid), "rungs": f"probe,full@{max(1, E // 2)},full"}
        out_["asha-probe [probe, full@E/2, full]"] = ("asha-probe", dict(half))
        out_["asha-probe [probe, full@E/2, full] + least squares"] = ("asha-probe", {
            **half, "scorer_factory": lambda: CurveScorer(least_squares_extrapolate)})
        if lcpfn is not None:
            out_["asha-probe [probe, full@E/2, full] + LC-PFN"] = ("asha-probe", {
                **half, "scorer_factory": lambda: CurveScorer(lcpfn)})
        return out_

    def run(name, label, method, opts, seeds, tag=""):
        rows, space, fid, _ = tables.get(name)
        f = out / "replays" / f"{name}@{len(rows)}" / "transfer" / (label.replace(" ", "_").replace("/", "") + tag
                                                                    + ".json")
        if f.is_file():
            r = json.loads(f.read_text())
            if len(r["seeds"]) >= seeds:
                return r
        t0 = time.process_time()
        r = replay_runs(rows, space, method, opts, range(seeds), BUDGET)
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(r))
        log(f"{name} {label}{tag}: {seeds} seeds in {time.process_time() - t0:.0f} CPU s")
        return r

    res = {"budget_trainings": BUDGET, "asha_probe": asha_opts, "asha_probe_curve": curve_opts, "tuning_warm_full": {}, "spearman": {},
           "tasks": {}, "decision": None}
    # 1. the warm start's one setting, on the development tables only
    dev_scores = {}
    for wf in (5, 20):
        logs = []
        for name in ("mlp-dev", "cnn-dev"):
            lab = "asha-probe + transfer (warm)"
            m, o = variants(name, True, wf)[lab]
            r = run(name, lab, m, o, min(args.seeds, 60), tag=f"-dev-wf{wf}")
            e = target_summary(times_to(r, 0.01), BUDGET)
            logs.append(math.log(e["ert"] if math.isfinite(e["ert"]) else BUDGET * e["n"] / 0.5))
        dev_scores[wf] = math.exp(sum(logs) / len(logs))
    warm_full = min(dev_scores, key=dev_scores.get)
    res["tuning_warm_full"] = {"scores": dev_scores, "chosen": warm_full}
    log(f"warm_full chosen on the development tables: {warm_full} ({dev_scores})")

    # 2. zero-shot ranking quality on each fresh table (held out: the model never saw its task); cheap, so
    # for every task, also those whose replays were not asked for
    for task in TASKS:
        src = sources_for(task, False)
        Xs = [x for s in src for x in s[0]]
        ys = [v for s in src for v in s[1]]
        model = TransferModel().fit(Xs, ys)
        for name in TASKS[task][1:]:
            if not complete(name):
                continue
            X, y, _, _ = ex.get(name)
            pred = model.predict(X)
            raw = [x["p_val_acc"] for x in X]
            top = np.asarray(y) >= np.median(y)
            res["spearman"][name] = {
                "transfer": float(stats.spearmanr(pred, y).statistic), "probe": float(stats.spearmanr(raw, y).statistic),
                "transfer_top_half": float(stats.spearmanr(np.asarray(pred)[top], np.asarray(y)[top]).statistic),
                "probe_top_half": float(stats.spearmanr(np.asarray(raw)[top], np.asarray(y)[top]).statistic)}

    # 3. replays, leave-one-task-out, on the fresh tables
    allruns = {}
    for task in args.tasks:
        names = [n for n in TASKS[task][1:] if complete(n)]
        if not names:
            continue
        T = {"tables": names, "methods": {}, "vs_asha_probe": {}}
        for name in names:
            for label, (m, o) in variants(name, False, warm_full).items():
                allruns[(name, label)] = run(name, label, m, o, args.seeds)
        labels = list(variants(names[0], False, warm_full))
        for label in labels:
            rr = [allruns[(n, label)] for n in names]
            T["methods"][label] = {
                "targets": {f"{t:g}": target_summary(np.concatenate([times_to(r, t) for r in rr]), BUDGET)
                            for t in TARGETS},
                "anytime_regret": float(np.mean(np.concatenate([anytime_regret(r) for r in rr]))),
                "meta_share": float(np.mean([r["spent"]["meta"] for r in rr]))}
            if label != "asha-probe":
                T["vs_asha_probe"][label] = {
                    **{f"{t:g}": pooled_ratio([times_to(allruns[(n, label)], t) for n in names],
                                              [times_to(allruns[(n, "asha-probe")], t) for n in names], BUDGET)
                       for t in TARGETS},
                    "anytime": pooled_difference([anytime_regret(allruns[(n, label)]) for n in names],
                                                 [anytime_regret(allruns[(n, "asha-probe")]) for n in names])}
        T["rows"] = {n: len(tables.get(n)[0]) for n in names}
        T["partial"] = [n for n in names if tables.get(n)[3]["partial"]]
        res["tasks"][task] = T
        _write(out / "transfer.json", res)
    # 4. the decision: a transferred model becomes the default only if it beats the tuned ASHA-with-probe at
    # ERT to 1 point on the fresh MLP and CNN tables, with the interval across tables below 1
    fam = [t for t in ("mlp", "cnn") if t in res["tasks"]]
    if not fam:
        _write(out / "transfer.json", res)
        (out / "transfer.md").write_text(markdown(res))
        return 0
    dec = {}
    for label in ("asha-probe + transfer (zero-shot)", "asha-probe + transfer (warm)"):
        names = [n for t in fam for n in res["tasks"][t]["tables"]]
        c = pooled_ratio([times_to(allruns[(n, label)], 0.01) for n in names],
                         [times_to(allruns[(n, "asha-probe")], 0.01) for n in names], BUDGET)
        dec[label] = {**c, "beats": bool(c["interval"][1] < 1)}
    res["decision"] = {"tables": [n for t in fam for n in res["tasks"][t]["tables"]], "vs_asha_probe_1pt": dec,
                       "default_changes": any(d["beats"] for d in dec.values())}
    _write(out / "transfer.json", res)
    (out / "transfer.md").write_text(markdown(res))
    print(json.dumps({"benchmark": "search-transfer", "warm_full": warm_full, "decision": res["decision"]},
                     default=str), flush=True)
    return 0


def _r(c):
    def f(x):
        return "∞" if isinstance(x, float) and math.isinf(x) else ("—" if x != x else f"{x:.2f}")
    return f"{f(c['ratio'])} [{f(c['interval'][0])}, {f(c['interval'][1])}]"


def markdown(res: dict) -> str:
    lines = ["# Transfer across tasks (leave one task out, fresh tables)", ""]
    lines += ["| table | Spearman: transferred model (zero-shot) | probe accuracy | top half: model | top half: probe |",
              "|---|---|---|---|---|"]
    for n, s in res["spearman"].items():
        lines.append(f"| {n} | {s['transfer']:.3f} | {s['probe']:.3f} | {s['transfer_top_half']:.3f} | "
                     f"{s['probe_top_half']:.3f} |")
    for task, T in res["tasks"].items():
        rows = T.get("rows", {})
        part = set(T.get("partial", []))
        lines += ["", f"## {task} (" + ", ".join(f"{n}: {rows.get(n, '?')} configurations"
                                                  + (" (partial)" if n in part else "") for n in T["tables"]) + ")", "",
                  "| method | ERT 1 pt | success | ratio vs asha-probe at 1 pt [95% across tables] | ERT 2 pt | ratio at 2 pt "
                  "| anytime regret | Δ anytime vs asha-probe |", "|---|---|---|---|---|---|---|---|"]
        for label, m in T["methods"].items():
            c = T["vs_asha_probe"].get(label)
            e1, e2 = m["targets"]["0.01"], m["targets"]["0.02"]
            d = c["anytime"] if c else None
            lines.append(f"| {label} | {e1['ert']:.1f} | {e1['success_rate']:.0%} | {_r(c['0.01']) if c else '—'} | "
                         f"{e2['ert']:.1f} | {_r(c['0.02']) if c else '—'} | {m['anytime_regret']:.4f} | "
                         + (f"{d['mean']:+.4f} [{d['interval'][0]:+.4f}, {d['interval'][1]:+.4f}]" if d else "—") + " |")
    d = res["decision"]
    if d is None:
        return "\n".join(lines) + "\n"
    lines += ["", "Decision (ERT to 1 point on " + ", ".join(d["tables"]) + "): " + "; ".join(
        f"{k}: {_r(v)} → {'beats' if v['beats'] else 'does not beat'} asha-probe" for k, v in d["vs_asha_probe_1pt"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
