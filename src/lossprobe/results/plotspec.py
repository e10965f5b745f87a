"""What a result asks to be drawn: small declarations that figures and the report site both read.

A producer saves arrays together with a list of `PlotSpec`s naming which arrays are the
axes, which are the series, their labels, units and scales. The report site (plotly) and
the matplotlib figures draw what they are told; neither guesses from array names.

Two kinds:

    line      x [n] against one or more series [n] (a path, a learning curve, a sweep)
    surface   z [len(rows), len(cols)] over the grid rows × cols: z[i, j] is the value at
              (rows[i], cols[j]); the x axis of a drawing is `cols`, the y axis `rows`

Declarations are stored inside the .npz they describe (entry ``_plots``, JSON text, no
pickle) by `lossprobe.store.save_arrays`, so they cannot drift from the arrays.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

KINDS = ("line", "surface")


@dataclass(frozen=True)
class Series:
    """One curve of a line plot: the array `y` drawn against the plot's x, named `label`.

    `group` puts series that belong together (e.g. the train and test loss of one path)
    in one colour; `dash` marks a secondary series (e.g. a split) drawn dashed."""

    y: str
    label: str = ""
    group: str = ""
    dash: bool = False


@dataclass(frozen=True)
class PlotSpec:
    """A declaration of one plot over named arrays (see the module docstring)."""

    kind: str
    title: str
    x: str | None = None  # line: the 1-D x array
    series: tuple[Series, ...] = ()  # line: the curves
    z: str | None = None  # surface: the 2-D values
    rows: str | None = None  # surface: coordinates of z's rows (drawn on the y axis)
    cols: str | None = None  # surface: coordinates of z's columns (drawn on the x axis)
    xlabel: str = ""
    ylabel: str = ""
    zlabel: str = ""
    log_x: bool = False
    log_y: bool = False  # line: y values; surface: not used
    log_z: bool = False  # surface: colour scale of z
    description: str = ""
    marks: dict = field(default_factory=dict)  # named points to mark, e.g. {"A": [0, 0]} (x, y)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"plot kind must be one of {KINDS}, got {self.kind!r}")
        object.__setattr__(self, "series", tuple(s if isinstance(s, Series) else Series(**s) for s in self.series))
        if self.kind == "line" and (self.x is None or not self.series):
            raise ValueError(f"line plot '{self.title}' needs x and at least one series")
        if self.kind == "surface" and None in (self.z, self.rows, self.cols):
            raise ValueError(f"surface plot '{self.title}' needs z, rows and cols")

    # --- the arrays it names ---
    def arrays(self) -> list[str]:
        if self.kind == "line":
            return [self.x, *(s.y for s in self.series)]
        return [self.z, self.rows, self.cols]

    def check(self, arrays: Mapping[str, Any]) -> None:
        """ValueError when a named array is missing or its shape does not fit the plot."""
        missing = [a for a in self.arrays() if a not in arrays]
        if missing:
            raise ValueError(f"plot '{self.title}' names arrays that are not saved: {', '.join(missing)}")
        if self.kind == "line":
            n = np.shape(arrays[self.x])
            if len(n) != 1:
                raise ValueError(f"plot '{self.title}': x '{self.x}' must be 1-D, got shape {n}")
            for s in self.series:
                if np.shape(arrays[s.y]) != n:
                    raise ValueError(f"plot '{self.title}': series '{s.y}' has shape {np.shape(arrays[s.y])}, x has {n}")
        else:
            shape = np.shape(arrays[self.z])
            want = (len(np.reshape(arrays[self.rows], -1)), len(np.reshape(arrays[self.cols], -1)))
            if len(shape) != 2 or shape != want or np.ndim(arrays[self.rows]) != 1 or np.ndim(arrays[self.cols]) != 1:
                raise ValueError(f"plot '{self.title}': z '{self.z}' has shape {shape}; rows × cols is {want}")

    def renamed(self, prefix: str = "", mapping: Mapping[str, str] | None = None) -> "PlotSpec":
        """The same declaration over arrays saved under other names (`prefix` + name, or `mapping`)."""

        def n(name):
            if name is None:
                return None
            return mapping.get(name, name) if mapping is not None else prefix + name

        return dataclasses.replace(self, x=n(self.x), z=n(self.z), rows=n(self.rows), cols=n(self.cols),
                                   series=tuple(dataclasses.replace(s, y=n(s.y)) for s in self.series))

    # --- JSON ---
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["series"] = [dataclasses.asdict(s) for s in self.series]
        return {k: v for k, v in d.items() if v not in (None, "", False, (), [], {}) or k in ("kind", "title")}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PlotSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown plot fields: {', '.join(sorted(unknown))}")
        d = dict(d)
        d["series"] = tuple(Series(**s) for s in d.get("series", ()))
        return cls(**d)


def line(title: str, x: str, series: Iterable[Series | str], **kw) -> PlotSpec:
    """A line plot of `series` (Series or array names) against `x`."""
    return PlotSpec("line", title, x=x, series=tuple(s if isinstance(s, Series) else Series(s, s) for s in series), **kw)


def surface(title: str, z: str, rows: str, cols: str, **kw) -> PlotSpec:
    """A surface z[i, j] at (rows[i], cols[j]); drawn with cols on the x axis, rows on the y axis."""
    return PlotSpec("surface", title, z=z, rows=rows, cols=cols, **kw)


def dumps(specs: Iterable[PlotSpec], arrays: Mapping[str, Any]) -> str:
    """The declarations as JSON text, after checking each against `arrays`."""
    out = []
    for s in specs:
        s.check(arrays)
        out.append(s.to_dict())
    return json.dumps(out)


def loads(text: str, arrays: Mapping[str, Any]) -> list[PlotSpec]:
    """The declarations in `text` that still fit `arrays` (a damaged entry is skipped)."""
    try:
        raw = json.loads(text)
    except (ValueError, TypeError):
        return []
    out = []
    for d in raw if isinstance(raw, list) else ():
        try:
            s = PlotSpec.from_dict(d)
            s.check(arrays)
        except (ValueError, TypeError):
            continue
        out.append(s)
    return out


__all__ = ["KINDS", "PlotSpec", "Series", "dumps", "line", "loads", "surface"]
