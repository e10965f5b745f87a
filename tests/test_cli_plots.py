"""The commands declare what to draw from the arrays they save (`lossprobe.plotspec`), and
matplotlib (`report.figures.draw`) draws a declaration with the axes the site gives it; the
figures the commands save are checked for what they draw (lines, data, labels)."""

import numpy as np
import pytest

from conftest import assert_drawn_as_declared, spiral_checkpoints
from lossprobe.results import store
from lossprobe.results.drawing import captured_figures
from lossprobe.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def ckpts(tmp_path, spiral):
    return spiral_checkpoints(tmp_path, spiral, epochs=1)


def _plots(path):
    with np.load(path) as f:
        return store.plots_of({k: f[k] for k in f.files})


def test_path_commands_declare_loss_and_accuracy_along_the_path(ckpts, tmp_path):
    from lossprobe.report import site

    common = ["--model", "mlp:2-8-8-2", "--data", "spiral:test"]
    with captured_figures() as figs:
        assert main(["interpolate", *ckpts, *common, "--alphas", "5", "--out", str(tmp_path / "i")]) == 0
        assert main(["align", *ckpts, *common, "--alphas", "5", "--out", str(tmp_path / "a")]) == 0
        assert main(["curve", *ckpts, *common, "--epochs", "1", "--points", "5", "--out", str(tmp_path / "c")]) == 0
    figs = dict(figs)
    assert list(figs) == ["interpolation", "alignment", "curve"]
    loss, acc = _plots(tmp_path / "i" / "interpolation.npz")
    assert (loss.x, [s.y for s in loss.series]) == ("alphas", ["loss_test"])
    assert loss.xlabel.startswith("α") and "cross_entropy" in loss.ylabel and acc.ylabel.startswith("accuracy")
    loss, _ = _plots(tmp_path / "a" / "interpolation.npz")
    assert [s.y for s in loss.series] == ["naive_loss", "aligned_loss"]
    loss, _ = _plots(tmp_path / "c" / "curve.npz")
    groups = [s.group for s in loss.series]  # one colour per path, the splits of a path share it
    assert loss.x == "ts" and len(set(groups)) == 2 and groups[0] == "straight line"
    assert [s.dash for s in loss.series if s.y.endswith("_train")] == [True, True]
    # the PNGs the commands wrote draw what they declare (align and curve) or the same numbers (interpolate)
    for d, npz, name in (("a", "interpolation.npz", "alignment"), ("c", "curve.npz", "curve")):
        with np.load(tmp_path / d / npz) as f:
            arrays = {k: f[k] for k in f.files}
        assert_drawn_as_declared(figs[name], store.plots_of(arrays), arrays)
    with np.load(tmp_path / "i" / "interpolation.npz") as f:
        left, right = figs["interpolation"].axes
        (loss,) = [ln for ln in left.get_lines() if ln.get_label() == "test"]
        (acc,) = [ln for ln in right.get_lines() if ln.get_label() == "test"]
        np.testing.assert_array_equal(loss.get_xdata(), f["alphas"])
        np.testing.assert_array_equal(loss.get_ydata(), f["loss_test"])
        np.testing.assert_allclose(acc.get_ydata(), 100 * f["accuracy_test"])
        assert left.get_xlabel().startswith("α") and right.get_ylabel() == "accuracy (%)"
    # the site draws exactly these: two line plots per run, nothing guessed
    for d in ("i", "a", "c"):
        plots, omitted = site.run_plots(site.load_run(tmp_path / d))
        assert [p.base for p in plots] == ["Loss along the path", "Accuracy along the path"] and omitted == 0


def test_draw_puts_cols_on_x_and_rows_on_y_and_uses_the_declared_scales():
    from lossprobe.results.plotspec import line, surface
    from lossprobe.results.drawing import draw

    rows, cols = np.array([10.0, 20.0, 30.0]), np.linspace(-2, 2, 5)
    z = np.arange(3)[:, None] * 10.0 + np.arange(5)[None, :]
    ax = draw(surface("s", "z", rows="r", cols="c", xlabel="cols here", ylabel="rows here"), {"z": z, "r": rows, "c": cols})
    assert ax.get_xlabel() == "cols here" and ax.get_ylabel() == "rows here"
    mesh = ax.collections[0]
    assert np.array_equal(np.asarray(mesh.get_array()).reshape(3, 5), z)  # rows of z along y
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    assert x0 <= -2 and x1 >= 2 and y0 <= 10 and 30 <= y1 < 40
    ax = draw(line("l", "x", ["y"], xlabel="width", ylabel="loss", log_x=True, log_y=True),
              {"x": np.array([1.0, 10, 100]), "y": np.array([1.0, 0.1, 0.01])})
    assert (ax.get_xscale(), ax.get_yscale(), ax.get_xlabel(), ax.get_ylabel()) == ("log", "log", "width", "loss")
