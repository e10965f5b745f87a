"""Study configurations: dataclasses filled from defaults, a TOML file and CLI flags, validated."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tomllib
import typing
from typing import Any, TypeVar

from lossprobe.errors import UserError

T = TypeVar("T")


# --- command-line value checkers (argparse `type=`), named in the fields of study configurations ---
def nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got '{text}'") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return v


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


SEED_MAX = 2 ** 63 - 1


def seed_int(text: str) -> int:
    """A seed: an integer from 0 to 2**63 - 1 (what every generator lossprobe uses accepts)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a seed (an integer from 0 to {SEED_MAX}), got '{text}'") from None
    if not 0 <= v <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to {SEED_MAX}, got {v}")
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


def comma_list(text: str) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c'] (empty items dropped)."""
    return [x.strip() for x in text.split(",") if x.strip()]


def _check(name: str, value: Any, tp: Any) -> Any:
    """Return `value` coerced to `tp` where harmless (int -> float), else raise naming `name`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(name, value, a)
            except UserError as e:
                errors.append(e)
        raise errors[0]
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{name}' must be a list, got {type(value).__name__} {value!r}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        return [_check(f"{name}[{i}]", v, inner) for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config key '{name}' must be a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"config key '{name}' must be an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key '{name}' must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"config key '{name}' must be a string, got {type(value).__name__} {value!r}")
        return value
    return value


def from_dict(cls: type[T], values: dict, base: T | None = None) -> T:
    """Build dataclass `cls` from `values` on top of `base` (or defaults), checking keys and types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    out = dataclasses.asdict(base) if base is not None else {}
    for k, v in values.items():
        if k not in names:
            raise UserError(f"unknown config key '{k}'; known keys: {', '.join(sorted(names))}")
        out[k] = _check(k, v, hints[k])
    return cls(**out)


def read_toml(path: str | os.PathLike, what: str = "config file") -> dict:
    """The parsed TOML file at `path`; a missing, unreadable or malformed file is a UserError naming `what`."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a folder, not a TOML file") from None
    except PermissionError:
        raise UserError(f"{what} {path} cannot be read (permission denied)") from None
    except OSError as e:
        raise UserError(f"{what} {path} cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not valid TOML: it is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{what} {path} is not valid TOML: {e}") from None
    except RecursionError:
        raise UserError(f"{what} {path} is nested too deeply to read") from None


def load(cls: type[T], path: str | os.PathLike | None = None, overrides: dict | None = None,
         presets: dict | None = None) -> T:
    """Defaults, then `presets` (e.g. --quick), then the TOML file at `path`, then `overrides`
    (flags the user set; None values ignored): what the user wrote wins over a preset."""
    cfg = cls()
    if presets:
        cfg = from_dict(cls, presets, cfg)
    if path is not None:
        cfg = from_dict(cls, read_toml(path), cfg)
    if overrides:
        cfg = from_dict(cls, {k: v for k, v in overrides.items() if v is not None}, cfg)
    return cfg
