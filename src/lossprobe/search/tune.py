"""Search your own model: `run(build, train_data, space, ...)` from Python, and what
``lossprobe search --model file.py:build --data TRAIN ...`` runs.

    import lossprobe as lp
    result = lp.search.run(build, (x, y), "space.toml", loss="mse", objective="loss",
                           budget="5m", out="runs/search")
    result.model_kwargs, result.train_config     # the chosen configuration, as build and fit take it
    result.checkpoint                            # its trained weights (safetensors)
    result.history                               # every probe and training step, in the objective's units
    result.model()                               # the chosen network, loaded

`build` is any callable returning an nn.Module from keyword arguments (the space's [model]
table), or a 'path/to/file.py:build' / 'module:build' spec that every worker imports itself.
The space's [train] table holds `fit`'s options. The methods, the probes and their features,
the Optuna storage (resume after a kill, several workers on one ``storage``), the Ray backend
and the sealed test set are those of the built-in search (`lossprobe.search.engine`); the
task (`lossprobe.search.user`) brings your builder, data, loss, forward and objective.

The run directory `out` holds what ``lossprobe search`` writes (chosen.json, events.json,
summary.json, report.md, figures/, checkpoints/, search.db) and the `SearchRun` itself
(search.npz/.json: `SearchRun.load(out)`, `lp.load_result(out / 'search.npz')`), which the
report site draws. Running the same call again on the same `out` resumes the search, or
returns the finished result without reading the test set again.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from lossprobe.core.specs import source_file
from lossprobe.data.sources import files_of
from lossprobe.errors import UserError
from lossprobe.results.contract import Result, register
from lossprobe.results.plotspec import Series, line
from lossprobe.results.store import RunDir
from lossprobe.runtime.cluster import DEFAULT_TIMEOUT, Executor
from lossprobe.search.engine import LiveOracle, check_storage_url, default_storage, storage_error, wait_reporter
from lossprobe.search.loop import LoopConfig, probe_search
from lossprobe.search.methods import DEFAULT_METHOD, METHODS, PROBE_RUNG_DEFAULTS, TUNED, run_method
from lossprobe.search.probes import parse_families
from lossprobe.search.space import UserSpace, check_builder_names
from lossprobe.search.user import UserTaskSpec, resolve_builder
from lossprobe.training.checkpoints import load_checkpoint

__all__ = ["SearchRun", "parse_budget", "run"]

KIND_CODES = {"probe": 0, "train": 1, "full": 2}


DEFAULT_BUDGET = "20x"  # 20 full trainings of measured time: the search benchmark's budget


def parse_budget(text) -> tuple[float, str]:
    """'60' (or 60) -> (60, 'epochs'); '90s', '15m', '2h' -> (seconds, 'seconds'); '20x' -> (20,
    'trainings'): 20 full trainings of measured time (see `LiveOracle`'s budget_trainings)."""
    t = str(text).strip().lower()
    mult = {"s": 1.0, "m": 60.0, "h": 3600.0}
    try:
        if t and t[-1] in mult:
            v, axis = float(t[:-1]) * mult[t[-1]], "seconds"
        elif t and t[-1] == "x":
            v, axis = float(t[:-1]), "trainings"
        else:
            v, axis = float(t), "epochs"
    except ValueError:
        raise UserError(f"--budget must be a number of epochs (60), a wall-clock time (90s, 15m, 2h) or a number of "
                        f"full trainings of measured time (20x), got '{text}'") from None
    if not (v > 0 and math.isfinite(v)):
        raise UserError(f"--budget must be a positive, finite number, got '{text}'")
    return v, axis


@dataclass(frozen=True)
class Budget:
    """A search's budget: `value` in nominal full-data epochs ('epochs'), measured seconds ('seconds')
    or full trainings of measured time ('trainings': `value` × the median measured time of the
    full trainings finished so far)."""

    value: float
    axis: str

    @property
    def unit(self) -> str:
        return {"epochs": " epochs", "seconds": "s", "trainings": "x"}[self.axis]

    def oracle_kwargs(self) -> dict:
        """How `LiveOracle` takes it."""
        if self.axis == "trainings":
            return {"axis": "seconds", "budget": math.inf, "budget_trainings": self.value}
        return {"axis": self.axis, "budget": self.value}

    @property
    def loop_budget(self) -> float:
        """The probe loop's own cap (the oracle's clock holds a budget in trainings)."""
        return math.inf if self.axis == "trainings" else self.value

    def describe(self) -> str:
        if self.axis == "trainings":
            return (f"{self.value:g} full trainings of measured time ({self.value:g} × the median measured time of "
                    "the full trainings finished so far)")
        return f"{self.value:g}{self.unit}" + (" of measured time" if self.axis == "seconds" else "")


def budget_of(text, epochs: int, fraction: float, probe_epochs: int) -> Budget:
    """The `Budget` of a ``--budget`` value (None: `DEFAULT_BUDGET`), checked against one full training."""
    v, axis = parse_budget(DEFAULT_BUDGET if text is None else text)
    if axis == "epochs" and v < epochs:
        raise UserError(f"--budget {v:g} is less than one full training ({epochs} epochs); give at least "
                        f"{epochs + fraction * probe_epochs:g}")
    if axis == "trainings" and v < 1:
        raise UserError(f"--budget {v:g}x is less than one full training; give at least 1x")
    return Budget(v, axis)


def method_options(method: str, eta=None, rungs=None, init=None, rule=None, kappa=None, meta=None) -> dict:
    """The options `run_method` gets from the command line's settings (unset ones keep the method's
    defaults)."""
    opts = {"eta": eta} if eta else {}
    if method in PROBE_RUNG_DEFAULTS:
        if rungs:
            opts["rungs"] = rungs
        if method == "asha-probe":
            if init is not None:
                opts["init"] = init
            if rule:
                opts["rule"] = rule
    if method == "mf":
        opts.update(kappa=kappa, meta=meta)
        if init is not None:
            opts["init_probes"] = init
    return opts


def loop_config(method: str, budget: "Budget", init_probes=None, probes_per_round=None, init_full: int = 3,
                kappa: float = 0.0, meta: str = "et", sharpness: bool = True, seed: int = 0) -> LoopConfig:
    """The probe loop's settings for 'probe' / 'probe-rank' (unset pools: the method's tuned ones, `TUNED`)."""
    t = TUNED.get(method, {}) if method in ("probe", "probe-rank") else {}
    return LoopConfig(budget=budget.loop_budget,
                      probes_per_round=probes_per_round or t.get("probes_per_round", 6),
                      init_probes=init_probes or t.get("init_probes", 12),
                      init_full=init_full if method != "probe-rank" else 10**9, kappa=kappa, meta=meta,
                      sharpness=sharpness, seed=seed)


def run_live(method: str, oracle, loop_cfg: LoopConfig, seed: int, opts: dict):
    """Run `method` against a live oracle; the probe loop's result for 'probe'/'probe-rank' (its
    predictions are saved), else None."""
    if method in ("probe", "probe-rank"):
        return probe_search(oracle, loop_cfg)
    run_method(method, oracle, seed=seed, **opts)
    return None


@register
@dataclass
class SearchRun(Result):
    """The outcome of a search over your own model (`run`): the chosen configuration, its trained
    weights and the search's history, every number in the objective's units.

    `history` lists every probe and training step: ``kind`` ('probe', 'train': a piece of a
    full training, 'full': a full training finished), ``candidate``, ``epoch``, ``value`` (the
    probe's value on the probe split, or the validation value after that epoch), ``spent``
    (budget spent after it), ``seconds`` and ``reused`` (read from the storage, not computed)."""

    NAME: ClassVar[str] = "search"

    candidate: int
    values: dict  # the searched hyperparameters of the chosen configuration
    model_kwargs: dict  # what the builder is called with ([model], fixed values included)
    train_config: dict  # fit's options (lossprobe.TrainConfig as a dict)
    objective: str  # 'accuracy', 'loss (mse)', or the metric's name
    direction: str  # 'max' or 'min'
    val_value: float  # the chosen configuration's final validation value
    test_value: float | None  # its test value (None: no test data)
    checkpoint: str  # its trained weights (safetensors)
    method: str
    budget: float
    axis: str  # 'epochs' (nominal) or 'seconds' (measured)
    spent: float
    history: list = field(default_factory=list)
    build: str = ""  # the builder's spec string ('' when it was a Python object)
    out: str = ""
    storage: str = ""
    splits: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)  # test loss and accuracy/metric, who evaluated it
    seconds: float = 0.0

    # --- the result contract ---
    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        h = self.history
        full = [e for e in h if e["kind"] == "full"]
        probes = [e for e in h if e["kind"] == "probe"]
        fv = np.array([e["value"] for e in full], dtype=float)
        best = (np.maximum.accumulate(fv) if self.direction == "max" else np.minimum.accumulate(fv)) if len(fv) else fv
        final = best[-1] if len(best) else math.nan
        return {
            f"{prefix}spent": np.array([e["spent"] for e in h], dtype=float),
            f"{prefix}value": np.array([_nan(e["value"]) for e in h], dtype=float),
            f"{prefix}candidate": np.array([e["candidate"] for e in h], dtype=np.int64),
            f"{prefix}kind": np.array([KIND_CODES[e["kind"]] for e in h], dtype=np.int64),
            f"{prefix}full_spent": np.array([e["spent"] for e in full], dtype=float),
            f"{prefix}full_value": fv,
            f"{prefix}best_value": best,
            # how far the incumbent was from the final choice, in the objective's units
            f"{prefix}incumbent_regret": (final - best) * (1.0 if self.direction == "max" else -1.0),
            f"{prefix}probe_spent": np.array([e["spent"] for e in probes], dtype=float),
            f"{prefix}probe_value": np.array([_nan(e["value"]) for e in probes], dtype=float),
        }

    def metadata(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any] | None = None,
                    prefix: str = ""):
        names = {f.name for f in dataclasses.fields(cls)}
        md = {k: v for k, v in (metadata or {}).items() if k in names}
        for k in ("val_value", "spent", "budget", "seconds"):
            if md.get(k) is None:
                md[k] = math.nan
        return cls(**md)

    def summary(self) -> dict:
        return {"candidate": self.candidate, "values": self.values, "objective": self.objective,
                "direction": self.direction, "val_value": self.val_value, "test_value": self.test_value,
                "checkpoint": self.checkpoint, "method": self.method, "budget": self.budget, "axis": self.axis,
                "spent": self.spent, "n_probes": sum(e["kind"] == "probe" for e in self.history),
                "n_full": sum(e["kind"] == "full" for e in self.history), "seconds": self.seconds}

    def plots(self, prefix: str = "") -> list:
        unit = "s" if self.axis in ("seconds", "trainings") else "full-data epochs"
        ylabel = f"validation {self.objective}"
        out = []
        if len(self.history) and any(e["kind"] == "full" for e in self.history):
            out.append(line(f"search: {self.objective} of full trainings", f"{prefix}full_spent",
                            [Series(f"{prefix}full_value", "full training (final value)", group="full", dash=True),
                             Series(f"{prefix}best_value", "best so far", group="best")],
                            xlabel=f"budget spent ({unit})", ylabel=ylabel))
        return out

    # --- use ---
    def regret(self, best: float) -> float:
        """How much worse the chosen configuration's validation value is than `best` (a value you
        know to be attainable), in the objective's units."""
        return (best - self.val_value) if self.direction == "max" else (self.val_value - best)

    def model(self, build=None):
        """The chosen network with its trained weights: ``build(**model_kwargs)`` (default: the
        builder the search used, when it was named by a spec string)."""
        if build is None:
            if not self.build:
                raise UserError("this search's builder was a Python object: pass it, result.model(build)")
            build = self.build
        fn, _, _ = resolve_builder(build)
        model = fn(**self.model_kwargs)  # the spec's own key=value arguments are in model_kwargs already
        path = Path(self.checkpoint)
        if not path.is_absolute() and self.out:
            path = Path(self.out) / path
        return load_checkpoint(model, path).eval()


def _nan(v):
    return math.nan if v is None else float(v)


def _inputs(spec: UserTaskSpec, space) -> dict:
    """The files a search reads, for its run directory's fingerprints (a resume after one of them
    changed is refused naming it): data given as specs, the code of the builder, loss, forward
    and objective given as 'file.py:fn' or 'module:fn', and the space file."""
    out = {}
    for what, data in (("training data", spec.train), ("validation data", spec.val), ("test data", spec.test),
                       ("probe data", spec.probe)):
        out.update({f"{what} {k}": v for k, v in files_of(data).items()})
    for what, code in (("model builder", spec.build), ("loss", spec.loss), ("forward", spec.forward),
                       ("objective", spec.objective)):
        f = source_file(code)
        if f is not None:
            out[f"{what} code"] = f
    if isinstance(space, (str, os.PathLike)):
        out["search space"] = space
    return out


def _space(space, builder, builder_kwargs) -> UserSpace:
    if isinstance(space, UserSpace):
        check_builder_names(builder, [n for n, t in space.tables.items() if t == "model"] + list(builder_kwargs),
                            f"search space {space.source}")
        return space
    if isinstance(space, (str, os.PathLike)):
        return UserSpace.from_toml(space, builder=builder, builder_kwargs=builder_kwargs)
    if isinstance(space, Mapping):
        return UserSpace.from_dict(dict(space), builder=builder, builder_kwargs=builder_kwargs)
    raise UserError(f"space must be a TOML file, a dict with [model]/[train] tables or a UserSpace, "
                    f"got {type(space).__name__}")


def run(build, train_data, space, *, val_data=None, test_data=None, probe_data=None, loss="cross_entropy",
        forward=None, objective="accuracy", direction: str | None = None, method: str = DEFAULT_METHOD,
        budget=DEFAULT_BUDGET, out=None, storage: str | None = None, study_name: str = "search", seed: int = 0,
        fraction: float = 0.1, probe_epochs: int = 1, features="default", val_fraction: float = 0.2,
        probe_split: float = 0.1, backend: str = "local", address: str | None = None, num_cpus: int | None = None,
        ray_timeout: float = DEFAULT_TIMEOUT, eta: int | None = None, kappa: float | None = None,
        meta: str = "et", init_probes: int | None = None, probes_per_round: int | None = None, init_full: int = 3,
        sharpness: bool = True, rungs=None, promotion: str | None = None, force: bool = False,
        verbose: bool = True) -> SearchRun:
    """Search the hyperparameters of your own model; returns the `SearchRun` (see the module doc).

    Args:
        build: callable returning an nn.Module from the [model] values, or a 'file.py:build' spec.
        train_data: any data form of the batch contract, or a ``--data`` spec string.
        space: a TOML file, a dict ``{"model": {...}, "train": {...}}`` or a `UserSpace`.
        val_data: the selection split (default: carved from `train_data` by a seeded
            permutation, `val_fraction` of it).
        probe_data: the split probes are evaluated on (default: carved from what remains of
            `train_data`, `probe_split` of it; never the selection split).
        test_data: evaluated once, for the chosen configuration (default: no test evaluation).
        loss: the loss, as every probe takes it (a name, a 'module:function' spec or a function).
        forward: how the model is called on a batch (see `lossprobe.core.batching`).
        objective: 'accuracy', 'loss' (minimised) or a metric ``fn(output, target) -> [B]``
            (maximised; ``direction='min'`` minimises it).
        method: any of `lossprobe.search.methods.METHODS`.
        budget: full trainings of measured time ('20x', the default: 20 × the median measured time
            of a full training, as the search benchmark's budget), wall-clock time ('90s', '15m') or
            full-data epochs (a number, probes included: a probe costs fraction × epochs).
        out: the run directory (default: a new temporary folder).
        storage: an Optuna storage URL (default: OUT/search.db) that several workers may share.
        fraction: the share of the training data a probe trains on.
        probe_epochs: how long a probe trains.
        features: the probe feature families, by name.
        eta: the promotion ratio of successive-halving methods (unset: the method's default).
        rungs: the rungs of the probe-rung methods, e.g. 'probe,full' (unset: the method's default).
        promotion: 'asha' or 'quota', how asha-probe promotes (unset: the method's default).
        kappa: the exploration weight of the meta-model methods.
        meta: the meta-model (see `lossprobe.search.meta`).
        init_probes: probes before the first full training (meta-model methods).
        probes_per_round: probes between full trainings (meta-model methods).
        init_full: full trainings before the meta-model is refitted.
        sharpness: include the sharpness probe features.
        verbose: print one line per probe and training step.
    """
    t_start = time.perf_counter()
    if method not in METHODS:
        raise UserError(f"unknown search method '{method}'; choose from {', '.join(METHODS)}")
    if not 0 < fraction <= 1:
        raise UserError(f"--fraction must be in (0, 1], got {fraction}")
    if address and backend != "ray":
        raise UserError("--address needs --backend ray")
    spec = UserTaskSpec(build, train_data, val_data, test_data, probe_data, loss, forward, objective, direction,
                        val_fraction, probe_split, seed)
    builder, builder_kwargs, _ = resolve_builder(spec.build)
    space_arg = space
    space = _space(space, builder, builder_kwargs)  # names checked before any data is read
    families = parse_families(features)
    bud = budget_of(budget, space.epochs, fraction, probe_epochs)
    budget, axis = bud.value, bud.axis
    task = spec.load()
    task.check(space, seed)  # the model takes the data and the objective has numbers, before any output
    g = task.goal
    kappa = kappa if kappa is not None else (1.0 if method == "probe" else 0.0)
    loop_cfg = loop_config(method, bud, init_probes, probes_per_round, init_full, kappa, meta, sharpness, seed)
    opts = method_options(method, eta, rungs, init_probes, promotion, kappa, meta)
    method_cfg = {"method": method, "budget": budget, "axis": axis, "families": list(families), "eta": eta,
                  "kappa": kappa, "meta": meta, **({"options": opts} if set(opts) - {"eta", "kappa", "meta"} else {})}
    config = {"space": space.to_dict(), "task": spec.describe(), "loop": dataclasses.asdict(loop_cfg),
              "fraction": fraction, "probe_epochs": probe_epochs, "storage": storage, "study_name": study_name,
              **method_cfg}
    if storage:
        check_storage_url(storage)
    executor = Executor(backend, address, num_cpus, timeout=ray_timeout)  # Ray first: fails fast
    if out is None:
        out = tempfile.mkdtemp(prefix="lossprobe-search-")
    try:
        rd = RunDir(out, "search", config, force=force, seeds={"search": seed}, inputs=_inputs(spec, space_arg))
    except BaseException:
        executor.close()  # a Ray this call started
        raise
    say = print if verbose else (lambda *a, **k: None)
    if rd.done("search", "chosen.json", "search.json"):
        rd.complete()  # (again, if a kill came between the last two writes)
        executor.close()
        res = SearchRun.load(rd.path)
        test = "no test data" if res.test_value is None else f"test {g.name} {res.test_value:.6g}"
        say(f"search already complete: candidate #{res.candidate} validation {g.name} {res.val_value:.6g}, {test} "
            f"(the test set is not read again); see {rd.path}")
        return res
    storage = storage or default_storage(rd.path)
    unit = bud.unit

    def on_job(e):
        head = f"[{e['spent']:8.1f}/{budget:g}{unit}]" if axis != "trainings" else f"[{e['spent']:8.1f}s/{budget:g}x]"
        again = " (stored)" if e["reused"] else ""
        tag = "probe" if e["kind"] == "probe" else ("full " if e["kind"] == "full" else f"ep {e['epoch']:<2d}")
        where = "probe split" if e["kind"] == "probe" else "val"
        say(f"{head} {tag} #{e['key']:<4d} {where} {g.name} {g.unscore(e['value']):.6g} ({e['seconds']:.2f} s){again}",
            flush=True)

    on_wait = wait_reporter(storage, say)  # another worker on the same storage holds a piece

    oracle = None
    try:
        oracle = LiveOracle(space, spec, storage, study_name, fraction, probe_epochs, seed, executor,
                            checkpoint_dir=rd.subdir("checkpoints"),
                            settings={"loop": dataclasses.asdict(loop_cfg), **method_cfg}, on_job=on_job,
                            families=families, on_wait=on_wait, **bud.oracle_kwargs())
        if oracle.reused["probes"] or oracle.reused["full"]:
            say(f"resuming: {oracle.reused['probes']} probes and {oracle.reused['full']} full trainings already in "
                f"{storage}")
        sp = task.describe_splits()
        say(f"searching {len(space.params)} hyperparameters of {task.builder_name} ({sp['train']} training, "
            f"{sp['val']} validation, {sp['probe']} probe samples; objective: {g.direction}imise validation "
            f"{g.name}) with '{method}'{' (default)' if method == DEFAULT_METHOD else ''}; budget {bud.describe()}; "
            f"probe = {fraction:g} of the training data × {probe_epochs} epochs, full training = {space.epochs} epochs",
            flush=True)
        predictions = run_live(method, oracle, loop_cfg, seed, opts)
        return _finish(rd, oracle, space, task, spec, method, budget, axis, storage, predictions, t_start, say)
    except Exception as e:
        if type(e).__module__.startswith("sqlalchemy"):  # the storage failed part-way: one line
            raise storage_error(e, storage) from None
        raise
    finally:
        if oracle is not None:
            oracle.close()
        else:
            executor.close()


def _finish(rd, oracle, space, task, spec, method, budget, axis, storage, predictions, t_start, say) -> SearchRun:
    g = task.goal
    ch = oracle.trace.chosen
    if ch is None:
        unit = {"seconds": "s", "trainings": "x"}.get(axis, " epochs")
        raise UserError(f"the budget ({budget:g}{unit}) ended before any full training finished; give a larger "
                        "--budget")
    val_score = max(v for k, v in zip(oracle.trace.keys, oracle.trace.values) if k == ch)
    if task.test is not None:
        test_value = oracle.test_value(ch)  # the only time the test set is read
        rec = oracle.test_record or {}
        test = {"loss": rec.get("test_loss"), "accuracy": rec.get("test_accuracy"),
                "evaluated_by_this_worker": oracle.test_evaluated_here}
    else:
        test_value, test = None, {"evaluated": False, "why": "no test data was given"}
    values = oracle.values(ch)
    events = [{"kind": e["kind"], "candidate": e["key"], "epoch": e.get("epoch"), "fidelity": e.get("fidelity"),
               "spent": e["spent"], "value": g.unscore(e["value"]), "seconds": e["seconds"], "reused": e["reused"]}
              for e in oracle.events]
    ckpt = f"checkpoints/candidate-{ch}.safetensors"
    res = SearchRun(candidate=ch, values=values, model_kwargs={**task.builder_kwargs, **space.model_kwargs(values)},
                    train_config=dataclasses.asdict(task.train_config(space, values, data_seed=oracle.seed)),
                    objective=g.name, direction=g.direction, val_value=g.unscore(val_score), test_value=test_value,
                    checkpoint=str(rd.path.resolve() / ckpt), method=method, budget=budget, axis=axis,
                    spent=oracle.clock.spent, history=events,
                    build=spec.build if isinstance(spec.build, str) else "",
                    out=str(rd.path.resolve()), storage=storage, splits=task.describe_splits(), test=test,
                    seconds=time.perf_counter() - t_start)
    chosen = {"candidate": ch, "values": values, "model_kwargs": res.model_kwargs, "train_config": res.train_config,
              "objective": g.name, "direction": g.direction, "val_value": res.val_value, "test_value": test_value,
              "test": test, "method": method, "budget": budget, "axis": axis, "spent": oracle.clock.spent,
              "spent_by_kind": oracle.clock.by_kind, "test_evaluated_by_this_worker": oracle.test_evaluated_here,
              "checkpoint": ckpt}
    rd.save_json("chosen.json", chosen)
    rd.save_json("events.json", events)
    if predictions is not None:
        pf = [e for e in predictions.events if e.kind == "full"]
        un = g.unscore
        rd.save_json("predictions.json", {
            "chosen_when_trained": [{"candidate": e.key, "predicted": un(e.predicted),
                                     "predicted_std": e.predicted_std, "actual": un(e.value)} for e in pf],
            "last_fit_untrained": [{"candidate": k, "values": oracle.values(k), "predicted": un(m), "predicted_std": s}
                                   for k, (m, s) in sorted(predictions.predictions.items(), key=lambda kv: -kv[1][0])],
        })
    res.save(rd.path)
    figs = res.figure(rd.figures, "search_progress",
                      title=f"Search of {task.builder_name} ({method})") if res.plots() else []
    summary = {"chosen": chosen, "objective": g.describe(), "method": method, "default_method": DEFAULT_METHOD,
               "method_is_default": method == DEFAULT_METHOD, "features": list(oracle.families),
               "n_probes": sum(e["kind"] == "probe" for e in events),
               "n_full": sum(e["kind"] == "full" for e in events), "splits": task.describe_splits(),
               "test_evaluated": test_value is not None, "storage": storage, "seconds": res.seconds}
    rd.save_json("summary.json", summary)
    test_line = (f"test {g.name} **{test_value:.6g}** (test set read once, after selection)" if test_value is not None
                 else "no test evaluation: no test data was given (--test-data)")
    rd.write_text("report.md",
        f"# Hyperparameter search of {task.builder_name} ({method})\n\n"
        f"Objective: {g.direction}imise the validation {g.name}. Budget {budget:g}"
        f"{ {'seconds': 's', 'trainings': ' full trainings of measured time'}.get(axis, ' epochs')} "
        f"({oracle.clock.spent:.1f}{' s' if axis != 'epochs' else ''} spent): {summary['n_probes']} probes, "
        f"{summary['n_full']} full trainings.\n\n"
        f"Chosen: candidate #{ch} `{values}` (builder arguments `{res.model_kwargs}`); validation "
        f"{g.name} **{res.val_value:.6g}**, {test_line}.\n\n"
        + "".join(f"![{n}](figures/{n}.png)\n\n" for n in figs))
    rd.mark("search")
    rd.complete()
    say(f"chosen candidate #{ch}: {values}")
    if test_value is None:
        how = "no test data given: not evaluated on a test set"
        say(f"validation {g.name} {res.val_value:.6g}; {how}; wrote {rd.path}")
    else:
        how = ("evaluated now; the test set was opened once" if oracle.test_evaluated_here
               else "recorded in the storage by the worker that evaluated it; the test set was not opened here")
        say(f"validation {g.name} {res.val_value:.6g}, test {g.name} {test_value:.6g} ({how}); wrote {rd.path}")
    return res
