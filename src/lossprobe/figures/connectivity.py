"""Figures of mode connectivity: several paths between two networks, and barriers vs width."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from lossprobe.results.drawing import new_figure, save_figure, styles


def plot_paths(paths: Mapping[str, tuple], directory, title_data: str = "", name: str = "connectivity",
               label_a: str = "A", label_b: str = "B") -> list[str]:
    """Loss (left) and error (right) along several paths from A (0) to B (1).

    `paths` maps a label (e.g. 'straight line', 'aligned', 'aligned + REPAIR',
    'Bezier curve') to ``(x [K], loss {split: [K]}, accuracy {split: [K]})``. One row
    per split. Returns the figure names written.
    """
    splits = list(next(iter(paths.values()))[1])
    fig, axes = new_figure(ncols=2, nrows=len(splits), height=3.3)
    axes = np.atleast_2d(axes)
    for row, split in enumerate(splits):
        ax_l, ax_e = axes[row]
        for (label, (x, loss, acc)), st in zip(paths.items(), styles()):
            x = np.asarray(x)
            inside = (x >= 0) & (x <= 1)
            ax_l.plot(x[inside], np.asarray(loss[split])[inside], label=label, markersize=3, **st)
            ax_e.plot(x[inside], 100 * (1 - np.asarray(acc[split])[inside]), label=label, markersize=3, **st)
        for ax in (ax_l, ax_e):
            ax.set_xlabel(f"position along the path (0 = {label_a}, 1 = {label_b})")
            ax.grid(alpha=0.3)
        ax_l.set_ylabel(f"{split} cross-entropy loss")
        ax_e.set_ylabel(f"{split} error (%)")
        ax_l.set_title(f"Loss along {'four' if len(paths) == 4 else 'the'} paths, {split} data", fontsize=9)
        ax_e.set_title(f"Error along the same paths, {split} data", fontsize=9)
        if row == 0:
            ax_l.legend(fontsize=8)
    if title_data:
        fig.suptitle(f"Paths from {label_a} to {label_b}: {title_data}", fontsize=10)
    save_figure(fig, directory, name)
    return [name]


def plot_width(widths, barriers: Mapping[str, Mapping[str, np.ndarray]], directory, title_data: str = "",
               n_pairs: int | None = None, name: str = "barrier_vs_width") -> list[str]:
    """Loss and error barrier against hidden width for each method.

    `barriers[method][metric]` is an array [n_widths, n_pairs] for metric in
    ('loss_barrier', 'error_barrier'); the line is the mean over pairs and the dots
    are the individual pairs.
    """
    widths = np.asarray(widths)
    fig, (ax_l, ax_e) = new_figure(ncols=2)
    for (method, vals), st in zip(barriers.items(), styles()):
        for ax, metric, scale in ((ax_l, "loss_barrier", 1.0), (ax_e, "error_barrier", 100.0)):
            v = np.asarray(vals[metric], dtype=float) * scale
            ax.plot(widths, v.mean(1), label=method, **st)
            ax.scatter(np.repeat(widths, v.shape[1]), v.reshape(-1), color=st["color"], marker=st["marker"],
                       s=10, alpha=0.4)
    pairs = f", {n_pairs} pairs per width" if n_pairs else ""
    for ax, what in ((ax_l, "loss barrier (cross-entropy)"), (ax_e, "error barrier (%)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths)
        ax.set_xticklabels([str(w) for w in widths])
        ax.set_xlabel("hidden width (units per layer)")
        ax.set_ylabel(what)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.grid(alpha=0.3)
        ax.set_title(f"{what.split(' (')[0].capitalize()} vs width{pairs}" + (f"\n{title_data}" if title_data else ""),
                     fontsize=9)
    ax_l.legend(fontsize=8)
    save_figure(fig, directory, name)
    return [name]


__all__ = ["plot_paths", "plot_width"]
