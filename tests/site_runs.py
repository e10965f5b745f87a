"""Small real run directories for the report-site tests (tests/test_site*.py, tests/test_browser*.py).

Everything is computed with lossprobe on two-spirals data in about a second: two
'spiral-pair' runs (train two tiny MLPs, interpolate, learning curves, figures, report.md),
one 'surface' run (a 2-D loss grid from Objective.evaluate), and one run whose name, note,
summary and report.md are hostile HTML, left incomplete.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

EVIL_NAME = "<script>window.__pwned = 1</script> evil & co"
EVIL_NOTE = '<img src=x onerror="window.__pwned = 2"> note with "quotes"'


def path_plots(it) -> list:
    """What a reader should draw from `Interpolation.to_arrays()`: loss and accuracy along α."""
    from lossprobe.results.plotspec import Series, line

    xl = "α (0 = first model, 1 = second model)"
    return [line("Loss along the path α", "alphas", [Series(f"loss_{s}", s) for s in it.loss], xlabel=xl,
                 ylabel="mean cross-entropy loss"),
            line("Accuracy along the path α", "alphas", [Series(f"accuracy_{s}", s) for s in it.accuracy],
                 xlabel=xl, ylabel="accuracy (fraction correct)")]


def _pair(root: Path, name: str, seeds: tuple[int, int]) -> Path:
    from lossprobe.data import two_spirals
    from lossprobe.models import mlp
    from lossprobe.connectivity.paths import interpolate
    from lossprobe.figures.paths import plot_interpolation
    from lossprobe.figures.training import plot_learning_curves
    from lossprobe.results.store import RunDir
    from lossprobe.training.loop import TrainConfig, fit
    from lossprobe.training.checkpoints import save_checkpoint

    train, val = two_spirals(n=80, seed=0), two_spirals(n=60, seed=1)
    rd = RunDir(root / name, "spiral-pair", {"model": "mlp:2-16-16-2", "seeds": list(seeds), "epochs": 3,
                                             "note": f"pair of seeds {seeds[0]} and {seeds[1]}"})
    models, hists = [], {}
    for s in seeds:
        m = mlp((2, 16, 16, 2), seed=s)
        h = fit(m, train, val, TrainConfig(epochs=3, lr=0.02, batch_size=32))
        rd.save_json(f"history_seed{s}.json", h.to_dict())
        save_checkpoint(m, rd.subdir("checkpoints") / f"model_seed{s}.safetensors")
        models.append(m.eval())
        hists[f"seed {s}"] = h
    it = interpolate(models[0], models[1], {"train": train, "test": val}, alphas=np.linspace(-0.5, 1.5, 9))
    rd.save_arrays("interpolation.npz", plots=path_plots(it), **it.to_arrays())
    figs = plot_learning_curves(hists, rd.figures, title="mlp:2-16-16-2, spirals")
    figs += plot_interpolation(it, rd.figures, title_data="spirals")
    b = it.barriers()
    rd.save_json("summary.json", {"study": "spiral-pair", "loss_barrier": b["loss_barrier"],
                                  "error_barrier": b["error_barrier"], "alphas": it.alphas,
                                  "same_basin": bool(b["error_barrier"]["test"] < 0.02), "seconds": 0.5,
                                  "verdict": f"loss barrier {b['loss_barrier']['test']:.3f} on the test spirals"})
    (rd / "report.md").write_text(
        f"# Spiral pair {seeds}\n\nTwo MLPs, **3 epochs**; see `interpolation.npz` and "
        f"[the arrays](interpolation.npz).\n\n| split | loss barrier |\n|---|---|\n"
        f"| train | {b['loss_barrier']['train']:.4f} |\n| test | {b['loss_barrier']['test']:.4f} |\n\n"
        "![Learning curves of both seeds on the spirals](figures/learning_curves.png)\n\n"
        "## Interpolation\n\n![Loss and accuracy along the line between the two networks](figures/interpolation.png)\n")
    rd.mark("report")
    rd.complete()
    return rd.path


def _surface(root: Path) -> Path:
    from lossprobe.data import two_spirals
    from lossprobe.models import mlp
    from lossprobe.core.objective import Objective
    from lossprobe.results.drawing import new_figure
    from lossprobe.results.store import RunDir

    data = two_spirals(n=60, seed=2)
    model = mlp((2, 8, 2), seed=0).eval()
    obj = Objective(model, data)
    g = torch.Generator().manual_seed(0)
    theta = obj.theta0
    d = torch.randn(2, theta.numel(), generator=g)
    d = d / d.norm(dim=1, keepdim=True) * theta.norm()
    x, y = np.linspace(-1, 1, 9), np.linspace(-1, 1, 7)  # not square: rows y, columns x
    yy, xx = np.meshgrid(y, x, indexing="ij")
    ev = obj.evaluate(torch.tensor(np.stack([xx.ravel(), yy.ravel()], 1)), directions=d)
    loss, acc = ev.loss.reshape(7, 9), ev.accuracy.reshape(7, 9)
    rd = RunDir(root / "surface", "surface", {"model": "mlp:2-8-2", "grid": [7, 9], "directions": "random"})
    from lossprobe.results.plotspec import surface

    # the loss is declared; the accuracy is saved but not declared, so the site lists it without a plot
    rd.save_arrays("surface.npz", plots=[surface("Loss over the plane", "loss", rows="y", cols="x", xlabel="x",
                                                 ylabel="y", zlabel="mean cross-entropy loss")],
                   x=x, y=y, loss=loss, accuracy=acc)
    fig, ax = new_figure()
    cs = ax.contour(x, y, loss, levels=8, colors="k")
    ax.clabel(cs, fontsize=7)
    ax.set(xlabel="direction 1", ylabel="direction 2", title="loss on 120 spiral points")
    rd.save_figure(fig, "surface_contour")
    rd.save_json("summary.json", {"loss_at_origin": float(loss[3, 4]), "min_loss": float(loss.min()),
                                  "grid": [7, 9]})
    (rd / "report.md").write_text("# Loss surface\n\n![Contour lines of the loss over the plane](figures/surface_contour.png)\n")
    rd.complete()
    return rd.path


def _evil(root: Path) -> Path:
    from lossprobe.results.store import RunDir

    rd = RunDir(root / "evil", "spiral-pair", {"name": EVIL_NAME, "note": EVIL_NOTE, "lr": "</td></tr><script>x</script>"})
    rd.save_json("summary.json", {"verdict": "<b>not bold</b>", "loss_barrier": {"test": 0.5}})
    (rd / "report.md").write_text(
        "# <script>window.__pwned = 3</script>\n\n"
        "<iframe src=\"https://example.com\"></iframe> [click](javascript:window.__pwned=4) "
        "![x](javascript:alert(1)) [outside](../../etc/passwd) **bold** `<code>`\n\n"
        "![tracker](https://example.com/pixel.png) ![proto](//example.com/p.png) "
        "[data](data:text/html,<script>alert(1)</script>) <img src=\"https://example.com/raw.png\">\n")
    rd.mark("train")  # left incomplete on purpose
    return rd.path


def make_runs(root: Path) -> dict[str, Path]:
    """Create the runs under `root`; returns {'a', 'b', 'surface', 'evil'} -> run directory."""
    torch.manual_seed(0)
    root = Path(root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: more threads only spin on a busy machine
    try:
        return {"a": _pair(root, "pair-a", (0, 1)), "b": _pair(root, "pair-b", (2, 3)),
                "surface": _surface(root), "evil": _evil(root)}
    finally:
        torch.set_num_threads(threads)
