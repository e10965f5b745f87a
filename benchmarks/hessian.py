"""Benchmark: top Hessian eigenvalue and trace, lossprobe vs PyHessian, on identical data.

Workload: an MLP (default 784-64-64-10) briefly trained on Fashion-MNIST (2 epochs on
10,000 images), Hessian of the mean cross-entropy over 2,000 training images, eval mode.

Reference values are computed in float64 (model and data cast to double):
* top eigenvalue: scipy.sparse.linalg.eigsh on exact products (lossprobe's
  LinearOperator), which='LA', tol=1e-12;
* trace: Hutch++ with --ref-trace-products float64 products (a reference with its own
  standard error: the exact trace would need one product per parameter).
The compared runs use the float32 model, as users run them.

PyHessian (PyPI `pyhessian`, benchmark-only) is run as published: `hessian(model,
criterion, data=(x, y), cuda=False)`, `eigenvalues(maxIter=100, tol=1e-3)` (power
iteration) and `trace(maxIter=100, tol=1e-3)` (Hutchinson; its standard error is computed
here from the samples it returns, PyHessian reports none). lossprobe is run (a) with the
same number of products as PyHessian used, (b) with its defaults, and (c) the number of
Lanczos steps needed to match PyHessian's error is reported. Time per product is wall
time / products. Also reported: time per product of the two HVP methods (double backward
vs torch.func forward-over-reverse) with and without the cached gradient graph.

Multi-batch case (`multi_batch` in the JSON, skip with --no-multi-batch): a user MLP
784-128-10 (2 epochs on 10k training images) and the full 10,000-image Fashion-MNIST test set
in batches of 4,096 (three batches), as `lossprobe hessian --model mlp:784-128-10 --data
fashion-mnist:test` runs it. PyHessian gets the same batches as a DataLoader (its
full-dataset mode: forward, backward and double backward over every batch per product).
lossprobe keeps each batch's gradient graph within its memory budget (default: half the
available memory), so a product is one backward pass per batch. Reported: wall time,
products and relative error against eigsh (float64) for PyHessian at its defaults
(power iteration, maxIter=100, tol=1e-3), lossprobe at its defaults (`eigenvalues(k=1)`:
Lanczos to residual 1e-5 plus one product for the exact residual), and lossprobe with
PyHessian's number of products.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mlp:784-64-64-10", help="model spec (default: %(default)s)")
    ap.add_argument("--n", type=int, default=2000, help="images in the Hessian's data (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    ap.add_argument("--ref-trace-products", type=int, default=600,
                    help="float64 Hutch++ products for the reference trace (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-multi-batch", action="store_true", help="skip the multi-batch case")
    ap.add_argument("--multi-only", action="store_true", help="only the multi-batch case")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from lossprobe import Objective
    from lossprobe.curvature import hessian
    from lossprobe.curvature.algorithms import hutchpp, lanczos
    from lossprobe.data import fashion_mnist
    from lossprobe.models import build
    from lossprobe.training.loop import TrainConfig, fit

    ds = fashion_mnist()
    if args.multi_only:
        print(json.dumps({"benchmark": "hessian", "cores": os.cpu_count(), "torch_threads": args.threads,
                          "load_average_1min": os.getloadavg()[0], "multi_batch": multi_batch(args, ds),
                          "load_average_1min_after": os.getloadavg()[0]}))
        return
    model = build(args.model, seed=args.seed)
    fit(model, ds.train.subset(10_000, seed=1), None, TrainConfig(epochs=2, lr=1e-3, optimizer="adam"))
    model.eval()
    data = ds.train.subset(args.n, seed=2)
    obj = Objective(model, data, batch_size=args.n)
    P = obj.space.numel

    # --- reference in float64 ------------------------------------------------------------
    from scipy.sparse.linalg import eigsh

    m64 = build(args.model, seed=args.seed).double()
    m64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    obj64 = Objective(m64.eval(), (data.x.double(), data.y), batch_size=args.n)
    t = time.perf_counter()
    A64 = hessian.as_linear_operator(obj64)
    ref_top = float(eigsh(A64, k=1, which="LA", tol=1e-12, v0=np.ones(P))[0][0])
    ref_eig_products, ref_eig_s = A64.hessian.calls, time.perf_counter() - t
    t = time.perf_counter()
    H64 = hessian.HessianOperator(obj64)
    ref_tr = hutchpp(H64.counting(), matvecs=args.ref_trace_products, seed=12345)
    ref_tr_s = time.perf_counter() - t

    def rel(x, ref):
        return abs(x - ref) / abs(ref)

    # --- PyHessian -----------------------------------------------------------------------
    peer: dict = {"name": "pyhessian"}
    try:
        try:
            import pyhessian  # noqa: F401
        except ImportError:  # benchmark-only peer; --no-deps so it cannot replace the CPU torch
            import subprocess

            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "pyhessian"], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
        from pyhessian import hessian as PyHessian

        crit = torch.nn.CrossEntropyLoss()
        torch.manual_seed(args.seed)
        t = time.perf_counter()
        ph = PyHessian(model, crit, data=(data.x, data.y), cuda=False)
        setup = time.perf_counter() - t
        counter = {"n": 0}

        phmod = sys.modules["pyhessian.hessian"]  # the package re-exports the class under the same name

        orig = phmod.hessian_vector_product

        def counted(*a, **k):
            counter["n"] += 1
            return orig(*a, **k)

        phmod.hessian_vector_product = counted
        t = time.perf_counter()
        ev, _ = ph.eigenvalues(maxIter=100, tol=1e-3, top_n=1)
        eig_s = time.perf_counter() - t + setup
        eig_products = counter["n"]
        counter["n"] = 0
        t = time.perf_counter()
        samples = ph.trace(maxIter=100, tol=1e-3)
        tr_s = time.perf_counter() - t + setup
        tr_products = counter["n"]
        phmod.hessian_vector_product = orig
        tr_val = float(np.mean(samples))
        tr_se = float(np.std(samples, ddof=1) / np.sqrt(len(samples))) if len(samples) > 1 else None
        peer.update({
            "top_eigenvalue": float(ev[0]), "eig_rel_error": rel(float(ev[0]), ref_top), "eig_products": eig_products,
            "eig_seconds": eig_s, "eig_s_per_product": eig_s / max(eig_products, 1),
            "trace": tr_val, "trace_stderr_from_samples": tr_se, "trace_rel_error": rel(tr_val, ref_tr.trace),
            "trace_products": tr_products, "trace_seconds": tr_s, "trace_s_per_product": tr_s / max(tr_products, 1),
        })
        peer_ok = True
    except Exception as e:  # report honestly rather than hide it
        peer["error"] = f"{type(e).__name__}: {e}"
        peer_ok = False
        eig_products, tr_products = 20, 30

    # --- lossprobe -------------------------------------------------------------------------
    ours: dict = {"name": "lossprobe"}
    # (a) Lanczos with exactly PyHessian's product count (residual estimate: no extra products)
    H = hessian.HessianOperator(obj)
    t = time.perf_counter()
    op = H.counting()
    st = lanczos(op, steps=eig_products, seed=args.seed)
    theta_ritz, _ = st.ritz()
    a_s = time.perf_counter() - t
    ours["at_peer_products"] = {"products": op.calls, "top_eigenvalue": float(theta_ritz.max()),
                                "eig_rel_error": rel(float(theta_ritz.max()), ref_top), "seconds": a_s,
                                "s_per_product": a_s / op.calls}
    # (c) fewest Lanczos steps matching PyHessian's error (from one run, step by step)
    if peer_ok:
        target = peer["eig_rel_error"]
        H2 = hessian.HessianOperator(obj)
        op2 = H2.counting()
        st2, need = None, None
        for _ in range(eig_products):
            st2 = lanczos(op2, steps=1, seed=args.seed, state=st2)
            if rel(float(st2.ritz()[0].max()), ref_top) <= target:
                need = op2.calls
                break
        ours["products_to_match_peer_error"] = need
    # (b) defaults: eigenvalues(k=1) with exact residuals
    t = time.perf_counter()
    r = hessian.eigenvalues(obj, k=1, seed=args.seed)
    b_s = time.perf_counter() - t
    ours["default"] = {"top_eigenvalue": float(r.values[0]), "eig_rel_error": rel(float(r.values[0]), ref_top),
                       "residual": float(r.residuals[0]), "products": r.matvecs, "seconds": b_s,
                       "s_per_product": b_s / r.matvecs}
    # trace: Hutch++ with PyHessian's product count (rounded up to a multiple of 3), and Hutchinson
    m_pp = max(3, tr_products)  # exactly PyHessian's count
    t = time.perf_counter()
    tr = hessian.trace(obj, method="hutch++", matvecs=m_pp, seed=args.seed, per_layer=False)
    c_s = time.perf_counter() - t
    ours["trace_hutchpp"] = {"trace": tr.trace, "stderr": tr.stderr, "trace_rel_error": rel(tr.trace, ref_tr.trace),
                             "products": tr.matvecs, "seconds": c_s, "s_per_product": c_s / tr.matvecs}
    t = time.perf_counter()
    th = hessian.trace(obj, method="hutchinson", matvecs=tr_products, seed=args.seed, per_layer=False)
    d_s = time.perf_counter() - t
    ours["trace_hutchinson"] = {"trace": th.trace, "stderr": th.stderr, "trace_rel_error": rel(th.trace, ref_tr.trace),
                                "products": th.matvecs, "seconds": d_s}

    # --- HVP methods ------------------------------------------------------------------------
    hvp_times = {}
    v = torch.randn(P, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for method, cache in (("reverse", False), ("forward", False), ("reverse", True)):
        Hm = hessian.HessianOperator(obj, method=method, cache_graph=cache)
        Hm.matvec(v)  # warm-up (imports, graph)
        t = time.perf_counter()
        for _ in range(5):
            Hm.matvec(v)
        hvp_times[f"{method}{'_cached' if cache else ''}"] = (time.perf_counter() - t) / 5

    out = {
        "benchmark": "hessian",
        "workload": f"{args.model} ({P} parameters) after 2 epochs on 10k images; Hessian of mean CE over "
                    f"{args.n} Fashion-MNIST train images, eval mode, float32",
        "cores": os.cpu_count(), "torch_threads": args.threads,
        "load_average_1min": os.getloadavg()[0],
        "reference": {"top_eigenvalue": ref_top, "method": "eigsh(which='LA', tol=1e-12) on float64 products",
                      "products": ref_eig_products, "seconds": ref_eig_s,
                      "trace": ref_tr.trace, "trace_stderr": ref_tr.stderr,
                      "trace_method": f"Hutch++ with {args.ref_trace_products} float64 products", "trace_seconds": ref_tr_s},
        "pyhessian": peer,
        "lossprobe": ours,
        "hvp_seconds_per_product": hvp_times,
    }
    if peer_ok:
        out["eig_error_ratio_at_equal_products"] = peer["eig_rel_error"] / max(ours["at_peer_products"]["eig_rel_error"], 1e-300)
        out["time_per_product_ratio_lossprobe_over_pyhessian"] = ours["at_peer_products"]["s_per_product"] / peer["eig_s_per_product"]
    if not args.no_multi_batch:
        out["multi_batch"] = multi_batch(args, ds)
    out["load_average_1min_after"] = os.getloadavg()[0]
    print(json.dumps(out))


def _pyhessian():
    try:
        import pyhessian  # noqa: F401
    except ImportError:  # benchmark-only peer; --no-deps so it cannot replace the CPU torch
        import subprocess

        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "pyhessian"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    return sys.modules["pyhessian.hessian"] if "pyhessian.hessian" in sys.modules else __import__(
        "pyhessian.hessian", fromlist=["hessian"])


def multi_batch(args, ds) -> dict:
    """Top eigenvalue on the full test set in batches of 4096: lossprobe vs PyHessian vs eigsh."""
    from scipy.sparse.linalg import eigsh

    from lossprobe import Objective
    from lossprobe.curvature import hessian
    from lossprobe.curvature.algorithms import lanczos
    from lossprobe.models import build
    from lossprobe.training.loop import TrainConfig, fit

    spec, bs = "mlp:784-128-10", 4096
    model = build(spec, seed=args.seed)
    fit(model, ds.train.subset(10_000, seed=1), None, TrainConfig(epochs=2, lr=1e-3, optimizer="adam"))
    model.eval()
    data = ds.test
    n = len(data)

    def rel(x, ref):
        return abs(x - ref) / abs(ref)

    m64 = build(spec, seed=args.seed).double()
    m64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    obj64 = Objective(m64.eval(), (data.x.double(), data.y), batch_size=bs)
    t = time.perf_counter()
    A64 = hessian.as_linear_operator(obj64)
    P = A64.shape[0]
    ref = float(eigsh(A64, k=1, which="LA", tol=1e-12, v0=np.ones(P))[0][0])
    out: dict = {"workload": f"{spec} ({P} parameters) after 2 epochs on 10k images; Hessian of mean CE over "
                             f"the {n} Fashion-MNIST test images in batches of {bs} (3 batches), eval mode, float32",
                 "reference": {"top_eigenvalue": ref, "method": "eigsh(which='LA', tol=1e-12) on float64 products",
                               "products": A64.hessian.calls, "seconds": time.perf_counter() - t}}
    del A64, obj64

    # PyHessian on the same batches, at its defaults
    try:
        phmod = _pyhessian()
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.x, data.y), batch_size=bs,
                                             shuffle=False)
        torch.manual_seed(args.seed)
        t = time.perf_counter()
        ph = phmod.hessian(model, torch.nn.CrossEntropyLoss(), dataloader=loader, cuda=False)
        calls = {"n": 0}
        orig = ph.dataloader_hv_product

        def counted(v):
            calls["n"] += 1
            return orig(v)

        ph.dataloader_hv_product = counted
        ev, _ = ph.eigenvalues(maxIter=100, tol=1e-3, top_n=1)
        ph_s = time.perf_counter() - t
        out["pyhessian_default"] = {"top_eigenvalue": float(ev[0]), "rel_error": rel(float(ev[0]), ref),
                                    "products": calls["n"], "seconds": ph_s, "s_per_product": ph_s / calls["n"]}
        ph_products = calls["n"]
    except Exception as e:  # report honestly rather than hide it
        out["pyhessian_default"] = {"error": f"{type(e).__name__}: {e}"}
        ph_products = 10
    model.zero_grad(set_to_none=True)

    # lossprobe at its defaults (the graph cache within the default budget)
    obj = Objective(model, data, batch_size=bs)
    t = time.perf_counter()
    r = hessian.eigenvalues(obj, k=1, seed=args.seed)
    lp_s = time.perf_counter() - t
    out["lossprobe_default"] = {"top_eigenvalue": float(r.values[0]), "rel_error": rel(float(r.values[0]), ref),
                                "residual": float(r.residuals[0]), "products": r.matvecs, "seconds": lp_s}
    # lossprobe with PyHessian's number of products (Lanczos, estimated residuals: no extra product)
    t = time.perf_counter()
    H = hessian.HessianOperator(obj)
    op = H.counting()
    st = lanczos(op, steps=ph_products, seed=args.seed)
    top = float(st.ritz()[0].max())
    eq_s = time.perf_counter() - t
    out["lossprobe_equal_products"] = {"top_eigenvalue": top, "rel_error": rel(top, ref), "products": op.calls,
                                       "seconds": eq_s, "graph_cache": H.graphs.stats}
    # per-product cost: kept graphs vs rebuilt every product (PyHessian's way)
    v = torch.randn(H.n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    per = {}
    for name, kw in (("kept_graphs", {}), ("rebuilt", {"cache_graph": False})):
        Hm = hessian.HessianOperator(obj, **kw)
        Hm.matvec(v)
        t = time.perf_counter()
        for _ in range(3):
            Hm.matvec(v)
        per[name] = (time.perf_counter() - t) / 3
    out["s_per_product"] = per
    ph = out["pyhessian_default"]
    if "error" not in ph:
        out["pyhessian_s_per_product"] = ph["s_per_product"]
        out["wall_ratio_lossprobe_default_over_pyhessian_default"] = lp_s / ph["seconds"]
        out["error_ratio_pyhessian_over_lossprobe_default"] = ph["rel_error"] / max(
            out["lossprobe_default"]["rel_error"], 1e-300)
        out["error_ratio_at_equal_products"] = ph["rel_error"] / max(
            out["lossprobe_equal_products"]["rel_error"], 1e-300)
        out["per_product_ratio_kept_over_pyhessian"] = per["kept_graphs"] / ph["s_per_product"]
        out["target_met"] = bool(lp_s <= ph["seconds"] and out["error_ratio_pyhessian_over_lossprobe_default"] >= 100)
    return out


if __name__ == "__main__":
    main()
