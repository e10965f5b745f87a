"""`lossprobe surface CKPT` and `lossprobe slice CKPT`: the loss around a checkpoint."""

from __future__ import annotations

import argparse
import math

from lossprobe.cli.common import (
    add_memory,
    add_model_data,
    add_out,
    add_ray_timeout,
    inputs_of,
    load_setup,
    positive_int,
    seed_int,
)
from lossprobe.errors import UserError
from lossprobe.figures import surfaces as SP
from lossprobe.landscape import directions as D
from lossprobe.landscape.surfaces import GridRun, check_fits, compute, grid_axis, parse_span, plan
from lossprobe.results.store import RunDir, readable
from lossprobe.runtime import cluster as raycluster
from lossprobe.runtime.threads import torch_threads

NORM_CHOICES = ("filter", "layer", "model", "unit", "none")
DIRECTIONS_HELP = (
    "how each axis is chosen, one SPEC per axis (a surface given one SPEC takes its second axis from the same "
    "kind where it has one, else random): random (seeded Gaussian, --norm filter by default); hessian, ggn, "
    "fisher, efisher, kfac (the top eigenvectors of that curvature on --data, unit length by default); gradient "
    "(the loss gradient, unit length by default); pca:RUN_DIR (the top principal directions of a recorded "
    "trajectory: a .npy [T, P], a directory holding one trajectory*.npy, or a directory of checkpoints; unit "
    "length by default); towards:CKPT_B (CKPT_B − CKPT, so CKPT_B is at 1). Default: random")
SPAN_HELP = ("coordinate range along d1, in units of the direction: LO HI, or auto[:FACTOR] for the largest "
             "symmetric span at which the loss on the axis stays under FACTOR × the centre loss (default factor "
             "4), found by a 1-D search before the grid (default: -1 1)")


def _common(p: argparse.ArgumentParser, two_d: bool) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint at the centre (.safetensors or a torch state dict)")
    add_model_data(p)
    p.add_argument("--directions", nargs="+", default=None, metavar="SPEC", help=DIRECTIONS_HELP)
    p.add_argument("--norm", choices=NORM_CHOICES, default=None,
                   help="normalisation of the direction(s): filter (Li et al. 2018: each output filter rescaled to "
                   "the norm of the checkpoint's filter), layer, model (‖d‖ = ‖θ‖), unit (‖d‖ = 1) or none. Random "
                   "directions take any (default filter); eigenvector, gradient and PCA directions are scaled as a "
                   "whole so that their shape is kept: unit (default), model or none")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the random direction(s) and of the Lanczos start "
                   "vector (default: %(default)s)")
    p.add_argument("--include-bias", action="store_true",
                   help="move biases and normalisation parameters too (default: they stay fixed, as Li et al.)")
    p.add_argument("--include-buffers", action="store_true",
                   help="also move BatchNorm running statistics along the direction(s)")
    if two_d:
        p.add_argument("--steps", type=positive_int, nargs="+", default=[51], metavar="N",
                       help="grid points per axis: one N for an N×N grid or two for N1×N2 "
                       "(the centre is always a grid point; default: 51)")
        p.add_argument("--span", nargs="+", default=["-1", "1"], metavar="LO HI|auto[:F]", help=SPAN_HELP)
        p.add_argument("--span2", nargs="+", default=None, metavar="LO HI|auto[:F]",
                       help="coordinate range along d2, as --span (default: the same as --span)")
        p.add_argument("--orthogonal", action="store_true",
                       help="make d2 orthogonal to d1 (Gram–Schmidt; default: two independent draws)")
        p.add_argument("--towards", metavar="CKPT_B",
                       help="deprecated alias of --directions towards:CKPT_B (d1 = CKPT_B − CKPT, a random d2)")
        p.add_argument("--vtp", action="store_true", help="also write surface.vtp (VTK PolyData) for ParaView")
        p.add_argument("--no-html", action="store_true", help="do not write the interactive surface.html")
    else:
        p.add_argument("--steps", type=positive_int, default=51, metavar="N",
                       help="points along the line (the centre is always one; default: %(default)s)")
        p.add_argument("--span", nargs="+", default=["-1", "1"], metavar="LO HI|auto[:F]",
                       help=SPAN_HELP.replace("along d1", "along the direction"))
        p.add_argument("--towards", metavar="CKPT_B",
                       help="deprecated alias of --directions towards:CKPT_B (slice along CKPT_B − CKPT, CKPT_B at 1)")
    p.add_argument("--log", action="store_true", help="plot log10 of the loss")
    if two_d:
        p.add_argument("--no-topology", action="store_true",
                       help="skip the basins/saddles count (0-dimensional persistence of the sublevel sets)")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="run chunks in this process, or as Ray tasks (default: %(default)s)")
    p.add_argument("--address", metavar="ADDR",
                   help="address of an existing Ray cluster, e.g. ray://host:10001 (with --backend ray; default: "
                   "start a local one)")
    add_ray_timeout(p)
    add_memory(p)
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
    m = 2 if two_d else 1
    if args.address and args.backend != "ray":
        raise UserError("--address needs --backend ray")
    if two_d:
        if len(args.steps) > 2:
            raise UserError(f"--steps takes one or two numbers, got {len(args.steps)}")
        steps = tuple(args.steps) * (2 if len(args.steps) == 1 else 1)
        if min(steps) < 2:
            raise UserError(f"--steps {' '.join(map(str, args.steps))}: a surface needs at least 2 points per axis; "
                            "for one axis use 'lossprobe slice'")
        span = [_span_arg(args.span, "--span"), _span_arg(args.span2 or args.span, "--span2")]
    else:
        steps, span = (args.steps,), [_span_arg(args.span, "--span")]
    for sp, n in zip(span, steps):
        if not isinstance(sp, str):
            grid_axis(sp[0], sp[1], n)  # a given span is checked before any work
    names = _direction_names(args, m)
    setup = load_setup(args, args.checkpoint, include_buffers=args.include_buffers)
    check_fits(setup.objective, names, m, memory=args.memory)
    if args.backend == "ray":  # join (or start) Ray now: an unreachable --address fails before any output
        raycluster.init(args.address, args.ray_timeout, **({} if args.address else {"include_dashboard": False}),
                        ignore_reinit_error=True, logging_level="ERROR", log_to_driver=False)
    # how the grid is computed (threads, backend) is not what is computed: a run started
    # locally may be resumed on Ray and vice versa
    cfg = {k: v for k, v in vars(args).items() if k not in ("func", "force", "threads", "backend", "address",
                                                           "ray_timeout", "memory")}
    rd = RunDir(args.out, "surface" if two_d else "slice", cfg, args.force,
                seeds={"direction": args.seed, "subset": args.subset_seed},
                inputs=inputs_of(args, **D.input_files(names, m)))
    obj = setup.objective
    with torch_threads(args.threads):
        p = plan(obj, names, span if two_d else span[0], steps, m=m, seed=args.seed, norm=args.norm or "auto",
                 include_bias=args.include_bias, orthogonal=getattr(args, "orthogonal", False), out=rd.path,
                 progress=True)
        for line in p.describe():
            print(line)
        est = p.estimate(obj)
    shape = "×".join(str(n) for n in p.steps)
    how = est["hoisting"]
    hoisted = "plain forward per point" if how is None else (
        f"computed once per batch: {', '.join(how['hoisted_modules']) or 'nothing before'}"
        + (f" + first moving layer {how['first_moving_layer']} combined" if how["linear_combination"] else ""))
    print(f"{shape} grid = {p.points} points on {obj.n_samples} samples of {args.data} "
          f"({obj.n_batches} batch(es) of ≤{args.batch_size}); {hoisted}; ≈{est['seconds_per_point'] * 1e3:.1f} ms/point "
          f"measured → estimated {est['seconds']:.0f} s (progress bar below; rerun the same command to resume)")
    res = compute(obj, p, out=rd.subdir("grid"), run=GridRun(args.backend, args.address, args.ray_timeout,
                                                            chunk_size=args.chunk_size, threads=args.threads,
                                                            memory=args.memory))
    if two_d and not args.no_topology:
        topo = res.topology()
        print(f"topology: {topo['basins']} basin(s), {topo['saddles']} saddle(s) between them "
              f"(sublevel-set persistence above {topo['tolerance']:.3g})")
    res.save(rd.path)
    title = f"{args.data}" + (f" ({obj.n_samples}-sample subset, seed {args.subset_seed})" if args.subset else "")
    marks = SP.topology_marks(res) if "topology" in res.meta else None
    names = SP.plot_all(res, rd.figures, title_data=title, log=args.log, marks=marks)
    extra = []
    if two_d and not args.no_html:
        SP.write_html(res, rd / "surface.html", title=f"Loss surface around {args.checkpoint} on {title}", log=args.log)
        extra.append("surface.html")
    if two_d and args.vtp:
        SP.write_vtp(res, rd / "surface.vtp", log=args.log)
        extra.append("surface.vtp")
    s = res.summary()
    prev = rd.load_json("summary.json") if readable(rd / "summary.json") else {}  # derived: damaged means none
    # seconds of grid evaluation (this run's part when resumed; unchanged when nothing was left)
    now = res.meta.get("points_computed_now", 0)
    seconds = res.meta["seconds"] + (prev.get("seconds", 0.0) if res.meta.get("resumed_chunks") else 0.0) \
        if now else prev.get("seconds", 0.0)
    s.update(seconds=seconds,
             points_per_second=res.meta["points_per_second"] if now else prev.get("points_per_second"),
             resumed_chunks=res.meta.get("resumed_chunks", 0), data=args.data, n_samples=obj.n_samples,
             model=args.model, checkpoint=args.checkpoint, norm=args.norm, seed=args.seed, backend=args.backend,
             spans=[list(sp) for sp in p.spans], directions=p.metas(), auto_span=p.auto_span, figures=names + extra)
    if "topology" in res.meta:
        s["topology"] = res.meta["topology"]
    rd.save_json("summary.json", s)
    res.meta["seconds"] = seconds
    lines = [f"# Loss {'surface' if two_d else 'slice'} around `{args.checkpoint}`", "",
             f"Model `{args.model}`, data `{args.data}`.", "", res.report(), ""]
    lines += [f"![{n}](figures/{n}.png)\n" for n in names]
    if extra:
        lines += ["Also: " + ", ".join(f"[{e}]({e})" for e in extra), ""]
    rd.write_text("report.md", "\n".join(lines))
    rd.complete()
    print(f"centre loss {_f(s['center_loss'])}, min {_f(s['min_loss'])}, max {_f(s['max_loss'])} over {p.points} "
          f"points in {seconds:.1f} s; wrote {rd.path}")
    return 0


def _span_arg(values, option: str):
    """--span values as the library takes a span: 'auto:FACTOR' or (LO, HI)."""
    if len(values) == 1:
        got = parse_span(values[0])
        if got is None:
            raise UserError(f"{option} takes LO HI or auto[:FACTOR], got '{values[0]}'")
        return f"auto:{got[1]}"
    if len(values) != 2:
        raise UserError(f"{option} takes LO HI or auto[:FACTOR], got {len(values)} values")
    try:
        lo, hi = float(values[0]), float(values[1])
    except ValueError:
        raise UserError(f"{option} takes two numbers LO HI or auto[:FACTOR], got {' '.join(values)}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise UserError(f"{option} takes finite numbers, got {' '.join(values)}")
    return lo, hi


def _direction_names(args, m: int) -> list[str]:
    """The name of each axis's direction from --directions (and the deprecated --towards),
    checked with --norm before any work."""
    given = list(args.directions or [])
    if args.towards:
        if given:
            raise UserError("--towards is an alias of --directions towards:CKPT_B: give one of them")
        given = [f"towards:{args.towards}"]
    given = given or ["random"]
    for kind, _ in D.parse(given, m, "--directions"):
        D.axis_norm(kind, args.norm or "auto", "--norm")
    return given


def _f(v) -> str:
    """A loss for text: 4 decimals, or 'n/a' when there is none (all points NaN/inf)."""
    return f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else "n/a"
