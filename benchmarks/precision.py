"""Benchmark: the error of bfloat16 (and float16) models against float32 on the same weights.

Workload: a small GPT-2 from `transformers` (2 blocks, 128 wide, vocabulary 512, random
initialisation from the config, seeded; no download) trained for `--train-steps` Adam steps on
seeded sequences that repeat a short random motif (so the loss has structure: it falls from
log 512 ≈ 6.2 to about 1), 8 sequences of 64 tokens, the model's own causal-LM loss.

The half-precision model is the float32 model cast (`.to(torch.bfloat16)`); the float32
reference is that half-precision model cast back to float32, so both have the same weights and
the difference is the arithmetic alone (the weights' own rounding moves the loss further: that
is reported as `weights_rounding_*`). For each probe:

* surface 7×7 (filter-normalised random plane, the same seed): the largest error of a point
  relative to its loss, and relative to the surface's range (max − min);
* Hessian top eigenvalue (Lanczos, each dtype's default tolerance; float32 reference to 1e-5);
* trace (Hutch++, 30 products, the same probe vectors).

Prints ONE JSON line.

    python benchmarks/precision.py [--dtype bfloat16|float16] [--train-steps 150]
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch


def build(train_steps: int, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_embd=128, n_layer=2, n_head=4, vocab_size=512, n_positions=64, bos_token_id=0,
                     eos_token_id=0)
    model = GPT2LMHeadModel(cfg)
    g = torch.Generator().manual_seed(seed + 1)

    def batch(n):
        motif = torch.randint(0, 512, (n, 8), generator=g)
        x = motif.repeat(1, 8)  # 64 tokens: the motif eight times
        return {"input_ids": x, "labels": x}

    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(train_steps):
        loss = model(**batch(16)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, batch(8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"))
    ap.add_argument("--train-steps", type=int, default=150)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import lossprobe as lp
    from lossprobe.curvature import hessian

    t0 = time.perf_counter()
    m32_orig, data = build(args.train_steps)
    half = copy.deepcopy(m32_orig).to(getattr(torch, args.dtype))
    m32 = copy.deepcopy(half).float()  # the same weights in float32
    kw = dict(loss="model", batch_size=8)
    out = {"benchmark": "precision", "dtype": args.dtype, "parameters": sum(p.numel() for p in m32.parameters()),
           "train_steps": args.train_steps, "torch": torch.__version__}

    s32 = lp.surface(m32, data, steps=7, progress=False, **kw).loss
    sh = lp.surface(half, data, steps=7, progress=False, **kw).loss
    so = lp.surface(m32_orig, data, steps=7, progress=False, **kw).loss
    rng = float(s32.max() - s32.min())
    out["surface"] = {"center_loss": float(s32[3, 3]), "range": rng,
                      "max_rel_error": float(np.max(np.abs(sh - s32) / np.abs(s32))),
                      "max_error_over_range": float(np.max(np.abs(sh - s32)) / rng),
                      "weights_rounding_max_rel": float(np.max(np.abs(s32 - so) / np.abs(so)))}

    e32 = hessian.eigenvalues(lp.Objective(m32, data, **kw), k=1, tol=1e-5)
    eh = hessian.eigenvalues(lp.Objective(half, data, **kw), k=1)
    eo = hessian.eigenvalues(lp.Objective(m32_orig, data, **kw), k=1, tol=1e-5)
    out["top1"] = {"float32": float(e32.values[0]), args.dtype: float(eh.values[0]),
                   "rel_error": abs(float(eh.values[0]) - float(e32.values[0])) / abs(float(e32.values[0])),
                   "products": [e32.matvecs, eh.matvecs],
                   "weights_rounding_rel": abs(float(e32.values[0]) - float(eo.values[0])) / abs(float(eo.values[0]))}

    t32 = hessian.trace(lp.Objective(m32, data, **kw), matvecs=30)
    th = hessian.trace(lp.Objective(half, data, **kw), matvecs=30)
    out["trace"] = {"float32": t32.trace, "float32_stderr": t32.stderr, args.dtype: th.trace,
                    "rel_error": abs(th.trace - t32.trace) / abs(t32.trace)}
    out["seconds"] = time.perf_counter() - t0
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
