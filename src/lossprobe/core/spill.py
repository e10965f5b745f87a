"""Parameter-sized vectors kept in a temporary file instead of memory, read back chunk by chunk.

Lanczos on a large model needs every basis vector again only twice: the previous one for the
three-term recurrence and all of them once at the end, to form the Ritz vectors. `SpilledRows`
writes each vector to an unlinked temporary file as it is made (the operating system's page
cache absorbs the writes; the file's pages are not the process's resident memory) and reads
rows back in chunks of `CHUNK` entries, so the probe holds two vectors in memory, not m:

    rows = SpilledRows(n, torch.float32, device)
    rows.append(q)                       # row j
    rows.axpy(j, -beta, w)               # w -= beta * row j
    rows.combine(S, [y1, y2])            # y_i = sum_j S[j, i] row_j
    rows.close()                         # (also on garbage collection: the file is unlinked)

The file lives in `tempfile.gettempdir()` (``TMPDIR``); appending a row that would leave less
than `MARGIN` bytes free on that disk raises one clear line instead of filling it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from lossprobe.core.vectors import CHUNK, chunk_ranges  # (CHUNK: entries read or written at once)
from lossprobe.errors import UserError

MARGIN = 1 << 30  # bytes left free on the spill disk


def in_memory_filesystem(directory: str) -> bool:
    """Whether `directory` is on tmpfs or ramfs (its files take memory, not disk), from /proc/mounts."""
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split()[1:3] for line in f if len(line.split()) > 2]
    except OSError:
        return False
    path = os.path.realpath(directory)
    best = max((m for m in mounts if path == m[0] or path.startswith(m[0].rstrip("/") + "/")),
               key=lambda m: len(m[0]), default=None)
    return best is not None and best[1] in ("tmpfs", "ramfs")


def spill_room(directory: str | None = None) -> int:
    """Bytes free for spilled rows in `directory` (default the temporary directory), less the margin;
    0 on an in-memory filesystem (a tmpfs /tmp), where spilling would only move the memory."""
    directory = directory or tempfile.gettempdir()
    if in_memory_filesystem(directory):
        return 0
    return max(0, shutil.disk_usage(directory).free - MARGIN)


class SpilledRows:
    """Rows of n entries of `dtype` appended to a temporary file; see the module docstring."""

    def __init__(self, n: int, dtype: torch.dtype, device, directory: str | None = None):
        self.n, self.dtype, self.device = int(n), dtype, torch.device(device)
        self.directory = directory or tempfile.gettempdir()
        self.count = 0
        self._np = torch.empty(0, dtype=dtype).numpy().dtype
        self.row_bytes = self.n * self._np.itemsize
        fd, path = tempfile.mkstemp(prefix="lossprobe-lanczos-", dir=self.directory)
        os.unlink(path)  # the data goes when the file is closed, also if the process is killed
        self._fd = fd
        self._buf = np.empty(min(self.n, CHUNK), dtype=self._np)  # one staging chunk on the host
        self._pool: ThreadPoolExecutor | None = None
        self._pending = None

    def __len__(self) -> int:
        return self.count

    def has_room(self) -> bool:
        """Whether one more row fits, leaving `MARGIN` free."""
        return shutil.disk_usage(self.directory).free - self.row_bytes >= MARGIN

    def append(self, v: torch.Tensor) -> int:
        """Write `v` [n] as the next row, in a background thread (the page cache takes about a
        second per 500 MB: hidden behind the product that follows); returns its index. `v` must
        not change until the next `append` or read, which wait for the write."""
        self.wait()
        free = shutil.disk_usage(self.directory).free
        if free - self.row_bytes < MARGIN:
            raise UserError(f"the Lanczos vectors need {self.row_bytes / 1e9:.2f} GB more in {self.directory} "
                            f"({self.count} written, {free / 1e9:.2f} GB free): set TMPDIR to a larger disk, "
                            "or give basis='memory' with a memory= budget")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lossprobe-spill")
        self._pending = self._pool.submit(self._write, v.detach().reshape(-1), self.count * self.row_bytes)
        self.count += 1
        return self.count - 1

    def _write(self, flat: torch.Tensor, off: int) -> None:
        for a, b in chunk_ranges(self.n):
            if flat.device.type == "cpu":
                arr = flat[a:b].numpy()
            else:
                arr = self._buf[: b - a]
                torch.from_numpy(arr).copy_(flat[a:b])
            view = memoryview(arr).cast("B")
            done = 0
            while done < len(view):
                done += os.pwrite(self._fd, view[done:], off + a * self._np.itemsize + done)

    def wait(self) -> None:
        """Finish the write in flight (its error, e.g. a full disk, is raised here)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _read(self, j: int, a: int, b: int) -> torch.Tensor:
        """Row j's entries [a, b) in the staging buffer (as a tensor on the rows' device)."""
        self.wait()
        arr = self._buf[: b - a]
        view = memoryview(arr).cast("B")
        off = j * self.row_bytes + a * self._np.itemsize
        done = 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], off + done)
            if got <= 0:
                raise OSError(f"short read from the spilled Lanczos vectors (row {j})")
            done += got
        t = torch.from_numpy(arr)
        return t if self.device.type == "cpu" else t.to(self.device, non_blocking=False)

    def axpy(self, j: int, alpha: float, w: torch.Tensor) -> torch.Tensor:
        """w += alpha · row j, in place."""
        flat = w.reshape(-1)
        for a, b in chunk_ranges(self.n):
            flat[a:b].add_(self._read(j, a, b), alpha=alpha)
        return w

    def combine(self, S: np.ndarray, targets) -> None:
        """targets[i] = Σ_j S[j, i] row_j (S [count, len(targets)], float64)."""
        flats = [t.reshape(-1) for t in targets]
        for t in flats:
            t.zero_()
        for j in range(self.count):
            for a, b in chunk_ranges(self.n):
                r = self._read(j, a, b)
                for i, t in enumerate(flats):
                    if S[j, i] != 0.0:
                        t[a:b].add_(r, alpha=float(S[j, i]))

    def close(self) -> None:
        if self._pool is not None:
            try:
                self.wait()
            finally:
                self._pool.shutdown()
                self._pool = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
