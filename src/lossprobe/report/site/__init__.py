"""The report site: every run directory as a static, self-contained HTML page.

Everything is derived from the files of a run directory (see `lossprobe.store`), so runs of
any study or command render: config.json and summary.json as tables, every figure in
figures/ with alt text from the captions in report.md, report.md itself (markdown-it-py,
raw HTML shown as text), and interactive plotly plots of what each .npz declares
(`lossprobe.plotspec`; arrays no declaration names are listed, not drawn) plus the
learning curves of history*.json files.

The package, by concern:

    load.py      reading a run directory (Run, load_run, expand_run_dirs)
    content.py   headline numbers and flattened tables of a run's JSON
    plots.py     plotly figure specs of the declared plots (and learning curves)
    markdown.py  report.md to HTML, links and images checked
    markup.py    escaping, the page template and HTML pieces, the CSP
    pages.py     the run, index and comparison pages
    write.py     the output folder, its manifest and assets; build_site, build_run_site
"""

from lossprobe.report.site.content import flatten, key_numbers
from lossprobe.report.site.load import MAX_COPY_BYTES, MAX_LOAD_BYTES, Run, expand_run_dirs, load_run
from lossprobe.report.site.markdown import figure_captions, markdown_to_html
from lossprobe.report.site.markup import ASSETS, SITE_CSP, esc, fmt, href, json_for_script, slugify
from lossprobe.report.site.pages import render_compare, render_index, render_run
from lossprobe.report.site.plots import (
           MAX_PLOTS,
           MAX_SURFACE_FILES,
           MAX_TRACES,
           Plot,
           compare_plots,
           declared_plots,
           history_plots,
           line_plot,
           overlay,
           run_plots,
           surface_plots,
)
from lossprobe.report.site.write import SITE_MARKER, build_run_site, build_site

__all__ = ["ASSETS", "MAX_COPY_BYTES", "MAX_LOAD_BYTES", "MAX_PLOTS", "MAX_SURFACE_FILES", "MAX_TRACES", "Plot", "Run",
           "SITE_CSP", "SITE_MARKER", "build_run_site", "build_site", "compare_plots", "declared_plots", "esc",
           "expand_run_dirs", "figure_captions", "flatten", "fmt", "history_plots", "href", "json_for_script",
           "key_numbers", "line_plot", "load_run", "markdown_to_html", "overlay", "render_compare", "render_index",
           "render_run", "run_plots", "slugify", "surface_plots"]
