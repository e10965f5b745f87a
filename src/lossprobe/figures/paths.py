"""Figures of interpolation paths: loss and accuracy along α, barriers marked."""

from __future__ import annotations

import numpy as np

from lossprobe.results.drawing import new_figure, save_figure, styles


def plot_interpolation(it, directory, title_data: str = "", name: str = "interpolation",
                       label_a: str = "A", label_b: str = "B") -> list[str]:
    """Loss (left) and accuracy (right) along α for every split; the loss barrier is marked.

    Returns the figure names written (without extension).
    """
    fig, (ax_l, ax_a) = new_figure(ncols=2)
    a = it.alphas
    for j, (split, st) in enumerate(zip(it.loss, styles())):
        loss, acc = it.loss[split], it.accuracy[split]
        ax_l.plot(a, loss, label=split, markersize=4, **st)
        ax_a.plot(a, 100 * acc, label=split, markersize=4, **st)
        # the barrier as lossprobe.paths defines it; the arrow stands where the loss rises most above the chord
        barrier = it.loss_barrier(split)
        l0, l1 = loss[a == 0][0], loss[a == 1][0]
        chord = (1 - a) * l0 + a * l1
        i = int(np.argmax(np.where((a >= 0) & (a <= 1), loss - chord, -np.inf)))
        ax_l.plot([0, 1], [l0, l1], color=st["color"], linestyle=":", linewidth=1)
        ax_l.annotate("", xy=(a[i], chord[i] + barrier), xytext=(a[i], chord[i]),
                      arrowprops={"arrowstyle": "<->", "color": st["color"]})
        ax_l.text(a[i] + 0.03, chord[i] + (0.35 + 0.3 * j) * barrier, f"{split} barrier {barrier:.3f}",
                  color=st["color"], fontsize=8, va="center",
                  bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
    for ax in (ax_l, ax_a):
        for x in (0, 1):
            ax.axvline(x, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xlabel(f"α  (0 = model {label_a}, 1 = model {label_b})")
        ax.grid(alpha=0.3)
        ax.legend()
    ax_l.set_ylabel("mean cross-entropy loss")
    ax_a.set_ylabel("accuracy (%)")
    ax_l.set_title("Loss (dotted: chord between endpoints)", fontsize=10)
    ax_a.set_title("Accuracy", fontsize=10)
    fig.suptitle(f"Along θ(α) = (1−α)·θ[{label_a}] + α·θ[{label_b}]" + (f"\n{title_data}" if title_data else ""),
                 fontsize=11)
    save_figure(fig, directory, name)
    return [name]
