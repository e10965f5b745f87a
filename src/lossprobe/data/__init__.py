"""Data sets: real Fashion-MNIST, the synthetic two-spiral set, CIFAR, image folders and tensor
files, as in-memory splits; `load_split` reads the CLI's ``--data`` specs."""

from .fashion import FashionMNIST, fashion_mnist, read_idx
from .spiral import two_spirals
from .split import Split, as_split

__all__ = ["FashionMNIST", "Split", "as_split", "fashion_mnist", "read_idx", "two_spirals", "load_split",
           "image_folder", "tensor_file"]

from .sources import image_folder, tensor_file  # noqa: E402


def load_split(spec: str, subset: int | None = None, seed: int = 0, flatten: bool = False):
    """Data from a CLI spec (see `lossprobe.data.sources`); `subset` takes a seeded subset."""
    from .sources import load

    return load(spec, subset, seed, flatten)
