"""`lossprobe curve CKPT_A CKPT_B`: train a low-loss curve between two checkpoints (Garipov et al. 2018)."""

from __future__ import annotations

import time

import numpy as np

from lossprobe.cli.common import (
    add_model_data,
    add_out,
    data_name,
    inputs_of,
    load_pair,
    loss_label,
    path_plots,
    positive_float,
    positive_int,
    seed_int,
    training_data,
)
from lossprobe.connectivity.curves import Curve, CurveTrainConfig, evaluate_curve, train_curve
from lossprobe.connectivity.paths import has_batchnorm, interpolate, non_finite
from lossprobe.core.objective import check_fits
from lossprobe.errors import UserError
from lossprobe.results.atomic import save_safetensors
from lossprobe.results.drawing import plot_declared
from lossprobe.results.store import RunDir


def register(sub) -> None:
    p = sub.add_parser(
        "curve",
        help="train a Bezier curve or polygonal chain between two checkpoints and report the barrier along it",
        description="Train the bends of a curve θ(t) between two fixed checkpoints (quadratic Bezier with "
        "--bends 1, as in Garipov et al. 2018), drawing t ~ U(0, 1) per batch; the bends start on the straight "
        "line. Then evaluate loss and error along the curve and along the straight line on the training data "
        "and --data, with BatchNorm statistics re-estimated at each t. Rerunning with the same options resumes "
        "the training per epoch.",
    )
    p.add_argument("ckpt_a", metavar="CKPT_A", help="first endpoint (.safetensors or a torch state dict)")
    p.add_argument("ckpt_b", metavar="CKPT_B", help="second endpoint, same architecture")
    add_model_data(p)
    p.add_argument("--kind", choices=("bezier", "polychain"), default="bezier",
                   help="Bezier curve of degree bends+1, or a polygonal chain through the bends (default: %(default)s)")
    p.add_argument("--bends", type=positive_int, default=1, metavar="N", help="trainable control points (default: %(default)s)")
    p.add_argument("--epochs", type=positive_int, default=2, metavar="E", help="training epochs (default: %(default)s)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="peak learning rate, cosine schedule (default: %(default)s)")
    p.add_argument("--optimizer", choices=("adam", "momentum"), default="adam", help="optimizer (default: %(default)s)")
    p.add_argument("--train-batch-size", type=positive_int, default=128, metavar="B",
                   help="training batch size (default: %(default)s)")
    p.add_argument("--train-data", default=None, metavar="DATA",
                   help="training data (default: the training split of --data's set)")
    p.add_argument("--train-subset", type=positive_int, default=None, metavar="N",
                   help="train on a seeded subset of N samples (default: all)")
    p.add_argument("--points", type=int, default=21, metavar="K",
                   help="evaluation points t in [0, 1]; K−1 must be even so that 0.5 is on the grid (default: %(default)s)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of batch order and t (default: %(default)s)")
    add_out(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.points < 3 or (args.points - 1) % 2:
        raise UserError(f"--points must be odd and at least 3, got {args.points}")
    t0 = time.perf_counter()
    a, b = load_pair(args, ("endpoint A (t = 0)", "endpoint B (t = 1)"))
    model_a, model_b, split, crit = a.model, b.model, a.data, a.objective.criterion
    train = training_data(args, args.train_data, "--train-data", args.train_subset, args.seed,
                          subset_option="--train-subset")
    check_fits(model_a, train, crit, model_name=f"model '{args.model}'",  # before any output
               data_name=f"the training data '{train.name}'")
    curve = Curve(model_a, model_b, bends=args.bends, kind=args.kind, forward=crit.forward)
    cfg = CurveTrainConfig(epochs=args.epochs, lr=args.lr, optimizer=args.optimizer,
                           batch_size=args.train_batch_size, seed=args.seed)
    run_dir = RunDir(args.out, "curve", {k: v for k, v in vars(args).items() if k not in ("func", "force")}, args.force,
                     inputs=inputs_of(args))
    name = data_name(args.data)
    ev_train = train.subset(min(train.n_samples, 10_000), seed=args.seed + 1) if hasattr(train, "subset") else train
    splits = {"train": ev_train, name if name != "train" else "eval": split}
    print(f"training a {args.kind} curve with {args.bends} bend(s) for {args.epochs} epoch(s) on {train.n_samples} samples")
    hist = train_curve(curve, train, cfg, checkpoint_dir=run_dir.subdir("checkpoints"), progress=True, loss=crit)

    save_safetensors(run_dir / "checkpoints" / "curve.safetensors", curve.state_for_saving())
    ts = np.linspace(0, 1, args.points)
    ts[-1] = 1.0
    ev = evaluate_curve(curve, splits, ts=ts, bn_data=train, batch_size=args.batch_size, progress=True, loss=crit)
    bn = "recompute" if has_batchnorm(model_a) else "interpolate"
    line = interpolate(model_a, model_b, splits, alphas=ts, bn=bn, bn_data=train if bn == "recompute" else None,
                       batch_size=args.batch_size, loss=crit)
    label = f"{args.kind} curve ({args.bends} bend{'s' if args.bends > 1 else ''})"
    arrays = {"ts": ts, **{f"curve_{k}": v for k, v in ev.to_arrays().items() if k != "ts"},
              **{f"line_{k}": v for k, v in line.to_arrays().items() if k != "alphas"}}
    # one colour per path; the training split dashed, the evaluation split solid
    plots = path_plots("ts", "position along the path t (0 = checkpoint A, 1 = checkpoint B)",
                       [(f"{what}, {s}", f"{p}_loss_{s}", f"{p}_accuracy_{s}", what, s == "train")
                        for p, what in (("line", "straight line"), ("curve", label)) for s in splits],
                       loss_label(args), arrays)
    run_dir.save_arrays("curve.npz", plots=plots, **arrays)
    for what, path in (("curve", ev), ("straight line", line)):
        for s_name in splits:
            bad = non_finite(ts, path.loss[s_name], name="t", where=f"{s_name}, {what}")
            if bad:  # the arrays stay for inspection; the run is not marked complete
                raise UserError(bad)
    cb, lbar = ev.barriers(), line.barriers()
    figs = plot_declared(plots, arrays, run_dir.figures, "curve", title=f"Paths from A to B: {args.data.split(':')[0]}")
    summary = {
        "loss_barrier": {"curve": cb["loss_barrier"], "line": lbar["loss_barrier"]},
        "error_barrier": {"curve": cb["error_barrier"], "line": lbar["error_barrier"]},
        "kind": args.kind, "bends": args.bends, "epochs": args.epochs,
        "train_batch_loss": hist.batch_loss,
        "n_eval": {k: v.n_samples for k, v in splits.items()},
        "ts": ts,
        "loss": {"curve": ev.loss, "line": line.loss},
        "accuracy": {"curve": ev.accuracy, "line": line.accuracy},
        "seconds": time.perf_counter() - t0,
    }
    run_dir.save_json("summary.json", summary)
    sections = "".join(f"**{what}.** {path.report()}\n\n" for what, path in (("Straight line", line), (label, ev)))
    run_dir.write_text("report.md",
        f"# A {label} between two checkpoints\n\n"
        f"Model `{args.model.replace('`', '')}`; trained {args.epochs} epoch(s) on {train.n_samples} samples of "
        f"`{(args.train_data or 'the training split').replace('`', '')}`; evaluated at {len(ts)} points t in [0, 1].\n\n"
        + sections + "Bends: `checkpoints/curve.safetensors` (flat parameter vectors: bends, theta_a, theta_b).\n\n"
        + "".join(f"![{n}](figures/{n}.png)\n\n" for n in figs)
    )
    run_dir.complete()
    ev_name = [k for k in splits if k != "train"][0]
    print(f"loss barrier along the curve {cb['loss_barrier'][ev_name]:.4f} (line {lbar['loss_barrier'][ev_name]:.4f}), "
          f"error barrier {cb['error_barrier'][ev_name]:.2%} (line {lbar['error_barrier'][ev_name]:.2%}) "
          f"on {args.data}; wrote {run_dir.path}")
    return 0
