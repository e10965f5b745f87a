"""Synthetic benchmark tables (the layout of `lossprobe.search.table`, version 2) for fast tests.

Final accuracy peaks at lr = 1e-2 and grows with width; probes see it with noise; every
piece of work has a made-up, deterministic CPU cost."""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np

from lossprobe.search.probes import feature_names
from lossprobe.search.table import fidelity_key, sample_configs
from lossprobe.results.store import write_json


def quality(v: dict) -> float:
    w = v.get("width", 64)
    return float(np.clip(0.9 - 0.08 * (math.log10(v["lr"]) + 2) ** 2 + 0.01 * math.log2(w) - 0.06, 0.1, 0.95))


def fake_row(space, i: int, v: dict, fidelities, rng, probe_noise: float = 0.03) -> dict:
    E = space.epochs
    q = quality(v)
    curve = [0.1] + [0.1 + (q - 0.1) * (1 - 0.5 ** (e + 1)) / (1 - 0.5 ** (E + 1)) for e in range(1, E + 1)]
    slow = 1.0 + 0.5 * (v.get("width", 64) > 64)  # wide networks take longer
    epoch_seconds = [0.05 * slow] + [0.05 * slow + 1.0 * slow * e for e in range(1, E + 1)]
    probes = {}
    for f, e in fidelities:
        feats = {k: float(rng.normal()) for k in feature_names(space)}
        feats.update(space.encode(v), probe_fraction=float(f), probe_epochs=float(e), diverged=0.0,
                     val_acc=q - 0.2 + probe_noise * rng.normal())
        probes[fidelity_key(f, e)] = {"features": feats, "cost": f * e, "seconds": 0.1,
                                      "cpu": {"curve": f * e * slow, "grad_norm": 0.01, "sharpness": 0.05, "hessian": 0.1},
                                      "val_curve": [0.1, feats["val_acc"]], "train_loss_curve": [2.3, 1.0]}
    return {"id": i, "values": v,
            "full": {"val_accuracy": curve[-1], "val_curve": curve, "train_curve": curve, "epoch_seconds": epoch_seconds,
                     "seconds": epoch_seconds[-1], "cpu_seconds": epoch_seconds[-1], "score_accuracy": q + 0.003 * rng.normal()},
            "repeat": {"score_accuracy": q + 0.003 * rng.normal(), "val_accuracy": q + 0.003 * rng.normal(),
                       "seconds": epoch_seconds[-1], "cpu_seconds": epoch_seconds[-1]},
            "probes": probes}


def fake_rows(space, n: int, fidelities=((0.2, 1),), seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [fake_row(space, i, v, fidelities, rng) for i, v in enumerate(sample_configs(space, n, seed))]


def write_fake_table(directory, tcfg) -> list[dict]:
    """Write a complete fake table for `tcfg` (a TableConfig) into `directory`."""
    from lossprobe.search.space import SearchSpace

    space = SearchSpace.from_dict(tcfg.space)
    (directory / "rows").mkdir(parents=True, exist_ok=True)
    write_json(directory / "table_config.json", asdict(tcfg))
    rows = fake_rows(space, tcfg.size, tcfg.fidelities, tcfg.sample_seed)
    for r in rows:
        write_json(directory / "rows" / f"{r['id']:05d}.json", r)
    return rows
