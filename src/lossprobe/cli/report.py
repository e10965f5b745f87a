"""`lossprobe report RUN_DIR [RUN_DIR ...] --out SITE`: a static HTML site of runs."""

from __future__ import annotations

import sys

from lossprobe.report.site import build_site, expand_run_dirs


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="build a static HTML site (index, one page per run, comparisons) from run directories",
        description="Build a self-contained static web site from run directories: an index of the runs "
        "(study, date, key numbers, status), a page per run (summary, interactive plotly plots of "
        "interpolation/learning curves and 2-D surfaces, report.md, every figure, configuration, links "
        "to the raw arrays) and a comparison page for two or more runs of the same study. plotly.js is "
        "copied into SITE/assets, so the site opens from disk with no network. Open SITE/index.html in "
        "a browser or run 'lossprobe serve SITE'.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run directories written by lossprobe (a folder holding run directories is expanded)")
    p.add_argument("--out", required=True, metavar="SITE",
                   help="folder to write the site into: new, empty, or a site built before (rebuilt in place)")
    p.set_defaults(func=run)


def run(args) -> int:
    index = build_site(args.run_dirs, args.out,
                       warn=lambda run, problem: print(f"lossprobe: warning: {run}: {problem}", file=sys.stderr))
    n = len(expand_run_dirs(args.run_dirs))
    print(f"wrote a site of {n} run(s): {index}")
    print(f"open it in a browser, or run: lossprobe serve {args.out}")
    return 0
