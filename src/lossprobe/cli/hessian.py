"""`lossprobe hessian CKPT`: extreme eigenvalues, trace and spectral density of the loss Hessian
(or, with --curvature, of the GGN, the Fisher, the empirical Fisher or K-FAC)."""

from __future__ import annotations

import time
import warnings

import numpy as np

from lossprobe.cli.common import (
    add_model_data,
    add_out,
    check_fit,
    criterion_from_args,
    finite_float,
    load_model,
    positive_int,
    require_finite,
)
from lossprobe.core.graphs import parse_bytes
from lossprobe.core.objective import Objective
from lossprobe.curvature import hessian
from lossprobe.data import load_split
from lossprobe.errors import UserError
from lossprobe.figures.curvature import plot_eigenvalues, plot_layer_traces, plot_spectral_density
from lossprobe.results.atomic import save_safetensors
from lossprobe.results.plotspec import Series, line
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
    p.add_argument("--seed", type=int, default=0, help="seed of the random start and probe vectors (default: %(default)s)")
    add_out(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.bottom_k < 0:
        raise UserError(f"--bottom-k must be >= 0, got {args.bottom_k}")
    if args.tol is not None and not args.tol > 0:
        raise UserError(f"--tol must be positive, got {args.tol}")
    if not args.sigma_rel > 0:
        raise UserError(f"--sigma-rel must be positive, got {args.sigma_rel}")

    budget = parse_bytes(args.graph_budget) if args.graph_budget is not None else None
    options = curvature_options(args)
    curv = {"curvature": args.curvature, "options": options}
    model = require_finite(load_model(args.model, args.ckpt), args.ckpt)
    t0 = time.perf_counter()
    split = load_split(args.data, args.subset, args.subset_seed)
    crit = criterion_from_args(args, model)
    check_fit(model, split, crit, args)
    obj = Objective(model, split, loss=crit, batch_size=args.batch_size, train_mode=args.train_mode)
    if args.train_mode:
        warnings.warn("--train-mode: dropout and BatchNorm batch statistics make the Hessian depend on the batches")
    what = f"{args.data} ({split.n_samples} samples), {'train' if args.train_mode else 'eval'} mode"
    name = NAMES[args.curvature]
    centre = float(obj.loss_at().loss[0])
    if not np.isfinite(centre):
        raise UserError(f"the loss at {args.ckpt} is {centre} on {args.data}: the model outputs NaN or inf, so its "
                        f"{name} is undefined")
    n_params = hessian.HessianOperator(obj, params=args.params).n
    if max(args.top_k, args.bottom_k) > n_params:
        raise UserError(f"--top-k {args.top_k} / --bottom-k {args.bottom_k}: the {name} has only {n_params} "
                        "eigenvalues (one per parameter)")
    rd = RunDir(args.out, "hessian", {k: v for k, v in vars(args).items() if k not in ("func", "force")}, args.force,
                seeds={"probes": args.seed, "subset": args.subset_seed})
    print(f"{name} of {args.model} on {what}: {n_params} parameters"
          + (" (K-FAC keeps those of Linear and Conv2d layers)" if args.curvature == "kfac" else ""))

    summary: dict = {"model": args.model, "data": args.data, "n_samples": split.n_samples,
                     "mode": "train" if args.train_mode else "eval", "curvature": args.curvature,
                     "curvature_options": options}
    figs: list[str] = []
    if not rd.done("eigenvalues", "eigenvalues.json", "eigenvectors.safetensors"):
        top = hessian.eigenvalues(obj, params=args.params, k=args.top_k, which="largest", tol=args.tol,
                                  max_steps=args.max_steps, seed=args.seed, method=args.hvp, progress=True, **curv,
                                  cache_budget=budget)
        eig = {"eigenvalues": top.values, "residuals": top.residuals, "hvp_eigenvalues": top.matvecs,
               "lanczos_steps": top.steps, "converged": top.converged}
        vecs = {"largest": top.vectors}
        if args.bottom_k:
            bot = hessian.eigenvalues(obj, params=args.params, k=args.bottom_k, which="smallest", tol=args.tol,
                                      max_steps=args.max_steps, seed=args.seed + 1, method=args.hvp, progress=True,
                                      **curv, cache_budget=budget)
            eig.update({"smallest_eigenvalues": bot.values, "smallest_residuals": bot.residuals,
                        "hvp_smallest": bot.matvecs, "converged_smallest": bot.converged})
            vecs["smallest"] = bot.vectors

        save_safetensors(rd / "eigenvectors.safetensors", {k: v.float() for k, v in vecs.items()})
        rd.save_json("eigenvalues.json", eig)
        rd.mark("eigenvalues")
    summary.update(rd.load_json("eigenvalues.json"))
    if args.trace:
        if not rd.done("trace", "trace.json"):
            tr = hessian.trace(obj, params=args.params, method=args.trace_method, matvecs=args.trace_products,
                               seed=args.seed, hvp_method=args.hvp, progress=True, **curv, cache_budget=budget)
            rd.save_json("trace.json", {"trace": tr.trace, "trace_stderr": tr.stderr, "trace_method": tr.method,
                                        "hvp_trace": tr.matvecs,
                                        "layer_traces": {k: {"trace": v[0], "stderr": v[1]} for k, v in tr.blocks.items()}})
            rd.mark("trace")
        summary.update(rd.load_json("trace.json"))
        figs += plot_layer_traces({k: (v["trace"], v["stderr"]) for k, v in summary["layer_traces"].items()},
                                  rd.figures, title=what, operator=name)
    if args.density:
        if not rd.done("density", "density.npz", "density.json"):
            d = hessian.spectral_density(obj, params=args.params, probes=args.probes, steps=args.steps, seed=args.seed,
                                         sigma_rel=args.sigma_rel, method=args.hvp, progress=True, **curv, cache_budget=budget)
            density = line(f"{name} spectral density (SLQ, Gaussian broadening)", "grid",
                           [Series("density", "SLQ density")], xlabel=f"eigenvalue λ of the {name}",
                           ylabel="eigenvalue density", log_y=True)
            rd.save_arrays("density.npz", plots=[density], grid=d.grid, density=d.density, nodes=d.slq.nodes,
                           weights=d.slq.weights)
            rd.save_json("density.json", {"sigma": d.sigma, "hvp_density": d.matvecs, "slq_trace": d.slq.trace,
                                          "slq_trace_stderr": d.slq.trace_stderr})
            rd.mark("density")
        arr = rd.load_arrays("density.npz")
        dj = rd.load_json("density.json")
        summary["density"] = {**dj, "integral": float(np.trapezoid(arr["density"], arr["grid"])),
                              "file": "density.npz"}
        figs += plot_spectral_density(arr["grid"], arr["density"], rd.figures, title=what,
                                      eigenvalues=summary["eigenvalues"], operator=name)
    figs += plot_eigenvalues(summary["eigenvalues"], summary["residuals"], rd.figures, title=what, operator=name)
    summary["seconds"] = time.perf_counter() - t0
    rd.save_json("summary.json", summary)
    lines = [f"# {name} of `{args.model}` at `{args.ckpt}`", "",
             f"Data: `{args.data}` ({split.n_samples} samples), {summary['mode']} mode.", "",
             "| # | eigenvalue | residual ‖Hv−λv‖ |", "|---|---|---|"]
    lines += [f"| {i + 1} | {v:.6g} | {r:.2e} |" for i, (v, r) in enumerate(zip(summary["eigenvalues"], summary["residuals"]))]
    if args.trace:
        lines += ["", f"Trace ({summary['trace_method']}, {summary['hvp_trace']} products): "
                  f"**{summary['trace']:.6g} ± {summary['trace_stderr']:.2g}** (1 s.e.)."]
    lines += [""] + [f"![{n}](figures/{n}.png)\n" for n in figs]
    rd.write_text("report.md", "\n".join(lines))
    rd.complete()
    msg = f"{name}: top eigenvalue {summary['eigenvalues'][0]:.6g} (residual {summary['residuals'][0]:.1e})"
    if args.trace:
        msg += f", trace {summary['trace']:.6g} ± {summary['trace_stderr']:.2g}"
    print(f"{msg}; wrote {rd.path}")
    return 0


NAMES = {"hessian": "Hessian", "ggn": "GGN", "fisher": "Fisher", "efisher": "Empirical Fisher", "kfac": "K-FAC"}


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
