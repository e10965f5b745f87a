"""Options and helpers shared by subcommands."""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass

import numpy as np
from torch import nn

from lossprobe.core.batching import Data
from lossprobe.core.graphs import parse_bytes
from lossprobe.core.losses import BUILTIN, Criterion, criterion
from lossprobe.core.objective import Objective, require_finite
from lossprobe.core.specs import load_callable, looks_like_code, source_file
from lossprobe.data import load_split
from lossprobe.data.sources import files_of, load, train_counterpart
from lossprobe.errors import UserError
from lossprobe.models import build
from lossprobe.results.plotspec import Series, line

# the checkers live with the study configurations (whose fields name them); re-exported for the subcommands
from lossprobe.runtime.config import (  # noqa: F401
    comma_list,
    finite_float,
    nonneg_float,
    positive_float,
    positive_int,
    seed_int,
)
from lossprobe.training.checkpoints import apply_state_dict, load_state_dict

DATA_HELP = ("data to evaluate on: fashion-mnist:train|val|test, spiral:train|val|test, cifar10:DIR[:SPLIT], "
             "cifar100:DIR[:SPLIT], imagefolder:DIR[:size=32][:gray][:norm=half|imagenet|none], a tensor file "
             "FILE.pt|.npz|.safetensors holding x and y (or FILE:INPUT,...,TARGET to name its tensors; a file "
             "with 'labels' gives dict batches), or module:function[:k=v] / file.py:function returning data "
             "(default: %(default)s)")
MODEL_HELP = ("architecture of the checkpoints: a built-in spec such as mlp:784-256-256-10, "
              "mlp:784-256-10:tanh, cnn:32-64:bn:dropout=0.25, or your function that returns the nn.Module: "
              "module:function, package.module:function or path/to/file.py:function, key=value arguments may "
              "follow (module:function:width=64)")
LOSS_HELP = ("loss: cross_entropy, bce, mse (per-sample mean over outputs, as nn.MSELoss), model (the loss the "
             "model returns, e.g. HF models given labels), or module:function[:k=v] / file.py:function "
             "returning per-sample losses [B] from (output, target) (default: %(default)s)")
FORWARD_HELP = ("how the model is called on a batch: module:function / file.py:function taking (model, batch) "
                "(default: model(x) for (x, y), model(x1, ..., xn) for (x1, ..., xn, y), model(**batch) for dicts)")


def add_out(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--out", default=default, required=default is None, metavar="DIR",
                   help="run directory to write (rerunning with the same options resumes it)"
                   + (" (default: %(default)s)" if default else ""))
    p.add_argument("--force", action="store_true",
                   help="if --out holds a different lossprobe run, move it aside to DIR.old-<time> and start "
                   "afresh (nothing is deleted; a folder that is not a lossprobe run is never touched)")


def add_model_data(p: argparse.ArgumentParser, data_default: str = "fashion-mnist:test") -> None:
    p.add_argument("--model", required=True, metavar="SPEC", help=MODEL_HELP)
    p.add_argument("--data", default=data_default, metavar="DATA", help=DATA_HELP)
    p.add_argument("--subset", type=positive_int, default=None, metavar="N",
                   help="evaluate on a seeded random subset of N samples (default: the whole split)")
    p.add_argument("--subset-seed", type=seed_int, default=0, metavar="S", help="seed of --subset (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=4096, metavar="B",
                   help="samples per forward pass (default: %(default)s)")
    p.add_argument("--loss", default="cross_entropy", metavar="LOSS", help=LOSS_HELP)
    p.add_argument("--forward", default=None, metavar="FN", help=FORWARD_HELP)


def memory_size(text: str) -> str:
    """argparse type of --memory: a size parse_bytes understands (checked now, kept as written)."""
    try:
        parse_bytes(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_memory(p: argparse.ArgumentParser) -> None:
    p.add_argument("--memory", type=memory_size, default=None, metavar="SIZE",
                   help="memory the probe may use beyond the loaded model(s), e.g. 12G or 500M: its parameter-sized "
                   "vectors first, kept gradient graphs with the rest; a probe that cannot fit says so before it "
                   "starts (default: the memory free on the model's device, less 10%%)")


def add_ray_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray-timeout", type=positive_float, default=30.0, metavar="SECONDS",
                   help="give up joining the Ray cluster at --address after this long (default: %(default)s)")


@dataclass
class Setup:
    """What a command works on: the model at a checkpoint, the data, and their `Objective`,
    checked once (finite weights, the model takes the data, a finite loss)."""

    model: nn.Module
    data: Data
    objective: Objective
    checkpoint: str
    loss: float  # at the checkpoint, over all the data


def load_model(spec: str, checkpoint: str) -> nn.Module:
    """Build the architecture from `spec` and load `checkpoint` into it (safely, file checked
    first); a checkpoint with NaN or infinite weights is refused in one line."""
    state = load_state_dict(checkpoint)
    return require_finite(apply_state_dict(build(spec), state, checkpoint).eval(), f"checkpoint {checkpoint}")


def load_setup(args, checkpoint: str, role: str = "", data: Data | None = None, crit: Criterion | None = None,
               model: nn.Module | None = None, **objective_options) -> Setup:
    """The `Setup` of one checkpoint from --model, --data, --subset, --loss, --forward and
    --batch-size; `role` names it in messages ('endpoint A (α = 0)'); `data`, `crit` and the
    loaded `model` are reused when a command has several checkpoints; `objective_options` go
    to `Objective`."""
    model = model if model is not None else load_model(args.model, checkpoint)
    data = data if data is not None else load_split(args.data, args.subset, args.subset_seed)
    crit = crit if crit is not None else criterion_from_args(args, model)
    obj = Objective(model, data, loss=crit, batch_size=args.batch_size, check=False, **objective_options)
    obj.check(f"model '{args.model}'", f"'{args.data}'")
    loss = obj.require_finite_loss(f"{role}, {checkpoint}" if role else checkpoint, args.data)
    return Setup(model, data, obj, checkpoint, loss)


def load_pair(args, roles: tuple[str, str] = ("A", "B"), **objective_options) -> tuple[Setup, Setup]:
    """The setups of the two checkpoints CKPT_A and CKPT_B on the same data and loss."""
    # both checkpoints first: a missing or foreign one is named before any data is read
    model_a, model_b = load_model(args.model, args.ckpt_a), load_model(args.model, args.ckpt_b)
    a = load_setup(args, args.ckpt_a, roles[0], model=model_a, **objective_options)
    b = load_setup(args, args.ckpt_b, roles[1], data=a.data, crit=a.objective.criterion, model=model_b,
                   **objective_options)
    return a, b


def inputs_of(args, **extra) -> dict:
    """{what: path or (folder, select)} of every file a command reads, from its arguments
    (checkpoints, --data, --calib-data, --train-data, the code of --model, --loss and
    --forward) and `extra`: fingerprinted by its run directory, so that a resumed run proves
    it reads what it started with (`results.store.RunDir`)."""
    out = {}
    for attr, what in (("ckpt", "checkpoint"), ("checkpoint", "checkpoint"), ("ckpt_a", "checkpoint A"),
                       ("ckpt_b", "checkpoint B")):
        if getattr(args, attr, None):
            out[what] = getattr(args, attr)
    for attr, option in (("data", "--data"), ("calib_data", "--calib-data"), ("train_data", "--train-data")):
        spec = getattr(args, attr, None)
        if spec:
            out.update({f"{option} {what}": v for what, v in files_of(spec).items()})
    for attr, option in (("model", "--model"), ("loss", "--loss"), ("forward", "--forward")):
        code = source_file(getattr(args, attr, None))
        if code is not None:
            out[f"{option} code"] = code
    out.update(extra)
    return out


def data_name(spec: str) -> str:
    """A short name for the data in tables and summaries: the split of a built-in set, else 'data'."""
    if train_counterpart(spec) is not None and spec.rsplit(":", 1)[-1] in ("train", "val", "test"):
        return spec.rsplit(":", 1)[-1]
    return "data"


def training_data(args, explicit: str | None, option: str, subset: int | None = None, seed: int = 0,
                  subset_option: str = "--subset", warn: bool = True):
    """Training data for BatchNorm statistics, calibration or curve training: `explicit` if
    given, else the training split of --data's built-in set; one line when there is none.
    `subset_option` names the option that set `subset` in the warning when it exceeds the data."""
    spec = explicit or train_counterpart(args.data)
    if spec is None:
        raise UserError(f"'{args.data}' has no training split lossprobe knows of: give {option} DATA")
    return load(spec, subset, seed, option=subset_option, warn=warn)


def user_function(spec: str | None, what: str):
    """The function named by --loss/--forward (with its key=value arguments bound), or None."""
    if spec is None:
        return None

    fn, kwargs = load_callable(spec, what)
    return functools.partial(fn, **kwargs) if kwargs else fn


def criterion_from_args(args, model):
    """The batch contract from --loss and --forward (the loss name, or the user's functions)."""
    loss = args.loss
    if loss not in BUILTIN:
        if not looks_like_code(loss):
            raise UserError(f"unknown loss '{loss}'; choose from {', '.join(BUILTIN)} or give module:function")
        loss = user_function(loss, "loss")
    return criterion(loss, forward=user_function(getattr(args, "forward", None), "forward"), model=model)


def path_plots(x: str, xlabel: str, series: list[tuple[str, str, str, str, bool]], loss_label: str,
               arrays: dict) -> list:
    """Plot declarations for loss and accuracy along paths between two models (store them with
    the arrays: `RunDir.save_arrays(plots=...)`). `series` lists (label, loss array, accuracy
    array, group, dashed) per path and split; the accuracy plot is left out when no accuracy is
    finite (a loss without one)."""
    plots = [line("Loss along the path", x, [Series(lo, lab, g, d) for lab, lo, _, g, d in series], xlabel=xlabel,
                  ylabel=loss_label)]
    if any(np.isfinite(arrays[acc]).any() for _, _, acc, _, _ in series):
        plots.append(line("Accuracy along the path", x, [Series(acc, lab, g, d) for lab, _, acc, g, d in series],
                          xlabel=xlabel, ylabel="accuracy (fraction correct)"))
    return plots


def loss_label(args) -> str:
    """The axis title of the loss a command evaluates (--loss)."""
    return f"mean loss per sample ({args.loss})"
