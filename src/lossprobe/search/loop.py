"""The probe-based search loop.

    probe a batch of new candidates cheaply  ->  fit the meta-model on the fully trained ones
    ->  fully train the candidate with the highest  mean + kappa * std  ->  repeat

until the budget (full-data epoch equivalents, probes included) is spent. Before the
meta-model has `init_full` targets, candidates are ranked by their probe validation
accuracy. The chosen configuration is the fully trained one with the best observed
final validation accuracy; the test set is opened once, for it alone, after selection.

The loop talks to an *oracle* (`Oracle`), so the same code runs live (training networks,
`lossprobe.search.engine.LiveOracle`) and in the benchmark's replay on a precomputed
table (`lossprobe.search.benchmark.TableOracle`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Hashable, Protocol

import numpy as np

from ..errors import UserError
from .meta import MetaModel
from .probes import SHARPNESS_FEATURES


class Oracle(Protocol):
    probe_cost: float  # budget units per probe
    full_cost: float  # budget units per full training

    def candidates(self, start: int, n: int) -> list[Hashable]: ...  # new candidates number start..start+n-1
    def probe_many(self, keys: list) -> list[dict]: ...  # feature dicts
    def full(self, key) -> float: ...  # final validation accuracy


@dataclass
class LoopConfig:
    """Settings of the probe-based search. Budget in full-data epoch equivalents."""

    budget: float = 60.0
    probes_per_round: int = 6
    init_probes: int = 12  # candidates probed before the first full training
    init_full: int = 3  # full trainings chosen by probe validation accuracy alone
    kappa: float = 1.0  # exploration bonus in units of the ensemble's standard deviation
    meta: str = "auto"
    reselect_every: int = 5  # re-run the rf-vs-gbr cross-validation every k new targets
    sharpness: bool = True  # False: leave the sharpness features out (ablation)
    seed: int = 0

    def __post_init__(self):
        if not (self.budget > 0 and math.isfinite(self.budget)):
            raise UserError(f"budget must be a positive, finite number, got {self.budget}")
        for k in ("probes_per_round", "init_probes", "init_full"):
            if getattr(self, k) < 1:
                raise UserError(f"{k} must be at least 1, got {getattr(self, k)}")
        if not (self.kappa >= 0 and math.isfinite(self.kappa)):
            raise UserError(f"kappa must be a finite number >= 0, got {self.kappa}")


@dataclass
class Event:
    kind: str  # "probe" or "full"
    key: object
    spent: float  # budget spent after this event
    value: float | None = None  # probe val acc or final val acc
    predicted: float | None = None
    predicted_std: float | None = None


@dataclass
class SearchResult:
    chosen: object
    chosen_val_accuracy: float
    spent: float
    events: list[Event]
    predictions: dict = field(default_factory=dict)  # key -> (mean, std) of the last meta fit
    meta_kind: str | None = None
    test_accuracy: float | None = None

    def incumbent_curve(self) -> tuple[np.ndarray, np.ndarray, list]:
        """Budget spent [n] and best final validation accuracy so far [n] after each full training."""
        b, a, keys, best, bk = [], [], [], -math.inf, None
        for e in self.events:
            if e.kind == "full":
                if e.value > best:
                    best, bk = e.value, e.key
                b.append(e.spent)
                a.append(best)
                keys.append(bk)
        return np.array(b), np.array(a), keys


def probe_search(oracle: Oracle, cfg: LoopConfig, on_event: Callable[[Event, "SearchResult"], None] | None = None,
                 final_test: Callable[[object], float] | None = None) -> SearchResult:
    """Run the loop against `oracle` and return the result (see module docstring).

    `final_test(key)` is called exactly once, after selection, with the chosen key.
    """
    spent, n_cand = 0.0, 0
    feats: dict = {}
    trained: dict = {}
    events: list[Event] = []
    preds: dict = {}
    meta_kind, kind_at = None, 0
    result = SearchResult(None, math.nan, 0.0, events)

    def emit(e: Event):
        events.append(e)
        result.spent = e.spent
        if on_event is not None:
            on_event(e, result)

    def can(cost):
        return spent + cost <= cfg.budget + 1e-9

    first = True
    while True:
        # 1. probe new candidates (keep enough budget for at least one full training)
        n_new = cfg.init_probes if first else cfg.probes_per_round
        first = False
        affordable = int(max(0.0, cfg.budget - spent - oracle.full_cost) // oracle.probe_cost) if oracle.probe_cost > 0 else n_new
        n_new = min(n_new, affordable)
        keys = oracle.candidates(n_cand, n_new) if n_new > 0 else []
        n_cand += len(keys)
        if keys:
            for k, f in zip(keys, oracle.probe_many(keys)):
                feats[k] = f if cfg.sharpness else {n: v for n, v in f.items() if n not in SHARPNESS_FEATURES}
                spent += oracle.probe_cost
                emit(Event("probe", k, spent, value=f["val_acc"]))
        if not can(oracle.full_cost):
            break  # no full training fits in what is left; more probes could not pay off
        pool = [k for k in feats if k not in trained]
        if not pool:
            if not keys:
                break  # the oracle has no candidates left
            continue
        # 2. score the probed, untrained candidates
        if len(trained) < max(cfg.init_full, 2):  # a meta-model needs two targets at least
            score = np.array([feats[k]["val_acc"] for k in pool])
            mean, std = score, np.zeros(len(pool))
        else:
            if meta_kind is None or (cfg.meta == "auto" and len(trained) - kind_at >= cfg.reselect_every):
                sel = MetaModel(cfg.meta, seed=cfg.seed).fit([feats[k] for k in trained], list(trained.values()))
                meta_kind, kind_at = sel.chosen, len(trained)
                meta = sel
            else:
                meta = MetaModel(meta_kind, seed=cfg.seed).fit([feats[k] for k in trained], list(trained.values()))
            mean, std = meta.predict([feats[k] for k in pool])
            score = mean + cfg.kappa * std
            preds = {k: (float(m), float(s)) for k, m, s in zip(pool, mean, std)}
        i = int(np.argmax(score))
        k = pool[i]
        # 3. train it fully
        acc = float(oracle.full(k))
        trained[k] = acc
        spent += oracle.full_cost
        emit(Event("full", k, spent, value=acc, predicted=float(mean[i]), predicted_std=float(std[i])))
    if not trained:
        raise UserError(f"budget {cfg.budget} is too small for one full training (cost {oracle.full_cost}) after probing")
    chosen = max(trained, key=trained.get)
    result.chosen, result.chosen_val_accuracy, result.spent = chosen, trained[chosen], spent
    result.predictions, result.meta_kind = preds, meta_kind
    if final_test is not None:
        result.test_accuracy = float(final_test(chosen))  # the only time the test set is read
    return result


def config_dict(cfg: LoopConfig) -> dict:
    return asdict(cfg)
