"""Census of bad input: run many wrong invocations of every command and classify each outcome.

Each case runs `lossprobe ...` in a fresh process (tiny spiral checkpoints and
runs are prepared first, in a temporary folder) and is classified as

* one_line_error: exit status != 0 and stderr is exactly one line starting 'lossprobe: error:';
* traceback:      a Python traceback on stderr;
* one_line_warning: exit status 0 with one 'lossprobe: warning:' line, for the values the
                  issue asks to accept with a warning (--subset larger than the data);
* silent_accept:  exit status 0 (the bad input was taken);
* other:          anything else (a non-zero exit with several lines, or a timeout).

A few cases are not bad input but damage lossprobe must repair (a truncated file of a run
that is resumed); they expect exit 0 and count as 'recovered'. After every case the user's files planted in the output folders must
still be there ('foreign_files_lost' counts violations).

Prints one JSON line: counts per class, in scope and out of scope, per command, and the
cases that were not one-line errors. Options: --jobs N (parallel processes, default 2),
--list (print the cases and exit), --verbose, --spawn (a new interpreter per case instead of a
fork of this one, which has lossprobe and torch imported already: slower, same outcomes).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import pickle
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

M = "--model mlp:2-8-2 --data spiral:test"
SPACE_OK = """
[train]
epochs = 1
[params]
lr = { type = "float", low = 3e-3, high = 0.1, log = true }
width = { type = "int", low = 4, high = 8 }
depth = 1
"""
SEARCH = "--dataset spiral --method probe --budget 3 --init-probes 2 --probes-per-round 1 --init-full 1 --fraction 0.5 --probe-epochs 1"

# (command line with placeholders, scope) -- every case is in scope since the batch contract (issue 11) landed
CASES: list[tuple[str, str]] = [
    # --- the program itself
    ("", "in"), ("bogus", "in"), ("--bogus", "in"), ("study", "in"), ("study bogus", "in"), ("interpolate", "in"),
    # --- interpolate: checkpoints
    (f"interpolate {{T}}/missing.safetensors {{B}} {M} --out {{OUT}}", "in"),
    (f"interpolate {{DIR}} {{B}} {M} --out {{OUT}}", "in"),
    (f"interpolate {{EMPTY}} {{B}} {M} --out {{OUT}}", "in"),
    (f"interpolate {{TXT}} {{B}} {M} --out {{OUT}}", "in"),
    (f"interpolate {{EVIL}} {{B}} {M} --out {{OUT}}", "in"),
    (f"interpolate {{TRUNC}} {{B}} {M} --out {{OUT}}", "in"),
    (f"interpolate {{A}} {{WRONG}} {M} --out {{OUT}}", "in"),
    (f"interpolate {{A}} {{NAN}} {M} --out {{OUT}}", "in"),
    (f"interpolate {{NAN}} {{B}} {M} --out {{OUT}}", "in"),
    (f"interpolate {{A}} {{HUGE}} {M} --out {{OUT}}", "in"),
    (f"interpolate {{NOTSTATE}} {{B}} {M} --out {{OUT}}", "in"),
    (f"interpolate {{A}} {M} --out {{OUT}}", "in"),
    # --- interpolate: options
    (f"interpolate {{A}} {{B}} {M} --alphas 4 --out {{OUT}}", "in"),
    (f"interpolate {{A}} {{B}} {M} --alphas 0 --out {{OUT}}", "in"),
    (f"interpolate {{A}} {{B}} {M} --alphas -5 --out {{OUT}}", "in"),
    (f"interpolate {{A}} {{B}} {M} --alphas x --out {{OUT}}", "in"),
    (f"interpolate {{A}} {{B}} {M} --batch-size 0 --out {{OUT}}", "in"),
    (f"interpolate {{A}} {{B}} {M} --batch-size -3 --out {{OUT}}", "in"),
    (f"interpolate {{A}} {{B}} {M} --subset 0 --out {{OUT}}", "in"),
    (f"interpolate {{A}} {{B}} {M} --subset x --out {{OUT}}", "in"),
    (f"interpolate {{A}} {{B}} {M} --subset-seed x --out {{OUT}}", "in"),
    (f"interpolate {{A}} {{B}} {M} --bn bogus --out {{OUT}}", "in"),
    (f"interpolate {{A}} {{B}} {M}", "in"),
    # --- output folders (any command that writes --out)
    (f"interpolate {{A}} {{B}} {M} --out {{FILE}}", "in"),
    (f"interpolate {{A}} {{B}} {M} --out {{FOREIGN}}", "in"),
    (f"interpolate {{A}} {{B}} {M} --out {{FOREIGN}} --force", "in"),
    (f"interpolate {{A}} {{B}} {M} --out {{OTHERRUN}}", "in"),
    (f"interpolate {{A}} {{B}} {M} --out {{FILE}}/sub", "in"),
    (f"interpolate {{A}} {{B}} {M} --out /proc/lossprobe-out", "in"),
    (f"surface {{A}} {M} --steps 3 --out {{FOREIGN}} --force", "in"),
    (f"sharpness {{A}} {M} --out {{FOREIGN}} --force", "in"),
    (f"hessian {{A}} {M} --out {{FOREIGN}}", "in"),
    (f"align {{A}} {{B}} {M} --out {{FOREIGN}} --force", "in"),
    (f"curve {{A}} {{B}} {M} --out {{FOREIGN}} --force", "in"),
    ("study two-seeds --quick --out {FOREIGN} --force", "in"),
    ("study optimizers --quick --out {FOREIGN} --force", "in"),
    (f"search --space {{SPACE}} {SEARCH} --out {{FOREIGN}} --force", "in"),
    ("report {RUN} --out {FOREIGN}", "in"),
    # --- interpolate: data/model loading (out of scope)
    ("interpolate {A} {B} --model bogus --data spiral:test --out {OUT}", "in"),
    ("interpolate {A} {B} --model mlp:abc --data spiral:test --out {OUT}", "in"),
    ("interpolate {A} {B} --model mlp:2-8-3 --data spiral:test --out {OUT}", "in"),
    ("interpolate {A} {B} --model nonexistent.module:fn --data spiral:test --out {OUT}", "in"),
    ("interpolate {A} {B} --model os:getcwd --data spiral:test --out {OUT}", "in"),
    ("interpolate {A} {B} --model mlp:2-8-2 --data bogus:test --out {OUT}", "in"),
    ("interpolate {A} {B} --model mlp:2-8-2 --data spiral:bogus --out {OUT}", "in"),
    ("interpolate {A} {B} --model mlp:2-8-2 --data spiral:test --subset 999999999 --out {OUT}", "in"),
    ("interpolate {A} {B} --model mlp:2-8-2 --data fashion-mnist --out {OUT}", "in"),
    ("interpolate {A784} {B784} --model mlp:784-8-10 --data spiral:test --out {OUT}", "in"),
    # --- surface / slice
    (f"surface {{A}} {M} --steps 0 --out {{OUT}}", "in"),
    (f"surface {{A}} {M} --steps -1 --out {{OUT}}", "in"),
    (f"surface {{A}} {M} --steps 3 3 3 --out {{OUT}}", "in"),
    (f"surface {{A}} {M} --steps x --out {{OUT}}", "in"),
    (f"surface {{A}} {M} --steps 3 --span 1 -1 --out {{OUT}}", "in"),
    (f"surface {{A}} {M} --steps 3 --span nan 1 --out {{OUT}}", "in"),
    (f"surface {{A}} {M} --steps 3 --span -inf 1 --out {{OUT}}", "in"),
    (f"surface {{A}} {M} --steps 3 --span 1 1 --out {{OUT}}", "in"),
    (f"surface {{A}} {M} --steps 3 --span2 0 nan --out {{OUT}}", "in"),
    (f"surface {{A}} {M} --steps 3 --span 0 --out {{OUT}}", "in"),
    (f"surface {{A}} {M} --steps 3 --norm bogus --out {{OUT}}", "in"),
    (f"surface {{A}} {M} --steps 3 --towards {{A}} --out {{OUT}}", "in"),
    (f"surface {{A}} {M} --steps 3 --towards {{ACOPY}} --out {{OUT}}", "in"),
    (f"surface {{A}} {M} --steps 3 --towards {{T}}/missing.pt --out {{OUT}}", "in"),
    (f"surface {{A}} {M} --steps 3 --towards {{DIR}} --out {{OUT}}", "in"),
    (f"surface {{A}} {M} --steps 3 --towards {{WRONG}} --out {{OUT}}", "in"),
    (f"surface {{A}} {M} --steps 3 --towards {{NAN}} --out {{OUT}}", "in"),
    (f"surface {{NAN}} {M} --steps 3 --out {{OUT}}", "in"),
    (f"surface {{HUGE}} {M} --steps 3 --out {{OUT}}", "in"),
    (f"surface {{DIR}} {M} --steps 3 --out {{OUT}}", "in"),
    (f"surface {{A}} {M} --steps 3 --chunk-size 0 --out {{OUT}}", "in"),
    (f"surface {{A}} {M} --steps 3 --threads 0 --out {{OUT}}", "in"),
    (f"surface {{A}} {M} --steps 3 --backend bogus --out {{OUT}}", "in"),
    (f"surface {{A}} {M} --steps 3 --address 127.0.0.1:1 --out {{OUT}}", "in"),
    (f"surface {{A}} {M} --steps 3 --backend ray --address 127.0.0.1:1 --out {{OUT}}", "in"),
    (f"surface {{A}} {M} --steps 3 --backend ray --address 192.0.2.1:6379 --ray-timeout 2 --out {{OUT}}", "in"),
    (f"surface {{A}} {M} --steps 3 --backend ray --address nohostport --out {{OUT}}", "in"),
    (f"surface {{A}} {M} --steps 3 --backend ray --address host:port --out {{OUT}}", "in"),
    (f"surface {{A}} {M} --steps 3 --backend ray --address 127.0.0.1:1 --ray-timeout 0 --out {{OUT}}", "in"),
    (f"surface {{A}} {M} --steps 3 --backend ray --address 127.0.0.1:1 --ray-timeout nan --out {{OUT}}", "in"),
    (f"surface {{A}} {M} --steps 3 --out {{FILE}}", "in"),
    (f"surface {{A}} {M} --steps 3 --batch-size 0 --out {{OUT}}", "in"),
    (f"slice {{A}} {M} --steps 0 --out {{OUT}}", "in"),
    (f"slice {{A}} {M} --steps 3 3 --out {{OUT}}", "in"),
    (f"slice {{A}} {M} --steps 5 --span inf 1 --out {{OUT}}", "in"),
    (f"slice {{A}} {M} --steps 5 --towards {{A}} --out {{OUT}}", "in"),
    (f"slice {{NAN}} {M} --steps 5 --out {{OUT}}", "in"),
    (f"slice {{EVIL}} {M} --steps 5 --out {{OUT}}", "in"),
    (f"slice {{A}} {M} --steps 5 --norm x --out {{OUT}}", "in"),
    ("surface {A} --model mlp:2-8-2 --data spiral:nope --steps 3 --out {OUT}", "in"),
    ("slice {A} --model cnn:4 --data spiral:test --steps 3 --out {OUT}", "in"),
    # --- hessian
    (f"hessian {{A}} {M} --top-k 0 --out {{OUT}}", "in"),
    (f"hessian {{A}} {M} --top-k -1 --out {{OUT}}", "in"),
    (f"hessian {{A}} {M} --bottom-k -1 --out {{OUT}}", "in"),
    (f"hessian {{A}} {M} --tol 0 --out {{OUT}}", "in"),
    (f"hessian {{A}} {M} --tol nan --out {{OUT}}", "in"),
    (f"hessian {{A}} {M} --tol -1 --out {{OUT}}", "in"),
    (f"hessian {{A}} {M} --max-steps 0 --out {{OUT}}", "in"),
    (f"hessian {{A}} {M} --sigma-rel 0 --out {{OUT}}", "in"),
    (f"hessian {{A}} {M} --sigma-rel inf --out {{OUT}}", "in"),
    (f"hessian {{A}} {M} --trace --trace-method bogus --out {{OUT}}", "in"),
    (f"hessian {{A}} {M} --trace --trace-products 0 --out {{OUT}}", "in"),
    (f"hessian {{A}} {M} --density --probes 0 --out {{OUT}}", "in"),
    (f"hessian {{A}} {M} --density --steps 0 --out {{OUT}}", "in"),
    (f"hessian {{A}} {M} --params bogus --out {{OUT}}", "in"),
    (f"hessian {{A}} {M} --hvp bogus --out {{OUT}}", "in"),
    (f"hessian {{A}} {M} --top-k 500 --out {{OUT}}", "in"),
    (f"hessian {{NAN}} {M} --out {{OUT}}", "in"),
    (f"hessian {{HUGE}} {M} --top-k 1 --out {{OUT}}", "in"),
    (f"hessian {{DIR}} {M} --out {{OUT}}", "in"),
    (f"hessian {{TRUNC}} {M} --out {{OUT}}", "in"),
    (f"hessian {{A}} {M} --seed x --out {{OUT}}", "in"),
    # --- sharpness
    (f"sharpness {{A}} {M} --measures bogus --out {{OUT}}", "in"),
    (f"sharpness {{A}} {M} --epsilon 0 --out {{OUT}}", "in"),
    (f"sharpness {{A}} {M} --epsilon -1 --out {{OUT}}", "in"),
    (f"sharpness {{A}} {M} --epsilon nan --out {{OUT}}", "in"),
    (f"sharpness {{A}} {M} --epsilon inf --out {{OUT}}", "in"),
    (f"sharpness {{A}} {M} --rho 0 --out {{OUT}}", "in"),
    (f"sharpness {{A}} {M} --asam-rho -1 --out {{OUT}}", "in"),
    (f"sharpness {{A}} {M} --sigmas a,b --out {{OUT}}", "in"),
    (f"sharpness {{A}} {M} --sigmas=-1 --out {{OUT}}", "in"),
    (f"sharpness {{A}} {M} --sigmas , --out {{OUT}}", "in"),
    (f"sharpness {{A}} {M} --sigmas nan --out {{OUT}}", "in"),
    (f"sharpness {{A}} {M} --sigmas inf --out {{OUT}}", "in"),
    (f"sharpness {{A}} {M} --draws 0 --out {{OUT}}", "in"),
    (f"sharpness {{A}} {M} --pac-bound 0 --out {{OUT}}", "in"),
    (f"sharpness {{A}} {M} --pac-bound nan --out {{OUT}}", "in"),
    (f"sharpness {{A}} {M} --ascent-steps 0 --out {{OUT}}", "in"),
    (f"sharpness {{NAN}} {M} --out {{OUT}}", "in"),
    (f"sharpness {{HUGE}} {M} --measures noise --out {{OUT}}", "in"),
    (f"sharpness {{DIR}} {M} --out {{OUT}}", "in"),
    (f"sharpness {{EMPTY}} {M} --out {{OUT}}", "in"),
    # --- align
    (f"align {{A}} {{B}} {M} --method bogus --out {{OUT}}", "in"),
    (f"align {{A}} {{B}} {M} --alphas 4 --out {{OUT}}", "in"),
    (f"align {{A}} {{B}} {M} --alphas 1 --out {{OUT}}", "in"),
    (f"align {{A}} {{B}} {M} --calib-subset 0 --out {{OUT}}", "in"),
    (f"align {{A}} {{B}} {M} --restarts 0 --out {{OUT}}", "in"),
    (f"align {{A}} {{B}} {M} --bn bogus --out {{OUT}}", "in"),
    (f"align {{A}} {{NAN}} {M} --out {{OUT}}", "in"),
    (f"align {{A}} {{WRONG}} {M} --out {{OUT}}", "in"),
    (f"align {{A}} {{DIR}} {M} --out {{OUT}}", "in"),
    ("align {A} {B} --model mlp:2-8-2 --data spiral:test --calib-data bogus --method activations --out {OUT}", "in"),
    # --- curve
    (f"curve {{A}} {{B}} {M} --bends 0 --out {{OUT}}", "in"),
    (f"curve {{A}} {{B}} {M} --epochs 0 --out {{OUT}}", "in"),
    (f"curve {{A}} {{B}} {M} --lr 0 --out {{OUT}}", "in"),
    (f"curve {{A}} {{B}} {M} --lr nan --out {{OUT}}", "in"),
    (f"curve {{A}} {{B}} {M} --lr inf --out {{OUT}}", "in"),
    (f"curve {{A}} {{B}} {M} --points 4 --out {{OUT}}", "in"),
    (f"curve {{A}} {{B}} {M} --points 1 --out {{OUT}}", "in"),
    (f"curve {{A}} {{B}} {M} --kind bogus --out {{OUT}}", "in"),
    (f"curve {{A}} {{B}} {M} --optimizer bogus --out {{OUT}}", "in"),
    (f"curve {{A}} {{B}} {M} --train-batch-size 0 --out {{OUT}}", "in"),
    (f"curve {{A}} {{B}} {M} --train-subset 0 --out {{OUT}}", "in"),
    (f"curve {{A}} {{NAN}} {M} --out {{OUT}}", "in"),
    (f"curve {{EVIL}} {{B}} {M} --out {{OUT}}", "in"),
    ("curve {A} {B} --model mlp:2-8-2 --data spiral:test --train-data bogus --out {OUT}", "in"),
    # --- report
    ("report {T}/missing --out {OUT}", "in"),
    ("report {FILE} --out {OUT}", "in"),
    ("report {DIR} --out {OUT}", "in"),
    ("report {RUN} --out {FILE}", "in"),
    ("report {RUN} --out {RUN}", "in"),
    ("report {RUN}", "in"),
    ("report --out {OUT}", "in"),
    ("report {BADCONFIGRUN} --out {OUT}", "in"),
    ("report {EMPTYCONFIGRUN} --out {OUT}", "in"),
    # --- serve
    ("serve {T}/missing", "in"),
    ("serve {RUN}", "in"),
    ("serve {FILE}", "in"),
    ("serve {SITE} --port -1", "in"),
    ("serve {SITE} --port 70000", "in"),
    ("serve {SITE} --port x", "in"),
    ("serve {SITE} --host host.invalid", "in"),
    ("serve {SITE} --host 203.0.113.9", "in"),
    ("serve {SITE} --port {BUSYPORT}", "in"),
    # --- search
    (f"search --space {{T}}/missing.toml {SEARCH} --out {{OUT}}", "in"),
    (f"search --space {{DIR}} {SEARCH} --out {{OUT}}", "in"),
    (f"search --space {{BADTOML}} {SEARCH} --out {{OUT}}", "in"),
    (f"search --space {{EMPTYTOML}} {SEARCH} --out {{OUT}}", "in"),
    (f"search --space {{BADSPACE}} {SEARCH} --out {{OUT}}", "in"),
    (f"search --space {{SPACE}} {SEARCH} --fraction 0 --out {{OUT}}", "in"),
    (f"search --space {{SPACE}} {SEARCH} --fraction 1.5 --out {{OUT}}", "in"),
    (f"search --space {{SPACE}} {SEARCH} --fraction nan --out {{OUT}}", "in"),
    (f"search --space {{SPACE}} {SEARCH} --budget 0 --out {{OUT}}", "in"),
    (f"search --space {{SPACE}} {SEARCH} --budget 0.5 --out {{OUT}}", "in"),
    (f"search --space {{SPACE}} {SEARCH} --budget nan --out {{OUT}}", "in"),
    (f"search --space {{SPACE}} {SEARCH} --budget inf --out {{OUT}}", "in"),
    (f"search --space {{SPACE}} {SEARCH} --kappa nan --out {{OUT}}", "in"),
    (f"search --space {{SPACE}} {SEARCH} --kappa -1 --out {{OUT}}", "in"),
    (f"search --space {{SPACE}} {SEARCH} --kappa inf --out {{OUT}}", "in"),
    (f"search --space {{SPACE}} {SEARCH} --probe-epochs 0 --out {{OUT}}", "in"),
    (f"search --space {{SPACE}} {SEARCH} --init-probes 0 --out {{OUT}}", "in"),
    (f"search --space {{SPACE}} {SEARCH} --meta bogus --out {{OUT}}", "in"),
    (f"search --space {{SPACE}} {SEARCH} --storage foo://bar --out {{OUT}}", "in"),
    (f"search --space {{SPACE}} {SEARCH} --storage garbage --out {{OUT}}", "in"),
    (f"search --space {{SPACE}} {SEARCH} --storage postgresql://u@localhost:1/db --out {{OUT}}", "in"),
    (f"search --space {{SPACE}} {SEARCH} --storage sqlite:////nonexistent/dir/x.db --out {{OUT}}", "in"),
    (f"search --space {{SPACE}} {SEARCH} --storage sqlite:///{{DAMAGEDDB}} --out {{OUT}}", "in"),
    (f"search --space {{SPACE}} {SEARCH} --storage sqlite:///{{DIR}} --out {{OUT}}", "in"),
    (f"search --space {{SPACE}} {SEARCH} --address 127.0.0.1:1 --out {{OUT}}", "in"),
    (f"search --space {{SPACE}} {SEARCH} --backend ray --address 127.0.0.1:1 --out {{OUT}}", "in"),
    (f"search --space {{SPACE}} {SEARCH} --backend bogus --out {{OUT}}", "in"),
    (f"search --space {{SPACE}} {SEARCH} --n-train 0 --out {{OUT}}", "in"),
    (f"search --space {{SPACE}} {SEARCH} --seed x --out {{OUT}}", "in"),
    (f"search --space {{SPACE}} {SEARCH} --out {{FILE}}", "in"),
    (f"search --space {{SPACE}} {SEARCH} --dataset bogus --out {{OUT}}", "in"),
    (f"search --space {{SPACE}} {SEARCH} --dataset cifar10:{{T}}/nope --out {{OUT}}", "in"),
    # --- study two-seeds
    ("study two-seeds --epochs 0 --out {OUT}", "in"),
    ("study two-seeds --epochs -3 --out {OUT}", "in"),
    ("study two-seeds --seeds 1 1 --out {OUT}", "in"),
    ("study two-seeds --seeds a b --out {OUT}", "in"),
    ("study two-seeds --seeds 1 --out {OUT}", "in"),
    ("study two-seeds --config {T}/missing.toml --out {OUT}", "in"),
    ("study two-seeds --config {DIR} --out {OUT}", "in"),
    ("study two-seeds --config {BADTOML} --out {OUT}", "in"),
    ("study two-seeds --quick --config {NEGEPOCHS} --out {OUT}", "in"),
    ("study two-seeds --config {UNKNOWNKEY} --out {OUT}", "in"),
    ("study two-seeds --config {EPOCHSTR} --out {OUT}", "in"),
    ("study two-seeds --config {NANLR} --out {OUT}", "in"),
    ("study two-seeds --config {BADALPHAS} --out {OUT}", "in"),
    ("study two-seeds --config {BADBN} --out {OUT}", "in"),
    ("study two-seeds --config {BADOPT} --out {OUT}", "in"),
    ("study two-seeds --config {ZEROBATCH} --out {OUT}", "in"),
    ("study two-seeds --config {BADTOL} --out {OUT}", "in"),
    ("study two-seeds --quick --out {FILE}", "in"),
    ("study two-seeds --quick --out {OTHERRUN}", "in"),
    ("study two-seeds --quick --model bogus --out {OUT}", "in"),
    ("study two-seeds --quick --model mlp:2-8-2 --out {OUT}", "in"),
    # --- study width
    ("study width --widths 32 8 --out {OUT}", "in"),
    ("study width --widths 0 8 --out {OUT}", "in"),
    ("study width --widths 8 8 --out {OUT}", "in"),
    ("study width --pairs 0 --out {OUT}", "in"),
    ("study width --epochs 0 --out {OUT}", "in"),
    ("study width --train-subset 0 --out {OUT}", "in"),
    ("study width --config {DIR} --out {OUT}", "in"),
    ("study width --config {NEGEPOCHS} --quick --out {OUT}", "in"),
    # --- study architectures
    ("study architectures --epochs 0 --out {OUT}", "in"),
    ("study architectures --lr nan --out {OUT}", "in"),
    ("study architectures --lr -1 --out {OUT}", "in"),
    ("study architectures --hessian-subset 0 --out {OUT}", "in"),
    ("study architectures --threads 0 --out {OUT}", "in"),
    ("study architectures --config {DIR} --out {OUT}", "in"),
    ("study architectures --quick --config {NEGEPOCHS} --out {OUT}", "in"),
    ("study architectures --quick --model-a bogus --out {OUT}", "in"),
    # --- study optimizers
    ("study optimizers --dataset bogus --out {OUT}", "in"),
    ("study optimizers --dataset toy:bogus --out {OUT}", "in"),
    ("study optimizers --steps 0 --out {OUT}", "in"),
    ("study optimizers --optimizers bogus --out {OUT}", "in"),
    ("study optimizers --lr adam=nan --out {OUT}", "in"),
    ("study optimizers --lr nonsense --out {OUT}", "in"),
    ("study optimizers --threshold nan --out {OUT}", "in"),
    ("study optimizers --grid 0 --out {OUT}", "in"),
    ("study optimizers --config {DIR} --out {OUT}", "in"),
    # --- study search-benchmark
    ("study search-benchmark --budget 0 --out {OUT}", "in"),
    ("study search-benchmark --budget nan --out {OUT}", "in"),
    ("study search-benchmark --size 2 --out {OUT}", "in"),
    ("study search-benchmark --seeds 0 --out {OUT}", "in"),
    ("study search-benchmark --space {BADTOML} --out {OUT}", "in"),
    ("study search-benchmark --table-dir {FILE} --quick --out {OUT}", "in"),
    ("study search-benchmark --config {DIR} --out {OUT}", "in"),
]

# damage lossprobe must repair on resume: exit 0 expected
RECOVER: list[str] = [
    f"interpolate {{A}} {{B}} {M} --alphas 5 --out {{RUN}}",  # {RUN} with an empty summary.json and status.json
    f"surface {{A}} {M} --steps 3 --out {{SURF}}",  # {SURF} with an empty summary.json, a truncated chunk
]


def _prepare(t: Path) -> dict[str, str]:
    import numpy as np
    import torch

    from lossprobe.cli import main
    from lossprobe.models import build
    from lossprobe.training.checkpoints import save_checkpoint

    torch.set_num_threads(1)
    p = {"T": str(t)}
    for name, spec, seed in (("A", "mlp:2-8-2", 0), ("B", "mlp:2-8-2", 1), ("WRONG", "mlp:2-9-2", 0),
                             ("A784", "mlp:784-8-10", 0), ("B784", "mlp:784-8-10", 1)):
        save_checkpoint(build(spec, seed=seed), t / f"{name.lower()}.safetensors")
        p[name] = str(t / f"{name.lower()}.safetensors")
    shutil.copy(p["A"], t / "a_copy.safetensors")
    p["ACOPY"] = str(t / "a_copy.safetensors")
    m = build("mlp:2-8-2", seed=0)
    with torch.no_grad():
        next(m.parameters())[0, 0] = float("nan")
    save_checkpoint(m, t / "nan.safetensors")
    p["NAN"] = str(t / "nan.safetensors")
    m = build("mlp:2-8-2", seed=2)
    with torch.no_grad():
        for q in m.parameters():
            q.mul_(1e25)  # finite weights whose outputs overflow float32
    save_checkpoint(m, t / "huge.safetensors")
    p["HUGE"] = str(t / "huge.safetensors")
    data = Path(p["A"]).read_bytes()
    (t / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    p["TRUNC"] = str(t / "trunc.safetensors")
    (t / "empty.safetensors").write_bytes(b"")
    p["EMPTY"] = str(t / "empty.safetensors")
    (t / "text.pt").write_text("this is not a checkpoint\n")
    p["TXT"] = str(t / "text.pt")
    with open(t / "evil.pt", "wb") as f:
        pickle.dump({"w": _Evil()}, f)
    p["EVIL"] = str(t / "evil.pt")
    torch.save({"not": "tensors"}, t / "notstate.pt")
    p["NOTSTATE"] = str(t / "notstate.pt")
    (t / "a_dir").mkdir()
    p["DIR"] = str(t / "a_dir")
    (t / "a_file").write_text("a file\n")
    p["FILE"] = str(t / "a_file")
    # run directories
    argv = ["interpolate", p["A"], p["B"], "--model", "mlp:2-8-2", "--data", "spiral:test", "--alphas", "5"]
    assert main([*argv, "--out", str(t / "run")]) == 0
    p["RUN"] = str(t / "run")
    assert main(["sharpness", p["A"], "--model", "mlp:2-8-2", "--data", "spiral:test", "--measures", "sam",
                 "--out", str(t / "otherrun")]) == 0
    p["OTHERRUN"] = str(t / "otherrun")
    assert main(["surface", p["A"], "--model", "mlp:2-8-2", "--data", "spiral:test", "--steps", "3",
                 "--out", str(t / "surf")]) == 0
    p["SURF"] = str(t / "surf")
    for name, text in (("BADCONFIGRUN", "{not json"), ("EMPTYCONFIGRUN", "")):
        d = t / name.lower()
        shutil.copytree(t / "run", d)
        (d / "config.json").write_text(text)
        p[name] = str(d)
    assert main(["report", p["RUN"], "--out", str(t / "site")]) == 0
    p["SITE"] = str(t / "site")
    # TOML files
    files = {"SPACE": SPACE_OK, "BADTOML": "epochs = = 3\n", "EMPTYTOML": "",
             "BADSPACE": "[params]\nlr = { type = \"float\", low = 1.0, high = 0.1 }\n",
             "NEGEPOCHS": "epochs = -3\n", "UNKNOWNKEY": "learning_rate = 0.1\n", "EPOCHSTR": "epochs = \"two\"\n",
             "NANLR": "lr = nan\n", "BADALPHAS": "alphas = 4\n", "BADBN": "bn = \"sometimes\"\n",
             "BADOPT": "optimizer = \"magic\"\n", "ZEROBATCH": "batch_size = 0\n", "BADTOL": "barrier_tolerance = -1\n"}
    for k, v in files.items():
        (t / f"{k.lower()}.toml").write_text(v)
        p[k] = str(t / f"{k.lower()}.toml")
    (t / "damaged.db").write_bytes(b"this is not a SQLite database" * 100)
    p["DAMAGEDDB"] = str(t / "damaged.db")
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    p["BUSYPORT"] = str(busy.getsockname()[1])
    _KEEP.append(busy)
    del np
    return p


_KEEP: list = []


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/lossprobe-bad-inputs-pwned",))


def _foreign(t: Path, i: int) -> Path:
    d = t / f"foreign{i}"
    (d / "sub").mkdir(parents=True)
    (d / "thesis.tex").write_text("my thesis\n")
    (d / "sub" / "data.csv").write_text("1,2\n")
    return d


def _damage(p: dict[str, str]) -> None:
    for name in ("summary.json", "status.json"):
        Path(p["RUN"], name).write_text("")
    Path(p["SURF"], "summary.json").write_text("")
    chunk = sorted(Path(p["SURF"], "grid", "chunks").glob("chunk_*.npz"))[0]
    chunk.write_bytes(chunk.read_bytes()[:20])


def _command(tpl: str) -> str:
    words = tpl.split()
    if words[:1] == ["study"] and len(words) > 1 and not words[1].startswith("-"):
        return f"study {words[1]}"
    known = ("study", "interpolate", "surface", "slice", "hessian", "sharpness", "align", "curve", "report",
             "serve", "search")
    return words[0] if words and words[0] in known else "lossprobe"


def classify(rc: int | None, err: str) -> str:
    if rc is None:
        return "other"
    if "Traceback (most recent call last)" in err:
        return "traceback"
    if rc == 0:
        # a value the issue asks to accept with a warning (e.g. --subset beyond the data): one warning line
        if any(ln.startswith("lossprobe: warning:") for ln in err.splitlines()):
            return "one_line_warning"
        return "silent_accept"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if len(lines) == 1 and lines[0].startswith("lossprobe: error:"):
        return "one_line_error"
    return "other"


def run_case_forked(cmd: str, timeout: float) -> tuple[int | None, str, float]:
    """Like run_case, in a child forked from this process (lossprobe and torch already imported:
    several times faster on a busy machine). The child runs the console entry point as the
    interpreter would: its exit status, or a traceback and status 1 for an uncaught exception."""
    import signal
    import traceback

    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err_file:
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                devnull = os.open(os.devnull, os.O_RDWR)
                os.dup2(devnull, 0)
                os.dup2(devnull, 1)
                os.dup2(err_file.fileno(), 2)
                sys.stdout = open(1, "w", closefd=False)
                sys.stderr = open(2, "w", closefd=False)
                from lossprobe.cli import main as lp

                try:
                    code = lp(shlex.split(cmd))
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                except BaseException:  # noqa: BLE001 - what the interpreter would print
                    traceback.print_exc()
                    code = 1
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(int(code or 0))
        deadline = time.time() + timeout
        status = None
        while time.time() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        err_file.seek(0)
        err = err_file.read().decode(errors="replace")
    if status is None or not os.WIFEXITED(status):
        return None, err + f"\n(timed out after {timeout:g} s)", time.perf_counter() - t0
    return os.WEXITSTATUS(status), err, time.perf_counter() - t0


def run_case(cmd: str, timeout: float) -> tuple[int | None, str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-m", "lossprobe", *shlex.split(cmd)], capture_output=True, text=True,
                           timeout=timeout, env=env, stdin=subprocess.DEVNULL)
        return r.returncode, r.stderr, time.perf_counter() - t0
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return None, err + f"\n(timed out after {timeout:g} s)", time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--only", default=None, help="run only cases whose command line contains this text")
    ap.add_argument("--spawn", action="store_true",
                    help="run each case in a new interpreter (default: fork this one, lossprobe already imported)")
    args = ap.parse_args()
    runner = run_case if args.spawn else run_case_forked
    if not args.spawn:
        import torch

        torch.set_num_threads(1)
        import importlib

        for mod in ("lossprobe.cli", "lossprobe.report.site", "lossprobe.search.engine"):
            importlib.import_module(mod)  # imported once, before the forks
    t = Path(tempfile.mkdtemp(prefix="lossprobe-bad-inputs-"))
    try:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # the JSON line is all this script prints
            p = _prepare(t)
        cases = []
        for i, (tpl, scope) in enumerate(CASES):
            d = dict(p, OUT=str(t / f"out{i}"), FOREIGN=str(_foreign(t, i)))
            cases.append((tpl.format(**d), scope, _command(tpl), Path(d["FOREIGN"])))
        if args.only:
            cases = [c for c in cases if args.only in c[0]]
        if args.list:
            for c in cases:
                print(c[1], c[0])
            return 0
        results = []
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as ex:
            futs = {ex.submit(runner, c[0], args.timeout): c for c in cases}
            for f in concurrent.futures.as_completed(futs):
                cmd, scope, command, foreign = futs[f]
                rc, err, sec = f.result()
                lost = not ((foreign / "thesis.tex").is_file() and (foreign / "sub" / "data.csv").is_file())
                results.append({"cmd": cmd.replace(str(t), "$T"), "scope": scope, "command": command, "rc": rc,
                                "class": classify(rc, err), "seconds": round(sec, 1), "foreign_lost": lost,
                                "stderr": err.strip().splitlines()[-3:] if err.strip() else []})
                if args.verbose:
                    print(results[-1]["class"], results[-1]["cmd"], "|", " / ".join(results[-1]["stderr"])[-300:],
                          file=sys.stderr)
        _damage(p)
        recovered = []
        for tpl in ([] if args.only else RECOVER):
            cmd = tpl.format(**p)
            rc, err, _ = runner(cmd, args.timeout)
            recovered.append({"cmd": cmd.replace(str(t), "$T"), "rc": rc, "ok": rc == 0 and "Traceback" not in err,
                              "stderr": err.strip().splitlines()[-2:]})
    finally:
        shutil.rmtree(t, ignore_errors=True)
    classes = ("one_line_error", "one_line_warning", "traceback", "silent_accept", "other")

    def counts(rs):
        c = collections.Counter(r["class"] for r in rs)
        return {k: c.get(k, 0) for k in classes}

    ins = [r for r in results if r["scope"] == "in"]
    oos = [r for r in results if r["scope"] == "oos"]
    per_command = {}
    for r in ins:
        per_command.setdefault(r["command"], []).append(r)
    out = {
        "benchmark": "bad_inputs",
        "invocations": len(results),
        "commands": sorted({r["command"] for r in results}),
        "in_scope": {"n": len(ins), **counts(ins)},
        "per_command": {k: {"n": len(v), **counts(v)} for k, v in sorted(per_command.items())},
        "foreign_files_lost": sum(r["foreign_lost"] for r in results),
        "pickle_payload_ran": os.path.exists("/tmp/lossprobe-bad-inputs-pwned"),
        "recovered_after_damage": {"n": len(recovered), "ok": sum(r["ok"] for r in recovered)},
        "not_one_line_in_scope": [{k: r[k] for k in ("cmd", "class", "rc", "stderr")}
                                  for r in ins if r["class"] not in ("one_line_error", "one_line_warning")],
        "out_of_scope": {"n": len(oos), **counts(oos),
                         "not_one_line": [{k: r[k] for k in ("cmd", "class", "rc", "stderr")}
                                          for r in oos if r["class"] != "one_line_error"]},
        "recovery_failures": [r for r in recovered if not r["ok"]],
        "cores": os.cpu_count(),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
