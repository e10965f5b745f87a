"""The probe-based search loop.

    probe a batch of new candidates cheaply  ->  fit the meta-model on the fully trained ones
    ->  fully train the candidate with the highest  mean + kappa * std  ->  repeat

until the oracle's clock says the budget (measured seconds or nominal full-data epochs,
probes and meta-model fitting included) is spent. Before the meta-model has `init_full`
targets, candidates are ranked by their probe validation accuracy. The chosen configuration is the fully trained one with the best observed
final validation accuracy; the test set is opened once, for it alone, after selection.

The loop talks to an *oracle* (`Oracle`), so the same code runs live (training networks,
`lossprobe.search.engine.LiveOracle`) and in the benchmark's replay on a precomputed
table (`lossprobe.search.oracle.TableOracle`). It is the ``probe`` method of
`lossprobe.search.methods` (``probe-rank`` with ``init_full`` infinite).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Hashable, Protocol

import numpy as np

from lossprobe.errors import UserError
from lossprobe.search.meta import MetaModel
from lossprobe.search.oracle import OutOfBudget
from lossprobe.search.probes import SHARPNESS_FEATURES


class Oracle(Protocol):
    """See `lossprobe.search.oracle`: draw, probe and train candidates; a clock charges the cost."""

    epochs: int
    fidelities: list
    def draw(self, rng) -> Hashable | None: ...
    def probe(self, key, fidelity: str) -> dict: ...  # feature dict
    def train(self, key, epoch: int) -> list[float]: ...  # val accuracy after epochs 1..epoch


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
    fidelity: str | None = None  # the oracle's probe fidelity to use (default: its first)

    def __post_init__(self):
        if not self.budget > 0:  # the oracle's clock enforces it; math.inf in the benchmark's replays
            raise UserError(f"budget must be positive, got {self.budget}")
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
                 final_test: Callable[[object], float] | None = None, allow_empty: bool = False) -> SearchResult:
    """Run the loop against `oracle` until its clock's budget is spent; return the result.

    `final_test(key)` is called exactly once, after selection, with the chosen key. A budget
    that ends before any full training finished is a `UserError`, or (``allow_empty``, as in
    the benchmark's replays) a result with no choice.
    """
    fid = cfg.fidelity or oracle.fidelities[0]
    if math.isfinite(cfg.budget):  # the loop's budget caps the oracle's clock
        oracle.clock.budget = min(oracle.clock.budget, float(cfg.budget))
    rng = np.random.default_rng([cfg.seed, 5])
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

    n_new = cfg.init_probes
    try:
        while True:
            # 1. probe new candidates
            exhausted = False
            for _ in range(n_new):
                oracle.clock.check()
                k = oracle.draw(rng)
                if k is None:
                    exhausted = True
                    break
                f = oracle.probe(k, fid)
                feats[k] = f if cfg.sharpness else {n: v for n, v in f.items() if n not in SHARPNESS_FEATURES}
                emit(Event("probe", k, oracle.clock.spent, value=f["val_acc"]))
            n_new = cfg.probes_per_round
            pool = [k for k in feats if k not in trained]
            if not pool:
                if exhausted:
                    break  # the oracle has no candidates left
                continue
            # 2. score the probed, untrained candidates
            if len(trained) < max(cfg.init_full, 2):  # a meta-model needs two targets at least
                mean, std = np.array([feats[k]["val_acc"] for k in pool]), np.zeros(len(pool))
            else:
                with oracle.clock.timed("meta"):
                    if meta_kind is None or (cfg.meta == "auto" and len(trained) - kind_at >= cfg.reselect_every):
                        meta = MetaModel(cfg.meta, seed=cfg.seed).fit([feats[k] for k in trained], list(trained.values()))
                        meta_kind, kind_at = meta.chosen, len(trained)
                    else:
                        meta = MetaModel(meta_kind, seed=cfg.seed).fit([feats[k] for k in trained], list(trained.values()))
                    mean, std = meta.predict([feats[k] for k in pool])
                preds = {k: (float(m), float(s)) for k, m, s in zip(pool, mean, std)}
            i = int(np.argmax(mean + cfg.kappa * std))
            k = pool[i]
            # 3. train it fully
            acc = float(oracle.train(k, oracle.epochs)[-1])
            trained[k] = acc
            emit(Event("full", k, oracle.clock.spent, value=acc, predicted=float(mean[i]), predicted_std=float(std[i])))
    except OutOfBudget:
        pass
    if not trained and allow_empty:
        result.spent = oracle.clock.spent
        return result
    if not trained:
        raise UserError(f"the budget ({oracle.clock.budget:g}) is too small for one full training after probing")
    chosen = max(trained, key=trained.get)
    result.chosen, result.chosen_val_accuracy, result.spent = chosen, trained[chosen], oracle.clock.spent
    result.predictions, result.meta_kind = preds, meta_kind
    if final_test is not None:
        result.test_accuracy = float(final_test(chosen))  # the only time the test set is read
    return result


def config_dict(cfg: LoopConfig) -> dict:
    return asdict(cfg)
