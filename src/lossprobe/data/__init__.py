"""Data sets: real Fashion-MNIST and the synthetic two-spiral set, as in-memory splits."""

from .fashion import FashionMNIST, fashion_mnist, read_idx
from .spiral import two_spirals
from .split import Split, as_split

__all__ = ["FashionMNIST", "Split", "as_split", "fashion_mnist", "read_idx", "two_spirals", "load_split"]


def load_split(spec: str, subset: int | None = None, seed: int = 0, flatten: bool = False) -> Split:
    """A split from a CLI spec: 'fashion-mnist:test', 'fashion-mnist:train', 'spiral:train'.

    `subset` takes a seeded random subset of that many samples.
    """
    from ..errors import UserError

    name, _, part = spec.partition(":")
    part = part or "test"
    if name == "fashion-mnist":
        if part not in ("train", "val", "test"):
            raise UserError(f"unknown split '{part}' in '{spec}'; use train, val or test")
        split = fashion_mnist(flatten=flatten)[part]
    elif name == "spiral":
        seeds = {"train": 0, "val": 1, "test": 2}
        if part not in seeds:
            raise UserError(f"unknown split '{part}' in '{spec}'; use train, val or test")
        split = two_spirals(n=200, seed=seeds[part], name=f"spiral:{part}")
    else:
        raise UserError(f"unknown data set '{name}' in '{spec}'; use fashion-mnist:SPLIT or spiral:SPLIT")
    return split.subset(subset, seed) if subset else split
