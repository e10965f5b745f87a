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

from dataclasses import dataclass, field

from lossprobe.errors import UserError
from lossprobe.runtime.config import comma_list, finite_float, positive_int, seed_int
from lossprobe.runtime.threads import torch_threads
from lossprobe.studies import optimizers_spiral, optimizers_spiral_report, optimizers_toy
from lossprobe.studies.base import Context, Preset, Stage, Study, array_stage, option, run_stage, run_study
from lossprobe.studies.optimizers_spiral_report import fmt
from lossprobe.trajectories.toy import OPTIMIZERS, TOYS, get_toy

NET_OPTIMIZERS = ("sgd", "gd", "momentum", "nesterov", "rmsprop", "adam", "adamw", "adagrad")
NET_DEFAULT_OPTIMIZERS = ["sgd", "momentum", "adam", "rmsprop"]
VARIANTS = ("base", "l2", "wide", "deep")


def _dataset_help() -> str:
    return ("spiral (a 2-16-1 ReLU network on two spirals, default) or an analytic function: "
            + ", ".join(f"toy:{k}" for k in TOYS))


@dataclass
class OptimizersConfig:
    dataset: str = option("spiral", flag="--dataset", metavar="spiral|toy:NAME", help=_dataset_help)  # spiral | toy:NAME
    optimizers: list[str] = option(  # empty: the dataset's default set
        default_factory=list, flag="--optimizers", type=comma_list, metavar="A,B,...",
        help="comma-separated optimisers; spiral: " + ", ".join(NET_OPTIMIZERS)
             + " (default sgd,momentum,adam,rmsprop; gd is full-batch SGD); toy: gd, sgd, momentum, "
               "nesterov, rmsprop, adam, annealing, grid (default: all)")
    lrs: list[str] = option(default_factory=list, flag="--lr", action="append", metavar="NAME=LR",  # e.g. ["adam=0.02"]
                            help="learning rate of one optimiser (repeatable)")
    steps: int | None = option(None, flag="--steps", type=positive_int,
                               help="optimiser steps (default: 3000 spiral, 300 toy)")
    seed: int = option(0, flag="--seed", type=seed_int,
                       help="initialisation seed (spiral) or gradient-noise seed (toy) (default: 0)")
    data_seed: int = 0  # spiral data and minibatch order
    threshold: float | None = option(None, flag="--threshold", type=finite_float,
                                     help="loss threshold for steps_to_threshold (default: 0.2 for spiral, the "
                                          "function's own for toy)")
    # --- spiral -------------------------------------------------------------------------
    n_points: int = 200  # per class
    spiral_noise: float = 0.1
    turns: float = 1.5
    hidden: list[int] = field(default_factory=lambda: [16])
    batch_size: int = 32
    every: int = 30  # record θ every k steps
    grid: int = option(41, flag="--grid", type=positive_int, help="surface grid points per axis (default: 41)")
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
    gif: bool = option(True, flag="--no-gif", action="store_false",
                       help="do not write the animated GIF (it is written when Pillow is installed)")
    threads: int = 1  # torch CPU threads; networks this small run fastest on one

    def __post_init__(self):
        if self.dataset != "spiral" and not self.dataset.startswith("toy:"):
            raise UserError(f"unknown dataset '{self.dataset}'; use spiral or toy:NAME (e.g. toy:rosenbrock)")
        if self.is_toy:
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
            return list(OPTIMIZERS)
        return list(NET_DEFAULT_OPTIMIZERS)

    def n_steps(self) -> int:
        return self.steps if self.steps is not None else (300 if self.is_toy else 3000)


QUICK = {"steps": 300, "every": 10, "n_points": 100, "grid": 11, "basin_seeds": [0, 1], "hessian_checkpoints": 4,
         "gif": False}
QUICK_TOY = {"steps": 60, "gif": False}


# --- the study ------------------------------------------------------------------------------
def _stage(rd, name: str, compute, progress: bool, grids: dict | None = None, plots=None):
    """Run (or reload) one stage whose outputs are (arrays, meta) on `rd` outside a study run:
    `compute()` returns them (see `lossprobe.studies.base.array_stage`)."""
    return run_stage(Context(None, rd, progress), array_stage(name, lambda ctx: compute(), grids=grids, plots=plots))


def _part(cfg: OptimizersConfig):
    """The module with the stages of the dataset: optimizers_toy or optimizers_spiral."""
    return optimizers_toy if cfg.is_toy else optimizers_spiral


def _inputs(ctx) -> dict:
    return _part(ctx.cfg).inputs(ctx)


def _stages(cfg: OptimizersConfig) -> list[Stage]:
    return _part(cfg).stages(cfg) + [Stage("report", _report, resume=False)]


def _report(ctx) -> dict:
    summary = ctx.out["summary"]
    summary["seconds"] = ctx.elapsed()
    ctx.rd.save_json("summary.json", summary)
    ctx.rd.write_text("report.md", optimizers_toy.report(summary) if ctx.cfg.is_toy else optimizers_spiral_report.report(summary))
    return summary


def _threads(cfg: OptimizersConfig):
    # A 2-16-1 network is far too small to split across threads: on a loaded machine the
    # synchronisation costs 10-40× (measured: 300 Adam steps 0.37 s on 1 thread, 16 s on 2).
    return torch_threads(cfg.threads)


def _cli_lines(s: dict, out) -> list[str]:
    lines = []
    for o, r in s["optimizers"].items():
        acc = f", accuracy {r['final_accuracy']:.1%}" if r.get("final_accuracy") is not None else ""
        lines.append(f"{o:10s} final loss {r['final_loss']:.5g}{acc}, steps to threshold "
                     f"{r['steps_to_threshold'] if r['steps_to_threshold'] is not None else 'never'}")
    for g, r in s.get("projection_match", {}).items():
        if g == "by_distance":
            continue
        lines.append(f"{g:10s} |true − contour| median near the plane {fmt(r['median_abs_diff_near'])} "
                     f"({r['n_near']} points), far {fmt(r['median_abs_diff_far'])} ({r['n_far']} points)")
    return lines + [f"wrote {out}/report.md ({s['seconds']:.0f} s)"]


STUDY = Study(
    name="optimizers",
    config=OptimizersConfig, stages=_stages, inputs=_inputs, cli_lines=_cli_lines, wrap=_threads,
    prepare=lambda cfg: {"init": cfg.seed, "data": cfg.data_seed, "basins": cfg.basin_seeds},
    presets=(Preset("quick", lambda given: QUICK_TOY if given.is_toy else QUICK,
                    "a smoke run in seconds: spiral 300 steps on 200 points, 11×11 grids, 2 seeds; toy 60 steps "
                    "(keys set in --config and flags still win)"),),
    reopen_complete=True,
)


def run(out, config: OptimizersConfig | None = None, force: bool = False, progress: bool = True) -> dict:
    """Run the optimiser study into directory `out` and return its summary dict."""
    return run_study(STUDY, out, config, force=force, progress=progress)
