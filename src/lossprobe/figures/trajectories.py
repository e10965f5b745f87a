"""Figures of optimiser paths: over the contours of toy functions and of network planes,
how faithful the projection is, training monitors, curvature along training, and an
optional animated GIF (matplotlib's PillowWriter, only when Pillow is installed).

Every function saves PNG and SVG via `save_figure` and returns the names it wrote.
Paths are told apart by line style and marker, not colour alone.
"""

from __future__ import annotations

import importlib.util
import textwrap
from itertools import chain, islice

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.animation import FuncAnimation, PillowWriter

from lossprobe.results.atomic import writing_to
from lossprobe.results.drawing import new_figure, save_figure
from lossprobe.results.drawing import styles as base

CRIT_MARKERS = {"minimum": ("*", "minimum"), "saddle": ("X", "saddle"), "maximum": ("^", "maximum"),
                "flat": ("s", "flat")}


def _contour(ax, xs, ys, Z, log: bool = False, levels: int = 30, label: str = "loss"):
    Zp = np.asarray(Z, dtype=float)
    if log:
        Zp = np.log10(1 + Zp - np.nanmin(Zp))
        label = f"log10(1 + {label} − min)"
    finite = np.isfinite(Zp)
    hi = np.nanpercentile(Zp[finite], 98) if finite.any() else 1.0
    Zc = np.clip(Zp, None, hi)  # a few exploding edge values would flatten every level
    cf = ax.contourf(xs, ys, Zc, levels=levels, cmap="Greys_r", alpha=0.8)
    ax.contour(xs, ys, Zc, levels=levels, colors="k", linewidths=0.3, alpha=0.5)
    cb = ax.figure.colorbar(cf, ax=ax, shrink=0.85)
    cb.set_label(label, fontsize=8)
    return cf


_EXTRA = ({"color": "#777777", "linestyle": (0, (1, 1)), "marker": "P"},
          {"color": "#333333", "linestyle": (0, (8, 2)), "marker": "h"},
          {"color": "#AAAAAA", "linestyle": "-", "marker": "<"})


def styles():
    """The shared style cycle, with extra distinct styles after its first seven (8 optimisers)."""
    return chain(islice(base(), 7), _EXTRA, base())


def _wrap(title: str, width: int = 80) -> str:
    return "\n".join(textwrap.wrap(title, width)) if "\n" not in title else title


def _every(n: int, k: int = 12) -> int:
    return max(1, n // k)


def plot_toy_paths(toy, runs: dict, directory, critical_points=(), name: str = "toy_paths",
                   grid: int = 201) -> list[str]:
    """Paths of several optimisers over the contours of a toy function, critical points marked.

    `runs` maps a label to an object with ``points`` [T, 2] (a `lossprobe.toy.ToyRun`).
    """
    xs, ys, Z = toy.grid(grid)
    fig, ax = new_figure(width=7.0, height=6.0)
    _contour(ax, xs, ys, Z, log=toy.log_contours, label="f(x, y)")
    for (label, r), st in zip(runs.items(), styles()):
        pts = np.asarray(r.points)
        ax.plot(pts[:, 0], pts[:, 1], color=st["color"], linestyle=st["linestyle"], linewidth=1.4,
                marker=st["marker"], markevery=_every(len(pts)), markersize=5, label=label)
        ax.plot(pts[-1, 0], pts[-1, 1], marker=st["marker"], color=st["color"], markersize=9,
                markeredgecolor="white")
    start = np.asarray(next(iter(runs.values())).points)[0] if runs else None
    if start is not None:
        ax.plot(*start, marker="o", markersize=10, markerfacecolor="none", markeredgecolor="k", linestyle="none",
                label="start")
    seen = set()
    for c in critical_points:
        mk, lab = CRIT_MARKERS.get(c.kind, ("s", c.kind))
        ax.plot(c.point[0], c.point[1], marker=mk, markersize=11, color="#E69F00", markeredgecolor="k",
                linestyle="none", label=f"{lab} (exact Hessian)" if c.kind not in seen else None)
        seen.add(c.kind)
    (x0, x1), (y0, y1) = toy.bounds
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(f"Optimiser paths on {toy.name}: f = {toy.formula}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", framealpha=0.8, ncol=2)
    save_figure(fig, directory, name)
    return [name]


def plot_values(curves: dict, directory, name: str, title: str, ylabel: str = "loss",
                threshold: float | None = None, log: bool | None = None, xlabel: str = "step") -> list[str]:
    """Loss against step for several runs: `curves` maps a label to (steps [T], values [T])."""
    fig, ax = new_figure(width=6.0, height=4.0)
    all_v = np.concatenate([np.asarray(v, float) for _, v in curves.values()]) if curves else np.ones(1)
    if log is None:
        log = bool(np.all(all_v[np.isfinite(all_v)] > 0)) and np.nanmax(all_v) / max(np.nanmin(all_v), 1e-300) > 100
    for (label, (s, v)), st in zip(curves.items(), styles()):
        s, v = np.asarray(s), np.asarray(v, float)
        ax.plot(s, v, label=label, color=st["color"], linestyle=st["linestyle"], marker=st["marker"],
                markevery=_every(len(s)), markersize=4)
    if threshold is not None:
        ax.axhline(threshold, color="grey", linestyle=":", linewidth=1, label=f"threshold {threshold:g}")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(_wrap(title), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, directory, name)
    return [name]


def plot_plane_paths(surface, paths: dict, directory, name: str, title: str, log: bool = False,
                     origin_label: str = "origin") -> list[str]:
    """Projected paths over a plane's loss contours.

    `surface` is a plane `Surface` (dims y, x); `paths` maps a label to coords [T, 2] (the projected
    snapshots). The plane's origin is marked with a circle.
    """
    fig, ax = new_figure(width=6.5, height=5.4)
    _contour(ax, surface.xs, surface.ys, surface.loss, log=log, label="loss on the plane")
    for (label, c), st in zip(paths.items(), styles()):
        c = np.asarray(c)
        ax.plot(c[:, 0], c[:, 1], color=st["color"], linestyle=st["linestyle"], linewidth=1.3,
                marker=st["marker"], markevery=_every(len(c)), markersize=4, label=label)
        ax.plot(c[-1, 0], c[-1, 1], marker=st["marker"], color=st["color"], markersize=9, markeredgecolor="white")
    ax.plot(0, 0, marker="o", markersize=10, markerfacecolor="none", markeredgecolor="k", linestyle="none",
            label=origin_label)
    ax.set_xlim(surface.xs[0], surface.xs[-1])
    ax.set_ylim(surface.ys[0], surface.ys[-1])
    ax.set_xlabel("coordinate along direction 1 (parameter units)")
    ax.set_ylabel("coordinate along direction 2")
    ax.set_title(_wrap(title), fontsize=9)
    ax.legend(fontsize=7, loc="best", framealpha=0.8)
    save_figure(fig, directory, name)
    return [name]


def plot_plane_grid(panels: list[dict], directory, name: str, title: str, ncols: int | None = None) -> list[str]:
    """Small multiples: each panel is {surface, paths: {label: coords}, title}."""
    n = len(panels)
    ncols = ncols or min(n, 4)
    nrows = -(-n // ncols)
    fig, axes = new_figure(ncols=ncols, nrows=nrows, width=4.2, height=3.6, squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    for ax, p in zip(axes.ravel(), panels):
        s = p["surface"]
        _contour(ax, s.xs, s.ys, s.loss, log=p.get("log", False), label="loss")
        for (label, c), st in zip(p.get("paths", {}).items(), styles()):
            c = np.asarray(c)
            ax.plot(c[:, 0], c[:, 1], color=st["color"], linestyle=st["linestyle"], marker=st["marker"],
                    markevery=_every(len(c)), markersize=3, linewidth=1.1, label=label)
        ax.plot(0, 0, marker="o", markersize=8, markerfacecolor="none", markeredgecolor="k", linestyle="none")
        ax.set_xlim(s.xs[0], s.xs[-1])
        ax.set_ylim(s.ys[0], s.ys[-1])
        ax.set_title(p.get("title", ""), fontsize=8)
        ax.set_xlabel("direction 1", fontsize=8)
        ax.set_ylabel("direction 2", fontsize=8)
        if p.get("paths"):
            ax.legend(fontsize=6, loc="best")
    fig.suptitle(_wrap(title, 160), fontsize=10)
    save_figure(fig, directory, name)
    return [name]


def plot_fidelity(fidelities: dict, directory, name: str, title: str, near: float = 0.1) -> list[str]:
    """Left: true loss (solid) and the surface's loss under the drawn point (dashed) per
    snapshot. Right: |true − surface| against the relative distance from the plane.

    `fidelities` maps a label to (steps [T], `path_fidelity` dict).
    """
    fig, (ax_l, ax_r) = new_figure(ncols=2, width=5.2, height=4.0)
    for (label, (steps, f)), st in zip(fidelities.items(), styles()):
        ax_l.plot(steps, f["true_loss"], color=st["color"], linestyle="-", marker=st["marker"],
                  markevery=_every(len(steps)), markersize=4, label=f"{label}: true L(θ_t)")
        ax_l.plot(steps, f["surface_loss"], color=st["color"], linestyle="--", linewidth=1,
                  label=f"{label}: contour under the point")
        d = np.abs(f["true_loss"] - f["surface_loss"])
        ax_r.scatter(f["rel_distance"], np.maximum(d, 1e-8), s=12, marker=st["marker"], color=st["color"],
                     label=label, alpha=0.8)
    ax_r.axvline(near, color="grey", linestyle=":", linewidth=1, label=f"'near' ≤ {near:g}")
    ax_r.set_yscale("log")
    ax_l.set_xlabel("step")
    ax_l.set_ylabel("loss")
    ax_r.set_xlabel("distance from the plane / window half-width (parameter units)")
    ax_r.set_ylabel("|true loss − surface loss| (floored at 1e-8)")
    ax_l.set_title(_wrap(f"True loss vs. contour value along the path — {title}", 70), fontsize=8)
    ax_r.set_title("Mismatch against distance from the plane", fontsize=8)
    for ax in (ax_l, ax_r):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    save_figure(fig, directory, name)
    return [name]


def plot_monitors(monitors: dict, directory, name: str = "monitors", title: str = "",
                  plateaus: dict | None = None) -> list[str]:
    """Gradient norm (left, log; a running median over ~1% of the run, the raw per-step
    values faint behind it) and weight norm (right) per step, plateaus shaded.

    `monitors` maps a label to a `TrainingMonitor`; `plateaus` optionally maps the same
    labels to lists of (start, end) steps to shade instead of the monitor's own
    (minibatch-loss) plateaus.
    """
    fig, (ax_g, ax_w) = new_figure(ncols=2, width=5.2, height=3.8)
    for (label, m), st in zip(monitors.items(), styles()):
        g, w = np.asarray(m.grad_norm, float), np.asarray(m.weight_norm, float)
        s = np.arange(len(g))
        win = max(1, len(g) // 100)
        if len(g) >= win > 1:
            med = np.median(np.lib.stride_tricks.sliding_window_view(g, win), axis=1)
            ax_g.plot(s, np.maximum(g, 1e-12), color=st["color"], linewidth=0.4, alpha=0.2)
            ax_g.plot(s[win - 1:], np.maximum(med, 1e-12), color=st["color"], linestyle=st["linestyle"],
                      linewidth=1.4, label=f"{label} (median of {win} steps)")
        else:
            ax_g.plot(s, np.maximum(g, 1e-12), color=st["color"], linestyle=st["linestyle"], label=label)
        ax_w.plot(s, w, color=st["color"], linestyle=st["linestyle"], marker=st["marker"],
                  markevery=_every(len(s)), markersize=4, label=label)
        spans = plateaus.get(label, []) if plateaus is not None else [(p.start, p.end) for p in m.plateaus()]
        for a, b in spans:
            ax_w.axvspan(a, b, color=st["color"], alpha=0.08)
    ax_g.set_yscale("log")
    ax_g.set_ylabel("minibatch gradient norm ‖∇L‖")
    ax_w.set_ylabel("weight norm ‖θ‖ (shaded: stalled)")
    for ax in (ax_g, ax_w):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax_g.set_title(_wrap(f"Gradient norm per step{(' — ' + title) if title else ''}", 60), fontsize=9)
    ax_w.set_title("Weight norm per step", fontsize=9)
    save_figure(fig, directory, name)
    return [name]


def plot_hessian_extremes(curves: dict, directory, name: str = "hessian_along_training", title: str = "") -> list[str]:
    """λ_max (solid) and λ_min (dashed) of the Hessian at checkpoints; saddle-like ones ringed.

    `curves` maps a label to dict(steps [C], min [C], max [C], saddles [indices]).
    """
    fig, (ax_hi, ax_lo) = new_figure(ncols=2, width=5.0, height=3.8)
    for (label, c), st in zip(curves.items(), styles()):
        s = np.asarray(c["steps"])
        ax_hi.plot(s, c["max"], color=st["color"], linestyle="-", marker=st["marker"], markersize=4, label=label)
        ax_lo.plot(s, c["min"], color=st["color"], linestyle="--", marker=st["marker"], markersize=4, label=label)
        idx = np.asarray(c.get("saddles", []), dtype=int)
        if idx.size:
            ax_lo.scatter(s[idx], np.asarray(c["min"])[idx], s=120, facecolors="none", edgecolors=st["color"],
                          linewidths=1.5)
    ax_lo.axhline(0, color="grey", linewidth=0.8)
    ax_hi.set_ylabel("largest Hessian eigenvalue λ_max")
    ax_lo.set_ylabel("λ_min of the Hessian (ringed: near a saddle)")
    for ax in (ax_hi, ax_lo):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax_hi.set_title(f"Sharpness along training{(' — ' + title) if title else ''}", fontsize=9)
    ax_lo.set_title("Negative curvature along training", fontsize=9)
    save_figure(fig, directory, name)
    return [name]


def plot_interpolations(curves: dict, directory, name: str = "seed_interpolation", title: str = "") -> list[str]:
    """Loss along (1 − α)θ_A + αθ_B for several pairs: `curves` maps a label to (alphas, loss)."""
    fig, ax = new_figure(width=6.0, height=4.0)
    for (label, (a, v)), st in zip(curves.items(), styles()):
        ax.plot(a, v, label=label, color=st["color"], linestyle=st["linestyle"], marker=st["marker"],
                markevery=_every(len(a)), markersize=4)
    for x in (0, 1):
        ax.axvline(x, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("α  (0 = first solution, 1 = second)")
    ax.set_ylabel("mean loss (train split)")
    ax.set_title(f"Loss between final solutions of different seeds{(' — ' + title) if title else ''}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, directory, name)
    return [name]


def have_pillow() -> bool:
    return importlib.util.find_spec("PIL") is not None


def animate_paths(xs, ys, Z, paths: dict, path, title: str, log: bool = False, frames: int = 40,
                  fps: int = 10) -> str | None:
    """Write an animated GIF of the paths growing over the contours.

    `paths` maps a label to coords [T, 2]. Returns the file written, or None (with no
    file) when Pillow is not installed: the caller should say so in its report.
    """
    if not have_pillow():
        return None

    fig, ax = new_figure(width=5.5, height=4.6)
    _contour(ax, xs, ys, Z, log=log)
    lines = []
    for (label, c), st in zip(paths.items(), styles()):
        (ln,) = ax.plot([], [], color=st["color"], linestyle=st["linestyle"], linewidth=1.4, label=label)
        (hd,) = ax.plot([], [], marker=st["marker"], color=st["color"], markersize=8, markeredgecolor="white")
        lines.append((np.asarray(c), ln, hd))
    ax.set_xlim(xs[0], xs[-1])
    ax.set_ylim(ys[0], ys[-1])
    ax.set_xlabel("direction 1")
    ax.set_ylabel("direction 2")
    ax.legend(fontsize=7, loc="upper left")
    longest = max((len(c) for c, _, _ in lines), default=1)
    n_frames = min(frames, longest)
    txt = ax.set_title(_wrap(title), fontsize=9)

    def update(i):
        frac = (i + 1) / n_frames
        for c, ln, hd in lines:
            k = max(1, int(round(frac * len(c))))
            ln.set_data(c[:k, 0], c[:k, 1])
            hd.set_data([c[k - 1, 0]], [c[k - 1, 1]])
        txt.set_text(f"{title} ({int(frac * 100)}% of the run)")
        return [x for _, ln, hd in lines for x in (ln, hd)]

    anim = FuncAnimation(fig, update, frames=n_frames, blit=False)
    try:
        with writing_to(path) as tmp:
            anim.save(str(tmp), writer=PillowWriter(fps=fps), dpi=64)
    finally:
        plt.close(fig)
    return str(path)


__all__ = [
    "animate_paths", "have_pillow", "plot_fidelity", "plot_hessian_extremes", "plot_interpolations",
    "plot_monitors", "plot_plane_grid", "plot_plane_paths", "plot_toy_paths", "plot_values",
]
