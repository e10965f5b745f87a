"""The interactive plots of a page, as plotly figure specs (plain dicts), drawn from declarations.

Each .npz of a run carries its producer's plot declarations (`lossprobe.plotspec.PlotSpec`,
read with `lossprobe.store.plots_of`); this module draws exactly those and guesses nothing
from array names:

* line: one trace per series against the declared x, one colour per series group, dashed
  where the series says so, axis titles and log axes from the declaration;
* surface: a rotatable 3-D surface and a contour map of z with x = the declared cols and
  y = the declared rows, so `z[i][j]` is drawn at (cols[j], rows[i]).

Arrays no declaration names are listed on the run page, not drawn. Learning curves come
from history*.json files (`lossprobe.train.History.to_dict`), which are JSON, not arrays.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import posixpath
from dataclasses import dataclass

import numpy as np

from lossprobe.report.site.markup import esc, fmt

# Greyscale-readable trace styles: line dash and marker differ, not only the colour.
COLORS = ("#000000", "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
SYMBOLS = ("circle", "square", "triangle-up", "diamond", "x", "cross", "star")
MAX_PLOTS = 16  # per page, so a run with hundreds of arrays still opens quickly
MAX_TRACES = 16
MAX_SURFACE_FILES = 3  # per run page; the others stay in the linked files
MAX_TABLE_ROWS = 200  # a line plot with at most this many points also gets its values as a table


@dataclass
class Plot:
    """One interactive plot: a plotly spec plus the text around it."""

    title: str
    data: list
    layout: dict
    description: str
    surface: bool = False
    table: tuple[list[str], list[list[str]]] | None = None  # accessible data table (small curves only)
    key: str = ""  # identifies the same plot across files and runs: '<npz>:<kind>:<title>:<arrays>'
    logy: bool = False  # offer a log-scale toggle for the y axis (curves)
    base: str = ""  # the declaration's own title, for the titles of overlays


def finite(a) -> list:
    """Array to a JSON-able list with NaN/inf as None (plotly draws gaps)."""
    a = np.asarray(a, dtype=np.float64)
    return [None if not math.isfinite(x) else x for x in a.ravel().tolist()] if a.ndim <= 1 else [
        finite(row) for row in a]


def _style(i: int) -> dict:
    return {"line": {"color": COLORS[i % len(COLORS)], "dash": DASHES[i % len(DASHES)], "width": 2},
            "marker": {"symbol": SYMBOLS[i % len(SYMBOLS)], "size": 6, "color": COLORS[i % len(COLORS)]}}


def _layout(title: str, xlabel: str, ylabel: str, log_x: bool = False, log_y: bool = False) -> dict:
    lay = {"title": {"text": title, "font": {"size": 15}}, "xaxis": {"title": {"text": xlabel}, "zeroline": False},
           "yaxis": {"title": {"text": ylabel}, "zeroline": False}, "hovermode": "closest",
           "margin": {"l": 70, "r": 20, "t": 50, "b": 60}, "legend": {"orientation": "h", "y": -0.2},
           "font": {"family": "system-ui, sans-serif"}, "paper_bgcolor": "#ffffff", "plot_bgcolor": "#ffffff"}
    if log_x:
        lay["xaxis"]["type"] = "log"
    if log_y:
        lay["yaxis"]["type"] = "log"
    return lay


def _trace(name: str, x, y, style: dict, xlabel: str) -> dict:
    return {"type": "scatter", "mode": "lines+markers", "name": name, "x": finite(x), "y": finite(y),
            "hovertemplate": f"{esc(xlabel)} %{{x:.4g}}<br>{esc(name)} %{{y:.5g}}<extra></extra>", **style}


def _marks(marks: dict) -> list[dict]:
    """The declaration's named points as one marker trace ({} -> none)."""
    pts = [(str(k), v) for k, v in marks.items() if isinstance(v, (list, tuple)) and len(v) == 2]
    if not pts:
        return []
    return [{"type": "scatter", "mode": "markers+text", "name": "marked points", "x": finite([v[0] for _, v in pts]),
             "y": finite([v[1] for _, v in pts]), "text": [k for k, _ in pts], "textposition": "top right",
             "marker": {"symbol": "x", "size": 12, "color": "#ffffff", "line": {"color": "#000", "width": 2}},
             "hovertemplate": "%{text} (%{x:.4g}, %{y:.4g})<extra></extra>"}]


def _key(rel: str, spec) -> str:
    return f"{rel}:{spec.kind}:{spec.title}:{','.join(spec.arrays())}"


def line_plot(rel: str, spec, arrays: dict) -> Plot:
    """A declared line plot: one trace per series, coloured by group, dashed where declared."""
    x = np.asarray(arrays[spec.x], dtype=np.float64)
    xlabel, ylabel = spec.xlabel or spec.x, spec.ylabel
    series = spec.series[:MAX_TRACES]
    grouped = any(s.group for s in series)
    groups = list(dict.fromkeys(s.group or s.y for s in series))
    data = []
    for s in series:
        style = _style(groups.index(s.group or s.y))
        if grouped:  # one colour and marker per group; within it, the declared dash tells series apart
            style["line"]["dash"] = "dash" if s.dash else "solid"
        elif s.dash:
            style["line"]["dash"] = "dash"
        data.append(_trace(s.label or s.y, x, arrays[s.y], style, xlabel))
    data += _marks(spec.marks)
    title = f"{spec.title} ({rel})"
    names = [s.label or s.y for s in series]
    table = None
    if x.size <= MAX_TABLE_ROWS:
        ys = [np.asarray(arrays[s.y], dtype=np.float64) for s in series]
        table = ([xlabel] + names, [[fmt(float(x[j]))] + [fmt(float(y[j])) for y in ys] for j in range(x.size)])
    desc = spec.description or (f"{', '.join(names)} at {x.size} values of {xlabel} from "
                                f"{fmt(float(np.nanmin(x)))} to {fmt(float(np.nanmax(x)))}")
    return Plot(title, data, _layout(title, xlabel, ylabel, spec.log_x, spec.log_y), desc + "; hover for values.",
                table=table, key=_key(rel, spec), logy=not spec.log_y, base=spec.title)


def surface_plots(rel: str, spec, arrays: dict) -> list[Plot]:
    """A declared surface as a 3-D surface and a contour map: x = cols, y = rows, `z[i][j]` at (cols[j], rows[i])."""
    z = np.asarray(arrays[spec.z], dtype=np.float64)
    zl = spec.zlabel or spec.z
    if spec.log_z:
        with np.errstate(all="ignore"):
            z = np.where(z > 0, np.log10(np.where(z > 0, z, 1.0)), np.nan)
        zl = f"log10 {zl}"
    y, x = arrays[spec.rows], arrays[spec.cols]
    xl, yl = spec.xlabel or spec.cols, spec.ylabel or spec.rows
    ok = z[np.isfinite(z)]
    rng = f"{ok.min():.4g} to {ok.max():.4g}" if ok.size else "no finite values"
    hover = f"{esc(xl)} %{{x:.4g}}<br>{esc(yl)} %{{y:.4g}}<br>{esc(zl)} %{{z:.5g}}<extra></extra>"
    surf = {"type": "surface", "x": finite(x), "y": finite(y), "z": finite(z), "colorscale": "Viridis",
            "name": zl, "hovertemplate": hover, "colorbar": {"title": {"text": zl}},
            "contours": {"z": {"show": True, "usecolormap": False, "color": "#222", "width": 1,
                               "project": {"z": False}}}}
    lay = _layout(f"{spec.title}: 3-D surface ({rel})", xl, yl)
    lay["scene"] = {"xaxis": {"title": {"text": xl}}, "yaxis": {"title": {"text": yl}},
                    "zaxis": {"title": {"text": zl}}, "camera": {"eye": {"x": 1.5, "y": -1.5, "z": 1.0}},
                    "aspectmode": "cube"}
    lay["margin"] = {"l": 10, "r": 10, "t": 50, "b": 10}
    what = spec.description or f"{zl} over {yl} (rows) × {xl} (columns)"
    desc = (f"{what}: rotatable 3-D surface of the {z.shape[0]}×{z.shape[1]} array '{spec.z}' in {rel} "
            f"(values {rng}); drag to rotate, or use the buttons below.")
    key = _key(rel, spec)
    cont = {"type": "contour", "x": finite(x), "y": finite(y), "z": finite(z), "colorscale": "Viridis",
            "name": zl, "hovertemplate": hover, "colorbar": {"title": {"text": zl}},
            "contours": {"coloring": "heatmap", "showlabels": True, "labelfont": {"color": "#ffffff", "size": 11}},
            "line": {"color": "#000000", "width": 1}}
    title2 = f"{spec.title}: contour map ({rel})"
    return [Plot(lay["title"]["text"], [surf], lay, desc, surface=True, key=key + ":surface", base=spec.title),
            Plot(title2, [cont, *_marks(spec.marks)], _layout(title2, xl, yl),
                 f"Contour map of the same array '{spec.z}' with labelled levels (values {rng}).",
                 key=key + ":contour", base=spec.title)]


def declared_plots(rel: str, specs: list, arrays: dict) -> list[Plot]:
    """The plots one .npz declares (lines and surfaces, in declaration order)."""
    out = []
    for spec in specs:
        out += [line_plot(rel, spec, arrays)] if spec.kind == "line" else surface_plots(rel, spec, arrays)
    return out


def drawn_arrays(specs: list) -> set[str]:
    """The names of the arrays some declaration draws."""
    return {a for s in specs for a in s.arrays()}


def history_plots(histories: dict[str, dict], label_prefix: str = "") -> list[Plot]:
    """Learning curves (loss and accuracy per epoch) from History.to_dict() files."""
    plots = []
    for metric in ("loss", "accuracy"):
        data = []
        for label, h in histories.items():
            ep = h.get("epoch")
            for split in ("train", "val"):
                y = h.get(f"{split}_{metric}")
                if not isinstance(ep, list) or not isinstance(y, list) or len(y) != len(ep) or len(data) >= MAX_TRACES:
                    continue
                yv = np.array([np.nan if v is None else v for v in y], dtype=float)
                name = f"{label_prefix}{label} {split}".strip()
                data.append(_trace(name, np.asarray(ep, dtype=float), yv, _style(len(data)), "epoch"))
        if data:
            what = "mean cross-entropy loss" if metric == "loss" else "accuracy (fraction correct)"
            title = f"Learning curves: {metric} per epoch"
            plots.append(Plot(title, data, _layout(title, "epoch (0 = before training)", what),
                              f"{metric} on the training and validation splits after each epoch, "
                              f"{len(histories)} training run(s); hover for values.", key=f"history:{metric}",
                              logy=metric == "loss", base=title))
    return plots


def overlay(members: list[tuple[str, Plot]], title: str, description: str, key: str = "") -> Plot:
    """One plot with the lines of several plots of the same quantity, named '<label> · <line>'."""
    first = members[0][1]
    data = []
    for label, p in members:
        for t in p.data:
            if len(data) >= MAX_TRACES:
                break
            t = {**t, "name": f"{label} · {t['name']}", **_style(len(data))}
            t["hovertemplate"] = t["hovertemplate"].replace("<br>", f"<br>{esc(label)} · ", 1)
            data.append(t)
    lay = {**first.layout, "title": {"text": title, "font": {"size": 15}}}
    return dataclasses.replace(first, title=title, data=data, layout=lay, description=description,
                               key=key or first.key, table=None)


def _signature(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha1()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.dtype}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def run_plots(run) -> tuple[list[Plot], int]:
    """The interactive plots of a run page, and how many were left out (page budget):
    declared lines first, then learning curves, then declared surfaces."""
    # array files in the order the run wrote them (the study's own order, e.g. the straight
    # line before the aligned paths)
    def written(rel: str) -> float:
        try:
            return (run.path / rel).stat().st_mtime
        except OSError:
            return 0.0

    order, seen = [], set()
    for rel in sorted(run.arrays, key=lambda rel: (rel.count("/"), written(rel), rel)):
        sig = _signature(run.arrays[rel])
        if sig not in seen:  # the same arrays saved twice (e.g. a copy for resuming) plot once
            seen.add(sig)
            order.append(rel)
    # the same declared plot in several files (one file per optimiser, say) is one plot with all lines
    by_key: dict[str, list[tuple[str, Plot]]] = {}
    for rel in order:
        for spec in run.plots.get(rel, ()):
            if spec.kind == "line":
                p = line_plot(rel, spec, run.arrays[rel])
                by_key.setdefault(p.key.split(":", 1)[1], []).append((rel, p))
    plots = []
    for k, members in by_key.items():
        if len(members) == 1:
            plots.append(members[0][1])
            continue
        labels = [posixpath.basename(rel).removesuffix(".npz") for rel, _ in members]
        first = members[0][1]
        plots.append(overlay(list(zip(labels, (p for _, p in members))),
                             f"{first.base} ({len(members)} files: {', '.join(labels)})",
                             f"The same quantity from {len(members)} array files, one line per file and series; "
                             "hover for values.", key=k))
    plots += history_plots(run.histories)
    n_surface_files, omitted = 0, 0
    for rel in order:
        sp = [p for s in run.plots.get(rel, ()) if s.kind == "surface" for p in surface_plots(rel, s, run.arrays[rel])]
        if sp and n_surface_files >= MAX_SURFACE_FILES:
            omitted += len(sp)
            continue
        n_surface_files += bool(sp)
        plots += sp
    omitted += max(0, len(plots) - MAX_PLOTS)
    return plots[:MAX_PLOTS], omitted


def compare_plots(runs: list) -> list[Plot]:
    """The same declared line plot (same file, title and arrays) of two or more runs, overlaid;
    and the learning curves of all runs when two or more runs have them."""
    by_key: dict[str, list[tuple[str, Plot]]] = {}
    for r in runs:
        for rel, specs in r.plots.items():
            for spec in specs:
                if spec.kind == "line":
                    p = line_plot(rel, spec, r.arrays[rel])
                    by_key.setdefault(p.key, []).append((r.name, p))
    plots = []
    for key, members in by_key.items():
        if len(members) >= 2:
            first = members[0][1]
            plots.append(overlay(members, f"{first.base} — {len(members)} runs overlaid",
                                 f"{first.description} One line per run and series.", key=key))
    hist_runs = {f"{r.name} · {label}": h for r in runs for label, h in r.histories.items()}
    if len({k.split(" · ")[0] for k in hist_runs}) >= 2:
        plots += [dataclasses.replace(p, title=p.title + " — all runs") for p in history_plots(hist_runs)]
    return plots[:MAX_PLOTS]
