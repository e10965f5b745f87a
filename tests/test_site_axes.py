"""Declared axes: producers say which 1-D arrays are the rows and columns of a 2-D array
(`lossprobe.results.store.save_arrays(plots=[plotspec.surface(...)])`, or the older `grids=...`),
and the report site draws them so; what no declaration names is listed, never drawn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lossprobe.results import store
from lossprobe.report import site
from lossprobe.results.store import RunDir

pytestmark = pytest.mark.usefixtures("one_thread")


def _f(r, c):
    """A value that is not symmetric in its arguments, so a transposed z is caught."""
    return 10.0 * r + c**2 + 0.5 * r * c


def _surfaces(run, rel):
    plots = [p for p in site.run_plots(run)[0] if p.key.startswith(f"{rel}:")]
    surface = next(p for p in plots if p.surface)
    contour = next(p for p in plots if p.data[0]["type"] == "contour")
    return surface, contour


def _check_orientation(trace, rows, cols, fn):
    """plotly: z[i][j] is the value at (y[i], x[j]); rows must be y, columns x."""
    assert trace["y"] == pytest.approx(list(rows)) and trace["x"] == pytest.approx(list(cols))
    z = np.array(trace["z"], dtype=float)
    assert z.shape == (len(rows), len(cols))
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            assert z[i, j] == pytest.approx(fn(r, c))


# rows first and columns first in the file: a guess by position would be wrong for one of them
@pytest.mark.parametrize("shape", [(3, 5), (4, 4)])
@pytest.mark.parametrize("orientation", ["d1_rows", "y_rows"])
def test_declared_axes_decide_plotly_x_and_y(tmp_path, shape, orientation):
    m, n = shape
    rows = np.linspace(-2.0, 1.0, m)  # distinct values per axis: x and y cannot be mistaken
    cols = np.linspace(0.25, 3.0, n)
    z = _f(rows[:, None], cols[None, :])
    if orientation == "d1_rows":  # as lossprobe.landscape.surfaces.Surface: coords_0 (d1) on the rows
        rk, ck, arrays = "coords_0", "coords_1", {"coords_0": rows, "coords_1": cols}
    else:  # as trajectory.PlaneSurface: loss[iy, ix], and xs is written first
        rk, ck, arrays = "surface_ys", "surface_xs", {"surface_xs": cols, "surface_ys": rows}
    grids = {"surface_loss": {"rows": rk, "cols": ck, "row_label": "rows here", "col_label": "columns here"}}
    rd = RunDir(tmp_path / "r", "test", {"shape": list(shape), "orientation": orientation})
    rd.save_arrays("grid.npz", grids=grids, surface_loss=z, **arrays)
    run = site.load_run(rd.path)
    (spec,) = run.plots["grid.npz"]
    assert (spec.z, spec.rows, spec.cols) == ("surface_loss", rk, ck)
    assert store.GRIDS_KEY not in run.arrays["grid.npz"]
    surface, contour = _surfaces(run, "grid.npz")
    for plot in (surface, contour):
        _check_orientation(plot.data[0], rows, cols, _f)
    assert surface.layout["scene"]["xaxis"]["title"]["text"] == "columns here"
    assert surface.layout["scene"]["yaxis"]["title"]["text"] == "rows here"
    assert contour.layout["xaxis"]["title"]["text"] == "columns here"
    # the declared surface is not also drawn as a family of curves
    assert [p.data[0]["type"] for p in site.run_plots(run)[0]] == ["surface", "contour"]


def test_surface_save_declares_d1_on_the_rows(tmp_path):
    from lossprobe.landscape.surfaces import Surface

    c0, c1 = np.linspace(-1.0, 1.0, 4), np.linspace(0.5, 2.0, 4)  # square: only the declaration tells
    loss = _f(c0[:, None], c1[None, :])
    s = Surface([c0, c1], loss, loss / 10, np.ones((4, 4), bool), {"axis_labels": ["along d1", "along d2"]})
    rd = RunDir(tmp_path / "s", "surface", {})
    s.save(rd.path)
    back = Surface.load(rd.path)  # the declaration does not disturb reopening
    assert np.array_equal(back.loss, loss) and np.array_equal(back.coords[0], c0)
    with np.load(rd / "surface.npz") as f:
        grids = store.grids_of({k: f[k] for k in f.files})
    assert grids["loss"] == {"rows": "coords_0", "cols": "coords_1", "row_label": "along d1",
                             "col_label": "along d2"}
    surface, _ = _surfaces(site.load_run(rd.path), "surface.npz")
    _check_orientation(surface.data[0], c0, c1, _f)
    assert surface.layout["scene"]["yaxis"]["title"]["text"] == "along d1"


def test_optimizer_study_plane_surface_is_drawn_with_y_on_the_rows(tmp_path):
    """Regression: the optimiser study's square plane grids (surface_xs, surface_ys,
    surface_loss[iy, ix]) were drawn transposed. Its own stage code writes a tiny one here."""
    from lossprobe.trajectories import trajectory as T
    from lossprobe.data import two_spirals
    from lossprobe.models import mlp
    from lossprobe.core.objective import Objective
    from lossprobe.studies import optimizers

    model = mlp([2, 4, 1], seed=0)
    obj = Objective(model, two_spirals(20, 0.1, 1.5, seed=0), loss="bce")
    plane = T.Plane.random(model, seed=0)
    surf = T.plane_surface(obj, plane, ((-1.0, 0.5), (-0.25, 2.0)), n=4)
    assert not np.allclose(surf.loss, surf.loss.T)  # else orientation could not be seen
    rd = RunDir(tmp_path / "o", "optimizers", {"tiny": True})
    optimizers._stage(rd, "plane-test", lambda: (surf.to_arrays("surface_"), {}), False,
                      grids=T.PlaneSurface.grids("surface_"))
    surface, contour = _surfaces(site.load_run(rd.path), "plane-test.npz")

    def loss_at(y, x):  # the true loss at plane coordinates (x, y), computed afresh
        theta = plane.point(torch.tensor([[x, y]], dtype=torch.float64)).to(obj.space.dtype)
        return float(T.losses_at(obj, theta)[0][0])

    for plot in (surface, contour):
        trace = plot.data[0]
        assert trace["x"] == pytest.approx(list(surf.xs)) and trace["y"] == pytest.approx(list(surf.ys))
        z = np.array(trace["z"], dtype=float)
        for i, j in ((0, 3), (3, 0), (1, 2)):
            assert z[i, j] == pytest.approx(loss_at(surf.ys[i], surf.xs[j]), rel=1e-4)
    assert surface.layout["scene"]["xaxis"]["title"]["text"].startswith("x")
    # reopening a finished stage gives the arrays without the declaration entry
    arrays, _ = optimizers._stage(rd, "plane-test", lambda: pytest.fail("recomputed"), False)
    assert set(arrays) == set(surf.to_arrays("surface_"))


def test_asymmetric_declared_surface_puts_cols_on_x_and_rows_on_y(tmp_path):
    """z[i, j] = 10 i + j over 3 rows × 5 cols: the plotly spec must hold z[i][j] at (cols[j], rows[i])."""
    from lossprobe.results.plotspec import surface

    rows, cols = np.array([100.0, 200.0, 300.0]), np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    z = np.arange(3)[:, None] * 10.0 + np.arange(5)[None, :]
    spec = surface("Test surface", "z", rows="r", cols="c", xlabel="column axis", ylabel="row axis", zlabel="value")
    rd = RunDir(tmp_path / "a", "test", {})
    rd.save_arrays("asym.npz", plots=[spec], c=cols, z=z, r=rows)  # cols written first: order must not matter
    site.build_site([rd.path], tmp_path / "site")
    src = (tmp_path / "site/runs/a/index.html").read_text()
    import json
    import re

    specs = [json.loads(s) for s in re.findall(r'<script type="application/json" id="plot-\d+-data">(.*?)</script>', src)]
    assert [s["data"][0]["type"] for s in specs] == ["surface", "contour"]
    for s in specs:
        t = s["data"][0]
        assert t["x"] == list(cols) and t["y"] == list(rows)
        assert np.array(t["z"]).shape == (3, 5)
        for i in range(3):
            for j in range(5):
                assert t["z"][i][j] == 10 * i + j
    assert specs[0]["layout"]["scene"]["xaxis"]["title"]["text"] == "column axis"
    assert specs[0]["layout"]["scene"]["yaxis"]["title"]["text"] == "row axis"
    assert specs[1]["layout"]["xaxis"]["title"]["text"] == "column axis"
    assert specs[1]["layout"]["yaxis"]["title"]["text"] == "row axis"


def test_undeclared_arrays_are_listed_not_drawn(tmp_path):
    from lossprobe.results.atomic import save_npz
    from lossprobe.results.plotspec import line

    rd = RunDir(tmp_path / "old", "surface", {})
    c0, c1 = np.linspace(-1, 1, 3), np.linspace(-1, 1, 5)
    # as before declarations: a surface-looking file, and a file with one declared line and one extra array
    save_npz(rd / "surface.npz", coords_0=c0, coords_1=c1, loss=_f(c0[:, None], c1[None, :]))
    rd.save_arrays("path.npz", plots=[line("Loss along t", "ts", ["loss"])], ts=c0, loss=c0**2,
                   loss_extra=c0**3)
    run = site.load_run(rd.path)
    assert run.plots["surface.npz"] == []
    plots, omitted = site.run_plots(run)
    assert omitted == 0 and len(plots) == 1 and [t["name"] for t in plots[0].data] == ["loss"]
    site.build_site([rd.path], tmp_path / "site")
    page = (tmp_path / "site/runs/old/index.html").read_text()
    assert "coords_0 3 float64" in page and "none declared to be drawn" in page
    assert "loss_extra 3 float64" in page and "not drawn (no plot declares them): loss_extra" in page
    assert page.count('class="plot-block"') == 1


def test_declarations_are_checked_when_written_and_ignored_when_damaged(tmp_path):
    xs, ys, z = np.arange(3.0), np.arange(4.0), np.zeros((4, 3))
    with pytest.raises(ValueError, match="length 4"):
        store.save_arrays(tmp_path / "a.npz", {"xs": xs, "ys": ys, "z": z}, {"z": {"rows": "xs", "cols": "ys"}})
    with pytest.raises(ValueError, match="2-D"):
        store.save_arrays(tmp_path / "a.npz", {"xs": xs, "z": xs}, {"z": {"rows": "xs", "cols": "xs"}})
    with pytest.raises(ValueError, match="reserved"):
        store.save_arrays(tmp_path / "a.npz", {store.GRIDS_KEY: xs})
    # a declaration that no longer fits its arrays (edited by hand) is dropped, not trusted
    bad = {"xs": xs, "ys": ys, "z": z, store.GRIDS_KEY: np.array('{"z": {"rows": "xs", "cols": "ys"}}')}
    assert store.grids_of(bad) == {}
    assert store.grids_of({**bad, store.GRIDS_KEY: np.array("not json")}) == {}
