"""Data named by a spec, as the CLI's ``--data`` takes it.

    fashion-mnist:train|val|test      the real Fashion-MNIST (see `fashion_mnist`)
    spiral:train|val|test             the synthetic two-spiral set
    cifar10:DIR[:train|val|test]      CIFAR-10 / CIFAR-100 python batches in DIR (default: test)
    cifar100:DIR[:train|val|test]
    `imagefolder:DIR[:size=32][:gray][:norm=half|imagenet|none]`
                                      one subfolder of images per class (sorted names give
                                      labels 0, 1, ...); images resized to size×size (bilinear),
                                      RGB unless `gray`, scaled to [0, 1], then normalised:
                                      half: (x − 0.5) / 0.5 (default), imagenet: ImageNet's
                                      channel mean and std, none: left in [0, 1]
    FILE.pt | FILE.npz | FILE.safetensors[:KEY,KEY,...]
                                      tensors saved by name: `x` and `y` by default; with keys
                                      KEY1,...,KEYn the batch is (KEY1, ..., KEYn) and the last
                                      is the target; a file with `labels` and no `x` gives dict
                                      batches of all its tensors (HF style). `.pt` files are read
                                      with weights_only=True: pickled code is refused.
    module:function[:key=value...]    your function (or path/to/file.py:function) returning any
                                      data form that `lossprobe.Objective` takes
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from lossprobe.core.batching import Data, Split, TensorData, as_data
from lossprobe.core.specs import call_user, load_callable, looks_like_code, options, source_file
from lossprobe.data.cifar import cifar, cifar_files
from lossprobe.data.fashion import fashion_mnist
from lossprobe.data.spiral import two_spirals
from lossprobe.errors import UserError, first_line, refused_pickle
from lossprobe.results.store import npz_limit_problem

BUILTIN_SETS = ("fashion-mnist", "spiral", "cifar10", "cifar100")
TENSOR_SUFFIXES = (".pt", ".pth", ".npz", ".safetensors")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FORMS = ("fashion-mnist:SPLIT, spiral:SPLIT, cifar10:DIR, cifar100:DIR, imagefolder:DIR, "
         "FILE.pt|.npz|.safetensors[:KEYS], module:function")


def load(spec: str, subset: int | None = None, seed: int = 0, flatten: bool = False, option: str = "--subset",
         warn: bool = True) -> Data:
    """The data named by `spec` (see the module doc); `subset` takes a seeded subset.

    A `subset` at least as large as the data uses all of it, with a one-line warning naming
    `option` (none when `warn` is False: a default the user did not choose).
    """
    if not isinstance(spec, str) or not spec:
        raise UserError(f"--data must name a data set ({FORMS})")
    data = _load(spec, flatten)
    if subset:
        if not isinstance(data, TensorData):
            raise UserError(f"--subset needs in-memory data; '{spec}' is a stream of batches")
        if subset >= len(data):
            if subset > len(data) and warn:
                print(f"lossprobe: warning: {option} {subset} is larger than {spec} ({len(data)} samples); "
                      "using all of it", file=sys.stderr)
            return data
        data = data.subset(subset, seed)
    return data


def train_counterpart(spec: str) -> str | None:
    """The training split of the same built-in set ('fashion-mnist:test' -> 'fashion-mnist:train'),
    or None for data that has no such counterpart (files, folders, functions)."""
    name, _, rest = spec.partition(":")
    if name in ("fashion-mnist", "spiral"):
        return f"{name}:train"
    if name in ("cifar10", "cifar100"):
        root, _, _ = rest.partition(":")
        return f"{name}:{root}:train"
    return None


def _load(spec: str, flatten: bool) -> Data:
    name, _, rest = spec.partition(":")
    if name == "fashion-mnist":
        if rest not in ("train", "val", "test"):
            raise UserError(f"say which split of Fashion-MNIST: fashion-mnist:train, fashion-mnist:val or "
                            f"fashion-mnist:test (got '{spec}')")

        return fashion_mnist(flatten=flatten)[rest]
    if name == "spiral":
        seeds = {"train": 0, "val": 1, "test": 2}
        if rest not in seeds:
            raise UserError(f"say which split of the spirals: spiral:train, spiral:val or spiral:test (got '{spec}')")

        return two_spirals(n=200, seed=seeds[rest], name=f"spiral:{rest}")
    if name in ("cifar10", "cifar100"):
        root, _, part = rest.rpartition(":") if rest.endswith((":train", ":val", ":test")) else (rest, "", "test")
        if not root:
            raise UserError(f"give the directory of the {name} batches: {name}:DIR[:train|val|test]")

        return getattr(cifar(root, name), part)
    if name == "imagefolder":
        return image_folder(*_folder_args(rest, spec))
    path_part, _, keys = spec.partition(":") if not spec.endswith(TENSOR_SUFFIXES) else (spec, "", "")
    if path_part.endswith(TENSOR_SUFFIXES):
        return tensor_file(path_part, keys.split(",") if keys else None)
    if looks_like_code(spec):
        fn, kwargs = load_callable(spec, "data")
        return as_data(call_user(fn, kwargs, spec, "data"), spec)
    if Path(spec).exists():
        raise UserError(f"--data {spec}: a file or folder needs its form: FILE.pt/.npz/.safetensors, or "
                        f"imagefolder:{spec}")
    raise UserError(f"unknown data set '{spec}'; use one of {FORMS}")


def files_of(spec: str) -> dict:
    """{what: path or (folder, select)} of the files the data `spec` reads, for the fingerprints
    of a run's inputs (`results.store.RunDir`); built-in sets that lossprobe verifies itself
    (Fashion-MNIST, the spirals) have none."""
    if not isinstance(spec, str):
        return {}
    name, _, rest = spec.partition(":")
    if name in ("cifar10", "cifar100"):
        root, _, part = rest.rpartition(":") if rest.endswith((":train", ":val", ":test")) else (rest, "", "test")
        wanted = set(cifar_files(name))
        return {"folder": (root, lambda rel: rel.rsplit("/", 1)[-1] in wanted)} if root else {}
    if name == "imagefolder":
        root = rest.split(":")[0]
        return {"folder": (root, _is_image)} if root else {}
    path_part, _, _ = spec.partition(":") if not spec.endswith(TENSOR_SUFFIXES) else (spec, "", "")
    if path_part.endswith(TENSOR_SUFFIXES):
        return {"file": path_part}
    code = source_file(spec)
    return {"code": code} if code is not None else {}


def _is_image(rel: str) -> bool:
    """The files `image_folder` reads: images in class folders (whose names do not start with '.')."""
    parts = rel.split("/")
    return len(parts) >= 2 and not parts[0].startswith(".") and Path(rel).suffix.lower() in IMAGE_SUFFIXES


# --- tensor files -------------------------------------------------------------------------
def tensor_file(path: str, keys: list[str] | None = None) -> Data:
    """Tensors saved by name in a .pt (weights_only), .npz or .safetensors file (see module doc)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"data file {p} does not exist" + (" (it is a directory)" if p.is_dir() else ""))
    tensors = _read_tensors(p)
    if keys:
        missing = [k for k in keys if k not in tensors]
        if missing:
            raise UserError(f"data file {p} has no '{missing[0]}'; it holds {_names(tensors)}")
        if len(keys) == 1:
            raise UserError(f"data file {p}: name the inputs and the target, e.g. {p}:{keys[0]},TARGET")
        return as_data(tuple(tensors[k] for k in keys), p.name)
    if "x" in tensors and "y" in tensors:
        return as_data((tensors["x"], tensors["y"]), p.name)
    if "labels" in tensors:
        return TensorData(dict(tensors), p.name)
    raise UserError(f"data file {p} holds {_names(tensors)}, not 'x' and 'y': name the inputs and the target, "
                    f"e.g. --data {p}:INPUTS,TARGET")


def _head(p: Path) -> bytes:
    try:
        with open(p, "rb") as f:
            return f.read(16)
    except OSError:
        return b""


def _names(tensors: dict) -> str:
    return ", ".join(f"'{k}' {list(v.shape)}" for k, v in tensors.items()) or "no tensors"


def _read_tensors(p: Path) -> dict[str, torch.Tensor]:
    suffix = p.suffix
    if suffix == ".npz":
        problem = npz_limit_problem(p)
        if problem:
            raise UserError(f"data file {p} {problem}")
    elif suffix not in (".safetensors",):
        head = _head(p)
        if head[:2] != b"PK" and head[:1] != b"\x80":  # neither torch's zip format nor a pickle
            raise UserError(f"data file {p} is damaged or not a torch file (it starts with bytes {head[:8].hex(' ')}); "
                            "save tensors by name (torch.save({'x': x, 'y': y}), numpy.savez)")
    try:
        if suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                return {k: torch.from_numpy(np.ascontiguousarray(z[k])) for k in z.files}
        if suffix == ".safetensors":
            return load_file(str(p))
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except MemoryError:
        raise UserError(f"data file {p} does not fit in memory") from None
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise UserError(f"data file {p} holds pickled objects, which lossprobe does not load: save plain "
                            "arrays (numpy.savez) or tensors") from None
        raise UserError(f"data file {p} is damaged or not a {suffix} file: {first_line(e)}") from None
    except Exception as e:  # torch's UnpicklingError, safetensors' errors, zip errors, ...
        why = refused_pickle(e)
        if why is not None:  # weights_only met a class, a function or an opcode: not plain tensors, refused
            raise UserError(f"data file {p} holds more than tensors (torch's safe loader refused it: {why}); "
                            "lossprobe never runs code from a data file: save tensors by name "
                            "(torch.save({'x': x, 'y': y}), numpy.savez)") from None
        raise UserError(f"data file {p} is damaged or not a {suffix} file ({type(e).__name__}: "
                        f"{first_line(e)})") from None
    if isinstance(obj, (tuple, list)) and len(obj) >= 2 and all(isinstance(t, torch.Tensor) for t in obj):
        return {"x": obj[0], "y": obj[-1]} if len(obj) == 2 else {f"t{i}": t for i, t in enumerate(obj)}
    if isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return dict(obj)
    raise UserError(f"data file {p} holds a {type(obj).__name__}, not tensors by name (e.g. {{'x': ..., 'y': ...}})")


# --- image folders ------------------------------------------------------------------------
_NORMS = {"half": ((0.5,), (0.5,)), "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "none": None}


def _folder_args(rest: str, spec: str):
    root, *opts = rest.split(":")
    if not root:
        raise UserError(f"give the folder: imagefolder:DIR (got '{spec}')")

    flags, kv = options(opts)
    unknown = [f for f in flags if f != "gray"] + [k for k in kv if k not in ("size", "norm")]
    if unknown:
        raise UserError(f"unknown option '{unknown[0]}' in '{spec}'; use size=N, gray, norm=half|imagenet|none")
    size = kv.get("size", 32)
    if not isinstance(size, int) or size <= 0:
        raise UserError(f"imagefolder size must be a positive integer, got {size!r}")
    norm = kv.get("norm", "half")
    if norm not in _NORMS:
        raise UserError(f"imagefolder norm must be half, imagenet or none, got {norm!r}")
    return root, size, "gray" in flags, norm


def image_folder(root: str, size: int = 32, gray: bool = False, norm: str = "half") -> TensorData:
    """Images in one subfolder per class (labels from the sorted folder names), as a `Split`
    of float images [N, C, size, size] (see the module doc for the normalisation)."""

    d = Path(root)
    if not d.is_dir():
        raise UserError(f"image folder {d} does not exist" + (" (it is a file)" if d.is_file() else ""))
    classes = sorted(c.name for c in d.iterdir() if c.is_dir() and not c.name.startswith("."))
    if not classes:
        raise UserError(f"image folder {d} has no class subfolders: put the images of each class in DIR/CLASS/")
    xs, ys = [], []
    mode = "L" if gray else "RGB"
    files = {c: [f for f in sorted((d / c).rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
             for c in classes}
    empty = [c for c in classes if not files[c]]
    if empty and len(empty) < len(classes):
        raise UserError(f"image folder {d}: class folder '{empty[0]}' holds no images; labels are the positions of "
                        f"the sorted class folders ({', '.join(classes[:4])}{', ...' if len(classes) > 4 else ''}), so "
                        "an empty one would shift them: add its images or remove the folder")
    for label, c in enumerate(classes):
        for f in files[c]:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    with Image.open(f) as im:
                        im = im.convert(mode).resize((size, size), Image.BILINEAR)
                        xs.append(np.asarray(im, dtype=np.float32) / 255.0)
            except (Image.DecompressionBombWarning, Image.DecompressionBombError):
                raise UserError(f"image {f} is larger than the {Image.MAX_IMAGE_PIXELS} pixels lossprobe decodes (a "
                                "decompression bomb?); resize it") from None
            except Exception as e:
                raise UserError(f"image {f} could not be read: {first_line(e)}") from None
            ys.append(label)
    if not xs:
        raise UserError(f"image folder {d} has class subfolders {classes[:5]} but no images "
                        f"({', '.join(IMAGE_SUFFIXES)})")
    x = torch.from_numpy(np.stack(xs))
    x = x[:, None] if gray else x.permute(0, 3, 1, 2).contiguous()
    if _NORMS[norm] is not None:
        mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in _NORMS[norm])
        x = (x - mean) / std
    split = Split(x, torch.tensor(ys, dtype=torch.long), f"imagefolder:{d.name}")
    split.classes = classes
    return split


__all__ = ["BUILTIN_SETS", "files_of", "image_folder", "load", "tensor_file", "train_counterpart"]
