"""The connectivity stage of the two-seed study: beyond the straight line.

After the straight-line interpolation, three more paths between the same two networks:

* aligned: the straight line to B with its hidden units permuted to match A (weight
  matching, `lossprobe.align`);
* aligned + REPAIR: the same line with every point REPAIRed (`lossprobe.repair`),
  statistics measured on a seeded subset of the training split;
* curve: a quadratic Bezier curve between the original A and B, its bend trained for a
  short while with t ~ U(0, 1) per batch (`lossprobe.curves`).

Each path is evaluated at the α points of the study's grid that lie in [0, 1] on the same
train and test data as the straight line, so the four barriers compare like with like.
The stage is saved as it finishes ('connectivity' in status.json) and its curve training
resumes per epoch. Its functions take the study's `Context` (lossprobe.studies.base): the
configuration, the data and the α grid come from there, the straight line from the caller.
"""

from __future__ import annotations

import time

from lossprobe.connectivity.alignment.matching import align, permutation_spec
from lossprobe.connectivity.curves import Curve, CurveTrainConfig, evaluate_curve, train_curve
from lossprobe.connectivity.paths import interpolate
from lossprobe.connectivity.repair import Repairer, interpolate_repaired
from lossprobe.figures.connectivity import plot_paths
from lossprobe.results import plotspec
from lossprobe.results.plotspec import Series
from lossprobe.training.checkpoints import save_checkpoint

CURVE_EPOCHS = 2  # default training epochs of the Bezier bend (config curve_epochs) (the whole stage is budgeted at ~60 s on 2 cores)
CURVE_LR = 1e-3
CALIBRATION_SAMPLES = 5000  # training images REPAIR measures statistics on
PATHS = ("aligned", "aligned_repair", "curve")
LABELS = {"naive": "straight line", "aligned": "aligned (weight matching)", "aligned_repair": "aligned + REPAIR",
          "curve": "Bezier curve (1 bend, trained)"}


FILES = ("connectivity.json", "connectivity.npz")
SPLITS = ("train", "test")


def compute(ctx, models) -> dict:
    """Compute the three paths between `models` (A, B) and save them; returns `load(ctx)`."""
    _compute(ctx, models)
    return load(ctx)


def load(ctx) -> dict:
    """{'loss_barrier': {path: {split: v}}, 'error_barrier': …, 'method', 'timing', 'seconds', 'arrays'}
    for path in aligned, aligned_repair, curve, as saved."""
    return {**ctx.rd.load_json("connectivity.json"), "arrays": ctx.rd.load_arrays("connectivity.npz")}


def figures(ctx, naive, conn: dict) -> list[str]:
    """The figure of the four paths: `naive` the straight line (an Interpolation), `conn` from `load`."""
    cfg, arr = ctx.cfg, conn["arrays"]
    paths = {LABELS["naive"]: (naive.alphas, dict(naive.loss), dict(naive.accuracy))}
    for p in PATHS:
        paths[LABELS[p]] = (arr["alphas"], {s: arr[f"{p}_loss_{s}"] for s in SPLITS},
                            {s: arr[f"{p}_accuracy_{s}"] for s in SPLITS})
    a, b = cfg.seeds
    return plot_paths(paths, ctx.rd.figures, title_data=f"Fashion-MNIST, {cfg.model}", name="connectivity",
                      label_a=f"seed {a}", label_b=f"seed {b}")


def _compute(ctx, models) -> None:
    rd, cfg, progress, epochs = ctx.rd, ctx.cfg, ctx.progress, ctx.cfg.curve_epochs
    train, eval_train, test = ctx.inputs["train"], ctx.inputs["eval_train"], ctx.inputs["test"]
    t0 = time.perf_counter()
    model_a, model_b = models
    grid = ctx.inputs["alphas"]
    alphas = grid[(grid >= 0) & (grid <= 1)]
    splits = {"train": eval_train, "test": test}
    bn_data = train if cfg.bn == "recompute" else None
    timing = {}

    # 1. align B to A by weight matching (no data needed)
    t = time.perf_counter()
    spec = permutation_spec(model_a, example=eval_train)
    aligned_b = align(model_a, model_b, method="weights", spec=spec, seed=cfg.seeds[0], data=eval_train)
    save_checkpoint(aligned_b, rd.subdir("checkpoints") / f"model_seed{cfg.seeds[1]}_aligned.safetensors")
    timing["align"] = time.perf_counter() - t
    if progress:
        print(f"aligned seed {cfg.seeds[1]} to seed {cfg.seeds[0]} by weight matching ({timing['align']:.1f} s); "
              f"interpolating at {len(alphas)} points in [0, 1]")
    t = time.perf_counter()
    it_al = interpolate(model_a, aligned_b, splits, alphas=alphas, bn=cfg.bn, bn_data=bn_data, progress=progress)
    timing["aligned_interpolation"] = time.perf_counter() - t

    # 2. REPAIR along the aligned line
    t = time.perf_counter()
    calib = train.subset(min(CALIBRATION_SAMPLES, len(train)), seed=cfg.split_seed + 4)
    rep = Repairer(model_a, aligned_b, calib, spec=spec)
    it_rep = interpolate_repaired(model_a, aligned_b, splits, calib, alphas=alphas, repairer=rep, progress=progress)
    timing["repair"] = time.perf_counter() - t

    # 3. a Bezier curve between the original endpoints
    t = time.perf_counter()
    curve = Curve(model_a, model_b, bends=1, kind="bezier")
    ccfg = CurveTrainConfig(epochs=epochs, lr=CURVE_LR, batch_size=cfg.batch_size, seed=cfg.data_seed)
    if progress:
        print(f"training a Bezier curve between the two networks ({epochs} epoch(s) on {len(train)} images)")
    hist = train_curve(curve, train, ccfg, checkpoint_dir=rd.subdir("checkpoints") / f"curve-{epochs}ep", progress=progress)
    timing["curve_training"] = time.perf_counter() - t
    t = time.perf_counter()
    ev = evaluate_curve(curve, splits, ts=alphas, bn_data=train, progress=progress)
    timing["curve_evaluation"] = time.perf_counter() - t

    results = {"aligned": it_al.barriers(), "aligned_repair": it_rep.barriers(), "curve": ev.barriers()}
    arrays = {"alphas": alphas}
    for p, obj in (("aligned", it_al), ("aligned_repair", it_rep), ("curve", ev)):
        for s in ("train", "test"):
            arrays[f"{p}_loss_{s}"] = obj.loss[s]
            arrays[f"{p}_accuracy_{s}"] = obj.accuracy[s]
    rd.save_arrays("connectivity.npz", plots=_plots(cfg), **arrays)
    rd.save_json("connectivity.json", {
        "loss_barrier": {p: results[p]["loss_barrier"] for p in PATHS},
        "error_barrier": {p: results[p]["error_barrier"] for p in PATHS},
        "method": {"align": "weights", "repair_layers": rep.layers, "repair_norm_layers": rep.norm_layers,
                   "repair_calibration_samples": len(calib), "curve": "bezier, 1 bend",
                   "curve_epochs": epochs, "curve_lr": CURVE_LR, "curve_batch_loss": hist.batch_loss},
        "timing": timing,
        "seconds": time.perf_counter() - t0,
    })


def _plots(cfg) -> list:
    """Loss and error of the three paths against α (the straight line is in interpolation.npz)."""
    a, b = cfg.seeds
    kw = dict(xlabel=f"α (0: seed {a}, 1: seed {b} or its aligned copy)")
    return [plotspec.line(f"{what} along the paths between the two solutions", "alphas",
                          [Series(f"{p}_{key}_{s}", f"{LABELS[p]}, {s}", group=p, dash=s == "test")
                           for p in PATHS for s in SPLITS], ylabel=ylabel, **kw)
            for what, key, ylabel in (("Loss", "loss", "loss (cross-entropy)"), ("Accuracy", "accuracy", "accuracy"))]


def report_lines(summary: dict) -> list[str]:
    """Markdown for the two-seed report: the four barriers side by side."""
    lb, eb = summary["loss_barrier"], summary["error_barrier"]
    if "aligned" not in lb:
        return []
    rows = [("straight line", lb, eb, None)] + [(LABELS[p], lb[p], eb[p], p) for p in PATHS]
    lines = ["## Beyond the straight line", "",
             "| path | loss barrier train | loss barrier test | error barrier train | error barrier test |",
             "|---|---|---|---|---|"]
    for label, l, e, _ in rows:
        lines.append(f"| {label} | {l['train']:.4f} | {l['test']:.4f} | {e['train']:.2%} | {e['test']:.2%} |")
    naive, al, rp, cv = eb["test"], eb["aligned"]["test"], eb["aligned_repair"]["test"], eb["curve"]["test"]
    lines += ["",
              f"On test data the error barrier goes from {naive:.2%} on the straight line to {al:.2%} after "
              f"aligning the hidden units (weight matching) and {rp:.2%} with REPAIR; the trained Bezier curve "
              f"has {cv:.2%}. " + ("Most of the straight-line barrier is the networks' permutation symmetry."
                                   if naive > 0 and al < 0.5 * naive else
                                   "Alignment removes less than half of the straight-line barrier here."),
              ""]
    return lines


__all__ = ["FILES", "compute", "figures", "load", "report_lines"]
