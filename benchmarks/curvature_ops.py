"""Hessian, GGN, Fisher, empirical Fisher and K-FAC side by side on the architecture study's models.

    python benchmarks/curvature_ops.py --run runs/architectures [--subset 2000] [--no-curvlinops]

Loads `model_A` (MLP) and `model_B` (CNN with BatchNorm and dropout, eval mode) from the study's
run directory and, on the same 2,000 training images as the study's Hessian stage, measures per
operator: the top eigenvalue (Lanczos, residual measured with one more product), the trace
(Hutch++, 30 products, ± 1 s.e.), products used and seconds. With curvlinops installed
(`pip install --no-deps curvlinops-for-pytorch einops einconv opt-einsum linear_operator
backpack-for-pytorch`: benchmark only, never a dependency) it also times curvlinops' GGN and
MC-Fisher products on the same data and compares one product with ours. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, help="run directory of `lossprobe study architectures`")
    ap.add_argument("--subset", type=int, default=2000)
    ap.add_argument("--trace-products", type=int, default=30)
    ap.add_argument("--curvatures", nargs="+", default=["hessian", "ggn", "fisher", "efisher", "kfac"])
    ap.add_argument("--models", nargs="+", default=["A", "B"])
    ap.add_argument("--no-curvlinops", action="store_true")
    args = ap.parse_args()

    from lossprobe import Objective
    from lossprobe.curvature import curvature_operator, hessian
    from lossprobe.data import fashion_mnist
    from lossprobe.models import build
    from lossprobe.training.checkpoints import load_checkpoint

    cfg = json.load(open(os.path.join(args.run, "config.json")))
    cfg = cfg.get("config", cfg)
    ds = fashion_mnist(n_val=cfg.get("n_val", 10000), split_seed=cfg.get("split_seed", 0))
    train = ds.train
    if cfg.get("train_subset"):
        train = train.subset(cfg["train_subset"], seed=cfg.get("split_seed", 0))
    data = train.subset(min(args.subset, len(train)), 3)  # the study's Hessian subset
    result = {"benchmark": "curvature_ops", "threads": torch.get_num_threads(), "cores": os.cpu_count(),
              "samples": data.n_samples, "models": {}}
    for key in args.models:
        spec = cfg[f"model_{key.lower()}"]
        model = load_checkpoint(build(spec), os.path.join(args.run, "checkpoints", f"model_{key}.safetensors")).eval()
        obj = Objective(model, data)
        rows = {}
        for c in args.curvatures:
            opts = {"seed": 0} if c in ("fisher", "kfac") else None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                e = hessian.eigenvalues(curvature_operator(obj, c, **opts), k=1)
                t1 = time.perf_counter()
                tr = hessian.trace(curvature_operator(obj, c, **opts), matvecs=args.trace_products, per_layer=False)
                t2 = time.perf_counter()
            rows[c] = {"top": float(e.values[0]), "residual": float(e.residuals[0]), "eig_products": e.matvecs,
                       "eig_seconds": t1 - t0, "trace": tr.trace, "trace_stderr": tr.stderr,
                       "trace_products": tr.matvecs, "trace_seconds": t2 - t1}
            print(key, c, rows[c], flush=True)
        entry = {"spec": spec, "parameters": obj.space.numel, "operators": rows}
        if not args.no_curvlinops:
            entry["curvlinops"] = _curvlinops(model, obj, data)
        result["models"][key] = entry
    print(json.dumps(result))


def _curvlinops(model, obj, data) -> dict:
    """Seconds per product of curvlinops' GGN and MC Fisher against ours, and their agreement."""
    try:
        from curvlinops import FisherMCLinearOperator, GGNLinearOperator
    except ImportError as e:
        return {"skipped": f"curvlinops not importable: {e}"}
    from lossprobe.curvature.operators import FisherOperator, GGNOperator

    params = [p for p in model.parameters() if p.requires_grad]
    x, y = data.x, data.y
    loss = torch.nn.CrossEntropyLoss()
    out = {}
    g = torch.Generator().manual_seed(1)
    v = torch.randn(obj.space.numel, generator=g)
    for name, cls, mine in (("ggn", GGNLinearOperator, GGNOperator(obj)),
                            ("fisher_mc", FisherMCLinearOperator, FisherOperator(obj, mc_samples=1))):
        try:
            op = cls(model, loss, params, [(x, y)], check_deterministic=False)
            op @ v  # warm-up
            t0 = time.perf_counter()
            theirs = op @ v
            t1 = time.perf_counter()
            mine.matvec(v.double())  # builds and caches the graph
            t2 = time.perf_counter()
            ours = mine.matvec(v.double())
            t3 = time.perf_counter()
            out[name] = {"curvlinops_seconds_per_product": t1 - t0, "lossprobe_seconds_per_product": t3 - t2,
                         "lossprobe_first_product_seconds": t2 - t1}
            if name == "ggn":
                out[name]["relative_difference"] = float((theirs.double() - ours).norm() / ours.norm())
        except Exception as e:  # a version that takes other arguments: say so, do not fail the benchmark
            out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    return out


if __name__ == "__main__":
    main()
