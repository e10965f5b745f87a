"""The run directory: everything needed to reopen, compare and rerun a result.

Layout (a study or command writes what applies):
    config.json        all that is needed to rerun (study name and every option)
    environment.json   versions, seeds, CPU threads, command line, start time
    summary.json       the key numbers
    status.json        stages finished so far (for resuming), and 'complete' at the end
    *.npz              arrays (with the axes of their 2-D grids, see `save_arrays`)
    checkpoints/       safetensors weights
    figures/           PNG and SVG
    report.md          figures and a verdict

    inputs.json        fingerprints of the files the run reads (`results.inputs`)
    .lossprobe-run     marks the folder as a lossprobe run directory (with its random run id)
    .lossprobe.lock    the lock that keeps a second process out while one writes

A folder is a lossprobe run directory if and only if it holds the marker `.lossprobe-run`
that lossprobe wrote when the run started: a copy of a run's config.json, environment.json
or summary.json beside a user's files does not make a folder a run. Reopening a run
directory with the same configuration resumes it, once the inputs it records are shown to
be unchanged (a changed checkpoint, data file or code file is refused in one line naming
it). A directory that holds another run is refused unless `force=True`, which moves the old
run aside to DIR.old-<time> (nothing is deleted; refused when a file the command reads lies
inside it). A non-empty folder that is not a lossprobe run is always refused: lossprobe
never removes or moves files it did not write. One process at a time writes a run
directory (an OS lock, see `FolderLock`).

A run directory written before inputs.json existed resumes with a one-line warning that its
inputs could not be checked, and records them from then on.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import secrets
import sys
import weakref
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from lossprobe._version import __version__
from lossprobe.errors import BusyError, UserError
from lossprobe.results import atomic
from lossprobe.results.inputs import changed, fingerprint
from lossprobe.results.plotspec import dumps, loads, surface


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, tensors, paths and tuples to JSON types; NaN/inf become None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically and durably (a reader never sees half a file; see lossprobe.atomic)."""
    atomic.write_text(path, json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike, what: str = "") -> Any:
    """The JSON in `path`; a missing, unreadable or damaged file is one line naming it."""
    p = Path(path)
    label = f"{what} {p}" if what else str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{label} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{label} is a folder, not a JSON file") from None
    except UnicodeDecodeError:
        raise UserError(f"{label} is damaged: it is not UTF-8 text") from None
    except OSError as e:
        raise atomic.describe(e, p, "read") from None
    if not text.strip():
        raise UserError(f"{label} is empty (damaged or cut short); it should hold JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{label} is damaged: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise UserError(f"{label} is damaged: its JSON is nested too deeply to read") from None


def readable(path: str | os.PathLike) -> bool:
    """True if `path` exists and is whole: JSON parses, .npz/.npy/.safetensors open."""
    p = Path(path)
    if not p.is_file():
        return False
    try:
        if p.suffix == ".json":
            json.loads(p.read_text(encoding="utf-8"))  # RecursionError is an Exception too
        elif p.suffix == ".npz":
            with np.load(p) as f:
                for k in f.files:
                    f[k]
        elif p.suffix == ".npy":
            np.load(p)
        elif p.suffix == ".safetensors":
            with safe_open(str(p), "pt") as f:
                for k in f.keys():
                    f.get_tensor(k)
        return True
    except Exception:  # noqa: BLE001 - any failure to read means: recompute it
        return False


# --- arrays and the axes of their grids ---------------------------------------------------
GRIDS_KEY = "_grids"  # reserved .npz entry: the producer's declaration of its 2-D grids (JSON text)
PLOTS_KEY = "_plots"  # reserved .npz entry: the producer's plot declarations (`lossprobe.plotspec`, JSON text)
RESERVED_KEYS = (GRIDS_KEY, PLOTS_KEY)
_GRID_FIELDS = {"rows", "cols", "row_label", "col_label"}


def _check_grids(arrays: dict[str, Any], grids: dict[str, dict]) -> dict[str, dict]:
    """The declaration as plain JSON types; ValueError when it does not fit the arrays."""
    out = {}
    for z, spec in grids.items():
        if not isinstance(spec, dict) or not {"rows", "cols"} <= set(spec) or set(spec) - _GRID_FIELDS:
            raise ValueError(f"grid '{z}' must be a dict with 'rows' and 'cols' (and optional 'row_label', "
                             f"'col_label'), got {spec!r}")
        shape = np.shape(arrays[z]) if z in arrays else None
        if shape is None or len(shape) != 2:
            raise ValueError(f"grid '{z}' is not a 2-D array among the arrays saved")
        for key, n in (("rows", shape[0]), ("cols", shape[1])):
            c = spec[key]
            if c not in arrays or np.shape(arrays[c]) != (n,):
                raise ValueError(f"grid '{z}' {shape}: its {key} coordinate '{c}' must be a 1-D array of length {n}")
        out[str(z)] = {k: str(v) for k, v in spec.items()}
    return out


def save_arrays(path: str | os.PathLike, arrays: dict[str, Any], grids: dict[str, dict] | None = None,
                plots=None) -> Path:
    """Write `arrays` to the .npz `path` atomically, with the axes of its 2-D arrays.

    `grids` declares, for each 2-D array Z, which 1-D arrays are its coordinates:
    ``{"loss": {"rows": "ys", "cols": "xs", "row_label": "y", "col_label": "x"}}`` means
    loss[i, j] is the value at (ys[i], xs[j]); the labels are optional axis titles. It is
    stored inside the same file (entry GRIDS_KEY, JSON text: no pickle), so it can never
    disagree with the arrays it describes; readers get it back with `grids_of`.

    `plots` is a list of `lossprobe.plotspec.PlotSpec`: what the producer asks readers (the
    report site, figures) to draw from these arrays; checked against the arrays and stored
    the same way (entry PLOTS_KEY); readers get it back with `plots_of`. Arrays no
    declaration names are listed by readers, never drawn by guesswork."""
    for key in RESERVED_KEYS:
        if key in arrays:
            raise ValueError(f"'{key}' is reserved for declarations; rename that array")
    extra = {}
    if grids:
        extra[GRIDS_KEY] = np.array(json.dumps(_check_grids(arrays, grids)))
    if plots:

        extra[PLOTS_KEY] = np.array(dumps(plots, arrays))
    return atomic.save_npz(path, **arrays, **extra)


def grids_of(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, str]]:
    """The grid declaration stored in a loaded .npz (see `save_arrays`): {2-D array: {rows,
    cols[, row_label, col_label]}}, only the entries that still fit the arrays; {} when the
    file has none (written before declarations existed, or by another program)."""
    raw = arrays.get(GRIDS_KEY)
    try:
        grids = json.loads(str(raw[()])) if raw is not None and raw.shape == () else {}
    except (ValueError, TypeError):
        return {}
    out = {}
    for z, spec in grids.items() if isinstance(grids, dict) else ():
        try:
            out.update(_check_grids(arrays, {z: spec}))
        except (ValueError, TypeError):
            pass  # damaged or hand-edited: readers list that array instead of drawing it
    return out


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of the .npz `path` (the declarations are left out: they describe arrays, they
    are not ones); a missing, unreadable or damaged file is one UserError."""
    p = Path(path)
    problem = npz_limit_problem(p) if p.is_file() else None
    if problem:
        raise UserError(f"{p} {problem}")
    try:
        with np.load(p) as f:
            return {k: f[k] for k in f.files if k not in RESERVED_KEYS}
    except FileNotFoundError:
        raise UserError(f"{p} does not exist") from None
    except OSError as e:
        if e.errno is not None:
            raise atomic.describe(e, p, "read") from None
        raise UserError(f"{p} is damaged (not a readable .npz file)") from None
    except (ValueError, EOFError, KeyError):
        raise UserError(f"{p} is damaged (not a readable .npz file)") from None


def npz_sizes(path: str | os.PathLike) -> tuple[int, int]:
    """(bytes in memory, bytes on disk) of the .npz `path`, from its zip directory and the
    header of each array, without decompressing anything: a file whose arrays would expand far
    beyond its size (a zip bomb) can be refused before it takes the memory. Raises ValueError
    (or a zip/OS error) for a file that is not a readable .npz."""
    total = 0
    packed = os.path.getsize(path)
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            size = info.file_size
            if info.filename.endswith(".npy"):
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f)
                size = max(size, int(np.prod(shape, dtype=np.float64)) * dtype.itemsize)
            total += size
    return total, packed


def available_memory() -> int | None:
    """Bytes of memory available to this process now (Linux: MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


BOMB_BYTES = 256 * 10 ** 6  # an .npz expanding to more than this ...
BOMB_RATIO = 100  # ... and to more than this many times its size on disk is refused as a zip bomb


def npz_limit_problem(path: str | os.PathLike, limit: int | None = None) -> str | None:
    """Why the .npz `path` must not be loaded, or None: it would expand beyond `limit` bytes
    (default: the memory available), or far beyond its size on disk (`BOMB_BYTES` and
    `BOMB_RATIO`: deflate of constant data, a zip bomb). Not readable as an .npz: None (the
    reader says so)."""
    try:
        total, packed = npz_sizes(path)
    except Exception:  # noqa: BLE001 - damaged or not an .npz: the loader's own message
        return None
    mb = lambda n: f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n / 1e3:,.0f} kB"  # noqa: E731
    if total > BOMB_BYTES and total > BOMB_RATIO * max(packed, 1):
        return (f"would expand from {mb(packed)} on disk to {mb(total)} in memory (a zip bomb?); lossprobe "
                "refuses compressed arrays that grow more than 100-fold beyond 256 MB: save them uncompressed "
                "(numpy.savez)")
    limit = available_memory() if limit is None else limit
    if limit is not None and total > limit:
        return f"needs {mb(total)} in memory, more than the {mb(limit)} available"
    return None


def plots_of(arrays: dict[str, np.ndarray]) -> list:
    """The plot declarations stored in a loaded .npz (see `save_arrays`), only those that
    still fit the arrays. A file with only a grid declaration (written before plot
    declarations existed) yields one surface plot per declared grid; a file with neither, []."""
    raw = arrays.get(PLOTS_KEY)
    if raw is not None and raw.shape == ():
        return loads(str(raw[()]), arrays)
    return [surface(z, z, g["rows"], g["cols"], xlabel=g.get("col_label", g["cols"]),
                    ylabel=g.get("row_label", g["rows"]), zlabel=z)
            for z, g in grids_of(arrays).items()]


# --- one writer per folder ----------------------------------------------------------------
LOCK_NAME = ".lossprobe.lock"
_HELD: dict[str, list] = {}  # real path -> [fd, holders] for the locks this process holds


class FolderLock:
    """An exclusive `fcntl.flock` on FOLDER/.lossprobe.lock, held until `release()` (or the
    process ends: the kernel drops it, so a killed run never leaves a stale lock). A process
    may take the lock on one folder several times; it is released when every holder has."""

    def __init__(self, folder: str | os.PathLike, what: str = "--out"):
        import fcntl  # lazy: POSIX only

        self.folder = Path(folder)
        atomic.makedirs(self.folder)
        self.key = os.path.realpath(self.folder)
        self._held = False
        if self.key in _HELD:
            _HELD[self.key][1] += 1
            self._entry = _HELD[self.key]
            self._held = True
            return
        lock = self.folder / LOCK_NAME
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise atomic.describe(e, lock, "create the lock file") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            except OSError:
                pid = "?"
            os.close(fd)
            raise BusyError(f"{self.folder} is in use by pid {pid}; wait for it or use another {what}") from None
        except OSError as e:  # a file system without flock
            os.close(fd)
            raise atomic.describe(e, lock, "lock") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        self._entry = _HELD[self.key] = [fd, 1]
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        entry = _HELD.get(self.key)
        if entry is None or entry is not self._entry:  # already released by release_all_locks
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _HELD[self.key]
            try:
                os.close(entry[0])
            except OSError:
                pass


def environment(seeds: dict | None = None) -> dict:
    versions = {"lossprobe": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "numpy": np.__version__}
    for mod in ("scipy", "matplotlib", "safetensors"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            pass
    return {
        "versions": versions,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
        "seeds": seeds or {},
        "command": sys.argv,
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def release_all_locks() -> None:
    """Release every folder lock this process holds (the CLI does so when a command ends)."""
    for key, entry in list(_HELD.items()):
        del _HELD[key]
        try:
            os.close(entry[0])
        except OSError:
            pass


RUN_MARKER = ".lossprobe-run"
INPUTS_FILE = "inputs.json"
_NONE = object()
_LOCK_TEXT = re.compile(r"\A(\d+\n?)?\Z")


def _listing(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _ours(folder: Path, name: str) -> bool:
    """Whether `name` in `folder` is lossprobe's own bookkeeping: a temporary file of
    `atomic`, the marker it wrote, or the lock (empty or a pid); a file of the user's that
    merely bears one of these names is not."""
    if atomic.is_temp(name):
        return True
    p = folder / name
    if name == RUN_MARKER:
        return read_marker(folder) is not None
    if name == LOCK_NAME:
        try:
            return p.is_file() and not p.is_symlink() and p.stat().st_size < 64 \
                and bool(_LOCK_TEXT.match(p.read_text(errors="replace")))
        except OSError:
            return False
    return False


def _foreign(folder: Path) -> list[str]:
    """Entries of `folder` other than lossprobe's lock, marker and temporary files."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as e:
        raise atomic.describe(e, folder, "read the folder") from None
    return [n + ("/" if (folder / n).is_dir() else "") for n in names if not _ours(folder, n)]


def read_marker(folder: str | os.PathLike) -> dict | None:
    """The marker lossprobe wrote into a run directory when the run started ({kind,
    written_by, run_id}), or None: no marker, a link, or a file lossprobe did not write."""
    p = Path(folder) / RUN_MARKER
    try:
        if p.is_symlink() or not p.is_file() or p.stat().st_size > 4096:
            return None
        m = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return m if isinstance(m, dict) and m.get("written_by") == "lossprobe" else None


def is_run_dir(folder: str | os.PathLike) -> bool:
    """True if `folder` is a lossprobe run directory: it holds the marker lossprobe wrote when
    the run started. Copies of config.json or environment.json do not make one."""
    return read_marker(folder) is not None


def move_aside(folder: Path) -> Path:
    """Move everything in `folder` (but its lock) into a new sibling FOLDER.old-<time>; returns it."""
    folder = Path(os.path.abspath(folder))  # '.', '..' and relative paths name the folder itself
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    dest = folder.with_name(f"{folder.name}.old-{stamp}")
    k = 2
    while dest.exists():
        dest = folder.with_name(f"{folder.name}.old-{stamp}-{k}")
        k += 1
    atomic.makedirs(dest)
    for name in sorted(os.listdir(folder)):
        if name == LOCK_NAME:
            continue
        try:
            os.rename(folder / name, dest / name)
        except OSError as e:
            raise atomic.describe(e, folder / name, "move aside") from None
    atomic.fsync_dir(dest)
    atomic.fsync_dir(folder)
    return dest


class RunDir:
    """A run directory for `kind` (a study or command name) with configuration `config`.

    Opening one takes its lock (a second process gets one line naming the pid that holds
    it), removes temporary files a killed run left, and then resumes, starts, or refuses
    (see the module doc). The lock is released when the RunDir is garbage-collected, by
    `close()`, or when the process ends."""

    def __init__(self, path: str | os.PathLike, kind: str, config: dict, force: bool = False, seeds: dict | None = None,
                 defaults: dict | None = None, inputs: dict | None = None):
        """`defaults`: the configuration's default values. A run written before a key existed
        (its config.json lacks it) is the same run when this run's value of that key is its
        default, so upgrading lossprobe does not stop an unfinished run from resuming.

        `inputs`: {what: path or (path, select)} for every file or folder the run reads
        ('checkpoint', '--data file', ...; `select(relative path)` picks a folder's files):
        fingerprinted now (`results.inputs`), recorded in inputs.json when the run starts and
        compared when it resumes."""
        # absolute from the start: '.', '..' and relative paths keep naming this folder even after
        # --force moved the old run (and with it, perhaps, the current directory) aside
        self.path = Path(os.path.abspath(path))
        self.kind = kind
        self.config = {"kind": kind, **to_jsonable(config)}
        self.defaults = to_jsonable(defaults or {})
        self.resumed = False
        self.moved_aside: Path | None = None
        self.run_id: str | None = None
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--out {self.path} is a file, not a directory")
        if self.path.is_dir():  # refused before the lock file is created: nothing is added to a foreign folder
            self._refuse_foreign(_foreign(self.path))
        self._input_paths = {}
        for what, spec in (inputs or {}).items():
            p, select = spec if isinstance(spec, tuple) else (spec, None)
            self._input_paths[what] = (Path(p), select)
        self._lock = FolderLock(self.path)
        self._finalizer = weakref.finalize(self, self._lock.release)
        try:
            self._open(force, seeds)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the lock (also done when the RunDir is garbage-collected or the process ends)."""
        self._finalizer()

    def _refuse_foreign(self, foreign: list[str]) -> None:
        if foreign and not is_run_dir(self.path):
            hint = ""
            if {"config.json", "environment.json"} & set(foreign):
                hint = " (a copy of a run's files does not make a run: only lossprobe's own marker does)"
            raise UserError(
                f"{self.path} is not empty and is not a lossprobe run (it holds {_listing(foreign)}){hint}; "
                "lossprobe never moves or deletes files it did not write: choose another --out"
            )

    def _same_run(self, old) -> bool:
        """`old` (a config.json read back) describes this run: equal, or equal but for keys
        added since it was written whose value here is their default."""
        if old == self.config:
            return True
        if not isinstance(old, dict) or set(old) - set(self.config):
            return False
        missing = object()
        return (all(old[k] == self.config[k] for k in old)
                and all(self.config[k] == self.defaults.get(k, missing) for k in set(self.config) - set(old)))

    def _differences(self, old) -> str:
        """What differs between `old` (config.json read back) and this run, for the refusal."""
        if not isinstance(old, dict):
            return "a run whose config.json is damaged"
        if old.get("kind") != self.kind:
            return str(old.get("kind", "another run"))

        def short(v) -> str:
            text = json.dumps(v, sort_keys=True) if v is not _NONE else "(not set)"
            return text if len(text) <= 40 else text[:37] + "..."

        keys = [k for k in sorted(set(old) | set(self.config)) if old.get(k, _NONE) != self.config.get(k, _NONE)]
        shown = ", ".join(f"{k}: {short(old.get(k, _NONE))} → {short(self.config.get(k, _NONE))}" for k in keys[:3])
        return f"{self.kind} with other options: {shown}" + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    def _inputs_inside(self) -> list[str]:
        """The inputs of this command that lie inside the run directory (which --force would move)."""
        root = os.path.realpath(self.path)
        out = []
        for what, (p, _) in self._input_paths.items():
            real = os.path.realpath(p)
            if real == root or real.startswith(root + os.sep):
                out.append(f"{p} ({what})")
        return out

    def _fingerprints(self) -> dict:
        return {what: fingerprint(p, select, exclude=[self.path]) for what, (p, select) in self._input_paths.items()
                if p.exists()}

    def _check_inputs(self, fps: dict, marker: dict) -> dict | None:
        """Compare this run's inputs with those recorded when it started; one line naming the
        first that changed. Returns the record to write (None: it is up to date)."""
        f = self.path / INPUTS_FILE
        if not f.exists():
            print(f"lossprobe: warning: {self.path} was started by an earlier lossprobe that did not record its "
                  "inputs; resuming without checking that they are unchanged", file=sys.stderr)
            return fps
        try:
            rec = json.loads(f.read_text(encoding="utf-8"))
            ok = isinstance(rec, dict) and isinstance(rec.get("inputs"), dict) and rec.get("run_id") == marker.get(
                "run_id")
        except (OSError, ValueError, RecursionError):
            ok = False
        if not ok:
            raise UserError(f"{f} is damaged or belongs to another run, so lossprobe cannot check that this run's "
                            "inputs are unchanged; use --force to move the run aside and start afresh")
        old = rec["inputs"]
        for what, new in fps.items():
            if what in old:
                why = changed(old[what], new)
                if why is not None:
                    raise UserError(
                        f"{self.path} holds a run started with other inputs: the {what} {new['path']} has changed "
                        f"since ({why}); use --force to move the old run aside and start afresh, or choose another "
                        "--out")
        if set(fps) - set(old):
            return {**old, **fps}
        return None

    def _open(self, force: bool, seeds: dict | None) -> None:
        cfg_file = self.path / "config.json"
        foreign = _foreign(self.path)
        marker = read_marker(self.path)
        if foreign and marker is not None and not cfg_file.exists():
            marker = None  # a run killed before its config.json was written: nothing was computed, start it
        elif foreign and marker is not None:
            try:
                old = json.loads(cfg_file.read_text())
            except (OSError, ValueError, RecursionError):
                old = None
            if self._same_run(old) and not force:
                self.resumed = True
            elif force:
                inside = self._inputs_inside()
                if inside:
                    raise UserError(f"--force would move {_listing(inside, 2)}, which this command reads, aside with "
                                    f"the old run in {self.path}; choose another --out (or move it out first)")
                self.moved_aside = move_aside(self.path)
                marker = None
                print(f"lossprobe: moved the previous run in {self.path} to {self.moved_aside}", file=sys.stderr)
            else:
                raise UserError(
                    f"{self.path} already holds a different run ({self._differences(old)}); use --force to move it "
                    f"aside to {Path(os.path.abspath(self.path)).name}.old-<time>, or choose another --out"
                )
        else:
            self._refuse_foreign(foreign)
            marker = None
        fps = self._fingerprints()
        record = self._check_inputs(fps, marker) if self.resumed else fps
        atomic.remove_stale_temps(self.path)  # ours (by name), left by a killed process; we hold the lock
        self.run_id = (marker or {}).get("run_id") or secrets.token_hex(16)
        if marker is None or "run_id" not in marker:
            write_json(self.path / RUN_MARKER, {"kind": self.kind, "written_by": "lossprobe", "run_id": self.run_id})
        if record is not None:
            write_json(self.path / INPUTS_FILE, {"run_id": self.run_id, "inputs": record})
        atomic.makedirs(self.path / "figures")
        write_json(cfg_file, self.config)
        env_file = self.path / "environment.json"
        env = environment(seeds)
        env["run_id"] = self.run_id
        if self.resumed:
            try:
                env["resumed_from"] = json.loads(env_file.read_text()).get("started")
            except (OSError, ValueError, AttributeError, RecursionError):
                pass
        write_json(env_file, env)

    # --- files ---------------------------------------------------------------------
    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    def subdir(self, name: str) -> Path:
        return atomic.makedirs(self.path / name)

    def save_json(self, name: str, obj: Any) -> Path:
        write_json(self.path / name, obj)
        return self.path / name

    def load_json(self, name: str) -> Any:
        return read_json(self.path / name)

    def write_text(self, name: str, text: str) -> Path:
        return atomic.write_text(self.path / name, text)

    def save_arrays(self, name: str, grids: dict[str, dict] | None = None, plots=None, **arrays) -> Path:
        """Arrays to NAME (.npz), atomically; `grids` declares the axes of 2-D arrays and
        `plots` what to draw from them (see the module function `save_arrays`)."""
        return save_arrays(self.path / name, arrays, grids, plots)

    def load_arrays(self, name: str) -> dict[str, np.ndarray]:
        """The arrays of NAME (see the module function `load_arrays`)."""
        return load_arrays(self.path / name)

    def save_figure(self, fig, name: str) -> list[Path]:
        from lossprobe.results.drawing import save_figure  # lazy: matplotlib adds ~0.3 s to `import lossprobe`

        return save_figure(fig, self.figures, name)

    # --- stages (resume) -------------------------------------------------------------
    def status(self) -> dict:
        """status.json: {'done': [stages finished], 'complete': bool[, 'finished': time]}."""
        f = self.path / "status.json"
        try:
            st = json.loads(f.read_text())
            if isinstance(st, dict) and isinstance(st.get("done"), list):
                return st
        except (OSError, ValueError):
            pass  # missing or damaged: derived data, so the stages are recomputed
        return {"done": [], "complete": False}

    def done(self, stage: str, *files: str) -> bool:
        """True if `stage` finished and each of `files` (relative names) is whole; a damaged
        file means the stage is computed again."""
        return stage in self.status()["done"] and all(readable(self.path / f) for f in files)

    def mark(self, stage: str) -> None:
        st = self.status()
        if stage not in st["done"]:
            st["done"].append(stage)
        write_json(self.path / "status.json", st)

    @property
    def is_complete(self) -> bool:
        """True once `complete()` was called: every stage of the run finished."""
        return bool(self.status().get("complete"))

    def complete(self) -> None:
        st = self.status()
        st["complete"] = True
        st["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        write_json(self.path / "status.json", st)
