"""Figure conventions shared by every study: greyscale-readable, saved as PNG and SVG; and
`draw`, which draws a plot declaration (`lossprobe.plotspec`) as the report site does."""

from __future__ import annotations

import contextlib
import os
from itertools import cycle
from pathlib import Path
from typing import Iterator

import matplotlib
import numpy as np

from lossprobe.results.atomic import open_atomic

matplotlib.use("Agg")  # no display on the machines this runs on
import matplotlib.pyplot as plt  # noqa: E402

# Distinguishable in greyscale by line style and marker, not colour alone.
COLORS = ("#000000", "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))
MARKERS = ("o", "s", "^", "D", "v", "x", "*")


def styles():
    """An endless cycle of dicts(color, linestyle, marker) for successive lines."""
    return cycle(
        {"color": c, "linestyle": ls, "marker": mk}
        for c, ls, mk in zip(COLORS, LINESTYLES + LINESTYLES[:1], MARKERS)
    )


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.6, **kw):
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), constrained_layout=True, **kw)
    return fig, axes


_CAPTURES: list[list] = []


@contextlib.contextmanager
def captured_figures() -> Iterator[list]:
    """Collect the figures `save_figure` saves inside the block, as a list of (name, Figure), to
    see what was drawn (tests; a notebook). The files are written as always; the Figures are
    closed as always (they leave pyplot's list of open figures) but keep their axes and artists.

        with captured_figures() as figs:
            plot_toy_paths(f, runs, "out")
        (name, fig), = figs
    """
    got: list = []
    _CAPTURES.append(got)
    try:
        yield got
    finally:
        _CAPTURES.remove(got)


def save_figure(fig, directory: str | os.PathLike, name: str) -> list[Path]:
    """Save `fig` as NAME.png (150 dpi) and NAME.svg in `directory`, then close it."""
    d = Path(directory)
    paths = []
    for got in _CAPTURES:
        got.append((name, fig))
    try:
        for ext in ("png", "svg"):
            p = d / f"{name}.{ext}"
            with open_atomic(p, "wb") as f:  # whole files only, even on a full disk
                fig.savefig(f, format=ext, dpi=150 if ext == "png" else None,
                            metadata={"Date": None} if ext == "svg" else None)
            paths.append(p)
    finally:
        plt.close(fig)
    return paths


def draw(spec, arrays, ax=None):
    """Draw a plot declaration (`lossprobe.plotspec.PlotSpec`) on `ax` (a new figure's when None)
    with the axes, labels and scales the report site gives it: a line plot as one line per
    series (one colour and marker per series group, dashed where declared), a surface as a
    colour map with contour lines, x = its cols and y = its rows. Returns the axes."""
    if ax is None:
        _, ax = new_figure()
    if spec.kind == "line":
        x = np.asarray(arrays[spec.x], dtype=float)
        grouped = any(s.group for s in spec.series)
        groups = list(dict.fromkeys(s.group or s.y for s in spec.series))
        for s in spec.series:
            g = groups.index(s.group or s.y)
            ls = ("--" if s.dash else "-") if grouped else ("--" if s.dash else LINESTYLES[g % len(LINESTYLES)])
            ax.plot(x, np.asarray(arrays[s.y], dtype=float), label=s.label or s.y, color=COLORS[g % len(COLORS)],
                    linestyle=ls, marker=MARKERS[g % len(MARKERS)], markersize=3)
        if spec.log_x:
            ax.set_xscale("log")
        if spec.log_y:
            ax.set_yscale("log")
        if len(spec.series) > 1:
            ax.legend(fontsize=8)
        ax.set_xlabel(spec.xlabel or spec.x)
        ax.set_ylabel(spec.ylabel)
    else:
        z = np.asarray(arrays[spec.z], dtype=float)
        zlabel = spec.zlabel or spec.z
        if spec.log_z:
            with np.errstate(all="ignore"):
                z = np.where(z > 0, np.log10(np.where(z > 0, z, 1.0)), np.nan)
            zlabel = f"log10 {zlabel}"
        cols, rows = np.asarray(arrays[spec.cols], dtype=float), np.asarray(arrays[spec.rows], dtype=float)
        mesh = ax.pcolormesh(cols, rows, np.ma.masked_invalid(z), shading="auto", cmap="viridis")
        ax.figure.colorbar(mesh, ax=ax, label=zlabel)
        if min(z.shape) >= 2 and np.isfinite(z).sum() >= 4 and np.nanmin(z) < np.nanmax(z):
            ax.contour(cols, rows, np.ma.masked_invalid(z), levels=10, colors="k", linewidths=0.5)
        ax.set_xlabel(spec.xlabel or spec.cols)
        ax.set_ylabel(spec.ylabel or spec.rows)
    for label, (mx, my) in spec.marks.items():
        ax.plot([mx], [my], "kx", markersize=8)
        ax.annotate(str(label), (mx, my), xytext=(4, 4), textcoords="offset points", fontsize=8)
    ax.set_title(spec.title, fontsize=9)
    ax.grid(alpha=0.3)
    return ax


def plot_declared(specs, arrays, directory, name: str, title: str = "") -> list[str]:
    """The declared plots of one array file side by side in one figure, saved as NAME.png/.svg
    in `directory`; returns [NAME]."""
    fig, axes = new_figure(ncols=len(specs))
    for spec, ax in zip(specs, np.atleast_1d(axes)):
        draw(spec, arrays, ax)
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, directory, name)
    return [name]
