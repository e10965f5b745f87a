"""The tracker's history: one entry per measurement, as arrays by name (a result type).

    h = tracker.history
    h["step"], h["lambda_max"], h["lr"], h["two_over_lr"]      # arrays [T]
    h["top_k"]                                                 # [T, k] (largest first)
    h.names                                                    # every array it holds
    h.save("runs/track"); TrackHistory.load("runs/track")      # track.npz + track.json
    h.summary(); h.figure("figs")                             # key numbers; the declared plots

A value a measurement did not have (the preconditioned sharpness before the optimiser's first
step, the barrier before `lag` earlier measurements exist) is NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from lossprobe.results.contract import Result, register
from lossprobe.results.plotspec import Series, line


@register
@dataclass
class TrackHistory(Result):
    """Arrays by name (``step`` [T] first, then each measured quantity, [T] or [T, k]) and the
    tracker's settings and timing (`meta`)."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    NAME: ClassVar[str] = "track"

    # --- access ---
    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.arrays[name]
        except KeyError:
            raise KeyError(f"the history has no '{name}'; it has {', '.join(self.names)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self.arrays

    def __len__(self) -> int:
        return len(self.arrays.get("step", ()))

    @property
    def names(self) -> list[str]:
        return list(self.arrays)

    # --- the result contract ---
    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        return {f"{prefix}{k}": v for k, v in self.arrays.items()}

    def metadata(self) -> dict:
        return dict(self.meta)

    @classmethod
    def from_arrays(cls, arrays, metadata=None, prefix: str = "") -> "TrackHistory":
        out = {k[len(prefix):]: np.asarray(v) for k, v in arrays.items() if k.startswith(prefix)}
        order = ["step"] + [k for k in out if k != "step"]
        return cls({k: out[k] for k in order if k in out}, dict(metadata or {}))

    def summary(self) -> dict:
        """Measurements, the last values, and for the sharpness the edge-of-stability numbers:
        the mean of λ_max/(2/η) (and of the preconditioned sharpness over its threshold) over the
        last third of the measurements, and the first step where it reached 0.95 of it."""
        n = len(self)
        out: dict = {"measurements": n}
        if not n:
            return out
        out["first_step"], out["last_step"] = int(self["step"][0]), int(self["step"][-1])
        for k, v in self.arrays.items():
            if k == "step" or v.ndim != 1 or not np.issubdtype(v.dtype, np.number):
                continue
            out[f"{k}_last"] = _f(v[-1])
        for name, ref in (("lambda_max", "two_over_lr"), ("preconditioned_lambda_max", "threshold")):
            if name in self.arrays and ref in self.arrays:
                out.update(edge_of_stability(self["step"], self[name], self[ref], prefix=name))
        for key in ("measure_seconds", "train_seconds", "overhead", "matvecs_mean_warm", "matvecs_cold"):
            if key in self.meta:
                out[key] = self.meta[key]
        return out

    def plots(self, prefix: str = "") -> list:
        a, p = self.arrays, prefix
        x = f"{p}step"
        specs = []
        if "lambda_max" in a:
            ser = [Series(f"{p}lambda_max", "λ_max (top eigenvalue)")]
            if self.meta.get("against") != "preconditioned":  # Adam & co: their threshold is for the preconditioned one
                ser.append(Series(f"{p}two_over_lr", "2/η", dash=True))
            if "threshold" in a and self.meta.get("against") == "sharpness" and not np.allclose(
                    np.nan_to_num(a["threshold"]), np.nan_to_num(a["two_over_lr"])):
                ser.append(Series(f"{p}threshold", "stability threshold (momentum)", dash=True))
            specs.append(line(f"sharpness along training ({self.meta.get('curvature', 'hessian')})", x, ser,
                              xlabel="step", ylabel="eigenvalue"))
        if "preconditioned_lambda_max" in a:
            specs.append(line("preconditioned sharpness along training", x,
                              [Series(f"{p}preconditioned_lambda_max", "λ_max(P^-1/2 H P^-1/2)"),
                               Series(f"{p}threshold", self.meta.get("threshold_label", "stability threshold"),
                                      dash=True)], xlabel="step", ylabel="eigenvalue"))
        if "loss" in a:
            specs.append(line("loss on the probe data", x, [Series(f"{p}loss", "loss")], xlabel="step",
                              ylabel="loss", log_y=bool(np.nanmin(a["loss"]) > 0)))
        for name, label in (("grad_norm", "‖∇L‖ on the probe data"), ("trace", "trace (Hutch++)"),
                            ("gradient_in_top_space", "share of ‖∇L‖ in the top eigenspace"),
                            ("distance_from_init", "‖θ − θ₀‖"), ("barrier_to", "loss barrier to an earlier point"),
                            ("error_barrier_to", "error barrier to an earlier point")):
            if name in a:
                specs.append(line(label, x, [Series(f"{p}{name}", name)], xlabel="step", ylabel=name))
        if "update_slice_best" in a:
            specs.append(line("best multiple of the last update (1: the step taken)", x,
                              [Series(f"{p}update_slice_best", "argmin_c L(θ_prev + c Δ)")], xlabel="step",
                              ylabel="multiple c"))
        return specs


def _f(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def edge_of_stability(steps, sharpness, threshold, prefix: str = "lambda_max", reach: float = 0.95) -> dict:
    """The edge-of-stability numbers of one run (Cohen et al. 2021):

    ``<prefix>_over_threshold_last_third``: the mean of sharpness/threshold over the last third
    of the measurements (≈ 1 at the edge of stability, < 1 below it);
    ``<prefix>_reached_step``: the first step where sharpness ≥ `reach` × threshold, i.e. where
    progressive sharpening ended (None if it never did);
    ``<prefix>_max``: the largest sharpness measured."""
    s = np.asarray(sharpness, float)
    t = np.asarray(threshold, float)
    st = np.asarray(steps)
    ok = np.isfinite(s) & np.isfinite(t) & (t > 0)
    out = {f"{prefix}_over_threshold_last_third": None, f"{prefix}_reached_step": None, f"{prefix}_max": None}
    if not ok.any():
        return out
    idx = np.flatnonzero(ok)
    last = idx[len(idx) - max(1, len(idx) // 3):]
    out[f"{prefix}_over_threshold_last_third"] = float(np.mean(s[last] / t[last]))
    hit = idx[s[idx] >= reach * t[idx]]
    out[f"{prefix}_reached_step"] = int(st[hit[0]]) if len(hit) else None
    out[f"{prefix}_max"] = float(np.max(s[idx]))
    return out


__all__ = ["TrackHistory", "edge_of_stability"]
