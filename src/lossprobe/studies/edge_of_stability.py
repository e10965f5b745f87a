"""Edge of stability: full-batch training of an MLP on a fixed Fashion-MNIST subset, the sharpness
tracked against 2/η (Cohen et al. 2021) and, for Adam, the preconditioned sharpness against
(2 + 2β₁)/((1 − β₁)η) = 38/η (Cohen et al. 2022).

For each optimiser (gradient descent; Adam), each loss (MSE on one-hot targets, cross-entropy)
and each step size, the MLP is trained from the same initialisation on all `n_train` images in
one batch per step, and `lossprobe.track.Tracker` measures λ_max of the Hessian (GD) or of
P^-1/2 H P^-1/2 (Adam) every `every` steps on the same images. The summary states per run the
mean of sharpness/threshold over the last third of training (≈ 1 at the edge of stability) and
the first step where the sharpness reached 0.95 of the threshold (where progressive sharpening
ended).

Stages, each saved as it finishes (rerunning resumes):
    <optimizer>-<loss>-<i>   one training run with its tracker history (runs/<name>.npz)
    report                   sharpness figures per optimiser and loss, summary.json, report.md
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from lossprobe.core.losses import criterion
from lossprobe.data import fashion_mnist
from lossprobe.errors import UserError
from lossprobe.models import build
from lossprobe.results.drawing import plot_declared
from lossprobe.results.plotspec import Series, line
from lossprobe.runtime.config import positive_float, positive_int
from lossprobe.runtime.threads import torch_threads
from lossprobe.studies.base import Preset, Stage, Study, option, run_study
from lossprobe.track import Tracker, TrackHistory, edge_of_stability

LOSSES = ("mse", "cross_entropy")
OPTIMIZERS = ("gd", "adam")
REACH = 0.95
LOSS_POINTS = 500


@dataclass
class EdgeOfStabilityConfig:
    model: str = option("mlp:784-200-200-10:tanh", flag="--model", metavar="SPEC",
                        help="model spec (default: mlp:784-200-200-10:tanh, Cohen et al.'s fully connected tanh net)")
    n_train: int = option(2000, flag="--n-train", type=positive_int, metavar="N",
                          help="training images, all in every step (default 2000)")
    losses: list[str] = option(default_factory=lambda: list(LOSSES), flag="--losses", nargs="+", choices=LOSSES,
                               help="losses (default: mse cross_entropy); mse is on one-hot targets")
    optimizers: list[str] = option(default_factory=lambda: list(OPTIMIZERS), flag="--optimizers", nargs="+",
                                   choices=OPTIMIZERS, help="gd (full-batch gradient descent) and/or adam")
    step_sizes: list[float] = option(default_factory=lambda: [2 / 15, 2 / 12.5, 2 / 10], flag="--step-sizes",
                                     nargs="+", type=positive_float, metavar="ETA",
                                     help="gradient descent step sizes (default: 2/15 2/12.5 2/10)")
    adam_lrs: list[float] = option(default_factory=lambda: [5e-4, 1e-3, 2e-3], flag="--adam-lrs", nargs="+",
                                   type=positive_float, metavar="ETA", help="Adam learning rates (default: 5e-4 1e-3 2e-3)")
    steps: int = option(2000, flag="--steps", type=positive_int, help="training steps per run (default 2000)")
    every: int = option(20, flag="--every", type=positive_int, help="steps between measurements (default 20)")
    seed: int = 0  # initialisation seed (the same for every run)
    subset_seed: int = 0
    n_val: int = 10_000
    split_seed: int = 0
    tol: float = 1e-3
    adam_betas: list[float] = option(default_factory=lambda: [0.9, 0.999])
    threads: int | None = option(1, flag="--threads", type=positive_int, metavar="T",
                                 help="torch threads (default 1: these small models train fastest on one thread "
                                 "when other work shares the cores)")

    def __post_init__(self):
        if not self.losses or any(x not in LOSSES for x in self.losses):
            raise UserError(f"losses must be among {list(LOSSES)}, got {self.losses}")
        if not self.optimizers or any(x not in OPTIMIZERS for x in self.optimizers):
            raise UserError(f"optimizers must be among {list(OPTIMIZERS)}, got {self.optimizers}")
        for name in ("step_sizes", "adam_lrs"):
            v = getattr(self, name)
            if any(not (isinstance(x, (int, float)) and math.isfinite(x) and x > 0) for x in v):
                raise UserError(f"{name} must be positive numbers, got {v}")
        if ("gd" in self.optimizers and not self.step_sizes) or ("adam" in self.optimizers and not self.adam_lrs):
            raise UserError("give at least one step size for each optimiser run (--step-sizes, --adam-lrs)")
        if self.steps < 3 * self.every:
            raise UserError(f"steps ({self.steps}) must be at least three measurements (3 × every = {3 * self.every})")
        if not 0 < self.tol < 1:
            raise UserError(f"tol must be in (0, 1), got {self.tol}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise UserError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}")

    def runs(self) -> list[tuple[str, str, str, int, float]]:
        """(name, optimizer, loss, index, step size) of every training run, in order."""
        out = []
        for opt in self.optimizers:
            rates = self.step_sizes if opt == "gd" else self.adam_lrs
            for loss in self.losses:
                for i, lr in enumerate(rates):
                    out.append((f"{opt}-{_short(loss)}-{i}", opt, loss, i, float(lr)))
        return out


def _short(loss: str) -> str:
    return {"mse": "mse", "cross_entropy": "ce"}[loss]


QUICK = {"model": "mlp:784-100-100-10:tanh", "n_train": 500, "steps": 250, "every": 25,
         "step_sizes": [0.2, 0.22, 0.24], "adam_lrs": [2e-3, 4e-3, 8e-3]}


# --- stages --------------------------------------------------------------------------------
def _prepare(cfg) -> dict:
    build(cfg.model)
    return {"init": cfg.seed, "subset": cfg.subset_seed, "split": cfg.split_seed}


def _inputs(ctx) -> dict:
    cfg = ctx.cfg
    train = fashion_mnist(n_val=cfg.n_val, split_seed=cfg.split_seed).train.subset(cfg.n_train, seed=cfg.subset_seed)
    x, y = train.x, train.y
    return {"data": {"mse": (x, torch.nn.functional.one_hot(y, 10).to(x.dtype)), "cross_entropy": (x, y)}}


def _train(ctx, name: str, opt_name: str, loss: str, lr: float) -> dict:
    cfg = ctx.cfg
    data = ctx.inputs["data"][loss]
    model = build(cfg.model, seed=cfg.seed)
    model.train()
    if opt_name == "gd":
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        probes = ("lambda_max",)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr, betas=tuple(cfg.adam_betas))
        probes = ("preconditioned_lambda_max",)
    crit = criterion(loss, model=model)
    tracker = Tracker(model, data, loss=loss, every=cfg.every, probes=probes, optimizer=opt, tol=cfg.tol,
                      seed=cfg.seed, quiet=True)
    losses = np.full(cfg.steps + 1, np.nan)
    diverged = None
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, desc=name, unit="step", leave=False, dynamic_ncols=True, disable=not ctx.progress)
    try:
        tracker.step(0)
        for t in range(1, cfg.steps + 2):
            terms = crit(model, data)
            loss_t = terms.loss / terms.count
            losses[t - 1] = float(loss_t.detach())
            if not torch.isfinite(loss_t) or losses[t - 1] > 1e6:
                diverged = t - 1
                break
            if t > cfg.steps:
                break
            opt.zero_grad(set_to_none=True)
            loss_t.backward()
            opt.step()
            tracker.step(t)
            bar.update(1)
    finally:
        bar.close()
    h = tracker.history
    seconds = time.perf_counter() - t0
    meta = {**h.meta, "name": name, "optimizer": opt_name, "loss_name": loss, "lr": lr, "diverged_at": diverged,
            "seconds": seconds}
    ctx.rd.subdir("runs")
    ctx.rd.save_arrays(f"runs/{name}.npz", **h.to_arrays(), train_loss=losses)
    ctx.rd.save_json(f"runs/{name}.json", meta)
    return _load_run(ctx, name)


def _load_run(ctx, name: str) -> dict:
    arrays = ctx.rd.load_arrays(f"runs/{name}.npz")
    meta = ctx.rd.load_json(f"runs/{name}.json")
    train_loss = arrays.pop("train_loss")
    return {"history": TrackHistory.from_arrays(arrays, meta), "train_loss": train_loss, "meta": meta}


def _row(run: dict, cfg) -> dict:
    h, meta = run["history"], run["meta"]
    key, ref = ("lambda_max", "two_over_lr") if meta["optimizer"] == "gd" else ("preconditioned_lambda_max", "threshold")
    eos = edge_of_stability(h["step"], h[key], h[ref], prefix="s", reach=REACH)
    thr = float(h[ref][0])
    finite = run["train_loss"][np.isfinite(run["train_loss"])]
    warm = h["warm"] == 1 if "warm" in h else None
    mv = h["lambda_max_matvecs"] if "lambda_max_matvecs" in h else h["preconditioned_matvecs"]
    # the edge-of-stability phase: from the end of progressive sharpening to the last step at which
    # the full-batch loss went up (with cross-entropy the sharpness falls once the loss is tiny)
    rises = np.flatnonzero(np.diff(finite) > 0) + 1
    start, end = eos["s_reached_step"], (int(rises[-1]) if len(rises) else None)
    phase = None
    if start is not None and end is not None and end > start:
        sel = (h["step"] >= start) & (h["step"] <= end) & np.isfinite(h[key])
        if sel.any():
            phase = float(np.mean(h[key][sel] / h[ref][sel]))
    return {"optimizer": meta["optimizer"], "loss": meta["loss_name"], "lr": meta["lr"], "threshold": thr,
            "edge_phase": [start, end] if phase is not None else None, "sharpness_over_threshold_edge_phase": phase,
            "threshold_kind": "2/η" if meta["optimizer"] == "gd" else "(2+2β₁)/((1−β₁)η)",
            "sharpness": key, "sharpness_initial": _num(h[key][np.isfinite(h[key])][0]) if np.isfinite(h[key]).any() else None,
            "sharpness_over_threshold_last_third": eos["s_over_threshold_last_third"],
            "sharpening_ended_step": eos["s_reached_step"], "sharpness_max": eos["s_max"],
            "train_loss_initial": _num(finite[0]) if finite.size else None,
            "train_loss_final": _num(finite[-1]) if finite.size else None,
            "loss_non_monotone_steps": int(np.sum(np.diff(finite) > 0)),
            "diverged_at": meta.get("diverged_at"), "measurements": len(h),
            "products_per_measurement": float(np.mean(mv)) if len(mv) else None, "seconds": meta.get("seconds")}


def _num(v):
    v = float(v)
    return v if math.isfinite(v) else None


def _group_arrays(ctx, opt: str, loss: str) -> tuple[dict, list]:
    """One file per optimiser and loss: the sharpness and its threshold per step size against the
    measured steps, and the training loss per step."""
    cfg = ctx.cfg
    runs = [(name, i, lr) for name, o, l, i, lr in cfg.runs() if o == opt and l == loss]
    key, ref = ("lambda_max", "two_over_lr") if opt == "gd" else ("preconditioned_lambda_max", "threshold")
    steps = np.arange(0, cfg.steps + 1, cfg.every)
    # the loss of every step lives in runs/<run>.npz; the figure gets at most ~500 points of it
    stride = max(1, cfg.steps // LOSS_POINTS)
    loss_steps = np.arange(0, cfg.steps + 1, stride)
    arrays = {"step": steps, "all_steps": loss_steps}
    sharp, thr, lossser = [], [], []
    for name, i, lr in runs:
        r = ctx.out[name]
        h = r["history"]
        s = np.full(len(steps), np.nan)
        idx = np.searchsorted(steps, h["step"])
        ok = (idx < len(steps)) & (steps[np.minimum(idx, len(steps) - 1)] == h["step"])
        s[idx[ok]] = h[key][ok]
        arrays[f"sharpness_{i}"] = s
        arrays[f"threshold_{i}"] = np.full(len(steps), float(h[ref][0]))
        arrays[f"train_loss_{i}"] = r["train_loss"][loss_steps]
        label = f"η = {lr:.4g}"
        sharp.append(Series(f"sharpness_{i}", label, group=label))
        thr.append(Series(f"threshold_{i}", f"{'2/η' if opt == 'gd' else '38/η'} (η = {lr:.4g})", group=label, dash=True))
        lossser.append(Series(f"train_loss_{i}", label, group=label))
    what = "λ_max of the Hessian" if opt == "gd" else "λ_max of P^-1/2 H P^-1/2 (Adam's preconditioner)"
    lname = {"mse": "MSE on one-hot targets", "cross_entropy": "cross-entropy"}[loss]
    opt_label = "full-batch gradient descent" if opt == "gd" else "full-batch Adam"
    specs = [line(f"{what}, {opt_label}, {lname}", "step", sharp + thr, xlabel="step", ylabel="sharpness"),
             line(f"training loss, {opt_label}, {lname}", "all_steps", lossser, xlabel="step",
                  ylabel="training loss", log_y=True)]
    return arrays, specs


def _report(ctx) -> dict:
    cfg, rd = ctx.cfg, ctx.rd
    rows = {name: _row(ctx.out[name], cfg) for name, *_ in cfg.runs()}
    figures = []
    for opt in cfg.optimizers:
        for loss in cfg.losses:
            arrays, specs = _group_arrays(ctx, opt, loss)
            fname = f"sharpness-{opt}-{_short(loss)}"
            rd.save_arrays(f"{fname}.npz", plots=specs, **arrays)
            figures += plot_declared(specs, arrays, rd.figures, fname.replace("-", "_"))
    summary = {
        "study": "edge-of-stability",
        "model": cfg.model, "n_train": cfg.n_train, "steps": cfg.steps, "every": cfg.every,
        "runs": rows,
        "over_threshold_last_third": {name: r["sharpness_over_threshold_last_third"] for name, r in rows.items()},
        "over_threshold_edge_phase": {name: r["sharpness_over_threshold_edge_phase"] for name, r in rows.items()},
        "sharpening_ended_step": {name: r["sharpening_ended_step"] for name, r in rows.items()},
        "verdict": _verdict(rows),
        "seconds": ctx.elapsed(),
    }
    rd.save_json("summary.json", summary)
    rd.write_text("report.md", _report_md(cfg, summary, figures))
    return summary


def _verdict(rows: dict) -> str:
    parts = []
    for opt in ("gd", "adam"):
        r = [v["sharpness_over_threshold_last_third"] for v in rows.values() if v["optimizer"] == opt
             and v["sharpness_over_threshold_last_third"] is not None and v["diverged_at"] is None]
        if r:
            what = "λ_max/(2/η)" if opt == "gd" else "preconditioned λ_max/(38/η)"
            ph = [v["sharpness_over_threshold_edge_phase"] for v in rows.values() if v["optimizer"] == opt
                  and v["sharpness_over_threshold_edge_phase"] is not None]
            edge = f", in the edge phase {min(ph):.2f}–{max(ph):.2f} ({len(ph)} runs)" if ph else ""
            parts.append(f"{opt}: {what} over the last third {min(r):.2f}–{max(r):.2f} across {len(r)} runs{edge}")
    return "; ".join(parts) or "no run finished"


def table(summary: dict) -> list[str]:
    """The summary as a markdown table (one row per run)."""
    lines = ["| run | optimizer | loss | η | threshold | sharpness at start | mean sharpness/threshold, last third "
             "| sharpening ended at step | mean sharpness/threshold, edge phase (steps) | max sharpness | final loss "
             "| loss rises (steps) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in summary["runs"].items():
        def f(v, fmt):
            return "—" if v is None else format(v, fmt)
        end = "diverged at %s" % r["diverged_at"] if r["diverged_at"] is not None else f(r["train_loss_final"], ".4g")
        ph = r.get("edge_phase")
        phase = "—" if ph is None else f"{r['sharpness_over_threshold_edge_phase']:.3f} ({ph[0]}–{ph[1]})"
        lines.append(f"| {name} | {r['optimizer']} | {r['loss']} | {r['lr']:.4g} | {r['threshold']:.4g} "
                     f"({r['threshold_kind']}) | {f(r['sharpness_initial'], '.4g')} | "
                     f"{f(r['sharpness_over_threshold_last_third'], '.3f')} | {f(r['sharpening_ended_step'], 'd')} | "
                     f"{phase} | {f(r['sharpness_max'], '.4g')} | {end} | {r['loss_non_monotone_steps']} |")
    return lines


def _report_md(cfg, s: dict, figures: list[str]) -> str:
    lines = [
        "# Edge of stability",
        "",
        f"`{cfg.model}` trained from one initialisation (seed {cfg.seed}) on {cfg.n_train} Fashion-MNIST training "
        f"images with the whole set in every step, for {cfg.steps} steps; the sharpness is measured every "
        f"{cfg.every} steps on the same images by `lossprobe.track.Tracker` (warm-started Lanczos, residual ≤ "
        f"{cfg.tol:g} × λ). Gradient descent is compared with 2/η, Adam's preconditioned sharpness "
        "λ_max(P^-1/2 H P^-1/2), P = diag(√v̂ + ε), with (2 + 2β₁)/((1 − β₁)η) (38/η at β₁ = 0.9).",
        "",
        f"**{s['verdict']}.**",
        "",
    ] + table(s) + [
        "",
        "*mean sharpness/threshold, last third*: the mean over the last third of the measurements (1 = at the "
        f"threshold). *sharpening ended*: the first measured step with sharpness ≥ {REACH} × threshold. *edge "
        "phase*: the mean of sharpness/threshold from there to the last step at which the training loss went up "
        "(the non-monotone phase; with cross-entropy the sharpness falls once the loss is small, after it). "
        "*loss rises*: steps at which the full-batch training loss went up (none for a stable descent).",
        "",
        "## Compared with the published results",
        "",
        "Cohen et al. (2021, *Gradient descent on neural networks typically occurs at the edge of stability*) "
        "report, for full-batch gradient descent on fully connected tanh networks (CIFAR-10 subsets of 5k images, "
        "MSE and cross-entropy), that the sharpness rises (progressive sharpening) until it reaches 2/η and then "
        "hovers at or just above 2/η while the loss keeps decreasing non-monotonically; smaller η reach it later; "
        "with cross-entropy the sharpness eventually falls below 2/η late in training as the loss goes to zero. "
        "Cohen et al. (2022, *Adaptive gradient methods at the edge of stability*) report the same for full-batch "
        "Adam with the preconditioned sharpness and the threshold 38/η. The ratios in the table are the number "
        "to compare: ≈ 1 where this run reached the edge, < 1 where it did not within its steps (or fell "
        "below it late, as cross-entropy does).",
        "",
    ]
    for name in figures:
        lines += [f"![sharpness and threshold per step size, and the training loss]({f'figures/{name}.png'})", ""]
    lines += [f"The study took {s['seconds']:.0f} s. Per-run arrays: `runs/<run>.npz` (the tracker history and the "
              "training loss per step).", ""]
    return "\n".join(lines)


def _stages(cfg) -> list[Stage]:
    stages = [Stage(name, lambda ctx, n=name, o=o, l=l, lr=lr: _train(ctx, n, o, l, lr),
                    load=lambda ctx, n=name: _load_run(ctx, n), files=(f"runs/{name}.npz", f"runs/{name}.json"))
              for name, o, l, i, lr in cfg.runs()]
    return stages + [Stage("report", _report, resume=False)]


def _cli_lines(s: dict, out) -> list[str]:
    return [s["verdict"], f"wrote {out}/report.md ({s['seconds']:.0f} s)"]


STUDY = Study(
    name="edge-of-stability",
    config=EdgeOfStabilityConfig, stages=_stages, prepare=_prepare, inputs=_inputs, cli_lines=_cli_lines,
    wrap=lambda cfg: torch_threads(cfg.threads),
    presets=(Preset("quick", QUICK, "a smoke run under a minute: MLP 784-100-100-10 on 500 images, 250 steps "
                    "(keys set in --config, and flags, win over it)"),),
)


def run(out, config: EdgeOfStabilityConfig | None = None, force: bool = False, progress: bool = True) -> dict:
    """Run the study into directory `out` and return its summary dict."""
    return run_study(STUDY, out, config, force=force, progress=progress)
