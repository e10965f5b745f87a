"""Every search method, written once against the oracle (`lossprobe.search.oracle`), so the
benchmark's replays and `lossprobe search` run the same code.

A *ladder* of rungs describes a multi-fidelity schedule: ``("probe", "f0.1xe1")`` is a
separate short training on 10% of the data for 1 epoch (the candidate's probe), and
``("full", k)`` the candidate's full training continued (paused and resumed) to epoch k.
Its value at a rung is the probe's validation accuracy or the full training's validation
accuracy after epoch k. Only a full training that reaches the last epoch can become the
answer.

Methods (``METHODS``):

* ``random``            full trainings of uniformly drawn candidates
* ``tpe``               Optuna TPE, told the configuration it was actually given
* ``sh``, ``hyperband`` synchronous successive halving / Hyperband over full-training epochs
                        (rungs 1, 3, 9, ... epochs, η = 3), uniformly drawn candidates
* ``sh-probe``, ``asha-probe``, ``hyperband-probe``  successive halving, ASHA and Hyperband whose
                        lowest rung is the probe: rungs ``probe,full`` or ``probe,full@K,full``
                        (option ``rungs``), a rung promotes its best 1/η (option ``eta``; defaults
                        in `PROBE_RUNG_DEFAULTS`, tuned on the benchmark's development tables)
* ``asha``              asynchronous successive halving (Optuna's SuccessiveHalvingPruner)
* ``bohb``              Optuna TPE with the Hyperband pruner (the BOHB-style combination)
* ``lce``               learning-curve extrapolation: each candidate trains epoch by epoch and
                        stops when an ensemble of curve families fitted to its partial curve
                        cannot reach the incumbent
* ``probe-rank``        probe candidates, fully train them in order of probe validation accuracy
* ``probe``             probe candidates, fully train the one the meta-model ranks best
                        (`lossprobe.search.loop`)
* ``mf``                multi-fidelity search led by the meta-model: candidates climb the ladder
                        probe → (probe) → full epochs; a candidate goes up a rung when it is in
                        the top 1/η of that rung by the meta-model's prediction of its final
                        accuracy (fitted on every finished candidate's features at that rung,
                        learning-curve features included); otherwise a new candidate is probed
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import optuna
from scipy import stats

from lossprobe.errors import UserError
from lossprobe.search.loop import LoopConfig, probe_search
from lossprobe.search.meta import MetaModel
from lossprobe.search.oracle import OutOfBudget, check_key, learning_curve_features

# --- ladders ----------------------------------------------------------------------------


def full_rungs(epochs: int, eta: int = 3, min_epochs: int = 1) -> list[int]:
    """Epochs of the successive-halving rungs of a full training: min·η^i below `epochs`, then `epochs`."""
    out, r = [], max(1, int(min_epochs))
    while r < epochs:
        out.append(r)
        r *= eta
    return out + [int(epochs)]


def full_ladder(epochs: int, eta: int = 3) -> list[tuple]:
    return [("full", r) for r in full_rungs(epochs, eta)]


def probe_ladder(epochs: int, fidelity: str, eta: int = 3) -> list[tuple]:
    """The full-epoch ladder with its lowest rung replaced by the probe at `fidelity`."""
    fr = full_rungs(epochs, eta)
    return [("probe", fidelity)] + [("full", r) for r in (fr[1:] if len(fr) > 1 else fr)]


def parse_rungs(rungs, epochs: int, fidelity: str, eta: int = 3) -> list[tuple]:
    """The ladder of a probe-rung method from its ``rungs`` option.

    ``rungs`` is a comma-separated list (or a list of strings): ``probe`` (the probe at
    `fidelity`), ``full@K`` (the full training paused after epoch K), ``full@auto`` (epoch
    round(epochs / eta), at least 1) and ``full`` (the last epoch), e.g. ``'probe,full'`` or
    ``'probe,full@2,full'``. The first rung is the probe, the last the full training, and the
    full-training epochs in between increase. ``None`` is ``'probe,full'``."""
    spec = "probe,full" if rungs is None else rungs
    names = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec) if str(t).strip()]
    if len(names) < 2 or names[0] != "probe" or names[-1] != "full":
        raise UserError(f"rungs '{spec}': give the probe first and the full training last, e.g. 'probe,full' or "
                        "'probe,full@2,full'")
    ladder, last = [("probe", fidelity)], 0
    for t in names[1:]:
        if t == "full":
            k = int(epochs)
        elif t == "full@auto":
            k = max(1, int(round(epochs / eta)))
        elif t.startswith("full@") and t[5:].isdigit():
            k = int(t[5:])
        else:
            raise UserError(f"rungs '{spec}': unknown rung '{t}'; use probe, full@K (K epochs of the full training), "
                            "full@auto or full")
        if not last < k <= epochs or (t != "full" and k == epochs):
            if t == "full@auto" and k >= epochs:
                continue  # a training too short to pause: the rung is left out
            raise UserError(f"rungs '{spec}': full-training rungs must increase and stay below the {epochs} epochs "
                            f"of a full training, got '{t}'")
        ladder.append(("full", k))
        last = k
    return ladder


def run_rung(oracle, key, rung) -> float:
    kind, x = rung
    if kind == "probe":
        return float(oracle.probe(key, x)["val_acc"])
    return float(oracle.train(key, int(x))[-1])


# --- random search and the Optuna-based baselines -----------------------------------------


def random_search(oracle, seed: int = 0, **_) -> None:
    rng = np.random.default_rng([seed, 1])
    while True:
        oracle.clock.check()
        oracle.train(check_key(oracle.draw(rng)), oracle.epochs)


def _row_sampler(oracle, inner, rng):
    """An Optuna sampler whose every trial gets a candidate's configuration: the inner sampler's
    suggestion snapped to the nearest untried candidate, or (inner None) a uniformly drawn one.
    The study therefore records, and TPE learns from, what was actually trained."""

    class RowSampler(optuna.samplers.BaseSampler):
        def __init__(self):
            self.keys: dict[int, object] = {}

        def infer_relative_search_space(self, study, trial):
            return oracle.space.distributions()

        def sample_relative(self, study, trial, search_space):
            if not search_space:
                return {}
            if inner is None:
                key = oracle.draw(rng)
            else:
                sp = inner.infer_relative_search_space(study, trial)
                sug = dict(inner.sample_relative(study, trial, sp)) if sp else {}
                for n, d in search_space.items():
                    if n not in sug:
                        sug[n] = inner.sample_independent(study, trial, n, d)
                key = oracle.snap(sug)
            self.keys[trial.number] = key
            if key is None:
                return {}
            v = oracle.values(key)
            return {n: v[n] for n in search_space}

        def sample_independent(self, study, trial, param_name, param_distribution):
            raise OutOfBudget()  # only reached when no candidate was left to give

        def before_trial(self, study, trial):
            if inner is not None:
                inner.before_trial(study, trial)

        def after_trial(self, study, trial, state, values):
            if inner is not None:
                inner.after_trial(study, trial, state, values)

    return RowSampler()


def _optuna_search(oracle, seed: int, name: str, tpe: bool, pruner, n_startup: int = 10) -> None:

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    inner = optuna.samplers.TPESampler(seed=seed, n_startup_trials=int(n_startup)) if tpe else None
    sampler = _row_sampler(oracle, inner, np.random.default_rng([seed, 2]))
    # a fixed name: Optuna's Hyperband assigns brackets by a hash of the study name
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner, study_name=f"{name}-{seed}")
    E = oracle.epochs
    while True:
        oracle.clock.check()
        trial = study.ask(oracle.space.distributions())
        key = check_key(sampler.keys.get(trial.number))
        pruned, v = False, math.nan
        for epoch in range(1, E + 1):
            v = oracle.train(key, epoch)[-1]
            trial.report(v, epoch)
            if epoch < E and pruner is not None and trial.should_prune():
                pruned = True
                break
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, v)


def tpe_search(oracle, seed: int = 0, n_startup: int = 10, **_) -> None:
    _optuna_search(oracle, seed, "tpe", True, None, n_startup)


def asha(oracle, seed: int = 0, eta: int = 3, **_) -> None:

    _optuna_search(oracle, seed, "asha", False,
                   optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=eta))


def bohb(oracle, seed: int = 0, eta: int = 3, n_startup: int = 10, **_) -> None:

    _optuna_search(oracle, seed, "bohb", True,
                   optuna.pruners.HyperbandPruner(min_resource=1, max_resource=oracle.epochs, reduction_factor=eta),
                   n_startup)


# --- synchronous successive halving and Hyperband on a ladder --------------------------------


class _Rungs:
    """What the brackets of SH / Hyperband finished per rung, across brackets (for `_leftovers`)."""

    def __init__(self, n_rungs: int):
        self.done = [{} for _ in range(n_rungs)]  # rung -> {key: value}, in the order they finished
        self.promoted = [set() for _ in range(n_rungs)]


def _bracket(oracle, rng, ladder, start: int, n: int, eta: int, rec: _Rungs | None = None) -> bool:
    """One bracket of `n` new candidates from rung `start`; False when the pool had fewer than `n`
    untried candidates left (the bracket then ran with those it got)."""
    keys, full = [], True
    for _ in range(n):
        oracle.clock.check()
        k = oracle.draw(rng)
        if k is None:
            full = False
            break
        keys.append(k)
    for r in range(start, len(ladder)):
        if not keys:
            break
        vals = {}
        for k in keys:
            vals[k] = run_rung(oracle, k, ladder[r])
            if rec is not None:
                rec.done[r][k] = vals[k]
        if r == len(ladder) - 1:
            break
        keep = max(1, len(keys) // eta)
        keys = sorted(keys, key=lambda k: -vals[k])[:keep]  # stable: ties keep draw order
        if rec is not None:
            rec.promoted[r].update(keys)
    return full


def _leftovers(oracle, ladder, rec: _Rungs) -> None:
    """Once no untried candidate is left (a finite space, a benchmark table's pool): the best candidate
    not yet promoted of the highest rung that has one goes up, until the budget is spent or every
    candidate is at the top — as ASHA's `leftover` and probe-rank do, instead of stopping early."""
    while True:
        oracle.clock.check()
        for r in range(len(ladder) - 2, -1, -1):
            cands = [c for c in rec.done[r] if c not in rec.promoted[r]]
            if cands:
                c = max(cands, key=lambda c: rec.done[r][c])  # ties: the first finished
                rec.promoted[r].add(c)
                rec.done[r + 1][c] = run_rung(oracle, c, ladder[r + 1])
                break
        else:
            raise OutOfBudget()


def successive_halving(oracle, seed: int = 0, ladder=None, eta: int = 3, n0: int | None = None, **_) -> None:
    """Brackets of synchronous successive halving, `n0` (default η^(rungs-1)) new candidates each,
    the best 1/η of a rung going on, until the budget is spent; once the pool is exhausted, the
    leftovers go up (`_leftovers`)."""
    ladder = ladder or full_ladder(oracle.epochs, eta)
    rng = np.random.default_rng([seed, 3])
    n = int(n0) if n0 else eta ** (len(ladder) - 1)
    rec = _Rungs(len(ladder))
    while _bracket(oracle, rng, ladder, 0, n, eta, rec):
        pass
    _leftovers(oracle, ladder, rec)


def hyperband(oracle, seed: int = 0, ladder=None, eta: int = 3, **_) -> None:
    """Hyperband's brackets (most aggressive first) over the ladder, cycled until the budget is spent;
    once the pool is exhausted, the leftovers go up (`_leftovers`)."""
    ladder = ladder or full_ladder(oracle.epochs, eta)
    rng = np.random.default_rng([seed, 4])
    s_max = len(ladder) - 1
    rec = _Rungs(len(ladder))
    while True:
        for s in range(s_max, -1, -1):
            n = int(math.ceil((s_max + 1) / (s + 1) * eta**s))
            if not _bracket(oracle, rng, ladder, s_max - s, n, eta, rec):
                _leftovers(oracle, ladder, rec)


# --- learning-curve extrapolation ------------------------------------------------------------


def _curve_families(t: np.ndarray, y: np.ndarray) -> list:
    """Fitted curve families as callables of the epoch (least squares; skipped if they fail)."""
    from scipy.optimize import curve_fit  # lazy: scipy.optimize adds ~0.15 s

    out = []
    lt = np.log(t)
    A = np.stack([np.ones_like(t), lt], 1)  # y = a + b log t
    ab = np.linalg.lstsq(A, y, rcond=None)[0]
    out.append(lambda s, ab=ab: ab[0] + ab[1] * np.log(s))
    A = np.stack([np.ones_like(t), 1 / np.log(t + 1)], 1)  # y = a + b / log(t + 1)
    ab2 = np.linalg.lstsq(A, y, rcond=None)[0]
    out.append(lambda s, ab=ab2: ab[0] + ab[1] / np.log(s + 1))
    if len(t) >= 3:
        fams = [(lambda s, a, b, c: a - b * np.power(s, -c), [y[-1], max(y[-1] - y[0], 1e-3), 1.0],
                 ([0, -1, 1e-3], [1.5, 2, 5])),  # power law
                (lambda s, a, b, c: a - b * np.exp(-c * s), [y[-1], max(y[-1] - y[0], 1e-3), 0.5],
                 ([0, -1, 1e-3], [1.5, 2, 5]))]  # exponential

        for f, p0, bounds in fams:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # few points: the covariance is often undefined; unused
                    p, _ = curve_fit(f, t, y, p0=p0, bounds=bounds, maxfev=200)
                out.append(lambda s, f=f, p=p: f(s, *p))
            except (RuntimeError, ValueError):
                pass
    return out


def extrapolate(curve: list[float], epochs: int) -> tuple[float, float]:
    """Mean and max over curve families of the predicted accuracy at `epochs`, from the
    accuracies after epochs 1..k of `curve` (k >= 2)."""
    y = np.asarray(curve, dtype=float)
    t = np.arange(1, len(y) + 1, dtype=float)
    preds = []
    for f in _curve_families(t, y):
        p = float(f(float(epochs)))
        if math.isfinite(p):
            preds.append(min(max(p, 0.0), 1.0))
    if not preds:
        return float(y[-1]), float(y[-1])
    return float(np.mean(preds)), float(np.max(preds))


def lce_search(oracle, seed: int = 0, min_epochs: int = 2, **_) -> None:
    """Uniformly drawn candidates, each trained epoch by epoch; from `min_epochs` on, the run
    stops when the most optimistic curve family predicts a final accuracy below the best
    finished one (Domhan et al. 2015, with least-squares fits instead of MCMC)."""
    rng = np.random.default_rng([seed, 6])
    E, best = oracle.epochs, -math.inf
    while True:
        oracle.clock.check()
        key = check_key(oracle.draw(rng))
        for epoch in range(1, E + 1):
            curve = oracle.train(key, epoch)
            if epoch == E:
                best = max(best, curve[-1])
            elif epoch >= min_epochs and math.isfinite(best):
                with oracle.clock.timed("meta"):
                    _, hi = extrapolate(curve, E)
                if hi < best:
                    break


# --- probe-based: probe-rank and the single-fidelity meta-model loop ----------------------------


def probe_rank(oracle, seed: int = 0, fidelity: str | None = None, init_probes: int = 12, probes_per_round: int = 6,
               **kw) -> None:
    probe_search(oracle, LoopConfig(budget=math.inf, seed=seed, init_full=10**9, fidelity=fidelity,
                                    init_probes=init_probes, probes_per_round=probes_per_round), allow_empty=True)


def probe_meta(oracle, seed: int = 0, fidelity: str | None = None, meta: str = "et", kappa: float = 1.0,
               init_probes: int = 12, probes_per_round: int = 6, **kw) -> None:
    probe_search(oracle, LoopConfig(budget=math.inf, seed=seed, fidelity=fidelity, meta=meta, kappa=kappa,
                                    init_probes=init_probes, probes_per_round=probes_per_round), allow_empty=True)


# --- the multi-fidelity loop led by the meta-model ------------------------------------------------


@dataclass
class MFConfig:
    """Settings of the meta-model-led multi-fidelity search (`mf_search`).

    The class defaults are the settings first chosen on the original MLP table (tuned and ranked on
    that same table). `run_method('mf', ...)` (the CLI, the API, the benchmark) overrides two of
    them with `TUNED['mf']` — eta 9 and propose 0 (a uniformly drawn new candidate) — chosen on the
    development tables mlp-dev and cnn-dev from eta ∈ {3, 6, 9} × propose ∈ {0, 16} (docs/search.md,
    "Tuning log")."""

    ladder: list = field(default_factory=list)  # rungs; default: [probe at `fidelity`, full training]
    fidelity: str | None = None  # the probe rung (default: the oracle's first, the cheapest)
    eta: int = 6  # a rung promotes its best 1/eta
    kappa: float = 0.0  # promotion score = predicted mean + kappa * ensemble s.d.
    meta: str = "et"
    min_fit: int = 4  # finished candidates before the meta-model is fitted
    refit_every: int = 1  # refit when this many new candidates have finished
    # how a candidate leaves a rung that is part of its full training (not the last): "top" = the
    # rung's best 1/eta go on (ASHA); "improve" = it goes on unless the meta-model predicts it
    # cannot beat the best finished candidate (mean + stop_kappa * s.d. below it)
    full_rule: str = "top"
    stop_kappa: float = 1.0
    # which new candidate to probe: 0 = a uniformly drawn one; n > 0 = the best of n drawn ones by a
    # meta-model of probe validation accuracy from the hyperparameters, fitted on every probe so far
    # (refitted every `propose_refit` probes), by predicted mean + propose_kappa * s.d.
    propose: int = 16
    propose_kappa: float = 1.0
    propose_refit: int = 12
    # cost-aware promotion: subtract cost_weight × log(candidate's probe time / median probe time)
    # from its score, so that of two equally promising candidates the cheaper one trains first
    cost_weight: float = 0.0
    # the meta-model ranks a rung only while it has ranked that rung's promoted candidates better
    # than their raw rung values did (Spearman with their final accuracy, judged on the
    # predictions made before they were promoted; at least `gate_min` of them); False: always
    gate: bool = True
    gate_min: int = 6
    init_probes: int = 12  # candidates probed before anything is promoted (a first pool to choose from)
    seed: int = 0


def _rung_features(oracle, key, rung, value_feats: dict) -> dict:
    kind, x = rung
    if kind == "probe":
        return {f"{x}:{n}": v for n, v in value_feats.items() if not n.startswith("hp_")}
    curve = [oracle_curve0(oracle)] + value_feats["curve"]
    return learning_curve_features(curve)


def oracle_curve0(oracle) -> float:
    """The validation accuracy before training (chance), as epoch 0 of a learning curve."""
    return float(getattr(oracle, "chance", 0.1))


class MFSearch:
    """State of one multi-fidelity search (see module doc); `run()` spends the budget."""

    def __init__(self, oracle, cfg: MFConfig, on_event=None):
        if cfg.full_rule not in ("top", "improve"):
            raise UserError(f"full_rule must be 'top' or 'improve', got '{cfg.full_rule}'")
        self.o, self.cfg, self.on_event = oracle, cfg, on_event
        fid = cfg.fidelity or oracle.fidelities[0]
        self.ladder = [tuple(r) for r in (cfg.ladder or [("probe", fid), ("full", oracle.epochs)])]
        R = len(self.ladder)
        self.done = [dict() for _ in range(R)]  # rung -> {key: value}
        self.promoted = [set() for _ in range(R)]
        self.stopped = [set() for _ in range(R)]
        self.feats: dict = {}  # key -> {rung: features}
        self.finals: dict = {}
        self.models: dict = {}
        self._fitted_at = -10**9
        self.rng = np.random.default_rng([cfg.seed, 8])
        self.n_meta_fits = 0
        self._prop_model, self._prop_at = None, 0
        self.predicted = [dict() for _ in range(R)]  # rung -> {key: model's prediction when promoted}
        self._last_pred: dict = {}
        self.cost0: dict = {}

    def features_upto(self, key, r: int) -> dict:
        out = dict(self.o.space.encode(self.o.values(key)))
        for i in range(r + 1):
            out.update(self.feats[key][i])
        return out

    def _refit(self) -> None:
        keys = list(self.finals)
        y = [self.finals[k] for k in keys]
        with self.o.clock.timed("meta"):
            self.models = {r: MetaModel(self.cfg.meta, seed=self.cfg.seed).fit([self.features_upto(k, r) for k in keys], y)
                           for r in range(len(self.ladder) - 1)}
        self.n_meta_fits += len(self.models)
        self._fitted_at = len(keys)

    def use_model(self, r: int) -> bool:
        """Whether the meta-model ranks rung r now (see MFConfig.gate)."""
        if r not in self.models:
            return False
        if not self.cfg.gate:
            return True
        pairs = [(m, self.done[r][k], self.finals[k]) for k, m in self.predicted[r].items() if k in self.finals]
        if len(pairs) < self.cfg.gate_min:
            return True  # not enough evidence yet: the model gets its chance (its predictions are recorded)

        m, raw, y = (np.array(v) for v in zip(*pairs))
        sm, sr = stats.spearmanr(m, y).statistic, stats.spearmanr(raw, y).statistic
        return bool(np.nan_to_num(sm, nan=-1.0) > np.nan_to_num(sr, nan=-1.0))

    def scores(self, r: int, keys: list) -> dict:
        if r not in self.models:
            out = {k: self.done[r][k] for k in keys}
        else:
            with self.o.clock.timed("meta"):
                mu, sd = self.models[r].predict([self.features_upto(k, r) for k in keys])
            pred = {k: float(m) for k, m in zip(keys, mu)}
            self._last_pred[r] = pred
            out = ({k: float(m + self.cfg.kappa * s) for k, m, s in zip(keys, mu, sd)} if self.use_model(r)
                   else {k: self.done[r][k] for k in keys})
        if self.cfg.cost_weight and self.cost0:
            med = float(np.median(list(self.cost0.values())))
            out = {k: v - self.cfg.cost_weight * math.log(max(self.cost0.get(k, med), 1e-9) / max(med, 1e-9))
                   for k, v in out.items()}
        return out

    def step(self) -> None:
        o, cfg = self.o, self.cfg
        o.clock.check()
        if len(self.finals) >= cfg.min_fit and len(self.finals) - self._fitted_at >= cfg.refit_every:
            self._refit()
        R = len(self.ladder)
        best = max(self.finals.values()) if self.finals else -math.inf
        if len(self.done[0]) < cfg.init_probes:
            self.run(self._new_candidate(), 0)
            return
        for r in range(R - 2, -1, -1):  # the highest rung with a promotable candidate goes first
            if cfg.full_rule == "improve" and self.ladder[r][0] == "full":
                waiting = [c for c in self.done[r] if c not in self.promoted[r] and c not in self.stopped[r]]
                if not waiting:
                    continue
                if r in self.models and math.isfinite(best):
                    with o.clock.timed("meta"):
                        mu, sd = self.models[r].predict([self.features_upto(c, r) for c in waiting])
                    go = [c for c, m, s in zip(waiting, mu, sd) if m + cfg.stop_kappa * s >= best]
                    self.stopped[r].update(c for c in waiting if c not in go)
                else:
                    go = waiting  # no model yet: nothing is stopped
                if go:
                    self.promoted[r].add(go[0])
                    self.run(go[0], r + 1)
                    return
                continue
            cands = list(self.done[r])
            k = len(cands) // cfg.eta
            if k < 1 or len(self.promoted[r]) >= k:  # at most 1/eta of a rung ever goes up (ASHA's budget split)
                continue
            sc = self.scores(r, cands)
            top = sorted(cands, key=lambda c: -sc[c])[:k]
            up = [c for c in top if c not in self.promoted[r]]
            if up:
                self.promoted[r].add(up[0])
                if up[0] in self._last_pred.get(r, {}):  # what the model predicted when it went up
                    self.predicted[r][up[0]] = self._last_pred[r][up[0]]
                self.run(up[0], r + 1)
                return
        self.run(self._new_candidate(), 0)

    def _new_candidate(self):
        o, cfg = self.o, self.cfg
        if cfg.propose <= 0 or len(self.done[0]) < max(8, cfg.propose_refit):
            return check_key(o.draw(self.rng))

        offers = o.offer(self.rng, cfg.propose)
        if not offers:
            raise OutOfBudget()
        with o.clock.timed("meta"):
            if self._prop_model is None or len(self.done[0]) - self._prop_at >= cfg.propose_refit:
                keys = list(self.done[0])
                self._prop_model = MetaModel(cfg.meta, seed=cfg.seed).fit(
                    [o.space.encode(o.values(k)) for k in keys], [self.done[0][k] for k in keys])
                self._prop_at = len(keys)
            mu, sd = self._prop_model.predict([o.space.encode(o.values(k)) for k in offers])
        return o.take(offers[int(np.argmax(mu + cfg.propose_kappa * sd))])

    def run(self, key, r: int) -> None:
        kind, x = self.ladder[r]
        before = self.o.clock.spent
        if kind == "probe":
            f = self.o.probe(key, x)
            if r == 0:
                self.cost0[key] = self.o.clock.spent - before  # what the probe measurably cost
            value, rf = float(f["val_acc"]), _rung_features(self.o, key, self.ladder[r], f)
        else:
            curve = self.o.train(key, int(x))
            value, rf = float(curve[-1]), _rung_features(self.o, key, self.ladder[r], {"curve": curve})
        self.feats.setdefault(key, {})[r] = rf
        self.done[r][key] = value
        if r == len(self.ladder) - 1:
            self.finals[key] = value
        if self.on_event is not None:
            self.on_event(kind, key, r, value)

    def run_all(self) -> None:
        try:
            while True:
                self.step()
        except OutOfBudget:
            pass


def mf_search(oracle, seed: int = 0, fidelity: str | None = None, **kw) -> MFSearch:
    cfg = MFConfig(seed=seed, fidelity=fidelity, **{k: v for k, v in kw.items() if k in MFConfig.__dataclass_fields__})
    s = MFSearch(oracle, cfg)
    s.run_all()
    return s


# --- successive halving, ASHA and Hyperband whose lowest rung is the probe --------------------------
#
# The settings of these three were tuned on the development tables of the search benchmark
# (docs/search.md, "Tuning log"); PROBE_RUNG_DEFAULTS holds the winners.
PROBE_RUNG_DEFAULTS = {
    "sh-probe": {"rungs": "probe,full", "eta": 9, "pool": 2},  # brackets of pool × eta^(rungs-1) candidates
    "asha-probe": {"rungs": "probe,full", "eta": 9, "init": 0, "rule": "quota"},
    "hyperband-probe": {"rungs": "probe,full@auto,full", "eta": 9},  # full@auto: a pause after E/eta epochs
}


# Every method's free settings as tuned on the search benchmark's development tables (docs/search.md,
# "Tuning log"): what `run_method` uses for an option not given. The probe-rung methods' are in
# PROBE_RUNG_DEFAULTS; random search has none.
TUNED = {
    "tpe": {"n_startup": 5}, "bohb": {"eta": 6, "n_startup": 10}, "sh": {"eta": 6}, "hyperband": {"eta": 6},
    "asha": {"eta": 6}, "lce": {"min_epochs": 2}, "probe-rank": {"init_probes": 24, "probes_per_round": 9},
    "probe": {"kappa": 1.0}, "mf": {"eta": 9, "propose": 0},
}


def _probe_opts(name: str, oracle, fidelity, rungs, eta):
    d = PROBE_RUNG_DEFAULTS[name]
    eta = int(eta or d["eta"])
    if eta < 2:
        raise UserError(f"eta must be at least 2, got {eta}")
    return parse_rungs(rungs or d["rungs"], oracle.epochs, fidelity or oracle.fidelities[0], eta), eta


def _sh_probe(oracle, seed: int = 0, fidelity: str | None = None, eta: int | None = None, rungs=None,
              n0: int | None = None, **_):
    """Synchronous successive halving over `rungs` (default: the probe, then the full training), brackets
    of `n0` candidates (default: PROBE_RUNG_DEFAULTS' pool × eta^(rungs-1))."""
    ladder, eta = _probe_opts("sh-probe", oracle, fidelity, rungs, eta)
    n0 = n0 or PROBE_RUNG_DEFAULTS["sh-probe"]["pool"] * eta ** (len(ladder) - 1)
    return successive_halving(oracle, seed, ladder, eta, n0=n0)


def _hb_probe(oracle, seed: int = 0, fidelity: str | None = None, eta: int | None = None, rungs=None, **_):
    """Hyperband's brackets over `rungs` (default: the probe, then the full training)."""
    ladder, eta = _probe_opts("hyperband-probe", oracle, fidelity, rungs, eta)
    return hyperband(oracle, seed, ladder, eta)


PROMOTION_RULES = ("asha", "quota")


class ASHA:
    """Asynchronous successive halving (Li et al. 2020) over a ladder whose lowest rung may be the probe.

    Each step promotes a candidate of the highest rung that has one to promote, and otherwise
    starts a new candidate on the lowest rung. A candidate is promotable when it is among the
    best ⌊n/η⌋ of the n candidates its rung has finished and has not gone up yet; ``rule='quota'``
    also caps the promotions of a rung at ⌊n/η⌋ (a candidate that was promoted and later fell out
    of the top still counts). Nothing is promoted before `init` candidates have finished the
    lowest rung. When no new candidate is left to draw, the best unpromoted candidate of the
    highest rung that has one goes up (`leftover`), until every candidate is at the top. `scorer(asha, r, keys) -> {key: score}` may rank a rung by something other than
    its raw values (a meta-model, a curve extrapolator); by default the raw values."""

    def __init__(self, oracle, ladder: list, eta: int = 6, init: int = 0, rule: str = "asha", seed: int = 0,
                 scorer=None, on_event=None):
        if rule not in PROMOTION_RULES:
            raise UserError(f"unknown promotion rule '{rule}'; choose from {', '.join(PROMOTION_RULES)}")
        if eta < 2:
            raise UserError(f"eta must be at least 2, got {eta}")
        self.o, self.ladder, self.eta, self.init, self.rule = oracle, [tuple(r) for r in ladder], int(eta), int(init), rule
        self.scorer, self.on_event = scorer, on_event
        R = len(self.ladder)
        self.done = [{} for _ in range(R)]  # rung -> {key: value}, in the order they finished
        self.promoted = [set() for _ in range(R)]
        self.feats: dict = {}  # key -> {rung: probe features or the curve so far}
        self.rng = np.random.default_rng([seed, 9])

    def promotable(self, r: int):
        cands = list(self.done[r])
        k = len(cands) // self.eta
        if k < 1 or len(self.done[0]) < self.init or (self.rule == "quota" and len(self.promoted[r]) >= k):
            return None
        sc = self.scorer(self, r, cands) if self.scorer is not None else self.done[r]
        for c in sorted(cands, key=lambda c: -sc[c])[:k]:  # stable: ties keep the order they finished in
            if c not in self.promoted[r]:
                return c
        return None

    def step(self) -> None:
        self.o.clock.check()
        for r in range(len(self.ladder) - 2, -1, -1):
            c = self.promotable(r)
            if c is not None:
                self.promoted[r].add(c)
                self.run(c, r + 1)
                return
        key = self.o.draw(self.rng)
        if key is None:  # no untried candidate is left (a finite space, a benchmark table's pool)
            c, r = self.leftover()
            if c is None:
                raise OutOfBudget()
            self.promoted[r].add(c)
            self.run(c, r + 1)
            return
        self.run(key, 0)

    def leftover(self):
        """Once nothing new can be drawn: the best candidate not yet promoted of the highest rung that has
        one (as probe-rank trains the best untrained probe when none is left to probe), so the budget
        is spent instead of stopping early; (None, None) when every candidate is at the top."""
        for r in range(len(self.ladder) - 2, -1, -1):
            cands = [c for c in self.done[r] if c not in self.promoted[r]]
            if cands:
                sc = self.scorer(self, r, cands) if self.scorer is not None else self.done[r]
                return max(cands, key=lambda c: sc[c]), r  # ties: the first finished
        return None, None

    def run(self, key, r: int) -> None:
        kind, x = self.ladder[r]
        if kind == "probe":
            f = self.o.probe(key, x)
            value, info = float(f["val_acc"]), f
        else:
            curve = self.o.train(key, int(x))
            value, info = float(curve[-1]), list(curve)
        self.feats.setdefault(key, {})[r] = info
        self.done[r][key] = value
        if self.on_event is not None:
            self.on_event(kind, key, r, value)

    def run_all(self) -> "ASHA":
        try:
            while True:
                self.step()
        except OutOfBudget:
            pass
        return self


def asha_probe(oracle, seed: int = 0, fidelity: str | None = None, eta: int | None = None, rungs=None,
               init: int | None = None, rule: str | None = None, scorer=None, **_) -> ASHA:
    """ASHA over `rungs` (default: the probe, then the full training); see `ASHA`."""
    d = PROBE_RUNG_DEFAULTS["asha-probe"]
    ladder, eta = _probe_opts("asha-probe", oracle, fidelity, rungs, eta)
    return ASHA(oracle, ladder, eta, init=d["init"] if init is None else init, rule=rule or d["rule"], seed=seed,
                scorer=scorer).run_all()


METHODS = {
    "random": random_search,
    "tpe": tpe_search,
    "sh": successive_halving,
    "hyperband": hyperband,
    "sh-probe": _sh_probe,
    "asha-probe": asha_probe,
    "hyperband-probe": _hb_probe,
    "asha": asha,
    "bohb": bohb,
    "lce": lce_search,
    "probe-rank": probe_rank,
    "probe": probe_meta,
    "mf": mf_search,
}
# The method `lossprobe search` uses by default (docs/search.md, "Which method is the default").
DEFAULT_METHOD = "probe-rank"


def _rungs_text(name: str) -> str:
    d = PROBE_RUNG_DEFAULTS[name]
    mid = "" if d["rungs"] == "probe,full" else ", then part of the full training"
    return (f"whose lowest rung is a short training on a subset of the training data (the probe: by default 10% of "
            f"it for one epoch){mid}, and whose top rung is the full training; a rung promotes its best 1/{d['eta']}")


def describe_method(name: str) -> str:
    """What a method does, in plain words (the help of `lossprobe search` and the docs say it of the default)."""
    if name == "asha-probe":
        return ("asynchronous successive halving (ASHA) " + _rungs_text(name) + ": a candidate is trained in full as "
                "soon as its probe is among the best 1/" + str(PROBE_RUNG_DEFAULTS[name]["eta"]) + " of the probes "
                "so far (and at most that share of them ever is), otherwise a new candidate is probed")
    if name == "sh-probe":
        return "synchronous successive halving " + _rungs_text(name)
    if name == "hyperband-probe":
        return "Hyperband " + _rungs_text(name)
    if name == "probe-rank":
        t = TUNED["probe-rank"]
        return ("successive halving with two rungs: candidates get a short training on a subset of the training "
                f"data (the probe: by default 10% of it for one epoch), {t['init_probes']} at first and "
                f"{t['probes_per_round']} more before each further full training, and the untrained candidate "
                "whose probe scored best is trained in full; no meta-model")
    return {"mf": "a multi-fidelity loop led by a meta-model", "probe": "probes ranked by a meta-model",
            "random": "random search", "tpe": "Optuna's TPE", "sh": "successive halving over epochs",
            "hyperband": "Hyperband over epochs", "asha": "ASHA over epochs", "bohb": "TPE with the Hyperband pruner",
            "lce": "learning-curve extrapolation"}.get(name, name)


DEFAULT_METHOD_TEXT = describe_method(DEFAULT_METHOD)
BASELINES = ("random", "tpe", "sh", "hyperband", "sh-probe", "asha-probe", "hyperband-probe", "asha", "bohb", "lce",
             "probe-rank")


def run_method(name: str, oracle, seed: int = 0, **options):
    """Run method `name` against `oracle` until its budget is spent; returns ``oracle.trace``. Options
    not given take the method's tuned settings (`TUNED`, `PROBE_RUNG_DEFAULTS`)."""
    if name not in METHODS:
        raise UserError(f"unknown search method '{name}'; choose from {', '.join(METHODS)}")
    options = {**TUNED.get(name, {}), **{k: v for k, v in options.items() if v is not None}}
    try:
        METHODS[name](oracle, seed=seed, **options)
    except OutOfBudget:
        pass
    return oracle.trace


def config_dict(cfg) -> dict:
    return asdict(cfg)
