"""Baselines at equal budget: random search, Optuna TPE, and successive halving / Hyperband
through Optuna's pruners.

They run against a *curve oracle*: `snap(values)` maps a configuration suggested by a
sampler to a candidate key, and `curve(key)` gives its validation accuracy after each
epoch of full training (epochs 1..E; each epoch costs one budget unit). In the benchmark
the oracle is the precomputed table (suggestions snap to the nearest untried row); a
pruned trial pays only for the epochs it ran.

Each function returns a `Trace`: the budget spent and the best *completed* (full-length)
trial's final validation accuracy after every finished or pruned trial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Hashable, Protocol

import numpy as np
import optuna

from lossprobe.search.space import SearchSpace


class CurveOracle(Protocol):
    space: SearchSpace
    epochs: int
    def snap(self, values: dict) -> Hashable: ...
    def random_key(self, rng: np.random.Generator) -> Hashable | None: ...
    def curve(self, key) -> list[float]: ...


@dataclass
class Trace:
    method: str
    spent: list[float] = field(default_factory=list)
    best: list[float] = field(default_factory=list)  # best completed final val acc so far (NaN before any)
    keys: list = field(default_factory=list)  # the incumbent's key at each point

    @property
    def chosen(self):
        return self.keys[-1] if self.keys else None


def _record(trace: Trace, spent: float, key, value: float | None):
    prev = trace.best[-1] if trace.best else math.nan
    prev_key = trace.keys[-1] if trace.keys else None
    if value is not None and (math.isnan(prev) or value > prev):
        prev, prev_key = value, key
    trace.spent.append(spent)
    trace.best.append(prev)
    trace.keys.append(prev_key)


def random_search(oracle: CurveOracle, budget: float, seed: int = 0) -> Trace:
    """Full trainings of uniformly drawn candidates until the budget is spent."""
    rng = np.random.default_rng(seed)
    trace, spent = Trace("random"), 0.0
    while spent + oracle.epochs <= budget + 1e-9:
        key = oracle.random_key(rng)
        if key is None:
            break
        spent += oracle.epochs
        _record(trace, spent, key, float(oracle.curve(key)[-1]))
    return trace


def _optuna_search(oracle: CurveOracle, budget: float, seed: int, sampler, pruner, method: str) -> Trace:

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # a fixed name: Optuna's Hyperband assigns brackets by a hash of the study name, so a
    # random default name would make replays irreproducible
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner, study_name=f"{method}-{seed}")
    trace, spent = Trace(method), 0.0
    while spent + 1 <= budget + 1e-9:
        trial = study.ask(oracle.space.distributions())
        key = oracle.snap(trial.params)
        if key is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            break
        curve = oracle.curve(key)
        completed, value = True, None
        for epoch in range(1, oracle.epochs + 1):
            if spent + 1 > budget + 1e-9:
                completed = False  # out of budget mid-run: it counts as not finished
                break
            spent += 1
            value = float(curve[epoch - 1])
            trial.report(value, epoch)
            if epoch < oracle.epochs and pruner is not None and trial.should_prune():
                completed = False
                break
        if completed:
            study.tell(trial, value)
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        _record(trace, spent, key, value if completed else None)
    return trace


def tpe_search(oracle: CurveOracle, budget: float, seed: int = 0) -> Trace:
    """Optuna's TPE sampler, every trial trained to the end."""

    return _optuna_search(oracle, budget, seed, optuna.samplers.TPESampler(seed=seed), None, "tpe")


def successive_halving(oracle: CurveOracle, budget: float, seed: int = 0, reduction_factor: int = 3) -> Trace:
    """Random sampling with Optuna's (asynchronous) successive-halving pruner, 1 epoch minimum."""

    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=reduction_factor)
    return _optuna_search(oracle, budget, seed, optuna.samplers.RandomSampler(seed=seed), pruner, "sh")


def hyperband(oracle: CurveOracle, budget: float, seed: int = 0, reduction_factor: int = 3) -> Trace:
    """Random sampling with Optuna's Hyperband pruner (brackets of successive halving)."""

    pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=oracle.epochs, reduction_factor=reduction_factor)
    return _optuna_search(oracle, budget, seed, optuna.samplers.RandomSampler(seed=seed), pruner, "hyperband")


BASELINES = {"random": random_search, "tpe": tpe_search, "sh": successive_halving, "hyperband": hyperband}
