"""The report site: every run directory as a static, self-contained HTML page.

``build_site(run_dirs, out)`` writes::

    out/index.html                 every run: study/kind, date, key numbers, status
    out/runs/<slug>/index.html     one run: summary, interactive plots, report, figures,
                                   configuration, files, environment
    out/runs/<slug>/files/...      copies of the run's files (JSON, arrays, figures, report.md;
                                   not checkpoints), so the links work wherever the folder goes
    out/compare/<kind>.html        two or more runs of the same kind side by side
    out/assets/                    plotly.min.js (bundled: no network needed), site.css, site.js

Everything is derived from the files of a run directory (see `lossprobe.store`), so runs of
any study or command render: config.json and summary.json as tables, every figure in
figures/ with alt text from the captions in report.md, report.md itself (escaped, then a
small Markdown subset converted), and plotly plots for arrays it recognises:

* curves: in any .npz, a 1-D x array (alphas, sigmas, epsilons, steps, ...) and the 1-D
  arrays of the same length, grouped by the prefix before the first '_' (loss_train and
  loss_test share a plot);
* 2-D surfaces: the 2-D arrays (``loss`` first) whose axes the producer declared in the
  .npz (`lossprobe.store.save_arrays(grids=...)`: rows -> plotly y, columns -> x, with its
  axis labels); in files without a declaration (older runs, other programs), a 2-D array
  whose two axes match 1-D coordinate arrays by length (rows: Z.shape[0], columns:
  Z.shape[1]; arrays named x/y go to the x/y axes), a guess that cannot tell the axes of a
  square grid apart. Drawn as a rotatable 3-D surface and as a contour map;
* learning curves: history*.json files as written by `lossprobe.train.History.to_dict`.

All text from a run (names, notes, config values, report.md) is HTML-escaped; inline
figure data is JSON with '<' escaped, so a ``</script>`` inside it cannot end the element.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
import posixpath
import re
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import quote

import numpy as np

from ..errors import UserError
from ..store import GRIDS_KEY, grids_of

ASSETS = Path(__file__).with_name("site_assets")
SITE_MARKER = ".lossprobe-site"
MAX_COPY_BYTES = 64 * 2**20  # larger files are listed, not copied into the site
MAX_LOAD_BYTES = 32 * 2**20  # larger .npz files are not opened for plots
SKIP_DIRS = {"checkpoints", "site", "__pycache__"}  # top-level folders of a run never copied
MAX_PLOTS = 16  # per page, so a run with hundreds of arrays still opens quickly
MAX_TRACES = 16
# Every page's Content-Security-Policy: scripts, styles, images and fonts from the site itself
# only (plus the inline styles and data:/blob: images plotly draws with); no connections, frames,
# plugins or forms. So a page never requests anything outside the site, whatever a run wrote.
SITE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
            "font-src 'self' data:; worker-src 'self' blob:; connect-src 'none'; object-src 'none'; frame-src 'none'; "
            "base-uri 'none'; form-action 'none'")

# Greyscale-readable trace styles: line dash and marker differ, not only the colour.
COLORS = ("#000000", "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
SYMBOLS = ("circle", "square", "triangle-up", "diamond", "x", "cross", "star")
# 1-D arrays that are an x axis for the other 1-D arrays of the same length.
X_NAMES = ("alphas", "alpha", "ts", "t", "sigmas", "sigma", "noise", "noise_levels", "levels", "epsilons",
           "epsilon", "eps", "radii", "radius", "rhos", "rho", "steps", "step", "epochs", "epoch", "iterations",
           "distances", "distance", "lrs", "lr", "widths", "width", "x", "xs")
X_LABELS = {"alphas": "α (0 = first model, 1 = second model)", "alpha": "α",
            "sigmas": "noise σ (relative to the weight norm)", "epsilons": "ε", "epochs": "epoch"}


# --- escaping and small helpers ----------------------------------------------------------
def esc(text: Any) -> str:
    """HTML-escape any value's text (quotes too, so it is safe inside attributes)."""
    return html.escape(str(text), quote=True)


def json_for_script(obj: Any) -> str:
    """JSON safe inside <script type="application/json">: no '<', '>' or '&' characters."""
    s = json.dumps(obj, allow_nan=False, separators=(",", ":"))
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def href(rel: str) -> str:
    """A relative URL for a site-relative POSIX path (percent-encoded, then attribute-escaped)."""
    return esc(quote(rel, safe="/#"))


def fmt(v: Any) -> str:
    """Compact text for a summary value (floats to 4 significant digits)."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt(x) for x in v)
    return str(v)


def _finite(a: np.ndarray) -> list:
    """Array to a JSON-able list with NaN/inf as None (plotly draws gaps)."""
    a = np.asarray(a, dtype=np.float64)
    return [None if not math.isfinite(x) else x for x in a.ravel().tolist()] if a.ndim <= 1 else [
        _finite(row) for row in a]


def flatten(d: Any, prefix: str = "", max_list: int = 8) -> list[tuple[str, Any, str]]:
    """Leaves of nested dicts as (dotted key, value, note). Lists longer than `max_list`
    (or of non-scalars) keep their value but get a note such as '41 values' to show instead."""
    out: list[tuple[str, Any, str]] = []
    if isinstance(d, dict):
        for k, v in d.items():
            out += flatten(v, f"{prefix}.{k}" if prefix else str(k), max_list)
    elif isinstance(d, (list, tuple)):
        scalars = all(isinstance(x, (int, float, str, bool)) or x is None for x in d)
        if scalars and len(d) <= max_list:
            out.append((prefix, list(d), ""))
        else:
            out.append((prefix, d, f"{len(d)} values"))
    else:
        out.append((prefix, d, ""))
    return out


def _read_json(path: Path) -> tuple[Any, str | None]:
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


def _date(iso: str | None) -> str:
    if not iso:
        return ""
    try:
        t = _dt.datetime.fromisoformat(str(iso))
    except ValueError:
        return str(iso)
    if t.tzinfo is not None:
        t = t.astimezone(_dt.timezone.utc)
        return t.strftime("%Y-%m-%d %H:%M UTC")
    return t.strftime("%Y-%m-%d %H:%M")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def slugify(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return s[:80] or "run"


# --- Markdown: markdown-it-py with raw HTML off; links and images checked one by one --------
_SAFE_SCHEMES = ("http://", "https://", "mailto:")


def _markdown_parser():
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")
    md.validateLink = lambda url: True  # every link becomes a token; _check_links decides what is kept
    return md


def markdown_to_html(text: str, resolve: Callable[[str], str | None] = lambda url: None,
                     top_level: int = 3) -> str:
    """CommonMark (with pipe tables) to HTML by markdown-it-py, with raw HTML shown as text.

    Headings are shifted so that '#' becomes <h`top_level`>, never skipping a level.
    `resolve(url)` maps a relative URL to a site URL, or None when the target is not in the
    site. Links: http(s) and mailto are kept (rel="noopener noreferrer"), '#anchors' too,
    relative links when `resolve` finds them; any other link (javascript:, data:, file:,
    '//host', a file not in the site) shows its text without a link. Images: only files of
    the site are shown; a remote image (or data:, javascript:, ...) is replaced by a note, so
    a page never loads anything from outside the site.
    """
    from markdown_it.token import Token

    md = _markdown_parser()
    tokens = md.parse(str(text).replace("\x00", ""))
    last_level, open_tags = top_level - 1, []
    for tok in tokens:
        if tok.type == "heading_open":
            n = int(tok.tag[1])
            level = max(top_level, min(6, n + top_level - 1, last_level + 1))
            last_level = level
            tok.tag = f"h{level}"
            open_tags.append(tok.tag)
        elif tok.type == "heading_close":
            tok.tag = open_tags.pop()
        elif tok.type == "th_open":
            tok.attrSet("scope", "col")
        elif tok.type == "inline" and tok.children:
            tok.children = _check_links(tok.children, resolve, Token)
    rules = md.renderer.rules
    rules["table_open"] = lambda *a: '<div class="table-wrap"><table>\n'
    rules["table_close"] = lambda *a: "</table></div>\n"
    return md.renderer.render(tokens, md.options, {}).strip()


def _check_links(children: list, resolve: Callable[[str], str | None], Token) -> list:
    out, drop_close = [], []
    for t in children:
        if t.type == "link_open":
            url = _safe_url(t.attrGet("href") or "", resolve)
            drop_close.append(url is None)
            if url is None:
                continue  # the text stays, without the link
            t.attrs = {"href": url}
            if url.lower().startswith(("http://", "https://", "mailto:")):
                t.attrSet("rel", "noopener noreferrer")
        elif t.type == "link_close":
            if drop_close and drop_close.pop():
                continue
        elif t.type == "image":
            src = t.attrGet("src") or ""
            url = _safe_url(src, resolve)
            alt = "".join(c.content for c in (t.children or [])) or t.content
            if url is None or url.lower().startswith(_SAFE_SCHEMES) or url.startswith("#"):
                note = Token("html_inline", "", 0)
                what = "remote image not shown" if src.lower().startswith(("http:", "https:", "//")) else \
                    "figure not in this site"
                note.content = f'<span class="muted">[{esc(what)}: {esc(alt or src)}]</span>'
                out.append(note)
                continue
            t.attrs = {"src": url, "alt": alt, "loading": "lazy"}  # alt is rendered from t.children
        out.append(t)
    return out


def _safe_url(raw: str, resolve: Callable[[str], str | None]) -> str | None:
    from urllib.parse import unquote

    url = raw.strip()
    low = url.lower()
    if low.startswith(_SAFE_SCHEMES):
        return url
    if re.match(r"^[a-z][a-z0-9+.-]*:", low) or url.startswith(("//", "\\", "/\\")):
        return None  # javascript:, data:, file:, protocol-relative ...
    if url.startswith("#"):
        return url
    return resolve(unquote(url))


def figure_captions(report_md: str) -> dict[str, str]:
    """{figure path as written in report.md: caption} from ``![caption](path)`` lines."""
    caps = {}
    for m in re.finditer(r"!\[([^\]]*)\]\(\s*<?([^)\s>]+)>?", report_md or ""):
        caps[posixpath.normpath(m.group(2))] = m.group(1).strip()
    return caps


# --- reading a run directory -----------------------------------------------------------------
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
    axis_labels: dict[str, dict[str, str]] = field(default_factory=dict)  # npz -> {array name: axis title}
    grids: dict[str, dict[str, dict]] = field(default_factory=dict)  # npz -> declared axes (store.grids_of)
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
    cfg, err = _read_json(p / "config.json")
    if err or not isinstance(cfg, dict):
        raise UserError(f"{p}/config.json is not a JSON object; is {p} a lossprobe run directory?")
    run.config = cfg
    for name, attr in (("summary.json", "summary"), ("status.json", "status"), ("environment.json", "environment")):
        obj, err = _read_json(p / name)
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
                run.not_copied.append((rel, n, f"larger than {_size(MAX_COPY_BYTES)}"))
            else:
                run.files.append((rel, n))
    ck = p / "checkpoints"
    if ck.is_dir():
        n_files = sum(1 for f in ck.rglob("*") if f.is_file())
        size = sum(f.stat().st_size for f in ck.rglob("*") if f.is_file())
        run.not_copied.append(("checkpoints/", size, f"{n_files} checkpoint files stay in the run directory"))
    for rel, n in run.files:
        if rel.endswith(".npz") and n <= MAX_LOAD_BYTES:
            try:
                with np.load(p / rel, allow_pickle=False) as f:
                    arrays = {k: f[k] for k in f.files}
                run.grids[rel] = grids_of(arrays)
                arrays.pop(GRIDS_KEY, None)
                run.arrays[rel] = arrays
                run.axis_labels[rel] = _axis_labels(p / (rel[:-4] + ".json"), run.arrays[rel])
            except Exception as e:  # a damaged array file must not stop the site
                run.problems.append(f"{rel} could not be read ({type(e).__name__})")
        m = re.fullmatch(r"history_?(.*)\.json", rel)
        if m:
            h, err = _read_json(p / rel)
            if isinstance(h, dict) and "epoch" in h:
                label = m.group(1).replace("seed", "seed ").replace("_", " ").strip() or "run"
                run.histories[label] = h
    return run


def _axis_labels(meta_file: Path, arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """Axis titles for coords_0, coords_1, ... from the JSON saved next to an .npz (as
    `lossprobe.surface.Surface.save` does): meta.axis_labels, else the direction kinds."""
    if not meta_file.is_file():
        return {}
    info, _ = _read_json(meta_file)
    meta = info.get("meta", info) if isinstance(info, dict) else {}
    if not isinstance(meta, dict):
        return {}
    coords = sorted(k for k in arrays if re.fullmatch(r"coords_\d+", k))
    labels = meta.get("axis_labels")
    if isinstance(labels, list) and len(labels) == len(coords):
        return {k: str(v) for k, v in zip(coords, labels)}
    dirs = meta.get("directions")
    out = {}
    if isinstance(dirs, list) and len(dirs) == len(coords):
        for i, (k, d) in enumerate(zip(coords, dirs)):
            if isinstance(d, dict) and d.get("kind"):
                norm = f", {d['norm']}-normalised" if d.get("norm") not in (None, "none") else ""
                out[k] = f"direction {i + 1} ({d['kind']}{norm})"
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


# --- key numbers ----------------------------------------------------------------------------------
_SKIP_KEY = re.compile(r"(seconds?|time|timing|seeds?|alphas?|batch|epochs?|^lr$|version|grid|shape|^n_|^n$|count|"
                       r"^study$|^kind$|^model$|^points|^computed$|non_finite|per_second|chunk|workers|threshold|every)", re.I)
_PRIORITY = ("barrier", "test_acc", "accuracy", "sharp", "eigen", "lambda", "trace", "gap", "flat", "distance",
             "loss", "error")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _headline_key(dicts: list[dict]) -> str | None:
    """The numeric key shared by all `dicts` that ranks first in _PRIORITY (test accuracy, loss, ...)."""
    common = [k for k in dicts[0] if all(_is_number(d.get(k)) for d in dicts) and not _SKIP_KEY.search(k)]
    ranked = sorted((rank, j, k) for j, k in enumerate(common)
                    if (rank := next((i for i, w in enumerate(_PRIORITY) if w in str(k).lower()), None)) is not None)
    return ranked[0][2] if ranked else None


def key_numbers(summary: Any, limit: int = 6) -> list[tuple[str, str]]:
    """The summary's headline numbers as (key, text), barriers, accuracies, sharpness ... first.

    A top-level value qualifies if it is a number, a list of up to 4 numbers ('a / b'), or
    a dict with 1 to 4 numbers ('train 0.76 · test 0.74'); bookkeeping keys (seconds,
    seeds, sizes) are left out.
    """
    if not isinstance(summary, dict):
        return []
    def small(v) -> bool:  # a number or up to 4 numbers
        return _is_number(v) or (isinstance(v, list) and 0 < len(v) <= 4 and all(map(_is_number, v)))

    def text(v) -> str:
        return fmt(v) if _is_number(v) else " / ".join(fmt(x) for x in v)

    items = []
    for order, (k, v) in enumerate(summary.items()):
        if _SKIP_KEY.search(str(k)):
            continue
        if small(v):
            shown, values = text(v), v if isinstance(v, list) else [v]
        elif isinstance(v, dict) and 0 < sum(map(small, v.values())) <= 4:
            # the direct numbers only (train/test, or per method); nested variants stay in the table
            shown = " · ".join(f"{sk} {text(x)}" for sk, x in v.items() if small(x))
            values = [y for x in v.values() if small(x) for y in (x if isinstance(x, list) else [x])]
        elif (isinstance(v, dict) and 2 <= len(v) <= 6 and all(isinstance(x, dict) for x in v.values())
              and (common := _headline_key([x for x in v.values()]))):
            # one number per entry (per optimiser, per variant): its most telling common key
            k = f"{k}.{common}"
            shown = " · ".join(f"{sk} {fmt(x[common])}" for sk, x in v.items())
            values = [x[common] for x in v.values()]
        else:
            continue
        low = str(k).lower()
        rank = next((i for i, word in enumerate(_PRIORITY) if word in low), len(_PRIORITY))
        if all(isinstance(y, int) for y in values):
            rank += len(_PRIORITY) + 1  # counts and settings after measured values
        items.append((rank, order, str(k), shown))
    items.sort()
    return [(k, t) for _, _, k, t in items[:limit]]


# --- plots (plotly figure specs as plain dicts) --------------------------------------------------
def _style(i: int) -> dict:
    return {"line": {"color": COLORS[i % len(COLORS)], "dash": DASHES[i % len(DASHES)], "width": 2},
            "marker": {"symbol": SYMBOLS[i % len(SYMBOLS)], "size": 6, "color": COLORS[i % len(COLORS)]}}


def _layout(title: str, xlabel: str, ylabel: str) -> dict:
    return {"title": {"text": title, "font": {"size": 15}}, "xaxis": {"title": {"text": xlabel}, "zeroline": False},
            "yaxis": {"title": {"text": ylabel}, "zeroline": False}, "hovermode": "closest",
            "margin": {"l": 70, "r": 20, "t": 50, "b": 60}, "legend": {"orientation": "h", "y": -0.2},
            "font": {"family": "system-ui, sans-serif"}, "paper_bgcolor": "#ffffff", "plot_bgcolor": "#ffffff"}


def _curve_trace(name: str, x: np.ndarray, y: np.ndarray, i: int, xname: str) -> dict:
    """A line; y [len(x)] or [len(x), k] (then the mean over k, with min-max error bars)."""
    y = np.asarray(y, dtype=np.float64)
    extra = {}
    if y.ndim == 2:
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows are gaps
                mean, lo, hi = np.nanmean(y, 1), np.nanmin(y, 1), np.nanmax(y, 1)
        extra = {"error_y": {"type": "data", "symmetric": False, "array": _finite(hi - mean),
                             "arrayminus": _finite(mean - lo), "thickness": 1}}
        name = f"{name} (mean of {y.shape[1]}, bars min–max)"
        y = mean
    return {"type": "scatter", "mode": "lines+markers", "name": name, "x": _finite(x), "y": _finite(y),
            "hovertemplate": f"{esc(xname)} %{{x:.4g}}<br>{esc(name)} %{{y:.5g}}<extra></extra>",
            **_style(i), **extra}


@dataclass
class Plot:
    """One interactive plot: a plotly spec plus the text around it."""

    title: str
    data: list
    layout: dict
    description: str
    surface: bool = False
    table: tuple[list[str], list[list[str]]] | None = None  # accessible data table (small curves only)
    key: str = ""  # identifies the same plot across runs (for comparisons)
    logy: bool = False  # offer a log-scale toggle for the y axis (curves)


def _is_num_1d(a: np.ndarray) -> bool:
    return a.ndim == 1 and a.size >= 2 and np.issubdtype(a.dtype, np.number) and not np.iscomplexobj(a)


METRIC_WORDS = ("loss", "accuracy", "acc", "error", "err", "sharpness", "barrier", "distance", "norm", "gap")


def _metric_of(name: str) -> tuple[str, str]:
    """('loss', 'aligned repair train') for 'aligned_repair_loss_train', ('loss barrier', 'naive test')
    for 'naive_loss_barrier_test': the metric words name the plot and the rest names the line;
    without a metric word the prefix before '_' names the plot."""
    tokens = name.split("_")
    metric = [t for t in tokens if t in METRIC_WORDS]
    if metric and len(tokens) > 1:
        rest = [t for t in tokens if t not in METRIC_WORDS]
        return " ".join(metric), " ".join(rest) or name
    head, _, tail = name.partition("_")
    return head, tail or name


def _is_x_name(name: str) -> bool:
    low = name.lower()
    return low in X_NAMES or re.fullmatch(r"(coords?|grid|axis)(_?\d+)?", low) is not None


def curve_groups(arrays: dict[str, np.ndarray],
                 grids: dict[str, dict] | None = None) -> list[tuple[str, str, dict[str, np.ndarray]]]:
    """[(x name, group name, {series name: y})]: arrays against an x array of the same length,
    one group per metric (loss_train, loss_test -> group 'loss', series 'train' and 'test').

    y is 1-D, or 2-D [len(x), k] / [k, len(x)] with k <= 64 repeats (seeds, pairs), drawn as
    the mean with min-max error bars. 2-D arrays whose both axes have coordinates are surfaces
    (`grids`: the file's declared axes, see `surface_axes`).
    """
    surfaces = surface_axes(arrays, grids)
    xs = [k for k in arrays if _is_x_name(k) and _is_num_1d(arrays[k])]
    used = set(xs)
    out = []
    for xk in xs:
        n = arrays[xk].size
        groups: dict[str, dict[str, np.ndarray]] = {}
        for k, a in arrays.items():
            if k in used or not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a) or a.dtype == bool:
                continue
            if a.ndim == 1 and a.size == n:
                y = a
            elif a.ndim == 2 and n in a.shape and k not in surfaces:
                y = a if a.shape[0] == n else a.T
                if y.shape[1] > 64 or y.shape[0] != n:
                    continue
            else:
                continue
            group, series = _metric_of(k)
            groups.setdefault(group, {})[series] = y
            used.add(k)
        out += [(xk, g, series) for g, series in groups.items()]
    return out


def surface_axes(arrays: dict[str, np.ndarray], grids: dict[str, dict] | None = None) -> dict[str, dict]:
    """{2-D array: {'rows': coordinate name, 'cols': coordinate name[, 'row_label', 'col_label']}}.

    The producer's declaration (`grids`, as `lossprobe.store.grids_of` reads it) when the file
    has one: then only the declared arrays are surfaces. Otherwise guessed per array from
    names and lengths (`_surface_axes`), for run directories written before declarations."""
    if grids:
        return {z: g for z, g in grids.items() if z in arrays}
    out = {}
    for k, a in arrays.items():
        if a.ndim == 2:
            row, col = _surface_axes(arrays, k)
            if row is not None and col is not None:
                out[k] = {"rows": row, "cols": col}
    return out


def _surface_axes(arrays: dict[str, np.ndarray], zname: str) -> tuple[str | None, str | None]:
    """The guess: (row coordinate name, column coordinate name) for 2-D array `zname`, None
    where no 1-D array fits. Names x/y decide; else the first fitting array in the file is the
    row coordinate, so a square grid whose x comes first is drawn transposed."""
    m, n = arrays[zname].shape
    ones = [k for k in arrays if k != zname and _is_num_1d(arrays[k])]
    rows = [k for k in ones if arrays[k].size == m]
    cols = [k for k in ones if arrays[k].size == n]
    lower = {k: k.lower() for k in ones}
    ycand = [k for k in rows if lower[k].startswith("y") or lower[k].endswith("_y")]
    xcand = [k for k in cols if lower[k].startswith("x") or lower[k].endswith("_x")]
    if ycand and xcand:
        return ycand[0], xcand[0]
    row = rows[0] if rows else None
    col = next((k for k in cols if k != row), cols[0] if cols and m != n else None)
    return row, col


def surface_plots(rel: str, arrays: dict[str, np.ndarray], label: str = "",
                  axis_labels: dict[str, str] | None = None, grids: dict[str, dict] | None = None) -> list[Plot]:
    """3-D surface and contour plots for the 2-D arrays of one .npz (loss-like arrays first).
    z[i][j] is the value at (y[i], x[j]): rows go to plotly's y, columns to x."""
    axes = surface_axes(arrays, grids)
    twod = [k for k in arrays if k in axes and min(arrays[k].shape) >= 2
            and np.issubdtype(arrays[k].dtype, np.number) and not np.iscomplexobj(arrays[k])]
    losses = [k for k in twod if "loss" in k.lower()]
    chosen = losses or twod[:2]
    plots = []
    for zk in chosen[:3]:
        z = np.asarray(arrays[zk], dtype=np.float64)
        g = axes[zk]
        rk, ck = g["rows"], g["cols"]
        y, x = arrays[rk], arrays[ck]
        names = axis_labels or {}
        xl = g.get("col_label") or names.get(ck, ck)
        yl = g.get("row_label") or names.get(rk, rk)
        zl = zk.replace("_", " ")
        finite = z[np.isfinite(z)]
        rng = f"{finite.min():.4g} to {finite.max():.4g}" if finite.size else "no finite values"
        where = f"{label} · {rel}" if label else rel
        hover = f"{esc(xl)} %{{x:.4g}}<br>{esc(yl)} %{{y:.4g}}<br>{esc(zl)} %{{z:.5g}}<extra></extra>"
        surf = {"type": "surface", "x": _finite(x), "y": _finite(y), "z": _finite(z), "colorscale": "Viridis",
                "name": zl, "hovertemplate": hover, "colorbar": {"title": {"text": zl}},
                "contours": {"z": {"show": True, "usecolormap": False, "color": "#222", "width": 1,
                                   "project": {"z": False}}}}
        short = f"({rk}, {ck})"
        lay = _layout(f"{zl} over {short} — {where}", xl, yl)
        lay["scene"] = {"xaxis": {"title": {"text": xl}}, "yaxis": {"title": {"text": yl}},
                        "zaxis": {"title": {"text": zl}}, "camera": {"eye": {"x": 1.5, "y": -1.5, "z": 1.0}},
                        "aspectmode": "cube"}
        lay["margin"] = {"l": 10, "r": 10, "t": 50, "b": 10}
        desc = (f"Rotatable 3-D surface of the {z.shape[0]}×{z.shape[1]} array '{zk}' in {rel} "
                f"(values {rng}); drag to rotate, or use the buttons below.")
        plots.append(Plot(f"{zl}: 3-D surface ({rel})", [surf], lay, desc, surface=True, key=f"{rel}:{zk}:surface"))
        cont = {"type": "contour", "x": _finite(x), "y": _finite(y), "z": _finite(z), "colorscale": "Viridis",
                "name": zl, "hovertemplate": hover, "colorbar": {"title": {"text": zl}},
                "contours": {"coloring": "heatmap", "showlabels": True,
                             "labelfont": {"color": "#ffffff", "size": 11}},
                "line": {"color": "#000000", "width": 1}}
        data = [cont]
        if finite.size and x.min() <= 0 <= x.max() and y.min() <= 0 <= y.max():
            data.append({"type": "scatter", "mode": "markers", "x": [0], "y": [0], "name": "origin (0, 0)",
                         "marker": {"symbol": "x", "size": 12, "color": "#ffffff", "line": {"color": "#000", "width": 2}},
                         "hovertemplate": "origin (0, 0)<extra></extra>"})
        lay2 = _layout(f"{zl} contours over {short} — {where}", xl, yl)
        desc2 = f"Contour map of the same array '{zk}' with labelled levels (values {rng})."
        plots.append(Plot(f"{zl}: contour map ({rel})", data, lay2, desc2, key=f"{rel}:{zk}:contour"))
    return plots


def curve_plots(rel: str, arrays: dict[str, np.ndarray], label: str = "",
                axis_labels: dict[str, str] | None = None, grids: dict[str, dict] | None = None) -> list[Plot]:
    plots = []
    for xk, group, series in curve_groups(arrays, grids):
        x = arrays[xk]
        xl = (axis_labels or {}).get(xk) or X_LABELS.get(xk, xk)
        data = [_curve_trace(s, x, y, i, xk) for i, (s, y) in enumerate(list(series.items())[:MAX_TRACES])]
        yl = group.replace("_", " ")
        where = f" — {label}" if label else ""
        along = "along the path α" if xk in ("alphas", "alpha") else f"against {xk}"
        title = f"{yl[:1].upper()}{yl[1:]} {along} ({rel}){where}"
        lay = _layout(title, xl, yl)
        for xv in (0, 1) if xk in ("alphas", "alpha") else ():
            lay.setdefault("shapes", []).append(
                {"type": "line", "x0": xv, "x1": xv, "yref": "paper", "y0": 0, "y1": 1,
                 "line": {"color": "#888", "dash": "dot", "width": 1}})
        names = list(series)[:MAX_TRACES]
        table = None
        if x.size <= 200:
            header = [xk] + names
            ys = {s: np.asarray(series[s], dtype=np.float64) for s in names}
            ys = {s: (np.nanmean(y, 1) if y.ndim == 2 and np.isfinite(y).any() else y) for s, y in ys.items()}
            rows = [[fmt(float(x[j]))] + [fmt(float(np.ravel(ys[s])[j])) for s in names] for j in range(x.size)]
            table = (header, rows)
        desc = (f"{', '.join(names)} at {x.size} values of {xk} from {fmt(float(np.nanmin(x)))} "
                f"to {fmt(float(np.nanmax(x)))}; hover for values.")
        plots.append(Plot(title, data, lay, desc, table=table, key=f"{rel}:{xk}:{group}", logy=True))
    return plots


def history_plots(histories: dict[str, dict], label_prefix: str = "") -> list[Plot]:
    """Learning curves (loss and accuracy per epoch) from History.to_dict() files."""
    plots = []
    for metric in ("loss", "accuracy"):
        data = []
        i = 0
        for label, h in histories.items():
            ep = h.get("epoch")
            for split in ("train", "val"):
                y = h.get(f"{split}_{metric}")
                if not isinstance(ep, list) or not isinstance(y, list) or len(y) != len(ep) or i >= MAX_TRACES:
                    continue
                yv = np.array([np.nan if v is None else v for v in y], dtype=float)
                name = f"{label_prefix}{label} {split}".strip()
                data.append(_curve_trace(name, np.asarray(ep, dtype=float), yv, i, "epoch"))
                i += 1
        if data:
            what = "mean cross-entropy loss" if metric == "loss" else "accuracy (fraction correct)"
            title = f"Learning curves: {metric} per epoch"
            plots.append(Plot(title, data, _layout(title, "epoch (0 = before training)", what),
                              f"{metric} on the training and validation splits after each epoch, "
                              f"{len(histories)} training run(s); hover for values.", key=f"history:{metric}",
                              logy=metric == "loss"))
    return plots


def overlay(members: list[tuple[str, Plot]], title: str, description: str, key: str = "") -> Plot:
    """One plot with the lines of several plots of the same quantity, named '<label> · <line>'."""
    first = members[0][1]
    data, i = [], 0
    for label, p in members:
        for t in p.data:
            if i >= MAX_TRACES:
                break
            t = {**t, "name": f"{label} · {t['name']}", **_style(i)}
            t["hovertemplate"] = t["hovertemplate"].replace("<br>", f"<br>{esc(label)} · ", 1)
            data.append(t)
            i += 1
    lay = {**first.layout, "title": {"text": title, "font": {"size": 15}}}
    return Plot(title, data, lay, description, key=key or first.key, logy=first.logy)


def _signature(arrays: dict[str, np.ndarray]) -> tuple:
    import hashlib

    h = hashlib.sha1()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.dtype}:{a.shape};".encode())
        h.update(a.tobytes())
    return (h.hexdigest(),)


MAX_SURFACE_FILES = 3  # per run page; the others stay in the linked files


def run_plots(run: Run) -> tuple[list[Plot], int]:
    """The interactive plots of a run page, and how many were left out (page budget)."""
    # array files in the order the run wrote them (the study's own order, e.g. the straight
    # line before the aligned paths), then learning curves, then surfaces
    def written(rel: str) -> float:
        try:
            return (run.path / rel).stat().st_mtime
        except OSError:
            return 0.0

    order, seen = [], set()
    for rel in sorted(run.arrays, key=lambda rel: (rel.count("/"), written(rel), rel)):
        sig = _signature(run.arrays[rel])
        if sig not in seen:  # the same arrays saved twice (e.g. a copy for resuming) plot once
            seen.add(sig)
            order.append(rel)
    # the same curve in several files (one file per optimiser, say) is one plot with all lines
    by_key: dict[str, list[tuple[str, Plot]]] = {}
    for rel in order:
        for p in curve_plots(rel, run.arrays[rel], axis_labels=run.axis_labels.get(rel), grids=run.grids.get(rel)):
            by_key.setdefault(p.key.split(":", 1)[1], []).append((rel, p))
    plots = []
    for k, members in by_key.items():
        if len(members) == 1:
            plots.append(members[0][1])
            continue
        labels = [posixpath.basename(rel).removesuffix(".npz") for rel, _ in members]
        first = members[0][1]
        title = first.title.split(" (")[0] + f" ({len(members)} files: {', '.join(labels)})"
        plots.append(overlay([(lab, p) for lab, (_, p) in zip(labels, members)], title,
                             f"The same quantity from {len(members)} array files, one line per file and series; "
                             "hover for values.", key=k))
    plots += history_plots(run.histories)
    n_surface_files, omitted = 0, 0
    for rel in order:
        sp = surface_plots(rel, run.arrays[rel], axis_labels=run.axis_labels.get(rel), grids=run.grids.get(rel))
        if sp and n_surface_files >= MAX_SURFACE_FILES:
            omitted += len(sp)
            continue
        n_surface_files += bool(sp)
        plots += sp
    omitted += max(0, len(plots) - MAX_PLOTS)
    return plots[:MAX_PLOTS], omitted


# --- HTML pieces ------------------------------------------------------------------------------------
def _page(title: str, body: str, root: str, nav: str = "", plots: bool = False) -> str:
    from .. import __version__

    tpl = string.Template((ASSETS / "page.html").read_text(encoding="utf-8"))
    scripts = ""
    if plots:
        scripts = (f'<script src="{root}assets/plotly.min.js"></script>\n'
                   f'<script src="{root}assets/site.js"></script>')
    return tpl.substitute(title=esc(title), root=root, head="", nav=nav, body=body, scripts=scripts, csp=esc(SITE_CSP),
                          version=esc(__version__),
                          built=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def _badge(state: str, run: Run | None = None) -> str:
    extra = ""
    if run is not None and state == "incomplete" and run.status:
        done = run.status.get("done") or []
        extra = f' title="stages done: {esc(", ".join(map(str, done)) or "none")}"'
    return f'<span class="badge {esc(state)}"{extra}>{esc(state)}</span>'


def _kv_table(rows: list[tuple[str, str]], caption: str, headers=("key", "value"), raw_values=False) -> str:
    body = "".join(f'<tr><th scope="row">{esc(k)}</th><td>{v if raw_values else esc(v)}</td></tr>' for k, v in rows)
    return (f'<div class="table-wrap"><table><caption>{esc(caption)}</caption><thead><tr>'
            f'<th scope="col">{esc(headers[0])}</th><th scope="col">{esc(headers[1])}</th></tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _plot_html(plot: Plot, pid: str) -> str:
    desc_id = f"{pid}-desc"
    controls = [("reset", "Reset view")]
    if plot.surface:
        controls = [("left", "Rotate left"), ("right", "Rotate right"), ("top", "View from above"),
                    ("reset", "Reset view")]
    elif plot.logy:
        controls.append(("logy", "Log scale (y)"))
    controls.append(("png", "Save as PNG"))
    buttons = "".join(
        f'<button type="button" data-action="{a}" data-target="{pid}"'
        + (' aria-pressed="false"' if a == "logy" else "") + f">{esc(t)}</button>"
        for a, t in controls)
    spec = {"data": plot.data, "layout": plot.layout, "filename": slugify(plot.title)}
    table = ""
    if plot.table:
        header, rows = plot.table
        th = "".join(f'<th scope="col">{esc(h)}</th>' for h in header)
        trs = "".join("<tr>" + "".join(f'<td class="num">{esc(c)}</td>' for c in r) + "</tr>" for r in rows)
        table = (f'<details><summary>Values as a table</summary><div class="table-wrap"><table>'
                 f"<caption>{esc(plot.title)}</caption><thead><tr>{th}</tr></thead><tbody>{trs}</tbody>"
                 f"</table></div></details>")
    cls = "plot surface" if plot.surface else "plot"
    return (f'<section class="plot-block" aria-labelledby="{pid}-h">'
            f'<h3 id="{pid}-h">{esc(plot.title)}</h3>'
            f'<p class="plot-desc" id="{desc_id}">{esc(plot.description)}</p>'
            f'<div class="controls" role="group" aria-label="Plot controls">{buttons}</div>'
            f'<div id="{pid}" class="{cls}" data-plot="{pid}-data" role="figure" aria-label="{esc(plot.title)}" '
            f'aria-describedby="{desc_id}"></div>'
            f'<script type="application/json" id="{pid}-data">{json_for_script(spec)}</script>'
            f"{table}</section>")


def _figure_html(run: Run, rel: str, caption: str, prefix: str) -> str:
    alt = caption or _fig_name(rel)
    svg = rel.rsplit(".", 1)[0] + ".svg"
    extra = f' · <a href="{href(prefix + svg)}">SVG</a>' if svg != rel and svg in run.copied else ""
    return (f'<figure><a href="{href(prefix + rel)}"><img src="{href(prefix + rel)}" alt="{esc(alt)}" loading="lazy">'
            f'</a><figcaption>{esc(caption or _fig_name(rel))} <span class="muted">({esc(rel)}{extra})</span>'
            f"</figcaption></figure>")


def _fig_name(rel: str) -> str:
    stem = posixpath.basename(rel).rsplit(".", 1)[0]
    return "Figure: " + stem.replace("_", " ").replace("-", " ")


def _captions(run: Run) -> dict[str, str]:
    caps = figure_captions(run.report_md)
    out = {}
    for path, cap in caps.items():
        out[path] = cap
        stem = path.rsplit(".", 1)[0]
        for ext in (".png", ".svg", ".jpg", ".jpeg"):
            out.setdefault(stem + ext, cap)
    return out


def _value_cell(v, note: str) -> str:
    return f'<span class="muted">{esc(note)}</span>' if note else esc(fmt(v))


def _array_note(arrays: dict[str, np.ndarray] | None) -> str:
    if arrays is None:
        return ""
    parts = [f"{k} {'×'.join(map(str, a.shape)) or 'scalar'} {a.dtype}" for k, a in list(arrays.items())[:20]]
    more = f" and {len(arrays) - 20} more" if len(arrays) > 20 else ""
    return "arrays: " + "; ".join(parts) + more


def render_run(run: Run, compare_href: str | None) -> str:
    root = "../../"
    prefix = "files/"
    caps = _captions(run)
    b: list[str] = []
    when = _date(run.started)
    b.append(f"<h1>{esc(run.name)}</h1>")
    sub = [f"<strong>{esc(run.kind)}</strong>", _badge(run.state, run)]
    if when:
        sub.append(f"started {esc(when)}")
    if run.finished:
        sub.append(f"finished {esc(_date(run.finished))}")
    if run.environment.get("resumed_from"):
        sub.append(f"resumed (first started {esc(_date(run.environment['resumed_from']))})")
    b.append('<p class="subtitle">' + " · ".join(sub) + f' · directory <code>{esc(run.path.name)}</code></p>')
    if run.note:
        b.append(f'<p class="note">{esc(run.note)}</p>')
    for problem in run.problems:
        b.append(f'<p class="note">Problem: {esc(problem)}</p>')
    if run.state == "incomplete":
        done = ", ".join(map(str, (run.status or {}).get("done") or [])) or "none"
        b.append(f'<p class="note">This run is not complete (stages done: {esc(done)}); '
                 "rerun its command to resume it. The page shows what exists so far.</p>")

    summary = run.summary if isinstance(run.summary, dict) else {}
    verdict = summary.get("verdict")
    keys = key_numbers(summary)
    b.append('<h2 id="summary">Summary</h2>')
    if isinstance(verdict, str) and verdict:
        b.append(f'<p class="verdict"><strong>Verdict:</strong> {esc(verdict)}</p>')
    if keys:
        b.append('<ul class="cards" aria-label="Key numbers">' + "".join(
            f'<li><span class="k">{esc(k)}</span><span class="v">{esc(v)}</span></li>' for k, v in keys) + "</ul>")
    if summary:
        rows = [(k, _value_cell(v, note)) for k, v, note in flatten(summary) if k != "verdict"]
        b.append(f"<details{'' if keys else ' open'}><summary>All {len(rows)} values in summary.json</summary>"
                 + _kv_table(rows, "summary.json (long arrays are in the linked files)", raw_values=True)
                 + "</details>")
    elif run.summary is not None:
        b.append(f"<pre><code>{esc(json.dumps(run.summary, indent=1)[:5000])}</code></pre>")
    else:
        b.append("<p>No summary.json yet.</p>")

    plots, omitted = run_plots(run)
    if plots:
        b.append('<h2 id="plots">Interactive plots</h2>')
        b.append("<p>Drag to zoom (2-D) or rotate (3-D), double-click to reset; hover for values. "
                 "The buttons do the same from the keyboard.</p>")
        b += [_plot_html(p, f"plot-{i + 1}") for i, p in enumerate(plots)]
        if omitted:
            b.append(f"<p>{omitted} more plot(s) of the run's arrays are left out to keep this page quick; "
                     'the arrays are under <a href="#files">Files</a>.</p>')

    shown: set[str] = set()
    if run.report_md.strip():
        def resolve(url: str) -> str | None:
            rel = posixpath.normpath(url.split("#")[0])
            if rel.startswith(("../", "/")) or rel == "..":
                return None
            if rel in run.copied:
                shown.add(rel)
                return quote(prefix + rel, safe="/")
            return None

        b.append('<h2 id="report">Report</h2>')
        b.append('<div class="report">' + markdown_to_html(run.report_md, resolve, top_level=3) + "</div>")
    figs = [f for f in run.figures() if f not in shown]
    if figs:
        b.append('<h2 id="figures">Figures</h2>' if not shown else '<h2 id="figures">More figures</h2>')
        b += [_figure_html(run, f, caps.get(f, ""), prefix) for f in figs]

    b.append('<h2 id="config">Configuration</h2>')
    rows = [(k, _value_cell(v, note)) for k, v, note in flatten(run.config, max_list=64)]
    b.append(_kv_table(rows, "config.json: everything needed to rerun this run", raw_values=True))

    b.append('<h2 id="files">Files</h2>')
    frows = []
    per_dir: dict[str, list[tuple[str, int]]] = {}
    for rel, n in run.files:
        per_dir.setdefault(posixpath.dirname(rel), []).append((rel, n))
    crowded = {d for d, fs in per_dir.items() if d and len(fs) > 8}  # e.g. resumable chunks
    for rel, n in run.files:
        d = posixpath.dirname(rel)
        if d in crowded:
            continue
        what = _array_note(run.arrays.get(rel)) if rel.endswith(".npz") else ""
        frows.append(f'<tr><th scope="row"><a href="{href(prefix + rel)}">{esc(rel)}</a></th>'
                     f'<td class="num">{esc(_size(n))}</td><td>{esc(what)}</td></tr>')
    for d in sorted(crowded):
        fs = per_dir[d]
        links = ", ".join(f'<a href="{href(prefix + rel)}">{esc(posixpath.basename(rel))}</a>' for rel, _ in fs)
        frows.append(f'<tr><th scope="row">{esc(d)}/</th><td class="num">{esc(_size(sum(n for _, n in fs)))}</td>'
                     f"<td><details><summary>{len(fs)} files</summary>{links}</details></td></tr>")
    for rel, n, why in run.not_copied:
        frows.append(f'<tr><th scope="row">{esc(rel)}</th><td class="num">{esc(_size(n))}</td>'
                     f"<td>not copied into the site: {esc(why)}</td></tr>")
    b.append('<div class="table-wrap"><table><caption>Raw files of the run (copies)</caption><thead><tr>'
             '<th scope="col">file</th><th scope="col">size</th><th scope="col">contents</th></tr></thead>'
             f'<tbody>{"".join(frows)}</tbody></table></div>')

    if run.environment:
        b.append('<h2 id="environment">Environment</h2>')
        env = dict(run.environment)
        cmd = env.pop("command", None)
        if isinstance(cmd, list):
            b.append("<p>Command:</p><pre><code>" + esc(" ".join(map(str, cmd))) + "</code></pre>")
        rows = [(k, _value_cell(v, note)) for k, v, note in flatten(env, max_list=16)]
        b.append(_kv_table(rows, "environment.json: versions, seeds and machine", raw_values=True))

    nav = f' <a href="{href(compare_href)}">Compare {esc(run.kind)} runs</a>' if compare_href else ""
    return _page(f"{run.name} — {run.kind} — lossprobe", "\n".join(b), root, nav=nav, plots=bool(plots))


def render_index(runs: list[Run], comparisons: dict[str, str]) -> str:
    b = ["<h1>lossprobe runs</h1>"]
    n_done = sum(r.state == "complete" for r in runs)
    b.append(f'<p class="subtitle">{len(runs)} run(s), {n_done} complete. Open a run for its summary, '
             "interactive plots, figures, configuration and raw files.</p>")
    b.append('<h2 id="runs">Runs</h2>')
    rows = []
    no_fig = '<span class="muted">no figures</span>'
    for r in runs:
        figs = r.figures()
        caps = _captions(r)
        thumb = ""
        if figs:
            f = next((x for x in figs if x.lower().endswith(".png")), figs[0])
            thumb = (f'<img class="thumb" src="{href(f"runs/{r.slug}/files/{f}")}" '
                     f'alt="{esc(caps.get(f) or _fig_name(f))}" loading="lazy">')
        keys = key_numbers(r.summary, limit=4)
        kn = ('<ul class="keynums">' + "".join(f"<li>{esc(k)}: <strong>{esc(v)}</strong></li>" for k, v in keys)
              + "</ul>") if keys else '<span class="muted">none yet</span>'
        rows.append(
            f'<tr><th scope="row"><a class="name" href="{href(f"runs/{r.slug}/index.html")}">{esc(r.name)}</a>'
            + (f'<br><span class="muted">{esc(r.note[:140])}</span>' if r.note else "")
            + f"</th><td>{esc(r.kind)}</td><td>{esc(_date(r.started)) or '—'}</td><td>{_badge(r.state, r)}</td>"
            f"<td>{kn}</td><td>{thumb or no_fig}</td></tr>")
    b.append('<div class="table-wrap"><table class="runs"><caption>Every run in this site</caption><thead><tr>'
             '<th scope="col">run</th><th scope="col">study or command</th><th scope="col">started</th>'
             '<th scope="col">status</th><th scope="col">key numbers</th><th scope="col">first figure</th>'
             f'</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')
    if comparisons:
        b.append('<h2 id="comparisons">Comparisons</h2><ul>')
        for kind, link in comparisons.items():
            n = sum(r.kind == kind for r in runs)
            b.append(f'<li><a href="{href(link)}">Compare the {n} {esc(kind)} runs</a>: key numbers side by side, '
                     "configuration differences, overlaid curves and figures</li>")
        b.append("</ul>")
    return _page("lossprobe runs", "\n".join(b), "")


def render_compare(kind: str, runs: list[Run]) -> str:
    root = "../"
    b = [f"<h1>Comparing {len(runs)} {esc(kind)} runs</h1>"]
    b.append('<p class="subtitle">Key numbers side by side, what differs in the configuration, '
             "the same curves overlaid and the same figures next to each other.</p>")
    b.append('<h2 id="runs">Runs</h2><ol>' + "".join(
        f'<li><a href="{href(f"../runs/{r.slug}/index.html")}">{esc(r.name)}</a> {_badge(r.state, r)} '
        f'<span class="muted">{esc(_date(r.started))}</span></li>' for r in runs) + "</ol>")
    head = "".join(f'<th scope="col">{esc(r.name)}</th>' for r in runs)

    def side_by_side(dicts: list[dict], caption: str, only_diff: bool) -> str:
        keys: list[str] = []
        vals: list[dict[str, tuple[str, str]]] = []  # key -> (text shown, exact value for the comparison)
        for d in dicts:
            flat = {k: (f"[{note}]" if note else fmt(v), json.dumps(v, sort_keys=True, default=str))
                    for k, v, note in flatten(d if isinstance(d, dict) else {})}
            vals.append(flat)
            keys += [k for k in flat if k not in keys]
        rows = []
        for k in keys:
            pairs = [v.get(k, ("—", "missing")) for v in vals]
            cells = [c for c, _ in pairs]
            differs = len({exact for _, exact in pairs}) > 1
            if only_diff and not differs:
                continue
            cls = ' class="differs"' if differs and not only_diff else ""
            rows.append(f'<tr{cls}><th scope="row">{esc(k)}</th>' + "".join(f"<td>{esc(c)}</td>" for c in cells)
                        + f"<td>{'differs' if differs else 'same'}</td></tr>")
        if not rows:
            return "<p>No differences.</p>"
        return (f'<div class="table-wrap"><table><caption>{esc(caption)}</caption><thead><tr><th scope="col">key</th>'
                f'{head}<th scope="col">same?</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>')

    b.append('<h2 id="numbers">Key numbers</h2>')
    summaries = [{k: v for k, v in (r.summary or {}).items() if k != "verdict"} if isinstance(r.summary, dict)
                 else {} for r in runs]
    verdicts = [(r, r.summary.get("verdict")) for r in runs if isinstance(r.summary, dict)]
    if any(v for _, v in verdicts):
        b.append("<ul>" + "".join(f"<li><strong>{esc(r.name)}</strong>: {esc(v)}</li>" for r, v in verdicts if v)
                 + "</ul>")
    b.append(side_by_side(summaries, "summary.json of each run (rows that differ are marked ≠)", only_diff=False))
    b.append('<h2 id="config-diff">Configuration differences</h2>')
    b.append(side_by_side([r.config for r in runs], "Only the configuration keys whose values differ",
                          only_diff=True))

    # the same curves overlaid: plots with the same key in two or more runs
    by_key: dict[str, list[tuple[Run, Plot]]] = {}
    for r in runs:
        for rel, arrays in r.arrays.items():
            for p in curve_plots(rel, arrays):
                by_key.setdefault(p.key, []).append((r, p))
    plots = []
    for key, members in by_key.items():
        if len(members) < 2:
            continue
        first = members[0][1]
        title = first.title.split(" (")[0] + f" — {len(members)} runs overlaid"
        plots.append(overlay([(r.name, p) for r, p in members], title,
                             f"{first.description} One line per run and series.", key=key))
    hist_runs = {f"{r.name} · {label}": h for r in runs for label, h in r.histories.items()}
    if len({k.split(" · ")[0] for k in hist_runs}) >= 2:
        plots += [Plot(p.title + " — all runs", p.data, p.layout, p.description, key=p.key, logy=p.logy)
                  for p in history_plots(hist_runs)]
    if plots:
        b.append('<h2 id="curves">Overlaid curves</h2>')
        b += [_plot_html(p, f"plot-{i + 1}") for i, p in enumerate(plots[:MAX_PLOTS])]

    figs: dict[str, list[Run]] = {}
    for r in runs:
        for f in r.figures():
            figs.setdefault(f, []).append(r)
    common = {f: rs for f, rs in figs.items() if len(rs) >= 2}
    if common:
        b.append('<h2 id="figures">Figures side by side</h2>')
        for f, rs in common.items():
            title = _fig_name(f).removeprefix("Figure: ")
            b.append(f'<h3>{esc(title[:1].upper() + title[1:])}</h3><div class="side-by-side">')
            for r in rs:
                cap = _captions(r).get(f) or _fig_name(f)
                src = f"../runs/{r.slug}/files/{f}"
                b.append(f'<figure><img src="{href(src)}" alt="{esc(r.name)}: {esc(cap)}" loading="lazy">'
                         f'<figcaption><a href="{href(f"../runs/{r.slug}/index.html")}">{esc(r.name)}</a>'
                         "</figcaption></figure>")
            b.append("</div>")
    return _page(f"Comparing {kind} runs — lossprobe", "\n".join(b), root, plots=bool(plots))


# --- the site ---------------------------------------------------------------------------------------
def _plotly_source() -> Path:
    try:
        import plotly
    except ImportError:
        raise UserError("the report site needs plotly: pip install plotly") from None
    src = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not src.is_file():
        raise UserError(f"plotly.min.js not found in the plotly package ({src}); reinstall plotly")
    return src


def _read_manifest(out: Path) -> list[str]:
    """Files (site-relative POSIX paths) that an earlier `lossprobe report` wrote into `out`."""
    try:
        m = json.loads((out / SITE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []  # a marker from before manifests, or damaged: delete nothing
    files = m.get("files") if isinstance(m, dict) else None
    return [f for f in files if isinstance(f, str)] if isinstance(files, list) else []


def _write_manifest(out: Path, files: Iterable[str]) -> None:
    from ..store import write_json

    write_json(out / SITE_MARKER, {"written_by": "lossprobe report; rebuilt in place on each run, and only the files "
                                                 "listed here are ever removed", "files": sorted(set(files))})


def _inside(out: Path, rel: str) -> Path | None:
    """out/rel if it stays inside `out` (no '..', no absolute path), else None."""
    if not rel or rel.startswith("/") or ".." in rel.split("/"):
        return None
    return out / rel


def _prepare_out(out: Path, run_paths: list[Path]) -> list[str]:
    """Check that `out` may hold the site; return the files an earlier build wrote there."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory")
    for p in run_paths:
        if out.resolve() == p.resolve():
            raise UserError(f"--out {out} is the run directory itself; choose another folder, e.g. {out}/site")
    if not out.is_dir():
        return []
    from ..store import _foreign

    entries = _foreign(out)
    if entries and not (out / SITE_MARKER).is_file():
        shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
        raise UserError(f"--out {out} is not empty and is not a lossprobe site (it holds {shown}); lossprobe never "
                        "deletes files it did not write: choose another folder")
    return _read_manifest(out)


def build_site(run_dirs: Iterable[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Build the static site for `run_dirs` into folder `out`; returns the path of index.html.

    A folder of run directories is expanded. `out` must be empty, new, or a site built
    before: it is then rebuilt in place, and of its old files only those an earlier build
    wrote (listed in `out/.lossprobe-site`) and this one does not are removed. One process
    at a time writes a site (its lock). Raises UserError for a path that is not a run directory.
    """
    from .. import atomic
    from ..store import FolderLock

    out = Path(out)
    paths = expand_run_dirs(run_dirs)
    if not paths:
        raise UserError("no run directories given")
    runs = [load_run(p, exclude=[out]) for p in paths]  # every path checked before `out` is touched
    _prepare_out(out, paths)
    lock = FolderLock(out)
    try:
        old_files = _prepare_out(out, paths)  # again, now that no other process can write it
        return _build(runs, out, old_files, atomic)
    finally:
        lock.release()


def _build(runs: list[Run], out: Path, old_files: list[str], atomic) -> Path:
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
    # listed before anything is written, so that a build killed half-way leaves nothing unaccounted for
    _write_manifest(out, set(old_files) | set(planned))

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
    # remove what an earlier build wrote and this one did not (never anything else)
    keep = set(planned)
    for rel in sorted(set(old_files) - keep):
        f = _inside(out, rel)
        if f is not None and (f.is_file() or f.is_symlink()):
            try:
                f.unlink()
            except OSError:
                continue
            parent = f.parent
            while parent != out and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
    _write_manifest(out, keep)
    return index


def build_run_site(run_dir: str | os.PathLike) -> Path | None:
    """Build <run_dir>/site for one finished run; never raises (a study must not fail over its web page)."""
    try:
        return build_site([run_dir], Path(run_dir) / "site")
    except Exception as e:  # noqa: BLE001 - the study's results are already saved
        print(f"lossprobe: warning: could not build the report site in {run_dir}/site ({e})", file=sys.stderr)
        return None
