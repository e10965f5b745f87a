"""Connectivity: are two solutions in one basin?

`paths` evaluates the straight line between two models and its barriers; `curves` trains
low-loss Bezier and polygonal curves between them; `alignment` finds the permutation of
hidden units that brings one model next to another; `repair` undoes the variance collapse
of interpolated networks (REPAIR).

Layer rule: may import training, curvature, runtime, results and the core; never
landscape, trajectories or anything above them.
"""

from lossprobe.connectivity.alignment import align
from lossprobe.connectivity.paths import PathEvaluation, error_barrier, interpolate, loss_barrier

__all__ = ["PathEvaluation", "align", "error_barrier", "interpolate", "loss_barrier"]
