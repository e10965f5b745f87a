"""Figure conventions shared by every study: greyscale-readable, saved as PNG and SVG."""

from __future__ import annotations

import os
from itertools import cycle
from pathlib import Path

import matplotlib

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


def save_figure(fig, directory: str | os.PathLike, name: str) -> list[Path]:
    """Save `fig` as NAME.png (150 dpi) and NAME.svg in `directory`, then close it."""
    from ..atomic import open_atomic

    d = Path(directory)
    paths = []
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
