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

Trials run on `lossprobe.raycluster.Executor` (the one surfaces use): in this process
(``backend="local"``, also called "inprocess") or as Ray tasks (``backend="ray"``, optionally
on a cluster at ``address``, failed tasks retried); each Ray worker loads the data itself.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from lossprobe.errors import Interrupt, UserError, first_line
from lossprobe.results.atomic import save_safetensors
from lossprobe.runtime.cluster import Executor
from lossprobe.search.claims import Claims, engine_kwargs
from lossprobe.search.oracle import AXES, Clock, Trace
from lossprobe.search.probes import PROBE_SPLIT, make_task, parse_families, probe, train_full
from lossprobe.search.space import SearchSpace, space_from_dict
from lossprobe.search.table import fidelity_key
from lossprobe.training.checkpoints import apply_state_dict, load_checkpoint, save_checkpoint
from lossprobe.training.loop import History, TrainingDiverged, evaluate_model, fit

_TASKS: dict = {}


@dataclass(frozen=True)
class TaskSpec:
    """How a worker rebuilds the task: data set name, seeded subset sizes, split seed."""

    dataset: str = "fashion-mnist"
    n_train: int | None = None
    n_val: int | None = None
    seed: int = 0
    probe_split: float | None = PROBE_SPLIT  # carved from the training data for probes (None: the validation split)

    def load(self):
        key = (self.dataset, self.n_train, self.n_val, self.seed, self.probe_split)
        if key not in _TASKS:

            _TASKS.clear()  # keep one data set per process
            _TASKS[key] = make_task(self.dataset, self.n_train, self.n_val, self.seed, probe_split=self.probe_split)
        return _TASKS[key]


def _probe_job(space_dict: dict, values: dict, spec, fraction: float, epochs: int, seed: int,
               families=None) -> dict:
    torch.set_num_threads(max(1, int(os.environ.get("LOSSPROBE_TRIAL_THREADS", "1"))))
    r = probe(space_from_dict(space_dict), values, spec.load(), fraction, epochs, seed=seed, families=families)
    return {"features": r.features, "cost": r.cost, "seconds": r.seconds, "family_seconds": r.family_seconds}


class _Pause(Interrupt):
    """Raised from `fit`'s epoch hook to stop it after the requested epoch (its checkpoint is saved)."""


def _train_job(space_dict: dict, values: dict, spec, seed: int, epoch: int, ckpt_dir: str) -> dict:
    """Continue a candidate's full training (checkpointed in `ckpt_dir`) to `epoch`.

    `fit` resumes from the last saved epoch and its epoch hook stops it once `epoch` is
    recorded and checkpointed. Returns the history so far, the search's value after each
    epoch (`curve`, from the task: accuracy, or your objective) and the value a diverged run
    gets (`fallback`), and the weights when the last epoch is done."""
    torch.set_num_threads(max(1, int(os.environ.get("LOSSPROBE_TRIAL_THREADS", "1"))))
    space = space_from_dict(space_dict)
    task = spec.load()
    model = task.build_model(space, values, seed)
    cfg = task.train_config(space, values, data_seed=seed)
    ck = Path(ckpt_dir)
    hfile = ck / "history.json"
    saved = History.from_dict(json.loads(hfile.read_text())) if hfile.is_file() else None

    def stop(h):
        if h.epoch[-1] >= epoch:
            raise _Pause()

    t0 = time.perf_counter()
    diverged = False
    last = saved.epoch[-1] if saved is not None and not saved.stopped and saved.epoch else -1
    if epoch <= last < space.epochs and (ck / f"model-{last}.safetensors").is_file():
        # a killed run trained further than its stored trials say: read what it saved, and (as fit does on
        # resuming) renew the model.safetensors copy, which a kill while it was written may have left older
        hist = saved.to_dict()
        save_checkpoint(load_checkpoint(model, ck / f"model-{last}.safetensors"), ck / "model.safetensors")
    else:
        try:
            hist = fit(model, task.train, task.val, cfg, checkpoint_dir=ck, on_epoch=stop, **task.fit_kwargs()).to_dict()
        except _Pause:
            hist = History.from_dict(json.loads(hfile.read_text())).to_dict()
        except TrainingDiverged as e:
            hist, diverged = e.history.to_dict(), True
    out = {"history": hist, "diverged": diverged, "wall": time.perf_counter() - t0,
           "curve": task.scores(hist, "val", task.loss_cap(hist)), "fallback": task.fallback(hist)}
    if hist["epoch"][-1] >= space.epochs or diverged:
        out["state"] = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return out


def _full_job(space_dict: dict, values: dict, spec, seed: int) -> dict:
    """A full training without checkpoints (used to rebuild a chosen model whose weights were lost)."""
    torch.set_num_threads(max(1, int(os.environ.get("LOSSPROBE_TRIAL_THREADS", "1"))))
    r = train_full(space_from_dict(space_dict), values, spec.load(), seed=seed, keep_model=True)
    state = {k: v.detach().cpu().contiguous() for k, v in r.model.state_dict().items()}
    return {"val_accuracy": r.val_accuracy, "curve": r.curve, "cost": r.cost,
            "seconds": r.seconds, "state": state}


def default_storage(out: str | os.PathLike) -> str:
    return f"sqlite:///{Path(out).resolve() / 'search.db'}"


def _sqlite_file(url: str) -> str | None:
    return url[len("sqlite:///"):] if url.startswith("sqlite:///") and url != "sqlite:///:memory:" else None


def check_storage_url(url: str) -> None:
    """Refuse, in one line, a storage URL that cannot work (not a URL, no such driver, driver
    not installed) before anything is written."""
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


PROBE_SEED_OFFSET = 2  # probes use another initialisation, batch order and data subset than full trainings


def wait_reporter(storage: str, say=print):
    """An `on_wait` for `LiveOracle`: one line the first time another worker on `storage` holds a
    piece of work this one needs, nothing when it waits on the same piece again."""
    seen = set()

    def on_wait(kind, keys):
        if (kind, tuple(keys)) not in seen:
            seen.add((kind, tuple(keys)))
            what = "the final test evaluation" if kind == "test" else f"{kind} " + ", ".join(map(str, keys))
            say(f"  waiting for another worker on {storage} to finish {what}", flush=True)

    return on_wait


class LiveOracle:
    """The oracle of `lossprobe.search.oracle` backed by real training and Optuna studies (see module doc).

    Args:
        fidelities: probe fidelities [(fraction, epochs)]; methods use the first by default.
        families: probe feature families computed (`lossprobe.search.probes.FAMILIES`).
        axis: 'epochs' (nominal cost: a probe f × e, an epoch 1; known in advance, so the
            budget is never overrun) or 'seconds' (measured wall time, meta-model work
            included; no new work starts once the budget is spent).
        budget: the clock's budget in the axis' unit.
        budget_trainings: on the 'seconds' axis, a budget of this many full trainings of measured
            time instead: the clock's budget is this many times the median measured seconds of the
            full trainings finished so far (unbounded until the first one finishes), as the search
            benchmark's budget is a number of median full trainings of its table.

    Several processes (workers) may share one storage: each piece of work is claimed first
    (`lossprobe.search.claims`), so no candidate is probed or trained twice and the sealed
    test set is opened once, by one worker, with the result recorded in the storage.
    """

    POLL = 0.5  # seconds between looks at the storage while another worker finishes a piece of work

    def __init__(self, space: SearchSpace, spec: TaskSpec, storage: str, study_name: str = "search",
                 fraction: float = 0.2, probe_epochs: int = 2, seed: int = 0, executor: Executor | None = None,
                 checkpoint_dir: str | os.PathLike | None = None, settings: dict | None = None,
                 on_job=None, fidelities: list | None = None, families=None, axis: str = "epochs",
                 budget: float = float("inf"), timer=None, on_wait=None, budget_trainings: float | None = None):

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if axis not in AXES:
            raise UserError(f"unknown cost axis '{axis}'; choose from {list(AXES)}")
        self.space, self.spec, self.seed, self.axis = space, spec, seed, axis
        fids = [tuple(f) for f in (fidelities or [(fraction, probe_epochs)])]
        for f, e in fids:
            if not 0 < f <= 1 or int(e) != e or e < 1:
                raise UserError(f"a probe fidelity needs a fraction in (0, 1] and whole epochs >= 1, got {f} × {e}")
        self._fid = {fidelity_key(f, int(e)): (float(f), int(e)) for f, e in fids}
        self.fidelities = list(self._fid)
        self.families = parse_families(families)
        self.epochs = int(space.epochs)
        self.events: list[dict] = []  # every probe and training step with the budget spent after it
        if budget_trainings is not None:
            if axis != "seconds" or not budget_trainings > 0:
                raise UserError("a budget in full trainings needs the 'seconds' axis and a positive number")
            budget = float("inf")
        self.budget_trainings = budget_trainings
        self.full_seconds: list[float] = []  # measured seconds of each finished full training
        self._train_seconds: dict = {}  # key -> measured seconds of its full training so far
        self.clock = Clock(budget, timer=timer or time.perf_counter, measure=axis == "seconds")
        self.trace = Trace()
        self.executor = executor or Executor()
        self.ckpt = Path(checkpoint_dir) if checkpoint_dir else None
        self.on_job = on_job
        self.on_wait = on_wait
        self.storage_url = storage
        self.study_name = study_name
        self.test_evaluated_here: bool | None = None
        self.test_record: dict | None = None
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
                raise UserError(f"cannot open Optuna storage '{storage}': {first_line(e)}") from None
            if _is_sqlalchemy(e):
                raise storage_error(e, storage) from None
            raise
        described = spec.describe() if hasattr(spec, "describe") else asdict(spec)
        key = json.dumps({"space": space.to_dict(), "task": described, "fidelities": self.fidelities,
                          "families": list(self.families), "seed": seed, **(settings or {})}, sort_keys=True)
        old = self.probes.user_attrs.get("settings")
        if old is None:
            self.probes.set_user_attr("settings", key)
        elif old != key:
            raise UserError(f"study '{study_name}' in {storage} holds a search with other settings; "
                            "use another --study-name or --out")
        self.distributions = space.distributions()
        task = spec.load()
        if task.test is not None:  # this search's own seal: its final evaluation opens the test set once
            task.test = task.test.reseal()
        self._probe_cache: dict = {}
        self._train_cache: dict = {}
        self._refresh()
        self.reused = {"probes": len(self._probe_cache),
                       "full": sum(1 for t in self.fulls.trials if t.state.name == "COMPLETE")}
        self._next = 0
        self._explicit: dict = {}
        self._offered: dict = {}
        self.progress: dict = {}
        self.curves: dict = {}  # key -> val accuracy after epochs 0..progress
        self.probed: dict = {}
        self.n_probes = 0

    @property
    def chance(self) -> float:
        return self.spec.load().chance

    def _emit(self, event: dict) -> None:
        self.events.append(event)
        if self.on_job is not None:
            self.on_job(event)

    def _refresh(self) -> None:
        """Read the finished trials (this process's and other workers') from the storage."""
        for t in self.probes.get_trials(deepcopy=False):
            if t.state.name == "COMPLETE":
                self._probe_cache.setdefault((t.user_attrs["candidate"], t.user_attrs.get("fidelity")), t)
        for t in self.fulls.get_trials(deepcopy=False):
            if t.state.name in ("COMPLETE", "PRUNED") and "epoch" in t.user_attrs:
                self._train_cache.setdefault((t.user_attrs["candidate"], t.user_attrs["epoch"]), t)

    def close(self) -> None:
        """Release this worker's unfinished claims (so other workers need not wait for them to go stale),
        and shut down a Ray that the executor started."""
        self.claims.release()
        self.executor.close()

    def _wait(self, kind: str, missing: list) -> None:
        if self.on_wait is not None:
            self.on_wait(kind, missing)
        time.sleep(self.POLL)

    def _claimed(self, kind: str, item: str, cache: dict, ckey, key: int):
        """The stored trial of this piece of work, or None when this process has claimed it and
        must do it now; waits while another worker holds it."""
        while True:
            t = cache.get(ckey)
            if self._same(t, key):
                return t
            if self.claims.claim(kind, item):
                self._refresh()  # a claim taken over from a dead worker may have finished after all
                t = cache.get(ckey)
                if self._same(t, key):
                    self.claims.done(kind, item)
                    return t
                return None
            self._wait(kind, [item])
            self._refresh()

    # --- candidates ----------------------------------------------------------------------
    def values(self, key: int) -> dict:
        if key in self._explicit:
            return dict(self._explicit[key])
        if key in self._offered:
            return dict(self._offered[key])
        return self.space.sample(np.random.default_rng([self.seed, 7, key]))

    def draw(self, rng=None) -> int:
        """The next candidate, drawn from the space (candidate k has its own seeded draw)."""
        k = self._next
        self._next += 1
        return k

    def offer(self, rng, n: int) -> list[int]:
        """`n` new candidates drawn from the space with `rng` (not yet taken)."""
        out = []
        for _ in range(n):
            k = -1 - len(self._offered)  # provisional keys; `take` gives the real one
            self._offered[k] = self.space.sample(rng)
            out.append(k)
        return out

    def take(self, key: int) -> int:
        if key in self._offered:
            values = self._offered.pop(key)
            self._offered.clear()
            return self.snap(values)
        return key

    def snap(self, values: dict) -> int:
        """A new candidate with exactly these values (live, every suggestion can be trained)."""
        k = self.draw()
        self._explicit[k] = {n: values[n] for n in self.space.names}
        return k

    def candidates(self, start: int, n: int) -> list[int]:
        return list(range(start, start + n))

    # --- work ---------------------------------------------------------------------------------
    def _same(self, trial, key) -> bool:
        return trial is not None and trial.params == self.values(key)

    def probe(self, key: int, fid: str) -> dict:

        f, e = self._fid[fid]
        self.clock.check(f * e if self.axis == "epochs" else None)
        item = f"{key}@{fid}"
        t = self._claimed("probe", item, self._probe_cache, (key, fid), key)
        reused = t is not None
        if reused:
            feats, seconds = t.user_attrs["features"], t.user_attrs["seconds"]
        else:
            (r,) = self.executor.map(_probe_job, [(self.space.to_dict(), self.values(key), self.spec, f, e,
                                                   self.seed + PROBE_SEED_OFFSET, self.families)])
            feats, seconds = r["features"], r["seconds"]
            t = optuna.trial.create_trial(
                params=self.values(key), distributions=self.distributions, value=feats["val_acc"],
                user_attrs={"candidate": key, "fidelity": fid, "features": feats, "cost": r["cost"],
                            "seconds": seconds, "family_seconds": r["family_seconds"]})
            self.probes.add_trial(t)
            self.claims.done("probe", item)
            self._probe_cache[(key, fid)] = t
        self.clock.charge(f * e if self.axis == "epochs" else seconds, "probe")
        self.n_probes += 1
        self.probed[(key, fid)] = feats
        self._emit({"kind": "probe", "key": key, "fidelity": fid, "spent": self.clock.spent, "value": feats["val_acc"],
                    "seconds": seconds, "reused": reused})
        return dict(feats)

    def train(self, key: int, epoch: int) -> list[float]:

        epoch = int(min(max(epoch, 1), self.epochs))
        done = self.progress.get(key, 0)
        if epoch <= done:
            return self.curves[key][1 : epoch + 1]
        self.clock.check(float(epoch - done) if self.axis == "epochs" else None)
        item = f"{key}@{epoch}"
        t = self._claimed("train", item, self._train_cache, (key, epoch), key)
        reused = t is not None
        if reused:
            curve, seconds = t.user_attrs["curve"], t.user_attrs["seconds"]
        else:
            ck = self._ckpt_dir(key)
            (r,) = self.executor.map(_train_job, [(self.space.to_dict(), self.values(key), self.spec, self.seed,
                                                   epoch, str(ck))])
            h, fb = r["history"], r["fallback"]
            curve = [v if np.isfinite(v) else fb for v in r["curve"]][: epoch + 1]
            curve += [fb] * (epoch + 1 - len(curve))  # a diverged run stays at chance
            secs = h["seconds"] + [h["seconds"][-1]] * (epoch + 1 - len(h["seconds"]))
            seconds = float(secs[epoch] - (secs[done] if done else 0.0))
            if "state" in r:
                self._save_weights(key, r["state"])
            state = optuna.trial.TrialState.COMPLETE if epoch == self.epochs else optuna.trial.TrialState.PRUNED
            t = optuna.trial.create_trial(
                params=self.values(key), distributions=self.distributions, state=state,
                value=curve[-1] if epoch == self.epochs else None,
                intermediate_values={i: v for i, v in enumerate(curve) if i >= 1},
                user_attrs={"candidate": key, "epoch": epoch, "curve": curve, "cost": float(epoch - done),
                            "seconds": seconds})
            self.fulls.add_trial(t)
            self.claims.done("train", item)
            self._train_cache[(key, epoch)] = t
        self.clock.charge(float(epoch - done) if self.axis == "epochs" else float(seconds), "train")
        self.progress[key] = epoch
        self.curves[key] = list(curve)
        self._train_seconds[key] = self._train_seconds.get(key, 0.0) + float(seconds)
        if epoch == self.epochs:
            self.full_seconds.append(self._train_seconds[key])
            if self.budget_trainings is not None:  # the budget follows the measured time of a full training
                self.clock.budget = float(self.budget_trainings * np.median(self.full_seconds))
            self.trace.add(self.clock.spent, key, curve[-1])
        self._emit({"kind": "full" if epoch == self.epochs else "train", "key": key, "epoch": epoch,
                    "spent": self.clock.spent, "value": curve[-1], "seconds": seconds, "reused": reused})
        return list(curve[1 : epoch + 1])

    def full(self, key: int) -> float:
        """Train `key` to the last epoch; its final validation accuracy."""
        return self.train(key, self.epochs)[-1]

    def _ckpt_dir(self, key: int) -> Path:
        if self.ckpt is None and getattr(self, "_scratch", None) is None:  # this oracle's own (another may share the process)
            self._scratch = Path(tempfile.mkdtemp(prefix=f"lossprobe-train-{os.getpid()}-"))
        base = self.ckpt if self.ckpt is not None else self._scratch
        d = base / "training" / f"candidate-{key}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _save_weights(self, key: int, state: dict) -> None:
        if self.ckpt is None:
            self._weights = getattr(self, "_weights", {})
            self._weights[key] = state
            return

        save_safetensors(self.ckpt / f"candidate-{key}.safetensors", state)

    def load_model(self, key: int):
        """The fully trained network of candidate `key` (from its checkpoint, or retrained with the same seed)."""
        model = self.spec.load().build_model(self.space, self.values(key), self.seed)
        path = self.ckpt / f"candidate-{key}.safetensors" if self.ckpt else None
        if path is not None and path.is_file():
            return load_checkpoint(model, path).eval()
        if key in getattr(self, "_weights", {}):
            return apply_state_dict(model, self._weights[key]).eval()
        r = _full_job(self.space.to_dict(), self.values(key), self.spec, self.seed)
        model.load_state_dict(r["state"])
        return model.eval()

    def recorded_test(self, key: int) -> float | None:
        """The test value of candidate `key` recorded in the storage by any worker, if any."""
        rec = self.recorded_test_record(key)
        return None if rec is None else float(rec.get("test_value", rec.get("test_accuracy")))

    def recorded_test_record(self, key: int) -> dict | None:
        """The whole record of candidate `key`'s test evaluation in the storage, if any."""
        rec = self.fulls.user_attrs.get("final_test")
        if isinstance(rec, dict) and rec.get("candidate") == key:
            return rec
        state, value, _ = self.claims.status("test", key)
        if state == "done" and isinstance(value, dict):
            return value
        return None

    def test_accuracy(self, key: int) -> float:
        """Score candidate `key` on the sealed test split: once per search, by one worker.

        The worker that claims the final evaluation opens the test split (once per process:
        `SealedSplit`) and records the result in the storage; any other worker, and any
        later run on the same storage, reads the recorded number instead. For your own
        model (`lossprobe.search.user`) the number is the objective in its units (accuracy,
        loss or metric); `test_record` holds the loss and the accuracy (or metric) too."""
        while True:
            rec = self.recorded_test_record(key)
            if rec is not None:
                self.test_evaluated_here = bool(self.test_evaluated_here)
                self.test_record = rec
                return float(rec.get("test_value", rec.get("test_accuracy")))
            if self.claims.claim("test", key):
                break
            self._wait("test", [key])
        model = self.load_model(key)
        task = self.spec.load()
        test = task.test.open(f"final evaluation of candidate {key}")
        contract = task.fit_kwargs()
        loss, acc = evaluate_model(model, test, **contract)
        if contract:  # your own model: the objective in its units, with the loss and accuracy (or metric)
            value = float(task.value(loss, acc))
            record = {"candidate": key, "test_value": value, "test_loss": _finite(loss),
                      "test_accuracy": _finite(acc), "by": self.claims.owner}
        else:
            value = float(acc)
            record = {"candidate": key, "test_accuracy": value, "by": self.claims.owner}
        self.fulls.set_user_attr("final_test", record)
        self.claims.done("test", key, record)
        self.test_evaluated_here = True
        self.test_record = record
        return value

    test_value = test_accuracy


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _open_rdb(url: str, kwargs: dict):
    """Optuna's RDBStorage at `url`; two workers creating the same new database at once race on
    its tables, so the loser retries (the tables exist by then)."""

    for attempt in range(6):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except Exception as e:  # noqa: BLE001 - only the creation race is retried
            # the loser sees the winner's tables ("already exists") or its schema version row
            race = ("already exists", "UNIQUE constraint failed: alembic_version")
            if not (_is_sqlalchemy(e) and any(r in str(e) for r in race)) or attempt == 5:
                raise
            time.sleep(0.2 * (attempt + 1))


def _is_sqlalchemy(e: BaseException) -> bool:
    return type(e).__module__.startswith("sqlalchemy")
