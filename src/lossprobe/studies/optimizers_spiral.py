"""The optimiser study on the two-spiral network: training and analysis stages.

Stages (each saved as NAME.npz + NAME.json, see `lossprobe.studies.base.array_stage`):
    train-<optimizer>     the trajectory of each optimiser from one initialisation
    plane-<kind>          a plane (shared PCA, each run's own PCA, a random plane through each end),
                          the surface on it and the fidelity of every drawn point
    hessian               λ_min and λ_max at checkpoints of every run
    basins                several seeds, the lines between their solutions, their common plane
    variant-<name>        L2-penalised, wider and deeper networks: the roughness of their surfaces

The figures, the per-point CSV tables and the summary are in `optimizers_spiral_report`.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from lossprobe.connectivity.paths import interpolate
from lossprobe.core.objective import Objective
from lossprobe.core.space import ParamSpace
from lossprobe.data import two_spirals
from lossprobe.landscape.surfaces import plane_grids
from lossprobe.models import mlp
from lossprobe.results import plotspec
from lossprobe.results.plotspec import Series
from lossprobe.studies import optimizers_spiral_report as report
from lossprobe.studies.base import Stage, array_stage
from lossprobe.training.checkpoints import save_checkpoint
from lossprobe.trajectories.trajectory import (
    Plane,
    Trajectory,
    fidelity_summary,
    grid_extent,
    hessian_extremes,
    losses_at,
    near_saddles,
    path_fidelity,
    pca_plane,
    plane_surface,
    roughness,
    train_trajectory,
)

NET_LR = {"sgd": 0.1, "gd": 0.5, "momentum": 0.05, "nesterov": 0.05, "rmsprop": 0.005, "adam": 0.01,
          "adamw": 0.01, "adagrad": 0.1}
NET_THRESHOLD = 0.2


def _spiral_data(cfg):
    train = two_spirals(cfg.n_points, cfg.spiral_noise, cfg.turns, seed=cfg.data_seed, name="spiral-train")
    test = two_spirals(cfg.n_points, cfg.spiral_noise, cfg.turns, seed=cfg.data_seed + 1000, name="spiral-test")
    return train, test


def _net(widths, seed):
    return mlp([2, *widths, 1], seed=seed)


def _train(cfg, train, widths, optimizer, lr, seed, weight_decay=0.0, label=None, progress=False):
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

        model = _net(widths, seed)
        ParamSpace(model).load_into(model, thetas[optimizer][-1].to(next(model.parameters()).dtype))
        return model.eval(), Trajectory(label, steps[optimizer], thetas[optimizer], None, {"reused": optimizer})
    return _train(cfg, train, widths, optimizer, lr, seed, weight_decay=weight_decay, label=label, progress=progress)



def inputs(ctx) -> dict:
    """The data, the reference network and objectives every spiral stage shares."""
    cfg = ctx.cfg
    train, test = _spiral_data(cfg)
    widths = list(cfg.hidden)
    ref_model = _net(widths, cfg.seed)
    return {"train": train, "test": test, "widths": widths, "opts": cfg.optimizer_list(),
            "lrs": {**NET_LR, **cfg.lr_overrides()},
            "threshold": cfg.threshold if cfg.threshold is not None else NET_THRESHOLD,
            "ref_model": ref_model, "space": ParamSpace(ref_model), "obj": Objective(ref_model, train, loss="bce"),
            "obj_test": Objective(ref_model, test, loss="bce"), "ckdir": ctx.rd.subdir("checkpoints"),
            "arch": "-".join(str(w) for w in [2, *widths, 1])}


def surface_plots(prefix: str, what: str) -> list:
    """Loss and accuracy on a plane grid saved by `Surface.to_arrays(prefix)`: rows are y, columns x."""
    kw = dict(rows=f"{prefix}ys", cols=f"{prefix}xs", xlabel="x (plane direction 1)", ylabel="y (plane direction 2)")
    return [plotspec.surface(f"Training loss on {what}", f"{prefix}loss", zlabel="mean BCE loss", **kw),
            plotspec.surface(f"Training accuracy on {what}", f"{prefix}accuracy", zlabel="accuracy", **kw)]


# --- 1. training runs from one initialisation ----------------------------------------------
def _train_stage(o: str) -> Stage:
    def compute(ctx):
        cfg, x = ctx.cfg, ctx.inputs
        model, tj = _train(cfg, x["train"], x["widths"], o, x["lrs"][o], cfg.seed, progress=ctx.progress)
        save_checkpoint(model, x["ckdir"] / f"{o}.safetensors")
        loss, acc = losses_at(x["obj"], tj.thetas)
        tl, ta = losses_at(x["obj_test"], tj.thetas[-1:])
        mon = tj.monitor
        return ({"steps": tj.steps, "thetas": tj.thetas.numpy(), "loss": loss, "accuracy": acc,
                 "grad_norm": np.asarray(mon.grad_norm), "weight_norm": np.asarray(mon.weight_norm),
                 "batch_loss": np.asarray(mon.loss)},
                {"config": tj.config, "test_loss": float(tl[0]), "test_accuracy": float(ta[0]),
                 "monitor": mon.summary()})

    plots = [plotspec.line(f"{o}: full-batch training loss at the recorded steps", "steps",
                           [Series("loss", "training loss (BCE)")], xlabel="step", ylabel="mean BCE loss"),
             plotspec.line(f"{o}: full-batch training accuracy at the recorded steps", "steps",
                           [Series("accuracy", "training accuracy")], xlabel="step", ylabel="accuracy")]
    return array_stage(f"train-{o}", compute, plots=plots)


def _paths(ctx) -> dict:
    """The recorded trajectories of the training stages: thetas, steps and true losses per optimiser."""
    trajs = {o: ctx.out[f"train-{o}"] for o in ctx.inputs["opts"]}
    return {"trajs": trajs, "thetas": {o: torch.from_numpy(a["thetas"]) for o, (a, _) in trajs.items()},
            "steps": {o: a["steps"] for o, (a, _) in trajs.items()},
            "true_loss": {o: a["loss"] for o, (a, _) in trajs.items()}}


# --- 2. planes, surfaces and the fidelity of every drawn point -----------------------------
def _plane_stage(key: str, make_plane, paths: list[str], minimum: float = 0.0) -> Stage:
    """`make_plane(ctx)` builds the plane (only when the stage is computed)."""
    def compute(ctx):
        cfg, obj, p = ctx.cfg, ctx.inputs["obj"], ctx.out["paths"]
        plane = make_plane(ctx)
        coords = np.concatenate([plane.project(p["thetas"][o])[0] for o in paths])
        ext = grid_extent(coords, minimum=minimum)
        surf = plane_surface(obj, plane, ext, cfg.grid)
        arrays = {**surf.to_arrays("surface_"), "origin": plane.origin.numpy(),
                  "directions": plane.directions.numpy()}
        meta = {"kind": plane.kind, "note": plane.note, "paths": list(paths), "extent": ext,
                "explained_variance_ratio": None if plane.explained_variance_ratio is None
                else plane.explained_variance_ratio.tolist(),
                "roughness": roughness(surf.loss), "fidelity": {}}
        for o in paths:
            f = path_fidelity(obj, plane, p["thetas"][o], surf, true_loss=p["true_loss"][o])
            for k, v in f.items():
                arrays[f"{o}_{k}"] = v
            meta["fidelity"][o] = fidelity_summary(f, cfg.near)
        x = ctx.inputs
        x["space"].load_into(x["ref_model"], obj.theta0)  # a random plane moved it to a run's end
        return arrays, meta

    return array_stage(f"plane-{key}", compute, grids=plane_grids("surface_"),
                       plots=surface_plots("surface_", f"the {key} plane"))


def _shared_pca(ctx):
    opts, thetas = ctx.inputs["opts"], ctx.out["paths"]["thetas"]
    return pca_plane([thetas[o] for o in opts], origin=thetas[opts[0]][0].to(torch.float64))


def _own_pca(o: str):
    return lambda ctx: pca_plane(ctx.out["paths"]["thetas"][o])


def _random_through_end(o: str):
    def make(ctx):
        x = ctx.inputs
        # filter-normalised at the run's final point: the reference network sits there until
        # the plane stage ends (it then returns to the common initialisation)
        x["space"].load_into(x["ref_model"], ctx.out["paths"]["thetas"][o][-1])
        return Plane.random(x["ref_model"], seed=ctx.cfg.seed)

    return make


# --- 3. curvature along training -----------------------------------------------------------
def _hessian(ctx):
    cfg, x, p = ctx.cfg, ctx.inputs, ctx.out["paths"]
    obj, steps, thetas = x["obj"], p["steps"], p["thetas"]
    arrays, meta = {}, {}
    for o in x["opts"]:
        idx = np.unique(np.linspace(0, len(steps[o]) - 1, cfg.hessian_checkpoints).round().astype(int))
        h = hessian_extremes(x["ref_model"], x["train"], thetas[o][idx], loss="bce")
        gn = np.array([float(obj.loss_and_grad(thetas[o][i].to(obj.space.dtype))[1].norm()) for i in idx])
        sad = near_saddles(h["min"], h["max"], gn)
        arrays.update({f"{o}_steps": steps[o][idx], f"{o}_min": h["min"], f"{o}_max": h["max"],
                       f"{o}_grad_norm": gn, f"{o}_saddles": sad})
        meta[o] = {"method": h["method"], "near_saddle_steps": steps[o][idx][sad].tolist(),
                   "min_final": float(h["min"][-1]), "max_final": float(h["max"][-1]),
                   "min_lowest": float(h["min"].min()), "max_highest": float(h["max"].max())}
    return arrays, meta


def _hessian_plots(arrays: dict) -> list:
    opts = [k[:-len("_steps")] for k in arrays if k.endswith("_steps")]
    return [plotspec.line(f"{o}: extreme Hessian eigenvalues along training", f"{o}_steps",
                          [Series(f"{o}_min", "λ_min"), Series(f"{o}_max", "λ_max")], xlabel="step",
                          ylabel="Hessian eigenvalue") for o in opts]


# --- 4. initialisation and basins ----------------------------------------------------------
def _basins(ctx):
    cfg, x, p = ctx.cfg, ctx.inputs, ctx.out["paths"]
    obj, obj_test, train, test = x["obj"], x["obj_test"], x["train"], x["test"]
    models, arrays, meta = {}, {}, {"seeds": cfg.basin_seeds, "optimizer": cfg.basin_optimizer,
                                    "final_loss": [], "final_accuracy": [], "test_accuracy": [], "pairs": {}}
    seed_thetas = []
    for s in cfg.basin_seeds:
        model, tj = _train_or_reuse(cfg, train, x["widths"], cfg.basin_optimizer, x["lrs"][cfg.basin_optimizer], s,
                                    0.0, f"seed {s}", ctx.progress, p["thetas"], p["steps"])
        save_checkpoint(model, x["ckdir"] / f"seed{s}.safetensors")
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


def _basin_plots(arrays: dict) -> list:
    pairs = [k[len("pair"):-len("_alphas")] for k in arrays if k.startswith("pair") and k.endswith("_alphas")]
    return [plotspec.line(f"Loss between the solutions of seeds {k}", f"pair{k}_alphas",
                          [Series(f"pair{k}_loss_train", "train"), Series(f"pair{k}_loss_test", "test", dash=True)],
                          xlabel=f"α (0: seed {k.split('-')[0]}, 1: seed {k.split('-')[1]})", ylabel="mean BCE loss")
            for k in pairs] + surface_plots("surface_", "the seeds' common PCA plane")


# --- 5. regularisation and architecture ----------------------------------------------------
def _variant_stage(v: str, vw: list[int], wd: float) -> Stage:
    def compute(ctx):
        cfg, x, p = ctx.cfg, ctx.inputs, ctx.out["paths"]
        train, test = x["train"], x["test"]
        model, tj = _train_or_reuse(cfg, train, vw, cfg.basin_optimizer, x["lrs"][cfg.basin_optimizer], cfg.seed,
                                    wd, v, ctx.progress, p["thetas"] if vw == x["widths"] else {}, p["steps"])
        vobj = Objective(model, train, loss="bce")
        loss, acc = losses_at(vobj, tj.thetas[-1:])
        _, ta = losses_at(Objective(model, test, loss="bce"), tj.thetas[-1:])
        pca = pca_plane(tj.thetas)
        c = pca.project(tj.thetas)[0]
        s_pca = plane_surface(vobj, pca, grid_extent(c), cfg.grid)
        rnd = Plane.random(model, seed=cfg.seed)
        s_rnd = plane_surface(vobj, rnd, ((-1.0, 1.0), (-1.0, 1.0)), cfg.grid)
        arrays = {**s_pca.to_arrays("pca_"), **s_rnd.to_arrays("random_"), "coords": c}
        meta = {"widths": [2, *vw, 1], "weight_decay": wd, "params": int(tj.thetas.shape[1]),
                "final_loss": float(loss[0]), "final_accuracy": float(acc[0]), "test_accuracy": float(ta[0]),
                "roughness_random": roughness(s_rnd.loss), "roughness_pca": roughness(s_pca.loss),
                "explained_variance_ratio": pca.explained_variance_ratio.tolist()}
        return arrays, meta

    return array_stage(f"variant-{v}", compute, grids={**plane_grids("pca_"), **plane_grids("random_")},
                       plots=surface_plots("pca_", f"variant {v}'s PCA plane")
                       + surface_plots("random_", f"a random plane through variant {v}'s solution"))


def stages(cfg) -> list[Stage]:
    """Training and analysis, in the order they run; then the figures, tables and summary."""
    opts = cfg.optimizer_list()
    widths = list(cfg.hidden)
    variant_specs = {"base": (widths, 0.0), "l2": (widths, cfg.l2), "wide": ([cfg.wide], 0.0),
                     "deep": (list(cfg.deep), 0.0)}
    return (
        [_train_stage(o) for o in opts]
        + [Stage("paths", _paths, resume=False),
           _plane_stage("pca-shared", _shared_pca, opts)]
        + [_plane_stage(f"pca-{o}", _own_pca(o), [o]) for o in opts]
        + [_plane_stage(f"random-{o}", _random_through_end(o), [o], minimum=1.0) for o in opts]
        + [array_stage("hessian", _hessian, plots=_hessian_plots)]
        + ([array_stage("basins", _basins, grids=_surface_grids(), plots=_basin_plots)] if cfg.basin_seeds else [])
        + [_variant_stage(v, *variant_specs[v]) for v in cfg.variants]
        + [Stage("figures", report.figures, resume=False), Stage("tables", report.write_tables, resume=False),
           Stage("summary", report.summary, resume=False)]
    )


def _surface_grids():
    return plane_grids("surface_")
