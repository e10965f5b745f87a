"""`lossprobe study NAME`: the ready-made studies (see lossprobe.studies.STUDIES)."""

from __future__ import annotations

import importlib


def register(sub) -> None:
    from ..studies import STUDIES

    p = sub.add_parser("study", help="run a ready-made study end to end and write a report",
                       description="Run a ready-made study. Each writes a run directory with config.json, "
                       "environment.json, summary.json, arrays, figures and report.md; rerunning the same "
                       "command on the same --out resumes it.")
    studies = p.add_subparsers(dest="study", metavar="STUDY", required=True)
    for name, (module, help_text) in STUDIES.items():
        sp = studies.add_parser(name, help=help_text, description=help_text)
        mod = importlib.import_module(module)
        mod.add_arguments(sp)
        sp.add_argument("--no-site", action="store_true",
                        help="do not build the HTML report site in DIR/site at the end")
        sp.set_defaults(func=_with_site(mod.run_cli))


def _with_site(run_cli):
    """Run a study, then build its report site in <out>/site (never failing the study)."""

    def run(args) -> int:
        code = run_cli(args)
        if code == 0 and not args.no_site:
            from ..report.site import build_run_site

            site = build_run_site(args.out)
            if site is not None:
                print(f"report site: {site}")
        return code

    return run
