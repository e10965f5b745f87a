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
import re
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

# --- the second round (issue 23): each kind of the issue, several cases each -----------------------
D2 = "--model mlp:2-8-2 --data"  # followed by a data spec
ROUND2: list[tuple[str, str]] = [
    # kind 4: silently wrong targets and losses
    (f"hessian {{A}} {D2} {{FLOATLAB}} --out {{OUT}}", "targets"),
    (f"surface {{A}} {D2} {{FLOATLAB}} --steps 3 --out {{OUT}}", "targets"),
    (f"sharpness {{A}} {D2} {{XX}}:x,x --measures sam --out {{OUT}}", "targets"),
    (f"interpolate {{A}} {{B}} {D2} {{XX}}:x,x --alphas 5 --out {{OUT}}", "targets"),
    (f"slice {{A}} {D2} {{PROBS}}:x,p --steps 3 --out {{OUT}}", "targets"),
    ("hessian {A21} --model mlp:2-8-1 --data {BCEBAD} --loss bce --out {OUT}", "targets"),
    (f"slice {{A}} {M} --loss {{USER}}/lossmod.py:mean1 --steps 3 --out {{OUT}}", "targets"),
    (f"hessian {{A}} {M} --loss {{USER}}/lossmod.py:mean1 --out {{OUT}}", "targets"),
    ("surface {IMG3} --model mlp:3072-8-3 --data imagefolder:{EMPTYCLS}:size=32 --steps 3 --out {OUT}", "targets"),
    (f"hessian {{BOOLCK}} {M} --out {{OUT}}", "targets"),
    (f"surface {{COMPLEXCK}} {M} --steps 3 --out {{OUT}}", "targets"),
    (f"interpolate {{A}} {{INTCK}} {M} --alphas 5 --out {{OUT}}", "targets"),
    # kind 5: tracebacks past the first batch
    (f"hessian {{A}} {D2} {{LATELAB}} --batch-size 64 --out {{OUT}}", "later_batch"),
    (f"surface {{A}} {D2} {{NEGLAB}} --steps 3 --batch-size 64 --out {{OUT}}", "later_batch"),
    (f"curve {{A}} {{B}} {D2} spiral:test --train-data {{LATELAB}} --epochs 1 --out {{OUT}}", "later_batch"),
    ("sharpness {CIFAR} --model mlp:3072-8-10 --data cifar10:{CIFARNEG}:test --measures sam --out {OUT}", "later_batch"),
    (f"slice {{A}} {M} --loss {{USER}}/lossmod.py:late --batch-size 100 --steps 3 --out {{OUT}}", "later_batch"),
    (f"hessian {{A}} {M} --forward {{USER}}/fwdmod.py:late --batch-size 100 --out {{OUT}}", "later_batch"),
    (f"slice {{A}} {D2} {{USER}}/datamod.py:stream --steps 3 --out {{OUT}}", "later_batch"),
    (f"hessian {{A}} {D2} {{USER}}/datamod.py:late_labels --batch-size 50 --out {{OUT}}", "later_batch"),
    (f"sharpness {{A}} {D2} {{USER}}/datamod.py:stream --measures sam --out {{OUT}}", "later_batch"),
    (f"hessian {{A}} {D2} {{USER}}/datamod.py:stream --curvature ggn --out {{OUT}}", "later_batch"),
    # kind 6: more tracebacks
    (f"@enospc=curve_state.pt curve {{A}} {{B}} {M} --epochs 1 --out {{OUT}}", "tracebacks"),
    ("@enospc=optimizer-1.pt study two-seeds --quick --model mlp:784-8-10 --epochs 1 --out {OUT}", "tracebacks"),
    (f"surface {{A}} {D2} {{SPARSE}} --steps 3 --out {{OUT}}", "tracebacks"),
    (f"hessian {{SPARSECK}} {M} --out {{OUT}}", "tracebacks"),
    (f"hessian {{METACK}} {M} --out {{OUT}}", "tracebacks"),
    ("hessian {A} --model mlp:2-100000000000-2 --data spiral:test --out {OUT}", "tracebacks"),
    ("hessian {A} --model cnn:4:hidden=100000000000000 --data spiral:test --out {OUT}", "tracebacks"),
    (f"hessian {{A}} {D2} {{USER}}/idxmod.py:load --out {{OUT}}", "tracebacks"),
    ("study two-seeds --config {DEEPTOML} --out {OUT}", "tracebacks"),
    (f"search --space {{DEEPTOML}} {SEARCH} --out {{OUT}}", "tracebacks"),
    ("report {DEEPRUN} --out {OUT}", "tracebacks"),
    (f"surface {{A}} {M} --steps 3 --directions pca:{{PCANAN}} --out {{OUT}}", "tracebacks"),
    (f"surface {{A}} {M} --steps 3 --directions pca:{{PCAINF}} --out {{OUT}}", "tracebacks"),
    ("hessian {A} --model {USER}/basexc.py:build --data spiral:test --out {OUT}", "tracebacks"),
    ("hessian {A} --model {USER}/exitmod.py:build --data spiral:test --out {OUT}", "tracebacks"),
    (f"hessian {{A}} {D2} {{USER}}/exitmod.py:data --out {{OUT}}", "tracebacks"),
    (f"slice {{A}} {M} --loss {{USER}}/exitmod.py:loss --steps 3 --out {{OUT}}", "tracebacks"),
    # kind 8: resources
    (f"hessian {{A}} {D2} {{BOMB}} --out {{OUT}}", "resources"),
    (f"hessian {{A}} {D2} {{LIAR}} --out {{OUT}}", "resources"),
    ("surface {IMG2} --model mlp:3072-8-2 --data imagefolder:{BIGIMG}:size=32 --steps 3 --out {OUT}", "resources"),
    # kind 9: messages that mislead (each must be one line that says what is wrong)
    ("hessian {A} --model {USER}/argmod.py:build --data spiral:test --out {OUT}", "messages"),
    (f"hessian {{A}} {D2} {{USER}}/argmod.py:data --out {{OUT}}", "messages"),
    (f"surface {{A}} {M} --steps 1 5 --out {{OUT}}", "messages"),
    (f"surface {{A}} {M} --steps 5 1 --out {{OUT}}", "messages"),
    (f"hessian {{A}} {M} --seed 99999999999999999999999 --out {{OUT}}", "messages"),
    (f"surface {{A}} {M} --seed -1 --out {{OUT}}", "messages"),
    (f"align {{A}} {{B}} {M} --seed -5 --out {{OUT}}", "messages"),
    (f"interpolate {{A}} {{B}} {M} --subset-seed -1 --out {{OUT}}", "messages"),
    (f"hessian {{A}} {D2} {{TRUNCDATA}} --out {{OUT}}", "messages"),
    (f"hessian {{A}} {D2} {{ZERODATA}} --out {{OUT}}", "messages"),
    (f"hessian {{A}} {D2} {{NANDATA}} --out {{OUT}}", "messages"),
    (f"hessian {{ZEROPT}} {M} --out {{OUT}}", "messages"),
    (f"surface {{A}} {M} --steps 3 --span auto:1e300 --out {{OUT}}", "messages"),
    ("hessian {A} --model mlp:2-16-2:tanh:gelu --data spiral:test --out {OUT}", "messages"),
    ("hessian {A} --model cnn:4:bn:bn --data spiral:test --out {OUT}", "messages"),
]
# not bad input: once refused or broken, these must now work (exit 0)
VALID2: list[str] = [
    f"surface {{A}} {M} --steps 3 --span -1e6 1e6 --out {{OUT}}",
    f"slice {{A}} {M} --steps 3 --span -.5 .5 --out {{OUT}}",
    f"hessian {{A}} {D2} {{IGNLAB}} --out {{OUT}}",
    f"hessian {{A}} {D2} {{INTFLOATLAB}} --out {{OUT}}",
    "report {BOMBRUN} --out {OUT}",  # the site leaves out the zip bomb (peak memory checked)
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


USER_CODE = {
    "lossmod.py": """
import torch
import torch.nn.functional as F
_calls = [0]
def mean1(out, y):
    return F.cross_entropy(out, y).reshape(1)  # a batch mean in disguise: shape [1]
def late(out, y):
    _calls[0] += 1
    if _calls[0] > 2:
        raise RuntimeError("my loss breaks on a later batch")
    return F.cross_entropy(out, y, reduction="none")
""",
    "fwdmod.py": """
_calls = [0]
def late(model, batch):
    _calls[0] += 1
    if _calls[0] > 2:
        raise IndexError("my forward breaks on a later batch")
    return model(batch[0])
""",
    "datamod.py": """
import torch
from lossprobe.data import two_spirals
def stream():
    s = two_spirals(n=200, seed=2)
    batches = [(s.x[i:i + 100], s.y[i:i + 100].clone()) for i in range(0, 400, 100)]
    batches[-1][1][-1] = 7  # a label out of range in the last batch of a stream
    return batches
def late_labels():
    s = two_spirals(n=200, seed=2)
    y = s.y.clone()
    y[350] = 9
    return (s.x, y)
""",
    "idxmod.py": """
from pathlib import Path
from lossprobe.data import read_idx
def load():
    x = read_idx(Path(__file__).parent / "truncated-idx3-ubyte")
    return (x, x)
""",
    "basexc.py": """
class Stop(BaseException):
    pass
def build():
    raise Stop("my builder raised a BaseException")
""",
    "exitmod.py": """
import sys
def build():
    sys.exit(3)
def data():
    sys.exit("no data today")
def loss(out, y):
    sys.exit(0)
""",
    "argmod.py": """
import argparse
p = argparse.ArgumentParser(prog="my-training-script")
p.add_argument("--lr", type=float, required=True)
args = p.parse_args()  # at import: it sees lossprobe's command line
def build():
    raise AssertionError("never reached")
def data():
    raise AssertionError("never reached")
""",
}


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels (its pixel data is a stub): enough for PIL's
    decompression-bomb check, which reads the header."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def _liar_npz(path: Path) -> None:
    """An .npz whose array header declares 4e9 float64 values in a file of a few hundred bytes."""
    import zipfile

    import numpy as np

    header = np.lib.format.header_data_from_array_1_0(np.zeros(1))
    header["shape"] = (4_000_000_000,)
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    buf.write(b"\0" * 64)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", buf.getvalue())
        z.writestr("y.npy", buf.getvalue())


def _prepare2(t: Path, p: dict[str, str]) -> None:
    """The inputs of the second round (see ROUND2, VALID2)."""
    import numpy as np
    import torch
    from PIL import Image

    from lossprobe.data import two_spirals
    from lossprobe.data.cifar import write_batch
    from lossprobe.models import build
    from lossprobe.training.checkpoints import save_checkpoint

    s = two_spirals(n=200, seed=2)
    x, y = s.x.numpy(), s.y.numpy()

    def npz(name, **arrays):
        np.savez(t / name, **arrays)
        p[name.split(".")[0].upper()] = str(t / name)

    npz("floatlab.npz", x=x, y=y.astype(np.float32) + 0.7)
    npz("intfloatlab.npz", x=x, y=y.astype(np.float32))
    npz("xx.npz", x=x)
    npz("probs.npz", x=x, p=np.where(np.arange(len(x))[:, None] == 390, [[1.2, -0.2]], [[0.5, 0.5]]).astype(np.float32))
    bad = y.copy()
    bad[300] = 5
    npz("latelab.npz", x=x, y=bad)
    bad = y.copy()
    bad[333] = -3
    npz("neglab.npz", x=x, y=bad)
    ign = y.copy()
    ign[::7] = -100
    npz("ignlab.npz", x=x, y=ign)
    npz("bcebad.npz", x=x, y=np.where(np.arange(len(x)) == 300, 3.0, y).astype(np.float32)[:, None])
    xn = x.copy()
    xn[300, 1] = np.nan
    npz("nandata.npz", x=xn, y=y)
    torch.save({"x": torch.from_numpy(x).to_sparse(), "y": torch.from_numpy(y)}, t / "sparse.pt")
    p["SPARSE"] = str(t / "sparse.pt")
    data = Path(p["RUN"], "interpolation.npz").read_bytes()
    (t / "truncdata.npz").write_bytes(data[: len(data) // 2])
    p["TRUNCDATA"] = str(t / "truncdata.npz")
    (t / "zerodata.pt").write_bytes(b"\0" * 4096)
    p["ZERODATA"] = str(t / "zerodata.pt")
    (t / "zero.pt").write_bytes(b"\0" * (1 << 20))
    p["ZEROPT"] = str(t / "zero.pt")
    # checkpoints
    a = build("mlp:2-8-2", seed=0)
    sd = a.state_dict()
    torch.save({k: v.bool() for k, v in sd.items()}, t / "bool.pt")
    torch.save({k: v.to(torch.complex64) for k, v in sd.items()}, t / "complex.pt")
    torch.save({k: (v * 10).long() for k, v in sd.items()}, t / "int.pt")
    torch.save({k: v.to_sparse() for k, v in sd.items()}, t / "sparseck.pt")
    torch.save({k: torch.empty(v.shape, device="meta") for k, v in sd.items()}, t / "metack.pt")
    for name in ("bool", "complex", "int", "sparseck", "metack"):
        p[(name if name.endswith("ck") else name + "ck").upper()] = str(t / f"{name}.pt")
    for name, spec in (("A21", "mlp:2-8-1"), ("IMG3", "mlp:3072-8-3"), ("IMG2", "mlp:3072-8-2"),
                       ("CIFAR", "mlp:3072-8-10")):
        save_checkpoint(build(spec, seed=0), t / f"{name.lower()}.safetensors")
        p[name] = str(t / f"{name.lower()}.safetensors")
    # image folders
    for cls in ("a", "b", "c"):
        (t / "emptycls" / cls).mkdir(parents=True)
        if cls != "b":
            for i in range(3):
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(t / "emptycls" / cls / f"{i}.png")
    p["EMPTYCLS"] = str(t / "emptycls")
    for cls in ("a", "b"):
        (t / "bigimg" / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(t / "bigimg" / cls / "small.png")
    (t / "bigimg" / "b" / "huge.png").write_bytes(_png_header(10000, 10000))
    p["BIGIMG"] = str(t / "bigimg")
    (t / "cifarneg").mkdir()
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = np.arange(20) % 10
        if f == "test_batch":
            labels[15] = -1
        write_batch(t / "cifarneg" / f, np.zeros((20, 3, 32, 32), np.uint8), labels)
    p["CIFARNEG"] = str(t / "cifarneg")
    # user code
    user = t / "usercode"
    user.mkdir()
    for name, text in USER_CODE.items():
        (user / name).write_text(text)
    (user / "truncated-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 10, 0, 0]))
    p["USER"] = str(user)
    # deep nesting, NaN trajectories, zip bombs
    (t / "deep.toml").write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    p["DEEPTOML"] = str(t / "deep.toml")
    deep = t / "deeprun"
    shutil.copytree(p["RUN"], deep)
    (deep / "summary.json").write_text("[" * 100_000 + "]" * 100_000)
    p["DEEPRUN"] = str(deep)
    n = sum(v.numel() for v in sd.values())
    traj = np.random.default_rng(0).normal(size=(4, n)).astype(np.float32)
    traj[2, 5] = np.nan
    np.save(t / "pcanan.npy", traj)
    traj[2, 5] = np.inf
    np.save(t / "pcainf.npy", traj)
    p["PCANAN"], p["PCAINF"] = str(t / "pcanan.npy"), str(t / "pcainf.npy")
    np.savez_compressed(t / "bomb.npz", x=np.zeros(300_000_000, np.uint8), y=np.zeros(1, np.int64))
    p["BOMB"] = str(t / "bomb.npz")
    _liar_npz(t / "liar.npz")
    p["LIAR"] = str(t / "liar.npz")
    bombrun = t / "bombrun"
    shutil.copytree(p["RUN"], bombrun)
    shutil.copy(t / "bomb.npz", bombrun / "extra.npz")
    shutil.copy(t / "liar.npz", bombrun / "liar.npz")
    p["BOMBRUN"] = str(bombrun)




class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/lossprobe-bad-inputs-pwned",))


# --- stale resume: change each kind of input between a run and its resume -----------------------
MODEL_CODE = "from lossprobe.models import mlp\ndef build():\n    return mlp([2, 8, 2])\n"
DATA_CODE = "from lossprobe.data import two_spirals\ndef load():\n    s = two_spirals(n=200, seed=2)\n    return (s.x, s.y)\n"
LOSS_CODE = ("import torch.nn.functional as F\ndef ce(out, y):\n    return F.cross_entropy(out, y, reduction='none')\n")
FORWARD_CODE = "def fwd(model, batch):\n    return model(batch[0])\n"
SPACE_S = SPACE_OK


def _stale_cases(t: Path, p: dict[str, str]) -> list[dict]:
    """Each: a command run to the end, one input changed, the same command again (which must be
    refused in one line naming the input); `partial` marks the run unfinished before the change,
    as a kill would leave it."""
    import numpy as np
    from PIL import Image

    from lossprobe.data import two_spirals

    d = t / "stale"
    d.mkdir()

    def copy(src: str, name: str) -> str:
        shutil.copy(src, d / name)
        return str(d / name)

    def write(name: str, text: str) -> str:
        (d / name).write_text(text)
        return str(d / name)

    def overwrite_with(path: str, src: str):
        return lambda: shutil.copy(src, path)

    def append(path: str, text: str):
        return lambda: Path(path).write_text(Path(path).read_text() + text)

    def bump_npz(path: str, key: str, row: int):
        def f():
            z = dict(np.load(path))
            z[key] = z[key].copy()
            z[key][row] += 1
            np.savez(path, **z)
        return f

    s = two_spirals(n=200, seed=2)
    np.savez(d / "data.npz", x=s.x.numpy(), y=s.y.numpy())
    out = lambda name: str(d / f"out-{name}")  # noqa: E731
    ck = {k: copy(p["A"], f"{k}.safetensors") for k in ("hess", "hesspart", "sharp", "interp", "surf", "model")}
    b2 = copy(p["B"], "towards.safetensors")
    traj = np.random.default_rng(1).normal(size=(4, 42)).astype(np.float32)
    np.save(d / "traj.npy", traj)
    (d / "images" / "a").mkdir(parents=True)
    (d / "images" / "b").mkdir(parents=True)
    for c in ("a", "b"):
        for i in range(2):
            Image.fromarray(np.full((8, 8, 3), 60 * i + (c == "b") * 20, np.uint8)).save(d / "images" / c / f"{i}.png")
    datamod, lossmod = write("datamod.py", DATA_CODE), write("lossmod.py", LOSS_CODE)
    modelmod, fwdmod = write("modelmod.py", MODEL_CODE), write("fwdmod.py", FORWARD_CODE)
    space = write("space.toml", SPACE_S)
    toyconf = write("toy.toml", "steps = 20\n")
    img = copy(p["IMG2"], "img.safetensors")
    cases = [
        ("checkpoint (hessian, complete)", f"hessian {ck['hess']} {M} --top-k 1 --out {out('hess')}",
         overwrite_with(ck["hess"], p["B"]), False),
        ("checkpoint (hessian, killed after the eigenvalues)",
         f"hessian {ck['hesspart']} {M} --top-k 1 --trace --trace-products 9 --out {out('hesspart')}",
         overwrite_with(ck["hesspart"], p["B"]), True),
        ("checkpoint (sharpness)", f"sharpness {ck['sharp']} {M} --measures sam --out {out('sharp')}",
         overwrite_with(ck["sharp"], p["B"]), False),
        ("checkpoint A (interpolate)", f"interpolate {ck['interp']} {p['B']} {M} --alphas 5 --out {out('interp')}",
         overwrite_with(ck["interp"], p["B"]), False),
        ("data file, a row beyond the first 256 (surface)",
         f"surface {ck['surf']} --model mlp:2-8-2 --data {d / 'data.npz'} --steps 3 --out {out('data')}",
         bump_npz(str(d / "data.npz"), "x", 300), True),
        ("data module", f"hessian {p['A']} --model mlp:2-8-2 --data {datamod}:load --top-k 1 --out {out('datamod')}",
         append(datamod, "# changed\n"), False),
        ("loss module", f"slice {p['A']} {M} --loss {lossmod}:ce --steps 3 --out {out('lossmod')}",
         append(lossmod, "# changed\n"), True),
        ("model module", f"hessian {ck['model']} --model {modelmod}:build --data spiral:test --top-k 1 "
         f"--out {out('modelmod')}", append(modelmod, "# changed\n"), False),
        ("forward module", f"sharpness {p['A']} {M} --forward {fwdmod}:fwd --measures sam --out {out('fwdmod')}",
         append(fwdmod, "# changed\n"), False),
        ("towards: checkpoint (surface)", f"surface {p['A']} {M} --steps 3 --directions towards:{b2} "
         f"--out {out('towards')}", overwrite_with(b2, p["A"]), True),
        ("pca: trajectory (surface)", f"surface {p['A']} {M} --steps 3 --directions pca:{d / 'traj.npy'} "
         f"--out {out('pca')}", lambda: np.save(d / "traj.npy", traj * 2), True),
        ("image folder", f"slice {img} --model mlp:3072-8-2 --data imagefolder:{d / 'images'}:size=32 --steps 3 "
         f"--out {out('images')}", lambda: Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(
             d / "images" / "a" / "0.png"), False),
        ("search space file (config)", f"search --space {space} {SEARCH} --out {out('space')}",
         lambda: Path(space).write_text(SPACE_S.replace("high = 8", "high = 9")), False),
        ("study --config file (config)", f"study optimizers --dataset toy:rosenbrock --quick --no-site "
         f"--config {toyconf} --out {out('toy')}", lambda: Path(toyconf).write_text("steps = 30\n"), False),
    ]
    return [{"name": n, "cmd": c, "change": f, "partial": part} for n, c, f, part in cases]


def _unfinish(run: Path) -> None:
    """Leave `run` as a kill part-way would: not complete, its last stage not done."""
    st_file = run / "status.json"
    try:
        st = json.loads(st_file.read_text())
    except (OSError, ValueError):
        return
    st["complete"] = False
    if st.get("done"):
        st["done"] = st["done"][:-1]
    st_file.write_text(json.dumps(st))
    (run / "summary.json").unlink(missing_ok=True)
    chunks = sorted((run / "grid" / "chunks").glob("chunk_*.npz")) if (run / "grid").is_dir() else []
    for c in chunks[len(chunks) // 2:]:
        c.unlink()


def run_stale(t: Path, p: dict[str, str], runner, timeout: float) -> list[dict]:
    out = []
    for case in _stale_cases(t, p):
        rc0, err0, _ = runner(case["cmd"], timeout)
        rc1, err1, _ = runner(case["cmd"], timeout)  # unchanged: a valid resume must go through
        run = Path(shlex.split(case["cmd"])[-1])
        if case["partial"]:
            _unfinish(run)
        case["change"]()
        rc2, err2, _ = runner(case["cmd"], timeout)
        cls = classify(rc2, err2)
        out.append({"name": case["name"], "cmd": case["cmd"], "first_run_ok": rc0 == 0, "valid_resume_ok": rc1 == 0,
                    "class": "stale_resume" if cls in ("silent_accept", "one_line_warning") else cls,
                    "names_the_change": "changed since" in err2 or "other options" in err2,
                    "stderr": (err2 if rc0 == 0 else err0).strip().splitlines()[-1:]})
    return out


# --- foreign files: every way a user's folder can look like a run --------------------------------
def _user_files(d: Path) -> dict[str, bytes]:
    return {str(f.relative_to(d)): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file()} if d.is_dir() else {}


def _plant(d: Path, extra: dict[str, str] | None = None) -> dict[str, bytes]:
    (d / "sub").mkdir(parents=True, exist_ok=True)
    (d / "thesis.tex").write_text("my thesis\n")
    (d / "sub" / "data.csv").write_text("1,2\n")
    for name, text in (extra or {}).items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)
    return _user_files(d)


FOREIGN_WAYS = ("copied-config-and-environment", "copied-config-summary-status", "marker-with-other-text",
                "marker-is-a-folder", "lock-with-user-text", "copied-site-manifest", "symlink-to-user-folder",
                "out-dot-in-user-folder")


def _foreign_folder(t: Path, p: dict[str, str], way: str, i: int) -> tuple[str, Path, str | None]:
    """(--out, the folder holding the user's files, cwd) for one way a folder can look like a run."""
    d = t / "foreign2" / f"{i:03d}-{way}"
    run, site = Path(p["RUN"]), Path(p["SITE"])
    extra: dict[str, str] = {}
    if way == "copied-config-and-environment":
        extra = {n: (run / n).read_text() for n in ("config.json", "environment.json")}
    elif way == "copied-config-summary-status":
        extra = {n: (run / n).read_text() for n in ("config.json", "summary.json", "status.json", "report.md")}
    elif way == "marker-with-other-text":
        extra = {".lossprobe-run": "my notes on the run\n"}
    elif way == "marker-is-a-folder":
        extra = {".lossprobe-run/notes.txt": "mine\n"}
    elif way == "lock-with-user-text":
        extra = {".lossprobe.lock": "my lock notes\n"}
    elif way == "copied-site-manifest":
        extra = {".lossprobe-site": (site / ".lossprobe-site").read_text(), "index.html": "<p>my page</p>\n"}
    _plant(d, extra)
    if way == "symlink-to-user-folder":
        link = t / "foreign2" / f"{i:03d}-link"
        os.symlink(d, link)
        return str(link), d, None
    if way == "out-dot-in-user-folder":
        return ".", d, str(d)
    return str(d), d, None


def _foreign_commands(p: dict[str, str]) -> list[str]:
    return [
        f"interpolate {p['A']} {p['B']} {M} --alphas 5",
        f"surface {p['A']} {M} --steps 3",
        f"slice {p['A']} {M} --steps 3",
        f"hessian {p['A']} {M} --top-k 1",
        f"sharpness {p['A']} {M} --measures sam",
        f"align {p['A']} {p['B']} {M} --alphas 3",
        f"curve {p['A']} {p['B']} {M} --epochs 1",
        f"search --space {p['SPACE']} {SEARCH}",
        "study two-seeds --quick --no-site",
        "study optimizers --dataset toy:rosenbrock --quick --no-site",
        "study width --quick --no-site",
        "study architectures --quick --no-site",
        f"report {p['RUN']}",
    ]


def foreign_cases(t: Path, p: dict[str, str]) -> list[dict]:
    """Every command, every way a folder can look like a run, with and without --force; and the
    inputs of a command inside the run directory that --force would move."""
    import numpy as np

    cases = []
    i = 0
    for base in _foreign_commands(p):
        for way in FOREIGN_WAYS:
            for force in ("", " --force"):
                if force and base.startswith("report"):
                    continue  # report has no --force
                out, folder, cwd = _foreign_folder(t, p, way, i)
                cmd = f"{base} --out {out}{force}"
                cases.append({"cmd": (f"@cwd={cwd} " if cwd else "") + cmd, "folder": folder,
                              "files": _user_files(folder), "way": way})
                i += 1
    # a run directory that holds an input of the command: --force must not move it
    for k, (base, inside) in enumerate([
        (f"surface {p['A']} {M} --steps 3 --directions towards:{{RUN}}/b.safetensors", "b.safetensors"),
        (f"hessian {{RUN}}/a.safetensors {M} --top-k 1", "a.safetensors"),
        (f"slice {p['A']} --model mlp:2-8-2 --data {{RUN}}/data.npz --steps 3", "data.npz"),
        (f"hessian {p['A']} --model {{RUN}}/modelmod.py:build --data spiral:test --top-k 1", "modelmod.py"),
    ]):
        run = t / "foreign2" / f"inputs-{k}"
        shutil.copytree(p["RUN"], run)
        shutil.copy(p["B"], run / "b.safetensors")
        shutil.copy(p["A"], run / "a.safetensors")
        np.savez(run / "data.npz", x=np.zeros((4, 2), "float32"), y=np.zeros(4, "int64"))
        (run / "modelmod.py").write_text(MODEL_CODE)
        cases.append({"cmd": base.replace("{RUN}", str(run)) + f" --out {run} --force", "folder": run,
                      "files": {inside: (run / inside).read_bytes()}, "way": "input-inside-out"})
    # --out .. from a run's subfolder and --out . inside a run, with --force: the run moves whole
    for k, (rel, cwd_sub) in enumerate([("..", "figures"), (".", "")]):
        run = t / "foreign2" / f"whole-{k}"
        shutil.copytree(p["OTHERRUN"], run)
        cmd = f"@cwd={run / cwd_sub} interpolate {p['A']} {p['B']} {M} --alphas 5 --out {rel} --force"
        cases.append({"cmd": cmd, "folder": None, "files": {}, "way": f"out-{rel}-force", "whole_run": run})
    return cases


def check_foreign(case: dict) -> dict:
    """The user's files as they were (content and place), and a run moved aside moved whole."""
    if case.get("whole_run") is not None:
        run = case["whole_run"]
        olds = sorted(run.parent.glob(run.name + ".old-*"))
        moved_whole = len(olds) == 1 and (olds[0] / "config.json").is_file() and (olds[0] / "figures").is_dir() \
            and not (run / "figures" / "figures").exists()
        return {"lost": 0 if moved_whole else 1}
    now = _user_files(case["folder"])
    lost = sum(1 for k, v in case["files"].items() if now.get(k) != v)
    return {"lost": lost}


# --- serve: requests that must never reach a file (or crash the server) --------------------------
SERVE_PATHS = ["/.lossprobe.lock", "/.lossprobe-site", "/../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt",
               "/index.html%00.txt", "/%00", "/runs/%2E%2E/%2E%2E/secret.txt", "//etc/passwd", "/link.txt",
               "/%c0%ae%c0%ae/secret.txt", "/..\\secret.txt", "/runs/.hidden", "/assets/../../secret.txt",
               "/%ff%fe", "/runs"]


def run_serve(t: Path, p: dict[str, str]) -> list[dict]:
    """GET each of SERVE_PATHS from `serve` on a copy of the site (a link to a secret inside it,
    a dot-file), then again after the site folder was replaced by a link to its parent."""
    import http.client
    import io
    import threading

    from lossprobe.cli.serve import make_server

    site = t / "serve" / "site"
    shutil.copytree(p["SITE"], site)
    (t / "serve" / "secret.txt").write_text("secret\n")
    os.symlink(t / "serve" / "secret.txt", site / "link.txt")
    (site / "runs" / ".hidden").write_text("hidden\n")
    server = make_server(site, port=0, quiet=True)
    errors = io.StringIO()
    server.handle_error = lambda request, address: errors.write("exception\n")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]

    def get(path):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            c.putrequest("GET", path, skip_accept_encoding=True)
            c.endheaders()
            r = c.getresponse()
            body = r.read()
            return r.status, body
        except Exception as e:  # noqa: BLE001 - the server closed the connection: it failed
            return None, str(e).encode()
        finally:
            c.close()

    out = []
    for when in ("as built", "after the site folder became a link to its parent"):
        if when.startswith("after"):
            os.rename(site, t / "serve" / "site-real")
            os.symlink(t / "serve", site)
        for path in SERVE_PATHS + (["/secret.txt"] if when.startswith("after") else []):
            status, body = get(path)
            leaked = b"secret" in body or b"hidden" in body or (status == 200 and path != "/runs")
            out.append({"path": path, "when": when, "status": status,
                        "class": "traceback" if status is None or status >= 500 else
                                 ("silent_accept" if leaked else "refused")})
        ok, body = get("/index.html")
        out.append({"path": "/index.html", "when": when, "status": ok,
                    "class": "refused" if ok == 200 and b"<html" in body.lower() else "other"})
    server.shutdown()
    server.server_close()
    if errors.getvalue():
        out.append({"path": "(server)", "when": "", "status": None, "class": "traceback"})
    return out


# --- Ctrl-C in the first seconds ---------------------------------------------------------------
def run_interrupts(p: dict[str, str], timeout: float) -> list[dict]:
    import signal

    out = []
    for delay in (0.1, 0.3, 0.6, 1.0, 2.0, 4.0):
        proc = subprocess.Popen([sys.executable, "-m", "lossprobe", "surface", p["A"], *M.split(), "--steps", "21",
                                 "--out", str(Path(p["T"]) / f"interrupt-{delay}")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and "%|" not in ln]
        # a Ctrl-C while the interpreter itself starts (site, .pth files), before any of lossprobe's
        # code runs, gets Python's own traceback: out of lossprobe's reach, counted apart
        frames = [f for f in re.findall(r'File "([^"]+)"', err) if "lossprobe" in f and "__editable__" not in f]
        before = "Traceback" in err and all(f.endswith(os.path.join("lossprobe", "__init__.py")) for f in frames) \
            and (not frames or "import _start" in err)  # at most the line that installs the handler
        cls = "interpreter_startup" if before else "traceback" if "Traceback" in err else (
            "one_line_error" if proc.returncode == 130 and lines and lines[-1].startswith("lossprobe: interrupted")
            else ("finished" if proc.returncode == 0 else "other"))
        out.append({"delay": delay, "rc": proc.returncode, "class": cls, "stderr": lines[-1:]})
    return out


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
    # the directions kept for a resume: one of the wrong shape, one truncated (issue 23)
    info = json.loads(Path(p["SURF"], "directions.json").read_text())
    Path(p["SURF"], "directions.json").write_text(json.dumps({**info, "directions": [1, 2, 3]}))
    vf = Path(p["SURF"], "directions.safetensors")
    vf.write_bytes(vf.read_bytes()[:40])


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
    # one error line, after the progress bars of the work done before it (a full disk mid-run)
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and not PROGRESS.search(ln)]
    if len(lines) == 1 and lines[0].startswith("lossprobe: error:"):
        return "one_line_error"
    return "other"


PROGRESS = re.compile(r"\d+%\||/s\]\s*$|\[\d\d:\d\d")  # tqdm's bars


def run_case_forked(cmd: str, timeout: float) -> tuple[int | None, str, float]:
    """Like run_case, in a child forked from this process (lossprobe and torch already imported:
    several times faster on a busy machine). The child runs the console entry point as the
    interpreter would: its exit status, or a traceback and status 1 for an uncaught exception."""
    import signal
    import traceback

    t0 = time.perf_counter()
    full = cmd
    cmd, cwd, enospc = directives(cmd)
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

                if cwd:
                    os.chdir(cwd)
                if enospc:
                    disk_full_while_writing(enospc)
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
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                PEAK_KB[full] = usage.ru_maxrss
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


PEAK_KB: dict[str, int] = {}  # case -> peak resident memory of its process (kB; forked runner only)


def directives(cmd: str) -> tuple[str, str | None, str | None]:
    """A case may start with '@cwd=DIR' (run from DIR) and '@enospc=NAME' (the disk is full
    when NAME is written)."""
    cwd = enospc = None
    while cmd.startswith("@"):
        head, _, cmd = cmd.partition(" ")
        key, _, value = head[1:].partition("=")
        if key == "cwd":
            cwd = value
        elif key == "enospc":
            enospc = value
    return cmd, cwd, enospc


def disk_full_while_writing(name: str) -> None:
    """Make every write of a file called `name` (through lossprobe.results.atomic) fail with
    ENOSPC, as a full disk does, in the middle of the writer's own code."""
    import builtins
    import errno

    from lossprobe.results import atomic

    class Full:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, k):
            return getattr(self._f, k)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def fake_open(file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)
        return Full(f) if name in os.path.basename(str(file)) and ("x" in mode or "w" in mode) else f

    atomic.open = fake_open


def run_case(cmd: str, timeout: float) -> tuple[int | None, str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    cmd, cwd, enospc = directives(cmd)
    if enospc:
        return 0, "lossprobe: warning: @enospc cases need the forked runner", 0.0
    try:
        r = subprocess.run([sys.executable, "-m", "lossprobe", *shlex.split(cmd)], capture_output=True, text=True,
                           timeout=timeout, env=env, stdin=subprocess.DEVNULL, cwd=cwd)
        return r.returncode, r.stderr, time.perf_counter() - t0
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return None, err + f"\n(timed out after {timeout:g} s)", time.perf_counter() - t0


def _rss_kb() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def round2(t: Path, p: dict[str, str], runner, args, root: str) -> dict:
    """The families of issue 23: each kind (ROUND2, VALID2), stale resumes, foreign folders,
    serve and Ctrl-C at start. Returns the keys they add to the JSON line."""
    base_kb = _rss_kb()

    def short(cmd: str) -> str:
        return cmd.replace(root, "$T")

    def par(items, fn):
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as ex:
            return list(ex.map(fn, items))

    def kind_case(item):
        i, (tpl, kind) = item
        cmd = tpl.format(**p, OUT=str(t / f"r2out{i}"))
        rc, err, sec = runner(cmd, args.timeout)
        peak = PEAK_KB.get(cmd, 0)
        r = {"cmd": short(cmd), "kind": kind, "rc": rc, "class": classify(rc, err), "seconds": round(sec, 1),
             "extra_memory_mb": round(max(0, peak - base_kb) / 1024), "stderr": err.strip().splitlines()[-1:]}
        if args.verbose:
            print(r["class"], r["cmd"], "|", " / ".join(r["stderr"])[-300:], file=sys.stderr)
        return r

    kinds = par(list(enumerate(ROUND2)), kind_case)

    def valid_case(item):
        i, tpl = item
        cmd = tpl.format(**p, OUT=str(t / f"v2out{i}"))
        rc, err, _ = runner(cmd, args.timeout)
        peak = PEAK_KB.get(cmd, 0)
        return {"cmd": short(cmd), "rc": rc, "ok": rc == 0 and "Traceback" not in err,
                "extra_memory_mb": round(max(0, peak - base_kb) / 1024), "stderr": err.strip().splitlines()[-1:]}

    valid = par(list(enumerate(VALID2)), valid_case)
    stale = run_stale(t, p, runner, args.timeout)
    fcases = foreign_cases(t, p)

    def foreign_case(case):
        rc, err, _ = runner(case["cmd"], args.timeout)
        cls = classify(rc, err)
        if case["way"].startswith("out-") and rc == 0:
            cls = "moved_whole" if not check_foreign(case)["lost"] else "split"
        return {"cmd": short(case["cmd"]), "way": case["way"], "rc": rc, "class": cls, **check_foreign(case),
                "stderr": err.strip().splitlines()[-1:]}

    foreign = par(fcases, foreign_case)
    served = run_serve(t, p)
    interrupts = run_interrupts(p, args.timeout)
    groups = {"kinds": kinds, "valid": [], "stale": stale, "foreign": foreign, "serve": served,
              "interrupt": interrupts}
    count = lambda cls: sum(r.get("class") == cls for g in groups.values() for r in g)  # noqa: E731
    by_kind = {}
    for r in kinds:
        c = by_kind.setdefault(r["kind"], {"n": 0})
        c["n"] += 1
        c[r["class"]] = c.get(r["class"], 0) + 1
    memory_hogs = [r for r in kinds + valid if r["extra_memory_mb"] > 1024]
    return {
        "round2": {
            "invocations": len(kinds) + len(valid) + 3 * len(stale) + len(foreign) + len(interrupts),
            "http_requests": len(served),
            "tracebacks": count("traceback"),
            "silent_accepts": count("silent_accept"),
            "user_files_deleted_or_moved": sum(r["lost"] for r in foreign),
            "stale_resumes": sum(r["class"] == "stale_resume" for r in stale),
            "valid_runs_refused": sum(not r["ok"] for r in valid) + sum(not r["valid_resume_ok"] for r in stale)
            + sum(not r["first_run_ok"] for r in stale),
            "refusals_not_naming_the_change": sum(r["class"] == "one_line_error" and not r["names_the_change"]
                                                  for r in stale),
            "memory_over_1gb": len(memory_hogs),
            "per_kind": by_kind,
            "stale": {"n": len(stale), **collections.Counter(r["class"] for r in stale),
                      "refusals": {r["name"]: " ".join(r["stderr"])[17:137] for r in stale}},
            "foreign": {"n": len(foreign), "ways": len({r["way"] for r in foreign}),
                        "commands": len(_foreign_commands(p)), **collections.Counter(r["class"] for r in foreign)},
            "serve": {"n": len(served), **collections.Counter(r["class"] for r in served)},
            "interrupt": {"n": len(interrupts), **collections.Counter(r["class"] for r in interrupts),
                          "note": "interpreter_startup: Ctrl-C before lossprobe's first line runs (site, runpy, "
                                  "the import of lossprobe._start): Python's own traceback, out of reach"},
            "not_right": [{k: r.get(k) for k in ("cmd", "name", "path", "when", "class", "rc", "stderr", "lost")}
                          for g in groups.values() for r in g
                          if r.get("class") not in ("one_line_error", "one_line_warning", "refused", "finished",
                                                    "moved_whole")
                          or r.get("lost")]
            + [r for r in valid if not r["ok"]] + memory_hogs
            + [{"name": r["name"], "valid_resume_ok": r["valid_resume_ok"], "first_run_ok": r["first_run_ok"]}
               for r in stale if not (r["valid_resume_ok"] and r["first_run_ok"])],
        }
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--only", default=None, help="run only cases whose command line contains this text")
    ap.add_argument("--first-round", action="store_true",
                    help="only the first round of cases (not the families of issue 23)")
    ap.add_argument("--second-round", action="store_true",
                    help="only the families of issue 23 (each kind, stale resumes, foreign folders, serve, Ctrl-C)")
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
            if not args.first_round:
                _prepare2(t, p)
        cases = []
        for i, (tpl, scope) in enumerate(CASES):
            d = dict(p, OUT=str(t / f"out{i}"), FOREIGN=str(_foreign(t, i)))
            cases.append((tpl.format(**d), scope, _command(tpl), Path(d["FOREIGN"])))
        if args.only:
            cases = [c for c in cases if args.only in c[0]]
        if args.second_round:
            cases = []
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
        for tpl in ([] if args.only or args.second_round else RECOVER):
            cmd = tpl.format(**p)
            rc, err, _ = runner(cmd, args.timeout)
            recovered.append({"cmd": cmd.replace(str(t), "$T"), "rc": rc, "ok": rc == 0 and "Traceback" not in err,
                              "stderr": err.strip().splitlines()[-2:]})
        second = {} if args.only or args.first_round else round2(t, p, runner, args, str(t))
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
        **second,
        "cores": os.cpu_count(),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
