"""P-length vectors without P-length temporaries: chunked float64 reductions, seeded draws
written in place, in-place combinations of rows.

A probe on a model of P parameters keeps a few vectors of length P (origin, directions,
Lanczos basis). Everything here works on them in chunks of `CHUNK` entries, so that
nothing allocates another vector of length P, and never a float64 copy of one:

* `norm64`, `dot64`: float64 accumulation over float32 (or half) vectors, chunk by chunk.
  Up to one chunk they are the plain ``t.double().norm()`` / ``a.double() @ b.double()``
  (bitwise), so small models get the numbers they always got; beyond it, on the CPU, float32
  dot products of 65,536-entry pieces are summed in float64 (a float64 temporary per chunk
  cost a forward pass of GPT-2 small per dot product).
* `normal_into`, `rademacher_into`: the seeded draw of ``torch.randn(P, generator=g,
  dtype=float64)`` (or ``randint(0, 2)`` as ±1) written into a vector of any dtype, drawn
  in chunks of a multiple of 16 on the CPU generator: the values and the generator's state
  afterwards are bitwise those of the one-shot float64 draw (tested), so a seed gives the
  same direction as before on every device.
* `combine_rows`: rows ← S^T rows, in place, column chunk by column chunk (Ritz vectors,
  orthonormal bases), with only a [m, chunk] temporary.
* `sha_update`: feed a tensor's bytes to a hash without copying it.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

CHUNK = 1 << 22  # entries per chunk: 32 MB of float64 temporaries at most
PIECE = 1 << 16  # entries of a float32 partial sum (see dot64)


def chunk_ranges(n: int, chunk: int = CHUNK):
    """(start, stop) of consecutive pieces of `chunk` entries covering [0, n)."""
    for a in range(0, n, chunk):
        yield a, min(n, a + chunk)


def work_chunk(n: int, chunk: int = CHUNK) -> int:
    """Entries per float64 temporary for a vector of n entries: `chunk`, or n / 64 when that is
    less (each temporary stays within 1/32 of the vector's size)."""
    return max(1 << 16, min(chunk, n // 64))


def _piece_sums(a: torch.Tensor, b: torch.Tensor) -> float:
    """Σ a·b on the CPU: float32 dot products of `PIECE` entries each (BLAS speed, no temporary),
    summed in float64. A piece whose float32 sum is not finite is summed again in float64, so
    the result is finite exactly when the entries are (float32 squares can overflow)."""
    s = 0.0
    for i, j in chunk_ranges(a.numel(), PIECE):
        x, y = a[i:j], b[i:j]
        if x.dtype != torch.float32:
            x, y = x.float(), y.float()
        d = float(torch.dot(x, y))
        if not math.isfinite(d):
            d = float(x.double() @ y.double())
        s += d
    return s


def _fast(t: torch.Tensor) -> bool:
    """Whether a large vector takes the piecewise float32 path: on the CPU, where a float64
    temporary costs ten times the dot product itself (a GPU keeps the float64 chunks)."""
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float16, torch.bfloat16)


def norm64(t: torch.Tensor, chunk: int = CHUNK) -> float:
    """‖t‖₂ accumulated in float64 without a float64 copy of `t` (bitwise ``t.double().norm()``
    up to one chunk; beyond it, on the CPU, float32 pieces summed in float64, see `dot64`)."""
    t = t.reshape(-1)
    if t.numel() <= chunk:
        return float(t.double().norm())
    if _fast(t):
        return math.sqrt(_piece_sums(t, t))
    s = 0.0
    for a, b in chunk_ranges(t.numel(), work_chunk(t.numel(), chunk)):
        s += float(t[a:b].double().square().sum())
    return math.sqrt(s)


def dot64(a: torch.Tensor, b: torch.Tensor, chunk: int = CHUNK) -> float:
    """a · b accumulated in float64 (bitwise ``a.double() @ b.double()`` up to one chunk; the
    plain product for float64 vectors). Beyond one chunk, on the CPU: float32 dot products of
    pieces of 65,536 entries summed in float64 (relative error about 1e-7 of ‖a‖‖b‖, the
    vectors' own rounding; 9× faster than float64 chunks on a 124M-entry vector)."""
    a, b = a.reshape(-1), b.reshape(-1)
    if a.dtype == torch.float64 and b.dtype == torch.float64:
        return float(a @ b)
    if a.numel() <= chunk:
        return float(a.double() @ b.double())
    if _fast(a) and a.dtype == b.dtype:
        return _piece_sums(a, b)
    s = 0.0
    for i, j in chunk_ranges(a.numel(), work_chunk(a.numel(), chunk)):
        s += float(a[i:j].double() @ b[i:j].double())
    return s


def _draw_blocks(n: int, chunk: int):
    """Sizes of the pieces of one seeded draw of n values: multiples of 16 except the last,
    which is at least 16 (CPU normal_ fills and transforms 16 values at a time and redraws a
    ragged tail, so this split reproduces the one-shot draw)."""
    chunk = max(16, chunk - chunk % 16)
    pos = 0
    while pos < n:
        size = chunk if n - pos >= 2 * chunk else n - pos
        yield pos, pos + size
        pos += size


def draw_segments(n: int, gen: torch.Generator, kind: str = "normal", chunk: int = CHUNK):
    """The seeded draw of n values on the CPU generator as consecutive pieces: yields (start,
    stop, values). 'normal': ``torch.randn(n, generator=gen, dtype=float64)``; 'rademacher':
    the ±1 values of ``randint(0, 2, (n,), generator=gen, dtype=int8) * 2 - 1`` (float32)."""
    for a, b in _draw_blocks(n, work_chunk(n, chunk)):
        if kind == "normal":
            yield a, b, torch.randn(b - a, generator=gen, dtype=torch.float64)
        else:
            yield a, b, torch.randint(0, 2, (b - a,), generator=gen, dtype=torch.int8).to(torch.float32).mul_(2).sub_(1)


def normal_into(out: torch.Tensor, gen: torch.Generator, chunk: int = CHUNK, scale: float = 1.0) -> torch.Tensor:
    """Write ``torch.randn(out.numel(), generator=gen, dtype=float64)`` (times `scale`) into
    `out` (any dtype, any device), drawn on the CPU generator in chunks."""
    flat = out.view(-1)
    for a, b, x in draw_segments(flat.numel(), gen, "normal", chunk):
        if scale != 1.0:
            x.mul_(scale)
        flat[a:b].copy_(x)
    return out


def rademacher_into(out: torch.Tensor, gen: torch.Generator, chunk: int = CHUNK) -> torch.Tensor:
    """Write the ±1 vector of ``randint(0, 2, (n,), generator=gen, dtype=int8) * 2 - 1`` into `out`."""
    flat = out.view(-1)
    for a, b, x in draw_segments(flat.numel(), gen, "rademacher", chunk):
        flat[a:b].copy_(x)
    return out


def all_finite(t: torch.Tensor, chunk: int = CHUNK) -> bool:
    """``bool(torch.isfinite(t).all())`` without its P-sized temporaries (isfinite of a float
    vector allocates about 1.75 model sizes): chunk by chunk for a large vector. On the CPU a
    chunk whose plain sum is finite holds no inf or NaN, so isfinite runs only on a chunk
    whose sum is not (an overflowing sum of finite entries)."""
    flat = t.reshape(-1)
    if flat.numel() <= chunk:
        return bool(torch.isfinite(flat).all())
    step = work_chunk(flat.numel(), chunk)
    fast = flat.device.type == "cpu"
    return all((fast and math.isfinite(float(flat[a:a + step].sum()))) or bool(torch.isfinite(flat[a:a + step]).all())
               for a in range(0, flat.numel(), step))


def exact(t: torch.Tensor):
    """A context in which products of these vectors keep their dtype: autocast off on `t`'s
    device (under a user's ``torch.autocast`` a float32 matmul would run in bfloat16)."""
    return torch.autocast(t.device.type, enabled=False)


def combine_rows(sources: Sequence[torch.Tensor], S: np.ndarray | torch.Tensor, targets: Sequence[torch.Tensor],
                 chunk: int = 1 << 18) -> None:
    """targets[j] ← Σ_i S[i, j] sources[i] for every j, column chunk by column chunk, so a
    target may be one of the sources (in place). S is [len(sources), len(targets)], float64."""
    S = torch.as_tensor(np.ascontiguousarray(S) if isinstance(S, np.ndarray) else S, dtype=torch.float64)
    if not len(targets):
        return
    n = sources[0].numel()
    ref = sources[0]
    Sd = S.to(ref.device, ref.dtype if ref.dtype in (torch.float32, torch.float64) else torch.float32)
    for a, b in chunk_ranges(n, chunk):
        X = torch.stack([s.reshape(-1)[a:b].to(Sd.dtype) for s in sources])  # [m, chunk]: a copy, so targets may alias
        with exact(X):
            Y = Sd.T @ X
        for j, t in enumerate(targets):
            t.reshape(-1)[a:b].copy_(Y[j])


def sha_update(h, t: torch.Tensor, chunk: int = CHUNK) -> None:
    """Feed the raw bytes of `t` (contiguous order) to hash object `h`, chunk by chunk (the
    same digest as ``h.update(t.numpy().tobytes())`` without the copy)."""
    flat = t.detach().reshape(-1)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    for a, b in chunk_ranges(flat.numel(), work_chunk(flat.numel(), chunk)):
        part = flat[a:b]
        if part.device.type != "cpu":
            part = part.cpu()
        h.update(part.view(torch.uint8).numpy().data if part.numel() else b"")


__all__ = ["CHUNK", "chunk_ranges", "work_chunk", "all_finite", "combine_rows", "exact", "dot64", "norm64", "draw_segments", "normal_into", "rademacher_into",
           "sha_update"]
