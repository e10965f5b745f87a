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
        sp.set_defaults(func=mod.run_cli)
