"""`lossprobe sharpness CKPT`: worst-case and average-case sharpness measures at a checkpoint."""

from __future__ import annotations

import argparse
import time

from lossprobe.cli.common import (
    add_model_data,
    add_out,
    finite_float,
    inputs_of,
    load_setup,
    positive_int,
    seed_int,
)
from lossprobe.curvature import sharpness as S
from lossprobe.curvature.critical import CriticalPoint
from lossprobe.errors import UserError
from lossprobe.figures.curvature import plot_noise_robustness
from lossprobe.results.store import RunDir

MEASURES = ("keskar", "sam", "asam", "noise", "pacbayes", "critical")


def _floats(text: str) -> list[float]:
    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None
    if not vals or any(not v >= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected non-negative numbers, got '{text}'")
    return vals


def register(sub) -> None:
    p = sub.add_parser(
        "sharpness",
        help="sharpness at a checkpoint: Keskar ε, SAM/ASAM ρ, weight-noise robustness, PAC-Bayes σ, critical point",
        description="Sharpness measures of the generalisation literature at a checkpoint, on the given data, "
        "in eval mode. keskar: largest loss rise in the box ε(|w|+1) (projected gradient ascent); sam/asam: "
        "worst-case loss rise in the ρ-ball (ASAM: scaled by |w|+η); noise: loss and accuracy under Gaussian "
        "weight noise of σ × each filter's norm, several seeded draws; pacbayes: largest σ of N(0, σ²) noise "
        "with an error rise <= --pac-bound (Jiang et al. 2019); critical: gradient norm and extreme Hessian "
        "eigenvalues → minimum / saddle / maximum. Writes summary.json, figures and report.md.",
    )
    p.add_argument("ckpt", metavar="CKPT", help="checkpoint (.safetensors or a torch state dict, loaded safely)")
    add_model_data(p)
    p.add_argument("--measures", nargs="+", choices=MEASURES, default=["keskar", "sam", "asam", "noise", "pacbayes"],
                   metavar="M", help=f"measures to compute, from {', '.join(MEASURES)} (default: all but critical)")
    p.add_argument("--epsilon", type=finite_float, default=1e-3, help="Keskar box size ε (default: %(default)s)")
    p.add_argument("--ascent-steps", type=positive_int, default=10, metavar="N",
                   help="gradient-ascent steps for keskar (and for sam/asam when > 1 is wanted via --sam-steps) (default: %(default)s)")
    p.add_argument("--rho", type=finite_float, default=0.05, help="SAM radius ρ (default: %(default)s)")
    p.add_argument("--asam-rho", type=finite_float, default=0.5, help="ASAM radius ρ (default: %(default)s)")
    p.add_argument("--sam-steps", type=positive_int, default=1, metavar="N",
                   help="ascent steps for sam/asam; 1 is SAM's own first-order step (default: %(default)s)")
    p.add_argument("--sigmas", type=_floats, default=[0.01, 0.02, 0.05, 0.1, 0.2, 0.3], metavar="S1,S2,...",
                   help="relative noise levels σ for the noise measure (default: 0.01,0.02,0.05,0.1,0.2,0.3)")
    p.add_argument("--draws", type=positive_int, default=5, metavar="D",
                   help="noise draws per σ (and for the PAC-Bayes expectation) (default: %(default)s)")
    p.add_argument("--pac-bound", type=finite_float, default=0.1,
                   help="PAC-Bayes σ search: allowed rise of the error (fraction) (default: %(default)s)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of every random draw (default: %(default)s)")
    add_out(p)
    p.set_defaults(func=run)


def run(args) -> int:
    for name in ("epsilon", "rho", "asam_rho", "pac_bound"):
        if not getattr(args, name) > 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    t0 = time.perf_counter()
    setup = load_setup(args, args.ckpt)
    obj = setup.objective
    what = f"{args.data} ({obj.n_samples} samples)"
    ev = obj.loss_at()
    rd = RunDir(args.out, "sharpness", {k: v for k, v in vars(args).items() if k not in ("func", "force")}, args.force,
                seeds={"noise": args.seed, "subset": args.subset_seed}, inputs=inputs_of(args))
    summary: dict = {"model": args.model, "data": args.data, "n_samples": obj.n_samples,
                     "loss": float(ev.loss[0]), "accuracy": float(ev.accuracy[0])}
    measures = {
        "keskar": (S.SharpnessResult, lambda: S.keskar_sharpness(obj, epsilon=args.epsilon, steps=args.ascent_steps,
                                                                 seed=args.seed)),
        "sam": (S.SharpnessResult, lambda: S.sam_sharpness(obj, rho=args.rho, steps=args.sam_steps)),
        "asam": (S.SharpnessResult, lambda: S.sam_sharpness(obj, rho=args.asam_rho, adaptive=True,
                                                            steps=args.sam_steps)),
        "noise": (S.NoiseRobustness, lambda: S.noise_robustness(obj, sigmas=args.sigmas, draws=args.draws,
                                                                seed=args.seed, progress=True)),
        "pacbayes": (S.PacBayesSigma, lambda: S.pac_bayes_sigma(obj, bound=args.pac_bound, draws=args.draws,
                                                                seed=args.seed)),
        "critical": (CriticalPoint, lambda: S.critical_point(obj, seed=args.seed)),
    }
    results = {}
    for m in args.measures:
        kind, compute = measures[m]
        if rd.done(m, f"{m}.npz", f"{m}.json"):
            results[m] = kind.load(rd / f"{m}.npz")
        else:
            print(f"{m} ...", flush=True)
            results[m] = compute()
            results[m].save(rd / f"{m}.npz")
            rd.mark(m)
        summary[m] = results[m].to_dict()
    figs = []
    if "noise" in results:
        figs += plot_noise_robustness({args.model: summary["noise"]}, rd.figures, title=what)
    summary["seconds"] = time.perf_counter() - t0
    rd.save_json("summary.json", summary)
    lines = [f"# Sharpness of `{args.model}` at `{args.ckpt}`", "", f"Data: {what}; loss {summary['loss']:.4f}, "
             f"accuracy {summary['accuracy']:.2%}.", ""]
    for r in results.values():
        lines += [r.report(), ""]
    lines += [f"![{n}](figures/{n}.png)\n" for n in figs]
    rd.write_text("report.md", "\n".join(lines))
    rd.complete()
    print("; ".join(f"{k}: {v.get('sharpness', v.get('sigma', v.get('kind', '')))}" if k != "noise" else k
                    for k, v in summary.items() if k in MEASURES) + f"; wrote {rd.path}")
    return 0
