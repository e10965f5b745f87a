"""Train a small LC-PFN (Adriaensen et al. 2023) on the package's own learning-curve prior, for curves of
up to 10 epochs: the curve extrapolator the search transfer experiment compares against (issue 26).

The `lcpfn` package (0.1.3) pins torch<=1.11 and downloads its trained weights from
ml.informatik.uni-freiburg.de, which this machine cannot reach; so the wheel is unpacked without its
dependencies into --pkg (two import lines patched for torch 2.x: MultiheadAttention & co. and the
is_causal argument), and a smaller model is trained here with `lcpfn.train_lcpfn` on the same prior
(`domhan_prior.sample_from_prior`: pow3, ilog2 and Janoschek curves), with seq_len 10 instead of 100.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_lcpfn.py --pkg runs/lcpfn_pkg \
        --out runs/search-claims/lcpfn.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pkg", required=True, help="folder holding the unpacked lcpfn package")
    p.add_argument("--out", required=True)
    p.add_argument("--seq-len", type=int, default=10)
    p.add_argument("--epochs", type=int, default=30, help="of 100 steps each")
    p.add_argument("--emsize", type=int, default=128)
    p.add_argument("--nlayers", type=int, default=3)
    args = p.parse_args(argv)
    sys.path.insert(0, args.pkg)
    import numpy as np
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    np.random.seed(0)
    import lcpfn
    from lcpfn import domhan_prior

    t0 = time.process_time()
    gb = lcpfn.create_get_batch_func(prior=domhan_prior.sample_from_prior)
    res = lcpfn.train_lcpfn(get_batch_func=gb, seq_len=args.seq_len, emsize=args.emsize, nlayers=args.nlayers,
                            num_borders=200, lr=1e-3, batch_size=100, epochs=args.epochs)
    model = res[2]
    torch.save(model, args.out)
    print(json.dumps({"lcpfn": args.out, "loss": float(res[0]), "cpu_seconds": round(time.process_time() - t0),
                      "seq_len": args.seq_len, "steps": args.epochs * 100}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
