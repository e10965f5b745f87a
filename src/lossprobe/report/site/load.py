"""Reading a run directory: what the site needs from its files, read once and rendered many times.

Array files (.npz) are read with the plot declarations their producer stored in them
(`lossprobe.store.plots_of`); nothing is inferred from array names.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from lossprobe.errors import UserError
from lossprobe.report.site.markup import size
from lossprobe.results.store import PLOTS_KEY, RESERVED_KEYS, npz_limit_problem, plots_of

MAX_COPY_BYTES = 64 * 2**20  # larger files are listed, not copied into the site
MAX_LOAD_BYTES = 32 * 2**20  # larger .npz files are not opened for plots
MAX_EXPANDED_BYTES = 512 * 2**20  # nor those whose arrays take more than this in memory
SKIP_DIRS = {"checkpoints", "site", "__pycache__"}  # top-level folders of a run never copied


def read_json(path: Path) -> tuple[Any, str | None]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as e:
        return None, f"{path.name} could not be read ({type(e).__name__})"
    if not text.strip():
        return None, f"{path.name} is empty"
    try:
        return json.loads(text), None
    except ValueError as e:
        return None, f"{path.name} is not valid JSON ({getattr(e, 'msg', e)})"
    except RecursionError:
        return None, f"{path.name} is nested too deeply to read"


@dataclass
class Run:
    """What the site needs from one run directory (read once, rendered many times)."""

    path: Path
    slug: str = ""
    config: dict = field(default_factory=dict)
    summary: Any = None
    status: dict | None = None
    environment: dict = field(default_factory=dict)
    report_md: str = ""
    files: list[tuple[str, int]] = field(default_factory=list)  # (relative POSIX path, bytes), copied
    not_copied: list[tuple[str, int, str]] = field(default_factory=list)  # (path, bytes, why)
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # npz path -> arrays
    histories: dict[str, dict] = field(default_factory=dict)  # label -> History.to_dict()
    plots: dict[str, list] = field(default_factory=dict)  # npz -> its plot declarations (store.plots_of)
    problems: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        k = self.config.get("kind")
        if not k and isinstance(self.summary, dict):
            k = self.summary.get("study")
        return str(k or "unknown")

    @property
    def name(self) -> str:
        n = self.config.get("name") or self.config.get("run_name")
        return str(n) if n not in (None, "") else self.path.name

    @property
    def note(self) -> str | None:
        n = self.config.get("note") or self.config.get("notes") or self.config.get("description")
        return None if n in (None, "") else str(n)

    @property
    def started(self) -> str | None:
        return self.environment.get("started")

    @property
    def finished(self) -> str | None:
        return (self.status or {}).get("finished")

    @property
    def state(self) -> str:
        if self.status is None:
            return "unknown"
        return "complete" if self.status.get("complete") else "incomplete"

    @property
    def copied(self) -> set[str]:
        return {p for p, _ in self.files}

    def figures(self) -> list[str]:
        """Figure files to show: figures/*.png, or the .svg where no .png exists."""
        names = sorted(p for p in self.copied if p.startswith("figures/") and p.lower().endswith((".png", ".svg",
                                                                                                   ".jpg", ".jpeg")))
        stems = {p.rsplit(".", 1)[0] for p in names if p.lower().endswith((".png", ".jpg", ".jpeg"))}
        return [p for p in names if not (p.lower().endswith(".svg") and p.rsplit(".", 1)[0] in stems)]


def load_run(path: str | os.PathLike, exclude: Iterable[Path] = ()) -> Run:
    """Read a run directory. Raises UserError when `path` is not a lossprobe run."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"run directory {p} does not exist")
    if not p.is_dir():
        raise UserError(f"{p} is a file, not a run directory")
    if not (p / "config.json").is_file():
        raise UserError(f"{p} is not a lossprobe run directory (no config.json)")
    run = Run(path=p)
    cfg, err = read_json(p / "config.json")
    if err or not isinstance(cfg, dict):
        raise UserError(f"{p}/config.json is not a JSON object; is {p} a lossprobe run directory?")
    run.config = cfg
    for name, attr in (("summary.json", "summary"), ("status.json", "status"), ("environment.json", "environment")):
        obj, err = read_json(p / name)
        if err:
            run.problems.append(err)
        if obj is not None:
            if attr != "summary" and not isinstance(obj, dict):
                run.problems.append(f"{name} is not a JSON object")
                continue
            setattr(run, attr, obj)
    if (p / "report.md").is_file():
        run.report_md = (p / "report.md").read_text(encoding="utf-8", errors="replace")
    excluded = {e.resolve() for e in exclude}
    for root, dirs, files in os.walk(p):
        rootp = Path(root)
        rel_root = rootp.relative_to(p).as_posix()
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (rootp / d).is_symlink()
                         and (rootp / d).resolve() not in excluded and not (rel_root == "." and d in SKIP_DIRS))
        for f in sorted(files):
            fp = rootp / f
            rel = fp.relative_to(p).as_posix()
            if f.startswith(".") or ".tmp" in f or fp.is_symlink() or not fp.is_file():
                continue
            n = fp.stat().st_size
            if n > MAX_COPY_BYTES:
                run.not_copied.append((rel, n, f"larger than {size(MAX_COPY_BYTES)}"))
            else:
                run.files.append((rel, n))
    ck = p / "checkpoints"
    if ck.is_dir():
        n_files = sum(1 for f in ck.rglob("*") if f.is_file())
        total = sum(f.stat().st_size for f in ck.rglob("*") if f.is_file())
        run.not_copied.append(("checkpoints/", total, f"{n_files} checkpoint files stay in the run directory"))
    for rel, n in run.files:
        if rel.endswith(".npz") and n <= MAX_LOAD_BYTES:
            problem = npz_limit_problem(p / rel, limit=MAX_EXPANDED_BYTES)
            if problem:  # a zip bomb, or arrays too large for a page: listed, not opened
                run.problems.append(f"{rel} was not opened: it {problem}")
                continue
            try:
                with np.load(p / rel, allow_pickle=False) as f:
                    arrays = {k: f[k] for k in f.files}
                specs = plots_of(arrays)
                if PLOTS_KEY not in arrays:  # surfaces from a grid declaration only: titles from surface.json
                    specs = _sidecar_labels(specs, p / (rel[:-4] + ".json"), arrays)
                run.plots[rel] = specs
                run.arrays[rel] = {k: a for k, a in arrays.items() if k not in RESERVED_KEYS}
            except Exception as e:  # a damaged array file must not stop the site
                run.problems.append(f"{rel} could not be read ({type(e).__name__})")
        m = re.fullmatch(r"history_?(.*)\.json", rel)
        if m:
            h, err = read_json(p / rel)
            if isinstance(h, dict) and "epoch" in h:
                label = m.group(1).replace("seed", "seed ").replace("_", " ").strip() or "run"
                run.histories[label] = h
    return run


def _sidecar_labels(specs: list, meta_file: Path, arrays: dict[str, np.ndarray]) -> list:
    """Surface plots declared only by a grid without axis titles (`lossprobe.surface.Surface.save`
    of a run without meta.axis_labels) get their titles from the JSON saved next to the .npz:
    the kinds of its directions. The axes themselves stay as declared."""
    if not meta_file.is_file():
        return specs
    info, _ = read_json(meta_file)
    meta = info.get("meta", info) if isinstance(info, dict) else {}
    dirs = meta.get("directions") if isinstance(meta, dict) else None
    coords = sorted(k for k in arrays if re.fullmatch(r"coords_\d+", k))
    if not isinstance(dirs, list) or len(dirs) != len(coords):
        return specs
    titles = {}
    for i, (k, d) in enumerate(zip(coords, dirs)):
        if isinstance(d, dict) and d.get("kind"):
            norm = f", {d['norm']}-normalised" if d.get("norm") not in (None, "none") else ""
            titles[k] = f"direction {i + 1} ({d['kind']}{norm})"
    out = []
    for s in specs:
        if s.kind == "surface":  # plots_of titles an axis without a declared label by its array's name
            s = dataclasses.replace(s, xlabel=titles.get(s.xlabel, s.xlabel), ylabel=titles.get(s.ylabel, s.ylabel))
        out.append(s)
    return out


def expand_run_dirs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Each path is a run directory, or a folder whose subfolders are run directories."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and not (p / "config.json").is_file():
            subs = sorted(d for d in p.iterdir() if d.is_dir() and (d / "config.json").is_file())
            if subs:
                out += subs
                continue
        out.append(p)
    return out
