"""Trajectory figures: toy paths, plane paths and the optional GIF."""

import numpy as np

from lossprobe.trajectories import toy
from lossprobe.figures import trajectories as P
from lossprobe.trajectories.trajectory import PlaneSurface


def test_toy_paths_figure_and_gif(tmp_path):
    f = toy.get_toy("quadratic")
    runs = {o: toy.run_optimizer(f, o, steps=20) for o in ("gd", "momentum", "adam")}
    names = P.plot_toy_paths(f, runs, tmp_path, critical_points=toy.find_critical_points(f, n_starts=3), grid=41)
    assert (tmp_path / f"{names[0]}.png").is_file() and (tmp_path / f"{names[0]}.svg").is_file()
    xs, ys, Z = f.grid(21)
    out = P.animate_paths(xs, ys, Z, {o: r.points for o, r in runs.items()}, tmp_path / "p.gif", "test", frames=3)
    if P.have_pillow():
        assert out is not None and (tmp_path / "p.gif").stat().st_size > 0
    else:
        assert out is None


def test_gif_is_skipped_without_pillow(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "have_pillow", lambda: False)
    xs = ys = np.linspace(-1, 1, 5)
    out = P.animate_paths(xs, ys, np.zeros((5, 5)), {"a": np.zeros((3, 2))}, tmp_path / "x.gif", "t")
    assert out is None and not (tmp_path / "x.gif").exists()


def test_plane_paths_and_fidelity_figures(tmp_path):
    xs = ys = np.linspace(-1, 1, 9)
    X, Y = np.meshgrid(xs, ys)
    surf = PlaneSurface(xs, ys, X**2 + Y**2, np.full_like(X, np.nan))
    c = np.stack([np.linspace(-0.8, 0, 6), np.linspace(0.5, 0, 6)], 1)
    P.plot_plane_paths(surf, {"sgd": c}, tmp_path, "plane", "a title that is long " * 8)
    f = {"coords": c, "true_loss": np.linspace(1, 0, 6), "surface_loss": np.linspace(1.1, 0, 6),
         "rel_distance": np.linspace(0.2, 0, 6)}
    P.plot_fidelity({"sgd": (np.arange(6), f)}, tmp_path, "fid", "test")
    assert (tmp_path / "plane.png").is_file() and (tmp_path / "fid.png").is_file()
