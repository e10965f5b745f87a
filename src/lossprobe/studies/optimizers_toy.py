"""The optimiser study on an analytic function (``--dataset toy:NAME``): stages and report.

Stages: runs (every optimiser's path from one start), critical_points (Newton on ∇f = 0 from a
grid of starts, classified by the exact Hessian), then the figures and the summary.
"""

from __future__ import annotations

import numpy as np

from lossprobe.figures import trajectories as P
from lossprobe.studies.base import Stage, array_stage
from lossprobe.trajectories import toy as T
from lossprobe.trajectories.trajectory import roughness


def inputs(ctx) -> dict:
    cfg = ctx.cfg
    fn = T.get_toy(cfg.dataset)
    return {"fn": fn, "threshold": cfg.threshold if cfg.threshold is not None else fn.threshold,
            "opts": cfg.optimizer_list(), "lrs": cfg.lr_overrides(),
            "start": tuple(cfg.start) if cfg.start else fn.start}


def _runs(ctx):
    cfg, x = ctx.cfg, ctx.inputs
    arrays, meta = {}, {}
    for o in x["opts"]:
        r = T.run_optimizer(x["fn"], o, start=x["start"], steps=cfg.n_steps(), lr=x["lrs"].get(o), seed=cfg.seed,
                            noise=cfg.gradient_noise)
        arrays[f"{o}_points"], arrays[f"{o}_values"] = r.points, r.values
        meta[o] = {"lr": r.lr, "evaluations": r.evaluations, "diverged": r.diverged, "left_domain": r.left_domain}
    return arrays, meta


def _critical_points(ctx):
    return {}, {"critical_points": [c.to_dict() for c in T.find_critical_points(ctx.inputs["fn"])]}


def _summary(ctx) -> dict:
    """Figures and the numbers of summary.json (the study adds its seconds)."""
    cfg, rd, x = ctx.cfg, ctx.rd, ctx.inputs
    fn, threshold, opts, start = x["fn"], x["threshold"], x["opts"], x["start"]
    arrs, meta = ctx.out["runs"]
    runs = {o: T.ToyRun(o, arrs[f"{o}_points"], arrs[f"{o}_values"], meta[o]["lr"], meta[o]["evaluations"],
                        meta[o]["diverged"], meta[o]["left_domain"]) for o in opts}
    cps = [T.CriticalPoint(tuple(c["point"]), c["value"], tuple(c["eigenvalues"]), c["kind"], c["degenerate"],
                           c["grad_norm"]) for c in ctx.out["critical_points"][1]["critical_points"]]
    labelled = {f"{T.OPTIMIZER_LABELS[o]}": r for o, r in runs.items()}
    figures = P.plot_toy_paths(fn, labelled, rd.figures, critical_points=cps[:40], name="toy_paths")
    figures += P.plot_values({T.OPTIMIZER_LABELS[o]: (np.arange(len(r.values)), r.values) for o, r in runs.items()},
                             rd.figures, "toy_values", f"f along each optimiser's path on {fn.name}",
                             ylabel="f(x, y)", threshold=threshold,
                             log=fn.min_value is not None and fn.min_value >= 0, xlabel="step (grid search: round)")
    gif_note = "not requested"
    if cfg.gif:
        xs, ys, Z = fn.grid(121)
        path = P.animate_paths(xs, ys, Z, {T.OPTIMIZER_LABELS[o]: r.points for o, r in runs.items() if o != "grid"},
                               rd.figures / "toy_paths.gif", f"Optimisers on {fn.name}", log=fn.log_contours)
        gif_note = "figures/toy_paths.gif" if path else "skipped: Pillow is not installed (pip install pillow)"
    xs, ys, Z = fn.grid(101)
    rough = roughness(Z)
    kinds: dict[str, int] = {}
    for c in cps:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    per_opt = {}
    for o, r in runs.items():
        per_opt[o] = {
            "label": T.OPTIMIZER_LABELS[o], "lr": r.lr, "final_loss": r.final_value, "final_accuracy": None,
            "final_point": r.points[-1].tolist(), "distance_to_minimum": fn.distance_to_minimum(r.points[-1]),
            "steps_to_threshold": r.steps_to_threshold(threshold), "evaluations": r.evaluations,
            "steps_run": len(r.values) - 1, "diverged": r.diverged, "left_domain": r.left_domain,
        }
    return {
        "study": "optimizers", "dataset": cfg.dataset, "function": fn.name, "formula": fn.formula,
        "known_minima": [list(m) for m in fn.minima], "min_value": fn.min_value, "start": list(start),
        "steps": cfg.n_steps(), "threshold": threshold,
        "threshold_note": "steps_to_threshold: first step whose f is below the threshold (grid search: round)",
        "optimizers": per_opt,
        "critical_points": [c.to_dict() for c in cps], "critical_point_counts": kinds,
        "surfaces": {fn.name: {"roughness": rough, "grid": [101, 101], "bounds": [list(b) for b in fn.bounds]}},
        "gif": gif_note, "figures": figures,
    }


def stages(cfg) -> list[Stage]:
    return [array_stage("runs", _runs), array_stage("critical_points", _critical_points),
            Stage("summary", _summary, resume=False)]


def report(s: dict) -> str:
    lines = [
        f"# Optimisers on {s['function']}: f(x, y) = {s['formula']}", "",
        f"Every optimiser starts at ({s['start'][0]:g}, {s['start'][1]:g}) and runs {s['steps']} steps "
        "(the gradient-based ones are the torch.optim implementations). "
        + (f"Known minima: {', '.join('(%.4g, %.4g)' % tuple(m) for m in s['known_minima'])}, "
           f"f_min = {s['min_value']:.6g}." if s['known_minima'] else "The function has no minimum (unbounded below)."),
        "",
        "| optimiser | lr | final f | final point | distance to nearest minimum | steps to f < "
        + (f"{s['threshold']:g}" if s['threshold'] is not None else "—") + " | evaluations | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for o, r in s["optimizers"].items():
        note = "diverged" if r["diverged"] else "left the domain" if r["left_domain"] else ""
        d = r["distance_to_minimum"]
        lines.append(f"| {r['label']} | {r['lr'] if r['lr'] is not None else '—'} | {r['final_loss']:.6g} | "
                     f"({r['final_point'][0]:.4g}, {r['final_point'][1]:.4g}) | {'—' if d is None else f'{d:.3g}'} | "
                     f"{r['steps_to_threshold'] if r['steps_to_threshold'] is not None else 'never'} | "
                     f"{r['evaluations']} | {note} |")
    lines += ["", "## Critical points (Newton on ∇f = 0 from a grid of starts, classified by the exact Hessian)", "",
              "Counts: " + ", ".join(f"{k}: {v}" for k, v in s["critical_point_counts"].items()), "",
              "| point | f | Hessian eigenvalues | kind |", "|---|---|---|---|"]
    for c in s["critical_points"][:20]:
        kind = c["kind"] + (" (degenerate Hessian: classified on a ring)" if c["degenerate"] else "")
        lines.append(f"| ({c['point'][0]:.5g}, {c['point'][1]:.5g}) | {c['value']:.6g} | "
                     f"{c['eigenvalues'][0]:.4g}, {c['eigenvalues'][1]:.4g} | {kind} |")
    if len(s["critical_points"]) > 20:
        lines.append(f"| … {len(s['critical_points']) - 20} more in summary.json | | | |")
    r = s["surfaces"][s["function"]]["roughness"]
    lines += ["", f"Roughness of f on a 101×101 grid over its bounds: mean |f − smoothed f| = "
              f"{r['mean_abs_smooth_diff']:.4g} ({r['relative_smooth_diff']:.2%} of the range), "
              f"positive 1-D second differences at {r['positive_curvature_share']:.1%} of grid points.", "",
              "![paths](figures/toy_paths.png)", "", "Paths over the contours; stars, crosses and triangles mark "
              "minima, saddles and maxima found from the exact Hessian.", "",
              "![values](figures/toy_values.png)", "", f"Animated paths: {s['gif']}.", "",
              f"The study took {s['seconds']:.1f} s.", ""]
    return "\n".join(lines)


# --- spiral --------------------------------------------------------------------------------
