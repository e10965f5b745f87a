"""Benchmark: what `lossprobe.track.Tracker` at its default settings costs a training run.

Two workloads, each trained the same way with and without the tracker, interleaved
(without, with, without, with, ...) and repeated, in one process with the same torch threads:

* ``mlp``: the two-seed study's training (`lossprobe.studies.two_seeds`: MLP 784-256-256-10,
  Adam lr 1e-3, cosine, batch 128, 12 epochs on 50k Fashion-MNIST images, train and validation
  evaluated every epoch) through `fit`, the tracker called from its ``on_step`` hook with the
  fit's optimiser; probe data: 512 seeded training images.
* ``gpt2``: a tiny GPT-2 made from its config (2 layers, width 64, 4 heads, vocabulary 128,
  context 64) trained by the HuggingFace Trainer (AdamW lr 1e-3, batch 16, `--gpt2-steps`
  steps) on sequences of a seeded random bigram language, the tracker attached with
  `lossprobe.track.hf.attach`; probe data: 8 held-out sequences.

Both the wall time and the process's CPU time are reported: on a machine shared with other
jobs the wall time of one run varies by tens of percent with their load, the CPU time much less.
``tracker_share`` is the most load-proof number: the seconds the tracker's own clock counted in a
run (measurements, files, bookkeeping) over the rest of that same run's wall time.
The tracker runs at its defaults (``every='auto'``, probes lambda_max and grad_norm, tol 1e-3)
and writes its run directory (``out=``), so the timing includes its files. Prints one JSON line
per workload: the wall times without and with the tracker, the ratio of their medians, the
spread of the paired ratios, the tracker's own account of its time and its measurements.

Each workload starts with `--warmup` untimed runs without the tracker (the first run of a process
is slower: lazy initialisation, allocator, caches).

Usage: python benchmarks/track_overhead.py [--workload mlp|gpt2|all] [--repeats 2] [--warmup 1] [--threads 1]
"""

import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np
import torch

from lossprobe.data import fashion_mnist
from lossprobe.models import build
from lossprobe.runtime.threads import torch_threads
from lossprobe.studies.two_seeds import TwoSeedsConfig
from lossprobe.track import Tracker
from lossprobe.training.loop import fit


def mlp_run(track: bool, tmp: str) -> tuple[float, dict]:
    cfg = TwoSeedsConfig()
    ds = fashion_mnist(n_val=cfg.n_val, split_seed=cfg.split_seed)
    probe = ds.train.subset(512, seed=11)
    model = build(cfg.model, seed=cfg.seeds[0])
    box: dict = {}

    def on_step(state):
        if "tracker" not in box:
            box["tracker"] = Tracker(model, probe, optimizer=state.optimizer, out=os.path.join(tmp, "track-mlp"),
                                     force=True, quiet=True)
        box["tracker"].step(state.step)

    t0, c0 = time.perf_counter(), time.process_time()
    fit(model, ds.train, ds.val, cfg.train_config(0), on_step=on_step if track else None)
    info = {}
    if track:
        tr = box["tracker"]
        tr.close()
        info = _info(tr)
    return (time.perf_counter() - t0, time.process_time() - c0), info


def _bigram_sequences(n: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    nxt = torch.randint(0, vocab, (vocab, 4), generator=g)  # each token has 4 likely successors
    seq = torch.empty(n, length, dtype=torch.long)
    seq[:, 0] = torch.randint(0, vocab, (n,), generator=g)
    for t in range(1, length):
        pick = torch.randint(0, 4, (n,), generator=g)
        noise = torch.rand(n, generator=g) < 0.1
        seq[:, t] = torch.where(noise, torch.randint(0, vocab, (n,), generator=g), nxt[seq[:, t - 1], pick])
    return seq


def gpt2_run(track: bool, tmp: str, steps: int) -> tuple[float, dict]:
    import transformers

    transformers.logging.set_verbosity_error()
    cfg = transformers.GPT2Config(vocab_size=128, n_positions=64, n_embd=64, n_layer=2, n_head=4)
    data = _bigram_sequences(16 * steps + 8, 64, 128, seed=0)
    rows = [{"input_ids": r, "labels": r} for r in data[8:]]
    probe = {"input_ids": data[:8], "labels": data[:8]}
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    args = transformers.TrainingArguments(
        output_dir=os.path.join(tmp, "hf"), max_steps=steps, per_device_train_batch_size=16, learning_rate=1e-3,
        logging_steps=50, save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True, seed=0,
        dataloader_num_workers=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows)
    cb = None
    if track:
        from lossprobe.track.hf import attach

        cb = attach(trainer, probe, out=os.path.join(tmp, "track-gpt2"), force=True)
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train()
    return (time.perf_counter() - t0, time.process_time() - c0), (_info(cb.tracker) if cb is not None else {})


def _info(tr) -> dict:
    h = tr.history
    return {"measurements": len(h), "steps_measured": [int(s) for s in h["step"]],
            "tracker_seconds": round(tr._measure_seconds, 2), "tracker_own_share": round(h.meta["overhead"], 4),
            "lambda_max_last": round(float(h["lambda_max"][-1]), 3),
            "products_first": int(h["lambda_max_matvecs"][0]),
            "products_mean_warm": round(float(np.mean(h["lambda_max_matvecs"][h["warm"] == 1])), 2)
            if (h["warm"] == 1).any() else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=("mlp", "gpt2", "all"), default="all")
    ap.add_argument("--repeats", type=int, default=2, help="runs with and without the tracker each (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs without the tracker first (default 1)")
    ap.add_argument("--gpt2-steps", type=int, default=2000)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="lossprobe-track-bench-")
    try:
        with torch_threads(args.threads):
            for w in (["mlp", "gpt2"] if args.workload == "all" else [args.workload]):
                run = mlp_run if w == "mlp" else (lambda track, tmp: gpt2_run(track, tmp, args.gpt2_steps))
                without, with_, infos = [], [], []
                for _ in range(args.warmup):  # the first run of a process pays one-time costs (measured: 2-6 s
                    run(False, tmp)           # of CPU more); with it timed, 'without' would start slow
                load0 = os.getloadavg()[0]
                for _ in range(args.repeats):
                    without.append(run(False, tmp)[0])
                    t, info = run(True, tmp)
                    with_.append(t)
                    infos.append(info)
                wall0, wall1 = [t[0] for t in without], [t[0] for t in with_]
                cpu0, cpu1 = [t[1] for t in without], [t[1] for t in with_]
                print(json.dumps({
                    "benchmark": "track_overhead",
                    "workload": {"mlp": "two-seed MLP 784-256-256-10, Adam, 12 epochs on 50k Fashion-MNIST (fit)",
                                 "gpt2": f"tiny GPT-2 (2x64, vocab 128, ctx 64) from config, HF Trainer, "
                                         f"{args.gpt2_steps} steps of 16 sequences"}[w],
                    "tracker_settings": "defaults: every='auto' (overhead 0.02), probes lambda_max + grad_norm, "
                                        "tol 1e-3, out=",
                    "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "warmup_runs": args.warmup,
                    "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)],
                    "seconds_without": [round(t, 2) for t in wall0], "seconds_with": [round(t, 2) for t in wall1],
                    "ratio": round(float(np.median(wall1) / np.median(wall0)), 4),
                    "paired_ratios": [round(b / a, 4) for a, b in zip(wall0, wall1)],
                    "cpu_seconds_without": [round(t, 2) for t in cpu0], "cpu_seconds_with": [round(t, 2) for t in cpu1],
                    "cpu_ratio": round(float(np.median(cpu1) / np.median(cpu0)), 4),
                    "cpu_paired_ratios": [round(b / a, 4) for a, b in zip(cpu0, cpu1)],
                    # the tracker's own clock (its measurements, files and bookkeeping) against the rest of
                    # the same run: both numbers come from one run, so the load of other jobs moves them together
                    "tracker_share": [round(i["tracker_seconds"] / (t - i["tracker_seconds"]), 4)
                                      for i, t in zip(infos, wall1)],
                    "tracker_share_within_5_percent": all(i["tracker_seconds"] / (t - i["tracker_seconds"]) <= 0.05
                                                          for i, t in zip(infos, wall1)),
                    "within_5_percent": bool(np.median(wall1) / np.median(wall0) <= 1.05),
                    "cpu_within_5_percent": bool(np.median(cpu1) / np.median(cpu0) <= 1.05),
                    "tracker": infos[-1], "tracker_seconds_all": [i["tracker_seconds"] for i in infos],
                }), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
