"""CIFAR-10 / CIFAR-100 from the standard python-pickle batch files, when the user has them.

Expected layout (as extracted from cifar-10-python.tar.gz / cifar-100-python.tar.gz)::

    DIR/data_batch_1 ... data_batch_5, DIR/test_batch      (CIFAR-10)
    DIR/train, DIR/test                                    (CIFAR-100, fine labels)

DIR may also be the parent holding ``cifar-10-batches-py`` or ``cifar-100-python``.
The pickles are read with a restricted unpickler that only rebuilds plain containers
and numpy arrays, so a tampered file cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lossprobe.core.batching import Split
from lossprobe.errors import UserError
from lossprobe.models import cnn

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
}
_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UserError(f"refusing to load '{module}.{name}' from a CIFAR batch file: not plain data")


def read_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: images uint8 [N, 3, 32, 32] and labels int64 [N]."""
    p = Path(path)
    try:
        d = _SafeUnpickler(io.BytesIO(p.read_bytes()), encoding="bytes").load()
    except FileNotFoundError:
        raise UserError(f"CIFAR batch file {p} does not exist") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"{p} is not a CIFAR python batch file ({e})") from None
    if not isinstance(d, dict):
        raise UserError(f"{p} is not a CIFAR python batch file (no dict inside)")
    d = {k.encode() if isinstance(k, str) else k: v for k, v in d.items()}
    key = b"labels" if b"labels" in d else b"fine_labels"
    if b"data" not in d or key not in d:
        raise UserError(f"{p} lacks 'data' or labels: not a CIFAR python batch file")
    x = np.asarray(d[b"data"], dtype=np.uint8)
    y = np.asarray(d[key], dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
        raise UserError(f"{p}: expected data [N, 3072] and N labels, got {x.shape} and {y.shape}")
    return x.reshape(-1, 3, 32, 32), y


def cifar_files(kind: str) -> list[str]:
    """The names of the batch files of CIFAR-10 or CIFAR-100."""
    _, train, test, _, _ = _LAYOUT[kind]
    return list(train) + list(test)


def _find(root: Path, kind: str) -> Path:
    sub, train, test, _, _ = _LAYOUT[kind]
    for d in (root, root / sub):
        if all((d / f).is_file() for f in train + test):
            return d
    raise UserError(f"no {kind} python batches ({', '.join(train + test)}) in {root} or {root / sub}; "
                    f"download and extract the python version of {kind.upper()} there")


@dataclass
class CIFAR:
    train: Split
    val: Split
    test: Split
    n_classes: int
    root: Path


def cifar(root: str | os.PathLike | None, kind: str = "cifar10", n_val: int | None = None, split_seed: int = 0,
          normalize: bool = True) -> CIFAR:
    """Load CIFAR-10/100 as float images [N, 3, 32, 32] in [0, 1], standardised per channel by
    the training images' mean and std; `n_val` training images (seeded) become validation
    (default: 5000, or a tenth of the training images if there are fewer than 50000)."""
    if kind not in _LAYOUT:
        raise UserError(f"unknown CIFAR kind '{kind}'; use cifar10 or cifar100")
    if root is None:
        root = os.environ.get("LOSSPROBE_CIFAR")
        if not root:
            raise UserError(f"give the directory of the {kind} python batches (e.g. --dataset {kind}:DIR) "
                            "or set LOSSPROBE_CIFAR")
    d = _find(Path(root), kind)
    _, train_files, test_files, _, n_classes = _LAYOUT[kind]
    xs, ys = zip(*(read_batch(d / f) for f in train_files))
    x, y = np.concatenate(xs), np.concatenate(ys)
    xt, yt = (np.concatenate(a) for a in zip(*(read_batch(d / f) for f in test_files)))
    if y.max(initial=0) >= n_classes or yt.max(initial=0) >= n_classes:
        raise UserError(f"{d}: labels exceed {n_classes - 1}; is this {kind}?")
    if y.min(initial=0) < 0 or yt.min(initial=0) < 0:
        raise UserError(f"{d}: a label is {min(y.min(initial=0), yt.min(initial=0))}; {kind} labels are 0..{n_classes - 1}")
    if n_val is None:
        n_val = min(5000, len(x) // 10)
    if not 0 <= n_val < len(x):
        raise UserError(f"n_val must be in [0, {len(x)}), got {n_val}")
    xf = torch.from_numpy(x).float().div_(255.0)
    xtf = torch.from_numpy(xt).float().div_(255.0)
    if normalize:
        mean = xf.mean(dim=(0, 2, 3), keepdim=True)
        std = xf.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        xf, xtf = (xf - mean) / std, (xtf - mean) / std
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(split_seed))
    tr, va = perm[n_val:].sort().values, perm[:n_val].sort().values
    yv, ytv = torch.from_numpy(y), torch.from_numpy(yt)
    return CIFAR(Split(xf[tr], yv[tr], f"{kind}:train", tr.numpy()), Split(xf[va], yv[va], f"{kind}:val", va.numpy()),
                 Split(xtf, ytv, f"{kind}:test"), n_classes, d)


def cifar_cnn(n_classes: int = 10, channels=(32, 64, 128), hidden: int = 256, dropout: float = 0.25,
              batchnorm: bool = True, seed: int | None = None):
    """A small CNN for 32×32×3 images: three conv3×3-BN-ReLU-pool blocks, one hidden layer."""
    return cnn(channels, batchnorm=batchnorm, dropout=dropout, hidden=hidden, n_classes=n_classes,
               in_channels=3, image_size=32, seed=seed)


def write_batch(path: str | os.PathLike, images: np.ndarray, labels, fine: bool = False) -> None:
    """Write images uint8 [N, 3, 32, 32] and labels in the CIFAR python batch format (for tests)."""
    images = np.asarray(images, dtype=np.uint8).reshape(len(images), 3072)
    d = {b"data": images, (b"fine_labels" if fine else b"labels"): [int(v) for v in labels],
         b"batch_label": b"synthetic"}
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)
