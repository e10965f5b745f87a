"""Figures for curvature and sharpness: eigenvalues, spectral density, per-layer traces,
noise robustness, 1-D slices and the generalisation gap. Greyscale-readable (line
styles, markers and hatches, not colour alone)."""

from __future__ import annotations

import numpy as np

from lossprobe.results.drawing import new_figure, save_figure, styles

HATCHES = ("", "//", "..", "xx", "\\\\", "oo")


def _label_of(title: str, default: str) -> str:
    return f"{default} — {title}" if title else default


def plot_eigenvalues(values, residuals, directory, title: str = "", name: str = "eigenvalues",
                     operator: str = "Hessian") -> list[str]:
    """Extreme Hessian eigenvalues (index on x, value on y) with their residuals ‖Hv − λv‖ (right)."""
    values, residuals = np.asarray(values, float), np.asarray(residuals, float)
    fig, (ax, axr) = new_figure(ncols=2, width=4.6)
    idx = np.arange(1, len(values) + 1)
    ax.plot(idx, values, "ko-", markersize=5)
    ax.axhline(0, color="0.5", linewidth=0.8, linestyle=":")
    ax.set_xlabel("eigenvalue index (as returned)")
    ax.set_ylabel(f"{operator} eigenvalue λ (loss units / parameter²)")
    ax.set_title(_label_of(title, f"Extreme {operator} eigenvalues (Lanczos)"), fontsize=9)
    ax.grid(alpha=0.3)
    axr.semilogy(idx, np.maximum(residuals, 1e-300), "ks--", markersize=5)
    axr.set_xlabel("eigenvalue index")
    axr.set_ylabel("residual ‖Hv − λv‖")
    axr.set_title("Residual of each eigenpair", fontsize=9)
    axr.grid(alpha=0.3, which="both")
    save_figure(fig, directory, name)
    return [name]


def plot_spectral_density(grid, density, directory, title: str = "", name: str = "spectral_density",
                          eigenvalues=None, operator: str = "Hessian") -> list[str]:
    """Hessian eigenvalue density (SLQ, Gaussian broadening) on a log scale."""
    grid, density = np.asarray(grid, float), np.asarray(density, float)
    fig, ax = new_figure(width=6.0)
    floor = max(density.max() * 1e-12, 1e-300)
    ax.semilogy(grid, np.maximum(density, floor), "k-", linewidth=1.2, label="SLQ density")
    if eigenvalues is not None and len(eigenvalues):
        for i, lam in enumerate(eigenvalues):
            ax.axvline(lam, color="0.4", linestyle="--", linewidth=0.8, label="Lanczos eigenvalues" if i == 0 else None)
    ax.set_xlabel("eigenvalue λ")
    ax.set_ylabel("density (log scale)")
    ax.set_ylim(bottom=max(floor, density.max() * 1e-8))
    ax.set_title(_label_of(title, f"{operator} spectral density"), fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save_figure(fig, directory, name)
    return [name]


def plot_layer_traces(blocks: dict, directory, title: str = "", name: str = "layer_traces",
                      operator: str = "Hessian") -> list[str]:
    """Per-layer Hessian traces (bars) with ±1 standard error. `blocks`: {layer: (trace, stderr)}."""
    names = list(blocks)
    vals = np.array([blocks[k][0] for k in names], float)
    errs = np.array([blocks[k][1] if blocks[k][1] is not None else np.nan for k in names], float)
    fig, ax = new_figure(width=max(4.5, 0.7 * len(names) + 2))
    x = np.arange(len(names))
    ax.bar(x, vals, yerr=np.nan_to_num(errs), capsize=4, color="0.75", edgecolor="k", hatch="//")
    ax.set_xticks(x, names, rotation=45 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center")
    ax.set_xlabel("layer (module name)")
    ax.set_ylabel(f"trace of the layer's {operator} block")
    ax.set_title(_label_of(title, f"Per-layer {operator} trace (±1 s.e.)"), fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    save_figure(fig, directory, name)
    return [name]


def plot_noise_robustness(results: dict, directory, title: str = "", name: str = "noise_robustness") -> list[str]:
    """Accuracy (left) and loss (right) against relative weight-noise σ, mean ± std over draws.

    `results`: {label: NoiseRobustness or its to_dict()}.
    """
    fig, (ax_a, ax_l) = new_figure(ncols=2)
    for (label, r), st in zip(results.items(), styles()):
        d = r if isinstance(r, dict) else r.to_dict()
        s = np.asarray(d["sigmas"], float)
        kw = {"color": st["color"], "linestyle": st["linestyle"], "marker": st["marker"], "markersize": 4, "capsize": 3}
        ax_a.errorbar(s, 100 * np.asarray(d["accuracy_mean"]), yerr=100 * np.asarray(d["accuracy_std"]), label=label, **kw)
        ax_l.errorbar(s, d["loss_mean"], yerr=d["loss_std"], label=label, **kw)
    for ax in (ax_a, ax_l):
        ax.set_xlabel("σ (noise norm / filter norm)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_a.set_ylabel("accuracy (%)")
    ax_l.set_ylabel("mean cross-entropy loss")
    ax_a.set_title(_label_of(title, "Accuracy under Gaussian weight noise"), fontsize=9)
    ax_l.set_title("Loss under Gaussian weight noise (mean ± std over draws)", fontsize=9)
    save_figure(fig, directory, name)
    return [name]


def plot_slices(slices: dict, directory, title: str = "", name: str = "slices_1d") -> list[str]:
    """Loss (left) and accuracy (right) along a filter-normalised direction, α = 0 the trained point.

    `slices`: {label: {"alphas": [...], "loss": {split: [...]}, "accuracy": {split: [...]}}}.
    """
    fig, (ax_l, ax_a) = new_figure(ncols=2)
    for (label, sl), st in zip(slices.items(), styles()):
        for split, ls in zip(sl["loss"], ("-", "--", ":")):
            kw = {"color": st["color"], "marker": st["marker"], "markersize": 3, "linestyle": ls}
            ax_l.plot(sl["alphas"], sl["loss"][split], label=f"{label} {split}", **kw)
            ax_a.plot(sl["alphas"], 100 * np.asarray(sl["accuracy"][split]), label=f"{label} {split}", **kw)
    ax_l.set_yscale("log")
    ax_l.set_ylabel("mean cross-entropy loss (log)")
    ax_a.set_ylabel("accuracy (%)")
    for ax in (ax_l, ax_a):
        ax.set_xlabel("α (step along the filter-normalised direction)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    ax_l.set_title(_label_of(title, "1-D loss slice, filter-normalised random direction"), fontsize=9)
    ax_a.set_title("Accuracy along the same slice", fontsize=9)
    save_figure(fig, directory, name)
    return [name]


def plot_generalization_gap(histories: dict, directory, title: str = "", name: str = "generalization_gap") -> list[str]:
    """Train accuracy minus validation accuracy per epoch, in percentage points."""
    fig, ax = new_figure(width=5.5)
    for (label, h), st in zip(histories.items(), styles()):
        gap = 100 * (np.asarray(h.train_accuracy) - np.asarray(h.val_accuracy))
        ax.plot(h.epoch, gap, label=label, color=st["color"], linestyle=st["linestyle"], marker=st["marker"], markersize=4)
    ax.axhline(0, color="0.5", linewidth=0.8, linestyle=":")
    ax.set_xlabel("epoch (0 = initialisation)")
    ax.set_ylabel("train − validation accuracy (points)")
    ax.set_title(_label_of(title, "Generalisation gap per epoch"), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, directory, name)
    return [name]


def plot_curvature_comparison(values: dict, directory, title: str = "", name: str = "curvature") -> list[str]:
    """Bars per model: top eigenvalue (left) and trace with ±1 s.e. (right).

    `values`: {label: {"top_eigenvalue": λ, "trace": t, "trace_stderr": s}}.
    """
    labels = list(values)
    fig, (ax_e, ax_t) = new_figure(ncols=2, width=4.0)
    x = np.arange(len(labels))
    for i, lab in enumerate(labels):
        v = values[lab]
        ax_e.bar(i, v["top_eigenvalue"], color="0.8", edgecolor="k", hatch=HATCHES[i % len(HATCHES)])
        ax_t.bar(i, v["trace"], yerr=v.get("trace_stderr") or 0, capsize=4, color="0.8", edgecolor="k",
                 hatch=HATCHES[i % len(HATCHES)])
    for ax in (ax_e, ax_t):
        ax.set_xticks(x, labels)
        ax.grid(alpha=0.3, axis="y")
    ax_e.set_ylabel("largest Hessian eigenvalue λ₁")
    ax_t.set_ylabel("Hessian trace (Hutch++, ±1 s.e.)")
    ax_e.set_title(_label_of(title, "Top eigenvalue"), fontsize=9)
    ax_t.set_title("Trace", fontsize=9)
    save_figure(fig, directory, name)
    return [name]
