"""`lossprobe surface CKPT` and `lossprobe slice CKPT`: the loss around a checkpoint."""

from __future__ import annotations

import argparse
import time

from .common import add_model_data, add_out, positive_int

NORM_CHOICES = ("filter", "layer", "model", "none")


def _common(p: argparse.ArgumentParser, two_d: bool) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint at the centre (.safetensors or a torch state dict)")
    add_model_data(p)
    p.add_argument("--norm", choices=NORM_CHOICES, default="filter",
                   help="normalisation of the random direction(s): filter (Li et al. 2018: each output filter "
                   "rescaled to the norm of the checkpoint's filter), layer, model, or none (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random direction(s) (default: %(default)s)")
    p.add_argument("--include-bias", action="store_true",
                   help="move biases and normalisation parameters too (default: they stay fixed, as Li et al.)")
    p.add_argument("--include-buffers", action="store_true",
                   help="also move BatchNorm running statistics along the direction(s)")
    if two_d:
        p.add_argument("--steps", type=positive_int, nargs="+", default=[51], metavar="N",
                       help="grid points per axis: one N for an N×N grid or two for N1×N2 "
                       "(the centre is always a grid point; default: 51)")
        p.add_argument("--span", type=float, nargs=2, default=[-1.0, 1.0], metavar=("LO", "HI"),
                       help="coordinate range along d1, in units of the direction (default: -1 1)")
        p.add_argument("--span2", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                       help="coordinate range along d2 (default: the same as --span)")
        p.add_argument("--orthogonal", action="store_true",
                       help="make d2 orthogonal to d1 (Gram–Schmidt; default: two independent draws)")
        p.add_argument("--towards", metavar="CKPT_B",
                       help="use d1 = CKPT_B − CKPT (so CKPT_B is at (1, 0)) and a random d2")
        p.add_argument("--vtp", action="store_true", help="also write surface.vtp (VTK PolyData) for ParaView")
        p.add_argument("--no-html", action="store_true", help="do not write the interactive surface.html")
    else:
        p.add_argument("--steps", type=positive_int, default=51, metavar="N",
                       help="points along the line (the centre is always one; default: %(default)s)")
        p.add_argument("--span", type=float, nargs=2, default=[-1.0, 1.0], metavar=("LO", "HI"),
                       help="coordinate range, in units of the direction (default: -1 1)")
        p.add_argument("--towards", metavar="CKPT_B",
                       help="slice along CKPT_B − CKPT instead of a random direction (CKPT_B at 1)")
    p.add_argument("--log", action="store_true", help="plot log10 of the loss")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="run chunks in this process, or as Ray tasks (default: %(default)s)")
    p.add_argument("--address", metavar="ADDR",
                   help="address of an existing Ray cluster, e.g. ray://host:10001 (default: start a local one)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="T",
                   help="torch threads while evaluating (default: torch's setting); on a shared machine "
                   "1 is often fastest, as each point is a few small matrix products")
    p.add_argument("--chunk-size", type=positive_int, default=None, metavar="K",
                   help="grid points per stored chunk (default: one row of the grid)")
    add_out(p)


def register(sub) -> None:
    p = sub.add_parser(
        "surface",
        help="2-D loss surface around a checkpoint along two (filter-normalised) random directions",
        description="Evaluate loss and accuracy at θ + a·d1 + b·d2 on a grid (Li et al. 2018). Prints a cost "
        "estimate, shows a progress bar with ETA, stores the grid in chunks as they finish (rerun the same "
        "command to resume after an interruption), then writes surface.npz/json, summary.json, figures "
        "(contour, filled contour, heat map, 3-D), surface.html (interactive, offline) and report.md.",
    )
    _common(p, two_d=True)
    p.set_defaults(func=lambda a: run(a, two_d=True))
    q = sub.add_parser(
        "slice",
        help="1-D loss slice around a checkpoint along a (filter-normalised) random direction",
        description="Evaluate loss and accuracy at θ + a·d for a over --span (Li et al. 2018), resumable "
        "like `lossprobe surface`; writes surface.npz/json, summary.json, figures/slice.png and report.md.",
    )
    _common(q, two_d=False)
    q.set_defaults(func=lambda a: run(a, two_d=False))


def run(args, two_d: bool) -> int:
    import numpy as np

    from .. import directions as D
    from ..data import load_split
    from ..errors import UserError
    from ..objective import Objective
    from ..report import surface_plots as SP
    from ..store import RunDir
    from ..surface import grid_axis, slice as slice_fn, surface as surface_fn
    from .common import check_fit, criterion_from_args, load_model

    norm = None if args.norm == "none" else args.norm
    if two_d:
        if len(args.steps) > 2:
            raise UserError(f"--steps takes one or two numbers, got {len(args.steps)}")
        steps = tuple(args.steps) * (2 if len(args.steps) == 1 else 1)
        spans = (tuple(args.span), tuple(args.span2 or args.span))
    else:
        steps, spans = (args.steps,), (tuple(args.span),)
    axes = [grid_axis(lo, hi, n) for (lo, hi), n in zip(spans, steps)]  # checks spans before any work
    model = load_model(args.model, args.checkpoint)
    split = load_split(args.data, args.subset, args.subset_seed)
    crit = criterion_from_args(args, model)
    check_fit(model, split, crit, args)
    # how the grid is computed (threads, backend) is not what is computed: a run started
    # locally may be resumed on Ray and vice versa
    cfg = {k: v for k, v in vars(args).items() if k not in ("func", "force", "threads", "backend", "address")}
    rd = RunDir(args.out, "surface" if two_d else "slice", cfg, args.force,
                seeds={"direction": args.seed, "subset": args.subset_seed})
    obj = Objective(model, split, loss=crit, batch_size=args.batch_size, include_buffers=args.include_buffers)
    ignore = () if args.include_bias else ("bias", "norm")
    m = 2 if two_d else 1
    if args.towards:
        other = load_model(args.model, args.towards)
        d1 = D.between(obj.space.flatten(model), obj.space.flatten(other))
        dirs = [d1]
        if two_d:
            dirs.append(D.random_plane(obj.space, seed=args.seed, norm=norm, ignore=ignore, reference=obj.theta0)[1])
    elif two_d:
        dirs = list(D.random_plane(obj.space, seed=args.seed, norm=norm, ignore=ignore, reference=obj.theta0,
                                   orthogonal=args.orthogonal))
    else:
        dirs = [D.random_direction(obj.space, seed=args.seed, norm=norm, ignore=ignore, reference=obj.theta0)]

    # cost estimate: time a few points (also warms up), then scale by the grid
    n_pts = int(np.prod([len(a) for a in axes]))
    probe = np.zeros((min(4, n_pts), m))
    from ..threads import torch_threads

    dmat = np.stack([d.vector.numpy() for d in dirs])
    with torch_threads(args.threads):
        t0 = time.perf_counter()
        obj.evaluate(probe, directions=dmat)
        per_pt = (time.perf_counter() - t0) / len(probe)
        how = obj.hoisting(dmat)
    shape = "×".join(str(len(a)) for a in axes)
    hoisted = "plain forward per point" if how is None else (
        f"computed once per batch: {', '.join(how['hoisted_modules']) or 'nothing before'}"
        + (f" + first moving layer {how['first_moving_layer']} combined" if how["linear_combination"] else ""))
    print(f"{shape} grid = {n_pts} points on {split.n_samples} samples of {args.data} "
          f"({obj.n_batches} batch(es) of ≤{args.batch_size}); {hoisted}; ≈{per_pt * 1e3:.1f} ms/point measured → "
          f"estimated {per_pt * n_pts:.0f} s (progress bar below; rerun the same command to resume)")

    fn = surface_fn if two_d else slice_fn
    res = fn(obj, None, dirs if two_d else dirs[0], span=spans if two_d else spans[0],
             steps=steps if two_d else steps[0], out=rd.subdir("grid"), backend=args.backend,
             address=args.address, progress=True, chunk_size=args.chunk_size, threads=args.threads)
    res.save(rd.path)
    title = f"{args.data}" + (f" ({split.n_samples}-sample subset, seed {args.subset_seed})" if args.subset else "")
    names = SP.plot_all(res, rd.figures, title_data=title, log=args.log)
    extra = []
    if two_d and not args.no_html:
        SP.write_html(res, rd / "surface.html", title=f"Loss surface around {args.checkpoint} on {title}", log=args.log)
        extra.append("surface.html")
    if two_d and args.vtp:
        SP.write_vtp(res, rd / "surface.vtp", log=args.log)
        extra.append("surface.vtp")
    s = res.summary()
    prev = rd.load_json("summary.json") if (rd / "summary.json").is_file() else {}
    # seconds of grid evaluation (this run's part when resumed; unchanged when nothing was left)
    now = res.meta.get("points_computed_now", 0)
    seconds = res.meta["seconds"] + (prev.get("seconds", 0.0) if res.meta.get("resumed_chunks") else 0.0) \
        if now else prev.get("seconds", 0.0)
    s.update(seconds=seconds,
             points_per_second=res.meta["points_per_second"] if now else prev.get("points_per_second"),
             resumed_chunks=res.meta.get("resumed_chunks", 0), data=args.data, n_samples=split.n_samples,
             model=args.model, checkpoint=args.checkpoint, norm=args.norm, seed=args.seed, backend=args.backend,
             spans=[list(sp) for sp in spans], figures=names + extra)
    rd.save_json("summary.json", s)
    kind = "surface" if two_d else "slice"
    lines = [f"# Loss {kind} around `{args.checkpoint}`", "",
             f"Model `{args.model}`, data `{args.data}` ({split.n_samples} samples), {args.norm}-normalised random "
             f"direction(s) with seed {args.seed}; grid {shape} over {spans}.", "",
             f"Loss at the centre: **{_f(s['center_loss'])}**; range {_f(s['min_loss'])} … {_f(s['max_loss'])}; "
             f"{s['non_finite']} non-finite point(s). Computed in {seconds:.1f} s.", ""]
    lines += [f"![{n}](figures/{n}.png)\n" for n in names]
    if extra:
        lines += ["Also: " + ", ".join(f"[{e}]({e})" for e in extra), ""]
    (rd / "report.md").write_text("\n".join(lines))
    rd.complete()
    print(f"centre loss {_f(s['center_loss'])}, min {_f(s['min_loss'])}, max {_f(s['max_loss'])} over {n_pts} points "
          f"in {seconds:.1f} s; wrote {rd.path}")
    return 0


def _f(v) -> str:
    """A loss for text: 4 decimals, or 'n/a' when there is none (all points NaN/inf)."""
    import math

    return f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else "n/a"
