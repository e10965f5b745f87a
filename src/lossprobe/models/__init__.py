"""Reference models and model specs.

A model spec is how the CLI names an architecture:

* ``mlp:784-256-256-10`` an MLP with those layer widths (ReLU); append ``:tanh``,
  ``:gelu``, ``:sigmoid`` or ``:elu`` for another activation, ``:init=kaiming`` for He
  initialisation (normal, fan-in, zero biases; deep ReLU MLPs need it to train) instead
  of PyTorch's default.
* ``cnn:32-64`` a small CNN for 28×28 greyscale images with conv blocks of those channel
  counts; options ``:bn`` (BatchNorm), ``:dropout=0.25``, ``:hidden=128``, ``:classes=10``,
  ``:in=1``, ``:size=28``.
* ``module:function``, ``package.module:function`` or ``path/to/file.py:function`` imports
  your code and calls ``function()`` (keyword arguments as ``...:function:key=value:...``);
  modules in the current directory are found as ``python -m`` would find them.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from lossprobe.core.specs import call_user, load_callable, looks_like_code, options
from lossprobe.errors import UserError, first_line
from lossprobe.results.store import available_memory

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "elu": nn.ELU}


INITS = ("default", "kaiming")


def mlp(widths: Sequence[int], activation: str = "relu", dropout: float = 0.0, seed: int | None = None,
        init: str = "default") -> nn.Sequential:
    """Fully connected network: widths[0] inputs, widths[-1] outputs, one activation between layers.

    Inputs of any shape [N, ...] are flattened first. `init`: PyTorch's default, or
    "kaiming" (He normal, fan-in, ReLU gain; zero biases).
    """
    widths = [int(w) for w in widths]
    if len(widths) < 2 or any(w <= 0 for w in widths):
        raise UserError(f"an MLP needs at least two positive widths, got {widths}")
    if activation not in ACTIVATIONS:
        raise UserError(f"unknown activation '{activation}'; choose from {sorted(ACTIVATIONS)}")
    if not 0 <= dropout < 1:
        raise UserError(f"dropout must be in [0, 1), got {dropout}")
    if init not in INITS:
        raise UserError(f"unknown init '{init}'; choose from {list(INITS)}")
    with _seeded(seed):
        layers: list[nn.Module] = [nn.Flatten()]
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(ACTIVATIONS[activation]())
                if dropout:
                    layers.append(nn.Dropout(dropout))
        if init == "kaiming":
            with torch.no_grad():
                for layer in layers:
                    if isinstance(layer, nn.Linear):
                        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                        layer.bias.zero_()
        return nn.Sequential(*layers)


def cnn(
    channels: Sequence[int] = (32, 64),
    batchnorm: bool = False,
    dropout: float = 0.0,
    hidden: int = 128,
    n_classes: int = 10,
    in_channels: int = 1,
    image_size: int = 28,
    seed: int | None = None,
) -> nn.Sequential:
    """Small CNN: per block conv3×3 → [BatchNorm] → ReLU → max-pool 2, then a hidden
    Linear layer with [dropout], then the classifier."""
    channels = [int(c) for c in channels]
    if not channels or any(c <= 0 for c in channels):
        raise UserError(f"a CNN needs positive channel counts, got {channels}")
    if image_size >> len(channels) < 1:
        raise UserError(f"{len(channels)} pooling blocks are too many for {image_size}×{image_size} images")
    if not 0 <= dropout < 1:
        raise UserError(f"dropout must be in [0, 1), got {dropout}")
    with _seeded(seed):
        layers: list[nn.Module] = []
        c_in, size = in_channels, image_size
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=not batchnorm)]
            if batchnorm:
                layers.append(nn.BatchNorm2d(c))
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            c_in, size = c, size // 2
        layers += [nn.Flatten()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Linear(c_in * size * size, hidden), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(hidden, n_classes))
        return nn.Sequential(*layers)


class _seeded:
    """Seed torch's global generator for initialisation, then restore its state."""

    def __init__(self, seed: int | None):
        self.seed = seed

    def __enter__(self):
        if self.seed is not None:
            self.state = torch.random.get_rng_state()
            torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        if self.seed is not None:
            torch.random.set_rng_state(self.state)


def build(spec: str, seed: int | None = None) -> nn.Module:
    """Build a model from a spec string (see the module docstring), initialised with `seed`."""
    if not isinstance(spec, str) or ":" not in spec:
        raise UserError(f"unknown model spec '{spec}'; use e.g. mlp:784-256-256-10, cnn:32-64:bn, module:function "
                        "or path/to/file.py:function")

    kind, *rest = spec.split(":")
    try:
        if kind == "mlp":
            if not rest or not rest[0]:
                raise UserError(f"model spec '{spec}' needs widths, e.g. mlp:784-256-256-10")
            flags, kv = options(rest[1:])
            unknown = [f for f in flags if f not in ACTIVATIONS] + [k for k in kv if k not in ("dropout", "init")]
            if unknown:
                raise UserError(f"unknown option '{unknown[0]}' in model spec '{spec}'")
            if len(flags) > 1:
                raise UserError(f"model spec '{spec}' names {len(flags)} activations ({', '.join(flags)}); an MLP "
                                "has one")
            widths = rest[0].split("-")
            _fits_in_memory(spec, _mlp_parameters([int(w) for w in widths]))
            return _allocating(spec, lambda: mlp(widths, flags[0] if flags else "relu", float(kv.get("dropout", 0)),
                                                 seed, str(kv.get("init", "default"))))
        if kind == "cnn":
            chans = rest[0].split("-") if rest and rest[0] else ["32", "64"]
            flags, kv = options(rest[1:])
            known = {"dropout", "hidden", "classes", "in", "size"}
            unknown = [f for f in flags if f != "bn"] + [k for k in kv if k not in known]
            if unknown:
                raise UserError(f"unknown option '{unknown[0]}' in model spec '{spec}'")
            if flags.count("bn") > 1:
                raise UserError(f"model spec '{spec}' names bn twice")
            args = ([int(c) for c in chans], int(kv.get("hidden", 128)), int(kv.get("classes", 10)),
                    int(kv.get("in", 1)), int(kv.get("size", 28)))
            if min(args[0] + list(args[1:])) > 0:
                _fits_in_memory(spec, _cnn_parameters(*args))
            return _allocating(spec, lambda: cnn(chans, "bn" in flags, float(kv.get("dropout", 0)), args[1], args[2],
                                                 args[3], args[4], seed))
    except ValueError as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"cannot parse model spec '{spec}': {e}") from None

    if looks_like_code(spec):
        return _from_function(spec, seed)
    raise UserError(f"unknown model spec '{spec}'; use mlp:WIDTHS, cnn:CHANNELS, module:function "
                    "or path/to/file.py:function")


def _mlp_parameters(widths: list[int]) -> int:
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


def _cnn_parameters(channels: list[int], hidden: int, classes: int, c_in: int, size: int) -> int:
    n = 0
    for c in channels:
        n += c_in * c * 9 + 3 * c  # conv, its bias or BatchNorm
        c_in, size = c, max(size // 2, 1)
    return n + (c_in * size * size + 1) * hidden + (hidden + 1) * classes


def _fits_in_memory(spec: str, n: int) -> None:
    """Refuse a built-in model whose float32 parameters cannot fit in the memory available."""
    need = 4 * n
    have = available_memory()
    if need > 2 ** 40 or (have is not None and need > have):
        raise UserError(f"model spec '{spec}' has {n:,} parameters ({need / 1e9:,.1f} GB in float32), more than "
                        f"the {have / 1e9:,.1f} GB of memory available" if have is not None else
                        f"model spec '{spec}' has {n:,} parameters ({need / 1e9:,.1f} GB in float32): too large")


def _allocating(spec: str, build_fn):
    """build_fn(), an allocation failure being one line naming the spec."""
    try:
        return build_fn()
    except MemoryError:
        raise UserError(f"model spec '{spec}' does not fit in memory") from None
    except RuntimeError as e:
        if "alloc" in str(e).lower() or "memory" in str(e).lower():
            raise UserError(f"model spec '{spec}' does not fit in memory ({first_line(e)})") from None
        raise


def _from_function(spec: str, seed: int | None) -> nn.Module:
    fn, kwargs = load_callable(spec, "model")
    with _seeded(seed):
        model = call_user(fn, kwargs, spec, "model")
    if not isinstance(model, nn.Module):
        raise UserError(f"model '{spec}' returned {type(model).__name__}, not a torch.nn.Module")
    return model


__all__ = ["ACTIVATIONS", "INITS", "build", "cnn", "mlp"]
