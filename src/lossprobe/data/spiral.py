"""The two-spiral data set: two interleaved arms in the plane, one class each."""

from __future__ import annotations

import math

import torch

from lossprobe.core.batching import Split
from lossprobe.errors import UserError


def two_spirals(n: int = 200, noise: float = 0.1, turns: float = 1.5, seed: int = 0, name: str = "spiral") -> Split:
    """`n` points per class on two Archimedean spirals with Gaussian noise.

    Returns a `Split` with x [2n, 2] (float32) and y [2n] (int64, 0 or 1).
    """
    if n <= 0:
        raise UserError(f"n must be positive, got {n}")
    if noise < 0:
        raise UserError(f"noise must be non-negative, got {noise}")
    g = torch.Generator().manual_seed(seed)
    t = torch.sqrt(torch.rand(n, generator=g)) * turns * 2 * math.pi
    r = t / (turns * 2 * math.pi) * 2.0
    arm = torch.stack([r * torch.cos(t), r * torch.sin(t)], 1)
    x = torch.cat([arm, -arm]) + noise * torch.randn(2 * n, 2, generator=g)
    y = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
    return Split(x.float(), y, name)
