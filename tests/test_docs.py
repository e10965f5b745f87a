"""The documentation builds: the MkDocs site (README, docs/, the API reference generated from
the docstrings) with warnings as errors, and every relative link of README.md resolves.

`mkdocs build --strict` fails on a broken link or anchor between pages, a page missing from the
navigation, an ``Args:`` entry that names no parameter of its function, a cross-reference that
finds no object and a ``::: lossprobe.NAME`` directive whose module is gone. The guides link to
the reference by anchor (``api/landscape.md#lossprobe.landscape.surfaces.surface``), so a
renamed function they point at fails here too. The examples in the pages are run by
tests/test_examples.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[test]')")
pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings[python] is not installed (pip install -e '.[test]')")


def _offline_env() -> dict:
    env = dict(os.environ)
    # the source tree's lossprobe, as griffe reads it (mkdocs.yml: paths: [src]), and nothing from the network:
    # a proxy on a closed port makes any attempt to download fail instead of waiting
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src")] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env[k] = "http://127.0.0.1:9"
    env["no_proxy"] = env["NO_PROXY"] = ""
    return env


def test_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                           "--site-dir", str(site)], cwd=ROOT, env=_offline_env(), capture_output=True, text=True,
                          timeout=300)
    log = proc.stdout + proc.stderr
    warnings = [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert proc.returncode == 0 and not warnings, "mkdocs build --strict failed:\n" + "\n".join(warnings or [log[-4000:]])
    # the front page is the README, one API page per layer, each with the documented objects in it
    index = (site / "index.html").read_text()
    assert "Probe the geometry of neural-network loss landscapes" in index
    assert 'href="connectivity.html"' in index  # README's docs/connectivity.md, rewritten by docs/hooks.py
    landscape = (site / "api" / "landscape.html").read_text()
    assert 'id="lossprobe.landscape.surfaces.surface"' in landscape
    assert 'id="lossprobe.core.objective.Objective"' in (site / "api" / "core.html").read_text()
    # offline: the pages load nothing from another host
    remote = re.compile(r"""<(?:script|link|img)\b[^>]*(?:src|href)=["']((?:https?:)?//[^"']+)""", re.I)
    for page in site.rglob("*.html"):
        found = remote.findall(page.read_text())
        assert not found, f"{page.relative_to(site)} loads {found[0]}"


def _links(markdown: str) -> list[str]:
    """Targets of the Markdown links and images of a page, outside code blocks and spans."""
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)


@pytest.mark.parametrize("page", ["README.md", "CHANGELOG.md", "DEVELOPERS.md"])
def test_relative_links_resolve(page):
    """README.md (and the other top-level pages) link into docs/ and the tree as GitHub reads
    them, from the repository root; every such link must name a file that exists, and an
    anchor into a docs page must name one of its headings."""
    bad = []
    for target in _links((ROOT / page).read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http:, mailto:, in-page anchors (not links between files)
        path, _, anchor = target.partition("#")
        file = (ROOT / page).parent / path
        if not file.exists():
            bad.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file.read_text()):
            bad.append(f"{target}: no heading with anchor #{anchor}")
    assert bad == [], f"{page}: broken links: {bad}"


def _anchors(markdown: str) -> set[str]:
    """The ids Python-Markdown's toc extension gives the headings of a page (MkDocs' default slugify)."""
    from markdown.extensions.toc import slugify

    text = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    return {slugify(re.sub(r"[`*_]", "", h), "-") for h in re.findall(r"^#+\s+(.+?)\s*#*$", text, flags=re.M)}


def test_link_checker_finds_a_broken_link(tmp_path):
    assert _links("see [a](docs/a.md), `[b](x.md)` and ![c](img.png)\n```\n[d](e.md)\n```\n") == ["docs/a.md", "img.png"]
    assert "the-benchmark" in _anchors("## The benchmark\n")
