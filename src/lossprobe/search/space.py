"""A hyperparameter search space read from TOML, validated with one clear error per mistake.

Format (see examples/space.toml)::

    [train]
    model = "mlp"          # "mlp" (default) or "cnn"
    epochs = 6             # epochs of a full training run
    schedule = "cosine"    # constant | cosine | step

    [params]
    lr = { type = "float", low = 1e-4, high = 0.3, log = true }
    batch_size = { type = "categorical", choices = [32, 64, 128, 256] }
    optimizer = { type = "categorical", choices = ["sgd", "momentum", "adam"] }
    width = { type = "int", low = 32, high = 512, log = true }
    depth = { type = "int", low = 1, high = 3 }
    dropout = 0.0          # a plain value fixes the parameter

Known parameters: lr, momentum, weight_decay, batch_size, optimizer, width, depth,
dropout, activation, schedule, and for CNNs channels (conv channels of the first block,
doubling per block; 0 = width // 4) and batchnorm (true/false). A parameter left out takes
its default (DEFAULTS).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna

from lossprobe.errors import UserError
from lossprobe.models import cnn, mlp
from lossprobe.runtime.config import read_toml
from lossprobe.training.loop import TrainConfig

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad")
SCHEDULES = ("constant", "cosine", "step")
ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid", "elu")

# name -> (default, kind of value, check, description of the valid range)
DEFAULTS: dict[str, Any] = {
    "lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0, "batch_size": 128, "optimizer": "adam",
    "width": 128, "depth": 2, "dropout": 0.0, "activation": "relu", "schedule": "cosine",
    "channels": 0, "batchnorm": False,
}
_NUMERIC = {"lr", "momentum", "weight_decay", "batch_size", "width", "depth", "dropout", "channels"}
_INTEGER = {"batch_size", "width", "depth", "channels"}
_BOOLEAN = {"batchnorm"}
_STRINGS = {"optimizer": OPTIMIZERS, "activation": ACTIVATIONS, "schedule": SCHEDULES}
_RANGES = {
    "lr": (lambda v: v > 0 and math.isfinite(v), "a positive number"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: v >= 0 and math.isfinite(v), "a non-negative number"),
    "batch_size": (lambda v: v >= 1, "a positive integer"),
    "width": (lambda v: v >= 1, "a positive integer"),
    "depth": (lambda v: v >= 0, "a non-negative integer (hidden layers)"),
    "dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "channels": (lambda v: v >= 0, "a non-negative integer (0: width // 4)"),
}
TYPES = ("float", "int", "categorical")
_PARAM_KEYS = {"type", "low", "high", "log", "choices"}
_TRAIN_KEYS = {"model": str, "epochs": int, "schedule": str}


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: a float/int range (optionally log-scaled) or a list of choices."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None

    def sample(self, rng: np.random.Generator):
        if self.type == "categorical":
            return self.choices[int(rng.integers(len(self.choices)))]
        lo, hi = (math.log(self.low), math.log(self.high)) if self.log else (self.low, self.high)
        u = rng.uniform(lo, hi)
        v = math.exp(u) if self.log else u
        if self.type == "int":
            return int(min(max(round(v), self.low), self.high))
        return float(min(max(v, self.low), self.high))

    def suggest(self, trial):
        """Ask an Optuna trial for this parameter."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def distribution(self):

        if self.type == "categorical":
            return optuna.distributions.CategoricalDistribution(list(self.choices))
        if self.type == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
        return optuna.distributions.FloatDistribution(float(self.low), float(self.high), log=self.log)


@dataclass
class SearchSpace:
    """Searched parameters, fixed parameters and the full-training settings."""

    params: list[Param]
    fixed: dict[str, Any] = field(default_factory=dict)
    model: str = "mlp"
    epochs: int = 6
    source: str = "<dict>"

    # --- construction ------------------------------------------------------------
    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> "SearchSpace":
        return cls.from_dict(read_toml(path, "search space file"), source=str(path))

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> "SearchSpace":
        where = f"search space {source}"
        unknown = [k for k in data if k not in ("train", "params")]
        if unknown:
            raise UserError(f"{where}: unknown section '{unknown[0]}'; use [train] and [params]")
        train = data.get("train", {})
        if not isinstance(train, dict):
            raise UserError(f"{where}: 'train' must be a table")
        for k, v in train.items():
            if k not in _TRAIN_KEYS:
                raise UserError(f"{where}: unknown key 'train.{k}'; known: {', '.join(sorted(_TRAIN_KEYS))}")
            if isinstance(v, bool) or not isinstance(v, _TRAIN_KEYS[k]):
                raise UserError(f"{where}: 'train.{k}' must be a {_TRAIN_KEYS[k].__name__}, got {v!r}")
        model = train.get("model", "mlp")
        if model not in ("mlp", "cnn"):
            raise UserError(f"{where}: train.model must be 'mlp' or 'cnn', got '{model}'")
        epochs = train.get("epochs", 6)
        if epochs <= 0:
            raise UserError(f"{where}: train.epochs must be positive, got {epochs}")
        fixed: dict[str, Any] = {}
        if "schedule" in train:
            fixed["schedule"] = _check_value(where, "schedule", train["schedule"])
        raw = data.get("params")
        if not isinstance(raw, dict) or not raw:
            raise UserError(f"{where}: needs a [params] table with at least one parameter")
        params = []
        for name, spec in raw.items():
            if name not in DEFAULTS:
                raise UserError(f"{where}: unknown parameter '{name}'; known: {', '.join(sorted(DEFAULTS))}")
            if isinstance(spec, dict):
                params.append(_parse_param(where, name, spec))
            else:
                fixed[name] = _check_value(where, name, spec)
        if not params:
            raise UserError(f"{where}: every parameter is fixed; give at least one a range or choices")
        return cls(params=params, fixed=fixed, model=model, epochs=epochs, source=source)

    # --- use --------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def complete(self, values: dict) -> dict:
        """Every known hyperparameter: searched values, then fixed ones, then defaults."""
        out = dict(DEFAULTS)
        out.update(self.fixed)
        for k, v in values.items():
            if k not in DEFAULTS:
                raise UserError(f"unknown hyperparameter '{k}'")
            out[k] = v
        return out

    def sample(self, rng: np.random.Generator | int) -> dict:
        """A random configuration (searched parameters only), uniform or log-uniform per range."""
        rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
        return {p.name: p.sample(rng) for p in self.params}

    def suggest(self, trial) -> dict:
        return {p.name: p.suggest(trial) for p in self.params}

    def distributions(self) -> dict:
        return {p.name: p.distribution() for p in self.params}

    def encode(self, values: dict) -> dict[str, float]:
        """Numeric features of a configuration: log10 for log ranges, one-hot for string choices."""
        out: dict[str, float] = {}
        for p in self.params:
            v = values[p.name]
            if p.type == "categorical" and isinstance(p.choices[0], bool):
                out[f"hp_{p.name}"] = float(bool(v))
            elif p.type == "categorical" and isinstance(p.choices[0], str):
                for c in p.choices:
                    out[f"hp_{p.name}={c}"] = float(v == c)
            elif p.log or p.name == "batch_size":
                out[f"hp_log10_{p.name}"] = math.log10(float(v))
            else:
                out[f"hp_{p.name}"] = float(v)
        return out

    def encoded_names(self) -> list[str]:
        return list(self.encode({p.name: p.choices[0] if p.choices else p.low for p in self.params}))

    def to_dict(self) -> dict:
        params = {}
        for p in self.params:
            d: dict[str, Any] = {"type": p.type}
            if p.type == "categorical":
                d["choices"] = list(p.choices)
            else:
                d.update(low=p.low, high=p.high, log=p.log)
            params[p.name] = d
        params.update(self.fixed)
        train = {"model": self.model, "epochs": self.epochs}
        if "schedule" in params and not isinstance(params["schedule"], dict):
            train["schedule"] = params.pop("schedule")
        return {"train": train, "params": params}

    # --- what a configuration means ----------------------------------------------
    def build_model(self, values: dict, input_shape: tuple[int, ...], n_classes: int, seed: int):
        """The network of a configuration for inputs of `input_shape` (without the batch dim)."""
        h = self.complete(values)
        if self.model == "mlp":
            widths = [int(np.prod(input_shape))] + [int(h["width"])] * int(h["depth"]) + [n_classes]
            return mlp(widths, h["activation"], float(h["dropout"]), seed=seed)
        if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
            raise UserError(f"a CNN needs square images [C, H, W], got inputs of shape {input_shape}")
        depth = max(1, int(h["depth"]))
        first = int(h["channels"]) or max(4, int(h["width"]) // 4)
        channels = [first * 2**i for i in range(depth)]
        return cnn(channels, batchnorm=bool(h["batchnorm"]), dropout=float(h["dropout"]), hidden=int(h["width"]),
                   n_classes=n_classes,
                   in_channels=input_shape[0], image_size=input_shape[1], seed=seed)

    def train_config(self, values: dict, epochs: int | None = None, data_seed: int = 0):
        h = self.complete(values)
        return TrainConfig(optimizer=h["optimizer"], lr=float(h["lr"]), momentum=float(h["momentum"]),
                           weight_decay=float(h["weight_decay"]), batch_size=int(h["batch_size"]),
                           schedule=h["schedule"], epochs=int(epochs or self.epochs), data_seed=data_seed)


def _check_value(where: str, name: str, v):
    if name in _BOOLEAN:
        if not isinstance(v, bool):
            raise UserError(f"{where}: '{name}' must be true or false, got {v!r}")
        return v
    if name in _STRINGS:
        if not isinstance(v, str) or v not in _STRINGS[name]:
            raise UserError(f"{where}: '{name}' must be one of {list(_STRINGS[name])}, got {v!r}")
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise UserError(f"{where}: '{name}' must be a number, got {v!r}")
    if name in _INTEGER and not (isinstance(v, int) or float(v).is_integer()):
        raise UserError(f"{where}: '{name}' must be an integer, got {v!r}")
    ok, what = _RANGES[name]
    if not ok(v):
        raise UserError(f"{where}: '{name}' must be {what}, got {v!r}")
    return int(v) if name in _INTEGER else float(v)


def _parse_param(where: str, name: str, spec: dict) -> Param:
    bad = [k for k in spec if k not in _PARAM_KEYS]
    if bad:
        raise UserError(f"{where}: parameter '{name}' has unknown key '{bad[0]}'; use {', '.join(sorted(_PARAM_KEYS))}")
    kind = spec.get("type")
    if kind is None:
        kind = "categorical" if "choices" in spec else None
    if kind not in TYPES:
        raise UserError(f"{where}: parameter '{name}' needs type = \"float\", \"int\" or \"categorical\", got {kind!r}")
    if kind == "categorical":
        choices = spec.get("choices")
        if "low" in spec or "high" in spec or "log" in spec:
            raise UserError(f"{where}: categorical parameter '{name}' takes choices, not low/high/log")
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}: parameter '{name}' needs a non-empty list of choices")
        checked = tuple(_check_value(where, name, c) for c in choices)
        if len(set(checked)) != len(checked):
            raise UserError(f"{where}: parameter '{name}' lists a choice twice: {choices}")
        return Param(name, "categorical", choices=checked)
    if name in _STRINGS or name in _BOOLEAN:
        raise UserError(f"{where}: parameter '{name}' takes choices (type = \"categorical\"), not a {kind} range")
    if kind == "float" and name in _INTEGER:
        raise UserError(f"{where}: parameter '{name}' is an integer; use type = \"int\"")
    if "choices" in spec:
        raise UserError(f"{where}: parameter '{name}' of type {kind} takes low/high, not choices")
    for k in ("low", "high"):
        if k not in spec:
            raise UserError(f"{where}: parameter '{name}' needs '{k}'")
    low, high = _check_value(where, name, spec["low"]), _check_value(where, name, spec["high"])
    if kind == "int" and not all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("low", "high")):
        raise UserError(f"{where}: int parameter '{name}' needs integer low and high")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise UserError(f"{where}: parameter '{name}': log must be true or false, got {log!r}")
    if not low < high:
        raise UserError(f"{where}: parameter '{name}' needs low < high, got low={spec['low']}, high={spec['high']}")
    if log and low <= 0:
        raise UserError(f"{where}: parameter '{name}' is log-scaled, so low must be > 0 (got {spec['low']})")
    return Param(name, kind, low=low, high=high, log=log)


def load_space(path: str | os.PathLike) -> SearchSpace:
    return SearchSpace.from_toml(path)
