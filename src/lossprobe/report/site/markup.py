"""Escaping and the HTML building blocks of every page (the page template, tables, badges, plots).

All text from a run (names, notes, config values, report.md) goes through `esc`; inline
figure data is JSON with '<', '>' and '&' escaped, so a ``</script>`` inside it cannot end
the element. Every page carries SITE_CSP, so it never requests anything outside the site.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import re
import string
from pathlib import Path
from typing import Any
from urllib.parse import quote

from lossprobe._version import __version__

ASSETS = Path(__file__).resolve().parent.parent / "site_assets"
# Every page's Content-Security-Policy: scripts, styles, images and fonts from the site itself
# only (plus the inline styles and data:/blob: images plotly draws with); no connections, frames,
# plugins or forms. So a page never requests anything outside the site, whatever a run wrote.
SITE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
            "font-src 'self' data:; worker-src 'self' blob:; connect-src 'none'; object-src 'none'; frame-src 'none'; "
            "base-uri 'none'; form-action 'none'")


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


def slugify(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return s[:80] or "run"


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


def date(iso: str | None) -> str:
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


def size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def page(title: str, body: str, root: str, nav: str = "", plots: bool = False) -> str:
    """A whole page from site_assets/page.html; `plots` adds plotly and the site's script."""
    tpl = string.Template((ASSETS / "page.html").read_text(encoding="utf-8"))
    scripts = ""
    if plots:
        scripts = (f'<script src="{root}assets/plotly.min.js"></script>\n'
                   f'<script src="{root}assets/site.js"></script>')
    return tpl.substitute(title=esc(title), root=root, head="", nav=nav, body=body, scripts=scripts, csp=esc(SITE_CSP),
                          version=esc(__version__),
                          built=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def badge(state: str, done: list | None = None) -> str:
    """The status badge; an incomplete run's badge names the stages done (`done`)."""
    extra = ""
    if state == "incomplete" and done is not None:
        extra = f' title="stages done: {esc(", ".join(map(str, done)) or "none")}"'
    return f'<span class="badge {esc(state)}"{extra}>{esc(state)}</span>'


def kv_table(rows: list[tuple[str, str]], caption: str, headers=("key", "value"), raw_values=False) -> str:
    body = "".join(f'<tr><th scope="row">{esc(k)}</th><td>{v if raw_values else esc(v)}</td></tr>' for k, v in rows)
    return (f'<div class="table-wrap"><table><caption>{esc(caption)}</caption><thead><tr>'
            f'<th scope="col">{esc(headers[0])}</th><th scope="col">{esc(headers[1])}</th></tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def plot_html(plot, pid: str) -> str:
    """One interactive plot (a `plots.Plot`): heading, description, keyboard controls, the
    element site.js draws into, its spec as inline JSON and, for small curves, a data table."""
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
