"""`lossprobe interpolate CKPT_A CKPT_B`: loss and accuracy along the line between two checkpoints."""

from __future__ import annotations

import time

import numpy as np

from lossprobe.cli.common import (
    add_memory,
    add_model_data,
    add_out,
    data_name,
    inputs_of,
    load_pair,
    loss_label,
    path_plots,
    training_data,
)
from lossprobe.connectivity.paths import interpolate, non_finite
from lossprobe.errors import UserError
from lossprobe.figures.paths import plot_interpolation
from lossprobe.results.store import RunDir


def register(sub) -> None:
    p = sub.add_parser(
        "interpolate",
        help="loss and accuracy along the straight line between two checkpoints, and the barrier",
        description="Evaluate θ(α) = (1−α)θ_A + αθ_B for α from −0.5 to 1.5 (41 points, 0 and 1 exact) "
        "and report the loss barrier and the error barrier over α in [0, 1]. Checkpoints are loaded "
        "safely (safetensors, or torch files with weights_only=True).",
    )
    p.add_argument("ckpt_a", metavar="CKPT_A", help="first checkpoint (.safetensors or a torch state dict)")
    p.add_argument("ckpt_b", metavar="CKPT_B", help="second checkpoint, same architecture")
    add_model_data(p)
    p.add_argument("--alphas", type=int, default=41, metavar="N",
                   help="number of α points from −0.5 to 1.5 (N−1 must be a multiple of 4 so that 0 and 1 are on the grid; default: %(default)s)")
    p.add_argument("--bn", choices=("interpolate", "recompute"), default="interpolate",
                   help="BatchNorm models: interpolate running statistics, or re-estimate them at each α "
                   "from training batches of --data's set or --train-data (default: %(default)s)")
    p.add_argument("--train-data", default=None, metavar="DATA",
                   help="training data for --bn recompute (default: the training split of --data's set)")
    add_memory(p)
    add_out(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.alphas < 5 or (args.alphas - 1) % 4:
        raise UserError(f"--alphas must be 5, 9, 13, ... (N−1 a multiple of 4), got {args.alphas}")
    t0 = time.perf_counter()
    a, b = load_pair(args, ("endpoint A (α = 0)", "endpoint B (α = 1)"))
    split = a.data
    bn_data = training_data(args, args.train_data, "--train-data") if args.bn == "recompute" else None
    run_dir = RunDir(args.out, "interpolate", {k: v for k, v in vars(args).items() if k not in ("func", "force", "memory")},
                     args.force, inputs=inputs_of(args))
    alphas = np.linspace(-0.5, 1.5, args.alphas)
    alphas[np.isclose(alphas, 0)] = 0.0
    alphas[np.isclose(alphas, 1)] = 1.0
    name = data_name(args.data)
    it = interpolate(a.model, b.model, {name: split}, alphas=alphas, bn=args.bn, bn_data=bn_data,
                     batch_size=args.batch_size, progress=True, loss=a.objective.criterion, memory=args.memory)
    arrays = it.to_arrays()
    plots = path_plots("alphas", "α (0 = checkpoint A, 1 = checkpoint B)",
                       [(name, f"loss_{name}", f"accuracy_{name}", "", False)], loss_label(args), arrays)
    run_dir.save_arrays("interpolation.npz", plots=plots, **arrays)
    bad = non_finite(it.alphas, it.loss[name], where=args.data)
    if bad:  # the arrays stay for inspection; the run is not marked complete
        raise UserError(bad)
    fig_names = plot_interpolation(it, run_dir.figures, title_data=args.data)
    summary = {
        **{k: v for k, v in it.barriers().items()},
        "alphas": it.alphas,
        "loss": {s: it.loss[s] for s in it.loss},
        "accuracy": {s: it.accuracy[s] for s in it.accuracy},
        "endpoint_loss": {"A": float(it.loss[name][it.alphas == 0][0]), "B": float(it.loss[name][it.alphas == 1][0])},
        "seconds": time.perf_counter() - t0,
    }
    run_dir.save_json("summary.json", summary)
    lb, eb = summary["loss_barrier"][name], summary["error_barrier"][name]
    ebt = f"{eb:.4f}" if np.isfinite(eb) else "n/a (no accuracy for this loss)"
    run_dir.write_text("report.md", "\n".join([
        f"# Interpolation between {args.ckpt_a} and {args.ckpt_b}", "",
        f"Model `{args.model}`, data `{args.data}` ({split.n_samples} samples), loss `{args.loss}`.", "",
        it.report(), ""] + [f"![{n}](figures/{n}.png)\n" for n in fig_names]))
    run_dir.complete()
    print(f"loss barrier {lb:.4f}, error barrier {ebt} on {args.data}; wrote {run_dir.path}")
    return 0
