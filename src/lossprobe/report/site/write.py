"""Writing a site: the output folder's checks and manifest, the assets, and every page, atomically.

``build_site(run_dirs, out)`` writes::

    out/index.html                 every run: study/kind, date, key numbers, status
    out/runs/<slug>/index.html     one run: summary, interactive plots, report, figures,
                                   configuration, files, environment
    out/runs/<slug>/files/...      copies of the run's files (JSON, arrays, figures, report.md;
                                   not checkpoints), so the links work wherever the folder goes
    out/compare/<kind>.html        two or more runs of the same kind side by side
    out/assets/                    plotly.min.js (bundled: no network needed), site.css, site.js
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Iterable

import plotly

from lossprobe.errors import UserError
from lossprobe.report.site.load import Run, expand_run_dirs, load_run
from lossprobe.report.site.markup import ASSETS, slugify
from lossprobe.report.site.pages import render_compare, render_index, render_run
from lossprobe.results import atomic
from lossprobe.results.store import FolderLock, _foreign, write_json

SITE_MARKER = ".lossprobe-site"


def _plotly_source() -> Path:
    src = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not src.is_file():
        raise UserError(f"plotly.min.js not found in the plotly package ({src}); reinstall plotly")
    return src


def _read_manifest(out: Path) -> tuple[list[str], dict[str, str] | None]:
    """Files (site-relative POSIX paths) that an earlier `lossprobe report` wrote into `out`, and
    the SHA-256 of each as written (None for a manifest from before the digests)."""
    try:
        m = json.loads((out / SITE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return [], {}  # damaged: delete nothing, overwrite nothing
    files = m.get("files") if isinstance(m, dict) else None
    files = [f for f in files if isinstance(f, str)] if isinstance(files, list) else []
    digests = m.get("sha256") if isinstance(m, dict) else None
    if digests is None:
        return files, None
    return files, {k: v for k, v in digests.items() if isinstance(k, str) and isinstance(v, str)} \
        if isinstance(digests, dict) else {}


def _digest(f: Path) -> str | None:
    """SHA-256 of a regular file (None for anything else)."""
    if f.is_symlink() or not f.is_file():
        return None
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _ours(out: Path, rel: str, digests: dict[str, str] | None) -> bool:
    """Whether out/rel holds what lossprobe wrote there (its digest matches the manifest's);
    with a manifest from before the digests, whether it is listed (the old rule)."""
    f = _inside(out, rel)
    if f is None:
        return False
    if digests is None:
        return True
    return rel in digests and _digest(f) == digests[rel]


def _write_manifest(out: Path, files: Iterable[str], digests: dict[str, str]) -> None:
    files = sorted(set(files))
    write_json(out / SITE_MARKER, {"written_by": "lossprobe report; rebuilt in place on each run, and only the files "
                                                 "listed here, holding what it wrote, are ever replaced or removed",
                                   "files": files, "sha256": {f: digests[f] for f in files if f in digests}})


def _inside(out: Path, rel: str) -> Path | None:
    """out/rel if it stays inside `out` (no '..', no absolute path), else None."""
    if not rel or rel.startswith("/") or ".." in rel.split("/"):
        return None
    return out / rel


def _prepare_out(out: Path, run_paths: list[Path]) -> tuple[list[str], dict[str, str] | None]:
    """Check that `out` may hold the site; return the files an earlier build wrote there (and
    their digests, see `_read_manifest`)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory")
    for p in run_paths:
        if out.resolve() == p.resolve():
            raise UserError(f"--out {out} is the run directory itself; choose another folder, e.g. {out}/site")
    if not out.is_dir():
        return [], {}

    entries = _foreign(out)
    if entries and not (out / SITE_MARKER).is_file():
        shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
        raise UserError(f"--out {out} is not empty and is not a lossprobe site (it holds {shown}); lossprobe never "
                        "deletes files it did not write: choose another folder")
    return _read_manifest(out)


def build_site(run_dirs: Iterable[str | os.PathLike], out: str | os.PathLike, warn=None) -> Path:
    """Build the static site for `run_dirs` into folder `out`; returns the path of index.html.

    A folder of run directories is expanded. `out` must be empty, new, or a site built
    before: it is then rebuilt in place, and of its old files only those an earlier build
    wrote (listed in `out/.lossprobe-site`) and this one does not are removed. One process
    at a time writes a site (its lock). Raises UserError for a path that is not a run directory.
    `warn(run_path, problem)` is told of each problem a run has (a damaged file, an array file
    not opened); the pages show them in any case.
    """
    out = Path(out)
    paths = expand_run_dirs(run_dirs)
    if not paths:
        raise UserError("no run directories given")
    runs = [load_run(p, exclude=[out]) for p in paths]  # every path checked before `out` is touched
    for r in runs:
        for problem in r.problems if warn is not None else ():
            warn(r.path, problem)
    _prepare_out(out, paths)
    lock = FolderLock(out)
    try:
        old_files, digests = _prepare_out(out, paths)  # again, now that no other process can write it
        return _build(runs, out, old_files, digests)
    finally:
        lock.release()


def _build(runs: list[Run], out: Path, old_files: list[str], digests: dict[str, str] | None) -> Path:
    used: set[str] = set()
    for r in runs:
        base = slugify(r.path.name if r.path.name not in ("", ".") else r.path.resolve().name)
        slug, k = base, 2
        while slug in used:
            slug, k = f"{base}-{k}", k + 1
        used.add(slug)
        r.slug = slug
    runs.sort(key=lambda r: (r.kind, r.started or "", r.slug))
    kinds: dict[str, list[Run]] = {}
    for r in runs:
        kinds.setdefault(r.kind, []).append(r)
    comparisons = {k: f"compare/{slugify(k)}.html" for k, rs in kinds.items() if len(rs) >= 2}

    planned = ["index.html", "assets/plotly.min.js", "assets/site.css", "assets/site.js"]
    for r in runs:
        planned += [f"runs/{r.slug}/index.html"] + [f"runs/{r.slug}/files/{rel}" for rel, _ in r.files]
    planned += list(comparisons.values())
    # a file of the user's where the site puts one of its own is never overwritten
    for rel in planned:
        f = out / rel
        if (f.exists() or f.is_symlink()) and not _ours(out, rel, digests):
            raise UserError(f"--out {out} holds {rel}, which lossprobe did not write (or which changed since): it "
                            "would be overwritten; choose another folder")
    kept = dict(digests or {})
    # listed before anything is written, so that a build killed half-way leaves nothing unaccounted for
    _write_manifest(out, set(old_files) | set(planned), kept)

    plotly_js = _plotly_source()
    dst = out / "assets" / "plotly.min.js"
    if not (dst.is_file() and not dst.is_symlink() and dst.stat().st_size == plotly_js.stat().st_size):
        atomic.copy_file(plotly_js, dst)  # 4.6 MB: copied again only when it changed
    for name in ("site.css", "site.js"):
        atomic.copy_file(ASSETS / name, out / "assets" / name)
    for r in runs:
        d = out / "runs" / r.slug
        for rel, _ in r.files:
            atomic.copy_file(r.path / rel, d / "files" / rel)
        cmp = f"../../{comparisons[r.kind]}" if r.kind in comparisons else None
        atomic.write_text(d / "index.html", render_run(r, cmp))
    for k, link in comparisons.items():
        atomic.write_text(out / link, render_compare(k, kinds[k]))
    index = out / "index.html"
    atomic.write_text(index, render_index(runs, comparisons))
    # remove what an earlier build wrote and this one did not (never anything else, nor a file changed since)
    keep = set(planned)
    for rel in sorted(set(old_files) - keep):
        f = _inside(out, rel)
        if f is not None and f.is_file() and not f.is_symlink() and _ours(out, rel, digests):
            try:
                f.unlink()
            except OSError:
                continue
            parent = f.parent
            while parent != out and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
    _write_manifest(out, keep, {rel: d for rel in keep if (d := _digest(out / rel)) is not None})
    return index


def build_run_site(run_dir: str | os.PathLike) -> Path | None:
    """Build <run_dir>/site for one finished run; never raises (a study must not fail over its web page)."""
    try:
        return build_site([run_dir], Path(run_dir) / "site")
    except Exception as e:  # noqa: BLE001 - the study's results are already saved
        print(f"lossprobe: warning: could not build the report site in {run_dir}/site ({e})", file=sys.stderr)
        return None
