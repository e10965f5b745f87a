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
it. Several workers may run the same search on one storage: each trial is claimed before
it is computed (`lossprobe.search.claims`), so none is stored twice, and the final test
evaluation happens once, recorded in the storage (``final_test`` user attribute of
``NAME-full``). ``optuna-dashboard sqlite:///OUT/search.db`` shows both studies.

Trials run in this process (``backend="inprocess"``) or as Ray tasks (``backend="ray"``,
optionally on a cluster at ``address``); each Ray worker loads the data itself.
"""

from __future__ import annotations

import json
import os
import time
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


def _sqlite_file(url: str) -> str | None:
    return url[len("sqlite:///"):] if url.startswith("sqlite:///") and url != "sqlite:///:memory:" else None


def check_storage_url(url: str) -> None:
    """Refuse, in one line, a storage URL that cannot work (not a URL, no such driver, driver
    not installed) before anything is written."""
    try:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError
    except ImportError:  # pragma: no cover - Optuna depends on SQLAlchemy
        return
    try:
        u = make_url(url)
    except ArgumentError:
        raise UserError(f"--storage '{url}' is not a database URL; use e.g. sqlite:///search.db or "
                        "postgresql://user@host/db") from None
    try:
        dialect = u.get_dialect()
    except NoSuchModuleError:
        raise UserError(f"--storage '{url}': SQLAlchemy has no driver for '{u.drivername}'; use sqlite:///FILE, "
                        "postgresql://... or mysql://... (with its Python driver installed)") from None
    try:
        dialect.import_dbapi() if hasattr(dialect, "import_dbapi") else dialect.dbapi()
    except ImportError as e:
        mod = getattr(e, "name", None) or str(e)
        raise UserError(f"--storage '{url}' needs the Python driver '{mod}', which is not installed; install it "
                        f"(pip install {mod.split('.')[0]}) or name another driver in the URL, e.g. "
                        "postgresql+psycopg2://...") from None


def storage_error(e: BaseException, url: str) -> UserError:
    """One line for an error from the storage at `url` (damaged SQLite file, read-only, full, ...)."""
    text = str(getattr(e, "orig", None) or e).strip().splitlines()
    first = text[0] if text else type(e).__name__
    low = first.lower()
    f = _sqlite_file(url)
    where = f if f else f"the storage {url}"
    if "file is not a database" in low or "malformed" in low:
        return UserError(f"{where} is damaged (not a valid SQLite database); move it aside, or rerun with --force "
                         "to start the search afresh")
    if "readonly" in low or "read-only" in low:
        return UserError(f"cannot write {where}: read-only; choose a writable --out or --storage")
    if "disk is full" in low or "disk full" in low:
        return UserError(f"cannot write {where}: no space left on the device; free some space and run the same "
                         "command again to resume")
    if "unable to open database" in low:
        return UserError(f"cannot open {where}: the folder is missing or not writable")
    if "database is locked" in low:
        return UserError(f"{where} stayed locked by another process for a minute; try again")
    return UserError(f"storage {url}: {first}")


class LiveOracle:
    """The probe loop's oracle backed by real training and Optuna studies (see module doc).

    Several processes (workers) may share one storage: each piece of work is claimed first
    (`lossprobe.search.claims`), so no candidate is probed or trained twice and the sealed
    test set is opened once, by one worker, with the result recorded in the storage."""

    POLL = 0.5  # seconds between looks at the storage while another worker finishes a trial

    def __init__(self, space: SearchSpace, spec: TaskSpec, storage: str, study_name: str = "search",
                 fraction: float = 0.2, probe_epochs: int = 2, seed: int = 0, executor: Executor | None = None,
                 checkpoint_dir: str | os.PathLike | None = None, settings: dict | None = None,
                 on_job=None, on_wait=None):
        import optuna

        from .claims import Claims, engine_kwargs

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space, self.spec, self.seed = space, spec, seed
        self.fraction, self.probe_epochs = fraction, probe_epochs
        self.probe_cost, self.full_cost = fraction * probe_epochs, float(space.epochs)
        self.executor = executor or Executor()
        self.ckpt = Path(checkpoint_dir) if checkpoint_dir else None
        self.on_job = on_job
        self.on_wait = on_wait
        self.storage_url = storage
        self.study_name = study_name
        self.test_evaluated_here: bool | None = None
        try:
            rdb = _open_rdb(storage, engine_kwargs(storage))
            self.probes = optuna.create_study(storage=rdb, study_name=f"{study_name}-probes",
                                              direction="maximize", load_if_exists=True)
            self.fulls = optuna.create_study(storage=rdb, study_name=f"{study_name}-full",
                                             direction="maximize", load_if_exists=True)
            self.claims = Claims(storage, study_name)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - SQLAlchemy, drivers and Optuna raise many types
            if isinstance(e, (ImportError, ValueError, RuntimeError)) and not _is_sqlalchemy(e):
                raise UserError(f"cannot open Optuna storage '{storage}': {str(e).strip().splitlines()[0]}") from None
            if _is_sqlalchemy(e):
                raise storage_error(e, storage) from None
            raise
        key = json.dumps({"space": space.to_dict(), "task": asdict(spec), "fraction": fraction,
                          "probe_epochs": probe_epochs, "seed": seed, **(settings or {})}, sort_keys=True)
        old = self.probes.user_attrs.get("settings")
        if old is None:
            self.probes.set_user_attr("settings", key)
        elif old != key:
            raise UserError(f"study '{study_name}' in {storage} holds a search with other settings; "
                            "use another --study-name or --out")
        self.distributions = space.distributions()
        self._probe_cache: dict = {}
        self._full_cache: dict = {}
        self._refresh()
        self.reused = {"probes": len(self._probe_cache), "full": len(self._full_cache)}

    def _refresh(self) -> None:
        """Read the finished trials (this process's and other workers') from the storage."""
        from optuna.trial import TrialState

        for t in self.probes.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            self._probe_cache.setdefault(t.user_attrs["candidate"], t.user_attrs["features"])
        for t in self.fulls.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            self._full_cache.setdefault(t.user_attrs["candidate"], t.value)

    def close(self) -> None:
        """Release this worker's unfinished claims (so other workers need not wait for them to go stale)."""
        self.claims.release()

    def values(self, key: int) -> dict:
        return self.space.sample(np.random.default_rng([self.seed, 7, key]))

    def candidates(self, start: int, n: int) -> list[int]:
        return list(range(start, start + n))

    def _wait(self, kind: str, missing: list) -> None:
        if self.on_wait is not None:
            self.on_wait(kind, missing)
        time.sleep(self.POLL)

    def probe_many(self, keys: list) -> list[dict]:
        import optuna

        while True:
            todo = [k for k in keys if k not in self._probe_cache]
            if not todo:
                break
            mine = [k for k in todo if self.claims.claim("probe", k)]
            if mine:
                self._refresh()  # a claim taken over from a dead worker may have finished after all
                for k in [k for k in mine if k in self._probe_cache]:
                    self.claims.done("probe", k)
                mine = [k for k in mine if k not in self._probe_cache]
            args = [(self.space.to_dict(), self.values(k), self.spec, self.fraction, self.probe_epochs, self.seed)
                    for k in mine]
            for i, r in self.executor.as_completed(_probe_job, args):  # stored as each finishes
                k = mine[i]
                features = json.loads(json.dumps(r["features"]))  # exactly what the storage gives back
                self.probes.add_trial(optuna.trial.create_trial(
                    params=self.values(k), distributions=self.distributions, value=features["val_acc"],
                    user_attrs={"candidate": k, "features": features, "cost": r["cost"], "seconds": r["seconds"]}))
                self.claims.done("probe", k)
                self._probe_cache[k] = features
                if self.on_job is not None:
                    self.on_job("probe", k, r)
            self._refresh()
            rest = [k for k in keys if k not in self._probe_cache]
            if rest:  # claimed by another worker: wait for its trials
                self._wait("probe", rest)
        return [self._probe_cache[k] for k in keys]

    def full(self, key: int) -> float:
        import optuna

        while key not in self._full_cache:
            if not self.claims.claim("full", key):
                self._wait("full", [key])
                self._refresh()
                continue
            self._refresh()
            if key in self._full_cache:
                self.claims.done("full", key)
                break
            (r,) = self.executor.map(_full_job, [(self.space.to_dict(), self.values(key), self.spec, self.seed)])
            if self.ckpt is not None:
                from ..atomic import save_safetensors

                save_safetensors(self.ckpt / f"candidate-{key}.safetensors", r["state"])
            self.fulls.add_trial(optuna.trial.create_trial(
                params=self.values(key), distributions=self.distributions, value=r["val_accuracy"],
                user_attrs={"candidate": key, "curve": r["curve"], "cost": r["cost"], "seconds": r["seconds"]}))
            self.claims.done("full", key)
            self._full_cache[key] = float(r["val_accuracy"])
        return self._full_cache[key]

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

    def recorded_test(self, key: int) -> float | None:
        """The test accuracy of candidate `key` recorded in the storage by any worker, if any."""
        rec = self.fulls.user_attrs.get("final_test")
        if isinstance(rec, dict) and rec.get("candidate") == key:
            return float(rec["test_accuracy"])
        state, value, _ = self.claims.status("test", key)
        if state == "done" and isinstance(value, dict):
            return float(value["test_accuracy"])
        return None

    def test_accuracy(self, key: int) -> float:
        """Score candidate `key` on the sealed test split: once per search, by one worker.

        The worker that claims the final evaluation opens the test split (once per process:
        `SealedSplit`) and records the result in the storage; any other worker, and any
        later run on the same storage, reads the recorded number instead."""
        from ..train import evaluate_model

        while True:
            got = self.recorded_test(key)
            if got is not None:
                self.test_evaluated_here = bool(self.test_evaluated_here)
                return got
            if self.claims.claim("test", key):
                break
            self._wait("test", [key])
        model = self.load_model(key)
        test = self.spec.load().test.open(f"final evaluation of candidate {key}")
        acc = float(evaluate_model(model, test)[1])
        record = {"candidate": key, "test_accuracy": acc, "by": self.claims.owner}
        self.fulls.set_user_attr("final_test", record)
        self.claims.done("test", key, record)
        self.test_evaluated_here = True
        return acc


def _open_rdb(url: str, kwargs: dict):
    """Optuna's RDBStorage at `url`; two workers creating the same new database at once race on
    its tables, so the loser retries (the tables exist by then)."""
    import optuna

    for attempt in range(6):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except Exception as e:  # noqa: BLE001 - only the creation race is retried
            if not (_is_sqlalchemy(e) and "already exists" in str(e)) or attempt == 5:
                raise
            time.sleep(0.2 * (attempt + 1))


def _is_sqlalchemy(e: BaseException) -> bool:
    return type(e).__module__.startswith("sqlalchemy")
