"""What a study is: a configuration dataclass and a list of stages that a run directory runs.

A study is declared, not scripted:

* its **configuration** is a dataclass whose `__post_init__` validates it once; every field
  that users may set from the command line carries its flag and help in the field's
  metadata (`option`), so the TOML keys (the field names) and the flags come from one place;
* its **stages** are small functions of a `Context` (configuration, run directory, shared
  inputs, the outputs of earlier stages). `run_study` runs them in order on a `RunDir`:
  a stage that finished before (its name in status.json and its files whole) is not
  computed again but loaded, and the seconds of each stage computed are recorded in
  timing.json;
* `presets` (``--quick``, ``--deep``) are named sets of values.

One precedence rule decides every value, for every study (`lossprobe.config.load`):

    defaults  <  presets (--quick, then --deep, in the order given)  <  the --config TOML file  <  explicit flags

so a key written in the file, or a flag given, always wins over a preset. The command line
is built from these declarations by `lossprobe.cli.study`; nothing here imports the CLI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from lossprobe.data import fashion_mnist
from lossprobe.results.store import RunDir
from lossprobe.runtime.config import nonneg_float, positive_float
from lossprobe.training.loop import AUGMENTATIONS, SCHEDULES

MISSING = dataclasses.MISSING


def option(default: Any = MISSING, *, default_factory: Callable[[], Any] | Any = MISSING, help: str = "",
           flag: str | None = None, **argparse_kw) -> Any:
    """A configuration field with its command-line flag: ``epochs: int = option(12, flag="--epochs",
    type=positive_int, help="...")``. `argparse_kw` are passed to `add_argument` (type, nargs,
    metavar, choices (a tuple, or a function returning one, read when the parser is built),
    action). `help` may also be a function returning the text (read when the parser is built).
    A field without `flag` is set from the TOML file only."""
    return field(default=default, default_factory=default_factory,
                 metadata={"help": help, "flag": flag, "argparse": argparse_kw})


def flags(config_cls) -> list[dataclasses.Field]:
    """The fields of `config_cls` that have a command-line flag, in declaration order."""
    return [f for f in dataclasses.fields(config_cls) if f.metadata.get("flag")]


def _schedules():
    return SCHEDULES


def _augmentations():
    return AUGMENTATIONS


def recipe(name: str, default: Any) -> Any:
    """A training-recipe field (TrainConfig's field of the same name) with the flag every study
    that trains gives it: --optimizer, --lr, --weight-decay, --schedule, --warmup, --augment,
    --crop-padding."""
    flags = {
        "optimizer": dict(flag="--optimizer", metavar="NAME",
                          help="optimizer (adam, momentum, sgd, nesterov, adamw, ...)"),
        "lr": dict(flag="--lr", type=positive_float, help="peak learning rate"),
        "weight_decay": dict(flag="--weight-decay", type=nonneg_float, metavar="WD", help="weight decay"),
        "schedule": dict(flag="--schedule", choices=_schedules,
                         help="learning-rate schedule: constant, cosine, step, linear (to 0), onecycle (up then down)"),
        "warmup_epochs": dict(flag="--warmup", type=nonneg_float, metavar="EPOCHS",
                              help="linear warmup over this many epochs (may be fractional) before the schedule's decay"),
        "augment": dict(flag="--augment", choices=_augmentations,
                        help="image augmentation during training: flip (left-right), crop (shift by up to "
                        "--crop-padding pixels), crop+flip"),
        "crop_padding": dict(flag="--crop-padding", type=int, metavar="PX",
                             help="largest shift of --augment crop (default 4)"),
    }
    return option(default, **flags[name])


@dataclass(frozen=True)
class Preset:
    """A named set of values (``--quick``): a dict, or a function of the configuration the user
    gave (file and flags, before presets) returning one (e.g. different values per dataset)."""

    name: str
    values: dict | Callable[[Any], dict]
    help: str

    def resolve(self, given) -> dict:
        return dict(self.values(given) if callable(self.values) else self.values)


@dataclass(frozen=True)
class Stage:
    """One step of a study. `compute(ctx)` does the work, writes the stage's `files` (names
    relative to the run directory) and returns its outputs; when the stage finished before and
    its files are whole, `load(ctx)` returns the same outputs from the files instead (without
    `load`, a finished stage has no outputs). `resume=False`: computed on every run (cheap
    steps, e.g. the report), not recorded as finished."""

    name: str
    compute: Callable[["Context"], Any]
    load: Callable[["Context"], Any] | None = None
    files: tuple[str, ...] = ()
    resume: bool = True


@dataclass
class Context:
    """What a stage sees: the configuration, the run directory, the inputs prepared once for
    every stage (`inputs`), the outputs of the stages run so far (`out`, by stage name)."""

    cfg: Any
    rd: Any
    progress: bool = True
    inputs: dict = field(default_factory=dict)
    out: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)  # stage name -> seconds computed (this and earlier calls)
    started: float = field(default_factory=time.perf_counter)
    seconds_before: float = 0.0  # wall seconds of earlier calls on this run directory

    def elapsed(self) -> float:
        """Wall seconds of the whole study so far, earlier calls (before a resume) included."""
        return self.seconds_before + time.perf_counter() - self.started

    def say(self, text: str) -> None:
        if self.progress:
            print(text, flush=True)


@dataclass(frozen=True)
class Study:
    """A ready-made study: `lossprobe study NAME` and `lossprobe.studies.<module>.run`.

    `stages(cfg)` lists the stages; `prepare(cfg)` checks what must be checked before the run
    directory is touched (e.g. that model specs build) and returns the seeds environment.json
    records; `inputs(ctx)` loads what every stage shares (data). The last stage's output is the
    summary the study returns. `cli_lines(summary, out)` are the lines the command prints."""

    name: str  # as in `lossprobe.studies.STUDIES`, which also holds its one-line help
    config: type
    stages: Callable[[Any], list[Stage]]
    prepare: Callable[[Any], dict] = lambda cfg: {}
    inputs: Callable[[Context], dict] = lambda ctx: {}
    presets: tuple[Preset, ...] = ()
    cli_lines: Callable[[dict, str], list[str]] = lambda summary, out: []
    wrap: Callable[[Any], Any] | None = None  # a context manager factory around the stages, e.g. torch threads
    reopen_complete: bool = False  # a finished run is reopened (its summary.json returned), not redrawn
    files: Callable[[Any], dict] = lambda cfg: {}  # {what: path} of the files the study reads (fingerprinted)

    @property
    def default_out(self) -> str:
        return f"runs/{self.name}"


def fashion_splits(cfg) -> tuple:
    """Fashion-MNIST train, validation and test as the studies use them: the split of
    `cfg.n_val` validation images by `cfg.split_seed`, a seeded `cfg.train_subset` of the
    training images, and validation/test cut to seeded `cfg.eval_subset`s (seeds 1 and 2)."""
    ds = fashion_mnist(n_val=cfg.n_val, split_seed=cfg.split_seed)
    train = ds.train.subset(cfg.train_subset, seed=cfg.split_seed) if cfg.train_subset else ds.train
    val, test = ds.val, ds.test
    if cfg.eval_subset:
        val, test = val.subset(cfg.eval_subset, 1), test.subset(cfg.eval_subset, 2)
    return train, val, test


def array_stage(name: str, compute: Callable[["Context"], tuple[dict, dict]], grids: dict | None = None,
                plots: Callable[[dict], list] | list | None = None) -> Stage:
    """A stage whose outputs are (arrays, meta), saved as NAME.npz (with the axes of its 2-D
    arrays, `grids`, and what to draw, `plots`: a list of PlotSpec or a function of the arrays
    returning one) and NAME.json."""

    def run(ctx):
        ctx.say(f"[{ctx.rd.kind}] {name}")
        arrays, meta = compute(ctx)
        ctx.rd.save_arrays(f"{name}.npz", grids=grids, plots=plots(arrays) if callable(plots) else plots, **arrays)
        ctx.rd.save_json(f"{name}.json", meta)
        return arrays, meta

    return Stage(name, run, load=lambda ctx: (ctx.rd.load_arrays(f"{name}.npz"), ctx.rd.load_json(f"{name}.json")),
                 files=(f"{name}.npz", f"{name}.json"))


TIMING = "timing.json"


def run_stage(ctx: Context, stage: Stage) -> Any:
    """Run or reload one stage (see `Stage`); returns its outputs, also kept in ctx.out."""
    rd = ctx.rd
    if stage.resume and rd.done(stage.name, *stage.files):
        out = stage.load(ctx) if stage.load is not None else None
    else:
        t = time.perf_counter()
        out = stage.compute(ctx)
        ctx.seconds[stage.name] = time.perf_counter() - t
        if stage.resume:
            rd.mark(stage.name)
            save_timing(ctx)
    ctx.out[stage.name] = out
    return out


def save_timing(ctx: Context) -> None:
    ctx.rd.save_json(TIMING, {"seconds": ctx.elapsed(), "stages": ctx.seconds})


def run_study(study: Study, out, config=None, force: bool = False, progress: bool = True) -> dict:
    """Run `study` with `config` (default: the configuration's defaults) into the run directory
    `out`, resuming what an earlier call finished; returns the summary (the last stage's output)."""
    cfg = config if config is not None else study.config()
    t0 = time.perf_counter()
    seeds = study.prepare(cfg)  # before the run directory is touched
    rd = RunDir(out, study.name, dataclasses.asdict(cfg), force=force, seeds=seeds,
                defaults=dataclasses.asdict(type(cfg)()), inputs=study.files(cfg))
    ctx = Context(cfg, rd, progress, started=t0)
    if study.reopen_complete and rd.resumed and rd.is_complete and (rd / "summary.json").is_file() \
            and (rd / "report.md").is_file():
        ctx.say(f"[{study.name}] {rd.path} is complete; reopening it (use --force to recompute)")
        return rd.load_json("summary.json")
    if rd.resumed and (rd / TIMING).is_file():
        old = rd.load_json(TIMING)
        ctx.seconds_before = float(old.get("seconds", 0.0))
        ctx.seconds.update(old.get("stages", {}))
    with study.wrap(cfg) if study.wrap is not None else contextlib.nullcontext():
        ctx.inputs.update(study.inputs(ctx))
        summary = None
        for stage in study.stages(cfg):
            summary = run_stage(ctx, stage)
    save_timing(ctx)
    rd.complete()
    return summary


__all__ = ["Context", "Preset", "Stage", "Study", "array_stage", "flags", "option", "recipe", "run_stage", "run_study"]
