"""Data sets: real Fashion-MNIST, the synthetic two-spiral set, CIFAR, image folders and tensor
files, as in-memory splits; `load_split` reads the CLI's ``--data`` specs."""

from lossprobe.core.batching import Split, as_data
from lossprobe.data.fashion import FashionMNIST, fashion_mnist, read_idx
from lossprobe.data.sources import load
from lossprobe.data.spiral import two_spirals

__all__ = ["FashionMNIST", "Split", "as_split", "fashion_mnist", "read_idx", "two_spirals", "load_split",
           "image_folder", "tensor_file"]

from lossprobe.data.sources import image_folder, tensor_file  # noqa: E402


def as_split(data, name: str = "data"):
    """Deprecated name of `lossprobe.batching.as_data` (kept for existing code)."""
    return as_data(data, name)


def load_split(spec: str, subset: int | None = None, seed: int = 0, flatten: bool = False):
    """Data from a CLI spec (see `lossprobe.data.sources`); `subset` takes a seeded subset."""
    return load(spec, subset, seed, flatten)
