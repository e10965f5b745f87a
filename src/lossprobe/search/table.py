"""The benchmark table: configurations from a space, each fully trained with its per-epoch
curves and probe features at several fidelities recorded, cached on disk row by row.

Layout of a table directory::

    table_config.json     what the table is (space, data, fidelities, seeds); a directory
                          holding a different table is refused
    rows/00042.json       one configuration: values, full-training curves (seed 0 and, for
                          the first `n_repeat` rows, seed 1) and probe features per fidelity

Building is resumable: rows already on disk are kept, so a killed build continues where
it stopped. Replays (see `lossprobe.search.benchmark`) read the table and never train.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..store import write_json
from .space import SearchSpace


def fidelity_key(fraction: float, epochs: int) -> str:
    return f"f{fraction:g}xe{epochs}"


@dataclass
class TableConfig:
    space: dict
    size: int = 200
    n_repeat: int = 50  # rows trained with a second seed: the seed-to-seed noise ceiling
    fidelities: list = field(default_factory=lambda: [[0.1, 1], [0.2, 2], [0.4, 2]])
    dataset: str = "fashion-mnist"
    n_train: int = 10_000
    n_val: int = 5_000
    data_seed: int = 0
    sample_seed: int = 0
    sharpness_impl: str = "rms"  # the weight-noise probe the table was built with (see probes._sharpness)

    def keys(self) -> list[str]:
        return [fidelity_key(f, e) for f, e in self.fidelities]


def sample_configs(space: SearchSpace, n: int, seed: int) -> list[dict]:
    """`n` configurations drawn independently from the space; row i uses seed (seed, i)."""
    return [space.sample(np.random.default_rng([seed, i])) for i in range(n)]


def build_table(directory: str | os.PathLike, cfg: TableConfig, progress: bool = True, limit_seconds: float | None = None,
                reverse: bool = False) -> list[dict]:
    """Build (or finish) the table in `directory` and return its rows, ordered by id.

    Several processes may build one table together (e.g. one with ``reverse=True``): a row
    another process has written meanwhile is skipped."""
    import time

    from .probes import make_task, probe, train_full

    d = Path(directory)
    (d / "rows").mkdir(parents=True, exist_ok=True)
    cfile = d / "table_config.json"
    want = json.loads(json.dumps(asdict(cfg)))
    # rows are drawn by index, so a table may grow: every setting but `size` must match
    if cfile.is_file():
        old = json.loads(cfile.read_text())
        old.setdefault("sharpness_impl", "rms")  # tables written before the field existed
        if {k: v for k, v in old.items() if k != "size"} != {k: v for k, v in want.items() if k != "size"}:
            raise UserError(f"{d} holds a benchmark table built with other settings; use another --table-dir")
        want["size"] = max(old.get("size", 0), cfg.size)
    write_json(cfile, want)
    space = SearchSpace.from_dict(cfg.space)
    configs = sample_configs(space, cfg.size, cfg.sample_seed)
    todo = [i for i in range(cfg.size) if not (d / "rows" / f"{i:05d}.json").is_file()]
    if reverse:
        todo.reverse()
    if todo:
        task = make_task(cfg.dataset, cfg.n_train, cfg.n_val, seed=cfg.data_seed)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.size, initial=cfg.size - len(todo), unit="config", desc="table", dynamic_ncols=True)
        t0 = time.perf_counter()
        for i in todo:
            if limit_seconds is not None and time.perf_counter() - t0 > limit_seconds:
                break
            if (d / "rows" / f"{i:05d}.json").is_file():
                continue  # written by another builder
            values = configs[i]
            full = train_full(space, values, task, seed=0)
            row = {"id": i, "values": values,
                   "full": {"val_accuracy": full.val_accuracy, "val_curve": full.history["val_accuracy"],
                            "train_curve": full.history["train_accuracy"], "seconds": full.seconds},
                   "probes": {}}
            if i < cfg.n_repeat:
                rep = train_full(space, values, task, seed=1)
                row["repeat"] = {"val_accuracy": rep.val_accuracy, "val_curve": rep.history["val_accuracy"]}
            for f, e in cfg.fidelities:
                pr = probe(space, values, task, f, e, seed=0, sharpness_impl=cfg.sharpness_impl)
                row["probes"][fidelity_key(f, e)] = {"features": pr.features, "cost": pr.cost, "seconds": pr.seconds}
            write_json(d / "rows" / f"{i:05d}.json", row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(acc=f"{full.val_accuracy:.3f}")
        if bar is not None:
            bar.close()
    return load_rows(d, cfg.size)


def load_rows(directory: str | os.PathLike, size: int | None = None) -> list[dict]:
    """Rows on disk (the first `size` by id, if given)."""
    d = Path(directory) / "rows"
    rows = [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))]
    return [r for r in rows if size is None or r["id"] < size]
