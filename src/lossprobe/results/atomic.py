"""Durable, atomic file writes: every file lossprobe writes goes through this module.

A file is written to a unique temporary name in its own folder (``.NAME.<pid>.<random>.lossprobe-tmp``),
flushed and ``fsync``ed, renamed over its final name, and the folder is ``fsync``ed. So a
reader (or a resumed run) sees either the old file or the whole new one, never half a file,
even after a crash or a power cut; two processes never share a temporary name; and an error
(permission denied, read-only file system, disk full) removes the temporary file and is
raised as one `StorageError` line naming the final file.

    with open_atomic(path, "w") as f:      # any writer that takes a file object
        f.write(text)
    write_text(path, text); write_bytes(path, data); copy_file(src, dst)
    save_npz(path, **arrays); save_safetensors(path, tensors); save_torch(path, obj)

Temporary files left by a killed process end in TMP_SUFFIX; `remove_stale_temps(folder)`
deletes them (a run directory does so when it is opened under its lock).
"""

from __future__ import annotations

import contextlib
import errno as _errno
import io
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np
import torch
from safetensors.torch import save

from lossprobe.errors import StorageError

TMP_SUFFIX = ".lossprobe-tmp"


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.0f} B"


def describe(e: OSError, path: str | os.PathLike | None = None, action: str = "write",
             needed: int | None = None) -> StorageError:
    """One line for an operating-system error on `path` (default: the error's own file name)."""
    if isinstance(e, StorageError):
        return e
    name = str(path if path is not None else (e.filename or "a file"))
    code = e.errno
    if code == _errno.ENOSPC or code == getattr(_errno, "EDQUOT", -1):
        what = "no space left on the device" if code == _errno.ENOSPC else "disk quota exceeded"
        free = None
        with contextlib.suppress(OSError):
            st = os.statvfs(Path(name).parent if Path(name).parent.exists() else ".")
            free = st.f_bavail * st.f_frsize
        need = f"; it needs about {_size(needed)}" if needed else ""
        have = f", {_size(free)} free" if free is not None else ""
        msg = f"cannot {action} {name}: {what}{need}{have}; free some space and run the same command again to resume"
    elif code == _errno.EROFS:
        msg = f"cannot {action} {name}: read-only file system; choose a writable --out"
    elif code in (_errno.EACCES, _errno.EPERM):
        msg = f"cannot {action} {name}: permission denied; choose a folder you can write to"
    elif code == _errno.ENOENT:
        msg = f"cannot {action} {name}: no such file or directory"
    elif code == _errno.ENOTDIR:
        msg = f"cannot {action} {name}: a part of the path is a file, not a folder"
    elif code == _errno.EISDIR:
        msg = f"cannot {action} {name}: it is a folder, not a file"
    elif code == _errno.EEXIST:
        msg = f"cannot {action} {name}: it already exists"
    elif code == _errno.ENAMETOOLONG:
        msg = f"cannot {action} {name}: the name is too long"
    elif code == _errno.EMFILE or code == _errno.ENFILE:
        msg = f"cannot {action} {name}: too many open files"
    else:
        msg = f"cannot {action} {name}: {e.strerror or e}"
    return StorageError(code, msg, name)


def fsync_dir(folder: str | os.PathLike) -> None:
    """fsync a folder so that a rename or a new entry in it survives a power cut (best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not support fsync on folders
        pass
    finally:
        os.close(fd)


def makedirs(folder: str | os.PathLike) -> Path:
    """Create `folder` and its parents (fsyncing the parent of each new folder); errors as one line."""
    folder = Path(folder)
    if folder.is_dir():
        return folder
    missing = []
    p = folder
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    if p.exists() and not p.is_dir():
        raise StorageError(_errno.ENOTDIR, f"cannot create the folder {folder}: {p} is a file, not a folder", str(p))
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:
            if not d.is_dir():
                raise StorageError(_errno.ENOTDIR, f"cannot create the folder {folder}: {d} is a file, not a folder",
                                   str(d)) from None
        except OSError as e:
            raise describe(e, d, "create the folder") from None
        fsync_dir(d.parent)
    return folder


def _fsync_file(f: IO, path: Path) -> None:
    """Flush Python's and the OS's buffers of the open temporary file `f` (final name `path`)."""
    f.flush()
    os.fsync(f.fileno())


def _unlink_quietly(p: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(p)


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "wb", encoding: str | None = "utf-8",
                size_hint: int | None = None) -> Iterator[IO]:
    """A file object for `path` ('w' text or 'wb' binary) that appears under `path` only when
    the block ends without an exception, whole and on disk (see the module doc)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"open_atomic writes files: mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    makedirs(path.parent)
    tmp = _tmp_path(path)
    try:
        f = open(tmp, "xb") if mode == "wb" else open(tmp, "x", encoding=encoding, newline="")
    except OSError as e:
        raise describe(e, path, needed=size_hint) from None
    with _replacing(tmp, path, size_hint):
        try:
            yield f
            _fsync_file(f, path)
        finally:
            f.close()


@contextlib.contextmanager
def _replacing(tmp: Path, path: Path, size_hint: int | None = None) -> Iterator[None]:
    """Around the block that writes and fsyncs `tmp`: renames it to `path` and fsyncs the folder
    when the block ends; otherwise removes it, an OS error becoming one line naming `path`."""
    try:
        yield
        os.replace(tmp, path)
    except OSError as e:
        needed = size_hint or _tmp_size(tmp)
        _unlink_quietly(tmp)
        raise describe(e, path, needed=needed) from None
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(path.parent)


def _tmp_size(tmp: Path) -> int | None:
    try:
        return tmp.stat().st_size or None
    except OSError:
        return None


@contextlib.contextmanager
def writing_to(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path, with `path`'s suffix, for a writer that insists on a file name (e.g.
    matplotlib's animation writers); it becomes `path` like `open_atomic` when the block ends."""
    path = Path(path)
    makedirs(path.parent)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}{path.suffix}")
    with _replacing(tmp, path):
        yield tmp
        with open(tmp, "rb+") as f:
            _fsync_file(f, path)


_TEMP_NAME = re.compile(r"\A\..+\.\d+\.[0-9a-f]{8}" + re.escape(TMP_SUFFIX) + r"(\.[^./]*)?\Z", re.S)


def is_temp(name: str) -> bool:
    """True for the name of a temporary file of this module (``.NAME.<pid>.<8 hex digits>.lossprobe-tmp``,
    see `_tmp_path` and `writing_to`): a user's file that merely contains the suffix is not one."""
    return bool(_TEMP_NAME.match(name))


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with open_atomic(path, "wb", size_hint=len(data)) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    data = text.encode("utf-8")
    return write_bytes(path, data)


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy the bytes of `src` to `dst` atomically (no metadata)."""
    try:
        fin = open(src, "rb")
    except OSError as e:
        raise describe(e, src, "read") from None
    with fin:
        try:
            size = os.fstat(fin.fileno()).st_size
        except OSError:
            size = None
        with open_atomic(dst, "wb", size_hint=size) as f:
            shutil.copyfileobj(fin, f, 1 << 20)
    return Path(dst)


def save_npz(path: str | os.PathLike, **arrays: Any) -> Path:
    """np.savez to `path` atomically (the name is kept as given)."""
    with open_atomic(path, "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
    return Path(path)


def save_npy(path: str | os.PathLike, array: Any) -> Path:
    with open_atomic(path, "wb") as f:
        np.save(f, np.asarray(array))
    return Path(path)


_ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}
_STREAM_BYTES = 64 * 2 ** 20  # larger files are streamed tensor by tensor (no copy of them in memory)


def save_safetensors(path: str | os.PathLike, tensors: dict) -> Path:
    """A dict of tensors as a safetensors file, atomically. Small files are made by the
    safetensors library; large ones (directions of a large model) are streamed, chunk by
    chunk from the device, so that saving them needs no copy of their bytes in memory (views
    of one tensor are fine)."""
    total = sum(v.numel() * v.element_size() for v in tensors.values())
    if total <= _STREAM_BYTES or any(v.dtype not in _ST_DTYPES for v in tensors.values()):
        return write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))
    header, pos = {}, 0
    for k in sorted(tensors):
        v = tensors[k]
        n = v.numel() * v.element_size()
        header[k] = {"dtype": _ST_DTYPES[v.dtype], "shape": list(v.shape), "data_offsets": [pos, pos + n]}
        pos += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open_atomic(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for k in sorted(tensors):
            flat = tensors[k].detach().reshape(-1)
            step = max(1, (16 * 2 ** 20) // max(flat.element_size(), 1))
            for a in range(0, flat.numel(), step):
                part = flat[a:a + step].contiguous().cpu()
                f.write(part.view(torch.uint8).numpy().data)
    return Path(path)


def save_torch(path: str | os.PathLike, obj: Any) -> Path:
    """torch.save of plain state (tensors, numbers, dicts) to `path`, atomically. Serialised in
    memory first, so that a write error (a full disk) is an OSError naming the file, never
    torch's RuntimeError from inside its writer."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_bytes(path, buf.getbuffer())


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Delete temporary files (ending in TMP_SUFFIX) that a killed lossprobe process left in
    `folder` and its subfolders. Only call this while holding the folder's lock."""
    n = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            if is_temp(name):
                _unlink_quietly(Path(root) / name)
                n += 1
    return n
