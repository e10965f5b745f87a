"""Figures of the probe-based search and of the search benchmark (greyscale-readable)."""

from __future__ import annotations

import numpy as np

from lossprobe.results.drawing import new_figure, save_figure, styles
from lossprobe.search.benchmark import bootstrap_ci


def plot_search_progress(events: list[dict], budget: float, directory, title_data: str, xlabel: str | None = None) -> str:
    """Best final validation accuracy so far against budget spent, with every full training marked."""
    fig, ax = new_figure()
    full = [e for e in events if e["kind"] == "full"]
    probes = [e for e in events if e["kind"] == "probe"]
    if full:
        b = [e["spent"] for e in full]
        v = [e["value"] for e in full]
        ax.scatter(b, v, marker="o", facecolors="none", edgecolors="#000000", label="full training (final val acc)")
        ax.step(b, np.maximum.accumulate(v), where="post", color="#0072B2", linestyle="-", label="best so far")
    if probes:
        ax.scatter([e["spent"] for e in probes], [e["value"] for e in probes], marker="x", color="#D55E00",
                   s=14, label="probe (val acc at probe end)")
    ax.axvline(budget, color="#777777", linestyle=":", label="budget")
    ax.set_xlabel(xlabel or "budget spent (full-data epoch equivalents)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"Hyperparameter search on {title_data}")
    ax.legend(fontsize=8)
    save_figure(fig, directory, "search_progress")
    return "search_progress"


def plot_predicted_vs_actual(predicted, predicted_std, actual, directory, title_data: str) -> str:
    """Meta-model prediction (when the candidate was chosen) against its final validation accuracy."""
    fig, ax = new_figure(width=4.4, height=4.0)
    p, s, a = map(np.asarray, (predicted, predicted_std, actual))
    ax.errorbar(p, a, xerr=s, fmt="s", color="#000000", mfc="none", capsize=2, label="fully trained candidates")
    if len(a):
        lo, hi = float(min(p.min(), a.min())), float(max(p.max(), a.max()))
        ax.plot([lo, hi], [lo, hi], linestyle="--", color="#777777", label="y = x")
    ax.set_xlabel("predicted final val accuracy (±1 s.d. of the ensemble)")
    ax.set_ylabel("actual final val accuracy")
    ax.set_title(f"Meta-model predictions, {title_data}")
    ax.legend(fontsize=8)
    save_figure(fig, directory, "predicted_vs_actual")
    return "predicted_vs_actual"


def plot_regret(grid, curves: dict, directory, title_data: str, unit: float | None = None,
                name: str = "regret_vs_budget", xlabel: str | None = None) -> str:
    """Mean regret against budget per method with a 95% bootstrap band over seeds (log y).

    With `unit` (seconds of one full training) the x axis is in full trainings of measured time."""
    fig, ax = new_figure(width=6.4, height=4.4)
    x = np.asarray(grid) / unit if unit else np.asarray(grid)
    for (m, c), st in zip(curves.items(), styles()):
        c = np.asarray(c)
        stats = np.array([bootstrap_ci(c[:, j], n_boot=300, method="percentile") for j in range(c.shape[1])])
        y = np.maximum(stats[:, 0], 1e-3)
        ax.plot(x, y, label=m, markevery=max(1, len(x) // 8), markersize=4, **st)
        ax.fill_between(x, np.maximum(stats[:, 1], 1e-3), np.maximum(stats[:, 2], 1e-3), color=st["color"], alpha=0.10)
    ax.axhline(0.01, color="#777777", linestyle=":", linewidth=1, label="1 point")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel or ("wall-clock budget (median full trainings of measured CPU time)" if unit
                             else "budget (full-data epoch equivalents, probes included)"))
    ax.set_ylabel("regret (best true value − chosen's\nindependent score; ≤0 drawn at 1e-3)")
    ax.set_title(f"Regret vs budget (mean, 95% CI over seeds)\n{title_data}", fontsize=10)
    ax.legend(fontsize=7, ncol=3)
    save_figure(fig, directory, name)
    return name


def plot_correlations(fidelities: list[str], meta: dict, probe: dict, no_sharp: dict, ceiling, directory,
                      title_data: str, stat: str = "spearman", name: str | None = None,
                      third: str = "meta-model, no sharpness") -> str:
    """Held-out rank correlation per probe fidelity: meta-model, meta-model without sharpness,
    raw probe val accuracy; the seed-to-seed noise ceiling as a horizontal band."""
    fig, ax = new_figure(width=5.6, height=3.8)
    x = np.arange(len(fidelities))
    hatches = ("", "//", "..")
    for j, (lab, d) in enumerate((("meta-model", meta), (third, no_sharp),
                                  ("probe val acc alone", probe))):
        m = np.array([d[f][0] for f in fidelities])
        err = np.array([[d[f][0] - d[f][1] for f in fidelities], [d[f][2] - d[f][0] for f in fidelities]])
        ax.bar(x + (j - 1) * 0.26, m, 0.26, zorder=2, yerr=err, capsize=2, label=lab, color=("#444444", "#999999", "#dddddd")[j],
               edgecolor="black", hatch=hatches[j])
    if ceiling is not None and np.isfinite(ceiling[0]):
        ax.axhspan(ceiling[1], ceiling[2], color="#0072B2", alpha=0.10, zorder=0)
        ax.axhline(ceiling[0], color="#0072B2", linestyle="--", label="seed-to-seed ceiling (95% band)", zorder=3)
    ax.set_xticks(x, fidelities)
    ax.set_xlabel("probe fidelity (data fraction × epochs)")
    ax.set_ylabel(f"{stat.capitalize()} with final val acc")
    ax.set_ylim(min(0, ax.get_ylim()[0]), 1.05)
    ax.set_title(f"Held-out prediction of final val acc\n{title_data}", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    name = name or f"correlation_{stat}"
    save_figure(fig, directory, name)
    return name
