"""A labelled data split held as tensors: the ``(x, y)`` case of `TensorData`."""

from __future__ import annotations

import numpy as np
import torch

from ..batching import Data, TensorData, as_data
from ..errors import UserError


class Split(TensorData):
    """Inputs `x` [N, ...] and targets `y` [N] of one split, kept in memory.

    Batches are ``(x, y)`` pairs. `indices` records which rows of the parent split these
    are (None for all), so a seeded subset can be reproduced and reported.
    """

    def __init__(self, x, y, name: str = "data", indices: np.ndarray | None = None):
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if len(x) != len(y):
            raise UserError(f"split '{name}': {len(x)} inputs but {len(y)} targets")
        super().__init__((x, y), name, indices)
        self.x, self.y = x, y

    def _with(self, tree, name, indices):
        return Split(tree[0], tree[1], name, indices)

    def __repr__(self) -> str:
        return f"Split(name={self.name!r}, x={tuple(self.x.shape)}, y={tuple(self.y.shape)})"


def as_split(data, name: str = "data") -> Data:
    """Deprecated name of `lossprobe.batching.as_data` (kept for existing code)."""
    return as_data(data, name)
