"""The surfaces stage of the two-seed study: what the loss looks like around each solution.

* around A, around B: 2-D surfaces along two filter-normalised random directions (Li et
  al. 2018, seed 0, span −1…1), so the two minima's width can be compared by eye;
* the plane through A, B and A's initialisation (the two runs have different initial
  weights, so there is no shared init; A's init is rebuilt from its seed): origin A,
  d1 = B − A, d2 = the part of init_A − A orthogonal to d1. A sits at (0, 0), B at (1, 0),
  init_A at (x, 1); the straight-line interpolation is the row d2 = 0.

All three use a seeded subset of the test split (`surface_subset` images) and are stored
in resumable chunk directories under surfaces/ ('surfaces' in status.json when done).
"""

from __future__ import annotations

import time

import numpy as np

from lossprobe.core import directions as D
from lossprobe.core.objective import Objective
from lossprobe.figures.surfaces import plot_filled_contour, write_html
from lossprobe.landscape import surfaces as S
from lossprobe.models import build

# Each grid point is a few small matrix products: one thread avoids OpenMP barrier waits,
# which on a shared 2-core machine made this stage 10× slower with two (measured: 18 s vs 1.5 s).
THREADS = 1

CAPTIONS = {
    "surface_A": "Loss around solution A along two filter-normalised random directions (contours labelled; "
                 "the centre is the solution).",
    "surface_B": "Loss around solution B along two filter-normalised random directions, same construction as for A.",
    "surface_plane": "Loss (log10 colour scale) on the plane through solution A, solution B and A's initialisation "
                     "(d1 = B − A, d2 = the part of init − A orthogonal to d1); both solutions are marked.",
}


FILES = ("surfaces/timing.json",)
KEYS = ("A", "B", "plane")


def _subset(ctx):
    return ctx.inputs["test"].subset(ctx.cfg.surface_subset, 4)


def compute(ctx, models) -> dict:
    """Compute the three surfaces around / through `models` (A, B) into surfaces/; returns `load(ctx)`."""
    t0 = time.perf_counter()
    _compute(ctx.rd.subdir("surfaces"), ctx.cfg, models, _subset(ctx), ctx.cfg.surface_steps, ctx.progress)
    ctx.rd.save_json("surfaces/timing.json", {"seconds": time.perf_counter() - t0})
    return load(ctx)


def load(ctx) -> dict:
    """{'A', 'B', 'plane': lossprobe.surface.Surface, 'seconds': s} as saved."""
    base = ctx.rd / "surfaces"
    return {**{k: S.load(base / k) for k in KEYS}, "seconds": ctx.rd.load_json("surfaces/timing.json")["seconds"]}


def summary_and_figures(ctx, saved: dict) -> dict:
    """The surfaces' numbers for summary.json and their figures; {'summary': {...}, 'figures': [names]}."""
    rd, cfg = ctx.rd, ctx.cfg
    steps = cfg.surface_steps
    sub = _subset(ctx)
    a, b = cfg.seeds
    res = {k: saved[k] for k in KEYS}
    seconds = saved["seconds"]
    title = f"Fashion-MNIST test ({len(sub)} images), {cfg.model}"
    figs = []
    for k, seed in (("A", a), ("B", b)):
        figs += plot_filled_contour(res[k], rd.figures, name=f"surface_{k}", marks=[(0.0, 0.0, f"solution {k} (seed {seed})")],
                                    title_data=title)
    res["plane"].meta["axis_labels"] = ["α1: along θ_B − θ_A (A at 0, B at 1)",
                                        "α2: along the part of init_A − θ_A orthogonal to θ_B − θ_A"]
    pts = res["plane"].meta["directions"][0]["points"]
    marks = [(0.0, 0.0, f"A (seed {a})"), (1.0, 0.0, f"B (seed {b})"), (*pts["theta2"], f"init of A (seed {a})")]
    # log scale: the plane spans losses from the solutions (~0.3) to far-off points (tens), and
    # the barrier between A and B is invisible on a linear colour scale
    figs += plot_filled_contour(res["plane"], rd.figures, name="surface_plane", marks=marks, title_data=title, log=True)
    write_html(res["plane"], rd / "surfaces" / "plane.html", title=f"Loss on the plane through A, B and init A; {title}",
               marks=marks)
    summary = {"n_samples": len(sub), "grid_shape": [steps, steps], "seconds": seconds,
               "plane_points": {"A": [0.0, 0.0], "B": [1.0, 0.0], "init_A": pts["theta2"]}}
    for k, r in res.items():
        s = r.summary()
        summary[k] = {key: s[key] for key in ("center_loss", "center_accuracy", "min_loss", "max_loss", "grid_shape")}
        summary[k]["spans"] = r.meta["spans"]
    p = res["plane"]
    jb = int(np.flatnonzero(p.coords[0] == 1.0)[0]) if (p.coords[0] == 1.0).any() else None
    i0 = p.center_index()
    if jb is not None and i0 is not None:
        summary["plane"]["loss_at_B"] = float(p.loss[jb, i0[1]])
    for k in ("A", "B"):  # how much the loss rises half-way out along the random directions: a width proxy
        r = res[k]
        ring = _ring_mean(r, 0.5)
        summary[k]["mean_rise_at_radius_0.5"] = ring - r.center_loss if ring is not None else None
    return {"summary": summary, "figures": figs}


def _ring_mean(r, radius: float):
    X, Y = np.meshgrid(r.coords[0], r.coords[1], indexing="ij")
    rr = np.hypot(X, Y)
    sel = np.abs(rr - radius) <= (r.coords[0][1] - r.coords[0][0]) * 0.75 if len(r.coords[0]) > 1 else None
    if sel is None or not sel.any():
        return None
    v = r.loss[sel]
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None


def _compute(base, cfg, models, sub, steps: int, progress: bool) -> None:
    for k, model in zip(("A", "B"), models):
        obj = Objective(model, sub)
        d1, d2 = D.random_plane(model, seed=0, norm="filter")
        if progress:
            print(f"surface around solution {k}: {steps}×{steps} points on {len(sub)} test images")
        S.surface(obj, None, (d1, d2), span=(-1, 1), steps=steps, out=base / k, progress=progress,
                  threads=THREADS)
    init_a = build(cfg.model, seed=cfg.seeds[0]).eval()
    obj = Objective(models[0], sub)
    d1, d2 = D.plane_through(obj.space.flatten(models[0]), obj.space.flatten(models[1]), obj.space.flatten(init_a))
    x2 = d1.meta["points"]["theta2"][0]
    span1 = (min(-0.5, x2 - 0.25), max(1.5, x2 + 0.25))
    if progress:
        print(f"surface on the plane through A, B and init A: {steps}×{steps} points")
    S.surface(obj, None, (d1, d2), span=(span1, (-0.5, 1.5)), steps=steps, out=base / "plane", progress=progress,
              threads=THREADS)


def report_lines(s: dict) -> list[str]:
    """Markdown lines for the study report (a table of the surfaces' numbers)."""
    v = s.get("surfaces")
    if not v:
        return []
    lines = ["## Loss surfaces", "",
             f"On {v['n_samples']} test images, {v['grid_shape'][0]}×{v['grid_shape'][1]} grids "
             f"({v['seconds']:.0f} s). Around each solution: two filter-normalised random directions, span −1…1.", "",
             "| surface | loss at centre | min | max | mean rise at radius 0.5 |", "|---|---|---|---|---|"]
    for k, name in (("A", "around A"), ("B", "around B"), ("plane", "plane A, B, init A")):
        r = v[k]
        rise = r.get("mean_rise_at_radius_0.5")
        lines.append(f"| {name} | {r['center_loss']:.4f} | {r['min_loss']:.4f} | {r['max_loss']:.4f} | "
                     + (f"{rise:.4f}" if rise is not None else "—") + " |")
    lines += ["", "Interactive 3-D view of the plane: [surfaces/plane.html](surfaces/plane.html).", ""]
    return lines
