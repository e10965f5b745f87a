"""The contract every result type follows: it saves, loads, summarises and plots alike.

A result is a dataclass that mixes in `Result` and supplies four small pieces:

    to_arrays(prefix)          its arrays by name (what a .npz holds; `prefix` lets a study
                               keep several results in one file)
    metadata()                 the rest, as JSON values
    from_arrays(arrays, metadata, prefix)   the inverse of the two above (a classmethod)
    summary()                  the key numbers, as JSON values

and, where it has something to draw, ``plots(prefix)``: the `lossprobe.plotspec`
declarations over the names of ``to_arrays(prefix)``; where a table of its summary is not
the best words for it, ``report()``: its section of a report.md. From those the mixin gives every
result the same

    to_dict() / from_dict(d)   one JSON document ({'type', **metadata, 'arrays': {name:
                               nested lists}}) and back
    save(path) / load(path)    PATH.npz (arrays and plot declarations) + PATH.json (type,
                               format, metadata); PATH a folder means FOLDER/<NAME>.npz/.json
    figure(directory)          the declared plots drawn with matplotlib
    to_xarray()                labelled dimensions and coordinates, for gridded results
                               (xarray is optional: ``pip install lossprobe[xarray]``)

A result whose JSON form predates this contract (the keys printed in summaries) keeps it
by overriding `to_dict`/`from_dict`; the files written by `save` are unaffected.

Every dataclass field survives ``save``/``load`` (tests/test_results.py compares them field by
field). ``to_dict``/``from_dict`` keeps every field too, except those a type names in
`JSON_OMITS`: per-probe or per-parameter data too large for a JSON document (e.g.
`EigResult.vectors`, [k, P]), which come back empty (None, or an empty array) from
`from_dict` and which only `save` keeps.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from lossprobe.errors import UserError
from lossprobe.results.store import load_arrays, read_json, save_arrays, to_jsonable, write_json

FORMAT = 1


def _paths(path, name: str) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".npz", ".json"):
        return p.with_suffix(".npz"), p.with_suffix(".json")
    return p / f"{name}.npz", p / f"{name}.json"


def _cell(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _jsonable(v: Any) -> Any:
    return to_jsonable(v)


class Result:
    """Mixin of the result contract (see the module docstring)."""

    NAME: ClassVar[str] = "result"  # file stem when saved into a folder
    GRIDDED: ClassVar[bool] = False  # has to_xarray
    # fields that to_dict leaves out (too large for a JSON document); save/load keeps them
    JSON_OMITS: ClassVar[frozenset[str]] = frozenset()

    # --- what each result supplies ---
    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        raise NotImplementedError

    def metadata(self) -> dict:
        return {}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any] | None = None,
                    prefix: str = ""):
        raise NotImplementedError

    def summary(self) -> dict:
        raise NotImplementedError

    def plots(self, prefix: str = "") -> list:
        return []

    def report(self) -> str:
        """A Markdown section on this result for a report.md (default: its summary's numbers
        as a table); a command or study puts its own context around it."""
        rows = [(k, v) for k, v in self.summary().items() if isinstance(v, (int, float, str, bool)) or v is None]
        return "\n".join(["| quantity | value |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in rows])

    # --- what the contract gives ---
    def to_dict(self) -> dict:
        """One JSON document: {'type', **metadata, 'arrays': {name: nested lists}}."""
        return {"type": type(self).__name__, **_jsonable(self.metadata()),
                "arrays": {k: _jsonable(np.asarray(v)) for k, v in self.to_arrays().items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        """The inverse of `to_dict` (NaN and inf, written as null, come back as NaN)."""
        d = dict(d)
        d.pop("type", None)
        arrays = {k: _array(v) for k, v in d.pop("arrays", {}).items()}
        return cls.from_arrays(arrays, d)

    def save(self, path) -> Path:
        """Write PATH.npz (arrays, plot declarations) and PATH.json (type, format, metadata); PATH
        may be a folder (then FOLDER/<NAME>.npz and .json). Returns the .npz path."""
        npz, js = _paths(path, self.NAME)
        arrays = self.to_arrays()
        save_arrays(npz, arrays, plots=self.plots())
        write_json(js, {"type": type(self).__name__, "format": FORMAT, "metadata": _jsonable(self.metadata())})
        return npz

    @classmethod
    def load(cls, path):
        """Reopen a result written by `save`."""
        npz, js = _paths(path, cls.NAME)
        if not npz.is_file():
            raise UserError(f"no saved {cls.__name__} at {npz}")

        info = read_json(js) if js.is_file() else {}
        if info.get("type") not in (None, cls.__name__):
            raise UserError(f"{npz} holds a {info['type']}, not a {cls.__name__}")

        return cls.from_arrays(load_arrays(npz), info.get("metadata", {}))

    def figure(self, directory=None, name: str | None = None, title: str = ""):
        """Draw `plots()` with matplotlib (the declarations the report site draws with plotly):
        saved as NAME.png/.svg in `directory` when given (returns [NAME]), else the Figure."""
        from lossprobe.results.drawing import (  # lazy: matplotlib adds ~0.3 s to `import lossprobe`
            draw,
            new_figure,
            plot_declared,
        )

        specs, arrays = self.plots(), self.to_arrays()
        if not specs:
            raise TypeError(f"{type(self).__name__} declares nothing to draw; use summary()")
        if directory is not None:
            return plot_declared(specs, arrays, directory, name or self.NAME, title)
        fig, axes = new_figure(ncols=len(specs))
        for spec, ax in zip(specs, np.atleast_1d(axes)):
            draw(spec, arrays, ax)
        return fig

    def to_xarray(self):
        """An xarray.Dataset with labelled dimensions and coordinates (gridded results only)."""
        raise TypeError(f"{type(self).__name__} is not gridded; use to_dict() or summary()")


class Record(Result):
    """A result made of JSON values only (numbers, strings, lists): its dataclass fields are
    its dictionary, and it saves as a .json next to an empty .npz."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        """The fields named in `d`; JSON's null comes back as NaN in a float field (a float, or a
        list or tuple of floats), where `store.to_jsonable` wrote NaN as null."""
        hints = typing.get_type_hints(cls)
        return cls(**{f.name: _nan_for_null(d[f.name], hints.get(f.name)) for f in dataclasses.fields(cls)
                      if f.name in d})

    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        return {}

    def metadata(self) -> dict:
        return self.to_dict()

    @classmethod
    def from_arrays(cls, arrays, metadata=None, prefix: str = ""):
        return cls.from_dict(metadata or {})

    def summary(self) -> dict:
        return self.to_dict()


def _nan_for_null(v: Any, tp: Any) -> Any:
    """`v` read from JSON as a value of type `tp`: None → NaN where `tp` is float (also inside
    lists and tuples); None stays None where `tp` allows None."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        return _nan_for_null(v, rest[0]) if len(rest) == 1 else v
    if tp is float:
        return float("nan") if v is None else v
    if origin in (list, tuple) and isinstance(v, (list, tuple)) and args:
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(v):
                return v
            return type(v)(_nan_for_null(x, a) for x, a in zip(v, args))
        return type(v)(_nan_for_null(x, args[0]) for x in v)
    return v


def _array(v) -> np.ndarray:
    """A JSON list back to an array: bool or int when every entry is one, else float (null → NaN)."""
    a = np.asarray(v, dtype=object)
    flat = a.reshape(-1)
    if flat.size and all(isinstance(x, bool) for x in flat):
        return a.astype(bool)
    if flat.size and all(isinstance(x, int) and not isinstance(x, bool) for x in flat):
        return a.astype(np.int64)
    return np.asarray(np.where(a == None, np.nan, a), dtype=float)  # noqa: E711 - elementwise


def json_float(v) -> float:
    """A float from JSON, where null stands for NaN (`store.to_jsonable` writes NaN as null)."""
    return float("nan") if v is None else float(v)


def xarray():
    """The xarray module, or one clear line saying how to install it."""
    try:
        import xarray as xr  # lazy: xarray is an optional extra
    except ModuleNotFoundError:
        raise UserError("to_xarray needs xarray: pip install 'lossprobe[xarray]' (or pip install xarray)") from None
    return xr


RESULT_TYPES: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make `cls` known to `load_result` by its name."""
    RESULT_TYPES[cls.__name__] = cls
    return cls


def load_result(path):
    """Reopen any saved result (PATH.npz/.json): the type is read from the .json."""
    npz, js = _paths(path, "result")
    if Path(path).is_dir():
        found = sorted(Path(path).glob("*.json"))
        types = [(p, read_json(p).get("type")) for p in found if p.with_suffix(".npz").is_file()]
        types = [(p, t) for p, t in types if t in RESULT_TYPES]
        if len(types) != 1:
            raise UserError(f"{path} holds {len(types)} saved results; name the .npz file")
        js, kind = types[0]
        npz = js.with_suffix(".npz")
    else:
        if not js.is_file():
            raise UserError(f"no saved result at {js}")
        kind = read_json(js).get("type")
    if kind not in RESULT_TYPES:
        raise UserError(f"{js} does not name a known result type (got {kind!r})")
    return RESULT_TYPES[kind].load(npz)


__all__ = ["FORMAT", "RESULT_TYPES", "Record", "Result", "json_float", "load_result", "register", "xarray"]
