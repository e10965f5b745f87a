"""`lossprobe hessian CKPT`: extreme eigenvalues, trace and spectral density of the loss Hessian
(or, with --curvature, of the GGN, the Fisher, the empirical Fisher or K-FAC)."""

from __future__ import annotations

import dataclasses
import time
import warnings

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load_file

from lossprobe.cli.common import (
    add_memory,
    add_model_data,
    add_out,
    finite_float,
    inputs_of,
    load_setup,
    positive_int,
    seed_int,
)
from lossprobe.core.graphs import parse_bytes
from lossprobe.curvature import hessian
from lossprobe.curvature.algorithms import EigResult, TraceResult
from lossprobe.curvature.hessian import Density
from lossprobe.curvature.operators import NAMES, curvature_operator
from lossprobe.errors import UserError
from lossprobe.figures.curvature import plot_eigenvalues, plot_layer_traces, plot_spectral_density
from lossprobe.results.atomic import save_safetensors
from lossprobe.results.store import RunDir


def register(sub) -> None:
    p = sub.add_parser(
        "hessian",
        help="Hessian eigenvalues (Lanczos), trace (Hutch++) and spectral density (SLQ) at a checkpoint",
        description="Curvature of the mean loss over the data at a checkpoint, in eval mode, from exact "
        "Hessian-vector products. Writes summary.json (eigenvalues largest first, residuals ||Hv-λv||, "
        "and with --trace: trace, trace_stderr, per-layer traces; with --density: the SLQ density), "
        "eigenvectors.safetensors (usable as surface directions), figures and report.md.",
    )
    p.add_argument("ckpt", metavar="CKPT", help="checkpoint (.safetensors or a torch state dict, loaded safely)")
    add_model_data(p)
    p.add_argument("--top-k", type=positive_int, default=5, metavar="K",
                   help="number of largest eigenvalues (default: %(default)s)")
    p.add_argument("--bottom-k", type=int, default=0, metavar="K",
                   help="also this many smallest (most negative) eigenvalues (default: %(default)s)")
    p.add_argument("--tol", type=finite_float, default=None, metavar="T",
                   help="Lanczos stops when every residual ||Hv-λv|| <= T·max|λ| (default: 1e-5 for float32 models)")
    p.add_argument("--max-steps", type=positive_int, default=300, metavar="M",
                   help="largest Krylov dimension (Hessian-vector products) for the eigenvalues (default: %(default)s)")
    p.add_argument("--trace", action="store_true", help="estimate the trace with a standard error, total and per layer")
    p.add_argument("--trace-method", choices=("hutch++", "hutchinson"), default="hutch++",
                   help="trace estimator (default: %(default)s)")
    p.add_argument("--trace-products", type=positive_int, default=99, metavar="M",
                   help="Hessian-vector products for the trace (default: %(default)s)")
    p.add_argument("--density", action="store_true", help="spectral density by stochastic Lanczos quadrature")
    p.add_argument("--probes", type=positive_int, default=4, metavar="V",
                   help="SLQ random probe vectors (default: %(default)s)")
    p.add_argument("--steps", type=positive_int, default=80, metavar="M",
                   help="Lanczos steps per SLQ probe (default: %(default)s)")
    p.add_argument("--sigma-rel", type=finite_float, default=0.01, metavar="S",
                   help="Gaussian broadening of the density, as a fraction of the spectral range (default: %(default)s)")
    p.add_argument("--params", nargs="+", default=None, metavar="NAME",
                   help="restrict the Hessian to these parameters: kinds (weight, bias, norm), parameter names "
                   "or module names (default: every parameter that requires a gradient)")
    p.add_argument("--train-mode", action="store_true",
                   help="evaluate with the model in train mode (dropout active, BatchNorm batch statistics); "
                   "results then depend on the batches and random state (a warning is printed)")
    p.add_argument("--hvp", choices=("auto", "reverse", "forward"), default="auto",
                   help="Hessian-vector product: double backward or torch.func forward-over-reverse (default: %(default)s)")
    p.add_argument("--curvature", choices=("hessian", "ggn", "fisher", "efisher", "kfac"), default="hessian",
                   help="the operator: the Hessian, the generalised Gauss-Newton matrix, the Fisher (labels sampled "
                   "from the model, seeded by --seed), the empirical Fisher (the data's labels) or K-FAC (Linear and "
                   "Conv2d layers); see docs/curvature.md (default: %(default)s)")
    p.add_argument("--mc-samples", default="1", metavar="M",
                   help="sampled labels per output row for --curvature fisher (or 'exact' for the exact expectation) "
                   "and for K-FAC of type mc (default: %(default)s)")
    p.add_argument("--kfac-type", choices=("auto", "exact", "mc", "empirical"), default="auto",
                   help="K-FAC's output-gradient factor: exact (the GGN's), mc (sampled labels: the Fisher's), "
                   "empirical; auto: exact for at most 64 outputs, else mc (default: %(default)s)")
    p.add_argument("--graph-budget", default=None, metavar="SIZE",
                   help="memory that gradient graphs kept across products may take, e.g. 2G or 500M (0: rebuild "
                   "every batch for every product; default: half of the available memory)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the random start and probe vectors (default: %(default)s)")
    p.add_argument("--basis", choices=("auto", "memory", "disk"), default="auto",
                   help="where the Lanczos vectors live: memory (all of them, or thick-restarted within --memory), "
                   "disk (two in memory, one model size of TMPDIR per step, freed at the end), auto (memory while "
                   "the basis fits in 256 MiB, else disk when TMPDIR has room) (default: %(default)s)")
    add_memory(p)
    add_out(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.bottom_k < 0:
        raise UserError(f"--bottom-k must be >= 0, got {args.bottom_k}")
    if args.tol is not None and not args.tol > 0:
        raise UserError(f"--tol must be positive, got {args.tol}")
    if not args.sigma_rel > 0:
        raise UserError(f"--sigma-rel must be positive, got {args.sigma_rel}")
    options = curvature_options(args)
    if args.graph_budget is not None:
        budget = parse_bytes(args.graph_budget)  # checked whatever the curvature
        if args.curvature == "hessian":
            options["cache_budget"] = budget
    t0 = time.perf_counter()
    setup = load_setup(args, args.ckpt, train_mode=args.train_mode)
    obj = setup.objective
    if args.train_mode:
        warnings.warn("--train-mode: dropout and BatchNorm batch statistics make the Hessian depend on the batches")
    what = f"{args.data} ({obj.n_samples} samples), {'train' if args.train_mode else 'eval'} mode"
    name = NAMES[args.curvature]
    title = name[0].upper() + name[1:]  # at the start of a sentence
    op = curvature_operator(obj, args.curvature, params=args.params, method=args.hvp, **options)
    if max(args.top_k, args.bottom_k) > op.n:
        raise UserError(f"--top-k {args.top_k} / --bottom-k {args.bottom_k}: the {name} has only {op.n} "
                        "eigenvalues (one per parameter)")
    rd = RunDir(args.out, "hessian", {k: v for k, v in vars(args).items() if k not in ("func", "force", "memory")}, args.force,
                seeds={"probes": args.seed, "subset": args.subset_seed}, inputs=inputs_of(args))
    print(f"{title} of {args.model} on {what}: {op.n} parameters"
          + (" (K-FAC keeps those of Linear and Conv2d layers)" if args.curvature == "kfac" else ""))
    eig = dict(tol=args.tol, max_steps=args.max_steps, progress=True, memory=args.memory, basis=args.basis)
    top = _stage(rd, "eigenvalues", EigResult,
                 lambda: hessian.eigenvalues(op, args.top_k, "largest", seed=args.seed, **eig), vectors="largest")
    bottom = _stage(rd, "eigenvalues_smallest", EigResult,
                    lambda: hessian.eigenvalues(op, args.bottom_k, "smallest", seed=args.seed + 1, **eig),
                    vectors="smallest") if args.bottom_k else None
    tr = _stage(rd, "trace", TraceResult, lambda: hessian.trace(op, args.trace_method, args.trace_products,
                                                                 args.seed, progress=True, memory=args.memory)) if args.trace else None
    dens = _stage(rd, "density", Density, lambda: hessian.spectral_density(
        op, args.probes, args.steps, args.seed, sigma_rel=args.sigma_rel, progress=True, memory=args.memory)) if args.density else None
    summary: dict = {"model": args.model, "data": args.data, "n_samples": obj.n_samples,
                     "mode": "train" if args.train_mode else "eval", "curvature": args.curvature,
                     "curvature_options": curvature_options(args),
                     "eigenvalues": top.values, "residuals": top.residuals, "hvp_eigenvalues": top.matvecs,
                     "lanczos_steps": top.steps, "converged": top.converged}
    if bottom is not None:
        summary.update({"smallest_eigenvalues": bottom.values, "smallest_residuals": bottom.residuals,
                        "hvp_smallest": bottom.matvecs, "converged_smallest": bottom.converged})
    figs: list[str] = []
    if tr is not None:
        summary.update({"trace": tr.trace, "trace_stderr": tr.stderr, "trace_method": tr.method,
                        "hvp_trace": tr.matvecs,
                        "layer_traces": {k: {"trace": v[0], "stderr": v[1]} for k, v in tr.blocks.items()}})
        figs += plot_layer_traces(tr.blocks, rd.figures, title=what, operator=name)
    if dens is not None:
        summary["density"] = {**dens.summary(), "integral": float(np.trapezoid(dens.density, dens.grid)),
                              "file": "density.npz"}
        figs += plot_spectral_density(dens.grid, dens.density, rd.figures, title=what, eigenvalues=top.values,
                                      operator=name)
    figs += plot_eigenvalues(top.values, top.residuals, rd.figures, title=what, operator=name)
    summary["seconds"] = time.perf_counter() - t0
    rd.save_json("summary.json", summary)
    lines = [f"# {title} of `{args.model}` at `{args.ckpt}`", "",
             f"Data: `{args.data}` ({obj.n_samples} samples), {summary['mode']} mode.", ""]
    for r in (top, bottom, tr, dens):
        if r is not None:
            lines += [r.report(), ""]
    lines += [f"![{n}](figures/{n}.png)\n" for n in figs]
    rd.write_text("report.md", "\n".join(lines))
    rd.complete()
    msg = f"{title}: top eigenvalue {top.values[0]:.6g} (residual {top.residuals[0]:.1e})"
    if tr is not None:
        msg += f", trace {tr.trace:.6g} ± {tr.stderr:.2g}"
    print(f"{msg}; wrote {rd.path}")
    return 0


def _stage(rd, name: str, kind, compute, vectors: str | None = None):
    """A result kept in the run directory as NAME.npz/.json by its own `save` (computed, or
    reloaded when a previous run finished it). Eigenvectors go to eigenvectors.safetensors
    (float32, usable as surface directions) instead of the result's file."""
    files = (f"{name}.npz", f"{name}.json") + (("eigenvectors.safetensors",) if vectors else ())
    if rd.done(name, *files):
        return kind.load(rd / f"{name}.npz")
    result = compute()
    if vectors:
        save_safetensors(rd / "eigenvectors.safetensors", {**_kept_vectors(rd), vectors: result.vectors.float()})
        result = dataclasses.replace(result, vectors=None)
    result.save(rd / f"{name}.npz")
    rd.mark(name)
    return result


def _kept_vectors(rd) -> dict:
    f = rd / "eigenvectors.safetensors"
    try:
        return load_file(str(f)) if f.is_file() else {}
    except (SafetensorError, OSError):
        return {}  # damaged: this run's eigenvectors are written again


def curvature_options(args) -> dict:
    """The operator's options from --curvature, --mc-samples, --kfac-type and --seed."""
    text = str(args.mc_samples)
    if text == "exact":
        mc = None
    else:
        try:
            mc = int(text)
        except ValueError:
            mc = 0
        if mc < 1:
            raise UserError(f"--mc-samples must be a positive integer or 'exact', got '{text}'")
    if args.curvature == "fisher":
        return {"mc_samples": mc, "seed": args.seed}
    if args.curvature == "kfac":
        if mc is None:
            raise UserError("--mc-samples exact is for --curvature fisher; K-FAC takes --kfac-type exact")
        return {"kfac_type": args.kfac_type, "mc_samples": mc, "seed": args.seed}
    return {}
