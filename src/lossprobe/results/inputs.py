"""Fingerprints of a run's inputs, so that a resumed run proves it reads what it started with.

A run directory records, when it starts, one fingerprint per input file or folder that its
command reads (checkpoints, data files and folders, the files of the user's model, data,
loss and forward code, trajectories, a search space): the bytes, the number of files and
the SHA-256 of their contents (of every file's path and contents, for a folder). Inputs
larger than `HASH_LIMIT` together are fingerprinted by size and modification time only.
On resume the fingerprints are taken again and compared (`changed`); a run whose inputs
differ is refused in one line naming the input (see `results.store.RunDir`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Iterable

HASH_LIMIT = 4 * 1024 ** 3  # bytes hashed per run at most (about 3 s); beyond: size and mtime
_CHUNK = 1 << 20


def _files(root: Path, select: Callable[[str], bool] | None, exclude: list[str]) -> list[tuple[str, Path]]:
    """(path relative to `root`, path) of the regular files under `root`, sorted, skipping
    `exclude` (absolute real paths, e.g. the run directory itself) and what `select` rejects."""
    out = []
    for dirpath, dirs, names in os.walk(root, followlinks=False):
        real = os.path.realpath(dirpath)
        dirs[:] = sorted(d for d in dirs if os.path.realpath(os.path.join(dirpath, d)) not in exclude)
        if real in exclude:
            continue
        for n in sorted(names):
            p = Path(dirpath) / n
            rel = p.relative_to(root).as_posix()
            if p.is_file() and (select is None or select(rel)):
                out.append((rel, p))
    return out


def fingerprint(path: str | os.PathLike, select: Callable[[str], bool] | None = None,
                exclude: Iterable[str | os.PathLike] = ()) -> dict:
    """{path, files, bytes, sha256 (None above HASH_LIMIT), stat} of a file, or of the files in a
    folder (`select` takes a path relative to it), leaving out the folders in `exclude`."""
    p = Path(path)
    ex = [os.path.realpath(e) for e in exclude]
    files = [(p.name, p)] if p.is_file() else _files(p, select, ex) if p.is_dir() else []
    stats = []
    for rel, f in files:
        st = f.stat()
        stats.append((rel, st.st_size, st.st_mtime_ns))
    total = sum(s for _, s, _ in stats)
    stat = hashlib.sha256(repr(stats).encode()).hexdigest()
    digest = None
    if total <= HASH_LIMIT:
        h = hashlib.sha256()
        for rel, f in files:
            h.update(rel.encode() + b"\0" if p.is_dir() else b"")
            with open(f, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    h.update(chunk)
            h.update(b"\0")
        digest = h.hexdigest()
    return {"path": os.path.abspath(p), "files": len(files), "bytes": total, "sha256": digest, "stat": stat}


def changed(old: dict, new: dict) -> str | None:
    """How an input differs from its recorded fingerprint (content when both were hashed, else
    size and modification times), or None when it is the same."""
    if not isinstance(old, dict):
        return "its record is damaged"
    if old.get("files") != new["files"]:
        return f"it holds {new['files']} file(s) now, {old.get('files')} then"
    if old.get("sha256") and new["sha256"]:
        return None if old["sha256"] == new["sha256"] else "its contents differ"
    if old.get("bytes") != new["bytes"]:
        return f"its size changed ({old.get('bytes')} → {new['bytes']} bytes)"
    return None if old.get("stat") == new["stat"] else "its modification time changed"


__all__ = ["HASH_LIMIT", "changed", "fingerprint"]
