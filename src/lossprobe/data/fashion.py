"""Fashion-MNIST from the real IDX files, wherever they are on this machine.

Search order: an explicit `root`, ``$LOSSPROBE_DATA``, the directory of the Debian package
``dataset-fashion-mnist``, the user cache directory; then a download from the dataset's
public mirror into the cache, each file verified by SHA-256.

The SHA-256 sums are of the *decompressed* IDX bytes: the Debian package recompresses
the original `.gz` files, so hashes of the archives would differ between sources while
the images are the same.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lossprobe.core.batching import Split
from lossprobe.errors import UserError

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# Mean and standard deviation of the 60k training pixels scaled to [0, 1].
PIXEL_MEAN, PIXEL_STD = 0.2860, 0.3530

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not) into an array of its declared shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise UserError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise UserError(f"{path} is truncated or corrupt: its header declares {ndim} dimensions but holds "
                        f"{max(0, len(raw) - 4) // 4}")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(dims)) if dims else 1
    body = raw[4 + 4 * ndim :]
    if len(body) != count * dtype.itemsize:
        raise UserError(f"{path} is truncated or corrupt: expected {count * dtype.itemsize} data bytes, got {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lossprobe" / "fashion-mnist"


def candidate_dirs(root: str | os.PathLike | None = None) -> list[Path]:
    dirs: list[Path] = []
    if root is not None:
        dirs.append(Path(root))
    if os.environ.get("LOSSPROBE_DATA"):
        env = Path(os.environ["LOSSPROBE_DATA"])
        dirs += [env / "fashion-mnist", env]
    dirs += [DEBIAN_DIR, cache_dir()]
    return dirs


def _has_all(d: Path) -> bool:
    return all((d / f).is_file() for f in FILES.values())


def _content_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with gzip.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(dest: Path, mirror: str = MIRROR, sha256: dict[str, str] = SHA256, timeout: float = 30) -> Path:
    """Download the four files into `dest`, verifying each; raise UserError on failure."""
    dest.mkdir(parents=True, exist_ok=True)
    for fname in FILES.values():
        target = dest / fname
        if target.is_file() and _content_sha256(target) == sha256[fname]:
            continue
        with tempfile.NamedTemporaryFile(dir=dest, delete=False, suffix=".part") as tmp:
            try:
                with urllib.request.urlopen(mirror.rstrip("/") + "/" + fname, timeout=timeout) as r:
                    shutil.copyfileobj(r, tmp)
            except Exception as e:  # network errors come in many types
                os.unlink(tmp.name)
                raise UserError(f"download of {fname} failed ({e})") from None
        try:
            got = _content_sha256(Path(tmp.name))
        except (OSError, EOFError):
            got = "not a gzip file"
        if got != sha256[fname]:
            os.unlink(tmp.name)
            raise UserError(f"download of {fname} failed its SHA-256 check (got {got})")
        os.replace(tmp.name, target)
    return dest


def locate(root: str | os.PathLike | None = None, allow_download: bool = True) -> Path:
    """The directory that holds the four Fashion-MNIST files, downloading if needed."""
    dirs = candidate_dirs(root)
    for d in dirs:
        if _has_all(d):
            return d
    if root is not None and not Path(root).exists():
        raise UserError(f"data directory {root} does not exist")
    reason = "downloads are disabled"
    if allow_download and os.environ.get("LOSSPROBE_NO_DOWNLOAD") != "1":
        try:
            return download(cache_dir(), os.environ.get("LOSSPROBE_MIRROR", MIRROR))
        except UserError as e:
            reason = str(e)
        except OSError as e:
            reason = f"cannot write to {cache_dir()}: {e}"
    raise UserError(
        "Fashion-MNIST not found in " + ", ".join(str(d) for d in dirs) + f" and {reason}. "
        "Install it with 'sudo apt-get install dataset-fashion-mnist', or download the four "
        "*-ubyte.gz files into a directory and set LOSSPROBE_DATA to it."
    )


@dataclass
class FashionMNIST:
    """The three splits: train and val (seeded split of the 60k) and the untouched test set."""

    train: Split
    val: Split
    test: Split
    root: Path
    split_seed: int

    def __getitem__(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise UserError(f"unknown split '{name}'; choose train, val or test")
        return getattr(self, name)

    classes = CLASSES


def fashion_mnist(
    root: str | os.PathLike | None = None,
    n_val: int = 10_000,
    split_seed: int = 0,
    flatten: bool = False,
    normalize: bool = True,
    allow_download: bool = True,
    device: str | torch.device = "cpu",
) -> FashionMNIST:
    """Load Fashion-MNIST as float tensors.

    Images are [N, 1, 28, 28] (or [N, 784] with ``flatten=True``), scaled to [0, 1] and,
    with ``normalize``, standardised by the training-set pixel mean and std. The 60k
    training images are split by a seeded permutation into ``60k - n_val`` train and
    ``n_val`` validation images; the 10k test images are returned untouched.
    """
    if not 0 <= n_val < 60_000:
        raise UserError(f"n_val must be in [0, 60000), got {n_val}")
    d = locate(root, allow_download)

    def images(key):
        x = torch.from_numpy(read_idx(d / FILES[key]).copy()).float().div_(255.0)
        if normalize:
            x = (x - PIXEL_MEAN) / PIXEL_STD
        return x.reshape(len(x), -1) if flatten else x.unsqueeze(1)

    def labels(key):
        return torch.from_numpy(read_idx(d / FILES[key]).astype(np.int64))

    x, y = images("train_images"), labels("train_labels")
    xt, yt = images("test_images"), labels("test_labels")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(split_seed))
    tr, va = perm[n_val:].sort().values, perm[:n_val].sort().values
    return FashionMNIST(
        train=Split(x[tr], y[tr], "train", tr.numpy()).to(device),
        val=Split(x[va], y[va], "val", va.numpy()).to(device),
        test=Split(xt, yt, "test").to(device),
        root=d,
        split_seed=split_seed,
    )
