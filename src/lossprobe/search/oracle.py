"""What every search method talks to: an *oracle* of candidates, a *clock* that charges cost,
and the *trace* of finished full trainings.

A method (see `lossprobe.search.methods`) only ever does four things to a candidate:

    key = oracle.draw(rng)            a uniformly drawn untried candidate
    key = oracle.snap(values)         the untried candidate nearest to a sampler's suggestion
    feats = oracle.probe(key, fid)    a short training on a fraction of the data (features)
    curve = oracle.train(key, epoch)  continue the candidate's full training to `epoch`
                                      (pause/resume); returns validation accuracy after epochs 1..epoch

Each call charges its cost to ``oracle.clock`` *before* the method sees the result, and a
call made once the budget is spent raises `OutOfBudget`, which ends the method. The same
method code runs in the benchmark's replay (`TableOracle`: costs are the table's measured
seconds) and live (`lossprobe.search.engine.LiveOracle`: costs are measured as it runs).
Work on the meta-model is charged with ``with oracle.clock.timed("meta"): ...``.

A full training that reaches the last epoch is recorded in ``oracle.trace``; the
incumbent at any time is the finished candidate with the best final validation accuracy
(the selection signal), which is what the search would return if stopped then.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Hashable

import numpy as np

from lossprobe.errors import Interrupt, UserError
from lossprobe.search.probes import DEFAULT_FAMILIES, feature_names, parse_families
from lossprobe.search.space import SearchSpace

AXES = ("seconds", "epochs")


class OutOfBudget(Interrupt):
    """The budget is spent (or no untried candidate is left): the method stops here."""


class Clock:
    """Accumulates the cost of a search, per kind of work ('probe', 'train', 'meta').

    `timer` measures the work done in `timed` blocks (default: process CPU time, which
    does not count other programs' load; tests pass a fake one)."""

    def __init__(self, budget: float = math.inf, timer: Callable[[], float] = time.process_time, measure: bool = True):
        self.budget = float(budget)
        self.spent = 0.0
        self.timer = timer
        self.measure = measure  # False: `timed` blocks cost nothing (the nominal-epochs axis)
        self.by_kind: dict[str, float] = {}

    def check(self, cost: float | None = None) -> None:
        """Raise `OutOfBudget` if the budget is spent, or (when the cost of the next piece of
        work is known in advance, as on the nominal axis) if that work would not fit."""
        if self.spent >= self.budget - 1e-12 or (cost is not None and self.spent + cost > self.budget + 1e-9):
            raise OutOfBudget()

    def charge(self, amount: float, kind: str) -> None:
        if not amount >= 0:
            raise ValueError(f"cannot charge {amount} for {kind}")
        self.spent += float(amount)
        self.by_kind[kind] = self.by_kind.get(kind, 0.0) + float(amount)

    @contextmanager
    def timed(self, kind: str):
        """Charge the measured duration of the block (nothing on the nominal axis)."""
        self.check()
        t0 = self.timer()
        try:
            yield
        finally:
            if self.measure:
                self.charge(max(0.0, self.timer() - t0), kind)


@dataclass
class Trace:
    """Finished full trainings in order: time (clock) at which each finished, key, final value."""

    t: list[float] = field(default_factory=list)
    keys: list = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def add(self, t: float, key, value: float) -> None:
        self.t.append(float(t))
        self.keys.append(key)
        self.values.append(float(value))

    def incumbents(self) -> tuple[list[float], list]:
        """(times, incumbent key after each finished training); the incumbent changes only on improvement."""
        out_t, out_k, best, bk = [], [], -math.inf, None
        for t, k, v in zip(self.t, self.keys, self.values):
            if v > best:
                best, bk = v, k
            out_t.append(t)
            out_k.append(bk)
        return out_t, out_k

    @property
    def chosen(self):
        return self.incumbents()[1][-1] if self.t else None


def learning_curve_features(curve: list[float]) -> dict[str, float]:
    """Features of a validation curve [epochs 0..k] (epoch 0 = before training): the value after
    each epoch, the last value, its slope (last change) and curvature (last second difference)."""
    c = [float(v) for v in curve]
    k = len(c) - 1
    out = {f"lc_e{i}": c[i] for i in range(1, k + 1)}
    out["lc_last"] = c[-1]
    out["lc_slope"] = c[-1] - c[-2] if k >= 1 else 0.0
    out["lc_curvature"] = c[-1] - 2 * c[-2] + c[-3] if k >= 2 else 0.0
    return out


class TableOracle:
    """The benchmark table as an oracle, for one replay seed.

    Args:
        rows: table rows (`lossprobe.search.table`).
        space: the table's search space.
        seed: seeds the candidate pool (a random `pool` fraction of the rows, so seeds also
            vary the set of configurations) and the order of `candidates`.
        families: probe feature families a probe computes (and is charged for).
        axis: 'seconds' (measured CPU seconds from the table; meta-model work measured as it
            runs) or 'epochs' (nominal: a probe costs fraction × epochs, an epoch of full
            training 1, meta-model work nothing).
        budget: the clock's budget.
        timer: the clock's timer for meta-model work (tests pass a fake one).
    """

    def __init__(self, rows: list[dict], space: SearchSpace, seed: int = 0, families=None, axis: str = "seconds",
                 budget: float = math.inf, pool: float = 1.0, timer: Callable[[], float] = time.process_time):
        if axis not in AXES:
            raise UserError(f"unknown cost axis '{axis}'; choose from {list(AXES)}")
        if not 0 < pool <= 1:
            raise UserError(f"pool must be in (0, 1], got {pool}")
        self.space, self.axis = space, axis
        self.epochs = int(space.epochs)
        self.families = parse_families(families if families is not None else DEFAULT_FAMILIES)
        self._names = feature_names(space, families=self.families)
        ids = sorted(r["id"] for r in rows)
        rng = np.random.default_rng([seed, 23])
        if pool < 1:
            ids = sorted(rng.choice(ids, size=max(2, int(round(pool * len(ids)))), replace=False).tolist())
        by_id = {r["id"]: r for r in rows}
        self.rows = {i: by_id[i] for i in ids}
        self.order = [int(k) for k in np.random.default_rng([seed, 17]).permutation(ids)]
        self.fidelities = list(next(iter(self.rows.values()))["probes"])
        self.clock = Clock(budget, timer=timer, measure=axis == "seconds")
        self.chance = 1.0 / 10
        self.trace = Trace()
        self.progress: dict = {}  # key -> epochs of full training done
        self.probed: dict = {}  # (key, fid) -> features
        self.n_probes = 0
        enc = np.array([list(space.encode(self.rows[i]["values"]).values()) for i in self.order])
        self._mu, self._sd = enc.mean(0), enc.std(0) + 1e-9
        self._enc = (enc - self._mu) / self._sd
        self._used: set = set()

    # --- candidates ----------------------------------------------------------------
    def values(self, key) -> dict:
        return dict(self.rows[key]["values"])

    def draw(self, rng: np.random.Generator):
        """A uniformly drawn candidate not drawn or snapped before (None when none is left)."""
        left = [k for k in self.order if k not in self._used]
        if not left:
            return None
        k = int(left[int(rng.integers(len(left)))])
        self._used.add(k)
        return k

    def offer(self, rng: np.random.Generator, n: int) -> list:
        """Up to `n` uniformly drawn untried candidates, not yet taken (see `take`)."""
        left = [k for k in self.order if k not in self._used]
        if not left:
            return []
        idx = rng.choice(len(left), size=min(n, len(left)), replace=False)
        return [int(left[i]) for i in idx]

    def take(self, key):
        """Mark an offered candidate as used and return it."""
        self._used.add(key)
        return key

    def snap(self, values: dict):
        """The untried candidate nearest to `values` (hyperparameters encoded as the meta-model
        sees them, standardised over the pool)."""
        x = (np.array(list(self.space.encode(values).values())) - self._mu) / self._sd
        d = ((self._enc - x) ** 2).sum(1)
        for j in np.argsort(d, kind="stable"):
            k = int(self.order[j])
            if k not in self._used:
                self._used.add(k)
                return k
        return None

    # --- work ----------------------------------------------------------------------
    def probe_cost(self, key, fid: str) -> float:
        p = self.rows[key]["probes"][fid]
        if self.axis == "epochs":
            return float(p["cost"])
        return float(sum(p["cpu"].get(f, 0.0) for f in self.families))

    def epoch_cost(self, key, start: int, stop: int) -> float:
        """Cost of full-training epochs start+1..stop (epoch 0's evaluation counts with the first)."""
        if stop <= start:
            return 0.0
        if self.axis == "epochs":
            return float(stop - start)
        f = self.rows[key]["full"]
        w = list(f["epoch_seconds"])
        w = w + [w[-1]] * (self.epochs + 1 - len(w))  # a diverged run stopped: later epochs cost nothing
        tot = w[self.epochs] if w[self.epochs] > 0 else 1.0
        lo = 0.0 if start == 0 else w[start]
        return float(f["cpu_seconds"]) * (w[stop] - lo) / tot

    def _known(self, cost: float) -> float | None:
        # nominal costs are known before the work starts (so a budget is never overrun);
        # measured seconds only afterwards (the last piece of work may end past the budget)
        return cost if self.axis == "epochs" else None

    def probe(self, key, fid: str) -> dict:
        cost = self.probe_cost(key, fid)
        self.clock.check(self._known(cost))
        self.clock.charge(cost, "probe")
        self.n_probes += 1
        feats = self.rows[key]["probes"][fid]["features"]
        out = {n: float(feats[n]) for n in self._names}
        self.probed[(key, fid)] = out
        return dict(out)

    def train(self, key, epoch: int) -> list[float]:
        epoch = int(min(max(epoch, 1), self.epochs))
        done = self.progress.get(key, 0)
        curve = self.curve(key)
        if epoch > done:
            cost = self.epoch_cost(key, done, epoch)
            self.clock.check(self._known(cost))
            self.clock.charge(cost, "train")
            self.progress[key] = epoch
            if epoch == self.epochs:
                self.trace.add(self.clock.spent, key, curve[self.epochs])
        return curve[1 : epoch + 1]

    def curve(self, key) -> list[float]:
        """Validation accuracy (selection split A) after epochs 0..E of the candidate's full training."""
        return [float(v) for v in self.rows[key]["full"]["val_curve"]]

    # --- scoring (benchmark only; never seen by a method) --------------------------------
    def score(self, key) -> float:
        """The independent measurement: a second training seed, evaluated on split B."""
        return float(self.rows[key]["repeat"]["score_accuracy"])

    def true_value(self, key) -> float:
        """Both trainings evaluated on B, averaged."""
        r = self.rows[key]
        return 0.5 * (float(r["full"]["score_accuracy"]) + float(r["repeat"]["score_accuracy"]))

    def reference(self) -> float:
        """The best true (averaged) value in the pool."""
        return max(self.true_value(k) for k in self.rows)

    def floor(self) -> float:
        return min(self.score(k) for k in self.rows)


def check_key(key: Hashable | None):
    if key is None:
        raise OutOfBudget()  # no untried candidate is left
    return key
