"""Two-seed basin study: train one MLP from two initialisation seeds, then interpolate.

Question: two runs that differ only in their random initialisation reach the same
accuracy. Do they lie in one basin (no barrier on the straight line between them)?

Stages, each saved as it finishes so that rerunning the same command resumes:
    train-<seed>   training of each network (itself resumable per epoch)
    interpolate    loss and accuracy along α on the full train and test splits
    connectivity   the aligned line, aligned + REPAIR, a trained Bezier curve (two_seeds_connectivity)
    surfaces       2-D surfaces around each solution and through both and A's init (two_seeds_surfaces)
    report         figures, summary.json, report.md (every run)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lossprobe.connectivity.paths import PathEvaluation, interpolate
from lossprobe.errors import UserError
from lossprobe.figures.paths import plot_interpolation
from lossprobe.figures.training import plot_learning_curves
from lossprobe.models import build
from lossprobe.results import plotspec
from lossprobe.runtime.config import positive_int, seed_int
from lossprobe.studies import two_seeds_connectivity as connectivity
from lossprobe.studies import two_seeds_surfaces as surfaces
from lossprobe.studies.base import Preset, Stage, Study, fashion_splits, option, recipe, run_study
from lossprobe.training.checkpoints import load_checkpoint, save_checkpoint
from lossprobe.training.loop import History, TrainConfig, evaluate_model, fit

BARRIER_TOLERANCE = 0.02  # Frankle et al. (2020) call an error barrier under 2% "linearly connected"


@dataclass
class TwoSeedsConfig:
    model: str = option("mlp:784-256-256-10", flag="--model", metavar="SPEC",
                        help="model spec (default: mlp:784-256-256-10)")
    seeds: list[int] = option(default_factory=lambda: [0, 1], flag="--seeds", type=seed_int, nargs=2, metavar=("A", "B"),
                              help="the two initialisation seeds (default: 0 1)")
    data_seed: int = 0
    different_data_order: bool = option(False, flag="--different-data-order", action="store_true",
                                        help="also give the second run a different data order (default: same order)")
    optimizer: str = recipe("optimizer", "adam")
    lr: float = recipe("lr", 1e-3)
    momentum: float = 0.9
    weight_decay: float = recipe("weight_decay", 0.0)
    epochs: int = option(12, flag="--epochs", type=positive_int, help="training epochs per network (default: 12)")
    batch_size: int = 128
    schedule: str = recipe("schedule", "cosine")
    warmup_epochs: float = recipe("warmup_epochs", 0.0)
    augment: str = recipe("augment", "none")
    crop_padding: int = recipe("crop_padding", 4)
    n_val: int = 10_000
    split_seed: int = 0
    train_subset: int | None = None  # train on a seeded subset of the train split
    eval_subset: int | None = None  # evaluate val/test/interpolation on seeded subsets
    alphas: int = 41
    bn: str = "interpolate"
    barrier_tolerance: float = BARRIER_TOLERANCE
    surface_steps: int = 21  # surfaces stage: grid points per axis (two_seeds_surfaces)
    surface_subset: int = 2000  # surfaces stage: test images
    curve_epochs: int = connectivity.CURVE_EPOCHS  # connectivity stage: training epochs of the Bezier bend

    def __post_init__(self):
        self.train_config(0)  # the recipe is valid (one line otherwise)
        if len(self.seeds) != 2 or self.seeds[0] == self.seeds[1]:
            raise UserError(f"seeds must be two different integers, got {self.seeds}")
        if self.alphas < 5 or (self.alphas - 1) % 4:
            raise UserError(f"alphas must be 5, 9, 13, ... (alphas−1 a multiple of 4), got {self.alphas}")
        if self.bn not in ("interpolate", "recompute"):
            raise UserError(f"bn must be 'interpolate' or 'recompute', got '{self.bn}'")
        if self.surface_steps < 1 or self.surface_subset < 1:
            raise UserError(f"surface_steps and surface_subset must be positive, got {self.surface_steps}, {self.surface_subset}")
        if self.curve_epochs < 1:
            raise UserError(f"curve_epochs must be positive, got {self.curve_epochs}")
        for k in ("train_subset", "eval_subset"):
            v = getattr(self, k)
            if v is not None and v <= 0:
                raise UserError(f"{k} must be positive, got {v}")
        if self.n_val < 1:
            raise UserError(f"n_val must be positive, got {self.n_val}")
        if not 0 <= self.barrier_tolerance < 1:
            raise UserError(f"barrier_tolerance must be in [0, 1), got {self.barrier_tolerance}")

    def train_config(self, run: int):
        return TrainConfig(
            optimizer=self.optimizer, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
            epochs=self.epochs, batch_size=self.batch_size, schedule=self.schedule,
            warmup_epochs=self.warmup_epochs, augment=self.augment, crop_padding=self.crop_padding,
            data_seed=self.data_seed + (run if self.different_data_order else 0),
        )


QUICK = {"epochs": 1, "train_subset": 4000, "eval_subset": 2000, "alphas": 21, "surface_steps": 7, "surface_subset": 500}


def alpha_grid(n: int) -> np.ndarray:
    """n points from −0.5 to 1.5 with 0 and 1 exactly on the grid (n − 1 divisible by 4)."""
    q = (n - 1) // 4
    return (np.arange(n) - q) / (2 * q)


# --- stages --------------------------------------------------------------------------------
def _prepare(cfg: TwoSeedsConfig) -> dict:
    build(cfg.model)  # reject a bad spec before touching the output directory
    return {"init": cfg.seeds, "data": [cfg.train_config(i).data_seed for i in range(2)], "split": cfg.split_seed}


def _inputs(ctx) -> dict:
    cfg = ctx.cfg
    train, val, test = fashion_splits(cfg)
    eval_train = train.subset(cfg.eval_subset, 3) if cfg.eval_subset else train
    return {"train": train, "val": val, "test": test, "eval_train": eval_train, "alphas": alpha_grid(cfg.alphas)}


def _train(ctx, i: int, seed: int):
    """Train the network of init seed `seed` (run i); (model, History)."""
    rd, cfg, train = ctx.rd, ctx.cfg, ctx.inputs["train"]
    model = build(cfg.model, seed=seed)
    ctx.say(f"training {cfg.model} from init seed {seed} ({cfg.epochs} epochs on {len(train)} images)")
    ckdir = rd.subdir("checkpoints")
    hist = fit(model, train, ctx.inputs["val"], cfg.train_config(i), checkpoint_dir=ckdir / f"seed{seed}",
               progress=ctx.progress)
    save_checkpoint(model, ckdir / f"model_seed{seed}.safetensors")
    rd.save_json(f"history_seed{seed}.json", hist.to_dict())
    return model.eval(), hist


def _load_trained(ctx, seed: int):
    model = build(ctx.cfg.model, seed=seed)
    load_checkpoint(model, ctx.rd / "checkpoints" / f"model_seed{seed}.safetensors")
    return model.eval(), History.from_dict(ctx.rd.load_json(f"history_seed{seed}.json"))


def _models(ctx) -> list:
    return [ctx.out[f"train-{s}"][0] for s in ctx.cfg.seeds]


def _interpolate(ctx):
    cfg, eval_train, test = ctx.cfg, ctx.inputs["eval_train"], ctx.inputs["test"]
    ctx.say(f"interpolating on train ({len(eval_train)}) and test ({len(test)}) at {cfg.alphas} points")
    bn_data = ctx.inputs["train"] if cfg.bn == "recompute" else None
    model_a, model_b = _models(ctx)
    it = interpolate(model_a, model_b, {"train": eval_train, "test": test}, alphas=ctx.inputs["alphas"],
                     bn=cfg.bn, bn_data=bn_data, progress=ctx.progress)
    a, b = cfg.seeds
    kw = dict(xlabel=f"α (0: seed {a}, 1: seed {b})")
    ctx.rd.save_arrays("interpolation.npz", plots=[
        plotspec.line("Loss along (1−α)θ_A + αθ_B", "alphas", [plotspec.Series("loss_train", "train"),
                                                               plotspec.Series("loss_test", "test", dash=True)],
                      ylabel="loss (cross-entropy)", **kw),
        plotspec.line("Accuracy along (1−α)θ_A + αθ_B", "alphas",
                      [plotspec.Series("accuracy_train", "train"), plotspec.Series("accuracy_test", "test", dash=True)],
                      ylabel="accuracy", **kw),
    ], **it.to_arrays())
    return _load_interpolation(ctx)


def _load_interpolation(ctx):
    """The straight line as saved (a resumed run and a fresh one read the same numbers)."""
    return PathEvaluation.from_arrays(ctx.rd.load_arrays("interpolation.npz"))


def _evaluate(ctx) -> dict:
    return {"test_accuracy": [evaluate_model(m, ctx.inputs["test"])[1] for m in _models(ctx)]}


def _stages(cfg: TwoSeedsConfig) -> list[Stage]:
    """train-<seed> ×2, the test accuracies, the straight line, the other paths (connectivity),
    the surfaces, the report."""
    trains = [Stage(f"train-{seed}", lambda ctx, i=i, seed=seed: _train(ctx, i, seed),
                    load=lambda ctx, seed=seed: _load_trained(ctx, seed),
                    files=(f"checkpoints/model_seed{seed}.safetensors", f"history_seed{seed}.json"))
              for i, seed in enumerate(cfg.seeds)]
    return trains + [
        Stage("evaluate", _evaluate, resume=False),
        Stage("interpolate", _interpolate, load=_load_interpolation, files=("interpolation.npz",)),
        Stage("connectivity", lambda ctx: connectivity.compute(ctx, _models(ctx)), load=connectivity.load,
              files=connectivity.FILES),  # aligned, REPAIR, curve
        Stage("surfaces", lambda ctx: surfaces.compute(ctx, _models(ctx)), load=surfaces.load,
              files=surfaces.FILES),  # 2-D surfaces around A, B and through A, B, init
        Stage("report", _report, resume=False),
    ]


def _report(ctx) -> dict:
    rd, cfg = ctx.rd, ctx.cfg
    train, val, test, eval_train = (ctx.inputs[k] for k in ("train", "val", "test", "eval_train"))
    histories = {f"seed {s}": ctx.out[f"train-{s}"][1] for s in cfg.seeds}
    test_acc = ctx.out["evaluate"]["test_accuracy"]
    val_acc = [h.val_accuracy[-1] for h in histories.values()]
    it = ctx.out["interpolate"]
    conn = ctx.out["connectivity"]
    conn_figs = connectivity.figures(ctx, it, conn)
    surf = surfaces.summary_and_figures(ctx, ctx.out["surfaces"])
    barriers = it.barriers()
    lb, eb = barriers["loss_barrier"], barriers["error_barrier"]
    lb.update(conn["loss_barrier"])  # adds keys aligned, aligned_repair, curve
    eb.update(conn["error_barrier"])
    same = max(eb["train"], eb["test"]) <= cfg.barrier_tolerance
    if same:
        verdict = (f"same basin: the error barrier is at most {cfg.barrier_tolerance:.0%} "
                   f"(train {eb['train']:.2%}, test {eb['test']:.2%}; loss barrier {lb['train']:.4f} train, {lb['test']:.4f} test)")
    else:
        verdict = (f"separated by a loss barrier of {lb['train']:.4f} on train, {lb['test']:.4f} on test "
                   f"(error barrier {eb['train']:.2%} train, {eb['test']:.2%} test)")
        if "aligned" in eb:
            al = eb["aligned"]
            verdict += ("; after aligning hidden units the error barrier is "
                        f"{al['train']:.2%} train, {al['test']:.2%} test: "
                        + ("one basin up to permutation symmetry" if max(al.values()) <= cfg.barrier_tolerance
                           else "a barrier remains even up to permutation symmetry"))

    fig_lc = plot_learning_curves(histories, rd.figures, title=f"{cfg.model}, Fashion-MNIST")
    fig_it = plot_interpolation(it, rd.figures, title_data=f"Fashion-MNIST train ({len(eval_train)} images) and test ({len(test)} images)",
                                label_a=f"seed {cfg.seeds[0]}", label_b=f"seed {cfg.seeds[1]}")
    seconds = ctx.elapsed()
    summary = {
        "study": "two-seeds",
        "model": cfg.model,
        "seeds": cfg.seeds,
        "test_accuracy": test_acc,
        "val_accuracy": val_acc,
        "train_accuracy": [h.train_accuracy[-1] for h in histories.values()],
        "loss_barrier": lb,
        "error_barrier": eb,
        "alphas": it.alphas,
        "loss": {s: it.loss[s] for s in it.loss},
        "accuracy": {s: it.accuracy[s] for s in it.accuracy},
        "same_basin": same,
        "same_basin_up_to_permutation": (max(eb["aligned"].values()) <= cfg.barrier_tolerance) if "aligned" in eb else None,
        "verdict": verdict,
        "n_train": len(train),
        "n_eval": {"train": len(eval_train), "val": len(val), "test": len(test)},
        "seconds": seconds,
        "training_seconds": [h.seconds[-1] for h in histories.values()],
        "surfaces": surf["summary"],
    }
    rd.save_json("summary.json", summary)
    _write_report(rd, cfg, summary, fig_lc + fig_it + conn_figs + surf["figures"])
    return summary


def _write_report(rd, cfg: TwoSeedsConfig, s: dict, figures: list[str]) -> None:
    a, b = cfg.seeds
    lines = [
        "# Two seeds, one basin?",
        "",
        f"The MLP `{cfg.model}` was trained twice on Fashion-MNIST ({s['n_train']} training images), "
        f"identical except for the initialisation seed ({a} and {b})"
        + (" and the data order" if cfg.different_data_order else "; both runs saw the batches in the same order")
        + f": {cfg.optimizer}, lr {cfg.lr}, {cfg.schedule} schedule, {cfg.epochs} epochs, batch {cfg.batch_size}.",
        "",
        f"**Verdict: {s['verdict']}.**",
        "",
        "| | seed %d | seed %d |" % (a, b),
        "|---|---|---|",
        f"| train accuracy | {s['train_accuracy'][0]:.2%} | {s['train_accuracy'][1]:.2%} |",
        f"| validation accuracy | {s['val_accuracy'][0]:.2%} | {s['val_accuracy'][1]:.2%} |",
        f"| test accuracy | {s['test_accuracy'][0]:.2%} | {s['test_accuracy'][1]:.2%} |",
        "",
        "| barrier along (1−α)θ_A + αθ_B, α in [0, 1] | train | test |",
        "|---|---|---|",
        f"| loss barrier (max rise above the chord) | {s['loss_barrier']['train']:.4f} | {s['loss_barrier']['test']:.4f} |",
        f"| error barrier (max error − mean endpoint error) | {s['error_barrier']['train']:.2%} | {s['error_barrier']['test']:.2%} |",
        "",
        f"The study took {s['seconds']:.0f} s. Arrays: `interpolation.npz`; checkpoints: `checkpoints/`.",
        "",
    ]
    lines += connectivity.report_lines(s)
    lines += surfaces.report_lines(s)
    captions = {
        "learning_curves": "Learning curves: loss and accuracy on the whole training split (eval mode, solid) and the validation split (dashed).",
        "interpolation": "Loss and accuracy along the straight line between the two solutions; the dotted chord joins the endpoint losses and the arrow marks the barrier.",
        **surfaces.CAPTIONS,
        "connectivity": "Loss and error along four paths between the two solutions: the straight line, the line after permutation alignment, the aligned line with REPAIR, and a trained Bezier curve.",
    }
    for name in figures:
        lines += [f"![{captions.get(name, name)}](figures/{name}.png)", "", captions.get(name, ""), ""]
    rd.write_text("report.md", "\n".join(lines))


# --- the study --------------------------------------------------------------------------
def _cli_lines(s: dict, out) -> list[str]:
    return [f"test accuracy {s['test_accuracy'][0]:.2%} / {s['test_accuracy'][1]:.2%}; {s['verdict']}",
            f"wrote {out}/report.md ({s['seconds']:.0f} s)"]


STUDY = Study(
    name="two-seeds",
    config=TwoSeedsConfig, stages=_stages, prepare=_prepare, inputs=_inputs, cli_lines=_cli_lines,
    presets=(Preset("quick", QUICK, "a smoke run in seconds: 1 epoch on 4000 images, evaluation on 2000, 21 α points"
                    " (keys set in --config, and flags, win over it)"),),
)


def run(out, config: TwoSeedsConfig | None = None, force: bool = False, progress: bool = True) -> dict:
    """Run the study into directory `out` and return its summary dict."""
    return run_study(STUDY, out, config, force=force, progress=progress)
