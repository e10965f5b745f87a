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
resumes per epoch.
"""

from __future__ import annotations

import time

CURVE_EPOCHS = 2  # training epochs of the Bezier bend (the whole stage is budgeted at ~60 s on 2 cores)
CURVE_LR = 1e-3
CALIBRATION_SAMPLES = 5000  # training images REPAIR measures statistics on
PATHS = ("aligned", "aligned_repair", "curve")
LABELS = {"naive": "straight line", "aligned": "aligned (weight matching)", "aligned_repair": "aligned + REPAIR",
          "curve": "Bezier curve (1 bend, trained)"}


def connectivity_stage(rd, cfg, models, train, eval_train, test, progress: bool = True,
                       curve_epochs: int | None = None) -> dict:
    """Run (or reload) the stage; returns {'loss_barrier': {path: {split: v}}, 'error_barrier': …,
    'figures': [names], 'seconds': s} for path in aligned, aligned_repair, curve."""
    from ..report.connectivity_plots import plot_paths

    epochs = int(getattr(cfg, "curve_epochs", None) or curve_epochs or CURVE_EPOCHS)
    if not rd.done("connectivity", "connectivity.json", "connectivity.npz"):
        _compute(rd, cfg, models, train, eval_train, test, progress, epochs)
        rd.mark("connectivity")
    res = rd.load_json("connectivity.json")
    arr = rd.load_arrays("connectivity.npz")
    naive = rd.load_arrays("interpolation.npz")
    splits = ("train", "test")
    paths = {LABELS["naive"]: (naive["alphas"], {s: naive[f"loss_{s}"] for s in splits},
                               {s: naive[f"accuracy_{s}"] for s in splits})}
    for p in PATHS:
        paths[LABELS[p]] = (arr["alphas"], {s: arr[f"{p}_loss_{s}"] for s in splits},
                            {s: arr[f"{p}_accuracy_{s}"] for s in splits})
    a, b = cfg.seeds
    figs = plot_paths(paths, rd.figures, title_data=f"Fashion-MNIST, {cfg.model}", name="connectivity",
                      label_a=f"seed {a}", label_b=f"seed {b}")
    return {**res, "figures": figs}


def _compute(rd, cfg, models, train, eval_train, test, progress, epochs) -> None:
    from ..align import align, permutation_spec
    from ..curves import Curve, CurveTrainConfig, evaluate_curve, train_curve
    from ..paths import interpolate
    from ..repair import Repairer, interpolate_repaired
    from ..train import save_checkpoint
    from .two_seeds import alpha_grid

    t0 = time.perf_counter()
    model_a, model_b = models
    grid = alpha_grid(cfg.alphas)
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
    rd.save_arrays("connectivity.npz", **arrays)
    rd.save_json("connectivity.json", {
        "loss_barrier": {p: results[p]["loss_barrier"] for p in PATHS},
        "error_barrier": {p: results[p]["error_barrier"] for p in PATHS},
        "method": {"align": "weights", "repair_layers": rep.layers, "repair_norm_layers": rep.norm_layers,
                   "repair_calibration_samples": len(calib), "curve": "bezier, 1 bend",
                   "curve_epochs": epochs, "curve_lr": CURVE_LR, "curve_batch_loss": hist.batch_loss},
        "timing": timing,
        "seconds": time.perf_counter() - t0,
    })


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


__all__ = ["connectivity_stage", "report_lines"]
