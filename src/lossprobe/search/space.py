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

import dataclasses
import difflib
import inspect
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
        if "model" in data and "params" not in data:
            raise UserError(f"{where}: a [model] table passes values to your own model builder: give it with "
                            "--model file.py:build (build= in Python); the built-in mlp/cnn take [train] and [params]")
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
            raise UserError(f"{where}: train.model must be 'mlp' or 'cnn', got '{model}'; for your own model give "
                            "--model file.py:build and put its arguments in a [model] table")
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
    return _range(where, f"parameter '{name}'", name, kind, spec, lambda k, v: _check_value(where, name, v))


def _range(where: str, label: str, name: str, kind: str, spec: dict, value) -> Param:
    """The low/high range (optionally log-scaled) of type `kind` that `spec` gives, each bound
    checked and converted by `value(key, bound)`; one line naming `label` for what is wrong."""
    if "choices" in spec:
        raise UserError(f"{where}: {label} of type {kind} takes low/high, not choices")
    for k in ("low", "high"):
        if k not in spec:
            raise UserError(f"{where}: {label} needs '{k}'")
    low, high = value("low", spec["low"]), value("high", spec["high"])
    if kind == "int" and not all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("low", "high")):
        raise UserError(f"{where}: {label} is an int range; give integer low and high")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise UserError(f"{where}: {label}: log must be true or false, got {log!r}")
    if not low < high:
        raise UserError(f"{where}: {label} needs low < high, got low={spec['low']}, high={spec['high']}")
    if log and low <= 0:
        raise UserError(f"{where}: {label} is log-scaled, so low must be > 0 (got {spec['low']})")
    return Param(name, kind, low=low, high=high, log=log)


def load_space(path: str | os.PathLike, builder=None, builder_kwargs: dict | None = None) -> SearchSpace:
    """The space in the TOML file at `path`: the built-in format ([train] and [params]), or, with
    `builder` (your function or class that returns the nn.Module), the format with [model] and
    [train] tables (`UserSpace`), its names checked against the builder's signature and `fit`'s options."""
    if builder is None:
        return SearchSpace.from_toml(path)
    return UserSpace.from_dict(read_toml(path, "search space file"), source=str(path), builder=builder,
                               builder_kwargs=builder_kwargs)


def space_from_dict(data: dict, source: str = "<dict>") -> SearchSpace:
    """A space from its `to_dict()` form: the built-in format has [params], the builder format does not."""
    if "params" in data:
        return SearchSpace.from_dict(data, source=source)
    return UserSpace.from_dict(data, source=source)


# --- a space for your own model builder ---------------------------------------------------------
# fit's options that the search sets itself, and why (a space's [train] table may not set them)
SEARCH_SETS = {"data_seed": "the search seeds every training itself (--seed)",
               "loss": "the loss is given with --loss (loss= in Python)",
               "trajectory_every": "a search records no parameter trajectories"}
# fit's options that only take a fixed value, and why
FIXED_ONLY = {"epochs": "it is the length of a full training, the search's top fidelity",
              "eval_batch_size": "it changes no number, only memory use"}
USER_EPOCHS = 6  # a full training's epochs when [train] does not say
_SCALAR = (bool, int, float, str)


def fit_options() -> dict[str, str]:
    """`fit`'s options (`TrainConfig` fields) that a space's [train] table may set, with their kind
    ('int', 'float' or 'str')."""
    return {f.name: str(f.type) for f in dataclasses.fields(TrainConfig) if f.name not in SEARCH_SETS}


def describe_builder(builder) -> str:
    """'name(signature)' of a model builder, for error messages."""
    name = getattr(builder, "__qualname__", None) or getattr(builder, "__name__", None) or type(builder).__name__
    try:
        return f"{name}{inspect.signature(builder)}"
    except (TypeError, ValueError):
        return f"{name}(...)"


def check_builder_names(builder, names, where: str = "search space") -> None:
    """One line when a [model] name is not a keyword the builder takes, or when the builder needs
    an argument that [model] does not give. A builder whose signature cannot be read is not checked."""
    try:
        sig = inspect.signature(builder)
    except (TypeError, ValueError):
        return
    P = inspect.Parameter
    params = list(sig.parameters.values())
    any_name = any(p.kind is P.VAR_KEYWORD for p in params)
    keywords = [p.name for p in params if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)]
    for n in names:
        if not any_name and n not in keywords:
            near = difflib.get_close_matches(n, keywords, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise UserError(f"{where}: [model] '{n}' is not a parameter of the model builder "
                            f"{describe_builder(builder)}{hint}; [model] names must be its keyword arguments")
    needed = [p.name for p in params if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)
              and p.default is P.empty and p.name not in names]
    if needed:
        raise UserError(f"{where}: the model builder {describe_builder(builder)} needs '{needed[0]}', which "
                        "[model] does not give: add a value or a range for it")


@dataclass
class UserSpace(SearchSpace):
    """A space for your own model builder: a [model] table whose values are the builder's keyword
    arguments and a [train] table whose values are `fit`'s options (`TrainConfig`), each a fixed
    value or a range::

        [model]
        width = { low = 16, high = 256, log = true }     # int range (integer bounds)
        dropout = { low = 0.0, high = 0.5 }              # float range
        activation = { choices = ["relu", "gelu"] }       # choices
        layers = 2                                        # a fixed value

        [train]
        epochs = 6                                        # a full training (fixed)
        optimizer = "adamw"
        lr = { low = 1e-5, high = 1e-2, log = true }
        weight_decay = { low = 1e-6, high = 0.1, log = true }
        warmup_epochs = { low = 0.0, high = 1.0 }

    A range's type follows its bounds (integers: int) unless ``type`` says otherwise. Names are
    checked against the builder's signature and fit's options before anything runs (one line
    naming the parameter); the search seeds every training itself and takes the loss from
    ``--loss``, so [train] cannot set ``data_seed``, ``loss`` or ``trajectory_every``.
    """

    tables: dict = field(default_factory=dict)  # name -> "model" | "train", for searched and fixed names
    model: str = "builder"

    @classmethod
    def from_toml(cls, path: str | os.PathLike, builder=None, builder_kwargs: dict | None = None) -> "UserSpace":
        return cls.from_dict(read_toml(path, "search space file"), source=str(path), builder=builder,
                             builder_kwargs=builder_kwargs)

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>", builder=None,
                  builder_kwargs: dict | None = None) -> "UserSpace":
        """Validated. `builder`: the model builder whose signature the [model] names are checked
        against (None: not checked); `builder_kwargs`: values its spec already fixes
        (file.py:build:width=64), which [model] may not give again."""
        where = f"search space {source}"
        if "params" in data:
            raise UserError(f"{where}: with your own model builder, put each hyperparameter in [model] (the "
                            "builder's arguments) or [train] (fit's options) instead of [params]")
        unknown = [k for k in data if k not in ("model", "train")]
        if unknown:
            raise UserError(f"{where}: unknown section '{unknown[0]}'; use [model] (the builder's arguments) and "
                            "[train] (fit's options)")
        tables: dict[str, str] = {}
        params: list[Param] = []
        fixed: dict[str, Any] = {}
        options = fit_options()
        raw = {}
        for table in ("model", "train"):
            t = data.get(table, {})
            if not isinstance(t, dict):
                raise UserError(f"{where}: '{table}' must be a table ([{table}])")
            for name, spec in t.items():
                if name in tables:
                    raise UserError(f"{where}: '{name}' is in both [model] and [train]; a name goes to one of them")
                tables[name] = table
                raw[name] = spec
        for name in (builder_kwargs or {}):
            if tables.get(name) == "model":
                raise UserError(f"{where}: [model] '{name}' is fixed already by the builder's spec "
                                f"({name}={builder_kwargs[name]!r}); give it in one place")
        for name, table in tables.items():
            if table != "train":
                continue
            if name in SEARCH_SETS:
                raise UserError(f"{where}: [train] '{name}' cannot be set in a search space: {SEARCH_SETS[name]}")
            if name not in options:
                raise UserError(f"{where}: [train] '{name}' is not an option of fit; its options are "
                                f"{', '.join(sorted(options))}")
            if name in FIXED_ONLY and isinstance(raw[name], dict):
                raise UserError(f"{where}: [train] '{name}' takes a fixed value, not a range: {FIXED_ONLY[name]}")
        if builder is not None:
            check_builder_names(builder, [n for n, t in tables.items() if t == "model"] + list(builder_kwargs or {}),
                                where)
        epochs = raw.pop("epochs", USER_EPOCHS)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs <= 0:
            raise UserError(f"{where}: [train] 'epochs' must be a positive integer, got {epochs!r}")
        tables.pop("epochs", None)
        train_fixed = {n: v for n, v in raw.items() if tables[n] == "train" and not isinstance(v, dict)}
        for n, v in train_fixed.items():
            _check_fit_value(where, n, v, options[n], {}, epochs)
        _check_fit_value(where, None, None, None, train_fixed, epochs)
        for name, spec in raw.items():
            table = tables[name]
            if isinstance(spec, dict):
                p = _parse_user_param(where, table, name, spec, options.get(name) if table == "train" else None)
                if table == "train":
                    for v in (p.choices if p.type == "categorical" else (p.low, p.high)):
                        _check_fit_value(where, name, v, options[name], train_fixed, epochs)
                params.append(p)
            else:
                if table == "model" and isinstance(spec, list) and any(isinstance(v, dict) for v in spec):
                    raise UserError(f"{where}: [model] '{name}' holds tables; give numbers, strings, booleans or "
                                    "lists of them")
                fixed[name] = spec
        if not params:
            raise UserError(f"{where}: every parameter is fixed; give at least one a range or choices")
        return cls(params=params, fixed=fixed, epochs=epochs, source=source, tables=tables)

    # --- what a configuration means ------------------------------------------------
    def complete(self, values: dict) -> dict:
        """Every value of a configuration: fixed ones and the searched `values`."""
        out = dict(self.fixed)
        for k, v in values.items():
            if k not in self.tables:
                raise UserError(f"unknown hyperparameter '{k}'; this space has {', '.join(self.tables)}")
            out[k] = v
        return out

    def model_kwargs(self, values: dict) -> dict:
        """The builder's keyword arguments of a configuration ([model])."""
        return {k: v for k, v in self.complete(values).items() if self.tables[k] == "model"}

    def train_kwargs(self, values: dict) -> dict:
        """fit's options of a configuration ([train], without epochs)."""
        return {k: v for k, v in self.complete(values).items() if self.tables[k] == "train"}

    def train_config(self, values: dict, epochs: int | None = None, data_seed: int = 0):
        return TrainConfig(**self.train_kwargs(values), epochs=int(epochs or self.epochs), data_seed=data_seed)

    def build_model(self, values, input_shape=None, n_classes=None, seed=0):
        raise TypeError("a builder space's models are built by its task (UserTask.build_model)")

    def encode(self, values: dict) -> dict[str, float]:
        """As `SearchSpace.encode`; choices that are not all numbers (or all booleans) are one-hot."""
        out: dict[str, float] = {}
        for p in self.params:
            v = values[p.name]
            if p.type == "categorical":
                if all(isinstance(c, bool) for c in p.choices):
                    out[f"hp_{p.name}"] = float(bool(v))
                elif all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in p.choices):
                    pos = all(c > 0 for c in p.choices)
                    out[f"hp_log10_{p.name}" if p.name == "batch_size" and pos else f"hp_{p.name}"] = (
                        math.log10(float(v)) if p.name == "batch_size" and pos else float(v))
                else:
                    for c in p.choices:
                        out[f"hp_{p.name}={c}"] = float(v == c)
            elif p.log:
                out[f"hp_log10_{p.name}"] = math.log10(float(v))
            else:
                out[f"hp_{p.name}"] = float(v)
        return out

    def to_dict(self) -> dict:
        out: dict[str, dict] = {"model": {}, "train": {"epochs": self.epochs}}
        for p in self.params:
            d: dict[str, Any] = {"type": p.type}
            if p.type == "categorical":
                d["choices"] = list(p.choices)
            else:
                d.update(low=p.low, high=p.high, log=p.log)
            out[self.tables[p.name]][p.name] = d
        for k, v in self.fixed.items():
            out[self.tables[k]][k] = v
        return out


def _check_fit_value(where: str, name: str | None, value, kind: str | None, fixed: dict, epochs: int) -> None:
    """One line when `value` of fit's option `name` has the wrong type or fails `TrainConfig`'s checks
    together with the `fixed` options (name None: check the fixed options together)."""
    if name is not None:
        ok = {"int": isinstance(value, int) and not isinstance(value, bool),
              "float": isinstance(value, (int, float)) and not isinstance(value, bool),
              "str": isinstance(value, str)}.get(kind, True)
        if not ok:
            what = {"int": "an integer", "float": "a number", "str": "a string"}[kind]
            raise UserError(f"{where}: [train] '{name}' must be {what}, got {value!r}")
    try:
        TrainConfig(**{**fixed, **({name: value} if name else {}), "epochs": epochs})
    except UserError as e:
        raise UserError(f"{where}: [train]{f' {name!r}' if name else ''}: {e}") from None


def _parse_user_param(where: str, table: str, name: str, spec: dict, kind: str | None) -> Param:
    """A range or choices of the builder format; the type follows the bounds unless `type` is given."""
    label = f"[{table}] '{name}'"
    bad = [k for k in spec if k not in _PARAM_KEYS]
    if bad:
        raise UserError(f"{where}: {label} has unknown key '{bad[0]}'; a range has low, high and optionally "
                        "log = true (and type = \"int\" or \"float\"), choices have choices = [...]")
    t = spec.get("type")
    if t is None:
        t = "categorical" if "choices" in spec else (
            "int" if kind != "float" and all(isinstance(spec.get(k), int) and not isinstance(spec.get(k), bool)
                                             for k in ("low", "high"))
            else "float")
    if t not in TYPES:
        raise UserError(f"{where}: {label}: type must be \"float\", \"int\" or \"categorical\", got {t!r}")
    if t == "categorical":
        choices = spec.get("choices")
        if any(k in spec for k in ("low", "high", "log")):
            raise UserError(f"{where}: {label} takes choices, not low/high/log")
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}: {label} needs a non-empty list of choices")
        if not all(isinstance(c, _SCALAR) for c in choices):
            raise UserError(f"{where}: {label}: choices must be numbers, strings or booleans, got {choices!r}")
        if len({(type(c), c) for c in choices}) != len(choices):
            raise UserError(f"{where}: {label} lists a choice twice: {choices}")
        return Param(name, "categorical", choices=tuple(choices))
    if kind == "str":
        raise UserError(f"{where}: {label} is a name: give choices = [...], not a range")
    if kind == "int" and t == "float":
        raise UserError(f"{where}: {label} is an integer; give integer low and high (or type = \"int\")")

    def bound(k, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise UserError(f"{where}: {label}: '{k}' must be a finite number, got {v!r}")
        return int(v) if t == "int" and isinstance(v, int) else float(v)

    return _range(where, label, name, t, spec, bound)
