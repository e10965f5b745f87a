"""Figures of slices and surfaces: 1-D curve, contour, filled contour, heat map, 3-D,
an offline interactive HTML surface (plotly), and VTK PolyData (.vtp) for ParaView.

Every figure is readable in greyscale: line styles and markers tell curves apart, and
surface colour maps are perceptually uniform (viridis: lightness rises with the loss).
Points where the loss is NaN/inf or not computed are drawn as gaps.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import plotly.graph_objects as go

from lossprobe.landscape.topology import marks
from lossprobe.results.atomic import write_text
from lossprobe.results.drawing import new_figure, save_figure, styles

CMAP = "viridis"


def _axis_labels(surf) -> tuple[str, str]:
    given = surf.meta.get("axis_labels")
    if given:
        return tuple(list(given) + [""] * (2 - len(given)))[:2]
    names = []
    for i, d in enumerate(surf.meta.get("directions", [{}] * surf.ndim)):
        kind = d.get("kind", "direction")
        norm = d.get("norm")
        extra = f", {norm}-normalised" if norm in ("filter", "layer", "model") else ""
        seed = f", seed {d['seed']}" if d.get("seed") is not None and kind == "random" else ""
        names.append(f"α{i + 1}: {kind} direction d{i + 1}{extra}{seed}")
    while len(names) < 2:
        names.append("")
    return names[0], names[1]


def _values(surf, log: bool) -> tuple[np.ndarray, str]:
    z = np.where(surf.mask & np.isfinite(surf.loss), surf.loss, np.nan).astype(float)
    loss_name = surf.meta.get("loss", "loss").replace("_", "-")
    if log:
        z = np.where(z > 0, z, np.nan)
        return np.log10(z), f"log10 mean {loss_name} loss"
    return z, f"mean {loss_name} loss"


def _title(what: str, title_data: str) -> str:
    return f"{what}\non {title_data}" if title_data else what


def _mark(ax, marks, zorder=5):
    for (x, y, label), st in zip(marks or [], styles()):
        ax.plot([x], [y], linestyle="none", marker=st["marker"], markersize=8, markerfacecolor="white",
                markeredgecolor="black", markeredgewidth=1.5, zorder=zorder)
        ax.annotate(label, (x, y), xytext=(5, 5), textcoords="offset points", fontsize=8,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.8, "lw": 0})


def plot_slice(surf, directory, name: str = "slice", title_data: str = "", log: bool = False) -> list[str]:
    """Loss (left) and accuracy (right) along a 1-D slice; the centre is marked."""
    x = surf.coords[0]
    z, zlabel = _values(surf, log)
    fig, (ax_l, ax_a) = new_figure(ncols=2)
    st = next(styles())
    ax_l.plot(x, z, markersize=3, **st)
    acc = np.where(surf.mask, surf.accuracy, np.nan)
    ax_a.plot(x, 100 * acc, markersize=3, **{**st, "linestyle": "--", "marker": "s"})
    label = _axis_labels(surf)[0]
    for ax in (ax_l, ax_a):
        ax.axvline(0, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    ax_l.set_ylabel(zlabel)
    ax_a.set_ylabel("accuracy (%)")
    ax_l.set_title(_title("Loss along a 1-D slice (0 = centre)", title_data), fontsize=9)
    ax_a.set_title(_title("Accuracy along the same slice", title_data), fontsize=9)
    save_figure(fig, directory, name)
    return [name]


def _grid(surf):
    X, Y = np.meshgrid(surf.coords[0], surf.coords[1], indexing="ij")
    return X, Y


def _finish_2d(ax, surf, title, marks):
    lx, ly = _axis_labels(surf)
    ax.set_xlabel(lx, fontsize=8)
    ax.set_ylabel(ly, fontsize=8)
    ax.set_title(title, fontsize=9)
    _mark(ax, marks)
    ax.set_aspect("auto")


def plot_contour(surf, directory, name: str = "surface_contour", title_data: str = "", log: bool = False,
                 levels: int = 15, marks: Sequence[tuple[float, float, str]] | None = None) -> list[str]:
    """Contour lines with labelled levels (black lines, readable without colour)."""
    z, zlabel = _values(surf, log)
    X, Y = _grid(surf)
    fig, ax = new_figure(width=5.6, height=4.6)
    if np.isfinite(z).sum() >= 4 and np.nanmax(z) > np.nanmin(z):
        cs = ax.contour(X, Y, np.ma.masked_invalid(z), levels=levels, colors="black", linewidths=0.8)
        ax.clabel(cs, inline=True, fontsize=7, fmt="%.3g")
    _finish_2d(ax, surf, _title(f"Contours of the {zlabel}", title_data), marks or _centre(surf))
    save_figure(fig, directory, name)
    return [name]


def plot_filled_contour(surf, directory, name: str = "surface_filled", title_data: str = "", log: bool = False,
                        levels: int = 20, marks=None) -> list[str]:
    """Filled contours with a colour bar and thin labelled contour lines on top."""
    z, zlabel = _values(surf, log)
    X, Y = _grid(surf)
    fig, ax = new_figure(width=6.0, height=4.6)
    if np.isfinite(z).sum() >= 4 and np.nanmax(z) > np.nanmin(z):
        zm = np.ma.masked_invalid(z)
        cf = ax.contourf(X, Y, zm, levels=levels, cmap=CMAP)
        cs = ax.contour(X, Y, zm, levels=cf.levels[::4], colors="black", linewidths=0.5)
        ax.clabel(cs, inline=True, fontsize=6, fmt="%.3g")
        fig.colorbar(cf, ax=ax, label=zlabel)
    _finish_2d(ax, surf, _title(f"{zlabel[0].upper()}{zlabel[1:]} (filled contours)", title_data), marks or _centre(surf))
    save_figure(fig, directory, name)
    return [name]


def plot_heatmap(surf, directory, name: str = "surface_heatmap", title_data: str = "", log: bool = False,
                 marks=None) -> list[str]:
    """Heat map of the loss; NaN or missing points are left blank (white)."""
    z, zlabel = _values(surf, log)
    x, y = surf.coords

    def edges(c):
        if len(c) == 1:
            return np.array([c[0] - 0.5, c[0] + 0.5])
        mid = (c[1:] + c[:-1]) / 2
        return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])

    fig, ax = new_figure(width=6.0, height=4.6)
    pm = ax.pcolormesh(edges(x), edges(y), np.ma.masked_invalid(z).T, cmap=CMAP, shading="flat")
    fig.colorbar(pm, ax=ax, label=zlabel)
    _finish_2d(ax, surf, _title(f"Heat map of the {zlabel} (blank: NaN or not computed)", title_data),
               marks or _centre(surf))
    save_figure(fig, directory, name)
    return [name]


def plot_surface3d(surf, directory, name: str = "surface_3d", title_data: str = "", log: bool = False) -> list[str]:
    """A 3-D view of the loss surface (matplotlib)."""
    z, zlabel = _values(surf, log)
    X, Y = _grid(surf)

    fig = plt.figure(figsize=(6.0, 4.8), constrained_layout=True)
    ax = fig.add_subplot(projection="3d")
    ax.plot_surface(X, Y, np.ma.masked_invalid(z), cmap=CMAP, linewidth=0.2, edgecolor="black", antialiased=True)
    lx, ly = _axis_labels(surf)
    ax.set_xlabel("α1", fontsize=8)
    ax.set_ylabel("α2", fontsize=8)
    ax.set_zlabel(zlabel, fontsize=8)
    ax.set_title(_title(f"Loss surface, 3-D view\n({lx}; {ly})", title_data), fontsize=8)
    save_figure(fig, directory, name)
    return [name]


def _centre(surf):
    return [(0.0, 0.0, "centre")] if surf.center_index() is not None else []


def topology_marks(surf) -> list[tuple[float, float, str]]:
    """Marks for the figures of a surface whose `topology()` was computed: the centre, the
    global minimum (one mark when they coincide) and the significant basins and saddles."""
    found = marks(surf.meta["topology"], surf.coords)
    centre = _centre(surf)
    if centre and found and found[0][:2] == (0.0, 0.0):
        return [(0.0, 0.0, "centre = global min")] + found[1:]
    return centre + found


def write_html(surf, path, title: str = "Loss surface", log: bool = False, marks=None) -> Path:
    """A self-contained interactive 3-D surface (plotly with its JavaScript inlined: works offline)."""

    z, zlabel = _values(surf, log)
    x, y = surf.coords
    zz = np.where(np.isfinite(z), z, None).T.tolist()  # rows are y; None draws a gap
    fig = go.Figure(go.Surface(x=x.tolist(), y=y.tolist(), z=zz, colorscale="Viridis",
                               colorbar={"title": {"text": html.escape(zlabel)}}))
    for (mx, my, label) in (marks or _centre(surf)):
        i, j = int(np.argmin(np.abs(x - mx))), int(np.argmin(np.abs(y - my)))
        mz = z[i, j]
        if np.isfinite(mz):
            fig.add_trace(go.Scatter3d(x=[mx], y=[my], z=[float(mz)], mode="markers+text", text=[html.escape(label)],
                                       marker={"size": 5, "color": "black"}, showlegend=False))
    lx, ly = _axis_labels(surf)
    fig.update_layout(title={"text": html.escape(title)},
                      scene={"xaxis_title": html.escape(lx), "yaxis_title": html.escape(ly),
                             "zaxis_title": html.escape(zlabel)},
                      margin={"l": 0, "r": 0, "t": 40, "b": 0})

    page = fig.to_html(include_plotlyjs=True, full_html=True)
    # nothing outside this file may load: plotly is inlined, so only inline script and style run
    page = page.replace("<head>", f'<head><meta http-equiv="Content-Security-Policy" content="{SELF_CONTAINED_CSP}">', 1)
    return write_text(path, page)


# Content-Security-Policy of a self-contained HTML file (plotly.js inlined): no network at all.
SELF_CONTAINED_CSP = ("default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
                      "img-src data: blob:; font-src data:; worker-src blob:; connect-src 'none'; base-uri 'none'; "
                      "form-action 'none'; frame-src 'none'; object-src 'none'")


def write_vtp(surf, path, log: bool = False) -> Path:
    """The surface as VTK XML PolyData (ASCII .vtp) for ParaView: points (α1, α2, loss), quads.

    Quads touching a NaN/missing point are left out; the loss and accuracy are point data
    (NaN kept as NaN).
    """
    z, zlabel = _values(surf, log)
    X, Y = _grid(surf)
    n1, n2 = z.shape
    pts = np.stack([X.ravel(), Y.ravel(), np.nan_to_num(z.ravel(), nan=0.0)], 1)
    ok = np.isfinite(z)
    quads = []
    for i in range(n1 - 1):
        for j in range(n2 - 1):
            if ok[i, j] and ok[i + 1, j] and ok[i + 1, j + 1] and ok[i, j + 1]:
                quads.append((i * n2 + j, (i + 1) * n2 + j, (i + 1) * n2 + j + 1, i * n2 + j + 1))

    def arr(a, fmt="%.9g"):
        return " ".join(fmt % v for v in np.asarray(a).ravel())

    loss = surf.loss.ravel()
    acc = surf.accuracy.ravel()
    conn = arr(np.asarray(quads, dtype=int).ravel(), "%d") if quads else ""
    offs = arr(np.arange(4, 4 * len(quads) + 1, 4), "%d") if quads else ""
    text = f"""<?xml version="1.0"?>
<VTKFile type="PolyData" version="0.1" byte_order="LittleEndian">
  <PolyData>
    <Piece NumberOfPoints="{len(pts)}" NumberOfVerts="0" NumberOfLines="0" NumberOfStrips="0" NumberOfPolys="{len(quads)}">
      <PointData Scalars="loss">
        <DataArray type="Float64" Name="loss" format="ascii">{arr(loss).replace('nan', 'NaN')}</DataArray>
        <DataArray type="Float64" Name="accuracy" format="ascii">{arr(acc).replace('nan', 'NaN')}</DataArray>
      </PointData>
      <Points>
        <DataArray type="Float64" NumberOfComponents="3" format="ascii">{arr(pts)}</DataArray>
      </Points>
      <Polys>
        <DataArray type="Int64" Name="connectivity" format="ascii">{conn}</DataArray>
        <DataArray type="Int64" Name="offsets" format="ascii">{offs}</DataArray>
      </Polys>
    </Piece>
  </PolyData>
</VTKFile>
"""

    return write_text(path, text)


def plot_all(surf, directory, title_data: str = "", log: bool = False, prefix: str = "surface",
             marks=None) -> list[str]:
    """Every matplotlib figure that applies (slice: the curve; surface: contour, filled, heat map, 3-D)."""
    if surf.ndim == 1:
        return plot_slice(surf, directory, name=prefix if prefix != "surface" else "slice", title_data=title_data, log=log)
    names = []
    names += plot_contour(surf, directory, f"{prefix}_contour", title_data, log, marks=marks)
    names += plot_filled_contour(surf, directory, f"{prefix}_filled", title_data, log, marks=marks)
    names += plot_heatmap(surf, directory, f"{prefix}_heatmap", title_data, log, marks=marks)
    names += plot_surface3d(surf, directory, f"{prefix}_3d", title_data, log)
    return names
