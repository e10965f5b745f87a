"""The benchmark table: configurations from a space, each fully trained twice with its
per-epoch curves, probe features at several fidelities with each feature family's measured
cost, cached on disk row by row.

Four disjoint data sets keep selection and scoring apart (`benchmark_task`):

* **train**   a seeded subset of ``n_train`` training images (full trainings; probes train on
              seeded fractions of it);
* **A**       ``n_val`` validation images: the per-epoch curve of full training that every
              search method selects on;
* **P**       ``n_probe_val`` images from the training pool that no training uses: where probes
              are evaluated (so probes do not see the noise of A);
* **B**       ``n_score_val`` validation images disjoint from A: the independent measurement.

Per row (``rows/00042.json``):

* ``full``    seed 0 (initialisation and batch order): the curve on A (``val_curve``, epochs
              0..E), its final value (``val_accuracy``), the cumulative wall seconds per
              epoch (``epoch_seconds``), process CPU seconds (``cpu_seconds``) and the final
              model's accuracy on B (``score_accuracy``);
* ``repeat``  seed 1, an independent training (no per-epoch validation): final accuracy on B
              (``score_accuracy``, what a chosen configuration is scored by) and on A
              (``val_accuracy``, the seed-to-seed noise ceiling);
* ``probes``  per fidelity ``f{fraction}xe{epochs}``, seed 2 (another initialisation, batch
              order and data subset than either full training): all features of every family,
              the probe's per-epoch curves on P and its subset, and CPU seconds per family.

Seconds are process CPU time with one torch thread, i.e. the wall time of a dedicated core;
on a shared machine this is what stays stable. Building is resumable: rows already on disk
are kept, so a killed build continues where it stopped, and the table may grow (`size`).
Replays (`lossprobe.search.benchmark`) read the table and never train.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lossprobe.core.batching import Split
from lossprobe.data import fashion_mnist, two_spirals
from lossprobe.errors import UserError
from lossprobe.results.store import write_json
from lossprobe.search.probes import ALL_FAMILIES, SealedSplit, Task, probe, train_full
from lossprobe.search.space import SearchSpace

TABLE_VERSION = 2
FULL_SEED, SCORE_SEED, PROBE_SEED = 0, 1, 2


def fidelity_key(fraction: float, epochs: int) -> str:
    return f"f{fraction:g}xe{epochs}"


def parse_fidelity_key(key: str) -> tuple[float, int]:
    f, e = key[1:].split("xe")
    return float(f), int(e)


@dataclass
class TableConfig:
    space: dict
    size: int = 200
    n_repeat: int | None = None  # kept for tables of version 1; version 2 trains every row twice
    fidelities: list = field(default_factory=lambda: [[0.1, 1], [0.2, 2], [0.4, 2]])
    dataset: str = "fashion-mnist"
    n_train: int = 10_000
    n_val: int = 5_000  # A: selection
    data_seed: int = 0
    sample_seed: int = 0
    sharpness_impl: str = "filter"  # the weight-noise probe (see probes._sharpness)
    n_score_val: int = 5_000  # B: independent scoring
    n_probe_val: int = 2_000  # P: probe evaluation
    version: int = TABLE_VERSION
    # seeds of the selection training, the scoring training and the probes (a fresh table uses others)
    seeds: list = field(default_factory=lambda: [FULL_SEED, SCORE_SEED, PROBE_SEED])
    families: list | None = None  # probe feature families computed (None: all of them)

    def keys(self) -> list[str]:
        return [fidelity_key(f, e) for f, e in self.fidelities]


def sample_configs(space: SearchSpace, n: int, seed: int) -> list[dict]:
    """`n` configurations drawn independently from the space; row i uses seed (seed, i)."""
    return [space.sample(np.random.default_rng([seed, i])) for i in range(n)]


def config_dict(cfg: TableConfig) -> dict:
    """The table's settings as stored in table_config.json (fields added after a table was built
    are left out at their defaults, so that table still matches)."""
    d = json.loads(json.dumps(asdict(cfg)))
    for k, v in _LATER_DEFAULTS.items():
        if d.get(k) == v:
            d.pop(k)
    return d


_LATER_DEFAULTS = {"seeds": [FULL_SEED, SCORE_SEED, PROBE_SEED], "families": None}


def benchmark_task(dataset: str, n_train: int, n_val: int, n_score_val: int, n_probe_val: int, seed: int = 0,
                   root=None):
    """The task of a benchmark table with disjoint train / A / P / B sets (see module doc).

    Fashion-MNIST: train and P from the 50k training images, A and B from the 10k validation
    images. ``spiral`` (tests): four independently seeded spiral sets."""
    if dataset == "spiral":

        mk = lambda n, s, name: two_spirals(n=max(1, n // 2), seed=seed * 10 + s, name=name)  # noqa: E731
        train, a, b, p = mk(n_train, 0, "train"), mk(n_val, 1, "A"), mk(n_score_val, 2, "B"), mk(n_probe_val, 3, "P")
        return Task(train, a, SealedSplit(mk(100, 4, "test")), dataset, tuple(train.x.shape[1:]), 2,
                    probe_val=p, score_val=b)
    if dataset == "digits":
        return _digits_task(n_train, n_val, n_score_val, n_probe_val, seed)
    if dataset != "fashion-mnist":
        raise UserError(f"benchmark tables are built on fashion-mnist, digits or spiral, not '{dataset}'")

    ds = fashion_mnist(root=root, split_seed=seed)
    tr_all, va_all = ds.train, ds.val
    if n_train + n_probe_val > len(tr_all) or n_val + n_score_val > len(va_all):
        raise UserError(f"n_train + n_probe_val must fit in {len(tr_all)} and n_val + n_score_val in {len(va_all)}")

    def take(split, idx, name):
        idx = torch.as_tensor(np.sort(idx))
        return Split(split.x[idx], split.y[idx], name)

    pt = np.random.default_rng([seed, 31]).permutation(len(tr_all))
    pv = np.random.default_rng([seed, 32]).permutation(len(va_all))
    train = take(tr_all, pt[:n_train], f"train[{n_train}]")
    probe_val = take(tr_all, pt[n_train:n_train + n_probe_val], f"P[{n_probe_val}]")
    a = take(va_all, pv[:n_val], f"A[{n_val}]")
    b = take(va_all, pv[n_val:n_val + n_score_val], f"B[{n_score_val}]")
    return Task(train, a, SealedSplit(ds.test), dataset, tuple(train.x.shape[1:]), 10, probe_val=probe_val,
                score_val=b)


def _digits_task(n_train: int, n_val: int, n_score_val: int, n_probe_val: int, seed: int):
    """scikit-learn's digits (1797 8×8 images as 64 standardised columns, 10 classes): a small
    tabular task for the transfer experiment, split by a seeded permutation into train / A / B / P."""
    from sklearn.datasets import load_digits  # lazy: start-up time (scikit-learn)

    x, y = load_digits(return_X_y=True)
    if n_train + n_val + n_score_val + n_probe_val > len(x):
        raise UserError(f"digits has {len(x)} samples; n_train + n_val + n_score_val + n_probe_val must fit")
    p = np.random.default_rng([seed, 33]).permutation(len(x))
    cut = np.cumsum([n_train, n_val, n_score_val, n_probe_val])
    tr = p[:cut[0]]
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
    xs = torch.as_tensor((x - mu) / sd, dtype=torch.float32)
    ys = torch.as_tensor(y, dtype=torch.long)

    def take(idx, name):
        idx = torch.as_tensor(np.sort(idx))
        return Split(xs[idx], ys[idx], name)

    train, a = take(tr, f"train[{n_train}]"), take(p[cut[0]:cut[1]], f"A[{n_val}]")
    b, pv = take(p[cut[1]:cut[2]], f"B[{n_score_val}]"), take(p[cut[2]:cut[3]], f"P[{n_probe_val}]")
    test = take(p[cut[3]:], "test") if cut[3] < len(x) else take(p[:1], "test")
    return Task(train, a, SealedSplit(test), "digits", (64,), 10, probe_val=pv, score_val=b)


def build_row(space: SearchSpace, values: dict, task, cfg: TableConfig, i: int) -> dict:
    """Train one configuration twice and probe it at every fidelity (see module doc)."""
    full_seed, score_seed, probe_seed = (int(v) for v in cfg.seeds)
    full = train_full(space, values, task, seed=full_seed, eval_splits={"B": task.score_val})
    rep = train_full(space, values, task, seed=score_seed, val=None, eval_splits={"B": task.score_val, "A": task.val})
    row = {"id": i, "values": values,
           "full": {"val_accuracy": full.val_accuracy, "val_curve": full.history["val_accuracy"],
                    "train_curve": full.history["train_accuracy"], "val_loss_curve": full.history["val_loss"],
                    "epoch_seconds": full.history["seconds"], "seconds": full.seconds,
                    "cpu_seconds": full.cpu_seconds, "score_accuracy": full.extra["B"]},
           "repeat": {"score_accuracy": rep.extra["B"], "val_accuracy": rep.extra["A"], "seconds": rep.seconds,
                      "cpu_seconds": rep.cpu_seconds},
           "probes": {}}
    for f, e in cfg.fidelities:
        pr = probe(space, values, task, f, int(e), seed=probe_seed, sharpness_impl=cfg.sharpness_impl,
                   families=cfg.families if cfg.families is not None else ALL_FAMILIES)
        row["probes"][fidelity_key(f, e)] = {
            "features": pr.features, "cost": pr.cost, "seconds": pr.seconds, "cpu": pr.family_seconds,
            "val_curve": pr.history["val_accuracy"], "train_loss_curve": pr.history["train_loss"]}
    return row


def build_table(directory: str | os.PathLike, cfg: TableConfig, progress: bool = True, limit_seconds: float | None = None,
                reverse: bool = False, log=None) -> list[dict]:
    """Build (or finish) the table in `directory` and return its rows, ordered by id.

    Several processes may build one table together (e.g. one with ``reverse=True``): a row
    another process has written meanwhile is skipped. `log(msg)` is called after each row."""
    d = Path(directory)
    (d / "rows").mkdir(parents=True, exist_ok=True)
    cfile = d / "table_config.json"
    want = config_dict(cfg)
    # rows are drawn by index, so a table may grow: every setting but `size` must match
    if cfile.is_file():
        old = json.loads(cfile.read_text())
        if old.get("version", 1) != TABLE_VERSION:
            raise UserError(f"{d} holds a version-{old.get('version', 1)} benchmark table (one training seed, shared "
                            f"validation set); version {TABLE_VERSION} is needed: use another --table-dir")
        same = {**_LATER_DEFAULTS, **old}, {**_LATER_DEFAULTS, **want}  # a field added later, at its default
        if {k: v for k, v in same[0].items() if k != "size"} != {k: v for k, v in same[1].items() if k != "size"}:
            raise UserError(f"{d} holds a benchmark table built with other settings; use another --table-dir")
        want["size"] = max(old.get("size", 0), cfg.size)
    write_json(cfile, want)
    space = SearchSpace.from_dict(cfg.space)
    configs = sample_configs(space, cfg.size, cfg.sample_seed)
    todo = [i for i in range(cfg.size) if not (d / "rows" / f"{i:05d}.json").is_file()]
    if reverse:
        todo.reverse()
    if todo:
        task = benchmark_task(cfg.dataset, cfg.n_train, cfg.n_val, cfg.n_score_val, cfg.n_probe_val, cfg.data_seed)
        bar = None
        if progress:

            bar = tqdm(total=cfg.size, initial=cfg.size - len(todo), unit="config", desc="table", dynamic_ncols=True)
        t0 = time.perf_counter()
        for n_done, i in enumerate(todo):
            if limit_seconds is not None and time.perf_counter() - t0 > limit_seconds:
                break
            if (d / "rows" / f"{i:05d}.json").is_file():
                continue  # written by another builder
            row = build_row(space, configs[i], task, cfg, i)
            write_json(d / "rows" / f"{i:05d}.json", row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(acc=f"{row['full']['val_accuracy']:.3f}")
            if log is not None:
                log(f"row {i} ({n_done + 1}/{len(todo)} this run) val {row['full']['val_accuracy']:.4f} "
                    f"score {row['repeat']['score_accuracy']:.4f} cpu {row['full']['cpu_seconds']:.1f}+"
                    f"{row['repeat']['cpu_seconds']:.1f} s; {time.perf_counter() - t0:.0f} s elapsed")
        if bar is not None:
            bar.close()
    return load_rows(d, cfg.size)


def load_rows(directory: str | os.PathLike, size: int | None = None) -> list[dict]:
    """Rows on disk (the first `size` by id, if given)."""
    d = Path(directory) / "rows"
    rows = [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))]
    return [r for r in rows if size is None or r["id"] < size]
