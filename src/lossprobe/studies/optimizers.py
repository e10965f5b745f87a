"""Optimiser study: paths on analytic landscapes and on a real network's loss landscape.

``lossprobe study optimizers --dataset spiral --out DIR`` (the default) trains a 2-16-1
ReLU network (one logit, binary cross-entropy) on the two-spiral data from one
initialisation with SGD, momentum, Adam and RMSprop, records each parameter trajectory,
and then:

* draws the paths on the PCA plane of all trajectories (through the common start), on
  each run's own PCA plane (through its final point, Li et al. 2018) and on a random
  filter-normalised plane through each final point, and reports for every drawn point
  its true loss, the surface's loss under it and its distance from the plane;
* computes the smallest and largest Hessian eigenvalues (exact, dense, float64) at
  checkpoints of every run, marking where training passed near a saddle;
* trains from several seeds and interpolates between the final solutions (basins);
* trains an L2-penalised, a wider and a deeper variant and measures the roughness of
  each surface;
* writes summary.json (per optimiser final_loss, final_accuracy, steps_to_threshold; per
  surface roughness), figures and report.md.

``--dataset toy:NAME`` runs GD, SGD with gradient noise, momentum, Nesterov, RMSprop,
Adam (torch.optim), simulated annealing and a grid search on an analytic function,
finds and classifies its critical points, and draws the paths (and a GIF when Pillow is
installed).

Stages are saved as they finish; rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from dataclasses import dataclass, field

import numpy as np

from .. import config as config_mod
from ..errors import UserError

NET_OPTIMIZERS = ("sgd", "gd", "momentum", "nesterov", "rmsprop", "adam", "adamw", "adagrad")
NET_DEFAULT_OPTIMIZERS = ["sgd", "momentum", "adam", "rmsprop"]
NET_LR = {"sgd": 0.1, "gd": 0.5, "momentum": 0.05, "nesterov": 0.05, "rmsprop": 0.005, "adam": 0.01,
          "adamw": 0.01, "adagrad": 0.1}
NET_THRESHOLD = 0.2
VARIANTS = ("base", "l2", "wide", "deep")


@dataclass
class OptimizersConfig:
    dataset: str = "spiral"  # spiral | toy:NAME
    optimizers: list[str] = field(default_factory=list)  # empty: the dataset's default set
    lrs: list[str] = field(default_factory=list)  # NAME=LR overrides, e.g. ["adam=0.02"]
    steps: int | None = None  # default: 3000 (spiral), 300 (toy)
    seed: int = 0  # initialisation seed (spiral) / noise seed (toy)
    data_seed: int = 0  # spiral data and minibatch order
    threshold: float | None = None  # default: 0.2 (spiral, BCE), the toy's own threshold
    # --- spiral -------------------------------------------------------------------------
    n_points: int = 200  # per class
    spiral_noise: float = 0.1
    turns: float = 1.5
    hidden: list[int] = field(default_factory=lambda: [16])
    batch_size: int = 32
    every: int = 30  # record θ every k steps
    grid: int = 41  # surface grid points per axis
    near: float = 0.1  # "near the plane": relative distance at most this
    basin_seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    basin_optimizer: str = "adam"
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    l2: float = 1e-3
    wide: int = 64
    deep: list[int] = field(default_factory=lambda: [16, 16, 16])
    hessian_checkpoints: int = 12
    plateau_window: int = 5  # recorded snapshots per window of the plateau detector
    plateau_threshold: float = 1e-4  # variance / mean² of the full-batch loss over a window
    # --- toy ----------------------------------------------------------------------------
    start: list[float] = field(default_factory=list)  # empty: the toy's default start
    gradient_noise: float = 1.0  # std of the noise SGD adds to the toy's gradient
    gif: bool = True
    threads: int = 1  # torch CPU threads; networks this small run fastest on one

    def __post_init__(self):
        if self.dataset != "spiral" and not self.dataset.startswith("toy:"):
            raise UserError(f"unknown dataset '{self.dataset}'; use spiral or toy:NAME (e.g. toy:rosenbrock)")
        if self.is_toy:
            from ..toy import OPTIMIZERS, get_toy

            get_toy(self.dataset)
            allowed = OPTIMIZERS
            if self.start and len(self.start) != 2:
                raise UserError(f"start must be two numbers (x, y), got {self.start}")
        else:
            allowed = NET_OPTIMIZERS
        for o in self.optimizers:
            if o not in allowed:
                raise UserError(f"optimizer '{o}' is not available for {self.dataset}; choose from {', '.join(allowed)}")
        if len(set(self.optimizers)) != len(self.optimizers):
            raise UserError(f"optimizers are listed twice: {self.optimizers}")
        self.lr_overrides()  # validates
        if self.plateau_window < 2 or self.plateau_threshold < 0:
            raise UserError("plateau_window must be at least 2 and plateau_threshold >= 0")
        for name in ("steps", "n_points", "batch_size", "every", "grid", "hessian_checkpoints", "wide", "threads"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise UserError(f"{name} must be positive, got {v}")
        if self.grid < 5:
            raise UserError(f"grid must be at least 5 points per axis, got {self.grid}")
        if not self.hidden or any(h <= 0 for h in self.hidden) or any(h <= 0 for h in self.deep):
            raise UserError("hidden and deep must be lists of positive widths")
        if not self.is_toy and self.basin_optimizer not in NET_OPTIMIZERS:
            raise UserError(f"basin_optimizer '{self.basin_optimizer}' unknown; choose from {', '.join(NET_OPTIMIZERS)}")
        if len(set(self.basin_seeds)) != len(self.basin_seeds) or len(self.basin_seeds) == 1:
            raise UserError(f"basin_seeds must be zero or at least two different seeds, got {self.basin_seeds}")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise UserError(f"unknown variant '{bad[0]}'; choose from {', '.join(VARIANTS)}")
        if self.l2 < 0 or self.spiral_noise < 0 or self.gradient_noise < 0 or not 0 < self.near <= 1:
            raise UserError("l2, spiral_noise and gradient_noise must be >= 0 and near in (0, 1]")

    @property
    def is_toy(self) -> bool:
        return self.dataset.startswith("toy:")

    def lr_overrides(self) -> dict[str, float]:
        out = {}
        for item in self.lrs:
            name, sep, value = str(item).partition("=")
            try:
                lr = float(value)
            except ValueError:
                lr = -1.0
            if not sep or not lr > 0:
                raise UserError(f"learning rate '{item}' must look like NAME=LR with LR > 0, e.g. adam=0.02")
            out[name.strip()] = lr
        return out

    def optimizer_list(self) -> list[str]:
        if self.optimizers:
            return list(self.optimizers)
        if self.is_toy:
            from ..toy import OPTIMIZERS

            return list(OPTIMIZERS)
        return list(NET_DEFAULT_OPTIMIZERS)

    def n_steps(self) -> int:
        return self.steps if self.steps is not None else (300 if self.is_toy else 3000)


QUICK = {"steps": 300, "every": 10, "n_points": 100, "grid": 11, "basin_seeds": [0, 1], "hessian_checkpoints": 4,
         "gif": False}
QUICK_TOY = {"steps": 60, "gif": False}


# --- stages ------------------------------------------------------------------------------


def _stage(rd, name: str, compute, progress: bool, grids: dict | None = None):
    """Load stage `name` if it finished before, else compute (arrays, meta), save (with the
    axes of the 2-D arrays declared in `grids`), mark."""
    if rd.done(name) and (rd / f"{name}.npz").is_file() and (rd / f"{name}.json").is_file():
        return rd.load_arrays(f"{name}.npz"), rd.load_json(f"{name}.json")
    if progress:
        print(f"[optimizers] {name}")
    arrays, meta = compute()
    rd.save_arrays(f"{name}.npz", grids=grids, **arrays)
    rd.save_json(f"{name}.json", meta)
    rd.mark(name)
    return arrays, meta


def run(out, config: OptimizersConfig | None = None, force: bool = False, progress: bool = True) -> dict:
    """Run the optimiser study into directory `out` and return its summary dict."""
    from ..store import RunDir

    cfg = config or OptimizersConfig()
    t0 = time.perf_counter()
    rd = RunDir(out, "optimizers", dataclasses.asdict(cfg), force=force,
                seeds={"init": cfg.seed, "data": cfg.data_seed, "basins": cfg.basin_seeds})
    if rd.resumed and rd._status().get("complete") and (rd / "summary.json").is_file() and (rd / "report.md").is_file():
        if progress:
            print(f"[optimizers] {rd.path} is complete; reopening it (use --force to recompute)")
        return rd.load_json("summary.json")
    before = rd.load_json("timing.json")["seconds"] if rd.resumed and (rd / "timing.json").is_file() else 0.0
    from ..threads import torch_threads

    # A 2-16-1 network is far too small to split across threads: on a loaded machine the
    # synchronisation costs 10-40× (measured: 300 Adam steps 0.37 s on 1 thread, 16 s on 2).
    with torch_threads(cfg.threads):
        summary = _run_toy(rd, cfg, progress) if cfg.is_toy else _run_spiral(rd, cfg, progress)
    summary["seconds"] = before + time.perf_counter() - t0
    rd.save_json("timing.json", {"seconds": summary["seconds"]})
    rd.save_json("summary.json", summary)
    rd.write_text("report.md", _report_toy(summary) if cfg.is_toy else _report_spiral(summary))
    rd.mark("report")
    rd.complete()
    return summary


# --- toy ---------------------------------------------------------------------------------


def _run_toy(rd, cfg: OptimizersConfig, progress: bool) -> dict:
    from .. import toy as T
    from ..report import trajectory_plots as P
    from ..trajectory import roughness

    fn = T.get_toy(cfg.dataset)
    threshold = cfg.threshold if cfg.threshold is not None else fn.threshold
    opts = cfg.optimizer_list()
    lrs = cfg.lr_overrides()
    start = tuple(cfg.start) if cfg.start else fn.start

    def compute_runs():
        arrays, meta = {}, {}
        for o in opts:
            r = T.run_optimizer(fn, o, start=start, steps=cfg.n_steps(), lr=lrs.get(o), seed=cfg.seed,
                                noise=cfg.gradient_noise)
            arrays[f"{o}_points"], arrays[f"{o}_values"] = r.points, r.values
            meta[o] = {"lr": r.lr, "evaluations": r.evaluations, "diverged": r.diverged, "left_domain": r.left_domain}
        return arrays, meta

    arrs, meta = _stage(rd, "runs", compute_runs, progress)
    runs = {o: T.ToyRun(o, arrs[f"{o}_points"], arrs[f"{o}_values"], meta[o]["lr"], meta[o]["evaluations"],
                        meta[o]["diverged"], meta[o]["left_domain"]) for o in opts}

    def compute_crit():
        cps = T.find_critical_points(fn)
        return {}, {"critical_points": [c.to_dict() for c in cps]}

    _, cmeta = _stage(rd, "critical_points", compute_crit, progress)
    cps = [T.CriticalPoint(tuple(c["point"]), c["value"], tuple(c["eigenvalues"]), c["kind"], c["degenerate"],
                           c["grad_norm"]) for c in cmeta["critical_points"]]

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


def _report_toy(s: dict) -> str:
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


def _spiral_data(cfg: OptimizersConfig):
    from ..data import two_spirals

    train = two_spirals(cfg.n_points, cfg.spiral_noise, cfg.turns, seed=cfg.data_seed, name="spiral-train")
    test = two_spirals(cfg.n_points, cfg.spiral_noise, cfg.turns, seed=cfg.data_seed + 1000, name="spiral-test")
    return train, test


def _net(widths, seed):
    from ..models import mlp

    return mlp([2, *widths, 1], seed=seed)


def _train(cfg, train, widths, optimizer, lr, seed, weight_decay=0.0, label=None, progress=False):
    from ..trajectory import train_trajectory

    model = _net(widths, seed)
    bs = len(train) if optimizer == "gd" else cfg.batch_size
    opt = "sgd" if optimizer == "gd" else optimizer
    tj = train_trajectory(model, train, opt, lr, steps=cfg.n_steps(), batch_size=bs, every=cfg.every,
                          seed=cfg.data_seed, loss="bce", weight_decay=weight_decay, label=label or optimizer,
                          progress=progress)
    return model, tj


def _train_or_reuse(cfg, train, widths, optimizer, lr, seed, weight_decay, label, progress, thetas, steps):
    """The run of the first stage when it is the same run (same optimiser, init seed, no L2), else train."""
    if seed == cfg.seed and weight_decay == 0 and optimizer in thetas:
        from ..space import ParamSpace
        from ..trajectory import Trajectory

        model = _net(widths, seed)
        ParamSpace(model).load_into(model, thetas[optimizer][-1].to(next(model.parameters()).dtype))
        return model.eval(), Trajectory(label, steps[optimizer], thetas[optimizer], None, {"reused": optimizer})
    return _train(cfg, train, widths, optimizer, lr, seed, weight_decay=weight_decay, label=label, progress=progress)


def _run_spiral(rd, cfg: OptimizersConfig, progress: bool) -> dict:
    import torch

    from ..objective import Objective
    from ..report import trajectory_plots as P
    from ..space import ParamSpace
    from ..toy import steps_to_threshold
    from ..train import save_checkpoint
    from ..trajectory import (PlaneSurface, fidelity_summary, grid_extent, hessian_extremes, losses_at,
                              near_saddles, path_fidelity, pca_plane, plane_surface, random_plane, roughness)

    train, test = _spiral_data(cfg)
    widths = list(cfg.hidden)
    opts = cfg.optimizer_list()
    lrs = {**NET_LR, **cfg.lr_overrides()}
    threshold = cfg.threshold if cfg.threshold is not None else NET_THRESHOLD
    ref_model = _net(widths, cfg.seed)
    space = ParamSpace(ref_model)
    obj = Objective(ref_model, train, loss="bce")
    obj_test = Objective(ref_model, test, loss="bce")
    ckdir = rd.subdir("checkpoints")
    arch = "-".join(str(w) for w in [2, *widths, 1])

    # 1. training runs from one initialisation
    trajs = {}
    for o in opts:
        def compute(o=o):
            model, tj = _train(cfg, train, widths, o, lrs[o], cfg.seed, progress=progress)
            save_checkpoint(model, ckdir / f"{o}.safetensors")
            loss, acc = losses_at(obj, tj.thetas)
            tl, ta = losses_at(obj_test, tj.thetas[-1:])
            mon = tj.monitor
            return ({"steps": tj.steps, "thetas": tj.thetas.numpy(), "loss": loss, "accuracy": acc,
                     "grad_norm": np.asarray(mon.grad_norm), "weight_norm": np.asarray(mon.weight_norm),
                     "batch_loss": np.asarray(mon.loss)},
                    {"config": tj.config, "test_loss": float(tl[0]), "test_accuracy": float(ta[0]),
                     "monitor": mon.summary()})
        a, m = _stage(rd, f"train-{o}", compute, progress)
        trajs[o] = (a, m)
    thetas = {o: torch.from_numpy(a["thetas"]) for o, (a, _) in trajs.items()}
    steps = {o: a["steps"] for o, (a, _) in trajs.items()}
    true_loss = {o: a["loss"] for o, (a, _) in trajs.items()}

    # 2. planes, surfaces and the fidelity of every drawn point
    def plane_stage(key, plane, paths, minimum=0.0, extent=None):
        def compute():
            coords = np.concatenate([plane.project(thetas[o])[0] for o in paths])
            ext = extent or grid_extent(coords, minimum=minimum)
            surf = plane_surface(obj, plane, ext, cfg.grid)
            arrays = {**surf.to_arrays("surface_"), "origin": plane.origin.numpy(),
                      "directions": plane.directions.numpy()}
            meta = {"kind": plane.kind, "note": plane.note, "paths": list(paths), "extent": ext,
                    "explained_variance_ratio": None if plane.explained_variance_ratio is None
                    else plane.explained_variance_ratio.tolist(),
                    "roughness": roughness(surf.loss), "fidelity": {}}
            for o in paths:
                f = path_fidelity(obj, plane, thetas[o], surf, true_loss=true_loss[o])
                for k, v in f.items():
                    arrays[f"{o}_{k}"] = v
                meta["fidelity"][o] = fidelity_summary(f, cfg.near)
            return arrays, meta
        return _stage(rd, f"plane-{key}", compute, progress, grids=PlaneSurface.grids("surface_"))

    planes = {}
    theta0 = thetas[opts[0]][0].to(torch.float64)
    planes["pca-shared"] = plane_stage("pca-shared", pca_plane([thetas[o] for o in opts], origin=theta0), opts)
    for o in opts:
        planes[f"pca-{o}"] = plane_stage(f"pca-{o}", pca_plane(thetas[o]), [o])
    for o in opts:
        space.load_into(ref_model, thetas[o][-1])
        planes[f"random-{o}"] = plane_stage(f"random-{o}", random_plane(ref_model, seed=cfg.seed), [o], minimum=1.0)
    space.load_into(ref_model, obj.theta0)

    # 3. curvature along training
    def compute_hessian():
        arrays, meta = {}, {}
        for o in opts:
            idx = np.unique(np.linspace(0, len(steps[o]) - 1, cfg.hessian_checkpoints).round().astype(int))
            h = hessian_extremes(ref_model, train, thetas[o][idx], loss="bce")
            gn = np.array([float(obj.loss_and_grad(thetas[o][i].to(obj.space.dtype))[1].norm()) for i in idx])
            sad = near_saddles(h["min"], h["max"], gn)
            arrays.update({f"{o}_steps": steps[o][idx], f"{o}_min": h["min"], f"{o}_max": h["max"],
                           f"{o}_grad_norm": gn, f"{o}_saddles": sad})
            meta[o] = {"method": h["method"], "near_saddle_steps": steps[o][idx][sad].tolist(),
                       "min_final": float(h["min"][-1]), "max_final": float(h["max"][-1]),
                       "min_lowest": float(h["min"].min()), "max_highest": float(h["max"].max())}
        return arrays, meta

    harr, hmeta = _stage(rd, "hessian", compute_hessian, progress)

    # 4. initialisation and basins
    basins = None
    if cfg.basin_seeds:
        def compute_basins():
            from ..paths import interpolate

            models, arrays, meta = {}, {}, {"seeds": cfg.basin_seeds, "optimizer": cfg.basin_optimizer,
                                            "final_loss": [], "final_accuracy": [], "test_accuracy": [], "pairs": {}}
            seed_thetas = []
            for s in cfg.basin_seeds:
                model, tj = _train_or_reuse(cfg, train, widths, cfg.basin_optimizer, lrs[cfg.basin_optimizer], s,
                                            0.0, f"seed {s}", progress, thetas, steps)
                save_checkpoint(model, ckdir / f"seed{s}.safetensors")
                models[s] = model
                seed_thetas.append(tj.thetas)
                l, a = losses_at(obj, tj.thetas[-1:])
                _, ta = losses_at(obj_test, tj.thetas[-1:])
                meta["final_loss"].append(float(l[0]))
                meta["final_accuracy"].append(float(a[0]))
                meta["test_accuracy"].append(float(ta[0]))
                arrays[f"seed{s}_thetas"] = tj.thetas.numpy()
            alphas = np.linspace(-0.25, 1.25, 31)
            for a_, b_ in itertools.combinations(cfg.basin_seeds, 2):
                it = interpolate(models[a_], models[b_], {"train": train, "test": test}, alphas=alphas, loss="bce")
                bar = it.barriers()
                key = f"{a_}-{b_}"
                arrays.update(it.to_arrays(f"pair{key}_"))
                meta["pairs"][key] = {"loss_barrier_train": bar["loss_barrier"]["train"],
                                      "loss_barrier_test": bar["loss_barrier"]["test"],
                                      "error_barrier_train": bar["error_barrier"]["train"],
                                      "error_barrier_test": bar["error_barrier"]["test"]}
            # the seeds' paths on their common PCA plane (centred: the seeds share no point)
            plane = pca_plane(seed_thetas, center=True)
            coords = [plane.project(t)[0] for t in seed_thetas]
            ext = grid_extent(np.concatenate(coords))
            surf = plane_surface(obj, plane, ext, cfg.grid)
            arrays.update(surf.to_arrays("surface_"))
            meta["fidelity"] = {}
            for s, c, t in zip(cfg.basin_seeds, coords, seed_thetas):
                arrays[f"seed{s}_coords"] = c
                meta["fidelity"][str(s)] = fidelity_summary(path_fidelity(obj, plane, t, surf), cfg.near)
            meta["plane_explained_variance_ratio"] = plane.explained_variance_ratio.tolist()
            meta["roughness"] = roughness(surf.loss)
            return arrays, meta

        basins = _stage(rd, "basins", compute_basins, progress, grids=PlaneSurface.grids("surface_"))

    # 5. regularisation and architecture
    variant_specs = {"base": (widths, 0.0), "l2": (widths, cfg.l2), "wide": ([cfg.wide], 0.0),
                     "deep": (list(cfg.deep), 0.0)}
    variants = {}
    for v in cfg.variants:
        vw, wd = variant_specs[v]

        def compute_variant(v=v, vw=vw, wd=wd):
            model, tj = _train_or_reuse(cfg, train, vw, cfg.basin_optimizer, lrs[cfg.basin_optimizer], cfg.seed,
                                        wd, v, progress, thetas if vw == widths else {}, steps)
            vobj = Objective(model, train, loss="bce")
            loss, acc = losses_at(vobj, tj.thetas[-1:])
            _, ta = losses_at(Objective(model, test, loss="bce"), tj.thetas[-1:])
            pca = pca_plane(tj.thetas)
            c = pca.project(tj.thetas)[0]
            s_pca = plane_surface(vobj, pca, grid_extent(c), cfg.grid)
            rnd = random_plane(model, seed=cfg.seed)
            s_rnd = plane_surface(vobj, rnd, ((-1.0, 1.0), (-1.0, 1.0)), cfg.grid)
            arrays = {**s_pca.to_arrays("pca_"), **s_rnd.to_arrays("random_"), "coords": c}
            meta = {"widths": [2, *vw, 1], "weight_decay": wd, "params": int(tj.thetas.shape[1]),
                    "final_loss": float(loss[0]), "final_accuracy": float(acc[0]), "test_accuracy": float(ta[0]),
                    "roughness_random": roughness(s_rnd.loss), "roughness_pca": roughness(s_pca.loss),
                    "explained_variance_ratio": pca.explained_variance_ratio.tolist()}
            return arrays, meta

        variants[v] = _stage(rd, f"variant-{v}", compute_variant, progress,
                             grids={**PlaneSurface.grids("pca_"), **PlaneSurface.grids("random_")})

    # 6. figures, per-point tables, summary
    figs = []
    curves = {o: (steps[o], true_loss[o]) for o in opts}
    figs += P.plot_values(curves, rd.figures, "training_loss",
                          f"Full-batch training loss (BCE) at recorded steps, {arch} ReLU on two spirals ({len(train)} points)",
                          ylabel="mean BCE loss", threshold=threshold, log=False)
    from ..monitors import TrainingMonitor

    mons = {}
    for o, (a, m) in trajs.items():
        mon = TrainingMonitor(None, **{k: v for k, v in m["monitor"]["plateau_settings"].items()})
        mon.grad_norm, mon.weight_norm, mon.loss = list(a["grad_norm"]), list(a["weight_norm"]), list(a["batch_loss"])
        mons[o] = mon
    from ..monitors import detect_plateaus

    stalls_by_opt = {o: [(p.start, p.end) for p in detect_plateaus(a["loss"], window=cfg.plateau_window,
                                                                    threshold=cfg.plateau_threshold, steps=a["steps"])]
                     for o, (a, _) in trajs.items()}
    figs += P.plot_monitors(mons, rd.figures, title=f"{arch} on two spirals", plateaus=stalls_by_opt)

    def surface_of(a, prefix="surface_"):
        return PlaneSurface(a[f"{prefix}xs"], a[f"{prefix}ys"], a[f"{prefix}loss"], a[f"{prefix}accuracy"])

    a, m = planes["pca-shared"]
    evr = m["explained_variance_ratio"]
    figs += P.plot_plane_paths(surface_of(a), {o: a[f"{o}_coords"] for o in opts}, rd.figures, "paths_pca_shared",
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
            panels.append({"surface": surface_of(a), "paths": {o: a[f"{o}_coords"]},
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
    fdir = rd.subdir("fidelity")
    for key, (a, m) in planes.items():
        for o in m["paths"]:
            _write_csv(fdir / f"{key}__{o}.csv", steps[o], _fid(a, o))
    hcurves = {o: {"steps": harr[f"{o}_steps"], "min": harr[f"{o}_min"], "max": harr[f"{o}_max"],
                   "saddles": harr[f"{o}_saddles"]} for o in opts}
    figs += P.plot_hessian_extremes(hcurves, rd.figures, title=f"{arch}, exact Hessian")
    if basins is not None:
        a, m = basins
        figs += P.plot_interpolations({f"seed {k}": (a[f"pair{k}_alphas"], a[f"pair{k}_loss_train"]) for k in m["pairs"]},
                                      rd.figures, title=f"{cfg.basin_optimizer}, {arch}")
        evr = m["plane_explained_variance_ratio"]
        figs += P.plot_plane_paths(surface_of(a), {f"seed {s}": a[f"seed{s}_coords"] for s in cfg.basin_seeds},
                                   rd.figures, "paths_seeds",
                                   f"Paths from {len(cfg.basin_seeds)} initialisations on their PCA plane "
                                   f"(centred; PC1 {evr[0]:.1%}, PC2 {evr[1]:.1%})", origin_label="mean of all snapshots")
    if variants:
        panels = []
        for v, (a, m) in variants.items():
            r = m["roughness_random"]
            panels.append({"surface": surface_of(a, "random_"),
                           "title": f"{v}: {'-'.join(map(str, m['widths']))}"
                                    + (f", L2 {m['weight_decay']:g}" if m["weight_decay"] else "")
                                    + f"\nrandom plane: roughness {r['relative_smooth_diff']:.2e}, "
                                      f"convex {r['positive_curvature_share']:.2f}"})
        for v, (a, m) in variants.items():
            r = m["roughness_pca"]
            panels.append({"surface": surface_of(a, "pca_"), "paths": {v: a["coords"]},
                           "title": f"{v}: PCA plane with path\nroughness {r['relative_smooth_diff']:.2e}, "
                                    f"convex {r['positive_curvature_share']:.2f}"})
        figs += P.plot_plane_grid(panels, rd.figures, "variants",
                                  f"Training loss around the {cfg.basin_optimizer} solution of each variant: random "
                                  "filter-normalised plane, coordinates in [−1, 1] (top) and PCA plane (bottom)",
                                  ncols=len(variants))

    from ..monitors import detect_plateaus

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
        "model": f"MLP {arch} ReLU, one logit, binary cross-entropy", "params": space.numel,
        "n_train": len(train), "n_test": len(test), "steps": cfg.n_steps(), "batch_size": cfg.batch_size,
        "record_every": cfg.every, "threshold": threshold,
        "plateau_rule": f"full-batch loss variance / mean² below {cfg.plateau_threshold:g} over "
                        f"{cfg.plateau_window} snapshots ({cfg.plateau_window * cfg.every} steps)",
        "threshold_note": f"steps_to_threshold: first recorded step (every {cfg.every}) whose full-batch training loss "
                          f"is below {threshold:g}; null if never",
        "near_threshold": cfg.near,
        "optimizers": per_opt, "surfaces": surfaces,
        "projection_match": _projection_match(planes, opts),
        "basins": basins[1] if basins is not None else None,
        "variants": {v: m for v, (_, m) in variants.items()},
        "gif": gif_note, "figures": figs,
    }


def _fid(a: dict, o: str) -> dict:
    return {k: a[f"{o}_{k}"] for k in ("coords", "distance", "rel_distance", "sin_angle", "true_loss", "plane_loss",
                                       "surface_loss")}


def _write_csv(path, steps, f) -> None:
    rows = ["step,x,y,true_loss,surface_loss,plane_loss,distance,rel_distance,sin_angle"]
    for i, s in enumerate(steps):
        rows.append(f"{int(s)},{f['coords'][i, 0]:.8g},{f['coords'][i, 1]:.8g},{f['true_loss'][i]:.8g},"
                    f"{f['surface_loss'][i]:.8g},{f['plane_loss'][i]:.8g},{f['distance'][i]:.8g},"
                    f"{f['rel_distance'][i]:.8g},{f['sin_angle'][i]:.8g}")
    from ..atomic import write_text

    write_text(path, "\n".join(rows) + "\n")


def _projection_match(planes: dict, opts: list[str]) -> dict:
    """Near vs far points, pooled over the paths of each kind of plane."""
    out = {}
    all_rel, all_d = [], []
    for group, keys in (("pca-shared", ["pca-shared"]), ("pca-own", [f"pca-{o}" for o in opts]),
                        ("random", [f"random-{o}" for o in opts])):
        near_d, far_d, rel_all, d_all, below = [], [], [], [], []
        thr = None
        for key in keys:
            a, m = planes[key]
            for o in m["paths"]:
                f = _fid(a, o)
                thr = m["fidelity"][o]["near_threshold"]
                ok = np.isfinite(f["surface_loss"])
                d = np.abs(f["true_loss"] - f["surface_loss"])
                near_d += list(d[ok & (f["rel_distance"] <= thr)])
                far_d += list(d[ok & (f["rel_distance"] > thr)])
                rel_all += list(f["rel_distance"][ok])
                d_all += list(d[ok])
                below += list((f["true_loss"] < f["surface_loss"])[ok & (f["rel_distance"] > 0)])
        corr = float(np.corrcoef(rel_all, d_all)[0, 1]) if len(d_all) > 2 and np.std(d_all) > 0 else None
        all_rel.append(np.asarray(rel_all))
        all_d.append(np.asarray(d_all))
        out[group] = {"near_threshold": thr, "n_near": len(near_d), "n_far": len(far_d),
                      "median_abs_diff_near": float(np.median(near_d)) if near_d else None,
                      "median_abs_diff_far": float(np.median(far_d)) if far_d else None,
                      "max_abs_diff_near": float(np.max(near_d)) if near_d else None,
                      "max_abs_diff_far": float(np.max(far_d)) if far_d else None,
                      "corr_rel_distance_abs_diff": corr,
                      # off the plane the optimiser usually sits lower than the contour under it
                      "share_true_below_contour": float(np.mean(below)) if below else None}
    rel, d = np.concatenate(all_rel), np.concatenate(all_d)
    edges = [0.0, 0.01, 0.03, 0.1, 0.3, np.inf]
    bins = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (rel >= lo) & (rel < hi) if lo > 0 else (rel < hi)
        bins.append({"rel_distance_from": lo, "rel_distance_to": None if np.isinf(hi) else hi, "n": int(m.sum()),
                     "median_abs_diff": float(np.median(d[m])) if m.any() else None,
                     "p90_abs_diff": float(np.quantile(d[m], 0.9)) if m.any() else None})
    out["by_distance"] = bins
    return out


def _stall_text(plateaus: list[dict]) -> str:
    return ", ".join(f"{p['start']}–{p['end']}" for p in plateaus) or "none"


def _fmt(v, spec=".4f"):
    return "—" if v is None else format(v, spec)


def _report_spiral(s: dict) -> str:
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
        L.append(f"| {names[g]} | {r['n_near']} | {_fmt(r['median_abs_diff_near'])} | {_fmt(r['max_abs_diff_near'])} | "
                 f"{r['n_far']} | {_fmt(r['median_abs_diff_far'])} | {_fmt(r['max_abs_diff_far'])} | "
                 f"{_fmt(r['corr_rel_distance_abs_diff'], '.2f')} | {_fmt(r['share_true_below_contour'], '.0%')} |")
    L += ["", "All planes pooled, by distance from the plane (relative to the window's half-width):", "",
          "| distance / half-width | points | median \\|true − contour\\| | 90th percentile |", "|---|---|---|---|"]
    for b in pm["by_distance"]:
        hi = "∞" if b["rel_distance_to"] is None else f"{b['rel_distance_to']:g}"
        L.append(f"| {b['rel_distance_from']:g} – {hi} | {b['n']} | {_fmt(b['median_abs_diff'])} | "
                 f"{_fmt(b['p90_abs_diff'])} |")
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
                  + ", ".join(f"{k}: {_fmt(v['all'].get('median_abs_diff_surface'))}" for k, v in fid.items())
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


# --- CLI -----------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..cli.common import add_out, finite_float, positive_int
    from ..toy import TOYS

    p.add_argument("--dataset", default=None, metavar="spiral|toy:NAME",
                   help="spiral (a 2-16-1 ReLU network on two spirals, default) or an analytic function: "
                        + ", ".join(f"toy:{k}" for k in TOYS))
    add_out(p, default="runs/optimizers")
    p.add_argument("--config", metavar="FILE.toml",
                   help="TOML file with any of: " + ", ".join(f.name for f in dataclasses.fields(OptimizersConfig)))
    p.add_argument("--optimizers", metavar="A,B,...",
                   help="comma-separated optimisers; spiral: " + ", ".join(NET_OPTIMIZERS)
                        + " (default sgd,momentum,adam,rmsprop; gd is full-batch SGD); toy: gd, sgd, momentum, "
                          "nesterov, rmsprop, adam, annealing, grid (default: all)")
    p.add_argument("--lr", action="append", metavar="NAME=LR", help="learning rate of one optimiser (repeatable)")
    p.add_argument("--steps", type=positive_int, help="optimiser steps (default: 3000 spiral, 300 toy)")
    p.add_argument("--seed", type=int, help="initialisation seed (spiral) or gradient-noise seed (toy) (default: 0)")
    p.add_argument("--threshold", type=finite_float,
                   help="loss threshold for steps_to_threshold (default: 0.2 for spiral, the function's own for toy)")
    p.add_argument("--grid", type=positive_int, help="surface grid points per axis (default: 41)")
    p.add_argument("--no-gif", dest="gif", action="store_false", default=None,
                   help="do not write the animated GIF (it is written when Pillow is installed)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run in seconds: spiral 300 steps on 200 points, 11×11 grids, 2 seeds; toy 60 steps "
                        "(keys set in --config and flags still win)")


def run_cli(args) -> int:
    dataset = args.dataset
    if dataset is None and args.config is None:
        dataset = "spiral"
    base = config_mod.load(OptimizersConfig, args.config) if args.config else None  # validates the file
    if dataset is None and base is not None:
        dataset = base.dataset
    is_toy = bool(dataset and dataset.startswith("toy:"))
    overrides = (dict(QUICK_TOY) if is_toy else dict(QUICK)) if args.quick else {}
    if args.config:  # what the file sets wins over the --quick presets; flags win over both
        import tomllib

        with open(args.config, "rb") as f:
            for key in tomllib.load(f):
                overrides.pop(key, None)
    flags = {"dataset": dataset, "steps": args.steps, "seed": args.seed, "threshold": args.threshold,
             "grid": args.grid, "gif": args.gif,
             "optimizers": [o.strip() for o in args.optimizers.split(",") if o.strip()] if args.optimizers else None,
             "lrs": args.lr}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    cfg = config_mod.load(OptimizersConfig, args.config, overrides)
    s = run(args.out, cfg, force=args.force)
    for o, r in s["optimizers"].items():
        acc = f", accuracy {r['final_accuracy']:.1%}" if r.get("final_accuracy") is not None else ""
        print(f"{o:10s} final loss {r['final_loss']:.5g}{acc}, steps to threshold "
              f"{r['steps_to_threshold'] if r['steps_to_threshold'] is not None else 'never'}")
    if "projection_match" in s:
        for g, r in s["projection_match"].items():
            if g == "by_distance":
                continue
            print(f"{g:10s} |true − contour| median near the plane {_fmt(r['median_abs_diff_near'])} "
                  f"({r['n_near']} points), far {_fmt(r['median_abs_diff_far'])} ({r['n_far']} points)")
    print(f"wrote {args.out}/report.md ({s['seconds']:.0f} s)")
    return 0
