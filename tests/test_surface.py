import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_cnn, tiny_mlp
from lossprobe import Objective, ParamSpace, UserError
from lossprobe.core import directions as D
from lossprobe.landscape import surfaces as S
from lossprobe.landscape.surfaces import Surface, grid_axis
from lossprobe.results.drawing import captured_figures


pytestmark = pytest.mark.usefixtures("one_thread")


def _data(kind, n=120):
    g = torch.Generator().manual_seed(0)
    if kind == "mlp":
        x = torch.randn(n, 6, generator=g)
    else:
        x = torch.randn(n, 1, 12, 12, generator=g)
    return x, torch.randint(0, 2, (n,), generator=g)


def _plain(model, x, y, theta0, dirs, pts):
    sp = ParamSpace(model)
    out = []
    work = type(model)(*model) if isinstance(model, torch.nn.Sequential) else model
    import copy

    work = copy.deepcopy(model)
    for p in pts:
        sp.load_into(work, theta0 + torch.tensor(p, dtype=torch.float32) @ dirs)
        with torch.no_grad():
            out.append(F.cross_entropy(work(x), y).item())
    return np.array(out)


def test_grid_axis_keeps_the_centre_exact():
    for n in (1, 2, 3, 4, 7, 8, 21, 50, 51):
        g = grid_axis(-1, 1, n)
        assert len(g) == n and (g == 0).sum() == 1
        assert np.allclose(np.diff(g), np.diff(g)[0]) if n > 2 else True
    g = grid_axis(-1, 1, 51)
    assert g[0] == -1 and g[-1] == 1 and g[25] == 0
    np.testing.assert_array_equal(grid_axis(-1, 1, 4), np.array([-4, -2, 0, 2]) / 3)
    g = grid_axis(-0.5, 1.5, 9)
    assert 0 in g and 1 in g and g[0] == -0.5 and g[-1] == 1.5
    assert 0 not in grid_axis(0.5, 2, 4)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_surface_equals_plain_loop_and_centre_equals_objective(kind):
    model = tiny_mlp(widths=(6, 16, 8, 2)) if kind == "mlp" else tiny_cnn(batchnorm=True)
    if kind == "cnn":
        model[-1] = torch.nn.Linear(16, 2)
        model.eval()
    x, y = _data(kind)
    obj = Objective(model, (x, y), batch_size=50)
    assert obj.shortcut_active
    d1, d2 = D.random_plane(model, seed=1)
    res = S.surface(model, (x, y), (d1, d2), span=((-1, 1), (-0.5, 0.5)), steps=(5, 4), batch_size=50,
                    progress=False)
    assert res.grid_shape == (5, 4) and res.mask.all()
    dirs = torch.stack([d1.vector, d2.vector])
    ref = _plain(model, x, y, obj.theta0, dirs, res.grid_points())
    np.testing.assert_allclose(res.loss.reshape(-1), ref, atol=1e-5, rtol=1e-5)
    assert abs(res.center_loss - float(obj.loss_at().loss[0])) < 1e-6
    assert res.meta["shortcut"] is True and res.meta["directions"][0]["seed"] == 1


def test_slice_default_direction_subset_and_reopen(tmp_path):
    model = tiny_mlp(widths=(6, 8, 2))
    x, y = _data("mlp", 200)
    sl = S.slice(model, (x, y), steps=6, span=(-2, 1), subset=50, subset_seed=3, progress=False)
    assert sl.ndim == 1 and sl.grid_shape == (6,) and 0 in sl.coords[0]
    assert len(sl.subset_indices) == 50 and sl.meta["data"]["subset"] == 50
    sl.save(tmp_path / "s.npz")
    back = Surface.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.loss, sl.loss)
    np.testing.assert_array_equal(back.subset_indices, sl.subset_indices)
    assert back.meta["directions"][0]["norm"] == "filter"
    # the same call reproduces the same numbers (seeded direction and subset)
    again = S.slice(model, (x, y), steps=6, span=(-2, 1), subset=50, subset_seed=3, progress=False)
    np.testing.assert_array_equal(again.loss, sl.loss)


def test_nan_points_are_stored_not_fatal(tmp_path):
    model = tiny_mlp(widths=(6, 8, 2))
    x, y = _data("mlp")
    sp = ParamSpace(model)
    d = torch.zeros(sp.numel)
    d[: 8 * 6] = 3e38  # the first layer's weights overflow away from the centre
    res = S.slice(model, (x, y), d, steps=5, out=tmp_path / "nan", progress=False)
    assert res.mask.all()
    assert np.isfinite(res.loss[2]) and not np.isfinite(res.loss[[0, 1, 3, 4]]).any()
    assert np.isnan(res.accuracy[0])
    back = Surface.load(tmp_path / "nan")
    assert back.mask.all() and np.isnan(back.loss[0])
    assert res.summary()["non_finite"] == 4


def test_resume_skips_done_chunks_and_refuses_another_surface(tmp_path):
    model = tiny_mlp(widths=(6, 8, 2))
    x, y = _data("mlp")
    calls = []
    first = S.surface(model, (x, y), steps=(4, 3), out=tmp_path / "g", progress=False,
                      on_chunk=lambda i, n: calls.append(i))
    assert sorted(calls) == [0, 1, 2, 3]
    (tmp_path / "g" / "chunks" / "chunk_000002.npz").unlink()
    calls.clear()
    second = S.surface(model, (x, y), steps=(4, 3), out=tmp_path / "g", progress=False,
                       on_chunk=lambda i, n: calls.append(i))
    assert calls == [2] and second.meta["resumed_chunks"] == 3
    np.testing.assert_array_equal(first.loss, second.loss)
    with pytest.raises(UserError, match="different surface"):
        S.surface(model, (x, y), steps=(4, 3), seed=9, out=tmp_path / "g", progress=False)


def test_bad_inputs_give_one_clear_line():
    model = tiny_mlp(widths=(6, 8, 2))
    x, y = _data("mlp")
    cases = [
        (dict(steps=0), "steps"),
        (dict(steps=(3, 0)), "steps"),
        (dict(span=(1, 1)), "empty"),
        (dict(span=((0, 1), (2, -2))), "empty"),
        (dict(directions=(torch.zeros(5), torch.zeros(5))), "expected"),
        (dict(directions=(torch.zeros(ParamSpace(model).numel),)), "2 direction"),
        (dict(backend="mpi"), "backend"),
    ]
    for kw, pat in cases:
        with pytest.raises(UserError, match=pat) as e:
            S.surface(model, (x, y), progress=False, **{"steps": 3, **kw})
        assert "\n" not in str(e.value)


def test_plots_and_exports(tmp_path):
    from lossprobe.figures import surfaces as SP

    model = tiny_mlp(widths=(6, 8, 2))
    x, y = _data("mlp")
    res = S.surface(model, (x, y), steps=5, progress=False)
    res.loss[0, 0] = np.nan  # a gap must not break any figure
    with captured_figures() as figs:
        names = SP.plot_all(res, tmp_path, title_data="toy <data>", log=True, marks=[(0.5, 0.5, "B")])
    assert {f"surface_{k}" for k in ("contour", "filled", "heatmap", "3d")} == set(names)
    assert all((tmp_path / f"{n}.png").stat().st_size > 1000 for n in names)
    # what was drawn: log10 of the loss over the grid (the NaN corner a gap), the mark, the axes' range
    figs = dict(figs)
    logz = np.log10(res.loss)
    xs, ys = res.coords
    heat = figs["surface_heatmap"].axes[0]
    (mesh,) = heat.collections
    got = np.ma.filled(np.ma.asarray(mesh.get_array(), float), np.nan).reshape(len(ys), len(xs)).T  # rows are y
    np.testing.assert_allclose(got, logz, equal_nan=True)
    assert np.isnan(got[0, 0]) and figs["surface_heatmap"].axes[1].get_ylabel() == "log10 mean cross-entropy loss"
    for name in ("surface_contour", "surface_filled", "surface_heatmap"):
        ax = figs[name].axes[0]
        (mark,) = [ln for ln in ax.get_lines() if list(ln.get_xdata()) == [0.5]]
        assert list(mark.get_ydata()) == [0.5] and [t.get_text() for t in ax.texts if t.get_text() == "B"] == ["B"]
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        assert x0 <= xs[0] and xs[-1] <= x1 and y0 <= ys[0] and ys[-1] <= y1 and "toy <data>" in ax.get_title()
    (cs,) = [c for c in figs["surface_contour"].axes[0].collections if hasattr(c, "levels")]
    assert np.nanmin(logz) <= cs.levels[-1] and cs.levels[0] <= np.nanmax(logz) and len(cs.levels) >= 5
    (cf,) = [c for c in figs["surface_filled"].axes[0].collections if getattr(c, "filled", False)]
    assert cf.levels[0] <= np.nanmin(logz) and np.nanmax(logz) <= cf.levels[-1]
    ax3 = figs["surface_3d"].axes[0]
    assert ax3.name == "3d" and ax3.get_zlabel() == "log10 mean cross-entropy loss" and len(ax3.collections) == 1
    h = SP.write_html(res, tmp_path / "s.html", title="<script>alert(1)</script>")
    text = h.read_text()
    assert "<script>alert(1)" not in text and "&lt;script&gt;alert(1)" in text
    import re

    assert "plotly" in text.lower() and not re.search(r"<script[^>]*\bsrc=", text)  # JS inlined: works offline
    v = SP.write_vtp(res, tmp_path / "s.vtp").read_text()
    assert 'NumberOfPoints="25"' in v and 'NumberOfPolys="15"' in v  # 16 quads, one touches the NaN corner
    sl = S.slice(model, (x, y), steps=5, progress=False)
    with captured_figures() as figs:
        assert SP.plot_all(sl, tmp_path) == ["slice"]
    ax_l, ax_a = figs[0][1].axes
    (loss,) = [ln for ln in ax_l.get_lines() if len(ln.get_xdata()) == 5]
    (acc,) = [ln for ln in ax_a.get_lines() if len(ln.get_xdata()) == 5]
    np.testing.assert_array_equal(loss.get_xdata(), sl.coords[0])
    np.testing.assert_allclose(loss.get_ydata(), sl.loss)
    np.testing.assert_allclose(acc.get_ydata(), 100 * sl.accuracy)
    assert ax_a.get_ylabel() == "accuracy (%)"


def test_cli_surface_and_slice(tmp_path, capsys):
    from lossprobe.cli import main
    from lossprobe.models import build
    from lossprobe.training.checkpoints import save_checkpoint

    ck = tmp_path / "m.safetensors"
    save_checkpoint(build("mlp:2-8-2", seed=0), ck)
    out = tmp_path / "run"
    args = ["surface", str(ck), "--model", "mlp:2-8-2", "--data", "spiral:test", "--steps", "5", "3",
            "--span", "-1", "1", "--out", str(out), "--vtp"]
    assert main(args) == 0
    s = json.loads((out / "summary.json").read_text())
    for k in ("center_loss", "grid_shape", "points", "seconds", "points_per_second", "min_loss", "max_loss"):
        assert k in s, k
    assert s["grid_shape"] == [5, 3] and s["points"] == 15
    assert (out / "surface.html").is_file() and (out / "surface.vtp").is_file()
    assert "estimated" in capsys.readouterr().out
    stamps = lambda: {c.name: c.stat().st_mtime_ns for c in (out / "grid" / "chunks").glob("chunk_*.npz")}  # noqa: E731
    before = stamps()
    assert len(before) == 5
    assert main(args) == 0  # same command, same directory: resumes (nothing left to compute)
    assert json.loads((out / "summary.json").read_text())["resumed_chunks"] == 5
    assert stamps() == before  # no chunk computed (written) again
    assert main(["slice", str(ck), "--model", "mlp:2-8-2", "--data", "spiral:test", "--steps", "4",
                 "--out", str(tmp_path / "sl")]) == 0
    capsys.readouterr()
    assert main(["surface", str(ck), "--model", "mlp:2-8-2", "--data", "spiral:test", "--span", "1", "-1",
                 "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lossprobe: error:") and "empty" in err and "\n" not in err
