"""Figures of training runs: learning curves and generalisation gap."""

from __future__ import annotations

from lossprobe.results.drawing import new_figure, save_figure, styles


def plot_learning_curves(histories: dict, directory, title: str = "", name: str = "learning_curves") -> list[str]:
    """Loss (left) and accuracy (right) per epoch, train (solid) and validation (dashed), per run.

    `histories` maps a run label to a `lossprobe.train.History`.
    """
    fig, (ax_l, ax_a) = new_figure(ncols=2)
    for (label, h), st in zip(histories.items(), styles()):
        kw = {"color": st["color"], "marker": st["marker"], "markersize": 4}
        ax_l.plot(h.epoch, h.train_loss, linestyle="-", label=f"{label} train", **kw)
        ax_l.plot(h.epoch, h.val_loss, linestyle="--", label=f"{label} validation", **kw)
        ax_a.plot(h.epoch, [100 * v for v in h.train_accuracy], linestyle="-", label=f"{label} train", **kw)
        ax_a.plot(h.epoch, [100 * v for v in h.val_accuracy], linestyle="--", label=f"{label} validation", **kw)
    ax_l.set_ylabel("mean cross-entropy loss")
    ax_a.set_ylabel("accuracy (%)")
    for ax in (ax_l, ax_a):
        ax.set_xlabel("epoch (0 = initialisation)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_l.set_title("Loss", fontsize=10)
    ax_a.set_title("Accuracy", fontsize=10)
    fig.suptitle("Learning curves: whole train split in eval mode (solid), validation split (dashed)"
                 + (f"\n{title}" if title else ""), fontsize=11)
    save_figure(fig, directory, name)
    return [name]
