"""`lossprobe align CKPT_A CKPT_B`: permute B's hidden units to match A, then compare the lines."""

from __future__ import annotations

import time

import numpy as np
import torch

from lossprobe.cli.common import (
    add_model_data,
    add_out,
    data_name,
    inputs_of,
    load_pair,
    loss_label,
    path_plots,
    positive_int,
    seed_int,
    training_data,
)
from lossprobe.connectivity.alignment.fx import example_batch
from lossprobe.connectivity.alignment.matching import align, permutation_spec
from lossprobe.connectivity.paths import has_batchnorm, interpolate, non_finite
from lossprobe.connectivity.repair import Repairer, interpolate_repaired
from lossprobe.errors import UserError
from lossprobe.results.drawing import plot_declared
from lossprobe.results.store import RunDir
from lossprobe.training.checkpoints import save_checkpoint


def register(sub) -> None:
    p = sub.add_parser(
        "align",
        help="permute checkpoint B's hidden units to match A (Git Re-Basin), optionally REPAIR, and compare barriers",
        description="Find the permutation of B's hidden units that best matches A (permutation groups derived "
        "automatically from the model's torch.fx graph), write the aligned checkpoint, and evaluate loss and "
        "accuracy along the straight line before and after alignment (and with REPAIR at every point with "
        "--repair). summary.json holds loss_barrier and error_barrier, each with naive, aligned and "
        "aligned_repair. Checkpoints are loaded safely (safetensors, or torch files with weights_only=True).",
    )
    p.add_argument("ckpt_a", metavar="CKPT_A", help="reference checkpoint (.safetensors or a torch state dict)")
    p.add_argument("ckpt_b", metavar="CKPT_B", help="checkpoint to permute, same architecture")
    add_model_data(p)
    p.add_argument("--method", choices=("weights", "activations"), default="weights",
                   help="weight matching (no data needed) or activation matching on --calib-data (default: %(default)s)")
    p.add_argument("--features", choices=("post", "all"), default="post",
                   help="activation matching: post-activation features (the papers' choice) or every layer output, "
                   "activation and residual sum (default: %(default)s)")
    p.add_argument("--repair", action="store_true",
                   help="also evaluate the aligned line with REPAIR at every point (statistics from --calib-data)")
    p.add_argument("--calib-data", default=None, metavar="DATA",
                   help="data for activation matching, REPAIR and BatchNorm statistics "
                   "(default: the training split of --data's set)")
    p.add_argument("--calib-subset", type=positive_int, default=None, metavar="N",
                   help="seeded subset size of --calib-data (default: 5000, or all of it when smaller)")
    p.add_argument("--alphas", type=int, default=21, metavar="N",
                   help="number of α points from 0 to 1 (N−1 must be even so that 0.5 is on the grid; default: %(default)s)")
    p.add_argument("--bn", choices=("interpolate", "recompute"), default="recompute",
                   help="BatchNorm models: interpolate running statistics, or re-estimate them at each α "
                   "on --calib-data (default: %(default)s, the fair comparison with REPAIR)")
    p.add_argument("--restarts", type=positive_int, default=3, metavar="R",
                   help="weight matching: restarts with different random sweep orders (default: %(default)s)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the sweep orders (default: %(default)s)")
    add_out(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.alphas < 3 or (args.alphas - 1) % 2:
        raise UserError(f"--alphas must be odd and at least 3 (0, 0.5 and 1 on the grid), got {args.alphas}")
    t0 = time.perf_counter()
    a, b = load_pair(args, ("A", "B"))
    model_a, model_b, split, crit = a.model, b.model, a.data, a.objective.criterion
    example = example_batch(model_a, split, crit.forward)
    spec = permutation_spec(model_a, example=example, forward=crit.forward)  # fails early, naming an unsupported operation
    needs_calib = args.method == "activations" or args.repair or (has_batchnorm(model_a) and args.bn == "recompute")
    calib = training_data(args, args.calib_data, "--calib-data", args.calib_subset or 5000, args.subset_seed + 1,
                          subset_option="--calib-subset", warn=args.calib_subset is not None) if needs_calib else None
    run_dir = RunDir(args.out, "align", {k: v for k, v in vars(args).items() if k not in ("func", "force")}, args.force,
                     inputs=inputs_of(args))
    fwd = crit.forward
    aligned_b, perms = align(model_a, model_b, method=args.method, data=calib if calib is not None else split,
                             spec=spec, restarts=args.restarts, seed=args.seed, return_perms=True, forward=fwd,
                             features=args.features)
    ckdir = run_dir.subdir("checkpoints")
    save_checkpoint(aligned_b, ckdir / "aligned_b.safetensors")
    alphas = np.linspace(0, 1, args.alphas)
    alphas[-1] = 1.0
    name = data_name(args.data)
    splits = {name: split}
    bn = args.bn if has_batchnorm(model_a) else "interpolate"
    naive = interpolate(model_a, model_b, splits, alphas=alphas, bn=bn, bn_data=calib, batch_size=args.batch_size,
                        progress=True, loss=crit)
    aligned = interpolate(model_a, aligned_b, splits, alphas=alphas, bn=bn, bn_data=calib, batch_size=args.batch_size,
                          progress=True, loss=crit)
    paths = {"naive": naive, "aligned": aligned}
    if args.repair:
        rep = Repairer(model_a, aligned_b, calib, spec=spec, forward=fwd)
        paths["aligned_repair"] = interpolate_repaired(model_a, aligned_b, splits, calib, alphas=alphas, repairer=rep,
                                                       batch_size=args.batch_size, progress=True, loss=crit)
    arrays = {"alphas": alphas}
    for k, it in paths.items():
        arrays[f"{k}_loss"], arrays[f"{k}_accuracy"] = it.loss[name], it.accuracy[name]
    labels = {"naive": "straight line", "aligned": f"aligned ({args.method} matching)", "aligned_repair": "aligned + REPAIR"}
    plots = path_plots("alphas", "α (0 = checkpoint A, 1 = checkpoint B aligned to A)",
                       [(labels[k], f"{k}_loss", f"{k}_accuracy", "", False) for k in paths], loss_label(args), arrays)
    run_dir.save_arrays("interpolation.npz", plots=plots, **arrays)
    for k, it in paths.items():
        bad = non_finite(it.alphas, it.loss[name], where=f"{args.data}, {k} path")
        if bad:  # the arrays stay for inspection; the run is not marked complete
            raise UserError(bad)
    figs = plot_declared(plots, arrays, run_dir.figures, "alignment",
                         title=f"Paths from A to B: {args.data} ({split.n_samples})")
    summary = {
        "loss_barrier": {k: it.loss_barrier(name) for k, it in paths.items()},
        "error_barrier": {k: it.error_barrier(name) for k, it in paths.items()},
        "data": args.data, "n_eval": split.n_samples, "method": args.method,
        "features": args.features if args.method == "activations" else None, "spec": spec.structure,
        "calibration": {"data": args.calib_data or "training split of --data", "n": calib.n_samples}
        if calib is not None else None,
        "bn": bn if has_batchnorm(model_a) else "none",
        "groups": {g: len(p) for g, p in perms.items()},
        "units_moved": {g: int((p != torch_arange(len(p))).sum()) for g, p in perms.items()},
        "alphas": alphas,
        "loss": {k: it.loss[name] for k, it in paths.items()},
        "accuracy": {k: it.accuracy[name] for k, it in paths.items()},
        "seconds": time.perf_counter() - t0,
    }
    run_dir.save_json("summary.json", summary)
    lb, eb = summary["loss_barrier"], summary["error_barrier"]
    sections = "".join(f"**{labels[k]}.** {it.report()}\n\n" for k, it in paths.items())
    run_dir.write_text("report.md",
        f"# Alignment of {_md(args.ckpt_b)} to {_md(args.ckpt_a)}\n\n"
        f"Model `{_md(args.model)}`, {args.method} matching over {len(perms)} permutation groups; "
        f"evaluated on `{_md(args.data)}` ({split.n_samples} samples) at {len(alphas)} points of α in [0, 1].\n\n"
        + sections + "The aligned checkpoint is `checkpoints/aligned_b.safetensors` (same function as B).\n\n"
        + "".join(f"![{n}](figures/{n}.png)\n\n" for n in figs)
    )
    run_dir.complete()
    print("; ".join(f"{labels[k]}: loss barrier {lb[k]:.4f}, error barrier {eb[k]:.2%}" for k in paths)
          + f" on {args.data}; wrote {run_dir.path}")
    return 0


def torch_arange(n: int):
    return torch.arange(n)


def _md(text: str) -> str:
    """User text in Markdown: no backticks or pipes that would break the report."""
    return str(text).replace("`", "'").replace("|", "/")
