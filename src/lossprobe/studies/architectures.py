"""Architecture study: a plain MLP (A) against a small CNN with BatchNorm and dropout (B).

Question: two architectures trained under identical conditions on Fashion-MNIST reach
different accuracies. Does the better-generalising one also sit in a flatter region,
by the measures people use: curvature (top eigenvalues, Hessian trace), robustness to
weight noise, and the shape of 1-D loss slices?

Both models see the same training split, batch order, optimiser, learning rate,
schedule, epochs and batch size; only the architecture differs. Curvature is measured
on a fixed subset of training images (eval mode), noise robustness and slices on fixed
subsets of the training and validation splits; every random draw is seeded.

Stages, each saved as it finishes so that rerunning the same command resumes:
    train-A, train-B   training (itself resumable per epoch)
    curvature-A/B      top eigenvalues (Lanczos) and trace (Hutch++, per layer)
    noise              accuracy and loss under relative Gaussian weight noise
    slices             1-D loss slices along filter-normalised random directions
    report             figures, summary.json, report.md
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from lossprobe.core.directions import random_direction
from lossprobe.core.objective import Objective
from lossprobe.curvature import hessian, sharpness
from lossprobe.errors import UserError
from lossprobe.figures.curvature import (
    plot_curvature_comparison,
    plot_generalization_gap,
    plot_layer_traces,
    plot_noise_robustness,
    plot_slices,
)
from lossprobe.figures.training import plot_learning_curves
from lossprobe.models import build
from lossprobe.results import plotspec
from lossprobe.runtime.config import finite_float, positive_int
from lossprobe.runtime.threads import torch_threads
from lossprobe.studies.base import Preset, Stage, Study, fashion_splits, option, run_study
from lossprobe.training.checkpoints import load_checkpoint, save_checkpoint
from lossprobe.training.loop import History, TrainConfig, evaluate_model, fit

# Validation accuracies the published study with this design reports (MLP / CNN with BN and dropout).
TARGETS = {"A": 0.8769, "B": 0.9132}


@dataclass
class ArchitecturesConfig:
    model_a: str = option("mlp:784-256-256-10", flag="--model-a", metavar="SPEC",
                          help="model A (default: mlp:784-256-256-10)")
    model_b: str = option("cnn:32-64:bn:dropout=0.25", flag="--model-b", metavar="SPEC",
                          help="model B (default: cnn:32-64:bn:dropout=0.25)")
    init_seed: int = 0
    data_seed: int = 0
    optimizer: str = "adam"
    lr: float = option(2e-3, flag="--lr", type=finite_float, help="peak learning rate of both (default: 0.002)")
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int = option(6, flag="--epochs", type=positive_int, help="training epochs of both models (default: 6)")
    batch_size: int = 128
    eval_batch_size: int = 256  # CPU: small evaluation batches avoid huge conv activations (measured 1.7× faster than 4096)
    schedule: str = "cosine"
    n_val: int = 10_000
    split_seed: int = 0
    train_subset: int | None = None  # train on a seeded subset of the train split
    eval_subset: int | None = None  # evaluate val/test on seeded subsets
    hessian_subset: int = option(2000, flag="--hessian-subset", type=positive_int, metavar="N",
                                 help="training images for the Hessian (default: 2000)")
    top_k: int = 3
    trace_products: int = 30
    noise_sigmas: list[float] = option(default_factory=lambda: [0.05, 0.1, 0.2, 0.3, 0.5])
    noise_draws: int = 3
    probe_subset: int = 2000  # images (train and val) for noise robustness and slices
    slice_steps: int = 21
    slice_span: float = 1.0
    seed: int = 0  # seed of probe vectors, noise draws and slice directions
    threads: int | None = option(None, flag="--threads", type=positive_int, metavar="T",
                                 help="torch threads (default: torch's choice)")

    def __post_init__(self):
        for k in ("epochs", "eval_batch_size", "hessian_subset", "top_k", "trace_products", "noise_draws", "probe_subset", "slice_steps"):
            if int(getattr(self, k)) <= 0:
                raise UserError(f"{k} must be positive, got {getattr(self, k)}")
        if self.trace_products < 3:
            raise UserError(f"trace_products must be at least 3 (Hutch++), got {self.trace_products}")
        for k in ("train_subset", "eval_subset"):
            v = getattr(self, k)
            if v is not None and v <= 0:
                raise UserError(f"{k} must be positive, got {v}")
        if not self.noise_sigmas or any(not s >= 0 for s in self.noise_sigmas):
            raise UserError(f"noise_sigmas must be non-negative numbers, got {self.noise_sigmas}")
        if not self.slice_span > 0:
            raise UserError(f"slice_span must be positive, got {self.slice_span}")
        if self.slice_steps % 2 == 0:
            raise UserError(f"slice_steps must be odd so that 0 is on the grid, got {self.slice_steps}")
        if self.threads is not None and self.threads <= 0:
            raise UserError(f"threads must be positive, got {self.threads}")

    def train_config(self):
        return TrainConfig(optimizer=self.optimizer, lr=self.lr, momentum=self.momentum,
                           weight_decay=self.weight_decay, epochs=self.epochs, batch_size=self.batch_size,
                           schedule=self.schedule, data_seed=self.data_seed, eval_batch_size=self.eval_batch_size)


QUICK = {"epochs": 1, "train_subset": 2000, "eval_subset": 500, "model_a": "mlp:784-32-10",
         "model_b": "cnn:4-8:bn:dropout=0.25:hidden=16", "hessian_subset": 200, "top_k": 2, "trace_products": 9,
         "noise_sigmas": [0.1, 0.5], "noise_draws": 2, "probe_subset": 200, "slice_steps": 5}


SPECS = ("A", "B")


def _specs(cfg: ArchitecturesConfig) -> dict:
    return {"A": cfg.model_a, "B": cfg.model_b}


def _prepare(cfg: ArchitecturesConfig) -> dict:
    for s in _specs(cfg).values():
        build(s)  # reject a bad spec before touching the output directory
    return {"init": cfg.init_seed, "data": cfg.data_seed, "split": cfg.split_seed, "probes": cfg.seed}


def _inputs(ctx) -> dict:
    cfg = ctx.cfg
    train, val, test = fashion_splits(cfg)
    return {"train": train, "val": val, "test": test, "h_data": train.subset(min(cfg.hessian_subset, len(train)), 3),
            "p_train": train.subset(min(cfg.probe_subset, len(train)), 4),
            "p_val": val.subset(min(cfg.probe_subset, len(val)), 5)}


def _train(ctx, key: str):
    rd, cfg, train = ctx.rd, ctx.cfg, ctx.inputs["train"]
    spec = _specs(cfg)[key]
    model = build(spec, seed=cfg.init_seed)
    ctx.say(f"training {key} = {spec} ({cfg.epochs} epochs on {len(train)} images)")
    ckdir = rd.subdir("checkpoints")
    hist = fit(model, train, ctx.inputs["val"], cfg.train_config(), checkpoint_dir=ckdir / key, progress=ctx.progress)
    save_checkpoint(model, ckdir / f"model_{key}.safetensors")
    rd.save_json(f"history_{key}.json", hist.to_dict())
    return model.eval(), hist


def _load_trained(ctx, key: str):
    model = build(_specs(ctx.cfg)[key], seed=ctx.cfg.init_seed)
    load_checkpoint(model, ctx.rd / "checkpoints" / f"model_{key}.safetensors")
    return model.eval(), History.from_dict(ctx.rd.load_json(f"history_{key}.json"))


def _model(ctx, key: str):
    return ctx.out[f"train-{key}"][0]


def _curvature(ctx, key: str) -> dict:
    """Top eigenvalues (Lanczos) and trace (Hutch++, per layer) on the Hessian subset."""
    cfg, h_data = ctx.cfg, ctx.inputs["h_data"]
    ctx.say(f"curvature of {key}: top {cfg.top_k} eigenvalues and trace on {len(h_data)} training images")
    obj = Objective(_model(ctx, key), h_data, batch_size=len(h_data))
    eig = hessian.eigenvalues(obj, k=cfg.top_k, seed=cfg.seed, progress=ctx.progress)
    tr = hessian.trace(obj, matvecs=cfg.trace_products, seed=cfg.seed, progress=ctx.progress)
    ctx.rd.save_json(f"curvature_{key}.json", {
        "eigenvalues": eig.values, "residuals": eig.residuals, "hvp_eigenvalues": eig.matvecs,
        "converged": eig.converged, "trace": tr.trace, "trace_stderr": tr.stderr, "hvp_trace": tr.matvecs,
        "layer_traces": {k: {"trace": v[0], "stderr": v[1]} for k, v in tr.blocks.items()},
    })
    return ctx.rd.load_json(f"curvature_{key}.json")


def _noise(ctx) -> dict:
    """Accuracy and loss under relative Gaussian weight noise, on the validation probe subset."""
    cfg, p_val = ctx.cfg, ctx.inputs["p_val"]
    ctx.say(f"noise robustness: σ {cfg.noise_sigmas} × {cfg.noise_draws} draws on {len(p_val)} validation images")
    res, arrays, plots = {}, {}, []
    for key in SPECS:
        obj = Objective(_model(ctx, key), p_val, batch_size=cfg.eval_batch_size)
        r = sharpness.noise_robustness(obj, sigmas=cfg.noise_sigmas, draws=cfg.noise_draws, seed=cfg.seed,
                                       progress=ctx.progress)
        res[key] = r.to_dict()
        arrays.update(r.to_arrays(f"{key}_"))
        plots += [dataclasses.replace(p, title=f"model {key}: {p.title}") for p in r.plots(f"{key}_")]
    ctx.rd.save_arrays("noise.npz", plots=plots, **arrays)
    ctx.rd.save_json("noise.json", res)
    return ctx.rd.load_json("noise.json")


def _slices(ctx) -> dict:
    """1-D loss slices along a filter-normalised random direction through each model."""
    cfg, p_train, p_val = ctx.cfg, ctx.inputs["p_train"], ctx.inputs["p_val"]
    ctx.say(f"1-D slices: {cfg.slice_steps} points in [−{cfg.slice_span}, {cfg.slice_span}] on "
            f"{len(p_train)} train / {len(p_val)} validation images")
    slices = {}
    for key in SPECS:
        model = _model(ctx, key)
        d = _filter_direction(model, cfg.seed)
        alphas = np.linspace(-cfg.slice_span, cfg.slice_span, cfg.slice_steps)
        alphas[cfg.slice_steps // 2] = 0.0
        sl = {"alphas": alphas, "loss": {}, "accuracy": {}}
        for name, split in (("train", p_train), ("validation", p_val)):
            ev = Objective(model, split, batch_size=cfg.eval_batch_size).evaluate(alphas, directions=d,
                                                                                  progress=ctx.progress)
            sl["loss"][name], sl["accuracy"][name] = ev.loss, ev.accuracy
        slices[key] = sl
    arrays = {}
    for key, sl in slices.items():
        arrays[f"{key}_alphas"] = sl["alphas"]
        arrays.update({f"{key}_{what}_{split}": v for what in ("loss", "accuracy") for split, v in sl[what].items()})
    ctx.rd.save_arrays("slices.npz", plots=_slice_plots(slices), **arrays)
    ctx.rd.save_json("slices.json", slices)
    return ctx.rd.load_json("slices.json")


def _slice_plots(slices: dict) -> list:
    """Loss and accuracy along each model's slice, train solid and validation dashed."""
    out = []
    for key, sl in slices.items():
        for what in ("loss", "accuracy"):
            series = [plotspec.Series(f"{key}_{what}_{s}", s, group=s, dash=s != "train") for s in sl[what]]
            out.append(plotspec.line(f"model {key}: {what} along a filter-normalised random direction", f"{key}_alphas",
                                     series, xlabel="step along the direction (0 = the trained model)", ylabel=what))
    return out


def _evaluate(ctx) -> dict:
    return {k: evaluate_model(_model(ctx, k), ctx.inputs["test"], batch_size=ctx.cfg.eval_batch_size)[1]
            for k in SPECS}


def _stages(cfg: ArchitecturesConfig) -> list[Stage]:
    json_stage = lambda name, fn, file: Stage(name, fn, load=lambda ctx: ctx.rd.load_json(file),  # noqa: E731
                                               files=(file,))
    return (
        [Stage(f"train-{k}", lambda ctx, k=k: _train(ctx, k), load=lambda ctx, k=k: _load_trained(ctx, k),
               files=(f"checkpoints/model_{k}.safetensors", f"history_{k}.json")) for k in SPECS]
        + [json_stage(f"curvature-{k}", lambda ctx, k=k: _curvature(ctx, k), f"curvature_{k}.json") for k in SPECS]
        + [json_stage("noise", _noise, "noise.json"), json_stage("slices", _slices, "slices.json"),
           Stage("evaluate", _evaluate, resume=False), Stage("report", _report, resume=False)]
    )


def _report(ctx) -> dict:
    rd, cfg = ctx.rd, ctx.cfg
    specs = _specs(cfg)
    train, val, test, h_data, p_train, p_val = (ctx.inputs[k] for k in ("train", "val", "test", "h_data", "p_train",
                                                                        "p_val"))
    histories = {k: ctx.out[f"train-{k}"][1] for k in SPECS}
    curv = {k: ctx.out[f"curvature-{k}"] for k in SPECS}
    noise, slices, test_acc = ctx.out["noise"], ctx.out["slices"], ctx.out["evaluate"]
    labels = {"A": f"A: {cfg.model_a}", "B": f"B: {cfg.model_b}"}
    data_desc = f"Fashion-MNIST ({len(train)} train images)"
    figs = plot_learning_curves({labels[k]: h for k, h in histories.items()}, rd.figures, title=data_desc)
    figs += plot_generalization_gap({labels[k]: h for k, h in histories.items()}, rd.figures, title=data_desc)
    figs += plot_noise_robustness({labels[k]: noise[k] for k in specs}, rd.figures,
                                  title=f"{len(p_val)} validation images, {cfg.noise_draws} draws")
    figs += plot_slices({k: slices[k] for k in specs}, rd.figures,
                        title=f"{len(p_train)} train / {len(p_val)} validation images")
    figs += plot_curvature_comparison({k: {"top_eigenvalue": curv[k]["eigenvalues"][0], "trace": curv[k]["trace"],
                                           "trace_stderr": curv[k]["trace_stderr"]} for k in specs},
                                      rd.figures, title=f"Hessian on {len(h_data)} training images")
    for k in specs:
        figs += plot_layer_traces({n: (v["trace"], v["stderr"]) for n, v in curv[k]["layer_traces"].items()},
                                  rd.figures, title=f"{k} on {len(h_data)} training images", name=f"layer_traces_{k}")

    val_acc = {k: h.val_accuracy[-1] for k, h in histories.items()}
    train_acc = {k: h.train_accuracy[-1] for k, h in histories.items()}
    # seconds of the computing stages (as computed, possibly in an earlier call), named as in the report
    timing = {name.replace("-", "_"): ctx.seconds[name] for name in
              [f"train-{k}" for k in SPECS] + [f"curvature-{k}" for k in SPECS] + ["noise", "slices"]
              if name in ctx.seconds}
    timing["total"] = sum(timing.values()) + 0.0
    wall = time.perf_counter() - ctx.started
    summary = {
        "study": "architectures",
        "models": specs,
        "val_accuracy": val_acc,
        "test_accuracy": test_acc,
        "train_accuracy": train_acc,
        "generalization_gap": {k: train_acc[k] - val_acc[k] for k in specs},
        "generalization_gap_per_epoch": {k: h.generalization_gap for k, h in histories.items()},
        "top_eigenvalue": {k: curv[k]["eigenvalues"][0] for k in specs},
        "eigenvalues": {k: curv[k]["eigenvalues"] for k in specs},
        "residuals": {k: curv[k]["residuals"] for k in specs},
        "trace": {k: curv[k]["trace"] for k in specs},
        "trace_stderr": {k: curv[k]["trace_stderr"] for k in specs},
        "noise_robustness": {"sigmas": cfg.noise_sigmas, "A": noise["A"]["accuracy_mean"], "B": noise["B"]["accuracy_mean"],
                             "A_std": noise["A"]["accuracy_std"], "B_std": noise["B"]["accuracy_std"],
                             "clean": {k: noise[k]["clean_accuracy"] for k in specs}},
        "slice_loss_rise_at_span": {k: _slice_rise(slices[k]) for k in specs},
        "targets_val_accuracy": TARGETS,
        "meets_targets": {k: val_acc[k] >= TARGETS[k] for k in specs},
        "n": {"train": len(train), "val": len(val), "test": len(test), "hessian": len(h_data), "probe": len(p_val)},
        "seconds": {"stages": timing, "this_call": wall},
        "training_seconds_per_epoch": {k: (histories[k].seconds[-1] - histories[k].seconds[0]) / max(len(histories[k].epoch) - 1, 1)
                                       for k in specs},
    }
    rd.save_json("summary.json", summary)
    _write_report(rd, cfg, summary, figs)
    return summary


def _filter_direction(model, seed: int):
    """A filter-normalised random direction (Li et al. 2018)."""
    return random_direction(model, seed=seed, norm="filter").vector


def _slice_rise(sl: dict) -> dict:
    """Mean over α = ±span of the train loss minus the loss at α = 0 (a crude width measure)."""
    loss = np.asarray(sl["loss"]["train"], float)
    return float((loss[0] + loss[-1]) / 2 - loss[len(loss) // 2])


def _write_report(rd, cfg: ArchitecturesConfig, s: dict, figures: list[str]) -> None:
    A, B = "A", "B"
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    flatter = B if s["top_eigenvalue"][B] < s["top_eigenvalue"][A] and s["trace"][B] < s["trace"][A] else (
        A if s["top_eigenvalue"][A] < s["top_eigenvalue"][B] and s["trace"][A] < s["trace"][B] else "neither model clearly")
    robust = B if np.mean(s["noise_robustness"][B]) > np.mean(s["noise_robustness"][A]) else A
    better = B if s["val_accuracy"][B] >= s["val_accuracy"][A] else A
    worse = A if better == B else B
    wider = B if s["slice_loss_rise_at_span"][B] < s["slice_loss_rise_at_span"][A] else A
    st = s["seconds"]["stages"]
    lines = [
        "# Architecture study: plain MLP (A) vs CNN with BatchNorm and dropout (B)",
        "",
        f"Both models were trained on Fashion-MNIST ({s['n']['train']} training images) under identical "
        f"conditions: {cfg.optimizer}, lr {cfg.lr}, {cfg.schedule} schedule, {cfg.epochs} epochs, batch "
        f"{cfg.batch_size}, weight decay {cfg.weight_decay}, init seed {cfg.init_seed}, data seed {cfg.data_seed}.",
        f"A = `{cfg.model_a}` (no normalisation, no regularisation); B = `{cfg.model_b}`.",
        "",
        "| | A (MLP) | B (CNN + BN + dropout) |",
        "|---|---|---|",
        f"| train accuracy (eval mode) | {pct(s['train_accuracy'][A])} | {pct(s['train_accuracy'][B])} |",
        f"| validation accuracy | {pct(s['val_accuracy'][A])} | {pct(s['val_accuracy'][B])} |",
        f"| published validation accuracy | {pct(TARGETS[A])} | {pct(TARGETS[B])} |",
        f"| test accuracy | {pct(s['test_accuracy'][A])} | {pct(s['test_accuracy'][B])} |",
        f"| generalisation gap (train − val) | {pct(s['generalization_gap'][A])} | {pct(s['generalization_gap'][B])} |",
        f"| top Hessian eigenvalue λ₁ | {s['top_eigenvalue'][A]:.4g} | {s['top_eigenvalue'][B]:.4g} |",
        f"| Hessian trace (Hutch++, ±1 s.e.) | {s['trace'][A]:.4g} ± {s['trace_stderr'][A]:.2g} | "
        f"{s['trace'][B]:.4g} ± {s['trace_stderr'][B]:.2g} |",
        f"| residual ‖Hv−λ₁v‖ | {s['residuals'][A][0]:.1e} | {s['residuals'][B][0]:.1e} |",
        f"| train-loss rise at α = ±{cfg.slice_span} on the slice | {s['slice_loss_rise_at_span'][A]:.4g} | "
        f"{s['slice_loss_rise_at_span'][B]:.4g} |",
        f"| seconds per training epoch | {s['training_seconds_per_epoch'][A]:.0f} | {s['training_seconds_per_epoch'][B]:.0f} |",
        "",
        "Validation accuracy under relative Gaussian weight noise (σ × each filter's norm; mean ± std over "
        f"{cfg.noise_draws} seeded draws, {s['n']['probe']} validation images):",
        "",
        "| σ | " + " | ".join(f"{x:g}" for x in s["noise_robustness"]["sigmas"]) + " |",
        "|---" * (len(s["noise_robustness"]["sigmas"]) + 1) + "|",
    ]
    for k in (A, B):
        m, sd = s["noise_robustness"][k], s["noise_robustness"][f"{k}_std"]
        lines.append(f"| {k} | " + " | ".join(f"{100 * a:.1f} ± {100 * b:.1f}" for a, b in zip(m, sd)) + " |")
    lines += [
        "",
        f"**Reading.** {better} generalises better (validation {pct(s['val_accuracy'][better])} vs "
        f"{pct(s['val_accuracy'][worse])}). By the top eigenvalue and the trace, {flatter} sits in the flatter "
        f"region; under filter-relative weight noise, {robust} keeps more of its accuracy (mean over σ); along the "
        f"filter-normalised slice, {wider} has the smaller loss rise. So in this run better generalisation "
        + ("goes with" if flatter == better else "does not go with") + " lower curvature. Two caveats: "
        "curvature is not scale-invariant — BatchNorm makes B's loss invariant to the scale of the weights "
        "before each normalisation, so B's eigenvalues can be changed by rescaling without changing the "
        "function (Dinh et al. 2017); and in eval mode B's BatchNorm uses running statistics recorded without "
        "noise, so noise in the convolution weights also shifts the activations away from those statistics, "
        "which adds to B's sensitivity under weight noise.",
        "",
        f"Hessian on {s['n']['hessian']} training images in eval mode (Lanczos with full reorthogonalisation; "
        f"Hutch++ with {cfg.trace_products} products). Time: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in st.items()) + ".",
        "",
    ]
    captions = {
        "learning_curves": "Learning curves: loss and accuracy on the whole training split (eval mode, solid) and validation (dashed).",
        "generalization_gap": "Generalisation gap (train minus validation accuracy) per epoch.",
        "noise_robustness": "Accuracy and loss under Gaussian weight noise relative to each filter's norm, mean ± std over seeded draws.",
        "slices_1d": "Loss and accuracy along a filter-normalised random direction through each trained model (α = 0).",
        "curvature": "Top Hessian eigenvalue and Hessian trace (±1 standard error) of each model.",
        "layer_traces_A": "Per-layer Hessian trace of A (±1 s.e.).",
        "layer_traces_B": "Per-layer Hessian trace of B (±1 s.e.).",
    }
    for name in figures:
        lines += [f"![{captions.get(name, name)}](figures/{name}.png)", "", captions.get(name, ""), ""]
    rd.write_text("report.md", "\n".join(lines))


# --- the study --------------------------------------------------------------------------
def _cli_lines(s: dict, out) -> list[str]:
    return [f"validation accuracy A {s['val_accuracy']['A']:.2%} (target {TARGETS['A']:.2%}), "
            f"B {s['val_accuracy']['B']:.2%} (target {TARGETS['B']:.2%}); test A {s['test_accuracy']['A']:.2%}, "
            f"B {s['test_accuracy']['B']:.2%}",
            f"top eigenvalue A {s['top_eigenvalue']['A']:.4g}, B {s['top_eigenvalue']['B']:.4g}; "
            f"trace A {s['trace']['A']:.4g}, B {s['trace']['B']:.4g}",
            f"wrote {out}/report.md ({s['seconds']['this_call']:.0f} s)"]


def _threads(cfg: ArchitecturesConfig):
    return torch_threads(cfg.threads)


STUDY = Study(
    name="architectures",
    config=ArchitecturesConfig, stages=_stages, prepare=_prepare, inputs=_inputs, cli_lines=_cli_lines, wrap=_threads,
    presets=(Preset("quick", QUICK, "a smoke run in seconds: tiny models, 1 epoch on 2000 images, small probe subsets"
                    " (keys set in --config, and flags, win over it)"),),
)


def run(out, config: ArchitecturesConfig | None = None, force: bool = False, progress: bool = True) -> dict:
    """Run the study into directory `out` and return its summary dict."""
    return run_study(STUDY, out, config, force=force, progress=progress)
