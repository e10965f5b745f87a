"""Batches: what every probe reads from the user's data, and how a model is called on one.

A batch is any nesting of tuples, lists and dicts whose leaves are tensors (a pytree):
``(x, y)``, ``(x1, x2, y)``, ``{"input_ids": ..., "attention_mask": ..., "labels": ...}``.
Two small functions read it, with defaults that cover the common cases:

    forward(model, batch) -> output      (x, y) -> model(x);  (x1, ..., xn, y) -> model(x1, ..., xn);
                                         dict -> model(**batch);  a lone tensor -> model(x)
    target(batch) -> target              the last element of a tuple; batch["labels"] for a dict

Data comes in two forms. `TensorData` holds every sample in memory as a pytree of tensors
with a common first dimension (`Split` is its ``(x, y)`` case): it is batched by slicing,
in a fixed order for probes and a seeded order for training. `Stream` wraps anything else
that yields batches again each time it is iterated (a `DataLoader`, a list of batches),
and is read in its own order. `as_data` turns what a user passes into one of the two.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from lossprobe.errors import Interrupt, UserError, describe_exception, first_line

Batch = Any
Forward = Callable[[nn.Module, Batch], Any]


# --- pytrees -------------------------------------------------------------------------------
def tree_map(fn: Callable[[torch.Tensor], Any], tree):
    """Apply `fn` to every tensor leaf of a batch, keeping its structure (dicts stay dicts)."""
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, Mapping):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # namedtuple
        return type(tree)(*(tree_map(fn, v) for v in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(tree_map(fn, v) for v in tree)
    return tree


def leaves(tree) -> list[torch.Tensor]:
    """The tensor leaves of a batch, in order."""
    out: list[torch.Tensor] = []
    tree_map(out.append, tree)
    return out


def move(batch: Batch, device) -> Batch:
    """The batch with every tensor on `device` (no copy when it is there already)."""
    return tree_map(lambda t: t.to(device, non_blocking=True), batch)


def batch_len(batch: Batch) -> int:
    """Samples in a batch: the first dimension of its first tensor."""
    for t in leaves(batch):
        if t.ndim:
            return int(t.shape[0])
    raise UserError("a batch holds no tensor with a batch dimension")


def take(batch: Batch, index) -> Batch:
    """Rows `index` (a slice or an index tensor) of every leaf with a batch dimension."""
    return tree_map(lambda t: t[index] if t.ndim else t, batch)


# --- errors inside a batch ------------------------------------------------------------------
class BatchError(UserError):
    """Something raised while one batch was processed (the user's model, loss or forward on
    it, or reading it); the message names the batch. The original exception is its cause."""


def where(index: int, data=None, batch_size: int | None = None, order: str | None = None) -> str:
    """"batch 3 of 5 of data 'x.npz' (samples 4096-6143)": the batch `index` (0-based) of
    `data` read in order with `batch_size`; "batch 3 of epoch 2 of data 'x.npz'" for a
    shuffled `order` (e.g. 'epoch 2')."""
    name = f" of data '{getattr(data, 'name', 'data')}'" if data is not None else ""
    if order is not None:
        return f"batch {index + 1} of {order}{name}"
    total, rows = "", ""
    try:
        nb = data.n_batches(batch_size) if isinstance(data, TensorData) else None
        if nb:
            total = f" of {nb}"
            bs = batch_size or len(data)
            rows = f" (samples {index * bs}-{min(len(data), (index + 1) * bs) - 1})"
    except Exception:  # noqa: BLE001 - a description only
        pass
    return f"batch {index + 1}{total}{name}{rows}"


@contextlib.contextmanager
def at_batch(index: int, data=None, batch_size: int | None = None, order: str | None = None):
    """Around the work on one batch: any exception (but a `UserError`, which already says what
    is wrong, an `OSError`, which names its file, and `MemoryError`) becomes one `BatchError`
    line naming the batch (`where`) and quoting the exception, chained to it. Every loop over
    a data's batches runs its body inside this."""
    try:
        yield
    except (UserError, OSError, MemoryError, Interrupt, KeyboardInterrupt, GeneratorExit):
        raise
    except BaseException as e:  # SystemExit and other BaseExceptions from the user's code too
        if getattr(type(e), "passes_wrappers", False):  # lossprobe's own control flow (hoisting's Stop)
            raise
        raise BatchError(f"{where(index, data, batch_size, order)}: {describe_exception(e)}") from e


# --- the defaults --------------------------------------------------------------------------
def default_forward(model: nn.Module, batch: Batch):
    """model(x) for (x, y); model(x1, ..., xn) for (x1, ..., xn, y); model(**batch) for a dict."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch[:-1]) if len(batch) > 1 else model(batch[0])
    return model(batch)


def default_target(batch: Batch):
    """The last element of a tuple batch, ``batch["labels"]`` of a dict (None when absent)."""
    if isinstance(batch, Mapping):
        return batch.get("labels")
    if isinstance(batch, (tuple, list)):
        return batch[-1] if len(batch) > 1 else None
    return None


def describe(batch: Batch) -> str:
    """A short description of a batch's structure, for error messages."""
    if isinstance(batch, torch.Tensor):
        return f"tensor{list(batch.shape)}"
    if isinstance(batch, Mapping):
        return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in batch.items()) + "}"
    if isinstance(batch, (tuple, list)):
        return "(" + ", ".join(describe(v) for v in batch) + ")"
    return type(batch).__name__


# --- data ----------------------------------------------------------------------------------
class Data:
    """Something that yields batches again each time it is read."""

    name: str = "data"

    def batches(self, batch_size: int | None = None) -> Iterator[Batch]:
        raise NotImplementedError

    def epoch(self, batch_size: int, generator: torch.Generator | None = None, device=None) -> Iterator[Batch]:
        """One training epoch of batches (shuffled by `generator` where the data allows)."""
        return self.batches(batch_size)

    def n_batches(self, batch_size: int | None = None) -> int | None:
        raise NotImplementedError

    @property
    def n_samples(self) -> int | None:
        raise NotImplementedError

    def to(self, device) -> "Data":
        return self

    def first(self, batch_size: int | None = None) -> Batch:
        for b in self.batches(batch_size):
            return b
        raise UserError(f"data '{self.name}' yielded no batches")


class TensorData(Data):
    """Samples held in memory: a pytree of tensors whose first dimensions all equal N.

    `indices` records which rows of a parent these are (None for all), so a seeded subset
    can be reproduced and reported.
    """

    def __init__(self, tree, name: str = "data", indices: np.ndarray | None = None):
        tree = tree_map(torch.as_tensor, _arrays_to_tensors(tree))
        for t in leaves(tree):
            if t.layout != torch.strided or t.is_meta:
                raise UserError(f"data '{name}' holds a {'meta' if t.is_meta else str(t.layout).split('.')[-1]} "
                                "tensor; lossprobe reads dense tensors with values (use .to_dense())")
        sizes = {int(t.shape[0]) for t in leaves(tree) if t.ndim}
        if not sizes:
            raise UserError(f"data '{name}' holds no tensors with a sample dimension")
        if len(sizes) > 1:
            raise UserError(f"data '{name}': its tensors have different numbers of samples {sorted(sizes)}")
        self.tree = tree
        self.name = name
        self.indices = indices
        self._n = sizes.pop()

    def __len__(self) -> int:
        return self._n

    @property
    def n_samples(self) -> int:
        return self._n

    def n_batches(self, batch_size: int | None = None) -> int:
        return math.ceil(self._n / (batch_size or self._n)) if self._n else 0

    def batches(self, batch_size: int | None = None) -> Iterator[Batch]:
        """Fixed, ordered batches (the last one may be smaller)."""
        bs = batch_size or max(self._n, 1)
        for i in range(0, self._n, bs):
            yield take(self.tree, slice(i, i + bs))

    def epoch(self, batch_size: int, generator: torch.Generator | None = None, device=None) -> Iterator[Batch]:
        # the order is drawn now, not at the first batch, so callers know when `generator` is used
        order = torch.randperm(self._n, generator=generator)
        return self._in_order(order, batch_size, device)

    def _in_order(self, order, batch_size, device):
        for i in range(math.ceil(self._n / batch_size)):
            idx = order[i * batch_size:(i + 1) * batch_size]
            yield take(self.tree, idx.to(device) if device is not None else idx)

    def _with(self, tree, name, indices):
        return TensorData(tree, name, indices)

    def subset(self, n: int, seed: int = 0) -> "TensorData":
        """A seeded random subset of `n` samples (all of them if n >= len)."""
        if n <= 0:
            raise UserError(f"subset size must be positive, got {n}")
        if n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n].sort().values
        parent = self.indices if self.indices is not None else np.arange(len(self))
        return self._with(take(self.tree, idx), f"{self.name}[{n}]", parent[idx.numpy()])

    def to(self, device) -> "TensorData":
        return self._with(move(self.tree, device), self.name, self.indices)


class Stream(Data):
    """Batches read from a re-iterable source (a DataLoader, a list of batches) in its order."""

    def __init__(self, source: Iterable, name: str = "data", device=None):
        self.source = source
        self.name = name
        self.device = device
        self._count: tuple[int, int] | None = None

    def batches(self, batch_size: int | None = None) -> Iterator[Batch]:
        for b in self._read():
            yield move(b, self.device) if self.device is not None else b

    def _read(self) -> Iterator[Batch]:
        """The source's batches; an exception while reading one names it (`at_batch`)."""
        it = iter(self.source)
        i = 0
        while True:
            with at_batch(i, self):  # the user's DataLoader or generator reading batch i
                try:
                    b = next(it)
                except StopIteration:
                    return
            yield b
            i += 1

    def epoch(self, batch_size: int, generator: torch.Generator | None = None, device=None) -> Iterator[Batch]:
        return self.batches()

    def _counts(self) -> tuple[int, int]:
        if self._count is None:
            nb = ns = 0
            for b in self._read():
                nb += 1
                ns += batch_len(b)
            self._count = (nb, ns)
        return self._count

    def n_batches(self, batch_size: int | None = None) -> int:
        try:
            return len(self.source)  # type: ignore[arg-type]
        except TypeError:
            return self._counts()[0]

    @property
    def n_samples(self) -> int:
        ds = getattr(self.source, "dataset", None)
        if ds is not None and getattr(self.source, "drop_last", False) is False:
            try:
                return len(ds)
            except TypeError:
                pass
        return self._counts()[1]

    def to(self, device) -> "Stream":
        return Stream(self.source, self.name, device)


def _arrays_to_tensors(tree):
    if isinstance(tree, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(tree))
    if isinstance(tree, Mapping):
        return {k: _arrays_to_tensors(v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(_arrays_to_tensors(v) for v in tree)
    return tree


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


def _is_column(v) -> bool:
    return isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim >= 1


def as_data(data, name: str = "data") -> Data:
    """Bring what a user passes into `TensorData` (in memory) or a `Stream`.

    Accepts: a `Data` (kept); a tuple or list of arrays with a common first dimension
    (``(x, y)``, ``(x1, x2, y)``: columns); a dict of such arrays (``{"input_ids": ...,
    "labels": ...}``); a `TensorDataset`; any map-style `Dataset` (collated once into
    memory); a `DataLoader` or any other re-iterable of batches (streamed as it is).
    """
    if isinstance(data, Data):
        return data
    if isinstance(data, (tuple, list)) and data and all(_is_column(v) for v in data):
        if len(data) == 2:
            x, y = (torch.as_tensor(_arrays_to_tensors(v)) for v in data)
            return Split(x, y, name)
        return TensorData(tuple(data), name)
    if isinstance(data, Mapping) and data and all(_is_column(v) for v in data.values()):
        return TensorData(dict(data), name)
    if isinstance(data, torch.utils.data.TensorDataset):
        t = data.tensors
        return Split(t[0], t[1], name) if len(t) == 2 else TensorData(tuple(t), name)
    if isinstance(data, torch.utils.data.DataLoader):
        return Stream(data, name)
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        try:
            n = len(data)  # type: ignore[arg-type]
        except TypeError:
            raise UserError(f"data '{name}': a dataset without a length must be given as a DataLoader") from None
        if n == 0:
            raise UserError(f"data '{name}' is empty")
        loader = torch.utils.data.DataLoader(data, batch_size=min(n, 4096), shuffle=False)
        try:
            parts = list(loader)
        except (RuntimeError, TypeError) as e:
            first = first_line(e)
            raise UserError(f"data '{name}': its samples cannot be stacked into batches ({first}); "
                            "pass a DataLoader with your own collate_fn") from None
        return _concat(parts, name)
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise UserError(f"data '{name}' must be a Split, (x, y) arrays, a dict of arrays, a Dataset, a DataLoader "
                        f"or a re-iterable of batches; got {type(data).__name__}")
    if iter(data) is data:
        raise UserError(f"data '{name}' is a one-shot iterator (a generator?): probes read the data many times; "
                        "pass a list of batches or a DataLoader")
    return Stream(data, name)


def _concat(parts: list, name: str) -> TensorData:
    first = parts[0]
    flat = [leaves(p) for p in parts]
    cols = [torch.cat([f[i] for f in flat]) for i in range(len(flat[0]))]
    it = iter(cols)
    tree = tree_map(lambda _: next(it), first)
    if isinstance(tree, (tuple, list)) and len(tree) == 2 and all(isinstance(v, torch.Tensor) for v in tree):
        return Split(tree[0], tree[1], name)
    return TensorData(tree, name)


__all__ = ["BatchError", "Data", "Split", "Stream", "TensorData", "as_data", "at_batch", "batch_len", "default_forward",
           "default_target", "describe", "leaves", "move", "take", "tree_map", "where"]
