"""Width study: does permutation alignment (and REPAIR) close the barrier as networks widen?

For each hidden width w, pairs of MLPs 784-w-w-10 are trained on Fashion-MNIST from
different initialisation seeds (same data order within a pair). For every pair the
straight line between the two is evaluated three ways: naive, after aligning B to A by
weight matching (or activation matching: `method`), and aligned with REPAIR at every point. The published pattern
(Entezari et al. 2021; Ainsworth et al. 2022; Jordan et al. 2022) is a naive midpoint
far worse than the endpoints, alignment recovering part of it, REPAIR most of the rest,
and both more so for wider networks. The report states which parts we see.

Stages (resumable): one per (width, pair), saved as pairs/w<W>_p<P>.json with the
trained checkpoints; then the figure, summary.json and report.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from lossprobe.connectivity.alignment.matching import FEATURES, align, permutation_spec
from lossprobe.connectivity.alignment.matching import METHODS as ALIGN_METHODS
from lossprobe.connectivity.paths import interpolate
from lossprobe.connectivity.repair import Repairer, interpolate_repaired
from lossprobe.data import fashion_mnist
from lossprobe.errors import UserError
from lossprobe.figures.connectivity import plot_width
from lossprobe.models import INITS, build
from lossprobe.results import plotspec
from lossprobe.results.plotspec import Series
from lossprobe.runtime.config import positive_int
from lossprobe.studies.base import Preset, Stage, Study, option, recipe, run_study
from lossprobe.training.checkpoints import load_checkpoint, save_checkpoint
from lossprobe.training.loop import TrainConfig, evaluate_model, fit

METHODS = ("naive", "aligned", "aligned_repair")
LABELS = {"naive": "naive (straight line)", "aligned": "aligned (weight matching)", "aligned_repair": "aligned + REPAIR"}


def labels(cfg) -> dict:
    if cfg.method == "weights":
        return LABELS
    return {**LABELS, "aligned": f"aligned (activation matching, {cfg.features} features)"}


@dataclass
class WidthConfig:
    widths: list[int] = option(default_factory=lambda: [16, 32, 64, 128, 256, 512], flag="--widths",
                               type=positive_int, nargs="+", metavar="W",
                               help="hidden widths, increasing (default: 16 32 64 128 256 512)")
    depth: int = option(2, flag="--depth", type=positive_int, help="hidden layers of width w (default: 2; --deep: 10)")
    init: str = "default"  # "kaiming": He initialisation (deep ReLU MLPs need it)
    method: str = "weights"  # alignment: weight matching, or "activations" (on the calibration images)
    features: str = "post"  # activation matching's features (see lossprobe.align)
    pairs: int = option(3, flag="--pairs", type=positive_int, help="pairs of networks per width (default: 3)")
    epochs: int = option(6, flag="--epochs", type=positive_int, help="training epochs per network (default: 6)")
    train_subset: int | None = option(20_000, flag="--train-subset", type=positive_int, metavar="N",
                                      help="train on a seeded subset of N images (default: 20000)")
    eval_subset: int = 5000  # test images (and training images) the barriers are measured on
    calib_subset: int = 2000  # training images REPAIR measures statistics on
    alphas: int = 11  # points in [0, 1]
    optimizer: str = recipe("optimizer", "adam")
    lr: float = recipe("lr", 1e-3)
    momentum: float = 0.9
    weight_decay: float = recipe("weight_decay", 0.0)
    batch_size: int = 128
    schedule: str = recipe("schedule", "cosine")
    warmup_epochs: float = recipe("warmup_epochs", 0.0)
    augment: str = recipe("augment", "none")
    crop_padding: int = recipe("crop_padding", 4)
    data_seed: int = 0
    split_seed: int = 0
    seed: int = 0  # pair p uses initialisation seeds seed + 2p and seed + 2p + 1

    def __post_init__(self):
        if not self.widths or any(int(w) <= 0 for w in self.widths):
            raise UserError(f"widths must be positive integers, got {self.widths}")
        if sorted(set(self.widths)) != list(self.widths):
            raise UserError(f"widths must be increasing and distinct, got {self.widths}")
        for k in ("depth", "pairs", "epochs", "eval_subset", "calib_subset", "batch_size"):
            if int(getattr(self, k)) <= 0:
                raise UserError(f"{k} must be positive, got {getattr(self, k)}")
        if self.train_subset is not None and self.train_subset <= 0:
            raise UserError(f"train_subset must be positive, got {self.train_subset}")
        if self.alphas < 3 or (self.alphas - 1) % 2:
            raise UserError(f"alphas must be odd and at least 3 (0.5 on the grid), got {self.alphas}")
        self.train_config()  # the recipe is valid (one line otherwise)

        if self.init not in INITS:
            raise UserError(f"init must be one of {list(INITS)}, got '{self.init}'")

        if self.method not in ALIGN_METHODS or self.features not in FEATURES:
            raise UserError(f"method must be one of {list(ALIGN_METHODS)} and features one of {list(FEATURES)}, "
                            f"got '{self.method}', '{self.features}'")

    def train_config(self):
        return TrainConfig(optimizer=self.optimizer, lr=self.lr, momentum=self.momentum,
                           weight_decay=self.weight_decay, epochs=self.epochs, batch_size=self.batch_size,
                           schedule=self.schedule, warmup_epochs=self.warmup_epochs, augment=self.augment,
                           crop_padding=self.crop_padding, data_seed=self.data_seed)

    def spec(self, width: int) -> str:
        return "mlp:" + "-".join(["784"] + [str(width)] * self.depth + ["10"]) + \
            ("" if self.init == "default" else f":init={self.init}")


QUICK = {"widths": [8, 32], "pairs": 1, "epochs": 1, "train_subset": 2000, "eval_subset": 1000,
         "calib_subset": 500, "alphas": 5}
# The deep-MLP setting of REPAIR (Jordan et al. 2022): 10 hidden layers (He init), the
# paper-style recipe (SGD with momentum, one-cycle schedule, weight decay, random crops and
# flips), 20 epochs on 20 000 training images, aligned by activation matching as in the
# paper (weight matching leaves the deep midpoint near chance). Width 256 by default (CPU
# time: about 4 minutes per network on one idle core); --widths 512 is the published width.
DEEP = {"widths": [256], "depth": 10, "init": "kaiming", "method": "activations", "pairs": 1, "epochs": 20,
        "train_subset": 20_000, "optimizer": "momentum", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
        "schedule": "onecycle", "warmup_epochs": 0.0, "augment": "crop+flip", "crop_padding": 2,
        "calib_subset": 5000}
PUBLISHED_DEEP_REPAIR_MIDPOINT = 0.735  # Jordan et al. 2022: 10-layer MLP, width 512, Fashion-MNIST


def _pair(ctx, width: int, pair: int) -> dict:
    """Train one pair of width `width`, align it, and measure the three paths; pairs/w<W>_p<P>.json."""
    rd, cfg, progress = ctx.rd, ctx.cfg, ctx.progress
    train, eval_train, test, calib = (ctx.inputs[k] for k in ("train", "eval_train", "test", "calib"))
    name = _pair_name(width, pair)
    t0 = time.perf_counter()
    tcfg = cfg.train_config()
    ckdir = rd.subdir("checkpoints")
    models = []
    for k in range(2):
        seed = cfg.seed + 2 * pair + k
        m = build(cfg.spec(width), seed=seed)
        f = ckdir / f"{name}_seed{seed}.safetensors"
        if f.is_file():
            load_checkpoint(m, f)
        else:
            fit(m, train, None, tcfg, checkpoint_dir=ckdir / f"{name}_seed{seed}", progress=progress)
            save_checkpoint(m, f)
        models.append(m.eval())
    t_train = time.perf_counter() - t0
    spec = permutation_spec(models[0], example=calib)
    aligned = align(models[0], models[1], method=cfg.method, spec=spec, seed=cfg.seed + pair, data=calib,
                    features=cfg.features)
    alphas = np.linspace(0, 1, cfg.alphas)
    alphas[-1] = 1.0
    splits = {"train": eval_train, "test": test}
    paths = {
        "naive": interpolate(models[0], models[1], splits, alphas=alphas),
        "aligned": interpolate(models[0], aligned, splits, alphas=alphas),
        "aligned_repair": interpolate_repaired(models[0], aligned, splits, calib, alphas=alphas,
                                               repairer=Repairer(models[0], aligned, calib, spec=spec)),
    }
    mid = int(np.flatnonzero(np.isclose(alphas, 0.5))[0])
    out = {
        "width": width, "pair": pair, "seeds": [cfg.seed + 2 * pair, cfg.seed + 2 * pair + 1],
        "test_accuracy": [evaluate_model(m, test)[1] for m in models],
        "loss_barrier": {k: it.barriers()["loss_barrier"] for k, it in paths.items()},
        "error_barrier": {k: it.barriers()["error_barrier"] for k, it in paths.items()},
        "midpoint_test_accuracy": {k: float(it.accuracy["test"][mid]) for k, it in paths.items()},
        "alphas": alphas,
        "loss_test": {k: it.loss["test"] for k, it in paths.items()},
        "accuracy_test": {k: it.accuracy["test"] for k, it in paths.items()},
        "seconds": {"training": t_train, "total": time.perf_counter() - t0},
    }
    rd.subdir("pairs")
    rd.save_json(f"pairs/{name}.json", out)
    return out


def _pair_name(width: int, pair: int) -> str:
    return f"w{width}_p{pair}"


def _prepare(cfg: WidthConfig) -> dict:
    return {"init": [cfg.seed, cfg.seed + 2 * cfg.pairs - 1], "data": cfg.data_seed, "split": cfg.split_seed}


def _inputs(ctx) -> dict:
    cfg = ctx.cfg
    ds = fashion_mnist(split_seed=cfg.split_seed)
    train = ds.train.subset(cfg.train_subset, seed=cfg.split_seed) if cfg.train_subset else ds.train
    return {"train": train, "test": ds.test.subset(cfg.eval_subset, 2), "eval_train": train.subset(cfg.eval_subset, 3),
            "calib": train.subset(cfg.calib_subset, 4)}


def _stages(cfg: WidthConfig) -> list[Stage]:
    """One stage per (width, pair), then the report."""
    stages = []
    total = len(cfg.widths) * cfg.pairs
    for w in cfg.widths:
        for p in range(cfg.pairs):
            name = _pair_name(w, p)

            def compute(ctx, w=w, p=p, k=len(stages) + 1):
                ctx.say(f"[{k}/{total}] width {w}, pair {p}: {cfg.spec(w)} × 2, {cfg.epochs} epochs on "
                        f"{len(ctx.inputs['train'])} images")
                return _pair(ctx, w, p)

            stages.append(Stage(name, compute, load=lambda ctx, name=name: ctx.rd.load_json(f"pairs/{name}.json"),
                                files=(f"pairs/{name}.json",)))
    return stages + [Stage("report", _report, resume=False)]


def barrier_tables(cfg: WidthConfig, results: list[dict]) -> dict:
    """[width, pair] arrays per method of every measured quantity, from the pairs' results."""
    nw, npairs = len(cfg.widths), cfg.pairs
    grid = {w: i for i, w in enumerate(cfg.widths)}

    def table(key, split=None):
        out = {m: np.zeros((nw, npairs)) for m in METHODS}
        for r in results:
            for m in METHODS:
                v = r[key][m]
                out[m][grid[r["width"]], r["pair"]] = v[split] if split else v
        return out

    endpoint_acc = np.zeros((nw, npairs))
    for r in results:
        endpoint_acc[grid[r["width"]], r["pair"]] = float(np.mean(r["test_accuracy"]))
    return {"loss_barrier_test": table("loss_barrier", "test"), "error_barrier_test": table("error_barrier", "test"),
            "loss_barrier_train": table("loss_barrier", "train"), "error_barrier_train": table("error_barrier", "train"),
            "midpoint_accuracy_test": table("midpoint_test_accuracy"), "endpoint_accuracy_test": endpoint_acc}


def _save_arrays(rd, cfg: WidthConfig, t: dict) -> None:
    """width.npz: [width, pair] arrays; width_mean.npz: their means over pairs, with what to draw."""
    lb, eb, mid = t["loss_barrier_test"], t["error_barrier_test"], t["midpoint_accuracy_test"]
    rd.save_arrays("width.npz", widths=np.array(cfg.widths),
                   **{f"{m}_loss_barrier_test": lb[m] for m in METHODS},
                   **{f"{m}_error_barrier_test": eb[m] for m in METHODS},
                   **{f"{m}_midpoint_accuracy_test": mid[m] for m in METHODS},
                   endpoint_accuracy_test=t["endpoint_accuracy_test"])
    # the [width, pair] tables have no 1-D series to draw; their means over pairs do
    L = labels(cfg)
    means = {"widths": np.array(cfg.widths), "endpoint_accuracy_test": t["endpoint_accuracy_test"].mean(1)}
    for key, table in (("loss_barrier_test", lb), ("error_barrier_test", eb), ("midpoint_accuracy_test", mid)):
        means.update({f"{m}_{key}": table[m].mean(1) for m in METHODS})
    kw = dict(xlabel="hidden width", log_x=True)
    rd.save_arrays("width_mean.npz", plots=[
        plotspec.line("Error barrier on test data against width (mean over pairs)", "widths",
                      [Series(f"{m}_error_barrier_test", L[m]) for m in METHODS], ylabel="error barrier", **kw),
        plotspec.line("Loss barrier on test data against width (mean over pairs)", "widths",
                      [Series(f"{m}_loss_barrier_test", L[m]) for m in METHODS], ylabel="loss barrier", **kw),
        plotspec.line("Test accuracy at the midpoint against width (mean over pairs)", "widths",
                      [Series("endpoint_accuracy_test", "endpoints", dash=True)]
                      + [Series(f"{m}_midpoint_accuracy_test", L[m]) for m in METHODS],
                      ylabel="test accuracy", **kw),
    ], **means)


def _report(ctx) -> dict:
    rd, cfg = ctx.rd, ctx.cfg
    results = [ctx.out[_pair_name(w, p)] for w in cfg.widths for p in range(cfg.pairs)]
    npairs = cfg.pairs
    t = barrier_tables(cfg, results)
    lb, eb, mid, endpoint_acc = (t["loss_barrier_test"], t["error_barrier_test"], t["midpoint_accuracy_test"],
                                 t["endpoint_accuracy_test"])
    lb_tr, eb_tr = t["loss_barrier_train"], t["error_barrier_train"]
    _save_arrays(rd, cfg, t)
    LABELS = labels(cfg)
    test = ctx.inputs["test"]
    figs = plot_width(cfg.widths, {LABELS[m]: {"loss_barrier": lb[m], "error_barrier": eb[m]} for m in METHODS},
                      rd.figures, title_data=f"MLP 784-w×{cfg.depth}-10, Fashion-MNIST test ({len(test)})",
                      n_pairs=npairs)
    pattern = claims(cfg, t)
    seconds = ctx.elapsed()
    summary = {
        "study": "width",
        "widths": cfg.widths,
        "pairs_per_width": npairs,
        "models": [cfg.spec(w) for w in cfg.widths],
        "n_train": len(ctx.inputs["train"]), "n_eval": {"train": len(ctx.inputs["eval_train"]), "test": len(test)},
        "n_calibration": len(ctx.inputs["calib"]),
        "endpoint_test_accuracy_mean": endpoint_acc.mean(1),
        "loss_barrier_test_mean": {m: lb[m].mean(1) for m in METHODS},
        "error_barrier_test_mean": {m: eb[m].mean(1) for m in METHODS},
        "loss_barrier_train_mean": {m: lb_tr[m].mean(1) for m in METHODS},
        "error_barrier_train_mean": {m: eb_tr[m].mean(1) for m in METHODS},
        "midpoint_test_accuracy_mean": {m: mid[m].mean(1) for m in METHODS},
        "loss_barrier_test": lb, "error_barrier_test": eb,
        "pattern": pattern,
        "seconds": seconds,
    }
    rd.save_json("summary.json", summary)
    _write_report(rd, cfg, summary, figs)
    return summary


def claims(cfg: WidthConfig, t: dict) -> dict:
    """The published pattern's claims, seen or not, from the [width, pair] tables of `barrier_tables`."""
    eb, mid, endpoint_acc = t["error_barrier_test"], t["midpoint_accuracy_test"], t["endpoint_accuracy_test"]
    pattern = _pattern(cfg.widths, {m: eb[m].mean(1) for m in METHODS}, {m: mid[m].mean(1) for m in METHODS},
                       endpoint_acc.mean(1))
    deep = _deep_claim(mid, endpoint_acc) if cfg.depth >= 3 else None
    if deep is not None:
        pattern["claims"].append(deep)
        pattern["all_seen"] = bool(all(c["seen"] for c in pattern["claims"]))
    return pattern


def _deep_claim(mid: dict, endpoint_acc) -> dict:
    """Deep MLPs: does the aligned + REPAIR midpoint keep most of the endpoints' accuracy,
    as Jordan et al. (2022) report (73.5% midpoint accuracy, 10-layer MLP of width 512)?"""
    end = endpoint_acc.mean(1)
    al, rp = mid["aligned"].mean(1), mid["aligned_repair"].mean(1)
    recovered = np.where(end > al, (rp - al) / np.maximum(end - al, 1e-12), np.nan)
    seen = bool(np.all(rp >= PUBLISHED_DEEP_REPAIR_MIDPOINT))
    return {"claim": f"the aligned + REPAIR midpoint reaches the published {PUBLISHED_DEEP_REPAIR_MIDPOINT:.1%} test "
                     "accuracy (deep MLP; Jordan et al. 2022: 10 layers of width 512)",
            "seen": seen,
            "evidence": f"midpoint accuracy naive {', '.join(f'{a:.1%}' for a in mid['naive'].mean(1))}, aligned "
                        f"{', '.join(f'{a:.1%}' for a in al)}, aligned + REPAIR {', '.join(f'{a:.1%}' for a in rp)} "
                        f"(endpoints {', '.join(f'{a:.1%}' for a in end)}; REPAIR recovers "
                        f"{', '.join(f'{r:.0%}' for r in recovered)} of the accuracy the aligned midpoint lost)"}


def _pattern(widths, err: dict, mid: dict, endpoint) -> dict:
    """Compare with the published pattern, one plain statement per claim."""
    chance = 0.10
    naive_mid = mid["naive"]
    near_chance = bool(np.all(naive_mid < chance + 0.10))
    align_helps = bool(np.all(err["aligned"] < err["naive"]))
    repair_helps = bool(np.all(err["aligned_repair"] <= err["aligned"]))
    removed = np.where(err["naive"] > 0, 1 - err["aligned"] / np.maximum(err["naive"], 1e-12), np.nan)
    rest = np.where(err["aligned"] > 0, 1 - err["aligned_repair"] / np.maximum(err["aligned"], 1e-12), np.nan)
    shrinks = bool(len(widths) > 1 and err["aligned"][-1] < err["aligned"][0]
                   and np.corrcoef(np.log2(widths), err["aligned"])[0, 1] < 0) if len(widths) > 1 else False
    lines = [
        ("the naive midpoint is near chance (< 20% test accuracy)",
         near_chance, f"naive midpoint accuracy {', '.join(f'{a:.0%}' for a in naive_mid)} "
                      f"(endpoints {', '.join(f'{a:.0%}' for a in endpoint)})"),
        ("alignment lowers the error barrier at every width",
         align_helps, f"it removes {', '.join(f'{r:.0%}' for r in removed)} of the naive barrier"),
        ("REPAIR lowers it further at every width",
         repair_helps, f"it removes {', '.join(f'{r:.0%}' if np.isfinite(r) else 'n/a' for r in rest)} of what alignment leaves"),
        ("the aligned barrier shrinks with width",
         shrinks, f"aligned error barrier {', '.join(f'{e:.2%}' for e in err['aligned'])} for widths {widths}"),
    ]
    return {"claims": [{"claim": c, "seen": s, "evidence": e} for c, s, e in lines],
            "all_seen": bool(all(s for _, s, _ in lines))}


def _write_report(rd, cfg: WidthConfig, s: dict, figures: list[str]) -> None:
    LABELS = labels(cfg)
    widths = cfg.widths
    head = "| width | endpoint test acc | " + " | ".join(f"{LABELS[m]} error barrier" for m in METHODS) + " | " + \
           " | ".join(f"{LABELS[m]} midpoint acc" for m in METHODS) + " |"
    recipe = f"{cfg.optimizer} lr {cfg.lr} {cfg.schedule}"
    if cfg.warmup_epochs:
        recipe += f" with {cfg.warmup_epochs:g} warmup epochs"
    if cfg.weight_decay:
        recipe += f", weight decay {cfg.weight_decay:g}"
    if cfg.augment != "none":
        recipe += f", augmentation {cfg.augment} (shifts up to {cfg.crop_padding} px)" if "crop" in cfg.augment \
            else f", augmentation {cfg.augment}"
    lines = [
        "# Barrier vs width: naive, aligned, aligned + REPAIR",
        "",
        f"MLPs `784-w×{cfg.depth}-10` (ReLU) on Fashion-MNIST, {s['pairs_per_width']} pair(s) per width "
        f"(init seeds differ within a pair, same data order), {recipe}, "
        f"{cfg.epochs} epochs on {s['n_train']} training images. Barriers over {cfg.alphas} points of α in [0, 1] on "
        f"{s['n_eval']['test']} test images; REPAIR statistics from {s['n_calibration']} training images. "
        "Numbers are means over the pairs.",
        "",
        head,
        "|" + "---|" * (2 + 2 * len(METHODS)),
    ]
    for i, w in enumerate(widths):
        lines.append(f"| {w} | {s['endpoint_test_accuracy_mean'][i]:.2%} | "
                     + " | ".join(f"{s['error_barrier_test_mean'][m][i]:.2%}" for m in METHODS) + " | "
                     + " | ".join(f"{s['midpoint_test_accuracy_mean'][m][i]:.2%}" for m in METHODS) + " |")
    lines += ["", "## Do we see the published pattern?", ""]
    for c in s["pattern"]["claims"]:
        lines.append(f"- {'**Yes**' if c['seen'] else '**No**'}: {c['claim']} — {c['evidence']}.")
    lines += ["", ("All parts of the published pattern are seen in this run."
                   if s["pattern"]["all_seen"] else
                   "Not every part of the published pattern is seen in this run (the No lines above). "
                   f"Caveat: {s['pairs_per_width']} pair(s) per width and short training; the dots in the figure "
                   "show the pair-to-pair spread."), ""]
    for name in figures:
        lines += [f"![Loss and error barrier against hidden width](figures/{name}.png)", "",
                  "Loss barrier (left) and error barrier (right) on test data against hidden width; lines are means "
                  "over pairs, dots the individual pairs.", ""]
    lines += [f"The study took {s['seconds']:.0f} s. Per-pair results: `pairs/`; arrays: `width.npz`.", ""]
    rd.write_text("report.md", "\n".join(lines))


# --- the study --------------------------------------------------------------------------
def _cli_lines(s: dict, out) -> list[str]:
    return [f"{'yes' if c['seen'] else 'no '}: {c['claim']} ({c['evidence']})" for c in s["pattern"]["claims"]] + \
        [f"wrote {out}/report.md ({s['seconds']:.0f} s)"]


STUDY = Study(
    name="width",
    config=WidthConfig, stages=_stages, prepare=_prepare, inputs=_inputs, cli_lines=_cli_lines,
    presets=(Preset("quick", QUICK, "a smoke run in seconds: widths 8 and 32, 1 pair, 1 epoch on 2000 images, 5 α points"
                    " (keys set in --config, and flags, win over it)"),
             Preset("deep", DEEP, "the deep-MLP setting of REPAIR: 10 hidden layers of width 256 (He init), 20 epochs "
                    "on 20000 training images with SGD + momentum, a one-cycle schedule, weight decay 5e-4, crops and "
                    "flips, aligned by activation matching (post-activation features) as in the paper; the report "
                    "compares the REPAIRed midpoint with the published 73.5%% (keys set in --config, and flags, win "
                    "over it)")),
)


def run(out, config: WidthConfig | None = None, force: bool = False, progress: bool = True) -> dict:
    """Run the width study into directory `out`; returns the summary dict."""
    return run_study(STUDY, out, config, force=force, progress=progress)
