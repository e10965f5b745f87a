"""Curvature: the Hessian and its relatives as linear operators, their spectra, and sharpness.

`algorithms` holds Lanczos, Hutchinson/Hutch++ and stochastic Lanczos quadrature as
functions of any symmetric operator (testable on a dense matrix); `operators` the operators
of an objective (Hessian, GGN, Fisher, empirical Fisher, K-FAC); `hessian` the probes a user
calls (`eigenvalues`, `trace`, `spectral_density`, `as_linear_operator`); `sharpness` the
generalisation literature's sharpness and flatness measures; `critical` the critical point
type.

Layer rule: imports only training, runtime, results and the core.
"""

from lossprobe.curvature.algorithms import (
           CountingOperator,
           EigResult,
           LanczosState,
           SLQResult,
           TraceResult,
           exact_trace,
           gaussian_density,
           hutchinson,
           hutchpp,
           lanczos,
           lanczos_eigs,
           power_iteration,
           slq,
)
from lossprobe.curvature.critical import CriticalPoint
from lossprobe.curvature.hessian import Density, as_linear_operator, eigenvalues, spectral_density, trace
from lossprobe.curvature.operators import (
           CURVATURES,
           NAMES,
           CurvatureOperator,
           EmpiricalFisherOperator,
           FisherOperator,
           GGNOperator,
           HessianOperator,
           KFACOperator,
           curvature_operator,
           dense,
           select_params,
)

__all__ = ["CURVATURES", "NAMES", "CountingOperator", "CriticalPoint", "CurvatureOperator", "Density", "EigResult",
           "EmpiricalFisherOperator", "FisherOperator", "GGNOperator", "HessianOperator", "KFACOperator",
           "LanczosState", "SLQResult", "TraceResult", "as_linear_operator", "curvature_operator", "dense",
           "eigenvalues", "exact_trace", "gaussian_density", "hutchinson", "hutchpp", "lanczos", "lanczos_eigs",
           "power_iteration", "select_params", "slq", "spectral_density", "trace"]
