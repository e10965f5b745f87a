"""Markdown (a run's report.md) to HTML: markdown-it-py with raw HTML off; links and images checked one by one."""

from __future__ import annotations

import posixpath
import re
from typing import Callable
from urllib.parse import unquote

from markdown_it import MarkdownIt
from markdown_it.token import Token

from lossprobe.report.site.markup import esc

_SAFE_SCHEMES = ("http://", "https://", "mailto:")


def _markdown_parser():

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
