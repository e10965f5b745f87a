"""Memory a probe may use, what it needs, and one line when it does not fit.

Every probe keeps a known number of parameter-sized vectors (the memory contract, in model
sizes M = the parameters' bytes in the model's dtype; docs/curvature.md and docs/surfaces.md):

    interpolation        1 M    one working copy of the parameters
    slice / surface      3 M    two directions (one for a slice) and one working copy
    top-k eigenvalues    (k + 3) M   the Lanczos basis, bounded by thick restarts
    trace (Hutch++)      6 M    a sketch of 4 vectors, a probe and its product
    spectral density     6 M    a window of 6 Lanczos vectors

plus the activations of one batch and, for curvature, gradient graphs: one at least, and as
many as the budget holds (`lossprobe.graphs`). Below `SMALL` bytes of vectors a probe may
keep more (a full Lanczos basis, a wide sketch): small models get the plain algorithms and
their numbers.

`budget(device, memory)` is what a probe may use: `memory` when given (bytes or '12G'), else
the memory free on the model's device now, less a margin. `require` raises one line naming
the probe, what it needs and what there is, before any work starts.
"""

from __future__ import annotations

import torch

from lossprobe.core.graphs import free_memory, parse_bytes
from lossprobe.errors import UserError

SMALL = 256 * 2 ** 20  # bytes of vectors a probe may always keep (small models: plain algorithms)
MARGIN = 0.1  # of the free memory, left alone when no budget is given


def fmt(n: float) -> str:
    """Bytes for people: '1.24 GB', '512 MB'."""
    n = float(n)
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def budget(device, memory=None) -> tuple[float, str]:
    """(bytes a probe may use, where that number comes from)."""
    if memory is not None:
        return parse_bytes(memory), "given (memory=)"
    free = free_memory(device)
    if free is None:
        return float("inf"), "unknown (no limit)"
    dev = torch.device(device) if device is not None else torch.device("cpu")
    where = "free on the GPU" if dev.type == "cuda" else "available"
    return free * (1 - MARGIN), f"{where} ({fmt(free)}, less a {MARGIN:.0%} margin)"


def vectors_allowed(vector_bytes: int, contract: int, memory=None) -> int:
    """How many vectors a probe keeps: its contract, or more when they fit in `SMALL` bytes
    (and in half of `memory` when a budget is given)."""
    small = SMALL if memory is None else min(SMALL, parse_bytes(memory) / 2)
    return max(contract, int(small // max(vector_bytes, 1)))


def require(what: str, need: float, have: float, source: str, how: str = "") -> None:
    """One line when `need` bytes do not fit in `have`."""
    if need > have:
        raise UserError(f"{what} needs {fmt(need)}{how} but {fmt(have)} is {source}: give it more memory "
                        "(memory= / --memory), fewer vectors, or a smaller model or batch")


def check_vectors(what: str, vectors: int, vector_bytes: int, device, memory=None) -> float:
    """One line, before any work, when `vectors` parameter-sized vectors of `vector_bytes`
    (the landscape probes' contract: working copy, directions, origin) do not fit the budget
    (`memory`, else what is free on `device`); returns the budget."""
    have, source = budget(device, memory)
    require(what, vectors * vector_bytes, have, source,
            f" ({vectors} parameter-sized vectors of {fmt(vector_bytes)}, plus a batch's activations)")
    return have


__all__ = ["MARGIN", "SMALL", "budget", "check_vectors", "fmt", "require", "vectors_allowed"]
