"""`CriticalPoint`: a point where the gradient (nearly) vanishes, classified by the Hessian.

One type for both producers: `lossprobe.toy.classify` (two-parameter toy functions, exact
Hessian) and `lossprobe.sharpness.critical_point` (a network's θ, extreme eigenvalues by
Lanczos). Fields a producer does not measure stay None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from lossprobe.results.contract import Record, json_float, register


@register
@dataclass
class CriticalPoint(Record):
    """A critical point and its kind.

    point: the coordinates (toy functions; None for a network's θ). value: the function or
    loss there. eigenvalues: (λmin, λmax), the extreme Hessian eigenvalues. kind:
    'minimum', 'maximum', 'saddle', 'flat' (toy ring test), 'degenerate' (a network's zero
    eigenvalue within tolerance decides nothing) or 'not critical' (gradient too large).
    degenerate: an extreme eigenvalue is within tolerance of zero, so the Hessian alone
    cannot decide. grad_norm: ‖∇f‖. For networks also: condition_number (max|λ| / min|λ|
    over the extremes, inf when one is zero), the tolerances used and the eigenpairs'
    residuals.
    """

    point: tuple[float, ...] | None
    value: float | None
    eigenvalues: tuple[float, float]
    kind: str
    degenerate: bool
    grad_norm: float
    condition_number: float | None = None
    grad_tol: float | None = None
    eig_tol: float | None = None
    residuals: list[float] = field(default_factory=list)

    @property
    def lambda_min(self) -> float:
        return self.eigenvalues[0]

    @property
    def lambda_max(self) -> float:
        return self.eigenvalues[1]

    def to_dict(self) -> dict:
        """JSON-friendly fields; the network fields (λmax, λmin, condition number, tolerances,
        residuals) only when they were measured."""
        out = {"point": None if self.point is None else list(self.point), "value": self.value,
               "eigenvalues": list(self.eigenvalues), "kind": self.kind, "degenerate": self.degenerate,
               "grad_norm": self.grad_norm}
        if self.grad_tol is not None:
            out.update(lambda_max=self.lambda_max, lambda_min=self.lambda_min, condition_number=self.condition_number,
                       grad_tol=self.grad_tol, eig_tol=self.eig_tol, residuals=list(self.residuals))
        return out

    NAME: ClassVar[str] = "critical_point"

    def report(self) -> str:
        text = f"Critical point: **{self.kind}** (‖∇L‖ = {self.grad_norm:.2e}, λmin = {self.lambda_min:.3g}, " \
               f"λmax = {self.lambda_max:.3g})."
        return text if not self.degenerate else text + " Degenerate: an extreme eigenvalue is within the tolerance of 0."

    @classmethod
    def from_dict(cls, d) -> "CriticalPoint":
        point = d.get("point")
        return cls(None if point is None else tuple(point), d.get("value"), tuple(json_float(v) for v in d["eigenvalues"]),
                   d["kind"], bool(d["degenerate"]), json_float(d["grad_norm"]), d.get("condition_number"),
                   d.get("grad_tol"), d.get("eig_tol"), list(d.get("residuals", [])))


__all__ = ["CriticalPoint"]
