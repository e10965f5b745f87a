"""How many basins and saddles a 2-D loss surface has: 0-dimensional persistence of its sublevel sets.

Sweep a level t upwards through the grid values: the sublevel set {loss ≤ t} grows point by
point (4-neighbour connectivity on the grid). A point with no neighbour already in the set
is a local minimum and starts a component (a basin is born at its value); a point that
touches two or more components is a saddle where they merge: the younger basin (the one
with the higher minimum) dies there (elder rule). Each basin's persistence is its death
level minus its birth level; the global minimum never dies. The pairs form the merge tree
of the surface (Edelsbrunner & Harer; Landscaper reports the same summary). Union-find
with path halving makes it O(K log K) for K grid points, exact on the grid.

Basins whose persistence is at most `tolerance` (default 1 % of the surface's loss range)
are counted as noise of the grid; `basins` counts the others plus the global one, and
`saddles` the merges between them (basins − 1). Non-finite points are left out.
"""

from __future__ import annotations

import numpy as np


def persistence(loss: np.ndarray, tolerance: float | None = None, rel_tolerance: float = 0.01) -> dict:
    """Merge tree of the sublevel sets of a 2-D grid `loss` [n1, n2].

    Returns {'basins', 'saddles', 'tolerance', 'connectivity', 'global_minimum' [i, j],
    'pairs': [{'birth', 'death', 'persistence', 'minimum' [i, j], 'saddle' [i, j]}] sorted
    by persistence, largest first (all of them, noise included)}.
    """
    z = np.asarray(loss, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"persistence needs a 2-D grid, got shape {z.shape}")
    n1, n2 = z.shape
    flat = z.reshape(-1)
    finite = np.isfinite(flat)
    if not finite.any():
        return {"basins": 0, "saddles": 0, "tolerance": tolerance, "connectivity": 4, "global_minimum": None,
                "pairs": []}
    if tolerance is None:
        tolerance = rel_tolerance * float(flat[finite].max() - flat[finite].min())
    order = np.flatnonzero(finite)[np.argsort(flat[finite], kind="stable")]
    parent = np.full(flat.size, -1, dtype=np.int64)
    low = np.zeros(flat.size, dtype=np.int64)  # index of the minimum of each root's component

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    pairs = []
    for idx in order:
        parent[idx] = idx
        low[idx] = idx
        i, j = divmod(int(idx), n2)
        roots = set()
        for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
            if 0 <= a < n1 and 0 <= b < n2 and parent[a * n2 + b] >= 0:
                roots.add(find(a * n2 + b))
        if not roots:
            continue
        elder = min(roots, key=lambda r: (flat[low[r]], low[r]))
        for r in roots:
            if r != elder:
                birth, death = float(flat[low[r]]), float(flat[idx])
                pairs.append({"birth": birth, "death": death, "persistence": death - birth,
                              "minimum": list(divmod(int(low[r]), n2)), "saddle": [i, j]})
                parent[r] = elder
        parent[idx] = elder
    pairs.sort(key=lambda p: -p["persistence"])
    basins = 1 + sum(p["persistence"] > tolerance for p in pairs)
    g = int(order[0])
    return {"basins": int(basins), "saddles": int(basins - 1), "tolerance": float(tolerance), "connectivity": 4,
            "global_minimum": list(divmod(g, n2)), "pairs": pairs}


def marks(result: dict, coords, limit: int = 4) -> list[tuple[float, float, str]]:
    """Figure marks (x, y, label) for the global minimum and the significant basins and saddles."""
    if not result.get("global_minimum"):
        return []
    c0, c1 = coords
    gi, gj = result["global_minimum"]
    out = [(float(c0[gi]), float(c1[gj]), "global min")]
    sig = [p for p in result["pairs"] if p["persistence"] > result["tolerance"]][:limit]
    for k, p in enumerate(sig, start=2):
        (mi, mj), (si, sj) = p["minimum"], p["saddle"]
        out.append((float(c0[mi]), float(c1[mj]), f"min {k}"))
        out.append((float(c0[si]), float(c1[sj]), f"saddle {k}"))
    return out


__all__ = ["marks", "persistence"]
