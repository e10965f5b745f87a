"""Trajectory figures: toy paths, plane paths, fidelity and the optional GIF. Each test looks at
what was drawn (the Figure that `save_figure` saved: lines and their data, labels, axis ranges,
the contour levels), not only at the files."""

import matplotlib.colors as mcolors
import numpy as np

from lossprobe.figures import trajectories as P
from lossprobe.results.drawing import captured_figures
from lossprobe.landscape.surfaces import Surface
from lossprobe.trajectories import toy


def _saved(figs, name, tmp_path):
    """The one Figure saved as `name`, after checking that its files are there."""
    assert [n for n, _ in figs] == [name]
    assert (tmp_path / f"{name}.png").stat().st_size > 1000 and (tmp_path / f"{name}.svg").is_file()
    return figs[0][1]


def _lines(ax) -> dict:
    """The labelled lines of `ax` by label (the legend's entries that are lines)."""
    return {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}


def _xy(line) -> np.ndarray:
    return np.column_stack([np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)])


def _contour_levels(fig) -> np.ndarray:
    """The levels of the filled contour (the one with a colour bar) drawn on the figure."""
    (cf,) = [c for ax in fig.axes for c in ax.collections if hasattr(c, "levels") and getattr(c, "filled", False)]
    return np.asarray(cf.levels)


def test_toy_paths_figure_and_gif(tmp_path):
    f = toy.get_toy("quadratic")
    runs = {o: toy.run_optimizer(f, o, steps=20) for o in ("gd", "momentum", "adam")}
    crit = toy.find_critical_points(f, n_starts=3)
    with captured_figures() as figs:
        names = P.plot_toy_paths(f, runs, tmp_path, critical_points=crit, grid=41)
    fig = _saved(figs, names[0], tmp_path)
    ax = fig.axes[0]  # the other axes is the colour bar
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "f(x, y)"
    lines = _lines(ax)
    # one line per optimiser, through its points; the start ringed; the exact minimum starred
    assert list(lines) == ["gd", "momentum", "adam", "start", "minimum (exact Hessian)"]
    for o, r in runs.items():
        np.testing.assert_array_equal(_xy(lines[o]), r.points)
    np.testing.assert_array_equal(_xy(lines["start"]), runs["gd"].points[:1])
    np.testing.assert_array_equal(_xy(lines["minimum (exact Hessian)"]), [crit[0].point])
    styles = {(mcolors.to_hex(lines[o].get_color()), str(lines[o].get_linestyle()), lines[o].get_marker())
              for o in runs}
    assert len(styles) == 3  # told apart by colour, line style and marker
    assert (ax.get_xlim(), ax.get_ylim()) == f.bounds
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x", "y") and f.name in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(lines)
    # the contours span the function on the plotted window (up to the 98th percentile clip)
    levels = _contour_levels(fig)
    xs, ys, Z = f.grid(41)
    assert levels[0] <= Z.min() + 1e-9 and np.percentile(Z, 98) * 0.95 <= levels[-1] <= Z.max()

    xs, ys, Z = f.grid(21)
    out = P.animate_paths(xs, ys, Z, {o: r.points for o, r in runs.items()}, tmp_path / "p.gif", "test", frames=3)
    if not P.have_pillow():
        assert out is None
        return
    from PIL import Image, ImageChops

    assert out is not None
    with Image.open(tmp_path / "p.gif") as gif:
        assert gif.n_frames == 3
        frames = []
        for i in range(3):
            gif.seek(i)
            frames.append(gif.convert("RGB"))
    # the paths grow: every frame differs from the one before
    assert all(ImageChops.difference(a, b).getbbox() for a, b in zip(frames, frames[1:]))


def test_gif_is_skipped_without_pillow(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "have_pillow", lambda: False)
    xs = ys = np.linspace(-1, 1, 5)
    out = P.animate_paths(xs, ys, np.zeros((5, 5)), {"a": np.zeros((3, 2))}, tmp_path / "x.gif", "t")
    assert out is None and not (tmp_path / "x.gif").exists()


def test_plane_paths_and_fidelity_figures(tmp_path):
    xs, ys = np.linspace(-1, 1, 9), np.linspace(-2, 2, 11)
    X, Y = np.meshgrid(xs, ys)
    surf = Surface.plane(xs, ys, X**2 + Y**2, np.full_like(X, np.nan))
    paths = {"sgd": np.stack([np.linspace(-0.8, 0, 6), np.linspace(0.5, 0, 6)], 1),
             "adam": np.stack([np.linspace(0.9, 0.1, 7), np.linspace(-1.5, -0.1, 7)], 1)}
    title = "a title that is long " * 8
    with captured_figures() as figs:
        P.plot_plane_paths(surf, paths, tmp_path, "plane", title)
    fig = _saved(figs, "plane", tmp_path)
    ax = fig.axes[0]
    lines = _lines(ax)
    assert list(lines) == ["sgd", "adam", "origin"]
    for label, c in paths.items():
        np.testing.assert_array_equal(_xy(lines[label]), c)
    np.testing.assert_array_equal(_xy(lines["origin"]), [[0, 0]])
    assert ax.get_xlim() == (-1, 1) and ax.get_ylim() == (-2, 2)
    assert ax.get_xlabel().startswith("coordinate along direction 1") and "\n" in ax.get_title()
    levels = _contour_levels(fig)
    assert levels[0] <= 0 and 0.95 * np.percentile(X**2 + Y**2, 98) <= levels[-1] <= 5

    steps = np.arange(6)
    f = {"coords": paths["sgd"], "true_loss": np.linspace(1, 0, 6), "surface_loss": np.linspace(1.1, 0, 6),
         "rel_distance": np.linspace(0.2, 0, 6)}
    g = {**f, "true_loss": np.linspace(2, 1, 6), "rel_distance": np.linspace(0.05, 0.3, 6)}
    with captured_figures() as figs:
        P.plot_fidelity({"sgd": (steps, f), "adam": (steps, g)}, tmp_path, "fid", "test", near=0.1)
    fig = _saved(figs, "fid", tmp_path)
    left, right = fig.axes
    lines = _lines(left)
    assert list(lines) == ["sgd: true L(θ_t)", "sgd: contour under the point", "adam: true L(θ_t)",
                           "adam: contour under the point"]
    for label, d in (("sgd", f), ("adam", g)):
        np.testing.assert_array_equal(lines[f"{label}: true L(θ_t)"].get_ydata(), d["true_loss"])
        np.testing.assert_array_equal(lines[f"{label}: contour under the point"].get_ydata(), d["surface_loss"])
        assert lines[f"{label}: contour under the point"].get_linestyle() == "--"
        np.testing.assert_array_equal(lines[f"{label}: true L(θ_t)"].get_xdata(), steps)
    # right: one scatter per path, |true − surface| against the distance, on a log scale
    scatters = [c for c in right.collections if c.get_label() in ("sgd", "adam")]
    assert [c.get_label() for c in scatters] == ["sgd", "adam"]
    for c, d in zip(scatters, (f, g)):
        want = np.column_stack([d["rel_distance"], np.maximum(np.abs(d["true_loss"] - d["surface_loss"]), 1e-8)])
        np.testing.assert_allclose(c.get_offsets(), want)
    assert right.get_yscale() == "log" and left.get_xlabel() == "step" and left.get_ylabel() == "loss"
    (near,) = [ln for ln in right.get_lines() if ln.get_label().startswith("'near'")]
    assert list(near.get_xdata()) == [0.1, 0.1]


def test_every_path_gets_its_own_style(tmp_path):
    """Each of 9 paths (there are 10 styles: the optimisers study draws 8) gets a style of its own."""
    n = 9
    xs = ys = np.linspace(-1, 1, 5)
    surf = Surface.plane(xs, ys, np.add.outer(ys, xs) ** 2, np.zeros((5, 5)))
    paths = {f"p{i}": np.array([[0.1 * i - 0.5, 0.0], [0.0, 0.1 * i - 0.5]]) for i in range(n)}
    with captured_figures() as figs:
        P.plot_plane_paths(surf, paths, tmp_path, "many", "t")
    lines = _lines(_saved(figs, "many", tmp_path).axes[0])
    assert list(lines) == [*paths, "origin"]
    got = {(mcolors.to_hex(lines[p].get_color()), str(lines[p].get_linestyle()), lines[p].get_marker()) for p in paths}
    assert len(got) == n
