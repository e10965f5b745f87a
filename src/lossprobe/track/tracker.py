"""The landscape measured inside the user's own training loop.

    tracker = Tracker(model, probe_data, loss="cross_entropy", every=50,
                      probes=("lambda_max", "grad_norm"), optimizer=opt, out="runs/track")
    for step, batch in enumerate(loader):
        ...; opt.step()
        tracker.step()          # measures when step % every == 0, else returns at once
    h = tracker.history         # TrackHistory: h["step"], h["lambda_max"], h["lr"], ... (arrays)
    tracker.close()             # writes the run directory, prints what the tracking cost

A measurement reads the model's parameters and the optimiser's state and computes everything
on the fixed probe data through `Objective` and the curvature operators, at a copy of the
parameters: the model's parameters, gradients, train/eval flags, the optimiser's state and
torch's (and Python's and NumPy's) global random state are the same after `step()` as before,
bit for bit, so a run with the tracker trains exactly as the run without it.

Eigenvalues are computed by Lanczos (`lossprobe.curvature.algorithms.lanczos_eigs`) started
from the sum of the previous measurement's eigenvectors: once training is under way the top
eigenvectors move little between measurements and a measurement costs a few products. Every
`restart_every`-th measurement starts from a random vector instead, so that an eigenvalue that
overtook the tracked one is found. Each value is reported with its residual ‖Av − θv‖: θ is
within the residual of an eigenvalue of A (and within residual²/gap of it).

Cost of one measurement, in Hessian-vector products (one product ≈ 2-3 gradient evaluations on
the probe data; one more pass builds the graph the products reuse): see docs/tracking.md.
"""

from __future__ import annotations

import collections
import contextlib
import math
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lossprobe.connectivity.paths import error_barrier, loss_barrier
from lossprobe.core.batching import Stream, TensorData, as_data
from lossprobe.core.objective import Objective
from lossprobe.core.space import ParamSpace
from lossprobe.curvature.algorithms import CountingOperator, hutchpp, lanczos_eigs
from lossprobe.curvature.operators import CURVATURES, HessianOperator, curvature_operator, select_params
from lossprobe.errors import UserError
from lossprobe.results.store import RunDir
from lossprobe.track.history import TrackHistory
from lossprobe.track.optim import preconditioner, threshold

PROBES = {
    "lambda_max": "the top eigenvalue of the curvature (Lanczos, warm-started), with its residual",
    "top_k": "the k largest eigenvalues (Lanczos, warm-started), with their residuals",
    "preconditioned_lambda_max": "the top eigenvalue of P^-1/2 H P^-1/2, P the optimiser's preconditioner "
                                 "(Adam, AdamW, RMSprop, Adagrad)",
    "trace": "the trace of the curvature by Hutch++, with its standard error",
    "grad_norm": "the norm of the gradient of the mean loss over the probe data",
    "gradient_in_top_space": "‖V_kᵀ g‖ / ‖g‖: the share of the gradient's norm in the top-k eigenspace",
    "update_slice": "the loss at θ_prev + c (θ − θ_prev) for the multiples c of the last update",
    "distance_from_init": "‖θ − θ₀‖, θ₀ the parameters when the tracker was made",
    "barrier_to": "the loss and error barrier on the straight line to the parameters `lag` measurements ago",
}
DEFAULT_PROBES = ("lambda_max", "grad_norm")
EIGEN = ("lambda_max", "top_k", "gradient_in_top_space")
GRADIENT = ("grad_norm", "gradient_in_top_space")
DEFAULT_MULTIPLES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
STATE_VERSION = 1


@contextlib.contextmanager
def kept_random_state(device: torch.device):
    """Run the block and put back torch's CPU (and the model's CUDA device's), Python's and
    NumPy's global random states afterwards."""
    py, npy = random.getstate(), np.random.get_state()
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


class Tracker:
    """Measure curvature, sharpness and connectivity every `every` steps of a training run.

    Args:
        model: the `nn.Module` being trained (read, never written).
        probe_data: the fixed data every measurement uses: any data form of the batch contract
            (``(x, y)`` arrays, a dict of arrays, a Dataset, a list of batches, a DataLoader,
            which is read once into a list of batches when the tracker is made).
        loss: as for `Objective` (a name, a callable, or 'model' for an HF model's own loss).
        every: measure when ``step % every == 0``; or 'auto': at the first call, then whenever the
            training time since the last measurement reaches that measurement's seconds divided
            by `overhead`, so that tracking takes about `overhead` of the wall time (a cold start,
            the first measurement and every `restart_every`-th, is paced as a warm one would be).
        probes: names from `PROBES` (default: lambda_max and grad_norm).
        optimizer: the optimiser, read for the learning rate (``2/lr`` and the optimiser's
            stability threshold per entry) and, for preconditioned_lambda_max, its preconditioner.
        out: a run directory to write (history, summary.json, report.md; the report site draws it).
        curvature: 'hessian' (default), 'ggn', 'fisher', 'efisher' or 'kfac'
            (`lossprobe.curvature.operators`), with `curvature_options` (e.g. ``{"mc_samples": 1}``).
        params: the parameters the curvature is taken over (as `HessianOperator`).
        k: eigenvalues for top_k and the subspace of gradient_in_top_space.
        tol: Lanczos stops when every wanted residual is ≤ tol × the largest Ritz value.
        max_steps: Lanczos steps at most per eigenvalue problem.
        restart_every: every this many measurements the eigenvalues start cold (0: never).
        trace_matvecs: products of one Hutch++ trace.
        multiples: the multiples c of the last update for update_slice.
        lag: barrier_to measures the barrier to the point `lag` measurements ago.
        barrier_points: points of that segment the barrier is measured on.
        overhead: the share of wall time that ``every='auto'`` aims at.
        train_mode: measure in train mode (default: eval mode, the deterministic network).
        seed: seeds the cold Lanczos starts and the Hutch++ probes.
        tensorboard: a `SummaryWriter`, a folder for one, or True (``out/tensorboard``).
        forward: as for `Objective`.
        metric: as for `Objective`.
        target: as for `Objective`.
        batch_size: as for `Objective`.
        force: move a different run in `out` aside (as every command's --force).
        quiet: do not print the cost line at `close()`.
        save_every: seconds between writes of the run directory (also written at `close()`).
    """

    def __init__(self, model: nn.Module, probe_data, loss="cross_entropy", every: int | str = "auto",
                 probes=DEFAULT_PROBES, optimizer=None, out=None, *, forward=None, metric=None, target=None,
                 batch_size: int = 4096, curvature: str = "hessian", curvature_options: dict | None = None,
                 params=None, k: int = 5, tol: float = 1e-3, max_steps: int = 100, restart_every: int = 20,
                 trace_matvecs: int = 30, multiples=DEFAULT_MULTIPLES, lag: int = 1, barrier_points: int = 11,
                 overhead: float = 0.02, train_mode: bool = False, seed: int = 0, tensorboard=None,
                 force: bool = False, quiet: bool = False, save_every: float = 30.0):
        if not isinstance(model, nn.Module):
            raise UserError(f"Tracker needs the model (an nn.Module), got {type(model).__name__}")
        if isinstance(probes, str):
            probes = (probes,)
        probes = tuple(dict.fromkeys(probes))
        bad = [p for p in probes if p not in PROBES]
        if bad or not probes:
            raise UserError(f"unknown probe(s) {bad or '(none given)'}; choose from {', '.join(PROBES)}")
        if every != "auto" and (isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1):
            raise UserError(f"every must be a positive integer or 'auto', got {every!r}")
        if curvature not in CURVATURES:
            raise UserError(f"curvature must be one of {list(CURVATURES)}, got {curvature!r}")
        for name, v, lo in (("k", k, 1), ("max_steps", max_steps, 2), ("lag", lag, 1), ("barrier_points", barrier_points, 3),
                            ("trace_matvecs", trace_matvecs, 3), ("restart_every", restart_every, 0)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise UserError(f"{name} must be an integer >= {lo}, got {v!r}")
        if not (isinstance(tol, (int, float)) and 0 < tol < 1):
            raise UserError(f"tol must be in (0, 1), got {tol!r}")
        if not (isinstance(overhead, (int, float)) and 0 < overhead < 1):
            raise UserError(f"overhead must be in (0, 1), got {overhead!r}")
        multiples = tuple(float(c) for c in multiples)
        if len(multiples) < 2 or not all(math.isfinite(c) for c in multiples):
            raise UserError(f"multiples must be at least two finite numbers, got {multiples}")
        if "preconditioned_lambda_max" in probes and optimizer is None:
            raise UserError("the probe preconditioned_lambda_max reads the optimiser's preconditioner: pass optimizer=")
        self.model = model
        self.probes = probes
        self.every = every if every == "auto" else int(every)
        self.optimizer = optimizer
        self.curvature, self.curvature_options = curvature, dict(curvature_options or {})
        self.params = params
        self.k = int(k) if "top_k" in probes else (int(k) if "gradient_in_top_space" in probes else 1)
        self.tol, self.max_steps, self.restart_every = float(tol), int(max_steps), int(restart_every)
        self.trace_matvecs, self.multiples = int(trace_matvecs), multiples
        self.lag, self.barrier_points = int(lag), int(barrier_points)
        self.overhead, self.train_mode, self.seed = float(overhead), bool(train_mode), int(seed)
        self.quiet, self.save_every = quiet, float(save_every)
        self._obj_kw = dict(loss=loss, batch_size=batch_size, forward=forward, metric=metric, target=target,
                            train_mode=train_mode)
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "name", type(loss).__name__)
        device = next(model.parameters()).device
        with kept_random_state(device):  # a shuffling DataLoader draws from torch's generator
            self.probe_data = _held(probe_data)
        self._objective_: Objective | None = None
        self._mask: torch.Tensor | None = None
        # state (saved with the training checkpoint: state_dict)
        self._calls = 0
        self._records: list[dict] = []
        self._vectors: torch.Tensor | None = None  # [k, n] float32: last eigenvectors (warm start)
        self._pvectors: torch.Tensor | None = None  # [1, n]: last preconditioned eigenvector
        self._space = ParamSpace(model)
        self._theta0 = self._space.flatten(model).cpu()
        self._snapshots: collections.deque = collections.deque(maxlen=self.lag)  # (step, θ) of earlier measurements
        self._prev: tuple[int, torch.Tensor] | None = None  # (step, θ) one step before a measurement
        self._due: int | None = None  # auto: the step decided to be measured
        self._measure_seconds = 0.0
        self._train_seconds = 0.0
        self._last_cost = 0.0
        self._warm_cost: float | None = None  # auto: seconds of the last warm measurement
        self._since = 0.0  # auto: training seconds since the last measurement
        self._steps_since = 0
        self._clock: float | None = None  # end of the last step() call
        self._saved_at = time.perf_counter()
        self.last: dict[str, float] = {}  # the scalars of the last measurement (what integrations log)
        self._closed = False
        # outputs
        self.rd = None
        if out is not None:
            self.rd = RunDir(out, "track", self.config(), force=force)
        self._writer = self._make_writer(tensorboard)

    # --- settings ---------------------------------------------------------------------------
    def config(self) -> dict:
        """The settings that define a tracked run (config.json of its run directory)."""
        return {"probes": list(self.probes), "every": self.every, "loss": self.loss_name,
                "optimizer": type(self.optimizer).__name__ if self.optimizer is not None else None,
                "model": type(self.model).__name__, "curvature": self.curvature, "k": self.k, "tol": self.tol,
                "restart_every": self.restart_every, "trace_matvecs": self.trace_matvecs,
                "multiples": list(self.multiples), "lag": self.lag, "overhead": self.overhead,
                "train_mode": self.train_mode, "seed": self.seed,
                "probe_samples": self.probe_data.n_samples if isinstance(self.probe_data, TensorData) else None}

    def _make_writer(self, tensorboard):
        if tensorboard is None or tensorboard is False:
            return None
        if hasattr(tensorboard, "add_scalar"):
            return tensorboard
        if tensorboard is True:
            if self.rd is None:
                raise UserError("tensorboard=True writes into out/tensorboard: pass out= (or a folder as tensorboard=)")
            tensorboard = self.rd.path / "tensorboard"
        try:
            from torch.utils.tensorboard import SummaryWriter  # lazy: tensorboard is an optional extra
        except ImportError:
            raise UserError("tensorboard= needs the tensorboard package: pip install 'lossprobe[tensorboard]'") from None
        return SummaryWriter(str(tensorboard))

    def __len__(self) -> int:
        """Measurements so far."""
        return len(self._records)

    # --- the loop's call ----------------------------------------------------------------------
    def step(self, step: int | None = None) -> dict | None:
        """Call once per training step, after ``optimizer.step()``. Measures when the step is due
        (``step % every == 0``, or the 'auto' schedule) and returns the measurement's scalars;
        otherwise returns None at once. `step`: your step number (default: the number of earlier
        calls, 0, 1, 2, ..., i.e. enumerate's index)."""
        now = time.perf_counter()
        if self._clock is not None:
            dt = now - self._clock
            self._train_seconds += dt
            self._since += dt
        s = self._calls if step is None else int(step)
        self._calls = s + 1
        self._steps_since += 1
        rec = None
        if self._is_due(s):
            rec = self.measure(s)
        if "update_slice" in self.probes and self._will_be_due(s + 1):
            with torch.no_grad():
                self._prev = (s, self._space.flatten(self.model).cpu())
        self._clock = time.perf_counter()
        self._measure_seconds += self._clock - now - (rec["seconds"] if rec else 0.0)
        return rec

    def _is_due(self, s: int) -> bool:
        if self.every != "auto":
            return s % self.every == 0 and not (self._records and self._records[-1]["step"] == s)
        if not self._records:
            return True
        if self._due is not None:
            return s >= self._due
        return self._since >= self._last_cost / self.overhead

    def _will_be_due(self, s: int) -> bool:
        if self.every != "auto":
            return s % self.every == 0
        if not self._records:
            return False
        if self._due is not None:
            return s >= self._due
        per_step = self._since / max(self._steps_since, 1)
        if self._since + per_step >= self._last_cost / self.overhead:
            self._due = s
            return True
        return False

    # --- one measurement ------------------------------------------------------------------
    def measure(self, step: int | None = None) -> dict:
        """Measure now (whatever the schedule) and return the scalars of this measurement."""
        if self._closed:
            raise UserError("this tracker was closed; make a new one")
        t0 = time.perf_counter()
        s = self._calls - 1 if step is None else int(step)
        with kept_random_state(next(self.model.parameters()).device):
            rec = self._measure(s)
        rec["seconds"] = time.perf_counter() - t0
        self._records.append(rec)
        self._last_cost = self._pace_cost(rec)
        self._since, self._steps_since, self._due = 0.0, 0, None
        self.last = _scalars(rec)
        if self._writer is not None:
            for name, v in self.last.items():
                if name != "step" and math.isfinite(v):
                    self._writer.add_scalar(f"lossprobe/{name}", v, s)
        if self.rd is not None and time.perf_counter() - self._saved_at >= self.save_every:
            self.save()
        rec["seconds"] = time.perf_counter() - t0
        self._measure_seconds += rec["seconds"]
        return dict(self.last, seconds=rec["seconds"])

    def _pace_cost(self, rec: dict) -> float:
        """The seconds 'auto' paces by: the measurement's own, except for a cold start (the first
        measurement, every `restart_every`-th), which stands for the warm ones to come: the last
        warm measurement's seconds, or before any, its own scaled by the products a warm start
        takes (k + 4) plus the two passes every measurement makes, over its own products plus two."""
        if rec.get("warm", 1.0) == 1.0:
            self._warm_cost = rec["seconds"]
            return rec["seconds"]
        if self._warm_cost is not None:
            return self._warm_cost
        return rec["seconds"] * (self.k + 4 + 2) / (rec.get("matvecs", 0) + 2)

    def _objective(self) -> Objective:
        dev = next(self.model.parameters()).device
        if self._objective_ is None or self._objective_.device != dev:
            self._objective_ = Objective(self.model, self.probe_data, shortcut=False, **self._obj_kw)
            self._mask = select_params(self._objective_, self.params)
        return self._objective_

    def _operator(self, obj: Objective, theta: torch.Tensor):
        if self.curvature == "hessian" and not self.curvature_options:
            return HessianOperator(obj, theta, self.params)
        return curvature_operator(obj, self.curvature, theta=theta, params=self.params, **self.curvature_options)

    def _measure(self, s: int) -> dict:
        obj = self._objective()
        probes = self.probes
        theta = obj.space.flatten(self.model).detach()
        thr = threshold(self.optimizer)
        rec: dict = {"step": s, "lr": thr.lr, "two_over_lr": thr.two_over_lr, "threshold": thr.threshold}
        g = None
        if any(p in probes for p in GRADIENT):
            loss, g = obj.loss_and_grad(theta)
            rec["loss"] = float(loss)
            g = g.detach()[self._mask.to(g.device)].double()
            if "grad_norm" in probes:
                rec["grad_norm"] = float(g.norm())
        else:
            rec["loss"] = float(obj.loss_at(theta).loss[0])
        matvecs = 0
        op = None
        if not math.isfinite(rec["loss"]):
            # a diverged run: no curvature of a NaN loss (the entry says so; the training goes on)
            warnings.warn(f"lossprobe track: the probe loss is {rec['loss']} at step {s}; curvature not measured",
                          stacklevel=3)
            rec["matvecs"] = 0
            return rec
        if any(p in probes for p in EIGEN) or "preconditioned_lambda_max" in probes or "trace" in probes:
            op = self._operator(obj, theta)
        if any(p in probes for p in EIGEN):
            r, warm = self._eigs(op.counting(), self._vectors, self.k)
            self._vectors = r.vectors.float()
            matvecs += r.matvecs
            rec["lambda_max"], rec["lambda_max_residual"] = float(r.values[0]), float(r.residuals[0])
            rec["lambda_max_matvecs"], rec["warm"] = r.matvecs, float(warm)
            if "top_k" in probes:
                rec["top_k"], rec["top_k_residuals"] = r.values.copy(), r.residuals.copy()
            if "gradient_in_top_space" in probes:
                gn = float(g.norm())
                v = r.vectors.to(g.device, torch.float64)
                rec["gradient_in_top_space"] = float((v @ g).norm()) / gn if gn > 0 else math.nan
        if "preconditioned_lambda_max" in probes:
            rec.update(self._preconditioned(obj, op))
            matvecs += rec["preconditioned_matvecs"]
        if "trace" in probes:
            tr = hutchpp(op.counting(), matvecs=self.trace_matvecs, seed=self.seed)
            rec["trace"], rec["trace_stderr"] = tr.trace, tr.stderr
            matvecs += tr.matvecs
        if op is not None:
            op.release()
        rec["matvecs"] = matvecs
        if "distance_from_init" in probes:
            rec["distance_from_init"] = float((theta.cpu().double() - self._theta0.double()).norm())
        if "update_slice" in probes:
            rec.update(self._update_slice(obj, s, theta))
        if "barrier_to" in probes:
            rec.update(self._barrier(obj, s, theta))
        return rec

    def _eigs(self, op: CountingOperator, prev: torch.Tensor | None, k: int):
        n_meas = len(self._records)
        warm = (prev is not None and tuple(prev.shape) == (k, op.n)
                and not (self.restart_every and n_meas % self.restart_every == 0))
        kw = dict(k=k, tol=self.tol, max_steps=self.max_steps, seed=self.seed, residuals="estimate")
        if warm:
            v0 = prev.to(op.device, torch.float64).sum(0)
            r = lanczos_eigs(op, v0=v0, min_steps=k + 1, check_every=1, **kw)
        else:
            r = lanczos_eigs(op, min_steps=max(2 * k + 6, 8), check_every=2, **kw)
        return r, warm

    def _preconditioned(self, obj: Objective, op) -> dict:
        nan = math.nan
        out = {"preconditioned_lambda_max": nan, "preconditioned_residual": nan, "preconditioned_matvecs": 0}
        P = preconditioner(self.optimizer, self.model, obj.space)
        if P is None:
            return out
        d = op.restrict(P.to(op.device)).to(torch.float64)
        d = torch.where(torch.isfinite(d) & (d > 0), d.rsqrt(), torch.zeros_like(d))

        def mv(v):
            return d * op.matvec(d * v)

        pop = CountingOperator(mv, op.n, op.device)
        r, _ = self._eigs(pop, self._pvectors, 1)
        self._pvectors = r.vectors.float()
        out.update(preconditioned_lambda_max=float(r.values[0]), preconditioned_residual=float(r.residuals[0]),
                   preconditioned_matvecs=r.matvecs)
        return out

    def _update_slice(self, obj: Objective, s: int, theta: torch.Tensor) -> dict:
        nan = math.nan
        out = {"update_slice": np.full(len(self.multiples), nan), "update_slice_best": nan, "update_norm": nan}
        prev, self._prev = self._prev, None
        if prev is None or prev[0] != s - 1:
            return out
        origin = prev[1].to(theta.device, theta.dtype)
        delta = theta - origin
        ev = obj.evaluate(torch.tensor(self.multiples, dtype=torch.float64), origin=origin, directions=delta)
        out["update_slice"] = np.asarray(ev.loss, dtype=float)
        out["update_slice_best"] = float(self.multiples[int(np.nanargmin(ev.loss))]) if np.isfinite(ev.loss).any() else nan
        out["update_norm"] = float(delta.double().norm())
        return out

    def _barrier(self, obj: Objective, s: int, theta: torch.Tensor) -> dict:
        nan = math.nan
        out = {"barrier_to": nan, "error_barrier_to": nan, "barrier_to_step": nan}
        if len(self._snapshots) == self.lag:
            old_step, old = self._snapshots[0]
            a = np.linspace(0.0, 1.0, self.barrier_points)
            coords = torch.tensor(np.stack([1 - a, a], 1))
            ends = torch.stack([old.to(theta.device, theta.dtype), theta])
            ev = obj.evaluate(coords, origin=torch.zeros_like(theta), directions=ends)
            out["barrier_to"] = loss_barrier(a, ev.loss)
            if np.isfinite(ev.accuracy).all():
                out["error_barrier_to"] = error_barrier(a, 1.0 - ev.accuracy)
            out["barrier_to_step"] = float(old_step)
        self._snapshots.append((s, theta.detach().cpu().clone()))
        return out

    # --- results -------------------------------------------------------------------------
    @property
    def history(self) -> TrackHistory:
        """Every measurement so far as a `TrackHistory` (arrays by name)."""
        recs = self._records
        names: list[str] = []
        for r in recs:
            names += [k for k in r if k not in names]
        arrays = {}
        for name in names:
            vals = [r.get(name) for r in recs]
            width = next((np.size(v) for v in vals if v is not None and np.ndim(v) > 0), None)
            if width is not None:
                arrays[name] = np.stack([np.asarray(v, float) if v is not None else np.full(width, np.nan)
                                         for v in vals])
            elif name == "step":
                arrays[name] = np.asarray(vals, dtype=np.int64)
            else:
                arrays[name] = np.asarray([np.nan if v is None else v for v in vals], dtype=float)
        if "update_slice" in arrays:
            arrays["update_slice_multiples"] = np.asarray(self.multiples, float)
        if "step" not in arrays:
            arrays["step"] = np.zeros(0, dtype=np.int64)
        return TrackHistory.from_arrays(arrays, self._meta())

    def _meta(self) -> dict:
        warm = [r["lambda_max_matvecs"] for r in self._records if r.get("warm") == 1.0]
        cold = [r["lambda_max_matvecs"] for r in self._records if r.get("warm") == 0.0]
        thr = threshold(self.optimizer)
        meta = {**self.config(), "measure_seconds": self._measure_seconds, "train_seconds": self._train_seconds,
                "overhead": self._measure_seconds / self._train_seconds if self._train_seconds > 0 else None,
                "against": thr.against, "optimizer_kind": thr.kind,
                "threshold_label": {"Adam": "(2 + 2β₁)/((1 − β₁)η)", "AdamW": "(2 + 2β₁)/((1 − β₁)η)"}.get(
                    thr.kind, "stability threshold")}
        if warm:
            meta["matvecs_mean_warm"] = float(np.mean(warm))
        if cold:
            meta["matvecs_cold"] = float(np.mean(cold))
        return meta

    def save(self) -> Path | None:
        """Write the run directory now: track.npz/.json (the history), summary.json, report.md."""
        if self.rd is None:
            return None
        h = self.history
        h.save(self.rd.path)
        summary = {"kind": "track", **h.summary()}
        self.rd.save_json("summary.json", summary)
        self.rd.write_text("report.md", _report(h, summary))
        self._saved_at = time.perf_counter()
        return self.rd.path

    def overhead_line(self) -> str:
        m, t = self._measure_seconds, self._train_seconds
        share = f"{m / t:.1%} of the {t:.1f} s of training between calls" if t > 0 else "no training time seen"
        where = f"; history in {self.rd.path}" if self.rd is not None else ""
        return (f"lossprobe track: {len(self._records)} measurements ({', '.join(self.probes)}) took {m:.2f} s, "
                f"{share}{where}")

    def close(self) -> TrackHistory:
        """Write the run directory, close TensorBoard, print the cost line; returns the history."""
        if not self._closed:
            t0 = time.perf_counter()
            if self.rd is not None:
                self.save()
            if self._writer is not None:
                self._writer.flush()
            self._measure_seconds += time.perf_counter() - t0
            if self.rd is not None:
                self.save()  # again, with the closing time counted
                self.rd.complete()
                self.rd.close()
            if not self.quiet:
                print(self.overhead_line(), file=sys.stderr)
            self._closed = True
        return self.history

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- resuming with the training -----------------------------------------------------------
    def state_dict(self) -> dict:
        """What to save with the training checkpoint (tensors, numbers, strings and lists only, so
        ``torch.load(weights_only=True)`` reads it back): the history, the warm-start vectors,
        θ₀, the snapshots of barrier_to and update_slice, the schedule and the timing."""
        recs = [{k: (torch.from_numpy(np.asarray(v, dtype=np.float64)) if isinstance(v, np.ndarray) else v)
                 for k, v in r.items()} for r in self._records]
        return {"version": STATE_VERSION, "config": self.config(), "calls": self._calls, "records": recs,
                "vectors": self._vectors, "pvectors": self._pvectors, "theta0": self._theta0,
                "snapshots": [[s, t] for s, t in self._snapshots],
                "prev": list(self._prev) if self._prev is not None else None, "due": self._due,
                "measure_seconds": self._measure_seconds, "train_seconds": self._train_seconds,
                "last_cost": self._last_cost, "warm_cost": self._warm_cost, "since": self._since,
                "steps_since": self._steps_since}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()` saved with the checkpoint the training resumes from."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise UserError("not a lossprobe tracker state (or one from another version)")
        mine, theirs = self.config(), state.get("config", {})
        diff = [k for k in ("probes", "curvature", "k", "lag", "multiples") if mine.get(k) != theirs.get(k)]
        if diff:
            raise UserError(f"the saved tracker state was made with other settings ({', '.join(diff)}): "
                            "make the tracker with the settings of the run you resume")
        theta0 = state["theta0"]
        if theta0.numel() != self._theta0.numel():
            raise UserError(f"the saved tracker state is of a model with {theta0.numel()} parameters, "
                            f"this one has {self._theta0.numel()}")
        self._calls = int(state["calls"])
        self._records = [{k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in r.items()}
                         for r in state["records"]]
        self._vectors, self._pvectors, self._theta0 = state["vectors"], state["pvectors"], theta0
        self._snapshots = collections.deque([(int(s), t) for s, t in state["snapshots"]], maxlen=self.lag)
        self._prev = (int(state["prev"][0]), state["prev"][1]) if state["prev"] is not None else None
        self._due = state["due"]
        self._measure_seconds, self._train_seconds = float(state["measure_seconds"]), float(state["train_seconds"])
        self._last_cost, self._since = float(state["last_cost"]), float(state["since"])
        self._warm_cost = state.get("warm_cost")
        self._steps_since = int(state["steps_since"])
        self._clock = None
        self.last = _scalars(self._records[-1]) if self._records else {}


def _held(data):
    """The probe data as held batches: in-memory data as it is, a DataLoader or other stream
    read once into a list of batches (so every measurement sees the same data)."""
    d = as_data(data, "probe")
    if isinstance(d, Stream):
        batches = list(d.batches())
        if not batches:
            raise UserError("the probe data yielded no batches")
        return Stream(batches, "probe")
    return d


def _scalars(rec: dict) -> dict[str, float]:
    """A measurement as flat scalars (top_k as top_k_1 ..., update_slice as update_slice_c=...)."""
    out = {}
    for k, v in rec.items():
        if isinstance(v, np.ndarray):
            if k == "update_slice":
                continue
            for i, x in enumerate(v.reshape(-1)):
                out[f"{k}_{i + 1}"] = float(x)
        elif isinstance(v, (int, float, np.floating, np.integer)):
            out[k] = float(v)
    return out


def _report(h: TrackHistory, s: dict) -> str:
    lines = ["# Tracked training run", "",
             f"{s.get('measurements', 0)} measurements from step {s.get('first_step')} to {s.get('last_step')} "
             f"({', '.join(h.meta.get('probes', []))}; curvature: {h.meta.get('curvature')}; "
             f"optimizer: {h.meta.get('optimizer')}).", ""]
    if h.meta.get("overhead") is not None:
        lines += [f"Tracking took {h.meta['measure_seconds']:.2f} s, {h.meta['overhead']:.1%} of the "
                  f"{h.meta['train_seconds']:.1f} s of training between measurements.", ""]
    rows = [(k, v) for k, v in s.items() if k not in ("kind", "measurements", "first_step", "last_step")
            and isinstance(v, (int, float)) and not isinstance(v, bool)]
    if rows:
        lines += ["| quantity | value |", "|---|---|"] + [f"| {k} | {v:.6g} |" for k, v in rows] + [""]
    lines += ["Arrays: `track.npz` (one entry per measurement; `TrackHistory.load(dir)`).", ""]
    return "\n".join(lines)


__all__ = ["DEFAULT_PROBES", "PROBES", "Tracker", "kept_random_state"]
