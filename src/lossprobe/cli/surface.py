"""`lossprobe surface CKPT` and `lossprobe slice CKPT`: the loss around a checkpoint."""

from __future__ import annotations

import argparse
import math
import re
import time
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from lossprobe.cli.common import (
    add_model_data,
    add_out,
    add_ray_timeout,
    check_fit,
    criterion_from_args,
    load_model,
    positive_int,
    require_finite,
    require_finite_loss,
)
from lossprobe.core.objective import Objective
from lossprobe.data import load_split
from lossprobe.errors import UserError
from lossprobe.figures import surfaces as SP
from lossprobe.landscape import directions as D
from lossprobe.landscape.surfaces import auto_span, grid_axis, parse_span
from lossprobe.landscape.surfaces import slice as slice_fn
from lossprobe.landscape.surfaces import surface as surface_fn
from lossprobe.landscape.topology import marks as topo_marks
from lossprobe.landscape.topology import persistence
from lossprobe.models import build
from lossprobe.results.atomic import save_safetensors
from lossprobe.results.store import RunDir, readable
from lossprobe.runtime import cluster as raycluster
from lossprobe.runtime.threads import torch_threads
from lossprobe.training.checkpoints import apply_state_dict, load_state_dict

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
    p.add_argument("--seed", type=int, default=0, help="seed of the random direction(s) and of the Lanczos start "
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
        span_args = [args.span, args.span2 or args.span]
    else:
        steps, span_args = (args.steps,), [args.span]
    span_specs = [_span_arg(sp, "--span" if i == 0 else "--span2") for i, sp in enumerate(span_args)]
    for sp, n in zip(span_specs, steps):
        if not isinstance(sp[0], str):
            grid_axis(sp[0], sp[1], n)  # checks a given span before any work
    specs = _direction_specs(args, m)
    model = require_finite(load_model(args.model, args.checkpoint), args.checkpoint)
    split = load_split(args.data, args.subset, args.subset_seed)
    crit = criterion_from_args(args, model)
    check_fit(model, split, crit, args)
    require_finite_loss(model, split, args.checkpoint, args.data, "", args.batch_size, crit)
    if args.backend == "ray":  # join (or start) Ray now: an unreachable --address fails before any output

        raycluster.init(args.address, args.ray_timeout, **({} if args.address else {"include_dashboard": False}),
                        ignore_reinit_error=True, logging_level="ERROR", log_to_driver=False)
    # how the grid is computed (threads, backend) is not what is computed: a run started
    # locally may be resumed on Ray and vice versa
    cfg = {k: v for k, v in vars(args).items() if k not in ("func", "force", "threads", "backend", "address",
                                                           "ray_timeout")}
    rd = RunDir(args.out, "surface" if two_d else "slice", cfg, args.force,
                seeds={"direction": args.seed, "subset": args.subset_seed})
    obj = Objective(model, split, loss=crit, batch_size=args.batch_size, include_buffers=args.include_buffers)

    with torch_threads(args.threads):
        dirs, infos = _directions(args, specs, obj, model, rd, two_d)
        spans, auto = _spans(span_specs, obj, dirs, infos, rd)
    axes = [grid_axis(lo, hi, n) for (lo, hi), n in zip(spans, steps)]
    for i, (info, (lo, hi)) in enumerate(zip(infos, spans)):
        print(f"d{i + 1}: {_describe(info)}; {_describe_curvature(info)}; span {lo:.4g} … {hi:.4g}"
              + (f" (auto: loss ≤ {auto[i]['factor']:g} × centre {auto[i]['center_loss']:.4g} up to ±{auto[i]['span']:.4g}"
                 f"{'' if auto[i]['reached'] else ', threshold not reached'})" if auto else ""))

    # cost estimate: time a few points (also warms up), then scale by the grid
    n_pts = int(np.prod([len(a) for a in axes]))
    probe = np.zeros((min(4, n_pts), m))
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
             address=args.address, progress=True, chunk_size=args.chunk_size, threads=args.threads,
             ray_timeout=args.ray_timeout)
    res.meta["axes"] = infos
    res.meta["axis_labels"] = [f"α{i + 1}: {_describe(info, short=True)}" for i, info in enumerate(infos)]
    if auto:
        res.meta["auto_span"] = auto
    topo = None
    marks = None
    if two_d and not args.no_topology:

        topo = persistence(np.where(res.mask, res.loss, np.nan))
        marks = topo_marks(topo, res.coords)
        centre = SP._centre(res)
        if centre and marks and marks[0][:2] == (0.0, 0.0):
            marks = [(0.0, 0.0, "centre = global min")] + marks[1:]
        else:
            marks = centre + marks
        print(f"topology: {topo['basins']} basin(s), {topo['saddles']} saddle(s) between them "
              f"(sublevel-set persistence above {topo['tolerance']:.3g})")
    res.save(rd.path)
    title = f"{args.data}" + (f" ({split.n_samples}-sample subset, seed {args.subset_seed})" if args.subset else "")
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
             resumed_chunks=res.meta.get("resumed_chunks", 0), data=args.data, n_samples=split.n_samples,
             model=args.model, checkpoint=args.checkpoint, norm=args.norm, seed=args.seed, backend=args.backend,
             spans=[list(sp) for sp in spans], directions=infos, auto_span=auto, figures=names + extra)
    if topo is not None:
        s["topology"] = {**topo, "pairs": topo["pairs"][:20]}
    rd.save_json("summary.json", s)
    kind = "surface" if two_d else "slice"
    lines = [f"# Loss {kind} around `{args.checkpoint}`", "",
             f"Model `{args.model}`, data `{args.data}` ({split.n_samples} samples); grid {shape}.", "",
             "| axis | direction | length ‖d‖ | span | d²L/da² at the centre | curvature dᵀHd/‖d‖² |",
             "|---|---|---|---|---|---|"]
    for i, (info, (lo, hi)) in enumerate(zip(infos, spans)):
        lines.append(f"| d{i + 1} | {_describe(info)} | {info['length']:.4g} | {lo:.4g} … {hi:.4g}"
                     f"{' (auto)' if auto else ''} | {info['second_derivative']:.4g} | {info['rayleigh']:.4g} |")
    if auto:
        lines += ["", f"Spans chosen automatically: on each axis the loss stays under {auto[0]['factor']:g} × the "
                  f"centre loss ({auto[0]['threshold']:.4g}) up to the span ({auto[0]['evaluations']} evaluations)."]
    lines += ["", f"Loss at the centre: **{_f(s['center_loss'])}**; range {_f(s['min_loss'])} … {_f(s['max_loss'])}; "
              f"{s['non_finite']} non-finite point(s). Computed in {seconds:.1f} s.", ""]
    if topo is not None:
        lines += [f"Topology (0-dimensional persistence of the sublevel sets, 4-neighbour grid): "
                  f"**{topo['basins']} basin(s)**, {topo['saddles']} saddle(s) between them, counting basins "
                  f"that persist more than {topo['tolerance']:.3g}; marked on the figures.", ""]
    lines += [f"![{n}](figures/{n}.png)\n" for n in names]
    if extra:
        lines += ["Also: " + ", ".join(f"[{e}]({e})" for e in extra), ""]
    rd.write_text("report.md", "\n".join(lines))
    rd.complete()
    print(f"centre loss {_f(s['center_loss'])}, min {_f(s['min_loss'])}, max {_f(s['max_loss'])} over {n_pts} points "
          f"in {seconds:.1f} s; wrote {rd.path}")
    return 0


def _span_arg(values, option: str):
    """--span values: ('auto', FACTOR) or (LO, HI)."""
    if len(values) == 1:
        got = parse_span(values[0])
        if got is None:
            raise UserError(f"{option} takes LO HI or auto[:FACTOR], got '{values[0]}'")
        return got
    if len(values) != 2:
        raise UserError(f"{option} takes LO HI or auto[:FACTOR], got {len(values)} values")
    try:
        lo, hi = float(values[0]), float(values[1])
    except ValueError:
        raise UserError(f"{option} takes two numbers LO HI or auto[:FACTOR], got {' '.join(values)}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise UserError(f"{option} takes finite numbers, got {' '.join(values)}")
    return lo, hi


EIGEN_KINDS = ("hessian", "ggn", "fisher", "efisher", "kfac")
KINDS = ("random", "gradient", "pca", "towards") + EIGEN_KINDS


def _direction_specs(args, m: int) -> list[tuple[str, str | None]]:
    """(kind, argument) per axis from --directions (and the deprecated --towards)."""
    given = list(args.directions or [])
    if args.towards:
        if given:
            raise UserError("--towards is an alias of --directions towards:CKPT_B: give one of them")
        given = [f"towards:{args.towards}"]
    given = given or ["random"]
    if len(given) > m:
        raise UserError(f"--directions: {len(given)} given for {m} axis/axes")
    specs = []
    for g in given:
        kind, _, arg = g.partition(":")
        if kind not in KINDS:
            raise UserError(f"--directions: unknown '{g}'; choose from random, hessian, ggn, fisher, efisher, kfac, "
                            "gradient, pca:RUN_DIR, towards:CKPT_B")
        if kind in ("pca", "towards") and not arg:
            raise UserError(f"--directions {kind} needs a path: {kind}:{'RUN_DIR' if kind == 'pca' else 'CKPT_B'}")
        if kind not in ("pca", "towards") and arg:
            raise UserError(f"--directions {kind} takes no argument, got '{g}'")
        specs.append((kind, arg or None))
    if len(specs) < m:  # the second axis of a surface: the same kind where it has a second direction
        kind, arg = specs[0]
        specs.append((kind, arg) if kind in ("random", "pca") + EIGEN_KINDS else ("random", None))
    if sum(k == "gradient" for k, _ in specs) > 1:
        raise UserError("--directions: the gradient gives one direction, not two")
    return specs


def _norm_for(kind: str, norm_arg: str | None):
    """The normalisation of an axis: --norm, or the kind's default."""
    if kind == "towards":
        return None
    if norm_arg is None:
        return "filter" if kind == "random" else "unit"
    norm = None if norm_arg == "none" else norm_arg
    if kind != "random" and norm in ("filter", "layer"):
        raise UserError(f"--norm {norm_arg} would change the shape of a {kind} direction: use unit, model or none")
    return norm


def _directions(args, specs, obj, model, rd, two_d):
    """The directions of every axis (from the run directory when it has them: resume) and what
    each is: kind, normalisation, length, eigenvalue, the Hessian's curvature along it."""

    if rd.done("directions") and (rd / "directions.safetensors").is_file():
        vecs = load_file(str(rd / "directions.safetensors"))
        infos = rd.load_json("directions.json")
        return [D.Direction(vecs[f"d{i + 1}"].to(obj.device, obj.space.dtype), info) for i, info in enumerate(infos)], infos
    ignore = () if args.include_bias else ("bias", "norm")
    dirs: list = [None] * len(specs)
    # eigenvectors: one Lanczos run per curvature for all the axes that take it
    for kind in EIGEN_KINDS:
        axes = [i for i, (k, _) in enumerate(specs) if k == kind]
        if axes:
            norm = _norm_for(kind, args.norm)
            print(f"top {len(axes)} eigenvector(s) of the {kind} on {args.data} (Lanczos) ...")
            got = D.curvature_directions(obj, k=len(axes), curvature=kind, norm=norm, seed=args.seed, progress=True)
            for i, d in zip(axes, got):
                dirs[i] = d
    axes = [i for i, (k, _) in enumerate(specs) if k == "random"]
    if axes:
        norm = _norm_for("random", args.norm)
        raw = norm if norm != "unit" else None
        plane = D.random_plane(obj.space, seed=args.seed, norm=raw, ignore=ignore, reference=obj.theta0,
                               orthogonal=getattr(args, "orthogonal", False))
        for i in axes:
            d = plane[i]
            if norm == "unit":
                d = D.Direction(D.rescale(d.vector, "unit").to(obj.space.dtype), {**d.meta, "norm": "unit"})
            dirs[i] = d
    pcas = [(i, arg) for i, (k, arg) in enumerate(specs) if k == "pca"]
    for arg in dict.fromkeys(a for _, a in pcas):
        axes = [i for i, a in pcas if a == arg]
        norm = _norm_for("pca", args.norm)
        got, evr = D.pca_directions(_trajectory(arg, obj, args.model), k=len(axes))
        for i, d in zip(axes, got):
            dirs[i] = D.Direction(D.rescale(d.vector, norm, obj.theta0).to(obj.device, obj.space.dtype),
                                  {**d.meta, "norm": norm, "source": arg})
    for i, (k, arg) in enumerate(specs):
        if k == "gradient":
            dirs[i] = D.gradient_direction(obj, norm=_norm_for("gradient", args.norm))
        elif k == "towards":
            other = require_finite(load_model(args.model, arg), arg)
            d = D.between(obj.space.flatten(model), obj.space.flatten(other))
            dirs[i] = D.Direction(d.vector, {**d.meta, "kind": "towards", "checkpoint": arg})
    for i, d in enumerate(dirs):
        if not float(d.vector.double().norm()) > 0:
            if specs[i][0] == "towards":
                raise UserError(f"towards:{specs[i][1]} holds the same weights as {args.checkpoint}: the direction "
                                "between them is zero; give a different checkpoint")
            raise UserError(f"direction d{i + 1} ({specs[i][0]}) is zero")
    along = D.curvature_along(obj, dirs)
    infos = []
    for d, a in zip(dirs, along):
        info = {**d.meta, "norm": d.meta.get("norm"), "length": a["length"], "second_derivative": a["second_derivative"],
                "rayleigh": a["rayleigh"], "curvature_operator": "hessian"}
        infos.append(info)
    save_safetensors(rd / "directions.safetensors", {f"d{i + 1}": d.vector for i, d in enumerate(dirs)})
    rd.save_json("directions.json", infos)
    rd.mark("directions")
    return [D.Direction(d.vector, info) for d, info in zip(dirs, infos)], infos


def _trajectory(path: str, obj, model_spec: str):
    """A recorded trajectory for PCA: a .npy [T, P], a directory with one trajectory*.npy, or a
    directory of checkpoints (sorted by name; each flattened in the surface's parameter layout)."""
    p = Path(path)
    if p.is_file() and p.suffix == ".npy":
        arr = np.load(p, mmap_mode="r")
    elif p.is_dir():
        npys = sorted(p.rglob("trajectory*.npy"))
        if len(npys) > 1:
            raise UserError(f"pca:{path} holds {len(npys)} trajectories ({', '.join(str(n) for n in npys[:4])}): "
                            "name one .npy file")
        if npys:
            arr = np.load(npys[0], mmap_mode="r")
        else:
            key = lambda f: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", f.name)]  # noqa: E731
            ckpts = sorted((f for f in p.rglob("*") if f.suffix in (".safetensors", ".pt", ".pth")), key=key)
            if len(ckpts) < 2:
                raise UserError(f"pca:{path} holds no trajectory*.npy and fewer than 2 checkpoints")

            def vectors():
                for f in ckpts:
                    m = apply_state_dict(build(model_spec), load_state_dict(str(f)), str(f))
                    yield obj.space.flatten(m).cpu()

            return vectors()
    else:
        raise UserError(f"pca:{path} is neither a .npy trajectory nor a directory")
    if arr.ndim != 2 or arr.shape[1] != obj.space.numel:
        raise UserError(f"the trajectory {path} has shape {list(arr.shape)}; the model has {obj.space.numel} "
                        "parameters in the surface's layout (--include-buffers changes it)")
    return arr


def _spans(span_specs, obj, dirs, infos, rd):
    """(lo, hi) per axis: given, or chosen by the 1-D search (stored in the run directory)."""
    if not any(isinstance(sp[0], str) for sp in span_specs):
        return [tuple(sp) for sp in span_specs], None
    if rd.done("auto-span") and (rd / "auto_span.json").is_file():
        auto = rd.load_json("auto_span.json")
    else:
        factors = {sp[1] for sp in span_specs if isinstance(sp[0], str)}
        factor = max(factors)
        auto = auto_span(obj, dirs, factor=factor, second_derivatives=[i["second_derivative"] for i in infos])
        rd.save_json("auto_span.json", auto)
        rd.mark("auto-span")
    spans = []
    for sp, a in zip(span_specs, auto):
        spans.append((-a["span"], a["span"]) if isinstance(sp[0], str) else tuple(sp))
    return spans, auto


def _describe(info: dict, short: bool = False) -> str:
    kind = info.get("kind", "direction")
    norm = info.get("norm")
    scale = {"unit": "unit length", "model": "length ‖θ‖", "filter": "filter-normalised",
             "layer": "layer-normalised", None: "raw"}.get(norm, str(norm))
    if kind in EIGEN_KINDS:
        name = {"hessian": "Hessian", "ggn": "GGN", "fisher": "Fisher", "efisher": "empirical Fisher",
                "kfac": "K-FAC"}[kind]
        text = f"{name} eigenvector {info.get('index', 0) + 1} (λ = {info['eigenvalue']:.4g}"
        text += ")" if short else f", residual {info['residual']:.1e})"
        return f"{text}, {scale}"
    if kind == "random":
        return f"random (seed {info.get('seed')}, {scale})"
    if kind == "gradient":
        return f"gradient ({scale})" + ("" if short else f", ‖∇L‖ = {info['gradient_norm']:.4g}")
    if kind == "pca":
        return (f"PC{info.get('index', 0) + 1} of the trajectory ({100 * info['explained_variance_ratio']:.0f}% of "
                f"variance, {scale})")
    if kind == "towards":
        return f"towards {info.get('checkpoint')} (at 1)"
    return kind


def _describe_curvature(info: dict) -> str:
    return f"d²L/da² = {info['second_derivative']:.4g}, dᵀHd/‖d‖² = {info['rayleigh']:.4g}"


def _f(v) -> str:
    """A loss for text: 4 decimals, or 'n/a' when there is none (all points NaN/inf)."""
    return f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else "n/a"
