"""Two-seed basin study: train one MLP from two initialisation seeds, then interpolate.

Question: two runs that differ only in their random initialisation reach the same
accuracy. Do they lie in one basin (no barrier on the straight line between them)?

Stages, each saved as it finishes so that rerunning the same command resumes:
    train-<seed>   training of each network (itself resumable per epoch)
    interpolate    loss and accuracy along α on the full train and test splits
    report         figures, summary.json, report.md
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from .. import config as config_mod
from ..errors import UserError
from .two_seeds_connectivity import report_lines

BARRIER_TOLERANCE = 0.02  # Frankle et al. (2020) call an error barrier under 2% "linearly connected"


@dataclass
class TwoSeedsConfig:
    model: str = "mlp:784-256-256-10"
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    data_seed: int = 0
    different_data_order: bool = False  # True: run i uses data_seed + i
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int = 12
    batch_size: int = 128
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    augment: str = "none"
    crop_padding: int = 4
    n_val: int = 10_000
    split_seed: int = 0
    train_subset: int | None = None  # train on a seeded subset of the train split
    eval_subset: int | None = None  # evaluate val/test/interpolation on seeded subsets
    alphas: int = 41
    bn: str = "interpolate"
    barrier_tolerance: float = BARRIER_TOLERANCE
    surface_steps: int = 21  # surfaces stage: grid points per axis (two_seeds_surfaces)
    surface_subset: int = 2000  # surfaces stage: test images

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
        for k in ("train_subset", "eval_subset"):
            v = getattr(self, k)
            if v is not None and v <= 0:
                raise UserError(f"{k} must be positive, got {v}")
        if self.n_val < 1:
            raise UserError(f"n_val must be positive, got {self.n_val}")
        if not 0 <= self.barrier_tolerance < 1:
            raise UserError(f"barrier_tolerance must be in [0, 1), got {self.barrier_tolerance}")
        self.train_config(0)  # epochs, lr, batch size, optimizer, schedule, momentum, weight decay

    def train_config(self, run: int):
        from ..train import TrainConfig

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


def run(out, config: TwoSeedsConfig | None = None, force: bool = False, progress: bool = True) -> dict:
    """Run the study into directory `out` and return its summary dict."""
    from ..data import fashion_mnist
    from ..models import build
    from ..paths import interpolate
    from ..report.paths_plots import plot_interpolation
    from ..report.training_plots import plot_learning_curves
    from ..store import RunDir
    from ..train import History, fit, load_checkpoint, save_checkpoint

    cfg = config or TwoSeedsConfig()
    t_start = time.perf_counter()
    build(cfg.model)  # reject a bad spec before touching the output directory
    rd = RunDir(out, "two-seeds", dataclasses.asdict(cfg), force=force,
                seeds={"init": cfg.seeds, "data": [cfg.train_config(i).data_seed for i in range(2)],
                       "split": cfg.split_seed})
    elapsed_before = rd.load_json("timing.json")["seconds"] if rd.resumed and (rd / "timing.json").is_file() else 0.0
    ds = fashion_mnist(n_val=cfg.n_val, split_seed=cfg.split_seed)
    train = ds.train.subset(cfg.train_subset, seed=cfg.split_seed) if cfg.train_subset else ds.train
    val, test = ds.val, ds.test
    if cfg.eval_subset:
        val, test = val.subset(cfg.eval_subset, 1), test.subset(cfg.eval_subset, 2)
    eval_train = train.subset(cfg.eval_subset, 3) if cfg.eval_subset else train

    models, histories = [], {}
    ckdir = rd.subdir("checkpoints")
    for i, seed in enumerate(cfg.seeds):
        label = f"seed {seed}"
        model = build(cfg.model, seed=seed)
        final = ckdir / f"model_seed{seed}.safetensors"
        if rd.done(f"train-{seed}", f"checkpoints/model_seed{seed}.safetensors", f"history_seed{seed}.json"):
            load_checkpoint(model, final)
            histories[label] = History.from_dict(rd.load_json(f"history_seed{seed}.json"))
        else:
            if progress:
                print(f"training {cfg.model} from init seed {seed} ({cfg.epochs} epochs on {len(train)} images)")
            hist = fit(model, train, val, cfg.train_config(i), checkpoint_dir=ckdir / f"seed{seed}", progress=progress)
            save_checkpoint(model, final)
            rd.save_json(f"history_seed{seed}.json", hist.to_dict())
            histories[label] = hist
            rd.mark(f"train-{seed}")
        models.append(model.eval())

    from ..train import evaluate_model

    test_acc = [evaluate_model(m, test)[1] for m in models]
    val_acc = [h.val_accuracy[-1] for h in histories.values()]

    if not rd.done("interpolate", "interpolation.npz"):
        if progress:
            print(f"interpolating on train ({len(eval_train)}) and test ({len(test)}) at {cfg.alphas} points")
        bn_data = train if cfg.bn == "recompute" else None
        it = interpolate(models[0], models[1], {"train": eval_train, "test": test}, alphas=alpha_grid(cfg.alphas),
                         bn=cfg.bn, bn_data=bn_data, progress=progress)
        rd.save_arrays("interpolation.npz", **it.to_arrays())
        rd.mark("interpolate")
    from ..paths import Interpolation

    from .two_seeds_connectivity import connectivity_stage

    conn = connectivity_stage(rd, cfg, models, train, eval_train, test, progress)  # aligned, REPAIR, curve
    from .two_seeds_surfaces import surfaces_stage

    surf = surfaces_stage(rd, cfg, models, test, progress)  # 2-D surfaces around A, B and through A, B, init
    arr = rd.load_arrays("interpolation.npz")
    it = Interpolation(alphas=arr["alphas"], loss={s: arr[f"loss_{s}"] for s in ("train", "test")},
                       accuracy={s: arr[f"accuracy_{s}"] for s in ("train", "test")})
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
    seconds = elapsed_before + time.perf_counter() - t_start
    rd.save_json("timing.json", {"seconds": seconds})
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
    _write_report(rd, cfg, summary, fig_lc + fig_it + conn["figures"] + surf["figures"])
    rd.mark("report")
    rd.complete()
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
    lines += report_lines(s)
    from .two_seeds_surfaces import CAPTIONS as SURFACE_CAPTIONS, report_lines as surface_lines

    lines += surface_lines(s)
    captions = {
        "learning_curves": "Learning curves: loss and accuracy on the whole training split (eval mode, solid) and the validation split (dashed).",
        "interpolation": "Loss and accuracy along the straight line between the two solutions; the dotted chord joins the endpoint losses and the arrow marks the barrier.",
        **SURFACE_CAPTIONS,
        "connectivity": "Loss and error along four paths between the two solutions: the straight line, the line after permutation alignment, the aligned line with REPAIR, and a trained Bezier curve.",
    }
    for name in figures:
        lines += [f"![{captions.get(name, name)}](figures/{name}.png)", "", captions.get(name, ""), ""]
    rd.write_text("report.md", "\n".join(lines))


# --- CLI -----------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..cli.common import add_out, add_recipe, positive_int

    add_out(p, default="runs/two-seeds")
    p.add_argument("--config", metavar="FILE.toml",
                   help="TOML file with any of: " + ", ".join(f.name for f in dataclasses.fields(TwoSeedsConfig)))
    p.add_argument("--epochs", type=positive_int, help="training epochs per network (default: 12)")
    p.add_argument("--seeds", type=int, nargs=2, metavar=("A", "B"), help="the two initialisation seeds (default: 0 1)")
    p.add_argument("--model", metavar="SPEC", help="model spec (default: mlp:784-256-256-10)")
    p.add_argument("--different-data-order", action="store_true", default=None,
                   help="also give the second run a different data order (default: same order)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run in seconds: 1 epoch on 4000 images, evaluation on 2000, 21 α points"
                   " (keys set in --config, and flags, win over it)")
    add_recipe(p)


def run_cli(args) -> int:
    from ..cli.common import recipe_overrides

    overrides = {}
    flags = {"epochs": args.epochs, "seeds": args.seeds, "model": args.model,
             "different_data_order": args.different_data_order, **recipe_overrides(args)}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    cfg = config_mod.load(TwoSeedsConfig, args.config, overrides, presets=QUICK if args.quick else None)
    s = run(args.out, cfg, force=args.force)
    print(f"test accuracy {s['test_accuracy'][0]:.2%} / {s['test_accuracy'][1]:.2%}; {s['verdict']}")
    print(f"wrote {args.out}/report.md ({s['seconds']:.0f} s)")
    return 0
