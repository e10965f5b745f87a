"""Landscapes: the loss on lines and planes around a point.

`surfaces` evaluates 1-D slices and 2-D surfaces on grids (chunked, resumable, on Ray) and
holds the `Surface` result; `directions` names the directions they run along (random
filter-normalised, curvature eigenvectors, gradient, PCA of a trajectory, towards another
model); `topology` counts the basins and saddles of a surface.

Layer rule: may import curvature, training, runtime, results and the core; never
connectivity, trajectories or anything above them.
"""

from lossprobe.landscape.surfaces import Surface, slice, surface  # noqa: A004  (`slice` is the 1-D probe, as in lp.slice)

__all__ = ["Surface", "slice", "surface"]
