"""The optimiser study on the two-spiral network: figures, per-point tables, summary and report.

Each function takes the study's `Context` after the training and analysis stages of
`optimizers_spiral` ran (their outputs in ctx.out), so a resumed run and a fresh one draw
and summarise the same saved numbers.
"""

from __future__ import annotations

from lossprobe.figures import trajectories as P
from lossprobe.landscape.surfaces import Surface
from lossprobe.results.atomic import write_text
from lossprobe.trajectories.monitors import TrainingMonitor, detect_plateaus
from lossprobe.trajectories.toy import steps_to_threshold
from lossprobe.trajectories.trajectory import projection_match


def _planes(ctx) -> dict:
    """{plane key: (arrays, meta)}: the shared PCA plane, each run's own PCA plane, each random plane."""
    opts = ctx.inputs["opts"]
    keys = ["pca-shared"] + [f"pca-{o}" for o in opts] + [f"random-{o}" for o in opts]
    return {k: ctx.out[f"plane-{k}"] for k in keys}


def _variants(ctx) -> dict:
    return {v: ctx.out[f"variant-{v}"] for v in ctx.cfg.variants}


def _surface_of(a, prefix="surface_"):
    return Surface.from_arrays(a, prefix=prefix)


def figures(ctx) -> dict:
    """Every figure of the spiral study; {'figures': [names], 'gif': note}."""
    cfg, rd, x, p = ctx.cfg, ctx.rd, ctx.inputs, ctx.out["paths"]
    opts, arch, train, threshold = x["opts"], x["arch"], x["train"], x["threshold"]
    trajs, steps, true_loss = p["trajs"], p["steps"], p["true_loss"]
    planes, basins, variants = _planes(ctx), ctx.out.get("basins"), _variants(ctx)
    harr = ctx.out["hessian"][0]
    figs = []
    curves = {o: (steps[o], true_loss[o]) for o in opts}
    figs += P.plot_values(curves, rd.figures, "training_loss",
                          f"Full-batch training loss (BCE) at recorded steps, {arch} ReLU on two spirals ({len(train)} points)",
                          ylabel="mean BCE loss", threshold=threshold, log=False)

    mons = {}
    for o, (a, m) in trajs.items():
        mon = TrainingMonitor(None, **{k: v for k, v in m["monitor"]["plateau_settings"].items()})
        mon.grad_norm, mon.weight_norm, mon.loss = list(a["grad_norm"]), list(a["weight_norm"]), list(a["batch_loss"])
        mons[o] = mon

    stalls_by_opt = {o: [(p.start, p.end) for p in detect_plateaus(a["loss"], window=cfg.plateau_window,
                                                                    threshold=cfg.plateau_threshold, steps=a["steps"])]
                     for o, (a, _) in trajs.items()}
    figs += P.plot_monitors(mons, rd.figures, title=f"{arch} on two spirals", plateaus=stalls_by_opt)

    a, m = planes["pca-shared"]
    evr = m["explained_variance_ratio"]
    figs += P.plot_plane_paths(_surface_of(a), {o: a[f"{o}_coords"] for o in opts}, rd.figures, "paths_pca_shared",
                               f"All paths on their common PCA plane through the initial point "
                               f"(PC1 {evr[0]:.1%}, PC2 {evr[1]:.1%} of squared displacement)",
                               origin_label="common initialisation")
    if cfg.gif:
        gif = P.animate_paths(a["surface_xs"], a["surface_ys"], a["surface_loss"], {o: a[f"{o}_coords"] for o in opts},
                              rd.figures / "paths_pca_shared.gif", "Paths on the shared PCA plane")
        gif_note = "figures/paths_pca_shared.gif" if gif else "skipped: Pillow is not installed (pip install pillow)"
    else:
        gif_note = "not requested"
    panels = []
    for kind in ("pca", "random"):
        for o in opts:
            a, m = planes[f"{kind}-{o}"]
            r = m["roughness"]
            extra = (f"PC1+PC2 {sum(m['explained_variance_ratio']):.1%}" if kind == "pca"
                     else "filter-normalised")
            panels.append({"surface": _surface_of(a), "paths": {o: a[f"{o}_coords"]},
                           "title": f"{o}: {kind} plane ({extra})\nroughness {r['relative_smooth_diff']:.2e}, "
                                    f"convex share {r['positive_curvature_share']:.2f}"})
    figs += P.plot_plane_grid(panels, rd.figures, "paths_own_planes",
                              "Each path on its own PCA plane (top) and a random filter-normalised plane (bottom), "
                              "both through its final point", ncols=len(opts))
    a, m = planes["pca-shared"]
    figs += P.plot_fidelity({o: (steps[o], _fid(a, o)) for o in opts}, rd.figures, "fidelity_pca_shared",
                            "shared PCA plane", near=cfg.near)
    figs += P.plot_fidelity({o: (steps[o], _fid(planes[f"pca-{o}"][0], o)) for o in opts}, rd.figures,
                            "fidelity_pca_own", "each path on its own PCA plane", near=cfg.near)
    figs += P.plot_fidelity({o: (steps[o], _fid(planes[f"random-{o}"][0], o)) for o in opts}, rd.figures,
                            "fidelity_random", "each path on a random plane through its end", near=cfg.near)
    hcurves = {o: {"steps": harr[f"{o}_steps"], "min": harr[f"{o}_min"], "max": harr[f"{o}_max"],
                   "saddles": harr[f"{o}_saddles"]} for o in opts}
    figs += P.plot_hessian_extremes(hcurves, rd.figures, title=f"{arch}, exact Hessian")
    if basins is not None:
        a, m = basins
        figs += P.plot_interpolations({f"seed {k}": (a[f"pair{k}_alphas"], a[f"pair{k}_loss_train"]) for k in m["pairs"]},
                                      rd.figures, title=f"{cfg.basin_optimizer}, {arch}")
        evr = m["plane_explained_variance_ratio"]
        figs += P.plot_plane_paths(_surface_of(a), {f"seed {s}": a[f"seed{s}_coords"] for s in cfg.basin_seeds},
                                   rd.figures, "paths_seeds",
                                   f"Paths from {len(cfg.basin_seeds)} initialisations on their PCA plane "
                                   f"(centred; PC1 {evr[0]:.1%}, PC2 {evr[1]:.1%})", origin_label="mean of all snapshots")
    if variants:
        panels = []
        for v, (a, m) in variants.items():
            r = m["roughness_random"]
            panels.append({"surface": _surface_of(a, "random_"),
                           "title": f"{v}: {'-'.join(map(str, m['widths']))}"
                                    + (f", L2 {m['weight_decay']:g}" if m["weight_decay"] else "")
                                    + f"\nrandom plane: roughness {r['relative_smooth_diff']:.2e}, "
                                      f"convex {r['positive_curvature_share']:.2f}"})
        for v, (a, m) in variants.items():
            r = m["roughness_pca"]
            panels.append({"surface": _surface_of(a, "pca_"), "paths": {v: a["coords"]},
                           "title": f"{v}: PCA plane with path\nroughness {r['relative_smooth_diff']:.2e}, "
                                    f"convex {r['positive_curvature_share']:.2f}"})
        figs += P.plot_plane_grid(panels, rd.figures, "variants",
                                  f"Training loss around the {cfg.basin_optimizer} solution of each variant: random "
                                  "filter-normalised plane, coordinates in [−1, 1] (top) and PCA plane (bottom)",
                                  ncols=len(variants))
    return {"figures": figs, "gif": gif_note}


def write_tables(ctx) -> None:
    """fidelity/<plane>__<optimizer>.csv: every drawn point of every path on every plane."""
    rd, steps = ctx.rd, ctx.out["paths"]["steps"]
    fdir = rd.subdir("fidelity")
    for key, (a, m) in _planes(ctx).items():
        for o in m["paths"]:
            _write_csv(fdir / f"{key}__{o}.csv", steps[o], _fid(a, o))


def summary(ctx) -> dict:
    """The numbers of summary.json (the study adds its seconds)."""
    cfg, x = ctx.cfg, ctx.inputs
    opts, arch, train, test, threshold, lrs = x["opts"], x["arch"], x["train"], x["test"], x["threshold"], x["lrs"]
    trajs = ctx.out["paths"]["trajs"]
    planes, basins, variants = _planes(ctx), ctx.out.get("basins"), _variants(ctx)
    hmeta = ctx.out["hessian"][1]
    drawn = ctx.out["figures"]
    figs, gif_note = drawn["figures"], drawn["gif"]

    per_opt = {}
    for o in opts:
        a, m = trajs[o]
        mon = m["monitor"]
        # Minibatch losses are too noisy for a variance test; the full-batch loss at the
        # recorded snapshots says where training itself stalled.
        stalls = [p.to_dict() for p in detect_plateaus(a["loss"], window=cfg.plateau_window,
                                                        threshold=cfg.plateau_threshold, steps=a["steps"])]
        per_opt[o] = {
            "lr": lrs[o], "final_loss": float(a["loss"][-1]), "final_accuracy": float(a["accuracy"][-1]),
            "test_loss": m["test_loss"], "test_accuracy": m["test_accuracy"],
            "steps_to_threshold": steps_to_threshold(a["loss"], threshold, a["steps"]),
            "grad_norm_final": mon["grad_norm_final"], "weight_norm_initial": mon["weight_norm_initial"],
            "weight_norm_final": mon["weight_norm_final"], "plateaus": stalls,
            "first_stall_step": stalls[0]["start"] if stalls else None,
            "minibatch_plateaus": mon["plateaus"],
            "hessian": hmeta[o],
            "config": m["config"],
        }
    surfaces = {key: {"kind": m["kind"], "paths": m["paths"], "extent": m["extent"],
                      "explained_variance_ratio": m["explained_variance_ratio"], "roughness": m["roughness"],
                      "fidelity": m["fidelity"]} for key, (_, m) in planes.items()}
    if basins is not None:
        surfaces["pca-seeds"] = {"kind": "pca", "roughness": basins[1]["roughness"],
                                 "explained_variance_ratio": basins[1]["plane_explained_variance_ratio"]}
    for v, (_, m) in variants.items():
        surfaces[f"variant-{v}-random"] = {"kind": "random", "roughness": m["roughness_random"]}
        surfaces[f"variant-{v}-pca"] = {"kind": "pca", "roughness": m["roughness_pca"]}
    return {
        "study": "optimizers", "dataset": "spiral",
        "model": f"MLP {arch} ReLU, one logit, binary cross-entropy", "params": x["space"].numel,
        "n_train": len(train), "n_test": len(test), "steps": cfg.n_steps(), "batch_size": cfg.batch_size,
        "record_every": cfg.every, "threshold": threshold,
        "plateau_rule": f"full-batch loss variance / mean² below {cfg.plateau_threshold:g} over "
                        f"{cfg.plateau_window} snapshots ({cfg.plateau_window * cfg.every} steps)",
        "threshold_note": f"steps_to_threshold: first recorded step (every {cfg.every}) whose full-batch training loss "
                          f"is below {threshold:g}; null if never",
        "near_threshold": cfg.near,
        "optimizers": per_opt, "surfaces": surfaces,
        "projection_match": projection_match(_match_groups(planes, opts)),
        "basins": basins[1] if basins is not None else None,
        "variants": {v: m for v, (_, m) in variants.items()},
        "gif": gif_note, "figures": figs,
    }


def _match_groups(planes: dict, opts: list[str]) -> dict:
    """The drawn points of each kind of plane, for `lossprobe.trajectory.projection_match`."""
    groups = {"pca-shared": ["pca-shared"], "pca-own": [f"pca-{o}" for o in opts],
              "random": [f"random-{o}" for o in opts]}
    return {g: [(_fid(a, o), m["fidelity"][o]["near_threshold"]) for a, m in (planes[k] for k in keys)
                for o in m["paths"]] for g, keys in groups.items()}


def _fid(a: dict, o: str) -> dict:
    return {k: a[f"{o}_{k}"] for k in ("coords", "distance", "rel_distance", "sin_angle", "true_loss", "plane_loss",
                                       "surface_loss")}


def _write_csv(path, steps, f) -> None:
    rows = ["step,x,y,true_loss,surface_loss,plane_loss,distance,rel_distance,sin_angle"]
    for i, s in enumerate(steps):
        rows.append(f"{int(s)},{f['coords'][i, 0]:.8g},{f['coords'][i, 1]:.8g},{f['true_loss'][i]:.8g},"
                    f"{f['surface_loss'][i]:.8g},{f['plane_loss'][i]:.8g},{f['distance'][i]:.8g},"
                    f"{f['rel_distance'][i]:.8g},{f['sin_angle'][i]:.8g}")

    write_text(path, "\n".join(rows) + "\n")



def _stall_text(plateaus: list[dict]) -> str:
    return ", ".join(f"{p['start']}–{p['end']}" for p in plateaus) or "none"


def fmt(v, spec=".4f") -> str:
    """`v` formatted with `spec`, or — when there is none."""
    return "—" if v is None else format(v, spec)


def report(s: dict) -> str:
    thr = s["threshold"]
    L = [
        "# Optimisers on the two-spiral network", "",
        f"{s['model']} ({s['params']} parameters), {s['n_train']} training and {s['n_test']} test points. "
        f"Every optimiser starts from the same initialisation and takes {s['steps']} minibatch steps "
        f"(batch {s['batch_size']}); θ is recorded every {s['record_every']} steps.", "",
        f"| optimiser | lr | final train loss | train accuracy | test accuracy | steps to loss < {thr:g} | "
        "final ‖∇L‖ (batch) | ‖θ‖ start → end | stalled (steps) | λ_min, λ_max at the end | near-saddle checkpoints |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o, r in s["optimizers"].items():
        h = r["hessian"]
        L.append(f"| {o} | {r['lr']:g} | {r['final_loss']:.4f} | {r['final_accuracy']:.1%} | {r['test_accuracy']:.1%} | "
                 f"{r['steps_to_threshold'] if r['steps_to_threshold'] is not None else 'never'} | "
                 f"{r['grad_norm_final']:.3g} | {r['weight_norm_initial']:.2f} → {r['weight_norm_final']:.2f} | "
                 f"{_stall_text(r['plateaus'])} | "
                 f"{h['min_final']:.3g}, {h['max_final']:.3g} | "
                 f"{', '.join(map(str, h['near_saddle_steps'])) or 'none'} |")
    pm = s["projection_match"]
    L += ["", "## Does the picture show the loss the optimiser had?", "",
          "For every drawn point: the true loss L(θ_t), the contour value under its marker (the surface "
          "interpolated at its projected coordinates) and its distance from the plane. A point is *near* the "
          f"plane when its distance from it is at most {s['near_threshold']:.0%} of the drawn window's half-width "
          "(both in parameter units). Per-point tables: `fidelity/*.csv` (columns: step, plane coordinates, true "
          "loss, contour loss, exact loss at the projected point, distance, relative distance, sine of the angle "
          "to the plane).", "",
          "| plane | near points | median \\|true − contour\\| near | max near | far points | median far | max far | "
          "corr(distance, mismatch) | true loss below the contour |", "|---|---|---|---|---|---|---|---|---|"]
    names = {"pca-shared": "shared PCA plane (origin: common start)", "pca-own": "each run's own PCA plane (origin: its end)",
             "random": "random filter-normalised plane (origin: its end)"}
    for g, r in pm.items():
        if g == "by_distance":
            continue
        L.append(f"| {names[g]} | {r['n_near']} | {fmt(r['median_abs_diff_near'])} | {fmt(r['max_abs_diff_near'])} | "
                 f"{r['n_far']} | {fmt(r['median_abs_diff_far'])} | {fmt(r['max_abs_diff_far'])} | "
                 f"{fmt(r['corr_rel_distance_abs_diff'], '.2f')} | {fmt(r['share_true_below_contour'], '.0%')} |")
    L += ["", "All planes pooled, by distance from the plane (relative to the window's half-width):", "",
          "| distance / half-width | points | median \\|true − contour\\| | 90th percentile |", "|---|---|---|---|"]
    for b in pm["by_distance"]:
        hi = "∞" if b["rel_distance_to"] is None else f"{b['rel_distance_to']:g}"
        L.append(f"| {b['rel_distance_from']:g} – {hi} | {b['n']} | {fmt(b['median_abs_diff'])} | "
                 f"{fmt(b['p90_abs_diff'])} |")
    L += ["", "| surface | explained variance (PC1, PC2) | roughness: mean \\|Z − smoothed\\| | relative to range | "
          "positive 2nd differences |", "|---|---|---|---|---|"]
    for key, r in s["surfaces"].items():
        evr = r.get("explained_variance_ratio")
        rr = r["roughness"]
        L.append(f"| {key} | {'—' if not evr else f'{evr[0]:.1%}, {evr[1]:.1%}'} | {rr['mean_abs_smooth_diff']:.4g} | "
                 f"{rr['relative_smooth_diff']:.2e} | {rr['positive_curvature_share']:.1%} |")
    L += ["", "![loss](figures/training_loss.png)", "", "![shared](figures/paths_pca_shared.png)", "",
          "![own](figures/paths_own_planes.png)", "",
          "![fidelity shared](figures/fidelity_pca_shared.png)", "", "![fidelity own](figures/fidelity_pca_own.png)", "",
          "![fidelity random](figures/fidelity_random.png)", "",
          f"On the random planes {pm['random']['n_far']} of {pm['random']['n_far'] + pm['random']['n_near']} drawn "
          "points lie far off the plane (the trajectory is nearly orthogonal to two random directions), so the "
          "contours under those points say little about the loss the optimiser had.", "",
          "![monitors](figures/monitors.png)", "", "![hessian](figures/hessian_along_training.png)", "",
          f"Stalled: {s['plateau_rule']}. "
          "A checkpoint is marked near a saddle when λ_min < −0.01·λ_max while the full-batch gradient norm is "
          "below a tenth of its largest value along the run.", ""]
    b = s.get("basins")
    if b:
        L += ["## Initialisation and basins", "",
              f"{b['optimizer']} from seeds {', '.join(map(str, b['seeds']))}: final train loss "
              + ", ".join(f"{v:.4f}" for v in b["final_loss"]) + "; test accuracy "
              + ", ".join(f"{v:.1%}" for v in b["test_accuracy"]) + ".", "",
              "| seeds | loss barrier train | loss barrier test | error barrier train | error barrier test |",
              "|---|---|---|---|---|"]
        for k, p in b["pairs"].items():
            L.append(f"| {k} | {p['loss_barrier_train']:.4f} | {p['loss_barrier_test']:.4f} | "
                     f"{p['error_barrier_train']:.1%} | {p['error_barrier_test']:.1%} |")
        fid = b.get("fidelity", {})
        if fid:
            L += ["", "How faithful the seeds' picture is: median |true − contour| per seed "
                  + ", ".join(f"{k}: {fmt(v['all'].get('median_abs_diff_surface'))}" for k, v in fid.items())
                  + "; median distance / window half-width "
                  + ", ".join(f"{k}: {v['median_rel_distance']:.2f}" for k, v in fid.items()) + "."]
        L += ["", "![interp](figures/seed_interpolation.png)", "", "![seeds](figures/paths_seeds.png)", ""]
    if s.get("variants"):
        L += ["## Regularisation and architecture", "",
              "Each variant trained with the same optimiser and steps; roughness measured on a random "
              "filter-normalised plane through the solution (coordinates in [−1, 1]) and on its PCA plane. "
              "Surfaces show the data loss (without the L2 term).", "",
              "| variant | widths | L2 | params | train loss | train acc | test acc | random plane: mean \\|Z − smoothed\\| "
              "(relative to range) | random plane: positive 2nd diff | PCA plane: mean \\|Z − smoothed\\| (relative) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for v, m in s["variants"].items():
            L.append(f"| {v} | {'-'.join(map(str, m['widths']))} | {m['weight_decay']:g} | {m['params']} | "
                     f"{m['final_loss']:.4f} | {m['final_accuracy']:.1%} | {m['test_accuracy']:.1%} | "
                     f"{m['roughness_random']['mean_abs_smooth_diff']:.4g} ({m['roughness_random']['relative_smooth_diff']:.2e}) | "
                     f"{m['roughness_random']['positive_curvature_share']:.1%} | "
                     f"{m['roughness_pca']['mean_abs_smooth_diff']:.4g} ({m['roughness_pca']['relative_smooth_diff']:.2e}) |")
        L += ["", "![variants](figures/variants.png)", ""]
    L += [f"Animated paths: {s['gif']}.", "", f"The study took {s['seconds']:.1f} s.", ""]
    return "\n".join(L)
