"""A labelled data split held as tensors, and the batching every probe shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from ..errors import UserError


@dataclass
class Split:
    """Inputs `x` [N, ...] and targets `y` [N] of one split, kept in memory.

    `indices` records which rows of the parent split these are (None for all), so a
    seeded subset can be reproduced and reported.
    """

    x: torch.Tensor
    y: torch.Tensor
    name: str = "data"
    indices: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise UserError(f"split '{self.name}': {len(self.x)} inputs but {len(self.y)} targets")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, n: int, seed: int = 0) -> "Split":
        """A seeded random subset of `n` rows (all rows if n >= len)."""
        if n <= 0:
            raise UserError(f"subset size must be positive, got {n}")
        if n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n].sort().values
        parent = self.indices if self.indices is not None else np.arange(len(self))
        return Split(self.x[idx], self.y[idx], f"{self.name}[{n}]", parent[idx.numpy()])

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.x.to(device), self.y.to(device), self.name, self.indices)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Fixed, ordered batches (the last one may be smaller)."""
        for i in range(0, len(self), batch_size):
            yield self.x[i : i + batch_size], self.y[i : i + batch_size]


def as_split(data, name: str = "data") -> Split | torch.utils.data.DataLoader:
    """Bring what a user passes into a `Split`, or keep a DataLoader to stream from.

    Accepts a `Split`, a tuple `(x, y)` of tensors or arrays, a `TensorDataset`, any
    map-style `Dataset` (materialised once), or a `DataLoader` (streamed as it is).
    """
    if isinstance(data, Split):
        return data
    if isinstance(data, torch.utils.data.DataLoader):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = (torch.as_tensor(v) for v in data)
        return Split(x, y, name)
    if isinstance(data, torch.utils.data.TensorDataset):
        if len(data.tensors) != 2:
            raise UserError("a TensorDataset must hold exactly (inputs, targets)")
        return Split(data.tensors[0], data.tensors[1], name)
    if isinstance(data, torch.utils.data.Dataset):
        try:
            n = len(data)  # type: ignore[arg-type]
        except TypeError:
            raise UserError("an iterable dataset must be given as a DataLoader") from None
        loader = torch.utils.data.DataLoader(data, batch_size=min(n, 4096), shuffle=False)
        xs, ys = zip(*loader)
        return Split(torch.cat(xs), torch.cat(ys), name)
    raise TypeError(
        f"data must be a lossprobe Split, a tuple (x, y), a Dataset or a DataLoader; got {type(data).__name__}"
    )
