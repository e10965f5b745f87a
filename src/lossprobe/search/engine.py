"""Real search infrastructure: Optuna studies for persistence, in-process or Ray execution.

A live search keeps two Optuna studies in one storage (a SQLite file by default, or any
URL Optuna accepts, e.g. ``postgresql://...`` for several machines):

* ``NAME-probes``: one finished trial per probed candidate (params = the configuration,
  value = probe validation accuracy, user attrs: candidate number, features, cost);
* ``NAME-full``: one finished trial per fully trained candidate (value = final
  validation accuracy, user attrs: candidate number, curve, cost).

Trials are written only once they have finished (``study.add_trial``), so a search
killed at any moment loses only the work in flight. On restart the loop replays its
decisions deterministically, reading finished work from the studies instead of redoing
it. ``optuna-dashboard sqlite:///OUT/search.db`` shows both studies.

Trials run in this process (``backend="inprocess"``) or as Ray tasks (``backend="ray"``,
optionally on a cluster at ``address``); each Ray worker loads the data itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .space import SearchSpace

_TASKS: dict = {}


@dataclass(frozen=True)
class TaskSpec:
    """How a worker rebuilds the task: data set name, seeded subset sizes, split seed."""

    dataset: str = "fashion-mnist"
    n_train: int | None = None
    n_val: int | None = None
    seed: int = 0

    def load(self):
        key = (self.dataset, self.n_train, self.n_val, self.seed)
        if key not in _TASKS:
            from .probes import make_task

            _TASKS.clear()  # keep one data set per process
            _TASKS[key] = make_task(self.dataset, self.n_train, self.n_val, self.seed)
        return _TASKS[key]


def _probe_job(space_dict: dict, values: dict, spec: TaskSpec, fraction: float, epochs: int, seed: int) -> dict:
    import torch

    from .probes import probe

    torch.set_num_threads(max(1, int(os.environ.get("LOSSPROBE_TRIAL_THREADS", "1"))))
    r = probe(SearchSpace.from_dict(space_dict), values, spec.load(), fraction, epochs, seed=seed)
    return {"features": r.features, "cost": r.cost, "seconds": r.seconds}


def _full_job(space_dict: dict, values: dict, spec: TaskSpec, seed: int) -> dict:
    import torch

    from .probes import train_full

    torch.set_num_threads(max(1, int(os.environ.get("LOSSPROBE_TRIAL_THREADS", "1"))))
    r = train_full(SearchSpace.from_dict(space_dict), values, spec.load(), seed=seed, keep_model=True)
    state = {k: v.detach().cpu().contiguous() for k, v in r.model.state_dict().items()}
    return {"val_accuracy": r.val_accuracy, "curve": r.history["val_accuracy"], "cost": r.cost,
            "seconds": r.seconds, "state": state}


class Executor:
    """Runs jobs in this process, or as Ray tasks (``backend='ray'``)."""

    def __init__(self, backend: str = "inprocess", address: str | None = None, num_cpus: int | None = None,
                 timeout: float = 30.0):
        if backend not in ("inprocess", "ray"):
            raise UserError(f"unknown backend '{backend}'; use inprocess or ray")
        self.backend = backend
        if backend == "ray":
            from .. import raycluster

            kw = {"include_dashboard": False, "ignore_reinit_error": True, "log_to_driver": False}
            raycluster.init(address, timeout, **kw) if address else raycluster.init(None, timeout, num_cpus=num_cpus, **kw)
            import ray

            self._ray = ray
            self._remote = {}

    def map(self, fn, arglist: list[tuple]) -> list:
        out = [None] * len(arglist)
        for i, r in self.as_completed(fn, arglist):
            out[i] = r
        return out

    def as_completed(self, fn, arglist: list[tuple]):
        """Yield (index, result) as each job finishes, so callers can store it at once."""
        if self.backend == "inprocess":
            for i, a in enumerate(arglist):
                yield i, fn(*a)
            return
        ray = self._ray
        if fn not in self._remote:
            self._remote[fn] = ray.remote(num_cpus=1)(fn)
        refs = [self._remote[fn].remote(*a) for a in arglist]
        index = {r: i for i, r in enumerate(refs)}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for r in done:
                yield index[r], ray.get(r)


def default_storage(out: str | os.PathLike) -> str:
    return f"sqlite:///{Path(out).resolve() / 'search.db'}"


class LiveOracle:
    """The probe loop's oracle backed by real training and Optuna studies (see module doc)."""

    def __init__(self, space: SearchSpace, spec: TaskSpec, storage: str, study_name: str = "search",
                 fraction: float = 0.2, probe_epochs: int = 2, seed: int = 0, executor: Executor | None = None,
                 checkpoint_dir: str | os.PathLike | None = None, settings: dict | None = None,
                 on_job=None):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space, self.spec, self.seed = space, spec, seed
        self.fraction, self.probe_epochs = fraction, probe_epochs
        self.probe_cost, self.full_cost = fraction * probe_epochs, float(space.epochs)
        self.executor = executor or Executor()
        self.ckpt = Path(checkpoint_dir) if checkpoint_dir else None
        self.on_job = on_job
        try:
            self.probes = optuna.create_study(storage=storage, study_name=f"{study_name}-probes",
                                              direction="maximize", load_if_exists=True)
            self.fulls = optuna.create_study(storage=storage, study_name=f"{study_name}-full",
                                             direction="maximize", load_if_exists=True)
        except (ImportError, ValueError, RuntimeError) as e:
            raise UserError(f"cannot open Optuna storage '{storage}': {str(e).splitlines()[0]}") from None
        key = json.dumps({"space": space.to_dict(), "task": asdict(spec), "fraction": fraction,
                          "probe_epochs": probe_epochs, "seed": seed, **(settings or {})}, sort_keys=True)
        old = self.probes.user_attrs.get("settings")
        if old is None:
            self.probes.set_user_attr("settings", key)
        elif old != key:
            raise UserError(f"study '{study_name}' in {storage} holds a search with other settings; "
                            "use another --study-name or --out")
        self.distributions = space.distributions()
        self._probe_cache = {t.user_attrs["candidate"]: t.user_attrs["features"] for t in self.probes.trials
                             if t.state.name == "COMPLETE"}
        self._full_cache = {t.user_attrs["candidate"]: t.value for t in self.fulls.trials if t.state.name == "COMPLETE"}
        self.reused = {"probes": len(self._probe_cache), "full": len(self._full_cache)}

    def values(self, key: int) -> dict:
        return self.space.sample(np.random.default_rng([self.seed, 7, key]))

    def candidates(self, start: int, n: int) -> list[int]:
        return list(range(start, start + n))

    def probe_many(self, keys: list) -> list[dict]:
        import optuna

        todo = [k for k in keys if k not in self._probe_cache]
        args = [(self.space.to_dict(), self.values(k), self.spec, self.fraction, self.probe_epochs, self.seed)
                for k in todo]
        for i, r in self.executor.as_completed(_probe_job, args):  # stored as each finishes
            k = todo[i]
            self.probes.add_trial(optuna.trial.create_trial(
                params=self.values(k), distributions=self.distributions, value=r["features"]["val_acc"],
                user_attrs={"candidate": k, "features": r["features"], "cost": r["cost"], "seconds": r["seconds"]}))
            self._probe_cache[k] = r["features"]
            if self.on_job is not None:
                self.on_job("probe", k, r)
        return [self._probe_cache[k] for k in keys]

    def full(self, key: int) -> float:
        import optuna

        if key in self._full_cache:
            return self._full_cache[key]
        (r,) = self.executor.map(_full_job, [(self.space.to_dict(), self.values(key), self.spec, self.seed)])
        if self.ckpt is not None:
            from ..atomic import save_safetensors

            save_safetensors(self.ckpt / f"candidate-{key}.safetensors", r["state"])
        self.fulls.add_trial(optuna.trial.create_trial(
            params=self.values(key), distributions=self.distributions, value=r["val_accuracy"],
            user_attrs={"candidate": key, "curve": r["curve"], "cost": r["cost"], "seconds": r["seconds"]}))
        self._full_cache[key] = r["val_accuracy"]
        return r["val_accuracy"]

    def load_model(self, key: int):
        """The fully trained network of candidate `key` (from its checkpoint, or retrained with the same seed)."""
        from ..train import load_checkpoint

        task = self.spec.load()
        model = self.space.build_model(self.values(key), task.input_shape, task.n_classes, seed=self.seed)
        path = self.ckpt / f"candidate-{key}.safetensors" if self.ckpt else None
        if path is not None and path.is_file():
            return load_checkpoint(model, path).eval()
        r = _full_job(self.space.to_dict(), self.values(key), self.spec, self.seed)
        model.load_state_dict(r["state"])
        return model.eval()

    def test_accuracy(self, key: int) -> float:
        """Open the sealed test split (once per process) and score candidate `key` on it."""
        from ..train import evaluate_model

        model = self.load_model(key)
        test = self.spec.load().test.open(f"final evaluation of candidate {key}")
        return evaluate_model(model, test)[1]
