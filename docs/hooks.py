"""MkDocs hooks (mkdocs.yml `hooks:`): the repository's README.md is the site's front page.

The README links to the guides as ``docs/NAME.md`` (right on GitHub, from the repository
root); on the site it is ``index.md`` next to them, so those links lose their ``docs/``.
MkDocs then checks them like every other link (``--strict``).
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

README = Path(__file__).resolve().parents[1] / "README.md"


def on_files(files, config):
    files.append(File.generated(config, "index.md", abs_src_path=str(README)))
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == "index.md":
        markdown = re.sub(r"\]\(docs/", "](", markdown)
    return markdown
