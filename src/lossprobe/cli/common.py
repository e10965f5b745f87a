"""Options and helpers shared by subcommands."""

from __future__ import annotations

import argparse
import math


DATA_HELP = ("data split to evaluate on: fashion-mnist:train|val|test or spiral:train|val|test "
             "(default: %(default)s)")
MODEL_HELP = ("architecture of the checkpoints: a built-in spec such as mlp:784-256-256-10, "
              "mlp:784-256-10:tanh, cnn:32-64:bn:dropout=0.25, or package.module:function "
              "(a function of yours that returns the nn.Module; key=value arguments may follow)")


def add_out(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--out", default=default, required=default is None, metavar="DIR",
                   help="run directory to write (rerunning with the same options resumes it)"
                   + (" (default: %(default)s)" if default else ""))
    p.add_argument("--force", action="store_true",
                   help="if --out holds a different lossprobe run, move it aside to DIR.old-<time> and start "
                   "afresh (nothing is deleted; a folder that is not a lossprobe run is never touched)")


def add_model_data(p: argparse.ArgumentParser, data_default: str = "fashion-mnist:test") -> None:
    p.add_argument("--model", required=True, metavar="SPEC", help=MODEL_HELP)
    p.add_argument("--data", default=data_default, metavar="SET:SPLIT", help=DATA_HELP)
    p.add_argument("--subset", type=positive_int, default=None, metavar="N",
                   help="evaluate on a seeded random subset of N samples (default: the whole split)")
    p.add_argument("--subset-seed", type=int, default=0, metavar="S", help="seed of --subset (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=4096, metavar="B",
                   help="samples per forward pass (default: %(default)s)")


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got '{text}'") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a positive, finite number, got {text}")
    return v


def finite_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return v


def add_ray_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray-timeout", type=positive_float, default=30.0, metavar="SECONDS",
                   help="give up joining the Ray cluster at --address after this long (default: %(default)s)")


def require_finite(model, checkpoint: str):
    """Refuse a model with NaN or infinite parameters or buffers, naming the checkpoint; returns the model."""
    import torch

    bad = total = 0
    first = None
    for name, t in model.state_dict().items():
        if t.is_floating_point():
            n = int((~torch.isfinite(t)).sum())
            if n and first is None:
                first = name
            bad += n
            total += t.numel()
    if bad:
        from ..errors import UserError

        raise UserError(f"checkpoint {checkpoint} has {bad} non-finite value(s) (NaN or inf) among its {total} "
                        f"weights, first in '{first}'; loss, barriers and curvature are undefined there")
    return model


def require_finite_loss(model, split, checkpoint: str, data: str, label: str = "", batch_size: int = 4096) -> float:
    """The loss of `model` on `split`; a NaN or infinite loss is one line naming the checkpoint
    (`label`, e.g. 'endpoint A (α = 0)', says which role it plays)."""
    import math

    from ..train import evaluate_model

    loss = evaluate_model(model, split, batch_size=batch_size)[0]
    if not math.isfinite(loss):
        from ..errors import UserError

        what = f"{label}, {checkpoint}" if label else checkpoint
        raise UserError(f"the loss at {what} is {loss} on {data}: the model outputs NaN or inf there, so "
                        "barriers, curvature and surfaces around it are undefined")
    return loss


def load_model(spec: str, checkpoint: str):
    """Build the architecture from `spec` and load `checkpoint` into it (safely, file checked first)."""
    from ..models import build
    from ..train import apply_state_dict, load_state_dict

    state = load_state_dict(checkpoint)
    return apply_state_dict(build(spec), state, checkpoint).eval()
